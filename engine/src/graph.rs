//! The task graph of a plan: every task, the data keys it reads and writes, and who produces each key.
//!
//! A [`Plan`] says what each node computes; this says how the work is cut into tasks, as plain data that a
//! scheduler (local threads today, worker processes with the distributed runtime) can hand out, and that
//! lineage can be read from: to rebuild a lost key, run its [`TaskGraph::producer`] again.
//!
//! Three task kinds, and what rides along in each (the fused stages of [`crate::plan`]):
//!
//! - **load** source chunk `i`: reads it and pushes it through every fused stage below it (recenter, FFT of
//!   whole chunks), writing reduction **partials** and rechunk **pieces**;
//! - **merge** group `g` of a rechunk: pastes the group's pieces into one block and pushes it through the
//!   stages below (an FFT, further partials or pieces);
//! - **combine** leaf `k` of output chunk `o` of a reduction: folds partial `k` into the fold of leaves
//!   `0..k` (leaf order, so results never depend on timing). The combine of the last leaf finishes the
//!   reduction and pushes the result through the stages below.
//!
//! Outputs (Zarr chunks, images...) are not keys: they are written by the task that makes them.

use std::fmt;

use crate::data::{DataKey, FastMap};
use crate::grid::{chunk_index, linear, merge_groups, overlapping, product, unlinear};
use crate::plan::{NodeOp, Plan};
use crate::select::Selection;

/// Index of a task in its [`TaskGraph`] (a wire type: reports and the progress snapshot carry it).
pub use arrayjob_spec::progress::TaskId;

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum TaskKind {
    /// Read source chunk `chunk` (linear index in the source grid).
    Load {
        /// Source chunk.
        chunk: usize,
    },
    /// Paste the pieces of merge group `group` of rechunk node `node`.
    Merge {
        /// Rechunk node.
        node: usize,
        /// Merge group (linear index in [`merge_groups`]' grid).
        group: usize,
    },
    /// Fold partial `leaf` of output chunk `out` of reduce node `node` into the leaves before it.
    Combine {
        /// Reduce node.
        node: usize,
        /// Output chunk.
        out: usize,
        /// Leaf folded in.
        leaf: usize,
    },
}

impl TaskKind {
    /// `load`, `merge` or `combine`.
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Load { .. } => "load",
            TaskKind::Merge { .. } => "merge",
            TaskKind::Combine { .. } => "combine",
        }
    }
}

/// `merge(node 3, group 7)`: the kind's [name](TaskKind::name) and its fields, for messages.
impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match *self {
            TaskKind::Load { chunk } => write!(f, "{name}(chunk {chunk})"),
            TaskKind::Merge { node, group } => write!(f, "{name}(node {node}, group {group})"),
            TaskKind::Combine { node, out, leaf } => {
                write!(f, "{name}(node {node}, out {out}, leaf {leaf})")
            }
        }
    }
}

/// One task: what it does, what it reads and what it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// What it does.
    pub kind: TaskKind,
    /// Keys it reads (each produced by another task).
    pub inputs: Vec<DataKey>,
    /// Keys it writes, in the order it writes them.
    pub outputs: Vec<DataKey>,
}

/// The graph is inconsistent with itself: a planner bug, reported rather than run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    /// Two tasks would write the same key.
    #[error("{key} is written by both {first} and {second}")]
    TwoProducers {
        /// The key.
        key: DataKey,
        /// One writer.
        first: TaskId,
        /// The other.
        second: TaskId,
    },
    /// A task reads a key no task writes.
    #[error("{task} reads {key}, which no task writes")]
    NoProducer {
        /// The reader.
        task: TaskId,
        /// The key.
        key: DataKey,
    },
    /// A key is written but never read: it would wait forever.
    #[error("{key}, written by {producer}, is never read")]
    NoConsumer {
        /// The key.
        key: DataKey,
        /// Its writer.
        producer: TaskId,
    },
}

/// All tasks of a plan, with the producer and the consumers of every key.
#[derive(Debug, Clone)]
pub struct TaskGraph {
    tasks: Vec<Task>,
    producer: FastMap<DataKey, TaskId>,
    consumers: FastMap<DataKey, Vec<TaskId>>,
}

