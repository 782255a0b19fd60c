//! A userspace kube-proxy for the loopback service range.
//!
//! The test API server allocates ClusterIPs from a loopback range (`127.x.y.0/24`), so the agent
//! can listen on `clusterIP:port` of every Service with a selector. Each accepted connection
//! goes to the next ready pod (round robin) that matches the selector, at its pod IP and the
//! port's `targetPort` (a number or a named container port), and the bytes are copied both
//! ways. With no ready pod the connection is closed at once.
//!
//! The endpoints controller cannot help here (the API server refuses loopback addresses in
//! Endpoints and EndpointSlices), so the proxy reads the pods themselves: a pod is a backend when
//! its Ready condition is True (or the Service has `publishNotReadyAddresses`), it is not being
//! deleted and its IP is a loopback address. Only loopback addresses are ever listened on or
//! connected to.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::probes::container_port;

/// One listening address of one Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Frontend {
    namespace: String,
    name: String,
    addr: SocketAddrV4,
}

fn is_tcp(p: &ServicePort) -> bool {
    p.protocol.as_deref().unwrap_or("TCP") == "TCP"
}

/// The loopback ClusterIP of a Service with a selector, if it has one.
fn proxied_ip(svc: &Service) -> Option<Ipv4Addr> {
    let spec = svc.spec.as_ref()?;
    spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let ip: Ipv4Addr = spec.cluster_ip.as_deref()?.parse().ok()?;
    ip.is_loopback().then_some(ip)
}

fn frontends(svc: &Service) -> Vec<Frontend> {
    let Some(ip) = proxied_ip(svc) else {
        return Vec::new();
    };
    let ports = svc.spec.iter().flat_map(|s| s.ports.iter().flatten());
    ports
        .filter(|p| is_tcp(p))
        .filter_map(|p| u16::try_from(p.port).ok())
        .map(|port| Frontend {
            namespace: svc.namespace().unwrap_or_default(),
            name: svc.name_any(),
            addr: SocketAddrV4::new(ip, port),
        })
        .collect()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn selected(p: &Pod, selector: &BTreeMap<String, String>) -> bool {
    let labels = p.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The port a pod serves a Service port on: `targetPort` by number or container port name.
fn target_port(sp: &ServicePort, pod: &Pod) -> Option<u16> {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    match &sp.target_port {
        None => u16::try_from(sp.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(named) => containers
            .filter_map(|c| container_port(c, named).ok())
            .next(),
    }
}

/// The ready backends of `svc` for its port `port`, ordered by pod name.
fn backends(svc: &Service, port: u16, pods: &[Arc<Pod>]) -> Vec<SocketAddrV4> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let selector = spec.selector.clone().unwrap_or_default();
    let any_pod = spec.publish_not_ready_addresses == Some(true);
    let Some(sp) = spec
        .ports
        .iter()
        .flatten()
        .find(|p| is_tcp(p) && p.port == i32::from(port))
    else {
        return Vec::new();
    };
    let ns = svc.namespace();
    let mut chosen: Vec<(String, SocketAddrV4)> = pods
        .iter()
        .filter(|p| p.namespace() == ns && !selector.is_empty() && selected(p, &selector))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && (any_pod || pod_ready(p)))
        .filter_map(|p| {
            let ip: Ipv4Addr = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            let port = target_port(sp, p)?;
            ip.is_loopback()
                .then(|| (p.name_any(), SocketAddrV4::new(ip, port)))
        })
        .collect();
    chosen.sort();
    chosen.into_iter().map(|(_, a)| a).collect()
}

async fn forward(mut client: TcpStream, to: SocketAddrV4) {
    match TcpStream::connect(to).await {
        Ok(mut upstream) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(e) => tracing::debug!("service backend {to}: {e}"),
    }
}

async fn listen(fe: Frontend, services: Store<Service>, pods: Store<Pod>) {
    let listener = match TcpListener::bind(fe.addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(service = %format!("{}/{}", fe.namespace, fe.name), "cannot listen on {}: {e}", fe.addr);
            return;
        }
    };
    tracing::info!(service = %format!("{}/{}", fe.namespace, fe.name), addr = %fe.addr, "proxying");
    let key = ObjectRef::new(&fe.name).within(&fe.namespace);
    let mut turn = 0usize;
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let Some(svc) = services.get(&key) else {
            continue;
        };
        let list = backends(&svc, fe.addr.port(), &pods.state());
        if let Some(to) = list.get(turn % list.len().max(1)).copied() {
            turn = turn.wrapping_add(1);
            tokio::spawn(forward(conn, to));
        }
    }
}

fn reconcile(
    services: &Store<Service>,
    pods: &Store<Pod>,
    listening: &mut HashMap<Frontend, AbortHandle>,
) {
    let wanted: Vec<Frontend> = services.state().iter().flat_map(|s| frontends(s)).collect();
    listening.retain(|fe, task| {
        let keep = wanted.contains(fe);
        if !keep {
            task.abort();
        }
        keep
    });
    for fe in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = listening.entry(fe) {
            let task = tokio::spawn(listen(slot.key().clone(), services.clone(), pods.clone()));
            slot.insert(task.abort_handle());
        }
    }
}

