//! The store, written once: every read, write, migration step and usage
//! flush of [`SqliteStore`](crate::SqliteStore) and
//! [`PostgresStore`](crate::PostgresStore) is here, over a private
//! [`Backend`] that holds what differs between the databases (SQL text,
//! binds and row decoding, transactions, locks, change notification).

use std::sync::Arc;
use std::time::Duration;

use apikey::{
    Invalidation, KeyDigest, KeyId, KeyRecord, KeyView, LimitedInsert, LimitedUpdate, Prefix,
    Revocation, StoreError, StoreErrorKind, UsageBatch, UsageDelta,
};
use time::OffsetDateTime;

use crate::FLUSH_RETENTION;
use crate::codec::{FoldedUsage, fold_usage, id_from_sql, id_to_sql, invalid};
use crate::columns::{Val, replaced, values};
use crate::error::{MigrateError, bounded};
use crate::sql::Sql;

/// The type a generic row column is read as.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Col {
    /// An integer (`Val::Int`).
    Int,
    /// Text (`Val::Text`).
    Text,
    /// A time as Unix microseconds (`Val::Int`), saturating at the ends
    /// (PostgreSQL's infinities): for comparing and ordering only.
    Micros,
}

/// One database: the dialect of the SQL the store builds, and the few
/// primitives it runs it with. Everything else is [`Store`].
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
    /// The records `sql` selects (in `tx`, or on the pool).
    async fn records(
        &self,
        tx: Option<&mut Self::Tx>,
        sql: &Arc<str>,
        binds: Vec<Val>,
    ) -> Result<Vec<KeyRecord>, StoreError>;
    /// The rows `sql` returns in `tx`, each read as `cols`.
    async fn rows(
        tx: &mut Self::Tx,
        sql: &Arc<str>,
        binds: Vec<Val>,
        cols: &[Col],
    ) -> Result<Vec<Vec<Val>>, StoreError>;
    /// Runs `sql` in `tx`; the rows it changed.
    async fn execute(tx: &mut Self::Tx, sql: &Arc<str>, binds: Vec<Val>)
    -> Result<u64, StoreError>;
    /// Serializes limited writes of `owner` until `tx` ends, across
    /// processes (a no-op where the transaction already holds the write lock).
    async fn lock_owner(&self, tx: &mut Self::Tx, owner: &str) -> Result<(), StoreError>;
    /// Announces `change` to listeners when `tx` commits (a no-op without a
    /// change channel).
    async fn announce(&self, tx: &mut Self::Tx, change: &Invalidation) -> Result<(), StoreError>;
    /// Adds the folded usage to the key rows in `tx`.
    async fn add_usage(
        &self,
        tx: &mut Self::Tx,
        folded: Vec<FoldedUsage>,
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

/// A key store over one database.
#[derive(Debug)]
pub(crate) struct Store<B> {
    pub(crate) backend: B,
    sql: Sql,
    timeout: Duration,
}

fn err(kind: StoreErrorKind) -> StoreError {
    StoreError::new(kind)
}

/// The integer of a generic row column.
fn int(v: &Val) -> Option<i64> {
    match v {
        Val::Int(x) => *x,
        _ => None,
    }
}

impl<B: Backend> Store<B> {
    pub(crate) fn new(backend: B, timeout: Duration) -> Self {
        let sql = Sql::new::<B>(backend.tables());
        Self {
            backend,
            sql,
            timeout,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Creates or upgrades the tables to the newest schema this crate
    /// knows, in one transaction; a database migrated by a newer release
    /// is refused untouched.
    pub(crate) async fn migrate(&self) -> Result<(), MigrateError> {
        let b = &self.backend;
        let t = b.tables();
        let mut tx = b.begin_migration().await?;
        B::execute(&mut tx, &b.version_table().into(), vec![]).await?;
        let found = B::rows(
            &mut tx,
            &format!("SELECT max(version) FROM {t}apikey_schema_version").into(),
            vec![],
            &[Col::Int],
        )
        .await?;
        let found = found.first().and_then(|r| int(&r[0])).unwrap_or(0);
        let migrations = b.migrations();
        let latest = migrations.len() as i64;
        if found > latest {
            return Err(MigrateError::SchemaTooNew {
                found,
                supported: latest,
            });
        }
        let record: Arc<str> = format!(
            "INSERT INTO {t}apikey_schema_version (version, applied_at) VALUES ({}, {})",
            B::ph(1, ""),
            B::ph(2, "")
        )
        .into();
        for (version, statements) in (1..).zip(migrations) {
            if version <= found {
                continue;
            }
            for s in statements {
                B::execute(&mut tx, &s.into(), vec![]).await?;
            }
            let now = Val::Time(Some(OffsetDateTime::now_utc()));
            B::execute(&mut tx, &record, vec![Val::Int(Some(version)), now]).await?;
        }
        B::commit(tx).await?;
        b.migrated().await?;
        Ok(())
    }

    async fn one(&self, sql: &Arc<str>, binds: Vec<Val>) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.backend.records(None, sql, binds).await?.pop())
    }

    pub(crate) async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        let r = self.get(id).await?;
        Ok(r.map(|r| Arc::new(KeyView::from_record(&r))))
    }

    pub(crate) async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let binds = vec![Val::Int(Some(id_to_sql(id)))];
        bounded(self.timeout, self.one(&self.sql.fetch, binds)).await
    }

    pub(crate) async fn find_legacy(
        &self,
        index: &KeyDigest,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let binds = vec![Val::Bytes(Some(index.as_bytes().to_vec()))];
        bounded(self.timeout, self.one(&self.sql.find_legacy, binds)).await
    }

    pub(crate) async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let binds = vec![Val::Text(Some(owner.to_owned()))];
        let sql = &self.sql.list_by_owner;
        bounded(self.timeout, self.backend.records(None, sql, binds)).await
    }

    pub(crate) async fn list_expiring(
        &self,
        owner: Option<&str>,
        window: std::ops::Range<OffsetDateTime>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut binds = vec![Val::Time(Some(window.start)), Val::Time(Some(window.end))];
        let sql = match owner {
            Some(o) => {
                binds.push(Val::Text(Some(o.to_owned())));
                &self.sql.list_expiring_owner
            }
            None => &self.sql.list_expiring_all,
        };
        bounded(self.timeout, self.backend.records(None, sql, binds)).await
    }

    /// One write transaction: `body` runs in it, and the transaction
    /// commits when `body` succeeds (and rolls back when it fails or the
    /// deadline passes).
    async fn write<T>(
        &self,
        body: impl AsyncFnOnce(&mut B::Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        bounded(self.timeout, async {
            let mut tx = self.backend.begin().await?;
            let out = body(&mut tx).await?;
            B::commit(tx).await?;
            Ok(out)
        })
        .await
    }

    async fn insert_in(&self, tx: &mut B::Tx, record: &KeyRecord) -> Result<(), StoreError> {
        let binds = values(record).into_iter().map(|(_, v)| v).collect();
        B::execute(tx, &self.sql.insert, binds).await?;
        Ok(())
    }

    /// `update` (expected `None`) or `update_if` in `tx`; the stored record.
    async fn replace_in(
        &self,
        tx: &mut B::Tx,
        record: &KeyRecord,
        expected: Option<u64>,
    ) -> Result<KeyRecord, StoreError> {
        let id = Val::Int(Some(id_to_sql(record.id)));
        let mut binds = vec![id];
        binds.extend(
            values(record)
                .into_iter()
                .filter(|(c, _)| replaced(c))
                .map(|(_, v)| v),
        );
        let sql = match expected {
            Some(e) => {
                binds.push(Val::Int(Some(e as i64)));
                binds.push(Val::Int(Some(e.wrapping_add(1) as i64)));
                &self.sql.update_if
            }
            None => &self.sql.update,
        };
        if let Some(stored) = self.backend.records(Some(tx), sql, binds).await?.pop() {
            return Ok(stored);
        }
        let id = vec![Val::Int(Some(id_to_sql(record.id)))];
        let found = B::rows(tx, &self.sql.revision_of, id, &[Col::Int]).await?;
        Err(err(if found.is_empty() {
            StoreErrorKind::NotFound
        } else {
            StoreErrorKind::Conflict
        }))
    }

    pub(crate) async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        record.validate().map_err(invalid)?;
        self.write(async |tx| {
            self.insert_in(tx, &record).await?;
            self.backend
                .announce(tx, &Invalidation::Key(record.id))
                .await
        })
        .await
    }

    pub(crate) async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        record.validate().map_err(invalid)?;
        self.write(async |tx| {
            self.replace_in(tx, &record, None).await?;
            self.backend
                .announce(tx, &Invalidation::Key(record.id))
                .await
        })
        .await
    }

    pub(crate) async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.write(async |tx| {
            let sql_id = Val::Int(Some(id_to_sql(id)));
            let links = B::rows(tx, &self.sql.delete, vec![sql_id], &[Col::Int, Col::Int]).await?;
            let Some(links) = links.first() else {
                return Ok(false);
            };
            let (from, to) = (int(&links[0]), int(&links[1]));
            let mut changed = vec![id];
            if from.is_some() || to.is_some() {
                let binds = vec![Val::Int(Some(id_to_sql(id))), Val::Int(from), Val::Int(to)];
                B::execute(tx, &self.sql.unlink, binds).await?;
                changed.extend(from.into_iter().chain(to).map(id_from_sql));
            }
            self.backend
                .announce(tx, &Invalidation::Keys(changed))
                .await?;
            Ok(true)
        })
        .await
    }

    /// The owner's keys that count toward its limit at `now`, in `tx`
    /// (without `except`).
    async fn count_active(
        &self,
        tx: &mut B::Tx,
        owner: &str,
        now: OffsetDateTime,
        except: Option<KeyId>,
    ) -> Result<u32, StoreError> {
        let mut binds = vec![Val::Text(Some(owner.to_owned())), Val::Time(Some(now))];
        let sql = match except {
            Some(id) => {
                binds.push(Val::Int(Some(id_to_sql(id))));
                &self.sql.count_active_except
            }
            None => &self.sql.count_active,
        };
        let rows = B::rows(tx, sql, binds, &[Col::Int]).await?;
        let n = rows.first().and_then(|r| int(&r[0])).unwrap_or(0);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub(crate) async fn insert_limited(
        &self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        record.validate().map_err(invalid)?;
        self.write(async |tx| {
            if let Some(owner) = &record.owner {
                self.backend.lock_owner(tx, owner).await?;
                let active = self.count_active(tx, owner, now, None).await?;
                if active >= max {
                    return Ok(LimitedInsert::LimitReached { active });
                }
            }
            self.insert_in(tx, &record).await?;
            self.backend
                .announce(tx, &Invalidation::Key(record.id))
                .await?;
            Ok(LimitedInsert::Inserted)
        })
        .await
    }

    pub(crate) async fn update_if(
        &self,
        record: KeyRecord,
        expected: u64,
    ) -> Result<KeyRecord, StoreError> {
        record.validate().map_err(invalid)?;
        self.write(async |tx| {
            let stored = self.replace_in(tx, &record, Some(expected)).await?;
            self.backend
                .announce(tx, &Invalidation::Key(record.id))
                .await?;
            Ok(stored)
        })
        .await
    }

    pub(crate) async fn update_limited(
        &self,
        record: KeyRecord,
        expected: u64,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedUpdate, StoreError> {
        record.validate().map_err(invalid)?;
        self.write(async |tx| {
            if let Some(owner) = &record.owner
                && record.counts_toward_limit(now)
            {
                self.backend.lock_owner(tx, owner).await?;
                let id = vec![Val::Int(Some(id_to_sql(record.id)))];
                let cols = [Col::Int, Col::Text, Col::Text, Col::Micros, Col::Int];
                let state = B::rows(tx, &self.sql.stored_state, id, &cols).await?;
                let state = state.first().ok_or_else(|| err(StoreErrorKind::NotFound))?;
                if int(&state[0]).map(|r| r as u64) != Some(expected) {
                    return Err(err(StoreErrorKind::Conflict));
                }
                let text = |v: &Val| match v {
                    Val::Text(t) => t.clone(),
                    _ => None,
                };
                let counted = text(&state[2]).as_deref() != Some("revoked")
                    && int(&state[3]).is_none_or(|e| e > crate::codec::micros(now))
                    && int(&state[4]).is_none();
                if !(counted && text(&state[1]).as_deref() == Some(owner.as_str())) {
                    let active = self.count_active(tx, owner, now, Some(record.id)).await?;
                    if active >= max {
                        return Ok(LimitedUpdate::LimitReached { active });
                    }
                }
            }
            let stored = self.replace_in(tx, &record, Some(expected)).await?;
            self.backend
                .announce(tx, &Invalidation::Key(record.id))
                .await?;
            Ok(LimitedUpdate::Updated(stored))
        })
        .await
    }

    pub(crate) async fn rotate(
        &self,
        predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        predecessor.validate().map_err(invalid)?;
        successor.validate().map_err(invalid)?;
        if predecessor.id == successor.id {
            return Err(err(StoreErrorKind::IdCollision));
        }
        self.write(async |tx| {
            let p = self.replace_in(tx, &predecessor, Some(expected)).await?;
            self.insert_in(tx, &successor).await?;
            // A chain never has more than two working keys: the
            // predecessor's own predecessor stops at this rotation.
            if let Some(before) = p.rotated_from {
                let binds = vec![
                    Val::Time(Some(successor.created_at)),
                    Val::Int(Some(id_to_sql(before))),
                    Val::Int(Some(id_to_sql(p.id))),
                ];
                B::execute(tx, &self.sql.end_grace, binds).await?;
            }
            // Both keys and the predecessor's predecessor (its grace ended).
            let mut changed = vec![predecessor.id, successor.id];
            changed.extend(p.rotated_from);
            self.backend
                .announce(tx, &Invalidation::Keys(changed))
                .await?;
            Ok((p, successor.clone()))
        })
        .await
    }

    pub(crate) async fn revoke_owner(
        &self,
        owner: &str,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        let rest = vec![Val::Text(Some(owner.to_owned()))];
        let change = Invalidation::Owner(owner.to_owned());
        self.revoke(&self.sql.revoke_owner, &revocation, rest, change)
            .await
    }

    pub(crate) async fn revoke_matching(
        &self,
        prefix: &Prefix,
        created: std::ops::Range<OffsetDateTime>,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        let rest = vec![
            Val::Text(Some(prefix.as_str().to_owned())),
            Val::Time(Some(created.start)),
            Val::Time(Some(created.end)),
        ];
        let change = Invalidation::Prefix {
            prefix: prefix.clone(),
            created,
        };
        self.revoke(&self.sql.revoke_matching, &revocation, rest, change)
            .await
    }

    /// One statement revoking what `sql` matches; the ids in creation order.
    async fn revoke(
        &self,
        sql: &Arc<str>,
        revocation: &Revocation,
        rest: Vec<Val>,
        change: Invalidation,
    ) -> Result<Vec<KeyId>, StoreError> {
        let mut binds = vec![
            Val::Time(Some(revocation.at)),
            Val::Text(Some(revocation.reason.clone())),
        ];
        binds.extend(rest);
        let rows = self
            .write(async |tx| {
                let rows = B::rows(tx, sql, binds, &[Col::Int, Col::Micros]).await?;
                if !rows.is_empty() {
                    self.backend.announce(tx, &change).await?;
                }
                Ok(rows)
            })
            .await?;
        let mut changed: Vec<(Option<i64>, Option<i64>)> =
            rows.iter().map(|r| (int(&r[1]), int(&r[0]))).collect();
        changed.sort_unstable();
        Ok(changed
            .into_iter()
            .filter_map(|(_, id)| id.map(id_from_sql))
            .collect())
    }

    /// Exactly once per flush id: the id is inserted into the flush table
    /// in the same transaction as the deltas (a replay finds it and writes
    /// nothing); ids are kept for [`FLUSH_RETENTION`]. `false`: a replay.
    pub(crate) async fn record_usage(&self, batch: &UsageBatch) -> Result<bool, StoreError> {
        self.usage(batch.id.as_u128(), &batch.deltas).await
    }

    async fn usage(&self, flush_id: u128, batch: &[UsageDelta]) -> Result<bool, StoreError> {
        let folded = fold_usage(batch);
        self.write(async |tx| {
            let now = OffsetDateTime::now_utc();
            let fid = Val::Bytes(Some(flush_id.to_be_bytes().to_vec()));
            let binds = vec![fid, Val::Time(Some(now))];
            if B::execute(tx, &self.sql.flush_insert, binds).await? == 0 {
                return Ok(false);
            }
            let horizon = Val::Time(Some(now - FLUSH_RETENTION));
            B::execute(tx, &self.sql.flush_expire, vec![horizon]).await?;
            if !folded.is_empty() {
                // No `announce`: usage never invalidates a cached key.
                self.backend.add_usage(tx, folded).await?;
            }
            Ok(true)
        })
        .await
    }
}

/// Implements every store trait of `apikey` for a public store type that
/// wraps an `Arc<Store<_>>` as its field `inner`.
macro_rules! store_traits {
    ($t:ty) => {
        impl apikey::KeyStore for $t {
            async fn fetch(
                &self,
                id: apikey::KeyId,
            ) -> Result<Option<std::sync::Arc<apikey::KeyView>>, apikey::StoreError> {
                self.inner.fetch(id).await
            }

            async fn find_legacy(
                &self,
                index: &apikey::KeyDigest,
            ) -> Result<Option<apikey::KeyRecord>, apikey::StoreError> {
                self.inner.find_legacy(index).await
            }
        }

        impl apikey::KeyStoreQuery for $t {
            async fn get(
                &self,
                id: apikey::KeyId,
            ) -> Result<Option<apikey::KeyRecord>, apikey::StoreError> {
                self.inner.get(id).await
            }

            async fn list_by_owner(
                &self,
                owner: &str,
            ) -> Result<Vec<apikey::KeyRecord>, apikey::StoreError> {
                self.inner.list_by_owner(owner).await
            }

            async fn list_expiring(
                &self,
                owner: Option<&str>,
                window: std::ops::Range<time::OffsetDateTime>,
            ) -> Result<Vec<apikey::KeyRecord>, apikey::StoreError> {
                self.inner.list_expiring(owner, window).await
            }
        }

        impl apikey::KeyStoreWrite for $t {
            async fn insert(&self, record: apikey::KeyRecord) -> Result<(), apikey::StoreError> {
                self.inner.insert(record).await
            }

            async fn update(&self, record: apikey::KeyRecord) -> Result<(), apikey::StoreError> {
                self.inner.update(record).await
            }

            async fn delete(&self, id: apikey::KeyId) -> Result<bool, apikey::StoreError> {
                self.inner.delete(id).await
            }
        }

        impl apikey::KeyStoreLifecycle for $t {
            async fn insert_limited(
                &self,
                record: apikey::KeyRecord,
                max: u32,
                now: time::OffsetDateTime,
            ) -> Result<apikey::LimitedInsert, apikey::StoreError> {
                self.inner.insert_limited(record, max, now).await
            }

            async fn update_if(
                &self,
                record: apikey::KeyRecord,
                expected: u64,
            ) -> Result<apikey::KeyRecord, apikey::StoreError> {
                self.inner.update_if(record, expected).await
            }

            async fn update_limited(
                &self,
                record: apikey::KeyRecord,
                expected: u64,
                max: u32,
                now: time::OffsetDateTime,
            ) -> Result<apikey::LimitedUpdate, apikey::StoreError> {
                self.inner.update_limited(record, expected, max, now).await
            }

            async fn rotate(
                &self,
                predecessor: apikey::KeyRecord,
                expected: u64,
                successor: apikey::KeyRecord,
            ) -> Result<(apikey::KeyRecord, apikey::KeyRecord), apikey::StoreError> {
                self.inner.rotate(predecessor, expected, successor).await
            }

            async fn revoke_owner(
                &self,
                owner: &str,
                revocation: apikey::Revocation,
            ) -> Result<Vec<apikey::KeyId>, apikey::StoreError> {
                self.inner.revoke_owner(owner, revocation).await
            }

            async fn revoke_matching(
                &self,
                prefix: &apikey::Prefix,
                created: std::ops::Range<time::OffsetDateTime>,
                revocation: apikey::Revocation,
            ) -> Result<Vec<apikey::KeyId>, apikey::StoreError> {
                self.inner
                    .revoke_matching(prefix, created, revocation)
                    .await
            }
        }

        impl apikey::UsageStore for $t {
            /// Exactly once: the batch's flush id is inserted into
            /// `apikey_usage_flushes` in the same transaction as the deltas
            /// (a replay finds it and writes nothing); ids are kept for
            /// [`FLUSH_RETENTION`](crate::FLUSH_RETENTION).
            async fn record_usage(
                &self,
                batch: &apikey::UsageBatch,
            ) -> Result<apikey::FlushOutcome, apikey::StoreError> {
                Ok(if self.inner.record_usage(batch).await? {
                    apikey::FlushOutcome::Applied
                } else {
                    apikey::FlushOutcome::AlreadyApplied
                })
            }
        }
    };
}
pub(crate) use store_traits;
