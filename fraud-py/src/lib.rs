//! `fraudscore._fraudscore`: the native half of the Python package. The Python modules in
//! `python/fraudscore/` wrap it (DataFrames, names, docstrings); this file maps numpy arrays
//! to the engine without copying where their layout allows, releases the GIL while the
//! engine works, and turns every engine error into a Python exception of a fitting type.

use std::path::PathBuf;

use fraud_core::model::{Artifact, CompiledModel, Explainer};
use numpy::ndarray::{Array2, ArrayView2, Axis};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A model artifact, compiled for prediction.
#[pyclass(name = "_Model", module = "fraudscore._fraudscore", frozen)]
struct PyModel {
    artifact: Artifact,
    compiled: CompiledModel,
    explainer: std::sync::OnceLock<Result<Explainer, String>>,
}

/// Rows of a 2-D float array, whatever its dtype (float64 or float32) and order.
enum Rows<'py> {
    F64(PyReadonlyArray2<'py, f64>),
    F32(PyReadonlyArray2<'py, f32>),
}

impl<'py> Rows<'py> {
    fn extract(x: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f64>>() {
            return Ok(Rows::F64(a));
        }
        if let Ok(a) = x.extract::<PyReadonlyArray2<'py, f32>>() {
            return Ok(Rows::F32(a));
        }
        Err(PyTypeError::new_err(
            "X must be a 2-D numpy array of float64 or float32",
        ))
    }

    fn shape(&self) -> (usize, usize) {
        let s = match self {
            Rows::F64(a) => a.as_array().shape().to_vec(),
            Rows::F32(a) => a.as_array().shape().to_vec(),
        };
        (s[0], s[1])
    }
}

/// Calls `f` with blocks of contiguous float64 rows: the array itself when it is C-ordered
/// float64, otherwise copies of at most 4,096 rows.
fn with_blocks<T: Copy + Into<f64> + Send + Sync>(
    view: ArrayView2<'_, T>,
    mut f: impl FnMut(usize, &[f64]) -> Result<(), String>,
) -> Result<(), String> {
    let m = view.ncols();
    let mut buf = Vec::with_capacity(4096 * m);
    let mut start = 0;
    for block in view.axis_chunks_iter(Axis(0), 4096) {
        buf.clear();
        for row in block.rows() {
            buf.extend(row.iter().map(|&v| v.into()));
        }
        f(start, &buf)?;
        start += block.nrows();
    }
    Ok(())
}

impl PyModel {
    fn new(artifact: Artifact) -> PyResult<Self> {
        let compiled = CompiledModel::new(&artifact.ensemble).map_err(value_err)?;
        Ok(PyModel {
            artifact,
            compiled,
            explainer: std::sync::OnceLock::new(),
        })
    }

    fn check_width(&self, cols: usize) -> PyResult<()> {
        let m = self.compiled.num_features();
        if cols != m {
            return Err(PyValueError::new_err(format!(
                "X has {cols} columns; the model has {m} features"
            )));
        }
        Ok(())
    }

    /// Margins of every row.
    fn margins(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
        let rows = Rows::extract(x)?;
        let (n, m) = rows.shape();
        self.check_width(m)?;
        let mut out = vec![0.0; n];
        let model = &self.compiled;
        let result = match &rows {
            Rows::F64(a) => {
                let view = a.as_array();
                match view.as_slice() {
                    // A few rows: no thread pool, no GIL release; the call is the cost.
                    Some(all) if n <= 64 => model
                        .predict_margin_batch_serial(all, &mut out)
                        .map_err(|e| e.to_string()),
                    // C-ordered float64: read in place.
                    Some(all) => py.allow_threads(|| {
                        model
                            .predict_margin_batch(all, &mut out)
                            .map_err(|e| e.to_string())
                    }),
                    None => py.allow_threads(|| {
                        with_blocks(view, |start, block| {
                            let k = block.len() / m.max(1);
                            model
                                .predict_margin_batch(block, &mut out[start..start + k])
                                .map_err(|e| e.to_string())
                        })
                    }),
                }
            }
            Rows::F32(a) => {
                let view = a.as_array();
                py.allow_threads(|| {
                    with_blocks(view, |start, block| {
                        let k = block.len() / m.max(1);
                        model
                            .predict_margin_batch(block, &mut out[start..start + k])
                            .map_err(|e| e.to_string())
                    })
                })
            }
        };
        result.map_err(value_err)?;
        Ok(out)
    }
}

