//! The node agent's container mode on the real control plane: an image mapped to a podman image runs its
//! pods' containers with podman (the local Debian base image of `tests/env/setup.sh`, which has `sh` and
//! coreutils), so the kernel enforces what the pod asks for: the user, a read-only root filesystem, no
//! capabilities, no privilege escalation, the memory limit (a container over it is OOM-killed and reported
//! as kubelet reports it), with the pod's volumes, environment and loopback address; exec probes run in the
//! container; deletion sends SIGTERM to the container's process and removes the container.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use arrayjob_testenv::{EnvOptions, TestEnv, podman};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const IMAGE: &str = "registry.example/debian:bookworm";

fn env() -> Result<&'static TestEnv> {
    let env = TestEnv::shared_with(|| EnvOptions {
        node_agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_arrayjob-node-agent"))),
        ..EnvOptions::default()
    })?;
    env.map_image_to_container(IMAGE, &podman::base_image()?)?;
    Ok(env)
}

/// The operator's restricted security context, with `runAsGroup`.
fn restricted() -> serde_json::Value {
    json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": true,
           "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
           "seccompProfile": {"type": "RuntimeDefault"}})
}

async fn create(client: &Client, ns: &str, name: &str, spec: serde_json::Value) -> Result<Pod> {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec
    }))?;
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?)
}

