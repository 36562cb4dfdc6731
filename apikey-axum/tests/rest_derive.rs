//! The management REST contract over real HTTP: derived keys (narrower
//! children that die with their parent, credit budgets carved from it).
#![allow(clippy::unwrap_used)]

mod common;

use apikey::NewKey;
use apikey::Timestamp;
use common::*;

#[tokio::test]
async fn derive_gives_a_narrower_child_that_dies_with_its_parent() {
    let s = start().await;
    let k = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"app","permissions":["tasks:read"]}"#,
    )
    .await;
    let path = format!("/v1/api-keys/{}", k["id"].as_str().unwrap());
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{path}/derive"),
        Some(r#"{"name":"agent"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let child = r.json();
    assert_eq!(child["permissions"], serde_json::json!(["tasks:read"]));
    let child_key = child["key"].as_str().unwrap().to_owned();
    let tasks =
        |key: String| async move { call(s.addr, As::Key(&key), "GET", "/v1/tasks", None).await };
    assert_eq!(tasks(child_key.clone()).await.status, 200);
    // Broader than the parent: refused.
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{path}/derive"),
        Some(r#"{"name":"agent","permissions":["tasks:write"]}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "POLICY_VIOLATION".into()),
        "{}",
        r.body
    );
    // The parent revoked: the child stops working.
    let r = call(s.addr, As::User("alice"), "DELETE", &path, None).await;
    assert!(r.status < 300, "{}", r.body);
    let t = tasks(child_key).await;
    assert_eq!((t.status, t.code()), (401, "REVOKED_API_KEY".into()));
}

/// Issue 20 over REST: a derived key's credit budget is carved from its
/// parent's key balance (moved, never minted); a budget above the parent's
/// balance is 409 `INVALID_STATE` with nothing written.
#[tokio::test]
async fn derive_carves_a_credit_budget_from_the_parent() {
    use apikey::limits::{CreditAccount, CreditBalances};
    let s = start().await;
    let k = create(s.addr, As::User("alice"), r#"{"name":"app"}"#).await;
    let parent: apikey::KeyId = k["id"].as_str().unwrap().parse().unwrap();
    let limits = s.manager.authenticator().limits();
    limits
        .set_credits(CreditAccount::Key(parent.as_u64()), 10, None)
        .await
        .unwrap();
    let left = |id: apikey::KeyId| async move {
        limits
            .credits(CreditAccount::Key(id.as_u64()))
            .await
            .unwrap()
            .map(|c| c.remaining)
    };
    let path = format!("/v1/api-keys/{parent}/derive");
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &path,
        Some(r#"{"name":"agent","credits":3}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let child: apikey::KeyId = r.json()["id"].as_str().unwrap().parse().unwrap();
    assert_eq!((left(parent).await, left(child).await), (Some(7), Some(3)));
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &path,
        Some(r#"{"name":"greedy","credits":8}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "INVALID_STATE".into()),
        "{}",
        r.body
    );
    assert_eq!(left(parent).await, Some(7));
    // Someone else's key: 404, and nothing moves.
    let r = call(
        s.addr,
        As::User("bob"),
        "POST",
        &path,
        Some(r#"{"name":"theft","credits":1}"#),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(left(parent).await, Some(7));
}

/// Without the credits router there is no budget to carve: a derive that
/// asks for one is 400 naming `credits`, and nothing is created.
#[tokio::test]
async fn derive_with_credits_needs_the_credits_router() {
    struct Alice;
    impl apikey_axum::ResolveCaller for Alice {
        async fn resolve(
            &self,
            _parts: &http::request::Parts,
        ) -> Result<apikey_axum::Caller, apikey_axum::ApiError> {
            Ok(apikey_axum::Caller::user("alice"))
        }
    }
    let s = start().await;
    let k = create(s.addr, As::User("alice"), r#"{"name":"app"}"#).await;
    let app =
        apikey_axum::ManageApi::new(std::sync::Arc::clone(&s.manager), Alice, config()).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let path = format!("/v1/api-keys/{}/derive", k["id"].as_str().unwrap());
    let r = call(
        addr,
        As::User("alice"),
        "POST",
        &path,
        Some(r#"{"name":"agent","credits":3}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (400, "INVALID_REQUEST".into()),
        "{}",
        r.body
    );
    assert_eq!(
        r.json()["error"]["details"]["field"],
        "credits",
        "{}",
        r.body
    );
    let r = call(
        addr,
        As::User("alice"),
        "POST",
        &path,
        Some(r#"{"name":"agent"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn a_key_caller_derives_without_naming_an_expiry() {
    let s = start().await;
    let bound = T0 + std::time::Duration::from_secs(30 * 86_400);
    let manage = management_key(
        &s,
        "alice",
        NewKey::new("sk_live_")
            .scopes(["keys:manage", "tasks:read"])
            .expires_at(bound),
    )
    .await;
    let k = manage.expose_secret();
    let parent = create(
        s.addr,
        As::Key(k),
        r#"{"name":"parent","permissions":["tasks:read"],"expires_at":"2026-03-10T00:00:00Z"}"#,
    )
    .await;
    let r = call(
        s.addr,
        As::Key(k),
        "POST",
        &format!("/v1/api-keys/{}/derive", parent["id"].as_str().unwrap()),
        Some(r#"{"name":"agent"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let child = r.json();
    let expires = child["expires_at"]
        .as_str()
        .unwrap()
        .parse::<apikey::Timestamp>()
        .unwrap();
    assert!(
        expires <= "2026-03-10T00:00:00Z".parse::<Timestamp>().unwrap(),
        "{child}"
    );
}
