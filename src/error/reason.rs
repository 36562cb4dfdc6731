//! [`Reason`]: why a verification failed, decided once where it failed,
//! and everything each consumer needs from it in one table: the wire code
//! ([`ErrorCode`]), the failure throttle's treatment ([`FailureClass`]) and
//! the audit sampler's label.

use super::{Error, ErrorCode, MalformedReason};

/// Where in the pipeline a verification failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Stage {
    /// Parsing (length, alphabet, prefix, checksum, version, keyed tag):
    /// no store was asked.
    Parse,
    /// The failure throttle refused the attempt before any store call.
    Throttle,
    /// The store lookup (by id, or through the legacy index).
    Lookup,
    /// The record's checks: secret, status, validity, policy, lineage,
    /// environment, address, scopes.
    Verify,
    /// The web edge, after verification (the origin of a publishable key).
    Request,
}

/// How the pipeline treats a failed authentication (see the
/// [limits docs](crate::limits)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// Malformed or forged: no store call; counted and sampled.
    Junk,
    /// The key's status, or an unknown id after the tag matched: backs off
    /// per key id ([`Limits::key_failed`](crate::limits::Limits::key_failed)).
    KeyStatus,
    /// A verified key used where it may not be: charged to the key's rate
    /// limit; audit sampled.
    Authenticated,
    /// Not a failure of the caller (store down, bad configuration).
    Other,
}

impl FailureClass {
    /// The class of `error` returned after the store lookup of a tagged
    /// key (so [`Error::InvalidApiKey`] there means an unknown id).
    ///
    /// ```
    /// use apikey::Error;
    /// use apikey::limits::FailureClass;
    /// assert_eq!(FailureClass::after_lookup(&Error::RevokedApiKey), FailureClass::KeyStatus);
    /// assert_eq!(FailureClass::after_lookup(&Error::IpNotAllowed), FailureClass::Authenticated);
    /// ```
    #[must_use]
    pub fn after_lookup(error: &Error) -> Self {
        Reason::of(error, Stage::Verify).class()
    }
}

/// Why a verification failed: one value per outcome, decided where the
/// failure happened ([`Reason::of`] with its [`Stage`]). Every consumer
/// reads it from here: the wire code ([`code`](Self::code)), the failure
/// throttle ([`class`](Self::class)) and the audit sampler
/// ([`label`](Self::label), [`index`](Self::index), [`sampled`](Self::sampled)).
///
/// Several reasons share the public code `INVALID_API_KEY` (forged, unknown
/// id, wrong secret, unknown legacy key): they differ only for the
/// throttle and the audit, never on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// No key presented.
    Missing,
    /// Not a well-formed key.
    Malformed(MalformedReason),
    /// Well-formed, but the keyed tag does not match: not issued here.
    Forged,
    /// An imported legacy key the legacy index does not know.
    UnknownLegacy,
    /// The tag matched, but the id is unknown or the secret wrong.
    InvalidKey,
    /// Past its expiry.
    Expired,
    /// Before its not-before.
    NotYetValid,
    /// Disabled.
    Disabled,
    /// Revoked.
    Revoked,
    /// Out of the key policy in force (or a derived key's ancestor).
    PolicyViolation,
    /// An authenticated key of the wrong environment.
    WrongEnvironment,
    /// An authenticated key without the route's scope.
    InsufficientScope,
    /// An authenticated key from an address outside its allowlist.
    IpNotAllowed,
    /// An authenticated publishable key from an origin outside its allowlist.
    OriginNotAllowed,
    /// The failure throttle refused the attempt.
    Throttled,
    /// The store failed.
    StoreUnavailable,
    /// The store holds a record that cannot be read.
    InvalidRecord,
    /// Anything else (a clock out of range, configuration): its code.
    Other(ErrorCode),
}

impl Reason {
    /// The reasons the audit sampler counts, in the order of its summary.
    pub(crate) const SAMPLED: [Reason; 14] = [
        Self::Missing,
        Self::Malformed(MalformedReason::Length),
        Self::Malformed(MalformedReason::Charset),
        Self::Malformed(MalformedReason::UnknownPrefix),
        Self::Malformed(MalformedReason::Checksum),
        Self::Malformed(MalformedReason::NonCanonical),
        Self::Malformed(MalformedReason::UnknownVersion),
        Self::Malformed(MalformedReason::MissingBearer),
        Self::Forged,
        Self::UnknownLegacy,
        Self::WrongEnvironment,
        Self::InsufficientScope,
        Self::IpNotAllowed,
        Self::OriginNotAllowed,
    ];

