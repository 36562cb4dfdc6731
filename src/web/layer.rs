use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request};

use super::gate::{Admitted, Decision, Gate, Rejection};
use super::response::ErrorResponse;
use super::route::Route;
use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::limits::{Limits, NoLimits};
use crate::store::KeyStore;
use crate::timestamp::Timestamp;
use crate::verify::VerifiedKey;

/// The client address used by the failure throttle. Insert it as a request
/// extension (e.g. from `X-Forwarded-For`, only behind a proxy you trust)
/// to override the socket peer address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

/// tower / axum integration (feature `axum`): a layer and extractors.
///
/// * [`ApiKeyLayer`]: a tower layer running a [`Gate`] for one [`Route`]:
///   authenticate, check the route's scopes, rate limit, spend credits, put
///   the [`Admitted`] request info (with its [`VerifiedKey`], `.key`) into
///   the request extensions (one entry: read the key with the
///   [`VerifiedKey`] extractor, or `extensions().get::<Admitted>()`) and
///   add `X-RateLimit-*` headers to the response; refusals are
///   answered with the JSON error body, `WWW-Authenticate`, `Retry-After` and
///   the rate-limit headers. A store that fails or exceeds the gate's
///   optional [`with_store_timeout`](Gate::with_store_timeout) answers 503.
///   For a publishable key the request's origin is checked (403
///   `ORIGIN_NOT_ALLOWED`), an admitted one gets the CORS headers, and a
///   CORS preflight is answered 204 by the layer (see
///   [`publishable`](crate::web::publishable); mount the layer with
///   `.layer(..)` on the method router so that `OPTIONS` reaches it).
/// * Extractors: [`VerifiedKey`] and [`Admitted`] (401 `MISSING_API_KEY` when
///   absent; `Option<VerifiedKey>` for routes that also accept other
///   credentials, with [`ForeignCredentials::PassThrough`](crate::web::ForeignCredentials::PassThrough)).
/// * The client address (for IP allowlists and the failure throttle) comes
///   from a [`ClientIp`] extension, or else a `SocketAddr` extension. The
///   layer depends on axum-core only, not on axum's server, so it cannot
///   read axum's `ConnectInfo` itself: set `ClientIp` from it (or from a
///   trusted proxy header) in a small middleware, as `apikey-sqlx/examples/axum_server.rs`
///   does:
///
/// ```
/// use std::net::SocketAddr;
/// use axum::extract::{ConnectInfo, Request};
/// use axum::middleware::Next;
/// use axum::response::Response;
///
/// async fn client_ip(ConnectInfo(peer): ConnectInfo<SocketAddr>, mut req: Request, next: Next) -> Response {
///     req.extensions_mut().insert(apikey::web::ClientIp(peer.ip()));
///     next.run(req).await
/// }
/// // Router::new().route(...).layer(axum::middleware::from_fn(client_ip))
/// ```
///
/// The layer fails closed: only a request with a valid key of ours that
/// meets the route's requirement reaches the inner service. Every other
/// request, including one with credentials that are not ours (`Basic …`,
/// `Bearer <jwt>`, `Token x`), gets a 401 with the JSON body and the
/// `WWW-Authenticate` challenge. An API that also takes other credentials
/// opts in with
/// [`Route::with_foreign_credentials(ForeignCredentials::PassThrough)`](Route::with_foreign_credentials)
/// on the routes that take other credentials (one gate serves both kinds):
/// such requests then reach the inner service **unauthenticated**, without
/// a [`VerifiedKey`] or [`Admitted`] extension, and the handler (or a layer
/// of its own) must authenticate them.
///
/// ```
/// use std::sync::Arc;
/// use axum::{Router, routing::get};
/// use apikey::*;
/// use apikey::web::ApiKeyLayer;
/// use apikey::web::{Gate, QuotaTable, Route};
/// use apikey::limits::{MemoryLimits, Quota};
///
/// async fn list_tasks(key: VerifiedKey) -> String {
///     format!("tasks of {}", key.owner().unwrap_or("nobody"))
/// }
///
/// # fn main() -> Result<(), Error> {
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[9; 32])?)?);
/// let gate = Arc::new(
///     Gate::new(Authenticator::new(verifier, MemoryStore::new()))
///         .with_limits(MemoryLimits::new())
///         .with_quotas(QuotaTable::fixed(Quota::unlimited().per_minute(100))),
/// );
/// let app: Router = Router::new().route(
///     "/v1/tasks",
///     get(list_tasks).route_layer(ApiKeyLayer::new(Arc::clone(&gate), Route::new(Requirement::scope("tasks:read")?))),
/// );
/// # let _ = app;
/// # Ok(()) }
/// ```
///
/// A tower layer that guards the wrapped service with a [`Gate`] for one
/// [`Route`]. Cheap to clone.
#[derive(Debug)]
pub struct ApiKeyLayer<S, C = SystemClock, L = NoLimits> {
    gate: Arc<Gate<S, C, L>>,
    route: Arc<Route>,
}

