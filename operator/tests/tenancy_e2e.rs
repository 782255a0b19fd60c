//! Who may do what on a shared cluster, on the real control plane (tests/harness), with the operator installed
//! by `helm install` under a tight cleanup setting (5 attempts, 1 s back-off) and the image policy
//! `ghcr.io/arrayjob/*`:
//!
//! - ArrayJob names with dots and of 253 characters run to `Succeeded` (valid object names, the UID in the
//!   job id) and their NetworkPolicy is applied, selecting the job's pods and letting in the operator;
//! - the policy refuses an image, a service account, an unlabelled Secret and a catch-all toleration, each
//!   `Failed`/`PolicyViolation` naming its field, with no pod started; a missing Secret stalls the job;
//! - a coordinator (a fake one, a small Python HTTP server mapped to the job's image) answering
//!   `{"startSeconds": 1e300}`, or an endless body, gets `ProgressUnreadable` and leaves the operator running
//!   (no restart) while another job runs to `Succeeded`;
//! - deleting an ArrayJob ends in bounded time: its credentials Secret deleted first (gives up at once,
//!   `CleanupAbandoned`), S3 down for a while (`CleanupFailed`, then removed once S3 is back), S3 down for
//!   good (`CleanupAbandoned` after the attempts), `arrayjob.dev/skip-cleanup`, no Secret and no
//!   operator-identity cleanup (`CleanupSkipped`), and the deletion of the whole namespace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrayjob_testenv::{S3Server, TestEnv};
use serde_json::Value;

mod common;
use common::*;

/// Images of the fake coordinators (allowed by the policy: `ghcr.io/arrayjob/*`).
const HUGE_TIME_IMAGE: &str = "ghcr.io/arrayjob/hostile-time:dev";
const ENDLESS_IMAGE: &str = "ghcr.io/arrayjob/hostile-endless:dev";
const BUCKET: &str = "arrayjob-tenancy";
/// The operator's cleanup settings in this file's install.
const MAX_ATTEMPTS: u32 = 5;

