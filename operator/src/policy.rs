//! The cluster admin's policy on what an ArrayJob may ask for (chart value `policy`, the operator's
//! `--policy` JSON): which images, service accounts, credentials Secrets and tolerations a job may use.
//! Creating an ArrayJob must not grant more than running a job: without this, anyone who may create one could
//! run any image with any service account (and its cloud role), inject any Secret of the namespace into it and
//! tolerate every taint. The checks are pure functions of the job, the policy and (for the Secret) its labels;
//! a violation fails the job with condition `Failed`, reason `PolicyViolation`, naming the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::v1alpha1::ArrayJob;

/// The label a Secret needs for a job to name it in `s3CredentialsSecret` (value `"true"`), unless the policy
/// says `any`.
pub const SECRET_LABEL: &str = "arrayjob.dev/s3-credentials";

/// Which Secrets `spec.s3CredentialsSecret` may name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretPolicy {
    /// Only Secrets labelled [`SECRET_LABEL`]`: "true"` (the default).
    #[default]
    Labelled,
    /// Any Secret of the job's namespace.
    Any,
}

/// What a job may ask for. The defaults are the safe ones: the operator's own image only, no service account
/// but the namespace's `default`, labelled Secrets only, no toleration but the spot one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Images `spec.workers.image` may name besides the operator's own `--image`: exact references, or
    /// prefixes ending in `*` (`registry.example/arrayjob:*`, `registry.example/team/*`).
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// Service accounts `spec.workers.serviceAccountName` may name besides `default`; `*` allows any.
    #[serde(default)]
    pub allowed_service_accounts: Vec<String>,
    /// Which Secrets `spec.s3CredentialsSecret` may name.
    #[serde(default)]
    pub s3_credentials_secrets: SecretPolicy,
    /// Taint keys `spec.workers.tolerations` may tolerate (exact, or a prefix ending in `*`); `*` allows any,
    /// including a toleration without a key (which tolerates every taint).
    #[serde(default = "default_toleration_keys")]
    pub allowed_toleration_keys: Vec<String>,
}

/// The spot capacity taint (`workers.spot: true` tolerates it; a job may name it too).
const SPOT_TAINT_KEY: &str = "karpenter.sh/capacity-type";

fn default_toleration_keys() -> Vec<String> {
    vec![SPOT_TAINT_KEY.to_owned()]
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_images: Vec::new(),
            allowed_service_accounts: Vec::new(),
            s3_credentials_secrets: SecretPolicy::Labelled,
            allowed_toleration_keys: default_toleration_keys(),
        }
    }
}

/// A field the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Violation {
    /// Its path, e.g. `spec.workers.image`.
    pub field: String,
    /// What is refused and what is allowed.
    pub message: String,
}

/// Whether `value` matches `pattern`: equal, or `pattern` ends in `*` and `value` starts with what comes before.
fn matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

fn allowed_list(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "nothing else".into()
    } else {
        patterns.join(", ")
    }
}

impl Policy {
    /// What `job`'s spec asks for that the policy refuses, every field (the Secret's label is checked by
    /// [`Policy::check_secret`], which needs the Secret). `default_image` is the operator's `--image`.
    pub fn check(&self, job: &ArrayJob, default_image: &str) -> Vec<Violation> {
        let w = &job.spec.workers;
        let mut out = Vec::new();
        if let Some(image) = &w.image
            && image != default_image
            && !self.allowed_images.iter().any(|p| matches(p, image))
        {
            out.push(Violation {
                field: "spec.workers.image".into(),
                message: format!(
                    "image {image:?} is not allowed by the cluster's policy (allowed: the operator's image {default_image:?}, {})",
                    allowed_list(&self.allowed_images)
                ),
            });
        }
        if let Some(sa) = &w.service_account_name
            && sa != "default"
            && !self
                .allowed_service_accounts
                .iter()
                .any(|p| p == "*" || p == sa)
        {
            out.push(Violation {
                field: "spec.workers.serviceAccountName".into(),
                message: format!(
                    "service account {sa:?} is not allowed by the cluster's policy (allowed: default, {})",
                    allowed_list(&self.allowed_service_accounts)
                ),
            });
        }
        for (i, t) in w.tolerations.iter().enumerate() {
            let key = t.key.as_deref().unwrap_or_default();
            let any = self.allowed_toleration_keys.iter().any(|p| p == "*");
            let ok = any
                || (!key.is_empty()
                    && self.allowed_toleration_keys.iter().any(|p| matches(p, key)));
            if !ok {
                let what = if key.is_empty() {
                    "a toleration without a key tolerates every taint; it".to_owned()
                } else {
                    format!("taint key {key:?}")
                };
                out.push(Violation {
                    field: format!("spec.workers.tolerations[{i}].key"),
                    message: format!(
                        "{what} is not allowed by the cluster's policy (allowed keys: {})",
                        allowed_list(&self.allowed_toleration_keys)
                    ),
                });
            }
        }
        out
    }

