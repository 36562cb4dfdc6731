//! Admission: see the docs of `crate::limits`.

use std::time::Duration;

use crate::error::{StoreError, StoreErrorKind};
use crate::limits::credits::{
    Balance, CreditScope, CreditsExhausted, MAX_CREDITS, OwnerApi, SpendReceipt,
};
use crate::limits::gcra::{Gcra, GcraState, RateLimitInfo, WindowTest, ceil_secs, micros};
use crate::limits::quota::{Quota, RateWindow};
use crate::timestamp::Timestamp;

/// A credit charge: `cost` credits from the key's balance and, when `owner`
/// is given, from that owner's balance for the API, both or neither.
///
/// ```
/// use apikey::limits::{CreditCharge, OwnerApi};
/// let c = CreditCharge::new(5).owner(Some(OwnerApi { owner: "acme", api: "rest" }));
/// assert_eq!(c.cost, 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CreditCharge<'a> {
    /// Credits to debit from each metered balance (0 only checks that the
    /// balances are not exhausted). Saturated to [`CreditAccount::MAX_CREDITS`](crate::limits::CreditAccount::MAX_CREDITS) + 1 when
    /// decided, which no balance can pay.
    pub cost: u64,
    /// The owner balance to debit too.
    pub owner: Option<OwnerApi<'a>>,
}

impl<'a> CreditCharge<'a> {
    /// A charge of `cost` to the key only.
    #[must_use]
    pub const fn new(cost: u64) -> Self {
        Self { cost, owner: None }
    }

    /// Also charges `owner` (`None`: the key only).
    #[must_use]
    pub const fn owner(mut self, owner: Option<OwnerApi<'a>>) -> Self {
        self.owner = owner;
        self
    }
}

/// One admission: the key, its quota and an optional credit charge,
/// decided and applied atomically in one step (one round trip on a shared
/// store).
///
/// `idempotency` (optional) names the request: a store that may leave an
/// outcome unknown (a timeout on the network) records the verdict under it
/// for a short time and answers a retry of the **same admission** with the
/// same token with the recorded verdict instead of charging twice. The
/// record is bound to the key id and to the whole admission (quota, cost,
/// owner and API): a token reused by another key starts a record of that
/// key's own, and a token reused by the same key for a different admission
/// is refused with [`IdempotencyError::Mismatch`], never answered with the
/// recorded verdict. In-process stores never leave an outcome unknown and
/// record nothing, but every bundle refuses a token that is empty or longer
/// than [`Admission::MAX_IDEMPOTENCY_TOKEN`](crate::limits::Admission::MAX_IDEMPOTENCY_TOKEN) bytes, so a token accepted by one bundle
/// is accepted by every bundle ([`Admission::checked_idempotency`]).
///
/// ```
/// use apikey::limits::{Admission, CreditCharge, Quota};
/// let a = Admission::new(7, Quota::unlimited().per_minute(10)).credits(CreditCharge::new(1));
/// assert_eq!(a.key, 7);
/// assert!(a.charge.is_some());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Admission<'a> {
    /// The key id (`KeyId::as_u64`).
    pub key: u64,
    /// The windows to check and charge.
    pub quota: Quota,
    /// The credits to charge, if the request is metered.
    pub charge: Option<CreditCharge<'a>>,
    /// A request id for safe retries (see the type docs).
    pub idempotency: Option<&'a str>,
}

impl<'a> Admission<'a> {
    /// The longest idempotency token, in bytes.
    pub const MAX_IDEMPOTENCY_TOKEN: usize = MAX_IDEMPOTENCY_TOKEN;

    /// Rate limit only.
    #[must_use]
    pub const fn new(key: u64, quota: Quota) -> Self {
        Self {
            key,
            quota,
            charge: None,
            idempotency: None,
        }
    }

    /// Also charges credits.
    #[must_use]
    pub const fn credits(mut self, charge: CreditCharge<'a>) -> Self {
        self.charge = Some(charge);
        self
    }

    /// Names the request for safe retries.
    #[must_use]
    pub const fn idempotency(mut self, token: &'a str) -> Self {
        self.idempotency = Some(token);
        self
    }

    /// The idempotency token, if any, once checked: every limits bundle
    /// calls this before deciding, so all refuse the same tokens.
    ///
    /// # Errors
    /// [`IdempotencyError::EmptyToken`] or [`IdempotencyError::TooLong`].
    pub const fn checked_idempotency(&self) -> Result<Option<&'a str>, IdempotencyError> {
        match self.idempotency {
            Some(t) if t.is_empty() => Err(IdempotencyError::EmptyToken),
            Some(t) if t.len() > MAX_IDEMPOTENCY_TOKEN => Err(IdempotencyError::TooLong),
            other => Ok(other),
        }
    }
}

/// The longest idempotency token, in bytes (a request id; UUIDs and ULIDs
/// fit many times over).
pub(crate) const MAX_IDEMPOTENCY_TOKEN: usize = 256;

