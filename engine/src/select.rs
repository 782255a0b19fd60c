//! The `select` stage: NumPy-style picking of indices along axes (`stack[1000:9001:1000]`, `stack[5000]`).
//!
//! A selection keeps, per axis of its input, a strictly increasing list of indices; an axis picked with
//! `index` is dropped from the result. Because the lists increase, the selected elements of any input chunk
//! form one rectangular block of the result, so a select runs like a rechunk: each input chunk is cut into
//! *pieces* (the elements it holds of each output chunk, gathered) and a merge task pastes the pieces of an
//! output chunk. A select of the source skips all that: its merge task reads just the selected slices
//! ([`read_selected`], consecutive indices in one read), so unselected slices are never read.

use std::ops::Range;

use crate::array::{ArrayMeta, Chunk};
use crate::grid::product;
use crate::source::{SliceSource, SourceError};

/// Applies `$body` (an `ArrayD<T>` expression of `$a`) to the array of a [`Chunk`], keeping its type.
macro_rules! map_chunk {
    ($chunk:expr, $a:ident => $body:expr) => {
        match $chunk {
            Chunk::U8($a) => Chunk::U8($body),
            Chunk::U16($a) => Chunk::U16($body),
            Chunk::F32($a) => Chunk::F32($body),
            Chunk::F64($a) => Chunk::F64($body),
        }
    };
}

/// A resolved selection: the kept indices of every input axis (all of them for axes not selected) and which
/// axes are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Per input axis, strictly increasing indices.
    pub indices: Vec<Vec<usize>>,
    /// Per input axis, whether it is dropped from the result (picked with `index`).
    pub dropped: Vec<bool>,
}

// The index rules live with the spec; re-exported at their old paths.
pub use arrayjob_spec::select::{SelectProblem, resolve_axis};

impl From<arrayjob_spec::select::Resolved> for Selection {
    fn from(r: arrayjob_spec::select::Resolved) -> Selection {
        Selection {
            indices: r.indices,
            dropped: r.dropped,
        }
    }
}

impl Selection {
    /// The result's grid with dropped axes kept at length 1 (same linear chunk indices as [`Selection::meta`]):
    /// lengths are the selected counts, chunks the input's chunks clipped to them.
    pub fn full_meta(&self, input: &ArrayMeta) -> ArrayMeta {
        let shape: Vec<usize> = self.indices.iter().map(Vec::len).collect();
        let chunks = shape
            .iter()
            .zip(&input.chunks)
            .map(|(&n, &c)| c.min(n).max(1))
            .collect();
        ArrayMeta {
            shape,
            chunks,
            dtype: input.dtype,
        }
    }

    /// The result's grid: [`Selection::full_meta`] without the dropped axes.
    pub fn meta(&self, input: &ArrayMeta) -> ArrayMeta {
        let full = self.full_meta(input);
        ArrayMeta {
            shape: self.kept(&full.shape),
            chunks: self.kept(&full.chunks),
            dtype: full.dtype,
        }
    }

    /// The entries of `v` (one per input axis) of the axes kept in the result.
    pub fn kept(&self, v: &[usize]) -> Vec<usize> {
        v.iter()
            .zip(&self.dropped)
            .filter(|(_, d)| !**d)
            .map(|(x, _)| *x)
            .collect()
    }

    /// The input chunks holding elements of the output block `start .. start + len` (full coordinates), row-major.
    pub fn parts_of(&self, input: &ArrayMeta, start: &[usize], len: &[usize]) -> Vec<Vec<usize>> {
        let per_axis: Vec<Vec<usize>> = (0..start.len())
            .map(|a| {
                let mut v: Vec<usize> = self.indices[a][start[a]..start[a] + len[a]]
                    .iter()
                    .map(|i| i / input.chunks[a].max(1))
                    .collect();
                v.dedup();
                v
            })
            .collect();
        let ranges: Vec<Range<usize>> = per_axis.iter().map(|v| 0..v.len()).collect();
        product(&ranges)
            .into_iter()
            .map(|k| k.iter().enumerate().map(|(a, &j)| per_axis[a][j]).collect())
            .collect()
    }

