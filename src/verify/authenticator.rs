//! The one verification pipeline: every presented key, whichever door it
//! came through ([`KeyManager::authenticate`](crate::KeyManager::authenticate),
//! the [`Gate`](crate::web::Gate), the tower/axum layer, or a direct call),
//! is checked here.
//!
//! Steps, in order:
//!
//! 1. **parse** ([`Verifier::parse`]): length, alphabet, prefix, checksum,
//!    version, keyed tag; no store call for junk or forged keys;
//! 2. the **failure throttle** (when configured, see [`limits`](crate::limits));
//! 3. the **legacy lookup** (when legacy prefixes are declared): keys
//!    imported from another system are found through the legacy index;
//! 4. **fetch** the record by id from the [`KeyStore`];
//! 5. **verify** ([`Verifier::verify_from`]): HMAC, constant-time
//!    comparison, status, validity window, environment, IP allowlist,
//!    scopes;
//! 6. **usage recording** (when configured): one in-memory count, flushed
//!    off the request path ([`UsageRecorder`]);
//! 7. **audit of failures** (when configured): failures after the tag
//!    matched about the key itself (unknown id, wrong secret, revoked,
//!    disabled, expired, not yet valid) emit one event each; rejections
//!    before it, and failures of an authenticated key against the request
//!    (wrong environment, scope, address), are counted per reason and
//!    summarised at most once per interval, so a flood never becomes a
//!    flood of events.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::audit::{AuditEvent, AuditKind, AuditSink, RejectionSampler};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::key::KeyId;
use crate::limits::{FailureClass, Limits, NoLimits};
use crate::record::KeyView;
use crate::scope::Requirement;
use crate::store::KeyStore;
use crate::usage::UsageRecorder;
use crate::verifier::{Refusal, VerifiedKey, Verifier};
use crate::verify::legacy::{self, Legacy, LegacyPrefix, MAX_LEGACY_KEY_LEN};

/// Classifies a failure once ([`FailureClass::after_lookup`]) and keeps its
/// record only for a failure of an authenticated key against the request:
/// the one case the gate charges to the key's rate limit.
fn settle(mut r: Refusal) -> (FailureClass, Refusal) {
    let class = FailureClass::after_lookup(&r.error);
    if class != FailureClass::Authenticated {
        r.view = None;
    }
    (class, r)
}

/// Where audit events go, with the sampler for floods.
pub(crate) struct Auditor {
    pub(crate) sink: Arc<dyn AuditSink>,
    pub(crate) rejections: RejectionSampler,
}

impl fmt::Debug for Auditor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auditor")
            .field("rejections", &self.rejections)
            .finish_non_exhaustive()
    }
}

/// The one pipeline from a presented key to a [`VerifiedKey`]: parse →
/// throttle → legacy lookup → fetch → verify → usage → audit (see the
/// [module docs](crate::verify)). Optional steps are off until configured.
///
/// Generic over the store (no `dyn`) and the clock, so tests inject a
/// [`ManualClock`](crate::ManualClock). Cheap to clone when the store and
/// the clock are (clones share the usage counts, the audit sink and the
/// legacy configuration). [`KeyManager`](crate::KeyManager) builds one with
/// every step configured and hands it out with
/// [`KeyManager::authenticator`](crate::KeyManager::authenticator), so the
/// gate and the axum layer behave exactly as `KeyManager::authenticate`.
///
/// ```
/// use apikey::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[5; 32])?)?);
/// let store = MemoryStore::new();
/// let (key, record) = verifier.issue(NewKey::new("kwi_sk_").scopes(["tasks:read"]), time::OffsetDateTime::now_utc())?;
/// store.insert(record).await?;
///
/// let auth = Authenticator::new(verifier, store);
/// let ok = auth.authenticate(key.expose_secret(), &Requirement::scope("tasks:read")?, None).await?;
/// assert!(ok.scopes().grants(&Scope::parse("tasks:read")?));
/// let err = auth.authenticate(key.expose_secret(), &Requirement::scope("tasks:write")?, None).await.unwrap_err();
/// assert_eq!(err.code(), "INSUFFICIENT_SCOPE");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Authenticator<S, C = SystemClock, L = NoLimits> {
    verifier: Verifier,
    store: S,
    clock: C,
    limits: L,
    usage: Option<Arc<UsageRecorder>>,
    audit: Option<Arc<Auditor>>,
    legacy: Arc<Legacy>,
}

