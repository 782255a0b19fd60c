//! The test node agent: registers EC2-like Nodes and runs the pods bound to them as local
//! processes (a stand-in for kubelet + container runtime; see the `arrayjob-node-agent` binary).
//!
//! * Nodes carry `node.kubernetes.io/instance-type`, `topology.kubernetes.io/zone` / `region`,
//!   `karpenter.sh/capacity-type` and allocatable cpu / memory / pods, and heartbeat through a
//!   Lease in `kube-node-lease` plus the Ready condition.
//! * A pod's container image is looked up in an image map file (JSON object `image -> local
//!   binary`, re-read for every start) and run with the container's command / args / env
//!   (including downward-API fields, Secret and ConfigMap references), each pod with its own
//!   loopback IP `127.0.x.y` and its own process group, output appended to
//!   `<state>/pods/<namespace>/<pod>/<container>.log`.
//! * An image mapped to `{"podman": IMAGE}` runs as a podman container from that local image instead
//!   (`container`): security context, memory and CPU limits enforced by the kernel, host network.
//! * Pod status (phase, podIP, container states, exit codes, `OOMKilled`, restart counts) is reported, the
//!   restart policy honoured, and a deleted pod gets SIGTERM, then SIGKILL after its grace period.
//! * Readiness probes (httpGet, tcpSocket, exec) drive the Ready conditions (`probes`).
//! * Volumes (emptyDir, projected service-account tokens, configMap, secret) are bind-mounted in
//!   a mount namespace per pod (`volumes`, [`sandbox`]).
//! * Services with a selector are proxied on their loopback ClusterIPs to ready pods, and pods get
//!   the kubelet-style `{NAME}_SERVICE_HOST/PORT` variables (`proxy`).
//! * [`reclaim::reclaim_spot_node`] simulates a spot interruption.

mod container;
mod images;
mod node;
mod pods;
mod prepare;
pub(crate) mod probes;
pub(crate) mod proxy;
pub mod reclaim;
pub(crate) mod refs;
pub mod sandbox;
pub(crate) mod volumes;
mod waiting;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use images::{ImageTarget, image_lookup};

use crate::{Error, Result};

/// One node the agent registers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// EC2 instance type, e.g. `m5.xlarge` (label `node.kubernetes.io/instance-type`).
    pub instance_type: String,
    /// Availability zone, e.g. `us-east-1a` (label `topology.kubernetes.io/zone`).
    pub zone: String,
    /// `spot` or `on-demand` (label `karpenter.sh/capacity-type`).
    pub capacity_type: String,
    /// Allocatable CPU as a quantity, e.g. `4`.
    pub cpu: String,
    /// Allocatable memory as a quantity, e.g. `16Gi`.
    pub memory: String,
    /// Allocatable pod count.
    #[serde(default = "default_max_pods")]
    pub pods: u32,
    /// Extra labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Taints the node is registered with.
    #[serde(default)]
    pub taints: Vec<TaintSpec>,
}

/// A node taint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaintSpec {
    /// Taint key.
    pub key: String,
    /// Taint value (may be empty).
    #[serde(default)]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// Taint of the default node reserved for chaos tests (spot reclaims): only pods that tolerate
/// `arrayjob.dev/reserved=chaos:NoSchedule` land there, so reclaiming it disturbs no other test.
pub const CHAOS_TAINT_KEY: &str = "arrayjob.dev/reserved";

fn default_max_pods() -> u32 {
    110
}

impl NodeSpec {
    /// The region, derived from the zone (`us-east-1a` -> `us-east-1`).
    pub fn region(&self) -> String {
        let z = self
            .zone
            .trim_end_matches(|c: char| c.is_ascii_alphabetic());
        if z.is_empty() {
            self.zone.clone()
        } else {
            z.to_owned()
        }
    }
}