/// Why an [`Admission`]'s idempotency token was refused. A limits bundle
/// returns it as the [`source`](std::error::Error::source) of a
/// [`StoreError`] of kind [`StoreErrorKind::InvalidRequest`]; nothing is
/// decided or charged then.
///
/// ```
/// use apikey::limits::{Admission, IdempotencyError, Quota};
/// let a = Admission::new(1, Quota::unlimited()).idempotency("");
/// assert_eq!(a.checked_idempotency(), Err(IdempotencyError::EmptyToken));
/// let e = IdempotencyError::EmptyToken.into_store_error();
/// assert_eq!(e.kind(), apikey::StoreErrorKind::InvalidRequest);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The token is empty: it names no request.
    EmptyToken,
    /// The token is longer than [`Admission::MAX_IDEMPOTENCY_TOKEN`](crate::limits::Admission::MAX_IDEMPOTENCY_TOKEN) bytes.
    TooLong,
    /// The token already names a different admission (another quota, cost,
    /// owner or API for the same key id) whose record has not expired.
    Mismatch,
}

impl IdempotencyError {
    /// This refusal as the [`StoreError`] a [`Limits`](crate::limits::Limits)
    /// bundle returns (kind [`StoreErrorKind::InvalidRequest`], `self` as
    /// its source).
    #[must_use]
    pub fn into_store_error(self) -> StoreError {
        StoreError::with_source(StoreErrorKind::InvalidRequest, self)
    }
}

impl std::fmt::Display for IdempotencyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EmptyToken => "the idempotency token is empty",
            Self::TooLong => "the idempotency token is longer than 256 bytes",
            Self::Mismatch => "the idempotency token was already used for a different admission",
        })
    }
}

impl std::error::Error for IdempotencyError {}

/// What refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refuser {
    /// A rate-limit window.
    Window(RateWindow),
    /// A credit balance.
    Credits(CreditScope),
}

/// The verdict on one [`Admission`].
///
/// ```
/// use apikey::limits::{Admission, MemoryLimits, Quota, Refuser, RateWindow};
/// let limits = MemoryLimits::new();
/// let q = Quota::unlimited().per_minute(1);
/// assert!(limits.admit_sync(&Admission::new(1, q)).is_admitted());
/// let v = limits.admit_sync(&Admission::new(1, q));
/// assert_eq!(v.refused_by(), Some(Refuser::Window(RateWindow::Minute)));
/// assert_eq!(v.retry_after_secs(), Some(60));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum Verdict {
    /// Admitted: every window charged, every metered balance debited.
    Admitted {
        /// The enforced window with the least remaining after this request
        /// (ties: the later reset, then the minute window); `None` when no
        /// window is enforced.
        rate_limit: Option<RateLimitInfo>,
        /// The balances after the charge, if credits were charged.
        credits: Option<SpendReceipt>,
    },
    /// Refused by a window; nothing charged.
    RateLimited {
        /// The refusing window (the longest wait); `remaining` is 0 and
        /// `reset_after` is its full replenishment.
        info: RateLimitInfo,
        /// Exact wait until this same request would be admitted, if
        /// nothing else is sent meanwhile.
        retry_after: Duration,
    },
    /// Refused for credits; nothing charged.
    CreditsExhausted {
        /// The window numbers as they stand (this request not charged).
        rate_limit: Option<RateLimitInfo>,
        /// Which balance is short.
        exhausted: CreditsExhausted,
    },
}

impl Verdict {
    /// Whether the request was admitted.
    #[must_use]
    pub const fn is_admitted(&self) -> bool {
        matches!(self, Self::Admitted { .. })
    }

    /// The rate-limit numbers for the headers, if any window is enforced.
    #[must_use]
    pub const fn rate_limit(&self) -> Option<&RateLimitInfo> {
        match self {
            Self::Admitted { rate_limit, .. } | Self::CreditsExhausted { rate_limit, .. } => {
                rate_limit.as_ref()
            }
            Self::RateLimited { info, .. } => Some(info),
        }
    }

    /// The exact wait before a retry can succeed: the window's wait, or the
    /// time to the next refill of the short balance (`None` when admitted
    /// or when no refill is scheduled).
    #[must_use]
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Admitted { .. } => None,
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::CreditsExhausted { exhausted, .. } => exhausted.refill_in,
        }
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up and
    /// at least 1: the `Retry-After` value.
    #[must_use]
    pub const fn retry_after_secs(&self) -> Option<u64> {
        match self.retry_after() {
            None => None,
            Some(d) => {
                let s = ceil_secs(d);
                Some(if s == 0 { 1 } else { s })
            }
        }
    }

    /// What refused the request, if refused.
    #[must_use]
    pub const fn refused_by(&self) -> Option<Refuser> {
        match self {
            Self::Admitted { .. } => None,
            Self::RateLimited { info, .. } => Some(Refuser::Window(info.window)),
            Self::CreditsExhausted { exhausted, .. } => Some(Refuser::Credits(exhausted.scope)),
        }
    }

    /// The receipt of an admitted, metered request.
    #[must_use]
    pub const fn credits(&self) -> Option<&SpendReceipt> {
        match self {
            Self::Admitted { credits, .. } => credits.as_ref(),
            _ => None,
        }
    }
}