#[pymethods]
impl PyModel {
    /// Loads a model artifact file.
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        if !path.exists() {
            return Err(PyFileNotFoundError::new_err(format!(
                "no model file at {}",
                path.display()
            )));
        }
        let artifact = Artifact::load(&path).map_err(|e| {
            PyValueError::new_err(format!("{} is not a valid model: {e}", path.display()))
        })?;
        PyModel::new(artifact)
    }

    /// A model from the bytes of an artifact.
    #[staticmethod]
    fn from_bytes(bytes: &[u8]) -> PyResult<Self> {
        let artifact = Artifact::from_bytes(bytes)
            .map_err(|e| PyValueError::new_err(format!("not a valid model: {e}")))?;
        PyModel::new(artifact)
    }

    /// Imports an XGBoost JSON model (the bytes of `save_raw("json")` or a `.json` file):
    /// the iterations `predict_proba` uses (up to `best_iteration` after early stopping), or
    /// `iteration_range` as XGBoost reads it (`(0, 0)`: every iteration).
    #[staticmethod]
    #[pyo3(signature = (bytes, iteration_range = None))]
    fn from_xgboost_json(bytes: &[u8], iteration_range: Option<(usize, usize)>) -> PyResult<Self> {
        let iterations = match iteration_range {
            None => fraud_core::model::xgboost::Iterations::Best,
            Some((b, e)) => fraud_core::model::xgboost::Iterations::Range(b, e),
        };
        let artifact = fraud_core::model::xgboost::import_bytes_with(bytes, iterations)
            .map_err(|e| PyValueError::new_err(format!("cannot import the XGBoost model: {e}")))?;
        PyModel::new(artifact)
    }

    /// Imports a LightGBM text model (`model_to_string()` or a `.txt` file).
    #[staticmethod]
    fn from_lightgbm_text(text: &str) -> PyResult<Self> {
        let artifact = fraud_core::model::lightgbm::import_str(text)
            .map_err(|e| PyValueError::new_err(format!("cannot import the LightGBM model: {e}")))?;
        PyModel::new(artifact)
    }

    /// The model of its first `n` trees (predicting at an iteration: each round adds one
    /// tree to these models).
    fn first_trees(&self, n: usize) -> PyResult<Self> {
        let total = self.artifact.ensemble.trees.len();
        if n == 0 || n > total {
            return Err(PyValueError::new_err(format!(
                "the model has {total} trees; cannot keep the first {n}"
            )));
        }
        let mut artifact = self.artifact.clone();
        artifact.ensemble.trees.truncate(n);
        PyModel::new(artifact)
    }

    /// Writes the artifact.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.artifact
            .save(&path)
            .map_err(|e| PyOSError::new_err(format!("cannot write {}: {e}", path.display())))
    }

    /// The artifact's bytes.
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.artifact.to_bytes().map_err(value_err)?;
        Ok(PyBytes::new(py, &b))
    }

    /// Feature names, in column order.
    #[getter]
    fn feature_names(&self) -> Vec<String> {
        self.artifact
            .ensemble
            .feature_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Categorical features, by name.
    #[getter]
    fn categorical_features(&self) -> Vec<String> {
        self.artifact
            .ensemble
            .features
            .iter()
            .filter(|f| !matches!(f.kind, fraud_core::model::FeatureKind::Numeric))
            .map(|f| f.name.clone())
            .collect()
    }

    /// The metadata, as JSON.
    #[getter]
    fn metadata_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.artifact.metadata).map_err(value_err)
    }

    /// The same model carrying `spec` (feature spec TOML) in its metadata, so that the
    /// service computes the features it expects. Every feature of the model must be one the
    /// spec produces.
    fn with_feature_spec(&self, spec: &str) -> PyResult<Self> {
        let spec = fraud_core::features::FeatureSpec::from_toml(spec).map_err(value_err)?;
        let produced = fraud_core::features::Extractor::new(spec.clone())
            .map_err(value_err)?
            .names()
            .to_vec();
        if let Some(missing) = self
            .artifact
            .ensemble
            .features
            .iter()
            .find(|f| !produced.contains(&f.name))
        {
            return Err(PyValueError::new_err(format!(
                "the model's feature `{}` is not produced by the feature spec",
                missing.name
            )));
        }
        let mut artifact = self.artifact.clone();
        artifact.metadata.feature_spec = Some(spec);
        PyModel::new(artifact)
    }

    /// The same model with `categories` (JSON: feature name -> categories in code order)
    /// stored for scoring by value. Every named feature must be a categorical one.
    fn with_categories(&self, categories: &str) -> PyResult<Self> {
        let cats: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
            serde_json::from_str(categories).map_err(value_err)?;
        for name in cats.keys() {
            let f = self
                .artifact
                .ensemble
                .features
                .iter()
                .find(|f| &f.name == name)
                .ok_or_else(|| PyValueError::new_err(format!("no feature `{name}`")))?;
            if f.kind != fraud_core::model::FeatureKind::Categorical {
                return Err(PyValueError::new_err(format!(
                    "feature `{name}` is not categorical"
                )));
            }
        }
        let mut artifact = self.artifact.clone();
        artifact.metadata.categories = cats;
        PyModel::new(artifact)
    }

    /// Number of trees.
    #[getter]
    fn num_trees(&self) -> usize {
        self.compiled.num_trees()
    }

    /// Raw margins of a 2-D float array.
    fn predict_margin<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        Ok(self.margins(py, x)?.into_pyarray(py))
    }

    /// Probabilities of a 2-D float array.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let mut m = self.margins(py, x)?;
        for v in &mut m {
            *v = self.compiled.probability(*v);
        }
        Ok(m.into_pyarray(py))
    }

    /// TreeSHAP contributions: one column per feature, then the bias (they sum to the margin).
    fn explain<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let rows = Rows::extract(x)?;
        let (n, m) = rows.shape();
        self.check_width(m)?;
        let explainer = self
            .explainer
            .get_or_init(|| Explainer::new(&self.artifact.ensemble).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| PyValueError::new_err(format!("cannot explain this model: {e}")))?;
        let mut out = Array2::<f64>::zeros((n, m + 1));
        let fill = |out: &mut Array2<f64>, start: usize, block: &[f64]| -> Result<(), String> {
            for (i, row) in block.chunks_exact(m.max(1)).enumerate() {
                let mut target = out.row_mut(start + i);
                let slice = target
                    .as_slice_mut()
                    .ok_or_else(|| "output is not contiguous".to_string())?;
                explainer
                    .contributions(row, slice)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        };
        let result = match &rows {
            Rows::F64(a) => {
                let view = a.as_array();
                py.allow_threads(|| with_blocks(view, |s, b| fill(&mut out, s, b)))
            }
            Rows::F32(a) => {
                let view = a.as_array();
                py.allow_threads(|| with_blocks(view, |s, b| fill(&mut out, s, b)))
            }
        };
        result.map_err(value_err)?;
        Ok(out.into_pyarray(py))
    }
}

