//! Issue 20, item 3: derived keys narrow their parent and never outlive it.
#![allow(clippy::unwrap_used)]

// `support` re-exports the network store these tests do not use.
#[allow(unused_imports)]
mod support;

use std::sync::Arc;

use apikey::*;
use proptest::prelude::*;
use std::time::Duration;
use support::{T0, verifier};

fn admin() -> Actor {
    Actor::new("admin")
}

type M = KeyManager<Arc<MemoryStore>, ManualClock>;

fn manager() -> (M, ManualClock) {
    let clock = ManualClock::new(T0);
    (
        KeyManager::with_clock(verifier(), Arc::new(MemoryStore::new()), clock.clone()),
        clock,
    )
}

/// The code a verification from inside the parent's allowlist fails with.
async fn check(m: &M, key: &ApiKey) -> Option<String> {
    m.authenticate(
        key.expose_secret(),
        &Requirement::none(),
        Some("10.0.0.1".parse().unwrap()),
    )
    .await
    .err()
    .map(|e| e.code().as_str().to_owned())
}

/// A child of `of` named `name`, derived by the admin with nothing narrowed.
async fn derive_child(m: &M, of: KeyId, name: &str) -> (ApiKey, KeySummary) {
    m.derive(of, Derivation::new(name), &admin()).await.unwrap()
}

/// Each of `ids` is revoked, with `reason`.
async fn revoked_with(m: &M, ids: &[KeyId], reason: &str) {
    for id in ids {
        let s = m.get(*id).await.unwrap();
        assert_eq!(s.status, KeyStatus::Revoked, "{s:?}");
        assert_eq!(s.revocation.map(|r| r.reason).as_deref(), Some(reason));
    }
}

