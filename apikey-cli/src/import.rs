//! `apikey keys import`: legacy keys from JSONL or CSV, one per line,
//! streamed through a bounded line buffer (memory does not grow with the
//! file), each line imported as it is read. A failed line is reported with
//! its number and why, never with its key; a key imported by an earlier run
//! is counted as skipped, so an interrupted import can simply be run again.

use std::io::{BufRead, BufReader, IsTerminal as _, Read};
use std::path::Path;

use std::sync::Arc;

use apikey::{Error as KeyError, ImportKey, KeyManager, KeyStoreWrite, KeySummary, UsageStore};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use crate::cli::ImportFormat;
use crate::commands::{Context, Outcome};
use crate::config;
use crate::error::{CliError, CliResult, Exit};
use crate::output;

/// The longest line read (a legacy key is at most 512 bytes; the rest is
/// owner, name, scopes and metadata).
pub const MAX_LINE: usize = 64 * 1024;

/// Failed lines listed in the `--json` summary (all are on stderr).
const MAX_REPORTED: usize = 100;

/// The fields a line may have.
const FIELDS: [&str; 9] = [
    "key",
    "sha256",
    "prefix",
    "owner",
    "name",
    "description",
    "scopes",
    "expires_at",
    "metadata",
];

/// One failed line.
#[derive(Debug, Serialize)]
struct LineError {
    line: u64,
    code: &'static str,
    message: String,
}

/// The `--json` summary.
#[derive(Debug, Default, Serialize)]
struct Summary {
    lines: u64,
    imported: u64,
    skipped: u64,
    failed: u64,
    errors: Vec<LineError>,
    errors_truncated: bool,
}

/// A line's fields before they become an [`ImportKey`].
#[derive(Default)]
struct Fields {
    key: Option<Zeroizing<String>>,
    sha256: Option<String>,
    prefix: Option<String>,
    owner: Option<String>,
    name: Option<String>,
    description: Option<String>,
    scopes: Vec<String>,
    expires_at: Option<String>,
    metadata: Vec<(String, String)>,
}

impl Fields {
    fn into_import(self) -> Result<ImportKey, String> {
        let mut import = match (self.key, self.sha256) {
            (Some(key), None) => {
                if self.prefix.is_some() {
                    return Err("`prefix` goes with `sha256`, not with `key`".into());
                }
                ImportKey::plaintext(key.as_str())
            }
            (None, Some(hex)) => {
                let prefix = self
                    .prefix
                    .ok_or("a `sha256` line needs the `prefix` of the key it digests")?;
                ImportKey::sha256(prefix, sha256_hex(&hex)?)
            }
            (Some(_), Some(_)) => return Err("give `key` or `sha256`, not both".into()),
            (None, None) => return Err("no `key` or `sha256`".into()),
        };
        if let Some(owner) = self.owner {
            import = import.owner(owner);
        }
        if let Some(name) = self.name {
            import = import.name(name);
        }
        if let Some(d) = self.description {
            import = import.description(d);
        }
        if !self.scopes.is_empty() {
            import = import.scopes(self.scopes);
        }
        if let Some(t) = self.expires_at {
            // Not `config::timestamp`: its message repeats the text.
            let at = t.trim().parse::<apikey::Timestamp>().map_err(
                |_| "`expires_at` is not an RFC 3339 time from 1970 to 2255 (e.g. 2027-01-31T00:00:00Z)",
            )?;
            import = import.expires_at(at);
        }
        for (k, v) in self.metadata {
            import = import.metadata(k, v);
        }
        Ok(import)
    }
}

/// 64 hex digits; the message never repeats the text.
fn sha256_hex(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    let bad = || "`sha256` must be 64 hexadecimal digits".to_owned();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A string field; the message names the field, never the value.
fn string(field: &str, value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(format!("`{field}` must be a string")),
    }
}