fn vec1(a: &PyReadonlyArray1<'_, f64>) -> Vec<f64> {
    a.as_array().iter().copied().collect()
}

/// ROC-AUC.
#[pyfunction]
#[pyo3(signature = (scores, labels, weights=None))]
fn roc_auc(
    scores: PyReadonlyArray1<'_, f64>,
    labels: PyReadonlyArray1<'_, f64>,
    weights: Option<PyReadonlyArray1<'_, f64>>,
) -> PyResult<f64> {
    let w = weights.as_ref().map(vec1);
    fraud_core::eval::roc_auc(&vec1(&scores), &vec1(&labels), w.as_deref()).map_err(value_err)
}

/// Average precision.
#[pyfunction]
#[pyo3(signature = (scores, labels, weights=None))]
fn average_precision(
    scores: PyReadonlyArray1<'_, f64>,
    labels: PyReadonlyArray1<'_, f64>,
    weights: Option<PyReadonlyArray1<'_, f64>>,
) -> PyResult<f64> {
    let w = weights.as_ref().map(vec1);
    fraud_core::eval::average_precision(&vec1(&scores), &vec1(&labels), w.as_deref())
        .map_err(value_err)
}

/// Recall when at most `fpr` of negatives are flagged.
#[pyfunction]
#[pyo3(signature = (scores, labels, fpr, weights=None))]
fn recall_at_fpr(
    scores: PyReadonlyArray1<'_, f64>,
    labels: PyReadonlyArray1<'_, f64>,
    fpr: f64,
    weights: Option<PyReadonlyArray1<'_, f64>>,
) -> PyResult<f64> {
    let w = weights.as_ref().map(vec1);
    fraud_core::eval::recall_at_fpr(&vec1(&scores), &vec1(&labels), w.as_deref(), fpr)
        .map_err(value_err)
}

