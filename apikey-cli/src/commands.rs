//! The `keys` commands and `bootstrap-admin`, over either store.

use std::io::{BufRead as _, Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use apikey::{
    Actor, AuditEvent, AuditSink, Error as KeyError, IpNet, KeyId, KeyManager, KeyStoreWrite,
    NewKey, Requirement, Rotation, UsageStore,
};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::cli::{BootstrapArgs, CreateArgs, KeysCommand};
use crate::config;
use crate::error::{CliError, CliResult, Exit};
use crate::output::{self, KeyOut};

/// What every command needs besides the store.
#[derive(Debug)]
pub struct Context {
    /// `--json`.
    pub json: bool,
    /// Who runs the command.
    pub actor: Actor,
    /// The verifier (a throwaway keyring for commands that use no secret).
    pub verifier: apikey::Verifier,
    /// `LEGACY=NATIVE` declarations.
    pub legacy_prefixes: Vec<String>,
    /// The audit log, if any.
    pub audit: Option<Arc<FileAudit>>,
    /// `keys import`: imports in flight at once (`--jobs`; by default 1
    /// for SQLite, whose writes are serial, 8 for PostgreSQL).
    pub import_jobs: usize,
}

/// Audit events appended to a file as JSON lines.
#[derive(Debug)]
pub struct FileAudit {
    file: std::sync::Mutex<std::fs::File>,
    failed: AtomicBool,
}

impl FileAudit {
    /// Opens `path` for appending (created with mode 0600 when missing).
    ///
    /// # Errors
    /// A usage error when the file cannot be opened.
    pub fn open(path: &std::path::Path) -> CliResult<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(|e| {
            CliError::usage(format!("cannot open the audit log {}: {e}", path.display()))
        })?;
        Ok(Self {
            file: std::sync::Mutex::new(file),
            failed: AtomicBool::new(false),
        })
    }

    /// Whether an event could not be written.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl AuditSink for FileAudit {
    fn record(&self, event: &AuditEvent) {
        let written = serde_json::to_string(event).ok().is_some_and(|line| {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            writeln!(file, "{line}").is_ok()
        });
        if !written {
            self.failed.store(true, Ordering::Relaxed);
        }
    }
}

/// A command's outcome: `None` is success; `Some(exit)` was reported on
/// stdout already and ends with `exit`.
pub type Outcome = CliResult<Option<Exit>>;

/// Parses a key id. The text is not repeated in the error: it may be a
/// whole key pasted where its id belongs.
fn key_id(text: &str) -> CliResult<KeyId> {
    text.trim().parse().map_err(|_| {
        let hint = if text.len() > 11 && text.contains('_') {
            "; this looks like a whole key: `keys verify` prints its id"
        } else {
            ""
        };
        CliError::usage(format!(
            "not a key id: an id is 11 base62 characters, as `keys list` shows{hint}"
        ))
    })
}

/// The manager over `store` with the context's verifier, legacy prefixes
/// and audit log.
///
/// # Errors
/// A usage error for a malformed legacy prefix declaration.
pub fn manager<S>(store: S, verifier: apikey::Verifier, ctx: &Context) -> CliResult<KeyManager<S>>
where
    S: KeyStoreWrite + UsageStore + 'static,
{
    let mut manager = KeyManager::new(verifier, store);
    for entry in ctx.legacy_prefixes.iter().flat_map(|p| p.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (legacy, native) = config::pair(entry, "--legacy-prefix", "LEGACY=NATIVE")?;
        manager = manager
            .with_legacy_prefix(legacy, native)
            .map_err(|e| CliError::usage(format!("--legacy-prefix: {e}")))?;
    }
    if let Some(audit) = &ctx.audit {
        manager = manager.with_audit_sink(Arc::clone(audit));
    }
    Ok(manager)
}

fn fail(what: &str) -> impl Fn(KeyError) -> CliError + '_ {
    move |e| CliError::from_key_error(what, &e)
}

fn print_key(ctx: &Context, key: &KeyOut) {
    if ctx.json {
        output::json(key);
    } else {
        output::key_details(key);
    }
}

fn print_keys(ctx: &Context, keys: &[KeyOut]) {
    #[derive(Serialize)]
    struct Keys<'a> {
        keys: &'a [KeyOut],
    }
    if ctx.json {
        output::json(&Keys { keys });
    } else if keys.is_empty() {
        crate::outln!("no keys");
    } else {
        output::key_table(keys);
    }
}

