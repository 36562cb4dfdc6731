//! The public revocation endpoint: the same answer whatever the tokens,
//! throttled per client address through the crate's limits, at most 1,000
//! tokens, audited with the reporter's address.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::IpAddr;
use std::sync::Arc;

use apikey::limits::{MemoryLimits, Quota};
use apikey::{AuditKind, KeyStatus, ManualClock};
use apikey_leak::{ACCEPTED_BODY, MAX_PUBLIC_TOKENS, PublicRevoke};
use apikey_testkit::netstore::NetStore;
use support::{World, forged_key, junk_key, unknown_key};

type Endpoint = PublicRevoke<Arc<NetStore>, MemoryLimits, ManualClock>;

fn endpoint(world: &World) -> Endpoint {
    PublicRevoke::new(Arc::new(world.responder()), MemoryLimits::new())
        .with_quota(Quota::unlimited())
}

fn body(tokens: &[&str]) -> String {
    serde_json::json!({ "tokens": tokens }).to_string()
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[tokio::test]
async fn every_kind_of_token_gets_the_same_answer_and_only_live_keys_change() {
    let world = World::new();
    let ep = endpoint(&world);
    let live = world.key("sk_live_", "acme").await;
    let revoked = world.key("sk_live_", "acme").await;
    world
        .manager
        .revoke(revoked.id(), "old", &apikey::Actor::system())
        .await
        .unwrap();
    let template = unknown_key(&world.verifier, 1);
    let cases: Vec<(&str, String)> = vec![
        ("junk", junk_key(&template, 0)),
        ("forged", forged_key(&template, 3)),
        ("unknown", unknown_key(&world.verifier, 2)),
        ("revoked", revoked.expose_secret().to_owned()),
        ("live", live.expose_secret().to_owned()),
        ("empty list", String::new()),
    ];
    let mut answers = Vec::new();
    for (name, token) in &cases {
        let b = if token.is_empty() {
            body(&[])
        } else {
            body(&[token])
        };
        let a = ep.handle(ip("198.51.100.4"), b.as_bytes()).await;
        assert!(a.failure().is_none(), "{name}");
        answers.push((name, a.status(), a.body().to_owned(), a.retry_after()));
    }
    for (name, status, text, retry) in &answers {
        assert_eq!(
            (*status, text.as_str(), *retry),
            (202, ACCEPTED_BODY, None),
            "{name}"
        );
    }
    assert_eq!(
        world.manager.get(live.id()).await.unwrap().status,
        KeyStatus::Revoked
    );
    assert_eq!(
        world.events("revoked").len(),
        2,
        "the earlier revocation and the live key's"
    );
}

#[tokio::test]
async fn junk_and_forged_tokens_make_no_store_call() {
    let world = World::new();
    let ep = endpoint(&world);
    let tokens: Vec<String> = (0..MAX_PUBLIC_TOKENS)
        .map(|n| {
            let t = unknown_key(&world.verifier, n as u64);
            if n % 2 == 0 {
                junk_key(&t, n)
            } else {
                forged_key(&t, n)
            }
        })
        .collect();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let before = world.calls();
    let a = ep.handle(ip("198.51.100.4"), body(&refs).as_bytes()).await;
    assert_eq!(a.status(), 202);
    assert_eq!(world.calls(), before);
}

#[tokio::test]
async fn requests_are_throttled_per_client_address() {
    let world = World::new();
    let ep = PublicRevoke::new(Arc::new(world.responder()), MemoryLimits::new())
        .with_quota(Quota::unlimited().per_minute(2));
    let b = body(&["x"]);
    for _ in 0..2 {
        assert_eq!(
            ep.handle(ip("203.0.113.9"), b.as_bytes()).await.status(),
            202
        );
    }
    let refused = ep.handle(ip("203.0.113.9"), b.as_bytes()).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.retry_after().is_some());
    // The same /64 counts as one client; IPv4-mapped IPv6 as IPv4.
    assert_eq!(
        ep.handle(ip("::ffff:203.0.113.9"), b.as_bytes())
            .await
            .status(),
        429
    );
    assert_eq!(
        ep.handle(ip("2001:db8::1"), b.as_bytes()).await.status(),
        202
    );
    assert_eq!(
        ep.handle(ip("2001:db8::2"), b.as_bytes()).await.status(),
        202
    );
    assert_eq!(
        ep.handle(ip("2001:db8::3"), b.as_bytes()).await.status(),
        429
    );
    // Another address is not affected.
    assert_eq!(
        ep.handle(ip("203.0.113.10"), b.as_bytes()).await.status(),
        202
    );
    // A throttled request is refused before its body is read: a live key
    // in it is not revoked.
    let key = world.key("sk_live_", "acme").await;
    let a = ep
        .handle(ip("203.0.113.9"), body(&[key.expose_secret()]).as_bytes())
        .await;
    assert_eq!(a.status(), 429);
    assert_eq!(
        world.manager.get(key.id()).await.unwrap().status,
        KeyStatus::Active
    );
}

