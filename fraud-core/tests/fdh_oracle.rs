//! The feature pipeline against an independent implementation: the Fraud Detection Handbook's
//! own engineered features for one week (customer spending windows of 1, 7 and 30 days; the
//! terminal's transaction count and fraud rate over 1, 7 and 30 days with a 7-day delay),
//! recomputed here by replaying the handbook's published transactions. The data is read in
//! place from `../shared/datasets/fdh-simulated` (or `$FDH_DIR`); it may not be copied into the
//! repository, so where it is absent this test says so and checks nothing.
//!
//! The handbook's windows are `(t - w, t]` with the current transaction included; ours are
//! `[t - w, t)` without it. So its count is ours plus one, except where another transaction
//! of the entity falls exactly on a boundary second or in the same second as the current one
//! (the handbook counts those before it in file order); such rows are counted and must stay
//! rare, and every other value must agree (means to 1e-9, rates exactly).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use fraud_core::features::{replay_flat, Extractor, FeatureSpec};
use fraud_core::pii::Tokenizer;
use fraud_core::transaction::{Decimal, RawTransaction, Transaction};

const SPEC: &str = r#"
retention = "40d"
[[windows]]
entity = "customer"
windows = ["1d", "7d", "30d"]
aggregations = ["count", "mean"]
[[label_rates]]
entity = "terminal"
windows = ["1d", "7d", "30d"]
delay = "7d"
"#;

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FDH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/fdh-simulated")
        });
    dir.join("fdh_simulated_transactions.csv.gz")
        .exists()
        .then_some(dir)
}

fn gz_lines(p: PathBuf) -> impl Iterator<Item = String> {
    let f = std::fs::File::open(p).unwrap();
    BufReader::new(flate2::read::GzDecoder::new(f))
        .lines()
        .skip(1)
        .map(Result::unwrap)
}

#[test]
fn replay_reproduces_the_handbook_features() {
    check_against_the_handbook(None);
}

/// Labels reported 7 days after the transaction, as they are in reality: the terminal risk
/// (window `[t - 37d, t - 7d)`) must still see every label, all known by `t` (the delay
/// counted once). Counting labels known by `t - 7d` made these features 0 on every row.
#[test]
fn labels_reported_a_week_late_give_the_handbook_terminal_risk() {
    check_against_the_handbook(Some(7 * 86_400));
}

