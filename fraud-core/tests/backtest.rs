//! The backtest's batch scores equal the service's one-row scores, across blocks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fraud_core::decision::ScoringModel;
use fraud_core::features::Extractor;
use fraud_core::model::{Artifact, ModelLimits};

#[test]
fn batch_scores_equal_one_row_scores_across_blocks() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/demo/model.fgb");
    let artifact = Artifact::load(path).unwrap();
    let ex = Extractor::new(artifact.feature_spec()).unwrap();
    let model = ScoringModel::new(&artifact, ex.names(), &ModelLimits::default()).unwrap();
    let m = ex.names().len();
    // More rows than one block (65,536), seeded values, some missing.
    let n = 66_000;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let flat: Vec<f64> = (0..n * m)
        .map(|_| {
            let r = next();
            if r % 17 == 0 {
                f64::NAN
            } else {
                (r % 10_000) as f64 / 37.0
            }
        })
        .collect();
    let scores = model.scores(&flat, m).unwrap();
    assert_eq!(scores.len(), n);
    for i in (0..n).filter(|i| i % 97 == 0 || (65_530..65_542).contains(i) || *i == n - 1) {
        let one = model.judge(&flat[i * m..(i + 1) * m], 0).unwrap().score;
        assert_eq!(one.to_bits(), scores[i].to_bits(), "row {i}");
    }
}
