//! Running tasks: the [`TaskRunner`] (one task, shared with the worker processes) and the local executor,
//! which runs the [`TaskGraph`] of a [`Plan`] on a pool of threads as one in-process worker of the job's
//! [`Scheduler`], the same placement code a distributed run uses.
//!
//! Task kinds (see [`crate::graph`]): *load* a source chunk, *merge* the pieces of a rechunk's merge group,
//! *combine* a reduction partial into the fold of the partials before it. Whatever a task produces is pushed
//! through the fused stages below it at once (`TaskRunner::emit`): recenter and FFT chunks are computed in
//! place, reductions take a partial, rechunks split the chunk into pieces; partials and pieces go to the
//! [`ChunkStore`] under their [`DataKey`] until the scheduler releases them. The scheduler sends merges and
//! combines before further loads, so stored data leaves memory as soon as it can.
//!
//! Results do not depend on thread timing: partials are folded in leaf order, pieces are pasted
//! into fixed positions.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::array::{Chunk, DType};
use crate::data::{Data, DataKey};
use crate::graph::{TaskGraph, TaskId, TaskKind, reduce_leaves, reduce_slot};
use crate::kernels::KernelError;
use crate::kernels::reduce::{self, Partial};
use crate::plan::{
    NodeOp, Plan, chunk_index, chunks_in, linear, merge_groups, overlapping, product, unlinear,
};
use crate::schedule::{Action, Scheduler, SchedulerOptions, WorkerId};
use crate::select::Selection;
use crate::source::{SliceSource, SourceError};
use crate::store::{ChunkStore, StoreError, StoreStats};

/// Receives every finished block of the nodes that have outputs.
pub trait ChunkSink: Send + Sync {
    /// Called once per block of node `node` (see [`crate::plan::Node::block`]; a chunk, or a merge group of
    /// chunks) whose first element is at `start`, from any thread.
    ///
    /// # Errors
    /// When the output cannot be written; the run stops.
    fn deliver(&self, node: usize, start: &[usize], block: &Chunk) -> Result<(), ExecError>;

    /// The shape of the pieces in which node `node`'s blocks may come cut ([`ChunkSink::deliver_tiles`]): `Some`
    /// only when all the sink does with them is write them into a sharded Zarr array (the shape of its inner
    /// chunks), so that a kernel can write the pieces directly. Default: `None`.
    fn tile_shape(&self, _node: usize) -> Option<Vec<usize>> {
        None
    }

    /// Takes a block of node `node` whose first element is at `start`, of shape `shape`, as its pieces of
    /// [`ChunkSink::tile_shape`] (row-major, as [`Chunk::split_grid`] cuts it). The default pastes them back
    /// into the block and delivers that.
    ///
    /// # Errors
    /// As [`ChunkSink::deliver`]; when the pieces do not tile the block.
    fn deliver_tiles(
        &self,
        node: usize,
        start: &[usize],
        shape: &[usize],
        tiles: &[Chunk],
    ) -> Result<(), ExecError> {
        let (Some(tile), Some(first)) = (self.tile_shape(node), tiles.first()) else {
            return Err(ExecError::Internal(format!(
                "node {node}: pieces delivered without a piece shape"
            )));
        };
        let grid: Vec<usize> = shape
            .iter()
            .zip(&tile)
            .map(|(s, t)| s.div_ceil(*t))
            .collect();
        let mut block = Chunk::zeros(first.dtype(), shape);
        for (idx, t) in crate::array::grid_indices(&grid).iter().zip(tiles) {
            let at: Vec<usize> = idx.iter().zip(&tile).map(|(i, t)| i * t).collect();
            block.paste(&at, t).map_err(ExecError::Internal)?;
        }
        self.deliver(node, start, &block)
    }
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Reading the source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A kernel refused its input.
    #[error("stage '{stage}', chunk {chunk:?}: {source}")]
    Kernel {
        /// Stage name.
        stage: String,
        /// Chunk index.
        chunk: Vec<usize>,
        /// Kernel error.
        source: KernelError,
    },
    /// The chunk store failed (spill I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An output could not be written.
    #[error("stage '{stage}': writing {target} failed: {message}")]
    Output {
        /// Stage name.
        stage: String,
        /// File or directory.
        target: String,
        /// What failed.
        message: String,
    },
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The plan's tasks do not fit together: a bug, reported rather than run or left hanging.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Worker threads.
    pub threads: usize,
    /// Bytes the chunk store may keep in memory before spilling.
    pub memory_budget: usize,
    /// Directory for the spill file.
    pub spill_dir: std::path::PathBuf,
    /// Where spilling goes beyond a disk limit (the job's S3 scratch); `None`: disk only, unbounded.
    pub spill_tier: Option<crate::s3::spill::SpillTier>,
}

