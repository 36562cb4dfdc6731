//! A public conformance suite for [`KeyStore`] implementations.
//!
//! Every function here is an `async fn` generic over the store, so it runs
//! on any runtime (tokio, async-std, a hand-written `block_on`). Each one
//! checks one part of the contract documented on the traits and **panics
//! with a message naming the broken rule** when the store violates it, like
//! an assertion in a test. Run them from your own tests:
//!
//! ```
//! use apikey::MemoryStore;
//! use apikey_testkit::conformance;
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! conformance::run_all(&store).await;
//! # });
//! ```
//!
//! The suite is split by trait, so a store runs the part it implements:
//!
//! | store implements | run |
//! |---|---|
//! | [`KeyStore`] only (read-only) | [`read_sample`], load the records, [`check_reads`] |
//! | [`KeyStoreWrite`] + [`KeyStoreQuery`] | [`run_writes`] |
//! | [`KeyStoreLifecycle`] | [`run_lifecycle`] |
//! | [`UsageStore`] | [`run_usage`] |
//! | all of them | [`run_all`] |
//!
//! The suite writes records with random ids, owners named
//! `conformance-<random>` and creation times in a random second of the
//! 1990s, and only revokes records matching those, so it can run against a
//! store that holds other data. Still, run it against a test database.
//!
//! For a store that can be made to fail on demand (a test double around
//! your client, or a proxy you can cut), [`failed_writes_change_nothing`]
//! checks that every failing write leaves the store as it was.
//!
//! # Panics
//! Every function panics when the store breaks the contract (including when
//! a store call fails unexpectedly).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rand_core::{OsRng, RngCore};
use time::{Duration, OffsetDateTime};

use apikey::KeyDigest;
use apikey::KeyId;
use apikey::ScopeSet;
use apikey::{Environment, Prefix};
use apikey::{
    FlushOutcome, KeyStore, KeyStoreLifecycle, KeyStoreQuery, KeyStoreWrite, LimitedInsert,
    LimitedUpdate, UsageBatch, UsageDelta, UsageStore,
};
use apikey::{KeyRecord, KeyStatus, LegacyInfo, Revocation, UsageCounters};
use apikey::{StoreError, StoreErrorKind};

/// A fixed "now" used by the suite: 2030-01-01T00:00:00Z.
pub fn suite_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A new owner name no other run uses.
pub fn unique_owner() -> String {
    format!("conformance-{:016x}", OsRng.next_u64())
}

/// A plausible record with a random id, a random digest, prefix `sk_test_`
/// and `created_at` = [`suite_now`] minus one day. For building your own
/// checks.
pub fn sample_record(owner: Option<&str>) -> KeyRecord {
    let mut digest = [0u8; 32];
    OsRng.fill_bytes(&mut digest);
    KeyRecord::builder(
        KeyId::from_u64(OsRng.next_u64()),
        Prefix::new("sk_test_").unwrap_or_else(|e| panic!("built-in prefix: {e}")),
        Environment::Test,
        1,
        KeyDigest::from_bytes(digest),
        suite_now() - Duration::days(1),
    )
    .owner(owner.map(str::to_owned))
    .name("conformance")
    .description(Some("written by apikey_testkit::conformance".into()))
    .scopes(ScopeSet::parse(["read", "tasks:*"]).unwrap_or_else(|e| panic!("scopes: {e}")))
    .metadata([("suite".to_owned(), "conformance".to_owned())].into())
    .build()
    .unwrap_or_else(|e| panic!("sample record: {e}"))
}

fn revocation(reason: &str) -> Revocation {
    Revocation {
        at: suite_now(),
        reason: reason.into(),
    }
}

#[track_caller]
fn ok<T>(r: Result<T, StoreError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!(
            "store conformance: {what} failed unexpectedly: {e} ({:?})",
            e.kind()
        ),
    }
}

#[track_caller]
fn expect_kind<T: std::fmt::Debug>(r: Result<T, StoreError>, kind: StoreErrorKind, what: &str) {
    match r {
        Err(e) if e.kind() == kind => {}
        Err(e) => panic!(
            "store conformance: {what} must fail with {kind:?}, got {:?}",
            e.kind()
        ),
        Ok(v) => panic!("store conformance: {what} must fail with {kind:?}, got Ok({v:?})"),
    }
}

async fn must_get<S: KeyStoreQuery + ?Sized>(store: &S, id: KeyId, what: &str) -> KeyRecord {
    match ok(store.get(id).await, what) {
        Some(r) => r,
        None => panic!("store conformance: {what}: record {id} is missing"),
    }
}

/// Polls futures concurrently on the current task and collects their
/// outputs in order (a tiny `join_all`, so the suite needs no runtime).
struct JoinAll<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
}

impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, out) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(this.outputs.iter_mut().filter_map(Option::take).collect())
        }
    }
}

fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> JoinAll<F> {
    let futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let outputs = futures.iter().map(|_| None).collect();
    JoinAll { futures, outputs }
}

/// Runs every check below except [`failed_writes_change_nothing`]: the
/// write, lifecycle and usage parts.
///
/// # Panics
/// When the store breaks the contract.
pub async fn run_all<S: KeyStoreLifecycle + UsageStore + ?Sized>(store: &S) {
    run_writes(store).await;
    run_lifecycle(store).await;
    run_usage(store).await;
}

/// The part for [`KeyStoreWrite`] + [`KeyStoreQuery`] (and the
/// [`KeyStore`] reads they feed): insert, fetch, get, list, update, delete,
/// expiring-soon, the legacy index.
///
/// # Panics
/// When the store breaks the contract.
pub async fn run_writes<S: KeyStoreWrite + KeyStoreQuery + ?Sized>(store: &S) {
    insert_fetch_get_list(store).await;
    list_expiring_window(store).await;
}

