use std::ops::Range;
use std::sync::Arc;

use crate::Timestamp;

use crate::key::KeyId;
use crate::key::Prefix;

/// What changed, as far as cached verification views are concerned.
///
/// A bulk write is announced as one predicate (an owner, a prefix and
/// creation window), never as one message per key, so a revocation of
/// 100,000 keys fits a PostgreSQL `NOTIFY` payload (8,000 bytes); a feed
/// that cannot fit a change announces [`Invalidation::All`].
///
/// ```
/// use apikey::{Invalidation, KeyId};
/// let one = Invalidation::Key(KeyId::from_u64(7));
/// assert_ne!(one, Invalidation::All);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// One key changed (inserted, updated, deleted).
    Key(KeyId),
    /// These keys changed.
    Keys(Vec<KeyId>),
    /// Keys of this owner changed (`KeyStoreWrite::revoke_where` with `KeyFilter::Owner`).
    Owner(String),
    /// Keys with this prefix created in this window (start inclusive, end
    /// exclusive) changed (`KeyStoreWrite::revoke_where` with `KeyFilter::Created`).
    Prefix {
        /// The keys' prefix.
        prefix: Prefix,
        /// Their creation window.
        created: Range<Timestamp>,
    },
    /// Anything may have changed: drop everything (a feed that lost
    /// messages, or a change too large to describe).
    All,
}

/// Something that drops cached state when told what changed: a
/// [`CachedStore`](crate::CachedStore), or a fan-out to several.
///
/// `invalidate` must not block for long (it runs on the feed's task) and
/// must leave nothing that the change made stale: once it returns, no
/// read that starts may answer from before the change.
///
/// ```
/// use apikey::{CachedStore, Invalidate, Invalidation, MemoryStore};
/// let cache = CachedStore::new(MemoryStore::new());
/// cache.invalidate(&Invalidation::All);
/// assert!(cache.is_empty());
/// ```
pub trait Invalidate: Send + Sync {
    /// Drops whatever `change` may have made stale.
    fn invalidate(&self, change: &Invalidation);
}

impl<T: Invalidate + ?Sized> Invalidate for Arc<T> {
    fn invalidate(&self, change: &Invalidation) {
        (**self).invalidate(change)
    }
}

/// Change feeds: how a store tells caches in other processes what changed.
///
/// A [`CachedStore`](crate::CachedStore) invalidates its own entries when a
/// write goes through it. Writes made elsewhere (another instance, an
/// operator's SQL) reach it through a [`ChangeFeed`]: the store announces
/// each committed change as an [`Invalidation`], and the feed hands it to
/// every subscribed [`Invalidate`] (a `CachedStore` is one).
///
/// A source of [`Invalidation`]s for the changes a store commits, whoever
/// made them.
///
/// # Contract
/// - Every change that commits after [`subscribe`](Self::subscribe)
///   returned is delivered to the subscriber, or, when the feed may have
///   lost messages (a dropped connection), the subscriber gets
///   [`Invalidation::All`] **after** the feed is listening again (a flush
///   before would let a fetch re-cache a change announced in the gap).
/// - A change is announced only once committed, and every committed change
///   is announced: a store sends the announcement in the same transaction
///   as the write (PostgreSQL `NOTIFY` is delivered at commit, and only
///   then; `apikey-sqlx`'s `PostgresStore` does this).
/// - A transport that cannot join the write's transaction (Redis pub/sub,
///   a message queue) needs an **outbox**: the write inserts the
///   announcement into an outbox table in its transaction, and a relay
///   publishes and deletes outbox rows after commit. Publishing after the
///   write without an outbox loses the announcement whenever the process
///   stops between the two.
/// - Usage flushes ([`UsageStore::record_usage`](crate::UsageStore::record_usage))
///   are not announced: verification does not read usage fields.
///
/// When the feed fails entirely, each cached entry still expires after the
/// cache's maximum age, which is then the worst-case revocation delay.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use apikey::{ChangeFeed, Invalidate, Invalidation, CachedStore, MemoryStore};
///
/// /// An in-process feed: whoever holds it announces changes by hand.
/// #[derive(Default)]
/// struct LocalFeed(Mutex<Vec<Arc<dyn Invalidate>>>);
/// impl ChangeFeed for LocalFeed {
///     fn subscribe(&self, subscriber: Arc<dyn Invalidate>) {
///         self.0.lock().unwrap_or_else(|p| p.into_inner()).push(subscriber);
///     }
/// }
/// impl LocalFeed {
///     fn announce(&self, change: &Invalidation) {
///         for s in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
///             s.invalidate(change);
///         }
///     }
/// }
///
/// let feed = LocalFeed::default();
/// let cache = Arc::new(CachedStore::new(MemoryStore::new()));
/// feed.subscribe(cache.clone());
/// feed.announce(&Invalidation::All);
/// ```
pub trait ChangeFeed: Send + Sync {
    /// Delivers every later change to `subscriber` (see the contract).
    fn subscribe(&self, subscriber: Arc<dyn Invalidate>);
}
