#![deny(clippy::unwrap_used, clippy::expect_used)]
//! Per-key rate limits (GCRA) and per-address failed-attempt throttling.
//!
//! # Overview
//!
//! * [`RateLimiter`] enforces a [`Quota`] (a per-minute and a per-hour window)
//!   per API key id (`u64`) with the generic cell rate algorithm (GCRA). A
//!   key's whole state is one theoretical arrival time (TAT) per window, kept
//!   in a [`RateLimitStore`]; the default store, [`InMemoryRateLimitStore`],
//!   is sharded so that checks on different keys rarely contend.
//! * Both windows are admitted together or not at all: a request refused by
//!   one window charges no window.
//! * Every decision carries the numbers for the `X-RateLimit-Limit`,
//!   `X-RateLimit-Remaining`, `X-RateLimit-Reset` and `Retry-After` headers
//!   ([`RateLimitInfo`], [`RateLimitDecision::retry_after_secs`]).
//! * [`FailureThrottle`] locks out a client address after repeated failed
//!   authentication attempts (OWASP API2: broken authentication / brute
//!   force), with a bounded number of tracked addresses.
//! * Time comes from an injected [`MonotonicClock`]; [`FakeMonotonicClock`]
//!   lets tests drive time by hand.
//!
//! # GCRA semantics
//!
//! A window with limit `L` over period `P` has emission interval
//! `T = ceil(P / L)` and burst tolerance `τ = (L - 1) · T`. A request at time
//! `t` is admitted when `max(TAT, t) - t <= τ`, and then
//! `TAT := max(TAT, t) + T`. Consequently:
//!
//! * a fresh (or long idle) key may send a burst of exactly `L` requests at
//!   once;
//! * afterwards it regains one request every `T`;
//! * over any closed interval of length `d`, at most `L + floor(d / T)`
//!   requests are admitted. In particular a sliding window of length `P` may
//!   see up to `2L - 1` admissions (a full burst at its start plus the
//!   refills during it); this is inherent to GCRA and token buckets and is
//!   the same as in `governor`. The long-run rate never exceeds `L / P`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use apikey::limits::ratelimit::{FakeMonotonicClock, Quota, RateLimiter};
//!
//! let clock = Arc::new(FakeMonotonicClock::new());
//! let limiter = RateLimiter::with_clock(Arc::clone(&clock));
//! let quota = Quota::new(Some(2), None);
//!
//! assert!(limiter.check(7, &quota).is_allowed());
//! assert!(limiter.check(7, &quota).is_allowed());
//! let refused = limiter.check(7, &quota);
//! assert_eq!(refused.retry_after(), Some(Duration::from_secs(30)));
//!
//! clock.advance(Duration::from_secs(30));
//! assert!(limiter.check(7, &quota).is_allowed());
//! ```

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Clocks
// ---------------------------------------------------------------------------

/// A monotonic clock: the time elapsed since an arbitrary, fixed origin.
///
/// The limiter samples the clock once per decision. Implementations should
/// never go backwards; if one does, the limiter does not panic, it simply
/// behaves as if less time had passed (requests may be refused for longer).
///
/// # Shared stores
///
/// When several processes share one [`RateLimitStore`] (Redis, SQL), the
/// stored TATs are compared with every process's `now()`, so all of them must
/// use clocks with a common origin (for example a clock derived from Unix
/// time, accepting that wall-clock steps are then visible to the limiter).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::ratelimit::{FakeMonotonicClock, MonotonicClock};
///
/// let clock = FakeMonotonicClock::new();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now(), Duration::from_millis(1500));
/// ```
pub trait MonotonicClock: Send + Sync {
    /// Returns the time elapsed since this clock's origin.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{MonotonicClock, StdMonotonicClock};
    ///
    /// let clock = StdMonotonicClock::new();
    /// let a = clock.now();
    /// let b = clock.now();
    /// assert!(b >= a);
    /// ```
    fn now(&self) -> Duration;
}

impl<C: MonotonicClock + ?Sized> MonotonicClock for Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
}

impl<C: MonotonicClock + ?Sized> MonotonicClock for &C {
    fn now(&self) -> Duration {
        (**self).now()
    }
}

impl<C: MonotonicClock + ?Sized> MonotonicClock for Box<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
}

/// A [`MonotonicClock`] backed by [`std::time::Instant`]; its origin is the
/// moment it was created.
///
/// # Example
///
/// ```
/// use apikey::limits::ratelimit::{MonotonicClock, StdMonotonicClock};
///
/// let clock = StdMonotonicClock::new();
/// assert!(clock.now() < std::time::Duration::from_secs(60));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct StdMonotonicClock {
    origin: Instant,
}

impl StdMonotonicClock {
    /// Creates a clock whose origin is now.
    ///
    /// # Example
    ///
    /// ```
    /// let clock = apikey::limits::ratelimit::StdMonotonicClock::new();
    /// # let _ = clock;
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for StdMonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicClock for StdMonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A hand-driven [`MonotonicClock`] for tests.
///
/// It starts at zero and only moves when [`advance`](Self::advance) or
/// [`set`](Self::set) is called. Share it with [`Arc`]: `Arc<FakeMonotonicClock>`
/// is itself a `MonotonicClock`. Time is kept in whole nanoseconds and
/// saturates at `u64::MAX` nanoseconds (about 584 years).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use apikey::limits::ratelimit::{FakeMonotonicClock, MonotonicClock};
///
/// let clock = Arc::new(FakeMonotonicClock::new());
/// let shared = Arc::clone(&clock);
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(shared.now(), Duration::from_secs(5));
/// ```
#[derive(Debug, Default)]
pub struct FakeMonotonicClock {
    nanos: AtomicU64,
}

impl FakeMonotonicClock {
    /// Creates a clock reading zero.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{FakeMonotonicClock, MonotonicClock};
    /// assert_eq!(FakeMonotonicClock::new().now(), std::time::Duration::ZERO);
    /// ```
    #[must_use]
    pub const fn new() -> Self {
        Self {
            nanos: AtomicU64::new(0),
        }
    }

    /// Creates a clock reading `start`.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::{FakeMonotonicClock, MonotonicClock};
    /// let clock = FakeMonotonicClock::starting_at(Duration::from_secs(3));
    /// assert_eq!(clock.now(), Duration::from_secs(3));
    /// ```
    #[must_use]
    pub fn starting_at(start: Duration) -> Self {
        Self {
            nanos: AtomicU64::new(duration_nanos(start)),
        }
    }

