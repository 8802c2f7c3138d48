//! The state kept per entity (a card, a customer, a terminal, ...): its recent transactions,
//! its last located transactions, the field values it has been seen with, and the fraud labels
//! known for its transactions; how one transaction or label changes it; and the byte layout the
//! Redis backend stores it in (so the Lua script and this code read and write the same thing).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::spec::{Entity, Field, MAX_DISTINCT_FIELDS};
use super::window::{self, Answer, Bucket, Level, Sliders, RAW_CAP, SLIDE_FROM};

/// Most remembered values (first-seen flags) per entity: beyond, the least recently seen are
/// forgotten (and would count as new again).
pub const MAX_SEEN: usize = 512;

/// Values kept when [`MAX_SEEN`] is passed.
pub(crate) const SEEN_KEPT: usize = MAX_SEEN * 3 / 4;

/// Most fraud labels kept per entity: beyond, the oldest transactions' labels are forgotten.
pub const MAX_FRAUDS: usize = 512;

/// What the state needs to know about one transaction, without its entity keys: the
/// minimised event that state updates, the durable event log and Redis are made of. No card
/// number, no id in clear: only a timestamp, the amount, a location and fingerprints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Microseconds since the epoch.
    pub ts: i64,
    /// Fingerprint of the transaction id (labels find their transaction by it).
    pub id: u64,
    /// Amount in major units.
    pub amount: f64,
    /// Latitude and longitude, when known.
    pub location: Option<(f64, f64)>,
    /// When the transaction became known as fraud (offline histories carry their labels).
    pub fraud_known_at: Option<i64>,
    /// Fingerprints of the remembered fields (index: [`Field::index`]); only the fields the
    /// spec remembers are filled in.
    pub fields: [Option<u64>; 11],
}

/// A [`Point`] and the keys of the entities it belongs to (index: [`Entity::index`]); only the
/// entities the spec keeps state for are filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation<'a> {
    /// The event.
    pub point: Point,
    /// Entity keys: the card token, customer id, ...
    pub keys: [Option<Cow<'a, str>>; 7],
}

impl Observation<'_> {
    /// The same observation owning its keys.
    pub fn into_owned(self) -> Observation<'static> {
        Observation {
            point: self.point,
            keys: self.keys.map(|k| k.map(|k| Cow::Owned(k.into_owned()))),
        }
    }

    /// The key of one entity, if the transaction has it.
    pub fn key(&self, entity: Entity) -> Option<&str> {
        self.keys[entity.index()].as_deref()
    }
}

/// A fraud label about one transaction, as it arrives through feedback.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelEvent {
    /// Fingerprint of the transaction id.
    pub id: u64,
    /// The transaction's timestamp (microseconds).
    pub ts: i64,
    /// Fraud (true) or not (false: withdraws an earlier fraud label).
    pub is_fraud: bool,
    /// When the label became known (microseconds).
    pub known_at: i64,
}

/// One past transaction of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Event {
    /// Microseconds since the epoch.
    pub ts: i64,
    /// Amount in major units.
    pub amount: f64,
    /// Fingerprints of the entity's distinct-count fields (0: missing).
    pub values: [u64; MAX_DISTINCT_FIELDS],
}

impl Event {
    /// The event of a transaction, its values in the entity's slots.
    pub(crate) fn of(p: &Point, k: &Keeping) -> Event {
        let mut values = [0u64; MAX_DISTINCT_FIELDS];
        for (v, f) in values.iter_mut().zip(&k.slots) {
            // 0 marks a missing value; a real fingerprint of 0 becomes 1.
            *v = p.fields[f.index()].map_or(0, |x| x.max(1));
        }
        Event {
            ts: p.ts,
            amount: p.amount,
            values,
        }
    }
}

/// A transaction as the state records it (see [`EntityState::record_parts`]), its seen values
/// apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorded {
    /// The entity's event of it (its time is the transaction's).
    pub event: Event,
    /// Fingerprint of its id.
    pub id: u64,
    /// Where it took place.
    pub location: Option<(f64, f64)>,
    /// When it became known as fraud (recorded only where labels are kept).
    pub fraud_known_at: Option<i64>,
    /// The events older than this go (but the newest of them).
    pub cut: i64,
    /// The seen values last seen before this go (when the map is cleaned up).
    pub seen_cut: i64,
}

