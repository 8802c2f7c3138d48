//! The `fraud` command line, run as a process: import, inspect, predict and bench on the
//! committed parity fixtures, and the errors a user meets.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fraud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fraud"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(case: &str, file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fraud-core/tests/parity/fixtures")
        .join(case)
        .join(file)
        .to_string_lossy()
        .into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a command failed (exit code 1, no panic) saying `what`; returns what it said.
fn fails_saying(o: &Output, what: &str) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(what) && !err.contains("panicked"), "{err}");
    err
}

fn import(dir: &Path, case: &str) -> PathBuf {
    let (fmt, file) = if case.starts_with("xgb") {
        ("xgboost", "model.json")
    } else {
        ("lightgbm", "model.txt")
    };
    let out = dir.join(format!("{case}.fgb"));
    let o = fraud(&[
        "import",
        "--format",
        fmt,
        &fixture(case, file),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("imported"), "{}", stdout(&o));
    out
}

#[test]
fn predict_writes_one_probability_per_row_matching_the_library() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["xgb_categorical", "lgb_missing_nan"] {
        let model = import(dir.path(), case);
        let out = dir.path().join("scores.csv");
        for threads in ["1", "2"] {
            let o = fraud(&[
                "predict",
                "--model",
                model.to_str().unwrap(),
                "--input",
                &fixture(case, "rows.csv"),
                "--output",
                out.to_str().unwrap(),
                "--threads",
                threads,
            ]);
            assert!(o.status.success(), "{}", stderr(&o));
            let text = std::fs::read_to_string(&out).unwrap();
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("score"));
            let scores: Vec<f64> = lines.map(|l| l.parse().unwrap()).collect();
            let expected: Vec<f64> = std::fs::read_to_string(fixture(case, "expected.csv"))
                .unwrap()
                .lines()
                .skip(1)
                .map(|l| l.split(',').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(scores.len(), expected.len());
            for (a, b) in scores.iter().zip(&expected) {
                assert!((a - b).abs() <= 1e-6, "{case}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn predict_to_stdout_and_features_named_f0_without_names() {
    let dir = tempfile::tempdir().unwrap();
    let model = import(dir.path(), "xgb_shallow");
    let inspect = fraud(&["inspect", model.to_str().unwrap()]);
    assert!(stdout(&inspect).contains(" f0 "), "{}", stdout(&inspect));
    let o = fraud(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        &fixture("xgb_shallow", "rows.csv"),
        "--margin",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("score,margin\n"));
}

#[test]
fn missing_feature_column_and_bad_cells_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = import(dir.path(), "lgb_shallow");
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "num_0,num_1,num_2,num_3,num_4\n1,2,3,4,5\n").unwrap();
    let o = fraud(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        csv.to_str().unwrap(),
    ]);
    fails_saying(&o, "`num_5` is missing");
    std::fs::write(&csv, "num_0,num_1,num_2,num_3,num_4,num_5\n1,2,3,4,x5,6\n").unwrap();
    let o = fraud(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        csv.to_str().unwrap(),
    ]);
    fails_saying(&o, "row 1, column `num_4`");
}

