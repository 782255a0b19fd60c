//! S3 benchmark on a loopback SeaweedFS (`weed mini` from `tests/env/setup.sh`):
//!
//! 1. PUT then GET throughput of objects of 1 MiB and 16 MiB at 1, 8 and 32 requests in flight (8 is what a
//!    worker's shard uploads and an `s3` source use by default), through the engine's own `Bucket`;
//! 2. a job (default `examples/quickstart.yaml`) on `--workers 2` with its outputs in a local directory and on
//!    S3 (`--out s3://...`): median wall time of `REPS` fresh runs each, objects and bytes written, requests;
//! 3. the same job with outputs on S3 and `spec.storage.s3` set, `exchange: direct` against `exchange: s3`:
//!    median wall time, bytes and keys shipped through S3, requests.
//!
//! ```text
//! cargo build --release -p arrayjob-cli --bin arrayjob --example s3_bench
//! $CARGO_TARGET_DIR/release/examples/s3_bench [JOB.yaml] [REPS]
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use arrayjob_engine::s3::objects::{Bucket, block};
use arrayjob_engine::s3::{RequestPolicy, S3Connection, S3Settings};
use arrayjob_testenv::{S3Endpoint, S3Server};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

const BUCKET: &str = "bench";
/// Set (to the server's endpoint and identity, JSON) in the second process, which runs the benchmark.
const CHILD: &str = "ARRAYJOB_S3_BENCH_SERVER";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let job = args
        .first()
        .map_or_else(|| root.join("examples/quickstart.yaml"), PathBuf::from);
    let reps: usize = args.get(1).map_or(Ok(3), |r| r.parse())?;
    // The SDK takes the test identity from the environment: start the server, then this program again with it.
    let Ok(endpoint) = std::env::var(CHILD) else {
        let server = S3Server::start()?;
        let s3 = server.endpoint();
        let status = Command::new(std::env::current_exe()?)
            .args(&args)
            .envs(s3.env_vars())
            .env(
                CHILD,
                serde_json::to_string(&(&s3.endpoint, &s3.access_key, &s3.secret_key, &s3.region))?,
            )
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    };
    let (endpoint, access_key, secret_key, region): (String, String, String, String) =
        serde_json::from_str(&endpoint)?;
    let s3 = S3Endpoint {
        endpoint,
        access_key,
        secret_key,
        region,
    };
    let conn = S3Connection::connect(&S3Settings {
        endpoint: Some(s3.endpoint.clone()),
        force_path_style: true,
        ..S3Settings::default()
    })?;
    let bucket = Bucket::new(&conn, BUCKET, RequestPolicy::default(), 16 << 20);
    let client = s3.client();
    block(async move {
        client
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .map_err(|e| {
                arrayjob_engine::s3::S3Error::request(None, "CreateBucket", BUCKET, e.to_string())
            })?;
        Ok::<_, arrayjob_engine::s3::S3Error>(())
    })?;

    println!("## PUT / GET throughput (loopback SeaweedFS)\n");
    println!("| object | count | in flight | PUT MB/s | PUT req/s | GET MB/s | GET req/s |");
    println!("|---|---|---|---|---|---|---|");
    for (size, count) in [(1usize << 20, 256usize), (16 << 20, 32)] {
        for concurrency in [1usize, 8, 32] {
            let (put, get) = throughput(&bucket, size, count, concurrency)?;
            let mb = (size * count) as f64 / 1e6;
            println!(
                "| {} MiB | {count} | {concurrency} | {:.0} | {:.0} | {:.0} | {:.0} |",
                size >> 20,
                mb / put,
                count as f64 / put,
                mb / get,
                count as f64 / get
            );
        }
    }

    println!(
        "\n## {} on --workers 2, outputs local vs on S3 (median of {reps})\n",
        job.display()
    );
    let exe = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("arrayjob"))
        .ok_or_else(|| anyhow::anyhow!("cannot find the arrayjob binary"))?;
    let scratch = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for target in ["local", "s3"] {
        let mut times = Vec::new();
        let mut last = serde_json::Value::Null;
        for rep in 0..reps {
            let out = match target {
                "local" => scratch
                    .path()
                    .join(format!("out-{rep}"))
                    .display()
                    .to_string(),
                _ => format!("s3://{BUCKET}/runs/{rep}"),
            };
            let t0 = Instant::now();
            let o = Command::new(&exe)
                .args([
                    "run",
                    &job.display().to_string(),
                    "--out",
                    &out,
                    "--workers",
                    "2",
                ])
                .env("ARRAYJOB_QUIET", "true")
                .output()?;
            anyhow::ensure!(
                o.status.success(),
                "run failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            times.push(t0.elapsed().as_secs_f64());
            if target == "s3" {
                last = s3_counts(&s3, &format!("runs/{rep}/"))?;
            }
        }
        times.sort_by(f64::total_cmp);
        rows.push((target, times[times.len() / 2], times, last));
    }
    let exchange = exchange_rows(&exe, &job, &s3, reps, scratch.path())?;
    println!(
        "| outputs | median s | runs (s) | S3 objects published | bytes put by workers | bytes put by the coordinator | requests (workers + coordinator) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (target, median, times, counts) in rows {
        let runs: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "| {target} | {median:.2} | {} | {} | {} | {} | {} |",
            runs.join(", "),
            counts["objects"],
            counts["workerBytes"],
            counts["coordinatorBytes"],
            counts["requests"]
        );
    }
    println!(
        "\n## {} on --workers 2, outputs on S3, exchange direct vs s3 (median of {reps})\n",
        job.display()
    );
    println!(
        "| exchange | median s | runs (s) | pieces shipped | bytes shipped | bytes put by workers | bytes got by workers | requests |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (mode, median, times, c) in exchange {
        let runs: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "| {mode} | {median:.2} | {} | {} | {} | {} | {} | {} |",
            runs.join(", "),
            c["shippedKeys"],
            c["shippedBytes"],
            c["workerBytes"],
            c["bytesGot"],
            c["requests"]
        );
    }
    Ok(())
}

