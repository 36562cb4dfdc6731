//! Batches of reported tokens: only live keys change, junk and forged
//! tokens make no store call, retries change nothing twice, the policy per
//! prefix holds, and the audit log and notifier see each key once.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apikey::{Actor, KeyStatus};
use apikey_leak::{
    GithubEndpoint, Label, LeakAction, LeakNotice, LeakPolicy, PublicKeySet, Report, token_hash,
};
use support::{FakeGithub, World, alert, forged_key, junk_key, unknown_key};

async fn post(
    ep: &GithubEndpoint<Arc<apikey_testkit::netstore::NetStore>, PublicKeySet, apikey::ManualClock>,
    github: &FakeGithub,
    body: &str,
) -> Report {
    github.post(ep, body).await.unwrap()
}

#[tokio::test]
async fn junk_and_forged_tokens_make_no_store_call() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let real = world.key("sk_live_", "acme").await;
    let mut tokens = Vec::new();
    for n in 0..500 {
        tokens.push(junk_key(real.expose_secret(), n));
        tokens.push(forged_key(real.expose_secret(), n));
    }
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let ep = GithubEndpoint::new(Arc::new(world.responder()), github.keys());
    let before = world.calls();
    let report = post(&ep, &github, &alert(&refs)).await;
    assert_eq!(
        world.calls(),
        before,
        "junk and forged tokens reached the store"
    );
    assert!(
        report
            .feedback
            .iter()
            .all(|f| f.label == Label::FalsePositive)
    );
    assert_eq!(report.summary.rejected_offline, report.summary.distinct);
    // The counter can fail: one real key makes calls.
    post(&ep, &github, &alert(&[real.expose_secret()])).await;
    assert!(world.calls() > before);
}

#[tokio::test]
async fn a_batch_of_1000_mixed_matches_changes_only_live_keys() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let mut live = Vec::new();
    for i in 0..100 {
        live.push(world.key("sk_live_", &format!("owner{}", i % 7)).await);
    }
    let mut revoked = Vec::new();
    for _ in 0..50 {
        let k = world.key("sk_live_", "old").await;
        world
            .manager
            .revoke(k.id(), "rotated", &Actor::system())
            .await
            .unwrap();
        revoked.push(k);
    }
    let template = live[0].expose_secret().to_owned();
    let mut tokens: Vec<String> = Vec::new();
    tokens.extend(live.iter().map(|k| k.expose_secret().to_owned()));
    tokens.extend(revoked.iter().map(|k| k.expose_secret().to_owned()));
    tokens.extend((0..100).map(|n| unknown_key(&world.verifier, n as u64)));
    tokens
        .extend((0..350).map(|n| forged_key(&unknown_key(&world.verifier, 10_000 + n as u64), n)));
    tokens.extend((0..400).map(|n| junk_key(&unknown_key(&world.verifier, 20_000 + n as u64), n)));
    let _ = template;
    assert_eq!(tokens.len(), 1000);
    // Interleave deterministically.
    let mut order: Vec<usize> = (0..1000).collect();
    order.sort_by_key(|i| (i * 7919) % 1000);
    let tokens: Vec<&str> = order.iter().map(|&i| tokens[i].as_str()).collect();
    let tag_valid = live.len() + revoked.len() + 100;
    assert_eq!(
        tokens.iter().collect::<HashSet<_>>().len(),
        1000,
        "distinct tokens"
    );

    let revisions_before: Vec<u64> = {
        let mut v = Vec::new();
        for k in &revoked {
            v.push(world.manager.record(k.id()).await.unwrap().revision);
        }
        v
    };
    let ep = GithubEndpoint::new(Arc::new(world.responder()), github.keys());
    let calls_before = world.calls();
    let started = Instant::now();
    let report = post(&ep, &github, &alert(&tokens)).await;
    let elapsed = started.elapsed();
    let calls = world.calls() - calls_before;

    for k in &live {
        assert_eq!(
            world.manager.get(k.id()).await.unwrap().status,
            KeyStatus::Revoked
        );
    }
    for (k, rev) in revoked.iter().zip(revisions_before) {
        assert_eq!(
            world.manager.record(k.id()).await.unwrap().revision,
            rev,
            "a revoked key changed"
        );
    }
    assert_eq!(report.summary.keys, live.len() + revoked.len());
    assert_eq!(report.summary.changed, live.len());
    assert_eq!(report.summary.unknown, 100);
    assert_eq!(report.summary.rejected_offline, 750);
    assert_eq!(report.feedback.len(), 1000);
    let positives = report
        .feedback
        .iter()
        .filter(|f| f.label == Label::TruePositive)
        .count();
    assert_eq!(positives, live.len() + revoked.len());
    // Store calls: a fetch per tag-valid token, and for each live key the
    // revocation's read and write and the listing that finds its derived
    // keys (`KeyManager::revoke` revokes them too); nothing for the 750
    // others.
    let bound = (tag_valid + 3 * live.len()) as u64;
    assert!(calls <= bound, "{calls} store calls, bound {bound}");
    assert!(
        calls >= tag_valid as u64,
        "{calls} store calls for {tag_valid} tag-valid tokens"
    );
    println!("1,000 mixed matches: {calls} store calls (tag-valid: {tag_valid}), {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(60),
        "sanity bound: {elapsed:?}"
    );
}

