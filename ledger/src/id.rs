//! Shared ids, and maps keyed by them.
//!
//! A user, lot or bid id is allocated once and then shared by reference count: a bid's id and
//! its bidder's id appear in the lot's leader, its history and its exactly-once record, and
//! sharing them keeps the hot path free of per-bid string copies. An `Id` compares, hashes
//! and borrows as the `str` it holds.

use std::collections::BTreeSet;
use std::sync::Arc;

/// A hash map for the hot path. Its order is never observed (see [`IdMap`]), so the seed may
/// differ between replicas.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub type Id = Arc<str>;

/// A map by id, hashed for the hot path's lookups, with its ids also kept in order: iteration
/// order reaches snapshots, digests and views, so it must not depend on a hasher's seed. Every
/// iteration here is in id order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IdMap<V> {
    by_id: HashMap<Id, V>,
    order: BTreeSet<Id>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap { by_id: HashMap::default(), order: BTreeSet::new() }
    }
}

impl<V> IdMap<V> {
    pub(crate) fn get(&self, id: &str) -> Option<&V> {
        self.by_id.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        self.by_id.get_mut(id)
    }

    /// The id held under `id` (to share it) and its value.
    pub(crate) fn get_key_value(&self, id: &str) -> Option<(&Id, &V)> {
        self.by_id.get_key_value(id)
    }

    pub(crate) fn contains_key(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Inserts or replaces; returns the value replaced.
    pub(crate) fn insert(&mut self, id: Id, value: V) -> Option<V> {
        let old = self.by_id.insert(id.clone(), value);
        if old.is_none() {
            self.order.insert(id);
        }
        old
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<V> {
        let old = self.by_id.remove(id);
        if old.is_some() {
            self.order.remove(id);
        }
        old
    }

    /// The value under `id`, inserted as the default first if there is none.
    pub(crate) fn get_or_default(&mut self, id: &Id) -> &mut V
    where
        V: Default,
    {
        if !self.by_id.contains_key(&**id) {
            self.order.insert(id.clone());
        }
        self.by_id.entry(id.clone()).or_default()
    }

    /// Entries in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Id, &V)> {
        self.order.iter().filter_map(|id| self.by_id.get_key_value(&**id))
    }

    /// Values in id order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}
