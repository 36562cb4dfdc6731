//! [`MemoryLimits`]: rate limits, credits and the failure throttle in
//! process memory.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::StoreError;
use crate::limits::admission::{Admission, AdmissionState, IdempotencyError, Verdict, decide};
use crate::limits::credits::{Balance, CreditAccount, CreditStatus, MAX_CREDITS, Refill};
use crate::limits::gcra::GcraState;
use crate::limits::quota::Quota;
use crate::limits::throttle::{FailureThrottle, FailureThrottleConfig, UntaggedAttempt};
use crate::limits::{CreditBalances, Limits, SyncLimits};
use crate::timestamp::Timestamp;

const RATE_SHARD_BITS: u32 = 6;
const CREDIT_SHARD_BITS: u32 = 4;

type OwnerMap = HashMap<String, HashMap<String, Balance>>;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard<T>(Mutex<T>);

fn lock<T>(m: &Shard<T>) -> MutexGuard<'_, T> {
    // Every guarded value is plain data replaced whole, valid whatever a
    // panicking thread was doing.
    m.0.lock().unwrap_or_else(PoisonError::into_inner)
}

fn fib(key: u64, bits: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

/// The in-process limits bundle: GCRA state per key, key and owner credit
/// balances, and (when configured) the [`FailureThrottle`], all on one
/// [`Clock`].
///
/// One admission locks the key's rate shard, then (if credits are charged)
/// the key's balance shard, then the owner's balance shard, always in that
/// order and never two shards of one kind, so it is atomic over both
/// windows and both balances and cannot deadlock. State is spread over 64
/// rate shards and 16 + 16 credit shards, so unrelated keys rarely contend.
/// Rate state of idle keys is dropped by [`purge_idle`](Self::purge_idle)
/// (no decision changes).
///
/// The async [`Limits`] and [`CreditBalances`] methods return ready
/// futures; the `*_sync` methods are the same operations without one.
///
/// ```
/// use std::time::Duration;
/// use apikey::ManualClock;
/// use apikey::limits::{Admission, MemoryLimits, Quota};
/// use time::macros::datetime;
///
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap());
/// let limits = MemoryLimits::with_clock(clock.clone());
/// let q = Quota::unlimited().per_minute(2);
/// assert!(limits.check_sync(7, q).is_admitted());
/// assert!(limits.check_sync(7, q).is_admitted());
/// let refused = limits.check_sync(7, q);
/// assert_eq!(refused.retry_after(), Some(Duration::from_secs(30)));
/// clock.advance(std::time::Duration::from_secs(30));
/// assert!(limits.admit_sync(&Admission::new(7, q)).is_admitted());
/// ```
#[derive(Debug)]
pub struct MemoryLimits<C = SystemClock> {
    clock: C,
    rate: Box<[Shard<HashMap<u64, GcraState>>]>,
    keys: Box<[Shard<HashMap<u64, Balance>>]>,
    owners: Box<[Shard<OwnerMap>]>,
    hasher: RandomState,
    throttle: Option<FailureThrottle>,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLimits {
    /// Limits on the system clock, without a failure throttle.
    #[must_use]
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }
}

fn shards<T: Default>(bits: u32) -> Box<[Shard<T>]> {
    (0..1usize << bits).map(|_| Shard::default()).collect()
}

