//! The coordinator's endpoints: `/v1/job`, `/v1/register`, `/v1/sync` (the workers' long poll and reports)
//! and `/v1/gather` (blocks of small outputs), signed with the job token; `/v1/progress` (signed, or the
//! token as a bearer); `/healthz` and `/metrics`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ledger::GatheredBlock;
use arrayjob_engine::schedule::WorkerId;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::error::CoordinatorError;
use super::routing::{route, take_report};
use super::state::{CoordShared, Gathered, WorkerInfo, progress_snapshot};
use crate::protocol::{self, RegisterRequest, RegisterResponse, SyncRequest, SyncResponse};

/// Largest block a worker may send the coordinator for a small output.
pub(super) const MAX_GATHERED_BYTES: usize = 1 << 30;

/// Serves the coordinator's endpoints on `listener` until the task is aborted.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<CoordShared>,
) -> Result<(), CoordinatorError> {
    let guard = shared.guard.clone();
    let signed = Router::new()
        .route("/v1/job", get(job_handler))
        .route("/v1/register", post(register_handler))
        .route("/v1/sync", post(sync_handler))
        .route("/v1/gather", post(gather_handler))
        // Gathered blocks are whole small results (a 2-D mean of a large stack is tens of MB).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_GATHERED_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            arrayjob_auth::require_signature,
        ))
        .with_state(shared.clone());
    // The progress is read-only: it also takes the token as a bearer, for `curl` on a trusted path
    // (docs/security.md); `arrayjob progress` and the operator sign.
    let progress = Router::new()
        .route("/v1/progress", get(progress_handler))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            arrayjob_auth::require_signature_or_bearer,
        ))
        .with_state(shared.clone());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_handler))
        .with_state(shared)
        .merge(signed)
        .merge(progress);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(CoordinatorError::Serve)
}

/// An address to dial for `bound`: itself, or loopback when it is every interface (`0.0.0.0`, `::`), which
/// nobody can dial.
pub(super) fn dialable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bound.port())
        }
        _ => bound,
    }
}

/// `GET /v1/job`: the job description.
pub(super) async fn job_handler(State(shared): State<Arc<CoordShared>>) -> Response {
    axum::Json(shared.desc.clone()).into_response()
}

/// `POST /v1/register`: a worker joins (refused with another plan hash, or once the job is over).
pub(super) async fn register_handler(
    State(shared): State<Arc<CoordShared>>,
    axum::Json(req): axum::Json<RegisterRequest>,
) -> Response {
    if req.plan_hash != shared.desc.plan_hash {
        shared.hash_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(address = %req.address, hash = %req.plan_hash, "refused a worker with another plan hash");
        return (
            StatusCode::CONFLICT,
            format!(
                "worker at {} (version {}) computed plan hash {}, but this job's plan hash is {}: it runs \
                 another engine version or sees other source data; it cannot take part",
                req.address, req.version, req.plan_hash, shared.desc.plan_hash
            ),
        )
            .into_response();
    }
    let now = shared.now();
    let mut g = shared.lock();
    if g.finished || g.failure.is_some() {
        return (StatusCode::GONE, "the job is over").into_response();
    }
    let id = WorkerId(g.next_id);
    g.next_id += 1;
    g.workers.insert(id, WorkerInfo::joining(&req, now));
    tracing::info!(worker = id.0, address = %req.address, cores = req.cores, "worker joined");
    let actions = g.sched.add_worker(id, req.cores.max(1), now);
    route(&shared, &mut g, actions);
    axum::Json(RegisterResponse { worker: id }).into_response()
}

