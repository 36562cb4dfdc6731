//! The [`KeyManager`]'s rules over a store: planned in the crate, kept by
//! the store's commit (owner guards and revisions).

use std::sync::Arc;

use apikey::{
    Actor, Clock, Derivation, Error, ImportKey, KeyManager, KeyStatus, KeyStoreWrite, KeyUpdate,
    Keyring, ManualClock, NewKey, Rotation, ServerSecret, UsageStore, Verifier,
};
use std::time::Duration;

use super::{join_all, suite_now, unique_owner};

fn manager<S: KeyStoreWrite + UsageStore + 'static>(
    store: Arc<S>,
) -> (KeyManager<Arc<S>, ManualClock>, ManualClock) {
    let clock = ManualClock::new(suite_now());
    (manager_on(store, &clock), clock)
}

fn manager_on<S: KeyStoreWrite + UsageStore + 'static>(
    store: Arc<S>,
    clock: &ManualClock,
) -> KeyManager<Arc<S>, ManualClock> {
    let secret = ServerSecret::from_bytes(&[7; 32]).unwrap_or_else(|e| panic!("secret: {e}"));
    let verifier =
        Verifier::new(Keyring::new(1, secret).unwrap_or_else(|e| panic!("keyring: {e}")));
    KeyManager::with_clock(verifier, store, clock.clone())
}

fn admin() -> Actor {
    Actor::new("conformance")
}

#[track_caller]
fn done<T>(r: Result<T, Error>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("manager rules: {what} failed: {e} ({})", e.code()))
}

/// Runs every rule check below over `store`.
///
/// # Panics
/// When a rule does not hold over the store.
pub async fn run_rules<S: KeyStoreWrite + UsageStore + 'static>(store: Arc<S>) {
    owner_limit_holds_under_concurrency(Arc::clone(&store), 16).await;
    rotation_chain(Arc::clone(&store)).await;
    delete_clears_links(Arc::clone(&store)).await;
    derived_keys_limit_and_cascade(Arc::clone(&store)).await;
    import_is_unique(store).await;
}

/// `n` concurrent creates for one owner at a limit of 3, spread over four
/// managers (service instances) on the store: exactly 3 keys,
/// the others `KEY_LIMIT_REACHED`; an expired key cannot be revived by a
/// new expiry while the owner is at the limit.
///
/// # Panics
/// When the rule does not hold.
pub async fn owner_limit_holds_under_concurrency<S: KeyStoreWrite + UsageStore + 'static>(
    store: Arc<S>,
    n: usize,
) {
    let (m, clock) = manager(store);
    let m = m.with_max_keys_per_owner(3);
    let owner = unique_owner();
    let expiring = done(
        m.create(
            NewKey::new("sk_test_")
                .owner(&owner)
                .expires_at(suite_now() + Duration::from_secs(3_600)),
            &admin(),
        )
        .await,
        "create",
    )
    .1;
    clock.advance(Duration::from_secs(2 * 3_600));
    // Four managers over the store, as four service instances: their plans
    // meet only at the store's owner guard (one manager serializes its own).
    let others: Vec<_> = (0..3)
        .map(|_| manager_on(Arc::clone(m.store()), &clock).with_max_keys_per_owner(3))
        .collect();
    let actor = admin();
    let results = join_all((0..n).map(|i| {
        let m = if i % 4 == 0 { &m } else { &others[i % 4 - 1] };
        m.create(NewKey::new("sk_test_").owner(&owner), &actor)
    }))
    .await;
    let made = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        made, 3,
        "manager rules: {n} concurrent creates at a limit of 3 must make exactly 3 keys"
    );
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            e.code(),
            "KEY_LIMIT_REACHED",
            "manager rules: a create over the limit must be KEY_LIMIT_REACHED"
        );
    }
    let revive = m
        .update(expiring.id, KeyUpdate::new().expires_at(None), &admin())
        .await;
    assert_eq!(
        revive.map(|_| ()).map_err(|e| e.code().as_str()),
        Err("KEY_LIMIT_REACHED"),
        "manager rules: reviving an expired key at the limit must be refused"
    );
    assert_eq!(done(m.list(&owner).await, "list").len(), 4);
}

/// Rotating a key whose predecessor is in its grace period ends that grace
/// at the rotation, in the same commit; links point both ways.
///
/// # Panics
/// When the rule does not hold.
pub async fn rotation_chain<S: KeyStoreWrite + UsageStore + 'static>(store: Arc<S>) {
    let (m, clock) = manager(store);
    let owner = unique_owner();
    let (_, a) = done(
        m.create(NewKey::new("sk_test_").owner(&owner), &admin())
            .await,
        "create",
    );
    let (_, b) = done(
        m.rotate(
            a.id,
            Rotation::with_grace(Duration::from_secs(6 * 3_600)),
            &admin(),
        )
        .await,
        "rotate",
    );
    clock.advance(Duration::from_secs(3_600));
    let (_, c) = done(
        m.rotate(
            b.id,
            Rotation::with_grace(Duration::from_secs(6 * 3_600)),
            &admin(),
        )
        .await,
        "rotate again",
    );
    let a = done(m.record(a.id).await, "record");
    let b = done(m.record(b.id).await, "record");
    let c = done(m.record(c.id).await, "record");
    assert_eq!(
        a.expires_at,
        Some(clock.now()),
        "manager rules: the second rotation must end the first key's grace"
    );
    assert_eq!(
        b.expires_at,
        Some(clock.now() + Duration::from_secs(6 * 3_600))
    );
    assert_eq!(
        (a.rotated_to, b.rotated_from, b.rotated_to, c.rotated_from),
        (Some(b.id), Some(a.id), Some(c.id), Some(b.id)),
        "manager rules: rotation links must point both ways"
    );
}

