//! The agent's container mode: a pod's container whose image maps to a podman image (`{"podman": IMAGE}` in
//! the image map) runs in a real container, so that the kernel enforces what the pod asks for:
//!
//! * `runAsUser` / `runAsGroup` / `supplementalGroups` / `fsGroup` (`--user`, `--group-add`), `runAsNonRoot`
//!   (checked against the image's user before the container is created, with kubelet's message),
//!   `readOnlyRootFilesystem` (`--read-only`, without podman's extra tmpfs mounts), `capabilities`,
//!   `allowPrivilegeEscalation: false` (`no-new-privileges`), `privileged`, `seccompProfile` (`RuntimeDefault`
//!   is podman's default profile, `Unconfined` turns it off);
//! * `resources.limits.memory` (`--memory`, swap off) and `resources.limits.cpu` (`--cpus`, a CFS quota);
//! * the container's environment (passed by name: podman reads the values from its own environment, so
//!   secrets do not appear on a command line), `command` (the entry point) and `args`, `workingDir`, and the
//!   pod's volumes bind-mounted at their mount paths;
//! * the host network (`--network host`): pods bind their own loopback address `127.0.x.y` and reach the API
//!   server and S3 on `127.0.0.1` as in process mode; the hostname is the pod name.
//!
//! A run is `podman create`, then `podman start --attach` (the agent waits on it; its output goes to the
//! container's log), then `podman inspect` for the exit code and the out-of-memory flag, then `podman rm`.
//! `podman start` runs in the container's own podman folder (`StaticDir`): conmon 2.1 writes the marker of an
//! out-of-memory kill under cgroup v1 into its working directory, and podman 4.3 looks for it there only.
//! Every container is recorded as a file in the agent's container folder so that the environment's watchdog
//! removes what is left when the test process dies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};

use super::sandbox::BindMount;
use super::waiting::NotReady;
use crate::podman::{GLOBAL_ARGS, ulimit_args};

/// What `podman create` is given for one container run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerSpec {
    /// The podman image reference.
    pub(crate) image: String,
    /// `--user UID[:GID]`.
    pub(crate) user: Option<String>,
    /// `--group-add` (supplementalGroups, fsGroup).
    pub(crate) groups: Vec<i64>,
    /// `--read-only`.
    pub(crate) read_only_root: bool,
    /// `--security-opt no-new-privileges`.
    pub(crate) no_new_privileges: bool,
    /// `--privileged`.
    pub(crate) privileged: bool,
    /// `--cap-drop`, then `--cap-add`.
    pub(crate) cap_drop: Vec<String>,
    /// Capabilities added.
    pub(crate) cap_add: Vec<String>,
    /// `--security-opt seccomp=unconfined`.
    pub(crate) seccomp_unconfined: bool,
    /// `--memory` in bytes (also the memory+swap limit: no swap).
    pub(crate) memory: Option<u64>,
    /// `--cpus`.
    pub(crate) cpus: Option<f64>,
    /// Names of the environment variables (values come from podman's own environment).
    pub(crate) env_names: Vec<String>,
    /// Volumes.
    pub(crate) mounts: Vec<BindMount>,
    /// `--workdir`.
    pub(crate) workdir: Option<String>,
    /// `--entrypoint` (the container's `command`, expanded).
    pub(crate) entrypoint: Option<Vec<String>>,
    /// The container's `args` (expanded): the image's `CMD` when empty and no entry point is given.
    pub(crate) args: Vec<String>,
    /// `--hostname`.
    pub(crate) hostname: String,
}

/// Kubernetes' name of a container run: `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`, as dockershim
/// named them.
pub(crate) fn container_name(pod: &Pod, container: &str, attempt: u64) -> String {
    format!(
        "k8s_{container}_{}_{}_{}_{attempt}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// A Kubernetes quantity as a number (`500m` = 0.5, `1Ki` = 1024, `1e3` = 1000, `2G` = 2e9).
pub(crate) fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let num: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s => {
            let exp: i32 = s.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(exp)
        }
    };
    let v = num * factor;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// The security settings of a container: its own context over the pod's.
struct Security<'a> {
    pod: Option<&'a PodSecurityContext>,
    container: Option<&'a SecurityContext>,
}