/// Replays the handbook's transactions, their labels known `reported_after_s` after each
/// transaction (at the transaction when `None`), and compares with its features.
fn check_against_the_handbook(reported_after_s: Option<i64>) {
    let Some(dir) = data_dir() else {
        eprintln!(
            "FDH data not found (../shared/datasets/fdh-simulated or $FDH_DIR): nothing checked"
        );
        return;
    };
    let tk = Tokenizer::new(&[1u8; 32]).unwrap();
    // Days 26..=70: the golden week is days 64..=70, and its longest window (30 days plus the
    // 7-day delay) reaches back to day 27.
    let mut history = Vec::new();
    let mut ids = Vec::new();
    let mut by_entity: HashMap<(u8, u64, i64), usize> = HashMap::new();
    for line in gz_lines(dir.join("fdh_simulated_transactions.csv.gz")) {
        let c: Vec<&str> = line.split(',').collect();
        let day: i64 = c[6].parse().unwrap();
        if day < 26 {
            continue;
        }
        if day > 70 {
            break;
        }
        let (customer, terminal): (u64, u64) = (c[2].parse().unwrap(), c[3].parse().unwrap());
        let secs: i64 = c[5].parse().unwrap();
        *by_entity.entry((0, customer, secs)).or_default() += 1;
        *by_entity.entry((1, terminal, secs)).or_default() += 1;
        let raw = RawTransaction {
            transaction_id: Some(c[0].to_string()),
            timestamp: Some(format!("{}Z", c[1].replace(' ', "T"))),
            // The CSV keeps float noise (57.160000000000004): cents are what was meant.
            amount: Some(Decimal::Text(format!(
                "{:.2}",
                c[4].parse::<f64>().unwrap()
            ))),
            currency: Some("EUR".into()),
            card_token: Some(format!("tok_{customer:032x}")),
            customer_id: Some(customer.to_string()),
            terminal_id: Some(terminal.to_string()),
            is_fraud: Some(c[7].parse().unwrap()),
            fraud_reported_at: reported_after_s.map(|after| {
                let t = time::OffsetDateTime::from_unix_timestamp(
                    time::PrimitiveDateTime::parse(
                        c[1],
                        time::macros::format_description!(
                            "[year]-[month]-[day] [hour]:[minute]:[second]"
                        ),
                    )
                    .unwrap()
                    .assume_utc()
                    .unix_timestamp()
                        + after,
                )
                .unwrap();
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
            }),
            ..Default::default()
        };
        history.push(Transaction::from_raw(raw, &tk).unwrap());
        ids.push((c[0].parse::<u64>().unwrap(), customer, terminal, secs));
    }
    let ex = Extractor::new(FeatureSpec::from_toml(SPEC).unwrap()).unwrap();
    let m = ex.names().len();
    let got = replay_flat(&ex, &history);
    let row_of: HashMap<u64, usize> = ids.iter().enumerate().map(|(i, r)| (r.0, i)).collect();
    let col = |n: &str| ex.names().iter().position(|x| x == n).unwrap();
    let (mut rows, mut boundary, mut checked) = (0usize, 0usize, 0usize);
    for line in gz_lines(dir.join("fdh_transformed_features_2018-06-04_to_2018-06-10.csv.gz")) {
        let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap()).collect();
        let i = row_of[&(v[0] as u64)];
        let (_, customer, terminal, secs) = ids[i];
        let f = &got[i * m..(i + 1) * m];
        rows += 1;
        for (k, w) in [(0usize, 1i64), (1, 7), (2, 30)] {
            let amount = history[i].amount.as_f64();
            // Customer: (t - w, t] with the current one, against our [t - w, t) without it.
            let n = f[col(&format!("customer_txn_count_{w}d"))];
            let mean = f[col(&format!("customer_amount_mean_{w}d"))];
            let (hn, hmean) = (v[3 + 2 * k], v[4 + 2 * k]);
            // Another of the customer's transactions exactly at t - w, or in the same second
            // as this one (the handbook counts those before it in file order).
            let on_edge = by_entity.contains_key(&(0, customer, secs - w * 86_400))
                || by_entity[&(0, customer, secs)] > 1;
            if hn == n + 1.0 {
                let sum = if n > 0.0 { mean * n } else { 0.0 };
                let want = (sum + amount) / (n + 1.0);
                assert!(
                    (want - hmean).abs() <= 1e-9 * hmean.abs().max(1.0),
                    "transaction {}: customer mean {w}d {want} vs handbook {hmean}",
                    v[0]
                );
                checked += 1;
            } else {
                assert!(
                    on_edge,
                    "transaction {}: customer count {w}d {} vs handbook {hn}",
                    v[0],
                    n + 1.0
                );
                boundary += 1;
            }
            // Terminal: (t - 7 - w, t - 7] against our [t - 7 - w, t - 7).
            let tn = f[col(&format!("terminal_delayed_txn_count_{w}d_delay_7d"))];
            let risk = f[col(&format!("terminal_fraud_rate_{w}d_delay_7d"))];
            let (htn, hrisk) = (v[9 + 2 * k], v[10 + 2 * k]);
            let edge = by_entity.contains_key(&(1, terminal, secs - 7 * 86_400))
                || by_entity.contains_key(&(1, terminal, secs - (7 + w) * 86_400));
            if tn == htn {
                assert!(
                    (risk - hrisk).abs() <= 1e-12,
                    "transaction {}: terminal risk {w}d {risk} vs handbook {hrisk}",
                    v[0]
                );
                checked += 1;
            } else {
                assert!(
                    edge,
                    "transaction {}: terminal count {w}d {tn} vs handbook {htn}",
                    v[0]
                );
                boundary += 1;
            }
        }
    }
    eprintln!("FDH oracle: {rows} transactions, {checked} window values equal, {boundary} differ only by a transaction on a window boundary");
    assert_eq!(rows, 66_989);
    assert!(
        boundary * 1000 < checked,
        "too many boundary differences: {boundary}"
    );
}
