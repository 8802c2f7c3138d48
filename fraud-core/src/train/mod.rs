//! Training: histogram gradient boosting of binary-logistic tree ensembles.
//!
//! Features are binned once (module `bins`), then every round computes gradients of the log-loss,
//! grows one tree leaf-wise on histograms (module `grow`) and adds it, shrunk by the learning rate.
//! Missing values learn their direction at every split; declared categorical features get
//! LightGBM-style set splits; monotone constraints bound leaf values; rows and features can be
//! subsampled with a seed; a validation set can stop training early and keep the best round.
//! The result is an ordinary [`Artifact`]: the same compiled model scores it, and its metadata
//! carries the parameters, row counts, validation metric and feature importance.
//!
//! Same data, same parameters and same seed give a bit-identical model, whatever the number
//! of threads. Run `train` inside a rayon pool to choose the thread count.

mod bins;
mod grow;
pub mod logistic;
mod params;

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

pub use params::{Metric, Params};

use crate::data::Matrix;
use crate::eval;
use crate::model::{Accumulation, Artifact, Ensemble, Feature, FeatureKind, Objective, Tree};
use bins::{BinMapper, Binned};

/// Rows sampled to place numeric bin boundaries.
const BIN_SAMPLE: usize = 200_000;

/// Why training could not run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A parameter is unknown or out of range.
    #[error("invalid parameter: {0}")]
    Param(String),
    /// The training or validation data is unusable.
    #[error("invalid {set} data: {detail}")]
    Data {
        /// `training` or `validation`.
        set: &'static str,
        /// What is wrong, naming the row or column.
        detail: String,
    },
    /// The trained model failed validation (a bug, reported rather than hidden).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}

/// Labelled rows for training or validation.
#[derive(Debug, Clone, Copy)]
pub struct Dataset<'a> {
    /// Feature values, row-major, with column names.
    pub features: &'a Matrix,
    /// 0 or 1 per row.
    pub labels: &'a [f64],
    /// Optional non-negative weight per row.
    pub weights: Option<&'a [f64]>,
}

/// One line of training progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Rounds done.
    pub iteration: usize,
    /// Rounds planned.
    pub total: usize,
    /// Seconds since training started.
    pub elapsed: f64,
    /// The validation metric after this round, when there is a validation set.
    pub valid_metric: Option<f64>,
}

/// Feature importance: splits and total gain per feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Importance {
    /// Feature name.
    pub feature: String,
    /// Number of splits on it.
    pub splits: u64,
    /// Sum of the gains of those splits.
    pub gain: f64,
}

/// The training distribution of every feature (for drift monitoring), by name.
pub fn references(data: &Dataset<'_>) -> serde_json::Value {
    let m = data.features.columns.len();
    let rows = data.features.rows();
    // One column per task.
    let refs: Vec<serde_json::Value> = (0..m)
        .into_par_iter()
        .map(|f| {
            let r = crate::eval::Reference::of((0..rows).map(|i| data.features.values[i * m + f]));
            serde_json::to_value(r).unwrap_or_default()
        })
        .collect();
    let out: serde_json::Map<String, serde_json::Value> =
        data.features.columns.iter().cloned().zip(refs).collect();
    serde_json::Value::Object(out)
}

/// What training produced.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The model, with metadata (parameters, rows, metric, importance).
    pub artifact: Artifact,
    /// Best round (1-based) on the validation set, when there was one.
    pub best_iteration: Option<usize>,
    /// Validation metric after every round.
    pub history: Vec<f64>,
    /// Importance, in feature order.
    pub importance: Vec<Importance>,
    /// Features with one value (or none) in the training data: kept in the model (its
    /// columns are the input's), never split on; also in the metadata's
    /// `training.constant_features`. Callers warn about them, as LightGBM does.
    pub constant_features: Vec<String>,
}

