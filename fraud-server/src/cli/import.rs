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
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut artifact = match a.format {
        Format::Xgboost => xgboost::import_file(&a.input),
        Format::Lightgbm => lightgbm::import_file(&a.input),
    }
    .with_context(|| format!("cannot import {}", a.input.display()))?;
    artifact.metadata.description = a.description;
    artifact
        .save(&a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    let stats = artifact.ensemble.stats();
    super::emit(&format!(
        "imported {} trees over {} features from {} into {}\n",
        stats.trees,
        artifact.ensemble.num_features(),
        artifact.metadata.source,
        a.output.display()
    ))
}
