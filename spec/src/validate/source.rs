//! The source's part of validation: which kind, its declared slice shape and type, and how many slices it
//! has when the spec alone says so.

use crate::dtype::DType;
use crate::limits;
use crate::spec::{
    ArrayJobSpec, DEFAULT_HTTP_CONCURRENCY, DEFAULT_SLICES_PER_CHUNK, FilesSource, HttpSource,
    S3Source, S3Storage, SyntheticSource,
};
use crate::template::IndexTemplate;

use super::problem::{AxisChunks, Problem, ShapeInfo, check};

pub(super) fn source_shape(
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
    Some(ShapeInfo {
        dims: vec![n, hw[0], hw[1]],
        chunks: vec![
            AxisChunks::Len(per_chunk),
            AxisChunks::Whole,
            AxisChunks::Whole,
        ],
        dtype,
    })
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
