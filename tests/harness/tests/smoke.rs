//! Smoke tests proving that each part of the test environment is real: the API server with CRDs
//! (via kubectl), the garbage collector and the scheduler (kube-controller-manager,
//! kube-scheduler), the node agent (process runs, status, SIGTERM on deletion, restarts, spot
//! reclaim), helm, and SeaweedFS through aws-sdk-s3.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use arrayjob_testenv::{CHAOS_TAINT_KEY, EnvOptions, TestEnv, locate};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;

fn env() -> Result<&'static TestEnv> {
    Ok(TestEnv::shared_with(|| EnvOptions {
        node_agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_arrayjob-node-agent"))),
        ..EnvOptions::default()
    })?)
}

fn pod(name: &str, spec: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
    )?)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn terminated_exit_code(p: &Pod) -> Option<i32> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

#[tokio::test]
async fn crd_and_custom_resource_with_kubectl() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("crd").await?;
    let fixtures = locate::fixtures_dir().join("crd");
    let crd = fixtures.join("widget-crd.yaml");
    let out = env.kubectl(&["apply", "-f", &crd.display().to_string()])?;
    ensure!(
        out.contains("widgets.testenv.arrayjob.dev"),
        "apply said: {out}"
    );
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/widgets.testenv.arrayjob.dev",
    ])?;
    let cr = fixtures.join("widget.yaml");
    let out = env.kubectl(&["apply", "-n", &ns, "-f", &cr.display().to_string()])?;
    ensure!(
        out.contains("widget.testenv.arrayjob.dev/blue-one created"),
        "apply said: {out}"
    );
    let size = env.kubectl(&[
        "get",
        "widget",
        "blue-one",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.size}/{.spec.colour}",
    ])?;
    assert_eq!(size, "3/blue");

    // The same object through kube-rs.
    let client = env.client().await?;
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "testenv.arrayjob.dev",
        "v1",
        "Widget",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ar);
    let w = api.get("blue-one").await?;
    assert_eq!(w.data["spec"]["size"], json!(3));

    // The schema is enforced by the API server.
    let bad = "apiVersion: testenv.arrayjob.dev/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  size: 0\n";
    let err = env
        .kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(bad))
        .expect_err("size 0 violates minimum 1");
    assert!(
        err.to_string().contains("spec.size"),
        "unexpected error: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn owner_reference_garbage_collection() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("gc").await?;
    let client = env.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "owner"}, "data": {"role": "owner"}}))?;
    let owner = cms.create(&PostParams::default(), &owner).await?;
    let uid = owner.metadata.uid.context("owner has a uid")?;
    let mut p = pod(
        "owned",
        json!({
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "sleep 60"]}],
        }),
    )?;
    p.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid
    }))?]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &p).await?;
    env.wait_pod(
        &client,
        &ns,
        "owned",
        Duration::from_secs(30),
        "Running",
        |p| phase(p) == "Running",
    )
    .await?;

    cms.delete("owner", &DeleteParams::background()).await?;
    env.wait_pod_gone(&client, &ns, "owned", Duration::from_secs(60))
        .await?;
    Ok(())
}

#[tokio::test]
async fn node_selector_schedules_and_pod_runs_to_success() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("sched").await?;
    let client = env.client().await?;
    let p = pod(
        "hello",
        json!({
            "restartPolicy": "Never",
            "nodeSelector": {"karpenter.sh/capacity-type": "spot", "topology.kubernetes.io/zone": "us-east-1c"},
            "containers": [{
                "name": "main", "image": "busybox:1.36",
                "command": ["sh", "-c", "echo \"pod=$POD_NAME node=$NODE_NAME ip=$POD_IP greeting=$GREETING\""],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "GREETING", "value": "hi-$(POD_NAME)"}
                ]
            }],
        }),
    )?;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &p)
        .await?;
    let done = env
        .wait_pod(
            &client,
            &ns,
            "hello",
            Duration::from_secs(30),
            "Succeeded",
            |p| phase(p) == "Succeeded",
        )
        .await?;
    let spec = done.spec.as_ref().context("spec")?;
    assert_eq!(spec.node_name.as_deref(), Some("spot-c"));
    let ip = done
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("podIP")?;
    assert!(ip.starts_with("127.0."), "pod IP {ip} is not 127.0.x.y");
    assert_eq!(terminated_exit_code(&done), Some(0));
    let log = env.pod_log(&ns, "hello", "main")?;
    assert_eq!(
        log.trim(),
        format!("pod=hello node=spot-c ip={ip} greeting=hi-hello")
    );

    // A failing container with restartPolicy Never ends Failed with its exit code.
    let f = pod(
        "fails",
        json!({"restartPolicy": "Never",
               "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo boom >&2; exit 3"]}]}),
    )?;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &f)
        .await?;
    let failed = env
        .wait_pod(
            &client,
            &ns,
            "fails",
            Duration::from_secs(30),
            "Failed",
            |p| phase(p) == "Failed",
        )
        .await?;
    assert_eq!(terminated_exit_code(&failed), Some(3));
    assert_eq!(env.pod_log(&ns, "fails", "main")?.trim(), "boom");
    Ok(())
}

