//! Entity-state stores: the [`StateStore`] trait the service scores through, and
//! [`MemoryStore`], the in-memory backend: sharded for concurrency, bounded (entities idle
//! past the retention are dropped), and durable when opened on a directory (an append-only
//! event log plus snapshots, see [`super::durable`]). The Redis backend is
//! [`super::redis::RedisStore`].

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::durable::{Durability, Log, LogRecord};
use super::shard::Shard;
pub use super::shard::StoreError;
use super::{Entity, EntityState, Extractor, LabelEvent, Observation};
use crate::transaction::Transaction;

/// Where entity state lives. Every method is atomic per entity; implementations are shared
/// between threads.
pub trait StateStore: Send + Sync {
    /// Writes the features of the transaction's entities into `row` from their state before
    /// it, then records it (the stateless features are not touched). The observation is
    /// durable, as the store promises, when this returns.
    fn apply(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        row: &mut [f64],
    ) -> Result<(), StoreError>;

    /// Writes the features of the transaction's entities into `row` without recording it.
    fn peek(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        row: &mut [f64],
    ) -> Result<(), StoreError>;

    /// Applies a fraud label to the entities (with label-aware features) of the labelled
    /// transaction, whose observation is `obs`.
    fn label(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        label: &LabelEvent,
    ) -> Result<(), StoreError>;

    /// Removes everything held about one entity (GDPR erasure). Returns whether it was held.
    fn erase(&self, entity: Entity, key: &str) -> Result<bool, StoreError>;

    /// The state of one entity, if held.
    fn get(&self, entity: Entity, key: &str) -> Result<Option<EntityState>, StoreError>;

    /// Moves the state of entity `from` to `to` (a card token re-keyed under a new
    /// tokenization key) when `to` holds nothing yet. Returns whether anything moved.
    fn rename(&self, entity: Entity, from: &str, to: &str) -> Result<bool, StoreError>;

    /// Computes all features of `tx` and records it: the online path.
    fn step(&self, ex: &Extractor, tx: &Transaction) -> Result<Vec<f64>, StoreError> {
        let obs = ex.observe(tx);
        let mut row = ex.empty_row();
        ex.stateless_into(tx, &mut row);
        self.apply(ex, &obs, &mut row)?;
        Ok(row)
    }
}

/// Number of shards of a [`MemoryStore`]: enough that threads rarely wait on each other.
pub const SHARDS: usize = 64;

/// The 128-bit hash an entity is held under; its high bits choose the shard.
fn key_hash(seed: u64, e: Entity, key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), seed ^ (e.index() as u64 + 1))
}

fn shard_of(h: u128) -> usize {
    ((h >> 64) as u64 % SHARDS as u64) as usize
}

/// Counts of a store's content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entities held, per kind ([`Entity::index`]).
    pub entities: [usize; 7],
    /// Events held in all.
    pub events: usize,
    /// Heap bytes of the entity states and their keys (approximate: allocations at their
    /// capacity, map tables included).
    pub heap_bytes: usize,
}

/// A copy of a [`MemoryStore`]'s state (see [`MemoryStore::copy`]).
pub struct StateCopy {
    shards: Vec<Shard>,
}

impl StateCopy {
    /// Writes the copy to `path` atomically with a caller's `tag` (for instance the position
    /// in a log the state corresponds to); [`MemoryStore::load_state`] reads it back.
    pub fn write(&self, path: &Path, ex: &Extractor, tag: u64) -> Result<(), StoreError> {
        super::durable::write_atomic(path, &self.to_bytes(ex, tag)?)
    }

    /// The copy as bytes (to seal, or store elsewhere) with a caller's `tag`.
    pub fn to_bytes(&self, ex: &Extractor, tag: u64) -> Result<Vec<u8>, StoreError> {
        super::durable::state_bytes(ex, tag, &self.shards)
    }
}

