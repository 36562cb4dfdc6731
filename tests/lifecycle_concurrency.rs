//! Concurrency: the owner limit under parallel creates, revoke racing
//! verifications, and exact usage counts under parallel load. No timing
//! assertions: ordering comes from atomics, time from the manual clock.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use apikey::*;
use support::netstore::NetStore;
use support::{T0, fixture, fixture_with, verifier};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn parallel_creates_for_one_owner_never_pass_the_limit() {
    let f = fixture();
    let m = f.manager.with_max_keys_per_owner(3);
    for round in 0..20 {
        let owner = format!("owner-{round}");
        let ok = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..4 {
                        match block_on(m.create(
                            NewKey::new("sk_live_").owner(owner.as_str()),
                            &Actor::system(),
                        )) {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(Error::KeyLimitReached { limit: 3 }) => {}
                            Err(e) => panic!("unexpected error {e}"),
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::Relaxed), 3, "round {round}");
        assert_eq!(block_on(m.list(&owner)).unwrap().len(), 3, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_on_a_network_store_never_pass_the_limit() {
    let store = NetStore::new(std::time::Duration::from_micros(100));
    let f = fixture_with(verifier(), store);
    let m = Arc::new(f.manager.with_max_keys_per_owner(3));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.create(NewKey::new("sk_live_").owner("o"), &Actor::system())
                .await
                .is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 3);
    assert_eq!(m.list("o").await.unwrap().len(), 3);
}

/// Every verification that starts after `revoke` (or `disable`) returned
/// sees it.
#[test]
fn revoke_and_disable_are_seen_by_every_later_verification() {
    for op in ["revoke", "disable"] {
        let f = fixture();
        let m = &f.manager;
        let (key, s) = block_on(m.create(NewKey::new("sk_live_"), &Actor::system())).unwrap();
        let done = AtomicBool::new(false);
        let started = AtomicUsize::new(0);
        let after = AtomicUsize::new(0);
        let expected = if op == "revoke" {
            "REVOKED_API_KEY"
        } else {
            "DISABLED_API_KEY"
        };
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    loop {
                        let was_done = done.load(Ordering::SeqCst);
                        let r = rt.block_on(m.authenticate(
                            key.expose_secret(),
                            &Requirement::none(),
                            None,
                        ));
                        started.fetch_add(1, Ordering::SeqCst);
                        let code = r.as_ref().map_or_else(|e| e.code().as_str(), |_| "OK");
                        if was_done {
                            assert_eq!(
                                code, expected,
                                "a verification that started after {op} returned missed it"
                            );
                            if after.fetch_add(1, Ordering::SeqCst) >= 2000 {
                                break;
                            }
                        } else {
                            assert!(code == "OK" || code == expected, "{code}");
                        }
                    }
                });
            }
            while started.load(Ordering::SeqCst) < 500 {
                std::thread::yield_now();
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            if op == "revoke" {
                rt.block_on(m.revoke(s.id, "race", &Actor::system()))
                    .unwrap();
            } else {
                rt.block_on(m.disable(s.id, &Actor::system())).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        assert!(after.load(Ordering::SeqCst) > 2000);
    }
}

#[test]
fn usage_counts_add_up_exactly_under_parallel_load() {
    // A flusher thread flushes concurrently with recording.
    let f = fixture();
    let m = f.manager;
    let (k1, s1) = block_on(m.create(NewKey::new("sk_live_"), &Actor::system())).unwrap();
    let (k2, s2) = block_on(m.create(NewKey::new("sk_live_"), &Actor::system())).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let (m2, done2) = (&m, &done);
        sc.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            // Bounded: the workers finish in well under 100,000 flushes.
            for _ in 0..100_000 {
                rt.block_on(m2.flush()).unwrap();
                if done2.load(Ordering::SeqCst) {
                    break;
                }
            }
        });
        let mut workers = Vec::new();
        for t in 0..4 {
            let (m, k1, k2) = (&m, &k1, &k2);
            workers.push(sc.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                for i in 0..2500 {
                    let key = if (i + t) % 5 == 0 { k2 } else { k1 };
                    rt.block_on(m.authenticate(key.expose_secret(), &Requirement::none(), None))
                        .unwrap();
                }
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
    });
    block_on(m.flush()).unwrap();
    assert_eq!(m.usage().pending(), 0);
    let r1 = block_on(m.record(s1.id)).unwrap();
    let (u1, u2) = (
        block_on(m.usage_of(s1.id)).unwrap(),
        block_on(m.usage_of(s2.id)).unwrap(),
    );
    assert_eq!(u1.today + u2.today, 10_000);
    assert_eq!(u2.today, 2_000);
    assert_eq!(u1.this_month, 8_000);
    assert_eq!(r1.last_used_at, Some(T0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_survive_failed_flushes_under_load() {
    let store = NetStore::new(std::time::Duration::ZERO);
    let f = fixture_with(verifier(), store.clone());
    let m = Arc::new(f.manager);
    let (key, s) = m
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    let key = Arc::new(key.expose_secret().to_owned());
    // A flusher task: flushes fail while the store does, and keep their counts.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (m, stop) = (m.clone(), stop.clone());
        tokio::spawn(async move {
            for _ in 0..100_000 {
                let _ = m.flush().await;
                tokio::task::yield_now().await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (m, key, store) = (m.clone(), key.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for i in 0..500 {
                // Every few calls, flip the store into failure and back:
                // verifications then fail (503) and flushes fail too.
                if t == 0 && i % 50 == 0 {
                    store.set_failing(i % 100 == 0);
                }
                if m.authenticate(&key, &Requirement::none(), None)
                    .await
                    .is_ok()
                {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    flusher.await.unwrap();
    store.set_failing(false);
    m.shutdown().await.unwrap();
    assert!(ok > 0);
    assert_eq!(
        m.usage_of(s.id).await.unwrap().today,
        ok,
        "usage lost or doubled"
    );
}

#[test]
fn concurrent_rotations_of_one_key_make_one_successor() {
    for _ in 0..20 {
        let f = fixture();
        let m = &f.manager;
        let (_, s) =
            block_on(m.create(NewKey::new("sk_live_").owner("o"), &Actor::system())).unwrap();
        let ok = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    match block_on(m.rotate(
                        s.id,
                        Rotation::with_grace(std::time::Duration::from_secs(3_600)),
                        &Actor::system(),
                    )) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::InvalidState(_)) => {}
                        Err(e) => panic!("unexpected {e}"),
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::SeqCst), 1);
        assert_eq!(block_on(m.list("o")).unwrap().len(), 2);
    }
}

#[test]
fn concurrent_patches_of_different_fields_both_apply() {
    for _ in 0..20 {
        let f = fixture();
        let m = &f.manager;
        let (_, s) = block_on(m.create(NewKey::new("sk_live_"), &Actor::system())).unwrap();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                block_on(m.update(s.id, KeyUpdate::new().name("renamed"), &Actor::system()))
                    .unwrap()
            });
            sc.spawn(|| {
                block_on(m.update(s.id, KeyUpdate::new().scopes(["read"]), &Actor::system()))
                    .unwrap()
            });
            sc.spawn(|| block_on(m.disable(s.id, &Actor::system())).unwrap());
        });
        let g = block_on(m.get(s.id)).unwrap();
        assert_eq!(
            (g.name.as_str(), g.scopes.clone(), g.status),
            ("renamed", vec!["read".to_owned()], KeyStatus::Disabled)
        );
    }
}

/// One manager's concurrent creates on one owner (owner limit set) pass its
/// per-owner gate one at a time, so none of its commits conflicts: the
/// first create reads the owner's listing (one page), and each create is one
/// commit, planned on the owner count the manager's last commit left.
/// Without the gate, 16 tasks
/// re-planned each other's conflicts over a network store and some failed
/// with `STORE_UNAVAILABLE` once the retries ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_managers_concurrent_creates_on_one_owner_never_conflict() {
    let store = NetStore::new(std::time::Duration::from_micros(100));
    let f = fixture_with(verifier(), store.clone());
    let m = Arc::new(f.manager.with_max_keys_per_owner(1000));
    let before = store.calls.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                for _ in 0..4 {
                    m.create(NewKey::new("sk_live_").owner("org"), &Actor::system())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        store.calls.load(Ordering::SeqCst) - before,
        1 + 64,
        "a create re-planned after a conflict"
    );
    assert_eq!(m.list("org").await.unwrap().len(), 64);
}