/// Watches Services and Pods and proxies every Service with a selector and a loopback ClusterIP.
pub(crate) async fn run(client: Client) {
    let (pods, pods_writer) = reflector::store::<Pod>();
    let pod_watch = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default());
    tokio::spawn(
        reflector::reflector(pods_writer, pod_watch)
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
    );
    let (services, svc_writer) = reflector::store::<Service>();
    let svc_watch = watcher(Api::<Service>::all(client), watcher::Config::default());
    let mut events = reflector::reflector(svc_writer, svc_watch)
        .default_backoff()
        .boxed();
    let mut listening = HashMap::new();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(_) => reconcile(&services, &pods, &mut listening),
            Err(e) => tracing::warn!("service watch error: {e}"),
        }
    }
}

fn env_name(service: &str) -> String {
    service.to_ascii_uppercase().replace('-', "_")
}

/// Kubelet-style variables for the Services of the pod's namespace (`{NAME}_SERVICE_HOST`,
/// `_SERVICE_PORT`, `_SERVICE_PORT_{PORTNAME}` and the Docker-link `{NAME}_PORT*` ones). The
/// `kubernetes` Service is left out: the agent sets `KUBERNETES_SERVICE_HOST/PORT` to the API
/// server's own loopback address.
pub(crate) fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        if svc.name_any() == "kubernetes" && svc.namespace().as_deref() == Some("default") {
            continue;
        }
        let n = env_name(&svc.name_any());
        let ports: Vec<&ServicePort> = spec.ports.iter().flatten().collect();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{n}_SERVICE_HOST"), ip.to_owned()));
        out.push((format!("{n}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|s| !s.is_empty()) {
                out.push((
                    format!("{n}_SERVICE_PORT_{}", env_name(pn)),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
        out.push((
            format!("{n}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first.port
            ),
        ));
        for p in &ports {
            let pr = proto(p);
            let base = format!("{n}_PORT_{}_{pr}", p.port);
            out.push((
                base.clone(),
                format!("{}://{ip}:{}", pr.to_ascii_lowercase(), p.port),
            ));
            out.push((format!("{base}_PROTO"), pr.to_ascii_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Result<Service, serde_json::Error> {
        serde_json::from_value(v)
    }

    fn pod(name: &str, ip: &str, ready: bool, app: &str) -> Result<Arc<Pod>, serde_json::Error> {
        Ok(Arc::new(serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))?))
    }

    #[test]
    fn backends_are_the_ready_matching_loopback_pods() -> Result<(), serde_json::Error> {
        let s = svc(json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "127.100.3.7", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 9000}]}}))?;
        let pods = vec![
            pod("b", "127.0.5.2", true, "web")?,
            pod("a", "127.0.5.1", true, "web")?,
            pod("c", "127.0.5.3", false, "web")?,
            pod("d", "127.0.5.4", true, "other")?,
            pod("e", "10.1.2.3", true, "web")?,
        ];
        let addr = |s: &str| s.parse::<SocketAddrV4>();
        assert_eq!(
            backends(&s, 80, &pods),
            vec![
                addr("127.0.5.1:8080").map_err(serde::de::Error::custom)?,
                addr("127.0.5.2:8080").map_err(serde::de::Error::custom)?
            ]
        );
        assert_eq!(
            backends(&s, 81, &pods).first().map(|a| a.port()),
            Some(9000)
        );
        assert!(backends(&s, 82, &pods).is_empty());
        assert_eq!(frontends(&s).len(), 2);
        let remote = svc(json!({"metadata": {"name": "r", "namespace": "ns"},
            "spec": {"clusterIP": "10.0.0.9", "selector": {"app": "web"}, "ports": [{"port": 80}]}}))?;
        assert!(
            frontends(&remote).is_empty(),
            "never listen on a non-loopback address"
        );
        Ok(())
    }

    #[test]
    fn service_env_looks_like_kubelets() -> Result<(), serde_json::Error> {
        let s = svc(json!({"metadata": {"name": "coord-svc", "namespace": "ns"},
            "spec": {"clusterIP": "127.100.3.9", "ports": [{"name": "rpc", "port": 7000}]}}))?;
        let headless = svc(json!({"metadata": {"name": "h", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}))?;
        let env: BTreeMap<String, String> = service_env(&[s, headless]).into_iter().collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("COORD_SVC_SERVICE_HOST"), Some("127.100.3.9"));
        assert_eq!(get("COORD_SVC_SERVICE_PORT"), Some("7000"));
        assert_eq!(get("COORD_SVC_SERVICE_PORT_RPC"), Some("7000"));
        assert_eq!(get("COORD_SVC_PORT"), Some("tcp://127.100.3.9:7000"));
        assert_eq!(get("COORD_SVC_PORT_7000_TCP_ADDR"), Some("127.100.3.9"));
        assert!(!env.keys().any(|k| k.starts_with("H_")));
        Ok(())
    }
}
