//! The in-memory representation of a binary-classification tree ensemble.
//!
//! This is the one form every model takes inside the engine, whatever made it (XGBoost,
//! LightGBM, or this crate's trainer). It keeps each split's *source semantics* exactly (which
//! comparison, in which precision, how missing values and categories are treated), so that a
//! compiled model can reproduce the source library's routing bit for bit. It is built for
//! clarity and validation, not for speed: see [`crate::model::CompiledModel`] for inference.

use serde::{Deserialize, Serialize};

use super::ModelError;

/// LightGBM's threshold under which a value counts as zero (`kZeroThreshold = 1e-35f`).
pub const LIGHTGBM_ZERO_THRESHOLD: f64 = 1e-35_f32 as f64;

/// XGBoost's first out-of-range category code (`OutOfRangeCat()`, 2^24).
pub const XGBOOST_MAX_CATEGORY: f32 = 16_777_216.0;

/// A tree ensemble for binary classification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ensemble {
    /// Input features, in column order.
    pub features: Vec<Feature>,
    /// The trees; the margin is the base margin plus the sum of one leaf per tree.
    pub trees: Vec<Tree>,
    /// Margin before any tree (XGBoost's `logit(base_score)`; 0 for LightGBM).
    pub base_margin: f64,
    /// How the margin becomes a probability.
    pub objective: Objective,
    /// The floating-point precision the source library sums leaf values in.
    pub accumulation: Accumulation,
    /// Divide the tree sum by the number of trees (LightGBM random-forest mode).
    pub average_output: bool,
    /// A linear term added to the margin (the logistic-regression baseline).
    pub linear: Option<LinearTerm>,
}

/// `sum(weights[i] * x[i])`, with `impute[i]` standing in for a missing `x[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearTerm {
    /// One weight per feature.
    pub weights: Vec<f64>,
    /// The value used for a missing feature (its training mean).
    pub impute: Vec<f64>,
}

impl LinearTerm {
    /// The term's value for one row.
    pub fn value(&self, row: &[f64]) -> f64 {
        self.weights
            .iter()
            .zip(&self.impute)
            .zip(row)
            .map(|((w, m), x)| w * if x.is_nan() { *m } else { *x })
            .sum()
    }

    /// The term's value at the training means (its part of the expected margin).
    pub fn expected_value(&self) -> f64 {
        self.weights
            .iter()
            .zip(&self.impute)
            .map(|(w, m)| w * m)
            .sum()
    }

    /// Feature `f`'s SHAP value in the term: `weight x (x - mean)` (features independent).
    pub fn contribution(&self, f: usize, x: f64) -> f64 {
        let (w, m) = (self.weights[f], self.impute[f]);
        w * (if x.is_nan() { m } else { x } - m)
    }
}

/// One input column of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    /// Column name (`f0`, `f1`, ... when the source stored none).
    pub name: String,
    /// Numeric or categorical.
    pub kind: FeatureKind,
}

/// The type of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeatureKind {
    /// A number compared against thresholds.
    Numeric,
    /// A non-negative integer category code tested for set membership.
    Categorical,
}

/// Link from margin to probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Objective {
    /// `p = 1 / (1 + exp(-scale * margin))` (`scale` is LightGBM's `sigmoid`, 1 otherwise).
    Logistic {
        /// Multiplier applied to the margin before the sigmoid.
        scale: f64,
    },
}

/// Floating-point precision of the running sum of leaf values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Accumulation {
    /// Sum in `f32` from the base margin, tree by tree (XGBoost).
    F32,
    /// Sum in `f64` (LightGBM and native models).
    F64,
}

/// One decision tree; `nodes[0]` is the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    /// Nodes; children refer to positions in this vector.
    pub nodes: Vec<Node>,
}

/// A node of a tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// An internal node.
    Split(Split),
    /// A leaf.
    Leaf {
        /// Contribution of this leaf to the margin.
        value: f64,
        /// Training weight that reached this leaf (XGBoost: sum of hessians; LightGBM: row
        /// count); 0 when unknown. Used to lay out inference and for TreeSHAP.
        cover: f64,
        /// The leaf's identifier in the source library (XGBoost node id, LightGBM leaf index),
        /// reported by leaf prediction.
        id: u32,
    },
}