/// Live counters of one node, readable while the run goes on.
#[derive(Debug)]
pub struct NodeProgress {
    /// Node name.
    pub name: String,
    /// Operation kind.
    pub kind: &'static str,
    /// Units of work in total.
    pub total: u64,
    done: AtomicU64,
    busy_ns: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A copy of a node's counters.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSnapshot {
    /// Node name.
    pub name: String,
    /// Operation kind.
    pub kind: String,
    /// Units of work in total.
    pub tasks_total: u64,
    /// Units of work done.
    pub tasks_done: u64,
    /// Bytes read by this node's computations.
    pub bytes_in: u64,
    /// Bytes of the chunks it produced.
    pub bytes_out: u64,
    /// Wall-clock seconds from its first to its last unit of work.
    pub seconds: f64,
    /// When its first unit of work started, seconds after the run started.
    pub start_seconds: f64,
    /// When its last unit of work ended, seconds after the run started.
    pub end_seconds: f64,
    /// Thread-seconds spent in its computations.
    pub busy_seconds: f64,
    /// The stage's result, when it is a single number with a `value` output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// Progress of a whole run: one [`NodeProgress`] per plan node.
#[derive(Debug)]
pub struct JobProgress {
    start: Instant,
    nodes: Vec<NodeProgress>,
    /// When the last load task finished with everything fused into it (means, recenter, rechunk split).
    loads_end_ns: AtomicU64,
}

impl JobProgress {
    /// Counters for every node of `plan`, all at zero.
    pub fn new(plan: &Plan) -> JobProgress {
        JobProgress {
            start: Instant::now(),
            nodes: plan
                .nodes
                .iter()
                .map(|n| NodeProgress {
                    name: n.name.clone(),
                    kind: n.op.kind(),
                    total: n.tasks(&plan.nodes) as u64,
                    done: AtomicU64::new(0),
                    busy_ns: AtomicU64::new(0),
                    first_ns: AtomicU64::new(u64::MAX),
                    last_ns: AtomicU64::new(0),
                    bytes_in: AtomicU64::new(0),
                    bytes_out: AtomicU64::new(0),
                })
                .collect(),
            loads_end_ns: AtomicU64::new(0),
        }
    }

