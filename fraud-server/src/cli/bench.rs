//! `fraud bench`: in-process prediction speed on real rows, as one JSON object.
//!
//! Batch: the best of several passes over all rows (CSV parsing excluded), in ns per row.
//! Single row: every row scored alone, one call each, timed individually; p50 / p99 / p999.

use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    io: super::ModelInput,
    /// Batch passes; the best is reported.
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Rows timed one by one for the single-row figures (default: all, at most 200,000).
    #[arg(long)]
    single_rows: Option<usize>,
    /// Batch kernel: the model's own choice, or one forced (the same scores, other speeds).
    #[arg(long, value_enum, default_value_t = Kernel::Auto)]
    kernel: Kernel,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kernel {
    Auto,
    Walk,
    Bitvector,
    BitvectorAvx2,
    BitvectorPortable,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.passes == 0 {
        anyhow::bail!("--passes must be at least 1");
    }
    let (artifact, mut model) = a.io.load()?;
    match a.kernel {
        Kernel::Auto => {}
        Kernel::Walk => model.set_batch_kernel(fraud_core::BatchKernel::Walk)?,
        Kernel::Bitvector => model.set_batch_kernel(fraud_core::BatchKernel::BitVector)?,
        Kernel::BitvectorAvx2 => model.set_batch_kernel(fraud_core::BatchKernel::BitVectorAvx2)?,
        Kernel::BitvectorPortable => {
            model.set_batch_kernel(fraud_core::BatchKernel::BitVectorPortable)?
        }
    }
    let matrix = super::read_features(&a.io.input, &artifact)?;
    let rows = matrix.rows();
    if rows == 0 {
        anyhow::bail!("the input has no rows");
    }
    let pool = super::thread_pool(a.io.threads)?;
    let threads = pool.current_num_threads();
    let mut out = vec![0.0; rows];
    let mut best = f64::INFINITY;
    let mut checksum = 0.0;
    for _ in 0..a.passes {
        let start = Instant::now();
        pool.install(|| model.predict_proba_batch(&matrix.values, &mut out))?;
        let ns = start.elapsed().as_nanos() as f64 / rows as f64;
        best = best.min(ns);
        checksum = out.iter().sum::<f64>();
    }

    let single = a.single_rows.unwrap_or(200_000).min(rows);
    let mut times = Vec::with_capacity(single);
    let mut sink = 0.0;
    // One warm-up pass over the rows used, then the timed one.
    for r in 0..single.min(10_000) {
        sink += model.predict_proba(matrix.row(r))?;
    }
    for r in 0..single {
        let row = matrix.row(r);
        let start = Instant::now();
        let p = model.predict_proba(row)?;
        times.push(start.elapsed().as_nanos() as u64);
        sink += p;
    }
    times.sort_unstable();
    let report = serde_json::json!({
        "model": a.io.model.display().to_string(),
        "rows": rows,
        "features": model.num_features(),
        "trees": model.num_trees(),
        "threads": threads,
        "batch_passes": a.passes,
        "batch_kernel": format!("{:?}", model.batch_kernel()),
        "batch_kernel_costs": {
            "walk": model.batch_kernel_costs().0,
            "bitvector": model.batch_kernel_costs().1,
        },
        "batch_ns_per_row": (best * 10.0).round() / 10.0,
        "single_rows": single,
        "single_row_us_p50": percentile(&times, 0.50) / 1000.0,
        "single_row_us_p99": percentile(&times, 0.99) / 1000.0,
        "single_row_us_p999": percentile(&times, 0.999) / 1000.0,
        "score_checksum": checksum + std::hint::black_box(sink) * 0.0,
    });
    super::emit(&format!("{}\n", serde_json::to_string(&report)?))
}
