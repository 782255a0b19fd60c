//! The operator on the real control plane (tests/harness): `examples/quickstart-k8s.yaml` (slices and outputs
//! on SeaweedFS, 3 worker pods, `exchange: s3`) runs to `Complete` with outputs byte-identical to `arrayjob
//! run` of the same job; a deleted worker pod is replaced and counted; `kubectl get aj` shows the columns; a
//! spec the operator refuses fails with its field path; an unschedulable worker stalls the job with the
//! scheduler's message; deleting the ArrayJob removes its pods and S3 scratch and keeps its outputs. The
//! operator runs as two replicas: one leads (its metrics say so), the other takes over when it is deleted.
//! Events say what happened; an image that cannot be pulled, S3 refusing the job's keys and a job without
//! progress past its deadline each get their own reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use arrayjob_testenv::TestEnv;

mod common;
use common::*;

const BUCKET: &str = "arrayjob-quickstart";
/// Slices in the bucket. The examples read the first 160; the quickstart test reads them all, so that its
/// job runs long enough (several seconds) for a worker deleted mid-job to be noticed and replaced.
const SLICES: usize = 480;

/// The folder of this build's binaries (`target/release`; with a separate `build-dir` the test executable
/// itself lives elsewhere).
fn bin_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_arrayjob-operator"))
        .parent()
        .expect("the target folder")
}

fn png(i: usize) -> Vec<u8> {
    let img = image::GrayImage::from_fn(512, 512, |c, r| {
        let (dr, dc) = (
            r as i64 - 200 - i as i64 / 2,
            c as i64 - 180 - (i as i64) / 3,
        );
        let blob = if dr * dr + dc * dc < 900 { 120 } else { 0 };
        image::Luma([(((r * 7 + c * 3 + i as u32 * 11) % 60) + blob) as u8])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .expect("encode png");
    bytes
}

async fn put(env: &TestEnv, key: &str, body: Vec<u8>) {
    env.s3()
        .client()
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(body.into())
        .send()
        .await
        .expect("put");
}

async fn objects(env: &TestEnv, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let c = env.s3().client();
    let mut out = BTreeMap::new();
    let mut pages = c
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page.expect("list").contents() {
            let key = o.key().expect("key").to_owned();
            let body = c
                .get_object()
                .bucket(BUCKET)
                .key(&key)
                .send()
                .await
                .expect("get")
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .to_vec();
            out.insert(key[prefix.len()..].to_owned(), body);
        }
    }
    out
}

/// The CRD (as `helm install` would put it) and the bucket with its slices.
async fn setup(env: &TestEnv) {
    env.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &repo("crds/arrayjob.yaml").display().to_string(),
    ])
    .expect("apply the CRD");
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/arrayjobs.arrayjob.dev",
        "--timeout=30s",
    ])
    .expect("CRD established");
    bucket(env).await;
}

/// Sets up the bucket and slices once per test binary (again if its last slice is missing).
async fn bucket(env: &TestEnv) {
    let c = env.s3().client();
    let last = format!("slices/{:03}.png", SLICES - 1);
    if c.head_object()
        .bucket(BUCKET)
        .key(&last)
        .send()
        .await
        .is_ok()
    {
        return;
    }
    if c.head_bucket().bucket(BUCKET).send().await.is_err() {
        c.create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("bucket");
    }
    for i in 0..SLICES {
        put(env, &format!("slices/{i:03}.png"), png(i)).await;
    }
}

/// The example with this environment's S3 endpoint, under `name`, with `edit` applied to its text.
fn example(env: &TestEnv, name: &str, edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(repo("examples/quickstart-k8s.yaml")).expect("example");
    edit(
        text.replace("http://seaweedfs.storage:8333", &env.s3().endpoint)
            .replace("name: quickstart-k8s", &format!("name: {name}")),
    )
}

