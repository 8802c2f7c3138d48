//! `fraud backtest` is the service's decision replayed: on the committed sample, with a
//! policy of thresholds, rules and a block list, each transaction's decision and rules equal
//! the service's answer to the same transaction sent in order (labels posted when they were
//! reported), and the summary's counts are those answers' counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

const POLICY: &str = r#"
[thresholds]
review = 0.2
decline = 0.6

[[rules]]
name = "big_ecommerce"
when = "tx.amount > 200.0 && tx.channel == 'ecommerce'"
action = "review"

[[rules]]
name = "busy_card"
when = "features.card_txn_count_24h >= 4.0 && tx.amount > 100.0"
action = "review"

[[rules]]
name = "very_big"
when = "tx.amount > 220.0"
action = "decline"

[[rules]]
name = "night_shadow"
when = "tx.amount > 100.0 && features.card_txn_count_24h >= 2.0"
action = "decline"
mode = "shadow"

[lists.block]
customers = ["C32"]
"#;

/// `fraud backtest` on the committed sample with the demo model, and `extra` options.
fn backtest(extra: &[&str]) -> std::process::Output {
    let (sample, model) = (
        repo("datasets/samples/transactions.csv"),
        repo("datasets/demo/model.fgb"),
    );
    let mut args = vec![
        "backtest",
        "--history",
        sample.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    common::fraud_cli(&args)
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The sample's rows as JSON objects (empty cells left out).
fn rows(path: &Path) -> Vec<Map<String, Value>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| {
                    let v = match *k {
                        "latitude" | "longitude" => json!(v.parse::<f64>().unwrap()),
                        _ => json!(v),
                    };
                    (k.to_string(), v)
                })
                .collect()
        })
        .collect()
}

