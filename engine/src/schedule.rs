//! The coordinator's placement policy: which worker runs which task, and when a task moves.
//!
//! The [`Scheduler`] is driven by events (a worker joined, a task finished, a transfer was timed) and answers
//! with [`Action`]s; it does no I/O and reads no clock, so the same code runs the job and the deterministic
//! simulations of `engine/tests/schedule_sim.rs`. Policy (the formulas are in `docs/architecture.md`):
//!
//! - **Loads** (tasks without inputs) are handed out as workers have room: a worker holds at most
//!   `cores + queue_extra` tasks sent to it, so no worker hoards root tasks and memory stays flat.
//! - **Other tasks** go, when they become ready, to the worker holding most bytes of their inputs, and wait
//!   there (*pending*) until it has room.
//! - **Stealing**: a worker with room and nothing else to do may take the last pending task of another
//!   worker, only if moving its inputs over the links involved, at their *measured* rates, takes less time
//!   than the task would wait where it is (tasks ahead of it x their measured duration / cores). A link
//!   never measured is probed first ([`Action::Probe`]); nothing is moved on an assumed rate. This is what
//!   the Dask post lacked: its scheduler assumed 100 MB/s on links that delivered far less and moved 80 MB
//!   blocks to idle workers, making the stage slower.
//! - **Speculation**: a worker with nothing else to do runs a copy of a task that has been running elsewhere
//!   for more than `speculate_after` times its stage's measured duration (a straggler), if its inputs move
//!   in less than that duration. Whichever copy finishes first counts; completion is idempotent, so the
//!   other is a duplicate that changes nothing.
//!
//! Times are seconds since the job started, passed in with every event.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::data::DataKey;
use crate::graph::{TaskGraph, TaskId, TaskKind};
use crate::tracker::{Attempt, Completion, TaskTracker};

/// A worker of the job, numbered by the coordinator in order of joining.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct WorkerId(pub u32);

/// What the coordinator must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `task` to `worker` (this is its `attempt`-th run).
    Run {
        /// Where.
        worker: WorkerId,
        /// What.
        task: TaskId,
        /// Which run.
        attempt: Attempt,
    },
    /// Have `to` fetch [`SchedulerOptions::probe_bytes`] from `from` and report the time it took.
    Probe {
        /// Sending worker.
        from: WorkerId,
        /// Receiving worker.
        to: WorkerId,
    },
}

/// Knobs of the policy.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Tasks sent to a worker beyond its cores (queued there so it never waits for the coordinator).
    pub queue_extra: usize,
    /// Whether idle workers may take pending tasks from others (and run copies of overdue ones).
    pub steal: bool,
    /// Bytes of a link probe.
    pub probe_bytes: u64,
    /// Weight of a new measurement in the running averages of durations and link rates.
    pub smoothing: f64,
    /// A task running longer than this many times its stage's measured duration may get a second copy.
    pub speculate_after: f64,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            queue_extra: 1,
            steal: true,
            probe_bytes: 4 << 20,
            smoothing: 0.3,
            speculate_after: 3.0,
        }
    }
}

/// A task moved from one worker's pending queue to an idle worker, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Steal {
    /// The task.
    pub task: TaskId,
    /// Where it was waiting.
    pub from: WorkerId,
    /// Where it runs.
    pub to: WorkerId,
    /// Estimated seconds it would have waited.
    pub wait_seconds: f64,
    /// Estimated seconds to move its inputs.
    pub transfer_seconds: f64,
}

#[derive(Debug)]
struct Worker {
    cores: usize,
    /// Tasks sent and not finished, with when they were sent.
    sent: Vec<(TaskId, f64)>,
    /// Tasks placed here by locality, not sent yet.
    pending: VecDeque<TaskId>,
    /// Tasks finished here.
    finished: usize,
}

/// Where a key is, its size, and how many consumers have not finished.
#[derive(Debug, Clone, Copy)]
struct Location {
    worker: WorkerId,
    bytes: u64,
    readers_left: usize,
}