/// The in-memory store: sharded, bounded, optionally durable.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    seed: u64,
    log: Option<Log>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while a shard was held leaves entity states that are each whole (they are
    // taken out and put back): carry on with them.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryStore {
    /// An empty store that lives in memory only.
    pub fn new() -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            seed: ahash::RandomState::new().hash_one(0u8),
            log: None,
        }
    }

    /// Opens (or creates) a durable store in `dir`: loads the latest snapshot, replays the
    /// event log after it (a record cut short by a crash is dropped: it was never
    /// acknowledged), and appends to a new log segment from then on. The state is bound to
    /// the extractor's spec: a directory written with another spec is refused.
    pub fn open(dir: &Path, ex: &Extractor, durability: Durability) -> Result<Self, StoreError> {
        let mut store = Self::new();
        let shards = std::cell::RefCell::new(vec![Shard::default(); SHARDS]);
        let seed = store.seed;
        let log = Log::open(
            dir,
            ex,
            durability,
            &mut |e, k, s| {
                let h = key_hash(seed, e, &k);
                shards.borrow_mut()[shard_of(h)].maps[e.index()].insert(h, &k, s);
            },
            &mut |rec| apply_record(ex, &mut shards.borrow_mut(), seed, rec),
        )?;
        let shards = shards.into_inner();
        for (m, s) in store.shards.iter().zip(shards) {
            *lock(m) = s;
        }
        store.log = Some(log);
        Ok(store)
    }

    /// The hash of an entity key and its shard.
    fn locate(&self, e: Entity, key: &str) -> (u128, usize) {
        let h = key_hash(self.seed, e, key);
        (h, shard_of(h))
    }

    /// Locks the shards of the observation's entities, in index order (so two threads never
    /// wait on each other in a cycle).
    fn lock_for(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
    ) -> Vec<(usize, MutexGuard<'_, Shard>)> {
        let mut idx: Vec<usize> = ex
            .entities()
            .filter_map(|e| obs.key(e).map(|k| self.locate(e, k).1))
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| (i, lock(&self.shards[i])))
            .collect()
    }

    /// Drops every entity idle for longer than the retention before `now_us` (nothing it
    /// holds could change a feature any more). Returns how many were dropped.
    pub fn evict_idle(&self, ex: &Extractor, now_us: i64) -> usize {
        let oldest = now_us - ex.retention_us();
        let mut dropped = 0;
        for m in self.shards.iter() {
            let mut g = lock(m);
            for map in g.maps.iter_mut() {
                let before = map.len();
                map.retain(|s| s.touched() >= oldest);
                dropped += before - map.len();
                if map.capacity() > 4 * map.len().max(16) {
                    map.shrink_to_fit();
                }
            }
        }
        dropped
    }

    /// What the store holds.
    pub fn stats(&self) -> StoreStats {
        let mut st = StoreStats::default();
        for m in self.shards.iter() {
            let g = lock(m);
            for (i, map) in g.maps.iter().enumerate() {
                st.entities[i] += map.len();
                // Table: one control byte plus one (hash, (key, EntityState)) slot per bucket.
                let slot = std::mem::size_of::<(u128, (Box<str>, EntityState))>() + 1;
                st.heap_bytes += if map.capacity() == 0 {
                    0
                } else {
                    (map.capacity() * 8 / 7).next_power_of_two() * slot
                };
                for (k, s) in map.iter() {
                    st.events += s.events.len();
                    st.heap_bytes += k.len() + s.heap_bytes();
                }
            }
        }
        st
    }

    /// Writes a snapshot of the whole state and starts a new log segment; older segments
    /// and snapshots are then deleted. Does nothing for a store without a directory.
    pub fn snapshot(&self) -> Result<(), StoreError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        // A consistent cut: every shard and the log are held while the state is copied and
        // the segment is rotated; the copy is written after they are released.
        let guards: Vec<MutexGuard<'_, Shard>> = self.shards.iter().map(lock).collect();
        let copy: Vec<Shard> = guards.iter().map(|g| (**g).clone()).collect();
        let seq = log.rotate()?;
        drop(guards);
        log.write_snapshot(seq, &copy)
    }

    /// A consistent copy of the whole state, to write with [`StateCopy::write`] after the
    /// caller has released whatever keeps writers out.
    pub fn copy(&self) -> StateCopy {
        let guards: Vec<MutexGuard<'_, Shard>> = self.shards.iter().map(lock).collect();
        StateCopy {
            shards: guards.iter().map(|g| (**g).clone()).collect(),
        }
    }

    /// A store holding the state of a file written by [`StateCopy::write`], and its tag.
    pub fn load_state(path: &Path, ex: &Extractor) -> Result<(Self, u64), StoreError> {
        let bytes = std::fs::read(path).map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_state_bytes(&bytes, path, ex)
    }

    /// A store holding the state of [`StateCopy::to_bytes`], and its tag (`path` names the
    /// source in errors).
    pub fn from_state_bytes(
        bytes: &[u8],
        path: &Path,
        ex: &Extractor,
    ) -> Result<(Self, u64), StoreError> {
        let store = Self::new();
        let seed = store.seed;
        let mut shards = vec![Shard::default(); SHARDS];
        let tag = super::durable::read_state_bytes(bytes, path, ex, &mut |e, k, s| {
            let h = key_hash(seed, e, &k);
            shards[shard_of(h)].maps[e.index()].insert(h, &k, s);
        })?;
        for (m, s) in store.shards.iter().zip(shards) {
            *lock(m) = s;
        }
        Ok((store, tag))
    }

    /// Every entity of one kind with its state (for tests and tools).
    pub fn entities(&self, entity: Entity) -> Vec<(String, EntityState)> {
        let mut out = Vec::new();
        for m in self.shards.iter() {
            let g = lock(m);
            out.extend(
                g.maps[entity.index()]
                    .iter()
                    .map(|(k, s)| (k.to_string(), s.clone())),
            );
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Appends the record `rec` builds, when the store has a log (the record, a copy of the
    /// observation, is only built then).
    fn append<'a>(&self, rec: impl FnOnce() -> LogRecord<'a>) -> Result<Option<u64>, StoreError> {
        match &self.log {
            Some(log) => log.append(&rec()).map(Some),
            None => Ok(None),
        }
    }

    fn sync(&self, upto: Option<u64>) -> Result<(), StoreError> {
        match (&self.log, upto) {
            (Some(log), Some(upto)) => log.sync(upto),
            _ => Ok(()),
        }
    }
}

/// Applies one log record to shards during recovery.
fn apply_record(ex: &Extractor, shards: &mut [Shard], seed: u64, rec: LogRecord<'_>) {
    match rec {
        LogRecord::Step(obs) => {
            for e in ex.entities() {
                if let Some(k) = obs.key(e) {
                    let h = key_hash(seed, e, k);
                    let s = shards[shard_of(h)].maps[e.index()].entry(h, k);
                    ex.record(e, s, &obs.point);
                }
            }
        }
        LogRecord::Label(obs, l) => {
            for e in ex.entities() {
                if let (Some(k), true) = (obs.key(e), ex.keeps_labels(e)) {
                    let h = key_hash(seed, e, k);
                    let s = shards[shard_of(h)].maps[e.index()].entry(h, k);
                    ex.label(e, s, &l);
                }
            }
        }
        LogRecord::Erase(e, k) => {
            let h = key_hash(seed, e, &k);
            shards[shard_of(h)].maps[e.index()].remove(h);
        }
    }
}

fn guard_of<'g, 's>(
    guards: &'g mut [(usize, MutexGuard<'s, Shard>)],
    i: usize,
) -> Option<&'g mut Shard> {
    guards
        .iter_mut()
        .find(|(j, _)| *j == i)
        .map(|(_, g)| &mut **g)
}

