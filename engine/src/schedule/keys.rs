//! Where the keys are: recording a finished task's outputs, releasing keys after their last reader and the
//! copies written by duplicates, and choosing the gathering worker of a merge fed by many tasks (the
//! *Exchange* and *Release* rules of [`super`]).

use std::collections::BTreeSet;

use super::{Action, Location, MOVE_FAN_IN, Scheduler, Worker, WorkerId};
use crate::data::DataKey;
use crate::graph::{TaskId, TaskKind};
use crate::tracker::TaskState;

impl Scheduler {
    /// Records where the outputs of a task just done are. A key nobody is left to read, or already held by
    /// another worker (a reopened task writes again the keys it shares with a lost one), is released at once.
    pub(super) fn record_outputs(
        &mut self,
        worker: WorkerId,
        outputs: &[(DataKey, u64)],
        actions: &mut Vec<Action>,
    ) {
        for &(key, bytes) in outputs {
            if let Some(l) = self.locations.get(&key) {
                if l.worker != worker && !self.moving_to(key, worker) {
                    actions.push(Action::Release { worker, key });
                }
                continue;
            }
            let readers_left = self.readers_left(key);
            if readers_left == 0 {
                actions.push(Action::Release { worker, key });
                continue;
            }
            self.locations.insert(
                key,
                Location {
                    worker,
                    bytes,
                    readers_left,
                },
            );
            if let Some(to) = self.gathering_worker(key, worker)
                && to != worker
            {
                self.moving.insert(key, to);
                actions.push(Action::Move {
                    key,
                    from: worker,
                    to,
                });
            }
        }
    }

    /// Gives `joiner` its share of the merges still waiting for pieces: those of the workers gathering most
    /// per core move to it (in task order) until it gathers as many per core as they do. Pieces already
    /// moved stay where they are; the merge fetches them when it runs.
    pub(super) fn share_gathering(&mut self, joiner: WorkerId) {
        let share = |s: &Scheduler, id: WorkerId| {
            let cores = s.workers.get(&id).map_or(1, |w| w.cores) as f64;
            s.gathering.get(&id).copied().unwrap_or(0) as f64 / cores
        };
        let mut waiting: Vec<(TaskId, WorkerId)> = self
            .gather_at
            .iter()
            .filter_map(|(&t, &w)| Some((t, w?)))
            .filter(|&(t, w)| w != joiner && self.tracker.state(t) == TaskState::Waiting)
            .collect();
        waiting.sort_unstable();
        let step = 1.0 / self.workers.get(&joiner).map_or(1, |w| w.cores) as f64;
        for (task, from) in waiting {
            if !self.workers.contains_key(&from) || share(self, from) > share(self, joiner) + step {
                if let Some(n) = self.gathering.get_mut(&from) {
                    *n = n.saturating_sub(1);
                }
                self.gather_at.insert(task, Some(joiner));
                *self.gathering.entry(joiner).or_insert(0) += 1;
            }
        }
    }

    /// The gathering worker of the merge reading `key` (just written on `producer`), chosen now if it has
    /// none (or lost it); None unless the key's one reader is a merge fed by many tasks.
    pub(super) fn gathering_worker(
        &mut self,
        key: DataKey,
        producer: WorkerId,
    ) -> Option<WorkerId> {
        if !self.opts.move_early || self.opts.exchange_store {
            return None;
        }
        let &[merge] = self.graph.consumers(key) else {
            return None;
        };
        match self.gather_at.get(&merge) {
            Some(Some(w)) if self.workers.contains_key(w) => return Some(*w),
            Some(None) => return None,
            _ => {}
        }
        let task = self.graph.task(merge);
        let producers: BTreeSet<TaskId> = task
            .inputs
            .iter()
            .filter_map(|&k| self.graph.producer(k))
            .collect();
        if !matches!(task.kind, TaskKind::Merge { .. }) || producers.len() < MOVE_FAN_IN {
            self.gather_at.insert(merge, None);
            return None;
        }
        // The producer (its pieces stay where they are) unless it would gather more than one merge per core
        // beyond the worker with fewest; else that worker (ties: the lowest id).
        let share = |id: &WorkerId, w: &Worker| {
            self.gathering.get(id).copied().unwrap_or(0) as f64 / w.cores as f64
        };
        let (&fewest, w) = self
            .workers
            .iter()
            .min_by(|(a, wa), (b, wb)| share(a, wa).total_cmp(&share(b, wb)).then(a.cmp(b)))?;
        let least = share(&fewest, w);
        let to = match self.workers.get(&producer) {
            Some(p) if share(&producer, p) + 1.0 / p.cores as f64 <= least + 1.0 => producer,
            _ => fewest,
        };
        self.gather_at.insert(merge, Some(to));
        *self.gathering.entry(to).or_insert(0) += 1;
        Some(to)
    }

    /// Consumers of `key` not done.
    pub(super) fn readers_left(&self, key: DataKey) -> usize {
        self.graph
            .consumers(key)
            .iter()
            .filter(|&&c| self.tracker.state(c) != TaskState::Done)
            .count()
    }

    /// The copies a duplicate report says `worker` wrote: released, unless they are the copies on record.
    pub(super) fn release_copies(
        &mut self,
        worker: WorkerId,
        outputs: &[(DataKey, u64)],
        actions: &mut Vec<Action>,
    ) {
        for &(key, _) in outputs {
            if self.locations.get(&key).is_none_or(|l| l.worker != worker)
                && !self.moving_to(key, worker)
            {
                actions.push(Action::Release { worker, key });
            }
        }
    }

    /// Whether `key` is on its way to `worker`: a copy written there by a duplicate is the one the move
    /// lands on (the worker keeps one copy of a key), so it must not be released.
    pub(super) fn moving_to(&self, key: DataKey, worker: WorkerId) -> bool {
        self.moving.get(&key) == Some(&worker)
    }

    /// Releases `task`'s inputs once their last reader is done.
    pub(super) fn forget_read_inputs(&mut self, task: TaskId, actions: &mut Vec<Action>) {
        for &key in &self.graph.task(task).inputs {
            let Some(l) = self.locations.get_mut(&key) else {
                continue;
            };
            l.readers_left = l.readers_left.saturating_sub(1);
            if l.readers_left == 0 {
                actions.push(Action::Release {
                    worker: l.worker,
                    key,
                });
                self.locations.remove(&key);
                self.shipped_from.remove(&key);
            }
        }
    }
}
