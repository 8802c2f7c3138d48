//! Import exactness against committed XGBoost and LightGBM fixtures.
//!
//! Each fixture directory (made by `tests/parity/make_fixtures.py`; `xgb2_*` under XGBoost 2.1,
//! the others under XGBoost 3 and LightGBM 4) holds a model saved by its library, held-out rows (including rows sitting exactly on and beside split thresholds), and
//! the library's own probability and leaf per tree for every row. The imported model must reach
//! the same leaf in every tree and a probability within 1e-6, through the compiled single-row,
//! batch, and reference paths alike.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use std::path::{Path, PathBuf};

use fraud_core::data::read_csv;
use fraud_core::model::{lightgbm, xgboost, Artifact, CompiledModel};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/fixtures")
}

struct Expected {
    prob: Vec<f64>,
    leaves: Vec<Vec<u32>>,
}

fn read_expected(path: &Path) -> Expected {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    lines.next();
    let mut prob = Vec::new();
    let mut leaves = Vec::new();
    for line in lines {
        let mut cells = line.split(',');
        prob.push(cells.next().unwrap().parse().unwrap());
        leaves.push(cells.map(|c| c.parse().unwrap()).collect());
    }
    Expected { prob, leaves }
}

fn check_case(name: &str) {
    let dir = fixtures().join(name);
    let artifact: Artifact = if name.starts_with("xgb") {
        xgboost::import_file(dir.join("model.json")).unwrap()
    } else {
        lightgbm::import_file(dir.join("model.txt")).unwrap()
    };
    // The artifact round-trips through its file format unchanged.
    let artifact = Artifact::from_bytes(&artifact.to_bytes().unwrap()).unwrap();
    let model = CompiledModel::new(&artifact.ensemble).unwrap();
    let names = artifact.ensemble.feature_names();
    let rows = read_csv(std::fs::File::open(dir.join("rows.csv")).unwrap(), &names).unwrap();
    let expected = read_expected(&dir.join("expected.csv"));
    assert_eq!(rows.rows(), expected.prob.len(), "{name}");

    let mut batch = vec![0.0; rows.rows()];
    model.predict_proba_batch(&rows.values, &mut batch).unwrap();
    let mut worst = 0.0f64;
    for r in 0..rows.rows() {
        let row = rows.row(r);
        let leaves = model.predict_leaves(row).unwrap();
        assert_eq!(
            leaves, expected.leaves[r],
            "{name}: leaves differ on row {r}"
        );
        let single = model.predict_proba(row).unwrap();
        let reference = artifact
            .ensemble
            .probability(artifact.ensemble.reference_margin(row));
        assert_eq!(single.to_bits(), batch[r].to_bits(), "{name}: row {r}");
        assert_eq!(single.to_bits(), reference.to_bits(), "{name}: row {r}");
        let diff = (single - expected.prob[r]).abs();
        worst = worst.max(diff);
        assert!(
            diff <= 1e-6,
            "{name}: row {r}: ours {single}, library {} (diff {diff:e})",
            expected.prob[r]
        );
    }
    eprintln!(
        "{name}: {} rows, worst probability difference {worst:e}",
        rows.rows()
    );
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            check_case(stringify!($name));
        }
    )*};
}

cases!(
    xgb_shallow,
    xgb_deep,
    xgb_missing,
    xgb_lossguide,
    xgb_categorical,
    xgb_base_score,
    xgb2_missing,
    xgb2_categorical,
    lgb_shallow,
    lgb_deep,
    lgb_missing_nan,
    lgb_zero_as_missing,
    lgb_no_missing,
    lgb_categorical,
    lgb_sigmoid2,
    lgb_rf,
);

#[test]
fn fixture_list_is_complete() {
    let mut dirs: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs.len(),
        16,
        "every fixture directory needs a test case: {dirs:?}"
    );
}
