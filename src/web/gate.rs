//! The framework-agnostic web edge: everything between a raw request and a
//! handler.
//!
//! A [`Gate`] runs, for one request and one [`Route`]:
//!
//! 1. the per-address failure throttle ([`FailureThrottle`]), if configured:
//!    a locked-out client address is refused (429 `TOO_MANY_FAILED_ATTEMPTS`)
//!    before any other work;
//! 2. extraction ([`Extractor`]): a missing key is 401 `MISSING_API_KEY`;
//!    credentials that are not ours (a Bearer JWT, `Basic`, `Token x`) are
//!    refused the same way by default, and give [`Decision::NotOurs`] only
//!    with the opt-in [`ForeignCredentials::PassThrough`];
//! 3. authentication and the route's scope requirement ([`Authenticator`]);
//!    a failing store is 503 `STORE_UNAVAILABLE`, never 401. Malformed and
//!    invalid keys count as failures for the throttle;
//! 4. the key's rate limit ([`RateLimiter`], per-minute and per-hour windows
//!    admitted together; quota chosen by a [`QuotaTable`]): 429
//!    `RATE_LIMITED` with `Retry-After`;
//! 5. credits ([`CreditLedger`]), only once the rate limit admitted the
//!    request: the key's and the owner's balances are debited in one atomic
//!    step, or 429 `USAGE_EXCEEDED`.
//!
//! [`Decision::Admitted`] carries the verified key and the `X-RateLimit-*`
//! headers for the response; [`Decision::Rejected`] turns into an
//! [`ErrorResponse`].
//!
//! # Embedding in a hand-written server
//!
//! Any framework, or none: give the gate the headers as `(name, value)`
//! pairs, then write the answer it gives.
//!
//! ```
//! use std::net::IpAddr;
//! use apikey::web::{Decision, Gate, QuotaTable, Route};
//! use apikey::limits::ratelimit::Quota;
//! use apikey::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
//! let store = MemoryStore::new();
//! let (key, record) = verifier.issue(NewKey::new("sk_live_").scopes(["tasks:read"]), time::OffsetDateTime::now_utc())?;
//! store.insert_sync(record)?;
//! let gate = Gate::new(Authenticator::new(verifier, store)).quotas(QuotaTable::fixed(Quota::FREE));
//! let read_tasks = Route::new(Requirement::scope("tasks:read")?);
//!
//! // Your server loop parsed a request into a header list and a peer address:
//! let header = format!("Bearer {}", key.expose_secret());
//! let headers = vec![("Host", "api.example.com"), ("Authorization", header.as_str())];
//! let peer: IpAddr = "198.51.100.4".parse().unwrap();
//!
//! let (status, extra_headers, body) = match gate.check(headers, None, Some(peer), &read_tasks).await {
//!     Decision::Admitted(ok) => (200, ok.headers(), format!("hello {}", ok.key.id())),
//!     Decision::NotOurs => (401, vec![], "try your JWT handler".to_owned()),
//!     Decision::Rejected(no) => {
//!         let r = no.to_response();
//!         (r.status, r.headers, r.body)
//!     }
//! };
//! assert_eq!(status, 200);
//! assert!(extra_headers.iter().any(|(n, v)| *n == "x-ratelimit-remaining" && v == "99"));
//! # let _ = body;
//! # Ok(()) }
//! ```
//!
//! # Blocking servers
//!
//! With no async runtime, split the pipeline: [`Gate::extract`] (throttle
//! and extraction), a synchronous store lookup through
//! [`Verifier::verify_with`](crate::Verifier::verify_with), then
//! [`Gate::charge_blocking`] (rate limit and credits).
//!
//! ```
//! use apikey::web::Extracted;
//! use apikey::web::{Decision, Gate, Route};
//! use apikey::*;
//!
//! let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
//! let store = MemoryStore::new();
//! let now = time::OffsetDateTime::now_utc();
//! let (key, record) = verifier.issue(NewKey::new("sk_live_"), now)?;
//! store.insert_sync(record)?;
//! let gate = Gate::new(Authenticator::new(verifier, store));
//!
//! let headers = [("x-api-key", key.expose_secret())];
//! let answer = match gate.extract(headers, None, None) {
//!     Ok(Extracted::Key(presented)) => {
//!         let auth = gate.authenticator();
//!         let store = auth.store();
//!         match auth.verifier().verify_with(presented.expose_secret(), |id| store.fetch_sync(id), now, &Requirement::none()) {
//!             Ok(verified) => match gate.charge_blocking(verified, presented.scheme(), &Route::any_key()) {
//!                 Decision::Admitted(_) => 200,
//!                 Decision::Rejected(no) => no.to_response().status,
//!                 Decision::NotOurs => 401,
//!             },
//!             Err(e) => gate.refuse(e, None).to_response().status,
//!         }
//!     }
//!     Ok(Extracted::NotOurs) => 401,
//!     Err(no) => no.to_response().status,
//! };
//! assert_eq!(answer, 200);
//! # Ok::<(), Error>(())
//! ```

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::authenticator::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::credits::{
    AsyncCreditStore, CreditLedger, CreditStore, InMemoryCreditStore, SpendReceipt,
};
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::extract::{Extracted, Extractor, PresentedKey, Scheme};
use crate::ratelimit::{
    AsyncRateLimitStore, FailureThrottle, FailureThrottleConfig, InMemoryRateLimitStore,
    MonotonicClock, Quota, RateLimitDecision, RateLimitInfo, RateLimitStore, RateLimiter,
    StdMonotonicClock,
};
use crate::response::{
    ErrorResponse, REALM, missing_key_details, rate_limit_headers, retry_after_secs,
};
use crate::scope::Requirement;
use crate::store::KeyStore;
use crate::verifier::VerifiedKey;

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
    requirement: Requirement,
    cost: u64,
}

