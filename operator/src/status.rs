//! The status of an ArrayJob from what the reconciler observed (its pods, the coordinator's progress
//! snapshot): a pure function, so its rules are unit-tested. Its size is bounded: one entry per stage and per
//! condition, whatever the number of tasks.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::desired::{self, role};
use crate::progress::{Progress, ProgressError};
use crate::v1alpha1::{ArrayJob, ArrayJobStatus, Condition, StageStatus, WorkerCounts};

/// What one reconcile pass saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The job's pods.
    pub pods: Vec<Pod>,
    /// Worker pods created in all (replacements included).
    pub created: i32,
    /// The coordinator's progress snapshot (checked), when it answered.
    pub progress: Option<Progress>,
    /// Why its answer was refused, when it was (too large, a value out of range).
    pub unreadable: Option<ProgressError>,
    /// When it was seen.
    pub now: Timestamp,
}

/// Messages in the status are cut to this many bytes (a coordinator's failure can quote a long log).
pub const MESSAGE_LIMIT: usize = 1024;

/// Cuts the job's message and its conditions' messages to [`MESSAGE_LIMIT`] bytes (at a character boundary,
/// marked with `...`).
pub fn bound_messages(s: &mut ArrayJobStatus) {
    fn cut(m: &mut String) {
        if m.len() > MESSAGE_LIMIT {
            let mut end = MESSAGE_LIMIT - 3;
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            m.truncate(end);
            m.push_str("...");
        }
    }
    if let Some(m) = &mut s.message {
        cut(m);
    }
    for c in &mut s.conditions {
        cut(&mut c.message);
    }
    if let Some(c) = &mut s.cleanup {
        cut(&mut c.last_error);
    }
}

/// How long a running job may go without a task finishing before it is `Stalled`, by default.
pub const PROGRESS_DEADLINE_SECONDS: i32 = 600;

