//! Outputs written to S3 (`--out s3://bucket/prefix`) against a real SeaweedFS server: the same bytes as a
//! local run (on one process and on 3 worker processes, which upload their own Zarr chunks), zarr-python reads
//! the arrays from S3 equal to the local ones, a rerun replaces the previous outputs as a whole, a failed run
//! leaves them untouched, the location's lock refuses a second run and is taken over when expired, and
//! `arrayjob gc` finishes an interrupted publish.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use arrayjob_testenv::{S3Endpoint, S3Server};

const BUCKET: &str = "results";

/// The server of this test binary, with the bucket made once.
fn server() -> &'static S3Endpoint {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let server = S3Server::start().unwrap_or_else(|e| panic!("start SeaweedFS: {e}"));
            s3_create_bucket(server.endpoint(), BUCKET);
            server
        })
        .endpoint()
}

/// Every object under `prefix` (relative key -> bytes).
fn objects(s3: &S3Endpoint, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    s3_objects(s3, BUCKET, prefix).expect("list the objects")
}

fn put(s3: &S3Endpoint, key: &str, body: &[u8]) {
    s3_put(s3, BUCKET, key, body);
}

/// `storage.s3` pointing at the test server, parts of 5 MiB.
fn storage(s3: &S3Endpoint) -> String {
    format!(
        "  storage: {{s3: {{bucket: {BUCKET}, endpoint: \"{}\", region: {}, forcePathStyle: true, partSizeMiB: 5}}}}\n",
        s3.endpoint, s3.region
    )
}

/// A synthetic stack of 96 slices of 256 x 256 with: a mean image and its unsharded Zarr array, a brightness
/// CSV and plot, the whole stack as one uncompressed 6 MiB chunk (a multipart upload), and the power spectrum
/// along axis 0 as a sharded array.
fn full_job(storage: &str) -> String {
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: outs}}\nspec:\n{storage}  source: \
         {{synthetic: {{slices: 96, height: 256, width: 256}}, slicesPerChunk: 16}}\n  stages:\n  \
         - {{name: mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{image: mean.png, zarr: mean.zarr}}}}\n  \
         - {{name: brightness, input: source, reduce: {{op: mean, axes: [1, 2]}}, output: {{csv: brightness.csv, plot: {{file: brightness.png}}}}}}\n  \
         - {{name: raw, input: source, rechunk: {{chunks: [-1, 256, 256]}}, output: {{zarr: raw.zarr, zarrCompression: {{codec: none}}}}}}\n  \
         - {{name: series, input: source, rechunk: {{chunks: [-1, 16, 16]}}}}\n  \
         - {{name: power, input: series, fft: {{axis: 0, power: true, dtype: float32}}, output: {{zarr: power.zarr}}}}\n"
    )
}

/// A smaller job with other outputs, to replace the full one's.
fn small_job(storage: &str, slices: usize) -> String {
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: outs}}\nspec:\n{storage}  source: \
         {{synthetic: {{slices: {slices}, height: 64, width: 64}}, slicesPerChunk: 4}}\n  stages:\n  \
         - {{name: mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{zarr: mean.zarr}}}}\n  \
         - {{name: brightness, input: source, reduce: {{op: mean, axes: [1, 2]}}, output: {{csv: brightness.csv}}}}\n"
    )
}

/// `arrayjob run` of `manifest` into `out` with extra `args`; (success, stdout, stderr).
fn run(dir: &Path, manifest: &str, out: &str, args: &[&str]) -> (bool, String, String) {
    let m = write(dir, "job.yaml", manifest);
    let mut all = vec!["run", &m, "--out", out, "--threads", "2"];
    all.extend_from_slice(args);
    arrayjob_aws(dir, &all, &s3_credentials(server()))
}

/// The outputs of a local run of `manifest` (without `summary.json`, whose timings differ).
fn local_outputs(dir: &Path, manifest: &str) -> BTreeMap<String, Vec<u8>> {
    let out = dir.join("local");
    let (ok, _, err) = run(dir, manifest, &out.display().to_string(), &[]);
    assert!(ok, "local run failed: {err}");
    let mut files = files_under(&out);
    files.remove("summary.json");
    files
}

/// Objects of the distributed runtime's own reports, which a local run does not write.
const DISTRIBUTED_REPORTS: [&str; 3] = ["workers.json", "timeline.html", "timeline.png"];