/// Prints a freshly issued key, once.
///
/// # Errors
/// When stdout is closed, so the key was issued but never shown: the
/// message names the id to revoke.
fn print_issued(
    ctx: &Context,
    key: &apikey::ApiKey,
    summary: &KeyOut,
    previous: Option<&KeyOut>,
) -> CliResult<()> {
    #[derive(Serialize)]
    struct Issued<'a> {
        key: &'a str,
        summary: &'a KeyOut,
        #[serde(skip_serializing_if = "Option::is_none")]
        previous: Option<&'a KeyOut>,
    }
    if ctx.json {
        output::json(&Issued {
            key: key.expose_secret(),
            summary,
            previous,
        });
        return issued_shown(&summary.id);
    }
    output::key_details(summary);
    if let Some(p) = previous {
        crate::outln!(
            "\nthe previous key {} is in state {}{}",
            p.id,
            p.state,
            p.expires_at
                .as_deref()
                .map(|t| format!(", working until {t}"))
                .unwrap_or_default()
        );
    }
    crate::outln!("\nthe key, shown once (store it now; it cannot be read back):");
    crate::outln!("{}", key.expose_secret());
    issued_shown(&summary.id)
}

/// Fails when the issued key could not be written.
fn issued_shown(id: &str) -> CliResult<()> {
    if output::stdout_failed() {
        return Err(CliError {
            exit: Exit::Usage,
            code: "OUTPUT_FAILED",
            message: format!(
                "key {id} was issued but could not be printed (stdout is closed); \
                 revoke it: apikey keys revoke {id} --reason unseen"
            ),
        });
    }
    Ok(())
}

fn new_key(args: &CreateArgs) -> CliResult<NewKey> {
    let mut new = NewKey::new(&args.prefix).scopes(config::scopes(&args.scopes));
    if let Some(owner) = &args.owner {
        new = new.owner(owner);
    }
    if let Some(name) = &args.name {
        new = new.name(name);
    }
    if let Some(d) = &args.description {
        new = new.description(d);
    }
    if let Some(t) = &args.expires_at {
        new = new.expires_at(config::timestamp(t, "--expires-at")?);
    }
    if let Some(d) = &args.expires_in {
        let now = apikey::Clock::now(&apikey::SystemClock);
        new = new.expires_at(now.saturating_add(config::duration(d, "--expires-in")?));
    }
    if let Some(t) = &args.not_before {
        new = new.not_before(config::timestamp(t, "--not-before")?);
    }
    for entry in &args.metadata {
        let (k, v) = config::pair(entry, "--metadata", "KEY=VALUE")?;
        new = new.metadata(k, v);
    }
    if args.auto_renew {
        if args.expires_at.is_none() && args.expires_in.is_none() {
            return Err(CliError::usage(
                "--auto-renew needs an expiry (--expires-in 90d or --expires-at TIME)",
            ));
        }
        new = new.metadata(apikey::KeyRecord::AUTO_RENEW, "true");
    }
    for net in &args.allow_ip {
        let net: IpNet = net.trim().parse().map_err(|_| {
            CliError::usage(format!(
                "--allow-ip: `{}` is not an address range (CIDR: 203.0.113.0/24)",
                net.escape_debug()
            ))
        })?;
        new = new.allow_ip(net);
    }
    Ok(new)
}