    /// The reason of `error`, which failed at `stage`: the one place an
    /// [`Error`] is classified. `INVALID_API_KEY` is a forged key when
    /// parsing said so, an unknown id or a wrong secret after the lookup.
    pub(crate) fn of(error: &Error, stage: Stage) -> Self {
        match error {
            Error::MissingApiKey => Self::Missing,
            Error::MalformedApiKey(r) => Self::Malformed(*r),
            Error::InvalidApiKey if stage == Stage::Parse => Self::Forged,
            Error::InvalidApiKey => Self::InvalidKey,
            Error::ExpiredApiKey { .. } => Self::Expired,
            Error::NotYetValid { .. } => Self::NotYetValid,
            Error::DisabledApiKey => Self::Disabled,
            Error::RevokedApiKey => Self::Revoked,
            Error::PolicyViolation { .. } => Self::PolicyViolation,
            Error::WrongEnvironment { .. } => Self::WrongEnvironment,
            Error::InsufficientScope { .. } => Self::InsufficientScope,
            Error::IpNotAllowed => Self::IpNotAllowed,
            Error::OriginNotAllowed => Self::OriginNotAllowed,
            Error::TooManyFailures { .. } => Self::Throttled,
            Error::StoreUnavailable(_) => Self::StoreUnavailable,
            Error::InvalidRecord(_) => Self::InvalidRecord,
            other => Self::Other(other.code()),
        }
    }

    /// The wire code: the same as the code of the error it was made from.
    pub(crate) const fn code(self) -> ErrorCode {
        match self {
            Self::Missing => ErrorCode::MissingApiKey,
            Self::Malformed(_) => ErrorCode::MalformedApiKey,
            Self::Forged | Self::UnknownLegacy | Self::InvalidKey => ErrorCode::InvalidApiKey,
            Self::Expired => ErrorCode::ExpiredApiKey,
            Self::NotYetValid => ErrorCode::NotYetValid,
            Self::Disabled => ErrorCode::DisabledApiKey,
            Self::Revoked => ErrorCode::RevokedApiKey,
            Self::PolicyViolation => ErrorCode::PolicyViolation,
            Self::WrongEnvironment => ErrorCode::WrongEnvironment,
            Self::InsufficientScope => ErrorCode::InsufficientScope,
            Self::IpNotAllowed => ErrorCode::IpNotAllowed,
            Self::OriginNotAllowed => ErrorCode::OriginNotAllowed,
            Self::Throttled => ErrorCode::TooManyFailedAttempts,
            Self::StoreUnavailable => ErrorCode::StoreUnavailable,
            Self::InvalidRecord => ErrorCode::InvalidRecord,
            Self::Other(code) => code,
        }
    }

    /// How the failure throttle treats it: key-status failures back off
    /// the key id (or, for legacy lookups, the address); failures of an
    /// authenticated key against the request are charged to its rate
    /// limit under its own plan.
    pub(crate) const fn class(self) -> FailureClass {
        match self {
            Self::Missing | Self::Malformed(_) | Self::Forged => FailureClass::Junk,
            Self::UnknownLegacy
            | Self::InvalidKey
            | Self::Expired
            | Self::NotYetValid
            | Self::Disabled
            | Self::Revoked
            | Self::PolicyViolation => FailureClass::KeyStatus,
            Self::WrongEnvironment
            | Self::InsufficientScope
            | Self::IpNotAllowed
            | Self::OriginNotAllowed => FailureClass::Authenticated,
            Self::Throttled | Self::StoreUnavailable | Self::InvalidRecord | Self::Other(_) => {
                FailureClass::Other
            }
        }
    }

    /// The audit sampler's slot: rejections that are counted and
    /// summarised, not recorded one by one (junk, unknown legacy keys, and
    /// authenticated keys that do not fit the request). `None` for the
    /// others: key-status failures are one audit event each; throttle and
    /// store failures are not the caller's.
    pub(crate) fn index(self) -> Option<usize> {
        Self::SAMPLED.iter().position(|r| *r == self)
    }

    /// Whether the sampler counts it (see [`index`](Self::index)).
    pub(crate) fn sampled(self) -> bool {
        self.index().is_some()
    }