impl Route {
    /// A route needing `requirement`, costing 1 credit.
    pub fn new(requirement: Requirement) -> Self {
        Self {
            requirement,
            cost: 1,
        }
    }

    /// A route any valid key may call, costing 1 credit.
    pub fn any_key() -> Self {
        Self::new(Requirement::none())
    }

    /// Credits one call costs. Defaults to 1. Zero checks that the balances
    /// are not exhausted without spending.
    pub fn cost(mut self, credits: u64) -> Self {
        self.cost = credits;
        self
    }

    /// The scope requirement.
    pub fn requirement(&self) -> &Requirement {
        &self.requirement
    }

    /// The credit cost.
    pub fn credit_cost(&self) -> u64 {
        self.cost
    }
}

/// Which [`Quota`] applies to a key: a default, and per-plan quotas chosen
/// by a metadata entry of the key's record (`plan` by default).
///
/// ```
/// use apikey::web::QuotaTable;
/// use apikey::limits::ratelimit::Quota;
/// let table = QuotaTable::fixed(Quota::FREE)
///     .plan("professional", Quota::PROFESSIONAL)
///     .plan("enterprise", Quota::unlimited());
/// assert_eq!(table.quota_for_plan(Some("professional")), Quota::PROFESSIONAL);
/// assert_eq!(table.quota_for_plan(Some("unknown")), Quota::FREE);
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
        self.quota_for_plan(
            key.metadata()
                .get(self.metadata_key.as_ref())
                .map(String::as_str),
        )
    }
}

/// What a [`Gate`] (and the axum layer) does with a request whose
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
    /// Pass them on: [`Gate::check`] answers [`Decision::NotOurs`] and the
    /// axum layer calls the inner service **without** authenticating the
    /// request. No [`VerifiedKey`] (nor [`Admitted`]) is in its extensions,
    /// no rate limit or credit was charged, and the route's requirement was
    /// not checked: the handler (or another layer, for a JWT) must
    /// authenticate the request itself and refuse it otherwise. Only for
    /// services that also accept other credentials.
    PassThrough,
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
    /// Credits left after this request (`None` when no ledger is set).
    pub credits: Option<SpendReceipt>,
    /// Wall-clock time of the decision (for `X-RateLimit-Reset`).
    pub now: OffsetDateTime,
}

impl Admitted {
    /// The `X-RateLimit-*` headers to add to the response (empty when no
    /// window is enforced).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        self.rate_limit
            .iter()
            .flat_map(|info| rate_limit_headers(info, self.now))
            .collect()
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
    pub now: OffsetDateTime,
    realm: Cow<'static, str>,
    /// The `MISSING_API_KEY` details of the gate's extractor.
    missing: Arc<str>,
}

