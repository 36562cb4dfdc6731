//! Durable key stores for [`apikey`]: [`SqliteStore`] (embedded, one file)
//! and [`PostgresStore`] (many instances sharing keys), on sqlx 0.9.
//!
//! Both implement every key-store trait of `apikey` (verification reads,
//! management reads, the `commit` write primitive with a one-statement
//! bulk revocation, and additive usage) and pass its conformance suite.
//! They store only: every lifecycle rule (owner limit, rotation chain, link
//! clearing) is planned by `apikey::KeyManager` and committed with owner
//! guards. Hand in the pool you already have (`from_pool`) or let the store
//! open one (`open` / `connect`).
//!
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` | [`SqliteStore`] (builds the bundled SQLite C library) |
//! | `postgres` | [`PostgresStore`] (pure Rust; compiles no SQLite code) |
//! | `rustls` | TLS to PostgreSQL through rustls (ring backend, webpki roots) |
//!
//! No feature is on by default: pick the database you use.
//!
//! # Guarantees
//!
//! * `commit` is one transaction: every guard, revision and id is checked
//!   and, if any check fails, nothing is written (`Conflict`, `NotFound`,
//!   `IdCollision`). A call refused by the database changes nothing (a
//!   timed-out one: see below).
//! * Owner guards live in `<prefix>apikey_owners`. Commits guarding one
//!   owner run one after the other across processes: SQLite takes the
//!   database write lock first (`BEGIN IMMEDIATE`), PostgreSQL a
//!   transaction-scoped advisory lock on the owner and then its row.
//!   A listing of an owner reads the owner's version before its records.
//! * `revoke_where` is one `UPDATE` (idempotent: revoked keys are left as
//!   they are).
//! * The owner lock and the change channel of PostgreSQL are derived
//!   from the schema the server resolves the key table to, not from how it
//!   is configured: an instance naming the schema and one reaching it
//!   through `search_path` share both. Migrations into one schema run one
//!   after the other (an advisory lock on the schema), whatever their
//!   table prefixes.
//! * Every call is bounded by [`StoreOptions::timeout`]: past it the answer
//!   is `StoreErrorKind::Timeout`, which verification reports as
//!   `STORE_UNAVAILABLE` (503): never valid, never invalid.
//! * **A timed-out write may have committed.** When the deadline (or the
//!   connection) is lost while the database runs `COMMIT`, PostgreSQL and
//!   SQLite finish it: `Timeout` from a write means "unknown outcome", not
//!   "nothing changed". A write sent again is ordered after the lost one
//!   (it waits for its locks) and sees its outcome; `apikey::KeyManager`'s
//!   `create`, `rotate` and `import` do this and answer with their own
//!   result (see its "What a timeout means").
//! * A row edited into something invalid reads as `StoreErrorKind::Corrupt`
//!   whose source is `apikey::Error::InvalidRecord` (`INVALID_RECORD`):
//!   never a panic, never a usable key. That includes PostgreSQL times
//!   `time` cannot hold (`'infinity'`, `'-infinity'`, years past 9999, in
//!   any time or date column): they are decoded with range checks, never
//!   with sqlx's panicking `time` conversion.
//! * Usage is additive and exactly-once: `UsageStore::record_usage` adds
//!   each delta to its `(key, UTC day)` row of `apikey_usage_days` and
//!   raises `last_used_at`, and inserts the batch's `FlushId` into
//!   `apikey_usage_flushes` in the same transaction; a replay answers
//!   `FlushOutcome::AlreadyApplied`. Day rows are kept for 400 days.
//!
//! The schema, the migrations and the upgrade path are in the README.
#![forbid(unsafe_code)]
// Without a database feature the shared code has no user.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_imports, unused_macros)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod codec;
mod columns;
mod error;
mod options;
mod sql;
mod store;

#[cfg(feature = "postgres")]
mod feed;
#[cfg(feature = "postgres")]
mod notify;
#[cfg(feature = "postgres")]
mod pgtime;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use codec::{id_from_sql, id_to_sql};
pub use error::MigrateError;
#[cfg(feature = "postgres")]
pub use feed::{FeedOptions, PgChangeFeed};
pub use options::{FLUSH_RETENTION, StoreOptions};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, connect_error};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, sqlite_options};