/// An internal node: a test on one feature and two children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Index of the feature tested.
    pub feature: u32,
    /// The test; a true test sends the row to `left`.
    pub test: Test,
    /// Which values count as missing, and what happens to them.
    pub missing: Missing,
    /// Direction taken by missing values (where `missing` says they take the default).
    pub default_left: bool,
    /// Position of the left child in the tree.
    pub left: u32,
    /// Position of the right child in the tree.
    pub right: u32,
    /// Training weight that reached this node (see [`Node::Leaf`]'s `cover`); 0 when unknown.
    pub cover: f64,
}

/// The test of a split. Each variant states its comparison and precision exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Test {
    /// Left iff `x < threshold` in `f64`.
    Less(f64),
    /// Left iff `x <= threshold` in `f64` (LightGBM numeric splits).
    LessEqual(f64),
    /// Left iff `(x as f32) < threshold` (XGBoost numeric splits).
    LessF32(f32),
    /// Category membership.
    Categories(CategorySplit),
}

/// A categorical split: the category code of `x` is looked up in a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategorySplit {
    /// The category codes in the set, sorted, without duplicates.
    pub categories: Vec<u32>,
    /// Whether a code in the set goes left (LightGBM) or right (XGBoost).
    pub in_set_goes_left: bool,
    /// How a value becomes a category code. Values that are no valid code are treated as
    /// not in the set.
    pub cast: CategoryCast,
}

/// How a feature value becomes a category code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CategoryCast {
    /// XGBoost: round to `f32`; valid when `0 <= v < 2^24`; the code is `v` truncated.
    XgboostF32,
    /// LightGBM: truncate toward zero to a 32-bit integer; valid when non-negative.
    LightgbmTruncate,
}

/// Which values a split treats as missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Missing {
    /// NaN takes the default direction.
    Nan,
    /// NaN and values within ±1e-35 of zero take the default direction (LightGBM
    /// `zero_as_missing`).
    ZeroOrNan,
    /// NaN is replaced by 0.0 and tested as a number (LightGBM `use_missing=false`).
    NanAsZero,
}

impl CategoryCast {
    /// The category code of `x` under this cast, or `None` when `x` is no valid code. `x`
    /// must not be NaN.
    pub fn code(self, x: f64) -> Option<u32> {
        match self {
            CategoryCast::XgboostF32 => {
                let c = x as f32;
                if !(0.0..XGBOOST_MAX_CATEGORY).contains(&c) {
                    None
                } else {
                    Some(c as u32)
                }
            }
            CategoryCast::LightgbmTruncate => {
                let c = x as i32;
                u32::try_from(c).ok()
            }
        }
    }
}

impl CategorySplit {
    /// The category code of `x`, or `None` when `x` is no valid code. `x` must not be NaN.
    pub fn code(&self, x: f64) -> Option<u32> {
        self.cast.code(x)
    }

    /// Whether a (non-missing) value goes left.
    pub fn goes_left(&self, x: f64) -> bool {
        self.goes_left_in(x, &self.categories)
    }

    /// Whether a (non-missing) value goes left, its code looked up in `categories`: this
    /// split's set, sorted, or a copy of it kept where the caller reads it faster.
    pub fn goes_left_in(&self, x: f64, categories: &[u32]) -> bool {
        let in_set = self
            .code(x)
            .is_some_and(|c| categories.binary_search(&c).is_ok());
        in_set == self.in_set_goes_left
    }
}

impl Split {
    /// Whether the value `x` goes to the left child. This is the reference semantics that the
    /// compiled model reproduces.
    pub fn goes_left(&self, x: f64) -> bool {
        self.goes_left_in(x, |c, x| c.goes_left(x))
    }

    /// [`Split::goes_left`] with a categorical test answered by `category(set, x)` (for a
    /// caller that keeps the sets elsewhere).
    pub fn goes_left_in(&self, x: f64, category: impl FnOnce(&CategorySplit, f64) -> bool) -> bool {
        let mut x = x;
        match self.missing {
            Missing::Nan => {
                if x.is_nan() {
                    return self.default_left;
                }
            }
            Missing::ZeroOrNan => {
                if x.is_nan() || x.abs() <= LIGHTGBM_ZERO_THRESHOLD {
                    return self.default_left;
                }
            }
            Missing::NanAsZero => {
                if x.is_nan() {
                    x = 0.0;
                }
            }
        }
        match &self.test {
            Test::Less(t) => x < *t,
            Test::LessEqual(t) => x <= *t,
            Test::LessF32(t) => (x as f32) < *t,
            Test::Categories(c) => category(c, x),
        }
    }
}

