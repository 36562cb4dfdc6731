//! Where the keys are and how to read them: the database, the server secret,
//! the registered prefixes; and the small text formats of the arguments
//! (durations, times, `A=B` pairs).

use std::path::{Path, PathBuf};

use apikey::Timestamp;
use apikey::{Environment, Keyring, ServerSecret, Verifier};

use crate::error::{CliError, CliResult};

/// The environment variables of the secret: `APIKEY_SECRET_V1` ...
/// `APIKEY_SECRET_V61` (base64), as the example server reads them.
pub const SECRET_ENV_PREFIX: &str = "APIKEY_SECRET_V";

/// The highest secret version a keyring holds (the key format's one base62
/// digit; `apikey` does not export its constant).
const MAX_SECRET_VERSION: u8 = 61;

/// A database the command works on.
#[derive(Clone, Debug)]
pub enum Target {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (it may hold a password: print [`redact_url`]).
    Postgres(String),
}

impl Target {
    /// Reads `--sqlite PATH`, else `--database URL` / `DATABASE_URL`
    /// (`sqlite:PATH`, `sqlite://PATH`, `postgres://...`, `postgresql://...`).
    ///
    /// # Errors
    /// A usage error when neither is given or the URL's scheme is unknown
    /// (the message names the scheme, never the rest of the URL).
    pub fn from_args(sqlite: Option<&Path>, database: Option<&str>) -> CliResult<Self> {
        if let Some(path) = sqlite {
            return Ok(Self::Sqlite(path.to_owned()));
        }
        let Some(url) = database.map(str::trim).filter(|u| !u.is_empty()) else {
            return Err(CliError::usage(
                "no database: pass --sqlite PATH or --database URL, or set DATABASE_URL \
                 (sqlite:PATH or postgres://USER@HOST/DB)",
            ));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() || path.contains('?') || path == ":memory:" {
                return Err(CliError::usage(
                    "a SQLite database URL is sqlite:PATH (a file; no query options)",
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        let scheme = url.split_once(':').map(|(s, _)| s).filter(|s| {
            !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        Err(CliError::usage(match scheme {
            Some(scheme) => format!(
                "unsupported database URL scheme `{scheme}`: use sqlite:PATH or postgres://..."
            ),
            // A bare path (`keys.db`): the likeliest mistake.
            None => "not a database URL: use sqlite:PATH or postgres://USER@HOST/DB \
                     (or --sqlite PATH for a file)"
                .to_owned(),
        }))
    }

    /// The target for messages: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("SQLite file {}", path.display()),
            Self::Postgres(url) => format!("PostgreSQL at {}", redact_url(url)),
        }
    }
}

/// `url` with the password of its user info (and every query parameter's
/// value) replaced by `***`.
///
/// The user info ends at the **last** `@` of the whole URL, before the
/// query is split off: an unencoded password may hold `/`, `@` or `&`, and
/// must never be taken for the path or the query. When a `?` or `#` comes
/// before that `@`, the `@` may be a query value's (`password=a@b`) or the
/// password may hold the `?`: then only the scheme is shown.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (userinfo, after) = match rest.rsplit_once('@') {
        // An `@` after a `?` or `#` may sit in the query (a `password=`
        // value holding one): nothing past the scheme can be told apart
        // safely, so nothing is shown.
        Some((userinfo, _)) if userinfo.contains(['?', '#']) => {
            return format!("{scheme}://***");
        }
        Some((userinfo, after)) => (Some(userinfo), after),
        None => (None, rest),
    };
    let (host_path, query) = match after.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (after, None),
    };
    let mut out = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            // A user name that looks like more than a name: hide it too.
            Some((user, _)) if !user.contains(['/', '?', '#', '&']) => {
                out.push_str(user);
                out.push_str(":***@");
            }
            Some(_) => out.push_str("***@"),
            None if !userinfo.contains(['/', '?', '#', '&']) => {
                out.push_str(userinfo);
                out.push('@');
            }
            None => out.push_str("***@"),
        }
    }
    out.push_str(host_path);
    if let Some(q) = query {
        let redacted: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&redacted.join("&"));
    }
    out
}

