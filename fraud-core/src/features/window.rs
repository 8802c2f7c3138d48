//! Window aggregates of one entity at a cost that does not grow with the entity's rate.
//!
//! A window (a *level*: length `w`, ending `d` before the transaction) is answered from two
//! parts of the entity's state:
//! - its raw events, the newest [`RAW_CAP`] to twice that, exact: counts, sums and sums of
//!   squares are integers (amounts in ten-thousandths), the maximum is an amount, distinct
//!   counts are counts of fingerprints;
//! - for a hot entity only, the events older than those (folded out of the raw events, the
//!   oldest first, when they reach twice [`RAW_CAP`]): per level, time buckets of `w / 32` holding the count,
//!   sum, sum of squares, maximum and time span of their events. A bucket wholly inside or
//!   outside a window is exact; the one a window's edge splits is counted wholly when the middle
//!   of its events' span is inside the window, not at all otherwise, so a window's error is at
//!   most the events of one bucket at each edge (about 1/32 of the window at a steady rate).
//!   Distinct counts are taken over the raw events only.
//!
//! Two ways give the raw part the same integers, so the same features: a scan of the window's
//! events (cheap while the entity has few, and for read-only or out-of-order questions), and,
//! for entities with many events, a [`Slider`] per level that moves with time: events enter
//! at its head and leave at its tail once each (running sums, a monotonic deque for the
//! maximum, counted maps for distinct values), O(1) amortized per transaction. Sliders are a
//! cache: rebuilt from the raw events when a transaction arrives out of time order.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::spec::MAX_DISTINCT_FIELDS;
use super::state::{Event, ProcessHasher};

/// Raw events always kept per entity: at twice as many, the oldest are folded into time
/// buckets until this many are left.
pub const RAW_CAP: usize = 512;

/// Time buckets per window length.
pub(crate) const BUCKETS_PER_WINDOW: i64 = 32;

/// Entities with at least this many raw events answer windows with sliders.
pub(crate) const SLIDE_FROM: usize = 48;

/// Amounts are summed as integers of this many units per major unit (every currency's
/// minor unit divides it), so sums do not depend on the order of additions.
const SCALE: f64 = 10_000.0;

fn scaled(amount: f64) -> i64 {
    (amount * SCALE).round() as i64
}

/// A window's length and end, and what its slider keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Level {
    /// Length (microseconds).
    pub w: i64,
    /// How long before the transaction it ends (microseconds; 0 for plain windows).
    pub d: i64,
    /// Width of the time buckets of folded events.
    pub width: i64,
    /// Whether the maximum is asked for.
    pub max: bool,
    /// Event slots whose distinct values are counted.
    pub slots: [bool; MAX_DISTINCT_FIELDS],
}

impl Level {
    pub(crate) fn new(w: i64, d: i64) -> Self {
        Level {
            w,
            d,
            width: (w / BUCKETS_PER_WINDOW).max(1_000_000),
            max: false,
            slots: [false; MAX_DISTINCT_FIELDS],
        }
    }

    /// The oldest time a transaction at or after `newest` can still need.
    fn reach(&self, newest: i64) -> i64 {
        newest - self.d - self.w - self.width
    }
}

/// Exact aggregates of amounts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Agg {
    /// How many.
    pub n: u64,
    /// Sum (ten-thousandths; wrapping, exact for any window's true sum).
    pub s1: i64,
    /// Sum of squares (wrapping).
    pub s2: i128,
    /// Largest amount (NaN when none).
    pub max: f64,
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
            n: 0,
            s1: 0,
            s2: 0,
            max: f64::NAN,
        }
    }
}

impl Agg {
    fn add_sums(&mut self, amount: f64) {
        let x = scaled(amount);
        self.n += 1;
        self.s1 = self.s1.wrapping_add(x);
        self.s2 = self.s2.wrapping_add(i128::from(x) * i128::from(x));
    }

    fn add(&mut self, amount: f64) {
        self.add_sums(amount);
        self.max = max(self.max, amount);
    }

    fn remove_sums(&mut self, amount: f64) {
        let x = scaled(amount);
        self.n -= 1;
        self.s1 = self.s1.wrapping_sub(x);
        self.s2 = self.s2.wrapping_sub(i128::from(x) * i128::from(x));
    }

