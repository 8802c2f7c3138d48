//! Evaluation metrics for fraud scores: ROC-AUC, average precision, log-loss, recall at a fixed
//! false-positive rate, precision at the top k.
//!
//! Definitions follow scikit-learn (`roc_auc_score`, `average_precision_score`, `log_loss`):
//! tied scores are treated as one threshold, so results do not depend on row order. Labels are
//! 0 or 1; optional weights multiply each row. This module computes numbers; it does not decide
//! anything.

/// Why a metric could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    /// Scores and labels (or weights) differ in length.
    #[error("{scores} scores for {labels} labels")]
    Length {
        /// Number of scores.
        scores: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label is not 0 or 1.
    #[error("label at row {row} is {value}; labels must be 0 or 1")]
    Label {
        /// 0-based row.
        row: usize,
        /// The label.
        value: f64,
    },
    /// A score is NaN.
    #[error("score at row {0} is NaN")]
    NanScore(usize),
    /// The metric needs both classes.
    #[error("the metric needs both positive and negative rows")]
    OneClass,
    /// A rate outside (0, 1), e.g. a false-positive rate of 5 meant as 5%.
    #[error("{name} is {value}; it must be a rate strictly between 0 and 1 (0.05 for 5%)")]
    Rate {
        /// The argument.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

fn check(scores: &[f64], labels: &[f64], weights: Option<&[f64]>) -> Result<(), EvalError> {
    if scores.len() != labels.len() || weights.is_some_and(|w| w.len() != labels.len()) {
        return Err(EvalError::Length {
            scores: scores.len(),
            labels: labels.len(),
        });
    }
    for (row, &y) in labels.iter().enumerate() {
        if y != 0.0 && y != 1.0 {
            return Err(EvalError::Label { row, value: y });
        }
    }
    if let Some(row) = scores.iter().position(|s| s.is_nan()) {
        return Err(EvalError::NanScore(row));
    }
    Ok(())
}

/// Rows sorted by descending score, grouped by equal score: (weighted positives, weighted
/// negatives) per distinct score.
fn groups(scores: &[f64], labels: &[f64], weights: Option<&[f64]>) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut last = f64::NAN;
    for i in order {
        let w = weights.map_or(1.0, |w| w[i]);
        let (p, n) = if labels[i] == 1.0 { (w, 0.0) } else { (0.0, w) };
        if scores[i] == last {
            if let Some(g) = out.last_mut() {
                g.0 += p;
                g.1 += n;
            }
        } else {
            out.push((p, n));
            last = scores[i];
        }
    }
    out
}

/// Area under the ROC curve (ties count half).
pub fn roc_auc(scores: &[f64], labels: &[f64], weights: Option<&[f64]>) -> Result<f64, EvalError> {
    check(scores, labels, weights)?;
    let g = groups(scores, labels, weights);
    let (tp, fp) = g.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    if tp <= 0.0 || fp <= 0.0 {
        return Err(EvalError::OneClass);
    }
    let mut area = 0.0;
    let mut pos_above = 0.0;
    for &(p, n) in &g {
        // Negatives in this group rank below every positive above, and tie with these.
        area += n * (pos_above + 0.5 * p);
        pos_above += p;
    }
    Ok(area / (tp * fp))
}

/// Average precision: the sum over thresholds of precision times the recall gained.
pub fn average_precision(
    scores: &[f64],
    labels: &[f64],
    weights: Option<&[f64]>,
) -> Result<f64, EvalError> {
    check(scores, labels, weights)?;
    let g = groups(scores, labels, weights);
    let total_pos: f64 = g.iter().map(|x| x.0).sum();
    if total_pos <= 0.0 {
        return Err(EvalError::OneClass);
    }
    let (mut tp, mut fp, mut ap) = (0.0, 0.0, 0.0);
    for &(p, n) in &g {
        tp += p;
        fp += n;
        if p > 0.0 {
            ap += (p / total_pos) * (tp / (tp + fp));
        }
    }
    Ok(ap)
}

/// Mean negative log-likelihood of probabilities (clipped to [1e-15, 1 - 1e-15]).
pub fn log_loss(probs: &[f64], labels: &[f64], weights: Option<&[f64]>) -> Result<f64, EvalError> {
    check(probs, labels, weights)?;
    let (mut sum, mut wsum) = (0.0, 0.0);
    for (i, (&p, &y)) in probs.iter().zip(labels).enumerate() {
        let w = weights.map_or(1.0, |w| w[i]);
        let p = p.clamp(1e-15, 1.0 - 1e-15);
        sum -= w * (y * p.ln() + (1.0 - y) * (1.0 - p).ln());
        wsum += w;
    }
    if wsum <= 0.0 {
        return Err(EvalError::OneClass);
    }
    Ok(sum / wsum)
}

/// Share of positives caught when the threshold lets through at most `fpr` of negatives.
pub fn recall_at_fpr(
    scores: &[f64],
    labels: &[f64],
    weights: Option<&[f64]>,
    fpr: f64,
) -> Result<f64, EvalError> {
    check(scores, labels, weights)?;
    if !(fpr > 0.0 && fpr < 1.0) {
        return Err(EvalError::Rate {
            name: "fpr",
            value: fpr,
        });
    }
    let g = groups(scores, labels, weights);
    let (tp_all, fp_all) = g.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    if tp_all <= 0.0 || fp_all <= 0.0 {
        return Err(EvalError::OneClass);
    }
    let (mut tp, mut fp, mut best) = (0.0, 0.0, 0.0);
    for &(p, n) in &g {
        if (fp + n) / fp_all > fpr {
            break;
        }
        tp += p;
        fp += n;
        best = tp / tp_all;
    }
    Ok(best)
}

/// Precision among the `k` highest scores (ties at the cut broken by row order).
pub fn precision_at_k(scores: &[f64], labels: &[f64], k: usize) -> Result<f64, EvalError> {
    check(scores, labels, None)?;
    let k = k.min(scores.len());
    if k == 0 {
        return Ok(0.0);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let hits = order[..k].iter().filter(|&&i| labels[i] == 1.0).count();
    Ok(hits as f64 / k as f64)
}

/// The usual report: every metric above, with row and positive counts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Rows evaluated.
    pub rows: usize,
    /// Positive rows.
    pub positives: usize,
    /// ROC-AUC.
    pub roc_auc: f64,
    /// Average precision.
    pub average_precision: f64,
    /// Log-loss of the probabilities.
    pub log_loss: f64,
    /// Recall when at most 1% of negatives are flagged.
    pub recall_at_1pct_fpr: f64,
    /// Precision among the 100 highest scores.
    pub precision_at_100: f64,
}

/// Computes the [`Report`] of probabilities against labels.
pub fn report(probs: &[f64], labels: &[f64]) -> Result<Report, EvalError> {
    Ok(Report {
        rows: labels.len(),
        positives: labels.iter().filter(|&&y| y == 1.0).count(),
        roc_auc: roc_auc(probs, labels, None)?,
        average_precision: average_precision(probs, labels, None)?,
        log_loss: log_loss(probs, labels, None)?,
        recall_at_1pct_fpr: recall_at_fpr(probs, labels, None, 0.01)?,
        precision_at_100: precision_at_k(probs, labels, 100)?,
    })
}

/// The false-positive rates at which fraud teams read recall: 0.1%, 0.5%, 1% and 5%.
pub const STANDARD_FPRS: [f64; 4] = [0.001, 0.005, 0.01, 0.05];

/// Recall at each false-positive rate of `fprs`: `(fpr, recall)`.
pub fn recall_at_fprs(
    scores: &[f64],
    labels: &[f64],
    fprs: &[f64],
) -> Result<Vec<(f64, f64)>, EvalError> {
    fprs.iter()
        .map(|&f| recall_at_fpr(scores, labels, None, f).map(|r| (f, r)))
        .collect()
}

/// Card precision at top-k per day, as the Fraud Detection Handbook defines it
/// (`card_precision_top_k` with `remove_detected_compromised_cards=True`, its default): days
/// in order; each day, every card gets the highest score of its transactions that day and is
/// compromised if any of them is fraud; cards found compromised on an earlier day (among an
/// earlier day's top k) are left out, since investigators blocked them; the `k`
/// highest-scored remaining cards are checked; the day's precision is the share of
/// compromised cards among them (over `k`). `mean` averages over the days.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CardPrecision {
    /// k: cards investigated per day.
    pub k: usize,
    /// Mean of the daily precisions.
    pub mean: f64,
    /// (day number, precision) for each day with transactions, in day order.
    pub days: Vec<(i64, f64)>,
}

