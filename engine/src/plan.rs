//! The planner: a validated spec plus the slice shape becomes a graph of nodes with concrete chunk grids.
//!
//! Each node is an array (the source or a stage). How a node's chunks are made decides the task structure:
//!
//! - `Source` chunks are *loaded* (one load task per chunk);
//! - `Recenter` and `Fft` chunks map one-to-one onto their input's chunks, so they are *fused* into the task
//!   that made the input chunk and are never stored in between;
//! - `Reduce` takes a partial of each input chunk inside that same task; *combine* tasks then fold the
//!   partials of each output chunk in leaf order;
//! - `Rechunk` splits each input chunk into pieces (inside the producing task) and *merges* the pieces of each
//!   output chunk in a merge task once they are all there.
//!
//! So the task kinds are load, merge and combine ([`crate::graph`] cuts the plan into them); everything else
//! rides along.

use crate::array::{ArrayMeta, DType};
use crate::select::Selection;
use crate::source::{SliceInfo, limits};
use crate::spec::{
    ArrayJobSpec, DEFAULT_SLICES_PER_CHUNK, FftOp, OutputSpec, ReduceOp, SOURCE_INPUT,
};
use crate::validate::{Problem, ResolvedOp, ValidatedSpec, ValidatedStage};
// The grid helpers lived here; re-exported so their old paths keep working.
pub use crate::grid::{
    MERGE_GROUP_BYTES, chunk_index, chunks_in, linear, merge_groups, overlapping, product, unlinear,
};

/// What a node computes.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeOp {
    /// The source array.
    Source,
    /// A reduction (partials fused into the input's task, combined in a tree).
    Reduce(ReduceOp),
    /// Centroid recentering with a resolved `[rows, cols]` window (fused).
    Recenter {
        /// Window to crop.
        window: [usize; 2],
    },
    /// A change of chunk grid (split into pieces, then merged).
    Rechunk,
    /// An FFT spectrum along one axis (fused).
    Fft(FftOp),
    /// Picked indices (pieces of the input's chunks merged, or the selected slices read from the source).
    Select(Selection),
}

impl NodeOp {
    /// Short name of the operation, for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeOp::Source => "source",
            NodeOp::Reduce(_) => "reduce",
            NodeOp::Recenter { .. } => "recenter",
            NodeOp::Rechunk => "rechunk",
            NodeOp::Fft(_) => "fft",
            NodeOp::Select(_) => "select",
        }
    }
}

/// One array of the plan.
#[derive(Debug, Clone)]
pub struct Node {
    /// `source` or the stage name.
    pub name: String,
    /// Index of the stage in `spec.stages` (None for the source).
    pub spec_index: Option<usize>,
    /// Node this one reads (None for the source).
    pub input: Option<usize>,
    /// What it computes.
    pub op: NodeOp,
    /// Shape, chunk grid and type of the result.
    pub meta: ArrayMeta,
    /// Shape of the blocks the executor produces this node in: its chunk shape, except for a rechunk (its merge
    /// groups, see [`merge_groups`]) and an FFT fused into one (the same groups, whole along the FFT axis).
    /// Always a whole number of chunks; Zarr outputs are written as shards of this shape when it is larger.
    pub block: Vec<usize>,
    /// Files to write from it.
    pub output: Option<OutputSpec>,
    /// Nodes that read this one.
    pub children: Vec<usize>,
}

impl Node {
    /// Whether this node reads the source itself (a select of the source) rather than its loaded chunks.
    pub fn reads_source(&self) -> bool {
        matches!(self.op, NodeOp::Select(_)) && self.input == Some(0)
    }

    /// Units of work counted for progress: loads, partials, merges or fused chunk computations.
    pub fn tasks(&self, nodes: &[Node]) -> usize {
        match (&self.op, self.input) {
            (NodeOp::Reduce(_), Some(i)) => nodes[i].meta.num_chunks(),
            (NodeOp::Source, _) if !self.children.iter().any(|&c| !nodes[c].reads_source()) => 0,
            _ => self.meta.num_chunks(),
        }
    }
}

/// A job turned into nodes with concrete chunk grids, in an order where inputs come first (node 0 = source).
#[derive(Debug, Clone)]
pub struct Plan {
    /// All nodes; node 0 is the source.
    pub nodes: Vec<Node>,
    /// What the plan computes, in 32 bytes.
    pub hash: PlanHash,
}

