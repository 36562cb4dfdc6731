//! Where records live: the [`KeyStore`] traits and the default
//! [`MemoryStore`].
//!
//! The traits are shaped for async networked databases: every method returns
//! `impl Future + Send`, so a PostgreSQL or SQLite store (the `apikey-sqlx`
//! crate) implements them with plain `async fn` and never blocks its
//! runtime. The store only stores: every rule (digests, status, expiry,
//! scopes, limits) is decided by the [`Verifier`](crate::Verifier) and the
//! [`KeyManager`](crate::KeyManager).
//!
//! A store failure is reported as a [`StoreError`] and surfaces as
//! [`Error::StoreUnavailable`](crate::Error::StoreUnavailable) (HTTP 503):
//! never as "valid", never as "invalid key".
//!
//! # The trait set
//!
//! | trait | needed by | required methods |
//! |---|---|---|
//! | [`KeyStore`] | verification ([`Authenticator`](crate::Authenticator), the gate) | `fetch` (and `find_legacy` for imported keys; defaults to none) |
//! | [`KeyStoreQuery`] | management reads | `get`, `list_by_owner`, `list_expiring` |
//! | [`KeyStoreWrite`] | plain writes | `insert`, `update`, `delete` |
//! | [`KeyStoreLifecycle`] | [`KeyManager`](crate::KeyManager): the compound writes a real database does atomically | `insert_limited`, `update_if`, `update_limited`, `rotate`, `revoke_owner`, `revoke_matching` |
//! | [`UsageStore`] | the [`UsageRecorder`](crate::UsageRecorder) flush | `record_usage` |
//!
//! So a read-only store is one method, and each method states its
//! semantics; each compound write fits one SQL transaction. Blanket impls
//! cover `&S` and `Arc<S>`. Implementors run the part of the public
//! conformance suite (crate `apikey-testkit`, module `conformance`) that
//! matches the traits they implement.
//!
//! # Revisions and usage fields
//!
//! [`KeyRecord::revision`] counts changes. [`KeyStoreWrite::insert`] keeps the
//! given revision; every other write that changes a record sets it to the
//! stored revision plus one, except [`UsageStore::record_usage`],
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
//! | `insert_limited` | `SELECT pg_advisory_xact_lock($table_class, hashtext($owner))` (or `SELECT 1 FROM owners WHERE owner = $1 FOR UPDATE`; SQLite: `BEGIN IMMEDIATE`); `SELECT count(*) FROM keys WHERE owner = $1 AND status <> 'revoked' AND (expires_at IS NULL OR expires_at > $now) AND rotated_to IS NULL`; `INSERT` if below the limit |
//! | `update_if` | `UPDATE keys SET ..., revision = revision + 1 WHERE id = $1 AND revision = $expected` (0 rows: `NotFound` or `Conflict` after a `SELECT`) |
//! | `update_limited` | lock the owner as for `insert_limited`; `SELECT revision, <counts at $now> FROM keys WHERE id = $1 FOR UPDATE` (`NotFound` / `Conflict`); if the new row counts at `$now` and the stored one did not (or had another owner): `SELECT count(*) FROM keys WHERE owner = $owner AND id <> $1 AND <counts at $now>`, and at `$max` or above write nothing; else the `update_if` statement |
//! | `rotate` | the `update_if` statement, then `INSERT` the successor, then `UPDATE keys SET expires_at = $successor_created_at, revision = revision + 1 WHERE id = $predecessor_rotated_from AND rotated_to = $predecessor_id AND (expires_at IS NULL OR expires_at > $successor_created_at)`; roll back if any fails |
//! | `revoke_owner` | `UPDATE keys SET status = 'revoked', revocation = $r, revision = revision + 1 WHERE owner = $1 AND status <> 'revoked' RETURNING id, created_at` |
//! | `revoke_matching` | the same with `WHERE prefix = $1 AND created_at >= $2 AND created_at < $3` |
//! | `record_usage` | `INSERT INTO usage_flushes (flush_id, applied_at) VALUES ($1, now()) ON CONFLICT DO NOTHING` (no row: `AlreadyApplied`); fold the batch per key in the client (the latest day, its count, its month's count, the latest time: `UsageCounters::apply` in any order ends there); `SELECT 1 FROM keys WHERE id = ANY($ids) ORDER BY id FOR UPDATE` (concurrent flushes never deadlock); one `UPDATE keys SET day = ..., day_count = CASE ... END, month_count = CASE ... END, last_used_at = greatest(last_used_at, d.t) FROM unnest($ids, $days, $counts, $month_counts, $times) AS d WHERE keys.id = d.id`, in one transaction (SQLite: `UPDATE ... FROM (VALUES ...)`, 1,000 keys a statement, inside the bind limit) |
//! | `delete` | `DELETE ... RETURNING rotated_from, rotated_to`, then clear the two links |
//!
//! A unique index on `legacy_index` gives the [`KeyStore::find_legacy`]
//! lookup and the collision rule.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::StoreError;
use crate::key::KeyDigest;
use crate::key::KeyId;
use crate::key::Prefix;

