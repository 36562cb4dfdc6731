//! Issue 20, item 2: expiry notices and auto-renewal, once per key across
//! concurrent sweepers.
#![allow(clippy::unwrap_used)]

// `support` re-exports the network store these tests do not use.
#[allow(unused_imports)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use apikey::*;
use std::time::Duration;
use support::{T0, verifier};

fn admin() -> Actor {
    Actor::new("admin")
}

type M = KeyManager<Arc<MemoryStore>, ManualClock>;

fn manager(store: &Arc<MemoryStore>, clock: &ManualClock) -> (M, Arc<MemoryAuditSink>) {
    let audit = Arc::new(MemoryAuditSink::new());
    let m = KeyManager::with_clock(verifier(), Arc::clone(store), clock.clone())
        .with_audit_sink(Arc::clone(&audit));
    (m, audit)
}

fn count(audit: &MemoryAuditSink, kind: &str) -> usize {
    audit
        .events()
        .iter()
        .filter(|e| e.kind.as_str() == kind)
        .count()
}

#[tokio::test]
async fn expiry_notice_is_sent_once_per_key_and_expiry() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let (m, audit) = manager(&store, &clock);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let opts = SweepOptions::default().notifier(move |n: &ExpiryNotice| {
        assert!(!n.renewed);
        c.fetch_add(1, Ordering::Relaxed);
    });
    let (_, soon) = m
        .create(
            NewKey::new("sk_live_").expires_at(T0 + Duration::from_secs(20 * 86_400)),
            &admin(),
        )
        .await
        .unwrap();
    let (_, later) = m
        .create(
            NewKey::new("sk_live_").expires_at(T0 + Duration::from_secs(45 * 86_400)),
            &admin(),
        )
        .await
        .unwrap();
    m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
    let r = m.sweep_once(&opts).await.unwrap();
    assert_eq!((r.examined, r.notified, r.renewed), (1, 1, 0));
    let r = m.sweep_once(&opts).await.unwrap();
    assert_eq!(r.notified, 0, "a second pass sends nothing again");
    clock.advance(Duration::from_secs(16 * 86_400));
    let r = m.sweep_once(&opts).await.unwrap();
    assert_eq!(r.notified, 1);
    assert_eq!(count(&audit, "expiring"), 2);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    // A new expiry is notified again when it comes near.
    m.update(
        soon.id,
        KeyUpdate::new().expires_at(Some(clock.now() + Duration::from_secs(10 * 86_400))),
        &admin(),
    )
    .await
    .unwrap();
    assert_eq!(m.sweep_once(&opts).await.unwrap().notified, 1);
    let ev = audit
        .events()
        .into_iter()
        .rfind(|e| e.kind.as_str() == "expiring")
        .unwrap();
    assert_eq!(ev.key_id, Some(soon.id));
    assert_ne!(ev.key_id, Some(later.id));
}

#[tokio::test]
async fn auto_renewal_extends_the_same_key_within_the_policy_maximum() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let (m, audit) = manager(&store, &clock);
    let m = m.with_key_policies(KeyPolicies::new().rule(PolicyRule::new(
        PolicyTarget::All,
        KeyPolicy::new().max_lifetime(Duration::from_secs(30 * 86_400)),
    )));
    let (key, s) = m
        .create(
            NewKey::new("sk_live_")
                .expires_at(T0 + Duration::from_secs(3 * 86_400))
                .metadata(KeyRecord::AUTO_RENEW, "true"),
            &admin(),
        )
        .await
        .unwrap();
    let r = m.sweep_once(&SweepOptions::default()).await.unwrap();
    assert_eq!(r.renewed, 1);
    // 90 days asked for, 30 allowed by the policy.
    assert_eq!(
        m.get(s.id).await.unwrap().expires_at,
        Some(T0 + Duration::from_secs(30 * 86_400))
    );
    clock.advance(Duration::from_secs(10 * 86_400));
    m.authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    assert_eq!(count(&audit, "renewed"), 1);
    // Over a year of weekly sweeps the key never stops working.
    for _ in 0..52 {
        clock.advance(Duration::from_secs(7 * 86_400));
        m.sweep_once(&SweepOptions::default()).await.unwrap();
        m.authenticate(key.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap();
    }
    // A key without the mark expires.
    let (plain, _) = m
        .create(
            NewKey::new("sk_live_").expires_at(clock.now() + Duration::from_secs(3 * 86_400)),
            &admin(),
        )
        .await
        .unwrap();
    m.sweep_once(&SweepOptions::default()).await.unwrap();
    clock.advance(Duration::from_secs(4 * 86_400));
    let err = m
        .authenticate(plain.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "EXPIRED_API_KEY");
}