    pub(crate) fn merge(&mut self, o: &Agg) {
        self.n += o.n;
        self.s1 = self.s1.wrapping_add(o.s1);
        self.s2 = self.s2.wrapping_add(o.s2);
        self.max = max(self.max, o.max);
    }

    /// The sum in major units.
    pub fn sum(&self) -> f64 {
        self.s1 as f64 / SCALE
    }

    /// The mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum() / self.n as f64
        }
    }

    /// The population standard deviation (NaN when empty), from the exact integer sums:
    /// with `q` the integer part of the mean and `r` the remainder, `sum (x - q)^2` is an
    /// exact integer (no cancellation), and the squared deviations from the mean are that
    /// minus `r^2 / n`.
    pub fn std(&self) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        let n = i128::from(self.n);
        let s1 = i128::from(self.s1);
        let q = s1.div_euclid(n);
        let r = s1 - q * n;
        let c = self
            .s2
            .wrapping_sub(2i128.wrapping_mul(q).wrapping_mul(s1))
            .wrapping_add(n.wrapping_mul(q).wrapping_mul(q));
        let m2 = (c as f64 - (r as f64) * (r as f64) / n as f64).max(0.0);
        (m2 / n as f64).sqrt() / SCALE
    }
}

fn max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b > a {
        b
    } else {
        a
    }
}

/// A window's answer: the aggregates and the distinct counts of its slots.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Answer {
    pub agg: Agg,
    pub distinct: [u64; MAX_DISTINCT_FIELDS],
}

/// Folded events of one level within `[start, start + width)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Bucket {
    pub start: i64,
    /// Oldest and newest event time in it.
    pub lo: i64,
    pub hi: i64,
    pub agg: Agg,
}

/// Adds a folded event to a level's buckets (kept in time order), and drops buckets no
/// window can reach any more.
pub(crate) fn fold(buckets: &mut VecDeque<Bucket>, lv: &Level, e: &Event, newest: i64) {
    let reach = lv.reach(newest);
    while buckets.front().is_some_and(|b| b.hi < reach) {
        buckets.pop_front();
    }
    if e.ts < reach {
        return;
    }
    let start = e.ts - e.ts.rem_euclid(lv.width);
    let at = buckets.partition_point(|b| b.start < start);
    match buckets.get_mut(at) {
        Some(b) if b.start == start => {
            b.lo = b.lo.min(e.ts);
            b.hi = b.hi.max(e.ts);
            b.agg.add(e.amount);
        }
        _ => {
            let mut agg = Agg::default();
            agg.add(e.amount);
            buckets.insert(
                at,
                Bucket {
                    start,
                    lo: e.ts,
                    hi: e.ts,
                    agg,
                },
            );
        }
    }
}

/// The folded events' part of the window `[from, to)`.
pub(crate) fn folded_part(buckets: &VecDeque<Bucket>, from: i64, to: i64) -> Agg {
    let mut a = Agg::default();
    for b in buckets.iter().rev() {
        if b.hi < from {
            break;
        }
        let inside = if b.lo >= from && b.hi < to {
            true
        } else if b.lo >= to {
            false
        } else {
            let mid = b.lo + (b.hi - b.lo) / 2;
            (from..to).contains(&mid)
        };
        if inside {
            a.merge(&b.agg);
        }
    }
    a
}

/// The raw part of `[from, to)` by a scan of its events.
pub(crate) fn scan(events: impl Iterator<Item = Event> + Clone, lv: &Level) -> Answer {
    let mut agg = Agg::default();
    for e in events.clone() {
        agg.add(e.amount);
    }
    let mut distinct = [0u64; MAX_DISTINCT_FIELDS];
    for (slot, d) in distinct.iter_mut().enumerate() {
        if lv.slots[slot] {
            let values = events.clone().map(|e| e.values[slot]).filter(|&v| v != 0);
            *d = super::count_distinct(values) as u64;
        }
    }
    Answer { agg, distinct }
}

