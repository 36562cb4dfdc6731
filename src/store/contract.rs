//! The store contract: the read, write, usage and query traits and the values they exchange.

use std::future::Future;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use crate::Timestamp;

use crate::error::{StoreError, StoreErrorKind};
use crate::key::KeyDigest;
use crate::key::KeyId;
use crate::key::Prefix;
use crate::record::{KeyRecord, KeyStatus, KeyView, Revocation};

/// The verification read path: the one trait a read-only store (a replica,
/// a cache, a file) implements to serve [`Authenticator`](crate::Authenticator).
///
/// One method is required: [`fetch`](Self::fetch). Stores that hold
/// imported legacy keys also override [`find_legacy`](Self::find_legacy).
pub trait KeyStore: Send + Sync {
    /// Whether a [`fetch`](Self::fetch) stays in this process (a map
    /// lookup, never I/O): such fetches are not store calls for the
    /// `apikey.store.duration` metric and the store tracing span, which
    /// measure the calls that reach a database. `false` (measured) unless
    /// overridden; [`MemoryStore`](super::MemoryStore) and
    /// [`CachedStore`](super::CachedStore) (which measures the misses it
    /// sends to its inner store) say `true`.
    const IN_PROCESS: bool = false;

    /// The hot-path read: the compact view of key `id`, or `None`.
    fn fetch(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send;

    /// The record whose [`LegacyInfo::index`](crate::LegacyInfo::index)
    /// equals `index`, or `None`: the verify path of keys imported from
    /// another system ([`KeyManager::import`](crate::KeyManager::import)).
    /// Stores keep this index unique (see [`KeyStoreWrite::commit`]) and
    /// look it up with an index, not a scan. Malformed strings that start
    /// with a legacy prefix reach this method.
    ///
    /// The default answers `None`, which is right for a store that never
    /// holds imported keys (their verification then fails closed, as
    /// `INVALID_API_KEY`). Every store that accepts writes overrides it; the
    /// write part of the conformance suite checks that.
    fn find_legacy(
        &self,
        index: &KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        let _ = index;
        std::future::ready(Ok(None))
    }
}

/// Management reads: full records by id, and paged listings.
pub trait KeyStoreQuery: KeyStore {
    /// The full record of key `id` (with its stored `revision` and
    /// `last_used_at`), or `None`.
    fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// One page of the records `query` selects, in the order of its
    /// [`KeyFilter`], strictly after its cursor, at most `query.limit` of
    /// them (a shorter page is the last). [`KeyQuery::page`] does the
    /// filtering, ordering and cutting over a candidate set.
    ///
    /// For [`KeyFilter::Owner`], [`Listing::owner_version`] is the owner's
    /// guard version read **before the records or in the same snapshot**
    /// (never after: a version newer than the records would let a plan made
    /// on stale records commit); 0 for an owner never guarded and for the
    /// other filters.
    fn list(&self, query: &KeyQuery) -> impl Future<Output = Result<Listing, StoreError>> + Send;
}

/// Writes: one all-or-nothing, revision-checked batch ([`commit`](Self::commit)).
pub trait KeyStoreWrite: KeyStoreQuery {
    /// Applies `changes` atomically, or nothing. Checks, any failing writes
    /// nothing:
    ///
    /// * more than [`Changes::MAX_ITEMS`] items, one id twice, or a put whose
    ///   record breaks its invariants ([`KeyRecord::validate`]):
    ///   [`Corrupt`](StoreErrorKind::Corrupt) ([`Changes::check`] does this);
    /// * each [`OwnerGuard`]: the stored owner version (0 if none) equals
    ///   `version`, else [`Conflict`](StoreErrorKind::Conflict); on success it
    ///   becomes `version + 1`;
    /// * a put with `expected: None` (an insert): no record has this id, else
    ///   [`IdCollision`](StoreErrorKind::IdCollision); stored as given
    ///   (revision and the last use included);
    /// * a put with `expected: Some(r)`: the record exists
    ///   ([`NotFound`](StoreErrorKind::NotFound)) with revision `r`
    ///   ([`Conflict`](StoreErrorKind::Conflict)); every field is written
    ///   except the last use (`last_used_at`, `last_used_ip`,
    ///   `last_used_route`: kept as stored, see
    ///   [`KeyRecord::keep_last_use`]) and `revision` (`r + 1`);
    /// * a delete: the record exists (`NotFound`) with revision `expected`
    ///   (`Conflict`); it goes with its usage rows;
    /// * after the commit, no two records hold one
    ///   [legacy index](crate::LegacyInfo::index), else `IdCollision`.
    ///
    /// Once it returns `Ok`, every `fetch` that starts sees the changes.
    /// The store applies no lifecycle rule: no owner count, no rotation
    /// chain, no link clearing.
    fn commit(&self, changes: &Changes) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes every record `query` selects that is not revoked yet: status
    /// revoked, `revocation` set, revision + 1. Returns the ids changed, in
    /// the listing's order. Already-revoked records keep their first
    /// revocation.
    ///
    /// **Idempotent and resumable, not atomic**: the default lists pages of
    /// [`Changes::MAX_ITEMS`] and commits each page (a concurrent change to
    /// a record re-reads the page, at most 8 times). When it fails part way,
    /// the pages committed stay revoked and calling it again revokes the
    /// rest. A SQL store overrides it with one `UPDATE ... RETURNING`.
    ///
    /// `query.after` and `query.limit` are ignored (every page is revoked).
    ///
    /// # Errors
    /// The errors of [`list`](KeyStoreQuery::list) and
    /// [`commit`](Self::commit).
    fn revoke_where(
        &self,
        query: &KeyQuery,
        revocation: &Revocation,
    ) -> impl Future<Output = Result<Vec<KeyId>, StoreError>> + Send {
        revoke_paged(self, query, revocation)
    }
}

/// The default of [`KeyStoreWrite::revoke_where`].
async fn revoke_paged<S: KeyStoreWrite + ?Sized>(
    store: &S,
    query: &KeyQuery,
    revocation: &Revocation,
) -> Result<Vec<KeyId>, StoreError> {
    let mut page = KeyQuery {
        filter: query.filter.clone(),
        after: None,
        limit: Changes::MAX_ITEMS as u32,
    };
    let mut revoked = Vec::new();
    loop {
        let mut tries = 0;
        let listing = loop {
            tries += 1;
            let listing = store.list(&page).await?;
            let mut changes = Changes::new();
            for r in listing
                .records
                .iter()
                .filter(|r| r.status != KeyStatus::Revoked)
            {
                let mut next = r.clone();
                next.status = KeyStatus::Revoked;
                next.revocation = Some(revocation.clone());
                changes.puts.push(Put::update(next, r.revision));
            }
            if changes.is_empty() {
                break listing;
            }
            match store.commit(&changes).await {
                Ok(()) => {
                    revoked.extend(changes.puts.iter().map(|p| p.record.id));
                    break listing;
                }
                Err(e)
                    if tries < 8
                        && matches!(
                            e.kind(),
                            StoreErrorKind::Conflict | StoreErrorKind::NotFound
                        ) => {}
                Err(e) => return Err(e),
            }
        };
        match page.next_page(&listing) {
            Some(next) => page = next,
            None => return Ok(revoked),
        }
    }
}

/// The owner version a plan read, checked and bumped by
/// [`KeyStoreWrite::commit`]: the owner-limit guard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerGuard {
    /// The owner.
    pub owner: String,
    /// The version read with the owner's listing ([`Listing::owner_version`]).
    pub version: u64,
}

