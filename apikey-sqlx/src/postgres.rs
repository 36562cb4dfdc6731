//! [`PostgresStore`]: keys shared by many instances.

use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use apikey::{
    FlushOutcome, KeyDigest, KeyId, KeyRecord, KeyStore, KeyStoreLifecycle, KeyStoreQuery,
    KeyStoreWrite, KeyView, LimitedInsert, LimitedUpdate, Prefix, Revocation, StoreError,
    StoreErrorKind, UsageBatch, UsageDelta, UsageStore,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row as _};
use time::OffsetDateTime;

use crate::codec::{Row, fold_usage, id_from_sql, id_to_sql, invalid, trunc};
use crate::columns::{Val, replaced, values};
use crate::error::{MigrateError, bounded, check_ident, store_error};
use crate::pgtime::{PgMicros, date_of, time_of};
use crate::sql::{Dialect, Sql};
use crate::{FLUSH_RETENTION, StoreOptions};

/// The newest schema version this crate writes.
const LATEST: i64 = 1;

/// A key store in PostgreSQL, for several instances of a service sharing
/// their keys.
///
/// * Each compound write is one transaction (`READ COMMITTED`).
/// * `insert_limited` takes `pg_advisory_xact_lock(<table>, hashtext(owner))`
///   before it counts, so the owner limit holds across every process and
///   host using the database; `<table>` is derived from the schema the
///   server resolves the key table to (resolved once per store), so
///   instances spelling the tables differently (an explicit schema,
///   `search_path`) share it, as they share [`channel`](Self::channel).
/// * The usage flush is two statements whatever the batch size: it locks
///   the batch's rows in id order (`SELECT ... FOR UPDATE`, so concurrent
///   flushes never deadlock) and updates them from `UNNEST` arrays.
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
    pool: PgPool,
    sql: Arc<Sql>,
    /// `schema.` (or empty) followed by the table prefix.
    qualified: Arc<str>,
    /// The table prefix alone.
    prefix: Arc<str>,
    /// The configured schema, if any.
    schema: Option<Arc<str>>,
    timeout: Duration,
    /// What the tables are, resolved by the server (see `identity`).
    identity: Arc<OnceLock<Identity>>,
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

