//! What a report of a real key does, per prefix.

use crate::error::LeakError;

/// What happens to a reported key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeakAction {
    /// Revoke it for good (the key stops working on every instance).
    Revoke,
    /// Disable it (reversible by its owner or an admin).
    Disable,
    /// Change nothing; audit and notify only.
    NotifyOnly,
}

impl LeakAction {
    /// A short, stable, lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Disable => "disable",
            Self::NotifyOnly => "notify_only",
        }
    }
}

/// The action per key prefix. Prefixes of keys that are public by design
/// (publishable keys, meant to sit in web pages) are only ever notified:
/// a report of one is expected, and revoking it would let anyone who reads
/// a page break the site.
///
/// Defaults: [`LeakAction::Revoke`] for every prefix; every publishable
/// prefix ([`apikey::Prefix::is_publishable`]: `pk_live_`, `pk_test_`,
/// `acme_pk_`, any prefix with a `pk` part) public by design, plus those
/// declared with [`with_public_by_design`](Self::with_public_by_design).
/// The responder also treats a key whose record is publishable as public
/// by design, whatever its prefix's entry here says.
///
/// ```
/// use apikey_leak::{LeakAction, LeakPolicy};
/// let policy = LeakPolicy::new()
///     .with_action("sk_test_", LeakAction::NotifyOnly)?
///     .with_action("kwi_sk_", LeakAction::Disable)?;
/// assert_eq!(policy.action("sk_live_"), LeakAction::Revoke);
/// assert_eq!(policy.action("sk_test_"), LeakAction::NotifyOnly);
/// assert_eq!(policy.action("pk_live_"), LeakAction::NotifyOnly);
/// assert!(LeakPolicy::new().with_action("pk_live_", LeakAction::Revoke).is_err());
/// assert_eq!(policy.action("acme_pk_"), LeakAction::NotifyOnly);
/// # Ok::<(), apikey_leak::LeakError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakPolicy {
    default: LeakAction,
    per_prefix: Vec<(String, LeakAction)>,
    public_by_design: Vec<String>,
}

impl Default for LeakPolicy {
    fn default() -> Self {
        Self {
            default: LeakAction::Revoke,
            per_prefix: Vec::new(),
            public_by_design: Vec::new(),
        }
    }
}

impl LeakPolicy {
    /// The default policy (see the type).
    pub fn new() -> Self {
        Self::default()
    }

    /// The action for prefixes without their own. Defaults to
    /// [`LeakAction::Revoke`].
    pub fn with_default(mut self, action: LeakAction) -> Self {
        self.default = action;
        self
    }

    /// Sets the action for one prefix.
    ///
    /// # Errors
    /// [`LeakError::InvalidConfig`] when the prefix is public by design
    /// and the action is not [`LeakAction::NotifyOnly`].
    pub fn with_action(mut self, prefix: &str, action: LeakAction) -> Result<Self, LeakError> {
        if self.is_public_by_design(prefix) && action != LeakAction::NotifyOnly {
            return Err(LeakError::InvalidConfig(format!(
                "{prefix} keys are public by design: a report never revokes or disables them"
            )));
        }
        self.per_prefix.retain(|(p, _)| p != prefix);
        self.per_prefix.push((prefix.to_owned(), action));
        Ok(self)
    }

    /// Declares a prefix public by design: its keys are only notified,
    /// whatever else says.
    pub fn with_public_by_design(mut self, prefix: &str) -> Self {
        self.per_prefix.retain(|(p, _)| p != prefix);
        if !self.is_public_by_design(prefix) {
            self.public_by_design.push(prefix.to_owned());
        }
        self
    }

    /// Whether keys under `prefix` are public by design: a publishable
    /// prefix ([`apikey::Prefix::is_publishable`]), or one declared with
    /// [`with_public_by_design`](Self::with_public_by_design).
    pub fn is_public_by_design(&self, prefix: &str) -> bool {
        apikey::Prefix::new(prefix).is_ok_and(|p| p.is_publishable())
            || self.public_by_design.iter().any(|p| p == prefix)
    }

    /// The action for a key under `prefix`.
    pub fn action(&self, prefix: &str) -> LeakAction {
        if self.is_public_by_design(prefix) {
            return LeakAction::NotifyOnly;
        }
        self.per_prefix
            .iter()
            .find(|(p, _)| p == prefix)
            .map_or(self.default, |(_, a)| *a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_publishable_prefix_is_notify_only() {
        let policy = LeakPolicy::default();
        for prefix in ["pk_live_", "pk_test_", "acme_pk_", "kwi_pk_live_", "pk_"] {
            assert_eq!(policy.action(prefix), LeakAction::NotifyOnly, "{prefix}");
            assert!(policy.is_public_by_design(prefix), "{prefix}");
            for action in [LeakAction::Revoke, LeakAction::Disable] {
                assert!(
                    LeakPolicy::new().with_action(prefix, action).is_err(),
                    "{prefix} {action:?}"
                );
            }
        }
        let strict = LeakPolicy::new().with_default(LeakAction::Disable);
        assert_eq!(strict.action("acme_pk_"), LeakAction::NotifyOnly);
        // Secret prefixes keep the default, including ones that merely
        // contain the letters.
        for prefix in ["sk_live_", "acme_sk_", "pkg_", "apk_"] {
            assert_eq!(policy.action(prefix), LeakAction::Revoke, "{prefix}");
        }
    }
}