    /// The output positions (full coordinates) whose indices lie in the input block `start .. start + len`;
    /// empty on some axis when the block holds nothing selected.
    pub fn positions(&self, start: &[usize], len: &[usize]) -> Vec<Range<usize>> {
        (0..start.len())
            .map(|a| {
                let idx = &self.indices[a];
                idx.partition_point(|&i| i < start[a])
                    ..idx.partition_point(|&i| i < start[a] + len[a])
            })
            .collect()
    }

    /// The pieces of the input block at `start .. start + len`: per output chunk it touches (index in the full
    /// grid `out`), the output positions it fills.
    pub fn pieces(
        &self,
        out: &ArrayMeta,
        start: &[usize],
        len: &[usize],
    ) -> Vec<(Vec<usize>, Vec<Range<usize>>)> {
        let pos = self.positions(start, len);
        if pos.iter().any(Range::is_empty) {
            return Vec::new();
        }
        let chunk_ranges: Vec<Range<usize>> = pos
            .iter()
            .zip(&out.chunks)
            .map(|(r, &c)| r.start / c..(r.end - 1) / c + 1)
            .collect();
        product(&chunk_ranges)
            .into_iter()
            .map(|o| {
                let within = o
                    .iter()
                    .zip(&out.chunks)
                    .zip(&pos)
                    .map(|((&k, &c), r)| r.start.max(k * c)..r.end.min((k + 1) * c))
                    .collect();
                (o, within)
            })
            .collect()
    }

    /// The elements of `block` (an input block at `start`) at output positions `within`.
    pub fn gather(&self, block: &Chunk, start: &[usize], within: &[Range<usize>]) -> Chunk {
        let local: Vec<Vec<usize>> = within
            .iter()
            .enumerate()
            .map(|(a, r)| {
                self.indices[a][r.clone()]
                    .iter()
                    .map(|i| i - start[a])
                    .collect()
            })
            .collect();
        take(block, &local)
    }
}

/// The elements of `block` at `local` indices per axis (NumPy's `block[np.ix_(...)]`); axes whose indices are
/// all of the axis in order are not copied.
pub fn take(block: &Chunk, local: &[Vec<usize>]) -> Chunk {
    let mut out = block.clone();
    for (a, idx) in local.iter().enumerate() {
        let n = out.shape()[a];
        if idx.len() == n && idx.iter().enumerate().all(|(k, &i)| k == i) {
            continue;
        }
        out = map_chunk!(&out, x => x.select(ndarray::Axis(a), idx));
    }
    out
}

/// `chunk` without its `dropped` axes (each of length 1).
pub fn drop_axes(chunk: Chunk, dropped: &[bool]) -> Chunk {
    if !dropped.contains(&true) {
        return chunk;
    }
    let shape: Vec<usize> = chunk
        .shape()
        .iter()
        .zip(dropped)
        .filter(|(_, d)| !**d)
        .map(|(n, _)| *n)
        .collect();
    // Same element count: the reshape cannot fail.
    map_chunk!(chunk, x => x
        .to_shape(ndarray::IxDyn(&shape))
        .map(|v| v.into_owned())
        .unwrap_or_default())
}

