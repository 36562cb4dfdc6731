//! The stored digest, recomputed from its definition with the `hkdf` and
//! `hmac` crates (independently of the crate's fast two-compression path):
//! HMAC-SHA256 under HKDF-SHA256(salt "apikey/v1", secret) expanded with
//! "apikey/v1 digest key", over len(prefix) || prefix || version ||
//! id (u64 little-endian) || the 32 secret digits packed as 6-bit values.

#![allow(clippy::unwrap_used)]

use apikey::{Keyring, NewKey, ServerSecret, Verifier};
use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sha2::Sha256;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn reference_digest(secret: &[u8], key: &str, prefix: &str) -> [u8; 32] {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"apikey/v1"), secret);
    let mut digest_key = [0u8; 32];
    hk.expand(b"apikey/v1 digest key", &mut digest_key).unwrap();
    let body = &key.as_bytes()[prefix.len()..];
    let digit = |c: u8| BASE62.iter().position(|&b| b == c).unwrap() as u64;
    let version = digit(body[0]) as u8;
    let id = body[1..12]
        .iter()
        .fold(0u128, |a, &c| a * 62 + u128::from(digit(c))) as u64;
    let mut packed = Vec::new();
    for quad in body[12..44].chunks(4) {
        let v = quad.iter().fold(0u64, |a, &c| (a << 6) | digit(c));
        packed.extend_from_slice(&v.to_be_bytes()[5..]);
    }
    let mut msg = vec![prefix.len() as u8];
    msg.extend_from_slice(prefix.as_bytes());
    msg.push(version);
    msg.extend_from_slice(&id.to_le_bytes());
    msg.extend_from_slice(&packed);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&digest_key).unwrap();
    mac.update(&msg);
    mac.finalize().into_bytes().into()
}

#[test]
fn issued_and_verified_digests_match_the_definition() {
    let secret = [0x42u8; 32];
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&secret).unwrap()).unwrap());
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let now = time::OffsetDateTime::UNIX_EPOCH;
    for prefix in ["sk_live_", "sk_test_", "kwi_sk_"] {
        for _ in 0..50 {
            let (key, record) = verifier
                .issue_with_rng(NewKey::new(prefix), now, &mut rng)
                .unwrap();
            let want = reference_digest(&secret, key.expose_secret(), prefix);
            assert_eq!(record.digest.as_bytes(), &want, "issued digest");
            // The verify path (parse, pack, two-compression HMAC) agrees.
            let parsed = verifier.parse(key.expose_secret()).unwrap();
            let (_, rehashed) = verifier.rehash(&parsed).unwrap();
            assert_eq!(rehashed.as_bytes(), &want, "verify-path digest");
        }
    }
}
