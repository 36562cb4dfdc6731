//! Shared test fixtures: a fake GitHub holding a P-256 key, and a manager
//! over a store that counts every call.

#![allow(dead_code, clippy::unwrap_used)]

use apikey::Timestamp;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use apikey::{
    Actor, ApiKey, KeyManager, Keyring, ManualClock, MemoryAuditSink, NewKey, ServerSecret,
    Verifier,
};
use apikey_leak::{GithubEndpoint, LeakError, LeakResponder, PublicKeySet, Report};
use apikey_testkit::netstore::NetStore;
use base64ct::{Base64, Encoding};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

/// A stand-in for GitHub: signs alert bodies with its own P-256 key.
pub struct FakeGithub {
    key: SigningKey,
    /// The identifier GitHub would publish for the key.
    pub key_id: String,
}

impl FakeGithub {
    /// A key derived from `seed` (any value but 0 makes a valid scalar).
    pub fn new(seed: u8) -> Self {
        let key = SigningKey::from_slice(&[seed; 32]).unwrap();
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let key_id = Sha256::digest(pem.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self { key, key_id }
    }

    /// The public key, PEM.
    pub fn pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    /// A key set holding this key.
    pub fn keys(&self) -> PublicKeySet {
        PublicKeySet::new()
            .with_pem(&self.key_id, &self.pem())
            .unwrap()
    }

    /// GitHub's published JSON for these fakes.
    pub fn published(fakes: &[&FakeGithub]) -> String {
        let keys: Vec<_> = fakes
            .iter()
            .map(|f| serde_json::json!({"key_identifier": f.key_id, "key": f.pem(), "is_current": true}))
            .collect();
        serde_json::json!({ "public_keys": keys }).to_string()
    }

    /// Posts `body`, signed, to `endpoint`, as GitHub does.
    pub async fn post<S, K, C, L>(
        &self,
        endpoint: &GithubEndpoint<S, K, C, L>,
        body: &str,
    ) -> Result<Report, LeakError>
    where
        S: apikey::KeyStoreWrite + apikey::UsageStore,
        K: apikey_leak::KeySource,
        C: apikey::Clock,
        L: apikey::limits::Limits,
    {
        endpoint
            .handle(
                Some(&self.key_id),
                Some(&self.sign(body.as_bytes())),
                body.as_bytes(),
            )
            .await
    }

    /// The `Github-Public-Key-Signature` value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let signature: Signature = self.key.sign(body);
        Base64::encode_string(signature.to_der().as_bytes())
    }
}

/// An alert body as GitHub writes it (compact JSON).
pub fn alert(tokens: &[&str]) -> String {
    let matches: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({
                "token": t,
                "type": "apikey_secret_key",
                "url": format!("https://github.com/octo/repo/blob/abc/file{i}.env"),
                "source": "content",
            })
        })
        .collect();
    serde_json::to_string(&matches).unwrap()
}

pub type Manager = KeyManager<Arc<NetStore>, ManualClock>;

/// A manager over a counting store, its audit log and a fixed clock.
pub struct World {
    pub manager: Arc<Manager>,
    pub store: Arc<NetStore>,
    pub audit: Arc<MemoryAuditSink>,
    pub verifier: Verifier,
}

pub fn now() -> apikey::Timestamp {
    Timestamp::from_unix_secs(1_795_564_800).unwrap()
}

pub fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7u8; 32]).unwrap()).unwrap())
        .with_prefix("pk_live_", apikey::Environment::Live)
        .unwrap()
        .with_prefix("acme_pk_", apikey::Environment::Live)
        .unwrap()
}

impl World {
    pub fn new() -> Self {
        Self::build(|m| m)
    }

    /// A world whose manager imports keys under the legacy prefix `oldco_`
    /// (stored under `sk_live_`).
    pub fn with_legacy() -> Self {
        Self::build(|m| m.with_legacy_prefix("oldco_", "sk_live_").unwrap())
    }

    fn build(adjust: impl FnOnce(Manager) -> Manager) -> Self {
        let store = NetStore::new(Duration::ZERO);
        let audit = Arc::new(MemoryAuditSink::new());
        let verifier = verifier();
        // Publishable (`pk_`) keys hold only public scopes and carry an
        // origin allowlist.
        let manager =
            KeyManager::with_clock(verifier.clone(), store.clone(), ManualClock::new(now()))
                .with_audit_sink(audit.clone())
                .with_public_scopes(["search:query"])
                .unwrap();
        Self {
            manager: Arc::new(adjust(manager)),
            store,
            audit,
            verifier,
        }
    }

    /// A responder writing to the same audit log.
    pub fn responder(&self) -> LeakResponder<Arc<NetStore>, ManualClock> {
        LeakResponder::new(self.manager.clone()).with_audit_sink(self.audit.clone())
    }

    /// Creates a key under `prefix` for `owner`.
    pub async fn key(&self, prefix: &str, owner: &str) -> ApiKey {
        let mut new = NewKey::new(prefix).owner(owner);
        if apikey::Prefix::new(prefix).is_ok_and(|p| p.is_publishable()) {
            new = new.scopes(["search:query"]).metadata(
                apikey::web::publishable::ALLOWED_ORIGINS,
                "https://shop.example",
            );
        }
        self.manager.create(new, &Actor::system()).await.unwrap().0
    }

    /// Store calls so far.
    pub fn calls(&self) -> u64 {
        self.store.calls.load(Ordering::SeqCst)
    }

    /// Audit events of `kind` so far.
    pub fn events(&self, kind: &str) -> Vec<apikey::AuditEvent> {
        self.audit
            .events()
            .into_iter()
            .filter(|e| e.kind.as_str() == kind)
            .collect()
    }
}

/// A tag-valid key this service never stored (unknown id).
pub fn unknown_key(verifier: &Verifier, n: u64) -> String {
    use rand_chacha::rand_core::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1_000 + n);
    let (key, _) = verifier
        .issue_with_rng(NewKey::new("sk_live_"), now(), &mut rng)
        .unwrap();
    key.expose_secret().to_owned()
}

/// A look-alike with a valid checksum and a wrong tag (forged).
pub fn forged_key(real: &str, n: usize) -> String {
    let mut b = real.as_bytes().to_vec();
    let pos = 8 + 12 + (n % 32); // inside the secret
    b[pos] = if b[pos] == b'a' { b'b' } else { b'a' };
    apikey_testkit::fuzzing::with_valid_checksum(b).unwrap()
}

/// Junk of many shapes: wrong length, alphabet, prefix, checksum.
pub fn junk_key(real: &str, n: usize) -> String {
    match n % 5 {
        0 => format!("not-a-key-{n}"),
        1 => real[..real.len() - 1].to_owned(),
        2 => format!("sk_nope_{}", &real[8..]),
        3 => {
            let mut b = real.as_bytes().to_vec();
            let last = b.len() - 1;
            b[last] = if b[last] == b'0' { b'1' } else { b'0' };
            String::from_utf8(b).unwrap()
        }
        _ => format!("{}!", &real[..real.len() - 1]),
    }
}
