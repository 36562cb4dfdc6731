//! The shipped scanner rules run by the real scanners over a file holding
//! issued keys, look-alikes and near misses.
//!
//! * detect-secrets (`pip install detect-secrets`) with
//!   `scanners/detect_secrets_apikey.py` must report exactly the issued keys
//!   and the forged ones (a valid checksum; the keyed tag needs the
//!   service's secret), and no mistyped key, random look-alike or near miss.
//! * gitleaks with `scanners/gitleaks.toml` (no checksum hook: shape only)
//!   must report every key-shaped string and no near miss. gitleaks has no
//!   Debian 12 or PyPI package, so its run is skipped when it is absent
//!   unless `APIKEY_REQUIRE_GITLEAKS=1`; the rule's regular expression is
//!   checked here in any case (RE2 syntax, which Rust's `regex` shares).
//!
//! A missing detect-secrets fails the test when `CI=true`, and is skipped
//! with a message otherwise.

#![allow(clippy::unwrap_used)]

use apikey::Timestamp;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use apikey::{Error, Keyring, MalformedReason, NewKey, ServerSecret, Verifier};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Issued,
    /// Right shape and checksum, wrong tag.
    Forged,
    /// One character changed: the checksum fails.
    Mistyped,
    /// Random characters of the right shape: the checksum fails.
    LookAlike,
    /// Wrong length, prefix, alphabet or boundaries.
    NearMiss,
}

struct Fixture {
    text: String,
    /// (1-based line, kind)
    lines: Vec<(usize, Kind)>,
}

fn fixture() -> Fixture {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[0x42; 32]).unwrap()).unwrap());
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let now = Timestamp::from_unix_secs(1_795_564_800).unwrap();
    let mut entries: Vec<(Kind, String)> = Vec::new();
    let mut issued = Vec::new();
    for prefix in ["sk_live_", "sk_test_", "kwi_sk_"] {
        for _ in 0..3 {
            let (key, _) = verifier
                .issue_with_rng(NewKey::new(prefix), now, &mut rng)
                .unwrap();
            issued.push(key.expose_secret().to_owned());
        }
    }
    for (i, key) in issued.iter().enumerate() {
        entries.push((Kind::Issued, format!("API_KEY_{i}=\"{key}\"")));
        // Forged: a secret character changed, checksum recomputed.
        let mut b = key.as_bytes().to_vec();
        let pos = key.len() - 20;
        b[pos] = if b[pos] == b'a' { b'b' } else { b'a' };
        let forged = apikey_testkit::fuzzing::with_valid_checksum(b).unwrap();
        assert!(matches!(verifier.parse(&forged), Err(Error::InvalidApiKey)));
        entries.push((Kind::Forged, format!("forged_{i}: {forged}")));
        // Mistyped: one character changed, checksum not.
        let mut b = key.as_bytes().to_vec();
        let pos = key.len() - 30;
        b[pos] = if b[pos] == b'Q' { b'R' } else { b'Q' };
        let mistyped = String::from_utf8(b).unwrap();
        assert!(matches!(
            verifier.parse(&mistyped),
            Err(Error::MalformedApiKey(MalformedReason::Checksum))
        ));
        entries.push((Kind::Mistyped, format!("token = '{mistyped}'")));
    }
    // Random look-alikes.
    let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for prefix in ["sk_live_", "sk_test_", "kwi_sk_"] {
        let body: String = (0..58)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                alphabet[(state % 62) as usize] as char
            })
            .collect();
        let fake = format!("{prefix}{body}");
        assert!(matches!(
            verifier.parse(&fake),
            Err(Error::MalformedApiKey(MalformedReason::Checksum))
        ));
        entries.push((Kind::LookAlike, format!("example: {fake}")));
    }
    // Near misses, from a real key.
    let k = &issued[0];
    let body = &k["sk_live_".len()..];
    for near in [
        format!("short {}", &k[..k.len() - 1]),
        format!("long {k}7"),
        format!("prefix sk_prod_{body}"),
        format!("upper SK_LIVE_{body}"),
        format!("glued xsk_live_{body}"),
        format!("dash sk_live_{}-{}", &body[..20], &body[21..]),
    ] {
        entries.push((Kind::NearMiss, near));
    }
    let mut text = String::from("# scanner fixture: issued keys, look-alikes, near misses\n");
    let mut lines = Vec::new();
    for (i, (kind, line)) in entries.into_iter().enumerate() {
        text.push_str(&line);
        text.push('\n');
        lines.push((i + 2, kind));
    }
    Fixture { text, lines }
}

