use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::Timestamp;

use super::origin::check_view;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Reason, Result, Stage, StoreError};
use crate::key::KeyId;
use crate::limits::{FailureClass, Limits, NoLimits};
use crate::metrics;
use crate::pipeline::Monitor;
use crate::pipeline::RequestOrigin;
use crate::pipeline::RouteOf;
use crate::pipeline::UsageRecorder;
use crate::pipeline::{AuditEvent, AuditKind, AuditSink, RejectionSampler};
use crate::record::KeyView;
use crate::record::Requirement;
use crate::store::{KeyStore, UsageStore, measured_fetch};
use crate::trace;
use crate::verify::{Failure, VerifiedKey, Verifier};
use crate::verify::{
    Legacy, LegacyPrefix, MAX_LEGACY_KEY_LEN, Upgrader, legacy_matches, legacy_sha, legacy_upgraded,
};

/// A flush of usage counts into the store `S`, chosen where `S` was known to
/// be a [`UsageStore`] (the authenticator itself only needs [`KeyStore`]).
type FlushFn<S> = for<'a> fn(
    &'a S,
    &'a UsageRecorder,
    Timestamp,
) -> Pin<
    Box<dyn Future<Output = std::result::Result<u64, StoreError>> + Send + 'a>,
>;

fn flush_into<'a, S: UsageStore>(
    store: &'a S,
    usage: &'a UsageRecorder,
    now: Timestamp,
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

