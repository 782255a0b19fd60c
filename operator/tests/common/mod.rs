//! Helpers shared by the operator's end-to-end tests (`operator_e2e.rs`, `tenancy_e2e.rs`): where the
//! repository and the built binaries are, and reading jobs, pods, logs and metrics through the test
//! environment's kubectl.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrayjob_testenv::TestEnv;
use serde_json::Value;

/// The workers' image name the manifests use (mapped to this build's `arrayjob`).
pub const IMAGE: &str = "ghcr.io/arrayjob/arrayjob:dev";
/// The operator's image name the chart uses.
pub const OPERATOR_IMAGE: &str = "ghcr.io/arrayjob/arrayjob-operator:dev";
/// The release namespace of the operator.
pub const SYSTEM: &str = "arrayjob-system";
/// The label of the operator's pods.
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=arrayjob";

/// The operator's metrics port in this binary's install (set when installed).
pub static METRICS_PORT: AtomicU16 = AtomicU16::new(0);

/// A path in the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A binary built next to this test's (`cargo build --release -p arrayjob-cli`).
pub fn sibling_binary(name: &str) -> PathBuf {
    // Next to this test's directory (`target/release/deps/..`), or in `$CARGO_TARGET_DIR/release` when the
    // build directory is elsewhere (`CARGO_BUILD_BUILD_DIR`).
    let exe = std::env::current_exe().expect("test exe");
    let mut candidates: Vec<PathBuf> = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .into_iter()
        .collect();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("release").join(name));
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!("{name} is missing in {candidates:?}: build it first (cargo build --release -p arrayjob-cli)")
        })
}

/// The condition of type `t` of a job.
pub fn condition<'a>(j: &'a Value, t: &str) -> Option<&'a Value> {
    j["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

/// The job `ns/name`; `None` when it does not exist (or cannot be read).
pub fn get_job(env: &TestEnv, ns: &str, name: &str) -> Option<Value> {
    let text = env
        .kubectl(&["get", "arrayjob", name, "-n", ns, "-o", "json"])
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// Waits up to `secs` for the job (`null` once it is gone) to satisfy `when`.
///
/// # Errors
/// On timeout, with the job's status and the operator's log.
pub fn wait_job(
    env: &TestEnv,
    ns: &str,
    name: &str,
    secs: u64,
    when: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let j = get_job(env, ns, name).unwrap_or(Value::Null);
        if when(&j) {
            return Ok(j);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {secs} s; job {name} is {}\n{}",
                j["status"],
                operator_log(env)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The pods of `ns` matching `selector`.
///
/// # Errors
/// When kubectl fails or answers something else than a pod list.
pub fn pods(env: &TestEnv, ns: &str, selector: &str) -> Result<Vec<Value>> {
    let text = env.kubectl(&["get", "pods", "-n", ns, "-l", selector, "-o", "json"])?;
    let v: Value = serde_json::from_str(&text).context("kubectl get pods: not JSON")?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

/// The operator's pods (none when they cannot be listed).
pub fn operator_pods(env: &TestEnv) -> Vec<Value> {
    pods(env, SYSTEM, OPERATOR_SELECTOR).unwrap_or_default()
}

/// The logs of every operator pod, each under its name.
pub fn operator_log(env: &TestEnv) -> String {
    let mut out = String::new();
    for p in operator_pods(env) {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        out += &format!(
            "--- {name}\n{}\n",
            env.pod_log(SYSTEM, name, "operator").unwrap_or_default()
        );
    }
    out
}

/// The Prometheus text an operator pod at `ip` serves.
///
/// # Errors
/// When the scrape fails.
pub async fn operator_metrics(ip: &str) -> Result<String> {
    let port = METRICS_PORT.load(Ordering::Relaxed);
    Ok(reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("http://{}:{port}/metrics", ip.trim()))
        .send()
        .await?
        .text()
        .await?)
}