/// `helm install` of the chart (once per test binary): the operator runs as two pods of the node agent, under
/// its own service account and RBAC, with leader election. The operator's and the job pods' images both map
/// to the image the Dockerfile builds from this build's binaries (`arrayjob_testenv::podman::build_image`):
/// every pod runs in a podman container (the agent's container mode), so the kernel enforces the pods'
/// security context (user 65532, read-only root filesystem, no capabilities) and memory limits.
fn install_operator(env: &TestEnv) {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    let image = arrayjob_testenv::podman::build_image(bin_dir())
        .expect("build the arrayjob image (tests/env/setup.sh makes its base image)");
    env.map_image_to_container(OPERATOR_IMAGE, &image)
        .expect("map the operator image");
    env.map_image_to_container(IMAGE, &image)
        .expect("map the job image");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (repository, tag) = OPERATOR_IMAGE.rsplit_once(':').expect("tag");
    let out = env
        .helm(&[
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
            &format!("metrics.port={port},logLevel=info,replicaCount=2"),
            // The missing-image case names another image of the same registry.
            "--set",
            "policy.allowedImages={ghcr.io/arrayjob/*}",
        ])
        .expect("helm install");
    assert!(out.contains("STATUS: deployed"), "{out}");
    env.kubectl(&[
        "rollout",
        "status",
        "deployment/arrayjob",
        "-n",
        SYSTEM,
        "--timeout=90s",
    ])
    .unwrap_or_else(|e| panic!("the operator never got ready: {e}\n{}", operator_log(env)));
    *done = true;
    METRICS_PORT.store(port, std::sync::atomic::Ordering::Relaxed);
}