/// The sha256 of everything that shapes a plan's results: the engine version, the spec, the number and shape
/// of slices, and the planner's constants. Two processes that agree on it cut the job into the same tasks and
/// compute the same bytes for every data key, so a worker checks it before running anything, and results
/// recorded under one hash are never used by a plan with another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanHash(pub [u8; 32]);

impl PlanHash {
    fn of(spec: &ArrayJobSpec, slices: usize, info: SliceInfo) -> PlanHash {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"arrayjob-plan-v1\0");
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(b"\0");
        // Struct fields serialize in declaration order and maps are BTreeMaps: the JSON is canonical.
        h.update(serde_json::to_vec(spec).unwrap_or_default());
        for n in [
            slices,
            info.height,
            info.width,
            MERGE_GROUP_BYTES,
            DEFAULT_SLICES_PER_CHUNK,
        ] {
            h.update((n as u64).to_le_bytes());
        }
        h.update(info.dtype.name().as_bytes());
        PlanHash(h.finalize().into())
    }
}

impl std::fmt::Display for PlanHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl serde::Serialize for PlanHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PlanHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for PlanHash {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a plan hash (64 hex digits)");
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(PlanHash(out))
    }
}

/// A spec that is valid on its own but does not fit the actual data.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    /// Field path.
    pub path: String,
    /// What does not fit.
    pub message: String,
}

impl PlanError {
    /// The first of the problems binding a spec to its data found (each names its field).
    fn first(problems: Vec<Problem>) -> PlanError {
        let p = problems.into_iter().next().unwrap_or_else(|| Problem {
            path: "spec".into(),
            message: "does not fit the data".into(),
        });
        PlanError {
            path: p.path,
            message: p.message,
        }
    }
}

impl Plan {
    /// Builds the plan for `spec`, validated as `validated`, over `slices` slices described by `info`: the
    /// validated stages are bound to the real lengths ([`ValidatedSpec::bind`]) and become nodes with chunk
    /// grids and the blocks they are produced in.
    ///
    /// # Errors
    /// When the spec does not fit the data (a window or pixel outside the real slice size, a declared slice
    /// shape or type that differs from the data), or its chunks, pieces or tasks pass the limits.
    pub fn build(
        spec: &ArrayJobSpec,
        validated: &ValidatedSpec,
        slices: usize,
        info: SliceInfo,
    ) -> Result<Plan, PlanError> {
        let per_chunk = spec
            .source
            .slices_per_chunk
            .unwrap_or(DEFAULT_SLICES_PER_CHUNK)
            .clamp(1, slices.max(1));
        let source = ArrayMeta {
            shape: vec![slices, info.height, info.width],
            chunks: vec![per_chunk, info.height, info.width],
            dtype: info.dtype,
        };
        let bound = validated
            .bind(spec, &source.clone().into())
            .map_err(PlanError::first)?;
        check_loads(&source)?;
        let mut nodes = vec![Node {
            name: SOURCE_INPUT.to_string(),
            spec_index: None,
            input: None,
            op: NodeOp::Source,
            block: source.chunks.clone(),
            meta: source,
            output: None,
            children: vec![],
        }];
        for st in &bound.stages {
            let node = stage_node(spec, st, &nodes)?;
            let id = nodes.len();
            if let Some(input) = node.input {
                nodes[input].children.push(id);
            }
            nodes.push(node);
        }
        Ok(Plan {
            nodes,
            hash: PlanHash::of(spec, slices, info),
        })
    }

    /// The source index of every position along axis 0 of node `node`, while axis 0 is still the source's:
    /// through selects that keep it, recenters, rechunks, and reductions and FFTs of other axes.
    pub fn source_indices(&self, node: usize) -> Option<Vec<usize>> {
        let n = &self.nodes[node];
        let Some(input) = n.input else {
            return Some((0..*n.meta.shape.first()?).collect());
        };
        let from = self.source_indices(input)?;
        match &n.op {
            NodeOp::Select(s) if s.dropped.first() == Some(&true) => None,
            NodeOp::Select(s) => Some(s.indices.first()?.iter().map(|&i| from[i]).collect()),
            NodeOp::Reduce(r) if r.axes.contains(&0) => None,
            NodeOp::Fft(f) if f.axis == 0 => None,
            _ => Some(from),
        }
    }

