//! Rate limits (GCRA): see the docs of `crate::limits`.

use std::time::Duration;

use crate::limits::quota::RateWindow;
use crate::timestamp::Timestamp;

/// Rounds a duration up to whole seconds, as `Retry-After` and
/// `X-RateLimit-Reset` need (a wait of 0.2 s becomes 1 s, so a client that
/// obeys the header never comes back too early). The only place limits
/// round (`0 s` → 0, `1 µs` → 1, `3.001 s` → 4; see the unit test
/// `ceil_secs_rounds_up_to_whole_seconds`).
#[must_use]
pub(crate) const fn ceil_secs(d: Duration) -> u64 {
    if d.subsec_nanos() == 0 {
        d.as_secs()
    } else {
        d.as_secs().saturating_add(1)
    }
}

pub(crate) const fn micros(d: i64) -> Duration {
    Duration::from_micros(if d < 0 { 0 } else { d as u64 })
}

/// A key's rate-limit state: the TAT of each window.
///
/// A TAT at or before "now" means the window is fully replenished, so a
/// state whose TATs are all in the past equals no state at all (stores
/// delete it then: the in-memory store on [`purge_idle`], Redis by
/// `PEXPIRE`). [`Timestamp::MIN`] stands for "never used".
///
/// [`purge_idle`]: crate::limits::MemoryLimits::purge_idle
///
/// ```
/// use apikey::Timestamp;
/// use apikey::limits::backend::GcraState;
/// let s = GcraState::new(Timestamp::from_unix_micros(5)?, Timestamp::MIN);
/// assert!(s.is_idle_at(Timestamp::from_unix_micros(5)?));
/// assert!(!s.is_idle_at(Timestamp::from_unix_micros(4)?));
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GcraState {
    minute: Timestamp,
    hour: Timestamp,
}

impl Default for GcraState {
    fn default() -> Self {
        Self::new(Timestamp::MIN, Timestamp::MIN)
    }
}

impl GcraState {
    /// A state from the per-minute and the per-hour TAT.
    #[must_use]
    pub const fn new(minute: Timestamp, hour: Timestamp) -> Self {
        Self { minute, hour }
    }

    /// The TAT of `window`.
    #[must_use]
    pub const fn tat(&self, window: RateWindow) -> Timestamp {
        match window {
            RateWindow::Minute => self.minute,
            RateWindow::Hour => self.hour,
        }
    }

    pub(crate) fn set_tat(&mut self, window: RateWindow, tat: Timestamp) {
        match window {
            RateWindow::Minute => self.minute = tat,
            RateWindow::Hour => self.hour = tat,
        }
    }

    /// Whether every TAT is at or before `now`: the state equals an absent
    /// one and may be deleted.
    #[must_use]
    pub fn is_idle_at(&self, now: Timestamp) -> bool {
        self.minute <= now && self.hour <= now
    }

    /// The later TAT: when the state becomes idle.
    #[must_use]
    pub fn idle_at(&self) -> Timestamp {
        self.minute.max(self.hour)
    }
}

/// The numbers behind the `X-RateLimit-*` headers, for one window.
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::{RateLimitInfo, RateWindow};
/// let info = RateLimitInfo {
///     window: RateWindow::Minute,
///     limit: 100,
///     remaining: 99,
///     reset_after: Duration::from_millis(600),
/// };
/// assert_eq!(info.reset_after_secs(), 1);
/// assert_eq!(info.reset_at_unix(1_700_000_000), 1_700_000_001);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimitInfo {
    /// The window these numbers describe.
    pub window: RateWindow,
    /// The window's limit (`X-RateLimit-Limit`).
    pub limit: u32,
    /// Requests that would still be admitted right now
    /// (`X-RateLimit-Remaining`).
    pub remaining: u32,
    /// Time from the decision until the window is fully replenished (its
    /// TAT), in whole microseconds. On a rate-limit refusal the web edge
    /// reports the retry time instead (see
    /// [`rate_limit_headers`](crate::web::rate_limit_headers)).
    pub reset_after: Duration,
}

impl RateLimitInfo {
    /// [`reset_after`](Self::reset_after) rounded up to whole seconds.
    #[must_use]
    pub const fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }

    /// The reset instant as Unix epoch seconds, given the current time
    /// `now_unix` in seconds. Rounds up; saturates.
    #[must_use]
    pub fn reset_at_unix(&self, now_unix: i64) -> i64 {
        let delta = i64::try_from(self.reset_after_secs()).unwrap_or(i64::MAX);
        now_unix.saturating_add(delta)
    }
}

/// One enforced window with a non-zero limit, precomputed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gcra {
    pub(crate) window: RateWindow,
    pub(crate) limit: u32,
    /// Emission interval `T = ceil(P / L)`, µs (at least 1).
    pub(crate) emission: i64,
    /// Burst tolerance `τ = (L - 1) · T`, µs.
    pub(crate) tolerance: i64,
}

/// What one window says about one request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WindowTest {
    /// Admitted: the new TAT, the numbers after charging, and the numbers
    /// without charging (for a request that something else refuses).
    Admit {
        new_tat: Timestamp,
        after: RateLimitInfo,
        before: RateLimitInfo,
    },
    /// Refused: wait (µs) until this window would admit.
    Refuse { wait: i64, info: RateLimitInfo },
}

impl Gcra {
    /// `None` for a limit of 0.
    pub(crate) fn new(window: RateWindow, limit: u32) -> Option<Self> {
        if limit == 0 {
            return None;
        }
        let l = i64::from(limit);
        let emission = (window.period_micros() + l - 1) / l;
        Some(Self {
            window,
            limit,
            emission,
            tolerance: emission * (l - 1),
        })
    }

    fn remaining(&self, ahead: i64) -> u32 {
        if ahead > self.tolerance {
            0
        } else {
            let n = (self.tolerance - ahead) / self.emission + 1;
            u32::try_from(n).unwrap_or(u32::MAX).min(self.limit)
        }
    }

    fn info(&self, remaining: u32, reset_after: i64) -> RateLimitInfo {
        RateLimitInfo {
            window: self.window,
            limit: self.limit,
            remaining,
            reset_after: micros(reset_after),
        }
    }

    pub(crate) fn test(&self, stored: Timestamp, now: Timestamp) -> WindowTest {
        let now = now.as_unix_micros();
        let tat = stored.as_unix_micros().max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            let wait = ahead - self.tolerance;
            return WindowTest::Refuse {
                wait,
                info: self.info(0, ahead),
            };
        }
        let new_tat = tat + self.emission;
        match Timestamp::from_unix_micros(new_tat) {
            Ok(new_tat) => WindowTest::Admit {
                new_tat,
                after: self.info(self.remaining(ahead + self.emission), ahead + self.emission),
                before: self.info(self.remaining(ahead), ahead),
            },
            // Past the end of the supported range: fail closed.
            Err(_) => WindowTest::Refuse {
                wait: self.emission,
                info: self.info(0, self.emission),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ceil_secs;

    #[test]
    fn ceil_secs_rounds_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_micros(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_millis(3001)), 4);
    }
}
