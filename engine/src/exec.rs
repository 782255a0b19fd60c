//! The local executor: runs a [`Plan`] on a pool of threads.
//!
//! Task kinds (see [`crate::plan`]): *load* a source chunk, *merge* the pieces of a rechunk output chunk.
//! Whatever a task produces is pushed through the fused stages below it at once ([`Exec::emit`]): recenter
//! and FFT chunks are computed in place, reductions take a partial and fold it in, rechunks split the
//! chunk into pieces for the [`ChunkStore`]. When the last piece of a merge arrives, the merge is queued;
//! when the last partial of a reduction is folded in, the reduced chunk is emitted by that same thread.
//! Merges run before loads, so pieces leave memory as soon as they can.
//!
//! Results do not depend on thread timing: partials are folded in leaf order, pieces are pasted
//! into fixed positions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::array::{Chunk, DType};
use crate::kernels::KernelError;
use crate::kernels::reduce::{self, Partial};
use crate::plan::{NodeOp, Plan, linear, merge_groups, overlapping, unlinear};
use crate::source::{SliceSource, SourceError};
use crate::store::{ChunkKey, ChunkStore, StoreError, StoreStats};

/// Receives every finished block of the nodes that have outputs.
pub trait ChunkSink: Send + Sync {
    /// Called once per block of node `node` (see [`crate::plan::Node::block`]; a chunk, or a merge group of
    /// chunks) whose first element is at `start`, from any thread.
    ///
    /// # Errors
    /// When the output cannot be written; the run stops.
    fn deliver(&self, node: usize, start: &[usize], block: &Chunk) -> Result<(), ExecError>;
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
#[derive(Debug, Clone, serde::Serialize)]
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

#[derive(Debug, Clone, Copy)]
enum Task {
    Load(usize),
    Merge { node: usize, chunk: usize },
}

/// The reduction of one output chunk: partials are folded in leaf order (leaf 0, then 1, ...), whatever order
/// they arrive in, so results do not depend on timing; a partial that arrives before its predecessors waits.
/// Loads run in order, so few ever wait: memory stays at about one accumulator plus one partial per thread.
#[derive(Default)]
struct Fold {
    /// The next leaf to fold in.
    next: usize,
    /// Leaves `0..next` folded together.
    acc: Option<Partial>,
    /// Leaves that arrived before `next`.
    waiting: BTreeMap<usize, Partial>,
}

struct ReduceState {
    /// Leaves (input chunks) per output chunk.
    leaves: usize,
    folds: Vec<Mutex<Fold>>,
}

struct Exec<'a> {
    plan: &'a Plan,
    source: &'a dyn SliceSource,
    sink: &'a dyn ChunkSink,
    progress: &'a JobProgress,
    cancel: &'a AtomicBool,
    store: ChunkStore,
    queue: Mutex<(VecDeque<Task>, VecDeque<Task>)>,
    wake: Condvar,
    outstanding: AtomicUsize,
    failed: Mutex<Option<ExecError>>,
    /// For rechunk nodes: pieces still missing per output chunk.
    missing: Vec<Vec<AtomicUsize>>,
    reduce: Vec<Option<ReduceState>>,
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
    let spill = crate::store::FileSpill::new(&opts.spill_dir).map_err(|e| StoreError::Spill {
        key: ChunkKey {
            node: 0,
            chunk: 0,
            part: 0,
        },
        source: e,
    })?;
    let mut missing = Vec::new();
    let mut reduce = Vec::new();
    for n in &plan.nodes {
        let input = n.input.map(|i| &plan.nodes[i]);
        missing.push(match (&n.op, input) {
            (NodeOp::Rechunk, Some(inp)) => merge_groups(&n.meta)
                .chunk_indices()
                .iter()
                .map(|o| {
                    let (s, l) = merge_groups(&n.meta).chunk_region(o);
                    AtomicUsize::new(
                        overlapping(&inp.meta.chunks, &s, &l)
                            .iter()
                            .map(|r| r.len())
                            .product(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        });
        reduce.push(match (&n.op, input) {
            (NodeOp::Reduce(r), Some(inp)) => {
                let g = inp.meta.grid();
                let leaves = r.axes.iter().map(|&a| g[a]).product();
                Some(ReduceState {
                    leaves,
                    folds: (0..n.meta.num_chunks()).map(|_| Mutex::default()).collect(),
                })
            }
            _ => None,
        });
    }
    let loads: VecDeque<Task> = (0..plan.nodes[0].meta.num_chunks())
        .map(Task::Load)
        .collect();
    let ex = Exec {
        plan,
        source,
        sink,
        progress,
        cancel,
        store: ChunkStore::new(opts.memory_budget, Box::new(spill)),
        outstanding: AtomicUsize::new(loads.len()),
        queue: Mutex::new((VecDeque::new(), loads)),
        wake: Condvar::new(),
        failed: Mutex::new(None),
        missing,
        reduce,
    };
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
    Ok(ex.store.stats())
}

impl Exec<'_> {
    fn fail(&self, e: ExecError) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        drop(f);
        self.wake.notify_all();
    }

    fn stopped(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
            || self.failed.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    fn enqueue(&self, t: Task) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.0.push_back(t);
        drop(q);
        self.wake.notify_one();
    }

    fn worker(&self) {
        loop {
            let task = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if self.stopped() {
                        return;
                    }
                    if let Some(t) = q.0.pop_front().or_else(|| q.1.pop_front()) {
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
                self.wake.notify_all();
            }
        }
    }

    fn run(&self, task: Task) -> Result<(), ExecError> {
        match task {
            Task::Load(i) => {
                let meta = &self.plan.nodes[0].meta;
                let (start, len) = meta.chunk_region(&[i, 0, 0]);
                let t0 = Instant::now();
                let chunk = self.source.read(start[0], start[0] + len[0])?;
                self.progress.record(0, t0, 0, 1);
                self.emit(0, &start, chunk)?;
                let end = self.progress.start.elapsed().as_nanos() as u64;
                self.progress.loads_end_ns.fetch_max(end, Ordering::Relaxed);
                Ok(())
            }
            Task::Merge { node, chunk: group } => self.merge(node, group),
        }
    }

    /// Pastes the pieces of merge group `group` of rechunk `node` into one block and emits it.
    fn merge(&self, node: usize, group: usize) -> Result<(), ExecError> {
        let n = &self.plan.nodes[node];
        let Some(input) = n.input else { return Ok(()) };
        let im = &self.plan.nodes[input].meta;
        let groups = merge_groups(&n.meta);
        let gidx = unlinear(&groups.grid(), group);
        let (start, len) = groups.chunk_region(&gidx);
        let t0 = Instant::now();
        // The block counts against the memory budget while it is assembled and passed on.
        let held = Held::new(
            &self.store,
            len.iter().product::<usize>() * n.meta.dtype.size(),
        )?;
        let mut block = Chunk::zeros(n.meta.dtype, &len);
        let mut bytes = 0;
        for part in product(&overlapping(&im.chunks, &start, &len)) {
            let (ps, _) = im.chunk_region(&part);
            let key = ChunkKey {
                node,
                chunk: group,
                part: linear(&im.grid(), &part),
            };
            let piece = self.store.take(key)?;
            let at: Vec<usize> = ps
                .iter()
                .zip(&start)
                .map(|(&p, &s)| p.saturating_sub(s))
                .collect();
            block
                .paste(&at, &piece)
                .map_err(|m| self.kernel_err(node, &gidx, m))?;
            bytes += piece.nbytes();
        }
        self.progress
            .record(node, t0, bytes, chunks_in(&n.meta, &start, &len));
        let emitted = self.emit(node, &start, block);
        drop(held);
        emitted
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
    fn emit(&self, node: usize, start: &[usize], block: Chunk) -> Result<(), ExecError> {
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
                self.apply(node, child, start, &block)?;
                continue;
            }
            let len = block.shape();
            if n.meta.chunk_region(&chunk_index(&n.meta, start)).1 == len {
                self.apply(node, child, start, &block)?;
                continue;
            }
            for idx in product(&overlapping(&n.meta.chunks, start, len)) {
                let (cs, cl) = n.meta.chunk_region(&idx);
                let rel: Vec<usize> = cs.iter().zip(start).map(|(c, s)| c - s).collect();
                self.apply(node, child, &cs, &block.region(&rel, &cl))?;
            }
        }
        Ok(())
    }

    /// Runs stage `child` on `data`, a block of its input `node` starting at `start`, and emits what it makes.
    fn apply(
        &self,
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
                self.emit(child, &child_start, out)
            }
            NodeOp::Fft(f) => {
                let dtype = f.dtype.unwrap_or(DType::Float32);
                let out = crate::kernels::fft::spectrum(data, f.axis, f.power, f.onesided, dtype)
                    .map_err(kerr)?;
                let done = chunks_in(&c.meta, &child_start, out.shape());
                self.progress.record(child, t0, data.nbytes(), done);
                self.emit(child, &child_start, out)
            }
            NodeOp::Reduce(r) => {
                let p = reduce::partial(data, &r.axes, r.op).map_err(kerr)?;
                self.progress.record(child, t0, data.nbytes(), 1);
                let keep: Vec<usize> = (0..idx.len()).filter(|a| !r.axes.contains(a)).collect();
                let out_idx: Vec<usize> = keep.iter().map(|&a| idx[a]).collect();
                let in_grid = n.meta.grid();
                let red_grid: Vec<usize> = r.axes.iter().map(|&a| in_grid[a]).collect();
                let red_idx: Vec<usize> = r.axes.iter().map(|&a| idx[a]).collect();
                let leaf = linear(&red_grid, &red_idx);
                let out_lin = linear(&c.meta.grid(), &out_idx);
                if let Some(total) = self.feed_tree(child, out_lin, leaf, p, kerr)? {
                    let t1 = Instant::now();
                    let out = reduce::finish(total, data.dtype());
                    self.progress.record(child, t1, 0, 0);
                    let (out_start, _) = c.meta.chunk_region(&out_idx);
                    self.emit(child, &out_start, out)?;
                }
                Ok(())
            }
            NodeOp::Rechunk => self.split(node, child, start, data),
            NodeOp::Source => Ok(()),
        }
    }

    /// Cuts `data` (a chunk of `node` at `start`) into the pieces of rechunk `child`'s merge groups, stores them,
    /// and queues each merge whose last piece this was.
    fn split(
        &self,
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
            let lin = linear(&grid, &o);
            let key = ChunkKey {
                node: child,
                chunk: lin,
                part,
            };
            self.store.put(key, piece, 1)?;
            if self.missing[child][lin].fetch_sub(1, Ordering::SeqCst) == 1 {
                self.enqueue(Task::Merge {
                    node: child,
                    chunk: lin,
                });
            }
        }
        // Split time counts towards the rechunk; its bytes in are counted by the merges.
        self.progress.record(child, t0, 0, 0);
        Ok(())
    }

    /// Folds leaf `leaf` of output chunk `out` into its reduction; returns the result when it was the last.
    /// The accumulator and the partials waiting for their predecessors count against the memory budget.
    fn feed_tree(
        &self,
        node: usize,
        out: usize,
        leaf: usize,
        p: Partial,
        kerr: impl Fn(KernelError) -> ExecError,
    ) -> Result<Option<Partial>, ExecError> {
        let Some(state) = &self.reduce[node] else {
            return Ok(Some(p));
        };
        self.store.hold(p.nbytes())?;
        let mut guard = state.folds[out].lock().unwrap_or_else(|e| e.into_inner());
        let f = &mut *guard;
        f.waiting.insert(leaf, p);
        while let Some(next) = f.waiting.remove(&f.next) {
            let acc = match f.acc.take() {
                None => next,
                Some(acc) => {
                    self.store.release(next.nbytes());
                    reduce::combine(acc, &next).map_err(&kerr)?
                }
            };
            f.acc = Some(acc);
            f.next += 1;
        }
        if f.next < state.leaves {
            return Ok(None);
        }
        let total = f.acc.take();
        if let Some(t) = &total {
            self.store.release(t.nbytes());
        }
        Ok(total)
    }
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

/// Index of the chunk of `meta` that starts at element `start`.
fn chunk_index(meta: &crate::array::ArrayMeta, start: &[usize]) -> Vec<usize> {
    start
        .iter()
        .zip(&meta.chunks)
        .map(|(s, c)| s / c.max(&1))
        .collect()
}

/// Number of chunks of `meta` in the chunk-aligned block `start .. start + len`.
fn chunks_in(meta: &crate::array::ArrayMeta, start: &[usize], len: &[usize]) -> u64 {
    overlapping(&meta.chunks, start, len)
        .iter()
        .map(|r| r.len() as u64)
        .product()
}

/// Every index in the cartesian product of per-axis ranges, row-major.
fn product(ranges: &[std::ops::Range<usize>]) -> Vec<Vec<usize>> {
    let ext: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    crate::array::grid_indices(&ext)
        .into_iter()
        .map(|i| i.iter().zip(ranges).map(|(k, r)| r.start + k).collect())
        .collect()
}