    /// Moves the clock forward by `by` (saturating).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::{FakeMonotonicClock, MonotonicClock};
    /// let clock = FakeMonotonicClock::new();
    /// clock.advance(Duration::from_millis(10));
    /// clock.advance(Duration::from_millis(5));
    /// assert_eq!(clock.now(), Duration::from_millis(15));
    /// ```
    pub fn advance(&self, by: Duration) {
        let by = duration_nanos(by);
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the clock to `to`. This may move the clock backwards, which a real
    /// monotonic clock never does; use it to test such situations on purpose.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::{FakeMonotonicClock, MonotonicClock};
    /// let clock = FakeMonotonicClock::new();
    /// clock.set(Duration::from_secs(42));
    /// assert_eq!(clock.now(), Duration::from_secs(42));
    /// ```
    pub fn set(&self, to: Duration) {
        self.nanos.store(duration_nanos(to), Ordering::Release);
    }
}

impl MonotonicClock for FakeMonotonicClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

/// Whole nanoseconds in `d`, saturating at `u64::MAX`.
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Rounds a duration up to whole seconds, as `Retry-After` and
/// `X-RateLimit-Reset` need (a wait of 0.2 s becomes 1 s, so a client that
/// obeys the header never comes back too early).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::ratelimit::ceil_secs;
///
/// assert_eq!(ceil_secs(Duration::ZERO), 0);
/// assert_eq!(ceil_secs(Duration::from_millis(200)), 1);
/// assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
/// assert_eq!(ceil_secs(Duration::from_millis(3001)), 4);
/// ```
#[must_use]
pub const fn ceil_secs(d: Duration) -> u64 {
    if d.subsec_nanos() == 0 {
        d.as_secs()
    } else {
        d.as_secs().saturating_add(1)
    }
}

// ---------------------------------------------------------------------------
// Quota
// ---------------------------------------------------------------------------

/// One of the two windows of a [`Quota`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::ratelimit::RateWindow;
/// assert_eq!(RateWindow::Hour.period(), Duration::from_secs(3600));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateWindow {
    /// The per-minute window (60 s).
    Minute,
    /// The per-hour window (3600 s).
    Hour,
}

impl RateWindow {
    /// The length of the window.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::RateWindow;
    /// assert_eq!(RateWindow::Minute.period(), Duration::from_secs(60));
    /// ```
    #[must_use]
    pub const fn period(self) -> Duration {
        match self {
            Self::Minute => Duration::from_secs(60),
            Self::Hour => Duration::from_secs(3600),
        }
    }
}

/// A rate-limit quota: an optional per-minute and an optional per-hour limit.
///
/// * `None` — the window is not enforced.
/// * `Some(0)` — the window admits nothing: every request is refused
///   (fail closed, e.g. for a suspended plan). The refusal reports
///   `limit = 0`, `remaining = 0` and the window's period as both
///   `retry_after` and reset, as a hint only, since waiting will not help.
/// * `Some(n)` — GCRA with `n` requests per window (see the
///   [module docs](self)).
///
/// A quota with no enforced window admits every request without touching the
/// store.
///
/// # Example
///
/// ```
/// use apikey::limits::ratelimit::Quota;
///
/// assert_eq!(Quota::FREE, Quota::new(Some(100), Some(1_000)));
/// let custom = Quota::unlimited().with_per_hour(50);
/// assert_eq!(custom.per_minute(), None);
/// assert_eq!(custom.per_hour(), Some(50));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Quota {
    per_minute: Option<u32>,
    per_hour: Option<u32>,
}

impl Quota {
    /// The Free plan: 100 requests per minute, 1,000 per hour.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::ratelimit::Quota::FREE.per_minute(), Some(100));
    /// ```
    pub const FREE: Self = Self::new(Some(100), Some(1_000));

    /// The Professional plan: 500 requests per minute, 10,000 per hour.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::ratelimit::Quota::PROFESSIONAL.per_hour(), Some(10_000));
    /// ```
    pub const PROFESSIONAL: Self = Self::new(Some(500), Some(10_000));

    /// Creates a quota from its two windows (see the type docs for `None`
    /// and `Some(0)`).
    ///
    /// # Example
    ///
    /// ```
    /// let q = apikey::limits::ratelimit::Quota::new(Some(10), None);
    /// assert_eq!(q.per_minute(), Some(10));
    /// ```
    #[must_use]
    pub const fn new(per_minute: Option<u32>, per_hour: Option<u32>) -> Self {
        Self {
            per_minute,
            per_hour,
        }
    }

    /// A quota that enforces no window.
    ///
    /// # Example
    ///
    /// ```
    /// let q = apikey::limits::ratelimit::Quota::unlimited();
    /// assert_eq!((q.per_minute(), q.per_hour()), (None, None));
    /// ```
    #[must_use]
    pub const fn unlimited() -> Self {
        Self::new(None, None)
    }

    /// Returns this quota with the per-minute limit set to `limit`.
    ///
    /// # Example
    ///
    /// ```
    /// let q = apikey::limits::ratelimit::Quota::unlimited().with_per_minute(30);
    /// assert_eq!(q.per_minute(), Some(30));
    /// ```
    #[must_use]
    pub const fn with_per_minute(self, limit: u32) -> Self {
        Self {
            per_minute: Some(limit),
            ..self
        }
    }

    /// Returns this quota with the per-hour limit set to `limit`.
    ///
    /// # Example
    ///
    /// ```
    /// let q = apikey::limits::ratelimit::Quota::unlimited().with_per_hour(300);
    /// assert_eq!(q.per_hour(), Some(300));
    /// ```
    #[must_use]
    pub const fn with_per_hour(self, limit: u32) -> Self {
        Self {
            per_hour: Some(limit),
            ..self
        }
    }

    /// The per-minute limit, if enforced.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::ratelimit::Quota::PROFESSIONAL.per_minute(), Some(500));
    /// ```
    #[must_use]
    pub const fn per_minute(&self) -> Option<u32> {
        self.per_minute
    }

    /// The per-hour limit, if enforced.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::ratelimit::Quota::FREE.per_hour(), Some(1_000));
    /// ```
    #[must_use]
    pub const fn per_hour(&self) -> Option<u32> {
        self.per_hour
    }
}

// ---------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------

/// The numbers behind the `X-RateLimit-*` headers, for one window.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::ratelimit::{RateLimitInfo, RateWindow};
///
/// let info = RateLimitInfo {
///     window: RateWindow::Minute,
///     limit: 100,
///     remaining: 99,
///     reset_after: Duration::from_millis(600),
/// };
/// // X-RateLimit-Reset as Unix epoch seconds:
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
    /// Time from now until the window is fully replenished (its TAT).
    pub reset_after: Duration,
}

impl RateLimitInfo {
    /// [`reset_after`](Self::reset_after) rounded up to whole seconds
    /// (a delta-seconds `X-RateLimit-Reset`).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::{RateLimitInfo, RateWindow};
    /// let info = RateLimitInfo { window: RateWindow::Hour, limit: 10, remaining: 9,
    ///     reset_after: Duration::from_millis(360_500) };
    /// assert_eq!(info.reset_after_secs(), 361);
    /// ```
    #[must_use]
    pub const fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }

    /// The reset instant as Unix epoch seconds, given the current wall-clock
    /// time `now_unix` (seconds since the Unix epoch). Rounds up; saturates.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::{RateLimitInfo, RateWindow};
    /// let info = RateLimitInfo { window: RateWindow::Minute, limit: 1, remaining: 0,
    ///     reset_after: Duration::from_secs(60) };
    /// assert_eq!(info.reset_at_unix(1_000), 1_060);
    /// ```
    #[must_use]
    pub fn reset_at_unix(&self, now_unix: i64) -> i64 {
        let delta = i64::try_from(self.reset_after_secs()).unwrap_or(i64::MAX);
        now_unix.saturating_add(delta)
    }
}

/// The outcome of [`RateLimiter::check`].
///
/// For an admitted request, `info` describes the enforced window with the
/// least remaining requests (ties go to the window with the later reset);
/// it is `None` only when the quota enforces no window. For a refused
/// request, `info` describes the window that refused with the longest wait
/// (so `remaining` is 0), and `retry_after` is the time after which this
/// same request would be admitted if nothing else were sent meanwhile.
///
/// # Example
///
/// ```
/// use apikey::limits::ratelimit::{Quota, RateLimitDecision, RateLimiter};
///
/// let limiter = RateLimiter::new();
/// match limiter.check(1, &Quota::FREE) {
///     RateLimitDecision::Allowed { info } => {
///         let info = info.expect("FREE enforces both windows");
///         assert_eq!((info.limit, info.remaining), (100, 99));
///     }
///     RateLimitDecision::Refused { .. } => unreachable!(),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum RateLimitDecision {
    /// The request is admitted and has been charged to every window.
    Allowed {
        /// The most restrictive window after this request, if any.
        info: Option<RateLimitInfo>,
    },
    /// The request is refused; no window has been charged.
    Refused {
        /// The window that refused (the one with the longest wait).
        info: RateLimitInfo,
        /// How long to wait before retrying (`Retry-After`).
        retry_after: Duration,
    },
}

