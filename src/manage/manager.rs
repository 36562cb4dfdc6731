//! The management side: [`KeyManager`] creates, lists, updates, disables,
//! revokes, rotates, deletes and imports keys over any
//! [`KeyStoreLifecycle`], enforces the per-owner limit, records usage and
//! emits audit events; it also authenticates requests with the IP
//! allowlist, usage tracking, legacy keys and audit of failures.
//!
//! Store failures map to errors in one way on every path (see
//! `From<StoreError> for Error`): a record the store cannot read is
//! [`Error::InvalidRecord`] (`INVALID_RECORD`, 500), whether it was met
//! by a verification, a `get` or a listing; an unreachable or slow store is
//! [`Error::StoreUnavailable`] (503).
//!
//! Every operation returns a typed [`Error`]; each one is a single atomic
//! store call, or a read followed by a conditional write
//! ([`KeyStoreLifecycle::update_if`]) that is retried on a concurrent
//! change, so a call refused by the store changes nothing. A change
//! (disable, revoke, ...) is visible to every verification that starts
//! after the call returns: the manager keeps no cache of records.
//!
//! A timed-out write may still have committed: see
//! [What a timeout means](KeyManager#what-a-timeout-means).
//!
//! ```
//! use std::sync::Arc;
//! use apikey::{
//!     Actor, KeyManager, KeyUpdate, Keyring, ManualClock, MemoryAuditSink, MemoryStore, NewKey,
//!     Requirement, Rotation, ServerSecret, Verifier,
//! };
//! use time::{Duration, macros::datetime};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), apikey::Error> {
//! let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
//! let clock = ManualClock::new(datetime!(2026-06-01 9:00 UTC)); // SystemClock in production
//! let audit = Arc::new(MemoryAuditSink::new());
//! let keys = KeyManager::with_clock(verifier, MemoryStore::new(), clock.clone())
//!     .with_max_keys_per_owner(3)
//!     .with_audit_sink(audit.clone());
//! let admin = Actor::new("admin_1").reason("ticket #42");
//!
//! // Create: the full key is returned once; listings show `kwi_sk_aBcDe...`.
//! let (key, summary) = keys
//!     .create(NewKey::new("kwi_sk_").owner("user_42").name("CI").scopes(["tasks:read"]), &admin)
//!     .await?;
//! assert_eq!(keys.list("user_42").await?[0].display, summary.display);
//!
//! // Update (PATCH), disable / enable: effective for the next verification.
//! keys.update(summary.id, KeyUpdate::new().scopes(["tasks:read", "tasks:write"]), &admin).await?;
//! keys.disable(summary.id, &admin).await?;
//! let err = keys.authenticate(key.expose_secret(), &Requirement::none(), None).await.unwrap_err();
//! assert_eq!(err.code(), "DISABLED_API_KEY");
//! keys.enable(summary.id, &admin).await?;
//!
//! // Rotate with a one-day grace period: both keys work until it ends.
//! let (new_key, _) = keys.rotate(summary.id, Rotation::with_grace(Duration::days(1)), &admin).await?;
//! clock.advance(Duration::days(1));
//! let err = keys.authenticate(key.expose_secret(), &Requirement::none(), None).await.unwrap_err();
//! assert_eq!(err.code(), "EXPIRED_API_KEY");
//! keys.authenticate(new_key.expose_secret(), &Requirement::scope("tasks:write")?, None).await?;
//!
//! // Revoke every key of a user who left; flush usage before exit.
//! keys.revoke_owner("user_42", "left the organisation", &admin).await?;
//! keys.shutdown().await?;
//! assert!(audit.events().iter().any(|e| e.kind.as_str() == "rotated"));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::audit::{Actor, AuditEvent, AuditKind, AuditSink, NoAudit, RejectionSampler};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result, StoreError, StoreErrorKind};
use crate::ipnet::IpNet;
use crate::key::KeyDigest;
use crate::key::{ApiKey, KeyId};
use crate::key::{Environment, Prefix};
use crate::limits::{Limits, NoLimits};
use crate::manage::hygiene::{HygieneOptions, HygieneReport};
use crate::record::{KeyRecord, KeyStatus, LegacyInfo, NewKey, Revocation};
use crate::scope::Requirement;
use crate::store::{KeyStoreLifecycle, LimitedInsert, LimitedUpdate, UsageStore};
use crate::usage::UsageRecorder;
use crate::verifier::{VerifiedKey, Verifier};
use crate::verify::authenticator::{Auditor, Authenticator};
use crate::verify::policy::KeyPolicies;