pub mod builder;
pub mod cache;
pub mod feed;
mod idtable;
pub mod memory;
pub mod record;

pub use builder::KeyRecordBuilder;
pub use cache::{CachedStore, DEFAULT_CACHE_CAPACITY, DEFAULT_MAX_AGE, DEFAULT_NEGATIVE_MAX_AGE};
pub use feed::{ChangeFeed, Invalidate, Invalidation};
pub use memory::MemoryStore;
pub use record::{
    KeyRecord, KeyStatus, KeyView, LegacyInfo, NewKey, Revocation, SCHEMA_VERSION, UsageCounters,
};

/// The verification read path: the one trait a read-only store (a replica,
/// a cache, a file) implements to serve [`Authenticator`](crate::Authenticator).
///
/// One method is required: [`fetch`](Self::fetch). Stores that hold
/// imported legacy keys also override [`find_legacy`](Self::find_legacy).
pub trait KeyStore: Send + Sync {
    /// The hot-path read: the compact view of key `id`, or `None`.
    fn fetch(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send;

    /// The record whose [`LegacyInfo::index`](crate::LegacyInfo::index)
    /// equals `index`, or `None`: the verify path of keys imported from
    /// another system ([`KeyManager::import`](crate::KeyManager::import)).
    /// Stores keep this index unique (see [`KeyStoreLifecycle`]) and look it
    /// up with an index, not a scan. Malformed strings that start with a
    /// legacy prefix reach this method.
    ///
    /// The default answers `None`, which is right for a store that never
    /// holds imported keys (their verification then fails closed, as
    /// `INVALID_API_KEY`). Every store that accepts writes overrides it; the
    /// write part of the conformance suite checks that.
    fn find_legacy(
        &self,
        index: &KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        let _ = index;
        std::future::ready(Ok(None))
    }
}

/// Management reads: full records by id, by owner, and expiring soon.
pub trait KeyStoreQuery: KeyStore {
    /// The full record of key `id`, or `None`.
    fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Every record owned by `owner`, in creation order (oldest first, ties
    /// by id).
    fn list_by_owner(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;

    /// Records that are not revoked and whose `expires_at` lies in
    /// `window` (`start` inclusive, `end` exclusive), of `owner` or of
    /// everyone when `owner` is `None`; ordered by `expires_at`, then id.
    fn list_expiring(
        &self,
        owner: Option<&str>,
        window: Range<OffsetDateTime>,
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
    /// [`UsageStore::record_usage`] owns them) and `revision` (set to
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

/// A unique id for one usage flush, so a store can apply a retried batch
/// once. Random (128 bits from the OS), printed as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlushId(u128);

impl FlushId {
    /// A fresh random id.
    pub fn random() -> Self {
        use rand_core::Rng;
        let mut b = [0u8; 16];
        crate::OsRng.fill_bytes(&mut b);
        Self(u128::from_be_bytes(b))
    }

    /// The id with this value (stores reading it back).
    pub const fn from_u128(v: u128) -> Self {
        Self(v)
    }

    /// The id's value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// Big-endian bytes (for a `bytea` / `BLOB` column).
    pub const fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl std::fmt::Debug for FlushId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlushId({:032x})", self.0)
    }
}

impl std::fmt::Display for FlushId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// One usage flush: the deltas and the id that makes a retry of the same
/// batch recognisable. Built by the [`UsageRecorder`](crate::UsageRecorder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageBatch {
    /// This flush's id; a retry of the batch carries the same one.
    pub id: FlushId,
    /// Per key and day: how many uses, and the latest.
    pub deltas: Vec<UsageDelta>,
}

impl UsageBatch {
    /// A batch with a fresh id.
    pub fn new(deltas: Vec<UsageDelta>) -> Self {
        Self {
            id: FlushId::random(),
            deltas,
        }
    }
}

/// What [`UsageStore::record_usage`] did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushOutcome {
    /// The deltas were added.
    Applied,
    /// A batch with this id was applied before; nothing was added again.
    AlreadyApplied,
}

/// Where usage counts go: batched writes of `last_used_at` and the day and
/// month counters, off the request path.
///
/// # Delivery
/// The [`UsageRecorder`](crate::UsageRecorder) keeps a batch until a flush
/// of it returns `Ok`, and retries it with the same [`FlushId`] after an
/// error or a dropped (cancelled) flush. So a store that records applied
/// flush ids in the same transaction as the deltas (and answers
/// [`FlushOutcome::AlreadyApplied`] for a known id) counts every use
/// exactly once; a store that does not counts at least once (a flush whose
/// commit succeeded but whose answer was lost is applied again).
/// [`MemoryStore`] records ids: exactly once.
pub trait UsageStore: KeyStore {
    /// Adds a batch of usage, all or nothing: for each delta, in order,
    /// [`UsageCounters::apply`](crate::UsageCounters::apply)`(day, count)`
    /// and `last_used_at = max(last_used_at, delta.last_used_at)`. Ids with
    /// no record (deleted keys) are skipped. Changes no other field and not
    /// the revision. A batch whose id was applied before changes nothing
    /// and answers [`FlushOutcome::AlreadyApplied`] (stores that keep ids;
    /// they may forget ids older than a day).
    fn record_usage(
        &self,
        batch: &UsageBatch,
    ) -> impl Future<Output = Result<FlushOutcome, StoreError>> + Send;
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

/// Outcome of [`KeyStoreLifecycle::update_limited`].
// `Updated` is the common outcome and is moved out at once; boxing it would
// add an allocation to every write for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitedUpdate {
    /// The record was written; the stored result.
    Updated(KeyRecord),
    /// The write would have made the record count toward its owner's limit
    /// again, and the owner already had `active` other records that count;
    /// nothing was written.
    LimitReached {
        /// Other records of the owner counted.
        active: u32,
    },
}

/// Uses of one key on one UTC day, for [`UsageStore::record_usage`].
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

