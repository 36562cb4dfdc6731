//! The management REST contract over real HTTP, continued: the lifecycle
//! routes taking effect, sessions and CSRF, limits, the call log, the page,
//! credits, approval and rotation chains (derived keys: `rest_derive.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use apikey::NewKey;
use common::*;

#[tokio::test]
async fn the_owner_limit_holds_under_concurrent_creates() {
    let s = start().await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"name":"key {i}"}}"#);
            call(addr, As::User("alice"), "POST", "/v1/api-keys", Some(&body)).await
        }));
    }
    let mut created = 0;
    let mut refused = 0;
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            201 => created += 1,
            409 => {
                assert_eq!(a.code(), "KEY_LIMIT_REACHED");
                refused += 1;
            }
            other => panic!("{other}: {}", a.body),
        }
    }
    assert_eq!((created, refused), (3, 9));
    assert_eq!(s.manager.list("alice").await.unwrap().len(), 3);
    // Revoking one frees a place.
    let first = s.manager.list("alice").await.unwrap()[0].id;
    call(
        s.addr,
        As::User("alice"),
        "DELETE",
        &format!("/v1/api-keys/{first}"),
        None,
    )
    .await;
    create(s.addr, As::User("alice"), r#"{"name":"after revoke"}"#).await;
}

#[tokio::test]
async fn disable_enable_rotate_revoke_and_delete_take_effect_at_once() {
    let s = start().await;
    let k = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"app","permissions":["tasks:read"]}"#,
    )
    .await;
    let key = k["key"].as_str().unwrap().to_owned();
    let path = format!("/v1/api-keys/{}", k["id"].as_str().unwrap());
    let tasks =
        |key: String| async move { call(s.addr, As::Key(&key), "GET", "/v1/tasks", None).await };
    assert_eq!(tasks(key.clone()).await.status, 200);

    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{path}/disable"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("disabled"))
    );
    let t = tasks(key.clone()).await;
    assert_eq!((t.status, t.code()), (401, "DISABLED_API_KEY".into()));
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{path}/enable"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("active"))
    );
    assert_eq!(tasks(key.clone()).await.status, 200);

    // Rotation: the new key once, the old one works for the grace period.
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{path}/rotate"),
        Some(r#"{"grace_period_seconds":3600}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let rotated = r.json();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(rotated["replaces"], k["id"]);
    assert_eq!(rotated["grace_ends_at"], "2026-03-01T13:00:00Z");
    assert_eq!(rotated["permissions"], serde_json::json!(["tasks:read"]));
    assert_eq!(tasks(key.clone()).await.status, 200);
    assert_eq!(tasks(new_key.clone()).await.status, 200);
    let old = call(s.addr, As::User("alice"), "GET", &path, None)
        .await
        .json();
    assert_eq!(
        (old["status"].as_str(), old["rotated_to"].clone()),
        (Some("rotation_grace"), rotated["id"].clone())
    );
    s.clock.advance(std::time::Duration::from_secs(3_600));
    assert_eq!(tasks(key.clone()).await.code(), "EXPIRED_API_KEY");
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{path}/rotate"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE".into()));

    // DELETE revokes: "all requests with this key will fail immediately".
    let new_path = format!("/v1/api-keys/{}", rotated["id"].as_str().unwrap());
    let r = call(s.addr, As::User("alice"), "DELETE", &new_path, None).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("revoked"))
    );
    assert_eq!(tasks(new_key.clone()).await.code(), "REVOKED_API_KEY");
    // The key says when and why it was revoked; a live key says neither.
    let details = call(s.addr, As::User("alice"), "GET", &new_path, None)
        .await
        .json();
    assert_eq!(
        details["revocation_reason"].as_str(),
        Some("revoked through the management API")
    );
    assert_eq!(
        details["revoked_at"].as_str(),
        Some(apikey::Clock::now(&s.clock).to_string().as_str())
    );
    assert!(rotated["revoked_at"].is_null() && rotated["revocation_reason"].is_null());
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{new_path}/enable"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "INVALID_STATE".into()));
    // Permanent deletion only when asked for.
    let r = call(
        s.addr,
        As::User("alice"),
        "DELETE",
        &format!("{new_path}?permanent=true"),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        call(s.addr, As::User("alice"), "GET", &new_path, None)
            .await
            .status,
        404
    );
    assert_eq!(tasks(new_key).await.code(), "INVALID_API_KEY");
}

