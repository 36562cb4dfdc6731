//! Verification outcomes through the public entry points: every error
//! variant of the core, the time rules, environments, scopes, rotation of
//! server secrets, and store failures.

#![allow(clippy::unwrap_used)]

use apikey_testkit::VerifyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use apikey::Timestamp;
use apikey::*;
use std::time::Duration;

const T0: Timestamp = match apikey::Timestamp::checked_from_unix_micros(1_780_315_200_000_000) {
    Some(t) => t,
    None => apikey::Timestamp::MIN,
};

fn secret(b: u8) -> ServerSecret {
    ServerSecret::from_bytes(&[b; 32]).unwrap()
}

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, secret(1)).unwrap())
}

fn issue(v: &Verifier, store: &MemoryStore, new: NewKey) -> ApiKey {
    let (key, record) = v.issue(new, T0).unwrap();
    store.insert_sync(record).unwrap();
    key
}

fn check(
    v: &Verifier,
    store: &MemoryStore,
    key: &str,
    now: Timestamp,
    req: &Requirement,
) -> Result<VerifiedKey> {
    v.verify_with(key, |id| store.fetch_sync(id), now, req)
}

fn set(store: &MemoryStore, id: KeyId, f: impl FnOnce(&mut KeyRecord)) {
    let mut r = store.get_sync(id).unwrap();
    f(&mut r);
    store.update_sync(r).unwrap();
}

#[test]
fn valid_key_returns_its_info() {
    let (v, s) = (verifier(), MemoryStore::new());
    let key = issue(
        &v,
        &s,
        NewKey::new("sk_live_")
            .owner("org_1")
            .scopes(["tasks:read"])
            .metadata("plan", "pro"),
    );
    let ok = check(
        &v,
        &s,
        key.expose_secret(),
        T0,
        &Requirement::scope("tasks:read").unwrap(),
    )
    .unwrap();
    assert_eq!(ok.id(), key.id());
    assert_eq!(ok.owner(), Some("org_1"));
    assert_eq!(ok.environment(), Environment::Live);
    assert_eq!(ok.metadata().get("plan").map(String::as_str), Some("pro"));
    assert!(!ok.needs_rehash(&v));
}

#[test]
fn missing_and_malformed() {
    let (v, s) = (verifier(), MemoryStore::new());
    let key = issue(&v, &s, NewKey::new("sk_live_"));
    let text = key.expose_secret();
    let req = Requirement::none();
    let code = |t: &str| check(&v, &s, t, T0, &req).unwrap_err();

    assert!(matches!(code(""), Error::MissingApiKey));
    assert!(matches!(
        code("sk_live_"),
        Error::MalformedApiKey(MalformedReason::Length)
    ));
    assert!(matches!(
        code(&"a".repeat(ApiKey::MAX_LEN + 1)),
        Error::MalformedApiKey(MalformedReason::Length)
    ));
    // One extra character shifts the body: the prefix becomes unknown.
    assert!(matches!(
        code(&format!("{text}x")),
        Error::MalformedApiKey(MalformedReason::UnknownPrefix)
    ));
    let mut bad = text.to_owned();
    bad.replace_range(20..21, "-");
    assert!(matches!(
        code(&bad),
        Error::MalformedApiKey(MalformedReason::Charset)
    ));
    let other = text.replacen("sk_live_", "sk_lave_", 1);
    assert!(matches!(
        code(&other),
        Error::MalformedApiKey(MalformedReason::UnknownPrefix)
    ));
    // A typo: the checksum catches it.
    let mut typo = text.as_bytes().to_vec();
    typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert!(matches!(
        code(&typo),
        Error::MalformedApiKey(MalformedReason::Checksum)
    ));
    // Multi-byte UTF-8 where the prefix/body boundary would fall: no panic.
    let mut uni = String::from("é");
    uni.push_str(&text[9..]);
    assert!(matches!(code(&uni), Error::MalformedApiKey(_)));
    // A key issued under a version this verifier does not hold.
    let mut other_ring = Keyring::new(1, secret(1)).unwrap();
    other_ring
        .add(7, secret(7))
        .unwrap()
        .set_current(7)
        .unwrap();
    let (v7_key, _) = Verifier::new(other_ring)
        .issue(NewKey::new("sk_live_"), T0)
        .unwrap();
    assert!(matches!(
        code(v7_key.expose_secret()),
        Error::MalformedApiKey(MalformedReason::UnknownVersion)
    ));
    for e in [code(""), code(&typo)] {
        assert_eq!(e.http_status(), 401);
    }
    assert_eq!(code(&typo).code().as_str(), "MALFORMED_API_KEY");
    assert_eq!(code("").code().as_str(), "MISSING_API_KEY");
}