    /// Per-node figures for `arrayjob plan` and for sizing runs, with `task_counts` from the caller that built
    /// the task graph ([`crate::graph::TaskGraph::task_counts`]; the plan sits below the graph).
    pub fn report(
        &self,
        threads: usize,
        task_counts: std::collections::BTreeMap<&'static str, usize>,
    ) -> PlanReport {
        let mut stages = Vec::new();
        let mut exchange = 0usize;
        let mut largest_chunk = 0usize;
        let mut partial_bytes = 0usize;
        for n in &self.nodes {
            let chunk_bytes = n.meta.chunks.iter().product::<usize>() * n.meta.dtype.size();
            largest_chunk = largest_chunk.max(chunk_bytes);
            let moved = match (&n.op, n.input) {
                (NodeOp::Rechunk, Some(i)) => self.nodes[i].meta.nbytes(),
                _ => 0,
            };
            if let (NodeOp::Reduce(r), Some(i)) = (&n.op, n.input) {
                // Fold state: the accumulator plus about one partial per thread, each one output chunk of f64
                // (two for std).
                let per = n.meta.chunks.iter().product::<usize>()
                    * 8
                    * if r.op == crate::spec::ReduceKind::Std {
                        3
                    } else {
                        1
                    };
                let leaves = self.nodes[i].meta.num_chunks();
                let out_chunks = n.meta.num_chunks();
                partial_bytes += per * (threads + 1).min(leaves) * out_chunks.min(threads * 2 + 1);
            }
            exchange += moved;
            stages.push(StageReport {
                name: n.name.clone(),
                kind: n.op.kind().to_string(),
                shape: n.meta.shape.clone(),
                chunks: n.meta.chunks.clone(),
                dtype: n.meta.dtype,
                num_chunks: n.meta.num_chunks(),
                tasks: n.tasks(&self.nodes),
                bytes: n.meta.nbytes(),
                bytes_moved: moved,
            });
        }
        // In flight: each thread holds a chunk and what is derived from it (about 4 chunk sizes); the
        // exchange holds its pieces until merged (bounded by the memory budget, beyond which they spill).
        let in_flight = threads * largest_chunk * 4;
        PlanReport {
            plan_hash: self.hash,
            task_counts,
            stages,
            bytes_moved: exchange,
            peak_memory_estimate: in_flight + exchange + partial_bytes,
        }
    }
}

/// Refuses a load task larger than the chunk limit, and more load tasks than the chunks allowed per stage.
fn check_loads(source: &ArrayMeta) -> Result<(), PlanError> {
    let (slices, per_chunk) = (source.shape[0], source.chunks[0]);
    check_chunk_bytes(
        "spec.source.slicesPerChunk",
        &source.chunks,
        source.dtype.size(),
        || {
            format!(
                "a load task's {per_chunk} slice(s) of {}x{} {}",
                source.chunks[1], source.chunks[2], source.dtype
            )
        },
    )?;
    let loads = slices.div_ceil(per_chunk) as u64;
    if loads > limits::MAX_CHUNKS_PER_STAGE {
        return Err(PlanError {
            path: "spec.source.slicesPerChunk".into(),
            message: format!(
                "{slices} slices in chunks of {per_chunk} make {loads} load tasks, more than the limit of {} \
                 chunks per stage: raise slicesPerChunk",
                limits::MAX_CHUNKS_PER_STAGE
            ),
        });
    }
    Ok(())
}

/// The node of a bound stage (every length known) reading one of `nodes`: its grid, the blocks it is
/// produced in, its size checked.
fn stage_node(spec: &ArrayJobSpec, st: &ValidatedStage, nodes: &[Node]) -> Result<Node, PlanError> {
    let spec_stage = &spec.stages[st.index];
    let at = format!("spec.stages[{}]", st.index);
    let input = st.input.map_or(0, |k| k + 1);
    let unbound = || PlanError {
        path: at.clone(),
        message: "the stage's lengths are not known after binding to the data (a bug)".into(),
    };
    let meta: ArrayMeta = st.shape.grid().ok_or_else(unbound)?.into();
    let op = match &st.op {
        ResolvedOp::Select(Some(r)) => NodeOp::Select(Selection::from(r.clone())),
        ResolvedOp::Reduce(r) => NodeOp::Reduce(r.clone()),
        ResolvedOp::Recenter([Some(rows), Some(cols)]) => NodeOp::Recenter {
            window: [*rows, *cols],
        },
        ResolvedOp::Rechunk => NodeOp::Rechunk,
        ResolvedOp::Fft(f) => NodeOp::Fft(f.clone()),
        ResolvedOp::Select(None) | ResolvedOp::Recenter(_) => return Err(unbound()),
    };
    let block = match &op {
        NodeOp::Rechunk => merge_groups(&meta).chunks,
        NodeOp::Fft(f) => {
            let mut b = nodes[input].block.clone();
            b[f.axis] = meta.shape[f.axis];
            b
        }
        _ => meta.chunks.clone(),
    };
    check_node_bytes(&at, &spec_stage.name, &op, &meta, &block)?;
    check_node_count(&at, &spec_stage.name, &op, &meta, &nodes[input].meta)?;
    Ok(Node {
        name: spec_stage.name.clone(),
        spec_index: Some(st.index),
        input: Some(input),
        op,
        meta,
        block,
        output: spec_stage.output.clone(),
        children: vec![],
    })
}