/// The policy's state for one job.
#[derive(Debug)]
pub struct Scheduler {
    graph: TaskGraph,
    tracker: TaskTracker,
    opts: SchedulerOptions,
    workers: BTreeMap<WorkerId, Worker>,
    ready_loads: VecDeque<TaskId>,
    locations: HashMap<DataKey, Location>,
    /// Measured bytes per second of each (from, to) link.
    links: HashMap<(WorkerId, WorkerId), f64>,
    probing: Vec<(WorkerId, WorkerId)>,
    /// Measured seconds per task, by stage (task kind, node) and worker.
    durations: HashMap<((&'static str, usize), WorkerId), f64>,
    steals: Vec<Steal>,
    /// Tasks given a second copy.
    speculated: Vec<TaskId>,
    decisions: u64,
    /// Time of the latest event.
    now: f64,
    /// When the last task was reported done.
    finished_at: Option<f64>,
}

impl Scheduler {
    /// A scheduler for `graph` with no workers yet.
    pub fn new(graph: TaskGraph, opts: SchedulerOptions) -> Scheduler {
        let (tracker, ready) = TaskTracker::new(&graph);
        Scheduler {
            graph,
            tracker,
            opts,
            workers: BTreeMap::new(),
            ready_loads: ready.into(),
            locations: HashMap::new(),
            links: HashMap::new(),
            probing: Vec::new(),
            durations: HashMap::new(),
            steals: Vec::new(),
            speculated: Vec::new(),
            decisions: 0,
            now: 0.0,
            finished_at: None,
        }
    }

    /// The graph being run.
    pub fn graph(&self) -> &TaskGraph {
        &self.graph
    }

    /// A worker with `cores` cores joined at `now`: it gets work at once.
    pub fn add_worker(&mut self, worker: WorkerId, cores: usize, now: f64) -> Vec<Action> {
        self.now = now;
        self.workers.insert(
            worker,
            Worker {
                cores: cores.max(1),
                sent: Vec::new(),
                pending: VecDeque::new(),
                finished: 0,
            },
        );
        self.dispatch()
    }

    /// `worker` finished `task` in `seconds` (reported at `now`) and holds its `outputs` (key, bytes). A
    /// duplicate report changes nothing but the worker's room.
    pub fn task_done(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        outputs: &[(DataKey, u64)],
        seconds: f64,
        now: f64,
    ) -> Vec<Action> {
        self.now = now;
        if let Some(w) = self.workers.get_mut(&worker) {
            w.sent.retain(|&(t, _)| t != task);
            w.finished += 1;
        }
        if let Completion::Done(ready) = self.tracker.complete(&self.graph, task) {
            let stage = stage_of(self.graph.task(task).kind);
            let d = self.durations.entry((stage, worker)).or_insert(seconds);
            *d += self.opts.smoothing * (seconds - *d);
            for &(key, bytes) in outputs {
                let readers_left = self.graph.consumers(key).len();
                self.locations.insert(
                    key,
                    Location {
                        worker,
                        bytes,
                        readers_left,
                    },
                );
            }
            self.forget_read_inputs(task);
            if self.tracker.finished() {
                self.finished_at = Some(now);
            }
            for t in ready {
                self.place(t);
            }
        }
        self.dispatch()
    }

    /// `to` received `bytes` from `from` in `seconds` (a probe, or a task's input fetch), reported at `now`.
    pub fn transfer_observed(
        &mut self,
        from: WorkerId,
        to: WorkerId,
        bytes: u64,
        seconds: f64,
        now: f64,
    ) -> Vec<Action> {
        self.now = now;
        let rate = bytes as f64 / seconds.max(1e-9);
        let r = self.links.entry((from, to)).or_insert(rate);
        *r += self.opts.smoothing * (rate - *r);
        self.probing.retain(|&l| l != (from, to));
        self.dispatch()
    }

    /// Time passed without events (the coordinator calls this on every heartbeat): overdue tasks may get
    /// copies on idle workers.
    pub fn tick(&mut self, now: f64) -> Vec<Action> {
        self.now = now;
        self.dispatch()
    }

    /// True when every task is done.
    pub fn finished(&self) -> bool {
        self.tracker.finished()
    }

    /// When the last task was reported done.
    pub fn finished_at(&self) -> Option<f64> {
        self.finished_at
    }

    /// Tasks given a second copy so far.
    pub fn speculated(&self) -> &[TaskId] {
        &self.speculated
    }

    /// Every steal so far.
    pub fn steals(&self) -> &[Steal] {
        &self.steals
    }

    /// Placement decisions made so far (tasks sent).
    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    /// Tasks finished by `worker`.
    pub fn finished_by(&self, worker: WorkerId) -> usize {
        self.workers.get(&worker).map_or(0, |w| w.finished)
    }

    /// Where `key` is, if a finished task wrote it and some reader has not finished.
    pub fn location(&self, key: DataKey) -> Option<(WorkerId, u64)> {
        self.locations.get(&key).map(|l| (l.worker, l.bytes))
    }

    /// Drops the locations of `task`'s inputs once their last reader is done.
    fn forget_read_inputs(&mut self, task: TaskId) {
        for key in &self.graph.task(task).inputs {
            if let Some(l) = self.locations.get_mut(key) {
                l.readers_left = l.readers_left.saturating_sub(1);
                if l.readers_left == 0 {
                    self.locations.remove(key);
                }
            }
        }
    }

    /// A newly ready task: loads wait for any worker with room; others go to the worker holding most bytes
    /// of their inputs (ties: the one with fewest tasks).
    fn place(&mut self, task: TaskId) {
        let t = self.graph.task(task);
        if t.inputs.is_empty() || self.workers.is_empty() {
            self.ready_loads.push_back(task);
            return;
        }
        let mut held: BTreeMap<WorkerId, u64> = BTreeMap::new();
        for key in &t.inputs {
            if let Some(l) = self.locations.get(key) {
                *held.entry(l.worker).or_insert(0) += l.bytes;
            }
        }
        let best = self
            .workers
            .iter()
            .map(|(&id, w)| {
                let load = w.sent.len() + w.pending.len();
                (
                    held.get(&id).copied().unwrap_or(0),
                    std::cmp::Reverse(load),
                    id,
                )
            })
            .max()
            .map(|(_, _, id)| id);
        if let Some(w) = best.and_then(|id| self.workers.get_mut(&id)) {
            w.pending.push_back(task);
        }
    }

    /// Fills every worker's room: its own pending tasks, then loads, then (if allowed and worth it) a steal.
    fn dispatch(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            while let Some(task) = self.next_for(id, &mut actions) {
                actions.push(self.send(id, task));
            }
        }
        actions
    }

    /// The next task for worker `id` if it has room: its own pending tasks, then loads, then a steal or a
    /// speculative copy.
    fn next_for(&mut self, id: WorkerId, actions: &mut Vec<Action>) -> Option<TaskId> {
        let w = self.workers.get_mut(&id)?;
        if w.sent.len() >= w.cores + self.opts.queue_extra {
            return None;
        }
        if let Some(t) = w
            .pending
            .pop_front()
            .or_else(|| self.ready_loads.pop_front())
        {
            return Some(t);
        }
        if !self.opts.steal {
            return None;
        }
        self.steal_for(id, actions)
            .or_else(|| self.speculate_for(id, actions))
    }

    fn send(&mut self, worker: WorkerId, task: TaskId) -> Action {
        self.decisions += 1;
        if let Some(w) = self.workers.get_mut(&worker) {
            w.sent.push((task, self.now));
        }
        let attempt = self.tracker.start(task);
        Action::Run {
            worker,
            task,
            attempt,
        }
    }

    /// The best task for idle worker `to` to take from another worker's pending queue, if moving it beats
    /// waiting. Unmeasured links are probed (pushed to `actions`) instead.
    fn steal_for(&mut self, to: WorkerId, actions: &mut Vec<Action>) -> Option<TaskId> {
        // The last pending task of every other worker (it waits longest there), with its estimated wait.
        let candidates: Vec<(WorkerId, TaskId, f64)> = self
            .workers
            .iter()
            .filter(|&(&from, _)| from != to)
            .filter_map(|(&from, w)| {
                let task = *w.pending.back()?;
                let d = self.duration(stage_of(self.graph.task(task).kind), Some(from))?;
                let ahead = w.sent.len() + w.pending.len() - 1;
                Some((from, task, ahead as f64 * d / w.cores as f64))
            })
            .collect();
        let mut best: Option<Steal> = None;
        for (from, task, wait_seconds) in candidates {
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
    fn duration(&self, stage: (&'static str, usize), worker: Option<WorkerId>) -> Option<f64> {
        if let Some(d) = worker.and_then(|w| self.durations.get(&(stage, w))) {
            return Some(*d);
        }
        self.durations
            .iter()
            .filter(|((s, _), _)| *s == stage)
            .map(|(_, &d)| d)
            .min_by(f64::total_cmp)
    }

    /// A straggling task for idle worker `to` to run a copy of: sent elsewhere more than `speculate_after` x its
    /// stage's duration ago (the longest overdue first), inputs movable within one duration, not copied yet.
    fn speculate_for(&mut self, to: WorkerId, actions: &mut Vec<Action>) -> Option<TaskId> {
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
                    && !self.speculated.contains(&task)
                    && self.tracker.state(task) != crate::tracker::TaskState::Done
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
                return Some(task);
            }
        }
        None
    }

    /// Seconds to bring `task`'s inputs to `to` at the measured link rates; None (and a probe requested)
    /// when a link involved was never measured.
    fn transfer_seconds(
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
            if l.worker == to {
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

/// Tasks of one kind and node take about as long as each other.
fn stage_of(kind: TaskKind) -> (&'static str, usize) {
    match kind {
        TaskKind::Load { .. } => ("load", 0),
        TaskKind::Merge { node, .. } => ("merge", node),
        TaskKind::Combine { node, .. } => ("combine", node),
    }
}