impl TaskGraph {
    /// The tasks of `plan`: loads first (in source order), then merges and combines node by node, so task ids
    /// are a topological order (every input is written by a task with a smaller id).
    ///
    /// # Errors
    /// [`GraphError`] when the plan's tasks do not fit together (a key with two producers, none, or no
    /// consumer): a bug, never the user's input.
    pub fn build(plan: &Plan) -> Result<TaskGraph, GraphError> {
        let mut tasks = Vec::new();
        // A source read only by selects (which read their slices themselves) is not loaded.
        let loaded = plan.nodes[0].tasks(&plan.nodes) > 0;
        for chunk in (0..plan.nodes[0].meta.num_chunks()).filter(|_| loaded) {
            let (start, len) = plan.nodes[0]
                .meta
                .chunk_region(&unlinear(&plan.nodes[0].meta.grid(), chunk));
            tasks.push(Task {
                kind: TaskKind::Load { chunk },
                inputs: Vec::new(),
                outputs: fused_outputs(plan, 0, &start, &len),
            });
        }
        for (node, n) in plan.nodes.iter().enumerate() {
            match (&n.op, n.input) {
                (NodeOp::Rechunk, Some(input)) => {
                    let groups = merge_groups(&n.meta);
                    let im = &plan.nodes[input].meta;
                    for (group, gidx) in groups.chunk_indices().iter().enumerate() {
                        let (start, len) = groups.chunk_region(gidx);
                        let inputs = product(&overlapping(&im.chunks, &start, &len))
                            .iter()
                            .map(|p| DataKey::Piece {
                                node,
                                group,
                                part: linear(&im.grid(), p),
                            })
                            .collect();
                        tasks.push(Task {
                            kind: TaskKind::Merge { node, group },
                            inputs,
                            outputs: fused_outputs(plan, node, &start, &len),
                        });
                    }
                }
                (NodeOp::Select(sel), Some(input)) => {
                    select_tasks(plan, node, sel, input, &mut tasks)
                }
                (NodeOp::Reduce(_), Some(_)) => {
                    let leaves = reduce_leaves(plan, node);
                    for out in 0..n.meta.num_chunks() {
                        combine_tasks(plan, node, out, leaves, &mut tasks);
                    }
                }
                _ => {}
            }
        }
        TaskGraph::from_tasks(tasks)
    }

