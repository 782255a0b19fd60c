//! The `s3` source through `arrayjob run` against a real SeaweedFS server (SigV4, loopback only): outputs equal
//! to the same job over local files, by key template and by listed prefix; a missing bucket, a refused secret
//! and a missing key each stop the run with one clear error and no outputs.
//!
//! SeaweedFS (`weed`) comes from `tests/env/setup.sh`, found as the e2e tests find it; without it these tests
//! fail with the setup hint.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use arrayjob_testenv::{S3Endpoint, S3Server};
use aws_sdk_s3::primitives::ByteStream;

const SLICES: usize = 12;
const ROWS: u32 = 24;
const COLS: u32 = 20;
/// The bucket holding the stack, under `slices/` (one PNG per slice, `{index:05}.png`).
const BUCKET: &str = "stack";

/// Pixel (r, c) of slice i: 16-bit, different in every slice.
fn pixel(i: usize, r: u32, c: u32) -> u16 {
    ((i as u32 * 7919 + r * 613 + c * 97 + (r * c) % 13 * 1009) % 65_521) as u16
}

/// Slice `i` as PNG bytes.
fn png(i: usize) -> Vec<u8> {
    let img: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(COLS, ROWS, |c, r| image::Luma([pixel(i, r, c)]));
    png_bytes(img)
}

/// The server of this test binary, with the stack uploaded once.
fn server() -> &'static S3Endpoint {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let server = S3Server::start().unwrap_or_else(|e| panic!("start SeaweedFS: {e}"));
            upload(server.endpoint());
            server
        })
        .endpoint()
}

fn upload(s3: &S3Endpoint) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = s3.client();
    rt.block_on(async {
        client
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create bucket");
        for i in 0..SLICES {
            client
                .put_object()
                .bucket(BUCKET)
                .key(format!("slices/{i:05}.png"))
                .body(ByteStream::from(png(i)))
                .send()
                .await
                .expect("put slice");
        }
    });
}

/// A job named `stack` (outputs embed the name) with `source` and stages writing a Zarr array of the
/// rechunked stack, a mean image, a per-slice CSV and a plot; `storage` is the `storage:` block or empty.
fn job(source: &str, storage: &str) -> String {
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: stack}}\nspec:\n{storage}  source: \
         {{slicesPerChunk: 5, {source}}}\n  stages:\n  \
         - {{name: cols, input: source, rechunk: {{chunks: [-1, 8, 8]}}, output: {{zarr: cols.zarr}}}}\n  \
         - {{name: mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{image: mean.png, csv: mean.csv}}}}\n  \
         - {{name: brightness, input: source, reduce: {{op: mean, axes: [1, 2]}}, output: {{csv: b.csv, plot: {{file: b.png}}}}}}\n"
    )
}

/// `storage.s3` pointing at the test server, with `bucket`.
fn storage(s3: &S3Endpoint, bucket: &str) -> String {
    format!(
        "  storage: {{s3: {{bucket: {bucket}, endpoint: \"{}\", region: {}, forcePathStyle: true}}}}\n",
        s3.endpoint, s3.region
    )
}

/// Runs `arrayjob run manifest --out out` with `env` (the AWS variables) and nothing from this machine's AWS
/// configuration; returns (success, stderr).
fn run(dir: &Path, manifest: &str, out: &Path, env: &[(String, String)]) -> (bool, String) {
    let m = write(dir, "job.yaml", manifest);
    let out = out.display().to_string();
    let (ok, _, stderr) = arrayjob_aws(dir, &["run", &m, "--out", &out, "--threads", "3"], env);
    (ok, stderr)
}

/// Every output file under `dir` except `summary.json` (timings), relative path -> bytes.
fn outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = files_under(dir);
    out.remove("summary.json");
    out.remove(".arrayjob.lock");
    out
}

