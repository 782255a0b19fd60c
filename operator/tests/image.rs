//! The arrayjob image built and run for real: the `Dockerfile`'s `prebuilt` target is built by podman from the
//! binaries cargo built on this (Debian 12) host, on the local Debian bookworm base image that
//! `tests/env/setup.sh` makes with mmdebstrap (the registries of `rust:*` and `gcr.io/distroless/*` are out
//! of reach here). `arrayjob run examples/quickstart.yaml` inside it, as the image's user 65532, on a
//! read-only root filesystem, without a network and under a 1 GiB memory limit, writes exactly the bytes
//! that `arrayjob run` writes on the host; the kernel refuses a write to `/`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use arrayjob_testenv::podman;
use serde_json::Value;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The cargo target folder holding this test's binaries (`arrayjob` comes from the workspace build:
/// `cargo build --release -p arrayjob-cli`).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_arrayjob-operator"))
        .parent()
        .expect("the target folder")
        .to_path_buf()
}

/// The image, built once per test binary.
fn image() -> Result<String> {
    static IMAGE: std::sync::OnceLock<std::result::Result<String, String>> =
        std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| podman::build_image(&bin_dir()).map_err(|e| e.to_string()))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The 1 GiB memory limit of the container runs.
const MEMORY_LIMIT: u64 = 1 << 30;

/// `podman run --rm` of `image` without a network, on a read-only root, under [`MEMORY_LIMIT`]:
/// `entrypoint` with `args`, `volumes` as `HOST:CONTAINER[:ro]`. Returns (success, stdout, stderr).
fn run_in(
    image: &str,
    volumes: &[String],
    entrypoint: &str,
    args: &[&str],
) -> Result<(bool, String, String)> {
    let mut cmd = podman::command();
    cmd.args([
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--read-only",
        "--read-only-tmpfs=false",
    ])
    .args(["--cap-drop=ALL", "--security-opt=no-new-privileges"])
    .arg(format!("--memory={MEMORY_LIMIT}b"))
    .arg(format!("--memory-swap={MEMORY_LIMIT}b"))
    .args(podman::ulimit_args());
    for v in volumes {
        cmd.arg(format!("--volume={v}"));
    }
    cmd.arg(format!("--entrypoint={entrypoint}"))
        .arg(image)
        .args(args);
    let out = cmd.output().context("run podman")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Every file under `dir` by relative path.
fn files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir)?.display().to_string();
                out.insert(rel, std::fs::read(&p)?);
            }
        }
    }
    Ok(out)
}

/// `summary.json` without what depends on the machine and the moment: times, the peak of resident chunk
/// bytes (when tasks finish relative to each other), and the memory budget (half of the memory the process
/// may use: the host's RAM there, the container's limit here; checked apart).
fn comparable_summary(bytes: &[u8]) -> Result<Value> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| {
                    !k.ends_with("seconds")
                        && !k.ends_with("Seconds")
                        && k != "peakResidentBytes"
                        && k != "memoryBudget"
                        // each run's own id (it names the run's staging and ledger)
                        && k != "run"
                });
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_slice(bytes)?;
    strip(&mut v);
    Ok(v)
}

