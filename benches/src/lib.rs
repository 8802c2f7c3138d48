//! Shared pieces of the benchmarks: a seeded synthetic model shaped like a production fraud
//! model (300 trees of 63 leaves grown leaf-wise, as LightGBM grows them) and rows to score.
//!
//! The model is random but realistic in shape: unbalanced trees, thresholds at data quantiles,
//! learned default directions, leaf covers counted from the synthetic rows. No Python is
//! needed to run the criterion benches; `compare/` measures real XGBoost / LightGBM models.

use fraud_core::model::{
    Accumulation, Ensemble, Feature, FeatureKind, Missing, Node, Objective, Split, Test, Tree,
};

/// The value after `name` on the command line (`--cards 500`), if there is one.
pub fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.next()?;
    args.next()
}

/// The number after `name` on the command line, or `default` when the flag is absent; a
/// value that is not a number ends the program (status 2) with a message naming the flag.
pub fn number_flag(name: &str, default: usize) -> usize {
    match flag(name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            let program = std::env::args().next().unwrap_or_default();
            eprintln!("{program}: {name} takes a number, not {v:?}");
            std::process::exit(2)
        }),
    }
}

/// A small, fast, seeded generator (SplitMix64); benchmarks need no crypto-grade randomness.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform integer below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize
    }
}

/// `n` rows of `features` standard-normal values, row-major, with `missing` of them NaN.
pub fn rows(n: usize, features: usize, missing: f64, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n * features)
        .map(|_| {
            if rng.unit() < missing {
                f64::NAN
            } else {
                rng.normal()
            }
        })
        .collect()
}

/// A synthetic ensemble of `trees` trees with `leaves` leaves each over `features` features,
/// grown leaf-wise on `sample` (row-major rows): the leaf holding the most rows is split next,
/// at a quantile of a random feature, so trees are unbalanced the way boosted trees are.
pub fn model(trees: usize, leaves: usize, features: usize, sample: &[f64], seed: u64) -> Ensemble {
    let mut rng = Rng::new(seed);
    let n = sample.len() / features;
    let mut out = Vec::with_capacity(trees);
    for _ in 0..trees {
        // Each leaf: (node index, rows reaching it).
        let mut nodes = vec![Node::Leaf {
            value: 0.0,
            id: 0,
            cover: n as f64,
        }];
        let mut open: Vec<(usize, Vec<u32>)> = vec![(0, (0..n as u32).collect())];
        while open.len() < leaves {
            // Leaf-wise: split the fullest leaf (ties to the first), with some randomness.
            let pick = if rng.unit() < 0.7 {
                (0..open.len())
                    .max_by_key(|&i| open[i].1.len())
                    .unwrap_or(0)
            } else {
                rng.below(open.len())
            };
            let (at, members) = open.swap_remove(pick);
            let f = rng.below(features);
            let values: Vec<f64> = members
                .iter()
                .map(|&r| sample[r as usize * features + f])
                .filter(|v| !v.is_nan())
                .collect();
            let threshold = if values.is_empty() {
                rng.normal()
            } else {
                let mut v = values;
                let q = 0.2 + 0.6 * rng.unit();
                let k = ((v.len() - 1) as f64 * q) as usize;
                *v.select_nth_unstable_by(k, f64::total_cmp).1
            };
            let default_left = rng.unit() < 0.5;
            let test = Test::LessEqual(threshold);
            let split = Split {
                feature: f as u32,
                test,
                missing: Missing::Nan,
                default_left,
                left: nodes.len() as u32,
                right: nodes.len() as u32 + 1,
                cover: members.len() as f64,
            };
            let (mut l, mut r) = (Vec::new(), Vec::new());
            for &m in &members {
                let x = sample[m as usize * features + f];
                if split.goes_left(x) {
                    l.push(m)
                } else {
                    r.push(m)
                }
            }
            for side in [&l, &r] {
                let id = open.len() as u32 + 1;
                nodes.push(Node::Leaf {
                    value: rng.normal() * 0.05,
                    id,
                    cover: side.len() as f64,
                });
            }
            open.push((split.left as usize, l));
            open.push((split.right as usize, r));
            nodes[at] = Node::Split(split);
        }
        // Leaf ids 0..leaves in node order, as LightGBM numbers them.
        let mut next = 0;
        for node in &mut nodes {
            if let Node::Leaf { id, .. } = node {
                *id = next;
                next += 1;
            }
        }
        out.push(Tree { nodes });
    }
    Ensemble {
        features: (0..features)
            .map(|i| Feature {
                name: format!("f{i}"),
                kind: FeatureKind::Numeric,
            })
            .collect(),
        trees: out,
        base_margin: -3.0,
        objective: Objective::Logistic { scale: 1.0 },
        accumulation: Accumulation::F64,
        average_output: false,
        linear: None,
    }
}

