use std::fmt::Write as _;
use std::time::Duration;

use crate::Timestamp;

use serde::Serialize;

use super::extract::{Extractor, Scheme};
use crate::error::{Error, ErrorCode};
use crate::limits::{RateLimitInfo, ceil_secs};

/// HTTP answers for errors and rate-limit headers, with no web framework.
///
/// [`ErrorResponse::from_error`] turns any [`Error`] into a status, headers
/// and a JSON body shaped like common API docs:
///
/// ```json
/// {"success": false, "error": {"code": "INVALID_API_KEY", "message": "...", "details": {}}}
/// ```
///
/// * 401 answers carry `WWW-Authenticate` in the RFC 6750 style
///   (`Bearer realm="api"`, plus `error="invalid_token"` when credentials were
///   presented); 403 for a missing scope carries `error="insufficient_scope"`;
///   400 for an ambiguous request carries `error="invalid_request"`.
/// * `Retry-After` (whole seconds, at least 1) is on every answer a retry
///   can fix: 503 `STORE_UNAVAILABLE`, 429 `RATE_LIMITED` and
///   `TOO_MANY_FAILED_ATTEMPTS`, and 429 `USAGE_EXCEEDED` when a credit
///   refill is scheduled (the wait until it). A `USAGE_EXCEEDED` with no
///   refill policy has **no** `Retry-After`: retrying does not help until
///   credits are added.
/// * `X-RateLimit-Reset` (Unix epoch seconds, see [`rate_limit_headers`]):
///   on an admitted request, when the window is fully replenished; on a 429
///   `RATE_LIMITED`, the moment a retry is admitted (now + `Retry-After`),
///   never later.
/// * `MISSING_API_KEY` details name what the service accepts
///   ([`ErrorResponse::for_extractor`]; a [`Gate`](super::gate::Gate) uses
///   its extractor).
/// * Bodies and headers never reveal whether a key id exists: an unknown id and
///   a wrong secret are one [`Error::InvalidApiKey`] with empty details, and
///   no key id, key text or store error text is ever written.
///
/// ```
/// use apikey::Error;
/// use apikey::web::ErrorResponse;
///
/// let r = ErrorResponse::from_error(&Error::InvalidApiKey);
/// assert_eq!(r.status, 401);
/// assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="api", error="invalid_token""#));
/// assert_eq!(
///     r.body,
///     r#"{"success":false,"error":{"code":"INVALID_API_KEY","message":"The provided API key is invalid.","details":{}}}"#
/// );
/// ```
///
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
        Self::build(err, realm, None, None)
    }

    /// The answer for `err` from a service that reads keys with
    /// `extractor`: like [`from_error_in_realm`](Self::from_error_in_realm),
    /// but the details of `MISSING_API_KEY` name what `extractor` accepts
    /// ([`Extractor::accepted`]): `"accepted"` lists every source and
    /// `"header"` names the header to send the key in (see
    /// [`MissingKeyDetails::header`]). Without an extractor the default one
    /// is assumed (`X-API-Key` and `Authorization: Bearer`).
    ///
    /// ```
    /// use apikey::{Error, PrefixRegistry};
    /// use apikey::web::Extractor;
    /// use apikey::web::ErrorResponse;
    /// let bearer_only = Extractor::new(PrefixRegistry::with_builtins()).with_sources(apikey::web::Sources::BEARER);
    /// let r = ErrorResponse::for_extractor(&Error::MissingApiKey, "api", &bearer_only);
    /// assert!(r.body.contains(r#""details":{"header":"Authorization","accepted":["Authorization: Bearer"]}"#));
    /// ```
    pub fn for_extractor(err: &Error, realm: &str, extractor: &Extractor) -> Self {
        Self::build(err, realm, Some(&missing_key_details(extractor)), None)
    }

    /// `missing`: the details of `MISSING_API_KEY` (see
    /// [`missing_key_details`]); `None` for the default extractor's.
    ///
    /// `retry_hint`: a wait the error does not carry (a `USAGE_EXCEEDED`'s
    /// next refill): the `Retry-After` header and, when the error has no
    /// details of its own, `details.retry_after`, as on every other 429.
    pub(crate) fn build(
        err: &Error,
        realm: &str,
        missing: Option<&MissingKeyDetails>,
        retry_hint: Option<Duration>,
    ) -> Self {
        let code = err.code();
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("cache-control", "no-store".to_owned()),
        ];
        let realm: String = realm.chars().filter(|c| *c != '"' && *c != '\\').collect();
        if let Some(challenge) = challenge(err, &realm) {
            headers.push(("www-authenticate", challenge));
        }
        let hinted = err.retry_after().is_none() && retry_hint.is_some();
        if let Some(wait) = err.retry_after().or(retry_hint) {
            headers.push(("retry-after", retry_after_secs(wait).to_string()));
        }
        let mut body = ErrorBody::new(err, missing);
        if let (true, Some(wait), ErrorDetails::None {}) = (hinted, retry_hint, &body.error.details)
        {
            body.error.details = ErrorDetails::RetryAfter {
                retry_after: retry_after_secs(wait),
            };
        }
        Self {
            status: code.http_status(),
            headers,
            body: body.to_json(),
        }
    }

    /// Adds the `X-RateLimit-*` headers for `info` (see
    /// [`rate_limit_headers`]).
    pub fn with_rate_limit(mut self, info: &RateLimitInfo, now: Timestamp) -> Self {
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

/// The details of `MISSING_API_KEY`: what the service accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MissingKeyDetails {
    /// The header to send the key in: the API-key header's name when that
    /// header is accepted, else `Authorization` when `Authorization: Bearer`
    /// is; absent when no header is accepted (query-string keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Every accepted source (`X-API-Key`, `Authorization: Bearer`, ...).
    pub accepted: Vec<String>,
}