#[tokio::test]
async fn on_failure_restarts_until_success() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("restart").await?;
    let client = env.client().await?;
    // Fails on the first run (no marker yet in the pod's working directory), succeeds on the second.
    let p = pod(
        "flaky",
        json!({"restartPolicy": "OnFailure",
               "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c",
                   "if [ -e tried ]; then echo second; exit 0; fi; touch tried; echo first; exit 1"]}]}),
    )?;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &p)
        .await?;
    let done = env
        .wait_pod(
            &client,
            &ns,
            "flaky",
            Duration::from_secs(30),
            "Succeeded",
            |p| phase(p) == "Succeeded",
        )
        .await?;
    let cs = done
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .context("container status")?;
    assert_eq!(cs.restart_count, 1);
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("lastState.terminated")?;
    assert_eq!(last.exit_code, 1);
    assert_eq!(env.pod_log(&ns, "flaky", "main")?, "first\nsecond\n");
    Ok(())
}

#[tokio::test]
async fn deleting_a_running_pod_sends_sigterm() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("sigterm").await?;
    let client = env.client().await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("term-marker");
    let script = "trap 'echo \"got TERM as $POD_NAME\" > \"$MARKER\"; exit 0' TERM; echo started; while true; do sleep 0.1; done";
    let p = pod(
        "sleeper",
        json!({"terminationGracePeriodSeconds": 20,
               "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script],
                   "env": [{"name": "MARKER", "value": marker.display().to_string()},
                           {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}),
    )?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &p).await?;
    env.wait_pod(
        &client,
        &ns,
        "sleeper",
        Duration::from_secs(30),
        "Ready",
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        },
    )
    .await?;
    let t = Instant::now();
    pods.delete("sleeper", &DeleteParams::default()).await?;
    env.wait_pod_gone(&client, &ns, "sleeper", Duration::from_secs(30))
        .await?;
    // It left on SIGTERM, well before the 20 s grace period would have forced a SIGKILL.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(&marker)?.trim(),
        "got TERM as sleeper"
    );

    // A process that ignores SIGTERM is killed when its grace period is over.
    let stubborn = pod(
        "stubborn",
        json!({"terminationGracePeriodSeconds": 2,
               "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c",
                   "trap '' TERM; echo started; while true; do sleep 0.1; done"]}]}),
    )?;
    pods.create(&PostParams::default(), &stubborn).await?;
    env.wait_pod(
        &client,
        &ns,
        "stubborn",
        Duration::from_secs(30),
        "Running",
        |p| phase(p) == "Running",
    )
    .await?;
    let t = Instant::now();
    pods.delete("stubborn", &DeleteParams::default()).await?;
    env.wait_pod_gone(&client, &ns, "stubborn", Duration::from_secs(30))
        .await?;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "SIGKILL after the 2 s grace period, took {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn nodes_look_like_ec2_and_heartbeat() -> Result<()> {
    let env = env()?;
    let client = env.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get("ondemand-a").await?;
    let labels = n.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("node.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("m5.xlarge")
    );
    assert_eq!(
        labels
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("us-east-1a")
    );
    assert_eq!(
        labels.get("karpenter.sh/capacity-type").map(String::as_str),
        Some("on-demand")
    );
    let alloc = n
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .context("allocatable")?;
    assert_eq!(alloc.get("cpu").map(|q| q.0.as_str()), Some("4"));
    assert_eq!(alloc.get("memory").map(|q| q.0.as_str()), Some("16Gi"));
    let chaos = nodes.get_opt("spot-chaos").await?;
    if let Some(chaos) = chaos {
        // (absent once the reclaim test has run)
        let taints = chaos.spec.and_then(|s| s.taints).unwrap_or_default();
        assert!(
            taints
                .iter()
                .any(|t| t.key == CHAOS_TAINT_KEY && t.effect == "NoSchedule"),
            "{taints:?}"
        );
    }
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let lease = leases.get("ondemand-a").await?;
    let spec = lease.spec.context("lease spec")?;
    assert_eq!(spec.holder_identity.as_deref(), Some("ondemand-a"));
    let renewed = spec.renew_time.context("renewTime")?.0;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed);
    assert!(age.as_secs() < 30, "lease renewed {}s ago", age.as_secs());
    Ok(())
}