// The expects below check data this function builds itself (never outside input): a failure
// is a bug in the generator.
#[allow(clippy::expect_used)]
/// `n` synthetic transactions over `days` days, in time order: `cards` cards (each with a
/// customer), `terminals` terminals and devices, amounts log-normal. For feature benchmarks.
pub fn transactions(
    n: usize,
    days: i64,
    cards: usize,
    terminals: usize,
    seed: u64,
) -> Vec<fraud_core::transaction::Transaction> {
    use fraud_core::pii::Tokenizer;
    use fraud_core::transaction::{Channel, Decimal, RawTransaction, Transaction};
    let mut rng = Rng::new(seed);
    let tk = Tokenizer::new(&[5u8; 32]).expect("32-byte key");
    let start = 1_700_000_000i64;
    let mut times: Vec<i64> = (0..n)
        .map(|_| start + (rng.unit() * (days * 86_400) as f64) as i64)
        .collect();
    times.sort_unstable();
    times
        .into_iter()
        .enumerate()
        .map(|(i, ts)| {
            let card = rng.below(cards);
            // A valid (Luhn) 16-digit number per card: 15 digits, then the check digit.
            let body = format!("4{:014}", card);
            let check = (0..10)
                .find(|d| fraud_core::pii::luhn_valid(&format!("{body}{d}")))
                .unwrap_or(0);
            let amount = (rng.normal() * 1.0 + 3.5).exp().clamp(0.5, 50_000.0);
            let raw = RawTransaction {
                transaction_id: Some(format!("t{i}")),
                timestamp: Some(
                    time::OffsetDateTime::from_unix_timestamp(ts)
                        .expect("in range")
                        .format(&time::format_description::well_known::Rfc3339)
                        .expect("formats"),
                ),
                amount: Some(Decimal::Text(format!("{amount:.2}"))),
                currency: Some("EUR".into()),
                card_number: Some(format!("{body}{check}").into()),
                customer_id: Some(format!("cust{card}")),
                terminal_id: Some(format!("term{}", rng.below(terminals))),
                device_id: Some(format!("dev{}", card % (cards / 2 + 1))),
                mcc: Some(format!("{:04}", 5000 + rng.below(999))),
                channel: Some(if rng.unit() < 0.5 {
                    Channel::CardPresent
                } else {
                    Channel::Ecommerce
                }),
                card_country: Some("FR".into()),
                merchant_country: Some(if rng.unit() < 0.9 { "FR" } else { "DE" }.into()),
                ..Default::default()
            };
            Transaction::from_raw(raw, &tk).expect("valid synthetic transaction")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_has_the_requested_shape_and_is_deterministic() {
        let sample = rows(2000, 10, 0.02, 1);
        let a = model(5, 63, 10, &sample, 7);
        let b = model(5, 63, 10, &sample, 7);
        assert_eq!(a, b);
        a.validate().unwrap();
        let s = a.stats();
        assert_eq!(s.trees, 5);
        assert_eq!(s.max_leaves, 63);
        assert!(s.max_depth > 6, "leaf-wise trees are unbalanced: {s:?}");
    }
}
