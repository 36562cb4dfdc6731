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
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::audit::{AuditEvent, AuditKind, AuditSink, RejectionSampler};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result, StoreError};
use crate::key::KeyId;
use crate::limits::{FailureClass, Limits, NoLimits};
use crate::manage::Monitor;
use crate::metrics;
use crate::record::KeyView;
use crate::scope::Requirement;
use crate::store::{KeyStore, UsageStore};
use crate::trace;
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

/// How often an authenticator made by [`Authenticator::new`] writes its
/// usage counts: the gate's axum layer starts a flush in the background at
/// most once per interval.
pub const DEFAULT_USAGE_FLUSH_INTERVAL: time::Duration = time::Duration::seconds(10);

/// A flush of usage counts into the store `S`, chosen where `S` was known to
/// be a [`UsageStore`] (the authenticator itself only needs [`KeyStore`]).
type FlushFn<S> = for<'a> fn(
    &'a S,
    &'a UsageRecorder,
    OffsetDateTime,
) -> Pin<
    Box<dyn Future<Output = std::result::Result<u64, StoreError>> + Send + 'a>,
>;

fn flush_into<'a, S: UsageStore>(
    store: &'a S,
    usage: &'a UsageRecorder,
    now: OffsetDateTime,
) -> Pin<Box<dyn Future<Output = std::result::Result<u64, StoreError>> + Send + 'a>> {
    Box::pin(usage.flush(store, now))
}

/// Usage recording: the recorder, and how to write it into the store (when
/// the store takes usage).
struct Usage<S> {
    recorder: Arc<UsageRecorder>,
    flush: Option<FlushFn<S>>,
    /// The recorder is the authenticator's own ([`Authenticator::new`]):
    /// the axum layer flushes it in the background. A recorder handed in
    /// ([`Authenticator::with_usage`]) is flushed by whoever handed it.
    background: bool,
}

impl<S> Clone for Usage<S> {
    fn clone(&self) -> Self {
        Self {
            recorder: Arc::clone(&self.recorder),
            flush: self.flush,
            background: self.background,
        }
    }
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
/// store.insert_sync(record)?;
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
    usage: Option<Usage<S>>,
    audit: Option<Arc<Auditor>>,
    monitor: Option<Arc<Monitor>>,
    legacy: Arc<Legacy>,
}

impl<S, C, L> fmt::Debug for Authenticator<S, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("verifier", &self.verifier)
            .field("usage", &self.usage.as_ref().map(|u| &u.recorder))
            .field("audit", &self.audit.is_some())
            .field("monitor", &self.monitor.is_some())
            .field("legacy", &self.legacy)
            .finish_non_exhaustive()
    }
}

impl<S: UsageStore> Authenticator<S, SystemClock> {
    /// An authenticator reading the system clock that **records usage**
    /// (`last_used_at` and the daily and monthly counts) in memory and
    /// writes it to `store` with [`flush`](Self::flush); the axum layer
    /// starts that flush in the background at most every
    /// [`DEFAULT_USAGE_FLUSH_INTERVAL`]. No audit and no legacy prefixes
    /// (see [`with_audit`](Self::with_audit)).
    ///
    /// For a store without usage (a read-only [`KeyStore`]), or to turn
    /// usage off on purpose, use [`read_only`](Self::read_only).
    pub fn new(verifier: Verifier, store: S) -> Self {
        Self::with_clock(verifier, store, SystemClock)
    }
}

impl<S: UsageStore, C: Clock> Authenticator<S, C> {
    /// [`new`](Self::new), reading `clock`.
    pub fn with_clock(verifier: Verifier, store: S, clock: C) -> Self {
        let mut auth = Self::read_only_with_clock(verifier, store, clock)
            .with_usage(Arc::new(UsageRecorder::new(DEFAULT_USAGE_FLUSH_INTERVAL)));
        if let Some(u) = &mut auth.usage {
            u.background = true;
        }
        auth
    }
}

