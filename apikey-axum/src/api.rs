//! The `/v1/api-keys` routes: parsing, the authorization rules, and the
//! calls into [`KeyManager`].

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use apikey::Timestamp;
use apikey::limits::{
    Admission, CreditBalances, CreditCharge, CreditScope, Limits, Quota, Verdict,
};
use apikey::{
    Actor, Clock, Derivation, Environment, ErrorCode, IpNet, KeyId, KeyManager, KeyRecord,
    KeyStoreWrite, KeySummary, KeyUpdate, NewKey, Rotation, Scope, UsageStore,
};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::caller::{Bounds, Caller, ResolveCaller, Via};
use crate::config::{CSRF_HEADER, ManageConfig};
use crate::error::ApiError;
use crate::wire::{
    CreateRequest, CreatedKey, DeriveRequest, KeyDetails, KeyItem, KeyList, PatchRequest,
    RotateRequest,
};

mod handlers;
mod parse;

use handlers::{create, derive, disable, enable, list, remove, rotate, show, update};
use parse::within_bounds;
pub(crate) use parse::{json, parse_body};

type St<S, C, L, R> = State<Arc<Shared<S, C, L, R>>>;

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Most IP ranges on one key.
pub const MAX_ALLOWLIST: usize = 32;
/// Most keys in one page of a listing.
pub const MAX_PAGE: usize = 100;

/// One management call, as written to the call log: who, what, on which
/// key, and the outcome. Never a key's secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CallRecord {
    /// When (the manager's clock).
    pub at: Timestamp,
    /// The caller's actor id (`None`: the caller was not resolved).
    pub actor: Option<String>,
    /// `list`, `create`, `get`, `update`, `disable`, `enable`, `rotate`, `derive`,
    /// `revoke`, `credits_get`, `credits_set`.
    pub action: &'static str,
    /// The key id named in the path, when there is one and it is a well-formed
    /// key id. Anything else in its place (a whole key pasted by mistake)
    /// is never logged: `None`.
    pub key_id: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// The error code, for a refusal.
    pub code: Option<ErrorCode>,
}

type CallLog = Arc<dyn Fn(&CallRecord) + Send + Sync>;

pub(crate) struct Shared<S, C, L, R> {
    pub manager: Arc<KeyManager<S, C, L>>,
    pub resolver: R,
    pub config: ManageConfig,
    pub log: Option<CallLog>,
}

/// Builds the management [`Router`]: the routes of [`ROUTES`], the keys
/// page and the OpenAPI document.
///
/// ```
/// use std::sync::Arc;
/// use apikey::*;
/// use apikey_axum::{ApiError, Caller, ManageApi, ManageConfig, ResolveCaller};
///
/// struct OneUser;
/// impl ResolveCaller for OneUser {
///     async fn resolve(&self, _: &http::request::Parts) -> Result<Caller, ApiError> {
///         Ok(Caller::user("user_1"))
///     }
/// }
///
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
/// let manager = Arc::new(KeyManager::new(verifier, MemoryStore::new()).with_max_keys_per_owner(3));
/// let app: axum::Router = ManageApi::new(manager, OneUser, ManageConfig::new("sk_live_")).router();
/// # let _ = app;
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Debug)]
pub struct ManageApi<S, C, L, R> {
    manager: Arc<KeyManager<S, C, L>>,
    resolver: R,
    config: ManageConfig,
    log: Option<LogFn>,
}

/// The call log (a wrapper giving it a `Debug`).
#[derive(Clone)]
struct LogFn(CallLog);

impl std::fmt::Debug for LogFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogFn")
    }
}

/// Every route of [`ManageApi::router_with_credits`] (method, path) and of
/// [`rate_limit_router`](crate::rate_limit_router), as documented in the
/// OpenAPI document ([`ManageApi::router`] has all but the credits routes).
/// The keys page and its assets are extra.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/api-keys"),
    ("post", "/v1/api-keys"),
    ("get", "/v1/api-keys/{id}"),
    ("patch", "/v1/api-keys/{id}"),
    ("delete", "/v1/api-keys/{id}"),
    ("post", "/v1/api-keys/{id}/disable"),
    ("post", "/v1/api-keys/{id}/enable"),
    ("post", "/v1/api-keys/{id}/rotate"),
    ("post", "/v1/api-keys/{id}/derive"),
    ("get", "/v1/credits/{owner}/{api}"),
    ("put", "/v1/credits/{owner}/{api}"),
    ("get", "/v1/rate-limit"),
    ("get", "/v1/openapi.json"),
];

