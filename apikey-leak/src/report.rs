//! The framework-free core: what a batch of reported tokens does.
//!
//! Every token is checked offline first ([`Verifier::parse`]: length,
//! prefix, checksum, version and the keyed tag). Junk and forged tokens
//! stop there and make **no store call**, so neither endpoint is an oracle
//! for guessing keys. A tag-valid token is fetched by id and its secret
//! compared (the same constant-time digest check as verification); only a
//! token whose secret matches is a real key. Then the [`LeakPolicy`]
//! decides, the action goes through the [`KeyManager`] (so its own audit
//! event, `revoked` or `disabled`, is emitted once, by the manager), and a
//! `leak_reported` event and the [`LeakNotifier`] follow.
//!
//! Keys imported from another system carry no tag: a token under a legacy
//! prefix declared on the manager ([`KeyManager::with_legacy_prefix`]) is looked up
//! through the legacy index (one indexed store call, then the same
//! constant-time comparison as verification). Those are the only tokens
//! that reach the store without a valid tag.
//!
//! [`Verifier::parse`]: apikey::Verifier::parse

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use apikey::Timestamp;
use apikey::limits::{Limits, NoLimits};
use apikey::{
    Actor, AuditEvent, AuditKind, AuditSink, Authenticator, Clock, Error, KeyDigest, KeyId,
    KeyManager, KeyRecord, KeyStatus, KeyStore, KeyStoreWrite, KeyView, NoAudit, Requirement,
    StoreError, SystemClock, UsageStore,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::LeakError;
use crate::policy::{LeakAction, LeakPolicy};

/// Longest URL kept in an audit event or notice; longer ones are cut.
pub const MAX_URL_LEN: usize = 2048;
/// Default number of (token, url, source) reports remembered to make
/// retries idempotent.
pub const DEFAULT_DEDUPE_CAPACITY: usize = 65_536;

/// One reported token. Its `Debug` never shows the token.
#[derive(Clone, Copy)]
pub(crate) struct Reported<'a> {
    /// The token as found.
    pub token: &'a str,
    /// The reporter's name for its kind (GitHub's `type`).
    pub token_type: &'a str,
    /// Where it was found, if said.
    pub url: Option<&'a str>,
    /// Where it was found, kind of place (GitHub's `source`: `content`,
    /// `commit`, `npm`, ...) or `public_revoke`.
    pub source: &'a str,
}

impl fmt::Debug for Reported<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reported")
            .field("token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

/// Whether a reported token is one of ours (GitHub's feedback labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// A real key issued by this service (whatever its status).
    TruePositive,
    /// Not a key of this service: junk, forged, unknown or a wrong secret.
    FalsePositive,
}

/// Feedback for one reported token, in GitHub's optional response format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Feedback {
    /// SHA-256 of the raw token, lowercase hex.
    pub token_hash: String,
    /// The type the reporter gave.
    pub token_type: String,
    /// The verdict.
    pub label: Label,
}

/// What was done to a real key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Revoked by this report.
    Revoked,
    /// It was revoked already (a retry, or an earlier report).
    AlreadyRevoked,
    /// Disabled by this report.
    Disabled,
    /// It was disabled already.
    AlreadyDisabled,
    /// Left as it was ([`LeakAction::NotifyOnly`]).
    Notified,
}

/// Counts for one request (for the service's metrics and logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Tokens in the request.
    pub matches: usize,
    /// Distinct tokens.
    pub distinct: usize,
    /// Distinct tokens refused offline (junk, forged): no store call.
    pub rejected_offline: usize,
    /// Tag-valid tokens with no record or a wrong secret.
    pub unknown: usize,
    /// Real keys found.
    pub keys: usize,
    /// Keys revoked or disabled by this request.
    pub changed: usize,
}

/// The result of a batch: one feedback entry per reported token, and counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Per reported token, in request order.
    pub feedback: Vec<Feedback>,
    /// Counts.
    pub summary: Summary,
}

impl Report {
    /// The feedback as GitHub's optional response body: a JSON array of
    /// `{"token_hash","token_type","label"}`.
    pub fn feedback_json(&self) -> String {
        serde_json::to_string(&self.feedback).unwrap_or_else(|_| "[]".to_owned())
    }
}

