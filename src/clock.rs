//! Clocks: where "now" comes from.
//!
//! Verification never reads the wall clock by itself: the pure core takes a
//! `now` argument, and the [`Authenticator`](crate::Authenticator) asks a
//! [`Clock`]. [`SystemClock`] is the default; [`ManualClock`] is for tests
//! (yours too) and only moves when told to.
//!
//! # Supported time range
//!
//! Every time the crate accepts (record fields, `now` arguments, clock
//! readings, RFC 3339 input) must lie in [`MIN_TIME`]..=[`MAX_TIME`]:
//! Unix time in microseconds from 0 to 2^53 − 1, that is
//! 1970-01-01T00:00:00Z through 2255-06-05T23:47:34.740991Z (what a 64-bit
//! float, such as a Redis Lua number, represents exactly). Any UTC offset
//! is fine as long as the instant is inside. A time outside is
//! [`Error::InvalidInput`] (`INVALID_REQUEST`, 400), never a panic or a
//! wrong answer; a record with one is [`Error::InvalidRecord`]. A clock
//! that reads outside the range makes every operation that reads it answer
//! `INVALID_REQUEST`.

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use crate::error::{Error, Result};

/// A point in time as whole microseconds since the Unix epoch: the one time
/// base of all state the crate keeps (records, rate limits, credits,
/// throttles), in every store.
///
/// The supported range is [`Timestamp::MIN`] (1970-01-01T00:00:00Z) to
/// [`Timestamp::MAX`] (2^53 - 1 µs, 2255-06-05T23:47:34.740991Z): every value
/// is an integer that a double (a Redis Lua number, a JSON number) holds
/// exactly. Times outside it are refused with
/// [`Error::InvalidInput`](crate::Error::InvalidInput) (`INVALID_REQUEST`).
///
/// ```
/// use apikey::Timestamp;
/// use time::macros::datetime;
/// let t = Timestamp::from_datetime(datetime!(2026-01-01 0:00:00.000_001_9 UTC))?;
/// assert_eq!(t.as_unix_micros(), 1_767_225_600_000_001); // truncated to the microsecond
/// assert_eq!(t.to_datetime(), datetime!(2026-01-01 0:00:00.000_001 UTC));
/// assert!(Timestamp::from_datetime(datetime!(1969-12-31 23:59 UTC)).is_err());
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const MIN: Self = Self(0);
    /// 2^53 - 1 microseconds after the epoch: 2255-06-05T23:47:34.740991Z.
    pub const MAX: Self = Self((1 << 53) - 1);

    /// `micros` since the Unix epoch.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] outside [`MIN`](Self::MIN)..=[`MAX`](Self::MAX).
    pub fn from_unix_micros(micros: i64) -> Result<Self> {
        if !(Self::MIN.0..=Self::MAX.0).contains(&micros) {
            return Err(out_of_range());
        }
        Ok(Self(micros))
    }

    /// `t`, truncated to whole microseconds.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] outside the supported range.
    pub fn from_datetime(t: OffsetDateTime) -> Result<Self> {
        let micros = t.unix_timestamp_nanos().div_euclid(1000);
        match i64::try_from(micros) {
            Ok(m) if (Self::MIN.0..=Self::MAX.0).contains(&m) => Ok(Self(m)),
            _ => Err(out_of_range()),
        }
    }

    /// Like [`from_datetime`](Self::from_datetime), clamped into the range.
    pub fn saturating_from_datetime(t: OffsetDateTime) -> Self {
        let micros = t.unix_timestamp_nanos().div_euclid(1000);
        Self(micros.clamp(i128::from(Self::MIN.0), i128::from(Self::MAX.0)) as i64)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_unix_micros(self) -> i64 {
        self.0
    }

    /// Nanoseconds since the Unix epoch (exact: 2^53 µs is below 2^63 ns).
    pub const fn as_unix_nanos(self) -> i64 {
        self.0 * 1000
    }

    /// The same instant as a UTC date and time.
    pub fn to_datetime(self) -> OffsetDateTime {
        // Every value in range is a valid `OffsetDateTime`.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// `self + micros`, clamped into the range.
    pub const fn saturating_add_micros(self, micros: i64) -> Self {
        let v = self.0.saturating_add(micros);
        if v > Self::MAX.0 {
            Self::MAX
        } else if v < Self::MIN.0 {
            Self::MIN
        } else {
            Self(v)
        }
    }
}

/// The earliest supported time: the Unix epoch, 1970-01-01T00:00:00Z.
pub const MIN_TIME: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

/// The latest supported time: 2^53 − 1 microseconds after the Unix epoch,
/// 2255-06-05T23:47:34.740991Z (inclusive).
pub const MAX_TIME: OffsetDateTime = time::macros::datetime!(2255-06-05 23:47:34.740991 UTC);

/// [`MAX_TIME`] in Unix nanoseconds.
pub(crate) const MAX_TIME_NANOS: i64 = ((1i64 << 53) - 1) * 1000;

/// Whether `t` is in the supported range ([`MIN_TIME`]..=[`MAX_TIME`]).
/// Never panics, whatever the offset.
///
/// ```
/// use apikey::{MAX_TIME, MIN_TIME, in_time_range};
/// use time::macros::datetime;
/// assert!(in_time_range(MIN_TIME) && in_time_range(MAX_TIME));
/// assert!(!in_time_range(MAX_TIME + time::Duration::MICROSECOND));
/// assert!(!in_time_range(datetime!(9999-12-31 23:59:59 -23:59)));
/// assert!(!in_time_range(datetime!(1969-12-31 23:59:59 UTC)));
/// ```
pub fn in_time_range(t: OffsetDateTime) -> bool {
    unix_nanos_in_range(t).is_some()
}

/// `t` in Unix nanoseconds, when in the supported range.
#[inline]
pub(crate) fn unix_nanos_in_range(t: OffsetDateTime) -> Option<i64> {
    let n = t.unix_timestamp_nanos();
    if (0..=i128::from(MAX_TIME_NANOS)).contains(&n) {
        Some(n as i64)
    } else {
        None
    }
}

/// `t` converted to UTC and truncated to whole microseconds (the precision
/// records keep in every store, PostgreSQL's), when in the supported range.
///
/// # Errors
/// [`Error::InvalidInput`] (`INVALID_REQUEST`) naming the range otherwise.
///
/// ```
/// use apikey::check_time;
/// use time::macros::datetime;
/// assert_eq!(check_time(datetime!(2026-01-01 1:00 +01:00))?, datetime!(2026-01-01 0:00 UTC));
/// assert_eq!(check_time(datetime!(2026-01-01 0:00:00.123_456_789 UTC))?, datetime!(2026-01-01 0:00:00.123_456 UTC));
/// assert_eq!(check_time(datetime!(9999-12-31 23:59:59 -23:59)).unwrap_err().code(), "INVALID_REQUEST");
/// # Ok::<(), apikey::Error>(())
/// ```
pub fn check_time(t: OffsetDateTime) -> Result<OffsetDateTime> {
    if in_time_range(t) {
        // In range, so the UTC value exists.
        Ok(to_micros(
            t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t),
        ))
    } else {
        Err(out_of_range())
    }
}