    /// [`update_if`](Self::update_if) that keeps the owner limit: when
    /// `record` would [count toward](KeyRecord::counts_toward_limit) its
    /// owner's limit at `now` while the stored record did not (it was
    /// revoked, expired at `now`, in a rotation grace period, or had another
    /// owner), it first counts the owner's other records that count at
    /// `now` (this record excluded) and, at `max` or more, writes nothing
    /// and returns [`LimitedUpdate::LimitReached`]. Any other write (one
    /// that does not make the record count again, or a record without
    /// owner) is [`update_if`](Self::update_if) unchanged and returns
    /// [`LimitedUpdate::Updated`]. The revision compare, the count and the
    /// write are one atomic step: concurrent calls (and
    /// [`insert_limited`](Self::insert_limited)) for one owner never leave
    /// it above `max`.
    ///
    /// Every write that could bring an expired, revoked-looking or
    /// rotated-away key back (clearing or extending an expiry, clearing a
    /// rotation link) goes through this method in
    /// [`KeyManager`](crate::KeyManager) when a limit is configured.
    ///
    /// Errors as [`update_if`](Self::update_if).
    fn update_limited(
        &self,
        record: KeyRecord,
        expected: u64,
        max: u32,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<LimitedUpdate, StoreError>> + Send;

    /// Rotation: in one step, updates `predecessor` as
    /// [`update_if`](Self::update_if) with `expected` and inserts
    /// `successor` as [`insert`](KeyStoreWrite::insert). Returns both stored
    /// records (predecessor, successor). Nothing is written when either part
    /// fails (a taken successor id is
    /// [`IdCollision`](crate::StoreErrorKind::IdCollision)).
    ///
    /// In the same step, the rotation **ends the grace period of the
    /// predecessor's own predecessor**, so a rotation chain never has more
    /// than two working keys: the record named by the stored predecessor's
    /// `rotated_from`, if it still points back (`rotated_to` is the
    /// predecessor's id) and its `expires_at` is unset or later than
    /// `successor.created_at` (the rotation time), gets
    /// `expires_at = successor.created_at` and revision + 1 (a
    /// `not_before` at or after that time is cleared, so the record stays
    /// valid; the key is expired either way). Its other fields and usage
    /// are kept. It is not part of the returned pair.
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
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: KeyStore + ?Sized> KeyStore for $ty {
            fn fetch(&self, id: KeyId) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send {
                (**self).fetch(id)
            }
            fn find_legacy(&self, index: &KeyDigest) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
                (**self).find_legacy(index)
            }
        }
        impl<S: KeyStoreQuery + ?Sized> KeyStoreQuery for $ty {
            fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
                (**self).get(id)
            }
            fn list_by_owner(&self, owner: &str) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
                (**self).list_by_owner(owner)
            }
            fn list_expiring(&self, owner: Option<&str>, window: Range<OffsetDateTime>) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
                (**self).list_expiring(owner, window)
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
        impl<S: UsageStore + ?Sized> UsageStore for $ty {
            fn record_usage(&self, batch: &UsageBatch) -> impl Future<Output = Result<FlushOutcome, StoreError>> + Send {
                (**self).record_usage(batch)
            }
        }
        impl<S: KeyStoreLifecycle + ?Sized> KeyStoreLifecycle for $ty {
            fn insert_limited(&self, record: KeyRecord, max: u32, now: OffsetDateTime) -> impl Future<Output = Result<LimitedInsert, StoreError>> + Send {
                (**self).insert_limited(record, max, now)
            }
            fn update_if(&self, record: KeyRecord, expected: u64) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send {
                (**self).update_if(record, expected)
            }
            fn update_limited(&self, record: KeyRecord, expected: u64, max: u32, now: OffsetDateTime) -> impl Future<Output = Result<LimitedUpdate, StoreError>> + Send {
                (**self).update_limited(record, expected, max, now)
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
        }
    )*};
}

forward_store!(&S, Arc<S>);
