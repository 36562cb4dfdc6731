use std::borrow::Cow;
use std::fmt;

use crate::error::{Error, MalformedReason, Result};
use crate::key::PrefixRegistry;
use crate::pipeline::{RequestOrigin, RouteOf};

/// Default limit on a presented value, in bytes. Keys are at most
/// [`ApiKey::MAX_LEN`](crate::ApiKey::MAX_LEN) long.
pub const DEFAULT_MAX_LEN: usize = 256;

/// How a key was presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// The API-key header (`X-API-Key` by default).
    ApiKeyHeader,
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// A query-string parameter (only when explicitly enabled).
    Query,
}

impl Scheme {
    /// A short, stable, lowercase label (for metrics and deprecation logs).
    ///
    /// ```
    /// assert_eq!(apikey::web::Scheme::Bearer.as_str(), "bearer");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ApiKeyHeader => "api_key_header",
            Self::Bearer => "bearer",
            Self::Query => "query",
        }
    }

    /// Preference when one key arrives by several schemes (lower first).
    const fn rank(self) -> u8 {
        match self {
            Self::ApiKeyHeader => 0,
            Self::Bearer => 1,
            Self::Query => 2,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A candidate key read from a request (not yet verified).
///
/// Its `Debug` shows only the scheme and length, never the text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    text: &'a str,
    scheme: Scheme,
    /// The request's `Origin` and `Referer`, for a publishable key.
    origin: RequestOrigin<'a>,
    /// The request's method and path, kept as the key's last-used route.
    route: Option<RouteOf<'a>>,
}

impl<'a> PresentedKey<'a> {
    /// The key text, to hand to [`Verifier::parse`](crate::Verifier::parse)
    /// or [`Authenticator::authenticate`](crate::Authenticator::authenticate).
    /// Printable ASCII only, at most the extractor's length limit.
    pub fn expose_secret(&self) -> &'a str {
        self.text
    }

    /// Where it came from (the preferred one when it came from several).
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The request's `Origin` and `Referer`, read in the same pass.
    pub(crate) fn origin(&self) -> &RequestOrigin<'a> {
        &self.origin
    }

    /// The key as presented on `method` `path`: once admitted, the key's
    /// usage keeps them as its last-used route, in the normal form of
    /// [`KeyRecord::last_used_route`](crate::KeyRecord::last_used_route)
    /// (`"GET /v1/items/*"`: no query; numbers, keys and segments over 24
    /// characters as `*`).
    /// [`Gate::check_request`](crate::web::Gate::check_request) and the
    /// axum layer set it; call it between [`Gate::extract`](crate::web::Gate::extract)
    /// and [`Gate::admit`](crate::web::Gate::admit) in other frameworks.
    pub fn on_route(mut self, method: &'a str, path: &'a str) -> Self {
        self.route = Some(RouteOf { method, path });
        self
    }

    /// The method and path set by [`on_route`](Self::on_route).
    pub(crate) fn route(&self) -> Option<RouteOf<'a>> {
        self.route
    }
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("scheme", &self.scheme)
            .field("len", &self.text.len())
            .finish_non_exhaustive()
    }
}

/// What [`Extractor::extract`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extracted<'a> {
    /// A candidate API key.
    Key(PresentedKey<'a>),
    /// The request carries credentials that are not API keys of ours (a
    /// Bearer token without a registered prefix, another `Authorization`
    /// scheme). Pass the request on untouched.
    NotOurs,
}

/// Where an [`Extractor`] reads keys from: a set of header sources,
/// combined with `|`. The query string is configured apart
/// ([`Extractor::with_query_param`]), because it needs a parameter name.
///
/// ```
/// use apikey::web::Sources;
/// let both = Sources::API_KEY_HEADER | Sources::BEARER;
/// assert_eq!(both, Sources::ALL);
/// assert!(both.contains(Sources::BEARER));
/// assert!(!Sources::BEARER.contains(Sources::API_KEY_HEADER));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sources(u8);

impl Sources {
    /// The API-key header (`X-API-Key` unless renamed).
    pub const API_KEY_HEADER: Self = Self(1);
    /// `Authorization: Bearer <key>` (only tokens with a registered or
    /// declared legacy prefix are ours).
    pub const BEARER: Self = Self(2);
    /// Both header sources (the default).
    pub const ALL: Self = Self(3);
    /// No header source (only an allowed query parameter, if any).
    pub const NONE: Self = Self(0);

