//! The limits contract: the [`Limits`] trait the gate calls, its synchronous and credit-balance siblings, and [`NoLimits`].

use std::net::IpAddr;
use std::time::Duration;

use super::admission::{Admission, IdempotencyError, Verdict};
use super::credits::{CreditAccount, CreditStatus, Refill, SpendReceipt};
use super::throttle::UntaggedAttempt;
use crate::error::StoreError;

/// The limits bundle the pipeline consults: admission (rate limit and
/// credits in one step) and the failure throttle's hooks.
///
/// * [`admit`](Self::admit) decides one [`Admission`] as [`backend::decide`](super::backend::decide) defines
///   it, atomically, in one round trip for a shared store.
/// * [`check_key`](Self::check_key) and
///   [`begin_untagged`](Self::begin_untagged) run **before** the key-store
///   lookup and must be purely local (no I/O), so an admitted request costs
///   no extra round trip.
/// * [`key_failed`](Self::key_failed) and
///   [`untagged_failed`](Self::untagged_failed) run on failure paths only
///   and may do I/O (a shared store publishes the failure there).
///
/// Implementations: [`NoLimits`], [`MemoryLimits`](super::MemoryLimits), `apikey_redis::RedisLimits`.
///
/// ```
/// use apikey::limits::{Admission, Limits, MemoryLimits, NoLimits, Quota};
/// async fn admitted<L: Limits>(limits: &L) -> bool {
///     let a = Admission::new(1, Quota::unlimited().per_minute(1));
///     limits.admit(&a).await.map(|v| v.is_admitted()).unwrap_or(false)
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(admitted(&NoLimits).await && admitted(&NoLimits).await);
/// let memory = MemoryLimits::new();
/// assert!(admitted(&memory).await);
/// assert!(!admitted(&memory).await);
/// # }
/// ```
pub trait Limits: Send + Sync {
    /// Decides and applies `admission`: both windows and both balances, or
    /// nothing.
    ///
    /// # Errors
    /// [`StoreError`] when the backend fails; nothing is admitted then.
    /// An idempotency token that is empty, too long, or already bound to a
    /// different admission is a [`StoreError`] of kind
    /// [`InvalidRequest`](crate::StoreErrorKind::InvalidRequest) with an
    /// [`IdempotencyError`] as its source; nothing is decided then.
    fn admit(
        &self,
        admission: &Admission<'_>,
    ) -> impl Future<Output = Result<Verdict, StoreError>> + Send;

    /// `Err(wait)` while `key_id` is backed off after key-status failures.
    /// Local only.
    ///
    /// # Errors
    /// The remaining backoff.
    fn check_key(&self, key_id: u64) -> Result<(), Duration>;

    /// Starts an untagged (legacy) lookup from `client`. Local only.
    ///
    /// # Errors
    /// The wait while the address may not start another attempt.
    fn begin_untagged(&self, client: Option<IpAddr>) -> Result<UntaggedAttempt<'_>, Duration>;

    /// Records a key-status failure of `key_id` (see [`FailureClass`](super::FailureClass)).
    fn key_failed(&self, key_id: u64) -> impl Future<Output = ()> + Send;

