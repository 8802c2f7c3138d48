//! Training parameters, named as LightGBM names them (with its common aliases), so a fraud
//! team's existing settings carry over: `fraud train --param num_leaves=63 --param
//! learning_rate=0.05`.

use serde::{Deserialize, Serialize};

use super::TrainError;

/// Metric watched on the validation set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// ROC-AUC (higher is better).
    Auc,
    /// Binary log-loss (lower is better).
    LogLoss,
}

/// Every knob of the gradient-boosting trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Boosting rounds (trees). `num_rounds`, `num_iterations`, `n_estimators`.
    pub num_rounds: usize,
    /// Shrinkage applied to every leaf. `learning_rate`, `eta`.
    pub learning_rate: f64,
    /// Most leaves per tree (leaf-wise growth). `num_leaves`.
    pub num_leaves: usize,
    /// Deepest leaf allowed; 0 or negative: unlimited. `max_depth`.
    pub max_depth: i32,
    /// Fewest rows in a leaf. `min_data_in_leaf`, `min_child_samples`.
    pub min_data_in_leaf: usize,
    /// Smallest hessian sum in a leaf. `min_sum_hessian_in_leaf`, `min_child_weight`.
    pub min_sum_hessian_in_leaf: f64,
    /// Smallest gain for a split. `min_gain_to_split`.
    pub min_gain_to_split: f64,
    /// L1 regularisation of leaf values. `lambda_l1`, `reg_alpha`.
    pub lambda_l1: f64,
    /// L2 regularisation of leaf values. `lambda_l2`, `reg_lambda`.
    pub lambda_l2: f64,
    /// Share of features tried per tree. `feature_fraction`, `colsample_bytree`.
    pub feature_fraction: f64,
    /// Share of rows used per bagging round. `bagging_fraction`, `subsample`.
    pub bagging_fraction: f64,
    /// Re-draw the bagged rows every this many rounds; 0: no bagging. `bagging_freq`.
    pub bagging_freq: usize,
    /// Weight of positive rows. `scale_pos_weight`.
    pub scale_pos_weight: f64,
    /// Most value bins per feature. `max_bin`.
    pub max_bin: usize,
    /// Start from the log-odds of the (weighted) label mean. `boost_from_average`.
    pub boost_from_average: bool,
    /// Seed of every random choice. `seed`, `random_state`.
    pub seed: u64,
    /// Stop after this many rounds without improvement on the validation set; 0: never.
    /// `early_stopping_round`, `early_stopping_rounds`.
    pub early_stopping_rounds: usize,
    /// Validation metric. `metric`: `auc`, `binary_logloss` (`logloss`).
    pub metric: Metric,
    /// Per feature (column order): 1 increasing, -1 decreasing, 0 free.
    /// `monotone_constraints=1,0,-1`.
    pub monotone_constraints: Vec<i8>,
    /// Categorical splits: one-vs-rest when a feature has at most this many categories.
    pub max_cat_to_onehot: usize,
    /// Most categories on the smaller side of a categorical split. `max_cat_threshold`.
    pub max_cat_threshold: usize,
    /// Smoothing of category gradient ratios. `cat_smooth`.
    pub cat_smooth: f64,
    /// Extra L2 for categorical splits. `cat_l2`.
    pub cat_l2: f64,
    /// Fewest rows for a category to be considered on its own. `min_data_per_group`.
    pub min_data_per_group: usize,
    /// Worker threads (0: all cores). Used by the caller to size the thread pool.
    pub threads: usize,
}

