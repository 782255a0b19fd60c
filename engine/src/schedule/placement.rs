//! Placement and dispatch: where a ready task waits (the worker holding most of its input bytes, away from
//! workers it struck), what each worker with room runs next, and the shipments of an exchange through the
//! store (the *Loads* and *Other tasks* rules of [`super`]).

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, MOVE_FAN_IN, Scheduler, WorkerId};
use crate::data::DataKey;
use crate::graph::{TaskId, TaskKind};
use crate::tracker::TaskState;

impl Scheduler {
    /// Takes a task that is no longer ready out of the queue it waits in.
    pub(super) fn unqueue(&mut self, task: TaskId) {
        self.awaiting_store.remove(&task);
        if self.graph.task(task).inputs.is_empty() {
            self.ready_loads.retain(|&t| t != task);
        }
        self.unplaced.retain(|&t| t != task);
        for w in self.workers.values_mut() {
            w.pending.retain(|&t| t != task);
        }
    }

    /// A ready task: loads wait for any worker with room; others go to the worker holding most bytes of
    /// their inputs (ties: the one with fewest tasks). A struck task goes to a worker of its own (see
    /// [`Scheduler::best_worker`]), loads included. A task placed `again` (it ran, or was to run, on a worker
    /// since lost) goes to the front of its queue. Tasks that are not ready are not placed.
    pub(super) fn place(&mut self, task: TaskId, again: bool) {
        if self.tracker.state(task) != TaskState::Ready {
            return;
        }
        if self.opts.exchange_store && self.is_exchange_merge(task) && !self.ship_inputs(task) {
            return;
        }
        let load = self.graph.task(task).inputs.is_empty();
        let queue = if load && !self.strikes.contains_key(&task) {
            &mut self.ready_loads
        } else if let Some(id) = self.best_worker(task) {
            if !self.room.contains(&id) && !self.room.is_empty() {
                // Some idle worker may want to take it.
                self.scout = true;
            }
            self.wake.insert(id);
            match self.workers.get_mut(&id) {
                Some(w) => &mut w.pending,
                None => return,
            }
        } else if load {
            &mut self.ready_loads
        } else {
            self.unplaced.push(task);
            return;
        };
        if again {
            queue.push_front(task);
        } else {
            queue.push_back(task);
        }
    }

    /// A merge's gathering worker while it lives; else the worker holding most bytes of `task`'s inputs
    /// (ties: fewest tasks, then the highest id); without bytes held anywhere, the least loaded worker. A struck task avoids, if it can, the workers running or
    /// holding another struck task: tasks that ran beside a task that kills workers are struck with it, and
    /// only apart can the culprit be told from them. None without workers.
    pub(super) fn best_worker(&self, task: TaskId) -> Option<WorkerId> {
        let avoid = self.struck_workers(task);
        self.best_worker_avoiding(task, &avoid)
            .or_else(|| self.best_worker_avoiding(task, &BTreeSet::new()))
    }

    pub(super) fn best_worker_avoiding(
        &self,
        task: TaskId,
        avoid: &BTreeSet<WorkerId>,
    ) -> Option<WorkerId> {
        if let Some(Some(w)) = self.gather_at.get(&task)
            && self.workers.contains_key(w)
            && !avoid.contains(w)
        {
            return Some(*w);
        }
        let mut held: Vec<(WorkerId, u64)> = Vec::new();
        for key in &self.graph.task(task).inputs {
            let Some(l) = self.locations.get(key) else {
                continue;
            };
            match held.iter_mut().find(|(w, _)| *w == l.worker) {
                Some((_, b)) => *b += l.bytes,
                None => held.push((l.worker, l.bytes)),
            }
        }
        let rank = |id: WorkerId, bytes: u64| {
            let w = self.workers.get(&id).filter(|_| !avoid.contains(&id))?;
            Some((bytes, std::cmp::Reverse(w.load()), id))
        };
        let best_holder = held
            .iter()
            .filter(|&&(_, b)| b > 0)
            .filter_map(|&(id, b)| rank(id, b))
            .max();
        best_holder
            .or_else(|| self.workers.keys().filter_map(|&id| rank(id, 0)).max())
            .map(|(_, _, id)| id)
    }

