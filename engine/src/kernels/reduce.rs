//! Tree-reduction building blocks: [`partial`] reduces some axes of one chunk, [`combine`] merges two partials
//! that cover different parts of the reduced axes, [`finish`] turns the final partial into a chunk.
//!
//! All accumulation is in float64 (integer inputs are summed exactly in integers first where that is cheaper).
//! Standard deviation keeps a mean and a sum of squared deviations (`M2`) per output element and merges them
//! with Chan et al.'s parallel formula, so any tree of combines gives the same result as one pass (to rounding).

use ndarray::{ArrayD, IxDyn};

use super::KernelError;
use crate::array::{Chunk, DType};
use crate::spec::ReduceKind;

/// Length of the blocks of the contiguous inner run processed at once when the inner run is kept (keeps the
/// accumulators in L1 cache while the reduced outer axes are swept).
const BLOCK: usize = 2048;

/// Magic prefix of [`Partial::to_bytes`] output (format version 1).
const MAGIC: &[u8; 4] = b"AJP1";

/// The state of a reduction over part of the reduced axes, one entry per output element.
///
/// Every output element of a partial has reduced the same number of input elements (`count`).
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    kind: ReduceKind,
    shape: Vec<usize>,
    count: u64,
    /// Sum (sum, mean), running minimum (min), running maximum (max) or mean (std).
    acc: Vec<f64>,
    /// Sum of squared deviations from the mean (std only; empty otherwise).
    m2: Vec<f64>,
}

impl Partial {
    /// The reduction this partial belongs to.
    pub fn kind(&self) -> ReduceKind {
        self.kind
    }

    /// Shape of the output (the input's shape without the reduced axes).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of input elements reduced into each output element so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes of state held (the size of [`Partial::to_bytes`] output, give or take its small header).
    pub fn nbytes(&self) -> usize {
        (self.acc.len() + self.m2.len()) * 8 + self.shape.len() * 8 + 24
    }

    /// Serialises the partial (little-endian; decode with [`Partial::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.nbytes());
        out.extend_from_slice(MAGIC);
        out.push(kind_code(self.kind));
        out.extend_from_slice(&(self.shape.len() as u32).to_le_bytes());
        for &s in &self.shape {
            out.extend_from_slice(&(s as u64).to_le_bytes());
        }
        out.extend_from_slice(&self.count.to_le_bytes());
        for v in self.acc.iter().chain(&self.m2) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes the output of [`Partial::to_bytes`].
    ///
    /// # Errors
    /// [`KernelError::Decode`] when the bytes are truncated, too long or not a partial.
    pub fn from_bytes(bytes: &[u8]) -> Result<Partial, KernelError> {
        let err = |reason: String| KernelError::Decode {
            what: "reduction partial",
            reason,
        };
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4).map_err(&err)? != MAGIC {
            return Err(err(
                "bad magic (not a partial, or another format version)".into()
            ));
        }
        let kind = kind_from_code(r.take(1).map_err(&err)?[0])
            .ok_or_else(|| err("unknown reduction kind".into()))?;
        let ndim = r.u32().map_err(&err)? as usize;
        if ndim > 64 {
            return Err(err(format!("implausible number of dimensions {ndim}")));
        }
        let mut shape = Vec::with_capacity(ndim);
        for _ in 0..ndim {
            shape.push(usize::try_from(r.u64().map_err(&err)?).map_err(|e| err(e.to_string()))?);
        }
        let count = r.u64().map_err(&err)?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .ok_or_else(|| err("shape overflows".into()))?;
        let arrays = if kind == ReduceKind::Std { 2 } else { 1 };
        let expected = n
            .checked_mul(8 * arrays)
            .ok_or_else(|| err("shape overflows".into()))?;
        if r.bytes.len() - r.pos != expected {
            return Err(err(format!(
                "expected {expected} bytes of values, found {}",
                r.bytes.len() - r.pos
            )));
        }
        let mut vals = r.bytes[r.pos..]
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
        let acc: Vec<f64> = vals.by_ref().take(n).collect();
        let m2: Vec<f64> = vals.collect();
        Ok(Partial {
            kind,
            shape,
            count,
            acc,
            m2,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("truncated")?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }
}

fn kind_code(k: ReduceKind) -> u8 {
    match k {
        ReduceKind::Mean => 0,
        ReduceKind::Sum => 1,
        ReduceKind::Min => 2,
        ReduceKind::Max => 3,
        ReduceKind::Std => 4,
    }
}

fn kind_from_code(c: u8) -> Option<ReduceKind> {
    Some(match c {
        0 => ReduceKind::Mean,
        1 => ReduceKind::Sum,
        2 => ReduceKind::Min,
        3 => ReduceKind::Max,
        4 => ReduceKind::Std,
        _ => return None,
    })
}

/// An element type the kernels read.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// Whether the type is an integer (has no NaN).
    const INTEGER: bool;
    /// Largest value as u32 (integers only; 1 for floats).
    const MAX_U32: u32;
    /// The value as u32 (integers only; 0 for floats).
    fn u32(self) -> u32;
    /// The value as f64 (exact for every supported type).
    fn f(self) -> f64;
    /// Sum of a contiguous run, exact for integers up to 2^53.
    fn run_sum(s: &[Self]) -> f64;
}

