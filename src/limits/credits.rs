#![deny(clippy::unwrap_used, clippy::expect_used)]
//! Credits: a number of remaining uses per key, with optional periodic
//! refill, and per-owner credit limits per API.
//!
//! # Model
//!
//! * A **key balance** (key id `u64` → [`Balance`]) counts the uses left on
//!   one API key. A key with no balance configured is not metered.
//! * An **owner balance** (owner id + API name → [`Balance`]) is shared by
//!   every key of that owner on that API ("a user can have 10K on REST API
//!   and 10K on Batch API; limits are per user and not per key"). An owner
//!   with no balance configured for an API is not metered on it.
//! * A balance may have a [`RefillPolicy`]: every `period` (on the injected
//!   [`MonotonicClock`]) it is topped up to `amount`. Refills are computed
//!   lazily from the time of the last refill, so no background task is
//!   needed and missed periods do not accumulate.
//! * [`CreditLedger::spend`] debits the key's and the owner's balances in
//!   **one atomic step**: both or neither. If either lacks credits, nothing
//!   is spent and a typed [`CreditsExhausted`] tells which one (map it to
//!   `429 USAGE_EXCEEDED`).
//! * A spend may cost several credits, or zero: a zero-cost spend only checks
//!   that the balances are not exhausted (at least one credit left).
//!
//! # Example
//!
//! ```
//! use apikey::limits::credits::{CreditLedger, CreditScope};
//!
//! let ledger = CreditLedger::new();
//! ledger.set_key_credits(1, 2, None);
//! ledger.set_owner_credits("acme", "rest", 10_000, None);
//!
//! let receipt = ledger.spend(1, Some("acme"), "rest", 1)?;
//! assert_eq!(receipt.key_remaining, Some(1));
//! assert_eq!(receipt.owner_remaining, Some(9_999));
//!
//! let err = ledger.spend(1, Some("acme"), "rest", 2).unwrap_err();
//! assert_eq!(err.scope, CreditScope::Key);
//! // Nothing was spent by the refused request.
//! assert_eq!(ledger.owner_credits("acme", "rest").map(|s| s.remaining), Some(9_999));
//! # Ok::<(), apikey::limits::credits::CreditsExhausted>(())
//! ```

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::ratelimit::{MonotonicClock, StdMonotonicClock};

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Locks a mutex, recovering from poisoning: balances are plain integers and
/// are only ever replaced whole, so they are valid whatever another thread
/// was doing when it panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Balances
// ---------------------------------------------------------------------------

/// Periodic refill: every `period`, the balance is topped up to `amount`
/// (raised to `amount` if below it; a balance above `amount`, e.g. after a
/// manual grant, is left as is).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::credits::RefillPolicy;
///
/// let daily = RefillPolicy::new(1_000, Duration::from_secs(86_400)).expect("non-zero period");
/// assert_eq!(daily.amount(), 1_000);
/// assert!(RefillPolicy::new(1_000, Duration::ZERO).is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RefillPolicy {
    amount: u64,
    period: Duration,
}

impl RefillPolicy {
    /// A policy topping up to `amount` every `period`; `None` if `period` is
    /// zero.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = apikey::limits::credits::RefillPolicy::new(5, Duration::from_secs(60));
    /// assert!(p.is_some());
    /// ```
    #[must_use]
    pub const fn new(amount: u64, period: Duration) -> Option<Self> {
        if period.is_zero() {
            None
        } else {
            Some(Self { amount, period })
        }
    }

    /// The level the balance is topped up to.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = apikey::limits::credits::RefillPolicy::new(5, Duration::from_secs(1));
    /// assert_eq!(p.map(|p| p.amount()), Some(5));
    /// ```
    #[must_use]
    pub const fn amount(&self) -> u64 {
        self.amount
    }

    /// The refill period (never zero).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = apikey::limits::credits::RefillPolicy::new(5, Duration::from_secs(1));
    /// assert_eq!(p.map(|p| p.period()), Some(Duration::from_secs(1)));
    /// ```
    #[must_use]
    pub const fn period(&self) -> Duration {
        self.period
    }
}

/// One stored balance: credits left, an optional refill policy and when the
/// last refill happened (on the ledger's clock).
///
/// This is the unit a [`CreditStore`] stores; refills are applied by
/// [`refreshed`](Self::refreshed), never by the store.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::credits::{Balance, RefillPolicy};
///
/// let refill = RefillPolicy::new(10, Duration::from_secs(60));
/// let b = Balance { remaining: 0, refill, refilled_at: Duration::ZERO };
/// assert_eq!(b.refreshed(Duration::from_secs(59)).remaining, 0);
/// assert_eq!(b.refreshed(Duration::from_secs(60)).remaining, 10);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Balance {
    /// Credits left.
    pub remaining: u64,
    /// The refill policy, if any.
    pub refill: Option<RefillPolicy>,
    /// The start of the current refill period, on the ledger's clock.
    pub refilled_at: Duration,
}

