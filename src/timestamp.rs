//! The one point-in-time type: [`Timestamp`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time as whole microseconds since the Unix epoch: the one time
/// type of the crate (records, listings, audit events, usage, rate limits,
/// credits, throttles), in every store.
///
/// Every value is in [`MIN`](Self::MIN)..=[`MAX`](Self::MAX); every way in
/// checks it once. It prints and serializes as RFC 3339 in UTC
/// (`2026-01-01T00:00:00.5Z`), and parses any RFC 3339 offset, so records
/// written as RFC 3339 strings by earlier versions read back unchanged
/// (sub-microsecond digits are truncated, as every store keeps
/// microseconds).
///
/// ```
/// use apikey::Timestamp;
/// use std::time::Duration;
/// let t: Timestamp = "2026-01-01T01:00:00.000001999+01:00".parse()?;
/// assert_eq!(t.to_string(), "2026-01-01T00:00:00.000001Z"); // UTC, truncated to the microsecond
/// assert_eq!(t.as_unix_micros(), 1_767_225_600_000_001);
/// let later = t.checked_add(Duration::from_secs(90 * 86_400)).unwrap();
/// assert_eq!(later.to_string(), "2026-04-01T00:00:00.000001Z");
/// assert_eq!(later.saturating_duration_since(t), Duration::from_secs(90 * 86_400));
/// assert!("1969-12-31T23:59:59Z".parse::<apikey::Timestamp>().is_err());
/// assert!(Timestamp::MAX.checked_add(Duration::from_micros(1)).is_none());
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 1970-01-01T00:00:00Z, the earliest supported time.
    pub const MIN: Self = Self(0);
    /// 2^53 − 1 microseconds after the epoch, 2255-06-05T23:47:34.740991Z:
    /// the latest supported time.
    pub const MAX: Self = Self((1 << 53) - 1);

    /// `micros` since the Unix epoch.
    ///
    /// # Errors
    /// [`TimestampError::OutOfRange`] outside [`MIN`](Self::MIN)..=[`MAX`](Self::MAX).
    pub fn from_unix_micros(micros: i64) -> Result<Self, TimestampError> {
        Self::checked_from_unix_micros(micros).ok_or(TimestampError::OutOfRange)
    }

    /// `micros` since the Unix epoch, or `None` outside the range: the one
    /// range check, usable in `const` items.
    ///
    /// ```
    /// use apikey::Timestamp;
    /// const START: Timestamp = Timestamp::checked_from_unix_micros(1_767_225_600_000_000).unwrap();
    /// assert_eq!(START.to_string(), "2026-01-01T00:00:00Z");
    /// ```
    pub const fn checked_from_unix_micros(micros: i64) -> Option<Self> {
        if micros >= Self::MIN.0 && micros <= Self::MAX.0 {
            Some(Self(micros))
        } else {
            None
        }
    }

    /// `secs` since the Unix epoch.
    ///
    /// # Errors
    /// [`TimestampError::OutOfRange`] outside the supported range.
    pub fn from_unix_secs(secs: i64) -> Result<Self, TimestampError> {
        Self::from_unix_micros(secs.checked_mul(1_000_000).unwrap_or(-1))
    }

    /// `t`, in UTC, truncated to whole microseconds.
    ///
    /// # Errors
    /// [`TimestampError::OutOfRange`] outside the supported range, whatever the
    /// offset.
    pub fn from_datetime(t: OffsetDateTime) -> Result<Self, TimestampError> {
        let micros = t.unix_timestamp_nanos().div_euclid(1000);
        i64::try_from(micros).map_or(Err(TimestampError::OutOfRange), Self::from_unix_micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_unix_micros(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded down).
    pub const fn as_unix_secs(self) -> i64 {
        self.0 / 1_000_000
    }

    /// The same instant as a UTC date and time.
    pub fn to_datetime(self) -> OffsetDateTime {
        // Every value in range is a valid `OffsetDateTime`.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The UTC calendar day this instant falls on.
    pub fn utc_date(self) -> time::Date {
        // Whole days since the epoch (the Julian day 2,440,588), without
        // the time of day a full conversion would compute: usage counting
        // calls this on every recorded verification. Every day in range is
        // a valid date.
        const EPOCH_JULIAN_DAY: i64 = 2_440_588;
        let day = EPOCH_JULIAN_DAY + self.0.div_euclid(86_400_000_000);
        i32::try_from(day)
            .ok()
            .and_then(|d| time::Date::from_julian_day(d).ok())
            .unwrap_or(time::Date::MIN)
    }

    /// `self + d`, or `None` past [`MAX`](Self::MAX). Like every
    /// timestamp, the exact result is truncated to the microsecond.
    pub fn checked_add(self, d: Duration) -> Option<Self> {
        let micros = i64::try_from(d.as_micros()).ok()?;
        Self::from_unix_micros(self.0.checked_add(micros)?).ok()
    }

    /// `self − d`, or `None` before [`MIN`](Self::MIN). Like every
    /// timestamp, the exact result is truncated to the microsecond: less
    /// than a microsecond earlier is one microsecond earlier.
    pub fn checked_sub(self, d: Duration) -> Option<Self> {
        let micros = i64::try_from(d.as_nanos().div_ceil(1000)).ok()?;
        Self::from_unix_micros(self.0.checked_sub(micros)?).ok()
    }

    /// `self + d`, clamped to [`MAX`](Self::MAX).
    pub fn saturating_add(self, d: Duration) -> Self {
        self.checked_add(d).unwrap_or(Self::MAX)
    }

    /// `self − d`, clamped to [`MIN`](Self::MIN).
    pub fn saturating_sub(self, d: Duration) -> Self {
        self.checked_sub(d).unwrap_or(Self::MIN)
    }

    /// The time from `earlier` to `self`, or `None` when `earlier` is later.
    pub fn checked_duration_since(self, earlier: Self) -> Option<Duration> {
        let micros = self.0.checked_sub(earlier.0)?;
        u64::try_from(micros).ok().map(Duration::from_micros)
    }

    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.checked_duration_since(earlier).unwrap_or_default()
    }

    /// `self + micros`, clamped into the range.
    pub(crate) const fn saturating_add_micros(self, micros: i64) -> Self {
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

impl std::ops::Add<Duration> for Timestamp {
    type Output = Self;

    /// `self + d`.
    ///
    /// # Panics
    /// Past [`Timestamp::MAX`], as `std::time::SystemTime + Duration` does
    /// on overflow: use [`checked_add`](Timestamp::checked_add) or
    /// [`saturating_add`](Timestamp::saturating_add) with untrusted spans
    /// (the crate itself only uses those).
    fn add(self, d: Duration) -> Self {
        match self.checked_add(d) {
            Some(t) => t,
            None => panic!("timestamp overflow: past 2255-06-05T23:47:34.740991Z"),
        }
    }
}

impl std::ops::Sub<Duration> for Timestamp {
    type Output = Self;

    /// `self − d`.
    ///
    /// # Panics
    /// Before [`Timestamp::MIN`]: use [`checked_sub`](Timestamp::checked_sub)
    /// or [`saturating_sub`](Timestamp::saturating_sub) with untrusted spans.
    fn sub(self, d: Duration) -> Self {
        match self.checked_sub(d) {
            Some(t) => t,
            None => panic!("timestamp underflow: before 1970-01-01T00:00:00Z"),
        }
    }
}

impl std::ops::AddAssign<Duration> for Timestamp {
    /// As `self = self + d` (panics past [`Timestamp::MAX`]).
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl std::ops::SubAssign<Duration> for Timestamp {
    /// As `self = self - d` (panics before [`Timestamp::MIN`]).
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC (`Z`), with as many fraction digits as needed (none
    /// for whole seconds).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_datetime().format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// Parses RFC 3339 (any offset), truncated to the microsecond.
    ///
    /// # Errors
    /// [`TimestampError`] for text that is not RFC 3339 or a time outside
    /// the supported range.
    fn from_str(s: &str) -> Result<Self, TimestampError> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimestampError::NotRfc3339)?;
        Self::from_datetime(t)
    }
}

impl TryFrom<OffsetDateTime> for Timestamp {
    type Error = TimestampError;

    /// As [`Timestamp::from_datetime`].
    fn try_from(t: OffsetDateTime) -> Result<Self, TimestampError> {
        Self::from_datetime(t)
    }
}

impl From<Timestamp> for OffsetDateTime {
    fn from(t: Timestamp) -> Self {
        t.to_datetime()
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 date and time from 1970 to 2255")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Timestamp, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Why a time was refused where it entered. Converts into
/// [`Error::InvalidInput`](crate::Error::InvalidInput) (`INVALID_REQUEST`,
/// 400), so `?` in a function returning [`apikey::Result`](crate::Result)
/// answers it.
///
/// ```
/// use apikey::{Error, Timestamp, TimestampError};
/// let e = "2300-01-01T00:00:00Z".parse::<Timestamp>().unwrap_err();
/// assert_eq!(e, TimestampError::OutOfRange);
/// assert_eq!(Error::from(e).code(), "INVALID_REQUEST");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimestampError {
    /// Outside 1970-01-01T00:00:00Z ..= 2255-06-05T23:47:34.740991Z.
    OutOfRange,
    /// Text that is not an RFC 3339 date and time.
    NotRfc3339,
}

impl fmt::Display for TimestampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfRange => {
                "time outside the supported range (1970-01-01T00:00:00Z to 2255-06-05T23:47:34.740991Z)"
            }
            Self::NotRfc3339 => "not an RFC 3339 date and time",
        })
    }
}