#[tokio::test]
async fn spot_reclaim_terminates_pods_and_removes_the_node() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("reclaim").await?;
    let client = env.client().await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("reclaimed");
    let script = "trap 'echo reclaimed > \"$MARKER\"; exit 0' TERM; while true; do sleep 0.1; done";
    let p = pod(
        "on-spot",
        json!({"nodeSelector": {"kubernetes.io/hostname": "spot-chaos"},
               "tolerations": [{"key": CHAOS_TAINT_KEY, "operator": "Equal", "value": "chaos", "effect": "NoSchedule"}],
               "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script],
                   "env": [{"name": "MARKER", "value": marker.display().to_string()}]}]}),
    )?;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &p)
        .await?;
    env.wait_pod(
        &client,
        &ns,
        "on-spot",
        Duration::from_secs(30),
        "Running",
        |p| phase(p) == "Running",
    )
    .await?;
    let report = env.reclaim_spot_node("spot-chaos", Some(5)).await?;
    assert_eq!(report.evicted, vec![format!("{}/on-spot", ns.name())]);
    assert!(report.left_running.is_empty(), "{report:?}");
    assert_eq!(std::fs::read_to_string(&marker)?.trim(), "reclaimed");
    let nodes: Api<Node> = Api::all(client);
    ensure!(
        nodes.get_opt("spot-chaos").await?.is_none(),
        "node spot-chaos still exists"
    );
    Ok(())
}

#[tokio::test]
async fn helm_lint_and_install_a_chart() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("helm").await?;
    let chart = locate::fixtures_dir().join("charts").join("tiny");
    let chart = chart.display().to_string();
    // Both helms are the pinned builds from the Go modules (tests/env/build-helm.sh).
    let v3 = env.helm(&["version", "--short"])?;
    assert!(v3.starts_with(&locate::pinned("HELM3_VERSION")?), "{v3}");
    let v4 = env.helm4(&["version", "--short"])?;
    assert!(v4.starts_with(&locate::pinned("HELM4_VERSION")?), "{v4}");
    for lint in [
        env.helm(&["lint", "--strict", &chart])?,
        env.helm4(&["lint", "--strict", &chart])?,
    ] {
        assert!(
            lint.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{lint}"
        );
    }
    let out = env.helm(&[
        "install",
        "demo",
        &chart,
        "--namespace",
        &ns,
        "--set",
        "greeting=hi from the test",
    ])?;
    assert!(out.contains("STATUS: deployed"), "{out}");
    let status: serde_json::Value =
        serde_json::from_str(&env.helm(&["status", "demo", "--namespace", &ns, "-o", "json"])?)?;
    assert_eq!(status["info"]["status"], json!("deployed"));
    let client = env.client().await?;
    let cm = Api::<ConfigMap>::namespaced(client, &ns)
        .get("demo-settings")
        .await?;
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hi from the test")
    );
    Ok(())
}

