//! Live counters of a run, per plan node ([`JobProgress`]), readable while it goes on, and their copies
//! ([`NodeSnapshot`]) for reports and `summary.json`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::plan::Plan;

/// Live counters of one node, readable while the run goes on.
#[derive(Debug)]
pub struct NodeProgress {
    /// Node name.
    pub name: String,
    /// Operation kind.
    pub kind: &'static str,
    /// Units of work in total.
    pub total: u64,
    done: AtomicU64,
    busy_ns: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A copy of a node's counters (a wire type: `summary.json` and the progress snapshot carry it).
pub use arrayjob_spec::progress::NodeSnapshot;

/// Progress of a whole run: one [`NodeProgress`] per plan node.
#[derive(Debug)]
pub struct JobProgress {
    start: Instant,
    nodes: Vec<NodeProgress>,
    /// When the last load task finished with everything fused into it (means, recenter, rechunk split).
    loads_end_ns: AtomicU64,
}

impl JobProgress {
    /// Counters for every node of `plan`, all at zero.
    pub fn new(plan: &Plan) -> JobProgress {
        JobProgress {
            start: Instant::now(),
            nodes: plan
                .nodes
                .iter()
                .map(|n| NodeProgress {
                    name: n.name.clone(),
                    kind: n.op.kind(),
                    total: n.tasks(&plan.nodes) as u64,
                    done: AtomicU64::new(0),
                    busy_ns: AtomicU64::new(0),
                    first_ns: AtomicU64::new(u64::MAX),
                    last_ns: AtomicU64::new(0),
                    bytes_in: AtomicU64::new(0),
                    bytes_out: AtomicU64::new(0),
                })
                .collect(),
            loads_end_ns: AtomicU64::new(0),
        }
    }

    /// Seconds after the start when the last load task ended, including the work fused into it (reductions,
    /// recentering, the rechunk's split): the end of the loading phase.
    pub fn load_end_seconds(&self) -> f64 {
        self.loads_end_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Sets the counters to what worker processes reported: per worker, its offset (seconds between this
    /// run's start and the worker's), its node snapshots and its end of loading. Units of work are summed (a
    /// unit recomputed after a worker loss counts once per run, capped at the total), times are the earliest
    /// start and latest end.
    pub fn absorb(&self, workers: &[(f64, &[NodeSnapshot], f64)]) {
        let ns = |s: f64| (s.max(0.0) * 1e9) as u64;
        for (i, n) in self.nodes.iter().enumerate() {
            let mut done = 0;
            let (mut busy, mut bytes_in, mut bytes_out) = (0.0, 0, 0);
            let (mut first, mut last) = (u64::MAX, 0);
            for (offset, snaps, _) in workers {
                let Some(s) = snaps.get(i) else { continue };
                done += s.tasks_done;
                busy += s.busy_seconds;
                bytes_in += s.bytes_in;
                bytes_out += s.bytes_out;
                if s.tasks_done > 0 || s.busy_seconds > 0.0 {
                    first = first.min(ns(offset + s.start_seconds));
                    last = last.max(ns(offset + s.end_seconds));
                }
            }
            n.done.store(done.min(n.total), Ordering::Relaxed);
            n.busy_ns.store(ns(busy), Ordering::Relaxed);
            n.bytes_in.store(bytes_in, Ordering::Relaxed);
            n.bytes_out.store(bytes_out, Ordering::Relaxed);
            n.first_ns.store(first, Ordering::Relaxed);
            n.last_ns.store(last, Ordering::Relaxed);
        }
        let load_end = workers
            .iter()
            .filter(|(_, _, end)| *end > 0.0)
            .map(|(offset, _, end)| ns(offset + end))
            .max()
            .unwrap_or(0);
        self.loads_end_ns.store(load_end, Ordering::Relaxed);
    }

    /// Current counters of every node.
    pub fn snapshot(&self) -> Vec<NodeSnapshot> {
        self.nodes
            .iter()
            .map(|n| {
                let first = n.first_ns.load(Ordering::Relaxed);
                let last = n.last_ns.load(Ordering::Relaxed);
                NodeSnapshot {
                    name: n.name.clone(),
                    kind: n.kind.to_string(),
                    tasks_total: n.total,
                    tasks_done: n.done.load(Ordering::Relaxed),
                    bytes_in: n.bytes_in.load(Ordering::Relaxed),
                    bytes_out: n.bytes_out.load(Ordering::Relaxed),
                    seconds: if first == u64::MAX {
                        0.0
                    } else {
                        last.saturating_sub(first) as f64 / 1e9
                    },
                    start_seconds: if first == u64::MAX {
                        0.0
                    } else {
                        first as f64 / 1e9
                    },
                    end_seconds: last as f64 / 1e9,
                    busy_seconds: n.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
                    value: None,
                }
            })
            .collect()
    }

    /// Adds a unit of work of `node` that started at `started` and read `bytes_in`; `done` units are finished.
    pub(super) fn record(&self, node: usize, started: Instant, bytes_in: usize, done: u64) {
        let n = &self.nodes[node];
        let s = started.duration_since(self.start).as_nanos() as u64;
        let e = self.start.elapsed().as_nanos() as u64;
        n.first_ns.fetch_min(s, Ordering::Relaxed);
        n.last_ns.fetch_max(e, Ordering::Relaxed);
        n.busy_ns.fetch_add(e.saturating_sub(s), Ordering::Relaxed);
        n.bytes_in.fetch_add(bytes_in as u64, Ordering::Relaxed);
        n.done.fetch_add(done, Ordering::Relaxed);
    }

    /// Adds `bytes` to the bytes `node` produced.
    pub(super) fn add_bytes_out(&self, node: usize, bytes: u64) {
        self.nodes[node]
            .bytes_out
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Notes that a load task finished with everything fused into it.
    pub(super) fn load_done(&self) {
        let end = self.start.elapsed().as_nanos() as u64;
        self.loads_end_ns.fetch_max(end, Ordering::Relaxed);
    }
}