macro_rules! int_elem {
    ($t:ty) => {
        impl Elem for $t {
            const INTEGER: bool = true;
            const MAX_U32: u32 = <$t>::MAX as u32;
            #[inline(always)]
            fn u32(self) -> u32 {
                self as u32
            }
            #[inline(always)]
            fn f(self) -> f64 {
                self as f64
            }
            fn run_sum(s: &[Self]) -> f64 {
                // 65536 values of at most 65535 fit a u32.
                let mut total = 0u64;
                for block in s.chunks(65536) {
                    total += block.iter().map(|&v| v as u32).sum::<u32>() as u64;
                }
                total as f64
            }
        }
    };
}
int_elem!(u8);
int_elem!(u16);

macro_rules! float_elem {
    ($t:ty) => {
        impl Elem for $t {
            const INTEGER: bool = false;
            const MAX_U32: u32 = 1;
            #[inline(always)]
            fn u32(self) -> u32 {
                0
            }
            #[inline(always)]
            fn f(self) -> f64 {
                self as f64
            }
            fn run_sum(s: &[Self]) -> f64 {
                let mut acc = [0f64; 4];
                let mut it = s.chunks_exact(4);
                for c in it.by_ref() {
                    acc[0] += c[0] as f64;
                    acc[1] += c[1] as f64;
                    acc[2] += c[2] as f64;
                    acc[3] += c[3] as f64;
                }
                let rest: f64 = it.remainder().iter().map(|&v| v as f64).sum();
                (acc[0] + acc[1]) + (acc[2] + acc[3]) + rest
            }
        }
    };
}
float_elem!(f32);
float_elem!(f64);

/// NaN-propagating minimum (like NumPy's `min`).
#[inline(always)]
fn nan_min(a: f64, b: f64) -> f64 {
    if a < b || a.is_nan() { a } else { b }
}

/// NaN-propagating maximum (like NumPy's `max`).
#[inline(always)]
fn nan_max(a: f64, b: f64) -> f64 {
    if a > b || a.is_nan() { a } else { b }
}

/// How the elements of a row-major array map to the elements of its reduction: the array is seen as outer axes
/// (swept with an odometer) times one contiguous inner run, which is either entirely kept or entirely reduced.
struct Layout {
    /// Extents of the outer axes (after merging neighbours of equal kind).
    outer: Vec<usize>,
    /// Output stride of each outer axis (0 for a reduced axis).
    outer_out_stride: Vec<usize>,
    /// Input stride of each outer axis.
    outer_in_stride: Vec<usize>,
    /// Length of the contiguous inner run.
    inner: usize,
    /// Whether the inner run is kept (true) or reduced (false).
    inner_kept: bool,
    /// Number of output elements.
    out_len: usize,
    /// Input elements reduced into each output element.
    count: u64,
}

