//! Security review: hostile and failure cases of the management API.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use apikey::*;
use common::*;

/// An audit sink that makes the store fail right after a rotation commits
/// (the `rotated` event follows the commit), as a database dropping the
/// connection between the rotation and the next statement would.
struct FailAfterRotation {
    store: Mutex<Option<Store>>,
}

impl AuditSink for FailAfterRotation {
    fn record(&self, event: &AuditEvent) {
        if event.kind.as_str() == "rotated"
            && let Some(s) = self.store.lock().unwrap().as_ref()
        {
            s.set_failing(true);
        }
    }
}

/// The full key of a rotation is shown once, in the `201`: a failed read
/// after the rotation committed must not throw it away (the successor would
/// be live with a secret nobody holds, and the old key would stop at the
/// end of its grace period).
#[tokio::test]
async fn a_committed_rotation_always_answers_the_new_key() {
    let sink = Arc::new(FailAfterRotation {
        store: Mutex::new(None),
    });
    let hook = Arc::clone(&sink);
    let s = start_custom(config(), move |m| m.with_audit_sink(hook), true).await;
    *sink.store.lock().unwrap() = Some(Arc::clone(&s.store));
    let k = create(s.addr, As::User("alice"), r#"{"name":"ci"}"#).await;
    let id = k["id"].as_str().unwrap().to_owned();
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("/v1/api-keys/{id}/rotate"),
        Some(r#"{"grace_period_seconds":3600}"#),
    )
    .await;
    s.store.set_failing(false);
    // The rotation is committed either way.
    let old = s.manager.get(id.parse().unwrap()).await.unwrap();
    let successor = old.rotated_to.expect("the rotation committed");
    assert_eq!(r.status, 201, "{}", r.body);
    let body = r.json();
    assert_eq!(body["id"], successor.to_string());
    assert_eq!(body["replaces"], id);
    assert_eq!(body["grace_ends_at"], "2026-03-01T13:00:00Z");
    let secret = body["key"].as_str().unwrap();
    s.manager
        .authenticate(secret, &Requirement::none(), None)
        .await
        .unwrap();
}

/// Hostile bodies, queries and headers: each is refused with a 4xx (never
/// a 5xx, never a panic), and none changes the key.
#[tokio::test]
async fn hostile_bodies_queries_and_headers_are_refused_cleanly() {
    let s = start().await;
    let k = create(s.addr, As::User("alice"), r#"{"name":"kept"}"#).await;
    let id = k["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/api-keys/{id}");
    let rotate = format!("{path}/rotate");
    let cases: Vec<(&str, String, String)> = vec![
        // Duplicate fields: refused, never "last one wins".
        (
            "POST",
            "/v1/api-keys".into(),
            r#"{"name":"a","name":"b"}"#.into(),
        ),
        ("PATCH", path.clone(), r#"{"name":"a","name":"b"}"#.into()),
        (
            "PATCH",
            path.clone(),
            r#"{"expires_at":null,"expires_at":null}"#.into(),
        ),
        // Numbers out of range or of the wrong kind.
        (
            "POST",
            rotate.clone(),
            r#"{"grace_period_seconds":9223372036854775808}"#.into(),
        ),
        (
            "POST",
            rotate.clone(),
            r#"{"grace_period_seconds":-9223372036854775808}"#.into(),
        ),
        (
            "POST",
            rotate.clone(),
            r#"{"grace_period_seconds":1.5}"#.into(),
        ),
        (
            "POST",
            rotate.clone(),
            r#"{"grace_period_seconds":1e400}"#.into(),
        ),
        // Times at and past the ends of the supported range, any offset.
        (
            "PATCH",
            path.clone(),
            r#"{"expires_at":"9999-12-31T23:59:59-23:59"}"#.into(),
        ),
        (
            "PATCH",
            path.clone(),
            r#"{"expires_at":"2255-06-05T23:47:34.740992Z"}"#.into(),
        ),
        (
            "PATCH",
            path.clone(),
            r#"{"expires_at":"0000-01-01T00:00:00+23:59"}"#.into(),
        ),
        (
            "POST",
            rotate.clone(),
            r#"{"expires_at":"2026-03-01T12:00:00+00:01"}"#.into(),
        ),
        // Deep nesting and odd JSON.
        (
            "PATCH",
            path.clone(),
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        ),
        ("PATCH", path.clone(), "{\"name\":\"\\ud800\"}".into()),
        ("PATCH", path.clone(), "null".into()),
        (
            "PATCH",
            path.clone(),
            r#"{"ip_allowlist":["0.0.0.0/0","::/0","10.0.0.1/-1"]}"#.into(),
        ),
    ];
    for (method, p, body) in &cases {
        let r = call(s.addr, As::User("alice"), method, p, Some(body)).await;
        assert!(
            (400..500).contains(&r.status),
            "{method} {p} {body:.60}: {} {}",
            r.status,
            r.body
        );
    }
    for q in [
        "?limit=0",
        "?limit=18446744073709551616",
        "?limit=-1",
        "?limit=%",
        "?limit=%zz",
        "?cursor=%00",
        "?owner=bob",
        "?owner=alice&owner=bob",
        "?status=active%00",
        "?expiring_within_days=65536",
        "?%ff=1",
    ] {
        let r = call(
            s.addr,
            As::User("alice"),
            "GET",
            &format!("/v1/api-keys{q}"),
            None,
        )
        .await;
        assert!(
            (400..500).contains(&r.status),
            "{q}: {} {}",
            r.status,
            r.body
        );
    }
    // Non-UTF-8, huge and repeated headers on a state-changing session call.
    let long = "x".repeat(8_000);
    let many: Vec<(&str, &str)> = (0..90).map(|_| ("Origin", "http://evil.example")).collect();
    let header_cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("Origin", "http://\u{e9}vil.example")],
        vec![("Origin", long.as_str())],
        vec![("Origin", "null")],
        many,
    ];
    for extra in &header_cases {
        let r = call_with(
            s.addr,
            As::UserNoCsrf("alice"),
            "PATCH",
            &path,
            Some(r#"{"name":"changed"}"#),
            &[&[("x-apikey-csrf", "1")][..], extra].concat(),
        )
        .await;
        assert!((400..500).contains(&r.status), "{}: {}", r.status, r.body);
    }
    // Key callers: odd Authorization schemes and values.
    for auth in [
        "Bearer",
        "Bearer ",
        "bearer sk_live_",
        "Basic Zm9vOmJhcg==",
        "Bearer sk_live_\u{e9}",
        "Bearer sk_live_a, Bearer sk_live_b",
    ] {
        let r = call_with(
            s.addr,
            As::Anonymous,
            "GET",
            "/v1/api-keys",
            None,
            &[("Authorization", auth)],
        )
        .await;
        assert!(
            (400..500).contains(&r.status),
            "{auth}: {} {}",
            r.status,
            r.body
        );
    }
    let kept = s.manager.get(id.parse().unwrap()).await.unwrap();
    assert_eq!(kept.name, "kept");
    assert_eq!(kept.expires_at, None);
    assert!(kept.ip_allowlist.is_empty());
    assert_eq!(kept.rotated_to, None);
}