/// Runs a `keys` command.
///
/// # Errors
/// See [`Exit`].
pub async fn keys<S>(store: S, command: KeysCommand, ctx: &Context) -> Outcome
where
    S: KeyStoreWrite + UsageStore + 'static,
{
    // A scope that grants everything changes how `verify` checks scopes.
    let mut verifier = ctx.verifier.clone();
    if let KeysCommand::Verify {
        full_access_scope, ..
    } = &command
    {
        for s in full_access_scope {
            verifier = verifier
                .with_full_access_scope(s)
                .map_err(|e| CliError::usage(format!("--full-access-scope: {e}")))?;
        }
    }
    let manager = manager(store, verifier, ctx)?;
    let actor = &ctx.actor;
    match command {
        KeysCommand::Create(args) => {
            let (key, summary) = manager.create(new_key(&args)?, actor).await.map_err(|e| {
                let mut err = CliError::from_key_error("cannot create the key", &e);
                let p = args.prefix.as_bytes();
                let well_formed = (2..=16).contains(&p.len())
                    && p[0].is_ascii_lowercase()
                    && p.ends_with(b"_")
                    && p.iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
                if e.code() == apikey::ErrorCode::InvalidPrefix && well_formed {
                    // The library speaks of its verifier; say what to type.
                    err.message.push_str(&format!(
                        " (register it: --register-prefix {}=live or =test, or APIKEY_PREFIXES)",
                        args.prefix
                    ));
                }
                err
            })?;
            print_issued(ctx, &key, &KeyOut::from(&summary), None)?;
        }
        KeysCommand::List { owner } => {
            let keys = manager
                .list(&owner)
                .await
                .map_err(fail("cannot list keys"))?;
            print_keys(ctx, &keys.iter().map(KeyOut::from).collect::<Vec<_>>());
        }
        KeysCommand::Show { id } => {
            let summary = manager.get(key_id(&id)?).await.map_err(fail(&id))?;
            print_key(ctx, &KeyOut::from(&summary));
        }
        KeysCommand::Disable { id } => {
            let summary = manager
                .disable(key_id(&id)?, actor)
                .await
                .map_err(fail(&id))?;
            print_key(ctx, &KeyOut::from(&summary));
        }
        KeysCommand::Enable { id } => {
            let summary = manager
                .enable(key_id(&id)?, actor)
                .await
                .map_err(fail(&id))?;
            print_key(ctx, &KeyOut::from(&summary));
        }
        KeysCommand::Revoke {
            id: Some(id),
            reason,
            ..
        } => {
            let summary = manager
                .revoke(key_id(&id)?, &reason, actor)
                .await
                .map_err(fail(&id))?;
            print_key(ctx, &KeyOut::from(&summary));
        }
        KeysCommand::Revoke {
            id: None,
            owner: Some(owner),
            reason,
        } => {
            let revoked = manager
                .revoke_owner(&owner, &reason, actor)
                .await
                .map_err(fail(
                    "cannot revoke the owner's keys (run it again: it resumes)",
                ))?;
            if ctx.json {
                let ids: Vec<String> = revoked.iter().map(ToString::to_string).collect();
                output::json(&serde_json::json!({ "owner": owner, "revoked": ids }));
            } else {
                crate::outln!("revoked {} keys of {}", revoked.len(), owner.escape_debug());
                for id in &revoked {
                    crate::outln!("  {id}");
                }
            }
        }
        KeysCommand::Revoke { .. } => {
            return Err(CliError::usage("pass a key id or --owner"));
        }
        KeysCommand::Sweep {
            notice_before,
            renew_before,
            renew_for,
        } => {
            // Every notice is printed: a notice is sent once (the record
            // keeps that it was), so without `--audit-log` it would
            // otherwise reach nobody.
            let sent = Arc::new(std::sync::Mutex::new(Vec::<apikey::ExpiryNotice>::new()));
            let collect = Arc::clone(&sent);
            let options = apikey::SweepOptions::default()
                .notice_before(config::duration(&notice_before, "--notice-before")?)
                .renew_before(config::duration(&renew_before, "--renew-before")?)
                .renew_for(config::duration(&renew_for, "--renew-for")?)
                .notifier(move |n: &apikey::ExpiryNotice| {
                    collect
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(n.clone());
                });
            let report = manager
                .sweep_once(&options)
                .await
                .map_err(fail("the sweep failed"))?;
            let mut notices = std::mem::take(
                &mut *sent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            notices.sort_by_key(|n| (n.expires_at, n.id.as_u64()));
            if ctx.json {
                let failed: Vec<_> = report
                    .failed
                    .iter()
                    .map(|(id, code)| serde_json::json!({ "id": id.to_string(), "code": code.as_str() }))
                    .collect();
                output::json(&serde_json::json!({
                    "examined": report.examined,
                    "renewed": report.renewed,
                    "notified": report.notified,
                    "failed": failed,
                    "notices": notices,
                }));
            } else {
                crate::outln!(
                    "examined {}, renewed {}, notified {}, failed {}",
                    report.examined,
                    report.renewed,
                    report.notified,
                    report.failed.len()
                );
                for n in &notices {
                    crate::outln!(
                        "  {} {} owner {} name {}: {} {}",
                        n.id,
                        n.display,
                        n.owner.as_deref().unwrap_or("-").escape_debug(),
                        n.name.escape_debug(),
                        if n.renewed {
                            "renewed until"
                        } else {
                            "expires"
                        },
                        n.expires_at
                    );
                }
                for (id, code) in &report.failed {
                    crate::outln!("  {id}: {code}");
                }
            }
            // The keys that failed are in the report; the next run retries
            // them.
            if !report.failed.is_empty() {
                return Ok(Some(Exit::StoreUnavailable));
            }
        }
        KeysCommand::Delete { id } => {
            let kid = key_id(&id)?;
            manager.delete(kid, actor).await.map_err(fail(&id))?;
            if ctx.json {
                output::json(&serde_json::json!({ "deleted": kid.to_string() }));
            } else {
                crate::outln!("deleted {kid}");
            }
        }
        KeysCommand::Rotate {
            id,
            grace,
            expires_at,
        } => {
            let kid = key_id(&id)?;
            let mut rotation = Rotation::with_grace(config::duration(&grace, "--grace")?);
            if let Some(t) = expires_at {
                rotation = rotation.expires_at(config::timestamp(&t, "--expires-at")?);
            }
            let (key, summary) = manager
                .rotate(kid, rotation, actor)
                .await
                .map_err(fail(&id))?;
            let previous = manager.get(kid).await.ok().map(|s| KeyOut::from(&s));
            print_issued(ctx, &key, &KeyOut::from(&summary), previous.as_ref())?;
        }
        KeysCommand::Import {
            file,
            format,
            fail_fast,
            jobs: _,
        } => {
            let options = crate::import::ImportOptions {
                format,
                fail_fast,
                jobs: ctx.import_jobs,
            };
            return crate::import::run(Arc::new(manager), &file, options, ctx).await;
        }
        KeysCommand::Verify { key, scope, ip, .. } => {
            return verify(ctx, &manager, key, &scope, ip).await;
        }
        KeysCommand::Expiring { within, owner } => {
            let within = config::duration(&within, "--within")?;
            let keys = manager
                .expiring_soon(owner.as_deref(), within)
                .await
                .map_err(fail("cannot list expiring keys"))?;
            print_keys(ctx, &keys.iter().map(KeyOut::from).collect::<Vec<_>>());
        }
        KeysCommand::Usage { id, owner } => {
            let keys = match (id, owner) {
                (Some(id), _) => vec![manager.get(key_id(&id)?).await.map_err(fail(&id))?],
                (None, Some(owner)) => manager
                    .list(&owner)
                    .await
                    .map_err(fail("cannot list keys"))?,
                (None, None) => return Err(CliError::usage("pass a key id or --owner")),
            };
            usage(ctx, &keys.iter().map(KeyOut::from).collect::<Vec<_>>());
        }
    }
    Ok(None)
}

fn usage(ctx: &Context, keys: &[KeyOut]) {
    #[derive(Serialize)]
    struct Usage<'a> {
        id: &'a str,
        display: &'a str,
        owner: Option<&'a str>,
        last_used_at: Option<&'a str>,
        last_used_ip: Option<&'a str>,
        last_used_route: Option<&'a str>,
        requests_today: u64,
        requests_this_month: u64,
    }
    let rows: Vec<Usage<'_>> = keys
        .iter()
        .map(|k| Usage {
            id: &k.id,
            display: &k.display,
            owner: k.owner.as_deref(),
            last_used_at: k.last_used_at.as_deref(),
            last_used_ip: k.last_used_ip.as_deref(),
            last_used_route: k.last_used_route.as_deref(),
            requests_today: k.requests_today,
            requests_this_month: k.requests_this_month,
        })
        .collect();
    if ctx.json {
        output::json(&serde_json::json!({ "keys": rows }));
        return;
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|u| {
            vec![
                u.id.to_owned(),
                u.display.to_owned(),
                u.requests_today.to_string(),
                u.requests_this_month.to_string(),
                u.last_used_at.unwrap_or("never").to_owned(),
                u.last_used_ip.unwrap_or("-").to_owned(),
                u.last_used_route.unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "KEY",
            "TODAY",
            "THIS MONTH",
            "LAST USED",
            "FROM",
            "ROUTE",
        ],
        &table,
    );
}

/// Reads the key: the argument, or the first line of stdin (bounded).
fn presented_key(arg: Option<String>) -> CliResult<Zeroizing<String>> {
    if let Some(key) = arg.filter(|k| k != "-") {
        return Ok(Zeroizing::new(key));
    }
    let mut line = Zeroizing::new(String::new());
    let limit = (apikey::ApiKey::MAX_LEN + apikey::Prefix::MAX_LEN + 2) as u64;
    std::io::stdin()
        .lock()
        .take(limit.max(4096))
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("cannot read the key from stdin: {e}")))?;
    let trimmed = Zeroizing::new(line.trim().to_owned());
    if trimmed.is_empty() {
        return Err(CliError::usage(
            "no key: pass it as an argument or on the first line of stdin",
        ));
    }
    Ok(trimmed)
}

