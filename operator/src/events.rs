//! Kubernetes Events of a job (`kubectl describe arrayjob`, `kubectl get events`): what changed between the
//! status last written and the next one. A pure function, so the rules are unit-tested; the controller
//! publishes the notes once the status that holds the change is written.

use crate::v1alpha1::{ArrayJobStatus, StageStatus};

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// A `Warning` rather than a `Normal` event.
    pub warning: bool,
    /// CamelCase reason (`StageSucceeded`, `Stalled`...).
    pub reason: String,
    /// What happened, in a sentence.
    pub text: String,
}

impl Note {
    /// A `Normal` event.
    pub fn normal(reason: &str, text: String) -> Note {
        Note {
            warning: false,
            reason: reason.into(),
            text,
        }
    }

    /// A `Warning` event.
    pub fn warning(reason: &str, text: String) -> Note {
        Note {
            warning: true,
            reason: reason.into(),
            text,
        }
    }
}

/// The events of going from `before` to `after`: phase changes, stages started and finished, worker pods
/// replaced, a condition `Stalled`, `Failed`, `ProgressUnreadable` or `CleanupFailed` turning true.
pub fn between(before: &ArrayJobStatus, after: &ArrayJobStatus) -> Vec<Note> {
    let mut notes = Vec::new();
    if after.phase.as_deref() == Some("Running") && before.phase.as_deref() != Some("Running") {
        notes.push(Note::normal("Running", "the coordinator is running".into()));
    }
    for st in &after.stages {
        let old = before.stages.iter().find(|b| b.name == st.name);
        notes.extend(stage_change(old, st));
    }
    let lost = |s: &ArrayJobStatus| s.worker_pods.as_ref().map_or(0, |w| w.lost);
    if lost(after) > lost(before) {
        notes.push(Note::warning(
            "WorkerReplaced",
            format!(
                "{} worker pod(s) lost and replaced, {} in all; their tasks are recomputed",
                lost(after) - lost(before),
                lost(after)
            ),
        ));
    }
    for type_ in ["Stalled", "Failed", "ProgressUnreadable", "CleanupFailed"] {
        if let Some(c) = turned_true(before, after, type_) {
            notes.push(Note::warning(&c.reason, c.message.clone()));
        }
    }
    if turned_true(before, after, "Complete").is_some() {
        let out = after.output.as_deref().unwrap_or("the output location");
        notes.push(Note::normal(
            "Succeeded",
            format!("every output is published under {out}"),
        ));
    }
    notes
}

/// A stage that started or finished.
fn stage_change(old: Option<&StageStatus>, new: &StageStatus) -> Option<Note> {
    let was = old.and_then(|o| o.phase.as_deref()).unwrap_or("Pending");
    match (was, new.phase.as_deref()?) {
        ("Pending", "Running") => Some(Note::normal(
            "StageStarted",
            format!("stage {} started ({} tasks)", new.name, new.tasks_total),
        )),
        ("Pending" | "Running", "Succeeded") => Some(Note::normal(
            "StageSucceeded",
            format!(
                "stage {}: {} tasks done, {} bytes written",
                new.name, new.tasks_total, new.bytes
            ),
        )),
        _ => None,
    }
}

fn turned_true<'a>(
    before: &ArrayJobStatus,
    after: &'a ArrayJobStatus,
    type_: &str,
) -> Option<&'a crate::v1alpha1::Condition> {
    let is_true = |s: &ArrayJobStatus| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    };
    let c = after.conditions.iter().find(|c| c.type_ == type_)?;
    (is_true(after) && !is_true(before)).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{Condition, WorkerCounts};

    fn stage(name: &str, phase: &str, done: i64) -> StageStatus {
        StageStatus {
            name: name.into(),
            phase: Some(phase.into()),
            tasks_done: done,
            tasks_total: 10,
            bytes: 2048,
            ..Default::default()
        }
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn phase_stage_and_worker_changes_are_events() {
        let before = ArrayJobStatus {
            phase: Some("Pending".into()),
            stages: vec![stage("source", "Running", 4), stage("series", "Pending", 0)],
            worker_pods: Some(WorkerCounts {
                lost: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let after = ArrayJobStatus {
            phase: Some("Running".into()),
            stages: vec![
                stage("source", "Succeeded", 10),
                stage("series", "Running", 1),
            ],
            worker_pods: Some(WorkerCounts {
                lost: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let notes = between(&before, &after);
        let said: Vec<(&str, &str)> = notes
            .iter()
            .map(|n| (n.reason.as_str(), n.text.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                ("Running", "the coordinator is running"),
                (
                    "StageSucceeded",
                    "stage source: 10 tasks done, 2048 bytes written"
                ),
                ("StageStarted", "stage series started (10 tasks)"),
                (
                    "WorkerReplaced",
                    "2 worker pod(s) lost and replaced, 3 in all; their tasks are recomputed"
                ),
            ]
        );
        assert_eq!(
            notes.iter().map(|n| n.warning).collect::<Vec<_>>(),
            [false, false, false, true]
        );
        // Nothing changed: nothing to say.
        assert!(between(&after, &after).is_empty());
    }

    #[test]
    fn stalled_failed_and_complete_are_events_once() {
        let before = ArrayJobStatus::default();
        let stalled = ArrayJobStatus {
            conditions: vec![condition(
                "Stalled",
                "True",
                "ImagePullFailed",
                "pod aj-em-worker-0: ErrImagePull: no such image",
            )],
            ..Default::default()
        };
        let notes = between(&before, &stalled);
        assert_eq!(
            notes,
            [Note::warning(
                "ImagePullFailed",
                "pod aj-em-worker-0: ErrImagePull: no such image".into()
            )]
        );
        assert!(between(&stalled, &stalled).is_empty());
        let failed = ArrayJobStatus {
            conditions: vec![condition(
                "Failed",
                "True",
                "S3AccessDenied",
                "access denied (HTTP 403 AccessDenied)",
            )],
            ..Default::default()
        };
        assert_eq!(between(&before, &failed)[0].reason, "S3AccessDenied");
        let done = ArrayJobStatus {
            output: Some("s3://b/outputs/lab/em".into()),
            conditions: vec![condition("Complete", "True", "Succeeded", "")],
            ..Default::default()
        };
        assert_eq!(
            between(&before, &done),
            [Note::normal(
                "Succeeded",
                "every output is published under s3://b/outputs/lab/em".into()
            )]
        );
    }
}
