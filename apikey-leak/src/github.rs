//! The GitHub secret-scanning partner endpoint, framework-free.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use apikey::limits::backend::FailureThrottle;
use apikey::limits::{FailureThrottleConfig, Limits, NoLimits};
use apikey::{Clock, KeyStoreWrite, SystemClock, UsageStore};
use serde::Deserialize;

use crate::error::{LeakError, json_error};
use crate::keys::{KeyCache, KeySource};
use crate::report::{LeakResponder, Report, Reported, Reporter};
use crate::signature::{KEY_ID_HEADER, SIGNATURE_HEADER};

/// Default bound on an alert body: 4 MiB.
pub const DEFAULT_MAX_BODY: usize = 4 << 20;
/// Default bound on matches in one alert.
pub const DEFAULT_MAX_MATCHES: usize = 10_000;
/// The actor id of audit events caused by GitHub alerts.
pub const GITHUB_ACTOR: &str = "github_secret_scanning";

/// One match as GitHub sends it. Unknown fields are ignored.
#[derive(Deserialize)]
struct WireMatch {
    token: String,
    #[serde(rename = "type")]
    token_type: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// Receives GitHub's secret-scanning alerts: checks the body's size, then
/// the signature over the raw bytes, then reads the JSON and hands the
/// matches to the [`LeakResponder`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use apikey::{Keyring, KeyManager, MemoryStore, ServerSecret, Verifier};
/// use apikey_leak::{GithubEndpoint, LeakError, LeakResponder, PublicKeySet};
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap());
/// let manager = Arc::new(KeyManager::new(verifier, MemoryStore::new()));
/// let endpoint = GithubEndpoint::new(Arc::new(LeakResponder::new(manager)), PublicKeySet::new());
/// // No signature: refused before anything is read.
/// let err = endpoint.handle(Some("abc"), None, b"[]").await.unwrap_err();
/// assert_eq!(err.status(), 400);
/// # }
/// ```
pub struct GithubEndpoint<S, K, C = SystemClock, L = NoLimits> {
    responder: Arc<LeakResponder<S, C, L>>,
    keys: KeyCache<K>,
    max_body: usize,
    max_matches: usize,
    throttle: Option<FailureThrottle>,
}

