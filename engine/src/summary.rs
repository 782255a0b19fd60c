//! What `summary.json` holds: the record of a finished run, local or distributed, that reports and the
//! resume check read back.

use crate::exec::NodeSnapshot;
use crate::output::sink::OutputRecord;
use crate::store::StoreStats;

/// What `summary.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Job name.
    pub job: String,
    /// The run's id: its `--job-id`, or a random one.
    pub run: String,
    /// The plan's hash ([`crate::plan::PlanHash`]): runs with equal hashes compute the same results.
    pub plan_hash: crate::plan::PlanHash,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Threads used.
    pub threads: usize,
    /// Memory budget of the chunk store, bytes.
    pub memory_budget: u64,
    /// Chunk store counters (peak resident bytes, bytes spilled and read back).
    pub store: StoreStats,
    /// Seconds after the start when the last source chunk was loaded and everything fused into its task
    /// (reductions, recentering, the rechunk's split) was done.
    pub load_end_seconds: f64,
    /// Per node (source first): tasks, bytes in/out, seconds.
    pub stages: Vec<NodeSnapshot>,
    /// Files written, relative to the output directory.
    pub outputs: Vec<OutputRecord>,
    /// S3 requests and bytes of this process, when the run used S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<crate::s3::objects::S3Counters>,
}
