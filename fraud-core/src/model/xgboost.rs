//! Import of XGBoost JSON models (`Booster.save_model("m.json")`, XGBoost 2.x and 3.x).
//!
//! Supported: the `gbtree` booster with the `binary:logistic` (or `reg:logistic`) objective,
//! numeric splits with learned default directions, and partition-based categorical splits.
//! XGBoost compares in `f32` (`(float)x < split_condition`) and sums leaves in `f32`; the
//! imported ensemble records both so the compiled model reproduces XGBoost exactly. Split
//! conditions are read from their decimal text straight into `f32` (no rounding through
//! `f64`). Anything else (multiclass, other objectives, `dart`, `gblinear`, vector leaves) is
//! refused with a message naming it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ensemble::{
    Accumulation, CategoryCast, CategorySplit, Ensemble, Feature, FeatureKind, Missing, Node,
    Objective, Split, Test, Tree,
};
use super::{Artifact, ImportError};

const FORMAT: &str = "XGBoost JSON";

fn malformed(detail: impl Into<String>) -> ImportError {
    ImportError::malformed(FORMAT, detail)
}

fn unsupported(detail: impl Into<String>) -> ImportError {
    ImportError::unsupported(FORMAT, detail)
}

#[derive(Deserialize)]
struct File {
    learner: Learner,
    #[serde(default)]
    version: Vec<u32>,
}

#[derive(Deserialize)]
struct Learner {
    #[serde(default)]
    attributes: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    feature_names: Vec<String>,
    #[serde(default)]
    feature_types: Vec<String>,
    gradient_booster: Booster,
    learner_model_param: LearnerModelParam,
    objective: ObjectiveJson,
}

#[derive(Deserialize)]
struct Booster {
    name: String,
    #[serde(default)]
    model: Option<GbtreeModel>,
}

#[derive(Deserialize)]
struct GbtreeModel {
    trees: Vec<TreeJson>,
    #[serde(default)]
    tree_info: Vec<i64>,
    /// Where each boosting iteration's trees start (one more entry than iterations).
    #[serde(default)]
    iteration_indptr: Vec<i64>,
    #[serde(default)]
    gbtree_model_param: Option<GbtreeParam>,
    /// The categories of each feature (XGBoost 3: the encoder it re-codes input with).
    #[serde(default)]
    cats: Option<Cats>,
}

#[derive(Deserialize)]
struct Cats {
    #[serde(default)]
    enc: Vec<CatEnc>,
}

/// One feature's categories: strings as UTF-8 bytes in `values` cut at `offsets`, or
/// numbers in `values` when `offsets` is empty.
#[derive(Deserialize)]
struct CatEnc {
    #[serde(default)]
    offsets: Vec<usize>,
    #[serde(default)]
    values: Vec<serde_json::Value>,
}

/// The categories stored in the model, by feature name.
fn stored_categories(
    cats: Option<&Cats>,
    features: &[Feature],
) -> Result<BTreeMap<String, Vec<serde_json::Value>>, ImportError> {
    let mut out = BTreeMap::new();
    let Some(c) = cats else { return Ok(out) };
    for (f, enc) in c.enc.iter().enumerate() {
        if enc.values.is_empty() {
            continue;
        }
        let Some(feature) = features.get(f) else {
            return Err(malformed("cats has more features than the model"));
        };
        let list = if enc.offsets.is_empty() {
            enc.values.clone()
        } else {
            let bytes: Vec<u8> = enc
                .values
                .iter()
                .map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| malformed(format!("cats of `{}`: not bytes", feature.name)))?;
            let mut list = Vec::with_capacity(enc.offsets.len());
            for w in enc.offsets.windows(2) {
                let s = bytes
                    .get(w[0]..w[1])
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .ok_or_else(|| malformed(format!("cats of `{}`: bad offsets", feature.name)))?;
                list.push(serde_json::Value::String(s.to_string()));
            }
            list
        };
        out.insert(feature.name.clone(), list);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct GbtreeParam {
    #[serde(default)]
    num_parallel_tree: Option<String>,
}

/// Which boosting iterations of an XGBoost model to import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Iterations {
    /// What XGBoost's scikit-learn `predict_proba` uses: up to and including the model's
    /// `best_iteration` when it has one (early stopping), else every iteration.
    #[default]
    Best,
    /// Every iteration, whatever `best_iteration` says (`Booster.predict` on its defaults).
    All,
    /// Iterations `begin..end`, as XGBoost's `iteration_range=(begin, end)` (`end` 0: to the
    /// last).
    Range(usize, usize),
}

