//! The simulator: determinism by seed (and not by thread count), the Fraud Detection
//! Handbook's statistics at its configuration, and the shape of each fraud scenario.
//!
//! Tolerances (also in datasets/README.md): at the Handbook's configuration (5,000 customers,
//! 10,000 terminals, 183 days), transactions per day within 3% of the published data's 9,586,
//! mean amount of the first three scenarios' population within 3% of 53.63, and the shares of
//! scenarios 1-3 within 20% of the published 0.0555%, 0.517% and 0.264%; scenarios 4-6 within
//! 15% of their expected counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use fraud_core::pii::Tokenizer;
use fraud_core::transaction::read_history;
use fraud_datasets::{Scenarios, SimConfig, Simulator, HEADER};

fn csv(cfg: &SimConfig) -> Vec<u8> {
    let mut out = Vec::new();
    Simulator::new(cfg.clone())
        .unwrap()
        .write_csv(&mut out)
        .unwrap();
    out
}

#[test]
fn same_seed_same_bytes_whatever_the_threads() {
    let cfg = SimConfig::with_customers(300, 20, 7);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let a = one.install(|| csv(&cfg));
    let b = three.install(|| csv(&cfg));
    assert!(a.len() > 10_000);
    assert!(a == b, "output depends on the number of threads");
    let c = csv(&SimConfig::with_customers(300, 20, 8));
    assert!(a != c, "another seed gives the same data");
}

#[test]
fn handbook_statistics_at_its_configuration() {
    let sim = Simulator::new(SimConfig::default()).unwrap();
    let s = sim.write_csv(std::io::sink()).unwrap();
    let n = s.transactions as f64;
    let per_day = n / 183.0;
    assert!((per_day / 9_586.0 - 1.0).abs() < 0.03, "{per_day} a day");
    let share = |i: usize| s.by_scenario[i] as f64 / n;
    for (i, published) in [(1, 0.000_555), (2, 0.005_17), (3, 0.002_64)] {
        let r = share(i) / published;
        assert!(
            (0.8..1.2).contains(&r),
            "scenario {i}: share {} vs {published}",
            share(i)
        );
    }
    // The Handbook's amounts (its population has scenarios 0-3 only).
    let count: u64 = s.by_scenario[..4].iter().sum();
    let sum: f64 = s.amount_by_scenario[..4].iter().sum();
    let mean = sum / count as f64;
    assert!((mean / 53.63 - 1.0).abs() < 0.03, "mean amount {mean}");
    // Expected per day: card testing 2 x (3..=8 probes + 1), takeover 2 x (2..=5),
    // impossible travel 2 x (1..=2).
    for (i, per) in [(4, 13.0), (5, 7.0), (6, 3.0)] {
        let r = s.by_scenario[i] as f64 / (per * 183.0);
        assert!(
            (0.85..1.15).contains(&r),
            "scenario {i}: {} rows",
            s.by_scenario[i]
        );
    }
    assert_eq!(s.frauds, s.by_scenario[1..].iter().sum::<u64>());
    assert!(s.genuine_abroad > 0);
}

#[test]
fn scenarios_switch_on_and_off() {
    let mut cfg = SimConfig::with_customers(500, 30, 3);
    cfg.scenarios = Scenarios::none();
    let s = Simulator::new(cfg.clone())
        .unwrap()
        .write_csv(std::io::sink())
        .unwrap();
    assert_eq!(s.frauds, 0);
    cfg.scenarios = Scenarios::only(&["card_testing", "compromised_terminal"]).unwrap();
    let s = Simulator::new(cfg)
        .unwrap()
        .write_csv(std::io::sink())
        .unwrap();
    assert!(s.by_scenario[2] > 0 && s.by_scenario[4] > 0);
    assert_eq!(
        s.by_scenario[1] + s.by_scenario[3] + s.by_scenario[5] + s.by_scenario[6],
        0
    );
}

/// Great-circle distance in km.
fn km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6_371.0 * h.sqrt().asin()
}

#[test]
fn rows_are_valid_transactions_and_scenarios_have_their_shape() {
    let cfg = SimConfig::with_customers(600, 35, 11);
    let bytes = csv(&cfg);
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert_eq!(text.lines().next(), Some(HEADER));
    let scenario: Vec<u8> = text
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    // Every row is a valid transaction of the project's JSON shape.
    let history = read_history(bytes.as_slice(), &Tokenizer::new(&[1u8; 32]).unwrap()).unwrap();
    assert_eq!(history.ignored_columns, ["fraud_scenario"]);
    let txs = history.transactions;
    assert_eq!(txs.len(), scenario.len());
    let mut last_seen: HashMap<&str, usize> = HashMap::new();
    let mut by_weekday = [0usize; 7];
    let mut hours = 0.0;
    let mut checked_travel = 0;
    for (i, tx) in txs.iter().enumerate() {
        let s = scenario[i];
        assert_eq!(tx.is_fraud, Some(s != 0), "row {i}");
        match (s, tx.fraud_reported_at_us) {
            (0, None) => {}
            (0, Some(_)) => panic!("row {i}: genuine with a report time"),
            (_, Some(at)) => assert!(at > tx.timestamp_us, "row {i}: reported before it happened"),
            (_, None) => panic!("row {i}: fraud without a report time"),
        }
        if i > 0 {
            assert!(
                tx.timestamp_us >= txs[i - 1].timestamp_us,
                "row {i}: out of time order"
            );
        }
        let secs = tx.timestamp_us / 1_000_000;
        by_weekday[((secs / 86_400 + 3) % 7) as usize] += 1; // 1970-01-01 was a Thursday.
        hours += (secs % 86_400) as f64 / 3_600.0;
        let card = tx.card.token.as_str();
        match s {
            4 => {
                let a = tx.amount.minor;
                assert!(
                    !(300..15_000).contains(&a),
                    "row {i}: card testing amount {a}"
                );
                assert_eq!(
                    tx.channel,
                    Some(fraud_core::transaction::Channel::Ecommerce)
                );
            }
            5 => {
                assert!(tx.device_id.as_deref().unwrap().starts_with("fd-"));
                assert_ne!(tx.ip_country.as_deref(), Some("BE"));
            }
            6 => {
                // The previous use of the card (not another clone use) was at home, too far
                // away for the time between them.
                if let Some(&j) = last_seen.get(card) {
                    if scenario[j] != 6 {
                        let (a, b) = (txs[j].location.unwrap(), tx.location.unwrap());
                        let hours = (tx.timestamp_us - txs[j].timestamp_us) as f64 / 3.6e9;
                        let speed = km(a, b) / hours.max(1e-9);
                        assert!(speed > 900.0, "row {i}: {speed} km/h");
                        checked_travel += 1;
                    }
                }
            }
            _ => {}
        }
        // Only card-present uses count as the card's last place.
        if tx.location.is_some() {
            last_seen.insert(card, i);
        }
    }
    assert!(checked_travel >= 5, "{checked_travel}");
    // Weekly rhythm: Friday and Saturday busier than Monday to Thursday.
    let weekend = (by_weekday[4] + by_weekday[5]) as f64 / 2.0;
    let week = by_weekday[..4].iter().sum::<usize>() as f64 / 4.0;
    assert!(weekend > 1.08 * week, "{by_weekday:?}");
    // Daily rhythm centred on midday.
    let mean_hour = hours / txs.len() as f64;
    assert!((11.5..12.5).contains(&mean_hour), "{mean_hour}");
}
