//! What a distributed run publishes beside its outputs: `workers.json` (the [`DistributedReport`]) and the
//! task-stream timeline (HTML and PNG) drawn from the spans and events the coordinator recorded.

use std::path::Path;

use arrayjob_engine::output::timeline;
use arrayjob_engine::runner::{self, OutputRecord, RunError};
use arrayjob_engine::schedule::{Steal, StoreCounts, WorkerId};

use super::error::CoordinatorError;
use arrayjob_spec::progress::WorkerProgress;

/// What the distributed run did, beyond the local summary: per worker, and the network.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DistributedReport {
    /// The coordinator's address.
    pub coordinator: String,
    /// Every worker that joined.
    pub workers: Vec<WorkerProgress>,
    /// Bytes workers fetched from each other.
    pub bytes_moved: u64,
    /// Of these, pieces moved to their merge's worker as soon as they were written.
    pub bytes_moved_early: u64,
    /// Tasks moved to idle workers, and why.
    pub steals: Vec<Steal>,
    /// Tasks given a second copy.
    pub speculated: usize,
    /// Tasks run again because data was lost with a worker.
    pub recomputed: usize,
    /// Workers declared lost.
    pub workers_lost: usize,
    /// Requests refused for a missing or wrong token.
    pub auth_refused: u64,
    /// Workers refused for another plan hash.
    pub plan_hash_refused: u64,
    /// Scheduling decisions made.
    pub decisions: u64,
    /// Tasks of the job's graph.
    pub tasks: usize,
    /// What went through the job's object store (`exchange: s3`, a resumed run).
    pub store: StoreCounts,
    /// Every task run: who, when (seconds after the start), how long.
    #[serde(skip)]
    pub spans: Vec<Span>,
    /// Transfers and losses, for the timeline.
    #[serde(skip)]
    pub events: Vec<Event>,
}

/// A task run as the coordinator saw it.
#[derive(Debug, Clone)]
pub struct Span {
    /// Worker.
    pub worker: WorkerId,
    /// Its thread.
    pub thread: u32,
    /// Stage name.
    pub stage: String,
    /// Task description.
    pub task: String,
    /// Start, seconds after the job started.
    pub start: f64,
    /// End.
    pub end: f64,
}

/// Something between workers.
#[derive(Debug, Clone)]
pub enum Event {
    /// `to` fetched `bytes` from `from`, ending at `at` after `seconds`.
    Transfer {
        /// Sender.
        from: WorkerId,
        /// Receiver.
        to: WorkerId,
        /// Bytes.
        bytes: u64,
        /// End time.
        at: f64,
        /// Duration.
        seconds: f64,
    },
    /// A worker was declared lost at `at`.
    Lost {
        /// Who.
        worker: WorkerId,
        /// When.
        at: f64,
    },
}

/// The timeline files published with a distributed run's outputs (names the engine's validation reserves).
pub use arrayjob_engine::validate::{TIMELINE_HTML, TIMELINE_PNG};

/// The distributed run's report, published with the outputs (a name the engine's validation reserves).
pub const WORKERS_FILE: &str = arrayjob_engine::validate::WORKERS_REPORT;

/// Writes `workers.json` (the [`DistributedReport`]) and the timeline into `staging`, and says what they are.
pub(super) fn write_reports(
    r: &DistributedReport,
    staging: &Path,
) -> Result<Vec<OutputRecord>, CoordinatorError> {
    let path = staging.join(WORKERS_FILE);
    let text = serde_json::to_string_pretty(r).map_err(CoordinatorError::ReportJson)?;
    std::fs::write(&path, text + "\n").map_err(runner::io_err(&path))?;
    let t = timeline(r);
    timeline::write_timeline_html(&staging.join(TIMELINE_HTML), &t).map_err(RunError::from)?;
    timeline::write_timeline_png(&staging.join(TIMELINE_PNG), &t).map_err(RunError::from)?;
    Ok([
        (WORKERS_FILE, "report"),
        (TIMELINE_HTML, "timeline"),
        (TIMELINE_PNG, "timeline"),
    ]
    .into_iter()
    .map(|(path, kind)| OutputRecord {
        stage: "-".into(),
        kind: kind.into(),
        path: path.into(),
        fingerprint: None,
    })
    .collect())
}

/// The task-stream timeline of a run: a bar per task run, transfers, steals and worker losses.
pub(super) fn timeline(r: &DistributedReport) -> timeline::Timeline {
    use timeline::{Marker, MarkerKind, TaskSpan};
    let spans = r
        .spans
        .iter()
        .map(|s| TaskSpan {
            worker: s.worker.0,
            thread: s.thread,
            stage: s.stage.clone(),
            task: s.task.clone(),
            start: s.start,
            end: s.end,
        })
        .collect();
    let mut markers: Vec<Marker> = r
        .events
        .iter()
        .map(|e| match *e {
            Event::Transfer {
                from,
                to,
                bytes,
                at,
                seconds,
            } => Marker {
                kind: MarkerKind::Transfer,
                from: Some(from.0),
                to: Some(to.0),
                at: (at - seconds).max(0.0),
                end: Some(at),
                bytes: Some(bytes),
                note: format!("{:.1} MB in {:.3} s", bytes as f64 / 1e6, seconds),
            },
            Event::Lost { worker, at } => Marker {
                kind: MarkerKind::WorkerLost,
                from: Some(worker.0),
                to: None,
                at,
                end: None,
                bytes: None,
                note: "no heartbeat: declared lost".into(),
            },
        })
        .collect();
    markers.extend(r.steals.iter().map(|s| Marker {
        kind: MarkerKind::Steal,
        from: Some(s.from.0),
        to: Some(s.to.0),
        at: s.at,
        end: None,
        bytes: None,
        note: format!(
            "task {}: would wait {:.2} s, moves in {:.2} s",
            s.task.0, s.wait_seconds, s.transfer_seconds
        ),
    }));
    timeline::Timeline {
        title: format!("arrayjob task stream ({} workers)", r.workers.len()),
        spans,
        markers,
    }
}