/// One record written by [`KeyStoreWrite::commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    /// The record as it should be stored.
    pub record: KeyRecord,
    /// `None`: a new record (its id must be free); `Some(r)`: replaces the
    /// record stored with revision `r`.
    pub expected: Option<u64>,
}

impl Put {
    /// A new record.
    pub fn insert(record: KeyRecord) -> Self {
        Self {
            record,
            expected: None,
        }
    }

    /// A replacement of the record read with revision `expected`.
    pub fn update(record: KeyRecord, expected: u64) -> Self {
        Self {
            record,
            expected: Some(expected),
        }
    }
}

/// One record removed by [`KeyStoreWrite::commit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delete {
    /// The record.
    pub id: KeyId,
    /// The revision it was read with.
    pub expected: u64,
}

/// What one [`KeyStoreWrite::commit`] applies, all or nothing.
///
/// ```
/// use apikey::store::{Changes, Put};
/// # use apikey::*;
/// # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32])?)?);
/// # let (_, record) = verifier.issue(NewKey::new("sk_live_").owner("u1"), apikey::Timestamp::MIN)?;
/// let mut changes = Changes::new().guard("u1", 0);
/// changes.puts.push(Put::insert(record));
/// assert_eq!(changes.len(), 2);
/// assert!(changes.check().is_ok());
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Owner versions to check and bump.
    pub guards: Vec<OwnerGuard>,
    /// Records to insert or replace.
    pub puts: Vec<Put>,
    /// Records to remove.
    pub deletes: Vec<Delete>,
}

