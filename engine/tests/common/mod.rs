//! Helpers shared by the engine's integration tests.

use std::path::PathBuf;
use std::process::Command;

/// Repository root.
pub fn repo_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The oracle's Python (NumPy, zarr-python, Pillow): `ARRAYJOB_PYTHON`, else what `scripts/setup-python.sh`
/// prints.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ARRAYJOB_PYTHON") {
        return PathBuf::from(p);
    }
    let root = repo_root();
    let out = Command::new("bash")
        .arg(root.join("scripts/setup-python.sh"))
        .current_dir(&root)
        .output()
        .expect("run scripts/setup-python.sh");
    assert!(
        out.status.success(),
        "setup-python.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}
