//! Features: a declarative spec (TOML), the per-entity state it needs, and one function that
//! computes a transaction's features from that state, used both online (one transaction, then
//! update) and offline ([`replay`]: a history in time order), so both give identical results.
//!
//! Windows are exact: a past transaction counts iff its timestamp is in `[t - w, t)`, `t`
//! being the current one's; the current transaction never counts. This module holds the
//! in-memory state only; durability, Redis sharing and label-aware features are built on it.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::transaction::{Channel, Transaction};

/// The spec that ships with the engine.
pub const DEFAULT_SPEC: &str = include_str!("default_spec.toml");

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not valid TOML or not the expected shape.
    #[error("invalid feature spec: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("invalid feature spec: {0}")]
    Invalid(String),
}

/// Whose history a window aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// The card token.
    Card,
    /// The customer id.
    Customer,
    /// The merchant id.
    Merchant,
    /// The terminal id.
    Terminal,
    /// The device id.
    Device,
    /// The IP address.
    Ip,
    /// The email address.
    Email,
}

impl Entity {
    fn name(self) -> &'static str {
        match self {
            Entity::Card => "card",
            Entity::Customer => "customer",
            Entity::Merchant => "merchant",
            Entity::Terminal => "terminal",
            Entity::Device => "device",
            Entity::Ip => "ip",
            Entity::Email => "email",
        }
    }

    /// The entity's key in a transaction, if the transaction has one.
    pub fn key(self, tx: &Transaction) -> Option<Cow<'_, str>> {
        match self {
            Entity::Card => Some(Cow::Borrowed(tx.card.token.as_str())),
            Entity::Customer => tx.customer_id.as_deref().map(Cow::Borrowed),
            Entity::Merchant => tx.merchant_id.as_deref().map(Cow::Borrowed),
            Entity::Terminal => tx.terminal_id.as_deref().map(Cow::Borrowed),
            Entity::Device => tx.device_id.as_deref().map(Cow::Borrowed),
            Entity::Ip => tx.ip.map(|ip| Cow::Owned(ip.to_string())),
            Entity::Email => tx.email.as_deref().map(Cow::Borrowed),
        }
    }

    const ALL: [Entity; 7] = [
        Entity::Card,
        Entity::Customer,
        Entity::Merchant,
        Entity::Terminal,
        Entity::Device,
        Entity::Ip,
        Entity::Email,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// An aggregation over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of past transactions (`txn_count`).
    Count,
    /// Sum of their amounts (`amount_sum`).
    Sum,
    /// Mean amount (`amount_mean`; NaN when none).
    Mean,
    /// Largest amount (`amount_max`; NaN when none).
    Max,
    /// Population standard deviation of amounts (`amount_std`; NaN when none).
    Std,
    /// This amount divided by the window's mean (`amount_ratio`; NaN when none).
    AmountRatio,
}

impl Aggregation {
    fn name(self) -> &'static str {
        match self {
            Aggregation::Count => "txn_count",
            Aggregation::Sum => "amount_sum",
            Aggregation::Mean => "amount_mean",
            Aggregation::Max => "amount_max",
            Aggregation::Std => "amount_std",
            Aggregation::AmountRatio => "amount_ratio",
        }
    }
}

/// A feature computed from the transaction alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stateless {
    /// `ln(1 + amount)`.
    LogAmount,
    /// Hour of day (UTC), 0-23.
    Hour,
    /// Day of week (UTC), Monday = 0.
    Weekday,
    /// 1 between 00:00 and 06:00 UTC.
    Night,
    /// 1 when card and merchant countries differ (NaN when either is unknown).
    CrossBorder,
    /// Channel code (card_present 0, contactless 1, ecommerce 2, moto 3, atm 4, recurring 5).
    Channel,
    /// Merchant category code as a number.
    Mcc,
}

