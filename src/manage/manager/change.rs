//! Changes to keys: update, disable, enable, revoke, delete, and the bulk
//! revocations.

use std::ops::Range;

use crate::Timestamp;

use super::gates::{MAX_RETRIES, backoff, contended};
use super::{KeyManager, KeySummary, KeyUpdate};
use crate::clock::Clock;
use crate::error::{Error, Result, StoreErrorKind};
use crate::key::KeyId;
use crate::key::Prefix;
use crate::limits::Limits;
use crate::pipeline::{Actor, AuditEvent, AuditKind};
use crate::record::{KeyRecord, KeyStatus, Revocation};
use crate::store::{Changes, Delete, KeyQuery, KeyStoreWrite, Put, UsageStore};
use crate::verify::Bounds;

impl<S: KeyStoreWrite + UsageStore, C: Clock, L: Limits> KeyManager<S, C, L> {
    /// Changes the fields set in `update`.
    ///
    /// With an owner limit, a new expiry (or none) that brings an expired
    /// key back is checked against the limit in the same atomic write.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; [`Error::InvalidState`] for a revoked key, or
    /// a new expiry on a key replaced by rotation;
    /// [`Error::KeyLimitReached`] when a new expiry would revive an expired
    /// key while its owner is at the limit; [`Error::InvalidScope`];
    /// [`Error::InvalidInput`] for an expiry not in the future or not after
    /// not-before; [`Error::PolicyViolation`] when a derived key's new
    /// scopes, expiry or IP allowlist would no longer be within its parent
    /// (verification would refuse the key from then on);
    /// [`Error::StoreUnavailable`].
    pub async fn update(&self, id: KeyId, update: KeyUpdate, actor: &Actor) -> Result<KeySummary> {
        let now = self.now();
        let scopes = update
            .scopes
            .as_ref()
            .map(crate::record::ScopeSet::parse)
            .transpose()?;
        // A derived key stays within its parent (see `derived`): its bounds
        // are read first when the update touches them.
        let parent =
            if scopes.is_some() || update.expires_at.is_some() || update.ip_allowlist.is_some() {
                self.parent_of(&self.record(id).await?).await?.flatten()
            } else {
                None
            };
        let mut fields = Vec::new();
        let (before, after) = self
            .modify(id, now, |cur| {
                if cur.status == KeyStatus::Revoked {
                    return Err(Error::InvalidState("a revoked key cannot be changed"));
                }
                fields.clear();
                let mut next = cur.clone();
                if let Some(name) = &update.name
                    && *name != cur.name
                {
                    next.name = name.clone();
                    fields.push("name");
                }
                if let Some(d) = &update.description
                    && *d != cur.description
                {
                    next.description = d.clone();
                    fields.push("description");
                }
                if let Some(s) = &scopes
                    && *s != cur.scopes
                {
                    next.scopes = s.clone();
                    fields.push("scopes");
                }
                if let Some(exp) = update.expires_at
                    && exp != cur.expires_at
                {
                    if cur.rotated_to.is_some() {
                        return Err(Error::InvalidState(
                            "the expiry of a key replaced by rotation cannot be changed",
                        ));
                    }
                    if let Some(e) = exp {
                        if e <= now {
                            return Err(Error::InvalidInput(
                                "expires_at must be in the future".into(),
                            ));
                        }
                        if cur.not_before.is_some_and(|nb| e <= nb) {
                            return Err(Error::InvalidInput(
                                "expires_at must be after not_before".into(),
                            ));
                        }
                    }
                    next.expires_at = exp;
                    fields.push("expires_at");
                }
                if update.metadata.is_some() || !update.metadata_entries.is_empty() {
                    // A derived key's parent link and a key's limits
                    // account are the crate's, not the caller's: kept as
                    // they are.
                    let mut m = update
                        .metadata
                        .clone()
                        .unwrap_or_else(|| cur.metadata.clone());
                    for (k, v) in &update.metadata_entries {
                        match v {
                            Some(v) => m.insert(k.clone(), v.clone()),
                            None => m.remove(k),
                        };
                    }
                    for link in [KeyRecord::PARENT, KeyRecord::LIMITS_OF] {
                        m.remove(link);
                        if let Some(p) = cur.metadata.get(link) {
                            m.insert(link.to_owned(), p.clone());
                        }
                    }
                    if m != cur.metadata {
                        next.metadata = m;
                        fields.push("metadata");
                    }
                }
                if let Some(l) = &update.ip_allowlist
                    && *l != cur.ip_allowlist
                {
                    next.ip_allowlist = l.clone();
                    fields.push("ip_allowlist");
                }
                if let Some(parent) = &parent
                    && fields
                        .iter()
                        .any(|f| matches!(*f, "scopes" | "expires_at" | "ip_allowlist"))
                {
                    Bounds::of_record(&next)
                        .within(&Bounds::of_record(parent))
                        .map_err(|rule| Error::PolicyViolation { rule })?;
                }
                // A change of what policies govern must leave a compliant
                // key; a rename or a note on a non-compliant key is allowed.
                if fields.iter().any(|f| matches!(*f, "scopes" | "expires_at")) {
                    self.check_policies(&next, now)?;
                }
                if next.is_publishable() && fields.contains(&"metadata") {
                    crate::pipeline::validate_origins(
                        next.metadata
                            .get(crate::pipeline::ALLOWED_ORIGINS)
                            .map(String::as_str),
                    )?;
                }
                Ok((!fields.is_empty()).then_some(next))
            })
            .await?;
        let result = after.as_ref().unwrap_or(&before);
        if after.is_some() {
            self.emit(self.event(now, AuditKind::Updated { fields }, result, actor));
        }
        Ok(KeySummary::from_record(result, now))
    }