/// The holder of the operator's leader Lease.
fn leader(env: &TestEnv) -> String {
    env.kubectl(&[
        "get",
        "lease",
        "arrayjob-operator",
        "-n",
        SYSTEM,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
    .expect("the leader Lease")
    .trim()
    .to_owned()
}

/// One metric of an operator pod (`/metrics` on its pod IP).
async fn operator_metric(env: &TestEnv, pod: &str, name: &str) -> f64 {
    let ip = env
        .kubectl(&[
            "get",
            "pod",
            pod,
            "-n",
            SYSTEM,
            "-o",
            "jsonpath={.status.podIP}",
        ])
        .expect("pod IP");
    let text = operator_metrics(&ip).await.expect("scrape");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics of {pod}:\n{text}"))
}

/// The reasons of the Events about ArrayJob `name`, oldest first.
fn event_reasons(env: &TestEnv, ns: &str, name: &str) -> Vec<(String, String)> {
    let text = env
        .kubectl(&[
            "get",
            "events.events.k8s.io",
            "-n",
            ns,
            "--field-selector",
            &format!("regarding.name={name},regarding.kind=ArrayJob"),
            "-o",
            "json",
        ])
        .expect("events");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut items = v["items"].as_array().cloned().unwrap_or_default();
    items.sort_by_key(|e| e["eventTime"].as_str().unwrap_or_default().to_owned());
    items
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// `arrayjob run` of the same job on this machine, outputs to a local directory.
fn local_run(env: &TestEnv, dir: &Path, manifest: &str) -> BTreeMap<String, Vec<u8>> {
    let m = dir.join("local.yaml");
    std::fs::write(&m, manifest).expect("write");
    let out = dir.join("local");
    let s3 = env.s3();
    let o = Command::new(sibling_binary("arrayjob"))
        .args([
            "run",
            &m.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--quiet",
        ])
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_REGION", &s3.region)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("arrayjob run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut files = BTreeMap::new();
    for e in walk(&out) {
        let rel = e.strip_prefix(&out).expect("rel").display().to_string();
        files.insert(rel, std::fs::read(&e).expect("read"));
    }
    files.remove("summary.json");
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn s3_secret(env: &TestEnv, ns: &str) {
    let s3 = env.s3();
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "s3-credentials",
        "-n",
        ns,
        &format!("--from-literal=AWS_ACCESS_KEY_ID={}", s3.access_key),
        &format!("--from-literal=AWS_SECRET_ACCESS_KEY={}", s3.secret_key),
        &format!("--from-literal=AWS_REGION={}", s3.region),
    ])
    .expect("secret");
    label_for_arrayjob(env, ns, "s3-credentials");
}

/// Labels a Secret so that the chart's default policy lets ArrayJobs name it.
fn label_for_arrayjob(env: &TestEnv, ns: &str, secret: &str) {
    env.kubectl(&[
        "label",
        "secret",
        secret,
        "-n",
        ns,
        "arrayjob.dev/s3-credentials=true",
    ])
    .expect("label the secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_runs_to_complete_on_three_worker_pods_with_the_local_runs_bytes()
-> anyhow::Result<()> {
    let env = TestEnv::shared()?;
    setup(env).await;
    install_operator(env);
    let d = tempfile::tempdir()?;
    let ns = env.namespace("aj-quick").await?;
    s3_secret(env, &ns).await;
    let manifest = example(env, "quick", |t| {
        t.replace("stop: 160", &format!("stop: {SLICES}"))
    });
    let applied = env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&manifest))?;
    assert!(applied.contains("created"), "{applied}");

    // A worker pod deleted while the job runs is replaced (and counted).
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = loop {
        let ready: Vec<String> = pods(env, &ns, "arrayjob.dev/role=worker")
            .expect("pods")
            .iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        if ready.len() == 3 {
            break ready;
        }
        assert!(Instant::now() < deadline, "the worker pods never got ready");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The pods run in containers: the kernel holds them to the operator's security context (user 65532,
    // the image's group, no capabilities, no privilege escalation, read-only root) and the workers to
    // `workers.memory` (1Gi).
    for (pod, memory_limit) in [(ready[0].as_str(), Some(1 << 30)), ("aj-quick", None)] {
        let id = env.kubectl(&[
            "get",
            "pod",
            pod,
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ])?;
        assert!(id.starts_with("podman://"), "{pod}: {id}");
        let facts = arrayjob_testenv::podman::process_facts(&id)?;
        let want = arrayjob_testenv::podman::ProcessFacts {
            uid: 65532,
            gid: 65532,
            cap_eff: 0,
            no_new_privs: true,
            root_read_only: true,
            memory_limit,
        };
        assert_eq!(facts, want, "{pod}");
    }
    let victim = ready[1].clone();
    // The coordinator answers its own job's token and refuses another job's.
    let ip = env.kubectl(&[
        "get",
        "service",
        "aj-quick",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let token = env.kubectl(&[
        "get",
        "secret",
        "aj-quick-token",
        "-n",
        &ns,
        "-o",
        "jsonpath={.data.token}",
    ])?;
    let token = String::from_utf8(base64_decode(token.trim())).expect("token text");
    let url = format!("http://{}:7070/v1/progress", ip.trim());
    let http = reqwest::Client::builder().no_proxy().build()?;
    let get = |t: String| {
        http.get(&url)
            .header("authorization", format!("Bearer {t}"))
            .send()
    };
    assert_eq!(get(token.clone()).await?.status(), 200);
    assert_eq!(
        get("f".repeat(64)).await?.status(),
        401,
        "another job's token was accepted"
    );
    // The worker is deleted as soon as the coordinator has answered (it exits with the job), well before
    // the job can end.
    env.kubectl(&["delete", "pod", &victim, "-n", &ns, "--wait=false"])?;
    let running = get_job(env, &ns, "quick").expect("the job");
    assert_ne!(
        running["status"]["phase"], "Succeeded",
        "the job ended before the worker was deleted"
    );
    // The job's pods run without API credentials: their identity may do nothing.
    let sa = format!("--as=system:serviceaccount:{}:default", ns.name());
    for verb in [["get", "pods"], ["list", "secrets"], ["create", "pods"]] {
        assert!(
            env.kubectl(&["auth", "can-i", verb[0], verb[1], "-n", &ns])?
                .contains("yes")
        );
        // `can-i` answers "no" with exit status 1.
        let answer = env.kubectl(&["auth", "can-i", verb[0], verb[1], "-n", &ns, &sa]);
        assert!(
            answer
                .as_ref()
                .is_err_and(|e| e.to_string().contains("exit status: 1")),
            "{verb:?}: {answer:?}"
        );
    }
    let table = env.kubectl(&["get", "aj", "-n", &ns])?;
    for col in ["PHASE", "STAGE", "PROGRESS", "WORKERS", "AGE"] {
        assert!(table.contains(col), "{table}");
    }
    // Two operator replicas: the one holding the Lease reconciles, the other waits.
    let operators: Vec<String> = pods(env, SYSTEM, "app.kubernetes.io/name=arrayjob")
        .expect("pods")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(operators.len(), 2, "{operators:?}");
    let old = leader(env);
    assert!(
        operators.contains(&old),
        "{old} leads, not one of {operators:?}"
    );
    let standby = operators.iter().find(|p| **p != old).expect("standby");
    assert_eq!(
        operator_metric(env, &old, "arrayjob_operator_leader").await,
        1.0
    );
    assert!(operator_metric(env, &old, "arrayjob_operator_reconciles_total").await > 0.0);
    assert!(operator_metric(env, &old, "arrayjob_operator_status_writes_total").await > 0.0);
    assert_eq!(
        operator_metric(env, standby, "arrayjob_operator_leader").await,
        0.0,
        "{standby} says it leads too; the Lease: {}\n{}",
        env.kubectl(&[
            "get",
            "lease",
            "arrayjob-operator",
            "-n",
            SYSTEM,
            "-o",
            "yaml"
        ])
        .unwrap_or_default(),
        operator_log(env)
    );
    assert_eq!(
        operator_metric(env, standby, "arrayjob_operator_reconciles_total").await,
        0.0
    );
    // The leader is deleted: the job goes on meanwhile, another replica takes the Lease over and catches
    // the status up.
    env.kubectl(&["delete", "pod", &old, "-n", SYSTEM, "--wait=false"])?;

    let wait = env.kubectl(&[
        "wait",
        "--for=condition=Complete",
        "arrayjob/quick",
        "-n",
        &ns,
        "--timeout=240s",
    ]);
    let j = get_job(env, &ns, "quick").expect("the job");
    let log = operator_log(env);
    assert!(
        wait.is_ok(),
        "not Complete: {}\n{wait:?}\noperator log:\n{log}",
        j["status"]
    );
    let st = &j["status"];
    assert_eq!(st["phase"], "Succeeded", "{st}");
    let output = st["output"].as_str().expect("output");
    assert_eq!(output, format!("s3://{BUCKET}/outputs/{}/quick", ns.name()));
    assert_eq!(
        st["workerPods"]["lost"].as_i64(),
        Some(1),
        "the replacement is counted: {st} (before: {})",
        running["status"]
    );
    let (done, total) = st["progress"]
        .as_str()
        .expect("progress")
        .split_once('/')
        .expect("n/m");
    assert_eq!(done, total);
    // The deleted leader released the Lease on SIGTERM (or it expired): another replica holds it and leads.
    let deadline = Instant::now() + Duration::from_secs(60);
    let now_leads = loop {
        let holder = leader(env);
        if !holder.is_empty() && holder != old {
            break holder;
        }
        assert!(Instant::now() < deadline, "the Lease stayed with {old}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        operator_metric(env, &now_leads, "arrayjob_operator_leader").await,
        1.0
    );
    // Every stage: Succeeded, its bytes, when it ran.
    let stages = st["stages"].as_array().expect("stages");
    let names: Vec<&str> = stages.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names.first(), Some(&"source"), "{st}");
    for s in stages {
        assert_eq!(s["phase"], "Succeeded", "{s}");
        let (start, end) = (s["startTime"].as_str(), s["completionTime"].as_str());
        assert!(start.is_some() && end.is_some() && start <= end, "{s}");
    }
    assert!(stages.iter().all(|s| s["bytes"].as_u64() > Some(0)), "{st}");
    // Events: the job ran, each stage finished, the lost worker, the end.
    let said = event_reasons(env, &ns, "quick");
    let reasons: Vec<&str> = said.iter().map(|(r, _)| r.as_str()).collect();
    for r in ["Running", "WorkerReplaced", "Succeeded"] {
        assert!(reasons.contains(&r), "no {r} event: {said:?}");
    }
    for name in &names {
        assert!(
            said.iter()
                .any(|(r, n)| r == "StageSucceeded" && n.starts_with(&format!("stage {name}:"))),
            "no StageSucceeded event for {name}: {said:?}"
        );
    }

    let mut remote = objects(env, &format!("outputs/{}/quick/", ns.name())).await;
    assert!(remote.remove("summary.json").is_some());
    for f in ["workers.json", "timeline.html", "timeline.png"] {
        remote.remove(f);
    }
    // The manifest the coordinator ran (the engine's part of the spec), run by `arrayjob run` here.
    let cm = env.kubectl(&[
        "get",
        "configmap",
        "aj-quick-manifest",
        "-n",
        &ns,
        "-o",
        "jsonpath={.data.job\\.yaml}",
    ])?;
    let local = local_run(env, d.path(), &cm);
    assert_eq!(
        remote.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    for (k, v) in &local {
        assert!(remote[k] == *v, "{k} differs from `arrayjob run`'s");
    }

    // Deleting the job removes its pods and keeps its outputs.
    env.kubectl(&["delete", "arrayjob", "quick", "-n", &ns, "--timeout=60s"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pods(env, &ns, "arrayjob.dev/job=quick")
        .expect("pods")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "pods left behind");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !objects(env, &format!("outputs/{}/quick/", ns.name()))
            .await
            .is_empty(),
        "outputs gone"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_spec_and_an_unschedulable_worker_say_why() -> anyhow::Result<()> {
    let env = TestEnv::shared()?;
    setup(env).await;
    install_operator(env);
    let ns = env.namespace("aj-bad").await?;
    s3_secret(env, &ns).await;

    // The API server refuses two sources (a CEL rule), naming the field.
    let two = example(env, "two", |t| {
        t.replace(
            "    slicesPerChunk: 4",
            "    synthetic: {slices: 4, height: 8, width: 8}\n    slicesPerChunk: 4",
        )
    });
    let refused = env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&two));
    let msg = format!("{refused:?}");
    assert!(
        refused.is_err() && msg.contains("spec.source: exactly one of synthetic, files, http, s3"),
        "{msg}"
    );

    // The operator refuses what only the engine checks: the job fails once, with the field path.
    let axis = example(env, "axis", |t| {
        t.replace(
            "reduce: {op: mean, axes: [0]},    output: {image",
            "reduce: {op: mean, axes: [7]},    output: {image",
        )
    });
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&axis))?;
    let j = wait_job(env, &ns, "axis", 60, |j| j["status"]["phase"] == "Failed").expect("the job");
    let c = condition(&j, "Failed").expect("Failed condition");
    assert_eq!(c["reason"], "InvalidSpec");
    assert!(
        c["message"]
            .as_str()
            .expect("message")
            .contains("spec.stages[0].reduce.axes"),
        "{c}"
    );
    assert!(
        pods(env, &ns, "arrayjob.dev/job=axis")
            .expect("pods")
            .is_empty(),
        "pods for an invalid job"
    );

    // A worker that fits no node: Stalled with the scheduler's reason, not an endless Running.
    let stuck = example(env, "stuck", |t| {
        t.replace(
            "workers: {replicas: 3,",
            "workers: {replicas: 1, nodeSelector: {pool: nowhere},",
        )
    });
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&stuck))?;
    let j = wait_job(env, &ns, "stuck", 60, |j| {
        condition(j, "Stalled").is_some_and(|c| c["status"] == "True")
    })
    .expect("the job");
    let c = condition(&j, "Stalled").expect("Stalled");
    assert_eq!(c["reason"], "Unschedulable");
    assert!(
        c["message"]
            .as_str()
            .expect("message")
            .contains("node(s) didn't match"),
        "{c}"
    );
    assert_eq!(
        condition(&j, "Progressing").expect("Progressing")["status"],
        "False"
    );

    // Its coordinator runs and holds the job's ledger in the S3 scratch; deleting the job (the finalizer)
    // removes its pods and that scratch.
    let deadline = Instant::now() + Duration::from_secs(30);
    while objects(env, "scratch/stuck/").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the coordinator never wrote its scratch"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.kubectl(&["delete", "arrayjob", "stuck", "-n", &ns, "--timeout=60s"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pods(env, &ns, "arrayjob.dev/job=stuck")
        .expect("pods")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "pods left behind");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        objects(env, "scratch/stuck/").await.is_empty(),
        "scratch left behind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_refused_s3_keys_and_no_progress_each_say_why() -> anyhow::Result<()> {
    let env = TestEnv::shared()?;
    setup(env).await;
    install_operator(env);
    let ns = env.namespace("aj-why").await?;
    s3_secret(env, &ns).await;

    // An image no node can pull: Stalled, reason ImagePullFailed, with the kubelet's message; an Event says it.
    let missing = example(env, "pull", |t| {
        t.replace(
            "workers: {replicas: 3,",
            "workers: {replicas: 1, image: ghcr.io/arrayjob/no-such-image:0,",
        )
    });
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&missing))?;
    let j = wait_job(env, &ns, "pull", 60, |j| {
        condition(j, "Stalled").is_some_and(|c| c["status"] == "True")
    })
    .expect("the job");
    let c = condition(&j, "Stalled").expect("Stalled");
    assert_eq!(c["reason"], "ImagePullFailed", "{c}");
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("ErrImagePull") && m.contains("no-such-image")),
        "{c}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !event_reasons(env, &ns, "pull")
        .iter()
        .any(|(r, _)| r == "ImagePullFailed")
    {
        assert!(
            Instant::now() < deadline,
            "no ImagePullFailed event: {:?}",
            event_reasons(env, &ns, "pull")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.kubectl(&["delete", "arrayjob", "pull", "-n", &ns, "--timeout=60s"])?;

    // S3 refuses the job's keys: Failed, reason S3AccessDenied, naming the request.
    let s3 = env.s3();
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "wrong-keys",
        "-n",
        &ns,
        &format!("--from-literal=AWS_ACCESS_KEY_ID={}", s3.access_key),
        "--from-literal=AWS_SECRET_ACCESS_KEY=not-the-secret",
        &format!("--from-literal=AWS_REGION={}", s3.region),
    ])?;
    label_for_arrayjob(env, &ns, "wrong-keys");
    let denied = example(env, "denied", |t| {
        t.replace(
            "s3CredentialsSecret: s3-credentials",
            "s3CredentialsSecret: wrong-keys",
        )
    });
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&denied))?;
    let j = wait_job(env, &ns, "denied", 120, |j| {
        j["status"]["phase"] == "Failed"
    })
    .expect("the job");
    let c = condition(&j, "Failed").expect("Failed");
    assert_eq!(c["reason"], "S3AccessDenied", "{c}");
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("HTTP 403")),
        "{c}"
    );

    // A source that never answers: no task finishes, so past progressDeadlineSeconds the job is Stalled
    // (it keeps running: a slow source may still answer).
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = silent.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let stuck = example(env, "idle", |t| {
        t.replace(
            "    s3: {keys: \"slices/{index:03}.png\", stop: 160}",
            &format!(
                "    http: {{urlTemplate: \"http://127.0.0.1:{port}/{{index}}.png\", stop: 160, retries: 0, timeoutSeconds: 600}}\n    sliceShape: [512, 512]\n    dtype: uint8"
            ),
        )
        .replace("  workers:", "  progressDeadlineSeconds: 10\n  workers:")
    });
    assert!(
        stuck.contains("progressDeadlineSeconds: 10") && stuck.contains("http:"),
        "{stuck}"
    );
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&stuck))?;
    let j = wait_job(env, &ns, "idle", 120, |j| {
        condition(j, "Stalled").is_some_and(|c| c["status"] == "True")
    })
    .expect("the job");
    let c = condition(&j, "Stalled").expect("Stalled");
    assert_eq!(c["reason"], "ProgressDeadlineExceeded", "{c}");
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no task finished for ")
                && m.contains("over progressDeadlineSeconds 10")),
        "{c}"
    );
    assert_eq!(j["status"]["phase"], "Running");
    assert_eq!(
        condition(&j, "Progressing").expect("Progressing")["status"],
        "False"
    );
    env.kubectl(&["delete", "arrayjob", "idle", "-n", &ns, "--timeout=60s"])?;
    Ok(())
}

