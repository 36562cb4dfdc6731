//! The payload of PostgreSQL change notifications: an
//! [`apikey::Invalidation`], encoded by the store's `announce` and decoded
//! by [`PgChangeFeed`](crate::PgChangeFeed). Payloads (always under
//! NOTIFY's 8,000-byte limit):
//!
//! | payload | meaning |
//! |---|---|
//! | `k:1,2,3` | these key ids (decimal) |
//! | `o:<owner>` | every key of the owner (`revoke_where` by owner) |
//! | `p:<start µs>:<end µs>:<prefix>` | keys with the prefix created in the window (`revoke_where` by prefix) |
//! | `*` | anything (a change too large to describe) |
//! | `h` | a heartbeat of some listener (liveness only) |
//!
//! Every change payload starts with `t<µs>;`, the sender's wall-clock time when it announced the change
//! (Unix microseconds), from which a listener measures the feed's lag. A payload without it (an older
//! release) is read as before, without a lag sample.

use std::ops::Range;

use apikey::Timestamp;
use apikey::{Invalidation, KeyId, Prefix};

/// Payloads stay below this many bytes (NOTIFY refuses 8,000 and more).
pub(crate) const MAX_PAYLOAD: usize = 7_900;
pub(crate) const HEARTBEAT: &str = "h";

/// The NOTIFY payload of `change`, announced now.
pub(crate) fn encode(change: &Invalidation) -> String {
    encode_at(
        change,
        apikey::Clock::now(&apikey::SystemClock).as_unix_micros(),
    )
}

/// The NOTIFY payload of `change`, announced at `sent` (Unix microseconds).
pub(crate) fn encode_at(change: &Invalidation, sent: i64) -> String {
    format!("t{sent};{}", encode_change(change))
}

/// The change part of a payload.
fn encode_change(change: &Invalidation) -> String {
    let text = match change {
        Invalidation::Key(id) => format!("k:{}", id.as_u64()),
        Invalidation::Keys(ids) => {
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
        Invalidation::Owner(owner) => format!("o:{owner}"),
        Invalidation::Prefix { prefix, created } => {
            format!(
                "p:{}:{}:{prefix}",
                created.start.as_unix_micros(),
                created.end.as_unix_micros()
            )
        }
        _ => "*".into(),
    };
    if text.len() > MAX_PAYLOAD {
        "*".into()
    } else {
        text
    }
}

/// The invalidation a payload announces; `None` for heartbeats. Anything
/// unreadable is [`Invalidation::All`] (never ignored).
#[cfg(test)]
fn decode(payload: &str) -> Option<Invalidation> {
    decode_sent(payload).0
}

/// The invalidation a payload announces and, when the payload carries one, the time it was sent (Unix
/// microseconds). An unreadable time makes the whole payload unreadable: [`Invalidation::All`].
pub(crate) fn decode_sent(payload: &str) -> (Option<Invalidation>, Option<i64>) {
    if payload == HEARTBEAT {
        return (None, None);
    }
    match payload.strip_prefix('t') {
        Some(rest) => match rest.split_once(';') {
            Some((sent, change)) => match sent.parse::<i64>() {
                Ok(sent) => (decode_change(change), Some(sent)),
                Err(_) => (Some(Invalidation::All), None),
            },
            None => (Some(Invalidation::All), None),
        },
        None => (decode_change(payload), None),
    }
}

/// The invalidation of a payload's change part.
fn decode_change(payload: &str) -> Option<Invalidation> {
    if payload == HEARTBEAT {
        return Some(Invalidation::All);
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
            .and_then(Timestamp::checked_from_unix_micros);
        let end = parts
            .next()
            .and_then(|s| s.parse().ok())
            .and_then(Timestamp::checked_from_unix_micros);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_stay_under_the_limit() {
        let ids: Vec<KeyId> = (0..3).map(|i| KeyId::from_u64(u64::MAX - i)).collect();
        let p = encode(&Invalidation::Keys(ids.clone()));
        assert_eq!(decode(&p), Some(Invalidation::Keys(ids)));
        assert_eq!(
            decode(&encode(&Invalidation::Owner("org:1".into()))),
            Some(Invalidation::Owner("org:1".into()))
        );
        let w = Timestamp::MIN..Timestamp::MIN + std::time::Duration::from_secs(9 * 86_400);
        assert_eq!(
            decode(&encode(&Invalidation::Prefix {
                prefix: Prefix::new("sk_live_").unwrap_or_else(|e| panic!("{e}")),
                created: w.clone()
            })),
            Some(Invalidation::Prefix {
                prefix: Prefix::new("sk_live_").unwrap_or_else(|e| panic!("{e}")),
                created: w
            })
        );
        // 100,000 ids do not fit: flush everything.
        let many: Vec<KeyId> = (0..100_000).map(KeyId::from_u64).collect();
        assert_eq!(
            decode(&encode(&Invalidation::Keys(many))),
            Some(Invalidation::All)
        );
        assert!(encode_at(&Invalidation::Keys(vec![]), 5).ends_with(";k:"));
        assert_eq!(decode("*"), Some(Invalidation::All));
        let long = "x".repeat(10_000);
        assert!(encode(&Invalidation::Owner(long)).len() < MAX_PAYLOAD);
        assert_eq!(decode("h"), None);
        assert_eq!(decode("garbage"), Some(Invalidation::All));
    }

    #[test]
    fn payloads_carry_their_send_time_and_old_payloads_still_read() {
        let change = Invalidation::Keys(vec![KeyId::from_u64(7)]);
        let p = encode_at(&change, 1_700_000_000_123_456);
        assert_eq!(p, "t1700000000123456;k:7");
        assert_eq!(
            decode_sent(&p),
            (Some(change.clone()), Some(1_700_000_000_123_456))
        );
        // An older release's payload: no time, same change.
        assert_eq!(decode_sent("k:7"), (Some(change), None));
        // An unreadable time, or a time without a change: everything is flushed.
        assert_eq!(decode_sent("tx;k:7"), (Some(Invalidation::All), None));
        assert_eq!(decode_sent("t12"), (Some(Invalidation::All), None));
        assert_eq!(decode_sent("t12;h"), (Some(Invalidation::All), Some(12)));
        assert_eq!(decode_sent("h"), (None, None));
        // The time prefix keeps payloads under NOTIFY's limit.
        let many: Vec<KeyId> = (0..100_000).map(KeyId::from_u64).collect();
        assert!(encode(&Invalidation::Keys(many)).len() < MAX_PAYLOAD + 24);
    }
}