/// The one verification pipeline: every presented key, whichever door it
/// came through ([`KeyManager::authenticate`](crate::KeyManager::authenticate),
/// the [`Gate`](crate::web::Gate), the tower/axum layer, or a direct call),
/// is checked here.
///
/// Steps, in order:
///
/// 1. **parse** ([`Verifier::parse`]): length, alphabet, prefix, checksum,
///    version, keyed tag; no store call for junk or forged keys;
/// 2. the **failure throttle** (when configured, see [`limits`](crate::limits));
/// 3. the **legacy lookup** (when legacy prefixes are declared): keys
///    imported from another system are found through the legacy index;
/// 4. **fetch** the record by id from the [`KeyStore`];
/// 5. **verify** ([`Verifier::verify`]): HMAC, constant-time
///    comparison, status, validity window, environment, IP allowlist,
///    scopes;
/// 6. **usage recording** (when configured): one in-memory count, flushed
///    off the request path ([`UsageRecorder`]);
/// 7. **audit of failures** (when configured): failures after the tag
///    matched about the key itself (unknown id, wrong secret, revoked,
///    disabled, expired, not yet valid) emit one event each; rejections
///    before it, and failures of an authenticated key against the request
///    (wrong environment, scope, address), are counted per reason and
///    summarised at most once per interval, so a flood never becomes a
///    flood of events.
///
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
/// let (key, record) = verifier.issue(NewKey::new("kwi_sk_").scopes(["tasks:read"]), apikey::Clock::now(&apikey::SystemClock))?;
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
    /// [`UsageRecorder::DEFAULT_FLUSH_INTERVAL`]. No audit and no legacy prefixes
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
        let mut auth = Self::read_only_with_clock(verifier, store, clock).with_usage(Arc::new(
            UsageRecorder::new(UsageRecorder::DEFAULT_FLUSH_INTERVAL),
        ));
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
    /// [the limits docs](crate::limits)); the
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
    /// pending for the next flush).
    pub async fn flush(&self) -> Result<u64> {
        let Some(Usage {
            recorder,
            flush: Some(flush),
            ..
        }) = &self.usage
        else {
            return Ok(0);
        };
        let now = self.clock.now();
        flush(&self.store, recorder, now).await.map_err(Error::from)
    }

    /// Whether a background flush of the authenticator's own recorder is
    /// due at `now` (claims it: one caller per recorder interval gets
    /// `true`). `false` without usage or with a recorder handed in.
    #[cfg(feature = "axum")]
    pub(crate) fn usage_flush_due(&self, now: Timestamp) -> bool {
        matches!(&self.usage, Some(u) if u.background && u.flush.is_some() && u.recorder.flush_due(now))
    }

    /// Sends audit events of failed verifications to `sink`, with
    /// rejection summaries at most once per `sample_interval`. Defaults to
    /// no audit.
    pub fn with_audit(
        mut self,
        sink: Arc<dyn AuditSink>,
        sample_interval: std::time::Duration,
    ) -> Self {
        self.audit = Some(Arc::new(Auditor {
            sink,
            rejections: RejectionSampler::new(sample_interval),
        }));
        self
    }

    /// Raises the seed-001 monitoring events (new network, failure bursts,
    /// unusual traffic; the [`Gate`](crate::web::Gate) adds rate-limit hits
    /// and exhausted quotas) through `monitor` (see
    /// [`Monitor`]). Defaults to none.
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

    pub(crate) fn set_upgrader(&mut self, upgrader: Arc<dyn Upgrader>) {
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

    /// The declared legacy prefixes as `(legacy, native)` pairs, most
    /// specific first: what
    /// [`with_legacy_prefix`](Self::with_legacy_prefix) was given, so
    /// another component (a leak responder, a second authenticator) can
    /// take the same declarations instead of repeating them.
    ///
    /// ```
    /// # use apikey::*;
    /// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
    /// let auth = Authenticator::new(verifier, MemoryStore::new()).with_legacy_prefix("oldco_", "sk_live_")?;
    /// assert_eq!(auth.legacy_prefixes().collect::<Vec<_>>(), [("oldco_", "sk_live_")]);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn legacy_prefixes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.legacy
            .prefixes
            .iter()
            .map(|l| (l.legacy.as_str(), l.native.prefix.as_str()))
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
    /// Every outcome of [`Verifier::parse`] and [`Verifier::verify`],
    /// [`Error::TooManyFailures`] while throttled, [`Error::InvalidInput`]
    /// when the clock reads outside the supported range, and
    /// [`Error::StoreUnavailable`] when the store fails (never "valid",
    /// never "invalid key").
    // Not an `async fn`, on purpose (see `authenticate_kept`).
    #[allow(clippy::manual_async_fn)]
    pub fn authenticate<'a>(
        &'a self,
        presented: &'a str,
        requirement: &'a Requirement,
        ip: Option<IpAddr>,
    ) -> impl Future<Output = Result<VerifiedKey>> + 'a {
        self.authenticate_kept(presented, requirement, ip, None, None, |r| {
            r.map_err(|f| f.error)
        })
    }

    /// [`authenticate`](Self::authenticate), with what the pipeline learned
    /// in the failure ([`Failure`]: stage, reason, parsed id, and the record
    /// once the secret matched), so the gate charges a failure of an
    /// authenticated key against the request to that key's own plan
    /// without parsing or classifying again.
    ///
    /// `origin`: the request's `Origin` and `Referer` at the web edge; a
    /// publishable key whose origin is not on its allowlist fails there
    /// like a scope failure ([`Error::OriginNotAllowed`]). `None` outside
    /// the web edge (no origin to check).
    ///
    /// `route`: the request's method and path at the web edge, kept with
    /// usage as the key's last-used route (unless the path holds the key).
    ///
    /// `out` maps the result inside this future ([`authenticate`](Self::authenticate)
    /// keeps the error only), so no second future is built around it.
    ///
    /// The hot path (a tagged key, no parent) has one `await`: the store's
    /// fetch. What only some keys take (a legacy key, a derived key's
    /// ancestors, a key-status failure's throttle) is boxed where it is
    /// awaited, so its state does not grow every request's future.
    // Not an `async fn`, on purpose: an `async` block captures the
    // arguments in place (an `async fn` copies them again into locals), and
    // the web layer boxes this future on every request.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn authenticate_kept<'a, T: 'a>(
        &'a self,
        presented: &'a str,
        requirement: &'a Requirement,
        ip: Option<IpAddr>,
        origin: Option<&'a RequestOrigin<'a>>,
        route: Option<RouteOf<'a>>,
        out: fn(std::result::Result<VerifiedKey, Failure>) -> T,
    ) -> impl Future<Output = T> + 'a {
        trace::authenticate(async move {
            let started = metrics::Started::authentication();
            // Every `await` below follows the `let` that made what it needs:
            // a value matched (or partly moved) where an `await` happens
            // would stay in the future's state.
            let result = 'run: {
                let claimed = 'tagged: {
                    let parsed = match self.verifier.parse(presented) {
                        Ok(parsed) => parsed,
                        Err(e) => match self.legacy.applies(&self.verifier, presented, &e) {
                            Some(l) => break 'tagged l,
                            None => {
                                let failure = Failure::at(Stage::Parse, e);
                                self.count(failure.reason);
                                self.network_failed(ip);
                                break 'run Err(failure);
                            }
                        },
                    };
                    let id = parsed.id();
                    trace::key(parsed.prefix(), id);
                    if let Err(retry_after) = self.limits.check_key(id.as_u64()) {
                        break 'run Err(Failure::at(
                            Stage::Throttle,
                            Error::TooManyFailures { retry_after },
                        )
                        .of_key(id));
                    }
                    let view = match measured_fetch(&self.store, id).await {
                        Ok(view) => view,
                        Err(e) => {
                            break 'run Err(
                                Failure::at(Stage::Lookup, Error::from_lookup(e)).of_key(id)
                            );
                        }
                    };
                    // A path holding the key (a client that put it there) is
                    // not kept.
                    let route = route
                        .filter(|r| r.path.len() < presented.len() || !r.path.contains(presented));
                    let derived = 'derived: {
                        let failure =
                            match self.conclude(&parsed, view, requirement, ip, origin, route) {
                                Concluded::Done(Ok(v)) => break 'run Ok(v),
                                Concluded::Done(Err(f)) => f,
                                Concluded::Derived(d) => break 'derived d,
                            };
                        break 'run Err(Box::pin(self.key_status(failure, id)).await);
                    };
                    drop(parsed);
                    break 'run Box::pin(self.run_derived(derived, id, origin, route)).await;
                };
                Box::pin(self.run_legacy(presented, claimed, requirement, ip, origin, route)).await
            };
            if let Err(r) = &result {
                trace::reason(&r.error);
            }
            metrics::authenticated(started, result.as_ref().err().map(|r| &r.error));
            out(result)
        })
    }

    /// A tagged key's record checks, after the fetch: the verifier, the
    /// origin, usage, monitoring and audit; a key with a parent stops
    /// before its origin for its ancestors' check ([`Self::run_derived`]).
    #[allow(clippy::too_many_arguments)]
    fn conclude<'r>(
        &self,
        parsed: &crate::ParsedKey<'_>,
        view: Option<Arc<KeyView>>,
        requirement: &Requirement,
        ip: Option<IpAddr>,
        origin: Option<&RequestOrigin<'_>>,
        route: Option<RouteOf<'r>>,
    ) -> Concluded {
        let id = parsed.id();
        if self.usage.is_none() && self.audit.is_none() && self.monitor.is_none() {
            // Nothing records the time: the verifier reads the clock only
            // for keys with a validity window.
            return match self
                .verifier
                .verify_kept(parsed, view, &self.clock, requirement, ip)
            {
                Ok(v) if crate::verify::parent_of_view(v.view()).is_some() => {
                    Concluded::Derived(Box::new(Derived {
                        verified: v,
                        now: None,
                        owner: None,
                        ip,
                    }))
                }
                other => Concluded::Done(Self::from_origin(other, origin)),
            };
        }
        // Only for the audit event of a failure; skipped without a sink.
        let owner = view.as_ref().and_then(|v| v.owner.clone());
        // Usage or audit records the time: read it once.
        let now = self.clock.now();
        match self
            .verifier
            .verify_kept(parsed, view, &now, requirement, ip)
        {
            Ok(v) if crate::verify::parent_of_view(v.view()).is_some() => {
                Concluded::Derived(Box::new(Derived {
                    verified: v,
                    now: Some(now),
                    owner,
                    ip,
                }))
            }
            other => {
                let verified = Self::from_origin(other, origin);
                Concluded::Done(self.finish(verified, id, owner.as_deref(), now, ip, route))
            }
        }
    }

    /// A key-status failure (see [`FailureClass`]) is recorded against the
    /// key's id by the failure throttle (boxed where awaited: only failures
    /// wait for it).
    async fn key_status(&self, f: Failure, id: KeyId) -> Failure {
        let f = f.of_key(id);
        if f.reason.class() == FailureClass::KeyStatus {
            self.limits.key_failed(id.as_u64()).await;
        }
        f
    }

    /// A derived key after its own checks: its ancestors, then its origin,
    /// usage, monitoring and audit, as [`Self::conclude`] does for others.
    async fn run_derived(
        &self,
        d: Box<Derived>,
        id: KeyId,
        origin: Option<&RequestOrigin<'_>>,
        route: Option<RouteOf<'_>>,
    ) -> std::result::Result<VerifiedKey, Failure> {
        let Derived {
            verified,
            now,
            owner,
            ip,
        } = *d;
        let verified = self.lineage(verified).await;
        let verified = Self::from_origin(verified, origin);
        let result = match now {
            None => verified,
            Some(now) => self.finish(verified, id, owner.as_deref(), now, ip, route),
        };
        match result {
            Ok(v) => Ok(v),
            Err(f) => Err(self.key_status(f, id).await),
        }
    }

    /// A publishable key's origin check at the web edge (no check without
    /// an `origin`: not a web request).
    #[inline]
    fn from_origin(
        verified: std::result::Result<VerifiedKey, Failure>,
        origin: Option<&RequestOrigin<'_>>,
    ) -> std::result::Result<VerifiedKey, Failure> {
        let (Ok(v), Some(o)) = (&verified, origin) else {
            return verified;
        };
        match check_view(v.view(), o) {
            Ok(()) => verified,
            Err(e) => Err(Failure {
                id: Some(v.id()),
                view: Some(Arc::clone(v.view())),
                ..Failure::at(Stage::Request, e)
            }),
        }
    }

    /// A failure from `ip`, for the monitor's per-network burst check.
    fn network_failed(&self, ip: Option<IpAddr>) {
        if let (Some(m), Some(ip)) = (&self.monitor, ip) {
            m.network_failed(ip, self.clock.now());
        }
    }

    /// A derived key's ancestors ([`MAX_DERIVATION_DEPTH`](crate::Derivation::MAX_DEPTH));
    /// called for children only, so other keys pay one flag test. Its
    /// future is boxed where it is awaited: it is larger than the rest of
    /// the pipeline's, and every key's future would otherwise carry it.
    async fn lineage(&self, v: VerifiedKey) -> std::result::Result<VerifiedKey, Failure> {
        match crate::verify::check_ancestors(&self.store, &self.clock, v.view()).await {
            Ok(()) => Ok(v),
            Err(e) => Err(Failure {
                id: Some(v.id()),
                view: Some(Arc::clone(v.view())),
                ..Failure::from(e)
            }),
        }
    }

    /// Counts one rejection for the sampled summary (a reason the sampler
    /// does not count is ignored).
    fn count(&self, reason: Reason) {
        if let Some(a) = &self.audit {
            a.rejections.count(reason, || self.clock.now(), &*a.sink);
        }
    }

    fn finish(
        &self,
        verified: std::result::Result<VerifiedKey, Failure>,
        id: KeyId,
        owner: Option<&str>,
        now: Timestamp,
        ip: Option<IpAddr>,
        route: Option<RouteOf<'_>>,
    ) -> std::result::Result<VerifiedKey, Failure> {
        match verified {
            Ok(v) => {
                if let Some(u) = &self.usage {
                    u.recorder.record_from(id, now, ip, route);
                }
                if let Some(m) = &self.monitor {
                    m.verified(id, || v.owner(), ip, now);
                }
                Ok(v)
            }
            Err(f) => {
                if let Some(m) = &self.monitor {
                    if f.reason.class() == FailureClass::KeyStatus {
                        m.key_failed(id, owner, now);
                    }
                    if let Some(ip) = ip {
                        m.network_failed(ip, now);
                    }
                }
                if let Some(a) = &self.audit {
                    if f.reason.sampled() {
                        // An authenticated key that does not fit the
                        // request: counted, like junk.
                        a.rejections.count(f.reason, || now, &*a.sink);
                    } else {
                        a.sink.record(
                            &AuditEvent::new(
                                now,
                                AuditKind::VerificationFailed {
                                    code: f.reason.code().as_str(),
                                },
                            )
                            .key(id, owner),
                        );
                    }
                }
                Err(f)
            }
        }
    }

    /// A key the format does not parse but a legacy prefix claims: the
    /// untagged lookup, counted against the client's address from the
    /// moment it starts.
    async fn run_legacy(
        &self,
        presented: &str,
        prefix: &LegacyPrefix,
        requirement: &Requirement,
        ip: Option<IpAddr>,
        origin: Option<&RequestOrigin<'_>>,
        route: Option<RouteOf<'_>>,
    ) -> std::result::Result<VerifiedKey, Failure> {
        let limits = &self.limits;
        let attempt = limits.begin_untagged(ip).map_err(|retry_after| {
            Failure::at(Stage::Throttle, Error::TooManyFailures { retry_after })
        })?;
        // A path holding the key (a client that put it there) is not kept.
        let route = route.filter(|r| r.path.len() < presented.len() || !r.path.contains(presented));
        let result = async {
            if presented.len() > MAX_LEGACY_KEY_LEN || presented.len() <= prefix.legacy.len() {
                let failure = Failure::at(
                    Stage::Parse,
                    Error::MalformedApiKey(crate::MalformedReason::Length),
                );
                self.count(failure.reason);
                return Err(failure);
            }
            let keyring = self.verifier.keyring();
            let sha = legacy_sha(presented);
            let mut found = None;
            for v in keyring.versions_current_first() {
                let Some(index) = keyring.legacy_index(v, &sha) else {
                    continue;
                };
                let started = metrics::Started::now();
                let rec = trace::store("find_legacy", self.store.find_legacy(&index)).await;
                metrics::store_call("find_legacy", started, &rec);
                let rec = rec.map_err(|e| Failure::at(Stage::Lookup, Error::from_lookup(e)))?;
                if let Some(rec) = rec {
                    found = Some((rec, index));
                    break;
                }
            }
            let now = self.clock.now();
            let Some((rec, index)) = found else {
                let failure =
                    Failure::at(Stage::Lookup, Error::InvalidApiKey).because(Reason::UnknownLegacy);
                self.count(failure.reason);
                self.network_failed(ip);
                return Err(failure);
            };
            let verified = if legacy_matches(&self.verifier, &rec, prefix, &index, presented) {
                Self::from_origin(
                    self.verifier.verify_view(
                        Arc::new(KeyView::from_record(&rec)),
                        now,
                        requirement,
                        ip,
                    ),
                    origin,
                )
            } else {
                Err(Failure::at(Stage::Verify, Error::InvalidApiKey).of_key(rec.id))
            };
            let verified = self.finish(verified, rec.id, rec.owner.as_deref(), now, ip, route)?;
            // Best effort: a failure leaves the record as it was, and the next
            // verification tries again.
            if let Some(up) = &self.legacy.upgrader
                && let Some(next) = legacy_upgraded(&self.verifier, &rec, presented, &sha)
                && up.upgrade(next, rec.revision).await
                && let Some(a) = &self.audit
            {
                a.sink.record(
                    &AuditEvent::new(now, AuditKind::LegacyUpgraded)
                        .key(rec.id, rec.owner.as_deref()),
                );
            }
            Ok(verified)
        }
        .await;
        if let Err(f) = &result
            && f.reason.class() == FailureClass::KeyStatus
        {
            limits.untagged_failed(attempt).await;
        }
        result
    }
}