    /// A graph of the given tasks (ids are their positions), with producers and consumers indexed. Plans go
    /// through [`TaskGraph::build`]; this is also how scheduler simulations make synthetic graphs.
    ///
    /// # Errors
    /// [`GraphError`] when a key has two producers, none, or no consumer.
    pub fn from_tasks(tasks: Vec<Task>) -> Result<TaskGraph, GraphError> {
        let mut producer = FastMap::default();
        let mut consumers: FastMap<DataKey, Vec<TaskId>> = FastMap::default();
        for (i, t) in tasks.iter().enumerate() {
            for &key in &t.outputs {
                if let Some(first) = producer.insert(key, TaskId(i)) {
                    return Err(GraphError::TwoProducers {
                        key,
                        first,
                        second: TaskId(i),
                    });
                }
            }
            for &key in &t.inputs {
                consumers.entry(key).or_default().push(TaskId(i));
            }
        }
        for (i, t) in tasks.iter().enumerate() {
            if let Some(&key) = t.inputs.iter().find(|k| !producer.contains_key(k)) {
                return Err(GraphError::NoProducer {
                    task: TaskId(i),
                    key,
                });
            }
        }
        if let Some((&key, &p)) = producer.iter().find(|(k, _)| !consumers.contains_key(k)) {
            return Err(GraphError::NoConsumer { key, producer: p });
        }
        Ok(TaskGraph {
            tasks,
            producer,
            consumers,
        })
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The task `id`.
    ///
    /// # Panics
    /// When `id` is not a task of this graph (ids only come from the graph itself).
    pub fn task(&self, id: TaskId) -> &Task {
        &self.tasks[id.0]
    }

    /// Every task with its id.
    pub fn tasks(&self) -> impl Iterator<Item = (TaskId, &Task)> {
        self.tasks.iter().enumerate().map(|(i, t)| (TaskId(i), t))
    }

    /// How many tasks of each kind (load, merge, combine), for [`crate::plan::Plan::report`].
    pub fn task_counts(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for t in &self.tasks {
            *counts.entry(t.kind.name()).or_insert(0) += 1;
        }
        counts
    }

    /// The task that writes `key` (its lineage: run it again to rebuild the key).
    pub fn producer(&self, key: DataKey) -> Option<TaskId> {
        self.producer.get(&key).copied()
    }

    /// The tasks that read `key`.
    pub fn consumers(&self, key: DataKey) -> &[TaskId] {
        self.consumers.get(&key).map_or(&[], Vec::as_slice)
    }
}

/// The combine tasks of output chunk `out` of reduce `node` over `leaves` partials: one per leaf, each folding
/// its partial into the fold of the leaves before it. Leaf 0 has nothing to fold into, so with more than one
/// leaf the first combine folds partials 0 and 1.
fn combine_tasks(plan: &Plan, node: usize, out: usize, leaves: usize, tasks: &mut Vec<Task>) {
    let partial = |leaf| DataKey::Partial { node, out, leaf };
    let fold = |leaf| DataKey::Fold { node, out, leaf };
    let first = usize::from(leaves > 1);
    for leaf in first..leaves {
        let inputs = match leaf {
            0 => vec![partial(0)],
            1 => vec![partial(0), partial(1)],
            _ => vec![fold(leaf - 1), partial(leaf)],
        };
        let outputs = if leaf + 1 < leaves {
            vec![fold(leaf)]
        } else {
            let meta = &plan.nodes[node].meta;
            let (start, len) = meta.chunk_region(&unlinear(&meta.grid(), out));
            fused_outputs(plan, node, &start, &len)
        };
        tasks.push(Task {
            kind: TaskKind::Combine { node, out, leaf },
            inputs,
            outputs,
        });
    }
}

/// The merge tasks of select `node`, one per output chunk: it pastes the pieces of the input chunks holding
/// selected elements, or (a select of the source) reads the selected slices itself and has no inputs.
fn select_tasks(plan: &Plan, node: usize, sel: &Selection, input: usize, tasks: &mut Vec<Task>) {
    let n = &plan.nodes[node];
    let im = &plan.nodes[input].meta;
    let full = sel.full_meta(im);
    for (group, idx) in full.chunk_indices().iter().enumerate() {
        let (start, len) = full.chunk_region(idx);
        let inputs = if n.reads_source() {
            Vec::new()
        } else {
            sel.parts_of(im, &start, &len)
                .iter()
                .map(|p| DataKey::Piece {
                    node,
                    group,
                    part: linear(&im.grid(), p),
                })
                .collect()
        };
        let (kstart, klen) = n.meta.chunk_region(&sel.kept(idx));
        tasks.push(Task {
            kind: TaskKind::Merge { node, group },
            inputs,
            outputs: fused_outputs(plan, node, &kstart, &klen),
        });
    }
}

/// Number of input chunks reduced into each output chunk of reduce `node`.
pub fn reduce_leaves(plan: &Plan, node: usize) -> usize {
    let n = &plan.nodes[node];
    match (&n.op, n.input) {
        (NodeOp::Reduce(r), Some(input)) => {
            let g = plan.nodes[input].meta.grid();
            r.axes.iter().map(|&a| g[a]).product()
        }
        _ => 1,
    }
}

/// Where the partial of reduce `node` over input chunk `idx` goes: (output chunk, leaf).
pub fn reduce_slot(plan: &Plan, node: usize, idx: &[usize]) -> (usize, usize) {
    let n = &plan.nodes[node];
    let (NodeOp::Reduce(r), Some(input)) = (&n.op, n.input) else {
        return (0, 0);
    };
    let in_grid = plan.nodes[input].meta.grid();
    let keep: Vec<usize> = (0..idx.len()).filter(|a| !r.axes.contains(a)).collect();
    let out_idx: Vec<usize> = keep.iter().map(|&a| idx[a]).collect();
    let red_grid: Vec<usize> = r.axes.iter().map(|&a| in_grid[a]).collect();
    let red_idx: Vec<usize> = r.axes.iter().map(|&a| idx[a]).collect();
    (
        linear(&n.meta.grid(), &out_idx),
        linear(&red_grid, &red_idx),
    )
}

/// The keys written when a block of `node` (elements `start .. start + len`) is pushed through the fused
/// stages below it, in the order the executor writes them ([`crate::exec`] walks the same way with data).
pub fn fused_outputs(plan: &Plan, node: usize, start: &[usize], len: &[usize]) -> Vec<DataKey> {
    let mut keys = Vec::new();
    walk_block(plan, node, start, len, &mut keys);
    keys
}

/// Mirrors `Exec::emit`: FFTs take the block whole, other stages chunk by chunk.
fn walk_block(plan: &Plan, node: usize, start: &[usize], len: &[usize], keys: &mut Vec<DataKey>) {
    let n = &plan.nodes[node];
    for &child in &n.children {
        let whole_chunk = n.meta.chunk_region(&chunk_index(&n.meta, start)).1 == len;
        if matches!(plan.nodes[child].op, NodeOp::Fft(_)) || whole_chunk {
            walk_apply(plan, node, child, start, len, keys);
            continue;
        }
        for idx in product(&overlapping(&n.meta.chunks, start, len)) {
            let (cs, cl) = n.meta.chunk_region(&idx);
            walk_apply(plan, node, child, &cs, &cl, keys);
        }
    }
}

/// Mirrors `Exec::apply`: what stage `child` writes for the block of its input `node` at `start`.
fn walk_apply(
    plan: &Plan,
    node: usize,
    child: usize,
    start: &[usize],
    len: &[usize],
    keys: &mut Vec<DataKey>,
) {
    let n = &plan.nodes[node];
    let c = &plan.nodes[child];
    let idx = chunk_index(&n.meta, start);
    match &c.op {
        NodeOp::Recenter { .. } => {
            let (cs, cl) = c.meta.chunk_region(&idx);
            walk_block(plan, child, &cs, &cl, keys);
        }
        NodeOp::Fft(f) => {
            let cs: Vec<usize> = idx.iter().zip(&c.meta.chunks).map(|(i, k)| i * k).collect();
            let mut cl = len.to_vec();
            cl[f.axis] = c.meta.shape[f.axis];
            walk_block(plan, child, &cs, &cl, keys);
        }
        NodeOp::Reduce(_) => {
            let (out, leaf) = reduce_slot(plan, child, &idx);
            keys.push(DataKey::Partial {
                node: child,
                out,
                leaf,
            });
        }
        NodeOp::Rechunk => {
            let part = linear(&n.meta.grid(), &idx);
            let groups = merge_groups(&c.meta);
            for o in product(&overlapping(&groups.chunks, start, len)) {
                keys.push(DataKey::Piece {
                    node: child,
                    group: linear(&groups.grid(), &o),
                    part,
                });
            }
        }
        NodeOp::Select(sel) => {
            if c.reads_source() {
                return;
            }
            let part = linear(&n.meta.grid(), &idx);
            let full = sel.full_meta(&n.meta);
            for (o, _) in sel.pieces(&full, start, len) {
                keys.push(DataKey::Piece {
                    node: child,
                    group: linear(&full.grid(), &o),
                    part,
                });
            }
        }
        NodeOp::Source => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::test_plan as plan;

    /// The post's pipeline on 45 slices of 40 x 40: 5 loads; 2 reductions of the source, 1 of the recentered
    /// stack; the series rechunk and its FFT.
    fn post() -> Plan {
        plan(
            "  - {name: time-mean, input: source, reduce: {op: mean, axes: [0]}}
  - {name: brightness, input: source, reduce: {op: mean, axes: [1, 2]}}
  - {name: recentered, input: source, recenter: {window: [20, 20]}}
  - {name: recentered-mean, input: recentered, reduce: {op: std, axes: [0]}}
  - {name: series, input: recentered, rechunk: {chunks: [-1, 4, 4]}}
  - {name: power, input: series, fft: {axis: 0}}
",
            45,
            40,
        )
    }

    fn count(g: &TaskGraph, f: impl Fn(&TaskKind) -> bool) -> usize {
        g.tasks().filter(|(_, t)| f(&t.kind)).count()
    }

    #[test]
    fn the_posts_pipeline_has_the_expected_tasks_and_keys() {
        let p = post();
        let g = TaskGraph::build(&p).expect("graph");
        let node = |name: &str| p.nodes.iter().position(|n| n.name == name).expect("node");
        assert_eq!(count(&g, |k| matches!(k, TaskKind::Load { .. })), 5);
        // series (45, 20, 20) in (45, 4, 4) chunks: merge groups span the whole last axis (5 chunks of 4).
        assert_eq!(count(&g, |k| matches!(k, TaskKind::Merge { .. })), 5);
        // time-mean and recentered-mean: one output chunk, 5 leaves -> combines of leaves 1..=4 each;
        // brightness: 5 output chunks of one leaf each.
        assert_eq!(
            count(&g, |k| matches!(k, TaskKind::Combine { .. })),
            4 + 4 + 5
        );
        assert_eq!(g.len(), 5 + 5 + 13);
        let counts = g.task_counts();
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            vec![("combine", 13), ("load", 5), ("merge", 5)]
        );

        // Load 2 writes, in order: partials of time-mean and brightness, then through recenter the
        // recentered-mean partial and one piece for each of the 5 merge groups.
        let load2 = g.task(TaskId(2));
        assert_eq!(load2.kind, TaskKind::Load { chunk: 2 });
        let (tm, br, rm, se) = (
            node("time-mean"),
            node("brightness"),
            node("recentered-mean"),
            node("series"),
        );
        let mut expected = vec![
            DataKey::Partial {
                node: tm,
                out: 0,
                leaf: 2,
            },
            DataKey::Partial {
                node: br,
                out: 2,
                leaf: 0,
            },
            DataKey::Partial {
                node: rm,
                out: 0,
                leaf: 2,
            },
        ];
        expected.extend((0..5).map(|group| DataKey::Piece {
            node: se,
            group,
            part: 2,
        }));
        assert_eq!(load2.outputs, expected);

        // Merge group 3 reads one piece from every load and, with the FFT fused into it, writes nothing.
        let merge = g
            .tasks()
            .find(|(_, t)| t.kind == TaskKind::Merge { node: se, group: 3 })
            .expect("merge 3")
            .1;
        assert_eq!(
            merge.inputs,
            (0..5)
                .map(|part| DataKey::Piece {
                    node: se,
                    group: 3,
                    part
                })
                .collect::<Vec<_>>()
        );
        assert!(merge.outputs.is_empty());

        // Lineage: the producer of a piece is its load; of a fold, the combine before it.
        assert_eq!(
            g.producer(DataKey::Piece {
                node: se,
                group: 3,
                part: 4
            }),
            Some(TaskId(4))
        );
        let fold2 = DataKey::Fold {
            node: tm,
            out: 0,
            leaf: 2,
        };
        let producer = g.producer(fold2).expect("produced");
        assert_eq!(
            g.task(producer).kind,
            TaskKind::Combine {
                node: tm,
                out: 0,
                leaf: 2
            }
        );
        assert_eq!(g.consumers(fold2).len(), 1);
        assert_eq!(
            g.task(g.consumers(fold2)[0]).inputs,
            vec![
                fold2,
                DataKey::Partial {
                    node: tm,
                    out: 0,
                    leaf: 3
                }
            ]
        );
        assert_eq!(
            g.producer(DataKey::Fold {
                node: tm,
                out: 0,
                leaf: 4
            }),
            None,
            "the last leaf finishes"
        );
    }

    #[test]
    fn every_key_has_one_producer_and_its_consumers() {
        for p in [
            post(),
            plan(
                "  - {name: a, input: source, rechunk: {chunks: [15, 7, -1]}}
  - {name: b, input: a, reduce: {op: max, axes: [1]}}
  - {name: c, input: b, rechunk: {chunks: [-1, 3]}}
  - {name: d, input: c, reduce: {op: sum, axes: [0, 1]}}
",
                37,
                20,
            ),
        ] {
            let g = TaskGraph::build(&p).expect("graph");
            let mut written = 0;
            for (id, t) in g.tasks() {
                for &k in &t.outputs {
                    written += 1;
                    assert_eq!(g.producer(k), Some(id), "{k}");
                    assert!(!g.consumers(k).is_empty(), "{k} is read");
                }
                for &k in &t.inputs {
                    assert!(g.consumers(k).contains(&id), "{k}");
                    // Task ids are a topological order: a task's inputs are written by earlier tasks.
                    assert!(g.producer(k).expect("produced") < id, "{k}");
                }
            }
            assert_eq!(written, g.producer.len(), "no key written twice");
        }
    }

    #[test]
    fn inconsistent_tasks_are_reported() {
        let k = DataKey::Piece {
            node: 1,
            group: 0,
            part: 0,
        };
        let load = |outputs| Task {
            kind: TaskKind::Load { chunk: 0 },
            inputs: vec![],
            outputs,
        };
        let merge = |inputs| Task {
            kind: TaskKind::Merge { node: 1, group: 0 },
            inputs,
            outputs: vec![],
        };
        assert_eq!(
            TaskGraph::from_tasks(vec![load(vec![k]), load(vec![k]), merge(vec![k])]).err(),
            Some(GraphError::TwoProducers {
                key: k,
                first: TaskId(0),
                second: TaskId(1)
            })
        );
        assert_eq!(
            TaskGraph::from_tasks(vec![merge(vec![k])]).err(),
            Some(GraphError::NoProducer {
                task: TaskId(0),
                key: k
            })
        );
        assert_eq!(
            TaskGraph::from_tasks(vec![load(vec![k])]).err(),
            Some(GraphError::NoConsumer {
                key: k,
                producer: TaskId(0)
            })
        );
    }
}
