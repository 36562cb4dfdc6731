//! The `apikey` binary, run as a user runs it: every command against a
//! temporary SQLite file and against a throwaway PostgreSQL (its own schema
//! per test), `--json` parsed back, and bad input answered with a clear
//! message and the documented exit status, never with a secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The throwaway-cluster harness of apikey-sqlx's tests, shared rather than
// copied (its crash module needs the testkit, a dev-dependency here).
#[path = "../../apikey-sqlx/tests/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// One run of the binary.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success:\n{self:?}");
        self
    }

    fn fails(self, code: i32) -> Self {
        assert_eq!(self.code, code, "expected exit {code}:\n{self:?}");
        assert!(
            !self.stderr.trim().is_empty(),
            "a failure says why on stderr"
        );
        self
    }

    /// Neither stream holds `secret`.
    fn never_shows(&self, secret: &str) -> &Self {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "a secret was printed:\n{self:?}"
        );
        self
    }
}

/// A database and a server secret to run commands against.
#[derive(Debug)]
struct Env {
    db: Vec<String>,
    secret: String,
    dir: PathBuf,
}

impl Env {
    fn sqlite(test: &str) -> Self {
        let dir = common::temp_dir(test);
        let db = vec!["--sqlite".into(), dir.join("keys.db").display().to_string()];
        Self::new(db, dir)
    }

    /// PostgreSQL in a schema of its own; `None` when PostgreSQL is missing
    /// (a skip, or a failure with CI=true).
    fn postgres(test: &str) -> Option<Self> {
        let url = common::shared(test)?;
        let dir = common::temp_dir(test);
        let db = vec![
            "--database".into(),
            url,
            "--schema".into(),
            common::unique("cli"),
        ];
        Some(Self::new(db, dir))
    }

    fn new(db: Vec<String>, dir: PathBuf) -> Self {
        let secret = run(&["secret", "generate"], &[], None).ok().stdout;
        let secret = secret.trim().to_owned();
        assert_eq!(secret.len(), 44, "32 bytes in base64: {secret}");
        Self { db, secret, dir }
    }

