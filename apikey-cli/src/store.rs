//! Opening the key store: `migrate` creates or upgrades the tables; every
//! other command opens the database as it is and refuses one that was not
//! migrated, so a schema upgrade is always a deliberate step.

use std::str::FromStr as _;
use std::time::Duration;

use apikey_sqlx::{MigrateError, PostgresStore, SqliteStore, StoreOptions};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqlitePoolOptions;

use crate::config::Target;
use crate::error::{CliError, CliResult, chain};

/// The newest schema version of `apikey-sqlx` this command knows: the
/// crate's own (the command reads and writes only through its stores).
const KNOWN_SCHEMA: i64 = SqliteStore::SCHEMA_VERSION;

/// Store settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The database.
    pub target: Target,
    /// The longest any database call may take.
    pub timeout: Duration,
    /// A prefix for every table name.
    pub table_prefix: Option<String>,
    /// PostgreSQL schema.
    pub schema: Option<String>,
    /// Connections in the pool (the command's concurrent calls).
    pub pool_size: u32,
}

impl Settings {
    fn options(&self) -> StoreOptions {
        let mut options = StoreOptions::default().timeout(self.timeout);
        if let Some(p) = &self.table_prefix {
            options = options.table_prefix(p.clone());
        }
        if let Some(s) = &self.schema {
            options = options.schema(s.clone());
        }
        options
    }

    /// `schema.prefix` as the stores qualify their tables (validated by
    /// `from_pool_with` before it is used in SQL).
    fn qualified(&self) -> String {
        let prefix = self.table_prefix.as_deref().unwrap_or("");
        match &self.schema {
            Some(s) => format!("{s}.{prefix}"),
            None => prefix.to_owned(),
        }
    }
}

/// An opened store.
#[derive(Debug)]
pub enum Store {
    /// SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PostgresStore),
}

/// Creates or upgrades the tables (`apikey migrate`); the SQLite file is
/// created when missing.
///
/// # Errors
/// Exit 3 when the database cannot be reached or migrated, or holds a
/// newer schema; exit 1 for a bad table prefix or schema.
pub async fn migrate(settings: &Settings) -> CliResult<Store> {
    let what = settings.target.describe();
    let store = match &settings.target {
        Target::Sqlite(path) => SqliteStore::open_with(path, settings.options())
            .await
            .map(Store::Sqlite),
        Target::Postgres(url) => PostgresStore::connect_with(url, settings.options())
            .await
            .map(Store::Postgres),
    };
    store.map_err(|e| migrate_error(&what, &e))
}

fn migrate_error(what: &str, e: &MigrateError) -> CliError {
    match e {
        MigrateError::InvalidName(_) => CliError::usage(e.to_string()),
        _ => CliError::store(format!("{what}: {}", chain(e))),
    }
}

/// Opens the store without changing the schema.
///
/// # Errors
/// Exit 3 when the database is missing, unreachable, not migrated or
/// migrated by a newer release; exit 1 for a bad table prefix or schema.
pub async fn open(settings: &Settings) -> CliResult<Store> {
    let what = settings.target.describe();
    let unreachable =
        |e: sqlx::Error| CliError::store(format!("cannot open the {what}: {}", chain(&e)));
    let bad_name = |e: MigrateError| migrate_error(&what, &e);
    let q = settings.qualified();
    let probe = format!("SELECT max(version) FROM {q}apikey_schema_version");
    let (store, found) = match &settings.target {
        Target::Sqlite(path) => {
            if !path.exists() {
                return Err(CliError::store(format!(
                    "no key database at {} (create it with `apikey migrate --sqlite {}`)",
                    path.display(),
                    path.display()
                )));
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.pool_size)
                .acquire_timeout(settings.timeout)
                .connect_with(apikey_sqlx::sqlite_options(path).create_if_missing(false))
                .await
                .map_err(unreachable)?;
            let store =
                SqliteStore::from_pool_with(pool.clone(), settings.options()).map_err(bad_name)?;
            let found = sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(probe))
                .fetch_one(&pool)
                .await;
            (Store::Sqlite(store), found)
        }
        Target::Postgres(url) => {
            let ms = settings.timeout.as_millis().to_string();
            let connect = PgConnectOptions::from_str(url)
                .map_err(|_| {
                    CliError::usage(format!(
                        "the PostgreSQL URL {} is malformed",
                        crate::config::redact_url(url)
                    ))
                })?
                .options([("statement_timeout", ms.as_str())])
                .application_name("apikey-cli");
            let pool = match PgPoolOptions::new()
                .max_connections(settings.pool_size)
                .acquire_timeout(settings.timeout)
                .connect_with(connect.clone())
                .await
            {
                Ok(pool) => pool,
                Err(e) => {
                    let cause = apikey_sqlx::connect_error(e, &connect, settings.timeout).await;
                    return Err(unreachable(cause));
                }
            };
            let store = PostgresStore::from_pool_with(pool.clone(), settings.options())
                .map_err(bad_name)?;
            let found = sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(probe))
                .fetch_one(&pool)
                .await;
            (Store::Postgres(store), found)
        }
    };
    match found {
        Ok(Some(v)) if v > KNOWN_SCHEMA => Err(CliError::store(format!(
            "the {what} holds key store schema version {v}, newer than this apikey knows \
             ({KNOWN_SCHEMA}); upgrade the apikey command"
        ))),
        Ok(Some(v)) if v == KNOWN_SCHEMA => Ok(store),
        Ok(_) => Err(not_migrated(&what)),
        Err(sqlx::Error::Database(db)) if is_missing_table(&*db) => Err(not_migrated(&what)),
        Err(e) => Err(CliError::store(format!(
            "cannot read the {what}: {}",
            chain(&e)
        ))),
    }
}

fn not_migrated(what: &str) -> CliError {
    CliError::store(format!(
        "the {what} has no apikey tables (or an older schema): run `apikey migrate` first"
    ))
}

/// SQLite "no such table", PostgreSQL `undefined_table` / `invalid_schema_name`.
fn is_missing_table(db: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(db.code().as_deref(), Some("42P01") | Some("3F000"))
        || db.message().contains("no such table")
}
