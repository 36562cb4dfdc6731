use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use std::time::Duration;

use crate::Timestamp;

use super::hygiene::{HygieneOptions, HygieneReport};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::key::Environment;
use crate::key::{ApiKey, KeyId};
use crate::limits::{Limits, NoLimits};
use crate::pipeline::UsageRecorder;
use crate::pipeline::{Actor, AuditEvent, AuditKind, AuditSink, NoAudit, RejectionSampler};
use crate::pipeline::{Auditor, Authenticator};
use crate::record::IpNet;
use crate::record::Requirement;
use crate::record::{KeyRecord, KeyStatus, NewKey, Revocation, UsageCounters};
use crate::store::{KeyQuery, KeyStoreWrite, UsageStore};
use crate::verify::KeyPolicies;
use crate::verify::{VerifiedKey, Verifier};

mod change;
mod commit;
mod create;
mod gates;
mod input;
mod rotate;

use input::LegacySecret;
pub use input::{ImportKey, KeyUpdate, Rotation};

pub(crate) use gates::{MAX_RETRIES, backoff, contended};

/// [`Derivation::DEFAULT_LIMITS`](crate::Derivation::DEFAULT_LIMITS).
pub(crate) const DEFAULT_DERIVATION_LIMITS: (u8, u32) = (2, 100);

/// Refuses the crate's links in caller-given metadata: the parent link
/// (only [`KeyManager::derive`] sets it) and the limits account (only
/// `derive` and [`KeyManager::rotate`] set it: a caller naming another
/// key's account would spend that key's credits).
pub(crate) fn reserved_links(metadata: &BTreeMap<String, String>) -> Result<()> {
    for (entry, what) in [
        (KeyRecord::PARENT, "derived keys"),
        (KeyRecord::LIMITS_OF, "rotated and derived keys"),
    ] {
        if metadata.contains_key(entry) {
            return Err(Error::InvalidInput(format!(
                "the metadata entry `{entry}` is reserved for {what}"
            )));
        }
    }
    Ok(())
}

/// What a person sees of a key: display form, name, scopes, status, times,
/// usage. No secret, no digest. Serializes for dashboards and admin APIs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeySummary {
    /// Public id.
    pub id: KeyId,
    /// `kwi_sk_aBcDe...`.
    pub display: String,
    /// Owner.
    pub owner: Option<String>,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Environment.
    pub environment: Environment,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Stored status.
    pub status: KeyStatus,
    /// Effective state at the time of the call.
    pub state: KeyState,
    /// Created.
    pub created_at: Timestamp,
    /// Last successful use, as of the last usage flush.
    pub last_used_at: Option<Timestamp>,
    /// The client address of that use, when known.
    pub last_used_ip: Option<std::net::IpAddr>,
    /// The route of that use (`"GET /v1/items/*"`), when it came through
    /// the web edge (see [`KeyRecord::last_used_route`]).
    pub last_used_route: Option<String>,
    /// Expiry (exclusive).
    pub expires_at: Option<Timestamp>,
    /// Start of validity.
    pub not_before: Option<Timestamp>,
    /// Revocation, when revoked.
    pub revocation: Option<Revocation>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// IP allowlist (empty: anywhere).
    pub ip_allowlist: Vec<IpNet>,
    /// The key this one replaced.
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one.
    pub rotated_to: Option<KeyId>,
    /// Successful verifications today (UTC), as of the last flush (0 in a
    /// summary made by [`from_record`](Self::from_record) alone; the
    /// manager's listings fill it from [`UsageStore::usage`]).
    pub requests_today: u64,
    /// Successful verifications this month (UTC), as of the last flush (as
    /// `requests_today`).
    pub requests_this_month: u64,
    /// Whether the key was imported from another system.
    pub legacy: bool,
}

impl KeySummary {
    /// The key's limits account, as [`KeyRecord::limits_account`] reads it
    /// (`None` when the entry is unreadable).
    pub fn limits_account(&self) -> Option<KeyId> {
        crate::record::limits_account_in(self.id, &self.metadata)
    }

    /// Whether the key is marked for auto-renewal, as
    /// [`KeyRecord::auto_renews`] reads it.
    pub fn auto_renews(&self) -> bool {
        crate::record::auto_renews_in(&self.metadata)
    }

