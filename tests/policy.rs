//! Issue 20, item 1: issuance policy as data, planned by `KeyManager` and
//! checked by the verifier; the hygiene report.
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

fn manager(
    store: &Arc<MemoryStore>,
    clock: &ManualClock,
    policies: KeyPolicies,
) -> KeyManager<Arc<MemoryStore>, ManualClock> {
    KeyManager::with_clock(verifier(), Arc::clone(store), clock.clone()).with_key_policies(policies)
}

fn live(policy: KeyPolicy) -> KeyPolicies {
    KeyPolicies::new().rule(PolicyRule::new(
        PolicyTarget::Prefix("sk_live_".into()),
        policy,
    ))
}

async fn code_of<S: KeyStoreWrite + UsageStore, C: Clock>(
    m: &KeyManager<S, C>,
    key: &ApiKey,
) -> Option<String> {
    m.authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .err()
        .map(|e| e.code().as_str().to_owned())
}

#[tokio::test]
async fn policy_default_lifetime_is_given_to_keys_created_without_expiry() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let m = manager(
        &store,
        &clock,
        live(KeyPolicy::new().default_lifetime(Duration::from_secs(90 * 86_400))),
    );
    let (_, s) = m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
    assert_eq!(s.expires_at, Some(T0 + Duration::from_secs(90 * 86_400)));
    // Another prefix is not governed.
    let (_, s) = m.create(NewKey::new("sk_test_"), &admin()).await.unwrap();
    assert_eq!(s.expires_at, None);
}

#[tokio::test]
async fn policy_refuses_create_beyond_max_lifetime_or_without_expiry() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let m = manager(
        &store,
        &clock,
        live(
            KeyPolicy::new()
                .max_lifetime(Duration::from_secs(366 * 86_400))
                .expiry_required(true),
        ),
    );
    let err = m
        .create(
            NewKey::new("sk_live_").expires_at(T0 + Duration::from_secs(400 * 86_400)),
            &admin(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "POLICY_VIOLATION");
    assert_eq!(err.http_status(), 403);
    assert!(store.is_empty());
    // Without an expiry, the maximum stands in as the default.
    let (_, s) = m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
    assert_eq!(s.expires_at, Some(T0 + Duration::from_secs(366 * 86_400)));
}

#[tokio::test]
async fn policy_scope_ceiling_refuses_create_and_update() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let m = manager(
        &store,
        &clock,
        live(KeyPolicy::new().scope_ceiling(["tasks:*"]).unwrap()),
    );
    for scopes in [vec!["*"], vec!["tasks:read", "admin"], vec!["tasks"]] {
        let err = m
            .create(NewKey::new("sk_live_").scopes(scopes.clone()), &admin())
            .await
            .unwrap_err();
        assert_eq!(err.code(), "POLICY_VIOLATION", "{scopes:?}");
    }
    let (key, s) = m
        .create(
            NewKey::new("sk_live_").scopes(["tasks:read", "tasks:*"]),
            &admin(),
        )
        .await
        .unwrap();
    let err = m
        .update(s.id, KeyUpdate::new().scopes(["billing:read"]), &admin())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "POLICY_VIOLATION");
    assert_eq!(code_of(&m, &key).await, None);
    assert_eq!(m.get(s.id).await.unwrap().scopes, ["tasks:*", "tasks:read"]);
}

#[tokio::test]
async fn policy_allowed_environments_refuse_other_environments() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let policies = KeyPolicies::new().rule(PolicyRule::new(
        PolicyTarget::OwnerClass("org_".into()),
        KeyPolicy::new().environments([Environment::Live]),
    ));
    let m = manager(&store, &clock, policies);
    let err = m
        .create(NewKey::new("sk_test_").owner("org_1"), &admin())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "POLICY_VIOLATION");
    m.create(NewKey::new("sk_test_").owner("user_1"), &admin())
        .await
        .unwrap();
    m.create(NewKey::new("sk_live_").owner("org_1"), &admin())
        .await
        .unwrap();
}

#[tokio::test]
async fn policy_requiring_approval_holds_new_keys_disabled_until_enabled() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let m = manager(
        &store,
        &clock,
        live(KeyPolicy::new().requires_approval(true)),
    );
    let (key, s) = m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
    assert_eq!(s.status, KeyStatus::Disabled);
    assert_eq!(
        s.metadata
            .get(KeyRecord::PENDING_APPROVAL)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(code_of(&m, &key).await.as_deref(), Some("DISABLED_API_KEY"));
    let s = m.enable(s.id, &admin()).await.unwrap();
    assert!(!s.metadata.contains_key(KeyRecord::PENDING_APPROVAL));
    assert_eq!(code_of(&m, &key).await, None);
    // Rotating an approved key needs no second approval.
    let (next, _) = m
        .rotate(s.id, Rotation::with_grace(Duration::ZERO), &admin())
        .await
        .unwrap();
    assert_eq!(code_of(&m, &next).await, None);
}

