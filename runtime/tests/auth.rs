//! Authentication between a job's processes, over real loopback connections: a worker's data server refuses
//! peers without the job token (and counts them); a worker reads nothing from a server that cannot prove the
//! token (a fake server records what it was sent); replayed, stale, tampered and misaddressed requests are
//! refused; a flood of bad requests is counted exactly and logged a bounded number of times.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrayjob_auth::client::{is_proven, sign};
use arrayjob_auth::signature::{Credentials, RequestLine, fresh_nonce, now_ms};
use arrayjob_auth::{Guard, Token};
use arrayjob_engine::array::Chunk;
use arrayjob_engine::data::{Data, DataKey};
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::{ChunkStore, FileSpill};
use arrayjob_runtime::metrics::WorkerMetrics;
use arrayjob_runtime::protocol;
use arrayjob_runtime::worker::{DataServer, fetch_keys, serve_data};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn key(group: usize) -> DataKey {
    DataKey::Piece {
        node: 1,
        group,
        part: 0,
    }
}

fn value() -> Data {
    Data::Chunk(Chunk::F32(ndarray::ArrayD::from_shape_fn(
        ndarray::IxDyn(&[50, 40]),
        |ix| (ix[0] * 40 + ix[1]) as f32,
    )))
}

/// A worker's data server holding `value()` as `key(0)`, on `ip`, for `token`'s job: its address and guard.
async fn worker(ip: &str, token: &Token, spill: &std::path::Path) -> (String, Guard) {
    let store = Arc::new(ChunkStore::new(
        usize::MAX,
        Box::new(FileSpill::new(spill).expect("spill")),
    ));
    store.put(key(0), value(), usize::MAX).expect("put");
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
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
    tokio::spawn(serve_data(listener, data, guard.clone()));
    (address, guard)
}

/// Writes `request` on a new connection to `address` and returns the whole answer (the server closes).
async fn raw(address: &str, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    s.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the head and a short body arrive (the server keeps the connection open).
    loop {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .map_or(0, |r| r.expect("read"));
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if n == 0
            || text
                .split_once("\r\n\r\n")
                .is_some_and(|(head, body)| body.len() >= content_length(head))
        {
            return text.into_owned();
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// One test at a time: `tracing` caches per call site whether anyone listens, and a refusal logged by
/// another test's thread (with no subscriber) while the flood test's scoped subscriber is set can leave that
/// cache saying no one does.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_worker_refuses_peers_without_the_token_and_counts_them() {
    let _serial = serial();
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tmp");
    let token = Token::generate().expect("token");
    rt.block_on(async {
        let (address, guard) = worker("127.0.0.2", &token, tmp.path()).await;
        let http = client();
        let url = format!("http://{address}/v1/fetch");
        let body = serde_json::json!({"keys": [key(0)]});
        // The job's own request goes through (the control).
        let (got, _) = fetch_keys(&http, &token, &address, &[key(0)])
            .await
            .expect("the job's peer");
        assert_eq!(got, vec![value()]);
        // No signature; the job token itself as a bearer (only the coordinator's progress takes it).
        let unsigned = http.post(&url).json(&body).send().await.expect("send");
        assert_eq!(unsigned.status(), 401);
        assert!(
            unsigned
                .text()
                .await
                .expect("text")
                .contains("takes only requests signed with the job token")
        );
        let bearer = http
            .post(&url)
            .header("authorization", format!("Bearer {}", token.expose()))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(bearer.status(), 401);
        assert!(
            bearer
                .text()
                .await
                .expect("text")
                .contains("never the job token itself")
        );
        // Signed with another job's token: refused, and the refusal proves nothing to that peer.
        let other = Token::generate().expect("token");
        let err = fetch_keys(&http, &other, &address, &[key(0)])
            .await
            .expect_err("another job")
            .to_string();
        assert!(
            err.contains("answered 401 Unauthorized without proving it holds the job token"),
            "{err}"
        );
        assert_eq!(guard.refused().load(Ordering::Relaxed), 3);
        let metrics = http
            .get(format!("http://{address}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("arrayjob_worker_auth_refused 3"),
            "{metrics}"
        );
    });
}

/// A server that holds no token: it records the first request it gets and answers `answer` (valid frames of
/// `value()`, which a worker would take if it did not check the proof), then holds the connection.
async fn fake_server(answer: Vec<u8>) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.3:0")
        .await
        .expect("listen");
    let address = listener.local_addr().expect("address").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).into_owned();
            if n == 0
                || text
                    .split_once("\r\n\r\n")
                    .is_some_and(|(head, body)| body.len() >= content_length(head))
            {
                break;
            }
        }
        *record.lock().expect("lock") = request;
        s.write_all(&answer).await.expect("answer");
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    (address, seen)
}