impl Stateless {
    fn name(self) -> &'static str {
        match self {
            Stateless::LogAmount => "log_amount",
            Stateless::Hour => "hour",
            Stateless::Weekday => "weekday",
            Stateless::Night => "night",
            Stateless::CrossBorder => "cross_border",
            Stateless::Channel => "channel",
            Stateless::Mcc => "mcc",
        }
    }

    fn value(self, tx: &Transaction) -> f64 {
        let secs = tx.timestamp_us.div_euclid(1_000_000);
        match self {
            Stateless::LogAmount => tx.amount.as_f64().ln_1p(),
            Stateless::Hour => (secs.rem_euclid(86_400) / 3600) as f64,
            // 1970-01-01 was a Thursday (3 with Monday = 0).
            Stateless::Weekday => ((secs.div_euclid(86_400) + 3).rem_euclid(7)) as f64,
            Stateless::Night => f64::from(u8::from(secs.rem_euclid(86_400) < 6 * 3600)),
            Stateless::CrossBorder => match (&tx.card_country, &tx.merchant_country) {
                (Some(a), Some(b)) => f64::from(u8::from(a != b)),
                _ => f64::NAN,
            },
            Stateless::Channel => tx.channel.map_or(f64::NAN, |c| match c {
                Channel::CardPresent => 0.0,
                Channel::Contactless => 1.0,
                Channel::Ecommerce => 2.0,
                Channel::Moto => 3.0,
                Channel::Atm => 4.0,
                Channel::Recurring => 5.0,
            }),
            Stateless::Mcc => tx.mcc.map_or(f64::NAN, f64::from),
        }
    }
}

/// Windows of one entity, as written in the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowGroup {
    /// Whose history.
    pub entity: Entity,
    /// Window lengths: `10m`, `1h`, `24h`, `7d`, `30s`.
    pub windows: Vec<String>,
    /// Aggregations computed over each window.
    pub aggregations: Vec<Aggregation>,
}

/// The declarative feature spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Stateless features, in order.
    #[serde(default)]
    pub stateless: Vec<Stateless>,
    /// Entities whose time since their previous transaction is a feature.
    #[serde(default)]
    pub since_last: Vec<Entity>,
    /// Windowed aggregations.
    #[serde(default)]
    pub windows: Vec<WindowGroup>,
    /// First-seen flags: `<entity>_new_<field>` is 1 when no earlier transaction of the
    /// entity had this value of the field (a new device for this card), 0 when one had, NaN
    /// when the transaction has no value.
    #[serde(default)]
    pub first_seen: Vec<FirstSeen>,
    /// Distinct counts: `<entity>_distinct_<field>_<window>` is the number of different values
    /// of `field` among the entity's past transactions in the window.
    #[serde(default)]
    pub distinct: Vec<Distinct>,
    /// Entities whose geo-velocity is a feature: `<entity>_geo_velocity_kmh`, the great-circle
    /// distance from the entity's previous located transaction divided by the time between
    /// them (at least one second); NaN without two located transactions.
    #[serde(default)]
    pub geo_velocity: Vec<Entity>,
}

/// Distinct values of a field per entity and window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distinct {
    /// Whose history.
    pub entity: Entity,
    /// Which value.
    pub field: Field,
    /// Window lengths.
    pub windows: Vec<String>,
}

/// Fields a distinct count can be kept for, per entity.
pub const MAX_DISTINCT_FIELDS: usize = 4;

/// A first-seen flag: whether `field`'s value is new for `entity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstSeen {
    /// Whose history.
    pub entity: Entity,
    /// Which value.
    pub field: Field,
}