/// Deleting a key clears the links its predecessor and successor hold to
/// it, in one commit.
///
/// # Panics
/// When the rule does not hold.
pub async fn delete_clears_links<S: KeyStoreWrite + UsageStore + 'static>(store: Arc<S>) {
    let (m, _) = manager(store);
    let owner = unique_owner();
    let (_, a) = done(
        m.create(NewKey::new("sk_test_").owner(&owner), &admin())
            .await,
        "create",
    );
    let (_, b) = done(
        m.rotate(
            a.id,
            Rotation::with_grace(Duration::from_secs(3_600)),
            &admin(),
        )
        .await,
        "rotate",
    );
    let (_, c) = done(
        m.rotate(
            b.id,
            Rotation::with_grace(Duration::from_secs(3_600)),
            &admin(),
        )
        .await,
        "rotate",
    );
    done(m.delete(b.id, &admin()).await, "delete");
    let a = done(m.record(a.id).await, "record");
    let c = done(m.record(c.id).await, "record");
    assert_eq!(
        (a.rotated_to, c.rotated_from),
        (None, None),
        "manager rules: a delete must clear the links to the deleted key"
    );
    assert_eq!(
        m.record(b.id).await.map_err(|e| e.code().as_str()).err(),
        Some("KEY_NOT_FOUND")
    );
}

/// The live-children limit holds under concurrent derivations (through the
/// owner guard), and revoking a parent revokes every descendant, more than
/// one commit's worth included.
///
/// # Panics
/// When the rule does not hold.
pub async fn derived_keys_limit_and_cascade<S: KeyStoreWrite + UsageStore + 'static>(
    store: Arc<S>,
) {
    let (m, _) = manager(store);
    let owner = unique_owner();
    let limited = m.with_derivation_limits(2, 3);
    let (_, p) = done(
        limited
            .create(
                NewKey::new("sk_test_").owner(&owner).scopes(["read"]),
                &admin(),
            )
            .await,
        "create",
    );
    let actor = admin();
    let results =
        join_all((0..8).map(|i| limited.derive(p.id, Derivation::new(format!("c{i}")), &actor)))
            .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        3,
        "manager rules: 8 concurrent derivations at a limit of 3 children must make exactly 3"
    );
    let m = limited.with_derivation_limits(2, 1000);
    let many = apikey::Changes::MAX_ITEMS + 20;
    for i in 0..many {
        done(
            m.derive(p.id, Derivation::new(format!("d{i}")), &admin())
                .await,
            "derive",
        );
    }
    let (_, child) = done(
        m.derive(p.id, Derivation::new("mid"), &admin()).await,
        "derive",
    );
    let (_, grandchild) = done(
        m.derive(child.id, Derivation::new("leaf"), &admin()).await,
        "derive",
    );
    done(m.revoke(p.id, "cascade", &admin()).await, "revoke");
    let all = done(m.list(&owner).await, "list");
    assert_eq!(all.len(), 3 + many + 3);
    assert!(
        all.iter().all(|s| s.status == KeyStatus::Revoked),
        "manager rules: revoking a parent must revoke every descendant ({} left)",
        all.iter()
            .filter(|s| s.status != KeyStatus::Revoked)
            .count()
    );
    assert!(all.iter().any(|s| s.id == grandchild.id));
}

/// A legacy key imported twice is refused the second time (the plan reads
/// the legacy index; the store's uniqueness is the backstop).
///
/// # Panics
/// When the rule does not hold.
pub async fn import_is_unique<S: KeyStoreWrite + UsageStore + 'static>(store: Arc<S>) {
    let (m, _) = manager(store);
    let m = m
        .with_legacy_prefix("cfold_", "sk_test_")
        .unwrap_or_else(|e| panic!("legacy prefix: {e}"));
    let text = format!("cfold_{}", unique_owner());
    done(
        m.import(
            ImportKey::plaintext(text.clone()).owner(unique_owner()),
            &admin(),
        )
        .await,
        "import",
    );
    let again = m
        .import(ImportKey::plaintext(text).owner(unique_owner()), &admin())
        .await;
    assert_eq!(
        again.map(|_| ()).map_err(|e| e.code().as_str()),
        Err("INVALID_STATE"),
        "manager rules: importing one legacy key twice must be refused"
    );
}
