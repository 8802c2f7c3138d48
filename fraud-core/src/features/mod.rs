//! Features: a declarative spec ([`FeatureSpec`]), the state kept per entity
//! ([`EntityState`]), the stores that hold it ([`StateStore`]: [`MemoryStore`], sharded in
//! memory, optionally durable; [`redis`]: shared by replicas), and one
//! set of functions that compute a transaction's features from that state. They are used both
//! online (one transaction: compute, then record) and offline ([`replay`]: a history in time
//! order), so both give identical results.
//!
//! Windows are exact: a past transaction counts iff its timestamp is in `[t - w, t)`, `t`
//! being the current one's; the current transaction never counts. This holds for every window
//! length (no bucketing): the state keeps every event within the longest window of its entity.
//! Label-aware rates count, among the entity's transactions in `[t - delay - w, t - delay)`,
//! those whose fraud label is known at `t` (reported at or before it): the delay sets the
//! window, not when a label counts (it would count each late label's delay twice).

mod durable;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
mod resp;
mod shard;
mod spec;
mod state;
mod store;
mod window;

use std::collections::HashMap;

use rayon::prelude::*;

pub use durable::Durability;
pub use spec::{
    parse_window, Aggregation, Distinct, Entity, FeatureSpec, Field, FirstSeen, LabelRates,
    SpecError, Stateless, WindowGroup, DEFAULT_RETENTION, DEFAULT_SPEC, MAX_DISTINCT_FIELDS,
};
pub use state::{EntityState, LabelEvent, Observation, Point, MAX_FRAUDS, MAX_SEEN};
pub use store::{MemoryStore, StateCopy, StateStore, StoreError, StoreStats};
pub use window::RAW_CAP;

use crate::transaction::Transaction;
use state::Keeping;
use window::{Answer, Level};

/// Most different windows (lengths, and delays of label-aware ones) one entity may have.
pub const MAX_WINDOWS: usize = 32;

/// What one window level writes.
#[derive(Debug, Clone, Default)]
struct LevelOut {
    /// (aggregation, output).
    aggs: Vec<(Aggregation, usize)>,
    /// (event slot, output).
    distinct: Vec<(usize, usize)>,
    /// The first of the three label-aware outputs.
    labels: Option<usize>,
}

/// What one entity kind contributes: how its state is kept and where its features go.
#[derive(Debug, Clone)]
struct Plan {
    entity: Entity,
    keeping: Keeping,
    since_last: Option<usize>,
    first_seen: Vec<(Field, usize)>,
    /// What each of `keeping.levels` writes.
    levels: Vec<LevelOut>,
    geo: Option<usize>,
    /// Every output index this plan writes.
    outputs: Vec<usize>,
}

impl Plan {
    fn new(entity: Entity) -> Self {
        Plan {
            entity,
            keeping: Keeping::default(),
            since_last: None,
            first_seen: Vec::new(),
            levels: Vec::new(),
            geo: None,
            outputs: Vec::new(),
        }
    }

    /// The level of the window `[t - d - w, t - d)`, added when new.
    fn level(&mut self, w: i64, d: i64) -> usize {
        let k = &mut self.keeping;
        k.horizon_us = k.horizon_us.max(w + d);
        match k.levels.iter().position(|l| l.w == w && l.d == d) {
            Some(i) => i,
            None => {
                k.levels.push(Level::new(w, d));
                self.levels.push(LevelOut::default());
                k.levels.len() - 1
            }
        }
    }
}

/// A spec ready to compute features.
#[derive(Debug, Clone)]
pub struct Extractor {
    spec: FeatureSpec,
    names: Vec<String>,
    /// Stateful entity kinds, in [`Entity::ALL`] order.
    plans: Vec<Plan>,
    /// Fields whose fingerprints the state needs.
    fields: Vec<Field>,
    retention_us: i64,
}

fn micros(w: &str) -> Result<i64, SpecError> {
    Ok(parse_window(w)? * 1_000_000)
}