/// Builds the keyring: from `--secret-file` (one base64 secret, version
/// `file_version`), else from every `APIKEY_SECRET_V<n>` set, the highest
/// version current (`APIKEY_SECRET_CURRENT` picks another).
///
/// # Errors
/// A usage error when no secret is configured, a value is not base64 of at
/// least 32 bytes, or the file cannot be read; never with the secret's text.
pub fn keyring(secret_file: Option<&Path>, file_version: u8) -> CliResult<Keyring> {
    if let Some(path) = secret_file {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CliError::usage(format!(
                "cannot read the secret file {}: {e}",
                path.display()
            ))
        })?);
        warn_if_readable_by_others(path);
        let secret = ServerSecret::from_base64(&text)
            .map_err(|e| CliError::usage(format!("the secret file {}: {e}", path.display())))?;
        return Keyring::new(file_version, secret)
            .map_err(|e| CliError::usage(format!("--secret-version: {e}")));
    }
    let mut ring: Option<Keyring> = None;
    for version in (1..=MAX_SECRET_VERSION).rev() {
        let name = format!("{SECRET_ENV_PREFIX}{version}");
        let Some(text) = std::env::var_os(&name) else {
            continue;
        };
        let text = zeroize::Zeroizing::new(
            text.into_string()
                .map_err(|_| CliError::usage(format!("{name} is not valid UTF-8 base64")))?,
        );
        let secret = ServerSecret::from_base64(&text)
            .map_err(|e| CliError::usage(format!("{name}: {e}")))?;
        match &mut ring {
            None => ring = Some(Keyring::new(version, secret).map_err(secret_error)?),
            Some(r) => {
                r.add(version, secret).map_err(secret_error)?;
            }
        }
    }
    let Some(mut ring) = ring else {
        return Err(CliError::usage(format!(
            "no server secret: set {SECRET_ENV_PREFIX}1 (base64 of 32 or more random bytes; \
             `apikey secret generate` makes one) or pass --secret-file PATH. It must be the \
             secret your service verifies with"
        )));
    };
    if let Ok(current) = std::env::var("APIKEY_SECRET_CURRENT") {
        let version: u8 = current.trim().parse().map_err(|_| {
            CliError::usage("APIKEY_SECRET_CURRENT is not a secret version (1 to 61)")
        })?;
        ring.set_current(version).map_err(|_| {
            CliError::usage(format!(
                "APIKEY_SECRET_CURRENT is {version}, but {SECRET_ENV_PREFIX}{version} is not set"
            ))
        })?;
    }
    Ok(ring)
}

fn secret_error(e: apikey::Error) -> CliError {
    CliError::usage(format!("server secret: {e}"))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        crate::errln!(
            "warning: the secret file {} is readable by other users (chmod 600 it)",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// A verifier over `ring` with the application prefixes `prefixes`
/// (`PREFIX=live|test`) registered next to the built-in ones.
///
/// # Errors
/// A usage error for a malformed or duplicate prefix.
pub fn verifier(ring: Keyring, prefixes: &[String]) -> CliResult<Verifier> {
    let mut verifier = Verifier::new(ring);
    for entry in prefixes.iter().flat_map(|p| p.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (prefix, env) = pair(entry, "--register-prefix", "PREFIX=live|test")?;
        let environment = match env {
            "live" => Environment::Live,
            "test" => Environment::Test,
            _ => {
                return Err(CliError::usage(format!(
                    "--register-prefix {entry}: the environment is `live` or `test`"
                )));
            }
        };
        verifier = verifier
            .with_prefix(prefix, environment)
            .map_err(|e| CliError::usage(format!("--register-prefix: {e}")))?;
    }
    Ok(verifier)
}

/// Splits `A=B`.
///
/// # Errors
/// A usage error naming `flag` and the expected `form`.
pub fn pair<'a>(text: &'a str, flag: &str, form: &str) -> CliResult<(&'a str, &'a str)> {
    text.split_once('=')
        .map(|(a, b)| (a.trim(), b.trim()))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| CliError::usage(format!("{flag} takes {form}")))
}

/// Parses a duration: a whole number with a unit, `s`, `m`, `h`, `d` or `w`
/// (`90d`, `12h`); `0` alone is zero.
///
/// # Errors
/// A usage error naming `flag`.
pub fn duration(text: &str, flag: &str) -> CliResult<std::time::Duration> {
    let bad = || {
        CliError::usage(format!(
            "{flag}: `{}` is not a duration (a whole number with s, m, h, d or w: 30d, 12h)",
            text.escape_debug()
        ))
    };
    let text = text.trim();
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds)
        .filter(|s| *s <= 100 * 366 * 86_400)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| {
            CliError::usage(format!(
                "{flag}: `{}` is too long (at most 100 years)",
                text.escape_debug()
            ))
        })
}

