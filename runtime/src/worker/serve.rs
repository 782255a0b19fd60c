//! The data server every worker runs, and its client: peers fetch keys (`POST /v1/fetch`, the frames on the
//! upgraded connection or as the body), a probe times a link (`GET /v1/probe`), `/healthz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrayjob_auth::{Guard, Token};
use arrayjob_engine::data::{Data, DataKey};
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::{ChunkStore, StoreError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::error::FetchError;
use crate::metrics::WorkerMetrics;
use crate::protocol::{self, FetchRequest};

/// What the data server serves: one worker's store, and its metrics.
#[derive(Debug, Clone)]
pub struct DataServer {
    /// Whose store.
    pub worker: WorkerId,
    /// The store.
    pub store: Arc<ChunkStore>,
    /// The worker's metrics.
    pub metrics: Arc<WorkerMetrics>,
    /// Requests refused by the signature check.
    pub refused: Arc<AtomicU64>,
    /// Where keys found damaged while serving them go (the worker reports them to be rebuilt).
    pub damaged: Option<tokio::sync::mpsc::UnboundedSender<DataKey>>,
}

/// Serves `data` on `listener`: peers fetch keys (`POST /v1/fetch`), a probe times the link
/// (`GET /v1/probe`), `/healthz` says the worker is up and `/metrics` gives its counters. Every other request
/// must be signed with the job token ([`crate::auth`]).
///
/// # Errors
/// When the listener fails.
pub async fn serve_data(
    listener: tokio::net::TcpListener,
    data: DataServer,
    guard: Guard,
) -> std::io::Result<()> {
    let authed = Router::new()
        .route("/v1/fetch", post(fetch_handler))
        .route("/v1/probe", get(probe_handler))
        .with_state(data.clone())
        .layer(axum::middleware::from_fn_with_state(
            guard,
            arrayjob_auth::require_signature,
        ));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_handler))
        .with_state(data)
        .merge(authed);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

pub(super) async fn metrics_handler(State(data): State<DataServer>) -> Response {
    let m = &data.metrics;
    m.resident_bytes.set(data.store.resident_bytes() as i64);
    m.spilled_bytes.set(data.store.stats().spilled_bytes as i64);
    m.auth_refused
        .set(data.refused.load(Ordering::Relaxed) as i64);
    crate::metrics::openmetrics_response(m.encode())
}

pub(super) async fn fetch_handler(
    State(data): State<DataServer>,
    mut request: axum::extract::Request,
) -> Response {
    // A fetch asking for the frames protocol gets them on the bare connection once the answer is sent.
    let upgrade = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| {
            v.as_bytes()
                .eq_ignore_ascii_case(protocol::FRAMES_PROTOCOL.as_bytes())
        })
        .then(|| {
            request
                .extensions_mut()
                .remove::<hyper::upgrade::OnUpgrade>()
        })
        .flatten();
    let req = match axum::Json::<FetchRequest>::from_request(request, &()).await {
        Ok(axum::Json(req)) => req,
        Err(rejection) => return rejection.into_response(),
    };
    let mut found = Vec::with_capacity(req.keys.len());
    for key in &req.keys {
        match data.store.get(*key) {
            Ok(d) => found.push(d),
            Err(e) => {
                if let (StoreError::Damaged { .. }, Some(tx)) = (&e, &data.damaged) {
                    let _ = tx.send(*key);
                }
                return (
                    StatusCode::NOT_FOUND,
                    format!("worker {} cannot serve {key}: {e}", data.worker.0),
                )
                    .into_response();
            }
        }
    }
    if let Some(upgrade) = upgrade {
        tokio::spawn(async move {
            let sent = match upgrade.await {
                Ok(io) => protocol::write_frames(hyper_util::rt::TokioIo::new(io), &found).await,
                Err(e) => Err(std::io::Error::other(e)),
            };
            match sent {
                Ok(bytes) => {
                    data.metrics.bytes_served.inc_by(bytes);
                }
                Err(e) => tracing::info!("sending {} key(s) to a peer: {e}", found.len()),
            }
        });
        return (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (axum::http::header::CONNECTION, "upgrade"),
                (axum::http::header::UPGRADE, protocol::FRAMES_PROTOCOL),
            ],
        )
            .into_response();
    }
    // The elements go out from the store's own buffers (no copy): a stream of header, payload and checksum
    // per key, each preceded by the frame's length.
    let parts: Vec<Bytes> = found.iter().flat_map(protocol::answer_parts).collect();
    let sent: usize = parts.iter().map(Bytes::len).sum();
    data.metrics.bytes_served.inc_by(sent as u64);
    let stream = futures::stream::iter(parts.into_iter().map(Ok::<_, std::convert::Infallible>));
    axum::body::Body::from_stream(stream).into_response()
}

#[derive(serde::Deserialize)]
pub(super) struct ProbeQuery {
    pub(super) bytes: u64,
}