    /// The parent of `r`: `None` when `r` is not a derived key, `Some(None)`
    /// when its parent is gone (its children are refused anyway).
    pub(crate) async fn parent_of(&self, r: &KeyRecord) -> Result<Option<Option<KeyRecord>>> {
        match crate::verify::parent_of_record(r) {
            None => Ok(None),
            Some(Err(())) => Err(Error::InvalidRecord("unreadable parent id".into())),
            Some(Ok(parent)) => match self.record(parent).await {
                Ok(p) => Ok(Some(Some(p))),
                Err(Error::KeyNotFound) => Ok(Some(None)),
                Err(e) => Err(e),
            },
        }
    }

    async fn set_status(&self, id: KeyId, to: KeyStatus, actor: &Actor) -> Result<KeySummary> {
        let now = self.now();
        let (before, after) = self
            .modify(id, now, |cur| match cur.status {
                KeyStatus::Revoked => Err(Error::InvalidState(
                    "a revoked key can never be enabled or disabled again",
                )),
                s if s == to => Ok(None),
                _ => {
                    let mut next = cur.clone();
                    next.status = to;
                    if to == KeyStatus::Active {
                        // Enabling is the approval of a pending key.
                        next.metadata.remove(KeyRecord::PENDING_APPROVAL);
                    }
                    Ok(Some(next))
                }
            })
            .await?;
        let result = after.as_ref().unwrap_or(&before);
        if after.is_some() {
            let kind = if to == KeyStatus::Disabled {
                AuditKind::Disabled
            } else {
                AuditKind::Enabled
            };
            self.emit(self.event(now, kind, result, actor));
        }
        Ok(KeySummary::from_record(result, now))
    }

    /// Disables a key (reversible). It fails verification with
    /// `DISABLED_API_KEY` from the moment this returns. Disabling a disabled
    /// key does nothing.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; [`Error::InvalidState`] for a revoked key;
    /// [`Error::StoreUnavailable`].
    pub async fn disable(&self, id: KeyId, actor: &Actor) -> Result<KeySummary> {
        self.set_status(id, KeyStatus::Disabled, actor).await
    }

