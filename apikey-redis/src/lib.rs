//! Rate limits, credits and the failure throttle of [`apikey`], shared by
//! every instance through one Redis.
//!
//! [`RedisLimits`] is a [`Limits`] bundle: put it where
//! [`MemoryLimits`](apikey::limits::MemoryLimits) was, and every gate and
//! axum layer of every instance sees the same windows, balances and
//! backoffs.
//!
//! ```no_run
//! use apikey::limits::Quota;
//! use apikey::web::{Gate, QuotaTable};
//! use apikey::{Authenticator, Keyring, MemoryStore, ServerSecret, Verifier};
//! use apikey_redis::RedisLimits;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
//! let limits = RedisLimits::builder("redis://127.0.0.1:6379/")
//!     .prefix("myapp:limits:")
//!     .build()?;
//! let gate = Gate::new(Authenticator::new(verifier, MemoryStore::new()))
//!     .with_limits(limits)
//!     .with_quotas(QuotaTable::fixed(Quota::unlimited().per_minute(100).per_hour(1_000)))
//!     .with_credits("rest");
//! # let _ = gate; Ok(()) }
//! ```
//!
//! # What is decided in Redis, and how
//!
//! * **One round trip per admission.** One Lua script (sent with
//!   `EVALSHA`, loaded again after a `NOSCRIPT`) checks and charges both
//!   GCRA windows and the key and owner credit balances, refills included,
//!   both or neither. It mirrors [`apikey::limits::backend::decide`] line by line;
//!   the testkit's oracles and `tests/oracles.rs` check that Redis and the
//!   in-memory bundle give the same verdicts for the same arrival times.
//! * **Time base.** Redis `TIME` by default ([`TimeBase::Redis`]), so
//!   instances with skewed clocks agree; [`TimeBase::Clock`] injects the
//!   caller's clock (tests, oracles).
//! * **Memory.** Rate state expires by itself (`PEXPIRE`) once fully
//!   replenished, so Redis holds state only for active keys. The shared
//!   failure throttle is **bounded**: two capped tables, one for key ids
//!   and one for addresses, each of at most
//!   [`FailureThrottleConfig::max_tracked`] members (default 65,536, the
//!   same bound as the local table), so at most four Redis keys whatever
//!   the number of failing addresses; a new member in a full table evicts
//!   one as the local table does (an ended lockout, else the least recently
//!   seen unlocked member, else the lockout ending soonest), and each table
//!   expires once no failure was counted for `max(window, lockout)`. A
//!   member takes about 150 bytes (measured on Redis 7 at 256 members), so
//!   a full table at the default bound is about 10 MB; lower `max_tracked`
//!   to shrink it.
//!   Idempotency records expire after
//!   [`RedisLimitsBuilder::idempotency_ttl`]. Credit balances are
//!   configuration and persist until removed.
//! * **Keys.** Every key starts with the configured prefix (default
//!   `apikey:`): `{prefix}r:{key id}` (windows), `{prefix}c:k:{key id}` and
//!   `{prefix}c:o:{owner length}:{owner}:{api}` (balances),
//!   `{prefix}i:{key id}:{token}` (idempotency records), `{prefix}t:k`,
//!   `{prefix}t:k:rank`, `{prefix}t:a` and `{prefix}t:a:rank` (throttle).
//!   A single Redis (or a primary with replicas) is supported; Redis
//!   Cluster is not, since one admission touches keys in different slots.
//!
//! # Failures
//!
//! Every call is bounded by [`RedisLimitsBuilder::timeout`] (default
//! 250 ms). A timeout or error is a [`StoreError`], which the gate answers
//! with 503 `STORE_UNAVAILABLE` and `Retry-After`. With the explicit opt-in
//! [`OnRedisError::AdmitRateLimitedOnly`], an admission **without** a credit
//! charge is admitted without rate-limit headers instead; an admission with
//! a credit charge always fails closed. Nothing is ever admitted because of
//! an error that was not checked.
//!
//! **A timeout with an unknown outcome** may have debited the credits
//! already: the script may have run after the client gave up. Retrying the
//! same admission then charges again. To make retries safe, give the
//! admission an idempotency token ([`Admission::idempotency`], e.g. your
//! request id): the script stores its verdict under the key id and the
//! token for [`RedisLimitsBuilder::idempotency_ttl`] (default 5 minutes) in
//! the same atomic step, bound to a fingerprint of the admission (key id,
//! both limits, cost, owner and API), and a retry of the same admission
//! with the token gets the recorded verdict, charging nothing again. The
//! record answers nothing else: the same token from another key is decided
//! on that key's own state (a token chosen by one client can neither
//! replay nor block another key's verdict), and the same token from the
//! same key with a different admission is refused with
//! [`IdempotencyError::Mismatch`] (a [`StoreError`] of kind
//! [`StoreErrorKind::InvalidRequest`]), nothing charged. An empty token, or
//! one longer than [`apikey::limits::Admission::MAX_IDEMPOTENCY_TOKEN`] bytes, is
//! refused the same way before Redis is asked.
//!
//! **A Redis restart** with persistence off loses the windows, the
//! balances and the throttle counters. Windows restart with a full burst,
//! so each active key may be admitted up to one extra burst (`limit`
//! requests per window) right after the restart; balances must be set
//! again (until then keys are unmetered, so keep persistence on
//! (`appendonly yes`) if you sell credits); backoffs restart from zero. The
//! connection manager reconnects by itself; no manual step is needed.
//!
//! # The shared failure throttle
//!
//! Checks stay local: [`Limits::check_key`] and [`Limits::begin_untagged`]
//! consult this instance's [`FailureThrottle`] (local),
//! so admitted requests make no extra round trip. Failures are counted
//! locally **and** in Redis (one round trip on the failure path only); when
//! the shared count reaches `max_failures`, the lockout is copied into the
//! local throttle, for key ids and for addresses alike. Every instance
//! also copies the lockouts reached elsewhere into its local throttle
//! once per [`RedisLimitsBuilder::lockout_sync`] period (default 1 s; one
//! small script call per period and instance, carrying only lockouts it
//! has not seen). So a key id or an address locked out by one instance is
//! refused by every other instance within one sync period, or at its first
//! failure there if that comes sooner (the reply to every failure carries
//! the shared lockout); attempts already in flight finish. The checks
//! before the lookup stay local, so within that period another instance
//! may still start attempts up to its own in-flight bound. The bound on
//! untagged attempts **in flight** is
//! per instance (N instances allow N × `max_failures` in flight); the
//! shared failure counts live in the capped tables described under
//! *Memory*. If Redis is down the throttle **fails open** to the local
//! counts: it is defence in depth, and failing closed would let a Redis
//! outage lock out every key.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use apikey::limits::backend::{Balance, FailureThrottle};
use apikey::limits::{
    Admission, CreditAccount, CreditBalances, CreditScope, CreditStatus, CreditsExhausted,
    FailureThrottleConfig, IdempotencyError, Limits, RateLimitInfo, RateWindow, Refill,
    RefillInterval, SpendReceipt, UntaggedAttempt, Verdict,
};
use apikey::{Clock, StoreError, StoreErrorKind, SystemClock, Timestamp};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// Where the scripts take "now" from.
#[derive(Clone)]
#[non_exhaustive]
pub enum TimeBase {
    /// Redis `TIME`: one clock for every instance (the default).
    Redis,
    /// The given clock (tests and oracles drive it; instances must agree).
    Clock(Arc<dyn Clock>),
}