    /// This summary with the usage totals `usage`
    /// ([`KeyManager::usage_of`]).
    pub fn with_usage(mut self, usage: UsageCounters) -> Self {
        self.requests_today = usage.today;
        self.requests_this_month = usage.this_month;
        self
    }
}

/// A key's effective state at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyState {
    /// Verifies.
    Active,
    /// Replaced by rotation, still valid until its grace period ends.
    RotationGrace,
    /// Disabled.
    Disabled,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Before its not-before.
    NotYetValid,
}

impl KeySummary {
    /// The summary of `record` at `now`, without usage counts (see
    /// [`with_usage`](Self::with_usage)).
    pub fn from_record(record: &KeyRecord, now: Timestamp) -> Self {
        let state = match record.status {
            KeyStatus::Revoked => KeyState::Revoked,
            KeyStatus::Disabled => KeyState::Disabled,
            KeyStatus::Active if record.expires_at.is_some_and(|e| now >= e) => KeyState::Expired,
            KeyStatus::Active if record.not_before.is_some_and(|nb| now < nb) => {
                KeyState::NotYetValid
            }
            KeyStatus::Active if record.rotated_to.is_some() => KeyState::RotationGrace,
            KeyStatus::Active => KeyState::Active,
        };
        Self {
            id: record.id,
            display: record.display_form(),
            owner: record.owner.clone(),
            name: record.name.clone(),
            description: record.description.clone(),
            environment: record.environment,
            scopes: record
                .scopes
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            status: record.status,
            state,
            created_at: record.created_at,
            last_used_at: record.last_used_at,
            last_used_ip: record.last_used_ip,
            last_used_route: record.last_used_route.clone(),
            expires_at: record.expires_at,
            not_before: record.not_before,
            revocation: record.revocation.clone(),
            metadata: record.metadata.clone(),
            ip_allowlist: record.ip_allowlist.clone(),
            rotated_from: record.rotated_from,
            rotated_to: record.rotated_to,
            requests_today: 0,
            requests_this_month: 0,
            legacy: record.legacy.is_some(),
        }
    }
}