impl Extractor {
    /// Checks a spec and fixes its feature order: stateless, time since last, first-seen
    /// flags, windows, distinct counts, geo-velocity, label-aware rates, each in spec order.
    pub fn new(spec: FeatureSpec) -> Result<Self, SpecError> {
        let mut names: Vec<String> = spec
            .stateless
            .iter()
            .map(|s| s.name().to_string())
            .collect();
        let mut plans: Vec<Plan> = Entity::ALL.iter().map(|e| Plan::new(*e)).collect();
        let mut used = [false; 7];
        let push = |names: &mut Vec<String>, plan: &mut Plan, name: String| {
            plan.outputs.push(names.len());
            names.push(name);
            names.len() - 1
        };
        for e in &spec.since_last {
            let p = &mut plans[e.index()];
            used[e.index()] = true;
            p.since_last = Some(push(
                &mut names,
                p,
                format!("{}_seconds_since_last", e.name()),
            ));
        }
        for f in &spec.first_seen {
            let p = &mut plans[f.entity.index()];
            used[f.entity.index()] = true;
            let i = push(
                &mut names,
                p,
                format!("{}_new_{}", f.entity.name(), f.field.name()),
            );
            p.first_seen.push((f.field, i));
            if !p.keeping.first_seen.contains(&f.field) {
                p.keeping.first_seen.push(f.field);
            }
        }
        for g in &spec.windows {
            if g.aggregations.is_empty() {
                return Err(SpecError::Invalid(format!(
                    "{} windows list no aggregations",
                    g.entity.name()
                )));
            }
            let p = &mut plans[g.entity.index()];
            used[g.entity.index()] = true;
            for w in &g.windows {
                let li = p.level(micros(w)?, 0);
                for a in &g.aggregations {
                    let i = push(
                        &mut names,
                        p,
                        format!("{}_{}_{}", g.entity.name(), a.name(), w.trim()),
                    );
                    p.levels[li].aggs.push((*a, i));
                    p.keeping.levels[li].max |= *a == Aggregation::Max;
                }
            }
        }
        for d in &spec.distinct {
            let p = &mut plans[d.entity.index()];
            used[d.entity.index()] = true;
            let slot = match p.keeping.slots.iter().position(|f| *f == d.field) {
                Some(i) => i,
                None => {
                    if p.keeping.slots.len() == MAX_DISTINCT_FIELDS {
                        return Err(SpecError::Invalid(format!(
                            "{} has distinct counts of more than {MAX_DISTINCT_FIELDS} fields",
                            d.entity.name()
                        )));
                    }
                    p.keeping.slots.push(d.field);
                    p.keeping.slots.len() - 1
                }
            };
            for w in &d.windows {
                let li = p.level(micros(w)?, 0);
                let i = push(
                    &mut names,
                    p,
                    format!(
                        "{}_distinct_{}_{}",
                        d.entity.name(),
                        d.field.name(),
                        w.trim()
                    ),
                );
                p.levels[li].distinct.push((slot, i));
                p.keeping.levels[li].slots[slot] = true;
            }
        }
        for e in &spec.geo_velocity {
            let p = &mut plans[e.index()];
            used[e.index()] = true;
            p.geo = Some(push(
                &mut names,
                p,
                format!("{}_geo_velocity_kmh", e.name()),
            ));
        }
        for l in &spec.label_rates {
            let p = &mut plans[l.entity.index()];
            used[l.entity.index()] = true;
            let delay = micros(&l.delay)?;
            for w in &l.windows {
                let li = p.level(micros(w)?, delay);
                let suffix = format!("{}_delay_{}", w.trim(), l.delay.trim());
                let first = names.len();
                for what in ["delayed_txn_count", "fraud_count", "fraud_rate"] {
                    push(
                        &mut names,
                        p,
                        format!("{}_{what}_{suffix}", l.entity.name()),
                    );
                }
                p.keeping.labels = true;
                p.levels[li].labels = Some(first);
            }
        }
        if let Some(p) = plans.iter().find(|p| p.levels.len() > MAX_WINDOWS) {
            return Err(SpecError::Invalid(format!(
                "{} has more than {MAX_WINDOWS} windows",
                p.entity.name()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if !seen.insert(n) {
                return Err(SpecError::Invalid(format!(
                    "feature `{n}` is defined twice"
                )));
            }
        }
        let retention = spec.retention.as_deref().unwrap_or(DEFAULT_RETENTION);
        let retention_us = micros(retention)?;
        let mut fields = Vec::new();
        let plans: Vec<Plan> = plans
            .into_iter()
            .filter(|p| used[p.entity.index()])
            .map(|mut p| {
                p.keeping.retention_us = retention_us;
                for f in p.keeping.slots.iter().chain(&p.keeping.first_seen) {
                    if !fields.contains(f) {
                        fields.push(*f);
                    }
                }
                p
            })
            .collect();
        if let Some(p) = plans.iter().find(|p| p.keeping.horizon_us > retention_us) {
            return Err(SpecError::Invalid(format!(
                "retention {retention} is shorter than the {} windows (plus delay)",
                p.entity.name()
            )));
        }
        Ok(Extractor {
            spec,
            names,
            plans,
            fields,
            retention_us,
        })
    }

    /// Feature names, in output order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The spec.
    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// How long anything about an entity is remembered, in microseconds.
    pub fn retention_us(&self) -> i64 {
        self.retention_us
    }

    /// The entity kinds this spec keeps state for.
    pub fn entities(&self) -> impl Iterator<Item = Entity> + '_ {
        self.plans.iter().map(|p| p.entity)
    }

    /// Whether the spec has label-aware features for `entity`.
    pub fn keeps_labels(&self, entity: Entity) -> bool {
        self.plan(entity).is_some_and(|p| p.keeping.labels)
    }

    fn plan(&self, entity: Entity) -> Option<&Plan> {
        self.plans.iter().find(|p| p.entity == entity)
    }

    #[cfg(feature = "redis")]
    pub(crate) fn keeping(&self, entity: Entity) -> Option<&Keeping> {
        self.plan(entity).map(|p| &p.keeping)
    }

    /// What the state needs of `tx`: its time, amount, location, label, the fingerprints of
    /// the remembered fields and the keys of its stateful entities.
    pub fn observe<'a>(&self, tx: &'a Transaction) -> Observation<'a> {
        let mut fields = [None; 11];
        for f in &self.fields {
            fields[f.index()] = f.fingerprint(tx);
        }
        let mut keys: [Option<std::borrow::Cow<'a, str>>; 7] = Default::default();
        for p in &self.plans {
            keys[p.entity.index()] = p.entity.key(tx);
        }
        Observation {
            point: Point {
                ts: tx.timestamp_us,
                id: spec::hash_bytes(tx.transaction_id.as_bytes()),
                amount: tx.amount.as_f64(),
                location: tx.location,
                fraud_known_at: fraud_known_at(tx),
                fields,
            },
            keys,
        }
    }

    /// A row of the right width, every feature NaN.
    pub fn empty_row(&self) -> Vec<f64> {
        vec![f64::NAN; self.names.len()]
    }

    /// Writes the stateless features of `tx` into `row`.
    pub fn stateless_into(&self, tx: &Transaction, row: &mut [f64]) {
        for (s, v) in self.spec.stateless.iter().zip(row.iter_mut()) {
            *v = s.value(tx);
        }
    }

    /// Writes the features of one entity into `row`, from its state before the transaction
    /// (`None`: nothing known about it). Every output of the entity is written.
    pub fn entity_into(
        &self,
        entity: Entity,
        p: &Point,
        state: Option<&EntityState>,
        row: &mut [f64],
    ) {
        if let Some(plan) = self.plan(entity) {
            self.plan_into(plan, p, state, row);
        }
    }

    /// Writes the plan's features from the state before the transaction, windows by a scan.
    fn plan_into(&self, plan: &Plan, p: &Point, s: Option<&EntityState>, row: &mut [f64]) {
        self.point_into(plan, p, s, row);
        let t = p.ts;
        for (li, (lv, out)) in plan.keeping.levels.iter().zip(&plan.levels).enumerate() {
            let (from, to) = (t - lv.d - lv.w, t - lv.d);
            let a = s.map_or_else(Answer::default, |s| s.answer(li, lv, from, to));
            let frauds = match (s, out.labels) {
                (Some(s), Some(_)) => s.frauds_in(from, to, t),
                _ => 0,
            };
            level_into(out, p, &a, frauds, row);
        }
    }

    /// Writes the plan's features from the state, windows by its sliders, then records the
    /// transaction in it: the same features as [`plan_into`](Self::plan_into), at O(1)
    /// amortized cost whatever the entity's rate.
    fn plan_step(&self, plan: &Plan, p: &Point, s: &mut EntityState, row: &mut [f64]) {
        self.plan_slide(plan, p, s, row);
        s.record(&plan.keeping, p);
    }

    /// Writes the plan's features from the state, windows by its sliders (which move with
    /// the transaction's time; the state is otherwise unchanged).
    fn plan_slide(&self, plan: &Plan, p: &Point, s: &mut EntityState, row: &mut [f64]) {
        self.point_into(plan, p, Some(s), row);
        let t = p.ts;
        for (li, (lv, out)) in plan.keeping.levels.iter().zip(&plan.levels).enumerate() {
            let (from, to) = (t - lv.d - lv.w, t - lv.d);
            let a = s.answer_mut(li, lv, from, to);
            let frauds = match out.labels {
                Some(_) => s.frauds_in(from, to, t),
                None => 0,
            };
            level_into(out, p, &a, frauds, row);
        }
    }

    /// The features that are not windows: time since last, first-seen flags, geo-velocity.
    fn point_into(&self, plan: &Plan, p: &Point, s: Option<&EntityState>, row: &mut [f64]) {
        let t = p.ts;
        let horizon = t - self.retention_us;
        let mut put = |i: usize, v: f64| {
            if let Some(x) = row.get_mut(i) {
                *x = v;
            }
        };
        if let Some(i) = plan.since_last {
            let last = s.and_then(|s| s.last_before(t)).filter(|&l| l >= horizon);
            put(i, last.map_or(f64::NAN, |l| (t - l) as f64 / 1e6));
        }
        for &(f, i) in &plan.first_seen {
            put(
                i,
                match p.fields[f.index()] {
                    None => f64::NAN,
                    Some(v) => {
                        let before = s
                            .and_then(|s| s.seen_before(f, v, t))
                            .is_some_and(|l| l >= horizon);
                        f64::from(u8::from(!before))
                    }
                },
            );
        }
        if let Some(i) = plan.geo {
            let prev = s
                .and_then(|s| s.located_before(t))
                .filter(|(ts, ..)| *ts >= horizon);
            put(
                i,
                match (prev, p.location) {
                    (Some((ts, lat, lon)), Some((lat2, lon2))) => {
                        let hours = ((t - ts) as f64 / 3.6e9).max(1.0 / 3600.0);
                        haversine_km(lat, lon, lat2, lon2) / hours
                    }
                    _ => f64::NAN,
                },
            );
        }
    }

    /// Writes the features of one entity into `row` from its state before the transaction,
    /// then records the transaction in it: [`entity_into`](Self::entity_into) then
    /// [`record`](Self::record), with windows kept up to date as time moves forward (the
    /// cost per transaction does not grow with the entity's rate).
    pub fn entity_step(&self, entity: Entity, p: &Point, state: &mut EntityState, row: &mut [f64]) {
        if let Some(plan) = self.plan(entity) {
            self.plan_step(plan, p, state, row);
        }
    }

    /// Records a transaction in the state of one of its entities (after its features were
    /// computed).
    pub fn record(&self, entity: Entity, state: &mut EntityState, p: &Point) {
        if let Some(plan) = self.plan(entity) {
            state.record(&plan.keeping, p);
        }
    }

    /// [`entity_step`](Self::entity_step), folding a hot entity's oldest raw events into
    /// time buckets and handing them to `out`; returns how many.
    #[cfg(feature = "redis")]
    pub(crate) fn entity_step_folding(
        &self,
        entity: Entity,
        p: &Point,
        state: &mut EntityState,
        row: &mut [f64],
        out: &mut Vec<state::Event>,
    ) -> usize {
        match self.plan(entity) {
            Some(plan) => {
                self.plan_slide(plan, p, state, row);
                state.record_folding(&plan.keeping, p, out)
            }
            None => 0,
        }
    }

    /// [`entity_into`](Self::entity_into) by the state's running aggregates (the state
    /// is not changed but for them).
    #[cfg(feature = "redis")]
    pub(crate) fn entity_peek(
        &self,
        entity: Entity,
        p: &Point,
        state: &mut EntityState,
        row: &mut [f64],
    ) {
        if let Some(plan) = self.plan(entity) {
            self.plan_slide(plan, p, state, row);
        }
    }

    /// Applies a fraud label to the state of one entity of the labelled transaction.
    pub fn label(&self, entity: Entity, state: &mut EntityState, l: &LabelEvent) {
        if self.keeps_labels(entity) {
            state.label(l);
        }
    }

    /// The features of `tx` given the state before it (the state is not changed).
    pub fn compute(&self, tx: &Transaction, state: &MemoryState) -> Vec<f64> {
        let obs = self.observe(tx);
        let mut row = self.empty_row();
        self.stateless_into(tx, &mut row);
        for plan in &self.plans {
            let s = obs.key(plan.entity).and_then(|k| state.get(plan.entity, k));
            self.plan_into(plan, &obs.point, s, &mut row);
        }
        row
    }

    /// Records `tx` in the state (after its features were computed).
    pub fn update(&self, tx: &Transaction, state: &mut MemoryState) {
        let obs = self.observe(tx);
        for plan in &self.plans {
            if let Some(k) = obs.key(plan.entity) {
                let s = state.maps[plan.entity.index()].entry_ref(k).or_default();
                s.record(&plan.keeping, &obs.point);
            }
        }
    }

    /// Computes the features of `tx` and records it, with one state lookup per entity kind:
    /// the same result as [`compute`](Self::compute) then [`update`](Self::update).
    pub fn step(&self, tx: &Transaction, state: &mut MemoryState) -> Vec<f64> {
        let obs = self.observe(tx);
        let mut row = self.empty_row();
        self.stateless_into(tx, &mut row);
        for plan in &self.plans {
            if let Some(k) = obs.key(plan.entity) {
                let s = state.maps[plan.entity.index()].entry_ref(k).or_default();
                self.plan_step(plan, &obs.point, s, &mut row);
            } else {
                self.plan_into(plan, &obs.point, None, &mut row);
            }
        }
        row
    }
}

/// Entity state held in memory by one thread: one map per entity kind, looked up without
/// allocating, with aHash (keyed per process so outside ids cannot be chosen to collide).
/// [`MemoryStore`] is the sharded, bounded, durable store the service uses.
#[derive(Debug, Clone, Default)]
pub struct MemoryState {
    maps: [hashbrown::HashMap<String, EntityState, ahash::RandomState>; 7],
}

impl MemoryState {
    /// The state of one entity.
    pub fn get(&self, entity: Entity, key: &str) -> Option<&EntityState> {
        self.maps[entity.index()].get(key)
    }

