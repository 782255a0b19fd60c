//! What tasks hand each other: the [`DataKey`] of every intermediate result (the unit of lineage, see
//! [`crate::graph`]) and the [`Data`] stored under it.
//!
//! Only results that wait between tasks have keys: rechunk pieces, reduction partials and running folds.
//! Chunks of fused stages (recenter, FFT) live inside the task that computes them and are never stored.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

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

/// A hash map keyed by values the planner makes (data keys, task ids, worker ids), hashed with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A hasher for [`FastMap`]: a multiply-rotate step per word and a final avalanche, several times faster than
/// the default SipHash on the few small integers of a [`DataKey`] (the coordinator hashes keys millions of
/// times per job). It does not resist chosen collisions, which is fine for keys no client chooses.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

/// An odd constant with well spread bits (2^64 / golden ratio).
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(23) ^ i).wrapping_mul(SPREAD);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn write_isize(&mut self, i: isize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        // Fold the high bits, where the multiplications pushed the entropy, into the low ones (bucket index).
        let mut h = self.0;
        h ^= h >> 29;
        h = h.wrapping_mul(SPREAD);
        h ^ (h >> 32)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hash};

    #[test]
    fn fast_hashes_of_nearby_keys_spread_over_buckets() {
        let build = BuildHasherDefault::<FastHasher>::default();
        let mut keys = Vec::new();
        for node in 0..4 {
            for group in 0..64 {
                for part in 0..16 {
                    keys.push(DataKey::Piece { node, group, part });
                    keys.push(DataKey::Fold {
                        node,
                        out: group,
                        leaf: part,
                    });
                }
            }
        }
        let hashes: Vec<u64> = keys.iter().map(|k| build.hash_one(k)).collect();
        assert_eq!(
            hashes.iter().collect::<HashSet<_>>().len(),
            keys.len(),
            "no two keys hash alike"
        );
        // The low bits pick the bucket: 8192 keys over 1024 buckets, about 8 each.
        let mut buckets = vec![0usize; 1024];
        for h in &hashes {
            buckets[(h & 1023) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| n <= 24),
            "{:?}",
            buckets.iter().max()
        );
        let mut h = FastHasher::default();
        "merge".hash(&mut h);
        assert_ne!(h.finish(), FastHasher::default().finish());
    }
}