/// Parses one JSONL line.
fn parse_json(line: &[u8]) -> Result<Fields, String> {
    // serde_json's syntax errors say where, not what: no key text.
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| format!("not valid JSON (column {})", e.column()))?;
    let Value::Object(object) = value else {
        return Err("not a JSON object".into());
    };
    let mut fields = Fields::default();
    for (name, value) in object {
        match name.as_str() {
            "key" => fields.key = Some(Zeroizing::new(string("key", value)?)),
            "sha256" => fields.sha256 = Some(string("sha256", value)?),
            "prefix" => fields.prefix = Some(string("prefix", value)?),
            "owner" => fields.owner = Some(string("owner", value)?),
            "name" => fields.name = Some(string("name", value)?),
            "description" => fields.description = Some(string("description", value)?),
            "expires_at" => fields.expires_at = Some(string("expires_at", value)?),
            "scopes" => {
                fields.scopes = match value {
                    Value::String(s) => config::scopes(&[s]),
                    Value::Array(items) => items
                        .into_iter()
                        .map(|v| string("scopes", v))
                        .collect::<Result<_, _>>()?,
                    _ => return Err("`scopes` must be an array of strings or a string".into()),
                }
            }
            "metadata" => fields.metadata = metadata(value)?,
            // The name is not repeated: it could be a key pasted as a name.
            _ => {
                return Err(format!("unknown field (allowed: {})", FIELDS.join(", ")));
            }
        }
    }
    Ok(fields)
}

fn metadata(value: Value) -> Result<Vec<(String, String)>, String> {
    let Value::Object(map) = value else {
        return Err("`metadata` must be an object of strings".into());
    };
    let map: Map<String, Value> = map;
    map.into_iter()
        .map(|(k, v)| string("metadata", v).map(|v| (k, v)))
        .collect()
}

/// The columns of a CSV file, in order.
struct Columns(Vec<usize>);

impl Columns {
    /// Reads the header line; a column is named by position only.
    fn parse(line: &[u8]) -> Result<Self, String> {
        let record = csv_record(line)?;
        let mut seen = Vec::new();
        for (i, name) in record.iter().enumerate() {
            let name = name.trim();
            let Some(field) = FIELDS.iter().position(|f| *f == name) else {
                return Err(format!(
                    "column {} of the header is not a field name (allowed: {})",
                    i + 1,
                    FIELDS.join(", ")
                ));
            };
            if seen.contains(&field) {
                return Err(format!("the header names `{name}` twice"));
            }
            seen.push(field);
        }
        Ok(Self(seen))
    }

    /// Parses one data line.
    fn fields(&self, line: &[u8]) -> Result<Fields, String> {
        let record = csv_record(line)?;
        if record.len() != self.0.len() {
            return Err(format!(
                "{} columns where the header has {}",
                record.len(),
                self.0.len()
            ));
        }
        let mut fields = Fields::default();
        for (&field, value) in self.0.iter().zip(record.iter()) {
            if value.is_empty() {
                continue;
            }
            let v = value.to_owned();
            match FIELDS[field] {
                "key" => fields.key = Some(Zeroizing::new(v)),
                "sha256" => fields.sha256 = Some(v),
                "prefix" => fields.prefix = Some(v),
                "owner" => fields.owner = Some(v),
                "name" => fields.name = Some(v),
                "description" => fields.description = Some(v),
                "scopes" => fields.scopes = config::scopes(&[v]),
                "expires_at" => fields.expires_at = Some(v),
                _ => {
                    for entry in v.split(';').filter(|e| !e.trim().is_empty()) {
                        let (k, val) = config::pair(entry, "`metadata`", "KEY=VALUE;KEY=VALUE")
                            .map_err(|e| e.message)?;
                        fields.metadata.push((k.to_owned(), val.to_owned()));
                    }
                }
            }
        }
        Ok(fields)
    }
}

