//! Real spectra along one axis: `|FFT(x)|^2` (power) or `|FFT(x)|` (amplitude) of a real chunk, computed in
//! float64 with a real-to-complex FFT.

use std::cell::RefCell;

use ndarray::{ArrayD, IxDyn};
use realfft::RealFftPlanner;
use realfft::num_complex::Complex;

use super::KernelError;
use super::reduce::Elem;
use crate::array::{Chunk, DType};

/// Series gathered and transformed together (bounds the gather buffer to `SERIES_BLOCK * n` values).
const SERIES_BLOCK: usize = 64;

thread_local! {
    /// Per-thread planner; it caches the plans it made, keyed by length.
    static PLANNER: RefCell<RealFftPlanner<f64>> = RefCell::new(RealFftPlanner::new());
}

/// An output element type of [`spectrum`].
trait OutElem: Copy + Default + Send + Sync + 'static {
    fn from_f64(v: f64) -> Self;
}
impl OutElem for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl OutElem for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Spectrum of the real chunk along `axis`: `|X_k|^2` when `power`, else `|X_k|`, where `X = FFT(x)` along the
/// axis (no normalisation, like `numpy.fft.fft`).
///
/// With `onesided` only the `n/2 + 1` non-negative frequencies are kept (like `numpy.fft.rfft`); otherwise all
/// `n` bins in NumPy's order, the negative frequencies filled from the Hermitian symmetry `|X_{n-k}| = |X_k|`.
/// The result has the input's shape except along `axis`, and type `dtype` (float32 or float64).
///
/// # Errors
/// [`KernelError::InvalidArgument`] naming `axis` when it is out of range or the axis is empty, or `dtype`
/// when it is not a float type.
pub fn spectrum(
    chunk: &Chunk,
    axis: usize,
    power: bool,
    onesided: bool,
    dtype: DType,
) -> Result<Chunk, KernelError> {
    let shape = chunk.shape();
    if axis >= shape.len() {
        return Err(KernelError::arg(
            "axis",
            format!("axis {axis} is out of range for a {}-d chunk", shape.len()),
        ));
    }
    if shape[axis] == 0 {
        return Err(KernelError::arg(
            "axis",
            format!("axis {axis} has length 0"),
        ));
    }
    let out = match dtype {
        DType::Float32 => Chunk::F32(
            crate::with_chunk!(chunk, a => spectrum_typed::<_, f32>(a, axis, power, onesided)),
        ),
        DType::Float64 => Chunk::F64(
            crate::with_chunk!(chunk, a => spectrum_typed::<_, f64>(a, axis, power, onesided)),
        ),
        other => {
            return Err(KernelError::arg(
                "dtype",
                format!("spectra are float32 or float64, not {other}"),
            ));
        }
    };
    Ok(out)
}

fn spectrum_typed<T: Elem, O: OutElem>(
    a: &ArrayD<T>,
    axis: usize,
    power: bool,
    onesided: bool,
) -> ArrayD<O> {
    let std_a = a.as_standard_layout();
    let data: &[T] = std_a.as_slice().unwrap_or(&[]);
    let shape = a.shape();
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let half = n / 2 + 1;
    let m = if onesided { half } else { n };
    let mut out_shape = shape.to_vec();
    out_shape[axis] = m;
    let mut out = vec![O::default(); outer * m * inner];
    if outer * inner == 0 {
        return ArrayD::from_shape_vec(IxDyn(&out_shape), out).unwrap_or_default();
    }

    let fft = PLANNER.with(|p| p.borrow_mut().plan_fft_forward(n));
    let mut scratch = fft.make_scratch_vec();
    let mut spec = fft.make_output_vec();
    let block = SERIES_BLOCK.min(inner);
    // Gathered series (`block` of them, each contiguous) and their magnitudes (`block` x `half`).
    let mut series = vec![0f64; block * n];
    let mut mags = vec![0f64; block * half];

    for o in 0..outer {
        let in_base = o * n * inner;
        let out_base = o * m * inner;
        for j0 in (0..inner).step_by(block) {
            let nb = block.min(inner - j0);
            gather(&data[in_base..], inner, j0, nb, n, &mut series);
            for b in 0..nb {
                let input = &mut series[b * n..(b + 1) * n];
                // Lengths match the plan by construction, so this cannot fail.
                if fft
                    .process_with_scratch(input, &mut spec, &mut scratch)
                    .is_err()
                {
                    continue;
                }
                let dst = &mut mags[b * half..(b + 1) * half];
                for (d, c) in dst.iter_mut().zip(&spec) {
                    *d = magnitude(*c, power);
                }
            }
            scatter(&mags, half, n, m, nb, &mut out[out_base..], inner, j0);
        }
    }
    ArrayD::from_shape_vec(IxDyn(&out_shape), out).unwrap_or_default()
}

