//! Training: it learns what is there (numeric, missing-value and categorical signal), keeps
//! its constraints (monotone), stops early on a validation set, is bit-identical for a seed
//! whatever the thread count, and refuses bad data with a message naming what is wrong.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use fraud_core::data::Matrix;
use fraud_core::eval::roc_auc;
use fraud_core::model::{Node, Test};
use fraud_core::train::{train, Dataset, Params, Trained};
use fraud_core::CompiledModel;

struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// Columns: x0 (signal), x1 (missing means fraud), cat (codes 0..19, {3,7,11} risky), noise.
fn data(n: usize, seed: u64) -> (Matrix, Vec<f64>) {
    let mut rng = Rng(seed | 1);
    let mut values = Vec::with_capacity(n * 4);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let x0 = rng.normal();
        let fraud_missing = rng.unit() < 0.05;
        let x1 = if fraud_missing {
            f64::NAN
        } else {
            rng.normal()
        };
        let cat = (rng.unit() * 20.0).floor();
        let noise = rng.normal();
        let risky_cat = [3.0, 7.0, 11.0].contains(&cat);
        let logit =
            1.5 * x0 + if fraud_missing { 3.0 } else { 0.0 } + if risky_cat { 2.5 } else { 0.0 }
                - 3.0;
        let y = if rng.unit() < 1.0 / (1.0 + (-logit).exp()) {
            1.0
        } else {
            0.0
        };
        values.extend_from_slice(&[x0, x1, cat, noise]);
        labels.push(y);
    }
    (
        Matrix {
            columns: vec!["x0".into(), "x1".into(), "cat".into(), "noise".into()],
            values,
        },
        labels,
    )
}

fn fit(
    m: &Matrix,
    y: &[f64],
    valid: Option<(&Matrix, &[f64])>,
    params: &[&str],
    threads: usize,
) -> Trained {
    let p = Params::from_pairs(params.iter().copied()).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let valid = valid.map(|(f, l)| Dataset {
        features: f,
        labels: l,
        weights: None,
    });
    pool.install(|| {
        train(
            &Dataset {
                features: m,
                labels: y,
                weights: None,
            },
            valid.as_ref(),
            &["cat".to_string()],
            &p,
            &mut |_| {},
        )
    })
    .unwrap()
}

fn auc(t: &Trained, m: &Matrix, y: &[f64]) -> f64 {
    let model = CompiledModel::new(&t.artifact.ensemble).unwrap();
    let mut p = vec![0.0; y.len()];
    model.predict_proba_batch(&m.values, &mut p).unwrap();
    roc_auc(&p, y, None).unwrap()
}

#[test]
fn learns_numeric_missing_and_categorical_signal() {
    let (m, y) = data(20_000, 1);
    let (mt, yt) = data(10_000, 2);
    let t = fit(
        &m,
        &y,
        None,
        &["num_rounds=60", "num_leaves=15", "learning_rate=0.1"],
        2,
    );
    let a = auc(&t, &mt, &yt);
    assert!(a > 0.85, "held-out AUC {a}");
    let e = &t.artifact.ensemble;
    let has_cat = e.trees.iter().flat_map(|t| &t.nodes).any(|n| {
        matches!(n, Node::Split(s) if matches!(&s.test, Test::Categories(c) if c.categories.contains(&3)))
    });
    assert!(has_cat, "a categorical split on the risky codes");
    // Missing x1 means fraud: the splits on x1 send NaN toward the higher leaf values.
    let model = CompiledModel::new(e).unwrap();
    let p_missing = model.predict_proba(&[0.0, f64::NAN, 0.0, 0.0]).unwrap();
    let p_present = model.predict_proba(&[0.0, 0.0, 0.0, 0.0]).unwrap();
    assert!(p_missing > 2.0 * p_present, "{p_missing} vs {p_present}");
    let imp = &t.importance;
    assert!(
        imp[0].gain > imp[3].gain,
        "x0 matters more than noise: {imp:?}"
    );
    let meta = t.artifact.metadata.training.as_ref().unwrap();
    assert_eq!(meta["rows"], 20_000);
    assert!(meta["importance"].as_array().unwrap().len() == 4);
}

