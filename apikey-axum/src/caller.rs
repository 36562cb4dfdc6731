//! Who is calling: the [`Caller`] a host-supplied [`ResolveCaller`] returns
//! for each request, with the [`Bounds`] of what it may hand out.
//!
//! The library never implements user login. The host resolves the caller
//! from its own session (a signed-in user of the app) or from an API key
//! with a management scope ([`Caller::from_key`], seed 001:
//! `Authorization: Bearer EXISTING_API_KEY`).

use std::collections::BTreeSet;
use std::future::Future;

use apikey::Timestamp;
use apikey::{Environment, IpNet, KeyId, KeySummary, Scope, ScopeSet};
use http::request::Parts;

use crate::error::ApiError;

/// How the caller authenticated: this decides whether the CSRF check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Via {
    /// A browser session (a cookie): state-changing calls must pass the
    /// CSRF check (see [`crate::CSRF_HEADER`]).
    Session,
    /// An API key sent in a header: not sent by browsers on their own, so
    /// no CSRF check.
    ApiKey,
}

/// The most a caller may hand out: a key it creates, changes or rotates
/// never holds more. `None`/empty fields mean "no bound" for a signed-in
/// user; a key caller is bounded by its own key ([`Caller::from_key`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Scopes the caller holds (`None`: every scope the service offers in
    /// its catalog, [`ManageConfig::scope`](crate::ManageConfig::scope); none
    /// when it declares none).
    pub scopes: Option<ScopeSet>,
    /// Environments the caller may issue in (`None`: every environment).
    pub environments: Option<Vec<Environment>>,
    /// The latest expiry the caller may give (`None`: no limit, "never" is
    /// allowed).
    pub expires_at: Option<Timestamp>,
    /// Addresses the caller is limited to (empty: anywhere). A key it
    /// issues must be limited to these or a subset.
    pub ip_allowlist: Vec<IpNet>,
}

impl Bounds {
    /// Whether holding these bounds covers `scope`.
    pub fn grants_scope(&self, scope: &Scope) -> bool {
        self.scopes.as_ref().is_none_or(|held| held.grants(scope))
    }

    /// Whether these bounds allow `env`.
    pub fn allows_environment(&self, env: Environment) -> bool {
        self.environments.as_ref().is_none_or(|e| e.contains(&env))
    }

    /// Whether an allowlist `list` is within these bounds (each range inside
    /// one of ours; an empty list means "anywhere" and is only within no
    /// bound).
    pub fn covers_allowlist(&self, list: &[IpNet]) -> bool {
        if self.ip_allowlist.is_empty() {
            return true;
        }
        !list.is_empty()
            && list.iter().all(|net| {
                self.ip_allowlist
                    .iter()
                    .any(|ours| ours.prefix_len() <= net.prefix_len() && ours.contains(net.addr()))
            })
    }
}

/// The authenticated caller of a management request.
///
/// ```
/// use apikey_axum::Caller;
/// let user = Caller::user("user_1");
/// assert!(user.may_manage("user_1") && !user.may_manage("user_2"));
/// let admin = Caller::user("admin_1").admin_of(["user_1", "user_2"]);
/// assert!(admin.may_manage("user_2") && admin.is_admin());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    actor: String,
    owner: String,
    account: Option<BTreeSet<String>>,
    bounds: Bounds,
    via: Via,
    /// Why this caller may not mint keys (its plan), if it may not.
    upgrade: Option<String>,
    /// A key caller's limits account (its own id, or the key it spends
    /// from): a key with a credit budget there may derive from and rotate
    /// only keys that spend from it too.
    spends_from: Option<KeyId>,
    /// A key caller's plan (its [`PLAN_KEY`](crate::PLAN_KEY) entry): a
    /// key it creates is on the same plan, so it never mints itself a
    /// larger quota than its own.
    plan: Option<String>,
}

impl Caller {
    /// A signed-in user of the app (a cookie session): manages the keys
    /// owned by `owner` (its user id), audited as `user:<owner>`.
    pub fn user(owner: impl Into<String>) -> Self {
        let owner = owner.into();
        Self {
            actor: format!("user:{owner}"),
            owner,
            account: None,
            bounds: Bounds::default(),
            via: Via::Session,
            upgrade: None,
            spends_from: None,
            plan: None,
        }
    }

    /// A caller authenticated by the API key `key` (which the host checked
    /// holds its management scope): manages its owner's keys, bounded by the
    /// key's own scopes, environment, expiry and IP allowlist, audited as
    /// `key:<id>`. `None` when the key has no owner.
    pub fn from_key(key: &KeySummary) -> Option<Self> {
        let owner = key.owner.clone()?;
        let scopes = ScopeSet::parse(&key.scopes).ok()?;
        Some(Self {
            actor: format!("key:{}", key.id),
            owner,
            account: None,
            bounds: Bounds {
                scopes: Some(scopes),
                environments: Some(vec![key.environment]),
                expires_at: key.expires_at,
                ip_allowlist: key.ip_allowlist.clone(),
            },
            via: Via::ApiKey,
            upgrade: None,
            // An unreadable entry reads as the key's own id, which holds no
            // budget a sibling could share.
            spends_from: Some(key.limits_account().unwrap_or(key.id)),
            plan: key.metadata.get(crate::PLAN_KEY).cloned(),
        })
    }

