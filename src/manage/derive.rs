use std::collections::BTreeMap;

use crate::Timestamp;

use super::manager::{KeyManager, KeySummary};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::key::{ApiKey, KeyId};
use crate::limits::{
    Admission, CreditAccount, CreditBalances, CreditCharge, Limits, Quota, Verdict,
};
use crate::pipeline::{Actor, AuditKind};
use crate::record::IpNet;
use crate::record::{KeyRecord, KeyStatus, NewKey};
use crate::store::{Changes, Cursor, KeyQuery, KeyStoreWrite, Put, UsageStore};
use crate::verify::{Bounds, parent_of_record};

/// [`KeyManager::derive`]: child keys that only narrow their parent (for
/// AI agents, CI jobs, one-off scripts). The rules, and how a child dies
/// with its parent, are in [`Derivation::MAX_DEPTH`](crate::Derivation::MAX_DEPTH).
///
/// ```
/// use apikey::*;
/// use std::time::Duration;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap());
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[6; 32])?)?);
/// let keys = KeyManager::with_clock(verifier, MemoryStore::new(), clock.clone());
/// let admin = Actor::new("admin");
/// let (_parent_key, parent) = keys
///     .create(NewKey::new("sk_live_").owner("user_1").scopes(["tasks:read", "tasks:write"]), &admin)
///     .await?;
/// // An agent gets read access for one hour.
/// let (agent_key, agent) = keys
///     .derive(parent.id, Derivation::new("agent").scopes(["tasks:read"]).expires_at(clock.now() + Duration::from_secs(3_600)), &admin)
///     .await?;
/// keys.authenticate(agent_key.expose_secret(), &Requirement::scope("tasks:read")?, None).await?;
/// // Never broader than its parent.
/// let err = keys.derive(parent.id, Derivation::new("x").scopes(["admin"]), &admin).await.unwrap_err();
/// assert_eq!(err.code(), "POLICY_VIOLATION");
/// assert_eq!(keys.children(parent.id).await?[0].id, agent.id);
/// // Revoking the parent revokes the agent's key.
/// keys.revoke(parent.id, "rotated out", &admin).await?;
/// let err = keys.authenticate(agent_key.expose_secret(), &Requirement::none(), None).await.unwrap_err();
/// assert_eq!(err.code(), "REVOKED_API_KEY");
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
///
/// How a derived key narrows its parent; every unset field is the parent's.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Derivation {
    /// Name of the child.
    pub name: String,
    /// Scopes (each granted by the parent's). Defaults to the parent's.
    pub scopes: Option<Vec<String>>,
    /// Expiry (at most the parent's). Defaults to the parent's.
    pub expires_at: Option<Timestamp>,
    /// IP allowlist (within the parent's). Defaults to the parent's.
    pub ip_allowlist: Option<Vec<IpNet>>,
    /// Metadata of the child, over the parent's own entries (its plan, its
    /// labels), which the child inherits; the crate's entries (`apikey.*`)
    /// are not inherited, and the reserved links
    /// ([`KeyRecord::PARENT`](crate::KeyRecord::PARENT),
    /// [`KeyRecord::LIMITS_OF`](crate::KeyRecord::LIMITS_OF)) are refused.
    pub metadata: BTreeMap<String, String>,
}

impl Derivation {
    /// The deepest chain of derived keys the authenticator follows; deeper
    /// chains are refused, and
    /// [`KeyManager::with_derivation_limits`](crate::KeyManager::with_derivation_limits)
    /// cannot set a depth above it.
    pub const MAX_DEPTH: u8 = crate::verify::MAX_DERIVATION_DEPTH;

    /// The default of
    /// [`KeyManager::with_derivation_limits`](crate::KeyManager::with_derivation_limits):
    /// chains of at most 2 derived keys below a key, at most 100 live
    /// children per parent.
    pub const DEFAULT_LIMITS: (u8, u32) = super::manager::DEFAULT_DERIVATION_LIMITS;
}

