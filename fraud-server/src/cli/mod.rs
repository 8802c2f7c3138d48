//! Subcommands of the `fraud` tool.

mod audit;
mod backtest;
mod bench;
#[cfg(feature = "simulator")]
mod convert;
mod evaluate;
mod features;
#[cfg(feature = "simulator")]
mod generate;
mod import;
mod inspect;
mod keys;
mod predict;
#[cfg(feature = "charts")]
mod report;
mod state;
mod train;
mod users;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fraud_core::model::Artifact;
use fraud_core::pii::Tokenizer;
use fraud_core::table::{Columnar, Format};

/// Real-time transaction fraud scoring: models, prediction, benchmarks.
#[derive(Debug, Parser)]
#[command(name = "fraud", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert an XGBoost JSON or LightGBM text model into a model artifact.
    Import(import::Args),
    /// Score a file of features (CSV, Parquet or Arrow) with a model; writes one probability per row.
    Predict(predict::Args),
    /// Print a model's metadata and shape.
    Inspect(inspect::Args),
    /// Measure batch and single-row prediction speed on a file of features.
    Bench(bench::Args),
    /// Train a model from a labelled file (CSV, Parquet or Arrow).
    Train(train::Args),
    /// Print a model's metrics (ROC-AUC, average precision, ...) on a labelled file.
    Evaluate(evaluate::Args),
    /// Compute, offline, the features of every transaction of a history (point in time).
    Features(features::Args),
    /// Replay a history through a model and a policy: the decisions, what they catch, per
    /// rule and per day, against a baseline.
    Backtest(backtest::Args),
    /// Generate synthetic card transactions with labelled fraud scenarios.
    #[cfg(feature = "simulator")]
    Generate(generate::Args),
    /// Convert a public data set (ULB creditcard.csv, PaySim, Sparkov) into the project's CSV.
    #[cfg(feature = "simulator")]
    Convert(convert::Args),
    /// Write an evaluation report (SVG charts and a Markdown summary) for a labelled file.
    #[cfg(feature = "charts")]
    Report(report::Args),
    /// Run the scoring service (with no configuration: 127.0.0.1:8080, the demo model,
    /// durable state under ./fraud-data, a development API key).
    Serve(crate::server::Args),
    /// Verify the decision log's hash chain, print its head, review access.
    Audit(audit::Args),
    /// Maintain the entity state (rebuild Redis from the decision log).
    State(state::Args),
    /// Create, list and revoke API keys.
    Keys(keys::Args),
    /// Create, list, disable and enable review-console users.
    Users(users::Args),
}

