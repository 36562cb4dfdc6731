//! The header-extraction harness.

use super::*;

impl Harness {
    /// Header extraction ([`Extractor`](apikey::web::Extractor)).
    ///
    /// Input: one configuration byte (bit 0: refuse the API-key header,
    /// bit 1: refuse Bearer, bit 2: accept `?api_key=`, bit 3: header name
    /// `x-key`, bits 4-5: length limit 256 / 66 / 8 / 0, bit 6: the first
    /// line is the query string), then `\n`-separated lines, each
    /// `name:value` (raw bytes).
    ///
    /// Oracles: never panics; an extracted key is non-empty visible ASCII
    /// within the length limit, came from an accepted scheme (Bearer only
    /// with a registered prefix) and occurs in the request; the exact outcome
    /// (key text and scheme, not-ours, or error code and message) is the
    /// same with the headers reversed and rotated; `Debug` of the outcome never shows the key; no error
    /// carries a fixed key's secret material.
    ///
    /// # Panics
    /// When an oracle fails.
    ///
    /// ```
    /// let h = apikey_testkit::fuzzing::Harness::new();
    /// h.header_extraction(b"\x00x-api-key: sk_live_abc\nAuthorization: Bearer sk_live_abc");
    /// ```
    pub fn header_extraction(&self, data: &[u8]) {
        use apikey::web::{Extracted, Extractor, Scheme};
        let (config, rest) = data.split_first().map_or((0, &[][..]), |(c, r)| (*c, r));
        let max_len = [256, 66, 8, 0][usize::from((config >> 4) & 3)];
        let mut extractor = Extractor::new(self.verifier.prefixes().clone())
            .with_sources(match config & 3 {
                0 => apikey::web::Sources::ALL,
                1 => apikey::web::Sources::BEARER,
                2 => apikey::web::Sources::API_KEY_HEADER,
                _ => apikey::web::Sources::NONE,
            })
            .with_max_len(max_len);
        if config & 4 != 0 {
            extractor = extractor.with_query_param("api_key");
        }
        if config & 8 != 0 {
            extractor = extractor.with_header_name("x-key");
        }
        let mut lines = rest.split(|&b| b == b'\n');
        let query = if config & 64 != 0 {
            lines
                .next()
                .map(|q| String::from_utf8_lossy(q).into_owned())
        } else {
            None
        };
        let headers: Vec<(&[u8], &[u8])> = lines
            .take(16)
            .map(|line| match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &[][..]),
            })
            .collect();
        let q = query.as_deref();
        let forward = extractor.extract_with_query(headers.iter().copied(), q);
        let backward = extractor.extract_with_query(headers.iter().rev().copied(), q);
        let debug = format!("{forward:?}");
        match &forward {
            Ok(Extracted::Key(key)) => {
                let text = key.expose_secret();
                assert!(!text.is_empty(), "an empty key was extracted");
                assert!(text.len() <= max_len, "the length limit was not applied");
                assert!(
                    text.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                    "extracted key is not visible ASCII: {text:?}"
                );
                assert!(
                    extractor.accepts(key.scheme()),
                    "{:?} is refused",
                    key.scheme()
                );
                if key.scheme() == Scheme::Bearer {
                    assert!(
                        self.verifier
                            .prefixes()
                            .iter()
                            .any(|e| text.starts_with(e.prefix.as_str())),
                        "a Bearer token without a registered prefix was taken"
                    );
                }
                let in_request = headers
                    .iter()
                    .any(|(_, v)| v.windows(text.len()).any(|w| w == text.as_bytes()))
                    || query.as_deref().is_some_and(|q| q.contains(text));
                assert!(in_request, "the key does not come from the request");
                if text.len() >= LEAK_WINDOW {
                    assert!(!debug.contains(text), "Debug shows the key: {debug}");
                }
            }
            Ok(Extracted::NotOurs) => {}
            Err(e) => self.assert_no_leak(&format!("{e} {e:?}")),
        }
        // Exact outcomes: the same key text and scheme, or the same error
        // (code and message), whatever the header order.
        let exact = |r: &apikey::Result<Extracted<'_>>| match r {
            Ok(Extracted::Key(k)) => Ok(Some((k.expose_secret().to_owned(), k.scheme()))),
            Ok(Extracted::NotOurs) => Ok(None),
            Err(e) => Err((e.code().as_str(), e.to_string())),
        };
        let rotated = {
            let mut h = headers.clone();
            if !h.is_empty() {
                h.rotate_left(1);
            }
            extractor.extract_with_query(h.iter().copied(), q)
        };
        assert_eq!(
            exact(&forward),
            exact(&backward),
            "header order changed the outcome"
        );
        assert_eq!(
            exact(&forward),
            exact(&rotated),
            "header order changed the outcome"
        );
    }
}