impl RateLimitDecision {
    /// Whether the request was admitted.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{Quota, RateLimiter};
    /// assert!(RateLimiter::new().check(1, &Quota::FREE).is_allowed());
    /// ```
    #[must_use]
    pub const fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }

    /// The header numbers, if any (see the type docs for which window).
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{Quota, RateLimiter};
    /// let d = RateLimiter::new().check(1, &Quota::unlimited());
    /// assert!(d.is_allowed() && d.info().is_none());
    /// ```
    #[must_use]
    pub const fn info(&self) -> Option<&RateLimitInfo> {
        match self {
            Self::Allowed { info } => info.as_ref(),
            Self::Refused { info, .. } => Some(info),
        }
    }

    /// The wait before retrying, for a refused request.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{Quota, RateLimiter};
    /// assert_eq!(RateLimiter::new().check(1, &Quota::FREE).retry_after(), None);
    /// ```
    #[must_use]
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Allowed { .. } => None,
            Self::Refused { retry_after, .. } => Some(*retry_after),
        }
    }

    /// The `Retry-After` header value: the wait rounded up to whole seconds
    /// (at least 1 for a refusal), or `None` if admitted.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey::limits::ratelimit::{FakeMonotonicClock, Quota, RateLimiter};
    /// let limiter = RateLimiter::with_clock(Arc::new(FakeMonotonicClock::new()));
    /// let q = Quota::new(Some(1), None);
    /// let _ = limiter.check(1, &q);
    /// assert_eq!(limiter.check(1, &q).retry_after_secs(), Some(60));
    /// ```
    #[must_use]
    pub const fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Allowed { .. } => None,
            Self::Refused { retry_after, .. } => {
                let s = ceil_secs(*retry_after);
                Some(if s == 0 { 1 } else { s })
            }
        }
    }
}

// ---------------------------------------------------------------------------
// State and stores
// ---------------------------------------------------------------------------

/// A key's GCRA state: the theoretical arrival time (TAT) of each window, in
/// nanoseconds on the limiter's [`MonotonicClock`].
///
/// A TAT at or before "now" means the window is fully replenished, so a
/// state whose TATs are all in the past is equivalent to no state at all
/// (which lets stores expire it). A window the quota does not enforce keeps
/// whatever TAT it had (0 for a new key).
///
/// # Example
///
/// ```
/// use apikey::limits::ratelimit::GcraState;
///
/// let s = GcraState::new(5, 9);
/// assert_eq!(GcraState::from_be_bytes(s.to_be_bytes()), s);
/// assert!(s.is_idle_at(9) && !s.is_idle_at(8));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GcraState {
    minute_tat: u64,
    hour_tat: u64,
}

impl GcraState {
    /// Creates a state from the two TATs (nanoseconds).
    ///
    /// # Example
    ///
    /// ```
    /// let s = apikey::limits::ratelimit::GcraState::new(1, 2);
    /// assert_eq!((s.minute_tat(), s.hour_tat()), (1, 2));
    /// ```
    #[must_use]
    pub const fn new(minute_tat: u64, hour_tat: u64) -> Self {
        Self {
            minute_tat,
            hour_tat,
        }
    }

    /// The per-minute window's TAT (nanoseconds).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::ratelimit::GcraState::new(1, 2).minute_tat(), 1);
    /// ```
    #[must_use]
    pub const fn minute_tat(&self) -> u64 {
        self.minute_tat
    }

    /// The per-hour window's TAT (nanoseconds).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::ratelimit::GcraState::new(1, 2).hour_tat(), 2);
    /// ```
    #[must_use]
    pub const fn hour_tat(&self) -> u64 {
        self.hour_tat
    }

    /// Whether every TAT is at or before `now_nanos`, i.e. the state is
    /// equivalent to an absent one and may be deleted.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(apikey::limits::ratelimit::GcraState::new(3, 0).is_idle_at(3));
    /// ```
    #[must_use]
    pub const fn is_idle_at(&self, now_nanos: u64) -> bool {
        self.minute_tat <= now_nanos && self.hour_tat <= now_nanos
    }

    /// Encodes the state as 16 big-endian bytes (minute TAT, then hour TAT),
    /// e.g. for a Redis value.
    ///
    /// # Example
    ///
    /// ```
    /// let b = apikey::limits::ratelimit::GcraState::new(1, 2).to_be_bytes();
    /// assert_eq!(b[7], 1);
    /// assert_eq!(b[15], 2);
    /// ```
    #[must_use]
    pub fn to_be_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.minute_tat.to_be_bytes());
        b.copy_from_slice(&self.hour_tat.to_be_bytes());
        out
    }

    /// Decodes [`to_be_bytes`](Self::to_be_bytes).
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::GcraState;
    /// let s = GcraState::new(u64::MAX, 0);
    /// assert_eq!(GcraState::from_be_bytes(s.to_be_bytes()), s);
    /// ```
    #[must_use]
    pub fn from_be_bytes(bytes: [u8; 16]) -> Self {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        let (x, y) = bytes.split_at(8);
        a.copy_from_slice(x);
        b.copy_from_slice(y);
        Self {
            minute_tat: u64::from_be_bytes(a),
            hour_tat: u64::from_be_bytes(b),
        }
    }
}

/// Storage for per-key [`GcraState`]. The algorithm lives in
/// [`RateLimiter`]; a store only stores.
///
/// # Semantics a backend must keep
///
/// [`measure_and_replace`](Self::measure_and_replace) is one atomic
/// read-modify-write of one key's state (the shape of `governor`'s
/// `StateStore::measure_and_replace`):
///
/// 1. Read the current state of `key` (`None` if absent or expired).
/// 2. Call `f(state)`.
/// 3. If `f` returns `Ok((t, new))`, store `new` **only if the state is
///    still the one passed to `f`** (compare-and-set); if it changed
///    meanwhile, go back to 1 with the fresh state. Return `Ok(Ok(t))` once
///    the write succeeds.
/// 4. If `f` returns `Err(e)`, write nothing and return `Ok(Err(e))`. A
///    refused request is therefore never charged.
///
/// Both windows live in one [`GcraState`] and are written by one
/// compare-and-set, so they are admitted together or not at all. `f` is pure
/// (the limiter samples the clock before calling the store), so calling it
/// again on retry is safe. Implementations may call it any number of times
/// but must write at most one of its results.
///
/// A backend may delete a state once [`GcraState::is_idle_at`] holds for the
/// current time (e.g. a Redis `PEXPIRE` at the later TAT), since an idle
/// state behaves exactly like an absent one. Backend failures (connection
/// lost, …) are reported as `Err(Self::Error)`; the caller decides whether to
/// fail open or closed. Examples: Redis `WATCH`/`MULTI`/`EXEC` or a Lua
/// script; SQL `SELECT … FOR UPDATE` in a transaction, or
/// `UPDATE … WHERE state = $old`.
///
/// # Example
///
/// A store that keeps one global state (for illustration only):
///
/// ```
/// use std::convert::Infallible;
/// use std::sync::Mutex;
/// use apikey::limits::ratelimit::{GcraState, RateLimitStore};
///
/// struct OneKey(Mutex<Option<GcraState>>);
///
/// impl RateLimitStore for OneKey {
///     type Error = Infallible;
///     fn measure_and_replace<T, E, F>(&self, _key: u64, f: F) -> Result<Result<T, E>, Infallible>
///     where
///         F: Fn(Option<GcraState>) -> Result<(T, GcraState), E>,
///     {
///         let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
///         Ok(f(*guard).map(|(t, new)| {
///             *guard = Some(new);
///             t
///         }))
///     }
/// }
/// ```
pub trait RateLimitStore: Send + Sync {
    /// The backend's own failure (use [`Infallible`] for in-memory stores).
    type Error;

    /// Atomically applies `f` to the state of `key` (see the trait docs).
    ///
    /// # Errors
    ///
    /// The backend's failure; the inner `Result` is `f`'s verdict.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{GcraState, InMemoryRateLimitStore, RateLimitStore};
    ///
    /// let store = InMemoryRateLimitStore::new();
    /// let seen = store
    ///     .measure_and_replace(3, |s| Ok::<_, ()>((s, GcraState::new(10, 20))))
    ///     .unwrap_or_else(|e| match e {});
    /// assert_eq!(seen, Ok(None));
    /// let seen = store
    ///     .measure_and_replace(3, |s| Err::<((), GcraState), _>(s))
    ///     .unwrap_or_else(|e| match e {});
    /// assert_eq!(seen, Err(Some(GcraState::new(10, 20))));
    /// ```
    fn measure_and_replace<T, E, F>(&self, key: u64, f: F) -> Result<Result<T, E>, Self::Error>
    where
        F: Fn(Option<GcraState>) -> Result<(T, GcraState), E>;
}