/// `t` with its sub-microsecond part dropped.
pub(crate) fn to_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

/// The error for a time outside the supported range.
pub(crate) fn out_of_range() -> Error {
    Error::InvalidInput(
        "time outside the supported range (1970-01-01T00:00:00Z to 2255-06-05T23:47:34.740991Z)"
            .into(),
    )
}

/// A source of the current time: the one clock of the crate (verification,
/// management, rate limits, credits and throttles all read it).
pub trait Clock: Send + Sync {
    /// The current time (UTC).
    fn now(&self) -> OffsetDateTime;

    /// The current time as a [`Timestamp`], clamped into its range. The
    /// default converts [`now`](Self::now); [`SystemClock`] reads the
    /// system time directly, with no calendar conversion.
    fn timestamp(&self) -> Timestamp {
        Timestamp::saturating_from_datetime(self.now())
    }

    /// The current time as a [`Timestamp`], or [`Error::InvalidInput`]
    /// (`INVALID_REQUEST`) when the clock reads outside the supported range:
    /// what verification reads. The default converts [`now`](Self::now);
    /// [`SystemClock`] reads the system time directly, with no calendar
    /// conversion.
    ///
    /// ```
    /// use apikey::{Clock, ManualClock, SystemClock};
    /// use time::macros::datetime;
    /// assert!(SystemClock.checked_timestamp().is_ok());
    /// let far = ManualClock::new(datetime!(9999-01-01 0:00 UTC));
    /// assert_eq!(far.checked_timestamp().unwrap_err().code(), "INVALID_REQUEST");
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] outside [`MIN_TIME`]..=[`MAX_TIME`].
    fn checked_timestamp(&self) -> Result<Timestamp> {
        Timestamp::from_datetime(self.now())
    }
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

    #[inline]
    fn timestamp(&self) -> Timestamp {
        Timestamp(system_micros().clamp(Timestamp::MIN.0, Timestamp::MAX.0))
    }

    /// The system's real-time clock (`clock_gettime(CLOCK_REALTIME)`, read
    /// from the vDSO on Linux: no system call, no calendar conversion),
    /// truncated to whole microseconds.
    ///
    /// It is the precise clock, not the kernel's coarse one: the coarse
    /// clock is the time of the last timer tick, and in a virtual machine a
    /// late tick (or a paused vCPU) leaves it behind the real time by more
    /// than its resolution, which would let a key verify after its expiry.
    /// A reading here is the real time it was taken at, to the microsecond
    /// (records keep microseconds), so an expiry or a not-before takes
    /// effect exactly at its microsecond. It costs about 25 ns more than
    /// the coarse clock would.
    #[inline]
    fn checked_timestamp(&self) -> Result<Timestamp> {
        Timestamp::from_unix_micros(system_micros())
    }
}

/// The system time in Unix microseconds (truncated), saturating at
/// `i64::MAX`; -1 before 1970 (out of range either way).
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

/// A clock that stands still until advanced. Clones share one time.
///
/// It holds any time, but the crate only accepts readings in the
/// [supported range](crate::MIN_TIME) ([`MIN_TIME`]..=[`MAX_TIME`]): set it outside and every
/// operation that reads it answers `INVALID_REQUEST`.
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
    fn timestamp(&self) -> Timestamp {
        (**self).timestamp()
    }
    fn checked_timestamp(&self) -> Result<Timestamp> {
        (**self).checked_timestamp()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
    fn timestamp(&self) -> Timestamp {
        (**self).timestamp()
    }
    fn checked_timestamp(&self) -> Result<Timestamp> {
        (**self).checked_timestamp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_supported_range() {
        assert_eq!(Timestamp::MIN.to_datetime(), MIN_TIME);
        assert_eq!(Timestamp::MAX.to_datetime(), MAX_TIME);
        assert_eq!(
            Timestamp::from_datetime(MAX_TIME).ok(),
            Some(Timestamp::MAX)
        );
        assert!(Timestamp::from_datetime(MAX_TIME + time::Duration::MICROSECOND).is_err());
        assert_eq!(Timestamp::MAX.as_unix_micros(), (1 << 53) - 1);
        // Exact in a double.
        assert_eq!(Timestamp::MAX.as_unix_micros() as f64 as i64, (1 << 53) - 1);
    }
}
