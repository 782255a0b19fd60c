//! The contracts between processes about progress: the coordinator's answer to `GET /v1/progress`
//! ([`ProgressSnapshot`]: per stage, per worker and the network, with the job's phase and each worker's state
//! as enums written as the strings the wire has always carried) and the per-stage counters a run writes in
//! `summary.json` ([`NodeSnapshot`]), with the ids and counters they carry. The coordinator and the engine
//! write them; their readers (the operator, `arrayjob progress`) deserialize the same types. The fields a
//! reader does not need default when absent, and a phase or state this version does not know reads as
//! `Other`, so a coordinator of another version still gives its stages.

/// A job's phase, as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobPhase {
    /// Tasks are still to run (`running`).
    Running,
    /// Every task is done (`finished`).
    Finished,
    /// The job failed; the snapshot's `failure` says why (`failed`).
    Failed,
    /// A phase this version does not know (from a coordinator of another version); never written.
    #[serde(other)]
    Other,
}

impl JobPhase {
    /// The phase of a job that failed (`failure` is set) or whose tasks are all done, or that runs.
    pub fn of(failed: bool, finished: bool) -> JobPhase {
        match (failed, finished) {
            (true, _) => JobPhase::Failed,
            (false, true) => JobPhase::Finished,
            (false, false) => JobPhase::Running,
        }
    }
}

/// A worker's state, as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// It takes part in the job (`running`).
    Running,
    /// It was declared lost: silent too long, or its process exited (`lost`).
    Lost,
    /// The job is over and it was not lost (`done`).
    Done,
    /// A state this version does not know (from a coordinator of another version); never written.
    #[serde(other)]
    Other,
}

impl JobPhase {
    /// The phase as the wire writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Running => "running",
            JobPhase::Finished => "finished",
            JobPhase::Failed => "failed",
            JobPhase::Other => "other",
        }
    }
}

impl std::fmt::Display for JobPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl WorkerState {
    /// The state as the wire writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Lost => "lost",
            WorkerState::Done => "done",
            WorkerState::Other => "other",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl WorkerState {
    /// The state of a worker that was `lost` or not, in a job that is `finished` or not.
    pub fn of(lost: bool, finished: bool) -> WorkerState {
        match (lost, finished) {
            (true, _) => WorkerState::Lost,
            (false, true) => WorkerState::Done,
            (false, false) => WorkerState::Running,
        }
    }
}

/// One worker in the progress snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerProgress {
    /// Its number.
    pub id: WorkerId,
    /// Its data address.
    pub address: String,
    /// Whether it runs, was lost, or is done (`running`, `lost`, `done` on the wire).
    pub state: WorkerState,
    /// Threads.
    pub cores: usize,
    /// Memory budget, bytes.
    pub memory_budget: u64,
    /// Tasks it finished.
    pub tasks_done: usize,
    /// Bytes resident in its store at its last report.
    pub resident_bytes: u64,
    /// Its store counters.
    pub store: StoreStats,
    /// Its S3 requests and bytes (Zarr chunks and shards it uploaded, slices it read).
    pub s3: S3Counters,
}

