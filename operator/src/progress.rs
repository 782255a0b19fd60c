//! What a job's pods tell the operator, read as untrusted input: the coordinator's answer to
//! `GET /v1/progress` (the runtime's [`ProgressSnapshot`]) and a finished job's `summary.json` (the engine's
//! [`NodeSnapshot`] per stage). The coordinator runs the tenant's image, so either may be hostile: a body is
//! read up to [`BODY_LIMIT`] bytes within [`READ_TIMEOUT`], and every number is checked before it becomes a
//! count, a duration or a timestamp ([`MAX_STAGES`], [`MAX_TASKS`], [`MAX_SECONDS`]...). A refused answer is a
//! [`ProgressError`] naming the field; the status then says so (condition `ProgressUnreadable`) and the
//! operator goes on with what the pods show.
//!
//! How the request is made (address, authentication) is the controller's business: this module only reads
//! the answer.

use std::time::Duration;

use arrayjob_spec::progress::{NodeSnapshot, ProgressSnapshot, StageProgress};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The largest progress answer or `summary.json` read, in bytes (a job of 12 stages and 1000 workers answers
/// about 600 KB).
pub const BODY_LIMIT: usize = 4 << 20;
/// How long reading a progress answer may take, from the request to its last byte.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// The most stages a snapshot may list (the status holds one entry per stage).
pub const MAX_STAGES: usize = 256;
/// The longest stage name taken, in bytes.
pub const MAX_NAME: usize = 253;
/// The most tasks a stage may count (so the sum over [`MAX_STAGES`] stages fits an `i64`).
pub const MAX_TASKS: u64 = 1 << 40;
/// The latest a stage's start or end may lie after the job's start: about 10 years, in seconds.
pub const MAX_SECONDS: f64 = 315_576_000.0;
/// The latest start of a job taken, in seconds since the Unix epoch (9999-12-31T23:59:59Z).
pub const MAX_UNIX_SECONDS: f64 = 253_402_300_799.0;

/// A job's progress, every value checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// When the job started (the coordinator's clock); `None` when not said (a summary).
    pub started_at: Option<Timestamp>,
    /// Why the job failed, when it did.
    pub failure: Option<String>,
    /// Per stage, source first.
    pub stages: Vec<Stage>,
}

