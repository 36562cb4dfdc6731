//! What a route asks of the gate: its requirement, its credit cost, what
//! happens to credentials that are not ours, and the quotas of plans.

use std::borrow::Cow;

use crate::limits::Quota;
use crate::record::Requirement;
use crate::verify::VerifiedKey;

/// What one route needs: a scope requirement and a credit cost.
///
/// ```
/// use apikey::Requirement;
/// use apikey::web::Route;
/// let generate = Route::new(Requirement::scope("generate")?).cost(5);
/// assert_eq!(generate.credit_cost(), 5);
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Route {
    pub(super) requirement: Requirement,
    pub(super) cost: u64,
    /// `false`: no credit check at all ([`Route::unmetered`]).
    pub(super) metered: bool,
    pub(super) foreign: ForeignCredentials,
}

impl Route {
    /// A route needing `requirement`, costing 1 credit, refusing
    /// credentials that are not ours.
    pub fn new(requirement: Requirement) -> Self {
        Self {
            requirement,
            cost: 1,
            metered: true,
            foreign: ForeignCredentials::Reject,
        }
    }

    /// A route any valid key may call, costing 1 credit.
    pub fn any_key() -> Self {
        Self::new(Requirement::none())
    }

    /// Credits one call costs. Defaults to 1. Zero checks that the balances
    /// are not exhausted without spending (a caller out of credits is
    /// refused); for a route that must work whatever the balance, see
    /// [`unmetered`](Self::unmetered).
    pub fn cost(mut self, credits: u64) -> Self {
        self.cost = credits;
        self.metered = true;
        self
    }

    /// A route that neither spends credits nor checks them: rate limits
    /// still apply. For what a caller must reach with an exhausted balance:
    /// managing its own keys (revoking a leaked one), reading its limits.
    ///
    /// ```
    /// use apikey::web::Route;
    /// let limits = Route::any_key().unmetered();
    /// assert_eq!(limits.credit_cost(), 0);
    /// assert!(!limits.is_metered());
    /// ```
    pub fn unmetered(mut self) -> Self {
        self.cost = 0;
        self.metered = false;
        self
    }

    /// Whether calls are checked against credit balances (the default;
    /// `false` after [`unmetered`](Self::unmetered)).
    pub fn is_metered(&self) -> bool {
        self.metered
    }

    /// The scope requirement.
    pub fn requirement(&self) -> &Requirement {
        &self.requirement
    }

    /// The credit cost.
    pub fn credit_cost(&self) -> u64 {
        self.cost
    }

    /// What to do with credentials that are not ours on this route (see
    /// [`ForeignCredentials`]). Defaults to [`ForeignCredentials::Reject`]:
    /// fail closed. The one place this is set: the gate and the axum layer
    /// read it from the route they run.
    ///
    /// ```
    /// use apikey::web::{ForeignCredentials, Route};
    /// let also_jwt = Route::any_key().with_foreign_credentials(ForeignCredentials::PassThrough);
    /// assert_eq!(also_jwt.foreign_credentials(), ForeignCredentials::PassThrough);
    /// assert_eq!(Route::any_key().foreign_credentials(), ForeignCredentials::Reject);
    /// ```
    pub fn with_foreign_credentials(mut self, foreign: ForeignCredentials) -> Self {
        self.foreign = foreign;
        self
    }

    /// The [`ForeignCredentials`] setting of this route.
    pub fn foreign_credentials(&self) -> ForeignCredentials {
        self.foreign
    }
}

/// Which [`Quota`] applies to a key: a default, and per-plan quotas chosen
/// by a metadata entry of the key's record (`plan` by default).
///
/// ```
/// use apikey::web::QuotaTable;
/// use apikey::limits::Quota;
/// const FREE: Quota = Quota::unlimited().per_minute(100).per_hour(1_000);
/// const PROFESSIONAL: Quota = Quota::unlimited().per_minute(500).per_hour(10_000);
/// let table = QuotaTable::fixed(FREE)
///     .plan("professional", PROFESSIONAL)
///     .plan("enterprise", Quota::unlimited());
/// assert_eq!(table.quota_for_plan(Some("professional")), PROFESSIONAL);
/// assert_eq!(table.quota_for_plan(Some("unknown")), FREE);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaTable {
    default: Quota,
    metadata_key: Cow<'static, str>,
    plans: Vec<(String, Quota)>,
}

impl Default for QuotaTable {
    /// No limits.
    fn default() -> Self {
        Self::fixed(Quota::unlimited())
    }
}

impl QuotaTable {
    /// The same quota for every key.
    pub fn fixed(quota: Quota) -> Self {
        Self {
            default: quota,
            metadata_key: Cow::Borrowed("plan"),
            plans: Vec::new(),
        }
    }

    /// Keys whose plan metadata is `name` get `quota`.
    pub fn plan(mut self, name: impl Into<String>, quota: Quota) -> Self {
        self.plans.push((name.into(), quota));
        self
    }

    /// The metadata entry naming the plan. Defaults to `plan`.
    pub fn metadata_key(mut self, key: impl Into<Cow<'static, str>>) -> Self {
        self.metadata_key = key.into();
        self
    }

    /// The quota for a plan name (the default for `None` or an unknown one).
    pub fn quota_for_plan(&self, plan: Option<&str>) -> Quota {
        plan.and_then(|p| self.plans.iter().find(|(n, _)| n == p))
            .map_or(self.default, |(_, q)| *q)
    }

    /// The quota for a verified key.
    pub fn quota_for(&self, key: &VerifiedKey) -> Quota {
        self.quota_for_metadata(key.metadata())
    }

    /// The quota for a key with `metadata`.
    pub(super) fn quota_for_metadata(
        &self,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Quota {
        self.quota_for_plan(metadata.get(self.metadata_key.as_ref()).map(String::as_str))
    }
}

/// What a [`Gate`](crate::web::Gate) (and the axum layer) does, on a [`Route`]
/// ([`Route::with_foreign_credentials`]), with a request whose
/// credentials are not API keys of ours: a Bearer token without one of the
/// registered prefixes (a JWT), `Authorization: Basic`, `Token x`, any other
/// `Authorization` scheme.
///
/// The default fails closed: only a valid key of ours that meets the
/// route's requirement passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForeignCredentials {
    /// Refuse them: 401 `MISSING_API_KEY` with the JSON body and the
    /// `WWW-Authenticate` challenge, like a request without credentials.
    #[default]
    Reject,
    /// Pass them on: [`Gate::check`](crate::web::Gate::check) answers
    /// [`Decision::NotOurs`](crate::web::Decision::NotOurs) and the
    /// axum layer calls the inner service **without** authenticating the
    /// request. No [`VerifiedKey`] (nor [`Admitted`](crate::web::Admitted)) is in its extensions,
    /// no rate limit or credit was charged, and the route's requirement was
    /// not checked: the handler (or another layer, for a JWT) must
    /// authenticate the request itself and refuse it otherwise. Only for
    /// services that also accept other credentials.
    PassThrough,
}