/// Precision among the `k` highest scores.
#[pyfunction]
fn precision_at_k(
    scores: PyReadonlyArray1<'_, f64>,
    labels: PyReadonlyArray1<'_, f64>,
    k: usize,
) -> PyResult<f64> {
    fraud_core::eval::precision_at_k(&vec1(&scores), &vec1(&labels), k).map_err(value_err)
}

/// Card precision at top-k per day: (mean, [(day, precision), ...]); the Handbook's
/// definition (cards detected on earlier days removed) unless `remove_detected` is false.
#[pyfunction]
#[pyo3(signature = (scores, labels, cards, days, k, remove_detected = true))]
fn card_precision_at_k(
    scores: PyReadonlyArray1<'_, f64>,
    labels: PyReadonlyArray1<'_, f64>,
    cards: Vec<String>,
    days: Vec<i64>,
    k: usize,
    remove_detected: bool,
) -> PyResult<(f64, Vec<(i64, f64)>)> {
    let f = if remove_detected {
        fraud_core::eval::card_precision_at_k_per_day::<String>
    } else {
        fraud_core::eval::card_precision_at_k_per_day_keeping_detected::<String>
    };
    let r = f(&vec1(&scores), &vec1(&labels), &cards, &days, k).map_err(value_err)?;
    Ok((r.mean, r.days))
}

/// Population stability index of `actual` against the distribution of `expected` (ten
/// quantile bins of `expected`, plus missing values).
#[pyfunction]
fn population_stability_index(
    expected: PyReadonlyArray1<'_, f64>,
    actual: PyReadonlyArray1<'_, f64>,
) -> PyResult<f64> {
    let r = fraud_core::eval::Reference::of(expected.as_array().iter().copied());
    let mut counts = vec![0u64; r.shares.len()];
    for &v in actual.as_array() {
        counts[r.bin(v)] += 1;
    }
    if counts.iter().sum::<u64>() == 0 {
        return Err(PyValueError::new_err("actual is empty"));
    }
    Ok(r.psi(&counts))
}

/// Generated transactions as CSV bytes, and the summary as JSON.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (customers, days, seed, terminals=None, start=None, scenarios=None, label_delay_days=3.0))]
fn generate_csv<'py>(
    py: Python<'py>,
    customers: u32,
    days: u32,
    seed: u64,
    terminals: Option<u32>,
    start: Option<String>,
    scenarios: Option<Vec<String>>,
    label_delay_days: f64,
) -> PyResult<(Bound<'py, PyBytes>, String)> {
    let mut cfg = fraud_datasets::SimConfig::with_customers(customers, days, seed);
    if let Some(t) = terminals {
        cfg.terminals = t;
    }
    if let Some(s) = start {
        cfg.start = fraud_datasets::sim::parse_date(&s).ok_or_else(|| {
            PyValueError::new_err(format!("start `{s}` is not a YYYY-MM-DD date"))
        })?;
    }
    if let Some(list) = scenarios {
        cfg.scenarios = fraud_datasets::Scenarios::only(&list).map_err(value_err)?;
    }
    cfg.label_delay_days = label_delay_days;
    let sim = fraud_datasets::Simulator::new(cfg).map_err(value_err)?;
    let (bytes, summary) = py.allow_threads(|| {
        let mut out = Vec::new();
        sim.write_csv(&mut out).map(|s| (out, s))
    })?;
    let summary = serde_json::to_string(&summary).map_err(value_err)?;
    Ok((PyBytes::new(py, &bytes), summary))
}

