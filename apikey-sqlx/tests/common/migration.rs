//! Migration 2 (per-day usage rows, owner guards) over data written at
//! version 1: the counters each key held, and what the migration must make
//! of them.

use apikey::{KeyRecord, KeyStoreQuery, KeyStoreWrite, UsageStore};
use apikey_testkit::{WriteExt, conformance};
use time::macros::date;

/// Per seeded key, the version-1 counters `(usage_day, day count, month
/// count)`: a day with earlier days of its month, a first of the month
/// with late arrivals (the rest adds to the same row), a day alone, a
/// month with nothing on the day itself, and no use at all.
pub const COUNTERS: [(Option<&str>, i64, i64); 5] = [
    (Some("2026-03-17"), 5, 12),
    (Some("2026-03-01"), 4, 9),
    (Some("2026-01-31"), 7, 7),
    (Some("2026-02-10"), 0, 3),
    (None, 0, 0),
];

/// What version 2 must hold for each key of [`COUNTERS`], ascending.
fn expected(i: usize) -> Vec<(time::Date, u64)> {
    match i {
        0 => vec![(date!(2026 - 03 - 01), 7), (date!(2026 - 03 - 17), 5)],
        1 => vec![(date!(2026 - 03 - 01), 9)],
        2 => vec![(date!(2026 - 01 - 31), 7)],
        3 => vec![(date!(2026 - 02 - 01), 3)],
        _ => vec![],
    }
}

/// One key per [`COUNTERS`] entry, of one owner, with a `last_used_at`.
pub async fn seed<S: KeyStoreWrite>(store: &S) -> Vec<KeyRecord> {
    let owner = conformance::unique_owner();
    let mut records = Vec::new();
    for _ in COUNTERS {
        let mut r = conformance::sample_record(Some(&owner));
        r.last_used_at = Some(conformance::suite_now());
        store.insert(r.clone()).await.unwrap();
        records.push(store.get(r.id).await.unwrap().unwrap());
    }
    records
}

/// Every record reads back as it was, the owner listing is whole, and the
/// usage rows hold every count (a month's total is the old month count).
pub async fn check<S: KeyStoreQuery + UsageStore>(store: &S, records: &[KeyRecord]) {
    let owner = records[0].owner.clone().unwrap();
    let listed = super::list_all(store, apikey::KeyQuery::owner(owner)).await;
    assert_eq!(listed.len(), records.len());
    let all = date!(2000 - 01 - 01)..date!(2100 - 01 - 01);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            store.get(r.id).await.unwrap().as_ref(),
            Some(r),
            "record {i}"
        );
        let rows = store.usage(r.id, all.clone()).await.unwrap();
        assert_eq!(rows, expected(i), "usage of record {i}");
        let total: u64 = rows.iter().map(|(_, n)| n).sum();
        assert_eq!(total, COUNTERS[i].2 as u64, "month total of record {i}");
    }
}

/// After migration 3 a usage flush keeps the address and route of the
/// last use, and a management write leaves them.
pub async fn last_use_is_kept<S: KeyStoreWrite + UsageStore>(store: &S, record: &KeyRecord) {
    let at = conformance::suite_now() + std::time::Duration::from_secs(60);
    let ip = "203.0.113.9".parse().ok();
    let batch = apikey::UsageBatch::new(vec![
        apikey::UsageDelta::new(record.id, at.utc_date(), 1, at)
            .from(ip, Some("GET /v1/migrated".into())),
    ]);
    store.record_usage(&batch).await.unwrap();
    let got = store.get(record.id).await.unwrap().unwrap();
    assert_eq!(
        (
            got.last_used_at,
            got.last_used_ip,
            got.last_used_route.as_deref()
        ),
        (Some(at), ip, Some("GET /v1/migrated"))
    );
}
