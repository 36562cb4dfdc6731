//! Usage counters (batched, UTC days from the manual clock) and audit
//! events (management events, sampled pre-tag rejections, one event per
//! post-tag failure, never a secret).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use apikey::*;
use std::time::Duration;
use support::netstore::NetStore;
use support::{T0, fixture, fixture_with, verifier};

fn none() -> Requirement {
    Requirement::none()
}

#[tokio::test]
async fn daily_and_monthly_counters_follow_utc_days() {
    let f = fixture();
    let m = f.manager;
    let (key, s) = m
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    // T0 is 2026-03-01 12:00 UTC.
    for _ in 0..3 {
        m.authenticate(key.expose_secret(), &none(), None)
            .await
            .unwrap();
    }
    f.clock
        .set("2026-03-02T23:59:59Z".parse::<Timestamp>().unwrap());
    for _ in 0..2 {
        m.authenticate(key.expose_secret(), &none(), None)
            .await
            .unwrap();
    }
    assert_eq!(m.usage().pending(), 5);
    assert_eq!(m.flush().await.unwrap(), 5);
    let g = m.get(s.id).await.unwrap();
    assert_eq!((g.requests_today, g.requests_this_month), (2, 5));
    assert_eq!(
        g.last_used_at,
        Some("2026-03-02T23:59:59Z".parse::<Timestamp>().unwrap())
    );
    f.clock
        .set("2026-04-01T00:00:00Z".parse::<Timestamp>().unwrap());
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
async fn verification_never_writes_usage_itself() {
    let f = fixture();
    let m = f.manager;
    let (key, s) = m
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    for _ in 0..3 {
        m.authenticate(key.expose_secret(), &none(), None)
            .await
            .unwrap();
        f.clock.advance(Duration::from_secs(3_600));
    }
    assert_eq!(
        m.usage_of(s.id).await.unwrap().today,
        0,
        "the request path wrote usage"
    );
    assert_eq!(m.usage().pending(), 3);
    assert_eq!(m.flush().await.unwrap(), 3);
    assert_eq!(m.usage_of(s.id).await.unwrap().today, 3);
    assert_eq!(m.usage().pending(), 0);
}

/// A flush whose future is dropped at an await point (a timeout, a client
/// disconnect) loses nothing and doubles nothing: the batch is sent again,
/// with the same flush id, by the next flush.
#[tokio::test]
async fn a_cancelled_flush_loses_nothing() {
    let store = NetStore::new(std::time::Duration::from_millis(20));
    let f = fixture_with(verifier(), store.clone());
    let m = f.manager;
    let (key, s) = m
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    store.set_latency(std::time::Duration::ZERO);
    for _ in 0..500 {
        m.authenticate(key.expose_secret(), &none(), None)
            .await
            .unwrap();
    }
    assert_eq!(m.usage().pending(), 500);
    store.set_latency(std::time::Duration::from_millis(20));
    // Cancelled while waiting on the store, several times.
    for _ in 0..3 {
        let r = tokio::time::timeout(std::time::Duration::from_millis(5), m.flush()).await;
        assert!(r.is_err(), "the flush should still have been waiting");
        assert_eq!(m.usage().pending(), 500, "a cancelled flush lost counts");
    }
    // More uses arrive meanwhile; they go into a new batch.
    store.set_latency(std::time::Duration::ZERO);
    for _ in 0..7 {
        m.authenticate(key.expose_secret(), &none(), None)
            .await
            .unwrap();
    }
    assert_eq!(m.flush().await.unwrap(), 507);
    assert_eq!(m.usage().pending(), 0);
    assert_eq!(m.usage_of(s.id).await.unwrap().today, 507);
}

/// Cancelled after the store applied the batch but before the recorder
/// saw the answer: the retry carries the same id, the store answers
/// `AlreadyApplied`, and nothing is counted twice.
#[tokio::test]
async fn a_flush_cancelled_after_the_commit_counts_once() {
    use apikey::{FlushOutcome, KeyStore, KeyView, StoreError, UsageBatch, UsageStore};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Applies the batch, then (once) hangs before answering.
    struct LateAnswer {
        inner: Arc<MemoryStore>,
        hang: AtomicBool,
    }
    impl KeyStore for LateAnswer {
        async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
            self.inner.fetch(id).await
        }
    }
    impl UsageStore for LateAnswer {
        async fn record_usage(&self, batch: &UsageBatch) -> Result<FlushOutcome, StoreError> {
            let out = self.inner.record_usage(batch).await;
            if self.hang.swap(false, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            out
        }
        async fn usage(
            &self,
            id: KeyId,
            days: std::ops::Range<time::Date>,
        ) -> Result<Vec<(time::Date, u64)>, StoreError> {
            self.inner.usage(id, days).await
        }
    }
    let f = fixture();
    let (key, s) = f
        .manager
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    for _ in 0..9 {
        f.manager
            .authenticate(key.expose_secret(), &none(), None)
            .await
            .unwrap();
    }
    let store = LateAnswer {
        inner: Arc::clone(f.manager.store()),
        hang: AtomicBool::new(true),
    };
    let usage = f.manager.usage();
    let r = tokio::time::timeout(
        std::time::Duration::from_millis(20),
        usage.flush(&store, T0),
    )
    .await;
    assert!(r.is_err());
    assert_eq!(f.manager.usage_of(s.id).await.unwrap().today, 9);
    assert_eq!(usage.pending(), 9, "the unacknowledged batch is kept");
    assert_eq!(usage.flush(&store, T0).await.unwrap(), 9);
    assert_eq!(usage.pending(), 0);
    assert_eq!(
        f.manager.usage_of(s.id).await.unwrap().today,
        9,
        "a replayed batch was counted twice"
    );
}

#[tokio::test]
async fn a_failed_flush_keeps_the_counts() {
    let store = NetStore::new(std::time::Duration::ZERO);
    let f = fixture_with(verifier(), store.clone());
    let m = f.manager;
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
    assert_eq!(
        m.flush().await.unwrap_err().code().as_str(),
        "STORE_UNAVAILABLE"
    );
    assert_eq!(
        m.shutdown().await.unwrap_err().code().as_str(),
        "STORE_UNAVAILABLE"
    );
    assert_eq!(m.usage().pending(), 5);
    store.set_failing(false);
    m.shutdown().await.unwrap();
    assert_eq!(m.usage_of(s.id).await.unwrap().today, 5);
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
        .rotate(
            s.id,
            Rotation::with_grace(Duration::from_secs(3_600)),
            &admin,
        )
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
    let m = f
        .manager
        .with_rejection_sample_interval(Duration::from_secs(60));
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
    f.clock.advance(Duration::from_secs(60));
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
            (Some(s.id), "DISABLED_API_KEY"),
        ],
        "a scope failure is an authenticated request: counted, not one event"
    );
    assert_no_secret(&f.audit.events(), &key);
    // Shutdown reports what was counted since the last summary: the scope
    // failure and one more junk key.
    m.authenticate("junk", &none(), None).await.unwrap_err();
    f.audit.take();
    m.shutdown().await.unwrap();
    assert_eq!(sampled(&f.audit.events()), vec![2]);
    let events = f.audit.events();
    let AuditKind::RejectionsSampled { counts } = &events[0].kind else {
        panic!("a summary")
    };
    assert!(counts.contains(&("insufficient_scope", 1)), "{counts:?}");
}