/// A transaction of the entity known to be fraud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FraudMark {
    /// The transaction's time.
    pub ts: i64,
    /// Fingerprint of its id.
    pub id: u64,
    /// When the label became known.
    pub known_at: i64,
}

/// Hashes remembered values with a key drawn once per process, so outside ids cannot be
/// chosen to collide; zero-sized, unlike a per-map random state.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessHasher;

impl BuildHasher for ProcessHasher {
    type Hasher = ahash::AHasher;
    fn build_hasher(&self) -> ahash::AHasher {
        static STATE: OnceLock<ahash::RandomState> = OnceLock::new();
        STATE.get_or_init(ahash::RandomState::new).build_hasher()
    }
}

/// Everything held about one entity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityState {
    /// Past transactions in time order (ties in arrival order): the newest [`RAW_CAP`] to
    /// twice that (at twice, the oldest are folded until [`RAW_CAP`] are left).
    pub(crate) events: VecDeque<Event>,
    /// Per window level, the events folded out of `events` (hot entities only).
    pub(crate) folded: Vec<VecDeque<Bucket>>,
    /// `located[0]`: the last located transaction recorded at the newest time; `located[1]`:
    /// the last one recorded at the greatest earlier time.
    pub(crate) located: [Option<(i64, f64, f64)>; 2],
    /// (field index, value fingerprint) -> (latest time seen, latest earlier time or 0).
    pub(crate) seen: hashbrown::HashMap<(u8, u64), (i64, i64), ProcessHasher>,
    /// Size of `seen` after its last clean-up (expired values are removed lazily).
    #[serde(skip)]
    pub(crate) seen_mark: usize,
    /// Fraud labels of the entity's transactions, by transaction time.
    pub(crate) frauds: Vec<FraudMark>,
    /// The newest time recorded (idle eviction).
    pub(crate) touched: i64,
    /// Running window aggregates (a cache).
    #[serde(skip)]
    pub(crate) sliders: Sliders,
}

/// An entity's state as snapshots of version 1 hold it (before time buckets): read, then
/// made an [`EntityState`] (folded at its next transaction if it holds more raw events than
/// the cap).
#[derive(Debug, Deserialize)]
pub(crate) struct EntityStateV1 {
    events: VecDeque<Event>,
    located: [Option<(i64, f64, f64)>; 2],
    seen: hashbrown::HashMap<(u8, u64), (i64, i64), ProcessHasher>,
    frauds: Vec<FraudMark>,
    touched: i64,
}

impl From<EntityStateV1> for EntityState {
    fn from(v: EntityStateV1) -> Self {
        EntityState {
            events: v.events,
            folded: Vec::new(),
            located: v.located,
            seen_mark: v.seen.len(),
            seen: v.seen,
            frauds: v.frauds,
            touched: v.touched,
            sliders: Sliders::default(),
        }
    }
}

/// How one entity kind's state is kept: derived from the spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Keeping {
    /// How far back events are needed (longest window, or delay plus window).
    pub horizon_us: i64,
    /// The retention (microseconds).
    pub retention_us: i64,
    /// Fields whose values events keep, by slot.
    pub slots: Vec<Field>,
    /// Fields with a first-seen flag.
    pub first_seen: Vec<Field>,
    /// Whether fraud labels are kept.
    pub labels: bool,
    /// The windows asked of the entity (length and end), each once.
    pub levels: Vec<Level>,
}

impl Keeping {
    /// The transaction's values the entity remembers (first-seen flags): field index and
    /// fingerprint.
    pub(crate) fn seen_of<'a>(&'a self, p: &'a Point) -> impl Iterator<Item = (u8, u64)> + 'a {
        self.first_seen
            .iter()
            .filter_map(|f| Some((f.index() as u8, p.fields[f.index()]?)))
    }
}

impl EntityState {
    /// Asks the CPU to bring this state's newest events into cache (callers about to read
    /// several states ask for all of them first, so the misses overlap).
    pub(crate) fn prefetch(&self) {
        let (a, b) = self.events.as_slices();
        if let Some(e) = b.last().or(a.last()) {
            crate::prefetch((e as *const Event).cast());
        }
    }

    /// Records a transaction (after its features were computed).
    pub(crate) fn record(&mut self, k: &Keeping, p: &Point) {
        self.record_folding(k, p, &mut Vec::new());
    }

