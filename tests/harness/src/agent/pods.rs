//! Running one pod as local processes (or, for images mapped to podman images, as containers: see
//! [`super::container`]) and reporting its status.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::container::{self, Created};
use super::node::now_time;
use super::prepare::{PodSetup, Prepared, Runner, prepare, service_links};
use super::probes::{self, ExecTarget};
use super::sandbox::SandboxPlan;
use super::volumes::{self, PodVolumes};
use super::waiting::NotReady;
use super::{Ctx, Stop, force_delete, lock};
use crate::{Error, Result};

#[derive(Debug, Clone)]
enum CState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started: Value,
    },
    Terminated {
        code: i32,
        started: Value,
        finished: Value,
        message: Option<String>,
        /// The end of its log, as `terminationMessagePolicy: FallbackToLogsOnError` reports a failed run.
        log_tail: Option<String>,
        /// Killed by the kernel for going over its memory limit (reason `OOMKilled`).
        oom_killed: bool,
    },
}

impl CState {
    fn to_json(&self, cid: &str) -> Value {
        match self {
            CState::Waiting { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            CState::Running { started } => json!({"running": {"startedAt": started}}),
            CState::Terminated {
                code,
                started,
                finished,
                message,
                log_tail,
                oom_killed,
            } => {
                let reason = match (code, message) {
                    (_, Some(_)) => "StartError",
                    _ if *oom_killed => "OOMKilled",
                    (0, None) => "Completed",
                    _ => "Error",
                };
                let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started,
                                   "finishedAt": finished, "containerID": cid});
                if let (Some(m), Some(obj)) =
                    (message.as_ref().or(log_tail.as_ref()), t.as_object_mut())
                {
                    obj.insert("message".into(), Value::String(m.clone()));
                }
                json!({"terminated": t})
            }
        }
    }
}

/// The podman container of a container's current run.
#[derive(Debug, Clone)]
struct RunningContainer {
    name: String,
    id: String,
}

struct CRun {
    name: String,
    image: String,
    prepared: Option<Prepared>,
    pid: Option<i32>,
    /// Container mode: the current run's container.
    container: Option<RunningContainer>,
    generation: u64,
    restarts: i32,
    state: CState,
    last: Option<CState>,
    restart_at: Option<Instant>,
    /// The readiness probe's verdict for the current run (`true` without a probe).
    probe_ready: bool,
    probe_task: Option<AbortHandle>,
    /// `terminationMessagePolicy: FallbackToLogsOnError`: a failed run's message is the end of its log.
    logs_on_error: bool,
}

impl CRun {
    fn new(c: &Container) -> Self {
        CRun {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            prepared: None,
            pid: None,
            container: None,
            generation: 0,
            restarts: 0,
            state: CState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            restart_at: None,
            probe_ready: false,
            probe_task: None,
            logs_on_error: c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"),
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, CState::Running { .. })
    }

    fn ready(&self) -> bool {
        self.running() && self.probe_ready
    }

    fn stop_probe(&mut self) {
        if let Some(t) = self.probe_task.take() {
            t.abort();
        }
    }
}

impl Drop for CRun {
    fn drop(&mut self) {
        self.stop_probe();
    }
}