impl Changes {
    /// The most items (guards + puts + deletes) one commit may hold: what
    /// a DynamoDB transaction holds.
    pub const MAX_ITEMS: usize = 100;

    /// No change.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a guard on `owner` at `version`.
    pub fn guard(mut self, owner: impl Into<String>, version: u64) -> Self {
        self.guards.push(OwnerGuard {
            owner: owner.into(),
            version,
        });
        self
    }

    /// Guards, puts and deletes.
    pub fn len(&self) -> usize {
        self.guards.len() + self.puts.len() + self.deletes.len()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The checks every store makes before anything else: at most
    /// [`MAX_ITEMS`](Self::MAX_ITEMS) items, no id (put or delete) or
    /// owner twice, every put record valid ([`KeyRecord::validate`]).
    ///
    /// # Errors
    /// [`StoreErrorKind::Corrupt`] naming the broken rule.
    pub fn check(&self) -> Result<(), StoreError> {
        let invalid = |why: &str| {
            StoreError::with_source(
                StoreErrorKind::Corrupt,
                crate::Error::InvalidInput(format!("invalid commit: {why}")),
            )
        };
        if self.len() > Self::MAX_ITEMS {
            return Err(invalid("more than Changes::MAX_ITEMS items"));
        }
        let mut ids = std::collections::HashSet::new();
        let all = self.puts.iter().map(|p| p.record.id);
        if !all
            .chain(self.deletes.iter().map(|d| d.id))
            .all(|id| ids.insert(id))
        {
            return Err(invalid("one id twice"));
        }
        let mut owners = std::collections::HashSet::new();
        if !self.guards.iter().all(|g| owners.insert(g.owner.as_str())) {
            return Err(invalid("one owner guarded twice"));
        }
        for p in &self.puts {
            p.record
                .validate()
                .map_err(|e| StoreError::with_source(StoreErrorKind::Corrupt, e))?;
        }
        Ok(())
    }
}

/// Which records a [`KeyQuery`] selects, and their order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFilter {
    /// Every record of the owner; ordered by `created_at`, then id.
    Owner(String),
    /// Records not revoked whose `expires_at` lies in `window` (start
    /// inclusive, end exclusive), of `owner` or of everyone; ordered by
    /// `expires_at`, then id.
    Expiring {
        /// `None`: every owner.
        owner: Option<String>,
        /// The expiry window.
        window: Range<Timestamp>,
    },
    /// Records with `prefix` created in `window` (start inclusive, end
    /// exclusive), whoever owns them; ordered by `created_at`, then id.
    Created {
        /// The prefix.
        prefix: Prefix,
        /// The creation window.
        window: Range<Timestamp>,
    },
}

/// Where a page ends: the sort time and id of its last record. The next
/// page starts strictly after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The sort time (`created_at` or `expires_at`, per the filter).
    pub at: Timestamp,
    /// The id.
    pub id: KeyId,
}

/// One listing request: a filter, a cursor, a page size.
///
/// ```
/// use apikey::store::{KeyFilter, KeyQuery};
/// let q = KeyQuery::owner("user_1").limit(50);
/// assert_eq!(q.filter, KeyFilter::Owner("user_1".into()));
/// assert_eq!((q.after, q.limit), (None, 50));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyQuery {
    /// Which records.
    pub filter: KeyFilter,
    /// Start strictly after this position; `None`: from the first.
    pub after: Option<Cursor>,
    /// At most this many records (at most [`MAX_LIMIT`](Self::MAX_LIMIT);
    /// a larger value is read as it).
    pub limit: u32,
}

impl KeyQuery {
    /// The largest page.
    pub const MAX_LIMIT: u32 = 1000;