pub(super) async fn probe_handler(Query(q): Query<ProbeQuery>) -> Response {
    let n = q.bytes.min(64 << 20) as usize;
    vec![0u8; n].into_response()
}

/// Fetches `keys` from the data server at `address` in one request and decodes their frames, in order. The
/// request is signed for `address`, and nothing of the answer is read unless the peer proves it holds the
/// job's token.
///
/// # Errors
/// When the peer cannot be reached, does not prove it holds the token, does not hold a key, or answers bytes
/// that are not the keys' frames.
pub async fn fetch_keys(
    client: &reqwest::Client,
    token: &Token,
    address: &str,
    keys: &[DataKey],
) -> Result<(Vec<Data>, u64), FetchError> {
    let request = client
        .post(format!("http://{address}/v1/fetch"))
        .header(reqwest::header::CONNECTION, "upgrade")
        .header(reqwest::header::UPGRADE, protocol::FRAMES_PROTOCOL)
        .json(&FetchRequest {
            keys: keys.to_vec(),
        });
    let r = arrayjob_auth::send(request, token).await?;
    let status = r.status();
    if status == reqwest::StatusCode::SWITCHING_PROTOCOLS {
        // The frames on the bare connection (used once), each chunk's elements read straight into it: the
        // buffer only gathers headers and small frames (larger reads bypass it).
        let io = r.upgrade().await.map_err(FetchError::Read)?;
        let mut io = tokio::io::BufReader::with_capacity(64 << 10, io);
        return Ok(protocol::read_frames(&mut io, keys.len()).await?);
    }
    if !status.is_success() {
        return Err(FetchError::Refused {
            status,
            message: r.text().await.unwrap_or_default(),
        });
    }
    // A server that ignored the upgrade: the frames are the body (no more than asked for).
    let mut reader = protocol::FrameReader::expecting(keys.len());
    let mut bytes = 0u64;
    let mut r = r;
    while let Some(piece) = r.chunk().await.map_err(FetchError::Read)? {
        bytes += piece.len() as u64;
        reader.push(&piece)?;
    }
    let data = reader.finish()?;
    if data.len() != keys.len() {
        return Err(FetchError::Count {
            frames: data.len(),
            keys: keys.len(),
        });
    }
    Ok((data, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrayjob_engine::array::Chunk;
    use arrayjob_engine::store::FileSpill;

    #[test]
    fn peers_get_frames_on_an_upgraded_connection_or_as_a_body() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Arc::new(ChunkStore::new(
            usize::MAX,
            Box::new(FileSpill::new(tmp.path()).expect("spill")),
        ));
        let key = |group| DataKey::Piece {
            node: 1,
            group,
            part: 0,
        };
        let values: Vec<Data> = (0..3)
            .map(|i| {
                Data::Chunk(Chunk::F32(ndarray::ArrayD::from_shape_fn(
                    ndarray::IxDyn(&[100 + i, 1000]),
                    |ix| (ix[0] * 1000 + ix[1] + i) as f32,
                )))
            })
            .collect();
        for (i, d) in values.iter().enumerate() {
            store.put(key(i), d.clone(), usize::MAX).expect("put");
        }
        let token = Token::generate().expect("token");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("listen");
        let address = listener.local_addr().expect("address").to_string();
        let guard = Guard::new(token.clone()).addressed_as(&address);
        let data = DataServer {
            worker: WorkerId(0),
            store,
            metrics: Arc::new(WorkerMetrics::new()),
            refused: guard.refused().clone(),
            damaged: None,
        };
        rt.spawn(serve_data(listener, data, guard.clone()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let keys = [key(2), key(0), key(1)];
        let (got, bytes) = rt
            .block_on(fetch_keys(&client, &token, &address, &keys))
            .expect("fetch");
        assert_eq!(
            got,
            vec![values[2].clone(), values[0].clone(), values[1].clone()]
        );
        // A client that does not ask for the upgrade gets the same frames as the body (proven too).
        let body = rt.block_on(async {
            let r = arrayjob_auth::send(
                client
                    .post(format!("http://{address}/v1/fetch"))
                    .json(&FetchRequest {
                        keys: keys.to_vec(),
                    }),
                &token,
            )
            .await
            .expect("post");
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.expect("body")
        });
        assert_eq!(body.len() as u64, bytes);
        let mut reader = protocol::FrameReader::default();
        reader.push(&body).expect("frames");
        assert_eq!(reader.finish().expect("finish"), got);
        // A key it does not hold: the (proven) refusal says which.
        let err = rt
            .block_on(fetch_keys(&client, &token, &address, &[key(7)]))
            .expect_err("missing");
        let err = err.to_string();
        assert!(
            err.contains("404") && err.contains("worker 0 cannot serve"),
            "{err}"
        );
        assert_eq!(guard.refused().load(Ordering::Relaxed), 0);
    }
}
