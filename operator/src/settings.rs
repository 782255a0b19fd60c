//! The operator's settings (its command line, from the chart's values): the default image, the admin's
//! policy, how the finalizer cleans up, and who the operator is (for the jobs' NetworkPolicies).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::policy::Policy;

/// The operator's own settings that shape the objects and what a job may ask for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image of the coordinator and workers, unless the job names one.
    pub image: String,
    /// What a job may ask for (`crate::policy`).
    pub policy: Policy,
    /// The operator's pods, let through to the coordinator's port by each job's NetworkPolicy; `None` (an
    /// operator outside the cluster) adds no such rule.
    pub operator_peer: Option<Peer>,
    /// How the finalizer cleans up (`crate::cleanup`).
    pub cleanup: CleanupSettings,
}

impl Settings {
    /// Settings with `image`, the default policy and cleanup, and no operator peer.
    pub fn new(image: &str) -> Settings {
        Settings {
            image: image.to_owned(),
            policy: Policy::default(),
            operator_peer: None,
            cleanup: CleanupSettings::default(),
        }
    }
}

/// Pods in another namespace, by namespace name and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Their namespace.
    pub namespace: String,
    /// Labels they all carry.
    pub labels: BTreeMap<String, String>,
}

/// How the finalizer cleans up (chart values `cleanup.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupSettings {
    /// With no `s3CredentialsSecret`, remove the scratch with the operator's own identity (its IRSA role, the
    /// AWS default chain); off: leave it, with an Event.
    pub operator_identity: bool,
    /// Failed attempts before giving up.
    pub max_attempts: u32,
    /// Wait after the first failure; doubled after each next one, up to [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// Give up this long after the first failure, whatever the attempts.
    pub give_up_after: Duration,
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Default for CleanupSettings {
    fn default() -> Self {
        CleanupSettings {
            operator_identity: false,
            max_attempts: 8,
            backoff: Duration::from_secs(5),
            give_up_after: Duration::from_secs(900),
        }
    }
}
