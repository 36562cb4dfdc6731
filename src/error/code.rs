//! [`ErrorCode`]: the stable wire code of every error, with everything a
//! client sees of it in one place: HTTP status, public message and
//! `WWW-Authenticate` challenge.

use std::fmt;

use serde::{Serialize, Serializer};

/// The stable, machine-readable code of an [`Error`](crate::Error), as
/// data: the code string, its HTTP status, the fixed public message and the
/// RFC 6750 challenge. New codes may be added (`#[non_exhaustive]`); an
/// existing code never changes its string.
///
/// ```
/// use apikey::{Error, ErrorCode};
/// let code = Error::InvalidApiKey.code();
/// assert_eq!(code, ErrorCode::InvalidApiKey);
/// assert_eq!(code.as_str(), "INVALID_API_KEY");
/// assert_eq!(code, "INVALID_API_KEY"); // compares with the string too
/// assert_eq!(code.http_status(), 401);
/// assert_eq!(code.message(), "The provided API key is invalid.");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `MISSING_API_KEY` (401): no key presented.
    MissingApiKey,
    /// `MALFORMED_API_KEY` (401): not a key.
    MalformedApiKey,
    /// `INVALID_API_KEY` (401): forged, unknown id or wrong secret.
    InvalidApiKey,
    /// `EXPIRED_API_KEY` (401).
    ExpiredApiKey,
    /// `NOT_YET_VALID` (401).
    NotYetValid,
    /// `DISABLED_API_KEY` (401).
    DisabledApiKey,
    /// `REVOKED_API_KEY` (401).
    RevokedApiKey,
    /// `WRONG_ENVIRONMENT` (403).
    WrongEnvironment,
    /// `INSUFFICIENT_SCOPE` (403).
    InsufficientScope,
    /// `IP_NOT_ALLOWED` (403).
    IpNotAllowed,
    /// `POLICY_VIOLATION` (403): the key does not comply with the issuance
    /// policy in force (refused, not revoked; see
    /// [`KeyPolicies`](crate::KeyPolicies)).
    PolicyViolation,
    /// `ORIGIN_NOT_ALLOWED` (403): a publishable key used from a page whose
    /// origin is not on its allowlist, or with no origin at all.
    OriginNotAllowed,
    /// `RATE_LIMITED` (429).
    RateLimited,
    /// `USAGE_EXCEEDED` (429): no credits left.
    UsageExceeded,
    /// `TOO_MANY_FAILED_ATTEMPTS` (429): the failure throttle.
    TooManyFailedAttempts,
    /// `STORE_UNAVAILABLE` (503): never "valid", never "invalid".
    StoreUnavailable,
    /// `INVALID_SCOPE` (400).
    InvalidScope,
    /// `INVALID_REQUEST` (400).
    InvalidRequest,
    /// `KEY_NOT_FOUND` (404).
    KeyNotFound,
    /// `KEY_LIMIT_REACHED` (409).
    KeyLimitReached,
    /// `INVALID_STATE` (409).
    InvalidState,
    /// `INVALID_PREFIX` (500): configuration.
    InvalidPrefix,
    /// `INVALID_SECRET` (500): configuration.
    InvalidSecret,
    /// `INVALID_RECORD` (500): stored data.
    InvalidRecord,
}

/// The `error` parameter of a `WWW-Authenticate: Bearer` challenge
/// (RFC 6750 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Challenge {
    /// A challenge with no error code: no credentials were presented.
    Plain,
    /// `error="invalid_token"`.
    InvalidToken,
    /// `error="insufficient_scope"`.
    InsufficientScope,
    /// `error="invalid_request"`.
    InvalidRequest,
}

impl Challenge {
    /// The `error` parameter's value, `None` for [`Challenge::Plain`].
    pub const fn error(self) -> Option<&'static str> {
        match self {
            Self::Plain => None,
            Self::InvalidToken => Some("invalid_token"),
            Self::InsufficientScope => Some("insufficient_scope"),
            Self::InvalidRequest => Some("invalid_request"),
        }
    }
}

impl ErrorCode {
    /// Every code, in table order.
    pub const ALL: [ErrorCode; 24] = [
        Self::MissingApiKey,
        Self::MalformedApiKey,
        Self::InvalidApiKey,
        Self::ExpiredApiKey,
        Self::NotYetValid,
        Self::DisabledApiKey,
        Self::RevokedApiKey,
        Self::WrongEnvironment,
        Self::InsufficientScope,
        Self::IpNotAllowed,
        Self::PolicyViolation,
        Self::OriginNotAllowed,
        Self::RateLimited,
        Self::UsageExceeded,
        Self::TooManyFailedAttempts,
        Self::StoreUnavailable,
        Self::InvalidScope,
        Self::InvalidRequest,
        Self::KeyNotFound,
        Self::KeyLimitReached,
        Self::InvalidState,
        Self::InvalidPrefix,
        Self::InvalidSecret,
        Self::InvalidRecord,
    ];