/// Shape statistics of a model, as `fraud inspect` prints them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnsembleStats {
    /// Number of trees.
    pub trees: usize,
    /// Total leaves over all trees.
    pub leaves: usize,
    /// Total internal nodes over all trees.
    pub splits: usize,
    /// Categorical splits among them.
    pub categorical_splits: usize,
    /// Greatest depth of any leaf (root alone = 0).
    pub max_depth: usize,
    /// Mean over trees of each tree's greatest leaf depth.
    pub mean_tree_depth: f64,
    /// Mean depth of a leaf, over all leaves.
    pub mean_leaf_depth: f64,
    /// Greatest leaf count of a tree.
    pub max_leaves: usize,
}

impl Tree {
    /// A tree of a single leaf.
    pub fn leaf(value: f64) -> Self {
        Tree {
            nodes: vec![Node::Leaf {
                value,
                id: 0,
                cover: 0.0,
            }],
        }
    }

    /// The leaf a row reaches (reference traversal, for tests and explanations).
    pub fn leaf_for(&self, row: &[f64]) -> (f64, u32) {
        let mut i = 0usize;
        loop {
            match &self.nodes[i] {
                Node::Leaf { value, id, .. } => return (*value, *id),
                Node::Split(s) => {
                    let x = row.get(s.feature as usize).copied().unwrap_or(f64::NAN);
                    i = if s.goes_left(x) { s.left } else { s.right } as usize;
                }
            }
        }
    }

    /// Depth of every node (root = 0). The tree must be valid.
    pub fn depths(&self) -> Vec<usize> {
        let mut depth = vec![0usize; self.nodes.len()];
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            if let Node::Split(s) = &self.nodes[i] {
                for c in [s.left as usize, s.right as usize] {
                    depth[c] = depth[i] + 1;
                    stack.push(c);
                }
            }
        }
        depth
    }
}

/// What one model may cost, checked before a model is compiled or explained where models
/// come from outside (an import, an upload): prediction walks at most `max_tree_depth` steps
/// a tree, and TreeSHAP keeps `(d + 1)(d + 2) / 2` path elements for a tree of depth `d`
/// (about 1 MiB at the default depth of 256), so these bound the time and memory of every
/// request. The defaults hold every model XGBoost and LightGBM train with their own limits
/// (XGBoost's `max_depth` up to 20 with full trees, LightGBM's `num_leaves` up to 131,072).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelLimits {
    /// Deepest leaf of any tree (root alone: 0).
    pub max_tree_depth: usize,
    /// Nodes (splits and leaves) of one tree.
    pub max_tree_nodes: usize,
    /// Nodes of all trees together.
    pub max_model_nodes: usize,
}

impl Default for ModelLimits {
    fn default() -> Self {
        ModelLimits {
            max_tree_depth: 256,
            max_tree_nodes: 1 << 22,
            max_model_nodes: 1 << 26,
        }
    }
}

impl Ensemble {
    /// Checks the model against `limits`; the error names the limit exceeded. Linear in the
    /// number of nodes, without recursion (a tree may be a chain 100,000 deep).
    pub fn check_limits(&self, limits: &ModelLimits) -> Result<(), ModelError> {
        let mut total = 0usize;
        for (t, tree) in self.trees.iter().enumerate() {
            let n = tree.nodes.len();
            if n > limits.max_tree_nodes {
                return Err(ModelError::TooLarge {
                    limit: "limits.max_tree_nodes",
                    max: limits.max_tree_nodes,
                    what: format!("the node count of tree {t}"),
                    found: n,
                });
            }
            total = total.saturating_add(n);
            if total > limits.max_model_nodes {
                return Err(ModelError::TooLarge {
                    limit: "limits.max_model_nodes",
                    max: limits.max_model_nodes,
                    what: format!("the node count of trees 0 to {t}"),
                    found: total,
                });
            }
            // Depth by an explicit stack; a node reached twice (not a tree) stops the walk,
            // which `validate` reports.
            let mut depth = vec![usize::MAX; n];
            let mut stack = vec![(0usize, 0usize)];
            let mut deepest = 0usize;
            while let Some((i, d)) = stack.pop() {
                let Some(slot) = depth.get_mut(i) else {
                    continue;
                };
                if *slot != usize::MAX {
                    continue;
                }
                *slot = d;
                deepest = deepest.max(d);
                if let Node::Split(s) = &tree.nodes[i] {
                    stack.push((s.left as usize, d + 1));
                    stack.push((s.right as usize, d + 1));
                }
            }
            if deepest > limits.max_tree_depth {
                return Err(ModelError::TooLarge {
                    limit: "limits.max_tree_depth",
                    max: limits.max_tree_depth,
                    what: format!("the depth of tree {t}"),
                    found: deepest,
                });
            }
        }
        Ok(())
    }

