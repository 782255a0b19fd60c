//! Reading a manifest and checking a spec before anything runs.
//!
//! Validation reports every problem at once, each with the field path and what was expected. It works on
//! the spec alone and returns a [`ValidatedSpec`]; where a length is not known without reading data, the
//! checks that need it run again, with the same code, when the planner binds the validated spec to the data
//! ([`ValidatedSpec::bind`]) once the first slice has been read.

use std::collections::{HashMap, HashSet};

use crate::limits;
use crate::spec::{API_VERSION, ArrayJobManifest, ArrayJobSpec, KIND, SOURCE_INPUT, StageSpec};

// Lived here; re-exported so the old path keeps working.
pub use crate::spec::DEFAULT_SLICES_PER_CHUNK;

mod outputs;
mod problem;
mod source;
mod stages;
mod validated;

pub use self::outputs::{
    DISTRIBUTED_REPORTS, INTERNAL_PREFIX, TIMELINE_HTML, TIMELINE_PNG, WORKERS_REPORT,
    output_path_problem,
};
use self::problem::check;
pub use self::problem::{AxisChunks, Grid, Problem, ShapeInfo, SpecError};
use self::source::source_shape;
pub use self::stages::ResolvedOp;
use self::validated::walk;
pub use self::validated::{ValidatedSpec, ValidatedStage};

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

/// Checks a spec: every problem at once, or the stages in an order where every input comes before its
/// consumers, each with its op resolved and its result's shape as far as the spec alone tells.
///
/// # Errors
/// Every problem found, each with its field path.
pub fn validate(spec: &ArrayJobSpec) -> Result<ValidatedSpec, Vec<Problem>> {
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
    let stages = match &order {
        Some(order) => walk(spec, source.as_ref(), order, &mut p),
        None => Vec::new(),
    };
    match source {
        Some(source) if p.is_empty() => Ok(ValidatedSpec { source, stages }),
        _ => Err(p),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::IndexTemplate;

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
        assert_eq!(validate(&m.spec).expect("valid").order(), vec![0, 1, 2, 3]);
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