/// A real key was reported: what the service may tell its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeakNotice {
    /// The key's public id.
    pub key_id: KeyId,
    /// Its owner, if any.
    pub owner: Option<String>,
    /// Its prefix (`sk_live_`, ...).
    pub prefix: String,
    /// What the policy said.
    pub action: LeakAction,
    /// What happened.
    pub outcome: Outcome,
    /// Where it was found, if said (cut to [`MAX_URL_LEN`]).
    pub url: Option<String>,
    /// The kind of place, or `public_revoke`.
    pub source: String,
    /// The reporter's address (public revocation requests).
    pub reporter: Option<IpAddr>,
}

/// Called once per real key and report (an email to the owner, a ticket).
/// Called on the request's task, after the action: must not block for long.
pub trait LeakNotifier: Send + Sync {
    /// A real key was reported.
    fn leaked(&self, notice: &LeakNotice);
}

/// Notifies nobody (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNotify;

impl LeakNotifier for NoNotify {
    fn leaked(&self, _notice: &LeakNotice) {}
}

impl<F: Fn(&LeakNotice) + Send + Sync> LeakNotifier for F {
    fn leaked(&self, notice: &LeakNotice) {
        self(notice);
    }
}

/// Remembers recent reports, bounded, oldest forgotten first.
#[derive(Debug)]
struct Seen {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    capacity: usize,
}

impl Seen {
    fn contains(&self, id: &[u8; 32]) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: [u8; 32]) {
        if self.capacity == 0 || !self.set.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// What one distinct token turned out to be.
#[derive(Clone, Debug)]
enum Finding {
    Rejected,
    Unknown,
    Key {
        id: KeyId,
        prefix: String,
        owner: Option<String>,
        status: KeyStatus,
        /// Public by design ([`apikey::Prefix::is_publishable`]): never
        /// revoked or disabled by a report.
        publishable: bool,
    },
}

/// A real key, and what was done.
#[derive(Clone, Debug)]
struct Found {
    id: KeyId,
    prefix: String,
    owner: Option<String>,
    action: LeakAction,
    outcome: Outcome,
}

/// Who acts: the actor id in audit events, and the revocation reason.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reporter<'a> {
    pub actor: &'a str,
    pub reason: &'a str,
    pub address: Option<IpAddr>,
}

/// Handles reported tokens for a [`KeyManager`]. Shared by the GitHub
/// partner endpoint and the public revocation endpoint.
///
/// Idempotent: a retried batch revokes nothing twice (the manager revokes
/// a revoked key as a no-op, with no second `revoked` event), answers the
/// same feedback, and, for the last [`DEFAULT_DEDUPE_CAPACITY`] distinct
/// reports remembered by this instance, emits no second `leak_reported`
/// event or notice.
pub struct LeakResponder<S, C = SystemClock, L = NoLimits> {
    manager: Arc<KeyManager<S, C, L>>,
    policy: LeakPolicy,
    audit: Arc<dyn AuditSink>,
    notifier: Arc<dyn LeakNotifier>,
    seen: Mutex<Seen>,
    /// The manager's legacy prefixes: (legacy, native).
    legacy: Vec<(String, String)>,
}