    /// Number of input features.
    pub fn num_features(&self) -> usize {
        self.features.len()
    }

    /// Feature names in column order.
    pub fn feature_names(&self) -> Vec<&str> {
        self.features.iter().map(|f| f.name.as_str()).collect()
    }

    /// Checks every structural invariant the compiled model relies on: children in range,
    /// every node reachable exactly once from the root (a tree, no cycles), features in range,
    /// thresholds not NaN, category sets sorted, finite leaf values.
    pub fn validate(&self) -> Result<(), ModelError> {
        let nf = self.features.len();
        if nf > MAX_FEATURES {
            return Err(ModelError::Invalid(format!(
                "{nf} features; at most {MAX_FEATURES} are supported"
            )));
        }
        let mut seen_names = std::collections::HashSet::new();
        for f in &self.features {
            if !seen_names.insert(f.name.as_str()) {
                return Err(ModelError::Invalid(format!(
                    "feature name `{}` appears twice",
                    f.name
                )));
            }
        }
        if !self.base_margin.is_finite() {
            return Err(ModelError::Invalid("base margin is not finite".into()));
        }
        let Objective::Logistic { scale } = self.objective;
        if !scale.is_finite() || scale <= 0.0 {
            return Err(ModelError::Invalid(format!(
                "sigmoid scale {scale} must be finite and positive"
            )));
        }
        for (t, tree) in self.trees.iter().enumerate() {
            validate_tree(tree, nf)
                .map_err(|msg| ModelError::Invalid(format!("tree {t}: {msg}")))?;
        }
        if let Some(l) = &self.linear {
            if l.weights.len() != nf || l.impute.len() != nf {
                return Err(ModelError::Invalid(format!(
                    "linear term has {} weights and {} imputed values for {nf} features",
                    l.weights.len(),
                    l.impute.len()
                )));
            }
            if l.weights.iter().chain(&l.impute).any(|v| !v.is_finite()) {
                return Err(ModelError::Invalid(
                    "linear term has a non-finite value".into(),
                ));
            }
        }
        Ok(())
    }

    /// Shape statistics.
    pub fn stats(&self) -> EnsembleStats {
        let mut s = EnsembleStats {
            trees: self.trees.len(),
            leaves: 0,
            splits: 0,
            categorical_splits: 0,
            max_depth: 0,
            mean_tree_depth: 0.0,
            mean_leaf_depth: 0.0,
            max_leaves: 0,
        };
        let mut leaf_depth_sum = 0usize;
        let mut tree_depth_sum = 0usize;
        for tree in &self.trees {
            let depths = tree.depths();
            let mut tree_leaves = 0;
            let mut tree_depth = 0;
            for (node, d) in tree.nodes.iter().zip(&depths) {
                match node {
                    Node::Leaf { .. } => {
                        tree_leaves += 1;
                        leaf_depth_sum += d;
                        tree_depth = tree_depth.max(*d);
                    }
                    Node::Split(sp) => {
                        s.splits += 1;
                        if matches!(sp.test, Test::Categories(_)) {
                            s.categorical_splits += 1;
                        }
                    }
                }
            }
            s.leaves += tree_leaves;
            s.max_leaves = s.max_leaves.max(tree_leaves);
            s.max_depth = s.max_depth.max(tree_depth);
            tree_depth_sum += tree_depth;
        }
        if s.trees > 0 {
            s.mean_tree_depth = tree_depth_sum as f64 / s.trees as f64;
        }
        if s.leaves > 0 {
            s.mean_leaf_depth = leaf_depth_sum as f64 / s.leaves as f64;
        }
        s
    }