#[tokio::test]
async fn tightened_policy_refuses_existing_keys_without_revoking_and_loosening_restores() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let open = manager(&store, &clock, KeyPolicies::new());
    let (forever, f) = open
        .create(NewKey::new("sk_live_").scopes(["*"]), &admin())
        .await
        .unwrap();
    let (long, l) = open
        .create(
            NewKey::new("sk_live_").expires_at(T0 + Duration::from_secs(300 * 86_400)),
            &admin(),
        )
        .await
        .unwrap();
    let (ok, _) = open
        .create(
            NewKey::new("sk_live_").expires_at(T0 + Duration::from_secs(30 * 86_400)),
            &admin(),
        )
        .await
        .unwrap();

    let strict = manager(
        &store,
        &clock,
        live(KeyPolicy::new().max_lifetime(Duration::from_secs(90 * 86_400))),
    );
    assert_eq!(
        code_of(&strict, &forever).await.as_deref(),
        Some("POLICY_VIOLATION")
    );
    assert_eq!(
        code_of(&strict, &long).await.as_deref(),
        Some("POLICY_VIOLATION")
    );
    assert_eq!(code_of(&strict, &ok).await, None);
    // Refused, not revoked.
    assert_eq!(strict.get(f.id).await.unwrap().status, KeyStatus::Active);
    // The gate built from the manager refuses with 403 too (same verifier).
    let err = strict
        .authenticator()
        .authenticate(forever.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 403);
    // Shortening the expiry makes the key comply again.
    strict
        .update(
            l.id,
            KeyUpdate::new().expires_at(Some(T0 + Duration::from_secs(60 * 86_400))),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(code_of(&strict, &long).await, None);
    // Rotation under the policy refuses a successor beyond it.
    let err = strict
        .rotate(
            l.id,
            Rotation::with_grace(Duration::ZERO).expires_at(T0 + Duration::from_secs(200 * 86_400)),
            &admin(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "POLICY_VIOLATION");
    // Loosened: the never-expiring key works again.
    let loose = manager(&store, &clock, KeyPolicies::new());
    assert_eq!(code_of(&loose, &forever).await, None);
}

#[tokio::test]
async fn policy_applies_to_imported_keys() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let m = manager(
        &store,
        &clock,
        live(
            KeyPolicy::new()
                .expiry_required(true)
                .default_lifetime(Duration::from_secs(7 * 86_400))
                .scope_ceiling(["tasks:*"])
                .unwrap(),
        ),
    )
    .with_legacy_prefix("old_", "sk_live_")
    .unwrap();
    let s = m
        .import(ImportKey::plaintext("old_0123456789abcdef"), &admin())
        .await
        .unwrap();
    assert_eq!(s.expires_at, Some(T0 + Duration::from_secs(7 * 86_400)));
    let err = m
        .import(
            ImportKey::plaintext("old_fedcba9876543210").scopes(["admin"]),
            &admin(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "POLICY_VIOLATION");
}

#[tokio::test]
async fn hygiene_report_flags_each_finding() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let open = manager(&store, &clock, KeyPolicies::new());
    let (_, bad) = open
        .create(NewKey::new("sk_live_").owner("u").scopes(["*"]), &admin())
        .await
        .unwrap();
    let (_, good) = open
        .create(
            NewKey::new("sk_live_")
                .owner("u")
                .scopes(["tasks:read"])
                .expires_at(T0 + Duration::from_secs(200 * 86_400))
                .allow_ip("10.0.0.0/8".parse().unwrap()),
            &admin(),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(100 * 86_400));
    let strict = manager(&store, &clock, live(KeyPolicy::new().expiry_required(true)));
    let report = strict
        .hygiene(
            "u",
            &HygieneOptions::default().expiring_within(Duration::from_secs(120 * 86_400)),
        )
        .await
        .unwrap();
    assert_eq!(report.examined, 2);
    let of = |id| {
        report
            .keys
            .iter()
            .find(|k| k.id == id)
            .map(|k| k.findings.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        of(bad.id),
        [
            Finding::NoExpiry,
            Finding::NeverUsed,
            Finding::WildcardScope,
            Finding::NoIpAllowlist,
            Finding::NonCompliant {
                rule: "the key must have an expiry"
            },
        ]
    );
    assert_eq!(
        of(good.id),
        [
            Finding::NeverUsed,
            Finding::ExpiringSoon {
                expires_at: T0 + Duration::from_secs(200 * 86_400)
            }
        ]
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"finding\":\"non_compliant\""));
}

// ----- property: no sequence yields a working key outside its policy -----

#[derive(Clone, Debug)]
enum Op {
    Create {
        scopes: Vec<&'static str>,
        days: Option<i64>,
    },
    Derive {
        from: usize,
        scopes: Option<Vec<&'static str>>,
        days: Option<i64>,
    },
    Import {
        scopes: Vec<&'static str>,
    },
    Update {
        key: usize,
        scopes: Option<Vec<&'static str>>,
        days: Option<i64>,
    },
    Rotate {
        key: usize,
        days: Option<i64>,
    },
    Policy(usize),
    Advance(i64),
}

const SCOPES: [&str; 5] = ["tasks:read", "tasks:*", "billing:read", "*", "admin"];

