use std::sync::Arc;
use std::time::Duration;

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;

use super::policy::{KeyPolicies, Subject};
use crate::clock::Clock;
use crate::error::{Error, Reason, Result, Stage};
use crate::key::KeyDigest;
use crate::key::Keyring;
use crate::key::{self, ApiKey, KeyId, ParsedKey};
use crate::key::{Environment, Environments, PrefixRegistry};
use crate::record::{KeyRecord, KeyStatus, KeyView, NewKey};
use crate::record::{Requirement, Scope, ScopeSet};
use crate::timestamp::Timestamp;

/// The pure, synchronous verification core (and key issuing).
///
/// [`Verifier`] holds the server secrets, the registered prefixes and the
/// policy (leeway, accepted environments, full-access scopes). It does no
/// I/O and reads no clock: the caller fetches the record however it likes
/// and passes `now`. Fuzzers, benchmarks and blocking code call it directly;
/// the async [`Authenticator`](crate::Authenticator) wraps it around a store.
///
/// Order of checks: length, alphabet and prefix; checksum; version; forged-key
/// tag; (store lookup by id); HMAC-SHA256 digest; constant-time comparison;
/// status; not-before and expiry (with leeway); issuance policy (when
/// configured); environment; IP allowlist;
/// scopes. Checks before the lookup depend only on the public text (the tag
/// comparison is constant-time); an unknown id computes the HMAC like a wrong
/// secret does.
///
/// Issues and verifies keys. Cheap to clone.
///
/// ```
/// use apikey::{Keyring, NewKey, Requirement, ServerSecret, Verifier, KeyView};
/// use std::sync::Arc;
/// use time::macros::datetime;
///
/// let secret = ServerSecret::from_bytes(&[42u8; 32])?; // load yours from a secret manager
/// let verifier = Verifier::new(Keyring::new(1, secret)?);
/// let now = "2026-01-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap();
/// let (key, record) = verifier.issue(NewKey::new("sk_live_").scopes(["tasks:read"]), now)?;
///
/// // Later, with the record fetched by id from any store:
/// let parsed = verifier.parse(key.expose_secret())?;
/// assert_eq!(parsed.id(), record.id);
/// let view = Arc::new(KeyView::from_record(&record));
/// let ok = verifier.verify(&parsed, Some(view), &now, &Requirement::scope("tasks:read")?, None)?;
/// assert_eq!(ok.id(), record.id);
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Verifier {
    prefixes: PrefixRegistry,
    keyring: Keyring,
    leeway_micros: i64,
    environments: Environments,
    full_access: Vec<Scope>,
    /// `None` (the default) costs one branch per verification.
    policies: Option<Arc<KeyPolicies>>,
}

impl Verifier {
    /// A verifier with the built-in prefixes, both environments accepted, no
    /// leeway and no full-access scopes.
    pub fn new(keyring: Keyring) -> Self {
        Self {
            prefixes: PrefixRegistry::with_builtins(),
            keyring,
            leeway_micros: 0,
            environments: Environments::BOTH,
            full_access: Vec::new(),
            policies: None,
        }
    }

