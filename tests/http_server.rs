//! End-to-end: an axum server on 127.0.0.1, real HTTP/1.1 requests over TCP.
//!
//! Each test starts its own server (port 0) with the configuration it needs;
//! time comes from one `ManualClock` (verification and limits), so no
//! assertion depends on real time.
#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used)]

mod http_support;

use http_support::*;

#[tokio::test]
async fn valid_key_by_x_api_key_and_by_bearer() {
    let f = fixture().await;
    let (key, record) = issue(&f.store, reader());

    let r = get_with(f.addr, "/read", &x_api_key(&key)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, format!("{} api_key_header org_1", record.id));
    assert_eq!(r.header("x-ratelimit-limit"), Some("500"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("499"));
    // GCRA: one emission interval (60 s / 500 = 120 ms) to replenish, rounded up.
    assert_eq!(
        r.header("x-ratelimit-reset"),
        Some((T0.as_unix_secs() + 1).to_string().as_str())
    );

    let bearer = format!("Bearer {}", key.expose_secret());
    let r = get_with(f.addr, "/read", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, format!("{} bearer org_1", record.id));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("498"));

    // The same key in both headers is fine.
    let r = get_with(
        f.addr,
        "/read",
        &[
            ("x-api-key", key.expose_secret()),
            ("Authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn missing_key() {
    let f = fixture().await;
    let r = get_with(f.addr, "/read", &[]).await;
    let details = r.error(401, "MISSING_API_KEY");
    assert_eq!(details["header"], "X-API-Key");
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="api""#));
    assert_eq!(r.header("x-ratelimit-limit"), None);
}

#[tokio::test]
async fn malformed_key() {
    let f = fixture().await;
    let r = get_with(f.addr, "/read", &[("x-api-key", "sk_live_abc")]).await;
    let details = r.error(401, "MALFORMED_API_KEY");
    assert_eq!(details["reason"], "length");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );
    // Oversized: refused before parsing.
    let long = "sk_live_".to_owned() + &"a".repeat(400);
    let r = get_with(f.addr, "/read", &[("x-api-key", &long)]).await;
    assert_eq!(r.error(401, "MALFORMED_API_KEY")["reason"], "length");
    // A typo breaks the checksum.
    let (key, _) = issue(&f.store, reader());
    let mut typo = key.expose_secret().to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    let r = get_with(f.addr, "/read", &[("x-api-key", &typo)]).await;
    assert_eq!(r.error(401, "MALFORMED_API_KEY")["reason"], "checksum");
}

#[tokio::test]
async fn unknown_key_and_wrong_secret_answer_identically() {
    let f = fixture().await;
    let (known, known_record) = issue(&f.store, reader());
    // A well-formed key this service issued but never stored: unknown id.
    let (unknown, unknown_record) = verifier().issue(reader(), T0).unwrap();
    let r_unknown = get_with(f.addr, "/read", &x_api_key(&unknown)).await;
    let details = r_unknown.error(401, "INVALID_API_KEY");
    assert_eq!(details, serde_json::json!({}));

    // Now store a record under that id whose digest is another key's: the
    // id exists but the presented secret is wrong.
    let mut wrong = known_record.clone();
    wrong.id = unknown_record.id;
    f.store.insert_sync(wrong).unwrap();
    let r_wrong = get_with(f.addr, "/read", &x_api_key(&unknown)).await;
    r_wrong.error(401, "INVALID_API_KEY");

    // Nothing tells the two apart.
    assert_eq!(r_unknown.body, r_wrong.body);
    let strip = |r: &Reply| -> Vec<(String, String)> {
        r.headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
            .cloned()
            .collect()
    };
    assert_eq!(strip(&r_unknown), strip(&r_wrong));
    assert!(!r_wrong.body.contains(&unknown_record.id.to_string()));
    // And the genuine key still works.
    assert_eq!(
        get_with(f.addr, "/read", &x_api_key(&known)).await.status,
        200
    );
}

#[tokio::test]
async fn expired_key() {
    let f = fixture().await;
    let (key, _) = issue(
        &f.store,
        reader().expires_at(T0 + std::time::Duration::from_secs(3_600)),
    );
    assert_eq!(
        get_with(f.addr, "/read", &x_api_key(&key)).await.status,
        200
    );
    f.clocks
        .0
        .advance(std::time::Duration::from_secs(2 * 3_600));
    let r = get_with(f.addr, "/read", &x_api_key(&key)).await;
    let details = r.error(401, "EXPIRED_API_KEY");
    assert_eq!(details["expired_at"], "2026-03-01T13:00:00Z");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
}

#[tokio::test]
async fn disabled_and_revoked_keys() {
    let f = fixture().await;
    let (key, mut record) = issue(&f.store, reader());
    record.status = KeyStatus::Disabled;
    f.store.update_sync(record.clone()).unwrap();
    let r = get_with(f.addr, "/read", &x_api_key(&key)).await;
    r.error(401, "DISABLED_API_KEY");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );

    record.status = KeyStatus::Revoked;
    record.revocation = Some(Revocation {
        at: T0,
        reason: "leaked".into(),
    });
    f.store.update_sync(record).unwrap();
    let r = get_with(f.addr, "/read", &x_api_key(&key)).await;
    r.error(401, "REVOKED_API_KEY");
    assert!(!r.body.contains("leaked"));
}

#[tokio::test]
async fn wrong_scope_is_403() {
    let f = fixture().await;
    let (key, _) = issue(&f.store, reader());
    let r = get_with(f.addr, "/write", &x_api_key(&key)).await;
    let details = r.error(403, "INSUFFICIENT_SCOPE");
    assert_eq!(details["required"], "tasks:write");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="tasks:write""#)
    );
}

