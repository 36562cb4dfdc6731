use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use std::time::Duration;

use crate::Timestamp;

use super::manager::KeyManager;
use crate::clock::Clock;
use crate::error::{Error, ErrorCode, Result};
use crate::key::KeyId;
use crate::limits::Limits;
use crate::pipeline::{Actor, AuditKind};
use crate::record::{KeyRecord, KeyStatus};
use crate::store::{KeyQuery, KeyStoreWrite, UsageStore};

/// Records the sweep reads a page.
const SWEEP_PAGE: u32 = 500;

/// What the sweep tells a [`ExpiryNotifier`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ExpiryNotice {
    /// The key.
    pub id: KeyId,
    /// Its display form.
    pub display: String,
    /// Its owner.
    pub owner: Option<String>,
    /// Its name.
    pub name: String,
    /// Its expiry (after a renewal: the new one).
    pub expires_at: Timestamp,
    /// Whether the key was renewed (else: it will expire).
    pub renewed: bool,
}

/// The notification hook of the sweep (email, webhook queue, ...). Called
/// once per notice, after the write that records it; keep it fast (queue
/// the work).
pub trait ExpiryNotifier: Send + Sync {
    /// One notice.
    fn notify(&self, notice: &ExpiryNotice);
}

impl<F: Fn(&ExpiryNotice) + Send + Sync> ExpiryNotifier for F {
    fn notify(&self, notice: &ExpiryNotice) {
        self(notice);
    }
}

/// The expiry sweep: notices before keys expire, and auto-renewal.
///
/// [`KeyManager::sweep_once`] is one pass; [`KeyManager::run_sweeper`] is
/// the future a service spawns on its own runtime (the crate starts no
/// thread or task). Each pass lists the keys that expire soon
/// in pages ([`KeyQuery::expiring`](crate::KeyQuery::expiring), 500 a
/// page, so a pass never holds every expiring key in memory) and, for
/// each:
///
/// * a key marked for auto-renewal ([`KeyRecord::AUTO_RENEW`](crate::KeyRecord::AUTO_RENEW) in its metadata) that
///   expires within [`SweepOptions::renew_before`] gets a later expiry
///   (`now + renew_for`, never past the issuance policy's maximum
///   lifetime): the same key keeps working, with no new secret. Audited as
///   `renewed`, and told to the notifier;
/// * any other key expiring within [`SweepOptions::notice_before`] gets one
///   `expiring` audit event and one notifier call, once for its current
///   expiry: the record keeps the expiry it was notified for
///   ([`KeyRecord::EXPIRY_NOTIFIED`](crate::KeyRecord::EXPIRY_NOTIFIED) in its metadata), so a renewed key is notified
///   again before its new expiry.
///
/// Both are commits at the record's revision
/// ([`KeyStoreWrite::commit`]):
/// of several sweepers over one database (one per instance), one wins
/// each write, the others re-read and find nothing left to do. So every
/// notice and renewal happens once, and the event follows the write.
///
/// ```
/// use std::sync::Arc;
/// use apikey::*;
/// use std::time::Duration;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap());
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[4; 32])?)?);
/// let audit = Arc::new(MemoryAuditSink::new());
/// let keys = KeyManager::with_clock(verifier, MemoryStore::new(), clock.clone())
///     .with_audit_sink(audit.clone());
/// let admin = Actor::new("admin");
/// let (key, s) = keys
///     .create(NewKey::new("sk_live_").expires_at(clock.now() + Duration::from_secs(10 * 86_400)).metadata(KeyRecord::AUTO_RENEW, "true"), &admin)
///     .await?;
/// let report = keys.sweep_once(&SweepOptions::default()).await?;
/// assert_eq!(report.notified, 1);
/// clock.advance(Duration::from_secs(5 * 86_400));
/// let report = keys.sweep_once(&SweepOptions::default()).await?;
/// assert_eq!(report.renewed, 1);
/// assert_eq!(keys.get(s.id).await?.expires_at, Some(clock.now() + Duration::from_secs(90 * 86_400)));
/// clock.advance(Duration::from_secs(30 * 86_400));
/// keys.authenticate(key.expose_secret(), &Requirement::none(), None).await?; // same key
/// let kinds: Vec<&str> = audit.events().iter().map(|e| e.kind.as_str()).collect();
/// assert_eq!(kinds, ["created", "expiring", "renewed"]);
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
///
/// How the sweep works. Every field says its default.
#[derive(Clone)]
#[non_exhaustive]
pub struct SweepOptions {
    /// Notice this long before expiry. Defaults to 30 days.
    pub notice_before: Duration,
    /// Auto-renew keys expiring within this. Defaults to 7 days (sweep
    /// more often than that).
    pub renew_before: Duration,
    /// A renewal sets the expiry to `now + renew_for`, capped by the
    /// issuance policy's maximum lifetime. Defaults to 90 days.
    pub renew_for: Duration,
    /// The notification hook, besides the audit sink. Defaults to none.
    pub notifier: Option<Arc<dyn ExpiryNotifier>>,
    /// The actor named in audit events. Defaults to `apikey-sweeper`.
    pub actor: Actor,
}

