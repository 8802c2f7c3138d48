//! What the Redis state script costs Redis per transaction (issue 24: Redis's CPU is a large
//! part of what two replicas cost): steps transactions with the service benchmark's keys
//! (`benches/wrk2/score.lua`: many cards, a heavy-tailed merchant mix with a few terminals
//! each) through the Redis backend, two stores (two replicas) taking turns, and prints Redis's
//! own time per script call and per command inside it, from `INFO commandstats` (the server's
//! time, whatever the client's speed).
//!
//!     cargo run --release -p fraud-benches --bin state_script -- --redis URL [--transactions N]

use fraud_benches::{flag, number_flag, Rng};
use fraud_core::features::redis::RedisStore;
use fraud_core::features::{Extractor, FeatureSpec, StateStore};
use fraud_core::pii::Tokenizer;
use fraud_core::transaction::{Channel, Decimal, RawTransaction, Transaction};

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("state_script: {what}");
    std::process::exit(1)
}

/// `n` transactions shaped as `score.lua` makes them (the same rules, this crate's generator).
fn transactions(n: usize, seed: u64) -> Vec<Transaction> {
    let tk = Tokenizer::new(&[5u8; 32]).unwrap_or_else(|e| fail(e));
    let mut rng = Rng::new(seed);
    let (cards, merchants) = (50_000usize, 10_000f64);
    (0..n)
        .map(|i| {
            let card = rng.below(cards);
            let merchant = (rng.unit() * merchants.ln()).exp().floor() as usize;
            let terminal = merchant * 4 + rng.below(4);
            let cents =
                ((3.5 + (rng.unit() + rng.unit() + rng.unit() - 1.5)).exp() * 100.0).floor() as u64;
            let secs = 1_714_557_600 + (i / 50) as i64;
            let at = time::OffsetDateTime::from_unix_timestamp(secs)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| fail("a time out of range"));
            let raw = RawTransaction {
                transaction_id: Some(format!("s{seed}-{i}")),
                timestamp: Some(at),
                amount: Some(Decimal::Text(format!("{}.{:02}", cents / 100, cents % 100))),
                currency: Some("EUR".into()),
                card_token: Some(format!("tok_{card:032x}")),
                customer_id: Some(format!("C{card}")),
                merchant_id: Some(format!("M{merchant}")),
                mcc: Some("5411".into()),
                terminal_id: Some(format!("T{terminal}")),
                channel: Some(Channel::CardPresent),
                card_country: Some("BE".into()),
                merchant_country: Some("BE".into()),
                ..Default::default()
            };
            Transaction::from_raw(raw, &tk).unwrap_or_else(|e| fail(e))
        })
        .collect()
}

/// `INFO commandstats` as (command, calls, microseconds).
fn stats(c: &mut redis::Connection) -> Vec<(String, u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(c)
        .unwrap_or_else(|e| fail(e));
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            };
            Some((name.to_string(), field("calls")?, field("usec")?))
        })
        .collect()
}

fn main() {
    let url = flag("--redis").unwrap_or_else(|| fail("--redis URL is required"));
    let n = number_flag("--transactions", 50_000);
    let ex = Extractor::new(FeatureSpec::default_spec()).unwrap_or_else(|e| fail(e));
    let txs = transactions(n, 11);
    let timeout = std::time::Duration::from_secs(5);
    let a = RedisStore::open(&url, "state-script-bench", timeout).unwrap_or_else(|e| fail(e));
    a.clear().unwrap_or_else(|e| fail(e));
    let b = RedisStore::open(&url, "state-script-bench", timeout).unwrap_or_else(|e| fail(e));
    let mut c = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| fail(e));
    // The first tenth warms the state up (entities seen before, hot terminals past inline).
    let warm = n / 10;
    for (i, tx) in txs[..warm].iter().enumerate() {
        let store = if i % 2 == 0 { &a } else { &b };
        store.step(&ex, tx).unwrap_or_else(|e| fail(e));
    }
    let before = stats(&mut c);
    for (i, tx) in txs[warm..].iter().enumerate() {
        let store = if i % 2 == 0 { &a } else { &b };
        store.step(&ex, tx).unwrap_or_else(|e| fail(e));
    }
    let after = stats(&mut c);
    let measured = (n - warm) as f64;
    println!(
        "{} transactions measured (after {warm}), Redis's time per transaction:",
        n - warm
    );
    let mut total = 0.0;
    for (name, calls, usec) in &after {
        let (c0, u0) = before
            .iter()
            .find(|(x, _, _)| x == name)
            .map_or((0, 0), |(_, c, u)| (*c, *u));
        let (calls, usec) = (calls - c0, usec - u0);
        if calls == 0 || name == "info" {
            continue;
        }
        if name == "evalsha" {
            total = usec as f64 / measured;
        }
        println!(
            "  {name:<12} {:>6.2} calls {:>8.2} us/call {:>8.2} us",
            calls as f64 / measured,
            usec as f64 / calls as f64,
            usec as f64 / measured
        );
    }
    println!("state script (evalsha, commands inside included): {total:.2} us per transaction");
    a.clear().unwrap_or_else(|e| fail(e));
}