/// Splits `summary.json` off the objects and returns its JSON.
fn take_summary(objects: &mut BTreeMap<String, Vec<u8>>) -> serde_json::Value {
    let text = objects
        .remove("summary.json")
        .expect("no summary.json on S3");
    serde_json::from_slice(&text).expect("summary.json is JSON")
}

#[test]
fn outputs_on_s3_from_three_workers_equal_the_local_run_and_zarr_python_reads_them() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let manifest = full_job(&storage(s3));
    let local = local_outputs(d.path(), &manifest);
    let (ok, stdout, err) = run(
        d.path(),
        &manifest,
        &format!("s3://{BUCKET}/dist"),
        &["--workers", "3"],
    );
    assert!(ok, "s3 run failed: {err}");
    assert!(
        stdout.contains(&format!("outputs in s3://{BUCKET}/dist/")),
        "{stdout}"
    );
    let mut remote = objects(s3, "dist/");
    let summary = take_summary(&mut remote);
    for name in DISTRIBUTED_REPORTS {
        assert!(remote.remove(name).is_some(), "no {name} in the outputs");
    }
    assert_eq!(
        remote.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>(),
        "other objects than the local run's files (a lock, staging or journal left behind?)"
    );
    for (k, v) in &local {
        assert!(remote[k] == *v, "{k} differs from the local run's file");
    }
    assert!(
        local.keys().any(|k| k.starts_with("power.zarr/c/")),
        "power.zarr has no shard: {:?}",
        local.keys()
    );
    let paths: Vec<&str> = summary["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o["path"].as_str().expect("path"))
        .collect();
    assert!(
        paths.contains(&"power.zarr") && paths.contains(&"brightness.png"),
        "{paths:?}"
    );

    let mut py = std::process::Command::new(python());
    py.arg(repo_root().join("tests/oracle/zarr_s3_equal.py"))
        .args([
            &s3.endpoint,
            BUCKET,
            "dist",
            &d.path().join("local").display().to_string(),
        ])
        .args(["mean.zarr", "raw.zarr", "power.zarr"])
        .envs(s3_credentials(s3));
    let o = py.output().expect("run python");
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "zarr-python over S3:\n{text}");
    assert_eq!(text.matches(" equal").count(), 3, "{text}");
}

#[test]
fn a_rerun_replaces_the_outputs_as_a_whole_and_large_objects_go_in_parts() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let out = format!("s3://{BUCKET}/rerun");
    let (ok, _, err) = run(d.path(), &full_job(&storage(s3)), &out, &[]);
    assert!(ok, "first run failed: {err}");
    let mut first = objects(s3, "rerun/");
    let summary = take_summary(&mut first);
    let counters = &summary["s3"];
    assert!(
        counters["multipartUploads"].as_u64() >= Some(1),
        "the 6 MiB chunk did not go in parts: {counters}"
    );
    assert!(counters["bytesPut"].as_u64() > Some(6 << 20), "{counters}");
    assert!(first.contains_key("raw.zarr/c/0/0/0"), "{:?}", first.keys());

    let manifest = small_job(&storage(s3), 12);
    let local = local_outputs(d.path(), &manifest);
    let (ok, _, err) = run(d.path(), &manifest, &out, &[]);
    assert!(ok, "second run failed: {err}");
    let mut second = objects(s3, "rerun/");
    take_summary(&mut second);
    assert_eq!(
        second, local,
        "the rerun's outputs are not exactly the local run's (leftovers of the first run?)"
    );
}

#[test]
fn a_failed_run_leaves_the_previous_outputs_untouched_and_no_staging() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let out = format!("s3://{BUCKET}/failed");
    let (ok, _, err) = run(d.path(), &small_job(&storage(s3), 12), &out, &[]);
    assert!(ok, "first run failed: {err}");
    let before = objects(s3, "failed/");

    // Slices 0-2 exist, 3 does not: the run fails while loading, after chunks were written to staging.
    let slices = d.path().join("slices");
    std::fs::create_dir_all(&slices).expect("mkdir");
    for i in 0..3u8 {
        let img = image::GrayImage::from_pixel(16, 16, image::Luma([i * 40 + 1]));
        img.save(slices.join(format!("{i}.png"))).expect("png");
    }
    let failing = small_job(&storage(s3), 12).replace(
        "{synthetic: {slices: 12, height: 64, width: 64}, slicesPerChunk: 4}",
        "{files: {pattern: \"slices/{index}.png\", stop: 8}, slicesPerChunk: 1}",
    );
    let (ok, _, err) = run(d.path(), &failing, &out, &["--workers", "2"]);
    assert!(!ok, "the run succeeded");
    // Whichever missing slice a worker tried first.
    assert!(
        (3..8).any(|i| err.contains(&format!("slices/{i}.png: No such file"))),
        "{err}"
    );
    assert_eq!(
        objects(s3, "failed/"),
        before,
        "a failed run changed the outputs or left staging, journal or lock objects"
    );
}

