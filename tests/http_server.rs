//! End-to-end: an axum server on 127.0.0.1, real HTTP/1.1 requests over TCP.
//!
//! Each test starts its own server (port 0) with the configuration it needs;
//! time comes from one `ManualClock` (verification and limits), so no
//! assertion depends on real time.
#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apikey::limits::{CreditAccount, FailureThrottleConfig, MemoryLimits, Quota};
use apikey::web::ApiKeyLayer;
use apikey::web::{Admitted, ForeignCredentials, Gate, QuotaTable, Route};
use apikey::*;
use axum::Router;
use axum::routing::get;
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T0: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);

/// The clock, and a handle advancing it in `std::time::Duration` steps.
type Clocks = (ManualClock, Adv);
type TestGate<S> = Gate<S, ManualClock, MemoryLimits<ManualClock>>;

#[derive(Clone)]
struct Adv(ManualClock);

impl Adv {
    fn advance(&self, d: Duration) {
        self.0.advance(time::Duration::try_from(d).unwrap());
    }
}

const PROFESSIONAL: Quota = Quota::unlimited().per_minute(500).per_hour(10_000);

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32]).unwrap()).unwrap())
}

fn clocks() -> Clocks {
    let c = ManualClock::new(T0);
    (c.clone(), Adv(c))
}

fn gate<S: KeyStore>(store: S, clocks: &Clocks) -> TestGate<S> {
    gate_with(store, clocks, MemoryLimits::with_clock(clocks.0.clone()))
}

fn gate_with<S: KeyStore>(
    store: S,
    clocks: &Clocks,
    limits: MemoryLimits<ManualClock>,
) -> TestGate<S> {
    Gate::new(Authenticator::read_only_with_clock(
        verifier(),
        store,
        clocks.0.clone(),
    ))
    .with_limits(limits)
    .with_quotas(QuotaTable::fixed(PROFESSIONAL).plan("tiny", Quota::new(Some(2), Some(100))))
}

fn issue(store: &MemoryStore, new: NewKey) -> (ApiKey, KeyRecord) {
    let (key, record) = verifier().issue(new, T0).unwrap();
    store.insert_sync(record.clone()).unwrap();
    (key, record)
}

async fn whoami(key: VerifiedKey, admitted: Admitted) -> String {
    format!(
        "{} {} {}",
        key.id(),
        admitted.scheme,
        key.owner().unwrap_or("-")
    )
}

async fn maybe(key: Option<VerifiedKey>) -> String {
    match key {
        Some(k) => format!("key {}", k.id()),
        None => "anonymous".to_owned(),
    }
}

/// Routes: `/read` needs `tasks:read`, `/write` needs `tasks:write`,
/// `/open` accepts foreign credentials (JWTs) too (`PassThrough`),
/// `/guarded` needs `tasks:read` and its handler never looks at the key.
fn router<S: KeyStore + Send + Sync + 'static>(gate: Arc<TestGate<S>>) -> Router {
    let layer = |route: Route| ApiKeyLayer::new(Arc::clone(&gate), route);
    Router::new()
        .route(
            "/read",
            get(whoami).route_layer(layer(Route::new(Requirement::scope("tasks:read").unwrap()))),
        )
        .route(
            "/write",
            get(whoami).route_layer(layer(Route::new(
                Requirement::scope("tasks:write").unwrap(),
            ))),
        )
        .route(
            "/open",
            get(maybe).route_layer(layer(
                Route::any_key().with_foreign_credentials(ForeignCredentials::PassThrough),
            )),
        )
        // A handler that does not ask for the key: only the layer guards it.
        .route(
            "/guarded",
            get(|| async { "secret data" })
                .route_layer(layer(Route::new(Requirement::scope("tasks:read").unwrap()))),
        )
}

/// The client address from the connection, for the layer (which reads a
/// `ClientIp` extension: it does not depend on axum's server).
async fn client_ip(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.extensions_mut()
        .insert(apikey::web::ClientIp(peer.ip()));
    next.run(req).await
}