impl std::error::Error for TimestampError {}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn one_supported_range() {
        assert_eq!(Timestamp::MIN.to_datetime(), OffsetDateTime::UNIX_EPOCH);
        assert_eq!(
            Timestamp::MAX.to_datetime(),
            datetime!(2255-06-05 23:47:34.740991 UTC)
        );
        assert_eq!(
            Timestamp::from_datetime(datetime!(2255-06-05 23:47:34.740991 UTC)).ok(),
            Some(Timestamp::MAX)
        );
        assert!(Timestamp::from_datetime(datetime!(2255-06-05 23:47:34.740992 UTC)).is_err());
        assert!(Timestamp::from_datetime(datetime!(9999-12-31 23:59:59 -23:59)).is_err());
        assert!(Timestamp::from_datetime(datetime!(1969-12-31 23:59:59.999999999 UTC)).is_err());
        assert!(Timestamp::from_unix_secs(i64::MAX).is_err());
        assert!(Timestamp::from_unix_micros(-1).is_err());
        // Exact in a double.
        assert_eq!(Timestamp::MAX.as_unix_micros() as f64 as i64, (1 << 53) - 1);
        assert!(Timestamp::MAX.checked_add(Duration::MAX).is_none());
        for t in [
            Timestamp::MIN,
            Timestamp::MAX,
            "2026-02-28T23:59:59.999999Z".parse().unwrap(),
        ] {
            assert_eq!(t.utc_date(), t.to_datetime().date());
        }
        // Instant arithmetic, then truncation to the microsecond.
        let t = Timestamp::from_unix_micros(10).unwrap();
        assert_eq!(t.checked_add(Duration::from_nanos(999)), Some(t));
        assert_eq!(
            t.checked_sub(Duration::from_nanos(1))
                .map(Timestamp::as_unix_micros),
            Some(9)
        );
        assert_eq!(
            t.checked_sub(Duration::from_nanos(1000))
                .map(Timestamp::as_unix_micros),
            Some(9)
        );
        assert_eq!(
            t.checked_sub(Duration::from_nanos(10_000)),
            Some(Timestamp::MIN)
        );
        assert_eq!(t.checked_sub(Duration::from_nanos(10_001)), None);
        assert_eq!(Timestamp::MIN.saturating_sub(Duration::MAX), Timestamp::MIN);
        assert_eq!(
            Timestamp::MIN.saturating_duration_since(Timestamp::MAX),
            Duration::ZERO
        );
    }

    #[test]
    fn rfc3339_round_trips_and_reads_old_records() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2026-03-04T05:06:07.123456Z",
            "2255-06-05T23:47:34.740991Z",
        ] {
            let t: Timestamp = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        }
        // What `time::serde::rfc3339` wrote in 0.2.
        let old = serde_json::to_string(
            &time::serde::rfc3339::serialize(
                &datetime!(2026-01-01 0:00:00.5 +02:00),
                serde_json::value::Serializer,
            )
            .unwrap(),
        )
        .unwrap();
        let t: Timestamp = serde_json::from_str(&old).unwrap();
        assert_eq!(t.to_string(), "2025-12-31T22:00:00.5Z");
        assert!(serde_json::from_str::<Timestamp>("\"2256-01-01T00:00:00Z\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("12").is_err());
        assert!("yesterday".parse::<Timestamp>().is_err());
    }
}