    /// Whether the Secret `name` (with `labels`) may be given to the job's pods.
    ///
    /// # Errors
    /// The violation, naming `spec.s3CredentialsSecret`, when the policy wants the label and it is not there.
    pub fn check_secret(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Violation> {
        if self.s3_credentials_secrets == SecretPolicy::Any
            || labels.get(SECRET_LABEL).is_some_and(|v| v == "true")
        {
            return Ok(());
        }
        Err(Violation {
            field: "spec.s3CredentialsSecret".into(),
            message: format!(
                "Secret {name:?} is not labelled {SECRET_LABEL}=true, which the cluster's policy requires of the Secrets an ArrayJob may use"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_IMAGE: &str = "ghcr.io/arrayjob/arrayjob:0.1.0";

    fn job(workers: &str) -> ArrayJob {
        serde_yaml::from_str(&format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: em, namespace: lab}}\nspec:\n  \
             storage: {{s3: {{bucket: data}}}}\n  source: {{synthetic: {{slices: 4, height: 8, width: 8}}}}\n  \
             stages: []\n  workers: {workers}\n"
        ))
        .expect("job")
    }

    fn fields(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn the_default_policy_allows_a_plain_job_and_spot_and_refuses_the_rest() {
        let p = Policy::default();
        assert!(p.check(&job("{replicas: 2}"), DEFAULT_IMAGE).is_empty());
        let spot = job(
            "{replicas: 2, spot: true, image: \"ghcr.io/arrayjob/arrayjob:0.1.0\", serviceAccountName: default, \
             tolerations: [{key: karpenter.sh/capacity-type, operator: Equal, value: spot}]}",
        );
        assert!(p.check(&spot, DEFAULT_IMAGE).is_empty());
        let greedy = job(
            "{replicas: 2, image: \"docker.io/evil/miner:1\", serviceAccountName: s3-admin, \
             tolerations: [{operator: Exists}, {key: nvidia.com/gpu, operator: Exists}]}",
        );
        let v = p.check(&greedy, DEFAULT_IMAGE);
        assert_eq!(
            fields(&v),
            [
                "spec.workers.image",
                "spec.workers.serviceAccountName",
                "spec.workers.tolerations[0].key",
                "spec.workers.tolerations[1].key"
            ]
        );
        assert_eq!(
            v[0].to_string(),
            "spec.workers.image: image \"docker.io/evil/miner:1\" is not allowed by the cluster's policy \
             (allowed: the operator's image \"ghcr.io/arrayjob/arrayjob:0.1.0\", nothing else)"
        );
        assert_eq!(
            v[1].to_string(),
            "spec.workers.serviceAccountName: service account \"s3-admin\" is not allowed by the cluster's \
             policy (allowed: default, nothing else)"
        );
        assert_eq!(
            v[2].to_string(),
            "spec.workers.tolerations[0].key: a toleration without a key tolerates every taint; it is not \
             allowed by the cluster's policy (allowed keys: karpenter.sh/capacity-type)"
        );
        assert_eq!(
            v[3].message,
            "taint key \"nvidia.com/gpu\" is not allowed by the cluster's policy (allowed keys: karpenter.sh/capacity-type)"
        );
    }

    #[test]
    fn an_admin_policy_widens_by_pattern() {
        let p: Policy = serde_json::from_str(
            r#"{"allowedImages": ["registry.example/team/*", "ghcr.io/x/y:1"],
                "allowedServiceAccounts": ["arrayjob-s3"], "s3CredentialsSecrets": "any",
                "allowedTolerationKeys": ["example.com/*"]}"#,
        )
        .expect("policy");
        let ok = job(
            "{replicas: 1, image: \"registry.example/team/arrayjob:2\", serviceAccountName: arrayjob-s3, \
             tolerations: [{key: example.com/pool, operator: Exists}]}",
        );
        assert!(p.check(&ok, DEFAULT_IMAGE).is_empty());
        // A prefix is a prefix: another registry whose name starts the same is not it.
        let near = job(
            "{replicas: 1, image: \"registry.example/teamz/x:1\", serviceAccountName: other, \
             tolerations: [{key: karpenter.sh/capacity-type}]}",
        );
        assert_eq!(
            fields(&p.check(&near, DEFAULT_IMAGE)),
            [
                "spec.workers.image",
                "spec.workers.serviceAccountName",
                "spec.workers.tolerations[0].key"
            ]
        );
        assert!(p.check_secret("s3", &BTreeMap::new()).is_ok());
        let all: Policy = serde_json::from_str(
            r#"{"allowedServiceAccounts": ["*"], "allowedTolerationKeys": ["*"]}"#,
        )
        .expect("policy");
        let wild =
            job("{replicas: 1, serviceAccountName: anyone, tolerations: [{operator: Exists}]}");
        assert!(all.check(&wild, DEFAULT_IMAGE).is_empty());
        // Unknown keys are refused, not ignored (a typo must not loosen nor silently keep the defaults).
        let typo = serde_json::from_str::<Policy>(r#"{"allowedImage": ["x"]}"#)
            .expect_err("unknown field");
        assert!(
            typo.to_string().contains("unknown field `allowedImage`"),
            "{typo}"
        );
    }

    #[test]
    fn a_secret_needs_the_label_unless_any_is_allowed() {
        let p = Policy::default();
        let labelled = BTreeMap::from([(SECRET_LABEL.to_owned(), "true".to_owned())]);
        assert!(p.check_secret("s3-credentials", &labelled).is_ok());
        let other = BTreeMap::from([(SECRET_LABEL.to_owned(), "yes".to_owned())]);
        let v = p.check_secret("db-password", &other).expect_err("refused");
        assert_eq!(
            v.to_string(),
            "spec.s3CredentialsSecret: Secret \"db-password\" is not labelled arrayjob.dev/s3-credentials=true, \
             which the cluster's policy requires of the Secrets an ArrayJob may use"
        );
    }
}
