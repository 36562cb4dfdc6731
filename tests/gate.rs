//! The framework-agnostic gate: ordering of throttle, auth, rate limit and
//! credits, without any HTTP server.
#![allow(clippy::unwrap_used)]

use apikey_testkit::VerifyExt;
use apikey_testkit::WriteExt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use apikey::Timestamp;
use apikey::limits::{
    Admission, CreditAccount, CreditCharge, CreditScope, FailureThrottleConfig, Limits,
    MemoryLimits, OwnerApi, Quota, UntaggedAttempt, Verdict,
};
use apikey::web::Scheme;
use apikey::web::{Decision, Gate, QuotaTable, Route};
use apikey::*;

use apikey_testkit::netstore::NetStore;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

const T0: Timestamp = match apikey::Timestamp::checked_from_unix_micros(1_772_366_400_000_000) {
    Some(t) => t,
    None => apikey::Timestamp::MIN,
};

struct Setup {
    gate: Gate<Arc<NetStore>, ManualClock, MemoryLimits<ManualClock>>,
    key: ApiKey,
    /// Expires at T0 + 1 h.
    short_lived: ApiKey,
    id: u64,
    clock: ManualClock,
}

fn setup(quota: Quota, key_credits: Option<u64>, owner_credits: Option<u64>) -> Setup {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[5; 32]).unwrap()).unwrap());
    let store = NetStore::new(Duration::ZERO);
    let (key, record) = verifier
        .issue(NewKey::new("kwi_sk_").owner("org_1").scopes(["read"]), T0)
        .unwrap();
    block_on(store.insert(record.clone())).unwrap();
    let (short_lived, r2) = verifier
        .issue(
            NewKey::new("kwi_sk_").expires_at(T0 + std::time::Duration::from_secs(3_600)),
            T0,
        )
        .unwrap();
    block_on(store.insert(r2)).unwrap();
    let clock = ManualClock::new(T0);
    let limits =
        MemoryLimits::with_clock(clock.clone()).with_failure_throttle(FailureThrottleConfig {
            max_failures: 2,
            ..Default::default()
        });
    let id = record.id.as_u64();
    if let Some(n) = key_credits {
        limits.set_credits_sync(CreditAccount::Key(id), n, None);
    }
    if let Some(n) = owner_credits {
        limits.set_credits_sync(
            CreditAccount::Owner {
                owner: "org_1",
                api: "rest",
            },
            n,
            None,
        );
    }
    let gate = Gate::new(Authenticator::with_clock(verifier, store, clock.clone()))
        .with_limits(limits)
        .with_quotas(QuotaTable::fixed(quota))
        .with_credits("rest");
    Setup {
        gate,
        key,
        short_lived,
        id,
        clock,
    }
}

fn key_left(s: &Setup) -> u64 {
    s.gate
        .limits()
        .credits_sync(CreditAccount::Key(s.id))
        .unwrap()
        .remaining
}

fn owner_left(s: &Setup) -> u64 {
    s.gate
        .limits()
        .credits_sync(CreditAccount::Owner {
            owner: "org_1",
            api: "rest",
        })
        .unwrap()
        .remaining
}

async fn check(s: &Setup, headers: &[(&str, &str)], route: &Route) -> Decision {
    let ip: IpAddr = "192.0.2.9".parse().unwrap();
    s.gate
        .check(headers.iter().map(|(n, v)| (*n, *v)), None, Some(ip), route)
        .await
}