#[test]
fn forged_unknown_and_wrong_secret_are_one_outcome() {
    let (v, s) = (verifier(), MemoryStore::new());
    let key = issue(&v, &s, NewKey::new("sk_live_"));
    // Same format, another server secret: the tag fails.
    let forger = Verifier::new(Keyring::new(1, secret(2)).unwrap());
    let (forged, _) = forger.issue(NewKey::new("sk_live_"), T0).unwrap();
    // Issued by us but never stored: unknown id.
    let (unknown, _) = v.issue(NewKey::new("sk_live_"), T0).unwrap();
    // Stored id, wrong digest: wrong secret.
    let (wrong, mut record) = v.issue(NewKey::new("sk_live_"), T0).unwrap();
    record.digest = KeyDigest::from_bytes([9; 32]);
    s.insert_sync(record).unwrap();

    let calls = AtomicUsize::new(0);
    let lookup = |id| {
        calls.fetch_add(1, Ordering::SeqCst);
        s.fetch_sync(id)
    };
    let e = v
        .verify_with(forged.expose_secret(), lookup, T0, &Requirement::none())
        .unwrap_err();
    assert!(matches!(e, Error::InvalidApiKey));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a forged key never reaches the store"
    );
    for k in [&unknown, &wrong] {
        let e = check(&v, &s, k.expose_secret(), T0, &Requirement::none()).unwrap_err();
        assert!(matches!(e, Error::InvalidApiKey));
        assert_eq!(e.to_string(), "the provided API key is invalid");
        assert_eq!(e.http_status(), 401);
    }
    // The genuine key still works.
    check(&v, &s, key.expose_secret(), T0, &Requirement::none()).unwrap();
}

#[test]
fn status_is_revealed_only_after_the_secret_matched() {
    let (v, s) = (verifier(), MemoryStore::new());
    let key = issue(&v, &s, NewKey::new("sk_live_"));
    set(&s, key.id(), |r| r.status = KeyStatus::Disabled);
    let e = check(&v, &s, key.expose_secret(), T0, &Requirement::none()).unwrap_err();
    assert_eq!(e.code().as_str(), "DISABLED_API_KEY");

    // A wrong secret for a disabled key says "invalid", not "disabled".
    let (other, _) = v.issue(NewKey::new("sk_live_"), T0).unwrap();
    let mut r = s.get_sync(key.id()).unwrap();
    r.digest = v
        .rehash(&v.parse(other.expose_secret()).unwrap())
        .unwrap()
        .1;
    s.update_sync(r).unwrap();
    let e = check(&v, &s, key.expose_secret(), T0, &Requirement::none()).unwrap_err();
    assert_eq!(e.code().as_str(), "INVALID_API_KEY");

    let key = issue(&v, &s, NewKey::new("sk_live_"));
    set(&s, key.id(), |r| {
        r.status = KeyStatus::Revoked;
        r.revocation = Some(Revocation {
            at: T0,
            reason: "leaked".into(),
        });
    });
    let e = check(&v, &s, key.expose_secret(), T0, &Requirement::none()).unwrap_err();
    assert_eq!(e.code().as_str(), "REVOKED_API_KEY");
    assert_eq!(e.http_status(), 401);
}

#[test]
fn time_rule_not_before_inclusive_expiry_exclusive() {
    let (v, s) = (verifier(), MemoryStore::new());
    let nb = T0 + Duration::from_secs(3_600);
    let exp = T0 + Duration::from_secs(2 * 3_600);
    let key = issue(
        &v,
        &s,
        NewKey::new("sk_test_").not_before(nb).expires_at(exp),
    );
    let at = |t| check(&v, &s, key.expose_secret(), t, &Requirement::none());

    let e = at(nb - Duration::from_nanos(1)).unwrap_err();
    assert!(matches!(e, Error::NotYetValid { not_before } if not_before == nb));
    assert_eq!(e.code().as_str(), "NOT_YET_VALID");
    at(nb).unwrap();
    at(exp - Duration::from_nanos(1)).unwrap();
    let e = at(exp).unwrap_err();
    assert!(matches!(e, Error::ExpiredApiKey { expired_at } if expired_at == exp));
    assert_eq!(e.code().as_str(), "EXPIRED_API_KEY");

    // Leeway widens both ends by exactly its amount.
    let lv = v.clone().with_leeway(Duration::from_secs(30));
    let at_l = |t| {
        lv.verify_with(
            key.expose_secret(),
            |id| s.fetch_sync(id),
            t,
            &Requirement::none(),
        )
    };
    at_l(nb - Duration::from_secs(30)).unwrap();
    assert!(at_l(nb - Duration::from_secs(30) - Duration::from_nanos(1)).is_err());
    at_l(exp + Duration::from_secs(29)).unwrap();
    assert!(at_l(exp + Duration::from_secs(30)).is_err());
}