    /// Seconds after the start when the last load task ended, including the work fused into it (reductions,
    /// recentering, the rechunk's split): the end of the loading phase.
    pub fn load_end_seconds(&self) -> f64 {
        self.loads_end_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Sets the counters to what worker processes reported: per worker, its offset (seconds between this
    /// run's start and the worker's), its node snapshots and its end of loading. Units of work are summed (a
    /// unit recomputed after a worker loss counts once per run, capped at the total), times are the earliest
    /// start and latest end.
    pub fn absorb(&self, workers: &[(f64, &[NodeSnapshot], f64)]) {
        let ns = |s: f64| (s.max(0.0) * 1e9) as u64;
        for (i, n) in self.nodes.iter().enumerate() {
            let mut done = 0;
            let (mut busy, mut bytes_in, mut bytes_out) = (0.0, 0, 0);
            let (mut first, mut last) = (u64::MAX, 0);
            for (offset, snaps, _) in workers {
                let Some(s) = snaps.get(i) else { continue };
                done += s.tasks_done;
                busy += s.busy_seconds;
                bytes_in += s.bytes_in;
                bytes_out += s.bytes_out;
                if s.tasks_done > 0 || s.busy_seconds > 0.0 {
                    first = first.min(ns(offset + s.start_seconds));
                    last = last.max(ns(offset + s.end_seconds));
                }
            }
            n.done.store(done.min(n.total), Ordering::Relaxed);
            n.busy_ns.store(ns(busy), Ordering::Relaxed);
            n.bytes_in.store(bytes_in, Ordering::Relaxed);
            n.bytes_out.store(bytes_out, Ordering::Relaxed);
            n.first_ns.store(first, Ordering::Relaxed);
            n.last_ns.store(last, Ordering::Relaxed);
        }
        let load_end = workers
            .iter()
            .filter(|(_, _, end)| *end > 0.0)
            .map(|(offset, _, end)| ns(offset + end))
            .max()
            .unwrap_or(0);
        self.loads_end_ns.store(load_end, Ordering::Relaxed);
    }

    /// Current counters of every node.
    pub fn snapshot(&self) -> Vec<NodeSnapshot> {
        self.nodes
            .iter()
            .map(|n| {
                let first = n.first_ns.load(Ordering::Relaxed);
                let last = n.last_ns.load(Ordering::Relaxed);
                NodeSnapshot {
                    name: n.name.clone(),
                    kind: n.kind.to_string(),
                    tasks_total: n.total,
                    tasks_done: n.done.load(Ordering::Relaxed),
                    bytes_in: n.bytes_in.load(Ordering::Relaxed),
                    bytes_out: n.bytes_out.load(Ordering::Relaxed),
                    seconds: if first == u64::MAX {
                        0.0
                    } else {
                        last.saturating_sub(first) as f64 / 1e9
                    },
                    start_seconds: if first == u64::MAX {
                        0.0
                    } else {
                        first as f64 / 1e9
                    },
                    end_seconds: last as f64 / 1e9,
                    busy_seconds: n.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
                    value: None,
                }
            })
            .collect()
    }

    /// Adds a unit of work of `node` that started at `started` and read `bytes_in`; `done` units are finished.
    fn record(&self, node: usize, started: Instant, bytes_in: usize, done: u64) {
        let n = &self.nodes[node];
        let s = started.duration_since(self.start).as_nanos() as u64;
        let e = self.start.elapsed().as_nanos() as u64;
        n.first_ns.fetch_min(s, Ordering::Relaxed);
        n.last_ns.fetch_max(e, Ordering::Relaxed);
        n.busy_ns.fetch_add(e.saturating_sub(s), Ordering::Relaxed);
        n.bytes_in.fetch_add(bytes_in as u64, Ordering::Relaxed);
        n.done.fetch_add(done, Ordering::Relaxed);
    }
}

/// Where a task reads its inputs and writes the data it makes. The local executor takes inputs out of its
/// store and stores outputs for their consumers; a worker process reads fetched copies and keeps what it
/// makes until the coordinator releases it.
pub trait TaskIo: Sync {
    /// The data under `key`, an input of the running task.
    ///
    /// # Errors
    /// When it is not there or cannot be read back.
    fn read(&self, key: DataKey) -> Result<Arc<Data>, ExecError>;
    /// Stores `data`, an output of the running task, under `key`.
    ///
    /// # Errors
    /// When it cannot be stored (spill I/O).
    fn write(&self, key: DataKey, data: Data) -> Result<(), ExecError>;
}

/// Runs one task of a plan at a time, from any thread: loads read the source, merges paste pieces, combines
/// fold partials, and whatever a task makes is pushed through the stages fused below it (`TaskRunner::emit`).
/// Shared by the local executor and the worker process; it knows nothing of queues or networks.
#[derive(Clone, Copy)]
pub struct TaskRunner<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// The job's source.
    pub source: &'a dyn SliceSource,
    /// Where blocks of nodes with outputs go.
    pub sink: &'a dyn ChunkSink,
    /// Counters.
    pub progress: &'a JobProgress,
    /// The store whose budget blocks being merged count against.
    pub store: &'a ChunkStore,
    /// Set to stop at the next block.
    pub cancel: &'a AtomicBool,
}

impl std::fmt::Debug for TaskRunner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRunner")
            .field("nodes", &self.plan.nodes.len())
            .finish_non_exhaustive()
    }
}

/// The [`TaskIo`] of a worker, in this process or another: inputs come from copies fetched from other
/// workers or from this worker's store; what a task writes stays in the store until the scheduler releases
/// it ([`crate::schedule::Action::Release`]), and is listed for the task's completion report.
#[derive(Debug)]
pub struct KeepingIo<'a> {
    store: &'a ChunkStore,
    fetched: std::collections::HashMap<DataKey, Arc<Data>>,
    outputs: Mutex<Vec<(DataKey, u64)>>,
    /// Whether a read takes the key out of the store at once (see [`KeepingIo::consuming`]).
    consume: bool,
}

impl<'a> KeepingIo<'a> {
    /// I/O of one task on `store`, with the inputs `fetched` from elsewhere.
    pub fn new(
        store: &'a ChunkStore,
        fetched: std::collections::HashMap<DataKey, Arc<Data>>,
    ) -> Self {
        KeepingIo {
            store,
            fetched,
            outputs: Mutex::new(Vec::new()),
            consume: false,
        }
    }

    /// Reads take keys out of the store (every key has one reader), so a reduction state is folded without a
    /// copy and pieces leave memory as they are pasted. For a process whose task failures end the run: a
    /// worker that may run a task again keeps its inputs until the scheduler releases them.
    pub fn consuming(mut self) -> Self {
        self.consume = true;
        self
    }

    /// The keys the task wrote, with their sizes.
    pub fn into_outputs(self) -> Vec<(DataKey, u64)> {
        self.outputs.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl TaskIo for KeepingIo<'_> {
    fn read(&self, key: DataKey) -> Result<Arc<Data>, ExecError> {
        if let Some(d) = self.fetched.get(&key) {
            return Ok(d.clone());
        }
        let d = self.store.get(key)?;
        if self.consume {
            // The release the scheduler sends later finds nothing to do.
            self.store.remove(key)?;
        }
        Ok(d)
    }

    fn write(&self, key: DataKey, data: Data) -> Result<(), ExecError> {
        let n = data.nbytes() as u64;
        self.store.put(key, data, usize::MAX)?;
        self.outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, n));
        Ok(())
    }
}