impl<S, C, L> fmt::Debug for Authenticator<S, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("verifier", &self.verifier)
            .field("usage", &self.usage)
            .field("audit", &self.audit.is_some())
            .field("legacy", &self.legacy)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> Authenticator<S, SystemClock> {
    /// An authenticator reading the system clock, with no usage recording,
    /// no audit and no legacy prefixes.
    pub fn new(verifier: Verifier, store: S) -> Self {
        Self::with_clock(verifier, store, SystemClock)
    }
}

impl<S: KeyStore, C: Clock> Authenticator<S, C> {
    /// An authenticator reading `clock`.
    pub fn with_clock(verifier: Verifier, store: S, clock: C) -> Self {
        Self {
            verifier,
            store,
            clock,
            limits: NoLimits,
            usage: None,
            audit: None,
            legacy: Arc::new(Legacy::default()),
        }
    }
}

impl<S: KeyStore, C: Clock, L: Limits> Authenticator<S, C, L> {
    /// Runs the pipeline's failure throttle (step 2) with `limits` (see
    /// [`limits::throttle`](crate::limits::throttle)); the
    /// [`Gate`](crate::web::Gate) also takes its rate limits and credits
    /// from it. Defaults to [`NoLimits`].
    pub fn with_limits<L2: Limits>(self, limits: L2) -> Authenticator<S, C, L2> {
        Authenticator {
            verifier: self.verifier,
            store: self.store,
            clock: self.clock,
            limits,
            usage: self.usage,
            audit: self.audit,
            legacy: self.legacy,
        }
    }

    /// The limits bundle.
    pub fn limits(&self) -> &L {
        &self.limits
    }

    /// Counts every successful verification in `recorder` (flush it with
    /// [`UsageRecorder::flush`], off the request path). Defaults to no
    /// recording.
    pub fn with_usage(mut self, recorder: Arc<UsageRecorder>) -> Self {
        self.usage = Some(recorder);
        self
    }