/// The part for [`KeyStoreLifecycle`]: the compound writes.
///
/// # Panics
/// When the store breaks the contract.
pub async fn run_lifecycle<S: KeyStoreLifecycle + UsageStore + ?Sized>(store: &S) {
    insert_never_overwrites(store).await;
    update_and_conditional_update(store).await;
    insert_limited_counts_active_keys(store).await;
    insert_limited_concurrent(store, 16, 3).await;
    update_limited_keeps_the_limit(store).await;
    update_limited_concurrent(store).await;
    rotate_is_atomic(store).await;
    rotate_ends_the_previous_grace(store).await;
    delete_clears_rotation_links(store).await;
    revoke_owner_revokes_all(store).await;
    revoke_matching_by_prefix_and_window(store).await;
    legacy_index(store).await;
    invalid_records_are_refused(store).await;
}

/// The part for [`UsageStore`]: batches applied in order, unknown ids
/// skipped, and a replayed batch (same [`FlushId`](apikey::FlushId))
/// applied once. A store that does not record flush ids (at-least-once
/// delivery) runs [`usage_batches`] alone.
///
/// # Panics
/// When the store breaks the contract.
pub async fn run_usage<S: UsageStore + KeyStoreWrite + KeyStoreQuery + ?Sized>(store: &S) {
    usage_batches(store).await;
    usage_replay_applies_once(store).await;
}

/// Records for the read-only part: load them into your read-only store by
/// whatever means it has (a replica of a database the suite cannot write
/// to, a file), then call [`check_reads`] with them. One has an owner and
/// scopes, one is revoked, one is disabled with an expiry and a not-before,
/// one is an imported legacy key.
pub fn read_sample() -> Vec<KeyRecord> {
    let owner = unique_owner();
    let plain = sample_record(Some(&owner));
    let revoked = sample_record(Some(&owner))
        .to_builder()
        .status(KeyStatus::Revoked)
        .revocation(Some(revocation("read sample")))
        .build_unvalidated();
    let disabled = sample_record(None)
        .to_builder()
        .status(KeyStatus::Disabled)
        .not_before(Some(suite_now() - Duration::days(1)))
        .expires_at(Some(suite_now() + Duration::days(30)))
        .build_unvalidated();
    let mut index = [0u8; 32];
    OsRng.fill_bytes(&mut index);
    let legacy = sample_record(Some(&owner))
        .to_builder()
        .legacy(Some(LegacyInfo::new(
            "oldco_",
            KeyDigest::from_bytes(index),
            1,
            false,
        )))
        .build_unvalidated();
    vec![plain, revoked, disabled, legacy]
}

/// The part for a read-only [`KeyStore`]: with `loaded` (from
/// [`read_sample`]) in the store, `fetch` returns each record's exact view,
/// an unknown id is `None`, and `find_legacy` finds the imported key by its
/// index (a store that holds no imported keys may answer `None` for it:
/// pass `legacy_supported = false`).
///
/// # Panics
/// When the store breaks the contract.
pub async fn check_reads<S: KeyStore + ?Sized>(
    store: &S,
    loaded: &[KeyRecord],
    legacy_supported: bool,
) {
    for r in loaded {
        let view = ok(store.fetch(r.id).await, "fetch")
            .unwrap_or_else(|| panic!("store conformance: fetch must find record {}", r.id));
        assert_eq!(
            *view,
            apikey::KeyView::from_record(r),
            "store conformance: fetch must return the record's exact view"
        );
        if let Some(l) = &r.legacy {
            let found = ok(store.find_legacy(&l.index).await, "find_legacy");
            if legacy_supported {
                assert_eq!(
                    found.as_ref(),
                    Some(r),
                    "store conformance: find_legacy must return the imported record"
                );
            }
        }
    }
    assert!(
        ok(
            store.fetch(KeyId::from_u64(OsRng.next_u64())).await,
            "fetch unknown"
        )
        .is_none(),
        "store conformance: fetch of an unknown id must be None"
    );
}

/// A batch sent twice with the same [`FlushId`](apikey::FlushId) (a retry
/// after a lost answer, or after a cancelled flush) is applied once; the
/// second answer is [`FlushOutcome::AlreadyApplied`].
///
/// # Panics
/// When the store breaks the contract.
pub async fn usage_replay_applies_once<S: UsageStore + KeyStoreWrite + KeyStoreQuery + ?Sized>(
    store: &S,
) {
    let a = sample_record(Some(&unique_owner()));
    ok(store.insert(a.clone()).await, "insert");
    let batch = UsageBatch::new(vec![UsageDelta::new(
        a.id,
        suite_now().date(),
        3,
        suite_now(),
    )]);
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
    let got = must_get(store, a.id, "get").await;
    assert_eq!(
        got.usage.today(suite_now().date()),
        3,
        "store conformance: a replayed batch must not be counted twice"
    );
}

/// Insert, then `fetch`, `get` and `list_by_owner` see the record.
///
/// # Panics
/// When the store breaks the contract.
pub async fn insert_fetch_get_list<S: KeyStoreWrite + KeyStoreQuery + ?Sized>(store: &S) {
    let owner = unique_owner();
    let a = sample_record(Some(&owner));
    let mut b = sample_record(Some(&owner));
    b.created_at = a.created_at + Duration::seconds(1);
    ok(store.insert(b.clone()).await, "insert");
    ok(store.insert(a.clone()).await, "insert");
    let view = ok(store.fetch(a.id).await, "fetch");
    let view =
        view.unwrap_or_else(|| panic!("store conformance: fetch must find an inserted record"));
    assert_eq!(
        view.id(),
        a.id,
        "store conformance: fetch returned another record"
    );
    assert_eq!(
        view.owner(),
        Some(owner.as_str()),
        "store conformance: fetch lost the owner"
    );
    assert_eq!(
        must_get(store, a.id, "get").await,
        a,
        "store conformance: get must return the record as inserted"
    );
    assert!(
        ok(
            store.fetch(KeyId::from_u64(OsRng.next_u64())).await,
            "fetch unknown"
        )
        .is_none(),
        "store conformance: fetch of an unknown id must be None"
    );
    let listed: Vec<KeyId> = ok(store.list_by_owner(&owner).await, "list_by_owner")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        listed,
        vec![a.id, b.id],
        "store conformance: list_by_owner must list the owner's records oldest first"
    );
}

