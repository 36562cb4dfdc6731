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
//! * 429 and 503 answers carry `Retry-After` (whole seconds, at least 1).
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
        details(&mut body, err);
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
    /// made from a `String`.
    #[cfg(feature = "http")]
    pub fn into_http<B: From<String>>(self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.body));
        *response.status_mut() = http::StatusCode::from_u16(self.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let map = response.headers_mut();
        for (name, value) in self.headers {
            if let Ok(value) = http::HeaderValue::try_from(value) {
                map.append(http::HeaderName::from_static(name), value);
            }
        }
        response
    }
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
/// seconds computed from the wall-clock `now`.
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
        Error::MissingApiKey => out.push_str(r#"{"header":"X-API-Key"}"#),
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
}
