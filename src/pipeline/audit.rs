use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::Timestamp;
use serde::Serialize;

use crate::error::Reason;
use crate::key::KeyId;

/// Who did something and why. Passed to every management call.
///
/// ```
/// use apikey::Actor;
/// let actor = Actor::new("admin_7").reason("ticket #1234");
/// assert_eq!(actor.id(), Some("admin_7"));
/// assert_eq!(Actor::system().id(), None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    id: Option<String>,
    reason: Option<String>,
}

impl Actor {
    /// An actor with an id (a user, an admin, a service).
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: Some(id.into()),
            reason: None,
        }
    }

    /// The application itself (no actor id).
    pub fn system() -> Self {
        Self::default()
    }

    /// Sets the reason recorded with the event.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The actor id.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The reason given.
    pub fn reason_text(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditKind {
    /// A key was created.
    Created,
    /// Fields of a key were changed.
    Updated {
        /// Names of the fields changed.
        fields: Vec<&'static str>,
    },
    /// A key was disabled.
    Disabled,
    /// A key was enabled again.
    Enabled,
    /// A key was revoked.
    Revoked,
    /// A key was rotated; `key_id` is the old key.
    Rotated {
        /// The new key.
        successor: KeyId,
        /// When the old key stops working.
        grace_ends: Timestamp,
    },
    /// A key record was deleted.
    Deleted,
    /// A legacy key was imported.
    Imported,
    /// An imported legacy key was re-hashed under the current secret on
    /// its first successful verification.
    LegacyUpgraded,
    /// The expiry sweep's notice, once per key and expiry
    /// ([`KeyManager::sweep_once`](crate::KeyManager::sweep_once)).
    Expiring {
        /// When the key expires.
        expires_at: Timestamp,
        /// Whether the key is marked for auto-renewal.
        auto_renew: bool,
    },
    /// The expiry sweep extended an auto-renewing key's expiry; the same
    /// key keeps working.
    Renewed {
        /// The new expiry.
        expires_at: Timestamp,
    },
    /// A verification failed after the key's tag matched, for a reason
    /// about the key itself (unknown id, wrong secret, expired, not yet
    /// valid, disabled, revoked): one event per failure. Failures of an
    /// authenticated key against the request (environment, scope, address)
    /// are in [`RejectionsSampled`](Self::RejectionsSampled) instead.
    VerificationFailed {
        /// The error's machine code (`EXPIRED_API_KEY`, ...).
        code: &'static str,
    },
    /// Failed verifications counted per reason since the last summary:
    /// rejections before the tag matched (`missing`, `length`, `charset`,
    /// `unknown_prefix`, `checksum`, `non_canonical`, `unknown_version`,
    /// `missing_bearer`, `forged`, `unknown_legacy`) and failures of an authenticated key
    /// against the request (`wrong_environment`, `insufficient_scope`,
    /// `ip_not_allowed`). At most one per sample interval.
    RejectionsSampled {
        /// `(reason, count)` for each reason seen.
        counts: Vec<(&'static str, u64)>,
    },
    /// Someone reported that an issued key leaked (a secret-scanning partner
    /// alert or a public revocation request). Emitted once per key and
    /// report, after the policy's action (whose own event, `revoked` or
    /// `disabled`, comes first when the report changed the key).
    LeakReported {
        /// Where the key was found, as the reporter said (a URL).
        url: Option<String>,
        /// Who found it: the scanner's source (`content`, `commit`, ...)
        /// or `public_revoke`.
        source: String,
        /// The reporter's network address, when known.
        reporter: Option<std::net::IpAddr>,
    },
    /// A public revocation request was received (one per request, whatever
    /// the tokens were).
    RevocationRequested {
        /// The reporter's network address, when known.
        reporter: Option<std::net::IpAddr>,
        /// How many tokens the request held.
        tokens: u32,
    },
    /// Monitoring ([`Monitor`](crate::pipeline::Monitor)): the key was used
    /// from a network not seen for it within the configured window.
    NewNetwork {
        /// The network (IPv4 /24, IPv6 /48), never the full address.
        network: crate::record::IpNet,
    },
    /// Monitoring: a burst of failed verifications, of the event's key
    /// (`network` is `None`) or from one client network (no key). One event
    /// per burst window, however many failures follow.
    FailureBurst {
        /// The client network, for a burst from one network.
        network: Option<crate::record::IpNet>,
        /// Failures counted when the burst was raised.
        failures: u64,
        /// The burst window, in seconds.
        window_secs: u64,
    },
    /// Monitoring: the gate refused the key with 429 `RATE_LIMITED`. At
    /// most one per key per dedupe window.
    RateLimitHit {
        /// Refusals since the previous event that raised none.
        suppressed: u64,
    },
    /// Monitoring: the gate refused the key with 429 `USAGE_EXCEEDED` (its
    /// own or its owner's credits ran out). At most one per key per dedupe
    /// window.
    QuotaExceeded {
        /// Refusals since the previous event that raised none.
        suppressed: u64,
    },
    /// Monitoring: the key's requests this hour exceed the configured
    /// factor times its trailing hourly average. At most one per key per
    /// hour.
    UnusualTraffic {
        /// Requests in the current hour when the event was raised.
        last_hour: u64,
        /// The trailing hourly average (rounded).
        trailing_average: u64,
    },
}

impl AuditKind {
    /// A short, stable, lowercase name.
    ///
    /// ```
    /// assert_eq!(apikey::AuditKind::Created.as_str(), "created");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated { .. } => "updated",
            Self::Disabled => "disabled",
            Self::Enabled => "enabled",
            Self::Revoked => "revoked",
            Self::Rotated { .. } => "rotated",
            Self::Deleted => "deleted",
            Self::Imported => "imported",
            Self::LegacyUpgraded => "legacy_upgraded",
            Self::Expiring { .. } => "expiring",
            Self::Renewed { .. } => "renewed",
            Self::VerificationFailed { .. } => "verification_failed",
            Self::RejectionsSampled { .. } => "rejections_sampled",
            Self::LeakReported { .. } => "leak_reported",
            Self::RevocationRequested { .. } => "revocation_requested",
            Self::NewNetwork { .. } => "new_network",
            Self::FailureBurst { .. } => "failure_burst",
            Self::RateLimitHit { .. } => "rate_limit_hit",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::UnusualTraffic { .. } => "unusual_traffic",
        }
    }
}