    fn of(filter: KeyFilter) -> Self {
        Self {
            filter,
            after: None,
            limit: Self::MAX_LIMIT,
        }
    }

    /// Every record of `owner`, oldest first.
    pub fn owner(owner: impl Into<String>) -> Self {
        Self::of(KeyFilter::Owner(owner.into()))
    }

    /// Records not revoked expiring in `window`, of `owner` or everyone,
    /// soonest first.
    pub fn expiring(owner: Option<&str>, window: Range<Timestamp>) -> Self {
        Self::of(KeyFilter::Expiring {
            owner: owner.map(str::to_owned),
            window,
        })
    }

    /// Records with `prefix` created in `window`, oldest first.
    pub fn created(prefix: Prefix, window: Range<Timestamp>) -> Self {
        Self::of(KeyFilter::Created { prefix, window })
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Sets the cursor.
    pub fn after(mut self, cursor: Option<Cursor>) -> Self {
        self.after = cursor;
        self
    }

    /// The page size in effect: `limit`, at most [`MAX_LIMIT`](Self::MAX_LIMIT).
    pub fn page_size(&self) -> usize {
        self.limit.min(Self::MAX_LIMIT) as usize
    }

    /// The owner a listing is of, if the filter names one.
    pub fn owner_of(&self) -> Option<&str> {
        match &self.filter {
            KeyFilter::Owner(o) => Some(o),
            KeyFilter::Expiring { owner, .. } => owner.as_deref(),
            KeyFilter::Created { .. } => None,
        }
    }

    /// Whether the filter selects `record` (the cursor aside).
    pub fn matches(&self, record: &KeyRecord) -> bool {
        match &self.filter {
            KeyFilter::Owner(o) => record.owner.as_deref() == Some(o.as_str()),
            KeyFilter::Expiring { owner, window } => {
                owner
                    .as_deref()
                    .is_none_or(|o| record.owner.as_deref() == Some(o))
                    && record.status != KeyStatus::Revoked
                    && record.expires_at.is_some_and(|e| window.contains(&e))
            }
            KeyFilter::Created { prefix, window } => {
                record.prefix == *prefix && window.contains(&record.created_at)
            }
        }
    }

    /// `record`'s position in this filter's order.
    pub fn position(&self, record: &KeyRecord) -> Cursor {
        self.position_of(record.id, record.created_at, record.expires_at)
    }

    /// The position of a record with these fields (the one ordering rule,
    /// for a store that orders something other than records).
    pub(crate) fn position_of(
        &self,
        id: KeyId,
        created_at: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Cursor {
        let at = match &self.filter {
            KeyFilter::Expiring { .. } => expires_at.unwrap_or(created_at),
            _ => created_at,
        };
        Cursor { at, id }
    }

    /// The page of `candidates` this query asks for: those it
    /// [matches](Self::matches), in its order, strictly after its cursor, at
    /// most [`page_size`](Self::page_size). The whole listing logic of a
    /// store that can enumerate a superset of the answer.
    pub fn page(&self, candidates: impl IntoIterator<Item = KeyRecord>) -> Vec<KeyRecord> {
        let key = |c: Cursor| (c.at, c.id);
        let mut out: Vec<KeyRecord> = candidates
            .into_iter()
            .filter(|r| self.matches(r))
            .filter(|r| self.after.is_none_or(|a| key(self.position(r)) > key(a)))
            .collect();
        out.sort_by_key(|r| key(self.position(r)));
        out.truncate(self.page_size());
        out
    }

    /// The query for the page after `listing`, or `None` when `listing` was
    /// the last page (shorter than the page size).
    pub fn next_page(&self, listing: &Listing) -> Option<KeyQuery> {
        if listing.records.len() < self.page_size() || self.page_size() == 0 {
            return None;
        }
        let last = listing.records.last()?;
        Some(self.clone().after(Some(self.position(last))))
    }
}

/// One page of a [`KeyStoreQuery::list`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The records, in the filter's order.
    pub records: Vec<KeyRecord>,
    /// For [`KeyFilter::Owner`]: the owner's guard version, read before the
    /// records or in their snapshot; otherwise 0.
    pub owner_version: u64,
}

/// A unique id for one usage flush, so a store can apply a retried batch
/// once. Random (128 bits from the OS), printed as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlushId(u128);

impl FlushId {
    /// A fresh random id.
    pub fn random() -> Self {
        use rand_core::Rng;
        let mut b = [0u8; 16];
        crate::OsRng.fill_bytes(&mut b);
        Self(u128::from_be_bytes(b))
    }

