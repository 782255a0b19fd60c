//! `arrayjob.dev/v1alpha1`: the `ArrayJob` resource.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An array job: a source stack of 2-D images, the stages computed over it, and the pods that compute them.
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
    printcolumn = r#"{"name":"Workers","type":"string","jsonPath":".status.workers"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.source.synthetic), has(self.source.files), has(self.source.http), has(self.source.s3), has(self.source.tiff), has(self.source.zarr)].filter(x, x).size() == 1",
        "message": "spec.source: exactly one of synthetic, files, http, s3, tiff, zarr",
        "fieldPath": ".source"
    },
    {
        "rule": "has(self.storage) && has(self.storage.s3)",
        "message": "spec.storage.s3: required on Kubernetes (outputs, scratch and the exchange live in S3)",
        "fieldPath": ".storage"
    }
]))]
pub struct ArrayJobResourceSpec {
    /// The job: source, stages, storage and exchange (the fields `arrayjob run` reads from a manifest).
    #[serde(flatten)]
    pub job: arrayjob_spec::spec::ArrayJobSpec,
    /// The worker pods.
    #[serde(default)]
    pub workers: WorkersSpec,
    /// Name of a Secret in the job's namespace holding `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
    /// optionally `AWS_SESSION_TOKEN`, `AWS_REGION`), given to the coordinator and workers as environment.
    /// Without it the pods use the AWS default chain (e.g. IAM roles for service accounts with
    /// `workers.serviceAccountName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_credentials_secret: Option<String>,
    /// Where the outputs are published, `s3://bucket/prefix`. Default:
    /// `s3://{storage.s3.bucket}/{storage.s3.prefix}outputs/{namespace}/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// A running job whose tasks have not advanced for this long is marked `Stalled` (reason
    /// `ProgressDeadlineExceeded`); it goes on running. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 604_800))]
    pub progress_deadline_seconds: Option<i32>,
}

/// How many worker pods, and where and how they run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// Worker pods (lost ones are replaced while the job runs).
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Compute threads per worker. Default: the cores the pod may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub threads: Option<i32>,
    /// CPU of each worker pod (request and limit), e.g. `2` or `1500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory of each worker pod (request and limit), e.g. `8Gi`; the worker keeps half of it for chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Run on spot capacity: adds `karpenter.sh/capacity-type: spot` to the node selector (and tolerates the
    /// `karpenter.sh/capacity-type=spot` taint some pools carry).
    #[serde(default)]
    pub spot: bool,
    /// Node labels the worker pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the worker pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Container image of the coordinator and workers. Default: the operator's `--image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Service account of the coordinator and worker pods (for IAM roles for service accounts). Its API token
    /// is not mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

impl Default for WorkersSpec {
    fn default() -> Self {
        WorkersSpec {
            replicas: 2,
            threads: None,
            cpu: None,
            memory: None,
            spot: false,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            image: None,
            service_account_name: None,
        }
    }
}

/// A toleration of a node taint (as in a pod spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    /// Taint key; empty with `Exists` matches every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (default) or `Exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Taint value, with `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// Observed state of an ArrayJob, written by the operator. Its size does not grow with the number of chunks
/// or tasks: one entry per stage and per condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArrayJobStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The first stage not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// Tasks done over tasks in total, e.g. `1200/2510`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Worker pods ready over desired, e.g. `3/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<String>,
    /// Worker pod counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_pods: Option<WorkerCounts>,
    /// Per stage: tasks done and in total.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// Where the outputs are published (`s3://...`); complete once the job is Succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// When the job started running, and when it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// See `startTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Why the job is where it is, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Progressing, Complete, Failed, Stalled; ProgressUnreadable (the coordinator's answer was refused) and
    /// CleanupFailed (deleting the job's scratch failed; retried with back-off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When a task last finished (or the job started running), for `progressDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<String>,
    /// The finalizer's removal of the S3 scratch, once an attempt failed (the ArrayJob is being deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<CleanupStatus>,
}

/// Failed attempts of the finalizer's cleanup; it gives up after `maxAttempts` of them or `giveUpAfterSeconds`
/// (the operator's settings), leaving the scratch and saying so in an Event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupStatus {
    /// Attempts that failed so far.
    pub attempts: i32,
    /// The last failure, e.g. the S3 request and its error.
    pub last_error: String,
    /// When the first attempt failed (RFC 3339).
    pub first_failure_time: String,
    /// The next attempt is not made before this (RFC 3339).
    pub next_attempt_time: String,
}

/// Worker pods of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCounts {
    /// Pods asked for.
    pub desired: i32,
    /// Pods running and ready.
    pub ready: i32,
    /// Pods lost so far (failed, evicted, deleted) and replaced.
    pub lost: i32,
    /// Pods created so far, replacements included.
    pub created: i32,
}