impl Balance {
    /// Returns the balance with every refill due at `now` applied. Refill
    /// instants stay aligned to `refilled_at + k · period`; several missed
    /// periods give one top-up, not several. If `now` is before
    /// `refilled_at` (a clock that went back) nothing changes.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::credits::{Balance, RefillPolicy};
    ///
    /// let b = Balance {
    ///     remaining: 3,
    ///     refill: RefillPolicy::new(10, Duration::from_secs(60)),
    ///     refilled_at: Duration::ZERO,
    /// };
    /// let later = b.refreshed(Duration::from_secs(150));
    /// assert_eq!(later.remaining, 10);
    /// assert_eq!(later.refilled_at, Duration::from_secs(120));
    /// ```
    #[must_use]
    pub fn refreshed(&self, now: Duration) -> Self {
        let Some(refill) = self.refill else {
            return *self;
        };
        let now = duration_nanos(now);
        let start = duration_nanos(self.refilled_at);
        let period = duration_nanos(refill.period).max(1);
        let elapsed = now.saturating_sub(start);
        let periods = elapsed / period;
        if periods == 0 {
            return *self;
        }
        // periods · period <= elapsed, so neither operation overflows.
        let refilled_at = start + periods * period;
        Self {
            remaining: self.remaining.max(refill.amount),
            refill: self.refill,
            refilled_at: Duration::from_nanos(refilled_at),
        }
    }

    /// Time from `now` until the next refill, if the balance has a policy.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::credits::{Balance, RefillPolicy};
    ///
    /// let b = Balance {
    ///     remaining: 0,
    ///     refill: RefillPolicy::new(10, Duration::from_secs(60)),
    ///     refilled_at: Duration::ZERO,
    /// };
    /// assert_eq!(b.next_refill_in(Duration::from_secs(45)), Some(Duration::from_secs(15)));
    /// ```
    #[must_use]
    pub fn next_refill_in(&self, now: Duration) -> Option<Duration> {
        let refill = self.refill?;
        let current = self.refreshed(now);
        let next =
            duration_nanos(current.refilled_at).saturating_add(duration_nanos(refill.period));
        Some(Duration::from_nanos(
            next.saturating_sub(duration_nanos(now)),
        ))
    }
}

/// The two balances one spend touches. `None` means "not configured" (not
/// metered); a transaction that returns `None` for an entry that exists
/// deletes it.
///
/// # Example
///
/// ```
/// use apikey::limits::credits::Balances;
/// let b = Balances::default();
/// assert!(b.key.is_none() && b.owner.is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Balances {
    /// The key's balance.
    pub key: Option<Balance>,
    /// The owner's balance for the API.
    pub owner: Option<Balance>,
}

/// An owner id and an API name: the address of an owner balance.
///
/// # Example
///
/// ```
/// use apikey::limits::credits::OwnerApi;
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

// ---------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------

/// Storage for key and owner balances. The ledger computes; the store only
/// stores.
///
/// # Semantics a backend must keep
///
/// [`transact`](Self::transact) is one atomic transaction over **both**
/// balances it names (the key's, if `key_id` is `Some`, and the owner's for
/// the API, if `owner` is `Some`):
///
/// 1. Read both current balances (`None` if not configured).
/// 2. Call `f(balances)`.
/// 3. If `f` returns `Ok((t, new))`, write both of `new`'s entries (`None`
///    deletes) **only if neither balance changed since step 1**
///    (compare-and-set on both, or a transaction holding both rows locked);
///    otherwise go back to 1. Entries not named (`key_id` or `owner` is
///    `None`) are neither read nor written. Return `Ok(Ok(t))`.
/// 4. If `f` returns `Err(e)`, write nothing and return `Ok(Err(e))`.
///
/// So a spend debits both balances or neither, and concurrent spends never
/// spend a credit twice or lose one. `f` is pure (the ledger samples its
/// clock before calling), so calling it again on retry is safe; at most one
/// result may be written. Backend failures are `Err(Self::Error)`.
/// [`Balance::refilled_at`] is on the ledger's clock, so ledgers sharing one
/// backend need clocks with a common origin (see [`MonotonicClock`]).
/// Examples: a Redis Lua script or `WATCH` on both keys + `MULTI`; SQL
/// `SELECT … FOR UPDATE` on both rows (always in the same order: key row,
/// then owner row) inside one transaction.
///
/// # Example
///
/// ```
/// use apikey::limits::credits::{Balance, Balances, CreditStore, InMemoryCreditStore, OwnerApi};
/// use std::time::Duration;
///
/// let store = InMemoryCreditStore::new();
/// let owner = Some(OwnerApi { owner: "acme", api: "rest" });
/// let set = Balance { remaining: 5, refill: None, refilled_at: Duration::ZERO };
/// let r = store.transact(Some(1), owner, |_| {
///     Ok::<_, ()>(((), Balances { key: Some(set), owner: Some(set) }))
/// });
/// assert_eq!(r, Ok(Ok(())));
/// let read = store.transact(Some(1), owner, |b| Err::<((), Balances), _>(b));
/// assert_eq!(read, Ok(Err(Balances { key: Some(set), owner: Some(set) })));
/// ```
pub trait CreditStore: Send + Sync {
    /// The backend's own failure (use [`Infallible`] for in-memory stores).
    type Error;

    /// Atomically applies `f` to the named balances (see the trait docs).
    ///
    /// # Errors
    ///
    /// The backend's failure; the inner `Result` is `f`'s verdict.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::{CreditStore, InMemoryCreditStore};
    /// let store = InMemoryCreditStore::new();
    /// let seen = store.transact(Some(9), None, |b| Ok::<_, ()>((b.key, b)));
    /// assert_eq!(seen, Ok(Ok(None)));
    /// ```
    fn transact<T, E, F>(
        &self,
        key_id: Option<u64>,
        owner: Option<OwnerApi<'_>>,
        f: F,
    ) -> Result<Result<T, E>, Self::Error>
    where
        F: Fn(Balances) -> Result<(T, Balances), E>;
}