/// An id collision is an error and never overwrites.
///
/// # Panics
/// When the store breaks the contract.
pub async fn insert_never_overwrites<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    let a = sample_record(Some(&unique_owner()));
    ok(store.insert(a.clone()).await, "insert");
    let mut b = sample_record(Some(&unique_owner()));
    b.id = a.id;
    expect_kind(
        store.insert(b.clone()).await,
        StoreErrorKind::IdCollision,
        "insert of a taken id",
    );
    expect_kind(
        store.insert_limited(b, 10, suite_now()).await,
        StoreErrorKind::IdCollision,
        "insert_limited of a taken id",
    );
    assert_eq!(
        must_get(store, a.id, "get").await,
        a,
        "store conformance: a colliding insert overwrote the record"
    );
}

/// `update` and `update_if`: revisions, conflicts, missing records, usage
/// fields kept, visibility to `fetch`.
///
/// # Panics
/// When the store breaks the contract.
pub async fn update_and_conditional_update<S: KeyStoreLifecycle + UsageStore + ?Sized>(store: &S) {
    let a = sample_record(Some(&unique_owner()));
    ok(store.insert(a.clone()).await, "insert");
    let day = suite_now().date();
    ok(
        store
            .record_usage(&UsageBatch::new(vec![UsageDelta::new(
                a.id,
                day,
                5,
                suite_now(),
            )]))
            .await,
        "record_usage",
    );
    let stored = must_get(store, a.id, "get").await;
    assert_eq!(
        stored.revision, a.revision,
        "store conformance: record_usage must not change the revision"
    );

    let mut next = stored.clone();
    next.status = KeyStatus::Disabled;
    next.usage = UsageCounters::default(); // stale usage must not win
    next.last_used_at = None;
    let written = ok(
        store.update_if(next.clone(), stored.revision).await,
        "update_if",
    );
    assert_eq!(
        written.revision,
        stored.revision + 1,
        "store conformance: update_if must set revision = expected + 1"
    );
    assert_eq!(
        written.usage.day_count, 5,
        "store conformance: update_if must keep the stored usage counters"
    );
    assert_eq!(
        written.last_used_at,
        Some(suite_now()),
        "store conformance: update_if must keep the stored last_used_at"
    );
    assert_eq!(
        must_get(store, a.id, "get").await,
        written,
        "store conformance: update_if must return what it stored"
    );
    let view = ok(store.fetch(a.id).await, "fetch")
        .unwrap_or_else(|| panic!("store conformance: record vanished"));
    assert_eq!(
        view.status(),
        KeyStatus::Disabled,
        "store conformance: a fetch after update_if returned must see the change"
    );

    // A plain `update` keeps the stored usage fields too.
    let mut plain = written.clone();
    plain.usage = UsageCounters::default();
    plain.last_used_at = None;
    ok(store.update(plain).await, "update");
    let after = must_get(store, a.id, "get").await;
    assert_eq!(
        (after.usage.day_count, after.last_used_at),
        (5, Some(suite_now())),
        "store conformance: update must keep the stored usage fields"
    );
    let written = after;

    // A stale revision is a conflict and changes nothing.
    let mut stale = written.clone();
    stale.name = "stale".into();
    expect_kind(
        store.update_if(stale, stored.revision).await,
        StoreErrorKind::Conflict,
        "update_if with a stale revision",
    );
    assert_eq!(
        must_get(store, a.id, "get").await,
        written,
        "store conformance: a conflicting update_if changed the record"
    );

    let missing = sample_record(None);
    expect_kind(
        store.update_if(missing.clone(), 0).await,
        StoreErrorKind::NotFound,
        "update_if of a missing record",
    );
    expect_kind(
        store.update(missing).await,
        StoreErrorKind::NotFound,
        "update of a missing record",
    );

    let mut plain = written.clone();
    plain.name = "renamed".into();
    ok(store.update(plain).await, "update");
    let after = must_get(store, a.id, "get").await;
    assert_eq!(
        after.name, "renamed",
        "store conformance: update must write the record"
    );
    assert_eq!(
        after.revision,
        written.revision + 1,
        "store conformance: update must bump the revision"
    );
}

/// `delete` removes the record and clears rotation links to it.
///
/// # Panics
/// When the store breaks the contract.
pub async fn delete_clears_rotation_links<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    let owner = unique_owner();
    let old = sample_record(Some(&owner));
    ok(store.insert(old.clone()).await, "insert");
    let mut pred = old.clone();
    let mut succ = sample_record(Some(&owner));
    pred.rotated_to = Some(succ.id);
    pred.expires_at = Some(suite_now() + Duration::hours(1));
    succ.rotated_from = Some(old.id);
    ok(
        store.rotate(pred, old.revision, succ.clone()).await,
        "rotate",
    );

    assert!(
        ok(store.delete(old.id).await, "delete"),
        "store conformance: delete of a present record must return true"
    );
    assert!(
        ok(store.get(old.id).await, "get").is_none(),
        "store conformance: a deleted record must be gone"
    );
    assert!(
        ok(store.fetch(old.id).await, "fetch").is_none(),
        "store conformance: a deleted record must not be fetched"
    );
    let s = must_get(store, succ.id, "get successor").await;
    assert_eq!(
        s.rotated_from, None,
        "store conformance: delete must clear the successor's rotated_from"
    );
    assert!(
        !ok(store.delete(old.id).await, "delete again"),
        "store conformance: delete of a missing record must return false"
    );
    let ids: Vec<KeyId> = ok(store.list_by_owner(&owner).await, "list")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        ids,
        vec![succ.id],
        "store conformance: a deleted record must leave the owner's list"
    );

    // Deleting a successor clears the predecessor's rotated_to.
    let a = sample_record(Some(&owner));
    ok(store.insert(a.clone()).await, "insert");
    let mut pa = a.clone();
    let mut sa = sample_record(Some(&owner));
    pa.rotated_to = Some(sa.id);
    sa.rotated_from = Some(a.id);
    ok(store.rotate(pa, a.revision, sa.clone()).await, "rotate");
    ok(store.delete(sa.id).await, "delete successor");
    assert_eq!(
        must_get(store, a.id, "get").await.rotated_to,
        None,
        "store conformance: delete must clear the predecessor's rotated_to"
    );
}

