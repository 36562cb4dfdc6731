use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Scopes: what a key may do.
///
/// Grammar: one or more segments separated by `:`; each segment is one or
/// more of `[a-z0-9_-]`, or `*` as the **last** segment only. Scopes are
/// case-sensitive and at most 128 bytes with at most 16 segments.
///
/// | scope | meaning |
/// |---|---|
/// | `read` | a bare permission (as in plans with `read` / `write` / `admin`) |
/// | `tasks:read` | one action on one resource type |
/// | `corpus:42:query` | an action on one resource |
/// | `projects:*` | everything under `projects:` (one or more further segments) |
/// | `*` | everything |
///
/// A granted scope `g` satisfies a required scope `r` when they are equal, or
/// when `g` ends in `*` and `r` has `g`'s literal segments followed by at
/// least one more segment (or by `*` itself). A verifier may also declare
/// scopes that mean full access, such as `admin:*`
/// ([`Verifier::with_full_access_scope`](crate::Verifier::with_full_access_scope)).
///
/// One validated scope.
///
/// ```
/// use apikey::Scope;
/// let granted = Scope::parse("projects:*")?;
/// assert!(granted.grants(&Scope::parse("projects:read")?));
/// assert!(!granted.grants(&Scope::parse("projects")?));
/// assert!(Scope::parse("Tasks:Read").is_err());
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Scope(Box<str>);

impl Scope {
    /// Longest scope, in bytes.
    pub const MAX_LEN: usize = 128;
    /// Most segments in one scope.
    pub const MAX_SEGMENTS: usize = 16;

    /// Validates `text` against the grammar.
    ///
    /// # Errors
    /// [`Error::InvalidScope`] naming the scope and the rule it breaks.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason| {
            Err(Error::InvalidScope {
                scope: text.chars().take(Scope::MAX_LEN).collect(),
                reason,
            })
        };
        if text.is_empty() {
            return bad("a scope cannot be empty");
        }
        if text.len() > Scope::MAX_LEN {
            return bad("a scope is at most 128 bytes");
        }
        let segments: Vec<&str> = text.split(':').collect();
        if segments.len() > Scope::MAX_SEGMENTS {
            return bad("a scope has at most 16 segments");
        }
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            if seg.is_empty() {
                return bad("empty segment");
            }
            if *seg == "*" {
                if i != last {
                    return bad("`*` may only be the last segment");
                }
                continue;
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return bad("segments use only a-z, 0-9, `_` and `-`, or are `*`");
            }
        }
        Ok(Self(text.into()))
    }

    /// The scope text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this scope ends in the `*` wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.0.ends_with('*')
    }

    /// Whether holding `self` satisfies a requirement for `required`.
    pub fn grants(&self, required: &Scope) -> bool {
        let g = self.as_str();
        let r = required.as_str();
        if !self.is_wildcard() {
            return g == r;
        }
        // `g` is "lit:*" or "*"; its literal part, with the trailing ':'.
        let lit = &g[..g.len() - 1];
        if lit.is_empty() {
            return true;
        }
        // `r` must continue with at least one more segment (which may be `*`).
        r.len() > lit.len() && r.starts_with(lit)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", &*self.0)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Scope::parse(s)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The scopes granted to one key: sorted, without duplicates. Cheap to
/// clone (shared).
///
/// ```
/// use apikey::ScopeSet;
/// let set = ScopeSet::parse(["tasks:write", "tasks:read", "tasks:read"])?;
/// assert_eq!(set.len(), 2);
/// assert_eq!(set.iter().next().map(|s| s.as_str()), Some("tasks:read"));
/// assert!(ScopeSet::parse(["ok", "Not OK"]).is_err());
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Arc<[Scope]>);

impl ScopeSet {
    /// Most scopes on one key.
    pub const MAX_SCOPES: usize = 64;

    /// Parses and validates every scope.
    ///
    /// # Errors
    /// [`Error::InvalidScope`] for the first malformed scope, or when there
    /// are more than [`ScopeSet::MAX_SCOPES`].
    pub fn parse<I, S>(scopes: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut v = Vec::new();
        for s in scopes {
            v.push(Scope::parse(s.as_ref())?);
            if v.len() > ScopeSet::MAX_SCOPES {
                return Err(Error::InvalidScope {
                    scope: String::new(),
                    reason: "a key has at most 64 scopes",
                });
            }
        }
        Ok(Self::from_scopes(v))
    }

    /// Builds a set from validated scopes.
    pub fn from_scopes(mut scopes: Vec<Scope>) -> Self {
        scopes.sort();
        scopes.dedup();
        Self(scopes.into())
    }

    /// The empty set (grants nothing).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Number of scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no scope is granted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// Whether any granted scope satisfies `required`.
    pub fn grants(&self, required: &Scope) -> bool {
        self.0.iter().any(|g| g.grants(required))
    }

