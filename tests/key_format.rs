//! Known-answer vectors for the key format and the digest, and an
//! independent re-implementation of the published format (what a secret
//! scanner or another language would write) checked against the crate.

#![allow(clippy::unwrap_used)]

use apikey::*;
use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::Sha256;
use std::hash::Hasher;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Server secret [0x42; 32] as version 1, ChaCha20Rng seeded with 2026,
/// keys issued in this order.
const VECTORS: &[(&str, &str, &str)] = &[
    (
        "sk_live_ypftSL2St2B1cRPDcsa2HjoLbRHscmVEr0plcIGhHRG9DGuK2KGs1wMjov",
        "ypftSL2St2B",
        "lmh80LCUW7Wq6R0fxiMcryBgn/pNPlWtuQ0YV80pxwc=",
    ),
    (
        "sk_test_3EtPvaCpO2C1KLgr4uEmTurRcnVq1EwgQh91KvaYj54DxFVgCu5d2p8S8n",
        "3EtPvaCpO2C",
        "sMrc4XqzeTq0Y52rOSLtmIz0czDqAsyZZnS3LUk7qF4=",
    ),
    (
        "kwi_sk_0gKVeKpYzKF1PGPLYC9V88LnbowhK96L5BAzG8eYkyrsFz596lpV2dzfKR",
        "0gKVeKpYzKF",
        "eKTJImBpvoDH8lqywkmTUPWCOMLNTFt0l82XyIcQLyA=",
    ),
    (
        "acme_dev_hT3q3igqlEH1oacgsieFTsNhxiwZ4rWNtI3dmVwF4UyJEsCaKa3v29KKPQ",
        "hT3q3igqlEH",
        "AcaR6kWjgTpg8FieO/2iRJ/9srwqKExWhYNwBkTSPl4=",
    ),
];

/// The regex published in docs/key-format.md for secret scanners.
const SCANNER_REGEX: &str = r"\b[a-z][a-z0-9_]{0,14}_[0-9A-Za-z]{58}\b";

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[0x42; 32]).unwrap()).unwrap())
        .with_prefix("acme_dev_", Environment::Test)
        .unwrap()
}

fn b62(text: &[u8]) -> u128 {
    text.iter().fold(0u128, |acc, c| {
        acc * 62 + ALPHABET.iter().position(|a| a == c).unwrap() as u128
    })
}

#[test]
fn generation_matches_vectors() {
    let v = verifier();
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    for (text, id, digest) in VECTORS {
        let prefix = &text[..text.len() - ApiKey::BODY_LEN];
        let (key, record) = v
            .issue_with_rng(NewKey::new(prefix), apikey::Timestamp::MIN, &mut rng)
            .unwrap();
        assert_eq!(key.expose_secret(), *text);
        assert_eq!(record.id.to_string(), *id);
        assert_eq!(record.digest.to_base64(), *digest);
        assert_eq!(record.secret_version, 1);
    }
}

#[test]
fn vectors_parse_and_verify() {
    let v = verifier();
    for (text, id, digest) in VECTORS {
        let parsed = v.parse(text).unwrap();
        assert_eq!(parsed.id().to_string(), *id);
        let (ver, d) = v.rehash(&parsed).unwrap();
        assert_eq!(ver, 1);
        assert_eq!(d.to_base64(), *digest);
    }
}