/// The default node set: one on-demand node and two spot nodes in three zones, plus the spot
/// node `spot-chaos` (us-east-1b) tainted with [`CHAOS_TAINT_KEY`]`=chaos:NoSchedule`.
pub fn default_nodes() -> Vec<NodeSpec> {
    let node = |name: &str, it: &str, zone: &str, cap: &str, cpu: &str, mem: &str| NodeSpec {
        name: name.to_owned(),
        instance_type: it.to_owned(),
        zone: zone.to_owned(),
        capacity_type: cap.to_owned(),
        cpu: cpu.to_owned(),
        memory: mem.to_owned(),
        pods: default_max_pods(),
        labels: BTreeMap::new(),
        taints: Vec::new(),
    };
    let mut chaos = node("spot-chaos", "m5.large", "us-east-1b", "spot", "2", "8Gi");
    chaos.taints.push(TaintSpec {
        key: CHAOS_TAINT_KEY.to_owned(),
        value: "chaos".to_owned(),
        effect: "NoSchedule".to_owned(),
    });
    vec![
        node(
            "ondemand-a",
            "m5.xlarge",
            "us-east-1a",
            "on-demand",
            "4",
            "16Gi",
        ),
        node("spot-b", "c5.2xlarge", "us-east-1b", "spot", "8", "16Gi"),
        node("spot-c", "r5.large", "us-east-1c", "spot", "2", "16Gi"),
        chaos,
    ]
}

/// Configuration of one agent process.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Nodes to register.
    pub nodes: Vec<NodeSpec>,
    /// JSON file mapping image names to local binaries.
    pub images_file: PathBuf,
    /// Folder for per-pod working directories and logs.
    pub state_dir: PathBuf,
    /// Folder where the process group id of each running pod is recorded (one empty file per
    /// group, named by the id), so that the environment's watchdog can kill them.
    pub pgid_dir: Option<PathBuf>,
    /// Folder where the name of each podman container is recorded (one empty file per container),
    /// so that the environment's watchdog can remove them.
    pub container_dir: Option<PathBuf>,
    /// First pod IP; the following pods get the next addresses (must be in 127.0.0.0/8).
    pub pod_ip_start: Ipv4Addr,
    /// Value of KUBERNETES_SERVICE_HOST / _PORT given to pods.
    pub api_host_port: Option<(String, u16)>,
    /// Names of agent environment variables passed through to pods (e.g. RUST_LOG).
    pub pass_env: Vec<String>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
}

/// Hands out distinct loopback addresses.
#[derive(Debug)]
pub(crate) struct IpPool {
    next: u32,
}

impl IpPool {
    fn new(start: Ipv4Addr) -> Self {
        IpPool {
            next: u32::from(start),
        }
    }

    fn take(&mut self) -> Result<Ipv4Addr> {
        loop {
            let ip = Ipv4Addr::from(self.next);
            if ip.octets()[0] != 127 {
                return Err(Error::Invalid(
                    "the loopback pod IP range is used up".into(),
                ));
            }
            self.next += 1;
            let last = ip.octets()[3];
            if last != 0 && last != 255 {
                return Ok(ip);
            }
        }
    }
}

/// Signal sent to a pod runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Keep running.
    None,
    /// The pod is being deleted: SIGTERM, then SIGKILL after `grace` seconds, then remove it.
    Terminate {
        /// Grace period in seconds.
        grace: u64,
    },
    /// The pod or its node is gone: SIGKILL now.
    Kill,
}

/// State shared by the agent's tasks.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) cfg: AgentConfig,
    pub(crate) ips: Mutex<IpPool>,
    pub(crate) node_ips: HashMap<String, Ipv4Addr>,
    /// This agent's own binary: containers with mounts start through its `sandbox` command.
    pub(crate) agent_exe: PathBuf,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("cfg", &self.cfg)
            .field("node_ips", &self.node_ips)
            .finish_non_exhaustive()
    }
}

struct Running {
    node: String,
    stop: watch::Sender<Stop>,
}

