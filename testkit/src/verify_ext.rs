//! [`VerifyExt`]: parse, look up and verify in one call, for tests over
//! synchronous stores.

use std::sync::Arc;

use apikey::{Clock, Error, KeyId, KeyView, Requirement, StoreError, VerifiedKey, Verifier};

/// Parse, fetch with `lookup`, then [`Verifier::verify`] with no client
/// address: the whole pipeline for a synchronous store in one call.
///
/// ```
/// use apikey::*;
/// use apikey_testkit::VerifyExt;
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
/// let store = MemoryStore::new();
/// let (key, record) = verifier.issue(NewKey::new("sk_test_"), SystemClock.now())?;
/// store.insert_sync(record)?;
/// let ok = verifier.verify_with(key.expose_secret(), |id| store.fetch_sync(id), SystemClock, &Requirement::none())?;
/// assert_eq!(ok.environment(), Environment::Test);
/// # Ok::<(), apikey::Error>(())
/// ```
pub trait VerifyExt {
    /// Verifies `presented` with its record from `lookup`, reading `clock`
    /// (a [`Timestamp`](apikey::Timestamp) for a fixed time).
    ///
    /// # Errors
    /// Those of [`Verifier::parse`] and [`Verifier::verify`];
    /// `STORE_UNAVAILABLE` when `lookup` fails.
    fn verify_with<F, C>(
        &self,
        presented: &str,
        lookup: F,
        clock: C,
        requirement: &Requirement,
    ) -> apikey::Result<VerifiedKey>
    where
        F: FnOnce(KeyId) -> Result<Option<Arc<KeyView>>, StoreError>,
        C: Clock;
}

impl VerifyExt for Verifier {
    fn verify_with<F, C>(
        &self,
        presented: &str,
        lookup: F,
        clock: C,
        requirement: &Requirement,
    ) -> apikey::Result<VerifiedKey>
    where
        F: FnOnce(KeyId) -> Result<Option<Arc<KeyView>>, StoreError>,
        C: Clock,
    {
        let parsed = self.parse(presented)?;
        let view = lookup(parsed.id()).map_err(Error::from)?;
        self.verify(&parsed, view, &clock, requirement, None)
    }
}