/// The one worker of a local run.
const LOCAL: WorkerId = WorkerId(0);

/// The local executor: one in-process worker of the job's [`Scheduler`] (the same placement code as a
/// distributed run), its threads running what the scheduler sends.
struct Exec<'a> {
    runner: TaskRunner<'a>,
    sched: Mutex<Scheduler>,
    /// Tasks the scheduler sent, in order.
    queue: Mutex<VecDeque<TaskId>>,
    wake: Condvar,
    /// Tasks queued or running.
    outstanding: AtomicUsize,
    failed: Mutex<Option<ExecError>>,
    /// The caller's cancel flag (the runner's own flag is set on the first failure or on cancel).
    cancel: &'a AtomicBool,
    start: Instant,
}

/// Runs `plan` over `source`, sending finished chunks of nodes with outputs to `sink`.
///
/// # Errors
/// The first error of any task (source, kernel, spill, output); the other threads stop at their next task.
/// [`ExecError::Cancelled`] when `cancel` is set.
pub fn execute(
    plan: &Plan,
    source: &dyn SliceSource,
    sink: &dyn ChunkSink,
    opts: &ExecOptions,
    progress: &JobProgress,
    cancel: &AtomicBool,
) -> Result<StoreStats, ExecError> {
    let spill = crate::store::FileSpill::new(&opts.spill_dir).map_err(|e| ExecError::Output {
        stage: "-".into(),
        target: opts.spill_dir.display().to_string(),
        message: format!("cannot create the spill file: {e}"),
    })?;
    let graph = TaskGraph::build(plan).map_err(|e| ExecError::Internal(e.to_string()))?;
    let spill: Box<dyn crate::store::SpillBackend> = match &opts.spill_tier {
        Some(tier) => Box::new(crate::s3::spill::TieredSpill::new(spill, tier.clone())),
        None => Box::new(spill),
    };
    let store = ChunkStore::new(opts.memory_budget, spill);
    // Set on the first failure or on cancel, so every thread stops at its next block.
    let halt = AtomicBool::new(false);
    let mut sched = Scheduler::new(
        graph,
        SchedulerOptions {
            steal: false,
            ..SchedulerOptions::default()
        },
    );
    let first = sched.add_worker(LOCAL, opts.threads.max(1), 0.0);
    let ex = Exec {
        runner: TaskRunner {
            plan,
            source,
            sink,
            progress,
            store: &store,
            cancel: &halt,
        },
        sched: Mutex::new(sched),
        outstanding: AtomicUsize::new(0),
        queue: Mutex::new(VecDeque::new()),
        wake: Condvar::new(),
        failed: Mutex::new(None),
        cancel,
        start: Instant::now(),
    };
    ex.obey(first)?;
    std::thread::scope(|s| {
        for t in 0..opts.threads.max(1) {
            let ex = &ex;
            std::thread::Builder::new()
                .name(format!("arrayjob-exec-{t}"))
                .spawn_scoped(s, move || ex.worker())
                .map(|_| ())
                .unwrap_or_else(|e| {
                    ex.fail(ExecError::Output {
                        stage: "-".into(),
                        target: "thread".into(),
                        message: e.to_string(),
                    })
                });
        }
    });
    if let Some(e) = ex.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(ExecError::Cancelled);
    }
    ex.check_finished()?;
    Ok(store.stats())
}