#[test]
fn extending_expiry_revives_an_expired_key() {
    let (v, s) = (verifier(), MemoryStore::new());
    let key = issue(
        &v,
        &s,
        NewKey::new("kwi_sk_").expires_at(T0 + Duration::from_secs(86_400)),
    );
    let later = T0 + Duration::from_secs(2 * 86_400);
    assert!(check(&v, &s, key.expose_secret(), later, &Requirement::none()).is_err());
    set(&s, key.id(), |r| {
        r.expires_at = Some(T0 + Duration::from_secs(30 * 86_400))
    });
    check(&v, &s, key.expose_secret(), later, &Requirement::none()).unwrap();
}

#[test]
fn environment_policy() {
    let (v, s) = (verifier(), MemoryStore::new());
    let live = issue(&v, &s, NewKey::new("sk_live_"));
    let test = issue(&v, &s, NewKey::new("sk_test_"));
    let live_only = v.clone().with_environments(Environments::LIVE);
    let test_only = v.clone().with_environments(Environments::TEST);
    let run = |v: &Verifier, k: &ApiKey| check(v, &s, k.expose_secret(), T0, &Requirement::none());
    run(&live_only, &live).unwrap();
    let e = run(&live_only, &test).unwrap_err();
    assert!(matches!(
        e,
        Error::WrongEnvironment {
            actual: Environment::Test
        }
    ));
    assert_eq!(
        (e.code().as_str(), e.http_status()),
        ("WRONG_ENVIRONMENT", 403)
    );
    run(&test_only, &test).unwrap();
    assert!(run(&test_only, &live).is_err());
}

#[test]
fn a_key_respelled_under_another_prefix_never_verifies() {
    let v = verifier().with_prefix("acme_", Environment::Live).unwrap();
    let s = MemoryStore::new();
    let key = issue(&v, &s, NewKey::new("sk_test_"));
    let body = &key.expose_secret()["sk_test_".len()..];
    for p in ["sk_live_", "kwi_sk_", "acme_"] {
        let e = check(&v, &s, &format!("{p}{body}"), T0, &Requirement::none()).unwrap_err();
        assert!(
            matches!(e, Error::MalformedApiKey(MalformedReason::Checksum)),
            "{p}: {e:?}"
        );
    }
}

#[test]
fn scopes_and_full_access() {
    let v = verifier().with_full_access_scope("admin:*").unwrap();
    let s = MemoryStore::new();
    let reader = issue(
        &v,
        &s,
        NewKey::new("sk_live_").scopes(["tasks:read", "projects:*"]),
    );
    let admin = issue(&v, &s, NewKey::new("sk_live_").scopes(["admin:*"]));
    let run = |k: &ApiKey, r: Requirement| check(&v, &s, k.expose_secret(), T0, &r);
    run(
        &reader,
        Requirement::all_of(["tasks:read", "projects:42:write"]).unwrap(),
    )
    .unwrap();
    let e = run(
        &reader,
        Requirement::all_of(["tasks:read", "tasks:write"]).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InsufficientScope { required } if required == "tasks:write"));
    assert_eq!(e.http_status(), 403);
    run(
        &reader,
        Requirement::any_of(["users:read", "tasks:read"]).unwrap(),
    )
    .unwrap();
    assert!(run(&reader, Requirement::any_of(Vec::<&str>::new()).unwrap()).is_err());
    run(&admin, Requirement::scope("users:delete").unwrap()).unwrap();
    // Without the declaration, admin:* is only admin:*.
    let plain = verifier();
    assert!(
        check(
            &plain,
            &s,
            admin.expose_secret(),
            T0,
            &Requirement::scope("users:delete").unwrap()
        )
        .is_err()
    );
}

