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
