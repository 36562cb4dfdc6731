//! The `/v1/api-keys` routes: parsing, the authorization rules, and the
//! calls into [`KeyManager`].

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use apikey::limits::{CreditBalances, Limits};
use apikey::{
    Actor, Clock, Derivation, Environment, ErrorCode, IpNet, KeyId, KeyManager, KeyStoreWrite,
    KeySummary, KeyUpdate, MAX_SCOPES_PER_KEY, NewKey, Rotation, Scope, UsageStore,
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
use time::OffsetDateTime;

use crate::caller::{Bounds, Caller, ResolveCaller, Via};
use crate::config::{CSRF_HEADER, ManageConfig};
use crate::error::ApiError;
use crate::wire::{
    CreateRequest, CreatedKey, DeriveRequest, KeyDetails, KeyItem, KeyList, PatchRequest,
    RotateRequest,
};

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
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The caller's actor id (`None`: the caller was not resolved).
    pub actor: Option<String>,
    /// `list`, `create`, `get`, `update`, `disable`, `enable`, `rotate`, `derive`,
    /// `revoke`, `credits_get`, `credits_set`.
    pub action: &'static str,
    /// The key named in the path, when there is one (as given).
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
        Self::routes(&shared)
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
            .route("/v1/api-keys/{id}/derive", post(derive::<S, C, L, R>))
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
                .with_state(shared),
        )
    }
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

    fn actor(caller: &Caller) -> Actor {
        Actor::new(caller.actor())
    }

    /// Key `id` if the caller may manage its owner; 404 otherwise (a
    /// malformed id, an unknown id and another owner's key look the same).
    async fn load(&self, caller: &Caller, id: &str) -> Result<KeySummary, ApiError> {
        let id: KeyId = id.parse().map_err(|_| ApiError::not_found())?;
        let summary = self.manager.get(id).await?;
        match &summary.owner {
            Some(owner) if caller.may_manage(owner) => Ok(summary),
            _ => Err(ApiError::not_found()),
        }
    }

    fn now(&self) -> OffsetDateTime {
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
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
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

// ----- parsing -----

fn parse_json<T: DeserializeOwned + Default>(bytes: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if empty_ok {
            return Ok(T::default());
        }
        return Err(ApiError::field("body", "a JSON object is required"));
    }
    parse_body(bytes)
}

pub(crate) fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner().to_string();
        // `unknown field `x`, expected ...`: name the unknown field itself.
        let field = inner
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
            .or_else(|| {
                inner
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| match e.path().to_string() {
                p if p == "." => "body".to_owned(),
                p => p,
            });
        let message = if inner.starts_with("unknown field") {
            format!("unknown field `{field}`")
        } else if inner.starts_with("missing field") {
            format!("`{field}` is required")
        } else {
            format!("`{field}` has the wrong type or the body is not JSON")
        };
        ApiError::field(field, message)
    })?;
    // Nothing but whitespace may follow the object.
    de.end()
        .map_err(|_| ApiError::field("body", "the body must be one JSON object"))?;
    Ok(value)
}

/// A name or description: not blank (names), not too long, no control
/// characters, no markup.
fn check_text(field: &str, text: &str, max: usize, blank_ok: bool) -> Result<(), ApiError> {
    if !blank_ok && text.trim().is_empty() {
        return Err(ApiError::field(
            field,
            format!("`{field}` must not be empty"),
        ));
    }
    if text.chars().count() > max {
        return Err(ApiError::field(
            field,
            format!("`{field}` is longer than {max} characters"),
        ));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(ApiError::field(
            field,
            format!("`{field}` must not contain control characters"),
        ));
    }
    if text.contains(['<', '>']) {
        return Err(ApiError::field(
            field,
            format!("`{field}` must not contain markup (< or >)"),
        ));
    }
    Ok(())
}

fn parse_time(field: &str, text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, ApiError> {
    let t = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
        |_| {
            ApiError::field(
                field,
                format!("`{field}` must be an RFC 3339 time such as 2026-10-14T00:00:00Z"),
            )
        },
    )?;
    let t = apikey::check_time(t)
        .map_err(|_| ApiError::field(field, format!("`{field}` is out of the supported range")))?;
    if t <= now {
        return Err(ApiError::field(
            field,
            format!("`{field}` must be in the future"),
        ));
    }
    Ok(t)
}