impl Default for Params {
    /// LightGBM's defaults, except 300 rounds and 63 leaves are closer to what fraud models
    /// use, and a small L2 keeps leaves with few positives from exploding on very imbalanced
    /// data.
    fn default() -> Self {
        Params {
            num_rounds: 300,
            learning_rate: 0.05,
            num_leaves: 63,
            max_depth: -1,
            min_data_in_leaf: 20,
            min_sum_hessian_in_leaf: 1e-3,
            min_gain_to_split: 0.0,
            lambda_l1: 0.0,
            lambda_l2: 1.0,
            feature_fraction: 1.0,
            bagging_fraction: 1.0,
            bagging_freq: 0,
            scale_pos_weight: 1.0,
            max_bin: 255,
            boost_from_average: true,
            seed: 0,
            early_stopping_rounds: 0,
            metric: Metric::Auc,
            monotone_constraints: Vec::new(),
            max_cat_to_onehot: 4,
            max_cat_threshold: 32,
            cat_smooth: 10.0,
            cat_l2: 10.0,
            min_data_per_group: 100,
            threads: 0,
        }
    }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, TrainError> {
    value
        .trim()
        .parse::<T>()
        .map_err(|_| TrainError::Param(format!("`{key}={value}`: not a valid value")))
}

fn boolean(key: &str, value: &str) -> Result<bool, TrainError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(TrainError::Param(format!(
            "`{key}={value}`: expected true or false"
        ))),
    }
}