/// What [`Authenticator::conclude`] decided: the result, or a derived
/// key whose ancestors are still to check.
enum Concluded {
    Done(std::result::Result<VerifiedKey, Failure>),
    Derived(Box<Derived>),
}

/// A derived key that passed its own checks, and what its conclusion
/// needs (`now`: read when usage, monitoring or audit records it).
struct Derived {
    verified: VerifiedKey,
    now: Option<Timestamp>,
    owner: Option<crate::record::Owner>,
    ip: Option<IpAddr>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::key::{Keyring, ServerSecret};
    use crate::limits::{FailureThrottleConfig, MemoryLimits};
    use crate::record::NewKey;
    use crate::store::MemoryStore;

    fn failure(r: std::result::Result<VerifiedKey, Failure>) -> Failure {
        match r {
            Ok(_) => panic!("verified"),
            Err(f) => f,
        }
    }

    /// Issue 18, item 2: the pipeline's failure keeps what it learned, so
    /// nothing downstream parses the key or classifies the error again.
    #[tokio::test]
    async fn a_failure_keeps_its_stage_reason_id_and_record() {
        let verifier =
            Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[4; 32]).unwrap()).unwrap());
        let store = MemoryStore::new();
        let now = crate::Clock::now(&crate::SystemClock);
        let (key, record) = verifier
            .issue(
                NewKey::new("sk_live_")
                    .scopes(["read"])
                    .metadata("plan", "paid"),
                now,
            )
            .unwrap();
        let (unknown, _) = verifier.issue(NewKey::new("sk_live_"), now).unwrap();
        store.insert_sync(record.clone()).unwrap();
        let throttle = FailureThrottleConfig {
            max_failures: 1,
            ..FailureThrottleConfig::default()
        };
        let auth = Authenticator::read_only(verifier, store)
            .with_limits(MemoryLimits::new().with_failure_throttle(throttle));
        let run = |text: String, req: Requirement| {
            let auth = &auth;
            async move {
                auth.authenticate_kept(&text, &req, None, None, None, |r| r)
                    .await
            }
        };
        let any = Requirement::none;

        // Junk: no id, no record.
        let f = failure(run("sk_live_nope".into(), any()).await);
        assert_eq!(
            (f.stage, f.id.is_none(), f.view.is_none()),
            (Stage::Parse, true, true)
        );
        assert!(matches!(f.reason, Reason::Malformed(_)));
        // A forged key (checksum right, tag wrong) is told apart from an
        // unknown id, though both answer INVALID_API_KEY.
        // Issued under another server secret: checksum right, tag wrong.
        let other =
            Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[5; 32]).unwrap()).unwrap());
        let (forged, _) = other.issue(NewKey::new("sk_live_"), now).unwrap();
        let forged = forged.expose_secret().to_owned();
        let f = failure(run(forged, any()).await);
        assert_eq!(f.error.code(), "INVALID_API_KEY");
        assert!(
            matches!(f.reason, Reason::Forged | Reason::Malformed(_)),
            "{f:?}"
        );

        // A scope failure: the id, and the record with the key's plan.
        let f = failure(
            run(
                key.expose_secret().to_owned(),
                Requirement::scope("write").unwrap(),
            )
            .await,
        );
        assert_eq!(
            (f.stage, f.reason, f.id),
            (Stage::Verify, Reason::InsufficientScope, Some(record.id))
        );
        assert_eq!(f.reason.class(), FailureClass::Authenticated);
        assert_eq!(
            f.metadata().unwrap().get("plan").map(String::as_str),
            Some("paid")
        );

        // An unknown id: the parsed id, no record.
        let f = failure(run(unknown.expose_secret().to_owned(), any()).await);
        let unknown_id = auth.verifier().parse(unknown.expose_secret()).unwrap().id();
        assert_eq!(
            (f.stage, f.reason, f.id),
            (Stage::Verify, Reason::InvalidKey, Some(unknown_id))
        );
        assert!(f.view.is_none());
        assert_eq!(f.reason.class(), FailureClass::KeyStatus);

        // That key-status failure backed the id off: the throttle's stage.
        let f = failure(run(unknown.expose_secret().to_owned(), any()).await);
        assert_eq!(
            (f.stage, f.reason, f.id),
            (Stage::Throttle, Reason::Throttled, Some(unknown_id))
        );
        assert_eq!(f.error.code(), "TOO_MANY_FAILED_ATTEMPTS");
    }
}
