//! The S3 side of the environment: SeaweedFS (`weed mini`) on loopback, with SigV4 identities
//! from a config file, and `aws-sdk-s3` clients for it; [`S3Server`] runs it alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use serde_json::json;

use crate::locate;
use crate::proc::{ProcessGroup, free_ports, prune_stale_runs};
use crate::{Error, Result};

/// How long [`S3Server::start`] waits for SeaweedFS to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the S3 server listens and the credentials of its one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Endpoint {
    /// Base URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Region name to sign with.
    pub region: String,
}

impl S3Endpoint {
    /// An S3 client for this endpoint with its credentials (path-style addressing).
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_with(&self.access_key, &self.secret_key)
    }

    /// An S3 client for this endpoint with other credentials (e.g. to check that a wrong secret
    /// is rejected).
    pub fn client_with(&self, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
        let creds = Credentials::new(access_key, secret_key, None, None, "arrayjob-testenv");
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(creds)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Environment variables for programs using the AWS SDKs against this endpoint.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ENDPOINT_URL_S3".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
        ]
    }
}

/// A fresh secret for one environment (std's randomly seeded hasher keys as the entropy source).
fn secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", word(), word())
}

/// Writes the identity file and returns the `weed mini` command and the endpoint.
pub(crate) fn weed_mini(weed: &Path, run_dir: &Path) -> Result<(Command, S3Endpoint)> {
    let data = run_dir.join("s3-data");
    std::fs::create_dir_all(&data).map_err(|e| Error::io("create s3-data", e))?;
    let endpoint = S3Endpoint {
        endpoint: String::new(),
        access_key: "ARRAYJOBTESTKEY".into(),
        secret_key: secret(),
        region: "us-east-1".into(),
    };
    let config = json!({"identities": [{
        "name": "arrayjob-test",
        "credentials": [{"accessKey": endpoint.access_key, "secretKey": endpoint.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]});
    let config_path = run_dir.join("s3.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
        .map_err(|e| Error::io("write s3.json", e))?;
    let p = free_ports(10)?;
    let port = |i: usize| p.get(i).copied().unwrap_or_default().to_string();
    let mut cmd = Command::new(weed);
    cmd.arg("mini")
        .arg(format!("-dir={}", data.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .args([
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
        ])
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
        .arg(format!("-s3.config={}", config_path.display()))
        .arg("-s3.allowDeleteBucketNotEmpty=false")
        .arg(format!("-s3.port={}", port(0)))
        .arg(format!("-s3.port.grpc={}", port(1)))
        .arg(format!("-master.port={}", port(2)))
        .arg(format!("-master.port.grpc={}", port(3)))
        .arg(format!("-volume.port={}", port(4)))
        .arg(format!("-volume.port.grpc={}", port(5)))
        .arg(format!("-filer.port={}", port(6)))
        .arg(format!("-filer.port.grpc={}", port(7)))
        .arg(format!("-admin.port={}", port(8)))
        .arg(format!("-admin.port.grpc={}", port(9)))
        .current_dir(run_dir);
    Ok((
        cmd,
        S3Endpoint {
            endpoint: format!("http://127.0.0.1:{}", port(0)),
            ..endpoint
        },
    ))
}

/// SeaweedFS alone (no Kubernetes), for tests that need only S3: started in a few seconds, stopped when
/// dropped, and killed by the same watchdog as a [`crate::TestEnv`] when the test process ends.
#[derive(Debug)]
pub struct S3Server {
    endpoint: S3Endpoint,
    run_dir: PathBuf,
    group: ProcessGroup,
    /// Program, arguments and directory of `weed mini`, to start it again.
    command: (PathBuf, Vec<std::ffi::OsString>, PathBuf),
}

impl S3Server {
    /// Starts `weed mini` on loopback ports and waits until its S3 API answers (blocking; call it from any
    /// context).
    pub fn start() -> Result<S3Server> {
        let weed = locate::weed()?;
        let runs = locate::cache_dir().join("run");
        std::fs::create_dir_all(&runs).map_err(|e| Error::io("create run dir", e))?;
        prune_stale_runs(&runs, 4);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let run_dir = runs.join(format!("{}-{stamp}-s3", std::process::id()));
        std::fs::create_dir_all(&run_dir).map_err(|e| Error::io("create run dir", e))?;
        let mut group = ProcessGroup::start(&run_dir)?;
        let (cmd, endpoint) = weed_mini(&weed, &run_dir)?;
        let command = (
            weed.clone(),
            cmd.get_args().map(std::ffi::OsStr::to_owned).collect(),
            run_dir.clone(),
        );
        group.spawn("seaweedfs", cmd)?;
        let mut server = S3Server {
            endpoint,
            run_dir,
            group,
            command,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Waits until the S3 API answers.
    fn wait_ready(&mut self) -> Result<()> {
        let (endpoint, group) = (&self.endpoint, &mut self.group);
        let client = endpoint.client();
        let started = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("build a tokio runtime", e))?;
                loop {
                    if rt.block_on(client.list_buckets().send()).is_ok() {
                        return Ok(());
                    }
                    group.check_alive()?;
                    if started.elapsed() > READY_TIMEOUT {
                        return Err(Error::Timeout {
                            what: "SeaweedFS S3".into(),
                            secs: READY_TIMEOUT.as_secs(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .join()
            .map_err(|_| Error::Invalid("the start-up thread panicked".into()))?
        })?;
        tracing::info!(
            "SeaweedFS ready in {:.1} s at {}",
            started.elapsed().as_secs_f64(),
            endpoint.endpoint
        );
        Ok(())
    }

    /// An outage: kills the server (SIGKILL), keeps it down for `down`, starts it again on the same ports and
    /// data, and waits until it answers. Blocks for all that time.
    pub fn outage(&mut self, down: Duration) -> Result<()> {
        self.group.kill("seaweedfs");
        std::thread::sleep(down);
        let (program, args, dir) = &self.command;
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(dir);
        self.group.spawn("seaweedfs", cmd)?;
        self.wait_ready()
    }

    /// Its endpoint and credentials.
    pub fn endpoint(&self) -> &S3Endpoint {
        &self.endpoint
    }

    /// Its run folder (logs in `logs/seaweedfs.log`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Stops it now (also done when dropped, and by the watchdog at exit).
    pub fn stop(&mut self) {
        self.group.shutdown();
    }
}