/// The progress snapshot: per stage, per worker, and the network. `GET /v1/progress` answers it as JSON;
/// the operator reads it back with this type (the fields it does not use default when absent, so a
/// coordinator of another version still gives its stages).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressSnapshot {
    /// Whether the job runs, finished or failed (`running`, `finished`, `failed` on the wire).
    pub phase: JobPhase,
    /// Why it failed.
    pub failure: Option<String>,
    /// Seconds since the job started.
    #[serde(default)]
    pub elapsed_seconds: f64,
    /// When the job started (this coordinator's clock), seconds since the Unix epoch.
    #[serde(default)]
    pub started_at_unix: f64,
    /// Per stage: tasks done and total.
    pub stages: Vec<StageProgress>,
    /// Per worker.
    #[serde(default)]
    pub workers: Vec<WorkerProgress>,
    /// Bytes workers fetched from each other.
    #[serde(default)]
    pub bytes_moved: u64,
    /// Of these, pieces moved to their merge's worker as soon as they were written.
    #[serde(default)]
    pub bytes_moved_early: u64,
    /// Bytes workers spilled to their disks.
    #[serde(default)]
    pub spilled_bytes: u64,
    /// Tasks moved to idle workers, and why.
    #[serde(default)]
    pub steals: Vec<Steal>,
    /// Tasks given a second copy.
    #[serde(default)]
    pub speculated: usize,
    /// Tasks run again after a worker loss.
    #[serde(default)]
    pub recomputed: usize,
    /// Workers declared lost.
    #[serde(default)]
    pub workers_lost: usize,
    /// Requests refused for a missing or wrong token.
    #[serde(default)]
    pub auth_refused: u64,
    /// What went through the job's object store.
    #[serde(default)]
    pub store: StoreCounts,
}

/// One stage's tasks.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageProgress {
    /// Stage name.
    pub name: String,
    /// Tasks of the stage done (loads for the source, merges for a rechunk, combines for a reduction).
    pub tasks_done: usize,
    /// Tasks of the stage.
    pub tasks_total: usize,
    /// Bytes its tasks wrote so far.
    #[serde(default)]
    pub bytes_out: u64,
    /// When its first task started, seconds after the job started.
    pub start_seconds: Option<f64>,
    /// When its last task ended, once all are done.
    pub end_seconds: Option<f64>,
}

/// Index of a task in the job's task graph.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TaskId(pub usize);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {}", self.0)
    }
}

/// A worker of the job, numbered by the coordinator in order of joining.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct WorkerId(pub u32);

impl WorkerId {
    /// The job's object store (the S3 scratch prefix) as a holder of keys: never lost, never sent tasks.
    /// Pieces shipped there under `exchange: s3`, and keys a resumed job finds durable, are held by it.
    pub const STORE: WorkerId = WorkerId(u32::MAX);
}

/// What went through the object store ([`WorkerId::STORE`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreCounts {
    /// Keys shipped to the store, and their bytes.
    pub shipped_keys: u64,
    /// See `shipped_keys`.
    pub shipped_bytes: u64,
    /// Keys a lost worker had shipped that were read back from the store rather than recomputed.
    pub read_back_after_loss: u64,
    /// Keys found unreadable in the store (a damaged or missing object), whose producers ran again.
    pub unreadable: u64,
    /// Tasks a resumed run found done in the ledger and did not run again.
    pub restored_tasks: u64,
    /// Tasks of the ledger run again on resume, because outputs still needed were not durable.
    pub restored_reopened: u64,
}

/// A task moved from one worker's pending queue to an idle worker, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Steal {
    /// The task.
    pub task: TaskId,
    /// Where it was waiting.
    pub from: WorkerId,
    /// Where it runs.
    pub to: WorkerId,
    /// Estimated seconds it would have waited.
    pub wait_seconds: f64,
    /// Estimated seconds to move its inputs.
    pub transfer_seconds: f64,
    /// When it was decided (seconds since the job started).
    pub at: f64,
}

/// Counters of a store, for summaries.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    /// Highest bytes in memory seen: resident chunks plus what the engine held against the budget.
    pub peak_resident_bytes: u64,
    /// Bytes written to the spill backend.
    pub spilled_bytes: u64,
    /// Bytes read back from it.
    pub unspilled_bytes: u64,
    /// Of the bytes spilled, those that went to S3 (beyond the local disk's limit); the rest went to disk.
    #[serde(default)]
    pub spilled_to_s3_bytes: u64,
}

/// Requests and bytes of this process, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Counters {
    /// Requests sent (each SDK retry is not counted again).
    pub requests: u64,
    /// Objects written (PUT or multipart upload).
    pub objects_put: u64,
    /// Of which multipart uploads.
    pub multipart_uploads: u64,
    /// Bytes written.
    pub bytes_put: u64,
    /// Bytes read.
    pub bytes_got: u64,
    /// Server-side copies.
    pub copies: u64,
    /// Objects deleted.
    pub deleted: u64,
}