const RL_SHARD_BITS: u32 = 6;
const RL_SHARDS: usize = 1 << RL_SHARD_BITS;

/// One shard, aligned so that two shards never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct RlShard(Mutex<HashMap<u64, GcraState>>);

/// Locks a mutex, recovering from poisoning. Every value guarded in this
/// module is valid in any state (plain integers / maps), so a panic in
/// another thread cannot leave it inconsistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The default, in-process [`RateLimitStore`].
///
/// States are spread over 64 shards, each a `Mutex<HashMap<u64, GcraState>>`,
/// chosen by the top bits of a multiplicative hash of the key, so checks on
/// different keys rarely contend and there is no global lock. One check holds
/// one shard lock for a hash lookup and a few integer operations.
///
/// Memory grows with the number of distinct keys seen; call
/// [`purge_idle`](Self::purge_idle) (or [`RateLimiter::purge_idle`])
/// periodically to drop states that are fully replenished, which does not
/// change any future decision.
///
/// # Example
///
/// ```
/// use apikey::limits::ratelimit::{InMemoryRateLimitStore, Quota, RateLimiter, StdMonotonicClock};
///
/// let limiter = RateLimiter::with_store_and_clock(
///     InMemoryRateLimitStore::new(),
///     StdMonotonicClock::new(),
/// );
/// let _ = limiter.check(9, &Quota::FREE);
/// assert_eq!(limiter.store().len(), 1);
/// ```
#[derive(Debug)]
pub struct InMemoryRateLimitStore {
    shards: [RlShard; RL_SHARDS],
}

impl Default for InMemoryRateLimitStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryRateLimitStore {
    /// Creates an empty store.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(apikey::limits::ratelimit::InMemoryRateLimitStore::new().is_empty());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: std::array::from_fn(|_| RlShard::default()),
        }
    }

    fn shard(&self, key: u64) -> &RlShard {
        // Fibonacci hashing: the top bits of key * 2^64/φ spread sequential
        // ids evenly. The shift leaves a value below RL_SHARDS.
        let idx = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - RL_SHARD_BITS)) as usize;
        &self.shards[idx % RL_SHARDS]
    }

    /// The number of keys with a stored state.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::ratelimit::InMemoryRateLimitStore::new().len(), 0);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).len()).sum()
    }

    /// Whether no key has a stored state.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(apikey::limits::ratelimit::InMemoryRateLimitStore::default().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| lock(&s.0).is_empty())
    }

    /// The stored state of `key`, if any.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::ratelimit::InMemoryRateLimitStore::new().get(1), None);
    /// ```
    #[must_use]
    pub fn get(&self, key: u64) -> Option<GcraState> {
        lock(&self.shard(key).0).get(&key).copied()
    }

    /// Forgets `key` (e.g. after a plan change, to start it with a full
    /// burst). Returns whether a state was removed.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(!apikey::limits::ratelimit::InMemoryRateLimitStore::new().remove(1));
    /// ```
    pub fn remove(&self, key: u64) -> bool {
        lock(&self.shard(key).0).remove(&key).is_some()
    }

    /// Drops every state that is idle at `now` (see
    /// [`GcraState::is_idle_at`]); returns how many were dropped. `now` must
    /// be on the limiter's clock.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::{GcraState, InMemoryRateLimitStore, RateLimitStore};
    /// let store = InMemoryRateLimitStore::new();
    /// let _ = store.measure_and_replace(1, |_| Ok::<_, ()>(((), GcraState::new(10, 0))));
    /// assert_eq!(store.purge_idle(Duration::from_nanos(9)), 0);
    /// assert_eq!(store.purge_idle(Duration::from_nanos(10)), 1);
    /// ```
    pub fn purge_idle(&self, now: Duration) -> usize {
        let now = duration_nanos(now);
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = lock(&shard.0);
            let before = map.len();
            map.retain(|_, s| !s.is_idle_at(now));
            removed += before - map.len();
        }
        removed
    }
}

impl RateLimitStore for InMemoryRateLimitStore {
    type Error = Infallible;

    fn measure_and_replace<T, E, F>(&self, key: u64, f: F) -> Result<Result<T, E>, Infallible>
    where
        F: Fn(Option<GcraState>) -> Result<(T, GcraState), E>,
    {
        let mut map = lock(&self.shard(key).0);
        // One hash lookup for a known key: update in place.
        Ok(match map.get_mut(&key) {
            Some(slot) => f(Some(*slot)).map(|(t, new)| {
                *slot = new;
                t
            }),
            None => f(None).map(|(t, new)| {
                map.insert(key, new);
                t
            }),
        })
    }
}

impl<S: RateLimitStore + ?Sized> RateLimitStore for Arc<S> {
    type Error = S::Error;

    fn measure_and_replace<T, E, F>(&self, key: u64, f: F) -> Result<Result<T, E>, S::Error>
    where
        F: Fn(Option<GcraState>) -> Result<(T, GcraState), E>,
    {
        (**self).measure_and_replace(key, f)
    }
}

/// The asynchronous form of [`RateLimitStore`], for backends reached over
/// the network (Redis, SQL) with an async client.
///
/// Same semantics as [`RateLimitStore::measure_and_replace`]: one atomic
/// compare-and-set of one key's [`GcraState`], `f` pure and callable again
/// on retry, nothing written when `f` refuses. Every [`RateLimitStore`] is an
/// `AsyncRateLimitStore` (its future is ready at once), so implement this
/// trait only for a store that has no synchronous form; the
/// [`Gate`](crate::gate::Gate) and [`RateLimiter::check_async`] take either.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use apikey::limits::ratelimit::{AsyncRateLimitStore, GcraState, Quota, RateLimiter, StdMonotonicClock};
///
/// /// Stands in for a Redis client: every call "goes over the network".
/// struct Remote(std::sync::Mutex<Option<GcraState>>);
///
/// impl AsyncRateLimitStore for Remote {
///     type Error = Infallible;
///     async fn measure_and_replace_async<T: Send, E: Send, F>(&self, _key: u64, f: F) -> Result<Result<T, E>, Infallible>
///     where
///         F: Fn(Option<GcraState>) -> Result<(T, GcraState), E> + Send,
///     {
///         // A real backend: GET, compute f, then SET only if unchanged (WATCH/MULTI or a Lua script).
///         let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
///         Ok(f(*slot).map(|(t, new)| { *slot = Some(new); t }))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = RateLimiter::with_store_and_clock(Remote(Default::default()), StdMonotonicClock::new());
/// let quota = Quota::new(Some(1), None);
/// assert!(limiter.check_async(1, &quota).await.unwrap_or_else(|e| match e {}).is_allowed());
/// assert!(!limiter.check_async(1, &quota).await.unwrap_or_else(|e| match e {}).is_allowed());
/// # }
/// ```
pub trait AsyncRateLimitStore: Send + Sync {
    /// The backend's own failure.
    type Error;

    /// Atomically applies `f` to the state of `key` (see
    /// [`RateLimitStore`] for the contract).
    ///
    /// # Errors
    ///
    /// The backend's failure; the inner `Result` is `f`'s verdict.
    fn measure_and_replace_async<T: Send, E: Send, F>(
        &self,
        key: u64,
        f: F,
    ) -> impl Future<Output = Result<Result<T, E>, Self::Error>> + Send
    where
        F: Fn(Option<GcraState>) -> Result<(T, GcraState), E> + Send;
}

