//! [`PostgresStore`]: keys shared by many instances. This file holds the
//! PostgreSQL dialect only; the store itself is [`crate::store`].

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use apikey::{Invalidation, KeyRecord, StoreError};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row as _};

use crate::backend::{Backend, Col, UsageDay, UsageKey};
use crate::codec::Row;
use crate::columns::Val;
use crate::error::{MigrateError, bounded, check_ident, database, store_error};
use crate::options::StoreOptions;
use crate::pgtime::{PgMicros, date_of, time_of};
use crate::store::{Store, store_traits};

/// A key store in PostgreSQL, for several instances of a service sharing
/// their keys.
///
/// * Each write is one transaction (`READ COMMITTED`).
/// * A commit with an owner guard takes
///   `pg_advisory_xact_lock(<table>, hashtext(owner))` before it reads the
///   owner's version, so commits on one owner run one after the other
///   across every process and host using the database; `<table>` is
///   derived from the schema the server resolves the key table to
///   (resolved once per store), so instances spelling the tables
///   differently (an explicit schema, `search_path`) share it, as they
///   share [`channel`](Self::channel). A deadlock or serialization failure
///   the server reports is `StoreErrorKind::Conflict` (the caller plans
///   again).
/// * The usage flush is four statements whatever the batch size: it locks
///   the batch's key rows in id order (`SELECT ... FOR UPDATE`, so
///   concurrent flushes never deadlock), adds to the day rows, raises
///   `last_used_at` and drops day rows past the kept window, from `UNNEST`
///   arrays.
/// * Every call is bounded by [`StoreOptions::timeout`] (and
///   [`connect`](Self::connect) also sets the server's `statement_timeout`).
///
/// Change notification: every write except the usage flush runs through
/// one transaction with a single place (`announce`) where a
/// `pg_notify` for the changed ids (or, for bulk revocations, the
/// predicate) goes, so a read-through cache can subscribe with `LISTEN`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use apikey::KeyStore;
/// use apikey_sqlx::PostgresStore;
/// let store = PostgresStore::connect("postgres://app@localhost/app").await?; // runs migrate()
/// let _ = store.fetch(apikey::KeyId::from_u64(1)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresStore {
    inner: Arc<Store<PgDb>>,
}

/// The owner-limit lock class and the `LISTEN` channel of one table set,
/// derived from the schema PostgreSQL resolves the key table to (not from
/// the configured spelling), so every instance reaching the same tables,
/// through an explicit schema or through `search_path`, shares both.
#[derive(Debug)]
struct Identity {
    /// Advisory lock class (first key of the two-key form).
    lock_class: i32,
    /// `LISTEN` channel.
    channel: Box<str>,
}

impl Identity {
    /// The identity of the tables `<schema>.<prefix>apikey_*`.
    fn of(schema: &str, prefix: &str) -> Self {
        let h = fnv(&format!("{schema}.{prefix}"));
        Self {
            lock_class: h as i32,
            channel: format!("apikey_changes_{h:016x}").into(),
        }
    }
}

/// FNV-1a: a stable hash for advisory lock keys.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A pooled connection idle for longer than this is pinged before use
/// (see [`PostgresStore::connect_with`]).
const IDLE_PING_AFTER: Duration = Duration::from_secs(1);

/// Why a pool over `connect` could not open its first connection. sqlx's
/// pool retries until its timeout and then says only that it timed out
/// (`PoolTimedOut`): one direct attempt, bounded by `timeout`, names the
/// cause (connection refused, authentication failed, no such database).
/// Any other error is returned as it is. For pools you build yourself, as
/// [`connect_with`](PostgresStore::connect_with) does for its own.
pub async fn connect_error(
    error: sqlx::Error,
    connect: &PgConnectOptions,
    timeout: Duration,
) -> sqlx::Error {
    if !matches!(error, sqlx::Error::PoolTimedOut) {
        return error;
    }
    match tokio::time::timeout(
        timeout,
        <PgConnection as sqlx::Connection>::connect_with(connect),
    )
    .await
    {
        Ok(Err(cause)) => cause,
        _ => error,
    }
}