/// A MutatingAdmissionPolicy (and its binding) named `name` that gives the pods named in `pods` of namespace
/// `ns` the memory limit and request `memory`, as a cluster's admission policy (a LimitRange, VPA) may;
/// removed when dropped.
struct MemoryPolicy<'a> {
    env: &'a TestEnv,
    name: String,
}

impl<'a> MemoryPolicy<'a> {
    fn apply(
        env: &'a TestEnv,
        name: &str,
        ns: &str,
        pods: &[&str],
        memory: &str,
    ) -> anyhow::Result<Self> {
        let names: Vec<String> = pods.iter().map(|p| format!("'{p}'")).collect();
        let yaml = format!(
            r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  reinvocationPolicy: Never
  matchConstraints:
    resourceRules:
    - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}}
  matchConditions:
  - name: named-pods
    expression: "request.namespace == '{ns}' && object.metadata.name in [{names}]"
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >-
        [JSONPatch{{op: "replace", path: "/spec/containers/0/resources",
          value: {{"limits": {{"memory": "{memory}"}}, "requests": {{"memory": "{memory}"}}}}}}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec: {{policyName: {name}}}
"#,
            names = names.join(", ")
        );
        env.kubectl_with_input(&["apply", "-f", "-"], Some(&yaml))?;
        Ok(MemoryPolicy {
            env,
            name: name.to_owned(),
        })
    }
}

