//! GitHub's published key set over HTTPS (feature `fetch`).

use std::fmt;
use std::time::Duration;

use crate::error::KeySourceError;
use crate::keys::KeySource;
use crate::signature::PublicKeySet;

/// Where GitHub publishes its secret-scanning signing keys.
pub const GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";
/// The largest key list read, in bytes.
const MAX_KEY_LIST: u64 = 1 << 20;

/// Fetches [`GITHUB_KEYS_URL`] (a blocking HTTPS GET with rustls and the
/// webpki roots, run on tokio's blocking pool, so it needs a tokio
/// runtime). Put it behind a [`KeyCache`](crate::KeyCache), which
/// [`GithubEndpoint::new`](crate::GithubEndpoint::new) does.
///
/// ```
/// let source = apikey_leak::GithubKeySource::new().with_token("ghp_example");
/// assert!(!format!("{source:?}").contains("ghp_example"));
/// ```
#[derive(Clone)]
pub struct GithubKeySource {
    url: String,
    token: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for GithubKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubKeySource")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for GithubKeySource {
    fn default() -> Self {
        Self::new()
    }
}

impl GithubKeySource {
    /// The source for [`GITHUB_KEYS_URL`], unauthenticated, with a 10 s
    /// timeout.
    pub fn new() -> Self {
        Self {
            url: GITHUB_KEYS_URL.to_owned(),
            token: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Another URL (GitHub Enterprise Server, a mirror). `https://` only,
    /// except plain `http://` to a loopback address (tests).
    ///
    /// # Errors
    /// [`KeySourceError`] for any other scheme or host.
    pub fn with_url(mut self, url: &str) -> Result<Self, KeySourceError> {
        if !allowed_key_url(url) {
            return Err(KeySourceError::new(
                "the key list must be fetched over https:// (plain http only to loopback), \
                 from a URL without user information",
            ));
        }
        url.clone_into(&mut self.url);
        Ok(self)
    }

    /// A GitHub token sent as `Authorization: Bearer` (a higher API rate
    /// limit). Never printed.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The whole-request timeout. Defaults to 10 seconds.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn get(&self) -> Result<PublicKeySet, KeySourceError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .build()
            .into();
        let mut request = agent
            .get(&self.url)
            .header("Accept", "application/json")
            .header(
                "User-Agent",
                concat!("apikey-leak/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = request
            .call()
            .map_err(|e| KeySourceError::with_source("fetching the key list failed", e))?;
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_KEY_LIST)
            .read_to_vec()
            .map_err(|e| KeySourceError::with_source("reading the key list failed", e))?;
        PublicKeySet::from_github_json(&body)
    }
}

impl KeySource for GithubKeySource {
    async fn fetch(&self) -> Result<PublicKeySet, KeySourceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.get())
            .await
            .map_err(|e| KeySourceError::with_source("the key fetch task failed", e))?
    }
}

/// `https://` to any host, or plain `http://` to a loopback host only, and
/// no user information in either: the host is what follows the scheme up
/// to the first `/`, `?` or `#`, so `http://localhost:1@evil.example/` (a
/// request to `evil.example`) is not taken for loopback.
fn allowed_key_url(url: &str) -> bool {
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return false,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains(['@', '\\']) {
        return false;
    }
    if https {
        return true;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, port)) if port.is_empty() || port.starts_with(':') => host,
            _ => return false,
        },
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(host, "127.0.0.1" | "::1" | "localhost")
}