    /// Whether every source of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Sources {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Reading the presented key out of a request, with no web framework.
///
/// An [`Extractor`] looks at request headers given as any iterator of
/// `(name, value)` pairs (and at the query string, only when enabled), and
/// answers one of:
///
/// * [`Extracted::Key`]: a candidate API key and the [`Scheme`] that carried
///   it (so a service can warn about a deprecated one);
/// * [`Extracted::NotOurs`]: the request carries other credentials, such as a
///   Bearer JWT (`eyJ...`) beside API keys, or `Authorization: Basic`; pass it
///   on untouched to whatever handles those;
/// * an [`Error`]: [`Error::MissingApiKey`] when there is nothing at all,
///   [`Error::MalformedApiKey`] for an oversized value (checked before any
///   other work) or one with non-ASCII or control characters, and
///   [`Error::InvalidInput`] (400, RFC 6750 `invalid_request`) when two
///   headers carry different keys or a query-string key is presented while
///   query keys are refused.
///
/// Rules:
/// * `X-API-Key: <key>` and `Authorization: Bearer <key>` are accepted by
///   default; header names and the `Bearer` scheme name are case-insensitive;
///   the header name and the accepted set are configurable.
/// * A Bearer token is ours only if it starts with a registered prefix, or
///   with a declared legacy prefix ([`Extractor::with_legacy_prefix`];
///   a [`Gate`](super::gate::Gate) declares its authenticator's). An
///   `X-API-Key` value is always ours (the header exists for API keys).
/// * The same key in several places is fine; different keys are an error,
///   never a guess.
/// * The outcome depends on what the request carries, never on the order of
///   its headers: every value is read before deciding, and when several
///   things are wrong the answer follows a fixed precedence: an oversized
///   value (`MALFORMED_API_KEY`, reason `length`), then a value with
///   non-ASCII or control characters (reason `charset`), then a refused
///   query-string key, then two different keys (both `INVALID_REQUEST`),
///   then the key, then a key of ours in `Authorization` without `Bearer`
///   (reason `missing_bearer`), then foreign credentials
///   ([`Extracted::NotOurs`]), then `MISSING_API_KEY`.
///
/// ```
/// use apikey::PrefixRegistry;
/// use apikey::web::{Extracted, Extractor, Scheme};
///
/// let extractor = Extractor::new(PrefixRegistry::with_builtins());
/// let headers = [("Content-Type", "application/json"), ("x-api-key", "kwi_sk_0000")];
/// match extractor.extract(headers)? {
///     Extracted::Key(key) => {
///         assert_eq!(key.scheme(), Scheme::ApiKeyHeader);
///         assert_eq!(key.expose_secret(), "kwi_sk_0000");
///     }
///     Extracted::NotOurs => unreachable!(),
/// }
///
/// // A JWT is somebody else's business.
/// let jwt = [("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")];
/// assert!(matches!(extractor.extract(jwt)?, Extracted::NotOurs));
///
/// // Nothing at all.
/// let none: [(&str, &str); 0] = [];
/// assert_eq!(extractor.extract(none).unwrap_err().code(), "MISSING_API_KEY");
/// # Ok::<(), apikey::Error>(())
/// ```
///
/// Reads API keys from request headers. Cheap to clone.
///
/// Every setting says what it defaults to. Build it once at start-up.
///
/// ```
/// use apikey::PrefixRegistry;
/// use apikey::web::{Extractor, Scheme, Sources};
///
/// // Only the Bearer scheme, a 128-byte limit, and `?api_key=` allowed.
/// let extractor = Extractor::new(PrefixRegistry::with_builtins())
///     .with_sources(Sources::BEARER)
///     .with_max_len(128)
///     .with_query_param("api_key");
/// assert!(extractor.accepts(Scheme::Bearer));
/// assert!(!extractor.accepts(Scheme::ApiKeyHeader));
/// ```
#[derive(Clone, Debug)]
pub struct Extractor {
    prefixes: PrefixRegistry,
    /// Declared legacy prefixes: Bearer tokens starting with one are ours.
    legacy: Vec<Cow<'static, str>>,
    header_name: Cow<'static, str>,
    /// `header_name` as an `http` header name, for [`HeaderMap`](http::HeaderMap)
    /// lookups (`None` when it is not a valid header name: nothing can
    /// carry it).
    #[cfg(feature = "http")]
    header: Option<http::HeaderName>,
    sources: Sources,
    query_param: Option<Cow<'static, str>>,
    refuse_query_params: Vec<Cow<'static, str>>,
    max_len: usize,
}

impl Extractor {
    /// An extractor recognising Bearer tokens by `prefixes` (use
    /// [`Verifier::prefixes`](crate::Verifier::prefixes)).
    pub fn new(prefixes: PrefixRegistry) -> Self {
        Self {
            prefixes,
            legacy: Vec::new(),
            header_name: Cow::Borrowed("X-API-Key"),
            #[cfg(feature = "http")]
            header: Some(http::HeaderName::from_static("x-api-key")),
            sources: Sources::ALL,
            query_param: None,
            refuse_query_params: vec![Cow::Borrowed("api_key"), Cow::Borrowed("apikey")],
            max_len: DEFAULT_MAX_LEN,
        }
    }