/// A derived key never outlives its parent (verification refuses one that
/// does): renewing an auto-renewing child stops at its parent's expiry, so
/// the sweep never turns a working child into a refused one.
#[tokio::test]
async fn auto_renewal_of_a_derived_key_stops_at_its_parents_expiry() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let (m, _) = manager(&store, &clock);
    let day = Duration::from_secs(86_400);
    let (_, parent) = m
        .create(
            NewKey::new("sk_live_")
                .owner("user_1")
                .expires_at(T0 + 10 * day),
            &admin(),
        )
        .await
        .unwrap();
    let (child_key, child) = m
        .derive(
            parent.id,
            Derivation::new("agent")
                .expires_at(T0 + 3 * day)
                .metadata(KeyRecord::AUTO_RENEW, "true"),
            &admin(),
        )
        .await
        .unwrap();
    m.authenticate(child_key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    let r = m.sweep_once(&SweepOptions::default()).await.unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
    let after = m.get(child.id).await.unwrap().expires_at.unwrap();
    assert!(after <= T0 + 10 * day, "renewed past its parent: {after}");
    m.authenticate(child_key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    // A child already at its parent's expiry is not renewed again.
    let r = m.sweep_once(&SweepOptions::default()).await.unwrap();
    assert_eq!(r.renewed, 0);
    m.authenticate(child_key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_sweepers_notify_and_renew_each_key_once() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let (a, audit_a) = manager(&store, &clock);
    let (b, audit_b) = manager(&store, &clock);
    let mut n_renew = 0;
    for i in 0..400 {
        let mut new =
            NewKey::new("sk_live_").expires_at(T0 + Duration::from_secs((1 + i % 25) * 86_400));
        if i % 2 == 0 {
            new = new.metadata(KeyRecord::AUTO_RENEW, "true");
            if 1 + i % 25 < 7 {
                n_renew += 1;
            }
        }
        a.create(new, &admin()).await.unwrap();
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let opts = SweepOptions::default().notifier(move |_: &ExpiryNotice| {
        c.fetch_add(1, Ordering::Relaxed);
    });
    let (ra, rb) = tokio::join!(
        tokio::spawn({
            let o = opts.clone();
            async move { a.sweep_once(&o).await.unwrap() }
        }),
        tokio::spawn({
            let o = opts.clone();
            async move { b.sweep_once(&o).await.unwrap() }
        }),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.failed.is_empty() && rb.failed.is_empty());
    assert_eq!(ra.renewed + rb.renewed, n_renew);
    assert_eq!(ra.notified + rb.notified, 400 - n_renew);
    let events = |k| count(&audit_a, k) + count(&audit_b, k);
    assert_eq!(events("renewed"), n_renew);
    assert_eq!(events("expiring"), 400 - n_renew);
    assert_eq!(calls.load(Ordering::Relaxed), 400);
}

/// The 100,000-key sweep over `MemoryStore`: two concurrent sweepers,
/// exactly one notice per key; prints time and peak memory. Run with
/// `cargo test --release --test sweep -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn sweep_over_100k_keys_notifies_each_key_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        const N: usize = 100_000;
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(T0);
        let v = verifier();
        for i in 0..N {
            let (_, r) = v
                .issue(
                    NewKey::new("sk_live_")
                        .owner(format!("user_{}", i % 1000))
                        .expires_at(T0 + Duration::from_secs(60 * (1 + (i % 40_000) as u64))),
                    T0,
                )
                .unwrap();
            store.insert_sync(r).unwrap();
        }
        let rss_before = peak_rss_kib();
        let (a, audit_a) = manager(&store, &clock);
        let (b, audit_b) = manager(&store, &clock);
        let started = std::time::Instant::now();
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { a.sweep_once(&SweepOptions::default()).await.unwrap() }),
            tokio::spawn(async move { b.sweep_once(&SweepOptions::default()).await.unwrap() }),
        );
        let elapsed = started.elapsed();
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.notified + rb.notified, N);
        assert_eq!(count(&audit_a, "expiring") + count(&audit_b, "expiring"), N);
        println!(
            "100,000 keys, two concurrent sweepers: {elapsed:?}; notices {} + {}; \
             peak RSS {} KiB (after loading the store: {} KiB)",
            ra.notified,
            rb.notified,
            peak_rss_kib(),
            rss_before
        );
    });
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