impl Layout {
    fn new(shape: &[usize], reduced: &[bool]) -> Layout {
        // Merge neighbouring axes of the same kind; drop length-1 axes (they change nothing).
        let mut merged: Vec<(usize, bool)> = Vec::new();
        for (&n, &r) in shape.iter().zip(reduced) {
            if n == 1 {
                continue;
            }
            match merged.last_mut() {
                Some((m, mr)) if *mr == r => *m *= n,
                _ => merged.push((n, r)),
            }
        }
        let out_len: usize = shape
            .iter()
            .zip(reduced)
            .filter(|(_, r)| !**r)
            .map(|(n, _)| n)
            .product();
        let count: usize = shape
            .iter()
            .zip(reduced)
            .filter(|(_, r)| **r)
            .map(|(n, _)| n)
            .product();
        let (inner, inner_kept) = match merged.pop() {
            Some((n, r)) => (n, !r),
            None => (1, true),
        };
        let k = merged.len();
        let mut outer_in_stride = vec![0; k];
        let mut outer_out_stride = vec![0; k];
        let mut in_s = inner;
        let mut out_s = if inner_kept { inner } else { 1 };
        for i in (0..k).rev() {
            let (n, r) = merged[i];
            outer_in_stride[i] = in_s;
            in_s *= n;
            if !r {
                outer_out_stride[i] = out_s;
                out_s *= n;
            }
        }
        Layout {
            outer: merged.iter().map(|m| m.0).collect(),
            outer_out_stride,
            outer_in_stride,
            inner,
            inner_kept,
            out_len,
            count: count as u64,
        }
    }

    /// Calls `f(out_offset, in_offset)` for each inner run, in input memory order.
    #[inline]
    fn for_each_run(&self, mut f: impl FnMut(usize, usize)) {
        let k = self.outer.len();
        if self.outer.contains(&0) || self.inner == 0 {
            return;
        }
        let mut idx = vec![0usize; k];
        let (mut o, mut i) = (0usize, 0usize);
        loop {
            f(o, i);
            let mut ax = k;
            loop {
                if ax == 0 {
                    return;
                }
                ax -= 1;
                idx[ax] += 1;
                o += self.outer_out_stride[ax];
                i += self.outer_in_stride[ax];
                if idx[ax] < self.outer[ax] {
                    break;
                }
                o -= self.outer_out_stride[ax] * idx[ax];
                i -= self.outer_in_stride[ax] * idx[ax];
                idx[ax] = 0;
            }
        }
    }
}

/// Reduces `axes` of `chunk` into a [`Partial`] whose shape is the chunk's shape without those axes.
///
/// `axes` may be empty (every output element then reduces exactly one input element) or list every axis (the
/// partial is 0-dimensional).
///
/// # Errors
/// [`KernelError::InvalidArgument`] naming `axes` when an axis is out of range or listed twice.
pub fn partial(chunk: &Chunk, axes: &[usize], kind: ReduceKind) -> Result<Partial, KernelError> {
    let ndim = chunk.shape().len();
    let mut reduced = vec![false; ndim];
    for &a in axes {
        if a >= ndim {
            return Err(KernelError::arg(
                "axes",
                format!("axis {a} is out of range for a {ndim}-d chunk"),
            ));
        }
        if reduced[a] {
            return Err(KernelError::arg(
                "axes",
                format!("axis {a} is listed twice"),
            ));
        }
        reduced[a] = true;
    }
    Ok(crate::with_chunk!(chunk, a => partial_typed(a, &reduced, kind)))
}