impl Params {
    /// Sets one parameter from its LightGBM name (or alias) and text value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), TrainError> {
        let k = key.trim();
        match k {
            "num_rounds" | "num_iterations" | "num_iteration" | "n_estimators"
            | "num_boost_round" | "num_trees" => self.num_rounds = parse(k, value)?,
            "learning_rate" | "eta" | "shrinkage_rate" => self.learning_rate = parse(k, value)?,
            "num_leaves" | "max_leaves" => self.num_leaves = parse(k, value)?,
            "max_depth" => self.max_depth = parse(k, value)?,
            "min_data_in_leaf" | "min_child_samples" | "min_data" => {
                self.min_data_in_leaf = parse(k, value)?
            }
            "min_sum_hessian_in_leaf" | "min_child_weight" | "min_sum_hessian" => {
                self.min_sum_hessian_in_leaf = parse(k, value)?
            }
            "min_gain_to_split" | "min_split_gain" => self.min_gain_to_split = parse(k, value)?,
            "lambda_l1" | "reg_alpha" | "l1_regularization" => self.lambda_l1 = parse(k, value)?,
            "lambda_l2" | "reg_lambda" | "l2_regularization" | "lambda" => {
                self.lambda_l2 = parse(k, value)?
            }
            "feature_fraction" | "colsample_bytree" | "sub_feature" => {
                self.feature_fraction = parse(k, value)?
            }
            "bagging_fraction" | "subsample" | "sub_row" => {
                self.bagging_fraction = parse(k, value)?
            }
            "bagging_freq" | "subsample_freq" => self.bagging_freq = parse(k, value)?,
            "scale_pos_weight" => self.scale_pos_weight = parse(k, value)?,
            "max_bin" => self.max_bin = parse(k, value)?,
            "boost_from_average" => self.boost_from_average = boolean(k, value)?,
            "seed" | "random_state" | "random_seed" => self.seed = parse(k, value)?,
            "early_stopping_round" | "early_stopping_rounds" | "early_stopping" => {
                self.early_stopping_rounds = parse(k, value)?
            }
            "metric" => {
                self.metric = match value.trim() {
                    "auc" => Metric::Auc,
                    "binary_logloss" | "logloss" | "log_loss" | "binary" => Metric::LogLoss,
                    other => {
                        return Err(TrainError::Param(format!(
                            "`metric={other}`: expected auc or binary_logloss"
                        )))
                    }
                }
            }
            "monotone_constraints" | "monotone_constraint" => {
                self.monotone_constraints = value
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| match s.trim() {
                        "1" | "+1" => Ok(1),
                        "-1" => Ok(-1),
                        "0" => Ok(0),
                        other => Err(TrainError::Param(format!(
                            "`monotone_constraints`: `{other}` is not -1, 0 or 1"
                        ))),
                    })
                    .collect::<Result<_, _>>()?
            }
            "max_cat_to_onehot" => self.max_cat_to_onehot = parse(k, value)?,
            "max_cat_threshold" => self.max_cat_threshold = parse(k, value)?,
            "cat_smooth" => self.cat_smooth = parse(k, value)?,
            "cat_l2" => self.cat_l2 = parse(k, value)?,
            "min_data_per_group" => self.min_data_per_group = parse(k, value)?,
            "threads" | "num_threads" | "n_jobs" | "nthread" => self.threads = parse(k, value)?,
            "objective" | "application" => {
                if !matches!(value.trim(), "binary" | "binary:logistic") {
                    return Err(TrainError::Param(format!(
                        "`objective={value}`: only binary is supported"
                    )));
                }
            }
            _ => return Err(TrainError::Param(format!("unknown parameter `{k}`"))),
        }
        Ok(())
    }

    /// Parses `key=value` strings on top of the defaults.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, TrainError> {
        let mut p = Params::default();
        for pair in pairs {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| TrainError::Param(format!("`{pair}`: expected key=value")))?;
            p.set(k, v)?;
        }
        Ok(p)
    }

    /// Checks ranges, naming the first parameter out of range.
    pub fn validate(&self, num_features: usize) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Param(m));
        if self.num_rounds == 0 {
            return bad("num_rounds must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!(
                "learning_rate {} must be positive",
                self.learning_rate
            ));
        }
        if self.num_leaves < 2 || self.num_leaves > 1 << 17 {
            return bad(format!(
                "num_leaves {} must be between 2 and 131072",
                self.num_leaves
            ));
        }
        if self.min_data_in_leaf == 0 {
            return bad("min_data_in_leaf must be at least 1".into());
        }
        for (name, v) in [
            ("min_sum_hessian_in_leaf", self.min_sum_hessian_in_leaf),
            ("min_gain_to_split", self.min_gain_to_split),
            ("lambda_l1", self.lambda_l1),
            ("lambda_l2", self.lambda_l2),
            ("cat_smooth", self.cat_smooth),
            ("cat_l2", self.cat_l2),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{name} {v} must be zero or positive"));
            }
        }
        for (name, v) in [
            ("feature_fraction", self.feature_fraction),
            ("bagging_fraction", self.bagging_fraction),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return bad(format!("{name} {v} must be in (0, 1]"));
            }
        }
        if !(self.scale_pos_weight > 0.0 && self.scale_pos_weight.is_finite()) {
            return bad(format!(
                "scale_pos_weight {} must be positive",
                self.scale_pos_weight
            ));
        }
        if !(2..=255).contains(&self.max_bin) {
            return bad(format!(
                "max_bin {} must be between 2 and 255",
                self.max_bin
            ));
        }
        if !self.monotone_constraints.is_empty() && self.monotone_constraints.len() != num_features
        {
            return bad(format!(
                "monotone_constraints has {} entries for {num_features} features",
                self.monotone_constraints.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lightgbm_names_and_aliases() {
        let p = Params::from_pairs([
            "num_leaves=15",
            "eta=0.2",
            "colsample_bytree=0.5",
            "metric=binary_logloss",
            "monotone_constraints=1,0,-1",
        ])
        .unwrap();
        assert_eq!(p.num_leaves, 15);
        assert_eq!(p.learning_rate, 0.2);
        assert_eq!(p.feature_fraction, 0.5);
        assert_eq!(p.metric, Metric::LogLoss);
        assert_eq!(p.monotone_constraints, vec![1, 0, -1]);
        assert!(p.validate(3).is_ok());
        assert!(p.validate(4).is_err());
    }

    #[test]
    fn clear_errors() {
        let e = Params::from_pairs(["num_leafs=3"]).unwrap_err().to_string();
        assert!(e.contains("unknown parameter `num_leafs`"), "{e}");
        let e = Params::from_pairs(["learning_rate=fast"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("learning_rate=fast"), "{e}");
        let e = Params::from_pairs(["objective=multiclass"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("only binary"), "{e}");
        let p = Params::from_pairs(["bagging_fraction=1.5"]).unwrap();
        assert!(p
            .validate(1)
            .unwrap_err()
            .to_string()
            .contains("bagging_fraction"));
    }
}