/// A Python 3 for the fake coordinators: `ARRAYJOB_PYTHON` (scripts/setup-python.sh) or the system's.
fn python() -> PathBuf {
    std::env::var_os("ARRAYJOB_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

/// A fake coordinator: `run ... --listen IP:PORT` serves `GET /v1/progress` the way `mode` says (`time`: a
/// stage starting 1e300 s after the job; `endless`: a body that never ends); `worker ...` idles. Like any
/// image the job runs, it holds the job token (`ARRAYJOB_TOKEN`), so it proves its answers as
/// `runtime/src/auth/signature.rs` says (HMAC-SHA256 under the key derived from the token): the operator
/// reads them, and must survive what they say.
fn fake_coordinator(dir: &Path, mode: &str) -> Result<PathBuf> {
    let script = format!(
        r#"#!{python}
import hashlib, hmac, http.server, os, struct, sys, time
args = sys.argv[1:]
if not args or args[0] != "run":
    while True:
        time.sleep(3600)
host, port = args[args.index("--listen") + 1].rsplit(":", 1)
key = hmac.new(os.environ["ARRAYJOB_TOKEN"].strip().encode(), b"arrayjob runtime request signing key v1",
               hashlib.sha256).digest()

def proof(nonce, status):
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for field in (b"arrayjob answer v1", nonce, struct.pack("<H", status)):
        mac.update(struct.pack("<Q", len(field)))
        mac.update(field)
    return mac.hexdigest()

class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("authorization", "")
        fields = dict(kv.split("=", 1) for kv in auth.partition(" ")[2].split(",") if "=" in kv)
        self.send_response(200)
        self.send_header("x-arrayjob-proof", proof(bytes.fromhex(fields.get("nonce", "")), 200))
        self.send_header("content-type", "application/json")
        if "{mode}" == "endless":
            self.end_headers()
            try:
                self.wfile.write(b'{{"phase": "running", "stages": [], "steals": [')
                while True:
                    self.wfile.write(b"{{}}, " * 4096)
            except OSError:
                return
        body = (b'{{"phase": "running", "startedAtUnix": 1800000000, "stages": ['
                b'{{"name": "source", "tasksDone": 1, "tasksTotal": 4, "startSeconds": 1e300}}]}}')
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer((host, int(port)), Answer).serve_forever()
"#,
        python = python().display()
    );
    let path = dir.join(format!("fake-coordinator-{mode}.py"));
    std::fs::write(&path, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The CRD, the bucket, the image map and `helm install` of the chart (once per test binary).
async fn install(env: &TestEnv) -> Result<()> {
    static DONE: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut done = DONE.lock().await;
    if *done {
        return Ok(());
    }
    env.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &repo("crds/arrayjob.yaml").display().to_string(),
    ])?;
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/arrayjobs.arrayjob.dev",
        "--timeout=30s",
    ])?;
    let s3 = env.s3().client();
    if s3.head_bucket().bucket(BUCKET).send().await.is_err() {
        s3.create_bucket().bucket(BUCKET).send().await?;
    }
    env.map_image(
        OPERATOR_IMAGE,
        Path::new(env!("CARGO_BIN_EXE_arrayjob-operator")),
    )?;
    env.map_image(IMAGE, &sibling_binary("arrayjob"))?;
    let scripts = env.run_dir().join("fake-coordinators");
    std::fs::create_dir_all(&scripts)?;
    env.map_image(HUGE_TIME_IMAGE, &fake_coordinator(&scripts, "time")?)?;
    env.map_image(ENDLESS_IMAGE, &fake_coordinator(&scripts, "endless")?)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (repository, tag) = OPERATOR_IMAGE.rsplit_once(':').context("tag")?;
    let out = env.helm(&[
        "install",
        "arrayjob",
        &repo("charts/arrayjob").display().to_string(),
        "--namespace",
        SYSTEM,
        "--create-namespace",
        "--skip-crds",
        "--set",
        &format!("image.repository={repository},image.tag={tag},workerImage={IMAGE}"),
        "--set",
        &format!("metrics.port={port},logLevel=info,replicaCount=1"),
        "--set",
        "policy.allowedImages={ghcr.io/arrayjob/*}",
        "--set",
        &format!(
            "cleanup.maxAttempts={MAX_ATTEMPTS},cleanup.backoffSeconds=1,cleanup.giveUpAfterSeconds=120"
        ),
    ])?;
    anyhow::ensure!(out.contains("STATUS: deployed"), "{out}");
    if let Err(e) = env.kubectl(&[
        "rollout",
        "status",
        "deployment/arrayjob",
        "-n",
        SYSTEM,
        "--timeout=90s",
    ]) {
        bail!("the operator never got ready: {e}\n{}", operator_log(env));
    }
    METRICS_PORT.store(port, std::sync::atomic::Ordering::Relaxed);
    *done = true;
    Ok(())
}

