//! The `tiff` and `zarr` sources reading from S3 (a real SeaweedFS server on loopback, from
//! `tests/env/setup.sh`): TIFF stacks by ranged GETs and Zarr arrays (unwritten chunks read as the fill value)
//! equal NumPy's reading of the same files; a missing key is named.

mod common;
use common::*;

use std::path::Path;

use arrayjob_testenv::S3Server;

const BUCKET: &str = "stacks";

/// Uploads every file under `dir` to `bucket` under `prefix`, keyed by its relative path.
fn upload_dir(s3: &arrayjob_testenv::S3Endpoint, dir: &Path, prefix: &str) {
    for (rel, bytes) in files_under(dir) {
        s3_put(s3, BUCKET, &format!("{prefix}{rel}"), &bytes);
    }
}

/// A job over `source` with `storage.s3` on the test server, copying the source to `copy.zarr` and writing
/// its mean over axis 0 to `mean.zarr`.
fn job(s3: &arrayjob_testenv::S3Endpoint, source: &str) -> String {
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: stack}}\nspec:\n  storage: {{s3: \
         {{bucket: {BUCKET}, endpoint: \"{}\", region: {}, forcePathStyle: true}}}}\n  source: {source}\n  stages:\n  \
         - {{name: copy, input: source, rechunk: {{chunks: [-1, 12, 10]}}, output: {{zarr: copy.zarr}}}}\n  \
         - {{name: mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{zarr: mean.zarr}}}}\n",
        s3.endpoint, s3.region
    )
}

#[test]
fn tiff_and_zarr_stacks_on_s3_equal_numpy() {
    let server = S3Server::start().unwrap_or_else(|e| panic!("start SeaweedFS: {e}"));
    let s3 = server.endpoint();
    let d = tempfile::tempdir().expect("tmp");
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    oracle("stack_sources.py", &["make", &data.display().to_string()]);
    s3_create_bucket(s3, BUCKET);
    upload_dir(s3, &data, "in/");
    let cases = [
        (
            "{tiff: {s3: {key: in/u16_deflate.tif}}, slicesPerChunk: 4}",
            "u16_deflate.tif",
            -1,
        ),
        ("{tiff: {s3: {key: in/u8_tiled.tif}}}", "u8_tiled.tif", -1),
        ("{zarr: {s3: {key: in/v3.zarr}}}", "v3.zarr", -1),
        (
            "{zarr: {s3: {key: in/ome3.zarr}, level: 1}}",
            "ome3.zarr",
            1,
        ),
        (
            "{zarr: {s3: {bucket: stacks, key: in/ome2.zarr}}}",
            "ome2.zarr",
            0,
        ),
    ];
    for (i, (source, input, level)) in cases.iter().enumerate() {
        let m = write(d.path(), "job.yaml", &job(s3, source));
        let out = d.path().join(format!("out{i}")).display().to_string();
        let (ok, _, stderr) = arrayjob_aws(
            d.path(),
            &["run", &m, "--out", &out, "--threads", "2"],
            &s3_credentials(s3),
        );
        assert!(ok, "{source}: {stderr}");
        let input = data.join(input).display().to_string();
        let said = oracle(
            "stack_sources.py",
            &["check", &input, &level.to_string(), &out],
        );
        assert!(said.starts_with("ok [11, "), "{source}: {said}");
    }
    let m = write(
        d.path(),
        "job.yaml",
        &job(s3, "{tiff: {s3: {key: in/none.tif}}}"),
    );
    let out = d.path().join("out-missing").display().to_string();
    let (ok, _, stderr) = arrayjob_aws(d.path(), &["run", &m, "--out", &out], &s3_credentials(s3));
    assert!(!ok, "a missing key ran");
    assert!(
        stderr.contains("s3://stacks/in/none.tif") && stderr.contains("not found"),
        "{stderr}"
    );
}