/// [`spectrum`] along axis 0, cut into the grid of `tile`-shaped pieces: what `spectrum(..)?.split_grid(tile)`
/// gives, in the same (row-major) order. When a tile spans every bin (`tile[0]` at least the output's length
/// along axis 0, as for the inner chunks of a sharded Zarr array of spectra), the spectra are written straight
/// into their tiles, row after row, and the mirrored half of a two-sided spectrum is taken from the spectra
/// themselves: the whole block is never zero-filled, assembled, re-read for the mirror and cut again.
///
/// # Errors
/// As [`spectrum`]; `tile` when it does not have the chunk's dimensions or has a zero length.
pub fn spectrum_tiles(
    chunk: &Chunk,
    power: bool,
    onesided: bool,
    dtype: DType,
    tile: &[usize],
) -> Result<Vec<Chunk>, KernelError> {
    let shape = chunk.shape();
    if tile.len() != shape.len() || tile.contains(&0) {
        return Err(KernelError::arg(
            "tile",
            format!("tile {tile:?} does not fit a chunk of shape {shape:?}"),
        ));
    }
    let n = shape.first().copied().unwrap_or(0);
    let m = if onesided { n / 2 + 1 } else { n };
    if shape.len() < 2 || n == 0 || tile[0] < m {
        return Ok(spectrum(chunk, 0, power, onesided, dtype)?.split_grid(tile));
    }
    macro_rules! typed {
        ($o:ty, $v:ident) => {
            crate::with_chunk!(chunk, a => spectrum_tiles_typed::<_, $o>(a, power, onesided, tile))
                .into_iter()
                .map(Chunk::$v)
                .collect()
        };
    }
    match dtype {
        DType::Float32 => Ok(typed!(f32, F32)),
        DType::Float64 => Ok(typed!(f64, F64)),
        other => Err(KernelError::arg(
            "dtype",
            format!("spectra are float32 or float64, not {other}"),
        )),
    }
}