/// A public data set converted into the project's CSV (bytes).
#[pyfunction]
#[pyo3(signature = (format, path, legit_weight=1.0, currency="USD".to_string(), key=None))]
fn convert_csv<'py>(
    py: Python<'py>,
    format: &str,
    path: PathBuf,
    legit_weight: f64,
    currency: String,
    key: Option<Vec<u8>>,
) -> PyResult<Bound<'py, PyBytes>> {
    use fraud_datasets::loaders;
    let fmt: loaders::Format = format.parse().map_err(value_err)?;
    let tokenizer = key
        .map(|k| fraud_core::pii::Tokenizer::new(&k))
        .transpose()
        .map_err(value_err)?;
    let opts = loaders::Options {
        tokenizer,
        legit_weight,
        currency,
        ..loaders::Options::default()
    };
    if !path.exists() {
        return Err(PyFileNotFoundError::new_err(format!(
            "no file at {}",
            path.display()
        )));
    }
    let out = py.allow_threads(|| {
        let input = loaders::open(&path)?;
        let mut out = Vec::new();
        loaders::convert(fmt, input, &mut out, &opts).map(|_| out)
    });
    let out = out.map_err(|e| PyValueError::new_err(format!("{}: {e}", path.display())))?;
    Ok(PyBytes::new(py, &out))
}

/// What [`train`] returns: the model, the best iteration, and (feature, splits, gain).
type Trained = (PyModel, Option<usize>, Vec<(String, u64, f64)>, Vec<f64>);

/// Trains a gradient-boosted model: (model, best iteration, [(feature, splits, gain)],
/// validation metric after every round). With `verbose` > 0, the round, time and
/// validation metric are written to stderr every `verbose` rounds.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (x, y, weights, names, categorical, params, valid=None, threads=0, verbose=0))]
fn train<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f64>,
    y: PyReadonlyArray1<'py, f64>,
    weights: Option<PyReadonlyArray1<'py, f64>>,
    names: Vec<String>,
    categorical: Vec<String>,
    params: Vec<(String, String)>,
    valid: Option<(PyReadonlyArray2<'py, f64>, PyReadonlyArray1<'py, f64>)>,
    threads: usize,
    verbose: usize,
) -> PyResult<Trained> {
    use fraud_core::data::Matrix;
    use fraud_core::train::{Dataset, Params};
    let matrix = |a: &PyReadonlyArray2<'py, f64>| -> PyResult<Matrix> {
        let v = a.as_array();
        if v.ncols() != names.len() {
            return Err(PyValueError::new_err(format!(
                "X has {} columns for {} feature names",
                v.ncols(),
                names.len()
            )));
        }
        Ok(Matrix {
            columns: names.clone(),
            values: v.iter().copied().collect(),
        })
    };
    let train_x = matrix(&x)?;
    let labels = vec1(&y);
    let w = weights.as_ref().map(vec1);
    let valid = match &valid {
        Some((vx, vy)) => Some((matrix(vx)?, vec1(vy))),
        None => None,
    };
    let mut p = Params::from_pairs(std::iter::empty::<&str>()).map_err(value_err)?;
    for (k, v) in &params {
        p.set(k, v).map_err(value_err)?;
    }
    let trained = py.allow_threads(|| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| e.to_string())?;
        pool.install(|| {
            let data = Dataset {
                features: &train_x,
                labels: &labels,
                weights: w.as_deref(),
            };
            let v = valid.as_ref().map(|(m, l)| Dataset {
                features: m,
                labels: l,
                weights: None,
            });
            let mut report = |pr: &fraud_core::train::Progress| {
                if verbose > 0 && (pr.iteration.is_multiple_of(verbose) || pr.iteration == pr.total)
                {
                    let metric = pr
                        .valid_metric
                        .map(|m| format!("  valid {m:.6}"))
                        .unwrap_or_default();
                    eprintln!("[{}/{}] {:.1}s{metric}", pr.iteration, pr.total, pr.elapsed);
                }
            };
            fraud_core::train::train(&data, v.as_ref(), &categorical, &p, &mut report)
                .map_err(|e| e.to_string())
        })
    });
    let trained = trained.map_err(value_err)?;
    let importance = trained
        .importance
        .iter()
        .map(|i| (i.feature.clone(), i.splits, i.gain))
        .collect();
    Ok((
        PyModel::new(trained.artifact)?,
        trained.best_iteration,
        importance,
        trained.history,
    ))
}

