//! The commit primitive: revisions, owner guards, all-or-nothing,
//! collisions, the item limit.

use apikey::{
    Changes, Delete, KeyDigest, KeyQuery, KeyStoreQuery, KeyStoreWrite, KeyView, LegacyInfo, Put,
    StoreErrorKind, UsageBatch, UsageDelta, UsageStore,
};
use apikey::{KeyStatus, OsRng};
use rand_core::Rng;
use std::time::Duration;

use super::{
    expect_kind, insert, join_all, must_get, ok, put_new, revocation, sample_record, suite_now,
    unique_owner, update,
};

fn legacy(index: KeyDigest) -> Option<LegacyInfo> {
    Some(LegacyInfo::new("oldco_", index, 1, false))
}

fn random_index() -> KeyDigest {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    KeyDigest::from_bytes(b)
}

async fn version<S: KeyStoreQuery + ?Sized>(store: &S, owner: &str) -> u64 {
    ok(store.list(&KeyQuery::owner(owner)).await, "list").owner_version
}

/// An insert keeps every field as given (revision and `last_used_at`
/// too); `fetch` returns its exact view and `get` the exact record.
///
/// # Panics
/// When the store breaks the contract.
pub async fn insert_fetch_get<S: KeyStoreWrite + ?Sized>(store: &S) {
    let owner = unique_owner();
    let mut a = sample_record(Some(&owner));
    a.revision = 7;
    a.last_used_at = Some(suite_now() - Duration::from_secs(3 * 3_600));
    a.last_used_ip = "2001:db8::1".parse().ok();
    a.last_used_route = Some("GET /v1/items/é".into());
    put_new(store, &a).await;
    let view = ok(store.fetch(a.id).await, "fetch")
        .unwrap_or_else(|| panic!("store conformance: fetch must find an inserted record"));
    assert_eq!(
        *view,
        KeyView::from_record(&a),
        "store conformance: fetch must return the record's exact view"
    );
    assert_eq!(
        must_get(store, a.id, "get").await,
        a,
        "store conformance: get must return the record exactly as inserted (revision and last_used_at too)"
    );
    let listing = ok(store.list(&KeyQuery::owner(&owner)).await, "list");
    assert_eq!(
        listing.records,
        vec![a],
        "store conformance: the owner listing must hold the inserted record"
    );
}

/// An insert over an existing id is `IdCollision` and never overwrites.
///
/// # Panics
/// When the store breaks the contract.
pub async fn insert_never_overwrites<S: KeyStoreWrite + ?Sized>(store: &S) {
    let a = sample_record(Some(&unique_owner()));
    put_new(store, &a).await;
    let mut b = sample_record(Some(&unique_owner()));
    b.id = a.id;
    expect_kind(
        store.commit(&insert(b)).await,
        StoreErrorKind::IdCollision,
        "an insert over an existing id",
    );
    assert_eq!(
        must_get(store, a.id, "get").await,
        a,
        "store conformance: an insert over an existing id must not overwrite it"
    );
}

/// A put names the revision it read: a stale one is `Conflict`, a missing
/// record `NotFound`; a put that succeeds stores revision + 1 and keeps
/// the stored `last_used_at`. Deletes check revisions the same way.
///
/// # Panics
/// When the store breaks the contract.
pub async fn commit_checks_revisions<S: KeyStoreWrite + ?Sized>(store: &S) {
    let mut a = sample_record(Some(&unique_owner()));
    a.last_used_at = Some(suite_now() - Duration::from_secs(3_600));
    a.last_used_ip = "192.0.2.4".parse().ok();
    a.last_used_route = Some("GET /v1".into());
    put_new(store, &a).await;
    let mut next = a.clone();
    next.status = KeyStatus::Disabled;
    next.name = "changed".into();
    next.last_used_at = None;
    next.last_used_ip = None;
    next.last_used_route = None;
    next.revision = 99;
    ok(store.commit(&update(next.clone(), 0)).await, "commit (put)");
    let got = must_get(store, a.id, "get").await;
    let mut want = next.clone();
    want.revision = 1;
    want.last_used_at = a.last_used_at;
    want.last_used_ip = a.last_used_ip;
    want.last_used_route.clone_from(&a.last_used_route);
    assert_eq!(
        got, want,
        "store conformance: a put must write every field but last_used_at (kept) and revision (expected + 1)"
    );
    expect_kind(
        store.commit(&update(next.clone(), 0)).await,
        StoreErrorKind::Conflict,
        "a put at a stale revision",
    );
    assert_eq!(
        must_get(store, a.id, "get").await,
        want,
        "store conformance: a conflicting put changed the record"
    );
    let unknown = sample_record(None);
    expect_kind(
        store.commit(&update(unknown.clone(), 0)).await,
        StoreErrorKind::NotFound,
        "a put of a missing record",
    );
    assert!(
        ok(store.get(unknown.id).await, "get").is_none(),
        "store conformance: a put of a missing record must not insert it"
    );
    let mut del = Changes::new();
    del.deletes.push(Delete {
        id: a.id,
        expected: 0,
    });
    expect_kind(
        store.commit(&del).await,
        StoreErrorKind::Conflict,
        "a delete at a stale revision",
    );
    del.deletes[0].expected = 1;
    ok(store.commit(&del).await, "commit (delete)");
    assert!(
        ok(store.fetch(a.id).await, "fetch").is_none(),
        "store conformance: a deleted record must not be fetched"
    );
    expect_kind(
        store.commit(&del).await,
        StoreErrorKind::NotFound,
        "a delete of a missing record",
    );
}

