//! Where records live: the [`KeyStore`] traits and the default
//! [`MemoryStore`].
//!
//! The traits are shaped for async networked databases: every method returns
//! `impl Future + Send`, so a Postgres or Redis store implements them with
//! plain `async fn` and never blocks its runtime. Reads ([`KeyStore`]) are
//! separate from writes ([`KeyStoreWrite`]), so a read-only replica store is
//! small. The store only stores: every rule (digests, status, expiry, scopes)
//! is decided by the [`Verifier`](crate::Verifier).
//!
//! A store failure is reported as a [`StoreError`] and surfaces as
//! [`Error::StoreUnavailable`](crate::Error::StoreUnavailable) (HTTP 503):
//! never as "valid", never as "invalid key".
//!
//! Three more traits serve the management side ([`KeyManager`](crate::KeyManager)):
//!
//! * [`KeyStoreQuery`]: reads for management and imported keys
//!   (expiring-soon, legacy index).
//! * [`KeyStoreLifecycle`]: the compound writes that a real database must do
//!   atomically (insert below an owner limit, conditional update, rotate,
//!   revoke all of an owner, revoke by prefix and creation window, usage
//!   flush). Each method states its semantics; each fits one SQL transaction
//!   or one Redis script.
//!
//! Implementors run the public conformance suite of the `apikey-testkit`
//! crate against their store.
//!
//! # Revisions and usage fields
//!
//! [`KeyRecord::revision`] counts changes. [`KeyStoreWrite::insert`] keeps the
//! given revision; every other write that changes a record sets it to the
//! stored revision plus one, except [`KeyStoreLifecycle::record_usage`],
//! which changes only the usage fields ([`KeyRecord::usage`] and
//! [`KeyRecord::last_used_at`]). Conditional writes compare revisions and
//! keep the stored usage fields, so a usage flush never conflicts with, and
//! is never undone by, a management write.
//!
//! # Implementing the compound writes with SQL
//!
//! One transaction each (PostgreSQL shown; a Redis store does the same in
//! one Lua script per method, with an owner set and a legacy-index hash):
//!
//! | method | sketch |
//! |---|---|
//! | `insert_limited` | `SELECT 1 FROM owners WHERE owner = $1 FOR UPDATE` (or an advisory lock on the owner); `SELECT count(*) FROM keys WHERE owner = $1 AND status <> 'revoked' AND (expires_at IS NULL OR expires_at > $now) AND rotated_to IS NULL`; `INSERT` if below the limit |
//! | `update_if` | `UPDATE keys SET ..., revision = revision + 1 WHERE id = $1 AND revision = $expected` (0 rows: `NotFound` or `Conflict` after a `SELECT`) |
//! | `rotate` | the `update_if` statement, then `INSERT` the successor; roll back if either fails |
//! | `revoke_owner` | `UPDATE keys SET status = 'revoked', revocation = $r, revision = revision + 1 WHERE owner = $1 AND status <> 'revoked' RETURNING id, created_at` |
//! | `revoke_matching` | the same with `WHERE prefix = $1 AND created_at >= $2 AND created_at < $3` |
//! | `record_usage` | one `UPDATE ... SET day = ..., day_count = CASE ... END, month_count = CASE ... END, last_used_at = greatest(last_used_at, $t)` per delta, in one transaction |
//! | `delete` | `DELETE ... RETURNING rotated_from, rotated_to`, then clear the two links |
//!
//! A unique index on `legacy_index` gives the [`KeyStoreQuery::find_legacy`]
//! lookup and the collision rule.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::digest::KeyDigest;
use crate::error::StoreError;
use crate::key::KeyId;
use crate::prefix::Prefix;

mod builder;
mod memory;
pub(crate) mod record;

pub use builder::KeyRecordBuilder;
pub use memory::MemoryStore;
pub use record::{
    KeyRecord, KeyStatus, KeyView, LegacyInfo, NewKey, Revocation, SCHEMA_VERSION, UsageCounters,
};

