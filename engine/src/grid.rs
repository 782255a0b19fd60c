//! Chunk-grid geometry: which chunks of a grid overlap a region, row-major chunk indices, and the merge groups
//! of a rechunk. Pure arithmetic over [`ArrayMeta`], shared by the planner, the task graph, selections and the
//! executor.

use crate::array::ArrayMeta;

/// Target size of one rechunk merge task: output chunks are merged in groups of about this many bytes.
pub const MERGE_GROUP_BYTES: usize = 8 << 20;

/// The grid of a rechunk's merge tasks: consecutive output chunks along the last axis are merged together
/// (about [`MERGE_GROUP_BYTES`] per task), so pieces are large and few even when output chunks are tiny
/// (the post's `(N, 10, 10)` time-series chunks). The result is the node's grid with longer chunks on the
/// last axis.
pub fn merge_groups(meta: &ArrayMeta) -> ArrayMeta {
    let mut g = meta.clone();
    if let Some(last) = meta.chunks.len().checked_sub(1) {
        let chunk_bytes = meta.chunks.iter().product::<usize>() * meta.dtype.size();
        let per_group = (MERGE_GROUP_BYTES / chunk_bytes.max(1)).clamp(1, meta.grid()[last].max(1));
        g.chunks[last] = meta.chunks[last] * per_group;
    }
    g
}

/// For each axis, the range of chunk indices of grid `from` (chunks of `from_chunks`) that overlap
/// `start .. start + len`.
pub fn overlapping(
    from_chunks: &[usize],
    start: &[usize],
    len: &[usize],
) -> Vec<std::ops::Range<usize>> {
    from_chunks
        .iter()
        .zip(start.iter().zip(len))
        .map(|(&c, (&s, &l))| (s / c)..(s + l).div_ceil(c))
        .collect()
}

/// Linear (row-major) index of a chunk in a grid.
pub fn linear(grid: &[usize], idx: &[usize]) -> usize {
    idx.iter().zip(grid).fold(0, |acc, (&i, &g)| acc * g + i)
}

/// Chunk index of a linear index in a grid.
pub fn unlinear(grid: &[usize], mut lin: usize) -> Vec<usize> {
    let mut idx = vec![0; grid.len()];
    for a in (0..grid.len()).rev() {
        idx[a] = lin % grid[a].max(1);
        lin /= grid[a].max(1);
    }
    idx
}

/// Index of the chunk of `meta` that starts at element `start`.
pub fn chunk_index(meta: &ArrayMeta, start: &[usize]) -> Vec<usize> {
    start
        .iter()
        .zip(&meta.chunks)
        .map(|(s, c)| s / c.max(&1))
        .collect()
}

/// Number of chunks of `meta` in the chunk-aligned block `start .. start + len`.
pub fn chunks_in(meta: &ArrayMeta, start: &[usize], len: &[usize]) -> u64 {
    overlapping(&meta.chunks, start, len)
        .iter()
        .map(|r| r.len() as u64)
        .product()
}

/// Every index in the cartesian product of per-axis ranges, row-major.
pub fn product(ranges: &[std::ops::Range<usize>]) -> Vec<Vec<usize>> {
    let ext: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    crate::array::grid_indices(&ext)
        .into_iter()
        .map(|i| i.iter().zip(ranges).map(|(k, r)| r.start + k).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_and_linear_indices() {
        assert_eq!(overlapping(&[20, 5], &[15, 0], &[10, 5]), vec![0..2, 0..1]);
        assert_eq!(linear(&[3, 4], &[2, 1]), 9);
        assert_eq!(unlinear(&[3, 4], 9), vec![2, 1]);
    }
}