/// `insert_limited` counts exactly the records that
/// [count toward the limit](KeyRecord::counts_toward_limit).
///
/// # Panics
/// When the store breaks the contract.
pub async fn insert_limited_counts_active_keys<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    let owner = unique_owner();
    let now = suite_now();
    let mut active = sample_record(Some(&owner));
    active.expires_at = Some(now + Duration::seconds(1));
    let mut disabled = sample_record(Some(&owner));
    disabled.status = KeyStatus::Disabled;
    let mut revoked = sample_record(Some(&owner));
    revoked.status = KeyStatus::Revoked;
    revoked.revocation = Some(revocation("test"));
    let mut expired = sample_record(Some(&owner));
    expired.expires_at = Some(now); // expires exactly now: not active
    let mut grace = sample_record(Some(&owner));
    grace.rotated_to = Some(KeyId::from_u64(OsRng.next_u64()));
    grace.expires_at = Some(now + Duration::hours(1));
    for r in [&active, &disabled, &revoked, &expired, &grace] {
        ok(store.insert(r.clone()).await, "insert");
    }
    // Two count (active, disabled).
    let third = sample_record(Some(&owner));
    let r = ok(
        store.insert_limited(third.clone(), 2, now).await,
        "insert_limited",
    );
    assert_eq!(
        r,
        LimitedInsert::LimitReached { active: 2 },
        "store conformance: insert_limited must count active and disabled keys only (not revoked, expired, or in rotation grace)"
    );
    assert!(
        ok(store.get(third.id).await, "get").is_none(),
        "store conformance: insert_limited over the limit must write nothing"
    );
    let r = ok(
        store.insert_limited(third.clone(), 3, now).await,
        "insert_limited",
    );
    assert_eq!(
        r,
        LimitedInsert::Inserted,
        "store conformance: insert_limited below the limit must insert"
    );
    assert!(
        ok(store.get(third.id).await, "get").is_some(),
        "store conformance: insert_limited must write the record"
    );
    // A second later, `active` has expired and no longer counts.
    let fourth = sample_record(Some(&owner));
    let r = ok(
        store
            .insert_limited(fourth, 3, now + Duration::seconds(1))
            .await,
        "insert_limited",
    );
    assert_eq!(
        r,
        LimitedInsert::Inserted,
        "store conformance: a key expired at `now` must not count"
    );
    // No owner: no count.
    let r = ok(
        store.insert_limited(sample_record(None), 0, now).await,
        "insert_limited",
    );
    assert_eq!(
        r,
        LimitedInsert::Inserted,
        "store conformance: a record without owner is inserted without a limit"
    );
}

/// `n` concurrent `insert_limited` calls for one owner with limit `max`
/// insert exactly `max` records (polled concurrently on one task; a store
/// that yields interleaves them).
///
/// # Panics
/// When the store breaks the contract.
pub async fn insert_limited_concurrent<S: KeyStoreLifecycle + ?Sized>(
    store: &S,
    n: usize,
    max: u32,
) {
    let owner = unique_owner();
    let records: Vec<KeyRecord> = (0..n).map(|_| sample_record(Some(&owner))).collect();
    let results = join_all(
        records
            .into_iter()
            .map(|r| store.insert_limited(r, max, suite_now())),
    )
    .await;
    let inserted = results
        .into_iter()
        .map(|r| ok(r, "insert_limited"))
        .filter(|r| *r == LimitedInsert::Inserted)
        .count();
    let expected = n.min(max as usize);
    assert_eq!(
        inserted, expected,
        "store conformance: concurrent insert_limited must insert exactly min(n, max)"
    );
    let listed = ok(store.list_by_owner(&owner).await, "list").len();
    assert_eq!(
        listed, expected,
        "store conformance: concurrent insert_limited left the owner above the limit"
    );
}

/// `update_limited` refuses, and writes nothing, when a write would make a
/// record count toward its owner's limit again (reviving an expired key,
/// clearing a rotation link) while the owner is at the limit; it never
/// refuses a write that leaves the count as it was; otherwise it behaves as
/// `update_if`.
///
/// # Panics
/// When the store breaks the contract.
pub async fn update_limited_keeps_the_limit<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    let owner = unique_owner();
    let now = suite_now();
    let a = sample_record(Some(&owner));
    let b = sample_record(Some(&owner));
    let mut expired = sample_record(Some(&owner));
    expired.expires_at = Some(now);
    let mut grace = sample_record(Some(&owner));
    grace.rotated_to = Some(KeyId::from_u64(OsRng.next_u64()));
    grace.expires_at = Some(now + Duration::hours(1));
    for r in [&a, &b, &expired, &grace] {
        ok(store.insert(r.clone()).await, "insert");
    }
    // Reviving the expired key at the limit (a, b count): refused.
    let mut revived = expired.clone();
    revived.expires_at = None;
    let r = ok(
        store
            .update_limited(revived.clone(), expired.revision, 2, now)
            .await,
        "update_limited",
    );
    assert_eq!(
        r,
        LimitedUpdate::LimitReached { active: 2 },
        "store conformance: update_limited must refuse a revival at the limit, counting the owner's other active keys"
    );
    assert_eq!(
        must_get(store, expired.id, "get").await,
        expired,
        "store conformance: update_limited over the limit must write nothing"
    );
    // Extending the expiry revives it too.
    let mut extended = expired.clone();
    extended.expires_at = Some(now + Duration::days(365));
    let r = ok(
        store
            .update_limited(extended, expired.revision, 2, now)
            .await,
        "update_limited",
    );
    assert!(
        matches!(r, LimitedUpdate::LimitReached { .. }),
        "store conformance: update_limited must refuse extending an expired key at the limit"
    );
    // Clearing a rotation link makes a key in grace count again.
    let mut unlinked = grace.clone();
    unlinked.rotated_to = None;
    let r = ok(
        store.update_limited(unlinked, grace.revision, 2, now).await,
        "update_limited",
    );
    assert!(
        matches!(r, LimitedUpdate::LimitReached { .. }),
        "store conformance: update_limited must refuse clearing rotated_to at the limit"
    );
    // A write to a key that already counts is never refused, even above
    // the limit.
    let mut renamed = a.clone();
    renamed.name = "renamed".into();
    let r = ok(
        store
            .update_limited(renamed.clone(), a.revision, 1, now)
            .await,
        "update_limited",
    );
    let LimitedUpdate::Updated(stored) = r else {
        panic!("store conformance: update_limited refused a write that does not revive the key")
    };
    assert_eq!(
        (stored.name.as_str(), stored.revision),
        ("renamed", a.revision + 1),
        "store conformance: update_limited must write as update_if does"
    );
    // Stale revision and missing record: as update_if.
    expect_kind(
        store
            .update_limited(renamed.clone(), a.revision, 5, now)
            .await,
        StoreErrorKind::Conflict,
        "update_limited with a stale revision",
    );
    expect_kind(
        store
            .update_limited(sample_record(Some(&owner)), 0, 5, now)
            .await,
        StoreErrorKind::NotFound,
        "update_limited of a missing record",
    );
    // Below the limit the revival is written.
    let r = ok(
        store
            .update_limited(revived.clone(), expired.revision, 3, now)
            .await,
        "update_limited",
    );
    let LimitedUpdate::Updated(stored) = r else {
        panic!("store conformance: update_limited must write a revival below the limit")
    };
    assert_eq!(
        (stored.expires_at, stored.revision),
        (None, expired.revision + 1),
        "store conformance: update_limited must store the revived record"
    );
    assert_eq!(
        must_get(store, expired.id, "get").await,
        stored,
        "store conformance: update_limited must return what it stored"
    );
}

