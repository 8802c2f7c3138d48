//! `fraud predict`: score a CSV file of features, one probability per row.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    io: super::ModelInput,
    /// Where to write the scores (standard output when absent).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Also write a `margin` column (the raw score before the sigmoid).
    #[arg(long)]
    margin: bool,
    /// Also write, to this CSV, the source-library leaf id reached in every tree.
    #[arg(long)]
    leaves: Option<PathBuf>,
    /// Also write, to this CSV, each row's TreeSHAP contributions: one column per feature
    /// (named as the model's features), then `bias`; they sum to the margin.
    #[arg(long)]
    contributions: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (artifact, model) = a.io.load()?;
    let matrix = super::read_features(&a.io.input, &artifact)?;
    let rows = matrix.rows();
    let mut margins = vec![0.0; rows];
    super::thread_pool(a.io.threads)?
        .install(|| model.predict_margin_batch(&matrix.values, &mut margins))?;

    let sink: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, sink);
    if a.margin {
        writeln!(out, "score,margin")?;
        for m in &margins {
            writeln!(out, "{},{}", model.probability(*m), m)?;
        }
    } else {
        writeln!(out, "score")?;
        for m in &margins {
            writeln!(out, "{}", model.probability(*m))?;
        }
    }
    out.flush().context("cannot write scores")?;

    if let Some(path) = &a.leaves {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let header: Vec<String> = (0..model.num_trees())
            .map(|t| format!("tree_{t}"))
            .collect();
        writeln!(out, "{}", header.join(","))?;
        for r in 0..rows {
            let leaves = model.predict_leaves(matrix.row(r))?;
            let line: Vec<String> = leaves.iter().map(u32::to_string).collect();
            writeln!(out, "{}", line.join(","))?;
        }
        out.flush().context("cannot write leaves")?;
    }
    if let Some(path) = &a.contributions {
        let explainer = fraud_core::model::Explainer::new(&artifact.ensemble)
            .context("cannot explain this model")?;
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let mut header: Vec<String> = artifact
            .ensemble
            .feature_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        header.push("bias".to_string());
        writeln!(out, "{}", header.join(","))?;
        let mut phi = vec![0.0; explainer.width()];
        for r in 0..rows {
            explainer.contributions(matrix.row(r), &mut phi)?;
            let line: Vec<String> = phi.iter().map(f64::to_string).collect();
            writeln!(out, "{}", line.join(","))?;
        }
        out.flush().context("cannot write contributions")?;
    }
    Ok(())
}