/// Owner guards: an owner never guarded has version 0; a guard at the
/// stored version succeeds and bumps it by one; a stale guard is
/// `Conflict`. A commit of guards alone is allowed.
///
/// # Panics
/// When the store breaks the contract.
pub async fn owner_guards<S: KeyStoreWrite + ?Sized>(store: &S) {
    let owner = unique_owner();
    assert_eq!(
        version(store, &owner).await,
        0,
        "store conformance: an owner never guarded has version 0"
    );
    let mut c = Changes::new().guard(owner.clone(), 0);
    c.puts.push(Put::insert(sample_record(Some(&owner))));
    ok(store.commit(&c).await, "commit (guarded insert)");
    assert_eq!(
        version(store, &owner).await,
        1,
        "store conformance: a guard at version v must leave v + 1"
    );
    let mut stale = Changes::new().guard(owner.clone(), 0);
    let fresh = sample_record(Some(&owner));
    stale.puts.push(Put::insert(fresh.clone()));
    expect_kind(
        store.commit(&stale).await,
        StoreErrorKind::Conflict,
        "a commit with a stale owner guard",
    );
    assert!(
        ok(store.get(fresh.id).await, "get").is_none(),
        "store conformance: a commit with a stale guard wrote a record"
    );
    ok(
        store.commit(&Changes::new().guard(owner.clone(), 1)).await,
        "commit (guard alone)",
    );
    assert_eq!(version(store, &owner).await, 2);
    let other = unique_owner();
    assert_eq!(
        version(store, &other).await,
        0,
        "store conformance: a guard must bump its own owner only"
    );
}

/// A commit whose last item fails writes nothing: not its inserts, not its
/// puts, not its deletes, not its guards.
///
/// # Panics
/// When the store breaks the contract.
pub async fn all_or_nothing<S: KeyStoreWrite + ?Sized>(store: &S) {
    let owner = unique_owner();
    let a = sample_record(Some(&owner));
    let b = sample_record(Some(&owner));
    put_new(store, &a).await;
    put_new(store, &b).await;
    ok(
        store.commit(&Changes::new().guard(owner.clone(), 0)).await,
        "guard",
    );
    let fresh = sample_record(Some(&owner));
    let mut changed = a.clone();
    changed.status = KeyStatus::Disabled;
    let base = |failing: &dyn Fn(&mut Changes)| {
        let mut c = Changes::new().guard(owner.clone(), 1);
        c.puts.push(Put::insert(fresh.clone()));
        c.puts.push(Put::update(changed.clone(), 0));
        c.deletes.push(Delete {
            id: b.id,
            expected: 0,
        });
        failing(&mut c);
        c
    };
    let missing = sample_record(None);
    let taken = {
        let mut t = sample_record(None);
        t.id = a.id;
        t
    };
    let cases: [(&str, StoreErrorKind, Changes); 5] = [
        (
            "a stale owner guard",
            StoreErrorKind::Conflict,
            base(&|c| c.guards[0].version = 0),
        ),
        (
            "a put at a stale revision",
            StoreErrorKind::Conflict,
            base(&|c| c.puts[1].expected = Some(3)),
        ),
        (
            "a delete of a missing record",
            StoreErrorKind::NotFound,
            base(&|c| {
                c.deletes.push(Delete {
                    id: missing.id,
                    expected: 0,
                })
            }),
        ),
        (
            "an insert of a taken id",
            StoreErrorKind::IdCollision,
            base(&|c| {
                c.puts.remove(1);
                c.puts.push(Put::insert(taken.clone()));
            }),
        ),
        (
            "a put of a missing record",
            StoreErrorKind::NotFound,
            base(&|c| c.puts.push(Put::update(missing.clone(), 0))),
        ),
    ];
    for (what, kind, changes) in cases {
        expect_kind(store.commit(&changes).await, kind, what);
        assert!(
            ok(store.get(fresh.id).await, "get").is_none(),
            "store conformance: a commit failing on {what} wrote its insert"
        );
        assert_eq!(
            must_get(store, a.id, "get").await,
            a,
            "store conformance: a commit failing on {what} wrote its put"
        );
        assert_eq!(
            must_get(store, b.id, "get").await,
            b,
            "store conformance: a commit failing on {what} applied its delete"
        );
        assert_eq!(
            version(store, &owner).await,
            1,
            "store conformance: a commit failing on {what} bumped its owner guard"
        );
    }
    ok(store.commit(&base(&|_| {})).await, "the same commit, valid");
    assert!(ok(store.get(b.id).await, "get").is_none());
    assert_eq!(must_get(store, fresh.id, "get").await, fresh);
    assert_eq!(version(store, &owner).await, 2);
}

