//! The nonces a server has seen: a signed request whose nonce is among them is a replay. A request is only
//! taken within [`WINDOW`] of its timestamp, so a nonce is remembered for twice that (a request signed up to
//! `WINDOW` ahead of this clock stays acceptable that long) and then forgotten. Only requests whose
//! signature verified are remembered, so only holders of the token fill the cache, and it is bounded
//! ([`MAX_REMEMBERED_NONCES`]).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::refusals::Refusal;
use super::signature::{Nonce, WINDOW};

/// Nonces remembered at most (about 70 MB when full): 17,000 signed requests a second for the whole time a
/// nonce is kept. Beyond that, requests are refused (503, which a worker retries) until older nonces expire.
pub const MAX_REMEMBERED_NONCES: usize = 1 << 20;

/// How long a nonce is remembered.
const KEEP: Duration = Duration::from_secs(2 * WINDOW.as_secs());

/// The nonces seen within the replay window.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    nonces: HashSet<Nonce>,
    /// The same nonces in the order they were seen, with when each may be forgotten.
    expiry: VecDeque<(Instant, Nonce)>,
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::with_capacity(MAX_REMEMBERED_NONCES)
    }
}

impl ReplayCache {
    /// A cache remembering at most `capacity` nonces.
    pub fn with_capacity(capacity: usize) -> ReplayCache {
        ReplayCache {
            capacity,
            inner: Mutex::new(Seen::default()),
        }
    }

    /// Takes `nonce` seen at `now`.
    ///
    /// # Errors
    /// [`Refusal::Replayed`] when it was seen within the window; [`Refusal::TooManyNonces`] when the cache is
    /// full of nonces that may not be forgotten yet.
    pub fn admit(&self, nonce: &Nonce, now: Instant) -> Result<(), Refusal> {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(until, old)) = s.expiry.front() {
            if until > now {
                break;
            }
            s.expiry.pop_front();
            s.nonces.remove(&old);
        }
        if s.nonces.contains(nonce) {
            return Err(Refusal::Replayed);
        }
        if s.nonces.len() >= self.capacity {
            return Err(Refusal::TooManyNonces);
        }
        s.nonces.insert(*nonce);
        s.expiry.push_back((now + KEEP, *nonce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_taken_once_within_the_window_and_the_cache_is_bounded() {
        let c = ReplayCache::with_capacity(3);
        let t0 = Instant::now();
        let n = |b: u8| [b; 16];
        assert_eq!(c.admit(&n(1), t0), Ok(()));
        assert_eq!(c.admit(&n(1), t0), Err(Refusal::Replayed));
        assert_eq!(
            c.admit(&n(1), t0 + KEEP - Duration::from_millis(1)),
            Err(Refusal::Replayed)
        );
        assert_eq!(c.admit(&n(2), t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(c.admit(&n(3), t0 + Duration::from_secs(2)), Ok(()));
        assert_eq!(
            c.admit(&n(4), t0 + Duration::from_secs(3)),
            Err(Refusal::TooManyNonces)
        );
        // Nonce 1 expires (a request carrying it again is stale by now): room for one more.
        assert_eq!(c.admit(&n(4), t0 + KEEP), Ok(()));
        assert_eq!(c.admit(&n(1), t0 + KEEP), Err(Refusal::TooManyNonces));
        assert_eq!(c.admit(&n(2), t0 + KEEP), Err(Refusal::Replayed));
        assert_eq!(KEEP, Duration::from_secs(60));
    }
}