impl Exec<'_> {
    fn fail(&self, e: ExecError) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        drop(f);
        self.runner.cancel.store(true, Ordering::Relaxed);
        self.wake_all();
    }

    /// Wakes every waiting thread, under the queue's lock: a thread checks its conditions (stopped, queue,
    /// outstanding) under that lock and waits atomically with its release, so a change made before this call
    /// is seen either by its check or by its wake-up, never lost in between.
    fn wake_all(&self) {
        let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    fn stopped(&self) -> bool {
        if self.cancel.load(Ordering::Relaxed) {
            self.runner.cancel.store(true, Ordering::Relaxed);
        }
        self.runner.cancel.load(Ordering::Relaxed)
    }

    /// Carries out the scheduler's decisions: tasks to the threads' queue, released keys out of the store.
    fn obey(&self, actions: Vec<Action>) -> Result<(), ExecError> {
        for a in actions {
            match a {
                Action::Run { task, .. } => {
                    self.outstanding.fetch_add(1, Ordering::SeqCst);
                    self.queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(task);
                    self.wake.notify_one();
                }
                Action::Release { key, .. } => {
                    self.runner.store.remove(key)?;
                }
                // One worker: no links to measure, every merge gathers where its pieces are, and nothing is
                // exchanged through the store (`exchange_store` is off here).
                Action::Probe { .. } | Action::Move { .. } | Action::Ship { .. } => {}
            }
        }
        Ok(())
    }

    /// Reports `task` done with its `outputs` and carries out what the scheduler decides next.
    fn completed(
        &self,
        task: TaskId,
        outputs: &[(DataKey, u64)],
        seconds: f64,
    ) -> Result<(), ExecError> {
        let now = self.start.elapsed().as_secs_f64();
        let actions = self
            .sched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .task_done(LOCAL, task, outputs, seconds, now);
        self.obey(actions)
    }

    /// After a run without errors: every task done and nothing left in the store, or a bug to report.
    fn check_finished(&self) -> Result<(), ExecError> {
        let sched = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        if !sched.finished() {
            let total = sched.graph().len();
            let done = sched
                .graph()
                .tasks()
                .filter(|(id, _)| sched.is_done(*id))
                .count();
            return Err(ExecError::Internal(format!(
                "{} of {total} tasks never became ready",
                total - done
            )));
        }
        if !self.runner.store.is_empty() {
            return Err(ExecError::Internal(format!(
                "{} intermediate results were never read",
                self.runner.store.len()
            )));
        }
        Ok(())
    }

    fn worker(&self) {
        loop {
            let task = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if self.stopped() {
                        return;
                    }
                    if let Some(t) = q.pop_front() {
                        break t;
                    }
                    if self.outstanding.load(Ordering::SeqCst) == 0 {
                        return;
                    }
                    q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            if let Err(e) = self.run(task) {
                self.fail(e);
            }
            if self.outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.wake_all();
            }
        }
    }

    fn run(&self, task: TaskId) -> Result<(), ExecError> {
        let kind = self
            .sched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .graph()
            .task(task)
            .kind;
        let t0 = Instant::now();
        let io = KeepingIo::new(self.runner.store, std::collections::HashMap::new()).consuming();
        self.runner.run(kind, &io)?;
        self.completed(task, &io.into_outputs(), t0.elapsed().as_secs_f64())
    }
}