/// Computes [`CardPrecision`] the Handbook's way: `cards[i]` and `days[i]` (any day
/// numbering) of row `i`; cards detected on earlier days are removed.
pub fn card_precision_at_k_per_day<C: AsRef<str>>(
    scores: &[f64],
    labels: &[f64],
    cards: &[C],
    days: &[i64],
    k: usize,
) -> Result<CardPrecision, EvalError> {
    card_precision(scores, labels, cards, days, k, true)
}

/// Card precision at top-k per day keeping the cards already detected on earlier days in
/// each day's ranking (not the Handbook's definition: a card found compromised yesterday and
/// found again today counts again, so it reads higher).
pub fn card_precision_at_k_per_day_keeping_detected<C: AsRef<str>>(
    scores: &[f64],
    labels: &[f64],
    cards: &[C],
    days: &[i64],
    k: usize,
) -> Result<CardPrecision, EvalError> {
    card_precision(scores, labels, cards, days, k, false)
}

fn card_precision<C: AsRef<str>>(
    scores: &[f64],
    labels: &[f64],
    cards: &[C],
    days: &[i64],
    k: usize,
    remove_detected: bool,
) -> Result<CardPrecision, EvalError> {
    check(scores, labels, None)?;
    if cards.len() != scores.len() || days.len() != scores.len() {
        return Err(EvalError::Length {
            scores: scores.len(),
            labels: cards.len().min(days.len()),
        });
    }
    let mut per: std::collections::HashMap<(i64, &str), (f64, bool)> =
        std::collections::HashMap::new();
    for i in 0..scores.len() {
        let e = per
            .entry((days[i], cards[i].as_ref()))
            .or_insert((f64::NEG_INFINITY, false));
        e.0 = e.0.max(scores[i]);
        e.1 |= labels[i] == 1.0;
    }
    let mut by_day: std::collections::BTreeMap<i64, Vec<(f64, bool, &str)>> =
        std::collections::BTreeMap::new();
    for ((day, card), (score, fraud)) in per {
        by_day.entry(day).or_default().push((score, fraud, card));
    }
    let mut out = Vec::with_capacity(by_day.len());
    let mut detected: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (day, mut cards) in by_day {
        if remove_detected {
            cards.retain(|c| !detected.contains(c.2));
        }
        // Highest score first; ties by card id so the result does not depend on hashing.
        cards.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.2.cmp(b.2)));
        let found: Vec<&str> = cards.iter().take(k).filter(|c| c.1).map(|c| c.2).collect();
        out.push((
            day,
            if k == 0 {
                0.0
            } else {
                found.len() as f64 / k as f64
            },
        ));
        detected.extend(found);
    }
    let mean = if out.is_empty() {
        0.0
    } else {
        out.iter().map(|d| d.1).sum::<f64>() / out.len() as f64
    };
    Ok(CardPrecision { k, mean, days: out })
}

