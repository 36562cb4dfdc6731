//! Errors: store failures as [`StoreError`], migration failures as
//! [`MigrateError`].

use std::fmt;

use apikey::{StoreError, StoreErrorKind};

/// Maps a sqlx error to the store error kind it means; the sqlx error is
/// kept as the source. sqlx errors carry server messages and column names,
/// never bound values, so no key material reaches them (and a store never
/// sees a secret anyway: only keyed digests).
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    let kind = match &e {
        sqlx::Error::PoolTimedOut => StoreErrorKind::Timeout,
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreErrorKind::IdCollision,
        // PostgreSQL `deadlock_detected` and `serialization_failure`: the
        // transaction was rolled back because of a concurrent one; the
        // caller re-reads and plans again, as for any conflict.
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")) => {
            StoreErrorKind::Conflict
        }
        // PostgreSQL `query_canceled` (statement_timeout) and
        // `lock_not_available` (lock_timeout).
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("57014") | Some("55P03")) =>
        {
            StoreErrorKind::Timeout
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::with_source(kind, e)
}

/// The call did not finish within the store's configured timeout.
#[derive(Debug)]
pub(crate) struct Elapsed(pub std::time::Duration);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no answer within {:?}", self.0)
    }
}

impl std::error::Error for Elapsed {}

/// Runs `fut` with the store's deadline: past it, the call is dropped (its
/// transaction rolls back) and the answer is `StoreErrorKind::Timeout`.
pub(crate) async fn bounded<T>(
    limit: std::time::Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::with_source(
            StoreErrorKind::Timeout,
            Elapsed(limit),
        )),
    }
}

/// Why [`migrate`](crate::SqliteStore::migrate) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum MigrateError {
    /// The database holds a newer schema than this crate knows: an
    /// instance of a newer release migrated it. Nothing was changed;
    /// upgrade this instance (schemas are only migrated forward).
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this crate knows.
        supported: i64,
    },
    /// A table prefix or schema name is not a plain identifier.
    InvalidName(String),
    /// The database failed (the migration was rolled back); the database's
    /// own error is the [`StoreError`]'s `source()`.
    Database(StoreError),
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SchemaTooNew { found, supported } => write!(
                f,
                "the key store schema is version {found}, newer than this release knows ({supported}); upgrade apikey-sqlx"
            ),
            Self::InvalidName(why) => write!(f, "invalid table prefix or schema: {why}"),
            Self::Database(_) => f.write_str("the key store migration failed"),
        }
    }
}

impl std::error::Error for MigrateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Database(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for MigrateError {
    fn from(e: StoreError) -> Self {
        Self::Database(e)
    }
}

/// A database failure outside a store call (connecting, migrating).
pub(crate) fn database(e: sqlx::Error) -> MigrateError {
    MigrateError::Database(store_error(e))
}

/// Checks that `name` is a plain SQL identifier part: ASCII lowercase
/// letters, digits and `_`, starting with a letter or `_`, at most `max`
/// bytes (empty is allowed: no prefix).
pub(crate) fn check_ident(name: &str, what: &str, max: usize) -> Result<(), MigrateError> {
    let ok = name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(MigrateError::InvalidName(format!(
            "{what} must be at most {max} of a-z, 0-9 and `_`, not starting with a digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A database error carrying only a SQLSTATE code.
    #[derive(Debug)]
    struct Code(&'static str);

    impl fmt::Display for Code {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Code {}

    impl sqlx::error::DatabaseError for Code {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn kind_of(code: &'static str) -> StoreErrorKind {
        store_error(sqlx::Error::Database(Box::new(Code(code)))).kind()
    }

    #[test]
    fn deadlocks_and_serialization_failures_are_conflicts() {
        assert_eq!(kind_of("40P01"), StoreErrorKind::Conflict);
        assert_eq!(kind_of("40001"), StoreErrorKind::Conflict);
        assert_eq!(kind_of("57014"), StoreErrorKind::Timeout);
        assert_eq!(kind_of("08006"), StoreErrorKind::Unavailable);
    }
}