impl<S, C, L, R> ManageApi<S, C, L, R>
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + 'static,
    R: ResolveCaller,
{
    /// The management API over `manager` (configure its owner limit with
    /// [`KeyManager::with_max_keys_per_owner`] and its audit sink with
    /// [`KeyManager::with_audit_sink`]), with callers resolved by
    /// `resolver`.
    pub fn new(manager: Arc<KeyManager<S, C, L>>, resolver: R, config: ManageConfig) -> Self {
        Self {
            manager,
            resolver,
            config,
            log: None,
        }
    }

    /// Writes one [`CallRecord`] per call (successes and refusals alike) to
    /// `log`. Key changes are also audited by the manager's audit sink with
    /// the same actor.
    pub fn with_call_log(mut self, log: impl Fn(&CallRecord) + Send + Sync + 'static) -> Self {
        self.log = Some(LogFn(Arc::new(log)));
        self
    }

    /// The router: `/v1/api-keys` and its sub-routes, `/v1/openapi.json`
    /// and (unless turned off) the keys page at `/keys`. Merge or nest it
    /// into the app's router; the page uses relative URLs, so nesting
    /// under a path works. `GET /v1/rate-limit` is
    /// [`rate_limit_router`](crate::rate_limit_router), guarded by the
    /// app's own gate.
    pub fn router(self) -> Router {
        let shared = self.into_shared();
        Self::routes(&shared).merge(
            Router::new()
                .route("/v1/api-keys/{id}/derive", post(derive::<S, C, L, R>))
                .with_state(shared),
        )
    }

    fn into_shared(self) -> Arc<Shared<S, C, L, R>> {
        Arc::new(Shared {
            manager: self.manager,
            resolver: self.resolver,
            config: self.config,
            log: self.log.map(|l| l.0),
        })
    }

    fn routes(shared: &Arc<Shared<S, C, L, R>>) -> Router {
        let api = Router::new()
            .route(
                "/v1/api-keys",
                get(list::<S, C, L, R>).post(create::<S, C, L, R>),
            )
            .route(
                "/v1/api-keys/{id}",
                get(show::<S, C, L, R>)
                    .patch(update::<S, C, L, R>)
                    .delete(remove::<S, C, L, R>),
            )
            .route("/v1/api-keys/{id}/disable", post(disable::<S, C, L, R>))
            .route("/v1/api-keys/{id}/enable", post(enable::<S, C, L, R>))
            .route("/v1/api-keys/{id}/rotate", post(rotate::<S, C, L, R>))
            .with_state(Arc::clone(shared))
            .route("/v1/openapi.json", get(crate::openapi::document));
        if shared.config.page {
            api.merge(crate::page::router(&shared.config))
        } else {
            api
        }
    }
}

impl<S, C, L, R> ManageApi<S, C, L, R>
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + CreditBalances + 'static,
    R: ResolveCaller,
{
    /// [`router`](Self::router) plus seed 002's credit limits per user per
    /// API, kept in the manager's limits bundle:
    /// `GET /v1/credits/{owner}/{api}` (anyone who manages `owner`'s keys)
    /// and `PUT /v1/credits/{owner}/{api}` (`{"limit": 10000, "refill":
    /// "month"}`; account admins only), for the APIs named with
    /// [`ManageConfig::credit_api`].
    pub fn router_with_credits(self) -> Router {
        let shared = self.into_shared();
        Self::routes(&shared).merge(
            Router::new()
                .route(
                    "/v1/credits/{owner}/{api}",
                    get(credits_get::<S, C, L, R>).put(credits_put::<S, C, L, R>),
                )
                .route(
                    "/v1/api-keys/{id}/derive",
                    post(derive_credits::<S, C, L, R>),
                )
                .with_state(shared),
        )
    }
}

/// `POST /v1/api-keys/{id}/derive` with an optional `credits` budget.
async fn derive_credits<S, C, L, R>(State(st): St<S, C, L, R>, req: Request) -> Response
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + CreditBalances + 'static,
    R: ResolveCaller,
{
    let id = parse::loggable_id(req.uri());
    st.call("derive", id, req, Shared::op_derive_credits).await
}

async fn credits_get<S, C, L, R>(State(st): St<S, C, L, R>, req: Request) -> Response
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + CreditBalances + 'static,
    R: ResolveCaller,
{
    st.call("credits_get", None, req, Shared::op_credits_get)
        .await
}

async fn credits_put<S, C, L, R>(State(st): St<S, C, L, R>, req: Request) -> Response
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + CreditBalances + 'static,
    R: ResolveCaller,
{
    st.call("credits_set", None, req, Shared::op_credits_put)
        .await
}

// ----- the call frame: caller, CSRF, body, log -----

