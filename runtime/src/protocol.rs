//! What the coordinator and the workers say to each other over HTTP.
//!
//! Control messages are small JSON documents; data (chunks, pieces, partials, gathered blocks) always travels
//! as binary bodies of self-describing frames ([`arrayjob_engine::frame`]), never as JSON. Every request
//! carries the job's token (`Authorization: Bearer ...`), except the health and metrics endpoints, which say
//! nothing about the data.
//!
//! Coordinator endpoints:
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/job` | - | [`JobDescription`] |
//! | `POST /v1/register` | [`RegisterRequest`] | [`RegisterResponse`]; 409 when the plan hashes differ |
//! | `POST /v1/sync` | [`SyncRequest`] | [`SyncResponse`] (waits up to `waitMs` for work when nothing is reported) |
//! | `POST /v1/gather?node=&start=&pixel=` | a frame | 204 |
//! | `GET /v1/progress` | - | the progress snapshot (JSON) |
//!
//! Worker endpoints: `POST /v1/fetch` ([`FetchRequest`] in, the frames of the keys in order out, each
//! preceded by its length as a u64 little-endian) and `GET /v1/probe?bytes=N` (N bytes, to time a link).

use arrayjob_engine::data::DataKey;
use arrayjob_engine::exec::NodeSnapshot;
use arrayjob_engine::graph::TaskId;
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::StoreStats;
use arrayjob_engine::tracker::Attempt;

/// The header carrying the job token.
pub const AUTHORIZATION: &str = "authorization";

/// Everything a worker needs to build the job's plan itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDescription {
    /// The manifest, as the user wrote it (YAML).
    pub manifest: String,
    /// Where relative source paths are resolved.
    pub base_dir: String,
    /// Where the outputs are staged (a directory every worker can write to).
    pub staging_dir: String,
    /// The coordinator's plan hash (hex).
    pub plan_hash: String,
    /// How often a worker must be heard from, in milliseconds (it is declared lost after
    /// [`JobDescription::worker_timeout_ms`] without a request).
    pub heartbeat_ms: u64,
    /// Silence after which a worker is declared lost, in milliseconds.
    pub worker_timeout_ms: u64,
}

/// A worker joining the job.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// Where peers fetch data from it (`host:port`).
    pub address: String,
    /// Threads it runs tasks on.
    pub cores: usize,
    /// Bytes of data it keeps in memory before spilling to its disk.
    pub memory_budget: u64,
    /// The plan hash it computed from the [`JobDescription`] (hex).
    pub plan_hash: String,
    /// Its version.
    pub version: String,
}

/// The coordinator's answer to a [`RegisterRequest`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    /// The worker's number in this job.
    pub worker: WorkerId,
}

/// Something a worker tells the coordinator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Report {
    /// A task finished; its outputs are in the worker's store (and its output files written).
    Done {
        /// The task.
        task: TaskId,
        /// Which run.
        attempt: Attempt,
        /// Keys written, with their sizes in bytes.
        outputs: Vec<(DataKey, u64)>,
        /// Seconds it took on the worker, fetching its inputs included.
        seconds: f64,
        /// The worker thread that ran it (for the timeline).
        thread: u32,
    },
    /// A task could not run.
    Failed {
        /// The task.
        task: TaskId,
        /// Which run.
        attempt: Attempt,
        /// True when an input could not be fetched from its holder (which may have died): the task is
        /// placed again. Otherwise the error is the job's.
        input_unavailable: bool,
        /// What went wrong, naming stage and chunk.
        error: String,
    },
    /// Bytes received from a peer (a task's inputs or a probe), to measure the link.
    Transfer {
        /// The sender.
        from: WorkerId,
        /// Bytes received.
        bytes: u64,
        /// Seconds it took.
        seconds: f64,
    },
}

/// A worker's periodic message: what happened since the last one, and how it is doing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRequest {
    /// Who.
    pub worker: WorkerId,
    /// Events since the last sync.
    pub reports: Vec<Report>,
    /// Its chunk store counters.
    pub store: StoreStats,
    /// Bytes resident in its store now.
    pub resident_bytes: u64,
    /// Its per-stage counters (cumulative).
    pub stages: Vec<NodeSnapshot>,
    /// When its last load task ended, seconds after it joined.
    pub load_end_seconds: f64,
    /// How long the coordinator may hold the request when there is nothing to send (milliseconds).
    pub wait_ms: u64,
    /// Whether the answer carries the worker's commands. Exactly one of a worker's loops takes them, so
    /// they arrive in the order they were decided.
    pub take_commands: bool,
}

/// A holder of an input, as a task's recipient needs to reach it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputLocation {
    /// The key.
    pub key: DataKey,
    /// Its holder.
    pub worker: WorkerId,
    /// The holder's data address.
    pub address: String,
}

/// What the coordinator tells a worker to do.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Command {
    /// Run a task.
    Run {
        /// The task.
        task: TaskId,
        /// Which run.
        attempt: Attempt,
        /// Where its inputs are.
        inputs: Vec<InputLocation>,
    },
    /// Time the link from a peer.
    Probe {
        /// The peer.
        from: WorkerId,
        /// Its data address.
        address: String,
        /// Bytes to fetch.
        bytes: u64,
    },
    /// Forget data nobody will read.
    Release {
        /// The keys.
        keys: Vec<DataKey>,
    },
}

/// The coordinator's answer to a [`SyncRequest`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResponse {
    /// What to do.
    pub commands: Vec<Command>,
    /// The job is over (finished or failed): the worker exits.
    pub finished: bool,
}

/// A batch of keys to fetch from one peer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchRequest {
    /// The keys, answered in this order.
    pub keys: Vec<DataKey>,
}

/// Appends `frame` to a fetch answer: its length (u64 little-endian), then the frame.
pub fn push_framed(body: &mut Vec<u8>, frame: &[u8]) {
    body.extend_from_slice(&(frame.len() as u64).to_le_bytes());
    body.extend_from_slice(frame);
}

/// Appends the frame of `data` to a fetch answer, preceded by its length (no intermediate copy).
pub fn push_frame_of(body: &mut Vec<u8>, data: &arrayjob_engine::data::Data) {
    let at = body.len();
    body.extend_from_slice(&[0; 8]);
    arrayjob_engine::frame::encode_into(data, body);
    let len = (body.len() - at - 8) as u64;
    body[at..at + 8].copy_from_slice(&len.to_le_bytes());
}

/// Splits a fetch answer into its frames.
///
/// # Errors
/// When the body ends inside a length or a frame.
pub fn split_framed(body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<8>() else {
            return Err(format!(
                "{} stray bytes at the end of a fetch answer",
                rest.len()
            ));
        };
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|e| e.to_string())?;
        if tail.len() < len {
            return Err(format!(
                "fetch answer truncated: a frame of {len} bytes, {} left",
                tail.len()
            ));
        }
        let (frame, next) = tail.split_at(len);
        out.push(frame);
        rest = next;
    }
    Ok(out)
}

/// Parses a comma-separated index list (`"0,40,80"`).
///
/// # Errors
/// When an item is not a number.
pub fn parse_index(s: &str) -> Result<Vec<usize>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|v| {
            v.parse()
                .map_err(|_| format!("'{v}' in '{s}' is not an index"))
        })
        .collect()
}

/// Formats an index list for [`parse_index`].
pub fn format_index(idx: &[usize]) -> String {
    idx.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_bodies_round_trip_and_truncation_is_an_error() {
        let mut body = Vec::new();
        push_framed(&mut body, b"abc");
        push_framed(&mut body, b"");
        push_framed(&mut body, b"defgh");
        let frames = split_framed(&body).expect("split");
        assert_eq!(frames, vec![&b"abc"[..], b"", b"defgh"]);
        let chunk = arrayjob_engine::data::Data::Chunk(arrayjob_engine::array::Chunk::U8(
            ndarray::ArrayD::from_elem(ndarray::IxDyn(&[3, 2]), 7),
        ));
        let mut with = body.clone();
        push_frame_of(&mut with, &chunk);
        let frames = split_framed(&with).expect("split");
        assert_eq!(frames.len(), 4);
        assert_eq!(arrayjob_engine::frame::decode(frames[3]).expect("decode"), chunk);
        let err = split_framed(&body[..body.len() - 1]).expect_err("truncated");
        assert!(err.contains("a frame of 5 bytes, 4 left"), "{err}");
        assert!(
            split_framed(&body[..3])
                .expect_err("stray")
                .contains("3 stray bytes")
        );
    }

    #[test]
    fn index_lists_round_trip() {
        assert_eq!(parse_index(&format_index(&[0, 40, 7])), Ok(vec![0, 40, 7]));
        assert_eq!(parse_index(""), Ok(vec![]));
        assert!(parse_index("1,x").expect_err("bad").contains("'x'"));
    }
}
