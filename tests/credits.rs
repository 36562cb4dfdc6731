//! Integration tests for credits in `apikey::limits`, through the public
//! API only (admissions with a credit charge and no window).

use apikey::Timestamp;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apikey::ManualClock;
use apikey::limits::{
    Admission, CreditAccount, CreditCharge, CreditScope, CreditStatus, CreditsExhausted,
    MemoryLimits, OwnerApi, Quota, Refill, RefillInterval, SpendReceipt, Verdict,
};
use proptest::prelude::*;

/// The spend-oriented view of a [`MemoryLimits`] these tests were written
/// against.
struct Ledger(MemoryLimits<ManualClock>);

impl Ledger {
    fn set_key_credits(&self, key: u64, n: u64, refill: Option<Refill>) {
        self.0.set_credits_sync(CreditAccount::Key(key), n, refill);
    }
    fn set_owner_credits(&self, owner: &str, api: &str, n: u64, refill: Option<Refill>) {
        self.0
            .set_credits_sync(CreditAccount::Owner { owner, api }, n, refill);
    }
    fn key_credits(&self, key: u64) -> Option<CreditStatus> {
        self.0.credits_sync(CreditAccount::Key(key))
    }
    fn owner_credits(&self, owner: &str, api: &str) -> Option<CreditStatus> {
        self.0.credits_sync(CreditAccount::Owner { owner, api })
    }
    fn spend(
        &self,
        key: u64,
        owner: Option<&str>,
        api: &str,
        cost: u64,
    ) -> Result<SpendReceipt, CreditsExhausted> {
        let charge = CreditCharge::new(cost).owner(owner.map(|owner| OwnerApi { owner, api }));
        match self
            .0
            .admit_sync(&Admission::new(key, Quota::unlimited()).credits(charge))
        {
            Verdict::Admitted {
                credits: Some(r), ..
            } => Ok(r),
            Verdict::CreditsExhausted { exhausted, .. } => Err(exhausted),
            other => panic!("{other:?}"),
        }
    }
}

struct Clock(ManualClock);

impl Clock {
    fn advance(&self, d: Duration) {
        self.0.advance(d);
    }
}

fn ledger() -> (Clock, Ledger) {
    let clock = ManualClock::new(
        "2026-01-15T10:00:00Z"
            .parse::<Timestamp>()
            .expect("an RFC 3339 time"),
    );
    (
        Clock(clock.clone()),
        Ledger(MemoryLimits::with_clock(clock)),
    )
}

