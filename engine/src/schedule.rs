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
//! - **Exchange**: a merge fed by many tasks (at least [`MOVE_FAN_IN`], as a rechunk's merge reads one piece
//!   of every load) must gather most of its bytes from other workers wherever it runs, so it gets a
//!   *gathering worker* when its first piece is written (the worker with fewest such merges per core) and
//!   each piece moves there as soon as it is written ([`Action::Move`]), while the loads go on, instead of
//!   all at once when the merge starts. The merge then runs there. A merge fed by few tasks keeps the rule
//!   above: it runs where most of its bytes already are, and nothing moves early.
//! - **Release**: workers keep every key they write until told to drop it ([`Action::Release`]): when its
//!   last reader is done, at once when nobody is left to read it, and for the copies written by duplicates.
//! - **Worker loss** ([`Scheduler::worker_lost`]): the tasks sent to the lost worker get a *strike* and run
//!   again elsewhere (a task struck [`SchedulerOptions::max_strikes`] times fails the job: it kills its
//!   workers); the keys it held that someone still has to read are rebuilt by running their producers again
//!   (lineage, [`TaskGraph::producer`]), recursively when those producers' own inputs were released already.
//!
//! Every event touches only what it changed: a completion visits its worker and the workers that got a task;
//! idle workers look for steals and copies on heartbeats, new measurements, new waiting work and losses.
//!
//! Times are seconds since the job started, passed in with every event.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use crate::data::{DataKey, FastMap};
use crate::graph::{TaskGraph, TaskId, TaskKind};
use crate::tracker::{Attempt, Completion, TaskState, TaskTracker};

mod keys;
mod loss;
mod placement;
mod speculation;

/// A worker of the job, numbered by the coordinator in order of joining (a wire type); `WorkerId::STORE` is
/// the job's object store as a holder of keys.
pub use arrayjob_spec::progress::WorkerId;

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
    /// Have `to` copy `key` from `from` now, ahead of the merge that will read it there; `to` reports the copy
    /// ([`Scheduler::key_moved`]) and `from` then drops its own.
    Move {
        /// The key.
        key: DataKey,
        /// Its holder.
        from: WorkerId,
        /// The merge's gathering worker.
        to: WorkerId,
    },
    /// Have `worker` upload `keys` (all read by `merge`) to the job's object store as one object, and report
    /// it ([`Scheduler::keys_shipped`]); under `exchange: s3`, when the merge is ready.
    Ship {
        /// The holder.
        worker: WorkerId,
        /// The merge that reads them.
        merge: TaskId,
        /// The keys, with their sizes in bytes.
        keys: Vec<(DataKey, u64)>,
    },
    /// Have `worker` drop its copy of `key`: nobody will read it there. For [`WorkerId::STORE`], the
    /// coordinator deletes the key's object once none of its keys is read any more.
    Release {
        /// The holder.
        worker: WorkerId,
        /// The key.
        key: DataKey,
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
    /// A task that was running on this many workers when they died fails the job.
    pub max_strikes: u32,
    /// Whether pieces of merges fed by many tasks move to their gathering worker as soon as they are
    /// written (see the module's *Exchange*).
    pub move_early: bool,
    /// `exchange: s3`: the pieces of a merge fed by many tasks go through the object store
    /// ([`Action::Ship`] when the merge is ready) instead of from worker to worker; `move_early` is then off.
    pub exchange_store: bool,
}

/// A merge reading keys written by at least this many tasks gets a gathering worker (see the module's
/// *Exchange*).
pub const MOVE_FAN_IN: usize = 4;

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            queue_extra: 1,
            steal: true,
            probe_bytes: 4 << 20,
            smoothing: 0.3,
            speculate_after: 3.0,
            max_strikes: 3,
            move_early: true,
            exchange_store: false,
        }
    }
}

/// What went through the object store ([`WorkerId::STORE`]; a wire type).
pub use arrayjob_spec::progress::StoreCounts;

/// A task moved from one worker's pending queue to an idle worker, and why (a wire type).
pub use arrayjob_spec::progress::Steal;

