//! The manager's one way to write: plan over what was read, commit with
//! guards, retry a conflicting plan (bounded, with jittered backoff), and
//! learn the outcome of a commit whose answer was lost.

use crate::Timestamp;

use super::KeyManager;
use super::gates::{CountBound, MAX_RETRIES, backoff, contended};
use crate::clock::Clock;
use crate::error::{Error, Result, StoreError, StoreErrorKind};
use crate::key::KeyId;
use crate::limits::Limits;
use crate::record::KeyRecord;
use crate::store::{Changes, KeyQuery, KeyStoreWrite, Put, UsageStore};

/// How often a commit whose answer was lost (a timeout, a dropped
/// connection) is sent again to learn whether it committed.
const RESENDS: usize = 2;

/// Whether a failed write's outcome is unknown: the deadline passed or the
/// connection was lost, possibly while the database was committing (both
/// PostgreSQL and SQLite finish a COMMIT whose client went away).
fn outcome_unknown(e: &StoreError) -> bool {
    matches!(
        e.kind(),
        StoreErrorKind::Timeout | StoreErrorKind::Unavailable
    )
}

/// Whether `stored` is the record `ours` that this manager wrote: the same
/// id, digest, legacy index and predecessor (ids are random 64-bit values
/// and digests are keyed by the server secret, so another write never
/// matches).
fn same_key(stored: &KeyRecord, ours: &KeyRecord) -> bool {
    stored.id == ours.id
        && stored.digest == ours.digest
        && stored.legacy.as_ref().map(|l| &l.index) == ours.legacy.as_ref().map(|l| &l.index)
        && stored.rotated_from == ours.rotated_from
}

/// An owner's records and the guard version read before them.
pub(super) struct OwnerSnapshot {
    pub(super) records: Vec<KeyRecord>,
    pub(super) version: u64,
}