/// Concurrent revivals for one owner never leave it above the limit.
///
/// # Panics
/// When the store breaks the contract.
pub async fn update_limited_concurrent<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    let owner = unique_owner();
    let now = suite_now();
    ok(store.insert(sample_record(Some(&owner))).await, "insert");
    let mut expired = Vec::new();
    for _ in 0..8 {
        let mut r = sample_record(Some(&owner));
        r.expires_at = Some(now);
        ok(store.insert(r.clone()).await, "insert");
        expired.push(r);
    }
    let results = join_all(expired.into_iter().map(|r| {
        let expected = r.revision;
        let mut revived = r;
        revived.expires_at = None;
        store.update_limited(revived, expected, 3, now)
    }))
    .await;
    let updated = results
        .into_iter()
        .map(|r| ok(r, "update_limited"))
        .filter(|r| matches!(r, LimitedUpdate::Updated(_)))
        .count();
    assert_eq!(
        updated, 2,
        "store conformance: concurrent update_limited must revive exactly up to the limit"
    );
    let counting = ok(store.list_by_owner(&owner).await, "list")
        .iter()
        .filter(|r| r.counts_toward_limit(now))
        .count();
    assert_eq!(
        counting, 3,
        "store conformance: concurrent update_limited left the owner above the limit"
    );
}

/// `rotate` writes both records or neither.
///
/// # Panics
/// When the store breaks the contract.
pub async fn rotate_is_atomic<S: KeyStoreLifecycle + UsageStore + ?Sized>(store: &S) {
    let owner = unique_owner();
    let old = sample_record(Some(&owner));
    ok(store.insert(old.clone()).await, "insert");
    ok(
        store
            .record_usage(&UsageBatch::new(vec![UsageDelta::new(
                old.id,
                suite_now().date(),
                2,
                suite_now(),
            )]))
            .await,
        "record_usage",
    );
    let mut pred = old.clone();
    let mut succ = sample_record(Some(&owner));
    pred.rotated_to = Some(succ.id);
    pred.expires_at = Some(suite_now() + Duration::hours(1));
    succ.rotated_from = Some(old.id);

    // Stale revision: conflict, nothing written.
    expect_kind(
        store
            .rotate(pred.clone(), old.revision + 1, succ.clone())
            .await,
        StoreErrorKind::Conflict,
        "rotate with a stale revision",
    );
    assert!(
        ok(store.get(succ.id).await, "get").is_none(),
        "store conformance: a failed rotate inserted the successor"
    );
    assert_eq!(
        must_get(store, old.id, "get").await.rotated_to,
        None,
        "store conformance: a failed rotate changed the predecessor"
    );

    // Taken successor id: collision, nothing written.
    let other = sample_record(None);
    ok(store.insert(other.clone()).await, "insert");
    let mut clash = succ.clone();
    clash.id = other.id;
    expect_kind(
        store.rotate(pred.clone(), old.revision, clash).await,
        StoreErrorKind::IdCollision,
        "rotate onto a taken id",
    );
    assert_eq!(
        must_get(store, old.id, "get").await.rotated_to,
        None,
        "store conformance: a failed rotate changed the predecessor"
    );
    assert_eq!(
        must_get(store, other.id, "get").await,
        other,
        "store conformance: a failed rotate overwrote a record"
    );

    let (p, s) = ok(
        store.rotate(pred.clone(), old.revision, succ.clone()).await,
        "rotate",
    );
    assert_eq!(
        p.rotated_to,
        Some(succ.id),
        "store conformance: rotate must store the predecessor's link"
    );
    assert_eq!(
        p.revision,
        old.revision + 1,
        "store conformance: rotate must bump the predecessor's revision"
    );
    assert_eq!(
        p.usage.day_count, 2,
        "store conformance: rotate must keep the predecessor's usage"
    );
    assert_eq!(
        s, succ,
        "store conformance: rotate must insert the successor as given"
    );
    assert_eq!(
        must_get(store, old.id, "get").await,
        p,
        "store conformance: rotate must return what it stored"
    );
    assert_eq!(
        must_get(store, succ.id, "get").await,
        succ,
        "store conformance: rotate must insert the successor"
    );
    let view = ok(store.fetch(old.id).await, "fetch")
        .unwrap_or_else(|| panic!("store conformance: record vanished"));
    assert_eq!(
        view.expires_at(),
        pred.expires_at,
        "store conformance: a fetch after rotate must see the grace expiry"
    );
}

