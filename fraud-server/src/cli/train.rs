//! `fraud train`: train a model from a CSV file of features and a label column.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;
use fraud_core::data::Matrix;
use fraud_core::train::{self, Dataset, Params, Progress};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Algorithm {
    /// Histogram gradient-boosted trees (the default).
    Gbdt,
    /// Logistic regression (smartcore), the baseline that shows what the trees add.
    Logistic,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training data, one row per example: CSV with a header, or Parquet (`.parquet`) or
    /// Arrow IPC (`.arrow`, `.feather`) by extension.
    #[arg(long)]
    input: PathBuf,
    /// Column holding the 0/1 label.
    #[arg(long)]
    label: String,
    /// Validation data with the same columns (enables early stopping and the metric).
    #[arg(long)]
    valid: Option<PathBuf>,
    /// Comma-separated columns to split as categories.
    #[arg(long, value_delimiter = ',')]
    categorical: Vec<String>,
    /// Column holding a non-negative weight per row.
    #[arg(long)]
    weight: Option<String>,
    /// Comma-separated columns that are not features (ids, timestamps, ...).
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// Only these feature columns (comma-separated); default: every column that is not the
    /// label, the weight or excluded.
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// A training parameter, LightGBM-named (repeatable): `--param num_leaves=63`.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Training algorithm.
    #[arg(long, value_enum, default_value = "gbdt")]
    algorithm: Algorithm,
    /// The feature spec (TOML) that produced the input's features (`fraud features`), stored
    /// in the model so scoring computes the same features.
    #[arg(long)]
    feature_spec: Option<PathBuf>,
    /// Where to write the model artifact.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

/// Features, labels and weights of one file.
pub(crate) struct Labelled {
    pub features: Matrix,
    pub labels: Vec<f64>,
    pub weights: Option<Vec<f64>>,
}

/// Reads `label` (and `weight`) plus the given feature columns from `path`.
pub(crate) fn read_labelled(
    path: &std::path::Path,
    features: &[String],
    label: &str,
    weight: Option<&str>,
) -> anyhow::Result<Labelled> {
    let mut wanted: Vec<&str> = features.iter().map(String::as_str).collect();
    wanted.push(label);
    if let Some(w) = weight {
        wanted.push(w);
    }
    let m = super::read_matrix(path, &wanted, &Default::default())?;
    let width = wanted.len();
    let nf = features.len();
    let rows = m.rows();
    if rows == 0 {
        anyhow::bail!("{} has a header but no rows", path.display());
    }
    let mut values = Vec::with_capacity(rows * nf);
    let mut labels = Vec::with_capacity(rows);
    let mut weights = weight.map(|_| Vec::with_capacity(rows));
    for r in 0..rows {
        let row = &m.values[r * width..(r + 1) * width];
        values.extend_from_slice(&row[..nf]);
        labels.push(row[nf]);
        if let Some(w) = weights.as_mut() {
            w.push(row[nf + 1]);
        }
    }
    Ok(Labelled {
        features: Matrix {
            columns: features.to_vec(),
            values,
        },
        labels,
        weights,
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let header = super::header_of(&a.input)?;
    if !header.contains(&a.label) {
        anyhow::bail!(
            "label column `{}` is not in the header of {}",
            a.label,
            a.input.display()
        );
    }
    for c in a.exclude.iter().chain(a.weight.iter()) {
        if !header.contains(c) {
            anyhow::bail!("column `{c}` is not in the header of {}", a.input.display());
        }
    }
    for c in &a.features {
        if !header.contains(c) {
            anyhow::bail!(
                "--features: column `{c}` is not in the header of {}",
                a.input.display()
            );
        }
    }
    let features: Vec<String> = header
        .iter()
        .filter(|h| **h != a.label && Some(*h) != a.weight.as_ref() && !a.exclude.contains(h))
        .filter(|h| a.features.is_empty() || a.features.contains(h))
        .cloned()
        .collect();
    if features.is_empty() {
        anyhow::bail!(
            "{} has no feature columns besides the label",
            a.input.display()
        );
    }
    let params = Params::from_pairs(a.params.iter().map(String::as_str))?;
    // The spec is checked before training: every feature must be one it produces.
    let spec = match &a.feature_spec {
        None => None,
        Some(p) => {
            let spec = fraud_core::features::FeatureSpec::from_toml(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            )?;
            let names = fraud_core::features::Extractor::new(spec.clone())?
                .names()
                .to_vec();
            if let Some(missing) = features.iter().find(|n| !names.contains(n)) {
                anyhow::bail!(
                    "feature `{missing}` of the training data is not produced by the spec {}",
                    p.display()
                );
            }
            Some(spec)
        }
    };
    let train_set = read_labelled(&a.input, &features, &a.label, a.weight.as_deref())?;
    let valid_set = a
        .valid
        .as_ref()
        .map(|p| read_labelled(p, &features, &a.label, a.weight.as_deref()))
        .transpose()?;
    let pool = super::thread_pool((params.threads > 0).then_some(params.threads))?;
    let tty = std::io::stderr().is_terminal();
    let mut report = |p: &Progress| {
        let metric = p
            .valid_metric
            .map(|m| format!("  valid {m:.6}"))
            .unwrap_or_default();
        if tty {
            let width = 30;
            let done = width * p.iteration / p.total.max(1);
            eprint!(
                "\r[{}{}] {}/{}  {:.1}s{}   ",
                "#".repeat(done),
                " ".repeat(width - done),
                p.iteration,
                p.total,
                p.elapsed,
                metric
            );
        } else if p.iteration.is_multiple_of(10) || p.iteration == p.total || p.iteration == 1 {
            eprintln!(
                "iteration {}/{}  elapsed {:.1}s{}",
                p.iteration, p.total, p.elapsed, metric
            );
        }
    };
    let trained = pool.install(|| match a.algorithm {
        Algorithm::Logistic => train::logistic::train_logistic(
            &Dataset {
                features: &train_set.features,
                labels: &train_set.labels,
                weights: train_set.weights.as_deref(),
            },
            &params,
        ),
        Algorithm::Gbdt => train::train(
            &Dataset {
                features: &train_set.features,
                labels: &train_set.labels,
                weights: train_set.weights.as_deref(),
            },
            valid_set
                .as_ref()
                .map(|v| Dataset {
                    features: &v.features,
                    labels: &v.labels,
                    weights: v.weights.as_deref(),
                })
                .as_ref(),
            &a.categorical,
            &params,
            &mut report,
        ),
    })?;
    if tty {
        eprintln!();
    }
    if !trained.constant_features.is_empty() {
        eprintln!(
            "warning: {} constant feature(s) (one value or all missing in the training data), kept in the model and never split on: {}",
            trained.constant_features.len(),
            trained.constant_features.join(", ")
        );
    }
    let mut trained = trained;
    trained.artifact.metadata.feature_spec = spec;
    trained
        .artifact
        .save(&a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    let best = trained
        .best_iteration
        .map(|b| format!(", best iteration {b}"))
        .unwrap_or_default();
    let what = match a.algorithm {
        Algorithm::Gbdt => format!("{} trees", trained.artifact.ensemble.trees.len()),
        Algorithm::Logistic => "a logistic regression".to_string(),
    };
    super::emit(&format!(
        "trained {what} on {} rows{best} into {}\n",
        train_set.labels.len(),
        a.output.display()
    ))
}