#[test]
fn a_held_lock_refuses_a_run_and_an_expired_one_is_taken_over() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let out = format!("s3://{BUCKET}/locked");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let lock = |expires: u64| {
        format!(r#"{{"holder":"pid 7 on elsewhere","run":"r1","expires":{expires}}}"#).into_bytes()
    };
    put(s3, "locked/.arrayjob.lock", &lock(now + 600));
    let (ok, _, err) = run(d.path(), &small_job(&storage(s3), 8), &out, &[]);
    assert!(!ok, "the run succeeded under another run's lock");
    assert_eq!(
        err.trim_end(),
        format!(
            "error: output directory s3://{BUCKET}/locked is in use by another arrayjob run (pid 7 on elsewhere \
             (run r1) holds s3://{BUCKET}/locked/.arrayjob.lock); wait for it to finish or choose another --out"
        )
    );
    assert_eq!(
        objects(s3, "locked/").keys().collect::<Vec<_>>(),
        [".arrayjob.lock"],
        "the refused run wrote something"
    );

    put(s3, "locked/.arrayjob.lock", &lock(now - 1));
    let (ok, _, err) = run(d.path(), &small_job(&storage(s3), 8), &out, &[]);
    assert!(ok, "the run did not take over an expired lock: {err}");
    let left = objects(s3, "locked/");
    assert!(
        left.contains_key("summary.json") && !left.contains_key(".arrayjob.lock"),
        "{:?}",
        left.keys()
    );
}

#[test]
fn gc_finishes_an_interrupted_publish_and_removes_leftover_staging() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    // The state a publish killed half way leaves: old outputs and summary in place, the new run's objects in
    // its staging prefix, the journal naming both; and the staging of a run killed before its publish.
    put(s3, "gc/old.csv", b"old\n");
    put(s3, "gc/keep.csv", b"old keep\n");
    put(
        s3,
        "gc/summary.json",
        br#"{"outputs":[{"path":"old.csv"},{"path":"keep.csv"}]}"#,
    );
    put(s3, "gc/.arrayjob-staging-a/keep.csv", b"new keep\n");
    put(s3, "gc/.arrayjob-staging-a/new.zarr/zarr.json", b"{}");
    put(s3, "gc/.arrayjob-staging-a/new.zarr/c/0", b"chunk");
    let staged_summary = br#"{"run":"a","outputs":[{"path":"keep.csv"},{"path":"new.zarr"}]}"#;
    put(s3, "gc/.arrayjob-staging-a/summary.json", staged_summary);
    put(
        s3,
        "gc/.arrayjob-publish.json",
        br#"{"version":2,"run":"a","staging":"gc/.arrayjob-staging-a/","outputs":["keep.csv","new.zarr"],"previous":[{"path":"old.csv","keys":["old.csv"]}]}"#,
    );
    put(s3, "gc/.arrayjob-staging-b/x.csv", b"killed run\n");

    let m = write(d.path(), "job.yaml", &small_job(&storage(s3), 8));
    let location = format!("s3://{BUCKET}/gc");
    let (ok, stdout, err) = arrayjob_aws(
        d.path(),
        &["gc", &location, "--file", &m],
        &s3_credentials(s3),
    );
    assert!(ok, "gc failed: {err}");
    // The published run's staging is gone with its publish; the killed run's is the leftover.
    assert!(
        stdout.contains("removed s3://results/gc/.arrayjob-staging-b/")
            && stdout.contains("1 leftover staging prefix(es) removed"),
        "{stdout}"
    );
    let left = objects(s3, "gc/");
    let expected: BTreeMap<String, Vec<u8>> = [
        ("keep.csv", &b"new keep\n"[..]),
        ("new.zarr/c/0", b"chunk"),
        ("new.zarr/zarr.json", b"{}"),
        ("summary.json", staged_summary),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_vec()))
    .collect();
    assert_eq!(left, expected);
}