/// Audit events: what happened to which key, when, by whom.
///
/// The [`KeyManager`](crate::KeyManager) sends an [`AuditEvent`] to its
/// [`AuditSink`] for every create, update, disable, enable, revoke, rotate,
/// delete and import, and for failed verifications (through
/// `KeyManager::authenticate`, and the gate and the axum layer over
/// [`KeyManager::authenticator`](crate::KeyManager::authenticator)):
///
/// * failures **after** the tag matched that concern the key itself
///   (unknown id, wrong secret, expired, not yet valid, disabled, revoked;
///   for an imported legacy key: found by its index but the wrong text)
///   each emit one [`AuditKind::VerificationFailed`] with the key id and
///   owner;
/// * everything else is only counted per reason and reported in one
///   [`AuditKind::RejectionsSampled`] summary at most once per sample
///   interval (and by `KeyManager::shutdown`), so a flood never becomes a
///   flood of events: rejections **before** the keyed tag matched
///   (reasons `missing`, `length`, `charset`, `unknown_prefix`, `checksum`,
///   `non_canonical`, `unknown_version`, `missing_bearer`, `forged`; `unknown_legacy` for a
///   legacy-prefixed key that is not in the store), and failures of an
///   authenticated key against the request (`wrong_environment`,
///   `insufficient_scope`, `ip_not_allowed`): 10,000 scope failures are one
///   event, not 10,000, and name no key.
///
/// Not audited at all: requests the web edge refuses before the pipeline
/// (no key, an oversized or non-ASCII value, two different keys, foreign
/// credentials), requests refused by the failure throttle
/// (`TOO_MANY_FAILED_ATTEMPTS`), rate-limit and credit refusals, and store
/// failures.
///
/// Events never carry a key or its secret: only the public key id, the
/// owner, the actor and the reason the actor gave.
///
/// Sinks are called synchronously on the calling task; a sink that writes to
/// a slow backend should buffer. With the `tracing` feature,
/// [`TracingSink`] turns events into `tracing` events.
///
/// One audit event. Never holds key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When (from the manager's clock).
    pub at: Timestamp,
    /// What.
    #[serde(flatten)]
    pub kind: AuditKind,
    /// The key concerned (public id), if any.
    pub key_id: Option<KeyId>,
    /// The key's owner, if known.
    pub owner: Option<String>,
    /// Who did it (management calls).
    pub actor: Option<String>,
    /// The reason the actor gave (for a revoke: the revocation reason).
    pub reason: Option<String>,
}