/// The outputs of the same job over the same images as local files.
fn files_outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let slices = dir.join("slices");
    std::fs::create_dir_all(&slices).expect("mkdir");
    for i in 0..SLICES {
        std::fs::write(slices.join(format!("{i:05}.png")), png(i)).expect("write png");
    }
    let out = dir.join("out-files");
    let source = format!("files: {{pattern: \"slices/{{index:05}}.png\", stop: {SLICES}}}");
    let (ok, err) = run(dir, &job(&source, ""), &out, &[]);
    assert!(ok, "files run failed: {err}");
    let files = outputs(&out);
    for name in [
        "cols.zarr/zarr.json",
        "mean.png",
        "mean.csv",
        "b.csv",
        "b.png",
    ] {
        assert!(files.contains_key(name), "no {name} in {:?}", files.keys());
    }
    files
}

/// Asserts that stderr is this one error and nothing else.
fn assert_one_error(stderr: &str, expected: impl AsRef<str>) {
    assert_eq!(stderr.trim_end(), format!("error: {}", expected.as_ref()));
}

/// Asserts that a failed run left no output (nothing but an empty directory, or no directory).
fn assert_no_outputs(out: &Path) {
    let left = outputs(out);
    assert!(left.is_empty(), "a failed run left {:?}", left.keys());
    assert!(
        !out.join("summary.json").exists(),
        "a failed run wrote summary.json"
    );
}

#[test]
fn key_template_and_prefix_give_the_outputs_of_the_files_source() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let expected = files_outputs(d.path());

    // Key template, connection from spec.storage.s3, bucket taken from it.
    let out = d.path().join("out-keys");
    let source =
        format!("s3: {{keys: \"slices/{{index:05}}.png\", stop: {SLICES}, concurrency: 3}}");
    let (ok, err) = run(
        d.path(),
        &job(&source, &storage(s3, BUCKET)),
        &out,
        &s3_credentials(s3),
    );
    assert!(ok, "s3 keys run failed: {err}");
    assert_eq!(
        outputs(&out),
        expected,
        "s3 keys outputs differ from files outputs"
    );

    // Listed prefix, connection from the environment alone (AWS_ENDPOINT_URL; a 127.0.0.1 endpoint is
    // addressed path-style).
    let out = d.path().join("out-prefix");
    let source = format!("s3: {{bucket: {BUCKET}, prefix: slices/}}");
    let mut env = s3_credentials(s3);
    env.push(("AWS_ENDPOINT_URL".into(), s3.endpoint.clone()));
    let (ok, err) = run(d.path(), &job(&source, ""), &out, &env);
    assert!(ok, "s3 prefix run failed: {err}");
    assert_eq!(
        outputs(&out),
        expected,
        "s3 prefix outputs differ from files outputs"
    );
}

#[test]
fn missing_source_bucket_is_one_error_naming_bucket_and_operation() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let source = format!(
        "s3: {{bucket: no-such-bucket, keys: \"slices/{{index:05}}.png\", stop: {SLICES}}}"
    );
    let (ok, err) = run(
        d.path(),
        &job(&source, &storage(s3, BUCKET)),
        &out,
        &s3_credentials(s3),
    );
    assert!(!ok, "the run succeeded");
    assert_one_error(
        &err,
        "ListObjectsV2 s3://no-such-bucket failed: no such bucket (HTTP 404 NoSuchBucket)",
    );
    assert_no_outputs(&out);
}

#[test]
fn missing_storage_bucket_is_refused_before_any_work() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let source = format!("synthetic: {{slices: {SLICES}, height: 8, width: 8}}");
    let (ok, err) = run(
        d.path(),
        &job(&source, &storage(s3, "no-job-bucket")),
        &out,
        &s3_credentials(s3),
    );
    assert!(!ok, "the run succeeded");
    assert_one_error(
        &err,
        "ListObjectsV2 s3://no-job-bucket failed: no such bucket (HTTP 404 NoSuchBucket)",
    );
    assert_no_outputs(&out);
}