#[test]
fn bit_identical_for_a_seed_whatever_the_thread_count() {
    let (m, y) = data(8_000, 3);
    let params = [
        "num_rounds=25",
        "num_leaves=31",
        "bagging_fraction=0.7",
        "bagging_freq=1",
        "feature_fraction=0.75",
        "seed=42",
    ];
    let a = fit(&m, &y, None, &params, 1);
    let b = fit(&m, &y, None, &params, 2);
    let c = fit(&m, &y, None, &params, 2);
    assert_eq!(a.artifact.ensemble, b.artifact.ensemble);
    assert_eq!(b.artifact.ensemble, c.artifact.ensemble);
    let mut other = params.to_vec();
    other[5] = "seed=43";
    let d = fit(&m, &y, None, &other, 2);
    assert_ne!(a.artifact.ensemble, d.artifact.ensemble, "the seed matters");
}

#[test]
fn monotone_constraint_holds_everywhere() {
    let (m, y) = data(10_000, 4);
    let t = fit(
        &m,
        &y,
        None,
        &[
            "num_rounds=40",
            "num_leaves=15",
            "monotone_constraints=1,0,0,0",
        ],
        2,
    );
    let model = CompiledModel::new(&t.artifact.ensemble).unwrap();
    let mut rng = Rng(99);
    for _ in 0..200 {
        let (x1, cat, noise) = (rng.normal(), (rng.unit() * 20.0).floor(), rng.normal());
        let mut last = f64::NEG_INFINITY;
        for k in -40..=40 {
            let x0 = k as f64 / 10.0;
            let p = model.predict_margin(&[x0, x1, cat, noise]).unwrap();
            assert!(p >= last - 1e-12, "decreases at x0={x0}");
            last = p;
        }
    }
}

#[test]
fn early_stopping_keeps_the_best_round() {
    let (m, y) = data(5_000, 5);
    let (mv, yv) = data(5_000, 6);
    let t = fit(
        &m,
        &y,
        Some((&mv, &yv)),
        &[
            "num_rounds=400",
            "num_leaves=63",
            "min_data_in_leaf=2",
            "learning_rate=0.3",
            "early_stopping_round=10",
            "metric=binary_logloss",
        ],
        2,
    );
    let best = t.best_iteration.unwrap();
    assert!(best < 400, "overfitting should stop training early");
    assert_eq!(t.artifact.ensemble.trees.len(), best);
    assert!(t.history.len() >= best + 10);
    let min = t.history.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(t.history[best - 1], min);
}

#[test]
fn bad_data_is_named() {
    let (m, mut y) = data(200, 7);
    let p = Params::default();
    let run = |m: &Matrix, y: &[f64]| {
        train(
            &Dataset {
                features: m,
                labels: y,
                weights: None,
            },
            None,
            &[],
            &p,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string()
    };
    y[17] = 2.0;
    assert!(run(&m, &y).contains("row 18 is 2"), "{}", run(&m, &y));
    y[17] = f64::NAN;
    assert!(run(&m, &y).contains("row 18 is missing"));
    y[17] = 0.0;
    let mut c = m.clone();
    for r in 0..200 {
        c.values[r * 4 + 3] = 5.0;
    }
    // A constant feature: trained around (never split on), named in the result.
    let t = train(
        &Dataset {
            features: &c,
            labels: &y,
            weights: None,
        },
        None,
        &[],
        &p,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(t.constant_features, vec![c.columns[3].clone()]);
    assert_eq!(t.importance[3].splits, 0);
    assert_eq!(t.artifact.ensemble.num_features(), 4);
    let mut all = c.clone();
    all.values.iter_mut().for_each(|v| *v = 1.0);
    let e = run(&all, &y);
    assert!(e.contains("every feature is constant"), "{e}");
    let zeros = vec![0.0; 200];
    assert!(run(&m, &zeros).contains("both classes"));
    let empty = Matrix {
        columns: m.columns.clone(),
        values: vec![],
    };
    assert!(run(&empty, &[]).contains("no rows"));
}

#[test]
fn trained_model_round_trips_through_its_artifact() {
    let (m, y) = data(3_000, 8);
    let t = fit(&m, &y, None, &["num_rounds=10"], 2);
    let bytes = t.artifact.to_bytes().unwrap();
    let back = fraud_core::Artifact::from_bytes(&bytes).unwrap();
    assert_eq!(back.ensemble, t.artifact.ensemble);
    assert!(back.metadata.source.starts_with("fraud-core"));
}