/// The metadata attribute that says which iterations were imported.
pub const ITERATIONS_ATTRIBUTE: &str = "fraud_imported_iterations";

#[derive(Deserialize)]
struct LearnerModelParam {
    base_score: String,
    #[serde(default)]
    num_class: Option<String>,
    #[serde(default)]
    num_feature: Option<String>,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct ObjectiveJson {
    name: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Int(i64),
}

impl Flag {
    fn is_set(&self) -> bool {
        match self {
            Flag::Bool(b) => *b,
            Flag::Int(i) => *i != 0,
        }
    }
}

#[derive(Deserialize)]
struct TreeJson {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    split_conditions: Vec<Box<RawValue>>,
    default_left: Vec<Flag>,
    #[serde(default)]
    split_type: Vec<i64>,
    #[serde(default)]
    categories: Vec<i64>,
    #[serde(default)]
    categories_nodes: Vec<i64>,
    #[serde(default)]
    categories_segments: Vec<i64>,
    #[serde(default)]
    categories_sizes: Vec<i64>,
    #[serde(default)]
    sum_hessian: Vec<f64>,
    #[serde(default)]
    tree_param: Option<TreeParam>,
}

#[derive(Deserialize)]
struct TreeParam {
    #[serde(default)]
    size_leaf_vector: Option<String>,
}

/// Parses a number XGBoost wrote for an `f32`, straight from its decimal text.
fn parse_f32(raw: &RawValue, what: &str) -> Result<f32, ImportError> {
    let text = raw.get().trim().trim_matches('"');
    match text {
        "NaN" | "nan" => return Ok(f32::NAN),
        "Infinity" | "inf" => return Ok(f32::INFINITY),
        "-Infinity" | "-inf" => return Ok(f32::NEG_INFINITY),
        _ => {}
    }
    text.parse::<f32>()
        .map_err(|_| malformed(format!("{what}: `{text}` is not a number")))
}

/// Parses `base_score`: `"5E-1"` (2.x) or `"[5E-1]"` (3.x).
fn parse_base_score(s: &str) -> Result<f32, ImportError> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    if parts.len() != 1 {
        return Err(unsupported(format!(
            "base_score has {} values (multi-target models are not supported)",
            parts.len()
        )));
    }
    parts[0]
        .parse::<f32>()
        .map_err(|_| malformed(format!("base_score `{s}` is not a number")))
}

fn parse_count(s: &Option<String>, what: &str) -> Result<Option<i64>, ImportError> {
    s.as_deref()
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| malformed(format!("{what} `{v}` is not an integer")))
        })
        .transpose()
}

