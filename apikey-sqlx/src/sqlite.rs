//! [`SqliteStore`]: the embedded, durable default. This file holds the
//! SQLite dialect only; the store itself is [`crate::store`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apikey::Timestamp;
use apikey::{Invalidation, KeyRecord, StoreError};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row as _, Sqlite};

use crate::backend::{Backend, Col, UsageDay, UsageKey};
use crate::codec::{Row, corrupt, list_json};
use crate::columns::Val;
use crate::error::{MigrateError, check_ident, database, store_error};
use crate::options::StoreOptions;
use crate::store::{Store, store_traits};

/// Rows per multi-row `VALUES` statement of the usage flush: 3 binds each,
/// well inside SQLite's limit of 32,766 bound parameters.
const USAGE_CHUNK: usize = 1000;

/// A durable key store in one SQLite file.
///
/// [`open`](Self::open) configures every connection with:
///
/// * `journal_mode = WAL`: readers never block the writer, and verifications
///   run concurrently with writes;
/// * `synchronous = FULL`: every commit is fsynced (WAL and, at checkpoint,
///   the database), so a write that returned survives a power loss, not only
///   a process crash (`NORMAL` would lose the last commits on power loss);
/// * `busy_timeout = 5 s`: a writer waits for another process's write lock
///   instead of failing at once;
/// * `BEGIN IMMEDIATE` for every write, so a transaction takes the write
///   lock before it reads (owner guards hold across processes).
///
/// Every call is bounded by [`StoreOptions::timeout`]; past it the answer is
/// [`StoreErrorKind::Timeout`](apikey::StoreErrorKind::Timeout) and nothing is written.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use apikey::{Changes, KeyStore, KeyStoreWrite, Keyring, NewKey, Put, ServerSecret, Verifier};
/// use apikey_sqlx::SqliteStore;
///
/// let dir = std::env::temp_dir().join(format!("apikey-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let store = SqliteStore::open(dir.join("keys.db")).await?; // runs migrate()
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
/// let (_key, record) = verifier.issue(NewKey::new("sk_live_"), apikey::Clock::now(&apikey::SystemClock))?;
/// let mut changes = Changes::new();
/// changes.puts.push(Put::insert(record.clone()));
/// store.commit(&changes).await?;
/// assert!(store.fetch(record.id).await?.is_some());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Store<SqliteDb>>,
}

/// The connect options [`SqliteStore::open`] uses for `path` (WAL,
/// `synchronous = FULL`, a 5 s busy timeout, created if missing): for a
/// pool of your own, e.g. with other options.
pub fn sqlite_options(path: impl AsRef<Path>) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
}

impl SqliteStore {
    /// The schema version [`migrate`](Self::migrate) brings the tables to
    /// (stored in `<prefix>apikey_schema_version`; a database at a newer
    /// one is refused with [`MigrateError::SchemaTooNew`]).
    pub const SCHEMA_VERSION: i64 = crate::store::SCHEMA_VERSION;

