//! Clocks: where "now" comes from.
//!
//! Verification never reads the wall clock by itself: the pure core takes a
//! `now` argument, and the [`Authenticator`](crate::Authenticator) asks a
//! [`Clock`]. [`SystemClock`] is the default; [`ManualClock`] is for tests
//! (yours too) and only moves when told to.

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current time (UTC).
    fn now(&self) -> OffsetDateTime;
}

/// The operating system's wall clock.
///
/// ```
/// use apikey::{Clock, SystemClock};
/// assert!(SystemClock.now().year() >= 2024);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until advanced. Clones share one time.
///
/// ```
/// use apikey::{Clock, ManualClock};
/// use time::{Duration, macros::datetime};
/// let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
/// let shared = clock.clone();
/// clock.advance(Duration::days(30));
/// assert_eq!(shared.now(), datetime!(2026-01-31 0:00 UTC));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock by `by` (which may be negative).
    pub fn advance(&self, by: time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t = t.saturating_add(by);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}
