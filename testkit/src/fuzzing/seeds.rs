//! The seed corpus for `fuzz/seeds/`.

use super::*;

/// The seed corpus: `(target, file name, bytes)` for every fuzz target, one
/// valid key per prefix (and per secret version) where the target takes
/// keys. Deterministic; `fuzz/seeds/` holds exactly this (a test checks).
pub fn seed_corpus() -> Vec<(&'static str, String, Vec<u8>)> {
    let h = Harness::new();
    let mut out = Vec::new();
    for (i, (key, rec)) in h.keys().iter().enumerate() {
        let name = format!("{}v{}", key.prefix(), rec.secret_version);
        out.push((
            "parse_key",
            name.clone(),
            key.expose_secret().as_bytes().to_vec(),
        ));
        let n = h.keys().len();
        // Exact key i, stored as issued, no requirement.
        let mut script = vec![0u8; n];
        script.extend_from_slice(&[0, 0, 0, i as u8]);
        out.push(("verify", format!("{name}_exact"), script));
        // Key i's store record revoked, then the key as raw text.
        let mut script = vec![0u8; n];
        script[i] = 2;
        script.extend_from_slice(&[0, 1, 4]);
        script.extend_from_slice(key.expose_secret().as_bytes());
        out.push(("verify", format!("{name}_revoked_raw"), script));
        // One arbitrary record copying key i's id and digest.
        let version_byte = if rec.secret_version == 2 { 1 } else { 0 };
        let prefix_byte = h
            .verifier()
            .prefixes()
            .find(key.prefix())
            .map_or(0, |(p, _)| p as u8);
        let mut script = vec![4u8; n];
        script.extend_from_slice(&[1, 1, i as u8, 1, i as u8, version_byte, prefix_byte]);
        script.extend_from_slice(&[0, 0, 0xff, 0, 0]);
        script.push(i as u8);
        out.push(("verify", format!("{name}_copied_record"), script));
        if let Ok(json) = serde_json::to_vec_pretty(rec) {
            out.push(("record_json", name, json));
        }
    }
    for (i, (key, rec)) in h.keys().iter().enumerate() {
        let k = key.expose_secret();
        let name = format!("{}v{}", key.prefix(), rec.secret_version);
        let cases: [(&str, u8, String); 3] = [
            ("api_key_header", 0, format!("x-api-key: {k}")),
            (
                "bearer",
                0,
                format!("Authorization: Bearer {k}\nX-API-Key: {k}"),
            ),
            (
                "query",
                4 | 64,
                format!("q=1&api_key={k}\nauthorization: Basic dXNlcjpwYXNz"),
            ),
        ];
        if i == 0 {
            out.push((
                "header_extraction",
                "jwt".to_owned(),
                b"\x00Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig".to_vec(),
            ));
        }
        for (what, config, text) in cases {
            let mut bytes = vec![config];
            bytes.extend_from_slice(text.as_bytes());
            out.push(("header_extraction", format!("{name}_{what}"), bytes));
        }
    }
    // Extreme times: the clock at each end of the range and past it, then
    // create, update, get, list, authenticate and verify.
    for (name, selector) in [
        ("max_time", 1u8),
        ("past_max_time", 3),
        ("extreme_offset", 5),
        ("year_2262", 8),
    ] {
        let mut script = vec![0, selector, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        script.extend_from_slice(&[1, 0, 0, 2, 0, 4, 5, 6, 8, 1, 0, 0, 0, 0, 0, 0, 0]);
        script.extend_from_slice(&[0; 8]);
        out.push(("extreme_times", name.to_owned(), script));
    }
    for (name, text) in [
        ("wildcards", "projects:*\nprojects:42:read\n*\nprojects"),
        ("grammar", "tasks:read\ntasks:*\nread\ncorpus:42:query"),
        ("edge", "a-b_c:d:*\n*:a\nA\n\na::b"),
    ] {
        out.push(("scope_grammar", name.to_owned(), text.as_bytes().to_vec()));
    }
    out
}

/// Rewrites the last six characters of `text` with the correct checksum of
/// the rest, so a harness can build inputs that pass the checksum and must be
/// stopped by the keyed tag (forged keys). `None` when `text` is shorter than
/// six bytes or the result is not UTF-8.
///
/// ```
/// # use apikey::*;
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
/// let (key, _) = verifier.issue(NewKey::new("sk_live_"), apikey::Timestamp::MIN)?;
/// let mut forged = key.expose_secret().as_bytes().to_vec();
/// forged[20] = if forged[20] == b'a' { b'b' } else { b'a' }; // inside the secret
/// let forged = apikey_testkit::fuzzing::with_valid_checksum(forged).expect("long enough");
/// assert!(matches!(verifier.parse(&forged), Err(Error::InvalidApiKey))); // the tag stops it
/// # Ok::<(), apikey::Error>(())
/// ```
pub fn with_valid_checksum(mut text: Vec<u8>) -> Option<String> {
    if text.len() < 6 {
        return None;
    }
    apikey::__private::write_checksum(&mut text);
    String::from_utf8(text).ok()
}
