//! Oracles for limits bundles: any [`Limits`] implementation (the in-memory
//! one, Redis, yours) driven by a [`ManualClock`] it reads.
//!
//! Each oracle returns `Err(description)` on the first violation, so it can
//! run inside a property test (`prop_assert!(oracle(...).is_ok())`) or a
//! plain test.
//!
//! * [`run_trace`] replays [`Arrival`]s (time steps and admissions) and
//!   records every verdict;
//! * [`check_admission_bound`]: in any interval of length `t`, admissions
//!   per key and window never exceed `limit + floor(t · limit / period)`;
//! * [`check_against_model`]: every verdict (admitted or not, which limit
//!   refused, exact `retry_after`, `remaining`, `reset_after`, credits left)
//!   equals an independent model: ITU-T I.371's continuous-state leaky
//!   bucket for GCRA and plain integers for credits;
//! * [`check_refill`]: fixed and calendar refills happen exactly when due;
//! * [`check_both_or_neither`]: key and owner balances are debited together
//!   or not at all, and sum up exactly under concurrency;
//! * [`same_decisions`]: two bundles give identical verdicts for the same
//!   arrival times;
//! * [`check_idempotency_contract`]: idempotency tokens are checked alike
//!   by every bundle, and a recorded verdict answers only its own admission.

use std::collections::HashMap;
use std::time::Duration;

use apikey::limits::{
    Admission, CreditAccount, CreditBalances, CreditCharge, CreditScope, IdempotencyError, Limits,
    OwnerApi, Quota, RateLimitInfo, RateWindow, Refill, RefillInterval, Refuser, Verdict,
};
use apikey::{Clock, ManualClock, StoreError, StoreErrorKind};

/// The owner and API every oracle's owner balance uses.
pub const OWNER: OwnerApi<'static> = OwnerApi {
    owner: "oracle-owner",
    api: "oracle-api",
};

/// One step of a trace: wait `after`, then admit one request of `key`,
/// costing `cost` credits if `Some` (from the key and, when `owner`, from
/// [`OWNER`]'s balance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Time since the previous arrival (whole microseconds are used).
    pub after: Duration,
    /// The key id.
    pub key: u64,
    /// Credits to charge, if any.
    pub cost: Option<u64>,
    /// Whether the owner balance is charged too.
    pub owner: bool,
}

/// A recorded verdict: when (µs since the trace started) and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    /// Microseconds since the start of the trace.
    pub at: i64,
    /// The arrival.
    pub arrival: Arrival,
    /// The verdict, or `None` when the bundle failed.
    pub verdict: Option<Verdict>,
}

fn advance(clock: &ManualClock, d: Duration) {
    clock.advance(d);
}

/// Replays `arrivals` against `limits` with `quota`, moving `clock`.
pub async fn run_trace<L: Limits>(
    limits: &L,
    clock: &ManualClock,
    quota: Quota,
    arrivals: &[Arrival],
) -> Vec<Decided> {
    let mut out = Vec::with_capacity(arrivals.len());
    let start = clock.now().as_unix_micros();
    for a in arrivals {
        advance(clock, a.after);
        let mut adm = Admission::new(a.key, quota);
        if let Some(cost) = a.cost {
            adm = adm.credits(CreditCharge::new(cost).owner(a.owner.then_some(OWNER)));
        }
        let verdict = limits.admit(&adm).await.ok();
        out.push(Decided {
            at: clock.now().as_unix_micros() - start,
            arrival: *a,
            verdict,
        });
    }
    out
}

