//! The environment a key belongs to (live or test): below both the key format and the error type,
//! which names it in `WRONG_ENVIRONMENT`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The environment a key belongs to.
///
/// ```
/// use apikey::Environment;
/// assert_eq!(Environment::Live.to_string(), "live");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Production: real data, counts against quota.
    Live,
    /// Development and testing: sandbox data.
    Test,
}

impl Environment {
    /// Lowercase name, as serialized.
    ///
    /// ```
    /// assert_eq!(apikey::Environment::Test.as_str(), "test");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which environments a verifier accepts. Defaults to both.
///
/// ```
/// use apikey::{Environment, Environments};
/// assert!(Environments::LIVE.contains(Environment::Live));
/// assert!(!Environments::LIVE.contains(Environment::Test));
/// assert!(Environments::default().contains(Environment::Test));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Environments {
    live: bool,
    test: bool,
}

impl Environments {
    /// Live keys only.
    pub const LIVE: Self = Self {
        live: true,
        test: false,
    };
    /// Test keys only.
    pub const TEST: Self = Self {
        live: false,
        test: true,
    };
    /// Live and test keys.
    pub const BOTH: Self = Self {
        live: true,
        test: true,
    };

    /// Whether `env` is accepted.
    pub const fn contains(self, env: Environment) -> bool {
        match env {
            Environment::Live => self.live,
            Environment::Test => self.test,
        }
    }
}

impl Default for Environments {
    fn default() -> Self {
        Self::BOTH
    }
}
