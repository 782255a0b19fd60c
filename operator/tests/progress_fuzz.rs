//! Property tests of what the operator reads from a job's pods (the coordinator's progress answer and a
//! published `summary.json`), which run the tenant's image and may say anything: whatever the bytes, the
//! readers answer or refuse without a panic, what they accept is within the documented bounds, and turning an
//! accepted answer into the job's status (with jiff timestamps from the coordinator's clock) never panics
//! either, at any "now". `PROPTEST_CASES` sets the cases per property (default 256).

use arrayjob_operator::progress::{
    BODY_LIMIT, MAX_NAME, MAX_SECONDS, MAX_STAGES, MAX_TASKS, Progress, parse_progress,
    parse_summary,
};
use arrayjob_operator::status::{Observed, observe};
use arrayjob_operator::v1alpha1::{ArrayJob, ArrayJobStatus};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

/// The example a user applies: the job whose status the answers feed.
fn job() -> ArrayJob {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart-k8s.yaml"),
    )
    .expect("the example");
    serde_yaml::from_str(&text).expect("an ArrayJob")
}

/// Numbers a hostile coordinator would try, as JSON.
fn number() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(-1e300)),
        Just(serde_json::json!(f64::MAX)),
        Just(serde_json::json!(f64::MIN_POSITIVE)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(0)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(i64::MIN)),
        Just(serde_json::json!("NaN")),
        Just(serde_json::json!(null)),
        any::<f64>()
            .prop_filter("finite for JSON", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        (0u64..1000).prop_map(|n| serde_json::json!(n)),
    ]
}

fn name() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        "[a-z-]{0,12}".prop_map(|s| serde_json::json!(s)),
        Just(serde_json::json!("x".repeat(MAX_NAME + 1))),
        Just(serde_json::json!(7)),
    ]
}

fn stage() -> impl Strategy<Value = serde_json::Value> {
    (
        name(),
        number(),
        number(),
        number(),
        number(),
        number(),
        number(),
    )
        .prop_map(|(name, done, total, bytes_out, start, end, busy)| {
            serde_json::json!({
                "name": name, "kind": "load", "tasksDone": done, "tasksTotal": total,
                "bytesIn": bytes_out.clone(), "bytesOut": bytes_out, "seconds": busy.clone(),
                "startSeconds": start, "endSeconds": end, "busySeconds": busy,
            })
        })
}

fn snapshot() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::sample::select(vec!["running", "finished", "failed", ""]),
        number(),
        number(),
        prop::collection::vec(stage(), 0..6),
        prop::option::of("[ -~]{0,40}"),
    )
        .prop_map(|(phase, started, elapsed, stages, failure)| {
            serde_json::json!({
                "phase": phase, "failure": failure, "startedAtUnix": started, "elapsedSeconds": elapsed,
                "stages": stages,
            })
        })
}

/// "Now" from the operator's clock: any representable instant.
fn now() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        Just(Timestamp::MIN),
        Just(Timestamp::MAX),
        Just(Timestamp::UNIX_EPOCH),
        (-377_705_116_800i64..253_402_207_200i64)
            .prop_map(|s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)),
    ]
}

/// The bounds an accepted answer is within.
fn assert_bounded(p: &Progress) -> Result<(), TestCaseError> {
    prop_assert!(p.stages.len() <= MAX_STAGES);
    for s in &p.stages {
        prop_assert!(s.name.len() <= MAX_NAME);
        prop_assert!(0 <= s.tasks_done && s.tasks_done <= s.tasks_total);
        prop_assert!(s.tasks_total as u64 <= MAX_TASKS);
        prop_assert!(s.bytes >= 0);
        for d in [s.start, s.end].into_iter().flatten() {
            prop_assert!(d.as_secs_f64().abs() <= MAX_SECONDS);
        }
    }
    Ok(())
}

fn status_of(p: Progress, now: Timestamp) -> ArrayJobStatus {
    let o = Observed {
        pods: Vec::new(),
        created: 0,
        progress: Some(p),
        unreadable: None,
        now,
    };
    observe(&job(), &ArrayJobStatus::default(), &o)
}

proptest! {
    #[test]
    fn any_bytes_are_answered_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_progress(&bytes);
        let _ = parse_summary(&bytes);
    }

    #[test]
    fn hostile_snapshots_are_refused_or_bounded_and_never_crash_the_status(s in snapshot(), at in now()) {
        let body = serde_json::to_vec(&s).expect("json");
        if let Ok(p) = parse_progress(&body) {
            assert_bounded(&p)?;
            let status = status_of(p, at);
            prop_assert!(status.stages.len() <= MAX_STAGES);
        }
    }

    #[test]
    fn hostile_summaries_are_refused_or_bounded(stages in prop::collection::vec(stage(), 0..6), at in now()) {
        let body = serde_json::to_vec(&serde_json::json!({"job": "j", "stages": stages})).expect("json");
        if let Ok(p) = parse_summary(&body) {
            assert_bounded(&p)?;
            let _ = status_of(p, at);
        }
    }
}

#[test]
fn the_issue_s_answer_is_refused_naming_the_field() {
    let e = parse_progress(br#"{"phase": "running", "startSeconds": 1e300, "stages": [{"name": "s", "tasksDone": 0, "tasksTotal": 1, "startSeconds": 1e300}]}"#)
        .expect_err("refused");
    assert!(e.to_string().starts_with("stages[0].startSeconds: "), "{e}");
    let big = vec![b' '; BODY_LIMIT + 1];
    assert_eq!(
        parse_progress(&big).expect_err("refused").reason(),
        "ProgressTooLarge"
    );
}