    /// [`record`](Self::record), handing the raw events folded into time buckets to `out`
    /// (none but once every [`RAW_CAP`] transactions of a hot entity); returns how many.
    pub(crate) fn record_folding(&mut self, k: &Keeping, p: &Point, out: &mut Vec<Event>) -> usize {
        let seen = k.seen_of(p);
        let recorded = Recorded {
            event: Event::of(p, k),
            id: p.id,
            location: p.location,
            fraud_known_at: p.fraud_known_at.filter(|_| k.labels),
            cut: p.ts - k.horizon_us.max(1),
            seen_cut: p.ts - k.retention_us,
        };
        self.record_parts(k, &recorded, seen, Some(out))
    }

    /// Records a transaction given as its parts (its event, location, seen values and fraud
    /// mark, as the Redis backend's operations carry them): the rules of
    /// [`record`](Self::record). With `fold`, a hot entity's oldest raw events are folded into
    /// time buckets and handed over (as [`record_folding`](Self::record_folding)); without,
    /// none are (another replica's transaction replayed: only the replica that folds
    /// changes the buckets, in Redis and in its copy alike). Returns how many were folded.
    pub(crate) fn record_parts(
        &mut self,
        k: &Keeping,
        r: &Recorded,
        seen: impl Iterator<Item = (u8, u64)>,
        fold: Option<&mut Vec<Event>>,
    ) -> usize {
        let t = r.event.ts;
        if self.events.back().is_none_or(|e| e.ts <= t) {
            self.events.push_back(r.event);
        } else {
            // Out of time order: the sliders start again from the events.
            self.sliders.clear();
            let at = self.events.partition_point(|e| e.ts <= t);
            self.events.insert(at, r.event);
        }
        self.prune(r.cut);
        let mut folded = 0;
        if let Some(out) = fold.filter(|_| self.events.len() >= 2 * RAW_CAP) {
            let newest = self.events.back().map_or(t, |e| e.ts);
            if self.folded.len() < k.levels.len() {
                self.folded.resize_with(k.levels.len(), VecDeque::new);
            }
            while self.events.len() > RAW_CAP {
                if let Some(e) = self.pop_front() {
                    folded += 1;
                    out.push(e);
                    for (b, lv) in self.folded.iter_mut().zip(&k.levels) {
                        window::fold(b, lv, &e, newest);
                    }
                }
            }
        }
        if let Some((lat, lon)) = r.location {
            self.locate(t, lat, lon);
        }
        for (f, v) in seen {
            self.see(f, v, t);
        }
        if self.seen.len() > 2 * self.seen_mark.max(8) || self.seen.len() > MAX_SEEN {
            let oldest = r.seen_cut;
            self.seen.retain(|_, (last, _)| *last >= oldest);
            if self.seen.len() > MAX_SEEN {
                // Keep exactly three quarters of the cap: the most recently seen, ties by
                // field and fingerprint (values seen at one time cannot defeat the cap). The
                // Redis script orders them the same way, so the same values are kept.
                let mut order: Vec<(i64, u8, u64)> = self
                    .seen
                    .iter()
                    .map(|(&(f, v), &(last, _))| (last, f, v))
                    .collect();
                let cut = order.len() - SEEN_KEPT;
                let (_, nth, _) = order.select_nth_unstable(cut);
                let nth = *nth;
                self.seen.retain(|&(f, v), (last, _)| (*last, f, v) >= nth);
            }
            self.seen_mark = self.seen.len();
        }
        if k.labels {
            if let Some(known_at) = r.fraud_known_at {
                self.mark_fraud(r.id, t, known_at);
            }
            let n = self.frauds.partition_point(|m| m.ts < r.cut);
            // At most `MAX_FRAUDS` (states written before the cap may hold more).
            self.frauds
                .drain(..n.max(self.frauds.len().saturating_sub(MAX_FRAUDS)));
        }
        self.touched = self.touched.max(t);
        folded
    }

    /// Takes a transaction just recorded back out (its features are those of the state
    /// without it: the Redis backend finding it recorded already by a retry or another
    /// replica): its event, its location if it is the newest, and its seen values where it
    /// made them newest (a value it saw first goes; one seen before goes back to its earlier
    /// time, the one before that being unknown). The rules of the byte layout's own.
    #[cfg(feature = "redis")]
    pub(crate) fn without(&mut self, event: &Event, seen: &[(u8, u64)]) {
        let t = event.ts;
        if let Some(i) = self.events.iter().rposition(|e| e == event) {
            self.events.remove(i);
            self.sliders.clear();
        }
        if self.located[0].is_some_and(|(ts, ..)| ts == t) {
            self.located = [self.located[1], None];
        }
        for key in seen {
            if let Some(&(last, prev)) = self.seen.get(key) {
                if last == t {
                    if prev != 0 {
                        self.seen.insert(*key, (prev, 0));
                    } else {
                        self.seen.remove(key);
                    }
                }
            }
        }
    }