#[test]
fn inspect_shows_metadata_and_depth() {
    let dir = tempfile::tempdir().unwrap();
    let model = import(dir.path(), "lgb_categorical");
    let o = fraud(&["inspect", model.to_str().unwrap()]);
    let text = stdout(&o);
    for want in [
        "source:       lightgbm v4",
        "trees:        50",
        "depth:",
        "categorical",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let o = fraud(&["inspect", "--json", model.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stats"]["trees"], 50);
}

#[test]
fn bench_prints_the_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = import(dir.path(), "lgb_deep");
    let o = fraud(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--input",
        &fixture("lgb_deep", "rows.csv"),
        "--threads",
        "1",
        "--passes",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["batch_ns_per_row", "single_row_us_p50", "single_row_us_p99"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
    }
    assert_eq!(v["threads"], 1);
    let walk = v["batch_kernel_costs"]["walk"].as_f64().unwrap();
    assert!(walk > 0.0, "walk cost in {v}");
}

#[test]
fn bad_files_get_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.fgb");
    std::fs::write(&junk, b"hello").unwrap();
    let o = fraud(&["inspect", junk.to_str().unwrap()]);
    assert!(fails_saying(&o, "cannot load model").starts_with("error: cannot load model"));
    let o = fraud(&[
        "import",
        "--format",
        "lightgbm",
        &fixture("xgb_shallow", "model.json"),
        "-o",
        dir.path().join("x").to_str().unwrap(),
    ]);
    fails_saying(&o, "LightGBM");
    let o = fraud(&["inspect", dir.path().join("absent").to_str().unwrap()]);
    assert!(stderr(&o).contains("No such file"), "{}", stderr(&o));
}

/// A small labelled CSV: `id,x0,x1,cat,label` (x1 sometimes missing, cat a category code).
fn labelled_csv(path: &Path, n: usize, seed: u64) {
    let mut s = seed | 1;
    let mut unit = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = String::from("id,x0,x1,cat,label\n");
    for i in 0..n {
        let x0 = unit() * 4.0 - 2.0;
        let missing = unit() < 0.1;
        let cat = (unit() * 8.0).floor();
        let logit =
            2.0 * x0 + if missing { 2.0 } else { 0.0 } + if cat == 5.0 { 2.0 } else { 0.0 } - 2.0;
        let y = u8::from(unit() < 1.0 / (1.0 + (-logit).exp()));
        let x1 = if missing {
            String::new()
        } else {
            format!("{:.4}", unit())
        };
        out.push_str(&format!("tx{i},{x0:.5},{x1},{cat},{y}\n"));
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn train_then_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = (dir.path().join("train.csv"), dir.path().join("valid.csv"));
    labelled_csv(&train, 4000, 1);
    labelled_csv(&valid, 2000, 2);
    let model = dir.path().join("m.fgb");
    let o = fraud(&[
        "train",
        "--input",
        train.to_str().unwrap(),
        "--valid",
        valid.to_str().unwrap(),
        "--label",
        "label",
        "--exclude",
        "id",
        "--categorical",
        "cat",
        "--param",
        "num_rounds=50",
        "--param",
        "num_leaves=7",
        "--param",
        "early_stopping_round=10",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("trained"), "{}", stdout(&o));
    // Not a terminal: plain progress lines with the validation metric.
    assert!(stderr(&o).contains("iteration 1/50"), "{}", stderr(&o));
    assert!(stderr(&o).contains("valid"), "{}", stderr(&o));
    let o = fraud(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--input",
        valid.to_str().unwrap(),
        "--label",
        "label",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in [
        "roc_auc",
        "average_precision",
        "log_loss",
        "recall_at_1pct_fpr",
        "precision_at_100",
    ] {
        assert!(v[key].is_number(), "{key} in {v}");
    }
    assert_eq!(v["rows"], 2000);
    assert!(v["roc_auc"].as_f64().unwrap() > 0.8, "{v}");
    let inspect = fraud(&["inspect", "--json", model.to_str().unwrap()]);
    let meta: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(meta["metadata"]["training"]["rows"], 4000);
    assert!(meta["metadata"]["training"]["importance"].is_array());
}

#[test]
fn train_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    let model = dir.path().join("m.fgb");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--input",
            csv.to_str().unwrap(),
            "-o",
            model.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = fraud(&args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
        stderr(&o)
    };
    labelled_csv(&csv, 300, 3);
    let e = train(&["--label", "fraud", "--exclude", "id"]);
    assert!(
        e.contains("label column `fraud` is not in the header"),
        "{e}"
    );
    let e = train(&["--label", "label"]);
    assert!(
        e.contains("column `id`") && e.contains("not a number"),
        "{e}"
    );
    let e = train(&[
        "--label",
        "label",
        "--exclude",
        "id",
        "--param",
        "num_leafs=4",
    ]);
    assert!(e.contains("unknown parameter `num_leafs`"), "{e}");
    std::fs::write(&csv, "x0,x1,label\n1,2,0\n2,2,1\n3,2,2\n").unwrap();
    let e = train(&["--label", "label"]);
    assert!(e.contains("row 3 is 2"), "{e}");
    std::fs::write(&csv, "x0,x1,label\n1,2,0\n2,2,\n").unwrap();
    let e = train(&["--label", "label"]);
    assert!(e.contains("row 2 is missing"), "{e}");
    // A constant feature is kept and never split on, with a warning naming it, and recorded
    // in the model (as LightGBM does); only all-constant data is refused.
    std::fs::write(&csv, "x0,x1,label\n1,2,0\n2,2,1\n3,2,0\n4,2,1\n").unwrap();
    let o = fraud(&[
        "train",
        "--input",
        csv.to_str().unwrap(),
        "--label",
        "label",
        "--param",
        "min_data_in_leaf=1",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: 1 constant feature") && stderr(&o).contains("x1"),
        "{}",
        stderr(&o)
    );
    let inspect = fraud(&["inspect", "--json", model.to_str().unwrap()]);
    let meta: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        meta["metadata"]["training"]["constant_features"],
        serde_json::json!(["x1"])
    );
    assert_eq!(
        meta["metadata"]["feature_names"],
        serde_json::json!(["x0", "x1"])
    );
    std::fs::write(&csv, "x0,x1,label\n2,2,0\n2,2,1\n2,2,0\n").unwrap();
    let e = train(&["--label", "label"]);
    assert!(e.contains("every feature is constant"), "{e}");
    std::fs::write(&csv, "x0,x1,label\n").unwrap();
    let e = train(&["--label", "label"]);
    assert!(e.contains("no rows"), "{e}");
    std::fs::write(&csv, "").unwrap();
    let e = train(&["--label", "label"]);
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn logistic_baseline_trains_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    labelled_csv(&csv, 3000, 9);
    let model = dir.path().join("lr.fgb");
    let o = fraud(&[
        "train",
        "--algorithm",
        "logistic",
        "--input",
        csv.to_str().unwrap(),
        "--label",
        "label",
        "--exclude",
        "id",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = fraud(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--input",
        csv.to_str().unwrap(),
        "--label",
        "label",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["roc_auc"].as_f64().unwrap() > 0.7, "{v}");
    let o = fraud(&["inspect", model.to_str().unwrap()]);
    assert!(stdout(&o).contains("linear term"), "{}", stdout(&o));
}

#[test]
fn row_weights_are_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("w.csv");
    labelled_csv(&csv, 2000, 11);
    // Add a weight column: 5 for positives, 1 otherwise; then one negative weight.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let mut out = format!("{},w\n", lines.next().unwrap());
    for l in lines {
        let w = if l.ends_with(",1") { "5" } else { "1" };
        out.push_str(&format!("{l},{w}\n"));
    }
    std::fs::write(&csv, &out).unwrap();
    let model = dir.path().join("m.fgb");
    let args = |m: &Path| {
        vec![
            "train".to_string(),
            "--input".into(),
            csv.to_str().unwrap().into(),
            "--label".into(),
            "label".into(),
            "--weight".into(),
            "w".into(),
            "--exclude".into(),
            "id".into(),
            "--param".into(),
            "num_rounds=20".into(),
            "-o".into(),
            m.to_str().unwrap().into(),
        ]
    };
    let a: Vec<String> = args(&model);
    let o = fraud(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let inspect = fraud(&["inspect", "--json", model.to_str().unwrap()]);
    let meta: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert!(
        meta["metadata"]["training"]["importance"][0]["feature"] == "x0",
        "the weight column is not a feature: {meta}"
    );
    std::fs::write(&csv, out.replacen(",1\n", ",-1\n", 1)).unwrap();
    let o = fraud(&a.iter().map(String::as_str).collect::<Vec<_>>());
    fails_saying(&o, "weight at row");
}

#[test]
fn features_replay_a_history_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("history.csv");
    // Out of time order on purpose; an empty optional cell; a second card.
    std::fs::write(
        &csv,
        "transaction_id,timestamp,amount,currency,card_number,customer_id,mcc\n\
         b,2026-01-01T10:30:00Z,20.00,EUR,4111111111111111,c1,5411\n\
         a,2026-01-01T10:00:00Z,10.00,EUR,4111 1111 1111 1111,c1,\n\
         c,2026-01-01T10:59:59Z,5,EUR,5555555555554444,c2,5999\n\
         d,2026-01-01T11:00:00Z,1.5,EUR,4111111111111111,c1,5411\n",
    )
    .unwrap();
    let out = dir.path().join("features.csv");
    let o = fraud(&[
        "features",
        "--input",
        csv.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("4111"), "no card number in the output");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[0], "transaction_id");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(ids, ["b", "a", "c", "d"], "input order kept");
    let (n1h, sum24, since) = (
        col("card_txn_count_1h"),
        col("card_amount_sum_24h"),
        col("card_seconds_since_last"),
    );
    // a is first in time: nothing before it.
    assert_eq!(rows[1][n1h], "0");
    assert_eq!(rows[1][since], "");
    // b at 10:30 sees a (10:00).
    assert_eq!(rows[0][n1h], "1");
    assert_eq!(rows[0][since], "1800");
    // d at 11:00: a at exactly t - 1h counts, b counts.
    assert_eq!(rows[3][n1h], "2");
    assert_eq!(rows[3][sum24], "30");
    // The other card has no history.
    assert_eq!(rows[2][n1h], "0");

    std::fs::write(&csv, "transaction_id,timestamp,amount,currency,card_number\nx,2026-01-01T10:00:00Z,1,EUR,4111111111111112\n").unwrap();
    let o = fraud(&[
        "features",
        "--input",
        csv.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!fails_saying(&o, "row 1: card_number").contains("4111"));
}

#[test]
fn features_then_train_with_the_spec_stored_in_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        "stateless = [\"log_amount\", \"hour\"]\n[[windows]]\nentity = \"card\"\nwindows = [\"1h\"]\naggregations = [\"count\", \"sum\"]\n",
    )
    .unwrap();
    let history = dir.path().join("h.csv");
    let mut text = String::from("transaction_id,timestamp,amount,currency,card_number\n");
    let cards = ["4111111111111111", "5555555555554444", "378282246310005"];
    for i in 0..300 {
        text.push_str(&format!(
            "t{i},2026-01-01T{:02}:{:02}:00Z,{}.00,EUR,{}\n",
            i / 60 % 24,
            i % 60,
            1 + (i * 37) % 200,
            cards[i % 3]
        ));
    }
    std::fs::write(&history, text).unwrap();
    let feats = dir.path().join("f.csv");
    let o = fraud(&[
        "features",
        "--input",
        history.to_str().unwrap(),
        "--output",
        feats.to_str().unwrap(),
        "--spec",
        spec.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Add a label column: large amounts are "fraud".
    let lines: Vec<String> = std::fs::read_to_string(&feats)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l},label")
            } else {
                let y = u8::from((1 + ((i - 1) * 37) % 200) > 150);
                format!("{l},{y}")
            }
        })
        .collect();
    std::fs::write(&feats, lines.join("\n") + "\n").unwrap();
    let model = dir.path().join("m.fgb");
    let o = fraud(&[
        "train",
        "--input",
        feats.to_str().unwrap(),
        "--label",
        "label",
        "--exclude",
        "transaction_id",
        "--feature-spec",
        spec.to_str().unwrap(),
        "--param",
        "num_rounds=5",
        "--param",
        "min_data_in_leaf=5",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let inspect = fraud(&["inspect", "--json", model.to_str().unwrap()]);
    let meta: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        meta["metadata"]["feature_spec"]["windows"][0]["entity"],
        "card"
    );
    // A spec that does not produce the training columns is refused before training.
    std::fs::write(&spec, "stateless = [\"hour\"]\n").unwrap();
    let o = fraud(&[
        "train",
        "--input",
        feats.to_str().unwrap(),
        "--label",
        "label",
        "--exclude",
        "transaction_id",
        "--feature-spec",
        spec.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ]);
    fails_saying(&o, "not produced by the spec");
}

#[test]
fn features_with_a_labels_file_count_only_labels_known_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        "[[label_rates]]\nentity = \"terminal\"\nwindows = [\"1d\"]\ndelay = \"1d\"\n",
    )
    .unwrap();
    let csv = dir.path().join("history.csv");
    // Day 1: two transactions on T1 (f1 will be fraud). Day 2, 12:00: a probe on T1. Day 3,
    // 00:30: a second probe.
    std::fs::write(
        &csv,
        "transaction_id,timestamp,amount,currency,card_number,terminal_id\n\
         f1,2026-01-01T10:00:00Z,10,EUR,4111111111111111,T1\n\
         g1,2026-01-01T11:00:00Z,10,EUR,5555555555554444,T1\n\
         p1,2026-01-02T12:00:00Z,10,EUR,5555555555554444,T1\n\
         p2,2026-01-03T00:30:00Z,10,EUR,5555555555554444,T1\n",
    )
    .unwrap();
    // f1 reported on day 2 at 18:00: after p1, before p2.
    let labels = dir.path().join("labels.csv");
    std::fs::write(
        &labels,
        "transaction_id,is_fraud,reported_at\nf1,1,2026-01-02T18:00:00Z\ng1,0,\n",
    )
    .unwrap();
    let out = dir.path().join("f.csv");
    let args = |labels: &str| {
        vec![
            "features".to_string(),
            "--input".into(),
            csv.to_str().unwrap().into(),
            "--output".into(),
            out.to_str().unwrap().into(),
            "--spec".into(),
            spec.to_str().unwrap().into(),
            "--labels".into(),
            labels.into(),
        ]
    };
    let a = args(labels.to_str().unwrap());
    let o = fraud(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "transaction_id,terminal_delayed_txn_count_1d_delay_1d,terminal_fraud_count_1d_delay_1d,terminal_fraud_rate_1d_delay_1d"
    );
    // p1 (day 2 12:00): window [day 0 12:00, day 1 12:00) holds f1 and g1; f1's label came
    // at day 2 18:00, after p1: not counted.
    assert_eq!(lines[3], "p1,2,0,0");
    // p2 (day 3 00:30): window [day 1 00:30, day 2 00:30) holds f1, g1; the label is known at
    // p2's time (day 2 18:00 <= day 3 00:30): counted, though it came after the window's end
    // (the delay places the window; it does not hold back a known label).
    assert_eq!(lines[4], "p2,2,1,0.5");

    std::fs::write(&labels, "transaction_id,is_fraud\nf1,maybe\n").unwrap();
    let o = fraud(&a.iter().map(String::as_str).collect::<Vec<_>>());
    fails_saying(&o, "row 1: is_fraud");
}

/// Parquet and Arrow wherever CSV is accepted: a history in Parquet gives the features its
/// CSV export gives; features written as Parquet / Arrow train, predict and evaluate exactly
/// as their CSV does.
#[test]
fn parquet_and_arrow_are_read_and_written_wherever_csv_is() {
    use fraud_core::table::{write_table, Column, Columnar};
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let o = fraud(&[
        "generate",
        "--customers",
        "150",
        "--days",
        "20",
        "--seed",
        "5",
        "-o",
        &p("h.csv"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same history as Parquet: numbers as numbers, the rest as text.
    let mut reader = csv::Reader::from_path(p("h.csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); header.len()];
    for row in reader.records() {
        for (c, v) in row.unwrap().iter().enumerate() {
            cells[c].push(v.to_string());
        }
    }
    let numeric = ["amount", "latitude", "longitude"];
    let columns = header
        .iter()
        .zip(cells)
        .map(|(h, v)| {
            let column = if numeric.contains(&h.as_str()) {
                Column::Float(v.iter().map(|x| x.parse().unwrap_or(f64::NAN)).collect())
            } else {
                Column::Text(v)
            };
            (h.clone(), column)
        })
        .collect();
    write_table(Path::new(&p("h.parquet")), columns).unwrap();
    let keep = "timestamp,card_token,is_fraud,fraud_scenario";
    for (input, output) in [
        ("h.csv", "f.csv"),
        ("h.parquet", "f.parquet"),
        ("h.parquet", "f.arrow"),
    ] {
        let o = fraud(&[
            "features",
            "--input",
            &p(input),
            "--output",
            &p(output),
            "--keep",
            keep,
        ]);
        assert!(o.status.success(), "{input} -> {output}: {}", stderr(&o));
    }
    let csv_header =
        fraud_core::data::read_csv_header(std::fs::File::open(p("f.csv")).unwrap()).unwrap();
    let names: Vec<&str> = csv_header.iter().skip(5).map(String::as_str).collect();
    assert!(names.len() > 20, "{csv_header:?}");
    let want =
        fraud_core::data::read_csv(std::fs::File::open(p("f.csv")).unwrap(), &names).unwrap();
    for columnar in ["f.parquet", "f.arrow"] {
        let t = Columnar::open(Path::new(&p(columnar))).unwrap();
        assert_eq!(t.header(), csv_header, "{columnar}");
        let got = t.matrix(&names, &Default::default()).unwrap();
        assert_eq!(got.values.len(), want.values.len());
        for (a, b) in got.values.iter().zip(&want.values) {
            assert!(
                a == b || (a.is_nan() && b.is_nan()),
                "{columnar}: {a} != {b}"
            );
        }
        let ids = t
            .text_columns(&["transaction_id".into(), "card_token".into()])
            .unwrap();
        assert_eq!(ids[0].len(), want.rows());
    }
    // Labels in Parquet are read as the same labels in CSV.
    let ids: Vec<String> = (0..40).map(|i| (i * 7).to_string()).collect();
    let frauds: Vec<String> = (0..40).map(|i| (i % 2).to_string()).collect();
    let known: Vec<String> = (0..40)
        .map(|i| {
            if i % 3 == 0 {
                String::new()
            } else {
                "2018-04-10T00:00:00Z".into()
            }
        })
        .collect();
    let mut text = String::from("transaction_id,is_fraud,reported_at\n");
    for i in 0..40 {
        text.push_str(&format!("{},{},{}\n", ids[i], frauds[i], known[i]));
    }
    std::fs::write(p("labels.csv"), text).unwrap();
    write_table(
        Path::new(&p("labels.parquet")),
        vec![
            ("transaction_id".into(), Column::Text(ids)),
            ("is_fraud".into(), Column::Text(frauds)),
            ("reported_at".into(), Column::Text(known)),
        ],
    )
    .unwrap();
    for labels in ["labels.csv", "labels.parquet"] {
        let o = fraud(&[
            "features",
            "--input",
            &p("h.csv"),
            "--labels",
            &p(labels),
            "--output",
            &p(&format!("{labels}.features.csv")),
        ]);
        assert!(o.status.success(), "{labels}: {}", stderr(&o));
    }
    assert_eq!(
        std::fs::read(p("labels.csv.features.csv")).unwrap(),
        std::fs::read(p("labels.parquet.features.csv")).unwrap()
    );
    // Train on Parquet and on CSV: the same model; predict and evaluate on Arrow as on CSV.
    let exclude = "transaction_id,timestamp,card_token,fraud_scenario";
    for (input, model) in [("f.csv", "m_csv.fgb"), ("f.parquet", "m_parquet.fgb")] {
        let o = fraud(&[
            "train",
            "--input",
            &p(input),
            "--label",
            "is_fraud",
            "--exclude",
            exclude,
            "--param",
            "num_rounds=8",
            "-o",
            &p(model),
        ]);
        assert!(o.status.success(), "{input}: {}", stderr(&o));
    }
    let score = |model: &str, input: &str| {
        let o = fraud(&["predict", "--model", &p(model), "--input", &p(input)]);
        assert!(o.status.success(), "{input}: {}", stderr(&o));
        stdout(&o)
    };
    let reference = score("m_csv.fgb", "f.csv");
    assert_eq!(reference.lines().count(), want.rows() + 1);
    assert_eq!(score("m_parquet.fgb", "f.csv"), reference);
    assert_eq!(score("m_csv.fgb", "f.arrow"), reference);
    assert_eq!(score("m_csv.fgb", "f.parquet"), reference);
    let evaluate = |input: &str| {
        let o = fraud(&[
            "evaluate",
            "--model",
            &p("m_csv.fgb"),
            "--input",
            &p(input),
            "--label",
            "is_fraud",
        ]);
        assert!(o.status.success(), "{input}: {}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let e = evaluate("f.parquet");
    assert!(e["card_precision_at_100_per_day"].is_number(), "{e}");
    assert_eq!(e, evaluate("f.csv"));
    // A column the model needs, missing from a Parquet file, is named.
    write_table(
        Path::new(&p("short.parquet")),
        vec![("amount".into(), Column::Float(vec![1.0]))],
    )
    .unwrap();
    let o = fraud(&[
        "predict",
        "--model",
        &p("m_csv.fgb"),
        "--input",
        &p("short.parquet"),
    ]);
    fails_saying(&o, "is missing");
    // A file that is not Parquet is one clear line.
    std::fs::write(p("bad.parquet"), b"PAR1 not really").unwrap();
    let o = fraud(&[
        "predict",
        "--model",
        &p("m_csv.fgb"),
        "--input",
        &p("bad.parquet"),
    ]);
    fails_saying(&o, "bad.parquet");
}
