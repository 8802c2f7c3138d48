//! Property tests: arbitrary or damaged input to every parser of outside data (model artifact,
//! XGBoost JSON, LightGBM text, feature CSV) gives an error or a valid model, never a panic;
//! and whatever does load also compiles and predicts without panicking.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use fraud_core::data::read_csv;
use fraud_core::model::{lightgbm, xgboost, Artifact};
use fraud_core::CompiledModel;
use proptest::prelude::*;

fn fixture(case: &str, file: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/parity/fixtures")
            .join(case)
            .join(file),
    )
    .unwrap()
}

/// Whatever loads must also compile and predict.
fn exercise(a: &Artifact) {
    if let Ok(m) = CompiledModel::new(&a.ensemble) {
        let row = vec![f64::NAN; m.num_features()];
        let _ = m.predict_proba(&row);
        let zeros = vec![0.0; m.num_features()];
        let _ = m.predict_leaves(&zeros);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn mutate(mut data: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if data.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(at, bits) => {
                let i = at % data.len();
                data[i] ^= bits | 1;
            }
            Mutation::Truncate(at) => data.truncate(at % data.len()),
            Mutation::Insert(at, bytes) => {
                let i = at % data.len();
                data.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let i = at % data.len();
                let end = (i + n % 64).min(data.len());
                data.drain(i..end);
            }
        }
    }
    data
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let text_bytes = prop::sample::select(b"0123456789-.e,:[]{}\"=\n -1nanINFinf\x00\xff".to_vec());
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Flip(a, b)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), prop::collection::vec(text_bytes, 1..8))
                .prop_map(|(a, b)| Mutation::Insert(a, b)),
            (any::<usize>(), any::<usize>()).prop_map(|(a, n)| Mutation::Delete(a, n)),
        ],
        1..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn artifact_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Artifact::from_bytes(&bytes);
        let mut with_magic = b"FRAUDGBT\x01\x00\x00\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = Artifact::from_bytes(&with_magic);
    }

    #[test]
    fn damaged_artifacts_never_panic(muts in mutations()) {
        let good = lightgbm::import_bytes(&fixture("lgb_categorical", "model.txt")).unwrap();
        let bytes = mutate(good.to_bytes().unwrap(), &muts);
        if let Ok(a) = Artifact::from_bytes(&bytes) {
            exercise(&a);
        }
    }

    #[test]
    fn damaged_xgboost_json_never_panics(muts in mutations()) {
        let bytes = mutate(fixture("xgb_categorical", "model.json"), &muts);
        if let Ok(a) = xgboost::import_bytes(&bytes) {
            exercise(&a);
        }
    }

    #[test]
    fn damaged_lightgbm_text_never_panics(muts in mutations()) {
        let bytes = mutate(fixture("lgb_categorical", "model.txt"), &muts);
        if let Ok(a) = lightgbm::import_bytes(&bytes) {
            exercise(&a);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
        let _ = xgboost::import_bytes(s.as_bytes());
        let _ = lightgbm::import_str(&s);
        let _ = lightgbm::import_str(&format!("tree\n{s}\nend of trees\n"));
        let _ = read_csv(s.as_bytes(), &["a", "b"]);
    }

    #[test]
    fn damaged_csv_never_panics(muts in mutations()) {
        let bytes = mutate(fixture("lgb_missing_nan", "rows.csv"), &muts);
        let _ = read_csv(bytes.as_slice(), &["num_0", "num_1"]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn transaction_parsing_never_panics(body in prop::collection::vec(any::<u8>(), 0..300), s in "\\PC{0,200}") {
        let tk = fraud_core::pii::Tokenizer::new(&[1u8; 32]).unwrap();
        let _ = fraud_core::transaction::Transaction::from_json(&body, &tk);
        let _ = fraud_core::transaction::Transaction::from_json(s.as_bytes(), &tk);
        let _ = fraud_core::transaction::Amount::parse(&s, 2);
        let _ = fraud_core::pii::CardNumber::parse(&s);
    }

    #[test]
    fn damaged_transactions_never_panic_nor_leak(muts in mutations()) {
        let good = br#"{"transaction_id":"t1","timestamp":"2026-11-29T10:00:00Z","amount":"12.50","currency":"EUR","card_number":"4111111111111111","mcc":"5411","latitude":1.5,"longitude":2.5}"#;
        let tk = fraud_core::pii::Tokenizer::new(&[1u8; 32]).unwrap();
        let bytes = mutate(good.to_vec(), &muts);
        match fraud_core::transaction::Transaction::from_json(&bytes, &tk) {
            Ok(t) => {
                let shown = format!("{:?}", t);
                prop_assert!(!shown.contains("4111111111111111"));
            }
            Err(e) => prop_assert!(!e.to_string().contains("4111111111111111"), "{}", e),
        }
    }
}

/// A LightGBM model whose one tree is a chain `depth` splits deep (leaf i on the left of
/// split i, the next split on the right).
fn lightgbm_chain(depth: usize) -> String {
    let list = |f: &dyn Fn(usize) -> String, n: usize| (0..n).map(f).collect::<Vec<_>>().join(" ");
    format!(
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n\
         max_feature_idx=0\nobjective=binary sigmoid:1\nfeature_names=x\n\
         feature_infos=[0:{depth}]\n\nTree=0\nnum_leaves={}\nnum_cat=0\nsplit_feature={}\n\
         threshold={}\ndecision_type={}\nleft_child={}\nright_child={}\nleaf_value={}\n\
         leaf_count={}\ninternal_count={}\nis_linear=0\nshrinkage=1\n\n\nend of trees\n",
        depth + 1,
        list(&|_| "0".into(), depth),
        list(&|i| format!("{i}.5"), depth),
        list(&|_| "2".into(), depth),
        list(&|i| format!("-{}", i + 1), depth),
        list(
            &|i| if i + 1 < depth {
                format!("{}", i + 1)
            } else {
                format!("-{}", depth + 1)
            },
            depth
        ),
        list(&|i| format!("0.{i}"), depth + 1),
        list(&|_| "1".into(), depth + 1),
        list(&|i| format!("{}", depth + 1 - i), depth),
    )
}

#[test]
fn a_chain_100000_deep_is_refused_at_import_naming_the_limit() {
    // Within the default limits: imported, compiled, explained.
    let ok = lightgbm::import_str(&lightgbm_chain(200)).unwrap();
    exercise(&ok);
    let explainer = fraud_core::model::Explainer::new(&ok.ensemble).unwrap();
    let mut phi = vec![0.0; explainer.width()];
    explainer.contributions(&[150.0], &mut phi).unwrap();
    // 100,000 deep: refused by name, before anything allocates depth x leaves.
    let err = lightgbm::import_str(&lightgbm_chain(100_000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.max_tree_depth"), "{err}");
    assert!(err.contains("100000"), "{err}");
    // The same check on an ensemble, for every limit.
    let e = &ok.ensemble;
    let limits = |d, n, m| fraud_core::model::ModelLimits {
        max_tree_depth: d,
        max_tree_nodes: n,
        max_model_nodes: m,
    };
    assert!(e.check_limits(&limits(200, 401, 401)).is_ok());
    for (l, name) in [
        (limits(199, 401, 401), "limits.max_tree_depth"),
        (limits(200, 400, 401), "limits.max_tree_nodes"),
        (limits(200, 401, 400), "limits.max_model_nodes"),
    ] {
        let err = e.check_limits(&l).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
}