/// The details of `MISSING_API_KEY` for `extractor`: what it accepts.
pub(crate) fn missing_key_details(extractor: &Extractor) -> MissingKeyDetails {
    MissingKeyDetails {
        header: if extractor.accepts(Scheme::ApiKeyHeader) {
            Some(extractor.header_name().to_owned())
        } else if extractor.accepts(Scheme::Bearer) {
            Some("Authorization".to_owned())
        } else {
            None
        },
        accepted: extractor.accepted().iter().map(|a| a.to_string()).collect(),
    }
}

/// The JSON body of every error answer:
/// `{"success": false, "error": {"code", "message", "details"}}`.
///
/// ```
/// use apikey::Error;
/// use apikey::web::ErrorBody;
/// let body = ErrorBody::new(&Error::InvalidApiKey, None);
/// assert_eq!(
///     body.to_json(),
///     r#"{"success":false,"error":{"code":"INVALID_API_KEY","message":"The provided API key is invalid.","details":{}}}"#
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// The error.
    pub error: ErrorObject,
}

/// The `error` member of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorObject {
    /// The stable code.
    pub code: ErrorCode,
    /// The public message ([`ErrorCode::message`], or the key-free
    /// explanation of a bad request).
    pub message: std::borrow::Cow<'static, str>,
    /// Structured details; an empty object when there are none.
    pub details: ErrorDetails,
}

/// The `details` of an error body. Never a key id, key text or store error
/// text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ErrorDetails {
    /// `{}`.
    None {},
    /// `MISSING_API_KEY`: what the service accepts.
    MissingKey(MissingKeyDetails),
    /// `MALFORMED_API_KEY`: `{"reason": "checksum"}`.
    Malformed {
        /// The [`MalformedReason`](crate::MalformedReason) code.
        reason: &'static str,
    },
    /// `EXPIRED_API_KEY`: `{"expired_at": RFC 3339}`.
    Expired {
        /// When the key expired.
        expired_at: String,
    },
    /// `NOT_YET_VALID`: `{"not_before": RFC 3339}`.
    NotYetValid {
        /// When the key becomes valid.
        not_before: String,
    },
    /// `WRONG_ENVIRONMENT`: `{"environment": "test"}`.
    Environment {
        /// The key's environment.
        environment: String,
    },
    /// `INSUFFICIENT_SCOPE`: `{"required": "tasks:write"}`.
    Scope {
        /// The requirement that failed.
        required: String,
    },
    /// 429 and 503 answers: `{"retry_after": seconds}`.
    RetryAfter {
        /// Whole seconds, at least 1.
        retry_after: u64,
    },
}