/// The management side: [`KeyManager`] creates, lists, updates, disables,
/// revokes, rotates, deletes and imports keys over any
/// [`KeyStoreWrite`] + [`UsageStore`], enforces the per-owner limit, records usage and
/// emits audit events; it also authenticates requests with the IP
/// allowlist, usage tracking, legacy keys and audit of failures.
///
/// Store failures map to errors in one way on every path (see
/// `From<StoreError> for Error`): a record the store cannot read is
/// [`Error::InvalidRecord`] (`INVALID_RECORD`, 500), whether it was met
/// by a verification, a `get` or a listing; an unreachable or slow store is
/// [`Error::StoreUnavailable`] (503).
///
/// Every operation returns a typed [`Error`]. Every rule (the owner limit,
/// the rotation chain, link clearing on delete, legacy-index uniqueness,
/// the derived-key limits) is planned here, once, over what was read, and
/// written in one [`KeyStoreWrite::commit`] that names the revisions and
/// the owner version it planned on; a commit refused as a conflict writes
/// nothing and the plan is made again (at most 64 times, with timed jittered
/// backoff), so a call refused by the store changes nothing. A change
/// (disable, revoke, ...) is visible to every verification that starts
/// after the call returns: the manager keeps no cache of records.
///
/// A timed-out write may still have committed: see
/// [What a timeout means](KeyManager#what-a-timeout-means).
///
/// ```
/// use std::sync::Arc;
/// use apikey::{
///     Actor, KeyManager, KeyUpdate, Keyring, ManualClock, MemoryAuditSink, MemoryStore, NewKey,
///     Requirement, Rotation, ServerSecret, Verifier,
/// };
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), apikey::Error> {
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
/// let clock = ManualClock::new("2026-06-01T09:00:00Z".parse::<apikey::Timestamp>().unwrap()); // SystemClock in production
/// let audit = Arc::new(MemoryAuditSink::new());
/// let keys = KeyManager::with_clock(verifier, MemoryStore::new(), clock.clone())
///     .with_max_keys_per_owner(3)
///     .with_audit_sink(audit.clone());
/// let admin = Actor::new("admin_1").reason("ticket #42");
///
/// // Create: the full key is returned once; listings show `kwi_sk_aBcDe...`.
/// let (key, summary) = keys
///     .create(NewKey::new("kwi_sk_").owner("user_42").name("CI").scopes(["tasks:read"]), &admin)
///     .await?;
/// assert_eq!(keys.list("user_42").await?[0].display, summary.display);
///
/// // Update (PATCH), disable / enable: effective for the next verification.
/// keys.update(summary.id, KeyUpdate::new().scopes(["tasks:read", "tasks:write"]), &admin).await?;
/// keys.disable(summary.id, &admin).await?;
/// let err = keys.authenticate(key.expose_secret(), &Requirement::none(), None).await.unwrap_err();
/// assert_eq!(err.code(), "DISABLED_API_KEY");
/// keys.enable(summary.id, &admin).await?;
///
/// // Rotate with a one-day grace period: both keys work until it ends.
/// let (new_key, _) = keys.rotate(summary.id, Rotation::with_grace(Duration::from_secs(86_400)), &admin).await?;
/// clock.advance(Duration::from_secs(86_400));
/// let err = keys.authenticate(key.expose_secret(), &Requirement::none(), None).await.unwrap_err();
/// assert_eq!(err.code(), "EXPIRED_API_KEY");
/// keys.authenticate(new_key.expose_secret(), &Requirement::scope("tasks:write")?, None).await?;
///
/// // Revoke every key of a user who left; flush usage before exit.
/// keys.revoke_owner("user_42", "left the organisation", &admin).await?;
/// keys.shutdown().await?;
/// assert!(audit.events().iter().any(|e| e.kind.as_str() == "rotated"));
/// # Ok(()) }
/// ```
///
/// Key lifecycle and account policy over any store.
///
/// ```
/// use apikey::*;
/// use std::sync::Arc;
/// use std::time::Duration;
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[5; 32])?)?);
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap());
/// let audit = Arc::new(MemoryAuditSink::new());
/// let manager = KeyManager::with_clock(verifier, MemoryStore::new(), clock.clone())
///     .with_max_keys_per_owner(3)
///     .with_audit_sink(audit.clone());
/// let admin = Actor::new("admin_1");
///
/// let (key, summary) = manager.create(NewKey::new("kwi_sk_").owner("user_1").scopes(["read"]), &admin).await?;
/// assert_eq!(manager.list("user_1").await?.len(), 1);
/// manager.authenticate(key.expose_secret(), &Requirement::scope("read")?, None).await?;
///
/// let (new_key, _) = manager.rotate(summary.id, Rotation::with_grace(Duration::from_secs(3_600)), &admin).await?;
/// clock.advance(Duration::from_secs(3_600));
/// assert_eq!(manager.authenticate(key.expose_secret(), &Requirement::none(), None).await.unwrap_err().code(), "EXPIRED_API_KEY");
/// manager.authenticate(new_key.expose_secret(), &Requirement::none(), None).await?;
/// manager.shutdown().await?;
/// let kinds: Vec<&str> = audit.events().iter().map(|e| e.kind.as_str()).collect();
/// assert_eq!(kinds, ["created", "rotated", "verification_failed"]);
/// # Ok::<(), apikey::Error>(())
/// # }).unwrap();
/// ```
///
/// # What a timeout means
///
/// A write whose store call times out or loses its connection
/// (`StoreErrorKind::Timeout` or `Unavailable`) may still have committed:
/// PostgreSQL and SQLite both finish a `COMMIT` whose client went away.
/// The manager resolves this where a lost answer would lose something:
///
/// * [`create`](Self::create), [`rotate`](Self::rotate) and
///   [`import`](Self::import) send the same write again (at most
///   twice). The database orders it after the lost one (it waits for the
///   lost write's locks), so when it is refused because the lost write
///   committed (the id exists, the predecessor's revision moved, or the
///   owner limit counts it) and the stored record is the one this call
///   wrote, the call answers success, with the new key's text. A
///   `STORE_UNAVAILABLE` from them therefore means the outcome could not be
///   learned either: the key may exist, its text shown to nobody (it is
///   listed by [`list`](Self::list); revoke it).
/// * The other writes are safe to retry as they are: a retried
///   `disable`, `enable` or `revoke` finds the key in that state already and
///   succeeds (without a second audit event, so the lost write's event may
///   be missing), `update` writes the same fields again, `delete` answers
///   `KEY_NOT_FOUND`, and `revoke_owner` / `revoke_created_between` return
///   the ids not revoked yet.
pub struct KeyManager<S, C = SystemClock, L = NoLimits> {
    /// The one pipeline, over the shared store; it holds the verifier, the
    /// clock, the limits bundle (its failure throttle), the usage recorder
    /// and the legacy prefixes.
    auth: Authenticator<Arc<S>, C, L>,
    /// The authenticator's recorder (the same `Arc`).
    usage: Arc<UsageRecorder>,
    pub(super) max_per_owner: Option<u32>,
    max_grace: Duration,
    /// Deepest derivation chain and most live children per parent.
    pub(super) derivation: (u8, u32),
    /// The issuance policies as configured, and the public scopes; the
    /// verifier holds both combined.
    policies: (KeyPolicies, Option<crate::ScopeSet>),
    audit: Arc<dyn AuditSink>,
    audit_enabled: bool,
    sample_interval: Duration,
    /// Serializes this process's guarded plans per owner (see
    /// [`gates::OwnerGates`]).
    gates: gates::OwnerGates,
}

