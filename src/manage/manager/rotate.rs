//! [`KeyManager::rotate`]: a successor, the predecessor's grace period and
//! the end of the grandparent's, in one commit.

use super::gates::{MAX_RETRIES, backoff, contended};
use super::{KeyManager, KeySummary, Rotation};
use crate::clock::Clock;
use crate::error::{Error, Result, StoreErrorKind};
use crate::key::{ApiKey, KeyId};
use crate::limits::Limits;
use crate::pipeline::{Actor, AuditKind};
use crate::record::{KeyRecord, KeyStatus, NewKey};
use crate::store::{Changes, KeyStoreWrite, Put, UsageStore};

impl<S: KeyStoreWrite + UsageStore, C: Clock, L: Limits> KeyManager<S, C, L> {
    /// Issues a successor with the same prefix, owner, name, description,
    /// scopes, metadata and IP allowlist, and the same lifetime counted from
    /// now (unless [`Rotation::expires_at`] names another expiry; a key
    /// without expiry gives a successor without one); the old key keeps working for the
    /// grace period (never past its own expiry; zero: it stops now), then
    /// fails as expired. The records point at each other
    /// (`rotated_to` / `rotated_from`). The successor spends from the old
    /// key's limits account ([`KeyRecord::limits_account`]): one key credit
    /// balance and one set of rate-limit windows for both through the grace
    /// period, and the successor's after it. A key in its grace period does not
    /// count toward the owner limit, so rotating at the limit works. The
    /// grace is at most [`with_max_grace`](Self::with_max_grace) (7 days by default).
    /// Rotating a key whose own predecessor is still in its grace period
    /// ends that grace now, in the same commit (predecessor, successor and
    /// grandparent, each at the revision read): a rotation chain has at
    /// most two working keys at any time, however often it is rotated. A
    /// rotation leaves the owner's count as it was (the old key stops
    /// counting as the new one starts), so it needs no owner guard.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; [`Error::InvalidState`] when the key is
    /// revoked, expired, disabled, not yet valid or already rotated;
    /// [`Error::InvalidInput`] for a negative grace, one longer than
    /// [`with_max_grace`](Self::with_max_grace), or a bad new expiry;
    /// [`Error::StoreUnavailable`] when the store fails and the outcome could
    /// not be learned (a rotation whose commit outlived its deadline answers
    /// success with the new key; see
    /// [What a timeout means](Self#what-a-timeout-means)).
    pub async fn rotate(
        &self,
        id: KeyId,
        rotation: Rotation,
        actor: &Actor,
    ) -> Result<(ApiKey, KeySummary)> {
        if rotation.grace > self.max_grace {
            let max = self.max_grace.as_secs();
            let (n, unit) = match max {
                m if m % 86_400 == 0 => (m / 86_400, "day"),
                m if m % 3_600 == 0 => (m / 3_600, "hour"),
                m => (m, "second"),
            };
            let readable = format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
            return Err(Error::InvalidInput(format!(
                "the grace period is longer than the configured maximum ({readable})"
            )));
        }
        let now = self.now();
        for attempt in 0..MAX_RETRIES {
            let cur = self.record(id).await?;
            match cur.status {
                KeyStatus::Revoked => {
                    return Err(Error::InvalidState("a revoked key cannot be rotated"));
                }
                KeyStatus::Disabled => {
                    return Err(Error::InvalidState("a disabled key cannot be rotated"));
                }
                KeyStatus::Active => {}
            }
            if cur.expires_at.is_some_and(|e| now >= e) {
                return Err(Error::InvalidState("an expired key cannot be rotated"));
            }
            if cur.rotated_to.is_some() {
                return Err(Error::InvalidState("this key was already rotated"));
            }
            // Never past the supported range (saturating).
            let grace_end = now.saturating_add(rotation.grace);
            let grace_end = cur.expires_at.map_or(grace_end, |e| e.min(grace_end));
            if cur.not_before.is_some_and(|nb| grace_end <= nb || now < nb) {
                return Err(Error::InvalidState(
                    "a key that is not yet valid cannot be rotated",
                ));
            }
            let mut new = NewKey::new(cur.prefix.as_str());
            new.owner = cur.owner.clone();
            new.name = cur.name.clone();
            new.description = cur.description.clone();
            new.scopes = cur.scopes.iter().map(|s| s.as_str().to_owned()).collect();
            new.metadata = cur.metadata.clone();
            // The successor spends from its predecessor's limits account:
            // one balance and one set of windows through the grace period
            // and after it, never a second balance made by a rotation.
            let account = cur.readable_limits_account()?;
            new.metadata
                .insert(KeyRecord::LIMITS_OF.to_owned(), account.to_string());
            new.ip_allowlist = cur.ip_allowlist.clone();
            // Unless the rotation names one, the successor gets the old
            // key's lifetime again, counted from now (within the policy's
            // maximum): a rotation replaces the secret, it never turns a
            // key that expires into one that does not.
            new.expires_at = rotation.expires_at.or_else(|| {
                let end = cur.expires_at?;
                let life = end.saturating_duration_since(cur.not_before.unwrap_or(cur.created_at));
                let max = self
                    .policies()
                    .and_then(|p| p.max_lifetime(&new.prefix, new.owner.as_deref()));
                Some(now.saturating_add(max.map_or(life, |max| life.min(max))))
            });
            // A derived key's successor never outlives its parent (it would
            // be refused at verification); the parent is itself within its
            // own ancestors.
            let parent_end = match crate::verify::parent_of_record(&cur) {
                Some(Ok(parent)) => match self.record(parent).await {
                    Ok(p) => p.expires_at,
                    Err(Error::KeyNotFound) => {
                        return Err(Error::InvalidState(
                            "a derived key whose parent is gone cannot be rotated",
                        ));
                    }
                    Err(e) => return Err(e),
                },
                Some(Err(())) => {
                    return Err(Error::InvalidRecord("unreadable parent id".into()));
                }
                None => None,
            };
            for latest in [rotation.no_later_than, parent_end].into_iter().flatten() {
                new.expires_at = Some(new.expires_at.map_or(latest, |e| e.min(latest)));
            }
            // A rotation replaces an approved key: no second approval.
            let (key, mut successor) = self.issue_planned(new, now, false)?;
            successor.rotated_from = Some(cur.id);
            let mut pred = cur.clone();
            pred.expires_at = Some(grace_end);
            pred.rotated_to = Some(successor.id);
            let mut changes = Changes::new();
            // The predecessor's own predecessor stops working now, if it
            // still points back and would otherwise work past now.
            if let Some(g) = cur.rotated_from.filter(|g| *g != successor.id)
                && let Some(mut gp) = self.store().get(g).await.map_err(Error::from)?
                && gp.rotated_to == Some(cur.id)
                && gp.expires_at.is_none_or(|e| e > successor.created_at)
            {
                let at = successor.created_at;
                gp.expires_at = Some(at);
                if gp.not_before.is_some_and(|nb| nb >= at) {
                    gp.not_before = None;
                }
                let expected = gp.revision;
                changes.puts.push(Put::update(gp, expected));
            }
            changes.puts.push(Put::update(pred.clone(), cur.revision));
            changes.puts.push(Put::insert(successor.clone()));
            match self.commit_resolved(&changes, &successor).await {
                Ok(()) => {
                    self.emit(self.event(
                        now,
                        AuditKind::Rotated {
                            successor: successor.id,
                            grace_ends: grace_end,
                        },
                        &pred,
                        actor,
                    ));
                    return Ok((key, KeySummary::from_record(&successor, now)));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        StoreErrorKind::Conflict
                            | StoreErrorKind::IdCollision
                            | StoreErrorKind::NotFound
                    ) =>
                {
                    backoff(attempt).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(contended())
    }
}