/// Security review: an event's `Display` (the documented one-line log form,
/// `println!("{event}")`) printed the owner and the actor as they were. An
/// owner comes from the host or an import file (a legacy export), and
/// neither the manager nor the import checks its characters: a newline
/// forged a second log line, an ANSI escape rewrote the terminal.
#[tokio::test]
async fn an_events_display_is_one_line_whatever_owner_and_actor_hold() {
    let f = fixture();
    let m = &f.manager;
    let owner = "u1\n2026-03-01T12:00:00Z revoked key=AAAAAAAAAAA owner=admin\x1b[2K\u{202e}";
    let actor = Actor::new("ops\r\n\x1b]0;pwned\x07").reason("line\nbreak");
    let (_, s) = m
        .create(NewKey::new("sk_live_").owner(owner), &actor)
        .await
        .unwrap();
    m.revoke(s.id, "leaked\n", &actor).await.unwrap();
    let events = f.audit.events();
    assert_eq!(events.len(), 2);
    for e in &events {
        // The event itself keeps the values exactly.
        assert_eq!(e.owner.as_deref(), Some(owner));
        let line = e.to_string();
        assert!(
            !line.chars().any(|c| c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)),
            "{line:?}"
        );
        assert!(line.contains("owner=u1\\n2026"), "{line:?}");
    }
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