/// The asynchronous form of [`CreditStore`], for backends reached over the
/// network with an async client.
///
/// Same semantics as [`CreditStore::transact`]: one atomic transaction over
/// both named balances (compare-and-set on both, or both rows locked), `f`
/// pure and callable again on retry, nothing written when `f` refuses. Every
/// [`CreditStore`] is an `AsyncCreditStore` (its future is ready at once), so
/// implement this trait only for a store with no synchronous form.
pub trait AsyncCreditStore: Send + Sync {
    /// The backend's own failure.
    type Error;

    /// Atomically applies `f` to the named balances (see [`CreditStore`]).
    ///
    /// # Errors
    ///
    /// The backend's failure; the inner `Result` is `f`'s verdict.
    fn transact_async<T: Send, E: Send, F>(
        &self,
        key_id: Option<u64>,
        owner: Option<OwnerApi<'_>>,
        f: F,
    ) -> impl Future<Output = Result<Result<T, E>, Self::Error>> + Send
    where
        F: Fn(Balances) -> Result<(T, Balances), E> + Send;
}

impl<S> AsyncCreditStore for S
where
    S: CreditStore,
    S::Error: Send,
{
    type Error = S::Error;

    fn transact_async<T: Send, E: Send, F>(
        &self,
        key_id: Option<u64>,
        owner: Option<OwnerApi<'_>>,
        f: F,
    ) -> impl Future<Output = Result<Result<T, E>, Self::Error>> + Send
    where
        F: Fn(Balances) -> Result<(T, Balances), E> + Send,
    {
        std::future::ready(self.transact(key_id, owner, f))
    }
}

impl<S: CreditStore + ?Sized> CreditStore for Arc<S> {
    type Error = S::Error;

    fn transact<T, E, F>(
        &self,
        key_id: Option<u64>,
        owner: Option<OwnerApi<'_>>,
        f: F,
    ) -> Result<Result<T, E>, Self::Error>
    where
        F: Fn(Balances) -> Result<(T, Balances), E>,
    {
        (**self).transact(key_id, owner, f)
    }
}

const CREDIT_SHARD_BITS: u32 = 4;
const CREDIT_SHARDS: usize = 1 << CREDIT_SHARD_BITS;

type OwnerMap = HashMap<String, HashMap<String, Balance>>;

#[derive(Debug, Default)]
#[repr(align(128))]
struct KeyShard(Mutex<HashMap<u64, Balance>>);

#[derive(Debug, Default)]
#[repr(align(128))]
struct OwnerShard(Mutex<OwnerMap>);

/// The default, in-process [`CreditStore`].
///
/// Key balances live in 16 mutex-guarded shards chosen by key id, owner
/// balances in 16 shards chosen by a keyed hash of the owner id. A
/// transaction locks the key's shard and then the owner's shard, always in
/// that order (never two key shards or two owner shards), so it is atomic
/// over both balances and cannot deadlock. Spends on unrelated keys and
/// owners mostly take different locks; spends on one owner serialise on its
/// shard, as the shared balance requires.
///
/// # Example
///
/// ```
/// use apikey::limits::credits::{CreditLedger, InMemoryCreditStore};
/// use apikey::limits::ratelimit::StdMonotonicClock;
///
/// let ledger = CreditLedger::with_store_and_clock(InMemoryCreditStore::new(), StdMonotonicClock::new());
/// ledger.set_key_credits(1, 10, None);
/// assert_eq!(ledger.store().key_count(), 1);
/// ```
#[derive(Debug)]
pub struct InMemoryCreditStore {
    keys: [KeyShard; CREDIT_SHARDS],
    owners: [OwnerShard; CREDIT_SHARDS],
    hasher: RandomState,
}

impl Default for InMemoryCreditStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryCreditStore {
    /// An empty store.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::credits::InMemoryCreditStore::new().key_count(), 0);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self {
            keys: std::array::from_fn(|_| KeyShard::default()),
            owners: std::array::from_fn(|_| OwnerShard::default()),
            hasher: RandomState::new(),
        }
    }

    fn key_shard(&self, key_id: u64) -> &KeyShard {
        let idx = (key_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CREDIT_SHARD_BITS)) as usize;
        &self.keys[idx % CREDIT_SHARDS]
    }

    fn owner_shard(&self, owner: &str) -> &OwnerShard {
        let idx = (self.hasher.hash_one(owner) >> (64 - CREDIT_SHARD_BITS)) as usize;
        &self.owners[idx % CREDIT_SHARDS]
    }

    /// The number of keys with a configured balance.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::credits::InMemoryCreditStore::default().key_count(), 0);
    /// ```
    #[must_use]
    pub fn key_count(&self) -> usize {
        self.keys.iter().map(|s| lock(&s.0).len()).sum()
    }

    /// The number of (owner, API) pairs with a configured balance.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(apikey::limits::credits::InMemoryCreditStore::new().owner_count(), 0);
    /// ```
    #[must_use]
    pub fn owner_count(&self) -> usize {
        self.owners
            .iter()
            .map(|s| lock(&s.0).values().map(HashMap::len).sum::<usize>())
            .sum()
    }
}

fn write_owner(map: &mut OwnerMap, at: OwnerApi<'_>, value: Option<Balance>) {
    match value {
        Some(b) => {
            if let Some(apis) = map.get_mut(at.owner) {
                if let Some(slot) = apis.get_mut(at.api) {
                    *slot = b;
                } else {
                    apis.insert(at.api.to_owned(), b);
                }
            } else {
                let mut apis = HashMap::new();
                apis.insert(at.api.to_owned(), b);
                map.insert(at.owner.to_owned(), apis);
            }
        }
        None => {
            if let Some(apis) = map.get_mut(at.owner) {
                apis.remove(at.api);
                if apis.is_empty() {
                    map.remove(at.owner);
                }
            }
        }
    }
}

