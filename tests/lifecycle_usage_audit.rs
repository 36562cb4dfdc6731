//! Usage counters (batched, UTC days from the manual clock) and audit
//! events (management events, sampled pre-tag rejections, one event per
//! post-tag failure, never a secret).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;

use apikey::*;
use support::netstore::NetStore;
use support::{T0, fixture, fixture_with, verifier};
use time::Duration;

fn none() -> Requirement {
    Requirement::none()
}

#[tokio::test]
async fn daily_and_monthly_counters_follow_utc_days() {
    let f = fixture();
    let m = f.manager.usage_flush_interval(Duration::days(365));
    let (key, s) = m
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    // T0 is 2026-03-01 12:00 UTC. The very first verification flushes.
    for _ in 0..3 {
        m.authenticate(key.expose_secret(), &none(), None)
            .await
            .unwrap();
    }
    f.clock
        .set(time::macros::datetime!(2026-03-02 23:59:59 UTC));
    for _ in 0..2 {
        m.authenticate(key.expose_secret(), &none(), None)
            .await
            .unwrap();
    }
    assert_eq!(m.usage().pending(), 4);
    assert_eq!(m.flush().await.unwrap(), 4);
    let g = m.get(s.id).await.unwrap();
    assert_eq!((g.requests_today, g.requests_this_month), (2, 5));
    assert_eq!(
        g.last_used_at,
        Some(time::macros::datetime!(2026-03-02 23:59:59 UTC))
    );
    f.clock.set(time::macros::datetime!(2026-04-01 00:00 UTC));
    let g = m.get(s.id).await.unwrap();
    assert_eq!((g.requests_today, g.requests_this_month), (0, 0));
    m.authenticate(key.expose_secret(), &none(), None)
        .await
        .unwrap();
    m.shutdown().await.unwrap();
    let g = m.get(s.id).await.unwrap();
    assert_eq!((g.requests_today, g.requests_this_month), (1, 1));
    // Failed verifications are not usage.
    m.disable(s.id, &Actor::system()).await.unwrap();
    assert!(
        m.authenticate(key.expose_secret(), &none(), None)
            .await
            .is_err()
    );
    assert_eq!(m.usage().pending(), 0);
}

#[tokio::test]
async fn usage_flushes_from_the_verify_path_once_per_interval() {
    let f = fixture();
    let m = f.manager.usage_flush_interval(Duration::minutes(1));
    let (key, s) = m
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    m.authenticate(key.expose_secret(), &none(), None)
        .await
        .unwrap(); // first: flushes
    assert_eq!(m.record(s.id).await.unwrap().usage.day_count, 1);
    m.authenticate(key.expose_secret(), &none(), None)
        .await
        .unwrap();
    f.clock.advance(Duration::seconds(59));
    m.authenticate(key.expose_secret(), &none(), None)
        .await
        .unwrap();
    assert_eq!(
        m.record(s.id).await.unwrap().usage.day_count,
        1,
        "flushed before the interval"
    );
    f.clock.advance(Duration::seconds(1));
    m.authenticate(key.expose_secret(), &none(), None)
        .await
        .unwrap();
    assert_eq!(
        m.record(s.id).await.unwrap().usage.day_count,
        4,
        "not flushed at the interval"
    );
    assert_eq!(m.usage().pending(), 0);
}

#[tokio::test]
async fn a_failed_flush_keeps_the_counts() {
    let store = NetStore::new(std::time::Duration::ZERO);
    let f = fixture_with(verifier(), store.clone());
    let m = f.manager.usage_flush_interval(Duration::days(1));
    let (key, s) = m
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    for _ in 0..5 {
        m.authenticate(key.expose_secret(), &none(), None)
            .await
            .unwrap();
    }
    store.set_failing(true);
    assert_eq!(m.flush().await.unwrap_err().code(), "STORE_UNAVAILABLE");
    assert_eq!(m.shutdown().await.unwrap_err().code(), "STORE_UNAVAILABLE");
    assert_eq!(m.usage().pending(), 4);
    store.set_failing(false);
    m.shutdown().await.unwrap();
    assert_eq!(m.record(s.id).await.unwrap().usage.day_count, 5);
}

fn assert_no_secret(events: &[AuditEvent], key: &ApiKey) {
    // Layout-independent: the public id is 11 characters, so any 20-character
    // window of the key body in an event would be secret material.
    let text = key.expose_secret();
    let body = &text[key.prefix().len()..];
    for e in events {
        for rendered in [
            format!("{e:?}"),
            e.to_string(),
            serde_json::to_string(e).unwrap(),
        ] {
            for w in 0..=body.len() - 20 {
                assert!(
                    !rendered.contains(&body[w..w + 20]),
                    "key material in audit event: {rendered}"
                );
            }
        }
    }
}

