//! HTTP answers for errors and rate-limit headers, with no web framework.
//!
//! [`ErrorResponse::from_error`] turns any [`Error`] into a status, headers
//! and a JSON body shaped like common API docs:
//!
//! ```json
//! {"success": false, "error": {"code": "INVALID_API_KEY", "message": "...", "details": {}}}
//! ```
//!
//! * 401 answers carry `WWW-Authenticate` in the RFC 6750 style
//!   (`Bearer realm="api"`, plus `error="invalid_token"` when credentials were
//!   presented); 403 for a missing scope carries `error="insufficient_scope"`;
//!   400 for an ambiguous request carries `error="invalid_request"`.
//! * `Retry-After` (whole seconds, at least 1) is on every answer a retry
//!   can fix: 503 `STORE_UNAVAILABLE`, 429 `RATE_LIMITED` and
//!   `TOO_MANY_FAILED_ATTEMPTS`, and 429 `USAGE_EXCEEDED` when a credit
//!   refill is scheduled (the wait until it). A `USAGE_EXCEEDED` with no
//!   refill policy has **no** `Retry-After`: retrying does not help until
//!   credits are added.
//! * `X-RateLimit-Reset` (Unix epoch seconds, see [`rate_limit_headers`]):
//!   on an admitted request, when the window is fully replenished; on a 429
//!   `RATE_LIMITED`, the moment a retry is admitted (now + `Retry-After`),
//!   never later.
//! * `MISSING_API_KEY` details name what the service accepts
//!   ([`ErrorResponse::for_extractor`]; a [`Gate`](crate::gate::Gate) uses
//!   its extractor).
//! * Bodies and headers never reveal whether a key id exists: an unknown id and
//!   a wrong secret are one [`Error::InvalidApiKey`] with empty details, and
//!   no key id, key text or store error text is ever written.
//!
//! ```
//! use apikey::Error;
//! use apikey::web::ErrorResponse;
//!
//! let r = ErrorResponse::from_error(&Error::InvalidApiKey);
//! assert_eq!(r.status, 401);
//! assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="api", error="invalid_token""#));
//! assert_eq!(
//!     r.body,
//!     r#"{"success":false,"error":{"code":"INVALID_API_KEY","message":"The provided API key is invalid.","details":{}}}"#
//! );
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use time::OffsetDateTime;

use crate::error::Error;
use crate::extract::Extractor;
use crate::ratelimit::{RateLimitInfo, ceil_secs};

/// A framework-agnostic HTTP answer: status, headers (lowercase names) and a
/// JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    /// HTTP status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order. `content-type` is
    /// included.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: String,
}

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "api";

impl ErrorResponse {
    /// The answer for `err`.
    pub fn from_error(err: &Error) -> Self {
        Self::from_error_in_realm(err, REALM)
    }

    /// The answer for `err`, naming `realm` in `WWW-Authenticate` (quotes
    /// and backslashes in it are dropped).
    ///
    /// ```
    /// use apikey::Error;
    /// use apikey::web::ErrorResponse;
    /// let r = ErrorResponse::from_error_in_realm(&Error::MissingApiKey, "tasks");
    /// assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="tasks""#));
    /// ```
    pub fn from_error_in_realm(err: &Error, realm: &str) -> Self {
        Self::build(err, realm, None)
    }

    /// The answer for `err` from a service that reads keys with
    /// `extractor`: like [`from_error_in_realm`](Self::from_error_in_realm),
    /// but the details of `MISSING_API_KEY` name what `extractor` accepts
    /// ([`Extractor::accepted`]): `"accepted"` lists every source and
    /// `"header"` is the API-key header's name, present only when that
    /// header is accepted. Without an extractor the default one is assumed
    /// (`X-API-Key` and `Authorization: Bearer`).
    ///
    /// ```
    /// use apikey::{Error, PrefixRegistry};
    /// use apikey::web::Extractor;
    /// use apikey::web::ErrorResponse;
    /// let bearer_only = Extractor::new(PrefixRegistry::with_builtins()).accept_api_key_header(false);
    /// let r = ErrorResponse::for_extractor(&Error::MissingApiKey, "api", &bearer_only);
    /// assert!(r.body.contains(r#""details":{"accepted":["Authorization: Bearer"]}"#));
    /// ```
    pub fn for_extractor(err: &Error, realm: &str, extractor: &Extractor) -> Self {
        Self::build(err, realm, Some(&missing_key_details(extractor)))
    }

