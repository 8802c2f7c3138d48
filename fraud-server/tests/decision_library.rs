//! The decision as a library: fraud-core's `Scorer` on the service's defaults gives, for the
//! committed sample sent in order, the answers of a freshly started service (decision,
//! score, risk score, rules fired, reasons, model version, card mask).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use fraud_core::decision::{score_lines, Scorer};
use serde_json::Value;

/// The committed sample as `/v1/score` bodies, one JSON object per line.
pub fn sample_lines() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/samples/transactions.csv");
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader.headers().unwrap().clone();
    let mut out = Vec::new();
    for row in reader.records() {
        let row = row.unwrap();
        let mut body = serde_json::Map::new();
        for (k, v) in header.iter().zip(row.iter()) {
            if v.is_empty() || ["is_fraud", "fraud_reported_at", "fraud_scenario"].contains(&k) {
                continue;
            }
            let value = match k {
                "latitude" | "longitude" => Value::from(v.parse::<f64>().unwrap()),
                _ => Value::from(v),
            };
            body.insert(k.to_string(), value);
        }
        out.push(Value::Object(body).to_string());
    }
    out
}

/// An answer without its timing (the one field that differs run to run).
fn untimed(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("elapsed_us");
    }
    v
}

#[test]
fn the_library_scorer_gives_the_services_answers_on_the_committed_sample() {
    let lines = sample_lines();
    assert!(lines.len() > 4000);
    let (_dir, server, key) = common::dev_service();
    let mut served = Vec::with_capacity(lines.len());
    for line in &lines {
        let body: Value = serde_json::from_str(line).unwrap();
        let (status, answer, _) = server.call("POST", "/v1/score", Some(&key), Some(&body));
        assert_eq!(status, 200, "{answer}");
        served.push(untimed(answer));
    }
    let artifact = fraud_core::model::Artifact::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/demo/model.fgb"),
    )
    .unwrap();
    let scorer = Scorer::builder(artifact).build().unwrap();
    let mut out = Vec::new();
    let (scored, refused) = score_lines(&scorer, lines.join("\n").as_bytes(), &mut out).unwrap();
    assert_eq!((scored as usize, refused), (lines.len(), 0));
    let library: Vec<Value> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| untimed(serde_json::from_slice(l).unwrap()))
        .collect();
    assert_eq!(library.len(), served.len());
    let mut decisions = std::collections::BTreeMap::<String, usize>::new();
    for (i, (a, b)) in library.iter().zip(&served).enumerate() {
        assert_eq!(a, b, "transaction {i}");
        *decisions.entry(a["decision"].to_string()).or_default() += 1;
    }
    // The sample exercises more than one decision, with reasons.
    assert!(decisions.len() >= 2, "{decisions:?}");
    assert!(library
        .iter()
        .all(|a| a["reasons"].as_array().is_some_and(|r| !r.is_empty())));
}
