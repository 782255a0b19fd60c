//! A stage's outputs checked against its result (kinds against rank, compression, clashing and reserved
//! paths), and the names a run keeps for its own reports.

use std::collections::BTreeMap;

use crate::spec::{CompressionCodec, OutputSpec, ZSTD_LEVELS};

use super::problem::{Problem, ShapeInfo};

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

pub(super) fn check_output(
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
