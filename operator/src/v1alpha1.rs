//! `arrayjob.dev/v1alpha1`: the `ArrayJob` resource.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An array job: a source stack of 2-D images and the stages computed over it.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arrayjob.dev",
    version = "v1alpha1",
    kind = "ArrayJob",
    namespaced,
    status = "ArrayJobStatus",
    shortname = "aj",
    category = "all",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.currentStage"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ArrayJobResourceSpec {
    /// The job: source and stages (the same fields `arrayjob run` reads from a manifest).
    #[serde(flatten)]
    pub job: arrayjob_engine::spec::ArrayJobSpec,
}

/// Observed state of an ArrayJob, written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArrayJobStatus {
    /// Pending, Running, Succeeded, Failed or Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Name of the stage currently running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// Tasks done over tasks in total, e.g. `1200/2510`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