/// Runs the agent until the process is stopped: registers the nodes, heartbeats, and runs pods.
pub async fn run(client: Client, cfg: AgentConfig) -> Result<()> {
    if cfg.pod_ip_start.octets()[0] != 127 {
        return Err(Error::Invalid(format!(
            "pod IPs must be loopback addresses, got {}",
            cfg.pod_ip_start
        )));
    }
    std::fs::create_dir_all(cfg.state_dir.join("pods"))
        .map_err(|e| Error::io("create state dir", e))?;
    for d in [&cfg.pgid_dir, &cfg.container_dir].into_iter().flatten() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
    }
    let node_ips: HashMap<String, Ipv4Addr> = cfg
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let i = u8::try_from(i + 1).unwrap_or(u8::MAX);
            (n.name.clone(), Ipv4Addr::new(127, 1, 0, i))
        })
        .collect();
    let agent_exe = std::env::current_exe().map_err(|e| Error::io("find the agent binary", e))?;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        ips: Mutex::new(IpPool::new(cfg.pod_ip_start)),
        cfg,
        node_ips,
        agent_exe,
    });

    for spec in &ctx.cfg.nodes {
        node::register(&ctx, spec).await?;
        tracing::info!(node = %spec.name, "registered");
    }
    let live: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(
        ctx.cfg.nodes.iter().map(|n| n.name.clone()).collect(),
    ));
    tokio::spawn(node::heartbeat_loop(ctx.clone(), live.clone()));
    tokio::spawn(proxy::run(client.clone()));

    let mut running: HashMap<String, Running> = HashMap::new();
    let pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| Ev::Pod(Box::new(e)))
        .boxed();
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| Ev::Node(Box::new(e)))
        .boxed();
    let mut events = futures::stream::select(pods, nodes);
    while let Some(ev) = events.next().await {
        match ev {
            Ev::Pod(e) => match *e {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    on_pod(&ctx, &live, &mut running, pod).await;
                }
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = pod.uid() {
                        if let Some(r) = running.remove(&uid) {
                            let _ = r.stop.send(Stop::Kill);
                        }
                        volumes::remove(&ctx.cfg.state_dir, &uid);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("pod watch error: {e}"),
            },
            Ev::Node(e) => match *e {
                Ok(watcher::Event::Delete(node)) => {
                    let name = node.name_any();
                    let was_ours = lock(&live).remove(&name);
                    if was_ours {
                        tracing::warn!(node = %name, "node deleted: killing its pods");
                        running.retain(|_, r| {
                            if r.node == name {
                                let _ = r.stop.send(Stop::Kill);
                                false
                            } else {
                                true
                            }
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("node watch error: {e}"),
            },
        }
    }
    Ok(())
}

enum Ev {
    Pod(Box<std::result::Result<watcher::Event<Pod>, watcher::Error>>),
    Node(Box<std::result::Result<watcher::Event<Node>, watcher::Error>>),
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn on_pod(
    ctx: &Arc<Ctx>,
    live: &Arc<Mutex<HashSet<String>>>,
    running: &mut HashMap<String, Running>,
    pod: Pod,
) {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return;
    };
    if !lock(live).contains(&node) {
        return;
    }
    let Some(uid) = pod.uid() else { return };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    if let Some(r) = running.get(&uid) {
        if deleting && r.stop.is_closed() {
            // The runner has finished (terminal phase): only the API object is left.
            force_delete(&ctx.client, &pod).await;
        } else if deleting {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .and_then(|g| u64::try_from(g).ok())
                .unwrap_or(30);
            r.stop.send_if_modified(|s| {
                if *s == Stop::None {
                    *s = Stop::Terminate { grace };
                    true
                } else {
                    false
                }
            });
        }
        return;
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let terminal = phase == "Succeeded" || phase == "Failed";
    if deleting || terminal {
        if deleting {
            // Never started here (or finished before an agent restart): nothing to stop.
            force_delete(&ctx.client, &pod).await;
        }
        return;
    }
    let (tx, rx) = watch::channel(Stop::None);
    running.insert(
        uid,
        Running {
            node: node.clone(),
            stop: tx,
        },
    );
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let name = pod.name_any();
        if let Err(e) = pods::run_pod(ctx, pod, rx).await {
            tracing::error!(pod = %name, "pod runner failed: {e}");
        }
    });
}

/// Deletes a pod with grace period 0 (what kubelet does once the containers are gone).
pub(crate) async fn force_delete(client: &Client, pod: &Pod) {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: pod.uid().map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %pod.name_any(), "final delete failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_pool_skips_network_and_broadcast_like_addresses() -> Result<()> {
        let mut p = IpPool::new(Ipv4Addr::new(127, 0, 3, 253));
        assert_eq!(p.take()?, Ipv4Addr::new(127, 0, 3, 253));
        assert_eq!(p.take()?, Ipv4Addr::new(127, 0, 3, 254));
        assert_eq!(p.take()?, Ipv4Addr::new(127, 0, 4, 1));
        let mut end = IpPool::new(Ipv4Addr::new(127, 255, 255, 254));
        assert_eq!(end.take()?, Ipv4Addr::new(127, 255, 255, 254));
        assert!(end.take().is_err());
        Ok(())
    }

    #[test]
    fn region_comes_from_zone_and_defaults_are_ec2_like() {
        let nodes = default_nodes();
        assert_eq!(nodes.len(), 4);
        assert!(nodes.iter().all(|n| n.region() == "us-east-1"));
        assert!(nodes.iter().any(|n| n.capacity_type == "on-demand"));
        assert_eq!(
            nodes.iter().filter(|n| !n.taints.is_empty()).count(),
            1,
            "only the chaos node is tainted"
        );
    }
}
