//! arrayjob engine: the `ArrayJob` spec, its validation and planning into chunk tasks, the compute kernels,
//! the chunk store and the local executor. Nothing in here knows about Kubernetes.

pub mod array;
pub mod data;
pub mod error;
pub mod exec;
pub mod frame;
pub mod graph;
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
pub mod spec;
pub mod store;
pub mod summary;
pub mod tracker;
pub mod validate;