/// One stage's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Stage name (`source` for the loads).
    pub name: String,
    /// Pending (no task started), Running or Succeeded (every task done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Tasks done.
    pub tasks_done: i64,
    /// Tasks in total.
    pub tasks_total: i64,
    /// Bytes its tasks wrote so far (chunks, before compression).
    #[serde(default)]
    pub bytes: i64,
    /// When its first task started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When its last task ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// A standard condition (`kubectl wait --for=condition=Complete` reads these).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Progressing, Complete, Failed or Stalled.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word saying why.
    pub reason: String,
    /// The cause in words: the field path of an invalid spec, the scheduler's message, the failing task.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation it was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    /// A source section of each kind, valid on its own.
    const SOURCES: [(&str, &str); 6] = [
        ("synthetic", "{slices: 2, height: 8, width: 8}"),
        ("files", "{pattern: 'a/{index}.png', stop: 2}"),
        ("http", "{urlTemplate: 'http://h/{index}.png', stop: 2}"),
        ("s3", "{keys: 'k/{index}.png', stop: 2}"),
        ("tiff", "{path: a.tif}"),
        ("zarr", "{path: a.zarr}"),
    ];

    /// The CEL rules of the CRD's spec, as (rule, message, fieldPath).
    fn cel_rules() -> Vec<(String, String, String)> {
        let crd = serde_json::to_value(ArrayJob::crd()).expect("CRD as JSON");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        spec["x-kubernetes-validations"]
            .as_array()
            .expect("CEL rules")
            .iter()
            .map(|r| (text(&r["rule"]), text(&r["message"]), text(&r["fieldPath"])))
            .collect()
    }

    /// The problems `arrayjob_spec::validate` finds at `path` in a job whose source sets the kinds in `mask`
    /// (bit k: `SOURCES[k]`) and whose storage is `storage`.
    fn problems_at(mask: u32, storage: &str, path: &str) -> Vec<String> {
        let source: Vec<String> = SOURCES
            .iter()
            .enumerate()
            .filter(|(k, _)| mask & (1 << k) != 0)
            .map(|(_, (kind, body))| format!("{kind}: {body}"))
            .collect();
        let yaml = format!(
            "{storage}source: {{{}}}\nstages: [{{name: m, input: source, reduce: {{op: mean, axes: [0]}}}}]\n",
            source.join(", ")
        );
        let spec: arrayjob_spec::spec::ArrayJobSpec = serde_yaml::from_str(&yaml).expect("spec");
        match arrayjob_spec::validate::validate(&spec) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .into_iter()
                .filter(|p| p.path == path)
                .map(|p| p.message)
                .collect(),
        }
    }

    /// Each CEL rule of the CRD mirrors a rule of `arrayjob_spec::validate` (the API server evaluates the rules
    /// themselves: `tests/crd_e2e.rs`). The source rule is evaluated here as the server would, for every set of
    /// source kinds, and must refuse exactly the specs validation refuses at `spec.source`; the storage rule is
    /// the one rule of Kubernetes alone (a laptop run needs no S3), which validation checks only when storage
    /// is set. A new CEL rule fails this test until it is mirrored here.
    #[test]
    fn cel_rules_mirror_validation() {
        let rules = cel_rules();
        assert_eq!(rules.len(), 2, "{rules:?}");

        let (rule, message, field) = &rules[0];
        let kinds: Vec<&str> = SOURCES.iter().map(|(k, _)| *k).collect();
        let has: Vec<String> = kinds
            .iter()
            .map(|k| format!("has(self.source.{k})"))
            .collect();
        assert_eq!(
            rule,
            &format!("[{}].filter(x, x).size() == 1", has.join(", "))
        );
        assert_eq!(field, ".source");
        assert_eq!(
            message,
            &format!("spec.source: exactly one of {}", kinds.join(", "))
        );
        // The kinds listed are every kind the spec has (a new source kind must join the rule).
        let schema = serde_json::to_value(schemars::schema_for!(arrayjob_spec::spec::SourceSpec))
            .expect("schema");
        let mut props: Vec<&str> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "slicesPerChunk" | "sliceShape" | "dtype"))
            .collect();
        props.sort_unstable();
        let mut sorted = kinds.clone();
        sorted.sort_unstable();
        assert_eq!(props, sorted);
        let storage = "storage: {s3: {bucket: data}}\n";
        for mask in 0..(1u32 << SOURCES.len()) {
            let cel_accepts = mask.count_ones() == 1;
            let refused = problems_at(mask, storage, "spec.source");
            assert_eq!(
                refused.is_empty(),
                cel_accepts,
                "mask {mask:06b}: validation says {refused:?}"
            );
            if !cel_accepts {
                assert!(refused[0].starts_with("exactly one of"), "{refused:?}");
            }
        }

        let (rule, message, field) = &rules[1];
        assert_eq!(rule, "has(self.storage) && has(self.storage.s3)");
        assert_eq!(field, ".storage");
        assert!(
            message.starts_with("spec.storage.s3: required on Kubernetes"),
            "{message}"
        );
        assert_eq!(problems_at(1, "", "spec.storage.s3"), Vec::<String>::new());
        assert_eq!(
            problems_at(1, "storage: {s3: {bucket: B}}\n", "spec.storage.s3.bucket").len(),
            1
        );
    }
}