fn policies(i: usize) -> KeyPolicies {
    match i % 4 {
        0 => KeyPolicies::new(),
        1 => live(KeyPolicy::new().max_lifetime(Duration::from_secs(30 * 86_400))),
        2 => live(KeyPolicy::new().scope_ceiling(["tasks:*"]).unwrap()),
        _ => KeyPolicies::new().rule(PolicyRule::new(
            PolicyTarget::All,
            KeyPolicy::new()
                .expiry_required(true)
                .max_lifetime(Duration::from_secs(90 * 86_400))
                .scope_ceiling(["tasks:*", "billing:read"])
                .unwrap(),
        )),
    }
}

fn op() -> impl Strategy<Value = Op> {
    let scopes = proptest::sample::subsequence(SCOPES.to_vec(), 0..3);
    let days = proptest::option::of(1i64..200);
    prop_oneof![
        (scopes.clone(), days.clone()).prop_map(|(scopes, days)| Op::Create { scopes, days }),
        (
            0usize..8,
            proptest::option::of(scopes.clone()),
            days.clone()
        )
            .prop_map(|(key, scopes, days)| Op::Update { key, scopes, days }),
        (
            0usize..8,
            proptest::option::of(scopes.clone()),
            days.clone()
        )
            .prop_map(|(from, scopes, days)| Op::Derive { from, scopes, days }),
        scopes.clone().prop_map(|scopes| Op::Import { scopes }),
        (0usize..8, days).prop_map(|(key, days)| Op::Rotate { key, days }),
        (0usize..4).prop_map(Op::Policy),
        (1i64..60).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn no_sequence_yields_a_working_key_outside_its_policy_or_a_child_broader_than_its_parent(ops in proptest::collection::vec(op(), 1..24)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let store = Arc::new(MemoryStore::new());
            let clock = ManualClock::new(T0);
            let mut current = 0;
            let pm = |i| manager(&store, &clock, policies(i)).with_legacy_prefix("old_", "sk_live_").unwrap();
            let mut m = pm(current);
            // The presented text (native or imported) and the id.
            let mut keys: Vec<(String, KeyId)> = Vec::new();
            let mut imported = 0u32;
            for op in ops {
                let now = clock.now();
                match op {
                    Op::Create { scopes, days } => {
                        let mut new = NewKey::new("sk_live_").owner("u").scopes(scopes);
                        if let Some(d) = days { new = new.expires_at(now + Duration::from_secs(d as u64 * 86_400)); }
                        if let Ok((k, s)) = m.create(new, &admin()).await { keys.push((k.expose_secret().to_owned(), s.id)); }
                    }
                    Op::Derive { from, scopes, days } => {
                        if let Some((_, id)) = keys.get(from) {
                            let mut d = Derivation::new("d");
                            if let Some(s) = scopes { d = d.scopes(s); }
                            if let Some(n) = days { d = d.expires_at(now + Duration::from_secs(n as u64 * 86_400)); }
                            if let Ok((k, s)) = m.derive(*id, d, &admin()).await { keys.push((k.expose_secret().to_owned(), s.id)); }
                        }
                    }
                    Op::Import { scopes } => {
                        imported += 1;
                        let text = format!("old_{imported:016x}");
                        if let Ok(s) = m.import(ImportKey::plaintext(text.clone()).owner("u").scopes(scopes), &admin()).await {
                            keys.push((text, s.id));
                        }
                    }
                    Op::Update { key, scopes, days } => {
                        if let Some((_, id)) = keys.get(key) {
                            let mut u = KeyUpdate::new();
                            if let Some(s) = scopes { u = u.scopes(s); }
                            if let Some(d) = days { u = u.expires_at(Some(now + Duration::from_secs(d as u64 * 86_400))); }
                            let _ = m.update(*id, u, &admin()).await;
                        }
                    }
                    Op::Rotate { key, days } => {
                        if let Some((_, id)) = keys.get(key) {
                            let mut r = Rotation::with_grace(Duration::ZERO);
                            if let Some(d) = days { r = r.expires_at(now + Duration::from_secs(d as u64 * 86_400)); }
                            if let Ok((k, s)) = m.rotate(*id, r, &admin()).await { keys.push((k.expose_secret().to_owned(), s.id)); }
                        }
                    }
                    Op::Policy(i) => { current = i; m = pm(current); }
                    Op::Advance(d) => clock.advance(Duration::from_secs(d as u64 * 86_400)),
                }
                // At every step: each key that works complies.
                let p = policies(current);
                for (k, id) in &keys {
                    if m.authenticate(k, &Requirement::none(), None).await.is_ok() {
                        let r = m.record(*id).await.unwrap();
                        prop_assert!(p.check(&r, clock.now()).is_ok(), "working key {r:?} outside {p:?}");
                        // A working child is within its (working) parent.
                        if let Some(pid) = r.metadata.get(KeyRecord::PARENT) {
                            let parent = m.record(pid.parse().unwrap()).await.unwrap();
                            prop_assert!(parent.is_usable_at(clock.now()));
                            prop_assert!(r.scopes.iter().all(|s| parent.scopes.grants(s)), "child {r:?} broader than {parent:?}");
                        }
                    }
                }
            }
            Ok(())
        })?;
    }
}
