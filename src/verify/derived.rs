use std::sync::Arc;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::key::Environment;
use crate::key::KeyId;
use crate::record::IpNet;
use crate::record::ScopeSet;
use crate::record::{HAS_PARENT, KeyRecord, KeyStatus, KeyView};
use crate::store::KeyStore;

/// Derived keys: a child key that can only narrow its parent, and never
/// outlives it.
///
/// [`KeyManager::derive`](crate::KeyManager::derive) makes a child of an
/// active key: same owner, prefix and environment; scopes, expiry and IP
/// allowlist each a subset of the parent's. The child's record names its
/// parent in the reserved metadata entry [`KeyRecord::PARENT`](crate::KeyRecord::PARENT) (the manager never lets
/// an update change or remove it, and refuses it on create and import).
///
/// # How a child dies with its parent
///
/// The [`Authenticator`](crate::Authenticator) checks every ancestor of a
/// child at every verification, through the same store (and so the same
/// [`CachedStore`](crate::CachedStore) and its revocation bound): each
/// ancestor must exist, be active and inside its validity window, and the
/// child must still be a subset of it (a parent narrowed after the
/// derivation narrows its children too). A parent revoked, disabled,
/// expired, deleted or narrowed refuses its children from the moment
/// verification sees it; [`KeyManager::revoke`](crate::KeyManager::revoke)
/// also revokes the children for good (a disabled parent's children work
/// again when it is enabled).
///
/// The cost: keys that are not children pay one flag test. A child pays
/// one more store fetch per ancestor (with a cache: a cache hit each).
///
/// The pure [`Verifier`](crate::Verifier) has no store to ask: it refuses
/// children (`POLICY_VIOLATION`) rather than accept one whose parent it
/// cannot see.
///
/// The deepest chain of derived keys the authenticator follows; deeper
/// chains are refused. [`KeyManager::with_derivation_limits`](crate::KeyManager::with_derivation_limits)
/// cannot set a depth above it.
pub(crate) const MAX_DERIVATION_DEPTH: u8 = 8;

/// What narrowing compares, of a record or of a view.
pub(crate) struct Bounds<'a> {
    pub(crate) scopes: &'a ScopeSet,
    /// Unix nanoseconds; `i64::MAX` when none.
    pub(crate) expires_at: i64,
    pub(crate) ip_allowlist: &'a [IpNet],
    pub(crate) environment: Environment,
}

impl<'a> Bounds<'a> {
    pub(crate) fn of_record(r: &'a KeyRecord) -> Self {
        Self {
            scopes: &r.scopes,
            expires_at: r
                .expires_at
                .map_or(i64::MAX, crate::Timestamp::as_unix_micros),
            ip_allowlist: &r.ip_allowlist,
            environment: r.environment,
        }
    }

    fn of_view(v: &'a KeyView) -> Self {
        Self {
            scopes: &v.scopes,
            expires_at: v.expires_at,
            ip_allowlist: v.ip_allowlist(),
            environment: v.environment,
        }
    }

    /// Whether `self` (a child) is within `parent`; the first rule broken.
    pub(crate) fn within(&self, parent: &Bounds<'_>) -> std::result::Result<(), &'static str> {
        if self.environment != parent.environment {
            return Err("a derived key keeps its parent's environment");
        }
        if !self.scopes.iter().all(|s| parent.scopes.grants(s)) {
            return Err("a derived key's scopes must be granted by its parent's");
        }
        if self.expires_at > parent.expires_at {
            return Err("a derived key cannot expire after its parent");
        }
        if !parent.ip_allowlist.is_empty()
            && (self.ip_allowlist.is_empty()
                || !self
                    .ip_allowlist
                    .iter()
                    .all(|c| parent.ip_allowlist.iter().any(|p| net_within(c, p))))
        {
            return Err("a derived key's IP allowlist must be within its parent's");
        }
        Ok(())
    }
}

/// Whether every address of `inner` is in `outer`.
fn net_within(inner: &IpNet, outer: &IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len()
        && outer.contains(inner.addr())
        && inner.addr().is_ipv4() == outer.addr().is_ipv4()
}

/// The parent named by a record's metadata.
pub(crate) fn parent_of_record(r: &KeyRecord) -> Option<std::result::Result<KeyId, ()>> {
    r.metadata
        .get(KeyRecord::PARENT)
        .map(|p| p.parse().map_err(|_| ()))
}

/// The parent named by a view (one flag test when there is none).
#[inline]
pub(crate) fn parent_of_view(v: &KeyView) -> Option<std::result::Result<KeyId, ()>> {
    if v.flags & HAS_PARENT == 0 {
        return None;
    }
    Some(
        v.metadata()
            .get(KeyRecord::PARENT)
            .and_then(|p| p.parse().ok())
            .ok_or(()),
    )
}

fn broken(rule: &'static str) -> Error {
    Error::PolicyViolation { rule }
}

/// Checks every ancestor of `child` (see [`MAX_DERIVATION_DEPTH`]), reading
/// the clock at most once.
pub(crate) async fn check_ancestors<S: KeyStore + ?Sized, C: Clock + ?Sized>(
    store: &S,
    clock: &C,
    child: &Arc<KeyView>,
) -> Result<()> {
    let mut now = None;
    let mut current = Arc::clone(child);
    for _ in 0..MAX_DERIVATION_DEPTH {
        let Some(parent_id) = parent_of_view(&current) else {
            return Ok(());
        };
        let parent_id =
            parent_id.map_err(|()| broken("a derived key's parent id is unreadable"))?;
        let parent = store
            .fetch(parent_id)
            .await
            .map_err(Error::from_lookup)?
            // A deleted parent: its children are as good as revoked.
            .ok_or(Error::RevokedApiKey)?;
        match parent.status {
            KeyStatus::Active => {}
            KeyStatus::Disabled => return Err(Error::DisabledApiKey),
            KeyStatus::Revoked => return Err(Error::RevokedApiKey),
        }
        if parent.has_validity_window() {
            let t = match now {
                Some(t) => t,
                None => {
                    let t = clock.now().as_unix_micros();
                    now = Some(t);
                    t
                }
            };
            if t < parent.not_before_micros() || t >= parent.expires_at {
                return Err(Error::ExpiredApiKey {
                    expired_at: parent.expires_at().unwrap_or(crate::Timestamp::MIN),
                });
            }
        }
        Bounds::of_view(&current)
            .within(&Bounds::of_view(&parent))
            .map_err(broken)?;
        current = parent;
    }
    Err(broken("the chain of derived keys is too deep"))
}