impl<S, K, C, L> fmt::Debug for GithubEndpoint<S, K, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubEndpoint")
            .field("max_body", &self.max_body)
            .field("max_matches", &self.max_matches)
            .field("failure_throttle", &self.throttle.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, K, C, L> GithubEndpoint<S, K, C, L>
where
    S: KeyStoreWrite + UsageStore,
    K: KeySource,
    C: Clock,
    L: Limits,
{
    /// An endpoint over `responder`, with keys from `keys` (cached, see
    /// [`KeyCache`]).
    pub fn new(responder: Arc<LeakResponder<S, C, L>>, keys: K) -> Self {
        Self::with_key_cache(responder, KeyCache::new(keys))
    }

    /// An endpoint with a configured [`KeyCache`].
    pub fn with_key_cache(responder: Arc<LeakResponder<S, C, L>>, keys: KeyCache<K>) -> Self {
        Self {
            responder,
            keys,
            max_body: DEFAULT_MAX_BODY,
            max_matches: DEFAULT_MAX_MATCHES,
            throttle: None,
        }
    }

    /// Throttles failed alerts per client address, in this process: after
    /// `config.max_failures` refused alerts (bad or missing signature,
    /// unknown key identifier, oversized or malformed body) within
    /// `config.window`, the address gets 429 for `config.lockout`, before
    /// its body is read or any signature work is done. Accepted alerts are
    /// never counted, and neither are 5xx answers (the key list or the
    /// store was down), so GitHub's own deliveries are not throttled.
    /// Requests with no known client address are not throttled. Defaults
    /// to off.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use apikey::{Keyring, KeyManager, MemoryStore, ServerSecret, Verifier};
    /// use apikey::limits::FailureThrottleConfig;
    /// use apikey_leak::{GithubEndpoint, LeakResponder, PublicKeySet};
    /// # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap());
    /// # let manager = Arc::new(KeyManager::new(verifier, MemoryStore::new()));
    /// let endpoint = GithubEndpoint::new(Arc::new(LeakResponder::new(manager)), PublicKeySet::new())
    ///     .with_failure_throttle(FailureThrottleConfig::default());
    /// # let _ = endpoint;
    /// ```
    pub fn with_failure_throttle(mut self, config: FailureThrottleConfig) -> Self {
        self.throttle = Some(FailureThrottle::new(config));
        self
    }

    /// [`LeakError::Throttled`] while `client` is locked out after failed
    /// alerts (see [`with_failure_throttle`](Self::with_failure_throttle)).
    pub(crate) fn admit_client(&self, client: Option<IpAddr>) -> Result<(), LeakError> {
        match (&self.throttle, client) {
            (Some(t), Some(ip)) => t
                .check_address(ip, self.responder.manager().clock().now())
                .map_err(|retry_after| LeakError::Throttled { retry_after }),
            _ => Ok(()),
        }
    }

    /// Counts `error` against `client` when it is the sender's failure
    /// (a 4xx other than the throttle's own 429).
    pub(crate) fn failed(&self, client: Option<IpAddr>, error: &LeakError) {
        let status = error.status();
        if !(400..500).contains(&status) || status == 429 {
            return;
        }
        if let (Some(t), Some(ip)) = (&self.throttle, client) {
            let now = self.responder.manager().clock().now();
            // Refused to start: the address is at its bound or locked out
            // already, which is what this failure would cause.
            if let Ok(attempt) = t.begin_untagged(Some(ip), now) {
                let _ = attempt.failed(now);
            }
        }
    }

    /// The largest body accepted, in bytes. Defaults to
    /// [`DEFAULT_MAX_BODY`].
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most matches accepted in one alert. Defaults to
    /// [`DEFAULT_MAX_MATCHES`].
    pub fn with_max_matches(mut self, matches: usize) -> Self {
        self.max_matches = matches;
        self
    }

    /// The largest body accepted.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The key cache.
    pub fn keys(&self) -> &KeyCache<K> {
        &self.keys
    }

    /// The responder.
    pub fn responder(&self) -> &LeakResponder<S, C, L> {
        &self.responder
    }

    /// Handles one alert: `key_id` and `signature` are the
    /// `Github-Public-Key-Identifier` and `Github-Public-Key-Signature`
    /// header values, `body` the raw body exactly as received (the
    /// signature is over these bytes: never parse and re-serialize first).
    /// Answer 200 with [`Report::feedback_json`] on success (the body is
    /// optional), [`LeakError::status`] otherwise.
    ///
    /// # Errors
    /// [`LeakError::BodyTooLarge`], [`LeakError::MissingHeader`], the
    /// signature errors, [`LeakError::MalformedBody`],
    /// [`LeakError::TooManyTokens`], [`LeakError::Store`].
    pub async fn handle(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Report, LeakError> {
        self.handle_from(None, key_id, signature, body).await
    }

    /// [`handle`](Self::handle) for an alert from `client` (the peer
    /// address, or the one a trusted proxy reported): with a
    /// [failure throttle](Self::with_failure_throttle), a locked-out
    /// address is refused first, and a refused alert is counted against
    /// it.
    ///
    /// # Errors
    /// As [`handle`](Self::handle), and [`LeakError::Throttled`].
    pub async fn handle_from(
        &self,
        client: Option<IpAddr>,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Report, LeakError> {
        self.admit_client(client)?;
        let result = self.checked(key_id, signature, body).await;
        if let Err(e) = &result {
            self.failed(client, e);
        }
        result
    }

    async fn checked(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Report, LeakError> {
        if body.len() > self.max_body {
            return Err(LeakError::BodyTooLarge {
                limit: self.max_body,
            });
        }
        let key_id = key_id.ok_or(LeakError::MissingHeader(KEY_ID_HEADER))?;
        let signature = signature.ok_or(LeakError::MissingHeader(SIGNATURE_HEADER))?;
        self.keys.verify(key_id.trim(), signature, body).await?;
        let matches: Vec<WireMatch> =
            serde_json::from_slice(body).map_err(|e| json_error("a JSON array of matches", &e))?;
        if matches.len() > self.max_matches {
            return Err(LeakError::TooManyTokens {
                limit: self.max_matches,
            });
        }
        let batch: Vec<Reported<'_>> = matches
            .iter()
            .map(|m| Reported {
                token: &m.token,
                token_type: &m.token_type,
                url: m.url.as_deref(),
                source: m.source.as_deref().unwrap_or("unknown"),
            })
            .collect();
        self.responder
            .process(
                &batch,
                Reporter {
                    actor: GITHUB_ACTOR,
                    reason: "leak reported by GitHub secret scanning",
                    address: None,
                },
            )
            .await
    }
}

#[cfg(feature = "fetch")]
impl<S, C, L> GithubEndpoint<S, crate::fetch::GithubKeySource, C, L>
where
    S: KeyStoreWrite + UsageStore,
    C: Clock,
    L: Limits,
{
    /// The default set-up: keys fetched from GitHub's published list over
    /// HTTPS ([`GithubKeySource::new`](crate::GithubKeySource::new)),
    /// cached, refetched for an unknown identifier at most once per
    /// [`DEFAULT_REFETCH_INTERVAL`](crate::DEFAULT_REFETCH_INTERVAL).
    pub fn from_github(responder: Arc<LeakResponder<S, C, L>>) -> Self {
        Self::new(responder, crate::fetch::GithubKeySource::new())
    }
}