impl<C: Clock> MemoryLimits<C> {
    /// Limits on `clock` (tests: a [`ManualClock`](crate::ManualClock)
    /// shared with the rest of the pipeline).
    #[must_use]
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            rate: shards(RATE_SHARD_BITS),
            keys: shards(CREDIT_SHARD_BITS),
            owners: shards(CREDIT_SHARD_BITS),
            hasher: RandomState::new(),
            throttle: None,
        }
    }

    /// Turns on the failure throttle. Defaults to off.
    #[must_use]
    pub fn with_failure_throttle(mut self, config: FailureThrottleConfig) -> Self {
        self.throttle = Some(FailureThrottle::new(config));
        self
    }

    /// The failure throttle, if on.
    #[must_use]
    pub fn throttle(&self) -> Option<&FailureThrottle> {
        self.throttle.as_ref()
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> &C {
        &self.clock
    }

    fn rate_shard(&self, key: u64) -> &Shard<HashMap<u64, GcraState>> {
        &self.rate[fib(key, RATE_SHARD_BITS) % self.rate.len()]
    }

    fn key_shard(&self, key: u64) -> &Shard<HashMap<u64, Balance>> {
        &self.keys[fib(key, CREDIT_SHARD_BITS) % self.keys.len()]
    }

    fn owner_shard(&self, owner: &str) -> &Shard<OwnerMap> {
        let h = self.hasher.hash_one(owner);
        &self.owners[fib(h, CREDIT_SHARD_BITS) % self.owners.len()]
    }

    /// Decides and applies `admission` at the clock's current time.
    pub fn admit_sync(&self, admission: &Admission<'_>) -> Verdict {
        self.admit_at(admission, self.clock.now())
    }

    /// Rate limit only: [`admit_sync`](Self::admit_sync) of
    /// `Admission::new(key, quota)`.
    pub fn check_sync(&self, key: u64, quota: Quota) -> Verdict {
        self.admit_sync(&Admission::new(key, quota))
    }

    /// Decides and applies `admission` at `now` (for tests and oracles that
    /// drive time themselves).
    pub fn admit_at(&self, admission: &Admission<'_>, now: Timestamp) -> Verdict {
        if admission.quota.is_unlimited() && admission.charge.is_none() {
            return decide(admission, &AdmissionState::default(), now).0;
        }
        let key = admission.key;
        // Lock order: rate shard, key balance shard, owner balance shard.
        let mut rate = lock(self.rate_shard(key));
        let charge = admission.charge;
        let mut keys = charge.map(|_| lock(self.key_shard(key)));
        let owner_at = charge.and_then(|c| c.owner);
        let mut owners = owner_at.map(|at| (at, lock(self.owner_shard(at.owner))));
        let state = AdmissionState {
            rate: rate.get(&key).copied().unwrap_or_default(),
            key_balance: keys.as_ref().and_then(|m| m.get(&key).copied()),
            owner_balance: owners
                .as_ref()
                .and_then(|(at, m)| m.get(at.owner).and_then(|apis| apis.get(at.api)).copied()),
        };
        let (verdict, write) = decide(admission, &state, now);
        if let Some(write) = write {
            if let Some(r) = write.rate {
                rate.insert(key, r);
            }
            if let (Some(b), Some(m)) = (write.key_balance, keys.as_mut()) {
                m.insert(key, b);
            }
            if let (Some(b), Some((at, m))) = (write.owner_balance, owners.as_mut())
                && let Some(slot) = m.get_mut(at.owner).and_then(|apis| apis.get_mut(at.api))
            {
                *slot = b;
            }
        }
        verdict
    }

    /// The stored rate state of `key`, if any.
    #[must_use]
    pub fn rate_state(&self, key: u64) -> Option<GcraState> {
        lock(self.rate_shard(key)).get(&key).copied()
    }

    /// Forgets `key`'s rate state (it starts again with a full burst).
    /// Returns whether there was one.
    pub fn reset_rate(&self, key: u64) -> bool {
        lock(self.rate_shard(key)).remove(&key).is_some()
    }

    /// The number of keys with rate state.
    #[must_use]
    pub fn rate_len(&self) -> usize {
        self.rate.iter().map(|s| lock(s).len()).sum()
    }

    /// Drops the rate state of every key fully replenished now, and stale
    /// throttle entries; no decision changes. Returns how many rate states
    /// were dropped.
    pub fn purge_idle(&self) -> usize {
        let now = self.clock.now();
        if let Some(t) = &self.throttle {
            let _ = t.purge_expired(now);
        }
        self.rate
            .iter()
            .map(|s| {
                let mut m = lock(s);
                let before = m.len();
                m.retain(|_, st| !st.is_idle_at(now));
                before - m.len()
            })
            .sum()
    }

    /// Runs `f` on one balance slot under its shard lock.
    fn with_balance<T>(
        &self,
        account: CreditAccount<'_>,
        f: impl FnOnce(&mut Option<Balance>) -> T,
    ) -> T {
        match account {
            CreditAccount::Key(id) => {
                let mut m = lock(self.key_shard(id));
                let mut slot = m.get(&id).copied();
                let out = f(&mut slot);
                match slot {
                    Some(b) => {
                        m.insert(id, b);
                    }
                    None => {
                        m.remove(&id);
                    }
                }
                out
            }
            CreditAccount::Owner { owner, api } => {
                let mut m = lock(self.owner_shard(owner));
                let mut slot = m.get(owner).and_then(|apis| apis.get(api)).copied();
                let out = f(&mut slot);
                match slot {
                    Some(b) => {
                        let apis = match m.get_mut(owner) {
                            Some(apis) => apis,
                            None => m.entry(owner.to_owned()).or_default(),
                        };
                        match apis.get_mut(api) {
                            Some(s) => *s = b,
                            None => {
                                apis.insert(api.to_owned(), b);
                            }
                        }
                    }
                    None => {
                        if let Some(apis) = m.get_mut(owner) {
                            apis.remove(api);
                            if apis.is_empty() {
                                m.remove(owner);
                            }
                        }
                    }
                }
                out
            }
        }
    }

    /// [`CreditBalances::set_credits`] without a future.
    pub fn set_credits_sync(
        &self,
        account: CreditAccount<'_>,
        remaining: u64,
        refill: Option<Refill>,
    ) {
        let b = Balance {
            remaining: remaining.min(MAX_CREDITS),
            refill,
            refilled_at: self.clock.now(),
        };
        self.with_balance(account, |slot| *slot = Some(b));
    }

    /// [`CreditBalances::add_credits`] without a future.
    pub fn add_credits_sync(&self, account: CreditAccount<'_>, amount: u64) -> Option<u64> {
        let now = self.clock.now();
        self.with_balance(account, |slot| {
            let b = slot.as_mut()?;
            *b = b.refreshed(now);
            b.remaining = b.remaining.saturating_add(amount).min(MAX_CREDITS);
            Some(b.remaining)
        })
    }

    /// [`CreditBalances::credits`] without a future.
    #[must_use]
    pub fn credits_sync(&self, account: CreditAccount<'_>) -> Option<CreditStatus> {
        let now = self.clock.now();
        self.with_balance(account, |slot| slot.map(|b| CreditStatus::of(&b, now)))
    }

    /// [`CreditBalances::remove_credits`] without a future.
    pub fn remove_credits_sync(&self, account: CreditAccount<'_>) -> bool {
        self.with_balance(account, |slot| slot.take().is_some())
    }

    /// The number of metered keys and of metered (owner, API) pairs.
    #[must_use]
    pub fn credit_counts(&self) -> (usize, usize) {
        let keys = self.keys.iter().map(|s| lock(s).len()).sum();
        let owners = self
            .owners
            .iter()
            .map(|s| lock(s).values().map(HashMap::len).sum::<usize>())
            .sum();
        (keys, owners)
    }
}