/// Aborts the pod's background tasks (token refreshes) when the pod runner ends.
struct Tasks(Vec<AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The command that starts a prepared process: directly, or through the agent's sandbox when the
/// container has mounts; the environment is the container's.
fn process_command(
    agent_exe: &Path,
    p: &Prepared,
    program: &Path,
    argv: &[String],
) -> std::io::Result<tokio::process::Command> {
    let mut cmd = if p.mounts.is_empty() {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(argv).current_dir(&p.workdir);
        cmd
    } else {
        let plan = SandboxPlan {
            mounts: p.mounts.clone(),
            join_mount_ns_of: None,
            workdir: Some(p.workdir.clone()),
        };
        let plan = serde_json::to_string(&plan).map_err(std::io::Error::other)?;
        let mut cmd = tokio::process::Command::new(agent_exe);
        cmd.args(["sandbox", "--plan", &plan, "--"])
            .arg(program)
            .args(argv)
            .current_dir("/");
        cmd
    };
    cmd.env_clear().envs(p.env.iter().cloned());
    Ok(cmd)
}

/// A container's exit: (container index, generation, exit code, killed for its memory limit).
type Exit = (usize, u64, i32, bool);

struct PodRun {
    ctx: Arc<Ctx>,
    api: Api<Pod>,
    pod: Arc<Pod>,
    name: String,
    pod_dir: PathBuf,
    ip: Ipv4Addr,
    node_ip: Ipv4Addr,
    start_time: Value,
    policy: String,
    containers: Vec<CRun>,
    exits: mpsc::UnboundedSender<Exit>,
    probes: mpsc::UnboundedSender<(usize, u64, bool)>,
}

/// The last 80 lines of a log, at most its last 2048 bytes (kubelet's limits for a message taken from logs).
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(2048)..]).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl PodRun {
    fn pgid_file(&self, pid: i32) -> Option<PathBuf> {
        self.ctx
            .cfg
            .pgid_dir
            .as_ref()
            .map(|d| d.join(pid.to_string()))
    }

    async fn spawn(&mut self, i: usize) {
        let record_dir = self.ctx.cfg.container_dir.clone();
        let Some(c) = self.containers.get_mut(i) else {
            return;
        };
        let Some(p) = c.prepared.clone() else { return };
        c.generation += 1;
        let generation = c.generation;
        let started = now_time();
        let log_path = self.pod_dir.join(format!("{}.log", c.name));
        let mut running = None;
        let command = match &p.runner {
            Runner::Process { program, argv } => {
                process_command(&self.ctx.agent_exe, &p, program, argv)
                    .map_err(|e| format!("starting {}: {e}", program.display()))
            }
            Runner::Container(spec) => {
                let name = container::container_name(&self.pod, &c.name, generation);
                match container::create(spec, &name, &p.env, record_dir.as_deref()).await {
                    Ok(Created { id, static_dir }) => {
                        let cmd = container::start_command(&name, &static_dir);
                        running = Some(RunningContainer { name, id });
                        Ok(cmd)
                    }
                    Err(e) => {
                        container::remove(&name, record_dir.as_deref()).await;
                        Err(e)
                    }
                }
            }
        };
        let spawned = command.and_then(|mut cmd| {
            let mut open = || -> std::io::Result<tokio::process::Child> {
                let log = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)?;
                let log2 = log.try_clone()?;
                cmd.stdin(Stdio::null())
                    .stdout(log)
                    .stderr(log2)
                    .process_group(0)
                    .spawn()
            };
            open().map_err(|e| format!("starting {}: {e}", c.name))
        });
        match spawned {
            Ok(mut child) => {
                let pid = child.id().and_then(|p| i32::try_from(p).ok());
                c.pid = pid;
                c.container = running.clone();
                c.state = CState::Running { started };
                c.stop_probe();
                c.probe_ready = p.readiness.is_none();
                if let (Some(spec), Some(pid)) = (&p.readiness, pid) {
                    let exec = ExecTarget {
                        agent_exe: self.ctx.agent_exe.clone(),
                        mount_ns_of: (!p.mounts.is_empty()).then_some(pid),
                        container: running.as_ref().map(|r| r.name.clone()),
                        env: p.env.clone(),
                        workdir: p.workdir.clone(),
                    };
                    let task = probes::run(
                        spec.clone(),
                        Some(exec),
                        (i, generation),
                        self.probes.clone(),
                    );
                    c.probe_task = Some(tokio::spawn(task).abort_handle());
                }
                let pgid_file = pid.and_then(|pid| {
                    self.ctx
                        .cfg
                        .pgid_dir
                        .as_ref()
                        .map(|d| d.join(pid.to_string()))
                });
                if let Some(f) = &pgid_file {
                    let _ = std::fs::write(f, b"");
                }
                let tx = self.exits.clone();
                tokio::spawn(async move {
                    let code = match child.wait().await {
                        Ok(st) => exit_code(st),
                        Err(_) => 255,
                    };
                    let ended = match running {
                        Some(r) => container::finish(&r.name, code, record_dir.as_deref()).await,
                        None => container::Ended {
                            code,
                            oom_killed: false,
                        },
                    };
                    let _ = tx.send((i, generation, ended.code, ended.oom_killed));
                });
            }
            Err(message) => {
                if let Some(r) = running {
                    container::remove(&r.name, record_dir.as_deref()).await;
                }
                c.pid = None;
                c.container = None;
                c.state = CState::Terminated {
                    code: 128,
                    started: started.clone(),
                    finished: started,
                    message: Some(message),
                    log_tail: None,
                    oom_killed: false,
                };
                let _ = self.exits.send((i, generation, -1, false));
            }
        }
    }

    fn set_waiting(&mut self, i: Option<usize>, nr: &NotReady) {
        for (j, c) in self.containers.iter_mut().enumerate() {
            if i.is_none_or(|i| i == j) {
                c.state = CState::Waiting {
                    reason: nr.reason.into(),
                    message: nr.message.clone(),
                };
            }
        }
    }

    /// Prepares the pod's volumes and every container; `None` (with waiting states set) when
    /// something is missing.
    async fn prepare_all(&mut self, pod: &Pod, containers: &[Container]) -> Option<PodVolumes> {
        let ctx = self.ctx.clone();
        let shared = async {
            Ok::<_, NotReady>((
                volumes::prepare(&ctx, pod, self.ip, self.node_ip).await?,
                service_links(&ctx.client, pod).await?,
            ))
        };
        let (vols, service_env) = match shared.await {
            Ok(v) => v,
            Err(nr) => {
                self.set_waiting(None, &nr);
                return None;
            }
        };
        let setup = PodSetup {
            pod_dir: &self.pod_dir,
            ip: self.ip,
            node_ip: self.node_ip,
            volumes: &vols,
            service_env: &service_env,
        };
        let mut prepared = Vec::new();
        let mut missing = Vec::new();
        for (i, c) in containers.iter().enumerate() {
            match prepare(&ctx, pod, c, &setup).await {
                Ok(p) => prepared.push((i, p)),
                Err(nr) => missing.push((i, nr)),
            }
        }
        for (i, p) in prepared {
            if let Some(r) = self.containers.get_mut(i) {
                r.prepared = Some(p);
            }
        }
        for (i, nr) in &missing {
            self.set_waiting(Some(*i), nr);
        }
        missing.is_empty().then_some(vols)
    }

    /// Signals every running container: its process group, or its container's main process through podman
    /// (the `podman start` process only waits on it).
    fn signal_all(&self, sig: Signal) {
        for c in &self.containers {
            match (c.pid, &c.container) {
                (Some(_), Some(r)) => {
                    let name = r.name.clone();
                    let sig = if sig == Signal::SIGKILL {
                        "KILL"
                    } else {
                        "TERM"
                    };
                    tokio::spawn(async move { container::signal(&name, sig).await });
                }
                (Some(pid), None) => {
                    let _ = killpg(Pid::from_raw(pid), sig);
                }
                (None, _) => {}
            }
        }
    }

    fn any_running(&self) -> bool {
        self.containers.iter().any(|c| c.pid.is_some())
    }

    fn phase(&self, preparing: bool) -> &'static str {
        if preparing {
            return "Pending";
        }
        let all_done = self
            .containers
            .iter()
            .all(|c| matches!(c.state, CState::Terminated { .. }) && c.restart_at.is_none());
        if !all_done {
            return "Running";
        }
        let all_ok = self
            .containers
            .iter()
            .all(|c| matches!(c.state, CState::Terminated { code: 0, .. }));
        if all_ok { "Succeeded" } else { "Failed" }
    }

    async fn publish(&self, preparing: bool) {
        let phase = self.phase(preparing);
        let now = now_time();
        let ready = !preparing && self.containers.iter().all(CRun::ready);
        let mut statuses = Vec::new();
        for c in &self.containers {
            let cid = match &c.container {
                Some(r) => format!("podman://{}", r.id),
                None => format!(
                    "arrayjob://{}-{}",
                    c.pid.map_or_else(|| "none".to_owned(), |p| p.to_string()),
                    c.generation
                ),
            };
            let mut s = json!({
                "name": c.name, "image": c.image, "imageID": "",
                "containerID": cid,
                "ready": c.ready(),
                "started": c.running(),
                "restartCount": c.restarts,
                "state": c.state.to_json(&cid),
            });
            if let (Some(last), Some(obj)) = (&c.last, s.as_object_mut()) {
                obj.insert("lastState".into(), last.to_json(&cid));
            }
            statuses.push(s);
        }
        let cond = |t: &str, ok: bool, reason: Option<&str>| {
            let mut v = json!({"type": t, "status": if ok { "True" } else { "False" },
                               "lastTransitionTime": now});
            if let (Some(r), Some(obj)) = (reason, v.as_object_mut()) {
                obj.insert("reason".into(), Value::String(r.to_owned()));
            }
            v
        };
        let done = phase == "Succeeded" || phase == "Failed";
        let not_ready_reason = if done {
            Some("PodCompleted")
        } else if ready {
            None
        } else {
            Some("ContainersNotReady")
        };
        let status = json!({"status": {
            "phase": phase,
            "podIP": self.ip.to_string(),
            "podIPs": [{"ip": self.ip.to_string()}],
            "hostIP": self.node_ip.to_string(),
            "hostIPs": [{"ip": self.node_ip.to_string()}],
            "startTime": self.start_time,
            "conditions": [
                cond("PodReadyToStartContainers", !preparing, None),
                cond("Initialized", true, None),
                cond("ContainersReady", ready, not_ready_reason),
                cond("Ready", ready, not_ready_reason),
                cond("PodScheduled", true, None),
            ],
            "containerStatuses": statuses,
        }});
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(pod = %self.name, "status update failed: {e}"),
        }
    }

    fn on_exit(&mut self, i: usize, code: i32, oom_killed: bool, terminating: bool) {
        let policy = self.policy.clone();
        let pgid_file = self
            .containers
            .get(i)
            .and_then(|c| c.pid)
            .and_then(|p| self.pgid_file(p));
        if let Some(f) = pgid_file {
            let _ = std::fs::remove_file(f);
        }
        let Some(c) = self.containers.get_mut(i) else {
            return;
        };
        c.pid = None;
        c.stop_probe();
        c.probe_ready = false;
        // The container id stays for the status of this run; the container itself is gone.
        if code >= 0 {
            let started = match &c.state {
                CState::Running { started } => started.clone(),
                _ => now_time(),
            };
            let log_tail = (code != 0 && c.logs_on_error)
                .then(|| log_tail(&self.pod_dir.join(format!("{}.log", c.name))));
            c.state = CState::Terminated {
                code,
                started,
                finished: now_time(),
                message: None,
                log_tail,
                oom_killed,
            };
        }
        let failed = !matches!(c.state, CState::Terminated { code: 0, .. });
        let restart = !terminating
            && match policy.as_str() {
                "Never" => false,
                "OnFailure" => failed,
                _ => true,
            };
        if restart {
            let backoff = Duration::from_secs(1u64 << c.restarts.clamp(0, 3));
            c.restarts += 1;
            c.last = Some(c.state.clone());
            c.state = CState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting container {}",
                    backoff.as_secs(),
                    c.name
                ),
            };
            c.restart_at = Some(Instant::now() + backoff);
        }
    }
}