    /// The code string (`INVALID_API_KEY`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingApiKey => "MISSING_API_KEY",
            Self::MalformedApiKey => "MALFORMED_API_KEY",
            Self::InvalidApiKey => "INVALID_API_KEY",
            Self::ExpiredApiKey => "EXPIRED_API_KEY",
            Self::NotYetValid => "NOT_YET_VALID",
            Self::DisabledApiKey => "DISABLED_API_KEY",
            Self::RevokedApiKey => "REVOKED_API_KEY",
            Self::WrongEnvironment => "WRONG_ENVIRONMENT",
            Self::InsufficientScope => "INSUFFICIENT_SCOPE",
            Self::IpNotAllowed => "IP_NOT_ALLOWED",
            Self::PolicyViolation => "POLICY_VIOLATION",
            Self::OriginNotAllowed => "ORIGIN_NOT_ALLOWED",
            Self::RateLimited => "RATE_LIMITED",
            Self::UsageExceeded => "USAGE_EXCEEDED",
            Self::TooManyFailedAttempts => "TOO_MANY_FAILED_ATTEMPTS",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::InvalidScope => "INVALID_SCOPE",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::KeyNotFound => "KEY_NOT_FOUND",
            Self::KeyLimitReached => "KEY_LIMIT_REACHED",
            Self::InvalidState => "INVALID_STATE",
            Self::InvalidPrefix => "INVALID_PREFIX",
            Self::InvalidSecret => "INVALID_SECRET",
            Self::InvalidRecord => "INVALID_RECORD",
        }
    }

    /// The HTTP status, as a plain number.
    ///
    /// 401: no usable credentials (missing, malformed, invalid, expired, not
    /// yet valid, disabled, revoked). 403: authenticated but not allowed
    /// (environment, scope, address, key policy). 429: rate limit, quota, brute-force
    /// throttle. 503: the store failed. Management errors use 400/404/409;
    /// configuration and stored-data errors 500.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::MissingApiKey
            | Self::MalformedApiKey
            | Self::InvalidApiKey
            | Self::ExpiredApiKey
            | Self::NotYetValid
            | Self::DisabledApiKey
            | Self::RevokedApiKey => 401,
            Self::WrongEnvironment
            | Self::InsufficientScope
            | Self::IpNotAllowed
            | Self::PolicyViolation
            | Self::OriginNotAllowed => 403,
            Self::RateLimited | Self::UsageExceeded | Self::TooManyFailedAttempts => 429,
            Self::StoreUnavailable => 503,
            Self::InvalidScope | Self::InvalidRequest => 400,
            Self::KeyNotFound => 404,
            Self::KeyLimitReached | Self::InvalidState => 409,
            Self::InvalidPrefix | Self::InvalidSecret | Self::InvalidRecord => 500,
        }
    }

    /// The fixed public message of the code, as sent in error bodies: no
    /// key material, no store error text. (`INVALID_REQUEST` bodies carry
    /// the request error's own key-free explanation instead.)
    pub const fn message(self) -> &'static str {
        match self {
            Self::MissingApiKey => "API key is required.",
            Self::MalformedApiKey => "The provided API key is malformed.",
            Self::InvalidApiKey => "The provided API key is invalid.",
            Self::ExpiredApiKey => "The API key has expired.",
            Self::NotYetValid => "The API key is not valid yet.",
            Self::DisabledApiKey => "The API key is disabled.",
            Self::RevokedApiKey => "The API key has been revoked.",
            Self::WrongEnvironment => {
                "The API key is for an environment this service does not accept."
            }
            Self::InsufficientScope => "The API key lacks a permission this request needs.",
            Self::IpNotAllowed => "The API key may not be used from this address.",
            Self::PolicyViolation => "The API key does not comply with the key policy.",
            Self::OriginNotAllowed => "The API key may not be used from this origin.",
            Self::RateLimited => "Rate limit exceeded. Retry later.",
            Self::UsageExceeded => "Usage quota exceeded.",
            Self::TooManyFailedAttempts => "Too many failed authentication attempts. Retry later.",
            Self::StoreUnavailable => "Authentication is temporarily unavailable. Retry later.",
            // The same for a missing key and another owner's: existence does not leak.
            Self::KeyNotFound => "No API key with this id.",
            Self::InvalidScope
            | Self::InvalidRequest
            | Self::KeyLimitReached
            | Self::InvalidState
            | Self::InvalidPrefix
            | Self::InvalidSecret
            | Self::InvalidRecord => "The request could not be processed.",
        }
    }

    /// The `WWW-Authenticate: Bearer` challenge an answer with this code
    /// carries, if any: every 401 (plain for `MISSING_API_KEY`, since no
    /// credentials were presented; `invalid_token` otherwise),
    /// `insufficient_scope` for a missing scope, `invalid_request` for a
    /// bad request.
    pub const fn challenge(self) -> Option<Challenge> {
        match self {
            Self::MissingApiKey => Some(Challenge::Plain),
            Self::InsufficientScope => Some(Challenge::InsufficientScope),
            Self::InvalidRequest => Some(Challenge::InvalidRequest),
            c if c.http_status() == 401 => Some(Challenge::InvalidToken),
            _ => None,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<ErrorCode> for &str {
    fn eq(&self, other: &ErrorCode) -> bool {
        *self == other.as_str()
    }
}

impl From<ErrorCode> for &'static str {
    fn from(code: ErrorCode) -> Self {
        code.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_stable() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(c.to_string(), c.as_str());
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_')
            );
        }
        assert_eq!(seen.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn every_401_challenges() {
        for c in ErrorCode::ALL {
            if c.http_status() == 401 {
                assert!(c.challenge().is_some(), "{c}");
            }
        }
    }
}