    /// Ends an untagged lookup as a failure.
    fn untagged_failed(&self, attempt: UntaggedAttempt<'_>) -> impl Future<Output = ()> + Send;
}

/// Limits whose futures are always ready (in-process), so the blocking
/// entry points ([`Gate::charge_blocking`](crate::web::Gate::charge_blocking))
/// can use them without a runtime.
pub trait SyncLimits: Limits {
    /// [`Limits::admit`] without a future.
    fn admit_now(&self, admission: &Admission<'_>) -> Verdict;
}

/// Credit-balance management, on every limits bundle that keeps credits.
/// The in-memory bundle also has `*_sync` forms.
///
/// ```
/// use apikey::limits::{CreditAccount, CreditBalances, MemoryLimits, Refill, RefillInterval};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), apikey::StoreError> {
/// let limits = MemoryLimits::new();
/// let acme = CreditAccount::Owner { owner: "acme", api: "rest" };
/// limits.set_credits(acme, 10_000, Some(Refill::new(10_000, RefillInterval::UtcMonth))).await?;
/// assert_eq!(limits.add_credits(acme, 500).await?, Some(10_500));
/// assert_eq!(limits.credits(acme).await?.map(|s| s.remaining), Some(10_500));
/// assert!(limits.remove_credits(acme).await?);
/// # Ok(()) }
/// ```
pub trait CreditBalances: Send + Sync {
    /// Sets a balance (saturated to [`CreditAccount::MAX_CREDITS`](crate::limits::CreditAccount::MAX_CREDITS)) and its refill; the
    /// refill period starts now.
    ///
    /// # Errors
    /// The backend's failure.
    fn set_credits(
        &self,
        account: CreditAccount<'_>,
        remaining: u64,
        refill: Option<Refill>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Adds `amount` to a balance (due refills applied first; saturates at
    /// [`CreditAccount::MAX_CREDITS`](crate::limits::CreditAccount::MAX_CREDITS)). Returns the new balance, or `None` if the account
    /// is not metered (nothing written).
    ///
    /// # Errors
    /// The backend's failure.
    fn add_credits(
        &self,
        account: CreditAccount<'_>,
        amount: u64,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// A balance now (refills applied), or `None` if not metered.
    ///
    /// # Errors
    /// The backend's failure.
    fn credits(
        &self,
        account: CreditAccount<'_>,
    ) -> impl Future<Output = Result<Option<CreditStatus>, StoreError>> + Send;

    /// Removes a balance (no longer metered). Returns whether it existed.
    ///
    /// # Errors
    /// The backend's failure.
    fn remove_credits(
        &self,
        account: CreditAccount<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// No limits: every admission is admitted without state, nothing is
/// throttled. The default bundle of the web edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NoLimits;

impl Limits for NoLimits {
    fn admit(
        &self,
        admission: &Admission<'_>,
    ) -> impl Future<Output = Result<Verdict, StoreError>> + Send {
        std::future::ready(
            admission
                .checked_idempotency()
                .map_err(IdempotencyError::into_store_error)
                .map(|_| self.admit_now(admission)),
        )
    }

    fn check_key(&self, _key_id: u64) -> Result<(), Duration> {
        Ok(())
    }

    fn begin_untagged(&self, _client: Option<IpAddr>) -> Result<UntaggedAttempt<'_>, Duration> {
        Ok(UntaggedAttempt::unbounded())
    }

    fn key_failed(&self, _key_id: u64) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    fn untagged_failed(&self, attempt: UntaggedAttempt<'_>) -> impl Future<Output = ()> + Send {
        drop(attempt);
        std::future::ready(())
    }
}

impl SyncLimits for NoLimits {
    fn admit_now(&self, admission: &Admission<'_>) -> Verdict {
        Verdict::Admitted {
            rate_limit: None,
            credits: admission.charge.map(|c| SpendReceipt {
                cost: c.cost,
                key_remaining: None,
                owner_remaining: None,
            }),
        }
    }
}

impl<L: Limits + ?Sized> Limits for std::sync::Arc<L> {
    fn admit(
        &self,
        admission: &Admission<'_>,
    ) -> impl Future<Output = Result<Verdict, StoreError>> + Send {
        (**self).admit(admission)
    }

    fn check_key(&self, key_id: u64) -> Result<(), Duration> {
        (**self).check_key(key_id)
    }

    fn begin_untagged(&self, client: Option<IpAddr>) -> Result<UntaggedAttempt<'_>, Duration> {
        (**self).begin_untagged(client)
    }

    fn key_failed(&self, key_id: u64) -> impl Future<Output = ()> + Send {
        (**self).key_failed(key_id)
    }

    fn untagged_failed(&self, attempt: UntaggedAttempt<'_>) -> impl Future<Output = ()> + Send {
        (**self).untagged_failed(attempt)
    }
}

impl<L: SyncLimits + ?Sized> SyncLimits for std::sync::Arc<L> {
    fn admit_now(&self, admission: &Admission<'_>) -> Verdict {
        (**self).admit_now(admission)
    }
}

impl<L: CreditBalances + ?Sized> CreditBalances for std::sync::Arc<L> {
    fn set_credits(
        &self,
        account: CreditAccount<'_>,
        remaining: u64,
        refill: Option<Refill>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).set_credits(account, remaining, refill)
    }

    fn add_credits(
        &self,
        account: CreditAccount<'_>,
        amount: u64,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        (**self).add_credits(account, amount)
    }

    fn credits(
        &self,
        account: CreditAccount<'_>,
    ) -> impl Future<Output = Result<Option<CreditStatus>, StoreError>> + Send {
        (**self).credits(account)
    }

    fn remove_credits(
        &self,
        account: CreditAccount<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).remove_credits(account)
    }
}