impl fmt::Debug for TimeBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis => f.write_str("Redis"),
            Self::Clock(_) => f.write_str("Clock(..)"),
        }
    }
}

/// What an admission gets when Redis fails or times out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnRedisError {
    /// Fail closed: a [`StoreError`] (503 `STORE_UNAVAILABLE` with
    /// `Retry-After` at the gate). The default.
    #[default]
    Refuse,
    /// Admissions **without** a credit charge are admitted, without
    /// rate-limit numbers (so no `X-RateLimit-*` headers); admissions with
    /// a credit charge still fail closed. For services that prefer
    /// availability over exact rate limits during an outage.
    AdmitRateLimitedOnly,
}

/// Builds a [`RedisLimits`].
///
/// Its `Debug` output shows the URL without its user name, password and
/// query (where a socket URL may carry `pass=`):
///
/// ```
/// let b = apikey_redis::RedisLimits::builder("redis://app:s3cret@cache:6379/2");
/// let shown = format!("{b:?}");
/// assert!(shown.contains("redis://[REDACTED]@cache:6379/2"));
/// assert!(!shown.contains("s3cret") && !shown.contains("app"));
/// ```
#[must_use]
pub struct RedisLimitsBuilder {
    url: Cow<'static, str>,
    prefix: String,
    timeout: Duration,
    on_error: OnRedisError,
    time: TimeBase,
    throttle: Option<FailureThrottleConfig>,
    lockout_sync: Option<Duration>,
    idempotency_ttl: Duration,
}

