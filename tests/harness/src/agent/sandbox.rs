//! The per-pod mount namespace: the agent starts a container's program through
//! `arrayjob-node-agent sandbox --plan JSON -- PROGRAM ARGS..`, which
//!
//! 1. either enters the mount namespace of a running process of the pod (exec probes), or makes a
//!    new mount namespace whose mounts do not propagate back to the host;
//! 2. bind-mounts each volume directory at its mount path (read-only when asked), creating
//!    missing mount points;
//! 3. changes to the working directory and replaces itself with the program (same PID, same
//!    process group, same environment).
//!
//! It runs single-threaded before any async runtime starts: the kernel refuses `unshare` and
//! `setns` of a mount namespace to a multi-threaded process.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

/// One bind mount of a pod volume into a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BindMount {
    /// Host directory (or file) holding the volume's data.
    pub source: PathBuf,
    /// Absolute path where the container sees it.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What the sandbox sets up before running the program.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxPlan {
    /// Bind mounts, applied in order (parents before children).
    pub mounts: Vec<BindMount>,
    /// Join the mount namespace of this process instead of making a new one.
    pub join_mount_ns_of: Option<i32>,
    /// Working directory, entered after the mounts exist.
    pub workdir: Option<PathBuf>,
}

fn fail(what: String, e: impl std::fmt::Display) -> String {
    format!("arrayjob sandbox: {what}: {e}")
}

fn enter_namespace(plan: &SandboxPlan) -> Result<(), String> {
    if let Some(pid) = plan.join_mount_ns_of {
        let path = format!("/proc/{pid}/ns/mnt");
        let f = std::fs::File::open(&path).map_err(|e| fail(format!("open {path}"), e))?;
        return setns(&f, CloneFlags::CLONE_NEWNS).map_err(|e| fail(format!("setns {path}"), e));
    }
    if plan.mounts.is_empty() {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| fail("unshare a mount namespace".into(), e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("make / private".into(), e))
}

fn bind(m: &BindMount) -> Result<(), String> {
    let what = |step: &str| format!("{step} {} at {}", m.source.display(), m.target.display());
    if m.source.is_dir() {
        std::fs::create_dir_all(&m.target).map_err(|e| fail(what("mount point for"), e))?;
    } else if !m.target.exists() {
        if let Some(parent) = m.target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(what("mount point for"), e))?;
        }
        std::fs::write(&m.target, b"").map_err(|e| fail(what("mount point for"), e))?;
    }
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(
        Some(&m.source),
        &m.target,
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|e| fail(what("bind"), e))?;
    if m.read_only {
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, &m.target, None::<&str>, ro, None::<&str>)
            .map_err(|e| fail(what("read-only remount of"), e))?;
    }
    Ok(())
}

fn c_string(s: &[u8]) -> Result<CString, String> {
    CString::new(s).map_err(|e| fail("argument".into(), e))
}

/// Sets up the plan and replaces the current process with `program` (looked up in `PATH` when
/// it has no slash). Returns only on failure, with a message for the container's log.
pub fn enter(plan: &SandboxPlan, program: &Path, args: &[String]) -> Result<Infallible, String> {
    enter_namespace(plan)?;
    for m in &plan.mounts {
        bind(m)?;
    }
    if let Some(dir) = &plan.workdir {
        std::env::set_current_dir(dir).map_err(|e| fail(format!("chdir {}", dir.display()), e))?;
    }
    let prog = c_string(program.as_os_str().as_bytes())?;
    let mut argv = vec![prog.clone()];
    for a in args {
        argv.push(c_string(a.as_bytes())?);
    }
    nix::unistd::execvp(&prog, &argv).map_err(|e| fail(format!("exec {}", program.display()), e))
}
