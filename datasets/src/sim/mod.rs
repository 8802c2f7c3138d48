//! The transaction simulator.
//!
//! Genuine behaviour follows the Fraud Detection Handbook simulator (Le Borgne et al., 2022),
//! written afresh: customers on a 100 x 100 grid with a mean amount uniform in 5..100 (spread
//! half of it) and a mean of 0..4 transactions a day; terminals on the same grid; each day a
//! customer makes a Poisson number of transactions at uniformly chosen terminals within radius
//! 5 of home, at a time of day drawn from N(12:00, 20,000 s). On top of it: a weekly rhythm
//! (more spending on Friday and Saturday, the weekly mean unchanged), channels (card present,
//! contactless, e-commerce with devices and IP addresses), merchant category codes, foreign
//! online shops, and genuine trips abroad (so that a foreign country alone is not fraud).
//!
//! Six fraud scenarios, each switchable ([`Scenarios`]):
//! 1. amount over a threshold (Handbook scenario 1);
//! 2. compromised terminal: every transaction on it for 28 days (Handbook scenario 2);
//! 3. compromised card: a third of its transactions over 14 days, amount x5 (Handbook 3);
//! 4. card testing: a burst of tiny online amounts, then a large one;
//! 5. account takeover: a new device from a far country, then high spending online;
//! 6. impossible travel: a cloned card used in a far city soon after a use at home.
//!
//! As in the Handbook, scenarios 2 and 3 relabel transactions that scenario 1 marked first, so
//! each transaction carries one scenario: the last that applied. Every fraud gets a
//! `fraud_reported_at`: its time plus a log-normal delay (median [`SimConfig::label_delay_days`]).
//!
//! Every random draw comes from a generator seeded by (seed, purpose, day, entity), so the output
//! depends only on the configuration, never on the number of threads.

mod world;

use std::io::Write;

use rand::Rng;
use rand_distr::{Distribution, LogNormal, Normal, Poisson};
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::Serialize;

pub use world::{City, Customer, Kind, Terminal, World, CITIES, HOME_COUNTRY};

/// A `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Option<time::Date> {
    time::Date::parse(
        s.trim(),
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()
}

/// Names of the scenarios, by number (0 is genuine).
pub const SCENARIO_NAMES: [&str; 7] = [
    "genuine",
    "amount_over_threshold",
    "compromised_terminal",
    "compromised_card",
    "card_testing",
    "account_takeover",
    "impossible_travel",
];

/// Columns of generated CSV files: the transaction JSON field names, then the labels.
pub const HEADER: &str = "transaction_id,timestamp,amount,currency,card_token,customer_id,\
merchant_id,mcc,terminal_id,channel,card_country,merchant_country,ip,ip_country,device_id,\
email,latitude,longitude,is_fraud,fraud_reported_at,fraud_scenario";

/// Why a configuration cannot be simulated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    /// A setting is out of range.
    #[error("{setting}: {reason}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An unknown scenario name.
    #[error("unknown fraud scenario `{0}` (known: amount_over_threshold, compromised_terminal, compromised_card, card_testing, account_takeover, impossible_travel)")]
    UnknownScenario(String),
}

/// Which fraud scenarios run, and how often. Rates are scaled by the population so that the
/// shares of fraud do not depend on its size: "per 5,000 customers" and "per 10,000 terminals"
/// are the Handbook's population.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenarios {
    /// Scenario 1: transactions above this amount are fraud (Handbook: 220).
    pub amount_threshold: Option<f64>,
    /// Scenario 2: terminals compromised per day per 10,000 terminals (Handbook: 2).
    pub compromised_terminals: Option<f64>,
    /// Scenario 3: cards compromised per day per 5,000 customers (Handbook: 3).
    pub compromised_cards: Option<f64>,
    /// Scenario 4: card-testing attacks per day per 5,000 customers.
    pub card_testing: Option<f64>,
    /// Scenario 5: account takeovers per day per 5,000 customers.
    pub account_takeover: Option<f64>,
    /// Scenario 6: cloned cards used far away per day per 5,000 customers.
    pub impossible_travel: Option<f64>,
}