async fn verify<S>(
    ctx: &Context,
    manager: &KeyManager<S>,
    key: Option<String>,
    scopes: &[String],
    ip: Option<std::net::IpAddr>,
) -> Outcome
where
    S: KeyStoreWrite + UsageStore + 'static,
{
    let presented = presented_key(key)?;
    let requirement = if scopes.is_empty() {
        Requirement::none()
    } else {
        Requirement::all_of(config::scopes(scopes))
            .map_err(|e| CliError::usage(format!("--scope: {e}")))?
    };
    match manager.authenticate(&presented, &requirement, ip).await {
        Ok(verified) => {
            let scopes: Vec<String> = verified
                .scopes()
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect();
            if ctx.json {
                output::json(&serde_json::json!({
                    "valid": true,
                    "id": verified.id().to_string(),
                    "owner": verified.owner(),
                    "environment": verified.environment().as_str(),
                    "scopes": scopes,
                }));
            } else {
                crate::outln!(
                    "valid: key {} of {}, scopes {}",
                    verified.id(),
                    verified.owner().unwrap_or("no owner"),
                    if scopes.is_empty() {
                        "-".into()
                    } else {
                        scopes.join(",")
                    }
                );
            }
            Ok(None)
        }
        Err(e @ KeyError::StoreUnavailable(_)) => {
            Err(CliError::from_key_error("cannot verify the key", &e))
        }
        Err(e) => {
            let code = e.code().as_str();
            if ctx.json {
                output::json(&serde_json::json!({
                    "valid": false,
                    "code": code,
                    "message": e.to_string(),
                }));
            } else {
                crate::outln!("invalid: {code}: {e}");
            }
            Ok(Some(Exit::VerificationFailed))
        }
    }
}