fn code(d: &Decision) -> &'static str {
    match d {
        Decision::Admitted(_) => "ADMITTED",
        Decision::NotOurs => "NOT_OURS",
        Decision::Rejected(r) => r.error.code().as_str(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn credits_are_spent_only_when_the_rate_limit_admits() {
    let s = setup(Quota::new(Some(1), None), Some(10), None);
    let h = [("x-api-key", s.key.expose_secret())];
    let route = Route::any_key().cost(3);
    assert_eq!(code(&check(&s, &h, &route).await), "ADMITTED");
    for _ in 0..5 {
        assert_eq!(code(&check(&s, &h, &route).await), "RATE_LIMITED");
    }
    assert_eq!(key_left(&s), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn key_and_owner_debited_together_or_not_at_all() {
    let s = setup(Quota::unlimited(), Some(10), Some(4));
    let h = [("x-api-key", s.key.expose_secret())];
    let route = Route::any_key().cost(3);
    match check(&s, &h, &route).await {
        Decision::Admitted(ok) => {
            let c = ok.credits.unwrap();
            assert_eq!((c.key_remaining, c.owner_remaining), (Some(7), Some(1)));
            assert_eq!(ok.scheme, Scheme::ApiKeyHeader);
            assert!(ok.headers().is_empty(), "no window enforced");
        }
        other => panic!("{other:?}"),
    }
    match check(&s, &h, &route).await {
        Decision::Rejected(r) => {
            assert_eq!(r.error.code().as_str(), "USAGE_EXCEEDED");
            assert_eq!(r.to_response().status, 429);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(key_left(&s), 7);
    assert_eq!(owner_left(&s), 1);
    // Zero cost: a check that spends nothing.
    let free = Route::any_key().cost(0);
    assert_eq!(code(&check(&s, &h, &free).await), "ADMITTED");
    assert_eq!(key_left(&s), 7);
    let charge = CreditCharge::new(2).owner(Some(OwnerApi {
        owner: "org_1",
        api: "rest",
    }));
    let v = s
        .gate
        .limits()
        .admit_sync(&Admission::new(s.id, Quota::unlimited()).credits(charge));
    match v {
        Verdict::CreditsExhausted { exhausted, .. } => {
            assert_eq!(exhausted.scope, CreditScope::Owner)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn scope_failure_costs_the_rate_limit_not_credits_and_is_not_a_guess() {
    let s = setup(Quota::new(Some(10), None), Some(10), None);
    let h = [("x-api-key", s.key.expose_secret())];
    let write = Route::new(Requirement::scope("write").unwrap());
    for _ in 0..5 {
        assert_eq!(code(&check(&s, &h, &write).await), "INSUFFICIENT_SCOPE");
    }
    // Rate-charged (an authenticated request), not credit-charged, and
    // never a lockout of the key.
    match check(&s, &h, &Route::any_key()).await {
        Decision::Admitted(ok) => assert_eq!(ok.rate_limit.map(|i| i.remaining), Some(4)),
        other => panic!("{other:?}"),
    }
    assert_eq!(key_left(&s), 9);
    // Post-tag failures are limited: once the window is spent, 429.
    let answers: Vec<_> = futures_codes(&s, &h, &write, 10).await;
    assert_eq!(
        answers
            .iter()
            .filter(|c| **c == "INSUFFICIENT_SCOPE")
            .count(),
        4
    );
    assert_eq!(answers.iter().filter(|c| **c == "RATE_LIMITED").count(), 6);
}

async fn futures_codes(
    s: &Setup,
    h: &[(&str, &str)],
    route: &Route,
    n: usize,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(code(&check(s, h, route).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn junk_never_locks_out_a_valid_key() {
    let s = setup(Quota::unlimited(), None, None);
    let good = [("x-api-key", s.key.expose_secret())];
    let bad = [("x-api-key", "kwi_sk_short")];
    let route = Route::any_key();
    for _ in 0..50 {
        assert_eq!(code(&check(&s, &bad, &route).await), "MALFORMED_API_KEY");
    }
    // Same address: the valid key still works.
    assert_eq!(code(&check(&s, &good, &route).await), "ADMITTED");
    // Missing keys are not guesses; a JWT is not ours (refused by default,
    // but not counted as a guess either).
    let jwt = [("authorization", "Bearer eyJhbGciOiJub25lIn0.e30.")];
    assert_eq!(code(&check(&s, &[], &route).await), "MISSING_API_KEY");
    for _ in 0..3 {
        assert_eq!(code(&check(&s, &jwt, &route).await), "MISSING_API_KEY");
    }
    assert_eq!(code(&check(&s, &good, &route).await), "ADMITTED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn key_status_failures_back_off_that_key_only_with_no_store_lookup() {
    let s = setup(Quota::unlimited(), None, None);
    let good = [("x-api-key", s.key.expose_secret())];
    let expired = [("x-api-key", s.short_lived.expose_secret())];
    let route = Route::any_key();
    s.clock.advance(std::time::Duration::from_secs(2 * 3_600));
    assert_eq!(code(&check(&s, &expired, &route).await), "EXPIRED_API_KEY");
    assert_eq!(code(&check(&s, &expired, &route).await), "EXPIRED_API_KEY");
    let lookups = s
        .gate
        .authenticator()
        .store()
        .calls
        .load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..100 {
        assert_eq!(
            code(&check(&s, &expired, &route).await),
            "TOO_MANY_FAILED_ATTEMPTS"
        );
    }
    assert_eq!(
        s.gate
            .authenticator()
            .store()
            .calls
            .load(std::sync::atomic::Ordering::SeqCst),
        lookups
    );
    // The other key, same address, is untouched.
    assert_eq!(code(&check(&s, &good, &route).await), "ADMITTED");
    // The backoff ends.
    s.clock.advance(std::time::Duration::from_secs(15 * 60));
    assert_eq!(code(&check(&s, &expired, &route).await), "EXPIRED_API_KEY");
    // The limits bundle exposes the untagged (legacy) hooks too.
    let limits = s.gate.limits();
    let ip: IpAddr = "192.0.2.50".parse().unwrap();
    let a: UntaggedAttempt<'_> = limits.begin_untagged(Some(ip)).unwrap();
    limits.untagged_failed(a).await;
    let a = limits.begin_untagged(Some(ip)).unwrap();
    limits.untagged_failed(a).await;
    assert!(limits.begin_untagged(Some(ip)).is_err());
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn blocking_path_with_verify_with_and_charge() {
    let s = setup(Quota::new(Some(5), None), None, None);
    let h = [("Authorization", format!("Bearer {}", s.key.expose_secret()))];
    let extracted = s
        .gate
        .extract(
            h.iter().map(|(n, v)| (*n, v.as_str())),
            None,
            None,
            &Route::any_key(),
        )
        .unwrap();
    let apikey::web::Extracted::Key(key) = extracted else {
        panic!("ours")
    };
    let auth = s.gate.authenticator();
    let store = auth.store();
    let verified = auth
        .verifier()
        .verify_with(
            key.expose_secret(),
            |id| block_on(store.fetch(id)),
            T0,
            &Requirement::none(),
        )
        .unwrap();
    match s
        .gate
        .charge_blocking(verified, key.scheme(), &Route::any_key())
    {
        Decision::Admitted(ok) => {
            assert_eq!(ok.scheme, Scheme::Bearer);
            let h = ok.headers();
            assert_eq!(h[0], ("x-ratelimit-limit", "5".to_owned()));
            assert_eq!(h[1], ("x-ratelimit-remaining", "4".to_owned()));
            assert_eq!(
                h[2],
                ("x-ratelimit-reset", (T0.as_unix_secs() + 12).to_string())
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A limits bundle with no synchronous form: it awaits before answering,
/// like a network client, or fails.
struct Remote {
    inner: MemoryLimits<ManualClock>,
    down: bool,
}

impl Limits for Remote {
    async fn admit(&self, admission: &Admission<'_>) -> Result<Verdict, StoreError> {
        tokio::task::yield_now().await;
        if self.down {
            return Err(StoreError::with_source(
                StoreErrorKind::Unavailable,
                std::io::Error::other("redis: connection reset"),
            ));
        }
        Ok(self.inner.admit_sync(admission))
    }
    fn check_key(&self, key_id: u64) -> Result<(), Duration> {
        self.inner.check_key(key_id)
    }
    fn begin_untagged(&self, client: Option<IpAddr>) -> Result<UntaggedAttempt<'_>, Duration> {
        self.inner.begin_untagged(client)
    }
    async fn key_failed(&self, key_id: u64) {
        self.inner.key_failed(key_id).await
    }
    async fn untagged_failed(&self, attempt: UntaggedAttempt<'_>) {
        self.inner.untagged_failed(attempt).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn async_limits_backend_and_its_failure() {
    for down in [false, true] {
        let s = setup(Quota::new(Some(1), None), None, None);
        let remote = Remote {
            inner: MemoryLimits::with_clock(s.clock.clone()),
            down,
        };
        let gate = s.gate.with_limits(remote);
        let h = [("x-api-key", s.key.expose_secret())];
        let any = Route::any_key();
        let run = || gate.check(h.iter().map(|(n, v)| (*n, *v)), None, None, &any);
        if down {
            match run().await {
                Decision::Rejected(r) => {
                    let resp = r.to_response();
                    assert_eq!((resp.status, resp.header("retry-after")), (503, Some("1")));
                    assert!(!resp.body.contains("redis"));
                }
                other => panic!("{other:?}"),
            }
        } else {
            assert_eq!(code(&run().await), "ADMITTED");
            assert_eq!(code(&run().await), "RATE_LIMITED");
        }
    }
}

fn header<'a>(r: &'a apikey::web::ErrorResponse, name: &str) -> Option<&'a str> {
    r.header(name)
}

/// Issue 9, item 8: on a 429 `X-RateLimit-Reset` is the moment a retry is
/// admitted, as `Retry-After` says, not the window's full replenishment.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn rate_limit_reset_on_429_is_when_a_retry_is_admitted() {
    let s = setup(Quota::new(Some(60), None), None, None);
    let h = [("x-api-key", s.key.expose_secret())];
    let route = Route::any_key().cost(0);
    for _ in 0..60 {
        assert_eq!(code(&check(&s, &h, &route).await), "ADMITTED");
    }
    let Decision::Rejected(r) = check(&s, &h, &route).await else {
        panic!("the 61st request in a minute is refused")
    };
    let resp = r.to_response();
    assert_eq!(resp.status, 429);
    let retry: i64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    let reset: i64 = header(&resp, "x-ratelimit-reset").unwrap().parse().unwrap();
    assert_eq!(retry, 1);
    assert_eq!(
        reset,
        T0.as_unix_secs() + retry,
        "Reset must agree with Retry-After"
    );
    // On an admitted request, Reset is the full replenishment of the window.
    s.clock.advance(std::time::Duration::from_secs(1));
    let Decision::Admitted(ok) = check(&s, &h, &route).await else {
        panic!("admitted after Retry-After")
    };
    let reset: i64 = ok
        .headers()
        .iter()
        .find(|(n, _)| *n == "x-ratelimit-reset")
        .unwrap()
        .1
        .parse()
        .unwrap();
    // One clock: the decision is at T0 + 1 s, the window full again 60 s on.
    assert_eq!(reset, T0.as_unix_secs() + 1 + 60);
}

/// Issue 9, item 8: a `USAGE_EXCEEDED` with no refill policy has no
/// `Retry-After` (the docs say so); with a refill it has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn usage_exceeded_without_refill_has_no_retry_after() {
    let s = setup(Quota::unlimited(), Some(1), None);
    let h = [("x-api-key", s.key.expose_secret())];
    let route = Route::any_key();
    assert_eq!(code(&check(&s, &h, &route).await), "ADMITTED");
    let Decision::Rejected(r) = check(&s, &h, &route).await else {
        panic!("no credits left")
    };
    let resp = r.to_response();
    assert_eq!(
        (resp.status, r.error.code().as_str()),
        (429, "USAGE_EXCEEDED")
    );
    assert_eq!(header(&resp, "retry-after"), None);
    assert!(resp.body.contains(r#""details":{}"#), "{}", resp.body);
    // With a refill: the header, and the body's `retry_after` as on every
    // other 429.
    s.gate.limits().set_credits_sync(
        CreditAccount::Key(s.id),
        0,
        apikey::limits::Refill::every(10, Duration::from_secs(60)),
    );
    let Decision::Rejected(r) = check(&s, &h, &route).await else {
        panic!("no credits left")
    };
    let resp = r.to_response();
    assert_eq!(header(&resp, "retry-after"), Some("60"));
    assert!(
        resp.body.contains(r#""details":{"retry_after":60}"#),
        "{}",
        resp.body
    );
}

/// Issue 9, item 8: `MISSING_API_KEY` details name what the gate's
/// extractor accepts, not always `X-API-Key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn missing_key_details_name_what_the_extractor_accepts() {
    async fn body(s: &Setup) -> serde_json::Value {
        let Decision::Rejected(r) = check(s, &[("accept", "*/*")], &Route::any_key()).await else {
            panic!("no key")
        };
        let resp = r.to_response();
        assert_eq!(r.error.code().as_str(), "MISSING_API_KEY");
        let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        v["error"]["details"].clone()
    }
    let s = setup(Quota::unlimited(), None, None);
    let d = body(&s).await;
    assert_eq!(d["header"], "X-API-Key");
    assert_eq!(
        d["accepted"],
        serde_json::json!(["X-API-Key", "Authorization: Bearer"])
    );
    let mut s = setup(Quota::unlimited(), None, None);
    let prefixes = s.gate.authenticator().verifier().prefixes().clone();
    s.gate = s.gate.with_extractor(
        apikey::web::Extractor::new(prefixes.clone()).with_sources(apikey::web::Sources::BEARER),
    );
    let d = body(&s).await;
    // Issue 17, item 13: one header accepted, one header named (seed 003).
    assert_eq!(
        d,
        serde_json::json!({"header": "Authorization", "accepted": ["Authorization: Bearer"]})
    );
    s.gate = s.gate.with_extractor(
        apikey::web::Extractor::new(prefixes)
            .with_header_name("X-Tenant-Key")
            .with_sources(apikey::web::Sources::API_KEY_HEADER),
    );
    let d = body(&s).await;
    assert_eq!(
        d,
        serde_json::json!({"header": "X-Tenant-Key", "accepted": ["X-Tenant-Key"]})
    );
}

/// Issue 9, item 1: `Gate::check` fails closed on credentials that are not
/// ours; `Decision::NotOurs` only with the explicit opt-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn gate_rejects_foreign_credentials_by_default() {
    let foreign = [
        "Basic dXNlcjpwYXNz",
        "Bearer whatever",
        "Token x",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
    ];
    let s = setup(Quota::unlimited(), None, None);
    for v in foreign {
        let d = check(&s, &[("authorization", v)], &Route::any_key()).await;
        let Decision::Rejected(r) = d else {
            panic!("{v}: {d:?}")
        };
        let resp = r.to_response();
        assert_eq!(
            (resp.status, r.error.code().as_str()),
            (401, "MISSING_API_KEY"),
            "{v}"
        );
        assert_eq!(
            resp.header("www-authenticate"),
            Some(r#"Bearer realm="api""#)
        );
        // The blocking path too.
        assert!(
            s.gate
                .extract([("authorization", v)], None, None, &Route::any_key())
                .is_err()
        );
    }
    let open =
        Route::any_key().with_foreign_credentials(apikey::web::ForeignCredentials::PassThrough);
    for v in foreign {
        assert!(matches!(
            s.gate.extract([("authorization", v)], None, None, &open),
            Ok(apikey::web::Extracted::NotOurs)
        ));
        let d = check(&s, &[("authorization", v)], &open).await;
        assert_eq!(code(&d), "NOT_OURS", "{v}");
    }
}

/// Seed 001's wrong formats: our key without `Bearer` is named as such
/// (`MALFORMED_API_KEY`, reason `missing_bearer`), even on a pass-through
/// route; a Bearer token without our prefix stays a foreign credential; the
/// same key with the scheme is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_key_without_bearer_is_named_as_such() {
    let s = setup(Quota::unlimited(), None, None);
    let key = s.key.expose_secret();
    let open =
        Route::any_key().with_foreign_credentials(apikey::web::ForeignCredentials::PassThrough);
    for route in [Route::any_key(), open] {
        let d = check(&s, &[("authorization", key)], &route).await;
        let Decision::Rejected(r) = d else {
            panic!("{d:?}")
        };
        let resp = r.to_response();
        assert_eq!(
            (resp.status, r.error.code().as_str()),
            (401, "MALFORMED_API_KEY")
        );
        assert!(
            resp.body.contains(r#""reason":"missing_bearer""#),
            "{}",
            resp.body
        );
        assert!(!resp.body.contains(key));
    }
    let d = check(&s, &[("authorization", "Bearer abc123")], &Route::any_key()).await;
    assert_eq!(code(&d), "MISSING_API_KEY");
    let bearer = format!("Bearer {key}");
    let d = check(&s, &[("authorization", bearer.as_str())], &Route::any_key()).await;
    assert_eq!(code(&d), "ADMITTED");
}

/// Issue 17, item 11: an imported legacy key sent as `Authorization:
/// Bearer` authenticates through the gate, with the default extractor and
/// with one the gate was given; foreign credentials are refused as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_imported_legacy_key_sent_as_bearer_passes_the_gate() {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[5; 32]).unwrap()).unwrap());
    let manager = KeyManager::with_clock(verifier, MemoryStore::new(), ManualClock::new(T0))
        .with_legacy_prefix("oldco_", "kwi_sk_")
        .unwrap();
    let legacy = "oldco_8f14e45fceea167a5a36dedd4bea2544";
    let s = manager
        .import(
            ImportKey::plaintext(legacy).scopes(["read"]),
            &Actor::system(),
        )
        .await
        .unwrap();
    let bearer = format!("Bearer {legacy}");
    let route = Route::new(Requirement::scope("read").unwrap());
    let default = Gate::new(manager.authenticator().clone());
    let prefixes = default.authenticator().verifier().prefixes().clone();
    let bearer_only = Gate::new(manager.authenticator().clone()).with_extractor(
        apikey::web::Extractor::new(prefixes).with_sources(apikey::web::Sources::BEARER),
    );
    for gate in [default, bearer_only] {
        let h = [("authorization", bearer.as_str())];
        match gate.check(h, None, None, &route).await {
            Decision::Admitted(ok) => {
                assert_eq!(ok.key.id(), s.id);
                assert_eq!(ok.scheme, Scheme::Bearer);
            }
            other => panic!("{other:?}"),
        }
        let jwt = [(
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
        )];
        let Decision::Rejected(r) = gate.check(jwt, None, None, &route).await else {
            panic!("a JWT is not ours")
        };
        assert_eq!(r.error.code().as_str(), "MISSING_API_KEY");
    }
}