    /// `missing`: the details JSON of `MISSING_API_KEY` (see
    /// [`missing_key_details`]); `None` for the default extractor's.
    pub(crate) fn build(err: &Error, realm: &str, missing: Option<&str>) -> Self {
        let status = err.http_status();
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("cache-control", "no-store".to_owned()),
        ];
        let realm: String = realm.chars().filter(|c| *c != '"' && *c != '\\').collect();
        if let Some(challenge) = challenge(err, &realm) {
            headers.push(("www-authenticate", challenge));
        }
        if let Some(wait) = err.retry_after() {
            headers.push(("retry-after", retry_after_secs(wait).to_string()));
        }
        let mut body = String::with_capacity(160);
        body.push_str(r#"{"success":false,"error":{"code":""#);
        body.push_str(err.code());
        body.push_str(r#"","message":"#);
        json_string(&mut body, &message(err));
        body.push_str(r#","details":"#);
        match (err, missing) {
            (Error::MissingApiKey, Some(m)) => body.push_str(m),
            (Error::MissingApiKey, None) => body.push_str(DEFAULT_MISSING_DETAILS),
            _ => details(&mut body, err),
        }
        body.push_str("}}");
        Self {
            status,
            headers,
            body,
        }
    }

    /// Adds the `X-RateLimit-*` headers for `info` (see
    /// [`rate_limit_headers`]).
    pub fn with_rate_limit(mut self, info: &RateLimitInfo, now: OffsetDateTime) -> Self {
        self.headers.extend(rate_limit_headers(info, now));
        self
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Converts into an [`http::Response`] with any body type that can be
    /// made from a `String`. Never panics: header names are lowercased, and
    /// a header whose name or value is not valid HTTP is left out.
    #[cfg(feature = "http")]
    pub fn into_http<B: From<String>>(self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.body));
        *response.status_mut() = http::StatusCode::from_u16(self.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let map = response.headers_mut();
        for (name, value) in self.headers {
            // `headers` is public: a name pushed by the caller may be
            // uppercase or invalid. `from_bytes` lowercases valid names;
            // an invalid name or value is dropped, never a panic.
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::try_from(value),
            ) {
                map.append(name, value);
            }
        }
        response
    }
}

/// The details of `MISSING_API_KEY` for the default extractor.
const DEFAULT_MISSING_DETAILS: &str =
    r#"{"header":"X-API-Key","accepted":["X-API-Key","Authorization: Bearer"]}"#;

/// The details JSON of `MISSING_API_KEY` for `extractor`: what it accepts.
pub(crate) fn missing_key_details(extractor: &Extractor) -> String {
    let accepted = extractor.accepted();
    let mut out = String::from("{");
    if extractor.accepts(crate::extract::Scheme::ApiKeyHeader) {
        out.push_str(r#""header":"#);
        json_string(&mut out, extractor.header_name());
        out.push(',');
    }
    out.push_str(r#""accepted":["#);
    for (i, a) in accepted.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, a);
    }
    out.push_str("]}");
    out
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(apikey::web::retry_after_secs(Duration::from_millis(1)), 1);
/// assert_eq!(apikey::web::retry_after_secs(Duration::from_millis(2001)), 3);
/// ```
pub fn retry_after_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}

/// The `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
/// headers (lowercase names) for `info`, the reset given as Unix epoch
/// seconds computed from the wall-clock `now`: `now + info.reset_after`,
/// rounded up. The [`Gate`](crate::gate::Gate) gives the window's full
/// replenishment on an admitted request and the retry wait on a
/// `RATE_LIMITED` refusal, so on a 429 Reset and `Retry-After` agree.
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::ratelimit::{RateLimitInfo, RateWindow};
/// use time::macros::datetime;
///
/// let info = RateLimitInfo { window: RateWindow::Hour, limit: 10_000, remaining: 9_847,
///     reset_after: Duration::from_secs(30) };
/// let h = apikey::web::rate_limit_headers(&info, datetime!(2021-10-14 17:56:07 UTC));
/// assert_eq!(h[0], ("x-ratelimit-limit", "10000".to_owned()));
/// assert_eq!(h[1], ("x-ratelimit-remaining", "9847".to_owned()));
/// assert_eq!(h[2], ("x-ratelimit-reset", "1634234197".to_owned()));
/// ```
pub fn rate_limit_headers(
    info: &RateLimitInfo,
    now: OffsetDateTime,
) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-limit", info.limit.to_string()),
        ("x-ratelimit-remaining", info.remaining.to_string()),
        (
            "x-ratelimit-reset",
            info.reset_at_unix(now.unix_timestamp()).to_string(),
        ),
    ]
}

