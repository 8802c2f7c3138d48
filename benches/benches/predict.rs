//! Criterion benches of prediction: one row per call, batches on one thread and on all, and
//! each batch kernel forced on one thread (walk, bit vectors with the CPU's widest
//! instructions, with AVX2, portable).
//!
//! Model: a seeded synthetic 300-tree, 63-leaf ensemble over 30 features (see `src/lib.rs`),
//! or a real artifact given by `FRAUD_BENCH_MODEL` (then rows are still synthetic, with the
//! model's feature count).
//!
//!     cargo bench -p fraud-benches --bench predict

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fraud_benches::{model, rows};
use fraud_core::model::Artifact;
use fraud_core::{BatchKernel, CompiledModel};

const FEATURES: usize = 30;
const BATCH: usize = 100_000;

fn load() -> CompiledModel {
    let ensemble = match std::env::var("FRAUD_BENCH_MODEL") {
        Ok(path) => Artifact::load(&path).expect("FRAUD_BENCH_MODEL").ensemble,
        Err(_) => {
            let sample = rows(20_000, FEATURES, 0.02, 1);
            model(300, 63, FEATURES, &sample, 2)
        }
    };
    CompiledModel::new(&ensemble).unwrap()
}

fn bench(c: &mut Criterion) {
    let m = load();
    let nf = m.num_features();
    let data = rows(BATCH, nf, 0.02, 3);

    let mut g = c.benchmark_group("predict");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("single_row", |b| {
        b.iter(|| {
            i = (i + 1) % BATCH;
            black_box(m.predict_proba(&data[i * nf..(i + 1) * nf]).unwrap())
        })
    });
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    g.bench_function("batch_100k_1_thread", |b| {
        b.iter_batched_ref(
            || vec![0.0; BATCH],
            |out| one.install(|| m.predict_proba_batch(&data, out).unwrap()),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("batch_100k_all_threads", |b| {
        b.iter_batched_ref(
            || vec![0.0; BATCH],
            |out| m.predict_proba_batch(&data, out).unwrap(),
            BatchSize::LargeInput,
        )
    });
    for (name, kernel) in [
        ("batch_100k_1_thread_walk", BatchKernel::Walk),
        ("batch_100k_1_thread_bitvector", BatchKernel::BitVector),
        (
            "batch_100k_1_thread_bitvector_avx2",
            BatchKernel::BitVectorAvx2,
        ),
        (
            "batch_100k_1_thread_bitvector_portable",
            BatchKernel::BitVectorPortable,
        ),
    ] {
        let mut forced = m.clone();
        if forced.set_batch_kernel(kernel).is_err() {
            continue; // Not on this CPU.
        }
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || vec![0.0; BATCH],
                |out| one.install(|| forced.predict_proba_batch(&data, out).unwrap()),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
