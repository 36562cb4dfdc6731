//! The framework-agnostic gate: ordering of throttle, auth, rate limit and
//! credits, without any HTTP server.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use apikey::limits::credits::{CreditLedger, CreditScope};
use apikey::limits::ratelimit::{FailureThrottleConfig, FakeMonotonicClock, Quota};
use apikey::web::Scheme;
use apikey::web::{Decision, Gate, QuotaTable, Route};
use apikey::*;
use time::OffsetDateTime;
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);

struct Setup {
    gate: Gate<Arc<MemoryStore>, ManualClock, Arc<FakeMonotonicClock>>,
    key: ApiKey,
    id: u64,
    mono: Arc<FakeMonotonicClock>,
}

fn setup(quota: Quota, key_credits: Option<u64>, owner_credits: Option<u64>) -> Setup {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[5; 32]).unwrap()).unwrap());
    let store = Arc::new(MemoryStore::new());
    let (key, record) = verifier
        .issue(NewKey::new("kwi_sk_").owner("org_1").scopes(["read"]), T0)
        .unwrap();
    store.insert_sync(record.clone()).unwrap();
    let mono = Arc::new(FakeMonotonicClock::new());
    let ledger = CreditLedger::with_clock(Arc::clone(&mono));
    let id = record.id.as_u64();
    if let Some(n) = key_credits {
        ledger.set_key_credits(id, n, None);
    }
    if let Some(n) = owner_credits {
        ledger.set_owner_credits("org_1", "rest", n, None);
    }
    let gate = Gate::with_monotonic_clock(
        Authenticator::with_clock(verifier, store, ManualClock::new(T0)),
        Arc::clone(&mono),
    )
    .quotas(QuotaTable::fixed(quota))
    .credits(ledger, "rest")
    .failure_throttle(FailureThrottleConfig {
        max_failures: 2,
        ..Default::default()
    });
    Setup {
        gate,
        key,
        id,
        mono,
    }
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
        Decision::Rejected(r) => r.error.code(),
    }
}

#[tokio::test]
async fn credits_are_spent_only_when_the_rate_limit_admits() {
    let s = setup(Quota::new(Some(1), None), Some(10), None);
    let h = [("x-api-key", s.key.expose_secret())];
    let route = Route::any_key().cost(3);
    assert_eq!(code(&check(&s, &h, &route).await), "ADMITTED");
    for _ in 0..5 {
        assert_eq!(code(&check(&s, &h, &route).await), "RATE_LIMITED");
    }
    let ledger = s.gate.ledger().unwrap();
    assert_eq!(ledger.key_credits(s.id).unwrap().remaining, 7);
}

#[tokio::test]
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
            assert_eq!(r.error.code(), "USAGE_EXCEEDED");
            assert_eq!(r.to_response().status, 429);
        }
        other => panic!("{other:?}"),
    }
    let ledger = s.gate.ledger().unwrap();
    assert_eq!(ledger.key_credits(s.id).unwrap().remaining, 7);
    assert_eq!(ledger.owner_credits("org_1", "rest").unwrap().remaining, 1);
    // Zero cost: a check that spends nothing.
    let free = Route::any_key().cost(0);
    assert_eq!(code(&check(&s, &h, &free).await), "ADMITTED");
    assert_eq!(ledger.key_credits(s.id).unwrap().remaining, 7);
    let err = ledger.spend(s.id, Some("org_1"), "rest", 2).unwrap_err();
    assert_eq!(err.scope, CreditScope::Owner);
}

#[tokio::test]
async fn scope_failure_spends_nothing_and_is_not_a_guess() {
    let s = setup(Quota::new(Some(1), None), Some(10), None);
    let h = [("x-api-key", s.key.expose_secret())];
    let write = Route::new(Requirement::scope("write").unwrap());
    for _ in 0..5 {
        assert_eq!(code(&check(&s, &h, &write).await), "INSUFFICIENT_SCOPE");
    }
    // Not rate-charged, not credit-charged, not throttled.
    assert_eq!(code(&check(&s, &h, &Route::any_key()).await), "ADMITTED");
    assert_eq!(
        s.gate
            .ledger()
            .unwrap()
            .key_credits(s.id)
            .unwrap()
            .remaining,
        9
    );
}

#[tokio::test]
async fn guesses_lock_out_then_expire() {
    let s = setup(Quota::unlimited(), None, None);
    let good = [("x-api-key", s.key.expose_secret())];
    let bad = [("x-api-key", "kwi_sk_short")];
    let route = Route::any_key();
    assert_eq!(code(&check(&s, &bad, &route).await), "MALFORMED_API_KEY");
    assert_eq!(code(&check(&s, &bad, &route).await), "MALFORMED_API_KEY");
    assert_eq!(
        code(&check(&s, &good, &route).await),
        "TOO_MANY_FAILED_ATTEMPTS"
    );
    // Missing keys are not guesses; a JWT is not ours (refused by default,
    // but not counted as a guess either).
    let jwt = [("authorization", "Bearer eyJhbGciOiJub25lIn0.e30.")];
    s.mono.advance(Duration::from_secs(15 * 60));
    assert_eq!(code(&check(&s, &[], &route).await), "MISSING_API_KEY");
    for _ in 0..3 {
        assert_eq!(code(&check(&s, &jwt, &route).await), "MISSING_API_KEY");
    }
    assert_eq!(code(&check(&s, &good, &route).await), "ADMITTED");
}