impl<S: KeyStore> Authenticator<S, SystemClock> {
    /// An authenticator reading the system clock that records **no usage**:
    /// `last_used_at` and the counts stay as they are. An explicit choice,
    /// for a read-only [`KeyStore`] (a replica, a store without usage
    /// columns) or a service that does not want usage; every other door
    /// ([`new`](Self::new), [`KeyManager`](crate::KeyManager),
    /// [`Gate::from_manager`](crate::web::Gate::from_manager)) records it.
    pub fn read_only(verifier: Verifier, store: S) -> Self {
        Self::read_only_with_clock(verifier, store, SystemClock)
    }
}

impl<S: KeyStore, C: Clock> Authenticator<S, C> {
    /// [`read_only`](Self::read_only), reading `clock`: no usage recorded.
    pub fn read_only_with_clock(verifier: Verifier, store: S, clock: C) -> Self {
        Self {
            verifier,
            store,
            clock,
            limits: NoLimits,
            usage: None,
            audit: None,
            monitor: None,
            legacy: Arc::new(Legacy::default()),
        }
    }
}

impl<S: UsageStore, C: Clock, L: Limits> Authenticator<S, C, L> {
    /// Counts every successful verification in `recorder`, written to the
    /// store by [`flush`](Self::flush) or by whoever else flushes the
    /// recorder, as [`KeyManager::flush`](crate::KeyManager::flush) does:
    /// the axum layer does not flush a recorder handed in here.
    /// [`new`](Self::new) sets a recorder of its own, which the layer
    /// flushes in the background.
    pub fn with_usage(mut self, recorder: Arc<UsageRecorder>) -> Self {
        self.usage = Some(Usage {
            recorder,
            flush: Some(flush_into::<S>),
            background: false,
        });
        self
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
            monitor: self.monitor,
            legacy: self.legacy,
        }
    }

    /// The limits bundle.
    pub fn limits(&self) -> &L {
        &self.limits
    }

    /// Turns usage recording off: an explicit choice (see
    /// [`read_only`](Self::read_only)). Counts not yet flushed stay in the
    /// recorder it had.
    pub fn without_usage(mut self) -> Self {
        self.usage = None;
        self
    }

    /// Writes the usage counted so far to the store, off the request path
    /// (a timer, a shutdown hook); returns the uses written. Does nothing
    /// without usage recording ([`read_only`](Self::read_only)).
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] when the store fails (the counts stay
    /// pending for the next flush); [`Error::InvalidInput`] when the clock
    /// reads outside the supported range.
    pub async fn flush(&self) -> Result<u64> {
        let Some(Usage {
            recorder,
            flush: Some(flush),
            ..
        }) = &self.usage
        else {
            return Ok(0);
        };
        let now = crate::clock::check_time(self.clock.now())?;
        flush(&self.store, recorder, now).await.map_err(Error::from)
    }

    /// Whether a background flush of the authenticator's own recorder is
    /// due at `now` (claims it: one caller per recorder interval gets
    /// `true`). `false` without usage or with a recorder handed in.
    #[cfg(feature = "axum")]
    pub(crate) fn usage_flush_due(&self, now: OffsetDateTime) -> bool {
        matches!(&self.usage, Some(u) if u.background && u.flush.is_some() && u.recorder.flush_due(now))
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

    /// Raises the seed-001 monitoring events (new network, failure bursts,
    /// unusual traffic; the [`Gate`](crate::web::Gate) adds rate-limit hits
    /// and exhausted quotas) through `monitor` (see
    /// [`manage::monitor`](crate::manage::monitor)). Defaults to none.
    pub fn with_monitor(mut self, monitor: Arc<Monitor>) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// The monitor, when monitoring.
    pub fn monitor(&self) -> Option<&Arc<Monitor>> {
        self.monitor.as_ref()
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
        self.usage.as_ref().map(|u| &u.recorder)
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
    // Not an `async fn`, on purpose (see `authenticate_kept`).
    #[allow(clippy::manual_async_fn)]
    pub fn authenticate(
        &self,
        presented: &str,
        requirement: &Requirement,
        ip: Option<IpAddr>,
    ) -> impl Future<Output = Result<VerifiedKey>> {
        async move {
            self.authenticate_kept(presented, requirement, ip)
                .await
                .map_err(|r| r.error)
        }
    }

    /// [`authenticate`](Self::authenticate), with what the pipeline learned
    /// in the failure: the key's record when the failure is one of an
    /// authenticated key against the request ([`FailureClass::Authenticated`],
    /// native or legacy), so the gate charges that key's own plan without
    /// parsing or classifying again.
    // Not an `async fn`, on purpose: an `async` block captures the
    // arguments in place, not copied again into the future, which the web
    // layer boxes on every request.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn authenticate_kept(
        &self,
        presented: &str,
        requirement: &Requirement,
        ip: Option<IpAddr>,
    ) -> impl Future<Output = std::result::Result<VerifiedKey, Refusal>> {
        async move {
            let started = metrics::Started::now();
            let result = trace::authenticate(async {
                let result = self.run(presented, requirement, ip).await;
                if let Err(r) = &result {
                    trace::reason(&r.error);
                }
                result
            })
            .await;
            metrics::authenticated(started, result.as_ref().err().map(|r| &r.error));
            result
        }
    }

    /// The pipeline's steps (see [`authenticate`](Self::authenticate)).
    async fn run(
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
                    // Boxed: the legacy lookup's future is most of this
                    // one's size, and every tagged key (the hot path) would
                    // otherwise carry it through the web layer's future.
                    let result =
                        Box::pin(self.authenticate_legacy(presented, l, requirement, ip)).await;
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
                self.network_failed(ip);
                return Err(e.into());
            }
        };
        let id = parsed.id();
        trace::key(parsed.prefix(), id);
        limits
            .check_key(id.as_u64())
            .map_err(|retry_after| Error::TooManyFailures { retry_after })?;
        let started = metrics::Started::now();
        let view = trace::store("fetch", self.store.fetch(id)).await;
        metrics::store_call("fetch", started, &view);
        let view = view.map_err(Error::from_lookup)?;
        // Only for the audit event of a failure; skipped without a sink.
        let owner = if self.audit.is_some() || self.monitor.is_some() {
            view.as_ref().and_then(|v| v.owner.clone())
        } else {
            None
        };
        let result = if self.usage.is_none() && self.audit.is_none() && self.monitor.is_none() {
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
            self.finish(verified, id, owner.as_deref(), now, ip)
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

    /// A failure from `ip`, for the monitor's per-network burst check.
    fn network_failed(&self, ip: Option<IpAddr>) {
        if let (Some(m), Some(ip)) = (&self.monitor, ip) {
            m.network_failed(ip, self.clock.now());
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
        ip: Option<IpAddr>,
    ) -> std::result::Result<VerifiedKey, Refusal> {
        match verified {
            Ok(v) => {
                if let Some(u) = &self.usage {
                    u.recorder.record(id, now);
                }
                if let Some(m) = &self.monitor {
                    m.used(id, v.owner(), ip, now);
                }
                Ok(v)
            }
            Err(r) => {
                let e = &r.error;
                if let Some(m) = &self.monitor {
                    if FailureClass::after_lookup(e) == FailureClass::KeyStatus {
                        m.key_failed(id, owner, now);
                    }
                    if let Some(ip) = ip {
                        m.network_failed(ip, now);
                    }
                }
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
            let started = metrics::Started::now();
            let rec = trace::store("find_legacy", self.store.find_legacy(&index)).await;
            metrics::store_call("find_legacy", started, &rec);
            if let Some(rec) = rec.map_err(Error::from_lookup)? {
                found = Some((rec, index));
                break;
            }
        }
        let now = self.clock.now();
        let Some((rec, index)) = found else {
            self.count(Some(crate::audit::UNKNOWN_LEGACY));
            self.network_failed(ip);
            return Err(Error::InvalidApiKey.into());
        };
        let verified = if legacy::matches(&self.verifier, &rec, prefix, &index, presented) {
            self.verifier
                .verify_view(Arc::new(KeyView::from_record(&rec)), now, requirement, ip)
        } else {
            Err(Error::InvalidApiKey.into())
        };
        let verified = self.finish(verified, rec.id, rec.owner.as_deref(), now, ip)?;
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
