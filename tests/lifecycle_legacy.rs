//! Importing keys from another system: plaintext or SHA-256 digest under a
//! declared legacy prefix, found through the keyed legacy index, upgraded
//! to the current digest on first successful verification.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use apikey::*;
use sha2::{Digest, Sha256};
use support::netstore::NetStore;
use support::{T0, fixture_with, verifier};

const OLD: &str = "oldco_8f14e45fceea167a5a36dedd4bea2543";

fn none() -> Requirement {
    Requirement::none()
}

fn manager<S: KeyStoreWrite + UsageStore + 'static>(store: S) -> support::Fixture<S> {
    let mut f = fixture_with(verifier(), store);
    f.manager = f.manager.with_legacy_prefix("oldco_", "sk_live_").unwrap();
    f
}

#[test]
fn legacy_prefix_configuration_is_checked() {
    let m = || KeyManager::new(verifier(), MemoryStore::new());
    assert!(m().with_legacy_prefix("", "sk_live_").is_err());
    assert!(m().with_legacy_prefix("has space_", "sk_live_").is_err());
    assert!(
        m().with_legacy_prefix("sk_live_old_", "sk_live_").is_err(),
        "starts with a native prefix"
    );
    assert!(
        m().with_legacy_prefix("oldco_", "nope_").is_err(),
        "native prefix not registered"
    );
    assert!(
        m().with_legacy_prefix("oldco_", "sk_live_")
            .unwrap()
            .with_legacy_prefix("oldco_", "sk_test_")
            .is_err()
    );
    assert!(m().with_legacy_prefix("pk-", "sk_test_").is_ok());
}

