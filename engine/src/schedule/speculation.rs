//! Stealing and speculation for workers with nothing else to do, decided on measured stage durations and
//! link rates (the *Stealing* and *Speculation* rules of [`super`]).

use super::{Action, Scheduler, Stage, Steal, WorkerId, stage_of};
use crate::graph::TaskId;
use crate::tracker::TaskState;

impl Scheduler {
    /// Folds a measured duration of `task` on `worker` into its stage's averages.
    pub(super) fn observe_duration(&mut self, task: TaskId, worker: WorkerId, seconds: f64) {
        let stage = stage_of(self.graph.task(task).kind);
        self.durations
            .entry(stage)
            .or_default()
            .observe(worker, seconds, self.opts.smoothing);
    }

    /// The best task for idle worker `to` to take from another worker's pending queue, if moving it beats
    /// waiting. Unmeasured links are probed (pushed to `actions`) instead.
    pub(super) fn steal_for(&mut self, to: WorkerId, actions: &mut Vec<Action>) -> Option<TaskId> {
        // The last pending task of every other worker (it waits longest there), with its estimated wait.
        let candidates: Vec<(WorkerId, TaskId, f64)> = self
            .workers
            .iter()
            .filter(|&(&from, _)| from != to)
            .filter_map(|(&from, w)| {
                let task = *w.pending.back()?;
                let d = self.duration(stage_of(self.graph.task(task).kind), Some(from))?;
                let ahead = w.load() - 1;
                Some((from, task, ahead as f64 * d / w.cores as f64))
            })
            .collect();
        let mut best: Option<Steal> = None;
        for (from, task, wait_seconds) in candidates {
            if self.tracker.state(task) != TaskState::Ready {
                continue;
            }
            let Some(transfer_seconds) = self.transfer_seconds(task, to, actions) else {
                continue;
            };
            let gain = wait_seconds - transfer_seconds;
            if gain > 0.0
                && best
                    .as_ref()
                    .is_none_or(|b| gain > b.wait_seconds - b.transfer_seconds)
            {
                best = Some(Steal {
                    task,
                    from,
                    to,
                    wait_seconds,
                    transfer_seconds,
                    at: self.now,
                });
            }
        }
        let steal = best?;
        if let Some(w) = self.workers.get_mut(&steal.from) {
            w.pending.pop_back();
        }
        let task = steal.task;
        self.steals.push(steal);
        Some(task)
    }

    /// Seconds a task of `stage` takes on `worker` (measured there), or, without a worker or a measurement
    /// there, on the fastest worker that ran one.
    pub(super) fn duration(&self, stage: Stage, worker: Option<WorkerId>) -> Option<f64> {
        let times = self.durations.get(&stage)?;
        match worker.and_then(|w| times.by_worker.get(&w)) {
            Some(&d) => Some(d),
            None => Some(times.fastest),
        }
    }

    /// A straggling task for idle worker `to` to run a copy of: sent elsewhere more than `speculate_after` x
    /// its stage's duration ago (the longest overdue first), inputs all held and movable within one
    /// duration, not copied yet, never struck (if it kills workers, a copy kills one more).
    pub(super) fn speculate_for(
        &mut self,
        to: WorkerId,
        actions: &mut Vec<Action>,
    ) -> Option<TaskId> {
        let mut overdue: Vec<(f64, TaskId, f64)> = Vec::new();
        for (&from, w) in &self.workers {
            if from == to {
                continue;
            }
            for &(task, sent_at) in &w.sent {
                // Judged against a healthy worker's time, not the straggler's own.
                let Some(d) = self.duration(stage_of(self.graph.task(task).kind), None) else {
                    continue;
                };
                let ratio = (self.now - sent_at) / d.max(1e-9);
                if ratio > self.opts.speculate_after
                    && !self.copied.contains(&task)
                    && !self.strikes.contains_key(&task)
                    && matches!(self.tracker.state(task), TaskState::Running(_))
                    && self.inputs_held(task)
                {
                    overdue.push((ratio, task, d));
                }
            }
        }
        overdue.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, task, d) in overdue {
            if self
                .transfer_seconds(task, to, actions)
                .is_some_and(|t| t < d)
            {
                self.speculated.push(task);
                self.copied.insert(task);
                return Some(task);
            }
        }
        None
    }

    /// True when every input of `task` is held by a known worker (none lost and being rebuilt).
    pub(super) fn inputs_held(&self, task: TaskId) -> bool {
        self.graph
            .task(task)
            .inputs
            .iter()
            .all(|k| self.locations.contains_key(k))
    }

    /// Seconds to bring `task`'s inputs to `to` at the measured link rates; None (and a probe requested)
    /// when a link involved was never measured.
    pub(super) fn transfer_seconds(
        &mut self,
        task: TaskId,
        to: WorkerId,
        actions: &mut Vec<Action>,
    ) -> Option<f64> {
        let mut total = 0.0;
        let mut unmeasured = false;
        for key in &self.graph.task(task).inputs {
            let Some(l) = self.locations.get(key) else {
                continue;
            };
            // Store inputs cost every worker the same: they do not make a steal better or worse.
            if l.worker == to || l.worker == WorkerId::STORE {
                continue;
            }
            match self.links.get(&(l.worker, to)) {
                Some(rate) => total += l.bytes as f64 / rate,
                None => {
                    unmeasured = true;
                    if !self.probing.contains(&(l.worker, to)) {
                        self.probing.push((l.worker, to));
                        actions.push(Action::Probe { from: l.worker, to });
                    }
                }
            }
        }
        (!unmeasured).then_some(total)
    }
}
