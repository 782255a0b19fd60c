//! In-memory chunks: a dense n-dimensional block of one element type.

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

// The element type is part of the spec (a source's and an FFT's `dtype`); re-exported at its old path.
pub use arrayjob_spec::dtype::DType;

/// A dense block of data of one of the supported element types.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// uint8 elements.
    U8(ArrayD<u8>),
    /// uint16 elements.
    U16(ArrayD<u16>),
    /// float32 elements.
    F32(ArrayD<f32>),
    /// float64 elements.
    F64(ArrayD<f64>),
}

/// Runs `$body` with `$a` bound to the inner `ArrayD<T>` of a [`Chunk`], whatever its type.
#[macro_export]
macro_rules! with_chunk {
    ($chunk:expr, $a:ident => $body:expr) => {
        match $chunk {
            $crate::array::Chunk::U8($a) => $body,
            $crate::array::Chunk::U16($a) => $body,
            $crate::array::Chunk::F32($a) => $body,
            $crate::array::Chunk::F64($a) => $body,
        }
    };
}

impl Chunk {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            Chunk::U8(_) => DType::Uint8,
            Chunk::U16(_) => DType::Uint16,
            Chunk::F32(_) => DType::Float32,
            Chunk::F64(_) => DType::Float64,
        }
    }

    /// Shape of the block.
    pub fn shape(&self) -> &[usize] {
        with_chunk!(self, a => a.shape())
    }

    /// Bytes held by the elements.
    pub fn nbytes(&self) -> usize {
        self.shape().iter().product::<usize>() * self.dtype().size()
    }

    /// A zero-filled chunk of the given type and shape.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Chunk {
        let s = IxDyn(shape);
        match dtype {
            DType::Uint8 => Chunk::U8(ArrayD::zeros(s)),
            DType::Uint16 => Chunk::U16(ArrayD::zeros(s)),
            DType::Float32 => Chunk::F32(ArrayD::zeros(s)),
            DType::Float64 => Chunk::F64(ArrayD::zeros(s)),
        }
    }

    /// The elements converted to f64, in row-major order of a new array.
    pub fn to_f64(&self) -> ArrayD<f64> {
        match self {
            Chunk::U8(a) => a.mapv(f64::from),
            Chunk::U16(a) => a.mapv(f64::from),
            Chunk::F32(a) => a.mapv(f64::from),
            Chunk::F64(a) => a.clone(),
        }
    }

    /// Raw little-endian bytes of the elements in row-major (C) order.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        with_chunk!(self, a => {
            let a = a.as_standard_layout();
            match a.as_slice() {
                Some(s) if cfg!(target_endian = "little") => bytemuck::cast_slice(s).to_vec(),
                _ => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        })
    }

    /// Rebuilds a chunk from [`Chunk::to_le_bytes`] output.
    ///
    /// # Errors
    /// When `bytes` does not hold exactly `shape.product() * dtype.size()` bytes.
    pub fn from_le_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Chunk, String> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()));
        if n != Some(bytes.len()) {
            return Err(format!(
                "expected {} bytes for {dtype} {shape:?}, found {}",
                n.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string()),
                bytes.len()
            ));
        }
        let s = IxDyn(shape);
        macro_rules! build {
            ($t:ty, $v:ident) => {{
                let v: Vec<$t> = if cfg!(target_endian = "little") {
                    bytemuck::pod_collect_to_vec(bytes)
                } else {
                    bytes
                        .chunks_exact(std::mem::size_of::<$t>())
                        .map(|b| <$t>::from_le_bytes(b.try_into().unwrap_or_default()))
                        .collect()
                };
                Chunk::$v(ArrayD::from_shape_vec(s, v).map_err(|e| e.to_string())?)
            }};
        }
        Ok(match dtype {
            DType::Uint8 => build!(u8, U8),
            DType::Uint16 => build!(u16, U16),
            DType::Float32 => build!(f32, F32),
            DType::Float64 => build!(f64, F64),
        })
    }
}

