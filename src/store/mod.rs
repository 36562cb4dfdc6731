//! Where records live: the [`KeyStore`] traits and the default
//! [`MemoryStore`].
//!
//! The traits are shaped for async networked databases: every method returns
//! `impl Future + Send`, so a PostgreSQL or SQLite store (the `apikey-sqlx`
//! crate) implements them with plain `async fn` and never blocks its
//! runtime. The store only stores: every rule (digests, status, expiry,
//! scopes, the owner limit, the rotation chain, link clearing) is decided
//! by the [`Verifier`](crate::Verifier) and planned by the
//! [`KeyManager`](crate::KeyManager) over what it read.
//!
//! A store failure is reported as a [`StoreError`](crate::StoreError) and surfaces as
//! [`Error::StoreUnavailable`](crate::Error::StoreUnavailable) (HTTP 503):
//! never as "valid", never as "invalid key".
//!
//! # The trait set
//!
//! | trait | needed by | required methods |
//! |---|---|---|
//! | [`KeyStore`] | verification ([`Authenticator`](crate::Authenticator), the gate) | `fetch` (and `find_legacy` for imported keys; defaults to none) |
//! | [`KeyStoreQuery`] | management reads | `get`, `list` |
//! | [`KeyStoreWrite`] | [`KeyManager`](crate::KeyManager): every write | `commit` (`revoke_where` is provided) |
//! | [`UsageStore`] | the [`UsageRecorder`](crate::UsageRecorder) flush, usage totals | `record_usage`, `usage` |
//!
//! So a read-only store is one method and a full store six, plus
//! `find_legacy`. Blanket impls cover `&S` and `Arc<S>`. Implementors run
//! the part of the public conformance suite (crate `apikey-testkit`, module
//! `conformance`) that matches the traits they implement.
//!
//! # The write primitive
//!
//! [`KeyStoreWrite::commit`] applies a [`Changes`]: puts and deletes that
//! name the revision they read, and owner guards ([`OwnerGuard`]: the owner
//! version the plan read with its listing). It is all-or-nothing; any
//! mismatch is [`StoreErrorKind::Conflict`](crate::StoreErrorKind::Conflict)
//! and writes nothing. The manager retries a conflicting plan (bounded,
//! with jittered backoff) after reading again. With SQL, one transaction:
//!
//! | step | sketch (PostgreSQL) |
//! |---|---|
//! | guards | `INSERT INTO owners (owner, version) VALUES ($1, 0) ON CONFLICT DO NOTHING; SELECT version FROM owners WHERE owner = $1 FOR UPDATE` (`<> $version`: `Conflict`), then `UPDATE owners SET version = $version + 1` |
//! | insert (`expected: None`) | `INSERT INTO keys ...` (unique violation: `IdCollision`) |
//! | put (`expected: Some(r)`) | `UPDATE keys SET ... (not last_used_at), revision = $r + 1 WHERE id = $1 AND revision = $r` (0 rows: `NotFound` or `Conflict` after a `SELECT`) |
//! | delete | `DELETE FROM keys WHERE id = $1 AND revision = $r` (and its `usage_days` rows) |
//! | legacy index | a unique index on `legacy_index`: a violation is `IdCollision` |
//! | `list` (owner) | `SELECT version FROM owners WHERE owner = $1` in the same snapshot (`REPEATABLE READ`) as, or before, `SELECT ... FROM keys WHERE owner = $1 AND (created_at, id) > ($cursor) ORDER BY created_at, id LIMIT $limit` |
//! | `record_usage` | `INSERT INTO usage_flushes (flush_id) ... ON CONFLICT DO NOTHING` (no row: `AlreadyApplied`); `INSERT INTO usage_days (key_id, day, count) SELECT ... FROM unnest(...) JOIN keys ... ON CONFLICT (key_id, day) DO UPDATE SET count = usage_days.count + excluded.count`; `UPDATE keys SET last_used_at = greatest(last_used_at, d.t), last_used_ip = CASE WHEN last_used_at IS NULL OR d.t >= last_used_at THEN d.ip ELSE last_used_ip END, ...` (the same for `last_used_route`) |
//! | `revoke_where` (override) | `UPDATE keys SET status = 'revoked', revocation = $r, revision = revision + 1 WHERE <filter> AND status <> 'revoked' RETURNING id` |
//!
//! # Revisions and usage fields
//!
//! [`KeyRecord::revision`](crate::KeyRecord::revision) counts changes. An insert keeps the given
//! revision (the manager passes 0); a put on an existing record sets it to
//! the expected revision plus one. [`UsageStore::record_usage`] changes
//! only the last use (`last_used_at`, `last_used_ip`, `last_used_route`)
//! and the per-day counts, and no revision; a put keeps the stored last use
//! ([`KeyRecord::keep_last_use`](crate::KeyRecord::keep_last_use)), so a
//! usage flush never conflicts with, and is never undone by, a management
//! write.

mod cache;
mod contract;
mod feed;
mod idtable;
mod memory;

pub use cache::{CachedStore, DEFAULT_CACHE_CAPACITY, DEFAULT_MAX_AGE, DEFAULT_NEGATIVE_MAX_AGE};
pub(crate) use contract::measured_fetch;
pub use contract::{
    Changes, Cursor, Delete, FlushId, FlushOutcome, KeyFilter, KeyQuery, KeyStore, KeyStoreQuery,
    KeyStoreWrite, Listing, OwnerGuard, Put, UsageBatch, UsageDelta, UsageStore,
};
pub use feed::{ChangeFeed, Invalidate, Invalidation};
pub use memory::MemoryStore;