fn container_status(p: &Pod) -> serde_json::Value {
    serde_json::to_value(&p.status).unwrap_or_default()["containerStatuses"][0].clone()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether podman still has a container whose name contains `part`.
fn container_exists(part: &str) -> Result<bool> {
    let names = podman::run(&["ps", "--all", "--format", "{{.Names}}"])?;
    Ok(names.lines().any(|n| n.contains(part)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restricted_container_runs_as_its_user_on_a_read_only_root_with_its_volumes() -> Result<()>
{
    let env = env()?;
    let client = env.client().await?;
    let ns = env.namespace("ctr-restricted").await?;
    let script = "echo uid=$(id -u) gid=$(id -g); echo $GREETING $POD_IP $(hostname); \
                  touch /x 2>&1; echo hi > /data/f && cat /data/f; \
                  cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; \
                  grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; \
                  cat /sys/fs/cgroup/memory/memory.limit_in_bytes; pwd";
    create(
        &client,
        &ns,
        "restricted",
        json!({
            "restartPolicy": "Never",
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "c", "image": IMAGE, "command": ["sh", "-c", script],
                "workingDir": "/data",
                "env": [{"name": "GREETING", "value": "hello"},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "resources": {"limits": {"memory": "64Mi"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "securityContext": restricted(),
            }],
        }),
    )
    .await?;
    let p = env
        .wait_pod(
            &client,
            &ns,
            "restricted",
            Duration::from_secs(60),
            "Succeeded",
            |p| phase(p) == "Succeeded" || phase(p) == "Failed",
        )
        .await?;
    let log = env.pod_log(&ns, "restricted", "c")?;
    assert_eq!(phase(&p), "Succeeded", "{log}");
    let ip = p
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod IP")?;
    let want = format!(
        "uid=65532 gid=65532\nhello {ip} restricted\ntouch: cannot touch '/x': Read-only file system\nhi\n{ns}\n\
         CapEff:\t0000000000000000\nNoNewPrivs:\t1\n67108864\n/data\n",
        ns = ns.name()
    );
    assert_eq!(log, want);
    let cs = container_status(&p);
    let id = cs["containerID"].as_str().context("containerID")?;
    assert!(
        id.starts_with("podman://") && id.len() == "podman://".len() + 64,
        "{cs}"
    );
    assert_eq!(cs["state"]["terminated"]["reason"], "Completed", "{cs}");
    // The finished container is removed.
    assert!(!container_exists(&format!("_restricted_{}_", ns.name()))?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_over_its_memory_limit_is_oom_killed_and_restarted() -> Result<()> {
    let env = env()?;
    let client = env.client().await?;
    let ns = env.namespace("ctr-oom").await?;
    // `tail` keeps the whole endless "line" of zeros in memory.
    create(
        &client,
        &ns,
        "hungry",
        json!({
            "restartPolicy": "OnFailure",
            "containers": [{
                "name": "c", "image": IMAGE, "command": ["sh", "-c", "echo started; exec tail /dev/zero"],
                "resources": {"limits": {"memory": "32Mi"}},
                "securityContext": restricted(),
            }],
        }),
    )
    .await?;
    let p = env
        .wait_pod(
            &client,
            &ns,
            "hungry",
            Duration::from_secs(60),
            "an OOM kill",
            |p| container_status(p)["lastState"]["terminated"]["reason"] == "OOMKilled",
        )
        .await?;
    let cs = container_status(&p);
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137, "{cs}");
    assert!(cs["restartCount"].as_i64() >= Some(1), "{cs}");
    assert_eq!(phase(&p), "Running", "OnFailure restarts it: {cs}");
    assert!(env.pod_log(&ns, "hungry", "c")?.starts_with("started\n"));
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete("hungry", &DeleteParams::default())
        .await?;
    env.wait_pod_gone(&client, &ns, "hungry", Duration::from_secs(30))
        .await?;
    assert!(!container_exists(&format!("_hungry_{}_", ns.name()))?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn run_as_non_root_with_an_image_running_as_root_is_refused_like_kubelet_does() -> Result<()>
{
    let env = env()?;
    let client = env.client().await?;
    let ns = env.namespace("ctr-root").await?;
    create(
        &client,
        &ns,
        "rooty",
        json!({
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c", "image": IMAGE, "command": ["true"]}],
        }),
    )
    .await?;
    let p = env
        .wait_pod(
            &client,
            &ns,
            "rooty",
            Duration::from_secs(30),
            "a waiting reason",
            |p| container_status(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError",
        )
        .await?;
    assert_eq!(
        container_status(&p)["state"]["waiting"]["message"],
        "container has runAsNonRoot and image will run as root (pod: \"rooty\", container: c)"
    );
    assert_eq!(phase(&p), "Pending");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_probe_runs_in_the_container_and_deletion_stops_it_with_sigterm() -> Result<()> {
    let env = env()?;
    let client = env.client().await?;
    let ns = env.namespace("ctr-stop").await?;
    // The shell is the container's PID 1: without its trap, SIGTERM would be ignored (as on a node).
    let script = "trap 'echo got TERM; exit 0' TERM; sleep 2; touch /data/ready; \
                  while true; do sleep 0.1; done";
    create(
        &client,
        &ns,
        "stoppable",
        json!({
            "terminationGracePeriodSeconds": 20,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "c", "image": IMAGE, "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "readinessProbe": {"exec": {"command": ["test", "-e", "/data/ready"]}, "periodSeconds": 1},
                "securityContext": restricted(),
            }],
        }),
    )
    .await?;
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let p = env
        .wait_pod(
            &client,
            &ns,
            "stoppable",
            Duration::from_secs(30),
            "running",
            |p| container_status(p)["state"]["running"].is_object(),
        )
        .await?;
    assert!(!ready(&p), "ready before the file exists");
    env.wait_pod(
        &client,
        &ns,
        "stoppable",
        Duration::from_secs(30),
        "Ready",
        ready,
    )
    .await?;
    let t0 = std::time::Instant::now();
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete("stoppable", &DeleteParams::default())
        .await?;
    env.wait_pod_gone(&client, &ns, "stoppable", Duration::from_secs(30))
        .await?;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}: SIGTERM did not reach the container",
        t0.elapsed()
    );
    assert!(env.pod_log(&ns, "stoppable", "c")?.ends_with("got TERM\n"));
    assert!(!container_exists(&format!("_stoppable_{}_", ns.name()))?);
    Ok(())
}