impl<S, C, L> fmt::Debug for KeyManager<S, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyManager")
            .field("authenticator", &self.auth)
            .field("max_per_owner", &self.max_per_owner)
            .field("max_grace", &self.max_grace)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStoreWrite + UsageStore + 'static> KeyManager<S, SystemClock> {
    /// A manager reading the system clock.
    pub fn new(verifier: Verifier, store: S) -> Self {
        Self::with_clock(verifier, store, SystemClock)
    }
}

impl<S: KeyStoreWrite + UsageStore + 'static, C: Clock> KeyManager<S, C> {
    /// A manager reading `clock`. No owner limit, no audit sink, rotation
    /// grace at most [`Rotation::DEFAULT_MAX_GRACE`], usage counted in memory (flush
    /// it with [`flush`](Self::flush), off the request path), rejection
    /// summaries at most every 60 s.
    pub fn with_clock(verifier: Verifier, store: S, clock: C) -> Self {
        let store = Arc::new(store);
        let usage = Arc::new(UsageRecorder::new(Duration::from_secs(60)));
        let mut auth = Authenticator::read_only_with_clock(verifier, Arc::clone(&store), clock)
            .with_usage(Arc::clone(&usage));
        auth.set_upgrader(store);
        Self {
            auth,
            usage,
            max_per_owner: None,
            max_grace: Rotation::DEFAULT_MAX_GRACE,
            derivation: DEFAULT_DERIVATION_LIMITS,
            policies: (KeyPolicies::new(), None),
            audit: Arc::new(NoAudit),
            audit_enabled: false,
            sample_interval: Duration::from_secs(60),
            gates: gates::OwnerGates::default(),
        }
    }
}

impl<S: KeyStoreWrite + UsageStore, C: Clock, L: Limits> KeyManager<S, C, L> {
    /// Runs the pipeline's failure throttle with `limits` (see
    /// [`Authenticator::with_limits`]); a gate built with
    /// [`Gate::from_manager`](crate::web::Gate::from_manager) takes its rate
    /// limits and credits from it too. Defaults to [`NoLimits`].
    pub fn with_limits<L2: Limits>(self, limits: L2) -> KeyManager<S, C, L2> {
        KeyManager {
            auth: self.auth.with_limits(limits),
            usage: self.usage,
            max_per_owner: self.max_per_owner,
            max_grace: self.max_grace,
            derivation: self.derivation,
            policies: self.policies,
            audit: self.audit,
            audit_enabled: self.audit_enabled,
            sample_interval: self.sample_interval,
            gates: self.gates,
        }
    }

    /// The authenticator over this manager's store: the same pipeline as
    /// [`authenticate`](Self::authenticate) (throttle, usage, audit, legacy
    /// keys).
    /// Build the [`Gate`](crate::web::Gate) or the axum layer from it (or
    /// with [`Gate::from_manager`](crate::web::Gate::from_manager)), so
    /// HTTP traffic updates `last_used_at` and the counts, and writes audit
    /// events, exactly as managed keys promise.
    pub fn authenticator(&self) -> &Authenticator<Arc<S>, C, L> {
        &self.auth
    }