fn parse_scopes(
    list: &[String],
    config: &ManageConfig,
    bounds: &Bounds,
) -> Result<Vec<String>, ApiError> {
    if list.len() > MAX_SCOPES_PER_KEY {
        return Err(ApiError::invalid_scope(format!(
            "at most {MAX_SCOPES_PER_KEY} permissions"
        )));
    }
    for text in list {
        let scope = Scope::parse(text)
            .map_err(|_| ApiError::invalid_scope("a permission is not a valid scope"))?;
        if !config.scopes.is_empty() && !config.scopes.iter().any(|s| s.name == *text) {
            return Err(ApiError::invalid_scope(
                "a permission is not one this service offers",
            ));
        }
        if !bounds.grants_scope(&scope) {
            return Err(ApiError::escalation(
                "permissions",
                "a key cannot be given a permission its creator does not hold",
            ));
        }
    }
    Ok(list.to_vec())
}

fn parse_allowlist(list: &[String], bounds: &Bounds) -> Result<Vec<IpNet>, ApiError> {
    if list.len() > MAX_ALLOWLIST {
        return Err(ApiError::field(
            "ip_allowlist",
            format!("at most {MAX_ALLOWLIST} address ranges"),
        ));
    }
    let nets = list
        .iter()
        .map(|s| {
            s.parse::<IpNet>().or_else(|_| {
                s.parse::<IpAddr>().map_err(|_| ()).and_then(|ip| {
                    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).map_err(|_| ())
                })
            })
        })
        .collect::<Result<Vec<_>, ()>>()
        .map_err(|()| {
            ApiError::field(
                "ip_allowlist",
                "`ip_allowlist` entries must be addresses or CIDR ranges (203.0.113.0/24)",
            )
        })?;
    if !bounds.covers_allowlist(&nets) {
        return Err(ApiError::escalation(
            "ip_allowlist",
            "a key cannot be usable from addresses its creator may not use",
        ));
    }
    Ok(nets)
}

/// The expiry a new or changed key gets: at most the caller's own.
fn bounded_expiry(
    asked: Option<OffsetDateTime>,
    bounds: &Bounds,
    default_to_bound: bool,
) -> Result<Option<OffsetDateTime>, ApiError> {
    match (asked, bounds.expires_at) {
        (Some(a), Some(b)) if a > b => Err(ApiError::escalation(
            "expires_at",
            "a key cannot outlive the key that creates or changes it",
        )),
        (None, Some(b)) if default_to_bound => Ok(Some(b)),
        (None, Some(_)) => Err(ApiError::escalation(
            "expires_at",
            "a key cannot outlive the key that creates or changes it",
        )),
        (a, _) => Ok(a),
    }
}

fn environment_named(text: &str) -> Option<Environment> {
    match text {
        "live" => Some(Environment::Live),
        "test" => Some(Environment::Test),
        _ => None,
    }
}

/// The key as a whole is within the caller's bounds (rotation hands the
/// caller a working copy of it).
fn within_bounds(s: &KeySummary, bounds: &Bounds) -> Result<(), ApiError> {
    for text in &s.scopes {
        let scope = Scope::parse(text).map_err(|_| ApiError::not_found())?;
        if !bounds.grants_scope(&scope) {
            return Err(ApiError::escalation(
                "permissions",
                "this key holds a permission the caller does not hold",
            ));
        }
    }
    if !bounds.allows_environment(s.environment) {
        return Err(ApiError::escalation(
            "environment",
            "this key is of an environment the caller may not issue in",
        ));
    }
    if !bounds.covers_allowlist(&s.ip_allowlist) {
        return Err(ApiError::escalation(
            "ip_allowlist",
            "this key is usable from addresses the caller may not use",
        ));
    }
    Ok(())
}