    /// The id with this value (stores reading it back).
    pub const fn from_u128(v: u128) -> Self {
        Self(v)
    }

    /// The id's value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// Big-endian bytes (for a `bytea` / `BLOB` column).
    pub const fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl std::fmt::Debug for FlushId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlushId({:032x})", self.0)
    }
}

impl std::fmt::Display for FlushId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// One usage flush: the deltas and the id that makes a retry of the same
/// batch recognisable. Built by the [`UsageRecorder`](crate::UsageRecorder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageBatch {
    /// This flush's id; a retry of the batch carries the same one.
    pub id: FlushId,
    /// Per key and day: how many uses, and the latest.
    pub deltas: Vec<UsageDelta>,
}

impl UsageBatch {
    /// A batch with a fresh id.
    pub fn new(deltas: Vec<UsageDelta>) -> Self {
        Self {
            id: FlushId::random(),
            deltas,
        }
    }
}

/// What [`UsageStore::record_usage`] did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushOutcome {
    /// The deltas were added.
    Applied,
    /// A batch with this id was applied before; nothing was added again.
    AlreadyApplied,
}

/// Where usage counts go: batched, additive writes of per-day counts and
/// the latest use (`last_used_at`, its address and route), off the
/// request path.
///
/// # Delivery
/// The [`UsageRecorder`](crate::UsageRecorder) keeps a batch until a flush
/// of it returns `Ok`, and retries it with the same [`FlushId`] after an
/// error or a dropped (cancelled) flush. So a store that records applied
/// flush ids in the same transaction as the deltas (and answers
/// [`FlushOutcome::AlreadyApplied`] for a known id) counts every use
/// exactly once; a store that does not counts at least once (a flush whose
/// commit succeeded but whose answer was lost is applied again).
/// [`MemoryStore`](super::MemoryStore) records ids: exactly once.
///
/// The store only adds: "today" and "this month" are derived by the crate
/// from [`usage`](Self::usage) ([`UsageCounters::from_days`](crate::UsageCounters::from_days)). No store
/// writes month-rollover logic.
pub trait UsageStore: KeyStore {
    /// Adds a batch of usage, all or nothing: for each delta,
    /// `usage(id, day) += count` and
    /// `last_used_at = max(last_used_at, delta.last_used_at)`, and
    /// `last_used_ip` and `last_used_route` become the delta's when its
    /// `last_used_at` is not older than the stored one (the address and
    /// route of the latest use; across a batch's deltas of one key, the
    /// latest delta's). Ids with no record (deleted keys) are skipped.
    /// Changes no other field and not the revision. A batch whose id was applied before changes nothing
    /// and answers [`FlushOutcome::AlreadyApplied`] (stores that keep ids;
    /// they may forget ids older than a day).
    fn record_usage(
        &self,
        batch: &UsageBatch,
    ) -> impl Future<Output = Result<FlushOutcome, StoreError>> + Send;

    /// The stored `(day, count)` rows of key `id` with `day` in `days`
    /// (start inclusive, end exclusive), ascending by day; days without use
    /// may be left out. Stores keep at least the last 62 days.
    fn usage(
        &self,
        id: KeyId,
        days: Range<time::Date>,
    ) -> impl Future<Output = Result<Vec<(time::Date, u64)>, StoreError>> + Send;
}

/// Uses of one key on one UTC day, for [`UsageStore::record_usage`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageDelta {
    /// The key.
    pub id: KeyId,
    /// The UTC day of the uses.
    pub day: time::Date,
    /// How many successful verifications.
    pub count: u64,
    /// The latest of them.
    pub last_used_at: Timestamp,
    /// The client address of the latest use, when known.
    pub last_used_ip: Option<IpAddr>,
    /// The route of the latest use, when known, in the normal form of
    /// [`KeyRecord::last_used_route`](crate::KeyRecord::last_used_route)
    /// (the [`UsageRecorder`](crate::UsageRecorder) makes it so; a store
    /// keeps it as given).
    pub last_used_route: Option<Arc<str>>,
}