impl Default for Scenarios {
    fn default() -> Self {
        Scenarios {
            amount_threshold: Some(220.0),
            compromised_terminals: Some(2.0),
            compromised_cards: Some(3.0),
            card_testing: Some(2.0),
            account_takeover: Some(2.0),
            impossible_travel: Some(2.0),
        }
    }
}

impl Scenarios {
    /// No fraud at all.
    pub fn none() -> Self {
        Scenarios {
            amount_threshold: None,
            compromised_terminals: None,
            compromised_cards: None,
            card_testing: None,
            account_takeover: None,
            impossible_travel: None,
        }
    }

    /// Only the named scenarios (names of [`SCENARIO_NAMES`]), at their default rates.
    pub fn only<S: AsRef<str>>(names: &[S]) -> Result<Self, SimError> {
        let mut out = Scenarios::none();
        for n in names {
            out.set(n.as_ref(), true)?;
        }
        Ok(out)
    }

    /// Switches one scenario on (at its default rate) or off.
    pub fn set(&mut self, name: &str, on: bool) -> Result<(), SimError> {
        let d = Scenarios::default();
        let (slot, default) = match name.trim() {
            "amount_over_threshold" => (&mut self.amount_threshold, d.amount_threshold),
            "compromised_terminal" => (&mut self.compromised_terminals, d.compromised_terminals),
            "compromised_card" => (&mut self.compromised_cards, d.compromised_cards),
            "card_testing" => (&mut self.card_testing, d.card_testing),
            "account_takeover" => (&mut self.account_takeover, d.account_takeover),
            "impossible_travel" => (&mut self.impossible_travel, d.impossible_travel),
            other => return Err(SimError::UnknownScenario(other.to_string())),
        };
        *slot = if on { default } else { None };
        Ok(())
    }
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimConfig {
    /// Number of customers (one card each). Handbook: 5,000.
    pub customers: u32,
    /// Number of home terminals. Handbook: 10,000 (twice the customers).
    pub terminals: u32,
    /// Number of days.
    pub days: u32,
    /// First day (`YYYY-MM-DD`, UTC). Handbook: 2018-04-01.
    #[serde(serialize_with = "date_text")]
    pub start: time::Date,
    /// Seed of every random draw.
    pub seed: u64,
    /// Radius of the terminals a customer uses, in grid units (Handbook: 5).
    pub radius: f64,
    /// Share of home terminals that are online shops.
    pub ecommerce_share: f64,
    /// Share of online shops abroad.
    pub foreign_shop_share: f64,
    /// Trips abroad starting per day per 5,000 customers.
    pub trips: f64,
    /// Median delay before a fraud is known, in days.
    pub label_delay_days: f64,
    /// Currency of every amount.
    pub currency: &'static str,
    /// Fraud scenarios.
    pub scenarios: Scenarios,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            customers: 5_000,
            terminals: 10_000,
            days: 183,
            start: time::macros::date!(2018 - 04 - 01),
            seed: 0,
            radius: 5.0,
            ecommerce_share: 0.25,
            foreign_shop_share: 0.3,
            trips: 10.0,
            label_delay_days: 3.0,
            currency: "EUR",
            scenarios: Scenarios::default(),
        }
    }
}

impl SimConfig {
    /// The Handbook's population for `customers` customers (twice as many terminals).
    pub fn with_customers(customers: u32, days: u32, seed: u64) -> Self {
        SimConfig {
            customers,
            terminals: customers.saturating_mul(2).max(1),
            days,
            seed,
            ..SimConfig::default()
        }
    }

