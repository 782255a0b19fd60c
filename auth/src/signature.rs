//! Signed requests and proven answers: what is signed, how it is written in the headers, and how it is
//! checked.
//!
//! A request carries `Authorization: ArrayJob-HMAC-SHA256 ts=<ms since the Unix epoch>,nonce=<32 hex>,sig=<64
//! hex>`, where `sig` is HMAC-SHA256 under the job's signing key of: a label, the method, the host it is
//! addressed to (its `Host` header), the path and query, the timestamp and the nonce, each preceded by its
//! length (so no two requests sign the same bytes). The answer carries `x-arrayjob-proof: <64 hex>`, the HMAC
//! of another label, the request's nonce and the answer's status: only a holder of the token can write it, and
//! only for this request.

use std::time::Duration;

use hmac::Mac;

use super::token::{HmacSha256, Token};

/// The `Authorization` scheme of a signed request.
pub const SCHEME: &str = "ArrayJob-HMAC-SHA256";

/// The header of an answer's proof.
pub const PROOF_HEADER: &str = "x-arrayjob-proof";

/// How far a request's timestamp may be from the server's clock, either way. The hosts of one job must keep
/// their clocks this close (NTP does, by far); a server remembers nonces for twice this long
/// ([`super::replay`]).
pub const WINDOW: Duration = Duration::from_secs(30);

/// Bytes of a request's nonce.
pub const NONCE_BYTES: usize = 16;

/// A request's nonce: random, never reused.
pub type Nonce = [u8; NONCE_BYTES];

/// Longest `Authorization` value parsed (the scheme, a 20-digit timestamp, the nonce and the signature fit
/// with room to spare): a longer one is refused unread.
const MAX_HEADER_LEN: usize = 256;

/// Labels that keep a request's signature and an answer's proof apart.
const REQUEST_LABEL: &[u8] = b"arrayjob request v1";
const ANSWER_LABEL: &[u8] = b"arrayjob answer v1";

/// What a request's signature covers besides the timestamp and nonce.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The `Host` header: the `host:port` the client addressed.
    pub host: &'a str,
    /// The path and query, as in the request line.
    pub target: &'a str,
}

/// The signature of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    ts_ms: u64,
    nonce: Nonce,
    sig: [u8; 32],
}

impl Credentials {
    /// Signs `line` at `ts_ms` with `nonce`.
    pub fn sign(token: &Token, line: &RequestLine<'_>, ts_ms: u64, nonce: Nonce) -> Credentials {
        let sig = request_mac(token, line, ts_ms, &nonce)
            .finalize()
            .into_bytes()
            .into();
        Credentials { ts_ms, nonce, sig }
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        format!(
            "{SCHEME} ts={},nonce={},sig={}",
            self.ts_ms,
            hex::encode(self.nonce),
            hex::encode(self.sig)
        )
    }

    /// Reads an `Authorization` value written by [`Credentials::header`]; None for anything else.
    pub fn parse(value: &[u8]) -> Option<Credentials> {
        if value.len() > MAX_HEADER_LEN {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?;
        let fields = text.strip_prefix(SCHEME)?.strip_prefix(' ')?;
        let mut parts = fields.split(',');
        let ts = parts.next()?.strip_prefix("ts=")?;
        let nonce = parts.next()?.strip_prefix("nonce=")?;
        let sig = parts.next()?.strip_prefix("sig=")?;
        if parts.next().is_some() || ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut c = Credentials {
            ts_ms: ts.parse().ok()?,
            nonce: [0; NONCE_BYTES],
            sig: [0; 32],
        };
        hex::decode_to_slice(nonce, &mut c.nonce).ok()?;
        hex::decode_to_slice(sig, &mut c.sig).ok()?;
        Some(c)
    }

    /// Whether this signature is `line`'s under `token` (constant time).
    pub fn signs(&self, token: &Token, line: &RequestLine<'_>) -> bool {
        request_mac(token, line, self.ts_ms, &self.nonce)
            .verify_slice(&self.sig)
            .is_ok()
    }

    /// When the request was signed, milliseconds since the Unix epoch (the signer's clock).
    pub fn ts_ms(&self) -> u64 {
        self.ts_ms
    }

    /// The request's nonce.
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }
}

/// The MAC of a request, over length-prefixed fields.
fn request_mac(token: &Token, line: &RequestLine<'_>, ts_ms: u64, nonce: &Nonce) -> HmacSha256 {
    let mut mac = token.mac();
    for field in [
        REQUEST_LABEL,
        line.method.as_bytes(),
        line.host.as_bytes(),
        line.target.as_bytes(),
        ts_ms.to_string().as_bytes(),
        nonce,
    ] {
        mac.update(&(field.len() as u64).to_le_bytes());
        mac.update(field);
    }
    mac
}

/// The MAC of an answer with `status` to the request with `nonce`.
fn answer_mac(token: &Token, nonce: &Nonce, status: u16) -> HmacSha256 {
    let mut mac = token.mac();
    for field in [ANSWER_LABEL, nonce, &status.to_le_bytes()] {
        mac.update(&(field.len() as u64).to_le_bytes());
        mac.update(field);
    }
    mac
}

/// The [`PROOF_HEADER`] value of an answer with `status` to the request with `nonce`.
pub fn prove_answer(token: &Token, nonce: &Nonce, status: u16) -> String {
    hex::encode(answer_mac(token, nonce, status).finalize().into_bytes())
}

