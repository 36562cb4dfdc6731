//! Fork safety of the per-thread key generator: a forked child never
//! repeats its parent's stream.
//!
//! The one test forks with `libc::fork`, so it lives alone in this binary
//! (no other test threads run while it forks).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use apikey::rand_core::Rng;
use apikey::{KeyRng, Keyring, NewKey, ServerSecret, Verifier};

const DRAWS: usize = 8;

/// What the generator gives next: four raw draws and the texts of four
/// issued keys.
fn next_outputs(verifier: &Verifier) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..DRAWS / 2 {
        out.push(format!("{:016x}", KeyRng::new().next_u64()));
    }
    for _ in 0..DRAWS / 2 {
        let (key, _) = verifier
            .issue(NewKey::new("sk_test_"), apikey::Timestamp::MIN)
            .unwrap();
        out.push(key.expose_secret().to_owned());
    }
    out
}

#[test]
fn a_forked_child_never_repeats_the_parents_stream() {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3u8; 32]).unwrap()).unwrap());
    // Seed this thread's generator before the fork, so the child inherits
    // a copy of a live state (the case a missing reseed would repeat).
    let _ = next_outputs(&verifier);
    let (mut parent_end, mut child_end) = UnixStream::pair().unwrap();

    // SAFETY: `fork` is called with no locks held by this thread; the
    // child only computes keys, writes them to its end of the socket pair
    // and leaves with `_exit`, never returning into the test harness. This
    // is the test suite's only unsafe code besides the counting allocator
    // of tests/layer_allocations.rs: observing fork safety
    // needs a real fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let outputs = next_outputs(&verifier).join("\n");
        let ok = child_end.write_all(outputs.as_bytes()).is_ok();
        drop(child_end);
        // SAFETY: ends the child at once, without running the parent's
        // atexit handlers or unwinding into the harness.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    drop(child_end);
    let parent = next_outputs(&verifier);
    let mut text = String::new();
    parent_end.read_to_string(&mut text).unwrap();
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);

    let child: Vec<&str> = text.lines().collect();
    assert_eq!(child.len(), DRAWS, "the child reported all its outputs");
    for c in &child {
        assert!(
            !parent.iter().any(|p| p == c),
            "the child repeated the parent's output {c}"
        );
    }
    // The ids (first characters of the key bodies) differ too.
    let key_ids = |v: &[&str]| -> Vec<String> {
        v.iter()
            .filter(|s| s.starts_with("sk_test_"))
            .map(|s| s[8..19].to_owned())
            .collect()
    };
    let parent_refs: Vec<&str> = parent.iter().map(String::as_str).collect();
    let (p_ids, c_ids) = (key_ids(&parent_refs), key_ids(&child));
    assert!(p_ids.iter().all(|p| !c_ids.contains(p)));
}