    /// `apikey <db> <args>` with the secret in APIKEY_SECRET_V1.
    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None)
    }

    fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut all: Vec<&str> = self.db.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        let run = run(&all, &[("APIKEY_SECRET_V1", &self.secret)], stdin);
        run.never_shows(&self.secret);
        run
    }

    /// Without any secret configured.
    fn run_without_secret(&self, args: &[&str]) -> Run {
        let mut all: Vec<&str> = self.db.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        run(&all, &[], None)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the binary with a clean environment (no DATABASE_URL, no
/// APIKEY_* from the caller) plus `env`.
fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apikey"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name == "DATABASE_URL" || name.starts_with("APIKEY_") {
            cmd.env_remove(name);
        }
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().expect("the apikey binary runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn join<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    [a, b].concat()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The JSON of a key never carries the stored digest or the secret.
fn assert_no_digest(v: &Value) {
    let text = v.to_string();
    assert!(!text.contains("digest"), "{text}");
}

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

    // delete, then not found.
    assert_eq!(
        env.run(&["--json", "keys", "delete", &soon_id]).ok().json()["deleted"],
        soon_id.as_str()
    );
    let gone = env.run(&["--json", "keys", "show", &soon_id]).fails(2);
    assert_eq!(gone.json()["error"]["code"], "NOT_FOUND");
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

#[test]
fn help_documents_the_commands_and_exit_codes() {
    let help = run(&["--help"], &[], None).ok();
    for text in [
        "secret",
        "migrate",
        "keys",
        "bootstrap-admin",
        "Exit status",
        "APIKEY_SECRET_V1",
    ] {
        assert!(
            help.stdout.contains(text),
            "{text} missing:\n{}",
            help.stdout
        );
    }
    let keys = run(&["keys", "--help"], &[], None).ok();
    for cmd in [
        "create", "list", "show", "disable", "enable", "rotate", "revoke", "delete", "import",
        "verify", "expiring", "usage",
    ] {
        assert!(keys.stdout.contains(cmd), "{cmd} missing:\n{}", keys.stdout);
    }
    run(&["keys", "frobnicate"], &[], None).fails(1);
    let r = run(&["--json", "keys", "show"], &[], None).fails(1);
    assert_eq!(r.json()["error"]["code"], "USAGE");
    assert!(
        run(&["--version"], &[], None)
            .ok()
            .stdout
            .starts_with("apikey ")
    );
    run(&[], &[], None).fails(1);
}

#[test]
fn secret_generate_writes_a_private_file_once() {
    let dir = common::temp_dir("secret_file");
    let path = dir.join("secret");
    let p = path.display().to_string();
    let r = run(&["secret", "generate", "--out", &p], &[], None).ok();
    let secret = std::fs::read_to_string(&path).unwrap();
    r.never_shows(secret.trim());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    run(&["secret", "generate", "--out", &p], &[], None).fails(1);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        secret,
        "never overwritten"
    );

    // The file is a --secret-file: a key made with it verifies with it.
    let db = dir.join("keys.db").display().to_string();
    let base = ["--sqlite", db.as_str(), "--secret-file", p.as_str()];
    run(&join(&base, &["migrate"]), &[], None).ok();
    let created = run(&join(&base, &["--json", "keys", "create"]), &[], None)
        .ok()
        .json();
    let key = s(&created["key"]).to_owned();
    run(&join(&base, &["keys", "verify"]), &[], Some(&key))
        .ok()
        .never_shows(secret.trim());
    // Another secret: the key does not verify.
    let other = Env::sqlite("secret_other");
    let r = run(
        &["--sqlite", &db, "keys", "verify"],
        &[("APIKEY_SECRET_V1", &other.secret)],
        Some(&key),
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stdout.starts_with("invalid: INVALID_API_KEY"), "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_names_the_problem_with_its_exit_code() {
    let env = Env::sqlite("bad_input");
    env.run(&["migrate"]).ok();

    // Unknown id, malformed id.
    let r = env.run(&["keys", "show", "AAAAAAAAAAA"]).fails(2);
    assert!(r.stderr.contains("no such API key"), "{r:?}");
    let r = env
        .run(&["--json", "keys", "revoke", "not-an-id", "--reason", "x"])
        .fails(1);
    assert_eq!(r.json()["error"]["exit"], 1);
    assert!(r.stderr.contains("not a key id"), "{r:?}");
    // A whole key pasted where its id belongs is not repeated.
    let created = env.run(&["--json", "keys", "create"]).ok().json();
    let whole = s(&created["key"]);
    let r = env.run(&["keys", "disable", whole]).fails(1);
    r.never_shows(whole);
    assert!(r.stderr.contains("looks like a whole key"), "{r:?}");

    // Malformed key: invalid, with the stable code, never echoed.
    let malformed = "sk_live_ThisIsNotAValidKeyButLooksSecret";
    let r = env.run_with(&["--json", "keys", "verify"], Some(malformed));
    assert_eq!(r.code, 4, "{r:?}");
    r.never_shows(malformed);
    assert_eq!(r.json()["code"], "MALFORMED_API_KEY");
    let r = env.run_with(&["keys", "verify"], Some(""));
    assert_eq!(r.code, 1, "{r:?}");

    // Missing secret, bad secret (never echoed), a command that needs none.
    let r = env
        .run_without_secret(&["keys", "create", "--owner", "u"])
        .fails(1);
    assert!(
        r.stderr.contains("APIKEY_SECRET_V1") && r.stderr.contains("--secret-file"),
        "{r:?}"
    );
    let not_base64 = "hunter2-is-not-base64!!";
    let mut args: Vec<&str> = env.db.iter().map(String::as_str).collect();
    args.extend(["keys", "create"]);
    let r = run(&args, &[("APIKEY_SECRET_V1", not_base64)], None).fails(1);
    r.never_shows(not_base64);
    assert!(
        r.stderr.contains("APIKEY_SECRET_V1") && r.stderr.contains("base64"),
        "{r:?}"
    );
    let short = "c2hvcnQ=";
    let r = run(&args, &[("APIKEY_SECRET_V1", short)], None).fails(1);
    r.never_shows(short);
    assert!(r.stderr.contains("32 bytes"), "{r:?}");
    env.run_without_secret(&["keys", "list", "--owner", "u"])
        .ok();

    // Bad arguments.
    for bad in [
        &["keys", "create", "--expires-in", "soon"][..],
        &["keys", "create", "--expires-at", "tomorrow"],
        &["keys", "create", "--scopes", "Bad Scope!"],
        &["keys", "create", "--prefix", "nope_"],
        &["keys", "create", "--allow-ip", "300.0.0.1/8"],
        &["keys", "create", "--metadata", "novalue"],
        &["keys", "expiring", "--within", "-3d"],
    ] {
        let r = env.run(bad).fails(1);
        assert!(r.stderr.starts_with("error: "), "{r:?}");
    }

    // A bad import file.
    let r = env
        .run(&["keys", "import", "/nonexistent/keys.jsonl"])
        .fails(1);
    assert!(r.stderr.contains("cannot open"), "{r:?}");
    let r = env.run_with(
        &[
            "--legacy-prefix",
            "oldco_=sk_live_",
            "keys",
            "import",
            "--format",
            "csv",
            "-",
        ],
        Some("oldco_KeyWhereTheHeaderShouldBe,owner\n"),
    );
    assert_eq!(r.code, 1, "{r:?}");
    r.never_shows("oldco_KeyWhereTheHeaderShouldBe");
    assert!(r.stderr.contains("line 1: column 1 of the header"), "{r:?}");
}

#[test]
fn an_unusable_database_is_exit_3_without_its_password() {
    let env = Env::sqlite("unusable");
    // No file: not created behind the operator's back.
    let r = env.run(&["keys", "list", "--owner", "u"]).fails(3);
    assert!(r.stderr.contains("apikey migrate"), "{r:?}");
    assert!(!Path::new(&env.db[1]).exists());
    // A file without the tables.
    std::fs::write(&env.db[1], b"").unwrap();
    let r = env
        .run(&["--json", "keys", "list", "--owner", "u"])
        .fails(3);
    assert_eq!(r.json()["error"]["code"], "STORE_UNAVAILABLE");
    assert!(r.stderr.contains("run `apikey migrate` first"), "{r:?}");

    // PostgreSQL nobody listens on: the URL's password is never printed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("postgres://app:Sup3rS3cretPw@127.0.0.1:{port}/keys");
    // (--timeout 1: a refused connection is retried until the timeout.)
    for args in [
        vec!["--timeout", "1", "keys", "list", "--owner", "u"],
        vec!["--timeout", "1", "migrate"],
        vec!["--timeout", "1", "keys", "create"],
    ] {
        let r = run(
            &args,
            &[("DATABASE_URL", &url), ("APIKEY_SECRET_V1", &env.secret)],
            None,
        )
        .fails(3);
        r.never_shows("Sup3rS3cretPw").never_shows(&env.secret);
        assert!(r.stderr.contains("127.0.0.1"), "names the server: {r:?}");
    }
    // --sqlite wins over DATABASE_URL from the environment.
    let r = run(
        &[
            "--timeout",
            "1",
            "--sqlite",
            &env.db[1],
            "keys",
            "list",
            "--owner",
            "u",
        ],
        &[("DATABASE_URL", &url)],
        None,
    )
    .fails(3);
    assert!(
        r.stderr.contains("SQLite file") && r.stderr.contains("apikey migrate"),
        "{r:?}"
    );
    let r = run(
        &["keys", "list", "--owner", "u"],
        &[("DATABASE_URL", "mysql://app:pw0rd@h/db")],
        None,
    )
    .fails(1);
    r.never_shows("pw0rd");
    let r = run(&["keys", "list", "--owner", "u"], &[], None).fails(1);
    assert!(r.stderr.contains("DATABASE_URL"), "{r:?}");
}

#[test]
fn the_audit_log_records_who_did_what() {
    let env = Env::sqlite("audit");
    env.run(&["migrate"]).ok();
    let log = env.path("audit.jsonl").display().to_string();
    let created = env
        .run(&[
            "--json",
            "--audit-log",
            &log,
            "--actor",
            "oncall",
            "keys",
            "create",
            "--owner",
            "u",
        ])
        .ok()
        .json();
    let id = s(&created["summary"]["id"]).to_owned();
    env.run(&[
        "--audit-log",
        &log,
        "--actor",
        "oncall",
        "keys",
        "revoke",
        &id,
        "--reason",
        "3am page",
    ])
    .ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(s(&created["key"])));
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| s(&e["kind"])).collect();
    assert_eq!(kinds, ["created", "revoked"]);
    assert!(
        events
            .iter()
            .all(|e| e["actor"] == "oncall" && e["key_id"] == id.as_str())
    );
    assert_eq!(events[1]["reason"], "3am page");

    // The same database through DATABASE_URL=sqlite:PATH.
    let listed = run(
        &["--json", "keys", "list", "--owner", "u"],
        &[("DATABASE_URL", &format!("sqlite:{}", env.db[1]))],
        None,
    )
    .ok()
    .json();
    assert_eq!(listed["keys"][0]["id"], id.as_str());
}

/// Runs the binary with stdout a pipe whose reader is already closed (as
/// `apikey ... | head -1` after head exits).
fn run_with_closed_stdout(args: &[&str], env: &[(&str, &str)]) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_apikey"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic_and_names_the_unseen_key() {
    let env = Env::sqlite("closed_stdout");
    env.run(&["migrate"]).ok();
    let db = [env.db[0].as_str(), env.db[1].as_str()];
    let secret = [("APIKEY_SECRET_V1", env.secret.as_str())];
    let r = run_with_closed_stdout(&join(&db, &["bootstrap-admin"]), &secret).fails(1);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert!(
        r.stderr.contains("was issued but could not be printed"),
        "{r:?}"
    );
    // The message names the key to revoke, and that key exists.
    let id = env
        .run(&["--json", "keys", "list", "--owner", "admin"])
        .ok()
        .json()["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        r.stderr.contains(&format!("apikey keys revoke {id}")),
        "{r:?}"
    );
    let r = run_with_closed_stdout(&join(&db, &["keys", "list", "--owner", "admin"]), &[]).fails(1);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}