impl<S, C, L> fmt::Debug for LeakResponder<S, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakResponder")
            .field("policy", &self.policy)
            .field(
                "legacy_prefixes",
                &self.legacy.iter().map(|(l, _)| l).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<S, C, L> LeakResponder<S, C, L>
where
    S: KeyStoreWrite + UsageStore,
    C: Clock,
    L: Limits,
{
    /// A responder with the default [`LeakPolicy`], no audit sink and no
    /// notifier. It takes the manager's legacy prefixes
    /// ([`KeyManager::with_legacy_prefix`]): a reported token under one of
    /// them is looked up through the legacy index (one store call; so for
    /// such tokens, unlike tagged ones, junk reaches the store), then
    /// compared in constant time as verification does, with no usage
    /// recorded.
    pub fn new(manager: Arc<KeyManager<S, C, L>>) -> Self {
        Self {
            legacy: manager
                .legacy_prefixes()
                .map(|(l, n)| (l.to_owned(), n.to_owned()))
                .collect(),
            policy: LeakPolicy::default(),
            audit: Arc::new(NoAudit),
            notifier: Arc::new(NoNotify),
            seen: Mutex::new(Seen {
                set: HashSet::new(),
                order: VecDeque::new(),
                capacity: DEFAULT_DEDUPE_CAPACITY,
            }),
            manager,
        }
    }

    /// A read-only authenticator (no usage, no audit, no limits) over
    /// `store`, with the declared legacy prefixes.
    fn legacy_authenticator<'a, T: KeyStore>(
        &'a self,
        store: &'a T,
    ) -> Result<Authenticator<&'a T, &'a C>, LeakError> {
        let mut auth = Authenticator::read_only_with_clock(
            self.manager.verifier().clone(),
            store,
            self.manager.clock(),
        );
        for (legacy, native) in &self.legacy {
            auth = auth
                .with_legacy_prefix(legacy, native)
                .map_err(|e| LeakError::InvalidConfig(e.to_string()))?;
        }
        Ok(auth)
    }

    /// Sets the policy.
    pub fn with_policy(mut self, policy: LeakPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Where `leak_reported` and `revocation_requested` events go. Pass the
    /// manager's sink so one log holds them next to its `revoked` events.
    pub fn with_audit_sink(mut self, sink: impl AuditSink + 'static) -> Self {
        self.audit = Arc::new(sink);
        self
    }

    /// Who is told about a real key (an email to its owner).
    pub fn with_notifier(mut self, notifier: impl LeakNotifier + 'static) -> Self {
        self.notifier = Arc::new(notifier);
        self
    }

    /// How many distinct reports are remembered for idempotency (0: none,
    /// every retry is audited and notified again; revocations stay
    /// idempotent). Defaults to [`DEFAULT_DEDUPE_CAPACITY`].
    pub fn with_dedupe_capacity(self, capacity: usize) -> Self {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .capacity = capacity;
        self
    }

    /// The manager.
    pub fn manager(&self) -> &KeyManager<S, C, L> {
        &self.manager
    }

    /// The policy.
    pub fn policy(&self) -> &LeakPolicy {
        &self.policy
    }

    pub(crate) fn audit(&self, event: &AuditEvent) {
        self.audit.record(event);
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.manager.clock().now()
    }

    /// Handles a batch of reported tokens from `reporter`. Each distinct
    /// token is examined and acted on once; each distinct (token, url,
    /// source) is audited and notified once.
    ///
    /// # Errors
    /// [`LeakError::Store`] when the store fails: what was done before
    /// stays done, and the sender's retry completes the rest once.
    pub(crate) async fn process(
        &self,
        batch: &[Reported<'_>],
        reporter: Reporter<'_>,
    ) -> Result<Report, LeakError> {
        let mut done: HashMap<&str, Option<Found>> = HashMap::new();
        let mut summary = Summary {
            matches: batch.len(),
            ..Summary::default()
        };
        let mut feedback = Vec::with_capacity(batch.len());
        for m in batch {
            let found = match done.get(m.token) {
                Some(found) => found.clone(),
                None => {
                    summary.distinct += 1;
                    let found = self.one(m.token, reporter, &mut summary).await?;
                    done.insert(m.token, found.clone());
                    found
                }
            };
            if let Some(found) = &found {
                self.tell(m, found, reporter);
            }
            feedback.push(Feedback {
                token_hash: token_hash(m.token),
                token_type: m.token_type.to_owned(),
                label: if found.is_some() {
                    Label::TruePositive
                } else {
                    Label::FalsePositive
                },
            });
        }
        Ok(Report { feedback, summary })
    }

    /// Examines one distinct token and applies the policy: `None` when it
    /// is not a key of ours.
    async fn one(
        &self,
        token: &str,
        reporter: Reporter<'_>,
        summary: &mut Summary,
    ) -> Result<Option<Found>, LeakError> {
        let (id, prefix, owner, status, publishable) = match self.examine(token, self.now()).await?
        {
            Finding::Rejected => {
                summary.rejected_offline += 1;
                return Ok(None);
            }
            Finding::Unknown => {
                summary.unknown += 1;
                return Ok(None);
            }
            Finding::Key {
                id,
                prefix,
                owner,
                status,
                publishable,
            } => (id, prefix, owner, status, publishable),
        };
        let action = if publishable {
            LeakAction::NotifyOnly
        } else {
            self.policy.action(&prefix)
        };
        let actor = Actor::new(reporter.actor).reason(reporter.reason);
        let Some(outcome) = self
            .act(id, status, action, &actor, reporter.reason)
            .await?
        else {
            // Deleted between the fetch and the action: no longer a key.
            summary.unknown += 1;
            return Ok(None);
        };
        summary.keys += 1;
        if matches!(outcome, Outcome::Revoked | Outcome::Disabled) {
            summary.changed += 1;
        }
        Ok(Some(Found {
            id,
            prefix,
            owner,
            action,
            outcome,
        }))
    }

    /// The `leak_reported` event and the notice, once per report.
    fn tell(&self, m: &Reported<'_>, found: &Found, reporter: Reporter<'_>) {
        let url = m.url.map(cut_url);
        let report_id = report_id(m.token, url.as_deref(), m.source, reporter.address);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.contains(&report_id) {
                return;
            }
            seen.insert(report_id);
        }
        let mut event = AuditEvent::new(
            self.now(),
            AuditKind::LeakReported {
                url: url.clone(),
                source: m.source.to_owned(),
                reporter: reporter.address,
            },
        );
        event.key_id = Some(found.id);
        event.owner.clone_from(&found.owner);
        event.actor = Some(reporter.actor.to_owned());
        event.reason = Some(format!(
            "{}: {}",
            found.action.as_str(),
            outcome_str(found.outcome)
        ));
        self.audit.record(&event);
        self.notifier.leaked(&LeakNotice {
            key_id: found.id,
            owner: found.owner.clone(),
            prefix: found.prefix.clone(),
            action: found.action,
            outcome: found.outcome,
            url,
            source: m.source.to_owned(),
            reporter: reporter.address,
        });
    }

    /// Offline checks, then (tag-valid tokens only) the record and the
    /// secret.
    async fn examine(&self, token: &str, now: Timestamp) -> Result<Finding, LeakError> {
        let verifier = self.manager.verifier();
        let Ok(parsed) = verifier.parse(token) else {
            return self.examine_legacy(token).await;
        };
        let view = KeyStore::fetch(self.manager.store(), parsed.id())
            .await
            .map_err(|e| LeakError::Store(Error::StoreUnavailable(e)))?;
        let Some(view) = view else {
            return Ok(Finding::Unknown);
        };
        // `verify` compares the secret first; every later failure (revoked,
        // disabled, expired, scope, environment, address) proves it matched.
        match verifier.verify(
            &parsed,
            Some(view.clone()),
            &now,
            &Requirement::none(),
            None,
        ) {
            Err(Error::InvalidApiKey) => Ok(Finding::Unknown),
            Err(Error::InvalidInput(e)) => Err(LeakError::InvalidConfig(format!(
                "the manager's clock is outside the supported range: {e}"
            ))),
            _ => Ok(Finding::Key {
                id: parsed.id(),
                prefix: parsed.prefix().to_owned(),
                owner: view.owner().map(str::to_owned),
                status: view.status(),
                publishable: view.is_publishable(),
            }),
        }
    }

    /// A token that is not a native key: an imported key when it starts with
    /// a declared legacy prefix, found through the legacy index and compared
    /// as verification does; otherwise refused with no store call.
    async fn examine_legacy(&self, token: &str) -> Result<Finding, LeakError> {
        if !self
            .legacy
            .iter()
            .any(|(l, _)| token.starts_with(l.as_str()))
        {
            return Ok(Finding::Rejected);
        }
        let capture = LegacyCapture::new(self.manager.store());
        let auth = self.legacy_authenticator(&capture)?;
        let outcome = auth.authenticate(token, &Requirement::none(), None).await;
        // A native prefix shadows a legacy one: not a legacy lookup at all.
        let Some(rec) = capture.take() else {
            return match outcome {
                Err(Error::StoreUnavailable(e)) => {
                    Err(LeakError::Store(Error::StoreUnavailable(e)))
                }
                Err(Error::MalformedApiKey(_)) => Ok(Finding::Rejected),
                _ => Ok(Finding::Unknown),
            };
        };
        match outcome {
            // Every failure after the comparison (revoked, disabled,
            // expired, environment, address) proves the text matched.
            Ok(_)
            | Err(
                Error::RevokedApiKey
                | Error::DisabledApiKey
                | Error::ExpiredApiKey { .. }
                | Error::NotYetValid { .. }
                | Error::WrongEnvironment { .. }
                | Error::IpNotAllowed
                | Error::InsufficientScope { .. }
                | Error::PolicyViolation { .. },
            ) => Ok(Finding::Key {
                id: rec.id,
                prefix: rec.prefix.as_str().to_owned(),
                owner: rec.owner.clone(),
                status: rec.status,
                publishable: rec.is_publishable(),
            }),
            Err(Error::StoreUnavailable(e)) => Err(LeakError::Store(Error::StoreUnavailable(e))),
            Err(Error::InvalidInput(e)) => Err(LeakError::InvalidConfig(format!(
                "the manager's clock is outside the supported range: {e}"
            ))),
            Err(_) => Ok(Finding::Unknown),
        }
    }

    /// Applies the policy. `None` when the key vanished meanwhile.
    async fn act(
        &self,
        id: KeyId,
        status: KeyStatus,
        action: LeakAction,
        actor: &Actor,
        reason: &str,
    ) -> Result<Option<Outcome>, LeakError> {
        let done = match (action, status) {
            (LeakAction::NotifyOnly, _) => return Ok(Some(Outcome::Notified)),
            (_, KeyStatus::Revoked) => return Ok(Some(Outcome::AlreadyRevoked)),
            (LeakAction::Disable, KeyStatus::Disabled) => {
                return Ok(Some(Outcome::AlreadyDisabled));
            }
            (LeakAction::Revoke, _) => {
                // The status came from a read that may be cached; the
                // manager re-reads it and keeps an earlier revocation.
                let before = self.now();
                self.manager.revoke(id, reason, actor).await.map(|summary| {
                    match summary.revocation {
                        Some(r) if r.at < before => Outcome::AlreadyRevoked,
                        _ => Outcome::Revoked,
                    }
                })
            }
            (LeakAction::Disable, _) => self
                .manager
                .disable(id, actor)
                .await
                .map(|_| Outcome::Disabled),
        };
        match done {
            Ok(outcome) => Ok(Some(outcome)),
            Err(Error::KeyNotFound) => Ok(None),
            // Revoked meanwhile (disable refuses a revoked key).
            Err(Error::InvalidState(_)) => Ok(Some(Outcome::AlreadyRevoked)),
            Err(e) => Err(LeakError::Store(e)),
        }
    }
}

fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Revoked => "revoked",
        Outcome::AlreadyRevoked => "already revoked",
        Outcome::Disabled => "disabled",
        Outcome::AlreadyDisabled => "already disabled",
        Outcome::Notified => "notified",
    }
}

