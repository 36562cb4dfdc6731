//! [`SqliteStore`]: the embedded, durable default.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apikey::{
    FlushOutcome, KeyDigest, KeyId, KeyRecord, KeyStore, KeyStoreLifecycle, KeyStoreQuery,
    KeyStoreWrite, KeyView, LimitedInsert, LimitedUpdate, Prefix, Revocation, StoreError,
    StoreErrorKind, UsageBatch, UsageDelta, UsageStore,
};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row as _, Sqlite, SqliteConnection};
use time::OffsetDateTime;

use crate::codec::{
    Row, fold_usage, from_micros, id_from_sql, id_to_sql, invalid, list_json, micros,
};
use crate::columns::{Val, replaced, values};
use crate::error::{MigrateError, bounded, check_ident, store_error};
use crate::sql::{Dialect, Sql};
use crate::{FLUSH_RETENTION, StoreOptions};

/// The newest schema version this crate writes.
const LATEST: i64 = 1;

/// Rows per multi-row `VALUES` statement of the usage flush: 5 binds each,
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
/// * `BEGIN IMMEDIATE` for every compound write, so a transaction takes the
///   write lock before it reads (the owner limit holds across processes).
///
/// Every call is bounded by [`StoreOptions::timeout`]; past it the answer is
/// [`StoreErrorKind::Timeout`] and nothing is written.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use apikey::{KeyStore, KeyStoreWrite, Keyring, NewKey, ServerSecret, Verifier};
/// use apikey_sqlx::SqliteStore;
///
/// let dir = std::env::temp_dir().join(format!("apikey-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let store = SqliteStore::open(dir.join("keys.db")).await?; // runs migrate()
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
/// let (_key, record) = verifier.issue(NewKey::new("sk_live_"), time::OffsetDateTime::now_utc())?;
/// store.insert(record.clone()).await?;
/// assert!(store.fetch(record.id).await?.is_some());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    sql: Arc<Sql>,
    prefix: Arc<str>,
    timeout: Duration,
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
                    .connect_with(sqlite_options(path))
                    .await?;
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
            .await?;
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
        let prefix: Arc<str> = options.table_prefix.as_str().into();
        let sql = Sql::new(format!("{prefix}apikey_keys"), Dialect::Sqlite);
        Self {
            pool,
            sql: Arc::new(sql),
            prefix,
            timeout: options.timeout,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
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
        let p = &*self.prefix;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {p}apikey_schema_version \
             (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT"
        )))
        .execute(&mut *tx)
        .await?;
        let found: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT max(version) FROM {p}apikey_schema_version"
        )))
        .fetch_one(&mut *tx)
        .await?;
        let found = found.unwrap_or(0);
        if found > LATEST {
            return Err(MigrateError::SchemaTooNew {
                found,
                supported: LATEST,
            });
        }
        for (version, statements) in migrations(p).into_iter().enumerate() {
            let version = version as i64 + 1;
            if version <= found {
                continue;
            }
            for s in statements {
                sqlx::query(AssertSqlSafe(s)).execute(&mut *tx).await?;
            }
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {p}apikey_schema_version (version, applied_at) VALUES (?1, ?2)"
            )))
            .bind(version)
            .bind(micros(OffsetDateTime::now_utc()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn usage(
        &self,
        flush_id: Option<u128>,
        batch: &[UsageDelta],
    ) -> Result<bool, StoreError> {
        let folded = fold_usage(batch);
        let mut tx = self.begin().await?;
        if let Some(fid) = flush_id {
            let now = micros(OffsetDateTime::now_utc());
            let p = &*self.prefix;
            let added = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {p}apikey_usage_flushes (flush_id, applied_at) VALUES (?1, ?2) \
                 ON CONFLICT DO NOTHING"
            )))
            .bind(fid.to_be_bytes().to_vec())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            if added.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {p}apikey_usage_flushes WHERE applied_at < ?1"
            )))
            .bind(now - FLUSH_RETENTION.as_micros() as i64)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        for chunk in folded.chunks(USAGE_CHUNK) {
            let rows = (0..chunk.len())
                .map(|i| {
                    let b = i * 5;
                    format!(
                        "(?{}, ?{}, ?{}, ?{}, ?{})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let k = &self.sql.keys;
            // `UsageCounters::apply` of the folded delta; see `fold_usage`.
            let stmt = format!(
                "WITH b(id, day, dc, mc, lu) AS (VALUES {rows}) \
                 UPDATE {k} AS k SET \
                 usage_day = CASE WHEN k.usage_day IS NULL OR k.usage_day < b.day THEN b.day ELSE k.usage_day END, \
                 usage_day_count = CASE \
                   WHEN k.usage_day IS NULL OR k.usage_day < b.day THEN b.dc \
                   WHEN k.usage_day = b.day THEN min(k.usage_day_count + b.dc, 9223372036854775807) \
                   ELSE k.usage_day_count END, \
                 usage_month_count = CASE \
                   WHEN k.usage_day IS NULL THEN b.mc \
                   WHEN substr(k.usage_day, 1, 7) = substr(b.day, 1, 7) \
                     THEN min(k.usage_month_count + b.mc, 9223372036854775807) \
                   WHEN k.usage_day < b.day THEN b.mc \
                   ELSE k.usage_month_count END, \
                 last_used_at = max(coalesce(k.last_used_at, b.lu), b.lu) \
                 FROM b WHERE k.id = b.id"
            );
            let mut q = sqlx::query(AssertSqlSafe(stmt));
            for f in chunk {
                q = q
                    .bind(f.id)
                    .bind(date_text(f.day))
                    .bind(f.day_count)
                    .bind(f.month_count)
                    .bind(micros(f.last_used_at));
            }
            q.execute(&mut *tx).await.map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store_error)
    }

    async fn one(
        &self,
        sql: &Arc<str>,
        bind: impl FnOnce(Q<'_>) -> Q<'_>,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let row = bind(sqlx::query(AssertSqlSafe(sql.clone())))
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.map(|r| decode(&r)).transpose()
    }

    async fn many(
        &self,
        sql: &Arc<str>,
        bind: impl FnOnce(Q<'_>) -> Q<'_>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = bind(sqlx::query(AssertSqlSafe(sql.clone())))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.iter().map(decode).collect()
    }

    async fn insert_in(
        &self,
        tx: &mut SqliteConnection,
        record: &KeyRecord,
    ) -> Result<(), StoreError> {
        let mut q = sqlx::query(AssertSqlSafe(self.sql.insert.clone()));
        for (_, v) in values(record) {
            q = bind(q, v);
        }
        q.execute(tx).await.map_err(store_error)?;
        Ok(())
    }

    /// `update` (expected `None`) or `update_if` in `tx`; returns the stored
    /// record.
    async fn replace_in(
        &self,
        tx: &mut SqliteConnection,
        record: &KeyRecord,
        expected: Option<u64>,
    ) -> Result<KeyRecord, StoreError> {
        let sql = if expected.is_some() {
            &self.sql.update_if
        } else {
            &self.sql.update
        };
        let mut q = sqlx::query(AssertSqlSafe(sql.clone())).bind(id_to_sql(record.id));
        for (c, v) in values(record) {
            if replaced(c) {
                q = bind(q, v);
            }
        }
        if let Some(e) = expected {
            q = q.bind(e as i64).bind(e.wrapping_add(1) as i64);
        }
        match q.fetch_optional(&mut *tx).await.map_err(store_error)? {
            Some(row) => decode(&row),
            None => {
                let found: Option<i64> =
                    sqlx::query_scalar(AssertSqlSafe(self.sql.revision_of.clone()))
                        .bind(id_to_sql(record.id))
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(store_error)?;
                Err(StoreError::new(if found.is_some() {
                    StoreErrorKind::Conflict
                } else {
                    StoreErrorKind::NotFound
                }))
            }
        }
    }

    async fn revoke(
        &self,
        sql: &Arc<str>,
        revocation: &Revocation,
        bind_rest: impl FnOnce(Q<'_>) -> Q<'_>,
    ) -> Result<Vec<KeyId>, StoreError> {
        let mut tx = self.begin().await?;
        let q = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(micros(revocation.at))
            .bind(revocation.reason.clone());
        let rows = bind_rest(q)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        let mut changed = rows
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(1)?, r.try_get::<i64, _>(0)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(store_error)?;
        changed.sort_unstable();
        Ok(changed.into_iter().map(|(_, id)| id_from_sql(id)).collect())
    }
}

type Q<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

fn bind(q: Q<'_>, v: Val) -> Q<'_> {
    match v {
        Val::Int(x) => q.bind(x),
        Val::Small(x) => q.bind(x.map(i64::from)),
        Val::Text(x) => q.bind(x),
        Val::Bytes(x) => q.bind(x),
        Val::Bool(x) => q.bind(x),
        Val::Time(x) => q.bind(x.map(micros)),
        Val::Date(x) => q.bind(x.map(date_text)),
        Val::Json(x) => q.bind(x),
        Val::List(x) => q.bind(list_json(x)),
    }
}

fn date_text(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
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
    let time = |c: &str| -> Result<Option<OffsetDateTime>, StoreError> {
        match row.try_get::<Option<i64>, _>(c).map_err(store_error)? {
            None => Ok(None),
            Some(v) => from_micros(v)
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
    let usage_day = match row.try_get::<Option<String>, _>("usage_day").map_err(g)? {
        None => None,
        Some(s) => Some(parse_date(&s).ok_or_else(|| crate::codec::corrupt("usage_day"))?),
    };
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
        usage_day,
        usage_day_count: row.try_get("usage_day_count").map_err(g)?,
        usage_month_count: row.try_get("usage_month_count").map_err(g)?,
        legacy_prefix: row.try_get("legacy_prefix").map_err(g)?,
        legacy_index: row.try_get("legacy_index").map_err(g)?,
        legacy_index_version: row.try_get("legacy_index_version").map_err(g)?,
        legacy_upgraded: row.try_get("legacy_upgraded").map_err(g)?,
    }
    .into_record()
}

/// The schema, one entry per version (entry `i` is version `i + 1`).
/// Released entries never change; an upgrade appends one.
fn migrations(p: &str) -> Vec<Vec<String>> {
    vec![vec![
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
    ]]
}

impl KeyStore for SqliteStore {
    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        let r = bounded(
            self.timeout,
            self.one(&self.sql.fetch, |q| q.bind(id_to_sql(id))),
        )
        .await?;
        Ok(r.map(|r| Arc::new(KeyView::from_record(&r))))
    }

    async fn find_legacy(&self, index: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        let bytes = index.as_bytes().to_vec();
        bounded(
            self.timeout,
            self.one(&self.sql.find_legacy, |q| q.bind(bytes)),
        )
        .await
    }
}

impl KeyStoreQuery for SqliteStore {
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        bounded(
            self.timeout,
            self.one(&self.sql.fetch, |q| q.bind(id_to_sql(id))),
        )
        .await
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let owner = owner.to_owned();
        bounded(
            self.timeout,
            self.many(&self.sql.list_by_owner, |q| q.bind(owner)),
        )
        .await
    }

    async fn list_expiring(
        &self,
        owner: Option<&str>,
        window: Range<OffsetDateTime>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let (s, e) = (micros(window.start), micros(window.end));
        match owner {
            Some(o) => {
                let o = o.to_owned();
                let sql = &self.sql.list_expiring_owner;
                bounded(
                    self.timeout,
                    self.many(sql, move |q| q.bind(s).bind(e).bind(o)),
                )
                .await
            }
            None => {
                let sql = &self.sql.list_expiring_all;
                bounded(self.timeout, self.many(sql, move |q| q.bind(s).bind(e))).await
            }
        }
    }
}

impl KeyStoreWrite for SqliteStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        record.validate().map_err(invalid)?;
        bounded(self.timeout, async {
            let mut tx = self.begin().await?;
            self.insert_in(&mut tx, &record).await?;
            tx.commit().await.map_err(store_error)
        })
        .await
    }

    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        record.validate().map_err(invalid)?;
        bounded(self.timeout, async {
            let mut tx = self.begin().await?;
            self.replace_in(&mut tx, &record, None).await?;
            tx.commit().await.map_err(store_error)
        })
        .await
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        bounded(self.timeout, async {
            let mut tx = self.begin().await?;
            let links = sqlx::query(AssertSqlSafe(self.sql.delete.clone()))
                .bind(id_to_sql(id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
            let Some(links) = links else {
                return Ok(false);
            };
            let from: Option<i64> = links.try_get(0).map_err(store_error)?;
            let to: Option<i64> = links.try_get(1).map_err(store_error)?;
            if from.is_some() || to.is_some() {
                sqlx::query(AssertSqlSafe(self.sql.unlink.clone()))
                    .bind(id_to_sql(id))
                    .bind(from)
                    .bind(to)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
            tx.commit().await.map_err(store_error)?;
            Ok(true)
        })
        .await
    }
}

impl KeyStoreLifecycle for SqliteStore {
    async fn insert_limited(
        &self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        record.validate().map_err(invalid)?;
        bounded(self.timeout, async {
            // BEGIN IMMEDIATE: the write lock is held from the count to the
            // insert, across every process using the file.
            let mut tx = self.begin().await?;
            if let Some(owner) = &record.owner {
                let active: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql.count_active.clone()))
                    .bind(owner.clone())
                    .bind(micros(now))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(store_error)?;
                let active = u32::try_from(active).unwrap_or(u32::MAX);
                if active >= max {
                    return Ok(LimitedInsert::LimitReached { active });
                }
            }
            self.insert_in(&mut tx, &record).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(LimitedInsert::Inserted)
        })
        .await
    }

    async fn update_if(&self, record: KeyRecord, expected: u64) -> Result<KeyRecord, StoreError> {
        record.validate().map_err(invalid)?;
        bounded(self.timeout, async {
            let mut tx = self.begin().await?;
            let stored = self.replace_in(&mut tx, &record, Some(expected)).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(stored)
        })
        .await
    }

    async fn update_limited(
        &self,
        record: KeyRecord,
        expected: u64,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedUpdate, StoreError> {
        record.validate().map_err(invalid)?;
        bounded(self.timeout, async {
            let mut tx = self.begin().await?;
            if let Some(owner) = &record.owner
                && record.counts_toward_limit(now)
            {
                let state = sqlx::query(AssertSqlSafe(self.sql.stored_state.clone()))
                    .bind(id_to_sql(record.id))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound))?;
                let revision: i64 = state.try_get(0).map_err(store_error)?;
                if revision as u64 != expected {
                    return Err(StoreError::new(StoreErrorKind::Conflict));
                }
                let stored_owner: Option<String> = state.try_get(1).map_err(store_error)?;
                let status: String = state.try_get(2).map_err(store_error)?;
                let expires: Option<i64> = state.try_get(3).map_err(store_error)?;
                let rotated_to: Option<i64> = state.try_get(4).map_err(store_error)?;
                let counted = status != "revoked"
                    && expires.is_none_or(|e| e > micros(now))
                    && rotated_to.is_none();
                if !(counted && stored_owner.as_deref() == Some(owner.as_str())) {
                    let active: i64 =
                        sqlx::query_scalar(AssertSqlSafe(self.sql.count_active_except.clone()))
                            .bind(owner.clone())
                            .bind(micros(now))
                            .bind(id_to_sql(record.id))
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(store_error)?;
                    let active = u32::try_from(active).unwrap_or(u32::MAX);
                    if active >= max {
                        return Ok(LimitedUpdate::LimitReached { active });
                    }
                }
            }
            let stored = self.replace_in(&mut tx, &record, Some(expected)).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(LimitedUpdate::Updated(stored))
        })
        .await
    }

    async fn rotate(
        &self,
        predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        predecessor.validate().map_err(invalid)?;
        successor.validate().map_err(invalid)?;
        if predecessor.id == successor.id {
            return Err(StoreError::new(StoreErrorKind::IdCollision));
        }
        bounded(self.timeout, async {
            let mut tx = self.begin().await?;
            let p = self
                .replace_in(&mut tx, &predecessor, Some(expected))
                .await?;
            self.insert_in(&mut tx, &successor).await?;
            // A chain never has more than two working keys: the
            // predecessor's own predecessor stops at this rotation.
            if let Some(before) = p.rotated_from {
                sqlx::query(AssertSqlSafe(self.sql.end_grace.clone()))
                    .bind(micros(successor.created_at))
                    .bind(id_to_sql(before))
                    .bind(id_to_sql(p.id))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
            tx.commit().await.map_err(store_error)?;
            Ok((p, successor.clone()))
        })
        .await
    }

    async fn revoke_owner(
        &self,
        owner: &str,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        let owner = owner.to_owned();
        bounded(
            self.timeout,
            self.revoke(&self.sql.revoke_owner, &revocation, |q| q.bind(owner)),
        )
        .await
    }

    async fn revoke_matching(
        &self,
        prefix: &Prefix,
        created: Range<OffsetDateTime>,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        let prefix = prefix.as_str().to_owned();
        let (s, e) = (micros(created.start), micros(created.end));
        bounded(
            self.timeout,
            self.revoke(&self.sql.revoke_matching, &revocation, |q| {
                q.bind(prefix).bind(s).bind(e)
            }),
        )
        .await
    }
}

impl UsageStore for SqliteStore {
    /// Exactly once: the batch's flush id is inserted into
    /// `apikey_usage_flushes` in the same transaction as the deltas (a
    /// replay finds it and writes nothing); ids are kept for
    /// [`FLUSH_RETENTION`].
    async fn record_usage(&self, batch: &UsageBatch) -> Result<FlushOutcome, StoreError> {
        let applied = bounded(
            self.timeout,
            self.usage(Some(batch.id.as_u128()), &batch.deltas),
        )
        .await?;
        Ok(if applied {
            FlushOutcome::Applied
        } else {
            FlushOutcome::AlreadyApplied
        })
    }
}

/// Whether `e` is SQLite's `SQLITE_BUSY` / `SQLITE_LOCKED` (codes 5 and 6).
fn is_busy(e: &MigrateError) -> bool {
    match e {
        MigrateError::Database(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("5" | "6" | "517" | "261"))
        }
        _ => false,
    }
}
