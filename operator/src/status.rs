//! The status of an ArrayJob from what the reconciler observed (its pods, the coordinator's progress
//! snapshot): a pure function, so its rules are unit-tested. Its size is bounded: one entry per stage and per
//! condition, whatever the number of tasks.

use k8s_openapi::api::core::v1::Pod;
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
}

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

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Sets condition `type_` in `conds`, keeping its transition time when its status does not change.
fn set(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" };
    let old = conds.iter().position(|c| c.type_ == type_);
    let since = old
        .map(|i| &conds[i])
        .filter(|c| c.status == status)
        .map_or_else(now, |c| c.last_transition_time.clone());
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
    );
    s
}

/// Ends the job: phase, message, completion time, and the conditions of its outcome (`Complete` or
/// `Failed` true with `reason`, `Progressing` false, a `Stalled` there before cleared).
fn end(s: &mut ArrayJobStatus, succeeded: bool, reason: &str, msg: &str) {
    let generation = s.observed_generation;
    s.phase = Some(if succeeded { "Succeeded" } else { "Failed" }.into());
    s.message = Some(msg.to_owned());
    s.completion_time.get_or_insert_with(now);
    let outcome = if succeeded { "Complete" } else { "Failed" };
    set(&mut s.conditions, outcome, true, reason, msg, generation);
    set(
        &mut s.conditions,
        "Progressing",
        false,
        reason,
        msg,
        generation,
    );
    if s.conditions.iter().any(|c| c.type_ == "Stalled") {
        set(&mut s.conditions, "Stalled", false, reason, "", generation);
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

/// Per-stage progress and the totals, from the coordinator's snapshot.
fn stages(progress: &serde_json::Value) -> Vec<StageStatus> {
    progress["stages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| StageStatus {
                    name: s["name"].as_str().unwrap_or_default().to_owned(),
                    tasks_done: s["tasksDone"].as_i64().unwrap_or(0),
                    tasks_total: s["tasksTotal"].as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The next status of a live job from what was observed.
pub fn observe(job: &ArrayJob, current: &ArrayJobStatus, o: &Observed) -> ArrayJobStatus {
    let mut s = current.clone();
    let generation = job.metadata.generation;
    s.observed_generation = generation;
    s.output = desired::output_uri(job).ok();
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
    if let Some(p) = &o.progress {
        s.stages = stages(p);
        let (done, total) = s
            .stages
            .iter()
            .fold((0, 0), |(d, t), st| (d + st.tasks_done, t + st.tasks_total));
        s.progress = Some(format!("{done}/{total}"));
        s.current_stage = s
            .stages
            .iter()
            .find(|st| st.tasks_done < st.tasks_total)
            .map(|st| st.name.clone());
        if let Some(f) = p["failure"].as_str() {
            s.message = Some(f.to_owned());
        }
    }
    let coordinator = o.pods.iter().find(|p| role(p) == "coordinator");
    match coordinator.and_then(coordinator_end) {
        Some((true, msg)) => {
            s.current_stage = None;
            for st in &mut s.stages {
                st.tasks_done = st.tasks_total;
            }
            if let Some((_, total)) = s.progress.as_deref().and_then(|p| p.split_once('/')) {
                s.progress = Some(format!("{total}/{total}"));
            }
            end(&mut s, true, "Succeeded", &msg);
            return s;
        }
        Some((false, msg)) => {
            // The coordinator's own failure, when its snapshot said it, is the better message.
            let msg = s
                .message
                .clone()
                .filter(|m| !m.is_empty() && current.phase.as_deref() == Some("Running"))
                .map_or(msg.clone(), |f| format!("{f} ({msg})"));
            end(&mut s, false, "CoordinatorFailed", &msg);
            return s;
        }
        None => {}
    }
    let running = coordinator.is_some_and(|p| pod_phase(p) == "Running");
    s.phase = Some(if running { "Running" } else { "Pending" }.into());
    if running {
        s.start_time.get_or_insert_with(now);
    }
    match o.pods.iter().filter(|p| !pod_gone(p)).find_map(blocked) {
        Some((reason, msg)) => {
            s.message = Some(msg.clone());
            set(&mut s.conditions, "Stalled", true, reason, &msg, generation);
            set(
                &mut s.conditions,
                "Progressing",
                false,
                reason,
                &msg,
                generation,
            );
        }
        None => {
            let msg = match (&s.current_stage, &s.progress) {
                (Some(st), Some(p)) => format!("stage {st}, {p} tasks done"),
                _ => "starting the coordinator and workers".to_owned(),
            };
            if s.conditions.iter().any(|c| c.type_ == "Stalled") {
                set(
                    &mut s.conditions,
                    "Stalled",
                    false,
                    "Scheduled",
                    "",
                    generation,
                );
            }
            set(
                &mut s.conditions,
                "Progressing",
                true,
                if running { "Running" } else { "Starting" },
                &msg,
                generation,
            );
        }
    }
    s
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
            },
        );
        let c = condition(&s, "Failed");
        assert_eq!(c.reason, "CoordinatorFailed");
        assert_eq!(
            c.message,
            "the coordinator exited with code 1: error: S3 GetObject s3://data/x: AccessDenied"
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
            .map(|i| serde_json::json!({"name": format!("stage-{i}"), "tasksDone": 50_000, "tasksTotal": 100_000}))
            .collect();
        let pods: Vec<Pod> = (0..200)
            .map(|i| running(&format!("aj-em-worker-{i}"), "worker"))
            .collect();
        let o = Observed {
            pods,
            created: 100_000,
            progress: Some(serde_json::json!({"stages": stages})),
        };
        let s = observe(&job(), &ArrayJobStatus::default(), &o);
        let bytes = serde_json::to_vec(&s).expect("json").len();
        assert!(bytes < 16 * 1024, "{bytes} bytes");
        assert_eq!(s.progress.as_deref(), Some("600000/1200000"));
    }
}
