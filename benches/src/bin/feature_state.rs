//! Feature pipeline figures that criterion does not give: the latency distribution (p50, p99,
//! p99.9) of the online path (features plus state update, one transaction at a time, in the
//! sharded memory store), replay throughput on one thread and on every core, and the memory
//! an entity takes, counted by a global allocator that tallies every allocation.
//!
//!     cargo run --release -p fraud-benches --bin feature_state [-- --transactions N] [--days D]
//!         [--cards C] [--replay-only | --online-only]

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use fraud_benches::{number_flag, transactions};
use fraud_core::features::{
    replay_flat, Entity, Extractor, FeatureSpec, MemoryStore, StateStore, DEFAULT_SPEC,
};

/// Counts the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed through to the system allocator unchanged; only a counter is
// updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The default spec reduced to its card features.
fn card_only() -> FeatureSpec {
    let mut s = FeatureSpec::from_toml(DEFAULT_SPEC).unwrap_or_default();
    s.since_last.retain(|e| *e == Entity::Card);
    s.first_seen.retain(|f| f.entity == Entity::Card);
    s.windows.retain(|w| w.entity == Entity::Card);
    s.distinct.retain(|d| d.entity == Entity::Card);
    s.geo_velocity.retain(|e| *e == Entity::Card);
    s.label_rates.retain(|l| l.entity == Entity::Card);
    s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = number_flag("--transactions", 1_000_000);
    let days = number_flag("--days", 30) as i64;
    let cards = number_flag("--cards", 20_000);
    let ex = Extractor::new(FeatureSpec::default_spec())?;
    println!(
        "history: {n} transactions over {days} days, {cards} cards ({:.1} per card per day), default spec ({} features)",
        n as f64 / cards as f64 / days as f64,
        ex.names().len()
    );
    let history = transactions(n, days, cards, 10_000, 1);

    // Replay throughput, best of 3, on one thread and on every core.
    let online_only = std::env::args().any(|a| a == "--online-only");
    for threads in [1, rayon::current_num_threads()] {
        if online_only {
            break;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let start = Instant::now();
            let out = pool.install(|| replay_flat(&ex, &history));
            best = best.min(start.elapsed().as_secs_f64());
            std::hint::black_box(out);
        }
        println!(
            "replay, {threads} thread(s): {:.0} transactions/s ({best:.3} s)",
            n as f64 / best
        );
    }

    if std::env::args().any(|a| a == "--replay-only") {
        return Ok(());
    }

    // Online latency: the store warmed with the first 70%, then each later transaction timed.
    let store = MemoryStore::new();
    let warm = n * 7 / 10;
    for tx in &history[..warm] {
        store.step(&ex, tx)?;
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let mut total = 0u128;
    for tx in &history[warm..] {
        let start = Instant::now();
        let row = store.step(&ex, tx)?;
        let ns = start.elapsed().as_nanos();
        std::hint::black_box(row);
        total += ns;
        hist.record(ns.min(10_000_000) as u64)?;
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "online step (MemoryStore, features + update), {} transactions: mean {:.2} us, p50 {:.2} us, p90 {:.2} us, p99 {:.2} us, p99.9 {:.2} us",
        n - warm,
        total as f64 / (n - warm) as f64 / 1000.0,
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999)
    );
    drop(store);

    // Memory: every allocation the store makes, for the default spec and for its card part.
    for (what, spec) in [
        ("default spec", FeatureSpec::default_spec()),
        ("card features only", card_only()),
    ] {
        let ex = Extractor::new(spec)?;
        let before = live();
        let store = MemoryStore::new();
        for tx in &history {
            store.step(&ex, tx)?;
        }
        let bytes = (live() - before) as f64;
        let st = store.stats();
        let entities: usize = st.entities.iter().sum();
        let card_n = st.entities[Entity::Card.index()];
        println!(
            "memory, {what}: {:.1} MiB for {entities} entities ({card_n} cards, {} events held): {:.0} bytes per entity{}",
            bytes / (1 << 20) as f64,
            st.events,
            bytes / entities.max(1) as f64,
            if entities == card_n {
                format!(", {:.0} bytes per card", bytes / card_n.max(1) as f64)
            } else {
                String::new()
            }
        );
        drop(store);
    }
    Ok(())
}
