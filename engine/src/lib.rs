//! arrayjob engine: planning a validated `ArrayJob` spec (from `arrayjob-spec`) into chunk tasks, the compute
//! kernels, the chunk store and the local executor. Nothing in here knows about Kubernetes.

pub mod array;
pub mod data;
pub mod error;
pub mod exec;
pub mod frame;
pub mod graph;
pub mod grid;
pub mod job;
pub mod kernels;
pub mod output;
pub mod plan;
pub mod resources;
pub mod runner;
pub mod s3;
pub mod schedule;
pub mod select;
pub mod source;
pub mod store;
pub mod summary;
pub mod tracker;

// The spec and its validation live in `arrayjob-spec`; re-exported at their old paths.
pub use arrayjob_spec::{spec, validate};
