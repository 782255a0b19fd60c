//! Running one task of a plan ([`TaskRunner`]), from any thread, and where it reads and writes its data
//! ([`TaskIo`]; [`KeepingIo`] keeps what it writes until the scheduler releases it). Shared by the local
//! executor and the worker processes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::error::ExecError;
use super::progress::JobProgress;
use super::sink::ChunkSink;
use crate::array::{Chunk, DType};
use crate::data::{Data, DataKey};
use crate::graph::{TaskKind, reduce_leaves, reduce_slot};
use crate::kernels::reduce::Partial;
use crate::kernels::{KernelError, reduce};
use crate::plan::{
    NodeOp, Plan, chunk_index, chunks_in, linear, merge_groups, overlapping, product, unlinear,
};
use crate::select::Selection;
use crate::source::SliceSource;
use crate::store::{ChunkStore, StoreError};

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
                self.progress.load_done();
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
        self.progress.add_bytes_out(node, block.nbytes() as u64);
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
        self.progress.add_bytes_out(node, bytes as u64);
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