#[tokio::test]
async fn over_the_rate_limit() {
    let f = fixture().await;
    let (key, _) = issue(&f.store, reader().metadata("plan", "tiny"));
    for remaining in ["1", "0"] {
        let r = get_with(f.addr, "/read", &x_api_key(&key)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
    }
    let r = get_with(f.addr, "/read", &x_api_key(&key)).await;
    let details = r.error(429, "RATE_LIMITED");
    assert_eq!(details["retry_after"], 30);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    // On a 429, Reset is when a retry is admitted (as Retry-After says),
    // not the full replenishment 60 s after the burst.
    assert_eq!(
        r.header("x-ratelimit-reset"),
        Some((T0.as_unix_secs() + 30).to_string().as_str())
    );
    assert_eq!(r.header("www-authenticate"), None);
    // Half a minute later one more is admitted.
    f.clocks.1.advance(Duration::from_secs(30));
    assert_eq!(
        get_with(f.addr, "/read", &x_api_key(&key)).await.status,
        200
    );
}

#[tokio::test]
async fn out_of_credits_and_credits_spent_only_when_admitted() {
    let store = Arc::new(MemoryStore::new());
    let clocks = clocks();
    let (key, record) = issue(&store, reader().metadata("plan", "tiny"));
    let limits = MemoryLimits::with_clock(clocks.0.clone());
    let key_acct = CreditAccount::Key(record.id.as_u64());
    let owner_acct = CreditAccount::Owner {
        owner: "org_1",
        api: "rest",
    };
    limits.set_credits_sync(key_acct, 5, None);
    limits.set_credits_sync(owner_acct, 2, None);
    let gate = Arc::new(gate_with(Arc::clone(&store), &clocks, limits).with_credits("rest"));
    let addr = serve(router(Arc::clone(&gate))).await;

    assert_eq!(get_with(addr, "/read", &x_api_key(&key)).await.status, 200);
    assert_eq!(get_with(addr, "/read", &x_api_key(&key)).await.status, 200);
    // Rate-limited: no credit spent (owner has 0 left anyway; key keeps 3).
    get_with(addr, "/read", &x_api_key(&key))
        .await
        .error(429, "RATE_LIMITED");
    let ledger = gate.limits();
    assert_eq!(ledger.credits_sync(key_acct).unwrap().remaining, 3);

    clocks.1.advance(Duration::from_secs(60));
    let r = get_with(addr, "/read", &x_api_key(&key)).await;
    r.error(429, "USAGE_EXCEEDED");
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("retry-after"), None);
    // The owner's balance was short: the key's was not debited either.
    assert_eq!(ledger.credits_sync(key_acct).unwrap().remaining, 3);
    assert_eq!(ledger.credits_sync(owner_acct).unwrap().remaining, 0);
}