/// Parses an RFC 3339 time (`2027-01-31T00:00:00Z`).
///
/// # Errors
/// A usage error naming `flag`.
pub fn timestamp(text: &str, flag: &str) -> CliResult<Timestamp> {
    text.trim().parse().map_err(|e: apikey::TimestampError| {
        CliError::usage(format!(
            "{flag}: `{}`: {e} (e.g. 2027-01-31T00:00:00Z; times from 1970 to 2255)",
            text.escape_debug()
        ))
    })
}

/// Scopes from `--scopes` values: comma- or space-separated, repeatable.
pub fn scopes(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split([',', ' ']))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_the_password_and_query_values() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db.example:5432/keys?password=x&sslmode=require"),
            "postgres://app:***@db.example:5432/keys?password=***&sslmode=***"
        );
        assert_eq!(
            redact_url("postgres://app@127.0.0.1/keys"),
            "postgres://app@127.0.0.1/keys"
        );
        assert_eq!(redact_url("postgres://h"), "postgres://h");
        assert_eq!(
            redact_url("postgres://app:pa/ss@w0rd@db/keys"),
            "postgres://app:***@db/keys"
        );
        assert_eq!(redact_url("no scheme:secret"), "***");
    }

    /// A password holding `?`, `#` or `&` (the second review: the query
    /// was split off first, and the password's tail was printed).
    #[test]
    fn redact_url_hides_a_password_holding_query_characters() {
        for (url, shown) in [
            ("postgres://app:Zx9?kLq2@db.internal/keys", "postgres://***"),
            ("postgres://app:12?x@127.0.0.1:1/keys", "postgres://***"),
            ("postgres://app:s3cr#et?z@h/db", "postgres://***"),
            (
                "postgres://app:a&b=c@h/db?sslmode=require",
                "postgres://app:***@h/db?sslmode=***",
            ),
            (
                "postgres://app:pw?x@h/db?application_name=a@b",
                "postgres://***",
            ),
            // A password in the query holding an `@` (the second review).
            (
                "postgres://keys.internal/keys?password=hunter@2secret",
                "postgres://***",
            ),
            ("postgres://app@db/keys?password=Zx9@kLq2", "postgres://***"),
            (
                "postgres://app:pw@db/keys?sslpassword=ab@cdTAIL",
                "postgres://***",
            ),
            (
                "postgres:///keys?host=/run/pg&password=s3cr@etTail",
                "postgres://***",
            ),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, shown, "{url}");
            for secret in [
                "Zx9", "kLq2", "12?x", "s3cr", "et?z", "a&b", "pw?x", "hunter", "2secret",
                "cdTAIL", "etTail",
            ] {
                assert!(!redacted.contains(secret), "{url} -> {redacted}");
            }
        }
    }

    #[test]
    fn durations_take_a_unit_and_refuse_the_rest() {
        assert_eq!(
            duration("30d", "x").ok(),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(duration("0", "x").ok(), Some(std::time::Duration::ZERO));
        for bad in ["", "d", "30", "3.5d", "-1d", "30y", "99999999999999w"] {
            assert!(duration(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn database_urls_pick_the_store() {
        assert!(matches!(
            Target::from_args(None, Some("sqlite:keys.db")),
            Ok(Target::Sqlite(p)) if p == Path::new("keys.db")
        ));
        assert!(matches!(
            Target::from_args(None, Some("sqlite:///var/keys.db")),
            Ok(Target::Sqlite(p)) if p == Path::new("/var/keys.db")
        ));
        assert!(matches!(
            Target::from_args(None, Some("postgresql://u@h/d")),
            Ok(Target::Postgres(_))
        ));
        let err = Target::from_args(None, Some("mysql://u:pw@h/d")).err();
        let message = err.map(|e| e.message).unwrap_or_default();
        assert!(
            message.contains("`mysql`") && !message.contains("pw"),
            "{message}"
        );
        assert!(Target::from_args(None, None).is_err());
    }
}