impl fmt::Debug for RedisLimitsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimitsBuilder")
            .field("url", &Redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("time", &self.time)
            .field("throttle", &self.throttle)
            .field("lockout_sync", &self.lockout_sync)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .finish()
    }
}

/// A Redis URL as it may be shown: scheme, host, port and path; the user
/// information (user name, password) and any query or fragment replaced by
/// `[REDACTED]`. Anything that does not look like `scheme://...` is
/// redacted whole.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return f.write_str("\"[REDACTED]\"");
        };
        // Everything up to the last '@' is user information, whatever it
        // contains ('/', '?' and '#' included, unescaped).
        let (user, rest) = match rest.rfind('@') {
            Some(at) => ("[REDACTED]@", &rest[at + 1..]),
            None => ("", rest),
        };
        let end = rest.find(['?', '#']).unwrap_or(rest.len());
        let tail = if end < rest.len() { "?[REDACTED]" } else { "" };
        write!(f, "\"{scheme}://{user}{}{tail}\"", &rest[..end])
    }
}

impl RedisLimitsBuilder {
    /// The prefix of every key written. Defaults to `apikey:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The bound on every Redis call (connecting included). Defaults to
    /// 250 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What admissions get when Redis fails. Defaults to
    /// [`OnRedisError::Refuse`].
    pub fn on_error(mut self, on_error: OnRedisError) -> Self {
        self.on_error = on_error;
        self
    }

    /// Where "now" comes from. Defaults to [`TimeBase::Redis`].
    pub fn time_base(mut self, time: TimeBase) -> Self {
        self.time = time;
        self
    }

    /// Turns on the failure throttle. Defaults to off.
    pub fn failure_throttle(mut self, config: FailureThrottleConfig) -> Self {
        self.throttle = Some(config);
        self
    }

    /// How often this instance copies the lockouts reached on other
    /// instances into its local throttle (one small script call per
    /// period, transferring only lockouts it has not seen), so an address
    /// or key id locked out anywhere is refused here within one period even
    /// if it never failed here. `None` turns it off: lockouts are then
    /// learnt only from the replies to this instance's own failures.
    /// Defaults to every second; only runs with the failure throttle on.
    pub fn lockout_sync(mut self, every: Option<Duration>) -> Self {
        self.lockout_sync = every.filter(|d| !d.is_zero());
        self
    }