/// XGBoost 2.x writes bare `NaN` (and may write `Infinity`) for unused split conditions, which
/// is not JSON. Outside strings, those tokens are quoted so the parser accepts them;
/// [`parse_f32`] reads them back.
fn quote_non_finite(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const TOKENS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let needs = bytes.windows(3).any(|w| w == b"NaN" || w == b"Inf");
    if !needs {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            out.push(b);
            i += 1;
            continue;
        }
        if let Some(t) = TOKENS.iter().find(|t| bytes[i..].starts_with(t)) {
            out.push(b'"');
            out.extend_from_slice(t);
            out.push(b'"');
            i += t.len();
            continue;
        }
        out.push(b);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// Imports an XGBoost JSON model from a file, with the iterations XGBoost predicts with
/// (see [`Iterations::Best`]).
pub fn import_file(path: impl AsRef<Path>) -> Result<Artifact, ImportError> {
    import_file_with(path, Iterations::Best)
}

/// Imports the `iterations` of an XGBoost JSON model from a file.
pub fn import_file_with(
    path: impl AsRef<Path>,
    iterations: Iterations,
) -> Result<Artifact, ImportError> {
    let path = path.as_ref();
    let text = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    import_bytes_with(&text, iterations)
}

/// Imports an XGBoost JSON model from its bytes, with the iterations XGBoost predicts with
/// (see [`Iterations::Best`]).
pub fn import_bytes(bytes: &[u8]) -> Result<Artifact, ImportError> {
    import_bytes_with(bytes, Iterations::Best)
}

/// Imports the `iterations` of an XGBoost JSON model from its bytes. The metadata attribute
/// [`ITERATIONS_ATTRIBUTE`] says which were imported, of how many.
pub fn import_bytes_with(bytes: &[u8], iterations: Iterations) -> Result<Artifact, ImportError> {
    if bytes.first() == Some(&b'{') && bytes.get(1) == Some(&b'L') {
        return Err(unsupported(
            "this looks like UBJSON; save the model with a `.json` file name",
        ));
    }
    let bytes = quote_non_finite(bytes);
    let file: File = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
    let (ensemble, attributes, categories) = convert(file.learner, iterations)?;
    let version = if file.version.is_empty() {
        "unknown".to_string()
    } else {
        file.version
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut artifact = Artifact::new(ensemble, format!("xgboost {version}"));
    artifact.metadata.attributes = attributes;
    artifact.metadata.categories = categories;
    Ok(artifact)
}

/// The trees of iterations `range` (from `iteration_indptr`, else `num_parallel_tree` trees
/// an iteration), and a description of the choice.
fn select_iterations(
    model: &GbtreeModel,
    attributes: &BTreeMap<String, serde_json::Value>,
    iterations: Iterations,
) -> Result<(std::ops::Range<usize>, String), ImportError> {
    let n_trees = model.trees.len();
    let per_iteration = match model
        .gbtree_model_param
        .as_ref()
        .and_then(|p| p.num_parallel_tree.as_deref())
    {
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| malformed(format!("num_parallel_tree `{s}` is not a count")))?,
        None => 1,
    };
    let starts: Vec<usize> = if model.iteration_indptr.len() >= 2 {
        let v: Vec<usize> = model
            .iteration_indptr
            .iter()
            .map(|&x| usize::try_from(x).unwrap_or(usize::MAX))
            .collect();
        if v[0] != 0 || v.windows(2).any(|w| w[0] > w[1]) || v[v.len() - 1] != n_trees {
            return Err(malformed("iteration_indptr does not partition the trees"));
        }
        v
    } else {
        if !n_trees.is_multiple_of(per_iteration) {
            return Err(malformed(format!(
                "{n_trees} trees are not whole iterations of {per_iteration}"
            )));
        }
        (0..=n_trees / per_iteration)
            .map(|i| i * per_iteration)
            .collect()
    };
    let total = starts.len() - 1;
    let best = match attributes.get("best_iteration") {
        None => None,
        Some(v) => {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some(text.trim().parse::<usize>().map_err(|_| {
                malformed(format!(
                    "best_iteration `{text}` is not an iteration number"
                ))
            })?)
        }
    };
    let (begin, end, why) = match iterations {
        Iterations::Best => match best {
            Some(b) if b + 1 < total => (0, b + 1, format!("best_iteration {b}")),
            Some(b) => (0, total, format!("best_iteration {b} is the last")),
            None => (0, total, "no best_iteration: every iteration".to_string()),
        },
        Iterations::All => (0, total, "every iteration, as asked".to_string()),
        Iterations::Range(b, e) => {
            let e = if e == 0 { total } else { e };
            if b >= e || e > total {
                return Err(unsupported(format!(
                    "iteration range {b}..{e} is not within the model's {total} iterations"
                )));
            }
            (b, e, format!("iteration_range ({b}, {e}), as asked"))
        }
    };
    Ok((
        starts[begin]..starts[end],
        format!("iterations {begin}..{end} of {total} ({why})"),
    ))
}

type Converted = (
    Ensemble,
    BTreeMap<String, String>,
    BTreeMap<String, Vec<serde_json::Value>>,
);

fn convert(learner: Learner, iterations: Iterations) -> Result<Converted, ImportError> {
    let objective = learner.objective.name.as_str();
    if objective != "binary:logistic" && objective != "reg:logistic" {
        return Err(unsupported(format!(
            "objective `{objective}` (only binary:logistic is supported)"
        )));
    }
    let param = &learner.learner_model_param;
    if let Some(n) = parse_count(&param.num_class, "num_class")? {
        if n > 1 {
            return Err(unsupported(format!("multiclass model with {n} classes")));
        }
    }
    if let Some(n) = parse_count(&param.num_target, "num_target")? {
        if n > 1 {
            return Err(unsupported(format!("multi-target model with {n} targets")));
        }
    }
    let base_score = parse_base_score(&param.base_score)?;
    if !(base_score > 0.0 && base_score < 1.0) {
        return Err(malformed(format!(
            "base_score {base_score} is not a probability strictly between 0 and 1"
        )));
    }
    // XGBoost's ProbToMargin for the logistic objective, in f32.
    let base_margin = -((1.0f32 / base_score - 1.0f32).ln());

    let booster = &learner.gradient_booster;
    if booster.name != "gbtree" {
        return Err(unsupported(format!(
            "booster `{}` (only gbtree is supported)",
            booster.name
        )));
    }
    let model = booster
        .model
        .as_ref()
        .ok_or_else(|| malformed("gradient_booster has no model"))?;
    if model.tree_info.iter().any(|&g| g != 0) {
        return Err(unsupported("trees for more than one output group"));
    }

    let declared = parse_count(&param.num_feature, "num_feature")?;
    let mut num_features = declared
        .unwrap_or(0)
        .max(learner.feature_names.len() as i64);
    for t in &model.trees {
        for &f in &t.split_indices {
            num_features = num_features.max(f + 1);
        }
    }
    let num_features = usize::try_from(num_features)
        .ok()
        .filter(|&n| n <= super::ensemble::MAX_FEATURES)
        .ok_or_else(|| malformed(format!("num_feature {num_features} is out of range")))?;
    if !learner.feature_names.is_empty() && learner.feature_names.len() != num_features {
        return Err(malformed(format!(
            "{} feature names for {num_features} features",
            learner.feature_names.len()
        )));
    }
    let mut features: Vec<Feature> = (0..num_features)
        .map(|i| Feature {
            name: learner
                .feature_names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("f{i}")),
            kind: match learner.feature_types.get(i).map(String::as_str) {
                Some("c") => FeatureKind::Categorical,
                _ => FeatureKind::Numeric,
            },
        })
        .collect();

    let (selected, chosen) = select_iterations(model, &learner.attributes, iterations)?;
    let mut trees = Vec::with_capacity(selected.len());
    for (t, tree) in model
        .trees
        .iter()
        .enumerate()
        .take(selected.end)
        .skip(selected.start)
    {
        let tree = convert_tree(tree, num_features, &mut features).map_err(|e| match e {
            ImportError::Malformed { format, detail } => ImportError::Malformed {
                format,
                detail: format!("tree {t}: {detail}"),
            },
            ImportError::Unsupported { format, detail } => ImportError::Unsupported {
                format,
                detail: format!("tree {t}: {detail}"),
            },
            other => other,
        })?;
        trees.push(tree);
    }
    let ensemble = Ensemble {
        features,
        trees,
        base_margin: base_margin as f64,
        objective: Objective::Logistic { scale: 1.0 },
        accumulation: Accumulation::F32,
        average_output: false,
        linear: None,
    };
    ensemble.validate()?;
    ensemble.check_limits(&super::ModelLimits::default())?;
    let mut attributes: BTreeMap<String, String> = learner
        .attributes
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect();
    attributes.insert(ITERATIONS_ATTRIBUTE.to_string(), chosen);
    let categories = stored_categories(model.cats.as_ref(), &ensemble.features)?;
    Ok((ensemble, attributes, categories))
}

