//! Each stage's op checked against its input's shape, and the shape it gives (rank, the lengths the spec
//! fixes, split axes, element type).

use std::collections::HashSet;

use crate::dtype::DType;
use crate::spec::{AxisSelection, ReduceKind, StageOp, StageSpec, post_window};

use super::problem::{Problem, ShapeInfo};

pub(super) fn stage_shape(
    st: &StageSpec,
    at: &str,
    input: &ShapeInfo,
    p: &mut Vec<Problem>,
) -> Option<ShapeInfo> {
    let nd = input.ndim();
    let ops = st.ops();
    let [op] = ops.as_slice() else { return None };
    match op {
        StageOp::Select(s) => select_shape(s, at, input, p),
        StageOp::Reduce(r) => {
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
            Some(ShapeInfo {
                dims: keep.iter().map(|&a| input.dims[a]).collect(),
                whole: keep.iter().map(|&a| input.whole[a]).collect(),
                dtype,
            })
        }
        StageOp::Recenter(r) => {
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
            if !input.whole[1] || !input.whole[2] {
                p.push(Problem {
                    path: format!("{at}.recenter"),
                    message: format!(
                        "input '{}' is split along axes 1/2; recenter needs whole slices (rechunk with -1 there)",
                        st.input
                    ),
                });
                return None;
            }
            let win = match &r.window {
                Some(w) => {
                    if w.len() != 2 || w.contains(&0) {
                        p.push(Problem {
                            path: format!("{at}.recenter.window"),
                            message: format!(
                                "expected [rows, cols] of positive lengths, found {w:?}"
                            ),
                        });
                        return None;
                    }
                    for (k, name) in [(0usize, "rows"), (1, "cols")] {
                        if let Some(d) = input.dims[k + 1]
                            && w[k] > d
                        {
                            p.push(Problem {
                                path: format!("{at}.recenter.window[{k}]"),
                                message: format!(
                                    "{} {name} do not fit in slices of {d} {name}",
                                    w[k]
                                ),
                            });
                        }
                    }
                    [Some(w[0]), Some(w[1])]
                }
                // The post's window: half the slice, rounded down to an even length.
                None => [
                    input.dims[1].map(|h| post_window(h, 4)[0]),
                    input.dims[2].map(|w| post_window(4, w)[1]),
                ],
            };
            Some(ShapeInfo {
                dims: vec![input.dims[0], win[0], win[1]],
                whole: vec![input.whole[0], true, true],
                dtype: input.dtype,
            })
        }
        StageOp::Rechunk(r) => {
            if r.chunks.len() != nd {
                p.push(Problem {
                    path: format!("{at}.rechunk.chunks"),
                    message: format!(
                        "{} entries, but input '{}' is {nd}-D",
                        r.chunks.len(),
                        st.input
                    ),
                });
                return None;
            }
            let mut whole = Vec::with_capacity(nd);
            for (k, &c) in r.chunks.iter().enumerate() {
                if c == -1 {
                    whole.push(true);
                } else if c <= 0 {
                    p.push(Problem {
                        path: format!("{at}.rechunk.chunks[{k}]"),
                        message: format!(
                            "expected a positive length or -1 (whole axis), found {c}"
                        ),
                    });
                    return None;
                } else {
                    whole.push(input.dims[k].is_some_and(|d| c as usize >= d));
                }
            }
            Some(ShapeInfo {
                dims: input.dims.clone(),
                whole,
                dtype: input.dtype,
            })
        }
        StageOp::Fft(f) => {
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
            if !input.whole[f.axis] {
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
            Some(ShapeInfo {
                dims,
                whole: input.whole.clone(),
                dtype: Some(dtype),
            })
        }
    }
}

/// The shape of a select of `input`: selected axes take the number of indices picked (unknown while a range
/// depends on an unknown length); axes picked with `index` are dropped.
fn select_shape(
    sel: &[AxisSelection],
    at: &str,
    input: &ShapeInfo,
    p: &mut Vec<Problem>,
) -> Option<ShapeInfo> {
    if let Err(problems) = crate::select::resolve(sel, &input.dims, at) {
        p.extend(
            problems
                .into_iter()
                .map(|(path, message)| Problem { path, message }),
        );
        return None;
    }
    let mut dims = input.dims.clone();
    let mut whole = input.whole.clone();
    let mut keep = vec![true; dims.len()];
    for s in sel {
        let len = crate::select::resolve_axis(s, input.dims[s.axis], "")
            .ok()
            .flatten();
        dims[s.axis] = len.as_ref().map(Vec::len);
        // One index lies in one chunk; otherwise the input's chunking (clipped) carries over.
        whole[s.axis] = input.whole[s.axis] || dims[s.axis] == Some(1);
        keep[s.axis] = s.index.is_none();
    }
    Some(ShapeInfo {
        dims: kept(dims, &keep),
        whole: kept(whole, &keep),
        dtype: input.dtype,
    })
}

/// The entries of `v` whose `keep` flag is set.
fn kept<T>(v: Vec<T>, keep: &[bool]) -> Vec<T> {
    v.into_iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(x, _)| x)
        .collect()
}
