//! What this process may use: memory (the lower of physical RAM and its cgroup's limit) and cores.
//!
//! Inside a container the machine's RAM overstates what the process may allocate; the cgroup limit is what the
//! kernel enforces (v2 `memory.max`, v1 `memory.limit_in_bytes`), so budgets derive from the lower of the two.

use std::path::Path;

/// Resources available to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Bytes of memory this process may use, `None` when neither RAM nor a limit could be read.
    pub memory_bytes: Option<u64>,
    /// Cores available (CPU affinity and cgroup quota aware), at least 1.
    pub cores: usize,
}

/// Reads the resources of this process from `/proc` and `/sys/fs/cgroup`.
pub fn detect() -> Resources {
    Resources {
        memory_bytes: memory_limit(Path::new("/proc"), Path::new("/sys/fs/cgroup")),
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    }
}

/// Default chunk-store budget: half of the memory this process may use, or 2 GiB when that is unknown.
pub fn default_memory_budget() -> usize {
    detect()
        .memory_bytes
        .map_or(2 << 30, |m| usize::try_from(m / 2).unwrap_or(usize::MAX))
}

/// The lower of physical RAM (`<proc_root>/meminfo`) and the memory limit of this process's cgroup
/// (`<proc_root>/self/cgroup`, limits under `cgroup_root`). Roots are parameters so tests can use fixtures.
pub fn memory_limit(proc_root: &Path, cgroup_root: &Path) -> Option<u64> {
    let ram = std::fs::read_to_string(proc_root.join("meminfo"))
        .ok()
        .and_then(|t| mem_total(&t));
    let cgroup = std::fs::read_to_string(proc_root.join("self/cgroup"))
        .ok()
        .and_then(|t| cgroup_memory_limit(&t, cgroup_root));
    match (ram, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemTotal` of `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Lowest memory limit on the way from the process's cgroup up to the root, for cgroup v2 (`0::<path>`) and
/// v1 (the `memory` controller, mounted at `<cgroup_root>/memory`). Parents count because their limit applies
/// to all children; walking up also finds the limit when the container's own cgroup is mounted as the root
/// while `/proc/self/cgroup` still shows the host path.
fn cgroup_memory_limit(proc_self_cgroup: &str, cgroup_root: &Path) -> Option<u64> {
    let mut lowest: Option<u64> = None;
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (dir, file) = if id == "0" && controllers.is_empty() {
            (cgroup_root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (cgroup_root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut rel = Path::new(path.trim().trim_start_matches('/'));
        loop {
            let limit = std::fs::read_to_string(dir.join(rel).join(file))
                .ok()
                .and_then(|t| parse_limit(&t));
            if let Some(l) = limit {
                lowest = Some(lowest.map_or(l, |x| x.min(l)));
            }
            match rel.parent() {
                Some(p) => rel = p,
                None => break,
            }
        }
    }
    lowest
}

/// A limit file's value: bytes, or `None` for "no limit" (v2 `max`; v1 reports a number near `i64::MAX`).
fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&v| v < 1 << 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const MEMINFO: &str = "MemTotal:       16384000 kB\nMemFree:         1000000 kB\n";
    const RAM: u64 = 16_384_000 * 1024;

    /// A fake `/proc` and `/sys/fs/cgroup` in a temporary directory.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(proc_self_cgroup: &str) -> Fixture {
            let f = Fixture {
                dir: tempfile::tempdir().expect("tmp"),
            };
            f.write("proc/meminfo", MEMINFO);
            f.write("proc/self/cgroup", proc_self_cgroup);
            f
        }

        fn write(&self, rel: &str, text: &str) {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }

        fn limit(&self) -> Option<u64> {
            memory_limit(&self.path("proc"), &self.path("cgroup"))
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
    }

    #[test]
    fn v2_limit_below_ram_wins() {
        let f = Fixture::new("0::/kubepods/pod1/ctr\n");
        f.write("cgroup/kubepods/pod1/ctr/memory.max", "2147483648\n");
        assert_eq!(f.limit(), Some(2 << 30));
    }

    #[test]
    fn v2_max_means_no_limit_and_a_parent_limit_applies() {
        let f = Fixture::new("0::/kubepods/pod1/ctr\n");
        f.write("cgroup/kubepods/pod1/ctr/memory.max", "max\n");
        assert_eq!(f.limit(), Some(RAM));
        f.write("cgroup/kubepods/pod1/memory.max", "1073741824\n");
        assert_eq!(f.limit(), Some(1 << 30));
    }

    #[test]
    fn v2_container_root_mount_is_found_from_the_host_path() {
        // No cgroup namespace: the host path is not under the container's mount, whose root holds the limit.
        let f = Fixture::new("0::/system.slice/docker-abc.scope\n");
        f.write("cgroup/memory.max", "536870912\n");
        assert_eq!(f.limit(), Some(512 << 20));
    }

    #[test]
    fn v2_limit_above_ram_leaves_ram() {
        let f = Fixture::new("0::/\n");
        f.write("cgroup/memory.max", &format!("{}\n", RAM * 4));
        assert_eq!(f.limit(), Some(RAM));
    }

    #[test]
    fn v1_memory_controller_limit_and_unlimited_sentinel() {
        let text = "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        let f = Fixture::new(text);
        f.write(
            "cgroup/memory/docker/abc/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(f.limit(), Some(RAM), "v1 sentinel is no limit");
        f.write(
            "cgroup/memory/docker/abc/memory.limit_in_bytes",
            "3221225472\n",
        );
        assert_eq!(f.limit(), Some(3 << 30));
    }

    #[test]
    fn missing_files_fall_back() {
        let f = Fixture::new("garbage line\n4:memory:/x\n");
        assert_eq!(f.limit(), Some(RAM), "no limit files: RAM");
        std::fs::remove_file(f.path("proc/meminfo")).expect("rm");
        assert_eq!(f.limit(), None);
        f.write("cgroup/memory/x/memory.limit_in_bytes", "1048576\n");
        assert_eq!(f.limit(), Some(1 << 20), "limit without meminfo");
        f.write("proc/meminfo", "MemFree: 1 kB\n");
        assert_eq!(f.limit(), Some(1 << 20), "meminfo without MemTotal");
    }

    #[test]
    fn detect_reports_cores_and_memory_of_this_machine() {
        let r = detect();
        assert!(r.cores >= 1);
        assert!(r.memory_bytes.is_some_and(|m| m > 1 << 20), "{r:?}");
        assert_eq!(
            default_memory_budget() as u64,
            r.memory_bytes.map_or(2 << 30, |m| m / 2)
        );
    }
}
