//! Gradient-boosted tree models: the ensemble, its compiled form, the artifact file, and the
//! importers for XGBoost and LightGBM.
//!
//! The flow is: import (or train) an [`Ensemble`], store it as an [`Artifact`], load it and
//! build a [`CompiledModel`] to score. This module holds no feature engineering and no
//! decision policy; it maps rows of numbers to margins and probabilities.

mod artifact;
mod compiled;
mod ensemble;
pub mod lightgbm;
mod shap;
pub mod xgboost;

pub use artifact::{
    category_key, float_key, reproducible_epoch, Artifact, ArtifactError, Metadata, ARTIFACT_MAGIC,
    ARTIFACT_VERSION,
};
pub use compiled::{BatchKernel, CompiledModel};
pub use ensemble::{
    Accumulation, CategoryCast, CategorySplit, Ensemble, EnsembleStats, Feature, FeatureKind,
    LinearTerm, Missing, ModelLimits, Node, Objective, Split, Test, Tree,
};
pub use shap::Explainer;

/// Errors of a model's structure or of its use for prediction.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// The ensemble breaks a structural invariant.
    #[error("invalid model: {0}")]
    Invalid(String),
    /// A row has the wrong number of values.
    #[error("row has {found} values but the model expects {expected} features")]
    RowLength {
        /// Features of the model.
        expected: usize,
        /// Values in the row.
        found: usize,
    },
    /// The model is larger than a limit allows (see [`ModelLimits`]).
    #[error("model exceeds {limit} = {max}: {what} is {found}")]
    TooLarge {
        /// The limit's setting name (`limits.max_tree_depth`, ...).
        limit: &'static str,
        /// Its value.
        max: usize,
        /// What exceeds it (`tree 0 depth`, ...).
        what: String,
        /// The model's figure.
        found: usize,
    },
    /// A batch buffer does not hold `rows * features` values.
    #[error("batch of {values} values does not hold {rows} rows of {features} features")]
    BatchShape {
        /// Values given.
        values: usize,
        /// Rows expected (length of the output).
        rows: usize,
        /// Features of the model.
        features: usize,
    },
}

/// Errors while importing a model from another library's file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not in the expected format.
    #[error("not a valid {format} model: {detail}")]
    Malformed {
        /// `XGBoost JSON` or `LightGBM text`.
        format: &'static str,
        /// What is wrong and where.
        detail: String,
    },
    /// The model uses something this engine does not evaluate.
    #[error("unsupported {format} model: {detail}")]
    Unsupported {
        /// `XGBoost JSON` or `LightGBM text`.
        format: &'static str,
        /// What is unsupported.
        detail: String,
    },
    /// The imported trees are inconsistent.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl ImportError {
    /// The file is not a valid model of `format`.
    pub fn malformed(format: &'static str, detail: impl Into<String>) -> Self {
        ImportError::Malformed {
            format,
            detail: detail.into(),
        }
    }

    /// The model uses something of `format` this engine does not evaluate.
    pub fn unsupported(format: &'static str, detail: impl Into<String>) -> Self {
        ImportError::Unsupported {
            format,
            detail: detail.into(),
        }
    }
}