impl AuditEvent {
    /// An event with no key, owner, actor or reason.
    pub fn new(at: Timestamp, kind: AuditKind) -> Self {
        Self {
            at,
            kind,
            key_id: None,
            owner: None,
            actor: None,
            reason: None,
        }
    }

    pub(crate) fn key(mut self, id: KeyId, owner: Option<&str>) -> Self {
        self.key_id = Some(id);
        self.owner = owner.map(str::to_owned);
        self
    }

    pub(crate) fn by(mut self, actor: &Actor) -> Self {
        self.actor = actor.id.clone();
        if self.reason.is_none() {
            self.reason = actor.reason.clone();
        }
        self
    }
}

/// Text written as is, except control characters and bidirectional
/// formatting characters, written as escapes (`\n`, `\u{1b}`,
/// `\u{202e}`): one log line stays one line and reads as it is stored.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.at, self.kind.as_str())?;
        if let Some(id) = self.key_id {
            write!(f, " key={id}")?;
        }
        // Owners and actors come from the host or an import file, unchecked:
        // a line break or an escape sequence in one must not forge a line.
        if let Some(o) = &self.owner {
            write!(f, " owner={}", OneLine(o))?;
        }
        if let Some(a) = &self.actor {
            write!(f, " actor={}", OneLine(a))?;
        }
        if let Some(r) = &self.reason {
            write!(f, " reason={r:?}")?;
        }
        match &self.kind {
            AuditKind::Updated { fields } => write!(f, " fields={fields:?}")?,
            AuditKind::Rotated {
                successor,
                grace_ends,
            } => {
                write!(f, " successor={successor} grace_ends={grace_ends}")?;
            }
            AuditKind::VerificationFailed { code } => write!(f, " code={code}")?,
            AuditKind::RejectionsSampled { counts } => write!(f, " counts={counts:?}")?,
            AuditKind::LeakReported {
                url,
                source,
                reporter,
            } => {
                write!(f, " source={source:?}")?;
                if let Some(url) = url {
                    write!(f, " url={url:?}")?;
                }
                if let Some(ip) = reporter {
                    write!(f, " reporter={ip}")?;
                }
            }
            AuditKind::RevocationRequested { reporter, tokens } => {
                write!(f, " tokens={tokens}")?;
                if let Some(ip) = reporter {
                    write!(f, " reporter={ip}")?;
                }
            }
            AuditKind::NewNetwork { network } => write!(f, " network={network}")?,
            AuditKind::FailureBurst {
                network,
                failures,
                window_secs,
            } => {
                if let Some(n) = network {
                    write!(f, " network={n}")?;
                }
                write!(f, " failures={failures} window_secs={window_secs}")?;
            }
            AuditKind::RateLimitHit { suppressed } | AuditKind::QuotaExceeded { suppressed } => {
                write!(f, " suppressed={suppressed}")?;
            }
            AuditKind::UnusualTraffic {
                last_hour,
                trailing_average,
            } => write!(
                f,
                " last_hour={last_hour} trailing_average={trailing_average}"
            )?,
            _ => {}
        }
        Ok(())
    }
}

/// Where audit events go.
///
/// ```
/// use apikey::{AuditEvent, AuditSink};
/// #[derive(Debug)]
/// struct Stdout;
/// impl AuditSink for Stdout {
///     fn record(&self, event: &AuditEvent) {
///         println!("{event}");
///     }
/// }
/// ```
pub trait AuditSink: Send + Sync {
    /// Receives one event. Called on the task that caused it; must not block
    /// for long.
    fn record(&self, event: &AuditEvent);
}

impl<S: AuditSink + ?Sized> AuditSink for Arc<S> {
    fn record(&self, event: &AuditEvent) {
        (**self).record(event);
    }
}

/// Drops every event (the default sink).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record(&self, _event: &AuditEvent) {}
}

/// Keeps events in memory: for tests and examples.
///
/// ```
/// use apikey::{AuditEvent, AuditKind, AuditSink, MemoryAuditSink};
/// let sink = MemoryAuditSink::new();
/// sink.record(&AuditEvent::new(apikey::Timestamp::MIN, AuditKind::Created));
/// assert_eq!(sink.events().len(), 1);
/// assert_eq!(sink.take().len(), 1);
/// assert!(sink.events().is_empty());
/// ```
#[derive(Debug, Default)]
pub struct MemoryAuditSink(Mutex<Vec<AuditEvent>>);

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the events so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Removes and returns the events so far.
    pub fn take(&self) -> Vec<AuditEvent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, event: &AuditEvent) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
    }
}

