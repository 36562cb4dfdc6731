//! Allocations the axum layer adds to an admitted request, counted by a
//! counting global allocator: the same GET through the same axum route,
//! bare and behind `ApiKeyLayer` (`benches/support/web.rs`, the routes the
//! web-edge benchmarks measure).
//!
//! What the layer may add, and why each one:
//!
//! 1. its future (`Box::pin`): an `async` future has no nameable type, and
//!    tower's `Service::Future` must be one;
//! 2. the inner service's clone (tower's clone-and-swap, so the service
//!    that was polled ready is the one called): an axum route is a boxed
//!    service, so cloning it allocates;
//! 3. axum boxes the future of every `route_layer`ed service again;
//! 4. the one `Admitted` request extension (each value of `http`'s type
//!    map is boxed), the documented contract for handlers and other
//!    layers (the `VerifiedKey` extractor reads the key from it; a second
//!    `VerifiedKey` entry is no longer made);
//! 5. the type map growing to hold it;
//! 6. with a rate limit: the `X-RateLimit-Reset` value, a 10-digit
//!    timestamp (a header value owns its bytes); the limit and the
//!    remainder are static strings below 1,000 and one allocation each
//!    from 1,000 up (the benchmarks' never-reached quota of `u32::MAX`).
//!
//! Nothing else: no strings, no header-name copies, no vectors. Usage
//! recording and `MemoryLimits` allocate only for a key they have not seen
//! (warmed up here), and usage recording once more when a key's route
//! differs from its last one (the last-used route, kept as one shared
//! string per key and day; the same route again allocates nothing, which
//! is what this test's repeated GET checks).
#![allow(clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use apikey::limits::{MemoryLimits, Quota};
use apikey::web::{ApiKeyLayer, Gate, QuotaTable, Route};
use apikey::{Authenticator, SystemClock};
use axum::Router;
use axum::routing::get;
use tower_service::Service;

#[path = "../benches/support/naive.rs"]
mod naive;
#[path = "../benches/support/web.rs"]
mod web;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is a thread-local counter with a `const` initialiser, which
// itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (and reallocations) on this thread for one call of
/// `router` with a request prebuilt outside the count, response dropped
/// inside it.
fn allocations_per_call(router: &mut Router, key: &str) -> u64 {
    // Warm-up: first sight of the key by the limits and usage maps.
    for _ in 0..3 {
        let res = naive::poll_ready(router.call(web::request(key))).unwrap();
        assert_eq!(res.status(), http::StatusCode::OK);
    }
    let req = web::request(key);
    let before = ALLOCATIONS.with(Cell::get);
    let res = naive::poll_ready(router.call(req)).unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    drop(res);
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_layer_adds_only_the_allocations_it_documents() {
    let now = apikey::Clock::now(&apikey::SystemClock);
    let (verifier, store, keys) = web::keys(now);
    let store = Arc::new(store);
    let key = &keys[0];
    let mut bare = web::router(web::Mode::Bare, &verifier, &store, SystemClock);
    let bare = allocations_per_call(&mut bare, key);

    let mut memory = web::router(web::Mode::Memory, &verifier, &store, SystemClock);
    let memory = allocations_per_call(&mut memory, key);
    assert!(
        memory <= bare + 5,
        "the layer over MemoryStore adds {} allocations (bare route: {bare})",
        memory - bare
    );

    let mut limited = web::router(web::Mode::LimitsUsage, &verifier, &store, SystemClock);
    let limited = allocations_per_call(&mut limited, key);
    // Limit and remainder near u32::MAX: one allocation each (item 6).
    assert!(
        limited <= bare + 8,
        "the layer with MemoryLimits and usage adds {} allocations (bare route: {bare})",
        limited - bare
    );

    // A realistic quota: limit and remainder below 1,000, so the headers
    // add one allocation (the reset timestamp), not three.
    let auth = Authenticator::read_only(verifier.clone(), Arc::clone(&store));
    let gate = Gate::new(auth)
        .with_limits(MemoryLimits::new())
        .with_quotas(QuotaTable::fixed(Quota::unlimited().per_minute(500)));
    let mut per_minute = Router::new()
        .route(
            "/",
            get(web::hello).route_layer(ApiKeyLayer::new(Arc::new(gate), Route::any_key())),
        )
        .with_state(());
    let per_minute = allocations_per_call(&mut per_minute, &keys[1]);
    assert!(
        per_minute <= bare + 6,
        "the layer with a per-minute quota adds {} allocations (bare route: {bare})",
        per_minute - bare
    );
}

/// Item 1's allocation is the size of the gate's future, which every
/// request allocates and moves: the authenticator's future holds only
/// what its one hot `await` (the store's fetch) needs, the gate's adds the
/// admission, and what only some keys take (legacy keys, derived keys'
/// ancestors, a key-status failure's throttle, an authenticated key's
/// failure charge) is boxed where it is awaited. Measured on rustc 1.95:
/// 264 and 552 bytes (872 and 1,168 before the futures were flattened;
/// the gate's was 664 before the admission's result stopped being held
/// beside the admission); with `tracing` (656 bytes), the span adds to
/// the authenticator's future.
#[test]
fn the_per_request_futures_stay_small() {
    let span = if cfg!(feature = "tracing") { 64 } else { 0 };
    let now = apikey::Clock::now(&apikey::SystemClock);
    let (verifier, store, keys) = web::keys(now);
    let store = Arc::new(store);
    let auth = Authenticator::read_only(verifier.clone(), Arc::clone(&store));
    let requirement = apikey::Requirement::none();
    let authenticate = auth.authenticate(&keys[0], &requirement, None);
    let size = std::mem::size_of_val(&authenticate);
    assert!(
        size <= 320 + span,
        "the authenticate future is {size} bytes"
    );
    assert!(naive::poll_ready(authenticate).is_ok());

    let gate = Gate::new(auth).with_limits(MemoryLimits::new());
    let route = Route::any_key();
    let req = web::request(&keys[0]);
    let check = gate.check_request(&req, None, &route);
    let size = std::mem::size_of_val(&check);
    assert!(size <= 600 + span, "the gate's future is {size} bytes");
    assert!(matches!(
        naive::poll_ready(check),
        apikey::web::Decision::Admitted(_)
    ));
}