impl Chunk {
    /// A copy of the block `start .. start + len` of this chunk (bulk copies of contiguous runs).
    pub fn region(&self, start: &[usize], len: &[usize]) -> Chunk {
        macro_rules! cut {
            ($a:expr, $v:ident) => {{
                let src = $a.as_standard_layout();
                let data = src.as_slice().unwrap_or(&[]);
                let mut out = Vec::with_capacity(len.iter().product());
                for_each_run(src.shape(), start, len, |at, run| {
                    out.extend_from_slice(&data[at..at + run]);
                });
                // `out` holds exactly `len.product()` elements.
                Chunk::$v(ArrayD::from_shape_vec(IxDyn(len), out).unwrap_or_default())
            }};
        }
        match self {
            Chunk::U8(a) => cut!(a, U8),
            Chunk::U16(a) => cut!(a, U16),
            Chunk::F32(a) => cut!(a, F32),
            Chunk::F64(a) => cut!(a, F64),
        }
    }

    /// Copies all of `src` into this chunk at offset `at` (bulk copies of contiguous runs).
    ///
    /// # Errors
    /// When the element types differ or `src` does not fit at `at`.
    pub fn paste(&mut self, at: &[usize], src: &Chunk) -> Result<(), String> {
        let fits = at.len() == self.shape().len()
            && src.shape().len() == at.len()
            && at
                .iter()
                .zip(src.shape())
                .zip(self.shape())
                .all(|((a, s), d)| a + s <= *d);
        if !fits {
            return Err(format!(
                "block {:?} does not fit at {at:?} in {:?}",
                src.shape(),
                self.shape()
            ));
        }
        match (self, src) {
            (Chunk::U8(d), Chunk::U8(s)) => paste_into(d, at, s),
            (Chunk::U16(d), Chunk::U16(s)) => paste_into(d, at, s),
            (Chunk::F32(d), Chunk::F32(s)) => paste_into(d, at, s),
            (Chunk::F64(d), Chunk::F64(s)) => paste_into(d, at, s),
            (d, s) => return Err(format!("cannot paste {} into {}", s.dtype(), d.dtype())),
        }
        Ok(())
    }
}

impl Chunk {
    /// The elements' little-endian bytes in row-major order, when that is how they lie in memory (no copy).
    pub fn le_bytes_slice(&self) -> Option<&[u8]> {
        if cfg!(target_endian = "big") {
            return None;
        }
        with_chunk!(self, a => a.as_slice().map(bytemuck::cast_slice))
    }

    /// [`Chunk::le_bytes_slice`], writable: fill a chunk from bytes without an intermediate buffer.
    pub fn le_bytes_slice_mut(&mut self) -> Option<&mut [u8]> {
        if cfg!(target_endian = "big") {
            return None;
        }
        with_chunk!(self, a => a.as_slice_mut().map(bytemuck::cast_slice_mut))
    }

    /// The elements as little-endian bytes in row-major order: borrowed where that is the memory layout.
    pub fn as_le_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        with_chunk!(self, a => match a.as_slice() {
            Some(s) if cfg!(target_endian = "little") => std::borrow::Cow::Borrowed(bytemuck::cast_slice(s)),
            _ => std::borrow::Cow::Owned(self.to_le_bytes()),
        })
    }

    /// This block cut into the chunks of a grid of `chunk` shape (the block's origin on a grid line): every
    /// chunk, clipped at the block's far edges, in row-major order of the grid. One pass over the block in
    /// memory order, each row appended to the chunk it falls in, so cutting thin chunks (the post's
    /// `(N, 10, 10)`) costs about one copy of the block.
    pub fn split_grid(&self, chunk: &[usize]) -> Vec<Chunk> {
        macro_rules! go {
            ($a:expr, $v:ident) => {
                split_typed($a, chunk).into_iter().map(Chunk::$v).collect()
            };
        }
        match self {
            Chunk::U8(a) => go!(a, U8),
            Chunk::U16(a) => go!(a, U16),
            Chunk::F32(a) => go!(a, F32),
            Chunk::F64(a) => go!(a, F64),
        }
    }
}

