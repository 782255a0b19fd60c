//! Podman, the container runtime of the image tests and of the node agent's container mode, and the
//! arrayjob image built from the repository's `Dockerfile` (target `prebuilt`) on the local Debian base
//! image that `tests/env/build-base-image.sh` makes (`ARRAYJOB_BASE_IMAGE`).
//!
//! Every call passes `--runtime runc --cgroup-manager cgroupfs`: crun refuses this kind of host (cgroups in
//! hybrid mode) and there is no systemd to manage cgroups.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::locate::{self, repo_root};
use crate::{Error, Result};

/// Podman's global options, the same for every call.
pub const GLOBAL_ARGS: [&str; 4] = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"];

/// The repository (without tag) of the test images built by [`build_image`].
pub const TEST_IMAGE_REPO: &str = "localhost/arrayjob-test";

/// The programs the image holds, in `/usr/local/bin`.
pub const IMAGE_BINARIES: [&str; 2] = ["arrayjob", "arrayjob-operator"];

/// `podman` with the global options.
pub fn command() -> Command {
    let mut c = Command::new("podman");
    c.args(GLOBAL_ARGS);
    c
}

/// Runs `podman ARGS` and returns its standard output; a failure carries podman's standard error.
pub fn run(args: &[&str]) -> Result<String> {
    output(command().args(args))
}

fn output(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        Error::io(
            format!("spawn {line} (is podman installed? run tests/env/setup.sh)"),
            e,
        )
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The soft and hard limits given to containers for open files and processes: this process's own.
/// Podman's defaults (1048576) exceed this machine's hard limits, so `setrlimit` in the container
/// would fail (root here lacks `CAP_SYS_RESOURCE`). The process limit is also capped at
/// `kernel.pid_max`: podman lowers its own hard limit to that, and a container cannot get more than
/// podman has.
pub fn ulimit_args() -> Vec<String> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(RLIM_INFINITY);
    let mut out = Vec::new();
    for (name, res, cap) in [
        ("nofile", Resource::RLIMIT_NOFILE, RLIM_INFINITY),
        ("nproc", Resource::RLIMIT_NPROC, pid_max),
    ] {
        if let Ok((soft, hard)) = getrlimit(res) {
            let v = |x: u64| {
                let x = x.min(cap);
                if x == RLIM_INFINITY {
                    "-1".to_owned()
                } else {
                    x.to_string()
                }
            };
            out.push(format!("--ulimit={name}={}:{}", v(soft), v(hard)));
        }
    }
    out
}

/// The local base image made by `tests/env/build-base-image.sh`: `$ARRAYJOB_BASE_IMAGE`, else the
/// `ARRAYJOB_BASE_IMAGE` line of `$ARRAYJOB_CACHE/testenv.env`; it must exist in podman's store.
pub fn base_image() -> Result<String> {
    let image = locate::setup_var("ARRAYJOB_BASE_IMAGE")?;
    run(&["image", "exists", &image]).map_err(|_| Error::Missing {
        what: format!("the base image {image}"),
        path: PathBuf::from("podman image store"),
        hint: "run tests/env/setup.sh (tests/env/build-base-image.sh imports it)".to_owned(),
    })?;
    Ok(image)
}