impl CreditStore for InMemoryCreditStore {
    type Error = Infallible;

    fn transact<T, E, F>(
        &self,
        key_id: Option<u64>,
        owner: Option<OwnerApi<'_>>,
        f: F,
    ) -> Result<Result<T, E>, Infallible>
    where
        F: Fn(Balances) -> Result<(T, Balances), E>,
    {
        // Lock order: key shard, then owner shard.
        let mut keys = key_id.map(|id| (id, lock(&self.key_shard(id).0)));
        let mut owners = owner.map(|at| (at, lock(&self.owner_shard(at.owner).0)));
        let current = Balances {
            key: keys.as_ref().and_then(|(id, m)| m.get(id).copied()),
            owner: owners
                .as_ref()
                .and_then(|(at, m)| m.get(at.owner).and_then(|apis| apis.get(at.api)).copied()),
        };
        Ok(f(current).map(|(t, new)| {
            if let Some((id, map)) = keys.as_mut() {
                match new.key {
                    Some(b) => {
                        map.insert(*id, b);
                    }
                    None => {
                        map.remove(id);
                    }
                }
            }
            if let Some((at, map)) = owners.as_mut() {
                write_owner(map, *at, new.owner);
            }
            t
        }))
    }
}

// ---------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------

/// Which balance ran out.
///
/// # Example
///
/// ```
/// use apikey::limits::credits::{CreditLedger, CreditScope};
/// let ledger = CreditLedger::new();
/// ledger.set_owner_credits("acme", "rest", 0, None);
/// let err = ledger.spend(1, Some("acme"), "rest", 1).unwrap_err();
/// assert_eq!(err.scope, CreditScope::Owner);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CreditScope {
    /// The key's own balance.
    Key,
    /// The owner's balance for the API (shared by the owner's keys).
    Owner,
}

/// A refused spend: nothing was debited. Map it to `429 USAGE_EXCEEDED`.
///
/// When both balances are short, the key's is reported.
///
/// # Example
///
/// ```
/// use apikey::limits::credits::{CreditLedger, CreditScope};
/// let ledger = CreditLedger::new();
/// ledger.set_key_credits(1, 2, None);
/// let err = ledger.spend(1, None, "rest", 3).unwrap_err();
/// assert_eq!((err.scope, err.remaining, err.cost), (CreditScope::Key, 2, 3));
/// assert_eq!(err.refill_in, None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CreditsExhausted {
    /// Which balance is short.
    pub scope: CreditScope,
    /// What that balance holds.
    pub remaining: u64,
    /// What the request would have cost.
    pub cost: u64,
    /// Time until that balance's next refill, if it has a refill policy
    /// (a `Retry-After` hint; the refill may still not be enough).
    pub refill_in: Option<Duration>,
}

impl fmt::Display for CreditsExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            CreditScope::Key => "key",
            CreditScope::Owner => "owner",
        };
        write!(
            f,
            "usage exceeded: {scope} has {} credits left, request costs {}",
            self.remaining, self.cost
        )
    }
}

impl std::error::Error for CreditsExhausted {}

/// A successful spend: what is left afterwards (`None` = not metered).
///
/// # Example
///
/// ```
/// use apikey::limits::credits::CreditLedger;
/// let ledger = CreditLedger::new();
/// let r = ledger.spend(1, None, "rest", 1)?;
/// assert_eq!((r.key_remaining, r.owner_remaining), (None, None));
/// # Ok::<(), apikey::limits::credits::CreditsExhausted>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpendReceipt {
    /// Credits debited (from each metered balance).
    pub cost: u64,
    /// The key's balance after the spend.
    pub key_remaining: Option<u64>,
    /// The owner's balance for the API after the spend.
    pub owner_remaining: Option<u64>,
}

/// A balance as read now (with due refills applied).
///
/// # Example
///
/// ```
/// use apikey::limits::credits::CreditLedger;
/// let ledger = CreditLedger::new();
/// ledger.set_key_credits(1, 7, None);
/// let status = ledger.key_credits(1).expect("configured");
/// assert_eq!((status.remaining, status.next_refill_in), (7, None));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CreditStatus {
    /// Credits left now.
    pub remaining: u64,
    /// The refill policy, if any.
    pub refill: Option<RefillPolicy>,
    /// Time until the next refill, if there is a policy.
    pub next_refill_in: Option<Duration>,
}

impl CreditStatus {
    fn of(b: &Balance, now: Duration) -> Self {
        let current = b.refreshed(now);
        Self {
            remaining: current.remaining,
            refill: current.refill,
            next_refill_in: current.next_refill_in(now),
        }
    }
}

// ---------------------------------------------------------------------------
// Ledger
// ---------------------------------------------------------------------------