const JWT: &str = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln";

/// Issue 9, item 1: the layer fails closed. Foreign credentials get the
/// 401 of a request without a key, with the JSON body and the challenge,
/// even when the handler never asks for the key.
async fn assert_foreign_is_rejected(value: &str) {
    let f = fixture().await;
    let r = get_with(f.addr, "/guarded", &[("Authorization", value)]).await;
    r.error(401, "MISSING_API_KEY");
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="api""#));
    assert!(!r.body.contains("secret data"), "{r:?}");
}

#[tokio::test]
async fn foreign_basic_is_rejected_by_default() {
    assert_foreign_is_rejected("Basic dXNlcjpwYXNz").await;
}

#[tokio::test]
async fn foreign_bearer_is_rejected_by_default() {
    assert_foreign_is_rejected("Bearer whatever").await;
}

#[tokio::test]
async fn foreign_token_scheme_is_rejected_by_default() {
    assert_foreign_is_rejected("Token x").await;
}

#[tokio::test]
async fn foreign_jwt_is_rejected_by_default() {
    assert_foreign_is_rejected(JWT).await;
}

#[tokio::test]
async fn guarded_route_admits_only_a_valid_key_meeting_the_requirement() {
    let f = fixture().await;
    let (key, _) = issue(&f.store, reader());
    let r = get_with(f.addr, "/guarded", &x_api_key(&key)).await;
    assert_eq!((r.status, r.body.as_str()), (200, "secret data"));
    let (writer, _) = issue(&f.store, reader().scopes(["tasks:write"]));
    let r = get_with(f.addr, "/guarded", &x_api_key(&writer)).await;
    r.error(403, "INSUFFICIENT_SCOPE");
    let r = get_with(f.addr, "/guarded", &[]).await;
    r.error(401, "MISSING_API_KEY");
}

#[tokio::test]
async fn foreign_bearer_tokens_pass_through_only_when_opted_in() {
    let f = fixture().await;
    let jwt = [(
        "Authorization",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
    )];
    let r = get_with(f.addr, "/open", &jwt).await;
    assert_eq!((r.status, r.body.as_str()), (200, "anonymous"));
    // A handler that needs a key refuses it.
    let r = get_with(f.addr, "/read", &jwt).await;
    r.error(401, "MISSING_API_KEY");
}

#[tokio::test]
async fn two_different_keys_are_refused() {
    let f = fixture().await;
    let (a, _) = issue(&f.store, reader());
    let (b, _) = issue(&f.store, reader());
    let bearer = format!("Bearer {}", b.expose_secret());
    let r = get_with(
        f.addr,
        "/read",
        &[("x-api-key", a.expose_secret()), ("authorization", &bearer)],
    )
    .await;
    r.error(400, "INVALID_REQUEST");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="invalid_request""#)
    );
    // Query-string keys are refused by default.
    let path = format!("/read?api_key={}", a.expose_secret());
    get_with(f.addr, &path, &[])
        .await
        .error(400, "INVALID_REQUEST");
}

