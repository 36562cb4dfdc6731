//! The extreme-times harness: the manager with times at and past the supported range.

use super::*;

/// Polls a future that never waits (the manager over a [`MemoryStore`]).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A time chosen by the input, converted at the boundary: the ends of the
/// supported range and just past them, extreme offsets
/// (`9999-12-31T23:59:59-23:59`), the ends of what `time` represents,
/// 2262-04-12 (where `i64` nanoseconds end), and arbitrary instants in and
/// out of the range with arbitrary offsets, given as an `OffsetDateTime`,
/// as RFC 3339 text, as JSON or as Unix microseconds.
///
/// Oracles at the boundary: no conversion panics; a time outside the range
/// is refused by every door with `INVALID_REQUEST`; one inside is accepted
/// by every door with the same instant (truncated to the microsecond), and
/// prints, parses and serializes back to itself.
fn extreme_time(bytes: &mut impl Iterator<Item = u8>) -> Timestamp {
    use time::{Duration, OffsetDateTime, PrimitiveDateTime, UtcOffset};
    let mut word = || {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = bytes.next().unwrap_or(0);
        }
        u64::from_le_bytes(b)
    };
    let selector = word();
    let offset = UtcOffset::from_whole_seconds((word() % 172_799) as i32 - 86_399)
        .map(|o| UtcOffset::from_hms(o.whole_hours(), o.minutes_past_hour(), 0).unwrap_or(o))
        .unwrap_or(UtcOffset::UTC);
    let at = |t: OffsetDateTime| t.checked_to_offset(offset).unwrap_or(t);
    let min = Timestamp::MIN.to_datetime();
    let max = Timestamp::MAX.to_datetime();
    let harness = HARNESS_NOW.to_datetime();
    let candidate = match selector % 14 {
        0 => min,
        1 => max,
        2 => min - Duration::NANOSECOND,
        3 => max + Duration::MICROSECOND,
        4 => max + Duration::NANOSECOND,
        5 => time::macros::datetime!(9999-12-31 23:59:59 -23:59),
        6 => PrimitiveDateTime::MIN
            .assume_offset(UtcOffset::from_hms(23, 59, 0).unwrap_or(UtcOffset::UTC)),
        7 => PrimitiveDateTime::MAX
            .assume_offset(UtcOffset::from_hms(-23, -59, 0).unwrap_or(UtcOffset::UTC)),
        8 => time::macros::datetime!(2262-04-12 0:00 UTC),
        9 => at(harness),
        10 => at(max - Duration::seconds((word() % 100_000) as i64)),
        11 => at(min + Duration::seconds((word() % 100_000) as i64)),
        12 => {
            let secs = (word() as i64) % 253_402_300_799;
            at(OffsetDateTime::from_unix_timestamp(secs).unwrap_or(harness))
        }
        _ => {
            let micros = word() % (1 << 53);
            at(
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                    .unwrap_or(harness),
            )
        }
    };
    // Truncated to the microsecond first, as every door does.
    let in_range = (0..=i128::from(Timestamp::MAX.as_unix_micros()))
        .contains(&candidate.unix_timestamp_nanos().div_euclid(1000));
    let converted = Timestamp::from_datetime(candidate);
    let text = candidate
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    let parsed = text.as_deref().map(str::parse::<Timestamp>);
    let json = text
        .as_deref()
        .map(|t| serde_json::from_value::<Timestamp>(serde_json::Value::String(t.to_owned())));
    let micros = i64::try_from(candidate.unix_timestamp_nanos().div_euclid(1000))
        .map(Timestamp::from_unix_micros);
    match converted {
        Ok(t) => {
            assert!(in_range, "accepted {candidate} outside the range");
            assert_eq!(
                t.as_unix_micros(),
                i64::try_from(candidate.unix_timestamp_nanos().div_euclid(1000)).unwrap_or(-1),
                "the instant changed"
            );
            if let Some(p) = parsed {
                assert_eq!(p.ok(), Some(t), "RFC 3339 input {text:?} disagrees");
            }
            if let Some(j) = json {
                assert_eq!(j.ok(), Some(t), "JSON input {text:?} disagrees");
            }
            if let Ok(m) = micros {
                assert_eq!(m.ok(), Some(t), "microseconds disagree");
            }
            assert_eq!(t.to_string().parse::<Timestamp>().ok(), Some(t));
            assert_eq!(
                serde_json::from_str::<Timestamp>(&serde_json::to_string(&t).unwrap_or_default())
                    .ok(),
                Some(t)
            );
            assert!(t.to_string().ends_with('Z'), "{t} is not in UTC");
            t
        }
        Err(e) => {
            assert!(!in_range, "refused {candidate} inside the range: {e}");
            assert_eq!(Error::from(e).code().as_str(), "INVALID_REQUEST", "{e}");
            match parsed {
                Some(Ok(t)) => panic!("RFC 3339 input {text:?} outside the range read as {t}"),
                Some(Err(e)) => {
                    assert_eq!(Error::from(e).code().as_str(), "INVALID_REQUEST", "{e}")
                }
                None => {}
            }
            if let Some(j) = json {
                assert!(
                    j.is_err(),
                    "JSON input {text:?} outside the range was accepted"
                );
            }
            if let Ok(m) = micros {
                assert!(m.is_err(), "microseconds outside the range were accepted");
            }
            // Refused at the boundary: the script goes on at an end of the
            // range, where saturation and comparisons are tested next.
            if candidate < min {
                Timestamp::MIN
            } else {
                Timestamp::MAX
            }
        }
    }
}

