//! Readiness probes (httpGet, tcpSocket, exec) with kubelet's timing fields. A container with a
//! readiness probe starts not ready; after `successThreshold` passes in a row it is ready, after
//! `failureThreshold` failures in a row it is not ready again.
//!
//! httpGet and tcpSocket go to the pod IP (a loopback address) unless `host` names another
//! loopback address; any other host is refused, so a probe never leaves the machine. An exec
//! probe runs the command (looked up in the container's `PATH` on the host) with the container's
//! environment and working directory, inside the container's mount namespace.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::sandbox::SandboxPlan;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// HTTP GET; a status from 200 to 399 passes.
    Http {
        /// Where to connect.
        addr: SocketAddr,
        /// Request path.
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens passes.
    Tcp {
        /// Where to connect.
        addr: SocketAddr,
    },
    /// A command that exits 0 passes.
    Exec {
        /// The command and its arguments.
        command: Vec<String>,
    },
}

/// A readiness probe with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeSpec {
    pub(crate) check: Check,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

/// Resolves a port given by number or by the name of one of the container's ports.
pub(crate) fn container_port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("container {} has no port named {name:?}", c.name))?,
    };
    u16::try_from(n).map_err(|_| format!("port {n} is out of range"))
}

fn probe_host(host: Option<&String>, pod_ip: Ipv4Addr) -> Result<IpAddr, String> {
    let Some(h) = host.filter(|h| !h.is_empty()) else {
        return Ok(IpAddr::V4(pod_ip));
    };
    match h.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => Err(format!(
            "probe host {h:?} is not a loopback address (the test agent only probes loopback)"
        )),
    }
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
}

fn count(v: Option<i32>) -> u32 {
    v.and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

impl ProbeSpec {
    /// Reads a Kubernetes probe of container `c` running at `pod_ip`.
    pub(crate) fn from_k8s(p: &Probe, c: &Container, pod_ip: Ipv4Addr) -> Result<Self, String> {
        let check = if let Some(h) = &p.http_get {
            let scheme = h.scheme.as_deref().unwrap_or("HTTP");
            if !scheme.eq_ignore_ascii_case("http") {
                return Err(format!(
                    "httpGet scheme {scheme} is not supported (only HTTP)"
                ));
            }
            let host = probe_host(h.host.as_ref(), pod_ip)?;
            Check::Http {
                addr: SocketAddr::new(host, container_port(c, &h.port)?),
                path: h
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into()),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }
        } else if let Some(t) = &p.tcp_socket {
            let host = probe_host(t.host.as_ref(), pod_ip)?;
            Check::Tcp {
                addr: SocketAddr::new(host, container_port(c, &t.port)?),
            }
        } else if let Some(e) = &p.exec {
            let command = e.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err("exec probe without a command".into());
            }
            Check::Exec { command }
        } else {
            return Err("probe without httpGet, tcpSocket or exec (grpc is not supported)".into());
        };
        Ok(ProbeSpec {
            check,
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10),
            timeout: secs(p.timeout_seconds, 1),
            success_threshold: count(p.success_threshold),
            failure_threshold: p.failure_threshold.map_or(3, |n| count(Some(n))),
        })
    }
}

/// Consecutive results and the readiness they give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    ready: bool,
    successes: u32,
    failures: u32,
}

impl Tally {
    /// Not ready, no results yet.
    pub(crate) fn new() -> Self {
        Tally {
            ready: false,
            successes: 0,
            failures: 0,
        }
    }

    /// Adds one result; returns the new readiness when it changed.
    pub(crate) fn record(&mut self, ok: bool, spec: &ProbeSpec) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let next = if self.ready {
            self.failures < spec.failure_threshold
        } else {
            self.successes >= spec.success_threshold
        };
        (next != self.ready).then(|| {
            self.ready = next;
            next
        })
    }
}

/// How an exec probe reaches the container.
#[derive(Debug, Clone)]
pub(crate) struct ExecTarget {
    /// The agent binary (for `sandbox`).
    pub(crate) agent_exe: PathBuf,
    /// The container's main process, when it has a mount namespace of its own to join.
    pub(crate) mount_ns_of: Option<i32>,
    /// Container mode: the podman container the command runs in (`podman exec`).
    pub(crate) container: Option<String>,
    /// The container's environment.
    pub(crate) env: Vec<(String, String)>,
    /// The container's working directory.
    pub(crate) workdir: PathBuf,
}