    fn reaudit(&mut self) {
        let auditor = self.audit_enabled.then(|| {
            Arc::new(Auditor {
                sink: Arc::clone(&self.audit),
                rejections: RejectionSampler::new(self.sample_interval),
            })
        });
        self.auth.set_audit(auditor);
    }

    /// Raises the seed-001 monitoring events through `monitor` (see
    /// [`Authenticator::with_monitor`]); a gate built with
    /// [`Gate::from_manager`](crate::web::Gate::from_manager) adds rate-limit
    /// hits and exhausted quotas. Defaults to none.
    pub fn with_monitor(mut self, monitor: Arc<crate::pipeline::Monitor>) -> Self {
        self.auth = self.auth.with_monitor(monitor);
        self
    }

    /// Limits every owner to `max` active keys (see
    /// [`KeyRecord::counts_toward_limit`]). Defaults to no limit.
    pub fn with_max_keys_per_owner(mut self, max: u32) -> Self {
        self.max_per_owner = Some(max);
        self
    }

    /// Limits [derived keys](Self::derive): chains at most `max_depth` keys
    /// below a key that is not derived (at most
    /// [`Derivation::MAX_DEPTH`](crate::Derivation::MAX_DEPTH); 0 forbids
    /// deriving), and at most `max_children` live (not revoked, not
    /// expired) children per parent. Defaults to
    /// [`Derivation::DEFAULT_LIMITS`](crate::Derivation::DEFAULT_LIMITS).
    pub fn with_derivation_limits(mut self, max_depth: u8, max_children: u32) -> Self {
        self.derivation = (
            max_depth.min(crate::verify::MAX_DERIVATION_DEPTH),
            max_children,
        );
        self
    }

    /// Enforces the issuance `policies` (see [`KeyPolicies`]): planned on
    /// [`create`](Self::create), [`update`](Self::update),
    /// [`rotate`](Self::rotate) and [`import`](Self::import) (a key that
    /// would not comply is refused with [`Error::PolicyViolation`], before
    /// the one commit that also carries the owner guard), and checked
    /// at every verification through this manager's verifier (see
    /// [`Verifier::with_key_policies`]). To tighten or loosen a policy,
    /// build the manager again over the same store: keys are never revoked
    /// for it. Defaults to none.
    ///
    /// ```
    /// use apikey::*;
    /// use std::time::Duration;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap());
    /// let store = std::sync::Arc::new(MemoryStore::new());
    /// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
    /// let admin = Actor::new("admin");
    /// let open = KeyManager::with_clock(verifier.clone(), store.clone(), clock.clone());
    /// let (old_key, _) = open.create(NewKey::new("sk_live_"), &admin).await?; // never expires
    ///
    /// let keys = KeyManager::with_clock(verifier, store, clock.clone()).with_key_policies(
    ///     KeyPolicies::new().rule(PolicyRule::new(
    ///         PolicyTarget::Prefix("sk_live_".into()),
    ///         KeyPolicy::new().default_lifetime(Duration::from_secs(90 * 86_400)).max_lifetime(Duration::from_secs(366 * 86_400)),
    ///     )),
    /// );
    /// let (_, s) = keys.create(NewKey::new("sk_live_"), &admin).await?;
    /// assert_eq!(s.expires_at, Some(clock.now() + Duration::from_secs(90 * 86_400)));
    /// let too_long = NewKey::new("sk_live_").expires_at(clock.now() + Duration::from_secs(400 * 86_400));
    /// assert_eq!(keys.create(too_long, &admin).await.unwrap_err().code(), "POLICY_VIOLATION");
    /// // The key made before the policy is refused, not revoked.
    /// let err = keys.authenticate(old_key.expose_secret(), &Requirement::none(), None).await.unwrap_err();
    /// assert_eq!((err.code().as_str(), err.http_status()), ("POLICY_VIOLATION", 403));
    /// # Ok::<(), Error>(()) }).unwrap();
    /// ```
    pub fn with_key_policies(mut self, policies: KeyPolicies) -> Self {
        self.policies.0 = policies;
        self.install_policies();
        self
    }