/// A level's raw events in `[from, to)`, kept as time moves forward: the events with
/// sequence numbers `tail..head`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slider {
    from: i64,
    to: i64,
    tail: u64,
    head: u64,
    agg: Agg,
    /// (sequence, amount), amounts decreasing: the front is the window's maximum.
    maxq: VecDeque<(u64, f64)>,
    counts: [Option<hashbrown::HashMap<u64, u32, ProcessHasher>>; MAX_DISTINCT_FIELDS],
}

impl Slider {
    fn new(lv: &Level, first: u64) -> Self {
        let mut s = Slider {
            from: i64::MIN,
            to: i64::MIN,
            tail: first,
            head: first,
            ..Default::default()
        };
        for (c, on) in s.counts.iter_mut().zip(lv.slots) {
            if on {
                *c = Some(Default::default());
            }
        }
        s
    }

    fn enter(&mut self, seq: u64, e: &Event, lv: &Level) {
        self.agg.add_sums(e.amount);
        if lv.max {
            while self.maxq.back().is_some_and(|&(_, a)| a <= e.amount) {
                self.maxq.pop_back();
            }
            self.maxq.push_back((seq, e.amount));
        }
        for (c, v) in self.counts.iter_mut().zip(e.values) {
            if let (Some(c), true) = (c, v != 0) {
                *c.entry(v).or_insert(0) += 1;
            }
        }
    }

    fn leave(&mut self, e: &Event) {
        self.agg.remove_sums(e.amount);
        for (c, v) in self.counts.iter_mut().zip(e.values) {
            if let (Some(c), true) = (c, v != 0) {
                if let Some(k) = c.get_mut(&v) {
                    *k -= 1;
                    if *k == 0 {
                        c.remove(&v);
                    }
                }
            }
        }
    }

    fn trim(&mut self) {
        while self.maxq.front().is_some_and(|&(s, _)| s < self.tail) {
            self.maxq.pop_front();
        }
    }

    /// The event `seq` (the oldest) is leaving the raw events.
    fn evict(&mut self, seq: u64, e: &Event) {
        if self.tail == seq {
            if self.head > seq {
                self.leave(e);
            }
            self.tail += 1;
            self.head = self.head.max(self.tail);
            self.trim();
        }
    }

    /// Moves to `[from, to)` (not before the last window) and answers for it.
    fn slide(
        &mut self,
        events: &VecDeque<Event>,
        first: u64,
        lv: &Level,
        from: i64,
        to: i64,
    ) -> Answer {
        let end = first + events.len() as u64;
        while self.head < end {
            let e = &events[(self.head - first) as usize];
            if e.ts >= to {
                break;
            }
            self.enter(self.head, e, lv);
            self.head += 1;
        }
        while self.tail < self.head {
            let e = &events[(self.tail - first) as usize];
            if e.ts >= from {
                break;
            }
            self.leave(e);
            self.tail += 1;
        }
        self.trim();
        self.from = from;
        self.to = to;
        let mut agg = self.agg;
        agg.max = self.maxq.front().map_or(f64::NAN, |&(_, a)| a);
        let mut distinct = [0u64; MAX_DISTINCT_FIELDS];
        for (d, c) in distinct.iter_mut().zip(&self.counts) {
            *d = c.as_ref().map_or(0, |c| c.len() as u64);
        }
        Answer { agg, distinct }
    }

    fn heap_bytes(&self) -> usize {
        self.maxq.capacity() * std::mem::size_of::<(u64, f64)>()
            + self
                .counts
                .iter()
                .flatten()
                .map(|c| c.capacity() * 13 * 8 / 7)
                .sum::<usize>()
    }
}

/// The sliders of one entity, and the sequence number of its oldest raw event (a cache:
/// cloning gives an empty one, and it never takes part in comparisons).
#[derive(Debug, Default)]
pub(crate) struct Sliders(Option<Box<(u64, Vec<Option<Slider>>)>>);

impl Clone for Sliders {
    fn clone(&self) -> Self {
        Sliders(None)
    }
}

impl PartialEq for Sliders {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Sliders {
    /// Forgets everything (the raw events changed other than at their ends).
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    /// The oldest raw event is leaving.
    pub(crate) fn evict(&mut self, e: &Event) {
        if let Some(b) = &mut self.0 {
            let seq = b.0;
            for s in b.1.iter_mut().flatten() {
                s.evict(seq, e);
            }
            b.0 += 1;
        }
    }