#[tokio::test]
async fn cookie_sessions_need_the_csrf_header_and_their_own_origin() {
    let s = start().await;
    let r = call(
        s.addr,
        As::UserNoCsrf("alice"),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!((r.status, r.field()), (400, "x-apikey-csrf".into()));
    let r = call_with(
        s.addr,
        As::UserNoCsrf("alice"),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"x"}"#),
        &[("x-apikey-csrf", "1"), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!((r.status, r.field()), (400, "origin".into()));
    assert!(s.manager.list("alice").await.unwrap().is_empty());
    // Reads need no header.
    assert_eq!(
        call(s.addr, As::UserNoCsrf("alice"), "GET", "/v1/api-keys", None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn no_caller_is_401_and_a_bad_key_is_its_own_code() {
    let s = start().await;
    let r = call(s.addr, As::Anonymous, "GET", "/v1/api-keys", None).await;
    assert_eq!((r.status, r.code()), (401, "MISSING_API_KEY".into()));
    assert!(r.header("www-authenticate").is_some());
    let r = call(s.addr, As::Key("sk_live_nope"), "GET", "/v1/api-keys", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["success"], false);
}

#[tokio::test]
async fn rate_limit_answers_the_seed_body_and_headers() {
    let s = start().await;
    let k = create(s.addr, As::User("alice"), r#"{"name":"app"}"#).await;
    let r = call(
        s.addr,
        As::Key(k["key"].as_str().unwrap()),
        "GET",
        "/v1/rate-limit",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b = r.json();
    assert_eq!(b["limit"], 100);
    assert_eq!(b["remaining"], 99);
    let reset = b["reset"].as_i64().unwrap();
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
    assert_eq!(
        r.header("x-ratelimit-reset"),
        Some(reset.to_string().as_str())
    );
    let at: apikey::Timestamp = b["reset_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(at.as_unix_secs(), reset);
    let r = call(s.addr, As::Anonymous, "GET", "/v1/rate-limit", None).await;
    assert_eq!((r.status, r.code()), (401, "MISSING_API_KEY".into()));
}

#[tokio::test]
async fn every_call_is_logged_with_its_actor_and_no_key_reaches_a_log() {
    let s = start().await;
    let k = create(s.addr, As::User("alice"), r#"{"name":"app"}"#).await;
    let key = k["key"].as_str().unwrap().to_owned();
    let id = k["id"].as_str().unwrap().to_owned();
    call(s.addr, As::User("alice"), "GET", "/v1/api-keys", None).await;
    call(
        s.addr,
        As::User("bob"),
        "GET",
        &format!("/v1/api-keys/{id}"),
        None,
    )
    .await;
    call(
        s.addr,
        As::User("alice"),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"<x>"}"#),
    )
    .await;
    call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("/v1/api-keys/{id}/disable"),
        None,
    )
    .await;
    let calls = s.calls.lock().unwrap().clone();
    let summary: Vec<(Option<&str>, &str, u16)> = calls
        .iter()
        .map(|c| (c.actor.as_deref(), c.action, c.status))
        .collect();
    assert_eq!(
        summary,
        [
            (Some("user:alice"), "create", 201),
            (Some("user:alice"), "list", 200),
            (Some("user:bob"), "get", 404),
            (Some("user:alice"), "create", 400),
            (Some("user:alice"), "disable", 200),
        ]
    );
    assert_eq!(calls[2].key_id.as_deref(), Some(id.as_str()));
    let events = s.audit.events();
    let kinds: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.actor.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("created", Some("user:alice")),
            ("disabled", Some("user:alice"))
        ]
    );
    let everything = format!(
        "{calls:?}{events:?}{}",
        serde_json::to_string(&calls).unwrap()
    );
    assert!(!everything.contains(&key), "a log holds the full key");
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_no_inline_script() {
    let s = start_with(config().title("<script>alert('title')</script>")).await;
    let page = call(s.addr, As::Anonymous, "GET", "/keys", None).await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert!(
        !page.body.contains("<script>alert"),
        "the title was injected"
    );
    assert!(page.body.contains("&lt;script&gt;"));
    // Every script tag loads a file from the router.
    for tag in page.body.split("<script").skip(1) {
        let tag = &tag[..tag.find('>').unwrap()];
        assert!(tag.contains("src=\""), "inline script: {tag}");
        let inline_body = page.body.split(tag).nth(1).unwrap();
        assert!(inline_body.starts_with("></script>"));
    }
    for asset in ["/keys/keys.js", "/keys/keys.css", "/keys/config.json"] {
        let a = call(s.addr, As::Anonymous, "GET", asset, None).await;
        assert_eq!(a.status, 200, "{asset}");
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    }
    let js = call(s.addr, As::Anonymous, "GET", "/keys/keys.js", None)
        .await
        .body;
    assert!(!js.contains("innerHTML"), "the script writes HTML");
    assert!(!js.contains("eval("));
    let cfg = call(s.addr, As::Anonymous, "GET", "/keys/config.json", None)
        .await
        .json();
    assert_eq!(cfg["scopes"][0]["name"], "tasks:read");
    assert_eq!(cfg["scopes"][0]["description"], "View tasks");
}

#[tokio::test]
async fn only_an_account_admin_sets_credit_limits_per_user_per_api() {
    let s = start().await;
    // Seed 002: "a user can have 10K on REST API and 10K on Batch API".
    for api in ["rest", "batch"] {
        let r = call(
            s.addr,
            As::Admin,
            "PUT",
            &format!("/v1/credits/bob/{api}"),
            Some(r#"{"limit":10000}"#),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["remaining"], 10_000);
        assert_eq!(r.json()["refill"], "month");
    }
    let bob = call(
        s.addr,
        As::User("bob"),
        "GET",
        "/v1/credits/bob/batch",
        None,
    )
    .await
    .json();
    assert_eq!(
        (bob["remaining"].as_u64(), bob["limit"].as_u64()),
        (Some(10_000), Some(10_000))
    );
    let status = apikey::limits::CreditBalances::credits(
        s.manager.authenticator().limits(),
        apikey::limits::CreditAccount::Owner {
            owner: "bob",
            api: "rest",
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status.remaining, 10_000);
    // A user cannot raise its own limit, nor see another user's.
    let r = call(
        s.addr,
        As::User("bob"),
        "PUT",
        "/v1/credits/bob/rest",
        Some(r#"{"limit":99999999}"#),
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "owner".into()));
    let r = call(
        s.addr,
        As::User("alice"),
        "GET",
        "/v1/credits/bob/rest",
        None,
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "owner".into()));
    // Outside the account, unknown APIs, bad bodies.
    let r = call(
        s.addr,
        As::Admin,
        "PUT",
        "/v1/credits/carol/rest",
        Some(r#"{"limit":1}"#),
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "owner".into()));
    for (path, body, field) in [
        ("/v1/credits/bob/graphql", r#"{"limit":1}"#, "api"),
        ("/v1/credits/bob/rest", r#"{"limit":-1}"#, "limit"),
        (
            "/v1/credits/bob/rest",
            r#"{"limit":1,"refill":"hourly"}"#,
            "refill",
        ),
        (
            "/v1/credits/bob/rest",
            r#"{"limit":1,"per_key":true}"#,
            "per_key",
        ),
    ] {
        let r = call(s.addr, As::Admin, "PUT", path, Some(body)).await;
        assert_eq!(
            (r.status, r.field()),
            (400, field.into()),
            "{body}: {}",
            r.body
        );
    }
    let bob = call(s.addr, As::User("bob"), "GET", "/v1/credits/bob/rest", None)
        .await
        .json();
    assert_eq!(
        bob["remaining"], 10_000,
        "a refused change changed the balance"
    );
}

fn approval_policy(m: Manager) -> Manager {
    use apikey::{KeyPolicies, KeyPolicy, PolicyRule, PolicyTarget};
    m.with_key_policies(KeyPolicies::new().rule(PolicyRule::new(
        PolicyTarget::OwnerClass("ali".into()),
        KeyPolicy::new().requires_approval(true),
    )))
}

#[tokio::test]
async fn a_plain_user_cannot_approve_its_own_pending_key() {
    let s = start_custom(config(), approval_policy, true).await;
    let created = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"x","permissions":["tasks:read"]}"#,
    )
    .await;
    assert_eq!(created["status"], "disabled", "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let enable = format!("/v1/api-keys/{id}/enable");
    // The owner's own enable is not an approval.
    let r = call(s.addr, As::User("alice"), "POST", &enable, None).await;
    assert_eq!(
        (r.status, r.code(), r.field()),
        (403, "INSUFFICIENT_SCOPE".into(), "status".into()),
        "{}",
        r.body
    );
    // Nor is a management key's (approved by the admin itself first).
    let (manage, m) = s
        .manager
        .create(
            NewKey::new("sk_live_")
                .owner("alice")
                .scopes(["keys:manage", "tasks:read"]),
            &apikey::Actor::system(),
        )
        .await
        .unwrap();
    s.manager
        .enable(m.id, &apikey::Actor::new("user:admin"))
        .await
        .unwrap();
    let r = call(
        s.addr,
        As::Key(manage.expose_secret()),
        "POST",
        &enable,
        None,
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "status".into()), "{}", r.body);
    let stored = s.manager.get(id.parse().unwrap()).await.unwrap();
    assert_eq!(stored.status, apikey::KeyStatus::Disabled);
    assert!(
        stored
            .metadata
            .contains_key(apikey::KeyRecord::PENDING_APPROVAL)
    );
    // The page learns that the key is pending and who may approve it.
    assert_eq!(created["pending"], true, "{created}");
    let list = call(s.addr, As::User("alice"), "GET", "/v1/api-keys", None)
        .await
        .json();
    assert_eq!(list["may_approve"], false);
    let item = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(item["pending"], true);
    let list = call(s.addr, As::Admin, "GET", "/v1/api-keys?owner=alice", None)
        .await
        .json();
    assert_eq!(list["may_approve"], true);
    // The admin's enable approves it.
    let r = call(s.addr, As::Admin, "POST", &enable, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["status"].clone(), r.json()["pending"].clone()),
        ("active".into(), false.into())
    );
}

#[tokio::test]
async fn a_key_cannot_enable_or_widen_a_key_holding_more_than_itself() {
    let s = start_custom(config(), |m| m.with_max_keys_per_owner(20), true).await;
    let system = apikey::Actor::system();
    // K: a live management key with no expiry and no allowlist.
    let k = management_key(
        &s,
        "alice",
        NewKey::new("sk_live_").scopes(["keys:manage", "tasks:read"]),
    )
    .await;
    let k = k.expose_secret();
    // P: holds more than K, expires tomorrow, one address; disabled by the
    // admin after it leaked.
    let (_, p) = s
        .manager
        .create(
            NewKey::new("sk_live_")
                .owner("alice")
                .scopes(["keys:manage", "tasks:read", "tasks:write"])
                .expires_at(T0 + std::time::Duration::from_secs(86_400))
                .allow_ip("203.0.113.7/32".parse().unwrap()),
            &system,
        )
        .await
        .unwrap();
    s.manager.disable(p.id, &system).await.unwrap();
    let before = s.manager.get(p.id).await.unwrap();
    let path = format!("/v1/api-keys/{}", p.id);
    let r = call(s.addr, As::Key(k), "POST", &format!("{path}/enable"), None).await;
    assert_eq!(
        (r.status, r.field()),
        (403, "permissions".into()),
        "{}",
        r.body
    );
    for body in [
        r#"{"expires_at":null}"#,
        r#"{"ip_allowlist":[]}"#,
        r#"{"name":"mine"}"#,
    ] {
        let r = call(s.addr, As::Key(k), "PATCH", &path, Some(body)).await;
        assert_eq!(r.status, 403, "{body}: {}", r.body);
    }
    for (method, p2) in [
        ("POST", format!("{path}/disable")),
        ("DELETE", path.clone()),
        ("DELETE", format!("{path}?permanent=true")),
    ] {
        let r = call(s.addr, As::Key(k), method, &p2, None).await;
        assert_eq!(r.status, 403, "{method} {p2}: {}", r.body);
    }
    let after = s.manager.get(p.id).await.unwrap();
    assert_eq!(after.status, apikey::KeyStatus::Disabled);
    assert_eq!(after.expires_at, before.expires_at);
    assert_eq!(after.ip_allowlist, before.ip_allowlist);
    assert_eq!(after.name, before.name);

    // A key within K's scopes but living longer than an expiring K, or
    // usable from more addresses than a limited K: K may not enable it.
    let (_, q) = s
        .manager
        .create(
            NewKey::new("sk_live_")
                .owner("alice")
                .scopes(["tasks:read"]),
            &system,
        )
        .await
        .unwrap();
    s.manager.disable(q.id, &system).await.unwrap();
    let q_enable = format!("/v1/api-keys/{}/enable", q.id);
    let expiring = management_key(
        &s,
        "alice",
        NewKey::new("sk_live_")
            .scopes(["keys:manage", "tasks:read"])
            .expires_at(T0 + std::time::Duration::from_secs(30 * 86_400)),
    )
    .await;
    let r = call(
        s.addr,
        As::Key(expiring.expose_secret()),
        "POST",
        &q_enable,
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.field()),
        (403, "expires_at".into()),
        "{}",
        r.body
    );
    let local = s
        .manager
        .create(
            NewKey::new("sk_live_")
                .owner("alice")
                .scopes(["keys:manage", "tasks:read"])
                .allow_ip("127.0.0.0/8".parse().unwrap()),
            &system,
        )
        .await
        .unwrap()
        .0;
    let r = call(
        s.addr,
        As::Key(local.expose_secret()),
        "POST",
        &q_enable,
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.field()),
        (403, "ip_allowlist".into()),
        "{}",
        r.body
    );
    assert_eq!(
        s.manager.get(q.id).await.unwrap().status,
        apikey::KeyStatus::Disabled
    );
    // A test-environment management key sees no live key at all.
    s.manager.revoke(p.id, "done", &system).await.unwrap();
    let test_key = s
        .manager
        .create(
            NewKey::new("sk_test_").owner("alice").scopes([
                "keys:manage",
                "tasks:read",
                "tasks:write",
            ]),
            &system,
        )
        .await
        .unwrap()
        .0;
    let t = test_key.expose_secret();
    let q_path = format!("/v1/api-keys/{}", q.id);
    for (method, p2, body) in [
        ("GET", q_path.clone(), None),
        ("PATCH", q_path.clone(), Some(r#"{"name":"x"}"#)),
        ("POST", q_enable.clone(), None),
        ("DELETE", q_path.clone(), None),
    ] {
        let r = call(s.addr, As::Key(t), method, &p2, body).await;
        assert_eq!(r.status, 404, "{method} {p2}: {}", r.body);
    }
    let list = call(s.addr, As::Key(t), "GET", "/v1/api-keys", None)
        .await
        .json();
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|key| key["environment"] == "test"),
        "{list}"
    );
    assert_eq!(
        s.manager.get(q.id).await.unwrap().status,
        apikey::KeyStatus::Disabled
    );
}

#[tokio::test]
async fn a_whole_key_in_the_path_never_reaches_the_call_log() {
    let s = start().await;
    let created = create(s.addr, As::User("alice"), r#"{"name":"x"}"#).await;
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    for (method, path) in [
        ("DELETE", format!("/v1/api-keys/{key}")),
        ("GET", format!("/v1/api-keys/{key}")),
        ("POST", format!("/v1/api-keys/{key}/disable")),
    ] {
        let r = call(s.addr, As::User("alice"), method, &path, None).await;
        assert_eq!(r.status, 404, "{method}");
    }
    let r = call(
        s.addr,
        As::User("alice"),
        "GET",
        &format!("/v1/api-keys/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let calls = s.calls.lock().unwrap().clone();
    let secret_tail = &key[key.len() - 20..];
    for c in &calls {
        let text = format!("{c:?} {}", serde_json::to_string(c).unwrap());
        assert!(!text.contains(secret_tail), "{text}");
    }
    let by_action = |a: &str| calls.iter().filter(|c| c.action == a).collect::<Vec<_>>();
    assert!(by_action("revoke").iter().all(|c| c.key_id.is_none()));
    assert!(by_action("disable").iter().all(|c| c.key_id.is_none()));
    // A real id is still logged.
    assert!(
        by_action("get")
            .iter()
            .any(|c| c.key_id.as_deref() == Some(id.as_str()))
    );
}

#[cfg(feature = "connect-info")]
#[tokio::test]
async fn key_caller_uses_the_peer_address_without_client_ip() {
    // The host serves with `ConnectInfo` only, no `ClientIp` layer.
    let s = start_custom(config(), |m| m, false).await;
    for (allowed, status, code) in [
        ("127.0.0.0/8", 200, ""),
        ("10.1.0.0/16", 403, "IP_NOT_ALLOWED"),
    ] {
        let key = management_key(
            &s,
            "alice",
            NewKey::new("sk_live_")
                .scopes(["keys:manage"])
                .allow_ip(allowed.parse().unwrap()),
        )
        .await;
        let r = call(
            s.addr,
            As::Key(key.expose_secret()),
            "GET",
            "/v1/api-keys",
            None,
        )
        .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{allowed}: {}",
            r.body
        );
    }
}

/// Finding 4 of review 18, checked over HTTP: rotating the newest key of a
/// chain again and again, with a long grace period each time, never leaves
/// more working keys than the manager's rule allows (the predecessor's
/// grace ends when its successor is rotated: at most two per chain), nor
/// more than the owner limit.
#[tokio::test]
async fn rotation_chains_stay_within_the_owner_limit() {
    let s = start().await;
    let first = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"chain","permissions":["tasks:read"]}"#,
    )
    .await;
    let mut keys = vec![first["key"].as_str().unwrap().to_owned()];
    let mut id = first["id"].as_str().unwrap().to_owned();
    for round in 1..=6 {
        let r = call(
            s.addr,
            As::User("alice"),
            "POST",
            &format!("/v1/api-keys/{id}/rotate"),
            Some(r#"{"grace_period_seconds":604800}"#),
        )
        .await;
        assert_eq!(r.status, 201, "round {round}: {}", r.body);
        let next = r.json();
        keys.push(next["key"].as_str().unwrap().to_owned());
        id = next["id"].as_str().unwrap().to_owned();
        let mut working = 0;
        for key in &keys {
            let a = call(s.addr, As::Key(key), "GET", "/v1/tasks", None).await;
            if a.status == 200 {
                working += 1;
            }
        }
        assert!(
            working <= 2,
            "round {round}: {working} keys of one chain work at once"
        );
        assert_eq!(
            working, 2,
            "round {round}: the newest key and its predecessor in grace"
        );
    }
}

/// The acceptance pass: a rotation over REST used to give a key that
/// expires a successor without expiry. It now keeps the old key's lifetime,
/// counted from the rotation, and a bounded caller caps it at its own
/// expiry (a key without expiry gets that bound).
#[tokio::test]
async fn rotation_over_rest_keeps_the_lifetime_within_the_callers_bound() {
    let s = start().await;
    let day = std::time::Duration::from_secs(86_400);
    let k = create(
        s.addr,
        As::User("alice"),
        &format!(r#"{{"name":"ci","expires_at":"{}"}}"#, T0 + 30 * day),
    )
    .await;
    s.clock.advance(5 * day);
    let path = format!("/v1/api-keys/{}", k["id"].as_str().unwrap());
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{path}/rotate"),
        Some(r#"{"grace_period_seconds":60}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let now = T0 + 5 * day;
    assert_eq!(r.json()["expires_at"], (now + 30 * day).to_string());

    // 20 days on, a management key expiring at T0 + 40 days rotates the
    // successor (expiring at T0 + 35, within the caller): its 30 days again
    // would end at T0 + 55, past the caller, so it gets T0 + 40.
    s.clock.advance(20 * day);
    let manage = management_key(
        &s,
        "alice",
        NewKey::new("sk_live_")
            .scopes(["keys:manage"])
            .expires_at(T0 + 40 * day),
    )
    .await;
    let successor = r.json()["id"].as_str().unwrap().to_owned();
    let r = call(
        s.addr,
        As::Key(manage.expose_secret()),
        "POST",
        &format!("/v1/api-keys/{successor}/rotate"),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["expires_at"], (T0 + 40 * day).to_string());
}

/// An audit sink that makes the store fail right after a rotation commits
/// (the `rotated` event follows the commit), as a database dropping the
/// connection between the rotation and the next statement would.
struct FailAfterRotation {
    store: std::sync::Mutex<Option<Store>>,
}

impl apikey::AuditSink for FailAfterRotation {
    fn record(&self, event: &apikey::AuditEvent) {
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
        store: std::sync::Mutex::new(None),
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
        .authenticate(secret, &apikey::Requirement::none(), None)
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

/// A caller out of credits still manages its keys over the API (revoking a
/// leaked key must never wait for a refill) and reads its limits: those
/// routes are unmetered. A metered route with cost 0 is still refused.
#[tokio::test]
async fn an_exhausted_balance_still_manages_keys_and_reads_limits() {
    use apikey::limits::{CreditAccount, CreditBalances};
    let s = start().await;
    let admin = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"ops","permissions":["keys:manage","tasks:read"]}"#,
    )
    .await;
    let other = create(s.addr, As::User("alice"), r#"{"name":"leaked"}"#).await;
    let key = admin["key"].as_str().unwrap();
    let id: apikey::KeyId = admin["id"].as_str().unwrap().parse().unwrap();
    let limits = s.manager.authenticator().limits();
    limits
        .set_credits(CreditAccount::Key(id.as_u64()), 0, None)
        .await
        .unwrap();
    limits
        .set_credits(
            CreditAccount::Owner {
                owner: "alice",
                api: "rest",
            },
            0,
            None,
        )
        .await
        .unwrap();
    // The metered route (cost 0: checks the balances) is refused.
    let r = call(s.addr, As::Key(key), "GET", "/v1/tasks", None).await;
    assert_eq!(
        (r.status, r.code()),
        (429, "USAGE_EXCEEDED".into()),
        "{}",
        r.body
    );
    // The limits and the management API answer.
    let r = call(s.addr, As::Key(key), "GET", "/v1/rate-limit", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(s.addr, As::Key(key), "GET", "/v1/api-keys", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let leaked = other["id"].as_str().unwrap();
    let r = call(
        s.addr,
        As::Key(key),
        "DELETE",
        &format!("/v1/api-keys/{leaked}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let status = s.manager.get(leaked.parse().unwrap()).await.unwrap().status;
    assert_eq!(status, apikey::KeyStatus::Revoked);
    // The management call is the key's last use, with its route.
    s.manager.flush().await.unwrap();
    let used = s.manager.get(id).await.unwrap();
    assert_eq!(
        used.last_used_route,
        Some(format!("DELETE /v1/api-keys/{leaked}")),
        "{used:?}"
    );
    // Nothing was spent, nothing refilled.
    let left = limits
        .credits(CreditAccount::Key(id.as_u64()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left.remaining, 0);
}

/// A balance refilled every hour reads as `every` with its period (it read
/// `other`).
#[tokio::test]
async fn an_every_refill_names_its_period() {
    use apikey::limits::{CreditAccount, CreditBalances, Refill};
    let s = start().await;
    s.manager
        .authenticator()
        .limits()
        .set_credits(
            CreditAccount::Owner {
                owner: "alice",
                api: "rest",
            },
            40,
            Refill::every(100, std::time::Duration::from_secs(3_600)),
        )
        .await
        .unwrap();
    let r = call(
        s.addr,
        As::User("alice"),
        "GET",
        "/v1/credits/alice/rest",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (
            v["remaining"].as_u64(),
            v["limit"].as_u64(),
            v["refill"].as_str(),
            v["refill_every_seconds"].as_u64(),
            v["next_refill_in_seconds"].as_u64()
        ),
        (Some(40), Some(100), Some("every"), Some(3_600), Some(3_600))
    );
}

/// Auto-renewal over REST: on create (it needs an expiry), shown on the
/// key, renewed by the sweep, turned off by PATCH; a caller that has an
/// expiry itself cannot give it (each renewal would carry the key past
/// the caller's own bound).
#[tokio::test]
async fn auto_renewal_over_rest() {
    let s = start().await;
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"ci","auto_renew":true}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.field()),
        (400, "auto_renew".into()),
        "{}",
        r.body
    );
    let k = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"ci","auto_renew":true,"expires_at":"2026-03-04T12:00:00Z"}"#,
    )
    .await;
    assert_eq!(k["auto_renew"], true, "{k}");
    let id = k["id"].as_str().unwrap().to_owned();
    let report = s
        .manager
        .sweep_once(&apikey::SweepOptions::default())
        .await
        .unwrap();
    assert_eq!(report.renewed, 1, "{report:?}");
    let path = format!("/v1/api-keys/{id}");
    let shown = call(s.addr, As::User("alice"), "GET", &path, None)
        .await
        .json();
    assert_eq!(shown["auto_renew"], true);
    assert!(
        shown["expires_at"].as_str().unwrap() > "2026-03-04T12:00:00Z",
        "{shown}"
    );
    let off = call(
        s.addr,
        As::User("alice"),
        "PATCH",
        &path,
        Some(r#"{"auto_renew":false}"#),
    )
    .await;
    assert_eq!(off.status, 200, "{}", off.body);
    assert_eq!(off.json()["auto_renew"], false);

    // A management key with an expiry: no auto-renewal, on create or PATCH.
    let bounded = management_key(
        &s,
        "alice",
        apikey::NewKey::new("sk_live_")
            .scopes(["keys:manage"])
            .expires_at("2026-06-01T00:00:00Z".parse().unwrap()),
    )
    .await;
    let r = call(
        s.addr,
        As::Key(bounded.expose_secret()),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"x","auto_renew":true,"expires_at":"2026-04-01T00:00:00Z"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.field()),
        (403, "auto_renew".into()),
        "{}",
        r.body
    );
    let r = call(
        s.addr,
        As::Key(bounded.expose_secret()),
        "PATCH",
        &path,
        Some(r#"{"auto_renew":true}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.field()),
        (403, "auto_renew".into()),
        "{}",
        r.body
    );
    let kept = call(s.addr, As::User("alice"), "GET", &path, None)
        .await
        .json();
    assert_eq!(kept["auto_renew"], false);
}

/// Seed 000: a user whose plan has no API access is told to upgrade when
/// creating (or deriving, or rotating) a key, and still lists, disables
/// and revokes the keys it has.
#[tokio::test]
async fn a_plan_without_api_access_is_prompted_to_upgrade() {
    let s = start().await;
    let (_, old) = s
        .manager
        .create(
            apikey::NewKey::new("sk_live_")
                .owner("free_carol")
                .name("from before"),
            &apikey::Actor::system(),
        )
        .await
        .unwrap();
    let r = call(
        s.addr,
        As::User("free_carol"),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"new"}"#),
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "plan".into()), "{}", r.body);
    assert!(r.body.contains("upgrade to create one"), "{}", r.body);
    let path = format!("/v1/api-keys/{}", old.id);
    for (method, route) in [
        ("POST", format!("{path}/rotate")),
        ("POST", format!("{path}/derive")),
    ] {
        let r = call(
            s.addr,
            As::User("free_carol"),
            method,
            &route,
            Some(r#"{"name":"x"}"#),
        )
        .await;
        assert_eq!(
            (r.status, r.field()),
            (403, "plan".into()),
            "{route}: {}",
            r.body
        );
    }
    assert_eq!(s.manager.list("free_carol").await.unwrap().len(), 1);
    let listed = call(s.addr, As::User("free_carol"), "GET", "/v1/api-keys", None).await;
    assert_eq!(listed.status, 200);
    let off = call(
        s.addr,
        As::User("free_carol"),
        "POST",
        &format!("{path}/disable"),
        None,
    )
    .await;
    assert_eq!(off.status, 200, "{}", off.body);
    let gone = call(s.addr, As::User("free_carol"), "DELETE", &path, None).await;
    assert_eq!(gone.status, 200, "{}", gone.body);
}

/// A caller with an expiry may not make a key renew itself past it
/// (`auto_renew` is refused to it on create and PATCH), nor obtain such a
/// key another way: rotating an auto-renewing key hands it a fresh secret
/// of a key that keeps `auto_renew`, and the sweep then carries it past the
/// caller's bound. An auto-renewing key outlives a bounded caller as a key
/// without expiry does.
#[tokio::test]
async fn a_bounded_caller_cannot_get_a_self_renewing_key_by_rotation() {
    let s = start().await;
    let day = std::time::Duration::from_secs(86_400);
    // Alice (a session, no bound) makes an auto-renewing key ending in 10 days.
    let k = create(
        s.addr,
        As::User("alice"),
        &format!(
            r#"{{"name":"ci","auto_renew":true,"expires_at":"{}"}}"#,
            T0 + 10 * day
        ),
    )
    .await;
    let id = k["id"].as_str().unwrap().to_owned();
    // A management key of hers that ends in 30 days.
    let bound = T0 + 30 * day;
    let bounded = management_key(
        &s,
        "alice",
        NewKey::new("sk_live_")
            .scopes(["keys:manage"])
            .expires_at(bound),
    )
    .await;
    let r = call(
        s.addr,
        As::Key(bounded.expose_secret()),
        "POST",
        &format!("/v1/api-keys/{id}/rotate"),
        Some("{}"),
    )
    .await;
    if r.status == 201 {
        // The bounded caller now holds a key that renews itself.
        let new_id: apikey::KeyId = r.json()["id"].as_str().unwrap().parse().unwrap();
        s.clock.advance(8 * day);
        s.manager
            .sweep_once(&apikey::SweepOptions::default())
            .await
            .unwrap();
        let after = s.manager.get(new_id).await.unwrap();
        assert!(
            after.expires_at.is_some_and(|e| e <= bound),
            "the rotated key ({}) renews past the caller's own expiry {bound}: {:?}",
            r.body,
            after.expires_at
        );
    } else {
        assert_eq!(
            (r.status, r.field()),
            (403, "expires_at".into()),
            "{}",
            r.body
        );
    }
}

/// A key's own credit balance (a budget set on it, or carved for an agent
/// by `derive` with `credits`) does not bound a key that holds the
/// management scope: the management API is unmetered, so with its balance
/// at 0 it still creates a fresh key (its own limits account, no balance)
/// and did metered work with that. Creating a key over a key checks the
/// balances (as a cost-0 route does); the rest stays unmetered.
#[tokio::test]
async fn an_exhausted_key_balance_cannot_be_escaped_by_creating_a_key() {
    use apikey::limits::{CreditAccount, CreditBalances};
    let s = start().await;
    let agent = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"agent","permissions":["keys:manage","tasks:read"]}"#,
    )
    .await;
    let key = agent["key"].as_str().unwrap();
    let id: apikey::KeyId = agent["id"].as_str().unwrap().parse().unwrap();
    s.manager
        .authenticator()
        .limits()
        .set_credits(CreditAccount::Key(id.as_u64()), 0, None)
        .await
        .unwrap();
    let r = call(s.addr, As::Key(key), "GET", "/v1/tasks", None).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let r = call(
        s.addr,
        As::Key(key),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"fresh","permissions":["tasks:read"]}"#),
    )
    .await;
    if r.status == 201 {
        let fresh = r.json()["key"].as_str().unwrap().to_owned();
        let r = call(s.addr, As::Key(&fresh), "GET", "/v1/tasks", None).await;
        assert_eq!(
            r.status, 429,
            "the key minted by an exhausted key does metered work: {}",
            r.body
        );
    } else {
        assert_eq!(
            (r.status, r.code()),
            (429, "USAGE_EXCEEDED".into()),
            "{}",
            r.body
        );
    }
}

/// `PATCH {"auto_renew": ...}` changes one metadata entry: a change the
/// host makes to another entry meanwhile (here the key's plan, downgraded
/// by an admin between the handler's read and its write) is kept, not
/// overwritten with the handler's earlier copy of the whole map.
#[tokio::test]
async fn patching_auto_renew_keeps_a_concurrent_metadata_change() {
    use std::sync::atomic::Ordering;
    let s = start().await;
    let day = std::time::Duration::from_secs(86_400);
    let k = create(
        s.addr,
        As::Admin,
        &format!(
            r#"{{"name":"ci","owner":"alice","plan":"professional","expires_at":"{}"}}"#,
            T0 + 30 * day
        ),
    )
    .await;
    let id: apikey::KeyId = k["id"].as_str().unwrap().parse().unwrap();
    let path = format!("/v1/api-keys/{id}");
    // Every store call now takes 300 ms: the PATCH reads the key, then
    // (300 ms later) reads it again to write.
    s.store.set_latency(std::time::Duration::from_millis(300));
    let before = s.store.calls.load(Ordering::SeqCst);
    let addr = s.addr;
    let patch = tokio::spawn(async move {
        call(
            addr,
            As::User("alice"),
            "PATCH",
            &path,
            Some(r#"{"auto_renew":true}"#),
        )
        .await
    });
    // The handler has read the key; its next call is on the way.
    while s.store.calls.load(Ordering::SeqCst) == before {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    s.store.set_latency(std::time::Duration::ZERO);
    let mut metadata = s.manager.get(id).await.unwrap().metadata;
    metadata.insert("plan".into(), "free".into());
    s.manager
        .update(
            id,
            apikey::KeyUpdate::new().metadata(metadata),
            &apikey::Actor::system(),
        )
        .await
        .unwrap();
    let r = patch.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let after = s.manager.get(id).await.unwrap();
    assert_eq!(
        after
            .metadata
            .get(apikey::KeyRecord::AUTO_RENEW)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        after.metadata.get("plan").map(String::as_str),
        Some("free"),
        "the PATCH restored the plan it had read: {:?}",
        after.metadata
    );
}

/// A key with a credit budget of its own cannot create keys over the API
/// (a created key starts with no budget, so it would escape the one it was
/// given); it derives instead, and the child spends from its budget.
#[tokio::test]
async fn a_budgeted_key_derives_but_does_not_create_keys() {
    use apikey::limits::{CreditAccount, CreditBalances};
    let s = start().await;
    let agent = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"agent","permissions":["keys:manage","tasks:read"]}"#,
    )
    .await;
    let key = agent["key"].as_str().unwrap();
    let id: apikey::KeyId = agent["id"].as_str().unwrap().parse().unwrap();
    let limits = s.manager.authenticator().limits();
    limits
        .set_credits(CreditAccount::Key(id.as_u64()), 10, None)
        .await
        .unwrap();
    let r = call(
        s.addr,
        As::Key(key),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"fresh","permissions":["tasks:read"]}"#),
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "credits".into()), "{}", r.body);
    assert_eq!(s.manager.list("alice").await.unwrap().len(), 1);
    let r = call(
        s.addr,
        As::Key(key),
        "POST",
        &format!("/v1/api-keys/{id}/derive"),
        Some(r#"{"name":"child","permissions":["tasks:read"]}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let child = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(
        call(s.addr, As::Key(&child), "GET", "/v1/tasks", None)
            .await
            .status,
        200
    );
    // The budget is not spent by management calls; a key without a budget
    // of its own still creates keys.
    let left = limits
        .credits(CreditAccount::Key(id.as_u64()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left.remaining, 10);
    let plain = create(
        s.addr,
        As::User("bob"),
        r#"{"name":"ops","permissions":["keys:manage","tasks:read"]}"#,
    )
    .await;
    let r = call(
        s.addr,
        As::Key(plain["key"].as_str().unwrap()),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"fresh","permissions":["tasks:read"]}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// A budgeted key cannot escape its budget through a sibling either:
/// deriving from, or rotating, a key of its owner that does not spend from
/// its budget would hand it an unbudgeted key (403 field `credits`). Its
/// own key it still derives from and rotates (the new key spends from the
/// same account).
#[tokio::test]
async fn a_budgeted_key_cannot_derive_from_or_rotate_an_unbudgeted_sibling() {
    use apikey::limits::{CreditAccount, CreditBalances};
    let s = start().await;
    let agent = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"agent","permissions":["keys:manage","tasks:read"]}"#,
    )
    .await;
    let key = agent["key"].as_str().unwrap();
    let id: apikey::KeyId = agent["id"].as_str().unwrap().parse().unwrap();
    let ops = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"ops","permissions":["tasks:read"]}"#,
    )
    .await;
    let ops_id = ops["id"].as_str().unwrap();
    let limits = s.manager.authenticator().limits();
    limits
        .set_credits(CreditAccount::Key(id.as_u64()), 10, None)
        .await
        .unwrap();
    for path in [
        format!("/v1/api-keys/{ops_id}/derive"),
        format!("/v1/api-keys/{ops_id}/rotate"),
    ] {
        let body = if path.ends_with("derive") {
            r#"{"name":"escape","permissions":["tasks:read"]}"#
        } else {
            "{}"
        };
        let r = call(s.addr, As::Key(key), "POST", &path, Some(body)).await;
        assert_eq!(
            (r.status, r.field()),
            (403, "credits".into()),
            "{path}: {}",
            r.body
        );
    }
    assert_eq!(s.manager.list("alice").await.unwrap().len(), 2);
    // Its own key: the rotated key spends from the same budget.
    let r = call(
        s.addr,
        As::Key(key),
        "POST",
        &format!("/v1/api-keys/{id}/rotate"),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let new: apikey::KeyId = r.json()["id"].as_str().unwrap().parse().unwrap();
    let summary = s.manager.get(new).await.unwrap();
    assert_eq!(
        summary.metadata.get(apikey::KeyRecord::LIMITS_OF),
        Some(&id.to_string())
    );
    // A key without a budget of its own still derives from a sibling.
    let r = call(
        s.addr,
        As::User("bob"),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"plain","permissions":["keys:manage","tasks:read"]}"#),
    )
    .await;
    let plain = r.json()["key"].as_str().unwrap().to_owned();
    let sib = create(
        s.addr,
        As::User("bob"),
        r#"{"name":"sib","permissions":["tasks:read"]}"#,
    )
    .await;
    let r = call(
        s.addr,
        As::Key(&plain),
        "POST",
        &format!("/v1/api-keys/{}/derive", sib["id"].as_str().unwrap()),
        Some(r#"{"name":"child","permissions":["tasks:read"]}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// A management key the gate refuses gets the gate's whole answer, as on
/// every other route (docs/errors.md, seed 003's error bodies): an expired
/// key names `expired_at`, a malformed one its `reason`, an exhausted
/// balance with a refill its `retry_after` (it had the header but `details`
/// were empty).
#[tokio::test]
async fn a_refused_management_key_keeps_the_details_of_its_refusal() {
    use apikey::limits::{CreditAccount, CreditBalances, Refill};
    let s = start().await;
    let expires = apikey::Clock::now(&s.clock) + std::time::Duration::from_secs(60);
    let key = management_key(
        &s,
        "alice",
        NewKey::new("sk_live_")
            .scopes(["keys:manage"])
            .expires_at(expires),
    )
    .await;

    let r = call(s.addr, As::Key("sk_live_nope"), "GET", "/v1/api-keys", None).await;
    assert_eq!(r.code(), "MALFORMED_API_KEY", "{}", r.body);
    assert_eq!(
        r.json()["error"]["details"]["reason"],
        "length",
        "{}",
        r.body
    );

    // Creating is metered (cost 0): an exhausted balance that refills says when.
    s.manager
        .authenticator()
        .limits()
        .set_credits(
            CreditAccount::Owner {
                owner: "alice",
                api: "rest",
            },
            0,
            Refill::every(10, std::time::Duration::from_secs(3_600)),
        )
        .await
        .unwrap();
    let r = call(
        s.addr,
        As::Key(key.expose_secret()),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"ci"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (429, "USAGE_EXCEEDED".into()),
        "{}",
        r.body
    );
    let retry = r.header("retry-after").expect("Retry-After").to_owned();
    assert_eq!(
        r.json()["error"]["details"]["retry_after"].to_string(),
        retry,
        "{}",
        r.body
    );

    s.clock.advance(std::time::Duration::from_secs(61));
    let r = call(
        s.addr,
        As::Key(key.expose_secret()),
        "GET",
        "/v1/api-keys",
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (401, "EXPIRED_API_KEY".into()),
        "{}",
        r.body
    );
    assert_eq!(
        r.json()["error"]["details"]["expired_at"],
        expires.to_string(),
        "{}",
        r.body
    );
}