#[test]
fn issue_rejects_bad_input_naming_it() {
    let v = verifier();
    let e = v
        .issue(NewKey::new("sk_live_").scopes(["ok", "Tasks:Read"]), T0)
        .unwrap_err();
    assert!(matches!(&e, Error::InvalidScope { scope, .. } if scope == "Tasks:Read"));
    assert_eq!((e.code().as_str(), e.http_status()), ("INVALID_SCOPE", 400));
    let e = v.issue(NewKey::new("nope_"), T0).unwrap_err();
    assert_eq!(e.code().as_str(), "INVALID_PREFIX");
    let e = v
        .issue(NewKey::new("sk_live_").expires_at(T0), T0)
        .unwrap_err();
    assert_eq!(e.code().as_str(), "INVALID_REQUEST");
    let e = v
        .issue(
            NewKey::new("sk_live_")
                .not_before(T0 + Duration::from_secs(2 * 86_400))
                .expires_at(T0 + Duration::from_secs(86_400)),
            T0,
        )
        .unwrap_err();
    assert_eq!(e.code().as_str(), "INVALID_REQUEST");
    assert!(matches!(
        Verifier::new(Keyring::new(1, secret(1)).unwrap()).with_prefix("Bad", Environment::Live),
        Err(Error::InvalidPrefix { .. })
    ));
    assert!(matches!(
        ServerSecret::from_bytes(&[0; 16]),
        Err(Error::InvalidSecret(_))
    ));
    assert!(matches!(
        ServerSecret::from_base64("not base64!"),
        Err(Error::InvalidSecret(_))
    ));
    assert!(matches!(
        Keyring::new(0, secret(1)),
        Err(Error::InvalidSecret(_))
    ));
    assert!(matches!(
        Keyring::new(62, secret(1)),
        Err(Error::InvalidSecret(_))
    ));
}

#[test]
fn server_secret_rotation() {
    let (v1, s) = (verifier(), MemoryStore::new());
    let old = issue(&v1, &s, NewKey::new("sk_live_"));
    let mut ring = v1.keyring().clone();
    ring.add(2, secret(2)).unwrap().set_current(2).unwrap();
    let v2 = Verifier::new(ring);
    // Old keys keep working under the new current version.
    let ok = check(&v2, &s, old.expose_secret(), T0, &Requirement::none()).unwrap();
    assert!(ok.needs_rehash(&v2));
    // Re-hash the record under version 2; the key still verifies.
    let parsed = v2.parse(old.expose_secret()).unwrap();
    let (ver, digest) = v2.rehash(&parsed).unwrap();
    set(&s, old.id(), |r| {
        r.secret_version = ver;
        r.digest = digest;
    });
    let ok = check(&v2, &s, old.expose_secret(), T0, &Requirement::none()).unwrap();
    assert!(!ok.needs_rehash(&v2));
    // New keys carry version 2.
    let (new, rec) = v2.issue(NewKey::new("sk_live_"), T0).unwrap();
    assert_eq!(rec.secret_version, 2);
    s.insert_sync(rec).unwrap();
    check(&v2, &s, new.expose_secret(), T0, &Requirement::none()).unwrap();
    // A verifier without version 2 rejects it before the store.
    assert!(matches!(
        check(&v1, &s, new.expose_secret(), T0, &Requirement::none()),
        Err(Error::MalformedApiKey(MalformedReason::UnknownVersion))
    ));
}

#[test]
fn a_failing_store_is_never_valid_nor_invalid() {
    let (v, s) = (verifier(), MemoryStore::new());
    let key = issue(&v, &s, NewKey::new("sk_live_"));
    let e = v
        .verify_with(
            key.expose_secret(),
            |_| {
                Err(StoreError::with_source(
                    StoreErrorKind::Timeout,
                    std::io::Error::other("pool"),
                ))
            },
            T0,
            &Requirement::none(),
        )
        .unwrap_err();
    assert!(matches!(&e, Error::StoreUnavailable(se) if se.kind() == StoreErrorKind::Timeout));
    assert_eq!(
        (e.code().as_str(), e.http_status()),
        ("STORE_UNAVAILABLE", 503)
    );
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(1)));
}

#[test]
fn id_collision_is_detected_never_overwritten() {
    let (v, s) = (verifier(), MemoryStore::new());
    let (_, record) = v.issue(NewKey::new("sk_live_").name("first"), T0).unwrap();
    s.insert_sync(record.clone()).unwrap();
    let mut twin = record.clone();
    twin.name = "second".into();
    let e = s.insert_sync(twin).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::IdCollision);
    assert_eq!(s.get_sync(record.id).unwrap().name, "first");
}

