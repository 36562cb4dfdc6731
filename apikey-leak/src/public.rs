//! The public revocation endpoint: anyone who finds a key may ask for its
//! revocation, unauthenticated.
//!
//! It is not an oracle. The answer depends only on the client address's
//! throttle, the body's size and shape and the number of tokens, never on
//! what the tokens are: junk, forged, unknown, revoked and live keys get
//! the same `202` and the same body, and a store failure while handling a
//! real key is kept for the service's logs ([`PublicAnswer::failure`]), not
//! sent. Junk and forged tokens make no store call; only a token whose keyed
//! tag is valid (a key this service issued, so only its holder can present
//! it) is looked up, so the handling time can differ only for holders of
//! issued keys, who learn nothing they could not learn by using the key.
//! The exception, as in verification: a token under a legacy prefix
//! declared on the manager ([`apikey::KeyManager::with_legacy_prefix`]) costs one
//! legacy-index lookup, and a found key is then revoked.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use apikey::limits::{Admission, Limits, NoLimits, Quota};
use apikey::{AuditEvent, AuditKind, Clock, KeyStoreWrite, SystemClock, UsageStore};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{LeakError, json_error};
use crate::report::{LeakResponder, Reported, Reporter};

/// The most tokens one request may hold.
pub const MAX_PUBLIC_TOKENS: usize = 1000;
/// Default bound on a request body: 256 KiB (1,000 keys of the longest
/// format are under 80 KiB of JSON).
pub const DEFAULT_PUBLIC_MAX_BODY: usize = 256 << 10;
/// Default requests per client address: 10 a minute, 60 an hour.
pub const DEFAULT_PUBLIC_QUOTA: Quota = Quota::new(Some(10), Some(60));
/// The actor id of audit events caused by public revocation requests.
pub const PUBLIC_ACTOR: &str = "public_revoke";
/// The body every accepted request gets.
pub const ACCEPTED_BODY: &str =
    r#"{"status":"accepted","message":"Any of these tokens that are live keys will be revoked."}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    tokens: Vec<String>,
}

/// The answer to send: status, body and `Retry-After`. Whatever the tokens
/// were, an accepted request gets `202` and [`ACCEPTED_BODY`].
#[derive(Debug)]
pub struct PublicAnswer {
    status: u16,
    body: String,
    retry_after: Option<Duration>,
    failure: Option<LeakError>,
}

impl PublicAnswer {
    pub(crate) fn refused(error: LeakError) -> Self {
        let retry_after = match &error {
            LeakError::Throttled { retry_after } => Some(*retry_after),
            _ => None,
        };
        Self {
            status: error.status(),
            body: error.to_json(),
            retry_after,
            failure: None,
        }
    }

    /// The HTTP status: 202, or 400 / 413 / 429 for a refused request.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The JSON body.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// How long the client should wait (429 only).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// A failure while handling an accepted request (the store was down):
    /// for the service's logs only, never for the client. The reporter is
    /// not told; a later report of the same key revokes it.
    pub fn failure(&self) -> Option<&LeakError> {
        self.failure.as_ref()
    }
}

/// The public revocation endpoint, framework-free. Requests are throttled
/// per client address through the service's [`Limits`] (the same bundle as
/// key rate limits: in memory, or shared through Redis); IPv6 addresses
/// count per /64, IPv4-mapped IPv6 as IPv4, and requests with no known
/// address share one budget.
///
/// Body: `{"tokens": ["...", ...]}`, at most [`MAX_PUBLIC_TOKENS`] tokens.
pub struct PublicRevoke<S, Lim, C = SystemClock, L = NoLimits> {
    responder: Arc<LeakResponder<S, C, L>>,
    limits: Lim,
    quota: Quota,
    max_body: usize,
}

impl<S, Lim, C, L> fmt::Debug for PublicRevoke<S, Lim, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicRevoke")
            .field("quota", &self.quota)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl<S, Lim, C, L> PublicRevoke<S, Lim, C, L>
