//! The testkit's limits oracles against `MemoryLimits` (the Redis crate runs
//! the same oracles against Redis).

use std::collections::HashMap;
use std::time::Duration;

use apikey::ManualClock;
use apikey::limits::{MemoryLimits, NoLimits, Quota, RefillInterval};
use apikey_testkit::limits::{
    Arrival, Idempotency, check_admission_bound, check_against_model, check_both_or_neither,
    check_idempotency_contract, check_refill, run_trace, same_decisions, start,
};
use proptest::prelude::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn memory_limits_meet_the_bound_and_the_model(
        q in quota(),
        arrivals in prop::collection::vec(arrival(), 1..150),
        k0 in prop::option::of(0u64..30),
        owner in prop::option::of(0u64..40),
    ) {
        let rt = rt();
        let clock = ManualClock::new(start());
        let limits = MemoryLimits::with_clock(clock.clone());
        let mut keys = HashMap::new();
        if let Some(n) = k0 {
            limits.set_credits_sync(apikey::limits::CreditAccount::Key(0), n, None);
            keys.insert(0, n);
        }
        if let Some(n) = owner {
            limits.set_credits_sync(
                apikey::limits::CreditAccount::Owner {
                    owner: apikey_testkit::limits::OWNER.owner,
                    api: apikey_testkit::limits::OWNER.api,
                },
                n,
                None,
            );
        }
        let trace = rt.block_on(run_trace(&limits, &clock, q, &arrivals));
        prop_assert_eq!(check_admission_bound(&trace, q), Ok(()));
        prop_assert_eq!(check_against_model(&trace, q, &keys, owner), Ok(()));
    }

    #[test]
    fn two_memory_bundles_decide_alike(
        q in quota(),
        arrivals in prop::collection::vec(arrival(), 1..80),
    ) {
        let rt = rt();
        let (ca, cb) = (ManualClock::new(start()), ManualClock::new(start()));
        let a = MemoryLimits::with_clock(ca.clone());
        let b = std::sync::Arc::new(MemoryLimits::with_clock(cb.clone()));
        prop_assert_eq!(rt.block_on(same_decisions((&a, &ca), (&b, &cb), q, &arrivals)), Ok(()));
    }
}

#[test]
fn refills_fixed_and_calendar() {
    let rt = rt();
    for (i, interval) in [
        RefillInterval::every(Duration::from_secs(90)).expect("valid"),
        RefillInterval::UtcDay,
        RefillInterval::UtcMonth,
    ]
    .into_iter()
    .enumerate()
    {
        for owner in [false, true] {
            let clock = ManualClock::new(start());
            let limits = MemoryLimits::with_clock(clock.clone());
            let r = rt.block_on(check_refill(&limits, &clock, i as u64, interval, owner));
            assert_eq!(r, Ok(()), "{interval:?} owner={owner}");
        }
    }
}

#[test]
fn both_or_neither_is_exact() {
    let rt = rt();
    let limits = MemoryLimits::new();
    let r = rt.block_on(check_both_or_neither(&limits, &[1, 2, 3], 50, 120, 400));
    assert_eq!(r, Ok(()));
}

#[test]
fn the_oracles_catch_a_broken_bundle() {
    // NoLimits admits everything: the bound oracle must notice.
    let rt = rt();
    let clock = ManualClock::new(start());
    let q = Quota::unlimited().per_minute(2);
    let arrivals = [Arrival {
        after: Duration::ZERO,
        key: 1,
        cost: None,
        owner: false,
    }; 3];
    let trace = rt.block_on(run_trace(&NoLimits, &clock, q, &arrivals));
    assert!(check_admission_bound(&trace, q).is_err());
    assert!(check_against_model(&trace, q, &HashMap::new(), None).is_err());
}

#[test]
fn idempotency_tokens_are_checked_like_every_bundle() {
    let rt = rt();
    let limits = MemoryLimits::new();
    let r = rt.block_on(check_idempotency_contract(
        &limits,
        1,
        2,
        Idempotency::NotRecorded,
    ));
    assert_eq!(r, Ok(()));
}

#[test]
fn no_limits_refuses_the_same_tokens() {
    use apikey::limits::{Admission, IdempotencyError, Limits};
    let rt = rt();
    let err = rt
        .block_on(NoLimits.admit(&Admission::new(1, Quota::unlimited()).idempotency("")))
        .unwrap_err();
    assert_eq!(err.kind(), apikey::StoreErrorKind::InvalidRequest);
    let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<IdempotencyError>());
    assert_eq!(source, Some(&IdempotencyError::EmptyToken));
    // Retrying does not help: a 400, never a 503 to retry.
    let public = apikey::Error::from(err);
    assert_eq!(
        (public.code().as_str(), public.http_status()),
        ("INVALID_REQUEST", 400)
    );
    assert!(
        public.to_string().contains("idempotency token is empty"),
        "{public}"
    );
    assert!(
        rt.block_on(NoLimits.admit(&Admission::new(1, Quota::unlimited()).idempotency("r-1")))
            .is_ok_and(|v| v.is_admitted())
    );
}
