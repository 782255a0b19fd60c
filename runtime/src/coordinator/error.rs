//! Why a coordinator could not run its job ([`CoordinatorError`]). A distributed run goes through the engine's
//! runner, so at that boundary these become the engine's [`RunError`] with the same message: the engine's own
//! errors pass through unchanged, cancellation stays a cancellation, and the rest become the run's internal
//! error naming what failed.

use std::net::SocketAddr;

use arrayjob_auth::TokenError;
use arrayjob_engine::exec::ExecError;
use arrayjob_engine::graph::GraphError;
use arrayjob_engine::runner::RunError;

/// Why a coordinator could not run its job.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// No job token could be generated.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The job's task graph is inconsistent (a planner bug).
    #[error("the job's task graph: {0}")]
    TaskGraph(#[from] GraphError),
    /// The coordinator's async runtime could not start.
    #[error("cannot start the coordinator runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The coordinator could not listen on its address.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// The worker processes of a local run could not be started.
    #[error("cannot start local workers: {0}")]
    LocalWorkers(#[source] std::io::Error),
    /// The HTTP server stopped while the job ran.
    #[error("the coordinator's server stopped")]
    ServerStopped,
    /// The HTTP server failed.
    #[error("the coordinator's server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The job failed: every worker exited, none came for too long, a task failed or kept losing its
    /// workers, or a task's inputs could not be had (the message is the progress snapshot's `failure`).
    #[error("{0}")]
    JobFailed(String),
    /// The run was cancelled (Ctrl-C, SIGTERM).
    #[error("cancelled")]
    Cancelled,
    /// `workers.json` could not be serialized.
    #[error("cannot write the distributed run's report: {0}")]
    ReportJson(#[source] serde_json::Error),
    /// What the engine's runner failed at (outputs, the ledger, the staging directory).
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<ExecError> for CoordinatorError {
    fn from(e: ExecError) -> Self {
        CoordinatorError::Run(e.into())
    }
}

impl From<CoordinatorError> for RunError {
    fn from(e: CoordinatorError) -> Self {
        match e {
            CoordinatorError::Run(e) => e,
            CoordinatorError::Cancelled => ExecError::Cancelled.into(),
            other => ExecError::Internal(other.to_string()).into(),
        }
    }
}