fn partial_typed<T: Elem>(a: &ArrayD<T>, reduced: &[bool], kind: ReduceKind) -> Partial {
    let std_a = a.as_standard_layout();
    let data: &[T] = std_a.as_slice().unwrap_or(&[]);
    let layout = Layout::new(a.shape(), reduced);
    let shape: Vec<usize> = a
        .shape()
        .iter()
        .zip(reduced)
        .filter(|(_, r)| !**r)
        .map(|(n, _)| *n)
        .collect();
    let n = layout.out_len;
    let (acc, m2) = match kind {
        ReduceKind::Sum | ReduceKind::Mean => (sum_pass(data, &layout), Vec::new()),
        // Integers have no NaN: the plain min/max vectorise better.
        ReduceKind::Min if T::INTEGER => (
            minmax_pass(data, &layout, f64::INFINITY, f64::min),
            Vec::new(),
        ),
        ReduceKind::Max if T::INTEGER => (
            minmax_pass(data, &layout, f64::NEG_INFINITY, f64::max),
            Vec::new(),
        ),
        ReduceKind::Min => (
            minmax_pass(data, &layout, f64::INFINITY, nan_min),
            Vec::new(),
        ),
        ReduceKind::Max => (
            minmax_pass(data, &layout, f64::NEG_INFINITY, nan_max),
            Vec::new(),
        ),
        ReduceKind::Std if T::INTEGER && layout.count > 0 && layout.count < 1 << 24 => {
            int_moments_pass(data, &layout)
        }
        ReduceKind::Std => {
            let mut mean = sum_pass(data, &layout);
            if layout.count > 0 {
                let c = layout.count as f64;
                mean.iter_mut().for_each(|m| *m /= c);
            }
            let m2 = m2_pass(data, &layout, &mean);
            (mean, m2)
        }
    };
    debug_assert_eq!(acc.len(), n);
    Partial {
        kind,
        shape,
        count: layout.count,
        acc,
        m2,
    }
}

/// Sums of every output element (the sum pass of sum, mean and std). Compiled also for AVX2 and chosen at run
/// time (twice the lanes of the baseline's SSE2 for the widening adds).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn sum_pass<T: Elem>(data: &[T], l: &Layout) -> Vec<f64> {
    let len = l.inner;
    if l.inner_kept && T::INTEGER && l.count <= u64::from(u32::from(u16::MAX) / T::MAX_U32) {
        // Few rows of u8 (a chunk of up to 257 slices): exact u16 accumulators, twice the lanes of u32. No
        // overflow: at most `count` values of at most `MAX_U32` each, checked above.
        let acc = accumulate(data, l, |a: u16, v| a.wrapping_add(v.u32() as u16));
        acc.into_iter().map(f64::from).collect()
    } else if l.inner_kept && T::INTEGER && l.count <= u64::from(u32::MAX / T::MAX_U32) {
        // Exact u32 accumulators (the sums cannot overflow), converted once at the end: half the memory
        // traffic of f64 accumulators and cheaper adds.
        let acc = accumulate(data, l, |a: u32, v| a + v.u32());
        acc.into_iter().map(f64::from).collect()
    } else if l.inner_kept {
        accumulate(data, l, |a: f64, v| a + v.f())
    } else {
        let mut out = vec![0f64; l.out_len];
        l.for_each_run(|o, i| out[o] += T::run_sum(&data[i..i + len]));
        out
    }
}

/// One accumulator per output element, each input run (the inner run is kept) added in with `add`, `BLOCK`
/// elements of the run at a time so that the accumulators stay in L1 cache while the outer axes are swept.
#[inline(always)]
fn accumulate<T: Elem, A: Copy + Default>(
    data: &[T],
    l: &Layout,
    add: impl Fn(A, T) -> A,
) -> Vec<A> {
    let mut acc = vec![A::default(); l.out_len];
    let len = l.inner;
    for b0 in (0..len).step_by(BLOCK) {
        let b1 = (b0 + BLOCK).min(len);
        l.for_each_run(|o, i| {
            for (d, s) in acc[o + b0..o + b1].iter_mut().zip(&data[i + b0..i + b1]) {
                *d = add(*d, *s);
            }
        });
    }
    acc
}

