//! Prometheus metrics of the coordinator (`GET /metrics`, OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The answer of a `/metrics` endpoint: the encoded metrics, or a 500 saying why they could not be.
pub fn openmetrics_response(encoded: Result<String, std::fmt::Error>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match encoded {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The `stage` label of per-stage counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// Stage name.
    pub stage: String,
}

/// The coordinator's metrics and their registry.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    registry: Registry,
    /// Tasks finished, by stage.
    pub tasks_done: Family<StageLabel, Counter>,
    /// Bytes workers fetched from each other.
    pub bytes_moved: Counter,
    /// Workers alive now.
    pub workers_alive: Gauge,
    /// Workers declared lost.
    pub workers_lost: Counter,
    /// Requests refused for a missing or wrong token (copied from the guard when scraped).
    pub auth_refused: Gauge,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CoordinatorMetrics {
    /// Registers every metric under the `arrayjob` prefix.
    pub fn new() -> CoordinatorMetrics {
        let mut registry = Registry::with_prefix("arrayjob");
        let tasks_done = Family::<StageLabel, Counter>::default();
        let bytes_moved = Counter::default();
        let workers_alive = Gauge::default();
        let workers_lost = Counter::default();
        let auth_refused = Gauge::default();
        registry.register("tasks_done", "Tasks finished, by stage", tasks_done.clone());
        registry.register(
            "bytes_moved",
            "Bytes workers fetched from each other",
            bytes_moved.clone(),
        );
        registry.register("workers_alive", "Workers alive", workers_alive.clone());
        registry.register(
            "workers_lost",
            "Workers declared lost",
            workers_lost.clone(),
        );
        registry.register(
            "auth_refused",
            "Requests refused for a missing or wrong job token",
            auth_refused.clone(),
        );
        CoordinatorMetrics {
            registry,
            tasks_done,
            bytes_moved,
            workers_alive,
            workers_lost,
            auth_refused,
        }
    }

    /// Counts a finished task of `stage`.
    pub fn task_done(&self, stage: &str) {
        self.tasks_done
            .get_or_create(&StageLabel {
                stage: stage.to_string(),
            })
            .inc();
    }

    /// The metrics in OpenMetrics text format.
    ///
    /// # Errors
    /// When encoding fails.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// A worker's metrics (`GET /metrics` on its data server).
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    /// Tasks it finished.
    pub tasks_done: Counter,
    /// Bytes it fetched from peers.
    pub bytes_fetched: Counter,
    /// Bytes it served to peers.
    pub bytes_served: Counter,
    /// Bytes resident in its store (set when scraped).
    pub resident_bytes: Gauge,
    /// Bytes it spilled to disk (set when scraped).
    pub spilled_bytes: Gauge,
    /// Requests refused for a missing or wrong token (set when scraped).
    pub auth_refused: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Registers every metric under the `arrayjob_worker` prefix.
    pub fn new() -> WorkerMetrics {
        let mut registry = Registry::with_prefix("arrayjob_worker");
        let m = WorkerMetrics {
            registry: Registry::default(),
            tasks_done: Counter::default(),
            bytes_fetched: Counter::default(),
            bytes_served: Counter::default(),
            resident_bytes: Gauge::default(),
            spilled_bytes: Gauge::default(),
            auth_refused: Gauge::default(),
        };
        registry.register("tasks_done", "Tasks finished", m.tasks_done.clone());
        registry.register(
            "bytes_fetched",
            "Bytes fetched from peers",
            m.bytes_fetched.clone(),
        );
        registry.register(
            "bytes_served",
            "Bytes served to peers",
            m.bytes_served.clone(),
        );
        registry.register(
            "resident_bytes",
            "Bytes resident in the chunk store",
            m.resident_bytes.clone(),
        );
        registry.register(
            "spilled_bytes",
            "Bytes spilled to local disk",
            m.spilled_bytes.clone(),
        );
        registry.register(
            "auth_refused",
            "Requests refused for a missing or wrong job token",
            m.auth_refused.clone(),
        );
        WorkerMetrics { registry, ..m }
    }

    /// The metrics in OpenMetrics text format.
    ///
    /// # Errors
    /// When encoding fails.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