/// Runs `pod` until it finishes (terminal phase) or is stopped through `stop`.
pub(crate) async fn run_pod(
    ctx: Arc<Ctx>,
    pod: Pod,
    mut stop: watch::Receiver<Stop>,
) -> Result<()> {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let spec = pod
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid(format!("pod {ns}/{name} has no spec")))?;
    let node = spec.node_name.clone().unwrap_or_default();
    let pod_dir = ctx.cfg.state_dir.join("pods").join(&ns).join(&name);
    std::fs::create_dir_all(&pod_dir).map_err(|e| Error::io("create pod dir", e))?;
    let ip = lock(&ctx.ips).take()?;
    let node_ip = ctx
        .node_ips
        .get(&node)
        .copied()
        .unwrap_or(Ipv4Addr::LOCALHOST);
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let (probes_tx, mut probe_results) = mpsc::unbounded_channel();
    let shared_pod = Arc::new(pod.clone());
    let mut run = PodRun {
        api: Api::namespaced(ctx.client.clone(), &ns),
        pod: shared_pod.clone(),
        ctx: ctx.clone(),
        name: name.clone(),
        pod_dir: pod_dir.clone(),
        ip,
        node_ip,
        start_time: now_time(),
        policy: spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into()),
        containers: spec.containers.iter().map(CRun::new).collect(),
        exits: exits_tx,
        probes: probes_tx,
    };
    tracing::info!(pod = %format!("{ns}/{name}"), %node, %ip, "starting pod");

    // Prepare the volumes and every container (image mapping, environment, mounts); retry while
    // something is missing.
    let mut pod_volumes = loop {
        if let Some(v) = run.prepare_all(&pod, &spec.containers).await {
            break v;
        }
        run.publish(true).await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => {
                if *stop.borrow() != Stop::Kill {
                    force_delete(&ctx.client, &pod).await;
                }
                return Ok(());
            }
        }
    };

    let _refreshers = Tasks(
        std::mem::take(&mut pod_volumes.tokens)
            .into_iter()
            .map(|t| {
                let task = t.refresh_loop(ctx.client.clone(), shared_pod.clone());
                tokio::spawn(task).abort_handle()
            })
            .collect(),
    );
    for i in 0..run.containers.len() {
        run.spawn(i).await;
    }
    run.publish(false).await;

    let mut terminating = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        let next_restart = run.containers.iter().filter_map(|c| c.restart_at).min();
        tokio::select! {
            Some((i, generation, code, oom_killed)) = exits.recv() => {
                if run.containers.get(i).is_some_and(|c| c.generation != generation) {
                    continue;
                }
                run.on_exit(i, code, oom_killed, terminating);
                if terminating {
                    if !run.any_running() {
                        break;
                    }
                    continue;
                }
                run.publish(false).await;
                let phase = run.phase(false);
                if phase == "Succeeded" || phase == "Failed" {
                    tracing::info!(pod = %format!("{ns}/{name}"), phase, "pod finished");
                    return Ok(());
                }
            }
            Some((i, generation, ready)) = probe_results.recv() => {
                let Some(c) = run.containers.get_mut(i) else { continue };
                if c.generation != generation || !c.running() || terminating {
                    continue;
                }
                c.probe_ready = ready;
                tracing::info!(pod = %format!("{ns}/{name}"), container = %c.name, ready, "readiness changed");
                run.publish(false).await;
            }
            () = async {
                if let Some(t) = next_restart { tokio::time::sleep_until(t).await }
            }, if next_restart.is_some() && !terminating => {
                let now = Instant::now();
                for i in 0..run.containers.len() {
                    if run.containers.get(i).and_then(|c| c.restart_at).is_some_and(|t| t <= now) {
                        if let Some(c) = run.containers.get_mut(i) {
                            c.restart_at = None;
                        }
                        run.spawn(i).await;
                    }
                }
                run.publish(false).await;
            }
            () = async {
                if let Some(t) = kill_at { tokio::time::sleep_until(t).await }
            }, if kill_at.is_some() => {
                tracing::info!(pod = %format!("{ns}/{name}"), "grace period over: SIGKILL");
                run.signal_all(Signal::SIGKILL);
                kill_at = None;
            }
            changed = stop.changed() => {
                let s = if changed.is_err() { Stop::Kill } else { *stop.borrow() };
                match s {
                    Stop::None => {}
                    Stop::Terminate { grace } if !terminating => {
                        tracing::info!(pod = %format!("{ns}/{name}"), grace, "deleted: SIGTERM");
                        terminating = true;
                        for c in &mut run.containers {
                            c.restart_at = None;
                        }
                        run.signal_all(Signal::SIGTERM);
                        kill_at = Some(Instant::now() + Duration::from_secs(grace));
                        if !run.any_running() {
                            break;
                        }
                    }
                    Stop::Terminate { .. } => {}
                    Stop::Kill => {
                        run.signal_all(Signal::SIGKILL);
                        for c in &run.containers {
                            if let Some(f) = c.pid.and_then(|p| run.pgid_file(p)) {
                                let _ = std::fs::remove_file(f);
                            }
                        }
                        force_delete(&ctx.client, &pod).await;
                        return Ok(());
                    }
                }
            }
        }
    }
    // Terminated on deletion: report the final container states, then remove the pod object.
    run.publish(false).await;
    force_delete(&ctx.client, &pod).await;
    Ok(())
}
