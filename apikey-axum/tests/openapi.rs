//! The OpenAPI document against the router: every route of the router is
//! documented (and nothing else), and real answers over HTTP, covering
//! every documented status of every operation, match the documented
//! schemas, with every documented field seen at least once.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use apikey::{Actor, NewKey};
use apikey_axum::{OPENAPI_JSON, ROUTES};
use common::*;
use serde_json::Value;

/// Schema name → documented properties seen in real answers.
type Seen = BTreeMap<String, BTreeSet<String>>;

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> (&'a Value, Option<String>) {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            (&doc["components"]["schemas"][name], Some(name.to_owned()))
        }
        None => (schema, None),
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => false,
    }
}

fn check(doc: &Value, schema: &Value, v: &Value, at: &str, seen: &mut Seen) -> Result<(), String> {
    let (schema, name) = resolve(doc, schema);
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() && !types.iter().any(|t| type_ok(t, v)) {
        return Err(format!("{at}: {v} is not of type {types:?}"));
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !v.is_null()
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} not in {e:?}"));
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        return Err(format!("{at}: {v} is not {c}"));
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time")
        && let Some(s) = v.as_str()
    {
        s.parse::<apikey::Timestamp>()
            .map_err(|_| format!("{at}: {s} is not RFC 3339"))?;
    }
    if let (Some(props), Some(map)) = (
        schema.get("properties").and_then(Value::as_object),
        v.as_object(),
    ) {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !map.contains_key(r) {
                return Err(format!("{at}: required `{r}` missing"));
            }
        }
        for (k, val) in map {
            match props.get(k) {
                Some(p) => check(doc, p, val, &format!("{at}.{k}"), seen)?,
                None if schema["additionalProperties"] == false => {
                    return Err(format!("{at}: undocumented field `{k}`"));
                }
                None => {}
            }
            if let Some(n) = &name {
                seen.entry(n.clone()).or_default().insert(k.clone());
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), v.as_array()) {
        for (i, x) in list.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{i}]"), seen)?;
        }
    }
    Ok(())
}

struct Recorder {
    doc: Value,
    addr: std::net::SocketAddr,
    /// (path template, method, status) answered.
    answered: BTreeSet<(String, String, String)>,
    seen: Seen,
}

impl Recorder {
    /// Calls `template` (with `{id}` replaced by `id`, then `query`), and
    /// checks the answer against the document.
    async fn hit(
        &mut self,
        who: As<'_>,
        method: &str,
        template: &str,
        id: &str,
        query: &str,
        body: Option<&str>,
    ) -> Answer {
        let path = format!("{}{query}", template.replace("{id}", id));
        self.hit_path(who, method, template, &path, body).await
    }

    /// Calls `path`, an instance of `template`, and checks the answer.
    async fn hit_path(
        &mut self,
        who: As<'_>,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
    ) -> Answer {
        let a = call(self.addr, who, method, path, body).await;
        let m = method.to_ascii_lowercase();
        let op = &self.doc["paths"][template][&m];
        assert!(op.is_object(), "{method} {template} is not documented");
        let status = a.status.to_string();
        let documented = &op["responses"][&status];
        assert!(
            documented.is_object(),
            "{method} {template} answered an undocumented {status}: {}",
            a.body
        );
        match documented["content"]["application/json"].get("schema") {
            Some(schema) => {
                assert!(
                    a.header("content-type")
                        .unwrap_or("")
                        .starts_with("application/json"),
                    "{method} {path}"
                );
                let v: Value = serde_json::from_str(&a.body)
                    .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {}", a.body));
                let doc = self.doc.clone();
                if let Err(e) = check(
                    &doc,
                    schema,
                    &v,
                    &format!("{method} {template} {status}"),
                    &mut self.seen,
                ) {
                    panic!("{e}\n{}", a.body);
                }
            }
            None => assert!(a.body.is_empty(), "{method} {path} {status} has a body"),
        }
        for h in documented["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(h, _)| h)
        {
            assert!(a.header(h).is_some(), "{method} {path}: header {h} missing");
        }
        self.answered.insert((template.to_owned(), m, status));
        a
    }
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| *m != "parameters")
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, routed);
}

