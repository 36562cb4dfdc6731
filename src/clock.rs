//! Time: the one clock, and the supported range of [`Timestamp`].
//!
//! Every time the crate keeps or takes (record fields, listings, audit
//! events, usage, `now`) is a [`Timestamp`]: whole microseconds since the
//! Unix epoch, from [`Timestamp::MIN`] (1970-01-01T00:00:00Z) to
//! [`Timestamp::MAX`] (2^53 − 1 µs, 2255-06-05T23:47:34.740991Z, what a
//! 64-bit float, such as a Redis Lua number or a JSON number, holds
//! exactly). The range is checked once, where a time enters (a
//! conversion, a parse, a deserialization): a time outside it is
//! [`Error::InvalidInput`] (`INVALID_REQUEST`, 400), never a panic or a
//! wrong answer. Spans of time are [`std::time::Duration`].
//!
//! Verification never reads the wall clock by itself: it asks a [`Clock`],
//! and only for keys that have a validity window. [`SystemClock`] is the
//! default; [`ManualClock`] is for tests (yours too) and only moves when
//! told to; a [`Timestamp`] is itself a clock that always reads the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::timestamp::Timestamp;

/// A source of the current time: the one clock of the crate (verification,
/// management, rate limits, credits and throttles all read it).
///
/// ```
/// use apikey::{Clock, Timestamp};
/// // A fixed time is a clock too.
/// let t = Timestamp::from_unix_secs(1_767_225_600)?;
/// assert_eq!(t.now(), t);
/// # Ok::<(), apikey::Error>(())
/// ```
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
///
/// It reads the system's real-time clock (`clock_gettime(CLOCK_REALTIME)`,
/// from the vDSO on Linux: no system call, no calendar conversion),
/// truncated to whole microseconds. It is the precise clock, not the
/// kernel's coarse one: a late timer tick (or a paused vCPU) would leave
/// the coarse clock behind the real time by more than its resolution and
/// let a key verify after its expiry. A system clock set before 1970 reads
/// [`Timestamp::MIN`], and one set after 2255 reads [`Timestamp::MAX`].
///
/// ```
/// use apikey::{Clock, SystemClock, Timestamp};
/// assert!(SystemClock.now() > "2024-01-01T00:00:00Z".parse::<apikey::Timestamp>()?);
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Timestamp {
        Timestamp::MIN.saturating_add_micros(system_micros())
    }
}

/// The system time in Unix microseconds (truncated), saturating at
/// `i64::MAX`; -1 before 1970.
#[inline]
fn system_micros() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).map_or(i64::MAX, |secs| {
            secs.saturating_mul(1_000_000)
                .saturating_add(i64::from(d.subsec_micros()))
        }),
        Err(_) => -1,
    }
}

impl Clock for Timestamp {
    /// Always `self`: a fixed `now`.
    #[inline]
    fn now(&self) -> Timestamp {
        *self
    }
}

/// A clock that stands still until moved. Clones share one time.
///
/// ```
/// use apikey::{Clock, ManualClock, Timestamp};
/// use std::time::Duration;
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse()?);
/// let shared = clock.clone();
/// clock.advance(Duration::from_secs(30 * 86_400));
/// assert_eq!(shared.now().to_string(), "2026-01-31T00:00:00Z");
/// clock.rewind(Duration::from_secs(86_400));
/// assert_eq!(shared.now().to_string(), "2026-01-30T00:00:00Z");
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(start.as_unix_micros())))
    }

    /// Moves the clock forward by `by`, stopping at [`Timestamp::MAX`].
    pub fn advance(&self, by: Duration) {
        self.update(|t| t.saturating_add(by));
    }

    /// Moves the clock back by `by`, stopping at [`Timestamp::MIN`].
    pub fn rewind(&self, by: Duration) {
        self.update(|t| t.saturating_sub(by));
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: Timestamp) {
        self.0.store(to.as_unix_micros(), Ordering::SeqCst);
    }

    fn update(&self, f: impl Fn(Timestamp) -> Timestamp) {
        // Only values in range are ever stored.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(f(Timestamp::MIN.saturating_add_micros(t)).as_unix_micros())
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::MIN.saturating_add_micros(self.0.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    #[inline]
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    #[inline]
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_saturates() {
        let c = ManualClock::new(Timestamp::MAX);
        c.advance(Duration::from_secs(1));
        assert_eq!(c.now(), Timestamp::MAX);
        c.set(Timestamp::MIN);
        c.rewind(Duration::from_secs(1));
        assert_eq!(c.now(), Timestamp::MIN);
    }
}