/// Mean and `M2` of integer data in one pass, from exact integer sums and sums of squares:
/// `M2 = (n * sum(x^2) - sum(x)^2) / n`, the numerator exact in 128-bit integers (one rounding to f64).
/// Needs `count < 2^24` so that the u64 sums of squares of u16 values cannot overflow. (u32 accumulators,
/// for u8 over outer axes, are used only where they cannot overflow either.)
fn int_moments_pass<T: Elem>(data: &[T], l: &Layout) -> (Vec<f64>, Vec<f64>) {
    // u8 squares are at most 65025: u32 accumulators hold up to 66051 of them.
    if l.inner_kept && T::MAX_U32 <= 255 && l.count <= 66051 {
        int_moments_acc::<T, u32>(data, l)
    } else {
        int_moments_acc::<T, u64>(data, l)
    }
}

fn int_moments_acc<T: Elem, A>(data: &[T], l: &Layout) -> (Vec<f64>, Vec<f64>)
where
    A: Copy + Default + std::ops::AddAssign + std::ops::Mul<Output = A> + From<u32> + Into<u128>,
{
    let mut sum = vec![A::default(); l.out_len];
    let mut sumsq = vec![A::default(); l.out_len];
    let len = l.inner;
    if l.inner_kept {
        for b0 in (0..len).step_by(BLOCK) {
            let b1 = (b0 + BLOCK).min(len);
            l.for_each_run(|o, i| {
                let src = &data[i + b0..i + b1];
                let s = &mut sum[o + b0..o + b1];
                let q = &mut sumsq[o + b0..o + b1];
                for ((s, q), v) in s.iter_mut().zip(q.iter_mut()).zip(src) {
                    let v = A::from(v.u32());
                    *s += v;
                    *q += v * v;
                }
            });
        }
    } else {
        l.for_each_run(|o, i| {
            let (mut rs, mut rq) = (A::default(), A::default());
            for v in &data[i..i + len] {
                let v = A::from(v.u32());
                rs += v;
                rq += v * v;
            }
            sum[o] += rs;
            sumsq[o] += rq;
        });
    }
    let n = l.count;
    let nf = n as f64;
    let mean = sum.iter().map(|&s| s.into() as f64 / nf).collect();
    let m2 = sum
        .iter()
        .zip(&sumsq)
        .map(|(&s, &q)| {
            let (s, q): (u128, u128) = (s.into(), q.into());
            (u128::from(n) * q - s * s) as f64 / nf
        })
        .collect();
    (mean, m2)
}

fn minmax_pass<T: Elem, F: Fn(f64, f64) -> f64>(
    data: &[T],
    l: &Layout,
    init: f64,
    op: F,
) -> Vec<f64> {
    let mut out = vec![init; l.out_len];
    let len = l.inner;
    if l.inner_kept {
        for b0 in (0..len).step_by(BLOCK) {
            let b1 = (b0 + BLOCK).min(len);
            l.for_each_run(|o, i| {
                let dst = &mut out[o + b0..o + b1];
                let src = &data[i + b0..i + b1];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = op(*d, s.f());
                }
            });
        }
    } else {
        l.for_each_run(|o, i| {
            out[o] = data[i..i + len].iter().fold(out[o], |m, v| op(m, v.f()));
        });
    }
    out
}

fn m2_pass<T: Elem>(data: &[T], l: &Layout, mean: &[f64]) -> Vec<f64> {
    let mut out = vec![0f64; l.out_len];
    let len = l.inner;
    if l.inner_kept {
        for b0 in (0..len).step_by(BLOCK) {
            let b1 = (b0 + BLOCK).min(len);
            l.for_each_run(|o, i| {
                let m = &mean[o + b0..o + b1];
                let dst = &mut out[o + b0..o + b1];
                let src = &data[i + b0..i + b1];
                for ((d, s), m) in dst.iter_mut().zip(src).zip(m) {
                    let dev = s.f() - m;
                    *d += dev * dev;
                }
            });
        }
    } else {
        l.for_each_run(|o, i| {
            let m = mean[o];
            out[o] += data[i..i + len]
                .iter()
                .map(|v| {
                    let dev = v.f() - m;
                    dev * dev
                })
                .sum::<f64>();
        });
    }
    out
}