/// The sum of the operator's metric `name` (all label sets whose text contains `labels`).
async fn operator_metric(env: &TestEnv, name: &str, labels: &str) -> Result<f64> {
    let pod = operator_pods(env)
        .into_iter()
        .next()
        .context("no operator pod")?;
    let ip = pod["status"]["podIP"]
        .as_str()
        .context("pod IP")?
        .to_owned();
    let text = operator_metrics(&ip).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// Whether the pods matching `selector` are all gone within `secs` (the garbage collector removes a deleted
/// job's pods after the job, and each pod only once its process has stopped).
fn pods_gone(env: &TestEnv, ns: &str, selector: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if pods(env, ns, selector).is_ok_and(|p| p.is_empty()) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn is_true(j: &Value, t: &str) -> bool {
    condition(j, t).is_some_and(|c| c["status"] == "True")
}

/// The (reason, note) of the Events about ArrayJob `name`.
fn events(env: &TestEnv, ns: &str, name: &str) -> Vec<(String, String)> {
    let Ok(text) = env.kubectl(&[
        "get",
        "events.events.k8s.io",
        "-n",
        ns,
        "--field-selector",
        &format!("regarding.name={name},regarding.kind=ArrayJob"),
        "-o",
        "json",
    ]) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits for an Event of `reason` about `name`; returns its note.
fn wait_event(env: &TestEnv, ns: &str, name: &str, reason: &str, secs: u64) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let said = events(env, ns, name);
        if let Some((_, note)) = said.iter().find(|(r, _)| r == reason) {
            return Ok(note.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "no {reason} event about {name}: {said:?}\n{}",
                operator_log(env)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A Secret `name` with the keys of `s3`, labelled for arrayjob when `labelled`.
fn credentials_secret(
    env: &TestEnv,
    ns: &str,
    name: &str,
    s3: &arrayjob_testenv::S3Endpoint,
    labelled: bool,
) -> Result<()> {
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        name,
        "-n",
        ns,
        &format!("--from-literal=AWS_ACCESS_KEY_ID={}", s3.access_key),
        &format!("--from-literal=AWS_SECRET_ACCESS_KEY={}", s3.secret_key),
        &format!("--from-literal=AWS_REGION={}", s3.region),
    ])?;
    if labelled {
        env.kubectl(&[
            "label",
            "secret",
            name,
            "-n",
            ns,
            "arrayjob.dev/s3-credentials=true",
        ])?;
    }
    Ok(())
}

/// What a test job reads: a small synthetic stack, or (`Source::Silent`) an HTTP source that never answers,
/// so that the job stays Running with its ledger in the scratch.
enum Source {
    Synthetic,
    Silent(u16),
}

/// A small ArrayJob on `s3`, one worker; `workers` and `extra` (spec lines) added as given.
fn manifest(
    name: &str,
    s3: &arrayjob_testenv::S3Endpoint,
    source: Source,
    workers: &str,
    extra: &str,
) -> String {
    let source = match source {
        Source::Synthetic => "    synthetic: {slices: 8, height: 32, width: 32}".to_owned(),
        Source::Silent(port) => format!(
            "    http: {{urlTemplate: \"http://127.0.0.1:{port}/{{index}}.png\", stop: 8, retries: 0, \
             timeoutSeconds: 600}}\n    sliceShape: [32, 32]\n    dtype: uint8"
        ),
    };
    format!(
        "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata:\n  name: {name}\nspec:\n  storage:\n    \
         s3: {{bucket: {BUCKET}, endpoint: \"{}\", forcePathStyle: true, region: {}, leaseSeconds: 10}}\n  \
         workers: {{replicas: 1, threads: 1{workers}}}\n{extra}  source:\n{source}\n  stages:\n  - {{name: \
         mean, input: source, reduce: {{op: mean, axes: [0]}}, output: {{zarr: mean.zarr}}}}\n",
        s3.endpoint, s3.region
    )
}

fn apply(env: &TestEnv, ns: &str, manifest: &str) -> Result<()> {
    env.kubectl_with_input(&["apply", "-n", ns, "-f", "-"], Some(manifest))?;
    Ok(())
}

/// A TCP listener that accepts and never answers (a source that hangs).
fn silent_listener() -> Result<u16> {
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = silent.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    Ok(port)
}

/// The keys under `prefix` in `BUCKET` of `s3`.
async fn keys(s3: &arrayjob_testenv::S3Endpoint, prefix: &str) -> Result<Vec<String>> {
    let out = s3
        .client()
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(prefix)
        .send()
        .await?;
    Ok(out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect())
}

/// Waits until the job's coordinator has written its scratch, then puts an object of its own there (what a
/// run's spilled chunks would be: the coordinator leaves it on exit, only the finalizer removes it); returns
/// that object's key.
async fn wait_scratch(
    env: &TestEnv,
    s3: &arrayjob_testenv::S3Endpoint,
    ns: &str,
    name: &str,
) -> Result<String> {
    let j = wait_job(env, ns, name, 60, |j| j["status"]["phase"] == "Running")?;
    let uid = j["metadata"]["uid"]
        .as_str()
        .context("uid")?
        .replace('-', "");
    let coordinator = pods(env, ns, "arrayjob.dev/role=coordinator")?
        .into_iter()
        .find(|p| {
            p["spec"]["containers"][0]["args"]
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .any(|x| x.as_str().is_some_and(|s| s.ends_with(&uid[..12])))
                })
        })
        .context("the job's coordinator")?;
    let key = coordinator["metadata"]["labels"]["arrayjob.dev/job"]
        .as_str()
        .context("job label")?;
    let job_id = coordinator["spec"]["containers"][0]["args"][7]
        .as_str()
        .context("job id")?;
    let prefix = format!("scratch/{key}/{job_id}/");
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys(s3, &prefix).await?.is_empty() {
        if Instant::now() > deadline {
            bail!("the coordinator of {name} never wrote its scratch");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let planted = format!("{prefix}spill/planted-by-the-test");
    s3.client()
        .put_object()
        .bucket(BUCKET)
        .key(&planted)
        .body(b"chunk".to_vec().into())
        .send()
        .await?;
    Ok(planted)
}

/// Whether the object `key` is in `BUCKET` of `s3`.
async fn exists(s3: &arrayjob_testenv::S3Endpoint, key: &str) -> Result<bool> {
    Ok(keys(s3, key).await?.iter().any(|k| k == key))
}

/// The scratch prefix of a planted object (`scratch/{key}/{job id}/`).
fn prefix_of(planted: &str) -> &str {
    planted
        .strip_suffix("spill/planted-by-the-test")
        .unwrap_or(planted)
}

/// Deletes the ArrayJob without waiting.
fn delete(env: &TestEnv, ns: &str, name: &str) -> Result<()> {
    env.kubectl(&["delete", "arrayjob", name, "-n", ns, "--wait=false"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn names_with_dots_or_of_253_characters_run_to_succeeded_behind_their_network_policy()
-> Result<()> {
    let env = TestEnv::shared()?;
    install(env).await?;
    let ns = env.namespace("aj-names").await?;
    credentials_secret(env, &ns, "s3-credentials", env.s3(), true)?;
    let extra = "  s3CredentialsSecret: s3-credentials\n";
    let long = format!("run.{}", "x".repeat(249));
    assert_eq!(long.len(), 253);
    for name in ["em.run.v2", long.as_str()] {
        apply(
            env,
            &ns,
            &manifest(name, env.s3(), Source::Synthetic, "", extra),
        )?;
    }
    for name in ["em.run.v2", long.as_str()] {
        let j = wait_job(env, &ns, name, 120, |j| j["status"]["phase"] == "Succeeded")?;
        let st = &j["status"];
        let (done, total) = st["progress"]
            .as_str()
            .and_then(|p| p.split_once('/'))
            .context("progress")?;
        assert_eq!(done, total, "{st}");
        assert_eq!(
            st["output"],
            format!("s3://{BUCKET}/outputs/{}/{name}", ns.name())
        );
        assert!(
            !keys(
                env.s3(),
                &format!("outputs/{}/{name}/summary.json", ns.name())
            )
            .await?
            .is_empty(),
            "no summary.json for {name}"
        );
    }
    // The dotted name: its objects are named from its key, its run id keeps the UID.
    let uid = get_job(env, &ns, "em.run.v2").context("job")?["metadata"]["uid"]
        .as_str()
        .context("uid")?
        .replace('-', "");
    let coordinator: Value = serde_json::from_str(&env.kubectl(&[
        "get",
        "pod",
        "aj-em-run-v2-56701891",
        "-n",
        &ns,
        "-o",
        "json",
    ])?)?;
    let args = &coordinator["spec"]["containers"][0]["args"];
    assert_eq!(
        args[7],
        format!("em-run-v2-56701891-{}", &uid[..12]),
        "{args}"
    );
    // The 253-character name: every object name is a valid label.
    let all: Value = serde_json::from_str(&env.kubectl(&[
        "get",
        "pods,services,configmaps,secrets,networkpolicies",
        "-n",
        &ns,
        "-l",
        "app.kubernetes.io/managed-by=arrayjob-operator",
        "-o",
        "json",
    ])?)?;
    let names: Vec<&str> = all["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("aj-run-xxxx")),
        "{names:?}"
    );
    assert!(names.iter().all(|n| n.len() <= 63), "{names:?}");

    // The NetworkPolicy: applied before the pods, selecting the job's pods, letting in only them and the
    // operator's pods (to the coordinator's port).
    let np: Value = serde_json::from_str(&env.kubectl(&[
        "get",
        "networkpolicy",
        "aj-em-run-v2-56701891-peers",
        "-n",
        &ns,
        "-o",
        "json",
    ])?)?;
    let mine = serde_json::json!({"matchLabels": {"arrayjob.dev/job": "em-run-v2-56701891"}});
    assert_eq!(np["spec"]["podSelector"], mine);
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let ingress = np["spec"]["ingress"].as_array().context("ingress")?;
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    assert_eq!(
        ingress[0]["from"],
        serde_json::json!([{"podSelector": mine}])
    );
    let operator = &ingress[1]["from"][0];
    assert_eq!(
        operator["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        SYSTEM
    );
    // The operator's own pod matches the rule's pod selector.
    let op = operator_pods(env)
        .into_iter()
        .next()
        .context("operator pod")?;
    for (k, v) in operator["podSelector"]["matchLabels"]
        .as_object()
        .context("labels")?
    {
        assert_eq!(&op["metadata"]["labels"][k], v, "{k}");
    }
    assert_eq!(
        ingress[1]["ports"],
        serde_json::json!([{"port": 7070, "protocol": "TCP"}])
    );
    assert_eq!(np["metadata"]["ownerReferences"][0]["name"], "em.run.v2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_refuses_an_image_a_service_account_a_secret_and_a_toleration_naming_the_field()
-> Result<()> {
    let env = TestEnv::shared()?;
    install(env).await?;
    let ns = env.namespace("aj-policy").await?;
    credentials_secret(env, &ns, "s3-credentials", env.s3(), true)?;
    credentials_secret(env, &ns, "db-password", env.s3(), false)?;
    let with_secret = "  s3CredentialsSecret: s3-credentials\n";
    let cases = [
        (
            "image",
            ", image: \"docker.io/evil/miner:1\"",
            with_secret,
            "spec.workers.image: image \"docker.io/evil/miner:1\" is not allowed by the cluster's policy",
        ),
        (
            "account",
            ", serviceAccountName: s3-admin",
            with_secret,
            "spec.workers.serviceAccountName: service account \"s3-admin\" is not allowed",
        ),
        (
            "secret",
            "",
            "  s3CredentialsSecret: db-password\n",
            "spec.s3CredentialsSecret: Secret \"db-password\" is not labelled arrayjob.dev/s3-credentials=true",
        ),
        (
            "tolerate",
            ", tolerations: [{operator: Exists}]",
            with_secret,
            "spec.workers.tolerations[0].key: a toleration without a key tolerates every taint",
        ),
    ];
    for (name, workers, extra, _) in &cases {
        apply(
            env,
            &ns,
            &manifest(name, env.s3(), Source::Synthetic, workers, extra),
        )?;
    }
    for (name, _, _, want) in &cases {
        let j = wait_job(env, &ns, name, 60, |j| j["status"]["phase"] == "Failed")?;
        let c = condition(&j, "Failed").context("Failed")?;
        assert_eq!(c["reason"], "PolicyViolation", "{c}");
        let msg = c["message"].as_str().context("message")?;
        assert!(
            msg.starts_with("refused by the cluster's policy: "),
            "{msg}"
        );
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(
            pods(env, &ns, &format!("arrayjob.dev/job={name}"))?.is_empty(),
            "pods for the refused {name}"
        );
        let note = wait_event(env, &ns, name, "PolicyViolation", 20)?;
        assert!(note.contains(want), "{note}");
    }
    // A Secret that is not there: the job waits (Stalled, naming the field), and runs once it is created.
    apply(
        env,
        &ns,
        &manifest(
            "later",
            env.s3(),
            Source::Synthetic,
            "",
            "  s3CredentialsSecret: later-keys\n",
        ),
    )?;
    let j = wait_job(env, &ns, "later", 60, |j| is_true(j, "Stalled"))?;
    let c = condition(&j, "Stalled").context("Stalled")?;
    assert_eq!(c["reason"], "SecretNotFound");
    assert_eq!(
        c["message"],
        format!(
            "spec.s3CredentialsSecret: Secret {}/later-keys not found",
            ns.name()
        )
    );
    credentials_secret(env, &ns, "later-keys", env.s3(), true)?;
    wait_job(env, &ns, "later", 120, |j| {
        j["status"]["phase"] == "Succeeded"
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_coordinator_gets_a_condition_and_the_operator_and_other_jobs_go_on() -> Result<()>
{
    let env = TestEnv::shared()?;
    install(env).await?;
    let ns = env.namespace("aj-hostile").await?;
    credentials_secret(env, &ns, "s3-credentials", env.s3(), true)?;
    let extra = "  s3CredentialsSecret: s3-credentials\n";
    let restarts = |env: &TestEnv| -> i64 {
        operator_pods(env)
            .iter()
            .filter_map(|p| p["status"]["containerStatuses"][0]["restartCount"].as_i64())
            .sum()
    };
    let before = restarts(env);
    apply(
        env,
        &ns,
        &manifest(
            "huge-time",
            env.s3(),
            Source::Synthetic,
            &format!(", image: \"{HUGE_TIME_IMAGE}\""),
            extra,
        ),
    )?;
    apply(
        env,
        &ns,
        &manifest(
            "endless",
            env.s3(),
            Source::Synthetic,
            &format!(", image: \"{ENDLESS_IMAGE}\""),
            extra,
        ),
    )?;
    let j = wait_job(env, &ns, "huge-time", 90, |j| {
        is_true(j, "ProgressUnreadable")
    })?;
    let c = condition(&j, "ProgressUnreadable").context("condition")?;
    assert_eq!(c["reason"], "InvalidProgress", "{c}");
    assert_eq!(
        c["message"],
        "the coordinator's progress answer was refused: stages[0].startSeconds: 1e300 is not between 0 and \
         315576000 seconds"
    );
    assert_eq!(j["status"]["phase"], "Running");
    let note = wait_event(env, &ns, "huge-time", "InvalidProgress", 20)?;
    assert!(note.contains("stages[0].startSeconds"), "{note}");
    let j = wait_job(env, &ns, "endless", 90, |j| {
        is_true(j, "ProgressUnreadable")
    })?;
    let c = condition(&j, "ProgressUnreadable").context("condition")?;
    assert_eq!(c["reason"], "ProgressTooLarge", "{c}");
    assert_eq!(
        c["message"],
        "the coordinator's progress answer was refused: the answer is larger than 4194304 bytes"
    );
    // Meanwhile another job runs to the end, and the operator was never restarted.
    apply(
        env,
        &ns,
        &manifest("plain", env.s3(), Source::Synthetic, "", extra),
    )?;
    wait_job(env, &ns, "plain", 120, |j| {
        j["status"]["phase"] == "Succeeded"
    })?;
    // A few more reads of both hostile answers.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        restarts(env),
        before,
        "the operator restarted:\n{}",
        operator_log(env)
    );
    assert!(
        operator_pods(env)
            .iter()
            .all(|p| p["status"]["phase"] == "Running"),
        "{}",
        operator_log(env)
    );
    assert!(
        !operator_log(env).contains("panicked"),
        "{}",
        operator_log(env)
    );
    for name in ["huge-time", "endless"] {
        delete(env, &ns, name)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_job_whose_secret_went_first_or_that_skips_cleanup_ends_at_once() -> Result<()> {
    let env = TestEnv::shared()?;
    install(env).await?;
    let ns = env.namespace("aj-gone").await?;
    credentials_secret(env, &ns, "s3-credentials", env.s3(), true)?;
    let extra = "  s3CredentialsSecret: s3-credentials\n";
    let port = silent_listener()?;

    // The credentials Secret is deleted first (as in a namespace deletion): the finalizer gives up at once.
    apply(
        env,
        &ns,
        &manifest("orphan", env.s3(), Source::Silent(port), "", extra),
    )?;
    let planted = wait_scratch(env, env.s3(), &ns, "orphan").await?;
    env.kubectl(&["delete", "secret", "s3-credentials", "-n", &ns])?;
    let started = Instant::now();
    delete(env, &ns, "orphan")?;
    wait_job(env, &ns, "orphan", 30, Value::is_null)?;
    let took = started.elapsed();
    let note = wait_event(env, &ns, "orphan", "CleanupAbandoned", 20)?;
    assert!(
        note.starts_with(&format!(
            "gave up removing the S3 scratch s3://{BUCKET}/{}",
            prefix_of(&planted)
        )) && note.contains(&format!(
            "Secret {}/s3-credentials not found (trying again cannot help)",
            ns.name()
        )),
        "{note}"
    );
    assert!(
        exists(env.s3(), &planted).await?,
        "the scratch is left (and the Event says so)"
    );
    assert!(
        pods_gone(env, &ns, "arrayjob.dev/job=orphan", 30),
        "{:?}",
        pods(env, &ns, "arrayjob.dev/job=orphan")
    );
    eprintln!(
        "deleted in {:.1} s with its Secret gone",
        took.as_secs_f64()
    );

    // arrayjob.dev/skip-cleanup: the pods go, the scratch stays, an Event says so.
    credentials_secret(env, &ns, "s3-credentials", env.s3(), true)?;
    let skip = manifest("keep", env.s3(), Source::Silent(port), "", extra).replace(
        "  name: keep\n",
        "  name: keep\n  annotations: {arrayjob.dev/skip-cleanup: \"true\"}\n",
    );
    apply(env, &ns, &skip)?;
    let planted = wait_scratch(env, env.s3(), &ns, "keep").await?;
    delete(env, &ns, "keep")?;
    wait_job(env, &ns, "keep", 30, Value::is_null)?;
    let note = wait_event(env, &ns, "keep", "CleanupSkipped", 20)?;
    assert!(
        note.starts_with("arrayjob.dev/skip-cleanup: the S3 scratch s3://")
            && note.ends_with("is left as asked"),
        "{note}"
    );
    assert!(
        exists(env.s3(), &planted).await?,
        "skip-cleanup leaves the scratch"
    );

    // No s3CredentialsSecret (the IRSA path) and operator-identity cleanup off (the chart's default): the
    // scratch is left, with a Warning. (Its service account is refused by the policy, so no pod ever looks
    // for AWS credentials off this machine.)
    apply(
        env,
        &ns,
        &manifest(
            "irsa",
            env.s3(),
            Source::Synthetic,
            ", serviceAccountName: s3-role",
            "",
        ),
    )?;
    wait_job(env, &ns, "irsa", 60, |j| j["status"]["phase"] == "Failed")?;
    delete(env, &ns, "irsa")?;
    wait_job(env, &ns, "irsa", 30, Value::is_null)?;
    let note = wait_event(env, &ns, "irsa", "CleanupSkipped", 20)?;
    assert!(
        note.starts_with(
            "no s3CredentialsSecret, and the operator does not clean up with its own identity"
        ),
        "{note}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_job_while_s3_is_down_retries_with_a_condition_and_never_hangs() -> Result<()> {
    let env = TestEnv::shared()?;
    install(env).await?;
    let ns = env.namespace("aj-s3down").await?;
    // An S3 server of this test alone, to stop.
    let mut server = tokio::task::spawn_blocking(S3Server::start).await??;
    let s3 = server.endpoint().clone();
    s3.client().create_bucket().bucket(BUCKET).send().await?;
    credentials_secret(env, &ns, "s3-credentials", &s3, true)?;
    let extra = "  s3CredentialsSecret: s3-credentials\n";
    let port = silent_listener()?;

    // Down for a while: CleanupFailed with the attempts, then removed once S3 is back.
    apply(
        env,
        &ns,
        &manifest("outage", &s3, Source::Silent(port), "", extra),
    )?;
    let planted = wait_scratch(env, &s3, &ns, "outage").await?;
    let (tx, rx) = std::sync::mpsc::channel();
    let outage = std::thread::spawn(move || {
        let _ = tx.send(());
        let r = server.outage(Duration::from_secs(6));
        (server, r)
    });
    rx.recv()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    delete(env, &ns, "outage")?;
    let j = wait_job(env, &ns, "outage", 30, |j| is_true(j, "CleanupFailed"))?;
    let c = condition(&j, "CleanupFailed").context("CleanupFailed")?;
    assert_eq!(c["reason"], "S3CleanupFailed");
    let msg = c["message"].as_str().context("message")?;
    assert!(
        msg.starts_with("removing the job's S3 scratch failed (")
            && msg.contains(&format!(" of at most {MAX_ATTEMPTS} attempts; next in ")),
        "{msg}"
    );
    let cleanup = &j["status"]["cleanup"];
    assert!(cleanup["attempts"].as_i64() >= Some(1), "{cleanup}");
    assert!(
        !cleanup["lastError"].as_str().unwrap_or_default().is_empty(),
        "{cleanup}"
    );
    let (mut server, back) = outage
        .join()
        .map_err(|_| anyhow::anyhow!("outage thread"))?;
    back?;
    wait_job(env, &ns, "outage", 60, Value::is_null)?;
    assert!(
        !exists(&s3, &planted).await?,
        "the scratch was removed once S3 was back"
    );
    let said = events(env, &ns, "outage");
    assert!(
        said.iter()
            .any(|(r, n)| r == "S3CleanupFailed" && n.contains("Connection refused")),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|(r, _)| r == "CleanupAbandoned"),
        "{said:?}"
    );

    // Down for good: the attempts run out, the finalizer goes, an Event says where the scratch is.
    apply(
        env,
        &ns,
        &manifest("down", &s3, Source::Silent(port), "", extra),
    )?;
    let planted = wait_scratch(env, &s3, &ns, "down").await?;
    server.stop();
    let started = Instant::now();
    delete(env, &ns, "down")?;
    wait_job(env, &ns, "down", 90, Value::is_null)?;
    let took = started.elapsed();
    let note = wait_event(env, &ns, "down", "CleanupAbandoned", 20)?;
    assert!(
        note.starts_with(&format!(
            "gave up removing the S3 scratch s3://{BUCKET}/{}",
            prefix_of(&planted)
        )) && note.contains(&format!("({MAX_ATTEMPTS} attempts over ")),
        "{note}"
    );
    eprintln!(
        "deleted in {:.1} s with S3 down for good",
        took.as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_namespace_of_a_running_job_ends() -> Result<()> {
    let env = TestEnv::shared()?;
    install(env).await?;
    let ns = env.namespace("aj-nsdel").await?;
    credentials_secret(env, &ns, "s3-credentials", env.s3(), true)?;
    let port = silent_listener()?;
    apply(
        env,
        &ns,
        &manifest(
            "doomed",
            env.s3(),
            Source::Silent(port),
            "",
            "  s3CredentialsSecret: s3-credentials\n",
        ),
    )?;
    let planted = wait_scratch(env, env.s3(), &ns, "doomed").await?;
    let ended = |env: &'static TestEnv| async move {
        Ok::<f64, anyhow::Error>(
            operator_metric(env, "arrayjob_operator_cleanups_total", "removed").await?
                + operator_metric(env, "arrayjob_operator_cleanups_total", "abandoned").await?,
        )
    };
    let before = ended(env).await?;
    let started = Instant::now();
    env.kubectl(&["delete", "namespace", &ns, "--wait=false"])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.kubectl(&["get", "namespace", &ns]).is_ok() {
        if Instant::now() > deadline {
            bail!(
                "namespace {} still there: {}\n{}",
                ns.name(),
                env.kubectl(&["get", "arrayjobs", "-n", &ns, "-o", "yaml"])
                    .unwrap_or_default(),
                operator_log(env)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "namespace with a running job deleted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Other tests of this binary delete jobs meanwhile: at least this one's cleanup ended.
    assert!(ended(env).await? >= before + 1.0, "no cleanup ended");
    // Whichever went first (the Secret, or the finalizer's removal), the operator's log names the scratch,
    // removed or given up.
    let log = operator_log(env);
    let scratch = format!("scratch=s3://{BUCKET}/{}", prefix_of(&planted));
    let line = log
        .lines()
        .find(|l| l.contains(&scratch))
        .with_context(|| format!("no log line with {scratch}:\n{log}"))?;
    if line.contains("removed the job's S3 scratch") {
        assert!(!exists(env.s3(), &planted).await?, "{line}");
    } else {
        assert!(
            line.contains("gave up removing the job's S3 scratch"),
            "{line}"
        );
    }
    eprintln!("{line}");
    Ok(())
}