    /// Enables a disabled key again. Enabling an active key does nothing.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; [`Error::InvalidState`] for a revoked key
    /// (revocation is permanent); [`Error::StoreUnavailable`].
    pub async fn enable(&self, id: KeyId, actor: &Actor) -> Result<KeySummary> {
        self.set_status(id, KeyStatus::Active, actor).await
    }

    /// Revokes a key for good, with `reason` and the current time. Revoking
    /// a revoked key does nothing (the first revocation stays).
    ///
    /// # Errors
    /// [`Error::KeyNotFound`], [`Error::StoreUnavailable`].
    pub async fn revoke(&self, id: KeyId, reason: &str, actor: &Actor) -> Result<KeySummary> {
        let now = self.now();
        let record = self.revoke_one(id, reason, actor).await?;
        // Verification refuses derived keys from their parent's revocation
        // on; revoking them too makes it permanent.
        if record.status == KeyStatus::Revoked {
            self.revoke_children(&record, "parent key revoked", actor)
                .await?;
        }
        Ok(KeySummary::from_record(&record, now))
    }

    /// [`revoke`](Self::revoke) without the derived keys.
    pub(super) async fn revoke_one(
        &self,
        id: KeyId,
        reason: &str,
        actor: &Actor,
    ) -> Result<KeyRecord> {
        let now = self.now();
        let (before, after) = self
            .modify(id, now, |cur| {
                if cur.status == KeyStatus::Revoked {
                    return Ok(None);
                }
                let mut next = cur.clone();
                next.status = KeyStatus::Revoked;
                next.revocation = Some(Revocation {
                    at: now,
                    reason: reason.to_owned(),
                });
                Ok(Some(next))
            })
            .await?;
        let result = after.as_ref().unwrap_or(&before);
        if after.is_some() {
            let mut ev = self.event(now, AuditKind::Revoked, result, actor);
            ev.reason = Some(reason.to_owned());
            self.emit(ev);
        }
        Ok(result.clone())
    }

