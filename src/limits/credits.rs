//! Credits: see the docs of `crate::limits`.

use std::fmt;
use std::time::Duration;

use crate::limits::gcra::micros;
use crate::timestamp::Timestamp;

/// The largest balance, refill amount or cost: 2^53 - 1. Larger values
/// saturate to it.
pub(crate) const MAX_CREDITS: u64 = (1 << 53) - 1;

const DAY_MICROS: i64 = 86_400_000_000;

/// How often a [`Refill`] happens.
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::RefillInterval;
/// assert!(RefillInterval::every(Duration::from_secs(3600)).is_some());
/// assert!(RefillInterval::every(Duration::ZERO).is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefillInterval {
    /// Every fixed number of microseconds (at least 1), counted from when
    /// the balance was set. Build it with [`every`](Self::every).
    Every(Duration),
    /// At 00:00 UTC each day.
    UtcDay,
    /// At 00:00 UTC on the first day of each month (monthly plans).
    UtcMonth,
}

impl RefillInterval {
    /// A fixed interval, truncated to whole microseconds; `None` if that is
    /// zero or longer than the supported time range.
    #[must_use]
    pub fn every(period: Duration) -> Option<Self> {
        let us = i64::try_from(period.as_micros()).ok()?;
        if us < 1 || us > Timestamp::MAX.as_unix_micros() {
            return None;
        }
        Some(Self::Every(Duration::from_micros(us as u64)))
    }

    /// The numeric form used in stored state and in the Redis script:
    /// `(kind, period_micros)` with kind 1 = fixed, 2 = UTC day,
    /// 3 = UTC month.
    #[must_use]
    pub fn code(&self) -> (u8, i64) {
        match self {
            Self::Every(d) => (
                1,
                i64::try_from(d.as_micros())
                    .unwrap_or(i64::MAX)
                    .clamp(1, Timestamp::MAX.as_unix_micros()),
            ),
            Self::UtcDay => (2, 0),
            Self::UtcMonth => (3, 0),
        }
    }

    /// Inverse of [`code`](Self::code).
    #[must_use]
    pub fn from_code(kind: u8, period_micros: i64) -> Option<Self> {
        match kind {
            1 => Self::every(Duration::from_micros(u64::try_from(period_micros).ok()?)),
            2 => Some(Self::UtcDay),
            3 => Some(Self::UtcMonth),
            _ => None,
        }
    }

    /// The start of the period containing `t` for calendar intervals, or
    /// `anchor + k · period` (the latest such point at or before `t`) for
    /// fixed ones.
    fn period_start(&self, anchor: i64, t: i64) -> i64 {
        match self.code() {
            (1, p) => {
                if t <= anchor {
                    anchor
                } else {
                    anchor + (t - anchor) / p * p
                }
            }
            (2, _) => t.div_euclid(DAY_MICROS) * DAY_MICROS,
            _ => month_start(t),
        }
    }

    /// The start of the period after the one starting at `start`.
    fn next_start(&self, start: i64) -> i64 {
        match self.code() {
            (1, p) => start.saturating_add(p),
            (2, _) => start.saturating_add(DAY_MICROS),
            _ => next_month_start(start),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm; the Redis script has the same arithmetic).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month) of a day count since 1970-01-01.
pub(crate) fn civil_year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

fn month_start(t: i64) -> i64 {
    let (y, m) = civil_year_month(t.div_euclid(DAY_MICROS));
    days_from_civil(y, m, 1) * DAY_MICROS
}

fn next_month_start(t: i64) -> i64 {
    let (y, m) = civil_year_month(t.div_euclid(DAY_MICROS));
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1).saturating_mul(DAY_MICROS)
}

/// A refill policy: once per [`RefillInterval`], the balance is topped up to
/// `amount`.
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::{Refill, RefillInterval};
/// let monthly = Refill::new(10_000, RefillInterval::UtcMonth);
/// let hourly = Refill::every(100, Duration::from_secs(3600)).expect("non-zero period");
/// assert_eq!(monthly.amount(), 10_000);
/// assert_eq!(hourly.interval(), RefillInterval::every(Duration::from_secs(3600)).unwrap());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Refill {
    amount: u64,
    interval: RefillInterval,
}

impl Refill {
    /// Tops up to `amount` (saturated to [`CreditAccount::MAX_CREDITS`](crate::limits::CreditAccount::MAX_CREDITS)) every `interval`.
    #[must_use]
    pub fn new(amount: u64, interval: RefillInterval) -> Self {
        Self {
            amount: amount.min(MAX_CREDITS),
            interval,
        }
    }

    /// Tops up to `amount` every fixed `period`; `None` if the period is
    /// not representable (see [`RefillInterval::every`]).
    #[must_use]
    pub fn every(amount: u64, period: Duration) -> Option<Self> {
        RefillInterval::every(period).map(|i| Self::new(amount, i))
    }