impl<S> AsyncRateLimitStore for S
where
    S: RateLimitStore,
    S::Error: Send,
{
    type Error = S::Error;

    fn measure_and_replace_async<T: Send, E: Send, F>(
        &self,
        key: u64,
        f: F,
    ) -> impl Future<Output = Result<Result<T, E>, Self::Error>> + Send
    where
        F: Fn(Option<GcraState>) -> Result<(T, GcraState), E> + Send,
    {
        std::future::ready(self.measure_and_replace(key, f))
    }
}

// ---------------------------------------------------------------------------
// GCRA
// ---------------------------------------------------------------------------

/// One enforced window, precomputed.
#[derive(Clone, Copy, Debug)]
struct Gcra {
    window: RateWindow,
    limit: u32,
    /// Emission interval `T = ceil(P / L)`, nanoseconds.
    emission: u64,
    /// Burst tolerance `τ = (L - 1) · T`, nanoseconds.
    tolerance: u64,
}

enum WindowOutcome {
    Admit { new_tat: u64, info: RateLimitInfo },
    Refuse { wait: u64, info: RateLimitInfo },
}

impl Gcra {
    /// `None` for a limit of 0 (the window admits nothing).
    fn new(window: RateWindow, limit: u32) -> Option<Self> {
        if limit == 0 {
            return None;
        }
        let period = duration_nanos(window.period());
        let emission = period.div_ceil(u64::from(limit));
        let tolerance = emission.saturating_mul(u64::from(limit) - 1);
        Some(Self {
            window,
            limit,
            emission,
            tolerance,
        })
    }

    fn test(&self, stored_tat: u64, now: u64) -> WindowOutcome {
        let tat = stored_tat.max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            WindowOutcome::Refuse {
                wait: ahead - self.tolerance,
                info: RateLimitInfo {
                    window: self.window,
                    limit: self.limit,
                    remaining: 0,
                    reset_after: Duration::from_nanos(ahead),
                },
            }
        } else {
            let Some(new_tat) = tat.checked_add(self.emission) else {
                // Past the end of representable time (~584 years of uptime):
                // fail closed rather than admit without charging.
                return WindowOutcome::Refuse {
                    wait: self.emission,
                    info: RateLimitInfo {
                        window: self.window,
                        limit: self.limit,
                        remaining: 0,
                        reset_after: Duration::from_nanos(self.emission),
                    },
                };
            };
            let ahead = new_tat - now;
            let remaining = if ahead > self.tolerance {
                0
            } else {
                // ≤ (τ - T) / T + 1 = L - 1, so it fits in u32.
                ((self.tolerance - ahead) / self.emission).saturating_add(1)
            };
            WindowOutcome::Admit {
                new_tat,
                info: RateLimitInfo {
                    window: self.window,
                    limit: self.limit,
                    remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(self.limit),
                    reset_after: Duration::from_nanos(ahead),
                },
            }
        }
    }
}

/// Applies GCRA to both windows at once; `Err` means refused (nothing to
/// write).
fn evaluate(
    windows: &[Option<Gcra>; 2],
    state: Option<GcraState>,
    now: u64,
) -> Result<(RateLimitDecision, GcraState), RateLimitDecision> {
    let state = state.unwrap_or_default();
    let mut tats = [state.minute_tat, state.hour_tat];
    let mut best: Option<RateLimitInfo> = None;
    let mut refusal: Option<(u64, RateLimitInfo)> = None;
    for (gcra, tat) in windows.iter().zip(tats.iter_mut()) {
        let Some(gcra) = gcra else { continue };
        match gcra.test(*tat, now) {
            WindowOutcome::Admit { new_tat, info } => {
                *tat = new_tat;
                let better = best.is_none_or(|b| {
                    (info.remaining, std::cmp::Reverse(info.reset_after))
                        < (b.remaining, std::cmp::Reverse(b.reset_after))
                });
                if better {
                    best = Some(info);
                }
            }
            WindowOutcome::Refuse { wait, info } => {
                if refusal.is_none_or(|(w, _)| wait > w) {
                    refusal = Some((wait, info));
                }
            }
        }
    }
    if let Some((wait, info)) = refusal {
        return Err(RateLimitDecision::Refused {
            info,
            retry_after: Duration::from_nanos(wait),
        });
    }
    Ok((
        RateLimitDecision::Allowed { info: best },
        GcraState::new(tats[0], tats[1]),
    ))
}

/// A GCRA rate limiter over a [`RateLimitStore`] and a [`MonotonicClock`].
///
/// The quota is passed on each call (it usually comes from the key's plan),
/// so one limiter serves keys on every plan. See the [module docs](self)
/// for the exact semantics.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use apikey::limits::ratelimit::{FakeMonotonicClock, Quota, RateLimiter};
///
/// let limiter = RateLimiter::with_clock(Arc::new(FakeMonotonicClock::new()));
/// let admitted = (0..150).filter(|_| limiter.check(42, &Quota::FREE).is_allowed()).count();
/// assert_eq!(admitted, 100);
/// ```
#[derive(Debug, Default)]
pub struct RateLimiter<S = InMemoryRateLimitStore, C = StdMonotonicClock> {
    store: S,
    clock: C,
}

impl RateLimiter {
    /// A limiter with the in-memory store and the standard clock.
    ///
    /// # Example
    ///
    /// ```
    /// let limiter = apikey::limits::ratelimit::RateLimiter::new();
    /// # let _ = limiter;
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C: MonotonicClock> RateLimiter<InMemoryRateLimitStore, C> {
    /// A limiter with the in-memory store and the given clock.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{FakeMonotonicClock, RateLimiter};
    /// let limiter = RateLimiter::with_clock(FakeMonotonicClock::new());
    /// # let _ = limiter;
    /// ```
    #[must_use]
    pub fn with_clock(clock: C) -> Self {
        Self::with_store_and_clock(InMemoryRateLimitStore::new(), clock)
    }

    /// Drops the state of every key that is fully replenished now; no
    /// future decision changes. Returns how many states were dropped.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::{FakeMonotonicClock, Quota, RateLimiter};
    /// let clock = Arc::new(FakeMonotonicClock::new());
    /// let limiter = RateLimiter::with_clock(Arc::clone(&clock));
    /// let _ = limiter.check(1, &Quota::FREE);
    /// assert_eq!(limiter.purge_idle(), 0);
    /// clock.advance(Duration::from_secs(3600));
    /// assert_eq!(limiter.purge_idle(), 1);
    /// ```
    pub fn purge_idle(&self) -> usize {
        self.store.purge_idle(self.clock.now())
    }
}

impl<S, C: MonotonicClock> RateLimiter<S, C> {
    /// A limiter over any store and clock.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey::limits::ratelimit::{InMemoryRateLimitStore, RateLimiter, StdMonotonicClock};
    /// // Two limiters sharing one store see the same state.
    /// let store = Arc::new(InMemoryRateLimitStore::new());
    /// let a = RateLimiter::with_store_and_clock(Arc::clone(&store), StdMonotonicClock::new());
    /// # let _ = a;
    /// ```
    #[must_use]
    pub const fn with_store_and_clock(store: S, clock: C) -> Self {
        Self { store, clock }
    }

    /// The store.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(apikey::limits::ratelimit::RateLimiter::new().store().is_empty());
    /// ```
    #[must_use]
    pub const fn store(&self) -> &S {
        &self.store
    }

