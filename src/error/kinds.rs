//! The error values: [`Error`], [`StoreError`] and their kinds.

use crate::Timestamp;
use std::fmt;

use super::code::ErrorCode;
use crate::environment::Environment;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a presented string is not a well-formed key. Carried by
/// [`Error::MalformedApiKey`]; it only ever describes public structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MalformedReason {
    /// The string is too short or too long to be a key.
    Length,
    /// A character outside the key alphabet (base62 after the prefix).
    Charset,
    /// The prefix is not one the verifier knows.
    UnknownPrefix,
    /// The checksum does not match: most likely a typo or a truncated copy.
    Checksum,
    /// A field holds a value no issued key can have (a non-canonical spelling).
    NonCanonical,
    /// The key's secret version is not in the keyring.
    UnknownVersion,
    /// A key of ours sent as `Authorization: <key>`, without the `Bearer`
    /// scheme (seed 001's "missing Bearer").
    MissingBearer,
}

impl MalformedReason {
    /// A short, stable, lowercase label (for metrics and sampled logs).
    ///
    /// ```
    /// assert_eq!(apikey::MalformedReason::Checksum.as_str(), "checksum");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Charset => "charset",
            Self::UnknownPrefix => "unknown_prefix",
            Self::Checksum => "checksum",
            Self::NonCanonical => "non_canonical",
            Self::UnknownVersion => "unknown_version",
            Self::MissingBearer => "missing_bearer",
        }
    }
}

impl fmt::Display for MalformedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failing store said. The cause is kept as [`std::error::Error::source`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend could not be reached or failed (network, I/O, pool).
    Unavailable,
    /// The backend did not answer in time.
    Timeout,
    /// A record with this key id already exists; nothing was written.
    IdCollision,
    /// The record to change does not exist.
    NotFound,
    /// A conditional write lost a race (the record changed underneath).
    Conflict,
    /// The backend holds data this crate cannot read (corrupt row, bad schema).
    Corrupt,
    /// The request was refused as invalid before anything was done (e.g. an
    /// idempotency token that is empty or already names another admission;
    /// the source says which). Retrying the same request does not help.
    InvalidRequest,
}

/// An error from a [`KeyStore`](crate::KeyStore) implementation.
///
/// Stores build it with a kind and, where there is one, the underlying cause;
/// the cause is never flattened to a string.
///
/// ```
/// use apikey::{StoreError, StoreErrorKind};
/// let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "pool timed out");
/// let err = StoreError::with_source(StoreErrorKind::Timeout, io);
/// assert_eq!(err.kind(), StoreErrorKind::Timeout);
/// assert!(std::error::Error::source(&err).is_some());
/// ```
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    /// An error of `kind` with no underlying cause.
    pub fn new(kind: StoreErrorKind) -> Self {
        Self { kind, source: None }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: StoreErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            StoreErrorKind::Unavailable => "key store unavailable",
            StoreErrorKind::Timeout => "key store timed out",
            StoreErrorKind::IdCollision => "a key with this id already exists",
            StoreErrorKind::NotFound => "no key with this id",
            StoreErrorKind::Conflict => "the key changed concurrently",
            StoreErrorKind::Corrupt => "the key store holds an unreadable record",
            StoreErrorKind::InvalidRequest => "the store refused the request as invalid",
        };
        f.write_str(what)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Every failure this crate reports.