/// Credits per key and per owner and API, over a [`CreditStore`] and a
/// [`MonotonicClock`] (used for refills).
///
/// Methods named `try_*` work with any store and return its error; the
/// plain ones are for stores that cannot fail, such as the default
/// [`InMemoryCreditStore`].
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use apikey::limits::credits::{CreditLedger, RefillPolicy};
/// use apikey::limits::ratelimit::FakeMonotonicClock;
///
/// let clock = Arc::new(FakeMonotonicClock::new());
/// let ledger = CreditLedger::with_clock(Arc::clone(&clock));
/// let hourly = RefillPolicy::new(2, Duration::from_secs(3600));
/// ledger.set_key_credits(1, 2, hourly);
/// assert!(ledger.spend(1, None, "rest", 2).is_ok());
/// assert!(ledger.spend(1, None, "rest", 1).is_err());
/// clock.advance(Duration::from_secs(3600));
/// assert!(ledger.spend(1, None, "rest", 1).is_ok());
/// ```
#[derive(Debug, Default)]
pub struct CreditLedger<S = InMemoryCreditStore, C = StdMonotonicClock> {
    store: S,
    clock: C,
}

impl CreditLedger {
    /// A ledger with the in-memory store and the standard clock.
    ///
    /// # Example
    ///
    /// ```
    /// let ledger = apikey::limits::credits::CreditLedger::new();
    /// assert_eq!(ledger.key_credits(1), None);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C: MonotonicClock> CreditLedger<InMemoryCreditStore, C> {
    /// A ledger with the in-memory store and the given clock.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::CreditLedger;
    /// use apikey::limits::ratelimit::FakeMonotonicClock;
    /// let ledger = CreditLedger::with_clock(FakeMonotonicClock::new());
    /// # let _ = ledger;
    /// ```
    #[must_use]
    pub fn with_clock(clock: C) -> Self {
        Self::with_store_and_clock(InMemoryCreditStore::new(), clock)
    }
}

