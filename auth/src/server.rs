//! The server side: axum middleware that lets through only requests signed with the job's token, then proves
//! its answer. Refusals are answered 401 (503 when the replay cache is full), counted exactly, and logged at
//! most once per period per reason ([`super::refusals`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::refusals::{REFUSAL_LOG_PERIOD, Refusal, RefusalLog};
use super::replay::ReplayCache;
use super::signature::{self, Credentials, Nonce, PROOF_HEADER, RequestLine, WINDOW};
use super::token::Token;

/// What the authentication middleware needs: the token, the nonces seen, where refusals are counted and
/// logged, and (for a worker) the address its requests must be signed for.
#[derive(Debug, Clone)]
pub struct Guard {
    token: Token,
    refused: Arc<AtomicU64>,
    replay: Arc<ReplayCache>,
    log: Arc<RefusalLog>,
    host: Option<Arc<str>>,
}

/// A refusal, with what the refused client is told, and the request's nonce when its signature verified (the
/// answer is then proven, so the client can trust what it says).
struct Refused {
    why: Refusal,
    detail: String,
    proven: Option<Nonce>,
}

impl Refused {
    fn new(why: Refusal) -> Refused {
        Refused {
            why,
            detail: String::new(),
            proven: None,
        }
    }
}

impl Guard {
    /// A guard for `token`'s job, counting refusals from zero.
    pub fn new(token: Token) -> Guard {
        Guard {
            token,
            refused: Arc::new(AtomicU64::new(0)),
            replay: Arc::new(ReplayCache::default()),
            log: Arc::new(RefusalLog::new(REFUSAL_LOG_PERIOD)),
            host: None,
        }
    }

    /// Takes only requests signed for `host` (`host:port`, this server's advertised address): a request
    /// signed for another server of the job is not replayed here.
    #[must_use]
    pub fn addressed_as(mut self, host: &str) -> Guard {
        self.host = Some(host.into());
        self
    }

    /// Logs each reason of refusal at most once per `period` (default [`REFUSAL_LOG_PERIOD`]).
    #[must_use]
    pub fn log_period(mut self, period: Duration) -> Guard {
        self.log = Arc::new(RefusalLog::new(period));
        self
    }

    /// The count of refused requests.
    pub fn refused(&self) -> &Arc<AtomicU64> {
        &self.refused
    }

    /// Checks a request's signature, clock, host and nonce; returns its nonce.
    fn check(&self, req: &Request) -> Result<Nonce, Refused> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Err(Refused::new(Refusal::Unsigned));
        };
        if value.as_bytes().starts_with(b"Bearer ") {
            return Err(Refused::new(Refusal::BearerNotTaken));
        }
        let Some(c) = Credentials::parse(value.as_bytes()) else {
            return Err(Refused::new(Refusal::Malformed));
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path(), |p| p.as_str());
        let line = RequestLine {
            method: req.method().as_str(),
            host,
            target,
        };
        if !c.signs(&self.token, &line) {
            return Err(Refused::new(Refusal::BadSignature));
        }
        let refused = |why, detail| Refused {
            why,
            detail,
            proven: Some(*c.nonce()),
        };
        let skew_ms = i128::from(signature::now_ms()) - i128::from(c.ts_ms());
        if skew_ms.unsigned_abs() > WINDOW.as_millis() {
            let side = if skew_ms > 0 { "behind" } else { "ahead of" };
            return Err(refused(
                Refusal::Stale,
                format!(
                    "signed {:.1} s {side} this server's clock (at most {} s either way): check both hosts' \
                     clocks (NTP)",
                    skew_ms.unsigned_abs() as f64 / 1000.0,
                    WINDOW.as_secs()
                ),
            ));
        }
        if let Some(me) = &self.host
            && !me.eq_ignore_ascii_case(host)
        {
            return Err(refused(
                Refusal::WrongHost,
                format!("signed for {host}, but this server is {me}"),
            ));
        }
        self.replay
            .admit(c.nonce(), Instant::now())
            .map_err(|why| refused(why, String::new()))?;
        Ok(*c.nonce())
    }

    /// Adds the proof of `resp` to the request with `nonce`.
    fn prove(&self, resp: &mut Response, nonce: &Nonce) {
        let proof = signature::prove_answer(&self.token, nonce, resp.status().as_u16());
        if let Ok(v) = HeaderValue::try_from(proof) {
            resp.headers_mut().insert(PROOF_HEADER, v);
        }
    }

    /// Counts the refusal, logs it unless a line for its reason was written within the period, and answers.
    fn refuse(&self, r: Refused, req: &Request) -> Response {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(unwritten) = self.log.note(r.why, Instant::now()) {
            let peer = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.to_string())
                .unwrap_or_default();
            tracing::warn!(
                reason = r.why.name(),
                path = %req.uri().path(),
                %peer,
                unwritten,
                "refused a request ({}); {unwritten} earlier refusal(s) for this reason were counted but not logged",
                r.why.name()
            );
        }
        let status = match r.why {
            Refusal::TooManyNonces => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        let mut resp = (status, answer_text(&r)).into_response();
        if let Some(nonce) = r.proven {
            self.prove(&mut resp, &nonce);
        }
        resp
    }
}

/// What a refused client is told.
fn answer_text(r: &Refused) -> String {
    let text = match r.why {
        Refusal::Unsigned | Refusal::Malformed => {
            "this server takes only requests signed with the job token \
             (Authorization: ArrayJob-HMAC-SHA256 ts=..,nonce=..,sig=..; see docs/security.md)"
        }
        Refusal::BadSignature => "the request's signature is not made with this job's token",
        Refusal::Stale => "the request's timestamp is too far from this server's clock",
        Refusal::WrongHost => "the request was signed for another server",
        Refusal::Replayed => "this request was already received: a replay is refused",
        Refusal::TooManyNonces => {
            "too many signed requests within the replay window to remember them all: try again"
        }
        Refusal::BearerNotTaken => {
            "this endpoint takes only requests signed with the job token, never the job token itself \
             (see docs/security.md)"
        }
        Refusal::WrongBearer => "missing or wrong job token (Authorization: Bearer <token>)",
    };
    if r.detail.is_empty() {
        text.to_owned()
    } else {
        format!("{text}: {}", r.detail)
    }
}

/// Lets through only requests signed with the job's token (fresh, for this server, not seen before), and
/// proves the answer (a `101` included: the frames after it are then trusted).
pub async fn require_signature(State(g): State<Guard>, req: Request, next: Next) -> Response {
    match g.check(&req) {
        Ok(nonce) => {
            let mut resp = next.run(req).await;
            g.prove(&mut resp, &nonce);
            resp
        }
        Err(r) => g.refuse(r, &req),
    }
}

/// As [`require_signature`], and also takes `Authorization: Bearer <job token>` (its answer then carries no
/// proof: the client did not ask for one). Only for the coordinator's read-only progress endpoint, for humans
/// with `curl` on a path they trust (docs/security.md).
pub async fn require_signature_or_bearer(
    State(g): State<Guard>,
    req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .filter(|v| v.starts_with(b"Bearer "));
    match bearer {
        Some(b) if g.token.accepts_bearer(b) => next.run(req).await,
        Some(_) => g.refuse(Refused::new(Refusal::WrongBearer), &req),
        None => require_signature(State(g), req, next).await,
    }
}
