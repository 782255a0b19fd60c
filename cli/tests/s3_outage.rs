//! An S3 outage in the middle of a job: SeaweedFS is killed once the run has started (its arrays are staged),
//! kept down for 30 s and started again on the same data. The job, reading its slices from S3 on 2 worker
//! processes and writing its outputs there, keeps trying and completes with the outputs of a run that saw no
//! outage.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrayjob_testenv::{S3Endpoint, S3Server};

const BUCKET: &str = "outage";
const SLICES: usize = 40;

/// Slice `i`: 8-bit, 96 x 80, different in every slice.
fn png(i: usize) -> Vec<u8> {
    png_bytes(image::GrayImage::from_fn(80, 96, |c, r| {
        image::Luma([((i as u32 * 31 + r * 7 + c * 3 + (r * c) % 11) % 251) as u8])
    }))
}

fn setup(s3: &S3Endpoint) {
    s3_create_bucket(s3, BUCKET);
    for i in 0..SLICES {
        s3_put(s3, BUCKET, &format!("slices/{i:03}.png"), &png(i));
    }
}

/// Keys (relative) and bytes of the objects under `prefix`; `None` when the server does not answer.
fn objects(s3: &S3Endpoint, prefix: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    s3_objects(s3, BUCKET, prefix)
}

fn manifest(s3: &S3Endpoint) -> String {
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: outage}}\nspec:\n  storage: {{s3: \
         {{bucket: {BUCKET}, endpoint: \"{}\", region: {}, forcePathStyle: true}}}}\n  source: {{s3: {{keys: \
         \"slices/{{index:03}}.png\", stop: {SLICES}, concurrency: 2}}, slicesPerChunk: 2}}\n  stages:\n  \
         - {{name: mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{zarr: mean.zarr, csv: mean.csv}}}}\n  \
         - {{name: series, input: source, rechunk: {{chunks: [-1, 16, 16]}}}}\n  \
         - {{name: power, input: series, fft: {{axis: 0, power: true, dtype: float32}}, output: {{zarr: power.zarr}}}}\n",
        s3.endpoint, s3.region
    )
}

#[test]
fn a_job_outlasts_thirty_seconds_of_s3_outage_with_identical_outputs() {
    let mut server = S3Server::start().unwrap_or_else(|e| panic!("start SeaweedFS: {e}"));
    let s3 = server.endpoint().clone();
    setup(&s3);
    let d = tempfile::tempdir().expect("tmp");
    let m = write(d.path(), "job.yaml", &manifest(&s3));

    // The reference: the same job with no outage.
    let (ok, _, err) = arrayjob_aws(
        d.path(),
        &[
            "run",
            &m,
            "--out",
            &format!("s3://{BUCKET}/calm"),
            "--workers",
            "2",
        ],
        &s3_credentials(&s3),
    );
    assert!(ok, "reference run failed: {err}");
    let mut expected = objects(&s3, "calm/").expect("list");
    expected.remove("summary.json");

    // The run under test, in the background; the outage starts once its arrays are staged (work has begun).
    let scratch = d.path().to_path_buf();
    let (m2, env) = (m.clone(), s3_credentials(&s3));
    let run = std::thread::spawn(move || {
        arrayjob_aws(
            &scratch,
            &[
                "run",
                &m2,
                "--out",
                &format!("s3://{BUCKET}/stormy"),
                "--workers",
                "2",
            ],
            &env,
        )
    });
    let started = Instant::now();
    loop {
        let staged = objects(&s3, "stormy/.arrayjob-staging-").unwrap_or_default();
        if staged.keys().any(|k| k.ends_with("zarr.json")) {
            break;
        }
        assert!(
            !run.is_finished() && started.elapsed() < Duration::from_secs(120),
            "the run never staged its arrays"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let down = Instant::now();
    server
        .outage(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("restart SeaweedFS: {e}"));
    assert!(
        !run.is_finished(),
        "the run ended during the outage: {:?}",
        run.join().expect("join")
    );
    let (ok, _, err) = run.join().expect("join");
    assert!(ok, "the run failed: {err}");
    assert!(
        err.contains("S3 unavailable; trying again"),
        "no retry was logged: {err}"
    );
    assert!(down.elapsed() >= Duration::from_secs(30));
    let mut got = objects(&s3, "stormy/").expect("list");
    got.remove("summary.json");
    for name in ["workers.json", "timeline.html", "timeline.png"] {
        expected.remove(name);
        got.remove(name);
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert!(
        got == expected,
        "outputs differ from the run without outage"
    );
}