/// Builds (or finds, when already built from the same binaries) the arrayjob image: the `Dockerfile`'s
/// `prebuilt` target with the two binaries of `bin_dir` (a cargo target folder such as
/// `target/release`) on [`base_image`]. Returns its reference, `localhost/arrayjob-test:<key>`, the key
/// covering the Dockerfile, the base image and each binary's size and modification time. Tags of
/// [`TEST_IMAGE_REPO`] older than the newest three are removed (those still used by a container stay).
pub fn build_image(bin_dir: &Path) -> Result<String> {
    let base = base_image()?;
    let dockerfile = repo_root().join("Dockerfile");
    let text = std::fs::read(&dockerfile)
        .map_err(|e| Error::io(format!("read {}", dockerfile.display()), e))?;
    let mut key = Sha256::new();
    key.update(&text);
    key.update(base.as_bytes());
    let mut binaries = Vec::new();
    for name in IMAGE_BINARIES {
        let path = bin_dir.join(name);
        let meta = std::fs::metadata(&path).map_err(|_| Error::Missing {
            what: name.to_owned(),
            path: path.clone(),
            hint: "build it first: cargo build --release -p arrayjob-cli -p arrayjob-operator"
                .to_owned(),
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        key.update(format!("{name}|{}|{mtime}\n", meta.len()).as_bytes());
        binaries.push(path);
    }
    let key: String = key
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let reference = format!("{TEST_IMAGE_REPO}:{key}");
    if run(&["image", "exists", &reference]).is_ok() {
        return Ok(reference);
    }
    let context = locate::cache_dir().join("image-context").join(&key);
    stage(&context, &binaries)?;
    let t0 = std::time::Instant::now();
    let built = run(&[
        "build",
        "--quiet",
        "--pull=never",
        "--target",
        "prebuilt",
        "--build-arg",
        &format!("RUNTIME_IMAGE={base}"),
        "--file",
        &dockerfile.display().to_string(),
        "--tag",
        &reference,
        &context.display().to_string(),
    ]);
    let _ = std::fs::remove_dir_all(&context);
    built?;
    tracing::info!("built {reference} in {:.1} s", t0.elapsed().as_secs_f64());
    remove_other_tags(&reference);
    Ok(reference)
}

/// Puts the binaries into a fresh build context folder (hard links when possible: no copy).
fn stage(context: &Path, binaries: &[PathBuf]) -> Result<()> {
    let _ = std::fs::remove_dir_all(context);
    std::fs::create_dir_all(context)
        .map_err(|e| Error::io(format!("create {}", context.display()), e))?;
    for b in binaries {
        let Some(name) = b.file_name() else { continue };
        let to = context.join(name);
        if std::fs::hard_link(b, &to).is_err() {
            std::fs::copy(b, &to)
                .map_err(|e| Error::io(format!("copy {} to {}", b.display(), to.display()), e))?;
        }
    }
    Ok(())
}

/// Test images kept besides the newest, for test binaries of other builds running at the same time.
const KEEP_OLDER_IMAGES: usize = 2;

/// Removes all but the newest test images so that old builds do not pile up (best effort; an image a
/// container still uses stays).
fn remove_other_tags(keep: &str) {
    let Ok(list) = run(&[
        "images",
        "--sort",
        "created",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        TEST_IMAGE_REPO,
    ]) else {
        return;
    };
    for image in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != keep)
        .skip(KEEP_OLDER_IMAGES)
    {
        if let Err(e) = run(&["rmi", image]) {
            tracing::debug!("keeping {image}: {e}");
        }
    }
}

/// What the kernel says about the main process of a running container (read from `/proc` and the cgroup
/// files, not from podman's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessFacts {
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Effective capabilities (bit mask).
    pub cap_eff: u64,
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// Its root filesystem is mounted read-only.
    pub root_read_only: bool,
    /// The memory limit of its cgroup (cgroup v1 `memory.limit_in_bytes`, v2 `memory.max`); `None` when
    /// unlimited.
    pub memory_limit: Option<u64>,
}

/// [`ProcessFacts`] of the running container `container` (a name or id; `podman://` prefix allowed).
pub fn process_facts(container: &str) -> Result<ProcessFacts> {
    let id = container.strip_prefix("podman://").unwrap_or(container);
    let pid = run(&["inspect", "--format", "{{.State.Pid}}", id])?;
    let pid: u32 =
        pid.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            Error::Invalid(format!("container {id} is not running (pid {pid:?})"))
        })?;
    let proc_file = |name: &str| {
        let p = PathBuf::from(format!("/proc/{pid}/{name}"));
        std::fs::read_to_string(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))
    };
    let status = proc_file("status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| Error::Invalid(format!("no {name} in /proc/{pid}/status")))
    };
    let first = |v: &str| -> Result<u32> {
        v.split_whitespace()
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("bad id list {v:?} in /proc/{pid}/status")))
    };
    let cap_eff = u64::from_str_radix(field("CapEff")?, 16)
        .map_err(|e| Error::Invalid(format!("CapEff of {pid}: {e}")))?;
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...; the last mount on "/" is the one in effect.
    let root_read_only = proc_file("mountinfo")?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"/"))
                .then(|| f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro")))
        })
        .next_back()
        .unwrap_or(false);
    Ok(ProcessFacts {
        uid: first(field("Uid")?)?,
        gid: first(field("Gid")?)?,
        cap_eff,
        no_new_privs: field("NoNewPrivs")? == "1",
        root_read_only,
        memory_limit: cgroup_memory_limit(&proc_file("cgroup")?),
    })
}

/// The memory limit of the cgroup named in a `/proc/PID/cgroup` text (v1 `memory` controller, else v2).
fn cgroup_memory_limit(proc_cgroup: &str) -> Option<u64> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            let text = std::fs::read_to_string(format!(
                "/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
            ))
            .ok()?;
            let v: u64 = text.trim().parse().ok()?;
            // An unlimited v1 cgroup reads as the largest page-aligned value.
            return (v < 1 << 62).then_some(v);
        }
        if controllers.is_empty() {
            v2 = Some(path.to_owned());
        }
    }
    let text = std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", v2?)).ok()?;
    text.trim().parse().ok()
}