    /// The raw part of level `li`'s window `[from, to)`, by its slider (built or rebuilt as
    /// needed: a window before the slider's last one starts it again).
    pub(crate) fn answer(
        &mut self,
        events: &VecDeque<Event>,
        li: usize,
        lv: &Level,
        from: i64,
        to: i64,
    ) -> Answer {
        let b = self.0.get_or_insert_with(Default::default);
        let first = b.0;
        if b.1.len() <= li {
            b.1.resize_with(li + 1, || None);
        }
        let s = &mut b.1[li];
        if s.as_ref().is_none_or(|s| from < s.from || to < s.to) {
            *s = Some(Slider::new(lv, first));
        }
        match s {
            Some(s) => s.slide(events, first, lv, from, to),
            None => Answer::default(),
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |b| {
            std::mem::size_of::<(u64, Vec<Option<Slider>>)>()
                + b.1.capacity() * std::mem::size_of::<Option<Slider>>()
                + b.1.iter().flatten().map(Slider::heap_bytes).sum::<usize>()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(amounts: &[f64]) -> Agg {
        let mut a = Agg::default();
        for &x in amounts {
            a.add(x);
        }
        a
    }

    #[test]
    fn sums_and_deviation_are_exact() {
        let a = agg(&[0.1, 0.2]);
        assert_eq!(a.sum(), 0.3);
        assert_eq!(agg(&[0.01, 0.02]).std(), 0.005);
        assert_eq!(agg(&[5.0, 5.0, 5.0]).std(), 0.0);
        let big = agg(&[999_999_999.99, 1_000_000_000.0]);
        assert_eq!(big.std(), 0.005);
        assert!(Agg::default().mean().is_nan() && Agg::default().std().is_nan());
        let mut b = agg(&[3.0, 1.0, 2.0]);
        b.remove_sums(3.0);
        let c = agg(&[1.0, 2.0]);
        assert_eq!((b.n, b.s1, b.s2), (c.n, c.s1, c.s2));
    }

    #[test]
    fn a_slider_agrees_with_a_scan() {
        let lv = Level {
            max: true,
            slots: [true, false],
            ..Level::new(100, 0)
        };
        let events: VecDeque<Event> = (0..400i64)
            .map(|i| Event {
                ts: i * 7 / 3,
                amount: ((i * 37) % 101) as f64 / 4.0,
                values: [(i % 13) as u64 + 1, 0],
            })
            .collect();
        let mut s = Slider::new(&lv, 0);
        for t in (0..1000).step_by(3) {
            let got = s.slide(&events, 0, &lv, t - 100, t);
            let want = scan(
                events
                    .iter()
                    .copied()
                    .filter(|e| e.ts >= t - 100 && e.ts < t),
                &lv,
            );
            assert_eq!(got.agg.n, want.agg.n, "t {t}");
            assert_eq!((got.agg.s1, got.agg.s2), (want.agg.s1, want.agg.s2));
            assert_eq!(got.agg.max.to_bits(), want.agg.max.to_bits(), "t {t}");
            assert_eq!(got.distinct, want.distinct, "t {t}");
        }
    }

    #[test]
    fn buckets_are_exact_away_from_the_edges() {
        let lv = Level::new(3_200_000_000, 0); // width 100 s
        let mut b = VecDeque::new();
        for i in 0..100i64 {
            let e = Event {
                ts: 10_000_000_000 + i * 10_000_000,
                amount: 1.0,
                values: [0; MAX_DISTINCT_FIELDS],
            };
            fold(&mut b, &lv, &e, 11_000_000_000);
        }
        assert_eq!(b.len(), 10);
        // Whole buckets: exact.
        assert_eq!(folded_part(&b, 10_000_000_000, 20_000_000_000).n, 100);
        assert_eq!(folded_part(&b, 10_500_000_000, 20_000_000_000).n, 50);
        // An edge inside a bucket: that bucket counts wholly or not at all.
        let n = folded_part(&b, 10_520_000_000, 20_000_000_000).n;
        assert!(n == 40 || n == 50, "{n}");
    }
}
