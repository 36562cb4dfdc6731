//! The store, written once: every read, write, migration step and usage
//! flush of [`SqliteStore`](crate::SqliteStore) and
//! [`PostgresStore`](crate::PostgresStore) is here, over a private
//! [`Backend`] that holds what differs between the databases (SQL text,
//! binds and row decoding, transactions, locks, change notification).

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;
use std::ops::Range;

use apikey::Timestamp;
use apikey::{
    Changes, Invalidation, KeyDigest, KeyFilter, KeyId, KeyQuery, KeyRecord, KeyView, Listing,
    Revocation, StoreError, StoreErrorKind, UsageBatch, UsageDelta,
};

use crate::backend::{Backend, Col, UsageDay, UsageKey};
use crate::codec::{corrupt, count_to_sql, id_from_sql, id_to_sql};
use crate::columns::{Val, replaced, values};
use crate::error::{MigrateError, bounded};
use crate::options::FLUSH_RETENTION;
use crate::sql::{ListKind, Sql};

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

    #[cfg(feature = "postgres")]
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
        let found = self
            .rows(
                Some(&mut tx),
                &format!("SELECT max(version) FROM {t}apikey_schema_version").into(),
                vec![],
                &[Col::Int],
            )
            .await?;
        let found = found.first().and_then(|r| int(&r[0])).unwrap_or(0);
        let migrations = b.migrations();
        let latest = SCHEMA_VERSION;
        debug_assert_eq!(migrations.len() as i64, latest, "one migration per version");
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
            let now = Val::Time(Some(apikey::Clock::now(&apikey::SystemClock)));
            B::execute(&mut tx, &record, vec![Val::Int(Some(version)), now]).await?;
        }
        B::commit(tx).await?;
        b.migrated().await?;
        Ok(())
    }

    /// The records `sql` selects (in `tx`, or on the pool).
    async fn records(
        &self,
        tx: Option<&mut B::Tx>,
        sql: &Arc<str>,
        binds: Vec<Val>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = self.backend.fetch(tx, sql, binds).await?;
        rows.iter().map(B::decode).collect()
    }

    /// The rows `sql` returns (in `tx`, or on the pool), each read as `cols`.
    async fn rows(
        &self,
        tx: Option<&mut B::Tx>,
        sql: &Arc<str>,
        binds: Vec<Val>,
        cols: &[Col],
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        let rows = self.backend.fetch(tx, sql, binds).await?;
        rows.iter()
            .map(|r| (0..cols.len()).map(|i| B::col(r, i, cols[i])).collect())
            .collect()
    }

    async fn one(&self, sql: &Arc<str>, binds: Vec<Val>) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.records(None, sql, binds).await?.pop())
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

    /// A page of `query`; for an owner, the owner's version is read before
    /// the records (never after: a version newer than the records would let
    /// a plan made on them commit).
    pub(crate) async fn list(&self, query: &KeyQuery) -> Result<Listing, StoreError> {
        bounded(self.timeout, async {
            let (kind, mut binds) = filter(&query.filter)?;
            let owner_version = match &query.filter {
                KeyFilter::Owner(owner) => self.owner_version(None, owner).await?,
                _ => 0,
            };
            if let Some(after) = query.after {
                binds.push(Val::Time(Some(after.at)));
                binds.push(Val::Int(Some(id_to_sql(after.id))));
            }
            binds.push(Val::Int(Some(query.page_size() as i64)));
            let sql = &self.sql.list[kind as usize][usize::from(query.after.is_some())];
            let records = self.records(None, sql, binds).await?;
            Ok(Listing {
                records,
                owner_version,
            })
        })
        .await
    }

    /// The owner's guard version (0 when never guarded); row-locked in a
    /// write transaction.
    async fn owner_version(&self, tx: Option<&mut B::Tx>, owner: &str) -> Result<u64, StoreError> {
        let sql = if tx.is_some() {
            &self.sql.owner_version_locked
        } else {
            &self.sql.owner_version
        };
        let owner = vec![Val::Text(Some(owner.to_owned()))];
        let rows = self.rows(tx, sql, owner, &[Col::Int]).await?;
        Ok(rows
            .first()
            .and_then(|r| int(&r[0]))
            .map_or(0, |v| v as u64))
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

    /// `NotFound` or `Conflict` for a conditional write to `id` that
    /// matched no row, in `tx`.
    async fn missed(&self, tx: &mut B::Tx, id: KeyId) -> StoreError {
        let id = vec![Val::Int(Some(id_to_sql(id)))];
        match self
            .rows(Some(tx), &self.sql.revision_of, id, &[Col::Int])
            .await
        {
            Ok(found) if found.is_empty() => err(StoreErrorKind::NotFound),
            Ok(_) => err(StoreErrorKind::Conflict),
            Err(e) => e,
        }
    }

    /// The write primitive: all of `changes` in one transaction, or nothing.
    /// Guards first (in owner order, each owner locked so commits on one
    /// owner run one after the other), then deletes (in id order), then
    /// updates (those holding no legacy index first, then in id order), then
    /// inserts: a legacy index given up in a commit is free for the records
    /// that claim it in the same commit. The unique indexes make a taken id
    /// or legacy index `IdCollision`. (Two updates that trade two legacy
    /// indexes in one commit are refused that way too: the index is not
    /// deferrable.)
    pub(crate) async fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        changes.check()?;
        if changes.is_empty() {
            return Ok(());
        }
        let mut guards: Vec<_> = changes.guards.iter().collect();
        guards.sort_by(|a, b| a.owner.cmp(&b.owner));
        let mut updates: Vec<_> = changes
            .puts
            .iter()
            .filter(|p| p.expected.is_some())
            .collect();
        updates.sort_by_key(|p| (p.record.legacy.is_some(), p.record.id));
        let mut deletes: Vec<_> = changes.deletes.iter().collect();
        deletes.sort_by_key(|d| d.id);
        self.write(async |tx| {
            for g in guards {
                self.backend.lock_owner(tx, &g.owner).await?;
                if self.owner_version(Some(tx), &g.owner).await? != g.version {
                    return Err(err(StoreErrorKind::Conflict));
                }
                let next = g.version.wrapping_add(1) as i64;
                let binds = vec![Val::Text(Some(g.owner.clone())), Val::Int(Some(next))];
                B::execute(tx, &self.sql.owner_bump, binds).await?;
            }
            for d in deletes {
                let id = Val::Int(Some(id_to_sql(d.id)));
                let binds = vec![id.clone(), Val::Int(Some(d.expected as i64))];
                if B::execute(tx, &self.sql.delete_if, binds).await? == 0 {
                    return Err(self.missed(tx, d.id).await);
                }
                B::execute(tx, &self.sql.usage_forget, vec![id]).await?;
            }
            for p in updates {
                let e = p.expected.unwrap_or_default();
                let mut binds = vec![Val::Int(Some(id_to_sql(p.record.id)))];
                binds.extend(
                    values(&p.record)
                        .into_iter()
                        .filter(|(c, _)| replaced(c))
                        .map(|(_, v)| v),
                );
                binds.push(Val::Int(Some(e as i64)));
                binds.push(Val::Int(Some(e.wrapping_add(1) as i64)));
                if B::execute(tx, &self.sql.update_if, binds).await? == 0 {
                    return Err(self.missed(tx, p.record.id).await);
                }
            }
            for p in changes.puts.iter().filter(|p| p.expected.is_none()) {
                let binds = values(&p.record).into_iter().map(|(_, v)| v).collect();
                B::execute(tx, &self.sql.insert, binds).await?;
            }
            let ids: Vec<KeyId> = changes
                .puts
                .iter()
                .map(|p| p.record.id)
                .chain(changes.deletes.iter().map(|d| d.id))
                .collect();
            if !ids.is_empty() {
                self.backend.announce(tx, &Invalidation::Keys(ids)).await?;
            }
            Ok(())
        })
        .await
    }

    /// Revokes every key `query`'s filter matches that is not revoked yet,
    /// in one statement (idempotent: a second call revokes nothing); the ids
    /// in the filter's order.
    pub(crate) async fn revoke_where(
        &self,
        query: &KeyQuery,
        revocation: &Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        let (kind, rest) = filter(&query.filter)?;
        let mut binds = vec![
            Val::Time(Some(revocation.at)),
            Val::Text(Some(revocation.reason.clone())),
        ];
        binds.extend(rest);
        let change = match &query.filter {
            KeyFilter::Owner(owner) => Some(Invalidation::Owner(owner.clone())),
            KeyFilter::Created { prefix, window } => Some(Invalidation::Prefix {
                prefix: prefix.clone(),
                created: window.clone(),
            }),
            _ => None,
        };
        let sql = &self.sql.revoke[kind as usize];
        let rows = self
            .write(async |tx| {
                let rows = self
                    .rows(Some(tx), sql, binds, &[Col::Int, Col::Micros])
                    .await?;
                if !rows.is_empty() {
                    let change = change.unwrap_or_else(|| {
                        Invalidation::Keys(
                            rows.iter()
                                .filter_map(|r| int(&r[0]).map(id_from_sql))
                                .collect(),
                        )
                    });
                    self.backend.announce(tx, &change).await?;
                }
                Ok(rows)
            })
            .await?;
        let mut revoked: Vec<(Option<i64>, Option<i64>)> =
            rows.iter().map(|r| (int(&r[1]), int(&r[0]))).collect();
        revoked.sort_unstable();
        Ok(revoked
            .into_iter()
            .filter_map(|(_, id)| id.map(id_from_sql))
            .collect())
    }

    /// Exactly once per flush id: the id is inserted into the flush table
    /// in the same transaction as the deltas (a replay finds it and writes
    /// nothing); ids are kept for [`FLUSH_RETENTION`]. Additive: per delta,
    /// `(key, day) += count`, `last_used_at = max(..)` and the address and
    /// route of the latest use. `false`: a replay.
    pub(crate) async fn record_usage(&self, batch: &UsageBatch) -> Result<bool, StoreError> {
        let mut days: BTreeMap<(i64, time::Date), i64> = BTreeMap::new();
        // Per key: its latest delta (the last use, its address and route)
        // and its latest day.
        let mut keys: BTreeMap<i64, (&UsageDelta, time::Date)> = BTreeMap::new();
        for d in &batch.deltas {
            let id = id_to_sql(d.id);
            let n = days.entry((id, d.day)).or_default();
            *n = n.saturating_add(count_to_sql(d.count));
            let k = keys.entry(id).or_insert((d, d.day));
            if d.last_used_at >= k.0.last_used_at {
                k.0 = d;
            }
            k.1 = k.1.max(d.day);
        }
        let days: Vec<UsageDay> = days
            .into_iter()
            .map(|((id, day), count)| UsageDay { id, day, count })
            .collect();
        let kept = time::Duration::days(USAGE_DAYS_KEPT);
        let keys: Vec<UsageKey> = keys
            .into_iter()
            .map(|(id, (last, latest))| UsageKey {
                id,
                last_used_at: last.last_used_at,
                ip: last.last_used_ip.map(|ip| ip.to_string()),
                // PostgreSQL refuses NUL in text (and would refuse the whole
                // batch, again at every retry): a delta built by hand may
                // hold one; the recorder's never does.
                route: last.last_used_route.as_deref().map(|r| r.replace('\0', "")),
                horizon: latest.checked_sub(kept).unwrap_or(time::Date::MIN),
            })
            .collect();
        self.write(async |tx| {
            let now = apikey::Clock::now(&apikey::SystemClock);
            let fid = Val::Bytes(Some(batch.id.as_u128().to_be_bytes().to_vec()));
            let binds = vec![fid, Val::Time(Some(now))];
            if B::execute(tx, &self.sql.flush_insert, binds).await? == 0 {
                return Ok(false);
            }
            let horizon = Val::Time(Some(now - FLUSH_RETENTION));
            B::execute(tx, &self.sql.flush_expire, vec![horizon]).await?;
            if !days.is_empty() {
                // No `announce`: usage never invalidates a cached key.
                self.backend.add_usage(tx, days, keys).await?;
            }
            Ok(true)
        })
        .await
    }

    /// The stored `(day, count)` rows of `id` with `day` in `days`, ascending.
    pub(crate) async fn usage(
        &self,
        id: KeyId,
        days: Range<time::Date>,
    ) -> Result<Vec<(time::Date, u64)>, StoreError> {
        // No usage row is older than year 1, and PostgreSQL refuses days
        // before 4713 BC that `time` can spell: a window reaching back that
        // far starts at year 1.
        let year_1 = time::Date::from_ordinal_date(1, 1).unwrap_or(time::Date::MIN);
        let binds = vec![
            Val::Int(Some(id_to_sql(id))),
            Val::Date(Some(days.start.max(year_1))),
            Val::Date(Some(days.end.max(year_1))),
        ];
        let rows = bounded(
            self.timeout,
            self.rows(None, &self.sql.usage_of, binds, &[Col::Date, Col::Int]),
        )
        .await?;
        rows.iter()
            .map(|r| match (&r[0], int(&r[1])) {
                (Val::Date(Some(day)), Some(n)) => u64::try_from(n)
                    .map(|n| (*day, n))
                    .map_err(|_| corrupt("usage count is negative")),
                _ => Err(corrupt("usage row")),
            })
            .collect()
    }
}

