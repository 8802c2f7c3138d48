//! Import of LightGBM text models (`Booster.save_model("m.txt")`, LightGBM 4.x).
//!
//! Supported: the `binary` objective (with its `sigmoid` scale), numeric splits with all three
//! missing-value modes (none: NaN is 0; zero: zero and NaN take the default direction; NaN),
//! categorical splits (bitset membership: in the set goes left, NaN and negatives go right),
//! and random-forest output averaging. LightGBM compares doubles (`x <= threshold`) and sums
//! leaves in doubles; thresholds are written with 17 significant digits, so they are read back
//! exactly. LightGBM's predictor also reads any input within ±1e-35 of zero as exactly zero;
//! the importer folds that rule into the few thresholds it affects. Refused with a message naming it: other objectives, multiclass, linear trees.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::ensemble::{
    Accumulation, CategoryCast, CategorySplit, Ensemble, Feature, FeatureKind, Missing, Node,
    Objective, Split, Test, Tree, LIGHTGBM_ZERO_THRESHOLD, MAX_CATEGORY,
};
use super::{Artifact, ImportError};

const FORMAT: &str = "LightGBM text";

fn malformed(detail: impl Into<String>) -> ImportError {
    ImportError::malformed(FORMAT, detail)
}

fn unsupported(detail: impl Into<String>) -> ImportError {
    ImportError::unsupported(FORMAT, detail)
}

/// Imports a LightGBM text model from a file.
pub fn import_file(path: impl AsRef<Path>) -> Result<Artifact, ImportError> {
    let path = path.as_ref();
    let text = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    import_bytes(&text)
}

/// Imports a LightGBM text model from its bytes.
pub fn import_bytes(bytes: &[u8]) -> Result<Artifact, ImportError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| malformed(format!("not UTF-8 text (byte {})", e.valid_up_to())))?;
    import_str(text)
}

/// Key-value lines of one section, with the line number of each key.
struct Section<'a> {
    name: String,
    values: HashMap<&'a str, (&'a str, usize)>,
}

impl<'a> Section<'a> {
    fn get(&self, key: &str) -> Option<(&'a str, usize)> {
        self.values.get(key).copied()
    }