#[tokio::test]
async fn at_most_1000_tokens_per_request() {
    let world = World::new();
    let ep = endpoint(&world);
    let many: Vec<String> = (0..=MAX_PUBLIC_TOKENS)
        .map(|n| format!("junk{n}"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let a = ep.handle(ip("192.0.2.1"), body(&refs).as_bytes()).await;
    assert_eq!(a.status(), 413);
    let a = ep
        .handle(ip("192.0.2.1"), body(&refs[..MAX_PUBLIC_TOKENS]).as_bytes())
        .await;
    assert_eq!(a.status(), 202);
    // Malformed and oversized bodies: refused by shape, not by content.
    assert_eq!(
        ep.handle(ip("192.0.2.1"), b"{\"tokens\": 3}")
            .await
            .status(),
        400
    );
    assert_eq!(
        ep.handle(ip("192.0.2.1"), b"[\"sk_live_x\"]")
            .await
            .status(),
        400
    );
    let small =
        PublicRevoke::new(Arc::new(world.responder()), MemoryLimits::new()).with_max_body(10);
    assert_eq!(
        small
            .handle(ip("192.0.2.1"), body(&["abcdefgh"]).as_bytes())
            .await
            .status(),
        413
    );
}

#[tokio::test]
async fn requests_and_revocations_are_audited_with_the_reporters_address() {
    let world = World::new();
    let ep = endpoint(&world);
    let key = world.key("sk_live_", "acme").await;
    ep.handle(
        ip("198.51.100.77"),
        body(&[key.expose_secret(), "junk"]).as_bytes(),
    )
    .await;
    let requested = world.events("revocation_requested");
    assert_eq!(requested.len(), 1);
    assert_eq!(
        requested[0].kind,
        AuditKind::RevocationRequested {
            reporter: ip("198.51.100.77"),
            tokens: 2
        }
    );
    let leaks = world.events("leak_reported");
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].key_id, Some(key.id()));
    let AuditKind::LeakReported {
        reporter, source, ..
    } = &leaks[0].kind
    else {
        panic!()
    };
    assert_eq!(
        (*reporter, source.as_str()),
        (ip("198.51.100.77"), "public_revoke")
    );
    let revoked = world.events("revoked");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].actor.as_deref(), Some("public_revoke"));
    // The reason is the key's owner's to read: it names how the leak was
    // reported, not who reported it (the events above hold the address).
    assert_eq!(
        revoked[0].reason.as_deref(),
        Some("leak reported through public revocation")
    );
    let record = world.manager.get(key.id()).await.unwrap();
    let reason = record.revocation.unwrap().reason;
    assert!(!reason.contains("198.51.100"), "{reason}");
}

#[tokio::test]
async fn a_store_failure_is_not_told_to_the_reporter() {
    let world = World::new();
    let ep = endpoint(&world);
    let key = world.key("sk_live_", "acme").await;
    world.store.set_failing(true);
    let a = ep
        .handle(ip("198.51.100.4"), body(&[key.expose_secret()]).as_bytes())
        .await;
    world.store.set_failing(false);
    assert_eq!((a.status(), a.body()), (202, ACCEPTED_BODY));
    assert!(a.failure().is_some(), "kept for the service's logs");
    // A later report revokes it.
    ep.handle(ip("198.51.100.4"), body(&[key.expose_secret()]).as_bytes())
        .await;
    assert_eq!(
        world.manager.get(key.id()).await.unwrap().status,
        KeyStatus::Revoked
    );
}