/// Read access to stored keys.
pub trait KeyStore: Send + Sync {
    /// The hot-path read: the compact view of key `id`, or `None`.
    fn fetch(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send;

    /// The full record of key `id`, or `None`.
    fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Every record owned by `owner`, in creation order (oldest first, ties
    /// by id).
    fn list_by_owner(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;
}

/// Write access to stored keys. Every method is all-or-nothing: when it
/// returns an error, the store is as it was.
pub trait KeyStoreWrite: KeyStore {
    /// Adds a new record. A record with the same id already present is a
    /// [`StoreErrorKind::IdCollision`](crate::StoreErrorKind::IdCollision)
    /// and is never overwritten.
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the record with `record.id` unconditionally: every field
    /// except the usage fields (`usage`, `last_used_at`, kept as stored, since
    /// [`KeyStoreLifecycle::record_usage`] owns them) and `revision` (set to
    /// the stored one plus one). A missing record is
    /// [`StoreErrorKind::NotFound`](crate::StoreErrorKind::NotFound). Once
    /// this returns, every `fetch` that starts sees the new record.
    /// Management code should prefer [`KeyStoreLifecycle::update_if`].
    fn update(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes record `id`; returns whether it existed. In the same atomic
    /// step, rotation links to it are cleared: the `rotated_from` of its
    /// successor and the `rotated_to` of its predecessor (revision + 1 on
    /// each record changed).
    fn delete(&self, id: KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Outcome of [`KeyStoreLifecycle::insert_limited`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitedInsert {
    /// The record was inserted.
    Inserted,
    /// The owner already had `active` records that count toward the limit;
    /// nothing was written.
    LimitReached {
        /// Records counted.
        active: u32,
    },
}

/// Uses of one key on one UTC day, for [`KeyStoreLifecycle::record_usage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageDelta {
    /// The key.
    pub id: KeyId,
    /// The UTC day of the uses.
    pub day: time::Date,
    /// How many successful verifications.
    pub count: u64,
    /// The latest of them.
    pub last_used_at: OffsetDateTime,
}

impl UsageDelta {
    /// A delta of `count` uses of `id` on `day`, the latest at `last_used_at`.
    pub fn new(id: KeyId, day: time::Date, count: u64, last_used_at: OffsetDateTime) -> Self {
        Self {
            id,
            day,
            count,
            last_used_at,
        }
    }
}

/// Management reads: expiring-soon and the legacy-key index.
pub trait KeyStoreQuery: KeyStore {
    /// Records that are not revoked and whose `expires_at` lies in
    /// `window` (`start` inclusive, `end` exclusive), of `owner` or of
    /// everyone when `owner` is `None`; ordered by `expires_at`, then id.
    fn list_expiring(
        &self,
        owner: Option<&str>,
        window: Range<OffsetDateTime>,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;

    /// The record whose [`LegacyInfo::index`](crate::LegacyInfo::index)
    /// equals `index`, or `None`. Stores keep this index unique (see
    /// [`KeyStoreLifecycle`]) and should look it up with an index, not a
    /// scan: it is on the verify path of imported keys. Malformed strings
    /// that start with a legacy prefix reach this method.
    fn find_legacy(
        &self,
        index: &KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;
}

/// Compound writes that must be atomic. Each is all-or-nothing: on error
/// the store is unchanged; once it returns, every read that starts sees
/// the whole change.
///
/// Every write (here and in [`KeyStoreWrite`]) that would give a record a
/// [`legacy`](KeyRecord::legacy) index already held by another record fails
/// with [`StoreErrorKind::IdCollision`](crate::StoreErrorKind::IdCollision).
pub trait KeyStoreLifecycle: KeyStoreWrite + KeyStoreQuery {
    /// Inserts `record` if its owner has fewer than `max` records that
    /// [count toward the limit](KeyRecord::counts_toward_limit) at `now`;
    /// otherwise writes nothing and returns [`LimitedInsert::LimitReached`].
    /// A record without owner is inserted without a count. Concurrent calls
    /// for one owner never leave it above `max` (SQL: lock the owner's rows,
    /// or a per-owner counter row, in the transaction).
    ///
    /// Errors as [`KeyStoreWrite::insert`].
    fn insert_limited(
        &self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<LimitedInsert, StoreError>> + Send;

    /// Replaces record `record.id` if its stored revision is `expected`.
    /// Writes every field of `record` except the usage fields (`usage`,
    /// `last_used_at`, kept as stored) and `revision` (set to `expected + 1`),
    /// and returns the stored result.
    ///
    /// Errors: [`NotFound`](crate::StoreErrorKind::NotFound) when missing,
    /// [`Conflict`](crate::StoreErrorKind::Conflict) when the revision
    /// differs, [`Corrupt`](crate::StoreErrorKind::Corrupt) when the record
    /// breaks its invariants.
    fn update_if(
        &self,
        record: KeyRecord,
        expected: u64,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send;

    /// Rotation: in one step, updates `predecessor` as
    /// [`update_if`](Self::update_if) with `expected` and inserts
    /// `successor` as [`insert`](KeyStoreWrite::insert). Returns both stored
    /// records (predecessor, successor). Nothing is written when either part
    /// fails (a taken successor id is
    /// [`IdCollision`](crate::StoreErrorKind::IdCollision)).
    fn rotate(
        &self,
        predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> impl Future<Output = Result<(KeyRecord, KeyRecord), StoreError>> + Send;

    /// Revokes every record of `owner` that is not revoked yet: status
    /// revoked, `revocation` set, revision + 1. Returns the ids changed,
    /// oldest first. Already-revoked records keep their first revocation.
    fn revoke_owner(
        &self,
        owner: &str,
        revocation: Revocation,
    ) -> impl Future<Output = Result<Vec<KeyId>, StoreError>> + Send;

    /// Like [`revoke_owner`](Self::revoke_owner) for every record with
    /// `prefix` whose `created_at` lies in `created` (start inclusive, end
    /// exclusive), whoever owns it: the answer to a leaked database or
    /// server secret. Returns the ids changed, oldest first.
    fn revoke_matching(
        &self,
        prefix: &Prefix,
        created: Range<OffsetDateTime>,
        revocation: Revocation,
    ) -> impl Future<Output = Result<Vec<KeyId>, StoreError>> + Send;

    /// Adds a batch of usage, all or nothing: for each delta, in order,
    /// [`UsageCounters::apply`](crate::UsageCounters::apply)`(day, count)`
    /// and `last_used_at = max(last_used_at, delta.last_used_at)`. Ids with
    /// no record (deleted keys) are skipped. Changes no other field and not
    /// the revision.
    fn record_usage(
        &self,
        batch: &[UsageDelta],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: KeyStore + ?Sized> KeyStore for $ty {
            fn fetch(&self, id: KeyId) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send {
                (**self).fetch(id)
            }
            fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
                (**self).get(id)
            }
            fn list_by_owner(&self, owner: &str) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
                (**self).list_by_owner(owner)
            }
        }
        impl<S: KeyStoreWrite + ?Sized> KeyStoreWrite for $ty {
            fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).insert(record)
            }
            fn update(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).update(record)
            }
            fn delete(&self, id: KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
                (**self).delete(id)
            }
        }
        impl<S: KeyStoreQuery + ?Sized> KeyStoreQuery for $ty {
            fn list_expiring(&self, owner: Option<&str>, window: Range<OffsetDateTime>) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
                (**self).list_expiring(owner, window)
            }
            fn find_legacy(&self, index: &KeyDigest) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
                (**self).find_legacy(index)
            }
        }
        impl<S: KeyStoreLifecycle + ?Sized> KeyStoreLifecycle for $ty {
            fn insert_limited(&self, record: KeyRecord, max: u32, now: OffsetDateTime) -> impl Future<Output = Result<LimitedInsert, StoreError>> + Send {
                (**self).insert_limited(record, max, now)
            }
            fn update_if(&self, record: KeyRecord, expected: u64) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send {
                (**self).update_if(record, expected)
            }
            fn rotate(&self, predecessor: KeyRecord, expected: u64, successor: KeyRecord) -> impl Future<Output = Result<(KeyRecord, KeyRecord), StoreError>> + Send {
                (**self).rotate(predecessor, expected, successor)
            }
            fn revoke_owner(&self, owner: &str, revocation: Revocation) -> impl Future<Output = Result<Vec<KeyId>, StoreError>> + Send {
                (**self).revoke_owner(owner, revocation)
            }
            fn revoke_matching(&self, prefix: &Prefix, created: Range<OffsetDateTime>, revocation: Revocation) -> impl Future<Output = Result<Vec<KeyId>, StoreError>> + Send {
                (**self).revoke_matching(prefix, created, revocation)
            }
            fn record_usage(&self, batch: &[UsageDelta]) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).record_usage(batch)
            }
        }
    )*};
}

forward_store!(&S, Arc<S>);
