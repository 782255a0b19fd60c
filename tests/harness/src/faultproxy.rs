//! A proxy in front of an S3 server that picks kill points from a run's own requests: it forwards every
//! request unchanged (SigV4 signs the `Host` header, which is kept, so the server accepts them), records each
//! one (method, bucket, key, query, the source of a copy, the keys of a multi-object delete), and when an armed
//! trigger matches for the n-th time it runs the trigger's action (typically SIGKILL to the run's process group)
//! before that request reaches the server. So a test can kill a run right before "the 3rd CopyObject of the
//! publish" or "the journal's PutObject" rather than after a guessed delay.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// One request the proxy saw, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    /// Position in the log, from 0.
    pub seq: usize,
    /// HTTP method.
    pub method: String,
    /// Bucket (path-style requests).
    pub bucket: String,
    /// Object key, decoded; empty for bucket requests.
    pub key: String,
    /// The query string.
    pub query: String,
    /// `x-amz-copy-source`, decoded, for a CopyObject.
    pub copy_source: Option<String>,
    /// The keys of a DeleteObjects.
    pub deleted: Vec<String>,
}

impl S3Request {
    /// The S3 operation, as far as the tests need it.
    pub fn op(&self) -> &'static str {
        let q = &self.query;
        match self.method.as_str() {
            "GET" if self.key.is_empty() && q.contains("list-type=2") => "ListObjectsV2",
            "GET" => "GetObject",
            "HEAD" => "HeadObject",
            "PUT" if self.copy_source.is_some() => "CopyObject",
            "PUT" if q.contains("partNumber") => "UploadPart",
            "PUT" => "PutObject",
            "POST" if q.contains("delete") => "DeleteObjects",
            "POST" if q.contains("uploads") => "CreateMultipartUpload",
            "POST" if q.contains("uploadId") => "CompleteMultipartUpload",
            "DELETE" => "DeleteObject",
            _ => "Other",
        }
    }

    /// Whether the request writes or deletes `key` exactly (a put, a copy to it, a delete naming it).
    pub fn changes(&self, key: &str) -> bool {
        let writes = matches!(self.op(), "PutObject" | "CopyObject" | "DeleteObject");
        (writes && self.key == key) || self.deleted.iter().any(|k| k == key)
    }
}

/// What a fired trigger does with the request that fired it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFault {
    /// Forward it to the server as if nothing happened.
    Forward,
    /// Drop it: the client gets a closed connection (it was killed anyway).
    Drop,
}

type Matcher = Box<dyn Fn(&S3Request) -> bool + Send>;
type Action = Box<dyn FnOnce(&S3Request) -> AfterFault + Send>;

struct Trigger {
    matches: Matcher,
    nth: usize,
    seen: usize,
    action: Option<Action>,
}

#[derive(Default)]
struct State {
    log: Vec<S3Request>,
    trigger: Option<Trigger>,
    fired: Option<S3Request>,
}

/// The proxy: listens on a free loopback port until dropped.
pub struct FaultProxy {
    endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy to the S3 server at `upstream` (`host:port`).
    ///
    /// # Errors
    /// When no port can be bound.
    pub fn start(upstream: &str) -> Result<FaultProxy> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("upstream {upstream}"))?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the proxy")?;
        std_listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", std_listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(serve(std_listener, upstream, st, stopped));
        });
        Ok(FaultProxy {
            endpoint,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:port`, for `spec.storage.s3.endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Arms a trigger (replacing any other): on the `nth` request (from 1) for which `matches` holds, `action`
    /// runs before the request goes on, and says whether it does.
    pub fn arm(
        &self,
        matches: impl Fn(&S3Request) -> bool + Send + 'static,
        nth: usize,
        action: impl FnOnce(&S3Request) -> AfterFault + Send + 'static,
    ) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.trigger = Some(Trigger {
            matches: Box::new(matches),
            nth: nth.max(1),
            seen: 0,
            action: Some(Box::new(action)),
        });
        s.fired = None;
    }

    /// Removes the trigger, fired or not.
    pub fn disarm(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).trigger = None;
    }

    /// The request that fired the trigger, if it fired.
    pub fn fired(&self) -> Option<S3Request> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fired
            .clone()
    }

    /// The requests seen since the last call, in order.
    pub fn take_log(&self) -> Vec<S3Request> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).log)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let conn = tokio::select! {
            _ = &mut stopped => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| forward(req, upstream, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Records `req`, runs the trigger if it fires, and forwards the request to `upstream`.
async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
) -> Result<Response<Body>, hyper::Error> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let seen = describe(&parts, &body);
    let action = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = seen.clone();
        seen.seq = s.log.len();
        s.log.push(seen.clone());
        let mut action = None;
        if let Some(t) = s.trigger.as_mut()
            && (t.matches)(&seen)
        {
            t.seen += 1;
            if t.seen == t.nth {
                action = t.action.take().map(|a| (a, seen.clone()));
            }
        }
        if let Some((_, r)) = &action {
            s.fired = Some(r.clone());
        }
        action
    };
    if let Some((action, r)) = action
        && action(&r) == AfterFault::Drop
    {
        return Ok(Response::builder()
            .status(503)
            .header("connection", "close")
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .unwrap_or_default());
    }
    for h in ["transfer-encoding", "connection", "keep-alive"] {
        parts.headers.remove(h);
    }
    parts
        .headers
        .insert(hyper::header::CONTENT_LENGTH, body.len().into());
    let Ok(stream) = tokio::net::TcpStream::connect(upstream).await else {
        return Ok(Response::builder()
            .status(502)
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .unwrap_or_default());
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let answer = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    Ok(answer.map(BodyExt::boxed))
}

/// What the tests need to know of a request.
fn describe(parts: &hyper::http::request::Parts, body: &[u8]) -> S3Request {
    let path = percent_decode(parts.uri.path());
    let path = path.trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let copy_source = parts
        .headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode);
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let deleted = if parts.method == hyper::Method::POST && query.contains("delete") {
        xml_keys(&String::from_utf8_lossy(body))
    } else {
        Vec::new()
    };
    S3Request {
        seq: 0,
        method: parts.method.to_string(),
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        query,
        copy_source,
        deleted,
    }
}

/// `%XX` sequences decoded (keys are UTF-8).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `<Key>` values of a DeleteObjects body.
fn xml_keys(xml: &str) -> Vec<String> {
    xml.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k))
        .map(|k| {
            k.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_deletes_are_decoded() {
        assert_eq!(percent_decode("/b/a%20b/c%2Fd"), "/b/a b/c/d");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(
            xml_keys(
                "<Delete><Object><Key>a&amp;b</Key></Object><Object><Key>c</Key></Object></Delete>"
            ),
            ["a&b", "c"]
        );
    }
}