fn infallible<T>(r: Result<T, Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// The spend computation, run inside the store's transaction.
fn apply_spend(
    current: Balances,
    now: Duration,
    cost: u64,
) -> Result<(SpendReceipt, Balances), CreditsExhausted> {
    // A zero-cost check still requires one credit left.
    let needed = cost.max(1);
    let key = current.key.map(|b| b.refreshed(now));
    let owner = current.owner.map(|b| b.refreshed(now));
    for (scope, balance) in [(CreditScope::Key, &key), (CreditScope::Owner, &owner)] {
        if let Some(b) = balance
            && b.remaining < needed
        {
            return Err(CreditsExhausted {
                scope,
                remaining: b.remaining,
                cost,
                refill_in: b.next_refill_in(now),
            });
        }
    }
    let debit = |b: Balance| Balance {
        remaining: b.remaining.saturating_sub(cost),
        ..b
    };
    let key = key.map(debit);
    let owner = owner.map(debit);
    Ok((
        SpendReceipt {
            cost,
            key_remaining: key.map(|b| b.remaining),
            owner_remaining: owner.map(|b| b.remaining),
        },
        Balances { key, owner },
    ))
}

impl<S, C: MonotonicClock> CreditLedger<S, C> {
    /// A ledger over any store and clock.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use apikey::limits::credits::{CreditLedger, InMemoryCreditStore};
    /// use apikey::limits::ratelimit::StdMonotonicClock;
    /// let store = Arc::new(InMemoryCreditStore::new());
    /// let ledger = CreditLedger::with_store_and_clock(Arc::clone(&store), StdMonotonicClock::new());
    /// # let _ = ledger;
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
    /// assert_eq!(apikey::limits::credits::CreditLedger::new().store().owner_count(), 0);
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
    /// use apikey::limits::credits::CreditLedger;
    /// use apikey::limits::ratelimit::{FakeMonotonicClock, MonotonicClock};
    /// let ledger = CreditLedger::with_clock(FakeMonotonicClock::new());
    /// assert_eq!(ledger.clock().now(), std::time::Duration::ZERO);
    /// ```
    #[must_use]
    pub const fn clock(&self) -> &C {
        &self.clock
    }

    fn fresh(&self, remaining: u64, refill: Option<RefillPolicy>) -> Balance {
        Balance {
            remaining,
            refill,
            refilled_at: self.clock.now(),
        }
    }
}

impl<S: CreditStore, C: MonotonicClock> CreditLedger<S, C> {
    /// Sets a key's balance and refill policy; the refill period starts now.
    ///
    /// # Errors
    ///
    /// The store's error.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::CreditLedger;
    /// let ledger = CreditLedger::new();
    /// ledger.try_set_key_credits(1, 10, None).unwrap_or_else(|e| match e {});
    /// ```
    pub fn try_set_key_credits(
        &self,
        key_id: u64,
        remaining: u64,
        refill: Option<RefillPolicy>,
    ) -> Result<(), S::Error> {
        let b = self.fresh(remaining, refill);
        self.store
            .transact(Some(key_id), None, |cur| {
                Ok::<_, Infallible>((
                    (),
                    Balances {
                        key: Some(b),
                        ..cur
                    },
                ))
            })
            .map(infallible)
    }

    /// Removes a key's balance (the key is no longer metered); returns
    /// whether it had one.
    ///
    /// # Errors
    ///
    /// The store's error.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::CreditLedger;
    /// let ledger = CreditLedger::new();
    /// assert_eq!(ledger.try_remove_key_credits(1).unwrap_or_else(|e| match e {}), false);
    /// ```
    pub fn try_remove_key_credits(&self, key_id: u64) -> Result<bool, S::Error> {
        self.store
            .transact(Some(key_id), None, |cur| {
                Ok::<_, Infallible>((cur.key.is_some(), Balances { key: None, ..cur }))
            })
            .map(infallible)
    }

    /// A key's balance now (refills applied), or `None` if not metered.
    ///
    /// # Errors
    ///
    /// The store's error.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::CreditLedger;
    /// let ledger = CreditLedger::new();
    /// assert_eq!(ledger.try_key_credits(1).unwrap_or_else(|e| match e {}), None);
    /// ```
    pub fn try_key_credits(&self, key_id: u64) -> Result<Option<CreditStatus>, S::Error> {
        let now = self.clock.now();
        self.store
            .transact(Some(key_id), None, |cur| Err::<((), Balances), _>(cur.key))
            .map(|r| r.err().flatten().map(|b| CreditStatus::of(&b, now)))
    }

    /// Sets an owner's balance for one API and its refill policy; the refill
    /// period starts now.
    ///
    /// # Errors
    ///
    /// The store's error.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::CreditLedger;
    /// let ledger = CreditLedger::new();
    /// ledger.try_set_owner_credits("acme", "batch", 10_000, None).unwrap_or_else(|e| match e {});
    /// ```
    pub fn try_set_owner_credits(
        &self,
        owner: &str,
        api: &str,
        remaining: u64,
        refill: Option<RefillPolicy>,
    ) -> Result<(), S::Error> {
        let b = self.fresh(remaining, refill);
        self.store
            .transact(None, Some(OwnerApi { owner, api }), |cur| {
                Ok::<_, Infallible>((
                    (),
                    Balances {
                        owner: Some(b),
                        ..cur
                    },
                ))
            })
            .map(infallible)
    }

    /// Removes an owner's balance for one API (no longer metered); returns
    /// whether it had one.
    ///
    /// # Errors
    ///
    /// The store's error.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::CreditLedger;
    /// let ledger = CreditLedger::new();
    /// let removed = ledger.try_remove_owner_credits("acme", "rest").unwrap_or_else(|e| match e {});
    /// assert!(!removed);
    /// ```
    pub fn try_remove_owner_credits(&self, owner: &str, api: &str) -> Result<bool, S::Error> {
        self.store
            .transact(None, Some(OwnerApi { owner, api }), |cur| {
                Ok::<_, Infallible>((cur.owner.is_some(), Balances { owner: None, ..cur }))
            })
            .map(infallible)
    }

    /// An owner's balance for one API now (refills applied), or `None` if
    /// not metered.
    ///
    /// # Errors
    ///
    /// The store's error.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::CreditLedger;
    /// let ledger = CreditLedger::new();
    /// assert_eq!(ledger.try_owner_credits("acme", "rest").unwrap_or_else(|e| match e {}), None);
    /// ```
    pub fn try_owner_credits(
        &self,
        owner: &str,
        api: &str,
    ) -> Result<Option<CreditStatus>, S::Error> {
        let now = self.clock.now();
        self.store
            .transact(None, Some(OwnerApi { owner, api }), |cur| {
                Err::<((), Balances), _>(cur.owner)
            })
            .map(|r| r.err().flatten().map(|b| CreditStatus::of(&b, now)))
    }

    /// Spends `cost` credits from the key's balance and, if `owner` is
    /// given, from the owner's balance for `api`, atomically: both or
    /// neither. Unconfigured balances are not metered. A `cost` of 0 spends
    /// nothing but still fails if a metered balance is at 0.
    ///
    /// # Errors
    ///
    /// The store's error; the inner `Err` is a refusal (nothing spent).
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::CreditLedger;
    /// let ledger = CreditLedger::new();
    /// ledger.set_key_credits(1, 1, None);
    /// let outcome = ledger.try_spend(1, None, "rest", 1).unwrap_or_else(|e| match e {});
    /// assert_eq!(outcome.map(|r| r.key_remaining), Ok(Some(0)));
    /// ```
    pub fn try_spend(
        &self,
        key_id: u64,
        owner: Option<&str>,
        api: &str,
        cost: u64,
    ) -> Result<Result<SpendReceipt, CreditsExhausted>, S::Error> {
        let now = self.clock.now();
        let owner = owner.map(|owner| OwnerApi { owner, api });
        self.store
            .transact(Some(key_id), owner, |cur| apply_spend(cur, now, cost))
    }
}

impl<S: AsyncCreditStore, C: MonotonicClock> CreditLedger<S, C> {
    /// [`try_spend`](Self::try_spend) over an [`AsyncCreditStore`] (any
    /// [`CreditStore`] is one): the key's and the owner's debit in one
    /// atomic step, awaiting the backend.
    ///
    /// # Errors
    ///
    /// The store's error; the inner `Result` is the spend's verdict.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::CreditLedger;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let ledger = CreditLedger::new();
    /// ledger.set_key_credits(1, 1, None);
    /// let outcome = ledger.spend_async(1, None, "rest", 1).await.unwrap_or_else(|e| match e {});
    /// assert_eq!(outcome.map(|r| r.key_remaining), Ok(Some(0)));
    /// # }
    /// ```
    pub async fn spend_async(
        &self,
        key_id: u64,
        owner: Option<&str>,
        api: &str,
        cost: u64,
    ) -> Result<Result<SpendReceipt, CreditsExhausted>, S::Error> {
        let now = self.clock.now();
        let owner = owner.map(|owner| OwnerApi { owner, api });
        self.store
            .transact_async(Some(key_id), owner, move |cur| apply_spend(cur, now, cost))
            .await
    }
}

impl<S: CreditStore<Error = Infallible>, C: MonotonicClock> CreditLedger<S, C> {
    /// Sets a key's balance and refill policy; the refill period starts now.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use apikey::limits::credits::{CreditLedger, RefillPolicy};
    /// let ledger = CreditLedger::new();
    /// ledger.set_key_credits(1, 100, RefillPolicy::new(100, Duration::from_secs(86_400)));
    /// assert_eq!(ledger.key_credits(1).map(|s| s.remaining), Some(100));
    /// ```
    pub fn set_key_credits(&self, key_id: u64, remaining: u64, refill: Option<RefillPolicy>) {
        infallible(self.try_set_key_credits(key_id, remaining, refill));
    }

    /// Removes a key's balance; returns whether it had one.
    ///
    /// # Example
    ///
    /// ```
    /// let ledger = apikey::limits::credits::CreditLedger::new();
    /// ledger.set_key_credits(1, 1, None);
    /// assert!(ledger.remove_key_credits(1));
    /// assert_eq!(ledger.key_credits(1), None);
    /// ```
    pub fn remove_key_credits(&self, key_id: u64) -> bool {
        infallible(self.try_remove_key_credits(key_id))
    }

    /// A key's balance now, or `None` if not metered.
    ///
    /// # Example
    ///
    /// ```
    /// let ledger = apikey::limits::credits::CreditLedger::new();
    /// ledger.set_key_credits(1, 3, None);
    /// assert_eq!(ledger.key_credits(1).map(|s| s.remaining), Some(3));
    /// ```
    #[must_use]
    pub fn key_credits(&self, key_id: u64) -> Option<CreditStatus> {
        infallible(self.try_key_credits(key_id))
    }

    /// Sets an owner's balance for one API and its refill policy.
    ///
    /// # Example
    ///
    /// ```
    /// let ledger = apikey::limits::credits::CreditLedger::new();
    /// ledger.set_owner_credits("acme", "rest", 10_000, None);
    /// ledger.set_owner_credits("acme", "batch", 10_000, None);
    /// assert_eq!(ledger.owner_credits("acme", "batch").map(|s| s.remaining), Some(10_000));
    /// ```
    pub fn set_owner_credits(
        &self,
        owner: &str,
        api: &str,
        remaining: u64,
        refill: Option<RefillPolicy>,
    ) {
        infallible(self.try_set_owner_credits(owner, api, remaining, refill));
    }

    /// Removes an owner's balance for one API; returns whether it had one.
    ///
    /// # Example
    ///
    /// ```
    /// let ledger = apikey::limits::credits::CreditLedger::new();
    /// ledger.set_owner_credits("acme", "rest", 1, None);
    /// assert!(ledger.remove_owner_credits("acme", "rest"));
    /// ```
    pub fn remove_owner_credits(&self, owner: &str, api: &str) -> bool {
        infallible(self.try_remove_owner_credits(owner, api))
    }

    /// An owner's balance for one API now, or `None` if not metered.
    ///
    /// # Example
    ///
    /// ```
    /// let ledger = apikey::limits::credits::CreditLedger::new();
    /// assert_eq!(ledger.owner_credits("acme", "rest"), None);
    /// ```
    #[must_use]
    pub fn owner_credits(&self, owner: &str, api: &str) -> Option<CreditStatus> {
        infallible(self.try_owner_credits(owner, api))
    }

    /// Spends `cost` credits from the key and (if given) the owner's balance
    /// for `api`, atomically: both or neither (see
    /// [`try_spend`](Self::try_spend)).
    ///
    /// # Errors
    ///
    /// [`CreditsExhausted`] if a metered balance is short; nothing is spent.
    ///
    /// # Example
    ///
    /// ```
    /// use apikey::limits::credits::{CreditLedger, CreditScope};
    /// let ledger = CreditLedger::new();
    /// ledger.set_key_credits(1, 5, None);
    /// ledger.set_owner_credits("acme", "rest", 1, None);
    /// assert!(ledger.spend(1, Some("acme"), "rest", 1).is_ok());
    /// let err = ledger.spend(1, Some("acme"), "rest", 1).unwrap_err();
    /// assert_eq!(err.scope, CreditScope::Owner);
    /// assert_eq!(ledger.key_credits(1).map(|s| s.remaining), Some(4));
    /// ```
    pub fn spend(
        &self,
        key_id: u64,
        owner: Option<&str>,
        api: &str,
        cost: u64,
    ) -> Result<SpendReceipt, CreditsExhausted> {
        infallible(self.try_spend(key_id, owner, api, cost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::FakeMonotonicClock;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn ledger() -> (
        Arc<FakeMonotonicClock>,
        CreditLedger<InMemoryCreditStore, Arc<FakeMonotonicClock>>,
    ) {
        let clock = Arc::new(FakeMonotonicClock::new());
        (Arc::clone(&clock), CreditLedger::with_clock(clock))
    }

    fn remaining_key(
        l: &CreditLedger<InMemoryCreditStore, Arc<FakeMonotonicClock>>,
        k: u64,
    ) -> Option<u64> {
        l.key_credits(k).map(|s| s.remaining)
    }

    #[test]
    fn unmetered_by_default() {
        let (_c, l) = ledger();
        let r = l.spend(1, Some("o"), "rest", 1_000_000);
        assert_eq!(
            r,
            Ok(SpendReceipt {
                cost: 1_000_000,
                key_remaining: None,
                owner_remaining: None
            })
        );
        assert_eq!(l.store().key_count(), 0);
        assert_eq!(l.store().owner_count(), 0);
    }

    #[test]
    fn zero_cost_checks_without_spending() {
        let (_c, l) = ledger();
        l.set_key_credits(1, 1, None);
        assert_eq!(
            l.spend(1, None, "a", 0).map(|r| r.key_remaining),
            Ok(Some(1))
        );
        assert_eq!(remaining_key(&l, 1), Some(1));
        assert!(l.spend(1, None, "a", 1).is_ok());
        let err = l.spend(1, None, "a", 0);
        assert_eq!(
            err.map_err(|e| (e.scope, e.cost)),
            Err((CreditScope::Key, 0))
        );
    }

    #[test]
    fn both_or_neither() {
        let (_c, l) = ledger();
        l.set_key_credits(1, 10, None);
        l.set_owner_credits("o", "rest", 3, None);
        assert!(l.spend(1, Some("o"), "rest", 3).is_ok());
        let e = l.spend(1, Some("o"), "rest", 1);
        assert_eq!(e.map_err(|e| e.scope), Err(CreditScope::Owner));
        assert_eq!(remaining_key(&l, 1), Some(7));
        // Key short: owner not debited.
        l.set_owner_credits("o", "rest", 100, None);
        let e = l.spend(1, Some("o"), "rest", 8);
        assert_eq!(
            e.map_err(|e| (e.scope, e.remaining)),
            Err((CreditScope::Key, 7))
        );
        assert_eq!(l.owner_credits("o", "rest").map(|s| s.remaining), Some(100));
        // Owner limit is per API.
        assert!(l.spend(1, Some("o"), "batch", 7).is_ok());
        assert_eq!(l.owner_credits("o", "rest").map(|s| s.remaining), Some(100));
    }

    #[test]
    fn refill_tops_up_on_period_boundaries() {
        let (clock, l) = ledger();
        clock.advance(Duration::from_secs(5));
        let p = RefillPolicy::new(10, Duration::from_secs(60));
        l.set_key_credits(1, 10, p);
        assert!(l.spend(1, None, "a", 10).is_ok());
        let e = l.spend(1, None, "a", 1);
        assert_eq!(
            e.map_err(|e| e.refill_in),
            Err(Some(Duration::from_secs(60)))
        );
        clock.advance(Duration::from_secs(59));
        assert!(l.spend(1, None, "a", 1).is_err());
        clock.advance(Duration::from_secs(1));
        assert_eq!(remaining_key(&l, 1), Some(10));
        assert!(l.spend(1, None, "a", 4).is_ok());
        // Several missed periods: one top-up, aligned to the original start.
        clock.advance(Duration::from_secs(60 * 5 + 30));
        let s = l.key_credits(1);
        assert_eq!(
            s.map(|s| (s.remaining, s.next_refill_in)),
            Some((10, Some(Duration::from_secs(30))))
        );
        // Above the refill amount (manual grant): kept.
        l.set_key_credits(1, 50, p);
        clock.advance(Duration::from_secs(60));
        assert_eq!(remaining_key(&l, 1), Some(50));
    }

    #[test]
    fn remove_and_reconfigure() {
        let (_c, l) = ledger();
        l.set_owner_credits("o", "rest", 1, None);
        l.set_owner_credits("o", "batch", 1, None);
        assert_eq!(l.store().owner_count(), 2);
        assert!(l.remove_owner_credits("o", "rest"));
        assert!(!l.remove_owner_credits("o", "rest"));
        assert!(l.remove_owner_credits("o", "batch"));
        assert_eq!(l.store().owner_count(), 0);
        l.set_key_credits(9, 0, None);
        assert!(l.spend(9, None, "x", 0).is_err());
        assert!(l.remove_key_credits(9));
        assert!(l.spend(9, None, "x", 0).is_ok());
    }

    #[test]
    fn extreme_values() {
        let (clock, l) = ledger();
        l.set_key_credits(
            1,
            u64::MAX,
            RefillPolicy::new(u64::MAX, Duration::from_nanos(1)),
        );
        assert!(l.spend(1, None, "a", u64::MAX).is_ok());
        clock.set(Duration::MAX);
        assert_eq!(remaining_key(&l, 1), Some(u64::MAX));
        // Reads do not write: back at time zero nothing is due.
        clock.set(Duration::ZERO);
        assert_eq!(remaining_key(&l, 1), Some(0));
        let b = Balance {
            remaining: 0,
            refill: RefillPolicy::new(1, Duration::MAX),
            refilled_at: Duration::MAX,
        };
        assert_eq!(
            b.next_refill_in(Duration::ZERO),
            Some(Duration::from_nanos(u64::MAX))
        );
    }

    #[test]
    fn concurrent_spends_are_exact() {
        let (_c, l) = ledger();
        l.set_key_credits(1, 1_000, None);
        l.set_owner_credits("o", "rest", 1_500, None);
        l.set_key_credits(2, 1_000, None);
        let spent = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (l, spent) = (&l, &spent);
                s.spawn(move || {
                    for i in 0..1_000u64 {
                        let key = 1 + (t + i) % 2;
                        let cost = 1 + (t * 7 + i) % 3;
                        if let Ok(r) = l.spend(key, Some("o"), "rest", cost) {
                            spent.fetch_add(r.cost, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let owner_left = l.owner_credits("o", "rest").map_or(0, |s| s.remaining);
        let k1 = remaining_key(&l, 1).unwrap_or(0);
        let k2 = remaining_key(&l, 2).unwrap_or(0);
        let total = spent.load(Ordering::Relaxed);
        assert_eq!(total + owner_left, 1_500);
        assert_eq!(total + k1 + k2, 2_000);
    }

    #[test]
    fn display() {
        let e = CreditsExhausted {
            scope: CreditScope::Owner,
            remaining: 0,
            cost: 2,
            refill_in: None,
        };
        assert_eq!(
            e.to_string(),
            "usage exceeded: owner has 0 credits left, request costs 2"
        );
    }
}
