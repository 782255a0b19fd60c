//! What a worker's threads share: the job, its store and progress, the queue of tasks, the keys being moved
//! here, the reports waiting to go, and the client to the coordinator.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use arrayjob_engine::data::DataKey;
use arrayjob_engine::exec::JobProgress;
use arrayjob_engine::graph::{TaskGraph, TaskId};
use arrayjob_engine::runner::Prepared;
use arrayjob_engine::s3::objects::Bucket;
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::ChunkStore;
use arrayjob_engine::tracker::Attempt;

use super::join::Http;
use super::sink::WorkerSink;
use crate::metrics::WorkerMetrics;
use crate::protocol::{InputLocation, Report};

/// A task to run, as the coordinator sent it.
#[derive(Debug)]
pub(super) struct Assignment {
    pub(super) task: TaskId,
    pub(super) attempt: Attempt,
    pub(super) inputs: Vec<InputLocation>,
}

/// Everything the worker's threads share.
pub(super) struct Shared {
    pub(super) id: WorkerId,
    pub(super) job: Prepared,
    pub(super) graph: TaskGraph,
    pub(super) store: Arc<ChunkStore>,
    pub(super) progress: JobProgress,
    pub(super) sink: WorkerSink,
    pub(super) queue: Mutex<VecDeque<Assignment>>,
    pub(super) queued: Condvar,
    pub(super) moves: Moves,
    pub(super) reports: Mutex<Vec<Report>>,
    pub(super) report_ready: tokio::sync::Notify,
    pub(super) stop: AtomicBool,
    pub(super) http: Http,
    pub(super) tasks_done: AtomicU64,
    pub(super) metrics: Arc<WorkerMetrics>,
    pub(super) abort_on_task: Option<usize>,
    /// The job's scratch bucket (`exchange: s3` ships and reads pieces there), and uploads in flight.
    pub(super) store_bucket: Option<Bucket>,
    pub(super) uploads: Arc<tokio::sync::Semaphore>,
}

/// Uploads of [`Command::Ship`] in flight at once.
pub(super) const SHIP_CONCURRENCY: usize = 8;

/// Keys being copied here from peers ahead of their merges ([`Command::Move`]): queued per peer, one batch in
/// flight per peer. A task reading one of them waits for it rather than fetching it a second time.
#[derive(Default)]
pub(super) struct Moves {
    pub(super) state: Mutex<MovesState>,
    pub(super) arrived: Condvar,
}

#[derive(Default)]
pub(super) struct MovesState {
    /// Per peer: its address and the keys not asked for yet, with their sizes.
    pub(super) queued: BTreeMap<WorkerId, (String, VecDeque<(DataKey, u64)>)>,
    /// Peers with a batch in flight.
    pub(super) busy: BTreeSet<WorkerId>,
    /// Keys queued or in flight.
    pub(super) pending: HashSet<DataKey>,
}

/// Keys and bytes asked for in one request of a move (at least one key), so a batch in flight stays small
/// next to the worker's budget.
pub(super) const MOVE_BATCH: usize = 64;
pub(super) const MOVE_BATCH_BYTES: u64 = 64 << 20;

impl Moves {
    /// Queues `keys` from `from`; true when nothing is being copied from it (the caller starts a mover).
    pub(super) fn queue(&self, from: WorkerId, address: String, keys: Vec<(DataKey, u64)>) -> bool {
        let mut st = lock(&self.state);
        st.pending.extend(keys.iter().map(|&(k, _)| k));
        st.queued
            .entry(from)
            .or_insert_with(|| (address, VecDeque::new()))
            .1
            .extend(keys);
        st.busy.insert(from)
    }

    /// The next batch from `from`, or None (and the peer no longer busy) when nothing is queued.
    pub(super) fn next_batch(&self, from: WorkerId) -> Option<(String, Vec<DataKey>)> {
        let mut st = lock(&self.state);
        let Some((address, keys)) = st.queued.get_mut(&from).filter(|(_, k)| !k.is_empty()) else {
            st.queued.remove(&from);
            st.busy.remove(&from);
            return None;
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(&(key, size)) = keys.front() {
            if !batch.is_empty() && (batch.len() == MOVE_BATCH || bytes + size > MOVE_BATCH_BYTES) {
                break;
            }
            batch.push(key);
            bytes += size;
            keys.pop_front();
        }
        Some((address.clone(), batch))
    }

    /// `keys` arrived (or will not): tasks waiting for them go on.
    pub(super) fn settled(&self, keys: &[DataKey]) {
        let mut st = lock(&self.state);
        for k in keys {
            st.pending.remove(k);
        }
        self.arrived.notify_all();
    }

    /// Waits until none of `keys` is on its way here (or the worker stops).
    pub(super) fn wait_for(&self, keys: &[DataKey], stop: &AtomicBool) {
        let mut st = lock(&self.state);
        while keys.iter().any(|k| st.pending.contains(k)) && !stop.load(Ordering::Relaxed) {
            st = self
                .arrived
                .wait_timeout(st, Duration::from_millis(200))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
    }
}

/// Drops a damaged key from the store (its spilled frame included).
pub(super) fn forget_damaged(shared: &Shared, key: DataKey) {
    tracing::warn!(worker = shared.id.0, %key, "a spilled chunk came back damaged; it is rebuilt");
    if let Err(e) = shared.store.remove(key) {
        tracing::warn!("dropping damaged {key}: {e}");
    }
}

pub(super) fn push_report(shared: &Shared, r: Report) {
    lock(&shared.reports).push(r);
    shared.report_ready.notify_one();
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
