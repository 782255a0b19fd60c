//! Why a request was refused, and the log of refusals: every refusal is counted (by the guard), but a warning
//! is written at most once per [`REFUSAL_LOG_PERIOD`] per reason, with the number of refusals for that reason
//! it did not write, so a peer knocking without the token cannot flood the logs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one warning per reason this often.
pub const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Unsigned,
    /// An `Authorization` header that is not a well-formed signature.
    Malformed,
    /// A well-formed signature that is not this request's under this job's token.
    BadSignature,
    /// Signed too far from this server's clock.
    Stale,
    /// Signed for another server (its `Host`).
    WrongHost,
    /// A nonce this server has already seen.
    Replayed,
    /// So many signed requests within the replay window that their nonces cannot all be remembered.
    TooManyNonces,
    /// The job token itself, sent where only signed requests are taken.
    BearerNotTaken,
    /// A bearer token that is not the job's (on the progress endpoint, the one that takes it).
    WrongBearer,
}

impl Refusal {
    /// Every reason, in the order of their log slots.
    pub const ALL: [Refusal; 9] = [
        Refusal::Unsigned,
        Refusal::Malformed,
        Refusal::BadSignature,
        Refusal::Stale,
        Refusal::WrongHost,
        Refusal::Replayed,
        Refusal::TooManyNonces,
        Refusal::BearerNotTaken,
        Refusal::WrongBearer,
    ];

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Malformed => "malformed signature",
            Refusal::BadSignature => "bad signature",
            Refusal::Stale => "stale timestamp",
            Refusal::WrongHost => "signed for another server",
            Refusal::Replayed => "replayed",
            Refusal::TooManyNonces => "too many nonces",
            Refusal::BearerNotTaken => "bearer token where a signature is needed",
            Refusal::WrongBearer => "wrong bearer token",
        }
    }

    fn slot(self) -> usize {
        Refusal::ALL
            .iter()
            .position(|&r| r == self)
            .unwrap_or_default()
    }
}

/// When each reason was last written, and how many refusals for it were not.
#[derive(Debug)]
pub struct RefusalLog {
    period: Duration,
    slots: Mutex<[Slot; Refusal::ALL.len()]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    last: Option<Instant>,
    unwritten: u64,
}

impl RefusalLog {
    /// A log writing each reason at most once per `period`.
    pub fn new(period: Duration) -> RefusalLog {
        RefusalLog {
            period,
            slots: Mutex::new([Slot::default(); Refusal::ALL.len()]),
        }
    }

    /// Notes a refusal at `now`: Some(refusals for this reason not written since the last line) when a line
    /// is due now, None when this one is only counted.
    pub fn note(&self, why: Refusal, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut slots[why.slot()];
        match s.last {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                s.unwritten += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.unwritten))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_period_with_the_count_of_those_not_written() {
        let log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.note(Refusal::Unsigned, at(0)), Some(0));
        for i in 1..=999 {
            assert_eq!(log.note(Refusal::Unsigned, at(i)), None);
        }
        // Another reason has its own slot.
        assert_eq!(log.note(Refusal::Replayed, at(5)), Some(0));
        assert_eq!(log.note(Refusal::Replayed, at(6)), None);
        assert_eq!(log.note(Refusal::Unsigned, at(9_999)), None);
        // The period is over: a line, saying how many were only counted (999 + 1).
        assert_eq!(log.note(Refusal::Unsigned, at(10_000)), Some(1000));
        assert_eq!(log.note(Refusal::Unsigned, at(10_001)), None);
        assert_eq!(log.note(Refusal::Replayed, at(20_000)), Some(1));
        assert_eq!(log.note(Refusal::Unsigned, at(60_000)), Some(1));
        let slots: Vec<usize> = Refusal::ALL.iter().map(|r| r.slot()).collect();
        assert_eq!(slots, (0..Refusal::ALL.len()).collect::<Vec<_>>());
    }
}