/// How often a read-modify-write is retried when the record changed
/// concurrently.
const MAX_RETRIES: usize = 8;
/// How often a write whose answer was lost (a timeout, a dropped
/// connection) is sent again to learn whether it committed.
const RESENDS: usize = 2;
/// The default of [`KeyManager::with_max_grace`]: 7 days.
pub const DEFAULT_MAX_GRACE: Duration = Duration::days(7);
pub use crate::verify::legacy::{MAX_LEGACY_KEY_LEN, MAX_LEGACY_PREFIX_LEN};
/// The default of [`KeyManager::with_derivation_limits`]: chains of at
/// most 2 derived keys below a key, at most 100 live children per parent.
pub const DEFAULT_DERIVATION_LIMITS: (u8, u32) = (2, 100);
/// The metadata entry (`"true"`) on a key born disabled because a
/// [`KeyPolicy`](crate::KeyPolicy) requires approval;
/// [`KeyManager::enable`] removes it.
pub const PENDING_APPROVAL: &str = "apikey.pending_approval";

/// Refuses the reserved parent link in caller-given metadata: only
/// [`KeyManager::derive`] sets it.
fn reserved_parent(metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.contains_key(crate::verify::derived::PARENT) {
        return Err(Error::InvalidInput(format!(
            "the metadata entry `{}` is reserved for derived keys",
            crate::verify::derived::PARENT
        )));
    }
    Ok(())
}

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
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last successful use, as of the last usage flush.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// Expiry (exclusive).
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
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
    /// Successful verifications today (UTC), as of the last flush.
    pub requests_today: u64,
    /// Successful verifications this month (UTC), as of the last flush.
    pub requests_this_month: u64,
    /// Whether the key was imported from another system.
    pub legacy: bool,
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
    /// The summary of `record` at `now`.
    pub fn from_record(record: &KeyRecord, now: OffsetDateTime) -> Self {
        // Never panics: a `now` whose UTC date does not exist (an extreme
        // offset) counts no usage today.
        let today = now
            .checked_to_offset(time::UtcOffset::UTC)
            .map_or(time::Date::MIN, OffsetDateTime::date);
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
            expires_at: record.expires_at,
            not_before: record.not_before,
            revocation: record.revocation.clone(),
            metadata: record.metadata.clone(),
            ip_allowlist: record.ip_allowlist.clone(),
            rotated_from: record.rotated_from,
            rotated_to: record.rotated_to,
            requests_today: record.usage.today(today),
            requests_this_month: record.usage.this_month(today),
            legacy: record.legacy.is_some(),
        }
    }
}

/// A partial update (PATCH semantics): only the fields set are changed.
///
/// ```
/// use apikey::KeyUpdate;
/// let patch = KeyUpdate::new().name("CI (rotated)").scopes(["tasks:read"]).expires_at(None);
/// # let _ = patch;
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct KeyUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New scopes (validated).
    pub scopes: Option<Vec<String>>,
    /// New expiry (`Some(None)`: never expires). Must be in the future.
    pub expires_at: Option<Option<OffsetDateTime>>,
    /// New metadata (replaces the whole map).
    pub metadata: Option<BTreeMap<String, String>>,
    /// New IP allowlist (empty: anywhere).
    pub ip_allowlist: Option<Vec<IpNet>>,
}

impl KeyUpdate {
    /// An update that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Sets or clears the description.
    pub fn description(mut self, description: Option<String>) -> Self {
        self.description = Some(description);
        self
    }
    /// Replaces the scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }
    /// Sets (extends or shortens) or clears the expiry.
    pub fn expires_at(mut self, at: Option<OffsetDateTime>) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Replaces the metadata.
    pub fn metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = Some(metadata);
        self
    }
    /// Replaces the IP allowlist.
    pub fn ip_allowlist(mut self, list: Vec<IpNet>) -> Self {
        self.ip_allowlist = Some(list);
        self
    }
}

/// How to rotate a key.
///
/// ```
/// use apikey::Rotation;
/// let r = Rotation::with_grace(time::Duration::hours(24));
/// # let _ = r;
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct Rotation {
    /// How long the old key keeps working (zero: it stops now). Never
    /// extends past the old key's own expiry.
    pub grace: Duration,
    /// Expiry of the new key; defaults to none.
    pub expires_at: Option<OffsetDateTime>,
}

impl Rotation {
    /// A rotation whose old key works for `grace` more.
    pub fn with_grace(grace: Duration) -> Self {
        Self {
            grace,
            expires_at: None,
        }
    }