    /// Number of entities held.
    pub fn len(&self) -> usize {
        self.maps.iter().map(|m| m.len()).sum()
    }

    /// Whether no entity is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes everything held about one entity (erasure).
    pub fn erase(&mut self, entity: Entity, key: &str) -> bool {
        self.maps[entity.index()].remove(key).is_some()
    }
}

/// Computes, for every transaction of a history, the features the online path would have
/// computed at that moment: transactions are taken in time order (ties in input order), each
/// one's features from the state before it, then the state is updated. Labels come from the
/// transactions themselves (`is_fraud`, known at `fraud_reported_at`, or at the transaction's
/// time when that is absent); label-aware features only count those known in time. Returns
/// rows in the input order.
pub fn replay(extractor: &Extractor, history: &[Transaction]) -> Vec<Vec<f64>> {
    let m = extractor.names.len().max(1);
    replay_flat(extractor, history)
        .chunks(m)
        .map(<[f64]>::to_vec)
        .collect()
}

/// [`replay`] into one row-major buffer (`history.len()` rows of `names().len()` features).
///
/// Runs in parallel on the current rayon pool: each entity kind's features depend only on
/// that entity's own history, so the work splits by entity kind and by a hash of the entity
/// key, each part walking its transactions in time order. The result does not depend on the
/// number of threads.
pub fn replay_flat(extractor: &Extractor, history: &[Transaction]) -> Vec<f64> {
    let n = history.len();
    let m = extractor.names.len();
    // Zeroed pages come from the OS lazily; the rows are filled in parallel below.
    let mut out = vec![0.0f64; n * m];
    if n == 0 || m == 0 {
        return out;
    }
    crate::huge_pages(&mut out);
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.par_sort_by_key(|&i| history[i as usize].timestamp_us);
    // One pass over the transactions (in parallel) reads everything the state needs into
    // compact rows, so the per-entity passes below never touch the transactions' strings
    // again: entity keys become 128-bit XXH3 hashes (two keys would have to collide on 128
    // bits to be mixed up), remembered fields their fingerprints.
    let nf = extractor.fields.len();
    let np = extractor.plans.len();
    // One parallel pass over the transactions: compact rows, field fingerprints, entity
    // keys, and the stateless features (written straight into the output).
    let mut points: Vec<Compact> = Vec::with_capacity(n);
    let mut fields: Vec<Option<u64>> = vec![None; n * nf.max(1)];
    let mut keys: Vec<u128> = vec![0; n * np.max(1)];
    crate::huge_pages(points.spare_capacity_mut());
    crate::huge_pages(&mut keys);
    history
        .par_iter()
        .zip(fields.par_chunks_mut(nf.max(1)))
        .zip(keys.par_chunks_mut(np.max(1)))
        .zip(out.par_chunks_mut(m))
        .map(|(((tx, f), k), row)| {
            for (slot, field) in f.iter_mut().zip(&extractor.fields) {
                *slot = field.fingerprint(tx);
            }
            for (slot, plan) in k.iter_mut().zip(&extractor.plans) {
                *slot = plan
                    .entity
                    .key(tx)
                    .map_or(0, |key| xxhash_rust::xxh3::xxh3_128(key.as_bytes()).max(1));
            }
            row.fill(f64::NAN);
            extractor.stateless_into(tx, row);
            Compact {
                ts: tx.timestamp_us,
                amount: tx.amount.as_f64(),
                location: tx.location,
                fraud_known_at: fraud_known_at(tx),
                id: spec::hash_bytes(tx.transaction_id.as_bytes()),
            }
        })
        .collect_into_vec(&mut points);
    let parts = (rayon::current_num_threads() * 4).clamp(1, 256);
    let mut tasks: Vec<(usize, Vec<u32>)> = Vec::new();
    for pi in 0..np {
        let mut buckets = vec![Vec::new(); parts + 1];
        for &i in &order {
            let k = keys[i as usize * np + pi];
            let b = if k == 0 {
                parts
            } else {
                ((k >> 64) as u64 % parts as u64) as usize
            };
            buckets[b].push(i);
        }
        tasks.extend(buckets.into_iter().map(|b| (pi, b)));
    }
    // Biggest first, so the pool is not left waiting on one large part at the end.
    tasks.sort_by_key(|(_, rows)| std::cmp::Reverse(rows.len()));
    let results: Vec<(usize, Vec<u32>, Vec<f64>)> = tasks
        .into_par_iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(pi, rows)| {
            let plan = &extractor.plans[pi];
            let width = plan.outputs.len();
            let mut vals = Vec::with_capacity(rows.len() * width);
            let mut row = vec![f64::NAN; m];
            let mut states: HashMap<u128, EntityState, shard::Prehashed> = HashMap::default();
            // The rows of a part are scattered over the arrays (every few rows, and unevenly):
            // the ones a few steps ahead are asked for early, so the misses overlap.
            const AHEAD: usize = 16;
            for (j, &i) in rows.iter().enumerate() {
                if let Some(&a) = rows.get(j + AHEAD) {
                    let a = a as usize;
                    crate::prefetch(points.as_ptr().wrapping_add(a).cast());
                    crate::prefetch(fields.as_ptr().wrapping_add(a * nf).cast());
                    crate::prefetch(keys.as_ptr().wrapping_add(a * np + pi).cast());
                }
                let i = i as usize;
                let c = &points[i];
                let mut p = Point {
                    ts: c.ts,
                    id: c.id,
                    amount: c.amount,
                    location: c.location,
                    fraud_known_at: c.fraud_known_at,
                    fields: [None; 11],
                };
                for (f, v) in extractor.fields.iter().zip(&fields[i * nf..i * nf + nf]) {
                    p.fields[f.index()] = *v;
                }
                match keys[i * np + pi] {
                    0 => extractor.plan_into(plan, &p, None, &mut row),
                    k => {
                        let s = states.entry(k).or_default();
                        extractor.plan_step(plan, &p, s, &mut row);
                    }
                }
                vals.extend(plan.outputs.iter().map(|&o| row[o]));
            }
            (pi, rows, vals)
        })
        .collect();
    // Where each row's values are, per plan: (result, position); then every row gathers
    // its values, rows in parallel.
    let locs: Vec<Vec<(u32, u32)>> = (0..np)
        .into_par_iter()
        .map(|pi| {
            let mut loc = vec![(u32::MAX, 0u32); n];
            for (r, (p, rows, _)) in results.iter().enumerate() {
                if *p == pi {
                    for (k, &i) in rows.iter().enumerate() {
                        loc[i as usize] = (r as u32, k as u32);
                    }
                }
            }
            loc
        })
        .collect();
    out.par_chunks_mut(m).enumerate().for_each(|(i, row)| {
        for (pi, loc) in locs.iter().enumerate() {
            let (r, k) = loc[i];
            if let Some((_, _, vals)) = results.get(r as usize) {
                let outputs = &extractor.plans[pi].outputs;
                let w = outputs.len();
                for (&o, &x) in outputs.iter().zip(&vals[k as usize * w..][..w]) {
                    row[o] = x;
                }
            }
        }
    });
    out
}