    /// Deletes a key's record. In the same commit, the rotation links of
    /// its predecessor and successor that point at it are cleared. Its
    /// derived keys, which never verify without it, are revoked first
    /// (reason `parent key deleted`), so no listing shows them active and
    /// they stop counting toward the owner's limit; a delete that fails
    /// after that leaves them revoked, and running it again finishes it.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`], [`Error::StoreUnavailable`].
    pub async fn delete(&self, id: KeyId, actor: &Actor) -> Result<()> {
        let now = self.now();
        // A delete may revive a predecessor in its grace period (below):
        // with an owner limit, it plans inside the owner's gate.
        let gate_owner = match self.max_per_owner {
            Some(_) => self.record(id).await?.owner,
            None => None,
        };
        let _gate = match &gate_owner {
            Some(o) => Some(self.gates.enter(o).await),
            None => None,
        };
        let doomed = self.record(id).await?;
        self.revoke_children(&doomed, "parent key deleted", actor)
            .await?;
        for attempt in 0..MAX_RETRIES {
            let record = self.record(id).await?;
            let mut changes = Changes::new();
            changes.deletes.push(Delete {
                id,
                expected: record.revision,
            });
            for (other, successor) in [(record.rotated_to, true), (record.rotated_from, false)] {
                let Some(other) = other.filter(|o| *o != id) else {
                    continue;
                };
                let Some(mut r) = self.store().get(other).await.map_err(Error::from)? else {
                    continue;
                };
                let counted = r.counts_toward_limit(now);
                let link = if successor {
                    &mut r.rotated_from
                } else {
                    &mut r.rotated_to
                };
                if *link == Some(id) {
                    *link = None;
                    // Clearing a predecessor's link to its deleted successor
                    // makes a key still in its grace period count toward the
                    // owner limit again: planned like any revival. Below the
                    // limit it is committed with the owner guard; at the
                    // limit the grace ends now (the key expires), so a
                    // delete never takes the owner past its limit.
                    if let (Some(max), Some(owner)) = (self.max_per_owner, r.owner.clone())
                        && !counted
                        && r.counts_toward_limit(now)
                    {
                        let snap = self.owner_snapshot(&owner).await?;
                        if snap.counting(now, Some(r.id)) >= max {
                            r.expires_at = Some(now);
                            if r.not_before.is_some_and(|nb| nb >= now) {
                                r.not_before = None;
                            }
                        } else {
                            changes = changes.guard(owner.clone(), snap.version);
                        }
                        self.gates.remember(&owner, None);
                    }
                    let expected = r.revision;
                    changes.puts.push(Put::update(r, expected));
                }
            }
            match self.store().commit(&changes).await {
                Ok(()) => {
                    self.emit(self.event(now, AuditKind::Deleted, &record, actor));
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        StoreErrorKind::Conflict | StoreErrorKind::NotFound
                    ) =>
                {
                    backoff(attempt).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(contended())
    }

    // ----- bulk -----

    fn revoked_events(
        &self,
        ids: &[KeyId],
        owner: Option<&str>,
        reason: &str,
        actor: &Actor,
        now: Timestamp,
    ) {
        for id in ids {
            let mut ev = AuditEvent::new(now, AuditKind::Revoked)
                .key(*id, owner)
                .by(actor);
            ev.reason = Some(reason.to_owned());
            self.emit(ev);
        }
    }

    /// Revokes every key of `owner` (a user removed from an account), in
    /// commits of at most [`Changes::MAX_ITEMS`] keys
    /// ([`KeyStoreWrite::revoke_where`]; a SQL store does it in one
    /// statement). Returns the ids revoked (keys revoked before are left as
    /// they were).
    ///
    /// Idempotent and resumable: when it fails part way, the keys revoked
    /// so far stay revoked, and calling it again revokes the rest.
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] (then some keys may be revoked already:
    /// call again).
    pub async fn revoke_owner(
        &self,
        owner: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<Vec<KeyId>> {
        let now = self.now();
        let ids = self
            .store()
            .revoke_where(
                &KeyQuery::owner(owner),
                &Revocation {
                    at: now,
                    reason: reason.to_owned(),
                },
            )
            .await
            .map_err(Error::from)?;
        self.revoked_events(&ids, Some(owner), reason, actor, now);
        Ok(ids)
    }

    /// Revokes every key with `prefix` created in `created` (start
    /// inclusive, end exclusive), whoever owns it: the response to a leaked
    /// database or server secret. Returns the ids revoked. Their derived
    /// keys, made in the window or after it, are revoked too (reason
    /// `parent key revoked`, not in the returned ids). Idempotent and
    /// resumable as [`revoke_owner`](Self::revoke_owner).
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`] for a malformed prefix;
    /// [`Error::StoreUnavailable`] (then some keys may be revoked already:
    /// call again).
    pub async fn revoke_created_between(
        &self,
        prefix: &str,
        created: Range<Timestamp>,
        reason: &str,
        actor: &Actor,
    ) -> Result<Vec<KeyId>> {
        let now = self.now();
        let prefix = Prefix::new(prefix)?;
        let ids = self
            .store()
            .revoke_where(
                &KeyQuery::created(prefix.clone(), created.clone()),
                &Revocation {
                    at: now,
                    reason: reason.to_owned(),
                },
            )
            .await
            .map_err(Error::from)?;
        self.revoked_events(&ids, None, reason, actor, now);
        // Derived keys made outside the window: verification refuses them
        // from their parent's revocation on; revoking them too makes it
        // permanent and shows it in listings (as `revoke` does).
        self.revoke_children_of_matching(KeyQuery::created(prefix, created), actor)
            .await?;
        Ok(ids)
    }
}
