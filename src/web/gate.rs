use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::Timestamp;

use super::extract::{Extracted, Extractor, PresentedKey, Scheme};
use super::publishable::{self, CorsHeaders};
use super::response::{
    ErrorResponse, MissingKeyDetails, REALM, missing_key_details, rate_limit_headers,
};
use super::route::{ForeignCredentials, QuotaTable, Route};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, StoreError};
use crate::limits::{
    Admission, CreditCharge, FailureClass, Limits, NoLimits, OwnerApi, RateLimitInfo, SpendReceipt,
    SyncLimits, Verdict,
};
use crate::metrics;
use crate::pipeline::Authenticator;
use crate::record::KeyView;
use crate::store::KeyStore;
use crate::verify::{Failure, VerifiedKey};

/// `$f.await` by the admission's `$deadline` (one for all of its steps):
/// past it, the enclosing future returns 503 `STORE_UNAVAILABLE`. Written
/// out where it is used, not as a function: a helper's future would hold
/// `$f` twice (as its argument and as what it awaits).
macro_rules! within {
    ($gate:expr, $deadline:expr, $f:expr, $pipeline_counted:expr) => {{
        let f = $f;
        #[cfg(feature = "axum")]
        let out = match $deadline {
            Some(d) => match tokio::time::timeout_at(d, f).await {
                Ok(out) => out,
                Err(elapsed) => return $gate.timed_out(elapsed, $pipeline_counted),
            },
            None => f.await,
        };
        #[cfg(not(feature = "axum"))]
        let out = {
            let () = $deadline;
            let _ = $pipeline_counted;
            f.await
        };
        out
    }};
}

/// The outcome of [`Gate::check`].
#[derive(Debug)]
pub enum Decision {
    /// Authenticated, allowed, charged: call the handler.
    Admitted(Admitted),
    /// Credentials that are not API keys of ours (e.g. a Bearer JWT), with
    /// [`ForeignCredentials::PassThrough`] only: the request is **not**
    /// authenticated; hand it to whatever authenticates those credentials,
    /// and refuse it if nothing does. With the default
    /// [`ForeignCredentials::Reject`] such requests are
    /// [`Rejected`](Self::Rejected) with 401 `MISSING_API_KEY`.
    NotOurs,
    /// Refused: answer with [`Rejection::to_response`].
    Rejected(Rejection),
}

/// An admitted request.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The verified key (id, owner, scopes, metadata).
    pub key: VerifiedKey,
    /// How the key was presented (warn on deprecated schemes).
    pub scheme: Scheme,
    /// The rate-limit window with the least remaining, if any is enforced.
    pub rate_limit: Option<RateLimitInfo>,
    /// Credits left after this request (`None` when not metering).
    pub credits: Option<SpendReceipt>,
    /// Wall-clock time of the decision (for `X-RateLimit-Reset`).
    pub now: Timestamp,
    /// For a publishable key: the request's origin, which is on the key's
    /// allowlist, to echo in `Access-Control-Allow-Origin` (see
    /// [`publishable`]). `None` for other keys.
    pub allow_origin: Option<String>,
}

impl Admitted {
    /// The headers to add to the response: `X-RateLimit-*` (when a window
    /// is enforced) and, for a publishable key, the CORS headers
    /// (`Access-Control-Allow-Origin`, `Vary: Origin`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers: Vec<_> = self
            .rate_limit
            .iter()
            .flat_map(|info| rate_limit_headers(info, self.now))
            .collect();
        if let Some(origin) = &self.allow_origin {
            headers.extend(publishable::cors_headers(origin.clone()));
        }
        headers
    }
}

/// A refused request.
#[derive(Debug)]
pub struct Rejection {
    /// Why.
    pub error: Error,
    /// The rate-limit numbers, for refusals of an authenticated key (rate
    /// limit, credits).
    pub rate_limit: Option<RateLimitInfo>,
    /// A retry hint not carried by the error (next credit refill).
    pub retry_after: Option<Duration>,
    /// Wall-clock time of the decision.
    pub now: Timestamp,
    realm: Cow<'static, str>,
    /// The `MISSING_API_KEY` details of the gate's extractor.
    missing: Arc<MissingKeyDetails>,
}

