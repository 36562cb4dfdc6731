//! The command's failures: a stable code, a message that names the problem
//! (never a secret), and the documented exit status.

use std::fmt;

use apikey::{Error as KeyError, StoreErrorKind};

/// The documented exit statuses (see `apikey --help` and the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 1: bad arguments or input (malformed id, key, secret, time, import
    /// line), or no server secret where one is needed.
    Usage = 1,
    /// 2: no key with that id.
    NotFound = 2,
    /// 3: the database is unreachable, timed out, is not migrated, or holds
    /// a newer schema.
    StoreUnavailable = 3,
    /// 4: `keys verify`: the key does not verify.
    VerificationFailed = 4,
    /// 5: refused by the key's state or the owner's limit (revoked, already
    /// rotated, already imported, limit reached, admin already bootstrapped).
    Refused = 5,
}

/// A failure of one command.
#[derive(Debug)]
pub struct CliError {
    /// The exit status.
    pub exit: Exit,
    /// A stable machine code (`KEY_NOT_FOUND`, `STORE_UNAVAILABLE`, ...:
    /// the README's table).
    pub code: &'static str,
    /// What went wrong, for people. Never holds a secret.
    pub message: String,
}

impl CliError {
    /// A usage error (exit 1).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Usage,
            code: "INVALID_INPUT",
            message: message.into(),
        }
    }

    /// A store failure (exit 3).
    pub fn store(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::StoreUnavailable,
            code: "STORE_UNAVAILABLE",
            message: message.into(),
        }
    }

    /// A refusal (exit 5).
    pub fn refused(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Refused,
            code,
            message: message.into(),
        }
    }

    /// The library's error, in context (`what`: the operation).
    pub fn from_key_error(what: &str, e: &KeyError) -> Self {
        let (exit, code) = match e {
            KeyError::KeyNotFound => (Exit::NotFound, "KEY_NOT_FOUND"),
            KeyError::StoreUnavailable(s) => (
                Exit::StoreUnavailable,
                match s.kind() {
                    StoreErrorKind::Timeout => "STORE_TIMEOUT",
                    StoreErrorKind::Corrupt => "STORE_CORRUPT",
                    _ => "STORE_UNAVAILABLE",
                },
            ),
            KeyError::InvalidState(_) => (Exit::Refused, "INVALID_STATE"),
            KeyError::KeyLimitReached { .. } => (Exit::Refused, "KEY_LIMIT_REACHED"),
            _ => (Exit::Usage, e.code().as_str()),
        };
        Self {
            exit,
            code,
            message: format!("{what}: {}", chain(e)),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// `e` and its sources, joined with `: `. The library's errors and sqlx's
/// never carry key material (stores see keyed digests only; sqlx reports
/// server messages, not bound values).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The result of a command.
pub type CliResult<T> = Result<T, CliError>;