/// Refuses a chunk of `shape` with elements of `size` bytes larger than [`limits::MAX_CHUNK_BYTES`], naming
/// `path` and, through `what`, the chunk.
fn check_chunk_bytes(
    path: &str,
    shape: &[usize],
    size: usize,
    what: impl FnOnce() -> String,
) -> Result<(), PlanError> {
    match limits::chunk_bytes(shape, size) {
        Some(b) if b <= limits::MAX_CHUNK_BYTES => Ok(()),
        found => Err(PlanError {
            path: path.to_owned(),
            message: format!(
                "{} is {} bytes, more than the limit of {} bytes per chunk: use smaller chunks",
                what(),
                found.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string()),
                limits::MAX_CHUNK_BYTES
            ),
        }),
    }
}

/// Refuses a stage whose chunks, blocks or reduction partials would be larger than
/// [`limits::MAX_CHUNK_BYTES`]: no value the executor makes, and so no frame a peer or a spill file holds, is
/// larger.
fn check_node_bytes(
    at: &str,
    name: &str,
    op: &NodeOp,
    meta: &ArrayMeta,
    block: &[usize],
) -> Result<(), PlanError> {
    let dtype = meta.dtype;
    check_chunk_bytes(at, &meta.chunks, dtype.size(), || {
        format!("a chunk {:?} {dtype} of stage '{name}'", meta.chunks)
    })?;
    check_chunk_bytes(at, block, dtype.size(), || {
        format!("a block {block:?} {dtype} of stage '{name}'")
    })?;
    if let NodeOp::Reduce(r) = op {
        // A partial holds one f64 per output element (two for std).
        let per = if r.op == crate::spec::ReduceKind::Std {
            16
        } else {
            8
        };
        check_chunk_bytes(at, &meta.chunks, per, || {
            format!("a reduction partial {:?} of stage '{name}'", meta.chunks)
        })?;
    }
    Ok(())
}

/// Refuses a stage of more than [`limits::MAX_CHUNKS_PER_STAGE`] chunks, or a rechunk that cuts its
/// input into more than [`limits::MAX_PIECES_PER_STAGE`] pieces: the task graph is built in memory.
fn check_node_count(
    at: &str,
    name: &str,
    op: &NodeOp,
    meta: &ArrayMeta,
    input: &ArrayMeta,
) -> Result<(), PlanError> {
    let too_many = |what: String, limit: u64| PlanError {
        path: at.to_owned(),
        message: format!(
            "stage '{name}' has {what}, more than the limit of {limit}: use larger chunks"
        ),
    };
    let count = |grid: &[usize]| limits::chunk_bytes(grid, 1).unwrap_or(u64::MAX);
    let chunks = count(&meta.grid());
    if chunks > limits::MAX_CHUNKS_PER_STAGE {
        return Err(too_many(
            format!("{chunks} chunks ({:?} of {:?})", meta.grid(), meta.chunks),
            limits::MAX_CHUNKS_PER_STAGE,
        ));
    }
    if matches!(op, NodeOp::Rechunk) {
        // Along each axis a group meets the input chunks its range overlaps; the pieces are the product.
        let groups = merge_groups(meta);
        let per_axis: Vec<usize> = (0..meta.shape.len().min(input.chunks.len()))
            .map(|a| overlaps(groups.shape[a], groups.chunks[a], input.chunks[a]))
            .collect();
        let pieces = count(&per_axis);
        if pieces > limits::MAX_PIECES_PER_STAGE {
            return Err(too_many(
                format!("{pieces} pieces of its input's chunks {:?}", input.chunks),
                limits::MAX_PIECES_PER_STAGE,
            ));
        }
    }
    Ok(())
}

