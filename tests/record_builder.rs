//! `KeyRecord::builder` covers every field of the record: a record built
//! from plain values round-trips through serde, and a record read from JSON
//! is rebuilt field by field to an equal one.

#![allow(clippy::unwrap_used)]

use apikey::*;

fn every_field() -> KeyRecord {
    KeyRecord::builder(
        KeyId::from_u64(u64::MAX - 7),
        Prefix::new("sk_test_").unwrap(),
        Environment::Test,
        3,
        KeyDigest::from_bytes([9; 32]),
        "2026-01-01T00:00:00.000001Z".parse::<Timestamp>().unwrap(),
    )
    .owner(Some("user_12345678".into()))
    .name("CI")
    .description(Some("nightly jobs".into()))
    .scopes(ScopeSet::parse(["tasks:read", "projects:*"]).unwrap())
    .expires_at(Some("2027-01-01T00:00:00Z".parse::<Timestamp>().unwrap()))
    .not_before(Some("2026-01-02T00:00:00Z".parse::<Timestamp>().unwrap()))
    .status(KeyStatus::Revoked)
    .revocation(Some(Revocation {
        at: "2026-06-01T00:00:00Z".parse::<Timestamp>().unwrap(),
        reason: "left".into(),
    }))
    .last_used_at(Some(
        "2026-05-31T23:59:59.999999Z".parse::<Timestamp>().unwrap(),
    ))
    .metadata([("plan".to_owned(), "pro".to_owned())].into())
    .rotated_from(Some(KeyId::from_u64(1)))
    .rotated_to(Some(KeyId::from_u64(2)))
    .revision(41)
    .ip_allowlist(vec![
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ])
    .legacy(Some(LegacyInfo::new(
        "oldco_",
        KeyDigest::from_bytes([4; 32]),
        2,
        true,
    )))
    .build()
    .unwrap()
}

#[test]
fn a_record_built_from_every_field_round_trips_through_serde() {
    let r = every_field();
    let json = serde_json::to_string(&r).unwrap();
    let back: KeyRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

#[test]
fn a_record_read_from_json_is_rebuilt_field_by_field() {
    let json = serde_json::to_string(&every_field()).unwrap();
    let r: KeyRecord = serde_json::from_str(&json).unwrap();
    // A store decoding its columns does exactly this.
    let rebuilt = KeyRecord::builder(
        r.id,
        r.prefix.clone(),
        r.environment,
        r.secret_version,
        r.digest,
        r.created_at,
    )
    .owner(r.owner.clone())
    .name(r.name.clone())
    .description(r.description.clone())
    .scopes(r.scopes.clone())
    .expires_at(r.expires_at)
    .not_before(r.not_before)
    .status(r.status)
    .revocation(r.revocation.clone())
    .last_used_at(r.last_used_at)
    .metadata(r.metadata.clone())
    .rotated_from(r.rotated_from)
    .rotated_to(r.rotated_to)
    .revision(r.revision)
    .ip_allowlist(r.ip_allowlist.clone())
    .legacy(r.legacy.clone())
    .schema_version(r.schema_version)
    .build()
    .unwrap();
    assert_eq!(rebuilt, r);
    assert_eq!(serde_json::to_string(&rebuilt).unwrap(), json);
}

#[test]
fn a_builder_refuses_a_record_that_breaks_its_invariants() {
    let broken = every_field().to_builder().revocation(None).build();
    assert_eq!(broken.unwrap_err().code(), "INVALID_RECORD");
    let inverted = every_field()
        .to_builder()
        .not_before(Some("2028-01-01T00:00:00Z".parse::<Timestamp>().unwrap()))
        .build();
    assert_eq!(inverted.unwrap_err().code(), "INVALID_RECORD");
}
