//! The record JSON round-trip harness.

use super::*;

impl Harness {
    /// Record deserialization (serde_json): whatever deserializes
    /// re-serializes, reads back equal, serializes to the same bytes
    /// (a fixpoint), validates the same, yields the same [`KeyView`](apikey::KeyView), and
    /// verifies every fixed key exactly as the original record does, both
    /// directly and through a [`MemoryStore`].
    ///
    /// # Panics
    /// When an oracle fails.
    ///
    /// ```
    /// let h = apikey_testkit::fuzzing::Harness::new();
    /// let json = serde_json::to_vec(&h.keys()[0].1).expect("serializes");
    /// h.record_json(&json);
    /// h.record_json(b"{\"schema_version\":2}");
    /// ```
    pub fn record_json(&self, data: &[u8]) {
        let Ok(rec) = serde_json::from_slice::<KeyRecord>(data) else {
            return;
        };
        let json = match serde_json::to_vec(&rec) {
            Ok(j) => j,
            Err(e) => panic!("a record that deserializes must serialize: {e}; {rec:?}"),
        };
        let back: KeyRecord = match serde_json::from_slice(&json) {
            Ok(r) => r,
            Err(e) => panic!("a re-serialized record must deserialize: {e}"),
        };
        assert_eq!(back, rec, "record round-trip changed the record");
        assert_eq!(
            serde_json::to_vec(&back).ok().as_deref(),
            Some(&*json),
            "serialization is not a fixpoint"
        );
        assert_eq!(back.validate().is_ok(), rec.validate().is_ok());
        let (va, vb) = (
            std::sync::Arc::new(apikey::KeyView::from_record(&rec)),
            std::sync::Arc::new(apikey::KeyView::from_record(&back)),
        );
        assert_eq!(va, vb);
        self.assert_no_leak(&format!("{rec:?}"));

        let store = MemoryStore::new();
        let stored = store.insert_sync(rec.clone()).is_ok();
        assert_eq!(stored, rec.validate().is_ok());
        for requirement in [Requirement::none(), requirement_from(3)] {
            for (key, _) in &self.keys {
                let verify = |view: Option<std::sync::Arc<apikey::KeyView>>| {
                    let parsed = self.verifier.parse(key.expose_secret())?;
                    self.verifier
                        .verify(&parsed, view, &HARNESS_NOW, &requirement, None)
                };
                let run = |view: &std::sync::Arc<apikey::KeyView>| {
                    let v = (view.id() == key.id()).then(|| std::sync::Arc::clone(view));
                    outcome(verify(v))
                };
                let a = run(&va);
                assert_eq!(a, run(&vb), "round-tripped record verifies differently");
                if stored {
                    let via_store = outcome(
                        store
                            .fetch_sync(key.id())
                            .map_err(apikey::Error::from)
                            .and_then(verify),
                    );
                    assert_eq!(a, via_store, "stored record verifies differently");
                }
            }
        }
    }
}