async fn serve(router: Router) -> SocketAddr {
    let router = router.layer(axum::middleware::from_fn(client_ip));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Checks the error envelope and returns `details`.
    fn error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["success"], Value::Bool(false), "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(v["error"]["details"].is_object(), "{v}");
        v["error"]["details"].clone()
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn x_api_key(key: &ApiKey) -> [(&str, &str); 1] {
    [("X-API-Key", key.expose_secret())]
}

struct Fixture {
    addr: SocketAddr,
    store: Arc<MemoryStore>,
    clocks: Clocks,
}

async fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let clocks = clocks();
    let gate = Arc::new(gate(Arc::clone(&store), &clocks));
    let addr = serve(router(gate)).await;
    Fixture {
        addr,
        store,
        clocks,
    }
}

fn reader() -> NewKey {
    NewKey::new("sk_live_")
        .owner("org_1")
        .scopes(["tasks:read"])
}

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
        Some((T0.unix_timestamp() + 1).to_string().as_str())
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
    let (key, _) = issue(&f.store, reader().expires_at(T0 + time::Duration::hours(1)));
    assert_eq!(
        get_with(f.addr, "/read", &x_api_key(&key)).await.status,
        200
    );
    f.clocks.0.advance(time::Duration::hours(2));
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
        Some((T0.unix_timestamp() + 30).to_string().as_str())
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

// ----- one pipeline: the layer over a KeyManager's authenticator -----

struct Managed {
    addr: SocketAddr,
    manager: Arc<KeyManager<MemoryStore, ManualClock>>,
    audit: Arc<MemoryAuditSink>,
}

async fn managed() -> Managed {
    let clocks = clocks();
    let audit = Arc::new(MemoryAuditSink::new());
    let manager = Arc::new(
        KeyManager::with_clock(verifier(), MemoryStore::new(), clocks.0.clone())
            .with_audit_sink(Arc::clone(&audit))
            .with_legacy_prefix("oldco_", "sk_live_")
            .unwrap(),
    );
    let gate = Gate::new(manager.authenticator().clone())
        .with_limits(MemoryLimits::with_clock(clocks.0.clone()));
    let addr = serve(router(Arc::new(gate))).await;
    Managed {
        addr,
        manager,
        audit,
    }
}

fn failures(audit: &MemoryAuditSink) -> Vec<&'static str> {
    audit
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            AuditKind::VerificationFailed { code } => Some(code),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn requests_through_the_layer_update_last_used_and_counts() {
    let m = managed().await;
    let (key, s) = m.manager.create(reader(), &Actor::system()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            get_with(m.addr, "/read", &x_api_key(&key)).await.status,
            200
        );
    }
    assert_eq!(m.manager.usage().pending(), 3);
    assert_eq!(m.manager.flush().await.unwrap(), 3);
    let got = m.manager.get(s.id).await.unwrap();
    assert_eq!((got.requests_today, got.requests_this_month), (3, 3));
    assert_eq!(got.last_used_at, Some(T0));
}

#[tokio::test]
async fn an_imported_legacy_key_passes_the_layer() {
    let m = managed().await;
    let legacy = "oldco_8f14e45fceea167a5a36dedd4bea2544";
    m.manager
        .import(
            ImportKey::plaintext(legacy).scopes(["tasks:read"]),
            &Actor::system(),
        )
        .await
        .unwrap();
    let r = get_with(m.addr, "/read", &[("X-API-Key", legacy)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // And a wrong legacy key is refused, with no event per attempt.
    let r = get_with(m.addr, "/read", &[("X-API-Key", "oldco_nope")]).await;
    r.error(401, "INVALID_API_KEY");
    assert!(failures(&m.audit).is_empty());
}

#[tokio::test]
async fn a_wrong_secret_through_the_layer_writes_an_audit_event() {
    let m = managed().await;
    let (_, s) = m.manager.create(reader(), &Actor::system()).await.unwrap();
    // A key this service could have issued, stored under its id with
    // another key's digest: the id exists, the secret is wrong.
    let (other, other_record) = verifier().issue(reader(), T0).unwrap();
    let mut wrong = m.manager.record(s.id).await.unwrap();
    wrong.id = other_record.id;
    m.manager.store().insert_sync(wrong).unwrap();
    get_with(m.addr, "/read", &x_api_key(&other))
        .await
        .error(401, "INVALID_API_KEY");
    let events = m.audit.events();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.kind, AuditKind::VerificationFailed { .. }))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].key_id, Some(other.id()));
    assert_eq!(
        failed[0].kind,
        AuditKind::VerificationFailed {
            code: "INVALID_API_KEY"
        }
    );
}

