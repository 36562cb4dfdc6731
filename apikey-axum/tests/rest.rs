//! The management REST contract over real HTTP: every route, every error,
//! and the authorization rules.
#![allow(clippy::unwrap_used)]

mod common;

use apikey::Timestamp;
use apikey::{Actor, NewKey};
use common::*;
use serde_json::Value;

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn create_list_get_patch_show_the_key_once() {
    let s = start().await;
    let a = call(
        s.addr,
        As::User("alice"),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"New Integration","description":"CI","permissions":["tasks:read","tasks:write"],"expires_at":"2026-10-14T00:00:00Z"}"#),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let created = a.json();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_live_"));
    assert_eq!(created["name"], "New Integration");
    assert_eq!(
        created["permissions"],
        serde_json::json!(["tasks:read", "tasks:write"])
    );
    assert_eq!(created["expires_at"], "2026-10-14T00:00:00Z");
    assert_eq!(created["created_at"], "2026-03-01T12:00:00Z");
    assert_eq!(created["status"], "active");
    let id = created["id"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap();
    assert!(prefix.ends_with("...") && key.starts_with(prefix.trim_end_matches("...")));

    // The key works on a guarded route (the query is never kept as the
    // last-used route).
    assert_eq!(
        call(s.addr, As::Key(&key), "GET", "/v1/tasks?page=2", None)
            .await
            .status,
        200
    );
    s.manager.flush().await.unwrap();

    let list = call(s.addr, As::User("alice"), "GET", "/v1/api-keys", None).await;
    assert_eq!(list.status, 200);
    assert!(!list.body.contains(&key), "the list shows the full key");
    assert_eq!(ids(&list.json()), [id.as_str()]);
    let item = &list.json()["data"][0];
    for field in [
        "name",
        "prefix",
        "last_used",
        "created_at",
        "expires_at",
        "status",
    ] {
        assert!(item.get(field).is_some(), "{field} missing: {item}");
    }
    assert_eq!(item["last_used"], "2026-03-01T12:00:00Z");
    // Seed 001's "last used" with where from: the client address and the
    // route, flushed with usage.
    assert_eq!(item["last_used_ip"], "127.0.0.1");
    assert_eq!(item["last_used_route"], "GET /v1/tasks");

    let one = call(
        s.addr,
        As::User("alice"),
        "GET",
        &format!("/v1/api-keys/{id}"),
        None,
    )
    .await;
    assert_eq!(one.status, 200);
    assert!(!one.body.contains(&key));
    assert_eq!(one.json()["usage"]["requests_today"], 1);
    assert_eq!(one.json()["usage"]["requests_this_month"], 1);

    let patched = call(
        s.addr,
        As::User("alice"),
        "PATCH",
        &format!("/v1/api-keys/{id}"),
        Some(r#"{"name":"Production App (updated)","permissions":["tasks:read"],"expires_at":"2026-12-31T23:59:59Z","description":null,"ip_allowlist":["203.0.113.0/24"]}"#),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let p = patched.json();
    assert_eq!(p["name"], "Production App (updated)");
    assert_eq!(p["permissions"], serde_json::json!(["tasks:read"]));
    assert_eq!(p["expires_at"], "2026-12-31T23:59:59Z");
    assert_eq!(p["description"], Value::Null);
    assert_eq!(p["ip_allowlist"], serde_json::json!(["203.0.113.0/24"]));
    // Never expires again (null), as seed 001's "Expires: Never".
    let never = call(
        s.addr,
        As::User("alice"),
        "PATCH",
        &format!("/v1/api-keys/{id}"),
        Some(r#"{"expires_at":null}"#),
    )
    .await;
    assert_eq!(never.json()["expires_at"], Value::Null);
}

#[tokio::test]
async fn list_paginates_with_a_cursor_and_filters_status_and_expiry() {
    let s = start().await;
    let a = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"a","expires_at":"2026-03-05T00:00:00Z"}"#,
    )
    .await;
    let b = create(s.addr, As::User("alice"), r#"{"name":"b"}"#).await;
    s.clock.advance(std::time::Duration::from_secs(1));
    let c = create(s.addr, As::User("alice"), r#"{"name":"c"}"#).await;
    let page1 = call(
        s.addr,
        As::User("alice"),
        "GET",
        "/v1/api-keys?limit=2",
        None,
    )
    .await
    .json();
    assert_eq!(page1["has_more"], true);
    assert_eq!(page1["data"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = call(
        s.addr,
        As::User("alice"),
        "GET",
        &format!("/v1/api-keys?limit=2&cursor={cursor}"),
        None,
    )
    .await
    .json();
    assert_eq!(page2["has_more"], false);
    assert_eq!(page2["next_cursor"], Value::Null);
    let mut all = ids(&page1);
    all.extend(ids(&page2));
    let mut want: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    all.sort();
    want.sort();
    assert_eq!(all, want);

    let expiring = call(
        s.addr,
        As::User("alice"),
        "GET",
        "/v1/api-keys?expiring_within_days=7",
        None,
    )
    .await
    .json();
    assert_eq!(ids(&expiring), [a["id"].as_str().unwrap()]);
    let cid = c["id"].as_str().unwrap();
    call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("/v1/api-keys/{cid}/disable"),
        None,
    )
    .await;
    let disabled = call(
        s.addr,
        As::User("alice"),
        "GET",
        "/v1/api-keys?status=disabled",
        None,
    )
    .await
    .json();
    assert_eq!(ids(&disabled), [cid]);

    for (q, field) in [
        ("status=sleeping", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("expiring_within_days=-1", "expiring_within_days"),
        ("cursor=nope", "cursor"),
        ("colour=red", "colour"),
    ] {
        let r = call(
            s.addr,
            As::User("alice"),
            "GET",
            &format!("/v1/api-keys?{q}"),
            None,
        )
        .await;
        assert_eq!(
            (r.status, r.code(), r.field()),
            (400, "INVALID_REQUEST".into(), field.into()),
            "{q}"
        );
    }
}

#[tokio::test]
async fn hostile_input_is_a_400_naming_the_field_and_stores_nothing() {
    let s = start().await;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(20_000));
    let cases: Vec<(String, &str, &str)> = vec![
        (
            r#"{"name":"<script>alert(1)</script>"}"#.into(),
            "INVALID_REQUEST",
            "name",
        ),
        (
            r#"{"name":"<img src=x onerror=alert(1)>"}"#.into(),
            "INVALID_REQUEST",
            "name",
        ),
        (
            r#"{"name":"ok","description":"<b>bold</b>"}"#.into(),
            "INVALID_REQUEST",
            "description",
        ),
        (
            r#"{"name":"line\nbreak"}"#.into(),
            "INVALID_REQUEST",
            "name",
        ),
        (r#"{"name":"   "}"#.into(), "INVALID_REQUEST", "name"),
        (
            format!(r#"{{"name":"{}"}}"#, "n".repeat(101)),
            "INVALID_REQUEST",
            "name",
        ),
        (big, "INVALID_REQUEST", "body"),
        (
            r#"{"name":"ok","admin":true}"#.into(),
            "INVALID_REQUEST",
            "admin",
        ),
        (
            r#"{"permissions":["tasks:read"]}"#.into(),
            "INVALID_REQUEST",
            "name",
        ),
        (r#"{"name":42}"#.into(), "INVALID_REQUEST", "name"),
        (r#"not json"#.into(), "INVALID_REQUEST", "body"),
        (
            r#"{"name":"ok"} trailing"#.into(),
            "INVALID_REQUEST",
            "body",
        ),
        (
            r#"{"name":"ok","expires_at":"tomorrow"}"#.into(),
            "INVALID_REQUEST",
            "expires_at",
        ),
        (
            r#"{"name":"ok","expires_at":"2026-02-30T00:00:00Z"}"#.into(),
            "INVALID_REQUEST",
            "expires_at",
        ),
        (
            r#"{"name":"ok","expires_at":"2020-01-01T00:00:00Z"}"#.into(),
            "INVALID_REQUEST",
            "expires_at",
        ),
        (
            r#"{"name":"ok","expires_at":"99999-01-01T00:00:00Z"}"#.into(),
            "INVALID_REQUEST",
            "expires_at",
        ),
        (
            r#"{"name":"ok","permissions":["tasks:read","<svg>"]}"#.into(),
            "INVALID_SCOPE",
            "permissions",
        ),
        (
            r#"{"name":"ok","permissions":["billing:read"]}"#.into(),
            "INVALID_SCOPE",
            "permissions",
        ),
        (
            r#"{"name":"ok","environment":"staging"}"#.into(),
            "INVALID_REQUEST",
            "environment",
        ),
        (
            r#"{"name":"ok","ip_allowlist":["10.0.0.0/33"]}"#.into(),
            "INVALID_REQUEST",
            "ip_allowlist",
        ),
        (
            r#"{"name":"ok","plan":"platinum"}"#.into(),
            "INVALID_REQUEST",
            "plan",
        ),
        // A right-to-left override: displays as "prod-ci" reversed.
        (
            r#"{"name":"ic-\u202Edorp"}"#.into(),
            "INVALID_REQUEST",
            "name",
        ),
        (
            r#"{"name":"ok","description":"a\u2067b"}"#.into(),
            "INVALID_REQUEST",
            "description",
        ),
    ];
    for (body, code, field) in &cases {
        let r = call(
            s.addr,
            As::User("alice"),
            "POST",
            "/v1/api-keys",
            Some(body),
        )
        .await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(
            (r.code(), r.field()),
            (code.to_string(), field.to_string()),
            "{body}: {}",
            r.body
        );
        assert!(!r.body.contains("<script"), "markup echoed: {}", r.body);
    }
    assert!(
        s.manager.list("alice").await.unwrap().is_empty(),
        "a refused create stored a key"
    );

    // PATCH: the same checks, and the stored key is unchanged.
    let k = create(s.addr, As::User("alice"), r#"{"name":"kept"}"#).await;
    let path = format!("/v1/api-keys/{}", k["id"].as_str().unwrap());
    for (body, field) in [
        (r#"{"name":"<b>x</b>"}"#, "name"),
        (r#"{"nmae":"typo"}"#, "nmae"),
        (r#"{"expires_at":"yesterday"}"#, "expires_at"),
        (r#"{"ip_allowlist":"10.0.0.1"}"#, "ip_allowlist"),
        ("", "body"),
        // A key pasted as a field name is not repeated back.
        (
            r#"{"sk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA":1}"#,
            "(not shown)",
        ),
    ] {
        let r = call(s.addr, As::User("alice"), "PATCH", &path, Some(body)).await;
        assert_eq!(
            (r.status, r.field()),
            (400, field.to_owned()),
            "{body}: {}",
            r.body
        );
        assert!(!r.body.contains("sk_live_AAAA"), "{}", r.body);
    }
    // Nor as a query parameter's name.
    let r = call(
        s.addr,
        As::User("alice"),
        "GET",
        "/v1/api-keys?sk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.field()),
        (400, "(not shown)".to_owned()),
        "{}",
        r.body
    );
    assert!(!r.body.contains("sk_live_AAAA"), "{}", r.body);
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{path}/rotate"),
        Some(r#"{"grace_period_seconds":-5}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.field()),
        (400, "grace_period_seconds".to_owned())
    );
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("{path}/rotate"),
        Some(r#"{"grace_period_seconds":99999999}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.field()),
        (400, "grace_period_seconds".to_owned()),
        "{}",
        r.body
    );
    let r = call(
        s.addr,
        As::User("alice"),
        "DELETE",
        &format!("{path}?permanent=yes"),
        None,
    )
    .await;
    assert_eq!((r.status, r.field()), (400, "permanent".to_owned()));
    let stored = s.manager.list("alice").await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].name, "kept");
    assert_eq!(stored[0].state, apikey::KeyState::Active);
}

#[tokio::test]
async fn another_owners_key_answers_404_on_every_route() {
    let s = start().await;
    let bobs = create(s.addr, As::User("bob"), r#"{"name":"bob's"}"#).await;
    let id = bobs["id"].as_str().unwrap();
    let routes = [
        ("GET", format!("/v1/api-keys/{id}"), None),
        (
            "PATCH",
            format!("/v1/api-keys/{id}"),
            Some(r#"{"name":"mine now"}"#),
        ),
        ("DELETE", format!("/v1/api-keys/{id}"), None),
        ("DELETE", format!("/v1/api-keys/{id}?permanent=true"), None),
        ("POST", format!("/v1/api-keys/{id}/disable"), None),
        ("POST", format!("/v1/api-keys/{id}/enable"), None),
        ("POST", format!("/v1/api-keys/{id}/rotate"), None),
    ];
    for (method, path, body) in &routes {
        let theirs = call(s.addr, As::User("alice"), method, path, *body).await;
        assert_eq!(
            (theirs.status, theirs.code()),
            (404, "KEY_NOT_FOUND".into()),
            "{method} {path}"
        );
        // The same answer as a key that does not exist at all.
        let nothing = call(
            s.addr,
            As::User("alice"),
            method,
            &path.replace(id, "AAAAAAAAAAA"),
            *body,
        )
        .await;
        assert_eq!(theirs.body, nothing.body);
    }
    let malformed = call(
        s.addr,
        As::User("alice"),
        "GET",
        "/v1/api-keys/not-an-id",
        None,
    )
    .await;
    assert_eq!(malformed.status, 404);
    assert!(
        ids(
            &call(s.addr, As::User("alice"), "GET", "/v1/api-keys", None)
                .await
                .json()
        )
        .is_empty()
    );
    let listed = call(
        s.addr,
        As::User("alice"),
        "GET",
        "/v1/api-keys?owner=bob",
        None,
    )
    .await;
    assert_eq!((listed.status, listed.field()), (403, "owner".into()));
    let bob = s.manager.list("bob").await.unwrap();
    assert_eq!(
        (bob.len(), bob[0].name.as_str(), bob[0].state),
        (1, "bob's", apikey::KeyState::Active)
    );
}

#[tokio::test]
async fn a_key_cannot_create_a_key_usable_from_more_addresses_than_itself() {
    let s = start().await;
    let far = management_key(
        &s,
        "bob",
        NewKey::new("sk_live_")
            .scopes(["keys:manage"])
            .allow_ip("10.1.0.0/16".parse().unwrap()),
    )
    .await;
    // The key's own allowlist applies to the management call itself.
    let r = call(
        s.addr,
        As::Key(far.expose_secret()),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "IP_NOT_ALLOWED".into()));
    let near = management_key(
        &s,
        "alice",
        NewKey::new("sk_live_")
            .scopes(["keys:manage"])
            .allow_ip("127.0.0.0/8".parse().unwrap()),
    )
    .await;
    let k = near.expose_secret();
    for list in [
        r#"["10.0.0.0/8"]"#,
        r#"["126.0.0.0/7"]"#,
        r#"["127.0.0.1", "::1"]"#,
    ] {
        let body = format!(r#"{{"name":"x","ip_allowlist":{list}}}"#);
        let r = call(s.addr, As::Key(k), "POST", "/v1/api-keys", Some(&body)).await;
        assert_eq!(
            (r.status, r.field()),
            (403, "ip_allowlist".into()),
            "{list}: {}",
            r.body
        );
    }
    let narrower = create(
        s.addr,
        As::Key(k),
        r#"{"name":"x","ip_allowlist":["127.0.0.1"]}"#,
    )
    .await;
    assert_eq!(
        narrower["ip_allowlist"],
        serde_json::json!(["127.0.0.1/32"])
    );
    let inherited = create(s.addr, As::Key(k), r#"{"name":"y"}"#).await;
    assert_eq!(
        inherited["ip_allowlist"],
        serde_json::json!(["127.0.0.0/8"])
    );
    // PATCH to "anywhere" is refused.
    let path = format!("/v1/api-keys/{}", inherited["id"].as_str().unwrap());
    let r = call(
        s.addr,
        As::Key(k),
        "PATCH",
        &path,
        Some(r#"{"ip_allowlist":[]}"#),
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "ip_allowlist".into()));
}

#[tokio::test]
async fn a_key_cannot_create_a_key_holding_more_than_itself() {
    let s = start().await;
    let free = management_key(
        &s,
        "alice",
        NewKey::new("sk_test_")
            .scopes(["keys:manage", "tasks:read"])
            .expires_at("2026-06-01T00:00:00Z".parse::<Timestamp>().unwrap()),
    )
    .await;
    let k = free.expose_secret();
    for (body, field) in [
        (
            r#"{"name":"x","environment":"test","permissions":["tasks:write"]}"#,
            "permissions",
        ),
        (
            r#"{"name":"x","permissions":["tasks:read"]}"#,
            "environment",
        ),
        (r#"{"name":"x","environment":"live"}"#, "environment"),
        (
            r#"{"name":"x","environment":"test","expires_at":"2026-07-01T00:00:00Z"}"#,
            "expires_at",
        ),
        (
            r#"{"name":"x","environment":"test","owner":"bob"}"#,
            "owner",
        ),
        (
            r#"{"name":"x","environment":"test","plan":"professional"}"#,
            "plan",
        ),
    ] {
        let r = call(s.addr, As::Key(k), "POST", "/v1/api-keys", Some(body)).await;
        assert_eq!(
            (r.status, r.code(), r.field()),
            (403, "INSUFFICIENT_SCOPE".into(), field.into()),
            "{body}: {}",
            r.body
        );
    }
    assert_eq!(
        s.manager.list("alice").await.unwrap().len(),
        1,
        "a refused create stored a key"
    );
    // Within its bounds it works, and the child inherits the expiry bound.
    let child = create(
        s.addr,
        As::Key(k),
        r#"{"name":"child","environment":"test","permissions":["tasks:read"]}"#,
    )
    .await;
    assert_eq!(child["expires_at"], "2026-06-01T00:00:00Z");
    assert!(child["key"].as_str().unwrap().starts_with("sk_test_"));
    // A key without keys:manage manages nothing.
    let child_key = child["key"].as_str().unwrap();
    let r = call(s.addr, As::Key(child_key), "GET", "/v1/api-keys", None).await;
    assert_eq!((r.status, r.code()), (403, "INSUFFICIENT_SCOPE".into()));
}

/// Alice's management key on the `tiny` plan (1 request a minute).
async fn tiny_management_key(s: &Server) -> apikey::ApiKey {
    management_key(
        s,
        "alice",
        NewKey::new("sk_live_")
            .scopes(["keys:manage", "tasks:read"])
            .metadata("plan", "tiny"),
    )
    .await
}

/// A management key on a small plan (`tiny`: 1 request a minute) must not
/// mint itself a key on the default quota (100 a minute): the key it
/// creates keeps its plan, as a derived or rotated key does.
#[tokio::test]
async fn a_key_cannot_escape_its_plan_by_creating_a_key() {
    let s = start().await;
    let tiny = tiny_management_key(&s).await;
    let created = create(
        s.addr,
        As::Key(tiny.expose_secret()),
        r#"{"name":"escape","permissions":["tasks:read"]}"#,
    )
    .await;
    assert_eq!(created["plan"], "tiny", "{created}");
    let key = created["key"].as_str().unwrap();
    let first = call(s.addr, As::Key(key), "GET", "/v1/tasks", None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = call(s.addr, As::Key(key), "GET", "/v1/tasks", None).await;
    assert_eq!(
        (second.status, second.code()),
        (429, "RATE_LIMITED".into()),
        "the new key is not on its creator's plan: {}",
        second.body
    );
}

/// Nor by rotating or deriving from a key on another plan: the successor
/// or child would be on that plan (for a child, in its parent's windows).
#[tokio::test]
async fn a_key_cannot_escape_its_plan_by_rotating_or_deriving_another_plans_key() {
    let s = start().await;
    let tiny = tiny_management_key(&s).await;
    let (_, sibling) = s
        .manager
        .create(
            NewKey::new("sk_live_")
                .owner("alice")
                .scopes(["tasks:read"]),
            &Actor::system(),
        )
        .await
        .unwrap();
    let minute = std::time::Duration::from_secs(61);
    for (action, body) in [("rotate", "{}"), ("derive", r#"{"name":"agent"}"#)] {
        let path = format!("/v1/api-keys/{}/{action}", sibling.id);
        let r = call(
            s.addr,
            As::Key(tiny.expose_secret()),
            "POST",
            &path,
            Some(body),
        )
        .await;
        assert_eq!(
            (r.status, r.code(), r.field()),
            (403, "INSUFFICIENT_SCOPE".into(), "plan".into()),
            "{action}: {}",
            r.body
        );
        s.clock.advance(minute);
    }
    assert_eq!(s.manager.list("alice").await.unwrap().len(), 2);
    // From a key on its own plan (itself) it may.
    let own = s.manager.list("alice").await.unwrap();
    let own = own.iter().find(|k| k.id != sibling.id).unwrap();
    let r = call(
        s.addr,
        As::Key(tiny.expose_secret()),
        "POST",
        &format!("/v1/api-keys/{}/derive", own.id),
        Some(r#"{"name":"agent"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn a_key_cannot_patch_or_rotate_a_key_into_holding_more_than_itself() {
    let s = start().await;
    let manage = management_key(
        &s,
        "alice",
        NewKey::new("sk_live_")
            .scopes(["keys:manage", "tasks:read"])
            .expires_at("2026-06-01T00:00:00Z".parse::<Timestamp>().unwrap()),
    )
    .await;
    let k = manage.expose_secret();
    // A key the user made in the page, holding tasks:write and no expiry.
    let wide = create(
        s.addr,
        As::User("alice"),
        r#"{"name":"wide","permissions":["tasks:read","tasks:write"]}"#,
    )
    .await;
    let narrow = create(
        s.addr,
        As::Key(k),
        r#"{"name":"narrow","permissions":["tasks:read"]}"#,
    )
    .await;
    let narrow_path = format!("/v1/api-keys/{}", narrow["id"].as_str().unwrap());
    let wide_path = format!("/v1/api-keys/{}", wide["id"].as_str().unwrap());
    for (body, field) in [
        (
            r#"{"permissions":["tasks:read","tasks:write"]}"#,
            "permissions",
        ),
        (r#"{"permissions":["admin:*"]}"#, "permissions"),
        (r#"{"expires_at":null}"#, "expires_at"),
        (r#"{"expires_at":"2027-01-01T00:00:00Z"}"#, "expires_at"),
    ] {
        let r = call(s.addr, As::Key(k), "PATCH", &narrow_path, Some(body)).await;
        assert!(r.status == 403 || r.status == 400, "{body}: {}", r.body);
        assert_eq!(r.field(), field, "{body}: {}", r.body);
    }
    let stored = s
        .manager
        .get(narrow["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.scopes, ["tasks:read"]);
    assert_eq!(
        stored.expires_at,
        Some("2026-06-01T00:00:00Z".parse::<Timestamp>().unwrap())
    );
    // Rotating the wider key would hand the caller its permissions.
    let r = call(
        s.addr,
        As::Key(k),
        "POST",
        &format!("{wide_path}/rotate"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.field()),
        (403, "permissions".into()),
        "{}",
        r.body
    );
    // Narrowing is fine.
    let r = call(
        s.addr,
        As::Key(k),
        "PATCH",
        &narrow_path,
        Some(r#"{"expires_at":"2026-05-01T00:00:00Z","name":"narrower"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn an_account_admin_manages_every_user_of_its_account() {
    let s = start().await;
    let for_bob = create(
        s.addr,
        As::Admin,
        r#"{"name":"bob's REST key","owner":"bob","plan":"professional"}"#,
    )
    .await;
    assert_eq!(for_bob["owner"], "bob");
    assert_eq!(for_bob["plan"], "professional");
    let alices = create(s.addr, As::User("alice"), r#"{"name":"alice's"}"#).await;
    // The admin sees both users' keys, or one user's.
    let all = call(s.addr, As::Admin, "GET", "/v1/api-keys", None)
        .await
        .json();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let bobs = call(s.addr, As::Admin, "GET", "/v1/api-keys?owner=bob", None)
        .await
        .json();
    assert_eq!(ids(&bobs), [for_bob["id"].as_str().unwrap()]);
    // ... and changes them.
    let aid = alices["id"].as_str().unwrap();
    let r = call(
        s.addr,
        As::Admin,
        "POST",
        &format!("/v1/api-keys/{aid}/disable"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("disabled"))
    );
    let r = call(
        s.addr,
        As::Admin,
        "PATCH",
        &format!("/v1/api-keys/{aid}"),
        Some(r#"{"name":"renamed by admin"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    // Bob sees his key (created by the admin) and not alice's.
    let bob_view = call(s.addr, As::User("bob"), "GET", "/v1/api-keys", None)
        .await
        .json();
    assert_eq!(ids(&bob_view), [for_bob["id"].as_str().unwrap()]);
    // Outside the account: refused, and carol's keys are 404.
    let r = call(
        s.addr,
        As::Admin,
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"x","owner":"carol"}"#),
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "owner".into()));
    let carols = create(s.addr, As::User("carol"), r#"{"name":"carol's"}"#).await;
    let r = call(
        s.addr,
        As::Admin,
        "GET",
        &format!("/v1/api-keys/{}", carols["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    // A plain user cannot pick another user or a plan.
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"x","owner":"bob"}"#),
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "owner".into()));
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        "/v1/api-keys",
        Some(r#"{"name":"x","plan":"professional"}"#),
    )
    .await;
    assert_eq!((r.status, r.field()), (403, "plan".into()));
}

/// The second review's note: with no scope catalog, a signed-in user
/// without scope bounds used to give any scope (`admin:*` included). It now
/// gives none; a management key still gives what its own key holds, and a
/// derived key still narrows its parent.
#[tokio::test]
async fn without_a_catalog_an_unbounded_user_gives_no_permission() {
    let s = start_with(apikey_axum::ManageConfig::new("sk_live_")).await;
    for body in [
        r#"{"name":"x","permissions":["admin:*"]}"#,
        r#"{"name":"x","permissions":["tasks:read"]}"#,
    ] {
        let r = call(
            s.addr,
            As::User("alice"),
            "POST",
            "/v1/api-keys",
            Some(body),
        )
        .await;
        assert_eq!(
            (r.status, r.code(), r.field()),
            (403, "INSUFFICIENT_SCOPE".into(), "permissions".into()),
            "{body}: {}",
            r.body
        );
    }
    assert!(s.manager.list("alice").await.unwrap().is_empty());
    let plain = create(s.addr, As::User("alice"), r#"{"name":"plain"}"#).await;
    let path = format!("/v1/api-keys/{}", plain["id"].as_str().unwrap());
    let r = call(
        s.addr,
        As::User("alice"),
        "PATCH",
        &path,
        Some(r#"{"permissions":["admin:*"]}"#),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "INSUFFICIENT_SCOPE".into()));
    // A management key gives what it holds.
    let k = management_key(
        &s,
        "alice",
        NewKey::new("sk_live_").scopes(["keys:manage", "tasks:read"]),
    )
    .await;
    let child = create(
        s.addr,
        As::Key(k.expose_secret()),
        r#"{"name":"c","permissions":["tasks:read"]}"#,
    )
    .await;
    assert_eq!(child["permissions"], serde_json::json!(["tasks:read"]));
    // A derived key narrows its parent, catalog or not (room for it under
    // the test server's limit of 3 keys first).
    let r = call(
        s.addr,
        As::User("alice"),
        "DELETE",
        &format!("{path}?permanent=true"),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = call(
        s.addr,
        As::User("alice"),
        "POST",
        &format!("/v1/api-keys/{}/derive", child["id"].as_str().unwrap()),
        Some(r#"{"name":"agent","permissions":["tasks:read"]}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}
