//! [`PgChangeFeed`]: PostgreSQL `LISTEN`/`NOTIFY` as an
//! [`apikey::ChangeFeed`] for [`apikey::CachedStore`]s.
//!
//! [`PostgresStore`] sends one `pg_notify` per write (every write except
//! the usage flush) inside the write's transaction, so PostgreSQL delivers
//! it at commit and only then. Payloads (always under NOTIFY's 8,000-byte
//! limit):
//!
//! | payload | meaning |
//! |---|---|
//! | `k:1,2,3` | these key ids (decimal) |
//! | `o:<owner>` | every key of the owner (`revoke_owner`) |
//! | `p:<start µs>:<end µs>:<prefix>` | keys with the prefix created in the window (`revoke_matching`) |
//! | `*` | anything (a change too large to describe) |
//! | `h` | a heartbeat of some listener (liveness only) |

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apikey::{ChangeFeed, Invalidate, Invalidation, KeyId, Prefix};
use sqlx::postgres::{PgListener, PgPool};
use time::OffsetDateTime;

use crate::postgres::{Change, PostgresStore};

/// Payloads stay below this many bytes (NOTIFY refuses 8,000 and more).
pub(crate) const MAX_PAYLOAD: usize = 7_900;
const HEARTBEAT: &str = "h";

fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

fn from_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()
}

/// The NOTIFY payload of `change`.
pub(crate) fn encode(change: &Change<'_>) -> String {
    let text = match change {
        Change::Keys(ids) => {
            let mut s = String::from("k:");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&id.as_u64().to_string());
                if s.len() > MAX_PAYLOAD {
                    return "*".into();
                }
            }
            s
        }
        Change::Owner(owner) => format!("o:{owner}"),
        Change::Matching(prefix, created) => {
            format!(
                "p:{}:{}:{prefix}",
                micros(created.start),
                micros(created.end)
            )
        }
    };
    if text.len() > MAX_PAYLOAD {
        "*".into()
    } else {
        text
    }
}

/// The invalidation a payload announces; `None` for heartbeats. Anything
/// unreadable is [`Invalidation::All`] (never ignored).
pub(crate) fn decode(payload: &str) -> Option<Invalidation> {
    if payload == HEARTBEAT {
        return None;
    }
    let parsed = if let Some(ids) = payload.strip_prefix("k:") {
        ids.split(',')
            .map(|i| i.parse::<u64>().ok().map(KeyId::from_u64))
            .collect::<Option<Vec<_>>>()
            .map(Invalidation::Keys)
    } else if let Some(owner) = payload.strip_prefix("o:") {
        Some(Invalidation::Owner(owner.to_owned()))
    } else if let Some(rest) = payload.strip_prefix("p:") {
        let mut parts = rest.splitn(3, ':');
        let start = parts
            .next()
            .and_then(|s| s.parse().ok())
            .and_then(from_micros);
        let end = parts
            .next()
            .and_then(|s| s.parse().ok())
            .and_then(from_micros);
        let prefix = parts.next().and_then(|p| Prefix::new(p).ok());
        match (start, end, prefix) {
            (Some(start), Some(end), Some(prefix)) => Some(Invalidation::Prefix {
                prefix,
                created: Range { start, end },
            }),
            _ => None,
        }
    } else {
        None
    };
    Some(parsed.unwrap_or(Invalidation::All))
}

/// Options of a [`PgChangeFeed`].
#[derive(Clone, Copy, Debug)]
pub struct FeedOptions {
    /// How often the feed sends itself a heartbeat (default 250 ms).
    pub heartbeat: Duration,
    /// Silence (no heartbeat, no change) after which the listening
    /// connection is presumed dead and replaced (default 1 s).
    pub silence: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(250),
            silence: Duration::from_secs(1),
        }
    }
}

type Subscribers = Arc<Mutex<Vec<Arc<dyn Invalidate>>>>;

fn broadcast(subscribers: &Subscribers, change: &Invalidation) {
    let subs = subscribers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for s in subs {
        s.invalidate(change);
    }
}

/// A [`ChangeFeed`] over PostgreSQL `LISTEN`: every change a
/// [`PostgresStore`] on the same tables commits, from any process, reaches
/// every subscribed cache.
///
/// # Lost connections
/// `PgListener` reconnects by itself and silently loses what was sent in
/// the gap, so this feed does not rely on it: when the listening connection
/// fails, reports a lost connection, or stays silent for
/// [`FeedOptions::silence`] although the feed sends itself a heartbeat
/// every [`FeedOptions::heartbeat`], the feed drops the listener, connects
/// a new one, and **once it listens again** sends [`Invalidation::All`] to
/// every subscriber. Until then each cached entry still expires at the
/// cache's maximum age, the worst-case revocation delay.
///
/// The background task runs on the current tokio runtime and stops when the
/// feed is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use apikey::{CachedStore, ChangeFeed};
/// use apikey_sqlx::{PgChangeFeed, PostgresStore};
/// let store = PostgresStore::connect("postgres://app@localhost/app").await?;
/// let feed = PgChangeFeed::listen(&store).await?;
/// let cache = Arc::new(CachedStore::new(store));
/// feed.subscribe(cache.clone());
/// # Ok(()) }
/// ```
pub struct PgChangeFeed {
    subscribers: Subscribers,
    reconnects: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    beat: tokio::task::JoinHandle<()>,
    channel: Arc<str>,
}