#[tokio::test]
async fn junk_through_the_layer_is_only_counted_and_sampled() {
    let m = managed().await;
    for junk in ["nope", "sk_live_short", "Bearer-ish", "kwi_sk_x"] {
        let r = get_with(m.addr, "/read", &[("X-API-Key", junk)]).await;
        assert_eq!(r.status, 401);
    }
    let (key, _) = verifier().issue(reader(), T0).unwrap();
    let mut forged = key.expose_secret().to_owned();
    // Change one secret character and fix the checksum: a forged key.
    let body = forged.split_off("sk_live_".len());
    let mut bytes = body.into_bytes();
    bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
    let mut text = format!("sk_live_{}", String::from_utf8(bytes).unwrap()).into_bytes();
    apikey::__private::write_checksum(&mut text);
    let forged = String::from_utf8(text).unwrap();
    get_with(m.addr, "/read", &[("X-API-Key", forged.as_str())])
        .await
        .error(401, "INVALID_API_KEY");
    assert!(
        failures(&m.audit).is_empty(),
        "junk wrote events one by one"
    );
    m.manager.shutdown().await.unwrap();
    let sampled: u64 = m
        .audit
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            AuditKind::RejectionsSampled { counts } => {
                Some(counts.iter().map(|(_, n)| n).sum::<u64>())
            }
            _ => None,
        })
        .sum();
    assert_eq!(sampled, 5);
}

/// Usage recorded over HTTP survives a flush that is cancelled (here by a
/// timeout while the store is slow): nothing is lost, nothing doubled.
#[tokio::test]
async fn a_cancelled_flush_after_http_traffic_loses_nothing() {
    use apikey_testkit::netstore::NetStore;
    let store = NetStore::new(Duration::ZERO);
    let clocks = clocks();
    let manager = Arc::new(KeyManager::with_clock(
        verifier(),
        Arc::clone(&store),
        clocks.0.clone(),
    ));
    let gate = Gate::new(manager.authenticator().clone())
        .with_limits(MemoryLimits::with_clock(clocks.0.clone()));
    let addr = serve(router(Arc::new(gate))).await;
    let (key, s) = manager.create(reader(), &Actor::system()).await.unwrap();
    for _ in 0..20 {
        assert_eq!(get_with(addr, "/read", &x_api_key(&key)).await.status, 200);
    }
    store.set_latency(Duration::from_millis(50));
    for _ in 0..2 {
        assert!(
            tokio::time::timeout(Duration::from_millis(5), manager.flush())
                .await
                .is_err()
        );
    }
    assert_eq!(manager.usage().pending(), 20);
    store.set_latency(Duration::ZERO);
    assert_eq!(manager.flush().await.unwrap(), 20);
    assert_eq!(manager.usage_of(s.id).await.unwrap().today, 20);
}

/// Legacy (untagged) lookups are throttled per client address, counted when
/// they start; a valid native key from that same address is never refused
/// for it, and neither is the valid legacy key of someone else elsewhere.
#[tokio::test]
async fn legacy_guesses_lock_out_the_address_for_legacy_lookups_only() {
    let clocks = clocks();
    let manager = Arc::new(
        KeyManager::with_clock(verifier(), MemoryStore::new(), clocks.0.clone())
            .with_legacy_prefix("oldco_", "sk_live_")
            .unwrap(),
    );
    let cfg = FailureThrottleConfig {
        max_failures: 3,
        lockout: Duration::from_secs(120),
        ..FailureThrottleConfig::default()
    };
    let gate = Gate::new(manager.authenticator().clone())
        .with_limits(MemoryLimits::with_clock(clocks.0.clone()).with_failure_throttle(cfg));
    let addr = serve(router(Arc::new(gate))).await;
    let (native, _) = manager.create(reader(), &Actor::system()).await.unwrap();
    let legacy = "oldco_8f14e45fceea167a5a36dedd4bea2544";
    manager
        .import(
            ImportKey::plaintext(legacy).scopes(["tasks:read"]),
            &Actor::system(),
        )
        .await
        .unwrap();
    for i in 0..3 {
        let guess = format!("oldco_guess{i}");
        get_with(addr, "/read", &[("X-API-Key", guess.as_str())])
            .await
            .error(401, "INVALID_API_KEY");
    }
    // The address may not start another legacy lookup...
    let r = get_with(addr, "/read", &[("X-API-Key", legacy)]).await;
    assert_eq!(r.error(429, "TOO_MANY_FAILED_ATTEMPTS")["retry_after"], 120);
    // ...but a valid native key from the same address still works.
    assert_eq!(
        get_with(addr, "/read", &x_api_key(&native)).await.status,
        200
    );
    clocks.1.advance(Duration::from_secs(120));
    assert_eq!(
        get_with(addr, "/read", &[("X-API-Key", legacy)])
            .await
            .status,
        200
    );
}

