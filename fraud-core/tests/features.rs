//! Offline replay equals a brute-force reading of the window definition on random histories
//! (several cards, ties, out-of-order input), and the online path (compute, then update, one
//! transaction at a time in time order) equals replay on every row.

#![allow(clippy::unwrap_used)]

mod common;

use fraud_core::features::{replay, Extractor, FeatureSpec, MemoryState};
use fraud_core::transaction::Transaction;
use proptest::prelude::*;

/// Transactions from (seconds, cents, card, device) events, on one terminal, unlabelled.
fn history(events: &[(i64, u32, usize, usize)]) -> Vec<Transaction> {
    let ev: Vec<common::Ev> = events
        .iter()
        .map(|&(ts, cents, card, device)| (ts, cents, card, device, 0, None))
        .collect();
    common::history(&ev)
}

fn sorted_by_time(h: &[Transaction]) -> Vec<&Transaction> {
    let mut v: Vec<&Transaction> = h.iter().collect();
    v.sort_by_key(|t| t.timestamp_us);
    v
}

const SPEC: &str = r#"
since_last = ["card"]
first_seen = [{ entity = "card", field = "device_id" }]
geo_velocity = ["card"]
[[windows]]
entity = "card"
windows = ["10m", "1h"]
aggregations = ["count", "sum", "mean", "max", "std", "amount_ratio"]
[[windows]]
entity = "customer"
windows = ["30m"]
aggregations = ["count", "sum"]
[[distinct]]
entity = "card"
field = "merchant_id"
windows = ["1h"]
"#;

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn replay_matches_the_definition(events in prop::collection::vec((0i64..7200, 0u32..50_000, 0usize..3, 0usize..4), 1..60)) {
        let h = history(&events);
        let e = Extractor::new(FeatureSpec::from_toml(SPEC).unwrap()).unwrap();
        let got = replay(&e, &h);
        for (i, tx) in h.iter().enumerate() {
            let t = tx.timestamp_us;
            let mut want = Vec::new();
            // card_seconds_since_last: the latest earlier transaction of the card.
            let last = h.iter().filter(|o| o.card.token == tx.card.token && o.timestamp_us < t)
                .map(|o| o.timestamp_us).max();
            want.push(last.map_or(f64::NAN, |l| (t - l) as f64 / 1e6));
            // card_new_device_id: no earlier transaction of the card from this device.
            want.push(match &tx.device_id {
                None => f64::NAN,
                Some(d) => {
                    let seen = h.iter().any(|o| o.card.token == tx.card.token
                        && o.timestamp_us < t && o.device_id.as_ref() == Some(d));
                    if seen { 0.0 } else { 1.0 }
                }
            });
            for (key, w) in [(0, 600i64), (0, 3600), (1, 1800)] {
                let amounts: Vec<f64> = h.iter().filter(|o| {
                    let same_entity = if key == 0 { o.card.token == tx.card.token } else { o.customer_id == tx.customer_id };
                    same_entity && o.timestamp_us >= t - w * 1_000_000 && o.timestamp_us < t
                }).map(|o| o.amount.as_f64()).collect();
                let n = amounts.len() as f64;
                let sum: f64 = amounts.iter().sum();
                let mean = if amounts.is_empty() { f64::NAN } else { sum / n };
                if key == 0 {
                    let max = amounts.iter().cloned().fold(f64::NAN, f64::max);
                    let std = if amounts.is_empty() { f64::NAN } else {
                        (amounts.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n).sqrt()
                    };
                    want.extend([n, sum, mean, max, std, tx.amount.as_f64() / mean]);
                } else {
                    want.extend([n, sum]);
                }
            }
            // card_distinct_merchant_id_1h
            let mut merchants: Vec<&String> = h.iter().filter(|o| o.card.token == tx.card.token
                && o.timestamp_us >= t - 3_600_000_000 && o.timestamp_us < t)
                .filter_map(|o| o.merchant_id.as_ref()).collect();
            merchants.sort();
            merchants.dedup();
            want.push(merchants.len() as f64);
            // card_geo_velocity_kmh: from the last located transaction (time order, ties in
            // input order) at the greatest time before t.
            let mut prev: Option<&Transaction> = None;
            for o in sorted_by_time(&h) {
                if o.card.token == tx.card.token && o.timestamp_us < t && o.location.is_some()
                    && prev.is_none_or(|p| o.timestamp_us >= p.timestamp_us) {
                    prev = Some(o);
                }
            }
            want.push(match (prev, tx.location) {
                (Some(p), Some((la, lo))) => {
                    let (pla, plo) = p.location.unwrap();
                    let hours = ((t - p.timestamp_us) as f64 / 3.6e9).max(1.0 / 3600.0);
                    fraud_core::features::haversine_km(pla, plo, la, lo) / hours
                }
                _ => f64::NAN,
            });
            prop_assert_eq!(got[i].len(), want.len());
            for (k, (g, w)) in got[i].iter().zip(&want).enumerate() {
                prop_assert!(same(*g, *w), "row {} feature {} ({}): got {}, want {}", i, k, e.names()[k], g, w);
            }
        }
    }

    #[test]
    fn online_equals_offline(events in prop::collection::vec((0i64..7200, 0u32..50_000, 0usize..3, 0usize..4), 1..60)) {
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.0);
        let h = history(&sorted);
        let e = Extractor::new(FeatureSpec::default_spec()).unwrap();
        let offline = replay(&e, &h);
        let mut state = MemoryState::default();
        for (i, tx) in h.iter().enumerate() {
            let online = e.compute(tx, &state);
            e.update(tx, &mut state);
            for (a, b) in online.iter().zip(&offline[i]) {
                prop_assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
            }
        }
    }
}