    /// Opens (creating if missing) the database file at `path` with the
    /// settings above and default [`StoreOptions`], and runs
    /// [`migrate`](Self::migrate).
    ///
    /// # Errors
    /// [`MigrateError`] when the file cannot be opened or migrated.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, MigrateError> {
        Self::open_with(path, StoreOptions::default()).await
    }

    /// As [`open`](Self::open) with `options`.
    ///
    /// # Errors
    /// As [`open`](Self::open); [`MigrateError::InvalidName`] for a bad
    /// table prefix.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<Self, MigrateError> {
        let path = path.as_ref();
        // Instances that start together race to create the file and switch
        // it to WAL; SQLite answers some of those races with SQLITE_BUSY at
        // once instead of waiting out the busy timeout. Retry them, bounded.
        let mut attempt = 0u32;
        loop {
            let result = async {
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(options.timeout)
                    // A connection to a local file has no peer to lose:
                    // sqlx's ping before each acquire is a hand-off to the
                    // connection's worker thread and back for nothing
                    // (issue 23: uncached p50 22-27 us with it, 17-22 us
                    // without).
                    .test_before_acquire(false)
                    .connect_with(sqlite_options(path))
                    .await
                    .map_err(database)?;
                let store = Self::from_pool_with(pool, options.clone())?;
                store.migrate().await?;
                Ok::<_, MigrateError>(store)
            }
            .await;
            match result {
                Err(e) if attempt < 50 && is_busy(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 + 10 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    /// An in-memory database for tests: one connection, so the whole pool
    /// sees one database (each connection to `sqlite::memory:` would get
    /// its own empty one), never closed while the store lives. Migrated.
    ///
    /// # Errors
    /// [`MigrateError`] (not expected for memory).
    pub async fn memory() -> Result<Self, MigrateError> {
        let options = StoreOptions::default();
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(options.timeout)
            .connect_with(SqliteConnectOptions::new().in_memory(true))
            .await
            .map_err(database)?;
        let store = Self::from_pool_with(pool, options)?;
        store.migrate().await?;
        Ok(store)
    }

    /// A store over a pool you configured (see [`sqlite_options`] for the
    /// durable settings). Does not migrate: call [`migrate`](Self::migrate).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self::build(pool, StoreOptions::default())
    }

    /// As [`from_pool`](Self::from_pool) with `options`.
    ///
    /// # Errors
    /// [`MigrateError::InvalidName`] for a bad table prefix;
    /// a PostgreSQL schema in `options` is refused the same way.
    pub fn from_pool_with(pool: SqlitePool, options: StoreOptions) -> Result<Self, MigrateError> {
        check_ident(&options.table_prefix, "table prefix", 32)?;
        if options.schema.is_some() {
            return Err(MigrateError::InvalidName(
                "SQLite has no schemas; use a table prefix".into(),
            ));
        }
        Ok(Self::build(pool, options))
    }

    fn build(pool: SqlitePool, options: StoreOptions) -> Self {
        let tables = options.table_prefix;
        let inner = Store::new(SqliteDb { pool, tables }, options.timeout);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.backend.pool
    }

    /// Creates or upgrades the tables to the newest schema this crate
    /// knows, in one `BEGIN IMMEDIATE` transaction (so instances starting
    /// together migrate once). Versions are kept in
    /// `<prefix>apikey_schema_version`, apart from sqlx's own
    /// `_sqlx_migrations`.
    ///
    /// # Errors
    /// [`MigrateError::SchemaTooNew`] when a newer release migrated the
    /// database (nothing is changed); [`MigrateError::Database`].
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        self.inner.migrate().await
    }
}

store_traits!(SqliteStore);

/// The SQLite dialect.
#[derive(Debug)]
pub(crate) struct SqliteDb {
    pool: SqlitePool,
    /// The table prefix.
    tables: String,
}

type Tx = sqlx::Transaction<'static, Sqlite>;

impl Backend for SqliteDb {
    type Tx = Tx;

    fn ph(i: usize, _col: &str) -> String {
        format!("?{i}")
    }

    fn sel(col: &str) -> String {
        col.to_owned()
    }

    // `BEGIN IMMEDIATE` already holds the database write lock.
    const ROW_LOCK: &'static str = "";

    fn tables(&self) -> &str {
        &self.tables
    }