    /// A short, stable, lowercase label (the sampler's summary, metrics).
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(r) => r.as_str(),
            Self::Forged => "forged",
            Self::UnknownLegacy => "unknown_legacy",
            Self::InvalidKey => "invalid",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Disabled => "disabled",
            Self::Revoked => "revoked",
            Self::PolicyViolation => "policy_violation",
            Self::WrongEnvironment => "wrong_environment",
            Self::InsufficientScope => "insufficient_scope",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::Throttled => "throttled",
            Self::StoreUnavailable => "store_unavailable",
            Self::InvalidRecord => "invalid_record",
            Self::Other(code) => code.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{StoreError, StoreErrorKind};
    use crate::key::Environment;

    fn errors() -> Vec<Error> {
        let mut all = vec![
            Error::MissingApiKey,
            Error::InvalidApiKey,
            Error::ExpiredApiKey {
                expired_at: crate::Timestamp::MIN,
            },
            Error::NotYetValid {
                not_before: crate::Timestamp::MIN,
            },
            Error::DisabledApiKey,
            Error::RevokedApiKey,
            Error::WrongEnvironment {
                actual: Environment::Test,
            },
            Error::InsufficientScope {
                required: "tasks:write".into(),
            },
            Error::IpNotAllowed,
            Error::PolicyViolation { rule: "max" },
            Error::OriginNotAllowed,
            Error::RateLimited {
                retry_after: std::time::Duration::from_secs(1),
            },
            Error::UsageExceeded,
            Error::TooManyFailures {
                retry_after: std::time::Duration::from_secs(1),
            },
            Error::StoreUnavailable(StoreError::new(StoreErrorKind::Timeout)),
            Error::InvalidRecord("bad".into()),
            Error::InvalidInput("clock".into()),
            Error::KeyNotFound,
        ];
        for r in [
            MalformedReason::Length,
            MalformedReason::Charset,
            MalformedReason::UnknownPrefix,
            MalformedReason::Checksum,
            MalformedReason::NonCanonical,
            MalformedReason::UnknownVersion,
            MalformedReason::MissingBearer,
        ] {
            all.push(Error::MalformedApiKey(r));
        }
        all
    }

    const STAGES: [Stage; 5] = [
        Stage::Parse,
        Stage::Throttle,
        Stage::Lookup,
        Stage::Verify,
        Stage::Request,
    ];

    /// The reason's wire code is the error's, whatever the stage: the
    /// reason never changes what a client sees.
    #[test]
    fn a_reason_answers_the_code_of_its_error() {
        for e in errors() {
            for stage in STAGES {
                assert_eq!(Reason::of(&e, stage).code(), e.code(), "{e:?} at {stage:?}");
            }
        }
    }

    /// The sampler's labels are the summary's stable names, one per slot.
    #[test]
    fn sampled_reasons_have_distinct_stable_labels() {
        let labels: Vec<_> = Reason::SAMPLED.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            [
                "missing",
                "length",
                "charset",
                "unknown_prefix",
                "checksum",
                "non_canonical",
                "unknown_version",
                "missing_bearer",
                "forged",
                "unknown_legacy",
                "wrong_environment",
                "insufficient_scope",
                "ip_not_allowed",
                "origin_not_allowed",
            ]
        );
        for (i, r) in Reason::SAMPLED.iter().enumerate() {
            assert_eq!(r.index(), Some(i));
        }
    }

    /// What is sampled is junk, unknown legacy keys and authenticated keys
    /// against the request; key-status failures are audited one by one.
    #[test]
    fn sampling_follows_the_class() {
        for e in errors() {
            for stage in STAGES {
                let r = Reason::of(&e, stage);
                match r.class() {
                    FailureClass::Junk | FailureClass::Authenticated => {
                        assert!(r.sampled(), "{r:?}")
                    }
                    FailureClass::KeyStatus => {
                        assert_eq!(r.sampled(), r == Reason::UnknownLegacy, "{r:?}")
                    }
                    FailureClass::Other => assert!(!r.sampled(), "{r:?}"),
                }
            }
        }
        assert_eq!(
            Reason::of(&Error::InvalidApiKey, Stage::Parse),
            Reason::Forged
        );
        assert_eq!(
            Reason::of(&Error::InvalidApiKey, Stage::Verify),
            Reason::InvalidKey
        );
    }
}