// ----- issue 17: post-tag failures, legacy keys in Bearer, MISSING_API_KEY -----

/// Issue 17, item 7: the key's own plan, not the default quota.
const PAID: Quota = Quota::new(Some(2), Some(100));

/// A gate whose default quota is unlimited and whose `paid` plan allows 2
/// requests a minute, over the pipeline of a manager that knows the legacy
/// prefix `oldco_`.
async fn paid_plan_server() -> (SocketAddr, Arc<KeyManager<MemoryStore, ManualClock>>) {
    let clocks = clocks();
    let manager = Arc::new(
        KeyManager::with_clock(verifier(), MemoryStore::new(), clocks.0.clone())
            .with_legacy_prefix("oldco_", "sk_live_")
            .unwrap(),
    );
    let gate = Gate::new(manager.authenticator().clone())
        .with_limits(MemoryLimits::with_clock(clocks.0.clone()))
        .with_quotas(QuotaTable::fixed(Quota::unlimited()).plan("paid", PAID));
    (serve(router(Arc::new(gate))).await, manager)
}

/// Repeated scope failures of a key on a 2-a-minute plan: two 403s, then
/// 429 `RATE_LIMITED` with the plan's numbers, and the plan stays spent.
async fn assert_scope_failures_run_out_the_plan(addr: SocketAddr, headers: &[(&str, &str)]) {
    for _ in 0..2 {
        get_with(addr, "/write", headers)
            .await
            .error(403, "INSUFFICIENT_SCOPE");
    }
    for _ in 0..48 {
        let r = get_with(addr, "/write", headers).await;
        r.error(429, "RATE_LIMITED");
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"), "{r:?}");
    }
    // The failures spent the key's own budget: an allowed call is refused too.
    get_with(addr, "/read", headers)
        .await
        .error(429, "RATE_LIMITED");
}

#[tokio::test]
async fn scope_failures_are_charged_to_the_keys_own_plan() {
    let (addr, manager) = paid_plan_server().await;
    let (key, _) = manager
        .create(reader().metadata("plan", "paid"), &Actor::system())
        .await
        .unwrap();
    assert_scope_failures_run_out_the_plan(addr, &x_api_key(&key)).await;
}

#[tokio::test]
async fn scope_failures_of_a_legacy_key_are_charged_to_its_plan() {
    let (addr, manager) = paid_plan_server().await;
    let legacy = "oldco_8f14e45fceea167a5a36dedd4bea2544";
    manager
        .import(
            ImportKey::plaintext(legacy)
                .scopes(["tasks:read"])
                .metadata("plan", "paid"),
            &Actor::system(),
        )
        .await
        .unwrap();
    assert_scope_failures_run_out_the_plan(addr, &[("X-API-Key", legacy)]).await;
}

/// Issue 17, item 11: seeds 001 and 003 send keys as `Authorization:
/// Bearer`; an imported key sent that way authenticates, while a JWT is
/// still not ours.
#[tokio::test]
async fn an_imported_legacy_key_sent_as_bearer_authenticates() {
    let m = managed().await;
    let legacy = "oldco_8f14e45fceea167a5a36dedd4bea2544";
    let s = m
        .manager
        .import(
            ImportKey::plaintext(legacy).scopes(["tasks:read"]),
            &Actor::system(),
        )
        .await
        .unwrap();
    let bearer = format!("Bearer {legacy}");
    let r = get_with(m.addr, "/read", &[("Authorization", bearer.as_str())]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, format!("{} bearer -", s.id));
    // A wrong legacy key in Bearer is ours and refused as a key...
    get_with(m.addr, "/read", &[("Authorization", "Bearer oldco_nope")])
        .await
        .error(401, "INVALID_API_KEY");
    // ...while foreign credentials are still refused as before, or passed
    // on where the route opts in.
    let jwt = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln";
    get_with(m.addr, "/read", &[("Authorization", jwt)])
        .await
        .error(401, "MISSING_API_KEY");
    let r = get_with(m.addr, "/open", &[("Authorization", jwt)]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "anonymous"));
}