/// The model, the file it reads and the worker threads: shared by predict, bench, evaluate.
#[derive(Debug, clap::Args)]
pub struct ModelInput {
    /// The model artifact.
    #[arg(long)]
    pub model: PathBuf,
    /// Features: CSV with a header, or Parquet (`.parquet`) or Arrow IPC (`.arrow`,
    /// `.feather`) by extension, naming the model's features (any order; extra columns ignored).
    #[arg(long)]
    pub input: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelInput {
    /// Loads the model and compiles it.
    fn load(&self) -> anyhow::Result<(Artifact, fraud_core::CompiledModel)> {
        let artifact = load_model(&self.model)?;
        let model = fraud_core::CompiledModel::new(&artifact.ensemble)?;
        Ok((artifact, model))
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Import(a) => import::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Features(a) => features::run(a),
        Command::Backtest(a) => backtest::run(a),
        #[cfg(feature = "simulator")]
        Command::Generate(a) => generate::run(a),
        #[cfg(feature = "simulator")]
        Command::Convert(a) => convert::run(a),
        #[cfg(feature = "charts")]
        Command::Report(a) => report::run(a),
        Command::Serve(a) => crate::server::run(a),
        Command::Audit(a) => audit::run(a),
        Command::State(a) => state::run(a),
        Command::Keys(a) => keys::run(a),
        Command::Users(a) => users::run(a),
    }
}

/// Writes `text` to standard output (errors, such as a closed pipe, are returned).
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Loads a model artifact, naming the file on error.
fn load_model(path: &PathBuf) -> anyhow::Result<Artifact> {
    Artifact::load(path).with_context(|| format!("cannot load model {}", path.display()))
}

/// A rayon pool with `threads` workers (all cores when `None`).
fn thread_pool(threads: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    if threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .context("cannot start worker threads")
}

/// Reads the model's feature columns from a CSV, Parquet or Arrow file.
fn read_features(path: &Path, artifact: &Artifact) -> anyhow::Result<fraud_core::data::Matrix> {
    let names = artifact.ensemble.feature_names();
    // Categorical features with stored categories are read by value.
    read_matrix(path, &names, &artifact.metadata.category_codes())
}

/// The column names of a CSV file's header or a Parquet / Arrow file's schema.
pub(crate) fn header_of(path: &Path) -> anyhow::Result<Vec<String>> {
    let read = || -> anyhow::Result<Vec<String>> {
        if Format::of(path).is_columnar() {
            return Ok(Columnar::header_of(path)?);
        }
        let file = std::fs::File::open(path)?;
        Ok(fraud_core::data::read_csv_header(file)?)
    };
    read().with_context(|| format!("cannot read {}", path.display()))
}

/// The columns `wanted` of a CSV, Parquet or Arrow file as a matrix (categorical columns by
/// value through `categories`).
pub(crate) fn read_matrix(
    path: &Path,
    wanted: &[&str],
    categories: &std::collections::BTreeMap<String, std::collections::HashMap<String, f64>>,
) -> anyhow::Result<fraud_core::data::Matrix> {
    let read = || -> anyhow::Result<fraud_core::data::Matrix> {
        if Format::of(path).is_columnar() {
            return Ok(Columnar::open(path)?.matrix(wanted, categories)?);
        }
        let file = std::fs::File::open(path)?;
        Ok(fraud_core::data::read_csv_with_categories(
            std::io::BufReader::with_capacity(1 << 20, file),
            wanted,
            categories,
        )?)
    };
    read().with_context(|| format!("cannot read {}", path.display()))
}

/// The named columns of a CSV, Parquet or Arrow file as text, column by column.
pub(crate) fn read_text(path: &Path, names: &[String]) -> anyhow::Result<Vec<Vec<String>>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    if Format::of(path).is_columnar() {
        let read = || -> anyhow::Result<Vec<Vec<String>>> {
            Ok(Columnar::open(path)?.text_columns(names)?)
        };
        return read().with_context(|| format!("cannot read {}", path.display()));
    }
    evaluate::read_text_columns(path, names)
}

/// The transactions of a history file (CSV, Parquet or Arrow), validated with `opts`.
pub(crate) fn read_history(
    path: &Path,
    tokenizer: &Tokenizer,
    opts: &fraud_core::transaction::HistoryOptions,
) -> anyhow::Result<fraud_core::transaction::History> {
    let read = || -> anyhow::Result<fraud_core::transaction::History> {
        if Format::of(path).is_columnar() {
            return Ok(Columnar::open(path)?.history(tokenizer, opts)?);
        }
        let file = std::fs::File::open(path)?;
        Ok(fraud_core::transaction::read_history_with(
            std::io::BufReader::with_capacity(1 << 20, file),
            tokenizer,
            opts,
        )?)
    };
    read().with_context(|| format!("cannot read {}", path.display()))
}

/// The tokenization key: from `key_file`, else FRAUD_TOKENIZATION_KEY (hex), else a one-off
/// random key (tokens then only compare within this run).
pub(crate) fn tokenizer(key_file: Option<&std::path::Path>) -> anyhow::Result<Tokenizer> {
    if let Some(p) = key_file {
        let key =
            std::fs::read(p).with_context(|| format!("cannot read key file {}", p.display()))?;
        return Tokenizer::new(&key).context("tokenization key");
    }
    if let Ok(text) = std::env::var("FRAUD_TOKENIZATION_KEY") {
        let key = zeroize::Zeroizing::new(
            fraud_core::hex::decode(&text).context("FRAUD_TOKENIZATION_KEY must be hexadecimal")?,
        );
        return Tokenizer::new(&key).context("FRAUD_TOKENIZATION_KEY");
    }
    // A one-off key from the operating system's generator: tokens stay inside this process.
    Ok(Tokenizer::one_off()?)
}

/// A command-line time: RFC 3339, or a day (`YYYY-MM-DD`, its midnight UTC). `flag` names
/// the option in the error.
fn day_or_time(flag: &str, s: &str) -> anyhow::Result<time::OffsetDateTime> {
    let rfc = time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &rfc) {
        return Ok(t);
    }
    let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .with_context(|| format!("{flag} `{s}` is neither YYYY-MM-DD nor an RFC 3339 time"))?;
    Ok(d.midnight().assume_utc())
}
