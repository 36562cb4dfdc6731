//! Additive usage: per-day counts, the latest use, exactly-once flush ids.

use apikey::{
    FlushOutcome, KeyId, KeyStatus, KeyStoreWrite, OsRng, UsageBatch, UsageDelta, UsageStore,
};
use rand_core::Rng;
use std::net::IpAddr;
use std::time::Duration;

use super::{must_get, ok, put_new, sample_record, suite_now, unique_owner, update};

/// `record_usage` adds per key and day, whatever the order of batches
/// (late batches for earlier days included); `last_used_at` is the latest
/// use, and `last_used_ip` and `last_used_route` are that use's (a late
/// batch does not move them back); unknown ids are skipped; the revision
/// does not move; a later put keeps the three; `usage` returns the rows of the range asked,
/// ascending; a delete takes the rows with it.
///
/// # Panics
/// When the store breaks the contract.
pub async fn usage_batches<S: UsageStore + KeyStoreWrite + ?Sized>(store: &S) {
    let a = sample_record(Some(&unique_owner()));
    put_new(store, &a).await;
    let now = suite_now();
    let d1 = now.utc_date();
    let d2 = d1.next_day().unwrap_or(d1);
    let d3 = d2.next_day().unwrap_or(d2);
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    let batch = [
        UsageDelta::new(a.id, d1, 3, now).from(ip("192.0.2.1"), Some("GET /a".into())),
        UsageDelta::new(KeyId::from_u64(OsRng.next_u64()), d1, 9, now),
        UsageDelta::new(a.id, d2, 4, now + Duration::from_secs(86_400))
            .from(ip("192.0.2.2"), Some("GET /b".into())),
    ];
    ok(
        store.record_usage(&UsageBatch::new(batch.to_vec())).await,
        "record_usage",
    );
    ok(
        store
            .record_usage(&UsageBatch::new(vec![
                UsageDelta::new(a.id, d2, 1, now + Duration::from_secs(25 * 3_600))
                    .from(ip("2001:db8::3"), Some("POST /c/ü".into())),
            ]))
            .await,
        "record_usage",
    );
    // A late batch for an earlier day adds to that day and does not move
    // last_used_at back.
    ok(
        store
            .record_usage(&UsageBatch::new(vec![
                UsageDelta::new(a.id, d1, 2, now).from(ip("192.0.2.9"), Some("GET /late".into())),
            ]))
            .await,
        "record_usage",
    );
    assert_eq!(
        ok(store.usage(a.id, d1..d3).await, "usage"),
        vec![(d1, 5), (d2, 5)],
        "store conformance: usage rows must be the sums per day, ascending"
    );
    assert_eq!(
        ok(store.usage(a.id, d2..d3).await, "usage"),
        vec![(d2, 5)],
        "store conformance: usage must return the days of the range only (end exclusive)"
    );
    let r = must_get(store, a.id, "get").await;
    assert_eq!(
        r.last_used_at,
        Some(now + Duration::from_secs(25 * 3_600)),
        "store conformance: last_used_at must be the latest use"
    );
    assert_eq!(
        (r.last_used_ip, r.last_used_route.as_deref()),
        (ip("2001:db8::3"), Some("POST /c/ü")),
        "store conformance: last_used_ip and last_used_route must be the latest use's"
    );
    assert_eq!(
        r.revision, a.revision,
        "store conformance: record_usage must not bump the revision"
    );
    // A management write keeps what usage wrote.
    let mut next = r.clone();
    next.status = KeyStatus::Disabled;
    next.last_used_at = None;
    next.last_used_ip = None;
    next.last_used_route = Some("PUT /forged".into());
    ok(
        store.commit(&update(next, r.revision)).await,
        "commit (put)",
    );
    let kept = must_get(store, a.id, "get").await;
    assert_eq!(
        (kept.last_used_at, kept.last_used_ip, kept.last_used_route),
        (r.last_used_at, r.last_used_ip, r.last_used_route.clone()),
        "store conformance: a put must keep the stored last_used_at, last_used_ip and last_used_route"
    );
    // A use from an unknown address and route clears them (they are the
    // latest use's).
    ok(
        store
            .record_usage(&UsageBatch::new(vec![UsageDelta::new(
                a.id,
                d3,
                1,
                now + Duration::from_secs(49 * 3_600),
            )]))
            .await,
        "record_usage",
    );
    let r = must_get(store, a.id, "get").await;
    assert_eq!(
        (r.last_used_ip, r.last_used_route),
        (None, None),
        "store conformance: a latest use without address or route must clear them"
    );
    assert_eq!(ok(store.usage(a.id, d1..d3).await, "usage").len(), 2);
}

/// A batch sent twice with the same [`FlushId`](apikey::FlushId) (a retry
/// after a lost answer, or after a cancelled flush) is applied once; the
/// second answer is [`FlushOutcome::AlreadyApplied`].
///
/// # Panics
/// When the store breaks the contract.
pub async fn usage_replay_applies_once<S: UsageStore + KeyStoreWrite + ?Sized>(store: &S) {
    let a = sample_record(Some(&unique_owner()));
    put_new(store, &a).await;
    let day = suite_now().utc_date();
    let batch = UsageBatch::new(vec![UsageDelta::new(a.id, day, 3, suite_now())]);
    assert_eq!(
        ok(store.record_usage(&batch).await, "record_usage"),
        FlushOutcome::Applied,
        "store conformance: a new batch must be Applied"
    );
    assert_eq!(
        ok(store.record_usage(&batch).await, "record_usage replay"),
        FlushOutcome::AlreadyApplied,
        "store conformance: a replayed batch must be AlreadyApplied"
    );
    let next = day.next_day().unwrap_or(day);
    assert_eq!(
        ok(store.usage(a.id, day..next).await, "usage"),
        vec![(day, 3)],
        "store conformance: a replayed batch must not be counted twice"
    );
    // Another batch with the same deltas but its own id adds.
    ok(
        store
            .record_usage(&UsageBatch::new(batch.deltas.clone()))
            .await,
        "record_usage",
    );
    assert_eq!(
        ok(store.usage(a.id, day..next).await, "usage"),
        vec![(day, 6)],
        "store conformance: batches with distinct ids must add"
    );
}