#[tokio::test]
async fn management_events_carry_actor_reason_and_never_the_secret() {
    let f = fixture();
    let m = &f.manager;
    let admin = Actor::new("admin_9").reason("ticket 42");
    let (key, s) = m
        .create(NewKey::new("kwi_sk_").owner("u1"), &admin)
        .await
        .unwrap();
    m.update(s.id, KeyUpdate::new().scopes(["read"]).name("n"), &admin)
        .await
        .unwrap();
    m.disable(s.id, &admin).await.unwrap();
    m.enable(s.id, &admin).await.unwrap();
    let (k2, s2) = m
        .rotate(s.id, Rotation::with_grace(Duration::hours(1)), &admin)
        .await
        .unwrap();
    m.revoke(s2.id, "compromised", &admin).await.unwrap();
    m.delete(s.id, &admin).await.unwrap();
    let events = f.audit.events();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "created", "updated", "disabled", "enabled", "rotated", "revoked", "deleted"
        ]
    );
    assert_eq!(
        events[1].kind,
        AuditKind::Updated {
            fields: vec!["name", "scopes"]
        }
    );
    for e in &events {
        assert_eq!(e.at, T0);
        assert_eq!(e.owner.as_deref(), Some("u1"));
        assert_eq!(e.actor.as_deref(), Some("admin_9"));
    }
    assert_eq!(events[0].reason.as_deref(), Some("ticket 42"));
    assert_eq!(events[5].reason.as_deref(), Some("compromised"));
    assert_eq!(events[5].key_id, Some(s2.id));
    assert_no_secret(&events, &key);
    assert_no_secret(&events, &k2);
}

#[tokio::test]
async fn pre_tag_rejections_are_counted_and_sampled_post_tag_failures_each_logged() {
    let store = NetStore::new(std::time::Duration::ZERO);
    let f = fixture_with(verifier(), store.clone());
    let m = f.manager.rejection_sample_interval(Duration::minutes(1));
    let (key, s) = m
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    f.audit.take();
    let text = key.expose_secret().to_owned();
    let mut typo = text.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    let other =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap());
    let (forged, _) = other.issue(NewKey::new("sk_live_"), T0).unwrap();
    let calls = store.calls.load(Ordering::SeqCst);
    let mut n = 0u64;
    for i in 0..1000 {
        let junk: &str = match i % 5 {
            0 => "",
            1 => "not a key",
            2 => &typo,
            3 => forged.expose_secret(),
            _ => "zz_live_0000",
        };
        assert!(
            m.authenticate(junk, &none(), None)
                .await
                .unwrap_err()
                .is_unauthenticated()
        );
        n += 1;
    }
    assert_eq!(
        store.calls.load(Ordering::SeqCst),
        calls,
        "pre-tag rejections reached the store"
    );
    let sampled = |events: &[AuditEvent]| -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                AuditKind::RejectionsSampled { counts } => Some(counts.iter().map(|c| c.1).sum()),
                _ => None,
            })
            .collect()
    };
    // The first rejection is reported at once; the rest wait for the interval.
    assert_eq!(sampled(&f.audit.events()), vec![1]);
    f.clock.advance(Duration::minutes(1));
    // In a flood the clock is read every 64th rejection of a reason, so the
    // next summary comes within 64 more rejections.
    let mut extra = 0;
    while sampled(&f.audit.events()).len() < 2 {
        m.authenticate("junk", &none(), None).await.unwrap_err();
        n += 1;
        extra += 1;
        assert!(
            extra <= 64,
            "no summary within 64 rejections after the interval"
        );
    }
    let events = f.audit.take();
    assert_eq!(sampled(&events), vec![1, n - 1]);
    assert_eq!(
        events.len(),
        2,
        "pre-tag rejections must not emit one event each"
    );
    let AuditKind::RejectionsSampled { counts } = &events[1].kind else {
        panic!()
    };
    for reason in ["missing", "length", "checksum", "forged"] {
        assert!(
            counts.iter().any(|(r, c)| *r == reason && *c > 0),
            "{reason} not counted: {counts:?}"
        );
    }

    // Post-tag failures: one event each, with the key id.
    let (unknown, _) = verifier().issue(NewKey::new("sk_live_"), T0).unwrap();
    for _ in 0..3 {
        m.authenticate(unknown.expose_secret(), &none(), None)
            .await
            .unwrap_err();
    }
    m.authenticate(&text, &Requirement::scope("admin").unwrap(), None)
        .await
        .unwrap_err();
    m.disable(s.id, &Actor::system()).await.unwrap();
    m.authenticate(&text, &none(), None).await.unwrap_err();
    let failed: Vec<(Option<KeyId>, &str)> = f
        .audit
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            AuditKind::VerificationFailed { code } => Some((e.key_id, code)),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            (Some(unknown.id()), "INVALID_API_KEY"),
            (Some(unknown.id()), "INVALID_API_KEY"),
            (Some(unknown.id()), "INVALID_API_KEY"),
            (Some(s.id), "INSUFFICIENT_SCOPE"),
            (Some(s.id), "DISABLED_API_KEY"),
        ]
    );
    assert_no_secret(&f.audit.events(), &key);
    // Shutdown reports what was counted since the last summary.
    m.authenticate("junk", &none(), None).await.unwrap_err();
    f.audit.take();
    m.shutdown().await.unwrap();
    assert_eq!(sampled(&f.audit.events()), vec![1]);
}

#[cfg(feature = "tracing")]
#[test]
fn tracing_sink_accepts_events() {
    let sink = TracingSink;
    sink.record(&AuditEvent::new(T0, AuditKind::Created));
    sink.record(&AuditEvent::new(
        T0,
        AuditKind::VerificationFailed {
            code: "EXPIRED_API_KEY",
        },
    ));
    let _ = std::sync::Arc::new(sink);
}