/// Rotating a key whose predecessor is still in its grace period ends that
/// grace at the rotation time (the successor's `created_at`), in the same
/// step: a chain never has more than two working keys.
///
/// # Panics
/// When the store breaks the contract.
pub async fn rotate_ends_the_previous_grace<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    let owner = unique_owner();
    let t0 = suite_now();
    let first = sample_record(Some(&owner));
    ok(store.insert(first.clone()).await, "insert");
    // first -> second, with a long grace.
    let mut second = sample_record(Some(&owner));
    second.created_at = t0;
    second.rotated_from = Some(first.id);
    let mut pred = first.clone();
    pred.rotated_to = Some(second.id);
    pred.expires_at = Some(t0 + Duration::days(7));
    let (first_stored, _) = ok(
        store.rotate(pred, first.revision, second.clone()).await,
        "rotate",
    );
    // second -> third an hour later: first's grace ends then.
    let at = t0 + Duration::hours(1);
    let mut third = sample_record(Some(&owner));
    third.created_at = at;
    third.rotated_from = Some(second.id);
    let mut pred = second.clone();
    pred.rotated_to = Some(third.id);
    pred.expires_at = Some(at + Duration::days(7));
    ok(
        store.rotate(pred, second.revision, third.clone()).await,
        "rotate",
    );
    let first_now = must_get(store, first.id, "get").await;
    assert_eq!(
        first_now.expires_at,
        Some(at),
        "store conformance: rotate must end the grace of the predecessor's predecessor at the successor's created_at"
    );
    assert_eq!(
        first_now.revision,
        first_stored.revision + 1,
        "store conformance: ending a grace period is a write (revision + 1)"
    );
    assert_eq!(
        ok(store.fetch(first.id).await, "fetch").and_then(|v| v.expires_at()),
        Some(at),
        "store conformance: a fetch after rotate must see the ended grace"
    );
    assert_eq!(
        must_get(store, second.id, "get").await.expires_at,
        Some(at + Duration::days(7)),
        "store conformance: rotate must keep the predecessor's own grace"
    );
    // A failed rotation ends nothing.
    let mut fourth = sample_record(Some(&owner));
    fourth.created_at = at + Duration::hours(1);
    let mut pred = third.clone();
    pred.rotated_to = Some(fourth.id);
    let before = must_get(store, second.id, "get").await;
    expect_kind(
        store.rotate(pred, third.revision + 7, fourth).await,
        StoreErrorKind::Conflict,
        "rotate with a stale revision",
    );
    assert_eq!(
        must_get(store, second.id, "get").await,
        before,
        "store conformance: a failed rotate ended a grace period"
    );
}

/// `revoke_owner` revokes every unrevoked record of the owner, only those.
///
/// # Panics
/// When the store breaks the contract.
pub async fn revoke_owner_revokes_all<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    let owner = unique_owner();
    let bystander = sample_record(Some(&unique_owner()));
    ok(store.insert(bystander.clone()).await, "insert");
    let mut earlier = sample_record(Some(&owner));
    earlier.status = KeyStatus::Revoked;
    earlier.revocation = Some(revocation("earlier"));
    ok(store.insert(earlier.clone()).await, "insert");
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut r = sample_record(Some(&owner));
        r.created_at += Duration::seconds(i);
        if i == 1 {
            r.status = KeyStatus::Disabled;
        }
        ids.push(r.id);
        ok(store.insert(r).await, "insert");
    }
    let revoked = ok(
        store
            .revoke_owner(&owner, revocation("owner removed"))
            .await,
        "revoke_owner",
    );
    assert_eq!(
        revoked, ids,
        "store conformance: revoke_owner must return the ids it revoked, oldest first"
    );
    for id in &ids {
        let r = must_get(store, *id, "get").await;
        assert_eq!(
            r.status,
            KeyStatus::Revoked,
            "store conformance: revoke_owner missed a record"
        );
        assert_eq!(
            r.revocation.as_ref().map(|v| v.reason.as_str()),
            Some("owner removed")
        );
        assert_eq!(
            r.revision, 1,
            "store conformance: revoke_owner must bump the revision"
        );
        let v = ok(store.fetch(*id).await, "fetch")
            .unwrap_or_else(|| panic!("store conformance: record vanished"));
        assert_eq!(
            v.status(),
            KeyStatus::Revoked,
            "store conformance: a fetch after revoke_owner must see the revocation"
        );
    }
    assert_eq!(
        must_get(store, earlier.id, "get").await,
        earlier,
        "store conformance: revoke_owner must keep an earlier revocation"
    );
    assert_eq!(
        must_get(store, bystander.id, "get").await,
        bystander,
        "store conformance: revoke_owner touched another owner's key"
    );
    assert!(
        ok(
            store.revoke_owner(&unique_owner(), revocation("x")).await,
            "revoke_owner"
        )
        .is_empty()
    );
}

/// `revoke_matching` revokes by prefix and creation window (start
/// inclusive, end exclusive), whoever the owner.
///
/// # Panics
/// When the store breaks the contract.
pub async fn revoke_matching_by_prefix_and_window<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    // A random second in the 1990s that no other data uses.
    let t0 =
        OffsetDateTime::from_unix_timestamp(631_152_000 + (OsRng.next_u64() % 315_360_000) as i64)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let window = t0..t0 + Duration::seconds(10);
    let mk = |offset: i64, prefix: &str, owner: Option<&str>| {
        let mut r = sample_record(owner);
        r.created_at = t0 + Duration::seconds(offset);
        r.prefix = Prefix::new(prefix).unwrap_or_else(|e| panic!("prefix: {e}"));
        r
    };
    let owner = unique_owner();
    let inside = [mk(0, "sk_test_", Some(&owner)), mk(9, "sk_test_", None)];
    let outside = [
        mk(-1, "sk_test_", None),
        mk(10, "sk_test_", None),
        mk(5, "sk_live_", None),
    ];
    for r in inside.iter().chain(&outside) {
        ok(store.insert(r.clone()).await, "insert");
    }
    let prefix = Prefix::new("sk_test_").unwrap_or_else(|e| panic!("prefix: {e}"));
    let revoked = ok(
        store
            .revoke_matching(&prefix, window, revocation("leak"))
            .await,
        "revoke_matching",
    );
    let expected: Vec<KeyId> = inside.iter().map(|r| r.id).collect();
    assert_eq!(
        revoked, expected,
        "store conformance: revoke_matching must revoke exactly the prefix's keys created in [start, end)"
    );
    for r in &inside {
        assert_eq!(
            must_get(store, r.id, "get").await.status,
            KeyStatus::Revoked
        );
    }
    for r in &outside {
        assert_eq!(
            must_get(store, r.id, "get").await,
            *r,
            "store conformance: revoke_matching touched a key outside the window or prefix"
        );
    }
}