fn challenge(err: &Error, realm: &str) -> Option<String> {
    let (code, description) = match err {
        // RFC 6750 §3.1: no error code when no credentials were presented.
        Error::MissingApiKey => return Some(format!(r#"Bearer realm="{realm}""#)),
        e if e.is_unauthenticated() => ("invalid_token", None),
        Error::InsufficientScope { required } => ("insufficient_scope", Some(required.as_str())),
        Error::InvalidInput(_) => ("invalid_request", None),
        _ => return None,
    };
    let mut s = format!(r#"Bearer realm="{realm}", error="{code}""#);
    if let Some(scope) = description {
        // Scope tokens are printable ASCII without quotes or backslashes.
        let scope: String = scope
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
            .collect();
        let _ = write!(s, r#", scope="{scope}""#);
    }
    Some(s)
}

/// Human-readable messages. Fixed text per variant: no key material, no
/// store error text.
fn message(err: &Error) -> std::borrow::Cow<'static, str> {
    use std::borrow::Cow::{Borrowed, Owned};
    match err {
        Error::MissingApiKey => Borrowed("API key is required."),
        Error::MalformedApiKey(_) => Borrowed("The provided API key is malformed."),
        Error::InvalidApiKey => Borrowed("The provided API key is invalid."),
        Error::ExpiredApiKey { .. } => Borrowed("The API key has expired."),
        Error::NotYetValid { .. } => Borrowed("The API key is not valid yet."),
        Error::DisabledApiKey => Borrowed("The API key is disabled."),
        Error::RevokedApiKey => Borrowed("The API key has been revoked."),
        Error::WrongEnvironment { .. } => {
            Borrowed("The API key is for an environment this service does not accept.")
        }
        Error::InsufficientScope { .. } => {
            Borrowed("The API key lacks a permission this request needs.")
        }
        Error::IpNotAllowed => Borrowed("The API key may not be used from this address."),
        Error::RateLimited { .. } => Borrowed("Rate limit exceeded. Retry later."),
        Error::UsageExceeded => Borrowed("Usage quota exceeded."),
        Error::TooManyFailures { .. } => {
            Borrowed("Too many failed authentication attempts. Retry later.")
        }
        Error::StoreUnavailable(_) => {
            Borrowed("Authentication is temporarily unavailable. Retry later.")
        }
        // Request errors carry a fixed, key-free explanation.
        Error::InvalidInput(m) => Owned(m.clone()),
        _ => Borrowed("The request could not be processed."),
    }
}

fn details(out: &mut String, err: &Error) {
    let rfc3339 = |t: &OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    match err {
        Error::MissingApiKey => out.push_str(DEFAULT_MISSING_DETAILS),
        Error::MalformedApiKey(reason) => {
            out.push_str(r#"{"reason":"#);
            json_string(out, reason.as_str());
            out.push('}');
        }
        Error::ExpiredApiKey { expired_at } => {
            out.push_str(r#"{"expired_at":"#);
            json_string(out, &rfc3339(expired_at));
            out.push('}');
        }
        Error::NotYetValid { not_before } => {
            out.push_str(r#"{"not_before":"#);
            json_string(out, &rfc3339(not_before));
            out.push('}');
        }
        Error::WrongEnvironment { actual } => {
            out.push_str(r#"{"environment":"#);
            json_string(out, &actual.to_string());
            out.push('}');
        }
        Error::InsufficientScope { required } => {
            out.push_str(r#"{"required":"#);
            json_string(out, required);
            out.push('}');
        }
        Error::RateLimited { retry_after } | Error::TooManyFailures { retry_after } => {
            let _ = write!(
                out,
                r#"{{"retry_after":{}}}"#,
                retry_after_secs(*retry_after)
            );
        }
        Error::StoreUnavailable(_) => {
            let _ = write!(
                out,
                r#"{{"retry_after":{}}}"#,
                retry_after_secs(err.retry_after().unwrap_or(Duration::from_secs(1)),)
            );
        }
        _ => out.push_str("{}"),
    }
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{MalformedReason, StoreError, StoreErrorKind};

    #[test]
    fn escapes() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
    }

    #[test]
    fn store_error_text_is_not_leaked() {
        let io = std::io::Error::other("password=hunter2 host=db1");
        let err = Error::StoreUnavailable(StoreError::with_source(StoreErrorKind::Unavailable, io));
        let r = ErrorResponse::from_error(&err);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(!r.body.contains("hunter2") && !r.body.contains("db1"));
        assert!(r.header("www-authenticate").is_none());
    }

    #[test]
    fn statuses_and_challenges() {
        let r = ErrorResponse::from_error(&Error::MalformedApiKey(MalformedReason::Checksum));
        assert_eq!(r.status, 401);
        assert!(r.body.contains(r#""details":{"reason":"checksum"}"#));
        let r = ErrorResponse::from_error(&Error::InsufficientScope {
            required: "tasks:write".into(),
        });
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="api", error="insufficient_scope", scope="tasks:write""#)
        );
        let r = ErrorResponse::from_error(&Error::RateLimited {
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!((r.status, r.header("retry-after")), (429, Some("2")));
        let r = ErrorResponse::from_error(&Error::UsageExceeded);
        assert_eq!((r.status, r.header("retry-after")), (429, None));
    }

    #[cfg(feature = "http")]
    #[test]
    fn into_http_never_panics_on_pushed_header_names() {
        let mut r = ErrorResponse::from_error(&Error::InvalidApiKey);
        r.headers.push(("X-Custom", "yes".to_owned()));
        r.headers.push(("bad name", "dropped".to_owned()));
        r.headers.push(("x-bad-value", "a\nb".to_owned()));
        r.headers.push(("", "dropped".to_owned()));
        let http: http::Response<String> = r.into_http();
        assert_eq!(http.status(), 401);
        assert_eq!(http.headers()["x-custom"], "yes");
        assert!(http.headers().get("x-bad-value").is_none());
        assert_eq!(http.headers().len(), 4);
    }
}