/// Whether `proof` (the answer's [`PROOF_HEADER`]) proves the answer with `status` to the request with
/// `nonce` comes from a holder of `token` (constant time).
pub fn answer_is_proven(token: &Token, nonce: &Nonce, status: u16, proof: Option<&[u8]>) -> bool {
    let mut given = [0u8; 32];
    proof.is_some_and(|p| hex::decode_to_slice(p, &mut given).is_ok())
        && answer_mac(token, nonce, status)
            .verify_slice(&given)
            .is_ok()
}

/// This host's clock, milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fresh random nonce.
///
/// # Errors
/// When the OS has no randomness to give.
pub fn fresh_nonce() -> Result<Nonce, getrandom::Error> {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::fill(&mut n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Token {
        Token::from_text(t).expect("token")
    }

    const LINE: RequestLine<'static> = RequestLine {
        method: "POST",
        host: "127.0.0.2:7071",
        target: "/v1/fetch",
    };

    #[test]
    fn a_signature_covers_every_field_and_only_the_token_makes_it() {
        let t = token("0123456789abcdef-job-a");
        let nonce = [7u8; NONCE_BYTES];
        let c = Credentials::sign(&t, &LINE, 1_700_000_000_000, nonce);
        assert!(c.signs(&t, &LINE));
        assert!(!c.signs(&token("0123456789abcdef-job-b"), &LINE));
        for other in [
            RequestLine {
                method: "GET",
                ..LINE
            },
            RequestLine {
                host: "127.0.0.3:7071",
                ..LINE
            },
            RequestLine {
                target: "/v1/probe?bytes=1",
                ..LINE
            },
            // The length prefixes: moving a character from one field to the next changes the signature.
            RequestLine {
                method: "POST1",
                host: "27.0.0.2:7071",
                ..LINE
            },
        ] {
            assert!(!c.signs(&t, &other), "{other:?}");
        }
        let later = Credentials {
            ts_ms: c.ts_ms + 1,
            ..c.clone()
        };
        assert!(!later.signs(&t, &LINE));
        let mut renonced = c.clone();
        renonced.nonce[0] ^= 1;
        assert!(!renonced.signs(&t, &LINE));
    }

    #[test]
    fn the_header_round_trips_and_anything_else_is_refused_unread() {
        let t = token("0123456789abcdef-job-a");
        let c = Credentials::sign(&t, &LINE, 1_700_000_000_123, [0xab; NONCE_BYTES]);
        let h = c.header();
        assert_eq!(
            h,
            format!(
                "ArrayJob-HMAC-SHA256 ts=1700000000123,nonce={},sig={}",
                "ab".repeat(16),
                hex::encode(c.sig)
            )
        );
        assert_eq!(Credentials::parse(h.as_bytes()), Some(c.clone()));
        let sig = hex::encode(c.sig);
        let nonce = "ab".repeat(16);
        for bad in [
            String::new(),
            "Bearer 0123456789abcdef-job-a".into(),
            format!("ArrayJob-HMAC-SHA256 nonce={nonce},ts=1,sig={sig}"),
            format!("ArrayJob-HMAC-SHA256 ts=-1,nonce={nonce},sig={sig}"),
            format!("ArrayJob-HMAC-SHA256 ts=+1,nonce={nonce},sig={sig}"),
            format!("ArrayJob-HMAC-SHA256 ts=99999999999999999999,nonce={nonce},sig={sig}"),
            format!("ArrayJob-HMAC-SHA256 ts=1,nonce={},sig={sig}", &nonce[2..]),
            format!("ArrayJob-HMAC-SHA256 ts=1,nonce={nonce},sig={sig}00"),
            format!("ArrayJob-HMAC-SHA256 ts=1,nonce={nonce},sig={sig},x=1"),
            format!(
                "ArrayJob-HMAC-SHA256 ts=1,nonce={nonce},sig={}",
                "zz".repeat(32)
            ),
            format!(
                "ArrayJob-HMAC-SHA256 ts={},nonce={nonce},sig={sig}",
                "1".repeat(300)
            ),
        ] {
            assert_eq!(Credentials::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn an_answer_is_proven_only_for_its_request_and_status_by_a_token_holder() {
        let t = token("0123456789abcdef-job-a");
        let nonce = [1u8; NONCE_BYTES];
        let proof = prove_answer(&t, &nonce, 101);
        assert_eq!(proof.len(), 64);
        assert!(answer_is_proven(&t, &nonce, 101, Some(proof.as_bytes())));
        assert!(!answer_is_proven(&t, &nonce, 200, Some(proof.as_bytes())));
        assert!(!answer_is_proven(
            &t,
            &[2u8; NONCE_BYTES],
            101,
            Some(proof.as_bytes())
        ));
        let other = token("0123456789abcdef-job-b");
        assert!(!answer_is_proven(
            &other,
            &nonce,
            101,
            Some(proof.as_bytes())
        ));
        assert!(!answer_is_proven(&t, &nonce, 101, None));
        assert!(!answer_is_proven(&t, &nonce, 101, Some(b"not hex")));
        assert!(!answer_is_proven(
            &t,
            &nonce,
            101,
            Some(&proof.as_bytes()[..62])
        ));
        // A request's signature is never an answer's proof (the labels differ).
        let c = Credentials::sign(
            &t,
            &RequestLine {
                method: "",
                host: "",
                target: "",
            },
            0,
            nonce,
        );
        assert!(!answer_is_proven(
            &t,
            &nonce,
            101,
            Some(hex::encode(c.sig).as_bytes())
        ));
    }
}