impl Rejection {
    fn new(
        error: Error,
        now: Timestamp,
        realm: Cow<'static, str>,
        missing: Arc<MissingKeyDetails>,
    ) -> Self {
        Self {
            error,
            rate_limit: None,
            retry_after: None,
            now,
            realm,
            missing,
        }
    }

    /// The HTTP answer: status, headers (incl. `WWW-Authenticate`,
    /// `Retry-After`, `X-RateLimit-*` where they apply) and JSON body.
    /// `MISSING_API_KEY` details name what the gate's extractor accepts.
    /// A `USAGE_EXCEEDED` refusal carries `Retry-After`, and
    /// `details.retry_after` like every other 429, only when a refill is
    /// scheduled.
    pub fn to_response(&self) -> ErrorResponse {
        let mut r = ErrorResponse::build(
            &self.error,
            &self.realm,
            Some(&self.missing),
            self.retry_after,
        );
        if let Some(info) = &self.rate_limit {
            r = r.with_rate_limit(info, self.now);
        }
        r
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        r.error
    }
}

/// The framework-agnostic web edge: everything between a raw request and a
/// handler.
///
/// A [`Gate`] runs, for one request and one [`Route`]:
///
/// 1. extraction ([`Extractor`]): a missing key is 401 `MISSING_API_KEY`;
///    credentials that are not ours (a Bearer JWT, `Basic`, `Token x`) are
///    refused the same way by default, and give [`Decision::NotOurs`] only
///    with the route's opt-in [`ForeignCredentials::PassThrough`];
/// 2. authentication and the route's scope requirement ([`Authenticator`]),
///    with the failure throttle of the gate's limits bundle: a key id backed
///    off after repeated key-status failures is 429
///    `TOO_MANY_FAILED_ATTEMPTS` before any store call (see
///    [the limits docs](crate::limits)); a failing store is 503
///    `STORE_UNAVAILABLE`, never 401;
/// 3. one admission ([`Limits::admit`]) for the key's rate limit (both
///    windows of the [`Quota`](crate::limits::Quota) its [`QuotaTable`] plan gives) and, when
///    metering, the route's credit cost from the key's and the owner's
///    balances: 429 `RATE_LIMITED` with `Retry-After`, or 429
///    `USAGE_EXCEEDED`. A refused request is charged nothing. Scope, address,
///    environment and origin failures (of native and imported legacy keys
///    alike) are charged to the key's rate limit, under its own plan's
///    quota.
///
/// A publishable key ([`publishable`]) is also
/// checked against the request's `Origin` (`Referer` as fallback), read in
/// the extraction pass: 403 `ORIGIN_NOT_ALLOWED` unless it is on the key's
/// allowlist. [`Gate::preflight`] answers CORS preflights.
///
/// The pipeline's failure keeps what it learned (where it failed, one
/// reason, the parsed id, the record once the secret matched), so the gate
/// never parses a key twice nor classifies an error again.
///
/// [`Decision::Admitted`] carries the verified key and the headers for the
/// response (`X-RateLimit-*`, CORS); [`Decision::Rejected`] turns into an
/// [`ErrorResponse`].
///
/// # Embedding in a hand-written server
///
/// Any framework, or none: give the gate the headers as `(name, value)`
/// pairs, then write the answer it gives.
///
/// ```
/// use std::net::IpAddr;
/// use apikey::web::{Decision, Gate, QuotaTable, Route};
/// use apikey::limits::{MemoryLimits, Quota};
/// use apikey::*;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
/// let store = MemoryStore::new();
/// let (key, record) = verifier.issue(NewKey::new("sk_live_").scopes(["tasks:read"]), apikey::Clock::now(&apikey::SystemClock))?;
/// store.insert_sync(record)?;
/// let gate = Gate::new(Authenticator::new(verifier, store))
///     .with_limits(MemoryLimits::new())
///     .with_quotas(QuotaTable::fixed(Quota::unlimited().per_minute(100).per_hour(1_000)));
/// let read_tasks = Route::new(Requirement::scope("tasks:read")?);
///
/// // Your server loop parsed a request into a header list and a peer address:
/// let header = format!("Bearer {}", key.expose_secret());
/// let headers = vec![("Host", "api.example.com"), ("Authorization", header.as_str())];
/// let peer: IpAddr = "198.51.100.4".parse().unwrap();
///
/// let (status, extra_headers, body) = match gate.check(headers, None, Some(peer), &read_tasks).await {
///     Decision::Admitted(ok) => (200, ok.headers(), format!("hello {}", ok.key.id())),
///     Decision::NotOurs => (401, vec![], "try your JWT handler".to_owned()),
///     Decision::Rejected(no) => {
///         let r = no.to_response();
///         (r.status, r.headers, r.body)
///     }
/// };
/// assert_eq!(status, 200);
/// assert!(extra_headers.iter().any(|(n, v)| *n == "x-ratelimit-remaining" && v == "99"));
/// # let _ = body;
/// # Ok(()) }
/// ```
///
/// # Blocking servers
///
/// With no async runtime, split the pipeline: [`Gate::extract`], a
/// synchronous store lookup through
/// [`Verifier::verify`](crate::Verifier::verify), then
/// [`Gate::charge_blocking`] (rate limit and credits; in-process limits
/// only).
///
/// ```
/// use apikey::web::Extracted;
/// use apikey::web::{Decision, Gate, Route};
/// use apikey::*;
///
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
/// let store = MemoryStore::new();
/// let now = apikey::Clock::now(&apikey::SystemClock);
/// let (key, record) = verifier.issue(NewKey::new("sk_live_"), now)?;
/// store.insert_sync(record)?;
/// let gate = Gate::new(Authenticator::new(verifier, store));
///
/// let headers = [("x-api-key", key.expose_secret())];
/// let answer = match gate.extract(headers, None, None, &Route::any_key()) {
///     Ok(Extracted::Key(presented)) => {
///         let auth = gate.authenticator();
///         let store = auth.store();
///         let verified = auth.verifier().parse(presented.expose_secret()).and_then(|parsed| {
///             let view = store.fetch_sync(parsed.id())?;
///             auth.verifier().verify(&parsed, view, &SystemClock, &Requirement::none(), None)
///         });
///         match verified {
///             Ok(verified) => match gate.charge_blocking(verified, presented.scheme(), &Route::any_key()) {
///                 Decision::Admitted(_) => 200,
///                 Decision::Rejected(no) => no.to_response().status,
///                 Decision::NotOurs => 401,
///             },
///             Err(e) => gate.refuse(e, None).to_response().status,
///         }
///     }
///     Ok(Extracted::NotOurs) => 401,
///     Err(no) => no.to_response().status,
/// };
/// assert_eq!(answer, 200);
/// # Ok::<(), Error>(())
/// ```
///
/// Authentication, scopes, rate limits, credits and the failure throttle
/// for one service. Share it (`Arc`) between requests.
///
/// Generic over the key store `S`, the clock `C` and the limits bundle `L`
/// ([`NoLimits`] by default; [`MemoryLimits`](crate::limits::MemoryLimits)
/// in process; `apikey_redis::RedisLimits` shared by every instance).
#[derive(Debug)]
pub struct Gate<S, C = SystemClock, L = NoLimits> {
    /// The pipeline, with the limits bundle.
    authenticator: Authenticator<S, C, L>,
    extractor: Extractor,
    quotas: QuotaTable,
    credits_api: Option<Cow<'static, str>>,
    realm: Cow<'static, str>,
    /// `MISSING_API_KEY` details for `extractor`, computed once.
    missing: Arc<MissingKeyDetails>,
    /// The bound on the pipeline and the admission.
    store_timeout: Option<Duration>,
    /// A registered prefix is publishable: check origins and answer CORS
    /// preflights (no key can be publishable otherwise: verification
    /// needs a registered prefix).
    cors: bool,
}