///
/// Use [`code`](Error::code) for a machine-readable code and
/// [`http_status`](Error::http_status) for the HTTP meaning:
///
/// ```
/// use apikey::Error;
/// let err = Error::InvalidApiKey;
/// assert_eq!(err.code(), "INVALID_API_KEY");
/// assert_eq!(err.http_status(), 401);
/// assert_eq!(err.to_string(), "the provided API key is invalid");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No key was presented.
    #[error("an API key is required")]
    MissingApiKey,
    /// The presented string is not a well-formed key (no store was asked).
    #[error("the API key is malformed ({0})")]
    MalformedApiKey(MalformedReason),
    /// The key was not issued by this service, its id is unknown, or its
    /// secret is wrong. These are deliberately one outcome.
    #[error("the provided API key is invalid")]
    InvalidApiKey,
    /// The key expired at the given time.
    #[error("the API key has expired")]
    ExpiredApiKey {
        /// When the key stopped being valid.
        expired_at: Timestamp,
    },
    /// The key is not valid before the given time.
    #[error("the API key is not valid yet")]
    NotYetValid {
        /// When the key becomes valid.
        not_before: Timestamp,
    },
    /// The key was disabled; it can be enabled again.
    #[error("the API key is disabled")]
    DisabledApiKey,
    /// The key was revoked for good.
    #[error("the API key has been revoked")]
    RevokedApiKey,
    /// A live key where test keys are expected, or the other way round.
    #[error("the API key is for the {actual} environment, which this service does not accept")]
    WrongEnvironment {
        /// The key's environment.
        actual: Environment,
    },
    /// The key lacks a scope the request needs.
    #[error("the API key lacks the required scope `{required}`")]
    InsufficientScope {
        /// The requirement that failed, in its display form.
        required: String,
    },
    /// The request came from an address outside the key's allowlist.
    #[error("the API key may not be used from this address")]
    IpNotAllowed,
    /// The key does not comply with the issuance policy in force: refused
    /// at creation or change, and at verification when a policy tightened
    /// after the key was made (the key is not revoked; it works again once
    /// the policy loosens). See [`KeyPolicies`](crate::KeyPolicies).
    #[error("the API key does not comply with the key policy: {rule}")]
    PolicyViolation {
        /// The rule broken.
        rule: &'static str,
    },
    /// A publishable key presented without an `Origin` (or `Referer`) on
    /// its allowlist (see [`web::publishable`](crate::web::publishable)).
    #[error("the API key may not be used from this origin")]
    OriginNotAllowed,
    /// The key exceeded its rate limit.
    #[error("rate limit exceeded")]
    RateLimited {
        /// How long to wait before retrying.
        retry_after: std::time::Duration,
    },
    /// The key or its owner has no credits left.
    #[error("usage quota exceeded")]
    UsageExceeded,
    /// Too many failed attempts from this client; try later.
    #[error("too many failed attempts")]
    TooManyFailures {
        /// How long to wait before retrying.
        retry_after: std::time::Duration,
    },
    /// The key store failed. Never treated as valid or as invalid.
    #[error("the key store is unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// A scope string does not follow the grammar.
    #[error("invalid scope `{scope}`: {reason}")]
    InvalidScope {
        /// The offending scope (scopes are not secret).
        scope: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// A prefix does not follow the rules (configuration error).
    #[error("invalid key prefix `{prefix}`: {reason}")]
    InvalidPrefix {
        /// The offending prefix.
        prefix: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// A server secret is unusable (too short, bad encoding, bad version).
    #[error("invalid server secret: {0}")]
    InvalidSecret(&'static str),
    /// An argument or record field is invalid.
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// No key with this id exists (management operations).
    #[error("no such API key")]
    KeyNotFound,
    /// The owner already has the maximum number of active keys.
    #[error(
        "the owner already has {limit} API keys that are not revoked or expired (disabled keys count)"
    )]
    KeyLimitReached {
        /// The configured limit.
        limit: u32,
    },
    /// The operation is not allowed in the key's current state (for example
    /// enabling a revoked key, or rotating an expired one).
    #[error("operation not allowed: {0}")]
    InvalidState(&'static str),
    /// A record could not be read (unknown schema version, bad field).
    #[error("invalid key record: {0}")]
    InvalidRecord(String),
}

impl Error {
    /// The stable, machine-readable code of this error ([`ErrorCode`]: its
    /// string, HTTP status, public message and challenge).
    ///
    /// ```
    /// use apikey::{Error, ErrorCode, MalformedReason};
    /// let code = Error::MalformedApiKey(MalformedReason::Checksum).code();
    /// assert_eq!(code, ErrorCode::MalformedApiKey);
    /// assert_eq!(code.as_str(), "MALFORMED_API_KEY");
    /// ```
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::MissingApiKey => ErrorCode::MissingApiKey,
            Self::MalformedApiKey(_) => ErrorCode::MalformedApiKey,
            Self::InvalidApiKey => ErrorCode::InvalidApiKey,
            Self::ExpiredApiKey { .. } => ErrorCode::ExpiredApiKey,
            Self::NotYetValid { .. } => ErrorCode::NotYetValid,
            Self::DisabledApiKey => ErrorCode::DisabledApiKey,
            Self::RevokedApiKey => ErrorCode::RevokedApiKey,
            Self::WrongEnvironment { .. } => ErrorCode::WrongEnvironment,
            Self::InsufficientScope { .. } => ErrorCode::InsufficientScope,
            Self::IpNotAllowed => ErrorCode::IpNotAllowed,
            Self::PolicyViolation { .. } => ErrorCode::PolicyViolation,
            Self::OriginNotAllowed => ErrorCode::OriginNotAllowed,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::UsageExceeded => ErrorCode::UsageExceeded,
            Self::TooManyFailures { .. } => ErrorCode::TooManyFailedAttempts,
            Self::StoreUnavailable(_) => ErrorCode::StoreUnavailable,
            Self::InvalidScope { .. } => ErrorCode::InvalidScope,
            Self::InvalidPrefix { .. } => ErrorCode::InvalidPrefix,
            Self::InvalidSecret(_) => ErrorCode::InvalidSecret,
            Self::InvalidInput(_) => ErrorCode::InvalidRequest,
            Self::KeyNotFound => ErrorCode::KeyNotFound,
            Self::KeyLimitReached { .. } => ErrorCode::KeyLimitReached,
            Self::InvalidState(_) => ErrorCode::InvalidState,
            Self::InvalidRecord(_) => ErrorCode::InvalidRecord,
        }
    }

    /// The HTTP status this error means, as a plain number (see
    /// [`ErrorCode::http_status`]).
    ///
    /// ```
    /// use apikey::Error;
    /// assert_eq!(Error::DisabledApiKey.http_status(), 401);
    /// assert_eq!(Error::UsageExceeded.http_status(), 429);
    /// ```
    pub fn http_status(&self) -> u16 {
        self.code().http_status()
    }

    /// `true` for outcomes that mean "these credentials do not authenticate"
    /// (the 401 family).
    ///
    /// ```
    /// assert!(apikey::Error::RevokedApiKey.is_unauthenticated());
    /// ```
    pub fn is_unauthenticated(&self) -> bool {
        self.http_status() == 401
    }

    /// How long a client should wait before retrying, where that is known
    /// (rate limits and throttles; a failing store suggests one second).
    ///
    /// ```
    /// use std::time::Duration;
    /// let err = apikey::Error::RateLimited { retry_after: Duration::from_secs(3) };
    /// assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    /// ```
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::TooManyFailures { retry_after } => {
                Some(*retry_after)
            }
            Self::StoreUnavailable(_) => Some(std::time::Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// The one mapping of a store failure to an [`Error`], on every path
/// (verification, management reads and writes, flushes):
///
/// | [`StoreErrorKind`] | [`Error`] | HTTP |
/// |---|---|---|
/// | `Corrupt` (a stored record that cannot be read, or a record refused as invalid) | [`Error::InvalidRecord`] (`INVALID_RECORD`) | 500 |
/// | `NotFound` (a write to a key that is gone) | [`Error::KeyNotFound`] | 404 |
/// | every other kind | [`Error::StoreUnavailable`] (`STORE_UNAVAILABLE`, the cause kept as `source()`) | 503 |
///
/// A corrupt row is not "retry later": retrying cannot help until someone
/// repairs the row, so it is never `STORE_UNAVAILABLE`.
///
/// ```
/// use apikey::{Error, StoreError, StoreErrorKind};
/// assert_eq!(Error::from(StoreError::new(StoreErrorKind::Corrupt)).code(), "INVALID_RECORD");
/// assert_eq!(Error::from(StoreError::new(StoreErrorKind::Timeout)).code(), "STORE_UNAVAILABLE");
/// ```
impl From<crate::TimestampError> for Error {
    /// [`Error::InvalidInput`] (`INVALID_REQUEST`) naming the problem.
    fn from(e: crate::TimestampError) -> Self {
        Error::InvalidInput(e.to_string())
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err.kind() {
            StoreErrorKind::NotFound => Error::KeyNotFound,
            StoreErrorKind::Corrupt => Error::InvalidRecord(err.to_string()),
            // Retrying does not help: 400 `INVALID_REQUEST`, never 503.
            StoreErrorKind::InvalidRequest => {
                Error::InvalidInput(match std::error::Error::source(&err) {
                    Some(cause) => cause.to_string(),
                    None => err.to_string(),
                })
            }
            _ => Error::StoreUnavailable(err),
        }
    }
}

impl Error {
    /// The error of a failed verification lookup: a record the store could
    /// not decode (a row edited by hand into something invalid) is
    /// [`Error::InvalidRecord`] (`INVALID_RECORD`, 500), never "valid" and
    /// never "invalid key"; every other store failure is
    /// [`Error::StoreUnavailable`] (503).
    /// `NotFound` (which a lookup never answers) is `STORE_UNAVAILABLE`;
    /// every other kind is mapped as by `From<StoreError>`.
    pub(crate) fn from_lookup(err: StoreError) -> Self {
        match err.kind() {
            StoreErrorKind::NotFound => Error::StoreUnavailable(err),
            _ => Error::from(err),
        }
    }
}
