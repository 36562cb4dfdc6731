use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::Timestamp;

use crate::error::{Error, Result};
use crate::key::Environment;
use crate::record::ScopeSet;
use crate::record::{KeyRecord, KeyView};

/// Which keys a [`PolicyRule`] applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PolicyTarget {
    /// Every key.
    All,
    /// Keys with this prefix (`sk_live_`).
    Prefix(String),
    /// Publishable keys ([`Prefix::is_publishable`](crate::Prefix::is_publishable)).
    Publishable,
    /// Keys whose owner id starts with this text (an owner class such as
    /// `org_` or `user_`). Keys without owner are in no class.
    OwnerClass(String),
}

impl PolicyTarget {
    fn applies(&self, prefix: &str, owner: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(p) => p == prefix,
            Self::Publishable => crate::key::is_publishable(prefix),
            Self::OwnerClass(c) => owner.is_some_and(|o| o.starts_with(c.as_str())),
        }
    }
}

/// What one policy requires of a key. Every field defaults to "no rule".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KeyPolicy {
    /// Expiry given to a key created without one: `now + default_lifetime`.
    /// Defaults to none.
    #[serde(
        default,
        rename = "default_lifetime_secs",
        with = "secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_lifetime: Option<Duration>,
    /// Longest remaining validity a key may have at any time (see the
    /// [lifetime rule](KeyPolicies#the-lifetime-rule)); implies an expiry.
    /// Defaults to none.
    #[serde(
        default,
        rename = "max_lifetime_secs",
        with = "secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_lifetime: Option<Duration>,
    /// Whether every key must have an expiry. Defaults to `false`.
    #[serde(default)]
    pub expiry_required: bool,
    /// Scopes a key may hold at most: each of its scopes must be granted by
    /// one of these (`tasks:*` allows `tasks:read` and `tasks:*`, not `*`).
    /// Defaults to none (any scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_ceiling: Option<ScopeSet>,
    /// The environments a key may be in. Defaults to none (any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<Environment>>,
    /// Whether a new key is born disabled, pending an administrator's
    /// [`enable`](crate::KeyManager::enable). Defaults to `false`.
    #[serde(default)]
    pub requires_approval: bool,
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    // Only called for `Some` (`skip_serializing_if`).
    #[allow(clippy::ref_option)]
    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<i64>::deserialize(d)? {
            Some(n) if n > 0 => Ok(Some(Duration::from_secs(n.unsigned_abs()))),
            Some(_) => Err(serde::de::Error::custom("a lifetime must be positive")),
            None => Ok(None),
        }
    }
}

impl KeyPolicy {
    /// A policy with no rule.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the default lifetime.
    pub fn default_lifetime(mut self, d: Duration) -> Self {
        self.default_lifetime = Some(d);
        self
    }
    /// Sets the maximum lifetime.
    pub fn max_lifetime(mut self, d: Duration) -> Self {
        self.max_lifetime = Some(d);
        self
    }
    /// Requires an expiry.
    pub fn expiry_required(mut self, yes: bool) -> Self {
        self.expiry_required = yes;
        self
    }
    /// Sets the scope ceiling.
    ///
    /// # Errors
    /// [`Error::InvalidScope`] for a malformed scope.
    pub fn scope_ceiling<I: IntoIterator<Item = S>, S: AsRef<str>>(
        mut self,
        scopes: I,
    ) -> Result<Self> {
        let scopes: Vec<String> = scopes.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self.scope_ceiling = Some(ScopeSet::parse(&scopes)?);
        Ok(self)
    }
    /// Sets the allowed environments.
    pub fn environments<I: IntoIterator<Item = Environment>>(mut self, envs: I) -> Self {
        self.environments = Some(envs.into_iter().collect());
        self
    }
    /// Holds new keys disabled until an administrator enables them.
    pub fn requires_approval(mut self, yes: bool) -> Self {
        self.requires_approval = yes;
        self
    }

    /// The first rule `key` breaks at `now` (`None`
    /// skips the lifetime bound, which only keys with an expiry need).
    fn check(
        &self,
        key: &Subject<'_>,
        now: Option<Timestamp>,
    ) -> std::result::Result<(), &'static str> {
        if (self.expiry_required || self.max_lifetime.is_some()) && key.expires_at.is_none() {
            return Err("the key must have an expiry");
        }
        if let (Some(max), Some(exp), Some(now)) = (self.max_lifetime, key.expires_at, now)
            && exp > now.saturating_add(max).as_unix_micros()
        {
            return Err("the key's expiry is beyond the maximum lifetime");
        }
        if let Some(envs) = &self.environments
            && !envs.contains(&key.environment)
        {
            return Err("the key's environment is not allowed");
        }
        if let Some(ceiling) = &self.scope_ceiling
            && !key.scopes.iter().all(|s| ceiling.grants(s))
        {
            return Err("the key holds a scope above the scope ceiling");
        }
        Ok(())
    }
}

/// A [`KeyPolicy`] and the keys it applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PolicyRule {
    /// Which keys.
    pub applies_to: PolicyTarget,
    /// What they must satisfy.
    pub policy: KeyPolicy,
}

impl PolicyRule {
    /// `policy` for the keys of `applies_to`.
    pub fn new(applies_to: PolicyTarget, policy: KeyPolicy) -> Self {
        Self { applies_to, policy }
    }
}