/// A transaction field whose values can be remembered per entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The card (its token).
    Card,
    /// `customer_id`.
    CustomerId,
    /// `merchant_id`.
    MerchantId,
    /// `terminal_id`.
    TerminalId,
    /// `device_id`.
    DeviceId,
    /// `ip`.
    Ip,
    /// `email`.
    Email,
    /// `mcc`.
    Mcc,
    /// `card_country`.
    CardCountry,
    /// `merchant_country`.
    MerchantCountry,
    /// `ip_country`.
    IpCountry,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Card => "card",
            Field::CustomerId => "customer_id",
            Field::MerchantId => "merchant_id",
            Field::TerminalId => "terminal_id",
            Field::DeviceId => "device_id",
            Field::Ip => "ip",
            Field::Email => "email",
            Field::Mcc => "mcc",
            Field::CardCountry => "card_country",
            Field::MerchantCountry => "merchant_country",
            Field::IpCountry => "ip_country",
        }
    }

    /// A stable 64-bit fingerprint of the field's value (FNV-1a), or `None` when absent.
    fn fingerprint(self, tx: &Transaction) -> Option<u64> {
        let fnv = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        };
        let s = |v: &Option<String>| v.as_deref().map(|v| fnv(v.as_bytes()));
        match self {
            Field::Card => Some(fnv(tx.card.token.as_bytes())),
            Field::CustomerId => s(&tx.customer_id),
            Field::MerchantId => s(&tx.merchant_id),
            Field::TerminalId => s(&tx.terminal_id),
            Field::DeviceId => s(&tx.device_id),
            Field::Ip => tx.ip.map(|ip| fnv(ip.to_string().as_bytes())),
            Field::Email => s(&tx.email),
            Field::Mcc => tx.mcc.map(|m| fnv(&m.to_le_bytes())),
            Field::CardCountry => s(&tx.card_country),
            Field::MerchantCountry => s(&tx.merchant_country),
            Field::IpCountry => s(&tx.ip_country),
        }
    }
}

/// Parses a window length (`30s`, `10m`, `1h`, `7d`) into seconds.
pub fn parse_window(s: &str) -> Result<i64, SpecError> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| {
        SpecError::Invalid(format!("window `{s}`: expected a number and s, m, h or d"))
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(SpecError::Invalid(format!(
                "window `{s}`: unit must be s, m, h or d"
            )))
        }
    };
    if !(1..=400 * 86_400).contains(&secs) {
        return Err(SpecError::Invalid(format!(
            "window `{s}` must be between 1s and 400d"
        )));
    }
    Ok(secs)
}

#[derive(Debug, Clone)]
struct CompiledWindow {
    entity: Entity,
    window_us: i64,
    aggregations: Vec<Aggregation>,
}

/// A spec ready to compute features.
#[derive(Debug, Clone)]
pub struct Extractor {
    spec: FeatureSpec,
    names: Vec<String>,
    windows: Vec<CompiledWindow>,
    /// (entity, field slot in the event, window) of each distinct count, in output order.
    distinct: Vec<(Entity, usize, i64)>,
    /// Per entity kind, the fields whose values events keep (by slot).
    slots: [Vec<Field>; 7],
    /// Longest window per entity (how long its events are kept); entities with state only.
    horizon_us: Vec<(Entity, i64)>,
}

impl FeatureSpec {
    /// Parses a TOML spec.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))
    }

    /// The spec that ships with the engine.
    pub fn default_spec() -> Self {
        // The embedded spec is tested to parse.
        Self::from_toml(DEFAULT_SPEC).unwrap_or(FeatureSpec {
            stateless: Vec::new(),
            since_last: Vec::new(),
            windows: Vec::new(),
            first_seen: Vec::new(),
            distinct: Vec::new(),
            geo_velocity: Vec::new(),
        })
    }
}