fn convert_tree(
    t: &TreeJson,
    num_features: usize,
    features: &mut [Feature],
) -> Result<Tree, ImportError> {
    if let Some(p) = &t.tree_param {
        if let Some(s) = &p.size_leaf_vector {
            if s.trim() != "0" && s.trim() != "1" {
                return Err(unsupported(format!("vector leaves (size_leaf_vector={s})")));
            }
        }
    }
    let n = t.left_children.len();
    if n == 0 {
        return Err(malformed("tree has no nodes"));
    }
    for (name, len) in [
        ("right_children", t.right_children.len()),
        ("split_indices", t.split_indices.len()),
        ("split_conditions", t.split_conditions.len()),
        ("default_left", t.default_left.len()),
    ] {
        if len != n {
            return Err(malformed(format!(
                "{name} has {len} entries, left_children has {n}"
            )));
        }
    }
    if !t.split_type.is_empty() && t.split_type.len() != n {
        return Err(malformed(format!(
            "split_type has {} entries for {n} nodes",
            t.split_type.len()
        )));
    }
    // Category sets by node id.
    let k = t.categories_nodes.len();
    if t.categories_segments.len() != k || t.categories_sizes.len() != k {
        return Err(malformed(
            "categories_nodes, categories_segments and categories_sizes differ in length",
        ));
    }
    let mut cat_sets: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for j in 0..k {
        let node = usize::try_from(t.categories_nodes[j])
            .ok()
            .filter(|&v| v < n)
            .ok_or_else(|| malformed(format!("categories_nodes[{j}] is out of range")))?;
        let beg = usize::try_from(t.categories_segments[j]).ok();
        let size = usize::try_from(t.categories_sizes[j]).ok();
        let slice = match (beg, size) {
            (Some(b), Some(s)) => b
                .checked_add(s)
                .and_then(|e| t.categories.get(b..e))
                .ok_or_else(|| malformed(format!("category segment {j} is out of range")))?,
            _ => return Err(malformed(format!("category segment {j} is negative"))),
        };
        let mut set = Vec::with_capacity(slice.len());
        for &c in slice {
            let c = u32::try_from(c)
                .ok()
                .filter(|&c| c < super::ensemble::MAX_CATEGORY)
                .ok_or_else(|| malformed(format!("category {c} is out of range")))?;
            set.push(c);
        }
        set.sort_unstable();
        set.dedup();
        cat_sets.insert(node, set);
    }

    // Rebuild from the root, keeping only reachable nodes (leaf ids stay XGBoost node ids).
    let mut nodes: Vec<Node> = Vec::new();
    let mut map = vec![u32::MAX; n];
    let mut stack = vec![(0usize, None::<(usize, bool)>)];
    while let Some((src, parent)) = stack.pop() {
        if map[src] != u32::MAX {
            return Err(malformed(format!("node {src} is reached twice")));
        }
        let dst = nodes.len();
        map[src] = dst as u32;
        if let Some((p, is_left)) = parent {
            if let Node::Split(s) = &mut nodes[p] {
                if is_left {
                    s.left = dst as u32;
                } else {
                    s.right = dst as u32;
                }
            }
        }
        let cover = t
            .sum_hessian
            .get(src)
            .copied()
            .filter(|c| c.is_finite() && *c >= 0.0)
            .unwrap_or(0.0);
        let left = t.left_children[src];
        if left == -1 {
            let value = parse_f32(&t.split_conditions[src], "leaf value")?;
            nodes.push(Node::Leaf {
                value: value as f64,
                id: src as u32,
                cover,
            });
            continue;
        }
        let child = |c: i64| {
            usize::try_from(c)
                .ok()
                .filter(|&c| c < n && c != src)
                .ok_or_else(|| malformed(format!("node {src} has child {c} out of range")))
        };
        let (l, r) = (child(left)?, child(t.right_children[src])?);
        let feature = usize::try_from(t.split_indices[src])
            .ok()
            .filter(|&f| f < num_features)
            .ok_or_else(|| {
                malformed(format!(
                    "node {src} splits on feature {} out of range",
                    t.split_indices[src]
                ))
            })?;
        let categorical = t.split_type.get(src).copied().unwrap_or(0) == 1;
        let test = if categorical {
            features[feature].kind = FeatureKind::Categorical;
            let set = cat_sets
                .remove(&src)
                .ok_or_else(|| malformed(format!("categorical node {src} has no category set")))?;
            Test::Categories(CategorySplit {
                categories: set,
                in_set_goes_left: false,
                cast: CategoryCast::XgboostF32,
            })
        } else {
            Test::LessF32(parse_f32(&t.split_conditions[src], "split condition")?)
        };
        nodes.push(Node::Split(Split {
            feature: feature as u32,
            test,
            missing: Missing::Nan,
            default_left: t.default_left[src].is_set(),
            left: 0,
            right: 0,
            cover,
        }));
        if nodes.len() > n {
            return Err(malformed("tree has a cycle"));
        }
        stack.push((r, Some((dst, false))));
        stack.push((l, Some((dst, true))));
    }
    Ok(Tree { nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUMP: &str = r#"{"learner":{"attributes":{},"feature_names":["a","b"],"feature_types":["float","float"],
      "gradient_booster":{"model":{"gbtree_model_param":{"num_parallel_tree":"1","num_trees":"1"},"iteration_indptr":[0,1],
      "tree_info":[0],"trees":[{"base_weights":[0,0,0],"categories":[],"categories_nodes":[],"categories_segments":[],
      "categories_sizes":[],"default_left":[1,0,0],"id":0,"left_children":[1,-1,-1],"loss_changes":[1,0,0],
      "parents":[2147483647,0,0],"right_children":[2,-1,-1],"split_conditions":[0.5,-0.25,0.375],"split_indices":[1,0,0],
      "split_type":[0,0,0],"sum_hessian":[1,1,1],"tree_param":{"num_deleted":"0","num_feature":"2","num_nodes":"3","size_leaf_vector":"1"}}]},
      "name":"gbtree"},"learner_model_param":{"base_score":"[5E-1]","boost_from_average":"1","num_class":"0","num_feature":"2","num_target":"1"},
      "objective":{"name":"binary:logistic","reg_loss_param":{"scale_pos_weight":"1"}}},"version":[3,0,0]}"#;

    #[test]
    fn imports_a_stump() {
        let a = import_bytes(STUMP.as_bytes()).unwrap();
        assert_eq!(a.metadata.source, "xgboost 3.0.0");
        assert_eq!(a.ensemble.feature_names(), vec!["a", "b"]);
        assert_eq!(a.ensemble.base_margin, 0.0);
        let row_left = [0.0, 0.25];
        let row_missing = [0.0, f64::NAN];
        let row_right = [0.0, 0.5];
        assert_eq!(a.ensemble.reference_margin(&row_left), -0.25);
        assert_eq!(a.ensemble.reference_margin(&row_missing), -0.25);
        assert_eq!(a.ensemble.reference_margin(&row_right), 0.375);
    }

    /// STUMP's tree three times (one an iteration), with `best_iteration` = `best`.
    fn early_stopped(best: &str) -> String {
        let start = STUMP.find(r#"{"base_weights""#).unwrap();
        let end = STUMP.find(r#"]},"#).unwrap();
        let tree = &STUMP[start..end];
        STUMP
            .replace(tree, &[tree, tree, tree].join(","))
            .replace(
                r#""iteration_indptr":[0,1]"#,
                r#""iteration_indptr":[0,1,2,3]"#,
            )
            .replace(r#""tree_info":[0]"#, r#""tree_info":[0,0,0]"#)
            .replace(
                r#""attributes":{}"#,
                &format!(r#""attributes":{{"best_iteration":"{best}","best_score":"0.1"}}"#),
            )
    }

    #[test]
    fn an_early_stopped_model_is_imported_up_to_its_best_iteration() {
        let row = [0.0, 0.25];
        let text = early_stopped("0");
        let best = import_bytes(text.as_bytes()).unwrap();
        assert_eq!(best.ensemble.trees.len(), 1);
        assert_eq!(best.ensemble.reference_margin(&row), -0.25);
        let said = &best.metadata.attributes[ITERATIONS_ATTRIBUTE];
        assert!(
            said.contains("0..1 of 3") && said.contains("best_iteration 0"),
            "{said}"
        );
        let all = import_bytes_with(text.as_bytes(), Iterations::All).unwrap();
        assert_eq!(all.ensemble.trees.len(), 3);
        assert_eq!(all.ensemble.reference_margin(&row), -0.75);
        let range = import_bytes_with(text.as_bytes(), Iterations::Range(1, 0)).unwrap();
        assert_eq!(range.ensemble.trees.len(), 2);
        assert!(import_bytes_with(text.as_bytes(), Iterations::Range(2, 5)).is_err());
        // best_iteration at the last iteration: every tree.
        assert_eq!(
            import_bytes(early_stopped("2").as_bytes())
                .unwrap()
                .ensemble
                .trees
                .len(),
            3
        );
        assert!(import_bytes(early_stopped("x").as_bytes()).is_err());
    }

    #[test]
    fn refuses_other_objectives_naming_them() {
        let s = STUMP.replace("binary:logistic", "multi:softprob");
        let err = import_bytes(s.as_bytes()).err().unwrap().to_string();
        assert!(err.contains("multi:softprob"), "{err}");
        let s = STUMP.replace(r#""name":"gbtree""#, r#""name":"gblinear""#);
        let err = import_bytes(s.as_bytes()).err().unwrap().to_string();
        assert!(err.contains("gblinear"), "{err}");
    }

    #[test]
    fn reads_bare_nan_as_xgboost_2_writes_it() {
        let s = STUMP.replace(
            r#""split_conditions":[0.5,-0.25,0.375]"#,
            r#""split_conditions":[0.5,-0.25,0.375],"x":"NaN \" NaN","y":[NaN,-Infinity]"#,
        );
        assert!(import_bytes(s.as_bytes()).is_ok());
        let q = quote_non_finite(br#"{"a":"NaN","b":[NaN,-Infinity,Infinity]}"#);
        assert_eq!(
            &*q,
            br#"{"a":"NaN","b":["NaN","-Infinity","Infinity"]}"#.as_slice()
        );
    }

    #[test]
    fn refuses_broken_structure() {
        let s = STUMP.replace(
            r#""left_children":[1,-1,-1]"#,
            r#""left_children":[0,-1,-1]"#,
        );
        assert!(import_bytes(s.as_bytes()).is_err());
        let s = STUMP.replace(r#""split_indices":[1,0,0]"#, r#""split_indices":[7,0,0]"#);
        assert!(import_bytes(s.as_bytes()).is_err());
        let s = STUMP.replace(
            r#""right_children":[2,-1,-1]"#,
            r#""right_children":[9,-1,-1]"#,
        );
        let err = import_bytes(s.as_bytes()).err().unwrap().to_string();
        assert!(err.contains("tree 0"), "{err}");
        assert!(import_bytes(b"{").is_err());
        assert!(import_bytes(b"").is_err());
    }
}