impl ErrorBody {
    /// The body for `err`; `missing` names what the service accepts for a
    /// `MISSING_API_KEY` (`None`: the default extractor's sources).
    pub fn new(err: &Error, missing: Option<&MissingKeyDetails>) -> Self {
        let code = err.code();
        let message = match err {
            // Request errors carry a fixed, key-free explanation.
            Error::InvalidInput(m) => std::borrow::Cow::Owned(m.clone()),
            _ => std::borrow::Cow::Borrowed(code.message()),
        };
        Self {
            success: false,
            error: ErrorObject {
                code,
                message,
                details: details(err, missing),
            },
        }
    }

    /// The body as compact JSON.
    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail; the fallback is the
        // same shape without details.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"success":false,"error":{{"code":"{}","message":"","details":{{}}}}}}"#,
                self.error.code
            )
        })
    }
}

fn default_missing() -> MissingKeyDetails {
    MissingKeyDetails {
        header: Some("X-API-Key".to_owned()),
        accepted: vec!["X-API-Key".to_owned(), "Authorization: Bearer".to_owned()],
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
/// seconds computed from the wall-clock `now`: `now + info.reset_after`,
/// rounded up. The [`Gate`](super::gate::Gate) gives the window's full
/// replenishment on an admitted request and the retry wait on a
/// `RATE_LIMITED` refusal, so on a 429 Reset and `Retry-After` agree.
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::{RateLimitInfo, RateWindow};
/// use time::macros::datetime;
///
/// let info = RateLimitInfo { window: RateWindow::Hour, limit: 10_000, remaining: 9_847,
///     reset_after: Duration::from_secs(30) };
/// let h = apikey::web::rate_limit_headers(&info, "2021-10-14T17:56:07Z".parse::<apikey::Timestamp>().unwrap());
/// assert_eq!(h[0], ("x-ratelimit-limit", "10000".to_owned()));
/// assert_eq!(h[1], ("x-ratelimit-remaining", "9847".to_owned()));
/// assert_eq!(h[2], ("x-ratelimit-reset", "1634234197".to_owned()));
/// ```
pub fn rate_limit_headers(info: &RateLimitInfo, now: Timestamp) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-limit", info.limit.to_string()),
        ("x-ratelimit-remaining", info.remaining.to_string()),
        (
            "x-ratelimit-reset",
            info.reset_at_unix(now.as_unix_secs()).to_string(),
        ),
    ]
}

fn challenge(err: &Error, realm: &str) -> Option<String> {
    let kind = err.code().challenge()?;
    let Some(code) = kind.error() else {
        // RFC 6750 §3.1: no error code when no credentials were presented.
        return Some(format!(r#"Bearer realm="{realm}""#));
    };
    let mut s = format!(r#"Bearer realm="{realm}", error="{code}""#);
    if let Error::InsufficientScope { required } = err {
        // Scope tokens are printable ASCII without quotes or backslashes.
        let scope: String = required
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
            .collect();
        let _ = write!(s, r#", scope="{scope}""#);
    }
    Some(s)
}

fn details(err: &Error, missing: Option<&MissingKeyDetails>) -> ErrorDetails {
    match err {
        Error::MissingApiKey => {
            ErrorDetails::MissingKey(missing.cloned().unwrap_or_else(default_missing))
        }
        Error::MalformedApiKey(reason) => ErrorDetails::Malformed {
            reason: reason.as_str(),
        },
        Error::ExpiredApiKey { expired_at } => ErrorDetails::Expired {
            expired_at: expired_at.to_string(),
        },
        Error::NotYetValid { not_before } => ErrorDetails::NotYetValid {
            not_before: not_before.to_string(),
        },
        Error::WrongEnvironment { actual } => ErrorDetails::Environment {
            environment: actual.to_string(),
        },
        Error::InsufficientScope { required } => ErrorDetails::Scope {
            required: required.clone(),
        },
        Error::RateLimited { retry_after } | Error::TooManyFailures { retry_after } => {
            ErrorDetails::RetryAfter {
                retry_after: retry_after_secs(*retry_after),
            }
        }
        Error::StoreUnavailable(_) => ErrorDetails::RetryAfter {
            retry_after: retry_after_secs(err.retry_after().unwrap_or(Duration::from_secs(1))),
        },
        _ => ErrorDetails::None {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{MalformedReason, StoreError, StoreErrorKind};

    #[test]
    fn escapes() {
        let r = ErrorResponse::from_error(&Error::InvalidInput("a\"b\\c\n\u{1}é".into()));
        assert!(
            r.body.contains(r#""message":"a\"b\\c\n\u0001é""#),
            "{}",
            r.body
        );
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
