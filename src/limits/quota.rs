//! Quotas: how many requests a key may make per minute and per hour.

use std::time::Duration;

/// One of the two windows of a [`Quota`].
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::RateWindow;
/// assert_eq!(RateWindow::Hour.period(), Duration::from_secs(3600));
/// assert_eq!(RateWindow::Minute.as_str(), "minute");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RateWindow {
    /// The per-minute window (60 s).
    Minute,
    /// The per-hour window (3600 s).
    Hour,
}

impl RateWindow {
    /// Both windows, in the order decisions evaluate them.
    pub const ALL: [Self; 2] = [Self::Minute, Self::Hour];

    /// The length of the window.
    #[must_use]
    pub const fn period(self) -> Duration {
        Duration::from_micros(self.period_micros() as u64)
    }

    /// The length of the window in microseconds (the unit of all limit
    /// state).
    ///
    /// ```
    /// assert_eq!(apikey::limits::RateWindow::Minute.period_micros(), 60_000_000);
    /// ```
    #[must_use]
    pub const fn period_micros(self) -> i64 {
        match self {
            Self::Minute => 60_000_000,
            Self::Hour => 3_600_000_000,
        }
    }

    /// `"minute"` or `"hour"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
        }
    }
}

/// A rate-limit quota: an optional per-minute and an optional per-hour
/// limit, each enforced with GCRA (see [the limits docs](crate::limits)) with a
/// burst equal to the window's limit.
///
/// * not set: the window is not enforced;
/// * `0`: the window admits nothing (fail closed, e.g. a suspended plan);
///   the refusal reports `limit = 0` and the window's period as the wait,
///   as a hint only;
/// * `n`: `n` requests per window.
///
/// Plans are yours to define (the examples define a Free and a
/// Professional plan as constants):
///
/// ```
/// use apikey::limits::{Quota, RateWindow};
/// const FREE: Quota = Quota::unlimited().per_minute(100).per_hour(1_000);
/// assert_eq!(FREE.limit(RateWindow::Minute), Some(100));
/// assert_eq!(FREE, Quota::new(Some(100), Some(1_000)));
/// assert!(Quota::unlimited().is_unlimited());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Quota {
    per_minute: Option<u32>,
    per_hour: Option<u32>,
}

impl Quota {
    /// No window enforced: every request is admitted without touching any
    /// state.
    pub const UNLIMITED: Self = Self::new(None, None);

    /// A quota from its two windows (`None`: not enforced).
    #[must_use]
    pub const fn new(per_minute: Option<u32>, per_hour: Option<u32>) -> Self {
        Self {
            per_minute,
            per_hour,
        }
    }

    /// A quota that enforces no window ([`UNLIMITED`](Self::UNLIMITED)).
    #[must_use]
    pub const fn unlimited() -> Self {
        Self::UNLIMITED
    }

    /// Enforces `limit` requests per minute.
    #[must_use]
    pub const fn per_minute(mut self, limit: u32) -> Self {
        self.per_minute = Some(limit);
        self
    }

    /// Enforces `limit` requests per hour.
    #[must_use]
    pub const fn per_hour(mut self, limit: u32) -> Self {
        self.per_hour = Some(limit);
        self
    }

    /// The limit of `window`, if enforced.
    ///
    /// ```
    /// use apikey::limits::{Quota, RateWindow};
    /// assert_eq!(Quota::unlimited().per_hour(5).limit(RateWindow::Hour), Some(5));
    /// assert_eq!(Quota::unlimited().limit(RateWindow::Minute), None);
    /// ```
    #[must_use]
    pub const fn limit(&self, window: RateWindow) -> Option<u32> {
        match window {
            RateWindow::Minute => self.per_minute,
            RateWindow::Hour => self.per_hour,
        }
    }

    /// Whether no window is enforced.
    #[must_use]
    pub const fn is_unlimited(&self) -> bool {
        self.per_minute.is_none() && self.per_hour.is_none()
    }
}