/// The forgiveness of a history read from Python: naive timestamps at `tz_offset_s`, amounts
/// rounded to the currency's minor unit, a column standing in for the card.
fn history_options(
    tz_offset_s: Option<i32>,
    round_amounts: bool,
    card_from: Option<String>,
) -> fraud_core::transaction::HistoryOptions {
    fraud_core::transaction::HistoryOptions {
        naive_offset_s: tz_offset_s,
        round_amounts,
        card_from,
    }
}

/// Makes `labels` (id, fraud, reported at) the only labels of `history`.
fn set_labels(
    history: &mut [fraud_core::transaction::Transaction],
    labels: Vec<(String, bool, Option<i64>)>,
) {
    let map: std::collections::HashMap<String, (bool, Option<i64>)> = labels
        .into_iter()
        .map(|(id, f, at)| (id, (f, at)))
        .collect();
    for tx in history {
        let got = map.get(&tx.transaction_id).copied();
        tx.is_fraud = got.map(|g| g.0);
        tx.fraud_reported_at_us = got.and_then(|g| g.1);
    }
}

/// The transactions of a history handed over from Python, validated with `opts` (card
/// numbers tokenized with a one-off key: tokens only group a card's rows within this call).
fn read_source(
    py: Python<'_>,
    source: HistorySource,
    opts: &fraud_core::transaction::HistoryOptions,
) -> PyResult<Vec<fraud_core::transaction::Transaction>> {
    let tokenizer = fraud_core::pii::Tokenizer::one_off().map_err(value_err)?;
    let read = match source {
        HistorySource::Arrow(table) => {
            let (batches, schema) = table.into_inner();
            let columnar = fraud_core::table::Columnar::from_batches(schema, batches);
            py.allow_threads(|| columnar.history(&tokenizer, opts))
        }
        HistorySource::Csv(csv) => py.allow_threads(|| {
            fraud_core::transaction::read_history_with(csv.as_slice(), &tokenizer, opts)
        }),
    };
    Ok(read
        .map_err(|e| PyValueError::new_err(format!("transactions: {e}")))?
        .transactions)
}

/// The features of `history` at each transaction's time, with `labels` (when given) as the
/// only labels: (names, rows x features).
fn replay_history<'py>(
    py: Python<'py>,
    mut history: Vec<fraud_core::transaction::Transaction>,
    spec: Option<String>,
    labels: Option<Vec<(String, bool, Option<i64>)>>,
) -> PyResult<(Vec<String>, Bound<'py, PyArray2<f64>>)> {
    use fraud_core::features::{replay_flat, Extractor, FeatureSpec};
    let spec = match spec {
        Some(text) => FeatureSpec::from_toml(&text).map_err(value_err)?,
        None => FeatureSpec::default_spec(),
    };
    let extractor = Extractor::new(spec).map_err(value_err)?;
    if let Some(list) = labels {
        set_labels(&mut history, list);
    }
    let names = extractor.names().to_vec();
    let m = names.len();
    let flat = py.allow_threads(|| replay_flat(&extractor, &history));
    let rows = history.len();
    let arr = Array2::from_shape_vec((rows, m), flat).map_err(value_err)?;
    Ok((names, arr.into_pyarray(py)))
}

/// A history handed over from Python.
#[derive(FromPyObject)]
enum HistorySource {
    /// An Arrow table (anything with `__arrow_c_stream__`: a polars DataFrame, a pyarrow
    /// Table, a pandas DataFrame with pyarrow), read column by column.
    Arrow(pyo3_arrow::PyTable),
    /// CSV text (pandas without pyarrow).
    Csv(Vec<u8>),
}