/// What replay keeps of a transaction besides its keys and fields.
struct Compact {
    ts: i64,
    amount: f64,
    location: Option<(f64, f64)>,
    fraud_known_at: Option<i64>,
    id: u64,
}

/// When a history's transaction became known as fraud: `fraud_reported_at`, or its own time.
fn fraud_known_at(tx: &Transaction) -> Option<i64> {
    match tx.is_fraud {
        Some(true) => Some(tx.fraud_reported_at_us.unwrap_or(tx.timestamp_us)),
        _ => None,
    }
}

/// Writes one window level's features from its answer (and, for label-aware rates, the
/// number of its transactions known as fraud).
fn level_into(out: &LevelOut, p: &Point, a: &Answer, frauds: usize, row: &mut [f64]) {
    let mut put = |i: usize, v: f64| {
        if let Some(x) = row.get_mut(i) {
            *x = v;
        }
    };
    let n = a.agg.n;
    for &(agg, i) in &out.aggs {
        put(
            i,
            match agg {
                Aggregation::Count => n as f64,
                Aggregation::Sum => a.agg.sum(),
                Aggregation::Mean => a.agg.mean(),
                Aggregation::Max => a.agg.max,
                Aggregation::Std => a.agg.std(),
                Aggregation::AmountRatio => p.amount / a.agg.mean(),
            },
        );
    }
    for &(slot, i) in &out.distinct {
        put(i, a.distinct[slot] as f64);
    }
    if let Some(first) = out.labels {
        put(first, n as f64);
        put(first + 1, frauds as f64);
        put(
            first + 2,
            if n == 0 {
                0.0
            } else {
                frauds as f64 / n as f64
            },
        );
    }
}