impl<S, C, L> Clone for ApiKeyLayer<S, C, L> {
    fn clone(&self) -> Self {
        Self {
            gate: Arc::clone(&self.gate),
            route: Arc::clone(&self.route),
        }
    }
}

impl<S, C, L> ApiKeyLayer<S, C, L> {
    /// A layer running `gate` for `route`: every setting is the gate's or
    /// the route's (the store timeout, [`Gate::with_store_timeout`]; what to
    /// do with foreign credentials, [`Route::with_foreign_credentials`]);
    /// the layer only maps the gate's [`Decision`] to a response.
    pub fn new(gate: Arc<Gate<S, C, L>>, route: Route) -> Self {
        Self {
            gate,
            route: Arc::new(route),
        }
    }
}

impl<Inner, S, C, L> tower_layer::Layer<Inner> for ApiKeyLayer<S, C, L> {
    type Service = ApiKeyService<Inner, S, C, L>;

    fn layer(&self, inner: Inner) -> Self::Service {
        ApiKeyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ApiKeyLayer`].
#[derive(Debug)]
pub struct ApiKeyService<Inner, S, C = SystemClock, L = NoLimits> {
    inner: Inner,
    layer: ApiKeyLayer<S, C, L>,
}

impl<Inner: Clone, S, C, L> Clone for ApiKeyService<Inner, S, C, L> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<Inner, B, ResBody, S, C, L> tower_service::Service<Request<B>>
    for ApiKeyService<Inner, S, C, L>
where
    Inner: tower_service::Service<Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    Inner::Future: Send + 'static,
    B: Send + 'static,
    ResBody: From<String> + Send + 'static,
    S: KeyStore + Send + Sync + 'static,
    C: Clock + 'static,
    L: Limits + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = Inner::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone-and-swap idiom: the ready service goes into the future.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // One allocation: an `async` future has no nameable type, so the
        // service's future is boxed (axum boxes every route's future too).
        // Its size is kept under 1 KiB (see `respond`), the size class most
        // allocators serve from a per-thread cache.
        Box::pin(respond(self.layer.clone(), inner, req))
    }
}

/// The whole request: the gate's decision, then the inner service (with
/// the key in the extensions) or the refusal.
///
/// The decision is a future of its own ([`decide`]), so the request, the
/// gate's future and the inner service's future share storage instead of
/// adding up.
// Not an `async fn`, on purpose (see the body).
#[allow(clippy::manual_async_fn)]
fn respond<Inner, B, ResBody, S, C, L>(
    layer: ApiKeyLayer<S, C, L>,
    mut inner: Inner,
    mut req: Request<B>,
) -> impl Future<Output = Result<http::Response<ResBody>, Inner::Error>>
where
    Inner: tower_service::Service<Request<B>, Response = http::Response<ResBody>>,
    ResBody: From<String>,
    S: KeyStore + Send + Sync + 'static,
    C: Clock + 'static,
    L: Limits + 'static,
{
    // An `async` block, not an `async fn`: the arguments are captured
    // in place instead of being copied into the future's locals (the
    // request twice over).
    async move {
        let gate = &layer.gate;
        // A CORS preflight carries no key: answered here when the gate
        // serves publishable keys.
        if req.method() == http::Method::OPTIONS
            && let Some(headers) = gate.preflight(req.method().as_str(), req.headers().iter())
        {
            return Ok(with_headers(
                http::Response::new(ResBody::from(String::new())),
                http::StatusCode::NO_CONTENT,
                headers,
            ));
        }
        // Everything done with the decision happens inside this block, so
        // the decision's storage is not kept across the handler's await
        // (the future's size is what every request allocates).
        let added = {
            let client = client_ip(req.extensions());
            let decision = gate.check_request(&req, client, &layer.route).await;
            match decision {
                Decision::Admitted(mut admitted) => {
                    flush_in_background(gate, admitted.now);
                    // The window and the clock reading of the decision.
                    let numbers = admitted.rate_limit.map(|info| {
                        (
                            info.limit,
                            info.remaining,
                            info.reset_at_unix(admitted.now.as_unix_secs()),
                        )
                    });
                    let cors = admitted.allow_origin.take();
                    // One entry of the request's type map (boxed by
                    // `http`): the documented contract for handlers and
                    // other layers; the `VerifiedKey` extractor reads the
                    // key from it.
                    req.extensions_mut().insert(admitted);
                    Some((numbers, cors))
                }
                Decision::Rejected(rejection) => {
                    return Ok(rejection.to_response().into_http());
                }
                // Only with `ForeignCredentials::PassThrough`: the request
                // goes on unauthenticated, with no headers added.
                Decision::NotOurs => None,
            }
        };
        let mut response = inner.call(req).await?;
        if let Some((numbers, cors)) = added {
            if let Some(numbers) = numbers {
                insert_rate_limit_headers(response.headers_mut(), numbers);
            }
            if let Some(origin) = cors {
                insert_cors_headers(response.headers_mut(), origin);
            }
        }
        Ok(response)
    }
}

/// `response` with `status` and `headers` (names lowercase and static;
/// a value that is not a valid header value is left out).
fn with_headers<B>(
    mut response: http::Response<B>,
    status: http::StatusCode,
    headers: Vec<(&'static str, String)>,
) -> http::Response<B> {
    *response.status_mut() = status;
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// The CORS headers of an admitted publishable key (see
/// [`publishable`](crate::web::publishable)).
fn insert_cors_headers(map: &mut http::HeaderMap, origin: String) {
    if let Ok(origin) = HeaderValue::try_from(origin) {
        map.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        map.append(http::header::VARY, HeaderValue::from_static("Origin"));
    }
}

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The `X-RateLimit-*` headers of an admitted request, as
/// [`rate_limit_headers`](super::response::rate_limit_headers) spells them:
/// static names, and each number written straight into its header value
/// (no intermediate strings).
fn insert_rate_limit_headers(
    map: &mut http::HeaderMap,
    (limit, remaining, reset): (u32, u32, i64),
) {
    map.insert(X_RATELIMIT_LIMIT, number(u64::from(limit)));
    map.insert(X_RATELIMIT_REMAINING, number(u64::from(remaining)));
    map.insert(
        X_RATELIMIT_RESET,
        u64::try_from(reset).map_or_else(|_| HeaderValue::from(reset), number),
    );
}

/// The decimal digits of 0 to 999, three to a row (leading zeros skipped
/// when used).
static SMALL_NUMBERS: [[u8; 3]; 1000] = {
    let mut table = [[0u8; 3]; 1000];
    let mut n = 0;
    while n < 1000 {
        table[n] = [
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ];
        n += 1;
    }
    table
};

/// A header value holding `n` in decimal. Below 1,000 (typical limits and
/// remainders) a static string, with no allocation; above, the digits are
/// copied once into the value (`HeaderValue::from(u64)` would allocate a
/// second time for a number shorter than its 20-byte buffer).
fn number(n: u64) -> HeaderValue {
    if let Some(digits) = usize::try_from(n).ok().and_then(|i| SMALL_NUMBERS.get(i)) {
        let skip = match n {
            0..=9 => 2,
            10..=99 => 1,
            _ => 0,
        };
        if let Ok(text) = std::str::from_utf8(&digits[skip..]) {
            return HeaderValue::from_static(text);
        }
    }
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    let mut rest = n;
    loop {
        start -= 1;
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&buf[start..]).unwrap_or_else(|_| HeaderValue::from(n))
}

/// Starts a usage flush off the request path when one is due (at most once
/// per recorder interval; never without usage recording).
fn flush_in_background<S, C, L>(gate: &Arc<Gate<S, C, L>>, now: Timestamp)
where
    S: KeyStore + Send + Sync + 'static,
    C: Clock + 'static,
    L: Limits + 'static,
{
    if gate.authenticator().usage_flush_due(now)
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        let gate = Arc::clone(gate);
        runtime.spawn(async move {
            // A failed flush keeps its counts for the next one.
            let _ = gate.flush().await;
        });
    }
}

fn client_ip(ext: &http::Extensions) -> Option<IpAddr> {
    ext.get::<ClientIp>()
        .map(|c| c.0)
        .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip))
}

/// The answer when a handler asks for a key the layer did not admit:
/// 401 `MISSING_API_KEY`.
#[derive(Debug)]
pub struct MissingKey;

impl IntoResponse for MissingKey {
    fn into_response(self) -> Response {
        ErrorResponse::from_error(&Error::MissingApiKey).into_response()
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        self.into_http()
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        self.to_response().into_http()
    }
}

/// The key the layer admitted, from the request's one [`Admitted`]
/// extension.
fn admitted_key(parts: &Parts) -> Option<VerifiedKey> {
    parts.extensions.get::<Admitted>().map(|a| a.key.clone())
}

impl<St: Send + Sync> FromRequestParts<St> for VerifiedKey {
    type Rejection = MissingKey;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        admitted_key(parts).ok_or(MissingKey)
    }
}

impl<St: Send + Sync> OptionalFromRequestParts<St> for VerifiedKey {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &St,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(admitted_key(parts))
    }
}

impl<St: Send + Sync> FromRequestParts<St> for Admitted {
    type Rejection = MissingKey;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Admitted>()
            .cloned()
            .ok_or(MissingKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{RateLimitInfo, RateWindow};
    use crate::web::response::rate_limit_headers;
    use std::time::Duration;

    /// The layer writes the `X-RateLimit-*` headers itself (static names,
    /// numbers without intermediate strings); they must read exactly as
    /// `rate_limit_headers`, which the gate's own users and refusals use.
    #[test]
    fn layer_rate_limit_headers_match_rate_limit_headers() {
        let now = Timestamp::from_unix_secs(1_795_564_800).unwrap();
        let numbers = [
            0,
            1,
            9,
            10,
            11,
            99,
            100,
            101,
            999,
            1_000,
            1_001,
            65_535,
            u32::MAX,
        ];
        for (i, &limit) in numbers.iter().enumerate() {
            let remaining = numbers[numbers.len() - 1 - i];
            for reset_after in [0, 1, 59_500_000, 3_600_000_000] {
                let info = RateLimitInfo {
                    window: RateWindow::Minute,
                    limit,
                    remaining,
                    reset_after: Duration::from_micros(reset_after),
                };
                let mut map = http::HeaderMap::new();
                insert_rate_limit_headers(
                    &mut map,
                    (
                        info.limit,
                        info.remaining,
                        info.reset_at_unix(now.as_unix_secs()),
                    ),
                );
                let expected = rate_limit_headers(&info, now);
                assert_eq!(map.len(), expected.len());
                for (name, value) in expected {
                    assert_eq!(map.get(name).unwrap(), value.as_str(), "{name}");
                }
            }
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        let powers = (0..20).flat_map(|k| {
            let p = 10u64.pow(k);
            [p, p - 1, p + 1, p.saturating_mul(7)]
        });
        for n in (0..2_000).chain(powers).chain([1_795_564_861, u64::MAX]) {
            assert_eq!(number(n), n.to_string().as_str());
        }
    }
}
