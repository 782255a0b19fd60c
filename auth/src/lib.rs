//! Authentication between a job's processes: the coordinator, its workers, and whoever reads the
//! coordinator's progress (the operator, `arrayjob progress`).
//!
//! Every process of a job holds its token ([`Token`]), a shared secret that arrayjob's processes never send:
//! a client signs each request with HMAC-SHA256 under a key derived from it, over the method, the host it
//! addresses, the path and query, a timestamp and a fresh nonce ([`signature`]); a server takes the request
//! only if the signature verifies (constant time), the timestamp is within [`WINDOW`] of its clock, the host
//! is its own (workers) and the nonce is new ([`replay`]), then proves its answer with an HMAC over the
//! client's nonce and the answer's status. The client reads no byte of an answer without that proof
//! ([`send`]), so a peer without the token can neither ask for anything nor pass for a worker or the
//! coordinator. On a fetch's upgraded connection the request and the `101` are authenticated, not each frame
//! (frames carry their own checksums). Refusals are counted exactly and logged at most once per
//! [`REFUSAL_LOG_PERIOD`] per reason ([`refusals`]). The design and its limits: docs/security.md.
//!
//! This crate depends on no other arrayjob crate (not the engine), so the operator and `arrayjob progress`
//! sign their requests without linking array code; the runtime uses it for every request between a job's
//! processes.

pub mod client;
pub mod refusals;
pub mod replay;
pub mod server;
pub mod signature;
pub mod token;

pub use client::{AuthError, send};
pub use refusals::REFUSAL_LOG_PERIOD;
pub use server::{Guard, require_signature, require_signature_or_bearer};
pub use signature::WINDOW;
pub use token::{Token, TokenError};