#[test]
fn the_image_runs_the_quickstart_as_65532_on_a_read_only_root_with_the_hosts_bytes() -> Result<()> {
    let image = image()?;
    // What the Dockerfile says the image is.
    let config = podman::run(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{index .Config.Labels \"org.opencontainers.image.title\"}}",
        &image,
    ])?;
    assert_eq!(
        config.trim(),
        "65532:65532|[\"/usr/local/bin/arrayjob-operator\"]|[\"run\"]|arrayjob"
    );

    let d = tempfile::tempdir()?;
    let host_out = d.path().join("host");
    let ran = std::process::Command::new(bin_dir().join("arrayjob"))
        .args([
            "run",
            &repo("examples/quickstart.yaml").display().to_string(),
            "--out",
        ])
        .arg(&host_out)
        .arg("--quiet")
        .output()?;
    ensure!(
        ran.status.success(),
        "arrayjob run on the host: {}",
        String::from_utf8_lossy(&ran.stderr)
    );

    // The container writes into a folder of the host: open to its user, like an emptyDir.
    let shared = d.path().join("shared");
    std::fs::create_dir(&shared)?;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777))?;
    let volumes = [
        format!("{}:/examples:ro", repo("examples").display()),
        format!("{}:/out", shared.display()),
    ];
    let (ok, _, err) = run_in(
        &image,
        &volumes,
        "/usr/local/bin/arrayjob",
        &[
            "run",
            "/examples/quickstart.yaml",
            "--out",
            "/out/quickstart",
            "--quiet",
        ],
    )?;
    ensure!(ok, "arrayjob run in the image: {err}");
    let inside = shared.join("quickstart");
    // Written by uid 65532: the image's USER, applied by the kernel (the files on the host are that user's).
    for (rel, meta) in [
        (
            "time-mean.png",
            std::fs::metadata(inside.join("time-mean.png"))?,
        ),
        ("", std::fs::metadata(&inside)?),
    ] {
        assert_eq!((meta.uid(), meta.gid()), (65532, 65532), "owner of {rel:?}");
    }

    let mut host = files(&host_out)?;
    let mut container = files(&inside)?;
    let host_summary = host.remove("summary.json").context("host summary.json")?;
    let container_summary = container
        .remove("summary.json")
        .context("container summary.json")?;
    assert_eq!(
        host.keys().collect::<Vec<_>>(),
        container.keys().collect::<Vec<_>>(),
        "the same files"
    );
    assert!(host.len() > 20, "{:?}", host.keys());
    for (k, v) in &host {
        assert!(
            container[k] == *v,
            "{k} differs between the image and the host"
        );
    }
    assert_eq!(
        comparable_summary(&container_summary)?,
        comparable_summary(&host_summary)?
    );
    // The engine sized its chunk store from the container's cgroup limit (half of it), not the host's RAM.
    let budget = |b: &[u8]| -> Result<u64> {
        let v: Value = serde_json::from_slice(b)?;
        v["memoryBudget"].as_u64().context("memoryBudget")
    };
    assert_eq!(budget(&container_summary)?, MEMORY_LIMIT / 2);
    assert_ne!(budget(&host_summary)?, MEMORY_LIMIT / 2);
    Ok(())
}

#[test]
fn the_kernel_holds_the_image_to_its_user_and_read_only_root() -> Result<()> {
    let image = image()?;
    let (ok, out, err) = run_in(&image, &[], "id", &["-u"])?;
    ensure!(ok, "id -u: {err}");
    assert_eq!(out.trim(), "65532");
    // The root filesystem is read-only: a run writing its outputs under / fails before any work, naming the
    // folder and the kernel's refusal.
    let (ok, _, err) = run_in(
        &image,
        &[format!("{}:/examples:ro", repo("examples").display())],
        "/usr/local/bin/arrayjob",
        &["run", "/examples/quickstart.yaml", "--out", "/quickstart"],
    )?;
    assert!(!ok, "a write to / succeeded");
    assert!(
        err.contains("/quickstart") && err.contains("Read-only file system"),
        "{err}"
    );
    // So is a read-only volume.
    let (ok, _, err) = run_in(
        &image,
        &[format!("{}:/examples:ro", repo("examples").display())],
        "/usr/local/bin/arrayjob",
        &["run", "/examples/quickstart.yaml", "--out", "/examples/out"],
    )?;
    assert!(!ok && err.contains("Read-only file system"), "{err}");
    Ok(())
}

#[test]
fn the_worker_entry_point_in_the_image_offers_the_containers_memory_limit() -> Result<()> {
    let image = image()?;
    // `arrayjob resources` prints what `arrayjob worker` (the image's one worker entry point) budgets with:
    // the engine's cgroup-aware figures, so the container's limit, not the host's RAM.
    let (ok, out, err) = run_in(
        &image,
        &[],
        "/usr/local/bin/arrayjob",
        &["resources", "--threads", "2"],
    )?;
    ensure!(ok, "arrayjob resources in the image: {err}");
    let v: Value = serde_json::from_str(out.trim()).context("resources JSON")?;
    assert_eq!(v["threads"], 2, "{v}");
    assert_eq!(v["memoryBytes"].as_u64(), Some(MEMORY_LIMIT), "{v}");
    assert_eq!(
        v["memoryBudgetBytes"].as_u64(),
        Some(MEMORY_LIMIT / 2),
        "{v}"
    );
    // The worker subcommand is there and refuses to start without its job token, naming it.
    let (ok, _, err) = run_in(
        &image,
        &[],
        "/usr/local/bin/arrayjob",
        &["worker", "--coordinator", "http://127.0.0.1:9"],
    )?;
    assert!(!ok && err.contains("ARRAYJOB_TOKEN is not set"), "{err}");
    Ok(())
}