/// Offline replay of a history (an Arrow table, or CSV bytes, with the transaction columns):
/// the features the service would have computed for each transaction at its time:
/// (names, rows x features). Arrow cells are validated as the same CSV cells are.
#[pyfunction]
#[pyo3(signature = (source, spec=None, labels=None, tz_offset_s=None, round_amounts=false, card_from=None))]
fn replay<'py>(
    py: Python<'py>,
    source: HistorySource,
    spec: Option<String>,
    labels: Option<Vec<(String, bool, Option<i64>)>>,
    tz_offset_s: Option<i32>,
    round_amounts: bool,
    card_from: Option<String>,
) -> PyResult<(Vec<String>, Bound<'py, PyArray2<f64>>)> {
    let opts = history_options(tz_offset_s, round_amounts, card_from);
    let history = read_source(py, source, &opts)?;
    replay_history(py, history, spec, labels)
}

/// A policy of the service's TOML sections (the defaults when `None`), for `names`.
fn policy_of(text: Option<&str>, names: &[String]) -> PyResult<fraud_core::decision::Policy> {
    let cfg = match text {
        Some(t) => fraud_core::decision::PolicyConfig::from_toml(t).map_err(value_err)?,
        None => fraud_core::decision::PolicyConfig::default(),
    };
    fraud_core::decision::Policy::new(&cfg, names).map_err(value_err)
}

/// A model with the extractor of its feature spec (or of `spec`).
fn prepared(model: &PyModel, spec: Option<&str>) -> PyResult<fraud_core::backtest::Prepared> {
    let spec = spec
        .map(fraud_core::features::FeatureSpec::from_toml)
        .transpose()
        .map_err(value_err)?;
    fraud_core::backtest::Prepared::new(&model.artifact, spec).map_err(value_err)
}

/// Per transaction (in the history's order): ids, decisions, scores, rules fired (`;`
/// between), the baseline's decisions; and the summary as JSON.
type Backtested = (
    Vec<String>,
    Vec<&'static str>,
    Vec<f64>,
    Vec<String>,
    Option<Vec<&'static str>>,
    String,
);

/// A backtest (fraud-core's `backtest`): the history replayed through point-in-time
/// features, `model` and the policy, against a baseline when one is given.
#[pyfunction]
#[pyo3(signature = (source, model, policy_toml=None, baseline_model=None, baseline_policy_toml=None,
                    spec=None, labels=None, tz_offset_s=None, round_amounts=false, card_from=None))]
#[allow(clippy::too_many_arguments)]
fn backtest(
    py: Python<'_>,
    source: HistorySource,
    model: &PyModel,
    policy_toml: Option<String>,
    baseline_model: Option<&PyModel>,
    baseline_policy_toml: Option<String>,
    spec: Option<String>,
    labels: Option<Vec<(String, bool, Option<i64>)>>,
    tz_offset_s: Option<i32>,
    round_amounts: bool,
    card_from: Option<String>,
) -> PyResult<Backtested> {
    let opts = history_options(tz_offset_s, round_amounts, card_from);
    let mut history = read_source(py, source, &opts)?;
    if let Some(list) = labels {
        set_labels(&mut history, list);
    }
    let main = prepared(model, spec.as_deref())?;
    let policy = policy_of(policy_toml.as_deref(), main.extractor.names())?;
    let base = baseline_model
        .map(|m| prepared(m, spec.as_deref()))
        .transpose()?;
    let base = base.as_ref().unwrap_or(&main);
    let base_policy = if baseline_model.is_some() || baseline_policy_toml.is_some() {
        Some(policy_of(
            baseline_policy_toml.as_deref().or(policy_toml.as_deref()),
            base.extractor.names(),
        )?)
    } else {
        None
    };
    let fraud_core::backtest::Backtest {
        outcomes,
        baseline,
        summary,
    } = py
        .allow_threads(|| {
            fraud_core::backtest::backtest(
                main.arm(&policy),
                base_policy.as_ref().map(|p| base.arm(p)),
                &history,
            )
        })
        .map_err(value_err)?;
    let summary = serde_json::to_string(&summary).map_err(value_err)?;
    Ok((
        history.iter().map(|t| t.transaction_id.clone()).collect(),
        outcomes.iter().map(|o| o.decision.name()).collect(),
        outcomes.iter().map(|o| o.score).collect(),
        outcomes.iter().map(|o| o.fired.join(";")).collect(),
        baseline.map(|b| b.iter().map(|o| o.decision.name()).collect()),
        summary,
    ))
}