    /// Registers an application prefix.
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`] when it breaks a rule or is registered already.
    pub fn with_prefix(mut self, prefix: &str, environment: Environment) -> Result<Self> {
        self.prefixes.register(prefix, environment)?;
        Ok(self)
    }

    /// Replaces the whole prefix registry.
    pub fn with_prefixes(mut self, prefixes: PrefixRegistry) -> Self {
        self.prefixes = prefixes;
        self
    }

    /// Clock-skew allowance applied to `not_before` and `expires_at`.
    /// Defaults to zero.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway_micros = i64::try_from(leeway.as_micros()).unwrap_or(i64::MAX);
        self
    }

    /// Which environments are accepted. Defaults to both.
    pub fn with_environments(mut self, environments: Environments) -> Self {
        self.environments = environments;
        self
    }

    /// Declares a scope that grants everything (seed docs read `admin:*` so).
    ///
    /// # Errors
    /// [`Error::InvalidScope`] when malformed.
    pub fn with_full_access_scope(mut self, scope: &str) -> Result<Self> {
        self.full_access.push(Scope::parse(scope)?);
        Ok(self)
    }

    /// Refuses keys that do not comply with `policies` with
    /// [`Error::PolicyViolation`] (`POLICY_VIOLATION`, 403), after the
    /// status and validity checks: keys made before a policy tightened stop
    /// working without being revoked, and work again when it loosens.
    /// Defaults to no policies (and then no policy work at all); empty
    /// `policies` count as none. [`KeyManager::with_key_policies`](crate::KeyManager::with_key_policies)
    /// sets them on its verifier.
    pub fn with_key_policies(mut self, policies: KeyPolicies) -> Self {
        self.policies = (!policies.is_empty()).then(|| Arc::new(policies));
        self
    }

    /// The issuance policies checked at verification, if any.
    pub fn key_policies(&self) -> Option<&KeyPolicies> {
        self.policies.as_deref()
    }

    /// Which environments are accepted.
    pub fn environments(&self) -> Environments {
        self.environments
    }

    /// The registered prefixes.
    pub fn prefixes(&self) -> &PrefixRegistry {
        &self.prefixes
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The full-access scopes.
    pub fn full_access_scopes(&self) -> &[Scope] {
        &self.full_access
    }

    /// Issues a key: the key (show it once) and the record to store. The
    /// id and secret come from this thread's [`KeyRng`](crate::KeyRng), a
    /// ChaCha20 generator seeded from the OS, reseeded after a fork and
    /// every [`KeyRng::RESEED_EVERY`](crate::KeyRng::RESEED_EVERY) keys.
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`] for an unregistered prefix,
    /// [`Error::InvalidScope`] for a malformed scope, [`Error::InvalidInput`]
    /// for an empty or inverted validity window.
    pub fn issue(&self, new: NewKey, now: Timestamp) -> Result<(ApiKey, KeyRecord)> {
        self.issue_with_rng(new, now, &mut crate::KeyRng::new())
    }

    /// Like [`issue`](Self::issue), reading the operating system's random
    /// source for every key ([`OsRng`](crate::OsRng); slower: two system
    /// calls per key).
    ///
    /// # Errors
    /// As [`issue`](Self::issue).
    pub fn issue_with_os_rng(&self, new: NewKey, now: Timestamp) -> Result<(ApiKey, KeyRecord)> {
        self.issue_with_rng(new, now, &mut crate::OsRng)
    }

    /// Like [`issue`](Self::issue) with a caller-supplied CSPRNG (tests,
    /// fuzzing, deterministic fixtures): any [`rand_core`]
    /// 0.10 [`CryptoRng`].
    ///
    /// ```
    /// # use apikey::*;
    /// # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
    /// let (key, _record) = verifier.issue_with_rng(NewKey::new("sk_test_"), apikey::Timestamp::MIN, &mut OsRng)?;
    /// assert!(key.expose_secret().starts_with("sk_test_"));
    /// # Ok::<(), apikey::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`issue`](Self::issue).
    pub fn issue_with_rng<R: CryptoRng + ?Sized>(
        &self,
        new: NewKey,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<(ApiKey, KeyRecord)> {
        let (_, entry) = self
            .prefixes
            .find(&new.prefix)
            .ok_or_else(|| Error::InvalidPrefix {
                prefix: new.prefix.chars().take(32).collect(),
                reason: "not registered with this verifier",
            })?;
        let scopes = ScopeSet::parse(&new.scopes)?;
        let (expires_at, not_before) = (new.expires_at, new.not_before);
        if let Some(exp) = expires_at {
            if exp <= now {
                return Err(Error::InvalidInput(
                    "expires_at must be in the future".into(),
                ));
            }
            if not_before.is_some_and(|nb| exp <= nb) {
                return Err(Error::InvalidInput(
                    "expires_at must be after not_before".into(),
                ));
            }
        }
        let (key, digest) = key::generate(rng, entry.prefix.as_str(), &self.keyring)?;
        let record = KeyRecord {
            schema_version: KeyRecord::SCHEMA_VERSION,
            id: key.id(),
            prefix: entry.prefix.clone(),
            environment: entry.environment,
            owner: new.owner,
            name: new.name,
            description: new.description,
            secret_version: self.keyring.current_version(),
            digest,
            scopes,
            created_at: now,
            expires_at,
            not_before,
            status: KeyStatus::Active,
            revocation: None,
            last_used_at: None,
            last_used_ip: None,
            last_used_route: None,
            metadata: new.metadata,
            rotated_from: None,
            rotated_to: None,
            revision: 0,
            ip_allowlist: new.ip_allowlist,
            legacy: None,
        };
        Ok((key, record))
    }

    /// Runs every check that needs no store: length, alphabet, prefix,
    /// checksum, version and the forged-key tag. Never panics.
    ///
    /// # Errors
    /// [`Error::MissingApiKey`] for an empty string,
    /// [`Error::MalformedApiKey`] for a string that is not a key,
    /// [`Error::InvalidApiKey`] for a well-formed key this service never issued.
    #[inline]
    pub fn parse<'a>(&self, presented: &'a str) -> Result<ParsedKey<'a>> {
        if presented.is_empty() {
            return Err(Error::MissingApiKey);
        }
        key::parse(presented, &self.prefixes, &self.keyring)
    }

    /// Checks a parsed key against the record fetched by its id (`None` when
    /// the store has no such id), then the requirement, for a request from
    /// `ip` (`None`: the address is unknown).
    ///
    /// `clock` is read only when the record has a validity window (an
    /// expiry or a not-before): pass [`SystemClock`](crate::SystemClock),
    /// or a [`Timestamp`] for a fixed `now`. The address is checked against
    /// the key's IP allowlist after the environment and before the scopes
    /// (keys without an allowlist: a single branch); a key with an
    /// allowlist and an unknown address fails closed.
    ///
    /// ```
    /// # use apikey::*;
    /// # use std::sync::Arc;
    /// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
    /// let store = MemoryStore::new();
    /// let (key, record) = verifier.issue(NewKey::new("sk_live_").allow_ip("10.0.0.0/8".parse()?), SystemClock.now())?;
    /// store.insert_sync(record)?;
    /// let parsed = verifier.parse(key.expose_secret())?;
    /// let office = Some("10.1.2.3".parse().unwrap());
    /// let ok = verifier.verify(&parsed, store.fetch_sync(parsed.id())?, &SystemClock, &Requirement::none(), office)?;
    /// assert_eq!(ok.environment(), Environment::Live);
    /// let home = Some("192.0.2.7".parse().unwrap());
    /// let err = verifier.verify(&parsed, store.fetch_sync(parsed.id())?, &SystemClock, &Requirement::none(), home).unwrap_err();
    /// assert_eq!(err.code(), "IP_NOT_ALLOWED");
    /// # Ok::<(), apikey::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidApiKey`] (unknown id or wrong secret, one outcome),
    /// then, only once the secret matched: [`Error::RevokedApiKey`],
    /// [`Error::DisabledApiKey`], [`Error::NotYetValid`],
    /// [`Error::ExpiredApiKey`], [`Error::PolicyViolation`],
    /// [`Error::WrongEnvironment`], [`Error::IpNotAllowed`],
    /// [`Error::InsufficientScope`]. A derived key is refused
    /// ([`Error::InvalidApiKey`]): its parent is in the store, so verify it
    /// through an [`Authenticator`](crate::Authenticator).
    #[inline]
    pub fn verify<C: Clock + ?Sized>(
        &self,
        parsed: &ParsedKey<'_>,
        view: Option<Arc<KeyView>>,
        clock: &C,
        requirement: &Requirement,
        ip: Option<std::net::IpAddr>,
    ) -> Result<VerifiedKey> {
        self.verify_kept(parsed, view, clock, requirement, ip)
            .map_err(|r| r.error)
            .and_then(no_parent)
    }

    /// [`verify`](Self::verify), keeping the record of a key whose secret
    /// matched in the failure.
    #[inline]
    pub(crate) fn verify_kept<C: Clock + ?Sized>(
        &self,
        parsed: &ParsedKey<'_>,
        view: Option<Arc<KeyView>>,
        clock: &C,
        requirement: &Requirement,
        ip: Option<std::net::IpAddr>,
    ) -> std::result::Result<VerifiedKey, Failure> {
        let view = self.check_secret(parsed, view)?;
        self.policy(Some(parsed.environment()), view, clock, requirement, ip)
    }

    /// The digest of a parsed key under the keyring's current version, for
    /// re-hashing a record made under an older one. Returns the version too.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] when the current version is missing.
    pub fn rehash(&self, parsed: &ParsedKey<'_>) -> Result<(u8, KeyDigest)> {
        let v = self.keyring.current_version();
        let material = self.keyring.material(v).ok_or(Error::InvalidSecret(
            "the current secret version is missing",
        ))?;
        Ok((v, parsed.digest_with(material)))
    }

    /// Policy checks on a record whose secret was already checked some
    /// other way (imported legacy keys): status, validity window with
    /// leeway, environment, scopes. Same order and errors as
    /// [`verify`](Self::verify) after the digest comparison.
    /// The failure keeps `view` (the secret matched).
    pub(crate) fn verify_view(
        &self,
        view: Arc<KeyView>,
        now: Timestamp,
        requirement: &Requirement,
        ip: Option<std::net::IpAddr>,
    ) -> std::result::Result<VerifiedKey, Failure> {
        self.policy(None, view, &now, requirement, ip)
    }

    /// [`check_policy`](Self::check_policy) on a record whose secret
    /// matched: the key, or the failure with the record.
    #[inline]
    fn policy<C: Clock + ?Sized>(
        &self,
        key_env: Option<Environment>,
        view: Arc<KeyView>,
        clock: &C,
        requirement: &Requirement,
        ip: Option<std::net::IpAddr>,
    ) -> std::result::Result<VerifiedKey, Failure> {
        match self.check_policy(key_env, &view, clock, requirement, ip) {
            Ok(()) => Ok(VerifiedKey { view }),
            Err(error) => Err(Failure {
                id: Some(view.id),
                view: Some(view),
                ..Failure::from(error)
            }),
        }
    }

    /// Re-creates the key text from a parsed key (round-trip checks).
    pub(crate) fn compose(&self, parsed: &ParsedKey<'_>) -> Option<zeroize::Zeroizing<String>> {
        parsed.compose(&self.keyring)
    }

    /// HMAC and constant-time comparison. An unknown id, or a record whose
    /// secret version is gone, does the same HMAC work and fails the same way.
    #[inline]
    fn check_secret(
        &self,
        parsed: &ParsedKey<'_>,
        view: Option<Arc<KeyView>>,
    ) -> Result<Arc<KeyView>> {
        // Parsing proved the key's own version is present; it stands in when
        // there is no record (or its version is gone) so that every failure
        // costs the same HMAC.
        let key_material = self.keyring.material(parsed.version());
        let record_material = view
            .as_ref()
            .and_then(|v| self.keyring.material(v.secret_version));
        let expected = view
            .as_ref()
            .map_or(KeyDigest::from_bytes([0u8; 32]), |v| v.digest);
        let Some(material) = record_material.or(key_material) else {
            return Err(Error::InvalidApiKey);
        };
        let computed = parsed.digest_with(material);
        // A record whose secret version is not held never matches, even if
        // the digest under the fallback key happened to.
        let matched =
            computed.ct_eq(&expected) & subtle::Choice::from(u8::from(record_material.is_some()));
        match view {
            Some(v) if bool::from(matched) && v.id == parsed.id() => Ok(v),
            _ => Err(Error::InvalidApiKey),
        }
    }

    #[inline]
    /// Everything after the secret matched, in the documented order: status,
    /// validity window (with leeway), environment (`key_env` is the
    /// prefix's, when the key was parsed natively), address, scopes. The
    /// clock is read only when the record has a window.
    fn check_policy<C: Clock + ?Sized>(
        &self,
        key_env: Option<Environment>,
        view: &KeyView,
        clock: &C,
        requirement: &Requirement,
        ip: Option<std::net::IpAddr>,
    ) -> Result<()> {
        match view.status {
            KeyStatus::Active => {}
            KeyStatus::Disabled => return Err(Error::DisabledApiKey),
            KeyStatus::Revoked => return Err(Error::RevokedApiKey),
        }
        let mut now_read = None;
        if view.has_validity_window() {
            let now = clock.now();
            now_read = Some(now);
            let micros = now.as_unix_micros();
            if micros.saturating_add(self.leeway_micros) < view.not_before_micros() {
                return Err(Error::NotYetValid {
                    not_before: view.not_before().unwrap_or(Timestamp::MIN),
                });
            }
            if micros.saturating_sub(self.leeway_micros) >= view.expires_at {
                return Err(Error::ExpiredApiKey {
                    expired_at: view.expires_at().unwrap_or(Timestamp::MIN),
                });
            }
        }
        // A key without a validity window has no expiry: the lifetime
        // bound does not need the time (such a key never meets it).
        if let Some(p) = &self.policies {
            p.check_subject(&Subject::of_view(view), now_read)?;
        }
        // The digest covers the prefix, so the record's environment and the
        // prefix's agree for any key that got this far; check both anyway.
        let env = view.environment;
        if !self.environments.contains(env) || key_env.is_some_and(|k| k != env) {
            return Err(Error::WrongEnvironment { actual: env });
        }
        if !view.allows_ip(ip) {
            return Err(Error::IpNotAllowed);
        }
        requirement.check(&view.scopes, &self.full_access)
    }
}

