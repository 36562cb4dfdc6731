//! The scope grammar harness and its segment-wise reference.

use super::*;

/// Segment-wise reference of the scope grammar (independent of
/// `Scope::parse`).
fn reference_valid(s: &str) -> bool {
    if s.is_empty() || s.len() > Scope::MAX_LEN {
        return false;
    }
    let segs: Vec<&str> = s.split(':').collect();
    segs.len() <= Scope::MAX_SEGMENTS
        && segs.iter().enumerate().all(|(i, seg)| {
            (*seg == "*" && i + 1 == segs.len())
                || (!seg.is_empty()
                    && seg
                        .chars()
                        .all(|ch| matches!(ch, 'a'..='z' | '0'..='9' | '_' | '-')))
        })
}

/// Segment-wise reference of `grants` (independent of `Scope::grants`).
fn reference_grants(granted: &str, required: &str) -> bool {
    let g: Vec<&str> = granted.split(':').collect();
    let r: Vec<&str> = required.split(':').collect();
    match g.split_last() {
        Some((&"*", lit)) => r.len() > lit.len() && r[..lit.len()] == *lit,
        _ => g == r,
    }
}

pub(super) fn reference_requirement(req: &Requirement, granted: &ScopeSet) -> bool {
    let any = |r: &Scope| {
        granted
            .iter()
            .any(|g| reference_grants(g.as_str(), r.as_str()))
    };
    match req {
        Requirement::None => true,
        Requirement::AllOf(v) => v.iter().all(any),
        Requirement::AnyOf(v) => v.iter().any(any),
    }
}

/// Scope grammar: the input is split on `\n` into up to 9 scopes. Whatever
/// parses displays as its input and parses back equal; validity agrees with
/// a segment-wise reference grammar; `grants` agrees with a reference, is
/// reflexive and transitive; [`ScopeSet`] and [`Requirement`] agree with
/// the reference; JSON round-trips. Never panics otherwise.
///
/// # Panics
/// When an oracle fails.
///
/// ```
/// apikey_testkit::fuzzing::scope_grammar(b"projects:*\nprojects:42:read\n*\nA:b");
/// ```
pub fn scope_grammar(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let pieces: Vec<&str> = text.split('\n').take(9).collect();
    let mut valid = Vec::new();
    for p in &pieces {
        match Scope::parse(p) {
            Ok(s) => {
                assert!(
                    reference_valid(p),
                    "accepted a scope the grammar forbids: {p:?}"
                );
                assert_eq!(s.to_string(), *p, "Display must give back the input");
                assert_eq!(s.as_str(), *p);
                assert_eq!(p.parse::<Scope>().ok().as_ref(), Some(&s));
                assert!(s.grants(&s), "grants must be reflexive: {p:?}");
                assert_eq!(s.is_wildcard(), p.ends_with('*'));
                {
                    let json = serde_json::to_string(&s).unwrap_or_default();
                    assert_eq!(serde_json::from_str::<Scope>(&json).ok().as_ref(), Some(&s));
                }
                valid.push(s);
            }
            Err(e) => {
                assert!(!reference_valid(p), "rejected a valid scope: {p:?}: {e}");
                assert_eq!(e.code().as_str(), "INVALID_SCOPE");
                // Serde must refuse what parse refuses.
                {
                    let json = serde_json::to_string(p).unwrap_or_default();
                    assert!(serde_json::from_str::<Scope>(&json).is_err());
                }
            }
        }
    }
    for a in &valid {
        for b in &valid {
            assert_eq!(
                a.grants(b),
                reference_grants(a.as_str(), b.as_str()),
                "{a} grants {b}?"
            );
            if a.grants(b) {
                for c in &valid {
                    if b.grants(c) {
                        assert!(a.grants(c), "grants must be transitive: {a} {b} {c}");
                    }
                }
            }
        }
    }
    let set_result = ScopeSet::parse(&pieces);
    assert_eq!(
        set_result.is_ok(),
        valid.len() == pieces.len() && pieces.len() <= ScopeSet::MAX_SCOPES
    );
    let Some((first, rest)) = valid.split_first() else {
        return;
    };
    let granted = ScopeSet::from_scopes(rest.to_vec());
    assert_eq!(
        granted.grants(first),
        rest.iter()
            .any(|g| reference_grants(g.as_str(), first.as_str()))
    );
    for req in [
        Requirement::AllOf(vec![first.clone()]),
        Requirement::AllOf(valid.clone()),
        Requirement::AnyOf(valid.clone()),
        Requirement::AnyOf(Vec::new()),
    ] {
        let met = req.is_met_by(&granted, &[]);
        assert_eq!(
            met,
            reference_requirement(&req, &granted),
            "{req:?} by {granted:?}"
        );
        assert_eq!(req.check(&granted, &[]).is_ok(), met);
    }
    {
        let json = serde_json::to_string(&granted).unwrap_or_default();
        assert_eq!(serde_json::from_str::<ScopeSet>(&json).ok(), Some(granted));
    }
}