/// The [`KeyManager`](apikey::KeyManager) and [`Verifier`] at the edges of
/// time: a script of operations (set the clock, create, update the
/// expiry, rotate, get, list, authenticate, issue, verify, import), each
/// with times chosen by the input bytes (range ends and just
/// past them, `9999-12-31T23:59:59-23:59`, `time`'s own ends, 2262).
///
/// Oracles: never panics; a time outside the supported range is refused
/// where it enters (a conversion, a parse, a deserialization) with exactly
/// `INVALID_REQUEST`, and one inside reads back as the same instant (see
/// `extreme_time`); with the clock and every time at any point of the range,
/// including its ends, each answer is the one the stored record calls for
/// (create and update accept exactly the valid windows and store the
/// instants given; authenticate and verify agree with a reference
/// evaluation of the record at `now`; a key without expiry keeps verifying
/// up to [`Timestamp::MAX`]; a rotation's grace saturates at it).
///
/// # Panics
/// When an oracle fails.
///
/// ```
/// apikey_testkit::fuzzing::extreme_times(b"\x00\x05\x00\x00\x00\x00\x00\x00\x00\x01\x01");
/// apikey_testkit::fuzzing::extreme_times(&[1; 64]);
/// ```
pub fn extreme_times(data: &[u8]) {
    use apikey::Actor;
    use apikey::{Clock, ManualClock};
    use apikey::{ImportKey, KeyManager, KeyUpdate, Rotation};
    let verifier = harness_verifier();
    let clock = ManualClock::new(HARNESS_NOW);
    let manager = KeyManager::with_clock(verifier.clone(), MemoryStore::new(), clock.clone())
        .with_legacy_prefix("old_", "sk_live_")
        .unwrap_or_else(|e| panic!("harness legacy prefix: {e}"));
    let actor = Actor::new("fuzz");
    let mut keys: Vec<(ApiKey, KeyId)> = Vec::new();
    let mut bytes = data.iter().copied();
    let code = |e: &Error| e.code().as_str();
    // The reference: what the stored record calls for at `now`.
    let expected = |r: &KeyRecord, now: Timestamp| -> &'static str {
        match r.status {
            KeyStatus::Revoked => "REVOKED_API_KEY",
            KeyStatus::Disabled => "DISABLED_API_KEY",
            KeyStatus::Active if r.not_before.is_some_and(|nb| now < nb) => "NOT_YET_VALID",
            KeyStatus::Active if r.expires_at.is_some_and(|e| now >= e) => "EXPIRED_API_KEY",
            KeyStatus::Active => "OK",
        }
    };
    let outcome = |r: &apikey::Result<apikey::VerifiedKey>| match r {
        Ok(_) => "OK",
        Err(e) => e.code().as_str(),
    };
    for _ in 0..24 {
        let Some(op) = bytes.next() else { break };
        let now = clock.now();
        let last = keys.last().map(|(_, id)| *id);
        match op % 10 {
            0 => clock.set(extreme_time(&mut bytes)),
            1 | 7 => {
                let exp = (bytes.next().unwrap_or(0) & 1 == 1).then(|| extreme_time(&mut bytes));
                let nb = (bytes.next().unwrap_or(0) & 1 == 1).then(|| extreme_time(&mut bytes));
                let mut new = NewKey::new("sk_live_").owner("o");
                new.expires_at = exp;
                new.not_before = nb;
                let window_ok = exp.is_none_or(|e| e > now && nb.is_none_or(|nb| e > nb));
                let (result, direct) = if op % 10 == 1 {
                    (
                        block_on(manager.create(new, &actor)).map(|(k, s)| (k, s.id)),
                        false,
                    )
                } else {
                    (verifier.issue(new, now).map(|(k, r)| (k, r.id)), true)
                };
                match result {
                    Ok((key, id)) => {
                        assert!(
                            window_ok,
                            "accepted a bad time: now {now}, exp {exp:?}, nb {nb:?}"
                        );
                        if !direct {
                            let stored =
                                block_on(manager.record(id)).unwrap_or_else(|e| panic!("{e}"));
                            assert_eq!(stored.expires_at, exp, "the expiry was not stored exactly");
                            assert_eq!(stored.not_before, nb, "not-before was not stored exactly");
                            keys.push((key, id));
                        }
                    }
                    Err(e) => {
                        assert!(
                            !window_ok,
                            "refused a valid key: {e} (now {now}, exp {exp:?}, nb {nb:?})"
                        );
                        assert_eq!(code(&e), "INVALID_REQUEST", "{e}");
                    }
                }
            }
            2 => {
                let Some(id) = last else { continue };
                let exp = (bytes.next().unwrap_or(0) & 1 == 1).then(|| extreme_time(&mut bytes));
                let before = block_on(manager.record(id)).unwrap_or_else(|e| panic!("{e}"));
                let result = block_on(manager.update(id, KeyUpdate::new().expires_at(exp), &actor));
                let after = block_on(manager.record(id)).unwrap_or_else(|e| panic!("{e}"));
                let changes = exp != before.expires_at;
                let want = if !changes {
                    Ok(())
                } else if before.rotated_to.is_some() {
                    Err("INVALID_STATE")
                } else if exp
                    .is_some_and(|e| e <= now || before.not_before.is_some_and(|nb| e <= nb))
                {
                    Err("INVALID_REQUEST")
                } else {
                    Ok(())
                };
                assert_eq!(result.map(|_| ()).map_err(|e| e.code().as_str()), want);
                if want.is_ok() {
                    assert_eq!(
                        after.expires_at, exp,
                        "the new expiry was not stored exactly"
                    );
                }
            }
            3 => {
                let Some(id) = last else { continue };
                let mut rotation = Rotation::with_grace(std::time::Duration::from_secs(
                    u64::from(bytes.next().unwrap_or(0)) * 2_371,
                ));
                if bytes.next().unwrap_or(0) & 1 == 1 {
                    rotation = rotation.expires_at(extreme_time(&mut bytes));
                }
                let result = block_on(manager.rotate(id, rotation, &actor));
                match result {
                    Ok((key, s)) => {
                        let pred = block_on(manager.record(id)).unwrap_or_else(|e| panic!("{e}"));
                        assert!(
                            pred.expires_at
                                .is_some_and(|e| e <= now.saturating_add(rotation.grace))
                        );
                        let v = block_on(manager.authenticate(
                            key.expose_secret(),
                            &Requirement::none(),
                            None,
                        ));
                        let rec = block_on(manager.record(s.id)).unwrap_or_else(|e| panic!("{e}"));
                        assert_eq!(outcome(&v), expected(&rec, now));
                        keys.push((key, s.id));
                    }
                    Err(e) => assert!(
                        matches!(e.code().as_str(), "INVALID_STATE" | "INVALID_REQUEST"),
                        "rotate: {e}"
                    ),
                }
            }
            4 => {
                let Some(id) = last else { continue };
                let rec = block_on(manager.record(id)).unwrap_or_else(|e| panic!("{e}"));
                match block_on(manager.get(id)) {
                    Ok(s) => assert_eq!(s.expires_at, rec.expires_at),
                    Err(e) => panic!("get failed: {e}"),
                }
            }
            5 => match block_on(manager.list("o")) {
                Ok(l) => assert_eq!(l.len(), keys.len()),
                Err(e) => panic!("list failed: {e}"),
            },
            6 | 8 => {
                let Some((key, id)) = keys.last() else {
                    continue;
                };
                let rec = block_on(manager.record(*id)).unwrap_or_else(|e| panic!("{e}"));
                let (got, at) = if op % 10 == 6 {
                    (
                        block_on(manager.authenticate(
                            key.expose_secret(),
                            &Requirement::none(),
                            None,
                        )),
                        now,
                    )
                } else {
                    let at = extreme_time(&mut bytes);
                    let parsed = verifier
                        .parse(key.expose_secret())
                        .unwrap_or_else(|e| panic!("{e}"));
                    let view = std::sync::Arc::new(apikey::KeyView::from_record(&rec));
                    (
                        verifier.verify(&parsed, Some(view), &at, &Requirement::none(), None),
                        at,
                    )
                };
                assert_eq!(outcome(&got), expected(&rec, at), "at {at} for {rec:?}");
            }
            _ => {
                let exp = (bytes.next().unwrap_or(0) & 1 == 1).then(|| extreme_time(&mut bytes));
                let n = bytes.next().unwrap_or(0);
                let mut import =
                    ImportKey::plaintext(format!("old_{n:03}_{}", keys.len())).owner("i");
                if let Some(e) = exp {
                    import = import.expires_at(e);
                }
                let result = block_on(manager.import(import, &actor));
                match result {
                    Ok(s) => {
                        assert!(exp.is_none_or(|e| e > now));
                        assert_eq!(s.expires_at, exp);
                    }
                    Err(e) if exp.is_some_and(|e| e <= now) => {
                        assert_eq!(code(&e), "INVALID_REQUEST", "{e}");
                    }
                    Err(e) => assert_eq!(code(&e), "INVALID_STATE", "import: {e}"),
                }
            }
        }
    }
}
