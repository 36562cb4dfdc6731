//! The statements, built once per store (the table name carries the
//! configured prefix or schema) and prepared once per connection by sqlx's
//! statement cache.

use std::sync::Arc;

use crate::columns::{COLUMNS, replaced};

/// The SQL dialect differences that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    #[cfg(feature = "sqlite")]
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
}

impl Dialect {
    /// Placeholder `i` (1-based) for column `col`.
    fn ph(self, i: usize, col: &str) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite => {
                let _ = col;
                format!("?{i}")
            }
            #[cfg(feature = "postgres")]
            Self::Postgres => match col {
                "metadata" => format!("${i}::jsonb"),
                _ => format!("${i}"),
            },
        }
    }

    /// A bare placeholder `i`.
    pub(crate) fn p(self, i: usize) -> String {
        self.ph(i, "")
    }

    /// The row-lock clause of a read inside a write transaction (SQLite's
    /// `BEGIN IMMEDIATE` already holds the database write lock).
    fn row_lock(self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite => "",
            #[cfg(feature = "postgres")]
            Self::Postgres => " FOR UPDATE",
        }
    }

    /// The select-list expression of `col`.
    fn sel(self, col: &str) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite => col.to_owned(),
            #[cfg(feature = "postgres")]
            Self::Postgres => match col {
                "metadata" => "metadata::text AS metadata".to_owned(),
                _ => col.to_owned(),
            },
        }
    }
}

/// Prebuilt statements over one key table.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The (qualified, prefixed) key table.
    pub keys: String,
    pub fetch: Arc<str>,
    pub list_by_owner: Arc<str>,
    pub list_expiring_all: Arc<str>,
    pub list_expiring_owner: Arc<str>,
    pub find_legacy: Arc<str>,
    pub insert: Arc<str>,
    /// `UPDATE ... WHERE id = $1`, revision + 1; binds: id, then the
    /// replaced columns.
    pub update: Arc<str>,
    /// As `update` with `AND revision = $last` and `revision = $last + 1`
    /// (the last two binds: expected, expected + 1).
    pub update_if: Arc<str>,
    pub revision_of: Arc<str>,
    pub delete: Arc<str>,
    pub unlink: Arc<str>,
    pub revoke_owner: Arc<str>,
    pub revoke_matching: Arc<str>,
    pub count_active: Arc<str>,
    /// `count_active` without record `$3`.
    pub count_active_except: Arc<str>,
    /// The stored state `update_limited` decides on (row-locked in PostgreSQL).
    pub stored_state: Arc<str>,
    /// `rotate`: ends the grace of the predecessor's own predecessor.
    pub end_grace: Arc<str>,
}

