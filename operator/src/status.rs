//! The status of an ArrayJob from what the reconciler observed (its pods, the coordinator's progress
//! snapshot): a pure function, so its rules are unit-tested. Its size is bounded: one entry per stage and per
//! condition, whatever the number of tasks.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::controller::role;
use crate::desired;
use crate::v1alpha1::{ArrayJob, ArrayJobStatus, Condition, StageStatus, WorkerCounts};

/// What one reconcile pass saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The job's pods.
    pub pods: Vec<Pod>,
    /// Worker pods created in all (replacements included).
    pub created: i32,
    /// The coordinator's progress snapshot, when it answered.
    pub progress: Option<serde_json::Value>,
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

/// The status of a job whose spec the operator refuses (`problem` names the field): Failed, for good.
pub fn invalid(job: &ArrayJob, current: &ArrayJobStatus, problem: &str) -> ArrayJobStatus {
    let mut s = current.clone();
    s.observed_generation = job.metadata.generation;
    end(
        &mut s,
        false,
        "InvalidSpec",
        &format!("invalid spec: {problem}"),
        Timestamp::now(),
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

/// Per-stage progress from the coordinator's snapshot (or a published summary.json, whose stages have the same
/// fields). Times are `startSeconds`/`endSeconds` after the job's start, `startedAtUnix` (the summary has none:
/// then the job's `startTime`); a stage's times, once set, are kept.
fn stages(progress: &serde_json::Value, current: &ArrayJobStatus) -> Vec<StageStatus> {
    let base = progress["startedAtUnix"]
        .as_f64()
        .and_then(|t| Timestamp::from_millisecond((t * 1000.0) as i64).ok())
        .or_else(|| current.start_time.as_deref()?.parse().ok());
    let at = |seconds: &serde_json::Value| {
        let t = base? + SignedDuration::from_millis((seconds.as_f64()? * 1000.0) as i64);
        Some(t.to_string())
    };
    let Some(list) = progress["stages"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|st| {
            let name = st["name"].as_str().unwrap_or_default().to_owned();
            let before = current.stages.iter().find(|b| b.name == name);
            let done = st["tasksDone"].as_i64().unwrap_or(0);
            let total = st["tasksTotal"].as_i64().unwrap_or(0);
            let started = done > 0 || !st["startSeconds"].is_null();
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
                bytes: st["bytesOut"].as_i64().unwrap_or(0),
                start_time: keep(|b| &b.start_time).or_else(|| at(&st["startSeconds"])),
                completion_time: keep(|b| &b.completion_time).or_else(|| {
                    (phase == "Succeeded")
                        .then(|| at(&st["endSeconds"]))
                        .flatten()
                }),
                name,
            }
        })
        .collect()
}

/// Tasks done over all stages.
fn tasks_done(stages: &[StageStatus]) -> i64 {
    stages.iter().map(|st| st.tasks_done).sum()
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
fn take_progress(
    s: &mut ArrayJobStatus,
    current: &ArrayJobStatus,
    p: &serde_json::Value,
    at: Timestamp,
) {
    s.stages = stages(p, current);
    let done = tasks_done(&s.stages);
    let total: i64 = s.stages.iter().map(|st| st.tasks_total).sum();
    s.progress = Some(format!("{done}/{total}"));
    s.current_stage = s
        .stages
        .iter()
        .find(|st| st.tasks_done < st.tasks_total)
        .map(|st| st.name.clone());
    if done > tasks_done(&current.stages) {
        s.last_progress_time = Some(at.to_string());
    }
    if let Some(f) = p["failure"].as_str() {
        s.message = Some(f.to_owned());
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
            progress: Some(progress),
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
            progress: Some(serde_json::json!({"stages": stages})),
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
            progress: Some(progress),
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
            progress: Some(snapshot(done)),
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
}
