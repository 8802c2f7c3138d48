//! The memory store's building blocks, shared by the store and its durable log: a shard of
//! entity maps keyed by a 128-bit keyed hash, and the stores' error type.

use super::EntityState;

/// Why a store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the data directory failed.
    #[error("state store I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file of the data directory is damaged.
    #[error("state store file {path} is corrupt: {why}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The state on disk was built with another feature spec.
    #[error("the state in {path} was built with another feature spec; move it away or replay the history with the new spec")]
    SpecChanged {
        /// The data directory.
        path: String,
    },
    /// The Redis server failed or could not be reached in time.
    #[error("redis: {0}")]
    Redis(String),
}

/// Entities of one kind, found by a 128-bit keyed hash of their key (XXH3 with a seed drawn
/// per store, so outside keys cannot be chosen to collide): a lookup compares the hash in the
/// table and never touches the key's bytes, which are kept beside the state only to list and
/// snapshot the entities.
#[derive(Debug, Clone, Default)]
pub(crate) struct Map {
    map: hashbrown::HashMap<u128, (Box<str>, EntityState), Prehashed>,
}

/// Uses the low 64 bits of an already uniform 128-bit hash as the table's hash.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Prehashed;

/// The hasher of [`Prehashed`].
#[derive(Debug, Default)]
pub(crate) struct PrehashedHasher(u64);

impl std::hash::BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;
    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

impl std::hash::Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

impl Map {
    pub(crate) fn get(&self, h: u128) -> Option<&EntityState> {
        self.map.get(&h).map(|(_, s)| s)
    }

    /// The state of `key` (hash `h`), made empty when absent.
    pub(crate) fn entry(&mut self, h: u128, key: &str) -> &mut EntityState {
        &mut self
            .map
            .entry(h)
            .or_insert_with(|| (key.into(), EntityState::default()))
            .1
    }

    pub(crate) fn remove(&mut self, h: u128) -> Option<EntityState> {
        self.map.remove(&h).map(|(_, s)| s)
    }

    pub(crate) fn insert(&mut self, h: u128, key: &str, s: EntityState) {
        self.map.insert(h, (key.into(), s));
    }

    pub(crate) fn contains(&self, h: u128) -> bool {
        self.map.contains_key(&h)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.map.shrink_to_fit();
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&EntityState) -> bool) {
        self.map.retain(|_, (_, s)| keep(s));
    }

    /// Every entity: its key and state.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &EntityState)> {
        self.map.values().map(|(k, s)| (&**k, s))
    }
}

/// One lock's worth of entities.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shard {
    pub(crate) maps: [Map; 7],
}