    /// The clock.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{FakeMonotonicClock, MonotonicClock, RateLimiter};
    /// let limiter = RateLimiter::with_clock(FakeMonotonicClock::new());
    /// assert_eq!(limiter.clock().now(), std::time::Duration::ZERO);
    /// ```
    #[must_use]
    pub const fn clock(&self) -> &C {
        &self.clock
    }
}

impl<S: RateLimitStore, C: MonotonicClock> RateLimiter<S, C> {
    /// Checks one request for `key` against `quota` and charges it if
    /// admitted; fails only if the store fails.
    ///
    /// # Errors
    ///
    /// The store's error; nothing has been charged in that case as far as
    /// this limiter knows (a backend may not know either: see the store).
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{Quota, RateLimiter};
    /// let limiter = RateLimiter::new();
    /// let decision = limiter.try_check(5, &Quota::PROFESSIONAL).unwrap_or_else(|e| match e {});
    /// assert!(decision.is_allowed());
    /// ```
    pub fn try_check(&self, key: u64, quota: &Quota) -> Result<RateLimitDecision, S::Error> {
        let windows = match plan(quota) {
            Ok(windows) => windows,
            Err(decided) => return Ok(decided),
        };
        let now = duration_nanos(self.clock.now());
        let outcome = self
            .store
            .measure_and_replace(key, |state| evaluate(&windows, state, now))?;
        Ok(outcome.unwrap_or_else(|refused| refused))
    }
}

impl<S: AsyncRateLimitStore, C: MonotonicClock> RateLimiter<S, C> {
    /// [`try_check`](Self::try_check) over an [`AsyncRateLimitStore`] (any
    /// [`RateLimitStore`] is one): same decisions, awaiting the backend.
    ///
    /// # Errors
    ///
    /// The store's error, as for [`try_check`](Self::try_check).
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{Quota, RateLimiter};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = RateLimiter::new();
    /// let decision = limiter.check_async(5, &Quota::FREE).await.unwrap_or_else(|e| match e {});
    /// assert!(decision.is_allowed());
    /// # }
    /// ```
    pub async fn check_async(
        &self,
        key: u64,
        quota: &Quota,
    ) -> Result<RateLimitDecision, S::Error> {
        let windows = match plan(quota) {
            Ok(windows) => windows,
            Err(decided) => return Ok(decided),
        };
        let now = duration_nanos(self.clock.now());
        let outcome = self
            .store
            .measure_and_replace_async(key, move |state| evaluate(&windows, state, now))
            .await?;
        Ok(outcome.unwrap_or_else(|refused| refused))
    }
}

/// The windows `quota` enforces, or the decision when no state is needed
/// (a zero limit refuses; no window admits).
fn plan(quota: &Quota) -> Result<[Option<Gcra>; 2], RateLimitDecision> {
    let specs = [
        (RateWindow::Minute, quota.per_minute),
        (RateWindow::Hour, quota.per_hour),
    ];
    let mut windows = [None, None];
    for ((window, limit), slot) in specs.into_iter().zip(windows.iter_mut()) {
        let Some(limit) = limit else { continue };
        match Gcra::new(window, limit) {
            Some(g) => *slot = Some(g),
            None => {
                // A zero limit admits nothing; no state is read or written.
                let period = window.period();
                return Err(RateLimitDecision::Refused {
                    info: RateLimitInfo {
                        window,
                        limit: 0,
                        remaining: 0,
                        reset_after: period,
                    },
                    retry_after: period,
                });
            }
        }
    }
    if windows.iter().all(Option::is_none) {
        return Err(RateLimitDecision::Allowed { info: None });
    }
    Ok(windows)
}

impl<S: RateLimitStore<Error = Infallible>, C: MonotonicClock> RateLimiter<S, C> {
    /// Checks one request for `key` against `quota` and charges it if
    /// admitted (for stores that cannot fail).
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{Quota, RateLimiter};
    /// let limiter = RateLimiter::new();
    /// let info = *limiter.check(5, &Quota::FREE).info().expect("windows enforced");
    /// assert_eq!(info.remaining, 99);
    /// ```
    pub fn check(&self, key: u64, quota: &Quota) -> RateLimitDecision {
        match self.try_check(key, quota) {
            Ok(d) => d,
            Err(never) => match never {},
        }
    }
}

// ---------------------------------------------------------------------------
// Failed-attempt throttling
// ---------------------------------------------------------------------------

/// Configuration of a [`FailureThrottle`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::ratelimit::FailureThrottleConfig;
///
/// let cfg = FailureThrottleConfig {
///     max_failures: 5,
///     lockout: Duration::from_secs(60),
///     ..FailureThrottleConfig::default()
/// };
/// assert_eq!(cfg.ipv6_prefix_len, 64);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailureThrottleConfig {
    /// Failures within `window` that trigger a lockout (values below 1 are
    /// treated as 1). Default 10.
    pub max_failures: u32,
    /// The counting window, started by an address's first failure; failures
    /// older than this are forgotten. Default 10 minutes.
    pub window: Duration,
    /// How long an address stays locked out. A zero lockout disables
    /// throttling. Default 15 minutes.
    pub lockout: Duration,
    /// The most addresses tracked at once (values below 1 are treated as 1).
    /// Default 65,536. See [`FailureThrottle`] for eviction.
    pub max_tracked: usize,
    /// IPv6 addresses are grouped by this prefix length (clamped to 128),
    /// since one client usually holds a whole /64. Default 64.
    pub ipv6_prefix_len: u8,
}

impl Default for FailureThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(10 * 60),
            lockout: Duration::from_secs(15 * 60),
            max_tracked: 65_536,
            ipv6_prefix_len: 64,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct FailureEntry {
    window_start: u64,
    failures: u32,
    locked_until: Option<u64>,
    last_seen: u64,
}

#[derive(Debug)]
struct ThrottleShard {
    cap: usize,
    map: Mutex<HashMap<IpAddr, FailureEntry>>,
}

const THROTTLE_MAX_SHARDS: usize = 16;

/// Locks out client addresses after repeated failed attempts (brute-force
/// protection, OWASP API2).
///
/// * [`record_failure`](Self::record_failure) counts a failed attempt; once
///   `max_failures` failures fall within `window`, the address is locked out
///   for `lockout`. Failures recorded while locked out are not counted and do
///   not extend the lockout.
/// * [`check`](Self::check) is a keyed hash and one map lookup under a
///   shard lock: call it before doing any expensive verification.
/// * A success does **not** reset the counter (otherwise an attacker holding
///   one valid key could interleave it to keep guessing others); use
///   [`clear`](Self::clear) for an explicit administrative reset.
/// * IPv4-mapped IPv6 addresses count as their IPv4 address; other IPv6
///   addresses are grouped by `ipv6_prefix_len`.
///
/// # Memory bound and eviction
///
/// At most `max_tracked` addresses are tracked, split over up to 16 shards
/// chosen by a randomly keyed hash. When a new address arrives at a full
/// shard, the shard first drops stale entries (not locked and with a
/// finished window); if that is not enough it evicts about one eighth of its
/// capacity, preferring entries that are not locked (oldest failure first),
/// then locked entries whose lockout ends soonest. An attacker rotating
/// addresses can therefore push out other counters and, when the table is
/// full of lockouts, old lockouts — but cannot grow memory, and each of its
/// addresses still gets at most `max_failures` attempts per lockout.
///
/// # Example
///
/// ```
/// use std::net::IpAddr;
/// use std::sync::Arc;
/// use std::time::Duration;
/// use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig, FakeMonotonicClock};
///
/// let clock = Arc::new(FakeMonotonicClock::new());
/// let cfg = FailureThrottleConfig { max_failures: 3, ..Default::default() };
/// let throttle = FailureThrottle::with_clock(cfg, Arc::clone(&clock));
/// let ip: IpAddr = "203.0.113.7".parse()?;
///
/// for _ in 0..3 {
///     assert!(throttle.check(ip).is_ok());
///     let _ = throttle.record_failure(ip);
/// }
/// assert_eq!(throttle.check(ip), Err(cfg.lockout));
/// clock.advance(cfg.lockout);
/// assert!(throttle.check(ip).is_ok());
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug)]
pub struct FailureThrottle<C = StdMonotonicClock> {
    config: FailureThrottleConfig,
    clock: C,
    hasher: RandomState,
    shards: Vec<ThrottleShard>,
}

impl FailureThrottle {
    /// A throttle on the standard clock.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig};
    /// let throttle = FailureThrottle::new(FailureThrottleConfig::default());
    /// assert_eq!(throttle.tracked(), 0);
    /// ```
    #[must_use]
    pub fn new(config: FailureThrottleConfig) -> Self {
        Self::with_clock(config, StdMonotonicClock::new())
    }
}