#[test]
fn a_worker_reads_nothing_from_a_server_that_cannot_prove_the_token() {
    let _serial = serial();
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("tmp");
    let token = Token::generate().expect("token");
    let frames: Vec<u8> = protocol::answer_parts(&Arc::new(value())).concat();
    let upgraded = [
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: arrayjob-frames\r\n\r\n".as_slice(),
        &frames,
    ]
    .concat();
    let body = [
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            frames.len()
        )
        .as_bytes(),
        &frames,
    ]
    .concat();
    // A proof header, but not one made with the token.
    let forged = [
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: arrayjob-frames\r\nx-arrayjob-proof: {}\r\n\r\n",
            "0".repeat(64)
        )
        .as_bytes(),
        &frames,
    ]
    .concat();
    rt.block_on(async {
        let (real, real_guard) = worker("127.0.0.2", &token, tmp.path()).await;
        for (answer, status) in [
            (upgraded, "101 Switching Protocols"),
            (body, "200 OK"),
            (forged, "101 Switching Protocols"),
        ] {
            let (address, seen) = fake_server(answer).await;
            let err = fetch_keys(&client(), &token, &address, &[key(0)])
                .await
                .expect_err("an unproven answer").to_string();
            assert!(
                err.contains(&format!(
                    "http://{address}/v1/fetch answered {status} without proving it holds the job token"
                )) && err.contains("nothing of its answer was read"),
                "{err}"
            );
            let request = seen.lock().expect("lock").clone();
            let text = String::from_utf8_lossy(&request).into_owned();
            // The token never went out; the signature is bound to the fake's address, path, time and nonce.
            assert!(!text.contains(token.expose()), "{text}");
            assert!(
                text.contains("authorization: ArrayJob-HMAC-SHA256 ts="),
                "{text}"
            );
            assert!(text.contains(&format!("host: {address}\r\n")), "{text}");
            // What the fake got is worth nothing elsewhere: the real worker refuses it (signed for another
            // server), and counts it.
            let before = real_guard.refused().load(Ordering::Relaxed);
            let answer = raw(&real, &request).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
            assert!(
                answer.contains(&format!("signed for {address}, but this server is {real}")),
                "{answer}"
            );
            assert_eq!(real_guard.refused().load(Ordering::Relaxed), before + 1);
        }
    });
}

/// A coordinator-like server (no address of its own to check) with one signed endpoint: its address and
/// guard.
async fn signed_server(guard: Guard) -> String {
    let app = axum::Router::new()
        .route("/v1/thing", axum::routing::get(|| async { "the answer" }))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            arrayjob_auth::require_signature,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[test]
fn replayed_stale_and_tampered_requests_are_refused() {
    let _serial = serial();
    let rt = runtime();
    let token = Token::generate().expect("token");
    let guard = Guard::new(token.clone());
    rt.block_on(async {
        let address = signed_server(guard.clone()).await;
        let http = client();
        let url = format!("http://{address}/v1/thing");
        let mut first = http.get(&url).build().expect("request");
        let nonce = sign(&mut first, &token).expect("sign");
        let replay = first.try_clone().expect("clone");
        let answer = http.execute(first).await.expect("send");
        assert_eq!(answer.status(), 200);
        assert!(is_proven(&answer, &token, &nonce));
        assert_eq!(answer.text().await.expect("text"), "the answer");
        // The same request again.
        let again = http.execute(replay).await.expect("send");
        assert_eq!(again.status(), 401);
        assert!(
            again
                .text()
                .await
                .expect("text")
                .contains("was already received: a replay is refused")
        );
        // Signed 31 s ago, or 31 s ahead: told why (a proven answer, the signature being good).
        for (skew, side) in [(-31_000i64, "behind"), (31_000, "ahead of")] {
            let line = RequestLine {
                method: "GET",
                host: &address,
                target: "/v1/thing",
            };
            let ts = now_ms().saturating_add_signed(skew);
            let nonce = fresh_nonce().expect("nonce");
            let c = Credentials::sign(&token, &line, ts, nonce);
            let answer = http
                .get(&url)
                .header("authorization", c.header())
                .send()
                .await
                .expect("send");
            assert_eq!(answer.status(), 401);
            assert!(is_proven(&answer, &token, &nonce));
            let text = answer.text().await.expect("text");
            assert!(
                text.contains(&format!(
                    "s {side} this server's clock (at most 30 s either way)"
                )),
                "{text}"
            );
        }
        // Signed for one path, sent to another.
        let mut moved = http.get(&url).build().expect("request");
        sign(&mut moved, &token).expect("sign");
        *moved.url_mut() = format!("{url}?bytes=1").parse().expect("url");
        let answer = http.execute(moved).await.expect("send");
        assert_eq!(answer.status(), 401);
        assert!(
            answer
                .text()
                .await
                .expect("text")
                .contains("signature is not made with this job's token")
        );
        assert_eq!(guard.refused().load(Ordering::Relaxed), 4);
    });
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_flood_of_bad_requests_is_counted_exactly_and_logged_a_bounded_number_of_times() {
    let _serial = serial();
    // One thread: the server's handlers run where the capturing subscriber is the default (on a
    // multi-threaded runtime they ran on its workers, and their lines went elsewhere now and then).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let token = Token::generate().expect("token");
    let other = Token::generate().expect("token");
    // One line per reason per hour: the flood below takes seconds, so exactly one line per reason.
    let guard = Guard::new(token.clone()).log_period(Duration::from_secs(3600));
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::callsite::rebuild_interest_cache();
        rt.block_on(async {
            let address = signed_server(guard.clone()).await;
            let http = client();
            let url = format!("http://{address}/v1/thing");
            for i in 0..10_000 {
                // Half without a signature, half signed with another job's token.
                let request = if i % 2 == 0 {
                    http.get(&url).build().expect("request")
                } else {
                    let mut r = http.get(&url).build().expect("request");
                    sign(&mut r, &other).expect("sign");
                    r
                };
                let answer = http.execute(request).await.expect("send");
                assert_eq!(answer.status(), 401);
            }
        });
    });
    assert_eq!(guard.refused().load(Ordering::Relaxed), 10_000);
    let text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("refused a request (unsigned)"),
        "{text}"
    );
    assert!(
        lines[1].contains("refused a request (bad signature)")
            && lines[1].contains("path=/v1/thing"),
        "{text}"
    );
}