impl<S: KeyStore, C: Clock, L: Limits> Gate<S, C, L> {
    /// A gate over `authenticator`'s pipeline and limits bundle (see
    /// [`Authenticator::with_limits`]; [`with_limits`](Self::with_limits)
    /// sets it here too), with no quotas (set
    /// [`with_quotas`](Self::with_quotas)) and no credit metering.
    pub fn new(authenticator: Authenticator<S, C, L>) -> Self {
        let extractor = legacy_bearer(
            Extractor::new(authenticator.verifier().prefixes().clone()),
            &authenticator,
        );
        let missing = Arc::new(missing_key_details(&extractor));
        let cors = authenticator
            .verifier()
            .prefixes()
            .iter()
            .any(|e| e.prefix.is_publishable());
        Self {
            authenticator,
            extractor,
            quotas: QuotaTable::default(),
            credits_api: None,
            realm: Cow::Borrowed(REALM),
            missing,
            store_timeout: None,
            cors,
        }
    }
}

/// `extractor`, also taking Bearer tokens with one of `authenticator`'s
/// declared legacy prefixes as ours.
fn legacy_bearer<S: KeyStore, C: Clock, L: Limits>(
    extractor: Extractor,
    authenticator: &Authenticator<S, C, L>,
) -> Extractor {
    authenticator
        .legacy_prefixes()
        .fold(extractor, |e, (legacy, _)| {
            e.with_legacy_prefix(legacy.to_owned())
        })
}