impl fmt::Debug for SweepOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SweepOptions")
            .field("notice_before", &self.notice_before)
            .field("renew_before", &self.renew_before)
            .field("renew_for", &self.renew_for)
            .field("notifier", &self.notifier.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for SweepOptions {
    fn default() -> Self {
        Self {
            notice_before: Duration::from_secs(30 * 86_400),
            renew_before: Duration::from_secs(7 * 86_400),
            renew_for: Duration::from_secs(90 * 86_400),
            notifier: None,
            actor: Actor::new("apikey-sweeper"),
        }
    }
}

impl SweepOptions {
    /// Sets [`notice_before`](Self::notice_before).
    pub fn notice_before(mut self, d: Duration) -> Self {
        self.notice_before = d;
        self
    }
    /// Sets [`renew_before`](Self::renew_before).
    pub fn renew_before(mut self, d: Duration) -> Self {
        self.renew_before = d;
        self
    }
    /// Sets [`renew_for`](Self::renew_for).
    pub fn renew_for(mut self, d: Duration) -> Self {
        self.renew_for = d;
        self
    }
    /// Sets the notification hook.
    pub fn notifier(mut self, n: impl ExpiryNotifier + 'static) -> Self {
        self.notifier = Some(Arc::new(n));
        self
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SweepReport {
    /// Keys in the window.
    pub examined: usize,
    /// Notices written by this pass.
    pub notified: usize,
    /// Renewals written by this pass.
    pub renewed: usize,
    /// Keys whose write failed, with the error's code; the next pass tries
    /// them again.
    pub failed: Vec<(KeyId, ErrorCode)>,
}

fn expiry_mark(t: Timestamp) -> String {
    t.to_string()
}

fn notice(r: &KeyRecord, expires_at: Timestamp, renewed: bool) -> ExpiryNotice {
    ExpiryNotice {
        id: r.id,
        display: r.display_form(),
        owner: r.owner.clone(),
        name: r.name.clone(),
        expires_at,
        renewed,
    }
}

impl<S: KeyStoreWrite + UsageStore, C: Clock, L: Limits> KeyManager<S, C, L> {
    /// One pass of the expiry sweep (see [`SweepOptions`]):
    /// renews auto-renewing keys near expiry and sends one notice per key
    /// and expiry. Safe to run on every instance at once.
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] or [`Error::InvalidRecord`] when the
    /// listing fails; a failure on one key is in
    /// [`SweepReport::failed`] and the pass goes on.
    pub async fn sweep_once(&self, options: &SweepOptions) -> Result<SweepReport> {
        let now = self.now();
        let notice_end = now.saturating_add(options.notice_before);
        let renew_end = now.saturating_add(options.renew_before);
        let mut query = KeyQuery::expiring(None, now..notice_end.max(renew_end)).limit(SWEEP_PAGE);
        let mut report = SweepReport::default();
        loop {
            let page = self.store().list(&query).await.map_err(Error::from)?;
            report.examined += page.records.len();
            for r in &page.records {
                let outcome = if r.auto_renews() && r.expires_at.is_some_and(|e| e < renew_end) {
                    match self.parent_expiry(r).await {
                        Ok(Some(parent_end)) => self
                            .renew(r.id, now, renew_end, parent_end, options)
                            .await
                            .map(|done| {
                                report.renewed += usize::from(done);
                            }),
                        // The parent is gone: the derived key is refused
                        // anyway, nothing to renew.
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    }
                } else if r.expires_at.is_some_and(|e| e < notice_end) {
                    self.notify_expiring(r.id, now, notice_end, options)
                        .await
                        .map(|done| report.notified += usize::from(done))
                } else {
                    Ok(())
                };
                if let Err(e) = outcome {
                    report.failed.push((r.id, e.code()));
                }
            }
            match query.next_page(&page) {
                Some(next) => query = next,
                None => return Ok(report),
            }
        }
    }

    /// Runs [`sweep_once`](Self::sweep_once) in a loop; between passes it
    /// awaits `between(result)`, which logs, sleeps on the service's runtime
    /// and answers whether to go on. The future never spawns anything.
    ///
    /// ```no_run
    /// # async fn f(keys: apikey::KeyManager<apikey::MemoryStore>) {
    /// keys.run_sweeper(&apikey::SweepOptions::default(), |result| async move {
    ///     if let Err(e) = result { eprintln!("expiry sweep: {e}"); }
    ///     tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    ///     true
    /// }).await;
    /// # }
    /// ```
    pub async fn run_sweeper<F, Fut>(&self, options: &SweepOptions, mut between: F)
    where
        F: FnMut(Result<SweepReport>) -> Fut,
        Fut: Future<Output = bool>,
    {
        loop {
            let result = self.sweep_once(options).await;
            if !between(result).await {
                return;
            }
        }
    }

    /// The latest expiry a renewal may give `r`: a derived key never
    /// outlives its parent (verification refuses one that does, so renewing
    /// past it would turn a working key into a refused one). `Some(None)`:
    /// no bound (not a derived key, or a parent without expiry); `None`:
    /// the parent is gone.
    async fn parent_expiry(&self, r: &KeyRecord) -> Result<Option<Option<Timestamp>>> {
        Ok(match self.parent_of(r).await? {
            None => Some(None),
            Some(parent) => parent.map(|p| p.expires_at),
        })
    }

    /// Renews key `id` if it still needs it (re-checked on the current
    /// record at every retry): whether this call wrote the renewal.
    async fn renew(
        &self,
        id: KeyId,
        now: Timestamp,
        renew_end: Timestamp,
        parent_end: Option<Timestamp>,
        options: &SweepOptions,
    ) -> Result<bool> {
        let (_, after) = self
            .modify(id, now, |cur| {
                let Some(exp) = cur.expires_at else {
                    return Ok(None);
                };
                if cur.status != KeyStatus::Active
                    || cur.rotated_to.is_some()
                    || !cur.auto_renews()
                    || exp <= now
                    || exp >= renew_end
                {
                    return Ok(None);
                }
                let mut to = now.saturating_add(options.renew_for);
                if let Some(max) = self
                    .policies()
                    .and_then(|p| p.max_lifetime(cur.prefix.as_str(), cur.owner.as_deref()))
                {
                    to = to.min(now.saturating_add(max));
                }
                if let Some(parent_end) = parent_end {
                    to = to.min(parent_end);
                }
                if to <= exp {
                    return Ok(None);
                }
                let mut next = cur.clone();
                next.expires_at = Some(to);
                self.check_policies(&next, now)?;
                Ok(Some(next))
            })
            .await?;
        let Some(r) = after else {
            return Ok(false);
        };
        let to = r.expires_at.unwrap_or(now);
        self.announce(now, AuditKind::Renewed { expires_at: to }, &r, options);
        Ok(true)
    }

    /// Records the notice for key `id`'s current expiry if none was sent
    /// for it: whether this call wrote it.
    async fn notify_expiring(
        &self,
        id: KeyId,
        now: Timestamp,
        notice_end: Timestamp,
        options: &SweepOptions,
    ) -> Result<bool> {
        let (_, after) = self
            .modify(id, now, |cur| {
                let Some(exp) = cur.expires_at else {
                    return Ok(None);
                };
                let mark = expiry_mark(exp);
                if cur.status == KeyStatus::Revoked
                    || cur.rotated_to.is_some()
                    || exp <= now
                    || exp >= notice_end
                    || cur.metadata.get(KeyRecord::EXPIRY_NOTIFIED) == Some(&mark)
                {
                    return Ok(None);
                }
                let mut next = cur.clone();
                next.metadata
                    .insert(KeyRecord::EXPIRY_NOTIFIED.to_owned(), mark);
                Ok(Some(next))
            })
            .await?;
        let Some(r) = after else {
            return Ok(false);
        };
        let kind = AuditKind::Expiring {
            expires_at: r.expires_at.unwrap_or(now),
            auto_renew: r.auto_renews(),
        };
        self.announce(now, kind, &r, options);
        Ok(true)
    }

    /// The audit event and the notifier call of a written notice or
    /// renewal.
    fn announce(&self, now: Timestamp, kind: AuditKind, r: &KeyRecord, options: &SweepOptions) {
        let n = match &kind {
            AuditKind::Renewed { expires_at } => notice(r, *expires_at, true),
            _ => notice(r, r.expires_at.unwrap_or(now), false),
        };
        self.emit(self.event(now, kind, r, &options.actor));
        if let Some(notifier) = &options.notifier {
            notifier.notify(&n);
        }
    }
}
