//! What tasks hand each other: the [`DataKey`] of every intermediate result (the unit of lineage, see
//! [`crate::graph`]) and the [`Data`] stored under it.
//!
//! Only results that wait between tasks have keys: rechunk pieces, reduction partials and running folds.
//! Chunks of fused stages (recenter, FFT) live inside the task that computes them and are never stored.

use std::fmt;

use crate::array::Chunk;
use crate::kernels::reduce::Partial;

/// The name of one intermediate result. Node numbers are plan node indices; chunk, group, part and leaf
/// numbers are linear (row-major) indices in the grids described below.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum DataKey {
    /// The part of input chunk `part` (in the rechunk's input grid) that falls in merge group `group`
    /// (in [`crate::plan::merge_groups`]'s grid) of rechunk node `node`.
    Piece {
        /// Rechunk node.
        node: usize,
        /// Merge group.
        group: usize,
        /// Input chunk it was cut from.
        part: usize,
    },
    /// The partial of reduce node `node` over its `leaf`-th input chunk, for output chunk `out` (leaves are
    /// numbered row-major over the reduced axes of the input grid).
    Partial {
        /// Reduce node.
        node: usize,
        /// Output chunk.
        out: usize,
        /// Input chunk among those reduced into `out`.
        leaf: usize,
    },
    /// Partials `0..=leaf` of output chunk `out` of reduce node `node`, combined in leaf order.
    Fold {
        /// Reduce node.
        node: usize,
        /// Output chunk.
        out: usize,
        /// Last leaf folded in.
        leaf: usize,
    },
}

impl fmt::Display for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DataKey::Piece { node, group, part } => {
                write!(
                    f,
                    "piece of chunk {part} for merge group {group} of node {node}"
                )
            }
            DataKey::Partial { node, out, leaf } => {
                write!(f, "partial {leaf} of chunk {out} of node {node}")
            }
            DataKey::Fold { node, out, leaf } => {
                write!(f, "partials 0..={leaf} of chunk {out} of node {node}")
            }
        }
    }
}

/// A value stored under a [`DataKey`].
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// An array chunk (rechunk pieces).
    Chunk(Chunk),
    /// A reduction's state (partials and folds).
    Partial(Partial),
}

impl Data {
    /// Bytes of memory it holds.
    pub fn nbytes(&self) -> usize {
        match self {
            Data::Chunk(c) => c.nbytes(),
            Data::Partial(p) => p.nbytes(),
        }
    }

    /// What kind of value it is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Data::Chunk(_) => "chunk",
            Data::Partial(_) => "reduction partial",
        }
    }
}

impl From<Chunk> for Data {
    fn from(c: Chunk) -> Data {
        Data::Chunk(c)
    }
}

impl From<Partial> for Data {
    fn from(p: Partial) -> Data {
        Data::Partial(p)
    }
}