impl Chunk {
    /// Like [`Chunk::split_grid`], but each chunk's little-endian bytes go into `bufs[c]` (cleared first; `bufs`
    /// grows to the number of chunks and is meant to be reused, so that cutting block after block allocates
    /// nothing). Returns each chunk's shape.
    pub fn split_grid_le_bytes(&self, chunk: &[usize], bufs: &mut Vec<Vec<u8>>) -> Vec<Vec<usize>> {
        let lens = grid_chunk_lens(self.shape(), chunk);
        if bufs.len() < lens.len() {
            bufs.resize_with(lens.len(), Vec::new);
        }
        let size = self.dtype().size();
        for (b, l) in bufs.iter_mut().zip(&lens) {
            b.clear();
            // Exactly one chunk's bytes the first time (growth by doubling would keep ~25% more).
            b.reserve_exact(l.iter().product::<usize>() * size);
        }
        if cfg!(target_endian = "big") {
            for (b, part) in bufs.iter_mut().zip(self.split_grid(chunk)) {
                b.extend_from_slice(&part.to_le_bytes());
            }
            return lens;
        }
        with_chunk!(self, a => {
            let a = a.as_standard_layout();
            for_each_grid_segment(a.shape(), a.as_slice().unwrap_or(&[]), chunk, |c, seg| {
                bufs[c].extend_from_slice(bytemuck::cast_slice(seg));
            });
        });
        lens
    }
}

fn split_typed<T: Copy + Default>(a: &ArrayD<T>, chunk: &[usize]) -> Vec<ArrayD<T>> {
    let a = a.as_standard_layout();
    let shape = a.shape().to_vec();
    let lens = grid_chunk_lens(&shape, chunk);
    let mut bufs: Vec<Vec<T>> = lens
        .iter()
        .map(|l| Vec::with_capacity(l.iter().product()))
        .collect();
    for_each_grid_segment(&shape, a.as_slice().unwrap_or(&[]), chunk, |c, seg| {
        bufs[c].extend_from_slice(seg);
    });
    bufs.into_iter()
        .zip(lens)
        .map(|(b, l)| ArrayD::from_shape_vec(IxDyn(&l), b).unwrap_or_default())
        .collect()
}

/// The shape of every chunk of the grid of `chunk` shape over `shape` (clipped at the far edges), in
/// row-major order of the grid.
fn grid_chunk_lens(shape: &[usize], chunk: &[usize]) -> Vec<Vec<usize>> {
    let grid: Vec<usize> = shape
        .iter()
        .zip(chunk)
        .map(|(&n, &c)| n.div_ceil(c.max(1)))
        .collect();
    grid_indices(&grid)
        .iter()
        .map(|g| {
            (0..shape.len())
                .map(|k| chunk[k].min(shape[k] - g[k] * chunk[k]))
                .collect()
        })
        .collect()
}

/// Walks a row-major array (`data`, of `shape`) once in memory order and calls `f(c, segment)` for each piece
/// of a row that falls in chunk `c` (row-major index in the grid of `chunk` shape). Each chunk's segments come
/// in its own row-major order, so appending them builds the chunk.
fn for_each_grid_segment<T>(
    shape: &[usize],
    data: &[T],
    chunk: &[usize],
    mut f: impl FnMut(usize, &[T]),
) {
    let d = shape.len();
    if d == 0 || shape.contains(&0) {
        return;
    }
    let grid: Vec<usize> = shape
        .iter()
        .zip(chunk)
        .map(|(&n, &c)| n.div_ceil(c.max(1)))
        .collect();
    let w = shape[d - 1];
    let cw = chunk[d - 1].max(1);
    let cols = grid[d - 1];
    // Each row (all axes but the last) feeds one run of chunks along the last axis.
    for (r, row) in data.chunks_exact(w).enumerate() {
        let mut rem = r;
        let mut first = 0;
        let mut stride = cols;
        for k in (0..d - 1).rev() {
            let i = rem % shape[k];
            rem /= shape[k];
            first += (i / chunk[k].max(1)) * stride;
            stride *= grid[k];
        }
        for (c, seg) in row.chunks(cw).enumerate() {
            f(first + c, seg);
        }
    }
}