/// One CSV record from one line (quoted fields may not span lines).
fn csv_record(line: &[u8]) -> Result<csv::StringRecord, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line);
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => Ok(record),
        Ok(false) => Err("empty line".into()),
        // csv's errors give a position and a kind (UTF-8, quoting), not text.
        Err(e) => Err(match e.kind() {
            csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
            _ => "not a valid CSV line".into(),
        }),
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf` (without the
/// line end). `Ok(None)` at the end of input; `Ok(Some(false))` for a
/// longer line, whose rest is skipped.
fn read_line<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    read: &mut u64,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    *read += n as u64;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(true));
    }
    if buf.len() > MAX_LINE {
        *read += reader.skip_until(b'\n')? as u64;
        buf.clear();
        return Ok(Some(false));
    }
    // The last line, without a line end.
    Ok(Some(true))
}

fn progress(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{bar:30} {bytes}/{total_bytes} {msg} ({eta} left)"
    } else {
        "{spinner} {bytes} {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// The running count, the progress bar and the failed lines.
struct Tally<'a> {
    summary: Summary,
    bar: ProgressBar,
    file: &'a Path,
}

impl Tally<'_> {
    /// Records a failed line: on stderr at once, in the summary while it
    /// has room.
    fn failed(&mut self, line: u64, code: &'static str, message: String) {
        self.summary.failed += 1;
        let file = self.file.display();
        self.bar
            .suspend(|| crate::errln!("{file} line {line}: {message}"));
        if self.summary.errors.len() < MAX_REPORTED {
            self.summary.errors.push(LineError {
                line,
                code,
                message,
            });
        } else {
            self.summary.errors_truncated = true;
        }
    }

    /// Records the store's answer for line `line`.
    ///
    /// # Errors
    /// A store failure (exit 3) ends the import.
    fn answer(&mut self, line: u64, answer: apikey::Result<KeySummary>) -> CliResult<()> {
        match answer {
            Ok(_) => self.summary.imported += 1,
            // The one `InvalidState` of an import: imported before.
            Err(KeyError::InvalidState(_)) => self.summary.skipped += 1,
            Err(e @ KeyError::StoreUnavailable(_)) => {
                self.bar.finish_and_clear();
                let mut err = CliError::from_key_error(&format!("line {line}"), &e);
                err.message = format!(
                    "{}; the import stopped ({} imported, {} skipped, {} failed so far; run it \
                     again to go on: keys imported already are skipped)",
                    err.message, self.summary.imported, self.summary.skipped, self.summary.failed
                );
                return Err(err);
            }
            Err(e) => self.failed(line, e.code().as_str(), e.to_string()),
        }
        self.bar.set_message(format!(
            "{} imported, {} skipped, {} failed",
            self.summary.imported, self.summary.skipped, self.summary.failed
        ));
        Ok(())
    }

    /// Records a finished import task.
    fn joined(
        &mut self,
        done: Result<(u64, apikey::Result<KeySummary>), tokio::task::JoinError>,
    ) -> CliResult<()> {
        match done {
            Ok((line, answer)) => self.answer(line, answer),
            Err(_) => Err(CliError::store(
                "an import task failed; run the import again",
            )),
        }
    }
}

/// Runs `keys import`: reads line by line and keeps at most `jobs` imports
/// in flight (memory stays bounded by the line limit times `jobs`).
///
/// # Errors
/// Exit 1 when the file cannot be read or its CSV header is bad; exit 3
/// when the store fails (the lines before were imported).
pub async fn run<S>(
    manager: Arc<KeyManager<S>>,
    file: &Path,
    options: ImportOptions,
    ctx: &Context,
) -> Outcome
where
    S: KeyStoreWrite + UsageStore + 'static,
{
    let format = options.format.unwrap_or(
        if file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            ImportFormat::Csv
        } else {
            ImportFormat::Jsonl
        },
    );
    let (input, total): (Box<dyn Read>, Option<u64>) = if file == Path::new("-") {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| CliError::usage(format!("cannot open {}: {e}", file.display())))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut tally = Tally {
        summary: Summary::default(),
        bar: progress(total),
        file,
    };
    let jobs = options.jobs.max(1);
    let mut tasks = JoinSet::new();
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    let mut read = 0u64;
    let mut columns: Option<Columns> = None;
    let mut line_no = 0u64;
    loop {
        if options.fail_fast && tally.summary.failed > 0 {
            break;
        }
        let line = read_line(&mut reader, &mut buf, &mut read).map_err(|e| {
            CliError::usage(format!(
                "{}: read failed after line {line_no}: {e}",
                file.display()
            ))
        })?;
        let Some(fits) = line else { break };
        line_no += 1;
        tally.bar.set_position(read);
        if fits && buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = if !fits {
            Err(format!("longer than {MAX_LINE} bytes"))
        } else {
            match (format, &columns) {
                (ImportFormat::Jsonl, _) => parse_json(&buf),
                (ImportFormat::Csv, None) => {
                    columns = Some(Columns::parse(&buf).map_err(|why| {
                        CliError::usage(format!("{} line {line_no}: {why}", file.display()))
                    })?);
                    continue;
                }
                (ImportFormat::Csv, Some(c)) => c.fields(&buf),
            }
        };
        tally.summary.lines += 1;
        match parsed.and_then(Fields::into_import) {
            Err(why) => tally.failed(line_no, "INVALID_LINE", why),
            Ok(import) => {
                while tasks.len() >= jobs {
                    if let Some(done) = tasks.join_next().await {
                        tally.joined(done)?;
                    }
                }
                let (manager, actor, line) = (Arc::clone(&manager), ctx.actor.clone(), line_no);
                tasks.spawn(async move { (line, manager.import(import, &actor).await) });
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        tally.joined(done)?;
    }
    let Tally { summary, bar, .. } = tally;
    bar.finish_and_clear();
    if ctx.json {
        output::json(&summary);
    } else {
        crate::outln!(
            "{} {}: {} imported, {} skipped (imported before), {} failed",
            summary.lines,
            if summary.lines == 1 { "line" } else { "lines" },
            summary.imported,
            summary.skipped,
            summary.failed
        );
    }
    Ok((summary.failed > 0).then_some(Exit::Usage))
}

/// The options of `keys import`.
#[derive(Clone, Copy, Debug)]
pub struct ImportOptions {
    /// The file's format (default: from its name).
    pub format: Option<ImportFormat>,
    /// Stop at the first failed line.
    pub fail_fast: bool,
    /// Imports in flight at once.
    pub jobs: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_line_bounds_every_line_and_counts_the_long_one() {
        let long = "x".repeat(MAX_LINE + 10);
        let text = format!("a\r\n{long}\nb");
        let mut reader = BufReader::with_capacity(16, text.as_bytes());
        let (mut buf, mut read) = (Vec::new(), 0u64);
        assert_eq!(
            read_line(&mut reader, &mut buf, &mut read).ok(),
            Some(Some(true))
        );
        assert_eq!(buf, b"a");
        assert_eq!(
            read_line(&mut reader, &mut buf, &mut read).ok(),
            Some(Some(false))
        );
        assert!(buf.capacity() <= 2 * (MAX_LINE + 1));
        assert_eq!(
            read_line(&mut reader, &mut buf, &mut read).ok(),
            Some(Some(true))
        );
        assert_eq!(buf, b"b");
        assert_eq!(read_line(&mut reader, &mut buf, &mut read).ok(), Some(None));
        assert_eq!(read, text.len() as u64);
    }

    #[test]
    fn line_errors_never_repeat_the_key() {
        let key = "oldco_S3CRETS3CRETS3CRET";
        for line in [
            format!("{{\"key\": \"{key}\", \"owner\": 5}}"),
            format!("{{\"owner\": [\"{key}\"]}}"),
            format!("{{\"metadata\": {{\"a\": [\"{key}\"]}}}}"),
            format!("{{\"scopes\": [[\"{key}\"]]}}"),
            format!("{{\"{key}\": \"x\"}}"),
            format!("{{\"scopes\": {{\"{key}\": 1}}}}"),
            format!("{{\"key\": \"{key}\""),
            format!("{{\"key\": \"{key}\", \"sha256\": \"{key}\"}}"),
            format!("{{\"sha256\": \"{key}\", \"prefix\": \"oldco_\"}}"),
            format!("{{\"key\": \"{key}\", \"expires_at\": \"{key}\"}}"),
        ] {
            let err = parse_json(line.as_bytes())
                .and_then(Fields::into_import)
                .err()
                .unwrap_or_default();
            assert!(!err.is_empty(), "{line} was accepted");
            assert!(!err.contains("S3CRET"), "{err}");
        }
        let header = Columns::parse(format!("{key},owner").as_bytes())
            .err()
            .unwrap_or_default();
        assert!(!header.is_empty() && !header.contains("S3CRET"), "{header}");
    }

    #[test]
    fn sha256_lines_decode_their_digest() {
        let hex = "00ff".repeat(16);
        assert_eq!(sha256_hex(&hex).ok().map(|d| (d[0], d[1])), Some((0, 255)));
        assert!(sha256_hex(&"0g".repeat(32)).is_err());
        assert!(sha256_hex("00").is_err());
    }

    /// `from_str_radix` takes a sign: 32 pairs of `+f` read as a digest.
    #[test]
    fn sha256_hex_refuses_signs() {
        assert!(sha256_hex(&"+f".repeat(32)).is_err());
        assert!(sha256_hex(&format!("{}+0", "ab".repeat(31))).is_err());
    }
}