/// The job fails: `task` was running on `strikes` workers when they died, so it is taken to be what kills
/// them (say, it runs out of memory) rather than run on yet another one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {kind} was running on {strikes} workers that died")]
pub struct TaskFailure {
    /// The task.
    pub task: TaskId,
    /// What it does.
    pub kind: TaskKind,
    /// Workers that died while running it.
    pub strikes: u32,
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

impl Worker {
    /// Tasks sent or waiting here.
    fn load(&self) -> usize {
        self.sent.len() + self.pending.len()
    }
}

/// Where a key is, its size, and how many consumers are not done.
#[derive(Debug, Clone, Copy)]
struct Location {
    worker: WorkerId,
    bytes: u64,
    readers_left: usize,
}

/// Tasks of one kind and node take about as long as each other.
type Stage = (&'static str, usize);

/// Measured seconds per task of one stage, by worker, and the fastest of them.
#[derive(Debug, Default)]
struct StageTimes {
    by_worker: BTreeMap<WorkerId, f64>,
    fastest: f64,
}

impl StageTimes {
    /// Folds `seconds` into `worker`'s running average (weight `smoothing`).
    fn observe(&mut self, worker: WorkerId, seconds: f64, smoothing: f64) {
        let d = self.by_worker.entry(worker).or_insert(seconds);
        let old = *d;
        *d += smoothing * (seconds - *d);
        let new = *d;
        if self.by_worker.len() == 1 || new <= self.fastest {
            self.fastest = new;
        } else if old <= self.fastest {
            // The fastest worker got slower: another one may be fastest now.
            self.refresh();
        }
    }

    /// Forgets `worker`'s measurements; false when none are left.
    fn forget(&mut self, worker: WorkerId) -> bool {
        if self.by_worker.remove(&worker).is_some() {
            self.refresh();
        }
        !self.by_worker.is_empty()
    }

    fn refresh(&mut self) {
        self.fastest = self
            .by_worker
            .values()
            .copied()
            .min_by(f64::total_cmp)
            .unwrap_or(0.0);
    }
}

/// The policy's state for one job.
#[derive(Debug)]
pub struct Scheduler {
    graph: TaskGraph,
    tracker: TaskTracker,
    opts: SchedulerOptions,
    workers: BTreeMap<WorkerId, Worker>,
    /// Workers that have room for another task.
    room: BTreeSet<WorkerId>,
    /// Workers to visit at the next dispatch: they gained room or a pending task.
    wake: BTreeSet<WorkerId>,
    /// Whether every worker with room looks for a steal or a copy at the next dispatch.
    scout: bool,
    ready_loads: VecDeque<TaskId>,
    /// Ready tasks with inputs placed while there was no worker.
    unplaced: Vec<TaskId>,
    locations: FastMap<DataKey, Location>,
    /// Measured bytes per second of each (from, to) link.
    links: FastMap<(WorkerId, WorkerId), f64>,
    probing: Vec<(WorkerId, WorkerId)>,
    durations: FastMap<Stage, StageTimes>,
    steals: Vec<Steal>,
    /// Tasks given a second copy, in order, and as a set.
    speculated: Vec<TaskId>,
    copied: HashSet<TaskId>,
    /// Workers that died while running each task.
    strikes: FastMap<TaskId, u32>,
    recomputed: usize,
    /// The gathering worker of each merge fed by many tasks (None for a task read by few), and how many such
    /// merges not done each worker has.
    gather_at: FastMap<TaskId, Option<WorkerId>>,
    gathering: FastMap<WorkerId, usize>,
    /// Keys on their way to a gathering worker ([`Action::Move`] sent, not reported yet), and where to.
    moving: FastMap<DataKey, WorkerId>,
    /// Bytes moved to gathering workers.
    moved_bytes: u64,
    /// `exchange: s3`: keys being uploaded by their holder ([`Action::Ship`] sent, not reported yet), merges
    /// waiting for their pieces to be in the store, and shipments decided but not yet returned as actions.
    shipping: FastMap<DataKey, WorkerId>,
    awaiting_store: BTreeSet<TaskId>,
    ships: Vec<Action>,
    /// Who shipped each key held by the store, and the counts reported in the run's summary.
    shipped_from: FastMap<DataKey, WorkerId>,
    store_counts: StoreCounts,
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
            room: BTreeSet::new(),
            wake: BTreeSet::new(),
            scout: false,
            ready_loads: ready.into(),
            unplaced: Vec::new(),
            locations: FastMap::default(),
            links: FastMap::default(),
            probing: Vec::new(),
            durations: FastMap::default(),
            steals: Vec::new(),
            speculated: Vec::new(),
            copied: HashSet::new(),
            strikes: FastMap::default(),
            recomputed: 0,
            gather_at: FastMap::default(),
            gathering: FastMap::default(),
            moving: FastMap::default(),
            moved_bytes: 0,
            shipping: FastMap::default(),
            awaiting_store: BTreeSet::new(),
            ships: Vec::new(),
            shipped_from: FastMap::default(),
            store_counts: StoreCounts::default(),
            decisions: 0,
            now: 0.0,
            finished_at: None,
        }
    }

    /// The graph being run.
    pub fn graph(&self) -> &TaskGraph {
        &self.graph
    }

