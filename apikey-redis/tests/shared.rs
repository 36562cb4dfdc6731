//! Two instances on one Redis, a Redis restart mid-load, failure rules,
//! idempotent retries and the shared throttle.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apikey::limits::{
    Admission, CreditAccount, CreditBalances, CreditCharge, FailureThrottleConfig, Limits,
    OwnerApi, Quota, Verdict,
};
use apikey::web::{Decision, Gate, QuotaTable, Route};
use apikey::{ApiKey, Authenticator, Keyring, MemoryStore, NewKey, ServerSecret, Verifier};
use apikey_redis::{OnRedisError, RedisLimits};
use apikey_testkit::limits::{Idempotency, check_idempotency_contract};
use support::RedisServer;

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[4; 32]).unwrap()).unwrap())
}

type RGate = Gate<Arc<MemoryStore>, apikey::SystemClock, RedisLimits>;

/// Two gates (two instances: own connections) sharing one key store
/// content and one Redis.
fn two_gates(
    server: &RedisServer,
    test: &str,
    quota: Quota,
) -> (Arc<RGate>, Arc<RGate>, Arc<ApiKey>, u64) {
    let store = Arc::new(MemoryStore::new());
    let (key, record) = verifier()
        .issue(
            NewKey::new("sk_live_").owner("org_1"),
            apikey::Clock::now(&apikey::SystemClock),
        )
        .unwrap();
    store.insert_sync(record.clone()).unwrap();
    let gate = || {
        Arc::new(
            Gate::new(Authenticator::new(verifier(), Arc::clone(&store)))
                .with_limits(
                    server
                        .builder(test)
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap(),
                )
                .with_quotas(QuotaTable::fixed(quota))
                .with_credits("rest"),
        )
    };
    (gate(), gate(), Arc::new(key), record.id.as_u64())
}