/// Over an axis of length `n` cut into groups of `g` and into chunks of `c`: the (group, chunk) pairs that
/// overlap, at most `n / g + n / c` (the loop runs over the groups, at most
/// [`limits::MAX_CHUNKS_PER_STAGE`]).
fn overlaps(n: usize, g: usize, c: usize) -> usize {
    let (g, c) = (g.max(1), c.max(1));
    (0..n.div_ceil(g))
        .map(|k| {
            let (start, end) = (k * g, ((k + 1) * g).min(n));
            (end - 1) / c - start / c + 1
        })
        .sum()
}

/// One line of `arrayjob plan`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageReport {
    /// Node name.
    pub name: String,
    /// Operation kind.
    pub kind: String,
    /// Result shape.
    pub shape: Vec<usize>,
    /// Chunk shape.
    pub chunks: Vec<usize>,
    /// Result type.
    pub dtype: DType,
    /// Number of chunks.
    pub num_chunks: usize,
    /// Units of work (see [`Node::tasks`]).
    pub tasks: usize,
    /// Bytes of the whole result.
    pub bytes: usize,
    /// Bytes exchanged between chunks (rechunk input).
    pub bytes_moved: usize,
}

/// What `arrayjob plan` prints.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanReport {
    /// The plan's hash.
    pub plan_hash: PlanHash,
    /// Tasks of the task graph by kind (load, merge, combine); empty if the graph cannot be built (a bug,
    /// which `run` reports).
    pub task_counts: std::collections::BTreeMap<&'static str, usize>,
    /// One entry per node, source first.
    pub stages: Vec<StageReport>,
    /// Total bytes moved by rechunks.
    pub bytes_moved: usize,
    /// Estimated peak memory of a local run without a memory limit, in bytes.
    pub peak_memory_estimate: usize,
}

