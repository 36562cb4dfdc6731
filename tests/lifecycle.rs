//! Key lifecycle: create, list, update, disable/enable, revoke, delete,
//! bulk revoke, rotate, owner limit, expiring-soon, IP allowlist,
//! environments. Every time rule runs on the manual clock.

#![allow(clippy::unwrap_used)]

mod support;

use apikey_testkit::VerifyExt;
use std::net::IpAddr;
use std::sync::Arc;

use apikey::*;
use std::time::Duration;
use support::{T0, fixture, fixture_with, verifier};

fn admin() -> Actor {
    Actor::new("admin_1")
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

async fn code<S: KeyStoreWrite + UsageStore>(
    m: &KeyManager<S, ManualClock>,
    key: &ApiKey,
) -> &'static str {
    match m
        .authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
    {
        Ok(_) => "OK",
        Err(e) => e.code().as_str(),
    }
}

#[tokio::test]
async fn create_shows_the_key_once_and_lists_display_forms_only() {
    let f = fixture();
    let m = &f.manager;
    let (key, summary) = m
        .create(
            NewKey::new("kwi_sk_")
                .owner("user_1")
                .name("Python scripts")
                .description("nightly jobs")
                .scopes(["tasks:read"])
                .metadata("team", "seo")
                .expires_at(T0 + Duration::from_secs(90 * 86_400)),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(summary.id, key.id());
    assert_eq!(summary.display, key.display_form());
    assert!(summary.display.starts_with("kwi_sk_") && summary.display.ends_with("..."));
    assert_eq!(summary.state, KeyState::Active);
    let listed = m.list("user_1").await.unwrap();
    assert_eq!(listed, vec![summary.clone()]);
    let json = serde_json::to_string(&listed).unwrap();
    let record = m.record(key.id()).await.unwrap();
    assert!(!json.contains(key.expose_secret()));
    assert!(!json.contains(&record.digest.to_base64()));
    assert!(!json.contains("digest"));
    assert!(json.contains("\"display\":\"kwi_sk_"));
    assert!(m.list("nobody").await.unwrap().is_empty());
    assert!(matches!(
        m.get(KeyId::from_u64(1)).await,
        Err(Error::KeyNotFound)
    ));
    assert_eq!(code(m, &key).await, "OK");
}

#[tokio::test]
async fn update_is_a_patch_and_failed_updates_change_nothing() {
    let f = fixture();
    let m = &f.manager;
    let (key, s) = m
        .create(
            NewKey::new("sk_live_")
                .owner("u")
                .name("a")
                .scopes(["read"])
                .metadata("k", "v"),
            &admin(),
        )
        .await
        .unwrap();
    let write = Requirement::scope("write").unwrap();
    assert_eq!(
        m.authenticate(key.expose_secret(), &write, None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "INSUFFICIENT_SCOPE"
    );
    let updated = m
        .update(s.id, KeyUpdate::new().scopes(["read", "write"]), &admin())
        .await
        .unwrap();
    assert_eq!(updated.scopes, vec!["read", "write"]);
    assert_eq!(updated.name, "a");
    assert_eq!(updated.metadata.get("k").map(String::as_str), Some("v"));
    m.authenticate(key.expose_secret(), &write, None)
        .await
        .unwrap();

    let before = m.record(s.id).await.unwrap();
    for bad in [
        KeyUpdate::new().name("zzz").scopes(["Bad Scope"]),
        KeyUpdate::new().name("zzz").expires_at(Some(T0)),
        KeyUpdate::new()
            .name("zzz")
            .expires_at(Some(T0 - Duration::from_secs(86_400))),
    ] {
        assert!(m.update(s.id, bad, &admin()).await.is_err());
        assert_eq!(
            m.record(s.id).await.unwrap(),
            before,
            "a failed update changed the record"
        );
    }
    // Extend, then shorten expiry; clear it.
    let s2 = m
        .update(
            s.id,
            KeyUpdate::new().expires_at(Some(T0 + Duration::from_secs(10 * 86_400))),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(s2.expires_at, Some(T0 + Duration::from_secs(10 * 86_400)));
    let s3 = m
        .update(
            s.id,
            KeyUpdate::new().expires_at(Some(T0 + Duration::from_secs(86_400))),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(s3.expires_at, Some(T0 + Duration::from_secs(86_400)));
    let s4 = m
        .update(
            s.id,
            KeyUpdate::new()
                .expires_at(None)
                .description(Some("d".into())),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(
        (s4.expires_at, s4.description.as_deref()),
        (None, Some("d"))
    );
    // A no-op patch writes nothing.
    let rev = m.record(s.id).await.unwrap().revision;
    m.update(s.id, KeyUpdate::new().name("a"), &admin())
        .await
        .unwrap();
    assert_eq!(m.record(s.id).await.unwrap().revision, rev);

    m.revoke(s.id, "gone", &admin()).await.unwrap();
    let revoked = m.record(s.id).await.unwrap();
    assert!(matches!(
        m.update(s.id, KeyUpdate::new().name("x"), &admin()).await,
        Err(Error::InvalidState(_))
    ));
    assert_eq!(m.record(s.id).await.unwrap(), revoked);
    assert!(matches!(
        m.update(KeyId::from_u64(7), KeyUpdate::new().name("x"), &admin())
            .await,
        Err(Error::KeyNotFound)
    ));
}

#[tokio::test]
async fn disable_enable_revoke_take_effect_at_once() {
    let f = fixture();
    let m = &f.manager;
    let (key, s) = m
        .create(NewKey::new("sk_live_").owner("u"), &admin())
        .await
        .unwrap();
    assert_eq!(
        m.disable(s.id, &admin()).await.unwrap().state,
        KeyState::Disabled
    );
    assert_eq!(code(m, &key).await, "DISABLED_API_KEY");
    m.disable(s.id, &admin()).await.unwrap(); // idempotent
    assert_eq!(
        m.enable(s.id, &admin()).await.unwrap().state,
        KeyState::Active
    );
    assert_eq!(code(m, &key).await, "OK");

    f.clock.advance(Duration::from_secs(5 * 60));
    let r = m
        .revoke(s.id, "leaked in a public repo", &admin())
        .await
        .unwrap();
    assert_eq!(r.state, KeyState::Revoked);
    let rev = r.revocation.clone().unwrap();
    assert_eq!(
        (rev.at, rev.reason.as_str()),
        (T0 + Duration::from_secs(5 * 60), "leaked in a public repo")
    );
    assert_eq!(code(m, &key).await, "REVOKED_API_KEY");
    // Revocation is permanent; a second revoke keeps the first.
    let before = m.record(s.id).await.unwrap();
    assert!(matches!(
        m.enable(s.id, &admin()).await,
        Err(Error::InvalidState(_))
    ));
    assert!(matches!(
        m.disable(s.id, &admin()).await,
        Err(Error::InvalidState(_))
    ));
    f.clock.advance(Duration::from_secs(60));
    m.revoke(s.id, "again", &admin()).await.unwrap();
    assert_eq!(m.record(s.id).await.unwrap(), before);
    assert_eq!(Error::InvalidState("x").http_status(), 409);

    let kinds: Vec<&str> = f.audit.events().iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "revoked").count(), 1);
    assert!(
        kinds.contains(&"disabled") && kinds.contains(&"enabled") && kinds.contains(&"created")
    );
}

#[tokio::test]
async fn delete_clears_the_successor_link() {
    let f = fixture();
    let m = &f.manager;
    let (_, s) = m
        .create(NewKey::new("sk_live_").owner("u"), &admin())
        .await
        .unwrap();
    let (new_key, succ) = m
        .rotate(
            s.id,
            Rotation::with_grace(Duration::from_secs(3_600)),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(succ.rotated_from, Some(s.id));
    assert_eq!(m.get(s.id).await.unwrap().rotated_to, Some(succ.id));
    m.delete(s.id, &admin()).await.unwrap();
    assert!(matches!(m.get(s.id).await, Err(Error::KeyNotFound)));
    assert!(matches!(
        m.delete(s.id, &admin()).await,
        Err(Error::KeyNotFound)
    ));
    assert_eq!(m.get(succ.id).await.unwrap().rotated_from, None);
    assert_eq!(code(m, &new_key).await, "OK");
}

#[tokio::test]
async fn revoke_all_of_an_owner_and_by_prefix_window() {
    let f = fixture();
    let m = &f.manager;
    let mut alice = Vec::new();
    for _ in 0..3 {
        alice.push(
            m.create(NewKey::new("sk_live_").owner("alice"), &admin())
                .await
                .unwrap()
                .0,
        );
    }
    let (bob, _) = m
        .create(NewKey::new("sk_live_").owner("bob"), &admin())
        .await
        .unwrap();
    let ids = m
        .revoke_owner("alice", "removed from account", &admin())
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    for k in &alice {
        assert_eq!(code(m, k).await, "REVOKED_API_KEY");
    }
    assert_eq!(code(m, &bob).await, "OK");

    // Bulk revoke by prefix and creation window [T0+1h, T0+2h).
    f.clock.set(T0 + Duration::from_secs(3_600));
    let (in1, _) = m.create(NewKey::new("sk_test_"), &admin()).await.unwrap();
    f.clock
        .set(T0 + Duration::from_secs(2 * 3_600) - Duration::from_nanos(1));
    let (in2, _) = m
        .create(NewKey::new("sk_test_").owner("carol"), &admin())
        .await
        .unwrap();
    f.clock.set(T0 + Duration::from_secs(2 * 3_600));
    let (out_time, _) = m.create(NewKey::new("sk_test_"), &admin()).await.unwrap();
    let (out_prefix, _) = m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
    let revoked = m
        .revoke_created_between(
            "sk_test_",
            T0 + Duration::from_secs(3_600)..T0 + Duration::from_secs(2 * 3_600),
            "db leak",
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(revoked, vec![in1.id(), in2.id()]);
    assert_eq!(code(m, &in1).await, "REVOKED_API_KEY");
    assert_eq!(code(m, &in2).await, "REVOKED_API_KEY");
    assert_eq!(code(m, &out_time).await, "OK");
    assert_eq!(code(m, &out_prefix).await, "OK");
    assert!(matches!(
        m.revoke_created_between("BAD", T0..T0, "x", &admin()).await,
        Err(Error::InvalidPrefix { .. })
    ));
}

#[tokio::test]
async fn rotation_grace_ends_exactly_and_never_past_own_expiry() {
    let f = fixture();
    let m = &f.manager;
    let (old, s) = m
        .create(
            NewKey::new("sk_live_")
                .owner("u")
                .scopes(["read"])
                .metadata("a", "b"),
            &admin(),
        )
        .await
        .unwrap();
    let (new, succ) = m
        .rotate(
            s.id,
            Rotation::with_grace(Duration::from_secs(24 * 3_600)),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(
        (succ.owner.as_deref(), succ.scopes.clone()),
        (Some("u"), vec!["read".to_owned()])
    );
    assert_eq!(succ.metadata.get("a").map(String::as_str), Some("b"));
    let pred = m.get(s.id).await.unwrap();
    assert_eq!(
        (pred.rotated_to, succ.rotated_from),
        (Some(succ.id), Some(s.id))
    );
    assert_eq!(pred.state, KeyState::RotationGrace);
    assert_eq!(pred.expires_at, Some(T0 + Duration::from_secs(24 * 3_600)));

    f.clock
        .set(T0 + Duration::from_secs(24 * 3_600) - Duration::from_nanos(1));
    assert_eq!(code(m, &old).await, "OK");
    f.clock.set(T0 + Duration::from_secs(24 * 3_600));
    assert_eq!(code(m, &old).await, "EXPIRED_API_KEY");
    assert_eq!(code(m, &new).await, "OK");
    // Expired keys cannot be rotated; rotated keys cannot be rotated again.
    let before = m.record(s.id).await.unwrap();
    assert!(matches!(
        m.rotate(s.id, Rotation::default(), &admin()).await,
        Err(Error::InvalidState(_))
    ));
    assert_eq!(m.record(s.id).await.unwrap(), before);
    let (_, s2) = m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
    m.rotate(
        s2.id,
        Rotation::with_grace(Duration::from_secs(3_600)),
        &admin(),
    )
    .await
    .unwrap();
    assert!(matches!(
        m.rotate(
            s2.id,
            Rotation::with_grace(Duration::from_secs(3_600)),
            &admin()
        )
        .await,
        Err(Error::InvalidState(_))
    ));

    // Grace never past the key's own expiry.
    let now = f.clock.now();
    let (short, s3) = m
        .create(
            NewKey::new("sk_live_").expires_at(now + Duration::from_secs(10 * 60)),
            &admin(),
        )
        .await
        .unwrap();
    m.rotate(
        s3.id,
        Rotation::with_grace(Duration::from_secs(7 * 86_400)),
        &admin(),
    )
    .await
    .unwrap();
    assert_eq!(
        m.get(s3.id).await.unwrap().expires_at,
        Some(now + Duration::from_secs(10 * 60))
    );
    f.clock.advance(Duration::from_secs(10 * 60));
    assert_eq!(code(m, &short).await, "EXPIRED_API_KEY");

    // Zero grace: the old key stops now.
    let (k4, s4) = m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
    let (k5, _) = m
        .rotate(s4.id, Rotation::with_grace(Duration::ZERO), &admin())
        .await
        .unwrap();
    assert_eq!(code(m, &k4).await, "EXPIRED_API_KEY");
    assert_eq!(code(m, &k5).await, "OK");

    // Revoked, disabled: no rotation (a negative grace is unrepresentable:
    // `std::time::Duration`).
    let (_, s6) = m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
    m.disable(s6.id, &admin()).await.unwrap();
    assert!(matches!(
        m.rotate(s6.id, Rotation::default(), &admin()).await,
        Err(Error::InvalidState(_))
    ));
    m.revoke(s6.id, "x", &admin()).await.unwrap();
    assert!(matches!(
        m.rotate(s6.id, Rotation::default(), &admin()).await,
        Err(Error::InvalidState(_))
    ));
    assert!(
        f.audit.events().iter().any(
            |e| matches!(e.kind, AuditKind::Rotated { successor, .. } if successor == succ.id)
        )
    );
}

/// The acceptance pass: a rotation used to give a key that expires a
/// successor that never does. It now gets the old key's lifetime again,
/// from now; a named expiry wins, a key without expiry stays without, and
/// an issuance policy's maximum caps what is inherited.
#[tokio::test]
async fn rotation_keeps_the_lifetime_of_the_key() {
    let f = fixture();
    let m = &f.manager;
    let day = Duration::from_secs(86_400);
    let (_, s) = m
        .create(
            NewKey::new("sk_live_").owner("u").expires_at(T0 + 90 * day),
            &admin(),
        )
        .await
        .unwrap();
    f.clock.advance(10 * day);
    let (_, succ) = m
        .rotate(s.id, Rotation::with_grace(Duration::ZERO), &admin())
        .await
        .unwrap();
    assert_eq!(
        succ.expires_at,
        Some(T0 + 100 * day),
        "90 days from the rotation"
    );
    let (_, named) = m
        .rotate(
            succ.id,
            Rotation::with_grace(Duration::ZERO).expires_at(T0 + 40 * day),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(named.expires_at, Some(T0 + 40 * day));
    let (_, forever) = m
        .create(NewKey::new("sk_live_").owner("v"), &admin())
        .await
        .unwrap();
    let (_, still) = m
        .rotate(forever.id, Rotation::with_grace(Duration::ZERO), &admin())
        .await
        .unwrap();
    assert_eq!(still.expires_at, None);
    // A policy tightened to 30 days caps the inherited 90.
    let capped = KeyManager::with_clock(verifier(), Arc::clone(m.store()), f.clock.clone())
        .with_key_policies(KeyPolicies::new().rule(PolicyRule::new(
            PolicyTarget::Prefix("sk_live_".into()),
            KeyPolicy::new().max_lifetime(30 * day),
        )));
    let (_, long) = m
        .create(
            NewKey::new("sk_live_")
                .owner("w")
                .expires_at(f.clock.now() + 90 * day),
            &admin(),
        )
        .await
        .unwrap();
    let (_, short) = capped
        .rotate(long.id, Rotation::with_grace(Duration::ZERO), &admin())
        .await
        .unwrap();
    assert_eq!(short.expires_at, Some(f.clock.now() + 30 * day));
}

#[tokio::test]
async fn not_before_is_exact() {
    let f = fixture();
    let m = &f.manager;
    let nb = T0 + Duration::from_secs(3 * 3_600);
    let (key, s) = m
        .create(NewKey::new("sk_live_").not_before(nb), &admin())
        .await
        .unwrap();
    assert_eq!(s.state, KeyState::NotYetValid);
    f.clock.set(nb - Duration::from_nanos(1));
    assert_eq!(code(m, &key).await, "NOT_YET_VALID");
    f.clock.set(nb);
    assert_eq!(code(m, &key).await, "OK");
}

#[tokio::test]
async fn per_owner_limit_counts_active_and_disabled_not_revoked_expired_or_in_grace() {
    let verifier = verifier();
    let store = Arc::new(MemoryStore::new());
    let f = support::fixture_with(verifier, store);
    let m = f.manager.with_max_keys_per_owner(3);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            m.create(NewKey::new("sk_live_").owner("o"), &admin())
                .await
                .unwrap()
                .1
                .id,
        );
    }
    let fourth = m
        .create(NewKey::new("sk_live_").owner("o"), &admin())
        .await
        .unwrap_err();
    assert_eq!(
        (fourth.code().as_str(), fourth.http_status()),
        ("KEY_LIMIT_REACHED", 409)
    );
    assert!(matches!(fourth, Error::KeyLimitReached { limit: 3 }));
    assert_eq!(
        m.list("o").await.unwrap().len(),
        3,
        "a refused create wrote a record"
    );
    // Other owners and ownerless keys are not limited by o's count.
    m.create(NewKey::new("sk_live_").owner("p"), &admin())
        .await
        .unwrap();
    m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();

    // Disabled keys count.
    m.disable(ids[0], &admin()).await.unwrap();
    assert!(
        m.create(NewKey::new("sk_live_").owner("o"), &admin())
            .await
            .is_err()
    );
    // Rotating at the limit works: the old key in grace does not count.
    let (_, succ) = m
        .rotate(
            ids[1],
            Rotation::with_grace(Duration::from_secs(86_400)),
            &admin(),
        )
        .await
        .unwrap();
    assert!(
        m.create(NewKey::new("sk_live_").owner("o"), &admin())
            .await
            .is_err()
    );
    // Revoked keys free a slot.
    m.revoke(ids[0], "x", &admin()).await.unwrap();
    let (_, s4) = m
        .create(NewKey::new("sk_live_").owner("o"), &admin())
        .await
        .unwrap();
    assert!(
        m.create(NewKey::new("sk_live_").owner("o"), &admin())
            .await
            .is_err()
    );
    // Expired keys free a slot: s4 expires... give one an expiry then pass it.
    m.update(
        s4.id,
        KeyUpdate::new().expires_at(Some(f.clock.now() + Duration::from_secs(3_600))),
        &admin(),
    )
    .await
    .unwrap();
    f.clock.advance(Duration::from_secs(3_600));
    m.create(NewKey::new("sk_live_").owner("o"), &admin())
        .await
        .unwrap();
    let _ = succ;
}

#[tokio::test]
async fn expiring_soon_lists_keys_in_the_window() {
    let f = fixture();
    let m = &f.manager;
    let mk = |days: Option<i64>, owner: &'static str| {
        let n = NewKey::new("sk_live_").owner(owner);
        match days {
            Some(d) => n.expires_at(T0 + Duration::from_secs(d as u64 * 86_400)),
            None => n,
        }
    };
    let (_, d10) = m.create(mk(Some(10), "a"), &admin()).await.unwrap();
    let (_, d29) = m.create(mk(Some(29), "a"), &admin()).await.unwrap();
    let (_, d30) = m.create(mk(Some(30), "a"), &admin()).await.unwrap();
    m.create(mk(Some(31), "a"), &admin()).await.unwrap();
    m.create(mk(None, "a"), &admin()).await.unwrap();
    let (_, other) = m.create(mk(Some(5), "b"), &admin()).await.unwrap();
    let (_, revoked) = m.create(mk(Some(3), "a"), &admin()).await.unwrap();
    m.revoke(revoked.id, "x", &admin()).await.unwrap();
    let ids = |v: Vec<KeySummary>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(m
            .expiring_soon(Some("a"), Duration::from_secs(30 * 86_400))
            .await
            .unwrap()),
        vec![d10.id, d29.id]
    );
    assert_eq!(
        ids(m
            .expiring_soon(None, Duration::from_secs(30 * 86_400))
            .await
            .unwrap()),
        vec![other.id, d10.id, d29.id]
    );
    f.clock.advance(Duration::from_secs(86_400));
    assert_eq!(
        ids(m
            .expiring_soon(Some("a"), Duration::from_secs(30 * 86_400))
            .await
            .unwrap()),
        vec![d10.id, d29.id, d30.id]
    );
    // A rotated key (in grace) is replaced, not due for renewal; its
    // successor has its 10-day lifetime again, so it is listed in its place.
    let (_, successor) = m
        .rotate(
            d10.id,
            Rotation::with_grace(Duration::from_secs(86_400)),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(
        ids(m
            .expiring_soon(Some("a"), Duration::from_secs(30 * 86_400))
            .await
            .unwrap()),
        vec![successor.id, d29.id, d30.id]
    );
}

#[tokio::test]
async fn ip_allowlist_v4_and_v6() {
    let f = fixture();
    let m = &f.manager;
    let none = Requirement::none();
    let (key, s) = m
        .create(
            NewKey::new("sk_live_")
                .allow_ip("10.0.0.0/8".parse().unwrap())
                .allow_ip("2001:db8::/32".parse().unwrap()),
            &admin(),
        )
        .await
        .unwrap();
    let k = key.expose_secret();
    m.authenticate(k, &none, ip("10.20.30.40")).await.unwrap();
    m.authenticate(k, &none, ip("::ffff:10.0.0.1"))
        .await
        .unwrap();
    m.authenticate(k, &none, ip("2001:db8:ffff::1"))
        .await
        .unwrap();
    for bad in [ip("192.168.0.1"), ip("2001:db9::1"), None] {
        let e = m.authenticate(k, &none, bad).await.unwrap_err();
        assert_eq!(
            (e.code().as_str(), e.http_status()),
            ("IP_NOT_ALLOWED", 403)
        );
    }
    // Widen via update, clear it.
    m.update(
        s.id,
        KeyUpdate::new().ip_allowlist(vec!["0.0.0.0/0".parse().unwrap()]),
        &admin(),
    )
    .await
    .unwrap();
    m.authenticate(k, &none, ip("192.168.0.1")).await.unwrap();
    m.update(s.id, KeyUpdate::new().ip_allowlist(vec![]), &admin())
        .await
        .unwrap();
    m.authenticate(k, &none, None).await.unwrap();
    // A key without allowlist accepts unknown addresses.
    let (plain, _) = m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
    m.authenticate(plain.expose_secret(), &none, None)
        .await
        .unwrap();
    // Address failures are authenticated requests: counted in the sampled
    // summaries, not one event each.
    m.shutdown().await.unwrap();
    let events = f.audit.events();
    assert!(!events.iter().any(|e| matches!(
        e.kind,
        AuditKind::VerificationFailed {
            code: "IP_NOT_ALLOWED"
        }
    )));
    let counted: u64 = events
        .iter()
        .filter_map(|e| match &e.kind {
            AuditKind::RejectionsSampled { counts } => Some(
                counts
                    .iter()
                    .filter(|(r, _)| *r == "ip_not_allowed")
                    .map(|(_, n)| n)
                    .sum::<u64>(),
            ),
            _ => None,
        })
        .sum();
    assert_eq!(counted, 3);
}

#[tokio::test]
async fn environment_config_live_test_both() {
    for (accept, live_ok, test_ok) in [
        (Environments::LIVE, true, false),
        (Environments::TEST, false, true),
        (Environments::BOTH, true, true),
    ] {
        let f = fixture_with(
            verifier().with_environments(accept),
            Arc::new(MemoryStore::new()),
        );
        let m = &f.manager;
        let (live, _) = m.create(NewKey::new("sk_live_"), &admin()).await.unwrap();
        let (test, _) = m.create(NewKey::new("sk_test_"), &admin()).await.unwrap();
        let want = |ok| if ok { "OK" } else { "WRONG_ENVIRONMENT" };
        assert_eq!(code(m, &live).await, want(live_ok));
        assert_eq!(code(m, &test).await, want(test_ok));
    }
}

#[tokio::test]
async fn a_failing_store_is_503_and_changes_nothing() {
    let store = support::netstore::NetStore::new(std::time::Duration::from_micros(50));
    let f = fixture_with(verifier(), store.clone());
    let m = f.manager.with_max_keys_per_owner(5);
    let (key, s) = m
        .create(NewKey::new("sk_live_").owner("u"), &admin())
        .await
        .unwrap();
    m.authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    let before = m.record(s.id).await.unwrap();
    store.set_failing(true);
    let e = m
        .authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code().as_str(), e.http_status()),
        ("STORE_UNAVAILABLE", 503)
    );
    assert!(std::error::Error::source(&e).is_some());
    let results = [
        m.create(NewKey::new("sk_live_").owner("u"), &admin())
            .await
            .map(|_| ()),
        m.update(s.id, KeyUpdate::new().name("x"), &admin())
            .await
            .map(|_| ()),
        m.disable(s.id, &admin()).await.map(|_| ()),
        m.revoke(s.id, "x", &admin()).await.map(|_| ()),
        m.rotate(s.id, Rotation::default(), &admin())
            .await
            .map(|_| ()),
        m.delete(s.id, &admin()).await,
        m.revoke_owner("u", "x", &admin()).await.map(|_| ()),
        m.list("u").await.map(|_| ()),
        m.expiring_soon(None, Duration::from_secs(86_400))
            .await
            .map(|_| ()),
    ];
    for r in results {
        assert_eq!(r.unwrap_err().code().as_str(), "STORE_UNAVAILABLE");
    }
    store.set_failing(false);
    assert_eq!(m.record(s.id).await.unwrap(), before);
    assert_eq!(m.list("u").await.unwrap().len(), 1);
}

#[test]
fn records_written_before_the_lifecycle_fields_still_read() {
    // A schema-1 record as the core wrote it, without revision, usage,
    // ip_allowlist or legacy.
    let (_, record) = verifier()
        .issue(NewKey::new("sk_live_").owner("u"), T0)
        .unwrap();
    let mut json: serde_json::Value = serde_json::to_value(&record).unwrap();
    let obj = json.as_object_mut().unwrap();
    for field in ["revision", "usage", "ip_allowlist", "legacy"] {
        obj.remove(field);
    }
    let back: KeyRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back, record);
    // Non-default values round-trip.
    let mut r = record.clone();
    r.ip_allowlist = vec!["10.0.0.0/8".parse().unwrap()];
    r.revision = 7;
    let text = serde_json::to_string(&r).unwrap();
    assert!(text.contains("\"ip_allowlist\":[\"10.0.0.0/8\"]"));
    assert!(!text.contains("\"usage\""));
    assert_eq!(serde_json::from_str::<KeyRecord>(&text).unwrap(), r);
    // A record written by 0.2, with the usage counters it held then, still
    // reads (the counters now live in the store's per-day rows).
    let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
    old.as_object_mut().unwrap().insert(
        "usage".into(),
        serde_json::json!({"day": "2026-03-01", "day_count": 3, "month_count": 9}),
    );
    assert_eq!(serde_json::from_value::<KeyRecord>(old).unwrap(), r);
}

#[tokio::test]
async fn allowlisted_keys_fail_closed_where_the_address_is_unknown() {
    let v = verifier();
    let store = Arc::new(MemoryStore::new());
    let (key, record) = v
        .issue(
            NewKey::new("sk_live_").allow_ip("10.0.0.0/8".parse().unwrap()),
            T0,
        )
        .unwrap();
    store.insert_sync(record).unwrap();
    let auth = Authenticator::with_clock(v.clone(), store.clone(), ManualClock::new(T0));
    let e = auth
        .authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "IP_NOT_ALLOWED");
    let e = v
        .verify_with(
            key.expose_secret(),
            |id| store.fetch_sync(id),
            T0,
            &Requirement::none(),
        )
        .unwrap_err();
    assert_eq!(e.code().as_str(), "IP_NOT_ALLOWED");
    let parsed = v.parse(key.expose_secret()).unwrap();
    v.verify(
        &parsed,
        store.fetch_sync(key.id()).unwrap(),
        &T0,
        &Requirement::none(),
        ip("10.9.9.9"),
    )
    .unwrap();
}
