//! What one hot entity costs (issue 23's benchmark): the same number of transactions within
//! 24 hours, once all of ONE card (a card-testing attack) and once spread over many cards, through
//! the default feature spec: offline (`replay_flat`, every core) and online (the memory
//! store's `step`, one transaction at a time). Prints the time per transaction of each and
//! the hot / spread ratio, side by side in one run (the target: at most 2x).
//!
//! With `--redis URL`, the online step also runs through the Redis backend, two stores (two
//! replicas) taking turns, and the bytes each round trip reads are printed beside the time.
//!
//!     cargo run --release -p fraud-benches --bin hot_entity [-- --transactions N] [--cards C] [--redis URL]

use std::time::Instant;

use fraud_benches::{number_flag, transactions};
use fraud_core::features::{replay_flat, Extractor, FeatureSpec, MemoryStore, StateStore};

/// Seconds per transaction: (offline replay, online steps).
fn measure(ex: &Extractor, txs: &[fraud_core::transaction::Transaction]) -> (f64, f64) {
    let start = Instant::now();
    let rows = replay_flat(ex, txs);
    let offline = start.elapsed().as_secs_f64() / txs.len() as f64;
    std::hint::black_box(rows);
    let store = MemoryStore::new();
    let start = Instant::now();
    for tx in txs {
        if let Err(e) = store.step(ex, tx) {
            eprintln!("hot_entity: {e}");
            std::process::exit(1);
        }
    }
    let online = start.elapsed().as_secs_f64() / txs.len() as f64;
    (offline, online)
}

/// This thread's time on a CPU so far (nanoseconds; 0 where the kernel does not tell).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The online step through Redis, two stores taking turns (two replicas): seconds, bytes
/// read and this process's CPU seconds (the client's side, Redis apart) per transaction.
fn measure_redis(
    ex: &Extractor,
    txs: &[fraud_core::transaction::Transaction],
    url: &str,
) -> Result<(f64, f64, f64), String> {
    use fraud_core::features::redis::RedisStore;
    let timeout = std::time::Duration::from_secs(5);
    let a = RedisStore::open(url, "hot-entity-bench", timeout).map_err(|e| e.to_string())?;
    a.clear().map_err(|e| e.to_string())?;
    let b = RedisStore::open(url, "hot-entity-bench", timeout).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let cpu = thread_cpu_ns();
    for (i, tx) in txs.iter().enumerate() {
        let store = if i % 2 == 0 { &a } else { &b };
        store.step(ex, tx).map_err(|e| e.to_string())?;
    }
    let client = (thread_cpu_ns() - cpu) as f64 / 1e9 / txs.len() as f64;
    let per_tx = start.elapsed().as_secs_f64() / txs.len() as f64;
    let bytes = (a.bytes_read() + b.bytes_read()) as f64 / txs.len() as f64;
    a.clear().map_err(|e| e.to_string())?;
    Ok((per_tx, bytes, client))
}

fn main() {
    let n = number_flag("--transactions", 20_000);
    let cards = number_flag("--cards", 20_000);
    let ex = match Extractor::new(FeatureSpec::default_spec()) {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("hot_entity: default spec: {e}");
            std::process::exit(1);
        }
    };
    let hot = transactions(n, 1, 1, 100, 7);
    let spread = transactions(n, 1, cards, 100, 7);
    let (hot_off, hot_on) = measure(&ex, &hot);
    let (spread_off, spread_on) = measure(&ex, &spread);
    println!("{n} transactions within 24 h, default spec");
    println!(
        "offline (replay, every core): one card {:.2} us/tx, {cards} cards {:.2} us/tx, ratio {:.1}",
        hot_off * 1e6,
        spread_off * 1e6,
        hot_off / spread_off
    );
    println!(
        "online (one at a time):       one card {:.2} us/tx, {cards} cards {:.2} us/tx, ratio {:.1}",
        hot_on * 1e6,
        spread_on * 1e6,
        hot_on / spread_on
    );
    let args: Vec<String> = std::env::args().collect();
    if let Some(url) = args
        .iter()
        .position(|a| a == "--redis")
        .and_then(|i| args.get(i + 1))
    {
        let run = |txs| {
            measure_redis(&ex, txs, url).unwrap_or_else(|e| {
                eprintln!("hot_entity: redis: {e}");
                std::process::exit(1)
            })
        };
        let (hot_r, hot_b, hot_c) = run(&hot);
        let (spread_r, spread_b, spread_c) = run(&spread);
        println!(
            "redis (two replicas in turn): one card {:.2} us/tx {:.0} B read/tx, {cards} cards {:.2} us/tx {:.0} B read/tx, ratio {:.1}",
            hot_r * 1e6,
            hot_b,
            spread_r * 1e6,
            spread_b,
            hot_r / spread_r
        );
        println!(
            "redis, the client's CPU:      one card {:.2} us/tx, {cards} cards {:.2} us/tx, ratio {:.1}",
            hot_c * 1e6,
            spread_c * 1e6,
            hot_c / spread_c
        );
    }
}