#[test]
fn blocking_path_with_verify_with_and_charge() {
    let s = setup(Quota::new(Some(5), None), None, None);
    let h = [("Authorization", format!("Bearer {}", s.key.expose_secret()))];
    let extracted = s
        .gate
        .extract(h.iter().map(|(n, v)| (*n, v.as_str())), None, None)
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
            |id| store.fetch_sync(id),
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
                ("x-ratelimit-reset", (T0.unix_timestamp() + 12).to_string())
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A rate-limit backend with no synchronous form: it awaits before
/// answering, like a network client, or fails.
struct Remote {
    inner: apikey::limits::ratelimit::InMemoryRateLimitStore,
    down: bool,
}

impl apikey::limits::ratelimit::AsyncRateLimitStore for Remote {
    type Error = std::io::Error;

    async fn measure_and_replace_async<T: Send, E: Send, F>(
        &self,
        key: u64,
        f: F,
    ) -> Result<Result<T, E>, std::io::Error>
    where
        F: Fn(
                Option<apikey::limits::ratelimit::GcraState>,
            ) -> Result<(T, apikey::limits::ratelimit::GcraState), E>
            + Send,
    {
        use apikey::limits::ratelimit::RateLimitStore;
        tokio::task::yield_now().await;
        if self.down {
            return Err(std::io::Error::other("redis: connection reset"));
        }
        Ok(self
            .inner
            .measure_and_replace(key, f)
            .unwrap_or_else(|e| match e {}))
    }
}

#[tokio::test]
async fn async_rate_limit_backend_and_its_failure() {
    use apikey::limits::ratelimit::{InMemoryRateLimitStore, RateLimiter};
    for down in [false, true] {
        let s = setup(Quota::new(Some(1), None), None, None);
        let remote = Remote {
            inner: InMemoryRateLimitStore::new(),
            down,
        };
        let gate = s.gate.rate_limiter(RateLimiter::with_store_and_clock(
            remote,
            Arc::clone(&s.mono),
        ));
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
#[tokio::test]
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
        T0.unix_timestamp() + retry,
        "Reset must agree with Retry-After"
    );
    // On an admitted request, Reset is the full replenishment of the window.
    s.mono.advance(Duration::from_secs(1));
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
    assert_eq!(reset, T0.unix_timestamp() + 60);
}

/// Issue 9, item 8: a `USAGE_EXCEEDED` with no refill policy has no
/// `Retry-After` (the docs say so); with a refill it has one.
#[tokio::test]
async fn usage_exceeded_without_refill_has_no_retry_after() {
    let s = setup(Quota::unlimited(), Some(1), None);
    let h = [("x-api-key", s.key.expose_secret())];
    let route = Route::any_key();
    assert_eq!(code(&check(&s, &h, &route).await), "ADMITTED");
    let Decision::Rejected(r) = check(&s, &h, &route).await else {
        panic!("no credits left")
    };
    let resp = r.to_response();
    assert_eq!((resp.status, r.error.code()), (429, "USAGE_EXCEEDED"));
    assert_eq!(header(&resp, "retry-after"), None);
}

/// Issue 9, item 8: `MISSING_API_KEY` details name what the gate's
/// extractor accepts, not always `X-API-Key`.
#[tokio::test]
async fn missing_key_details_name_what_the_extractor_accepts() {
    async fn body(s: &Setup) -> serde_json::Value {
        let Decision::Rejected(r) = check(s, &[("accept", "*/*")], &Route::any_key()).await else {
            panic!("no key")
        };
        let resp = r.to_response();
        assert_eq!(r.error.code(), "MISSING_API_KEY");
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
    s.gate = s
        .gate
        .extractor(apikey::web::Extractor::new(prefixes.clone()).accept_api_key_header(false));
    let d = body(&s).await;
    assert_eq!(
        d,
        serde_json::json!({"accepted": ["Authorization: Bearer"]})
    );
    s.gate = s.gate.extractor(
        apikey::web::Extractor::new(prefixes)
            .api_key_header_name("X-Tenant-Key")
            .accept_bearer(false),
    );
    let d = body(&s).await;
    assert_eq!(
        d,
        serde_json::json!({"header": "X-Tenant-Key", "accepted": ["X-Tenant-Key"]})
    );
}

/// Issue 9, item 1: `Gate::check` fails closed on credentials that are not
/// ours; `Decision::NotOurs` only with the explicit opt-in.
#[tokio::test]
async fn gate_rejects_foreign_credentials_by_default() {
    let foreign = [
        "Basic dXNlcjpwYXNz",
        "Bearer whatever",
        "Token x",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
    ];
    let mut s = setup(Quota::unlimited(), None, None);
    for v in foreign {
        let d = check(&s, &[("authorization", v)], &Route::any_key()).await;
        let Decision::Rejected(r) = d else {
            panic!("{v}: {d:?}")
        };
        let resp = r.to_response();
        assert_eq!(
            (resp.status, r.error.code()),
            (401, "MISSING_API_KEY"),
            "{v}"
        );
        assert_eq!(
            resp.header("www-authenticate"),
            Some(r#"Bearer realm="api""#)
        );
        // The blocking path too.
        assert!(s.gate.extract([("authorization", v)], None, None).is_err());
    }
    s.gate = s
        .gate
        .foreign_credentials(apikey::web::ForeignCredentials::PassThrough);
    for v in foreign {
        let d = check(&s, &[("authorization", v)], &Route::any_key()).await;
        assert_eq!(code(&d), "NOT_OURS", "{v}");
    }
}