    fn require(&self, key: &str) -> Result<(&'a str, usize), ImportError> {
        self.get(key)
            .ok_or_else(|| malformed(format!("{}: missing `{key}`", self.name)))
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T, ImportError> {
        let (v, line) = self.require(key)?;
        v.trim().parse::<T>().map_err(|_| {
            malformed(format!(
                "{} line {line}: `{key}={v}` is not a valid value",
                self.name
            ))
        })
    }

    fn list<T: std::str::FromStr>(&self, key: &str, len: usize) -> Result<Vec<T>, ImportError> {
        let (v, line) = self.require(key)?;
        let items: Vec<&str> = v.split_whitespace().collect();
        if items.len() != len {
            return Err(malformed(format!(
                "{} line {line}: `{key}` has {} values, expected {len}",
                self.name,
                items.len()
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_number::<T>(s).ok_or_else(|| {
                    malformed(format!(
                        "{} line {line}: `{key}` value {i} (`{s}`) is not valid",
                        self.name
                    ))
                })
            })
            .collect()
    }
}

fn parse_number<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse::<T>().ok().or_else(|| match s {
        // LightGBM writes C's spelling of infinities.
        "inf" | "+inf" => "inf".parse().ok(),
        "-inf" => "-inf".parse().ok(),
        _ => None,
    })
}

/// Splits the file into the header, the tree sections and the trailing parameters.
fn sections(text: &str) -> Result<(Section<'_>, Vec<Section<'_>>, Vec<&str>), ImportError> {
    let mut header = Section {
        name: "header".into(),
        values: HashMap::new(),
    };
    let mut trees: Vec<Section<'_>> = Vec::new();
    let mut trailer = Vec::new();
    let mut ended = false;
    let mut saw_tree_magic = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end_matches('\r');
        if ended {
            trailer.push(line);
            continue;
        }
        if i == 0 {
            if line.trim() != "tree" {
                return Err(malformed(
                    "the first line is not `tree` (is this a LightGBM model file?)",
                ));
            }
            saw_tree_magic = true;
            continue;
        }
        if line == "end of trees" {
            ended = true;
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("Tree=") {
            trees.push(Section {
                name: format!("Tree={rest}"),
                values: HashMap::new(),
            });
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, v),
            None => (line, ""),
        };
        let target = trees.last_mut().unwrap_or(&mut header);
        target.values.insert(key, (value, line_no));
    }
    if !saw_tree_magic {
        return Err(malformed("the file is empty"));
    }
    if !ended {
        return Err(malformed(
            "no `end of trees` line: the file is truncated or not a model",
        ));
    }
    Ok((header, trees, trailer))
}

/// Imports a LightGBM text model from its text.
pub fn import_str(text: &str) -> Result<Artifact, ImportError> {
    let (header, tree_sections, trailer) = sections(text)?;
    let (objective, _) = header.require("objective")?;
    let mut words = objective.split_whitespace();
    let name = words.next().unwrap_or("");
    if name != "binary" {
        return Err(unsupported(format!(
            "objective `{objective}` (only binary is supported)"
        )));
    }
    let mut scale = 1.0f64;
    for w in words {
        if let Some(v) = w.strip_prefix("sigmoid:") {
            scale = v
                .parse()
                .map_err(|_| malformed(format!("objective sigmoid `{v}` is not a number")))?;
        }
    }
    let num_class: i64 = header.parse("num_class")?;
    if num_class != 1 {
        return Err(unsupported(format!(
            "multiclass model with {num_class} classes"
        )));
    }
    if let Some((v, _)) = header.get("num_tree_per_iteration") {
        if v.trim() != "1" {
            return Err(unsupported(format!("{v} trees per iteration")));
        }
    }
    let max_feature_idx: i64 = header.parse("max_feature_idx")?;
    let num_features = usize::try_from(max_feature_idx + 1)
        .ok()
        .filter(|&n| n <= super::ensemble::MAX_FEATURES)
        .ok_or_else(|| malformed(format!("max_feature_idx {max_feature_idx} is out of range")))?;
    let names: Vec<String> = match header.get("feature_names") {
        Some((v, _)) => v.split_whitespace().map(str::to_string).collect(),
        None => (0..num_features).map(|i| format!("Column_{i}")).collect(),
    };
    if names.len() != num_features {
        return Err(malformed(format!(
            "{} feature names for {num_features} features",
            names.len()
        )));
    }
    let infos: Vec<&str> = header
        .get("feature_infos")
        .map(|(v, _)| v.split_whitespace().collect())
        .unwrap_or_default();
    let mut features: Vec<Feature> = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let info = infos.get(i).copied().unwrap_or("none");
            let categorical = info != "none" && !info.starts_with('[');
            Feature {
                name,
                kind: if categorical {
                    FeatureKind::Categorical
                } else {
                    FeatureKind::Numeric
                },
            }
        })
        .collect();
    let average_output = header.get("average_output").is_some();

    let mut trees = Vec::with_capacity(tree_sections.len());
    for s in &tree_sections {
        trees.push(convert_tree(s, &mut features)?);
    }
    let ensemble = Ensemble {
        features,
        trees,
        base_margin: 0.0,
        objective: Objective::Logistic { scale },
        accumulation: Accumulation::F64,
        average_output,
        linear: None,
    };
    ensemble.validate()?;
    ensemble.check_limits(&super::ModelLimits::default())?;
    let version = header.get("version").map_or("unknown", |(v, _)| v);
    let mut artifact = Artifact::new(ensemble, format!("lightgbm {version}"));
    artifact.metadata.attributes = trailer_attributes(&trailer);
    artifact.metadata.categories = pandas_categories(&artifact)?;
    Ok(artifact)
}

