//! Issue 20, item 2 over SQL: two sweepers (two store handles, as two
//! instances) over one SQLite file and one PostgreSQL schema notify and
//! renew each key exactly once.

#![allow(clippy::unwrap_used)]

mod common;

use apikey::Timestamp;
use std::sync::Arc;

use apikey::{
    Actor, Clock, KeyManager, KeyRecord, KeyStoreWrite, Keyring, ManualClock, MemoryAuditSink,
    NewKey, ServerSecret, SweepOptions, UsageStore, Verifier,
};
use apikey_sqlx::{PostgresStore, SqliteStore, StoreOptions};
use std::time::Duration;

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap())
}

async fn two_sweepers_notify_and_renew_once<S>(a: S, b: S)
where
    S: KeyStoreWrite + UsageStore + 'static,
{
    const N: i64 = 120;
    let clock = ManualClock::new("2026-03-01T12:00:00Z".parse::<Timestamp>().unwrap());
    let audit_a = Arc::new(MemoryAuditSink::new());
    let audit_b = Arc::new(MemoryAuditSink::new());
    let ma = KeyManager::with_clock(verifier(), a, clock.clone()).with_audit_sink(audit_a.clone());
    let mb = KeyManager::with_clock(verifier(), b, clock.clone()).with_audit_sink(audit_b.clone());
    let owner = format!("sweep_{}", common::unique("o"));
    let mut renewals = 0;
    for i in 0..N {
        let days = 1 + i % 25;
        let mut new = NewKey::new("sk_live_")
            .owner(owner.clone())
            .expires_at(clock.now() + Duration::from_secs(days as u64 * 86_400));
        if i % 2 == 0 {
            new = new.metadata(KeyRecord::AUTO_RENEW, "true");
            if days < 7 {
                renewals += 1;
            }
        }
        ma.create(new, &Actor::new("t")).await.unwrap();
    }
    let opts = SweepOptions::default();
    let (ra, rb) = tokio::join!(ma.sweep_once(&opts), mb.sweep_once(&opts));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra.failed.is_empty() && rb.failed.is_empty(),
        "{ra:?} {rb:?}"
    );
    let n = usize::try_from(N).unwrap();
    assert_eq!(ra.renewed + rb.renewed, renewals);
    assert_eq!(ra.notified + rb.notified, n - renewals);
    let count = |k: &str| {
        [&audit_a, &audit_b]
            .iter()
            .flat_map(|a| a.events())
            .filter(|e| e.kind.as_str() == k)
            .count()
    };
    assert_eq!(count("renewed"), renewals);
    assert_eq!(count("expiring"), n - renewals);
    // A second round finds nothing left to do.
    let (ra, rb) = tokio::join!(ma.sweep_once(&opts), mb.sweep_once(&opts));
    assert_eq!(ra.unwrap().notified + rb.unwrap().notified, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_sweepers_notify_and_renew_each_key_once() {
    let path = common::temp_dir("sweep").join("keys.db");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    two_sweepers_notify_and_renew_once(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_sweepers_notify_and_renew_each_key_once() {
    let test = "postgres_two_sweepers_notify_and_renew_each_key_once";
    let Some(url) = common::shared(test) else {
        return;
    };
    let options = StoreOptions::default().schema(common::unique("sweep"));
    let a = PostgresStore::connect_with(&url, options.clone())
        .await
        .unwrap();
    let b = PostgresStore::connect_with(&url, options).await.unwrap();
    two_sweepers_notify_and_renew_once(a, b).await;
}

/// Issue 20, item 3 over PostgreSQL: a parent revoked on one instance while
/// the other derives and verifies children concurrently. Once the
/// revocation returned, no child verifies on either instance (no cache in
/// front of the store: the bound is zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_no_child_verifies_after_its_parent_is_revoked_on_another_instance() {
    use apikey::{Derivation, Requirement};
    let test = "postgres_no_child_verifies_after_its_parent_is_revoked_on_another_instance";
    let Some(url) = common::shared(test) else {
        return;
    };
    let options = StoreOptions::default().schema(common::unique("derive"));
    let a = PostgresStore::connect_with(&url, options.clone())
        .await
        .unwrap();
    let b = PostgresStore::connect_with(&url, options).await.unwrap();
    let clock = ManualClock::new("2026-03-01T12:00:00Z".parse::<Timestamp>().unwrap());
    let ma = Arc::new(
        KeyManager::with_clock(verifier(), a, clock.clone()).with_derivation_limits(2, 1000),
    );
    let mb = KeyManager::with_clock(verifier(), b, clock.clone());
    let admin = Actor::new("t");
    let (_, parent) = ma
        .create(
            NewKey::new("sk_live_")
                .owner(common::unique("o"))
                .scopes(["tasks:read"]),
            &admin,
        )
        .await
        .unwrap();
    // Instance A derives children and verifies each, while B revokes.
    let deriver = {
        let ma = Arc::clone(&ma);
        tokio::spawn(async move {
            let mut keys = Vec::new();
            for i in 0..40 {
                match ma
                    .derive(
                        parent.id,
                        Derivation::new(format!("agent {i}")),
                        &Actor::new("t"),
                    )
                    .await
                {
                    Ok((k, _)) => {
                        let _ = ma
                            .authenticate(k.expose_secret(), &Requirement::none(), None)
                            .await;
                        keys.push(k);
                    }
                    Err(e) => assert_eq!(e.code(), "INVALID_STATE", "{e}"),
                }
            }
            keys
        })
    };
    common::sleep_ms(20).await;
    mb.revoke(parent.id, "compromised", &admin).await.unwrap();
    let keys = deriver.await.unwrap();
    for k in &keys {
        for m in [&*ma, &mb] {
            let err = m
                .authenticate(k.expose_secret(), &Requirement::none(), None)
                .await
                .unwrap_err();
            assert_eq!(err.code(), "REVOKED_API_KEY");
        }
    }
}
