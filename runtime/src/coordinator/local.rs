//! Worker processes a coordinator starts on this machine (`arrayjob run --workers N`), each on its own
//! loopback address, and how their exits are noticed.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::options::CoordinatorOptions;

/// The loopback address of the `i`-th local worker: 127.0.0.2, 127.0.0.3, ... on through the whole 127/8
/// (127.0.1.0 follows 127.0.0.255), so every worker has its own, as on separate machines; None past the last
/// (127.255.255.254: 127.255.255.255 is the /8's broadcast address).
pub fn local_worker_host(i: usize) -> Option<Ipv4Addr> {
    let n = u32::try_from(i).ok()?.checked_add(2)?;
    (n < (1 << 24) - 1).then(|| Ipv4Addr::from(0x7f00_0000 | n))
}

/// Worker processes this coordinator started on loopback addresses.
pub(super) struct LocalWorkers {
    pub(super) children: Vec<std::process::Child>,
    /// The launch id of each child (it registers with it).
    pub(super) launch_ids: Vec<String>,
    /// Whether each child's exit was already handed to the coordinator.
    pub(super) seen_exit: Vec<bool>,
}

impl LocalWorkers {
    /// Starts `opts.local_workers` processes of `opts.worker_command`, joining the coordinator at `url`,
    /// spilling under `staging`.
    pub(super) fn start(
        opts: &CoordinatorOptions,
        url: &str,
        staging: &Path,
    ) -> std::io::Result<LocalWorkers> {
        let mut workers = LocalWorkers {
            children: Vec::new(),
            launch_ids: Vec::new(),
            seen_exit: Vec::new(),
        };
        let Some((program, lead)) = opts.worker_command.split_first() else {
            return Ok(workers);
        };
        // Launch ids unique to this coordinator's run: a worker started by hand does not carry one.
        let mut run = [0u8; 8];
        getrandom::fill(&mut run).map_err(|e| std::io::Error::other(e.to_string()))?;
        let run = hex::encode(run);
        for i in 0..opts.local_workers {
            let host = local_worker_host(i).ok_or_else(|| {
                std::io::Error::other(format!(
                    "worker {i} has no loopback address of its own left (127.0.0.2 to 127.255.255.254)"
                ))
            })?;
            let listen = format!("{host}:0");
            let launch_id = format!("{run}-{i}");
            let mut cmd = std::process::Command::new(program);
            cmd.args(lead)
                .args(["--coordinator", url, "--listen", &listen])
                .args(["--threads", &opts.worker_threads.to_string()])
                .args(["--memory-limit", &format!("{}B", opts.worker_memory)])
                .arg("--spill-dir")
                .arg(staging.join(format!(".spill-w{i}")))
                .env("ARRAYJOB_TOKEN", opts.token.expose())
                .env("ARRAYJOB_LAUNCH_ID", &launch_id)
                .stdin(std::process::Stdio::null());
            if let Some(limit) = opts.worker_spill_disk_limit {
                cmd.args(["--spill-disk-limit", &format!("{limit}B")]);
            }
            let child = cmd.spawn()?;
            workers.children.push(child);
            workers.launch_ids.push(launch_id);
            workers.seen_exit.push(false);
        }
        Ok(workers)
    }

    /// The launch ids of the children that exited since the last call: those workers are gone now,
    /// whatever their last heartbeat says.
    pub(super) fn newly_exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for ((c, id), seen) in self
            .children
            .iter_mut()
            .zip(&self.launch_ids)
            .zip(&mut self.seen_exit)
        {
            if !*seen && matches!(c.try_wait(), Ok(Some(_))) {
                *seen = true;
                out.push(id.clone());
            }
        }
        out
    }

    /// When every local worker has exited (and there were some): how they ended.
    pub(super) fn exited(&mut self) -> Option<String> {
        if self.children.is_empty() {
            return None;
        }
        let mut how = Vec::new();
        for c in &mut self.children {
            match c.try_wait() {
                Ok(Some(status)) => how.push(format!("pid {}: {status}", c.id())),
                _ => return None,
            }
        }
        Some(how.join("; "))
    }

    /// Waits up to `grace` for every child to exit, then kills those still running.
    pub(super) fn wait_or_kill(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_local_worker_has_its_own_loopback_address_across_the_whole_8() {
        let host = |i| local_worker_host(i).map(|h| h.to_string());
        assert_eq!(host(0).as_deref(), Some("127.0.0.2"));
        assert_eq!(host(252).as_deref(), Some("127.0.0.254"));
        // Beyond the 253rd, on into 127.0.1.x, ... (these shared 127.0.0.254 before).
        assert_eq!(host(253).as_deref(), Some("127.0.0.255"));
        assert_eq!(host(254).as_deref(), Some("127.0.1.0"));
        assert_eq!(host(1000).as_deref(), Some("127.0.3.234"));
        assert_eq!(host(70_000).as_deref(), Some("127.1.17.114"));
        let last = (1 << 24) - 4;
        assert_eq!(host(last).as_deref(), Some("127.255.255.254"));
        assert_eq!(
            host(last + 1),
            None,
            "127.255.255.255 is the broadcast address"
        );
        assert_eq!(host(usize::MAX), None);
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            let h = local_worker_host(i).expect("an address");
            assert!(h.is_loopback() && h != Ipv4Addr::LOCALHOST, "{h}");
            assert!(seen.insert(h), "worker {i} shares {h}");
        }
    }
}