/// The pure verifier cannot see a derived key's parent: it refuses the key
/// (see [`MAX_DERIVATION_DEPTH`](crate::Derivation::MAX_DEPTH)).
#[inline]
fn no_parent(v: VerifiedKey) -> Result<VerifiedKey> {
    match super::derived::parent_of_view(&v.view) {
        None => Ok(v),
        Some(_) => Err(Error::PolicyViolation {
            rule: "a derived key is verified by the Authenticator, which checks its parent",
        }),
    }
}

/// A failed verification and what the pipeline learned on the way, so no
/// later step parses the key or classifies the error again:
///
/// * `error`: what the client is told;
/// * `stage`: where it failed;
/// * `reason`: why, once ([`Reason`]: the wire code, the failure
///   throttle's class and the audit sampler's slot are all read from it);
/// * `id`: the parsed key id, where parsing got that far;
/// * `view`: the record the key was checked against, once its secret
///   matched (`None` for a key that was malformed, forged, unknown or had
///   the wrong secret): its metadata names the key's plan, which the
///   [`Gate`](crate::web::Gate) charges for a failure of an authenticated
///   key against the request (scope, address, environment, origin).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) stage: Stage,
    pub(crate) reason: Reason,
    pub(crate) id: Option<KeyId>,
    pub(crate) view: Option<Arc<KeyView>>,
}