/// The pandas category lists LightGBM stored (`pandas_categorical`), by feature name: the
/// i-th list belongs to the i-th categorical feature (`categorical_feature`, else the
/// features whose infos are category lists), as LightGBM pairs them.
fn pandas_categories(
    artifact: &Artifact,
) -> Result<BTreeMap<String, Vec<serde_json::Value>>, ImportError> {
    let attrs = &artifact.metadata.attributes;
    let Some(text) = attrs.get("lightgbm.pandas_categorical") else {
        return Ok(BTreeMap::new());
    };
    let lists: Vec<Vec<serde_json::Value>> = serde_json::from_str(text)
        .map_err(|e| malformed(format!("pandas_categorical is not a list of lists: {e}")))?;
    let features = &artifact.ensemble.features;
    let indices: Vec<usize> = match attrs.get("lightgbm.categorical_feature") {
        Some(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|i| {
                i.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < features.len())
                    .ok_or_else(|| malformed(format!("categorical_feature `{list}`")))
            })
            .collect::<Result<_, _>>()?,
        _ => (0..features.len())
            .filter(|&i| features[i].kind == FeatureKind::Categorical)
            .collect(),
    };
    if indices.len() != lists.len() {
        return Err(malformed(format!(
            "pandas_categorical has {} lists for {} categorical features",
            lists.len(),
            indices.len()
        )));
    }
    Ok(indices
        .into_iter()
        .zip(lists)
        .map(|(i, l)| (features[i].name.clone(), l))
        .collect())
}

/// Training parameters and the pandas category mapping from the end of the file.
fn trailer_attributes(trailer: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut in_params = false;
    for line in trailer {
        if *line == "parameters:" {
            in_params = true;
        } else if *line == "end of parameters" {
            in_params = false;
        } else if in_params {
            if let Some(p) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                if let Some((k, v)) = p.split_once(": ") {
                    out.insert(format!("lightgbm.{k}"), v.to_string());
                }
            }
        } else if let Some(v) = line.strip_prefix("pandas_categorical:") {
            if v != "null" {
                out.insert("lightgbm.pandas_categorical".into(), v.to_string());
            }
        }
    }
    out
}

/// The test equivalent to LightGBM's `x <= t` once LightGBM's input rule is applied: its
/// prediction API keeps only values with `|x| > 1e-35` from a dense row (the rest become exactly
/// 0.0). That only matters for thresholds within ±1e-35 of zero, which LightGBM does write (it
/// puts splits at ±`kZeroThreshold`); those become the equivalent test on the raw value.
fn zeroed_input_test(t: f64) -> Test {
    let z = LIGHTGBM_ZERO_THRESHOLD;
    if (0.0..z).contains(&t) {
        // (t, z] reads as 0 <= t: left.
        Test::LessEqual(z)
    } else if (-z..0.0).contains(&t) {
        // [-z, t] reads as 0 > t: right.
        Test::Less(-z)
    } else {
        Test::LessEqual(t)
    }
}