    /// Declares the scopes publishable keys
    /// ([`Prefix::is_publishable`](crate::Prefix::is_publishable), such as
    /// `pk_live_`) may hold: a [`PolicyTarget::Publishable`](crate::PolicyTarget::Publishable)
    /// rule with this scope ceiling, enforced on every change and at every
    /// verification like any policy. Publishable keys can only be made
    /// once this is set, and each needs an origin allowlist
    /// ([`web::publishable`](crate::web::publishable)). Defaults to none.
    ///
    /// # Errors
    /// [`Error::InvalidScope`] for a malformed scope.
    pub fn with_public_scopes<I: IntoIterator<Item = T>, T: AsRef<str>>(
        mut self,
        scopes: I,
    ) -> Result<Self> {
        let scopes: Vec<String> = scopes.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self.policies.1 = Some(crate::ScopeSet::parse(&scopes)?);
        self.install_policies();
        Ok(self)
    }

    /// Gives the verifier the configured policies plus the public-scope
    /// rule.
    fn install_policies(&mut self) {
        let mut all = self.policies.0.clone();
        if let Some(ceiling) = &self.policies.1 {
            let mut p = crate::KeyPolicy::new();
            p.scope_ceiling = Some(ceiling.clone());
            all = all.rule(crate::PolicyRule::new(crate::PolicyTarget::Publishable, p));
        }
        self.auth.set_key_policies(all);
    }

    /// The longest rotation grace period [`rotate`](Self::rotate) accepts;
    /// a longer one is [`Error::InvalidInput`] (`INVALID_REQUEST`). Defaults
    /// to [`Rotation::DEFAULT_MAX_GRACE`] (7 days). Keys in their grace period still
    /// work but do not count toward the owner limit, so this bounds how long
    /// a rotated key can outlive the limit; a negative value counts as zero.
    pub fn with_max_grace(mut self, max: Duration) -> Self {
        self.max_grace = max.max(Duration::ZERO);
        self
    }

    /// Sends audit events to `sink`, management events and failed
    /// verifications alike. Defaults to [`NoAudit`].
    pub fn with_audit_sink(mut self, sink: impl AuditSink + 'static) -> Self {
        self.audit = Arc::new(sink);
        self.audit_enabled = true;
        self.reaudit();
        self
    }

    /// At most one summary of counted rejections per `interval`: rejections
    /// before the tag matched and failures of an authenticated key against the
    /// request (see [`AuditKind::RejectionsSampled`]). Defaults to 60 seconds.
    pub fn with_rejection_sample_interval(mut self, interval: Duration) -> Self {
        self.sample_interval = interval;
        self.reaudit();
        self
    }