/// `POST /v1/sync`: a worker's reports and heartbeat; waits for commands up to the asked time.
pub(super) async fn sync_handler(
    State(shared): State<Arc<CoordShared>>,
    axum::Json(req): axum::Json<SyncRequest>,
) -> Response {
    let had_reports = !req.reports.is_empty();
    let wait = Duration::from_millis(req.wait_ms.min(5_000));
    let wake = {
        let mut g = shared.lock();
        match g.workers.get_mut(&req.worker) {
            None => return (StatusCode::NOT_FOUND, "unknown worker").into_response(),
            Some(w) if w.lost => {
                return (
                    StatusCode::GONE,
                    format!(
                        "worker {} was declared lost; its tasks went elsewhere",
                        req.worker.0
                    ),
                )
                    .into_response();
            }
            Some(w) => {
                w.last_seen = Instant::now();
                w.stages = req.stages;
                w.load_end = req.load_end_seconds;
                w.store = req.store;
                w.resident = req.resident_bytes;
                w.s3 = req.s3;
            }
        }
        for r in req.reports {
            take_report(&shared, &mut g, req.worker, r);
        }
        let over = g.finished || g.failure.is_some();
        match g.workers.get_mut(&req.worker) {
            Some(w) if req.take_commands && w.mailbox.is_empty() && !had_reports && !over => {
                Some(w.wake.clone())
            }
            _ => None,
        }
    };
    if let Some(wake) = wake {
        let _ = tokio::time::timeout(wait, wake.notified()).await;
    }
    let mut g = shared.lock();
    let finished = g.finished || g.failure.is_some();
    let commands = g
        .workers
        .get_mut(&req.worker)
        .map(|w| {
            w.last_seen = Instant::now();
            if req.take_commands {
                std::mem::take(&mut w.mailbox)
            } else {
                Vec::new()
            }
        })
        .unwrap_or_default();
    axum::Json(SyncResponse { commands, finished }).into_response()
}

/// Where a gathered block goes: its node, its start (`1,0,0`) and, for a plotted pixel, which.
#[derive(serde::Deserialize)]
pub(super) struct GatherQuery {
    pub(super) node: usize,
    pub(super) start: String,
    pub(super) pixel: Option<usize>,
}

/// `POST /v1/gather`: a block of a small output (kept in the ledger first on a resumable run).
pub(super) async fn gather_handler(
    State(shared): State<Arc<CoordShared>>,
    Query(q): Query<GatherQuery>,
    body: Bytes,
) -> Response {
    let start = match protocol::parse_index(&q.start) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if q.node >= shared.plan.nodes.len() {
        return (StatusCode::BAD_REQUEST, format!("no node {}", q.node)).into_response();
    }
    // A resumable run keeps the block before acknowledging it: the task reported done after this has its
    // small outputs in the ledger.
    if let Some(ledger) = shared.ledger.clone() {
        let block = GatheredBlock {
            node: q.node,
            start: start.clone(),
            pixel: q.pixel,
            frame: body.clone(),
        };
        let stored = tokio::task::spawn_blocking(move || ledger.put_gathered(&block)).await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
    let sent = shared
        .gather
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Gathered {
            node: q.node,
            start,
            pixel: q.pixel,
            frame: body,
        });
    match sent {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => (StatusCode::GONE, "the job is over").into_response(),
    }
}

/// `GET /v1/progress`: the progress snapshot.
pub(super) async fn progress_handler(State(shared): State<Arc<CoordShared>>) -> Response {
    axum::Json(progress_snapshot(&shared)).into_response()
}

/// `GET /metrics`: the coordinator's Prometheus metrics.
pub(super) async fn metrics_handler(State(shared): State<Arc<CoordShared>>) -> Response {
    shared
        .metrics
        .auth_refused
        .set(shared.guard.refused().load(Ordering::Relaxed) as i64);
    crate::metrics::openmetrics_response(shared.metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_workers_dial_loopback_when_the_coordinator_listens_everywhere() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert_eq!(dialable(at("0.0.0.0:7070")), at("127.0.0.1:7070"));
        assert_eq!(dialable(at("[::]:7070")), at("[::1]:7070"));
        assert_eq!(dialable(at("10.1.2.3:7070")), at("10.1.2.3:7070"));
    }
}
