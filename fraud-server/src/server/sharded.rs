//! A map keyed by strings, split over 256 tables chosen by a hash of the key. The service's
//! large maps (the decision log's index of transaction ids, the vault's entity keys) grow
//! under a lock that every scored request takes; one table of a million entries stalls
//! that lock for tens of milliseconds while it grows, 256 tables never move more than a
//! 256th of the entries at once.
//!
//! [`Locked`] is the same split with a lock per table, for maps that every request reads and
//! writes from both HTTP workers (the decision log's index, the ids being scored): two
//! requests wait for each other only when their keys fall in the same table.

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
}

/// A [`Sharded`] map with a lock per table: every method takes `&self`.
#[derive(Debug)]
pub struct Locked<V> {
    shards: Vec<std::sync::Mutex<HashMap<String, V>>>,
}

impl<V> Default for Locked<V> {
    fn default() -> Self {
        Locked {
            shards: (0..SHARDS)
                .map(|_| std::sync::Mutex::new(HashMap::new()))
                .collect(),
        }
    }
}

impl<V> From<Sharded<V>> for Locked<V> {
    fn from(m: Sharded<V>) -> Self {
        Locked {
            shards: m.shards.into_iter().map(std::sync::Mutex::new).collect(),
        }
    }
}

impl<V> Locked<V> {
    fn table(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, V>> {
        self.shards[shard(key)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of the value of `key`.
    pub fn get(&self, key: &str) -> Option<V>
    where
        V: Clone,
    {
        self.table(key).get(key).cloned()
    }

    /// Sets the value of `key`; returns the one it replaces.
    pub fn insert(&self, key: String, value: V) -> Option<V> {
        self.table(&key).insert(key, value)
    }

    /// Sets the value of `key` unless it is held already; returns whether it was set.
    pub fn insert_new(&self, key: &str, value: V) -> bool {
        let mut t = self.table(key);
        if t.contains_key(key) {
            return false;
        }
        t.insert(key.to_string(), value);
        true
    }

    /// Removes `key`; returns its value.
    pub fn remove(&self, key: &str) -> Option<V> {
        self.table(key).remove(key)
    }

    /// Keeps the entries for which `keep` is true (one table locked at a time).
    pub fn retain(&self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|k, v| keep(k, v));
        }
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |t| t.len()))
            .sum()
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
        // k7 (odd) was replaced by 70 and removed: 999 odd values left.
        assert_eq!(m.values().filter(|v| **v % 2 == 1).count(), 999);
        assert!(m.shards.iter().filter(|s| !s.is_empty()).count() > 200);
    }

    #[test]
    fn locked_behaves_as_one_map() {
        let mut start = Sharded::default();
        start.insert("k0".to_string(), 0u32);
        let m = Locked::from(start);
        assert_eq!(m.get("k0"), Some(0));
        for i in 1..2000u32 {
            assert!(m.insert_new(&format!("k{i}"), i));
        }
        assert!(!m.insert_new("k7", 70));
        assert_eq!(m.insert("k7".into(), 70), Some(7));
        assert_eq!(m.len(), 2000);
        assert_eq!(m.get("k7"), Some(70));
        assert_eq!(m.remove("k7"), Some(70));
        assert_eq!(m.get("k7"), None);
        m.retain(|_, v| *v % 2 == 0);
        assert_eq!(m.len(), 1000);
        assert_eq!(m.get("k3"), None);
        assert_eq!(m.get("k4"), Some(4));
    }
}
