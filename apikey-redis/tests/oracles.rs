//! The testkit's limits oracles against Redis, and Redis against the
//! in-memory bundle: the same decisions for the same arrival times.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use apikey::ManualClock;
use apikey::limits::{CreditAccount, CreditBalances, MemoryLimits, Quota, RefillInterval};
use apikey_testkit::limits::{
    Arrival, OWNER, check_admission_bound, check_against_model, check_both_or_neither,
    check_refill, run_trace, same_decisions, start,
};
use proptest::prelude::*;
use support::RedisServer;

fn arrival() -> impl Strategy<Value = Arrival> {
    (
        prop_oneof![Just(0u64), 0u64..2_000_000, 0u64..90_000_000],
        0u64..3,
        prop::option::of(0u64..4),
        any::<bool>(),
    )
        .prop_map(|(after, key, cost, owner)| Arrival {
            after: Duration::from_micros(after),
            key,
            cost,
            owner,
        })
}

fn quota() -> impl Strategy<Value = Quota> {
    (
        prop::option::of(prop_oneof![Just(0u32), 1u32..8, 7u32..1_000]),
        prop::option::of(1u32..40),
    )
        .prop_map(|(m, h)| Quota::new(m, h))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn case() -> String {
    format!(
        "c{}",
        CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

#[test]
fn redis_meets_the_bound_and_the_model_and_matches_memory() {
    let Some(server) = RedisServer::start("oracles") else {
        return;
    };
    let rt = rt();
    let _runtime = rt.enter();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(40));
    let strategy = (
        quota(),
        prop::collection::vec(arrival(), 1..60),
        prop::option::of(0u64..30),
        prop::option::of(0u64..40),
    );
    runner
        .run(&strategy, |(q, arrivals, k0, owner)| {
            rt.block_on(async {
                let id = case();
                let clock = ManualClock::new(start());
                let redis = server.limits_on(&id, &clock);
                let mclock = ManualClock::new(start());
                let memory = MemoryLimits::with_clock(mclock.clone());
                let mut keys = HashMap::new();
                let owner_acct = CreditAccount::Owner {
                    owner: OWNER.owner,
                    api: OWNER.api,
                };
                if let Some(n) = k0 {
                    redis
                        .set_credits(CreditAccount::Key(0), n, None)
                        .await
                        .unwrap();
                    memory.set_credits_sync(CreditAccount::Key(0), n, None);
                    keys.insert(0, n);
                }
                if let Some(n) = owner {
                    redis.set_credits(owner_acct, n, None).await.unwrap();
                    memory.set_credits_sync(owner_acct, n, None);
                }
                let trace = run_trace(&redis, &clock, q, &arrivals).await;
                prop_assert_eq!(check_admission_bound(&trace, q), Ok(()));
                prop_assert_eq!(check_against_model(&trace, q, &keys, owner), Ok(()));
                let memory_trace = run_trace(&memory, &mclock, q, &arrivals).await;
                prop_assert_eq!(trace, memory_trace);
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn redis_and_memory_decide_alike_with_refilling_balances() {
    let Some(server) = RedisServer::start("alike") else {
        return;
    };
    let rt = rt();
    let _runtime = rt.enter();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    let interval = prop_oneof![
        Just(RefillInterval::UtcDay),
        Just(RefillInterval::UtcMonth),
        (1u64..200_000_000)
            .prop_map(|us| RefillInterval::every(Duration::from_micros(us)).unwrap()),
    ];
    let strategy = (
        quota(),
        prop::collection::vec(arrival(), 1..60),
        interval,
        0u64..10,
    );
    runner
        .run(&strategy, |(q, mut arrivals, interval, n)| {
            // Long gaps so refills (a day, a month) happen inside the trace.
            for (i, a) in arrivals.iter_mut().enumerate() {
                if i % 7 == 3 {
                    a.after += Duration::from_secs(86_400 * (1 + i as u64 % 20));
                }
            }
            rt.block_on(async {
                let id = case();
                let (ca, cb) = (ManualClock::new(start()), ManualClock::new(start()));
                let redis = server.limits_on(&id, &ca);
                let memory = MemoryLimits::with_clock(cb.clone());
                let refill = Some(apikey::limits::Refill::new(n + 1, interval));
                for acct in [
                    CreditAccount::Key(1),
                    CreditAccount::Owner {
                        owner: OWNER.owner,
                        api: OWNER.api,
                    },
                ] {
                    redis.set_credits(acct, n, refill).await.unwrap();
                    memory.set_credits_sync(acct, n, refill);
                }
                prop_assert_eq!(
                    same_decisions((&redis, &ca), (&memory, &cb), q, &arrivals).await,
                    Ok(())
                );
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn refills_fixed_and_calendar_in_redis() {
    let Some(server) = RedisServer::start("refills") else {
        return;
    };
    let rt = rt();
    let _runtime = rt.enter();
    for (i, interval) in [
        RefillInterval::every(Duration::from_secs(90)).unwrap(),
        RefillInterval::UtcDay,
        RefillInterval::UtcMonth,
    ]
    .into_iter()
    .enumerate()
    {
        for owner in [false, true] {
            let clock = ManualClock::new(start());
            let limits = server.limits_on(&format!("refill{i}{owner}"), &clock);
            let r = rt.block_on(check_refill(&limits, &clock, i as u64, interval, owner));
            assert_eq!(r, Ok(()), "{interval:?} owner={owner}");
        }
    }
}

#[test]
fn both_or_neither_in_redis() {
    let Some(server) = RedisServer::start("both") else {
        return;
    };
    let rt = rt();
    let _runtime = rt.enter();
    let limits = server
        .builder("both")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = rt.block_on(check_both_or_neither(&limits, &[1, 2, 3], 50, 120, 400));
    assert_eq!(r, Ok(()));
}

#[test]
fn state_expires_once_replenished_and_keys_carry_the_prefix() {
    let Some(server) = RedisServer::start("expiry") else {
        return;
    };
    let rt = rt();
    rt.block_on(async {
        let limits = server.builder("expiry").build().unwrap();
        let q = Quota::unlimited().per_minute(600).per_hour(36_000);
        use apikey::limits::{Admission, Limits};
        assert!(
            limits
                .admit(&Admission::new(5, q))
                .await
                .unwrap()
                .is_admitted()
        );
        let client = redis::Client::open(server.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(keys, vec!["test:expiry:r:5".to_owned()]);
        // Replenished 100 ms after one request (both windows: T = 100 ms).
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&keys[0])
            .query_async(&mut c)
            .await
            .unwrap();
        assert!((1..=100).contains(&ttl), "{ttl}");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let n: i64 = redis::cmd("EXISTS")
            .arg(&keys[0])
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 0, "expired");
    });
}