    /// The API-key header's name (case-insensitive). Defaults to `X-API-Key`.
    pub fn with_header_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.header_name = name.into();
        #[cfg(feature = "http")]
        {
            self.header = http::HeaderName::from_bytes(self.header_name.as_bytes()).ok();
        }
        self
    }

    /// Which headers keys are read from. Defaults to [`Sources::ALL`] (the
    /// API-key header and `Authorization: Bearer`). Without
    /// [`Sources::BEARER`], Bearer tokens are all [`Extracted::NotOurs`].
    pub fn with_sources(mut self, sources: Sources) -> Self {
        self.sources = sources;
        self
    }

    /// Accepts keys in the query-string parameter `name` (URLs end up in
    /// logs, caches and browser history: avoid it). Defaults to refusing
    /// query-string keys: a request carrying `api_key` or `apikey` in its
    /// query gets a 400 error so the client learns, instead of being
    /// silently ignored.
    pub fn with_query_param(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.query_param = Some(name.into());
        self
    }

    /// Largest accepted value in bytes, checked before any other work.
    /// Defaults to [`DEFAULT_MAX_LEN`] (256).
    pub fn with_max_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// Whether `scheme` is accepted.
    pub fn accepts(&self, scheme: Scheme) -> bool {
        match scheme {
            Scheme::ApiKeyHeader => self.sources.contains(Sources::API_KEY_HEADER),
            Scheme::Bearer => self.sources.contains(Sources::BEARER),
            Scheme::Query => self.query_param.is_some(),
        }
    }

    /// Largest accepted value in bytes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The API-key header's configured name.
    pub fn header_name(&self) -> &str {
        &self.header_name
    }

    /// Where this extractor takes keys from, in preference order, as a
    /// client would write them: the API-key header's name (as configured),
    /// `Authorization: Bearer`, and `?NAME=` for an accepted query
    /// parameter. The `MISSING_API_KEY` answer of a [`Gate`](super::gate::Gate)
    /// lists exactly these.
    ///
    /// ```
    /// use apikey::PrefixRegistry;
    /// use apikey::web::Extractor;
    /// let e = Extractor::new(PrefixRegistry::with_builtins());
    /// assert_eq!(e.accepted(), ["X-API-Key", "Authorization: Bearer"]);
    /// let bearer_only = e.with_sources(apikey::web::Sources::BEARER);
    /// assert_eq!(bearer_only.accepted(), ["Authorization: Bearer"]);
    /// ```
    pub fn accepted(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(3);
        if self.accepts(Scheme::ApiKeyHeader) {
            out.push(self.header_name.clone().into_owned());
        }
        if self.accepts(Scheme::Bearer) {
            out.push("Authorization: Bearer".to_owned());
        }
        if let Some(q) = &self.query_param {
            out.push(format!("?{q}="));
        }
        out
    }

    /// Also takes Bearer tokens starting with `prefix` as ours: the legacy
    /// prefix of keys imported from another system
    /// ([`KeyManager::with_legacy_prefix`](crate::KeyManager::with_legacy_prefix)).
    /// Defaults to none. A [`Gate`](super::gate::Gate) adds its
    /// authenticator's declared legacy prefixes to its extractor itself.
    /// (The API-key header takes any value, legacy keys included.)
    ///
    /// Only a token starting with a registered or a legacy prefix is ours;
    /// any other Bearer token (a JWT) stays [`Extracted::NotOurs`].
    ///
    /// ```
    /// use apikey::PrefixRegistry;
    /// use apikey::web::{Extracted, Extractor, Scheme};
    /// let extractor = Extractor::new(PrefixRegistry::with_builtins()).with_legacy_prefix("oldco_");
    /// let h = [("Authorization", "Bearer oldco_8f14e45fceea167a")];
    /// let Extracted::Key(key) = extractor.extract(h)? else { panic!() };
    /// assert_eq!(key.scheme(), Scheme::Bearer);
    /// let jwt = [("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")];
    /// assert_eq!(extractor.extract(jwt)?, Extracted::NotOurs);
    /// # Ok::<(), apikey::Error>(())
    /// ```
    pub fn with_legacy_prefix(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        let prefix = prefix.into();
        if !prefix.is_empty() && !self.legacy.contains(&prefix) {
            self.legacy.push(prefix);
        }
        self
    }