    fn check(&self) -> Result<(), SimError> {
        let bad = |setting, reason: &str| {
            Err(SimError::Setting {
                setting,
                reason: reason.to_string(),
            })
        };
        if self.customers == 0 || self.customers > 50_000_000 {
            return bad("customers", "must be between 1 and 50,000,000");
        }
        if self.terminals == 0 || self.terminals > 100_000_000 {
            return bad("terminals", "must be between 1 and 100,000,000");
        }
        if self.days == 0 || self.days > 3_660 {
            return bad("days", "must be between 1 and 3,660");
        }
        if !(self.radius > 0.0 && self.radius <= world::GRID) {
            return bad("radius", "must be in (0, 100]");
        }
        for (name, v) in [
            ("ecommerce_share", self.ecommerce_share),
            ("foreign_shop_share", self.foreign_shop_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(name, "must be between 0 and 1");
            }
        }
        if !(self.label_delay_days > 0.0 && self.label_delay_days < 365.0) {
            return bad("label_delay_days", "must be in (0, 365)");
        }
        let s = &self.scenarios;
        for (name, v) in [
            ("trips", Some(self.trips)),
            ("compromised_terminals", s.compromised_terminals),
            ("compromised_cards", s.compromised_cards),
            ("card_testing", s.card_testing),
            ("account_takeover", s.account_takeover),
            ("impossible_travel", s.impossible_travel),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    return bad(name, "rate must be a finite number >= 0");
                }
            }
        }
        if let Some(t) = s.amount_threshold {
            if !(t.is_finite() && t > 0.0) {
                return bad("amount_threshold", "must be a positive amount");
            }
        }
        Ok(())
    }
}

fn date_text<S: serde::Serializer>(d: &time::Date, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!(
        "{:04}-{:02}-{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    ))
}

/// Counts of one generated data set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Transactions written.
    pub transactions: u64,
    /// Fraudulent transactions.
    pub frauds: u64,
    /// Transactions per scenario (index 0: genuine), as in [`SCENARIO_NAMES`].
    pub by_scenario: [u64; 7],
    /// Sum of the amounts per scenario (major units).
    pub amount_by_scenario: [f64; 7],
    /// Genuine transactions made abroad (trips and foreign online shops).
    pub genuine_abroad: u64,
    /// Days simulated.
    pub days: u32,
    /// Customers with no terminal within the radius (they never transact).
    pub idle_customers: u32,
}

impl Summary {
    /// Fraud share of all transactions.
    pub fn fraud_rate(&self) -> f64 {
        self.frauds as f64 / self.transactions.max(1) as f64
    }

    /// A table of the scenarios: name, transactions, share of all transactions.
    pub fn table(&self) -> String {
        let mut s = format!("{:<24} {:>12} {:>9}\n", "scenario", "transactions", "share");
        for (i, name) in SCENARIO_NAMES.iter().enumerate() {
            s.push_str(&format!(
                "{:<24} {:>12} {:>8.4}%\n",
                name,
                self.by_scenario[i],
                100.0 * self.by_scenario[i] as f64 / self.transactions.max(1) as f64
            ));
        }
        s.push_str(&format!(
            "{:<24} {:>12} {:>8.4}%\n",
            "all fraud",
            self.frauds,
            100.0 * self.fraud_rate()
        ));
        s
    }
}

/// Purposes of the random streams: each has its own generator per (day, entity).
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
enum Stream {
    Terminals = 1,
    Customers = 2,
    Day = 3,
    Trips = 4,
    CompromisedTerminals = 5,
    CompromisedCards = 6,
    CardFraud = 7,
    CardTesting = 8,
    Takeover = 9,
    Travel = 10,
    Delay = 11,
}

/// SplitMix64 finaliser of `a` and `b`.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn rng_for(seed: u64, stream: Stream, day: u32, entity: u32) -> Xoshiro256PlusPlus {
    let s = mix(
        mix(mix(seed, stream as u64), u64::from(day)),
        u64::from(entity),
    );
    Xoshiro256PlusPlus::seed_from_u64(s)
}

/// `rate` scaled to the population, rounded at random (the mean is kept).
fn count<R: Rng>(rng: &mut R, rate: f64, population: u32, per: f64) -> u32 {
    let x = rate * f64::from(population) / per;
    let whole = x.floor();
    whole as u32 + u32::from(rng.random::<f64>() < x - whole)
}

