//! tracing spans (issue 22, feature `tracing`): authentication, store calls,
//! admission and usage flushes each open a span; the authentication span
//! names the key by its display form and the failure by its wire code, and
//! no span field holds the key.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use apikey::limits::MemoryLimits;
use apikey::web::{Decision, Gate, Route};
use apikey::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Every span opened, with its fields as `name=value` text, and the spans
/// entered (one thread), so `Span::current` works.
#[derive(Default)]
struct Spans(
    Mutex<Vec<(String, Vec<String>)>>,
    Mutex<Vec<(Id, &'static Metadata<'static>)>>,
    Mutex<Vec<&'static Metadata<'static>>>,
);

struct Fields<'a>(&'a mut Vec<String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push(format!("{}={value:?}", field.name()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push(format!("{}={value}", field.name()));
    }
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Vec::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push((span.metadata().name().to_owned(), fields));
        self.2.lock().unwrap().push(span.metadata());
        Id::from_u64(spans.len() as u64)
    }
    fn current_span(&self) -> tracing_core::span::Current {
        match self.1.lock().unwrap().last() {
            Some((id, meta)) => tracing_core::span::Current::new(id.clone(), meta),
            None => tracing_core::span::Current::none(),
        }
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.0.lock().unwrap();
        let i = usize::try_from(span.into_u64()).unwrap() - 1;
        values.record(&mut Fields(&mut spans[i].1));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, span: &Id) {
        let i = usize::try_from(span.into_u64()).unwrap() - 1;
        let meta = self.2.lock().unwrap()[i];
        self.1.lock().unwrap().push((span.clone(), meta));
    }
    fn exit(&self, _: &Id) {
        self.1.lock().unwrap().pop();
    }
}

#[derive(Clone)]
struct Shared(Arc<Spans>);

impl Subscriber for Shared {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.0.new_span(span)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        self.0.record(span, values)
    }
    fn record_follows_from(&self, a: &Id, b: &Id) {
        self.0.record_follows_from(a, b)
    }
    fn event(&self, e: &Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, s: &Id) {
        self.0.enter(s)
    }
    fn exit(&self, s: &Id) {
        self.0.exit(s)
    }
    fn current_span(&self) -> tracing_core::span::Current {
        self.0.current_span()
    }
}

/// Issue 22: spans on authenticate (key display form, reason), the store
/// call (a fetch that leaves the process), the admission and the usage
/// flush; never the key.
#[test]
fn spans_name_the_key_by_its_display_form_only() {
    let spans = Arc::new(Spans::default());
    let t0 = "2026-03-01T12:00:00Z".parse::<Timestamp>().unwrap();
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[17; 32]).unwrap()).unwrap());
    let memory = MemoryStore::new();
    let (key, record) = verifier.issue(NewKey::new("sk_live_"), t0).unwrap();
    memory.insert_sync(record.clone()).unwrap();
    let store = Arc::new(apikey_testkit::OutOfProcess(memory));
    let clock = ManualClock::new(t0);
    let gate = Gate::new(Authenticator::with_clock(verifier, store, clock.clone()))
        .with_limits(MemoryLimits::with_clock(clock));
    tracing::subscriber::with_default(Shared(Arc::clone(&spans)), || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let ok = gate
                    .check(
                        [("x-api-key", key.expose_secret())],
                        None,
                        None,
                        &Route::any_key(),
                    )
                    .await;
                assert!(matches!(ok, Decision::Admitted(_)));
                let mut wrong = key.expose_secret().to_owned();
                wrong.push('x');
                gate.authenticator()
                    .authenticate(&wrong, &Requirement::none(), None)
                    .await
                    .unwrap_err();
                gate.flush().await.unwrap();
            });
    });
    let spans = spans.0.lock().unwrap().clone();
    let named = |name: &str| -> Vec<Vec<String>> {
        spans
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    };
    let display = record.id.display_form("sk_live_");
    let auth = named("apikey.authenticate");
    assert_eq!(auth.len(), 2, "{spans:?}");
    assert!(auth[0].contains(&format!("key={display}")), "{auth:?}");
    assert!(
        auth[1].contains(&"reason=MALFORMED_API_KEY".to_owned()),
        "{auth:?}"
    );
    assert_eq!(named("apikey.store"), [vec!["operation=fetch".to_owned()]]);
    assert_eq!(named("apikey.admit").len(), 1);
    assert_eq!(named("apikey.usage.flush"), [vec!["deltas=1".to_owned()]]);
    for (_, fields) in &spans {
        for f in fields {
            assert!(!f.contains(key.expose_secret()), "{f}");
        }
    }
}