/// `src` copied into `dst` at `at` (the caller checked that it fits).
fn paste_into<T: Copy>(dst: &mut ArrayD<T>, at: &[usize], src: &ArrayD<T>) {
    let src = src.as_standard_layout();
    let (Some(data), true) = (src.as_slice(), dst.is_standard_layout()) else {
        // Not row-major (never the case for chunks the engine builds): the general path.
        let len = src.shape().to_vec();
        dst.slice_each_axis_mut(|ax| {
            let a = ax.axis.index();
            ndarray::Slice::from(at[a]..at[a] + len[a])
        })
        .assign(&src);
        return;
    };
    let shape = dst.shape().to_vec();
    let Some(out) = dst.as_slice_mut() else {
        return;
    };
    let mut next = 0;
    for_each_run(&shape, at, src.shape(), |off, run| {
        out[off..off + run].copy_from_slice(&data[next..next + run]);
        next += run;
    });
}

/// Calls `f(offset, run)` for each contiguous run, in row-major order, of the block `start .. start + len` of a
/// row-major array of shape `shape`: `offset` is the run's first element in the array, `run` its length.
/// Trailing axes the block covers whole are merged into one run, so a block of whole rows is a single copy.
pub fn for_each_run(
    shape: &[usize],
    start: &[usize],
    len: &[usize],
    mut f: impl FnMut(usize, usize),
) {
    let d = shape.len();
    if len.contains(&0) {
        return;
    }
    if d == 0 {
        f(0, 1);
        return;
    }
    let mut stride = vec![1usize; d];
    for a in (0..d - 1).rev() {
        stride[a] = stride[a + 1] * shape[a + 1];
    }
    // Axes m.. form one contiguous run.
    let mut m = d - 1;
    let mut run = len[d - 1];
    while m > 0 && len[m] == shape[m] {
        m -= 1;
        run *= len[m];
    }
    let base: usize = (0..d).map(|a| start[a] * stride[a]).sum();
    let mut idx = vec![0usize; m];
    loop {
        let off = base + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
        f(off, run);
        let mut ax = m;
        loop {
            if ax == 0 {
                return;
            }
            ax -= 1;
            idx[ax] += 1;
            if idx[ax] < len[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

/// Shape, element type and chunk grid of a (logical) array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayMeta {
    /// Length along each axis.
    pub shape: Vec<usize>,
    /// Chunk length along each axis (the last chunk along an axis may be shorter).
    pub chunks: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

impl ArrayMeta {
    /// Number of chunks along each axis.
    pub fn grid(&self) -> Vec<usize> {
        self.shape
            .iter()
            .zip(&self.chunks)
            .map(|(&n, &c)| if n == 0 { 0 } else { n.div_ceil(c.max(1)) })
            .collect()
    }

    /// Total number of chunks.
    pub fn num_chunks(&self) -> usize {
        self.grid().iter().product()
    }

    /// Start offset and length of chunk `idx` along each axis.
    pub fn chunk_region(&self, idx: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let start: Vec<usize> = idx.iter().zip(&self.chunks).map(|(i, c)| i * c).collect();
        let len = start
            .iter()
            .zip(&self.chunks)
            .zip(&self.shape)
            .map(|((s, c), n)| (*c).min(n - s))
            .collect();
        (start, len)
    }

    /// Total bytes of the array.
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }

    /// Every chunk index of the grid, in row-major order.
    pub fn chunk_indices(&self) -> Vec<Vec<usize>> {
        grid_indices(&self.grid())
    }
}

impl From<arrayjob_spec::validate::Grid> for ArrayMeta {
    fn from(g: arrayjob_spec::validate::Grid) -> ArrayMeta {
        ArrayMeta {
            shape: g.shape,
            chunks: g.chunks,
            dtype: g.dtype,
        }
    }
}

impl From<ArrayMeta> for arrayjob_spec::validate::Grid {
    fn from(m: ArrayMeta) -> Self {
        arrayjob_spec::validate::Grid {
            shape: m.shape,
            chunks: m.chunks,
            dtype: m.dtype,
        }
    }
}

/// All indices of a grid of the given extent, in row-major order.
pub fn grid_indices(grid: &[usize]) -> Vec<Vec<usize>> {
    let total: usize = grid.iter().product();
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let mut idx = vec![0usize; grid.len()];
    loop {
        out.push(idx.clone());
        let mut ax = grid.len();
        loop {
            if ax == 0 {
                return out;
            }
            ax -= 1;
            idx[ax] += 1;
            if idx[ax] < grid[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_and_regions_cover_ragged_edges() {
        let m = ArrayMeta {
            shape: vec![45, 10],
            chunks: vec![20, 4],
            dtype: DType::Uint8,
        };
        assert_eq!(m.grid(), vec![3, 3]);
        assert_eq!(m.chunk_region(&[2, 2]), (vec![40, 8], vec![5, 2]));
        assert_eq!(m.chunk_indices().len(), 9);
        assert_eq!(m.chunk_indices()[4], vec![1, 1]);
    }

    #[test]
    fn bytes_round_trip() {
        let c = Chunk::F32(
            ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.5, -2.0, 3.25, 0.0]).expect("shape"),
        );
        let b = c.to_le_bytes();
        assert_eq!(b.len(), 16);
        assert_eq!(
            Chunk::from_le_bytes(DType::Float32, &[2, 2], &b).expect("decode"),
            c
        );
        assert!(Chunk::from_le_bytes(DType::Float32, &[2, 3], &b).is_err());
    }

    #[test]
    fn split_grid_matches_regions() {
        let block = Chunk::U16(ArrayD::from_shape_fn(IxDyn(&[3, 5, 7]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as u16
        }));
        let chunk = [2, 5, 3];
        let parts = block.split_grid(&chunk);
        let meta = ArrayMeta {
            shape: vec![3, 5, 7],
            chunks: chunk.to_vec(),
            dtype: DType::Uint16,
        };
        assert_eq!(parts.len(), meta.num_chunks());
        for (idx, part) in meta.chunk_indices().iter().zip(&parts) {
            let (start, len) = meta.chunk_region(idx);
            assert_eq!(part, &block.region(&start, &len), "chunk {idx:?}");
        }
        assert_eq!(parts[5].shape(), &[1, 5, 1]);
    }

    #[test]
    fn region_and_paste_round_trip() {
        let src = Chunk::U8(ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| {
            (i[0] * 10 + i[1]) as u8
        }));
        let r = src.region(&[1, 2], &[2, 2]);
        assert_eq!(r.to_le_bytes(), vec![12, 13, 22, 23]);
        let mut dst = Chunk::zeros(DType::Uint8, &[3, 3]);
        dst.paste(&[1, 0], &r).expect("fits");
        assert_eq!(dst.to_le_bytes(), vec![0, 0, 0, 12, 13, 0, 22, 23, 0]);
        assert!(dst.paste(&[2, 2], &r).is_err());
        assert!(
            dst.paste(&[0, 0], &Chunk::zeros(DType::Float32, &[1, 1]))
                .is_err()
        );
    }
}
