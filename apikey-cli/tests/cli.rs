//! The `apikey` binary, run as a user runs it: every command against a
//! temporary SQLite file and against a throwaway PostgreSQL (its own schema
//! per test), `--json` parsed back, and bad input answered with a clear
//! message and the documented exit status, never with a secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::io::Write as _;
use std::process::{Command, Stdio};

use cli_support::*;

/// Every command, in the order an operator meets them.
fn every_command(env: &Env) {
    // Before migrate: refused, the schema is never changed implicitly.
    let r = env.run(&["keys", "list", "--owner", "user_1"]).fails(3);
    assert!(r.stderr.contains("apikey migrate"), "{r:?}");

    // migrate (twice: it is idempotent).
    assert_eq!(
        env.run(&["--json", "migrate"]).ok().json()["migrated"],
        true
    );
    env.run(&["migrate"]).ok();

    // bootstrap-admin: once.
    let admin = env.run(&["--json", "bootstrap-admin"]).ok().json();
    let admin_key = s(&admin["key"]).to_owned();
    assert!(admin_key.starts_with("sk_live_"));
    assert_eq!(admin["summary"]["owner"], "admin");
    assert_eq!(admin["summary"]["scopes"], serde_json::json!(["admin:*"]));
    let again = env.run(&["--json", "bootstrap-admin"]).fails(5);
    again.never_shows(&admin_key);
    assert_eq!(again.json()["error"]["code"], "ADMIN_EXISTS");
    let verified = env
        .run_with(
            &[
                "--json",
                "keys",
                "verify",
                "--scope",
                "keys:write",
                "--full-access-scope",
                "admin:*",
            ],
            Some(&admin_key),
        )
        .ok()
        .json();
    assert_eq!(verified["valid"], true);

    // create
    let created = env
        .run(&[
            "--json",
            "keys",
            "create",
            "--owner",
            "user_1",
            "--name",
            "CI",
            "--scopes",
            "tasks:read,tasks:write",
            "--metadata",
            "plan=pro",
            "--expires-in",
            "60d",
            "--allow-ip",
            "127.0.0.0/8",
        ])
        .ok()
        .json();
    let key = s(&created["key"]).to_owned();
    let summary = &created["summary"];
    let id = s(&summary["id"]).to_owned();
    assert_no_digest(summary);
    assert_eq!(summary["owner"], "user_1");
    assert_eq!(summary["name"], "CI");
    assert_eq!(summary["state"], "active");
    assert_eq!(summary["environment"], "live");
    assert_eq!(summary["metadata"]["plan"], "pro");
    assert_eq!(summary["ip_allowlist"], serde_json::json!(["127.0.0.0/8"]));
    assert_eq!(
        summary["scopes"],
        serde_json::json!(["tasks:read", "tasks:write"])
    );
    assert!(summary["expires_at"].is_string());
    assert!(s(&summary["display"]).starts_with("sk_live_"));

    // list, show: never the key.
    let list = env
        .run(&["--json", "keys", "list", "--owner", "user_1"])
        .ok();
    list.never_shows(&key);
    let listed = list.json();
    assert_eq!(listed["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["keys"][0]["id"], id.as_str());
    assert_no_digest(&listed);
    let human = env.run(&["keys", "list", "--owner", "user_1"]).ok();
    human.never_shows(&key);
    assert!(
        human.stdout.starts_with("ID ") && human.stdout.contains(&id),
        "{human:?}"
    );
    let shown = env.run(&["--json", "keys", "show", &id]).ok();
    shown.never_shows(&key);
    assert_eq!(shown.json()["name"], "CI");
    // The documented field names (apikey-cli/README.md), no more, no fewer.
    let mut fields: Vec<String> = shown.json().as_object().unwrap().keys().cloned().collect();
    fields.sort();
    let mut documented = [
        "id",
        "display",
        "owner",
        "name",
        "description",
        "environment",
        "scopes",
        "status",
        "state",
        "created_at",
        "last_used_at",
        "last_used_ip",
        "last_used_route",
        "expires_at",
        "not_before",
        "revoked_at",
        "revoked_reason",
        "metadata",
        "ip_allowlist",
        "rotated_from",
        "rotated_to",
        "requests_today",
        "requests_this_month",
        "legacy",
    ];
    documented.sort_unstable();
    assert_eq!(fields, documented);
    env.run(&["keys", "show", &id]).ok().never_shows(&key);

    // verify: valid, invalid with the stable code, allowlist.
    let v = env
        .run_with(
            &[
                "--json",
                "keys",
                "verify",
                "--scope",
                "tasks:read",
                "--ip",
                "127.0.0.1",
            ],
            Some(&key),
        )
        .ok();
    v.never_shows(&key);
    let v = v.json();
    assert_eq!(
        (v["valid"].clone(), v["id"].clone()),
        (Value::Bool(true), Value::String(id.clone()))
    );
    let v = env.run_with(
        &[
            "--json",
            "keys",
            "verify",
            "--scope",
            "billing:read",
            "--ip",
            "127.0.0.1",
        ],
        Some(&key),
    );
    assert_eq!(v.code, 4, "{v:?}");
    assert_eq!(v.json()["code"], "INSUFFICIENT_SCOPE");
    let v = env.run_with(&["keys", "verify", "--ip", "192.0.2.1"], Some(&key));
    assert_eq!(v.code, 4, "{v:?}");
    assert!(v.stdout.starts_with("invalid: IP_NOT_ALLOWED"), "{v:?}");

    // disable / enable
    let d = env.run(&["--json", "keys", "disable", &id]).ok().json();
    assert_eq!(d["state"], "disabled");
    let v = env.run_with(
        &["--json", "keys", "verify", "--ip", "127.0.0.1", "-"],
        Some(&key),
    );
    assert_eq!(
        (v.code, v.json()["code"].clone()),
        (4, Value::from("DISABLED_API_KEY"))
    );
    assert_eq!(
        env.run(&["--json", "keys", "enable", &id]).ok().json()["state"],
        "active"
    );

    // rotate: the new key works, the old one during its grace.
    let rotated = env
        .run(&["--json", "keys", "rotate", &id, "--grace", "1h"])
        .ok()
        .json();
    let new_key = s(&rotated["key"]).to_owned();
    let new_id = s(&rotated["summary"]["id"]).to_owned();
    assert_ne!(new_id, id);
    assert_eq!(rotated["summary"]["rotated_from"], id.as_str());
    assert_eq!(rotated["previous"]["state"], "rotation_grace");
    assert_eq!(rotated["previous"]["rotated_to"], new_id.as_str());
    for k in [&key, &new_key] {
        env.run_with(&["keys", "verify", "--ip", "127.0.0.1"], Some(k))
            .ok();
    }
    // The crate's own metadata reads as what it means; --json keeps it as
    // stored.
    let shown = env.run(&["keys", "show", &new_id]).ok();
    assert!(
        shown.stdout.contains(&format!("spends from         {id}")),
        "{shown:?}"
    );
    assert!(!shown.stdout.contains("apikey.limits_of"), "{shown:?}");
    assert!(
        shown.stdout.contains("metadata            plan=pro"),
        "{shown:?}"
    );
    assert_eq!(
        rotated["summary"]["metadata"]["apikey.limits_of"],
        id.as_str()
    );

    // expiring: a key of another owner that expires in 5 days, soonest first.
    let soon = env
        .run(&[
            "--json",
            "keys",
            "create",
            "--owner",
            "user_2",
            "--expires-in",
            "5d",
        ])
        .ok()
        .json();
    let soon_id = s(&soon["summary"]["id"]).to_owned();
    let expiring = env
        .run(&["--json", "keys", "expiring", "--within", "30d"])
        .ok()
        .json();
    let ids: Vec<&str> = expiring["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| s(&k["id"]))
        .collect();
    assert_eq!(
        ids,
        [soon_id.as_str()],
        "the rotated key and keys without expiry are left out"
    );
    let mine = env
        .run(&[
            "--json", "keys", "expiring", "--within", "30d", "--owner", "user_1",
        ])
        .ok()
        .json();
    assert_eq!(mine["keys"], serde_json::json!([]));
    env.run(&["keys", "expiring"]).ok();

    // sweep: an auto-renewing key expiring in 3 days is renewed (same key,
    // later expiry), the 5-day key gets its notice; a second run has
    // nothing left to do.
    let renewing = env
        .run(&[
            "--json",
            "keys",
            "create",
            "--owner",
            "user_2",
            "--expires-in",
            "3d",
            "--auto-renew",
        ])
        .ok()
        .json();
    let renewing_id = s(&renewing["summary"]["id"]).to_owned();
    let before = s(&renewing["summary"]["expires_at"]).to_owned();
    let report = env.run(&["--json", "keys", "sweep"]).ok().json();
    assert_eq!(
        (report["renewed"].clone(), report["failed"].clone()),
        (Value::from(1), serde_json::json!([])),
        "{report}"
    );
    assert!(report["notified"].as_u64().unwrap() >= 1, "{report}");
    let after = env
        .run(&["--json", "keys", "show", &renewing_id])
        .ok()
        .json();
    assert!(s(&after["expires_at"]) > before.as_str(), "{after}");
    env.run_with(&["keys", "verify"], Some(s(&renewing["key"])))
        .ok();
    let again = env.run(&["--json", "keys", "sweep"]).ok().json();
    assert_eq!(
        (again["renewed"].clone(), again["notified"].clone()),
        (0.into(), 0.into())
    );
    env.run(&["keys", "sweep", "--renew-before", "1d"]).ok();
    let r = env
        .run(&[
            "--json",
            "keys",
            "create",
            "--owner",
            "user_2",
            "--auto-renew",
        ])
        .fails(1);
    assert!(r.stderr.contains("--auto-renew needs an expiry"), "{r:?}");

    // usage: of one key and of an owner's keys.
    let usage = env.run(&["--json", "keys", "usage", &new_id]).ok().json();
    assert_eq!(usage["keys"][0]["id"], new_id.as_str());
    assert_eq!(
        usage["keys"][0]["requests_today"], 0,
        "`keys verify` (run on this key above) is not counted as a use"
    );
    assert!(usage["keys"][0]["requests_this_month"].is_u64());
    let usage = env
        .run(&["--json", "keys", "usage", "--owner", "user_1"])
        .ok()
        .json();
    assert_eq!(usage["keys"].as_array().map(Vec::len), Some(2));
    env.run(&["keys", "usage", "--owner", "user_1"]).ok();

    // revoke: for good.
    let r = env
        .run(&[
            "--json",
            "keys",
            "revoke",
            &new_id,
            "--reason",
            "left the company",
        ])
        .ok()
        .json();
    assert_eq!(
        (r["state"].clone(), r["revoked_reason"].clone()),
        ("revoked".into(), "left the company".into())
    );
    let v = env.run_with(
        &["--json", "keys", "verify", "--ip", "127.0.0.1"],
        Some(&new_key),
    );
    assert_eq!(
        (v.code, v.json()["code"].clone()),
        (4, Value::from("REVOKED_API_KEY"))
    );
    let refused = env.run(&["--json", "keys", "enable", &new_id]).fails(5);
    assert_eq!(refused.json()["error"]["code"], "INVALID_STATE");

    // revoke --owner: every key of a user removed from the account.
    let mut user_3 = Vec::new();
    for _ in 0..2 {
        let k = env
            .run(&["--json", "keys", "create", "--owner", "user_3"])
            .ok()
            .json();
        user_3.push(s(&k["key"]).to_owned());
    }
    let r = env
        .run(&[
            "--json", "keys", "revoke", "--owner", "user_3", "--reason", "removed",
        ])
        .ok()
        .json();
    assert_eq!(r["revoked"].as_array().map(Vec::len), Some(2), "{r}");
    for k in &user_3 {
        let v = env.run_with(&["--json", "keys", "verify"], Some(k));
        assert_eq!(
            (v.code, v.json()["code"].clone()),
            (4, Value::from("REVOKED_API_KEY"))
        );
    }
    let r = env
        .run(&["keys", "revoke", "--owner", "user_3", "--reason", "again"])
        .ok();
    assert!(r.stdout.contains("revoked 0 keys"), "{r:?}");
    env.run(&["keys", "revoke", "--reason", "no target"])
        .fails(1);
    env.run(&[
        "keys", "revoke", &new_id, "--owner", "user_3", "--reason", "x",
    ])
    .fails(1);

    // delete, then not found.
    assert_eq!(
        env.run(&["--json", "keys", "delete", &soon_id]).ok().json()["deleted"],
        soon_id.as_str()
    );
    let gone = env.run(&["--json", "keys", "show", &soon_id]).fails(2);
    assert_eq!(gone.json()["error"]["code"], "KEY_NOT_FOUND");
    env.run(&["keys", "delete", &soon_id]).fails(2);

    // With the admin key revoked, bootstrap-admin works again.
    let admin_id = s(&admin["summary"]["id"]).to_owned();
    env.run(&["keys", "revoke", &admin_id, "--reason", "lost"])
        .ok();
    env.run(&["bootstrap-admin"]).ok();

    import_jsonl_and_csv(env);
}

/// `keys import`: plaintext and SHA-256 lines, a bad line reported by
/// number without its key, imported keys verifying, a rerun skipping them.
fn import_jsonl_and_csv(env: &Env) {
    let plain = "oldco_Pl4inLegacyKeyNumber0001";
    let hashed = "oldco_H4shedLegacyKeyNumber0002";
    let bad = "oldco_BadLineKeyMustNotBePrinted";
    let digest = sha256_hex(hashed);
    let jsonl = format!(
        "{{\"key\":\"{plain}\",\"owner\":\"legacy_1\",\"name\":\"old\",\"scopes\":[\"tasks:read\"]}}\n\
         \n\
         {{\"sha256\":\"{digest}\",\"prefix\":\"oldco_\",\"owner\":\"legacy_1\",\"scopes\":\"tasks:read tasks:write\",\"metadata\":{{\"from\":\"oldco\"}}}}\n\
         {{\"key\":\"{bad}\",\"owner\":[\"{bad}\"]}}\n"
    );
    let file = env.path("legacy.jsonl");
    std::fs::write(&file, jsonl).unwrap();
    let file = file.display().to_string();
    let legacy = ["--legacy-prefix", "oldco_=sk_live_"];
    let first = env.run(&join(&legacy, &["--json", "keys", "import", &file]));
    assert_eq!(first.code, 1, "a bad line fails the import: {first:?}");
    for secret in [plain, hashed, bad] {
        first.never_shows(secret);
    }
    let summary = first.json();
    assert_eq!(
        (
            summary["lines"].clone(),
            summary["imported"].clone(),
            summary["failed"].clone()
        ),
        (Value::from(3), Value::from(2), Value::from(1))
    );
    assert_eq!(
        summary["errors"][0]["line"], 4,
        "blank lines count as lines"
    );
    assert!(
        first.stderr.contains("line 4: `owner` must be a string"),
        "{first:?}"
    );
    assert!(
        !first.stderr.contains('\r') && !first.stderr.contains('\u{1b}'),
        "no progress bar without a terminal"
    );

    for k in [plain, hashed] {
        let v = env
            .run_with(
                &join(
                    &legacy,
                    &["--json", "keys", "verify", "--scope", "tasks:read"],
                ),
                Some(k),
            )
            .ok();
        v.never_shows(k);
        assert_eq!(v.json()["owner"], "legacy_1");
    }
    let listed = env
        .run(&["--json", "keys", "list", "--owner", "legacy_1"])
        .ok()
        .json();
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["legacy"] == true)
    );

    // Again: the imported keys are skipped, the bad line still fails.
    let again = env
        .run(&join(&legacy, &["--json", "keys", "import", &file]))
        .json();
    assert_eq!(
        (again["imported"].clone(), again["skipped"].clone()),
        (Value::from(0), Value::from(2))
    );

    // CSV with a header, through stdin.
    let csv_key = "oldco_CsvLegacyKeyNumber00003";
    let csv = format!(
        "owner,key,scopes,name\nlegacy_2,{csv_key},tasks:read,from csv\nlegacy_2,{bad},tasks:read\n"
    );
    let r = env.run_with(
        &join(
            &legacy,
            &["--json", "keys", "import", "--format", "csv", "-"],
        ),
        Some(&csv),
    );
    r.never_shows(csv_key).never_shows(bad);
    assert_eq!(r.code, 1, "{r:?}");
    let csv_summary = r.json();
    assert_eq!(
        (
            csv_summary["imported"].clone(),
            csv_summary["failed"].clone()
        ),
        (Value::from(1), Value::from(1))
    );
    assert_eq!(csv_summary["errors"][0]["line"], 3);
    // The human summary counts in words that agree with the number.
    let one = "owner,key\nlegacy_2,oldco_CsvLegacyKeyNumber00004\n";
    let r = env.run_with(
        &join(&legacy, &["keys", "import", "--format", "csv", "-"]),
        Some(one),
    );
    assert!(r.stdout.contains("1 line: 1 imported, 0 skipped"), "{r:?}");
    env.run_with(&join(&legacy, &["keys", "verify"]), Some(csv_key))
        .ok();

    // Many lines, four in flight, one line past the length limit.
    let mut many = String::new();
    for i in 0..200 {
        many.push_str(&format!(
            "{{\"key\":\"oldco_Bulk{i:08}Key\",\"owner\":\"bulk_{}\"}}\n",
            i % 7
        ));
        if i == 100 {
            many.push_str(&format!("{{\"key\":\"oldco_{}\"}}\n", "L".repeat(70_000)));
        }
    }
    let bulk = env.path("bulk.jsonl");
    std::fs::write(&bulk, many).unwrap();
    let bulk = bulk.display().to_string();
    let r = env.run(&join(
        &legacy,
        &["--json", "keys", "import", "--jobs", "4", &bulk],
    ));
    assert_eq!(r.code, 1, "{r:?}");
    let b = r.json();
    assert_eq!(
        (
            b["lines"].clone(),
            b["imported"].clone(),
            b["failed"].clone()
        ),
        (Value::from(201), Value::from(200), Value::from(1))
    );
    assert_eq!(b["errors"][0]["line"], 102);
    assert!(s(&b["errors"][0]["message"]).contains("longer than"), "{b}");
    assert!(!r.stderr.contains("LLLL"), "the long line is not echoed");
    let owners: usize = (0..7)
        .map(|o| {
            let listed = env
                .run(&["--json", "keys", "list", "--owner", &format!("bulk_{o}")])
                .ok()
                .json();
            listed["keys"].as_array().map_or(0, Vec::len)
        })
        .sum();
    assert_eq!(owners, 200);
    env.run_with(
        &join(&legacy, &["keys", "verify"]),
        Some("oldco_Bulk00000199Key"),
    )
    .ok();

    // --fail-fast stops at the first failed line.
    let two = "{\"owner\":\"x\"}\n{\"key\":\"oldco_AfterTheFailure01\"}\n";
    let ff = env.run_with(
        &join(&legacy, &["--json", "keys", "import", "--fail-fast", "-"]),
        Some(two),
    );
    assert_eq!(ff.code, 1, "{ff:?}");
    assert_eq!(
        (ff.json()["lines"].clone(), ff.json()["imported"].clone()),
        (Value::from(1), Value::from(0))
    );
    let on = env.run_with(
        &join(&legacy, &["--json", "keys", "import", "-"]),
        Some(two),
    );
    assert_eq!(
        (on.json()["lines"].clone(), on.json()["imported"].clone()),
        (Value::from(2), Value::from(1))
    );

    // Without the legacy prefix declared: every line fails, no key shown.
    let undeclared = env.run(&["keys", "import", &file]);
    assert_eq!(undeclared.code, 1);
    undeclared
        .never_shows(plain)
        .never_shows(hashed)
        .never_shows(bad);
    assert!(undeclared.stderr.contains("line 1:"), "{undeclared:?}");
}

fn sha256_hex(text: &str) -> String {
    // The digest of a legacy key as the other system stored it.
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn every_command_against_sqlite() {
    every_command(&Env::sqlite("every_sqlite"));
}

#[test]
fn every_command_against_postgres() {
    if let Some(env) = Env::postgres("every_command_against_postgres") {
        every_command(&env);
    }
}

/// `keys sweep` from cron without `--audit-log`: each notice it sends (and
/// so never sends again) is printed, so it reaches whoever reads the run's
/// output instead of nobody.
#[test]
fn a_sweep_prints_each_notice_it_sends() {
    let env = Env::sqlite("sweep_notices");
    env.run(&["migrate"]).ok();
    let soon = env
        .run(&[
            "--json",
            "keys",
            "create",
            "--owner",
            "user_9",
            "--name",
            "nightly",
            "--expires-in",
            "10d",
        ])
        .ok()
        .json();
    let id = s(&soon["summary"]["id"]).to_owned();
    let renewing = env
        .run(&[
            "--json",
            "keys",
            "create",
            "--owner",
            "user_9",
            "--expires-in",
            "3d",
            "--auto-renew",
        ])
        .ok()
        .json();
    let renewing_id = s(&renewing["summary"]["id"]).to_owned();

    let report = env.run(&["--json", "keys", "sweep"]).ok().json();
    assert_eq!(
        (report["notified"].clone(), report["renewed"].clone()),
        (1.into(), 1.into()),
        "{report}"
    );
    let notices = report["notices"].as_array().expect("notices").clone();
    let notice = notices
        .iter()
        .find(|n| n["id"] == id.as_str())
        .unwrap_or_else(|| panic!("no notice for {id}: {report}"));
    assert_eq!(notice["owner"], "user_9", "{report}");
    assert_eq!(notice["name"], "nightly", "{report}");
    assert_eq!(notice["renewed"], false, "{report}");
    assert_eq!(
        notice["expires_at"], soon["summary"]["expires_at"],
        "{report}"
    );
    assert!(
        notices
            .iter()
            .any(|n| n["id"] == renewing_id.as_str() && n["renewed"] == true),
        "{report}"
    );

    // The table form names the key and its expiry too.
    let soon2 = env
        .run(&[
            "--json",
            "keys",
            "create",
            "--owner",
            "user_9",
            "--name",
            "weekly",
            "--expires-in",
            "20d",
        ])
        .ok()
        .json();
    let table = env.run(&["keys", "sweep"]).ok();
    let id2 = s(&soon2["summary"]["id"]);
    let line = table
        .stdout
        .lines()
        .find(|l| l.contains(id2))
        .unwrap_or_else(|| panic!("no line for {id2}:\n{}", table.stdout));
    assert!(line.contains("user_9") && line.contains("weekly"), "{line}");
    assert!(
        line.contains(&s(&soon2["summary"]["expires_at"])[..10]),
        "{line}"
    );
    assert!(
        !table.stdout.contains(&id),
        "notified once:\n{}",
        table.stdout
    );
}
