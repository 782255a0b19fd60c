//! Reading a manifest and checking a spec before anything runs.
//!
//! Validation reports every problem at once, each with the field path and what was expected. It works on
//! the spec alone: where a slice's size is not known without reading data, the checks that need it are left
//! to the planner, which runs once the first slice has been read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::dtype::DType;
use crate::error::ConfigError;
use crate::limits;
use crate::spec::{
    API_VERSION, ArrayJobManifest, ArrayJobSpec, AxisSelection, CompressionCodec,
    DEFAULT_HTTP_CONCURRENCY, FilesSource, HttpSource, KIND, OutputSpec, ReduceKind, S3Source,
    S3Storage, SOURCE_INPUT, StageOp, StageSpec, SyntheticSource, ZSTD_LEVELS, post_window,
};
use crate::template::IndexTemplate;

// Lived here; re-exported so the old path keeps working.
pub use crate::spec::DEFAULT_SLICES_PER_CHUNK;

/// One problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `spec.stages[3].rechunk.chunks`.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file is not valid YAML, or does not match the ArrayJob schema (unknown or missing field...).
    #[error("{file}: {message}")]
    Parse {
        /// Manifest file name.
        file: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The manifest parsed but has problems (all of them listed).
    #[error("{file}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Manifest file name.
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// Parses a whole `kind: ArrayJob` manifest from YAML text and validates it.
///
/// # Errors
/// [`SpecError::Parse`] for YAML or schema errors (with line/column), [`SpecError::Invalid`] with every
/// problem found by [`validate`].
pub fn parse_manifest(text: &str, file: &str) -> Result<ArrayJobManifest, SpecError> {
    let m: ArrayJobManifest = serde_yaml::from_str(text).map_err(|e| SpecError::Parse {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let mut problems = Vec::new();
    if m.api_version != API_VERSION {
        problems.push(Problem {
            path: "apiVersion".into(),
            message: format!("expected '{API_VERSION}', found '{}'", m.api_version),
        });
    }
    if m.kind != KIND {
        problems.push(Problem {
            path: "kind".into(),
            message: format!("expected '{KIND}', found '{}'", m.kind),
        });
    }
    if !is_dns_label(&m.metadata.name) {
        problems.push(Problem {
            path: "metadata.name".into(),
            message: format!(
                "'{}' is not a valid name (lowercase letters, digits and '-', at most 63 characters)",
                m.metadata.name
            ),
        });
    }
    if let Err(mut more) = validate(&m.spec) {
        problems.append(&mut more);
    }
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(SpecError::Invalid {
            file: file.to_string(),
            problems,
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// What validation knows about an array: rank, type, the lengths it can know and which axes are split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeInfo {
    /// Length per axis, `None` where it depends on data not read yet.
    pub dims: Vec<Option<usize>>,
    /// Whether each axis lies in a single chunk.
    pub whole: Vec<bool>,
    /// Element type, `None` when it depends on the source data.
    pub dtype: Option<DType>,
}

impl ShapeInfo {
    fn ndim(&self) -> usize {
        self.dims.len()
    }
}

/// Checks a spec and returns the stages in an order where every input comes before its consumers.
///
/// # Errors
/// Every problem found, each with its field path.
pub fn validate(spec: &ArrayJobSpec) -> Result<Vec<usize>, Vec<Problem>> {
    let mut p = Vec::new();
    let storage = spec.s3_storage();
    if let Some(st) = storage {
        for e in crate::s3::check_storage(st) {
            check::<()>(&mut p, Err(e));
        }
    }
    if spec.exchange == Some(crate::spec::Exchange::S3) && storage.is_none() {
        p.push(Problem {
            path: "spec.exchange".into(),
            message:
                "`s3` needs spec.storage.s3 (the bucket whose scratch prefix carries the pieces)"
                    .into(),
        });
    }
    let source = source_shape(spec, storage, &mut p);
    let order = stage_order(&spec.stages, &mut p);
    let mut shapes: HashMap<&str, ShapeInfo> = HashMap::new();
    if let Some(s) = source {
        shapes.insert(SOURCE_INPUT, s);
    }
    let mut outputs_seen: BTreeMap<String, String> = BTreeMap::new();
    if let Some(order) = &order {
        for &i in order {
            let st = &spec.stages[i];
            let at = format!("spec.stages[{i}]");
            let Some(input) = shapes.get(st.input.as_str()).cloned() else {
                continue;
            };
            if let Some(out) = stage_shape(st, &at, &input, &mut p) {
                if let Some(o) = &st.output {
                    check_output(o, &at, &st.name, &out, &mut outputs_seen, &mut p);
                }
                shapes.insert(st.name.as_str(), out);
            }
        }
    }
    if p.is_empty() {
        Ok(order.unwrap_or_default())
    } else {
        Err(p)
    }
}

fn source_shape(
    spec: &ArrayJobSpec,
    storage: Option<&S3Storage>,
    p: &mut Vec<Problem>,
) -> Option<ShapeInfo> {
    let s = &spec.source;
    let kinds = [
        s.synthetic.is_some(),
        s.files.is_some(),
        s.http.is_some(),
        s.s3.is_some(),
        s.tiff.is_some(),
        s.zarr.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if kinds != 1 {
        p.push(Problem {
            path: "spec.source".into(),
            message: format!(
                "exactly one of 'synthetic', 'files', 'http', 's3', 'tiff' or 'zarr' must be set, found {kinds}"
            ),
        });
        return None;
    }
    let per_chunk = s.slices_per_chunk.unwrap_or(DEFAULT_SLICES_PER_CHUNK);
    check(
        p,
        limits::slices("spec.source.slicesPerChunk", per_chunk as u64),
    );
    let mut hw: [Option<usize>; 2] = [None, None];
    let mut dtype = s.dtype;
    if let Some(shape) = &s.slice_shape {
        if shape.len() != 2 || shape.contains(&0) {
            p.push(Problem {
                path: "spec.source.sliceShape".into(),
                message: format!("expected [rows, cols] of positive lengths, found {shape:?}"),
            });
        } else {
            let rows = check(p, limits::slice_side("spec.source.sliceShape[0]", shape[0]));
            let cols = check(p, limits::slice_side("spec.source.sliceShape[1]", shape[1]));
            if rows.and(cols).is_some() {
                hw = [Some(shape[0]), Some(shape[1])];
            }
        }
    }
    if let Some(d) = s.dtype
        && !matches!(d, DType::Uint8 | DType::Uint16)
        && s.zarr.is_none()
    {
        p.push(Problem {
            path: "spec.source.dtype".into(),
            message: format!("images are uint8 or uint16, found {d}"),
        });
    }
    let n = if let Some(syn) = &s.synthetic {
        let n = synthetic_shape(syn, hw, dtype, p);
        hw = [Some(syn.height), Some(syn.width)];
        dtype = Some(DType::Uint8);
        n
    } else if let Some(f) = &s.files {
        files_len(f, p)
    } else if let Some(h) = &s.http {
        http_len(h, p)
    } else if let Some(s3) = &s.s3 {
        s3_len(s3, storage, p)
    } else {
        None
    };
    let whole0 = n.is_some_and(|n| per_chunk >= n);
    Some(ShapeInfo {
        dims: vec![n, hw[0], hw[1]],
        whole: vec![whole0, true, true],
        dtype,
    })
}

/// Records the problem of a failed check (which names its field); the value when it passed.
fn check<T>(p: &mut Vec<Problem>, r: Result<T, ConfigError>) -> Option<T> {
    r.map_err(|e| p.push(e.into())).ok()
}

impl From<ConfigError> for Problem {
    fn from(e: ConfigError) -> Problem {
        Problem {
            path: e.field,
            message: e.message,
        }
    }
}

/// Checks a synthetic source against the declared slice shape/type; its number of slices when valid.
fn synthetic_shape(
    syn: &SyntheticSource,
    hw: [Option<usize>; 2],
    dtype: Option<DType>,
    p: &mut Vec<Problem>,
) -> Option<usize> {
    for (name, v) in [("height", syn.height), ("width", syn.width)] {
        let field = format!("spec.source.synthetic.{name}");
        if v == 0 || v % 4 != 0 {
            p.push(Problem {
                path: field,
                message: format!("must be a positive multiple of 4 (recipe emstack-v1), found {v}"),
            });
        } else {
            check(p, limits::slice_side(&field, v));
        }
    }
    if let [Some(h), Some(w)] = hw
        && (h, w) != (syn.height, syn.width)
    {
        p.push(Problem {
            path: "spec.source.sliceShape".into(),
            message: format!(
                "[{h}, {w}] contradicts synthetic height/width [{}, {}]",
                syn.height, syn.width
            ),
        });
    }
    if dtype.is_some_and(|d| d != DType::Uint8) {
        p.push(Problem {
            path: "spec.source.dtype".into(),
            message: "synthetic slices are uint8".into(),
        });
    }
    check(
        p,
        limits::slices("spec.source.synthetic.slices", syn.slices as u64),
    )
}

/// Checks a files source; its number of slices when known without listing files (a pattern).
fn files_len(f: &FilesSource, p: &mut Vec<Problem>) -> Option<usize> {
    match (&f.pattern, &f.glob) {
        (Some(pattern), None) => {
            check(
                p,
                IndexTemplate::parse(pattern, "spec.source.files.pattern"),
            );
            let Some(stop) = f.stop else {
                p.push(Problem {
                    path: "spec.source.files.stop".into(),
                    message: "required with 'pattern' (last index, exclusive)".into(),
                });
                return None;
            };
            check(
                p,
                limits::slice_count("spec.source.files", f.start.unwrap_or(0), stop),
            )
        }
        (None, Some(_)) => {
            if f.start.is_some() || f.stop.is_some() {
                p.push(Problem {
                    path: "spec.source.files".into(),
                    message: "'start'/'stop' go with 'pattern', not with 'glob'".into(),
                });
            }
            None
        }
        _ => {
            p.push(Problem {
                path: "spec.source.files".into(),
                message: "exactly one of 'pattern' or 'glob' must be set".into(),
            });
            None
        }
    }
}

/// Checks an http source; its number of slices.
fn http_len(h: &HttpSource, p: &mut Vec<Problem>) -> Option<usize> {
    let start = h.start.unwrap_or(0);
    check(
        p,
        limits::concurrency(
            "spec.source.http.concurrency",
            h.concurrency.unwrap_or(DEFAULT_HTTP_CONCURRENCY),
        ),
    );
    if h.timeout_seconds == Some(0) {
        p.push(Problem {
            path: "spec.source.http.timeoutSeconds".into(),
            message: "must be at least 1".into(),
        });
    }
    check(
        p,
        IndexTemplate::parse_url(&h.url_template, "spec.source.http.urlTemplate", start),
    );
    check(p, limits::slice_count("spec.source.http", start, h.stop))
}

/// Checks an s3 source; its number of slices when known without listing (a key template).
fn s3_len(s3: &S3Source, storage: Option<&S3Storage>, p: &mut Vec<Problem>) -> Option<usize> {
    match crate::s3::check_source(s3, storage) {
        Ok(checked) => checked.len,
        Err(problems) => {
            for e in problems {
                check::<()>(p, Err(e));
            }
            None
        }
    }
}

/// Checks names and inputs, and orders the stages topologically (inputs first); `None` if that is impossible.
fn stage_order(stages: &[StageSpec], p: &mut Vec<Problem>) -> Option<Vec<usize>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut ok = true;
    if stages.is_empty() {
        p.push(Problem {
            path: "spec.stages".into(),
            message: "at least one stage is required".into(),
        });
    }
    if stages.len() > limits::MAX_STAGES {
        p.push(Problem {
            path: "spec.stages".into(),
            message: format!(
                "{} stages is more than the limit of {}",
                stages.len(),
                limits::MAX_STAGES
            ),
        });
        return None;
    }
    for (i, st) in stages.iter().enumerate() {
        let at = format!("spec.stages[{i}]");
        if st.name == SOURCE_INPUT {
            p.push(Problem {
                path: format!("{at}.name"),
                message: "'source' is reserved for the job's source".into(),
            });
            ok = false;
        } else if !is_dns_label(&st.name) {
            p.push(Problem {
                path: format!("{at}.name"),
                message: format!(
                    "'{}' is not a valid name (lowercase letters, digits and '-')",
                    st.name
                ),
            });
        }
        if let Some(&j) = index.get(st.name.as_str()) {
            p.push(Problem {
                path: format!("{at}.name"),
                message: format!("duplicate stage name '{}' (also spec.stages[{j}])", st.name),
            });
            ok = false;
        } else {
            index.insert(st.name.as_str(), i);
        }
        let n_ops = st.ops().len();
        if n_ops != 1 {
            p.push(Problem {
                path: at.clone(),
                message: format!("exactly one of 'select', 'reduce', 'recenter', 'rechunk' or 'fft' must be set, found {n_ops}"),
            });
            ok = false;
        }
    }
    for (i, st) in stages.iter().enumerate() {
        if st.input != SOURCE_INPUT && !index.contains_key(st.input.as_str()) {
            let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            p.push(Problem {
                path: format!("spec.stages[{i}].input"),
                message: format!(
                    "unknown input '{}': expected 'source' or one of {names:?}",
                    st.input
                ),
            });
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    // Kahn's algorithm over "input -> stage" edges.
    let mut order = Vec::with_capacity(stages.len());
    let mut done: HashSet<&str> = HashSet::from([SOURCE_INPUT]);
    let mut progress = true;
    while progress && order.len() < stages.len() {
        progress = false;
        for (i, st) in stages.iter().enumerate() {
            if !done.contains(st.name.as_str()) && done.contains(st.input.as_str()) {
                done.insert(st.name.as_str());
                order.push(i);
                progress = true;
            }
        }
    }
    if order.len() < stages.len() {
        let cyc: Vec<String> = stages
            .iter()
            .filter(|s| !done.contains(s.name.as_str()))
            .map(|s| format!("{} <- {}", s.name, s.input))
            .collect();
        p.push(Problem {
            path: "spec.stages".into(),
            message: format!("stage inputs form a cycle: {}", cyc.join(", ")),
        });
        return None;
    }
    Some(order)
}

fn stage_shape(
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

/// `zarrCompression` goes with a `zarr` output; a level only with zstd, and within [`ZSTD_LEVELS`].
fn check_compression(o: &OutputSpec, at: &str, p: &mut Vec<Problem>) {
    let Some(c) = &o.zarr_compression else {
        return;
    };
    let path = format!("{at}.output.zarrCompression");
    if o.zarr.is_none() {
        p.push(Problem {
            path: path.clone(),
            message: "applies to a zarr output, and this output has none".into(),
        });
    }
    match (c.codec, c.level) {
        (CompressionCodec::None, Some(_)) => p.push(Problem {
            path: format!("{path}.level"),
            message: "a level goes with codec zstd, not none".into(),
        }),
        (CompressionCodec::Zstd, Some(l)) if !ZSTD_LEVELS.contains(&l) => p.push(Problem {
            path: format!("{path}.level"),
            message: format!(
                "zstd level {l} is out of range [{}, {}]",
                ZSTD_LEVELS.start(),
                ZSTD_LEVELS.end()
            ),
        }),
        _ => {}
    }
}

fn check_output(
    o: &OutputSpec,
    at: &str,
    stage: &str,
    shape: &ShapeInfo,
    seen: &mut BTreeMap<String, String>,
    p: &mut Vec<Problem>,
) {
    let nd = shape.ndim();
    check_compression(o, at, p);
    let mut files: Vec<(String, &str)> = Vec::new();
    if let Some(z) = &o.zarr {
        files.push((format!("{at}.output.zarr"), z));
        if nd == 0 {
            p.push(Problem {
                path: format!("{at}.output.zarr"),
                message: format!(
                    "stage '{stage}' gives a single number; write it as csv or value instead"
                ),
            });
        }
    }
    if let Some(f) = &o.image {
        files.push((format!("{at}.output.image"), f));
        if nd != 2 {
            p.push(Problem {
                path: format!("{at}.output.image"),
                message: format!("an image needs a 2-D result, but stage '{stage}' is {nd}-D"),
            });
        }
    }
    if let Some(f) = &o.csv {
        files.push((format!("{at}.output.csv"), f));
        if nd > 2 {
            p.push(Problem {
                path: format!("{at}.output.csv"),
                message: format!(
                    "csv takes a 0-D, 1-D or 2-D result, but stage '{stage}' is {nd}-D"
                ),
            });
        }
    }
    if let Some(m) = &o.montage {
        files.push((format!("{at}.output.montage.file"), &m.file));
        if nd != 3 {
            p.push(Problem {
                path: format!("{at}.output.montage"),
                message: format!("a montage needs a 3-D result (slices along axis 0), but stage '{stage}' is {nd}-D"),
            });
        }
        if m.columns == Some(0) {
            p.push(Problem {
                path: format!("{at}.output.montage.columns"),
                message: "must be positive, found 0".into(),
            });
        }
    }
    if o.value == Some(true) && nd != 0 {
        p.push(Problem {
            path: format!("{at}.output.value"),
            message: format!(
                "a value is a single number, but stage '{stage}' is {nd}-D: reduce over every axis first"
            ),
        });
    }
    if let Some(pl) = &o.plot {
        files.push((format!("{at}.output.plot.file"), &pl.file));
        match (nd, &pl.pixels) {
            (1, None) => {}
            (1, Some(_)) => p.push(Problem {
                path: format!("{at}.output.plot.pixels"),
                message: format!("only for 3-D results; stage '{stage}' is 1-D and is drawn whole"),
            }),
            (3, Some(px)) => {
                if px.is_empty() {
                    p.push(Problem {
                        path: format!("{at}.output.plot.pixels"),
                        message: "list at least one [row, col] pixel".into(),
                    });
                }
                for (k, rc) in px.iter().enumerate() {
                    if rc.len() != 2 {
                        p.push(Problem {
                            path: format!("{at}.output.plot.pixels[{k}]"),
                            message: format!("expected [row, col], found {rc:?}"),
                        });
                        continue;
                    }
                    for (a, &v) in rc.iter().enumerate() {
                        if let Some(d) = shape.dims[a + 1]
                            && v >= d
                        {
                            p.push(Problem {
                                path: format!("{at}.output.plot.pixels[{k}][{a}]"),
                                message: format!("{v} out of range: axis {} of stage '{stage}' has length {d}", a + 1),
                            });
                        }
                    }
                }
            }
            (3, None) => p.push(Problem {
                path: format!("{at}.output.plot.pixels"),
                message: format!("stage '{stage}' is 3-D: list the [row, col] pixels whose series to draw"),
            }),
            _ => p.push(Problem {
                path: format!("{at}.output.plot"),
                message: format!("a plot needs a 1-D result (or a 3-D one with pixels), but stage '{stage}' is {nd}-D"),
            }),
        }
    }
    for (path, f) in files {
        if let Some(message) = output_path_problem(f).or_else(|| report_name_problem(f)) {
            p.push(Problem { path, message });
            continue;
        }
        let clash = seen.iter().find_map(|(other, by)| {
            let inside = |a: &str, b: &str| a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
            if other == f {
                Some(format!("'{f}' is already written by {by}"))
            } else if inside(f, other) {
                Some(format!("'{f}' lies inside '{other}', written by {by}"))
            } else if inside(other, f) {
                Some(format!("'{f}' contains '{other}', written by {by}"))
            } else {
                None
            }
        });
        match clash {
            Some(message) => p.push(Problem { path, message }),
            None => {
                seen.insert(f.to_string(), path);
            }
        }
    }
}

/// Prefix of the runner's own entries in an output directory (lock file, staging and backup directories).
pub const INTERNAL_PREFIX: &str = ".arrayjob";

/// The report a distributed run publishes with its outputs (the runtime writes it).
pub const WORKERS_REPORT: &str = "workers.json";
/// The task-stream timeline a distributed run publishes with its outputs, as a page.
pub const TIMELINE_HTML: &str = "timeline.html";
/// The same timeline, as an image.
pub const TIMELINE_PNG: &str = "timeline.png";

/// The files a distributed run publishes next to the stages' outputs. A manifest may not name them (nor a path
/// inside them) whether or not it is run on workers, so a manifest that validates runs the same on one process
/// and on workers.
pub const DISTRIBUTED_REPORTS: [&str; 3] = [WORKERS_REPORT, TIMELINE_HTML, TIMELINE_PNG];

/// Why `f` may not be a stage's output path though the output directory could hold it: it is one of the
/// distributed run's reports ([`DISTRIBUTED_REPORTS`]) or lies inside one.
fn report_name_problem(f: &str) -> Option<String> {
    let first = f.split('/').next().unwrap_or_default();
    DISTRIBUTED_REPORTS.contains(&first).then(|| {
        format!(
            "'{f}' is reserved: {} are the reports a distributed run publishes with its outputs",
            DISTRIBUTED_REPORTS.join(", ")
        )
    })
}

/// Why `f` cannot be an output path, if it cannot: it must be a plain relative path inside the output
/// directory that does not collide with `summary.json` or the runner's `.arrayjob*` entries.
pub fn output_path_problem(f: &str) -> Option<String> {
    let relative = !f.is_empty()
        && !f.starts_with('/')
        && !f.split('/').any(|c| c == ".." || c == "." || c.is_empty());
    let first = f.split('/').next().unwrap_or_default();
    if !relative {
        Some(format!(
            "'{f}' must be a relative path inside the output directory (no leading '/', no '.' or '..' \
             components, no empty component)"
        ))
    } else if first == "summary.json" || first.starts_with(INTERNAL_PREFIX) {
        Some(format!(
            "'{f}' is reserved: summary.json and names starting with '{INTERNAL_PREFIX}' belong to the runner"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: arrayjob.dev/v1alpha1
kind: ArrayJob
metadata: {name: t}
spec:
  source:
    synthetic: {slices: 40, height: 64, width: 64}
    slicesPerChunk: 10
  stages:
  - {name: time-mean, input: source, reduce: {op: mean, axes: [0]}, output: {image: tm.png}}
  - {name: recentered, input: source, recenter: {}}
  - {name: series, input: recentered, rechunk: {chunks: [-1, 8, 8]}}
  - {name: power, input: series, fft: {axis: 0}, output: {zarr: power.zarr, plot: {file: p.png, pixels: [[0, 0], [31, 31]]}}}
"#;

    fn problems(yaml: &str) -> Vec<String> {
        match parse_manifest(yaml, "job.yaml") {
            Ok(_) => vec![],
            Err(SpecError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn good_manifest_orders_stages() {
        let m = parse_manifest(GOOD, "job.yaml").expect("valid");
        assert_eq!(validate(&m.spec).expect("valid"), vec![0, 1, 2, 3]);
    }

    #[test]
    fn reports_all_problems_with_paths() {
        let y = GOOD
            .replace("chunks: [-1, 8, 8]", "chunks: [-1, 8]")
            .replace("axes: [0]", "axes: [0, 3]")
            .replace("pixels: [[0, 0], [31, 31]]", "pixels: [[0, 0], [32, 1]]");
        let p = problems(&y);
        assert!(
            p.contains(
                &"spec.stages[2].rechunk.chunks: 2 entries, but input 'recentered' is 3-D"
                    .to_string()
            ),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("spec.stages[0].reduce.axes[1]: axis 3 out of range")),
            "{p:?}"
        );
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn pixel_out_of_range_is_named() {
        let p = problems(&GOOD.replace("[31, 31]", "[32, 1]"));
        assert_eq!(
            p,
            vec![
                "spec.stages[3].output.plot.pixels[1][0]: 32 out of range: axis 1 of stage 'power' has length 32"
            ]
        );
    }

    #[test]
    fn cycle_and_unknown_input() {
        let y = GOOD.replace("input: recentered,", "input: power,");
        let p = problems(&y);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("spec.stages: stage inputs form a cycle"),
            "{p:?}"
        );
        let y = GOOD.replace("input: recentered,", "input: nope,");
        assert!(problems(&y)[0].starts_with("spec.stages[2].input: unknown input 'nope'"));
    }

    #[test]
    fn fft_on_split_axis_is_refused() {
        let y = GOOD.replace("input: series, fft", "input: recentered, fft");
        let p = problems(&y);
        assert!(
            p[0].starts_with("spec.stages[3].fft.axis: input 'recentered' is split"),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_field_is_a_parse_error_with_its_name() {
        let e = parse_manifest(
            &GOOD.replace("slicesPerChunk", "slicesPerChunks"),
            "job.yaml",
        )
        .expect_err("bad");
        assert!(
            e.to_string().contains("unknown field `slicesPerChunks`"),
            "{e}"
        );
    }
    /// A job over a synthetic source with these stage lines.
    fn with_stages(stages: &str) -> String {
        format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: t}}\nspec:\n  source: {{synthetic: \
             {{slices: 4, height: 8, width: 8}}}}\n  stages:\n{stages}"
        )
    }

    #[test]
    fn overlapping_and_reserved_output_paths_are_refused() {
        let y = with_stages(
            "  - {name: a, input: source, rechunk: {chunks: [1, 8, 8]}, output: {zarr: a.zarr}}\n  \
             - {name: b, input: source, reduce: {op: mean, axes: [1, 2]}, output: {csv: a.zarr/x.csv, plot: {file: \
             sub/p.png}}}\n  - {name: c, input: source, reduce: {op: mean, axes: [0]}, output: {image: sub, csv: \
             a.zarr}}\n",
        );
        assert_eq!(
            problems(&y),
            vec![
                "spec.stages[1].output.csv: 'a.zarr/x.csv' lies inside 'a.zarr', written by spec.stages[0].output.zarr",
                "spec.stages[2].output.image: 'sub' contains 'sub/p.png', written by spec.stages[1].output.plot.file",
                "spec.stages[2].output.csv: 'a.zarr' is already written by spec.stages[0].output.zarr",
            ]
        );
        for (bad, why) in [
            ("summary.json", "is reserved"),
            // A distributed run's reports: the same manifest must run on one process and on workers.
            ("timeline.png", "is reserved"),
            ("workers.json", "is reserved"),
            ("timeline.html", "is reserved"),
            ("timeline.html/x.csv", "is reserved"),
            (".arrayjob.lock", "is reserved"),
            (".arrayjob-backup/x.csv", "is reserved"),
            ("/tmp/x.csv", "must be a relative path"),
            ("a/../x.csv", "must be a relative path"),
            ("./x.csv", "must be a relative path"),
        ] {
            let y = with_stages(&format!(
                "  - {{name: a, input: source, reduce: {{op: sum, axes: [0, 1, 2]}}, output: {{csv: \"{bad}\"}}}}\n"
            ));
            let p = problems(&y);
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(
                p[0].starts_with(&format!("spec.stages[0].output.csv: '{bad}' {why}")),
                "{bad}: {p:?}"
            );
        }
    }

    #[test]
    fn templates_are_checked_like_the_sources_do() {
        let files = |pattern: &str| {
            with_stages("  - {name: a, input: source, reduce: {op: sum, axes: [0]}}\n").replace(
                "synthetic: {slices: 4, height: 8, width: 8}",
                &format!("files: {{pattern: \"{pattern}\", stop: 3}}"),
            )
        };
        assert_eq!(
            problems(&files("slices/a.png")),
            vec![
                "spec.source.files.pattern: template \"slices/a.png\" has no index placeholder: put {index}, \
                 {index:05}, %d or %05d where the slice index goes"
            ]
        );
        assert!(problems(&files("s%03d.png")).is_empty());
        let http = |url: &str| {
            with_stages("  - {name: a, input: source, reduce: {op: sum, axes: [0]}}\n").replace(
                "synthetic: {slices: 4, height: 8, width: 8}",
                &format!("http: {{urlTemplate: \"{url}\", stop: 3}}"),
            )
        };
        for url in [
            "http://h/{index:5}.png",
            "http://h/s%d.png",
            "ftp://h/{index}",
        ] {
            let expected = IndexTemplate::parse_url(url, "spec.source.http.urlTemplate", 0)
                .expect_err(url)
                .to_string();
            assert_eq!(problems(&http(url)), vec![expected]);
        }
    }

    #[test]
    fn s3_source_and_storage_fields_are_checked_with_their_path() {
        let job = |source: &str, storage: &str| {
            with_stages("  - {name: a, input: source, reduce: {op: sum, axes: [0]}}\n")
                .replace(
                    "synthetic: {slices: 4, height: 8, width: 8}",
                    &format!("s3: {source}"),
                )
                .replace("  stages:", &format!("{storage}  stages:"))
        };
        let storage = "  storage: {s3: {bucket: jobs, endpoint: \"http://127.0.0.1:9000\"}}\n";
        assert!(problems(&job("{keys: \"s/{index}.png\", stop: 3}", storage)).is_empty());
        assert!(problems(&job("{bucket: data, prefix: s/}", "")).is_empty());
        assert_eq!(
            problems(&job("{keys: \"s/{index}.png\", stop: 3}", "")),
            vec![
                "spec.source.s3.bucket: required when spec.storage.s3 (whose bucket is the default) is not set"
            ]
        );
        assert_eq!(
            problems(&job(
                "{bucket: Data_1, keys: s.png, prefix: s/, concurrency: 0, retries: 21, timeoutSeconds: 0}",
                ""
            )),
            vec![
                "spec.source.s3.bucket: \"Data_1\" is not a valid bucket name (3 to 63 lowercase letters, digits, \
                 '.' and '-', starting and ending with a letter or digit)",
                "spec.source.s3: exactly one of 'keys' or 'prefix' must be set",
                "spec.source.s3.concurrency: must be at least 1",
                "spec.source.s3.retries: 21 is more than the limit of 20",
                "spec.source.s3.timeoutSeconds: must be at least 1",
            ]
        );
        assert_eq!(
            problems(&job("{keys: s.png, stop: 3}", "")),
            vec![
                "spec.source.s3.bucket: required when spec.storage.s3 (whose bucket is the default) is not set",
                "spec.source.s3.keys: template \"s.png\" has no index placeholder: put {index}, {index:05}, %d or \
                 %05d where the slice index goes",
            ]
        );
        assert_eq!(
            problems(&job(
                "{prefix: /s, start: 1}",
                "  storage: {s3: {bucket: ab, endpoint: \"minio:9000\", region: \"\", prefix: /x}}\n"
            )),
            vec![
                "spec.storage.s3.bucket: \"ab\" is not a valid bucket name (3 to 63 lowercase letters, digits, '.' \
                 and '-', starting and ending with a letter or digit)",
                "spec.storage.s3.endpoint: expected an http:// or https:// URL, found \"minio:9000\"",
                "spec.storage.s3.region: must not be empty",
                "spec.storage.s3.prefix: must not start with '/' (keys are relative to the bucket)",
                "spec.source.s3: 'start'/'stop' go with 'keys', not with 'prefix'",
                "spec.source.s3.prefix: must not start with '/' (keys are relative to the bucket)",
            ]
        );
    }

    #[test]
    fn exchange_through_s3_needs_storage_and_leases_are_bounded() {
        let base = with_stages("  - {name: a, input: source, reduce: {op: sum, axes: [0]}}\n");
        let exchange = base.replace("  stages:", "  exchange: s3\n  stages:");
        assert_eq!(
            problems(&exchange),
            vec![
                "spec.exchange: `s3` needs spec.storage.s3 (the bucket whose scratch prefix carries the pieces)"
            ]
        );
        let storage = |lease: u64| {
            exchange.replace(
                "  exchange: s3\n",
                &format!(
                    "  exchange: s3\n  storage: {{s3: {{bucket: jobs, leaseSeconds: {lease}}}}}\n"
                ),
            )
        };
        assert!(problems(&storage(60)).is_empty());
        assert_eq!(
            problems(&storage(4)),
            vec!["spec.storage.s3.leaseSeconds: must be from 5 to 3600"]
        );
    }

    #[test]
    fn huge_values_are_refused_with_their_field() {
        let source = |src: &str| {
            problems(
                &with_stages("  - {name: a, input: source, reduce: {op: sum, axes: [0]}}\n")
                    .replace("synthetic: {slices: 4, height: 8, width: 8}", src),
            )
        };
        assert_eq!(
            source("synthetic: {slices: 4, height: 1099511627776, width: 1099511627776}"),
            vec![
                "spec.source.synthetic.height: 1099511627776 pixels is more than the limit of 65536",
                "spec.source.synthetic.width: 1099511627776 pixels is more than the limit of 65536",
            ]
        );
        assert_eq!(
            source("synthetic: {slices: 1000000000000, height: 8, width: 8}"),
            vec![
                "spec.source.synthetic.slices: 1000000000000 slices is more than the limit of 10000000"
            ]
        );
        assert_eq!(
            source(
                "http: {urlTemplate: \"http://h/{index}\", stop: 1000000000000, concurrency: 4611686018427387904}"
            ),
            vec![
                "spec.source.http.concurrency: 4611686018427387904 requests in flight is more than the limit of 1024",
                "spec.source.http.stop: 1000000000000 slices is more than the limit of 10000000",
            ]
        );
        assert_eq!(
            source("files: {pattern: \"s{index}.png\", start: 5, stop: 5}"),
            vec!["spec.source.files.stop: empty range [5, 5): stop must be greater than start"]
        );
    }
}
