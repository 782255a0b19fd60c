//! Simulated spot interruption of a node.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Result;

/// The taint put on a node that is being reclaimed (the one Karpenter uses for disruption).
pub const DISRUPTED_TAINT: &str = "karpenter.sh/disrupted";

/// What a reclaim did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// `namespace/name` of the pods that were deleted.
    pub evicted: Vec<String>,
    /// Pods still present when the node was removed (their processes are then SIGKILLed).
    pub left_running: Vec<String>,
}

/// Simulates a spot reclaim of `node`: cordons it and adds the [`DISRUPTED_TAINT`] NoSchedule
/// taint, deletes its pods with `grace` seconds (the pods' own grace period when `None`), waits
/// up to `grace + 10` s for them to go, then deletes the Node (the agent kills whatever is left).
pub async fn reclaim_spot_node(
    client: &Client,
    node: &str,
    grace: Option<u32>,
) -> Result<ReclaimReport> {
    let nodes: Api<Node> = Api::all(client.clone());
    let current = nodes.get(node).await?;
    let mut taints: Vec<serde_json::Value> = current
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != DISRUPTED_TAINT)
        .map(|t| serde_json::to_value(t).unwrap_or_default())
        .collect();
    taints.push(json!({"key": DISRUPTED_TAINT, "effect": "NoSchedule"}));
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true, "taints": taints}})),
        )
        .await?;

    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut report = ReclaimReport::default();
    for p in pods.list(&on_node).await? {
        let ns = p.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: grace,
            ..DeleteParams::default()
        };
        match api.delete(&p.name_any(), &dp).await {
            Ok(_) => report.evicted.push(format!("{ns}/{}", p.name_any())),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(u64::from(grace.unwrap_or(30)) + 10);
    loop {
        let left = pods.list(&on_node).await?;
        if left.items.is_empty() || Instant::now() >= deadline {
            report.left_running = left
                .items
                .iter()
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match nodes.delete(node, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(report)
}