    /// A worker with `cores` cores joined at `now`: it gets work at once. A worker already known keeps its
    /// tasks and takes the new core count.
    pub fn add_worker(&mut self, worker: WorkerId, cores: usize, now: f64) -> Vec<Action> {
        self.now = now;
        let w = self.workers.entry(worker).or_insert_with(|| Worker {
            cores: 1,
            sent: Vec::new(),
            pending: VecDeque::new(),
            finished: 0,
        });
        w.cores = cores.max(1);
        self.update_room(worker);
        self.wake.insert(worker);
        self.share_gathering(worker);
        for task in std::mem::take(&mut self.unplaced) {
            self.place(task, false);
        }
        self.dispatch()
    }

    /// `worker` finished `task` in `seconds` (reported at `now`) and holds its `outputs` (key, bytes). Keys
    /// nobody is left to read are released at once. A duplicate report changes nothing but the worker's room,
    /// and releases the copies it wrote. A report from a worker not known (lost) is ignored: what it wrote is
    /// gone with it.
    pub fn task_done(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        outputs: &[(DataKey, u64)],
        seconds: f64,
        now: f64,
    ) -> Vec<Action> {
        self.now = now;
        if !self.unsend(worker, task) {
            return Vec::new();
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.finished += 1;
        }
        let was = self.tracker.state(task);
        let mut actions = Vec::new();
        match self.tracker.complete(&self.graph, task) {
            Completion::Duplicate => self.release_copies(worker, outputs, &mut actions),
            Completion::Done(ready) => {
                if was == TaskState::Ready {
                    // A late report of a task queued to run again.
                    self.unqueue(task);
                }
                self.observe_duration(task, worker, seconds);
                if let Some(Some(w)) = self.gather_at.remove(&task)
                    && let Some(n) = self.gathering.get_mut(&w)
                {
                    *n = n.saturating_sub(1);
                }
                self.record_outputs(worker, outputs, &mut actions);
                self.forget_read_inputs(task, &mut actions);
                if self.tracker.finished() {
                    self.finished_at = Some(now);
                }
                for t in ready {
                    self.place(t, false);
                }
            }
        }
        actions.extend(self.dispatch());
        actions
    }

    /// `worker` could not run `task` (reported at `now`) because an input could not be fetched: its holder
    /// died. No strike: the task runs again once its inputs are there (at once, unless a producer of its
    /// inputs was reopened), unless a copy of it still runs elsewhere.
    pub fn task_failed(&mut self, worker: WorkerId, task: TaskId, now: f64) -> Vec<Action> {
        self.now = now;
        if !self.unsend(worker, task) {
            return Vec::new();
        }
        if matches!(self.tracker.state(task), TaskState::Running(_))
            && !self.running_somewhere(task)
            && self.tracker.retry(task) == TaskState::Ready
        {
            self.place(task, true);
        }
        self.dispatch()
    }

    /// `worker` is gone (its heartbeats stopped; noticed at `now`), with what it held. Its pending tasks are
    /// placed again; the tasks sent to it get a strike and run again elsewhere; the keys it held that some
    /// task still reads are rebuilt from lineage. A worker not known changes nothing.
    ///
    /// # Errors
    /// [`TaskFailure`] when a task reaches [`SchedulerOptions::max_strikes`]: the job has failed, and the
    /// scheduler is not to be driven further.
    pub fn worker_lost(&mut self, worker: WorkerId, now: f64) -> Result<Vec<Action>, TaskFailure> {
        self.now = now;
        let Some(w) = self.workers.remove(&worker) else {
            return Ok(Vec::new());
        };
        self.forget_worker(worker);
        self.count_read_back(worker);
        let struck = self.strike(&w)?;
        let mut again = Vec::new();
        for p in self.lose_keys(worker) {
            self.reopen_lineage(p, &mut again);
        }
        for task in struck {
            self.tracker.retry(task);
            again.push(task);
        }
        again.extend(w.pending);
        // To the front of the queues, in this order: what others wait for first.
        for &task in again.iter().rev() {
            self.place(task, true);
        }
        self.scout = true;
        Ok(self.dispatch())
    }

    /// Whether `task` is done.
    pub fn is_done(&self, task: TaskId) -> bool {
        self.tracker.state(task) == TaskState::Done
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
        self.scout = true;
        self.dispatch()
    }

