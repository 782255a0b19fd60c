//! `arrayjob-worker resources` reports what the worker offers.

#[test]
fn reports_threads_from_the_flag_and_the_machine_memory() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arrayjob-worker"))
        .args(["resources", "--threads", "3"])
        .output()
        .expect("run worker");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["threads"], 3);
    assert!(
        v["memoryBytes"].as_u64().is_some_and(|m| m > 1 << 20),
        "{v}"
    );
}