impl<C: MonotonicClock> FailureThrottle<C> {
    /// A throttle on the given clock.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig, FakeMonotonicClock};
    /// let t = FailureThrottle::with_clock(FailureThrottleConfig::default(), FakeMonotonicClock::new());
    /// assert_eq!(t.config().max_failures, 10);
    /// ```
    #[must_use]
    pub fn with_clock(mut config: FailureThrottleConfig, clock: C) -> Self {
        config.max_failures = config.max_failures.max(1);
        config.max_tracked = config.max_tracked.max(1);
        config.ipv6_prefix_len = config.ipv6_prefix_len.min(128);
        let n = config.max_tracked.min(THROTTLE_MAX_SHARDS);
        let base = config.max_tracked / n;
        let extra = config.max_tracked % n;
        let shards = (0..n)
            .map(|i| ThrottleShard {
                cap: base + usize::from(i < extra),
                map: Mutex::new(HashMap::new()),
            })
            .collect();
        Self {
            config,
            clock,
            hasher: RandomState::new(),
            shards,
        }
    }

    /// The effective configuration (after clamping).
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig};
    /// let cfg = FailureThrottleConfig { max_failures: 0, ..Default::default() };
    /// assert_eq!(FailureThrottle::new(cfg).config().max_failures, 1);
    /// ```
    #[must_use]
    pub const fn config(&self) -> &FailureThrottleConfig {
        &self.config
    }

    fn normalize(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => {
                let shift = 128 - u32::from(self.config.ipv6_prefix_len);
                let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    fn shard(&self, ip: &IpAddr) -> Option<&ThrottleShard> {
        let h = self.hasher.hash_one(ip);
        let n = self.shards.len().max(1);
        let idx = usize::try_from(h % n as u64).unwrap_or(0);
        self.shards.get(idx)
    }

    /// `Err(wait)` if `ip` is locked out, with the time until the lockout
    /// ends (for `Retry-After`); `Ok(())` otherwise.
    ///
    /// # Errors
    ///
    /// The remaining lockout if the address is locked out.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig};
    /// let t = FailureThrottle::new(FailureThrottleConfig::default());
    /// assert!(t.check("192.0.2.1".parse().expect("valid")).is_ok());
    /// ```
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = self.normalize(ip);
        let Some(shard) = self.shard(&ip) else {
            return Ok(());
        };
        let now = duration_nanos(self.clock.now());
        match lock(&shard.map).get(&ip).and_then(|e| e.locked_until) {
            Some(until) if until > now => Err(Duration::from_nanos(until - now)),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt from `ip`. Returns `Err(wait)` if the
    /// address is (now) locked out, with the time until the lockout ends.
    ///
    /// # Errors
    ///
    /// The remaining lockout if this failure triggered one or one was
    /// already in force.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig, FakeMonotonicClock};
    /// let cfg = FailureThrottleConfig { max_failures: 2, lockout: Duration::from_secs(9), ..Default::default() };
    /// let t = FailureThrottle::with_clock(cfg, FakeMonotonicClock::new());
    /// let ip = "192.0.2.1".parse().expect("valid");
    /// assert_eq!(t.record_failure(ip), Ok(()));
    /// assert_eq!(t.record_failure(ip), Err(Duration::from_secs(9)));
    /// ```
    pub fn record_failure(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = self.normalize(ip);
        let Some(shard) = self.shard(&ip) else {
            return Ok(());
        };
        let now = duration_nanos(self.clock.now());
        let window = duration_nanos(self.config.window);
        let lockout = duration_nanos(self.config.lockout);
        let mut map = lock(&shard.map);
        if !map.contains_key(&ip) && map.len() >= shard.cap {
            evict(&mut map, shard.cap, now, window);
        }
        let entry = map.entry(ip).or_insert(FailureEntry {
            window_start: now,
            failures: 0,
            locked_until: None,
            last_seen: now,
        });
        if let Some(until) = entry.locked_until {
            if until > now {
                return Err(Duration::from_nanos(until - now));
            }
            // The lockout is over: start afresh.
            entry.locked_until = None;
            entry.failures = 0;
            entry.window_start = now;
        }
        if now.saturating_sub(entry.window_start) >= window {
            entry.failures = 0;
            entry.window_start = now;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_seen = now;
        if entry.failures >= self.config.max_failures && lockout > 0 {
            entry.locked_until = Some(now.saturating_add(lockout));
            return Err(Duration::from_nanos(lockout));
        }
        Ok(())
    }

    /// Forgets `ip` (its counter and any lockout). Returns whether it was
    /// tracked.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig};
    /// let t = FailureThrottle::new(FailureThrottleConfig::default());
    /// let ip = "192.0.2.1".parse().expect("valid");
    /// let _ = t.record_failure(ip);
    /// assert!(t.clear(ip));
    /// assert_eq!(t.tracked(), 0);
    /// ```
    pub fn clear(&self, ip: IpAddr) -> bool {
        let ip = self.normalize(ip);
        self.shard(&ip)
            .is_some_and(|shard| lock(&shard.map).remove(&ip).is_some())
    }

    /// The number of addresses (or IPv6 prefixes) currently tracked; never
    /// more than `max_tracked`.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig};
    /// assert_eq!(FailureThrottle::new(FailureThrottleConfig::default()).tracked(), 0);
    /// ```
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.map).len()).sum()
    }

    /// Drops every stale entry (not locked and with a finished window);
    /// returns how many were dropped. Optional: full shards do this by
    /// themselves.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig, FakeMonotonicClock};
    /// let clock = Arc::new(FakeMonotonicClock::new());
    /// let t = FailureThrottle::with_clock(FailureThrottleConfig::default(), Arc::clone(&clock));
    /// let _ = t.record_failure("192.0.2.1".parse().expect("valid"));
    /// clock.advance(Duration::from_secs(3600));
    /// assert_eq!(t.purge_expired(), 1);
    /// ```
    pub fn purge_expired(&self) -> usize {
        let now = duration_nanos(self.clock.now());
        let window = duration_nanos(self.config.window);
        self.shards
            .iter()
            .map(|s| {
                let mut map = lock(&s.map);
                let before = map.len();
                map.retain(|_, e| !is_stale(e, now, window));
                before - map.len()
            })
            .sum()
    }
}

fn is_stale(e: &FailureEntry, now: u64, window: u64) -> bool {
    match e.locked_until {
        Some(until) => until <= now,
        None => now.saturating_sub(e.window_start) >= window,
    }
}

