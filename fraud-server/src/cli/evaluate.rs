//! `fraud evaluate`: a model's metrics on a labelled CSV file, as one JSON object.

use std::path::PathBuf;

use fraud_core::CompiledModel;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model artifact.
    #[arg(long)]
    model: PathBuf,
    /// Labelled CSV with the model's feature columns.
    #[arg(long)]
    input: PathBuf,
    /// Column holding the 0/1 label.
    #[arg(long)]
    label: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let artifact = super::load_model(&a.model)?;
    let model = CompiledModel::new(&artifact.ensemble)?;
    let names: Vec<String> = artifact
        .ensemble
        .feature_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let data = super::train::read_labelled(&a.input, &names, &a.label, None)?;
    let mut probs = vec![0.0; data.labels.len()];
    super::thread_pool(a.threads)?
        .install(|| model.predict_proba_batch(&data.features.values, &mut probs))?;
    let report = fraud_core::eval::report(&probs, &data.labels)?;
    super::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
}