async fn parent(m: &M) -> (ApiKey, KeySummary) {
    m.create(
        NewKey::new("sk_live_")
            .owner("user_1")
            .scopes(["tasks:read", "tasks:write"])
            .expires_at(T0 + Duration::from_secs(30 * 86_400))
            .allow_ip("10.0.0.0/8".parse().unwrap()),
        &admin(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn derived_key_cannot_be_broader_than_its_parent() {
    let (m, _) = manager();
    let (_, p) = parent(&m).await;
    let broader = [
        Derivation::new("a").scopes(["admin"]),
        Derivation::new("b").scopes(["tasks:*"]),
        Derivation::new("c").expires_at(T0 + Duration::from_secs(31 * 86_400)),
        Derivation::new("d").ip_allowlist(vec!["0.0.0.0/0".parse().unwrap()]),
        Derivation::new("e").ip_allowlist(vec![]),
    ];
    for d in broader {
        let err = m.derive(p.id, d.clone(), &admin()).await.unwrap_err();
        assert_eq!(err.code(), "POLICY_VIOLATION", "{d:?}");
    }
    let (child, c) = m
        .derive(
            p.id,
            Derivation::new("agent")
                .scopes(["tasks:read"])
                .ip_allowlist(vec!["10.1.0.0/16".parse().unwrap()]),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(c.expires_at, p.expires_at);
    assert_eq!(c.metadata.get(KeyRecord::PARENT), Some(&p.id.to_string()));
    m.authenticate(
        child.expose_secret(),
        &Requirement::scope("tasks:read").unwrap(),
        Some("10.1.2.3".parse().unwrap()),
    )
    .await
    .unwrap();
    let err = m
        .authenticate(
            child.expose_secret(),
            &Requirement::scope("tasks:write").unwrap(),
            Some("10.1.2.3".parse().unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INSUFFICIENT_SCOPE");
}

/// An update that would take a derived key out of its parent is refused
/// (verification would refuse the key from then on), and changes nothing;
/// an update that stays within it passes.
#[tokio::test]
async fn an_update_keeps_a_derived_key_within_its_parent() {
    let (m, _) = manager();
    let (_, p) = parent(&m).await;
    let (child, c) = m
        .derive(
            p.id,
            Derivation::new("agent")
                .scopes(["tasks:read"])
                .ip_allowlist(vec!["10.1.0.0/16".parse().unwrap()]),
            &admin(),
        )
        .await
        .unwrap();
    let wider = [
        KeyUpdate::new().scopes(["admin"]),
        KeyUpdate::new().expires_at(None),
        KeyUpdate::new().expires_at(Some(T0 + Duration::from_secs(31 * 86_400))),
        KeyUpdate::new().ip_allowlist(vec![]),
        KeyUpdate::new().ip_allowlist(vec!["192.168.0.0/16".parse().unwrap()]),
    ];
    for u in wider {
        let err = m.update(c.id, u.clone(), &admin()).await.unwrap_err();
        assert_eq!(err.code(), "POLICY_VIOLATION", "{u:?}");
        assert_eq!(m.get(c.id).await.unwrap(), c, "{u:?} changed the key");
    }
    // Within the parent: accepted, and the key still verifies.
    let narrowed = m
        .update(
            c.id,
            KeyUpdate::new()
                .scopes(["tasks:write"])
                .expires_at(Some(T0 + Duration::from_secs(86_400)))
                .ip_allowlist(vec!["10.1.2.0/24".parse().unwrap()]),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(narrowed.scopes, vec!["tasks:write".to_owned()]);
    m.authenticate(
        child.expose_secret(),
        &Requirement::scope("tasks:write").unwrap(),
        Some("10.1.2.3".parse().unwrap()),
    )
    .await
    .unwrap();
    // A key that is not derived is not bounded by anything but policy.
    m.update(p.id, KeyUpdate::new().expires_at(None), &admin())
        .await
        .unwrap();
}

#[tokio::test]
async fn derived_key_never_verifies_after_its_parent_is_revoked_disabled_expired_or_deleted() {
    // Disabled: refused, and works again once the parent is enabled.
    let (m, clock) = manager();
    let (_, p) = parent(&m).await;
    let (child, _) = derive_child(&m, p.id, "c").await;
    assert_eq!(check(&m, &child).await, None);
    m.disable(p.id, &admin()).await.unwrap();
    assert_eq!(check(&m, &child).await.as_deref(), Some("DISABLED_API_KEY"));
    m.enable(p.id, &admin()).await.unwrap();
    assert_eq!(check(&m, &child).await, None);
    // Revoked: the children are revoked too.
    let (grandchild, g) = {
        let (_, c) = derive_child(&m, p.id, "c2").await;
        m.derive(c.id, Derivation::new("g"), &admin())
            .await
            .unwrap()
    };
    assert_eq!(check(&m, &grandchild).await, None);
    m.revoke(p.id, "gone", &admin()).await.unwrap();
    assert_eq!(check(&m, &child).await.as_deref(), Some("REVOKED_API_KEY"));
    assert_eq!(
        check(&m, &grandchild).await.as_deref(),
        Some("REVOKED_API_KEY")
    );
    assert_eq!(m.get(g.id).await.unwrap().status, KeyStatus::Revoked);
    // Deleted.
    let (_, p) = parent(&m).await;
    let (child, _) = derive_child(&m, p.id, "c").await;
    m.delete(p.id, &admin()).await.unwrap();
    assert_eq!(check(&m, &child).await.as_deref(), Some("REVOKED_API_KEY"));
    // Expired by rotation (the parent's grace ends before the child's expiry).
    let (_, p) = parent(&m).await;
    let (child, _) = derive_child(&m, p.id, "c").await;
    m.rotate(
        p.id,
        Rotation::with_grace(Duration::from_secs(3_600)),
        &admin(),
    )
    .await
    .unwrap();
    clock.advance(Duration::from_secs(2 * 3_600));
    assert_eq!(check(&m, &child).await.as_deref(), Some("EXPIRED_API_KEY"));
    // A parent narrowed after the derivation narrows its child.
    let (_, p) = parent(&m).await;
    let (child, _) = m
        .derive(p.id, Derivation::new("c").scopes(["tasks:write"]), &admin())
        .await
        .unwrap();
    m.update(p.id, KeyUpdate::new().scopes(["tasks:read"]), &admin())
        .await
        .unwrap();
    assert_eq!(check(&m, &child).await.as_deref(), Some("POLICY_VIOLATION"));
    // The pure verifier cannot see the parent: it refuses children.
    let parsed = m.verifier().parse(child.expose_secret()).unwrap();
    let view = m.store().fetch_sync(parsed.id()).unwrap();
    let err = m
        .verifier()
        .verify(
            &parsed,
            view,
            &clock.now(),
            &Requirement::none(),
            Some("10.0.0.1".parse().unwrap()),
        )
        .unwrap_err();
    assert_eq!(err.code(), "POLICY_VIOLATION");
}

#[tokio::test]
async fn derivation_depth_and_live_children_are_limited() {
    let (m, _) = manager();
    let m = m.with_derivation_limits(2, 2);
    let (_, p) = parent(&m).await;
    let (_, c) = derive_child(&m, p.id, "1").await;
    let (_, g) = derive_child(&m, c.id, "2").await;
    let err = m
        .derive(g.id, Derivation::new("3"), &admin())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_STATE");
    m.derive(p.id, Derivation::new("1b"), &admin())
        .await
        .unwrap();
    let err = m
        .derive(p.id, Derivation::new("1c"), &admin())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "KEY_LIMIT_REACHED");
    assert_eq!(m.children(p.id).await.unwrap().len(), 2);
    // A revoked child frees its place.
    m.revoke(c.id, "done", &admin()).await.unwrap();
    m.derive(p.id, Derivation::new("1c"), &admin())
        .await
        .unwrap();
}

#[tokio::test]
async fn parent_link_cannot_be_set_or_removed_by_callers() {
    let (m, _) = manager();
    let (_, p) = parent(&m).await;
    let err = m
        .create(
            NewKey::new("sk_live_").metadata(KeyRecord::PARENT, p.id.to_string()),
            &admin(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_REQUEST");
    let (child, c) = derive_child(&m, p.id, "c").await;
    // Replacing the metadata keeps the link.
    m.update(
        c.id,
        KeyUpdate::new().metadata(Default::default()),
        &admin(),
    )
    .await
    .unwrap();
    m.disable(p.id, &admin()).await.unwrap();
    assert_eq!(check(&m, &child).await.as_deref(), Some("DISABLED_API_KEY"));
}

// ----- property: no sequence yields a child broader than its parent -----

#[derive(Clone, Debug)]
enum Op {
    Derive {
        from: usize,
        scopes: Option<Vec<&'static str>>,
        hours: Option<i64>,
    },
    Update {
        key: usize,
        scopes: Vec<&'static str>,
    },
    Status {
        key: usize,
        what: u8,
    },
    Advance(i64),
}

const SCOPES: [&str; 4] = ["tasks:read", "tasks:write", "tasks:*", "admin"];

fn op() -> impl Strategy<Value = Op> {
    let scopes = proptest::sample::subsequence(SCOPES.to_vec(), 0..3);
    prop_oneof![
        (
            0usize..6,
            proptest::option::of(scopes.clone()),
            proptest::option::of(1i64..800)
        )
            .prop_map(|(from, scopes, hours)| Op::Derive {
                from,
                scopes,
                hours
            }),
        (0usize..6, scopes).prop_map(|(key, scopes)| Op::Update { key, scopes }),
        (0usize..6, 0u8..4).prop_map(|(key, what)| Op::Status { key, what }),
        (1i64..200).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn no_sequence_yields_a_working_child_broader_than_its_parent(ops in proptest::collection::vec(op(), 1..20)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (m, clock) = manager();
            let (k, p) = m
                .create(NewKey::new("sk_live_").owner("u").scopes(["tasks:*"]).expires_at(T0 + Duration::from_secs(20 * 86_400)), &admin())
                .await
                .unwrap();
            let mut keys: Vec<(ApiKey, KeyId)> = vec![(k, p.id)];
            for op in ops {
                match op {
                    Op::Derive { from, scopes, hours } => {
                        if let Some((_, id)) = keys.get(from) {
                            let mut d = Derivation::new("d");
                            if let Some(s) = scopes { d = d.scopes(s); }
                            if let Some(h) = hours { d = d.expires_at(clock.now() + Duration::from_secs(h as u64 * 3_600)); }
                            if let Ok((k, s)) = m.derive(*id, d, &admin()).await { keys.push((k, s.id)); }
                        }
                    }
                    Op::Update { key, scopes } => {
                        if let Some((_, id)) = keys.get(key) {
                            let _ = m.update(*id, KeyUpdate::new().scopes(scopes), &admin()).await;
                        }
                    }
                    Op::Status { key, what } => {
                        if let Some((_, id)) = keys.get(key) {
                            match what {
                                0 => { let _ = m.disable(*id, &admin()).await; }
                                1 => { let _ = m.enable(*id, &admin()).await; }
                                2 => { let _ = m.revoke(*id, "x", &admin()).await; }
                                _ => { let _ = m.delete(*id, &admin()).await; }
                            }
                        }
                    }
                    Op::Advance(h) => clock.advance(Duration::from_secs(h as u64 * 3_600)),
                }
                // Every working child: its parent works and covers it.
                for (k, id) in &keys {
                    if m.authenticate(k.expose_secret(), &Requirement::none(), None).await.is_err() {
                        continue;
                    }
                    let child = m.record(*id).await.unwrap();
                    prop_assert!(child.is_usable_at(clock.now()));
                    let Some(pid) = child.metadata.get(KeyRecord::PARENT) else { continue };
                    let pid: KeyId = pid.parse().unwrap();
                    let parent = m.record(pid).await;
                    prop_assert!(parent.is_ok(), "a working child of a deleted parent");
                    let parent = parent.unwrap();
                    prop_assert!(parent.is_usable_at(clock.now()), "a working child of an unusable parent");
                    prop_assert!(child.scopes.iter().all(|s| parent.scopes.grants(s)), "child broader than parent");
                    let within = match (child.expires_at, parent.expires_at) {
                        (_, None) => true,
                        (Some(c), Some(p)) => c <= p,
                        (None, Some(_)) => false,
                    };
                    prop_assert!(within, "child outlives parent");
                }
            }
            Ok(())
        })?;
    }
}

/// What a derived key pays on the hot path: verifications per second of a
/// key, its child and its grandchild through the authenticator over
/// `MemoryStore` (one fetch per ancestor). Prints only. Run with
/// `cargo test --release --test derived -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn derived_key_verification_cost() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (m, _) = manager();
        let (root, p) = m
            .create(
                NewKey::new("sk_live_").owner("u").scopes(["tasks:read"]),
                &admin(),
            )
            .await
            .unwrap();
        let (child, c) = derive_child(&m, p.id, "c").await;
        let (grandchild, _) = derive_child(&m, c.id, "g").await;
        let auth = m.authenticator();
        let req = Requirement::scope("tasks:read").unwrap();
        const N: u32 = 200_000;
        for round in 0..3 {
            for (name, key) in [
                ("key", &root),
                ("child", &child),
                ("grandchild", &grandchild),
            ] {
                let started = std::time::Instant::now();
                for _ in 0..N {
                    auth.authenticate(key.expose_secret(), &req, None)
                        .await
                        .unwrap();
                }
                println!(
                    "round {round}, {name}: {:?} per verification",
                    started.elapsed() / N
                );
            }
        }
    });
}

/// A credit budget carved from the parent (issue 20): the parent is
/// debited, the child is metered from its first request and runs out at its
/// budget through the gate, an oversized budget writes nothing, and a
/// failed commit gives the credits back.
#[tokio::test]
async fn a_credit_budget_is_carved_from_the_parent() {
    use apikey::limits::{CreditAccount, CreditBalances, MemoryLimits, Quota};
    use apikey::web::{Decision, Gate, QuotaTable, Route};
    let clock = ManualClock::new(T0);
    let m = Arc::new(
        KeyManager::with_clock(verifier(), MemoryStore::new(), clock.clone())
            .with_max_keys_per_owner(3)
            .with_limits(Arc::new(MemoryLimits::with_clock(clock.clone()))),
    );
    let (_, parent) = m
        .create(
            NewKey::new("sk_live_").owner("o").scopes(["tasks:read"]),
            &admin(),
        )
        .await
        .unwrap();
    let limits = m.authenticator().limits();
    let balance = |id: KeyId| async move {
        limits
            .credits(CreditAccount::Key(id.as_u64()))
            .await
            .unwrap()
            .map(|s| s.remaining)
    };
    limits
        .set_credits(CreditAccount::Key(parent.id.as_u64()), 10, None)
        .await
        .unwrap();
    let (child_key, child) = m
        .derive_with_credits(parent.id, Derivation::new("agent"), 3, &admin())
        .await
        .unwrap();
    assert_eq!(
        (balance(parent.id).await, balance(child.id).await),
        (Some(7), Some(3))
    );
    // The child spends its own budget, one credit per request, then 429.
    let gate = Gate::from_manager(&m)
        .with_quotas(QuotaTable::fixed(Quota::unlimited()))
        .with_credits("rest");
    let route = Route::new(Requirement::scope("tasks:read").unwrap()).cost(1);
    let mut admitted = 0;
    for _ in 0..5 {
        let headers = [("x-api-key", child_key.expose_secret())];
        match gate.check(headers, None, None, &route).await {
            Decision::Admitted(_) => admitted += 1,
            Decision::Rejected(r) => assert_eq!(r.to_response().status, 429),
            Decision::NotOurs => panic!("not ours"),
        }
    }
    assert_eq!(admitted, 3);
    assert_eq!(
        balance(parent.id).await,
        Some(7),
        "the child spent its own budget"
    );
    // More than the parent holds: refused, nothing written.
    let err = m
        .derive_with_credits(parent.id, Derivation::new("big"), 8, &admin())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "INVALID_STATE");
    assert_eq!(balance(parent.id).await, Some(7));
    assert_eq!(m.children(parent.id).await.unwrap().len(), 1);
    // A failed commit (the owner limit: 3 keys) gives the credits back.
    m.derive_with_credits(parent.id, Derivation::new("second"), 2, &admin())
        .await
        .unwrap();
    assert_eq!(balance(parent.id).await, Some(5));
    let err = m
        .derive_with_credits(parent.id, Derivation::new("third"), 4, &admin())
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "KEY_LIMIT_REACHED");
    assert_eq!(balance(parent.id).await, Some(5), "refunded");
    // An unmetered parent: the child gets a budget of its own.
    let (_, free) = m
        .create(
            NewKey::new("sk_live_").owner("p").scopes(["tasks:read"]),
            &admin(),
        )
        .await
        .unwrap();
    let (_, c) = m
        .derive_with_credits(free.id, Derivation::new("agent"), 5, &admin())
        .await
        .unwrap();
    assert_eq!(
        (balance(free.id).await, balance(c.id).await),
        (None, Some(5))
    );
}

/// The reviewed hole (a second review): a child derived without a budget,
/// a rotated key's successor and a rotated budgeted child used to start
/// with no key balance of their own, so they spent unmetered. Now each
/// spends from the account it came from (`KeyRecord::limits_account`):
/// nothing is minted by a derivation or a rotation, and the grace period
/// shares one balance between the old and the new key.
#[tokio::test]
async fn derived_and_rotated_keys_spend_from_the_account_they_came_from() {
    use apikey::limits::{CreditAccount, CreditBalances, MemoryLimits, Quota};
    use apikey::web::{Decision, Gate, QuotaTable, Route};
    let clock = ManualClock::new(T0);
    let limits = Arc::new(MemoryLimits::with_clock(clock.clone()));
    let m = Arc::new(
        KeyManager::with_clock(verifier(), MemoryStore::new(), clock.clone())
            .with_limits(Arc::clone(&limits)),
    );
    let gate = Gate::from_manager(&m)
        .with_quotas(QuotaTable::fixed(Quota::unlimited()))
        .with_credits("rest");
    let route = Route::new(Requirement::scope("tasks:read").unwrap()).cost(1);
    let spend = async |key: &ApiKey, n: usize| {
        let mut admitted = 0;
        for _ in 0..n {
            let headers = [("x-api-key", key.expose_secret())];
            match gate.check(headers, None, None, &route).await {
                Decision::Admitted(_) => admitted += 1,
                Decision::Rejected(r) => assert_eq!(r.to_response().status, 429),
                Decision::NotOurs => panic!("not ours"),
            }
        }
        admitted
    };
    let create = async || {
        m.create(
            NewKey::new("sk_live_").owner("o").scopes(["tasks:read"]),
            &admin(),
        )
        .await
        .unwrap()
    };
    let fund = async |id: KeyId, n: u64| {
        limits
            .set_credits(CreditAccount::Key(id.as_u64()), n, None)
            .await
            .unwrap();
    };

    // A child without a budget spends its parent's credits, under its
    // parent's plan (inherited metadata; the crate's entries are not).
    let (parent_key, parent) = create().await;
    m.update(
        parent.id,
        KeyUpdate::new().metadata([("plan".to_owned(), "pro".to_owned())].into()),
        &admin(),
    )
    .await
    .unwrap();
    fund(parent.id, 4).await;
    assert_eq!(spend(&parent_key, 1).await, 1);
    let (child_key, child) = m
        .derive(parent.id, Derivation::new("agent"), &admin())
        .await
        .unwrap();
    let record = m.store().get_sync(child.id).unwrap();
    assert_eq!(record.limits_account(), Some(parent.id));
    assert_eq!(record.metadata.get("plan").map(String::as_str), Some("pro"));
    assert!(
        record.metadata.keys().all(|k| !k.starts_with("apikey.")
            || k == KeyRecord::PARENT
            || k == KeyRecord::LIMITS_OF),
        "{:?}",
        record.metadata
    );
    assert_eq!(
        spend(&child_key, 5).await,
        3,
        "the parent's 3 left, no more"
    );
    assert_eq!(spend(&parent_key, 1).await, 0, "and the parent's are gone");

    // A rotated key's successor keeps the balance; through the grace
    // period both keys spend the one balance.
    let (old_key, old) = create().await;
    fund(old.id, 3).await;
    let (new_key, new) = m
        .rotate(
            old.id,
            Rotation::with_grace(Duration::from_secs(3_600)),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(
        m.store().get_sync(new.id).unwrap().limits_account(),
        Some(old.id)
    );
    assert_eq!(spend(&old_key, 2).await, 2);
    assert_eq!(spend(&new_key, 5).await, 1, "one balance, not two");
    // Rotated again: still the first key's account.
    let (newer_key, _) = m
        .rotate(new.id, Rotation::with_grace(Duration::ZERO), &admin())
        .await
        .unwrap();
    fund(old.id, 2).await;
    assert_eq!(spend(&newer_key, 5).await, 2);

    // A budgeted child, rotated: the successor spends the child's budget.
    let (_, funded) = create().await;
    fund(funded.id, 10).await;
    let (budget_key, budgeted) = m
        .derive_with_credits(funded.id, Derivation::new("agent"), 2, &admin())
        .await
        .unwrap();
    assert_eq!(
        m.store().get_sync(budgeted.id).unwrap().limits_account(),
        Some(budgeted.id),
        "a budget is an account of its own"
    );
    assert_eq!(spend(&budget_key, 1).await, 1);
    let (successor_key, _) = m
        .rotate(budgeted.id, Rotation::with_grace(Duration::ZERO), &admin())
        .await
        .unwrap();
    assert_eq!(spend(&successor_key, 5).await, 1, "the budget's 1 left");

    // Callers cannot name an account: create, import, derive and update.
    let other = parent.id.to_string();
    let err = m
        .create(
            NewKey::new("sk_live_").metadata(KeyRecord::LIMITS_OF, other.clone()),
            &admin(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_REQUEST");
    let err = m
        .derive(
            funded.id,
            Derivation::new("x").metadata(KeyRecord::LIMITS_OF, other.clone()),
            &admin(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_REQUEST");
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert(KeyRecord::LIMITS_OF.to_owned(), other);
    m.update(funded.id, KeyUpdate::new().metadata(metadata), &admin())
        .await
        .unwrap();
    assert_eq!(
        m.store().get_sync(funded.id).unwrap().limits_account(),
        Some(funded.id),
        "an update cannot move a key to another account"
    );
}

/// The second review of the fix above: a budget was carved from the
/// parent's id, not its account, so a rotated successor or a child without
/// a budget (whose own id has no balance) funded a budgeted child from
/// nothing. And a derived key's successor must not outlive its parent.
#[tokio::test]
async fn a_budget_is_carved_from_the_parents_account_and_successors_stay_within_the_parent() {
    use apikey::limits::{CreditAccount, CreditBalances, MemoryLimits};
    let clock = ManualClock::new(T0);
    let limits = Arc::new(MemoryLimits::with_clock(clock.clone()));
    let m = KeyManager::with_clock(verifier(), MemoryStore::new(), clock.clone())
        .with_limits(Arc::clone(&limits));
    let balance = async |id: KeyId| {
        limits
            .credits(CreditAccount::Key(id.as_u64()))
            .await
            .unwrap()
            .map(|s| s.remaining)
    };
    let new = || {
        NewKey::new("sk_live_")
            .owner("o")
            .scopes(["tasks:read"])
            .expires_at(T0 + Duration::from_secs(10 * 86_400))
    };

    // A rotated successor carves from the first key's balance.
    let (_, a) = m.create(new(), &admin()).await.unwrap();
    limits
        .set_credits(CreditAccount::Key(a.id.as_u64()), 2, None)
        .await
        .unwrap();
    let (_, s) = m
        .rotate(a.id, Rotation::with_grace(Duration::ZERO), &admin())
        .await
        .unwrap();
    let err = m
        .derive_with_credits(s.id, Derivation::new("minted"), 1_000, &admin())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_STATE");
    assert_eq!(balance(a.id).await, Some(2), "nothing moved");
    let (_, c) = m
        .derive_with_credits(s.id, Derivation::new("agent"), 1, &admin())
        .await
        .unwrap();
    assert_eq!(
        (balance(a.id).await, balance(c.id).await),
        (Some(1), Some(1))
    );

    // A child without a budget: its budgeted child carves from the top.
    let (_, p) = m.create(new(), &admin()).await.unwrap();
    limits
        .set_credits(CreditAccount::Key(p.id.as_u64()), 2, None)
        .await
        .unwrap();
    let (_, shared) = m
        .derive(p.id, Derivation::new("shared"), &admin())
        .await
        .unwrap();
    assert!(
        m.derive_with_credits(shared.id, Derivation::new("minted"), 1_000, &admin())
            .await
            .is_err()
    );
    let (_, g) = m
        .derive_with_credits(shared.id, Derivation::new("agent"), 2, &admin())
        .await
        .unwrap();
    assert_eq!(
        (balance(p.id).await, balance(g.id).await),
        (Some(0), Some(2))
    );

    // A child rotated halfway through its parent's life: its successor's
    // inherited lifetime stops at the parent's expiry, and it verifies.
    clock.advance(Duration::from_secs(5 * 86_400));
    let (key, succ) = m
        .rotate(shared.id, Rotation::with_grace(Duration::ZERO), &admin())
        .await
        .unwrap();
    assert_eq!(succ.expires_at, Some(T0 + Duration::from_secs(10 * 86_400)));
    m.authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
}

/// Deleting a parent revokes its derived keys, as revoking it does: they
/// never verify again, and a listing (the keys page) must not show them
/// active nor count them toward the owner's limit.
#[tokio::test]
async fn deleting_a_parent_revokes_its_derived_keys() {
    let (m, _) = manager();
    let m = m.with_max_keys_per_owner(3);
    let (_, p) = parent(&m).await;
    let (child, c) = derive_child(&m, p.id, "c").await;
    let (_, g) = derive_child(&m, c.id, "g").await;
    m.delete(p.id, &admin()).await.unwrap();
    assert_eq!(check(&m, &child).await.as_deref(), Some("REVOKED_API_KEY"));
    revoked_with(&m, &[c.id, g.id], "parent key deleted").await;
    // The owner has room for three keys again.
    for _ in 0..3 {
        parent(&m).await;
    }
}

/// Revoking every key created in a window (a leaked database's response)
/// revokes the derived keys made after it too: they never verified without
/// their parent, and listings now say so. Planned from every key the window
/// matches, so running it again after a failure finishes the cascade.
#[tokio::test]
async fn revoking_a_creation_window_revokes_derived_keys_made_after_it() {
    let (m, clock) = manager();
    let (_, p) = parent(&m).await;
    clock.advance(Duration::from_secs(3_600));
    let (child, c) = derive_child(&m, p.id, "c").await;
    let (_, g) = derive_child(&m, c.id, "g").await;
    let (_, other) = parent(&m).await;
    let window = T0..T0 + Duration::from_secs(1);
    let revoked = m
        .revoke_created_between("sk_live_", window.clone(), "database leak", &admin())
        .await
        .unwrap();
    assert_eq!(revoked, [p.id]);
    assert_eq!(check(&m, &child).await.as_deref(), Some("REVOKED_API_KEY"));
    revoked_with(&m, &[c.id, g.id], "parent key revoked").await;
    // A key made after the window without a revoked parent is untouched.
    assert_eq!(m.get(other.id).await.unwrap().status, KeyStatus::Active);
    // Run again: nothing new in the window, and the cascade is complete.
    let again = m
        .revoke_created_between("sk_live_", window, "database leak", &admin())
        .await
        .unwrap();
    assert!(again.is_empty());
}