/// Emits each event as a `tracing` event with target `apikey::audit`:
/// `INFO` for management events, `WARN` for failed verifications.
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink;

#[cfg(feature = "tracing")]
impl AuditSink for TracingSink {
    fn record(&self, e: &AuditEvent) {
        let key_id = e.key_id.map(|k| k.to_string());
        let detail = match &e.kind {
            AuditKind::Updated { fields } => format!("{fields:?}"),
            AuditKind::Rotated {
                successor,
                grace_ends,
            } => format!("successor={successor} grace_ends={grace_ends}"),
            AuditKind::VerificationFailed { code } => (*code).to_owned(),
            AuditKind::RejectionsSampled { counts } => format!("{counts:?}"),
            AuditKind::LeakReported {
                url,
                source,
                reporter,
            } => format!("source={source:?} url={url:?} reporter={reporter:?}"),
            AuditKind::RevocationRequested { reporter, tokens } => {
                format!("tokens={tokens} reporter={reporter:?}")
            }
            _ => String::new(),
        };
        match &e.kind {
            AuditKind::VerificationFailed { .. } | AuditKind::RejectionsSampled { .. } => {
                tracing::warn!(
                    target: "apikey::audit",
                    event = e.kind.as_str(),
                    key_id = key_id.as_deref(),
                    owner = e.owner.as_deref(),
                    detail = detail.as_str(),
                    "api key verification failed"
                );
            }
            _ => tracing::info!(
                target: "apikey::audit",
                event = e.kind.as_str(),
                key_id = key_id.as_deref(),
                owner = e.owner.as_deref(),
                actor = e.actor.as_deref(),
                reason = e.reason.as_deref(),
                detail = detail.as_str(),
                "api key event"
            ),
        }
    }
}

/// Counts rejections per sampled [`Reason`] (pre-tag rejections, unknown
/// legacy keys and failures of an authenticated key against the request)
/// and emits at most one summary per interval. Lock-free: one atomic add per rejection, one compare-exchange
/// per interval.
pub(crate) struct RejectionSampler {
    counts: [AtomicU64; Reason::SAMPLED.len()],
    last_emit: AtomicI64,
    interval_micros: i64,
}

impl fmt::Debug for RejectionSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectionSampler")
            .field("interval_micros", &self.interval_micros)
            .finish_non_exhaustive()
    }
}

const CLOCK_EVERY: u64 = 64;

impl RejectionSampler {
    pub(crate) fn new(interval: std::time::Duration) -> Self {
        Self {
            counts: Default::default(),
            last_emit: AtomicI64::new(i64::MIN),
            interval_micros: i64::try_from(interval.as_micros()).unwrap_or(i64::MAX),
        }
    }

    /// Counts one rejection and, when the interval has passed since the last
    /// summary, emits a summary. The clock is read for the first 64
    /// rejections of a reason after each summary and then for every 64th,
    /// so a flood costs one atomic add per rejection and a summary comes at
    /// most 64 rejections late.
    pub(crate) fn count(
        &self,
        reason: Reason,
        now: impl FnOnce() -> Timestamp,
        sink: &dyn AuditSink,
    ) {
        let Some(c) = reason.index().and_then(|i| self.counts.get(i)) else {
            return;
        };
        let prev = c.fetch_add(1, Ordering::Relaxed);
        if prev >= CLOCK_EVERY && prev % CLOCK_EVERY != 0 {
            return;
        }
        let now = now();
        let now_n = now.as_unix_micros();
        let last = self.last_emit.load(Ordering::Relaxed);
        if now_n.saturating_sub(last) >= self.interval_micros
            && self
                .last_emit
                .compare_exchange(last, now_n, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.emit(now, sink);
        }
    }

    /// Emits a summary of everything counted since the last one, if any.
    pub(crate) fn emit(&self, now: Timestamp, sink: &dyn AuditSink) {
        let counts: Vec<(&'static str, u64)> = Reason::SAMPLED
            .iter()
            .zip(&self.counts)
            .filter_map(|(reason, c)| {
                let n = c.swap(0, Ordering::AcqRel);
                (n > 0).then_some((reason.label(), n))
            })
            .collect();
        if !counts.is_empty() {
            sink.record(&AuditEvent::new(
                now,
                AuditKind::RejectionsSampled { counts },
            ));
        }
    }
}