    /// `to` holds a copy of `key`, moved from `from` ([`Action::Move`]), reported at `now`: the key is now
    /// where its merge runs, and `from` drops its copy. A copy nobody needs (its merge is done, or the key was
    /// rebuilt elsewhere since) is dropped instead.
    pub fn key_moved(
        &mut self,
        key: DataKey,
        from: WorkerId,
        to: WorkerId,
        now: f64,
    ) -> Vec<Action> {
        self.now = now;
        if self.moving.get(&key) == Some(&to) {
            self.moving.remove(&key);
        }
        let alive = self.workers.contains_key(&to);
        match self.locations.get_mut(&key) {
            Some(l) if l.worker == to => Vec::new(),
            Some(l) if l.worker == from && alive => {
                l.worker = to;
                self.moved_bytes += l.bytes;
                vec![Action::Release { worker: from, key }]
            }
            _ => vec![Action::Release { worker: to, key }],
        }
    }

    /// `worker` uploaded `keys` to the object store ([`Action::Ship`]), reported at `now`. Returns the keys
    /// whose store copy is now the one on record (the caller keeps their object; the others — shipped twice, or
    /// no longer needed — it may delete) and what to do: the sender drops its copies, and merges whose pieces
    /// are all in the store are placed.
    pub fn keys_shipped(
        &mut self,
        worker: WorkerId,
        keys: &[DataKey],
        now: f64,
    ) -> (Vec<DataKey>, Vec<Action>) {
        self.now = now;
        let mut accepted = Vec::new();
        let mut actions = Vec::new();
        let mut merges = BTreeSet::new();
        for &key in keys {
            if self.shipping.get(&key) == Some(&worker) {
                self.shipping.remove(&key);
            }
            let Some(l) = self.locations.get_mut(&key) else {
                continue;
            };
            if l.worker != worker {
                continue;
            }
            l.worker = WorkerId::STORE;
            self.store_counts.shipped_keys += 1;
            self.store_counts.shipped_bytes += l.bytes;
            self.shipped_from.insert(key, worker);
            accepted.push(key);
            actions.push(Action::Release { worker, key });
            merges.extend(self.graph.consumers(key).iter().copied());
        }
        for m in merges {
            if self.awaiting_store.remove(&m) {
                self.place(m, false);
            }
        }
        actions.extend(self.dispatch());
        (accepted, actions)
    }

    /// `reporter` could not read `keys` (reported at `now`): from the object store (their object is damaged or
    /// gone) or from its own spill (a damaged frame). The copies on record there are forgotten and the keys
    /// rebuilt from lineage, never used. (The task that needed them is reported failed separately, with
    /// [`Scheduler::task_failed`].)
    pub fn keys_unreadable(
        &mut self,
        reporter: WorkerId,
        keys: &[DataKey],
        now: f64,
    ) -> Vec<Action> {
        self.now = now;
        let mut producers = BTreeSet::new();
        for key in keys {
            if self
                .locations
                .get(key)
                .is_some_and(|l| l.worker == WorkerId::STORE || l.worker == reporter)
            {
                self.locations.remove(key);
                self.shipped_from.remove(key);
                self.store_counts.unreadable += 1;
                producers.extend(self.graph.producer(*key));
            }
        }
        let mut again = Vec::new();
        for p in producers {
            self.reopen_lineage(p, &mut again);
        }
        for &task in again.iter().rev() {
            self.place(task, true);
        }
        self.dispatch()
    }

    /// Before any worker joins, takes over the state a ledger recorded (see `docs/s3.md`, "Resume"): `done`
    /// tasks are done, `durable` keys are in the store. A done task whose outputs are still read by a task not
    /// done but are not durable is reopened (with whatever it needs in turn, down to loads), so the run gives
    /// the same results whatever the ledger holds. Returns the tasks left done.
    pub fn restore(&mut self, done: &[TaskId], durable: &[(DataKey, u64)]) -> usize {
        let n = self.graph.len();
        let mut done: Vec<TaskId> = done.iter().copied().filter(|t| t.0 < n).collect();
        done.sort_unstable();
        done.dedup();
        for &t in &done {
            let _ = self.tracker.complete(&self.graph, t);
        }
        for &(key, bytes) in durable {
            let readers_left = self.readers_left(key);
            let produced = self
                .graph
                .producer(key)
                .is_some_and(|p| self.tracker.state(p) == TaskState::Done);
            if produced && readers_left > 0 {
                self.locations.insert(
                    key,
                    Location {
                        worker: WorkerId::STORE,
                        bytes,
                        readers_left,
                    },
                );
            }
        }
        let missing: BTreeSet<TaskId> = self
            .graph
            .tasks()
            .filter(|&(t, _)| self.tracker.state(t) != TaskState::Done)
            .flat_map(|(_, task)| task.inputs.iter())
            .filter(|k| !self.locations.contains_key(k))
            .filter_map(|&k| self.graph.producer(k))
            .filter(|&p| self.tracker.state(p) == TaskState::Done)
            .collect();
        let mut again = Vec::new();
        for p in missing {
            self.reopen_lineage(p, &mut again);
        }
        // Reopened here is not recomputed after a loss.
        self.recomputed = 0;
        let left = self.tracker.done();
        self.store_counts.restored_tasks = left as u64;
        self.store_counts.restored_reopened = (done.len() - left) as u64;
        let ready: Vec<TaskId> = self
            .graph
            .tasks()
            .filter(|(t, task)| {
                !task.inputs.is_empty() && self.tracker.state(*t) == TaskState::Ready
            })
            .map(|(t, _)| t)
            .collect();
        for t in ready {
            self.place(t, false);
        }
        if self.tracker.finished() {
            self.finished_at = Some(self.now);
        }
        left
    }