/// One row of a score-threshold table: what declining every transaction scored at or above
/// `threshold` would do.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ThresholdRow {
    /// The score threshold.
    pub threshold: f64,
    /// Share of all transactions flagged.
    pub flagged_share: f64,
    /// Share of fraud caught (recall).
    pub fraud_caught: f64,
    /// Share of flagged transactions that are fraud.
    pub precision: f64,
    /// Genuine transactions flagged per 1,000 transactions scored.
    pub false_positives_per_1000: f64,
}

/// The threshold table at each of `thresholds`.
pub fn threshold_table(
    scores: &[f64],
    labels: &[f64],
    thresholds: &[f64],
) -> Result<Vec<ThresholdRow>, EvalError> {
    check(scores, labels, None)?;
    let n = scores.len().max(1) as f64;
    let positives = labels.iter().filter(|&&y| y == 1.0).count();
    if positives == 0 {
        return Err(EvalError::OneClass);
    }
    Ok(thresholds
        .iter()
        .map(|&t| {
            let (mut tp, mut fp) = (0usize, 0usize);
            for (s, y) in scores.iter().zip(labels) {
                if *s >= t {
                    if *y == 1.0 {
                        tp += 1;
                    } else {
                        fp += 1;
                    }
                }
            }
            ThresholdRow {
                threshold: t,
                flagged_share: (tp + fp) as f64 / n,
                fraud_caught: tp as f64 / positives as f64,
                precision: if tp + fp == 0 {
                    0.0
                } else {
                    tp as f64 / (tp + fp) as f64
                },
                false_positives_per_1000: 1000.0 * fp as f64 / n,
            }
        })
        .collect())
}