/// Every object of the bucket but the slices and scratch of other tests: what a refused journal must not touch.
fn bucket_snapshot(s3: &S3Endpoint, prefixes: &[&str]) -> BTreeMap<String, Vec<u8>> {
    prefixes
        .iter()
        .flat_map(|p| {
            objects(s3, p)
                .into_iter()
                .map(move |(k, v)| (format!("{p}{k}"), v))
        })
        .collect()
}

#[test]
fn a_journal_that_is_not_one_arrayjob_writes_there_is_refused_and_nothing_is_deleted() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let m = write(d.path(), "job.yaml", &small_job(&storage(s3), 8));
    // Beside the location: what an unchecked journal would reach (its staging, a sibling, the bucket).
    put(s3, "beside/data.csv", b"someone else's\n");
    put(s3, "journal-out2/x.csv", b"a sibling location\n");
    put(s3, "journal-out/keep/a.csv", b"the user's own\n");
    put(
        s3,
        "journal-out/.arrayjob-staging-r1/summary.json",
        br#"{"run":"r1","outputs":[{"path":"new.csv"}]}"#,
    );
    put(s3, "journal-out/.arrayjob-staging-r1/new.csv", b"new\n");
    let cases: [(&str, &str); 7] = [
        // The outside try of the issue: the empty staging prefix is the whole bucket.
        (
            r#"{"staging":"","outputs":[],"previous":[]}"#,
            "not a publish journal",
        ),
        (
            r#"{"version":2,"run":"r1","staging":"","outputs":[],"previous":[]}"#,
            r#"staging "" is not this location's staging prefix of run r1"#,
        ),
        (
            r#"{"version":2,"run":"r1","staging":"beside/","outputs":["data.csv"],"previous":[]}"#,
            r#"staging "beside/" is not this location's staging prefix"#,
        ),
        (
            r#"{"version":2,"run":"../x","staging":"journal-out/.arrayjob-staging-../x/","outputs":[],"previous":[]}"#,
            r#"run "../x" is not a run id"#,
        ),
        (
            r#"{"version":2,"run":"r1","staging":"journal-out/.arrayjob-staging-r1/","outputs":["new.csv"],"previous":[{"path":"keep","keys":["keep/a.csv","../journal-out2/x.csv"]}]}"#,
            r#"key "../journal-out2/x.csv" of previous output "keep" is not inside it"#,
        ),
        (
            r#"{"version":2,"run":"r1","staging":"journal-out/.arrayjob-staging-r1/","outputs":["../beside"],"previous":[]}"#,
            r#"names "../beside", which is not an output path"#,
        ),
        (
            r#"{"version":2,"run":"r1","staging":"journal-out/.arrayjob-staging-r1/","outputs":["other.csv"],"previous":[]}"#,
            "its staging's summary.json is not the summary of run r1 with the journal's outputs",
        ),
    ];
    for (journal, problem) in cases {
        put(s3, "journal-out/.arrayjob-publish.json", journal.as_bytes());
        let before = bucket_snapshot(s3, &["beside/", "journal-out2/", "journal-out/"]);
        let (ok, _, err) = arrayjob_aws(
            d.path(),
            &["gc", &format!("s3://{BUCKET}/journal-out"), "--file", &m],
            &s3_credentials(s3),
        );
        assert!(!ok, "gc acted on {journal}");
        assert!(
            err.contains(&format!(
                "s3://{BUCKET}/journal-out/.arrayjob-publish.json: "
            )) && err.contains(problem)
                && err.contains("nothing was changed"),
            "{journal}: {err}"
        );
        let (ok, _, err) = run(
            d.path(),
            &small_job(&storage(s3), 8),
            &format!("s3://{BUCKET}/journal-out"),
            &[],
        );
        assert!(
            !ok && err.contains(problem),
            "a run went on over {journal}: {err}"
        );
        assert_eq!(
            bucket_snapshot(s3, &["beside/", "journal-out2/", "journal-out/"]),
            before,
            "{journal}: something changed"
        );
    }
}

