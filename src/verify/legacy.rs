//! Keys imported from another system ([`KeyManager::import`](crate::KeyManager::import)):
//! the declared legacy prefixes, and their verification through the legacy
//! index, a step of the one [`Authenticator`](crate::Authenticator)
//! pipeline.
//!
//! A legacy key carries no checksum or tag, so any string that starts with
//! a legacy prefix reaches the store (one indexed lookup per secret version
//! held). Once its text matched, the record is re-hashed under the current
//! secret version (best effort, when the authenticator can write: it was
//! built by a [`KeyManager`](crate::KeyManager)).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::verifier::Verifier;
use crate::error::{Error, Result};
use crate::key::PrefixEntry;
use crate::record::{KeyRecord, LegacyInfo};
use crate::store::{Changes, KeyStoreWrite, Put};

/// Longest accepted legacy prefix, in bytes.
pub const MAX_LEGACY_PREFIX_LEN: usize = 32;
/// Longest accepted legacy key, in bytes.
pub const MAX_LEGACY_KEY_LEN: usize = 512;

/// One declared legacy prefix and the native prefix its keys are stored
/// under (which gives them their environment).
#[derive(Clone, Debug)]
pub(crate) struct LegacyPrefix {
    pub(crate) legacy: String,
    pub(crate) native: PrefixEntry,
}

/// Writes the re-hashed record of an imported key (a commit of one put at
/// the revision read).
pub(crate) trait Upgrader: Send + Sync {
    fn upgrade(
        &self,
        next: KeyRecord,
        expected: u64,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

impl<S: KeyStoreWrite + ?Sized> Upgrader for S {
    fn upgrade(
        &self,
        next: KeyRecord,
        expected: u64,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let mut changes = Changes::new();
            changes.puts.push(Put::update(next, expected));
            self.commit(&changes).await.is_ok()
        })
    }
}

/// The legacy configuration an authenticator shares with its clones.
#[derive(Clone, Default)]
pub(crate) struct Legacy {
    /// Longest first, so the most specific legacy prefix wins.
    pub(crate) prefixes: Vec<LegacyPrefix>,
    pub(crate) upgrader: Option<Arc<dyn Upgrader>>,
}

impl fmt::Debug for Legacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Legacy")
            .field(
                "prefixes",
                &self
                    .prefixes
                    .iter()
                    .map(|l| l.legacy.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("upgrades", &self.upgrader.is_some())
            .finish()
    }
}

impl Legacy {
    /// Declares `legacy`, stored under the registered native prefix
    /// `native`.
    pub(crate) fn declare(
        &mut self,
        verifier: &Verifier,
        legacy: &str,
        native: &str,
    ) -> Result<()> {
        let bad = |reason| Error::InvalidPrefix {
            prefix: legacy.chars().take(40).collect(),
            reason,
        };
        if legacy.is_empty()
            || legacy.len() > MAX_LEGACY_PREFIX_LEN
            || !legacy.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad("a legacy prefix is 1 to 32 printable ASCII characters"));
        }
        if verifier
            .prefixes()
            .iter()
            .any(|e| legacy.starts_with(e.prefix.as_str()))
        {
            return Err(bad("a legacy prefix may not start with a native prefix"));
        }
        if self.prefixes.iter().any(|l| l.legacy == legacy) {
            return Err(bad("already declared"));
        }
        let (_, entry) = verifier
            .prefixes()
            .find(native)
            .ok_or_else(|| Error::InvalidPrefix {
                prefix: native.chars().take(40).collect(),
                reason: "not registered with this verifier",
            })?;
        self.prefixes.push(LegacyPrefix {
            legacy: legacy.to_owned(),
            native: entry.clone(),
        });
        self.prefixes
            .sort_by_key(|l| std::cmp::Reverse(l.legacy.len()));
        Ok(())
    }

    /// The declared prefix `text` starts with.
    pub(crate) fn prefix_of(&self, text: &str) -> Option<&LegacyPrefix> {
        self.prefixes
            .iter()
            .find(|l| text.starts_with(l.legacy.as_str()))
    }

    /// The legacy prefix to verify `presented` under, when the verifier
    /// found it malformed: it starts with a declared legacy prefix and with
    /// no native one.
    pub(crate) fn applies(
        &self,
        verifier: &Verifier,
        presented: &str,
        err: &Error,
    ) -> Option<&LegacyPrefix> {
        if self.prefixes.is_empty() || !matches!(err, Error::MalformedApiKey(_)) {
            return None;
        }
        let l = self.prefix_of(presented)?;
        let native = verifier
            .prefixes()
            .iter()
            .any(|n| presented.starts_with(n.prefix.as_str()));
        (!native).then_some(l)
    }
}

/// SHA-256 of a presented legacy key, wiped on drop.
pub(crate) fn sha(presented: &str) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(Sha256::digest(presented.as_bytes()).into())
}

/// Whether `rec` is the imported key `presented` (under `legacy`), found by
/// `index`: the index matches in constant time, and once upgraded, the
/// keyed digest too.
pub(crate) fn matches(
    verifier: &Verifier,
    rec: &KeyRecord,
    legacy: &LegacyPrefix,
    index: &crate::KeyDigest,
    presented: &str,
) -> bool {
    match &rec.legacy {
        Some(l) if l.prefix == legacy.legacy => {
            let index_ok: bool = l.index.ct_eq(index).into();
            let digest_ok = !l.upgraded
                || verifier
                    .keyring()
                    .legacy_digest(rec.secret_version, presented)
                    .is_some_and(|d| bool::from(d.ct_eq(&rec.digest)));
            index_ok && digest_ok
        }
        _ => false,
    }
}

/// The record re-hashed under the current secret version, or `None` when
/// it is current already.
pub(crate) fn upgraded(
    verifier: &Verifier,
    rec: &KeyRecord,
    text: &str,
    sha: &[u8; 32],
) -> Option<KeyRecord> {
    let keyring = verifier.keyring();
    let v = keyring.current_version();
    let l = rec.legacy.as_ref()?;
    if l.upgraded && l.index_version == v && rec.secret_version == v {
        return None;
    }
    let (digest, index) = (
        keyring.legacy_digest(v, text)?,
        keyring.legacy_index(v, sha)?,
    );
    let mut next = rec.clone();
    next.digest = digest;
    next.secret_version = v;
    next.legacy = Some(LegacyInfo::new(l.prefix.clone(), index, v, true));
    Some(next)
}