impl Security<'_> {
    fn run_as_user(&self) -> Option<i64> {
        self.container
            .and_then(|c| c.run_as_user)
            .or_else(|| self.pod.and_then(|p| p.run_as_user))
    }

    fn run_as_group(&self) -> Option<i64> {
        self.container
            .and_then(|c| c.run_as_group)
            .or_else(|| self.pod.and_then(|p| p.run_as_group))
    }

    fn run_as_non_root(&self) -> bool {
        self.container
            .and_then(|c| c.run_as_non_root)
            .or_else(|| self.pod.and_then(|p| p.run_as_non_root))
            == Some(true)
    }

    fn seccomp_type(&self) -> Option<&str> {
        self.container
            .and_then(|c| c.seccomp_profile.as_ref())
            .or_else(|| self.pod.and_then(|p| p.seccomp_profile.as_ref()))
            .map(|s| s.type_.as_str())
    }
}

fn config_error(message: String) -> NotReady {
    NotReady {
        reason: "CreateContainerConfigError",
        message,
    }
}

/// The uid the image runs as (its `USER`, numeric part before `:`); `Ok(None)` for a user name.
fn image_uid(image_user: &str) -> Option<i64> {
    let user = image_user.split(':').next().unwrap_or_default();
    if user.is_empty() {
        return Some(0);
    }
    user.parse().ok()
}

/// What the container runs as, checked like kubelet checks `runAsNonRoot`.
fn user(
    pod: &Pod,
    c: &Container,
    sec: &Security<'_>,
    image_user: &str,
) -> Result<Option<String>, NotReady> {
    let uid = sec.run_as_user();
    if sec.run_as_non_root() {
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        match uid.or_else(|| image_uid(image_user)) {
            Some(0) => {
                return Err(config_error(format!(
                    "container has runAsNonRoot and image will run as root (pod: \"{pod_name}\", container: {})",
                    c.name
                )));
            }
            None => {
                return Err(config_error(format!(
                    "container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root (pod: \"{pod_name}\", container: {})",
                    c.name
                )));
            }
            Some(_) => {}
        }
    }
    Ok(match (uid, sec.run_as_group()) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, Some(g)) => {
            let image_part = image_user
                .split(':')
                .next()
                .filter(|u| !u.is_empty())
                .unwrap_or("0");
            Some(format!("{image_part}:{g}"))
        }
        (None, None) => None,
    })
}

/// The run of `c` in `pod` from `image` (whose configured user is `image_user`): security context, limits,
/// environment names, mounts, entry point and arguments (already expanded).
#[allow(clippy::too_many_arguments)]
pub(crate) fn spec(
    pod: &Pod,
    c: &Container,
    image: &str,
    image_user: &str,
    env_names: Vec<String>,
    mounts: Vec<BindMount>,
    entrypoint: Option<Vec<String>>,
    args: Vec<String>,
) -> Result<ContainerSpec, NotReady> {
    let pod_sec = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sec = Security {
        pod: pod_sec,
        container: c.security_context.as_ref(),
    };
    let user = user(pod, c, &sec, image_user)?;
    let mut groups: Vec<i64> = pod_sec
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default();
    groups.extend(pod_sec.and_then(|p| p.fs_group));
    let seccomp_unconfined = match sec.seccomp_type() {
        None | Some("RuntimeDefault") => false,
        Some("Unconfined") => true,
        Some(other) => {
            return Err(config_error(format!(
                "seccompProfile type {other} is not supported by the test agent (RuntimeDefault, Unconfined)"
            )));
        }
    };
    let limits: BTreeMap<String, String> = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    let memory = match limits.get("memory") {
        Some(q) => Some(quantity(q).map(|v| v.ceil() as u64).ok_or_else(|| {
            config_error(format!("resources.limits.memory {q:?} is not a quantity"))
        })?),
        None => None,
    };
    let cpus = match limits.get("cpu") {
        Some(q) => Some(quantity(q).ok_or_else(|| {
            config_error(format!("resources.limits.cpu {q:?} is not a quantity"))
        })?),
        None => None,
    };
    let csec = c.security_context.as_ref();
    let caps = csec.and_then(|s| s.capabilities.as_ref());
    Ok(ContainerSpec {
        image: image.to_owned(),
        user,
        groups,
        read_only_root: csec.and_then(|s| s.read_only_root_filesystem) == Some(true),
        no_new_privileges: csec.and_then(|s| s.allow_privilege_escalation) == Some(false),
        privileged: csec.and_then(|s| s.privileged) == Some(true),
        cap_drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        cap_add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        seccomp_unconfined,
        memory,
        cpus,
        env_names,
        mounts,
        workdir: c.working_dir.clone().filter(|w| !w.is_empty()),
        entrypoint,
        args,
        hostname: pod.metadata.name.clone().unwrap_or_default(),
    })
}