impl<C: Clock> Limits for MemoryLimits<C> {
    fn admit(
        &self,
        admission: &Admission<'_>,
    ) -> impl Future<Output = Result<Verdict, StoreError>> + Send {
        // No outcome is ever unknown here, so nothing is recorded; the
        // token is still checked, so every bundle refuses the same tokens.
        std::future::ready(
            admission
                .checked_idempotency()
                .map_err(IdempotencyError::into_store_error)
                .map(|_| self.admit_sync(admission)),
        )
    }

    fn check_key(&self, key_id: u64) -> Result<(), Duration> {
        match &self.throttle {
            Some(t) => t.check_key(key_id, self.clock.now()),
            None => Ok(()),
        }
    }

    fn begin_untagged(&self, client: Option<IpAddr>) -> Result<UntaggedAttempt<'_>, Duration> {
        match &self.throttle {
            Some(t) => t.begin_untagged(client, self.clock.now()),
            None => Ok(UntaggedAttempt::unbounded()),
        }
    }

    fn key_failed(&self, key_id: u64) -> impl Future<Output = ()> + Send {
        if let Some(t) = &self.throttle {
            let _ = t.record_key_failure(key_id, self.clock.now());
        }
        std::future::ready(())
    }

    fn untagged_failed(&self, attempt: UntaggedAttempt<'_>) -> impl Future<Output = ()> + Send {
        let _ = attempt.failed(self.clock.now());
        std::future::ready(())
    }
}