impl Failure {
    /// `error`, at `stage`, classified once.
    #[inline]
    pub(crate) fn at(stage: Stage, error: Error) -> Self {
        Self {
            reason: Reason::of(&error, stage),
            error,
            stage,
            id: None,
            view: None,
        }
    }

    /// The failure of the key `id` (parsed, or read from its record).
    #[inline]
    pub(crate) fn of_key(mut self, id: KeyId) -> Self {
        self.id = Some(id);
        self
    }

    /// A reason the error alone does not tell (an unknown legacy key).
    #[inline]
    pub(crate) fn because(mut self, reason: Reason) -> Self {
        debug_assert_eq!(reason.code(), self.error.code());
        self.reason = reason;
        self
    }

    /// The record's metadata, where the record was read and the secret
    /// matched (the plan).
    pub(crate) fn metadata(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        debug_assert!(
            self.view.is_none() || matches!(self.stage, Stage::Verify | Stage::Request),
            "a record is kept only from the record's checks on"
        );
        self.view.as_deref().map(KeyView::metadata)
    }
}

/// Inside the verifier every failure is one of the record's checks.
impl From<Error> for Failure {
    #[inline]
    fn from(error: Error) -> Self {
        Self::at(Stage::Verify, error)
    }
}
/// A key that passed verification: what the handler needs to know.
///
/// ```
/// # use apikey::*;
/// # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
/// # let store = MemoryStore::new();
/// # let now = apikey::Timestamp::MIN;
/// let (key, record) = verifier.issue(NewKey::new("kwi_sk_").owner("org_7").scopes(["read"]), now)?;
/// store.insert_sync(record)?;
/// let parsed = verifier.parse(key.expose_secret())?;
/// let ok = verifier.verify(&parsed, store.fetch_sync(parsed.id())?, &now, &Requirement::none(), None)?;
/// assert_eq!(ok.owner(), Some("org_7"));
/// assert!(ok.scopes().grants(&Scope::parse("read")?));
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct VerifiedKey {
    view: Arc<KeyView>,
}

