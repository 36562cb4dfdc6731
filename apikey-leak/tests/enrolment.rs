//! The enrolment kit in `docs/leak-response.md` is consistent with the
//! code: its test keys are keys (issued under the documented test secret),
//! its regular expressions match them and the scanner rules' prefixes, and
//! its type names are the ones the policy table lists.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use apikey::{Keyring, ServerSecret, Verifier};

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/leak-response.md");
    std::fs::read_to_string(path).unwrap()
}

/// The documented test secret: 32 bytes of 0x42, version 1.
fn test_verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[0x42; 32]).unwrap()).unwrap())
}

/// Rows of the prefix table: (prefix, type name, regex).
fn table(doc: &str) -> Vec<(String, String, String)> {
    doc.lines()
        .filter(|l| l.starts_with("| `") && l.contains("[0-9A-Za-z]{58}"))
        .map(|l| {
            let cells: Vec<&str> = l
                .split(" | ")
                .map(|c| c.trim_matches(['|', ' ', '`']))
                .collect();
            (
                cells[0].to_owned(),
                cells[1].to_owned(),
                cells[2].replace("\\|", "|"),
            )
        })
        .collect()
}

#[test]
fn the_documented_test_keys_are_issued_keys_matched_by_the_documented_regexes() {
    let doc = doc();
    let rows = table(&doc);
    assert_eq!(
        rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["sk_live_", "sk_test_", "kwi_sk_"]
    );
    let verifier = test_verifier();
    let keys: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("Test key (`"))
        .map(|l| l.split('`').nth(2).unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "two test keys");
    for key in keys {
        verifier.parse(key).unwrap();
        let row = rows.iter().find(|r| key.starts_with(&r.0)).unwrap();
        let re = regex::Regex::new(&row.2).unwrap();
        let line = format!("token: {key}\n");
        let caps = re.captures(&line).unwrap();
        assert_eq!(&caps[1], key);
        assert!(
            !re.is_match(&format!("x{key}")),
            "no match inside a longer word"
        );
    }
}

#[test]
fn the_scanner_rules_cover_the_documented_prefixes() {
    let rows = table(&doc());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let gitleaks = std::fs::read_to_string(root.join("scanners/gitleaks.toml")).unwrap();
    let plugin = std::fs::read_to_string(root.join("scanners/detect_secrets_apikey.py")).unwrap();
    for (prefix, _, _) in rows {
        let regex_line = gitleaks
            .lines()
            .find(|l| l.starts_with("regex = "))
            .unwrap();
        assert!(
            regex_line.contains(&prefix),
            "{prefix} in the gitleaks regex"
        );
        assert!(
            gitleaks.contains(&format!("\"{prefix}\"")),
            "{prefix} in the gitleaks keywords"
        );
        assert!(plugin.contains(&format!("\"{prefix}\"")), "{prefix}");
    }
}