impl Derivation {
    /// A child named `name`, otherwise as its parent.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
    /// Narrows the scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }
    /// Sets an earlier expiry.
    pub fn expires_at(mut self, at: Timestamp) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Narrows the IP allowlist.
    pub fn ip_allowlist(mut self, list: Vec<IpNet>) -> Self {
        self.ip_allowlist = Some(list);
        self
    }
    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

pub(crate) fn is_child_of(r: &KeyRecord, parent: KeyId) -> bool {
    matches!(parent_of_record(r), Some(Ok(p)) if p == parent)
}

impl<S: KeyStoreWrite + UsageStore, C: Clock, L: Limits> KeyManager<S, C, L> {
    /// Derives a child of key `parent`: same owner, prefix and environment,
    /// narrowed by `derivation` (see [`Derivation::MAX_DEPTH`](crate::Derivation::MAX_DEPTH)).
    /// The issuance policies and the owner limit apply as on
    /// [`create`](Self::create).
    ///
    /// The child has no budget of its own: it spends from its parent's
    /// limits account ([`KeyRecord::limits_account`]: the parent's key
    /// credits and rate-limit windows). For a budget of its own, use
    /// [`derive_with_credits`](Self::derive_with_credits).
    ///
    /// The live-children limit and the owner limit are counted on the
    /// owner's listing and the child is committed with the owner guard, so
    /// concurrent derivations from one parent never exceed either.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; [`Error::InvalidState`] when the parent is
    /// not usable now (revoked, disabled, expired, not yet valid), has no
    /// owner, or the chain would be deeper than
    /// [`with_derivation_limits`](Self::with_derivation_limits) allows;
    /// [`Error::KeyLimitReached`] at the live-children or owner limit;
    /// [`Error::PolicyViolation`] when the child would be broader than its
    /// parent or break a policy; [`Error::InvalidInput`] for the reserved
    /// metadata entry or a bad expiry; [`Error::StoreUnavailable`].
    pub async fn derive(
        &self,
        parent: KeyId,
        derivation: Derivation,
        actor: &Actor,
    ) -> Result<(ApiKey, KeySummary)> {
        let (planned, _) = self.plan_child(parent, derivation, true).await?;
        self.commit_child(planned, parent, None, actor).await
    }

