//! `arrayjob resources`: what a worker started here offers, from the engine's cgroup-aware resources (the
//! same figures `arrayjob worker` budgets with; the separate worker binary that read `/proc/meminfo` alone is
//! gone).

use std::path::Path;

#[test]
fn resources_are_the_flag_threads_and_the_cgroup_aware_memory_with_half_as_budget() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arrayjob"))
        .args(["resources", "--threads", "3"])
        .env_remove("ARRAYJOB_THREADS")
        .output()
        .expect("run arrayjob resources");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["threads"], 3, "{v}");
    let expected =
        arrayjob_engine::resources::memory_limit(Path::new("/proc"), Path::new("/sys/fs/cgroup"))
            .expect("this machine's memory");
    assert_eq!(v["memoryBytes"].as_u64(), Some(expected), "{v}");
    assert_eq!(v["memoryBudgetBytes"].as_u64(), Some(expected / 2), "{v}");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
}