impl StateStore for MemoryStore {
    fn apply(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        row: &mut [f64],
    ) -> Result<(), StoreError> {
        let upto = {
            let mut guards = self.lock_for(ex, obs);
            // First every entity's state is found and its newest events asked for, so that
            // their cache misses overlap; then the features, entity after entity.
            let mut at = [(0u128, 0usize); Entity::ALL.len()];
            for (slot, e) in at.iter_mut().zip(ex.entities()) {
                if let Some(k) = obs.key(e) {
                    *slot = self.locate(e, k);
                    if let Some(s) =
                        guard_of(&mut guards, slot.1).and_then(|sh| sh.maps[e.index()].get(slot.0))
                    {
                        s.prefetch();
                    }
                }
            }
            for (&(h, i), e) in at.iter().zip(ex.entities()) {
                match obs.key(e) {
                    Some(k) => {
                        if let Some(sh) = guard_of(&mut guards, i) {
                            let s = sh.maps[e.index()].entry(h, k);
                            ex.entity_step(e, &obs.point, s, row);
                        }
                    }
                    None => ex.entity_into(e, &obs.point, None, row),
                }
            }
            // Logged while the entities are held, so the log has their order.
            self.append(|| LogRecord::Step(obs.clone()))?
        };
        self.sync(upto)
    }