/// `list_expiring` returns unrevoked records expiring in `[start, end)`,
/// soonest first.
///
/// # Panics
/// When the store breaks the contract.
pub async fn list_expiring_window<S: KeyStoreWrite + KeyStoreQuery + ?Sized>(store: &S) {
    let owner = unique_owner();
    let now = suite_now();
    let mk = |exp: Option<Duration>| {
        let mut r = sample_record(Some(&owner));
        r.expires_at = exp.map(|d| now + d);
        r
    };
    let late = mk(Some(Duration::days(29)));
    let soon = mk(Some(Duration::days(1)));
    let at_start = mk(Some(Duration::ZERO));
    let at_end = mk(Some(Duration::days(30)));
    let never = mk(None);
    let past = mk(Some(-Duration::days(1)));
    let mut revoked = mk(Some(Duration::days(2)));
    revoked.status = KeyStatus::Revoked;
    revoked.revocation = Some(revocation("x"));
    for r in [&late, &soon, &at_start, &at_end, &never, &past, &revoked] {
        ok(store.insert(r.clone()).await, "insert");
    }
    let window = now..now + Duration::days(30);
    let got: Vec<KeyId> = ok(
        store.list_expiring(Some(&owner), window.clone()).await,
        "list_expiring",
    )
    .iter()
    .map(|r| r.id)
    .collect();
    assert_eq!(
        got,
        vec![at_start.id, soon.id, late.id],
        "store conformance: list_expiring must return unrevoked keys expiring in [start, end), soonest first"
    );
    let all = ok(
        store.list_expiring(None, window).await,
        "list_expiring(None)",
    );
    for id in [at_start.id, soon.id, late.id] {
        assert!(
            all.iter().any(|r| r.id == id),
            "store conformance: list_expiring(None) must include every owner's keys"
        );
    }
    assert!(!all.iter().any(|r| r.id == at_end.id || r.id == revoked.id));
}

/// The legacy index: found by `find_legacy`, unique, moved by updates,
/// dropped by delete.
///
/// # Panics
/// When the store breaks the contract.
pub async fn legacy_index<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    let rand_digest = || {
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        KeyDigest::from_bytes(b)
    };
    let (i1, i2) = (rand_digest(), rand_digest());
    let mut a = sample_record(Some(&unique_owner()));
    a.legacy = Some(LegacyInfo::new("old_", i1, 1, false));
    ok(store.insert(a.clone()).await, "insert");
    assert_eq!(
        ok(store.find_legacy(&i1).await, "find_legacy"),
        Some(a.clone()),
        "store conformance: find_legacy must find by index"
    );
    assert_eq!(
        ok(store.find_legacy(&i2).await, "find_legacy"),
        None,
        "store conformance: find_legacy of an unknown index must be None"
    );

    let mut b = sample_record(None);
    b.legacy = Some(LegacyInfo::new("old_", i1, 1, false));
    expect_kind(
        store.insert(b.clone()).await,
        StoreErrorKind::IdCollision,
        "insert with a taken legacy index",
    );
    assert!(
        ok(store.get(b.id).await, "get").is_none(),
        "store conformance: a failed insert wrote the record"
    );

    let mut moved = a.clone();
    moved.legacy = Some(LegacyInfo::new("old_", i2, 1, true));
    let moved = ok(store.update_if(moved, a.revision).await, "update_if");
    assert_eq!(
        ok(store.find_legacy(&i2).await, "find_legacy"),
        Some(moved),
        "store conformance: update_if must move the legacy index"
    );
    assert_eq!(
        ok(store.find_legacy(&i1).await, "find_legacy"),
        None,
        "store conformance: update_if must drop the old legacy index"
    );
    // Moving onto an index another record holds is a collision, for every
    // conditional write, and changes nothing.
    let mut other = sample_record(Some(&unique_owner()));
    let mut i3 = [0u8; 32];
    OsRng.fill_bytes(&mut i3);
    let i3 = KeyDigest::from_bytes(i3);
    other.legacy = Some(LegacyInfo::new("old_", i3, 1, true));
    ok(store.insert(other.clone()).await, "insert");
    let mut onto = must_get(store, a.id, "get").await;
    let before = onto.clone();
    onto.legacy = Some(LegacyInfo::new("old_", i3, 1, true));
    expect_kind(
        store.update_if(onto.clone(), before.revision).await,
        StoreErrorKind::IdCollision,
        "update_if onto a taken legacy index",
    );
    expect_kind(
        store.update(onto.clone()).await,
        StoreErrorKind::IdCollision,
        "update onto a taken legacy index",
    );
    expect_kind(
        store
            .update_limited(onto, before.revision, 100, suite_now())
            .await,
        StoreErrorKind::IdCollision,
        "update_limited onto a taken legacy index",
    );
    assert_eq!(
        must_get(store, a.id, "get").await,
        before,
        "store conformance: a write refused for a legacy collision changed the record"
    );
    assert_eq!(
        ok(store.find_legacy(&i3).await, "find_legacy"),
        Some(other),
        "store conformance: a legacy collision moved the other record's index"
    );
    ok(store.delete(a.id).await, "delete");
    assert_eq!(
        ok(store.find_legacy(&i2).await, "find_legacy"),
        None,
        "store conformance: delete must drop the legacy index"
    );
}