/// The admission bound, for every key and every enforced window.
pub fn check_admission_bound(trace: &[Decided], quota: Quota) -> Result<(), String> {
    let mut by_key: HashMap<u64, Vec<i64>> = HashMap::new();
    for d in trace {
        if d.verdict.is_some_and(|v| v.is_admitted()) {
            by_key.entry(d.arrival.key).or_default().push(d.at);
        }
    }
    for window in RateWindow::ALL {
        let Some(limit) = quota.limit(window) else {
            continue;
        };
        let (l, p) = (i128::from(limit), i128::from(window.period_micros()));
        for (key, times) in &by_key {
            if limit == 0 && !times.is_empty() {
                return Err(format!("key {key}: admitted under a zero {window:?} limit"));
            }
            for i in 0..times.len() {
                for j in i..times.len() {
                    let t = i128::from(times[j] - times[i]);
                    let count = (j - i + 1) as i128;
                    if count > l + t * l / p {
                        return Err(format!(
                            "key {key}: {count} admissions in {t} µs, {window:?} limit {limit}"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// GCRA as a continuous-state leaky bucket (level and last conformance
/// time), a formulation independent of the TAT one.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    limit: u32,
    emission: i64,
    tolerance: i64,
    level: i64,
    last: i64,
}

impl Bucket {
    fn new(window: RateWindow, limit: u32) -> Self {
        let l = i64::from(limit.max(1));
        let t = (window.period_micros() + l - 1) / l;
        Self {
            limit,
            emission: t,
            tolerance: t * (l - 1),
            level: 0,
            last: i64::MIN / 4,
        }
    }
    fn x(&self, now: i64) -> i64 {
        (self.level - (now - self.last)).max(0)
    }
    fn remaining(&self, ahead: i64) -> u32 {
        if ahead > self.tolerance {
            0
        } else {
            u32::try_from((self.tolerance - ahead) / self.emission + 1)
                .unwrap_or(u32::MAX)
                .min(self.limit)
        }
    }
}

fn info(window: RateWindow, b: &Bucket, ahead: i64) -> RateLimitInfo {
    RateLimitInfo {
        window,
        limit: b.limit,
        remaining: b.remaining(ahead),
        reset_after: Duration::from_micros(u64::try_from(ahead).unwrap_or(0)),
    }
}

fn pick(best: Option<RateLimitInfo>, c: RateLimitInfo) -> Option<RateLimitInfo> {
    match best {
        Some(b)
            if (b.remaining, std::cmp::Reverse(b.reset_after))
                <= (c.remaining, std::cmp::Reverse(c.reset_after)) =>
        {
            Some(b)
        }
        _ => Some(c),
    }
}

/// Every verdict of `trace` against the model, given the starting key
/// balances (`key id → credits`, absent = unmetered) and owner balance.
/// Balances must have no refill (see [`check_refill`] for refills), and
/// the trace must start on fresh keys.
pub fn check_against_model(
    trace: &[Decided],
    quota: Quota,
    key_credits: &HashMap<u64, u64>,
    owner_credits: Option<u64>,
) -> Result<(), String> {
    let mut buckets: HashMap<u64, Vec<(RateWindow, Bucket)>> = HashMap::new();
    let mut keys = key_credits.clone();
    let mut owner = owner_credits;
    for (n, d) in trace.iter().enumerate() {
        let now = d.at;
        let got = d
            .verdict
            .ok_or_else(|| format!("step {n}: the bundle failed"))?;
        // A zero limit refuses first, without state.
        if let Some(w) = RateWindow::ALL
            .into_iter()
            .find(|w| quota.limit(*w) == Some(0))
        {
            let want = Verdict::RateLimited {
                info: RateLimitInfo {
                    window: w,
                    limit: 0,
                    remaining: 0,
                    reset_after: w.period(),
                },
                retry_after: w.period(),
            };
            if got != want {
                return Err(format!("step {n}: {got:?}, model {want:?}"));
            }
            continue;
        }
        let bs = buckets.entry(d.arrival.key).or_insert_with(|| {
            RateWindow::ALL
                .into_iter()
                .filter_map(|w| quota.limit(w).map(|l| (w, Bucket::new(w, l))))
                .collect()
        });
        let mut refuse: Option<(i64, RateLimitInfo)> = None;
        let (mut before, mut after) = (None, None);
        for (w, b) in bs.iter() {
            let x = b.x(now);
            if x > b.tolerance {
                let wait = x - b.tolerance;
                if refuse.is_none_or(|(w0, _)| wait > w0) {
                    let mut i = info(*w, b, x);
                    i.remaining = 0;
                    refuse = Some((wait, i));
                }
            } else {
                before = pick(before, info(*w, b, x));
                after = pick(after, info(*w, b, x + b.emission));
            }
        }
        let want = if let Some((wait, i)) = refuse {
            Verdict::RateLimited {
                info: i,
                retry_after: Duration::from_micros(u64::try_from(wait).unwrap_or(0)),
            }
        } else {
            let mut short = None;
            if let Some(cost) = d.arrival.cost {
                let need = cost.max(1);
                let k = keys.get(&d.arrival.key).copied();
                let o = if d.arrival.owner { owner } else { None };
                if let Some(k) = k.filter(|&k| k < need) {
                    short = Some((CreditScope::Key, k, cost));
                } else if let Some(o) = o.filter(|&o| o < need) {
                    short = Some((CreditScope::Owner, o, cost));
                }
            }
            match short {
                Some((scope, remaining, cost)) => Verdict::CreditsExhausted {
                    rate_limit: before,
                    exhausted: apikey::limits::CreditsExhausted {
                        scope,
                        remaining,
                        cost,
                        refill_in: None,
                    },
                },
                None => {
                    for (_, b) in bs.iter_mut() {
                        b.level = b.x(now) + b.emission;
                        b.last = now;
                    }
                    let credits = d.arrival.cost.map(|cost| {
                        let k = keys.get_mut(&d.arrival.key).map(|b| {
                            *b -= cost;
                            *b
                        });
                        let o = if d.arrival.owner {
                            owner.as_mut().map(|b| {
                                *b -= cost;
                                *b
                            })
                        } else {
                            None
                        };
                        apikey::limits::SpendReceipt {
                            cost,
                            key_remaining: k,
                            owner_remaining: o,
                        }
                    });
                    Verdict::Admitted {
                        rate_limit: after,
                        credits,
                    }
                }
            }
        };
        if got != want {
            return Err(format!("step {n} at {now} µs: {got:?}, model {want:?}"));
        }
        // A refusal names its cause and a wait that is exact.
        if let (Some(Refuser::Window(_)), Some(wait)) = (got.refused_by(), got.retry_after())
            && wait.is_zero()
        {
            return Err(format!("step {n}: refused with no wait"));
        }
    }
    Ok(())
}

/// Refills: a balance of `amount` with `interval`, set at the clock's
/// time, spent to zero, is refused until exactly the next refill and
/// admitted from then on; the refusal's `refill_in` is exact. Uses key
/// `key` (which must be fresh) and the owner balance when `owner`.
pub async fn check_refill<L: Limits + CreditBalances>(
    limits: &L,
    clock: &ManualClock,
    key: u64,
    interval: RefillInterval,
    owner: bool,
) -> Result<(), String> {
    let amount = 3;
    let account = if owner {
        CreditAccount::Owner {
            owner: OWNER.owner,
            api: OWNER.api,
        }
    } else {
        CreditAccount::Key(key)
    };
    limits
        .set_credits(account, amount, Some(Refill::new(amount, interval)))
        .await
        .map_err(|e| format!("set_credits: {e}"))?;
    let charge = CreditCharge::new(amount).owner(owner.then_some(OWNER));
    let adm = Admission::new(key, Quota::unlimited()).credits(charge);
    let admit = |label: &'static str| async move {
        limits
            .admit(&adm)
            .await
            .map_err(|e| format!("{label}: {e}"))
    };
    if !admit("first").await?.is_admitted() {
        return Err("a full balance was refused".into());
    }
    let refused = admit("second").await?;
    let Some(wait) = refused.retry_after() else {
        return Err(format!("no refill time on {refused:?}"));
    };
    let now = clock.now();
    let due = now.saturating_add(wait);
    if let RefillInterval::UtcDay | RefillInterval::UtcMonth = interval {
        let d = due.to_datetime();
        if (d.hour(), d.minute(), d.second(), d.microsecond()) != (0, 0, 0, 0) {
            return Err(format!("calendar refill due at {d}, not midnight UTC"));
        }
        if interval == RefillInterval::UtcMonth && d.day() != 1 {
            return Err(format!("monthly refill due at {d}, not the 1st"));
        }
    }
    advance(clock, wait.saturating_sub(Duration::from_micros(1)));
    if admit("just before").await?.is_admitted() {
        return Err(format!("admitted 1 µs before the refill due at {due:?}"));
    }
    advance(clock, Duration::from_micros(1));
    let v = admit("at refill").await?;
    if !v.is_admitted() {
        return Err(format!("refused at the refill: {v:?}"));
    }
    let status = limits
        .credits(account)
        .await
        .map_err(|e| format!("credits: {e}"))?;
    if status.map(|s| s.remaining) != Some(0) {
        return Err(format!("after spending the refill: {status:?}"));
    }
    Ok(())
}

/// Both or neither, under concurrency: `tasks` concurrent admissions of
/// cost 1..=3 on keys `keys` (fresh, each given `per_key` credits) sharing
/// the owner balance of `owner_total`. Afterwards the debits add up
/// exactly on every balance, and none went negative.
pub async fn check_both_or_neither<L: Limits + CreditBalances>(
    limits: &L,
    keys: &[u64],
    per_key: u64,
    owner_total: u64,
    attempts: usize,
) -> Result<(), String> {
    for &k in keys {
        limits
            .set_credits(CreditAccount::Key(k), per_key, None)
            .await
            .map_err(|e| e.to_string())?;
    }
    let owner = CreditAccount::Owner {
        owner: OWNER.owner,
        api: OWNER.api,
    };
    limits
        .set_credits(owner, owner_total, None)
        .await
        .map_err(|e| e.to_string())?;
    let mut spent_per_key: HashMap<u64, u64> = HashMap::new();
    let futures: Vec<_> = (0..attempts)
        .map(|i| {
            let key = keys[i % keys.len().max(1)];
            let cost = 1 + (i as u64 * 7) % 3;
            async move {
                let adm = Admission::new(key, Quota::unlimited())
                    .credits(CreditCharge::new(cost).owner(Some(OWNER)));
                (key, limits.admit(&adm).await)
            }
        })
        .collect();
    let results = join_all(futures).await;
    let mut owner_spent = 0;
    for (key, r) in results {
        match r {
            Ok(Verdict::Admitted {
                credits: Some(c), ..
            }) => {
                *spent_per_key.entry(key).or_default() += c.cost;
                owner_spent += c.cost;
            }
            Ok(Verdict::CreditsExhausted { .. }) => {}
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    for &k in keys {
        let left = limits
            .credits(CreditAccount::Key(k))
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |s| s.remaining);
        let spent = spent_per_key.get(&k).copied().unwrap_or(0);
        if left + spent != per_key {
            return Err(format!("key {k}: {spent} spent + {left} left != {per_key}"));
        }
    }
    let left = limits
        .credits(owner)
        .await
        .map_err(|e| e.to_string())?
        .map_or(0, |s| s.remaining);
    if left + owner_spent != owner_total {
        return Err(format!(
            "owner: {owner_spent} spent + {left} left != {owner_total}"
        ));
    }
    Ok(())
}

/// Polls every future to completion, concurrently, on the current task.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Replays `arrivals` on two bundles, each on its own clock (both starting
/// at the same time), and compares every verdict.
pub async fn same_decisions<A: Limits, B: Limits>(
    a: (&A, &ManualClock),
    b: (&B, &ManualClock),
    quota: Quota,
    arrivals: &[Arrival],
) -> Result<(), String> {
    if a.1.now() != b.1.now() {
        return Err("the clocks do not start at the same time".into());
    }
    let ta = run_trace(a.0, a.1, quota, arrivals).await;
    let tb = run_trace(b.0, b.1, quota, arrivals).await;
    for (n, (x, y)) in ta.iter().zip(tb.iter()).enumerate() {
        if x != y {
            return Err(format!("step {n}: {x:?} vs {y:?}"));
        }
    }
    Ok(())
}

/// A clock start for oracles: 2026-01-31 22:00 UTC (two hours before a
/// month and a day boundary).
#[must_use]
pub fn start() -> apikey::Timestamp {
    "2026-01-31T22:00:00Z"
        .parse()
        .unwrap_or(apikey::Timestamp::MIN)
}

/// Whether a bundle records verdicts under idempotency tokens (a shared
/// store, where an outcome can be unknown) or only checks the tokens (an
/// in-process bundle, where it never is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// A retry of the same admission with the same token gets the recorded
    /// verdict, charged once; the same key with a different admission gets
    /// [`IdempotencyError::Mismatch`].
    Recorded,
    /// Every admission is decided on its own.
    NotRecorded,
}

fn refused_with(r: &Result<Verdict, StoreError>, want: IdempotencyError) -> Result<(), String> {
    match r {
        Err(e)
            if e.kind() == StoreErrorKind::InvalidRequest
                && std::error::Error::source(e)
                    .and_then(|s| s.downcast_ref::<IdempotencyError>())
                    == Some(&want) =>
        {
            Ok(())
        }
        other => Err(format!("expected {want:?}, got {other:?}")),
    }
}

/// The idempotency contract shared by every bundle, on two fresh keys
/// (`rich` gets 1,000 credits, `poor` none):
///
/// * an empty token and one longer than [`Admission::MAX_IDEMPOTENCY_TOKEN`](apikey::limits::Admission::MAX_IDEMPOTENCY_TOKEN) bytes are
///   refused with their [`IdempotencyError`] (kind
///   [`StoreErrorKind::InvalidRequest`]), nothing charged;
/// * a token used by `rich` for a cost of 500 and then sent by `poor` for
///   the same cost never admits `poor` and never shows `rich`'s balance:
///   `poor` is refused for its own empty balance;
/// * the same token from `rich` with another cost, another owner or another
///   quota is never answered with the recorded verdict: with
///   [`Idempotency::Recorded`] it is refused with
///   [`IdempotencyError::Mismatch`], nothing charged; with
///   [`Idempotency::NotRecorded`] it is decided on its own;
/// * a retry of the first admission: [`Idempotency::Recorded`] answers the
///   recorded verdict and charges nothing again.
pub async fn check_idempotency_contract<L: Limits + CreditBalances>(
    limits: &L,
    rich: u64,
    poor: u64,
    behaviour: Idempotency,
) -> Result<(), String> {
    let key_left = |k: u64| async move {
        limits
            .credits(CreditAccount::Key(k))
            .await
            .map_err(|e| format!("credits: {e}"))
            .map(|s| s.map(|s| s.remaining))
    };
    for (k, n) in [(rich, 1_000), (poor, 0)] {
        limits
            .set_credits(CreditAccount::Key(k), n, None)
            .await
            .map_err(|e| format!("set_credits: {e}"))?;
    }
    let q = Quota::unlimited().per_minute(100);
    let spend = |key: u64, cost: u64| Admission::new(key, q).credits(CreditCharge::new(cost));

    let long = "x".repeat(Admission::MAX_IDEMPOTENCY_TOKEN + 1);
    let longest = "y".repeat(Admission::MAX_IDEMPOTENCY_TOKEN);
    for (token, want) in [
        ("", IdempotencyError::EmptyToken),
        (long.as_str(), IdempotencyError::TooLong),
    ] {
        let r = limits.admit(&spend(rich, 500).idempotency(token)).await;
        refused_with(&r, want).map_err(|e| format!("token of {} bytes: {e}", token.len()))?;
        // Refused before anything else, even where nothing would be stored.
        let r = limits
            .admit(&Admission::new(rich, Quota::unlimited()).idempotency(token))
            .await;
        refused_with(&r, want).map_err(|e| format!("unlimited, {} bytes: {e}", token.len()))?;
    }
    if key_left(rich).await? != Some(1_000) {
        return Err("a refused token charged credits".into());
    }
    let r = limits.admit(&spend(poor, 0).idempotency(&longest)).await;
    if !matches!(r, Ok(Verdict::CreditsExhausted { .. })) {
        return Err(format!(
            "a token of {} bytes: {r:?}",
            Admission::MAX_IDEMPOTENCY_TOKEN
        ));
    }

    let token = "req-1";
    let first = limits
        .admit(&spend(rich, 500).idempotency(token))
        .await
        .map_err(|e| format!("first: {e}"))?;
    if first.credits().and_then(|c| c.key_remaining) != Some(500) {
        return Err(format!("first admission: {first:?}"));
    }

    // Another key, same token: decided on its own state.
    let other = limits.admit(&spend(poor, 500).idempotency(token)).await;
    match other {
        Ok(Verdict::CreditsExhausted { exhausted, .. })
            if exhausted.scope == CreditScope::Key && exhausted.remaining == 0 => {}
        other => return Err(format!("another key with the same token: {other:?}")),
    }
    if key_left(poor).await? != Some(0) {
        return Err("the other key's balance changed".into());
    }

    // The same key, same token, a different admission.
    let owner = spend(rich, 500).credits(CreditCharge::new(500).owner(Some(OWNER)));
    let other_quota =
        Admission::new(rich, Quota::unlimited().per_minute(99)).credits(CreditCharge::new(500));
    for (what, a) in [
        ("cost", spend(rich, 1)),
        ("owner", owner),
        ("quota", other_quota),
    ] {
        let before = key_left(rich).await?;
        let r = limits.admit(&a.idempotency(token)).await;
        match behaviour {
            Idempotency::Recorded => {
                refused_with(&r, IdempotencyError::Mismatch)
                    .map_err(|e| format!("another {what}: {e}"))?;
                if key_left(rich).await? != before {
                    return Err(format!("another {what}: a mismatch charged credits"));
                }
            }
            Idempotency::NotRecorded => {
                let v = r.map_err(|e| format!("another {what}: {e}"))?;
                let own_cost = a.charge.map(|c| c.cost);
                if v == first || v.credits().is_some_and(|c| Some(c.cost) != own_cost) {
                    return Err(format!("another {what}: {v:?} is not its own verdict"));
                }
            }
        }
    }

    // A retry of the first admission.
    let before = key_left(rich).await?;
    let retry = limits
        .admit(&spend(rich, 500).idempotency(token))
        .await
        .map_err(|e| format!("retry: {e}"))?;
    let after = key_left(rich).await?;
    match behaviour {
        Idempotency::Recorded if retry != first || after != before => Err(format!(
            "retry: {retry:?} (first {first:?}), balance {before:?} -> {after:?}"
        )),
        Idempotency::NotRecorded if retry == first => Err(format!(
            "retry answered the first verdict {first:?} unrecorded"
        )),
        _ => Ok(()),
    }
}
