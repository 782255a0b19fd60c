//! What the node agent does for the operator, the way kubelet and kube-proxy would, on the real
//! control plane: Services routed to ready pods on their loopback ClusterIPs, readiness probes
//! driving the Ready conditions, kubelet-style service variables, projected service-account
//! tokens used with RBAC from inside a pod, and emptyDir volumes shared between containers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use arrayjob_testenv::{EnvOptions, TestEnv};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const TEST_POD_IMAGE: &str = "registry.example/arrayjob/test-pod:dev";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn env() -> Result<&'static TestEnv> {
    let env = TestEnv::shared_with(|| EnvOptions {
        node_agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_arrayjob-node-agent"))),
        ..EnvOptions::default()
    })?;
    env.map_image(
        TEST_POD_IMAGE,
        Path::new(env!("CARGO_BIN_EXE_arrayjob-test-pod")),
    )?;
    Ok(env)
}

fn pod(name: &str, labels: serde_json::Value, spec: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels}, "spec": spec
    }))?)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn condition(p: &Pod, kind: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

fn is_ready(p: &Pod) -> bool {
    condition(p, "Ready").as_deref() == Some("True")
}

async fn create(client: &Client, ns: &str, p: &Pod) -> Result<Pod> {
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), p)
        .await?)
}

async fn create_service(client: &Client, ns: &str, svc: serde_json::Value) -> Result<Service> {
    let svc: Service = serde_json::from_value(svc)?;
    Ok(Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?)
}

fn cluster_ip(svc: &Service) -> Result<String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .context("the service has no clusterIP")
}

/// `GET /` over a fresh connection; the response body.
async fn http_body(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    let (_, body) = out
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {addr}: {out:?}"))?;
    Ok(body.to_owned())
}

/// Bodies of `n` requests in a row.
async fn bodies(addr: &str, n: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(http_body(addr).await?);
    }
    Ok(out)
}