fn cut_url(url: &str) -> String {
    let mut end = url.len().min(MAX_URL_LEN);
    while !url.is_char_boundary(end) {
        end -= 1;
    }
    url[..end].to_owned()
}

/// SHA-256 of a token, lowercase hex (GitHub's `token_hash`).
///
/// ```
/// assert_eq!(
///     apikey_leak::token_hash("abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Identifies one report of one token (for idempotency), without keeping it.
fn report_id(token: &str, url: Option<&str>, source: &str, reporter: Option<IpAddr>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [token, url.unwrap_or(""), source] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    if let Some(ip) = reporter {
        h.update(ip.to_string().as_bytes());
    }
    h.finalize().into()
}

/// The manager's store, read-only, remembering the record the legacy index
/// lookup returned (the authenticator's answer does not carry it on a
/// failure such as a disabled key).
struct LegacyCapture<'a, S> {
    store: &'a S,
    found: Mutex<Option<KeyRecord>>,
}

impl<'a, S> LegacyCapture<'a, S> {
    fn new(store: &'a S) -> Self {
        Self {
            store,
            found: Mutex::new(None),
        }
    }

    fn take(&self) -> Option<KeyRecord> {
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl<S: KeyStore> KeyStore for LegacyCapture<'_, S> {
    const IN_PROCESS: bool = S::IN_PROCESS;

    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        self.store.fetch(id).await
    }

    async fn find_legacy(&self, index: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        let rec = self.store.find_legacy(index).await?;
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&rec);
        Ok(rec)
    }
}