    /// Reference prediction of the margin for one row, straight from this representation
    /// (slow; the compiled model must agree with it exactly): the trees, then the linear
    /// term if any.
    pub fn reference_margin(&self, row: &[f64]) -> f64 {
        self.margin_of_leaves(self.trees.iter().map(|t| t.leaf_for(row).0), row)
    }

    /// The margin of `row` from the value of the leaf it reaches in each tree (`leaves`, in
    /// tree order): summed as the source library sums them, averaged if the model averages,
    /// plus the linear term. Every way of finding the leaves ends here, so the margins agree
    /// bit for bit.
    pub(crate) fn margin_of_leaves(&self, leaves: impl Iterator<Item = f64>, row: &[f64]) -> f64 {
        let trees = match self.accumulation {
            Accumulation::F32 => {
                let m = leaves.fold(self.base_margin as f32, |m, v| m + v as f32);
                self.finish_margin(m as f64)
            }
            Accumulation::F64 => {
                let m = leaves.fold(self.base_margin, |m, v| m + v);
                self.finish_margin(m)
            }
        };
        trees + self.linear.as_ref().map_or(0.0, |l| l.value(row))
    }

    /// Applies output averaging to a summed margin.
    pub(crate) fn finish_margin(&self, sum: f64) -> f64 {
        if self.average_output && !self.trees.is_empty() {
            sum / self.trees.len() as f64
        } else {
            sum
        }
    }

    /// Maps a margin to a probability.
    pub fn probability(&self, margin: f64) -> f64 {
        let Objective::Logistic { scale } = self.objective;
        1.0 / (1.0 + (-scale * margin).exp())
    }
}

/// Largest number of features a model may have (the compiled layout packs feature indices
/// and their negated copies into 24 bits).
pub const MAX_FEATURES: usize = 1 << 23;

/// Largest number of nodes in one tree.
pub const MAX_TREE_NODES: usize = 1 << 24;