/// The arguments of `podman create` for `spec` under `name` (after the global options).
pub(crate) fn create_args(spec: &ContainerSpec, name: &str) -> Vec<String> {
    let mut a: Vec<String> = ["create", "--pull=never", "--network=host", "--name"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    a.push(name.to_owned());
    a.push(format!("--hostname={}", spec.hostname));
    a.extend(ulimit_args());
    if let Some(u) = &spec.user {
        a.push(format!("--user={u}"));
    }
    for g in &spec.groups {
        a.push(format!("--group-add={g}"));
    }
    if spec.read_only_root {
        // Podman would otherwise mount writable tmpfs on /tmp, /var/tmp and /run; Kubernetes does not.
        a.extend([
            "--read-only".to_owned(),
            "--read-only-tmpfs=false".to_owned(),
        ]);
    }
    if spec.no_new_privileges {
        a.push("--security-opt=no-new-privileges".to_owned());
    }
    if spec.seccomp_unconfined {
        a.push("--security-opt=seccomp=unconfined".to_owned());
    }
    if spec.privileged {
        a.push("--privileged".to_owned());
    }
    for c in &spec.cap_drop {
        a.push(format!("--cap-drop={c}"));
    }
    for c in &spec.cap_add {
        a.push(format!("--cap-add={c}"));
    }
    if let Some(m) = spec.memory {
        a.push(format!("--memory={m}b"));
        a.push(format!("--memory-swap={m}b"));
    }
    if let Some(c) = spec.cpus {
        a.push(format!("--cpus={c}"));
    }
    for n in &spec.env_names {
        a.push(format!("--env={n}"));
    }
    for m in &spec.mounts {
        let ro = if m.read_only { ":ro" } else { "" };
        a.push(format!(
            "--volume={}:{}{ro}",
            m.source.display(),
            m.target.display()
        ));
    }
    if let Some(w) = &spec.workdir {
        a.push(format!("--workdir={w}"));
    }
    if let Some(e) = &spec.entrypoint {
        a.push(format!(
            "--entrypoint={}",
            serde_json::Value::from(e.clone())
        ));
    }
    a.push(spec.image.clone());
    a.extend(spec.args.iter().cloned());
    a
}

fn podman() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("podman");
    c.args(GLOBAL_ARGS).stdin(Stdio::null()).kill_on_drop(false);
    c
}