fn expected(f: &Fixture, kinds: &[Kind]) -> BTreeSet<usize> {
    f.lines
        .iter()
        .filter(|(_, k)| kinds.contains(k))
        .map(|(l, _)| *l)
        .collect()
}

fn write_fixture(f: &Fixture, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("apikey-leak-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("settings.env");
    std::fs::write(&path, &f.text).unwrap();
    path
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn detect_secrets_reports_issued_and_checksum_valid_keys_only() {
    if !available("detect-secrets") {
        assert!(
            !in_ci(),
            "detect-secrets is required when CI=true: `pip install detect-secrets`"
        );
        eprintln!(
            "SKIPPED detect_secrets_reports_issued_and_checksum_valid_keys_only: detect-secrets is not installed (`pip install detect-secrets`)"
        );
        return;
    }
    let f = fixture();
    let path = write_fixture(&f, "detect-secrets");
    let out = Command::new("detect-secrets")
        .arg("scan")
        .arg("--plugin")
        .arg(repo().join("scanners/detect_secrets_apikey.py"))
        // Run from the fixture's own directory: inside a git work tree
        // detect-secrets scans only files under it.
        .arg(path.file_name().unwrap())
        .current_dir(path.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: BTreeSet<usize> = report["results"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|v| v.as_array().unwrap().iter())
        .filter(|r| r["type"] == "apikey secret key")
        .map(|r| r["line_number"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        found,
        expected(&f, &[Kind::Issued, Kind::Forged]),
        "fixture:\n{}",
        f.text
    );
}

/// The rule's regular expression, read from the TOML.
fn gitleaks_regex() -> regex::Regex {
    let toml = std::fs::read_to_string(repo().join("scanners/gitleaks.toml")).unwrap();
    let line = toml.lines().find(|l| l.starts_with("regex = '''")).unwrap();
    let pattern = line
        .trim_start_matches("regex = '''")
        .trim_end_matches("'''");
    regex::Regex::new(pattern).unwrap()
}

#[test]
fn the_gitleaks_rule_matches_key_shapes_and_no_near_miss() {
    let f = fixture();
    let re = gitleaks_regex();
    let found: BTreeSet<usize> = f
        .text
        .lines()
        .enumerate()
        .filter(|(_, l)| re.is_match(l))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        found,
        expected(
            &f,
            &[Kind::Issued, Kind::Forged, Kind::Mistyped, Kind::LookAlike]
        )
    );
}

#[test]
fn gitleaks_reports_key_shapes_and_no_near_miss() {
    if !available("gitleaks") {
        assert!(
            std::env::var("APIKEY_REQUIRE_GITLEAKS").is_err(),
            "gitleaks is required when APIKEY_REQUIRE_GITLEAKS is set"
        );
        eprintln!(
            "SKIPPED gitleaks_reports_key_shapes_and_no_near_miss: gitleaks is not installed (no Debian 12 or PyPI package; set APIKEY_REQUIRE_GITLEAKS=1 where it is)"
        );
        return;
    }
    let f = fixture();
    let path = write_fixture(&f, "gitleaks");
    let report = path.with_file_name("report.json");
    let out = Command::new("gitleaks")
        .args([
            "detect",
            "--no-git",
            "--no-banner",
            "--exit-code",
            "0",
            "--report-format",
            "json",
        ])
        .arg("--config")
        .arg(repo().join("scanners/gitleaks.toml"))
        .arg("--source")
        .arg(&path)
        .arg("--report-path")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let found: BTreeSet<usize> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["RuleID"] == "apikey-secret-key")
        .map(|r| r["StartLine"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        found,
        expected(
            &f,
            &[Kind::Issued, Kind::Forged, Kind::Mistyped, Kind::LookAlike]
        )
    );
}
