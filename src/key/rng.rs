//! Randomness for new keys: a userspace CSPRNG per thread, seeded from the
//! operating system, and the operating system's generator itself.
//!
//! [`Verifier::issue`](crate::Verifier::issue) draws from [`KeyRng`]: one
//! ChaCha20 generator (the RustCrypto `chacha20` crate) per thread, seeded
//! with 32 bytes from the OS (`getrandom`) and
//!
//! * **reseeded after a fork**: a `pthread_atfork` child handler (the
//!   `forkguard` crate) bumps a process-wide counter, and every draw
//!   compares it with the one the thread's generator was seeded under, so
//!   a forked child never repeats its parent's stream (where the handler
//!   cannot be registered, the process id is compared on every draw
//!   instead);
//! * **reseeded from the OS every [`KeyRng::RESEED_EVERY`](crate::KeyRng::RESEED_EVERY) keys**, so a copy of the
//!   state taken from memory covers at most that many keys;
//! * **wiped on drop** (the `zeroize` feature of `chacha20`) when its
//!   thread exits.
//!
//! [`OsRng`] is the operating system's generator with no userspace state,
//! for callers who want OS randomness for every key
//! ([`Verifier::issue_with_os_rng`](crate::Verifier::issue_with_os_rng)).

use std::cell::RefCell;
use std::convert::Infallible;

use chacha20::ChaCha20Rng;
use rand_core::{SeedableRng, TryCryptoRng, TryRng};

/// Keys issued from one seed before [`KeyRng`] reseeds from the OS.
pub(crate) const RESEED_EVERY: u32 = 1024;

/// The operating system's random source (`getrandom`), read afresh for
/// every request. A `rand_core` 0.10 [`CryptoRng`](rand_core::CryptoRng).
///
/// # Panics
/// Its draws panic when the OS has no randomness to give, as the
/// `rand_core` 0.6 `OsRng` this replaces did.
///
/// ```
/// use apikey::rand_core::Rng;
/// let mut a = [0u8; 16];
/// apikey::OsRng.fill_bytes(&mut a);
/// assert_ne!(a, [0u8; 16]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRng;

impl TryRng for OsRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        #[allow(clippy::expect_used)]
        getrandom::fill(dst).expect("the operating system's random source failed");
        Ok(())
    }
}

impl TryCryptoRng for OsRng {}

/// How a thread's generator notices that the process forked.
enum ForkGuard {
    Atfork(forkguard::atfork::Guard),
    Pid(forkguard::pid::Guard),
}

impl ForkGuard {
    fn new() -> Self {
        match forkguard::atfork::Guard::try_new() {
            Ok(g) => Self::Atfork(g),
            Err(_) => Self::Pid(forkguard::pid::Guard::default()),
        }
    }

    /// Whether the process forked since the last call (or since `new`).
    #[inline]
    fn forked(&mut self) -> bool {
        match self {
            Self::Atfork(g) => g.detected_fork(),
            Self::Pid(g) => g.detected_fork(),
        }
    }
}

struct ThreadGen {
    guard: ForkGuard,
    rng: ChaCha20Rng,
    /// Draws (keys) left before the next reseed.
    left: u32,
}

impl ThreadGen {
    fn new() -> Self {
        // The guard first: a fork after this point is seen by the next draw.
        let guard = ForkGuard::new();
        Self {
            guard,
            rng: ChaCha20Rng::from_rng(&mut OsRng),
            left: RESEED_EVERY,
        }
    }

    /// The generator, reseeded first if the process forked (checked on
    /// every call) or, when `count`, if the interval is used up.
    #[inline]
    fn fresh(&mut self, count: bool) -> &mut ChaCha20Rng {
        // `|`: the fork check runs on every call.
        if self.guard.forked() | (count && self.left == 0) {
            self.rng = ChaCha20Rng::from_rng(&mut OsRng);
            self.left = RESEED_EVERY;
        }
        if count {
            self.left -= 1;
        }
        &mut self.rng
    }
}

thread_local! {
    static THREAD_GEN: RefCell<Option<ThreadGen>> = const { RefCell::new(None) };
}

/// The calling thread's key generator, what
/// [`Verifier::issue`](crate::Verifier::issue) draws from: one ChaCha20
/// generator (the RustCrypto `chacha20` crate) per thread, seeded with 32
/// bytes from the OS (`getrandom`), and
///
/// * **reseeded after a fork**: a `pthread_atfork` child handler (the
///   `forkguard` crate) bumps a process-wide counter, and every draw
///   compares it with the one the thread's generator was seeded under, so
///   a forked child never repeats its parent's stream (where the handler
///   cannot be registered, every draw compares the process id instead);
/// * **reseeded from the OS every [`KeyRng::RESEED_EVERY`](crate::KeyRng::RESEED_EVERY) keys**, so a copy of the
///   state read out of memory covers at most that many keys;
/// * **wiped on drop** (the `zeroize` feature of `chacha20`) when its
///   thread exits.
///
/// A `KeyRng` is a handle to that thread-local state (neither `Send` nor
/// `Sync`); [`OsRng`] is the OS generator with no userspace state.
///
/// ```
/// use apikey::rand_core::Rng;
/// let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
/// apikey::KeyRng::new().fill_bytes(&mut a);
/// apikey::KeyRng::new().fill_bytes(&mut b);
/// assert_ne!(a, b);
/// ```
#[derive(Debug, Default)]
pub struct KeyRng {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl KeyRng {
    /// Keys drawn between two reseeds from the operating system.
    pub const RESEED_EVERY: u32 = RESEED_EVERY;

    /// A handle to this thread's generator (seeded on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on this thread's generator; `count`: this draw starts a
    /// key (it counts toward the reseed interval).
    #[inline]
    fn with<T>(count: bool, f: impl FnOnce(&mut ChaCha20Rng) -> T) -> T {
        THREAD_GEN.with(|cell| {
            let mut slot = cell.borrow_mut();
            f(slot.get_or_insert_with(ThreadGen::new).fresh(count))
        })
    }
}

impl TryRng for KeyRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        use rand_core::Rng;
        Ok(Self::with(false, |r| r.next_u32()))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        use rand_core::Rng;
        // A key's draw starts with its id (`next_u64`): count it.
        Ok(Self::with(true, |r| r.next_u64()))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        use rand_core::Rng;
        Self::with(false, |r| r.fill_bytes(dst));
        Ok(())
    }
}

impl TryCryptoRng for KeyRng {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn reseeds_after_the_interval() {
        let mut ids = std::collections::HashSet::new();
        for _ in 0..(3 * RESEED_EVERY) {
            assert!(ids.insert(KeyRng::new().next_u64()));
        }
        let left = || THREAD_GEN.with(|c| c.borrow().as_ref().map(|g| g.left));
        assert_eq!(left(), Some(0));
        KeyRng::new().next_u64();
        assert_eq!(left(), Some(RESEED_EVERY - 1));
    }
}