/// `k` distinct values of `0..n` (fewer when `n < k`).
fn distinct<R: Rng>(rng: &mut R, n: u32, k: u32) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(k as usize);
    while (out.len() as u32) < k.min(n) {
        let v = rng.random_range(0..n);
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Weekly rhythm, Monday first: the mean over a week is 1.
const WEEKDAY_FACTOR: [f64; 7] = [0.92, 0.95, 0.97, 1.0, 1.1, 1.12, 0.94];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    CardPresent,
    Contactless,
    Ecommerce,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Channel::CardPresent => "card_present",
            Channel::Contactless => "contactless",
            Channel::Ecommerce => "ecommerce",
        }
    }
}

/// Who holds the device or IP of an online transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actor {
    /// Card present: no device, no IP.
    None,
    /// The customer's own (device 0 or 1), from home or from a trip city.
    Own { device: u8, city: Option<u8> },
    /// A fraudster (numbered per data set day), from a far city.
    Fraudster { id: u32, city: u8 },
}

/// One simulated transaction, before it is numbered and written.
#[derive(Debug, Clone, Copy)]
struct Tx {
    /// Seconds within the day.
    secs: u32,
    customer: u32,
    terminal: u32,
    cents: i64,
    channel: Channel,
    actor: Actor,
    scenario: u8,
    /// Order of creation for the customer that day (ties of time are broken by it).
    seq: u32,
}

/// Where a customer is on a given day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whereabouts {
    Flying,
    Abroad(u8),
}

/// A trip abroad: (customer, city, first day abroad, last day abroad).
type Trip = (u32, u8, u32, u32);

/// Scenario state carried from day to day.
#[derive(Default)]
struct Ongoing {
    /// Compromised terminals with their last day.
    terminals: Vec<(u32, u32)>,
    /// Compromised cards with their last day.
    cards: Vec<(u32, u32)>,
    trips: Vec<Trip>,
    fraudsters: u32,
}

/// The simulator: a world and a configuration.
#[derive(Debug, Clone)]
pub struct Simulator {
    cfg: SimConfig,
    world: World,
}