/// The state one admission reads: the key's GCRA state and the two
/// balances (`None`: absent / not metered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AdmissionState {
    /// The key's windows.
    pub rate: GcraState,
    /// The key's balance.
    pub key_balance: Option<Balance>,
    /// The owner's balance for the API.
    pub owner_balance: Option<Balance>,
}

/// The state to write back after an admitted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdmissionWrite {
    /// The key's new windows (`None`: no window enforced, nothing to write).
    pub rate: Option<GcraState>,
    /// The key's new balance (`None`: not charged).
    pub key_balance: Option<Balance>,
    /// The owner's new balance (`None`: not charged).
    pub owner_balance: Option<Balance>,
}

/// The decision function (see the [limits docs](crate::limits)): pure, total, never
/// panics. Returns the verdict and, for an admitted request, what to write.
///
/// ```
/// use apikey::Timestamp;
/// use apikey::limits::backend::{AdmissionState, decide};
/// use apikey::limits::{Admission, Quota};
/// let now = Timestamp::from_unix_micros(1_000_000)?;
/// let a = Admission::new(1, Quota::unlimited().per_minute(2));
/// let (v, write) = decide(&a, &AdmissionState::default(), now);
/// assert!(v.is_admitted());
/// let rate = write.and_then(|w| w.rate).expect("charged");
/// assert_eq!(rate.tat(apikey::limits::RateWindow::Minute).as_unix_micros(), 31_000_000);
/// # Ok::<(), apikey::Error>(())
/// ```
pub fn decide(
    admission: &Admission<'_>,
    state: &AdmissionState,
    now: Timestamp,
) -> (Verdict, Option<AdmissionWrite>) {
    let mut new_rate = state.rate;
    let mut enforced = false;
    let mut after: Option<RateLimitInfo> = None;
    let mut before: Option<RateLimitInfo> = None;
    let mut refusal: Option<(i64, RateLimitInfo)> = None;
    for window in RateWindow::ALL {
        let Some(limit) = admission.quota.limit(window) else {
            continue;
        };
        let Some(gcra) = Gcra::new(window, limit) else {
            // A zero limit admits nothing; no state is read or written.
            let period = window.period();
            let info = RateLimitInfo {
                window,
                limit: 0,
                remaining: 0,
                reset_after: period,
            };
            return (
                Verdict::RateLimited {
                    info,
                    retry_after: period,
                },
                None,
            );
        };
        enforced = true;
        match gcra.test(state.rate.tat(window), now) {
            WindowTest::Admit {
                new_tat,
                after: a,
                before: b,
            } => {
                new_rate.set_tat(window, new_tat);
                if better(&a, after.as_ref()) {
                    after = Some(a);
                }
                if better(&b, before.as_ref()) {
                    before = Some(b);
                }
            }
            WindowTest::Refuse { wait, info } => {
                if refusal.is_none_or(|(w, _)| wait > w) {
                    refusal = Some((wait, info));
                }
            }
        }
    }
    if let Some((wait, info)) = refusal {
        return (
            Verdict::RateLimited {
                info,
                retry_after: micros(wait),
            },
            None,
        );
    }
    let rate = enforced.then_some(new_rate);
    let Some(charge) = admission.charge else {
        return (
            Verdict::Admitted {
                rate_limit: after,
                credits: None,
            },
            Some(AdmissionWrite {
                rate,
                key_balance: None,
                owner_balance: None,
            }),
        );
    };
    let cost = charge.cost.min(MAX_CREDITS + 1);
    let needed = cost.max(1);
    let key = state.key_balance.map(|b| b.refreshed(now));
    let owner = if charge.owner.is_some() {
        state.owner_balance.map(|b| b.refreshed(now))
    } else {
        None
    };
    for (scope, balance) in [(CreditScope::Key, &key), (CreditScope::Owner, &owner)] {
        if let Some(b) = balance
            && b.remaining < needed
        {
            return (
                Verdict::CreditsExhausted {
                    rate_limit: before,
                    exhausted: CreditsExhausted {
                        scope,
                        remaining: b.remaining,
                        cost: charge.cost,
                        refill_in: b.next_refill_in(now),
                    },
                },
                None,
            );
        }
    }
    let debit = |b: Balance| Balance {
        remaining: b.remaining - cost.min(b.remaining),
        ..b
    };
    let key = key.map(debit);
    let owner = owner.map(debit);
    (
        Verdict::Admitted {
            rate_limit: after,
            credits: Some(SpendReceipt {
                cost: charge.cost,
                key_remaining: key.map(|b| b.remaining),
                owner_remaining: owner.map(|b| b.remaining),
            }),
        },
        Some(AdmissionWrite {
            rate,
            key_balance: key,
            owner_balance: owner,
        }),
    )
}

/// Least remaining first; ties go to the later reset; full ties keep the
/// earlier (minute) window.
fn better(candidate: &RateLimitInfo, best: Option<&RateLimitInfo>) -> bool {
    best.is_none_or(|b| {
        (
            candidate.remaining,
            std::cmp::Reverse(candidate.reset_after),
        ) < (b.remaining, std::cmp::Reverse(b.reset_after))
    })
}