    /// The level the balance is topped up to.
    #[must_use]
    pub const fn amount(&self) -> u64 {
        self.amount
    }

    /// When refills happen.
    #[must_use]
    pub const fn interval(&self) -> RefillInterval {
        self.interval
    }
}

/// One stored balance: credits left, an optional refill and the start of
/// the current refill period.
///
/// This is what a store keeps; [`refreshed`](Self::refreshed) applies due
/// refills and is the one definition of refill semantics.
///
/// ```
/// use std::time::Duration;
/// use apikey::Timestamp;
/// use apikey::limits::Refill;
/// use apikey::limits::backend::Balance;
/// let t0 = Timestamp::from_unix_micros(0)?;
/// let b = Balance { remaining: 0, refill: Refill::every(10, Duration::from_secs(60)), refilled_at: t0 };
/// assert_eq!(b.refreshed(t0 + std::time::Duration::from_micros(59_999_999)).remaining, 0);
/// assert_eq!(b.refreshed(t0 + std::time::Duration::from_secs(60)).remaining, 10);
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Balance {
    /// Credits left (at most [`CreditAccount::MAX_CREDITS`](crate::limits::CreditAccount::MAX_CREDITS)).
    pub remaining: u64,
    /// The refill policy, if any.
    pub refill: Option<Refill>,
    /// The start of the current refill period (for a fixed interval, the
    /// anchor its periods are counted from).
    pub refilled_at: Timestamp,
}

impl Balance {
    /// The balance with the refill due at `now` applied. A `now` before
    /// `refilled_at` (a clock that stepped back) changes nothing: the state
    /// keeps the later time.
    #[must_use]
    pub fn refreshed(&self, now: Timestamp) -> Self {
        let Some(refill) = self.refill else {
            return *self;
        };
        let at = self.refilled_at.as_unix_micros();
        let start = refill.interval.period_start(at, now.as_unix_micros());
        if start <= at {
            return *self;
        }
        Self {
            remaining: self.remaining.max(refill.amount),
            refill: self.refill,
            refilled_at: Timestamp::from_unix_micros(start).unwrap_or(self.refilled_at),
        }
    }

    /// When the next refill is due after `now`, if there is a policy.
    #[must_use]
    pub fn next_refill_at(&self, now: Timestamp) -> Option<Timestamp> {
        let refill = self.refill?;
        let current = self.refreshed(now);
        let at = current.refilled_at.as_unix_micros();
        let start = refill.interval.period_start(at, at);
        let next = refill.interval.next_start(start);
        Some(Timestamp::MIN.saturating_add_micros(next))
    }

    /// Time from `now` until the next refill, if there is a policy.
    #[must_use]
    pub fn next_refill_in(&self, now: Timestamp) -> Option<Duration> {
        self.next_refill_at(now)
            .map(|t| micros(t.as_unix_micros() - now.as_unix_micros()))
    }
}

/// An owner id and an API name: the address of an owner balance.
///
/// ```
/// use apikey::limits::OwnerApi;
/// let at = OwnerApi { owner: "acme", api: "batch" };
/// assert_eq!(at.api, "batch");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OwnerApi<'a> {
    /// The owner (user, organisation) id.
    pub owner: &'a str,
    /// The API name (e.g. `"rest"`, `"batch"`).
    pub api: &'a str,
}

/// Which balance a credit-management call addresses.
///
/// ```
/// use apikey::limits::CreditAccount;
/// let key = CreditAccount::Key(7);
/// let owner = CreditAccount::Owner { owner: "acme", api: "rest" };
/// assert_ne!(key, owner);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CreditAccount<'a> {
    /// The balance of one key.
    Key(u64),
    /// An owner's balance for one API.
    Owner {
        /// The owner id.
        owner: &'a str,
        /// The API name.
        api: &'a str,
    },
}

impl CreditAccount<'_> {
    /// The largest balance, refill amount or cost: 2^53 - 1 (exact in a Redis Lua number). Larger values
    /// saturate to it.
    pub const MAX_CREDITS: u64 = MAX_CREDITS;
}

/// Which balance ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CreditScope {
    /// The key's own balance.
    Key,
    /// The owner's balance for the API (shared by the owner's keys).
    Owner,
}

impl CreditScope {
    /// `"key"` or `"owner"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Owner => "owner",
        }
    }
}

/// A refused charge: nothing was debited. The web edge answers 429
/// `USAGE_EXCEEDED`. When both balances are short, the key's is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CreditsExhausted {
    /// Which balance is short.
    pub scope: CreditScope,
    /// What that balance holds.
    pub remaining: u64,
    /// What the request would have cost.
    pub cost: u64,
    /// Time until that balance's next refill, if it has a policy (a
    /// `Retry-After` hint; the refill may still not be enough).
    pub refill_in: Option<Duration>,
}

