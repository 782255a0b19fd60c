//! S3 in the engine: the client, buckets and scratch naming come from the `arrayjob-s3` crate (re-exported
//! here at their old paths); the engine adds what needs its chunk store: the spill tier on S3. (The resume
//! ledger is the distributed coordinator's: `runtime/src/coordinator/ledger.rs`.)

pub use arrayjob_s3::*;

pub mod spill;
