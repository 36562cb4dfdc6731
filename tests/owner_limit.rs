//! Issue 9, items 2 and 3: the per-owner key limit cannot be bypassed by
//! reviving expired keys or by rotation grace periods.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use apikey::*;
use std::time::Duration;
use support::{fixture_with, verifier};

fn admin() -> Actor {
    Actor::new("admin")
}

async fn works<S: KeyStoreWrite + UsageStore, C: Clock>(
    m: &KeyManager<S, C>,
    key: &ApiKey,
) -> bool {
    m.authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .is_ok()
}

async fn working<S: KeyStoreWrite + UsageStore, C: Clock>(
    m: &KeyManager<S, C>,
    keys: &[ApiKey],
) -> usize {
    let mut n = 0;
    for k in keys {
        if works(m, k).await {
            n += 1;
        }
    }
    n
}

/// With a limit of 2, expired keys brought back by `update` (expiry
/// cleared or extended) must not give more than 2 working keys.
#[tokio::test]
async fn expired_keys_cannot_be_revived_past_the_owner_limit() {
    {
        let f = fixture_with(verifier(), Arc::new(MemoryStore::new()));
        let m = f.manager.with_max_keys_per_owner(2);
        let mut keys = Vec::new();
        let mut ids = Vec::new();
        // Six keys, each expiring after an hour, created two at a time.
        for _ in 0..3 {
            for _ in 0..2 {
                let (k, s) = m
                    .create(
                        NewKey::new("sk_live_")
                            .owner("o")
                            .expires_at(f.clock.now() + Duration::from_secs(3_600)),
                        &admin(),
                    )
                    .await
                    .unwrap();
                keys.push(k);
                ids.push(s.id);
            }
            f.clock.advance(Duration::from_secs(2 * 3_600));
        }
        assert_eq!(working(&m, &keys).await, 0);
        // Revive: clear the expiry of the first two, extend the others.
        let mut refused = 0;
        for (i, id) in ids.iter().enumerate() {
            let update = if i % 2 == 0 {
                KeyUpdate::new().expires_at(None)
            } else {
                KeyUpdate::new().expires_at(Some(f.clock.now() + Duration::from_secs(365 * 86_400)))
            };
            match m.update(*id, update, &admin()).await {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(
                        (e.code().as_str(), e.http_status()),
                        ("KEY_LIMIT_REACHED", 409)
                    );
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 4);
        assert_eq!(working(&m, &keys).await, 2, "the limit of 2 was bypassed");
        // A write that does not revive is never refused at the limit.
        m.update(ids[0], KeyUpdate::new().name("still fine"), &admin())
            .await
            .unwrap();
        // A refused revival wrote nothing.
        assert!(m.get(ids[5]).await.unwrap().expires_at.unwrap() < f.clock.now());
    }
}

/// The same through a network-like store (latency, yields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_cannot_be_revived_past_the_owner_limit_on_a_networked_store() {
    let store = support::netstore::NetStore::new(std::time::Duration::from_micros(50));
    let f = fixture_with(verifier(), store);
    let m = Arc::new(f.manager.with_max_keys_per_owner(1));
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (_, s) = m
            .create(
                NewKey::new("sk_live_")
                    .owner("o")
                    .expires_at(f.clock.now() + Duration::from_secs(60)),
                &admin(),
            )
            .await
            .unwrap();
        ids.push(s.id);
        f.clock.advance(Duration::from_secs(2 * 60));
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (m, id) = (Arc::clone(&m), *id);
            tokio::spawn(async move {
                m.update(id, KeyUpdate::new().expires_at(None), &admin())
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut revived = 0;
    for t in tasks {
        if t.await.unwrap() {
            revived += 1;
        }
    }
    assert_eq!(revived, 1, "concurrent revivals passed the limit of 1");
}

/// Grace periods are bounded: a 100-year grace is `INVALID_REQUEST`, and
/// the bound is configurable.
#[tokio::test]
async fn grace_longer_than_the_maximum_is_invalid_request() {
    let f = fixture_with(verifier(), Arc::new(MemoryStore::new()));
    let m = f.manager.with_max_keys_per_owner(1);
    let (_, s) = m
        .create(NewKey::new("sk_live_").owner("o"), &admin())
        .await
        .unwrap();
    let err = m
        .rotate(
            s.id,
            Rotation::with_grace(Duration::from_secs(36_525 * 86_400)),
            &admin(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.code().as_str(), err.http_status()),
        ("INVALID_REQUEST", 400)
    );
    let err = m
        .rotate(
            s.id,
            Rotation::with_grace(Rotation::DEFAULT_MAX_GRACE + Duration::from_secs(1)),
            &admin(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "INVALID_REQUEST");
    assert_eq!(Rotation::DEFAULT_MAX_GRACE, Duration::from_secs(7 * 86_400));
    m.rotate(
        s.id,
        Rotation::with_grace(Rotation::DEFAULT_MAX_GRACE),
        &admin(),
    )
    .await
    .unwrap();
    let m = m.with_max_grace(Duration::from_secs(3_600));
    let s2 = m.list("o").await.unwrap().pop().unwrap();
    let err = m
        .rotate(
            s2.id,
            Rotation::with_grace(Duration::from_secs(2 * 3_600)),
            &admin(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "INVALID_REQUEST");
    assert!(err.to_string().contains("maximum (1 hour)"), "{err}");
}

/// With a limit of 1, rotating again and again (each with the longest
/// grace) never leaves more than two working keys: each rotation ends the
/// grace of the key before.
#[tokio::test]
async fn rotation_chain_never_has_more_than_two_working_keys() {
    let f = fixture_with(verifier(), Arc::new(MemoryStore::new()));
    let m = f.manager.with_max_keys_per_owner(1);
    let (key, mut s) = m
        .create(NewKey::new("sk_live_").owner("o"), &admin())
        .await
        .unwrap();
    let mut keys = vec![key];
    for _ in 0..5 {
        f.clock.advance(Duration::from_secs(60));
        let (k, next) = m
            .rotate(
                s.id,
                Rotation::with_grace(Rotation::DEFAULT_MAX_GRACE),
                &admin(),
            )
            .await
            .unwrap();
        keys.push(k);
        s = next;
        assert_eq!(working(&m, &keys).await, 2, "more than two working keys");
    }
    // The newest and its predecessor (in grace) are the two.
    assert!(works(&m, &keys[5]).await && works(&m, &keys[4]).await);
    f.clock.advance(Rotation::DEFAULT_MAX_GRACE);
    assert_eq!(working(&m, &keys).await, 1);
    // Ten years later only the newest works.
    f.clock.advance(Duration::from_secs(3650 * 86_400));
    assert_eq!(working(&m, &keys).await, 1);
}

/// Deleting a key's successor clears the predecessor's link, so a
/// predecessor still in its grace period counts toward the owner limit
/// again. At the limit the delete must not take the owner past it (the
/// predecessor's grace ends instead); below the limit the predecessor keeps
/// working. Found in review of the 0.3 write primitive: before the fix, a
/// limit of 2 gave 3 working keys.
#[tokio::test]
async fn deleting_a_successor_never_revives_its_predecessor_past_the_owner_limit() {
    for (limit, predecessor_works) in [(2, false), (3, true)] {
        let f = fixture_with(verifier(), Arc::new(MemoryStore::new()));
        let m = f.manager.with_max_keys_per_owner(limit);
        let new = || NewKey::new("sk_live_").owner("o");
        let (a, sa) = m.create(new(), &admin()).await.unwrap();
        let (b, sb) = m
            .rotate(
                sa.id,
                Rotation::with_grace(Duration::from_secs(86_400)),
                &admin(),
            )
            .await
            .unwrap();
        let (c, _) = m.create(new(), &admin()).await.unwrap();
        m.revoke(sb.id, "leaked", &admin()).await.unwrap();
        let (d, _) = m.create(new(), &admin()).await.unwrap();
        let all = [a, b, c, d];
        // A (in grace), C and D work; A does not count.
        assert_eq!(working(&m, &all).await, 3);
        m.delete(sb.id, &admin()).await.unwrap();
        let counted = m
            .list("o")
            .await
            .unwrap()
            .iter()
            .filter(|s| {
                let record = m.store().get_sync(s.id).unwrap();
                record.counts_toward_limit(f.clock.now())
            })
            .count();
        assert!(
            counted <= limit as usize,
            "limit {limit}: {counted} keys count"
        );
        assert_eq!(works(&m, &all[0]).await, predecessor_works, "limit {limit}");
        assert_eq!(
            working(&m, &all).await,
            if predecessor_works { 3 } else { 2 }
        );
    }
}