#[test]
fn a_summary_arrayjob_did_not_write_deletes_nothing_on_s3() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    put(s3, "handwritten/keep/a.csv", b"mine\n");
    put(s3, "handwritten/notes.txt", b"mine too\n");
    // Hand-written: paths without fingerprints, one with a made-up fingerprint, one outside the location.
    put(
        s3,
        "handwritten/summary.json",
        br#"{"outputs":[{"path":"keep"},{"path":"notes.txt","fingerprint":{"files":1,"bytes":9,"sha256":"00"}},{"path":"../beside"}]}"#,
    );
    put(s3, "beside/data.csv", b"someone else's\n");
    let out = format!("s3://{BUCKET}/handwritten");
    let (ok, _, err) = run(d.path(), &small_job(&storage(s3), 8), &out, &[]);
    assert!(ok, "the run failed: {err}");
    let left = objects(s3, "handwritten/");
    assert_eq!(
        left.get("keep/a.csv").map(Vec::as_slice),
        Some(&b"mine\n"[..])
    );
    assert_eq!(
        left.get("notes.txt").map(Vec::as_slice),
        Some(&b"mine too\n"[..])
    );
    assert_eq!(
        objects(s3, "beside/").get("data.csv").map(Vec::as_slice),
        Some(&b"someone else's\n"[..])
    );
    // And a run's own previous outputs, fingerprinted, are replaced: the next run of another job removes them.
    let summary: serde_json::Value = serde_json::from_slice(&left["summary.json"]).expect("json");
    assert!(
        summary["outputs"][0]["fingerprint"]["sha256"].is_string(),
        "{summary}"
    );
}

/// The sum over workers of a store counter in `workers.json`.
fn workers_store_sum(report: &[u8], field: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(report).expect("workers.json");
    v["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["store"][field].as_u64().expect(field))
        .sum()
}

#[test]
fn spill_beyond_the_disk_limit_goes_to_s3_and_a_successful_run_leaves_no_scratch() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let manifest = full_job(&storage(s3)).replace("name: outs", "name: spilly");
    let expected = local_outputs(d.path(), &manifest);
    let out = d.path().join("spilled");
    let (ok, _, err) = run(
        d.path(),
        &manifest,
        &out.display().to_string(),
        &[
            "--workers",
            "2",
            "--memory-limit",
            "2MiB",
            "--spill-disk-limit",
            "1MiB",
        ],
    );
    assert!(ok, "spilling run failed: {err}");
    let mut got = files_under(&out);
    got.remove("summary.json");
    let report = got.remove("workers.json").expect("workers.json");
    got.remove("timeline.html");
    got.remove("timeline.png");
    assert!(got == expected, "outputs of the spilling run differ");
    let to_s3 = workers_store_sum(&report, "spilledToS3Bytes");
    let spilled = workers_store_sum(&report, "spilledBytes");
    assert!(
        to_s3 > 0 && to_s3 < spilled,
        "spilled {spilled} bytes, {to_s3} of them to S3"
    );
    assert!(
        objects(s3, "scratch/spilly/").is_empty(),
        "the successful run left scratch objects"
    );
}

#[test]
fn a_damaged_spilled_object_is_rebuilt_from_lineage_and_never_used() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let manifest = full_job(&storage(s3)).replace("name: outs", "name: damaged");
    let expected = local_outputs(d.path(), &manifest);
    let out = d.path().join("damaged");
    let m = write(d.path(), "job.yaml", &manifest);
    let mut env = s3_credentials(s3);
    // Each worker flips one byte of the first chunk it spills to S3, as a storage fault would.
    env.push(("ARRAYJOB_FAULT_DAMAGE_SPILL".into(), "1".into()));
    let (ok, _, err) = arrayjob_aws(
        d.path(),
        &[
            "run",
            &m,
            "--out",
            &out.display().to_string(),
            "--threads",
            "2",
            "--workers",
            "2",
            "--memory-limit",
            "2MiB",
            "--spill-disk-limit",
            "1MiB",
        ],
        &env,
    );
    assert!(ok, "the run failed: {err}");
    let mut got = files_under(&out);
    got.remove("summary.json");
    let report: serde_json::Value =
        serde_json::from_slice(&got.remove("workers.json").expect("workers.json")).expect("json");
    got.remove("timeline.html");
    got.remove("timeline.png");
    assert!(
        got == expected,
        "outputs of the run with damaged spills differ"
    );
    assert!(
        report["store"]["unreadable"].as_u64() >= Some(1),
        "{}",
        report["store"]
    );
    assert!(report["recomputed"].as_u64() >= Some(1), "{report}");
    eprintln!(
        "damaged spill: unreadable {}, recomputed {}",
        report["store"]["unreadable"], report["recomputed"]
    );
}

