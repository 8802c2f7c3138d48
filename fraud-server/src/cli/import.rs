//! `fraud import`: XGBoost JSON / LightGBM text model -> model artifact.

use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;
use fraud_core::model::{lightgbm, xgboost};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// XGBoost JSON (`save_model("m.json")`), 2.x and 3.x.
    Xgboost,
    /// LightGBM text (`save_model("m.txt")`), 4.x.
    Lightgbm,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Format of the input model.
    #[arg(long, value_enum)]
    format: Format,
    /// The model file to import.
    input: PathBuf,
    /// Where to write the artifact.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// A description stored in the artifact's metadata.
    #[arg(long)]
    description: Option<String>,
    /// XGBoost: which boosting iterations to import. `best` (default): what XGBoost's
    /// `predict_proba` uses, up to `best_iteration` after early stopping; `all`; or
    /// `BEGIN:END` as XGBoost's `iteration_range` (END 0: to the last).
    #[arg(long, default_value = "best")]
    iterations: String,
}

fn parse_iterations(s: &str) -> anyhow::Result<xgboost::Iterations> {
    match s.trim() {
        "best" => Ok(xgboost::Iterations::Best),
        "all" => Ok(xgboost::Iterations::All),
        other => {
            let parsed = other
                .split_once(':')
                .and_then(|(b, e)| Some((b.trim().parse().ok()?, e.trim().parse().ok()?)));
            match parsed {
                Some((b, e)) => Ok(xgboost::Iterations::Range(b, e)),
                None => anyhow::bail!("--iterations `{other}`: expected best, all or BEGIN:END"),
            }
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut artifact = match a.format {
        Format::Xgboost => xgboost::import_file_with(&a.input, parse_iterations(&a.iterations)?),
        Format::Lightgbm => lightgbm::import_file(&a.input),
    }
    .with_context(|| format!("cannot import {}", a.input.display()))?;
    artifact.metadata.description = a.description;
    artifact
        .save(&a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    let stats = artifact.ensemble.stats();
    let which = artifact
        .metadata
        .attributes
        .get(xgboost::ITERATIONS_ATTRIBUTE)
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    super::emit(&format!(
        "imported {} trees{which} over {} features from {} into {}\n",
        stats.trees,
        artifact.ensemble.num_features(),
        artifact.metadata.source,
        a.output.display()
    ))
}