    fn peek(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        row: &mut [f64],
    ) -> Result<(), StoreError> {
        for e in ex.entities() {
            match obs.key(e) {
                Some(k) => {
                    let (h, i) = self.locate(e, k);
                    let g = lock(&self.shards[i]);
                    ex.entity_into(e, &obs.point, g.maps[e.index()].get(h), row);
                }
                None => ex.entity_into(e, &obs.point, None, row),
            }
        }
        Ok(())
    }

    fn label(
        &self,
        ex: &Extractor,
        obs: &Observation<'_>,
        label: &LabelEvent,
    ) -> Result<(), StoreError> {
        let upto = {
            let mut guards = self.lock_for(ex, obs);
            for e in ex.entities().filter(|e| ex.keeps_labels(*e)) {
                if let Some(k) = obs.key(e) {
                    let (h, i) = self.locate(e, k);
                    if let Some(sh) = guard_of(&mut guards, i) {
                        let s = sh.maps[e.index()].entry(h, k);
                        ex.label(e, s, label);
                    }
                }
            }
            self.append(|| LogRecord::Label(obs.clone(), *label))?
        };
        self.sync(upto)
    }

    fn erase(&self, entity: Entity, key: &str) -> Result<bool, StoreError> {
        let (held, upto) = {
            let (h, i) = self.locate(entity, key);
            let mut g = lock(&self.shards[i]);
            let held = g.maps[entity.index()].remove(h).is_some();
            let upto = if held {
                self.append(|| LogRecord::Erase(entity, key.to_string().into()))?
            } else {
                None
            };
            (held, upto)
        };
        self.sync(upto)?;
        // The key may still be written in log segments (in this entity's records or in other
        // entities' records of the same transactions): a snapshot lets them all go.
        self.snapshot()?;
        Ok(held)
    }

    fn get(&self, entity: Entity, key: &str) -> Result<Option<EntityState>, StoreError> {
        let (h, i) = self.locate(entity, key);
        Ok(lock(&self.shards[i]).maps[entity.index()].get(h).cloned())
    }

    fn rename(&self, entity: Entity, from: &str, to: &str) -> Result<bool, StoreError> {
        let ((hf, a), (ht, b)) = (self.locate(entity, from), self.locate(entity, to));
        let moved = {
            // Both shards, in index order (the order every writer takes them in).
            let (lo, hi) = (a.min(b), a.max(b));
            let mut first = lock(&self.shards[lo]);
            let mut second = (hi != lo).then(|| lock(&self.shards[hi]));
            let e = entity.index();
            let (src, dst): (&mut Shard, &mut Shard) = match second.as_deref_mut() {
                None => {
                    if first.maps[e].contains(ht) {
                        return Ok(false);
                    }
                    let Some(state) = first.maps[e].remove(hf) else {
                        return Ok(false);
                    };
                    first.maps[e].insert(ht, to, state);
                    return self.renamed();
                }
                Some(s2) if a == lo => (&mut *first, s2),
                Some(s2) => (s2, &mut *first),
            };
            if dst.maps[e].contains(ht) {
                false
            } else if let Some(state) = src.maps[e].remove(hf) {
                dst.maps[e].insert(ht, to, state);
                true
            } else {
                false
            }
        };
        if moved {
            self.renamed()
        } else {
            Ok(false)
        }
    }
}

impl MemoryStore {
    /// After a rename, a durable store takes a snapshot (its log has no rename record).
    fn renamed(&self) -> Result<bool, StoreError> {
        self.snapshot()?;
        Ok(true)
    }
}