#[tokio::test]
async fn s3_put_get_list_multipart_and_auth() -> Result<()> {
    let env = env()?;
    let s3 = env.s3().client();
    let bucket = format!("smoke-{}", std::process::id());
    s3.create_bucket().bucket(&bucket).send().await?;

    let body = b"chunk 0,0 of a tiny image stack".to_vec();
    s3.put_object()
        .bucket(&bucket)
        .key("stack/c/0/0")
        .body(ByteStream::from(body.clone()))
        .send()
        .await?;
    s3.put_object()
        .bucket(&bucket)
        .key("stack/zarr.json")
        .body(ByteStream::from_static(b"{}"))
        .send()
        .await?;
    let got = s3
        .get_object()
        .bucket(&bucket)
        .key("stack/c/0/0")
        .send()
        .await?;
    assert_eq!(got.body.collect().await?.into_bytes().as_ref(), &body[..]);
    let ranged = s3
        .get_object()
        .bucket(&bucket)
        .key("stack/c/0/0")
        .range("bytes=6-8")
        .send()
        .await?;
    assert_eq!(ranged.body.collect().await?.into_bytes().as_ref(), b"0,0");

    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("stack/")
        .send()
        .await?;
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["stack/c/0/0", "stack/zarr.json"]);

    // Multipart: two parts (the first at the 5 MiB minimum), then read the whole object back.
    let part1: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let part2: Vec<u8> = b"tail of the multipart object".to_vec();
    let up = s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key("big/object")
        .send()
        .await?;
    let upload_id = up.upload_id().context("upload id")?;
    let mut parts = Vec::new();
    for (n, data) in [(1, &part1), (2, &part2)] {
        let r = s3
            .upload_part()
            .bucket(&bucket)
            .key("big/object")
            .upload_id(upload_id)
            .part_number(n)
            .body(ByteStream::from(data.clone()))
            .send()
            .await?;
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(r.e_tag().context("etag")?)
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(&bucket)
        .key("big/object")
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    let whole = s3
        .get_object()
        .bucket(&bucket)
        .key("big/object")
        .send()
        .await?
        .body
        .collect()
        .await?
        .into_bytes();
    assert_eq!(whole.len(), part1.len() + part2.len());
    assert_eq!(&whole[..part1.len()], &part1[..]);
    assert_eq!(&whole[part1.len()..], &part2[..]);

    // A wrong secret is rejected.
    let bad = env.s3().client_with(&env.s3().access_key, "not-the-secret");
    let err = bad
        .get_object()
        .bucket(&bucket)
        .key("stack/c/0/0")
        .send()
        .await
        .expect_err("a wrong secret must be rejected");
    let code = err
        .as_service_error()
        .and_then(|e| aws_sdk_s3::error::ProvideErrorMetadata::code(e))
        .map(str::to_owned);
    assert_eq!(code.as_deref(), Some("SignatureDoesNotMatch"), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn rbac_limits_a_service_account_token() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("rbac").await?;
    env.kubectl(&["create", "serviceaccount", "reader", "-n", &ns])?;
    // A token signed with the service-account key, checked by the API server.
    let token = env.kubectl(&["create", "token", "reader", "-n", &ns])?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("reader.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: reader\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: reader}}\ncurrent-context: c\n",
            env.api_server(),
            env.binaries().pki_dir.join("ca.crt").display(),
            token.trim()
        ),
    )?;
    let denied = env
        .kubectl_as(&kubeconfig, &["get", "pods", "-n", &ns], None)
        .expect_err("no role is bound yet");
    let msg = denied.to_string();
    assert!(
        msg.contains(&format!(
            "User \"system:serviceaccount:{}:reader\" cannot list resource \"pods\"",
            ns.name()
        )),
        "{msg}"
    );
    env.kubectl(&[
        "create",
        "rolebinding",
        "reader-view",
        "-n",
        &ns,
        "--clusterrole=view",
        &format!("--serviceaccount={}:reader", ns.name()),
    ])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match env.kubectl_as(&kubeconfig, &["get", "pods", "-n", &ns], None) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Still read-only.
    let write = env
        .kubectl_as(
            &kubeconfig,
            &["create", "configmap", "x", "-n", &ns, "--from-literal=a=b"],
            None,
        )
        .expect_err("view does not allow create");
    assert!(write.to_string().contains("forbidden"), "{write}");
    Ok(())
}

/// A Python 3 for pod images: `ARRAYJOB_PYTHON` when set, else `python3` found on `PATH`.
fn python3() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ARRAYJOB_PYTHON") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "ARRAYJOB_PYTHON={} is not a file", p.display());
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("python3"))
        .find(|p| p.is_file())
        .context("the test needs python3 on PATH (or ARRAYJOB_PYTHON)")
}