#[tokio::test]
async fn authenticator_uses_the_injected_clock() {
    let v = verifier();
    let s = Arc::new(MemoryStore::new());
    let key = issue(
        &v,
        &s,
        NewKey::new("sk_live_").expires_at(T0 + Duration::from_secs(5 * 60)),
    );
    let clock = ManualClock::new(T0);
    let auth = Authenticator::with_clock(v, Arc::clone(&s), clock.clone());
    auth.authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5 * 60));
    let e = auth
        .authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "EXPIRED_API_KEY");
    let e = auth
        .authenticate("", &Requirement::none(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "MISSING_API_KEY");
}

#[test]
fn records_from_outside_are_validated() {
    let v = verifier();
    let (_, record) = v.issue(NewKey::new("sk_live_"), T0).unwrap();
    let mut json: serde_json::Value = serde_json::to_value(&record).unwrap();
    json["schema_version"] = 2.into();
    let e = serde_json::from_value::<KeyRecord>(json).unwrap_err();
    assert!(e.to_string().contains("schema_version"));
    let mut bad = record.clone();
    bad.status = KeyStatus::Revoked; // without a revocation
    let e = bad.validate().unwrap_err();
    assert_eq!(e.code().as_str(), "INVALID_RECORD");
    let s = MemoryStore::new();
    assert_eq!(
        s.insert_sync(bad).unwrap_err().kind(),
        StoreErrorKind::Corrupt
    );
    assert!(s.is_empty());
    assert!(KeyDigest::from_base64("AAAA").is_err());
}

#[tokio::test]
async fn ip_allowlist_is_checked_before_scopes_and_fails_closed_without_an_address() {
    let v = verifier();
    let s = MemoryStore::new();
    let key = issue(
        &v,
        &s,
        NewKey::new("sk_live_")
            .scopes(["tasks:read"])
            .allow_ip("10.0.0.0/8".parse().unwrap()),
    );
    let auth = Authenticator::with_clock(v, &s, ManualClock::new(T0));
    let read = Requirement::scope("tasks:read").unwrap();
    let inside: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let outside: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    auth.authenticate(key.expose_secret(), &read, Some(inside))
        .await
        .unwrap();
    let e = auth
        .authenticate(key.expose_secret(), &read, Some(outside))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code().as_str(), e.http_status()),
        ("IP_NOT_ALLOWED", 403)
    );
    // Without an address the key fails closed.
    let e = auth
        .authenticate(key.expose_secret(), &read, None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "IP_NOT_ALLOWED");
    // From outside, a missing scope still says IP_NOT_ALLOWED: the address is checked first.
    let write = Requirement::scope("tasks:write").unwrap();
    let e = auth
        .authenticate(key.expose_secret(), &write, Some(outside))
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "IP_NOT_ALLOWED");
}

#[test]
fn a_record_whose_secret_version_is_not_held_never_verifies() {
    let (v, s) = (verifier(), MemoryStore::new());
    let key = issue(&v, &s, NewKey::new("sk_live_"));
    // The digest is right for version 1, but the record claims version 9,
    // which this keyring does not hold: no fallback to the key's version.
    set(&s, key.id(), |r| r.secret_version = 9);
    let e = check(&v, &s, key.expose_secret(), T0, &Requirement::none()).unwrap_err();
    assert_eq!(e.code().as_str(), "INVALID_API_KEY");
    set(&s, key.id(), |r| r.secret_version = 1);
    check(&v, &s, key.expose_secret(), T0, &Requirement::none()).unwrap();
}

/// Records keep microseconds, the precision PostgreSQL stores, so a record
/// reads back identical from every store.
#[test]
fn issued_records_keep_microsecond_precision() {
    let v = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[4; 32]).unwrap()).unwrap());
    let now = "2026-05-01T12:00:00.123456789Z"
        .parse::<Timestamp>()
        .unwrap();
    let (_, r) = v
        .issue(
            NewKey::new("sk_live_")
                .expires_at(now + std::time::Duration::from_nanos(86_400_000_000_999))
                .not_before(now + std::time::Duration::from_nanos(1_999)),
            now,
        )
        .unwrap();
    for t in [Some(r.created_at), r.expires_at, r.not_before] {
        assert_eq!(t.unwrap().to_datetime().nanosecond() % 1000, 0, "{t:?}");
    }
    assert_eq!(
        r.created_at,
        "2026-05-01T12:00:00.123456Z".parse::<Timestamp>().unwrap()
    );
    let built = r.to_builder().last_used_at(Some(now)).build().unwrap();
    assert_eq!(
        built.last_used_at.unwrap().to_datetime().nanosecond() % 1000,
        0
    );
    // The serde round trip is exact.
    let back: KeyRecord = serde_json::from_str(&serde_json::to_string(&built).unwrap()).unwrap();
    assert_eq!(back, built);
}