    /// Applies a fraud label to one of the entity's transactions.
    pub(crate) fn label(&mut self, l: &LabelEvent) {
        if l.is_fraud {
            self.mark_fraud(l.id, l.ts, l.known_at);
        } else {
            self.frauds.retain(|m| m.id != l.id);
        }
        self.touched = self.touched.max(l.ts);
    }

    fn mark_fraud(&mut self, id: u64, ts: i64, known_at: i64) {
        if let Some(m) = self.frauds.iter_mut().find(|m| m.id == id) {
            m.known_at = m.known_at.min(known_at);
            return;
        }
        let at = self.frauds.partition_point(|m| m.ts <= ts);
        self.frauds.insert(at, FraudMark { ts, id, known_at });
        if self.frauds.len() > MAX_FRAUDS {
            self.frauds.remove(0);
        }
    }

    fn see(&mut self, field: u8, v: u64, t: i64) {
        let e = self.seen.entry((field, v)).or_insert((t, 0));
        let (last, prev) = *e;
        if t > last {
            *e = (t, last);
        } else if t < last && t > prev {
            e.1 = t;
        }
    }

    /// Drops events older than `oldest` that no later question needs: the windows need the
    /// events from `oldest` on, and "time since last" for a transaction tied with the newest
    /// needs the latest event before the newest time, so that one is kept too.
    fn prune(&mut self, oldest: i64) {
        let Some(newest) = self.events.back().map(|e| e.ts) else {
            return;
        };
        let limit = oldest.min(newest);
        if self.events.get(1).is_none_or(|e| e.ts >= limit) {
            return;
        }
        let old = self.events.partition_point(|e| e.ts < limit);
        for _ in 1..old {
            self.pop_front();
        }
    }

    /// Removes the oldest raw event (the sliders are told).
    fn pop_front(&mut self) -> Option<Event> {
        let e = self.events.pop_front()?;
        self.sliders.evict(&e);
        Some(e)
    }

    /// The window `[from, to)` of level `li`, by a scan of its raw events (and its folded
    /// ones).
    pub(crate) fn answer(&self, li: usize, lv: &Level, from: i64, to: i64) -> Answer {
        let mut a = window::scan(self.in_window(from, to).copied(), lv);
        self.add_folded(&mut a, li, from, to);
        a
    }

    /// The same answer as [`answer`](Self::answer), by the level's slider when the entity
    /// has many events (O(1) amortized as time moves forward).
    pub(crate) fn answer_mut(&mut self, li: usize, lv: &Level, from: i64, to: i64) -> Answer {
        if self.events.len() < SLIDE_FROM {
            return self.answer(li, lv, from, to);
        }
        let mut a = self.sliders.answer(&self.events, li, lv, from, to);
        self.add_folded(&mut a, li, from, to);
        a
    }

    fn add_folded(&self, a: &mut Answer, li: usize, from: i64, to: i64) {
        if let Some(b) = self.folded.get(li).filter(|b| !b.is_empty()) {
            a.agg.merge(&window::folded_part(b, from, to));
        }
    }

    fn locate(&mut self, ts: i64, lat: f64, lon: f64) {
        match self.located[0] {
            Some((newest, ..)) if ts < newest => {
                // A late arrival: it may be the newest before the newest time.
                if self.located[1].is_none_or(|(before, ..)| ts >= before) {
                    self.located[1] = Some((ts, lat, lon));
                }
            }
            Some((newest, ..)) if ts == newest => self.located[0] = Some((ts, lat, lon)),
            _ => {
                self.located[1] = self.located[0];
                self.located[0] = Some((ts, lat, lon));
            }
        }
    }

    /// The previous located transaction for a transaction at `t`.
    pub(crate) fn located_before(&self, t: i64) -> Option<(i64, f64, f64)> {
        self.located
            .iter()
            .flatten()
            .find(|(ts, ..)| *ts < t)
            .copied()
    }

    /// Number of events before `t` (events arrive mostly in time order: the newest is
    /// checked first, before a binary search).
    fn before(&self, t: i64) -> usize {
        match self.events.back() {
            None => 0,
            Some(e) if e.ts < t => self.events.len(),
            Some(_) => self.events.partition_point(|e| e.ts < t),
        }
    }