    /// Sets the new key's expiry.
    pub fn expires_at(mut self, at: OffsetDateTime) -> Self {
        self.expires_at = Some(at);
        self
    }
}

enum LegacySecret {
    Plaintext(Zeroizing<String>),
    Sha256 {
        prefix: String,
        digest: Zeroizing<[u8; 32]>,
    },
}

/// A key from another system to import (see [`KeyManager::import`]).
///
/// ```
/// use apikey::ImportKey;
/// let plain = ImportKey::plaintext("oldco_3f9a8b7c6d5e4f30").owner("user_1").scopes(["read"]);
/// let hashed = ImportKey::sha256("oldco_", [0u8; 32]).owner("user_2");
/// assert!(!format!("{plain:?}").contains("3f9a8b"));
/// # let _ = hashed;
/// ```
pub struct ImportKey {
    secret: LegacySecret,
    new: NewKey,
}

impl fmt::Debug for ImportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let form = match &self.secret {
            LegacySecret::Plaintext(_) => "plaintext",
            LegacySecret::Sha256 { .. } => "sha256",
        };
        f.debug_struct("ImportKey")
            .field("form", &form)
            .field("owner", &self.new.owner)
            .field("name", &self.new.name)
            .finish_non_exhaustive()
    }
}

impl ImportKey {
    /// A legacy key given in full. It must start with a declared legacy
    /// prefix ([`KeyManager::with_legacy_prefix`]).
    pub fn plaintext(key: impl Into<String>) -> Self {
        Self {
            secret: LegacySecret::Plaintext(Zeroizing::new(key.into())),
            new: NewKey::default(),
        }
    }

    /// A legacy key known only by the SHA-256 digest of its full text, under
    /// the declared legacy prefix `prefix`.
    pub fn sha256(prefix: impl Into<String>, digest: [u8; 32]) -> Self {
        Self {
            secret: LegacySecret::Sha256 {
                prefix: prefix.into(),
                digest: Zeroizing::new(digest),
            },
            new: NewKey::default(),
        }
    }

    /// Sets the owner.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.new = self.new.owner(owner);
        self
    }
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.new = self.new.name(name);
        self
    }
    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.new = self.new.description(description);
        self
    }
    /// Sets the scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.new = self.new.scopes(scopes);
        self
    }
    /// Sets the expiry.
    pub fn expires_at(mut self, at: OffsetDateTime) -> Self {
        self.new = self.new.expires_at(at);
        self
    }
    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.new = self.new.metadata(key, value);
        self
    }
    /// Adds an IP allowlist range.
    pub fn allow_ip(mut self, net: IpNet) -> Self {
        self.new = self.new.allow_ip(net);
        self
    }
}

/// Key lifecycle and account policy over any store.
///
/// ```
/// use apikey::*;
/// use std::sync::Arc;
/// use time::{Duration, macros::datetime};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[5; 32])?)?);
/// let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
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
/// let (new_key, _) = manager.rotate(summary.id, Rotation::with_grace(Duration::hours(1)), &admin).await?;
/// clock.advance(Duration::hours(1));
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

impl<S: KeyStoreLifecycle + UsageStore + 'static> KeyManager<S, SystemClock> {
    /// A manager reading the system clock.
    pub fn new(verifier: Verifier, store: S) -> Self {
        Self::with_clock(verifier, store, SystemClock)
    }
}

impl<S: KeyStoreLifecycle + UsageStore + 'static, C: Clock> KeyManager<S, C> {
    /// A manager reading `clock`. No owner limit, no audit sink, rotation
    /// grace at most [`DEFAULT_MAX_GRACE`], usage counted in memory (flush
    /// it with [`flush`](Self::flush), off the request path), rejection
    /// summaries at most every 60 s.
    pub fn with_clock(verifier: Verifier, store: S, clock: C) -> Self {
        let store = Arc::new(store);
        let usage = Arc::new(UsageRecorder::new(Duration::seconds(60)));
        let mut auth = Authenticator::read_only_with_clock(verifier, Arc::clone(&store), clock)
            .with_usage(Arc::clone(&usage));
        auth.set_upgrader(store);
        Self {
            auth,
            usage,
            max_per_owner: None,
            max_grace: DEFAULT_MAX_GRACE,
            derivation: DEFAULT_DERIVATION_LIMITS,
            policies: (KeyPolicies::new(), None),
            audit: Arc::new(NoAudit),
            audit_enabled: false,
            sample_interval: Duration::seconds(60),
        }
    }
}

