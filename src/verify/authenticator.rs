//! The async authenticator: parse, fetch from a [`KeyStore`], verify.

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::scope::Requirement;
use crate::store::KeyStore;
use crate::verifier::{VerifiedKey, Verifier};

/// Runs parse → store → verify for one presented key.
///
/// Generic over the store (no `dyn`) and the clock, so tests inject a
/// [`ManualClock`](crate::ManualClock). Rejections that need no store
/// (malformed, bad checksum, forged) never call it.
///
/// ```
/// use apikey::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[5; 32])?)?);
/// let store = MemoryStore::new();
/// let (key, record) = verifier.issue(NewKey::new("kwi_sk_").scopes(["tasks:read"]), time::OffsetDateTime::now_utc())?;
/// store.insert(record).await?;
///
/// let auth = Authenticator::new(verifier, store);
/// let ok = auth.authenticate(key.expose_secret(), &Requirement::scope("tasks:read")?).await?;
/// assert!(ok.scopes().grants(&Scope::parse("tasks:read")?));
/// let err = auth.authenticate(key.expose_secret(), &Requirement::scope("tasks:write")?).await.unwrap_err();
/// assert_eq!(err.code(), "INSUFFICIENT_SCOPE");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Authenticator<S, C = SystemClock> {
    verifier: Verifier,
    store: S,
    clock: C,
}

impl<S: KeyStore> Authenticator<S, SystemClock> {
    /// An authenticator reading the system clock.
    pub fn new(verifier: Verifier, store: S) -> Self {
        Self::with_clock(verifier, store, SystemClock)
    }
}

impl<S: KeyStore, C: Clock> Authenticator<S, C> {
    /// An authenticator reading `clock`.
    pub fn with_clock(verifier: Verifier, store: S, clock: C) -> Self {
        Self {
            verifier,
            store,
            clock,
        }
    }

    /// The verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Authenticates `presented` and checks `requirement`.
    ///
    /// # Errors
    /// Every verification outcome of [`Verifier::verify_with`], and
    /// [`Error::StoreUnavailable`] when the store fails (never "valid", never
    /// "invalid key").
    pub async fn authenticate(
        &self,
        presented: &str,
        requirement: &Requirement,
    ) -> Result<VerifiedKey> {
        self.authenticate_from(presented, requirement, None).await
    }

    /// Like [`authenticate`](Self::authenticate) for a request from `ip`,
    /// checked against the key's IP allowlist. With `None`, keys that have
    /// an allowlist fail closed with [`Error::IpNotAllowed`].
    ///
    /// # Errors
    /// As [`authenticate`](Self::authenticate), plus [`Error::IpNotAllowed`].
    pub async fn authenticate_from(
        &self,
        presented: &str,
        requirement: &Requirement,
        ip: Option<std::net::IpAddr>,
    ) -> Result<VerifiedKey> {
        let parsed = self.verifier.parse(presented)?;
        let view = self
            .store
            .fetch(parsed.id())
            .await
            .map_err(Error::StoreUnavailable)?;
        // The clock is read only for keys with a validity window, and then
        // without calendar conversion (`Clock::checked_timestamp`).
        self.verifier
            .verify_from_clock(&parsed, view, &self.clock, requirement, ip)
    }
}