async fn hit(gate: &RGate, key: &ApiKey, route: &Route) -> Decision {
    let h = [("x-api-key", key.expose_secret())];
    gate.check(h.iter().map(|(n, v)| (*n, *v)), None, None, route)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_rate_limit_and_spend_credits_exactly() {
    let Some(server) = RedisServer::start("two") else {
        return;
    };
    let limit = 20u32;
    let (a, b, key, id) = two_gates(&server, "two", Quota::unlimited().per_minute(limit));
    let started = Instant::now();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let gate = if t % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let (key, admitted) = (Arc::clone(&key), Arc::clone(&admitted));
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                if let Decision::Admitted(_) = hit(&gate, &key, &Route::any_key().cost(0)).await {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let n = admitted.load(Ordering::Relaxed);
    // The bound over the whole run (an upper bound on any interval in it),
    // with the run's length rounded up to the next second.
    let t = elapsed.as_secs() + 1;
    let bound = u64::from(limit) + t * u64::from(limit) / 60;
    assert!(n >= u64::from(limit), "burst {n}");
    assert!(n <= bound, "{n} admitted in {elapsed:?}, bound {bound}");

    // Credits: 500 on the key, 700 on the owner, spent from both instances.
    let (a, b, key, id2) = two_gates(&server, "two-credits", Quota::unlimited());
    let limits = a.limits();
    limits
        .set_credits(CreditAccount::Key(id2), 500, None)
        .await
        .unwrap();
    let owner = CreditAccount::Owner {
        owner: "org_1",
        api: "rest",
    };
    limits.set_credits(owner, 700, None).await.unwrap();
    let spent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let gate = if t % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let (key, spent) = (Arc::clone(&key), Arc::clone(&spent));
        tasks.push(tokio::spawn(async move {
            for i in 0..30u64 {
                let route = Route::any_key().cost(1 + (t + i) % 3);
                if let Decision::Admitted(ok) = hit(&gate, &key, &route).await {
                    spent.fetch_add(ok.credits.unwrap().cost, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let spent = spent.load(Ordering::Relaxed);
    let key_left = limits
        .credits(CreditAccount::Key(id2))
        .await
        .unwrap()
        .unwrap()
        .remaining;
    let owner_left = limits.credits(owner).await.unwrap().unwrap().remaining;
    assert_eq!(spent + key_left, 500, "no double spend, nothing lost");
    assert_eq!(spent + owner_left, 700);
    assert!(key_left < 3, "drained: {key_left}");
    let _ = id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_load_follows_the_failure_rules_and_recovers() {
    let Some(mut server) = RedisServer::start("restart") else {
        return;
    };
    let strict = server
        .builder("restart")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let lenient = server
        .builder("restart")
        .timeout(Duration::from_millis(200))
        .on_error(OnRedisError::AdmitRateLimitedOnly)
        .build()
        .unwrap();
    let q = Quota::unlimited().per_minute(1_000_000);
    let rate_only = Admission::new(1, q);
    let charge = CreditCharge::new(1).owner(Some(OwnerApi {
        owner: "o",
        api: "rest",
    }));
    let metered = Admission::new(1, q).credits(charge);
    assert!(strict.admit(&rate_only).await.unwrap().is_admitted());
    strict
        .set_credits(CreditAccount::Key(1), 1_000, None)
        .await
        .unwrap();
    assert!(strict.admit(&metered).await.unwrap().is_admitted());

    server.stop();
    for _ in 0..5 {
        // Default: fail closed (the gate answers 503 STORE_UNAVAILABLE).
        let e = strict.admit(&rate_only).await.unwrap_err();
        assert!(matches!(
            e.kind(),
            apikey::StoreErrorKind::Unavailable | apikey::StoreErrorKind::Timeout
        ));
        // Opt-in: rate limits only fail open, without numbers...
        assert_eq!(
            lenient.admit(&rate_only).await.unwrap(),
            Verdict::Admitted {
                rate_limit: None,
                credits: None
            }
        );
        // ...credits always fail closed.
        assert!(lenient.admit(&metered).await.is_err());
        assert!(strict.admit(&metered).await.is_err());
    }

    server.restart();
    // Recovers with no manual step (bounded wait for the reconnect).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match strict.admit(&rate_only).await {
            Ok(v) => {
                assert!(v.is_admitted());
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
    // Persistence off: the balance is gone, so the key is unmetered until
    // its balance is set again (documented).
    assert_eq!(strict.credits(CreditAccount::Key(1)).await.unwrap(), None);
    // The lenient instance has a connection of its own, which reconnects
    // by itself too (bounded wait; its metered admissions fail closed, so
    // an answer means it is back).
    let deadline = Instant::now() + Duration::from_secs(10);
    while lenient.admit(&metered).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lenient
            .admit(&rate_only)
            .await
            .unwrap()
            .rate_limit()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_answers_503_with_retry_after_when_redis_is_down() {
    let Some(mut server) = RedisServer::start("gate503") else {
        return;
    };
    let (a, _b, key, _) = two_gates(&server, "gate503", Quota::unlimited().per_minute(5));
    assert!(matches!(
        hit(&a, &key, &Route::any_key()).await,
        Decision::Admitted(_)
    ));
    server.stop();
    match hit(&a, &key, &Route::any_key()).await {
        Decision::Rejected(r) => {
            let resp = r.to_response();
            assert_eq!(resp.status, 503);
            assert_eq!(r.error.code(), "STORE_UNAVAILABLE");
            assert_eq!(resp.header("retry-after"), Some("1"));
            assert!(!resp.body.contains("127.0.0.1"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_token_is_not_charged_twice() {
    let Some(server) = RedisServer::start("idem") else {
        return;
    };
    let limits = server.builder("idem").build().unwrap();
    limits
        .set_credits(CreditAccount::Key(9), 10, None)
        .await
        .unwrap();
    let a = Admission::new(9, Quota::unlimited().per_minute(100))
        .credits(CreditCharge::new(4))
        .idempotency("req-123");
    let first = limits.admit(&a).await.unwrap();
    let retry = limits.admit(&a).await.unwrap();
    assert_eq!(first, retry);
    assert_eq!(first.credits().and_then(|c| c.key_remaining), Some(6));
    let other = limits.admit(&a.idempotency("req-124")).await.unwrap();
    assert_eq!(other.credits().and_then(|c| c.key_remaining), Some(2));
    assert_eq!(
        limits
            .credits(CreditAccount::Key(9))
            .await
            .unwrap()
            .map(|s| s.remaining),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_backoff_is_shared_between_instances_and_fails_open() {
    let Some(mut server) = RedisServer::start("throttle") else {
        return;
    };
    let cfg = FailureThrottleConfig {
        max_failures: 4,
        lockout: Duration::from_secs(60),
        ..FailureThrottleConfig::default()
    };
    // Without the periodic lockout sync: this is the path through the
    // replies to failures (the sync has its own test).
    let a = server
        .builder("throttle")
        .failure_throttle(cfg)
        .lockout_sync(None)
        .build()
        .unwrap();
    let b = server
        .builder("throttle")
        .failure_throttle(cfg)
        .lockout_sync(None)
        .build()
        .unwrap();
    // Two failures on each instance: four across the fleet.
    for _ in 0..2 {
        a.key_failed(77).await;
    }
    b.key_failed(77).await;
    assert!(b.check_key(77).is_ok(), "3 failures: not yet");
    b.key_failed(77).await;
    // B learnt the shared lockout at once; A learns it at its next failure.
    assert!(b.check_key(77).is_err());
    assert!(a.check_key(77).is_ok());
    a.key_failed(77).await;
    assert!(a.check_key(77).is_err());
    assert!(a.check_key(78).is_ok(), "other keys unaffected");
    // Redis down: the throttle fails open to the local counts, and admitted
    // requests never touched Redis for it.
    server.stop();
    let c = server
        .builder("throttle")
        .failure_throttle(cfg)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    for _ in 0..3 {
        c.key_failed(5).await;
    }
    assert!(c.check_key(5).is_ok());
    c.key_failed(5).await;
    assert!(c.check_key(5).is_err(), "local count still applies");
}

/// One round trip per admitted request: rate limit and credits in one
/// script call, and the failure throttle adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_per_admitted_request() {
    let Some(server) = RedisServer::start("trips") else {
        return;
    };
    let store = Arc::new(MemoryStore::new());
    let (key, record) = verifier()
        .issue(
            NewKey::new("sk_live_").owner("org_1"),
            apikey::Clock::now(&apikey::SystemClock),
        )
        .unwrap();
    store.insert_sync(record.clone()).unwrap();
    // The periodic lockout sync (one call per second, not per request) is
    // off so that every EVALSHA counted below is a request's.
    let limits = server
        .builder("trips")
        .failure_throttle(FailureThrottleConfig::default())
        .lockout_sync(None)
        .build()
        .unwrap();
    limits
        .set_credits(CreditAccount::Key(record.id.as_u64()), 1_000, None)
        .await
        .unwrap();
    let owner = CreditAccount::Owner {
        owner: "org_1",
        api: "rest",
    };
    limits.set_credits(owner, 1_000, None).await.unwrap();
    let gate = Gate::new(Authenticator::new(verifier(), store))
        .with_limits(limits)
        .with_quotas(QuotaTable::fixed(
            Quota::unlimited().per_minute(10_000).per_hour(100_000),
        ))
        .with_credits("rest");
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    // The first call loads the script (NOSCRIPT, SCRIPT LOAD, EVALSHA).
    assert!(matches!(
        hit(&gate, &key, &Route::any_key()).await,
        Decision::Admitted(_)
    ));
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    for _ in 0..50 {
        assert!(matches!(
            hit(&gate, &key, &Route::any_key()).await,
            Decision::Admitted(_)
        ));
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    let calls = |cmd: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Commands the script runs inside Redis are listed too; round trips
    // are the top-level EVALSHA calls.
    assert_eq!(calls("evalsha"), 50, "{info}");
    assert_eq!(calls("eval") + calls("script|load"), 0, "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_record_answers_only_its_own_admission() {
    let Some(server) = RedisServer::start("idem-bound") else {
        return;
    };
    let limits = server.builder("idem-bound").build().unwrap();
    let r = check_idempotency_contract(&limits, 21, 22, Idempotency::Recorded).await;
    assert_eq!(r, Ok(()));
}

/// An instance with the failure throttle `cfg`, under `test`'s prefix,
/// with the lockout sync every `sync`.
fn throttled(
    server: &RedisServer,
    test: &str,
    cfg: FailureThrottleConfig,
    sync: Option<Duration>,
) -> RedisLimits {
    server
        .builder(test)
        .failure_throttle(cfg)
        .lockout_sync(sync)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Locked out for a minute after three failures.
fn three_strikes() -> FailureThrottleConfig {
    FailureThrottleConfig {
        max_failures: 3,
        lockout: Duration::from_secs(60),
        ..FailureThrottleConfig::default()
    }
}

/// Failing untagged lookups from `ip` on `limits`, as the gate makes them.
async fn fail_from(limits: &RedisLimits, ip: std::net::IpAddr) {
    let attempt = limits.begin_untagged(Some(ip)).unwrap();
    limits.untagged_failed(attempt).await;
}

async fn dbsize(server: &RedisServer) -> (i64, Vec<String>) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let n: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    (n, keys)
}

async fn table_len(server: &RedisServer, key: &str) -> (i64, i64) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let h: i64 = redis::cmd("HLEN")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    let z: i64 = redis::cmd("ZCARD")
        .arg(format!("{key}:rank"))
        .query_async(&mut c)
        .await
        .unwrap();
    (h, z)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_failing_addresses_keep_the_shared_throttle_bounded() {
    let Some(server) = RedisServer::start("throttle-bound") else {
        return;
    };
    let cap = 256;
    let cfg = FailureThrottleConfig {
        max_tracked: cap,
        ..three_strikes()
    };
    let limits = throttled(&server, "throttle-bound", cfg, None);
    // One address locked out first: a flood of new addresses evicts
    // unlocked members before it.
    let locked: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    for _ in 0..3 {
        fail_from(&limits, locked).await;
    }
    for i in 0..10_000u32 {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        fail_from(&limits, ip).await;
    }
    let (n, keys) = dbsize(&server).await;
    // The stated bound: two keys per table (members and ranks); only the
    // address table is in use here.
    assert!(n <= 2, "{n} Redis keys: {keys:?}");
    let (h, z) = table_len(&server, "test:throttle-bound:t:a").await;
    assert!(
        h <= cap as i64 && z == h,
        "{h} members, {z} ranks, cap {cap}"
    );
    assert!(h > 0);
    // The locked address is still locked for the fleet: a fresh instance
    // learns it at its first failure from there.
    let other = throttled(&server, "throttle-bound", cfg, None);
    fail_from(&other, locked).await;
    assert!(other.begin_untagged(Some(locked)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_locked_out_on_one_instance_is_refused_on_another() {
    let Some(server) = RedisServer::start("addr-shared") else {
        return;
    };
    let cfg = three_strikes();
    let (a, b) = (
        throttled(&server, "addr-shared", cfg, None),
        throttled(&server, "addr-shared", cfg, None),
    );
    let ip: std::net::IpAddr = "2001:db8::7".parse().unwrap();
    for _ in 0..3 {
        fail_from(&a, ip).await;
    }
    assert!(a.begin_untagged(Some(ip)).is_err(), "locked out on A");
    // Without the lockout sync, B's checks before the lookup know only what
    // B learnt: its first attempt runs, and the reply to its failure
    // carries the fleet's lockout.
    fail_from(&b, ip).await;
    let wait = b.begin_untagged(Some(ip)).err();
    assert!(
        wait.is_some_and(|w| w > Duration::from_secs(50)),
        "B refuses with the shared lockout's wait: {wait:?}"
    );
    // The same /64 is the same address; another one is unaffected.
    assert!(
        b.begin_untagged(Some("2001:db8::8".parse().unwrap()))
            .is_err()
    );
    assert!(
        b.begin_untagged(Some("2001:db9::7".parse().unwrap()))
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockouts_reach_other_instances_before_any_attempt_there() {
    let Some(server) = RedisServer::start("lock-sync") else {
        return;
    };
    let cfg = three_strikes();
    let every = Some(Duration::from_millis(50));
    let (a, b) = (
        throttled(&server, "lock-sync", cfg, every),
        throttled(&server, "lock-sync", cfg, every),
    );
    let ip: std::net::IpAddr = "198.51.100.9".parse().unwrap();
    for _ in 0..3 {
        fail_from(&a, ip).await;
        a.key_failed(41).await;
    }
    assert!(a.begin_untagged(Some(ip)).is_err() && a.check_key(41).is_err());
    // B has seen no failure of that address or key id: it learns both
    // from the sync (a bounded wait for its next period).
    let now = || apikey::Clock::now(&apikey::SystemClock);
    let deadline = Instant::now() + Duration::from_secs(10);
    let throttle = b.throttle().unwrap();
    while (throttle.check_address(ip, now()).is_ok() || b.check_key(41).is_ok())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wait = b.begin_untagged(Some(ip)).err();
    assert!(
        wait.is_some_and(|w| w > Duration::from_secs(50)),
        "B refuses the address with the shared lockout's wait: {wait:?}"
    );
    assert!(b.check_key(41).is_err(), "and the key id");
    assert!(
        b.begin_untagged(Some("198.51.100.10".parse().unwrap()))
            .is_ok()
    );
    assert!(b.check_key(42).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_url_password_never_shows() {
    let urls = [
        (
            "redis://app:s3cret-pw@cache.internal:6379/2",
            "redis://[REDACTED]@cache.internal:6379/2",
        ),
        (
            "redis://:s3cret-pw@127.0.0.1:1/",
            "redis://[REDACTED]@127.0.0.1:1/",
        ),
        (
            "rediss://app:s3cret/pw?x@cache/0",
            "rediss://[REDACTED]@cache/0",
        ),
        (
            "redis+unix:///run/redis.sock?db=1&pass=s3cret-pw",
            "redis+unix:///run/redis.sock?[REDACTED]",
        ),
        (
            "redis://cache:6379/0#s3cret-pw",
            "redis://cache:6379/0?[REDACTED]",
        ),
        ("app:s3cret-pw@cache", "[REDACTED]"),
    ];
    for (url, shown) in urls {
        let b = RedisLimits::builder(url);
        let debug = format!("{b:?}");
        assert!(debug.contains(&format!("url: \"{shown}\"")), "{debug}");
        for secret in ["s3cret", "app"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }
    // Neither the bundle nor its errors (a bad URL, a refused connection)
    // repeat the URL's password.
    let bad = RedisLimits::builder("redis://app:s3cret-pw@/")
        .build()
        .unwrap_err();
    let limits = RedisLimits::builder("redis://app:s3cret-pw@127.0.0.1:1/")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let down = limits
        .admit(&Admission::new(1, Quota::unlimited().per_minute(1)))
        .await
        .unwrap_err();
    for shown in [format!("{limits:?}"), chain(&bad), chain(&down)] {
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}

fn chain(e: &apikey::StoreError) -> String {
    let mut out = format!("{e} {e:?}");
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        out.push_str(&format!(" / {c} {c:?}"));
        cur = c.source();
    }
    out
}

#[test]
fn building_outside_a_tokio_runtime_is_a_typed_error_not_a_panic() {
    let plain = || RedisLimits::builder("redis://127.0.0.1:1/");
    for builder in [
        plain(),
        plain().failure_throttle(three_strikes()),
        plain().failure_throttle(three_strikes()).lockout_sync(None),
    ] {
        let e = builder.build().unwrap_err();
        assert_eq!(e.kind(), apikey::StoreErrorKind::InvalidRequest);
    }
}