impl<S: KeyStoreLifecycle + UsageStore, C: Clock, L: Limits> KeyManager<S, C, L> {
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
    pub fn with_monitor(mut self, monitor: Arc<crate::manage::Monitor>) -> Self {
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
    /// [`MAX_DERIVATION_DEPTH`](crate::MAX_DERIVATION_DEPTH); 0 forbids
    /// deriving), and at most `max_children` live (not revoked, not
    /// expired) children per parent. Defaults to
    /// [`DEFAULT_DERIVATION_LIMITS`].
    pub fn with_derivation_limits(mut self, max_depth: u8, max_children: u32) -> Self {
        self.derivation = (max_depth.min(crate::MAX_DERIVATION_DEPTH), max_children);
        self
    }

    /// Enforces the issuance `policies` (see [`KeyPolicies`]): planned on
    /// [`create`](Self::create), [`update`](Self::update),
    /// [`rotate`](Self::rotate) and [`import`](Self::import) (a key that
    /// would not comply is refused with [`Error::PolicyViolation`], before
    /// the one store write that also checks the owner limit), and checked
    /// at every verification through this manager's verifier (see
    /// [`Verifier::with_key_policies`]). To tighten or loosen a policy,
    /// build the manager again over the same store: keys are never revoked
    /// for it. Defaults to none.
    ///
    /// ```
    /// use apikey::*;
    /// use time::{Duration, macros::datetime};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
    /// let store = std::sync::Arc::new(MemoryStore::new());
    /// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
    /// let admin = Actor::new("admin");
    /// let open = KeyManager::with_clock(verifier.clone(), store.clone(), clock.clone());
    /// let (old_key, _) = open.create(NewKey::new("sk_live_"), &admin).await?; // never expires
    ///
    /// let keys = KeyManager::with_clock(verifier, store, clock.clone()).with_key_policies(
    ///     KeyPolicies::new().rule(PolicyRule::new(
    ///         PolicyTarget::Prefix("sk_live_".into()),
    ///         KeyPolicy::new().default_lifetime(Duration::days(90)).max_lifetime(Duration::days(366)),
    ///     )),
    /// );
    /// let (_, s) = keys.create(NewKey::new("sk_live_"), &admin).await?;
    /// assert_eq!(s.expires_at, Some(clock.now() + Duration::days(90)));
    /// let too_long = NewKey::new("sk_live_").expires_at(clock.now() + Duration::days(400));
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
    /// to [`DEFAULT_MAX_GRACE`] (7 days). Keys in their grace period still
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

    /// The clock's reading, checked against the
    /// [supported range](crate::MIN_TIME).
    pub(super) fn now(&self) -> Result<OffsetDateTime> {
        crate::clock::check_time(self.auth.clock().now())
    }

    pub(super) fn emit(&self, event: AuditEvent) {
        self.audit.record(&event);
    }

    pub(super) fn event(
        &self,
        now: OffsetDateTime,
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
    /// and marked [`PENDING_APPROVAL`]; the result must comply with every
    /// applicable policy. The one place create, rotate and import plan a
    /// new record.
    pub(super) fn issue_planned(
        &self,
        mut new: NewKey,
        now: OffsetDateTime,
        approval: bool,
    ) -> Result<(ApiKey, KeyRecord)> {
        if crate::key::is_publishable(&new.prefix) {
            if self.policies.1.is_none() {
                return Err(Error::InvalidState(
                    "publishable keys need the public scopes (KeyManager::with_public_scopes)",
                ));
            }
            crate::web::publishable::validate_origins(
                new.metadata
                    .get(crate::web::publishable::ALLOWED_ORIGINS)
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
            new.expires_at = Some(now.saturating_add(life).min(crate::clock::MAX_TIME));
        }
        let pending = approval && p.requires_approval(&new.prefix, owner);
        let (key, mut record) = self.auth.verifier().issue(new, now)?;
        if pending {
            record.status = KeyStatus::Disabled;
            record
                .metadata
                .insert(PENDING_APPROVAL.to_owned(), "true".to_owned());
        }
        p.check(&record, now)?;
        Ok((key, record))
    }

    /// Checks a changed record against the issuance policies.
    pub(super) fn check_policies(&self, record: &KeyRecord, now: OffsetDateTime) -> Result<()> {
        match self.policies() {
            Some(p) => p.check(record, now),
            None => Ok(()),
        }
    }

    // ----- create, read -----

    /// Creates a key; returns the full key (show it once) and its summary.
    ///
    /// # Errors
    /// [`Error::KeyLimitReached`] when the owner already has the maximum of
    /// active keys; the errors of [`Verifier::issue`] (prefix, scopes,
    /// validity window); [`Error::StoreUnavailable`] when the store fails
    /// and the outcome could not be learned (see
    /// [What a timeout means](Self#what-a-timeout-means): a create whose
    /// commit outlived its deadline answers success).
    pub async fn create(&self, new: NewKey, actor: &Actor) -> Result<(ApiKey, KeySummary)> {
        reserved_parent(&new.metadata)?;
        let now = self.now()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (key, record) = self.issue_planned(new.clone(), now, true)?;
            match self.insert_resolved(&record, now).await {
                Err(e) if e.kind() == StoreErrorKind::IdCollision && attempt < 3 => continue,
                Err(e) => return Err(e.into()),
                Ok(LimitedInsert::LimitReached { .. }) => {
                    return Err(Error::KeyLimitReached {
                        limit: self.max_per_owner.unwrap_or(0),
                    });
                }
                Ok(_) => {
                    self.emit(self.event(now, AuditKind::Created, &record, actor));
                    return Ok((key, KeySummary::from_record(&record, now)));
                }
            }
        }
    }

    async fn insert(
        &self,
        record: KeyRecord,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        match (self.max_per_owner, record.owner.is_some()) {
            (Some(max), true) => self.auth.store().insert_limited(record, max, now).await,
            _ => self
                .auth
                .store()
                .insert(record)
                .await
                .map(|()| LimitedInsert::Inserted),
        }
    }

    /// [`insert`](Self::insert) with its outcome resolved when the answer
    /// was lost ([`outcome_unknown`]: the write may have committed). The
    /// same record is sent again, which the database orders after the lost
    /// write (the re-sent one waits for its locks: the id's index entry, the
    /// owner lock, SQLite's write lock); when the re-sent write is refused
    /// (`IdCollision`, or the owner limit counting the lost write) and the
    /// stored record is this one, the lost write committed: inserted. At
    /// most [`RESENDS`] times; then the last error (outcome unknown).
    pub(super) async fn insert_resolved(
        &self,
        record: &KeyRecord,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        let mut answer = self.insert(record.clone(), now).await;
        for _ in 0..RESENDS {
            match &answer {
                Err(e) if outcome_unknown(e) => {}
                _ => break,
            }
            answer = match self.insert(record.clone(), now).await {
                Err(e) if e.kind() == StoreErrorKind::IdCollision => {
                    self.landed(record).await.and_then(|ours| {
                        if ours {
                            Ok(LimitedInsert::Inserted)
                        } else {
                            Err(e)
                        }
                    })
                }
                Ok(LimitedInsert::LimitReached { active }) => {
                    self.landed(record).await.map(|ours| {
                        if ours {
                            LimitedInsert::Inserted
                        } else {
                            LimitedInsert::LimitReached { active }
                        }
                    })
                }
                other => other,
            };
        }
        answer
    }

    /// [`KeyStoreLifecycle::rotate`] with its outcome resolved as in
    /// [`insert_resolved`](Self::insert_resolved): the same rotation, sent
    /// again, is refused (`Conflict`: the predecessor's revision moved, or
    /// `IdCollision`) once the lost one committed, and then the stored
    /// successor is this one.
    async fn rotate_resolved(
        &self,
        predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        let store = self.auth.store();
        let mut answer = store
            .rotate(predecessor.clone(), expected, successor.clone())
            .await;
        for _ in 0..RESENDS {
            match &answer {
                Err(e) if outcome_unknown(e) => {}
                _ => break,
            }
            answer = match store
                .rotate(predecessor.clone(), expected, successor.clone())
                .await
            {
                Err(e)
                    if matches!(
                        e.kind(),
                        StoreErrorKind::Conflict | StoreErrorKind::IdCollision
                    ) =>
                {
                    match store.get(successor.id).await {
                        Ok(Some(stored)) if same_key(&stored, &successor) => {
                            Ok((predecessor.clone(), stored))
                        }
                        Ok(_) => Err(e),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
        }
        answer
    }

    /// Whether `ours` is stored (after a write whose answer was lost).
    async fn landed(&self, ours: &KeyRecord) -> Result<bool, StoreError> {
        let stored = self.auth.store().get(ours.id).await?;
        Ok(stored.is_some_and(|s| same_key(&s, ours)))
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
        let now = self.now()?;
        let r = self.record(id).await?;
        Ok(KeySummary::from_record(&r, now))
    }

    pub(super) async fn records_of(&self, owner: &str) -> Result<Vec<KeyRecord>> {
        self.auth
            .store()
            .list_by_owner(owner)
            .await
            .map_err(Error::from)
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
        let now = self.now()?;
        let records = self.records_of(owner).await?;
        Ok(records
            .iter()
            .map(|r| KeySummary::from_record(r, now))
            .collect())
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
        let now = self.now()?;
        let records = self
            .auth
            .store()
            .list_expiring(owner, now..now.saturating_add(within))
            .await
            .map_err(Error::from)?;
        Ok(records
            .iter()
            .filter(|r| r.rotated_to.is_none())
            .map(|r| KeySummary::from_record(r, now))
            .collect())
    }

    /// The [hygiene report](crate::manage::hygiene) over `owner`'s keys:
    /// no expiry, unused, wildcard scopes, no IP allowlist, expiring soon,
    /// not compliant with the issuance policies in force.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub async fn hygiene(&self, owner: &str, options: &HygieneOptions) -> Result<HygieneReport> {
        let now = self.now()?;
        let records = self.records_of(owner).await?;
        let none = KeyPolicies::new();
        let policies = self.policies().unwrap_or(&none);
        Ok(HygieneReport::of_records(&records, policies, now, options))
    }

    // ----- changes to one key -----

    /// Reads key `id`, lets `change` compute the new record (`None`: nothing
    /// to do), and writes it conditionally, retrying when the record changed
    /// in between. Returns (before, after-if-written).
    ///
    /// With an owner limit, every write goes through
    /// [`KeyStoreLifecycle::update_limited`]: a write that would make the
    /// key count toward the limit again (an expiry cleared or extended on
    /// an expired key) is refused with [`Error::KeyLimitReached`] when the
    /// owner is at the limit, atomically with the write.
    pub(super) async fn modify<F>(
        &self,
        id: KeyId,
        now: OffsetDateTime,
        mut change: F,
    ) -> Result<(KeyRecord, Option<KeyRecord>)>
    where
        F: FnMut(&KeyRecord) -> Result<Option<KeyRecord>>,
    {
        for _ in 0..MAX_RETRIES {
            let current = self.record(id).await?;
            let Some(next) = change(&current)? else {
                return Ok((current, None));
            };
            let written = match self.max_per_owner {
                Some(max) if next.owner.is_some() => {
                    match self
                        .auth
                        .store()
                        .update_limited(next, current.revision, max, now)
                        .await
                    {
                        Ok(LimitedUpdate::Updated(stored)) => Ok(stored),
                        Ok(LimitedUpdate::LimitReached { .. }) => {
                            return Err(Error::KeyLimitReached { limit: max });
                        }
                        Err(e) => Err(e),
                    }
                }
                _ => self.auth.store().update_if(next, current.revision).await,
            };
            match written {
                Ok(stored) => return Ok((current, Some(stored))),
                Err(e) if e.kind() == StoreErrorKind::Conflict => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::StoreUnavailable(StoreError::new(
            StoreErrorKind::Conflict,
        )))
    }

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
    /// not-before; [`Error::StoreUnavailable`].
    pub async fn update(&self, id: KeyId, update: KeyUpdate, actor: &Actor) -> Result<KeySummary> {
        let now = self.now()?;
        if let Some(Some(e)) = update.expires_at {
            crate::clock::check_time(e)?;
        }
        let scopes = update
            .scopes
            .as_ref()
            .map(crate::scope::ScopeSet::parse)
            .transpose()?;
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
                if let Some(exp) = update.expires_at {
                    let exp = exp.map(crate::clock::check_time).transpose()?;
                    if exp != cur.expires_at {
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
                }
                if let Some(m) = &update.metadata {
                    // A derived key's parent link is the crate's, not the
                    // caller's: kept as it is.
                    let mut m = m.clone();
                    m.remove(crate::verify::derived::PARENT);
                    if let Some(p) = cur.metadata.get(crate::verify::derived::PARENT) {
                        m.insert(crate::verify::derived::PARENT.to_owned(), p.clone());
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
                // A change of what policies govern must leave a compliant
                // key; a rename or a note on a non-compliant key is allowed.
                if fields.iter().any(|f| matches!(*f, "scopes" | "expires_at")) {
                    self.check_policies(&next, now)?;
                }
                if next.is_publishable() && fields.contains(&"metadata") {
                    crate::web::publishable::validate_origins(
                        next.metadata
                            .get(crate::web::publishable::ALLOWED_ORIGINS)
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

    async fn set_status(&self, id: KeyId, to: KeyStatus, actor: &Actor) -> Result<KeySummary> {
        let now = self.now()?;
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
                        next.metadata.remove(PENDING_APPROVAL);
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
        let now = self.now()?;
        let record = self.revoke_one(id, reason, actor).await?;
        // Verification refuses derived keys from their parent's revocation
        // on; revoking them too makes it permanent.
        self.revoke_children(&record, actor).await?;
        Ok(KeySummary::from_record(&record, now))
    }

    /// [`revoke`](Self::revoke) without the derived keys.
    pub(super) async fn revoke_one(
        &self,
        id: KeyId,
        reason: &str,
        actor: &Actor,
    ) -> Result<KeyRecord> {
        let now = self.now()?;
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

    /// Deletes a key's record. The rotation links of its predecessor and
    /// successor are cleared.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`], [`Error::StoreUnavailable`].
    pub async fn delete(&self, id: KeyId, actor: &Actor) -> Result<()> {
        let now = self.now()?;
        let record = self.record(id).await?;
        if !self.auth.store().delete(id).await.map_err(Error::from)? {
            return Err(Error::KeyNotFound);
        }
        self.emit(self.event(now, AuditKind::Deleted, &record, actor));
        Ok(())
    }

    // ----- bulk -----

    fn revoked_events(
        &self,
        ids: &[KeyId],
        owner: Option<&str>,
        reason: &str,
        actor: &Actor,
        now: OffsetDateTime,
    ) {
        for id in ids {
            let mut ev = AuditEvent::new(now, AuditKind::Revoked)
                .key(*id, owner)
                .by(actor);
            ev.reason = Some(reason.to_owned());
            self.emit(ev);
        }
    }

    /// Revokes every key of `owner` in one atomic call (a user removed from
    /// an account). Returns the ids revoked (keys revoked before are left
    /// as they were).
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] (then nothing was revoked).
    pub async fn revoke_owner(
        &self,
        owner: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<Vec<KeyId>> {
        let now = self.now()?;
        let ids = self
            .auth
            .store()
            .revoke_owner(
                owner,
                Revocation {
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
    /// database or server secret. Returns the ids revoked.
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`] for a malformed prefix;
    /// [`Error::StoreUnavailable`] (then nothing was revoked).
    pub async fn revoke_created_between(
        &self,
        prefix: &str,
        created: Range<OffsetDateTime>,
        reason: &str,
        actor: &Actor,
    ) -> Result<Vec<KeyId>> {
        let now = self.now()?;
        let prefix = Prefix::new(prefix)?;
        crate::clock::check_time(created.start)?;
        crate::clock::check_time(created.end)?;
        let ids = self
            .auth
            .store()
            .revoke_matching(
                &prefix,
                created,
                Revocation {
                    at: now,
                    reason: reason.to_owned(),
                },
            )
            .await
            .map_err(Error::from)?;
        self.revoked_events(&ids, None, reason, actor, now);
        Ok(ids)
    }

    // ----- rotate -----

    /// Issues a successor with the same prefix, owner, name, description,
    /// scopes, metadata and IP allowlist; the old key keeps working for the
    /// grace period (never past its own expiry; zero: it stops now), then
    /// fails as expired. The records point at each other
    /// (`rotated_to` / `rotated_from`). A key in its grace period does not
    /// count toward the owner limit, so rotating at the limit works. The
    /// grace is at most [`with_max_grace`](Self::with_max_grace) (7 days by default).
    /// Rotating a key whose own predecessor is still in its grace period
    /// ends that grace now, in the same atomic store write
    /// ([`KeyStoreLifecycle::rotate`]): a rotation chain has at most two
    /// working keys at any time, however often it is rotated.
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
        if rotation.grace.is_negative() {
            return Err(Error::InvalidInput(
                "the grace period must not be negative".into(),
            ));
        }
        if rotation.grace > self.max_grace {
            return Err(Error::InvalidInput(
                "the grace period is longer than the configured maximum".into(),
            ));
        }
        let now = self.now()?;
        if let Some(e) = rotation.expires_at {
            crate::clock::check_time(e)?;
        }
        for _ in 0..MAX_RETRIES {
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
            // Never past the supported range (a record must stay in it).
            let grace_end = now
                .saturating_add(rotation.grace)
                .min(crate::clock::MAX_TIME);
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
            new.ip_allowlist = cur.ip_allowlist.clone();
            new.expires_at = rotation.expires_at;
            // A rotation replaces an approved key: no second approval.
            let (key, mut successor) = self.issue_planned(new, now, false)?;
            successor.rotated_from = Some(cur.id);
            let mut pred = cur.clone();
            pred.expires_at = Some(grace_end);
            pred.rotated_to = Some(successor.id);
            match self.rotate_resolved(pred, cur.revision, successor).await {
                Ok((pred, succ)) => {
                    self.emit(self.event(
                        now,
                        AuditKind::Rotated {
                            successor: succ.id,
                            grace_ends: grace_end,
                        },
                        &pred,
                        actor,
                    ));
                    return Ok((key, KeySummary::from_record(&succ, now)));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        StoreErrorKind::Conflict | StoreErrorKind::IdCollision
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::StoreUnavailable(StoreError::new(
            StoreErrorKind::Conflict,
        )))
    }

    // ----- import -----

    /// Imports a key from another system so its users keep it: a full key,
    /// or the SHA-256 digest of one. The key must be under a declared legacy
    /// prefix ([`with_legacy_prefix`](Self::with_legacy_prefix)). It is found on
    /// verification through the legacy index (a keyed hash of the whole
    /// key) and upgraded to the current keyed digest on its first successful
    /// verification. The owner limit applies.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the key is not under a declared legacy
    /// prefix or too long; [`Error::InvalidState`] when it was imported
    /// already; [`Error::KeyLimitReached`]; the errors of
    /// [`Verifier::issue`] for the other fields; [`Error::StoreUnavailable`].
    pub async fn import(&self, import: ImportKey, actor: &Actor) -> Result<KeySummary> {
        let now = self.now()?;
        let keyring = self.auth.verifier().keyring();
        let version = keyring.current_version();
        let (legacy, sha, digest) = match &import.secret {
            LegacySecret::Plaintext(text) => {
                if text.len() > MAX_LEGACY_KEY_LEN {
                    return Err(Error::InvalidInput("legacy key too long".into()));
                }
                let legacy = self
                    .auth
                    .legacy_prefix_of(text)
                    .filter(|l| text.len() > l.legacy.len())
                    .ok_or_else(|| {
                        Error::InvalidInput("the key is not under a declared legacy prefix".into())
                    })?;
                let sha: Zeroizing<[u8; 32]> =
                    Zeroizing::new(Sha256::digest(text.as_bytes()).into());
                (legacy, sha, keyring.legacy_digest(version, text))
            }
            LegacySecret::Sha256 { prefix, digest } => {
                let legacy = self
                    .auth
                    .legacy_prefix_named(prefix)
                    .ok_or_else(|| Error::InvalidInput("not a declared legacy prefix".into()))?;
                (legacy, digest.clone(), None)
            }
        };
        let index = keyring
            .legacy_index(version, &sha)
            .ok_or(Error::InvalidSecret(
                "the current secret version is missing",
            ))?;
        let mut new = import.new.clone();
        reserved_parent(&new.metadata)?;
        new.prefix = legacy.native.prefix.as_str().to_owned();
        for _ in 0..3 {
            let (_discarded, mut record) = self.issue_planned(new.clone(), now, true)?;
            record.digest = digest.unwrap_or(KeyDigest::from_bytes([0; 32]));
            record.legacy = Some(LegacyInfo::new(
                legacy.legacy.clone(),
                index,
                version,
                digest.is_some(),
            ));
            match self.insert_resolved(&record, now).await {
                Ok(LimitedInsert::LimitReached { .. }) => {
                    return Err(Error::KeyLimitReached {
                        limit: self.max_per_owner.unwrap_or(0),
                    });
                }
                Ok(_) => {
                    self.emit(self.event(now, AuditKind::Imported, &record, actor));
                    return Ok(KeySummary::from_record(&record, now));
                }
                Err(e) if e.kind() == StoreErrorKind::IdCollision => {
                    if self
                        .auth
                        .store()
                        .find_legacy(&index)
                        .await
                        .map_err(Error::from)?
                        .is_some()
                    {
                        return Err(Error::InvalidState("this key was imported already"));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::StoreUnavailable(StoreError::new(
            StoreErrorKind::IdCollision,
        )))
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
    /// Every outcome of [`Verifier::verify_with`], [`Error::IpNotAllowed`],
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
            .flush(self.auth.store(), self.now()?)
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
        let now = self.now()?;
        if let Some(a) = self.auth.auditor() {
            a.rejections.emit(now, &*a.sink);
        }
        self.flush().await.map(|_| ())
    }
}