/// Records that break their invariants (a revoked status without a
/// revocation, an expiry before the not-before, a secret version out of
/// range) are refused as [`StoreErrorKind::Corrupt`] by every write, and
/// nothing is written.
///
/// # Panics
/// When the store breaks the contract.
pub async fn invalid_records_are_refused<S: KeyStoreLifecycle + ?Sized>(store: &S) {
    let broken = [
        sample_record(None)
            .to_builder()
            .status(KeyStatus::Revoked)
            .build_unvalidated(),
        sample_record(None)
            .to_builder()
            .not_before(Some(suite_now()))
            .expires_at(Some(suite_now() - Duration::days(1)))
            .build_unvalidated(),
        sample_record(None)
            .to_builder()
            .secret_version(0)
            .build_unvalidated(),
    ];
    for (i, bad) in broken.into_iter().enumerate() {
        expect_kind(
            store.insert(bad.clone()).await,
            StoreErrorKind::Corrupt,
            &format!("insert of invalid record #{i}"),
        );
        expect_kind(
            store.insert_limited(bad.clone(), 10, suite_now()).await,
            StoreErrorKind::Corrupt,
            &format!("insert_limited of invalid record #{i}"),
        );
        assert!(
            ok(store.get(bad.id).await, "get").is_none(),
            "store conformance: an invalid record was written"
        );
        // Over a valid stored record with the same id.
        let good = bad
            .to_builder()
            .status(KeyStatus::Active)
            .revocation(None)
            .not_before(None)
            .expires_at(None)
            .secret_version(1)
            .build_unvalidated();
        ok(store.insert(good.clone()).await, "insert");
        expect_kind(
            store.update_if(bad.clone(), good.revision).await,
            StoreErrorKind::Corrupt,
            &format!("update_if to invalid record #{i}"),
        );
        expect_kind(
            store.update(bad.clone()).await,
            StoreErrorKind::Corrupt,
            &format!("update to invalid record #{i}"),
        );
        assert_eq!(
            must_get(store, good.id, "get").await,
            good,
            "store conformance: a refused invalid write changed the record"
        );
    }
}

/// `record_usage` applies batches exactly and skips unknown ids.
///
/// # Panics
/// When the store breaks the contract.
pub async fn usage_batches<S: UsageStore + KeyStoreWrite + KeyStoreQuery + ?Sized>(store: &S) {
    let a = sample_record(Some(&unique_owner()));
    ok(store.insert(a.clone()).await, "insert");
    let now = suite_now();
    let d1 = now.date();
    let d2 = d1.next_day().unwrap_or(d1);
    let batch = [
        UsageDelta::new(a.id, d1, 3, now),
        UsageDelta::new(KeyId::from_u64(OsRng.next_u64()), d1, 9, now),
        UsageDelta::new(a.id, d2, 4, now + Duration::days(1)),
    ];
    ok(
        store.record_usage(&UsageBatch::new(batch.to_vec())).await,
        "record_usage",
    );
    ok(
        store
            .record_usage(&UsageBatch::new(vec![UsageDelta::new(
                a.id,
                d2,
                1,
                now + Duration::hours(25),
            )]))
            .await,
        "record_usage",
    );
    // A late batch for an earlier time must not move last_used_at back.
    ok(
        store
            .record_usage(&UsageBatch::new(vec![UsageDelta::new(a.id, d1, 2, now)]))
            .await,
        "record_usage",
    );
    let r = must_get(store, a.id, "get").await;
    let mut expected = UsageCounters::default();
    expected.apply(d1, 3);
    expected.apply(d2, 4);
    expected.apply(d2, 1);
    expected.apply(d1, 2);
    assert_eq!(
        r.usage, expected,
        "store conformance: record_usage must apply UsageCounters::apply in batch order"
    );
    assert_eq!(
        r.last_used_at,
        Some(now + Duration::hours(25)),
        "store conformance: last_used_at must be the latest use"
    );
    assert_eq!(
        r.revision, a.revision,
        "store conformance: record_usage must not bump the revision"
    );
}

/// With the store failing (`set_failing(true)`), every write returns an
/// error and, once it recovers (`set_failing(false)`), the store is as it
/// was. Use it with a store you can make fail on demand.
///
/// # Panics
/// When a failing write succeeds or changes anything.
pub async fn failed_writes_change_nothing<S, F>(store: &S, set_failing: F)
where
    S: KeyStoreLifecycle + UsageStore + ?Sized,
    F: Fn(bool),
{
    let owner = unique_owner();
    let a = sample_record(Some(&owner));
    ok(store.insert(a.clone()).await, "insert");
    let snapshot = ok(store.list_by_owner(&owner).await, "list");
    let fresh = sample_record(Some(&owner));
    let mut changed = a.clone();
    changed.status = KeyStatus::Disabled;
    let mut succ = sample_record(Some(&owner));
    succ.rotated_from = Some(a.id);
    let mut pred = a.clone();
    pred.rotated_to = Some(succ.id);
    let prefix = a.prefix.clone();
    let window = a.created_at..a.created_at + Duration::seconds(1);

    set_failing(true);
    let failures = [
        store.insert(fresh.clone()).await.is_err(),
        store
            .insert_limited(fresh.clone(), 10, suite_now())
            .await
            .is_err(),
        store.update(changed.clone()).await.is_err(),
        store.update_if(changed.clone(), a.revision).await.is_err(),
        store
            .update_limited(changed.clone(), a.revision, 10, suite_now())
            .await
            .is_err(),
        store.rotate(pred, a.revision, succ.clone()).await.is_err(),
        store.revoke_owner(&owner, revocation("x")).await.is_err(),
        store
            .revoke_matching(&prefix, window, revocation("x"))
            .await
            .is_err(),
        store
            .record_usage(&UsageBatch::new(vec![UsageDelta::new(
                a.id,
                suite_now().date(),
                1,
                suite_now(),
            )]))
            .await
            .is_err(),
        store.delete(a.id).await.is_err(),
    ];
    set_failing(false);
    let names = [
        "insert",
        "insert_limited",
        "update",
        "update_if",
        "update_limited",
        "rotate",
        "revoke_owner",
        "revoke_matching",
        "record_usage",
        "delete",
    ];
    for (failed, name) in failures.iter().zip(names) {
        assert!(
            *failed,
            "store conformance: {name} on a failing store must return an error"
        );
    }
    assert_eq!(
        ok(store.list_by_owner(&owner).await, "list"),
        snapshot,
        "store conformance: a failed write changed the store"
    );
    assert!(
        ok(store.get(fresh.id).await, "get").is_none(),
        "store conformance: a failed insert wrote a record"
    );
    assert!(
        ok(store.get(succ.id).await, "get").is_none(),
        "store conformance: a failed rotate wrote a record"
    );
}
