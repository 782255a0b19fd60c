//! The arrayjob test environment: a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler built from the upstream Go modules), SeaweedFS as the S3
//! server, and a node agent that registers EC2-like Nodes and runs the pods bound to them as local
//! processes.
//!
//! The binaries come from `tests/env/setup.sh` (cached under `${ARRAYJOB_CACHE:-~/.cache/arrayjob}`).
//! A test binary gets one shared environment through [`TestEnv::shared`] (started on first use and
//! torn down by a watchdog process when the test binary exits, also after a panic or a kill), and a
//! fresh namespace per test through [`TestEnv::namespace`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), arrayjob_testenv::Error> {
//! let env = arrayjob_testenv::TestEnv::shared()?;
//! let client = env.client().await?;
//! let ns = env.namespace("demo").await?;
//! # let _ = (client, ns);
//! # Ok(())
//! # }
//! ```

pub mod agent;
mod env;
mod error;
pub mod faultproxy;
pub mod locate;
pub mod podman;
mod proc;
pub mod s3;

pub use agent::{CHAOS_TAINT_KEY, NodeSpec, TaintSpec, default_nodes};
pub use env::{EnvOptions, TestEnv, TestNamespace};
pub use error::Error;
pub use faultproxy::{AfterFault, FaultProxy, S3Request};
pub use s3::{S3Endpoint, S3Server};

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