    /// What went through the object store so far.
    pub fn store_counts(&self) -> StoreCounts {
        self.store_counts
    }

    /// Time passed without events (the coordinator calls this on every heartbeat): overdue tasks may get
    /// copies on idle workers, and idle workers take waiting tasks it now pays to move.
    pub fn tick(&mut self, now: f64) -> Vec<Action> {
        self.now = now;
        self.scout = true;
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

    /// Tasks finished by `worker` (0 once it is lost).
    pub fn finished_by(&self, worker: WorkerId) -> usize {
        self.workers.get(&worker).map_or(0, |w| w.finished)
    }

    /// Where `key` is, if a finished task wrote it and some reader is not done.
    pub fn location(&self, key: DataKey) -> Option<(WorkerId, u64)> {
        self.locations.get(&key).map(|l| (l.worker, l.bytes))
    }

    /// Workers that died while running `task`.
    pub fn strikes(&self, task: TaskId) -> u32 {
        self.strikes.get(&task).copied().unwrap_or(0)
    }

    /// Done tasks run again because keys they wrote were lost with a worker.
    pub fn recomputed(&self) -> usize {
        self.recomputed
    }

    /// Bytes moved to gathering workers ahead of their merges.
    pub fn moved_bytes(&self) -> u64 {
        self.moved_bytes
    }

    /// Takes `task` off `worker`'s sent list; false when the worker is not known.
    fn unsend(&mut self, worker: WorkerId, task: TaskId) -> bool {
        let Some(w) = self.workers.get_mut(&worker) else {
            return false;
        };
        w.sent.retain(|&(t, _)| t != task);
        self.update_room(worker);
        self.wake.insert(worker);
        true
    }

    /// Keeps `worker`'s membership of the set of workers with room up to date.
    fn update_room(&mut self, worker: WorkerId) {
        let extra = self.opts.queue_extra;
        match self.workers.get(&worker) {
            Some(w) if w.sent.len() < w.cores + extra => self.room.insert(worker),
            _ => self.room.remove(&worker),
        };
    }
}

/// Tasks of one kind and node take about as long as each other.
fn stage_of(kind: TaskKind) -> Stage {
    match kind {
        TaskKind::Load { .. } => ("load", 0),
        TaskKind::Merge { node, .. } => ("merge", node),
        TaskKind::Combine { node, .. } => ("combine", node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Task;

    fn piece(group: usize, part: usize) -> DataKey {
        DataKey::Piece {
            node: 1,
            group,
            part,
        }
    }

    /// Two loads, each writing a piece for each of two merges.
    fn graph() -> TaskGraph {
        let mut tasks: Vec<Task> = (0..2)
            .map(|part| Task {
                kind: TaskKind::Load { chunk: part },
                inputs: vec![],
                outputs: vec![piece(0, part), piece(1, part)],
            })
            .collect();
        tasks.extend((0..2).map(|group| Task {
            kind: TaskKind::Merge { node: 1, group },
            inputs: vec![piece(group, 0), piece(group, 1)],
            outputs: vec![],
        }));
        TaskGraph::from_tasks(tasks).expect("graph")
    }

    /// One task at a time per worker, no steals or copies: placement is by locality alone.
    fn scheduler() -> Scheduler {
        let opts = SchedulerOptions {
            queue_extra: 0,
            steal: false,
            ..SchedulerOptions::default()
        };
        Scheduler::new(graph(), opts)
    }

    fn runs(actions: &[Action]) -> Vec<(WorkerId, TaskId)> {
        actions
            .iter()
            .filter_map(|a| match *a {
                Action::Run { worker, task, .. } => Some((worker, task)),
                _ => None,
            })
            .collect()
    }

    fn releases(actions: &[Action]) -> Vec<(WorkerId, DataKey)> {
        let mut r: Vec<_> = actions
            .iter()
            .filter_map(|a| match *a {
                Action::Release { worker, key } => Some((worker, key)),
                _ => None,
            })
            .collect();
        r.sort();
        r
    }

    fn written(s: &Scheduler, task: TaskId) -> Vec<(DataKey, u64)> {
        s.graph()
            .task(task)
            .outputs
            .iter()
            .map(|&k| (k, 8))
            .collect()
    }

    const W0: WorkerId = WorkerId(0);
    const W1: WorkerId = WorkerId(1);
    const LOAD: [TaskId; 2] = [TaskId(0), TaskId(1)];
    const MERGE: [TaskId; 2] = [TaskId(2), TaskId(3)];

    /// `loads` loads, each writing a piece for each of two merges (a rechunk's exchange).
    fn exchange(loads: usize) -> TaskGraph {
        let mut tasks: Vec<Task> = (0..loads)
            .map(|part| Task {
                kind: TaskKind::Load { chunk: part },
                inputs: vec![],
                outputs: vec![piece(0, part), piece(1, part)],
            })
            .collect();
        tasks.extend((0..2).map(|group| Task {
            kind: TaskKind::Merge { node: 1, group },
            inputs: (0..loads).map(|part| piece(group, part)).collect(),
            outputs: vec![],
        }));
        TaskGraph::from_tasks(tasks).expect("graph")
    }

    fn moves(actions: &[Action]) -> Vec<(DataKey, WorkerId, WorkerId)> {
        actions
            .iter()
            .filter_map(|a| match *a {
                Action::Move { key, from, to } => Some((key, from, to)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pieces_of_a_wide_merge_move_to_its_gathering_worker_as_they_are_written() {
        let mut s = Scheduler::new(exchange(4), SchedulerOptions::default());
        s.add_worker(W0, 1, 0.0);
        let l = |i| TaskId(i);
        // Alone, worker 0 gathers both merges: nothing moves.
        let a = s.task_done(W0, l(0), &written(&s, l(0)), 1.0, 1.0);
        assert_eq!(moves(&a), vec![]);
        // A joiner takes one of them (the first in task order); the next pieces of that merge written on
        // worker 0 move to it at once.
        s.add_worker(W1, 1, 1.0);
        let a = s.task_done(W0, l(1), &written(&s, l(1)), 1.0, 2.0);
        assert_eq!(moves(&a), vec![(piece(0, 1), W0, W1)]);
        // Once it has the copy, worker 0 drops its own and the key is located at worker 1.
        let a = s.key_moved(piece(0, 1), W0, W1, 2.5);
        assert_eq!(releases(&a), vec![(W0, piece(0, 1))]);
        assert_eq!(s.location(piece(0, 1)), Some((W1, 8)));
        // A piece written by the gathering worker stays; one of the other merge moves to worker 0.
        let a = s.task_done(W1, l(2), &written(&s, l(2)), 1.0, 3.0);
        assert_eq!(moves(&a), vec![(piece(1, 2), W1, W0)]);
        // The merge runs on its gathering worker even before its last piece arrives...
        let a = s.task_done(W0, l(3), &written(&s, l(3)), 1.0, 4.0);
        let merge0 = TaskId(4);
        assert!(runs(&a).contains(&(W1, merge0)), "{a:?}");
        // ...and a copy that lands after it is done is dropped where it landed.
        s.task_done(W1, merge0, &[], 1.0, 5.0);
        let a = s.key_moved(piece(0, 3), W0, W1, 5.5);
        assert_eq!(releases(&a), vec![(W1, piece(0, 3))]);
        assert_eq!(s.moved_bytes(), 8);
    }

    fn ships(actions: &[Action]) -> Vec<(WorkerId, TaskId, Vec<DataKey>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Ship {
                    worker,
                    merge,
                    keys,
                } => Some((*worker, *merge, keys.iter().map(|k| k.0).collect())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn through_the_store_a_ready_merge_has_each_holder_ship_its_pieces_once_then_runs_anywhere() {
        let opts = SchedulerOptions {
            exchange_store: true,
            ..SchedulerOptions::default()
        };
        let mut s = Scheduler::new(exchange(4), opts);
        s.add_worker(W0, 1, 0.0);
        s.add_worker(W1, 1, 0.0);
        let l = |i| TaskId(i);
        let mut a = Vec::new();
        for (i, w) in [(0, W0), (1, W1), (2, W0), (3, W1)] {
            a = s.task_done(w, l(i), &written(&s, l(i)), 1.0, 1.0 + i as f64);
            assert_eq!(moves(&a), vec![], "nothing moves from worker to worker");
        }
        // Both merges are ready: each holder ships, per merge, the pieces it holds; nothing runs yet.
        let (m0, m1) = (TaskId(4), TaskId(5));
        assert_eq!(
            ships(&a),
            vec![
                (W0, m0, vec![piece(0, 0), piece(0, 2)]),
                (W1, m0, vec![piece(0, 1), piece(0, 3)]),
                (W0, m1, vec![piece(1, 0), piece(1, 2)]),
                (W1, m1, vec![piece(1, 1), piece(1, 3)]),
            ]
        );
        assert_eq!(runs(&a), vec![]);
        // A report naming a key the worker does not hold is not taken on record.
        let (ok, a) = s.keys_shipped(W0, &[piece(0, 0), piece(0, 2), piece(0, 1)], 5.0);
        assert_eq!(ok, vec![piece(0, 0), piece(0, 2)]);
        assert_eq!(releases(&a), vec![(W0, piece(0, 0)), (W0, piece(0, 2))]);
        assert_eq!(s.location(piece(0, 0)), Some((WorkerId::STORE, 8)));
        assert_eq!(runs(&a), vec![]);
        let (_, a) = s.keys_shipped(W1, &[piece(0, 1), piece(0, 3)], 5.5);
        assert_eq!(runs(&a).len(), 1, "{a:?}");
        assert_eq!(runs(&a)[0].1, m0);
        // A worker lost after shipping: its shipped pieces are read back (counted), nothing is recomputed,
        // and what it had not shipped yet is rebuilt.
        let a = s.worker_lost(W1, 6.0).expect("no strike limit");
        assert_eq!(s.store_counts().read_back_after_loss, 2);
        assert_eq!(
            s.recomputed(),
            2,
            "loads 1 and 3 held unshipped pieces of merge 1"
        );
        assert!(runs(&a).iter().all(|&(w, _)| w == W0), "{a:?}");
        assert_eq!(s.store_counts().shipped_keys, 4);
    }

    #[test]
    fn a_restored_ledger_keeps_what_is_durable_and_reopens_what_is_not() {
        let opts = SchedulerOptions {
            exchange_store: true,
            ..SchedulerOptions::default()
        };
        // Loads 0-3 and merge 0 done; merge 1's pieces durable except the one of load 3.
        let mut s = Scheduler::new(exchange(4), opts);
        let done = [TaskId(0), TaskId(1), TaskId(2), TaskId(3), TaskId(4)];
        let durable: Vec<(DataKey, u64)> = (0..3).map(|p| (piece(1, p), 8)).collect();
        assert_eq!(s.restore(&done, &durable), 4);
        let c = s.store_counts();
        assert_eq!((c.restored_tasks, c.restored_reopened), (4, 1));
        assert!(s.is_done(TaskId(4)) && !s.is_done(TaskId(3)));
        assert_eq!(s.location(piece(1, 0)), Some((WorkerId::STORE, 8)));
        // The reopened load runs first; once its piece is shipped, merge 1 runs.
        let a = s.add_worker(W0, 1, 0.0);
        assert_eq!(runs(&a), vec![(W0, TaskId(3))]);
        let a = s.task_done(W0, TaskId(3), &written(&s, TaskId(3)), 1.0, 1.0);
        assert_eq!(ships(&a), vec![(W0, TaskId(5), vec![piece(1, 3)])]);
        let (_, a) = s.keys_shipped(W0, &[piece(1, 3)], 2.0);
        assert_eq!(runs(&a), vec![(W0, TaskId(5))]);
        s.task_done(W0, TaskId(5), &[], 1.0, 3.0);
        assert!(s.finished());
    }

    #[test]
    fn a_merge_fed_by_few_tasks_moves_nothing_early() {
        let mut s = scheduler();
        s.add_worker(W0, 1, 0.0);
        s.add_worker(W1, 1, 0.0);
        let a = s.task_done(W0, LOAD[0], &written(&s, LOAD[0]), 1.0, 1.0);
        assert_eq!(moves(&a), vec![]);
    }

    #[test]
    fn keys_are_released_after_their_last_reader_and_duplicate_copies_at_once() {
        let mut s = scheduler();
        assert_eq!(
            runs(&s.add_worker(W0, 2, 0.0)),
            vec![(W0, LOAD[0]), (W0, LOAD[1])]
        );
        assert_eq!(runs(&s.add_worker(W1, 1, 0.0)), vec![]);
        let out = written(&s, LOAD[0]);
        assert_eq!(releases(&s.task_done(W0, LOAD[0], &out, 1.0, 1.0)), vec![]);
        assert_eq!(s.location(piece(0, 0)), Some((W0, 8)));
        // A duplicate from another worker (a late copy): its copies go; the holder's own report changes nothing.
        assert_eq!(
            releases(&s.task_done(W1, LOAD[0], &out, 1.0, 1.1)),
            vec![(W1, piece(0, 0)), (W1, piece(1, 0))]
        );
        assert_eq!(releases(&s.task_done(W0, LOAD[0], &out, 1.0, 1.2)), vec![]);
        let out = written(&s, LOAD[1]);
        let a = s.task_done(W0, LOAD[1], &out, 1.0, 2.0);
        assert_eq!(
            runs(&a),
            vec![(W0, MERGE[0]), (W0, MERGE[1])],
            "where the pieces are"
        );
        assert_eq!(
            releases(&s.task_done(W0, MERGE[0], &[], 0.5, 2.5)),
            vec![(W0, piece(0, 0)), (W0, piece(0, 1))]
        );
        assert_eq!(s.location(piece(0, 0)), None);
        // A report from a worker nobody knows is ignored.
        assert_eq!(s.task_done(WorkerId(7), MERGE[1], &[], 0.5, 2.6), vec![]);
        assert!(!s.finished());
        assert_eq!(
            releases(&s.task_done(W0, MERGE[1], &[], 0.5, 2.7)),
            vec![(W0, piece(1, 0)), (W0, piece(1, 1))]
        );
        assert!(s.finished());
        assert_eq!(s.finished_at(), Some(2.7));
    }

    #[test]
    fn a_lost_worker_s_keys_are_rebuilt_and_outputs_nobody_reads_are_released_at_once() {
        let mut s = scheduler();
        assert_eq!(runs(&s.add_worker(W0, 1, 0.0)), vec![(W0, LOAD[0])]);
        assert_eq!(runs(&s.add_worker(W1, 1, 0.0)), vec![(W1, LOAD[1])]);
        s.task_done(W0, LOAD[0], &written(&s, LOAD[0]), 1.0, 1.0);
        let a = s.task_done(W1, LOAD[1], &written(&s, LOAD[1]), 1.0, 1.0);
        // Equal bytes on both: the merges go one to each worker.
        let mut placed = runs(&a);
        placed.sort_by_key(|&(_, t)| t);
        assert_eq!(placed, vec![(W1, MERGE[0]), (W0, MERGE[1])]);
        assert_eq!(
            releases(&s.task_done(W1, MERGE[0], &[], 0.5, 1.5)),
            vec![(W0, piece(0, 0)), (W1, piece(0, 1))]
        );

        // Worker 0 dies running merge 1, with load 0's piece for it: merge 1 is struck and waits for load 0,
        // which runs again on worker 1.
        let a = s.worker_lost(W0, 4.0).expect("one strike");
        assert_eq!(runs(&a), vec![(W1, LOAD[0])]);
        assert_eq!(s.strikes(MERGE[1]), 1);
        assert_eq!(s.strikes(LOAD[0]), 0);
        assert_eq!(s.recomputed(), 1);
        assert_eq!(s.location(piece(1, 0)), None);
        // Load 0 writes both pieces again: the one for merge 0, done, goes at once.
        let a = s.task_done(W1, LOAD[0], &written(&s, LOAD[0]), 1.0, 5.0);
        assert_eq!(releases(&a), vec![(W1, piece(0, 0))]);
        assert_eq!(runs(&a), vec![(W1, MERGE[1])]);
        assert_eq!(s.location(piece(1, 0)), Some((W1, 8)));
        // Worker 0's late report is ignored.
        assert_eq!(s.task_done(W0, MERGE[1], &[], 0.5, 5.1), vec![]);
        assert_eq!(
            releases(&s.task_done(W1, MERGE[1], &[], 0.5, 5.5)),
            vec![(W1, piece(1, 0)), (W1, piece(1, 1))]
        );
        assert!(s.finished());
    }

    #[test]
    fn a_task_on_too_many_dead_workers_fails_the_job() {
        let mut s = Scheduler::new(
            graph(),
            SchedulerOptions {
                max_strikes: 2,
                ..SchedulerOptions::default()
            },
        );
        s.add_worker(W0, 1, 0.0);
        s.add_worker(W1, 1, 0.0);
        // Load 0 was sent to worker 0 (with load 1 queued behind it); then worker 1 takes nothing else.
        assert!(s.worker_lost(W0, 3.0).is_ok());
        assert_eq!(s.strikes(LOAD[0]), 1);
        // Both loads went to worker 1 (struck tasks apart when possible; here there is one worker).
        let failure = s.worker_lost(W1, 6.0).expect_err("second strike");
        assert_eq!(failure.strikes, 2);
        assert_eq!(failure.kind, TaskKind::Load { chunk: 0 });
        assert_eq!(
            failure.to_string(),
            "task load(chunk 0) was running on 2 workers that died"
        );
    }
}