impl OwnerSnapshot {
    /// Records that count toward the owner limit at `now`, `except` one.
    pub(super) fn counting(&self, now: Timestamp, except: Option<KeyId>) -> u32 {
        let n = self
            .records
            .iter()
            .filter(|r| Some(r.id) != except && r.counts_toward_limit(now))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl<S: KeyStoreWrite + UsageStore, C: Clock, L: Limits> KeyManager<S, C, L> {
    /// Every record of `owner` (all pages), with the owner version of the
    /// first page: read before any record, so a plan on this snapshot
    /// commits only if no guarded write came in between.
    pub(super) async fn owner_snapshot(&self, owner: &str) -> Result<OwnerSnapshot> {
        let mut query = KeyQuery::owner(owner);
        let first = self.store().list(&query).await.map_err(Error::from)?;
        let version = first.owner_version;
        let mut records = Vec::new();
        let mut page = first;
        loop {
            let next = query.next_page(&page);
            records.append(&mut page.records);
            let Some(next) = next else { break };
            query = next;
            page = self.store().list(&query).await.map_err(Error::from)?;
        }
        Ok(OwnerSnapshot { records, version })
    }

    /// Commits `changes`; when the answer was lost ([`outcome_unknown`]),
    /// sends the same commit again (at most [`RESENDS`] times), which the
    /// database orders after the lost one. When the resend is refused
    /// (`Conflict`: a revision or owner version moved; `IdCollision`: the
    /// id is taken) and `ours` is stored, the lost commit went through:
    /// `Ok`. Otherwise the resend's answer (the last one unknown: the
    /// outcome could not be learned).
    pub(super) async fn commit_resolved(
        &self,
        changes: &Changes,
        ours: &KeyRecord,
    ) -> Result<(), StoreError> {
        let store = self.store();
        let mut answer = store.commit(changes).await;
        for _ in 0..RESENDS {
            match &answer {
                Err(e) if outcome_unknown(e) => {}
                _ => break,
            }
            answer = match store.commit(changes).await {
                Err(e)
                    if matches!(
                        e.kind(),
                        StoreErrorKind::Conflict | StoreErrorKind::IdCollision
                    ) =>
                {
                    match store.get(ours.id).await {
                        Ok(Some(stored)) if same_key(&stored, ours) => Ok(()),
                        Ok(_) => Err(e),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
        }
        answer
    }

    /// Inserts the new `record` under the owner limit (and, for a derived
    /// key, `children`: the parent and its live-children limit), planned on
    /// an owner snapshot and committed with the owner guard; re-planned on a
    /// conflict. A record without owner, with no limit to keep, is one
    /// unguarded insert.
    ///
    /// # Errors
    /// [`Error::KeyLimitReached`]; a store error (`IdCollision` for a
    /// taken id or legacy index: the caller decides); [`contended`].
    pub(crate) async fn insert_planned(
        &self,
        record: &KeyRecord,
        now: Timestamp,
        children: Option<(KeyId, u32)>,
    ) -> Result<(), InsertError> {
        let owner = match (&record.owner, self.max_per_owner, children) {
            (Some(o), Some(_), _) | (Some(o), _, Some(_)) => Some(o.clone()),
            _ => None,
        };
        let _gate = match &owner {
            Some(o) => Some(self.gates.enter(o).await),
            None => None,
        };
        for attempt in 0..MAX_RETRIES {
            let mut changes = Changes::new();
            // The bound this plan leaves when it commits, and whether it
            // was planned on this process's cache (no listing read).
            let mut after = None;
            let mut from_cache = false;
            if let Some(owner) = &owner {
                let cached = match (self.max_per_owner, children) {
                    (Some(_), None) if self.gates.turn_over(owner) => {
                        // Leave the others a gap, then plan as they do.
                        backoff(1).await;
                        None
                    }
                    (Some(max), None) => self.gates.cached(owner).filter(|b| b.count < max),
                    _ => None,
                };
                let planned = match cached {
                    Some(bound) => {
                        from_cache = true;
                        bound
                    }
                    None => {
                        let snap = self.owner_snapshot(owner).await?;
                        let count = snap.counting(now, Some(record.id));
                        if let Some(max) = self.max_per_owner
                            && count >= max
                        {
                            return Err(Error::KeyLimitReached { limit: max }.into());
                        }
                        if let Some((parent, max)) = children {
                            let live = snap
                                .records
                                .iter()
                                .filter(|r| super::super::derive::is_child_of(r, parent))
                                .filter(|r| r.counts_toward_limit(now))
                                .count();
                            if live >= usize::try_from(max).unwrap_or(usize::MAX) {
                                return Err(Error::KeyLimitReached { limit: max }.into());
                            }
                        }
                        CountBound {
                            version: snap.version,
                            count,
                        }
                    }
                };
                changes = changes.guard(owner.clone(), planned.version);
                after = planned.version.checked_add(1).map(|version| CountBound {
                    version,
                    count: planned.count.saturating_add(1),
                });
            }
            changes.puts.push(Put::insert(record.clone()));
            let answer = self.commit_resolved(&changes, record).await;
            if let Some(owner) = &owner {
                let kept = if answer.is_ok() { after } else { None };
                self.gates.remember(owner, kept);
                let conflict = matches!(&answer, Err(e) if e.kind() == StoreErrorKind::Conflict);
                if conflict || from_cache {
                    self.gates.note(owner, conflict);
                }
            }
            match answer {
                Ok(()) => return Ok(()),
                // A stale cache entry: plan again on the listing, at once.
                Err(e) if e.kind() == StoreErrorKind::Conflict && from_cache => {}
                Err(e) if e.kind() == StoreErrorKind::Conflict => backoff(attempt).await,
                Err(e) => return Err(InsertError::Store(e)),
            }
        }
        Err(contended().into())
    }

    /// Reads key `id`, lets `change` compute the new record (`None`: nothing
    /// to do), and commits it at the revision read, planning again when the
    /// record changed in between. Returns (before, after-if-written).
    ///
    /// With an owner limit, a change that makes the key count toward the
    /// limit again (an expiry cleared or extended on an expired key, an
    /// owner change) is planned on an owner snapshot: refused with
    /// [`Error::KeyLimitReached`] when the owner is at the limit, else
    /// committed with the owner guard. Changes that cannot raise the count
    /// (disable, revoke, a rename) need no guard.
    pub(crate) async fn modify<F>(
        &self,
        id: KeyId,
        now: Timestamp,
        mut change: F,
    ) -> Result<(KeyRecord, Option<KeyRecord>)>
    where
        F: FnMut(&KeyRecord) -> Result<Option<KeyRecord>>,
    {
        for attempt in 0..MAX_RETRIES {
            let current = self.record(id).await?;
            let Some(next) = change(&current)? else {
                return Ok((current, None));
            };
            let mut changes = Changes::new();
            let owner = next.owner.clone();
            let mut _gate = None;
            let mut after = None;
            let mut from_cache = false;
            if let (Some(max), Some(owner)) = (self.max_per_owner, owner.as_deref())
                && next.counts_toward_limit(now)
                && !(current.counts_toward_limit(now) && current.owner.as_deref() == Some(owner))
            {
                _gate = Some(self.gates.enter(owner).await);
                // The revived key does not count yet, so a bound of the
                // owner's counting keys bounds the others too.
                let planned = match self.gates.cached(owner).filter(|b| b.count < max) {
                    Some(bound) => {
                        from_cache = true;
                        bound
                    }
                    None => {
                        let snap = self.owner_snapshot(owner).await?;
                        let count = snap.counting(now, Some(id));
                        if count >= max {
                            return Err(Error::KeyLimitReached { limit: max });
                        }
                        CountBound {
                            version: snap.version,
                            count,
                        }
                    }
                };
                changes = changes.guard(owner, planned.version);
                after = planned.version.checked_add(1).map(|version| CountBound {
                    version,
                    count: planned.count.saturating_add(1),
                });
            }
            changes
                .puts
                .push(Put::update(next.clone(), current.revision));
            let answer = self.store().commit(&changes).await;
            if _gate.is_some()
                && let Some(owner) = owner.as_deref()
            {
                let kept = if answer.is_ok() { after } else { None };
                self.gates.remember(owner, kept);
            }
            match answer {
                Ok(()) => {
                    let mut stored = next;
                    stored.revision = current.revision.wrapping_add(1);
                    stored.keep_last_use(&current);
                    return Ok((current, Some(stored)));
                }
                // A stale cache entry or a record changed meanwhile.
                Err(e) if e.kind() == StoreErrorKind::Conflict && from_cache => {}
                Err(e) if e.kind() == StoreErrorKind::Conflict => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(contended())
    }
}

/// Why [`KeyManager::insert_planned`] wrote nothing: a rule (already an
/// [`Error`]) or the store's answer, which the caller may act on.
#[derive(Debug)]
pub(crate) enum InsertError {
    Rule(Error),
    Store(StoreError),
}

impl From<Error> for InsertError {
    fn from(e: Error) -> Self {
        Self::Rule(e)
    }
}

impl From<InsertError> for Error {
    fn from(e: InsertError) -> Self {
        match e {
            InsertError::Rule(e) => e,
            InsertError::Store(e) => e.into(),
        }
    }
}