    /// The prefixes that make a Bearer token ours.
    pub fn prefixes(&self) -> &PrefixRegistry {
        &self.prefixes
    }

    /// The legacy prefixes that make a Bearer token ours
    /// ([`with_legacy_prefix`](Self::with_legacy_prefix)).
    pub fn legacy_prefixes(&self) -> impl Iterator<Item = &str> {
        self.legacy.iter().map(|p| p.as_ref())
    }

    /// Extracts from headers only.
    ///
    /// `headers` yields `(name, value)` pairs whose names and values are
    /// anything byte-like: `(&str, &str)`, `(&HeaderName, &HeaderValue)`,
    /// `(&[u8], &[u8])`.
    ///
    /// # Errors
    /// See the [`web`](crate::web) module docs.
    pub fn extract<'a, I, N, V>(&self, headers: I) -> Result<Extracted<'a>>
    where
        I: IntoIterator<Item = (N, &'a V)>,
        N: AsRef<[u8]>,
        V: AsRef<[u8]> + ?Sized + 'a,
    {
        self.extract_with_query(headers, None)
    }

    /// Extracts from headers and the raw query string (without the `?`).
    ///
    /// ```
    /// use apikey::PrefixRegistry;
    /// use apikey::web::Extractor;
    ///
    /// let no_headers: [(&str, &str); 0] = [];
    /// let refused = Extractor::new(PrefixRegistry::with_builtins());
    /// let err = refused.extract_with_query(no_headers, Some("q=1&api_key=sk_live_x")).unwrap_err();
    /// assert_eq!(err.code(), "INVALID_REQUEST");
    /// ```
    ///
    /// # Errors
    /// See the [`web`](crate::web) module docs.
    pub fn extract_with_query<'a, I, N, V>(
        &self,
        headers: I,
        query: Option<&'a str>,
    ) -> Result<Extracted<'a>>
    where
        I: IntoIterator<Item = (N, &'a V)>,
        N: AsRef<[u8]>,
        V: AsRef<[u8]> + ?Sized + 'a,
    {
        // Every value is looked at before deciding, so the outcome is a
        // function of the set of values, never of their order (see the
        // module docs for the precedence).
        let mut seen = Seen::default();
        for (name, value) in headers {
            let name = name.as_ref();
            let value = value.as_ref();
            if self.accepts(Scheme::ApiKeyHeader)
                && name.eq_ignore_ascii_case(self.header_name.as_bytes())
            {
                self.api_key_value(value, &mut seen);
            } else if name.eq_ignore_ascii_case(b"authorization") {
                self.authorization_value(value, &mut seen);
            } else {
                seen.origin.see(name, value);
            }
        }
        if let Some(query) = query {
            self.scan_query(query, &mut seen);
        }
        seen.outcome()
    }

    /// Extracts from an [`http::HeaderMap`] and the request URI's query.
    ///
    /// ```
    /// use apikey::PrefixRegistry;
    /// use apikey::web::{Extracted, Extractor, Scheme};
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("authorization", "Bearer sk_live_abc".parse().unwrap());
    /// let extractor = Extractor::new(PrefixRegistry::with_builtins());
    /// let Extracted::Key(key) = extractor.extract_header_map(&headers, None)? else { panic!() };
    /// assert_eq!(key.scheme(), Scheme::Bearer);
    /// # Ok::<(), apikey::Error>(())
    /// ```
    ///
    /// # Errors
    /// See the [`web`](crate::web) module docs.
    #[cfg(feature = "http")]
    pub fn extract_header_map<'a>(
        &self,
        headers: &'a http::HeaderMap,
        query: Option<&'a str>,
    ) -> Result<Extracted<'a>> {
        // The same outcome as `extract_with_query(headers.iter(), query)`
        // (every value of the two names is read before deciding), by
        // looking the names up instead of comparing every header's name.
        let mut seen = Seen::default();
        let api_key = self
            .header
            .as_ref()
            .filter(|_| self.accepts(Scheme::ApiKeyHeader));
        if let Some(name) = api_key {
            for value in headers.get_all(name) {
                self.api_key_value(value.as_bytes(), &mut seen);
            }
        }
        // A service that reads keys from a header named `Authorization`
        // reads its every value as a key, as the scan does.
        if api_key.is_none_or(|name| name != http::header::AUTHORIZATION) {
            for value in headers.get_all(http::header::AUTHORIZATION) {
                self.authorization_value(value.as_bytes(), &mut seen);
            }
        }
        // Read only for a publishable key.
        seen.origin = RequestOrigin::in_map(headers);
        if let Some(query) = query {
            self.scan_query(query, &mut seen);
        }
        seen.outcome()
    }

    /// A value of the API-key header.
    #[inline]
    fn api_key_value<'a>(&self, value: &'a [u8], seen: &mut Seen<'a>) {
        match self.check_value(value) {
            Ok("") => {}
            Ok(text) => seen.key(text, Scheme::ApiKeyHeader),
            Err(e) => seen.error(e),
        }
    }

    /// A value of `Authorization`.
    #[inline]
    fn authorization_value<'a>(&self, value: &'a [u8], seen: &mut Seen<'a>) {
        match self.bearer_token(value) {
            Ok(Some(text)) => seen.key(text, Scheme::Bearer),
            Ok(None) => seen.foreign = true,
            Err(e) => seen.error(e),
        }
    }

    /// Trims optional whitespace, enforces the length limit first, then
    /// printable ASCII.
    #[inline]
    fn check_value<'a>(&self, value: &'a [u8]) -> Result<&'a str> {
        if value.len() > self.max_len.saturating_add(16) {
            return Err(Error::MalformedApiKey(MalformedReason::Length));
        }
        let value = trim_ows(value);
        if value.len() > self.max_len {
            return Err(Error::MalformedApiKey(MalformedReason::Length));
        }
        visible_ascii(value)
    }

    /// `Some(token)` for a Bearer token of ours, `None` for anything else.
    #[inline]
    fn bearer_token<'a>(&self, value: &'a [u8]) -> Result<Option<&'a str>> {
        let value = trim_ows(value);
        const BEARER: &[u8] = b"bearer ";
        if !self.accepts(Scheme::Bearer) {
            return Ok(None);
        }
        if value.len() < BEARER.len() || !value[..BEARER.len()].eq_ignore_ascii_case(BEARER) {
            // Our key without the scheme: named as such (seed 001's "wrong
            // format"), not taken for another service's credential.
            if self.is_ours(value) && !value.contains(&b' ') {
                return Err(Error::MalformedApiKey(MalformedReason::MissingBearer));
            }
            return Ok(None);
        }
        let token = trim_ows(&value[BEARER.len()..]);
        if !self.is_ours(token) {
            return Ok(None);
        }
        self.check_value(token).map(Some)
    }

    /// Whether `token` starts with a registered or declared legacy prefix;
    /// the comparisons are bounded by the prefix length, whatever the
    /// token's size.
    #[inline]
    fn is_ours(&self, token: &[u8]) -> bool {
        self.prefixes
            .iter()
            .any(|e| token.starts_with(e.prefix.as_str().as_bytes()))
            || self.legacy.iter().any(|l| token.starts_with(l.as_bytes()))
    }

    fn scan_query<'a>(&self, query: &'a str, seen: &mut Seen<'a>) {
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match &self.query_param {
                Some(param) if name == param.as_ref() => match self.check_value(value.as_bytes()) {
                    Ok("") => {}
                    Ok(text) => seen.key(text, Scheme::Query),
                    Err(e) => seen.error(e),
                },
                None if self
                    .refuse_query_params
                    .iter()
                    .any(|p| name.eq_ignore_ascii_case(p)) =>
                {
                    seen.query_refused = true;
                }
                _ => {}
            }
        }
    }
}

