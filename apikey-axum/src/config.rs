//! [`ManageConfig`]: what the host app sets — the prefixes keys are issued
//! under, the scopes it offers, its plans, the page's title, limits on
//! input, and the CSRF rule for cookie sessions.

use apikey::Environment;
use serde::Serialize;

/// A scope the service offers, shown on the page as a checkbox with its
/// description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScopeInfo {
    /// The scope (`tasks:read`).
    pub name: String,
    /// What it allows (`View tasks`).
    pub description: String,
}

/// The management surface's configuration.
///
/// ```
/// use apikey::Environment;
/// use apikey_axum::ManageConfig;
/// let config = ManageConfig::new("sk_live_")
///     .prefix(Environment::Test, "sk_test_")
///     .title("Example API keys")
///     .scope("tasks:read", "View tasks")
///     .scope("tasks:write", "Create and update tasks")
///     .plan("free")
///     .plan("professional");
/// assert_eq!(config.prefix_for(Environment::Test), Some("sk_test_"));
/// ```
#[derive(Clone, Debug)]
pub struct ManageConfig {
    pub(crate) title: String,
    pub(crate) prefixes: Vec<(Environment, String)>,
    pub(crate) scopes: Vec<ScopeInfo>,
    pub(crate) plans: Vec<String>,
    pub(crate) max_body: usize,
    pub(crate) default_grace: std::time::Duration,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) page: bool,
    pub(crate) credit_apis: Vec<String>,
}

/// The header every state-changing call from a cookie session must carry
/// (any value; the page sends `1`). Browsers let no other site set a custom
/// header on a cross-site request without a CORS preflight, which this
/// router never grants.
pub const CSRF_HEADER: &str = "x-apikey-csrf";

impl ManageConfig {
    /// Keys are issued under `live_prefix` (registered with the verifier as
    /// a live prefix). Defaults: title "API keys", no scope catalog (then
    /// only a caller with scope bounds, such as a management key, gives
    /// permissions, within its bounds; a signed-in user without bounds
    /// gives none: declare them with [`scope`](Self::scope)), no plans, 16 KiB bodies,
    /// a rotation grace of 24 hours when none is given, same-origin
    /// requests only, the page served.
    pub fn new(live_prefix: &str) -> Self {
        Self {
            title: "API keys".into(),
            prefixes: vec![(Environment::Live, live_prefix.to_owned())],
            scopes: Vec::new(),
            plans: Vec::new(),
            max_body: 16 * 1024,
            default_grace: std::time::Duration::from_secs(24 * 3_600),
            allowed_origins: Vec::new(),
            page: true,
            credit_apis: Vec::new(),
        }
    }

    /// Issues keys of `environment` under `prefix` (seed 001's
    /// `sk_test_` keys); replaces an earlier prefix for it.
    pub fn prefix(mut self, environment: Environment, prefix: &str) -> Self {
        self.prefixes.retain(|(e, _)| *e != environment);
        self.prefixes.push((environment, prefix.to_owned()));
        self
    }

    /// The page's title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Offers `scope`: with at least one, a key may only be given scopes of
    /// this catalog.
    pub fn scope(mut self, scope: impl Into<String>, description: impl Into<String>) -> Self {
        self.scopes.push(ScopeInfo {
            name: scope.into(),
            description: description.into(),
        });
        self
    }

    /// A plan an account admin may give a key (stored as the key's `plan`
    /// metadata, read by [`apikey::web::QuotaTable`]).
    pub fn plan(mut self, plan: impl Into<String>) -> Self {
        self.plans.push(plan.into());
        self
    }

    /// The largest request body accepted, in bytes (larger: 400 naming
    /// `body`). Defaults to 16 KiB.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The rotation grace period used when a rotation names none. Defaults
    /// to 24 hours (never more than the manager's maximum).
    pub fn default_grace(mut self, grace: std::time::Duration) -> Self {
        self.default_grace = grace;
        self
    }

    /// Accepts state-changing session calls whose `Origin` is `origin`
    /// (`https://app.example.com`) besides the request's own host.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins.push(origin.into());
        self
    }

    /// An API whose per-user credit limits account admins set through
    /// [`ManageApi::router_with_credits`](crate::ManageApi::router_with_credits)
    /// (the name given to [`Gate::with_credits`](apikey::web::Gate::with_credits)).
    pub fn credit_api(mut self, api: impl Into<String>) -> Self {
        self.credit_apis.push(api.into());
        self
    }

    /// Whether the router serves the keys page (default: yes).
    pub fn page(mut self, serve: bool) -> Self {
        self.page = serve;
        self
    }

    /// The prefix keys of `environment` are issued under.
    pub fn prefix_for(&self, environment: Environment) -> Option<&str> {
        self.prefixes
            .iter()
            .find(|(e, _)| *e == environment)
            .map(|(_, p)| p.as_str())
    }
}