    /// Declares `legacy` as the prefix of keys imported from another system,
    /// stored under the registered native prefix `native` (which gives them
    /// their environment).
    ///
    /// Unlike native keys, which are rejected by their checksum and tag
    /// before any store call, **any string starting with a legacy prefix
    /// reaches the store** (one indexed lookup per secret version held):
    /// legacy keys carry no checksum or tag. Such failures are counted, not
    /// logged one by one.
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`] when `legacy` is empty, longer than 32
    /// bytes, not printable ASCII, starts with a registered native prefix
    /// (its keys would be read as native keys), or is declared twice; or
    /// when `native` is not registered.
    pub fn with_legacy_prefix(mut self, legacy: &str, native: &str) -> Result<Self> {
        self.auth = self.auth.with_legacy_prefix(legacy, native)?;
        Ok(self)
    }

    /// The declared legacy prefixes as `(legacy, native)` pairs, most
    /// specific first (see
    /// [`Authenticator::legacy_prefixes`](crate::Authenticator::legacy_prefixes)).
    pub fn legacy_prefixes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.auth.legacy_prefixes()
    }

    /// The verifier.
    pub fn verifier(&self) -> &Verifier {
        self.auth.verifier()
    }

    /// The store.
    pub fn store(&self) -> &S {
        self.auth.store()
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        self.auth.clock()
    }

    /// The usage recorder (shared with [`authenticator`](Self::authenticator)).
    pub fn usage(&self) -> &UsageRecorder {
        &self.usage
    }

    /// The clock's reading.
    pub(super) fn now(&self) -> Timestamp {
        self.auth.clock().now()
    }

    pub(super) fn emit(&self, event: AuditEvent) {
        self.audit.record(&event);
    }

    pub(super) fn event(
        &self,
        now: Timestamp,
        kind: AuditKind,
        r: &KeyRecord,
        actor: &Actor,
    ) -> AuditEvent {
        AuditEvent::new(now, kind)
            .key(r.id, r.owner.as_deref())
            .by(actor)
    }

    /// The issuance policies (held by the verifier, which checks them at
    /// verification too), if any.
    pub(super) fn policies(&self) -> Option<&KeyPolicies> {
        self.auth.verifier().key_policies()
    }

    /// Issues a key planned under the issuance policies: a key without
    /// expiry gets the default lifetime (the shortest applicable
    /// `default_lifetime`, else the shortest `max_lifetime`); with
    /// `approval` and a policy that requires it, the key is born disabled
    /// and marked [`KeyRecord::PENDING_APPROVAL`](crate::KeyRecord::PENDING_APPROVAL); the result must comply with every
    /// applicable policy. The one place create, rotate and import plan a
    /// new record.
    pub(super) fn issue_planned(
        &self,
        mut new: NewKey,
        now: Timestamp,
        approval: bool,
    ) -> Result<(ApiKey, KeyRecord)> {
        if crate::key::is_publishable(&new.prefix) {
            if self.policies.1.is_none() {
                return Err(Error::InvalidState(
                    "publishable keys need the public scopes (KeyManager::with_public_scopes)",
                ));
            }
            crate::pipeline::validate_origins(
                new.metadata
                    .get(crate::pipeline::ALLOWED_ORIGINS)
                    .map(String::as_str),
            )?;
        }
        let Some(p) = self.policies() else {
            return self.auth.verifier().issue(new, now);
        };
        let owner = new.owner.as_deref();
        if new.expires_at.is_none()
            && let Some(life) = p
                .default_lifetime(&new.prefix, owner)
                .or_else(|| p.max_lifetime(&new.prefix, owner))
        {
            new.expires_at = Some(now.saturating_add(life));
        }
        let pending = approval && p.requires_approval(&new.prefix, owner);
        let (key, mut record) = self.auth.verifier().issue(new, now)?;
        if pending {
            record.status = KeyStatus::Disabled;
            record
                .metadata
                .insert(KeyRecord::PENDING_APPROVAL.to_owned(), "true".to_owned());
        }
        p.check(&record, now)?;
        Ok((key, record))
    }

    /// Checks a changed record against the issuance policies.
    pub(super) fn check_policies(&self, record: &KeyRecord, now: Timestamp) -> Result<()> {
        match self.policies() {
            Some(p) => p.check(record, now),
            None => Ok(()),
        }
    }

    /// The full stored record (for administrators: it has the digest, never
    /// the secret). Prefer [`get`](Self::get) for people.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; [`Error::InvalidRecord`] (`INVALID_RECORD`,
    /// 500) when the stored record cannot be read; [`Error::StoreUnavailable`].
    pub async fn record(&self, id: KeyId) -> Result<KeyRecord> {
        self.auth
            .store()
            .get(id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::KeyNotFound)
    }

    /// The summary of key `id`.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; [`Error::InvalidRecord`] when the stored
    /// record cannot be read; [`Error::StoreUnavailable`].
    pub async fn get(&self, id: KeyId) -> Result<KeySummary> {
        let now = self.now();
        let r = self.record(id).await?;
        self.summary(&r, now).await
    }

    pub(crate) async fn records_of(&self, owner: &str) -> Result<Vec<KeyRecord>> {
        Ok(self.owner_snapshot(owner).await?.records)
    }

    /// Today's and this month's successful verifications of key `id` (UTC,
    /// as of the last usage flush), summed from the store's per-day rows
    /// ([`UsageStore::usage`]).
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`].
    pub async fn usage_of(&self, id: KeyId) -> Result<UsageCounters> {
        let now = self.now();
        self.usage_at(id, now).await
    }

    async fn usage_at(&self, id: KeyId, now: Timestamp) -> Result<UsageCounters> {
        let today = now.utc_date();
        let rows = self
            .store()
            .usage(id, UsageCounters::window(today))
            .await
            .map_err(Error::from)?;
        Ok(UsageCounters::from_days(today, &rows))
    }

    /// The summary of `record` with its usage totals.
    pub(crate) async fn summary(&self, record: &KeyRecord, now: Timestamp) -> Result<KeySummary> {
        Ok(KeySummary::from_record(record, now).with_usage(self.usage_at(record.id, now).await?))
    }

    /// The summaries of `owner`'s keys, oldest first.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] (`INVALID_RECORD`, 500) when any of the
    /// owner's records cannot be read: the whole listing fails rather than
    /// leave the bad key out (a listing that silently omits a key would
    /// hide a key that may still work from the person reviewing it);
    /// [`Error::StoreUnavailable`] when the store fails.
    pub async fn list(&self, owner: &str) -> Result<Vec<KeySummary>> {
        let now = self.now();
        let records = self.records_of(owner).await?;
        let mut out = Vec::with_capacity(records.len());
        for r in &records {
            out.push(self.summary(r, now).await?);
        }
        Ok(out)
    }

    /// Keys that expire within `within` from now (of `owner`, or of everyone
    /// when `None`), soonest first: for renewal notices. Revoked keys and
    /// keys already replaced by rotation are left out.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] when any record in the window cannot be read
    /// (the whole listing fails, as in [`list`](Self::list));
    /// [`Error::StoreUnavailable`].
    pub async fn expiring_soon(
        &self,
        owner: Option<&str>,
        within: Duration,
    ) -> Result<Vec<KeySummary>> {
        let now = self.now();
        let mut query = KeyQuery::expiring(owner, now..now.saturating_add(within));
        let mut out = Vec::new();
        loop {
            let page = self.store().list(&query).await.map_err(Error::from)?;
            for r in page.records.iter().filter(|r| r.rotated_to.is_none()) {
                out.push(self.summary(r, now).await?);
            }
            match query.next_page(&page) {
                Some(next) => query = next,
                None => return Ok(out),
            }
        }
    }

    /// The [hygiene report](HygieneReport) over `owner`'s keys:
    /// no expiry, unused, wildcard scopes, no IP allowlist, expiring soon,
    /// not compliant with the issuance policies in force.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub async fn hygiene(&self, owner: &str, options: &HygieneOptions) -> Result<HygieneReport> {
        let now = self.now();
        let records = self.records_of(owner).await?;
        let none = KeyPolicies::new();
        let policies = self.policies().unwrap_or(&none);
        Ok(HygieneReport::of_records(&records, policies, now, options))
    }

    // ----- verification -----

    /// Authenticates `presented` from address `ip` and checks
    /// `requirement`: the [`Verifier`] checks (environment included, as
    /// configured with [`Verifier::with_environments`]), then the key's IP allowlist
    /// (a key with an allowlist rejects a request whose address is `None`),
    /// then records the use. Imported legacy keys are verified through the
    /// legacy index.
    ///
    /// Nothing is cached: a disable, revoke or rotation that returned before
    /// this call started is seen by it.
    ///
    /// # Errors
    /// Every outcome of [`Verifier::verify`], [`Error::IpNotAllowed`],
    /// and [`Error::StoreUnavailable`] when the store fails (never "valid",
    /// never "invalid key").
    pub async fn authenticate(
        &self,
        presented: &str,
        requirement: &Requirement,
        ip: Option<IpAddr>,
    ) -> Result<VerifiedKey> {
        self.auth.authenticate(presented, requirement, ip).await
    }

    // ----- flushing -----

    /// Writes pending usage to the store now; returns the uses written.
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`]; the counts stay pending.
    pub async fn flush(&self) -> Result<u64> {
        self.usage
            .flush(self.auth.store(), self.now())
            .await
            .map_err(Error::from)
    }

    /// Flushes usage and emits the pending rejection summary. Call it before
    /// the process exits (there is no async drop).
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] when the final flush fails (the counts
    /// are still pending; call again).
    pub async fn shutdown(&self) -> Result<()> {
        let now = self.now();
        if let Some(a) = self.auth.auditor() {
            a.rejections.emit(now, &*a.sink);
        }
        self.flush().await.map(|_| ())
    }
}
