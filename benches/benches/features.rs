//! Criterion benches of the feature pipeline with the default spec:
//! - `features/compute_and_update`: one transaction's features from the state, then the state
//!   update, as the online path does it (state warmed with 30 days of history);
//! - `features/memory_store_step`: the same through the sharded `MemoryStore` the service uses
//!   (locks, observation, all features);
//! - `features/replay_200k`: offline replay throughput (all cores).
//!
//! Latency percentiles, replay on 1 and 2 threads and memory per entity:
//! `cargo run --release -p fraud-benches --bin feature_state`.
//!
//!     cargo bench -p fraud-benches --bench features

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fraud_benches::transactions;
use fraud_core::features::{
    replay_flat, Extractor, FeatureSpec, MemoryState, MemoryStore, StateStore,
};

fn bench(c: &mut Criterion) {
    let e = Extractor::new(FeatureSpec::default_spec()).unwrap();
    let history = transactions(200_000, 30, 20_000, 2_000, 1);
    let mut g = c.benchmark_group("features");

    // Online: the state warmed with the first 150,000 transactions; each timed run walks the
    // next ones in time order from a fresh copy of that state (copied outside the timing).
    let mut warm = MemoryState::default();
    for tx in &history[..150_000] {
        e.update(tx, &mut warm);
    }
    let tail = &history[150_000..];
    g.throughput(Throughput::Elements(1));
    g.bench_function("compute_and_update", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(tail.len());
                let mut state = warm.clone();
                let start = std::time::Instant::now();
                for tx in &tail[..n] {
                    let f = e.compute(tx, &state);
                    e.update(tx, &mut state);
                    black_box(f);
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });

    g.bench_function("memory_store_step", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(tail.len());
                // A fresh warmed store for each batch (built outside the timing).
                let store = MemoryStore::new();
                for tx in &history[..150_000] {
                    store.step(&e, tx).unwrap();
                }
                let start = std::time::Instant::now();
                for tx in &tail[..n] {
                    black_box(store.step(&e, tx).unwrap());
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });

    g.throughput(Throughput::Elements(history.len() as u64));
    g.sample_size(10);
    g.bench_function("replay_200k", |b| {
        b.iter(|| black_box(replay_flat(&e, &history)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