    /// The child of `parent` that `derivation` describes, checked against
    /// the parent and the policies: the key, its record and the time, and
    /// the parent's limits account (what a budget is carved from). With
    /// `shared_limits` (no budget of its own) the child uses its parent's
    /// limits account: its requests spend the parent's rate-limit windows
    /// and key credits, so a child never adds to what its parent may spend.
    async fn plan_child(
        &self,
        parent: KeyId,
        derivation: Derivation,
        shared_limits: bool,
    ) -> Result<((ApiKey, KeyRecord, Timestamp), KeyId)> {
        let now = self.now();
        let (max_depth, _) = self.derivation;
        super::manager::reserved_links(&derivation.metadata)?;
        let p = self.record(parent).await?;
        if !p.is_usable_at(now) {
            return Err(Error::InvalidState(
                "only a usable key can have derived keys",
            ));
        }
        let Some(owner) = p.owner.clone() else {
            return Err(Error::InvalidState(
                "a key without owner cannot have derived keys",
            ));
        };
        // Depth of the child: one more than the parent's ancestors.
        let mut depth = 1u8;
        let mut cur = p.clone();
        while let Some(up) = parent_of_record(&cur) {
            depth = depth.saturating_add(1);
            if depth > max_depth {
                break;
            }
            let up = up.map_err(|()| Error::InvalidRecord("unreadable parent id".into()))?;
            cur = self.record(up).await?;
        }
        if depth > max_depth {
            return Err(Error::InvalidState(
                "the chain of derived keys would be too deep",
            ));
        }
        let mut new = NewKey::new(p.prefix.as_str()).owner(owner);
        new.name = derivation.name;
        new.scopes = derivation
            .scopes
            .unwrap_or_else(|| p.scopes.iter().map(|s| s.as_str().to_owned()).collect());
        new.expires_at = derivation.expires_at.or(p.expires_at);
        new.ip_allowlist = derivation
            .ip_allowlist
            .unwrap_or_else(|| p.ip_allowlist.clone());
        // What the parent's metadata says of it (its plan, its labels)
        // holds for the child unless the derivation says otherwise; the
        // crate's own entries (`apikey.*`) do not carry over. With the
        // parent's plan the child's requests are limited by the quota of
        // the windows it shares with its parent.
        new.metadata = p
            .metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("apikey."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        new.metadata.extend(derivation.metadata);
        new.metadata
            .insert(KeyRecord::PARENT.to_owned(), parent.to_string());
        let account = p.readable_limits_account()?;
        if shared_limits {
            new.metadata
                .insert(KeyRecord::LIMITS_OF.to_owned(), account.to_string());
        }
        // A publishable child is used from its parent's pages only.
        if let Some(origins) = p.metadata.get(crate::pipeline::ALLOWED_ORIGINS) {
            new.metadata
                .insert(crate::pipeline::ALLOWED_ORIGINS.to_owned(), origins.clone());
        }
        let (key, record) = self.issue_planned(new, now, true)?;
        Bounds::of_record(&record)
            .within(&Bounds::of_record(&p))
            .map_err(|rule| Error::PolicyViolation { rule })?;
        Ok(((key, record, now), account))
    }

    /// Commits a planned child under the live-children and owner limits,
    /// and audits it (with its credit budget, if any).
    async fn commit_child(
        &self,
        (key, record, now): (ApiKey, KeyRecord, Timestamp),
        parent: KeyId,
        budget: Option<u64>,
        actor: &Actor,
    ) -> Result<(ApiKey, KeySummary)> {
        let (_, max_children) = self.derivation;
        self.insert_planned(&record, now, Some((parent, max_children)))
            .await?;
        let mut ev = self.event(now, AuditKind::Created, &record, actor);
        ev.reason = Some(match budget {
            None => format!("derived from {parent}"),
            Some(n) => format!("derived from {parent} with a budget of {n} credits"),
        });
        self.emit(ev);
        Ok((key, KeySummary::from_record(&record, now)))
    }

    /// The keys derived directly from `parent`, oldest first.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; as [`list`](Self::list).
    pub async fn children(&self, parent: KeyId) -> Result<Vec<KeySummary>> {
        let now = self.now();
        let p = self.record(parent).await?;
        let Some(owner) = &p.owner else {
            return Ok(Vec::new());
        };
        Ok(self
            .records_of(owner)
            .await?
            .iter()
            .filter(|r| is_child_of(r, parent))
            .map(|r| KeySummary::from_record(r, now))
            .collect())
    }

    /// Revokes the descendants of every revoked key `query` matches
    /// (reason `parent key revoked`): planned from every matching key,
    /// revoked before or just now, so a call that failed half-way and is
    /// run again finishes the cascade. One listing of `query` (paged), then
    /// [`revoke_descendants`](Self::revoke_descendants) once per owner.
    pub(super) async fn revoke_children_of_matching(
        &self,
        query: KeyQuery,
        actor: &Actor,
    ) -> Result<()> {
        let mut roots: BTreeMap<String, Vec<KeyId>> = BTreeMap::new();
        let mut page = query;
        loop {
            let listing = self.store().list(&page).await?;
            let full = listing.records.len() >= page.page_size();
            for r in &listing.records {
                if let (Some(owner), KeyStatus::Revoked) = (&r.owner, r.status) {
                    roots.entry(owner.clone()).or_default().push(r.id);
                }
            }
            match listing.records.last() {
                Some(last) if full => {
                    page = page.after(Some(Cursor {
                        at: last.created_at,
                        id: last.id,
                    }));
                }
                _ => break,
            }
        }
        for (owner, ids) in roots {
            self.revoke_descendants(&owner, &ids, "parent key revoked", actor)
                .await?;
        }
        Ok(())
    }

    /// Revokes the descendants of `parent` (children, theirs, ...), revoked
    /// or being deleted, with `reason`: planned on the owner's listing and
    /// committed in commits of at most [`Changes::MAX_ITEMS`] records, each
    /// at the revision read (a conflicting commit plans again). One
    /// `revoked` event per key.
    pub(super) async fn revoke_children(
        &self,
        parent: &KeyRecord,
        reason: &str,
        actor: &Actor,
    ) -> Result<()> {
        match &parent.owner {
            Some(owner) => {
                self.revoke_descendants(owner, &[parent.id], reason, actor)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Revokes the descendants of `roots`, keys of `owner`, as
    /// [`revoke_children`](Self::revoke_children) does for one parent: one
    /// listing of the owner per attempt, however many roots.
    async fn revoke_descendants(
        &self,
        owner: &str,
        roots: &[KeyId],
        reason: &str,
        actor: &Actor,
    ) -> Result<()> {
        let now = self.now();
        for attempt in 0..super::manager::MAX_RETRIES {
            let records = self.records_of(owner).await?;
            let mut pending = roots.to_vec();
            let mut seen: std::collections::HashSet<KeyId> = roots.iter().copied().collect();
            let mut todo = Vec::new();
            while let Some(id) = pending.pop() {
                for child in records.iter().filter(|r| is_child_of(r, id)) {
                    if !seen.insert(child.id) {
                        continue;
                    }
                    pending.push(child.id);
                    if child.status != KeyStatus::Revoked {
                        todo.push(child);
                    }
                }
            }
            if todo.is_empty() {
                return Ok(());
            }
            let mut conflicted = false;
            for chunk in todo.chunks(Changes::MAX_ITEMS) {
                let mut changes = Changes::new();
                for child in chunk {
                    let mut next = (*child).clone();
                    next.status = KeyStatus::Revoked;
                    next.revocation = Some(crate::record::Revocation {
                        at: now,
                        reason: reason.to_owned(),
                    });
                    changes.puts.push(Put::update(next, child.revision));
                }
                match self.store().commit(&changes).await {
                    Ok(()) => {
                        for child in chunk {
                            let mut ev = self.event(now, AuditKind::Revoked, child, actor);
                            ev.reason = Some(reason.to_owned());
                            self.emit(ev);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            crate::StoreErrorKind::Conflict | crate::StoreErrorKind::NotFound
                        ) =>
                    {
                        conflicted = true;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !conflicted {
                return Ok(());
            }
            super::manager::backoff(attempt).await;
        }
        Err(super::manager::contended())
    }
}

impl<S, C, L> KeyManager<S, C, L>
where
    S: KeyStoreWrite + UsageStore,
    C: Clock,
    L: Limits + CreditBalances,
{
    /// Like [`derive`](Self::derive), with a credit budget of `budget`
    /// carved from the parent's: the child gets a key balance of `budget`
    /// (no refill) and, when the parent's key is metered, the balance of
    /// the parent's limits account ([`KeyRecord::limits_account`]: the
    /// parent's own, or the one it spends from as a rotated successor or a
    /// child without a budget) is debited by as much first, atomically (refused, with
    /// nothing written, when it holds less). An unmetered parent gives the
    /// child a budget of its own: the child is metered, the parent is not.
    ///
    /// The child's balance exists before the child does, so a child never
    /// verifies unmetered where these limits are read: balances live in
    /// the manager's [`Limits`], so with several instances they must share
    /// them ([`MemoryLimits`](crate::limits::MemoryLimits) is one
    /// process's: on another instance the child has no balance and spends
    /// unmetered; a shared backend such as `apikey-redis` holds the budget
    /// on every instance). A failed commit (a limit, a conflict, the store)
    /// gives the credits back to the parent. A process killed between the
    /// debit and the commit loses at most `budget` of the parent's credits
    /// (fail closed: a child is never created without its debit).
    ///
    /// ```
    /// use apikey::*;
    /// use apikey::limits::{CreditAccount, CreditBalances, MemoryLimits};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[6; 32])?)?);
    /// let keys = KeyManager::new(verifier, MemoryStore::new()).with_limits(MemoryLimits::new());
    /// let admin = Actor::new("admin");
    /// let (_, parent) = keys.create(NewKey::new("sk_live_").owner("user_1"), &admin).await?;
    /// let limits = keys.authenticator().limits();
    /// limits.set_credits(CreditAccount::Key(parent.id.as_u64()), 100, None).await?;
    /// let (_, agent) = keys.derive_with_credits(parent.id, Derivation::new("agent"), 30, &admin).await?;
    /// let left = |id: KeyId| async move { limits.credits(CreditAccount::Key(id.as_u64())).await.unwrap().map(|s| s.remaining) };
    /// assert_eq!((left(parent.id).await, left(agent.id).await), (Some(70), Some(30)));
    /// let err = keys.derive_with_credits(parent.id, Derivation::new("big"), 71, &admin).await.unwrap_err();
    /// assert_eq!(err.code(), "INVALID_STATE");
    /// assert_eq!(left(parent.id).await, Some(70));
    /// # Ok::<(), Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// As [`derive`](Self::derive); [`Error::InvalidState`] when the
    /// parent's balance cannot cover `budget`; [`Error::StoreUnavailable`]
    /// when the limits backend fails (nothing is created then).
    pub async fn derive_with_credits(
        &self,
        parent: KeyId,
        derivation: Derivation,
        budget: u64,
        actor: &Actor,
    ) -> Result<(ApiKey, KeySummary)> {
        let (planned, account) = self.plan_child(parent, derivation, false).await?;
        let child = planned.1.id;
        let limits = self.authenticator().limits();
        // The parent's limits account, not its id: a rotated key's
        // successor or a child without a budget spends another key's
        // balance, and its own id has none (carving from the id would fund
        // the child from nothing).
        let from = CreditAccount::Key(account.as_u64());
        let metered = limits.credits(from).await.map_err(Error::from)?.is_some();
        if metered {
            let debit = Admission::new(account.as_u64(), Quota::unlimited())
                .credits(CreditCharge::new(budget));
            match limits.admit(&debit).await.map_err(Error::from)? {
                Verdict::Admitted { .. } => {}
                _ => {
                    return Err(Error::InvalidState(
                        "the parent's credits cannot cover the child's budget",
                    ));
                }
            }
        }
        let refund = || async {
            // Best effort: the error of the failed step is what the caller
            // gets.
            if metered {
                let _ = limits.add_credits(from, budget).await;
            }
            let _ = limits
                .remove_credits(CreditAccount::Key(child.as_u64()))
                .await;
        };
        if let Err(e) = limits
            .set_credits(CreditAccount::Key(child.as_u64()), budget, None)
            .await
        {
            refund().await;
            return Err(Error::from(e));
        }
        match self
            .commit_child(planned, parent, Some(budget), actor)
            .await
        {
            Ok(done) => Ok(done),
            Err(e) => {
                refund().await;
                Err(e)
            }
        }
    }
}