/// The score at which at most `fpr` of the negatives are flagged (flag when score >= it).
pub fn threshold_at_fpr(scores: &[f64], labels: &[f64], fpr: f64) -> Result<f64, EvalError> {
    check(scores, labels, None)?;
    let mut neg: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, y)| **y == 0.0)
        .map(|(s, _)| *s)
        .collect();
    if neg.is_empty() {
        return Err(EvalError::OneClass);
    }
    neg.sort_by(|a, b| b.total_cmp(a));
    let allowed = (fpr * neg.len() as f64).floor() as usize;
    // Flag strictly above the first negative score that must not be flagged.
    Ok(match neg.get(allowed) {
        Some(&s) => next_up(s),
        None => f64::NEG_INFINITY,
    })
}

fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let bits = x.to_bits();
    f64::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// A feature's distribution on the training data, for drift monitoring: the cut points of
/// (up to) ten quantile bins and the share of rows in each bin, plus the share missing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reference {
    /// Increasing cut points: bin `i` holds values `<= edges[i]` (and above the previous).
    pub edges: Vec<f64>,
    /// Share of rows per bin (`edges.len() + 1` bins), then the share of missing values.
    pub shares: Vec<f64>,
}

impl Reference {
    /// The reference distribution of `values` (NaN is missing).
    pub fn of(values: impl Iterator<Item = f64>) -> Reference {
        let mut all: Vec<f64> = Vec::new();
        let mut missing = 0usize;
        for v in values {
            if v.is_nan() {
                missing += 1;
            } else {
                all.push(v);
            }
        }
        let mut edges: Vec<f64> = Vec::new();
        if !all.is_empty() {
            // The deciles are order statistics: each is selected in what the previous one left
            // above it (linear time each; sorting every value cost most of training's setup
            // at a million rows). Values equal by `total_cmp` are the same bits, so these are
            // the values a full sort would put there.
            let n = all.len();
            let mut from = 0usize;
            for q in 1..10 {
                let k = (q * (n - 1)) / 10;
                // (`k` never decreases; everything from `from` on is at least `all[from]`.)
                let e = *all[from..]
                    .select_nth_unstable_by(k - from, f64::total_cmp)
                    .1;
                from = k;
                if edges.last().is_none_or(|&l| e > l) {
                    edges.push(e);
                }
            }
        }
        let mut counts = vec![0usize; edges.len() + 2];
        for &v in &all {
            counts[edges.partition_point(|&e| e < v)] += 1;
        }
        counts[edges.len() + 1] = missing;
        let n = (all.len() + missing).max(1) as f64;
        Reference {
            edges,
            shares: counts.iter().map(|&c| c as f64 / n).collect(),
        }
    }

    /// The bin of a value (the last bin for missing).
    pub fn bin(&self, v: f64) -> usize {
        if v.is_nan() {
            self.edges.len() + 1
        } else {
            self.edges.partition_point(|&e| e < v)
        }
    }

