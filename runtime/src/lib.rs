//! arrayjob's distributed runtime: a coordinator process that schedules one job's tasks with the engine's
//! [`arrayjob_engine::schedule::Scheduler`], and worker processes that run them with the engine's
//! [`arrayjob_engine::exec::TaskRunner`], keep their results, and serve them to each other over HTTP.
//!
//! The engine knows nothing of networks; this crate knows nothing of FFTs or Kubernetes. See
//! `docs/architecture.md` ("Distributed execution") for the protocol and the failure handling. Every request
//! between a job's processes is signed and every answer proven with the `arrayjob-auth` crate.

pub mod cli;
pub mod coordinator;
pub mod exchange;
pub mod metrics;
pub mod protocol;
pub mod worker;