/// Great-circle distance in kilometres (haversine, mean Earth radius 6371 km).
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().min(1.0).asin()
}

/// Number of different values: a pass over a small stack buffer while they are few (the usual
/// case), a sort past that.
fn count_distinct(values: impl Iterator<Item = u64>) -> usize {
    const SMALL: usize = 32;
    let mut small = [0u64; SMALL];
    let mut n = 0;
    let mut rest: Vec<u64> = Vec::new();
    for v in values {
        if !rest.is_empty() {
            rest.push(v);
            continue;
        }
        if small[..n].contains(&v) {
            continue;
        }
        if n < SMALL {
            small[n] = v;
            n += 1;
        } else {
            rest.extend_from_slice(&small);
            rest.push(v);
        }
    }
    if rest.is_empty() {
        return n;
    }
    rest.sort_unstable();
    rest.dedup();
    rest.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::Tokenizer;
    use crate::transaction::{Decimal, RawTransaction};

    fn tx(id: usize, ts: i64, amount: &str, card: &str, customer: &str) -> Transaction {
        let raw = RawTransaction {
            transaction_id: Some(format!("t{id}")),
            timestamp: Some(
                time::OffsetDateTime::from_unix_timestamp(ts)
                    .unwrap()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
            ),
            amount: Some(Decimal::Text(amount.into())),
            currency: Some("EUR".into()),
            card_number: Some(card.to_string().into()),
            customer_id: Some(customer.into()),
            ..Default::default()
        };
        Transaction::from_raw(raw, &Tokenizer::new(&[3u8; 32]).unwrap()).unwrap()
    }

    #[test]
    fn default_spec_has_the_contract_names() {
        let e = Extractor::new(FeatureSpec::default_spec()).unwrap();
        for n in [
            "card_txn_count_1h",
            "card_txn_count_24h",
            "card_amount_sum_24h",
            "card_seconds_since_last",
        ] {
            assert!(
                e.names().iter().any(|x| x == n),
                "{n} missing from {:?}",
                e.names()
            );
        }
        assert_eq!(
            FeatureSpec::from_toml(DEFAULT_SPEC).unwrap(),
            FeatureSpec::default_spec()
        );
    }

    #[test]
    fn windows_are_half_open_and_exclude_the_current_transaction() {
        let e = Extractor::new(
            FeatureSpec::from_toml(
                "since_last = [\"card\"]\n[[windows]]\nentity = \"card\"\nwindows = [\"1h\"]\naggregations = [\"count\", \"sum\", \"max\"]\n",
            )
            .unwrap(),
        )
        .unwrap();
        let a = "4111111111111111";
        let t0 = 1_700_000_000;
        let h = vec![
            tx(0, t0, "10", a, "c"),
            tx(1, t0 + 3600, "20", a, "c"), // exactly 1h later: t0 = t - 1h is inside [t-1h, t)
            tx(2, t0 + 3600, "5", a, "c"),  // same time as 1: 1 does not count (not before t)
            tx(3, t0 + 3601, "1", a, "c"),  // t0 is now out; 1 and 2 are in
        ];
        let f = replay(&e, &h);
        // names: card_seconds_since_last, count, sum, max
        assert!(f[0][0].is_nan() && f[0][1] == 0.0 && f[0][3].is_nan());
        assert_eq!(f[1], vec![3600.0, 1.0, 10.0, 10.0]);
        assert_eq!(f[2], vec![3600.0, 1.0, 10.0, 10.0]);
        assert_eq!(f[3], vec![1.0, 2.0, 25.0, 20.0]);
    }

    #[test]
    fn time_since_last_survives_pruning_with_ties() {
        let e = Extractor::new(
            FeatureSpec::from_toml(
                "since_last = [\"card\"]\n[[windows]]\nentity = \"card\"\nwindows = [\"1h\"]\naggregations = [\"count\"]\n",
            )
            .unwrap(),
        )
        .unwrap();
        let a = "4111111111111111";
        let t0 = 1_700_000_000;
        let h = vec![
            tx(0, t0, "1", a, "c"),
            tx(1, t0 + 6139, "1", a, "c"),
            tx(2, t0 + 6139, "1", a, "c"),
        ];
        let f = replay(&e, &h);
        assert_eq!(f[1][0], 6139.0);
        assert_eq!(
            f[2][0], 6139.0,
            "the tie still sees the transaction before it"
        );
    }

    #[test]
    fn distinct_counts_small_and_large() {
        assert_eq!(count_distinct([3u64, 1, 3, 2, 1].into_iter()), 3);
        assert_eq!(count_distinct(std::iter::empty()), 0);
        let many = (0..200u64).map(|i| i % 70);
        assert_eq!(count_distinct(many), 70);
    }

    #[test]
    fn bad_specs_are_named() {
        assert!(parse_window("5x").is_err());
        assert_eq!(parse_window("7d").unwrap(), 7 * 86_400);
        let e = FeatureSpec::from_toml("stateless = [\"log_amount\"]\nunknown = 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown"), "{e}");
        let dup = "[[windows]]\nentity = \"card\"\nwindows = [\"1h\", \"60m\", \"1h\"]\naggregations = [\"count\"]\n";
        let e = Extractor::new(FeatureSpec::from_toml(dup).unwrap()).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }
}