/// `apikey bootstrap-admin`: creates the admin key unless the owner has a
/// key that is not revoked or expired, atomically (the store's owner limit of one).
///
/// # Errors
/// Exit 5 when the owner has such a key; see [`Exit`].
pub async fn bootstrap<S>(store: S, args: BootstrapArgs, ctx: &Context) -> Outcome
where
    S: KeyStoreWrite + UsageStore + 'static,
{
    let manager = manager(store, ctx.verifier.clone(), ctx)?.with_max_keys_per_owner(1);
    let create = CreateArgs {
        prefix: args.prefix,
        owner: Some(args.owner.clone()),
        name: Some(args.name),
        description: Some("minted by apikey bootstrap-admin".into()),
        scopes: args.scopes,
        expires_at: None,
        expires_in: args.expires_in,
        not_before: None,
        metadata: Vec::new(),
        allow_ip: Vec::new(),
        auto_renew: false,
    };
    match manager.create(new_key(&create)?, &ctx.actor).await {
        Ok((key, summary)) => {
            print_issued(ctx, &key, &KeyOut::from(&summary), None)?;
            Ok(None)
        }
        Err(KeyError::KeyLimitReached { .. }) => Err(CliError::refused(
            "ADMIN_EXISTS",
            format!(
                "owner `{}` already has a key that is not revoked or expired (a disabled one \
                 counts); list it with `apikey keys list --owner {}`, or mint another with \
                 `apikey keys create`",
                args.owner, args.owner
            ),
        )),
        Err(e) => Err(CliError::from_key_error("cannot create the admin key", &e)),
    }
}
