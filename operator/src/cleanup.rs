//! The finalizer's rules, as pure functions: whether to remove a deleted job's S3 scratch at all (the
//! `arrayjob.dev/skip-cleanup` annotation; which credentials), when to try again after a failure (exponential
//! back-off recorded in `status.cleanup`, condition `CleanupFailed`), and when to give up (after
//! `maxAttempts` failures or `giveUpAfterSeconds` since the first, or at once when the credentials are gone
//! for good): then the finalizer goes, the scratch stays, and an Event says where. Deleting an ArrayJob never
//! hangs on S3.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

pub use crate::settings::{CleanupSettings, MAX_BACKOFF};
use crate::v1alpha1::{ArrayJob, ArrayJobStatus, CleanupStatus};

/// The annotation that skips the S3 cleanup (`"true"`): the pods still go, the scratch stays.
pub const SKIP_ANNOTATION: &str = "arrayjob.dev/skip-cleanup";

/// Whether `job` asks not to have its scratch removed.
pub fn skip_requested(job: &ArrayJob) -> bool {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SKIP_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// How long to wait before the next attempt, `None` when it may be made now.
pub fn wait(status: &ArrayJobStatus, now: Timestamp) -> Option<Duration> {
    let next: Timestamp = status.cleanup.as_ref()?.next_attempt_time.parse().ok()?;
    let left = now.duration_until(next);
    (left > SignedDuration::ZERO).then(|| left.unsigned_abs())
}

/// What to do after an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterFailure {
    /// Try again after `after`; `status` records the failure.
    Retry {
        /// The status with `cleanup` and the `CleanupFailed` condition.
        status: Box<ArrayJobStatus>,
        /// The back-off.
        after: Duration,
    },
    /// Stop: remove the finalizer and leave the scratch; `why` says it for the Event.
    GiveUp {
        /// Attempts made, this one included.
        attempts: u32,
        /// Why it stops here.
        why: String,
    },
}