impl<C: Clock> SyncLimits for MemoryLimits<C> {
    fn admit_now(&self, admission: &Admission<'_>) -> Verdict {
        self.admit_sync(admission)
    }
}

impl<C: Clock> CreditBalances for MemoryLimits<C> {
    fn set_credits(
        &self,
        account: CreditAccount<'_>,
        remaining: u64,
        refill: Option<Refill>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.set_credits_sync(account, remaining, refill);
        std::future::ready(Ok(()))
    }

    fn add_credits(
        &self,
        account: CreditAccount<'_>,
        amount: u64,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        std::future::ready(Ok(self.add_credits_sync(account, amount)))
    }

    fn credits(
        &self,
        account: CreditAccount<'_>,
    ) -> impl Future<Output = Result<Option<CreditStatus>, StoreError>> + Send {
        std::future::ready(Ok(self.credits_sync(account)))
    }

    fn remove_credits(
        &self,
        account: CreditAccount<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(Ok(self.remove_credits_sync(account)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::limits::{
        CreditCharge, CreditScope, OwnerApi, RateLimitInfo, RateWindow, RefillInterval,
        SpendReceipt,
    };
    use std::sync::atomic::{AtomicU64, Ordering};

    const T0: Timestamp = match Timestamp::checked_from_unix_micros(1_767_225_600_000_000) {
        Some(t) => t,
        None => Timestamp::MIN,
    };

    fn limits() -> (ManualClock, MemoryLimits<ManualClock>) {
        let clock = ManualClock::new(T0);
        (clock.clone(), MemoryLimits::with_clock(clock))
    }

    fn adv(c: &ManualClock, d: Duration) {
        c.advance(d);
    }

    fn q(m: Option<u32>, h: Option<u32>) -> Quota {
        Quota::new(m, h)
    }

    #[test]
    fn burst_of_exactly_limit_then_retry_after() {
        let (clock, rl) = limits();
        let quota = q(Some(10), None);
        for i in 0..10u32 {
            let d = rl.check_sync(1, quota);
            assert!(d.is_admitted(), "request {i}");
            assert_eq!(d.rate_limit().map(|i| i.remaining), Some(9 - i));
        }
        let d = rl.check_sync(1, quota);
        assert_eq!(d.retry_after(), Some(Duration::from_secs(6)));
        assert_eq!(d.retry_after_secs(), Some(6));
        adv(&clock, Duration::from_secs(6) - Duration::from_micros(1));
        assert!(!rl.check_sync(1, quota).is_admitted());
        adv(&clock, Duration::from_micros(1));
        assert!(rl.check_sync(1, quota).is_admitted());
        assert!(!rl.check_sync(1, quota).is_admitted());
    }

    #[test]
    fn refusal_charges_no_window() {
        let (_clock, rl) = limits();
        let quota = q(Some(2), Some(100));
        let _ = rl.check_sync(1, quota);
        let _ = rl.check_sync(1, quota);
        let before = rl.rate_state(1);
        for _ in 0..5 {
            assert!(!rl.check_sync(1, quota).is_admitted());
        }
        assert_eq!(rl.rate_state(1), before);
    }

    #[test]
    fn least_remaining_window_is_reported() {
        let (_clock, rl) = limits();
        let info = rl
            .check_sync(1, q(Some(100), Some(3)))
            .rate_limit()
            .copied();
        assert_eq!(
            info.map(|i| (i.window, i.limit, i.remaining)),
            Some((RateWindow::Hour, 3, 2))
        );
        let info = rl
            .check_sync(2, q(Some(2), Some(1000)))
            .rate_limit()
            .copied();
        assert_eq!(
            info.map(|i| (i.window, i.remaining)),
            Some((RateWindow::Minute, 1))
        );
        assert_eq!(info.map(|i| i.reset_after), Some(Duration::from_secs(30)));
    }

    #[test]
    fn zero_limit_refuses_without_state() {
        let (_clock, rl) = limits();
        let d = rl.check_sync(1, q(Some(0), Some(5)));
        assert!(!d.is_admitted());
        assert_eq!(d.rate_limit().map(|i| i.limit), Some(0));
        assert_eq!(
            d.refused_by(),
            Some(crate::limits::Refuser::Window(RateWindow::Minute))
        );
        assert_eq!(rl.rate_len(), 0);
    }

    #[test]
    fn unlimited_admits_without_state() {
        let (_clock, rl) = limits();
        for _ in 0..1000 {
            assert_eq!(
                rl.check_sync(1, Quota::unlimited()),
                Verdict::Admitted {
                    rate_limit: None,
                    credits: None
                }
            );
        }
        assert_eq!(rl.rate_len(), 0);
    }

    #[test]
    fn clock_going_backwards_never_admits_more() {
        let (clock, rl) = limits();
        let quota = q(Some(3), Some(5));
        let mut admitted = 0;
        for step in 0..40i64 {
            // Alternate big jumps back and small steps forward.
            if step % 3 == 0 {
                clock.rewind(std::time::Duration::from_secs(3_600));
            } else {
                clock.advance(std::time::Duration::from_secs(1));
            }
            for _ in 0..3 {
                if rl.check_sync(1, quota).is_admitted() {
                    admitted += 1;
                }
            }
        }
        // Never more than the burst: the wall time went back more than it
        // went forward, and the state keeps the later time.
        assert!(admitted <= 3, "{admitted}");
        // At the end of the supported range: refused (fail closed).
        clock.set(Timestamp::MAX);
        assert!(!rl.check_sync(2, q(Some(1), Some(1))).is_admitted());
    }

    #[test]
    fn extreme_limits() {
        let (_clock, rl) = limits();
        assert!(
            rl.check_sync(1, q(Some(u32::MAX), Some(u32::MAX)))
                .is_admitted()
        );
        assert!(rl.check_sync(2, q(Some(1), None)).is_admitted());
        assert_eq!(
            rl.check_sync(2, q(Some(1), None)).retry_after(),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn reset_helpers() {
        let info = RateLimitInfo {
            window: RateWindow::Minute,
            limit: 1,
            remaining: 0,
            reset_after: Duration::from_micros(1),
        };
        assert_eq!(info.reset_after_secs(), 1);
        assert_eq!(info.reset_at_unix(i64::MAX), i64::MAX);
        assert_eq!(crate::limits::ceil_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn purge_keeps_decisions() {
        let (clock, rl) = limits();
        let quota = q(Some(2), None);
        let _ = rl.check_sync(1, quota);
        adv(&clock, Duration::from_secs(29));
        assert_eq!(rl.purge_idle(), 0);
        adv(&clock, Duration::from_secs(1));
        assert_eq!(rl.purge_idle(), 1);
        assert_eq!(
            rl.check_sync(1, quota).rate_limit().map(|i| i.remaining),
            Some(1)
        );
    }

    fn spend(
        l: &MemoryLimits<ManualClock>,
        key: u64,
        owner: Option<&str>,
        api: &str,
        cost: u64,
    ) -> Result<SpendReceipt, crate::limits::CreditsExhausted> {
        let charge = CreditCharge::new(cost).owner(owner.map(|owner| OwnerApi { owner, api }));
        match l.admit_sync(&Admission::new(key, Quota::unlimited()).credits(charge)) {
            Verdict::Admitted { credits, .. } => credits.ok_or(crate::limits::CreditsExhausted {
                scope: CreditScope::Key,
                remaining: 0,
                cost,
                refill_in: None,
            }),
            Verdict::CreditsExhausted { exhausted, .. } => Err(exhausted),
            Verdict::RateLimited { .. } => unreachable!("no window"),
        }
    }

    fn key_left(l: &MemoryLimits<ManualClock>, k: u64) -> Option<u64> {
        l.credits_sync(CreditAccount::Key(k)).map(|s| s.remaining)
    }

    fn owner(o: &'static str, api: &'static str) -> CreditAccount<'static> {
        CreditAccount::Owner { owner: o, api }
    }

    #[test]
    fn unmetered_by_default() {
        let (_c, l) = limits();
        let r = spend(&l, 1, Some("o"), "rest", 1_000_000);
        assert_eq!(
            r,
            Ok(SpendReceipt {
                cost: 1_000_000,
                key_remaining: None,
                owner_remaining: None
            })
        );
        assert_eq!(l.credit_counts(), (0, 0));
    }

    #[test]
    fn zero_cost_checks_without_spending() {
        let (_c, l) = limits();
        l.set_credits_sync(CreditAccount::Key(1), 1, None);
        assert_eq!(
            spend(&l, 1, None, "a", 0).map(|r| r.key_remaining),
            Ok(Some(1))
        );
        assert_eq!(key_left(&l, 1), Some(1));
        assert!(spend(&l, 1, None, "a", 1).is_ok());
        let err = spend(&l, 1, None, "a", 0);
        assert_eq!(
            err.map_err(|e| (e.scope, e.cost)),
            Err((CreditScope::Key, 0))
        );
    }

    #[test]
    fn both_or_neither() {
        let (_c, l) = limits();
        l.set_credits_sync(CreditAccount::Key(1), 10, None);
        l.set_credits_sync(owner("o", "rest"), 3, None);
        assert!(spend(&l, 1, Some("o"), "rest", 3).is_ok());
        let e = spend(&l, 1, Some("o"), "rest", 1);
        assert_eq!(e.map_err(|e| e.scope), Err(CreditScope::Owner));
        assert_eq!(key_left(&l, 1), Some(7));
        l.set_credits_sync(owner("o", "rest"), 100, None);
        let e = spend(&l, 1, Some("o"), "rest", 8);
        assert_eq!(
            e.map_err(|e| (e.scope, e.remaining)),
            Err((CreditScope::Key, 7))
        );
        assert_eq!(
            l.credits_sync(owner("o", "rest")).map(|s| s.remaining),
            Some(100)
        );
        // Owner limit is per API.
        assert!(spend(&l, 1, Some("o"), "batch", 7).is_ok());
        assert_eq!(
            l.credits_sync(owner("o", "rest")).map(|s| s.remaining),
            Some(100)
        );
    }

    #[test]
    fn rate_refusal_charges_no_credit_and_credit_refusal_no_window() {
        let (_c, l) = limits();
        l.set_credits_sync(CreditAccount::Key(1), 1, None);
        let a = Admission::new(1, q(Some(2), None)).credits(CreditCharge::new(1));
        assert!(l.admit_sync(&a).is_admitted());
        let before = l.rate_state(1);
        let v = l.admit_sync(&a);
        assert!(matches!(v, Verdict::CreditsExhausted { .. }));
        // The window was not charged: it still shows 1 remaining.
        assert_eq!(v.rate_limit().map(|i| i.remaining), Some(1));
        assert_eq!(l.rate_state(1), before);
        l.set_credits_sync(CreditAccount::Key(1), 5, None);
        assert!(l.admit_sync(&a).is_admitted());
        assert!(matches!(l.admit_sync(&a), Verdict::RateLimited { .. }));
        assert_eq!(key_left(&l, 1), Some(4));
    }

    #[test]
    fn refill_tops_up_on_period_boundaries() {
        let (clock, l) = limits();
        adv(&clock, Duration::from_secs(5));
        let p = Refill::every(10, Duration::from_secs(60));
        l.set_credits_sync(CreditAccount::Key(1), 10, p);
        assert!(spend(&l, 1, None, "a", 10).is_ok());
        let e = spend(&l, 1, None, "a", 1);
        assert_eq!(
            e.map_err(|e| e.refill_in),
            Err(Some(Duration::from_secs(60)))
        );
        adv(&clock, Duration::from_secs(59));
        assert!(spend(&l, 1, None, "a", 1).is_err());
        adv(&clock, Duration::from_secs(1));
        assert_eq!(key_left(&l, 1), Some(10));
        assert!(spend(&l, 1, None, "a", 4).is_ok());
        adv(&clock, Duration::from_secs(60 * 5 + 30));
        let s = l.credits_sync(CreditAccount::Key(1));
        assert_eq!(
            s.map(|s| (s.remaining, s.next_refill_in)),
            Some((10, Some(Duration::from_secs(30))))
        );
        l.set_credits_sync(CreditAccount::Key(1), 50, p);
        adv(&clock, Duration::from_secs(60));
        assert_eq!(key_left(&l, 1), Some(50));
    }

    #[test]
    fn monthly_refill_through_the_bundle() {
        let (clock, l) = limits();
        clock.set("2026-01-31T12:00:00Z".parse::<Timestamp>().unwrap());
        l.set_credits_sync(
            owner("o", "rest"),
            2,
            Some(Refill::new(2, RefillInterval::UtcMonth)),
        );
        assert!(spend(&l, 1, Some("o"), "rest", 2).is_ok());
        let e = spend(&l, 1, Some("o"), "rest", 1);
        assert_eq!(
            e.map_err(|e| e.refill_in),
            Err(Some(Duration::from_secs(12 * 3600)))
        );
        clock.set("2026-02-01T00:00:00Z".parse::<Timestamp>().unwrap());
        assert!(spend(&l, 1, Some("o"), "rest", 2).is_ok());
    }

    #[test]
    fn remove_add_and_reconfigure() {
        let (_c, l) = limits();
        l.set_credits_sync(owner("o", "rest"), 1, None);
        l.set_credits_sync(owner("o", "batch"), 1, None);
        assert_eq!(l.credit_counts(), (0, 2));
        assert!(l.remove_credits_sync(owner("o", "rest")));
        assert!(!l.remove_credits_sync(owner("o", "rest")));
        assert!(l.remove_credits_sync(owner("o", "batch")));
        assert_eq!(l.credit_counts(), (0, 0));
        l.set_credits_sync(CreditAccount::Key(9), 0, None);
        assert!(spend(&l, 9, None, "x", 0).is_err());
        assert_eq!(l.add_credits_sync(CreditAccount::Key(9), 2), Some(2));
        assert_eq!(l.add_credits_sync(CreditAccount::Key(8), 2), None);
        assert_eq!(
            l.add_credits_sync(CreditAccount::Key(9), u64::MAX),
            Some(MAX_CREDITS)
        );
        assert!(l.remove_credits_sync(CreditAccount::Key(9)));
        assert!(spend(&l, 9, None, "x", 0).is_ok());
    }

    #[test]
    fn extreme_values() {
        let (clock, l) = limits();
        l.set_credits_sync(
            CreditAccount::Key(1),
            u64::MAX,
            Refill::every(u64::MAX, Duration::from_micros(1)),
        );
        assert_eq!(key_left(&l, 1), Some(MAX_CREDITS));
        assert!(spend(&l, 1, None, "a", MAX_CREDITS).is_ok());
        assert!(spend(&l, 2, None, "a", u64::MAX).is_ok());
        l.set_credits_sync(CreditAccount::Key(3), MAX_CREDITS, None);
        assert!(spend(&l, 3, None, "a", u64::MAX).is_err());
        clock.set(Timestamp::MAX);
        assert_eq!(key_left(&l, 1), Some(MAX_CREDITS));
        // Reads do not write: back at the start nothing is due.
        clock.set(T0);
        assert_eq!(key_left(&l, 1), Some(0));
    }

    #[test]
    fn concurrent_spends_are_exact() {
        let (_c, l) = limits();
        l.set_credits_sync(CreditAccount::Key(1), 1_000, None);
        l.set_credits_sync(owner("o", "rest"), 1_500, None);
        l.set_credits_sync(CreditAccount::Key(2), 1_000, None);
        let spent = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (l, spent) = (&l, &spent);
                s.spawn(move || {
                    for i in 0..1_000u64 {
                        let key = 1 + (t + i) % 2;
                        let cost = 1 + (t * 7 + i) % 3;
                        if let Ok(r) = spend(l, key, Some("o"), "rest", cost) {
                            spent.fetch_add(r.cost, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let owner_left = l
            .credits_sync(owner("o", "rest"))
            .map_or(0, |s| s.remaining);
        let k1 = key_left(&l, 1).unwrap_or(0);
        let k2 = key_left(&l, 2).unwrap_or(0);
        let total = spent.load(Ordering::Relaxed);
        assert_eq!(total + owner_left, 1_500);
        assert_eq!(total + k1 + k2, 2_000);
    }

    #[test]
    fn display() {
        let e = crate::limits::CreditsExhausted {
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
