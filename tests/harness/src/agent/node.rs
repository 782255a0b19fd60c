//! Node registration and heartbeats.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::{Ctx, NodeSpec, lock};
use crate::Result;

const MANAGER: &str = "arrayjob-node-agent";

pub(crate) fn now_time() -> Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null)
}

fn now_micro() -> Value {
    serde_json::to_value(MicroTime(Timestamp::now())).unwrap_or(Value::Null)
}

fn labels(spec: &NodeSpec) -> serde_json::Map<String, Value> {
    let mut l = serde_json::Map::new();
    let mut put = |k: &str, v: &str| {
        l.insert(k.to_owned(), Value::String(v.to_owned()));
    };
    put("kubernetes.io/hostname", &spec.name);
    put("kubernetes.io/os", "linux");
    put("kubernetes.io/arch", "amd64");
    put("node.kubernetes.io/instance-type", &spec.instance_type);
    put("topology.kubernetes.io/zone", &spec.zone);
    put("topology.kubernetes.io/region", &spec.region());
    put("karpenter.sh/capacity-type", &spec.capacity_type);
    put("arrayjob.dev/test-node", "true");
    for (k, v) in &spec.labels {
        put(k, v);
    }
    l
}

fn conditions(since: &Value) -> Value {
    let now = now_time();
    let cond = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    json!([
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "test node"
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "test node"
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "test node"
        ),
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "arrayjob-node-agent is posting ready status"
        ),
    ])
}

/// Creates (or updates) the Node object and its status.
pub(crate) async fn register(ctx: &Ctx, spec: &NodeSpec) -> Result<()> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let provider = format!(
        "aws:///{}/i-{:017x}",
        spec.zone,
        spec.name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)))
    );
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels(spec)},
        "spec": {"providerID": provider, "taints": spec.taints},
    });
    api.patch(
        &spec.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&node),
    )
    .await?;
    let ip = ctx
        .node_ips
        .get(&spec.name)
        .map(ToString::to_string)
        .unwrap_or_else(|| "127.0.0.1".into());
    let resources = json!({"cpu": spec.cpu, "memory": spec.memory, "pods": spec.pods.to_string(),
                           "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": conditions(&now_time()),
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": spec.name}],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "arrayjob test node", "containerRuntimeVersion": "arrayjob-node-agent://0.1",
            "kubeletVersion": "v1.37.0", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": "amd64"
        }
    }});
    api.patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    renew_lease(ctx, &spec.name).await?;
    Ok(())
}

async fn renew_lease(ctx: &Ctx, node: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let uid = nodes.get(node).await?.metadata.uid;
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now_micro()},
    });
    api.patch(
        node,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&lease),
    )
    .await?;
    Ok(())
}

async fn beat(ctx: &Ctx, node: &str, since: &Value) -> Result<()> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let status = json!({"status": {"conditions": conditions(since)}});
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    renew_lease(ctx, node).await
}

/// Renews every live node's Lease and Ready condition each heartbeat interval. A node that was
/// deleted (spot reclaim) is dropped from `live` and no longer renewed.
pub(crate) async fn heartbeat_loop(ctx: Arc<Ctx>, live: Arc<Mutex<HashSet<String>>>) {
    let since = now_time();
    loop {
        tokio::time::sleep(ctx.cfg.heartbeat).await;
        let names: Vec<String> = lock(&live).iter().cloned().collect();
        for name in names {
            match beat(&ctx, &name, &since).await {
                Ok(()) => {}
                Err(crate::Error::Kube(kube::Error::Api(s))) if s.code == 404 => {
                    tracing::warn!(node = %name, "node is gone; heartbeats stop");
                    lock(&live).remove(&name);
                }
                Err(e) => tracing::warn!(node = %name, "heartbeat failed: {e}"),
            }
        }
    }
}