/// One stage's progress, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stage {
    /// Stage name.
    pub name: String,
    /// Tasks done (at most `tasks_total`).
    pub tasks_done: i64,
    /// Tasks in all (at most [`MAX_TASKS`]).
    pub tasks_total: i64,
    /// Bytes its tasks wrote.
    pub bytes: i64,
    /// When its first task started, after the job's start.
    pub start: Option<SignedDuration>,
    /// When its last task ended, after the job's start.
    pub end: Option<SignedDuration>,
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgressError {
    /// The body is longer than the limit.
    #[error("the answer is larger than {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The body did not come whole in time.
    #[error("the answer did not come whole within {0:?}")]
    Timeout(Duration),
    /// The connection failed while reading the body.
    #[error("reading the answer: {0}")]
    Read(String),
    /// The body is not the expected JSON document.
    #[error("not a progress document: {0}")]
    Parse(String),
    /// A value is out of its range.
    #[error("{field}: {message}")]
    Invalid {
        /// JSON path of the value, e.g. `stages[0].startSeconds`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ProgressError {
    /// The condition reason: `ProgressTooLarge` or `InvalidProgress`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProgressError::TooLarge { .. } => "ProgressTooLarge",
            _ => "InvalidProgress",
        }
    }

    fn invalid(field: String, message: impl Into<String>) -> ProgressError {
        ProgressError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// The body of `answer`, at most `limit` bytes, read within [`READ_TIMEOUT`] (the client's own timeout
/// counts from the request; this one bounds a body that trickles).
///
/// # Errors
/// [`ProgressError::TooLarge`] as soon as the announced or received length passes `limit` (nothing more is
/// read), [`ProgressError::Timeout`], [`ProgressError::Read`].
pub async fn read_body(
    mut answer: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ProgressError> {
    if answer.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ProgressError::TooLarge { limit });
    }
    let read = async move {
        let mut body = Vec::new();
        while let Some(piece) = answer
            .chunk()
            .await
            .map_err(|e| ProgressError::Read(e.to_string()))?
        {
            if body.len().saturating_add(piece.len()) > limit {
                return Err(ProgressError::TooLarge { limit });
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| ProgressError::Timeout(READ_TIMEOUT))?
}

/// The coordinator's progress answer, parsed as the runtime's [`ProgressSnapshot`] and checked.
///
/// # Errors
/// [`ProgressError::TooLarge`], [`ProgressError::Parse`] (serde's message, with line and column),
/// [`ProgressError::Invalid`] naming the first value out of range.
pub fn parse_progress(body: &[u8]) -> Result<Progress, ProgressError> {
    if body.len() > BODY_LIMIT {
        return Err(ProgressError::TooLarge { limit: BODY_LIMIT });
    }
    let snapshot: ProgressSnapshot =
        serde_json::from_slice(body).map_err(|e| ProgressError::Parse(e.to_string()))?;
    check_snapshot(&snapshot)
}

/// The stages of a published `summary.json` (the engine's [`NodeSnapshot`]s), checked.
///
/// # Errors
/// As [`parse_progress`].
pub fn parse_summary(body: &[u8]) -> Result<Progress, ProgressError> {
    /// The part of `summary.json` the operator reads.
    #[derive(serde::Deserialize)]
    struct Summary {
        stages: Vec<NodeSnapshot>,
    }
    if body.len() > BODY_LIMIT {
        return Err(ProgressError::TooLarge { limit: BODY_LIMIT });
    }
    let summary: Summary =
        serde_json::from_slice(body).map_err(|e| ProgressError::Parse(e.to_string()))?;
    check_count("stages", summary.stages.len())?;
    let stages = summary
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let at = |f: &str| format!("stages[{i}].{f}");
            let (done, total) = tasks(&at, s.tasks_done, s.tasks_total)?;
            Ok(Stage {
                name: name(&at("name"), &s.name)?,
                tasks_done: done,
                tasks_total: total,
                bytes: bytes(&at("bytesOut"), s.bytes_out)?,
                start: Some(seconds(&at("startSeconds"), s.start_seconds)?),
                end: Some(seconds(&at("endSeconds"), s.end_seconds)?),
            })
        })
        .collect::<Result<Vec<_>, ProgressError>>()?;
    Ok(Progress {
        started_at: None,
        failure: None,
        stages,
    })
}

/// Checks every value of `s` the status uses.
fn check_snapshot(s: &ProgressSnapshot) -> Result<Progress, ProgressError> {
    check_count("stages", s.stages.len())?;
    let started_at = started(s.started_at_unix)?;
    let stages = s
        .stages
        .iter()
        .enumerate()
        .map(|(i, st)| check_stage(i, st))
        .collect::<Result<Vec<_>, ProgressError>>()?;
    Ok(Progress {
        started_at,
        failure: s.failure.clone(),
        stages,
    })
}

fn check_stage(i: usize, st: &StageProgress) -> Result<Stage, ProgressError> {
    let at = |f: &str| format!("stages[{i}].{f}");
    let (done, total) = tasks(&at, st.tasks_done as u64, st.tasks_total as u64)?;
    let optional = |f: &str, v: Option<f64>| v.map(|v| seconds(&at(f), v)).transpose();
    Ok(Stage {
        name: name(&at("name"), &st.name)?,
        tasks_done: done,
        tasks_total: total,
        bytes: bytes(&at("bytesOut"), st.bytes_out)?,
        start: optional("startSeconds", st.start_seconds)?,
        end: optional("endSeconds", st.end_seconds)?,
    })
}

fn check_count(field: &str, n: usize) -> Result<(), ProgressError> {
    if n > MAX_STAGES {
        return Err(ProgressError::invalid(
            field.to_owned(),
            format!("{n} stages, more than the {MAX_STAGES} taken"),
        ));
    }
    Ok(())
}

/// The job's start: `None` for 0 (not said), else a time between the epoch and the year 9999.
fn started(unix: f64) -> Result<Option<Timestamp>, ProgressError> {
    if unix == 0.0 {
        return Ok(None);
    }
    if !(unix.is_finite() && (0.0..=MAX_UNIX_SECONDS).contains(&unix)) {
        return Err(ProgressError::invalid(
            "startedAtUnix".into(),
            format!(
                "{} is not a time between 1970 and 9999 (seconds since the Unix epoch)",
                show(unix)
            ),
        ));
    }
    // In range, so the cast is exact to the millisecond and the timestamp exists.
    let millis = (unix * 1000.0).round() as i64;
    Timestamp::from_millisecond(millis)
        .map(Some)
        .map_err(|e| ProgressError::invalid("startedAtUnix".into(), e.to_string()))
}