#[tokio::test]
async fn pods_get_distinct_loopback_ips() -> Result<()> {
    let env = env()?;
    let python = python3()?;
    env.map_image("example.com/tools/python:3", &python)?;
    let ns = env.namespace("podip").await?;
    let client = env.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Both pods listen on the same port, each on its own pod IP.
    let server = r#"import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + os.environ["POD_NAME"]).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer((os.environ["POD_IP"], 18080), H).serve_forever()
"#;
    for name in ["web-1", "web-2"] {
        let p = pod(
            name,
            json!({"containers": [{"name": "web", "image": "example.com/tools/python:3",
                "command": ["python3", "-c", server],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}]}),
        )?;
        pods.create(&PostParams::default(), &p).await?;
    }
    let mut ips = Vec::new();
    for name in ["web-1", "web-2"] {
        let p = env
            .wait_pod(
                &client,
                &ns,
                name,
                Duration::from_secs(30),
                "Running",
                |p| phase(p) == "Running",
            )
            .await?;
        let ip = p.status.and_then(|s| s.pod_ip).context("podIP")?;
        ips.push(ip.clone());
        // Poll until the server is listening, then read its answer over plain HTTP.
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = loop {
            match http_get(&ip, 18080).await {
                Ok(b) => break b,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        };
        assert!(body.ends_with(&format!("hello from {name}")), "{body}");
    }
    assert_ne!(ips[0], ips[1]);
    Ok(())
}

async fn http_get(ip: &str, port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn secrets_config_maps_and_two_containers() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("envsrc").await?;
    let client = env.client().await?;
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "s3-creds",
        "-n",
        &ns,
        "--from-literal=access-key=AK123",
        "--from-literal=secret-key=SK456",
    ])?;
    env.kubectl(&[
        "create",
        "configmap",
        "settings",
        "-n",
        &ns,
        "--from-literal=CHUNK=64",
        "--from-literal=LEVEL=3",
    ])?;
    let p = pod(
        "two",
        json!({"restartPolicy": "Never",
        "containers": [
            {"name": "a", "image": "busybox", "command": ["sh", "-c", "echo \"a $AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY\""],
             "env": [
                 {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "access-key"}}},
                 {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secret-key"}}}
             ]},
            {"name": "b", "image": "busybox", "command": ["sh", "-c", "echo \"b $CFG_CHUNK $CFG_LEVEL\""],
             "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]}
        ]}),
    )?;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &p)
        .await?;
    let done = env
        .wait_pod(
            &client,
            &ns,
            "two",
            Duration::from_secs(30),
            "Succeeded",
            |p| phase(p) == "Succeeded",
        )
        .await?;
    let statuses = done
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.iter().all(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0 && t.reason.as_deref() == Some("Completed"))
    }));
    assert_eq!(env.pod_log(&ns, "two", "a")?, "a AK123 SK456\n");
    assert_eq!(env.pod_log(&ns, "two", "b")?, "b 64 3\n");
    Ok(())
}

#[tokio::test]
async fn unmapped_image_waits_until_mapped() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("imgmap").await?;
    let client = env.client().await?;
    let image = format!("registry.example/arrayjob/late-{}:v1", std::process::id());
    let p = pod(
        "late",
        json!({"restartPolicy": "Never",
               "containers": [{"name": "main", "image": image, "command": ["late", "-c", "echo mapped late"]}]}),
    )?;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &p)
        .await?;
    let waiting = env
        .wait_pod(
            &client,
            &ns,
            "late",
            Duration::from_secs(30),
            "ErrImagePull",
            |p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .and_then(|c| c.state.as_ref())
                    .and_then(|s| s.waiting.as_ref())
                    .is_some_and(|w| w.reason.as_deref() == Some("ErrImagePull"))
            },
        )
        .await?;
    assert_eq!(phase(&waiting), "Pending");
    env.map_image(&image, std::path::Path::new("/bin/sh"))?;
    env.wait_pod(
        &client,
        &ns,
        "late",
        Duration::from_secs(30),
        "Succeeded",
        |p| phase(p) == "Succeeded",
    )
    .await?;
    assert_eq!(env.pod_log(&ns, "late", "main")?, "mapped late\n");
    Ok(())
}
