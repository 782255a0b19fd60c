//! Worker loss: strikes for the tasks the lost worker was running, its keys dropped, and their producers
//! reopened, recursively while their inputs were released already (the *Worker loss* rule of [`super`]).

use std::collections::BTreeSet;

use super::{Scheduler, TaskFailure, Worker, WorkerId};
use crate::data::DataKey;
use crate::graph::TaskId;
use crate::tracker::TaskState;

impl Scheduler {
    /// Forgets what was measured about `worker` and the tasks to visit it with.
    pub(super) fn forget_worker(&mut self, worker: WorkerId) {
        self.room.remove(&worker);
        self.wake.remove(&worker);
        self.links.retain(|&(a, b), _| a != worker && b != worker);
        self.probing.retain(|&(a, b)| a != worker && b != worker);
        self.durations.retain(|_, s| s.forget(worker));
        // Its merges get another gathering worker when their next piece is written.
        self.gathering.remove(&worker);
    }

    /// Strikes the tasks the lost worker `w` was running, and returns those sent to it that no other worker
    /// runs (to run again). A worker runs what it is sent in order, `cores` at a time, so its oldest `cores`
    /// unfinished tasks were running; those queued behind them take no strike. A task whose copy runs
    /// elsewhere (speculation) still takes the strike, or a task that kills every worker would spread
    /// through its copies unpunished.
    pub(super) fn strike(&mut self, w: &Worker) -> Result<Vec<TaskId>, TaskFailure> {
        let mut again = Vec::new();
        for (i, &(task, _)) in w.sent.iter().enumerate() {
            if !matches!(self.tracker.state(task), TaskState::Running(_)) {
                continue;
            }
            if i < w.cores {
                let strikes = self.strikes.entry(task).or_insert(0);
                *strikes += 1;
                if *strikes >= self.opts.max_strikes {
                    return Err(TaskFailure {
                        task,
                        kind: self.graph.task(task).kind,
                        strikes: *strikes,
                    });
                }
            }
            if !self.running_somewhere(task) {
                again.push(task);
            }
        }
        Ok(again)
    }

    /// True when a known worker was sent `task` and has not reported it.
    pub(super) fn running_somewhere(&self, task: TaskId) -> bool {
        self.workers
            .values()
            .any(|w| w.sent.iter().any(|&(t, _)| t == task))
    }

    /// Drops the locations of the keys `worker` held, returning their producers in task order. (A scan of
    /// every location: losses are rare.)
    pub(super) fn lose_keys(&mut self, worker: WorkerId) -> Vec<TaskId> {
        let mut keys: Vec<DataKey> = self
            .locations
            .iter()
            .filter(|(_, l)| l.worker == worker)
            .map(|(&k, _)| k)
            .collect();
        keys.sort_unstable();
        let mut producers = BTreeSet::new();
        for key in keys {
            self.locations.remove(&key);
            producers.extend(self.graph.producer(key));
        }
        // Its uploads under way will not be reported: the keys are rebuilt and shipped again.
        self.shipping.retain(|_, w| *w != worker);
        producers.into_iter().collect()
    }

    /// Reopens `first` (a producer of lost keys) and, recursively, the producers of its inputs that were
    /// released already; pushes every reopened task to `again`. Inputs still held gain a reader.
    pub(super) fn reopen_lineage(&mut self, first: TaskId, again: &mut Vec<TaskId>) {
        let mut stack = vec![first];
        while let Some(task) = stack.pop() {
            if self.tracker.state(task) != TaskState::Done {
                continue;
            }
            for t in self.tracker.reopen(&self.graph, task) {
                self.unqueue(t);
            }
            self.recomputed += 1;
            again.push(task);
            for &key in &self.graph.task(task).inputs {
                match self.locations.get_mut(&key) {
                    Some(l) => l.readers_left += 1,
                    None => stack.extend(self.graph.producer(key)),
                }
            }
        }
    }
}
