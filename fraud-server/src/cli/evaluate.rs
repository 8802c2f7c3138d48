//! `fraud evaluate`: a model's metrics on a labelled CSV file, as one JSON object.

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    io: super::ModelInput,
    /// Column holding the 0/1 label.
    #[arg(long)]
    label: String,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (artifact, model) = a.io.load()?;
    let names: Vec<String> = artifact
        .ensemble
        .feature_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let data = super::train::read_labelled(&a.io.input, &names, &a.label, None)?;
    let mut probs = vec![0.0; data.labels.len()];
    super::thread_pool(a.io.threads)?
        .install(|| model.predict_proba_batch(&data.features.values, &mut probs))?;
    let report = fraud_core::eval::report(&probs, &data.labels)?;
    super::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
}