impl fmt::Display for CreditsExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "usage exceeded: {} has {} credits left, request costs {}",
            self.scope.as_str(),
            self.remaining,
            self.cost
        )
    }
}

impl std::error::Error for CreditsExhausted {}

/// A successful charge: what is left afterwards (`None` = not metered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpendReceipt {
    /// Credits debited from each metered balance.
    pub cost: u64,
    /// The key's balance after the charge.
    pub key_remaining: Option<u64>,
    /// The owner's balance for the API after the charge.
    pub owner_remaining: Option<u64>,
}

/// A balance as read now (due refills applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CreditStatus {
    /// Credits left now.
    pub remaining: u64,
    /// The refill policy, if any.
    pub refill: Option<Refill>,
    /// Time until the next refill, if there is a policy.
    pub next_refill_in: Option<Duration>,
}

impl CreditStatus {
    /// The status of `balance` at `now`.
    #[must_use]
    pub fn of(balance: &Balance, now: Timestamp) -> Self {
        let current = balance.refreshed(now);
        Self {
            remaining: current.remaining,
            refill: current.refill,
            next_refill_in: current.next_refill_in(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn calendar_arithmetic_matches_time() {
        let mut d = -800_000i64;
        while d < 106_000 {
            let (y, m) = civil_year_month(d);
            let date = time::Date::from_julian_day(i32::try_from(d + 2_440_588).unwrap_or(0))
                .unwrap_or(time::Date::MIN);
            assert_eq!(
                (y, m),
                (i64::from(date.year()), i64::from(u8::from(date.month())))
            );
            assert_eq!(days_from_civil(y, m, i64::from(date.day())), d, "day {d}");
            d += 37;
        }
    }

    #[test]
    fn monthly_and_daily_refills() {
        let set = ts("2026-01-31T23:00:00Z");
        let b = Balance {
            remaining: 1,
            refill: Some(Refill::new(100, RefillInterval::UtcMonth)),
            refilled_at: set,
        };
        assert_eq!(b.refreshed(ts("2026-01-31T23:59:59.999999Z")).remaining, 1);
        let feb = b.refreshed(ts("2026-02-01T00:00:00Z"));
        assert_eq!(feb.remaining, 100);
        assert_eq!(feb.refilled_at, ts("2026-02-01T00:00:00Z"));
        assert_eq!(b.next_refill_at(set), Some(ts("2026-02-01T00:00:00Z")));
        assert_eq!(
            feb.next_refill_at(ts("2026-02-10T00:00:00Z")),
            Some(ts("2026-03-01T00:00:00Z"))
        );
        let dec = Balance {
            refilled_at: ts("2026-12-05T00:00:00Z"),
            ..b
        };
        assert_eq!(
            dec.next_refill_at(ts("2026-12-06T00:00:00Z")),
            Some(ts("2027-01-01T00:00:00Z"))
        );
        let daily = Balance {
            remaining: 0,
            refill: Some(Refill::new(5, RefillInterval::UtcDay)),
            refilled_at: ts("2026-03-01T10:00:00Z"),
        };
        assert_eq!(daily.refreshed(ts("2026-03-01T23:59:00Z")).remaining, 0);
        assert_eq!(daily.refreshed(ts("2026-03-02T00:00:00Z")).remaining, 5);
        assert_eq!(
            daily.next_refill_in(ts("2026-03-01T23:00:00Z")),
            Some(Duration::from_secs(3600))
        );
        // Clock stepped back: nothing changes.
        assert_eq!(daily.refreshed(ts("2026-02-01T00:00:00Z")), daily);
    }

    #[test]
    fn saturation() {
        assert_eq!(
            Refill::new(u64::MAX, RefillInterval::UtcDay).amount(),
            MAX_CREDITS
        );
        assert!(RefillInterval::every(Duration::MAX).is_none());
        let b = Balance {
            remaining: 0,
            refill: Refill::every(1, Duration::from_micros(1)),
            refilled_at: Timestamp::MAX,
        };
        assert_eq!(b.next_refill_at(Timestamp::MAX), Some(Timestamp::MAX));
        let m = Balance {
            refill: Some(Refill::new(1, RefillInterval::UtcMonth)),
            ..b
        };
        assert_eq!(m.next_refill_at(Timestamp::MAX), Some(Timestamp::MAX));
        for (kind, p) in [(1u8, 5i64), (2, 0), (3, 0)] {
            let i = RefillInterval::from_code(kind, p);
            assert_eq!(i.map(|i| i.code()), Some((kind, p)));
        }
        assert_eq!(RefillInterval::from_code(9, 0), None);
    }
}