fn convert_tree(s: &Section<'_>, features: &mut [Feature]) -> Result<Tree, ImportError> {
    let err_in = |e: ImportError| match e {
        ImportError::Malformed { format, detail } if !detail.starts_with("Tree=") => {
            ImportError::Malformed {
                format,
                detail: format!("{}: {detail}", s.name),
            }
        }
        other => other,
    };
    if let Some((v, _)) = s.get("is_linear") {
        if v.trim() != "0" {
            return Err(unsupported(format!("{}: linear trees", s.name)));
        }
    }
    let num_leaves: usize = s.parse("num_leaves")?;
    if num_leaves == 0 {
        return Err(malformed(format!("{}: num_leaves is 0", s.name)));
    }
    let leaf_value: Vec<f64> = s.list("leaf_value", num_leaves)?;
    if num_leaves == 1 {
        return Ok(Tree {
            nodes: vec![Node::Leaf {
                value: leaf_value[0],
                id: 0,
                cover: 0.0,
            }],
        });
    }
    let m = num_leaves - 1;
    let split_feature: Vec<i64> = s.list("split_feature", m)?;
    let threshold: Vec<f64> = s.list("threshold", m)?;
    let decision_type: Vec<u8> = s.list("decision_type", m)?;
    let left_child: Vec<i64> = s.list("left_child", m)?;
    let right_child: Vec<i64> = s.list("right_child", m)?;
    // Row counts, which LightGBM's own TreeSHAP weighs by; absent in hand-written files.
    let leaf_count: Vec<f64> = if s.get("leaf_count").is_some() {
        s.list("leaf_count", num_leaves)?
    } else {
        vec![0.0; num_leaves]
    };
    let internal_count: Vec<f64> = if s.get("internal_count").is_some() {
        s.list("internal_count", m)?
    } else {
        vec![0.0; m]
    };
    let num_cat: usize = s.get("num_cat").map_or(Ok(0), |_| s.parse("num_cat"))?;
    let (cat_boundaries, cat_threshold): (Vec<usize>, Vec<u32>) = if num_cat > 0 {
        let b: Vec<usize> = s.list("cat_boundaries", num_cat + 1)?;
        let total = *b.last().unwrap_or(&0);
        (b, s.list("cat_threshold", total)?)
    } else {
        (Vec::new(), Vec::new())
    };

    // Canonical nodes: internal node i -> position of first visit; built depth-first.
    let mut nodes: Vec<Node> = Vec::with_capacity(2 * num_leaves - 1);
    let mut visited_internal = vec![false; m];
    let mut visited_leaf = vec![false; num_leaves];
    // (lightgbm child code, parent position, is_left)
    let mut stack: Vec<(i64, Option<(usize, bool)>)> = vec![(0, None)];
    while let Some((code, parent)) = stack.pop() {
        let dst = nodes.len();
        if let Some((p, is_left)) = parent {
            if let Node::Split(sp) = &mut nodes[p] {
                if is_left {
                    sp.left = dst as u32;
                } else {
                    sp.right = dst as u32;
                }
            }
        }
        if code < 0 {
            let leaf = usize::try_from(!code)
                .ok()
                .filter(|&l| l < num_leaves)
                .ok_or_else(|| malformed(format!("{}: leaf {} out of range", s.name, !code)))?;
            if std::mem::replace(&mut visited_leaf[leaf], true) {
                return Err(malformed(format!(
                    "{}: leaf {leaf} is reached twice",
                    s.name
                )));
            }
            nodes.push(Node::Leaf {
                value: leaf_value[leaf],
                id: leaf as u32,
                cover: leaf_count[leaf],
            });
            continue;
        }
        let i = usize::try_from(code)
            .ok()
            .filter(|&i| i < m)
            .ok_or_else(|| malformed(format!("{}: node {code} out of range", s.name)))?;
        if std::mem::replace(&mut visited_internal[i], true) {
            return Err(malformed(format!("{}: node {i} is reached twice", s.name)));
        }
        let feature = usize::try_from(split_feature[i])
            .ok()
            .filter(|&f| f < features.len())
            .ok_or_else(|| {
                malformed(format!(
                    "{}: node {i} splits on feature {} out of range",
                    s.name, split_feature[i]
                ))
            })?;
        let dt = decision_type[i];
        let default_left = dt & 2 != 0;
        let missing = match (dt >> 2) & 3 {
            0 => Missing::NanAsZero,
            1 => Missing::ZeroOrNan,
            2 => Missing::Nan,
            other => {
                return Err(malformed(format!(
                    "{}: node {i} has unknown missing type {other}",
                    s.name
                )))
            }
        };
        let split = if dt & 1 != 0 {
            features[feature].kind = FeatureKind::Categorical;
            let t = threshold[i];
            let cat_idx = if t >= 0.0 && t.fract() == 0.0 && (t as usize) < num_cat {
                t as usize
            } else {
                return Err(malformed(format!(
                    "{}: node {i} refers to category set {t} out of range",
                    s.name
                )));
            };
            let (beg, end) = (cat_boundaries[cat_idx], cat_boundaries[cat_idx + 1]);
            let words = cat_threshold
                .get(beg..end)
                .ok_or_else(|| malformed(format!("{}: cat_boundaries out of order", s.name)))?;
            let mut categories = Vec::new();
            for (w, &bits) in words.iter().enumerate() {
                for b in 0..32u32 {
                    if bits & (1 << b) != 0 {
                        let c = w as u64 * 32 + b as u64;
                        if c >= MAX_CATEGORY as u64 {
                            return Err(malformed(format!(
                                "{}: category {c} is out of range",
                                s.name
                            )));
                        }
                        categories.push(c as u32);
                    }
                }
            }
            Split {
                feature: feature as u32,
                test: Test::Categories(CategorySplit {
                    categories,
                    in_set_goes_left: true,
                    cast: CategoryCast::LightgbmTruncate,
                }),
                // LightGBM sends NaN right whatever the missing type.
                missing: Missing::Nan,
                default_left: false,
                left: 0,
                right: 0,
                cover: internal_count[i],
            }
        } else {
            let t = threshold[i];
            Split {
                feature: feature as u32,
                test: zeroed_input_test(t),
                missing,
                default_left,
                left: 0,
                right: 0,
                cover: internal_count[i],
            }
        };
        nodes.push(Node::Split(split));
        stack.push((right_child[i], Some((dst, false))));
        stack.push((left_child[i], Some((dst, true))));
    }
    if visited_leaf.iter().any(|v| !v) || visited_internal.iter().any(|v| !v) {
        return Err(err_in(malformed(
            "some nodes are not reachable from the root",
        )));
    }
    Ok(Tree { nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=1
objective=binary sigmoid:1
feature_names=amount mcc
feature_infos=[0:500] 1:2:5
tree_sizes=100 100

Tree=0
num_leaves=3
num_cat=1
split_feature=1 0
split_gain=1 1
threshold=0 10.5
decision_type=1 10
left_child=-1 -2
right_child=1 -3
leaf_value=0.5 -0.25 0.125
leaf_weight=1 1 1
leaf_count=1 1 1
internal_value=0 0
internal_weight=0 0
internal_count=2 1
cat_boundaries=0 1
cat_threshold=36
is_linear=0
shrinkage=1


Tree=1
num_leaves=1
num_cat=0
split_feature=
split_gain=
threshold=
decision_type=
left_child=
right_child=
leaf_value=0.01
leaf_weight=
leaf_count=
internal_value=
internal_weight=
internal_count=
is_linear=0
shrinkage=1


end of trees

feature_importances:
amount=1

parameters:
[boosting: gbdt]
[objective: binary]
end of parameters

pandas_categorical:null
";

    #[test]
    fn imports_categorical_and_missing() {
        let a = import_str(MODEL).unwrap();
        let e = &a.ensemble;
        assert_eq!(e.feature_names(), vec!["amount", "mcc"]);
        assert_eq!(e.features[1].kind, FeatureKind::Categorical);
        assert_eq!(a.metadata.attributes["lightgbm.boosting"], "gbdt");
        // cat_threshold 36 = bits 2 and 5: categories {2, 5} go left to leaf 0.
        let m = |amount: f64, mcc: f64| e.reference_margin(&[amount, mcc]);
        assert_eq!(m(0.0, 2.0), 0.5 + 0.01);
        assert_eq!(m(0.0, 5.9), 0.5 + 0.01);
        assert_eq!(m(0.0, 3.0), -0.25 + 0.01);
        assert_eq!(m(11.0, 3.0), 0.125 + 0.01);
        // NaN category goes right; decision_type 10 = default left, missing NaN.
        assert_eq!(m(f64::NAN, f64::NAN), -0.25 + 0.01);
        assert_eq!(m(10.5, -1.0), -0.25 + 0.01);
    }

    #[test]
    fn keeps_the_pandas_categories_by_feature() {
        let text = MODEL.replace(
            "pandas_categorical:null",
            "parameters:\n[categorical_feature: 1]\nend of parameters\n\npandas_categorical:[[5411, 5999, 7995]]",
        );
        let a = import_str(&text).unwrap();
        assert_eq!(
            a.metadata.categories.get("mcc"),
            Some(&vec![
                serde_json::json!(5411),
                serde_json::json!(5999),
                serde_json::json!(7995)
            ])
        );
        let codes = a.metadata.category_codes();
        assert_eq!(codes["mcc"]["5999"], 1.0);
        // Lists that do not pair with the categorical features are refused.
        let bad = text.replace("[[5411, 5999, 7995]]", "[[1], [2]]");
        assert!(import_str(&bad).is_err());
        assert!(import_str(MODEL).unwrap().metadata.categories.is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let err = import_str(&MODEL.replace(
            "objective=binary sigmoid:1",
            "objective=multiclass num_class:3",
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("multiclass"), "{err}");
        let err = import_str(&MODEL.replacen("is_linear=0", "is_linear=1", 1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("linear"), "{err}");
        let err = import_str(&MODEL.replace("end of trees", ""))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = import_str(&MODEL.replace("left_child=-1 -2", "left_child=-1 -9"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("Tree=0"), "{err}");
        assert!(import_str("").is_err());
        assert!(import_str("{}").is_err());
    }
}