impl PostgresStore {
    /// The schema version [`migrate`](Self::migrate) brings the tables to
    /// (stored in `<schema.prefix>apikey_schema_version`; a database at a
    /// newer one is refused with [`MigrateError::SchemaTooNew`]).
    pub const SCHEMA_VERSION: i64 = crate::store::SCHEMA_VERSION;

    /// Connects to `url` (a pool of 10 connections, each with
    /// `statement_timeout` at the default [`StoreOptions::timeout`]) and
    /// runs [`migrate`](Self::migrate).
    ///
    /// The pool pings a connection before handing it out only when it sat
    /// idle for more than a second (sqlx's default pings every one: a second
    /// round trip per verification). A connection that broke while in use
    /// fails its one call with `StoreUnavailable` (503, never "valid") and
    /// is dropped; a pool of your own ([`from_pool`](Self::from_pool))
    /// keeps its settings.
    ///
    /// # Errors
    /// [`MigrateError`] when the server cannot be reached or migrated.
    pub async fn connect(url: &str) -> Result<Self, MigrateError> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// As [`connect`](Self::connect) with `options`.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); [`MigrateError::InvalidName`].
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self, MigrateError> {
        let ms = options.timeout.as_millis().to_string();
        let connect = PgConnectOptions::from_str(url)
            .map_err(database)?
            .options([("statement_timeout", ms.as_str())])
            .application_name("apikey-sqlx");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(options.timeout)
            // sqlx pings every connection before handing it out by default:
            // a second round trip on every call (issue 23: uncached p50
            // 66-75 us with it, 44-63 us without, at 1,000 keys). Only a
            // connection idle for longer than `IDLE_PING_AFTER` (which a
            // server restart may have broken unseen) is pinged; one broken
            // while in use fails its call with `StoreUnavailable` (never
            // "valid") and is closed when released (sqlx tests it then).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_PING_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(connect.clone())
            .await;
        let pool = match pool {
            Ok(pool) => pool,
            Err(e) => return Err(database(connect_error(e, &connect, options.timeout).await)),
        };
        let store = Self::from_pool_with(pool, options)?;
        store.migrate().await?;
        Ok(store)
    }

    /// A store over your pool, default options. Does not migrate: call
    /// [`migrate`](Self::migrate).
    pub fn from_pool(pool: PgPool) -> Self {
        Self::build(pool, StoreOptions::default())
    }

    /// As [`from_pool`](Self::from_pool) with `options`.
    ///
    /// # Errors
    /// [`MigrateError::InvalidName`] for a bad schema or table prefix.
    pub fn from_pool_with(pool: PgPool, options: StoreOptions) -> Result<Self, MigrateError> {
        check_ident(&options.table_prefix, "table prefix", 32)?;
        if let Some(s) = &options.schema {
            check_ident(s, "schema", 63)?;
            if s.is_empty() || s.starts_with("pg_") {
                return Err(MigrateError::InvalidName(
                    "a schema name is not empty and does not start with `pg_`".into(),
                ));
            }
        }
        Ok(Self::build(pool, options))
    }

    fn build(pool: PgPool, options: StoreOptions) -> Self {
        let tables = match &options.schema {
            Some(s) => format!("{s}.{}", options.table_prefix),
            None => options.table_prefix.clone(),
        };
        let db = PgDb {
            pool,
            tables,
            prefix: options.table_prefix,
            schema: options.schema,
            identity: OnceLock::new(),
        };
        Self {
            inner: Arc::new(Store::new(db, options.timeout)),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.backend.pool
    }

    /// Creates or upgrades the tables to the newest schema this crate
    /// knows, in one transaction under an advisory lock on the target
    /// schema (instances that start together migrate once, and table sets
    /// with other prefixes migrating into the same schema wait their turn;
    /// DDL is transactional in PostgreSQL). Then resolves the tables'
    /// identity (see [`channel`](Self::channel)).
    /// Versions are kept in `<schema.prefix>apikey_schema_version`, apart
    /// from sqlx's `_sqlx_migrations`.
    ///
    /// # Errors
    /// [`MigrateError::SchemaTooNew`] when a newer release migrated the
    /// database (nothing is changed); [`MigrateError::Database`].
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        self.inner.migrate().await
    }