/// A JSON answer; `secret`: it holds a full key (`Cache-Control: no-store`
/// is on every answer anyway, and the caller must not cache it).
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_string(value).unwrap_or_default();
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `name=value&...`, percent-decoded; unknown names refused.
fn query_pairs(parts: &Parts, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for pair in parts.uri.query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name).ok_or_else(|| ApiError::field("query", "bad encoding"))?;
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::field(
                name.clone(),
                format!("unknown query parameter `{name}`"),
            ));
        }
        let value = percent_decode(value)
            .ok_or_else(|| ApiError::field(name.clone(), "bad percent-encoding"))?;
        out.push((name, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn path_id(uri: &http::Uri) -> String {
    // `/.../api-keys/{id}[/action]`: the segment after `api-keys`.
    let mut segs = uri.path().split('/');
    segs.by_ref().find(|s| *s == "api-keys");
    segs.next().unwrap_or("").to_owned()
}

// ----- handlers -----

type St<S, C, L, R> = State<Arc<Shared<S, C, L, R>>>;

macro_rules! handler {
    ($name:ident, $action:literal, $op:ident, $with_id:literal) => {
        async fn $name<S, C, L, R>(State(st): St<S, C, L, R>, req: Request) -> Response
        where
            S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
            C: Clock + Send + Sync + 'static,
            L: Limits + 'static,
            R: ResolveCaller,
        {
            let id = $with_id.then(|| path_id(req.uri()));
            st.call($action, id, req, Shared::$op).await
        }
    };
}

handler!(list, "list", op_list, false);
handler!(create, "create", op_create, false);
handler!(show, "get", op_show, true);
handler!(update, "update", op_update, true);
handler!(remove, "revoke", op_remove, true);
handler!(disable, "disable", op_disable, true);
handler!(enable, "enable", op_enable, true);
handler!(rotate, "rotate", op_rotate, true);
handler!(derive, "derive", op_derive, true);

impl<S, C, L, R> Shared<S, C, L, R>
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + 'static,
    R: ResolveCaller,
{
    async fn op_list(self: Arc<Self>, caller: Caller, parts: Parts, _body: Vec<u8>) -> Outcome {
        let st = self;
        let mut owner = None;
        let mut status = None;
        let mut within = None;
        let mut cursor = None;
        let mut limit = 50usize;
        for (name, value) in query_pairs(
            &parts,
            &["owner", "status", "expiring_within_days", "cursor", "limit"],
        )? {
            match name.as_str() {
                "owner" => owner = Some(value),
                "status" => {
                    const STATES: [&str; 6] = [
                        "active",
                        "rotation_grace",
                        "disabled",
                        "revoked",
                        "expired",
                        "not_yet_valid",
                    ];
                    if !STATES.contains(&value.as_str()) {
                        return Err(ApiError::field(
                            "status",
                            "`status` must be one of active, rotation_grace, disabled, revoked, expired, not_yet_valid",
                        ));
                    }
                    status = Some(value);
                }
                "expiring_within_days" => {
                    let days: u16 = value
                        .parse()
                        .ok()
                        .filter(|d| (1..=3650).contains(d))
                        .ok_or_else(|| {
                            ApiError::field(
                                "expiring_within_days",
                                "a whole number of days, 1 to 3650",
                            )
                        })?;
                    within = Some(time::Duration::days(i64::from(days)));
                }
                "cursor" => cursor = Some(value),
                _ => {
                    limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| ApiError::field("limit", "`limit` must be 1 to 100"))?;
                }
            }
        }
        let owners: Vec<String> = match owner {
            Some(o) if caller.may_manage(&o) => vec![o],
            Some(_) => {
                return Err(ApiError::escalation(
                    "owner",
                    "the caller may not manage this owner's keys",
                ));
            }
            None => match caller.account() {
                Some(account) => account.iter().cloned().collect(),
                None => vec![caller.owner().to_owned()],
            },
        };
        let mut keys = Vec::new();
        for o in &owners {
            keys.extend(match within {
                Some(w) => st.manager.expiring_soon(Some(o), w).await?,
                None => st.manager.list(o).await?,
            });
        }
        keys.sort_by_key(|k| (k.created_at, k.id.as_u64()));
        keys.retain(|k| {
            status
                .as_ref()
                .is_none_or(|s| crate::wire::state_name(k) == *s)
        });
        let start = match cursor {
            None => 0,
            Some(c) => {
                keys.iter()
                    .position(|k| k.id.to_string() == c)
                    .ok_or_else(|| ApiError::field("cursor", "unknown `cursor`"))?
                    + 1
            }
        };
        let page: Vec<&KeySummary> = keys.iter().skip(start).take(limit).collect();
        let has_more = start + page.len() < keys.len();
        let list = KeyList {
            next_cursor: has_more
                .then(|| page.last().map(|k| k.id.to_string()))
                .flatten(),
            has_more,
            data: page.into_iter().map(KeyItem::new).collect(),
        };
        Ok(json(StatusCode::OK, &list))
    }

    async fn op_create(self: Arc<Self>, caller: Caller, _parts: Parts, body: Vec<u8>) -> Outcome {
        let st = self;
        let req: CreateRequest = parse_body(&body)?;
        let now = st.now();
        let bounds = caller.bounds();
        check_text("name", &req.name, MAX_NAME_CHARS, false)?;
        if let Some(d) = &req.description {
            check_text("description", d, MAX_DESCRIPTION_CHARS, true)?;
        }
        let env = match &req.environment {
            None => Environment::Live,
            Some(e) => environment_named(e)
                .filter(|e| st.config.prefix_for(*e).is_some())
                .ok_or_else(|| {
                    ApiError::field(
                        "environment",
                        "`environment` is not one this service offers",
                    )
                })?,
        };
        if !bounds.allows_environment(env) {
            return Err(ApiError::escalation(
                "environment",
                "a key cannot be issued in an environment its creator may not use",
            ));
        }
        let scopes = parse_scopes(&req.permissions, &st.config, bounds)?;
        let expires = req
            .expires_at
            .as_deref()
            .map(|t| parse_time("expires_at", t, now))
            .transpose()?;
        let expires = bounded_expiry(expires, bounds, true)?;
        // None given: the caller's own (a key minted by a key inherits it).
        let allow = if req.ip_allowlist.is_empty() {
            bounds.ip_allowlist.clone()
        } else {
            parse_allowlist(&req.ip_allowlist, bounds)?
        };
        let owner = match req.owner {
            None => caller.owner().to_owned(),
            Some(o) if caller.is_admin() && caller.may_manage(&o) => o,
            Some(o) if o == caller.owner() => o,
            Some(_) => {
                return Err(ApiError::escalation(
                    "owner",
                    "the caller may not create keys for this owner",
                ));
            }
        };
        if let Some(plan) = &req.plan {
            if !st.config.plans.contains(plan) {
                return Err(ApiError::field(
                    "plan",
                    "`plan` is not one this service offers",
                ));
            }
            if !caller.is_admin() {
                return Err(ApiError::escalation(
                    "plan",
                    "only an account admin may choose a key's plan",
                ));
            }
        }
        let prefix = st.config.prefix_for(env).unwrap_or_default();
        let mut new = NewKey::new(prefix)
            .owner(owner)
            .name(req.name)
            .scopes(scopes);
        new.description = req.description.filter(|d| !d.is_empty());
        new.expires_at = expires;
        new.ip_allowlist = allow;
        if let Some(plan) = req.plan {
            new = new.metadata(crate::PLAN_KEY, plan);
        }
        let (key, summary) = st.manager.create(new, &Self::actor(&caller)).await?;
        Ok(json(StatusCode::CREATED, &CreatedKey::new(&key, &summary)))
    }

    async fn op_show(self: Arc<Self>, caller: Caller, parts: Parts, _body: Vec<u8>) -> Outcome {
        let st = self;
        let s = st.load(&caller, &path_id(&parts.uri)).await?;
        Ok(json(StatusCode::OK, &KeyDetails::new(&s)))
    }

    async fn op_update(self: Arc<Self>, caller: Caller, parts: Parts, body: Vec<u8>) -> Outcome {
        let st = self;
        let req: PatchRequest = parse_json(&body, false)?;
        let s = st.load(&caller, &path_id(&parts.uri)).await?;
        let now = st.now();
        let bounds = caller.bounds();
        let mut update = KeyUpdate::new();
        if let Some(name) = req.name {
            check_text("name", &name, MAX_NAME_CHARS, false)?;
            update = update.name(name);
        }
        if let Some(d) = req.description {
            if let Some(d) = &d {
                check_text("description", d, MAX_DESCRIPTION_CHARS, true)?;
            }
            update = update.description(d.filter(|d| !d.is_empty()));
        }
        if let Some(p) = req.permissions {
            update = update.scopes(parse_scopes(&p, &st.config, bounds)?);
        }
        if let Some(e) = req.expires_at {
            let e = e
                .as_deref()
                .map(|t| parse_time("expires_at", t, now))
                .transpose()?;
            update = update.expires_at(bounded_expiry(e, bounds, false)?);
        }
        if let Some(list) = req.ip_allowlist {
            let nets = parse_allowlist(&list, bounds)?;
            update = update.ip_allowlist(nets);
        }
        let after = st
            .manager
            .update(s.id, update, &Self::actor(&caller))
            .await?;
        Ok(json(StatusCode::OK, &KeyDetails::new(&after)))
    }

    async fn op_disable(self: Arc<Self>, caller: Caller, parts: Parts, _: Vec<u8>) -> Outcome {
        self.set_active(caller, parts, false).await
    }

    async fn op_enable(self: Arc<Self>, caller: Caller, parts: Parts, _: Vec<u8>) -> Outcome {
        self.set_active(caller, parts, true).await
    }

    /// Enable or disable (seeds 002 and 004): effective for the next
    /// verification.
    async fn set_active(&self, caller: Caller, parts: Parts, active: bool) -> Outcome {
        let s = self.load(&caller, &path_id(&parts.uri)).await?;
        let actor = Self::actor(&caller);
        let after = if active {
            self.manager.enable(s.id, &actor).await?
        } else {
            self.manager.disable(s.id, &actor).await?
        };
        Ok(json(StatusCode::OK, &KeyDetails::new(&after)))
    }

    async fn op_rotate(self: Arc<Self>, caller: Caller, parts: Parts, body: Vec<u8>) -> Outcome {
        let st = self;
        let req: RotateRequest = parse_json(&body, true)?;
        let s = st.load(&caller, &path_id(&parts.uri)).await?;
        let bounds = caller.bounds();
        within_bounds(&s, bounds)?;
        let now = st.now();
        let grace = match req.grace_period_seconds {
            None => st.config.default_grace,
            Some(secs) if secs >= 0 => time::Duration::seconds(secs),
            Some(_) => {
                return Err(ApiError::field(
                    "grace_period_seconds",
                    "`grace_period_seconds` must not be negative",
                ));
            }
        };
        let expires = req
            .expires_at
            .as_deref()
            .map(|t| parse_time("expires_at", t, now))
            .transpose()?;
        let mut rotation = Rotation::with_grace(grace);
        if let Some(e) = bounded_expiry(expires, bounds, true)? {
            rotation = rotation.expires_at(e);
        }
        let actor = Self::actor(&caller);
        let (key, new) = st
            .manager
            .rotate(s.id, rotation, &actor)
            .await
            .map_err(|e| {
                let mut api = ApiError::from(e);
                if api.code() == ErrorCode::InvalidRequest {
                    api = ApiError::field("grace_period_seconds", api.message().to_owned());
                }
                api
            })?;
        let old = st.manager.get(s.id).await?;
        Ok(json(
            StatusCode::CREATED,
            &CreatedKey::new(&key, &new).rotation(&old),
        ))
    }

    /// A child of the key that only narrows it (for agents): the rules are
    /// `KeyManager::derive`'s; the caller's own bounds apply as on create.
    async fn op_derive(self: Arc<Self>, caller: Caller, parts: Parts, body: Vec<u8>) -> Outcome {
        let st = self;
        let req: DeriveRequest = parse_body(&body)?;
        check_text("name", &req.name, MAX_NAME_CHARS, false)?;
        let s = st.load(&caller, &path_id(&parts.uri)).await?;
        let bounds = caller.bounds();
        within_bounds(&s, bounds)?;
        let now = st.now();
        let mut derivation = Derivation::new(req.name);
        if let Some(list) = &req.permissions {
            derivation = derivation.scopes(parse_scopes(list, &st.config, bounds)?);
        }
        let expires = req
            .expires_at
            .as_deref()
            .map(|t| parse_time("expires_at", t, now))
            .transpose()?;
        if let Some(e) = bounded_expiry(expires, bounds, false)? {
            derivation = derivation.expires_at(e);
        }
        if let Some(list) = &req.ip_allowlist {
            derivation = derivation.ip_allowlist(parse_allowlist(list, bounds)?);
        }
        let actor = Self::actor(&caller);
        let (key, child) = st.manager.derive(s.id, derivation, &actor).await?;
        Ok(json(StatusCode::CREATED, &CreatedKey::new(&key, &child)))
    }

    async fn op_remove(self: Arc<Self>, caller: Caller, parts: Parts, _body: Vec<u8>) -> Outcome {
        let st = self;
        let mut permanent = false;
        for (_, value) in query_pairs(&parts, &["permanent"])? {
            permanent = match value.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ApiError::field(
                        "permanent",
                        "`permanent` must be true or false",
                    ));
                }
            };
        }
        let s = st.load(&caller, &path_id(&parts.uri)).await?;
        let actor = Self::actor(&caller);
        if permanent {
            st.manager.delete(s.id, &actor).await?;
            let mut r = StatusCode::NO_CONTENT.into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(r);
        }
        let after = st
            .manager
            .revoke(s.id, "revoked through the management API", &actor)
            .await?;
        Ok(json(StatusCode::OK, &KeyDetails::new(&after)))
    }
}
