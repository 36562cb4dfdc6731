//! What can go wrong, with the HTTP status each answer maps to.

use std::time::Duration;

/// Why a leak report or a public revocation request was refused, or could
/// not be completed. Messages never hold a token: body errors say where the
/// JSON broke, not what it held.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeakError {
    /// The body is larger than the configured bound (413).
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// A required header is missing or not ASCII (400).
    #[error("the {0} header is missing or not ASCII")]
    MissingHeader(&'static str),
    /// The signature header is not base64 of a DER ECDSA signature (401).
    #[error("the signature is not base64 of a DER-encoded ECDSA signature")]
    MalformedSignature,
    /// No published key has the given identifier, even after a refetch (401).
    #[error("no signing key has this identifier")]
    UnknownKeyId,
    /// The signature does not verify over the raw body (401).
    #[error("the signature does not match the request body")]
    BadSignature,
    /// The signing keys could not be fetched (503: the sender retries).
    #[error("the signing keys are unavailable")]
    KeysUnavailable(#[source] Option<KeySourceError>),
    /// The body is not the expected JSON (400). The text says where.
    #[error("the body is not {0}")]
    MalformedBody(String),
    /// More tokens or matches than allowed in one request (413).
    #[error("more than {limit} tokens in one request")]
    TooManyTokens {
        /// The bound.
        limit: usize,
    },
    /// The client address sent too many requests (429).
    #[error("too many requests from this address; retry in {}s", retry_after.as_secs().max(1))]
    Throttled {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The key store or the limits backend failed (503: the sender retries;
    /// what was done before stays done, and a retry does it once).
    #[error("the key store is unavailable")]
    Store(#[source] apikey::Error),
    /// A configuration mistake (a policy that would revoke keys that are
    /// public by design, a bad key-set URL).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

impl LeakError {
    /// The HTTP status for this error.
    ///
    /// ```
    /// assert_eq!(apikey_leak::LeakError::BadSignature.status(), 401);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            Self::BodyTooLarge { .. } | Self::TooManyTokens { .. } => 413,
            Self::MissingHeader(_) | Self::MalformedBody(_) => 400,
            Self::MalformedSignature | Self::UnknownKeyId | Self::BadSignature => 401,
            Self::Throttled { .. } => 429,
            Self::KeysUnavailable(_) | Self::Store(_) => 503,
            Self::InvalidConfig(_) => 500,
        }
    }

    /// A stable machine code (`BAD_SIGNATURE`, ...).
    ///
    /// ```
    /// assert_eq!(apikey_leak::LeakError::UnknownKeyId.code(), "UNKNOWN_KEY_ID");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } => "BODY_TOO_LARGE",
            Self::MissingHeader(_) => "MISSING_HEADER",
            Self::MalformedSignature => "MALFORMED_SIGNATURE",
            Self::UnknownKeyId => "UNKNOWN_KEY_ID",
            Self::BadSignature => "BAD_SIGNATURE",
            Self::KeysUnavailable(_) => "KEYS_UNAVAILABLE",
            Self::MalformedBody(_) => "MALFORMED_BODY",
            Self::TooManyTokens { .. } => "TOO_MANY_TOKENS",
            Self::Throttled { .. } => "TOO_MANY_REQUESTS",
            Self::Store(_) => "STORE_UNAVAILABLE",
            Self::InvalidConfig(_) => "INVALID_CONFIG",
        }
    }

    /// The error as a small JSON object (`{"error":CODE,"message":...}`),
    /// safe to send: it holds no token.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "error": self.code(), "message": self.to_string() }).to_string()
    }
}

/// A failure to obtain or read a public key set.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct KeySourceError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl KeySourceError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message and its cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Describes a `serde_json` failure by position and category only: its
/// own message can quote the input (a token).
pub(crate) fn json_error(what: &str, e: &serde_json::Error) -> LeakError {
    let category = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    LeakError::MalformedBody(format!(
        "{what} ({category} at line {}, column {})",
        e.line(),
        e.column()
    ))
}