fn validate_tree(tree: &Tree, num_features: usize) -> Result<(), String> {
    let n = tree.nodes.len();
    if n == 0 {
        return Err("has no nodes".into());
    }
    if n > MAX_TREE_NODES {
        return Err(format!(
            "has {n} nodes; at most {MAX_TREE_NODES} are supported"
        ));
    }
    let mut parent_count = vec![0u8; n];
    for (i, node) in tree.nodes.iter().enumerate() {
        match node {
            Node::Leaf { value, cover, .. } => {
                if !value.is_finite() {
                    return Err(format!("leaf {i} has a non-finite value"));
                }
                if !(cover.is_finite() && *cover >= 0.0) {
                    return Err(format!("leaf {i} has an invalid cover {cover}"));
                }
            }
            Node::Split(s) => {
                if !(s.cover.is_finite() && s.cover >= 0.0) {
                    return Err(format!("node {i} has an invalid cover {}", s.cover));
                }
                if s.feature as usize >= num_features {
                    return Err(format!(
                        "node {i} tests feature {} but the model has {num_features} features",
                        s.feature
                    ));
                }
                for c in [s.left, s.right] {
                    let c = c as usize;
                    if c >= n {
                        return Err(format!("node {i} points to missing node {c}"));
                    }
                    if c == 0 {
                        return Err(format!("node {i} points back to the root"));
                    }
                    parent_count[c] = parent_count[c].saturating_add(1);
                }
                if s.left == s.right {
                    return Err(format!("node {i} has the same node as both children"));
                }
                match &s.test {
                    Test::Less(t) | Test::LessEqual(t) if t.is_nan() => {
                        return Err(format!("node {i} has a NaN threshold"))
                    }
                    Test::LessF32(t) if t.is_nan() => {
                        return Err(format!("node {i} has a NaN threshold"))
                    }
                    Test::Categories(c) => {
                        if c.categories.windows(2).any(|w| w[0] >= w[1]) {
                            return Err(format!("node {i} has an unsorted category set"));
                        }
                        if c.categories.last().is_some_and(|&m| m >= MAX_CATEGORY) {
                            return Err(format!(
                                "node {i} has a category code of {MAX_CATEGORY} or more"
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    // A tree: every node but the root has exactly one parent and all are reachable.
    for (i, &c) in parent_count.iter().enumerate().skip(1) {
        if c != 1 {
            return Err(format!(
                "node {i} has {c} parents (a tree needs exactly one)"
            ));
        }
    }
    let mut reached = 0usize;
    let mut stack = vec![0usize];
    while let Some(i) = stack.pop() {
        reached += 1;
        if reached > n {
            return Err("contains a cycle".into());
        }
        if let Node::Split(s) = &tree.nodes[i] {
            stack.push(s.left as usize);
            stack.push(s.right as usize);
        }
    }
    if reached != n {
        return Err(format!(
            "{} nodes are not reachable from the root",
            n - reached
        ));
    }
    Ok(())
}

/// Largest category code a categorical split may hold (bitsets are kept small).
pub const MAX_CATEGORY: u32 = 1 << 24;

#[cfg(test)]
mod tests {
    use super::*;

    fn stump(test: Test, missing: Missing, default_left: bool) -> Ensemble {
        Ensemble {
            features: vec![Feature {
                name: "x".into(),
                kind: FeatureKind::Numeric,
            }],
            trees: vec![Tree {
                nodes: vec![
                    Node::Split(Split {
                        feature: 0,
                        test,
                        missing,
                        default_left,
                        left: 1,
                        right: 2,
                        cover: 2.0,
                    }),
                    Node::Leaf {
                        value: -1.0,
                        id: 1,
                        cover: 1.0,
                    },
                    Node::Leaf {
                        value: 1.0,
                        id: 2,
                        cover: 1.0,
                    },
                ],
            }],
            base_margin: 0.0,
            objective: Objective::Logistic { scale: 1.0 },
            accumulation: Accumulation::F64,
            average_output: false,
            linear: None,
        }
    }

    #[test]
    fn split_semantics() {
        let s = |test, missing, dl| match &stump(test, missing, dl).trees[0].nodes[0] {
            Node::Split(s) => s.clone(),
            Node::Leaf { .. } => unreachable!(),
        };
        let le = s(Test::LessEqual(0.5), Missing::NanAsZero, false);
        assert!(le.goes_left(0.5));
        assert!(!le.goes_left(0.50001));
        assert!(le.goes_left(f64::NAN), "NaN is 0.0 <= 0.5");
        let zm = s(Test::LessEqual(-1.0), Missing::ZeroOrNan, true);
        assert!(zm.goes_left(0.0));
        assert!(zm.goes_left(1e-36));
        assert!(!zm.goes_left(1e-30));
        let f = s(Test::LessF32(0.1), Missing::Nan, false);
        // 0.1f64 rounds to 0.1f32, which is not < 0.1f32.
        assert!(!f.goes_left(0.1));
        assert!(f.goes_left(0.0999999));
        assert!(!f.goes_left(f64::NAN));
    }

    #[test]
    fn validate_rejects_bad_structure() {
        let mut e = stump(Test::Less(1.0), Missing::Nan, true);
        assert!(e.validate().is_ok());
        if let Node::Split(s) = &mut e.trees[0].nodes[0] {
            s.right = 1;
        }
        assert!(e.validate().is_err());
        let mut e = stump(Test::Less(1.0), Missing::Nan, true);
        if let Node::Split(s) = &mut e.trees[0].nodes[0] {
            s.feature = 3;
        }
        let err = e.validate().unwrap_err().to_string();
        assert!(err.contains("feature 3"), "{err}");
        let mut e = stump(Test::Less(f64::NAN), Missing::Nan, true);
        assert!(e.validate().is_err());
        e.trees[0].nodes.push(Node::Leaf {
            value: 0.0,
            id: 9,
            cover: 0.0,
        });
        assert!(e.validate().is_err());
    }

    #[test]
    fn xgboost_category_cast() {
        let c = CategorySplit {
            categories: vec![1, 3],
            in_set_goes_left: false,
            cast: CategoryCast::XgboostF32,
        };
        assert_eq!(c.code(-0.5), None);
        assert_eq!(c.code(3.7), Some(3));
        assert_eq!(c.code(16_777_216.0), None);
        assert!(!c.goes_left(3.0));
        assert!(c.goes_left(2.0));
        assert!(c.goes_left(-1.0));
        let l = CategorySplit {
            categories: vec![0, 2],
            in_set_goes_left: true,
            cast: CategoryCast::LightgbmTruncate,
        };
        assert_eq!(l.code(-0.5), Some(0));
        assert!(l.goes_left(-0.5));
        assert!(!l.goes_left(-1.0));
        assert!(!l.goes_left(1e300));
    }
}