#[test]
fn concurrent_spends_on_one_key_and_owner_spend_exactly_the_balance() {
    let (_clock, l) = ledger();
    l.set_key_credits(1, 10_000, None);
    l.set_owner_credits("acme", "rest", 1_000_000, None);
    let spent = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (l, spent, refused) = (&l, &spent, &refused);
            s.spawn(move || {
                for i in 0..3_000u64 {
                    let cost = 1 + (t + i) % 4;
                    match l.spend(1, Some("acme"), "rest", cost) {
                        Ok(r) => {
                            spent.fetch_add(r.cost, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_eq!(e.scope, CreditScope::Key);
                            assert!(e.remaining < e.cost);
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let key_left = l.key_credits(1).map(|s| s.remaining).unwrap_or(u64::MAX);
    let owner_left = l
        .owner_credits("acme", "rest")
        .map(|s| s.remaining)
        .unwrap_or(u64::MAX);
    let spent = spent.load(Ordering::Relaxed);
    // Costs are 1..=4, so at the end fewer than 4 credits may remain.
    assert!(key_left < 4, "key left {key_left}");
    assert_eq!(spent + key_left, 10_000);
    assert_eq!(spent + owner_left, 1_000_000);
    assert!(refused.load(Ordering::Relaxed) > 0);

    // Unit costs drain exactly to zero.
    l.set_key_credits(2, 5_000, None);
    let ok = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..1_000 {
                    if l.spend(2, None, "rest", 1).is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(ok.load(Ordering::Relaxed), 5_000);
    assert_eq!(l.key_credits(2).map(|s| s.remaining), Some(0));
}

#[test]
fn owner_limit_is_shared_across_keys_and_separate_per_api() {
    let (_clock, l) = ledger();
    // Keys are unmetered; only the owner's per-API limit applies.
    l.set_owner_credits("user-1", "rest", 10_000, None);
    l.set_owner_credits("user-1", "batch", 10_000, None);
    let ok = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (l, ok) = (&l, &ok);
            s.spawn(move || {
                for _ in 0..5_000 {
                    // Two keys of the same owner.
                    if l.spend(100 + t % 2, Some("user-1"), "rest", 1).is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(ok.load(Ordering::Relaxed), 10_000);
    let err = l.spend(100, Some("user-1"), "rest", 1);
    assert_eq!(err.map_err(|e| e.scope), Err(CreditScope::Owner));
    // The batch API limit is untouched.
    assert_eq!(
        l.owner_credits("user-1", "batch").map(|s| s.remaining),
        Some(10_000)
    );
    assert!(l.spend(101, Some("user-1"), "batch", 1).is_ok());
    // Another owner is unaffected.
    assert!(l.spend(100, Some("user-2"), "rest", 1).is_ok());
}

#[test]
fn refused_spend_debits_nothing() {
    let (_clock, l) = ledger();
    l.set_key_credits(1, 5, None);
    l.set_owner_credits("o", "rest", 2, None);
    let err = l.spend(1, Some("o"), "rest", 3);
    assert_eq!(
        err,
        Err(CreditsExhausted {
            scope: CreditScope::Owner,
            remaining: 2,
            cost: 3,
            refill_in: None
        })
    );
    assert_eq!(l.key_credits(1).map(|s| s.remaining), Some(5));
    assert_eq!(l.owner_credits("o", "rest").map(|s| s.remaining), Some(2));
}

#[test]
fn periodic_refill_on_injected_clock() {
    let (clock, l) = ledger();
    let monthly = Refill::every(1_000, Duration::from_secs(30 * 86_400));
    l.set_owner_credits("o", "rest", 1_000, monthly);
    assert!(l.spend(1, Some("o"), "rest", 1_000).is_ok());
    let e = l.spend(1, Some("o"), "rest", 1);
    assert_eq!(
        e.map_err(|e| e.refill_in),
        Err(Some(Duration::from_secs(30 * 86_400)))
    );
    clock.advance(Duration::from_secs(30 * 86_400));
    let r = l.spend(1, Some("o"), "rest", 10);
    assert_eq!(r.map(|r| r.owner_remaining), Ok(Some(990)));
}

#[test]
fn calendar_month_refill_on_injected_clock() {
    let (clock, l) = ledger();
    // 2026-01-15 10:00: the next refill is at 2026-02-01 00:00 UTC.
    l.set_owner_credits(
        "o",
        "rest",
        3,
        Some(Refill::new(1_000, RefillInterval::UtcMonth)),
    );
    assert!(l.spend(1, Some("o"), "rest", 3).is_ok());
    let wait = Duration::from_secs((16 * 24 + 14) * 3600);
    let e = l.spend(1, Some("o"), "rest", 1);
    assert_eq!(e.map_err(|e| e.refill_in), Err(Some(wait)));
    clock.advance(wait - Duration::from_micros(1));
    assert!(l.spend(1, Some("o"), "rest", 1).is_err());
    clock.advance(Duration::from_micros(1));
    assert_eq!(
        l.spend(1, Some("o"), "rest", 1).map(|r| r.owner_remaining),
        Ok(Some(999))
    );
    // February has 28 days in 2026.
    assert_eq!(
        l.owner_credits("o", "rest").and_then(|s| s.next_refill_in),
        Some(Duration::from_secs(28 * 86_400))
    );
}

#[derive(Clone, Debug)]
enum Op {
    SetKey(u64, u64),
    SetOwner(usize, usize, u64),
    Spend(u64, Option<usize>, usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..3, 0u64..20).prop_map(|(k, n)| Op::SetKey(k, n)),
        (0usize..2, 0usize..2, 0u64..20).prop_map(|(o, a, n)| Op::SetOwner(o, a, n)),
        (0u64..3, prop::option::of(0usize..2), 0usize..2, 0u64..5)
            .prop_map(|(k, o, a, c)| Op::Spend(k, o, a, c)),
    ]
}

proptest! {
    /// Random configurations and spends agree with a two-map model: a spend
    /// succeeds iff every metered balance holds max(cost, 1), and then both
    /// are debited by `cost`; otherwise nothing changes.
    #[test]
    fn ledger_matches_model(ops in prop::collection::vec(op(), 1..200)) {
        const OWNERS: [&str; 2] = ["alice", "bob"];
        const APIS: [&str; 2] = ["rest", "batch"];
        let (_clock, l) = ledger();
        let mut keys: HashMap<u64, u64> = HashMap::new();
        let mut owners: HashMap<(usize, usize), u64> = HashMap::new();
        for op in ops {
            match op {
                Op::SetKey(k, n) => {
                    l.set_key_credits(k, n, None);
                    keys.insert(k, n);
                }
                Op::SetOwner(o, a, n) => {
                    l.set_owner_credits(OWNERS[o], APIS[a], n, None);
                    owners.insert((o, a), n);
                }
                Op::Spend(k, o, a, cost) => {
                    let need = cost.max(1);
                    let key_ok = keys.get(&k).is_none_or(|&b| b >= need);
                    let owner_ok = o
                        .and_then(|o| owners.get(&(o, a)))
                        .is_none_or(|&b| b >= need);
                    let r = l.spend(k, o.map(|o| OWNERS[o]), APIS[a], cost);
                    prop_assert_eq!(r.is_ok(), key_ok && owner_ok);
                    if let Err(e) = r {
                        let want = if key_ok { CreditScope::Owner } else { CreditScope::Key };
                        prop_assert_eq!(e.scope, want);
                    } else {
                        if let Some(b) = keys.get_mut(&k) {
                            *b -= cost;
                        }
                        if let Some(b) = o.and_then(|o| owners.get_mut(&(o, a))) {
                            *b -= cost;
                        }
                    }
                }
            }
            for (k, b) in &keys {
                prop_assert_eq!(l.key_credits(*k).map(|s| s.remaining), Some(*b));
            }
            for ((o, a), b) in &owners {
                prop_assert_eq!(
                    l.owner_credits(OWNERS[*o], APIS[*a]).map(|s| s.remaining),
                    Some(*b)
                );
            }
        }
    }
}