/// `n` concurrent commits guarded at one owner version: exactly one
/// succeeds, the others are `Conflict` and write nothing.
///
/// # Panics
/// When the store breaks the contract.
pub async fn concurrent_guards_admit_one<S: KeyStoreWrite + ?Sized>(store: &S, n: usize) {
    let owner = unique_owner();
    let results = join_all((0..n).map(|_| {
        let mut c = Changes::new().guard(owner.clone(), 0);
        c.puts.push(Put::insert(sample_record(Some(&owner))));
        async move { store.commit(&c).await }
    }))
    .await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        won, 1,
        "store conformance: of {n} concurrent commits guarded at one owner version, exactly one must succeed"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            r.kind(),
            StoreErrorKind::Conflict,
            "store conformance: a losing guarded commit must be Conflict"
        );
    }
    let listing = ok(store.list(&KeyQuery::owner(&owner)).await, "list");
    assert_eq!(listing.records.len(), 1);
    assert_eq!(listing.owner_version, 1);
}

/// The legacy index is unique after every commit: `find_legacy` finds the
/// holder; an insert or put claiming a held index is `IdCollision`; an
/// index given up in the same commit (delete, put without it) is free.
///
/// # Panics
/// When the store breaks the contract.
pub async fn legacy_index<S: KeyStoreWrite + ?Sized>(store: &S) {
    let index = random_index();
    let mut a = sample_record(Some(&unique_owner()));
    a.legacy = legacy(index);
    put_new(store, &a).await;
    assert_eq!(
        ok(store.find_legacy(&index).await, "find_legacy"),
        Some(a.clone()),
        "store conformance: find_legacy must return the record holding the index"
    );
    assert!(
        ok(store.find_legacy(&random_index()).await, "find_legacy").is_none(),
        "store conformance: find_legacy of an unknown index must be None"
    );
    let mut b = sample_record(None);
    b.legacy = legacy(index);
    expect_kind(
        store.commit(&insert(b.clone())).await,
        StoreErrorKind::IdCollision,
        "an insert claiming a held legacy index",
    );
    let c = sample_record(None);
    put_new(store, &c).await;
    let mut c2 = c.clone();
    c2.legacy = legacy(index);
    expect_kind(
        store.commit(&update(c2.clone(), 0)).await,
        StoreErrorKind::IdCollision,
        "a put claiming a held legacy index",
    );
    let mut two = insert(b.clone());
    let mut d = sample_record(None);
    let other = random_index();
    b.legacy = legacy(other);
    two.puts[0].record.legacy = legacy(other);
    d.legacy = legacy(other);
    two.puts.push(Put::insert(d));
    expect_kind(
        store.commit(&two).await,
        StoreErrorKind::IdCollision,
        "two records of one commit claiming one legacy index",
    );
    assert!(ok(store.get(b.id).await, "get").is_none());
    // Given up and taken in one commit.
    let mut swap = Changes::new();
    swap.deletes.push(Delete {
        id: a.id,
        expected: 0,
    });
    swap.puts.push(Put::update(c2.clone(), 0));
    ok(
        store.commit(&swap).await,
        "a commit moving a legacy index from a deleted record",
    );
    let mut want = c2;
    want.revision = 1;
    assert_eq!(
        ok(store.find_legacy(&index).await, "find_legacy"),
        Some(want),
        "store conformance: find_legacy must follow the index to its new holder"
    );
}

