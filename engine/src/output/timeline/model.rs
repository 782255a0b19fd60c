//! The data of a timeline: task spans and the markers between workers, as the coordinator records them.

/// One task run as seen by the coordinator. Times are seconds since the job started.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpan {
    /// Worker that ran it.
    pub worker: u32,
    /// Thread (executor slot) of that worker.
    pub thread: u32,
    /// Stage it belongs to (e.g. `load`, `merge`, `combine`): decides its colour.
    pub stage: String,
    /// Its name, shown in tooltips.
    pub task: String,
    /// When it started.
    pub start: f64,
    /// When it ended.
    pub end: f64,
}

/// What a [`Marker`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MarkerKind {
    /// Data moved from worker `from` to worker `to`, from `at` until `end`, `bytes` of it.
    Transfer,
    /// Worker `to` took a task waiting on worker `from`.
    Steal,
    /// Worker `from` (or `to` when `from` is unset) was lost.
    WorkerLost,
    /// Worker `to` started a speculative copy of a task running on worker `from`.
    Speculated,
}

/// Something that happened between workers, drawn over the lanes. Times are seconds since the job started.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// What happened.
    pub kind: MarkerKind,
    /// The sending, robbed or lost worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u32>,
    /// The receiving, stealing or copying worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
    /// When it happened (a transfer: when it started).
    pub at: f64,
    /// When a transfer ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<f64>,
    /// Bytes transferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Free text shown in the marker's tooltip (e.g. the task or data key concerned).
    #[serde(default)]
    pub note: String,
}

/// A run's task stream: the spans of every task run and the markers between workers.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Timeline {
    /// Heading of the page or image.
    pub title: String,
    /// Task runs, in any order.
    pub spans: Vec<TaskSpan>,
    /// Events between workers, in any order.
    pub markers: Vec<Marker>,
}

/// Width of the PNG, pixels.
pub const TIMELINE_PNG_WIDTH: u32 = 1600;
/// The PNG grows with the number of lanes up to this height, then its lanes get thinner.
pub const TIMELINE_PNG_MAX_HEIGHT: u32 = 4000;