where
    S: KeyStoreWrite + UsageStore,
    Lim: Limits,
    C: Clock,
    L: Limits,
{
    /// An endpoint over `responder`, throttled through `limits` at
    /// [`DEFAULT_PUBLIC_QUOTA`] per address.
    pub fn new(responder: Arc<LeakResponder<S, C, L>>, limits: Lim) -> Self {
        Self {
            responder,
            limits,
            quota: DEFAULT_PUBLIC_QUOTA,
            max_body: DEFAULT_PUBLIC_MAX_BODY,
        }
    }

    /// Requests allowed per client address. Defaults to
    /// [`DEFAULT_PUBLIC_QUOTA`].
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// The largest body accepted. Defaults to [`DEFAULT_PUBLIC_MAX_BODY`].
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The largest body accepted.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Handles one request from `client` (the peer address, or the one a
    /// trusted proxy reported) with the raw `body`.
    pub async fn handle(&self, client: Option<IpAddr>, body: &[u8]) -> PublicAnswer {
        self.answer(client, Some(body)).await
    }

    /// [`handle`](Self::handle) with `None` for a body already known to be
    /// over the bound (not read whole): the throttle still runs first.
    pub(crate) async fn answer(&self, client: Option<IpAddr>, body: Option<&[u8]>) -> PublicAnswer {
        let client = client.map(normalize);
        let admission = Admission::new(throttle_key(client), self.quota);
        match self.limits.admit(&admission).await {
            Ok(verdict) if verdict.is_admitted() => {}
            Ok(verdict) => {
                return PublicAnswer::refused(LeakError::Throttled {
                    retry_after: verdict.retry_after().unwrap_or(Duration::from_secs(1)),
                });
            }
            // The limits backend is down: refuse (fail closed), saying so
            // as a throttle, which reveals nothing about tokens.
            Err(_) => {
                return PublicAnswer::refused(LeakError::Throttled {
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        let Some(body) = body.filter(|b| b.len() <= self.max_body) else {
            return PublicAnswer::refused(LeakError::BodyTooLarge {
                limit: self.max_body,
            });
        };
        let request: WireRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return PublicAnswer::refused(json_error(r#"{"tokens": [...]}"#, &e));
            }
        };
        if request.tokens.len() > MAX_PUBLIC_TOKENS {
            return PublicAnswer::refused(LeakError::TooManyTokens {
                limit: MAX_PUBLIC_TOKENS,
            });
        }
        let mut event = AuditEvent::new(
            self.responder.now(),
            AuditKind::RevocationRequested {
                reporter: client,
                tokens: request.tokens.len() as u32,
            },
        );
        event.actor = Some(PUBLIC_ACTOR.to_owned());
        self.responder.audit(&event);
        let batch: Vec<Reported<'_>> = request
            .tokens
            .iter()
            .map(|t| Reported {
                token: t,
                token_type: "",
                url: None,
                source: PUBLIC_ACTOR,
            })
            .collect();
        // The reporter's address is in the audit events (`revocation_requested`,
        // `leak_reported`), not in the revocation's reason, which the key's
        // owner reads (the REST API and the keys page show it).
        let reason = "leak reported through public revocation";
        let failure = self
            .responder
            .process(
                &batch,
                Reporter {
                    actor: PUBLIC_ACTOR,
                    reason,
                    address: client,
                },
            )
            .await
            .err();
        PublicAnswer {
            status: 202,
            body: ACCEPTED_BODY.to_owned(),
            retry_after: None,
            failure,
        }
    }
}

/// IPv4-mapped IPv6 as IPv4; other IPv6 addresses by their /64.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The limits key of an address: a hash under this endpoint's own label,
/// so it never shares a bucket with a key id.
fn throttle_key(client: Option<IpAddr>) -> u64 {
    let mut h = Sha256::new();
    h.update(b"apikey-leak/public-revoke/v1\0");
    match client {
        Some(IpAddr::V4(v4)) => h.update(v4.octets()),
        Some(IpAddr::V6(v6)) => h.update(v6.octets()),
        None => h.update(b"unknown"),
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}