/// Invalid commits are `Corrupt` and write nothing: more than
/// [`Changes::MAX_ITEMS`] items, one id twice, a record that breaks its
/// invariants.
///
/// # Panics
/// When the store breaks the contract.
pub async fn invalid_changes_are_refused<S: KeyStoreWrite + ?Sized>(store: &S) {
    let owner = unique_owner();
    let mut big = Changes::new();
    for _ in 0..=Changes::MAX_ITEMS {
        big.puts.push(Put::insert(sample_record(Some(&owner))));
    }
    expect_kind(
        store.commit(&big).await,
        StoreErrorKind::Corrupt,
        "a commit of more than Changes::MAX_ITEMS items",
    );
    let mut twice = insert(sample_record(Some(&owner)));
    let again = twice.puts[0].record.clone();
    twice.deletes.push(Delete {
        id: again.id,
        expected: 0,
    });
    expect_kind(
        store.commit(&twice).await,
        StoreErrorKind::Corrupt,
        "a commit naming one id twice",
    );
    let mut bad = sample_record(Some(&owner));
    bad.status = KeyStatus::Revoked; // without a revocation
    expect_kind(
        store.commit(&insert(bad)).await,
        StoreErrorKind::Corrupt,
        "an insert of a record that breaks its invariants",
    );
    assert!(
        ok(store.list(&KeyQuery::owner(&owner)).await, "list")
            .records
            .is_empty(),
        "store conformance: a refused commit wrote records"
    );
    let mut full = Changes::new();
    for _ in 0..Changes::MAX_ITEMS {
        full.puts.push(Put::insert(sample_record(Some(&owner))));
    }
    ok(
        store.commit(&full).await,
        "a commit of exactly Changes::MAX_ITEMS items",
    );
}

/// Every write on a failing store returns an error and leaves the store as
/// it was. `set_failing(true)` must make the store's calls fail (and
/// `false` work again). Use it with a store you can make fail on demand.
///
/// # Panics
/// When a failing write succeeds or changes anything.
pub async fn failed_writes_change_nothing<S, F>(store: &S, set_failing: F)
where
    S: KeyStoreWrite + UsageStore + ?Sized,
    F: Fn(bool),
{
    let owner = unique_owner();
    let a = sample_record(Some(&owner));
    put_new(store, &a).await;
    let snapshot = ok(store.list(&KeyQuery::owner(&owner)).await, "list");
    let fresh = sample_record(Some(&owner));
    let mut changed = a.clone();
    changed.status = KeyStatus::Disabled;
    let mut guarded = Changes::new().guard(owner.clone(), 0);
    guarded.puts.push(Put::insert(fresh.clone()));
    let mut del = Changes::new();
    del.deletes.push(Delete {
        id: a.id,
        expected: 0,
    });

    set_failing(true);
    let failures = [
        store.commit(&insert(fresh.clone())).await.is_err(),
        store.commit(&guarded).await.is_err(),
        store.commit(&update(changed, 0)).await.is_err(),
        store.commit(&del).await.is_err(),
        store
            .revoke_where(&KeyQuery::owner(&owner), &revocation("x"))
            .await
            .is_err(),
        store
            .record_usage(&UsageBatch::new(vec![UsageDelta::new(
                a.id,
                suite_now().utc_date(),
                1,
                suite_now(),
            )]))
            .await
            .is_err(),
    ];
    set_failing(false);
    let names = [
        "an insert",
        "a guarded insert",
        "a put",
        "a delete",
        "revoke_where",
        "record_usage",
    ];
    for (failed, name) in failures.iter().zip(names) {
        assert!(
            *failed,
            "store conformance: {name} on a failing store must return an error"
        );
    }
    assert_eq!(
        ok(store.list(&KeyQuery::owner(&owner)).await, "list"),
        snapshot,
        "store conformance: a failed write changed the store"
    );
    assert!(
        ok(store.get(fresh.id).await, "get").is_none(),
        "store conformance: a failed insert wrote a record"
    );
    assert!(
        ok(
            store
                .usage(
                    a.id,
                    suite_now().utc_date()
                        ..suite_now()
                            .utc_date()
                            .next_day()
                            .unwrap_or(suite_now().utc_date())
                )
                .await,
            "usage"
        )
        .is_empty(),
        "store conformance: a failed record_usage counted"
    );
}
