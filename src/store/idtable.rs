//! `MemoryStore`'s id -> view table: open addressing with linear probing,
//! one 16-byte slot per entry (the id and the `Arc`), no control bytes.
//!
//! A lookup reads the slot (usually one cache line) and then the view: one
//! dependent miss fewer than a map that keeps control bytes and entries in
//! separate arrays. Ids are random 64-bit numbers, and an odd multiplier
//! mixes them anyway (sequential ids from tests spread out too). The
//! capacity is not a power of two: the home slot is the multiplied id's
//! high bits scaled to the capacity, so the table grows by half, never
//! doubles, and stays between 53 % and 80 % full once past its first
//! growth.

use std::sync::Arc;

use crate::record::KeyView;

/// Fibonacci hashing's multiplier (2^64 / the golden ratio, odd).
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

type Slot = Option<(u64, Arc<KeyView>)>;

#[derive(Default)]
pub(crate) struct IdTable {
    slots: Vec<Slot>,
    len: usize,
}

impl IdTable {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn home(&self, id: u64) -> usize {
        ((u128::from(id.wrapping_mul(MIX)) * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    /// The slot holding `id`, if any.
    #[inline]
    fn find(&self, id: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(id);
        loop {
            match &self.slots[i] {
                Some((k, _)) if *k == id => return Some(i),
                Some(_) => i = self.next(i),
                // The table is never full, so every probe ends.
                None => return None,
            }
        }
    }

    #[inline]
    pub(crate) fn get(&self, id: u64) -> Option<&Arc<KeyView>> {
        let i = self.find(id)?;
        self.slots[i].as_ref().map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Arc<KeyView>> {
        let i = self.find(id)?;
        self.slots[i].as_mut().map(|(_, v)| v)
    }

    pub(crate) fn contains_key(&self, id: u64) -> bool {
        self.find(id).is_some()
    }

    /// Inserts or replaces; returns the replaced view.
    pub(crate) fn insert(&mut self, id: u64, view: Arc<KeyView>) -> Option<Arc<KeyView>> {
        if let Some(i) = self.find(id) {
            return self.slots[i].replace((id, view)).map(|(_, v)| v);
        }
        // At most 80 % full after this insert.
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            self.grow();
        }
        self.place(id, view);
        self.len += 1;
        None
    }

    /// Puts a new entry into the first free slot from its home.
    fn place(&mut self, id: u64, view: Arc<KeyView>) {
        let mut i = self.home(id);
        while self.slots[i].is_some() {
            i = self.next(i);
        }
        self.slots[i] = Some((id, view));
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() + self.slots.len() / 2).max(16);
        let old = std::mem::replace(&mut self.slots, (0..cap).map(|_| None).collect());
        for (id, view) in old.into_iter().flatten() {
            self.place(id, view);
        }
    }

    /// Removes `id`, shifting later entries of its probe run back so every
    /// lookup still ends at the first free slot (no tombstones).
    pub(crate) fn remove(&mut self, id: u64) -> Option<Arc<KeyView>> {
        let mut hole = self.find(id)?;
        let removed = self.slots[hole].take().map(|(_, v)| v);
        self.len -= 1;
        let cap = self.slots.len();
        let mut j = self.next(hole);
        while let Some((k, _)) = &self.slots[j] {
            let home = self.home(*k);
            // Distances along the probe direction, modulo the capacity.
            let from_home = (j + cap - home) % cap;
            let from_hole = (j + cap - hole) % cap;
            if from_home >= from_hole {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
            j = self.next(j);
        }
        removed
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<KeyView>> {
        self.slots.iter().flatten().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::KeyRecord;
    use std::collections::HashMap;

    fn view(id: u64) -> Arc<KeyView> {
        let record = KeyRecord::builder(
            crate::KeyId::from_u64(id),
            crate::Prefix::new("sk_test_").unwrap(),
            crate::Environment::Test,
            1,
            crate::KeyDigest::from_bytes([1; 32]),
            crate::Timestamp::MIN,
        )
        .build()
        .unwrap();
        Arc::new(KeyView::from_record(&record))
    }

    /// Inserts and removes against a `HashMap` model, with ids that
    /// collide on purpose (small ranges, sequential runs).
    #[test]
    fn matches_a_map_model() {
        let mut table = IdTable::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut x = 0x1234_5678_9abc_def1u64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = if step % 3 == 0 { x % 64 } else { x % 5000 };
            if x % 5 < 3 {
                let replaced = table.insert(id, view(id)).is_some();
                assert_eq!(replaced, model.insert(id, id).is_some());
            } else {
                assert_eq!(table.remove(id).is_some(), model.remove(&id).is_some());
            }
            assert_eq!(table.len(), model.len());
            if step % 1000 == 0 {
                for k in 0..5000 {
                    assert_eq!(table.contains_key(k), model.contains_key(&k), "id {k}");
                }
                assert_eq!(table.values().count(), model.len());
            }
        }
        for (k, _) in model {
            assert_eq!(table.get(k).map(|v| v.id().as_u64()), Some(k));
        }
    }
}
