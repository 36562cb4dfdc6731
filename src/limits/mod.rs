//! Limits: per-key rate limits (GCRA), credits and the failure throttle.
//!
//! All limit state is kept in wall-clock [`Timestamp`](crate::Timestamp)s (integer Unix
//! microseconds) from the crate's [`Clock`](crate::Clock), so several
//! processes sharing one store (Redis: the `apikey-redis` crate) give the
//! same answers, and every backend failure is a [`StoreError`](crate::StoreError).
//!
//! | file | concept |
//! |------|---------|
//! | `quota.rs` | [`Quota`], [`RateWindow`]: what a key may do |
//! | `gcra.rs` | the GCRA arithmetic of one window ([`backend::GcraState`]), [`RateLimitInfo`] |
//! | `credits.rs` | balances, [`Refill`] on durations and UTC calendar periods |
//! | `admission.rs` | the declarative [`Admission`] and the pure [`backend::decide`] function |
//! | `throttle.rs` | the failure throttle ([`backend::FailureThrottle`]: per key id, per address for untagged lookups) |
//! | `memory.rs` | [`MemoryLimits`], the in-process bundle |
//!
//! Types only a backend implementer needs are in [`backend`].
//!
//! The web edge ([`Gate`](crate::web::Gate), the axum layer) takes the
//! limits as **one bundle**, a type implementing [`Limits`]: [`NoLimits`]
//! (the default), [`MemoryLimits`] or a shared store such as
//! `apikey_redis::RedisLimits`. Credit balances are managed through
//! [`CreditBalances`].
//!
//! ```
//! use apikey::limits::{Admission, CreditAccount, CreditCharge, MemoryLimits, Quota, Verdict};
//! let limits = MemoryLimits::new();
//! limits.set_credits_sync(CreditAccount::Key(1), 2, None);
//! let a = Admission::new(1, Quota::unlimited().per_minute(100)).credits(CreditCharge::new(1));
//! assert!(limits.admit_sync(&a).is_admitted());
//! assert!(limits.admit_sync(&a).is_admitted());
//! assert!(matches!(limits.admit_sync(&a), Verdict::CreditsExhausted { .. }));
//! ```
//!
//! # Rate limits (GCRA)
//!
//! GCRA, the generic cell rate algorithm: the arithmetic of one window.
//!
//! A window with limit `L` over period `P` (microseconds) has emission
//! interval `T = ceil(P / L)` and burst tolerance `τ = (L - 1) · T`. A
//! key's state is one theoretical arrival time (TAT) per window, a
//! [`Timestamp`](crate::Timestamp). A request at time `t` is admitted when
//! `max(TAT, t) - t <= τ`, and then `TAT := max(TAT, t) + T`. So:
//!
//! * a fresh (or long idle) key may send a burst of exactly `L` requests;
//! * afterwards it regains one request every `T`;
//! * over any closed interval of length `d`, at most `L + floor(d / T)`
//!   requests are admitted, hence at most `L + floor(d · L / P)`. A sliding
//!   window of length `P` may see up to `2L - 1` admissions (a full burst
//!   plus the refills during it); this is inherent to GCRA and token
//!   buckets. The long-run rate never exceeds `L / P`.
//! * A clock that steps backwards never admits more: `max(TAT, t)` keeps the
//!   later time, so an earlier `t` only makes the key wait longer.
//!
//! Every quantity is an integer number of microseconds below 2^53, so the
//! Redis script (a Lua double) computes exactly the same values.
//!
//! # Credits
//!
//! Credits: a number of remaining uses per key and per owner and API, with
//! refills on fixed durations or on calendar periods (UTC day, UTC month).
//!
//! * A **key balance** counts the uses left on one key; an **owner
//!   balance** (owner id + API name) is shared by every key of that owner on
//!   that API. A key or owner with no balance is not metered. A key's
//!   balance and rate-limit windows are those of its limits account
//!   ([`KeyRecord::limits_account`](crate::KeyRecord::limits_account)): its
//!   own id, except for a rotated key's successor (its predecessor's) and a
//!   child derived without a budget (its parent's), so neither a rotation
//!   nor a derivation makes an unmetered key out of a metered one.
//! * A [`Refill`] tops a balance up to its amount (a balance above it, after
//!   a manual grant, is kept) once per period: every fixed
//!   [`Duration`](std::time::Duration) counted from when the balance was set, or at the start of
//!   each UTC day or UTC month. Refills are computed lazily when the balance
//!   is next read or charged; missed periods give one top-up, not several.
//! * An admission debits the key's and the owner's balance in one atomic
//!   step: both or neither. A balance never goes negative.
//! * Amounts are integers up to [`CreditAccount::MAX_CREDITS`](crate::limits::CreditAccount::MAX_CREDITS) (2^53 - 1, exact in a Redis
//!   Lua number); larger values saturate.
//!
//! # Admission
//!
//! The admission operation: one declarative request (both GCRA windows and
//! an optional credit charge) and the one pure function that decides it.
//!
//! [`backend::decide`] is the definition. [`MemoryLimits`]
//! applies it under its locks; the Redis store (`apikey-redis`) runs a Lua
//! script that mirrors it line by line, and the testkit's oracles check that
//! both give the same verdicts for the same arrival times.
//!
//! Order of checks, for a request at time `now`:
//!
//! 1. every enforced window of the [`Quota`] (a limit of 0 refuses at once
//!    and reads no state); if any window refuses, the verdict is
//!    [`Verdict::RateLimited`] with the longest wait (ties: the minute
//!    window);
//! 2. the credit charge, if any: due refills are applied, then the key's
//!    balance and the owner's balance must each hold `max(cost, 1)`
//!    (a zero cost checks without spending); the key's shortage is reported
//!    first. Otherwise [`Verdict::CreditsExhausted`];
//! 3. admitted: both windows are charged and both balances debited.
//!
//! A refused request charges nothing: no window, no credit, no refill
//! written.
//!
//! # The failure throttle
//!
//! The failure throttle: what repeated failed authentications cost.
//!
//! Failures are split by what they prove about the caller:
//!
//! * **Key-status failures** (revoked, expired, disabled, not yet valid, a
//!   deleted id) happen only after the key's keyed tag matched, so only a
//!   holder of that exact key text can cause them. They **back off per key
//!   id**: after `max_failures` of them within `window`, that key id is
//!   refused (429 `TOO_MANY_FAILED_ATTEMPTS`) for `lockout` without any
//!   store lookup. Nobody else's key is affected.
//! * **Authenticated failures** (wrong scope, address not allowed, wrong
//!   environment) come from a key that verified (native or imported
//!   legacy). They are charged to that key's own rate limit, under its own
//!   plan's quota (an [`Admission`] without
//!   credits) and their audit events are sampled like junk
//!   ([`FailureClass::Authenticated`]).
//! * **Untagged lookups** (today: legacy-prefix keys, which carry no tag, so
//!   any string under the prefix reaches the store) are throttled **per
//!   client address**, counting each attempt when it *starts*: an address
//!   may have at most `max_failures` attempts that are in flight or failed
//!   within `window`, so 100 concurrent guesses against `max_failures = 3`
//!   make at most 3 store lookups. After `max_failures` failures the address
//!   is locked out for `lockout`. IPv6 addresses are grouped by
//!   `ipv6_prefix_len` (default /64); IPv4-mapped IPv6 counts as IPv4.
//! * Junk (malformed keys, forged tags) makes no store call and is only
//!   counted and sampled.
//!
//! A valid native (tagged) key is therefore never refused because of
//! someone else's failures: its own id backs off only through its own
//! failures, and the address throttle applies only to untagged lookups.
//! This replaces the per-address lockout that counted every failure from an
//! address (one guesser behind a NAT locked everyone there out), is at least
//! as strong against guessing (guessing a native key is stopped by the tag
//! before the store, and guessing a legacy key is now bounded while in
//! flight), and additionally limits post-tag failures, which were unlimited.
//!
//! Memory is bounded: at most `max_tracked` key ids and `max_tracked`
//! addresses, with the eviction described on [`backend::FailureThrottle`].

mod admission;
mod contract;
mod credits;
mod gcra;
mod memory;
mod quota;
mod throttle;

pub use admission::{Admission, CreditCharge, IdempotencyError, Refuser, Verdict};
pub use credits::{
    CreditAccount, CreditScope, CreditStatus, CreditsExhausted, OwnerApi, Refill, RefillInterval,
    SpendReceipt,
};
pub use gcra::RateLimitInfo;
pub(crate) use gcra::ceil_secs;
pub use memory::MemoryLimits;
pub use quota::{Quota, RateWindow};
pub use throttle::{FailureClass, FailureThrottleConfig, UntaggedAttempt};
/// What only the implementer of a limits backend needs (a shared store such as `apikey_redis::RedisLimits`):
/// the pure admission and its state, balances, the GCRA state of one window and the in-process failure
/// throttle. A service that only uses limits never names these.
pub mod backend {
    pub use super::admission::{AdmissionState, AdmissionWrite, decide};
    pub use super::credits::Balance;
    pub use super::gcra::GcraState;
    pub use super::throttle::FailureThrottle;
}
pub use contract::{CreditBalances, Limits, NoLimits, SyncLimits};