#[tokio::test]
async fn post_tag_failures_are_limited_and_a_valid_key_from_that_address_still_works() {
    let store = Arc::new(MemoryStore::new());
    let clocks = clocks();
    let (good, _) = issue(&store, reader());
    let cfg = FailureThrottleConfig {
        max_failures: 3,
        lockout: Duration::from_secs(120),
        ..FailureThrottleConfig::default()
    };
    let limits = MemoryLimits::with_clock(clocks.0.clone()).with_failure_throttle(cfg);
    let gate = Arc::new(gate_with(Arc::clone(&store), &clocks, limits));
    let addr = serve(router(gate)).await;
    // A correctly tagged key whose id is not in the store (a deleted key).
    let (unknown, _) = verifier().issue(reader(), T0).unwrap();
    for _ in 0..3 {
        get_with(addr, "/read", &x_api_key(&unknown))
            .await
            .error(401, "INVALID_API_KEY");
    }
    // That key id is backed off, cheaply (no store lookup)...
    let r = get_with(addr, "/read", &x_api_key(&unknown)).await;
    assert_eq!(r.error(429, "TOO_MANY_FAILED_ATTEMPTS")["retry_after"], 120);
    assert_eq!(r.header("retry-after"), Some("120"));
    // ...while a valid key from the same address is never refused for it.
    assert_eq!(get_with(addr, "/read", &x_api_key(&good)).await.status, 200);
    clocks.1.advance(Duration::from_secs(120));
    get_with(addr, "/read", &x_api_key(&unknown))
        .await
        .error(401, "INVALID_API_KEY");
}

use apikey_testkit::failing::FailingStore;

/// A store that never answers.
#[derive(Clone, Debug)]
struct HangingStore;

impl KeyStore for HangingStore {
    async fn fetch(&self, _: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn store_failure_is_503_never_401() {
    let (key, _) = verifier().issue(reader(), T0).unwrap();
    let addr = serve(router(Arc::new(gate(FailingStore, &clocks())))).await;
    let r = get_with(addr, "/read", &x_api_key(&key)).await;
    assert_eq!(r.error(503, "STORE_UNAVAILABLE")["retry_after"], 1);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("www-authenticate"), None);
    assert!(!r.body.contains("db-primary") && !r.body.contains("refused"));
}

#[tokio::test]
async fn store_timeout_is_503() {
    let (key, _) = verifier().issue(reader(), T0).unwrap();
    let gate = gate(HangingStore, &clocks()).with_store_timeout(Duration::from_millis(50));
    let addr = serve(router(Arc::new(gate))).await;
    let r = get_with(addr, "/read", &x_api_key(&key)).await;
    r.error(503, "STORE_UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("1"));
}

/// Issue 18, item 2: the store timeout lives on the gate, so
/// `Gate::check` (not only the axum layer) is bounded by it.
#[tokio::test]
async fn gate_check_is_bounded_by_the_gates_store_timeout() {
    let (key, _) = verifier().issue(reader(), T0).unwrap();
    let gate = gate(HangingStore, &clocks()).with_store_timeout(Duration::from_millis(20));
    assert_eq!(gate.store_timeout(), Some(Duration::from_millis(20)));
    let header = key.expose_secret().to_owned();
    let d = gate
        .check(
            [("x-api-key", header.as_str())],
            None,
            None,
            &Route::any_key(),
        )
        .await;
    let apikey::web::Decision::Rejected(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.error.code(), "STORE_UNAVAILABLE");
    assert_eq!(r.to_response().header("retry-after"), Some("1"));
}

/// A store timeout too long to add to the clock (`Duration::MAX`: "no
/// bound") is no deadline, as `tokio::time::timeout` treats it: the
/// request is decided, nothing panics.
#[tokio::test]
async fn a_store_timeout_past_the_clocks_range_is_no_deadline() {
    let store = Arc::new(MemoryStore::new());
    let (key, _) = issue(&store, reader());
    let gate = gate(Arc::clone(&store), &clocks()).with_store_timeout(Duration::MAX);
    let addr = serve(router(Arc::new(gate))).await;
    let r = get_with(addr, "/read", &x_api_key(&key)).await;
    assert_eq!(r.status, 200, "{r:?}");
}
