//! The private backend trait: what differs between the databases (SQL text, binds and row decoding,
//! transactions, locks, change notification). The store written once over it is `store.rs`; the dialects
//! are `sqlite.rs` and `postgres.rs`.

use std::sync::Arc;

use apikey::Timestamp;
use apikey::{Invalidation, KeyRecord, StoreError};

use crate::columns::Val;

/// The type a generic row column is read as.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Col {
    /// An integer (`Val::Int`).
    Int,
    /// A time as Unix microseconds (`Val::Int`), saturating at the ends
    /// (PostgreSQL's infinities): for comparing and ordering only.
    Micros,
    /// A calendar day (`Val::Date`).
    Date,
}

/// One `(key, UTC day) += count` row of a usage flush.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UsageDay {
    pub id: i64,
    pub day: time::Date,
    pub count: i64,
}

/// One key of a usage flush: its latest use, and the day before which its
/// usage rows go (`USAGE_DAYS_KEPT` before the latest day in the batch).
#[derive(Clone, Debug)]
pub(crate) struct UsageKey {
    pub id: i64,
    pub last_used_at: Timestamp,
    /// The address and route of that use (text), when known.
    pub ip: Option<String>,
    pub route: Option<String>,
    pub horizon: time::Date,
}

/// One database: the dialect of the SQL the store builds, and the few
/// primitives it runs it with. Everything else is the store written once (`store.rs`).
pub(crate) trait Backend: Send + Sync + 'static {
    /// An open transaction.
    type Tx: Send;

    /// Placeholder `i` (1-based) for a value of column `col` (`""`: any).
    fn ph(i: usize, col: &str) -> String;
    /// The select-list expression of column `col`.
    fn sel(col: &str) -> String;
    /// The row-lock clause of a read inside a write transaction.
    const ROW_LOCK: &'static str;

    /// The qualified table-name stem (`schema.` and the table prefix).
    fn tables(&self) -> &str;

    /// Begins a write transaction.
    async fn begin(&self) -> Result<Self::Tx, StoreError>;
    /// Commits `tx`.
    async fn commit(tx: Self::Tx) -> Result<(), StoreError>;
    /// A row as the database returns it.
    type Row: Send;
    /// The rows `sql` returns (in `tx`, or on the pool).
    async fn fetch(
        &self,
        tx: Option<&mut Self::Tx>,
        sql: &Arc<str>,
        binds: Vec<Val>,
    ) -> Result<Vec<Self::Row>, StoreError>;
    /// The record a full row holds; any bad value is `Corrupt`.
    fn decode(row: &Self::Row) -> Result<KeyRecord, StoreError>;
    /// Column `i` of `row`, read as `col`.
    fn col(row: &Self::Row, i: usize, col: Col) -> Result<Val, StoreError>;
    /// Runs `sql` in `tx`; the rows it changed.
    async fn execute(tx: &mut Self::Tx, sql: &Arc<str>, binds: Vec<Val>)
    -> Result<u64, StoreError>;
    /// Serializes limited writes of `owner` until `tx` ends, across
    /// processes (a no-op where the transaction already holds the write lock).
    async fn lock_owner(&self, tx: &mut Self::Tx, owner: &str) -> Result<(), StoreError>;
    /// Announces `change` to listeners when `tx` commits (a no-op without a
    /// change channel).
    async fn announce(&self, tx: &mut Self::Tx, change: &Invalidation) -> Result<(), StoreError>;
    /// Adds `days` to the usage rows, raises `last_used_at` of each key row
    /// in `keys` (with the address and route, when not older than the
    /// stored use) and drops the key's rows before its horizon, in `tx`; ids
    /// without a key row are skipped.
    async fn add_usage(
        &self,
        tx: &mut Self::Tx,
        days: Vec<UsageDay>,
        keys: Vec<UsageKey>,
    ) -> Result<(), StoreError>;

    /// Begins the migration transaction, holding whatever lock makes
    /// concurrent migrations of these tables run one after the other.
    async fn begin_migration(&self) -> Result<Self::Tx, StoreError>;
    /// `CREATE TABLE IF NOT EXISTS` of the schema-version table.
    fn version_table(&self) -> String;
    /// The schema, one entry per version (entry `i` is version `i + 1`).
    /// Released entries never change; an upgrade appends one.
    fn migrations(&self) -> Vec<Vec<String>>;
    /// Runs after a migration committed.
    async fn migrated(&self) -> Result<(), StoreError>;
}
