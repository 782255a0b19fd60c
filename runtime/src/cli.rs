//! The worker's command-line flags, shared by `arrayjob worker` and `arrayjob-worker`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::auth::Token;
use crate::worker::WorkerOptions;

/// Flags of a worker process. Every flag has an environment variable, so a pod spec can set them.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. `http://10.1.2.3:7070`.
    #[arg(long, env = "ARRAYJOB_COORDINATOR")]
    pub coordinator: String,
    /// Where this worker's data server listens (port 0: any free port).
    #[arg(long, env = "ARRAYJOB_LISTEN", default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// The `host:port` peers reach this worker at (default: the address it is bound to).
    #[arg(long, env = "ARRAYJOB_ADVERTISE")]
    pub advertise: Option<String>,
    /// Threads for tasks (default: the cores this process may use).
    #[arg(long, env = "ARRAYJOB_THREADS")]
    pub threads: Option<usize>,
    /// Memory for chunks before they spill to disk, e.g. `4GiB` (default: half of the memory this process
    /// may use: RAM, or its cgroup's limit when lower).
    #[arg(long, env = "ARRAYJOB_MEMORY_LIMIT")]
    pub memory_limit: Option<bytesize::ByteSize>,
    /// Where spill files go (default: the system's temporary directory).
    #[arg(long, env = "ARRAYJOB_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Bytes spilled to local disk before the rest goes to the job's S3 scratch, e.g. `20GiB` (only for jobs
    /// with `spec.storage.s3`; default: no limit).
    #[arg(long, env = "ARRAYJOB_SPILL_DISK_LIMIT")]
    pub spill_disk_limit: Option<bytesize::ByteSize>,
    /// Refuse to join a job with another plan hash.
    #[arg(long, env = "ARRAYJOB_PLAN_HASH")]
    pub expect_plan_hash: Option<String>,
}

impl WorkerArgs {
    /// The worker's options, with the job token from `ARRAYJOB_TOKEN`.
    ///
    /// # Errors
    /// When `ARRAYJOB_TOKEN` is not set or not a valid token.
    pub fn into_options(self) -> anyhow::Result<WorkerOptions> {
        let token = std::env::var("ARRAYJOB_TOKEN").map_err(|_| {
            anyhow::anyhow!("ARRAYJOB_TOKEN is not set: a worker needs its job's token")
        })?;
        let res = arrayjob_engine::resources::detect();
        Ok(WorkerOptions {
            coordinator: self.coordinator,
            token: Token::from_text(&token)?,
            listen: self.listen,
            advertise: self.advertise,
            threads: self.threads.unwrap_or(res.cores).max(1),
            memory_budget: self
                .memory_limit
                .map_or_else(arrayjob_engine::resources::default_memory_budget, |b| {
                    b.as_u64() as usize
                }),
            spill_dir: self.spill_dir.unwrap_or_else(std::env::temp_dir),
            spill_disk_limit: self.spill_disk_limit.map(|b| b.as_u64()),
            expect_plan_hash: self.expect_plan_hash,
            abort_on_task: std::env::var("ARRAYJOB_FAULT_ABORT_TASK")
                .ok()
                .and_then(|t| t.parse().ok()),
        })
    }
}
