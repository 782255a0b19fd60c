//! Why a worker stopped ([`WorkerError`]), and why a fetch of keys from a peer failed ([`FetchError`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use arrayjob_auth::AuthError;
use arrayjob_engine::graph::GraphError;
use arrayjob_engine::output::OutputError;
use arrayjob_engine::runner::RunError;
use arrayjob_engine::s3::S3Error;
use arrayjob_engine::validate::{Problem, SpecError};

use crate::protocol::ReadError;

/// The hint given whenever the address peers reach a worker at cannot be found.
pub const ADVERTISE_HINT: &str =
    "give the address peers reach this worker at with --advertise (ARRAYJOB_ADVERTISE)";

/// Why a worker could not join its job or run it to the end.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker's async runtime could not start.
    #[error("cannot start the worker's I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The data server could not listen on its address.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// Nothing answered at the coordinator's address for as long as a worker waits for it to start.
    #[error("cannot reach the coordinator at {url} for {seconds} s: {source}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// How long it tried, seconds.
        seconds: f64,
        /// The last failure.
        source: AuthError,
    },
    /// The coordinator answered but refused (wrong token, another plan hash, the job is over).
    #[error("the coordinator at {url} refused this worker ({status}): {message}")]
    Refused {
        /// The URL asked.
        url: String,
        /// The answer's status.
        status: reqwest::StatusCode,
        /// The answer's text.
        message: String,
    },
    /// A request to the coordinator got no trusted answer (it did not prove it holds the token, or the
    /// connection failed).
    #[error("the coordinator at {url}: {source}")]
    Coordinator {
        /// The URL asked.
        url: String,
        /// What failed.
        source: AuthError,
    },
    /// The coordinator's answer could not be read as what was asked for.
    #[error("the coordinator's answer at {url}: {source}")]
    Answer {
        /// The URL asked.
        url: String,
        /// What failed.
        source: reqwest::Error,
    },
    /// The coordinator runs another job than this worker was started for.
    #[error(
        "the coordinator at {coordinator} runs a job with plan hash {theirs}, this worker was started for plan \
         hash {expected}"
    )]
    PlanHash {
        /// The coordinator's URL.
        coordinator: String,
        /// The job's plan hash.
        theirs: String,
        /// The hash this worker was started for.
        expected: String,
    },
    /// The job's manifest could not be read here.
    #[error(transparent)]
    Manifest(#[from] SpecError),
    /// The job's manifest does not validate here (another engine version).
    #[error("the job's manifest is invalid here: {0:?}")]
    Invalid(Vec<Problem>),
    /// The job's plan could not be built here (its source, its shapes).
    #[error(transparent)]
    Prepare(#[from] RunError),
    /// The job's task graph is inconsistent (a planner bug).
    #[error("task graph: {0}")]
    TaskGraph(#[from] GraphError),
    /// The coordinator's URL names no host and port to find this worker's own address from.
    #[error("the coordinator's URL {url} {reason}; {ADVERTISE_HINT}")]
    CoordinatorUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The worker listens on every interface and could not find the address peers reach it at.
    #[error(
        "this worker listens on {bound} (every interface) and cannot reach the coordinator at {coordinator} \
         to find its own address; {ADVERTISE_HINT}: {source}"
    )]
    OwnAddress {
        /// The address it listens on.
        bound: SocketAddr,
        /// The coordinator's URL.
        coordinator: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The connection to the coordinator left from no address of this host's own.
    #[error("this worker listens on {bound} and has no address of its own; {ADVERTISE_HINT}")]
    NoOwnAddress {
        /// The address it listens on.
        bound: SocketAddr,
    },
    /// No spill file could be made.
    #[error("cannot create a spill file in {dir}: {source}")]
    Spill {
        /// The spill directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The job's S3 scratch or output location could not be reached or is not a location.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// The job's Zarr arrays could not be opened.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The coordinator dropped this worker (declared it lost, or does not know it).
    #[error("the coordinator dropped this worker: {0}")]
    Dropped(String),
    /// The coordinator stopped answering while the job ran.
    #[error("lost the coordinator at {url}: {message}")]
    LostCoordinator {
        /// The coordinator's URL.
        url: String,
        /// The last failure.
        message: String,
    },
    /// A loop talking to the coordinator panicked.
    #[error("the coordinator loop panicked: {0}")]
    Panicked(String),
}

/// Why keys could not be fetched from a peer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No trusted answer (unreachable, or it did not prove it holds the job's token).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The peer refused (it does not hold a key, or the request was refused).
    #[error("{status}: {message}")]
    Refused {
        /// The answer's status.
        status: reqwest::StatusCode,
        /// The answer's text.
        message: String,
    },
    /// The connection failed while the answer was read.
    #[error("{0}")]
    Read(#[source] reqwest::Error),
    /// The answer's bytes are not the keys' frames.
    #[error(transparent)]
    Frames(#[from] ReadError),
    /// The answer holds another number of frames than keys asked for.
    #[error("answered {frames} frames for {keys} keys")]
    Count {
        /// Frames answered.
        frames: usize,
        /// Keys asked for.
        keys: usize,
    },
}
