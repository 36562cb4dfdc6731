//! Key prefixes and the environment each one stands for.
//!
//! A key is `<prefix><body>`. The prefix tells people and secret scanners
//! what the key is (`sk_live_` is a live secret key) and tells the verifier
//! which [`Environment`] the key belongs to. The built-in prefixes are
//! `sk_live_` (live), `sk_test_` (test) and `kwi_sk_` (live); applications
//! register their own with [`PrefixRegistry::register`].
//!
//! Rules for a prefix: 2 to 16 bytes of lowercase ASCII letters, digits and
//! `_`, ending in `_`, starting with a letter. Since the key body is base62
//! and never holds `_`, the prefix of a presented key is exactly everything
//! up to its last `_`, so prefixes that contain underscores, or that are
//! prefixes of one another, are never ambiguous.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::environment::Environment;
use crate::error::{Error, Result};

/// Longest prefix allowed, in bytes.
pub(crate) const MAX_PREFIX_LEN: usize = 16;

/// A validated key prefix such as `sk_live_`.
///
/// ```
/// use apikey::Prefix;
/// let p = Prefix::new("acme_")?;
/// assert_eq!(p.as_str(), "acme_");
/// assert!(Prefix::new("Acme_").is_err()); // uppercase
/// assert!(Prefix::new("acme").is_err()); // must end in `_`
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Prefix(Box<str>);

/// [`Prefix::is_publishable`] of a prefix's text.
pub(crate) fn is_publishable(prefix: &str) -> bool {
    prefix.split('_').any(|part| part == "pk")
}

impl Prefix {
    /// The longest prefix, in bytes.
    pub const MAX_LEN: usize = MAX_PREFIX_LEN;

    /// Validates `prefix` against the prefix rules (see the module docs).
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`] naming the rule that failed.
    pub fn new(prefix: &str) -> Result<Self> {
        validate(prefix)?;
        Ok(Self(prefix.into()))
    }

    /// Whether keys of this prefix are **publishable**: meant to be embedded
    /// in web pages (Stripe's `pk_`), so public by design. A prefix is
    /// publishable when `pk` is one of its `_`-separated parts (`pk_live_`,
    /// `pk_test_`, `acme_pk_`). Such keys hold only the scopes a service
    /// marks public ([`KeyManager::with_public_scopes`](crate::KeyManager::with_public_scopes)),
    /// are checked against an origin allowlist at the web edge
    /// ([`web::publishable`](crate::web::publishable)), and a leak
    /// responder must not revoke them for being seen in public.
    ///
    /// ```
    /// use apikey::Prefix;
    /// assert!(Prefix::new("pk_live_")?.is_publishable());
    /// assert!(!Prefix::new("sk_live_")?.is_publishable());
    /// # Ok::<(), apikey::Error>(())
    /// ```
    pub fn is_publishable(&self) -> bool {
        is_publishable(&self.0)
    }

    /// A stand-in for a prefix that cannot be missing (never shown in
    /// practice; see `KeyView::prefix`).
    pub(crate) fn unknown() -> Self {
        Self("unknown_".into())
    }

    /// The prefix text, including the trailing `_`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Prefix::new(&s).map_err(serde::de::Error::custom)
    }
}

fn validate(prefix: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidPrefix {
            prefix: prefix.chars().take(32).collect(),
            reason,
        })
    };
    let bytes = prefix.as_bytes();
    if bytes.len() < 2 {
        return bad("must be at least 2 bytes");
    }
    if bytes.len() > MAX_PREFIX_LEN {
        return bad("must be at most 16 bytes");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
    {
        return bad("only lowercase ASCII letters, digits and `_` are allowed");
    }
    if !bytes[0].is_ascii_lowercase() {
        return bad("must start with a lowercase letter");
    }
    if bytes[bytes.len() - 1] != b'_' {
        return bad("must end with `_`");
    }
    Ok(())
}

/// One registered prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixEntry {
    /// The prefix.
    pub prefix: Prefix,
    /// The environment its keys belong to.
    pub environment: Environment,
}

/// The prefixes a verifier recognises, each mapped to an environment.
///
/// At most 64 prefixes; lookups compare bytes, so a handful of prefixes cost
/// a few nanoseconds.
///
/// ```
/// use apikey::{Environment, PrefixRegistry};
/// let mut reg = PrefixRegistry::with_builtins();
/// reg.register("acme_test_", Environment::Test)?;
/// assert_eq!(reg.find("acme_test_").map(|(_, e)| e.environment), Some(Environment::Test));
/// assert!(reg.register("sk_live_", Environment::Test).is_err()); // already registered
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixRegistry {
    entries: Vec<PrefixEntry>,
}

/// Most prefixes one registry holds.
pub(crate) const MAX_PREFIXES: usize = 64;

impl PrefixRegistry {
    /// The most prefixes one registry holds.
    pub const MAX_PREFIXES: usize = MAX_PREFIXES;

    /// A registry with no prefixes.
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// A registry with the built-in prefixes: `sk_live_` (live),
    /// `sk_test_` (test), `kwi_sk_` (live).
    pub fn with_builtins() -> Self {
        let entry = |p: &str, environment| PrefixEntry {
            prefix: Prefix(p.into()),
            environment,
        };
        Self {
            entries: vec![
                entry("sk_live_", Environment::Live),
                entry("sk_test_", Environment::Test),
                entry("kwi_sk_", Environment::Live),
            ],
        }
    }

    /// Registers `prefix` for `environment`.
    ///
    /// # Errors
    /// [`Error::InvalidPrefix`] when the prefix breaks a rule, is already
    /// registered, or the registry is full.
    pub fn register(&mut self, prefix: &str, environment: Environment) -> Result<&mut Self> {
        let prefix = Prefix::new(prefix)?;
        if self.entries.iter().any(|e| e.prefix == prefix) {
            return Err(Error::InvalidPrefix {
                prefix: prefix.as_str().to_owned(),
                reason: "already registered",
            });
        }
        if self.entries.len() >= MAX_PREFIXES {
            return Err(Error::InvalidPrefix {
                prefix: prefix.as_str().to_owned(),
                reason: "too many prefixes registered",
            });
        }
        self.entries.push(PrefixEntry {
            prefix,
            environment,
        });
        Ok(self)
    }

    /// Finds an exact prefix, returning its index and entry.
    #[inline]
    pub fn find(&self, prefix: &str) -> Option<(usize, &PrefixEntry)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.prefix.as_str().as_bytes() == prefix.as_bytes())
    }

    /// The entry at `index` (as returned by [`find`](Self::find)).
    pub fn get(&self, index: usize) -> Option<&PrefixEntry> {
        self.entries.get(index)
    }

    /// All registered prefixes, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &PrefixEntry> {
        self.entries.iter()
    }
}

impl Default for PrefixRegistry {
    fn default() -> Self {
        Self::with_builtins()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        for ok in [
            "sk_live_",
            "kwi_sk_",
            "a_",
            "my_app_v2_",
            "abcdefghijklmno_",
        ] {
            assert!(Prefix::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "_",
            "a",
            "sk-live_",
            "SK_",
            "1a_",
            "abcdefghijklmnop_",
            "sk_live",
            "é_",
            "a\0_",
        ] {
            assert!(Prefix::new(bad).is_err(), "{bad:?}");
        }
    }
}
