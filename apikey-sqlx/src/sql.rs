//! The statements, built once per store (the table name carries the
//! configured prefix or schema) and prepared once per connection by sqlx's
//! statement cache.

use std::sync::Arc;

use crate::columns::{COLUMNS, replaced};
use crate::store::Backend;

/// Prebuilt statements over one key table.
#[derive(Debug)]
pub(crate) struct Sql {
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
    /// Records a usage flush id (binds: id, now); 0 rows: a replay.
    pub flush_insert: Arc<str>,
    /// Forgets flush ids applied before `$1`.
    pub flush_expire: Arc<str>,
}

impl Sql {
    pub(crate) fn new<B: Backend>(tables: &str) -> Self {
        let keys = format!("{tables}apikey_keys");
        let flushes = format!("{tables}apikey_usage_flushes");
        let p = |i: usize| B::ph(i, "");
        let select_list = COLUMNS.map(B::sel).join(", ");
        let all_cols = COLUMNS.join(", ");
        let all_ph = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| B::ph(i + 1, c))
            .collect::<Vec<_>>()
            .join(", ");
        let set: Vec<String> = COLUMNS
            .iter()
            .copied()
            .filter(|c| replaced(c))
            .enumerate()
            .map(|(i, c)| format!("{c} = {}", B::ph(i + 2, c)))
            .collect();
        let n = set.len() + 1;
        let set = set.join(", ");
        let a: fn(String) -> Arc<str> = Arc::from;
        Self {
            fetch: a(format!(
                "SELECT {select_list} FROM {keys} WHERE id = {}",
                p(1)
            )),
            list_by_owner: a(format!(
                "SELECT {select_list} FROM {keys} WHERE owner = {} ORDER BY created_at, id",
                p(1)
            )),
            list_expiring_all: a(format!(
                "SELECT {select_list} FROM {keys} WHERE expires_at >= {} AND expires_at < {} \
                 AND status <> 'revoked' ORDER BY expires_at, id",
                p(1),
                p(2)
            )),
            list_expiring_owner: a(format!(
                "SELECT {select_list} FROM {keys} WHERE owner = {} AND expires_at >= {} \
                 AND expires_at < {} AND status <> 'revoked' ORDER BY expires_at, id",
                p(3),
                p(1),
                p(2)
            )),
            find_legacy: a(format!(
                "SELECT {select_list} FROM {keys} WHERE legacy_index = {}",
                p(1)
            )),
            insert: a(format!("INSERT INTO {keys} ({all_cols}) VALUES ({all_ph})")),
            update: a(format!(
                "UPDATE {keys} SET {set}, revision = revision + 1 WHERE id = {} RETURNING {select_list}",
                p(1)
            )),
            update_if: a(format!(
                "UPDATE {keys} SET {set}, revision = {} WHERE id = {} AND revision = {} RETURNING {select_list}",
                p(n + 2),
                p(1),
                p(n + 1)
            )),
            revision_of: a(format!("SELECT revision FROM {keys} WHERE id = {}", p(1))),
            delete: a(format!(
                "DELETE FROM {keys} WHERE id = {} RETURNING rotated_from, rotated_to",
                p(1)
            )),
            // The deleted key's predecessor and successor (by primary key):
            // clear a link that points at it.
            unlink: a(format!(
                "UPDATE {keys} SET \
                 rotated_from = CASE WHEN rotated_from = {p1} THEN NULL ELSE rotated_from END, \
                 rotated_to = CASE WHEN rotated_to = {p1} THEN NULL ELSE rotated_to END, \
                 revision = revision + 1 \
                 WHERE id IN ({p2}, {p3}) AND (rotated_from = {p1} OR rotated_to = {p1})",
                p1 = p(1),
                p2 = p(2),
                p3 = p(3)
            )),
            revoke_owner: a(format!(
                "UPDATE {keys} SET status = 'revoked', revoked_at = {}, revocation_reason = {}, \
                 revision = revision + 1 WHERE owner = {} AND status <> 'revoked' \
                 RETURNING id, created_at",
                p(1),
                p(2),
                p(3)
            )),
            revoke_matching: a(format!(
                "UPDATE {keys} SET status = 'revoked', revoked_at = {}, revocation_reason = {}, \
                 revision = revision + 1 WHERE prefix = {} AND created_at >= {} AND created_at < {} \
                 AND status <> 'revoked' RETURNING id, created_at",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5)
            )),
            // KeyRecord::counts_toward_limit, in SQL.
            count_active: a(format!(
                "SELECT count(*) FROM {keys} WHERE owner = {} AND status <> 'revoked' \
                 AND (expires_at IS NULL OR expires_at > {}) AND rotated_to IS NULL",
                p(1),
                p(2)
            )),
            count_active_except: a(format!(
                "SELECT count(*) FROM {keys} WHERE owner = {} AND status <> 'revoked' \
                 AND (expires_at IS NULL OR expires_at > {}) AND rotated_to IS NULL AND id <> {}",
                p(1),
                p(2),
                p(3)
            )),
            stored_state: a(format!(
                "SELECT revision, owner, status, expires_at, rotated_to FROM {keys} WHERE id = {}{}",
                p(1),
                B::ROW_LOCK
            )),
            end_grace: a(format!(
                "UPDATE {keys} SET expires_at = {p1}, \
                 not_before = CASE WHEN not_before >= {p1} THEN NULL ELSE not_before END, \
                 revision = revision + 1 \
                 WHERE id = {p2} AND rotated_to = {p3} AND (expires_at IS NULL OR expires_at > {p1})",
                p1 = p(1),
                p2 = p(2),
                p3 = p(3)
            )),

            flush_insert: a(format!(
                "INSERT INTO {flushes} (flush_id, applied_at) VALUES ({}, {}) ON CONFLICT DO NOTHING",
                p(1),
                p(2)
            )),
            flush_expire: a(format!("DELETE FROM {flushes} WHERE applied_at < {}", p(1))),
        }
    }
}