    /// How long an admission's verdict is kept under its idempotency token.
    /// Defaults to 5 minutes.
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }

    /// The bundle. Connects lazily: a Redis that is down at start-up is
    /// reached once it is up. Call it inside a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError`] for a URL the client cannot use; of kind
    /// [`StoreErrorKind::InvalidRequest`] when called outside a tokio
    /// runtime (the connection and the lockout sync run on it).
    pub fn build(self) -> Result<RedisLimits, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| StoreError::with_source(StoreErrorKind::InvalidRequest, e))?;
        let client = Client::open(self.url.as_ref())
            .map_err(|e| StoreError::with_source(StoreErrorKind::Unavailable, e))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::with_source(StoreErrorKind::Unavailable, e))?;
        let limits = RedisLimits {
            inner: Arc::new(Inner {
                conn,
                prefix: self.prefix,
                timeout: self.timeout,
                on_error: self.on_error,
                time: self.time,
                throttle: self.throttle.map(FailureThrottle::new),
                idempotency_ttl: self.idempotency_ttl,
                admit: script(include_str!("lua/admit.lua")),
                credits: script(include_str!("lua/credits.lua")),
                fail: script(include_str!("lua/throttle.lua")),
                locked: script(include_str!("lua/locked.lua")),
            }),
        };
        if let (Some(_), Some(every)) = (&limits.inner.throttle, self.lockout_sync) {
            runtime.spawn(sync_lockouts(Arc::downgrade(&limits.inner), every));
        }
        Ok(limits)
    }
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    on_error: OnRedisError,
    time: TimeBase,
    throttle: Option<FailureThrottle>,
    idempotency_ttl: Duration,
    admit: Script,
    credits: Script,
    fail: Script,
    locked: Script,
}

/// The lockout sync (see [`RedisLimitsBuilder::lockout_sync`]): ends when
/// the last clone of the bundle is dropped.
async fn sync_lockouts(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut seen = [0i64; 2];
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let limits = RedisLimits { inner };
        for (table, seen) in ['a', 'k'].into_iter().zip(seen.iter_mut()) {
            limits.pull_lockouts(table, seen).await;
        }
    }
}

/// The limits bundle on Redis (see the [crate docs](crate)). Cheap to
/// clone; clones share one connection.
#[derive(Clone)]
pub struct RedisLimits {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("on_error", &self.inner.on_error)
            .field("time", &self.inner.time)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else {
        StoreErrorKind::Unavailable
    };
    StoreError::with_source(kind, e)
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::with_source(StoreErrorKind::Corrupt, what)
}

fn micros(v: i64) -> Duration {
    Duration::from_micros(u64::try_from(v).unwrap_or(0))
}

fn window(code: i64) -> RateWindow {
    if code == 1 {
        RateWindow::Hour
    } else {
        RateWindow::Minute
    }
}