    /// The `LISTEN` channel this store announces its changes on: one per
    /// table set, derived from the schema PostgreSQL resolves the key table
    /// to (so an instance naming the schema and one reaching it through
    /// `search_path` share it). Resolved once, by [`migrate`](Self::migrate)
    /// or the first use.
    ///
    /// # Errors
    /// `StoreErrorKind::Unavailable` when the server cannot be asked or the
    /// key table does not exist (not migrated).
    pub async fn channel(&self) -> Result<&str, StoreError> {
        let db = &self.inner.backend;
        bounded(self.inner.timeout(), async {
            let mut conn = db.pool.acquire().await.map_err(store_error)?;
            Ok(&*db.identity(&mut conn).await.map_err(store_error)?.channel)
        })
        .await
    }
}

store_traits!(PostgresStore);

/// The PostgreSQL dialect.
#[derive(Debug)]
pub(crate) struct PgDb {
    pool: PgPool,
    /// `schema.` (or empty) followed by the table prefix.
    tables: String,
    /// The table prefix alone.
    prefix: String,
    /// The configured schema, if any.
    schema: Option<String>,
    /// What the tables are, resolved by the server (see `identity`).
    identity: OnceLock<Identity>,
}

type Tx = sqlx::Transaction<'static, Postgres>;

impl PgDb {
    /// The identity of this store's tables, resolved once: the schema
    /// holding `<prefix>apikey_keys` as PostgreSQL resolves the name (the
    /// configured schema, or the connection's `search_path`). Asked on
    /// `conn` (a write asks on its own transaction's connection, so a full
    /// pool never waits for a second one).
    async fn identity(&self, conn: &mut PgConnection) -> Result<&Identity, sqlx::Error> {
        if let Some(i) = self.identity.get() {
            return Ok(i);
        }
        let table = format!("{}apikey_keys", self.tables);
        let schema: Option<String> = sqlx::query_scalar(
            "SELECT n.nspname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
        )
        .bind(&table)
        .fetch_optional(conn)
        .await?;
        let schema = schema.ok_or_else(|| {
            sqlx::Error::Configuration(
                format!("the key table {table} does not exist: run migrate").into(),
            )
        })?;
        Ok(self
            .identity
            .get_or_init(|| Identity::of(&schema, &self.prefix)))
    }
}

impl Backend for PgDb {
    type Tx = Tx;

    fn ph(i: usize, col: &str) -> String {
        match col {
            "metadata" => format!("${i}::jsonb"),
            _ => format!("${i}"),
        }
    }

    fn sel(col: &str) -> String {
        match col {
            "metadata" => "metadata::text AS metadata".to_owned(),
            _ => col.to_owned(),
        }
    }

    const ROW_LOCK: &'static str = " FOR UPDATE";

    fn tables(&self) -> &str {
        &self.tables
    }

    async fn begin(&self) -> Result<Tx, StoreError> {
        self.pool.begin().await.map_err(store_error)
    }

    async fn commit(tx: Tx) -> Result<(), StoreError> {
        tx.commit().await.map_err(store_error)
    }

    type Row = PgRow;

    async fn fetch(
        &self,
        tx: Option<&mut Tx>,
        sql: &Arc<str>,
        binds: Vec<Val>,
    ) -> Result<Vec<PgRow>, StoreError> {
        let q = binds.into_iter().fold(query(sql), bind);
        let rows = match tx {
            Some(tx) => q.fetch_all(&mut **tx).await,
            None => q.fetch_all(&self.pool).await,
        };
        rows.map_err(store_error)
    }

    fn decode(row: &PgRow) -> Result<KeyRecord, StoreError> {
        decode(row)
    }

    fn col(row: &PgRow, i: usize, col: Col) -> Result<Val, StoreError> {
        match col {
            Col::Int => row.try_get(i).map(Val::Int).map_err(store_error),
            Col::Micros => row
                .try_get::<Option<PgMicros>, _>(i)
                .map(|m| Val::Int(m.map(PgMicros::unix)))
                .map_err(store_error),
            Col::Date => date_of(row.try_get(i).map_err(store_error)?, "day").map(Val::Date),
        }
    }