    /// Number of events before `from`, the oldest checked first (windows usually start
    /// before it once the state is pruned).
    fn from(&self, from: i64) -> usize {
        match self.events.front() {
            Some(e) if e.ts < from => self.events.partition_point(|e| e.ts < from),
            _ => 0,
        }
    }

    /// The latest timestamp before `t`.
    pub(crate) fn last_before(&self, t: i64) -> Option<i64> {
        let end = self.before(t);
        end.checked_sub(1).map(|i| self.events[i].ts)
    }

    /// The latest time before `t` the value was seen, if any.
    pub(crate) fn seen_before(&self, field: Field, v: u64, t: i64) -> Option<i64> {
        let &(last, prev) = self.seen.get(&(field.index() as u8, v))?;
        if last < t {
            Some(last)
        } else if prev > 0 && prev < t {
            Some(prev)
        } else {
            None
        }
    }

    pub(crate) fn in_window(
        &self,
        from: i64,
        to: i64,
    ) -> impl DoubleEndedIterator<Item = &Event> + Clone {
        let end = self.before(to);
        let start = self.from(from).min(end);
        self.events.range(start..end)
    }

    /// Number of fraud labels on transactions in `[from, to)` known at or before `known_by`.
    pub(crate) fn frauds_in(&self, from: i64, to: i64, known_by: i64) -> usize {
        let start = self.frauds.partition_point(|m| m.ts < from);
        let end = self.frauds.partition_point(|m| m.ts < to);
        self.frauds[start..end]
            .iter()
            .filter(|m| m.known_at <= known_by)
            .count()
    }

    /// The newest time recorded for the entity.
    pub fn touched(&self) -> i64 {
        self.touched
    }

    /// Bytes this state holds on the heap (its allocations, at their capacity), not counting
    /// the struct itself or its key.
    pub fn heap_bytes(&self) -> usize {
        self.events.capacity() * std::mem::size_of::<Event>()
            + self.folded.capacity() * std::mem::size_of::<VecDeque<Bucket>>()
            + self
                .folded
                .iter()
                .map(|b| b.capacity() * std::mem::size_of::<Bucket>())
                .sum::<usize>()
            + self.sliders.heap_bytes()
            + if self.seen.capacity() == 0 {
                0
            } else {
                // hashbrown: one control byte per bucket plus a group of trailing ones.
                let buckets = (self.seen.capacity() * 8 / 7).next_power_of_two();
                buckets * (std::mem::size_of::<((u8, u64), (i64, i64))>() + 1) + 16
            }
            + self.frauds.capacity() * std::mem::size_of::<FraudMark>()
    }

    /// A copy for comparisons: values that expired (not seen within the retention before the
    /// newest time) are removed, and capacities do not matter.
    pub fn normalized(&self, retention_us: i64) -> EntityState {
        let mut s = self.clone();
        let oldest = s.touched - retention_us;
        s.seen.retain(|_, (last, _)| *last >= oldest);
        for (_, prev) in s.seen.values_mut() {
            if *prev < oldest {
                *prev = 0;
            }
        }
        s.seen_mark = 0;
        s
    }
}

/// Byte layout of a state in Redis: one hash per entity with the fields `e` (events), `l`
/// (located), `s` (seen values), `f` (fraud labels), `t` (newest time) and `b` (the time
/// buckets of folded events, postcard; written by this code, carried by the script). Times are
/// big-endian so that the Lua script compares them as strings; all times are after 1990, so
/// positive.
#[cfg(feature = "redis")]
pub(crate) mod layout {
    use super::*;

    /// Bytes per event: ts, amount, values.
    pub const EVENT: usize = 16 + 8 * MAX_DISTINCT_FIELDS;
    /// Bytes per located transaction: ts, lat, lon.
    pub const LOCATED: usize = 24;
    /// Bytes per seen value: field, fingerprint, last, prev.
    pub const SEEN: usize = 25;
    /// Bytes per fraud label: ts, id, known_at.
    pub const FRAUD: usize = 24;