/// Polls `addr` until `want` answers (the proxy follows the pods' Ready conditions).
async fn until_body(addr: &str, want: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_body(addr).await {
            Ok(b) if b == want => return Ok(()),
            Ok(b) => last = b,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{addr} never answered {want:?} within {timeout:?}; last: {last}")
}

fn tally(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for b in bodies {
        *t.entry(b.clone()).or_default() += 1;
    }
    t
}

fn web_pod(name: &str, ready_file: &Path) -> Result<Pod> {
    pod(
        name,
        json!({"app": "web"}),
        json!({"containers": [{
            "name": "web", "image": TEST_POD_IMAGE,
            "command": ["test-pod", "serve", "--addr", "$(POD_IP):8080", "--body", "$(POD_NAME)",
                        "--ready-file", ready_file.display().to_string()],
            "ports": [{"name": "http", "containerPort": 8080}],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                               "periodSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
        }]}),
    )
}

#[tokio::test]
async fn service_routes_to_ready_pods_only() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("svc").await?;
    let client = env.client().await?;
    let svc = create_service(
        &client,
        &ns,
        json!({"metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    let ip = cluster_ip(&svc)?;
    ensure!(
        ip.starts_with("127.1"),
        "ClusterIP {ip} is not in the loopback service range"
    );
    let addr = format!("{ip}:80");

    let dir = tempfile::tempdir()?;
    let (ready_a, ready_b) = (dir.path().join("a-ready"), dir.path().join("b-ready"));
    std::fs::write(&ready_a, b"")?;
    create(&client, &ns, &web_pod("web-a", &ready_a)?).await?;
    create(&client, &ns, &web_pod("web-b", &ready_b)?).await?;
    let t = Duration::from_secs(30);
    env.wait_pod(&client, &ns, "web-a", t, "Ready", is_ready)
        .await?;
    let b = env
        .wait_pod(&client, &ns, "web-b", t, "Running", |p| {
            phase(p) == "Running"
        })
        .await?;
    // The probe of web-b fails (503) every second; it never becomes ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = Api::<Pod>::namespaced(client.clone(), &ns)
        .get(&b.name_any())
        .await?;
    assert_eq!(condition(&b, "Ready").as_deref(), Some("False"));
    assert_eq!(condition(&b, "ContainersReady").as_deref(), Some("False"));
    let cs = b
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .context("statuses")?;
    assert_eq!((cs[0].ready, cs[0].started), (false, Some(true)));

    until_body(&addr, "web-a", t).await?;
    let only_a = bodies(&addr, 12).await?;
    assert_eq!(tally(&only_a), BTreeMap::from([("web-a".to_owned(), 12)]));

    // The probe starts to pass: web-b becomes ready and gets every second connection.
    std::fs::write(&ready_b, b"")?;
    env.wait_pod(&client, &ns, "web-b", t, "Ready", is_ready)
        .await?;
    until_body(&addr, "web-b", t).await?;
    let both = bodies(&addr, 20).await?;
    assert_eq!(
        tally(&both),
        BTreeMap::from([("web-a".to_owned(), 10), ("web-b".to_owned(), 10)])
    );

    // Two failures in a row make it not ready again; the traffic goes back to web-a only.
    std::fs::remove_file(&ready_b)?;
    env.wait_pod(&client, &ns, "web-b", t, "not Ready", |p| {
        condition(p, "Ready").as_deref() == Some("False")
    })
    .await?;
    let deadline = Instant::now() + t;
    while bodies(&addr, 2).await? != ["web-a", "web-a"] {
        ensure!(Instant::now() < deadline, "web-b still gets traffic");
    }
    let again = bodies(&addr, 10).await?;
    assert_eq!(tally(&again), BTreeMap::from([("web-a".to_owned(), 10)]));
    Ok(())
}

#[tokio::test]
async fn tcp_and_exec_probes_gate_readiness() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("tcpprobe").await?;
    let client = env.client().await?;
    let spec = json!({"containers": [{
        "name": "web", "image": TEST_POD_IMAGE,
        "command": ["test-pod", "serve", "--addr", "$(POD_IP):8080", "--body", "late",
                    "--ready-file", "/nonexistent", "--listen-after-ms", "3000"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}
    }]});
    create(&client, &ns, &pod("late", json!({}), spec)?).await?;
    let t = Duration::from_secs(30);
    let running = env
        .wait_pod(&client, &ns, "late", t, "Running", |p| {
            phase(p) == "Running"
        })
        .await?;
    let seen_running = Instant::now();
    assert_eq!(condition(&running, "Ready").as_deref(), Some("False"));
    let ready = env
        .wait_pod(&client, &ns, "late", t, "Ready", is_ready)
        .await?;
    let waited = seen_running.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "ready {waited:?} after start, before the port opened (3 s)"
    );
    let ip = ready.status.and_then(|s| s.pod_ip).context("podIP")?;
    assert_eq!(http_body(&format!("{ip}:8080")).await?, "late");

    // An exec probe in a pod without mounts (no token either) runs on the host's programs.
    let dir = tempfile::tempdir()?;
    let flag = dir.path().join("flag");
    let spec = json!({"automountServiceAccountToken": false, "containers": [{
        "name": "main", "image": "busybox", "command": ["sh", "-c", "while true; do sleep 0.1; done"],
        "readinessProbe": {"exec": {"command": ["test", "-e", flag.display().to_string()]},
                           "periodSeconds": 1}
    }]});
    create(&client, &ns, &pod("plain", json!({}), spec)?).await?;
    env.wait_pod(&client, &ns, "plain", t, "Running", |p| {
        phase(p) == "Running"
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("plain")
        .await?;
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
    std::fs::write(&flag, b"")?;
    env.wait_pod(&client, &ns, "plain", t, "Ready", is_ready)
        .await?;
    Ok(())
}

#[tokio::test]
async fn pods_get_service_variables_of_earlier_services() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("svcenv").await?;
    let client = env.client().await?;
    // The API server's own Service takes the first address of the loopback range.
    let kubernetes = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await?;
    let api_ip = cluster_ip(&kubernetes)?;
    ensure!(
        api_ip.starts_with("127.") && api_ip.ends_with(".1"),
        "kubernetes Service at {api_ip}"
    );
    let svc = create_service(
        &client,
        &ns,
        json!({"metadata": {"name": "coord-svc"},
               "spec": {"selector": {"app": "coord"}, "ports": [{"name": "rpc", "port": 7000}]}}),
    )
    .await?;
    let ip = cluster_ip(&svc)?;
    let script = "echo \"$COORD_SVC_SERVICE_HOST $COORD_SVC_SERVICE_PORT $COORD_SVC_SERVICE_PORT_RPC $COORD_SVC_PORT\"";
    let p = pod(
        "reader",
        json!({}),
        json!({"restartPolicy": "Never",
               "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]}),
    )?;
    create(&client, &ns, &p).await?;
    env.wait_pod(
        &client,
        &ns,
        "reader",
        Duration::from_secs(30),
        "Succeeded",
        |p| phase(p) == "Succeeded",
    )
    .await?;
    assert_eq!(
        env.pod_log(&ns, "reader", "main")?,
        format!("{ip} 7000 7000 tcp://{ip}:7000\n")
    );
    Ok(())
}

/// The security fields the operator sets; the agent accepts them (and enforces none).
fn restricted() -> serde_json::Value {
    json!({"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
           "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]},
           "seccompProfile": {"type": "RuntimeDefault"}})
}

#[tokio::test]
async fn projected_token_works_in_cluster_with_rbac_and_stays_in_its_pod() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("satoken").await?;
    let client = env.client().await?;
    env.kubectl(&["create", "serviceaccount", "worker", "-n", &ns])?;
    env.kubectl(&[
        "create",
        "role",
        "pod-lister",
        "--verb=list",
        "--resource=pods",
        "-n",
        &ns,
    ])?;
    env.kubectl(&[
        "create",
        "rolebinding",
        "worker-lists-pods",
        "--role=pod-lister",
        "-n",
        &ns,
        &format!("--serviceaccount={}:worker", ns.name()),
    ])?;
    let api_check = |sa: &str| {
        json!({"restartPolicy": "Never", "serviceAccountName": sa,
               "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
               "containers": [{"name": "main", "image": TEST_POD_IMAGE, "securityContext": restricted(),
                               "command": ["test-pod", "api-check", "--namespace", ns.name()]}]})
    };
    let created = create(&client, &ns, &pod("api", json!({}), api_check("worker"))?).await?;
    // The ServiceAccount admission plugin added the projected token volume the agent mounts.
    let vols = created
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    ensure!(
        vols.iter()
            .any(|v| v.name.starts_with("kube-api-access-") && v.projected.is_some()),
        "no kube-api-access volume: {vols:?}"
    );
    let t = Duration::from_secs(30);
    let done = env
        .wait_pod(&client, &ns, "api", t, "finished", |p| {
            matches!(phase(p), "Succeeded" | "Failed")
        })
        .await?;
    let log = env.pod_log(&ns, "api", "main")?;
    assert_eq!(phase(&done), "Succeeded", "{log}");
    assert_eq!(
        log,
        format!(
            "user: system:serviceaccount:{}:worker\nbound to pod: api\nlist pods: ok 1\ncreate configmap: 403 Forbidden\n",
            ns.name()
        )
    );

    // A long-running pod holds its token; others see no file, or their own token.
    let holder = json!({"serviceAccountName": "worker", "containers": [{"name": "main", "image": "busybox",
        "command": ["sh", "-c", format!("cat {SA_DIR}/namespace; echo; head -1 {SA_DIR}/ca.crt; wc -c < {SA_DIR}/token; while true; do sleep 0.1; done")]}]});
    create(&client, &ns, &pod("holder", json!({}), holder)?).await?;
    env.wait_pod(&client, &ns, "holder", t, "Ready", is_ready)
        .await?;
    let deadline = Instant::now() + t;
    let holder_log = loop {
        let l = env.pod_log(&ns, "holder", "main")?;
        if l.lines().count() >= 3 || Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<&str> = holder_log.lines().collect();
    assert_eq!(lines[..2], [ns.name(), "-----BEGIN CERTIFICATE-----"]);
    let token_len: usize = lines[2].trim().parse()?;
    assert!(token_len > 100, "token of {token_len} bytes");
    ensure!(
        !Path::new(SA_DIR).join("token").exists(),
        "the token is visible on the host at {SA_DIR}"
    );

    let check =
        format!("if [ -e {SA_DIR}/token ]; then echo token present; else echo no token; fi");
    let no_token = json!({"restartPolicy": "Never", "serviceAccountName": "worker",
        "automountServiceAccountToken": false,
        "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", check]}]});
    create(&client, &ns, &pod("no-token", json!({}), no_token)?).await?;
    create(
        &client,
        &ns,
        &pod("other", json!({}), api_check("default"))?,
    )
    .await?;
    for name in ["no-token", "other"] {
        env.wait_pod(&client, &ns, name, t, "Succeeded", |p| {
            phase(p) == "Succeeded"
        })
        .await?;
    }
    assert_eq!(env.pod_log(&ns, "no-token", "main")?, "no token\n");
    assert_eq!(
        env.pod_log(&ns, "other", "main")?,
        format!(
            "user: system:serviceaccount:{0}:default\nbound to pod: other\nlist pods: 403 Forbidden\ncreate configmap: 403 Forbidden\n",
            ns.name()
        )
    );
    Ok(())
}

#[tokio::test]
async fn empty_dir_is_shared_by_containers_and_removed_with_the_pod() -> Result<()> {
    let env = env()?;
    let ns = env.namespace("emptydir").await?;
    let client = env.client().await?;
    let (wpath, rpath) = ("/var/lib/arrayjob-e2e/scratch", "/mnt/arrayjob-e2e/in");
    let writer = format!("echo 'bytes from writer' > {wpath}/msg; while true; do sleep 0.1; done");
    let reader = format!(
        "while [ ! -e {rpath}/msg ]; do sleep 0.1; done; cat {rpath}/msg; \
         (echo x > {rpath}/other) 2>&1 | grep -o 'Read-only file system'; \
         while true; do sleep 0.1; done"
    );
    let spec = json!({
    "terminationGracePeriodSeconds": 5,
    "volumes": [{"name": "scratch", "emptyDir": {}}],
    "containers": [
        {"name": "writer", "image": "busybox", "command": ["sh", "-c", writer],
         "volumeMounts": [{"name": "scratch", "mountPath": wpath}]},
        {"name": "reader", "image": "busybox", "command": ["sh", "-c", reader],
         "volumeMounts": [{"name": "scratch", "mountPath": rpath, "readOnly": true}],
         // Runs in the pod's mount namespace: the file exists only there.
         "readinessProbe": {"exec": {"command": ["cat", format!("{rpath}/msg")]}, "periodSeconds": 1}}
    ]});
    let created = create(&client, &ns, &pod("scratch", json!({}), spec)?).await?;
    let uid = created.uid().context("uid")?;
    let t = Duration::from_secs(30);
    env.wait_pod(&client, &ns, "scratch", t, "Ready", is_ready)
        .await?;
    let deadline = Instant::now() + t;
    while env.pod_log(&ns, "scratch", "reader")?.lines().count() < 2 {
        ensure!(
            Instant::now() < deadline,
            "reader log: {:?}",
            env.pod_log(&ns, "scratch", "reader")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.pod_log(&ns, "scratch", "reader")?,
        "bytes from writer\nRead-only file system\n"
    );
    let on_host = env
        .run_dir()
        .join("agent")
        .join("volumes")
        .join(&uid)
        .join("scratch");
    assert_eq!(
        std::fs::read_to_string(on_host.join("msg"))?,
        "bytes from writer\n"
    );
    ensure!(
        !Path::new(wpath).join("msg").exists(),
        "the mount leaked to the host at {wpath}"
    );

    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete("scratch", &DeleteParams::default())
        .await?;
    env.wait_pod_gone(&client, &ns, "scratch", t).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_host.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} still exists",
            on_host.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