impl<S, C, L> Gate<Arc<S>, C, L>
where
    S: crate::store::KeyStoreWrite + crate::store::UsageStore,
    C: Clock + Clone,
    L: Limits + Clone,
{
    /// A gate over the pipeline of `manager` ([`KeyManager::authenticator`](crate::KeyManager::authenticator)):
    /// HTTP traffic then gets exactly what `KeyManager::authenticate` does
    /// (usage counts and `last_used_at`, audit events, imported legacy
    /// keys), over the same store.
    pub fn from_manager(manager: &crate::KeyManager<S, C, L>) -> Self {
        Self::new(manager.authenticator().clone())
    }
}

impl<S, C, L> Gate<S, C, L>
where
    S: KeyStore,
    C: Clock,
    L: Limits,
{
    /// Replaces the extractor. Defaults to
    /// [`Extractor::new`] over the verifier's prefixes. Either way, the
    /// authenticator's declared legacy prefixes are added to it
    /// ([`Extractor::with_legacy_prefix`]), so imported keys are taken from
    /// `Authorization: Bearer` too.
    pub fn with_extractor(mut self, extractor: Extractor) -> Self {
        let extractor = legacy_bearer(extractor, &self.authenticator);
        self.missing = Arc::new(missing_key_details(&extractor));
        self.extractor = extractor;
        self
    }

    /// Sets the quotas. Defaults to no limits.
    pub fn with_quotas(mut self, quotas: QuotaTable) -> Self {
        self.quotas = quotas;
        self
    }

    /// Sets the limits bundle: where rate-limit, credit and failure
    /// throttle state lives.
    pub fn with_limits<L2: Limits>(self, limits: L2) -> Gate<S, C, L2> {
        Gate {
            authenticator: self.authenticator.with_limits(limits),
            extractor: self.extractor,
            quotas: self.quotas,
            credits_api: self.credits_api,
            realm: self.realm,
            missing: self.missing,
            store_timeout: self.store_timeout,
            cors: self.cors,
        }
    }

    /// Meters credits: each admitted request costs its route's
    /// [`cost`](Route::cost) from the key's balance and from the owner's
    /// balance for API `api`, both or neither, except on
    /// [`unmetered`](Route::unmetered) routes. Defaults to no metering.
    pub fn with_credits(mut self, api: impl Into<Cow<'static, str>>) -> Self {
        self.credits_api = Some(api.into());
        self
    }

    /// Bounds each request's authentication and admission (the key-store
    /// lookup, and the limits store's round trip); past it the request is
    /// refused with 503 `STORE_UNAVAILABLE` and `Retry-After`. Defaults to
    /// no bound. Needs a tokio runtime with the time driver (feature
    /// `axum`).
    #[cfg(feature = "axum")]
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = Some(timeout);
        self
    }

    /// The store timeout, if any (see `with_store_timeout`).
    pub fn store_timeout(&self) -> Option<Duration> {
        self.store_timeout
    }

    /// The answer to a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) when one of the verifier's
    /// prefixes is publishable: answer it with 204 and these headers (see
    /// [`publishable::preflight`]). `None` for any other request, and for
    /// every request when no prefix is publishable (the preflight then
    /// reaches the service as before).
    pub fn preflight<'h, I, N, V>(&self, method: &str, headers: I) -> Option<CorsHeaders>
    where
        I: IntoIterator<Item = (N, &'h V)>,
        N: AsRef<[u8]>,
        V: AsRef<[u8]> + ?Sized + 'h,
    {
        if !self.cors {
            return None;
        }
        let key_header = if self.extractor.accepts(Scheme::ApiKeyHeader) {
            self.extractor.header_name()
        } else {
            "authorization"
        };
        publishable::preflight(method, headers, key_header)
    }

    /// The realm named in `WWW-Authenticate`. Defaults to `api`.
    pub fn with_realm(mut self, realm: impl Into<Cow<'static, str>>) -> Self {
        self.realm = realm.into();
        self
    }

    /// The realm named in `WWW-Authenticate`.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The authenticator (with the limits bundle).
    pub fn authenticator(&self) -> &Authenticator<S, C, L> {
        &self.authenticator
    }

    /// The extractor.
    pub fn extractor(&self) -> &Extractor {
        &self.extractor
    }

    /// The limits bundle.
    pub fn limits(&self) -> &L {
        self.authenticator.limits()
    }

    /// The quota table.
    pub fn quotas(&self) -> &QuotaTable {
        &self.quotas
    }

    /// Writes the usage the gate's authenticator counted to the store
    /// ([`Authenticator::flush`]); call it from a timer and at shutdown.
    /// The axum layer also starts it in the background, at most once per
    /// usage-flush interval.
    ///
    /// # Errors
    /// As [`Authenticator::flush`].
    pub async fn flush(&self) -> crate::error::Result<u64> {
        self.authenticator.flush().await
    }

    /// The API whose owner balances are charged, if metering.
    pub fn credits_api(&self) -> Option<&str> {
        self.credits_api.as_deref()
    }

    /// Runs the whole pipeline (see the [`web`](crate::web) module docs).
    ///
    /// `headers` as for [`Extractor::extract`]; `query` is the raw query
    /// string; `client` the peer address.
    pub async fn check<'h, I, N, V>(
        &self,
        headers: I,
        query: Option<&'h str>,
        client: Option<IpAddr>,
        route: &Route,
    ) -> Decision
    where
        I: IntoIterator<Item = (N, &'h V)>,
        N: AsRef<[u8]>,
        V: AsRef<[u8]> + ?Sized + 'h,
    {
        self.decide(self.extract(headers, query, client, route), client, route)
            .await
    }

    /// [`check`](Self::check) on an [`http::Request`]: the key's headers
    /// are looked up by name rather than found by comparing every header
    /// ([`Extractor::extract_header_map`]), and the request's method and
    /// path become the key's last-used route
    /// ([`PresentedKey::on_route`]). What the axum layer runs. The path is
    /// the request's URI as the layer sees it: inside axum's
    /// `Router::nest`, without the nest's prefix.
    #[cfg(feature = "http")]
    pub fn check_request<'a, B>(
        &'a self,
        request: &'a http::Request<B>,
        client: Option<IpAddr>,
        route: &'a Route,
    ) -> impl Future<Output = Decision> + 'a {
        // Extraction is synchronous: done now, so the future holds only
        // its answer and the admission (one state machine fewer).
        let uri = request.uri();
        let extracted = self
            .extracted(
                self.extractor
                    .extract_header_map(request.headers(), uri.query()),
                client,
                route,
            )
            .map(|found| match found {
                Extracted::Key(key) => {
                    Extracted::Key(key.on_route(request.method().as_str(), uri.path()))
                }
                other => other,
            });
        self.decide(extracted, client, route)
    }

    /// Steps 2 and 3 for what step 1 gave (see [`admit`](Self::admit)).
    ///
    /// One future for the whole decision: each step that waits on a store
    /// is awaited under the same deadline, and the key is borrowed from
    /// `extracted` where the future holds it, so neither the key nor the
    /// pipeline's result is kept twice in what the web layer boxes on every
    /// request.
    // Not an `async fn`, on purpose: an `async` block captures the
    // arguments in place instead of copying them into its locals.
    #[allow(clippy::result_large_err, clippy::manual_async_fn)]
    fn decide<'a>(
        &'a self,
        extracted: Result<Extracted<'a>, Rejection>,
        client: Option<IpAddr>,
        route: &'a Route,
    ) -> impl Future<Output = Decision> + 'a {
        async move {
            let key = match &extracted {
                Ok(Extracted::Key(key)) => key,
                Ok(Extracted::NotOurs) => return Decision::NotOurs,
                Err(_) => {
                    return match extracted {
                        Err(rejection) => Decision::Rejected(rejection),
                        Ok(_) => Decision::NotOurs,
                    };
                }
            };
            #[cfg(feature = "axum")]
            // A timeout too long to add to the clock is no deadline (as
            // `tokio::time::timeout` treats it).
            let deadline = self
                .store_timeout
                .and_then(|t| tokio::time::Instant::now().checked_add(t));
            #[cfg(not(feature = "axum"))]
            let deadline = ();
            // Without a publishable prefix no key can be publishable: the
            // origin is not looked at.
            let origin = self.cors.then(|| key.origin());
            let failure = 'failed: {
                // In a block of its own: the pipeline's result is not kept
                // across the admission's `await`.
                let verified = 'verified: {
                    let authenticated = self.authenticator.authenticate_kept(
                        key.expose_secret(),
                        &route.requirement,
                        client,
                        origin,
                        key.route(),
                        |r| r,
                    );
                    // Dropped at the deadline, the pipeline counts nothing.
                    match within!(self, deadline, authenticated, false) {
                        Ok(verified) => break 'verified verified,
                        Err(failure) => break 'failed failure,
                    }
                };
                // Only a publishable key, whose origin just passed. (A flag
                // across the admission's `await`, not the header's string.)
                let publishable = origin.is_some() && verified.view().is_publishable();
                let mut decision = within!(
                    self,
                    deadline,
                    self.charge(verified, key.scheme(), route),
                    true
                );
                if let Decision::Admitted(a) = &mut decision {
                    a.allow_origin = origin.filter(|_| publishable).and_then(|o| o.to_header());
                }
                return decision;
            };
            if failure.reason.class() != FailureClass::Authenticated {
                return Decision::Rejected(self.reject(failure.error));
            }
            // A failure of an authenticated key against the request: its
            // rate limit is charged (boxed: the other failures, which
            // attackers drive, do not wait on it).
            Decision::Rejected(within!(
                self,
                deadline,
                Box::pin(self.failed(failure)),
                true
            ))
        }
    }

    /// 503 `STORE_UNAVAILABLE` for an admission past the store timeout.
    #[cfg(feature = "axum")]
    /// `pipeline_counted`: the authentication finished (and was counted)
    /// before the deadline ran out in the admission after it.
    fn timed_out(&self, elapsed: tokio::time::error::Elapsed, pipeline_counted: bool) -> Decision {
        let error = Error::StoreUnavailable(StoreError::with_source(
            crate::error::StoreErrorKind::Timeout,
            elapsed,
        ));
        metrics::gate_deadline(&error, !pipeline_counted);
        Decision::Rejected(self.reject(error))
    }

    /// Step 1: extraction. Synchronous and cheap; call
    /// [`admit`](Self::admit) with the key it returns.
    ///
    /// Credentials that are not ours are a [`Rejection`] (401
    /// `MISSING_API_KEY`) unless `route` was built with
    /// [`ForeignCredentials::PassThrough`]; only then is
    /// [`Extracted::NotOurs`] returned.
    ///
    /// # Errors
    /// A [`Rejection`] for a missing, oversized or ambiguous key, or foreign
    /// credentials (by default).
    // A rejection is a few words plus the error; boxing it would add an
    // allocation to exactly the path an attacker drives.
    #[allow(clippy::result_large_err)]
    pub fn extract<'h, I, N, V>(
        &self,
        headers: I,
        query: Option<&'h str>,
        client: Option<IpAddr>,
        route: &Route,
    ) -> Result<Extracted<'h>, Rejection>
    where
        I: IntoIterator<Item = (N, &'h V)>,
        N: AsRef<[u8]>,
        V: AsRef<[u8]> + ?Sized + 'h,
    {
        self.extracted(
            self.extractor.extract_with_query(headers, query),
            client,
            route,
        )
    }

    /// The extractor's answer under `route`'s foreign-credentials setting.
    #[allow(clippy::result_large_err)]
    fn extracted<'h>(
        &self,
        found: crate::error::Result<Extracted<'h>>,
        client: Option<IpAddr>,
        route: &Route,
    ) -> Result<Extracted<'h>, Rejection> {
        match found {
            Ok(Extracted::NotOurs) if route.foreign == ForeignCredentials::Reject => {
                metrics::rejected_at_edge(&Error::MissingApiKey);
                Err(self.reject(Error::MissingApiKey))
            }
            Ok(found) => Ok(found),
            Err(e) => {
                metrics::rejected_at_edge(&e);
                Err(self.refuse(e, client))
            }
        }
    }

    /// Steps 2 and 3: authenticate `key` through the pipeline with the
    /// bundle's failure throttle ([`Authenticator::authenticate`]),
    /// check the route's scopes (and, for a publishable key, the request's
    /// origin), then the rate limit and credits in one admission, within
    /// the gate's store timeout, if any.
    ///
    /// A scope, address, environment or origin failure of a key whose
    /// secret matched (native or imported legacy) is charged to that key's
    /// rate limit, under the quota of its own plan (as an admitted request
    /// would be), and answered 429 `RATE_LIMITED` once that is exhausted.
    pub fn admit<'a>(
        &'a self,
        key: PresentedKey<'a>,
        client: Option<IpAddr>,
        route: &'a Route,
    ) -> impl Future<Output = Decision> + 'a {
        self.decide(Ok(Extracted::Key(key)), client, route)
    }

    /// A failed authentication, as the pipeline left it: a failure of an
    /// authenticated key against the request (scope, address, environment,
    /// origin; native or imported legacy key) costs the key's own rate
    /// limit, under the quota of the plan its record names.
    async fn failed(&self, failure: Failure) -> Rejection {
        if failure.reason.class() == FailureClass::Authenticated
            && let (Some(id), Some(metadata)) = (failure.id, failure.metadata())
            && let Some(account) = failure.view.as_deref().and_then(KeyView::limits_account)
        {
            let quota = self.quotas.quota_for_metadata(metadata);
            if let Ok(verdict @ Verdict::RateLimited { .. }) = self
                .authenticator
                .limits()
                .admit(&Admission::new(account.as_u64(), quota))
                .await
            {
                metrics::admission("rate_limited", false);
                let now = self.authenticator.clock().now();
                if let Some(m) = self.authenticator.monitor() {
                    m.rate_limited(id, failure.view.as_deref().and_then(|v| v.owner()), now);
                }
                return self.rate_limited(verdict, now);
            }
        }
        self.reject(failure.error)
    }

    /// The admission of `key` on `route`, charged to the key's limits
    /// account ([`VerifiedKey::limits_account`]: a rotated key's successor
    /// and a derived key without a budget spend from the first key's
    /// windows and balance). A store error when the record's account is
    /// unreadable: such a key is refused (503), never admitted unmetered.
    fn admission<'a>(
        &'a self,
        key: &'a VerifiedKey,
        route: &Route,
    ) -> Result<Admission<'a>, StoreError> {
        let account = key
            .limits_account()
            .ok_or_else(|| StoreError::new(crate::StoreErrorKind::Corrupt))?;
        let quota = self.quotas.quota_for(key);
        let admission = Admission::new(account.as_u64(), quota);
        Ok(match &self.credits_api {
            Some(api) if route.metered => admission.credits(CreditCharge::new(route.cost).owner(
                key.owner().map(|owner| OwnerApi {
                    owner,
                    api: api.as_ref(),
                }),
            )),
            _ => admission,
        })
    }

    /// Step 4 (rate limit and credits, one admission) for a verified key.
    pub async fn charge(&self, key: VerifiedKey, scheme: Scheme, route: &Route) -> Decision {
        let now = self.authenticator.clock().now();
        // Bound before the `await`: a `match` on the result would keep its
        // temporary (the whole `Result`) beside the admission in the state.
        let admission = match self.admission(&key, route) {
            Ok(admission) => admission,
            Err(e) => return self.conclude(Err(e), key, scheme, now),
        };
        let verdict = crate::trace::admit(self.authenticator.limits().admit(&admission)).await;
        self.conclude(verdict, key, scheme, now)
    }

    fn conclude(
        &self,
        verdict: Result<Verdict, StoreError>,
        key: VerifiedKey,
        scheme: Scheme,
        now: Timestamp,
    ) -> Decision {
        match verdict {
            Ok(Verdict::Admitted {
                rate_limit,
                credits,
            }) => {
                metrics::admission("admitted", self.credits_api.is_some());
                Decision::Admitted(Admitted {
                    key,
                    scheme,
                    rate_limit,
                    credits: credits.filter(|_| self.credits_api.is_some()),
                    now,
                    allow_origin: None,
                })
            }
            Ok(v @ Verdict::RateLimited { .. }) => {
                metrics::admission("rate_limited", self.credits_api.is_some());
                if let Some(m) = self.authenticator.monitor() {
                    m.rate_limited(key.id(), key.owner(), now);
                }
                Decision::Rejected(self.rate_limited(v, now))
            }
            Ok(Verdict::CreditsExhausted {
                rate_limit,
                exhausted,
            }) => {
                metrics::admission("credits_exhausted", true);
                if let Some(m) = self.authenticator.monitor() {
                    m.quota_exceeded(key.id(), key.owner(), now);
                }
                let mut r = self.reject_at(Error::UsageExceeded, now);
                r.rate_limit = rate_limit;
                r.retry_after = exhausted.refill_in;
                Decision::Rejected(r)
            }
            Err(e) => {
                metrics::admission("error", self.credits_api.is_some());
                Decision::Rejected(self.reject_at(Error::StoreUnavailable(e), now))
            }
        }
    }

    fn rate_limited(&self, verdict: Verdict, now: Timestamp) -> Rejection {
        let (mut info, retry_after) = match verdict {
            Verdict::RateLimited { info, retry_after } => (info, retry_after),
            _ => return self.reject_at(Error::UsageExceeded, now),
        };
        // On a 429, `X-RateLimit-Reset` is when a retry is admitted (what
        // `Retry-After` says), not the window's full replenishment: clients
        // schedule retries from it.
        info.reset_after = retry_after;
        let mut r = self.reject_at(Error::RateLimited { retry_after }, now);
        r.rate_limit = Some(info);
        r
    }

    /// The rejection for an `error` from a verification run outside the
    /// gate (the blocking path). `client` is accepted for symmetry with
    /// [`admit`](Self::admit); junk never counts against an address.
    pub fn refuse(&self, error: Error, client: Option<IpAddr>) -> Rejection {
        let _ = client;
        self.reject(error)
    }

    pub(crate) fn reject(&self, error: Error) -> Rejection {
        self.reject_at(error, self.authenticator.clock().now())
    }

    fn reject_at(&self, error: Error, now: Timestamp) -> Rejection {
        Rejection::new(error, now, self.realm.clone(), Arc::clone(&self.missing))
    }
}

impl<S, C, L> Gate<S, C, L>
where
    S: KeyStore,
    C: Clock,
    L: SyncLimits,
{
    /// [`charge`](Self::charge) without an async runtime, for in-process
    /// limits ([`NoLimits`], [`MemoryLimits`](crate::limits::MemoryLimits)).
    /// Shared stores (Redis) have no blocking form: use
    /// [`charge`](Self::charge).
    pub fn charge_blocking(&self, key: VerifiedKey, scheme: Scheme, route: &Route) -> Decision {
        let now = self.authenticator.clock().now();
        let verdict = self
            .admission(&key, route)
            .map(|admission| self.authenticator.limits().admit_now(&admission));
        self.conclude(verdict, key, scheme, now)
    }
}