/// Issue 17, item 13: seed 003 documents `"details": {"header":
/// "Authorization"}` for a service that takes keys as Bearer only.
#[tokio::test]
async fn missing_key_names_the_authorization_header_when_only_bearer_is_accepted() {
    let store = Arc::new(MemoryStore::new());
    let clocks = clocks();
    let gate = gate(Arc::clone(&store), &clocks);
    let extractor = apikey::web::Extractor::new(gate.authenticator().verifier().prefixes().clone())
        .with_sources(apikey::web::Sources::BEARER);
    let addr = serve(router(Arc::new(gate.with_extractor(extractor)))).await;
    let r = get_with(addr, "/read", &[]).await;
    let details = r.error(401, "MISSING_API_KEY");
    assert_eq!(
        details,
        serde_json::json!({"header": "Authorization", "accepted": ["Authorization: Bearer"]})
    );
}

/// One stored key, a server over a gate built with `build`, and one
/// admitted request: the store, the key's id and the gate.
async fn one_request(
    build: impl FnOnce(Arc<MemoryStore>, &Clocks) -> TestGate<Arc<MemoryStore>>,
) -> (Arc<MemoryStore>, KeyId, Arc<TestGate<Arc<MemoryStore>>>) {
    let store = Arc::new(MemoryStore::new());
    let (key, record) = issue(&store, NewKey::new("sk_live_").scopes(["tasks:read"]));
    let clocks = clocks();
    let gate = Arc::new(build(Arc::clone(&store), &clocks));
    let addr = serve(router(Arc::clone(&gate))).await;
    let r = get_with(addr, "/read", &x_api_key(&key)).await;
    assert_eq!(r.status, 200, "{r:?}");
    (store, record.id, gate)
}

/// A gate over `Authenticator::with_clock` (the door the README and the
/// module docs show, not `Gate::from_manager`), over a store that takes usage.
fn usage_gate(store: Arc<MemoryStore>, clocks: &Clocks) -> TestGate<Arc<MemoryStore>> {
    Gate::new(Authenticator::with_clock(
        verifier(),
        store,
        clocks.0.clone(),
    ))
    .with_limits(MemoryLimits::with_clock(clocks.0.clone()))
}

/// Issue 18, item 3: a gate built from a bare authenticator records usage,
/// so one request and one flush fill in `last_used_at`.
#[tokio::test]
async fn a_gate_over_a_bare_authenticator_records_last_used() {
    let (store, id, gate) = one_request(usage_gate).await;
    gate.flush().await.unwrap();
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(T0));
    let day = T0.date();
    assert_eq!(
        apikey::UsageStore::usage(&*store, id, day..day.next_day().unwrap())
            .await
            .unwrap(),
        vec![(day, 1)]
    );
}

/// Issue 18, item 3: the axum layer writes usage without anyone calling
/// `flush`: it starts one in the background when due.
#[tokio::test]
async fn the_layer_flushes_usage_in_the_background() {
    let (store, id, _gate) = one_request(usage_gate).await;
    let mut last_used = None;
    for _ in 0..500 {
        last_used = store.get(id).await.unwrap().unwrap().last_used_at;
        if last_used.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(last_used, Some(T0), "the background flush never ran");
}

/// Issue 18, item 3: usage off is an explicit choice, `read_only`.
#[tokio::test]
async fn a_read_only_authenticator_records_no_usage() {
    let (store, id, gate) = one_request(gate).await;
    assert_eq!(gate.flush().await.unwrap(), 0);
    assert!(gate.authenticator().usage().is_none());
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, None);
}

/// Sets the client address from `X-Test-Client` (a stand-in for a trusted
/// proxy's forwarding header), so one test can call from many networks.
async fn test_client(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let ip = req
        .headers()
        .get("x-test-client")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(ip) = ip {
        req.extensions_mut().insert(apikey::web::ClientIp(ip));
    }
    next.run(req).await
}

