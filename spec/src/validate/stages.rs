//! Each stage's op checked against its input's shape, and the shape it gives (rank, lengths, chunking,
//! element type). This is the one place a stage's op is interpreted: validation runs it with the lengths the
//! spec fixes, [`super::ValidatedSpec::bind`] again with the data's, and the planner takes the result.

use std::collections::HashSet;

use crate::dtype::DType;
use crate::select;
use crate::spec::{AxisSelection, FftOp, ReduceKind, ReduceOp, StageOp, StageSpec, post_window};

use super::problem::{AxisChunks, Problem, ShapeInfo};

/// A stage's op with what the spec leaves open decided: the indices a select picks and the window a recenter
/// crops (`None` while they depend on lengths not known yet).
#[derive(Debug, Clone, PartialEq)]
pub enum ResolvedOp {
    /// Picked indices of every input axis.
    Select(Option<select::Resolved>),
    /// A reduction.
    Reduce(ReduceOp),
    /// The `[rows, cols]` window cropped around each slice's centroid.
    Recenter([Option<usize>; 2]),
    /// A change of chunk grid (the new chunking is the result's).
    Rechunk,
    /// An FFT spectrum along one axis.
    Fft(FftOp),
}

/// Checks stage `st` (at field path `at`) against its input's shape; the op resolved and the result's shape.
pub(super) fn stage_shape(
    st: &StageSpec,
    at: &str,
    input: &ShapeInfo,
    p: &mut Vec<Problem>,
) -> Option<(ResolvedOp, ShapeInfo)> {
    let ops = st.ops();
    let [op] = ops.as_slice() else { return None };
    match op {
        StageOp::Select(s) => select_shape(s, at, input, p),
        StageOp::Reduce(r) => reduce_shape(r, st, at, input, p),
        StageOp::Recenter(r) => recenter_shape(r.window.as_deref(), st, at, input, p),
        StageOp::Rechunk(r) => rechunk_shape(&r.chunks, st, at, input, p),
        StageOp::Fft(f) => fft_shape(f, st, at, input, p),
    }
}

fn reduce_shape(
    r: &ReduceOp,
    st: &StageSpec,
    at: &str,
    input: &ShapeInfo,
    p: &mut Vec<Problem>,
) -> Option<(ResolvedOp, ShapeInfo)> {
    let nd = input.ndim();

    let mut bad = false;
    let mut seen = HashSet::new();
    for (k, &a) in r.axes.iter().enumerate() {
        if a >= nd {
            p.push(Problem {
                path: format!("{at}.reduce.axes[{k}]"),
                message: format!("axis {a} out of range: input '{}' is {nd}-D", st.input),
            });
            bad = true;
        } else if !seen.insert(a) {
            p.push(Problem {
                path: format!("{at}.reduce.axes[{k}]"),
                message: format!("axis {a} repeated"),
            });
            bad = true;
        }
    }
    if r.axes.is_empty() {
        p.push(Problem {
            path: format!("{at}.reduce.axes"),
            message: "at least one axis is required".into(),
        });
        bad = true;
    }
    if bad {
        return None;
    }
    let keep: Vec<usize> = (0..nd).filter(|a| !r.axes.contains(a)).collect();
    let dtype = match r.op {
        ReduceKind::Min | ReduceKind::Max => input.dtype,
        _ => Some(DType::Float64),
    };
    let shape = ShapeInfo {
        dims: keep.iter().map(|&a| input.dims[a]).collect(),
        chunks: keep.iter().map(|&a| input.chunks[a]).collect(),
        dtype,
    };
    Some((ResolvedOp::Reduce(r.clone()), shape))
}

fn recenter_shape(
    window: Option<&[usize]>,
    st: &StageSpec,
    at: &str,
    input: &ShapeInfo,
    p: &mut Vec<Problem>,
) -> Option<(ResolvedOp, ShapeInfo)> {
    let nd = input.ndim();
    if nd != 3 {
        p.push(Problem {
            path: format!("{at}.recenter"),
            message: format!(
                "needs a 3-D input (slices along axis 0), but input '{}' is {nd}-D",
                st.input
            ),
        });
        return None;
    }
    if !input.is_whole(1) || !input.is_whole(2) {
        p.push(Problem {
            path: format!("{at}.recenter"),
            message: format!(
                "input '{}' is split along axes 1/2; recenter needs whole slices (rechunk with -1 there)",
                st.input
            ),
        });
        return None;
    }
    let win = match window {
        Some(w) => {
            if w.len() != 2 || w.contains(&0) {
                p.push(Problem {
                    path: format!("{at}.recenter.window"),
                    message: format!("expected [rows, cols] of positive lengths, found {w:?}"),
                });
                return None;
            }
            for (k, name) in [(0usize, "rows"), (1, "cols")] {
                if let Some(d) = input.dims[k + 1]
                    && w[k] > d
                {
                    p.push(Problem {
                        path: format!("{at}.recenter.window[{k}]"),
                        message: format!("{} {name} do not fit in slices of {d} {name}", w[k]),
                    });
                }
            }
            [Some(w[0]), Some(w[1])]
        }
        // The post's window: half the slice, rounded down to an even length.
        None => {
            let win = [
                input.dims[1].map(|h| post_window(h, 4)[0]),
                input.dims[2].map(|w| post_window(4, w)[1]),
            ];
            if win.contains(&Some(0)) {
                p.push(Problem {
                    path: format!("{at}.recenter"),
                    message: format!(
                        "slices of {:?} rows and {:?} cols are too small for the default window (half the slice, \
                         rounded down to an even length): set 'window'",
                        input.dims[1], input.dims[2]
                    ),
                });
                return None;
            }
            win
        }
    };
    let shape = ShapeInfo {
        dims: vec![input.dims[0], win[0], win[1]],
        chunks: vec![input.chunks[0], AxisChunks::Whole, AxisChunks::Whole],
        dtype: input.dtype,
    };
    Some((ResolvedOp::Recenter(win), shape))
}