    /// `BEGIN IMMEDIATE`: the write lock is held from the first read to the
    /// commit, across every process using the file.
    async fn begin(&self) -> Result<Tx, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store_error)
    }

    async fn commit(tx: Tx) -> Result<(), StoreError> {
        tx.commit().await.map_err(store_error)
    }

    type Row = SqliteRow;

    async fn fetch(
        &self,
        tx: Option<&mut Tx>,
        sql: &Arc<str>,
        binds: Vec<Val>,
    ) -> Result<Vec<SqliteRow>, StoreError> {
        let q = binds.into_iter().fold(query(sql), bind);
        let rows = match tx {
            Some(tx) => q.fetch_all(&mut **tx).await,
            None => q.fetch_all(&self.pool).await,
        };
        rows.map_err(store_error)
    }

    fn decode(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
        decode(row)
    }

    fn col(row: &SqliteRow, i: usize, col: Col) -> Result<Val, StoreError> {
        match col {
            Col::Int | Col::Micros => row.try_get(i).map(Val::Int).map_err(store_error),
            Col::Date => day(row.try_get(i).map_err(store_error)?),
        }
    }

    async fn execute(tx: &mut Tx, sql: &Arc<str>, binds: Vec<Val>) -> Result<u64, StoreError> {
        let q = binds.into_iter().fold(query(sql), bind);
        let done = q.execute(&mut **tx).await.map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn lock_owner(&self, _tx: &mut Tx, _owner: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn announce(&self, _tx: &mut Tx, _change: &Invalidation) -> Result<(), StoreError> {
        Ok(())
    }

    async fn add_usage(
        &self,
        tx: &mut Tx,
        days: Vec<UsageDay>,
        keys: Vec<UsageKey>,
    ) -> Result<(), StoreError> {
        let t = &self.tables;
        let values = |n: usize, width: usize| {
            (0..n)
                .map(|i| {
                    let cols = (1..=width).map(|c| format!("?{}", i * width + c));
                    format!("({})", cols.collect::<Vec<_>>().join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        for chunk in days.chunks(USAGE_CHUNK) {
            // Ids without a key row are skipped (the join).
            let stmt = format!(
                "WITH b(id, day, n) AS (VALUES {}) \
                 INSERT INTO {t}apikey_usage_days (key_id, day, count) \
                 SELECT b.id, b.day, b.n FROM b JOIN {t}apikey_keys k ON k.id = b.id WHERE true \
                 ON CONFLICT (key_id, day) DO UPDATE SET \
                 count = min(count + excluded.count, 9223372036854775807)",
                values(chunk.len(), 3)
            );
            let mut q = sqlx::query(AssertSqlSafe(stmt));
            for d in chunk {
                q = q.bind(d.id).bind(date_text(d.day)).bind(d.count);
            }
            q.execute(&mut **tx).await.map_err(store_error)?;
        }
        for chunk in keys.chunks(USAGE_CHUNK) {
            let b = values(chunk.len(), 5);
            let stmt = format!(
                "WITH b(id, lu, h, ip, route) AS (VALUES {b}) \
                 UPDATE {t}apikey_keys AS k SET last_used_at = max(coalesce(k.last_used_at, b.lu), b.lu), \
                 last_used_ip = CASE WHEN k.last_used_at IS NULL OR b.lu >= k.last_used_at \
                 THEN b.ip ELSE k.last_used_ip END, \
                 last_used_route = CASE WHEN k.last_used_at IS NULL OR b.lu >= k.last_used_at \
                 THEN b.route ELSE k.last_used_route END \
                 FROM b WHERE k.id = b.id"
            );
            let prune = format!(
                "WITH b(id, lu, h, ip, route) AS (VALUES {b}) DELETE FROM {t}apikey_usage_days \
                 WHERE day < (SELECT b.h FROM b WHERE b.id = key_id)"
            );
            for stmt in [stmt, prune] {
                let mut q = sqlx::query(AssertSqlSafe(stmt));
                for k in chunk {
                    q = q
                        .bind(k.id)
                        .bind(k.last_used_at.as_unix_micros())
                        .bind(date_text(k.horizon))
                        .bind(k.ip.as_deref())
                        .bind(k.route.as_deref());
                }
                q.execute(&mut **tx).await.map_err(store_error)?;
            }
        }
        Ok(())
    }

    async fn begin_migration(&self) -> Result<Tx, StoreError> {
        self.begin().await
    }

    fn version_table(&self) -> String {
        let p = &self.tables;
        format!(
            "CREATE TABLE IF NOT EXISTS {p}apikey_schema_version \
             (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT"
        )
    }

    fn migrations(&self) -> Vec<Vec<String>> {
        migrations(&self.tables)
    }

    async fn migrated(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

type Q<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

fn query(sql: &Arc<str>) -> Q<'static> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

fn bind(q: Q<'_>, v: Val) -> Q<'_> {
    match v {
        Val::Int(x) => q.bind(x),
        Val::Small(x) => q.bind(x.map(i64::from)),
        Val::Text(x) => q.bind(x),
        Val::Bytes(x) => q.bind(x),
        Val::Bool(x) => q.bind(x),
        Val::Time(x) => q.bind(x.map(Timestamp::as_unix_micros)),
        Val::Date(x) => q.bind(x.map(date_text)),
        Val::Json(x) => q.bind(x),
        Val::List(x) => q.bind(list_json(x)),
    }
}

fn date_text(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// A day column (`'YYYY-MM-DD'` text).
fn day(text: Option<String>) -> Result<Val, StoreError> {
    match text.map(|t| parse_date(&t)) {
        Some(None) => Err(corrupt("a day column")),
        d => Ok(Val::Date(d.flatten())),
    }
}

fn parse_date(s: &str) -> Option<time::Date> {
    let mut it = s.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

/// Decodes one row; any bad value is `Corrupt`, never a panic.
fn decode(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let time = |c: &str| -> Result<Option<Timestamp>, StoreError> {
        match row.try_get::<Option<i64>, _>(c).map_err(store_error)? {
            None => Ok(None),
            Some(v) => Timestamp::checked_from_unix_micros(v)
                .map(Some)
                .ok_or_else(|| crate::codec::corrupt(&format!("{c} out of range"))),
        }
    };
    let list = |c: &str| -> Result<Vec<String>, StoreError> {
        let text: String = row.try_get(c).map_err(store_error)?;
        serde_json::from_str(&text)
            .map_err(|_| crate::codec::corrupt(&format!("{c} is not a JSON array of strings")))
    };
    let g = |e: sqlx::Error| store_error(e);
    Row {
        id: row.try_get("id").map_err(g)?,
        prefix: row.try_get("prefix").map_err(g)?,
        environment: row.try_get("environment").map_err(g)?,
        owner: row.try_get("owner").map_err(g)?,
        name: row.try_get("name").map_err(g)?,
        description: row.try_get("description").map_err(g)?,
        secret_version: row.try_get("secret_version").map_err(g)?,
        digest: row.try_get("digest").map_err(g)?,
        scopes: list("scopes")?,
        created_at: time("created_at")?,
        expires_at: time("expires_at")?,
        not_before: time("not_before")?,
        status: row.try_get("status").map_err(g)?,
        revoked_at: time("revoked_at")?,
        revocation_reason: row.try_get("revocation_reason").map_err(g)?,
        last_used_at: time("last_used_at")?,
        metadata: row.try_get("metadata").map_err(g)?,
        rotated_from: row.try_get("rotated_from").map_err(g)?,
        rotated_to: row.try_get("rotated_to").map_err(g)?,
        revision: row.try_get("revision").map_err(g)?,
        ip_allowlist: list("ip_allowlist")?,
        legacy_prefix: row.try_get("legacy_prefix").map_err(g)?,
        legacy_index: row.try_get("legacy_index").map_err(g)?,
        legacy_index_version: row.try_get("legacy_index_version").map_err(g)?,
        legacy_upgraded: row.try_get("legacy_upgraded").map_err(g)?,
        last_used_ip: row.try_get("last_used_ip").map_err(g)?,
        last_used_route: row.try_get("last_used_route").map_err(g)?,
    }
    .into_record()
}

/// The schema, one entry per version (entry `i` is version `i + 1`).
/// Released entries never change; an upgrade appends one.
fn migrations(p: &str) -> Vec<Vec<String>> {
    vec![
        vec![
            format!(
                "CREATE TABLE {p}apikey_keys (
    id                   INTEGER PRIMARY KEY, -- key id with the sign bit flipped (order-preserving)
    prefix               TEXT NOT NULL,
    environment          TEXT NOT NULL,       -- 'live' | 'test'
    owner                TEXT,
    name                 TEXT NOT NULL,
    description          TEXT,
    secret_version       INTEGER NOT NULL,
    digest               BLOB NOT NULL,       -- 32-byte keyed digest (never the secret)
    scopes               TEXT NOT NULL,       -- JSON array of scope strings
    created_at           INTEGER NOT NULL,    -- Unix microseconds, UTC
    expires_at           INTEGER,
    not_before           INTEGER,
    status               TEXT NOT NULL,       -- 'active' | 'disabled' | 'revoked'
    revoked_at           INTEGER,
    revocation_reason    TEXT,
    last_used_at         INTEGER,
    metadata             TEXT NOT NULL,       -- JSON object of strings
    rotated_from         INTEGER,
    rotated_to           INTEGER,
    revision             INTEGER NOT NULL,
    ip_allowlist         TEXT NOT NULL,       -- JSON array of CIDR strings
    usage_day            TEXT,                -- 'YYYY-MM-DD' (UTC)
    usage_day_count      INTEGER NOT NULL,
    usage_month_count    INTEGER NOT NULL,
    legacy_prefix        TEXT,
    legacy_index         BLOB,
    legacy_index_version INTEGER,
    legacy_upgraded      INTEGER
) STRICT"
            ),
            format!("CREATE INDEX {p}apikey_keys_owner ON {p}apikey_keys (owner, created_at, id)"),
            format!(
                "CREATE INDEX {p}apikey_keys_expires ON {p}apikey_keys (expires_at) WHERE expires_at IS NOT NULL"
            ),
            format!(
                "CREATE UNIQUE INDEX {p}apikey_keys_legacy ON {p}apikey_keys (legacy_index) WHERE legacy_index IS NOT NULL"
            ),
            format!(
                "CREATE INDEX {p}apikey_keys_prefix_created ON {p}apikey_keys (prefix, created_at)"
            ),
            format!(
                "CREATE TABLE {p}apikey_usage_flushes (flush_id BLOB PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT"
            ),
            format!(
                "CREATE INDEX {p}apikey_usage_flushes_applied ON {p}apikey_usage_flushes (applied_at)"
            ),
        ],
        vec![
            // 2: owner guards, additive per-day usage (the old counters move
            // there: the day's count on its day, the rest of the month's count
            // on the first of that month).
            format!(
                "CREATE TABLE {p}apikey_owners (owner TEXT PRIMARY KEY, version INTEGER NOT NULL) STRICT"
            ),
            format!(
                "CREATE TABLE {p}apikey_usage_days (key_id INTEGER NOT NULL, day TEXT NOT NULL, \
             count INTEGER NOT NULL, PRIMARY KEY (key_id, day)) STRICT"
            ),
            format!("CREATE INDEX {p}apikey_usage_days_day ON {p}apikey_usage_days (day)"),
            format!(
                "INSERT INTO {p}apikey_usage_days (key_id, day, count) \
             SELECT id, usage_day, usage_day_count FROM {p}apikey_keys \
             WHERE usage_day IS NOT NULL AND usage_day_count > 0"
            ),
            format!(
                "INSERT INTO {p}apikey_usage_days (key_id, day, count) \
             SELECT id, substr(usage_day, 1, 8) || '01', usage_month_count - usage_day_count \
             FROM {p}apikey_keys WHERE usage_day IS NOT NULL AND usage_month_count > usage_day_count \
             ON CONFLICT (key_id, day) DO UPDATE SET count = count + excluded.count"
            ),
            format!("ALTER TABLE {p}apikey_keys DROP COLUMN usage_day"),
            format!("ALTER TABLE {p}apikey_keys DROP COLUMN usage_day_count"),
            format!("ALTER TABLE {p}apikey_keys DROP COLUMN usage_month_count"),
        ],
        vec![
            // 3: the address and route of the last use, next to
            // `last_used_at` (written by the usage flush only).
            format!("ALTER TABLE {p}apikey_keys ADD COLUMN last_used_ip TEXT"),
            format!("ALTER TABLE {p}apikey_keys ADD COLUMN last_used_route TEXT"),
        ],
    ]
}

/// Whether `e` is SQLite's `SQLITE_BUSY` / `SQLITE_LOCKED` (codes 5 and 6).
fn is_busy(e: &MigrateError) -> bool {
    let MigrateError::Database(e) = e else {
        return false;
    };
    let code = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<sqlx::Error>())
        .and_then(|s| match s {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        });
    matches!(code.as_deref(), Some("5" | "6" | "517" | "261"))
}