/// A copy of a node's counters.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSnapshot {
    /// Node name.
    pub name: String,
    /// Operation kind.
    pub kind: String,
    /// Units of work in total.
    pub tasks_total: u64,
    /// Units of work done.
    pub tasks_done: u64,
    /// Bytes read by this node's computations.
    pub bytes_in: u64,
    /// Bytes of the chunks it produced.
    pub bytes_out: u64,
    /// Wall-clock seconds from its first to its last unit of work.
    pub seconds: f64,
    /// When its first unit of work started, seconds after the run started.
    pub start_seconds: f64,
    /// When its last unit of work ended, seconds after the run started.
    pub end_seconds: f64,
    /// Thread-seconds spent in its computations.
    pub busy_seconds: f64,
    /// The stage's result, when it is a single number with a `value` output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("json")
    }

    #[test]
    fn phases_and_states_are_written_as_the_strings_the_wire_carries() {
        assert_eq!(json(&JobPhase::Running), r#""running""#);
        assert_eq!(json(&JobPhase::Finished), r#""finished""#);
        assert_eq!(json(&JobPhase::Failed), r#""failed""#);
        assert_eq!(json(&WorkerState::Running), r#""running""#);
        assert_eq!(json(&WorkerState::Lost), r#""lost""#);
        assert_eq!(json(&WorkerState::Done), r#""done""#);
        for p in [JobPhase::Running, JobPhase::Finished, JobPhase::Failed] {
            assert_eq!(json(&p), format!("\"{p}\""));
        }
        for w in [WorkerState::Running, WorkerState::Lost, WorkerState::Done] {
            assert_eq!(json(&w), format!("\"{w}\""));
        }
        assert_eq!(JobPhase::of(true, true), JobPhase::Failed);
        assert_eq!(JobPhase::of(false, true), JobPhase::Finished);
        assert_eq!(JobPhase::of(false, false), JobPhase::Running);
        assert_eq!(WorkerState::of(true, true), WorkerState::Lost);
        assert_eq!(WorkerState::of(false, true), WorkerState::Done);
        assert_eq!(WorkerState::of(false, false), WorkerState::Running);
    }

    #[test]
    fn an_unknown_phase_or_state_reads_as_other_and_the_stages_still_come() {
        let worker = WorkerProgress {
            id: WorkerId(3),
            address: "10.0.0.3:7071".into(),
            state: WorkerState::Lost,
            cores: 2,
            memory_budget: 1 << 20,
            tasks_done: 4,
            resident_bytes: 5,
            store: StoreStats::default(),
            s3: S3Counters::default(),
        };
        let mut w: serde_json::Value = serde_json::from_str(&json(&worker)).expect("worker");
        assert_eq!(w["state"], "lost");
        w["state"] = "draining".into();
        let text = format!(
            r#"{{"phase": "paused", "failure": null, "stages": [{{"name": "s", "tasksDone": 1,
                "tasksTotal": 2, "startSeconds": 0.5, "endSeconds": null}}], "workers": [{w}]}}"#
        );
        let s: ProgressSnapshot = serde_json::from_str(&text).expect("snapshot");
        assert_eq!(s.phase, JobPhase::Other);
        assert_eq!(s.workers[0].state, WorkerState::Other);
        assert_eq!(s.workers[0].tasks_done, 4);
        assert_eq!(s.stages[0].tasks_done, 1);
        let known: ProgressSnapshot =
            serde_json::from_str(r#"{"phase": "failed", "failure": "x", "stages": []}"#)
                .expect("snapshot");
        assert_eq!(known.phase, JobPhase::Failed);
        assert_eq!(known.failure.as_deref(), Some("x"));
    }
}