/// The wait after `attempts` failures: `backoff`, doubled each time, at most [`MAX_BACKOFF`].
pub fn backoff(settings: &CleanupSettings, attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX);
    settings.backoff.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The next step after an attempt failed with `error`; `permanent` when trying again cannot help (the
/// credentials Secret is gone).
pub fn after_failure(
    current: &ArrayJobStatus,
    settings: &CleanupSettings,
    error: &str,
    permanent: bool,
    now: Timestamp,
) -> AfterFailure {
    let before = current.cleanup.as_ref();
    let attempts = before
        .map_or(0, |c| u32::try_from(c.attempts).unwrap_or(0))
        .saturating_add(1);
    let first: Timestamp = before
        .and_then(|c| c.first_failure_time.parse().ok())
        .unwrap_or(now);
    let since = first.duration_until(now).unsigned_abs();
    if permanent {
        return AfterFailure::GiveUp {
            attempts,
            why: format!("{error} (trying again cannot help)"),
        };
    }
    if attempts >= settings.max_attempts || since >= settings.give_up_after {
        return AfterFailure::GiveUp {
            attempts,
            why: format!("{error} ({attempts} attempts over {} s)", since.as_secs()),
        };
    }
    let after = backoff(settings, attempts);
    let next = SignedDuration::try_from(after)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(now);
    let mut status = current.clone();
    status.cleanup = Some(CleanupStatus {
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        last_error: error.to_owned(),
        first_failure_time: first.to_string(),
        next_attempt_time: next.to_string(),
    });
    crate::status::set_condition(
        &mut status,
        "CleanupFailed",
        true,
        "S3CleanupFailed",
        &format!(
            "removing the job's S3 scratch failed ({attempts} of at most {} attempts; next in {} s): {error}",
            settings.max_attempts,
            after.as_secs()
        ),
        now,
    );
    AfterFailure::Retry {
        status: Box::new(status),
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    fn retry(a: AfterFailure) -> (ArrayJobStatus, Duration) {
        match a {
            AfterFailure::Retry { status, after } => (*status, after),
            AfterFailure::GiveUp { why, .. } => panic!("gave up: {why}"),
        }
    }

    #[test]
    fn failures_back_off_exponentially_and_give_up_after_max_attempts() {
        let settings = CleanupSettings {
            max_attempts: 4,
            ..CleanupSettings::default()
        };
        let (s1, after) = retry(after_failure(
            &ArrayJobStatus::default(),
            &settings,
            "S3 DeleteObjects s3://b/scratch/em/: connection refused",
            false,
            at(0),
        ));
        assert_eq!(after, Duration::from_secs(5));
        let c = s1.cleanup.clone().expect("cleanup");
        assert_eq!(c.attempts, 1);
        assert_eq!(c.first_failure_time, at(0).to_string());
        assert_eq!(c.next_attempt_time, at(5).to_string());
        let cond = s1
            .conditions
            .iter()
            .find(|c| c.type_ == "CleanupFailed")
            .expect("condition");
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("True", "S3CleanupFailed")
        );
        assert_eq!(
            cond.message,
            "removing the job's S3 scratch failed (1 of at most 4 attempts; next in 5 s): S3 DeleteObjects \
             s3://b/scratch/em/: connection refused"
        );
        // Not before the back-off: 3 s left at t=2; none at t=5.
        assert_eq!(wait(&s1, at(2)), Some(Duration::from_secs(3)));
        assert_eq!(wait(&s1, at(5)), None);
        let (s2, after) = retry(after_failure(&s1, &settings, "again", false, at(6)));
        assert_eq!(
            (s2.cleanup.as_ref().map(|c| c.attempts), after),
            (Some(2), Duration::from_secs(10))
        );
        let (s3, after) = retry(after_failure(&s2, &settings, "again", false, at(17)));
        assert_eq!(after, Duration::from_secs(20));
        assert_eq!(
            after_failure(&s3, &settings, "still refused", false, at(40)),
            AfterFailure::GiveUp {
                attempts: 4,
                why: "still refused (4 attempts over 40 s)".into()
            }
        );
    }

    #[test]
    fn it_gives_up_after_the_time_limit_or_at_once_when_hopeless() {
        let settings = CleanupSettings {
            max_attempts: 100,
            give_up_after: Duration::from_secs(60),
            ..CleanupSettings::default()
        };
        let (s1, _) = retry(after_failure(
            &ArrayJobStatus::default(),
            &settings,
            "e",
            false,
            at(0),
        ));
        assert!(matches!(
            after_failure(&s1, &settings, "e", false, at(61)),
            AfterFailure::GiveUp { attempts: 2, .. }
        ));
        assert_eq!(
            after_failure(
                &ArrayJobStatus::default(),
                &settings,
                "Secret lab/s3-credentials not found",
                true,
                at(0)
            ),
            AfterFailure::GiveUp {
                attempts: 1,
                why: "Secret lab/s3-credentials not found (trying again cannot help)".into()
            }
        );
    }

    #[test]
    fn the_backoff_is_capped_and_never_overflows() {
        let s = CleanupSettings::default();
        assert_eq!(backoff(&s, 1), Duration::from_secs(5));
        assert_eq!(backoff(&s, 4), Duration::from_secs(40));
        assert_eq!(backoff(&s, 7), MAX_BACKOFF);
        assert_eq!(backoff(&s, u32::MAX), MAX_BACKOFF);
        let huge = CleanupSettings {
            backoff: Duration::MAX,
            ..s
        };
        assert_eq!(backoff(&huge, 3), MAX_BACKOFF);
    }

    #[test]
    fn the_annotation_skips() {
        let mut job: ArrayJob = serde_yaml::from_str(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {name: em, namespace: lab}\nspec:\n  \
             storage: {s3: {bucket: data}}\n  source: {synthetic: {slices: 4, height: 8, width: 8}}\n  stages: []\n",
        )
        .expect("job");
        assert!(!skip_requested(&job));
        job.metadata.annotations = Some([(SKIP_ANNOTATION.to_owned(), "yes".to_owned())].into());
        assert!(!skip_requested(&job), "only \"true\" skips");
        job.metadata.annotations = Some([(SKIP_ANNOTATION.to_owned(), "true".to_owned())].into());
        assert!(skip_requested(&job));
    }
}