    async fn execute(tx: &mut Tx, sql: &Arc<str>, binds: Vec<Val>) -> Result<u64, StoreError> {
        let q = binds.into_iter().fold(query(sql), bind);
        let done = q.execute(&mut **tx).await.map_err(store_error)?;
        Ok(done.rows_affected())
    }

    /// `pg_advisory_xact_lock(<table set>, hashtext(owner))`.
    async fn lock_owner(&self, tx: &mut Tx, owner: &str) -> Result<(), StoreError> {
        // Serializes every guarded commit of this owner, in every process,
        // until commit; READ COMMITTED then reads the version the previous
        // holder committed.
        let class = self.identity(tx).await.map_err(store_error)?.lock_class;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(class)
            .bind(owner)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// The one place a committed change is announced to listeners:
    /// `SELECT pg_notify(channel, payload)` in `tx`, so PostgreSQL delivers
    /// it exactly when the change commits, and never for a rolled-back one.
    /// The payload is one key list, owner or prefix window, or `*` (flush
    /// everything) when it would not fit NOTIFY's 8,000 bytes.
    async fn announce(&self, tx: &mut Tx, change: &Invalidation) -> Result<(), StoreError> {
        let channel = &self.identity(tx).await.map_err(store_error)?.channel;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&**channel)
            .bind(crate::notify::encode(change))
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Four statements whatever the batch size: the batch's key rows
    /// locked in id order (concurrent flushes never deadlock), then one
    /// upsert of the day rows, one `UPDATE` of `last_used_at` and one
    /// `DELETE` of day rows before each key's horizon, from `UNNEST` arrays.
    async fn add_usage(
        &self,
        tx: &mut Tx,
        days: Vec<UsageDay>,
        keys: Vec<UsageKey>,
    ) -> Result<(), StoreError> {
        let t = &self.tables;
        let ids: Vec<i64> = keys.iter().map(|k| k.id).collect();
        sqlx::query(AssertSqlSafe(format!(
            "SELECT 1 FROM {t}apikey_keys WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        )))
        .bind(&ids)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        // Ids without a key row are skipped (the join).
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {t}apikey_usage_days AS u (key_id, day, count) \
             SELECT b.id, b.day, b.n FROM UNNEST($1::int8[], $2::date[], $3::int8[]) AS b(id, day, n) \
             JOIN {t}apikey_keys k ON k.id = b.id \
             ON CONFLICT (key_id, day) DO UPDATE SET \
             count = LEAST(u.count::numeric + excluded.count, 9223372036854775807)::int8"
        )))
        .bind(days.iter().map(|d| d.id).collect::<Vec<_>>())
        .bind(days.iter().map(|d| d.day).collect::<Vec<_>>())
        .bind(days.iter().map(|d| d.count).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {t}apikey_keys AS k SET last_used_at = GREATEST(k.last_used_at, b.lu), \
             last_used_ip = CASE WHEN k.last_used_at IS NULL OR b.lu >= k.last_used_at \
             THEN b.ip ELSE k.last_used_ip END, \
             last_used_route = CASE WHEN k.last_used_at IS NULL OR b.lu >= k.last_used_at \
             THEN b.route ELSE k.last_used_route END \
             FROM UNNEST($1::int8[], $2::timestamptz[], $3::text[], $4::text[]) AS b(id, lu, ip, route) \
             WHERE k.id = b.id"
        )))
        .bind(&ids)
        .bind(
            keys.iter()
                .map(|k| k.last_used_at.to_datetime())
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|k| k.ip.as_deref()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.route.as_deref()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {t}apikey_usage_days AS u USING UNNEST($1::int8[], $2::date[]) AS b(id, h) \
             WHERE u.key_id = b.id AND u.day < b.h"
        )))
        .bind(&ids)
        .bind(keys.iter().map(|k| k.horizon).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn begin_migration(&self) -> Result<Tx, StoreError> {
        let mut tx = self.begin().await?;
        // One lock per schema the tables go to (the configured one, or the
        // one `search_path` creates them in), whatever the table prefix:
        // `CREATE SCHEMA IF NOT EXISTS` and `CREATE TABLE IF NOT EXISTS`
        // are not safe against a concurrent creation of the same name (a
        // unique violation in the catalog), so every migration into one
        // schema runs after the other.
        let target: String =
            sqlx::query_scalar("SELECT coalesce($1::text, current_schema()::text, '')")
                .bind(self.schema.as_deref())
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(fnv(&format!("apikey-sqlx migrate schema {target}")) as i64)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if let Some((schema, _)) = self.tables.split_once('.') {
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        Ok(tx)
    }

    fn version_table(&self) -> String {
        let q = &self.tables;
        format!(
            "CREATE TABLE IF NOT EXISTS {q}apikey_schema_version \
             (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
    }

    fn migrations(&self) -> Vec<Vec<String>> {
        migrations(&self.tables)
    }

    /// Resolves the tables' identity (see [`PostgresStore::channel`]).
    async fn migrated(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        self.identity(&mut conn).await.map_err(store_error)?;
        Ok(())
    }
}

type Q<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

fn query(sql: &Arc<str>) -> Q<'static> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

fn bind(q: Q<'_>, v: Val) -> Q<'_> {
    match v {
        Val::Int(x) => q.bind(x),
        Val::Small(x) => q.bind(x),
        Val::Text(x) => q.bind(x),
        Val::Bytes(x) => q.bind(x),
        Val::Bool(x) => q.bind(x),
        Val::Time(x) => q.bind(x.map(apikey::Timestamp::to_datetime)),
        Val::Date(x) => q.bind(x),
        Val::Json(x) => q.bind(x),
        Val::List(x) => q.bind(x),
    }
}

/// Decodes one row; any bad value is `Corrupt`, never a panic (times go
/// through [`time_of`] / [`date_of`]: never sqlx's panicking `time` decoding).
fn decode(row: &PgRow) -> Result<KeyRecord, StoreError> {
    let g = store_error;
    Row {
        id: row.try_get("id").map_err(g)?,
        prefix: row.try_get("prefix").map_err(g)?,
        environment: row.try_get("environment").map_err(g)?,
        owner: row.try_get("owner").map_err(g)?,
        name: row.try_get("name").map_err(g)?,
        description: row.try_get("description").map_err(g)?,
        secret_version: i64::from(row.try_get::<i16, _>("secret_version").map_err(g)?),
        digest: row.try_get("digest").map_err(g)?,
        scopes: row.try_get("scopes").map_err(g)?,
        created_at: time_of(row.try_get("created_at").map_err(g)?, "created_at")?,
        expires_at: time_of(row.try_get("expires_at").map_err(g)?, "expires_at")?,
        not_before: time_of(row.try_get("not_before").map_err(g)?, "not_before")?,
        status: row.try_get("status").map_err(g)?,
        revoked_at: time_of(row.try_get("revoked_at").map_err(g)?, "revoked_at")?,
        revocation_reason: row.try_get("revocation_reason").map_err(g)?,
        last_used_at: time_of(row.try_get("last_used_at").map_err(g)?, "last_used_at")?,
        metadata: row.try_get("metadata").map_err(g)?,
        rotated_from: row.try_get("rotated_from").map_err(g)?,
        rotated_to: row.try_get("rotated_to").map_err(g)?,
        revision: row.try_get("revision").map_err(g)?,
        ip_allowlist: row.try_get("ip_allowlist").map_err(g)?,
        legacy_prefix: row.try_get("legacy_prefix").map_err(g)?,
        legacy_index: row.try_get("legacy_index").map_err(g)?,
        legacy_index_version: row
            .try_get::<Option<i16>, _>("legacy_index_version")
            .map_err(g)?
            .map(i64::from),
        legacy_upgraded: row.try_get("legacy_upgraded").map_err(g)?,
        last_used_ip: row.try_get("last_used_ip").map_err(g)?,
        last_used_route: row.try_get("last_used_route").map_err(g)?,
    }
    .into_record()
}

/// The schema, one entry per version (entry `i` is version `i + 1`).
/// Released entries never change; an upgrade appends one.
fn migrations(q: &str) -> Vec<Vec<String>> {
    // Index names are not schema-qualified in CREATE INDEX.
    let p = q.rsplit_once('.').map_or(q, |(_, p)| p);
    vec![
        vec![
            format!(
                "CREATE TABLE {q}apikey_keys (
    id                   bigint PRIMARY KEY,  -- key id with the sign bit flipped (order-preserving)
    prefix               text NOT NULL,
    environment          text NOT NULL,       -- 'live' | 'test'
    owner                text,
    name                 text NOT NULL,
    description          text,
    secret_version       smallint NOT NULL,
    digest               bytea NOT NULL,      -- 32-byte keyed digest (never the secret)
    scopes               text[] NOT NULL,
    created_at           timestamptz NOT NULL,
    expires_at           timestamptz,
    not_before           timestamptz,
    status               text NOT NULL,       -- 'active' | 'disabled' | 'revoked'
    revoked_at           timestamptz,
    revocation_reason    text,
    last_used_at         timestamptz,
    metadata             jsonb NOT NULL,      -- object of strings
    rotated_from         bigint,
    rotated_to           bigint,
    revision             bigint NOT NULL,
    ip_allowlist         text[] NOT NULL,     -- CIDR strings
    usage_day            date,                -- UTC
    usage_day_count      bigint NOT NULL,
    usage_month_count    bigint NOT NULL,
    legacy_prefix        text,
    legacy_index         bytea,
    legacy_index_version smallint,
    legacy_upgraded      boolean
)"
            ),
            format!("CREATE INDEX {p}apikey_keys_owner ON {q}apikey_keys (owner, created_at, id)"),
            format!(
                "CREATE INDEX {p}apikey_keys_expires ON {q}apikey_keys (expires_at) WHERE expires_at IS NOT NULL"
            ),
            format!("CREATE UNIQUE INDEX {p}apikey_keys_legacy ON {q}apikey_keys (legacy_index)"),
            format!(
                "CREATE INDEX {p}apikey_keys_prefix_created ON {q}apikey_keys (prefix, created_at)"
            ),
            format!(
                "CREATE TABLE {q}apikey_usage_flushes (flush_id bytea PRIMARY KEY, applied_at timestamptz NOT NULL)"
            ),
            format!(
                "CREATE INDEX {p}apikey_usage_flushes_applied ON {q}apikey_usage_flushes (applied_at)"
            ),
        ],
        vec![
            // 2: owner guards, additive per-day usage (the old counters move
            // there: the day's count on its day, the rest of the month's count
            // on the first of that month).
            format!(
                "CREATE TABLE {q}apikey_owners (owner text PRIMARY KEY, version bigint NOT NULL)"
            ),
            format!(
                "CREATE TABLE {q}apikey_usage_days (key_id bigint NOT NULL, day date NOT NULL, \
             count bigint NOT NULL, PRIMARY KEY (key_id, day))"
            ),
            format!("CREATE INDEX {p}apikey_usage_days_day ON {q}apikey_usage_days (day)"),
            format!(
                "INSERT INTO {q}apikey_usage_days (key_id, day, count) \
             SELECT id, usage_day, usage_day_count FROM {q}apikey_keys \
             WHERE usage_day IS NOT NULL AND usage_day_count > 0"
            ),
            format!(
                "INSERT INTO {q}apikey_usage_days AS u (key_id, day, count) \
             SELECT id, date_trunc('month', usage_day)::date, usage_month_count - usage_day_count \
             FROM {q}apikey_keys WHERE usage_day IS NOT NULL AND usage_month_count > usage_day_count \
             ON CONFLICT (key_id, day) DO UPDATE SET count = u.count + excluded.count"
            ),
            format!(
                "ALTER TABLE {q}apikey_keys DROP COLUMN usage_day, DROP COLUMN usage_day_count, \
             DROP COLUMN usage_month_count"
            ),
        ],
        vec![
            // 3: the address and route of the last use, next to
            // `last_used_at` (written by the usage flush only).
            format!(
                "ALTER TABLE {q}apikey_keys ADD COLUMN last_used_ip text, \
             ADD COLUMN last_used_route text"
            ),
        ],
    ]
}