fn tasks(at: &dyn Fn(&str) -> String, done: u64, total: u64) -> Result<(i64, i64), ProgressError> {
    if total > MAX_TASKS {
        return Err(ProgressError::invalid(
            at("tasksTotal"),
            format!("{total} is more than the {MAX_TASKS} tasks taken"),
        ));
    }
    if done > total {
        return Err(ProgressError::invalid(
            at("tasksDone"),
            format!("{done} is more than tasksTotal {total}"),
        ));
    }
    // Both at most MAX_TASKS (2^40): they fit.
    Ok((done as i64, total as i64))
}

fn bytes(field: &str, n: u64) -> Result<i64, ProgressError> {
    i64::try_from(n).map_err(|_| {
        ProgressError::invalid(field.to_owned(), format!("{n} is more than {}", i64::MAX))
    })
}

fn name(field: &str, name: &str) -> Result<String, ProgressError> {
    if name.len() > MAX_NAME {
        return Err(ProgressError::invalid(
            field.to_owned(),
            format!("{} bytes, more than {MAX_NAME}", name.len()),
        ));
    }
    Ok(name.to_owned())
}

/// Seconds after the job's start: finite, from 0 to [`MAX_SECONDS`].
fn seconds(field: &str, s: f64) -> Result<SignedDuration, ProgressError> {
    if !(s.is_finite() && (0.0..=MAX_SECONDS).contains(&s)) {
        return Err(ProgressError::invalid(
            field.to_owned(),
            format!("{} is not between 0 and {MAX_SECONDS} seconds", show(s)),
        ));
    }
    SignedDuration::try_from_secs_f64(s)
        .map_err(|e| ProgressError::invalid(field.to_owned(), e.to_string()))
}

