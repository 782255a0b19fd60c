//! Recentering, exactly as in the Dask imaging post: each 2-D slice is cropped to a window around its
//! intensity centroid, the centroid being clamped so that the window stays inside the slice.

use ndarray::{Array3, ArrayView2, ArrayView3, Axis, s};

use super::KernelError;
use crate::array::Chunk;

/// A pixel type whose centroid sums are accumulated exactly (integers) or in float64 (floats).
pub trait Pixel: Copy + Send + Sync + 'static {
    /// Computes `(sum i*v, sum j*v, sum v)` over a row-major slice view.
    fn moments(slice: ArrayView2<'_, Self>) -> (f64, f64, f64);
}

macro_rules! int_pixel {
    ($t:ty) => {
        impl Pixel for $t {
            fn moments(slice: ArrayView2<'_, Self>) -> (f64, f64, f64) {
                let (h, w) = slice.dim();
                // Column sums fit u32 lanes (vectorised adds) while h * max <= u32::MAX; otherwise u64.
                if (h as u64) * (<$t>::MAX as u64) <= u32::MAX as u64 {
                    moments_int::<$t, u32>(slice, w)
                } else {
                    moments_int::<$t, u64>(slice, w)
                }
            }
        }
    };
}

/// `(sum i*v, sum j*v, sum v)` of an integer slice, exactly: column sums in `A`, row sums in u64. Compiled
/// also for AVX2 and chosen at run time (twice the lanes of the baseline's SSE2).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn moments_int<T, A>(slice: ArrayView2<'_, T>, w: usize) -> (f64, f64, f64)
where
    T: Copy + Into<u32>,
    A: Copy + Default + std::ops::AddAssign + From<u32> + Into<u64>,
{
    let mut colsum = vec![A::default(); w];
    let (mut total, mut total_x) = (0u64, 0u64);
    for (i, row) in slice.outer_iter().enumerate() {
        let row_sum = match row.as_slice() {
            Some(r) => {
                for (c, &v) in colsum.iter_mut().zip(r) {
                    *c += A::from(v.into());
                }
                // 65536 values of at most 65535 fit a u32.
                r.chunks(65536)
                    .map(|b| u64::from(b.iter().map(|&v| v.into()).sum::<u32>()))
                    .sum::<u64>()
            }
            None => {
                for (c, &v) in colsum.iter_mut().zip(row.iter()) {
                    *c += A::from(v.into());
                }
                row.iter().map(|&v| u64::from(v.into())).sum::<u64>()
            }
        };
        total += row_sum;
        total_x += i as u64 * row_sum;
    }
    let total_y: u64 = colsum
        .iter()
        .enumerate()
        .map(|(j, &c)| j as u64 * c.into())
        .sum();
    (total_x as f64, total_y as f64, total as f64)
}
int_pixel!(u8);
int_pixel!(u16);

macro_rules! float_pixel {
    ($t:ty) => {
        impl Pixel for $t {
            fn moments(slice: ArrayView2<'_, Self>) -> (f64, f64, f64) {
                let w = slice.ncols();
                let mut colsum = vec![0f64; w];
                let (mut total, mut total_x) = (0f64, 0f64);
                for (i, row) in slice.outer_iter().enumerate() {
                    let mut row_sum = 0f64;
                    for (c, &v) in colsum.iter_mut().zip(row.iter()) {
                        *c += v as f64;
                        row_sum += v as f64;
                    }
                    total += row_sum;
                    total_x += i as f64 * row_sum;
                }
                let total_y: f64 = colsum.iter().enumerate().map(|(j, &c)| j as f64 * c).sum();
                (total_x, total_y, total)
            }
        }
    };
}
float_pixel!(f32);
float_pixel!(f64);

/// Intensity centroid `(x, y)` of a 2-D slice: `x = sum(i*v)/sum(v)` over rows `i`, `y = sum(j*v)/sum(v)` over
/// columns `j`.
///
/// As in the post, the division happens only when `sum(v) > 0`; otherwise the raw weighted sums are returned,
/// which is `(0, 0)` for an all-zero slice. Integer slices are summed exactly in `u64`, then divided once.
pub fn centroid<T: Pixel>(slice: ArrayView2<'_, T>) -> (f64, f64) {
    let (tx, ty, total) = T::moments(slice);
    if total > 0.0 {
        (tx / total, ty / total)
    } else {
        (tx, ty)
    }
}

// The default window is part of the spec (validation infers shapes with it); re-exported at its old path.
pub use arrayjob_spec::spec::post_window;

/// Start of the crop along one axis of length `n`, for centroid coordinate `c` and window length `w <= n`:
/// truncate `c` to an integer, clamp it to `[w/2, n - (w - w/2)]`, subtract `w/2`.
fn crop_start(c: f64, n: usize, w: usize) -> usize {
    let lo = w / 2;
    let hi = n - (w - lo);
    // `as` truncates toward zero like Python's int() and saturates (NaN -> 0).
    let x = c as i64;
    let x = x.clamp(lo as i64, hi as i64) as usize;
    x - lo
}

fn recenter_typed<T: Pixel + Default>(
    a: ArrayView3<'_, T>,
    window: [usize; 2],
) -> (Array3<T>, Vec<(f64, f64)>) {
    let (n, h, w) = a.dim();
    let [wh, ww] = window;
    let mut out = Array3::<T>::default((n, wh, ww));
    let mut cents = Vec::with_capacity(n);
    for (slice, mut dst) in a.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        let (cx, cy) = centroid(slice);
        let r0 = crop_start(cx, h, wh);
        let c0 = crop_start(cy, w, ww);
        dst.assign(&slice.slice(s![r0..r0 + wh, c0..c0 + ww]));
        cents.push((cx, cy));
    }
    (out, cents)
}

/// Recenters every slice of an `(n, H, W)` chunk: crops a `window = [rows, cols]` region around each slice's
/// centroid (clamped so that the window stays inside the slice). Returns the `(n, rows, cols)` chunk, of the
/// input's type, and the centroid `(x, y)` of each slice.
///
/// # Errors
/// [`KernelError::InvalidArgument`] naming `chunk` when it is not 3-D, or `window` when a window length is 0 or
/// larger than the slice.
pub fn recenter_chunk(
    chunk: &Chunk,
    window: [usize; 2],
) -> Result<(Chunk, Vec<(f64, f64)>), KernelError> {
    let shape = chunk.shape();
    if shape.len() != 3 {
        return Err(KernelError::arg(
            "chunk",
            format!("expected a 3-d (n, H, W) chunk, got shape {shape:?}"),
        ));
    }
    let (h, w) = (shape[1], shape[2]);
    if window[0] == 0 || window[1] == 0 || window[0] > h || window[1] > w {
        return Err(KernelError::arg(
            "window",
            format!("window {window:?} must be non-empty and fit in the {h}x{w} slice"),
        ));
    }
    macro_rules! go {
        ($a:expr, $v:ident) => {{
            let v3 = $a
                .view()
                .into_dimensionality::<ndarray::Ix3>()
                .map_err(|e| KernelError::arg("chunk", e.to_string()))?;
            let (out, c) = recenter_typed(v3, window);
            (Chunk::$v(out.into_dyn()), c)
        }};
    }
    Ok(match chunk {
        Chunk::U8(a) => go!(a, U8),
        Chunk::U16(a) => go!(a, U16),
        Chunk::F32(a) => go!(a, F32),
        Chunk::F64(a) => go!(a, F64),
    })
}