    /// Population stability index of observed bin counts against this reference:
    /// `sum (o - r) ln(o / r)`, shares floored at 1e-4. Under 0.1: stable; over 0.25: shifted.
    pub fn psi(&self, counts: &[u64]) -> f64 {
        let n: u64 = counts.iter().sum();
        if n == 0 || counts.len() != self.shares.len() {
            return 0.0;
        }
        self.shares
            .iter()
            .zip(counts)
            .map(|(&r, &c)| {
                let (r, o) = (r.max(1e-4), (c as f64 / n as f64).max(1e-4));
                (o - r) * (o / r).ln()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_hand_computation_with_ties() {
        // scikit-learn 1.x: roc_auc_score(y, s) = 0.6666666666666667,
        // average_precision_score(y, s) = 0.7
        let y = [0.0, 0.0, 1.0, 1.0, 0.0, 1.0];
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4];
        let auc = roc_auc(&s, &y, None).unwrap();
        assert!((auc - 0.666_666_666_666_666_7).abs() < 1e-12, "{auc}");
        let ap = average_precision(&s, &y, None).unwrap();
        assert!((ap - 0.7).abs() < 1e-12, "{ap}");
    }

    #[test]
    fn perfect_and_errors() {
        let y = [0.0, 1.0, 0.0, 1.0];
        let s = [0.1, 0.9, 0.2, 0.8];
        assert_eq!(roc_auc(&s, &y, None).unwrap(), 1.0);
        assert_eq!(average_precision(&s, &y, None).unwrap(), 1.0);
        assert_eq!(recall_at_fpr(&s, &y, None, 1e-9).unwrap(), 1.0);
        assert_eq!(precision_at_k(&s, &y, 2).unwrap(), 1.0);
        assert_eq!(roc_auc(&s, &[0.0; 4], None), Err(EvalError::OneClass));
        assert!(matches!(
            roc_auc(&s, &[0.0, 2.0, 0.0, 1.0], None),
            Err(EvalError::Label { row: 1, .. })
        ));
        assert!(roc_auc(&s[..3], &y, None).is_err());
        let ll = log_loss(&[0.5, 0.5], &[0.0, 1.0], None).unwrap();
        assert!((ll - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn reference_and_psi() {
        let r = Reference::of((0..1000).map(|i| if i % 10 == 0 { f64::NAN } else { f64::from(i) }));
        assert_eq!(r.shares.len(), r.edges.len() + 2);
        assert!((r.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((r.shares[r.edges.len() + 1] - 0.1).abs() < 1e-12);
        // The same distribution is stable; a shifted one is not.
        let mut same = vec![0u64; r.shares.len()];
        let mut shifted = vec![0u64; r.shares.len()];
        for i in 0..1000 {
            let v = if i % 10 == 0 { f64::NAN } else { f64::from(i) };
            same[r.bin(v)] += 1;
            shifted[r.bin(v + 600.0)] += 1;
        }
        assert!(r.psi(&same) < 1e-9);
        assert!(r.psi(&shifted) > 0.25);
    }

    /// The deciles by selection are those of a full sort, on columns of every shape (few
    /// values, many ties, -0.0 and 0.0, infinities, missing values).
    #[test]
    fn reference_edges_are_a_full_sorts_deciles() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..300 {
            let n = (next() % 60) as usize + usize::from(case % 7 == 0) * 5000;
            let values: Vec<f64> = (0..n)
                .map(|_| match next() % 12 {
                    0 => f64::NAN,
                    1 => -0.0,
                    2 => 0.0,
                    3 if case % 3 == 0 => f64::INFINITY,
                    _ => ((next() % [5, 1000, 1 << 40][case % 3]) as f64) * 0.25 - 3.0,
                })
                .collect();
            let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
            sorted.sort_by(f64::total_cmp);
            let mut want: Vec<f64> = Vec::new();
            if !sorted.is_empty() {
                for q in 1..10 {
                    let e = sorted[(q * (sorted.len() - 1)) / 10];
                    if want.last().is_none_or(|&l| e > l) {
                        want.push(e);
                    }
                }
            }
            let got = Reference::of(values.iter().copied()).edges;
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "case {case}, {n} values");
        }
    }

    #[test]
    fn card_precision_and_thresholds() {
        // Day 0: cards a (fraud, 0.9), b (0.8), c (fraud, 0.1); day 1: a (0.2), b (fraud, 0.7).
        let s = [0.9, 0.3, 0.8, 0.1, 0.2, 0.7];
        let y = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let cards = ["a", "a", "b", "c", "a", "b"];
        let days = [0, 0, 0, 0, 1, 1];
        let cp = card_precision_at_k_per_day_keeping_detected(&s, &y, &cards, &days, 2).unwrap();
        // Day 0: top 2 = a (fraud), b -> 1/2. Day 1: b (fraud), a -> 1/2.
        assert_eq!(cp.days, vec![(0, 0.5), (1, 0.5)]);
        assert_eq!(cp.mean, 0.5);
        // The Handbook's way: a, detected on day 0, is not ranked again on day 1.
        let cp = card_precision_at_k_per_day(&s, &y, &cards, &days, 2).unwrap();
        assert_eq!(cp.days, vec![(0, 0.5), (1, 0.5)]);
        let (s2, y2, c2, d2) = (
            [0.9, 0.8, 0.95, 0.1],
            [1.0, 0.0, 1.0, 0.0],
            ["a", "b", "a", "b"],
            [0, 0, 1, 1],
        );
        // Day 1: a is fraud again with the top score; kept, it would count again.
        let keep = card_precision_at_k_per_day_keeping_detected(&s2, &y2, &c2, &d2, 1).unwrap();
        assert_eq!(keep.days, vec![(0, 1.0), (1, 1.0)]);
        let book = card_precision_at_k_per_day(&s2, &y2, &c2, &d2, 1).unwrap();
        assert_eq!(book.days, vec![(0, 1.0), (1, 0.0)]);
        assert_eq!(book.mean, 0.5);
        for bad in [0.0, 1.0, 5.0, -0.1, f64::NAN] {
            assert!(
                matches!(
                    recall_at_fpr(&s, &y, None, bad),
                    Err(EvalError::Rate { .. })
                ),
                "{bad}"
            );
        }
        let t = threshold_table(&s, &y, &[0.75]).unwrap();
        assert_eq!(t[0].fraud_caught, 1.0 / 3.0);
        assert_eq!(t[0].flagged_share, 2.0 / 6.0);
        assert_eq!(t[0].precision, 0.5);
        assert!((t[0].false_positives_per_1000 - 1000.0 / 6.0).abs() < 1e-9);
        // 3 negatives: at most 1/3 flagged -> flag above the second-highest negative (0.3).
        let th = threshold_at_fpr(&s, &y, 0.34).unwrap();
        assert!(th > 0.3 && th < 0.31);
        let r = recall_at_fprs(&s, &y, &[1e-9, 0.34]).unwrap();
        assert_eq!(r[0].1, 1.0 / 3.0);
        assert_eq!(r[1].1, 2.0 / 3.0);
    }

    #[test]
    fn weights_equal_repetition() {
        let y = [0.0, 1.0, 0.0, 1.0, 0.0];
        let s = [0.3, 0.6, 0.7, 0.2, 0.1];
        let w = [1.0, 2.0, 1.0, 1.0, 3.0];
        let (mut ys, mut ss) = (Vec::new(), Vec::new());
        for i in 0..5 {
            for _ in 0..w[i] as usize {
                ys.push(y[i]);
                ss.push(s[i]);
            }
        }
        let a = roc_auc(&s, &y, Some(&w)).unwrap();
        let b = roc_auc(&ss, &ys, None).unwrap();
        assert!((a - b).abs() < 1e-12);
        let a = average_precision(&s, &y, Some(&w)).unwrap();
        let b = average_precision(&ss, &ys, None).unwrap();
        assert!((a - b).abs() < 1e-12);
    }
}
