//! The client side: every request of the runtime (and of the operator, and `arrayjob progress`) is signed and
//! sent by [`send`], which hands back the answer only once the server proved it holds the job's token: no byte
//! of an unproven answer (body, upgraded connection) is read.

use reqwest::header::{AUTHORIZATION, HOST, HeaderValue};

use super::signature::{self, Credentials, Nonce, PROOF_HEADER, RequestLine};
use super::token::Token;

/// Why a signed request got no trusted answer.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request could not be built (a bad URL or body).
    #[error("cannot build the request: {0}")]
    Build(#[source] reqwest::Error),
    /// The URL names no host (or one that cannot go in a header) to sign the request for.
    #[error("{url}: no host to sign the request for")]
    Unsignable {
        /// The URL.
        url: String,
    },
    /// No randomness for the nonce.
    #[error("no randomness for a request nonce: {0}")]
    Nonce(String),
    /// The request could not be sent, or no answer came.
    #[error("{url}: {source}")]
    Send {
        /// The URL.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The answer does not prove the server holds the job's token: it is not this job's worker or
    /// coordinator (or one side holds another token). Nothing of it was read.
    #[error(
        "{url} answered {status} without proving it holds the job token (no valid {PROOF_HEADER}): not this \
         job's worker or coordinator, or it holds another token; nothing of its answer was read"
    )]
    Unproven {
        /// The URL.
        url: String,
        /// The status it answered.
        status: reqwest::StatusCode,
    },
}

/// Signs `req` with `token` for the host and path of its URL, now, with a fresh nonce: sets its `Host` (so
/// what is signed is what is sent) and `Authorization` headers. Returns the nonce, to check the answer with.
///
/// # Errors
/// When the URL has no host or the OS has no randomness.
pub fn sign(req: &mut reqwest::Request, token: &Token) -> Result<Nonce, AuthError> {
    let url = req.url();
    let Some(host) = url.host_str() else {
        return Err(AuthError::Unsignable {
            url: url.to_string(),
        });
    };
    // As the client would write it: the port only when it is not the scheme's default.
    let host = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let nonce = signature::fresh_nonce().map_err(|e| AuthError::Nonce(e.to_string()))?;
    let c = Credentials::sign(
        token,
        &RequestLine {
            method: req.method().as_str(),
            host: &host,
            target: &target,
        },
        signature::now_ms(),
        nonce,
    );
    let bad = |_| AuthError::Unsignable {
        url: url.to_string(),
    };
    let host = HeaderValue::try_from(host).map_err(bad)?;
    let auth = HeaderValue::try_from(c.header()).map_err(bad)?;
    req.headers_mut().insert(HOST, host);
    req.headers_mut().insert(AUTHORIZATION, auth);
    Ok(nonce)
}

/// Whether `answer` is proven to answer the request with `nonce` by a holder of `token`.
pub fn is_proven(answer: &reqwest::Response, token: &Token, nonce: &Nonce) -> bool {
    signature::answer_is_proven(
        token,
        nonce,
        answer.status().as_u16(),
        answer
            .headers()
            .get(PROOF_HEADER)
            .map(HeaderValue::as_bytes),
    )
}

/// Signs and sends `request`, and returns the answer once it is proven to come from a holder of `token`.
///
/// # Errors
/// When the request cannot be built or sent, or the answer is not proven ([`AuthError::Unproven`]: it is
/// dropped unread).
pub async fn send(
    request: reqwest::RequestBuilder,
    token: &Token,
) -> Result<reqwest::Response, AuthError> {
    let (client, req) = request.build_split();
    let mut req = req.map_err(AuthError::Build)?;
    let nonce = sign(&mut req, token)?;
    let url = req.url().to_string();
    let answer = client
        .execute(req)
        .await
        .map_err(|source| AuthError::Send {
            url: url.clone(),
            source,
        })?;
    if !is_proven(&answer, token, &nonce) {
        return Err(AuthError::Unproven {
            url,
            status: answer.status(),
        });
    }
    Ok(answer)
}
