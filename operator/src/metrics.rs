//! The operator's Prometheus metrics: jobs by phase, reconcile errors by kind, status writes, cleanups by
//! outcome.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<PhaseLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    errors: Family<KindLabel, Counter<u64, AtomicU64>>,
    writes: Counter<u64, AtomicU64>,
    reconciles: Counter<u64, AtomicU64>,
    leader: Gauge<i64, std::sync::atomic::AtomicI64>,
    cleanups: Family<OutcomeLabel, Counter<u64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("arrayjob_operator");
        let jobs = Family::<PhaseLabel, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        let errors = Family::<KindLabel, Counter<u64, AtomicU64>>::default();
        let writes = Counter::<u64, AtomicU64>::default();
        registry.register(
            "jobs",
            "ArrayJobs by phase, as this operator last wrote them",
            jobs.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconcile passes by kind",
            errors.clone(),
        );
        registry.register("status_writes", "ArrayJob status writes", writes.clone());
        let reconciles = Counter::<u64, AtomicU64>::default();
        registry.register("reconciles", "Reconcile passes", reconciles.clone());
        let leader = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this replica reconciles (holds the leader Lease, or runs without leader election)",
            leader.clone(),
        );
        let cleanups = Family::<OutcomeLabel, Counter<u64, AtomicU64>>::default();
        registry.register(
            "cleanups",
            "Finalizer cleanups of deleted ArrayJobs by outcome: removed, skipped, abandoned",
            cleanups.clone(),
        );
        Metrics {
            cleanups,
            registry,
            jobs,
            errors,
            writes,
            reconciles,
            leader,
        }
    }

    /// A job went from phase `from` to `to`.
    pub fn job_phase(&self, from: Option<&str>, to: Option<&str>) {
        if let Some(f) = from {
            self.jobs
                .get_or_create(&PhaseLabel { phase: f.into() })
                .dec();
        }
        if let Some(t) = to {
            self.jobs
                .get_or_create(&PhaseLabel { phase: t.into() })
                .inc();
        }
    }

    /// A reconcile pass failed with an error of `kind`.
    pub fn reconcile_error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// A reconcile pass began.
    pub fn reconciled(&self) {
        self.reconciles.inc();
    }

    /// Whether this replica reconciles.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// A deleted job's cleanup ended with `outcome` (`removed`, `skipped`, `abandoned`).
    pub fn cleanup(&self, outcome: &str) {
        self.cleanups
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A status was written.
    pub fn status_written(&self) {
        self.writes.inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