/// A publishable key under a prefix of the service's own (`acme_pk_`, not
/// `pk_live_`), copied from a web page and reported: notified only, never
/// revoked, whatever the policy's default.
#[tokio::test]
async fn a_custom_publishable_key_reported_publicly_stays_active() {
    let world = World::new();
    let ep = endpoint(&world);
    let key = world.key("acme_pk_", "shop").await;
    let secret = world.key("sk_live_", "shop").await;
    let answer = ep
        .handle(
            ip("192.0.2.9"),
            body(&[key.expose_secret(), secret.expose_secret()]).as_bytes(),
        )
        .await;
    assert_eq!(answer.status(), 202);
    assert_eq!(
        world.manager.get(key.id()).await.unwrap().status,
        KeyStatus::Active
    );
    assert_eq!(
        world.manager.get(secret.id()).await.unwrap().status,
        KeyStatus::Revoked
    );
    // Not even a policy that disables everything touches it.
    let strict = PublicRevoke::new(
        Arc::new(world.responder().with_policy(
            apikey_leak::LeakPolicy::new().with_default(apikey_leak::LeakAction::Disable),
        )),
        MemoryLimits::new(),
    )
    .with_quota(Quota::unlimited());
    let answer = strict
        .handle(ip("192.0.2.9"), body(&[key.expose_secret()]).as_bytes())
        .await;
    assert_eq!(answer.status(), 202);
    assert_eq!(
        world.manager.get(key.id()).await.unwrap().status,
        KeyStatus::Active
    );
}

/// An imported key (legacy format, no tag) reported to either endpoint is
/// found through the legacy index and revoked; junk under the legacy
/// prefix changes nothing.
#[tokio::test]
async fn a_reported_legacy_key_is_revoked() {
    let world = World::with_legacy();
    // The responder takes the legacy prefix from the manager.
    let responder = Arc::new(world.responder());
    let import = |text: &str| {
        apikey::ImportKey::plaintext(text.to_owned())
            .owner("acme")
            .scopes(["tasks:read"])
    };
    let system = apikey::Actor::system();
    let public_key = "oldco_4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c";
    let github_key = "oldco_0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let disabled_key = "oldco_ffeeddccbbaa99887766554433221100";
    let a = world
        .manager
        .import(import(public_key), &system)
        .await
        .unwrap();
    let b = world
        .manager
        .import(import(github_key), &system)
        .await
        .unwrap();
    let c = world
        .manager
        .import(import(disabled_key), &system)
        .await
        .unwrap();
    world.manager.disable(c.id, &system).await.unwrap();
    let none = apikey::Requirement::none();
    world
        .manager
        .authenticate(public_key, &none, None)
        .await
        .unwrap();
    // The public endpoint.
    let ep =
        PublicRevoke::new(responder.clone(), MemoryLimits::new()).with_quota(Quota::unlimited());
    let answer = ep
        .handle(
            ip("192.0.2.9"),
            body(&[public_key, "oldco_not-a-key-of-ours", disabled_key]).as_bytes(),
        )
        .await;
    assert_eq!(answer.status(), 202);
    assert!(answer.failure().is_none(), "{:?}", answer.failure());
    let err = world
        .manager
        .authenticate(public_key, &none, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "REVOKED_API_KEY");
    assert_eq!(
        world.manager.get(a.id).await.unwrap().status,
        KeyStatus::Revoked
    );
    // A disabled imported key is found too (it must not come back).
    assert_eq!(
        world.manager.get(c.id).await.unwrap().status,
        KeyStatus::Revoked
    );
    // GitHub's endpoint, through the same responder.
    let github = support::FakeGithub::new(3);
    let endpoint = apikey_leak::GithubEndpoint::new(responder, github.keys());
    let report = github
        .post(&endpoint, &support::alert(&[github_key, "oldco_junk"]))
        .await
        .unwrap();
    assert_eq!(report.feedback[0].label, apikey_leak::Label::TruePositive);
    assert_eq!(report.feedback[1].label, apikey_leak::Label::FalsePositive);
    assert_eq!(report.summary.keys, 1);
    assert_eq!(
        world.manager.get(b.id).await.unwrap().status,
        KeyStatus::Revoked
    );
    // Reporting a key's use is not a use.
    assert_eq!(world.manager.get(b.id).await.unwrap().last_used_at, None);
}