fn opt(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

impl RedisLimits {
    /// A builder for Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<Cow<'static, str>>) -> RedisLimitsBuilder {
        RedisLimitsBuilder {
            url: url.into(),
            prefix: "apikey:".to_owned(),
            timeout: Duration::from_millis(250),
            on_error: OnRedisError::Refuse,
            time: TimeBase::Redis,
            throttle: None,
            lockout_sync: Some(Duration::from_secs(1)),
            idempotency_ttl: Duration::from_secs(300),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The local part of the failure throttle, if on.
    pub fn throttle(&self) -> Option<&FailureThrottle> {
        self.inner.throttle.as_ref()
    }

    fn now_arg(&self) -> String {
        match &self.inner.time {
            TimeBase::Redis => String::new(),
            TimeBase::Clock(c) => c.now().as_unix_micros().to_string(),
        }
    }

    fn local_now(&self) -> Timestamp {
        match &self.inner.time {
            TimeBase::Redis => SystemClock.now(),
            TimeBase::Clock(c) => c.now(),
        }
    }

    fn balance_key(&self, account: CreditAccount<'_>) -> String {
        match account {
            CreditAccount::Key(id) => format!("{}c:k:{id}", self.inner.prefix),
            CreditAccount::Owner { owner, api } => {
                format!("{}c:o:{}:{owner}:{api}", self.inner.prefix, owner.len())
            }
        }
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.timeout, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(elapsed) => Err(StoreError::with_source(StoreErrorKind::Timeout, elapsed)),
        }
    }

    async fn admit_in_redis(&self, a: &Admission<'_>) -> Result<Verdict, StoreError> {
        let p = &self.inner.prefix;
        let limit = |w: RateWindow| a.quota.limit(w).map_or(-1, i64::from);
        let (charge, cost, owner) = match a.charge {
            None => ("0", 0, None),
            Some(c) => ("1", c.cost.min(CreditAccount::MAX_CREDITS + 1), c.owner),
        };
        let owner_key = owner.map_or_else(String::new, |o| {
            self.balance_key(CreditAccount::Owner {
                owner: o.owner,
                api: o.api,
            })
        });
        let token = a
            .checked_idempotency()
            .map_err(IdempotencyError::into_store_error)?;
        let idem_ttl = match token {
            Some(_) => u64::try_from(self.inner.idempotency_ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            None => 0,
        };
        let mut inv = self.inner.admit.prepare_invoke();
        inv.key(format!("{p}r:{}", a.key))
            .key(self.balance_key(CreditAccount::Key(a.key)))
            .key(owner_key)
            .key(format!("{p}i:{}:{}", a.key, token.unwrap_or("")))
            .arg(self.now_arg())
            .arg(limit(RateWindow::Minute))
            .arg(limit(RateWindow::Hour))
            .arg(charge)
            .arg(cost)
            .arg(if owner.is_some() { "1" } else { "0" })
            .arg(idem_ttl)
            .arg(if token.is_some() {
                fingerprint(a)
            } else {
                String::new()
            });
        let mut conn = self.inner.conn.clone();
        let r: Vec<i64> = self.bounded(inv.invoke_async(&mut conn)).await?;
        parse_verdict(&r, a)
    }

    async fn credit_op(
        &self,
        account: CreditAccount<'_>,
        op: &str,
        args: [u64; 4],
    ) -> Result<(Timestamp, Option<Balance>), StoreError> {
        let mut inv = self.inner.credits.prepare_invoke();
        inv.key(self.balance_key(account))
            .arg(self.now_arg())
            .arg(op);
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.inner.conn.clone();
        let r: Vec<i64> = self.bounded(inv.invoke_async(&mut conn)).await?;
        let [now, exists, rem, amount, kind, period, at] = r[..] else {
            return Err(corrupt("unexpected credit script reply"));
        };
        let now = Timestamp::from_unix_micros(now).map_err(|_| corrupt("time out of range"))?;
        if exists == 0 {
            return Ok((now, None));
        }
        let refill = u8::try_from(kind)
            .ok()
            .and_then(|k| RefillInterval::from_code(k, period))
            .map(|i| Refill::new(opt(amount).unwrap_or(0), i));
        let balance = Balance {
            remaining: opt(rem).unwrap_or(0),
            refill,
            refilled_at: Timestamp::from_unix_micros(at).unwrap_or(Timestamp::MIN),
        };
        Ok((now, Some(balance)))
    }

    /// Counts one failure of `member` (a key id or an address) in the
    /// shared table `table` (`k` or `a`), capped at `max_tracked` members.
    async fn shared_failure(&self, table: char, member: String) -> Option<(i64, i64)> {
        let t = self.inner.throttle.as_ref()?;
        let cfg = t.config();
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let p = &self.inner.prefix;
        let mut inv = self.inner.fail.prepare_invoke();
        inv.key(format!("{p}t:{table}"))
            .key(format!("{p}t:{table}:rank"))
            .arg(self.now_arg())
            .arg(cfg.max_failures)
            .arg(us(cfg.window))
            .arg(us(cfg.lockout))
            .arg(member)
            .arg(cfg.max_tracked);
        let mut conn = self.inner.conn.clone();
        // Fails open: a Redis error leaves only the local counts.
        let r: Vec<i64> = self.bounded(inv.invoke_async(&mut conn)).await.ok()?;
        match r[..] {
            [now, until, _] if until > now => Some((now, until)),
            _ => None,
        }
    }

    /// Copies into the local throttle the lockouts of `table` (`k` or `a`)
    /// that end at or after `seen` (Redis time) and are still in force;
    /// `seen` advances to the latest end seen. Fails open, like the rest of
    /// the shared throttle.
    async fn pull_lockouts(&self, table: char, seen: &mut i64) {
        let Some(t) = self.inner.throttle.as_ref() else {
            return;
        };
        let mut inv = self.inner.locked.prepare_invoke();
        inv.key(format!("{}t:{table}:rank", self.inner.prefix))
            .arg(self.now_arg())
            .arg(*seen)
            .arg(t.config().max_tracked);
        let mut conn = self.inner.conn.clone();
        let Ok(r) = self
            .bounded(inv.invoke_async::<Vec<String>>(&mut conn))
            .await
        else {
            return;
        };
        let Some(Ok(rnow)) = r.first().map(|n| n.parse::<i64>()) else {
            return;
        };
        for pair in r.get(1..).unwrap_or_default().chunks_exact(2) {
            let (member, Ok(until)) = (&pair[0], pair[1].parse::<i64>()) else {
                continue;
            };
            *seen = (*seen).max(until);
            let lock = Some((rnow, until));
            if table == 'a' {
                if let Ok(ip) = member.parse::<IpAddr>() {
                    self.adopt(lock, |t, until, now| t.lock_address_until(ip, until, now));
                }
            } else if let Ok(id) = member.parse::<u64>() {
                self.adopt(lock, |t, until, now| t.lock_key_until(id, until, now));
            }
        }
    }

    /// Copies a shared lockout (Redis time) into the local throttle.
    fn adopt(
        &self,
        lock: Option<(i64, i64)>,
        apply: impl FnOnce(&FailureThrottle, Timestamp, Timestamp),
    ) {
        if let (Some((rnow, until)), Some(t)) = (lock, self.inner.throttle.as_ref()) {
            let now = self.local_now();
            let left = u64::try_from(until.saturating_sub(rnow)).unwrap_or(0);
            let until = now.saturating_add(std::time::Duration::from_micros(left));
            apply(t, until, now);
        }
    }
}

/// Everything that defines an admission, unambiguously: the key id, both
/// limits, the cost, the owner and the API (strings length-prefixed). An
/// idempotency record answers only the admission with the same fingerprint.
fn fingerprint(a: &Admission<'_>) -> String {
    let limit = |w: RateWindow| {
        a.quota
            .limit(w)
            .map_or_else(|| "-".to_owned(), |l| l.to_string())
    };
    let charge = match a.charge {
        None => "-".to_owned(),
        Some(c) => match c.owner {
            None => format!("{};-", c.cost),
            Some(o) => format!(
                "{};{}:{}:{}:{}",
                c.cost,
                o.owner.len(),
                o.owner,
                o.api.len(),
                o.api
            ),
        },
    };
    format!(
        "v1;{};{};{};{charge}",
        a.key,
        limit(RateWindow::Minute),
        limit(RateWindow::Hour)
    )
}

fn parse_verdict(r: &[i64], a: &Admission<'_>) -> Result<Verdict, StoreError> {
    let [
        _now,
        kind,
        w,
        limit,
        remaining,
        reset,
        retry,
        key_rem,
        owner_rem,
        scope,
        short,
        refill,
    ] = r[..]
    else {
        return Err(corrupt("unexpected admission script reply"));
    };
    let info = (w >= 0).then(|| RateLimitInfo {
        window: window(w),
        limit: u32::try_from(limit).unwrap_or(0),
        remaining: u32::try_from(remaining).unwrap_or(0),
        reset_after: micros(reset),
    });
    let cost = a.charge.map_or(0, |c| c.cost);
    match kind {
        0 => Ok(Verdict::Admitted {
            rate_limit: info,
            credits: a.charge.map(|_| SpendReceipt {
                cost,
                key_remaining: opt(key_rem),
                owner_remaining: opt(owner_rem),
            }),
        }),
        1 => Ok(Verdict::RateLimited {
            info: info.ok_or(corrupt("refusal without a window"))?,
            retry_after: micros(retry),
        }),
        2 => Ok(Verdict::CreditsExhausted {
            rate_limit: info,
            exhausted: CreditsExhausted {
                scope: if scope == 1 {
                    CreditScope::Owner
                } else {
                    CreditScope::Key
                },
                remaining: opt(short).unwrap_or(0),
                cost,
                refill_in: (refill >= 0).then(|| micros(refill)),
            },
        }),
        3 => Err(IdempotencyError::Mismatch.into_store_error()),
        _ => Err(corrupt("unknown verdict")),
    }
}

impl Limits for RedisLimits {
    async fn admit(&self, admission: &Admission<'_>) -> Result<Verdict, StoreError> {
        admission
            .checked_idempotency()
            .map_err(IdempotencyError::into_store_error)?;
        if admission.quota.is_unlimited() && admission.charge.is_none() {
            return Ok(Verdict::Admitted {
                rate_limit: None,
                credits: None,
            });
        }
        match self.admit_in_redis(admission).await {
            Ok(v) => Ok(v),
            Err(e)
                if self.inner.on_error == OnRedisError::AdmitRateLimitedOnly
                    && admission.charge.is_none()
                    && matches!(
                        e.kind(),
                        StoreErrorKind::Unavailable | StoreErrorKind::Timeout
                    ) =>
            {
                Ok(Verdict::Admitted {
                    rate_limit: None,
                    credits: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn check_key(&self, key_id: u64) -> Result<(), Duration> {
        match &self.inner.throttle {
            Some(t) => t.check_key(key_id, self.local_now()),
            None => Ok(()),
        }
    }

    fn begin_untagged(&self, client: Option<IpAddr>) -> Result<UntaggedAttempt<'_>, Duration> {
        match &self.inner.throttle {
            Some(t) => t.begin_untagged(client, self.local_now()),
            None => Ok(UntaggedAttempt::unbounded()),
        }
    }

    async fn key_failed(&self, key_id: u64) {
        let Some(t) = &self.inner.throttle else {
            return;
        };
        let _ = t.record_key_failure(key_id, self.local_now());
        let lock = self.shared_failure('k', key_id.to_string()).await;
        self.adopt(lock, |t, until, now| t.lock_key_until(key_id, until, now));
    }

    async fn untagged_failed(&self, attempt: UntaggedAttempt<'_>) {
        let ip = attempt.address();
        let _ = attempt.failed(self.local_now());
        if let Some(ip) = ip {
            // The shared count. A shared lockout (reached here or on any
            // other instance) is copied into the local throttle, so this
            // instance refuses the address's next attempt.
            let lock = self.shared_failure('a', ip.to_string()).await;
            self.adopt(lock, |t, until, now| t.lock_address_until(ip, until, now));
        }
    }
}

impl CreditBalances for RedisLimits {
    async fn set_credits(
        &self,
        account: CreditAccount<'_>,
        remaining: u64,
        refill: Option<Refill>,
    ) -> Result<(), StoreError> {
        let (amount, kind, period) = match refill {
            None => (0, 0, 0),
            Some(r) => {
                let (k, p) = r.interval().code();
                (r.amount(), u64::from(k), u64::try_from(p).unwrap_or(0))
            }
        };
        self.credit_op(
            account,
            "set",
            [
                remaining.min(CreditAccount::MAX_CREDITS),
                amount,
                kind,
                period,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn add_credits(
        &self,
        account: CreditAccount<'_>,
        amount: u64,
    ) -> Result<Option<u64>, StoreError> {
        let (_, b) = self
            .credit_op(
                account,
                "add",
                [amount.min(CreditAccount::MAX_CREDITS), 0, 0, 0],
            )
            .await?;
        Ok(b.map(|b| b.remaining))
    }

    async fn credits(
        &self,
        account: CreditAccount<'_>,
    ) -> Result<Option<CreditStatus>, StoreError> {
        let (now, b) = self.credit_op(account, "get", [0; 4]).await?;
        Ok(b.map(|b| CreditStatus::of(&b, now)))
    }

    async fn remove_credits(&self, account: CreditAccount<'_>) -> Result<bool, StoreError> {
        let mut conn = self.inner.conn.clone();
        let key = self.balance_key(account);
        let n: i64 = self
            .bounded(redis::cmd("DEL").arg(key).query_async(&mut conn))
            .await?;
        Ok(n > 0)
    }
}