/// Merges two partials of the same reduction that cover different parts of the reduced axes.
///
/// # Errors
/// [`KernelError::InvalidArgument`] naming `b` when the partials differ in kind or shape.
pub fn combine(mut a: Partial, b: &Partial) -> Result<Partial, KernelError> {
    if a.kind != b.kind {
        return Err(KernelError::arg(
            "b",
            format!(
                "cannot combine a {:?} partial with a {:?} one",
                a.kind, b.kind
            ),
        ));
    }
    if a.shape != b.shape {
        return Err(KernelError::arg(
            "b",
            format!("shape {:?} differs from {:?}", b.shape, a.shape),
        ));
    }
    match a.kind {
        ReduceKind::Sum | ReduceKind::Mean => {
            a.acc.iter_mut().zip(&b.acc).for_each(|(x, y)| *x += y)
        }
        ReduceKind::Min => a
            .acc
            .iter_mut()
            .zip(&b.acc)
            .for_each(|(x, y)| *x = nan_min(*x, *y)),
        ReduceKind::Max => a
            .acc
            .iter_mut()
            .zip(&b.acc)
            .for_each(|(x, y)| *x = nan_max(*x, *y)),
        ReduceKind::Std => {
            if b.count == 0 {
                return Ok(a);
            }
            if a.count == 0 {
                return Ok(b.clone());
            }
            let (na, nb) = (a.count as f64, b.count as f64);
            let n = na + nb;
            let (wb, w2) = (nb / n, na * nb / n);
            for (((ma, m2a), mb), m2b) in
                a.acc.iter_mut().zip(a.m2.iter_mut()).zip(&b.acc).zip(&b.m2)
            {
                let delta = mb - *ma;
                *ma += delta * wb;
                *m2a += m2b + delta * delta * w2;
            }
        }
    }
    a.count += b.count;
    Ok(a)
}

/// Turns a final partial into the result chunk: float64 for mean, sum and std (population std, NumPy's
/// `ddof=0`); the input's type for min and max. A partial over all axes gives a 0-dimensional chunk.
///
/// A mean or std of zero elements is NaN; a min or max of zero elements is the type's +/- infinity (saturated
/// to the integer range for integer types).
pub fn finish(p: Partial, input_dtype: DType) -> Chunk {
    let shape = IxDyn(&p.shape);
    let f64_chunk =
        |v: Vec<f64>| Chunk::F64(ArrayD::from_shape_vec(shape.clone(), v).unwrap_or_default());
    match p.kind {
        ReduceKind::Sum => f64_chunk(p.acc),
        ReduceKind::Mean => {
            let c = p.count as f64;
            f64_chunk(p.acc.into_iter().map(|s| s / c).collect())
        }
        ReduceKind::Std => {
            let c = p.count as f64;
            f64_chunk(p.m2.into_iter().map(|m| (m / c).sqrt()).collect())
        }
        ReduceKind::Min | ReduceKind::Max => {
            let v = p.acc;
            let shape = shape.clone();
            match input_dtype {
                DType::Uint8 => Chunk::U8(
                    ArrayD::from_shape_vec(shape, v.into_iter().map(|x| x as u8).collect())
                        .unwrap_or_default(),
                ),
                DType::Uint16 => Chunk::U16(
                    ArrayD::from_shape_vec(shape, v.into_iter().map(|x| x as u16).collect())
                        .unwrap_or_default(),
                ),
                DType::Float32 => Chunk::F32(
                    ArrayD::from_shape_vec(shape, v.into_iter().map(|x| x as f32).collect())
                        .unwrap_or_default(),
                ),
                DType::Float64 => f64_chunk(v),
            }
        }
    }
}