/// The decision pipeline (fraud-core's `Scorer`): a model, a policy (the service's TOML
/// sections), a feature spec and fresh in-memory entity state. Requests and answers are JSON.
#[pyclass(name = "_Scorer", module = "fraudscore._fraudscore", frozen)]
struct PyScorer {
    scorer: fraud_core::decision::Scorer,
}

#[pymethods]
impl PyScorer {
    #[new]
    #[pyo3(signature = (model, policy_toml=None, spec_toml=None, reasons=5))]
    fn new(
        model: &PyModel,
        policy_toml: Option<&str>,
        spec_toml: Option<&str>,
        reasons: usize,
    ) -> PyResult<Self> {
        let mut builder =
            fraud_core::decision::Scorer::builder(model.artifact.clone()).reasons(reasons);
        if let Some(text) = policy_toml {
            builder = builder
                .policy(fraud_core::decision::PolicyConfig::from_toml(text).map_err(value_err)?);
        }
        if let Some(text) = spec_toml {
            builder = builder
                .spec(fraud_core::features::FeatureSpec::from_toml(text).map_err(value_err)?);
        }
        Ok(PyScorer {
            scorer: builder.build().map_err(value_err)?,
        })
    }

    /// Scores one transaction (its JSON text): the answer's JSON text.
    fn score(&self, py: Python<'_>, request: &str) -> PyResult<String> {
        let verdict = py
            .allow_threads(|| self.scorer.score_json(request.as_bytes()))
            .map_err(|e| {
                let text = e.to_string();
                PyValueError::new_err(fraud_core::pii::redact(&text).into_owned())
            })?;
        serde_json::to_string(&verdict).map_err(value_err)
    }

    /// Scores JSON lines in order: one answer (or `{"error", "line"}`) per line.
    fn score_lines(&self, py: Python<'_>, lines: &str) -> PyResult<String> {
        let mut out = Vec::with_capacity(lines.len());
        py.allow_threads(|| {
            fraud_core::decision::score_lines(&self.scorer, lines.as_bytes(), &mut out)
        })
        .map_err(value_err)?;
        String::from_utf8(out).map_err(value_err)
    }

    /// Checks a policy's TOML sections (thresholds, rules, lists) against a model's features:
    /// the normalised policy as JSON.
    #[staticmethod]
    fn check_policy(text: &str) -> PyResult<String> {
        let cfg = fraud_core::decision::PolicyConfig::from_toml(text).map_err(value_err)?;
        serde_json::to_string(&cfg).map_err(value_err)
    }
}

/// Runs the `fraud` command line (the same code as the `fraud` binary) with `argv` (the
/// first is the program's name) and returns its exit code. The interpreter's lock is released
/// while it runs, so `fraud serve` started this way serves from its own threads.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.allow_threads(|| fraud_server::main_with_args(argv))
}

/// The native module.
#[pymodule]
fn _fraudscore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PyScorer>()?;
    m.add_function(wrap_pyfunction!(roc_auc, m)?)?;
    m.add_function(wrap_pyfunction!(average_precision, m)?)?;
    m.add_function(wrap_pyfunction!(recall_at_fpr, m)?)?;
    m.add_function(wrap_pyfunction!(precision_at_k, m)?)?;
    m.add_function(wrap_pyfunction!(card_precision_at_k, m)?)?;
    m.add_function(wrap_pyfunction!(population_stability_index, m)?)?;
    m.add_function(wrap_pyfunction!(generate_csv, m)?)?;
    m.add_function(wrap_pyfunction!(convert_csv, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(replay, m)?)?;
    m.add_function(wrap_pyfunction!(backtest, m)?)?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_SPEC", fraud_core::features::DEFAULT_SPEC)?;
    Ok(())
}