    /// Whether any granted scope is in `full_access`.
    pub(crate) fn has_any_of(&self, full_access: &[Scope]) -> bool {
        !full_access.is_empty() && self.0.iter().any(|g| full_access.contains(g))
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Vec::<Scope>::deserialize(d)?;
        if v.len() > ScopeSet::MAX_SCOPES {
            return Err(serde::de::Error::custom("a key has at most 64 scopes"));
        }
        Ok(Self::from_scopes(v))
    }
}

/// What a request needs.
///
/// ```
/// use apikey::{Requirement, ScopeSet};
/// let granted = ScopeSet::parse(["tasks:read", "projects:*"])?;
/// let need = Requirement::all_of(["tasks:read", "projects:write"])?;
/// assert!(need.is_met_by(&granted, &[]));
/// let need = Requirement::any_of(["admin:*", "users:read"])?;
/// assert!(!need.is_met_by(&granted, &[]));
/// assert!(Requirement::none().is_met_by(&ScopeSet::empty(), &[]));
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Requirement {
    /// Nothing beyond a valid key.
    #[default]
    None,
    /// Every listed scope must be granted.
    AllOf(Vec<Scope>),
    /// At least one listed scope must be granted. An empty list is never met.
    AnyOf(Vec<Scope>),
}

impl Requirement {
    /// No scope needed.
    pub fn none() -> Self {
        Self::None
    }

    /// One scope needed.
    ///
    /// # Errors
    /// [`Error::InvalidScope`] when `scope` is malformed.
    pub fn scope(scope: &str) -> Result<Self> {
        Ok(Self::AllOf(vec![Scope::parse(scope)?]))
    }

    /// All of `scopes` needed.
    ///
    /// # Errors
    /// [`Error::InvalidScope`] for the first malformed scope.
    pub fn all_of<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Result<Self> {
        Ok(Self::AllOf(parse_list(scopes)?))
    }

    /// Any of `scopes` needed.
    ///
    /// # Errors
    /// [`Error::InvalidScope`] for the first malformed scope.
    pub fn any_of<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Result<Self> {
        Ok(Self::AnyOf(parse_list(scopes)?))
    }

    /// Whether `granted` meets this requirement; a granted scope listed in
    /// `full_access` meets every requirement.
    pub fn is_met_by(&self, granted: &ScopeSet, full_access: &[Scope]) -> bool {
        match self {
            Self::None => true,
            _ if granted.has_any_of(full_access) => true,
            Self::AllOf(req) => req.iter().all(|r| granted.grants(r)),
            Self::AnyOf(req) => req.iter().any(|r| granted.grants(r)),
        }
    }

    /// Checks the requirement, naming what is missing.
    ///
    /// # Errors
    /// [`Error::InsufficientScope`] with the first missing scope (all-of) or
    /// the alternatives (any-of).
    pub fn check(&self, granted: &ScopeSet, full_access: &[Scope]) -> Result<()> {
        if self.is_met_by(granted, full_access) {
            return Ok(());
        }
        let required = match self {
            Self::None => String::new(),
            Self::AllOf(req) => req
                .iter()
                .find(|r| !granted.grants(r))
                .map(|s| s.to_string())
                .unwrap_or_default(),
            Self::AnyOf(req) => req
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" | "),
        };
        Err(Error::InsufficientScope { required })
    }
}

fn parse_list<I: IntoIterator<Item = S>, S: AsRef<str>>(scopes: I) -> Result<Vec<Scope>> {
    scopes
        .into_iter()
        .map(|s| Scope::parse(s.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x).unwrap()
    }

    #[test]
    fn grammar() {
        for ok in [
            "read",
            "tasks:read",
            "corpus:42:query",
            "projects:*",
            "*",
            "a-b_c:d",
        ] {
            assert!(Scope::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ":", "a:", ":a", "a::b", "*:a", "a:*:b", "A", "a b", "a:**", "ü", "a*",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcard_matching() {
        assert!(s("*").grants(&s("anything:at:all")));
        assert!(s("*").grants(&s("*")));
        assert!(s("projects:*").grants(&s("projects:read")));
        assert!(s("projects:*").grants(&s("projects:42:read")));
        assert!(s("projects:*").grants(&s("projects:*")));
        assert!(s("projects:*").grants(&s("projects:a:*")));
        assert!(!s("projects:*").grants(&s("projects")));
        assert!(!s("projects:*").grants(&s("projectsx:read")));
        assert!(!s("projects:*").grants(&s("*")));
        assert!(!s("tasks:read").grants(&s("tasks:*")));
        assert!(!s("tasks:read").grants(&s("tasks:write")));
    }
}
