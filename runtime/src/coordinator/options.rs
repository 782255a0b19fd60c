//! How a coordinator runs: its options, and the defaults of a run on this machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arrayjob_auth::Token;
use arrayjob_engine::schedule::SchedulerOptions;

use super::error::CoordinatorError;

/// How a coordinator runs (flags and environment variables of `arrayjob run --workers` and
/// `arrayjob coordinator`).
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Where it listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The address workers reach it at (default: the bound address; loopback when bound to every
    /// interface).
    pub advertise: Option<String>,
    /// The job token.
    pub token: Token,
    /// The manifest text, sent to workers.
    pub manifest: String,
    /// Where relative source paths are resolved (workers must see the same files there).
    pub base_dir: PathBuf,
    /// Worker processes to start on this machine, each on its own loopback address ([`local_worker_host`]).
    pub local_workers: usize,
    /// The program and leading arguments that start a worker (`arrayjob worker`).
    pub worker_command: Vec<String>,
    /// Threads of each local worker.
    pub worker_threads: usize,
    /// Memory budget of each local worker, bytes.
    pub worker_memory: usize,
    /// Bytes each local worker spills to its disk before the job's S3 scratch takes the rest.
    pub worker_spill_disk_limit: Option<u64>,
    /// How often workers must be heard from.
    pub heartbeat: Duration,
    /// Silence after which a worker is lost.
    pub worker_timeout: Duration,
    /// How long the job may go without any live worker before it fails.
    pub no_worker_timeout: Duration,
    /// The placement policy's knobs.
    pub scheduler: SchedulerOptions,
    /// Print the coordinator's URL once it listens (for workers started by hand).
    pub announce: bool,
}

impl CoordinatorOptions {
    /// Options for `local_workers` worker processes started with `worker_command`, everything else at its
    /// default: loopback, a fresh token, 0.5 s heartbeats, 3 s timeout.
    ///
    /// # Errors
    /// When no token can be generated.
    pub fn local(
        manifest: String,
        base_dir: PathBuf,
        local_workers: usize,
        worker_command: Vec<String>,
    ) -> Result<CoordinatorOptions, CoordinatorError> {
        Ok(CoordinatorOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            token: Token::generate()?,
            manifest,
            base_dir,
            local_workers,
            worker_command,
            worker_threads: 1,
            worker_memory: 1 << 30,
            worker_spill_disk_limit: None,
            heartbeat: Duration::from_millis(500),
            worker_timeout: Duration::from_secs(3),
            no_worker_timeout: Duration::from_secs(60),
            scheduler: SchedulerOptions::default(),
            announce: false,
        })
    }
}
