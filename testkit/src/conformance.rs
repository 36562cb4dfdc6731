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
//! let store = std::sync::Arc::new(MemoryStore::new());
//! conformance::run_all(&*store).await;
//! conformance::run_rules(store).await;
//! # });
//! ```
//!
//! The suite is split by trait, so a store runs the part it implements:
//!
//! | store implements | run |
//! |---|---|
//! | [`KeyStore`] only (read-only) | [`read_sample`], load the records, [`check_reads`] |
//! | [`KeyStoreWrite`] (and so [`KeyStoreQuery`]) | [`run_writes`]: the commit primitive and the listings |
//! | [`UsageStore`] | [`run_usage`] |
//! | all of them | [`run_all`], and [`run_rules`]: the [`KeyManager`](apikey::KeyManager)'s rules over the store |
//!
//! The suite writes records with random ids, owners named
//! `conformance-<random>` and creation times in a random second of the
//! 1990s (listings by prefix and window), and only revokes records
//! matching those, so it can run against a store that holds other data.
//! Still, run it against a test database.
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

use apikey::OsRng;
use apikey::Timestamp;
use rand_core::Rng;
use std::time::Duration;

use apikey::KeyDigest;
use apikey::KeyId;
use apikey::ScopeSet;
use apikey::{Changes, KeyStore, KeyStoreQuery, KeyStoreWrite, Put, UsageStore};
use apikey::{Environment, Prefix};
use apikey::{KeyRecord, KeyStatus, LegacyInfo, Revocation};
use apikey::{StoreError, StoreErrorKind};

mod commit;
mod listing;
mod rules;
mod usage;

pub use commit::{
    all_or_nothing, commit_checks_revisions, concurrent_guards_admit_one,
    failed_writes_change_nothing, insert_fetch_get, insert_never_overwrites,
    invalid_changes_are_refused, legacy_index, owner_guards,
};
pub use listing::{
    expiring_listing, listing_pages_and_cursors, owner_version_is_read_with_records,
    revoke_where_pages,
};
pub use rules::{
    delete_clears_links, derived_keys_limit_and_cascade, owner_limit_holds_under_concurrency,
    rotation_chain, run_rules,
};
pub use usage::{usage_batches, usage_replay_applies_once};

/// A fixed "now" used by the suite: 2030-01-01T00:00:00Z.
pub fn suite_now() -> Timestamp {
    Timestamp::from_unix_secs(1_893_456_000).unwrap_or(Timestamp::MIN)
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
        suite_now() - Duration::from_secs(86_400),
    )
    .owner(owner.map(str::to_owned))
    .name("conformance")
    .description(Some("written by apikey_testkit::conformance".into()))
    .scopes(ScopeSet::parse(["read", "tasks:*"]).unwrap_or_else(|e| panic!("scopes: {e}")))
    .metadata([("suite".to_owned(), "conformance".to_owned())].into())
    .build()
    .unwrap_or_else(|e| panic!("sample record: {e}"))
}

pub(crate) fn revocation(reason: &str) -> Revocation {
    Revocation {
        at: suite_now(),
        reason: reason.into(),
    }
}

#[track_caller]
pub(crate) fn ok<T>(r: Result<T, StoreError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!(
            "store conformance: {what} failed unexpectedly: {e} ({:?})",
            e.kind()
        ),
    }
}

#[track_caller]
pub(crate) fn expect_kind<T: std::fmt::Debug>(
    r: Result<T, StoreError>,
    kind: StoreErrorKind,
    what: &str,
) {
    match r {
        Err(e) if e.kind() == kind => {}
        Err(e) => panic!(
            "store conformance: {what} must fail with {kind:?}, got {:?}",
            e.kind()
        ),
        Ok(v) => panic!("store conformance: {what} must fail with {kind:?}, got Ok({v:?})"),
    }
}

pub(crate) async fn must_get<S: KeyStoreQuery + ?Sized>(
    store: &S,
    id: KeyId,
    what: &str,
) -> KeyRecord {
    match ok(store.get(id).await, what) {
        Some(r) => r,
        None => panic!("store conformance: {what}: record {id} is missing"),
    }
}

/// Polls futures concurrently on the current task and collects their
/// outputs in order (a tiny `join_all`, so the suite needs no runtime).
pub(crate) struct JoinAll<F: Future> {
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

pub(crate) fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> JoinAll<F> {
    let futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let outputs = futures.iter().map(|_| None).collect();
    JoinAll { futures, outputs }
}

/// Runs the write part and the usage part ([`run_writes`], [`run_usage`]);
/// not [`failed_writes_change_nothing`] nor [`run_rules`].
///
/// # Panics
/// When the store breaks the contract.
pub async fn run_all<S: KeyStoreWrite + UsageStore + ?Sized>(store: &S) {
    run_writes(store).await;
    run_usage(store).await;
}

/// The part for [`KeyStoreWrite`]: the commit primitive (revisions, owner
/// guards, all-or-nothing, id and legacy-index collisions, the item limit,
/// concurrent guarded commits) and the paged listings (order, cursors, the
/// owner version, the default bulk revocation).
///
/// # Panics
/// When the store breaks the contract.
pub async fn run_writes<S: KeyStoreWrite + ?Sized>(store: &S) {
    insert_fetch_get(store).await;
    insert_never_overwrites(store).await;
    commit_checks_revisions(store).await;
    owner_guards(store).await;
    all_or_nothing(store).await;
    concurrent_guards_admit_one(store, 16).await;
    legacy_index(store).await;
    invalid_changes_are_refused(store).await;
    listing_pages_and_cursors(store).await;
    expiring_listing(store).await;
    owner_version_is_read_with_records(store).await;
    revoke_where_pages(store).await;
}

/// The part for [`UsageStore`]: additive per-day counts, `last_used_at` as
/// the latest, unknown ids skipped, and a replayed batch (same
/// [`FlushId`](apikey::FlushId)) applied once. A store that does not
/// record flush ids (at-least-once delivery) runs [`usage_batches`] alone.
///
/// # Panics
/// When the store breaks the contract.
pub async fn run_usage<S: UsageStore + KeyStoreWrite + ?Sized>(store: &S) {
    usage_batches(store).await;
    usage_replay_applies_once(store).await;
}

/// A commit of one insert.
pub fn insert(record: KeyRecord) -> Changes {
    let mut c = Changes::new();
    c.puts.push(Put::insert(record));
    c
}

/// A commit of one put at revision `expected`.
pub fn update(record: KeyRecord, expected: u64) -> Changes {
    let mut c = Changes::new();
    c.puts.push(Put::update(record, expected));
    c
}

/// Inserts `record` or panics.
pub(crate) async fn put_new<S: KeyStoreWrite + ?Sized>(store: &S, record: &KeyRecord) {
    ok(
        store.commit(&insert(record.clone())).await,
        "commit (insert)",
    );
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
        .not_before(Some(suite_now() - Duration::from_secs(86_400)))
        .expires_at(Some(suite_now() + Duration::from_secs(30 * 86_400)))
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