pub(crate) type Outcome = Result<Response, ApiError>;

impl<S, C, L, R> Shared<S, C, L, R>
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + 'static,
    R: ResolveCaller,
{
    /// Resolves the caller, checks CSRF, reads the body, runs `op`, logs.
    async fn call<F, Fut>(
        self: Arc<Self>,
        action: &'static str,
        key_id: Option<String>,
        req: Request,
        op: F,
    ) -> Response
    where
        F: FnOnce(Arc<Self>, Caller, Parts, Vec<u8>) -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let (parts, body) = req.into_parts();
        let caller = self.resolver.resolve(&parts).await;
        let actor = caller.as_ref().ok().map(|c| c.actor().to_owned());
        let outcome = match caller {
            Err(e) => Err(e),
            Ok(caller) => match self.admit(&caller, &parts, body).await {
                Err(e) => Err(e),
                Ok(bytes) => op(Arc::clone(&self), caller, parts, bytes).await,
            },
        };
        match outcome {
            Ok(r) => self.logged(action, actor, key_id, r, None),
            Err(e) => {
                let code = e.code();
                self.logged(action, actor, key_id, e.into_response(), Some(code))
            }
        }
    }

    fn logged(
        &self,
        action: &'static str,
        actor: Option<String>,
        key_id: Option<String>,
        response: Response,
        code: Option<ErrorCode>,
    ) -> Response {
        if let Some(log) = &self.log {
            log(&CallRecord {
                at: self.manager.clock().now(),
                actor,
                action,
                key_id,
                status: response.status().as_u16(),
                code,
            });
        }
        response
    }

    /// The CSRF check for session callers, then the bounded body.
    async fn admit(&self, caller: &Caller, parts: &Parts, body: Body) -> Result<Vec<u8>, ApiError> {
        let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD);
        if unsafe_method && caller.how() == Via::Session {
            csrf_check(parts, &self.config)?;
        }
        let bytes = axum::body::to_bytes(body, self.config.max_body)
            .await
            .map_err(|_| {
                ApiError::field(
                    "body",
                    format!(
                        "the request body is larger than {} bytes",
                        self.config.max_body
                    ),
                )
            })?;
        Ok(bytes.to_vec())
    }

    pub(crate) fn actor(caller: &Caller) -> Actor {
        Actor::new(caller.actor())
    }

    /// Key `id` if the caller may manage its owner and use its environment;
    /// 404 otherwise (a malformed id, an unknown id, another owner's key
    /// and, for a key caller, a key of another environment look the same).
    async fn load(&self, caller: &Caller, id: &str) -> Result<KeySummary, ApiError> {
        let id: KeyId = id.parse().map_err(|_| ApiError::not_found())?;
        let summary = self.manager.get(id).await?;
        match &summary.owner {
            Some(owner)
                if caller.may_manage(owner)
                    && caller.bounds().allows_environment(summary.environment) =>
            {
                Ok(summary)
            }
            _ => Err(ApiError::not_found()),
        }
    }

    /// [`load`](Self::load), for a call that changes the key: the key as a
    /// whole must be within the caller's bounds (a narrow management key
    /// may not re-enable, widen, rotate, derive from, disable or remove a
    /// key that holds more than it does).
    async fn load_within(&self, caller: &Caller, id: &str) -> Result<KeySummary, ApiError> {
        let summary = self.load(caller, id).await?;
        within_bounds(&summary, caller.bounds())?;
        Ok(summary)
    }

    /// Whether a key caller has a credit budget of its own: a key balance
    /// on its limits account, exhausted or not (`false` for every other
    /// caller). Read with a cost-0 admission: spends nothing, charges no
    /// window.
    async fn has_budget(&self, caller: &Caller) -> Result<bool, ApiError> {
        let Some(account) = caller.spends_from() else {
            return Ok(false);
        };
        let probe =
            Admission::new(account.as_u64(), Quota::unlimited()).credits(CreditCharge::new(0));
        let verdict = self
            .manager
            .authenticator()
            .limits()
            .admit(&probe)
            .await
            .map_err(apikey::Error::StoreUnavailable)?;
        Ok(match verdict {
            Verdict::Admitted { credits, .. } => credits.is_some_and(|c| c.key_remaining.is_some()),
            Verdict::CreditsExhausted { exhausted, .. } => exhausted.scope == CreditScope::Key,
            Verdict::RateLimited { .. } => false,
        })
    }

    /// A key caller with a credit budget of its own creates no key: a new
    /// key starts with no budget, so the caller would escape its own
    /// through it; it derives instead (the child shares or carves from the
    /// budget). 403 field `credits`.
    async fn may_create(&self, caller: &Caller) -> Result<(), ApiError> {
        if self.has_budget(caller).await? {
            return Err(ApiError::escalation(
                "credits",
                "a key with a credit budget of its own cannot create keys (they would not \
                 spend from it): derive one instead",
            ));
        }
        Ok(())
    }

    /// Such a caller may derive from or rotate only a key that spends from
    /// its account too: a sibling's child or successor spends from the
    /// sibling's account, so the caller would escape its budget through it
    /// as through a key it creates. 403 field `credits`.
    async fn within_budget(&self, caller: &Caller, target: &KeySummary) -> Result<(), ApiError> {
        if caller.spends_from() == Some(target.limits_account().unwrap_or(target.id))
            || !self.has_budget(caller).await?
        {
            return Ok(());
        }
        Err(ApiError::escalation(
            "credits",
            "a key with a credit budget of its own may derive from or rotate only keys that \
             spend from it: derive from this key instead",
        ))
    }

    /// A management key (not an account admin's) may rotate or derive from
    /// only a key on its own plan: the successor keeps the target's plan
    /// and a child shares its parent's windows, so the caller would escape
    /// its own quota through them as through a key it creates. 403 field
    /// `plan`.
    fn within_plan(caller: &Caller, target: &KeySummary) -> Result<(), ApiError> {
        let is_key = caller.spends_from().is_some();
        let target_plan = target.metadata.get(crate::PLAN_KEY).map(String::as_str);
        if !is_key || caller.is_admin() || target_plan == caller.plan() {
            return Ok(());
        }
        Err(ApiError::escalation(
            "plan",
            "a key may rotate or derive from only keys on its own plan",
        ))
    }

    fn now(&self) -> Timestamp {
        self.manager.clock().now()
    }
}