    /// Makes the caller an account admin managing the keys of every user
    /// in `members` (its own included), and able to pick a key's user and
    /// plan.
    pub fn admin_of<I: IntoIterator<Item = S>, S: Into<String>>(mut self, members: I) -> Self {
        let mut set: BTreeSet<String> = members.into_iter().map(Into::into).collect();
        set.insert(self.owner.clone());
        self.account = Some(set);
        self
    }

    /// The caller may manage its keys but not mint new ones (create,
    /// derive, rotate): its plan has no API access (seed 000: "API key
    /// access is available on Professional and Premium plans ... you'll be
    /// prompted to upgrade when attempting to create an API key"). Those
    /// calls answer 403 `INSUFFICIENT_SCOPE`, field `plan`, with `message`
    /// (the page shows it); listing, disabling and revoking keep working,
    /// so a downgraded user can still switch old keys off.
    ///
    /// ```
    /// use apikey_axum::Caller;
    /// let free = Caller::user("user_1")
    ///     .needs_upgrade("API keys come with the Professional and Premium plans: upgrade to create one.");
    /// assert!(free.upgrade_required().is_some());
    /// ```
    pub fn needs_upgrade(mut self, message: impl Into<String>) -> Self {
        self.upgrade = Some(message.into());
        self
    }

    /// A key caller's limits account ([`KeySummary::limits_account`]).
    pub(crate) fn spends_from(&self) -> Option<KeyId> {
        self.spends_from
    }

    /// A key caller's plan, which the keys it creates inherit.
    pub(crate) fn plan(&self) -> Option<&str> {
        self.plan.as_deref()
    }

    /// The message of [`needs_upgrade`](Self::needs_upgrade), when set.
    pub fn upgrade_required(&self) -> Option<&str> {
        self.upgrade.as_deref()
    }

    /// Replaces the bounds.
    pub fn with_bounds(mut self, bounds: Bounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// Sets how the caller authenticated.
    pub fn via(mut self, via: Via) -> Self {
        self.via = via;
        self
    }

    /// Replaces the actor id written to the audit trail.
    pub fn actor_id(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// The actor id (audit trail).
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The owner whose keys the caller manages by default.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether the caller is an account admin.
    pub fn is_admin(&self) -> bool {
        self.account.is_some()
    }

    /// The owners an admin manages (`None` for a plain user).
    pub fn account(&self) -> Option<&BTreeSet<String>> {
        self.account.as_ref()
    }

    /// Whether the caller may manage `owner`'s keys.
    pub fn may_manage(&self, owner: &str) -> bool {
        owner == self.owner || self.account.as_ref().is_some_and(|a| a.contains(owner))
    }

    /// The bounds.
    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    /// How the caller authenticated.
    pub fn how(&self) -> Via {
        self.via
    }
}

/// Resolves the caller of a management request, supplied by the host app:
/// from its session cookie, or from a management-scoped API key (see
/// [`Caller::from_key`] and [`crate::KeyCaller`]).
///
/// Return `Err` with [`ApiError`] to refuse (e.g.
/// `ApiError::code_only(ErrorCode::MissingApiKey)` for an anonymous request:
/// 401).
///
/// ```
/// use apikey_axum::{ApiError, Caller, ResolveCaller};
/// use apikey::ErrorCode;
///
/// /// A toy session: the `session` cookie is the user id.
/// struct Sessions;
/// impl ResolveCaller for Sessions {
///     async fn resolve(&self, parts: &http::request::Parts) -> Result<Caller, ApiError> {
///         let cookie = parts.headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
///         match cookie.strip_prefix("session=") {
///             Some(user) => Ok(Caller::user(user)),
///             None => Err(ApiError::code_only(ErrorCode::MissingApiKey)),
///         }
///     }
/// }
/// ```
pub trait ResolveCaller: Send + Sync + 'static {
    /// The caller of the request whose head is `parts`.
    ///
    /// # Errors
    /// The refusal to answer with (401 for no credentials, 503 when the
    /// session store fails, ...).
    fn resolve(&self, parts: &Parts) -> impl Future<Output = Result<Caller, ApiError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn an_allowlist_is_covered_only_by_wider_ranges_of_the_same_family() {
        let b = Bounds {
            ip_allowlist: vec![net("127.0.0.0/8")],
            ..Bounds::default()
        };
        assert!(b.covers_allowlist(&[net("127.0.0.1")]));
        assert!(b.covers_allowlist(&[net("127.0.0.0/8"), net("127.1.0.0/16")]));
        assert!(!b.covers_allowlist(&[]));
        assert!(!b.covers_allowlist(&[net("126.0.0.0/7")]));
        assert!(!b.covers_allowlist(&[net("127.0.0.1"), net("::1")]));
        assert!(Bounds::default().covers_allowlist(&[]));
    }
}