/// A server whose gate raises monitoring events into the returned sink.
async fn monitored(
    store: Arc<MemoryStore>,
    clocks: &Clocks,
    limits: MemoryLimits<ManualClock>,
) -> (SocketAddr, Arc<MemoryAuditSink>) {
    let events = Arc::new(MemoryAuditSink::new());
    let monitor = Arc::new(apikey::pipeline::Monitor::new(
        apikey::pipeline::MonitorConfig::default(),
        events.clone(),
    ));
    let gate = Gate::new(
        Authenticator::with_clock(verifier(), store, clocks.0.clone()).with_monitor(monitor),
    )
    .with_limits(limits)
    .with_credits("rest");
    let router = router(Arc::new(gate)).layer(axum::middleware::from_fn(test_client));
    (serve(router).await, events)
}

fn kinds(events: &MemoryAuditSink) -> Vec<&'static str> {
    events.events().iter().map(|e| e.kind.as_str()).collect()
}

/// Issue 22 (seed 001, "key used from new location"): the first network
/// sets the baseline; a second network raises one event, naming the /24.
#[tokio::test]
async fn a_key_used_from_a_second_network_raises_one_new_network_event() {
    let store = Arc::new(MemoryStore::new());
    let (key, record) = issue(&store, NewKey::new("sk_live_").scopes(["tasks:read"]));
    let clocks = clocks();
    let limits = MemoryLimits::with_clock(clocks.0.clone());
    let (addr, events) = monitored(store, &clocks, limits).await;
    for client in [
        "198.51.100.4",
        "198.51.100.77",
        "203.0.113.9",
        "203.0.113.10",
    ] {
        let r = get_with(
            addr,
            "/read",
            &[
                ("X-API-Key", key.expose_secret()),
                ("X-Test-Client", client),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let raised = events.events();
    assert_eq!(kinds(&events), ["new_network"]);
    assert_eq!(raised[0].key_id, Some(record.id));
    assert_eq!(
        raised[0].kind,
        AuditKind::NewNetwork {
            network: "203.0.113.0/24".parse().unwrap()
        }
    );
}

/// Issue 22 (seed 001, "failed authentication attempts"): 1,000 failures
/// from one network are one burst event, not 1,000.
#[tokio::test]
async fn a_thousand_failures_from_one_network_raise_one_burst_summary() {
    let store = Arc::new(MemoryStore::new());
    let clocks = clocks();
    let limits = MemoryLimits::with_clock(clocks.0.clone());
    let (addr, events) = monitored(store, &clocks, limits).await;
    for i in 0..1_000 {
        let client = format!("198.51.100.{}", i % 256);
        let r = get_with(
            addr,
            "/read",
            &[("X-API-Key", "sk_live_nope"), ("X-Test-Client", &client)],
        )
        .await;
        assert_eq!(r.status, 401, "{r:?}");
    }
    let raised = events.events();
    assert_eq!(kinds(&events), ["failure_burst"]);
    match &raised[0].kind {
        AuditKind::FailureBurst {
            network: Some(n), ..
        } => assert_eq!(n.to_string(), "198.51.100.0/24"),
        other => panic!("{other:?}"),
    }
    assert_eq!(raised[0].key_id, None);
}

/// Issue 22 (seed 001, "quota exceeded"): a key out of credits raises one
/// event per dedupe window, however many refusals follow.
#[tokio::test]
async fn exhausted_credits_raise_quota_exceeded_once_per_window() {
    let store = Arc::new(MemoryStore::new());
    let (key, record) = issue(&store, NewKey::new("sk_live_").scopes(["tasks:read"]));
    let clocks = clocks();
    let limits = MemoryLimits::with_clock(clocks.0.clone());
    limits.set_credits_sync(CreditAccount::Key(record.id.as_u64()), 2, None);
    let (addr, events) = monitored(store, &clocks, limits).await;
    let headers = x_api_key(&key);
    let call = || get_with(addr, "/read", &headers);
    assert_eq!(call().await.status, 200);
    assert_eq!(call().await.status, 200);
    for _ in 0..5 {
        call().await.error(429, "USAGE_EXCEEDED");
    }
    assert_eq!(kinds(&events), ["quota_exceeded"]);
    clocks.1.advance(Duration::from_secs(3_600));
    for _ in 0..5 {
        call().await.error(429, "USAGE_EXCEEDED");
    }
    let raised = events.events();
    assert_eq!(kinds(&events), ["quota_exceeded", "quota_exceeded"]);
    assert_eq!(raised[1].kind, AuditKind::QuotaExceeded { suppressed: 4 });
    assert_eq!(raised[1].key_id, Some(record.id));
}