/// Same-origin and custom-header check for cookie sessions: a state-changing
/// call must carry [`CSRF_HEADER`] and, when the browser sends `Origin`, come
/// from the request's own host or an allowed origin.
fn csrf_check(parts: &Parts, config: &ManageConfig) -> Result<(), ApiError> {
    if !parts.headers.contains_key(CSRF_HEADER) {
        return Err(ApiError::field(
            CSRF_HEADER,
            "a state-changing call from a browser session must carry the X-Apikey-Csrf header",
        ));
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        // `Host` in HTTP/1.1; HTTP/2 carries the host in the request's
        // `:authority`, which is the URI's authority here.
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let own = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host) && !host.is_empty());
        if !own && !config.allowed_origins.iter().any(|o| o == origin) {
            return Err(ApiError::field(
                "origin",
                "cross-origin state-changing calls are refused",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method("POST").uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_own_origin_is_read_from_host_or_the_http2_authority() {
        let config = ManageConfig::new("sk_live_");
        let csrf = (CSRF_HEADER, "1");
        let ok = |p: &Parts| csrf_check(p, &config).is_ok();
        // HTTP/1.1: the `Host` header.
        assert!(ok(&parts(
            "/v1/api-keys",
            &[
                csrf,
                ("host", "keys.example"),
                ("origin", "https://keys.example")
            ]
        )));
        // HTTP/2: no `Host`, the authority in the URI.
        assert!(ok(&parts(
            "https://keys.example/v1/api-keys",
            &[csrf, ("origin", "https://keys.example")]
        )));
        // Another origin, either way; and no host at all.
        assert!(!ok(&parts(
            "https://keys.example/v1/api-keys",
            &[csrf, ("origin", "https://evil.example")]
        )));
        assert!(!ok(&parts(
            "/v1/api-keys",
            &[
                csrf,
                ("host", "keys.example"),
                ("origin", "https://evil.example")
            ]
        )));
        assert!(!ok(&parts(
            "/v1/api-keys",
            &[csrf, ("origin", "https://keys.example")]
        )));
        // User information in the authority never equals an origin.
        assert!(!ok(&parts(
            "https://evil.example@keys.example/v1/api-keys",
            &[csrf, ("origin", "https://keys.example")]
        )));
    }

    /// `%` must be followed by two hex digits: `u8::from_str_radix` also
    /// takes a sign, so `%+5` read as byte 5 (a control character) instead
    /// of being refused.
    #[test]
    fn percent_decode_takes_only_two_hex_digits() {
        assert_eq!(parse::percent_decode("a%41%2f+b").as_deref(), Some("aA/ b"));
        for bad in ["%+5", "%+f", "%-1", "%4", "%", "%zz", "%ff", "% 5"] {
            assert_eq!(parse::percent_decode(bad), None, "{bad:?}");
        }
    }
}
