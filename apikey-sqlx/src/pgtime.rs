//! Range-checked decoding of PostgreSQL times.
//!
//! sqlx decodes `timestamptz` and `date` by adding the stored count to
//! PostgreSQL's epoch with `time`'s panicking `+`: `'infinity'`,
//! `'-infinity'` and any year after 9999 (all valid PostgreSQL values) panic
//! the request. These wrappers read the raw count instead, and
//! [`time_of`] / [`date_of`] turn it into a value with checked arithmetic,
//! or a `Corrupt` error naming the column.

use apikey::Timestamp;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, Postgres, Type};

use crate::codec::corrupt;
use apikey::StoreError;

/// 2000-01-01T00:00:00Z (PostgreSQL's epoch) in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
/// 2000-01-01 as a Julian day number.
const PG_EPOCH_JULIAN_DAY: i32 = 2_451_545;

/// A `timestamptz` as sent: microseconds since 2000-01-01 UTC
/// (`i64::MAX` is `'infinity'`, `i64::MIN` is `'-infinity'`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PgMicros(pub i64);

/// A `date` as sent: days since 2000-01-01 (`i32::MAX` / `i32::MIN` are the
/// infinities).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PgDays(pub i32);

impl Type<Postgres> for PgMicros {
    fn type_info() -> PgTypeInfo {
        <time::OffsetDateTime as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <time::OffsetDateTime as Type<Postgres>>::compatible(ty)
    }
}

impl Type<Postgres> for PgDays {
    fn type_info() -> PgTypeInfo {
        <time::Date as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <time::Date as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for PgMicros {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => Ok(Self(<i64 as Decode<Postgres>>::decode(value)?)),
            // Prepared statements (every query of this crate) answer in
            // the binary format.
            PgValueFormat::Text => Err("a timestamptz in the text format".into()),
        }
    }
}

impl<'r> Decode<'r, Postgres> for PgDays {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => Ok(Self(<i32 as Decode<Postgres>>::decode(value)?)),
            PgValueFormat::Text => Err("a date in the text format".into()),
        }
    }
}

impl PgMicros {
    /// The stored count of `t` (which the store has truncated to the
    /// microsecond): compares with stored counts as PostgreSQL does.
    #[cfg(test)]
    fn of(t: Timestamp) -> Self {
        Self(t.as_unix_micros().saturating_sub(PG_EPOCH_UNIX_MICROS))
    }

    /// The UTC time, or `None` for an infinity or a time `time` cannot
    /// hold.
    /// Unix microseconds, saturating at the infinities: for ordering.
    pub(crate) fn unix(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_UNIX_MICROS)
    }

    fn time(self) -> Option<Timestamp> {
        Timestamp::checked_from_unix_micros(self.0.checked_add(PG_EPOCH_UNIX_MICROS)?)
    }
}

/// The time of column `col`, or `Corrupt` when it is out of range.
pub(crate) fn time_of(v: Option<PgMicros>, col: &str) -> Result<Option<Timestamp>, StoreError> {
    v.map(|m| {
        m.time()
            .ok_or_else(|| corrupt(&format!("{col} out of range")))
    })
    .transpose()
}

/// The date of column `col`, or `Corrupt` when it is out of range.
pub(crate) fn date_of(v: Option<PgDays>, col: &str) -> Result<Option<time::Date>, StoreError> {
    v.map(|d| {
        d.0.checked_add(PG_EPOCH_JULIAN_DAY)
            .and_then(|j| time::Date::from_julian_day(j).ok())
            .ok_or_else(|| corrupt(&format!("{col} out of range")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use time::macros::date;

    #[test]
    fn epochs_agree_with_time() {
        let t = "2000-01-01T00:00:00Z".parse::<Timestamp>().unwrap();
        assert_eq!(PgMicros::of(t), PgMicros(0));
        assert_eq!(PgMicros(0).time(), Some(t));
        assert_eq!(
            date_of(Some(PgDays(0)), "d").unwrap(),
            Some(date!(2000 - 01 - 01))
        );
        assert_eq!(
            date_of(Some(PgDays(-1)), "d").unwrap(),
            Some(date!(1999 - 12 - 31))
        );
        let t = "2026-12-07T01:02:03.456789Z".parse::<Timestamp>().unwrap();
        assert_eq!(PgMicros::of(t).time(), Some(t));
    }

    #[test]
    fn infinities_and_far_years_are_none() {
        for m in [i64::MAX, i64::MIN] {
            assert!(time_of(Some(PgMicros(m)), "c").is_err(), "{m}");
        }
        for d in [i32::MAX, i32::MIN] {
            assert!(date_of(Some(PgDays(d)), "c").is_err(), "{d}");
        }
    }
}