/// What one request carried, gathered before any decision.
#[derive(Default)]
struct Seen<'a> {
    /// A candidate key (the first seen, with the preferred scheme).
    found: Option<PresentedKey<'a>>,
    /// Two different candidate keys were seen.
    conflict: bool,
    /// Credentials that are not ours were seen.
    foreign: bool,
    /// A key was presented in the query string while that is refused.
    query_refused: bool,
    /// The most serious malformed value: `Length`, then `Charset`.
    malformed: Option<MalformedReason>,
    /// A key of ours in `Authorization` without `Bearer`: named only when
    /// no key was presented correctly (clients that send the key in both
    /// headers keep working).
    missing_bearer: bool,
    /// `Origin` and `Referer`.
    origin: RequestOrigin<'a>,
}

impl<'a> Seen<'a> {
    fn key(&mut self, text: &'a str, scheme: Scheme) {
        match &mut self.found {
            None => {
                self.found = Some(PresentedKey {
                    text,
                    scheme,
                    origin: RequestOrigin::default(),
                    route: None,
                })
            }
            // Not secret-dependent timing worth hiding: both values come
            // from the same client. The same key twice reports the
            // preferred scheme (API-key header, then Bearer, then query).
            Some(prev) if prev.text == text => {
                if scheme.rank() < prev.scheme.rank() {
                    prev.scheme = scheme;
                }
            }
            Some(_) => self.conflict = true,
        }
    }