#[tokio::test]
async fn plaintext_import_verifies_and_is_upgraded() {
    let f = manager(Arc::new(MemoryStore::new()));
    let m = &f.manager;
    let s = m
        .import(
            ImportKey::plaintext(OLD)
                .owner("u1")
                .scopes(["read"])
                .name("from oldco"),
            &Actor::new("migration"),
        )
        .await
        .unwrap();
    assert!(s.legacy);
    assert_eq!(s.display, "oldco_...");
    assert_eq!(s.environment, Environment::Live);
    let rec = m.record(s.id).await.unwrap();
    let json = serde_json::to_string(&rec).unwrap();
    assert!(!json.contains(OLD) && !json.contains(&OLD[6..]));
    let v = m
        .authenticate(OLD, &Requirement::scope("read").unwrap(), None)
        .await
        .unwrap();
    assert_eq!((v.id(), v.owner()), (s.id, Some("u1")));
    assert_eq!(
        m.authenticate(OLD, &Requirement::scope("write").unwrap(), None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "INSUFFICIENT_SCOPE"
    );
    // Wrong legacy keys: one outcome, counted rather than logged each.
    for bad in [
        "oldco_8f14e45fceea167a5a36dedd4bea2544",
        "oldco_x",
        "oldco_",
    ] {
        assert!(
            m.authenticate(bad, &none(), None)
                .await
                .unwrap_err()
                .is_unauthenticated()
        );
    }
    let failed = f
        .audit
        .events()
        .into_iter()
        .filter(|e| matches!(e.kind, AuditKind::VerificationFailed { .. }))
        .count();
    assert_eq!(
        failed, 0,
        "junk under a legacy prefix is counted, and the scope failure of a matched key is an \
         authenticated request: counted too, not one event"
    );
    // Importing the same key twice is refused.
    let before = m.list("u1").await.unwrap();
    assert!(matches!(
        m.import(ImportKey::plaintext(OLD).owner("u1"), &Actor::system())
            .await,
        Err(Error::InvalidState(_))
    ));
    assert_eq!(m.list("u1").await.unwrap(), before);
    // Not under a declared legacy prefix.
    assert!(matches!(
        m.import(ImportKey::plaintext("other_abc"), &Actor::system())
            .await,
        Err(Error::InvalidInput(_))
    ));
    assert!(
        f.audit
            .events()
            .iter()
            .any(|e| e.kind == AuditKind::Imported)
    );
    // Lifecycle applies: disable, then revoke.
    m.disable(s.id, &Actor::system()).await.unwrap();
    assert_eq!(
        m.authenticate(OLD, &none(), None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "DISABLED_API_KEY"
    );
    m.revoke(s.id, "migrated", &Actor::system()).await.unwrap();
    assert_eq!(
        m.authenticate(OLD, &none(), None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "REVOKED_API_KEY"
    );
}

#[tokio::test]
async fn sha256_import_is_upgraded_on_first_success() {
    let f = manager(Arc::new(MemoryStore::new()));
    let m = &f.manager;
    let digest: [u8; 32] = Sha256::digest(OLD.as_bytes()).into();
    let s = m
        .import(
            ImportKey::sha256("oldco_", digest).owner("u2"),
            &Actor::system(),
        )
        .await
        .unwrap();
    let before = m.record(s.id).await.unwrap();
    assert!(!before.legacy.as_ref().unwrap().upgraded);
    assert!(matches!(
        m.import(ImportKey::sha256("nope_", digest), &Actor::system())
            .await,
        Err(Error::InvalidInput(_))
    ));
    m.authenticate(OLD, &none(), None).await.unwrap();
    let after = m.record(s.id).await.unwrap();
    assert!(after.legacy.as_ref().unwrap().upgraded);
    assert_ne!(after.digest, before.digest);
    assert!(
        f.audit
            .events()
            .iter()
            .any(|e| e.kind == AuditKind::LegacyUpgraded && e.key_id == Some(s.id))
    );
    m.authenticate(OLD, &none(), None).await.unwrap();
    assert_eq!(
        m.record(s.id).await.unwrap().revision,
        after.revision,
        "upgraded twice"
    );
}

/// A manager over `store` after a server secret rotation: versions 1 and
/// 2, the second current.
fn after_secret_rotation(
    store: Arc<MemoryStore>,
    clock: &ManualClock,
) -> KeyManager<Arc<MemoryStore>, ManualClock> {
    let mut ring = Keyring::new(1, ServerSecret::from_bytes(&[42; 32]).unwrap()).unwrap();
    ring.add(2, ServerSecret::from_bytes(&[43; 32]).unwrap())
        .unwrap();
    ring.set_current(2).unwrap();
    KeyManager::with_clock(Verifier::new(ring), store, clock.clone())
        .with_legacy_prefix("oldco_", "sk_live_")
        .unwrap()
}

#[tokio::test]
async fn legacy_keys_survive_a_server_secret_rotation() {
    let store = Arc::new(MemoryStore::new());
    let f = manager(store.clone());
    let s = f
        .manager
        .import(ImportKey::plaintext(OLD), &Actor::system())
        .await
        .unwrap();
    let m2 = after_secret_rotation(store, &f.clock);
    m2.authenticate(OLD, &none(), None).await.unwrap();
    let r = m2.record(s.id).await.unwrap();
    assert_eq!(
        (r.secret_version, r.legacy.as_ref().unwrap().index_version),
        (2, 2)
    );
    m2.authenticate(OLD, &none(), None).await.unwrap();
    assert!(
        m2.authenticate("oldco_8f14e45fceea167a5a36dedd4bea2549", &none(), None)
            .await
            .is_err()
    );
}

/// Security review: after a server secret rotation, importing a legacy key
/// again must still be refused. The duplicate check looked up the legacy
/// index under the current version only; a key imported (and revoked)
/// under an older version keeps its old index until it verifies, which a
/// revoked key never does, so a re-run import made a second, active record
/// that verification found first: the revoked key worked again.
#[tokio::test]
async fn reimport_after_a_secret_rotation_does_not_revive_a_revoked_key() {
    let store = Arc::new(MemoryStore::new());
    let f = manager(store.clone());
    let s = f
        .manager
        .import(ImportKey::plaintext(OLD).owner("u1"), &Actor::system())
        .await
        .unwrap();
    f.manager
        .revoke(s.id, "leaked", &Actor::system())
        .await
        .unwrap();
    let m2 = after_secret_rotation(store, &f.clock);
    let digest: [u8; 32] = Sha256::digest(OLD.as_bytes()).into();
    for again in [
        ImportKey::plaintext(OLD).owner("u1"),
        ImportKey::sha256("oldco_", digest).owner("u1"),
    ] {
        assert!(
            matches!(
                m2.import(again, &Actor::system()).await,
                Err(Error::InvalidState(_))
            ),
            "imported a second record for a key held under an older secret version"
        );
    }
    assert_eq!(m2.list("u1").await.unwrap().len(), 1);
    assert_eq!(
        m2.authenticate(OLD, &none(), None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "REVOKED_API_KEY"
    );
}

#[tokio::test]
async fn malformed_strings_with_a_legacy_prefix_reach_the_store_others_do_not() {
    let store = NetStore::new(std::time::Duration::ZERO);
    let f = manager(store.clone());
    let m = &f.manager;
    let (native, _) = m
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    let calls = || store.calls.load(Ordering::SeqCst);
    let c0 = calls();
    assert_eq!(
        m.authenticate("oldco_garbage", &none(), None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "INVALID_API_KEY"
    );
    assert_eq!(
        calls(),
        c0 + 1,
        "a legacy-prefixed string costs one indexed lookup"
    );
    let c1 = calls();
    for junk in ["sk_live_garbage", "garbage", "oldco"] {
        assert_eq!(
            m.authenticate(junk, &none(), None)
                .await
                .unwrap_err()
                .code()
                .as_str(),
            "MALFORMED_API_KEY"
        );
    }
    assert_eq!(
        calls(),
        c1,
        "native and unprefixed junk must not reach the store"
    );
    // Native keys are unaffected by legacy configuration.
    m.authenticate(native.expose_secret(), &none(), None)
        .await
        .unwrap();
    // A failing store is 503 for legacy keys too.
    m.import(ImportKey::plaintext(OLD), &Actor::system())
        .await
        .unwrap();
    store.set_failing(true);
    assert_eq!(
        m.authenticate(OLD, &none(), None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "STORE_UNAVAILABLE"
    );
    store.set_failing(false);
    m.authenticate(OLD, &none(), None).await.unwrap();
    let _ = T0;
}

#[tokio::test]
async fn import_respects_the_owner_limit() {
    let f = manager(Arc::new(MemoryStore::new()));
    let m = f.manager.with_max_keys_per_owner(1);
    m.create(NewKey::new("sk_live_").owner("u"), &Actor::system())
        .await
        .unwrap();
    assert!(matches!(
        m.import(ImportKey::plaintext(OLD).owner("u"), &Actor::system())
            .await,
        Err(Error::KeyLimitReached { limit: 1 })
    ));
    assert_eq!(m.list("u").await.unwrap().len(), 1);
}
