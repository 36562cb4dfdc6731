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