impl Sql {
    pub(crate) fn new(keys: String, d: Dialect) -> Self {
        let select_list = COLUMNS.map(|c| d.sel(c)).join(", ");
        let all_cols = COLUMNS.join(", ");
        let all_ph = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| d.ph(i + 1, c))
            .collect::<Vec<_>>()
            .join(", ");
        let set: Vec<String> = COLUMNS
            .iter()
            .copied()
            .filter(|c| replaced(c))
            .enumerate()
            .map(|(i, c)| format!("{c} = {}", d.ph(i + 2, c)))
            .collect();
        let n = set.len() + 1;
        let set = set.join(", ");
        let a: fn(String) -> Arc<str> = Arc::from;
        Self {
            fetch: a(format!(
                "SELECT {select_list} FROM {keys} WHERE id = {}",
                d.p(1)
            )),
            list_by_owner: a(format!(
                "SELECT {select_list} FROM {keys} WHERE owner = {} ORDER BY created_at, id",
                d.p(1)
            )),
            list_expiring_all: a(format!(
                "SELECT {select_list} FROM {keys} WHERE expires_at >= {} AND expires_at < {} \
                 AND status <> 'revoked' ORDER BY expires_at, id",
                d.p(1),
                d.p(2)
            )),
            list_expiring_owner: a(format!(
                "SELECT {select_list} FROM {keys} WHERE owner = {} AND expires_at >= {} \
                 AND expires_at < {} AND status <> 'revoked' ORDER BY expires_at, id",
                d.p(3),
                d.p(1),
                d.p(2)
            )),
            find_legacy: a(format!(
                "SELECT {select_list} FROM {keys} WHERE legacy_index = {}",
                d.p(1)
            )),
            insert: a(format!("INSERT INTO {keys} ({all_cols}) VALUES ({all_ph})")),
            update: a(format!(
                "UPDATE {keys} SET {set}, revision = revision + 1 WHERE id = {} RETURNING {select_list}",
                d.p(1)
            )),
            update_if: a(format!(
                "UPDATE {keys} SET {set}, revision = {} WHERE id = {} AND revision = {} RETURNING {select_list}",
                d.p(n + 2),
                d.p(1),
                d.p(n + 1)
            )),
            revision_of: a(format!("SELECT revision FROM {keys} WHERE id = {}", d.p(1))),
            delete: a(format!(
                "DELETE FROM {keys} WHERE id = {} RETURNING rotated_from, rotated_to",
                d.p(1)
            )),
            // The deleted key's predecessor and successor (by primary key):
            // clear a link that points at it.
            unlink: a(format!(
                "UPDATE {keys} SET \
                 rotated_from = CASE WHEN rotated_from = {p1} THEN NULL ELSE rotated_from END, \
                 rotated_to = CASE WHEN rotated_to = {p1} THEN NULL ELSE rotated_to END, \
                 revision = revision + 1 \
                 WHERE id IN ({p2}, {p3}) AND (rotated_from = {p1} OR rotated_to = {p1})",
                p1 = d.p(1),
                p2 = d.p(2),
                p3 = d.p(3)
            )),
            revoke_owner: a(format!(
                "UPDATE {keys} SET status = 'revoked', revoked_at = {}, revocation_reason = {}, \
                 revision = revision + 1 WHERE owner = {} AND status <> 'revoked' \
                 RETURNING id, created_at",
                d.p(1),
                d.p(2),
                d.p(3)
            )),
            revoke_matching: a(format!(
                "UPDATE {keys} SET status = 'revoked', revoked_at = {}, revocation_reason = {}, \
                 revision = revision + 1 WHERE prefix = {} AND created_at >= {} AND created_at < {} \
                 AND status <> 'revoked' RETURNING id, created_at",
                d.p(1),
                d.p(2),
                d.p(3),
                d.p(4),
                d.p(5)
            )),
            // KeyRecord::counts_toward_limit, in SQL.
            count_active: a(format!(
                "SELECT count(*) FROM {keys} WHERE owner = {} AND status <> 'revoked' \
                 AND (expires_at IS NULL OR expires_at > {}) AND rotated_to IS NULL",
                d.p(1),
                d.p(2)
            )),
            count_active_except: a(format!(
                "SELECT count(*) FROM {keys} WHERE owner = {} AND status <> 'revoked' \
                 AND (expires_at IS NULL OR expires_at > {}) AND rotated_to IS NULL AND id <> {}",
                d.p(1),
                d.p(2),
                d.p(3)
            )),
            stored_state: a(format!(
                "SELECT revision, owner, status, expires_at, rotated_to FROM {keys} WHERE id = {}{}",
                d.p(1),
                d.row_lock()
            )),
            end_grace: a(format!(
                "UPDATE {keys} SET expires_at = {p1}, \
                 not_before = CASE WHEN not_before >= {p1} THEN NULL ELSE not_before END, \
                 revision = revision + 1 \
                 WHERE id = {p2} AND rotated_to = {p3} AND (expires_at IS NULL OR expires_at > {p1})",
                p1 = d.p(1),
                p2 = d.p(2),
                p3 = d.p(3)
            )),

            keys,
        }
    }
}