const KEYS: &str = "/v1/api-keys";
const KEY: &str = "/v1/api-keys/{id}";
const DERIVE: &str = "/v1/api-keys/{id}/derive";
const ID_ACTIONS: [(&str, &str); 7] = [
    ("GET", KEY),
    ("PATCH", KEY),
    ("DELETE", KEY),
    ("POST", "/v1/api-keys/{id}/disable"),
    ("POST", "/v1/api-keys/{id}/enable"),
    ("POST", "/v1/api-keys/{id}/rotate"),
    ("POST", DERIVE),
];

fn body_for(method: &str, path: &str) -> Option<&'static str> {
    if path == DERIVE {
        return Some(r#"{"name":"agent"}"#);
    }
    match method {
        "PATCH" => Some(r#"{"name":"renamed"}"#),
        "POST" => Some("{}"),
        _ => None,
    }
}

#[tokio::test]
async fn real_answers_match_the_document_and_cover_it() {
    let s = start().await;
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let served = call(s.addr, As::Anonymous, "GET", "/v1/openapi.json", None).await;
    assert_eq!(serde_json::from_str::<Value>(&served.body).unwrap(), doc);
    let mut r = Recorder {
        doc,
        addr: s.addr,
        answered: BTreeSet::new(),
        seen: Seen::new(),
    };
    r.hit(As::Anonymous, "GET", "/v1/openapi.json", "", "", None)
        .await;
    let alice = As::User("alice");

    // Successes.
    let created = r.hit(alice, "POST", KEYS, "", "", Some(r#"{"name":"one","description":"d","permissions":["tasks:read"],"expires_at":"2026-10-14T00:00:00Z","ip_allowlist":["127.0.0.1"]}"#)).await.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    r.hit(As::Key(&key), "GET", "/v1/rate-limit", "", "", None)
        .await;
    s.manager.flush().await.unwrap();
    r.hit(alice, "GET", KEYS, "", "", None).await;
    r.hit(
        As::Admin,
        "POST",
        KEYS,
        "",
        "",
        Some(r#"{"name":"two","owner":"alice","plan":"professional"}"#),
    )
    .await;
    r.hit(alice, "GET", KEYS, "", "?limit=1", None).await;
    r.hit(alice, "GET", KEY, &id, "", None).await;
    r.hit(
        alice,
        "PATCH",
        KEY,
        &id,
        "",
        Some(r#"{"name":"one (updated)"}"#),
    )
    .await;
    r.hit(alice, "POST", "/v1/api-keys/{id}/disable", &id, "", None)
        .await;
    r.hit(alice, "POST", "/v1/api-keys/{id}/enable", &id, "", None)
        .await;
    let rotated = r
        .hit(
            alice,
            "POST",
            "/v1/api-keys/{id}/rotate",
            &id,
            "",
            Some(r#"{"grace_period_seconds":60}"#),
        )
        .await
        .json();
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    r.hit(
        alice,
        "POST",
        DERIVE,
        &new_id,
        "",
        Some(r#"{"name":"agent","permissions":["tasks:read"]}"#),
    )
    .await; // 201
    r.hit(
        alice,
        "POST",
        DERIVE,
        &new_id,
        "",
        Some(r#"{"name":"agent","permissions":["admin:*"]}"#),
    )
    .await; // refused: broader than the parent
    r.hit(alice, "POST", DERIVE, &new_id, "", Some(r#"{"nmae":"x"}"#))
        .await; // 400
    r.hit(alice, "GET", KEY, &id, "", None).await; // rotated_to set
    r.hit(alice, "GET", KEY, &new_id, "", None).await; // rotated_from set
    r.hit(alice, "DELETE", KEY, &new_id, "", None).await;
    // The owner limit (3): create until it answers 409.
    r.hit(alice, "POST", KEYS, "", "", Some(r#"{"name":"three"}"#))
        .await;
    for _ in 0..3 {
        if r.hit(alice, "POST", KEYS, "", "", Some(r#"{"name":"more"}"#))
            .await
            .status
            == 409
        {
            break;
        }
    }
    r.hit(alice, "DELETE", KEY, &new_id, "", None).await;
    r.hit(alice, "DELETE", KEY, &new_id, "?permanent=true", None)
        .await; // 204

    // A revoked key: 409 INVALID_STATE on changes.
    let revoked = s
        .manager
        .list("alice")
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.name == "three")
        .unwrap()
        .id
        .to_string();
    r.hit(alice, "DELETE", KEY, &revoked, "", None).await;
    for (m, t) in &ID_ACTIONS[1..] {
        if *m != "DELETE" {
            r.hit(alice, m, t, &revoked, "", body_for(m, t)).await;
        }
    }

    // Bad input.
    r.hit(alice, "GET", KEYS, "", "?status=sleeping", None)
        .await;
    r.hit(alice, "POST", KEYS, "", "", Some(r#"{"name":"<b>"}"#))
        .await;
    r.hit(alice, "PATCH", KEY, &id, "", Some(r#"{"nmae":"x"}"#))
        .await;
    r.hit(alice, "DELETE", KEY, &id, "?permanent=maybe", None)
        .await;
    r.hit(
        alice,
        "POST",
        "/v1/api-keys/{id}/rotate",
        &id,
        "",
        Some(r#"{"grace_period_seconds":-1}"#),
    )
    .await;

    // Escalation and missing management scope: 403.
    r.hit(alice, "GET", KEYS, "", "?owner=bob", None).await;
    r.hit(
        alice,
        "POST",
        KEYS,
        "",
        "",
        Some(r#"{"name":"x","plan":"free"}"#),
    )
    .await;
    let (plain, _) = s
        .manager
        .create(
            NewKey::new("sk_live_").owner("bob").scopes(["tasks:read"]),
            &Actor::system(),
        )
        .await
        .unwrap();
    for (m, t) in ID_ACTIONS {
        r.hit(
            As::Key(plain.expose_secret()),
            m,
            t,
            &id,
            "",
            body_for(m, t),
        )
        .await;
    }
    let manager_key = s
        .manager
        .create(
            NewKey::new("sk_live_").owner("bob").scopes(["keys:manage"]),
            &Actor::system(),
        )
        .await
        .unwrap()
        .0;
    r.hit(
        As::Key(manager_key.expose_secret()),
        "PATCH",
        KEY,
        &s.manager.list("bob").await.unwrap()[1].id.to_string(),
        "",
        Some(r#"{"permissions":["tasks:write"]}"#),
    )
    .await;

    // Not found, no caller, rate limited.
    for (m, t) in ID_ACTIONS {
        r.hit(alice, m, t, "AAAAAAAAAAA", "", body_for(m, t)).await;
    }
    for (m, t) in
        ID_ACTIONS
            .iter()
            .chain(&[("GET", KEYS), ("POST", KEYS), ("GET", "/v1/rate-limit")])
    {
        r.hit(As::Anonymous, m, t, &id, "", body_for(m, t)).await;
    }
    let (tiny, _) = s
        .manager
        .create(
            NewKey::new("sk_live_")
                .owner("carol")
                .metadata("plan", "tiny"),
            &Actor::system(),
        )
        .await
        .unwrap();
    r.hit(
        As::Key(tiny.expose_secret()),
        "GET",
        "/v1/rate-limit",
        "",
        "",
        None,
    )
    .await;
    r.hit(
        As::Key(tiny.expose_secret()),
        "GET",
        "/v1/rate-limit",
        "",
        "",
        None,
    )
    .await; // 429

    // Credits per user per API.
    let credits = "/v1/credits/{owner}/{api}";
    let hit_credits = |who, method, owner: &'static str, api: &'static str, body| {
        (
            who,
            method,
            credits.replace("{owner}", owner).replace("{api}", api),
            body,
        )
    };
    for (who, method, path, body) in [
        hit_credits(As::Admin, "PUT", "bob", "rest", Some(r#"{"limit":10000}"#)),
        hit_credits(As::Admin, "PUT", "bob", "rest", Some(r#"{"limit":"lots"}"#)),
        hit_credits(
            As::User("bob"),
            "PUT",
            "bob",
            "rest",
            Some(r#"{"limit":1}"#),
        ),
        hit_credits(As::Anonymous, "PUT", "bob", "rest", Some(r#"{"limit":1}"#)),
        hit_credits(As::User("bob"), "GET", "bob", "rest", None),
        hit_credits(As::User("bob"), "GET", "bob", "batch", None),
        hit_credits(As::User("bob"), "GET", "bob", "graphql", None),
        hit_credits(As::User("alice"), "GET", "bob", "rest", None),
        hit_credits(As::Anonymous, "GET", "bob", "rest", None),
    ] {
        r.hit_path(who, method, credits, &path, body).await;
    }

    // A management key over its rate limit (1 a minute): 429 on every route.
    let (slow, _) = s
        .manager
        .create(
            NewKey::new("sk_live_")
                .owner("carol")
                .scopes(["keys:manage"])
                .metadata("plan", "tiny"),
            &Actor::system(),
        )
        .await
        .unwrap();
    let slow = slow.expose_secret();
    r.hit(As::Key(slow), "GET", KEYS, "", "", None).await;
    let credits_path = "/v1/credits/carol/rest";
    for (m, t) in ID_ACTIONS.iter().chain(&[
        ("GET", KEYS),
        ("POST", KEYS),
        ("GET", credits),
        ("PUT", credits),
    ]) {
        let path = t
            .replace("{id}", &id)
            .replace("/v1/credits/{owner}/{api}", credits_path);
        let body = if *t == credits {
            Some(r#"{"limit":1}"#)
        } else {
            body_for(m, t)
        };
        let a = r.hit_path(As::Key(slow), m, t, &path, body).await;
        assert_eq!(
            (a.status, a.code()),
            (429, "RATE_LIMITED".into()),
            "{m} {t}"
        );
        assert!(a.header("x-ratelimit-remaining").is_some());
    }

    // The store fails: 503 everywhere.
    s.store.set_failing(true);
    for (m, t) in ID_ACTIONS.iter().chain(&[("GET", KEYS), ("POST", KEYS)]) {
        let body = if *t == KEYS && *m == "POST" {
            Some(r#"{"name":"x"}"#)
        } else {
            body_for(m, t)
        };
        r.hit(alice, m, t, &id, "", body).await;
    }
    s.store.set_failing(false);

    // Every documented status of every operation was answered ...
    let documented: BTreeSet<(String, String, String)> = r.doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .iter()
                .filter(|(m, _)| *m != "parameters")
                .flat_map(move |(m, op)| {
                    op["responses"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .map(move |st| (path.clone(), m.clone(), st.clone()))
                })
        })
        .collect();
    let missing: Vec<_> = documented.difference(&r.answered).collect();
    assert!(
        missing.is_empty(),
        "documented but never answered: {missing:?}"
    );
    // ... and every documented field of every answer schema was seen.
    for name in [
        "KeyList",
        "KeyItem",
        "KeyDetails",
        "CreatedKey",
        "Usage",
        "RateLimit",
        "Error",
        "ErrorObject",
        "ErrorDetails",
    ] {
        let props: BTreeSet<String> = r.doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let seen = r.seen.get(name).cloned().unwrap_or_default();
        let never: Vec<_> = props.difference(&seen).collect();
        assert!(
            never.is_empty(),
            "{name}: documented fields never answered: {never:?}"
        );
    }
}
