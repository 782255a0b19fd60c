//! In-memory chunks: a dense n-dimensional block of one element type.

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

/// Element type of an array or chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 8-bit unsigned integer (most EM and PNG data).
    Uint8,
    /// 16-bit unsigned integer (16-bit PNG / TIFF).
    Uint16,
    /// 32-bit float.
    Float32,
    /// 64-bit float (reductions accumulate and return this).
    Float64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::Uint8 => 1,
            DType::Uint16 => 2,
            DType::Float32 => 4,
            DType::Float64 => 8,
        }
    }

    /// The name NumPy and Zarr v3 use for this type.
    pub fn name(self) -> &'static str {
        match self {
            DType::Uint8 => "uint8",
            DType::Uint16 => "uint16",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
        let mut out = Vec::with_capacity(self.nbytes());
        with_chunk!(self, a => {
            for v in a.iter() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        });
        out
    }

    /// Rebuilds a chunk from [`Chunk::to_le_bytes`] output.
    ///
    /// # Errors
    /// When `bytes` does not hold exactly `shape.product() * dtype.size()` bytes.
    pub fn from_le_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Chunk, String> {
        let n: usize = shape.iter().product();
        if bytes.len() != n * dtype.size() {
            return Err(format!(
                "expected {} bytes for {dtype} {shape:?}, found {}",
                n * dtype.size(),
                bytes.len()
            ));
        }
        let s = IxDyn(shape);
        macro_rules! build {
            ($t:ty, $v:ident) => {{
                let w = std::mem::size_of::<$t>();
                let v: Vec<$t> = bytes
                    .chunks_exact(w)
                    .map(|b| <$t>::from_le_bytes(b.try_into().expect("exact chunk width")))
                    .collect();
                Chunk::$v(ArrayD::from_shape_vec(s, v).map_err(|e| e.to_string())?)
            }};
        }
        Ok(match dtype {
            DType::Uint8 => {
                Chunk::U8(ArrayD::from_shape_vec(s, bytes.to_vec()).map_err(|e| e.to_string())?)
            }
            DType::Uint16 => build!(u16, U16),
            DType::Float32 => build!(f32, F32),
            DType::Float64 => build!(f64, F64),
        })
    }
}

impl Chunk {
    /// A copy of the block `start .. start + len` of this chunk.
    pub fn region(&self, start: &[usize], len: &[usize]) -> Chunk {
        let info = |ax: ndarray::AxisDescription| {
            let a = ax.axis.index();
            ndarray::Slice::from(start[a]..start[a] + len[a])
        };
        match self {
            Chunk::U8(a) => Chunk::U8(a.slice_each_axis(info).to_owned()),
            Chunk::U16(a) => Chunk::U16(a.slice_each_axis(info).to_owned()),
            Chunk::F32(a) => Chunk::F32(a.slice_each_axis(info).to_owned()),
            Chunk::F64(a) => Chunk::F64(a.slice_each_axis(info).to_owned()),
        }
    }

    /// Copies all of `src` into this chunk at offset `at`.
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
        let sshape = src.shape().to_vec();
        let info = |ax: ndarray::AxisDescription| {
            let a = ax.axis.index();
            ndarray::Slice::from(at[a]..at[a] + sshape[a])
        };
        match (self, src) {
            (Chunk::U8(d), Chunk::U8(s)) => d.slice_each_axis_mut(info).assign(s),
            (Chunk::U16(d), Chunk::U16(s)) => d.slice_each_axis_mut(info).assign(s),
            (Chunk::F32(d), Chunk::F32(s)) => d.slice_each_axis_mut(info).assign(s),
            (Chunk::F64(d), Chunk::F64(s)) => d.slice_each_axis_mut(info).assign(s),
            (d, s) => return Err(format!("cannot paste {} into {}", s.dtype(), d.dtype())),
        }
        Ok(())
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
