//! Where GitHub's public keys come from, and the cache in front of it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{KeySourceError, LeakError};
use crate::signature::{PublicKeySet, decode_signature, plausible_key_id, verify_with};

/// How often, at most, an unknown key identifier makes the cache refetch
/// the key set. Defaults for [`KeyCache`]: 60 seconds.
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// Supplies the signing keys. The service decides where they come from:
/// GitHub's published list over HTTPS
/// ([`GithubKeySource`](crate::GithubKeySource), feature `fetch`), a file,
/// a fixed set in tests ([`PublicKeySet`] itself is a source).
pub trait KeySource: Send + Sync {
    /// Fetches the current key set.
    ///
    /// # Errors
    /// [`KeySourceError`] when the keys cannot be obtained or read.
    fn fetch(&self) -> impl Future<Output = Result<PublicKeySet, KeySourceError>> + Send;
}

impl KeySource for PublicKeySet {
    fn fetch(&self) -> impl Future<Output = Result<PublicKeySet, KeySourceError>> + Send {
        std::future::ready(Ok(self.clone()))
    }
}

impl<K: KeySource + ?Sized> KeySource for Arc<K> {
    fn fetch(&self) -> impl Future<Output = Result<PublicKeySet, KeySourceError>> + Send {
        (**self).fetch()
    }
}

/// Caches a [`KeySource`]'s key set. The first alert fetches it; an alert
/// naming an identifier the set does not hold refetches, at most once per
/// interval (and one fetch at a time: a burst of alerts during a key
/// rotation makes one fetch, and the others wait for its result). Alerts
/// naming a known key never wait for a fetch. Time is tokio's clock
/// (`tokio::time::Instant`), so tests can pause and advance it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use apikey_leak::{KeyCache, LeakError, PublicKeySet};
/// let cache = KeyCache::new(PublicKeySet::new());
/// let err = cache.verify("abc123", "MEUCIQ==", b"[]").await.unwrap_err();
/// assert!(matches!(err, LeakError::MalformedSignature));
/// # }
/// ```
#[derive(Debug)]
pub struct KeyCache<K> {
    source: K,
    current: RwLock<Option<Arc<PublicKeySet>>>,
    /// The last fetch; held across the fetch (single flight).
    last_fetch: tokio::sync::Mutex<Option<LastFetch>>,
    min_interval: Duration,
    fetches: AtomicU64,
}

/// When the last fetch started, and whether it failed.
#[derive(Clone, Copy, Debug)]
struct LastFetch {
    at: Instant,
    failed: bool,
}

impl<K: KeySource> KeyCache<K> {
    /// A cache over `source`, refetching at most every
    /// [`DEFAULT_REFETCH_INTERVAL`].
    pub fn new(source: K) -> Self {
        Self {
            source,
            current: RwLock::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
            min_interval: DEFAULT_REFETCH_INTERVAL,
            fetches: AtomicU64::new(0),
        }
    }

    /// The least time between two fetches. Defaults to
    /// [`DEFAULT_REFETCH_INTERVAL`].
    pub fn with_min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// The source.
    pub fn source(&self) -> &K {
        &self.source
    }

    /// How many fetches were started so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The key set held now, if one was fetched.
    pub fn current(&self) -> Option<Arc<PublicKeySet>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Verifies `signature` (base64 DER) over the raw `body` with the key
    /// named `key_id`, fetching or refetching the set as described on the
    /// type. The signature is decoded first: a malformed one never causes
    /// a fetch.
    ///
    /// # Errors
    /// [`LeakError::MalformedSignature`], [`LeakError::UnknownKeyId`],
    /// [`LeakError::BadSignature`]; [`LeakError::KeysUnavailable`] (503, so
    /// GitHub retries) when the key is unknown and the source failed, and
    /// until the next fetch may start after a failed one. A
    /// `GithubKeySource` with a token (`with_token`) is less likely to fail
    /// on GitHub's unauthenticated rate limit.
    pub async fn verify(
        &self,
        key_id: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<(), LeakError> {
        let signature = decode_signature(signature)?;
        let set = self.set_for(key_id).await?;
        let key = set.key(key_id).ok_or(LeakError::UnknownKeyId)?;
        verify_with(key, &signature, body)
    }

    /// A set holding `key_id`, fetching if needed.
    async fn set_for(&self, key_id: &str) -> Result<Arc<PublicKeySet>, LeakError> {
        let held = self.current();
        if let Some(set) = &held
            && set.contains(key_id)
        {
            return Ok(set.clone());
        }
        if held.is_some() && !plausible_key_id(key_id) {
            return Err(LeakError::UnknownKeyId);
        }
        let mut last = self.last_fetch.lock().await;
        // Another alert may have fetched while this one waited.
        let held = self.current();
        if let Some(set) = &held
            && set.contains(key_id)
        {
            return Ok(set.clone());
        }
        if let Some(f) = *last
            && f.at.elapsed() < self.min_interval
        {
            // After a failed fetch the set may lack a new key: answer 503
            // (the sender retries) rather than 401 until the next attempt.
            return Err(match held {
                Some(_) if !f.failed => LeakError::UnknownKeyId,
                _ => LeakError::KeysUnavailable(None),
            });
        }
        *last = Some(LastFetch {
            at: Instant::now(),
            failed: true,
        });
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let set = Arc::new(
            self.source
                .fetch()
                .await
                .map_err(|e| LeakError::KeysUnavailable(Some(e)))?,
        );
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(set.clone());
        if let Some(f) = last.as_mut() {
            f.failed = false;
        }
        drop(last);
        if set.contains(key_id) {
            Ok(set)
        } else {
            Err(LeakError::UnknownKeyId)
        }
    }
}
