//! Criterion bench of exact TreeSHAP on the demo model (`datasets/demo/model.fgb`, the model
//! the service explains every answer with): one row's contributions, rows taken in turn
//! from features replayed over synthetic transactions (so the trees' paths vary as they do
//! in service). `explain/demo_row_with_margin` finds the margin as well (what the service
//! does); `explain/demo_row_recursive` is the reference algorithm, for the ratio.
//!
//!     cargo bench -p fraud-benches --bench explain

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fraud_benches::transactions;
use fraud_core::features::{replay_flat, Extractor, FeatureSpec};
use fraud_core::model::{Artifact, Explainer};

fn bench(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/demo/model.fgb");
    let artifact = Artifact::load(path).unwrap();
    let spec = artifact
        .metadata
        .feature_spec
        .clone()
        .unwrap_or_else(FeatureSpec::default_spec);
    let e = Extractor::new(spec).unwrap();
    let history = transactions(20_000, 10, 2_000, 500, 7);
    let flat = replay_flat(&e, &history);
    let m = e.names().len();
    let columns: Vec<usize> = artifact
        .ensemble
        .feature_names()
        .iter()
        .map(|n| e.names().iter().position(|p| p == n).unwrap())
        .collect();
    let rows: Vec<Vec<f64>> = flat
        .chunks_exact(m)
        .map(|r| columns.iter().map(|&c| r[c]).collect())
        .collect();
    let x = Explainer::new(&artifact.ensemble).unwrap();
    let mut out = vec![0.0; x.width()];
    let mut g = c.benchmark_group("explain");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("demo_row", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            x.contributions(black_box(&rows[i]), &mut out).unwrap();
            black_box(out[0])
        })
    });
    g.bench_function("demo_row_with_margin", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            let margin = x
                .contributions_and_margin(black_box(&rows[i]), &mut out)
                .unwrap();
            black_box(margin)
        })
    });
    g.bench_function("demo_row_recursive", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            x.contributions_recursive(black_box(&rows[i]), &mut out)
                .unwrap();
            black_box(out[0])
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