impl Simulator {
    /// Builds the world of `cfg` after checking it.
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        cfg.check()?;
        let world = World::new(&cfg);
        Ok(Simulator { cfg, world })
    }

    /// The customers and terminals.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Generates every day and writes the CSV (with [`HEADER`]) to `out`.
    pub fn write_csv<W: Write>(&self, out: W) -> std::io::Result<Summary> {
        let mut out = std::io::BufWriter::with_capacity(1 << 22, out);
        out.write_all(HEADER.as_bytes())?;
        out.write_all(b"\n")?;
        let mut summary = Summary {
            idle_customers: self
                .world
                .customers
                .iter()
                .filter(|c| c.terminals.is_empty())
                .count() as u32,
            days: self.cfg.days,
            ..Summary::default()
        };
        let mut ongoing = Ongoing::default();
        let mut next_id = 0u64;
        for day in 0..self.cfg.days {
            let txs = self.day(day, &mut ongoing);
            let base = self.day_start(day);
            let chunks: Vec<(Vec<u8>, Summary)> = txs
                .par_chunks(4096)
                .enumerate()
                .map(|(k, chunk)| {
                    let mut buf = Vec::with_capacity(chunk.len() * 220);
                    let mut s = Summary::default();
                    for (i, tx) in chunk.iter().enumerate() {
                        let id = next_id + (k * 4096 + i) as u64;
                        self.format(&mut buf, id, base, day, tx, &mut s);
                    }
                    (buf, s)
                })
                .collect();
            for (buf, s) in chunks {
                out.write_all(&buf)?;
                summary.transactions += s.transactions;
                summary.frauds += s.frauds;
                summary.genuine_abroad += s.genuine_abroad;
                for i in 0..7 {
                    summary.by_scenario[i] += s.by_scenario[i];
                    summary.amount_by_scenario[i] += s.amount_by_scenario[i];
                }
            }
            next_id += txs.len() as u64;
        }
        out.flush()?;
        Ok(summary)
    }

    /// Unix time of the start of `day`.
    fn day_start(&self, day: u32) -> i64 {
        let midnight = self.cfg.start.midnight().assume_utc().unix_timestamp();
        midnight + i64::from(day) * 86_400
    }

    /// Where each travelling customer is on `day`; new trips start.
    fn whereabouts(&self, day: u32, ongoing: &mut Ongoing) -> Vec<(u32, Whereabouts)> {
        let mut rng = rng_for(self.cfg.seed, Stream::Trips, day, 0);
        let n = count(&mut rng, self.cfg.trips, self.cfg.customers, 5_000.0);
        for _ in 0..n {
            let c = rng.random_range(0..self.cfg.customers);
            if ongoing.trips.iter().any(|t| t.0 == c) {
                continue;
            }
            let city = rng.random_range(0..CITIES.len()) as u8;
            let len = rng.random_range(3..=10);
            // The departure day is spent flying: the trip abroad starts the next day.
            ongoing.trips.push((c, city, day + 1, day + len));
        }
        // A trip ends with a day of flying back, then it is over.
        ongoing.trips.retain(|t| day <= t.3 + 1);
        let mut out: Vec<(u32, Whereabouts)> = ongoing
            .trips
            .iter()
            .map(|&(c, city, first, last)| {
                let w = if day < first || day > last {
                    Whereabouts::Flying
                } else {
                    Whereabouts::Abroad(city)
                };
                (c, w)
            })
            .collect();
        out.sort_unstable_by_key(|w| w.0);
        out
    }

    /// One customer's genuine transactions of `day`.
    fn customer_day(&self, day: u32, c: u32, weekday: f64, place: Option<Whereabouts>) -> Vec<Tx> {
        let cust = &self.world.customers[c as usize];
        let lambda = cust.tx_per_day * weekday;
        if cust.terminals.is_empty() || lambda <= 0.0 {
            return Vec::new();
        }
        let mut rng = rng_for(self.cfg.seed, Stream::Day, day, c);
        let Ok(poisson) = Poisson::new(lambda) else {
            return Vec::new();
        };
        let n = poisson.sample(&mut rng) as u32;
        let time = Normal::new(43_200.0, 20_000.0).unwrap_or_else(|_| unreachable!());
        let amount =
            Normal::new(cust.mean_amount, cust.std_amount).unwrap_or_else(|_| unreachable!());
        let mut out = Vec::with_capacity(n as usize);
        for seq in 0..n {
            // As the Handbook: the time is truncated to a second, kept if inside the day.
            let t: f64 = time.sample(&mut rng);
            let mut a: f64 = amount.sample(&mut rng);
            if a < 0.0 {
                a = rng.random_range(0.0..cust.mean_amount * 2.0);
            }
            let cents = (a * 100.0).round() as i64;
            let pick = rng.random_range(0..cust.terminals.len());
            let mut terminal = cust.terminals[pick];
            let contactless = rng.random::<f64>() < 0.7;
            let own_device = u8::from(rng.random::<f64>() < 0.15);
            let abroad_pick = rng.random_range(0..world::TERMINALS_PER_CITY);
            let secs = t as i64;
            if secs <= 0 || secs >= 86_400 {
                continue;
            }
            let kind = self.world.terminals[terminal as usize].kind;
            let mut city = None;
            match (kind, place) {
                (Kind::Pos, Some(Whereabouts::Flying)) => continue,
                (Kind::Pos, Some(Whereabouts::Abroad(k))) => {
                    terminal = self.world.city_terminals(usize::from(k)).start + abroad_pick;
                }
                (Kind::Ecommerce, Some(Whereabouts::Abroad(k))) => city = Some(k),
                _ => {}
            }
            let (channel, actor) = match kind {
                Kind::Ecommerce => (
                    Channel::Ecommerce,
                    Actor::Own {
                        device: own_device,
                        city,
                    },
                ),
                Kind::Pos if contactless && cents <= 5_000 => (Channel::Contactless, Actor::None),
                Kind::Pos => (Channel::CardPresent, Actor::None),
            };
            out.push(Tx {
                secs: secs as u32,
                customer: c,
                terminal,
                cents,
                channel,
                actor,
                scenario: 0,
                seq,
            });
        }
        out
    }

    /// All transactions of `day`, in time order, with the fraud scenarios applied.
    fn day(&self, day: u32, ongoing: &mut Ongoing) -> Vec<Tx> {
        let cfg = &self.cfg;
        let date = cfg.start + time::Duration::days(i64::from(day));
        let weekday = WEEKDAY_FACTOR[date.weekday().number_days_from_monday() as usize];
        let places = self.whereabouts(day, ongoing);
        let place = |c: u32| {
            places
                .binary_search_by_key(&c, |p| p.0)
                .ok()
                .map(|i| places[i].1)
        };
        let mut txs: Vec<Tx> = (0..cfg.customers)
            .into_par_iter()
            .with_min_len(256)
            .flat_map_iter(|c| self.customer_day(day, c, weekday, place(c)))
            .collect();
        sort(&mut txs);
        let s = &cfg.scenarios;
        // 1. Amount over the threshold.
        if let Some(limit) = s.amount_threshold {
            let limit = (limit * 100.0).round() as i64;
            for tx in txs.iter_mut().filter(|t| t.cents > limit) {
                tx.scenario = 1;
            }
        }
        // 2. Compromised terminals: every transaction on them for 28 days.
        if let Some(rate) = s.compromised_terminals {
            let mut rng = rng_for(cfg.seed, Stream::CompromisedTerminals, day, 0);
            let k = count(&mut rng, rate, cfg.terminals, 10_000.0);
            for t in distinct(&mut rng, self.world.home_terminals, k) {
                ongoing.terminals.push((t, day + 27));
            }
            ongoing.terminals.retain(|t| t.1 >= day);
            let mut active: Vec<u32> = ongoing.terminals.iter().map(|t| t.0).collect();
            active.sort_unstable();
            for tx in txs.iter_mut() {
                if active.binary_search(&tx.terminal).is_ok() {
                    tx.scenario = 2;
                }
            }
        }
        // 3. Compromised cards: a third of their transactions for 14 days, amount x5.
        if let Some(rate) = s.compromised_cards {
            let mut rng = rng_for(cfg.seed, Stream::CompromisedCards, day, 0);
            let k = count(&mut rng, rate, cfg.customers, 5_000.0);
            for c in distinct(&mut rng, cfg.customers, k) {
                ongoing.cards.push((c, day + 13));
            }
            ongoing.cards.retain(|t| t.1 >= day);
            let mut active: Vec<u32> = ongoing.cards.iter().map(|t| t.0).collect();
            active.sort_unstable();
            let mut pick = rng_for(cfg.seed, Stream::CardFraud, day, 0);
            for tx in txs.iter_mut() {
                let from = active.partition_point(|&c| c < tx.customer);
                let windows = active[from..].partition_point(|&c| c == tx.customer);
                if windows > 0 && (0..windows).any(|_| pick.random::<f64>() < 1.0 / 3.0) {
                    tx.cents *= 5;
                    tx.scenario = 3;
                }
            }
        }
        let mut extra = Vec::new();
        if let Some(rate) = s.card_testing {
            self.card_testing(day, rate, ongoing, &mut extra);
        }
        if let Some(rate) = s.account_takeover {
            self.account_takeover(day, rate, ongoing, &mut extra);
        }
        if let Some(rate) = s.impossible_travel {
            self.impossible_travel(day, rate, ongoing, &txs, &mut extra);
        }
        if !extra.is_empty() {
            txs.extend(extra);
            sort(&mut txs);
        }
        txs
    }

    fn far_city<R: Rng>(rng: &mut R) -> u8 {
        let far: Vec<usize> = (0..CITIES.len()).filter(|&i| CITIES[i].far).collect();
        far[rng.random_range(0..far.len())] as u8
    }

    fn random_shop<R: Rng>(&self, rng: &mut R) -> Option<u32> {
        let shops = &self.world.ecommerce;
        (!shops.is_empty()).then(|| shops[rng.random_range(0..shops.len())])
    }

    /// Scenario 4: bursts of tiny online amounts (checking the card works), then a large one.
    fn card_testing(&self, day: u32, rate: f64, ongoing: &mut Ongoing, out: &mut Vec<Tx>) {
        let mut rng = rng_for(self.cfg.seed, Stream::CardTesting, day, 0);
        let k = count(&mut rng, rate, self.cfg.customers, 5_000.0);
        for _ in 0..k {
            let c = rng.random_range(0..self.cfg.customers);
            ongoing.fraudsters += 1;
            let actor = Actor::Fraudster {
                id: ongoing.fraudsters,
                city: Self::far_city(&mut rng),
            };
            let mut secs = rng.random_range(0..86_400 - 8_000);
            let probes = rng.random_range(3..=8);
            for seq in 0..=probes {
                let Some(terminal) = self.random_shop(&mut rng) else {
                    return;
                };
                let cents = if seq < probes {
                    secs += rng.random_range(5..90);
                    rng.random_range(50..300)
                } else {
                    secs += rng.random_range(600..7_200);
                    rng.random_range(15_000..100_000)
                };
                out.push(Tx {
                    secs,
                    customer: c,
                    terminal,
                    cents,
                    channel: Channel::Ecommerce,
                    actor,
                    scenario: 4,
                    seq: 1_000_000 + seq,
                });
            }
        }
    }

    /// Scenario 5: a new device in a far country takes over the account and spends big online.
    fn account_takeover(&self, day: u32, rate: f64, ongoing: &mut Ongoing, out: &mut Vec<Tx>) {
        let mut rng = rng_for(self.cfg.seed, Stream::Takeover, day, 0);
        let k = count(&mut rng, rate, self.cfg.customers, 5_000.0);
        for _ in 0..k {
            let c = rng.random_range(0..self.cfg.customers);
            let mean = self.world.customers[c as usize].mean_amount;
            ongoing.fraudsters += 1;
            let actor = Actor::Fraudster {
                id: ongoing.fraudsters,
                city: Self::far_city(&mut rng),
            };
            let mut secs = rng.random_range(0..86_400 - 5 * 3_600);
            let n = rng.random_range(2..=5);
            for seq in 0..n {
                let Some(terminal) = self.random_shop(&mut rng) else {
                    return;
                };
                secs += rng.random_range(300..3_600);
                let amount = (mean * rng.random_range(3.0..8.0)).max(20.0);
                out.push(Tx {
                    secs,
                    customer: c,
                    terminal,
                    cents: (amount * 100.0).round() as i64,
                    channel: Channel::Ecommerce,
                    actor,
                    scenario: 5,
                    seq: 2_000_000 + seq,
                });
            }
        }
    }

    /// Scenario 6: a cloned card used at a terminal in a far city, minutes after the real card
    /// was used at home.
    fn impossible_travel(
        &self,
        day: u32,
        rate: f64,
        ongoing: &mut Ongoing,
        txs: &[Tx],
        out: &mut Vec<Tx>,
    ) {
        let mut rng = rng_for(self.cfg.seed, Stream::Travel, day, 0);
        let k = count(&mut rng, rate, self.cfg.customers, 5_000.0);
        let home: Vec<usize> = (0..txs.len())
            .filter(|&i| {
                let t = &txs[i];
                t.scenario == 0
                    && t.channel != Channel::Ecommerce
                    && t.terminal < self.world.home_terminals
            })
            .collect();
        if home.is_empty() {
            return;
        }
        for _ in 0..k {
            let anchor = txs[home[rng.random_range(0..home.len())]];
            let city = Self::far_city(&mut rng);
            let terminals = self.world.city_terminals(usize::from(city));
            ongoing.fraudsters += 1;
            let n = rng.random_range(1..=2);
            let gap = rng.random_range(600..5_400);
            // After the real use when the day allows it, before it otherwise.
            let after = anchor.secs + gap + 1_800 * n < 86_400;
            let mut secs = anchor.secs;
            for seq in 0..n {
                let step = if seq == 0 {
                    gap
                } else {
                    rng.random_range(300..1_800)
                };
                secs = if after {
                    secs + step
                } else {
                    secs.saturating_sub(step)
                };
                out.push(Tx {
                    secs,
                    customer: anchor.customer,
                    terminal: rng.random_range(terminals.clone()),
                    cents: rng.random_range(3_000..40_000),
                    channel: Channel::CardPresent,
                    actor: Actor::None,
                    scenario: 6,
                    seq: 3_000_000 + seq,
                });
            }
        }
    }

    /// Appends one CSV row.
    fn format(&self, buf: &mut Vec<u8>, id: u64, base: i64, day: u32, tx: &Tx, s: &mut Summary) {
        let cust = &self.world.customers[tx.customer as usize];
        let term = &self.world.terminals[tx.terminal as usize];
        let ts = base + i64::from(tx.secs);
        s.transactions += 1;
        s.by_scenario[usize::from(tx.scenario)] += 1;
        s.amount_by_scenario[usize::from(tx.scenario)] += tx.cents as f64 / 100.0;
        let fraud = tx.scenario != 0;
        if fraud {
            s.frauds += 1;
        } else if term.country != HOME_COUNTRY {
            s.genuine_abroad += 1;
        }
        let _ = write!(buf, "{id},");
        push_time(buf, ts);
        let _ = write!(
            buf,
            ",{}.{:02},{},{},C{},M{},{},T{},{},{},{},",
            tx.cents / 100,
            tx.cents % 100,
            self.cfg.currency,
            cust.token,
            tx.customer,
            term.merchant,
            term.mcc,
            tx.terminal,
            tx.channel.name(),
            HOME_COUNTRY,
            term.country,
        );
        let c = tx.customer;
        match tx.actor {
            Actor::None => buf.extend_from_slice(b",,,"),
            Actor::Own { device, city } => {
                let country = city.map_or(HOME_COUNTRY, |k| CITIES[usize::from(k)].country);
                match city {
                    None => {
                        let _ =
                            write!(buf, "10.{}.{}.{}", (c >> 16) & 255, (c >> 8) & 255, c & 255);
                    }
                    Some(k) => {
                        let _ = write!(buf, "100.{}.{}.{}", 64 + k, (c >> 8) & 255, c & 255);
                    }
                }
                let _ = write!(buf, ",{country},dev-{c}-{device},");
            }
            Actor::Fraudster { id, city } => {
                let _ = write!(
                    buf,
                    "203.0.{}.{},{},fd-{id},",
                    113 + (id >> 8) % 3,
                    id & 255,
                    CITIES[usize::from(city)].country
                );
            }
        }
        if tx.channel == Channel::Ecommerce {
            let _ = write!(buf, "c{c}@example.com");
        }
        buf.push(b',');
        if tx.channel == Channel::Ecommerce {
            buf.push(b',');
        } else {
            let _ = write!(buf, "{:.5},{:.5}", term.lat, term.lon);
        }
        if fraud {
            let mut rng = rng_for(self.cfg.seed, Stream::Delay, day, (id & 0xffff_ffff) as u32);
            let median = self.cfg.label_delay_days * 86_400.0;
            let delay = LogNormal::new(median.ln(), 1.0)
                .map(|d| d.sample(&mut rng))
                .unwrap_or(median)
                .clamp(600.0, 90.0 * 86_400.0);
            buf.extend_from_slice(b",1,");
            push_time(buf, ts + delay as i64);
        } else {
            buf.extend_from_slice(b",0,");
        }
        let _ = writeln!(buf, ",{}", tx.scenario);
    }
}

fn sort(txs: &mut [Tx]) {
    txs.sort_unstable_by_key(|t| (t.secs, t.customer, t.seq));
}

/// Appends `unix` seconds as RFC 3339 UTC (`2018-04-01T00:00:31Z`).
fn push_time(buf: &mut Vec<u8>, unix: i64) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let _ = write!(
        buf,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time() {
        for t in [
            0i64,
            1_522_540_831,
            951_782_400,
            4_102_444_799,
            1_709_164_800,
        ] {
            let mut b = Vec::new();
            push_time(&mut b, t);
            let want = time::OffsetDateTime::from_unix_timestamp(t)
                .map(|d| {
                    d.format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&b), want);
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let cfg = SimConfig {
            days: 0,
            ..SimConfig::default()
        };
        assert!(matches!(
            Simulator::new(cfg),
            Err(SimError::Setting {
                setting: "days",
                ..
            })
        ));
        assert_eq!(
            Scenarios::only(&["card_testing", "nope"]),
            Err(SimError::UnknownScenario("nope".into()))
        );
    }
}
