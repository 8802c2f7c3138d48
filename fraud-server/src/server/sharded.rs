//! A map keyed by strings, split over 256 tables chosen by a hash of the key. The service's
//! large maps (the decision log's index of transaction ids, the vault's entity keys) grow
//! under a lock that every scored request takes; one table of a million entries stalls
//! that lock for tens of milliseconds while it grows, 256 tables never move more than a
//! 256th of the entries at once.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Number of tables.
const SHARDS: usize = 256;

/// See the module documentation.
#[derive(Debug)]
pub struct Sharded<V> {
    shards: Vec<HashMap<String, V>>,
}

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
        }
    }
}

fn shard(key: &str) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() >> 56) as usize % SHARDS
}

impl<V> Sharded<V> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.shards[shard(key)].get(key)
    }

    /// Whether `key` is held.
    pub fn contains_key(&self, key: &str) -> bool {
        self.shards[shard(key)].contains_key(key)
    }

    /// Sets the value of `key`; returns the one it replaces.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.shards[shard(&key)].insert(key, value)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.shards[shard(key)].remove(key)
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(HashMap::values)
    }

    /// Keeps the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        for s in &mut self.shards {
            s.retain(|k, v| keep(k, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_one_map() {
        let mut m = Sharded::default();
        for i in 0..2000u32 {
            assert_eq!(m.insert(format!("k{i}"), i), None);
        }
        assert_eq!(m.insert("k7".into(), 70), Some(7));
        assert_eq!(m.len(), 2000);
        assert_eq!(m.get("k7"), Some(&70));
        assert!(m.contains_key("k1999") && !m.contains_key("k2000"));
        assert_eq!(m.remove("k7"), Some(70));
        assert_eq!(m.get("k7"), None);
        m.retain(|_, v| *v % 2 == 0);
        assert_eq!(m.len(), 1000);
        assert_eq!(m.values().filter(|v| **v % 2 == 1).count(), 0);
        assert!(m.shards.iter().filter(|s| !s.is_empty()).count() > 200);
    }
}