/// A change, as announced to listeners (see `announce` and
/// [`crate::feed`]).
#[derive(Debug)]
pub(crate) enum Change<'a> {
    Keys(&'a [KeyId]),
    Owner(&'a str),
    Matching(&'a str, Range<OffsetDateTime>),
}

/// FNV-1a: a stable hash for advisory lock keys.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl PostgresStore {
    /// Connects to `url` (a pool of 10 connections, each with
    /// `statement_timeout` at the default [`StoreOptions::timeout`]) and
    /// runs [`migrate`](Self::migrate).
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
        let connect = PgConnectOptions::from_str(url)?
            .options([("statement_timeout", ms.as_str())])
            .application_name("apikey-sqlx");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(options.timeout)
            .connect_with(connect)
            .await?;
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
        let qualified: Arc<str> = match &options.schema {
            Some(s) => format!("{s}.{}", options.table_prefix).into(),
            None => options.table_prefix.as_str().into(),
        };
        let sql = Sql::new(format!("{qualified}apikey_keys"), Dialect::Postgres);
        Self {
            pool,
            sql: Arc::new(sql),
            qualified,
            prefix: options.table_prefix.as_str().into(),
            schema: options.schema.as_deref().map(Arc::from),
            timeout: options.timeout,
            identity: Arc::default(),
        }
    }

    /// The identity of this store's tables, resolved once: the schema
    /// holding `<prefix>apikey_keys` as PostgreSQL resolves the name (the
    /// configured schema, or the connection's `search_path`). Asked on
    /// `conn` (a write asks on its own transaction's connection, so a full
    /// pool never waits for a second one).
    async fn identity(&self, conn: &mut PgConnection) -> Result<&Identity, sqlx::Error> {
        if let Some(i) = self.identity.get() {
            return Ok(i);
        }
        let table = format!("{}apikey_keys", self.qualified);
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

    /// [`channel`](Self::channel) for the feed, with sqlx's error.
    pub(crate) async fn resolved_channel(&self) -> Result<&str, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        Ok(&self.identity(&mut conn).await?.channel)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
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
        let q = &*self.qualified;
        let mut tx = self.pool.begin().await?;
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
                .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(fnv(&format!("apikey-sqlx migrate schema {target}")) as i64)
            .execute(&mut *tx)
            .await?;
        if let Some((schema, _)) = q.split_once('.') {
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {q}apikey_schema_version \
             (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )))
        .execute(&mut *tx)
        .await?;
        let found: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT max(version) FROM {q}apikey_schema_version"
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
        for (version, statements) in migrations(q).into_iter().enumerate() {
            let version = version as i64 + 1;
            if version <= found {
                continue;
            }
            for s in statements {
                sqlx::query(AssertSqlSafe(s)).execute(&mut *tx).await?;
            }
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {q}apikey_schema_version (version) VALUES ($1)"
            )))
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.identity(&mut *self.pool.acquire().await?).await?;
        Ok(())
    }

    async fn usage(
        &self,
        flush_id: Option<u128>,
        batch: &[UsageDelta],
    ) -> Result<bool, StoreError> {
        let mut folded = fold_usage(batch);
        folded.sort_unstable_by_key(|f| f.id);
        let q = &*self.qualified;
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        if let Some(fid) = flush_id {
            let added = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {q}apikey_usage_flushes (flush_id, applied_at) VALUES ($1, now()) \
                 ON CONFLICT DO NOTHING"
            )))
            .bind(fid.to_be_bytes().to_vec())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            if added.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {q}apikey_usage_flushes WHERE applied_at < now() - $1 * interval '1 second'"
            )))
            .bind(FLUSH_RETENTION.as_secs() as f64)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        if !folded.is_empty() {
            let k = &self.sql.keys;
            let ids: Vec<i64> = folded.iter().map(|f| f.id).collect();
            // Row locks in id order: two concurrent flushes never deadlock.
            sqlx::query(AssertSqlSafe(format!(
                "SELECT 1 FROM {k} WHERE id = ANY($1) ORDER BY id FOR UPDATE"
            )))
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            // `UsageCounters::apply` of each folded delta; see `fold_usage`.
            let stmt = format!(
                "UPDATE {k} AS k SET \
                 usage_day = CASE WHEN k.usage_day IS NULL OR k.usage_day < b.day THEN b.day ELSE k.usage_day END, \
                 usage_day_count = CASE \
                   WHEN k.usage_day IS NULL OR k.usage_day < b.day THEN b.dc \
                   WHEN k.usage_day = b.day THEN LEAST(k.usage_day_count::numeric + b.dc, 9223372036854775807)::int8 \
                   ELSE k.usage_day_count END, \
                 usage_month_count = CASE \
                   WHEN k.usage_day IS NULL THEN b.mc \
                   WHEN date_trunc('month', k.usage_day::timestamp) = date_trunc('month', b.day::timestamp) \
                     THEN LEAST(k.usage_month_count::numeric + b.mc, 9223372036854775807)::int8 \
                   WHEN k.usage_day < b.day THEN b.mc \
                   ELSE k.usage_month_count END, \
                 last_used_at = GREATEST(k.last_used_at, b.lu) \
                 FROM UNNEST($1::int8[], $2::date[], $3::int8[], $4::int8[], $5::timestamptz[]) \
                   AS b(id, day, dc, mc, lu) \
                 WHERE k.id = b.id"
            );
            sqlx::query(AssertSqlSafe(stmt))
                .bind(&ids)
                .bind(folded.iter().map(|f| f.day).collect::<Vec<_>>())
                .bind(folded.iter().map(|f| f.day_count).collect::<Vec<_>>())
                .bind(folded.iter().map(|f| f.month_count).collect::<Vec<_>>())
                .bind(
                    folded
                        .iter()
                        .map(|f| trunc(f.last_used_at))
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        // No `announce`: usage never invalidates a cached key.
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    /// The one place a committed change is announced to listeners:
    /// `SELECT pg_notify(channel, payload)` in `tx`, so PostgreSQL delivers
    /// it exactly when the change commits, and never for a rolled-back one.
    /// The payload is one key list, owner or prefix window, or `*` (flush
    /// everything) when it would not fit NOTIFY's 8,000 bytes.
    async fn announce(&self, tx: &mut PgConnection, change: Change<'_>) -> Result<(), StoreError> {
        let channel = &self.identity(&mut *tx).await.map_err(store_error)?.channel;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&**channel)
            .bind(crate::feed::encode(&change))
            .execute(tx)
            .await
            .map_err(store_error)?;
        Ok(())
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
        bounded(self.timeout, async {
            let mut conn = self.pool.acquire().await.map_err(store_error)?;
            Ok(&*self.identity(&mut conn).await.map_err(store_error)?.channel)
        })
        .await
    }

    /// The advisory lock class of this table set (see [`Identity`]).
    async fn lock_class(&self, tx: &mut PgConnection) -> Result<i32, StoreError> {
        Ok(self.identity(tx).await.map_err(store_error)?.lock_class)
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

    async fn insert_in(&self, tx: &mut PgConnection, record: &KeyRecord) -> Result<(), StoreError> {
        let mut q = sqlx::query(AssertSqlSafe(self.sql.insert.clone()));
        for (_, v) in values(record) {
            q = bind(q, v);
        }
        q.execute(tx).await.map_err(store_error)?;
        Ok(())
    }

    async fn replace_in(
        &self,
        tx: &mut PgConnection,
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
        change: Change<'_>,
        bind_rest: impl FnOnce(Q<'_>) -> Q<'_>,
    ) -> Result<Vec<KeyId>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let q = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(trunc(revocation.at))
            .bind(revocation.reason.clone());
        let rows = bind_rest(q)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        if !rows.is_empty() {
            self.announce(&mut tx, change).await?;
        }
        tx.commit().await.map_err(store_error)?;
        let mut changed = rows
            .iter()
            .map(|r| Ok((r.try_get::<PgMicros, _>(1)?, r.try_get::<i64, _>(0)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(store_error)?;
        changed.sort_unstable();
        Ok(changed.into_iter().map(|(_, id)| id_from_sql(id)).collect())
    }
}

type Q<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

fn bind(q: Q<'_>, v: Val) -> Q<'_> {
    match v {
        Val::Int(x) => q.bind(x),
        Val::Small(x) => q.bind(x),
        Val::Text(x) => q.bind(x),
        Val::Bytes(x) => q.bind(x),
        Val::Bool(x) => q.bind(x),
        Val::Time(x) => q.bind(x.map(trunc)),
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
        usage_day: date_of(row.try_get("usage_day").map_err(g)?, "usage_day")?,
        usage_day_count: row.try_get("usage_day_count").map_err(g)?,
        usage_month_count: row.try_get("usage_month_count").map_err(g)?,
        legacy_prefix: row.try_get("legacy_prefix").map_err(g)?,
        legacy_index: row.try_get("legacy_index").map_err(g)?,
        legacy_index_version: row
            .try_get::<Option<i16>, _>("legacy_index_version")
            .map_err(g)?
            .map(i64::from),
        legacy_upgraded: row.try_get("legacy_upgraded").map_err(g)?,
    }
    .into_record()
}

/// The schema, one entry per version (entry `i` is version `i + 1`).
/// Released entries never change; an upgrade appends one.
fn migrations(q: &str) -> Vec<Vec<String>> {
    // Index names are not schema-qualified in CREATE INDEX.
    let p = q.rsplit_once('.').map_or(q, |(_, p)| p);
    vec![vec![
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
    ]]
}

impl KeyStore for PostgresStore {
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

impl KeyStoreQuery for PostgresStore {
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
        let (s, e) = (trunc(window.start), trunc(window.end));
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

impl KeyStoreWrite for PostgresStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        record.validate().map_err(invalid)?;
        bounded(self.timeout, async {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            self.insert_in(&mut tx, &record).await?;
            self.announce(&mut tx, Change::Keys(&[record.id])).await?;
            tx.commit().await.map_err(store_error)
        })
        .await
    }

    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        record.validate().map_err(invalid)?;
        bounded(self.timeout, async {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            self.replace_in(&mut tx, &record, None).await?;
            self.announce(&mut tx, Change::Keys(&[record.id])).await?;
            tx.commit().await.map_err(store_error)
        })
        .await
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        bounded(self.timeout, async {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
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
            let mut changed = vec![id];
            if from.is_some() || to.is_some() {
                sqlx::query(AssertSqlSafe(self.sql.unlink.clone()))
                    .bind(id_to_sql(id))
                    .bind(from)
                    .bind(to)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                changed.extend(from.into_iter().chain(to).map(id_from_sql));
            }
            self.announce(&mut tx, Change::Keys(&changed)).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(true)
        })
        .await
    }
}

impl KeyStoreLifecycle for PostgresStore {
    async fn insert_limited(
        &self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        record.validate().map_err(invalid)?;
        bounded(self.timeout, async {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            if let Some(owner) = &record.owner {
                // Serializes every limited write of this owner, in every
                // process, until commit; READ COMMITTED then counts what the
                // previous holder committed.
                let class = self.lock_class(&mut tx).await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(class)
                    .bind(owner.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                let active: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql.count_active.clone()))
                    .bind(owner.clone())
                    .bind(trunc(now))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(store_error)?;
                let active = u32::try_from(active).unwrap_or(u32::MAX);
                if active >= max {
                    return Ok(LimitedInsert::LimitReached { active });
                }
            }
            self.insert_in(&mut tx, &record).await?;
            self.announce(&mut tx, Change::Keys(&[record.id])).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(LimitedInsert::Inserted)
        })
        .await
    }

    async fn update_if(&self, record: KeyRecord, expected: u64) -> Result<KeyRecord, StoreError> {
        record.validate().map_err(invalid)?;
        bounded(self.timeout, async {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            let stored = self.replace_in(&mut tx, &record, Some(expected)).await?;
            self.announce(&mut tx, Change::Keys(&[record.id])).await?;
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
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            if let Some(owner) = &record.owner
                && record.counts_toward_limit(now)
            {
                let class = self.lock_class(&mut tx).await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(class)
                    .bind(owner.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
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
                let expires: Option<PgMicros> = state.try_get(3).map_err(store_error)?;
                let rotated_to: Option<i64> = state.try_get(4).map_err(store_error)?;
                let counted = status != "revoked"
                    && expires.is_none_or(|e| e > PgMicros::of(trunc(now)))
                    && rotated_to.is_none();
                if !(counted && stored_owner.as_deref() == Some(owner.as_str())) {
                    let active: i64 =
                        sqlx::query_scalar(AssertSqlSafe(self.sql.count_active_except.clone()))
                            .bind(owner.clone())
                            .bind(trunc(now))
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
            self.announce(&mut tx, Change::Keys(&[record.id])).await?;
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
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            let p = self
                .replace_in(&mut tx, &predecessor, Some(expected))
                .await?;
            self.insert_in(&mut tx, &successor).await?;
            // A chain never has more than two working keys: the
            // predecessor's own predecessor stops at this rotation.
            if let Some(before) = p.rotated_from {
                sqlx::query(AssertSqlSafe(self.sql.end_grace.clone()))
                    .bind(trunc(successor.created_at))
                    .bind(id_to_sql(before))
                    .bind(id_to_sql(p.id))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
            // Both keys and the predecessor's predecessor (its grace ended).
            let mut changed = vec![predecessor.id, successor.id];
            changed.extend(p.rotated_from);
            self.announce(&mut tx, Change::Keys(&changed)).await?;
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
        let o = owner.to_owned();
        bounded(
            self.timeout,
            self.revoke(
                &self.sql.revoke_owner,
                &revocation,
                Change::Owner(owner),
                |q| q.bind(o),
            ),
        )
        .await
    }

    async fn revoke_matching(
        &self,
        prefix: &Prefix,
        created: Range<OffsetDateTime>,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        let p = prefix.as_str().to_owned();
        let (s, e) = (trunc(created.start), trunc(created.end));
        bounded(
            self.timeout,
            self.revoke(
                &self.sql.revoke_matching,
                &revocation,
                Change::Matching(prefix.as_str(), created.clone()),
                |q| q.bind(p).bind(s).bind(e),
            ),
        )
        .await
    }
}

impl UsageStore for PostgresStore {
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