impl Rejection {
    fn new(error: Error, now: OffsetDateTime, realm: Cow<'static, str>, missing: Arc<str>) -> Self {
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
    /// A `USAGE_EXCEEDED` refusal carries `Retry-After` only when a refill
    /// is scheduled.
    pub fn to_response(&self) -> ErrorResponse {
        let mut r = ErrorResponse::build(&self.error, &self.realm, Some(&self.missing));
        if let Some(info) = &self.rate_limit {
            r = r.with_rate_limit(info, self.now);
        }
        if let (Some(wait), None) = (self.retry_after, r.header("retry-after")) {
            r.headers
                .push(("retry-after", retry_after_secs(wait).to_string()));
        }
        r
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        r.error
    }
}

/// Authentication, scopes, rate limits, credits and brute-force throttling
/// for one service. Share it (`Arc`) between requests.
///
/// Generic over the key store `S`, the wall clock `C`, the monotonic clock
/// `M` (rate limits, refills, throttle), the rate-limit store `RS` and the
/// credit store `CS`; the defaults are the in-memory ones.
#[derive(Debug)]
pub struct Gate<
    S,
    C = SystemClock,
    M = StdMonotonicClock,
    RS = InMemoryRateLimitStore,
    CS = InMemoryCreditStore,
> {
    authenticator: Authenticator<S, C>,
    extractor: Extractor,
    mono: M,
    limiter: RateLimiter<RS, M>,
    quotas: QuotaTable,
    credits: Option<(CreditLedger<CS, M>, Cow<'static, str>)>,
    throttle: Option<FailureThrottle<M>>,
    realm: Cow<'static, str>,
    /// `MISSING_API_KEY` details for `extractor`, computed once.
    missing: Arc<str>,
    foreign: ForeignCredentials,
}

impl<S: KeyStore, C: Clock> Gate<S, C> {
    /// A gate with the standard monotonic clock, no rate limit (set
    /// [`quotas`](Self::quotas)), no credits and no failure throttle.
    pub fn new(authenticator: Authenticator<S, C>) -> Self {
        Self::with_monotonic_clock(authenticator, StdMonotonicClock::new())
    }
}

impl<S: KeyStore, C: Clock, M: MonotonicClock + Clone> Gate<S, C, M> {
    /// Like [`new`](Gate::new) with a monotonic clock of your choice
    /// (tests use [`FakeMonotonicClock`](crate::ratelimit::FakeMonotonicClock)).
    pub fn with_monotonic_clock(authenticator: Authenticator<S, C>, clock: M) -> Self {
        let extractor = Extractor::new(authenticator.verifier().prefixes().clone());
        let missing = missing_key_details(&extractor).into();
        Self {
            authenticator,
            extractor,
            limiter: RateLimiter::with_clock(clock.clone()),
            mono: clock,
            quotas: QuotaTable::default(),
            credits: None,
            throttle: None,
            realm: Cow::Borrowed(REALM),
            missing,
            foreign: ForeignCredentials::Reject,
        }
    }
}

impl<S, C, M, RS, CS> Gate<S, C, M, RS, CS>
where
    S: KeyStore,
    C: Clock,
    M: MonotonicClock + Clone,
    RS: AsyncRateLimitStore,
    RS::Error: std::error::Error + Send + Sync + 'static,
    CS: AsyncCreditStore,
    CS::Error: std::error::Error + Send + Sync + 'static,
{
    /// Replaces the extractor. Defaults to
    /// [`Extractor::new`] over the verifier's prefixes.
    pub fn extractor(mut self, extractor: Extractor) -> Self {
        self.missing = missing_key_details(&extractor).into();
        self.extractor = extractor;
        self
    }

    /// Sets the quotas. Defaults to no limits.
    pub fn quotas(mut self, quotas: QuotaTable) -> Self {
        self.quotas = quotas;
        self
    }

    /// Replaces the rate limiter (e.g. one over a shared store).
    pub fn rate_limiter<RS2>(self, limiter: RateLimiter<RS2, M>) -> Gate<S, C, M, RS2, CS> {
        Gate {
            authenticator: self.authenticator,
            extractor: self.extractor,
            mono: self.mono,
            limiter,
            quotas: self.quotas,
            credits: self.credits,
            throttle: self.throttle,
            realm: self.realm,
            missing: self.missing,
            foreign: self.foreign,
        }
    }

    /// Meters credits with `ledger`, charging owner balances of API `api`.
    /// Defaults to no metering.
    pub fn credits<CS2>(
        self,
        ledger: CreditLedger<CS2, M>,
        api: impl Into<Cow<'static, str>>,
    ) -> Gate<S, C, M, RS, CS2> {
        Gate {
            authenticator: self.authenticator,
            extractor: self.extractor,
            mono: self.mono,
            limiter: self.limiter,
            quotas: self.quotas,
            credits: Some((ledger, api.into())),
            throttle: self.throttle,
            realm: self.realm,
            missing: self.missing,
            foreign: self.foreign,
        }
    }

    /// Locks out client addresses after repeated malformed or invalid keys.
    /// Defaults to off. Needs the client address passed to
    /// [`check`](Self::check).
    pub fn failure_throttle(mut self, config: FailureThrottleConfig) -> Self {
        self.throttle = Some(FailureThrottle::with_clock(config, self.mono.clone()));
        self
    }

    /// What to do with credentials that are not ours (see
    /// [`ForeignCredentials`]). Defaults to
    /// [`ForeignCredentials::Reject`]: fail closed.
    pub fn foreign_credentials(mut self, foreign: ForeignCredentials) -> Self {
        self.foreign = foreign;
        self
    }

    /// The [`ForeignCredentials`] setting.
    pub fn foreign_credentials_setting(&self) -> ForeignCredentials {
        self.foreign
    }

    /// The realm named in `WWW-Authenticate`. Defaults to `api`.
    pub fn realm(mut self, realm: impl Into<Cow<'static, str>>) -> Self {
        self.realm = realm.into();
        self
    }

    /// The authenticator.
    pub fn authenticator(&self) -> &Authenticator<S, C> {
        &self.authenticator
    }

    /// The extractor.
    pub fn extractor_ref(&self) -> &Extractor {
        &self.extractor
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &RateLimiter<RS, M> {
        &self.limiter
    }

    /// The quota table.
    pub fn quota_table(&self) -> &QuotaTable {
        &self.quotas
    }

    /// The credit ledger, if metering.
    pub fn ledger(&self) -> Option<&CreditLedger<CS, M>> {
        self.credits.as_ref().map(|(l, _)| l)
    }

    /// The failure throttle, if on.
    pub fn throttle(&self) -> Option<&FailureThrottle<M>> {
        self.throttle.as_ref()
    }

    /// Runs the whole pipeline (see the [`web`](crate::web) module docs).
    ///
    /// `headers` as for [`Extractor::extract`]; `query` is the raw query
    /// string; `client` the peer address (for the failure throttle).
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
        match self.extract(headers, query, client) {
            Ok(Extracted::Key(key)) => self.admit(key, client, route).await,
            // Only with `ForeignCredentials::PassThrough` (see `extract`).
            Ok(Extracted::NotOurs) => Decision::NotOurs,
            Err(rejection) => Decision::Rejected(rejection),
        }
    }

    /// Steps 1 and 2: the failure throttle and extraction. Synchronous and
    /// cheap; call [`admit`](Self::admit) with the key it returns.
    ///
    /// Credentials that are not ours are a [`Rejection`] (401
    /// `MISSING_API_KEY`) unless the gate was built with
    /// [`ForeignCredentials::PassThrough`]; only then is
    /// [`Extracted::NotOurs`] returned.
    ///
    /// # Errors
    /// A [`Rejection`] for a locked-out address, a missing, oversized or
    /// ambiguous key, or foreign credentials (by default).
    // A rejection is a few words plus the error; boxing it would add an
    // allocation to exactly the path an attacker drives.
    #[allow(clippy::result_large_err)]
    pub fn extract<'h, I, N, V>(
        &self,
        headers: I,
        query: Option<&'h str>,
        client: Option<IpAddr>,
    ) -> Result<Extracted<'h>, Rejection>
    where
        I: IntoIterator<Item = (N, &'h V)>,
        N: AsRef<[u8]>,
        V: AsRef<[u8]> + ?Sized + 'h,
    {
        self.extract_as(headers, query, client, self.foreign)
    }

    /// [`extract`](Self::extract) with the foreign-credentials setting
    /// `foreign` instead of the gate's (the axum layer may override it).
    #[allow(clippy::result_large_err)]
    pub(crate) fn extract_as<'h, I, N, V>(
        &self,
        headers: I,
        query: Option<&'h str>,
        client: Option<IpAddr>,
        foreign: ForeignCredentials,
    ) -> Result<Extracted<'h>, Rejection>
    where
        I: IntoIterator<Item = (N, &'h V)>,
        N: AsRef<[u8]>,
        V: AsRef<[u8]> + ?Sized + 'h,
    {
        if let (Some(throttle), Some(ip)) = (&self.throttle, client)
            && let Err(retry_after) = throttle.check(ip)
        {
            return Err(self.reject(Error::TooManyFailures { retry_after }));
        }
        match self.extractor.extract_with_query(headers, query) {
            Ok(Extracted::NotOurs) if foreign == ForeignCredentials::Reject => {
                Err(self.reject(Error::MissingApiKey))
            }
            Ok(found) => Ok(found),
            Err(e) => Err(self.refuse(e, client)),
        }
    }

    /// Steps 3 to 5: authenticate `key`, check the route's scopes, the rate
    /// limit and credits.
    pub async fn admit(
        &self,
        key: PresentedKey<'_>,
        client: Option<IpAddr>,
        route: &Route,
    ) -> Decision {
        let verified = match self
            .authenticator
            .authenticate_from(key.expose_secret(), &route.requirement, client)
            .await
        {
            Ok(v) => v,
            Err(e) => return Decision::Rejected(self.refuse(e, client)),
        };
        self.charge(verified, key.scheme(), route).await
    }

    /// Steps 4 and 5 (rate limit, then credits) for a verified key.
    pub async fn charge(&self, key: VerifiedKey, scheme: Scheme, route: &Route) -> Decision {
        let now = self.authenticator.clock().now();
        let id = key.id().as_u64();
        let quota = self.quotas.quota_for(&key);
        let rate_limit = match self.limiter.check_async(id, &quota).await {
            Ok(RateLimitDecision::Allowed { info }) => info,
            Ok(RateLimitDecision::Refused {
                mut info,
                retry_after,
            }) => {
                // On a 429, `X-RateLimit-Reset` is when a retry is admitted
                // (what `Retry-After` says), not the window's full
                // replenishment: clients schedule retries from it.
                info.reset_after = retry_after;
                let mut r = self.reject_at(Error::RateLimited { retry_after }, now);
                r.rate_limit = Some(info);
                return Decision::Rejected(r);
            }
            Err(e) => return Decision::Rejected(self.reject_at(store_error(e), now)),
        };
        let credits = match &self.credits {
            None => None,
            Some((ledger, api)) => match ledger.spend_async(id, key.owner(), api, route.cost).await
            {
                Ok(Ok(receipt)) => Some(receipt),
                Ok(Err(exhausted)) => {
                    let mut r = self.reject_at(Error::UsageExceeded, now);
                    r.rate_limit = rate_limit;
                    r.retry_after = exhausted.refill_in;
                    return Decision::Rejected(r);
                }
                Err(e) => return Decision::Rejected(self.reject_at(store_error(e), now)),
            },
        };
        Decision::Admitted(Admitted {
            key,
            scheme,
            rate_limit,
            credits,
            now,
        })
    }

    /// The rejection for an `error` from a verification run outside the
    /// gate (the blocking path), counting guesses (malformed or invalid keys)
    /// against the client address like [`admit`](Self::admit) does.
    pub fn refuse(&self, error: Error, client: Option<IpAddr>) -> Rejection {
        if let (Some(throttle), Some(ip)) = (&self.throttle, client)
            && matches!(error, Error::InvalidApiKey | Error::MalformedApiKey(_))
        {
            // A lockout that starts now applies from the next attempt.
            let _ = throttle.record_failure(ip);
        }
        self.reject(error)
    }

    pub(crate) fn reject(&self, error: Error) -> Rejection {
        self.reject_at(error, self.authenticator.clock().now())
    }

    fn reject_at(&self, error: Error, now: OffsetDateTime) -> Rejection {
        Rejection::new(error, now, self.realm.clone(), Arc::clone(&self.missing))
    }
}

impl<S, C, M, RS, CS> Gate<S, C, M, RS, CS>
where
    S: KeyStore,
    C: Clock,
    M: MonotonicClock + Clone,
    RS: RateLimitStore,
    RS::Error: std::error::Error + Send + Sync + 'static,
    CS: CreditStore,
    CS::Error: std::error::Error + Send + Sync + 'static,
{
    /// [`charge`](Self::charge) without an async runtime, for synchronous
    /// rate-limit and credit stores (the in-memory ones): their futures are
    /// ready at once, so this polls once and never blocks.
    pub fn charge_blocking(&self, key: VerifiedKey, scheme: Scheme, route: &Route) -> Decision {
        let mut fut = std::pin::pin!(self.charge(key, scheme, route));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(decision) => decision,
            // Unreachable for synchronous stores; fail closed, never open.
            std::task::Poll::Pending => Decision::Rejected(self.reject(Error::StoreUnavailable(
                StoreError::new(StoreErrorKind::Unavailable),
            ))),
        }
    }
}

fn store_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    Error::StoreUnavailable(StoreError::with_source(StoreErrorKind::Unavailable, e))
}