/// Issuance policy: rules about what keys may look like, as data.
///
/// A [`KeyPolicies`] is an ordered list of [`PolicyRule`]s, each a
/// [`KeyPolicy`] that applies to the keys of one prefix, of one owner class
/// (owner ids starting with a given text, such as `org_`), or to every key.
/// Every rule that applies to a key applies in full: a key must comply with
/// each of them. Policies serialize with serde, so a dashboard can show and
/// edit them.
///
/// The rules are decided in two places only, never in a store:
///
/// * **planning**, in [`KeyManager`](crate::KeyManager): `create`, `update`,
///   `rotate` and `import` fill in the default lifetime, hold keys that need
///   approval disabled, and refuse a key that would not comply
///   ([`Error::PolicyViolation`], `POLICY_VIOLATION`, 403), before the same
///   single store write that checks the owner limit;
/// * **verification**, in the [`Verifier`](crate::Verifier) configured with
///   [`Verifier::with_key_policies`](crate::Verifier::with_key_policies): a
///   key that does not comply with the policies in force (because they
///   tightened after it was made) is refused with `POLICY_VIOLATION`
///   without being revoked, and works again once they loosen. A verifier
///   without policies does no policy work at all.
///
/// # The lifetime rule
///
/// `max_lifetime` bounds how long a key may *still* be valid: at any time
/// `t`, `expires_at <= t + max_lifetime`, and a key without expiry never
/// complies. At creation this is the usual "lifetime at most N days"; it
/// also lets [auto-renewal](crate::KeyManager::sweep_once) extend a key to
/// `now + max_lifetime` and no further, and a key made under a looser
/// maximum is refused only while its remaining validity exceeds the new one
/// (shorten its expiry with [`KeyManager::update`](crate::KeyManager::update)
/// to make it work again).
///
/// ```
/// use apikey::{KeyPolicies, KeyPolicy, PolicyRule, PolicyTarget};
/// use std::time::Duration;
///
/// let policies = KeyPolicies::new()
///     .rule(PolicyRule::new(
///         PolicyTarget::Prefix("sk_live_".into()),
///         KeyPolicy::new()
///             .default_lifetime(Duration::from_secs(90 * 86_400))
///             .max_lifetime(Duration::from_secs(366 * 86_400))
///             .scope_ceiling(["tasks:*"])?,
///     ))
///     .rule(PolicyRule::new(
///         PolicyTarget::OwnerClass("org_".into()),
///         KeyPolicy::new().requires_approval(true),
///     ));
/// let json = serde_json::to_string(&policies).expect("serializes");
/// assert!(json.contains("\"max_lifetime_secs\":31622400"));
/// let back: KeyPolicies = serde_json::from_str(&json).expect("reads back");
/// assert_eq!(back, policies);
/// # Ok::<(), apikey::Error>(())
/// ```
///
/// The issuance policies of a service: an ordered list of rules, every
/// applicable one enforced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyPolicies {
    rules: Vec<PolicyRule>,
}

/// The fields of a key that policies look at.
pub(crate) struct Subject<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) owner: Option<&'a str>,
    pub(crate) environment: Environment,
    pub(crate) scopes: &'a ScopeSet,
    /// Unix microseconds.
    pub(crate) expires_at: Option<i64>,
}

impl<'a> Subject<'a> {
    pub(crate) fn of_record(r: &'a KeyRecord) -> Self {
        Self {
            prefix: r.prefix.as_str(),
            owner: r.owner.as_deref(),
            environment: r.environment,
            scopes: &r.scopes,
            expires_at: r.expires_at.map(Timestamp::as_unix_micros),
        }
    }

    pub(crate) fn of_view(v: &'a KeyView) -> Self {
        Self {
            prefix: v.prefix().as_str(),
            owner: v.owner(),
            environment: v.environment,
            scopes: &v.scopes,
            expires_at: (v.expires_at != i64::MAX).then_some(v.expires_at),
        }
    }
}

impl KeyPolicies {
    /// No rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule.
    pub fn rule(mut self, rule: PolicyRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The policies that apply to a key of `prefix` owned by `owner`.
    pub fn applicable<'s>(
        &'s self,
        prefix: &'s str,
        owner: Option<&'s str>,
    ) -> impl Iterator<Item = &'s KeyPolicy> + 's {
        self.rules
            .iter()
            .filter(move |r| r.applies_to.applies(prefix, owner))
            .map(|r| &r.policy)
    }

    /// The shortest default lifetime of the policies that apply.
    pub(crate) fn default_lifetime(&self, prefix: &str, owner: Option<&str>) -> Option<Duration> {
        self.applicable(prefix, owner)
            .filter_map(|p| p.default_lifetime)
            .min()
    }

    /// The shortest maximum lifetime of the policies that apply.
    pub(crate) fn max_lifetime(&self, prefix: &str, owner: Option<&str>) -> Option<Duration> {
        self.applicable(prefix, owner)
            .filter_map(|p| p.max_lifetime)
            .min()
    }

    /// Whether any applicable policy requires approval.
    pub(crate) fn requires_approval(&self, prefix: &str, owner: Option<&str>) -> bool {
        self.applicable(prefix, owner).any(|p| p.requires_approval)
    }

    pub(crate) fn check_subject(&self, key: &Subject<'_>, now: Option<Timestamp>) -> Result<()> {
        for p in self.applicable(key.prefix, key.owner) {
            p.check(key, now)
                .map_err(|rule| Error::PolicyViolation { rule })?;
        }
        Ok(())
    }

    /// Whether `record` complies with every applicable policy at `now`.
    ///
    /// # Errors
    /// [`Error::PolicyViolation`] naming the first rule broken.
    pub fn check(&self, record: &KeyRecord, now: Timestamp) -> Result<()> {
        self.check_subject(&Subject::of_record(record), Some(now))
    }
}