/// Runs job `name` (with `storage`) that fails while its chunks are spilled to S3: slices 0-2 exist, 3-7 do
/// not, so the pieces of 0-2 wait for the merges, spilled straight to S3 (1 KiB of memory, no disk), when
/// loading a missing slice fails. Asserts the failure and returns the manifest.
fn fail_while_spilling(dir: &Path, name: &str, storage: &str) -> String {
    let slices = dir.join("slices");
    std::fs::create_dir_all(&slices).expect("mkdir");
    for i in 0..3u8 {
        let img = image::GrayImage::from_fn(64, 64, |c, r| {
            image::Luma([(r * 3 + c + u32::from(i)) as u8])
        });
        img.save(slices.join(format!("{i}.png"))).expect("png");
    }
    let manifest = format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: {name}}}\nspec:\n{storage}  source: \
         {{files: {{pattern: \"slices/{{index}}.png\", stop: 8}}, slicesPerChunk: 1}}\n  stages:\n  \
         - {{name: cols, input: source, rechunk: {{chunks: [-1, 8, 8]}}, output: {{zarr: cols.zarr}}}}\n"
    );
    let out = dir.join(format!("{name}-out")).display().to_string();
    let (ok, _, err) = run(
        dir,
        &manifest,
        &out,
        &["--memory-limit", "1KiB", "--spill-disk-limit", "0B"],
    );
    assert!(!ok, "the run succeeded");
    assert!(
        (3..8).any(|i| err.contains(&format!("slices/{i}.png: No such file"))),
        "{err}"
    );
    manifest
}

#[test]
fn a_failed_run_keeps_its_scratch_and_gc_removes_it() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let manifest = fail_while_spilling(d.path(), "kept", &storage(s3));
    let kept = objects(s3, "scratch/kept/");
    assert!(
        kept.keys().any(|k| k.contains("/spill/local/")),
        "the failed run kept no spilled object: {:?}",
        kept.keys()
    );

    let m = write(d.path(), "job.yaml", &manifest);
    let (ok, stdout, err) = arrayjob_aws(
        d.path(),
        &["gc", "--file", &m, "--scratch"],
        &s3_credentials(s3),
    );
    assert!(ok, "gc failed: {err}");
    assert!(
        stdout.contains(&format!(
            "s3://{BUCKET}/scratch/kept/: {} scratch object(s) removed",
            kept.len()
        )),
        "{stdout}"
    );
    assert!(objects(s3, "scratch/kept/").is_empty());
}

#[test]
fn keep_failed_scratch_false_removes_a_failed_run_s_spill() {
    let s3 = server();
    let d = tempfile::tempdir().expect("tmp");
    let storage = storage(s3).replace("partSizeMiB: 5", "partSizeMiB: 5, keepFailedScratch: false");
    fail_while_spilling(d.path(), "unkept", &storage);
    assert!(
        objects(s3, "scratch/unkept/").is_empty(),
        "a failed run with keepFailedScratch: false kept its scratch"
    );
}

#[test]
fn objects_beyond_one_copy_request_are_copied_in_ranged_parts() {
    use arrayjob_engine::s3::objects::{Bucket, block as on_s3};
    use arrayjob_engine::s3::{RequestPolicy, S3Connection, S3Credentials, S3Settings};
    let s3 = server();
    let body: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    put(s3, "copies/big", &body);
    let conn = S3Connection::connect(&S3Settings {
        region: Some(s3.region.clone()),
        endpoint: Some(s3.endpoint.clone()),
        force_path_style: true,
        credentials: S3Credentials::Static {
            access_key: s3.access_key.clone(),
            secret_key: s3.secret_key.clone(),
            session_token: None,
        },
    })
    .expect("connect");
    let bucket = Bucket::new(&conn, BUCKET, RequestPolicy::default(), 5 << 20);
    on_s3(async move {
        bucket
            .copy_in_parts("copies/big", "copies/big-copy", 12 << 20, 5 << 20)
            .await
    })
    .expect("copy in parts");
    let got = objects(s3, "copies/");
    assert!(got["big-copy"] == body, "the copy differs");
    let client = s3.client();
    let etag = on_tokio(async move {
        client
            .head_object()
            .bucket(BUCKET)
            .key("copies/big-copy")
            .send()
            .await
            .expect("head")
            .e_tag()
            .unwrap_or_default()
            .to_owned()
    });
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "not a 3-part upload: {etag}"
    );
}