type Row = (&'static str, f64, Vec<f64>, serde_json::Value);

/// Runs `job` with `spec.storage.s3` on the bench server and `exchange: direct`, then `s3`, outputs on S3.
fn exchange_rows(
    exe: &std::path::Path,
    job: &std::path::Path,
    s3: &S3Endpoint,
    reps: usize,
    scratch: &std::path::Path,
) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(job)?;
    let mut rows = Vec::new();
    for mode in ["direct", "s3"] {
        let storage = format!(
            "spec:\n  exchange: {mode}\n  storage: {{s3: {{bucket: {BUCKET}, endpoint: \"{}\", region: {}, forcePathStyle: true}}}}\n",
            s3.endpoint, s3.region
        );
        let manifest = scratch.join(format!("exchange-{mode}.yaml"));
        std::fs::write(&manifest, text.replacen("spec:\n", &storage, 1))?;
        let mut times = Vec::new();
        let mut last = serde_json::Value::Null;
        for rep in 0..reps {
            let prefix = format!("exchange-{mode}/{rep}/");
            let t0 = Instant::now();
            let o = Command::new(exe)
                .args(["run", &manifest.display().to_string()])
                .args([
                    "--out",
                    &format!("s3://{BUCKET}/{prefix}"),
                    "--workers",
                    "2",
                ])
                .env("ARRAYJOB_QUIET", "true")
                .output()?;
            anyhow::ensure!(
                o.status.success(),
                "run failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            times.push(t0.elapsed().as_secs_f64());
            last = s3_counts(s3, &prefix)?;
        }
        times.sort_by(f64::total_cmp);
        rows.push((mode, times[times.len() / 2], times, last));
    }
    Ok(rows)
}

/// Seconds to PUT `count` objects of `size` bytes with `concurrency` in flight, then to GET them.
fn throughput(
    bucket: &Bucket,
    size: usize,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, f64)> {
    let body = Bytes::from(vec![7u8; size]);
    let prefix = format!("tp/{size}-{concurrency}/");
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    let (b, k) = (bucket.clone(), keys.clone());
    let t0 = Instant::now();
    block(async move {
        futures::stream::iter(k)
            .map(|key| {
                let (b, body) = (b.clone(), body.clone());
                async move { b.put(&key, body).await }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await
    })?;
    let put = t0.elapsed().as_secs_f64();
    let (b, k) = (bucket.clone(), keys);
    let t0 = Instant::now();
    block(async move {
        futures::stream::iter(k)
            .map(|key| {
                let b = b.clone();
                async move {
                    b.get(&key)
                        .await
                        .map(|o| o.map_or(0, |(bytes, _)| bytes.len()))
                }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<usize>>()
            .await
    })?;
    let get = t0.elapsed().as_secs_f64();
    let (b, p) = (bucket.clone(), prefix);
    block(async move { b.delete_prefix(&p).await })?;
    Ok((put, get))
}

/// What a run on S3 wrote: objects under its prefix, bytes and requests from its `summary.json` and
/// `workers.json`.
fn s3_counts(s3: &S3Endpoint, prefix: &str) -> anyhow::Result<serde_json::Value> {
    let (client, prefix) = (s3.client(), prefix.to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut objects = 0usize;
        let mut pages = client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            objects += page?.contents().len();
        }
        let read = |key: String| {
            let client = client.clone();
            async move {
                let o = client.get_object().bucket(BUCKET).key(key).send().await?;
                let bytes = o.body.collect().await?.into_bytes();
                anyhow::Ok(serde_json::from_slice::<serde_json::Value>(&bytes)?)
            }
        };
        let summary = read(format!("{prefix}summary.json")).await?;
        let workers = read(format!("{prefix}workers.json")).await?;
        let sum = |field: &str| -> u64 {
            workers["workers"]
                .as_array()
                .map(|ws| ws.iter().filter_map(|w| w["s3"][field].as_u64()).sum())
                .unwrap_or(0)
        };
        Ok(serde_json::json!({
            "objects": objects,
            "workerBytes": sum("bytesPut"),
            "coordinatorBytes": summary["s3"]["bytesPut"],
            "requests": sum("requests") + summary["s3"]["requests"].as_u64().unwrap_or(0),
            "shippedBytes": workers["store"]["shippedBytes"],
            "shippedKeys": workers["store"]["shippedKeys"],
            "bytesGot": sum("bytesGot"),
        }))
    })
}