#[test]
fn wrong_secret_is_refused_by_sigv4_with_one_clear_error() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let source = format!("s3: {{keys: \"slices/{{index:05}}.png\", stop: {SLICES}}}");
    let mut env = s3_credentials(s3);
    env[1].1 = format!("{}x", s3.secret_key);
    let (ok, err) = run(d.path(), &job(&source, &storage(s3, BUCKET)), &out, &env);
    assert!(!ok, "the run succeeded with a wrong secret");
    assert_one_error(
        &err,
        format!(
            "ListObjectsV2 s3://{BUCKET} failed: the request signature was refused: wrong secret access key \
             (HTTP 403 SignatureDoesNotMatch)"
        ),
    );
    assert_no_outputs(&out);
}

#[test]
fn missing_key_is_named_with_its_index_and_no_output_is_written() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let env = s3_credentials(s3);

    // Slice 12 does not exist: found while reading, after slices 0..12 were read.
    let out = d.path().join("out-last");
    let source = format!(
        "s3: {{keys: \"slices/{{index:05}}.png\", stop: {}}}",
        SLICES + 1
    );
    let (ok, err) = run(d.path(), &job(&source, &storage(s3, BUCKET)), &out, &env);
    assert!(!ok, "the run succeeded");
    assert_one_error(
        &err,
        format!(
            "slice 12: GetObject s3://{BUCKET}/slices/00012.png failed: no such key (HTTP 404 NoSuchKey)"
        ),
    );
    assert_no_outputs(&out);

    // The first key does not exist: found by the probe at start.
    let out = d.path().join("out-first");
    let source = "s3: {keys: \"slices/{index:04}.png\", stop: 3}";
    let (ok, err) = run(d.path(), &job(source, &storage(s3, BUCKET)), &out, &env);
    assert!(!ok, "the run succeeded");
    assert_one_error(
        &err,
        format!(
            "slice 0: HeadObject s3://{BUCKET}/slices/0000.png failed: no such key (HTTP 404 NotFound)"
        ),
    );
    assert_no_outputs(&out);
}

#[test]
fn prefix_listing_reads_every_page_in_key_order() {
    // 1005 one-pixel slices: more than one ListObjectsV2 page (1000 keys), named without padding so that key
    // order ("many/10.png" < "many/2.png") differs from numeric order.
    const N: usize = 1005;
    let s3 = server();
    let value = |i: usize| (i * 7 % 251) as u8;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = s3.client();
        client
            .create_bucket()
            .bucket("many")
            .send()
            .await
            .expect("create bucket");
        let mut puts = tokio::task::JoinSet::new();
        for i in 0..N {
            let client = client.clone();
            let img = image::GrayImage::from_pixel(1, 1, image::Luma([value(i)]));
            let mut bytes = Vec::new();
            img.write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("encode png");
            puts.spawn(async move {
                client
                    .put_object()
                    .bucket("many")
                    .key(format!("s/{i}.png"))
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                    .map(|_| ())
            });
            if puts.len() >= 32 {
                puts.join_next()
                    .await
                    .expect("a put")
                    .expect("join")
                    .expect("put");
            }
        }
        while let Some(r) = puts.join_next().await {
            r.expect("join").expect("put");
        }
    });
    let d = tempfile::tempdir().expect("tmp");
    let out = d.path().join("out");
    let manifest = format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: many}}\nspec:\n{}  source: \
         {{slicesPerChunk: 100, s3: {{bucket: many, prefix: s/, concurrency: 16}}}}\n  stages:\n  \
         - {{name: v, input: source, reduce: {{op: sum, axes: [1, 2]}}, output: {{csv: v.csv}}}}\n",
        storage(s3, BUCKET)
    );
    let (ok, err) = run(d.path(), &manifest, &out, &s3_credentials(s3));
    assert!(ok, "{err}");
    let mut keys: Vec<(String, usize)> = (0..N).map(|i| (format!("s/{i}.png"), i)).collect();
    keys.sort();
    let mut expected = String::from("index,value\n");
    for (index, (_, i)) in keys.iter().enumerate() {
        expected.push_str(&format!("{index},{:?}\n", f64::from(value(*i))));
    }
    let csv = std::fs::read_to_string(out.join("v.csv")).expect("v.csv");
    assert_eq!(csv.lines().count(), N + 1);
    assert_eq!(csv, expected);
}