#[tokio::test]
async fn a_retried_batch_revokes_once_and_answers_the_same() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let notices = Arc::new(Mutex::new(Vec::<LeakNotice>::new()));
    let sink = notices.clone();
    let responder = world
        .responder()
        .with_notifier(move |n: &LeakNotice| sink.lock().unwrap().push(n.clone()));
    let ep = GithubEndpoint::new(Arc::new(responder), github.keys());
    let keys = [
        world.key("sk_live_", "acme").await,
        world.key("sk_live_", "bolt").await,
    ];
    let body = alert(&[
        keys[0].expose_secret(),
        "junk",
        keys[1].expose_secret(),
        keys[0].expose_secret(),
    ]);
    let first = post(&ep, &github, &body).await;
    let second = post(&ep, &github, &body).await;
    let third = post(&ep, &github, &body).await;
    assert_eq!(first.feedback, second.feedback);
    assert_eq!(first.feedback, third.feedback);
    assert_eq!(first.summary.changed, 2);
    assert_eq!(second.summary.changed, 0);
    let revoked = world.events("revoked");
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    let ids: HashSet<_> = revoked.iter().map(|e| e.key_id).collect();
    assert_eq!(ids, keys.iter().map(|k| Some(k.id())).collect());
    // One leak_reported per key and place (the batch names key 0 twice,
    // at two URLs).
    assert_eq!(world.events("leak_reported").len(), 3);
    assert_eq!(notices.lock().unwrap().len(), 3);
    for k in &keys {
        let r = world.manager.record(k.id()).await.unwrap();
        assert_eq!(
            r.revocation.unwrap().reason,
            "leak reported by GitHub secret scanning"
        );
    }
}

#[tokio::test]
async fn leak_reported_carries_url_source_owner_and_actor() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let key = world.key("sk_live_", "acme").await;
    let ep = GithubEndpoint::new(Arc::new(world.responder()), github.keys());
    post(&ep, &github, &alert(&[key.expose_secret()])).await;
    let events = world.events("leak_reported");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.key_id, Some(key.id()));
    assert_eq!(e.owner.as_deref(), Some("acme"));
    assert_eq!(e.actor.as_deref(), Some(apikey_leak::GITHUB_ACTOR));
    let apikey::AuditKind::LeakReported {
        url,
        source,
        reporter,
    } = &e.kind
    else {
        panic!("{e:?}");
    };
    assert_eq!(
        url.as_deref(),
        Some("https://github.com/octo/repo/blob/abc/file0.env")
    );
    assert_eq!(source, "content");
    assert_eq!(*reporter, None);
    let json = serde_json::to_value(e).unwrap();
    assert_eq!(json["kind"], "leak_reported");
    assert!(!e.to_string().contains(key.expose_secret()));
    assert!(!format!("{e:?}").contains(key.expose_secret()));
}