/// Re-implements the format from docs/key-format.md alone, with the
/// `hkdf`, `hmac`, `siphasher` and `crc32fast` crates, and returns the
/// expected digest (base64) after checking every other field.
fn reference_check(secret: &[u8], text: &str, id: &str) -> String {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"apikey/v1"), secret);
    let mut tag_key = [0u8; 16];
    let mut digest_key = [0u8; 32];
    hk.expand(b"apikey/v1 tag key", &mut tag_key).unwrap();
    hk.expand(b"apikey/v1 digest key", &mut digest_key).unwrap();
    let re = regex::Regex::new(SCANNER_REGEX).unwrap();
    {
        assert!(re.is_match(text), "scanner regex must match {text}");
        let bytes = text.as_bytes();
        let split = bytes.len() - ApiKey::BODY_LEN;
        let (prefix, body) = bytes.split_at(split);
        // Checksum: CRC-32 (IEEE) of everything before the last 6 chars.
        let crc = crc32fast::hash(&bytes[..bytes.len() - 6]);
        assert_eq!(b62(&body[52..58]), u128::from(crc));
        // Id: least significant base62 digit first.
        let mut id_be = body[0..11].to_vec();
        id_be.reverse();
        let id_value = b62(&id_be);
        assert_eq!(std::str::from_utf8(&body[0..11]).unwrap(), id);
        // Version.
        let version = b62(&body[11..12]) as u8;
        // Tag: SipHash-2-4 of everything before it, mod 62^8.
        let mut sip = siphasher::sip::SipHasher24::new_with_key(&tag_key);
        sip.write(&bytes[..split + 44]);
        assert_eq!(b62(&body[44..52]), u128::from(sip.finish() % 62u64.pow(8)));
        // Digest: HMAC-SHA256(len(prefix) || prefix || version || id LE || packed secret).
        let mut packed = Vec::new();
        for quad in body[12..44].chunks(4) {
            let v = quad.iter().fold(0u32, |acc, c| {
                (acc << 6) | ALPHABET.iter().position(|a| a == c).unwrap() as u32
            });
            packed.extend_from_slice(&v.to_be_bytes()[1..]);
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&digest_key).unwrap();
        mac.update(&[prefix.len() as u8]);
        mac.update(prefix);
        mac.update(&[version]);
        mac.update(&(id_value as u64).to_le_bytes());
        mac.update(&packed);
        KeyDigest::from_bytes(mac.finalize().into_bytes().into()).to_base64()
    }
}

#[test]
fn independent_implementation_agrees_on_the_vectors() {
    for (text, id, digest) in VECTORS {
        assert_eq!(reference_check(&[0x42; 32], text, id), *digest);
    }
}

#[test]
fn independent_implementation_agrees_on_issue_and_verify_paths() {
    let secret = [0x17u8; 32];
    let v = Verifier::new(Keyring::new(5, ServerSecret::from_bytes(&secret).unwrap()).unwrap());
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    for prefix in ["sk_live_", "sk_test_", "kwi_sk_"] {
        for _ in 0..50 {
            let (key, record) = v
                .issue_with_rng(NewKey::new(prefix), apikey::Timestamp::MIN, &mut rng)
                .unwrap();
            let text = key.expose_secret();
            let id = record.id.to_string();
            let want = reference_check_v(&secret, text, &id, b'5');
            assert_eq!(record.digest.to_base64(), want, "issued digest");
            let parsed = v.parse(text).unwrap();
            assert_eq!(
                v.rehash(&parsed).unwrap().1.to_base64(),
                want,
                "verify-path digest"
            );
        }
    }
}

fn reference_check_v(secret: &[u8], text: &str, id: &str, version_char: u8) -> String {
    assert_eq!(
        text.as_bytes()[text.len() - ApiKey::BODY_LEN + 11],
        version_char
    );
    reference_check(secret, text, id)
}

#[test]
fn display_form() {
    let v = verifier();
    let (key, record) = v
        .issue(NewKey::new("kwi_sk_"), apikey::Timestamp::MIN)
        .unwrap();
    let shown = record.display_form();
    assert_eq!(shown, key.display_form());
    assert_eq!(shown.len(), "kwi_sk_".len() + 5 + 3);
    assert!(key.expose_secret().starts_with(&shown[..shown.len() - 3]));
    assert_eq!(format!("{key}"), shown);
    assert_eq!(format!("{key:?}"), format!("ApiKey({shown:?})"));
}

#[test]
fn key_id_text_is_canonical() {
    assert!("zzzzzzzzzzz".parse::<KeyId>().is_err()); // > 2^64
    assert!("0000000000".parse::<KeyId>().is_err());
    assert!("0000000000_".parse::<KeyId>().is_err());
    let max = KeyId::from_u64(u64::MAX);
    assert_eq!(max.to_string().parse::<KeyId>().unwrap(), max);
}

#[test]
fn non_canonical_id_is_rejected() {
    // An id field above 2^64 - 1 with a valid checksum: no issued key has it.
    let v = verifier();
    let (text, _, _) = VECTORS[0];
    let mut bytes = text.as_bytes().to_vec();
    let split = bytes.len() - ApiKey::BODY_LEN;
    bytes[split..split + 11].copy_from_slice(b"zzzzzzzzzzz");
    let crc = crc32fast::hash(&bytes[..bytes.len() - 6]);
    let mut c = u128::from(crc);
    let n = bytes.len();
    for i in (n - 6..n).rev() {
        bytes[i] = ALPHABET[(c % 62) as usize];
        c /= 62;
    }
    let forged = String::from_utf8(bytes).unwrap();
    let err = v.parse(&forged).unwrap_err();
    assert!(matches!(
        err,
        Error::MalformedApiKey(MalformedReason::NonCanonical)
    ));
}