/// A number as a message shows it: `1e300` rather than 301 digits.
fn show(v: f64) -> String {
    if v.abs() < 1e16 {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(extra: &str) -> String {
        format!(
            r#"{{"phase": "running", "startedAtUnix": 1800000000.5, "stages": [
            {{"name": "source", "tasksDone": 2, "tasksTotal": 4, "bytesOut": 10, "startSeconds": 0.5{extra}}}]}}"#
        )
    }

    fn refused(body: &str) -> String {
        match parse_progress(body.as_bytes()) {
            Ok(p) => panic!("accepted {body}: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_snapshot_gives_checked_counts_and_times() {
        let p = parse_progress(stage(r#", "endSeconds": null"#).as_bytes()).expect("parses");
        assert_eq!(
            p.started_at,
            Some(Timestamp::from_millisecond(1_800_000_000_500).expect("time"))
        );
        assert_eq!(
            p.stages,
            [Stage {
                name: "source".into(),
                tasks_done: 2,
                tasks_total: 4,
                bytes: 10,
                start: Some(SignedDuration::from_millis(500)),
                end: None,
            }]
        );
        // What the runtime serialises, the operator reads back (the fields it does not use may be absent).
        let minimal = parse_progress(br#"{"phase": "running", "stages": []}"#).expect("minimal");
        assert_eq!(minimal, Progress::default());
    }

    #[test]
    fn hostile_numbers_are_refused_naming_the_field() {
        let cases = [
            (
                stage(r#", "endSeconds": 1e300"#),
                "stages[0].endSeconds: 1e300 is not between 0 and 315576000 seconds",
            ),
            (
                stage(r#", "endSeconds": -1"#),
                "stages[0].endSeconds: -1 is not between 0 and 315576000 seconds",
            ),
            (
                r#"{"phase": "running", "startedAtUnix": 1e300, "stages": []}"#.to_owned(),
                "startedAtUnix: 1e300 is not a time between 1970 and 9999 (seconds since the Unix epoch)",
            ),
            (
                r#"{"phase": "running", "startedAtUnix": -5, "stages": []}"#.to_owned(),
                "startedAtUnix: -5 is not a time between 1970 and 9999 (seconds since the Unix epoch)",
            ),
            (
                r#"{"phase": "running", "stages": [{"name": "s", "tasksDone": 9, "tasksTotal": 4}]}"#
                    .to_owned(),
                "stages[0].tasksDone: 9 is more than tasksTotal 4",
            ),
            (
                r#"{"phase": "running", "stages": [{"name": "s", "tasksDone": 0, "tasksTotal": 18446744073709551615}]}"#
                    .to_owned(),
                "stages[0].tasksTotal: 18446744073709551615 is more than the 1099511627776 tasks taken",
            ),
            (
                r#"{"phase": "running", "stages": [{"name": "s", "tasksDone": 0, "tasksTotal": 1, "bytesOut": 18446744073709551615}]}"#
                    .to_owned(),
                "stages[0].bytesOut: 18446744073709551615 is more than 9223372036854775807",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(refused(&body), want, "{body}");
        }
    }

    #[test]
    fn what_is_not_the_snapshot_is_refused_by_the_parser() {
        for (body, want) in [
            (
                stage(r#", "endSeconds": "NaN""#),
                "not a progress document: invalid type: string \"NaN\", expected f64",
            ),
            (
                stage(r#", "endSeconds": NaN"#),
                "not a progress document: expected value",
            ),
            (
                stage(r#", "endSeconds": 1e400"#),
                "not a progress document: number out of range",
            ),
            (
                r#"{"phase": "running", "stages": [{"name": "s", "tasksDone": -1, "tasksTotal": 4}]}"#
                    .to_owned(),
                "not a progress document: invalid value: integer `-1`, expected usize",
            ),
            (
                r#"{"phase": "running"}"#.to_owned(),
                "not a progress document: missing field `stages`",
            ),
            (
                format!(
                    r#"{{"phase": "running", "stages": {}1{}}}"#,
                    "[".repeat(200),
                    "]".repeat(200)
                ),
                "not a progress document: invalid type: sequence, expected a string at line 1 column 33",
            ),
        ] {
            let got = refused(&body);
            assert!(got.starts_with(want), "{body}: {got}");
        }
    }

    #[test]
    fn deep_nesting_in_a_field_the_operator_does_not_read_is_skipped_without_recursion() {
        // serde_json skips an unknown field iteratively: 100,000 levels do not overflow the stack.
        let body = format!(
            r#"{{"phase": "running", "stages": [], "extra": {}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(parse_progress(body.as_bytes()), Ok(Progress::default()));
    }

    #[test]
    fn huge_lists_and_names_are_refused() {
        let many: Vec<String> = (0..=MAX_STAGES)
            .map(|i| format!(r#"{{"name": "s{i}", "tasksDone": 0, "tasksTotal": 1}}"#))
            .collect();
        let body = format!(r#"{{"phase": "running", "stages": [{}]}}"#, many.join(","));
        assert_eq!(
            refused(&body),
            "stages: 257 stages, more than the 256 taken"
        );
        let long = format!(
            r#"{{"phase": "running", "stages": [{{"name": "{}", "tasksDone": 0, "tasksTotal": 1}}]}}"#,
            "n".repeat(300)
        );
        assert_eq!(refused(&long), "stages[0].name: 300 bytes, more than 253");
        // A body over the limit is refused before it is parsed.
        let big = format!(
            r#"{{"phase": "running", "stages": [], "steals": [{}]}}"#,
            vec!["{}"; BODY_LIMIT / 2].join(",")
        );
        assert_eq!(
            parse_progress(big.as_bytes()),
            Err(ProgressError::TooLarge { limit: BODY_LIMIT })
        );
    }

    #[test]
    fn a_summary_gives_its_stages() {
        let body =
            br#"{"job": "em", "stages": [{"name": "source", "kind": "source", "tasksTotal": 8,
            "tasksDone": 8, "bytesIn": 0, "bytesOut": 4096, "seconds": 1.0, "startSeconds": 0.0,
            "endSeconds": 1.25, "busySeconds": 2.0}]}"#;
        let p = parse_summary(body).expect("summary");
        assert_eq!(p.stages[0].end, Some(SignedDuration::from_millis(1250)));
        assert_eq!((p.stages[0].tasks_done, p.stages[0].bytes), (8, 4096));
        let hostile = br#"{"stages": [{"name": "source", "kind": "source", "tasksTotal": 8,
            "tasksDone": 8, "bytesIn": 0, "bytesOut": 4096, "seconds": 1.0, "startSeconds": 1e300,
            "endSeconds": 1.25, "busySeconds": 2.0}]}"#;
        assert_eq!(
            parse_summary(hostile).map_err(|e| e.to_string()),
            Err("stages[0].startSeconds: 1e300 is not between 0 and 315576000 seconds".to_owned())
        );
    }
}
