//! [`PgChangeFeed`]: PostgreSQL `LISTEN`/`NOTIFY` as an
//! [`apikey::ChangeFeed`] for [`apikey::CachedStore`]s.
//!
//! [`PostgresStore`] announces every write (every write except the usage
//! flush) inside the write's transaction, so PostgreSQL delivers it at
//! commit and only then; the payloads are described in `notify.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apikey::{ChangeFeed, Invalidate, Invalidation, StoreError};
use sqlx::postgres::{PgListener, PgPool};

use crate::error::store_error;
use crate::notify::{HEARTBEAT, decode_sent};
use crate::postgres::PostgresStore;

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
    lag: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    beat: tokio::task::JoinHandle<()>,
    channel: Arc<str>,
}

impl std::fmt::Debug for PgChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeFeed")
            .field("channel", &self.channel)
            .field("reconnects", &self.reconnects())
            .field("last_lag", &self.last_lag())
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
    /// `StoreErrorKind::Unavailable` (the database error as its source)
    /// when the first listening connection cannot be made, or the tables
    /// are not migrated.
    pub async fn listen(store: &PostgresStore) -> Result<Self, StoreError> {
        Self::listen_with(store, FeedOptions::default()).await
    }

    /// As [`listen`](Self::listen) with `options`.
    ///
    /// # Errors
    /// As [`listen`](Self::listen).
    pub async fn listen_with(
        store: &PostgresStore,
        options: FeedOptions,
    ) -> Result<Self, StoreError> {
        let pool = store.pool().clone();
        let channel: Arc<str> = store.channel().await?.into();
        let first = listener(&pool, &channel).await.map_err(store_error)?;
        let subscribers: Subscribers = Arc::default();
        let reconnects = Arc::new(AtomicU64::new(0));
        let lag = Arc::new(AtomicU64::new(NO_LAG));
        let task = tokio::spawn(run(
            pool.clone(),
            Arc::clone(&channel),
            first,
            Arc::clone(&subscribers),
            Counters {
                reconnects: Arc::clone(&reconnects),
                lag: Arc::clone(&lag),
            },
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
            lag,
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

    /// The delay of the last change notification received: from the sending instance's clock when it
    /// announced the change (inside the writing transaction, so the commit is included) to this
    /// instance's clock when the notification arrived; `None` before the first one. Clock skew between
    /// the two hosts adds to it (a negative delay reads as zero). With the `metrics` feature every
    /// sample is also recorded as `apikey.feed.lag`.
    pub fn last_lag(&self) -> Option<std::time::Duration> {
        match self.lag.load(Ordering::Relaxed) {
            NO_LAG => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
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

/// `PgChangeFeed::lag` before the first sample.
const NO_LAG: u64 = u64::MAX;

/// What the listening loop reports to its feed.
struct Counters {
    reconnects: Arc<AtomicU64>,
    lag: Arc<AtomicU64>,
}

impl Counters {
    /// Records the lag of a notification sent at `sent` (Unix microseconds).
    fn sample(&self, sent: i64) {
        let now = apikey::Clock::now(&apikey::SystemClock).as_unix_micros();
        let us = u64::try_from(now.saturating_sub(sent))
            .unwrap_or(0)
            .min(NO_LAG - 1);
        self.lag.store(us, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        #[allow(clippy::cast_precision_loss)]
        metrics::histogram!("apikey.feed.lag").record(us as f64 / 1e6);
    }
}

/// The listening loop; runs until the feed is dropped (aborted).
async fn run(
    pool: PgPool,
    channel: Arc<str>,
    first: PgListener,
    subscribers: Subscribers,
    counters: Counters,
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
                    counters.reconnects.fetch_add(1, Ordering::SeqCst);
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
            let (change, sent) = decode_sent(n.payload());
            if let Some(change) = change {
                broadcast(&subscribers, &change);
            }
            if let Some(sent) = sent {
                counters.sample(sent);
            }
        }
        drop(l);
    }
}