async fn podman_output(args: &[&str]) -> Result<String, String> {
    let out = podman()
        .args(args)
        .env_clear()
        .env("PATH", host_path())
        .output()
        .await
        .map_err(|e| format!("podman {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "podman {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn host_path() -> String {
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
}

/// The `USER` of a local image; `ErrImagePull` when podman's store does not have it.
pub(crate) async fn image_user(image: &str) -> Result<String, NotReady> {
    podman_output(&["image", "inspect", "--format", "{{.Config.User}}", image])
        .await
        .map_err(|e| NotReady {
            reason: "ErrImagePull",
            message: format!("image {image:?} is not in podman's local store: {e}"),
        })
}

/// A created container: its id and the folder `podman start` must run in.
#[derive(Debug, Clone)]
pub(crate) struct Created {
    /// Podman's container id.
    pub(crate) id: String,
    /// The container's `StaticDir` (see the module docs).
    pub(crate) static_dir: PathBuf,
}

/// `podman create` with `env` as podman's environment (the values of `spec.env_names`).
pub(crate) async fn create(
    spec: &ContainerSpec,
    name: &str,
    env: &[(String, String)],
    record_dir: Option<&Path>,
) -> Result<Created, String> {
    // A container of that name may be left over from an agent that died; it is replaced.
    let _ = podman_output(&["rm", "--force", "--time=0", name]).await;
    if let Some(d) = record_dir {
        let _ = std::fs::write(d.join(name), b"");
    }
    let args = create_args(spec, name);
    let out = podman()
        .args(&args)
        .env_clear()
        .env("PATH", host_path())
        .envs(env.iter().cloned())
        .output()
        .await
        .map_err(|e| format!("podman create: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "podman create: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let static_dir = podman_output(&["inspect", "--format", "{{.StaticDir}}", &id]).await?;
    Ok(Created {
        id,
        static_dir: PathBuf::from(static_dir),
    })
}

/// `podman start --attach`: runs until the container exits, with the container's exit code.
pub(crate) fn start_command(name: &str, static_dir: &Path) -> tokio::process::Command {
    let mut c = podman();
    c.args(["start", "--attach", name])
        .env_clear()
        .env("PATH", host_path())
        .current_dir(static_dir);
    c
}

/// How a container run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ended {
    /// Its exit code (128 + signal when killed).
    pub(crate) code: i32,
    /// Killed by the kernel for going over its memory limit.
    pub(crate) oom_killed: bool,
}

/// Reads how the container ended, then removes it (and its record). `fallback` is the exit code of
/// `podman start` (used when podman cannot tell).
pub(crate) async fn finish(name: &str, fallback: i32, record_dir: Option<&Path>) -> Ended {
    let state = podman_output(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}} {{.State.OOMKilled}}",
        name,
    ])
    .await;
    let ended = match state
        .as_deref()
        .map(str::split_whitespace)
        .map(|mut w| (w.next(), w.next()))
    {
        Ok((Some(code), Some(oom))) => Ended {
            code: code.parse().unwrap_or(fallback),
            oom_killed: oom == "true",
        },
        _ => Ended {
            code: fallback,
            oom_killed: false,
        },
    };
    remove(name, record_dir).await;
    ended
}

/// Sends `signal` (e.g. `TERM`, `KILL`) to the container's main process.
pub(crate) async fn signal(name: &str, signal: &str) {
    if let Err(e) = podman_output(&["kill", "--signal", signal, name]).await {
        tracing::debug!(container = %name, "kill --signal {signal}: {e}");
    }
}

/// Removes the container (killing it if it still runs) and its record.
pub(crate) async fn remove(name: &str, record_dir: Option<&Path>) {
    if let Err(e) = podman_output(&["rm", "--force", "--time=0", name]).await {
        tracing::debug!(container = %name, "rm: {e}");
    }
    if let Some(d) = record_dir {
        let _ = std::fs::remove_file(d.join(name));
    }
}

/// `podman exec` of an exec probe's command in the running container.
pub(crate) fn exec_command(name: &str, command: &[String]) -> tokio::process::Command {
    let mut c = podman();
    c.arg("exec")
        .arg(name)
        .args(command)
        .env_clear()
        .env("PATH", host_path());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("64Mi"), Some(67_108_864.0));
        assert_eq!(quantity("1Gi"), Some(1_073_741_824.0));
        assert_eq!(quantity("1.5Gi"), Some(1_610_612_736.0));
        assert_eq!(quantity("100M"), Some(1e8));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("1E"), Some(1e18));
        assert_eq!(quantity("12Qi"), None);
        assert_eq!(quantity("Mi"), None);
        assert_eq!(quantity("-1"), None);
    }

    fn pod_with(container: serde_json::Value, pod_sec: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w-0", "namespace": "ns", "uid": "u-1"},
            "spec": {"securityContext": pod_sec, "containers": [container]},
        }))
        .expect("a pod");
        let c = pod.spec.as_ref().expect("spec").containers[0].clone();
        (pod, c)
    }

    #[test]
    fn the_operators_restricted_context_becomes_podman_options() -> Result<(), String> {
        let (pod, c) = pod_with(
            serde_json::json!({
                "name": "worker", "image": "arrayjob:dev",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"}},
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
            }),
            serde_json::json!({"runAsNonRoot": true, "fsGroup": 2000}),
        );
        let s = spec(
            &pod,
            &c,
            "localhost/a:1",
            "",
            vec!["A".into()],
            vec![BindMount {
                source: "/v/tmp".into(),
                target: "/tmp".into(),
                read_only: false,
            }],
            Some(vec!["arrayjob".into()]),
            vec!["worker".into(), "--listen".into()],
        )
        .map_err(|e| e.message)?;
        let args = create_args(&s, &container_name(&pod, "worker", 1));
        let has = |x: &str| args.iter().any(|a| a == x);
        assert!(has("k8s_worker_w-0_ns_u-1_1"), "{args:?}");
        for want in [
            "--user=65532",
            "--group-add=2000",
            "--read-only",
            "--read-only-tmpfs=false",
            "--security-opt=no-new-privileges",
            "--cap-drop=ALL",
            "--memory=67108864b",
            "--memory-swap=67108864b",
            "--cpus=0.5",
            "--env=A",
            "--volume=/v/tmp:/tmp",
            "--entrypoint=[\"arrayjob\"]",
            "--network=host",
            "--hostname=w-0",
        ] {
            assert!(has(want), "{want} missing from {args:?}");
        }
        assert!(!args.iter().any(|a| a.contains("seccomp")), "{args:?}");
        let image_at = args
            .iter()
            .position(|a| a == "localhost/a:1")
            .expect("image");
        assert_eq!(&args[image_at + 1..], ["worker", "--listen"]);
        Ok(())
    }

    #[test]
    fn run_as_non_root_is_checked_against_the_image_user() {
        let c = serde_json::json!({"name": "c", "image": "x", "securityContext": {"runAsNonRoot": true}});
        let (pod, ctr) = pod_with(c, serde_json::json!({}));
        let run = |image_user: &str| {
            spec(&pod, &ctr, "x", image_user, vec![], vec![], None, vec![]).map(|s| s.user)
        };
        assert_eq!(
            run("").map_err(|e| e.message).err().as_deref(),
            Some(
                "container has runAsNonRoot and image will run as root (pod: \"w-0\", container: c)"
            )
        );
        assert!(run("0:0").is_err());
        let named = run("nobody").err().map(|e| (e.reason, e.message));
        assert!(
            named
                .as_ref()
                .is_some_and(|(r, m)| *r == "CreateContainerConfigError"
                    && m.contains("non-numeric user (nobody)")),
            "{named:?}"
        );
        // The image's own non-root user passes; podman then runs as that user (no --user).
        assert_eq!(run("65532:65532").ok(), Some(None));
    }

    #[test]
    fn unknown_quantities_and_profiles_are_config_errors() {
        let (pod, c) = pod_with(
            serde_json::json!({"name": "c", "image": "x", "resources": {"limits": {"memory": "lots"}}}),
            serde_json::json!({}),
        );
        let e = spec(&pod, &c, "x", "", vec![], vec![], None, vec![])
            .err()
            .map(|e| e.message);
        assert_eq!(
            e.as_deref(),
            Some("resources.limits.memory \"lots\" is not a quantity")
        );
        let (pod, c) = pod_with(
            serde_json::json!({"name": "c", "image": "x"}),
            serde_json::json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}),
        );
        let e = spec(&pod, &c, "x", "", vec![], vec![], None, vec![])
            .err()
            .map(|e| e.reason);
        assert_eq!(e, Some("CreateContainerConfigError"));
    }
}