/// A plan over a synthetic source of `slices` slices of `side` x `side` in chunks of 10 slices, with the
/// given `stages:` entries (YAML list lines), for tests.
#[cfg(test)]
pub(crate) fn test_plan(stages: &str, slices: usize, side: usize) -> Plan {
    let m = crate::validate::parse_manifest(
        &format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: t}}\nspec:\n  \
             source: {{synthetic: {{slices: {slices}, height: {side}, width: {side}}}, slicesPerChunk: 10}}\n  \
             stages:\n{stages}"
        ),
        "t.yaml",
    )
    .expect("valid manifest");
    let valid = crate::validate::validate(&m.spec).expect("valid spec");
    let info = SliceInfo {
        height: side,
        width: side,
        dtype: DType::Uint8,
    };
    Plan::build(&m.spec, &valid, slices, info).expect("plan")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_manifest;

    #[test]
    fn quickstart_shapes_and_counts() {
        let m = parse_manifest(
            r#"
apiVersion: arrayjob.dev/v1alpha1
kind: ArrayJob
metadata: {name: t}
spec:
  source: {synthetic: {slices: 45, height: 40, width: 40}}
  stages:
  - {name: brightness, input: source, reduce: {op: mean, axes: [1, 2]}}
  - {name: recentered, input: source, recenter: {}}
  - {name: series, input: recentered, rechunk: {chunks: [-1, 7, 7]}}
  - {name: power, input: series, fft: {axis: 0, onesided: true}}
"#,
            "t.yaml",
        )
        .expect("valid");
        let valid = crate::validate::validate(&m.spec).expect("valid");
        let info = SliceInfo {
            height: 40,
            width: 40,
            dtype: DType::Uint8,
        };
        let p = Plan::build(&m.spec, &valid, 45, info).expect("plan");
        let by = |n: &str| p.nodes.iter().find(|x| x.name == n).expect("node");
        assert_eq!(by("source").meta.grid(), vec![3, 1, 1]);
        assert_eq!(by("brightness").meta.shape, vec![45]);
        assert_eq!(by("brightness").meta.chunks, vec![20]);
        assert_eq!(by("brightness").tasks(&p.nodes), 3);
        assert_eq!(by("recentered").meta.shape, vec![45, 20, 20]);
        assert_eq!(by("series").meta.grid(), vec![1, 3, 3]);
        assert_eq!(by("power").meta.shape, vec![23, 20, 20]);
        assert_eq!(by("power").meta.chunks, vec![23, 7, 7]);
        // The FFT is produced in the rechunk's merge groups: all 3 chunks of the last axis at once.
        assert_eq!(by("series").block, vec![45, 7, 21]);
        assert_eq!(by("power").block, vec![23, 7, 21]);
        assert_eq!(by("recentered").block, by("recentered").meta.chunks);
        let r = p.report(2, std::collections::BTreeMap::new());
        assert_eq!(r.bytes_moved, 45 * 20 * 20);
    }

    #[test]
    fn the_plan_hash_follows_what_shapes_results() {
        let manifest = |window: usize| {
            parse_manifest(
                &format!(
                    "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: t}}\nspec:\n  \
                     source: {{synthetic: {{slices: 30, height: 40, width: 40}}}}\n  stages:\n  \
                     - {{name: r, input: source, recenter: {{window: [{window}, {window}]}}}}\n"
                ),
                "t.yaml",
            )
            .expect("valid")
        };
        let info = |dtype| SliceInfo {
            height: 40,
            width: 40,
            dtype,
        };
        let hash = |window, slices, dtype| {
            let m = manifest(window);
            let valid = crate::validate::validate(&m.spec).expect("valid");
            Plan::build(&m.spec, &valid, slices, info(dtype))
                .expect("plan")
                .hash
        };
        let base = hash(20, 30, DType::Uint8);
        assert_eq!(base, hash(20, 30, DType::Uint8), "deterministic");
        assert_eq!(base.to_string().len(), 64);
        assert_ne!(base, hash(10, 30, DType::Uint8), "another window");
        assert_ne!(base, hash(20, 29, DType::Uint8), "another slice count");
        assert_ne!(base, hash(20, 30, DType::Uint16), "another element type");
        assert_eq!(
            serde_json::to_string(&base).expect("json"),
            format!("\"{base}\"")
        );
    }

    /// The plan of `source` and `stages`, or its error as text.
    fn plan_of(source: &str, stages: &str, slices: usize, side: usize) -> Result<Plan, String> {
        let m = parse_manifest(
            &format!(
                "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: t}}\nspec:\n  source: {source}\n  \
                 stages:\n{stages}"
            ),
            "t.yaml",
        )
        .expect("valid manifest");
        let valid = crate::validate::validate(&m.spec).expect("valid spec");
        let info = SliceInfo {
            height: side,
            width: side,
            dtype: DType::Uint16,
        };
        Plan::build(&m.spec, &valid, slices, info).map_err(|e| e.to_string())
    }

    #[test]
    fn too_many_chunks_or_pieces_or_too_large_chunks_are_refused_naming_the_stage() {
        let mean = "  - {name: m, input: source, reduce: {op: mean, axes: [0]}}\n";
        // Ten million one-slice chunks: refused at once (planning them took a minute and 9 GB).
        let start = std::time::Instant::now();
        let e = plan_of(
            "{zarr: {path: z.zarr}, slicesPerChunk: 1}",
            mean,
            10_000_000,
            4,
        )
        .expect_err("loads");
        assert_eq!(
            e,
            "spec.source.slicesPerChunk: 10000000 slices in chunks of 1 make 10000000 load tasks, more than the \
             limit of 1000000 chunks per stage: raise slicesPerChunk"
        );
        assert!(start.elapsed().as_secs_f64() < 1.0);
        assert!(
            plan_of(
                "{zarr: {path: z.zarr}, slicesPerChunk: 10}",
                mean,
                10_000_000,
                4
            )
            .is_ok()
        );
        let e = plan_of(
            "{zarr: {path: z.zarr}, slicesPerChunk: 20}",
            "  - {name: r, input: source, rechunk: {chunks: [20, 1, 1]}}\n",
            40,
            2048,
        )
        .expect_err("chunks");
        assert!(
            e.starts_with("spec.stages[0]: stage 'r' has 8388608 chunks ([2, 2048, 2048] of [20, 1, 1]), more than the limit of 1000000"),
            "{e}"
        );
        let e = plan_of(
            "{zarr: {path: z.zarr}, slicesPerChunk: 1}",
            "  - {name: r, input: source, rechunk: {chunks: [-1, 1, 4000]}}\n",
            5000,
            4000,
        )
        .expect_err("pieces");
        assert!(
            e.starts_with("spec.stages[0]: stage 'r' has 20000000 pieces of its input's chunks [1, 4000, 4000]"),
            "{e}"
        );
        let e = plan_of(
            "{zarr: {path: z.zarr}, slicesPerChunk: 1}",
            "  - {name: r, input: source, rechunk: {chunks: [-1, -1, -1]}}\n",
            2000,
            65536,
        )
        .expect_err("bytes");
        assert!(
            e.starts_with(
                "spec.stages[0]: a chunk [2000, 65536, 65536] uint16 of stage 'r' is 17179869184000 bytes, more than \
                 the limit of 17179869184 bytes per chunk"
            ),
            "{e}"
        );
    }
}
