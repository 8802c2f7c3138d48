//! The logistic-regression baseline, trained with `smartcore`, so every report can show how
//! much the trees add.
//!
//! Features are standardised (mean 0, variance 1; a missing value takes the training mean)
//! before fitting, and the standardisation is folded back into plain weights, so the model is
//! an ordinary artifact: an ensemble with no trees, a base margin and a [`LinearTerm`].
//! Categorical columns enter as their numeric codes. Row weights and `scale_pos_weight` are
//! not supported by smartcore's solver and are refused.

use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

use super::{check_dataset, Dataset, Params, TrainError, Trained};
use crate::model::{Accumulation, Artifact, Ensemble, Feature, FeatureKind, LinearTerm, Objective};

/// Trains the baseline. Uses `lambda_l2` as the L2 penalty (`alpha`).
pub fn train_logistic(data: &Dataset<'_>, params: &Params) -> Result<Trained, TrainError> {
    let start = std::time::Instant::now();
    check_dataset("training", data)?;
    if data.weights.is_some() || params.scale_pos_weight != 1.0 {
        return Err(TrainError::Param(
            "the logistic baseline takes no row weights or scale_pos_weight".into(),
        ));
    }
    let names = &data.features.columns;
    let nf = names.len();
    let n = data.features.rows();
    let x = &data.features.values;
    let mut mean = vec![0.0; nf];
    let mut count = vec![0usize; nf];
    for r in 0..n {
        for f in 0..nf {
            let v = x[r * nf + f];
            if !v.is_nan() {
                mean[f] += v;
                count[f] += 1;
            }
        }
    }
    for f in 0..nf {
        mean[f] = if count[f] > 0 {
            mean[f] / count[f] as f64
        } else {
            0.0
        };
    }
    let mut sd = vec![0.0; nf];
    for r in 0..n {
        for f in 0..nf {
            let v = x[r * nf + f];
            if !v.is_nan() {
                sd[f] += (v - mean[f]).powi(2);
            }
        }
    }
    // A constant feature (one value or all missing) carries nothing: it stays in the model
    // with a zero column (standardized by 1), so its weight is 0, and it is reported.
    let mut constant = Vec::new();
    for f in 0..nf {
        sd[f] = (sd[f] / count[f].max(1) as f64).sqrt();
        if sd[f] <= 0.0 || sd[f].is_nan() {
            constant.push(names[f].clone());
            sd[f] = 1.0;
        }
    }
    if constant.len() == nf {
        return Err(TrainError::Data {
            set: "training",
            detail: "every feature is constant (one value or all missing): nothing to learn from"
                .into(),
        });
    }
    let z: Vec<f64> = (0..n * nf)
        .map(|i| {
            let f = i % nf;
            let v = x[i];
            if v.is_nan() {
                0.0
            } else {
                (v - mean[f]) / sd[f]
            }
        })
        .collect();
    let xm = DenseMatrix::new(n, nf, z, false)
        .map_err(|e| TrainError::Param(format!("cannot build the design matrix: {e}")))?;
    let y: Vec<i32> = data.labels.iter().map(|&v| v as i32).collect();
    let lr = LogisticRegression::fit(
        &xm,
        &y,
        LogisticRegressionParameters::default().with_alpha(params.lambda_l2),
    )
    .map_err(|e| TrainError::Param(format!("logistic regression did not fit: {e}")))?;
    let coef = lr.coefficients();
    let intercept = *lr.intercept().get((0, 0));
    let weights: Vec<f64> = (0..nf).map(|f| *coef.get((0, f)) / sd[f]).collect();
    let base_margin = intercept - (0..nf).map(|f| weights[f] * mean[f]).sum::<f64>();
    let ensemble = Ensemble {
        features: names
            .iter()
            .map(|name| Feature {
                name: name.clone(),
                kind: FeatureKind::Numeric,
            })
            .collect(),
        trees: Vec::new(),
        base_margin,
        objective: Objective::Logistic { scale: 1.0 },
        accumulation: Accumulation::F64,
        average_output: false,
        linear: Some(LinearTerm {
            weights,
            impute: mean,
        }),
    };
    ensemble.validate()?;
    let mut artifact = Artifact::new(ensemble, "fraud-core logistic (smartcore)".to_string());
    artifact.metadata.training = Some(serde_json::json!({
        "algorithm": "logistic",
        "library": "smartcore",
        "alpha": params.lambda_l2,
        "rows": n,
        "positives": data.labels.iter().filter(|&&v| v == 1.0).count(),
        "constant_features": constant,
        "reference": super::references(data),
        "seconds": crate::model::reproducible_epoch()
            .is_none()
            .then(|| start.elapsed().as_secs_f64()),
    }));
    Ok(Trained {
        artifact,
        best_iteration: None,
        history: Vec::new(),
        importance: Vec::new(),
        constant_features: constant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Matrix;
    use crate::CompiledModel;

    #[test]
    fn learns_a_linear_signal_and_predicts_through_the_compiled_model() {
        let mut values = Vec::new();
        let mut labels = Vec::new();
        let mut s = 12345u64;
        let mut unit = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for i in 0..3000 {
            let a = unit() * 10.0;
            let b = if i % 17 == 0 {
                f64::NAN
            } else {
                unit() * 100.0
            };
            let p = 1.0 / (1.0 + (-(a - 5.0)).exp());
            values.extend_from_slice(&[a, b]);
            labels.push(if unit() < p { 1.0 } else { 0.0 });
        }
        let m = Matrix {
            columns: vec!["a".into(), "b".into()],
            values,
        };
        let t = train_logistic(
            &Dataset {
                features: &m,
                labels: &labels,
                weights: None,
            },
            &Params::default(),
        )
        .unwrap();
        let e = &t.artifact.ensemble;
        let w = &e.linear.as_ref().unwrap().weights;
        assert!(w[0] > 0.5, "weight of the signal: {w:?}");
        assert!(w[1].abs() < 0.05, "weight of noise: {w:?}");
        let model = CompiledModel::new(e).unwrap();
        for row in [[1.0, 50.0], [9.0, f64::NAN], [5.0, 0.0]] {
            let direct = e.base_margin + e.linear.as_ref().unwrap().value(&row);
            assert_eq!(e.reference_margin(&row), direct);
            assert_eq!(model.predict_margin(&row).unwrap(), direct);
            let mut out = [0.0];
            model.predict_margin_batch(&row, &mut out).unwrap();
            assert_eq!(out[0], direct);
        }
        let back = Artifact::from_bytes(&t.artifact.to_bytes().unwrap()).unwrap();
        assert_eq!(&back.ensemble, e);
    }
}