impl VerifiedKey {
    /// The key id.
    pub fn id(&self) -> KeyId {
        self.view.id
    }
    /// The owner, if any.
    pub fn owner(&self) -> Option<&str> {
        self.view.owner()
    }
    /// The granted scopes.
    pub fn scopes(&self) -> &ScopeSet {
        &self.view.scopes
    }
    /// The environment.
    pub fn environment(&self) -> Environment {
        self.view.environment
    }
    /// The metadata.
    pub fn metadata(&self) -> &std::collections::BTreeMap<String, String> {
        self.view.metadata()
    }
    /// The key whose rate-limit windows and key credit balance this key
    /// uses ([`KeyRecord::limits_account`](crate::KeyRecord::limits_account)):
    /// its own id unless it is a rotated key's successor or a derived key
    /// without a budget. `None` when the record's entry is unreadable.
    pub fn limits_account(&self) -> Option<KeyId> {
        self.view.limits_account()
    }
    /// The whole view.
    pub fn view(&self) -> &Arc<KeyView> {
        &self.view
    }
    /// Whether the record's digest was made under an older secret version
    /// than the current one (see [`Verifier::rehash`]).
    pub fn needs_rehash(&self, verifier: &Verifier) -> bool {
        self.view.secret_version != verifier.keyring.current_version()
    }
}