#[tokio::test]
async fn the_policy_per_prefix_decides_and_public_keys_are_never_revoked() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let policy = LeakPolicy::new()
        .with_action("sk_test_", LeakAction::Disable)
        .unwrap()
        .with_action("kwi_sk_", LeakAction::NotifyOnly)
        .unwrap();
    let notices = Arc::new(Mutex::new(Vec::<LeakNotice>::new()));
    let sink = notices.clone();
    let ep = GithubEndpoint::new(
        Arc::new(
            world
                .responder()
                .with_policy(policy)
                .with_notifier(move |n: &LeakNotice| sink.lock().unwrap().push(n.clone())),
        ),
        github.keys(),
    );
    let live = world.key("sk_live_", "a").await;
    let test = world.key("sk_test_", "b").await;
    let kwi = world.key("kwi_sk_", "c").await;
    let public = world.key("pk_live_", "d").await;
    let report = post(
        &ep,
        &github,
        &alert(&[
            live.expose_secret(),
            test.expose_secret(),
            kwi.expose_secret(),
            public.expose_secret(),
        ]),
    )
    .await;
    assert!(
        report
            .feedback
            .iter()
            .all(|f| f.label == Label::TruePositive)
    );
    let status = |k: &apikey::ApiKey| {
        let m = world.manager.clone();
        let id = k.id();
        async move { m.get(id).await.unwrap().status }
    };
    assert_eq!(status(&live).await, KeyStatus::Revoked);
    assert_eq!(status(&test).await, KeyStatus::Disabled);
    assert_eq!(status(&kwi).await, KeyStatus::Active);
    assert_eq!(status(&public).await, KeyStatus::Active);
    let actions: Vec<_> = notices
        .lock()
        .unwrap()
        .iter()
        .map(|n| (n.prefix.clone(), n.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("sk_live_".to_owned(), LeakAction::Revoke),
            ("sk_test_".to_owned(), LeakAction::Disable),
            ("kwi_sk_".to_owned(), LeakAction::NotifyOnly),
            ("pk_live_".to_owned(), LeakAction::NotifyOnly),
        ]
    );
    // Even a policy that disables everything by default leaves them alone.
    let strict = LeakPolicy::new().with_default(LeakAction::Disable);
    assert_eq!(strict.action("pk_live_"), LeakAction::NotifyOnly);
    assert!(
        LeakPolicy::new()
            .with_action("pk_test_", LeakAction::Disable)
            .is_err()
    );
}

#[tokio::test]
async fn feedback_is_githubs_format_with_the_token_hash() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let key = world.key("sk_live_", "acme").await;
    let ep = GithubEndpoint::new(Arc::new(world.responder()), github.keys());
    let report = post(&ep, &github, &alert(&[key.expose_secret(), "nope"])).await;
    let json: serde_json::Value = serde_json::from_str(&report.feedback_json()).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"token_hash": token_hash(key.expose_secret()), "token_type": "apikey_secret_key", "label": "true_positive"},
            {"token_hash": token_hash("nope"), "token_type": "apikey_secret_key", "label": "false_positive"},
        ])
    );
    assert!(!report.feedback_json().contains(key.expose_secret()));
}

#[tokio::test]
async fn a_store_failure_is_a_503_and_the_retry_completes_once() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let keys = [
        world.key("sk_live_", "a").await,
        world.key("sk_live_", "b").await,
    ];
    let ep = GithubEndpoint::new(Arc::new(world.responder()), github.keys());
    let body = alert(&[keys[0].expose_secret(), keys[1].expose_secret()]);
    world.store.set_failing(true);
    let err = github.post(&ep, &body).await.unwrap_err();
    assert_eq!(err.status(), 503);
    world.store.set_failing(false);
    post(&ep, &github, &body).await;
    post(&ep, &github, &body).await;
    assert_eq!(world.events("revoked").len(), 2);
    assert_eq!(world.events("leak_reported").len(), 2);
}

#[tokio::test]
async fn a_key_revoked_behind_a_stale_cache_is_reported_as_already_revoked() {
    use apikey::{
        CachedStore, KeyManager, KeyStoreQuery, ManualClock, MemoryAuditSink, Revocation,
    };
    use apikey_testkit::WriteExt;
    let clock = ManualClock::new(support::now());
    let audit = Arc::new(MemoryAuditSink::new());
    let manager = Arc::new(
        KeyManager::with_clock(
            support::verifier(),
            CachedStore::new(apikey::MemoryStore::new()).with_max_age(Duration::from_secs(3600)),
            clock.clone(),
        )
        .with_audit_sink(audit.clone()),
    );
    let (key, _) = manager
        .create(apikey::NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    manager
        .authenticate(key.expose_secret(), &apikey::Requirement::none(), None)
        .await
        .unwrap(); // cached as active
    // Another instance revokes it, a minute ago, behind this cache's back.
    let mut record = manager
        .store()
        .inner()
        .get(key.id())
        .await
        .unwrap()
        .unwrap();
    record.status = KeyStatus::Revoked;
    record.revocation = Some(Revocation {
        at: support::now(),
        reason: "elsewhere".into(),
    });
    manager.store().inner().update(record).await.unwrap();
    clock.advance(std::time::Duration::from_secs(60));
    let github = FakeGithub::new(3);
    let ep = GithubEndpoint::new(
        Arc::new(apikey_leak::LeakResponder::new(manager.clone()).with_audit_sink(audit.clone())),
        github.keys(),
    );
    let report = github
        .post(&ep, &alert(&[key.expose_secret()]))
        .await
        .unwrap();
    assert_eq!(report.summary.keys, 1);
    assert_eq!(
        report.summary.changed, 0,
        "revoked elsewhere, not by this report"
    );
    assert_eq!(
        manager
            .record(key.id())
            .await
            .unwrap()
            .revocation
            .unwrap()
            .reason,
        "elsewhere"
    );
}