impl Extractor {
    /// Checks a spec and fixes its feature order.
    pub fn new(spec: FeatureSpec) -> Result<Self, SpecError> {
        let mut names: Vec<String> = spec
            .stateless
            .iter()
            .map(|s| s.name().to_string())
            .collect();
        let mut windows = Vec::new();
        let mut horizon: HashMap<Entity, i64> = HashMap::new();
        for e in &spec.since_last {
            names.push(format!("{}_seconds_since_last", e.name()));
            horizon.entry(*e).or_insert(0);
        }
        for f in &spec.first_seen {
            names.push(format!("{}_new_{}", f.entity.name(), f.field.name()));
            horizon.entry(f.entity).or_insert(0);
        }
        for g in &spec.windows {
            if g.aggregations.is_empty() {
                return Err(SpecError::Invalid(format!(
                    "{} windows list no aggregations",
                    g.entity.name()
                )));
            }
            for w in &g.windows {
                let secs = parse_window(w)?;
                for a in &g.aggregations {
                    names.push(format!("{}_{}_{}", g.entity.name(), a.name(), w.trim()));
                }
                let h = horizon.entry(g.entity).or_insert(0);
                *h = (*h).max(secs * 1_000_000);
                windows.push(CompiledWindow {
                    entity: g.entity,
                    window_us: secs * 1_000_000,
                    aggregations: g.aggregations.clone(),
                });
            }
        }
        let mut slots: [Vec<Field>; 7] = Default::default();
        let mut distinct = Vec::new();
        for d in &spec.distinct {
            let fields = &mut slots[d.entity.index()];
            let slot = match fields.iter().position(|f| *f == d.field) {
                Some(i) => i,
                None => {
                    if fields.len() == MAX_DISTINCT_FIELDS {
                        return Err(SpecError::Invalid(format!(
                            "{} has distinct counts of more than {MAX_DISTINCT_FIELDS} fields",
                            d.entity.name()
                        )));
                    }
                    fields.push(d.field);
                    fields.len() - 1
                }
            };
            for w in &d.windows {
                let secs = parse_window(w)?;
                names.push(format!(
                    "{}_distinct_{}_{}",
                    d.entity.name(),
                    d.field.name(),
                    w.trim()
                ));
                let h = horizon.entry(d.entity).or_insert(0);
                *h = (*h).max(secs * 1_000_000);
                distinct.push((d.entity, slot, secs * 1_000_000));
            }
        }
        for e in &spec.geo_velocity {
            names.push(format!("{}_geo_velocity_kmh", e.name()));
            horizon.entry(*e).or_insert(0);
        }
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if !seen.insert(n) {
                return Err(SpecError::Invalid(format!(
                    "feature `{n}` is defined twice"
                )));
            }
        }
        let horizon_us = Entity::ALL
            .iter()
            .filter_map(|e| horizon.get(e).map(|h| (*e, *h)))
            .collect();
        Ok(Extractor {
            spec,
            names,
            windows,
            distinct,
            slots,
            horizon_us,
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

    /// The features of `tx` given the state before it (the state is not changed).
    pub fn compute(&self, tx: &Transaction, state: &MemoryState) -> Vec<f64> {
        // One lookup per entity kind, shared by all its windows.
        let mut found: [Option<&EntityState>; 7] = [None; 7];
        for &(e, _) in &self.horizon_us {
            found[e.index()] = e.key(tx).and_then(|k| state.get(e, &k));
        }
        self.compute_from(tx, &found)
    }

    /// Computes the features of `tx` and records it, with one state lookup per entity kind:
    /// the same result as [`compute`](Self::compute) then [`update`](Self::update).
    pub fn step(&self, tx: &Transaction, state: &mut MemoryState) -> Vec<f64> {
        let mut slots: [Option<&mut EntityState>; 7] = Default::default();
        let mut maps = state.maps.iter_mut().enumerate();
        let mut horizon = [None; 7];
        for &(e, h) in &self.horizon_us {
            horizon[e.index()] = Some(h);
        }
        for (i, map) in &mut maps {
            let (Some(_), Some(e)) = (horizon[i], Entity::ALL.get(i)) else {
                continue;
            };
            if let Some(key) = e.key(tx) {
                // One hash, and a key allocated only for an entity seen for the first time.
                slots[i] = Some(map.entry_ref(key.as_ref()).or_default());
            }
        }
        let features = {
            let view: [Option<&EntityState>; 7] = std::array::from_fn(|i| slots[i].as_deref());
            self.compute_from(tx, &view)
        };
        for (i, slot) in slots.iter_mut().enumerate() {
            if let (Some(s), Some(h)) = (slot.as_deref_mut(), horizon[i]) {
                self.record(s, Entity::ALL[i], tx, h);
            }
        }
        features
    }

    /// Adds `tx` to the state of one of its entities.
    fn record(&self, s: &mut EntityState, entity: Entity, tx: &Transaction, horizon: i64) {
        let t = tx.timestamp_us;
        let mut values = [0u64; MAX_DISTINCT_FIELDS];
        for (v, f) in values.iter_mut().zip(&self.slots[entity.index()]) {
            // 0 marks a missing value; a real fingerprint of 0 becomes 1.
            *v = f.fingerprint(tx).map_or(0, |x| x.max(1));
        }
        s.insert(Event {
            ts: t,
            amount: tx.amount.as_f64(),
            values,
        });
        s.prune(t - horizon.max(1));
        if let Some((lat, lon)) = tx.location {
            s.locate(t, lat, lon);
        }
        for f in self.spec.first_seen.iter().filter(|f| f.entity == entity) {
            if let Some(v) = f.field.fingerprint(tx) {
                let first = s.seen.entry((f.field, v)).or_insert(t);
                *first = (*first).min(t);
            }
        }
    }

    fn compute_from(&self, tx: &Transaction, found: &[Option<&EntityState>; 7]) -> Vec<f64> {
        let t = tx.timestamp_us;
        let amount = tx.amount.as_f64();
        let mut out = Vec::with_capacity(self.names.len());
        let lookup = |e: Entity| -> Option<&EntityState> { found[e.index()] };
        for s in &self.spec.stateless {
            out.push(s.value(tx));
        }
        for e in &self.spec.since_last {
            let last = lookup(*e).and_then(|s| s.last_before(t));
            out.push(last.map_or(f64::NAN, |ts| (t - ts) as f64 / 1e6));
        }
        for f in &self.spec.first_seen {
            out.push(match f.field.fingerprint(tx) {
                None => f64::NAN,
                Some(v) => {
                    let before = lookup(f.entity)
                        .and_then(|s| s.seen.get(&(f.field, v)))
                        .is_some_and(|&first| first < t);
                    f64::from(u8::from(!before))
                }
            });
        }
        for w in &self.windows {
            let events = lookup(w.entity).map(|s| s.in_window(t - w.window_us, t));
            let (mut n, mut sum, mut max) = (0usize, 0.0f64, f64::NAN);
            if let Some(events) = events.clone() {
                for &Event { amount: a, .. } in events {
                    n += 1;
                    sum += a;
                    max = if max.is_nan() { a } else { max.max(a) };
                }
            }
            let mean = if n > 0 { sum / n as f64 } else { f64::NAN };
            // Squared deviations in a second pass: the one-pass E[x^2] - mean^2 loses all
            // precision when amounts are close (0.005 came out as 0.0049999987).
            let mut sq = 0.0f64;
            if w.aggregations.contains(&Aggregation::Std) {
                if let Some(events) = events {
                    for &Event { amount: a, .. } in events {
                        sq += (a - mean) * (a - mean);
                    }
                }
            }
            for a in &w.aggregations {
                out.push(match a {
                    Aggregation::Count => n as f64,
                    Aggregation::Sum => sum,
                    Aggregation::Mean => mean,
                    Aggregation::Max => max,
                    Aggregation::Std => {
                        if n > 0 {
                            (sq / n as f64).sqrt()
                        } else {
                            f64::NAN
                        }
                    }
                    Aggregation::AmountRatio => amount / mean,
                });
            }
        }
        for &(entity, slot, window_us) in &self.distinct {
            let values = lookup(entity).into_iter().flat_map(|s| {
                s.in_window(t - window_us, t)
                    .map(move |e| e.values[slot])
                    .filter(|&v| v != 0)
            });
            out.push(count_distinct(values) as f64);
        }
        for e in &self.spec.geo_velocity {
            let prev = lookup(*e).and_then(|s| s.located_before(t));
            out.push(match (prev, tx.location) {
                (Some((ts, lat, lon)), Some((lat2, lon2))) => {
                    let hours = ((t - ts) as f64 / 3.6e9).max(1.0 / 3600.0);
                    haversine_km(lat, lon, lat2, lon2) / hours
                }
                _ => f64::NAN,
            });
        }
        out
    }

    /// Records `tx` in the state (after its features were computed).
    pub fn update(&self, tx: &Transaction, state: &mut MemoryState) {
        for &(entity, horizon) in &self.horizon_us {
            if let Some(key) = entity.key(tx) {
                let s = state.maps[entity.index()]
                    .entry_ref(key.as_ref())
                    .or_default();
                self.record(s, entity, tx, horizon);
            }
        }
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

/// One past transaction of an entity.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Event {
    /// Microseconds since the epoch.
    ts: i64,
    /// Amount in major units.
    amount: f64,
    /// Fingerprints of the entity's distinct-count fields (0: missing).
    values: [u64; MAX_DISTINCT_FIELDS],
}

/// Past transactions of one entity (time, amount, remembered values), in time order, and
/// the first time each remembered field value was seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntityState {
    events: VecDeque<Event>,
    /// The latest located transactions (time, latitude, longitude): see `locate`.
    located: [Option<(i64, f64, f64)>; 2],
    seen: hashbrown::HashMap<(Field, u64), i64, ahash::RandomState>,
}

impl EntityState {
    fn insert(&mut self, event: Event) {
        // Late arrivals go to their place in time; equal times keep arrival order.
        let at = self.events.partition_point(|e| e.ts <= event.ts);
        self.events.insert(at, event);
    }

    /// Drops events older than `oldest` that no later question needs: the windows need the
    /// events from `oldest` on, and "time since last" for a transaction tied with the newest
    /// needs the latest event before the newest time, so that one is kept too.
    fn prune(&mut self, oldest: i64) {
        let Some(newest) = self.events.back().map(|e| e.ts) else {
            return;
        };
        while self
            .events
            .get(1)
            .is_some_and(|next| next.ts < oldest && next.ts < newest)
        {
            self.events.pop_front();
        }
    }

    /// Records a located transaction. `located[0]` is the last one recorded at the newest
    /// time, `located[1]` the last one recorded at the greatest earlier time.
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

    /// The previous located transaction for a transaction at `t`: the last one recorded at
    /// the greatest time before `t` (exact in time order, as replay runs).
    fn located_before(&self, t: i64) -> Option<(i64, f64, f64)> {
        self.located
            .iter()
            .flatten()
            .find(|(ts, ..)| *ts < t)
            .copied()
    }

    /// The latest timestamp before `t`.
    fn last_before(&self, t: i64) -> Option<i64> {
        let end = self.events.partition_point(|e| e.ts < t);
        end.checked_sub(1).map(|i| self.events[i].ts)
    }

    fn in_window(&self, from: i64, to: i64) -> impl Iterator<Item = &Event> + Clone {
        let start = self.events.partition_point(|e| e.ts < from);
        let end = self.events.partition_point(|e| e.ts < to);
        self.events.range(start..end)
    }
}

/// Entity state held in memory: one map per entity kind, looked up without allocating, with
/// aHash (fast, and keyed per process so outside ids cannot be chosen to collide).
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
/// one's features from the state before it, then the state is updated. Returns rows in the
/// input order.
pub fn replay(extractor: &Extractor, history: &[Transaction]) -> Vec<Vec<f64>> {
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| history[i].timestamp_us);
    let mut state = MemoryState::default();
    let mut out = vec![Vec::new(); history.len()];
    for i in order {
        out[i] = extractor.step(&history[i], &mut state);
    }
    out
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
            card_number: Some(card.into()),
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