    /// A big-endian time (8 bytes).
    pub fn time(b: &[u8]) -> i64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        i64::from_be_bytes(a)
    }

    /// A little-endian float (8 bytes: amounts and coordinates).
    pub fn float(b: &[u8]) -> f64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        f64::from_le_bytes(a)
    }

    /// A big-endian fingerprint (8 bytes).
    pub fn fingerprint(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        u64::from_be_bytes(a)
    }

    /// Appends one raw event as stored.
    fn put_event(out: &mut Vec<u8>, e: &Event) {
        out.extend_from_slice(&e.ts.to_be_bytes());
        out.extend_from_slice(&e.amount.to_le_bytes());
        for v in e.values {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// One raw event as stored (`EVENT` bytes).
    pub fn event_of(e: &[u8]) -> Event {
        let mut values = [0u64; MAX_DISTINCT_FIELDS];
        for (i, v) in values.iter_mut().enumerate() {
            *v = fingerprint(&e[16 + 8 * i..]);
        }
        Event {
            ts: time(e),
            amount: float(&e[8..]),
            values,
        }
    }

    /// How many bytes the state takes as stored (its raw events, located transactions, seen
    /// values, fraud labels and newest time; its buckets apart).
    pub fn stored_len(s: &EntityState) -> usize {
        s.events.len() * EVENT
            + s.located.iter().flatten().count() * LOCATED
            + s.seen.len() * SEEN
            + s.frauds.len() * FRAUD
            + 8
    }

    /// Raw events as stored, concatenated.
    pub fn events<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            put_event(&mut out, e);
        }
        out
    }

    /// The folded events' buckets as stored (empty when there are none).
    pub fn buckets(s: &EntityState) -> Vec<u8> {
        if s.folded.iter().all(VecDeque::is_empty) {
            return Vec::new();
        }
        postcard::to_allocvec(&s.folded).unwrap_or_default()
    }

    /// The event as stored.
    pub fn event(p: &Point, k: &Keeping) -> Vec<u8> {
        let mut out = Vec::with_capacity(EVENT);
        put_event(&mut out, &Event::of(p, k));
        out
    }

    /// A located transaction as stored (empty without location).
    pub fn located(p: &Point) -> Vec<u8> {
        let Some((lat, lon)) = p.location else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(LOCATED);
        out.extend_from_slice(&p.ts.to_be_bytes());
        out.extend_from_slice(&lat.to_le_bytes());
        out.extend_from_slice(&lon.to_le_bytes());
        out
    }

    /// The seen values to record, concatenated (field byte and fingerprint).
    pub fn seen_keys(p: &Point, k: &Keeping) -> Vec<u8> {
        let mut out = Vec::new();
        for (f, v) in k.seen_of(p) {
            out.push(f);
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// Why stored bytes could not be read.
    fn bad(what: &str) -> String {
        format!("entity state in Redis is corrupt ({what} has a wrong length)")
    }

    /// Rebuilds a state from its stored fields.
    pub fn decode(
        events: &[u8],
        located: &[u8],
        seen: &[u8],
        frauds: &[u8],
        touched: &[u8],
        buckets: &[u8],
    ) -> Result<EntityState, String> {
        if !events.len().is_multiple_of(EVENT) {
            return Err(bad("events"));
        }
        if !located.len().is_multiple_of(LOCATED) || located.len() > 2 * LOCATED {
            return Err(bad("located"));
        }
        if !seen.len().is_multiple_of(SEEN) {
            return Err(bad("seen"));
        }
        if !frauds.len().is_multiple_of(FRAUD) {
            return Err(bad("frauds"));
        }
        if !(touched.is_empty() || touched.len() == 8) {
            return Err(bad("touched"));
        }
        let mut s = EntityState::default();
        s.events.extend(events.chunks_exact(EVENT).map(event_of));
        for (i, l) in located.chunks_exact(LOCATED).enumerate() {
            s.located[i] = Some((time(l), float(&l[8..]), float(&l[16..])));
        }
        for v in seen.chunks_exact(SEEN) {
            s.seen.insert(
                (v[0], fingerprint(&v[1..])),
                (time(&v[9..]), time(&v[17..])),
            );
        }
        s.seen_mark = s.seen.len();
        for m in frauds.chunks_exact(FRAUD) {
            s.frauds.push(FraudMark {
                ts: time(m),
                id: fingerprint(&m[8..]),
                known_at: time(&m[16..]),
            });
        }
        if !touched.is_empty() {
            s.touched = time(touched);
        }
        if !buckets.is_empty() {
            s.folded = postcard::from_bytes(buckets)
                .map_err(|_| "entity state in Redis is corrupt (its time buckets do not read)")?;
        }
        Ok(s)
    }
}