fn rechunk_shape(
    chunks: &[i64],
    st: &StageSpec,
    at: &str,
    input: &ShapeInfo,
    p: &mut Vec<Problem>,
) -> Option<(ResolvedOp, ShapeInfo)> {
    let nd = input.ndim();
    if chunks.len() != nd {
        p.push(Problem {
            path: format!("{at}.rechunk.chunks"),
            message: format!(
                "{} entries, but input '{}' is {nd}-D",
                chunks.len(),
                st.input
            ),
        });
        return None;
    }
    let mut out = Vec::with_capacity(nd);
    for (k, &c) in chunks.iter().enumerate() {
        if c == -1 {
            out.push(AxisChunks::Whole);
        } else if c <= 0 {
            p.push(Problem {
                path: format!("{at}.rechunk.chunks[{k}]"),
                message: format!("expected a positive length or -1 (whole axis), found {c}"),
            });
            return None;
        } else {
            out.push(AxisChunks::Len(usize::try_from(c).unwrap_or(usize::MAX)));
        }
    }
    let shape = ShapeInfo {
        dims: input.dims.clone(),
        chunks: out,
        dtype: input.dtype,
    };
    Some((ResolvedOp::Rechunk, shape))
}

fn fft_shape(
    f: &FftOp,
    st: &StageSpec,
    at: &str,
    input: &ShapeInfo,
    p: &mut Vec<Problem>,
) -> Option<(ResolvedOp, ShapeInfo)> {
    let nd = input.ndim();
    if f.axis >= nd {
        p.push(Problem {
            path: format!("{at}.fft.axis"),
            message: format!(
                "axis {} out of range: input '{}' is {nd}-D",
                f.axis, st.input
            ),
        });
        return None;
    }
    if !input.is_whole(f.axis) {
        p.push(Problem {
            path: format!("{at}.fft.axis"),
            message: format!(
                "input '{}' is split into several chunks along axis {}; add a rechunk stage with -1 on \
                 that axis first",
                st.input, f.axis
            ),
        });
        return None;
    }
    let dtype = f.dtype.unwrap_or(DType::Float32);
    if !matches!(dtype, DType::Float32 | DType::Float64) {
        p.push(Problem {
            path: format!("{at}.fft.dtype"),
            message: format!("expected float32 or float64, found {dtype}"),
        });
    }
    let mut dims = input.dims.clone();
    if f.onesided {
        dims[f.axis] = dims[f.axis].map(|n| n / 2 + 1);
    }
    let mut chunks = input.chunks.clone();
    chunks[f.axis] = AxisChunks::Whole;
    let shape = ShapeInfo {
        dims,
        chunks,
        dtype: Some(dtype),
    };
    Some((ResolvedOp::Fft(f.clone()), shape))
}

/// The shape of a select of `input`: selected axes take the number of indices picked (unknown while a range
/// depends on an unknown length), with the input's chunking (clipped); axes picked with `index` are dropped.
fn select_shape(
    sel: &[AxisSelection],
    at: &str,
    input: &ShapeInfo,
    p: &mut Vec<Problem>,
) -> Option<(ResolvedOp, ShapeInfo)> {
    let resolved = match select::resolve(sel, &input.dims, at) {
        Ok(r) => r,
        Err(problems) => {
            p.extend(
                problems
                    .into_iter()
                    .map(|(path, message)| Problem { path, message }),
            );
            return None;
        }
    };
    let mut dims = input.dims.clone();
    let mut keep = vec![true; dims.len()];
    for s in sel {
        let len = select::resolve_axis(s, input.dims[s.axis], "")
            .ok()
            .flatten();
        dims[s.axis] = len.as_ref().map(Vec::len);
        keep[s.axis] = s.index.is_none();
    }
    let shape = ShapeInfo {
        dims: kept(dims, &keep),
        chunks: kept(input.chunks.clone(), &keep),
        dtype: input.dtype,
    };
    Some((ResolvedOp::Select(resolved), shape))
}

/// The entries of `v` whose `keep` flag is set.
fn kept<T>(v: Vec<T>, keep: &[bool]) -> Vec<T> {
    v.into_iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(x, _)| x)
        .collect()
}