/// Makes room in a full shard (see [`FailureThrottle`] docs).
fn evict(map: &mut HashMap<IpAddr, FailureEntry>, cap: usize, now: u64, window: u64) {
    map.retain(|_, e| !is_stale(e, now, window));
    if map.len() < cap {
        return;
    }
    let free = (cap / 8).max(1);
    let excess = (map.len() + free).saturating_sub(cap);
    let mut order: Vec<((bool, u64), IpAddr)> = map
        .iter()
        .map(|(ip, e)| {
            let rank = match e.locked_until {
                Some(until) if until > now => (true, until),
                _ => (false, e.last_seen),
            };
            (rank, *ip)
        })
        .collect();
    order.sort_unstable();
    for (_, ip) in order.into_iter().take(excess) {
        map.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> (
        Arc<FakeMonotonicClock>,
        RateLimiter<InMemoryRateLimitStore, Arc<FakeMonotonicClock>>,
    ) {
        let clock = Arc::new(FakeMonotonicClock::new());
        (Arc::clone(&clock), RateLimiter::with_clock(clock))
    }

    #[test]
    fn burst_of_exactly_limit_then_retry_after() {
        let (clock, rl) = limiter();
        let q = Quota::new(Some(10), None);
        for i in 0..10u32 {
            let d = rl.check(1, &q);
            assert!(d.is_allowed(), "request {i}");
            assert_eq!(d.info().map(|i| i.remaining), Some(9 - i));
        }
        let d = rl.check(1, &q);
        assert_eq!(d.retry_after(), Some(Duration::from_secs(6)));
        assert_eq!(d.retry_after_secs(), Some(6));
        clock.advance(Duration::from_secs(6) - Duration::from_nanos(1));
        assert!(!rl.check(1, &q).is_allowed());
        clock.advance(Duration::from_nanos(1));
        assert!(rl.check(1, &q).is_allowed());
        assert!(!rl.check(1, &q).is_allowed());
    }

    #[test]
    fn refusal_charges_no_window() {
        let (_clock, rl) = limiter();
        let q = Quota::new(Some(2), Some(100));
        let _ = rl.check(1, &q);
        let _ = rl.check(1, &q);
        let before = rl.store().get(1);
        for _ in 0..5 {
            assert!(!rl.check(1, &q).is_allowed());
        }
        assert_eq!(rl.store().get(1), before);
    }

    #[test]
    fn least_remaining_window_is_reported() {
        let (_clock, rl) = limiter();
        let q = Quota::new(Some(100), Some(3));
        let info = rl.check(1, &q).info().copied();
        assert_eq!(
            info.map(|i| (i.window, i.limit, i.remaining)),
            Some((RateWindow::Hour, 3, 2))
        );
        let q = Quota::new(Some(2), Some(1000));
        let info = rl.check(2, &q).info().copied();
        assert_eq!(
            info.map(|i| (i.window, i.remaining)),
            Some((RateWindow::Minute, 1))
        );
        // reset = time until the window is full again: one emission interval.
        assert_eq!(info.map(|i| i.reset_after), Some(Duration::from_secs(30)));
    }

    #[test]
    fn zero_limit_refuses_without_state() {
        let (_clock, rl) = limiter();
        let d = rl.check(1, &Quota::new(Some(0), Some(5)));
        assert!(!d.is_allowed());
        assert_eq!(d.info().map(|i| i.limit), Some(0));
        assert!(rl.store().is_empty());
    }

    #[test]
    fn unlimited_admits_without_state() {
        let (_clock, rl) = limiter();
        for _ in 0..1000 {
            assert_eq!(
                rl.check(1, &Quota::unlimited()),
                RateLimitDecision::Allowed { info: None }
            );
        }
        assert!(rl.store().is_empty());
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        let clock = Arc::new(FakeMonotonicClock::starting_at(Duration::from_secs(100)));
        let rl = RateLimiter::with_clock(Arc::clone(&clock));
        let q = Quota::new(Some(1), Some(1));
        assert!(rl.check(1, &q).is_allowed());
        clock.set(Duration::ZERO);
        let d = rl.check(1, &q);
        assert!(!d.is_allowed());
        clock.set(Duration::from_secs(3600) + Duration::from_secs(100));
        assert!(rl.check(1, &q).is_allowed());
        // At the end of representable time: refused (fail closed), no overflow.
        clock.set(Duration::from_nanos(u64::MAX));
        assert!(!rl.check(1, &q).is_allowed());
    }

    #[test]
    fn extreme_limits() {
        let (_clock, rl) = limiter();
        let q = Quota::new(Some(u32::MAX), Some(u32::MAX));
        assert!(rl.check(1, &q).is_allowed());
        let q = Quota::new(Some(1), None);
        assert!(rl.check(2, &q).is_allowed());
        assert_eq!(rl.check(2, &q).retry_after(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn reset_helpers() {
        let info = RateLimitInfo {
            window: RateWindow::Minute,
            limit: 1,
            remaining: 0,
            reset_after: Duration::from_nanos(1),
        };
        assert_eq!(info.reset_after_secs(), 1);
        assert_eq!(info.reset_at_unix(i64::MAX), i64::MAX);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn purge_keeps_decisions() {
        let (clock, rl) = limiter();
        let q = Quota::new(Some(2), None);
        let _ = rl.check(1, &q);
        clock.advance(Duration::from_secs(29));
        assert_eq!(rl.purge_idle(), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(rl.purge_idle(), 1);
        assert_eq!(rl.check(1, &q).info().map(|i| i.remaining), Some(1));
    }

    #[test]
    fn state_bytes_roundtrip() {
        let s = GcraState::new(0x0102_0304_0506_0708, u64::MAX);
        assert_eq!(GcraState::from_be_bytes(s.to_be_bytes()), s);
    }

    fn throttle(
        max_failures: u32,
        max_tracked: usize,
    ) -> (
        Arc<FakeMonotonicClock>,
        FailureThrottle<Arc<FakeMonotonicClock>>,
    ) {
        let clock = Arc::new(FakeMonotonicClock::new());
        let cfg = FailureThrottleConfig {
            max_failures,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            max_tracked,
            ipv6_prefix_len: 64,
        };
        (Arc::clone(&clock), FailureThrottle::with_clock(cfg, clock))
    }

    #[test]
    fn failures_lock_out_and_expire() {
        let (clock, t) = throttle(3, 100);
        let ip: IpAddr = IpAddr::from([198, 51, 100, 1]);
        assert_eq!(t.record_failure(ip), Ok(()));
        assert_eq!(t.record_failure(ip), Ok(()));
        assert_eq!(t.check(ip), Ok(()));
        assert_eq!(t.record_failure(ip), Err(Duration::from_secs(300)));
        clock.advance(Duration::from_secs(100));
        assert_eq!(t.check(ip), Err(Duration::from_secs(200)));
        // Failures during the lockout neither count nor extend it.
        assert_eq!(t.record_failure(ip), Err(Duration::from_secs(200)));
        clock.advance(Duration::from_secs(200));
        assert_eq!(t.check(ip), Ok(()));
        assert_eq!(t.record_failure(ip), Ok(()));
    }

    #[test]
    fn failures_outside_window_are_forgotten() {
        let (clock, t) = throttle(2, 100);
        let ip = IpAddr::from([198, 51, 100, 2]);
        assert_eq!(t.record_failure(ip), Ok(()));
        clock.advance(Duration::from_secs(60));
        assert_eq!(t.record_failure(ip), Ok(()));
        assert!(t.record_failure(ip).is_err());
    }

    #[test]
    fn ipv6_grouped_by_prefix_and_mapped_v4() {
        let (_clock, t) = throttle(2, 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let _ = t.record_failure(a);
        assert!(t.record_failure(b).is_err());
        assert!(t.check(a).is_err());
        let v4 = IpAddr::from([192, 0, 2, 9]);
        let mapped: IpAddr = "::ffff:192.0.2.9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let _ = t.record_failure(v4);
        assert!(t.record_failure(mapped).is_err());
        assert!(t.check(v4).is_err());
    }

    #[test]
    fn cap_holds_and_prefers_evicting_unlocked() {
        let (_clock, t) = throttle(1, 50);
        let (_clock2, t2) = throttle(1000, 50);
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = t.record_failure(ip);
            let _ = t2.record_failure(ip);
            assert!(t.tracked() <= 50);
            assert!(t2.tracked() <= 50);
        }
        assert!(t.tracked() > 0);
    }

    #[test]
    fn eviction_order() {
        let mut map = HashMap::new();
        let locked = IpAddr::from([1, 1, 1, 1]);
        let old = IpAddr::from([2, 2, 2, 2]);
        let new = IpAddr::from([3, 3, 3, 3]);
        map.insert(
            locked,
            FailureEntry {
                window_start: 0,
                failures: 5,
                locked_until: Some(100),
                last_seen: 0,
            },
        );
        map.insert(
            old,
            FailureEntry {
                window_start: 1,
                failures: 1,
                locked_until: None,
                last_seen: 1,
            },
        );
        map.insert(
            new,
            FailureEntry {
                window_start: 2,
                failures: 1,
                locked_until: None,
                last_seen: 2,
            },
        );
        evict(&mut map, 3, 5, 50);
        assert!(map.contains_key(&locked) && map.contains_key(&new) && !map.contains_key(&old));
    }

    #[test]
    fn fake_clock_saturates() {
        let c = FakeMonotonicClock::starting_at(Duration::MAX);
        c.advance(Duration::MAX);
        assert_eq!(c.now(), Duration::from_nanos(u64::MAX));
    }
}
