//! New records: [`KeyManager::create`] and [`KeyManager::import`].

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::commit::InsertError;
use super::{ImportKey, KeyManager, KeySummary, LegacySecret, reserved_links};
use crate::clock::Clock;
use crate::error::{Error, Result, StoreError, StoreErrorKind};
use crate::key::ApiKey;
use crate::key::KeyDigest;
use crate::limits::Limits;
use crate::pipeline::{Actor, AuditKind};
use crate::record::{LegacyInfo, NewKey};
use crate::store::{KeyStoreWrite, UsageStore};
use crate::verify::MAX_LEGACY_KEY_LEN;

impl<S: KeyStoreWrite + UsageStore, C: Clock, L: Limits> KeyManager<S, C, L> {
    /// Creates a key; returns the full key (show it once) and its summary.
    ///
    /// With an owner limit, the owner's keys are counted on a listing and
    /// the insert is committed with the owner guard, so concurrent creates
    /// (and imports, derivations, revivals) never leave the owner above the
    /// limit.
    ///
    /// # Errors
    /// [`Error::KeyLimitReached`] when the owner already has the maximum of
    /// active keys; the errors of [`Verifier::issue`](crate::Verifier::issue)
    /// (prefix, scopes, validity window); [`Error::StoreUnavailable`] when
    /// the store fails and the outcome could not be learned (see
    /// [What a timeout means](KeyManager#what-a-timeout-means): a create
    /// whose commit outlived its deadline answers success), or when
    /// concurrent writes to the owner kept conflicting.
    pub async fn create(&self, new: NewKey, actor: &Actor) -> Result<(ApiKey, KeySummary)> {
        reserved_links(&new.metadata)?;
        let now = self.now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (key, record) = self.issue_planned(new.clone(), now, true)?;
            match self.insert_planned(&record, now, None).await {
                Err(InsertError::Store(e))
                    if e.kind() == StoreErrorKind::IdCollision && attempt < 3 =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
                Ok(()) => {
                    self.emit(self.event(now, AuditKind::Created, &record, actor));
                    return Ok((key, KeySummary::from_record(&record, now)));
                }
            }
        }
    }

    /// Imports a key from another system so its users keep it: a full key,
    /// or the SHA-256 digest of one. The key must be under a declared legacy
    /// prefix ([`with_legacy_prefix`](Self::with_legacy_prefix)). It is found on
    /// verification through the legacy index (a keyed hash of the whole
    /// key) and upgraded to the current keyed digest on its first successful
    /// verification. The owner limit applies.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the key is not under a declared legacy
    /// prefix or too long; [`Error::InvalidState`] when it was imported
    /// already; [`Error::KeyLimitReached`]; the errors of
    /// [`Verifier::issue`](crate::Verifier::issue) for the other fields; [`Error::StoreUnavailable`].
    pub async fn import(&self, import: ImportKey, actor: &Actor) -> Result<KeySummary> {
        let now = self.now();
        let keyring = self.auth.verifier().keyring();
        let version = keyring.current_version();
        let (legacy, sha, digest) = match &import.secret {
            LegacySecret::Plaintext(text) => {
                if text.len() > MAX_LEGACY_KEY_LEN {
                    return Err(Error::InvalidInput("legacy key too long".into()));
                }
                let legacy = self
                    .auth
                    .legacy_prefix_of(text)
                    .filter(|l| text.len() > l.legacy.len())
                    .ok_or_else(|| {
                        Error::InvalidInput("the key is not under a declared legacy prefix".into())
                    })?;
                let sha: Zeroizing<[u8; 32]> =
                    Zeroizing::new(Sha256::digest(text.as_bytes()).into());
                (legacy, sha, keyring.legacy_digest(version, text))
            }
            LegacySecret::Sha256 { prefix, digest } => {
                let legacy = self
                    .auth
                    .legacy_prefix_named(prefix)
                    .ok_or_else(|| Error::InvalidInput("not a declared legacy prefix".into()))?;
                (legacy, digest.clone(), None)
            }
        };
        let index = keyring
            .legacy_index(version, &sha)
            .ok_or(Error::InvalidSecret(
                "the current secret version is missing",
            ))?;
        let mut new = import.new.clone();
        reserved_links(&new.metadata)?;
        new.prefix = legacy.native.prefix.as_str().to_owned();
        for _ in 0..3 {
            let (_discarded, mut record) = self.issue_planned(new.clone(), now, true)?;
            record.digest = digest.unwrap_or(KeyDigest::from_bytes([0; 32]));
            record.legacy = Some(LegacyInfo::new(
                legacy.legacy.clone(),
                index,
                version,
                digest.is_some(),
            ));
            // Planned uniqueness of the legacy index; the store's unique index
            // is the backstop (`IdCollision`, handled below).
            if self.imported_already(&sha).await? {
                return Err(Error::InvalidState("this key was imported already"));
            }
            match self.insert_planned(&record, now, None).await {
                Ok(()) => {
                    self.emit(self.event(now, AuditKind::Imported, &record, actor));
                    return Ok(KeySummary::from_record(&record, now));
                }
                Err(InsertError::Store(e)) if e.kind() == StoreErrorKind::IdCollision => {
                    if self.imported_already(&sha).await? {
                        return Err(Error::InvalidState("this key was imported already"));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::StoreUnavailable(StoreError::new(
            StoreErrorKind::IdCollision,
        )))
    }

    /// Whether a record holds the legacy key of SHA-256 `sha` under the
    /// index of any secret version held, not only the current one: a record
    /// keeps the index of the version it was imported under until it
    /// verifies (a revoked key never does), and verification looks under
    /// every version.
    async fn imported_already(&self, sha: &[u8; 32]) -> Result<bool> {
        let keyring = self.auth.verifier().keyring();
        for v in keyring.versions_current_first() {
            let Some(index) = keyring.legacy_index(v, sha) else {
                continue;
            };
            if self
                .store()
                .find_legacy(&index)
                .await
                .map_err(Error::from)?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