    /// Sends audit events of failed verifications to `sink`, with
    /// rejection summaries at most once per `sample_interval`. Defaults to
    /// no audit.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>, sample_interval: time::Duration) -> Self {
        self.audit = Some(Arc::new(Auditor {
            sink,
            rejections: RejectionSampler::new(sample_interval),
        }));
        self
    }

    /// Declares `legacy` as the prefix of keys imported from another system,
    /// stored under the registered native prefix `native`. See
    /// [`KeyManager::with_legacy_prefix`](crate::KeyManager::with_legacy_prefix).
    ///
    /// # Errors
    /// As [`KeyManager::with_legacy_prefix`](crate::KeyManager::with_legacy_prefix).
    pub fn with_legacy_prefix(mut self, legacy: &str, native: &str) -> Result<Self> {
        Arc::make_mut(&mut self.legacy).declare(&self.verifier, legacy, native)?;
        Ok(self)
    }

    pub(crate) fn set_upgrader(&mut self, upgrader: Arc<dyn legacy::Upgrader>) {
        Arc::make_mut(&mut self.legacy).upgrader = Some(upgrader);
    }

    pub(crate) fn set_key_policies(&mut self, policies: crate::KeyPolicies) {
        self.verifier = self.verifier.clone().with_key_policies(policies);
    }

    pub(crate) fn set_audit(&mut self, auditor: Option<Arc<Auditor>>) {
        self.audit = auditor;
    }

    /// The verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The usage recorder, when usage is recorded.
    pub fn usage(&self) -> Option<&Arc<UsageRecorder>> {
        self.usage.as_ref()
    }

    pub(crate) fn auditor(&self) -> Option<&Arc<Auditor>> {
        self.audit.as_ref()
    }

    /// The declared legacy prefixes, most specific first.
    pub(crate) fn legacy_prefixes(&self) -> impl Iterator<Item = &str> {
        self.legacy.prefixes.iter().map(|l| l.legacy.as_str())
    }

    pub(crate) fn legacy_prefix_of(&self, text: &str) -> Option<&LegacyPrefix> {
        self.legacy.prefix_of(text)
    }

    pub(crate) fn legacy_prefix_named(&self, prefix: &str) -> Option<&LegacyPrefix> {
        self.legacy.prefixes.iter().find(|l| l.legacy == prefix)
    }

    /// Authenticates `presented`, sent from `ip` (when known), and checks
    /// `requirement`: the whole pipeline (see the
    /// [module docs](crate::verify)). A key with an IP allowlist fails
    /// closed with [`Error::IpNotAllowed`] when `ip` is `None`.
    ///
    /// The failure throttle of the [limits bundle](Self::with_limits):
    ///
    /// * a tagged key whose id is backed off is refused with
    ///   [`Error::TooManyFailures`] before the store is asked
    ///   ([`Limits::check_key`], local); a key-status failure after the
    ///   lookup (unknown id, wrong secret, revoked, disabled, expired, not
    ///   yet valid) is recorded against its id ([`Limits::key_failed`]);
    /// * a legacy (untagged) lookup is counted against `ip` from the moment
    ///   it starts ([`Limits::begin_untagged`]), and its key-status failures
    ///   against the address ([`Limits::untagged_failed`]).
    ///
    /// Scope, address and environment failures are authenticated requests:
    /// the [`Gate`](crate::web::Gate) charges them to the key's rate limit,
    /// under its own plan's quota (native and legacy keys alike).
    ///
    /// Nothing is cached: a disable, revoke or rotation that returned before
    /// this call started is seen by it (with a store that is not a cache).
    ///
    /// # Errors
    /// Every outcome of [`Verifier::parse`] and [`Verifier::verify_from`],
    /// [`Error::TooManyFailures`] while throttled, [`Error::InvalidInput`]
    /// when the clock reads outside the supported range, and
    /// [`Error::StoreUnavailable`] when the store fails (never "valid",
    /// never "invalid key").
    pub async fn authenticate(
        &self,
        presented: &str,
        requirement: &Requirement,
        ip: Option<IpAddr>,
    ) -> Result<VerifiedKey> {
        self.authenticate_kept(presented, requirement, ip)
            .await
            .map_err(|r| r.error)
    }

    /// [`authenticate`](Self::authenticate), with what the pipeline learned
    /// in the failure: the key's record when the failure is one of an
    /// authenticated key against the request ([`FailureClass::Authenticated`],
    /// native or legacy), so the gate charges that key's own plan without
    /// parsing or classifying again.
    pub(crate) async fn authenticate_kept(
        &self,
        presented: &str,
        requirement: &Requirement,
        ip: Option<IpAddr>,
    ) -> std::result::Result<VerifiedKey, Refusal> {
        let limits = &self.limits;
        let parsed = match self.verifier.parse(presented) {
            Ok(p) => p,
            Err(e) => {
                if let Some(l) = self.legacy.applies(&self.verifier, presented, &e) {
                    let attempt = limits
                        .begin_untagged(ip)
                        .map_err(|retry_after| Error::TooManyFailures { retry_after })?;
                    let result = self
                        .authenticate_legacy(presented, l, requirement, ip)
                        .await;
                    return match result {
                        Ok(v) => Ok(v),
                        Err(r) => {
                            let (class, r) = settle(r);
                            if class == FailureClass::KeyStatus {
                                limits.untagged_failed(attempt).await;
                            }
                            Err(r)
                        }
                    };
                }
                self.count(RejectionSampler::reason_of(&e));
                return Err(e.into());
            }
        };
        let id = parsed.id();
        limits
            .check_key(id.as_u64())
            .map_err(|retry_after| Error::TooManyFailures { retry_after })?;
        let view = self.store.fetch(id).await.map_err(Error::from_lookup)?;
        // Only for the audit event of a failure; skipped without a sink.
        let owner = match &self.audit {
            Some(_) => view.as_ref().and_then(|v| v.owner.clone()),
            None => None,
        };
        let result = if self.usage.is_none() && self.audit.is_none() {
            // Nothing records the time: the verifier reads the clock only
            // for keys with a validity window, and then without calendar
            // conversion (`Clock::checked_timestamp`).
            let verified =
                self.verifier
                    .verify_from_clock_kept(&parsed, view, &self.clock, requirement, ip);
            match verified {
                Ok(v) if crate::verify::derived::parent_of_view(v.view()).is_some() => {
                    self.lineage(v).await
                }
                other => other,
            }
        } else {
            // Usage or audit records the time: read it once, checked
            // against the supported range before anything else.
            let now = self.clock.now();
            let verified = self
                .verifier
                .verify_from_kept(&parsed, view, now, requirement, ip);
            let verified = match verified {
                Ok(v) if crate::verify::derived::parent_of_view(v.view()).is_some() => {
                    self.lineage(v).await
                }
                other => other,
            };
            self.finish(verified, id, owner.as_deref(), now)
        };
        match result {
            Ok(v) => Ok(v),
            Err(r) => {
                let (class, r) = settle(r);
                if class == FailureClass::KeyStatus {
                    limits.key_failed(id.as_u64()).await;
                }
                Err(r)
            }
        }
    }

    /// A derived key's ancestors ([`derived`](crate::verify::derived));
    /// called for children only, so other keys pay one flag test.
    async fn lineage(&self, v: VerifiedKey) -> std::result::Result<VerifiedKey, Refusal> {
        match crate::verify::derived::check_ancestors(&self.store, &self.clock, v.view()).await {
            Ok(()) => Ok(v),
            Err(e) => Err(e.into()),
        }
    }

    /// Counts one rejection for the sampled summary.
    fn count(&self, reason: Option<usize>) {
        if let (Some(a), Some(r)) = (&self.audit, reason) {
            a.rejections.count(r, || self.clock.now(), &*a.sink);
        }
    }

    fn finish(
        &self,
        verified: std::result::Result<VerifiedKey, Refusal>,
        id: KeyId,
        owner: Option<&str>,
        now: OffsetDateTime,
    ) -> std::result::Result<VerifiedKey, Refusal> {
        match verified {
            Ok(v) => {
                if let Some(u) = &self.usage {
                    u.record(id, now);
                }
                Ok(v)
            }
            Err(r) => {
                let e = &r.error;
                if let Some(a) = &self.audit {
                    match RejectionSampler::reason_of_request_failure(e) {
                        // An authenticated key that does not fit the
                        // request: counted, like junk.
                        Some(r) => a.rejections.count(r, || now, &*a.sink),
                        None => a.sink.record(
                            &AuditEvent::new(
                                now,
                                AuditKind::VerificationFailed {
                                    code: e.code().as_str(),
                                },
                            )
                            .key(id, owner),
                        ),
                    }
                }
                Err(r)
            }
        }
    }

    async fn authenticate_legacy(
        &self,
        presented: &str,
        prefix: &LegacyPrefix,
        requirement: &Requirement,
        ip: Option<IpAddr>,
    ) -> std::result::Result<VerifiedKey, Refusal> {
        if presented.len() > MAX_LEGACY_KEY_LEN || presented.len() <= prefix.legacy.len() {
            self.count(RejectionSampler::reason_of(&Error::MalformedApiKey(
                crate::MalformedReason::Length,
            )));
            return Err(Error::MalformedApiKey(crate::MalformedReason::Length).into());
        }
        let keyring = self.verifier.keyring();
        let sha = legacy::sha(presented);
        let mut found = None;
        for v in keyring.versions_current_first() {
            let Some(index) = keyring.legacy_index(v, &sha) else {
                continue;
            };
            if let Some(rec) = self
                .store
                .find_legacy(&index)
                .await
                .map_err(Error::from_lookup)?
            {
                found = Some((rec, index));
                break;
            }
        }
        let now = self.clock.now();
        let Some((rec, index)) = found else {
            self.count(Some(crate::audit::UNKNOWN_LEGACY));
            return Err(Error::InvalidApiKey.into());
        };
        let verified = if legacy::matches(&self.verifier, &rec, prefix, &index, presented) {
            self.verifier
                .verify_view(Arc::new(KeyView::from_record(&rec)), now, requirement, ip)
        } else {
            Err(Error::InvalidApiKey.into())
        };
        let verified = self.finish(verified, rec.id, rec.owner.as_deref(), now)?;
        // Best effort: a failure leaves the record as it was, and the next
        // verification tries again.
        if let Some(up) = &self.legacy.upgrader
            && let Some(next) = legacy::upgraded(&self.verifier, &rec, presented, &sha)
            && up.upgrade(next, rec.revision).await
            && let Some(a) = &self.audit
        {
            a.sink.record(
                &AuditEvent::new(now, AuditKind::LegacyUpgraded).key(rec.id, rec.owner.as_deref()),
            );
        }
        Ok(verified)
    }
}