pub(crate) fn check_dataset(set: &'static str, d: &Dataset<'_>) -> Result<(), TrainError> {
    let err = |detail: String| TrainError::Data { set, detail };
    let rows = d.features.rows();
    if rows == 0 || d.features.columns.is_empty() {
        return Err(err("no rows".into()));
    }
    if d.labels.len() != rows {
        return Err(err(format!("{} labels for {rows} rows", d.labels.len())));
    }
    for (i, &y) in d.labels.iter().enumerate() {
        if y.is_nan() {
            return Err(err(format!("label at row {} is missing (NaN)", i + 1)));
        }
        if y != 0.0 && y != 1.0 {
            return Err(err(format!(
                "label at row {} is {y}; labels must be 0 or 1",
                i + 1
            )));
        }
    }
    if let Some(w) = d.weights {
        if w.len() != rows {
            return Err(err(format!("{} weights for {rows} rows", w.len())));
        }
        if let Some(i) = w.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(err(format!(
                "weight at row {} is {}; weights must be finite and non-negative",
                i + 1,
                w[i]
            )));
        }
    }
    Ok(())
}

/// A small seeded generator (SplitMix64) for bagging and feature sampling.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Trains a model. `categorical` names the columns to split as categories.
pub fn train(
    data: &Dataset<'_>,
    valid: Option<&Dataset<'_>>,
    categorical: &[String],
    params: &Params,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Trained, TrainError> {
    let start = Instant::now();
    check_dataset("training", data)?;
    let names = &data.features.columns;
    let nf = names.len();
    params.validate(nf)?;
    for c in categorical {
        if !names.contains(c) {
            return Err(TrainError::Param(format!(
                "categorical column `{c}` is not among the features"
            )));
        }
    }
    if let Some(v) = valid {
        check_dataset("validation", v)?;
        if &v.features.columns != names {
            return Err(TrainError::Data {
                set: "validation",
                detail: "its feature columns differ from the training data's".into(),
            });
        }
    }
    let n = data.features.rows();
    let x = &data.features.values;

    // Bin every feature.
    let is_cat: Vec<bool> = names.iter().map(|c| categorical.contains(c)).collect();
    // Bin boundaries come from an evenly spaced sample of at most BIN_SAMPLE rows (LightGBM's
    // bin_construct_sample_cnt); categories are counted over every row.
    let step = n.div_ceil(BIN_SAMPLE).max(1);
    let mappers: Vec<BinMapper> = (0..nf)
        .into_par_iter()
        .map(|f| {
            let col: Vec<f64> = if is_cat[f] {
                (0..n).map(|r| x[r * nf + f]).collect()
            } else {
                (0..n).step_by(step).map(|r| x[r * nf + f]).collect()
            };
            if is_cat[f] {
                BinMapper::categorical(&col, params.max_bin)
            } else {
                let m = BinMapper::numeric(&col, params.max_bin);
                if m.value_bins() < 2 && step > 1 {
                    // The sample saw one value; the full column may hold more.
                    let full: Vec<f64> = (0..n).map(|r| x[r * nf + f]).collect();
                    BinMapper::numeric(&full, params.max_bin)
                } else {
                    m
                }
            }
        })
        .collect();
    // Constant features (one value or all missing) are kept in the model and never split
    // on, as LightGBM does; the caller warns about them.
    let is_constant: Vec<bool> = mappers
        .iter()
        .map(|m| match m {
            BinMapper::Numeric { upper, .. } => upper.len() < 2,
            BinMapper::Categorical { codes, .. } => codes.len() < 2,
        })
        .collect();
    let constant: Vec<String> = names
        .iter()
        .zip(&is_constant)
        .filter(|(_, &c)| c)
        .map(|(n, _)| n.clone())
        .collect();
    let usable: Vec<usize> = (0..nf).filter(|&f| !is_constant[f]).collect();
    if usable.is_empty() {
        return Err(TrainError::Data {
            set: "training",
            detail: "every feature is constant (one value or all missing): nothing to learn from"
                .into(),
        });
    }
    let binned = Binned::new(x, nf, &mappers);
    let zero_bins: Vec<u8> = mappers.iter().map(|m| m.bin(0.0)).collect();
    let valid_binned = valid.map(|v| Binned::new(&v.features.values, nf, &mappers));
    let ctx = grow::Context {
        binned: &binned,
        mappers: &mappers,
        params,
        zero_bins: &zero_bins,
    };

    // Row weights, with scale_pos_weight on positives.
    let y = data.labels;
    let w: Vec<f64> = (0..n)
        .map(|r| {
            let base = data.weights.map_or(1.0, |w| w[r]);
            if y[r] == 1.0 {
                base * params.scale_pos_weight
            } else {
                base
            }
        })
        .collect();
    let wsum: f64 = w.iter().sum();
    let wpos: f64 = w
        .iter()
        .zip(y)
        .filter(|(_, &y)| y == 1.0)
        .map(|(w, _)| w)
        .sum();
    if wpos <= 0.0 || wpos >= wsum {
        return Err(TrainError::Data {
            set: "training",
            detail: "the labels need both classes (0 and 1) with positive weight".into(),
        });
    }
    let base_margin = if params.boost_from_average {
        let p = (wpos / wsum).clamp(1e-15, 1.0 - 1e-15);
        (p / (1.0 - p)).ln()
    } else {
        0.0
    };

    let mut score = vec![base_margin; n];
    let mut grad = vec![[0.0f32; 2]; n];
    let mut valid_score = valid.map(|v| vec![base_margin; v.features.rows()]);
    let mut trees: Vec<Tree> = Vec::with_capacity(params.num_rounds);
    let mut split_count = vec![0u64; nf];
    let mut split_gain = vec![0.0f64; nf];
    let mut per_tree_splits: Vec<Vec<(usize, f64)>> = Vec::new();
    let mut history = Vec::new();
    let mut best: Option<(usize, f64)> = None;
    let mut rng = Rng(params.seed ^ 0x5EED_F4A1_D5C0_4E00);
    let mut bag: Vec<u32> = (0..n as u32).collect();
    let bagging = params.bagging_freq > 0 && params.bagging_fraction < 1.0;
    let mut hist_pool = Vec::new();

    for it in 0..params.num_rounds {
        // Gradients of the log-loss.
        grad.par_iter_mut().enumerate().for_each(|(r, g)| {
            let p = sigmoid(score[r]);
            let wr = w[r];
            *g = [
                ((p - y[r]) * wr) as f32,
                ((p * (1.0 - p)).max(1e-16) * wr) as f32,
            ];
        });
        if bagging && it % params.bagging_freq == 0 {
            bag = (0..n as u32)
                .filter(|_| rng.unit() < params.bagging_fraction)
                .collect();
            if bag.is_empty() {
                bag.push(0);
            }
        }
        let features: Vec<usize> = if params.feature_fraction < 1.0 {
            let nu = usable.len();
            let k = ((nu as f64 * params.feature_fraction).round() as usize).clamp(1, nu);
            let mut all = usable.clone();
            for i in 0..k {
                let j = i + (rng.next() % (nu - i) as u64) as usize;
                all.swap(i, j);
            }
            let mut chosen = all[..k].to_vec();
            chosen.sort_unstable();
            chosen
        } else {
            usable.clone()
        };

        let grown = ctx.grow(bag.clone(), &grad, &features, &mut hist_pool);
        // Update training scores: rows in the bag by their leaf, the rest by routing.
        let mut seen = if bagging { vec![false; n] } else { Vec::new() };
        for (node, rows) in &grown.leaf_rows {
            if let crate::model::Node::Leaf { value, .. } = grown.tree.nodes[*node] {
                for &r in &grown.order[rows.clone()] {
                    score[r as usize] += value;
                    if bagging {
                        seen[r as usize] = true;
                    }
                }
            }
        }
        if bagging {
            score.par_iter_mut().enumerate().for_each(|(r, s)| {
                if !seen[r] {
                    *s += ctx.route(&grown, &binned, r);
                }
            });
        }
        for &(f, g) in &grown.splits {
            split_count[f] += 1;
            split_gain[f] += g;
        }
        per_tree_splits.push(grown.splits.clone());

        let mut metric = None;
        if let (Some(v), Some(vs), Some(vb)) = (valid, valid_score.as_mut(), valid_binned.as_ref())
        {
            vs.par_iter_mut().enumerate().for_each(|(r, s)| {
                *s += ctx.route(&grown, vb, r);
            });
            let probs: Vec<f64> = vs.iter().map(|&m| sigmoid(m)).collect();
            let m = match params.metric {
                Metric::Auc => eval::roc_auc(&probs, v.labels, v.weights),
                Metric::LogLoss => eval::log_loss(&probs, v.labels, v.weights),
            }
            .map_err(|e| TrainError::Data {
                set: "validation",
                detail: e.to_string(),
            })?;
            history.push(m);
            let better = match (best, params.metric) {
                (None, _) => true,
                (Some((_, b)), Metric::Auc) => m > b,
                (Some((_, b)), Metric::LogLoss) => m < b,
            };
            if better {
                best = Some((it, m));
            }
            metric = Some(m);
        }
        trees.push(grown.tree);
        progress(&Progress {
            iteration: it + 1,
            total: params.num_rounds,
            elapsed: start.elapsed().as_secs_f64(),
            valid_metric: metric,
        });
        if let Some((b, _)) = best {
            if params.early_stopping_rounds > 0 && it - b >= params.early_stopping_rounds {
                break;
            }
        }
    }

    // Keep the best round when a validation set watched training.
    let best_iteration = best.map(|(b, _)| b + 1);
    if let (Some(b), true) = (best_iteration, params.early_stopping_rounds > 0) {
        trees.truncate(b);
        split_count = vec![0; nf];
        split_gain = vec![0.0; nf];
        for splits in per_tree_splits.iter().take(b) {
            for &(f, g) in splits {
                split_count[f] += 1;
                split_gain[f] += g;
            }
        }
    }

    let features = names
        .iter()
        .zip(&is_cat)
        .map(|(name, &c)| Feature {
            name: name.clone(),
            kind: if c {
                FeatureKind::Categorical
            } else {
                FeatureKind::Numeric
            },
        })
        .collect();
    let ensemble = Ensemble {
        features,
        trees,
        base_margin,
        objective: Objective::Logistic { scale: 1.0 },
        accumulation: Accumulation::F64,
        average_output: false,
        linear: None,
    };
    ensemble.validate()?;
    let importance: Vec<Importance> = names
        .iter()
        .enumerate()
        .map(|(f, name)| Importance {
            feature: name.clone(),
            splits: split_count[f],
            gain: split_gain[f],
        })
        .collect();
    let mut artifact = Artifact::new(
        ensemble,
        format!("fraud-core {}", env!("CARGO_PKG_VERSION")),
    );
    artifact.metadata.training = Some(serde_json::json!({
        "algorithm": "gbdt",
        "params": params,
        "categorical": categorical,
        "rows": n,
        "positives": y.iter().filter(|&&v| v == 1.0).count(),
        "constant_features": constant,
        "valid_rows": valid.map(|v| v.features.rows()),
        "trees": artifact.ensemble.trees.len(),
        "best_iteration": best_iteration,
        "valid_metric": best.map(|(_, m)| serde_json::json!({
            "name": match params.metric { Metric::Auc => "auc", Metric::LogLoss => "binary_logloss" },
            "value": m,
        })),
        "importance": importance,
        "reference": references(data),
        // Left out of reproducible builds: the only value that changes from run to run.
        "seconds": crate::model::reproducible_epoch()
            .is_none()
            .then(|| start.elapsed().as_secs_f64()),
    }));
    Ok(Trained {
        artifact,
        best_iteration,
        history,
        importance,
        constant_features: constant,
    })
}
