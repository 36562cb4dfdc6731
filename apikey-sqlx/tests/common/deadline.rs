//! A deadline that falls while a real database commits: the manager's
//! first write of each create and rotation is dropped after a tiny,
//! varying budget (sometimes before `BEGIN`, sometimes during `COMMIT`, which
//! the database finishes anyway); the manager must answer each call with
//! its own result, never 503 for a write that happened.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use apikey::{
    Actor, KeyManager, KeyStoreWrite, Keyring, NewKey, Requirement, Rotation, ServerSecret,
    UsageStore, Verifier,
};
use apikey_testkit::conformance::unique_owner;
use apikey_testkit::failing::FaultyStore;

/// Budgets for the first write, in microseconds (0: cut at the first wait).
const BUDGETS_US: [u64; 8] = [0, 20, 100, 300, 700, 1_500, 3_000, 6_000];

/// Runs `rounds` creates and rotations of one owner (limit 1: the owner
/// limit must also count the write whose answer was lost), each first
/// write cut at a budget; returns how many writes were cut.
pub async fn creates_and_rotations_answer_their_result<S>(store: S, rounds: usize) -> u32
where
    S: KeyStoreWrite + UsageStore + 'static,
{
    let store = Arc::new(FaultyStore::new(store));
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[9; 32]).unwrap()).unwrap());
    let m = KeyManager::new(verifier, Arc::clone(&store)).with_max_keys_per_owner(1);
    let admin = Actor::system();
    for round in 0..rounds {
        let owner = unique_owner();
        let budget = |i: usize| Duration::from_micros(BUDGETS_US[i % BUDGETS_US.len()]);
        store.cut_next_write(budget(round));
        let (key, created) = m
            .create(NewKey::new("sk_live_").owner(owner.as_str()), &admin)
            .await
            .unwrap_or_else(|e| panic!("round {round}: create answered {e:?}"));
        let v = m
            .authenticate(key.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap();
        assert_eq!(v.id(), created.id, "round {round}");
        store.cut_next_write(budget(round + 3));
        let (new, succ) = m
            .rotate(created.id, Rotation::default(), &admin)
            .await
            .unwrap_or_else(|e| panic!("round {round}: rotate answered {e:?}"));
        let v = m
            .authenticate(new.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap();
        assert_eq!(v.id(), succ.id, "round {round}");
        assert_eq!(
            m.get(created.id).await.unwrap().rotated_to,
            Some(succ.id),
            "round {round}"
        );
        // One create and one rotation: exactly two keys, never a third.
        assert_eq!(m.list(&owner).await.unwrap().len(), 2, "round {round}");
    }
    store.cut_short.load(Ordering::SeqCst)
}