/// The newest schema version: one migration step per version, in each
/// dialect's `migrations`.
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// The listing of `filter` and its binds (see [`ListKind`]).
fn filter(filter: &KeyFilter) -> Result<(ListKind, Vec<Val>), StoreError> {
    let text = |t: &str| Val::Text(Some(t.to_owned()));
    let window = |w: &Range<Timestamp>| [Val::Time(Some(w.start)), Val::Time(Some(w.end))];
    Ok(match filter {
        KeyFilter::Owner(owner) => (ListKind::Owner, vec![text(owner)]),
        KeyFilter::Expiring {
            owner: None,
            window: w,
        } => (ListKind::Expiring, window(w).into()),
        KeyFilter::Expiring {
            owner: Some(o),
            window: w,
        } => {
            let mut binds = vec![text(o)];
            binds.extend(window(w));
            (ListKind::ExpiringOwner, binds)
        }
        KeyFilter::Created { prefix, window: w } => {
            let mut binds = vec![text(prefix.as_str())];
            binds.extend(window(w));
            (ListKind::Created, binds)
        }
        _ => {
            return Err(StoreError::with_source(
                StoreErrorKind::Corrupt,
                apikey::Error::InvalidInput("a key filter this store does not know".into()),
            ));
        }
    })
}

/// Usage rows are kept this many days before a key's latest one in a flush
/// (the contract asks for at least 62), as `MemoryStore` keeps them.
pub(crate) const USAGE_DAYS_KEPT: i64 = 400;

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

            async fn list(
                &self,
                query: &apikey::KeyQuery,
            ) -> Result<apikey::Listing, apikey::StoreError> {
                self.inner.list(query).await
            }
        }

        impl apikey::KeyStoreWrite for $t {
            async fn commit(&self, changes: &apikey::Changes) -> Result<(), apikey::StoreError> {
                self.inner.commit(changes).await
            }

            /// One statement (see the crate's guarantees).
            async fn revoke_where(
                &self,
                query: &apikey::KeyQuery,
                revocation: &apikey::Revocation,
            ) -> Result<Vec<apikey::KeyId>, apikey::StoreError> {
                self.inner.revoke_where(query, revocation).await
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

            async fn usage(
                &self,
                id: apikey::KeyId,
                days: std::ops::Range<time::Date>,
            ) -> Result<Vec<(time::Date, u64)>, apikey::StoreError> {
                self.inner.usage(id, days).await
            }
        }
    };
}
pub(crate) use store_traits;