async fn http_ok(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> std::io::Result<bool> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < 12 {
        let got = s.read(&mut head[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((200..400).contains(&code))
}

async fn exec_ok(command: &[String], t: &ExecTarget) -> std::io::Result<bool> {
    if let Some(name) = &t.container {
        let status = super::container::exec_command(name, command)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await?;
        return Ok(status.success());
    }
    let plan = SandboxPlan {
        join_mount_ns_of: t.mount_ns_of,
        workdir: Some(t.workdir.clone()),
        ..SandboxPlan::default()
    };
    let plan = serde_json::to_string(&plan).map_err(std::io::Error::other)?;
    let status = tokio::process::Command::new(&t.agent_exe)
        .args(["sandbox", "--plan", &plan, "--"])
        .args(command)
        .env_clear()
        .envs(t.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await?;
    Ok(status.success())
}

async fn check_once(check: &Check, exec: Option<&ExecTarget>) -> bool {
    let r = match (check, exec) {
        (
            Check::Http {
                addr,
                path,
                headers,
            },
            _,
        ) => http_ok(*addr, path, headers).await,
        (Check::Tcp { addr }, _) => TcpStream::connect(*addr).await.map(|_| true),
        (Check::Exec { command }, Some(t)) => exec_ok(command, t).await,
        (Check::Exec { .. }, None) => Ok(false),
    };
    r.unwrap_or(false)
}

/// Probes until aborted, sending `(container, generation, ready)` whenever readiness changes.
pub(crate) async fn run(
    spec: ProbeSpec,
    exec: Option<ExecTarget>,
    key: (usize, u64),
    tx: mpsc::UnboundedSender<(usize, u64, bool)>,
) {
    tokio::time::sleep(spec.initial_delay).await;
    let mut tally = Tally::new();
    loop {
        let ok = tokio::time::timeout(spec.timeout, check_once(&spec.check, exec.as_ref()))
            .await
            .unwrap_or(false);
        if let Some(ready) = tally.record(ok, &spec) {
            let _ = tx.send((key.0, key.1, ready));
        }
        tokio::time::sleep(spec.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Result<Container, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "name": "web", "ports": [{"name": "http", "containerPort": 8080}]
        }))
    }

    #[test]
    fn named_ports_resolve_and_unknown_names_are_reported() -> Result<(), String> {
        let c = container().map_err(|e| e.to_string())?;
        assert_eq!(
            container_port(&c, &IntOrString::String("http".into()))?,
            8080
        );
        assert_eq!(container_port(&c, &IntOrString::Int(9))?, 9);
        assert_eq!(
            container_port(&c, &IntOrString::String("grpc".into())),
            Err("container web has no port named \"grpc\"".to_owned())
        );
        Ok(())
    }

    #[test]
    fn probe_fields_and_defaults() -> Result<(), String> {
        let c = container().map_err(|e| e.to_string())?;
        let p: Probe = serde_json::from_value(serde_json::json!({
            "httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 2
        }))
        .map_err(|e| e.to_string())?;
        let s = ProbeSpec::from_k8s(&p, &c, Ipv4Addr::new(127, 0, 9, 3))?;
        assert_eq!(
            s.check,
            Check::Http {
                addr: "127.0.9.3:8080".parse().map_err(|_| "addr")?,
                path: "/ready".into(),
                headers: vec![]
            }
        );
        assert_eq!(
            (s.period, s.timeout, s.initial_delay),
            (
                Duration::from_secs(2),
                Duration::from_secs(1),
                Duration::ZERO
            )
        );
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
        let remote: Probe = serde_json::from_value(serde_json::json!({
            "tcpSocket": {"host": "10.0.0.7", "port": 80}
        }))
        .map_err(|e| e.to_string())?;
        let err = ProbeSpec::from_k8s(&remote, &c, Ipv4Addr::new(127, 0, 9, 3)).err();
        assert_eq!(
            err.as_deref(),
            Some(
                "probe host \"10.0.0.7\" is not a loopback address (the test agent only probes loopback)"
            )
        );
        Ok(())
    }

    #[test]
    fn thresholds_decide_when_readiness_changes() -> Result<(), String> {
        let c = container().map_err(|e| e.to_string())?;
        let p: Probe = serde_json::from_value(serde_json::json!({
            "tcpSocket": {"port": 1}, "successThreshold": 2, "failureThreshold": 3
        }))
        .map_err(|e| e.to_string())?;
        let s = ProbeSpec::from_k8s(&p, &c, Ipv4Addr::LOCALHOST)?;
        let mut t = Tally::new();
        let got: Vec<Option<bool>> = [
            true, false, true, true, false, false, true, false, false, false,
        ]
        .iter()
        .map(|ok| t.record(*ok, &s))
        .collect();
        assert_eq!(
            got,
            vec![
                None,
                None,
                None,
                Some(true),
                None,
                None,
                None,
                None,
                None,
                Some(false)
            ]
        );
        Ok(())
    }
}