    /// For a struck `task`, the workers running or holding another struck task (none for other tasks).
    pub(super) fn struck_workers(&self, task: TaskId) -> BTreeSet<WorkerId> {
        if !self.strikes.contains_key(&task) {
            return BTreeSet::new();
        }
        let struck = |t: TaskId| t != task && self.strikes.contains_key(&t);
        self.workers
            .iter()
            .filter(|(_, w)| {
                w.sent.iter().any(|&(t, _)| struck(t)) || w.pending.iter().any(|&t| struck(t))
            })
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether `task` is a merge fed by many tasks (one whose pieces are exchanged, not read where they are).
    pub(super) fn is_exchange_merge(&self, task: TaskId) -> bool {
        let t = self.graph.task(task);
        if !matches!(t.kind, TaskKind::Merge { .. }) {
            return false;
        }
        let producers: BTreeSet<TaskId> = t
            .inputs
            .iter()
            .filter_map(|&k| self.graph.producer(k))
            .collect();
        producers.len() >= MOVE_FAN_IN
    }

    /// `exchange: s3`: true when every input of the ready merge `task` is in the store; otherwise has each
    /// holder ship the merge's keys it holds (one [`Action::Ship`] per holder, once) and keeps the merge
    /// waiting for them.
    pub(super) fn ship_inputs(&mut self, task: TaskId) -> bool {
        let mut by_holder: BTreeMap<WorkerId, Vec<(DataKey, u64)>> = BTreeMap::new();
        let mut all_there = true;
        for &key in &self.graph.task(task).inputs {
            let Some(l) = self.locations.get(&key) else {
                continue;
            };
            if l.worker == WorkerId::STORE {
                continue;
            }
            all_there = false;
            if !self.shipping.contains_key(&key) && self.workers.contains_key(&l.worker) {
                by_holder.entry(l.worker).or_default().push((key, l.bytes));
            }
        }
        for (worker, keys) in by_holder {
            for &(k, _) in &keys {
                self.shipping.insert(k, worker);
            }
            self.ships.push(Action::Ship {
                worker,
                merge: task,
                keys,
            });
        }
        if !all_there {
            self.awaiting_store.insert(task);
        }
        all_there
    }

    /// Counts the keys `worker` (just lost) had shipped that some task still reads: they are read back from
    /// the store, not rebuilt.
    pub(super) fn count_read_back(&mut self, worker: WorkerId) {
        let n = self
            .shipped_from
            .iter()
            .filter(|&(k, &w)| {
                w == worker && self.locations.get(k).is_some_and(|l| l.readers_left > 0)
            })
            .count();
        self.store_counts.read_back_after_loss += n as u64;
    }

    /// Fills the room of the workers this event concerns: those woken, or, when loads wait or idle workers
    /// are to look around, every worker with room.
    pub(super) fn dispatch(&mut self) -> Vec<Action> {
        let mut actions = std::mem::take(&mut self.ships);
        let visit: Vec<WorkerId> = if self.scout || !self.ready_loads.is_empty() {
            self.room.iter().copied().collect()
        } else {
            self.wake.intersection(&self.room).copied().collect()
        };
        self.wake.clear();
        self.scout = false;
        for id in visit {
            while let Some(task) = self.next_for(id, &mut actions) {
                actions.push(self.send(id, task));
            }
        }
        actions
    }

    /// The next task for worker `id` if it has room: its own pending tasks, then loads, then a steal or a
    /// speculative copy.
    pub(super) fn next_for(&mut self, id: WorkerId, actions: &mut Vec<Action>) -> Option<TaskId> {
        if !self.room.contains(&id) {
            return None;
        }
        if let Some(t) = self.pop_ready(id) {
            return Some(t);
        }
        if !self.opts.steal {
            return None;
        }
        self.steal_for(id, actions)
            .or_else(|| self.speculate_for(id, actions))
    }

    /// The first ready task of worker `id`'s pending queue, else of the loads.
    pub(super) fn pop_ready(&mut self, id: WorkerId) -> Option<TaskId> {
        let tracker = &self.tracker;
        let ready = |t: &TaskId| tracker.state(*t) == TaskState::Ready;
        if let Some(w) = self.workers.get_mut(&id) {
            while let Some(t) = w.pending.pop_front() {
                if ready(&t) {
                    return Some(t);
                }
            }
        }
        while let Some(t) = self.ready_loads.pop_front() {
            if ready(&t) {
                return Some(t);
            }
        }
        None
    }

    pub(super) fn send(&mut self, worker: WorkerId, task: TaskId) -> Action {
        self.decisions += 1;
        if let Some(w) = self.workers.get_mut(&worker) {
            w.sent.push((task, self.now));
        }
        self.update_room(worker);
        let attempt = self.tracker.start(task);
        Action::Run {
            worker,
            task,
            attempt,
        }
    }
}