impl Drop for MemoryPolicy<'_> {
    fn drop(&mut self) {
        for kind in ["mutatingadmissionpolicybinding", "mutatingadmissionpolicy"] {
            let _ = self
                .env
                .kubectl(&["delete", kind, &self.name, "--ignore-not-found"]);
        }
    }
}

/// A worker container's end, as its pod's status reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Termination {
    pod: String,
    reason: String,
    exit_code: i32,
    /// The pod's memory limit.
    memory: String,
}

/// Container terminations of the worker pods of a namespace, seen by a watch from now on.
fn watch_worker_terminations(
    client: kube::Client,
    ns: &str,
) -> std::sync::Arc<std::sync::Mutex<Vec<Termination>>> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::WatchStreamExt;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    let api: kube::Api<Pod> = kube::Api::namespaced(client, ns);
    let config = kube::runtime::watcher::Config::default().labels("arrayjob.dev/role=worker");
    tokio::spawn(async move {
        let mut pods = kube::runtime::watcher::watcher(api, config)
            .applied_objects()
            .boxed();
        while let Some(Ok(p)) = pods.next().await {
            let name = p.metadata.name.clone().unwrap_or_default();
            let memory = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.resources.as_ref()?.limits.as_ref()?.get("memory"))
                .map(|q| q.0.clone())
                .unwrap_or_default();
            let statuses = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default();
            for t in statuses
                .iter()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
            {
                let entry = Termination {
                    pod: name.clone(),
                    reason: t.reason.clone().unwrap_or_default(),
                    exit_code: t.exit_code,
                    memory: memory.clone(),
                };
                let mut seen = out.lock().unwrap_or_else(|e| e.into_inner());
                if !seen.contains(&entry) {
                    seen.push(entry);
                }
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_over_its_memory_limit_is_oom_killed_and_the_job_completes_with_the_local_runs_bytes()
-> anyhow::Result<()> {
    let env = TestEnv::shared()?;
    setup(env).await;
    install_operator(env);
    let d = tempfile::tempdir()?;
    let ns = env.namespace("aj-oom").await?;
    s3_secret(env, &ns).await;
    // The job's second worker pod gets 24Mi instead of the job's 1Gi: less than a worker uses (30-80 MiB).
    let _policy = MemoryPolicy::apply(
        env,
        &format!("aj-oom-{}", ns.name()),
        &ns,
        &["aj-oom-worker-1", "policy-probe"],
        "24Mi",
    )?;
    // Policies load asynchronously: a server-side dry run of a pod it names shows when it is in force.
    let probe = format!(
        "{{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {{\"name\": \"policy-probe\"}}, \"spec\": \
         {{\"containers\": [{{\"name\": \"c\", \"image\": \"{IMAGE}\", \"resources\": {{\"limits\": {{\"memory\": \"1Gi\"}}}}}}]}}}}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let limit = env.kubectl_with_input(
            &[
                "create",
                "--dry-run=server",
                "-n",
                &ns,
                "-f",
                "-",
                "-o",
                "jsonpath={.spec.containers[0].resources.limits.memory}",
            ],
            Some(&probe),
        )?;
        if limit.trim() == "24Mi" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the admission policy never applied: {limit}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let terminations = watch_worker_terminations(env.client().await?, &ns);
    let manifest = example(env, "oom", |t| {
        t.replace("stop: 160", &format!("stop: {SLICES}"))
    });
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&manifest))?;
    let wait = env.kubectl(&[
        "wait",
        "--for=condition=Complete",
        "arrayjob/oom",
        "-n",
        &ns,
        "--timeout=240s",
    ]);
    let j = get_job(env, &ns, "oom").expect("the job");
    assert!(
        wait.is_ok(),
        "not Complete: {}\n{wait:?}\noperator log:\n{}",
        j["status"],
        operator_log(env)
    );
    // The kernel killed that worker for its memory (the node agent reports it as kubelet does), and only it.
    let seen = terminations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let killed: Vec<_> = seen.iter().filter(|t| t.reason == "OOMKilled").collect();
    let want = Termination {
        pod: "aj-oom-worker-1".to_owned(),
        reason: "OOMKilled".to_owned(),
        exit_code: 137,
        memory: "24Mi".to_owned(),
    };
    assert_eq!(killed, [&want], "{seen:?}");
    let st = &j["status"];
    assert_eq!(st["phase"], "Succeeded", "{st}");
    assert_eq!(
        st["workerPods"]["lost"].as_i64(),
        Some(1),
        "the OOM-killed worker is counted: {st}"
    );
    let (done, total) = st["progress"]
        .as_str()
        .expect("progress")
        .split_once('/')
        .expect("n/m");
    assert_eq!(done, total);
    assert!(
        event_reasons(env, &ns, "oom")
            .iter()
            .any(|(r, _)| r == "WorkerReplaced"),
        "{:?}",
        event_reasons(env, &ns, "oom")
    );
    // The same bytes as `arrayjob run` of the manifest the coordinator ran.
    let mut remote = objects(env, &format!("outputs/{}/oom/", ns.name())).await;
    for f in [
        "summary.json",
        "workers.json",
        "timeline.html",
        "timeline.png",
    ] {
        remote.remove(f);
    }
    let cm = env.kubectl(&[
        "get",
        "configmap",
        "aj-oom-manifest",
        "-n",
        &ns,
        "-o",
        "jsonpath={.data.job\\.yaml}",
    ])?;
    let local = local_run(env, d.path(), &cm);
    assert_eq!(
        remote.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    for (k, v) in &local {
        assert!(remote[k] == *v, "{k} differs from `arrayjob run`'s");
    }
    env.kubectl(&["delete", "arrayjob", "oom", "-n", &ns, "--timeout=60s"])?;
    Ok(())
}

/// Standard base64 (the `data` of a Secret), without a crate for it.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