/// Reads the slices `indices` (increasing) of `source` as one `(indices.len(), height, width)` chunk, each run
/// of consecutive indices in one read: only the selected slices are read.
///
/// # Errors
/// The source's error for a slice that cannot be read (naming its index).
pub fn read_selected(source: &dyn SliceSource, indices: &[usize]) -> Result<Chunk, SourceError> {
    let mut out: Option<Chunk> = None;
    let mut k = 0;
    while k < indices.len() {
        let mut end = k + 1;
        while end < indices.len() && indices[end] == indices[end - 1] + 1 {
            end += 1;
        }
        let run = source.read(indices[k], indices[end - 1] + 1)?;
        let block = out.get_or_insert_with(|| {
            let mut shape = run.shape().to_vec();
            shape[0] = indices.len();
            Chunk::zeros(run.dtype(), &shape)
        });
        let mut at = vec![0; run.shape().len()];
        at[0] = k;
        block.paste(&at, &run).map_err(|m| SourceError::Config {
            field: "spec.source".into(),
            message: format!("slices {}..{}: {m}", indices[k], indices[end - 1] + 1),
        })?;
        k = end;
    }
    out.ok_or_else(|| SourceError::Config {
        field: "spec.source".into(),
        message: "no slice selected".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::DType;
    use crate::source::SliceInfo;
    use crate::spec::AxisSelection;
    use std::sync::Mutex;

    /// 10 slices of 2 x 3 whose elements are their slice index; records every read.
    #[derive(Debug, Default)]
    struct Counting(Mutex<Vec<(usize, usize)>>);

    impl SliceSource for Counting {
        fn len(&self) -> usize {
            10
        }
        fn slice_info(&self) -> Result<SliceInfo, SourceError> {
            Ok(SliceInfo {
                height: 2,
                width: 3,
                dtype: DType::Uint8,
            })
        }
        fn read(&self, start: usize, end: usize) -> Result<Chunk, SourceError> {
            self.0.lock().expect("lock").push((start, end));
            let v: Vec<u8> = (start..end).flat_map(|i| [i as u8; 6]).collect();
            Ok(Chunk::U8(
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[end - start, 2, 3]), v)
                    .expect("shape"),
            ))
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    #[test]
    fn read_selected_reads_each_run_of_consecutive_slices_once() {
        let src = Counting::default();
        let got = read_selected(&src, &[1, 2, 3, 7, 9]).expect("read");
        assert_eq!(*src.0.lock().expect("lock"), vec![(1, 4), (7, 8), (9, 10)]);
        assert_eq!(got.shape(), &[5, 2, 3]);
        let firsts: Vec<f64> = got.to_f64().outer_iter().map(|s| s[[0, 0]]).collect();
        assert_eq!(firsts, vec![1.0, 2.0, 3.0, 7.0, 9.0]);
    }

    fn axis(axis: usize) -> AxisSelection {
        AxisSelection {
            axis,
            index: None,
            indices: None,
            start: None,
            stop: None,
            step: None,
        }
    }

    #[test]
    fn ranges_are_clipped_like_numpy_and_unknown_lengths_wait() {
        let s = AxisSelection {
            start: Some(3),
            stop: Some(100),
            step: Some(4),
            ..axis(0)
        };
        assert_eq!(resolve_axis(&s, Some(12), "x"), Ok(Some(vec![3, 7, 11])));
        assert_eq!(resolve_axis(&s, None, "x"), Ok(None));
        let one = AxisSelection {
            index: Some(4),
            ..axis(1)
        };
        let sel: Selection =
            arrayjob_spec::select::resolve(&[s, one], &[Some(12), Some(5), Some(6)], "at")
                .expect("valid")
                .expect("known")
                .into();
        assert_eq!(sel.dropped, vec![false, true, false]);
        let input = ArrayMeta {
            shape: vec![12, 5, 6],
            chunks: vec![5, 5, 6],
            dtype: DType::Uint8,
        };
        assert_eq!(sel.meta(&input).shape, vec![3, 6]);
        assert_eq!(sel.meta(&input).chunks, vec![3, 6]);
    }

    #[test]
    fn pieces_of_every_input_chunk_tile_each_output_chunk_exactly() {
        let sel = Selection {
            indices: vec![vec![0, 4, 5, 6, 13, 19], (1..8).step_by(3).collect()],
            dropped: vec![false, false],
        };
        let input = ArrayMeta {
            shape: vec![20, 8],
            chunks: vec![5, 3],
            dtype: DType::Uint8,
        };
        let full = sel.full_meta(&input);
        let mut filled = vec![vec![0; 3]; 6];
        for idx in input.chunk_indices() {
            let (s, l) = input.chunk_region(&idx);
            for (o, within) in sel.pieces(&full, &s, &l) {
                let (os, ol) = full.chunk_region(&o);
                assert!(
                    sel.parts_of(&input, &os, &ol).contains(&idx),
                    "{idx:?} feeds {o:?}"
                );
                for r in within[0].clone() {
                    for c in within[1].clone() {
                        filled[r][c] += 1;
                    }
                }
            }
        }
        assert!(filled.iter().flatten().all(|&n| n == 1), "{filled:?}");
    }
}
