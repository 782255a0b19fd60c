//! S3 in the engine: the client, buckets and scratch naming come from the `arrayjob-s3` crate (re-exported
//! here at their old paths); the engine adds what needs its chunk store and scheduler: the spill tier on S3
//! and the resume ledger.

pub use arrayjob_s3::*;

pub mod ledger;
pub mod spill;