impl TaskRunner<'_> {
    fn stopped(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Runs one task, reading its inputs from and writing its outputs to `io`.
    ///
    /// # Errors
    /// Source, kernel, store and output failures, named by stage and chunk; [`ExecError::Cancelled`].
    pub fn run(&self, kind: TaskKind, io: &dyn TaskIo) -> Result<(), ExecError> {
        match kind {
            TaskKind::Load { chunk } => {
                let meta = &self.plan.nodes[0].meta;
                let (start, len) = meta.chunk_region(&unlinear(&meta.grid(), chunk));
                let t0 = Instant::now();
                let chunk = self.source.read(start[0], start[0] + len[0])?;
                self.progress.record(0, t0, 0, 1);
                self.emit(io, 0, &start, chunk)?;
                let end = self.progress.start.elapsed().as_nanos() as u64;
                self.progress.loads_end_ns.fetch_max(end, Ordering::Relaxed);
                Ok(())
            }
            TaskKind::Merge { node, group } => match &self.plan.nodes[node].op {
                NodeOp::Select(sel) => self.select_merge(io, node, sel, group),
                _ => self.merge(io, node, group),
            },
            TaskKind::Combine { node, out, leaf } => self.combine(io, node, out, leaf),
        }
    }

    /// Pastes the pieces of merge group `group` of rechunk `node` into one block and emits it.
    fn merge(&self, io: &dyn TaskIo, node: usize, group: usize) -> Result<(), ExecError> {
        let n = &self.plan.nodes[node];
        let Some(input) = n.input else { return Ok(()) };
        let im = &self.plan.nodes[input].meta;
        let groups = merge_groups(&n.meta);
        let gidx = unlinear(&groups.grid(), group);
        let (start, len) = groups.chunk_region(&gidx);
        let t0 = Instant::now();
        // The block counts against the memory budget while it is assembled and passed on.
        let held = Held::new(
            self.store,
            len.iter().product::<usize>() * n.meta.dtype.size(),
        )?;
        let mut block = Chunk::zeros(n.meta.dtype, &len);
        let mut bytes = 0;
        for part in product(&overlapping(&im.chunks, &start, &len)) {
            let (ps, _) = im.chunk_region(&part);
            let key = DataKey::Piece {
                node,
                group,
                part: linear(&im.grid(), &part),
            };
            let stored = io.read(key)?;
            let Data::Chunk(piece) = &*stored else {
                return Err(wrong_kind(key, &stored));
            };
            let at: Vec<usize> = ps
                .iter()
                .zip(&start)
                .map(|(&p, &s)| p.saturating_sub(s))
                .collect();
            block
                .paste(&at, piece)
                .map_err(|m| self.kernel_err(node, &gidx, m))?;
            bytes += piece.nbytes();
        }
        self.progress
            .record(node, t0, bytes, chunks_in(&n.meta, &start, &len));
        let emitted = self.emit(io, node, &start, block);
        drop(held);
        emitted
    }

    /// Makes output chunk `group` of select `node`: reads its slices from the source (a select of the source)
    /// or pastes the pieces of its input's chunks, drops the axes picked with `index`, and emits it.
    fn select_merge(
        &self,
        io: &dyn TaskIo,
        node: usize,
        sel: &Selection,
        group: usize,
    ) -> Result<(), ExecError> {
        let n = &self.plan.nodes[node];
        let Some(input) = n.input else { return Ok(()) };
        let im = &self.plan.nodes[input].meta;
        let full = sel.full_meta(im);
        let idx = unlinear(&full.grid(), group);
        let (start, len) = full.chunk_region(&idx);
        let t0 = Instant::now();
        let block = if n.reads_source() {
            let picked = |a: usize| sel.indices[a][start[a]..start[a] + len[a]].to_vec();
            let slices = crate::select::read_selected(self.source, &picked(0))?;
            let mut local: Vec<Vec<usize>> = (0..start.len()).map(picked).collect();
            local[0] = (0..len[0]).collect();
            crate::select::take(&slices, &local)
        } else {
            self.paste_pieces(io, node, sel, group, &start, &len)?
        };
        self.progress.record(node, t0, block.nbytes(), 1);
        let kidx = sel.kept(&idx);
        let (kstart, _) = n.meta.chunk_region(&kidx);
        self.emit(
            io,
            node,
            &kstart,
            crate::select::drop_axes(block, &sel.dropped),
        )
    }

    /// Pastes the pieces of output chunk `group` of select `node` (full coordinates `start .. start + len`).
    fn paste_pieces(
        &self,
        io: &dyn TaskIo,
        node: usize,
        sel: &Selection,
        group: usize,
        start: &[usize],
        len: &[usize],
    ) -> Result<Chunk, ExecError> {
        let n = &self.plan.nodes[node];
        let Some(input) = n.input else {
            return Err(ExecError::Internal(format!(
                "select '{}' has no input",
                n.name
            )));
        };
        let im = &self.plan.nodes[input].meta;
        let mut block = Chunk::zeros(n.meta.dtype, len);
        for part in sel.parts_of(im, start, len) {
            let key = DataKey::Piece {
                node,
                group,
                part: linear(&im.grid(), &part),
            };
            let stored = io.read(key)?;
            let Data::Chunk(piece) = &*stored else {
                return Err(wrong_kind(key, &stored));
            };
            let (ps, pl) = im.chunk_region(&part);
            let at: Vec<usize> = sel
                .positions(&ps, &pl)
                .iter()
                .zip(start)
                .map(|(r, &s)| r.start.max(s) - s)
                .collect();
            block
                .paste(&at, piece)
                .map_err(|m| self.kernel_err(node, &part, m))?;
        }
        Ok(block)
    }

    /// Cuts the selected elements of `data` (a chunk of `node` at `start`) into the pieces of select `child`'s
    /// output chunks and stores them.
    fn select_split(
        &self,
        io: &dyn TaskIo,
        node: usize,
        child: usize,
        sel: &Selection,
        start: &[usize],
        data: &Chunk,
    ) -> Result<(), ExecError> {
        let t0 = Instant::now();
        let im = &self.plan.nodes[node].meta;
        let part = linear(&im.grid(), &chunk_index(im, start));
        let full = sel.full_meta(im);
        for (o, within) in sel.pieces(&full, start, data.shape()) {
            let key = DataKey::Piece {
                node: child,
                group: linear(&full.grid(), &o),
                part,
            };
            io.write(key, sel.gather(data, start, &within).into())?;
        }
        self.progress.record(child, t0, 0, 0);
        Ok(())
    }

    fn kernel_err(&self, node: usize, idx: &[usize], m: String) -> ExecError {
        ExecError::Kernel {
            stage: self.plan.nodes[node].name.clone(),
            chunk: idx.to_vec(),
            source: KernelError::InvalidArgument {
                name: "chunk",
                reason: m,
            },
        }
    }

    /// Hands a finished block of `node` (its element at `start` first; one chunk, or several when the node is
    /// produced in larger blocks) to the node's outputs and to every stage that reads it. FFTs take the block
    /// whole (they transform each series, whatever the block's width); other stages take it chunk by chunk.
    fn emit(
        &self,
        io: &dyn TaskIo,
        node: usize,
        start: &[usize],
        block: Chunk,
    ) -> Result<(), ExecError> {
        if self.stopped() {
            return Err(ExecError::Cancelled);
        }
        let n = &self.plan.nodes[node];
        self.progress.nodes[node]
            .bytes_out
            .fetch_add(block.nbytes() as u64, Ordering::Relaxed);
        if n.output.is_some() {
            self.sink.deliver(node, start, &block)?;
        }
        for &child in &n.children {
            if matches!(self.plan.nodes[child].op, NodeOp::Fft(_)) {
                self.apply(io, node, child, start, &block)?;
                continue;
            }
            let len = block.shape();
            if n.meta.chunk_region(&chunk_index(&n.meta, start)).1 == len {
                self.apply(io, node, child, start, &block)?;
                continue;
            }
            for idx in product(&overlapping(&n.meta.chunks, start, len)) {
                let (cs, cl) = n.meta.chunk_region(&idx);
                let rel: Vec<usize> = cs.iter().zip(start).map(|(c, s)| c - s).collect();
                self.apply(io, node, child, &cs, &block.region(&rel, &cl))?;
            }
        }
        Ok(())
    }

    /// The piece shape in which FFT node `node` (transforming along `axis`) hands its blocks to the sink
    /// already cut ([`ChunkSink::tile_shape`]): only when the sink is all that takes them (no stage reads the
    /// node) and the transform runs along axis 0.
    fn fft_tiles(&self, node: usize, axis: usize) -> Option<Vec<usize>> {
        let n = &self.plan.nodes[node];
        if axis != 0 || !n.children.is_empty() || n.output.is_none() {
            return None;
        }
        self.sink.tile_shape(node)
    }

    /// Like [`TaskRunner::emit`] for a block given as its pieces (`tiles`) of a node no stage reads.
    fn emit_tiles(
        &self,
        node: usize,
        start: &[usize],
        shape: &[usize],
        tiles: &[Chunk],
    ) -> Result<(), ExecError> {
        if self.stopped() {
            return Err(ExecError::Cancelled);
        }
        let bytes: usize = tiles.iter().map(Chunk::nbytes).sum();
        self.progress.nodes[node]
            .bytes_out
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.sink.deliver_tiles(node, start, shape, tiles)
    }

    /// Runs stage `child` on `data`, a block of its input `node` starting at `start`, and emits what it makes.
    fn apply(
        &self,
        io: &dyn TaskIo,
        node: usize,
        child: usize,
        start: &[usize],
        data: &Chunk,
    ) -> Result<(), ExecError> {
        let n = &self.plan.nodes[node];
        let c = &self.plan.nodes[child];
        let idx = chunk_index(&n.meta, start);
        let kerr = |source: KernelError| ExecError::Kernel {
            stage: c.name.clone(),
            chunk: idx.clone(),
            source,
        };
        // Recenter and FFT chunks have their input's chunk index (their chunks differ only in length).
        let child_start: Vec<usize> = idx.iter().zip(&c.meta.chunks).map(|(i, k)| i * k).collect();
        let t0 = Instant::now();
        match &c.op {
            NodeOp::Recenter { window } => {
                let (out, _) =
                    crate::kernels::recenter::recenter_chunk(data, *window).map_err(kerr)?;
                self.progress.record(child, t0, data.nbytes(), 1);
                self.emit(io, child, &child_start, out)
            }
            NodeOp::Fft(f) => {
                let dtype = f.dtype.unwrap_or(DType::Float32);
                if let Some(tile) = self.fft_tiles(child, f.axis) {
                    let tiles = crate::kernels::fft::spectrum_tiles(
                        data, f.power, f.onesided, dtype, &tile,
                    )
                    .map_err(kerr)?;
                    let mut shape = data.shape().to_vec();
                    shape[0] = if f.onesided {
                        shape[0] / 2 + 1
                    } else {
                        shape[0]
                    };
                    let done = chunks_in(&c.meta, &child_start, &shape);
                    self.progress.record(child, t0, data.nbytes(), done);
                    return self.emit_tiles(child, &child_start, &shape, &tiles);
                }
                let out = crate::kernels::fft::spectrum(data, f.axis, f.power, f.onesided, dtype)
                    .map_err(kerr)?;
                let done = chunks_in(&c.meta, &child_start, out.shape());
                self.progress.record(child, t0, data.nbytes(), done);
                self.emit(io, child, &child_start, out)
            }
            NodeOp::Reduce(r) => {
                let p = reduce::partial(data, &r.axes, r.op).map_err(kerr)?;
                self.progress.record(child, t0, data.nbytes(), 1);
                let (out, leaf) = reduce_slot(self.plan, child, &idx);
                let key = DataKey::Partial {
                    node: child,
                    out,
                    leaf,
                };
                io.write(key, p.into())?;
                Ok(())
            }
            NodeOp::Rechunk => self.split(io, node, child, start, data),
            NodeOp::Select(_) if c.reads_source() => Ok(()),
            NodeOp::Select(sel) => self.select_split(io, node, child, sel, start, data),
            NodeOp::Source => Ok(()),
        }
    }

    /// Cuts `data` (a chunk of `node` at `start`) into the pieces of rechunk `child`'s merge groups and stores
    /// them.
    fn split(
        &self,
        io: &dyn TaskIo,
        node: usize,
        child: usize,
        start: &[usize],
        data: &Chunk,
    ) -> Result<(), ExecError> {
        let t0 = Instant::now();
        let im = &self.plan.nodes[node].meta;
        let len = data.shape();
        let part = linear(&im.grid(), &chunk_index(im, start));
        let groups = merge_groups(&self.plan.nodes[child].meta);
        let grid = groups.grid();
        for o in product(&overlapping(&groups.chunks, start, len)) {
            let (os, ol) = groups.chunk_region(&o);
            let lo: Vec<usize> = start.iter().zip(&os).map(|(a, b)| *a.max(b)).collect();
            let hi: Vec<usize> = (0..lo.len())
                .map(|a| (start[a] + len[a]).min(os[a] + ol[a]))
                .collect();
            let rel: Vec<usize> = lo.iter().zip(start).map(|(l, s)| l - s).collect();
            let ext: Vec<usize> = lo.iter().zip(&hi).map(|(l, h)| h - l).collect();
            let piece = data.region(&rel, &ext);
            let key = DataKey::Piece {
                node: child,
                group: linear(&grid, &o),
                part,
            };
            io.write(key, piece.into())?;
        }
        // Split time counts towards the rechunk; its bytes in are counted by the merges.
        self.progress.record(child, t0, 0, 0);
        Ok(())
    }

    /// Folds partial `leaf` of output chunk `out` of reduce `node` into the fold of the leaves before it; the
    /// last leaf finishes the reduction and emits the reduced chunk.
    fn combine(
        &self,
        io: &dyn TaskIo,
        node: usize,
        out: usize,
        leaf: usize,
    ) -> Result<(), ExecError> {
        let c = &self.plan.nodes[node];
        let t0 = Instant::now();
        let kerr = |source| ExecError::Kernel {
            stage: c.name.clone(),
            chunk: unlinear(&c.meta.grid(), out),
            source,
        };
        let partial = take_partial(io, DataKey::Partial { node, out, leaf })?;
        let before = match leaf {
            0 => None,
            1 => Some(DataKey::Partial { node, out, leaf: 0 }),
            _ => Some(DataKey::Fold {
                node,
                out,
                leaf: leaf - 1,
            }),
        };
        let acc = match before {
            None => partial,
            Some(key) => reduce::combine(take_partial(io, key)?, &partial).map_err(kerr)?,
        };
        if leaf + 1 < reduce_leaves(self.plan, node) {
            let key = DataKey::Fold { node, out, leaf };
            io.write(key, acc.into())?;
            self.progress.record(node, t0, 0, 0);
            return Ok(());
        }
        let input_dtype = c
            .input
            .map_or(DType::Float64, |i| self.plan.nodes[i].meta.dtype);
        let reduced = reduce::finish(acc, input_dtype);
        self.progress.record(node, t0, 0, 0);
        let (start, _) = c.meta.chunk_region(&unlinear(&c.meta.grid(), out));
        self.emit(io, node, &start, reduced)
    }
}

/// Reads a stored reduction state for its consumer (without a copy when nobody else holds it).
fn take_partial(io: &dyn TaskIo, key: DataKey) -> Result<Partial, ExecError> {
    let stored = io.read(key)?;
    match Arc::try_unwrap(stored).unwrap_or_else(|shared| (*shared).clone()) {
        Data::Partial(p) => Ok(p),
        other => Err(wrong_kind(key, &other)),
    }
}

/// A key holding another kind of value than its consumer expects: a bug.
fn wrong_kind(key: DataKey, found: &Data) -> ExecError {
    ExecError::Internal(format!("{key} holds a {}", found.kind()))
}

/// Bytes counted against the store's budget for as long as this lives ([`ChunkStore::hold`]).
struct Held<'a> {
    store: &'a ChunkStore,
    bytes: usize,
}

impl<'a> Held<'a> {
    fn new(store: &'a ChunkStore, bytes: usize) -> Result<Held<'a>, StoreError> {
        store.hold(bytes)?;
        Ok(Held { store, bytes })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.store.release(self.bytes);
    }
}