/// Whether the job is over.
pub fn is_terminal(s: &ArrayJobStatus) -> bool {
    matches!(s.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// A pod's phase (`Pending` when not reported yet).
pub fn pod_phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether a pod is over or going.
pub fn pod_gone(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some() || matches!(pod_phase(p), "Succeeded" | "Failed")
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Sets condition `type_` in `conds`, keeping its transition time when its status does not change.
fn set(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    at: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let old = conds.iter().position(|c| c.type_ == type_);
    let since = old
        .map(|i| &conds[i])
        .filter(|c| c.status == status)
        .map_or_else(|| at.to_string(), |c| c.last_transition_time.clone());
    let c = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: generation,
    };
    match old {
        Some(i) => conds[i] = c,
        None => conds.push(c),
    }
}

/// Sets condition `type_` of `s` for the generation it describes (the finalizer's `CleanupFailed`).
pub fn set_condition(
    s: &mut ArrayJobStatus,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    at: Timestamp,
) {
    let generation = s.observed_generation;
    set(
        &mut s.conditions,
        type_,
        status,
        reason,
        message,
        generation,
        at,
    );
}

/// The status of a job whose spec the operator refuses (`problem` names the field): Failed, for good, with
/// reason `InvalidSpec`.
pub fn invalid(job: &ArrayJob, current: &ArrayJobStatus, problem: &str) -> ArrayJobStatus {
    refused(
        job,
        current,
        "InvalidSpec",
        &format!("invalid spec: {problem}"),
    )
}

/// The status of a job that asks for what the cluster's policy refuses (`problem` names the field): Failed,
/// for good, with reason `PolicyViolation`.
pub fn violates_policy(job: &ArrayJob, current: &ArrayJobStatus, problem: &str) -> ArrayJobStatus {
    refused(
        job,
        current,
        "PolicyViolation",
        &format!("refused by the cluster's policy: {problem}"),
    )
}

fn refused(job: &ArrayJob, current: &ArrayJobStatus, reason: &str, msg: &str) -> ArrayJobStatus {
    let mut s = current.clone();
    s.observed_generation = job.metadata.generation;
    end(&mut s, false, reason, msg, Timestamp::now());
    s
}

/// The status of a job waiting for something it names (its credentials Secret): Pending, `Stalled` with
/// `reason` and `message`.
pub fn waiting(
    job: &ArrayJob,
    current: &ArrayJobStatus,
    reason: &str,
    message: &str,
    at: Timestamp,
) -> ArrayJobStatus {
    let mut s = current.clone();
    s.observed_generation = job.metadata.generation;
    s.phase = Some("Pending".into());
    s.message = Some(message.to_owned());
    let generation = s.observed_generation;
    set(
        &mut s.conditions,
        "Stalled",
        true,
        reason,
        message,
        generation,
        at,
    );
    set(
        &mut s.conditions,
        "Progressing",
        false,
        reason,
        message,
        generation,
        at,
    );
    s
}

/// Ends the job: phase, message, completion time, and the conditions of its outcome (`Complete` or
/// `Failed` true with `reason`, `Progressing` false, a `Stalled` there before cleared).
fn end(s: &mut ArrayJobStatus, succeeded: bool, reason: &str, msg: &str, at: Timestamp) {
    let generation = s.observed_generation;
    s.phase = Some(if succeeded { "Succeeded" } else { "Failed" }.into());
    s.message = Some(msg.to_owned());
    s.completion_time.get_or_insert_with(|| at.to_string());
    let outcome = if succeeded { "Complete" } else { "Failed" };
    set(
        &mut s.conditions,
        outcome,
        true,
        reason,
        msg,
        generation,
        at,
    );
    set(
        &mut s.conditions,
        "Progressing",
        false,
        reason,
        msg,
        generation,
        at,
    );
    if s.conditions.iter().any(|c| c.type_ == "Stalled") {
        set(
            &mut s.conditions,
            "Stalled",
            false,
            reason,
            "",
            generation,
            at,
        );
    }
}

/// The condition reason of a coordinator's failure: `S3AccessDenied` when S3 refused its credentials or
/// permissions (the engine's S3 errors end with `(HTTP 403 ...)`), else `CoordinatorFailed`.
pub fn failure_reason(message: &str) -> &'static str {
    let denied = [
        "HTTP 403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ];
    if denied.iter().any(|d| message.contains(d)) {
        "S3AccessDenied"
    } else {
        "CoordinatorFailed"
    }
}

/// Why a pod cannot start, if it cannot: (reason, message) from the scheduler or the image pull.
fn blocked(p: &Pod) -> Option<(&'static str, String)> {
    let st = p.status.as_ref()?;
    if let Some(c) = st.conditions.as_ref().and_then(|cs| {
        cs.iter().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
    }) {
        return Some((
            "Unschedulable",
            format!(
                "pod {} cannot be scheduled: {}",
                p.name_any(),
                c.message.clone().unwrap_or_default()
            ),
        ));
    }
    st.container_statuses.iter().flatten().find_map(|cs| {
        let w = cs.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.as_deref()?;
        matches!(
            reason,
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName"
        )
        .then(|| {
            (
                "ImagePullFailed",
                format!(
                    "pod {}: {reason}: {}",
                    p.name_any(),
                    w.message.clone().unwrap_or_default()
                ),
            )
        })
    })
}

/// The coordinator's exit, when it ended: (succeeded, message).
fn coordinator_end(p: &Pod) -> Option<(bool, String)> {
    match pod_phase(p) {
        "Succeeded" => Some((true, "every output is published".into())),
        "Failed" => {
            let t = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref());
            let code = t.map_or(-1, |t| t.exit_code);
            let tail = t.and_then(|t| t.message.clone()).unwrap_or_default();
            let last = tail
                .lines()
                .rev()
                .find(|l| l.contains("error"))
                .unwrap_or(tail.lines().last().unwrap_or_default())
                .trim()
                .to_owned();
            Some((
                false,
                format!("the coordinator exited with code {code}: {last}"),
            ))
        }
        _ => None,
    }
}

/// Per-stage progress from the coordinator's snapshot (or a published summary.json). Times are after the
/// job's start: the snapshot's `startedAtUnix`, else (a summary) the job's `startTime`; a stage's times, once
/// set, are kept. A time past what a timestamp holds is left unset (the values were checked, this is the last
/// guard: no arithmetic here can panic).
fn stages(progress: &Progress, current: &ArrayJobStatus) -> Vec<StageStatus> {
    let base = progress
        .started_at
        .or_else(|| current.start_time.as_deref()?.parse().ok());
    let at = |after: Option<SignedDuration>| {
        let t = base?.checked_add(after?).ok()?;
        Some(t.to_string())
    };
    progress
        .stages
        .iter()
        .map(|st| {
            let before = current.stages.iter().find(|b| b.name == st.name);
            let (done, total) = (st.tasks_done, st.tasks_total);
            let started = done > 0 || st.start.is_some();
            let phase = match (done == total && total > 0, started) {
                (true, _) => "Succeeded",
                (false, true) => "Running",
                (false, false) => "Pending",
            };
            let keep = |f: fn(&StageStatus) -> &Option<String>| before.and_then(|b| f(b).clone());
            StageStatus {
                phase: Some(phase.into()),
                tasks_done: done,
                tasks_total: total,
                bytes: st.bytes,
                start_time: keep(|b| &b.start_time).or_else(|| at(st.start)),
                completion_time: keep(|b| &b.completion_time)
                    .or_else(|| (phase == "Succeeded").then(|| at(st.end)).flatten()),
                name: st.name.clone(),
            }
        })
        .collect()
}

/// Tasks done over all stages.
fn tasks_done(stages: &[StageStatus]) -> i64 {
    stages
        .iter()
        .fold(0i64, |sum, st| sum.saturating_add(st.tasks_done))
}

/// The next status of a live job from what was observed.
pub fn observe(job: &ArrayJob, current: &ArrayJobStatus, o: &Observed) -> ArrayJobStatus {
    let mut s = current.clone();
    let at = o.now;
    s.observed_generation = job.metadata.generation;
    s.output = desired::output_uri(job).ok();
    count_workers(&mut s, job, o);
    if let Some(p) = &o.progress {
        take_progress(&mut s, current, p, at);
    }
    note_unreadable(&mut s, o);
    let coordinator = o.pods.iter().find(|p| role(p) == "coordinator");
    match coordinator.and_then(coordinator_end) {
        Some((true, msg)) => {
            all_done(&mut s, at);
            end(&mut s, true, "Succeeded", &msg, at);
            return s;
        }
        Some((false, msg)) => {
            // The coordinator's own failure, when its snapshot said it, is the better message.
            let msg = s
                .message
                .clone()
                .filter(|m| !m.is_empty() && current.phase.as_deref() == Some("Running"))
                .map_or(msg.clone(), |f| format!("{f} ({msg})"));
            end(&mut s, false, failure_reason(&msg), &msg, at);
            return s;
        }
        None => {}
    }
    let running = coordinator.is_some_and(|p| pod_phase(p) == "Running");
    s.phase = Some(if running { "Running" } else { "Pending" }.into());
    if running {
        s.start_time.get_or_insert_with(|| at.to_string());
        if current.phase.as_deref() != Some("Running") || s.last_progress_time.is_none() {
            // The deadline counts from when the job started running, not from when it was created.
            s.last_progress_time = Some(at.to_string());
        }
    }
    set_liveness(&mut s, job, o, running);
    s
}

/// The worker pod counts.
fn count_workers(s: &mut ArrayJobStatus, job: &ArrayJob, o: &Observed) {
    let desired_workers = job.spec.workers.replicas;
    let ready = o
        .pods
        .iter()
        .filter(|p| role(p) == "worker" && !pod_gone(p) && pod_ready(p))
        .count() as i32;
    s.worker_pods = Some(WorkerCounts {
        desired: desired_workers,
        ready,
        lost: (o.created - desired_workers).max(0),
        created: o.created,
    });
    s.workers = Some(format!("{ready}/{desired_workers}"));
}

/// Stages, progress, current stage and the coordinator's failure from its snapshot; a task finished since
/// `current` moves `lastProgressTime`.
fn take_progress(s: &mut ArrayJobStatus, current: &ArrayJobStatus, p: &Progress, at: Timestamp) {
    s.stages = stages(p, current);
    let done = tasks_done(&s.stages);
    let total = s
        .stages
        .iter()
        .fold(0i64, |sum, st| sum.saturating_add(st.tasks_total));
    s.progress = Some(format!("{done}/{total}"));
    s.current_stage = s
        .stages
        .iter()
        .find(|st| st.tasks_done < st.tasks_total)
        .map(|st| st.name.clone());
    if done > tasks_done(&current.stages) {
        s.last_progress_time = Some(at.to_string());
    }
    if let Some(f) = &p.failure {
        s.message = Some(f.clone());
    }
}

/// Condition `ProgressUnreadable`: true with the reason and the field while the coordinator's answer is
/// refused, false again once one is read.
fn note_unreadable(s: &mut ArrayJobStatus, o: &Observed) {
    let generation = s.observed_generation;
    match (&o.unreadable, &o.progress) {
        (Some(e), _) => set(
            &mut s.conditions,
            "ProgressUnreadable",
            true,
            e.reason(),
            &format!("the coordinator's progress answer was refused: {e}"),
            generation,
            o.now,
        ),
        (None, Some(_)) if s.conditions.iter().any(|c| c.type_ == "ProgressUnreadable") => set(
            &mut s.conditions,
            "ProgressUnreadable",
            false,
            "ProgressRead",
            "",
            generation,
            o.now,
        ),
        _ => {}
    }
}

/// A succeeded job: every stage and task done (by `at` at the latest, for a stage whose end was not seen).
fn all_done(s: &mut ArrayJobStatus, at: Timestamp) {
    s.current_stage = None;
    for st in &mut s.stages {
        st.tasks_done = st.tasks_total;
        st.phase = Some("Succeeded".into());
        st.completion_time.get_or_insert_with(|| at.to_string());
    }
    if let Some((_, total)) = s.progress.as_deref().and_then(|p| p.split_once('/')) {
        s.progress = Some(format!("{total}/{total}"));
    }
}

/// Whether a running job has gone `progressDeadlineSeconds` without a task finishing: its message.
fn past_deadline(s: &ArrayJobStatus, job: &ArrayJob, at: Timestamp) -> Option<String> {
    let deadline = job
        .spec
        .progress_deadline_seconds
        .unwrap_or(PROGRESS_DEADLINE_SECONDS);
    let last: Timestamp = s.last_progress_time.as_deref()?.parse().ok()?;
    let idle = at.duration_since(last).as_secs();
    (idle >= i64::from(deadline)).then(|| {
        let place = match (&s.current_stage, &s.progress) {
            (Some(st), Some(p)) => format!(" (stage {st}, {p} tasks done)"),
            _ => String::new(),
        };
        format!("no task finished for {idle} s, over progressDeadlineSeconds {deadline}{place}")
    })
}

/// `Stalled` (a pod that cannot start, or no progress past the deadline) or `Progressing`.
fn set_liveness(s: &mut ArrayJobStatus, job: &ArrayJob, o: &Observed, running: bool) {
    let (generation, at) = (s.observed_generation, o.now);
    let stuck = o
        .pods
        .iter()
        .filter(|p| !pod_gone(p))
        .find_map(blocked)
        .or_else(|| {
            running
                .then(|| past_deadline(s, job, at))
                .flatten()
                .map(|m| ("ProgressDeadlineExceeded", m))
        });
    if let Some((reason, msg)) = stuck {
        s.message = Some(msg.clone());
        set(
            &mut s.conditions,
            "Stalled",
            true,
            reason,
            &msg,
            generation,
            at,
        );
        set(
            &mut s.conditions,
            "Progressing",
            false,
            reason,
            &msg,
            generation,
            at,
        );
        return;
    }
    let msg = match (&s.current_stage, &s.progress) {
        (Some(st), Some(p)) => format!("stage {st}, {p} tasks done"),
        _ => "starting the coordinator and workers".to_owned(),
    };
    if s.conditions.iter().any(|c| c.type_ == "Stalled") {
        set(
            &mut s.conditions,
            "Stalled",
            false,
            "Progressing",
            "",
            generation,
            at,
        );
    }
    let reason = if running { "Running" } else { "Starting" };
    set(
        &mut s.conditions,
        "Progressing",
        true,
        reason,
        &msg,
        generation,
        at,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> ArrayJob {
        serde_yaml::from_str(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {name: em, namespace: lab, generation: 2}\n\
             spec:\n  storage: {s3: {bucket: data}}\n  source: {synthetic: {slices: 4, height: 8, width: 8}}\n  \
             stages: []\n  workers: {replicas: 3}\n",
        )
        .expect("job")
    }

    fn pod(name: &str, role: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {desired::ROLE_LABEL: role}},
            "status": status,
        }))
        .expect("pod")
    }

    fn running(name: &str, role: &str) -> Pod {
        pod(
            name,
            role,
            serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
        )
    }

    /// A fixed instant plus `secs`.
    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    /// A snapshot as the operator reads it (a `phase` added when the test leaves it out).
    fn snap(mut v: serde_json::Value) -> Option<Progress> {
        v.as_object_mut()?
            .entry("phase")
            .or_insert_with(|| "running".into());
        Some(
            crate::progress::parse_progress(&serde_json::to_vec(&v).ok()?)
                .expect("a valid snapshot"),
        )
    }

    fn condition<'a>(s: &'a ArrayJobStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).expect(t)
    }

    #[test]
    fn a_running_job_reports_stages_progress_and_workers_from_the_snapshot() {
        let progress = serde_json::json!({"phase": "running", "stages": [
            {"name": "source", "tasksDone": 20, "tasksTotal": 20},
            {"name": "series", "tasksDone": 3, "tasksTotal": 50}]});
        let o = Observed {
            pods: vec![
                running("aj-em", "coordinator"),
                running("aj-em-worker-0", "worker"),
                running("aj-em-worker-1", "worker"),
                pod(
                    "aj-em-worker-2",
                    "worker",
                    serde_json::json!({"phase": "Pending"}),
                ),
            ],
            created: 4,
            progress: snap(progress),
            unreadable: None,
            now: at(0),
        };
        let s = observe(&job(), &ArrayJobStatus::default(), &o);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.progress.as_deref(), Some("23/70"));
        assert_eq!(s.current_stage.as_deref(), Some("series"));
        assert_eq!(s.workers.as_deref(), Some("2/3"));
        assert_eq!(s.worker_pods.as_ref().map(|w| w.lost), Some(1));
        assert_eq!(s.output.as_deref(), Some("s3://data/outputs/lab/em"));
        assert_eq!(s.observed_generation, Some(2));
        let p = condition(&s, "Progressing");
        assert_eq!((p.status.as_str(), p.reason.as_str()), ("True", "Running"));
        // A second pass with nothing new keeps the transition time.
        let again = observe(&job(), &s, &o);
        assert_eq!(
            condition(&again, "Progressing").last_transition_time,
            p.last_transition_time
        );
    }

    #[test]
    fn an_unschedulable_worker_stalls_the_job_with_the_schedulers_message() {
        let stuck = pod(
            "aj-em-worker-0",
            "worker",
            serde_json::json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector."}]}),
        );
        let o = Observed {
            pods: vec![running("aj-em", "coordinator"), stuck],
            created: 3,
            progress: None,
            unreadable: None,
            now: at(0),
        };
        let s = observe(&job(), &ArrayJobStatus::default(), &o);
        let c = condition(&s, "Stalled");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Unschedulable")
        );
        assert!(
            c.message
                .contains("didn't match Pod's node affinity/selector"),
            "{}",
            c.message
        );
        assert_eq!(condition(&s, "Progressing").status, "False");
    }

    #[test]
    fn the_coordinators_exit_ends_the_job() {
        let done = pod(
            "aj-em",
            "coordinator",
            serde_json::json!({"phase": "Succeeded"}),
        );
        let s = observe(
            &job(),
            &ArrayJobStatus {
                progress: Some("7/70".into()),
                ..Default::default()
            },
            &Observed {
                pods: vec![done],
                created: 3,
                progress: None,
                unreadable: None,
                now: at(0),
            },
        );
        assert!(is_terminal(&s));
        assert_eq!(condition(&s, "Complete").status, "True");
        assert_eq!(s.progress.as_deref(), Some("70/70"));
        let failed = pod(
            "aj-em",
            "coordinator",
            serde_json::json!({"phase": "Failed", "containerStatuses": [
            {"name": "coordinator", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"terminated": {"exitCode": 1, "message": "INFO starting\nerror: S3 GetObject s3://data/x: AccessDenied\n"}}}]}),
        );
        let s = observe(
            &job(),
            &ArrayJobStatus::default(),
            &Observed {
                pods: vec![failed],
                created: 3,
                progress: None,
                unreadable: None,
                now: at(0),
            },
        );
        let c = condition(&s, "Failed");
        assert_eq!(c.reason, "S3AccessDenied");
        assert_eq!(
            c.message,
            "the coordinator exited with code 1: error: S3 GetObject s3://data/x: AccessDenied"
        );
        assert_eq!(
            failure_reason(
                "error: S3 ListObjectsV2 s3://data: the request signature was refused: wrong secret access key (HTTP 403 SignatureDoesNotMatch)"
            ),
            "S3AccessDenied"
        );
        assert_eq!(
            failure_reason("error: stage power, chunk 3: out of memory"),
            "CoordinatorFailed"
        );
        let bad = invalid(
            &job(),
            &ArrayJobStatus::default(),
            "spec.stages[0].reduce.axes: axis 3 out of range",
        );
        assert_eq!(condition(&bad, "Failed").reason, "InvalidSpec");
        assert!(is_terminal(&bad));
    }

    #[test]
    fn the_status_stays_small_whatever_the_number_of_tasks() {
        let stages: Vec<serde_json::Value> = (0..12)
            .map(|i| {
                serde_json::json!({"name": format!("stage-{i}-with-a-long-descriptive-name"),
                "tasksDone": 50_000, "tasksTotal": 100_000, "bytesOut": 123_456_789_012_u64,
                "startSeconds": 1.5, "endSeconds": null})
            })
            .collect();
        let pods: Vec<Pod> = (0..200)
            .map(|i| running(&format!("aj-em-worker-{i}"), "worker"))
            .collect();
        let o = Observed {
            pods,
            created: 100_000,
            progress: snap(serde_json::json!({"stages": stages})),
            unreadable: None,
            now: at(0),
        };
        let s = observe(&job(), &ArrayJobStatus::default(), &o);
        let s = status_of_a_failure_with_a_long_log(s);
        let bytes = serde_json::to_vec(&s).expect("json").len();
        assert!(bytes < 16 * 1024, "{bytes} bytes");
        assert_eq!(s.progress.as_deref(), Some("600000/1200000"));
    }

    /// Every field at its longest: a failure message as long as a coordinator's log tail can make it.
    fn status_of_a_failure_with_a_long_log(mut s: ArrayJobStatus) -> ArrayJobStatus {
        s.message = Some("x".repeat(3 * MESSAGE_LIMIT));
        for c in &mut s.conditions {
            c.message = "y".repeat(3 * MESSAGE_LIMIT);
        }
        bound_messages(&mut s);
        s
    }

    #[test]
    fn stages_carry_their_phase_bytes_and_times() {
        let progress = serde_json::json!({"startedAtUnix": 1_800_000_000.0, "stages": [
            {"name": "source", "tasksDone": 20, "tasksTotal": 20, "bytesOut": 4_000_000,
             "startSeconds": 0.25, "endSeconds": 3.5},
            {"name": "series", "tasksDone": 3, "tasksTotal": 50, "bytesOut": 1200,
             "startSeconds": 2.0, "endSeconds": null},
            {"name": "power", "tasksDone": 0, "tasksTotal": 50, "bytesOut": 0,
             "startSeconds": null, "endSeconds": null}]});
        let o = Observed {
            pods: vec![running("aj-em", "coordinator")],
            created: 3,
            progress: snap(progress),
            unreadable: None,
            now: at(10),
        };
        let s = observe(&job(), &ArrayJobStatus::default(), &o);
        let phases: Vec<_> = s.stages.iter().map(|st| st.phase.as_deref()).collect();
        assert_eq!(
            phases,
            [Some("Succeeded"), Some("Running"), Some("Pending")]
        );
        assert_eq!(s.stages[0].bytes, 4_000_000);
        assert_eq!(s.stages[1].bytes, 1200);
        assert_eq!(
            s.stages[0].start_time.as_deref(),
            Some("2027-01-15T08:00:00.25Z")
        );
        assert_eq!(
            s.stages[0].completion_time.as_deref(),
            Some("2027-01-15T08:00:03.5Z")
        );
        assert_eq!(
            s.stages[1].start_time.as_deref(),
            Some("2027-01-15T08:00:02Z")
        );
        assert_eq!(s.stages[1].completion_time, None);
        assert_eq!(s.stages[2].start_time, None);
        assert_eq!(
            s.last_progress_time.as_deref(),
            Some("2027-01-15T08:00:10Z")
        );
    }

    #[test]
    fn a_job_without_a_finished_task_for_its_deadline_is_stalled_and_recovers() {
        let snapshot = |done: i64| serde_json::json!({"stages": [{"name": "source", "tasksDone": done, "tasksTotal": 40}]});
        let seen = |done: i64, secs: i64| Observed {
            pods: vec![running("aj-em", "coordinator")],
            created: 3,
            progress: snap(snapshot(done)),
            unreadable: None,
            now: at(secs),
        };
        let first = observe(&job(), &ArrayJobStatus::default(), &seen(5, 0));
        assert_eq!(condition(&first, "Progressing").status, "True");
        // Nothing finished for 599 s: still Progressing; at 600 s (the default deadline): Stalled.
        let quiet = observe(&job(), &first, &seen(5, 599));
        assert_eq!(condition(&quiet, "Progressing").status, "True");
        assert!(quiet.conditions.iter().all(|c| c.type_ != "Stalled"));
        let stalled = observe(&job(), &quiet, &seen(5, 600));
        let c = condition(&stalled, "Stalled");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "ProgressDeadlineExceeded")
        );
        assert_eq!(
            c.message,
            "no task finished for 600 s, over progressDeadlineSeconds 600 (stage source, 5/40 tasks done)"
        );
        assert_eq!(condition(&stalled, "Progressing").status, "False");
        assert_eq!(stalled.phase.as_deref(), Some("Running"));
        // A longer deadline in the spec: not stalled yet.
        let mut patient = job();
        patient.spec.progress_deadline_seconds = Some(900);
        let s = observe(&patient, &quiet, &seen(5, 600));
        assert!(s.conditions.iter().all(|c| c.type_ != "Stalled"));
        // A task finishes: Stalled goes False and Progressing True again.
        let moving = observe(&job(), &stalled, &seen(6, 610));
        assert_eq!(condition(&moving, "Stalled").status, "False");
        assert_eq!(condition(&moving, "Progressing").status, "True");
        assert_eq!(moving.last_progress_time, Some(at(610).to_string()));
    }

    #[test]
    fn times_past_what_a_timestamp_holds_are_left_unset_and_a_refused_answer_is_a_condition() {
        // Values no parser lets through, straight into the status rules: no panic, no time.
        let extreme = Progress {
            started_at: Some(Timestamp::MAX),
            failure: None,
            stages: vec![crate::progress::Stage {
                name: "source".into(),
                tasks_done: 4,
                tasks_total: 4,
                bytes: i64::MAX,
                start: Some(SignedDuration::MAX),
                end: Some(SignedDuration::MAX),
            }],
        };
        let o = Observed {
            pods: vec![running("aj-em", "coordinator")],
            created: 3,
            progress: Some(extreme),
            unreadable: None,
            now: at(0),
        };
        let s = observe(&job(), &ArrayJobStatus::default(), &o);
        assert_eq!(s.stages[0].phase.as_deref(), Some("Succeeded"));
        assert_eq!(
            (
                s.stages[0].start_time.as_deref(),
                s.stages[0].completion_time.as_deref()
            ),
            (None, None)
        );
        // The issue's answer, {"startSeconds": 1e300} in a stage: refused with the field, the job goes on.
        let hostile = br#"{"phase": "running", "startedAtUnix": 1800000000, "stages": [
            {"name": "source", "tasksDone": 1, "tasksTotal": 4, "startSeconds": 1e300}]}"#;
        let e = crate::progress::parse_progress(hostile).expect_err("refused");
        let o = Observed {
            pods: vec![running("aj-em", "coordinator")],
            created: 3,
            progress: None,
            unreadable: Some(e),
            now: at(1),
        };
        let s = observe(&job(), &s, &o);
        let c = condition(&s, "ProgressUnreadable");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "InvalidProgress")
        );
        assert_eq!(
            c.message,
            "the coordinator's progress answer was refused: stages[0].startSeconds: 1e300 is not between 0 and 315576000 seconds"
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.stages.len(), 1, "the last good stages are kept");
        // A good answer again: the condition goes false.
        let o = Observed {
            pods: vec![running("aj-em", "coordinator")],
            created: 3,
            progress: snap(
                serde_json::json!({"stages": [{"name": "source", "tasksDone": 2, "tasksTotal": 4}]}),
            ),
            unreadable: None,
            now: at(2),
        };
        let s = observe(&job(), &s, &o);
        assert_eq!(condition(&s, "ProgressUnreadable").status, "False");
        assert_eq!(s.progress.as_deref(), Some("2/4"));
    }
}