impl std::fmt::Debug for PgChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeFeed")
            .field("channel", &self.channel)
            .field("reconnects", &self.reconnects())
            .finish_non_exhaustive()
    }
}

async fn listener(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen(channel).await?;
    Ok(l)
}

impl PgChangeFeed {
    /// Listens for `store`'s changes with the default [`FeedOptions`];
    /// returns once listening.
    ///
    /// # Errors
    /// When the first listening connection cannot be made.
    pub async fn listen(store: &PostgresStore) -> Result<Self, sqlx::Error> {
        Self::listen_with(store, FeedOptions::default()).await
    }

    /// As [`listen`](Self::listen) with `options`.
    ///
    /// # Errors
    /// As [`listen`](Self::listen).
    pub async fn listen_with(
        store: &PostgresStore,
        options: FeedOptions,
    ) -> Result<Self, sqlx::Error> {
        let pool = store.pool().clone();
        let channel: Arc<str> = store.resolved_channel().await?.into();
        let first = listener(&pool, &channel).await?;
        let subscribers: Subscribers = Arc::default();
        let reconnects = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            pool.clone(),
            Arc::clone(&channel),
            first,
            Arc::clone(&subscribers),
            Arc::clone(&reconnects),
            options,
        ));
        let beat = {
            let (pool, channel) = (pool, Arc::clone(&channel));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(options.heartbeat);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // A failed heartbeat is a silence the listener notices.
                    let _ = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(&*channel)
                        .bind(HEARTBEAT)
                        .execute(&pool)
                        .await;
                }
            })
        };
        Ok(Self {
            subscribers,
            reconnects,
            task,
            beat,
            channel,
        })
    }

    /// How many times the listening connection was replaced (each followed
    /// by a full flush of every subscriber).
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::SeqCst)
    }

    /// The channel listened to.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl ChangeFeed for PgChangeFeed {
    fn subscribe(&self, subscriber: Arc<dyn Invalidate>) {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(subscriber);
    }
}

impl Drop for PgChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
        self.beat.abort();
    }
}

/// The listening loop; runs until the feed is dropped (aborted).
async fn run(
    pool: PgPool,
    channel: Arc<str>,
    first: PgListener,
    subscribers: Subscribers,
    reconnects: Arc<AtomicU64>,
    options: FeedOptions,
) {
    let mut current = Some(first);
    loop {
        let mut l = match current.take() {
            Some(l) => l,
            None => match listener(&pool, &channel).await {
                Ok(l) => {
                    // Listening again: what was sent in the gap is lost, so
                    // drop everything now (not before: a fetch during the
                    // gap could re-cache a change announced in it).
                    broadcast(&subscribers, &Invalidation::All);
                    reconnects.fetch_add(1, Ordering::SeqCst);
                    #[cfg(feature = "metrics")]
                    metrics::counter!("apikey.feed.reconnects").increment(1);
                    l
                }
                Err(_) => {
                    tokio::time::sleep(options.heartbeat).await;
                    continue;
                }
            },
        };
        // Lost (PgListener would reconnect silently), failed, or silent
        // despite our heartbeats: the loop ends and the listener is replaced.
        while let Ok(Ok(Some(n))) = tokio::time::timeout(options.silence, l.try_recv()).await {
            if let Some(change) = decode(n.payload()) {
                broadcast(&subscribers, &change);
            }
        }
        drop(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_stay_under_the_limit() {
        let ids: Vec<KeyId> = (0..3).map(|i| KeyId::from_u64(u64::MAX - i)).collect();
        let p = encode(&Change::Keys(&ids));
        assert_eq!(decode(&p), Some(Invalidation::Keys(ids)));
        assert_eq!(
            decode(&encode(&Change::Owner("org:1"))),
            Some(Invalidation::Owner("org:1".into()))
        );
        let w = OffsetDateTime::UNIX_EPOCH..OffsetDateTime::UNIX_EPOCH + time::Duration::days(9);
        assert_eq!(
            decode(&encode(&Change::Matching("sk_live_", w.clone()))),
            Some(Invalidation::Prefix {
                prefix: Prefix::new("sk_live_").unwrap_or_else(|e| panic!("{e}")),
                created: w
            })
        );
        // 100,000 ids do not fit: flush everything.
        let many: Vec<KeyId> = (0..100_000).map(KeyId::from_u64).collect();
        assert_eq!(encode(&Change::Keys(&many)), "*");
        assert_eq!(decode("*"), Some(Invalidation::All));
        let long = "x".repeat(10_000);
        assert!(encode(&Change::Owner(&long)).len() < MAX_PAYLOAD);
        assert_eq!(decode("h"), None);
        assert_eq!(decode("garbage"), Some(Invalidation::All));
    }
}