    fn error(&mut self, e: Error) {
        if let Error::MalformedApiKey(MalformedReason::MissingBearer) = e {
            self.missing_bearer = true;
        } else if let Error::MalformedApiKey(reason) = e {
            // A total order, so the outcome never depends on header order:
            // length, then charset, then anything else.
            let rank = |r: MalformedReason| match r {
                MalformedReason::Length => 0u8,
                MalformedReason::Charset => 1,
                _ => 2,
            };
            if self.malformed.is_none_or(|m| rank(reason) < rank(m)) {
                self.malformed = Some(reason);
            }
        }
    }

    fn outcome(self) -> Result<Extracted<'a>> {
        if let Some(reason) = self.malformed {
            return Err(Error::MalformedApiKey(reason));
        }
        if self.query_refused {
            return Err(Error::InvalidInput(
                "API keys are not accepted in the query string; use a header".into(),
            ));
        }
        if self.conflict {
            return Err(Error::InvalidInput(
                "the request carries more than one different API key".into(),
            ));
        }
        match self.found {
            Some(key) => Ok(Extracted::Key(PresentedKey {
                origin: self.origin,
                ..key
            })),
            None if self.missing_bearer => {
                Err(Error::MalformedApiKey(MalformedReason::MissingBearer))
            }
            None if self.foreign => Ok(Extracted::NotOurs),
            None => Err(Error::MissingApiKey),
        }
    }
}

