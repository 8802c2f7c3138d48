//! The data commands as a user runs them: generate, convert, features, train, evaluate and
//! report; the committed sample and demo model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fraud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fraud"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: Output) -> String {
    assert!(!o.status.success(), "should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn committed_sample_is_reproduced_by_its_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sample.csv");
    // The command documented in scripts/make-demo-model.sh and datasets/README.md.
    ok(fraud(&[
        "generate",
        "--customers",
        "100",
        "--days",
        "30",
        "--seed",
        "7",
        "-o",
        s(&out),
    ]));
    let fresh = std::fs::read(&out).unwrap();
    let committed = std::fs::read(repo("datasets/samples/transactions.csv")).unwrap();
    assert!(
        fresh == committed,
        "datasets/samples/transactions.csv differs from its command's output"
    );
}

#[test]
fn generate_features_train_evaluate_report() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    let o = fraud(&[
        "generate",
        "--customers",
        "400",
        "--days",
        "40",
        "--seed",
        "5",
        "-o",
        s(&p("tx.csv")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    assert!(
        err.contains("compromised_terminal") && err.contains("all fraud"),
        "{err}"
    );
    ok(fraud(&[
        "features",
        "--input",
        s(&p("tx.csv")),
        "--output",
        s(&p("f.csv")),
        "--keep",
        "timestamp,card_token,is_fraud,fraud_scenario",
    ]));
    let text = std::fs::read_to_string(p("f.csv")).unwrap();
    assert!(text.starts_with("transaction_id,timestamp,card_token,is_fraud,fraud_scenario,"));
    ok(fraud(&[
        "train",
        "--input",
        s(&p("f.csv")),
        "--label",
        "is_fraud",
        "--exclude",
        "transaction_id,timestamp,card_token,fraud_scenario",
        "--param",
        "num_iterations=30",
        "-o",
        s(&p("m.fgb")),
    ]));
    let out = ok(fraud(&[
        "evaluate",
        "--model",
        s(&p("m.fgb")),
        "--input",
        s(&p("f.csv")),
        "--label",
        "is_fraud",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "roc_auc",
        "recall_at_fpr",
        "card_precision_at_100_per_day",
        "thresholds",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {out}");
    }
    let by = v["recall_by_scenario_at_1pct_fpr"].as_array().unwrap();
    assert!(by.iter().any(|r| r["scenario"] == "card_testing"), "{out}");
    assert_eq!(v["recall_at_fpr"].as_object().unwrap().len(), 4);
    // A model trained only on stateless features, through --features.
    ok(fraud(&[
        "train",
        "--input",
        s(&p("f.csv")),
        "--label",
        "is_fraud",
        "--features",
        "log_amount,hour,channel",
        "--param",
        "num_iterations=5",
        "-o",
        s(&p("small.fgb")),
    ]));
    let info = ok(fraud(&["inspect", s(&p("small.fgb"))]));
    assert!(
        info.contains("log_amount") && !info.contains("card_txn_count"),
        "{info}"
    );
    // The report: charts and a summary, all non-empty.
    ok(fraud(&[
        "report",
        "--model",
        s(&p("m.fgb")),
        "--input",
        s(&p("f.csv")),
        "--label",
        "is_fraud",
        "-o",
        s(&p("report")),
    ]));
    for f in [
        "roc.svg",
        "precision_recall.svg",
        "scores.svg",
        "importance.svg",
    ] {
        let svg = std::fs::read_to_string(p("report").join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && (svg.contains("<polyline") || svg.contains("<rect")),
            "{f}"
        );
        assert!(svg.len() > 2_000, "{f} is nearly empty");
    }
    let md = std::fs::read_to_string(p("report/summary.md")).unwrap();
    for part in [
        "ROC-AUC",
        "Recall per fraud scenario",
        "false positives per 1,000",
        "![ROC curve](roc.svg)",
    ] {
        assert!(md.contains(part), "{part} missing from summary.md");
    }
}

#[test]
fn demo_model_scores_the_committed_sample() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo("datasets/demo/model.fgb");
    let info = ok(fraud(&["inspect", s(&model)]));
    assert!(info.contains("card_txn_count_24h"), "{info}");
    let f = dir.path().join("f.csv");
    ok(fraud(&[
        "features",
        "--input",
        s(&repo("datasets/samples/transactions.csv")),
        "--output",
        s(&f),
        "--keep",
        "is_fraud",
    ]));
    let out = ok(fraud(&[
        "evaluate",
        "--model",
        s(&model),
        "--input",
        s(&f),
        "--label",
        "is_fraud",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The sample is another seed and population: the model still ranks fraud far above
    // chance.
    assert!(v["roc_auc"].as_f64().unwrap() > 0.8, "{out}");
}

#[test]
fn generate_and_convert_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.csv");
    let e = fails(fraud(&[
        "generate",
        "--customers",
        "10",
        "--days",
        "0",
        "-o",
        s(&out),
    ]));
    assert!(e.contains("days: must be between 1 and 3,660"), "{e}");
    let e = fails(fraud(&["generate", "--scenarios", "bogus", "-o", s(&out)]));
    assert!(e.contains("unknown fraud scenario `bogus`"), "{e}");
    let e = fails(fraud(&["generate", "--start", "2018-13-01", "-o", s(&out)]));
    assert!(
        e.contains("--start `2018-13-01` is not a YYYY-MM-DD date"),
        "{e}"
    );
    let fixtures = repo("datasets/tests/fixtures");
    let e = fails(fraud(&[
        "convert",
        "--format",
        "ulb",
        "--input",
        s(&fixtures.join("paysim_small.csv")),
        "-o",
        s(&out),
    ]));
    assert!(
        e.contains("not a ULB creditcard.csv file: missing column(s)"),
        "{e}"
    );
    let e = fails(fraud(&[
        "convert",
        "--format",
        "xls",
        "--input",
        "a",
        "-o",
        s(&out),
    ]));
    assert!(e.contains("unknown format `xls`"), "{e}");
    // Sparkov with a key file: tokens, never the numbers.
    let key = dir.path().join("key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let msg = ok(fraud(&[
        "convert",
        "--format",
        "sparkov",
        "--input",
        s(&fixtures.join("sparkov_small.csv")),
        "--key-file",
        s(&key),
        "-o",
        s(&out),
    ]));
    assert!(msg.contains("converted 6 rows (1 fraud)"), "{msg}");
    let text = std::fs::read_to_string(&out).unwrap();
    let cards = std::fs::read_to_string(fixtures.join("sparkov_cards.txt")).unwrap();
    assert!(cards.lines().all(|c| !text.contains(c)));
    assert!(text.contains("tok_"));
}