#[test]
fn backtest_decisions_equal_the_services_answers_to_the_same_transactions_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sample = repo("datasets/samples/transactions.csv");
    let model = repo("datasets/demo/model.fgb");
    let config = format!(
        "model = {:?}\nlog_durability = \"write\"\n[limits]\nmax_batch = 1000\n{POLICY}",
        model.display().to_string()
    );
    let server = common::start(&dir.path().join("serve"), &config).unwrap();
    let key = server.key();

    // The service: the transactions in time order, in batches, each fraud label posted
    // before the first transaction at or after the time it was reported.
    let mut all = rows(&sample);
    all.sort_by(|a, b| a["timestamp"].as_str().cmp(&b["timestamp"].as_str()));
    let mut labels: Vec<(String, String)> = all
        .iter()
        .filter(|r| r.get("is_fraud").and_then(Value::as_str) == Some("1"))
        .map(|r| {
            (
                r["fraud_reported_at"].as_str().unwrap().to_string(),
                r["transaction_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    labels.sort();
    assert!(labels.len() >= 20, "the sample has {} frauds", labels.len());
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();
    let mut batch: Vec<Value> = Vec::new();
    let send = |batch: &mut Vec<Value>, answers: &mut BTreeMap<String, Value>| {
        if batch.is_empty() {
            return;
        }
        let body = json!({"transactions": std::mem::take(batch)});
        let (st, v, _) = server.call("POST", "/v1/score/batch", Some(&key), Some(&body));
        assert_eq!(st, 200, "{v}");
        for r in v["results"].as_array().unwrap() {
            assert!(r.get("error").is_none(), "{r}");
            answers.insert(r["transaction_id"].as_str().unwrap().to_string(), r.clone());
        }
    };
    let mut next = 0;
    for row in &all {
        let at = row["timestamp"].as_str().unwrap();
        while next < labels.len() && labels[next].0.as_str() <= at {
            send(&mut batch, &mut answers);
            let (reported, id) = &labels[next];
            let body = json!({"labels": [{"transaction_id": id, "is_fraud": true, "reported_at": reported}]});
            let (st, v, _) = server.call("POST", "/v1/labels", Some(&key), Some(&body));
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["accepted"], 1, "{v}");
            next += 1;
        }
        let mut tx = row.clone();
        for f in ["is_fraud", "fraud_reported_at", "fraud_scenario"] {
            tx.remove(f);
        }
        batch.push(Value::Object(tx));
        if batch.len() == 1000 {
            send(&mut batch, &mut answers);
        }
    }
    send(&mut batch, &mut answers);
    assert_eq!(answers.len(), all.len());

    // The backtest of the same history, model and policy.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let (out, decisions, report) = (
        dir.path().join("out.json"),
        dir.path().join("decisions.csv"),
        dir.path().join("report"),
    );
    let o = backtest(&[
        "--policy",
        policy.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--decisions",
        decisions.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Transaction by transaction: the same decision, score and rules.
    let text = std::fs::read_to_string(&decisions).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("transaction_id,timestamp,decision,score,rules_fired")
    );
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    let mut fired: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let a = &answers[f[0]];
        assert_eq!(a["decision"], f[2], "{line} / {a}");
        assert_eq!(
            a["score"].as_f64().unwrap(),
            f[3].parse::<f64>().unwrap(),
            "{line} / {a}"
        );
        let rules: Vec<&str> = a["rules_fired"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(rules.join(";"), f[4], "{line} / {a}");
        *counted.entry(f[2].to_string()).or_default() += 1;
        for r in rules {
            *fired.entry(r.to_string()).or_default() += 1;
        }
        n += 1;
    }
    assert_eq!(n, all.len());

    // The summary counts those answers.
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(s["transactions"], all.len());
    for d in ["approve", "review", "decline"] {
        assert_eq!(
            s["decisions"][d].as_u64().unwrap(),
            counted.get(d).copied().unwrap_or(0),
            "{d}"
        );
    }
    for (rule, count) in &fired {
        assert_eq!(s["rules"][rule]["fired"].as_u64(), Some(*count), "{rule}");
    }
    // Every kind of decision and of rule is exercised, and the labels give outcomes.
    assert!(counted.len() == 3, "{counted:?}");
    for r in [
        "big_ecommerce",
        "busy_card",
        "very_big",
        "block_list:customer",
    ] {
        assert!(
            fired.get(r).copied().unwrap_or(0) > 0,
            "{r} never fired: {fired:?}"
        );
    }
    assert_eq!(s["labels"]["fraud"]["count"], labels.len());
    let caught = s["labels"]["fraud_declined"]["count"].as_u64().unwrap()
        + s["labels"]["fraud_reviewed"]["count"].as_u64().unwrap();
    let flagged_fraud = all
        .iter()
        .filter(|r| {
            r.get("is_fraud").and_then(Value::as_str) == Some("1")
                && answers[r["transaction_id"].as_str().unwrap()]["decision"] != "approve"
        })
        .count() as u64;
    assert_eq!(caught, flagged_fraud);
    // The Handbook's card precision at top-100: per day, and their mean.
    let per_day: Vec<f64> = s["days"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["card_precision_at_100"].as_f64())
        .collect();
    let mean = s["labels"]["card_precision_at_100"].as_f64().unwrap();
    assert!(!per_day.is_empty() && (0.0..=1.0).contains(&mean));
    assert!((mean - per_day.iter().sum::<f64>() / per_day.len() as f64).abs() < 1e-12);
    // The shadow rule never acted (the answers above match), and is counted on its own.
    let shadow = &s["shadow_rules"]["night_shadow"];
    assert!(shadow["fired"].as_u64().unwrap() > 0, "{shadow}");
    assert!(s["rules"].get("night_shadow").is_none());
    assert!(!fired.contains_key("night_shadow"));
    let md = std::fs::read_to_string(report.join("backtest.md")).unwrap();
    assert!(md.contains("| very_big |"), "{md}");
    assert!(report.join("decisions_per_day.svg").exists());
}

#[test]
fn backtest_against_a_baseline_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let strict = dir.path().join("strict.toml");
    std::fs::write(&strict, "[thresholds]\nreview = 0.05\ndecline = 0.1\n").unwrap();
    let out = dir.path().join("out.json");
    let o = backtest(&[
        "--policy",
        strict.to_str().unwrap(),
        "--baseline-policy",
        policy.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let b = &s["baseline"];
    // The changes account for every difference between the two arms' counts.
    let mut delta: BTreeMap<&str, i64> = BTreeMap::new();
    for (k, n) in b["changes"].as_object().unwrap() {
        let (from, to) = k.split_once("->").unwrap();
        let n = n.as_i64().unwrap();
        *delta.entry(from).or_default() -= n;
        *delta.entry(to).or_default() += n;
    }
    for d in ["approve", "review", "decline"] {
        assert_eq!(
            s["decisions"][d].as_i64().unwrap() - b["decisions"][d].as_i64().unwrap(),
            delta.get(d).copied().unwrap_or(0),
            "{d}"
        );
    }
    assert!(!b["changes"].as_object().unwrap().is_empty());
    // Bad input: named.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rules]]\nname = \"x\"\nwhen = \"features.nope > 1.0\"\naction = \"decline\"\n",
    )
    .unwrap();
    let o = backtest(&[
        "--policy",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("bad.toml") && err.contains("x"),
        "{err}"
    );
    let model = repo("datasets/demo/model.fgb");
    let o = common::fraud_cli(&[
        "backtest",
        "--history",
        "/nonexistent.csv",
        "--model",
        model.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/nonexistent.csv"),
        "{err}"
    );
}