#[inline]
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[inline]
fn visible_ascii(v: &[u8]) -> Result<&str> {
    // Branch-free, so the compiler checks 16 bytes an instruction (a key
    // is about 60): every presented key is all visible, so an early exit
    // buys nothing.
    if !v
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
    {
        return Err(Error::MalformedApiKey(MalformedReason::Charset));
    }
    std::str::from_utf8(v).map_err(|_| Error::MalformedApiKey(MalformedReason::Charset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex() -> Extractor {
        Extractor::new(PrefixRegistry::with_builtins())
    }

    fn key<'a>(r: Result<Extracted<'a>>) -> (&'a str, Scheme) {
        match r {
            Ok(Extracted::Key(k)) => (k.expose_secret(), k.scheme()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn visible_ascii_is_0x21_to_0x7e() {
        for b in 0u8..=255 {
            let v = [b'k', b, b'k'];
            assert_eq!(
                visible_ascii(&v).is_ok(),
                (0x21..=0x7e).contains(&b),
                "byte {b:#x}"
            );
        }
        assert_eq!(visible_ascii(b"!~sk_live_x").ok(), Some("!~sk_live_x"));
    }

    #[test]
    fn trims_and_matches_case_insensitively() {
        let h = [("X-Api-KEY", " sk_live_a \t")];
        assert_eq!(key(ex().extract(h)), ("sk_live_a", Scheme::ApiKeyHeader));
        let h = [("AUTHORIZATION", "bEaReR   sk_live_a")];
        assert_eq!(key(ex().extract(h)), ("sk_live_a", Scheme::Bearer));
    }

    #[test]
    fn empty_header_is_missing() {
        let h = [("x-api-key", "  ")];
        assert!(matches!(ex().extract(h), Err(Error::MissingApiKey)));
    }

    #[test]
    fn other_authorization_schemes_are_not_ours() {
        for v in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer eyJx",
            "Token sk_live_a",
        ] {
            assert_eq!(
                ex().extract([("authorization", v)]).ok(),
                Some(Extracted::NotOurs),
                "{v}"
            );
        }
        // ... unless the API-key header is there too.
        let h = [("authorization", "Bearer eyJx"), ("x-api-key", "sk_live_a")];
        assert_eq!(key(ex().extract(h)).1, Scheme::ApiKeyHeader);
    }

    #[test]
    fn oversized_jwt_is_not_ours_but_oversized_key_is_rejected() {
        let jwt = format!("Bearer eyJ{}", "a".repeat(5000));
        assert_eq!(
            ex().extract([("authorization", jwt.as_str())]).ok(),
            Some(Extracted::NotOurs)
        );
        let long = format!("Bearer sk_live_{}", "a".repeat(300));
        assert!(matches!(
            ex().extract([("authorization", long.as_str())]),
            Err(Error::MalformedApiKey(MalformedReason::Length))
        ));
    }

    #[test]
    fn disabled_schemes() {
        let h = [("x-api-key", "sk_live_a")];
        assert!(matches!(
            ex().with_sources(Sources::BEARER).extract(h),
            Err(Error::MissingApiKey)
        ));
        let h = [("authorization", "Bearer sk_live_a")];
        assert_eq!(
            ex().with_sources(Sources::API_KEY_HEADER).extract(h).ok(),
            Some(Extracted::NotOurs)
        );
        let h = [("api-key", "sk_live_a")];
        assert_eq!(
            key(ex().with_header_name("Api-Key").extract(h)).0,
            "sk_live_a"
        );
    }

    #[test]
    fn query_param() {
        let none: [(&str, &str); 0] = [];
        let e = ex().with_query_param("key");
        assert_eq!(
            key(e.extract_with_query(none, Some("a=1&key=sk_live_q"))),
            ("sk_live_q", Scheme::Query)
        );
        // Same key in header and query is fine; different is not.
        let h = [("x-api-key", "sk_live_q")];
        assert!(e.extract_with_query(h, Some("key=sk_live_q")).is_ok());
        assert!(matches!(
            e.extract_with_query(h, Some("key=sk_live_r")),
            Err(Error::InvalidInput(_))
        ));
        // Unrelated params are fine when refusing.
        assert!(matches!(
            ex().extract_with_query(none, Some("q=api_key")),
            Err(Error::MissingApiKey)
        ));
        assert!(matches!(
            ex().extract_with_query(none, Some("APIKEY=x")),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn bytes_and_duplicates() {
        let h: [(&[u8], &[u8]); 2] = [(b"x-api-key", b"sk_live_a"), (b"x-api-key", b"sk_live_a")];
        assert!(ex().extract(h).is_ok());
        let h: [(&[u8], &[u8]); 1] = [(b"x-api-key", b"sk_live_\xc3\xa9")];
        assert!(matches!(
            ex().extract(h),
            Err(Error::MalformedApiKey(MalformedReason::Charset))
        ));
        let h: [(&[u8], &[u8]); 1] = [(b"x-api-key", b"sk_live\x00a")];
        assert!(matches!(
            ex().extract(h),
            Err(Error::MalformedApiKey(MalformedReason::Charset))
        ));
    }

    /// The header-map path (what the axum layer runs) looks the two names
    /// up instead of scanning: it must decide exactly as the scan, for
    /// every subset of a set of awkward headers, under several extractor
    /// configurations.
    #[cfg(feature = "http")]
    #[test]
    fn header_map_lookup_decides_as_the_scan() {
        let oversized = format!("sk_live_{}", "a".repeat(300));
        let headers: [(&str, &str); 11] = [
            ("X-API-Key", "sk_live_aaaa"),
            ("x-api-key", "sk_live_aaaa"),
            ("x-api-key", "sk_live_bbbb"),
            ("Authorization", "Bearer sk_live_aaaa"),
            ("authorization", "Basic dXNlcjpwdw=="),
            ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
            ("x-api-key", oversized.as_str()),
            ("x-api-key", "   "),
            ("x-token", "sk_live_cccc"),
            ("Origin", "https://shop.example"),
            ("referer", "https://shop.example/x"),
        ];
        let extractors = [
            ex(),
            ex().with_header_name("X-Token"),
            ex().with_header_name("authorization"),
            ex().with_sources(Sources::BEARER),
            ex().with_sources(Sources::API_KEY_HEADER),
            ex().with_header_name("not a header name"),
        ];
        for e in &extractors {
            for mask in 0u32..(1 << headers.len()) {
                let chosen: Vec<(&str, &str)> = (0..headers.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| headers[i])
                    .collect();
                let mut map = http::HeaderMap::new();
                for (n, v) in &chosen {
                    map.append(
                        http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        http::HeaderValue::from_str(v).unwrap(),
                    );
                }
                let scan = e.extract(chosen.iter().map(|(n, v)| (*n, *v)));
                let lookup = e.extract_header_map(&map, None);
                let describe = |r: &Result<Extracted<'_>>| match r {
                    Ok(Extracted::Key(k)) => format!("key {} {:?}", k.expose_secret(), k.scheme()),
                    Ok(Extracted::NotOurs) => "not ours".to_owned(),
                    Err(e) => format!("{e:?}"),
                };
                assert_eq!(describe(&scan), describe(&lookup), "{chosen:?} {e:?}");
                if let (Ok(Extracted::Key(a)), Ok(Extracted::Key(b))) = (&scan, &lookup) {
                    assert_eq!(a.origin().to_header(), b.origin().to_header(), "{chosen:?}");
                }
            }
        }
    }

    #[test]
    fn extraction_outcome_does_not_depend_on_header_order() {
        let oversized = format!("sk_live_{}", "a".repeat(300));
        let (a, b) = ("sk_live_aaaa", "sk_live_bbbb");
        let bearer_b = format!("Bearer {b}");
        let headers = [
            ("x-api-key", a),
            ("authorization", bearer_b.as_str()),
            ("x-api-key", oversized.as_str()),
        ];
        let mut outcomes = Vec::new();
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let h = order.map(|i| headers[i]);
            let r = ex().extract(h);
            outcomes.push(r.map_err(|e| (e.code().as_str(), e.to_string())));
        }
        for o in &outcomes {
            assert_eq!(
                o,
                &Err((
                    "MALFORMED_API_KEY",
                    "the API key is malformed (length)".to_owned()
                ))
            );
        }
        // Two different keys and a bad character: the character wins, in
        // either order.
        let h1 = [
            ("x-api-key", a),
            ("x-api-key", b),
            ("x-api-key", "sk\u{7f}"),
        ];
        let h2 = [
            ("x-api-key", "sk\u{7f}"),
            ("x-api-key", b),
            ("x-api-key", a),
        ];
        for h in [h1, h2] {
            assert!(matches!(
                ex().extract(h),
                Err(Error::MalformedApiKey(MalformedReason::Charset))
            ));
        }
        // A refused query key and two different keys: the query error wins.
        let e = ex();
        let two = [("x-api-key", a), ("x-api-key", b)];
        let err = e.extract_with_query(two, Some("api_key=x")).unwrap_err();
        assert!(err.to_string().contains("query string"), "{err}");
    }

    #[test]
    fn legacy_prefixes_make_bearer_tokens_ours_and_nothing_else() {
        let e = ex().with_legacy_prefix("oldco_");
        let h = [("authorization", "Bearer oldco_8f14e45f")];
        assert_eq!(key(e.extract(h)), ("oldco_8f14e45f", Scheme::Bearer));
        // Foreign credentials are still not ours, as without the prefix.
        for v in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer eyJx",
            "Token oldco_8f14e45f",
            "Bearer old",
        ] {
            assert_eq!(
                e.extract([("authorization", v)]).ok(),
                Some(Extracted::NotOurs),
                "{v}"
            );
        }
        // Without Bearer among the sources, not even a legacy key is read
        // from it.
        let h = [("authorization", "Bearer oldco_8f14e45f")];
        assert_eq!(
            e.clone()
                .with_sources(Sources::API_KEY_HEADER)
                .extract(h)
                .ok(),
            Some(Extracted::NotOurs)
        );
        // Oversized: refused like any key of ours.
        let long = format!("Bearer oldco_{}", "a".repeat(300));
        assert!(matches!(
            e.extract([("authorization", long.as_str())]),
            Err(Error::MalformedApiKey(MalformedReason::Length))
        ));
        assert_eq!(e.legacy_prefixes().collect::<Vec<_>>(), ["oldco_"]);
    }

    #[test]
    fn debug_hides_text() {
        let h = [("x-api-key", "sk_live_secret")];
        let s = format!("{:?}", ex().extract(h));
        assert!(!s.contains("secret"), "{s}");
    }

    /// `missing_bearer` names a key that was sent wrongly and nothing else:
    /// a request whose key arrives correctly (`X-API-Key`, or Bearer) with a
    /// bare copy in `Authorization` as well (clients that send both) is
    /// admitted as it was before the reason existed.
    #[test]
    fn a_bare_authorization_copy_beside_a_good_key_is_not_malformed() {
        for h in [
            [("x-api-key", "sk_live_a"), ("authorization", "sk_live_a")],
            [("authorization", "sk_live_a"), ("x-api-key", "sk_live_a")],
            [
                ("authorization", "Bearer sk_live_a"),
                ("authorization", "sk_live_a"),
            ],
        ] {
            let got = ex().extract(h);
            assert!(matches!(got, Ok(Extracted::Key(_))), "{h:?}: {got:?}");
        }
        // Alone, it is named as such.
        assert!(matches!(
            ex().extract([("authorization", "sk_live_a")]),
            Err(Error::MalformedApiKey(MalformedReason::MissingBearer))
        ));
    }
}