/// The tiles of [`spectrum_tiles`]' fast path (`tile[0] >= m`). A tile's series are transformed run by run
/// (a run: consecutive series along the last axis), their bins kept in `bins` (bin-major, so that each row of
/// the tile is contiguous there), then the tile is written row by row: bins `0..half`, then the mirror rows.
fn spectrum_tiles_typed<T: Elem, O: OutElem>(
    a: &ArrayD<T>,
    power: bool,
    onesided: bool,
    tile: &[usize],
) -> Vec<ArrayD<O>> {
    let std_a = a.as_standard_layout();
    let data: &[T] = std_a.as_slice().unwrap_or(&[]);
    let shape = a.shape();
    let (n, rest) = (shape[0], &shape[1..]);
    let inner: usize = rest.iter().product();
    let half = n / 2 + 1;
    let m = if onesided { half } else { n };
    let fft = PLANNER.with(|p| p.borrow_mut().plan_fft_forward(n));
    let mut scratch = fft.make_scratch_vec();
    let mut spec = fft.make_output_vec();
    let mut series = vec![0f64; SERIES_BLOCK * n];
    let mut bins: Vec<O> = Vec::new();
    let grid: Vec<usize> = rest
        .iter()
        .zip(&tile[1..])
        .map(|(r, t)| r.div_ceil(*t))
        .collect();
    let mut tiles = Vec::with_capacity(grid.iter().product());
    for t in crate::array::grid_indices(&grid) {
        let lo: Vec<usize> = t.iter().zip(&tile[1..]).map(|(i, c)| i * c).collect();
        let len: Vec<usize> = (0..rest.len())
            .map(|k| tile[k + 1].min(rest[k] - lo[k]))
            .collect();
        let count: usize = len.iter().product();
        let width = len[len.len() - 1];
        // Every element is written below before it is read: no need to clear what the last tile left.
        bins.resize(half * count, O::default());
        for (r, row) in crate::array::grid_indices(&len[..len.len() - 1])
            .into_iter()
            .enumerate()
        {
            // The first series of the run: its index among all `inner` series of the block.
            let j0 = row
                .iter()
                .chain(std::iter::once(&0))
                .zip(&lo)
                .zip(rest)
                .fold(0, |acc, ((i, l), r)| acc * r + i + l);
            for c0 in (0..width).step_by(SERIES_BLOCK) {
                let nb = SERIES_BLOCK.min(width - c0);
                gather(data, inner, j0 + c0, nb, n, &mut series);
                for b in 0..nb {
                    // Lengths match the plan by construction, so this cannot fail.
                    if fft
                        .process_with_scratch(
                            &mut series[b * n..(b + 1) * n],
                            &mut spec,
                            &mut scratch,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let s = r * width + c0 + b;
                    for (k, c) in spec.iter().enumerate() {
                        bins[k * count + s] = O::from_f64(magnitude(*c, power));
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(m * count);
        for k in 0..m {
            let from = if k < half { k } else { n - k };
            out.extend_from_slice(&bins[from * count..(from + 1) * count]);
        }
        let mut tshape = vec![m];
        tshape.extend_from_slice(&len);
        tiles.push(ArrayD::from_shape_vec(IxDyn(&tshape), out).unwrap_or_default());
    }
    tiles
}

/// Side of the square tiles of the transposes: a tile reads `TILE` values from each of `TILE` rows and writes
/// `TILE` consecutive values (one cache line of f64) to each of `TILE` series.
const TILE: usize = 8;

/// Copies series `j0..j0 + nb` of a `(n, inner)` row-major block (`data`: element `k` of series `j` at
/// `k * inner + j`) into `series`, each series contiguous (`series[b * n + k]`), converting to f64. `TILE` rows
/// at a time are converted whole (contiguous, which vectorises) into a small buffer, then each series takes
/// its `TILE` consecutive values from there.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn gather<T: Elem>(data: &[T], inner: usize, j0: usize, nb: usize, n: usize, series: &mut [f64]) {
    let mut rows = [[0f64; SERIES_BLOCK]; TILE];
    for k0 in (0..n).step_by(TILE) {
        let kt = TILE.min(n - k0);
        for (kk, r) in rows.iter_mut().enumerate().take(kt) {
            let src = &data[(k0 + kk) * inner + j0..][..nb];
            for (d, v) in r.iter_mut().zip(src) {
                *d = v.f();
            }
        }
        for b in 0..nb {
            let dst = &mut series[b * n + k0..b * n + k0 + kt];
            for (d, r) in dst.iter_mut().zip(&rows) {
                *d = r[b];
            }
        }
    }
}

/// Writes bins `0..m` of `nb` spectra (`mags[b * half + k]`: bin `k` of spectrum `b`; the bins above `half`
/// mirrored from the Hermitian symmetry `|X_{n-k}| = |X_k|`) into an `(m, inner)` row-major block at columns
/// `j0..j0 + nb`, in square tiles like [`gather`].
#[allow(clippy::too_many_arguments)]
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn scatter<O: OutElem>(
    mags: &[f64],
    half: usize,
    n: usize,
    m: usize,
    nb: usize,
    out: &mut [O],
    inner: usize,
    j0: usize,
) {
    let nb8 = nb - nb % TILE;
    // Rows `0..half` come straight from the spectra; rows from `half` on are the mirror images of rows
    // `n - k`, already written: copied row by row.
    let direct = m.min(half);
    let k8 = direct - direct % TILE;
    for k0 in (0..k8).step_by(TILE) {
        for b0 in (0..nb8).step_by(TILE) {
            let mut t = [[O::default(); TILE]; TILE];
            for (bb, col) in (0..TILE).zip(0..) {
                let src = &mags[(b0 + bb) * half + k0..][..TILE];
                for (tk, v) in t.iter_mut().zip(src) {
                    tk[col] = O::from_f64(*v);
                }
            }
            for (kk, tk) in t.iter().enumerate() {
                out[(k0 + kk) * inner + j0 + b0..][..TILE].copy_from_slice(tk);
            }
        }
    }
    for k in 0..direct {
        let from = if k < k8 { nb8 } else { 0 };
        for b in from..nb {
            out[k * inner + j0 + b] = O::from_f64(mags[b * half + k]);
        }
    }
    for k in direct..m {
        let (src, dst) = out.split_at_mut(k * inner);
        let from = (n - k) * inner + j0;
        dst[j0..j0 + nb].copy_from_slice(&src[from..from + nb]);
    }
}

#[inline(always)]
fn magnitude(c: Complex<f64>, power: bool) -> f64 {
    let p = c.re * c.re + c.im * c.im;
    if power { p } else { p.sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(shape: &[usize], float: bool) -> Chunk {
        let len: usize = shape.iter().product();
        let v = (0..len).map(|i| ((i * 2_654_435_761) >> 7) % 251);
        if float {
            let v: Vec<f32> = v.map(|x| x as f32 * 0.37 - 20.0).collect();
            Chunk::F32(ArrayD::from_shape_vec(IxDyn(shape), v).expect("test input"))
        } else {
            let v: Vec<u8> = v.map(|x| x as u8).collect();
            Chunk::U8(ArrayD::from_shape_vec(IxDyn(shape), v).expect("test input"))
        }
    }

    #[test]
    fn tiles_are_the_spectrum_cut_into_its_grid_bit_for_bit() {
        // Odd and even lengths, edge tiles on both cut axes, one- and two-sided, power and amplitude, float32
        // and float64, integer and float input; a tile shorter than the spectrum takes the general path.
        let cases: &[(&[usize], &[usize])] = &[
            (&[37, 6, 25], &[37, 4, 10]),
            (&[40, 3, 70], &[40, 3, 70]),
            (&[16, 5, 9], &[20, 2, 4]),
            (&[33, 130], &[33, 64]),
            (&[12, 4, 4], &[5, 2, 2]),
            // Many tiles along the last axis, edge tiles on the leading axes too.
            (&[9, 2, 300], &[9, 2, 7]),
            (&[10, 3, 2, 150], &[10, 2, 2, 3]),
        ];
        for &(shape, tile) in cases {
            for float in [false, true] {
                let input = block(shape, float);
                for (power, onesided) in [(true, false), (false, false), (true, true)] {
                    for dtype in [DType::Float32, DType::Float64] {
                        let want = spectrum(&input, 0, power, onesided, dtype)
                            .expect("test input")
                            .split_grid(tile);
                        let got = spectrum_tiles(&input, power, onesided, dtype, tile)
                            .expect("test input");
                        assert_eq!(
                            got, want,
                            "shape {shape:?} tile {tile:?} float {float} power {power} onesided {onesided} {dtype}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_tile_of_other_dimensions_is_refused_by_name() {
        let e = spectrum_tiles(&block(&[8, 4], false), true, false, DType::Float32, &[8])
            .expect_err("refused")
            .to_string();
        assert!(e.contains("tile") && e.contains("[8, 4]"), "{e}");
    }
}
