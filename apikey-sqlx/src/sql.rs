//! The statements, built once per store (the table names carry the
//! configured prefix or schema) and prepared once per connection by sqlx's
//! statement cache.

use std::sync::Arc;

use crate::backend::Backend;
use crate::columns::{COLUMNS, replaced};

/// The listings a [`KeyQuery`](apikey::KeyQuery) names, as indexes into
/// [`Sql::list`] and [`Sql::revoke`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum ListKind {
    /// Binds: owner. Order: created_at, id.
    Owner = 0,
    /// Binds: window start, end. Order: expires_at, id.
    Expiring = 1,
    /// Binds: owner, window start, end. Order: expires_at, id.
    ExpiringOwner = 2,
    /// Binds: prefix, window start, end. Order: created_at, id.
    Created = 3,
}

impl ListKind {
    const ALL: [Self; 4] = [
        Self::Owner,
        Self::Expiring,
        Self::ExpiringOwner,
        Self::Created,
    ];

    /// The predicate (placeholders from `first`), the number of its binds
    /// and the time column of the order.
    fn filter<B: Backend>(self, first: usize) -> (String, usize, &'static str) {
        let p = |i: usize| B::ph(first + i, "");
        match self {
            Self::Owner => (format!("owner = {}", p(0)), 1, "created_at"),
            Self::Expiring => (
                format!(
                    "expires_at >= {} AND expires_at < {} AND status <> 'revoked'",
                    p(0),
                    p(1)
                ),
                2,
                "expires_at",
            ),
            Self::ExpiringOwner => (
                format!(
                    "owner = {} AND expires_at >= {} AND expires_at < {} AND status <> 'revoked'",
                    p(0),
                    p(1),
                    p(2)
                ),
                3,
                "expires_at",
            ),
            Self::Created => (
                format!(
                    "prefix = {} AND created_at >= {} AND created_at < {}",
                    p(0),
                    p(1),
                    p(2)
                ),
                3,
                "created_at",
            ),
        }
    }
}

/// Prebuilt statements over one table set.
#[derive(Debug)]
pub(crate) struct Sql {
    pub fetch: Arc<str>,
    pub find_legacy: Arc<str>,
    /// `[kind][with a cursor]`: filter binds, then (cursor time, cursor
    /// id), then the limit.
    pub list: [[Arc<str>; 2]; 4],
    /// `[kind]`: binds revoked_at, reason, then the filter's; returns
    /// `id` and the order's time.
    pub revoke: [Arc<str>; 4],
    pub insert: Arc<str>,
    /// `UPDATE ... WHERE id = $1 AND revision = $last`, revision set to
    /// `$last + 1`; binds: id, the replaced columns, expected, expected + 1.
    pub update_if: Arc<str>,
    pub revision_of: Arc<str>,
    /// Binds: id, expected revision.
    pub delete_if: Arc<str>,
    pub owner_version: Arc<str>,
    /// `owner_version`, row-locked inside a write.
    pub owner_version_locked: Arc<str>,
    /// Binds: owner, new version.
    pub owner_bump: Arc<str>,
    /// Records a usage flush id (binds: id, now); 0 rows: a replay.
    pub flush_insert: Arc<str>,
    /// Forgets flush ids applied before `$1`.
    pub flush_expire: Arc<str>,
    /// Binds: id, first day, end day (exclusive).
    pub usage_of: Arc<str>,
    /// Drops a deleted key's usage rows.
    pub usage_forget: Arc<str>,
}

impl Sql {
    pub(crate) fn new<B: Backend>(tables: &str) -> Self {
        let keys = format!("{tables}apikey_keys");
        let flushes = format!("{tables}apikey_usage_flushes");
        let owners = format!("{tables}apikey_owners");
        let usage = format!("{tables}apikey_usage_days");
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
        let list = ListKind::ALL.map(|kind| {
            let (filter, binds, at) = kind.filter::<B>(1);
            let plain = format!(
                "SELECT {select_list} FROM {keys} WHERE {filter} ORDER BY {at}, id LIMIT {}",
                p(binds + 1)
            );
            let after = format!(
                "SELECT {select_list} FROM {keys} WHERE {filter} AND ({at}, id) > ({}, {}) \
                 ORDER BY {at}, id LIMIT {}",
                p(binds + 1),
                p(binds + 2),
                p(binds + 3)
            );
            [a(plain), a(after)]
        });
        let revoke = ListKind::ALL.map(|kind| {
            let (filter, _, at) = kind.filter::<B>(3);
            a(format!(
                "UPDATE {keys} SET status = 'revoked', revoked_at = {}, revocation_reason = {}, \
                 revision = revision + 1 WHERE {filter} AND status <> 'revoked' RETURNING id, {at}",
                p(1),
                p(2)
            ))
        });
        let owner_version = format!("SELECT version FROM {owners} WHERE owner = {}", p(1));
        Self {
            fetch: a(format!(
                "SELECT {select_list} FROM {keys} WHERE id = {}",
                p(1)
            )),
            find_legacy: a(format!(
                "SELECT {select_list} FROM {keys} WHERE legacy_index = {}",
                p(1)
            )),
            list,
            revoke,
            insert: a(format!("INSERT INTO {keys} ({all_cols}) VALUES ({all_ph})")),
            update_if: a(format!(
                "UPDATE {keys} SET {set}, revision = {} WHERE id = {} AND revision = {}",
                p(n + 2),
                p(1),
                p(n + 1)
            )),
            revision_of: a(format!("SELECT revision FROM {keys} WHERE id = {}", p(1))),
            delete_if: a(format!(
                "DELETE FROM {keys} WHERE id = {} AND revision = {}",
                p(1),
                p(2)
            )),
            owner_version_locked: a(format!("{owner_version}{}", B::ROW_LOCK)),
            owner_version: a(owner_version),
            owner_bump: a(format!(
                "INSERT INTO {owners} (owner, version) VALUES ({}, {}) \
                 ON CONFLICT (owner) DO UPDATE SET version = excluded.version",
                p(1),
                p(2)
            )),
            flush_insert: a(format!(
                "INSERT INTO {flushes} (flush_id, applied_at) VALUES ({}, {}) ON CONFLICT DO NOTHING",
                p(1),
                p(2)
            )),
            flush_expire: a(format!("DELETE FROM {flushes} WHERE applied_at < {}", p(1))),
            usage_of: a(format!(
                "SELECT day, count FROM {usage} WHERE key_id = {} AND day >= {} AND day < {} \
                 ORDER BY day",
                p(1),
                p(2),
                p(3)
            )),
            usage_forget: a(format!("DELETE FROM {usage} WHERE key_id = {}", p(1))),
        }
    }
}
