//! Process handling: free loopback ports, and a process group guarded by a watchdog.
//!
//! Every process of an environment joins the process group led by a tiny `sh` watchdog. The
//! watchdog's standard input is a pipe whose only writer is the test process; when the test
//! process ends for any reason (normal exit, panic, abort, SIGKILL) the kernel closes the pipe,
//! the watchdog's `cat` returns, and the watchdog kills the pod process groups listed in the
//! environment's `podpgids/` folder, removes the podman containers listed in `podcontainers/`, and then
//! kills its own group: SIGTERM, a short wait, SIGKILL (each
//! component also by the PID recorded in `pids/`).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use std::os::unix::process::CommandExt;

use crate::{Error, Result};

/// Picks `n` distinct free ports below the kernel's ephemeral port range.
///
/// Ports handed out by `bind(:0)` come from the ephemeral range, which is also where the kernel takes the
/// source ports of outgoing connections: between choosing a port and a component binding it, a client
/// connection (apiserver to etcd, say) could take it. Ports below that range are only ever bound explicitly.
/// A port is never handed out twice by one process: components start concurrently, so a port chosen (and
/// released) for one could otherwise be chosen again for another before the first binds it.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u32>().ok())
        })
        .unwrap_or(32768);
    let base = 15000u32;
    let span = ephemeral_low.saturating_sub(base).max(1000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut state = u64::from(std::process::id()) << 32 ^ u64::from(nanos);
    // Hold all listeners until every port is chosen so that no port is handed out twice.
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..20_000 {
        if listeners.len() == n {
            break;
        }
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = (base + ((state >> 33) as u32) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    if listeners.len() < n {
        return Err(Error::io(
            "choose free ports",
            std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "no free port below the ephemeral range",
            ),
        ));
    }
    let ports = listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| Error::io("local_addr", e))
        })
        .collect::<Result<Vec<u16>>>()?;
    handed_out.extend(&ports);
    Ok(ports)
}

const WATCHDOG: &str = r#"
cat >/dev/null
trap '' TERM INT HUP
killpods() {
  for f in "$1"/podpgids/*; do
    [ -e "$f" ] && kill -"$2" "-${f##*/}" 2>/dev/null
  done
}
killpods "$1" KILL
for f in "$1"/podcontainers/*; do
  [ -e "$f" ] && podman --runtime runc --cgroup-manager cgroupfs rm --force --time=0 "${f##*/}" >/dev/null 2>&1
done
kill -TERM "-$$" 2>/dev/null
sleep 1
killpods "$1" KILL
for f in "$1"/pids/*; do
  [ -e "$f" ] && kill -KILL "${f##*/}" 2>/dev/null
done
rm -rf "$1/etcd-data" "$1/s3-data"
kill -KILL "-$$"
"#;

/// A process group whose members are killed when the owning (test) process ends.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    watchdog: Child,
    stdin: Option<ChildStdin>,
    pgid: u32,
    log_dir: PathBuf,
    pid_dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl ProcessGroup {
    /// Starts the watchdog for the environment in `run_dir`.
    pub(crate) fn start(run_dir: &Path) -> Result<Self> {
        let log_dir = run_dir.join("logs");
        std::fs::create_dir_all(&log_dir).map_err(|e| Error::io("create logs dir", e))?;
        std::fs::create_dir_all(run_dir.join("podpgids"))
            .map_err(|e| Error::io("create podpgids dir", e))?;
        std::fs::create_dir_all(run_dir.join("pids"))
            .map_err(|e| Error::io("create pids dir", e))?;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("arrayjob-testenv-watchdog")
            .arg(run_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("spawn the watchdog (sh)", e))?;
        let stdin = watchdog.stdin.take();
        let pgid = watchdog.id();
        std::fs::write(run_dir.join("watchdog.pid"), format!("{pgid}\n"))
            .map_err(|e| Error::io("write watchdog.pid", e))?;
        std::fs::write(
            run_dir.join("owner.pid"),
            format!("{}\n", std::process::id()),
        )
        .map_err(|e| Error::io("write owner.pid", e))?;
        Ok(ProcessGroup {
            watchdog,
            stdin,
            pgid,
            log_dir,
            pid_dir: run_dir.join("pids"),
            children: Vec::new(),
        })
    }

    /// Where the output of the component `name` goes.
    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Spawns `cmd` in the group, with its output in `logs/<name>.log`.
    pub(crate) fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<u32> {
        let log_path = self.log_path(name);
        let log = File::create(&log_path).map_err(|e| Error::io("create log file", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("clone log file", e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(i32::try_from(self.pgid).unwrap_or(0))
            .spawn()
            .map_err(|e| Error::io(format!("spawn {name}"), e))?;
        let pid = child.id();
        std::fs::write(self.pid_dir.join(pid.to_string()), name)
            .map_err(|e| Error::io("write pid file", e))?;
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Kills the child `name` (SIGKILL, as a crash) and waits for it to end.
    pub(crate) fn kill(&mut self, name: &str) {
        for (n, child) in &mut self.children {
            if n == name && matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(self.pid_dir.join(child.id().to_string()));
            }
        }
        self.children.retain(|(n, _)| n != name);
    }

    /// Fails if any child has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Exited {
                    name: name.clone(),
                    status: status.to_string(),
                    log: self.log_dir.join(format!("{name}.log")),
                });
            }
        }
        Ok(())
    }

    /// Ends the group now: closes the watchdog's pipe and waits for it to finish.
    pub(crate) fn shutdown(&mut self) {
        drop(self.stdin.take());
        let _ = self.watchdog.wait();
        // The watchdog has killed the group; make sure of each child by its PID as well.
        for (_, child) in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Removes run folders of earlier environments whose owner process is gone (their watchdog has
/// already ended their processes), keeping the newest `keep` for their logs.
pub(crate) fn prune_stale_runs(runs_dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(runs_dir) else {
        return;
    };
    let mut dead: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let owner = std::fs::read_to_string(dir.join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let alive = owner.is_some_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        });
        if alive {
            continue;
        }
        let mtime = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        dead.push((mtime, dir));
    }
    dead.sort();
    let n = dead.len().saturating_sub(keep);
    for (_, dir) in dead.into_iter().take(n) {
        let _ = std::fs::remove_dir_all(dir);
    }
}