impl UsageDelta {
    /// A delta of `count` uses of `id` on `day`, the latest at `last_used_at`
    /// (from an unknown address and route; see [`from`](Self::from)).
    pub fn new(id: KeyId, day: time::Date, count: u64, last_used_at: Timestamp) -> Self {
        Self {
            id,
            day,
            count,
            last_used_at,
            last_used_ip: None,
            last_used_route: None,
        }
    }

    /// The delta with the address and route of its latest use.
    pub fn from(mut self, ip: Option<IpAddr>, route: Option<Arc<str>>) -> Self {
        self.last_used_ip = ip;
        self.last_used_route = route;
        self
    }

    /// Whether this delta's use is the latest against a stored
    /// `last_used_at` (not older: a tie goes to the delta).
    pub(crate) fn supersedes(&self, stored: Option<Timestamp>) -> bool {
        stored.is_none_or(|t| t <= self.last_used_at)
    }

    /// Applies this delta's latest use to `record`, the rule of
    /// [`UsageStore::record_usage`] for a store that keeps whole records:
    /// `last_used_at = max(..)`, and the address and route follow when the
    /// delta is not older than the stored use. (The per-day count is the
    /// store's to add.)
    ///
    /// ```
    /// # use apikey::{KeyRecord, UsageDelta};
    /// # fn demo(mut record: KeyRecord, now: apikey::Timestamp) {
    /// let delta = UsageDelta::new(record.id, now.utc_date(), 1, now)
    ///     .from("192.0.2.7".parse().ok(), Some("GET /v1/search".into()));
    /// delta.apply_to(&mut record);
    /// assert_eq!(record.last_used_route.as_deref(), Some("GET /v1/search"));
    /// # }
    /// ```
    pub fn apply_to(&self, record: &mut KeyRecord) {
        if self.supersedes(record.last_used_at) {
            record.last_used_at = Some(self.last_used_at);
            record.last_used_ip = self.last_used_ip;
            record.last_used_route = self.last_used_route.as_deref().map(str::to_owned);
        }
    }
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: KeyStore + ?Sized> KeyStore for $ty {
            const IN_PROCESS: bool = S::IN_PROCESS;
            fn fetch(&self, id: KeyId) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send {
                (**self).fetch(id)
            }
            fn find_legacy(&self, index: &KeyDigest) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
                (**self).find_legacy(index)
            }
        }
        impl<S: KeyStoreQuery + ?Sized> KeyStoreQuery for $ty {
            fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
                (**self).get(id)
            }
            fn list(&self, query: &KeyQuery) -> impl Future<Output = Result<Listing, StoreError>> + Send {
                (**self).list(query)
            }
        }
        impl<S: KeyStoreWrite + ?Sized> KeyStoreWrite for $ty {
            fn commit(&self, changes: &Changes) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).commit(changes)
            }
            fn revoke_where(&self, query: &KeyQuery, revocation: &Revocation) -> impl Future<Output = Result<Vec<KeyId>, StoreError>> + Send {
                (**self).revoke_where(query, revocation)
            }
        }
        impl<S: UsageStore + ?Sized> UsageStore for $ty {
            fn record_usage(&self, batch: &UsageBatch) -> impl Future<Output = Result<FlushOutcome, StoreError>> + Send {
                (**self).record_usage(batch)
            }
            fn usage(&self, id: KeyId, days: Range<time::Date>) -> impl Future<Output = Result<Vec<(time::Date, u64)>, StoreError>> + Send {
                (**self).usage(id, days)
            }
        }
    )*};
}

forward_store!(&S, Arc<S>);

/// `store.fetch(id)`, measured as a store call (metric and tracing span)
/// unless the store says it stays in the process
/// ([`KeyStore::IN_PROCESS`]).
pub(crate) async fn measured_fetch<S: KeyStore + ?Sized>(
    store: &S,
    id: KeyId,
) -> Result<Option<Arc<KeyView>>, StoreError> {
    if S::IN_PROCESS {
        return store.fetch(id).await;
    }
    let started = crate::metrics::Started::now();
    let view = crate::trace::store("fetch", store.fetch(id)).await;
    crate::metrics::store_call("fetch", started, &view);
    view
}
