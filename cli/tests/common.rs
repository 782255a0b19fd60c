//! Helpers shared by the CLI's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One test of this binary at a time, for tests that start several processes or watch timing on two cores.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `img` encoded as PNG.
pub fn png_bytes(img: impl Into<image::DynamicImage>) -> Vec<u8> {
    let mut bytes = Vec::new();
    img.into()
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("encode png");
    bytes
}

/// Slice `i` of the S3 tests' stacks: a `side x side` uint8 PNG whose pixels depend on `i`, row and column.
pub fn slice_png(i: usize, side: u32) -> Vec<u8> {
    png_bytes(image::GrayImage::from_fn(side, side, |c, r| {
        image::Luma([((i as u32 * 37 + r * 5 + c * 3 + (r * c) % 13) % 253) as u8])
    }))
}

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python with numpy, zarr and Pillow: `$ARRAYJOB_PYTHON`, or the venv `scripts/setup-python.sh` makes.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ARRAYJOB_PYTHON") {
        return PathBuf::from(p);
    }
    let out = Command::new(repo_root().join("scripts/setup-python.sh"))
        .output()
        .expect("run setup-python.sh");
    assert!(
        out.status.success(),
        "setup-python.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a Python script of `tests/oracle/` with arguments; panics with its output when it fails.
pub fn oracle(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo_root().join("tests/oracle").join(script))
        .args(args)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

/// Runs the `arrayjob` binary.
pub fn arrayjob(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args(args)
        .env("ARRAYJOB_QUIET", "true")
        .output()
        .expect("run arrayjob")
}

/// Runs `arrayjob` and returns (success, stdout, stderr).
pub fn arrayjob_text(args: &[&str]) -> (bool, String, String) {
    let o = arrayjob(args);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p.display().to_string()
}

/// Every file under `dir` (relative path -> bytes); empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("prefix").display().to_string();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// Runs `arrayjob` with `env` (AWS variables) and nothing from this machine's AWS configuration (no profile,
/// endpoint, config files or instance metadata; `scratch` holds an empty config file); returns (success,
/// stdout, stderr).
pub fn arrayjob_aws(
    scratch: &Path,
    args: &[&str],
    env: &[(String, String)],
) -> (bool, String, String) {
    let empty = write(scratch, "empty-aws-file", "");
    let o = Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args(args)
        .env("ARRAYJOB_QUIET", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env("AWS_CONFIG_FILE", &empty)
        .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run arrayjob");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Runs `f` to its end on a fresh single-thread tokio runtime (for the S3 client of the test environment).
pub fn on_tokio<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The test identity's credentials and region, as environment variables for `arrayjob`.
pub fn s3_credentials(s3: &arrayjob_testenv::S3Endpoint) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key.clone()),
        ("AWS_REGION".into(), s3.region.clone()),
    ]
}

/// Creates `bucket` on the test server.
pub fn s3_create_bucket(s3: &arrayjob_testenv::S3Endpoint, bucket: &str) {
    let (client, bucket) = (s3.client(), bucket.to_owned());
    on_tokio(async move {
        client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create bucket");
    });
}

/// Writes `body` at `key` in `bucket`.
pub fn s3_put(s3: &arrayjob_testenv::S3Endpoint, bucket: &str, key: &str, body: &[u8]) {
    let (client, bucket, key) = (s3.client(), bucket.to_owned(), key.to_owned());
    let body = aws_sdk_s3::primitives::ByteStream::from(body.to_vec());
    on_tokio(async move {
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .expect("put");
    });
}

/// Every object under `prefix` in `bucket` (key relative to `prefix` -> bytes, all pages); `None` when the
/// server does not answer.
pub fn s3_objects(
    s3: &arrayjob_testenv::S3Endpoint,
    bucket: &str,
    prefix: &str,
) -> Option<std::collections::BTreeMap<String, Vec<u8>>> {
    let (client, bucket, prefix) = (s3.client(), bucket.to_owned(), prefix.to_owned());
    on_tokio(async move {
        let mut out = std::collections::BTreeMap::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(&bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for o in page.ok()?.contents() {
                let key = o.key()?.to_owned();
                let answer = client
                    .get_object()
                    .bucket(&bucket)
                    .key(&key)
                    .send()
                    .await
                    .ok()?;
                let bytes = answer.body.collect().await.ok()?.into_bytes().to_vec();
                out.insert(key[prefix.len()..].to_owned(), bytes);
            }
        }
        Some(out)
    })
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Process ids of the children of `parent` (the local workers of a run).
pub fn children_of(parent: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// The coordinator's progress snapshot, once it answers.
pub fn progress(port: u16, token: &str) -> Option<serde_json::Value> {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{port}/v1/progress"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .ok()?
        .json()
        .ok()
}
