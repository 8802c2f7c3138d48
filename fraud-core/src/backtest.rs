//! Backtesting: what a model and a policy would have decided on a past history, and what
//! that would have caught.
//!
//! A backtest is the service's decision replayed: the history in time order through the
//! point-in-time features ([`replay_flat`]: labels count only from the time they were
//! reported, as online), the model's score and the policy's thresholds, rules and lists
//! ([`Policy::decide`]). [`run`] gives one [`Outcome`] per transaction (the decision the
//! service would have answered, its score and what acted); [`summarize`] counts them, per
//! rule, per day and against the labels, and compares them with a baseline's; [`backtest`]
//! does both for a model ([`Prepared`]) and its baseline.
//!
//! The command line (`fraud backtest`) and the Python package call these two.

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::decision::{Decision, DecisionError, Policy, ScorerError, ScoringModel};
use crate::features::{replay_flat, Extractor, FeatureSpec};
use crate::model::{Artifact, ModelLimits};
use crate::transaction::Transaction;

/// A model ready for backtests: compiled, with the extractor of its feature spec.
pub struct Prepared {
    /// The extractor of the model's spec (or of the spec given).
    pub extractor: Extractor,
    /// The model.
    pub model: ScoringModel,
}

impl Prepared {
    /// The model of `artifact` with `spec`, else the spec stored in it (as the service
    /// builds it; no cost limits: a backtest is not a request).
    pub fn new(artifact: &Artifact, spec: Option<FeatureSpec>) -> Result<Self, ScorerError> {
        let spec = spec.unwrap_or_else(|| artifact.feature_spec());
        let extractor = Extractor::new(spec).map_err(|e| ScorerError::Spec(e.to_string()))?;
        let model = ScoringModel::new(artifact, extractor.names(), &ModelLimits::default())?;
        Ok(Prepared { extractor, model })
    }

    /// An arm deciding with this model and `policy`.
    pub fn arm<'a>(&'a self, policy: &'a Policy) -> Arm<'a> {
        Arm {
            extractor: &self.extractor,
            model: &self.model,
            policy,
        }
    }
}

/// A whole backtest: each transaction's outcome, the baseline's, and the summary.
pub struct Backtest {
    /// One per transaction of the history, in its order.
    pub outcomes: Vec<Outcome>,
    /// The baseline's, when there was one.
    pub baseline: Option<Vec<Outcome>>,
    /// The counts ([`summarize`]).
    pub summary: Summary,
}

/// Runs `main` and, when given, `baseline` on `history` ([`run`]), and summarizes them.
pub fn backtest(
    main: Arm<'_>,
    baseline: Option<Arm<'_>>,
    history: &[Transaction],
) -> Result<Backtest, DecisionError> {
    let outcomes = run(main, history)?;
    let baseline = baseline.map(|b| run(b, history)).transpose()?;
    let summary = summarize(
        history,
        &outcomes,
        &main.policy.rules(),
        baseline.as_deref(),
    );
    Ok(Backtest {
        outcomes,
        baseline,
        summary,
    })
}

/// What one arm of a backtest decides with: the model's feature spec, the model and the
/// policy.
#[derive(Clone, Copy)]
pub struct Arm<'a> {
    /// The feature extractor of the model's spec.
    pub extractor: &'a Extractor,
    /// The model.
    pub model: &'a ScoringModel,
    /// Thresholds, rules and lists.
    pub policy: &'a Policy,
}

/// The decision on one transaction of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// What the service would have answered.
    pub decision: Decision,
    /// The model's score (probability of fraud).
    pub score: f64,
    /// What the thresholds alone would have decided.
    pub threshold: Decision,
    /// The lists and rules that acted, in the policy's order (`block_list:<entity>`,
    /// `allow_list:<entity>`, rule names).
    pub fired: Vec<String>,
    /// The shadow rules whose condition held (they never act).
    pub shadow: Vec<String>,
}

impl Outcome {
    /// The decision of `policy` on `tx` scored `score`, with the feature row `features`
    /// (named `names`).
    pub fn of(
        policy: &Policy,
        tx: &Transaction,
        names: &[String],
        features: &[f64],
        score: f64,
    ) -> Result<Outcome, DecisionError> {
        let d = policy.decide_all(tx, names, features, score)?;
        Ok(Outcome {
            decision: d.decision,
            score,
            threshold: policy.threshold(score),
            fired: d.fired,
            shadow: d.shadow,
        })
    }
}

/// Decides every transaction of `history` (in any order: the features are point-in-time by
/// timestamp) with `arm`, in parallel on the current rayon pool. The outcomes are in
/// `history`'s order.
pub fn run(arm: Arm<'_>, history: &[Transaction]) -> Result<Vec<Outcome>, DecisionError> {
    let names = arm.extractor.names();
    let m = names.len();
    let flat = replay_flat(arm.extractor, history);
    let scores = arm.model.scores(&flat, m)?;
    history
        .par_iter()
        .zip(scores.par_iter())
        .enumerate()
        .map(|(i, (tx, &score))| {
            Outcome::of(arm.policy, tx, names, &flat[i * m..(i + 1) * m], score)
        })
        .collect()
}

/// Counts of transactions and their amount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counted {
    /// Transactions.
    pub count: u64,
    /// Their amount (in the transactions' own units: mixed currencies are added as they are).
    pub amount: f64,
}

impl Counted {
    fn add(&mut self, amount: f64) {
        self.count += 1;
        self.amount += amount;
    }
}

/// Decisions by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Decisions {
    /// Approved.
    pub approve: u64,
    /// Sent to review.
    pub review: u64,
    /// Declined.
    pub decline: u64,
}

impl Decisions {
    fn add(&mut self, d: Decision) {
        match d {
            Decision::Approve => self.approve += 1,
            Decision::Review => self.review += 1,
            Decision::Decline => self.decline += 1,
        }
    }
}

/// How one rule (or list) did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleStats {
    /// Transactions it fired on.
    pub fired: u64,
    /// Of those, labelled fraud.
    pub fraud: u64,
    /// Of those, labelled legitimate.
    pub legit: u64,
    /// fraud / (fraud + legit); absent without labelled firings.
    pub precision: Option<f64>,
    /// The amount of the transactions it fired on that were declined.
    pub amount_blocked: f64,
    /// Firings where no other rule or list fired and the thresholds alone would have
    /// approved: what it alone acted on.
    pub alone: u64,
}

impl RuleStats {
    /// One more firing, on a transaction labelled `is_fraud`.
    fn count(&mut self, is_fraud: Option<bool>) {
        self.fired += 1;
        match is_fraud {
            Some(true) => self.fraud += 1,
            Some(false) => self.legit += 1,
            None => {}
        }
    }
}

/// Outcomes against the labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Labelled {
    /// Labelled transactions.
    pub labelled: u64,
    /// Labelled fraud.
    pub fraud: Counted,
    /// Labelled legitimate.
    pub legit: Counted,
    /// Fraud declined.
    pub fraud_declined: Counted,
    /// Fraud sent to review.
    pub fraud_reviewed: Counted,
    /// Legitimate transactions declined, per 1,000 legitimate.
    pub false_declines_per_1000_legit: f64,
    /// Legitimate transactions declined or sent to review, per 1,000 legitimate.
    pub false_positives_per_1000_legit: f64,
    /// Share of fraud declined.
    pub recall_decline: f64,
    /// Share of fraud declined or sent to review.
    pub recall_review_or_decline: f64,
    /// The Handbook's card precision at top-100 per day (the model's score alone: each
    /// day's 100 cards with the highest score, cards found on earlier days left out), mean
    /// over the days; absent when it cannot be computed.
    pub card_precision_at_100: Option<f64>,
}

/// One day (UTC) of the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Transactions that day.
    pub transactions: u64,
    /// Their decisions.
    pub decisions: Decisions,
    /// Labelled fraud that day.
    pub fraud: u64,
    /// Fraud declined.
    pub fraud_declined: u64,
    /// Fraud sent to review.
    pub fraud_reviewed: u64,
    /// Legitimate transactions declined or sent to review.
    pub false_positives: u64,
    /// Cards with a transaction declined or sent to review that day.
    pub cards_flagged: u64,
    /// Of those, cards with a labelled fraud that day.
    pub fraud_cards_flagged: u64,
    /// fraud_cards_flagged / cards_flagged (card precision at the thresholds); absent when
    /// no card was flagged.
    pub card_precision: Option<f64>,
    /// The Handbook's card precision at top-100 that day (see [`Labelled`]).
    pub card_precision_at_100: Option<f64>,
}

/// One threshold of the sweep: what the score alone would do there (rules and lists aside).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    /// The score threshold.
    pub threshold: f64,
    /// Transactions at or above it.
    pub flagged: u64,
    /// Share of the labelled fraud at or above it.
    pub recall: f64,
    /// Legitimate transactions at or above it, per 1,000 legitimate.
    pub false_positives_per_1000_legit: f64,
}

/// How the decisions change from a baseline to the backtested arm.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Comparison {
    /// The baseline's decisions.
    pub decisions: Decisions,
    /// Transactions whose decision changes, by `from->to` (baseline -> backtested).
    pub changes: BTreeMap<String, u64>,
    /// Labelled fraud the backtested arm declines and the baseline did not.
    pub fraud_declined_gained: Counted,
    /// Labelled fraud the baseline declined and the backtested arm does not.
    pub fraud_declined_lost: Counted,
    /// Labelled fraud the backtested arm flags (review or decline) and the baseline did not.
    pub fraud_flagged_gained: Counted,
    /// Labelled fraud the baseline flagged and the backtested arm does not.
    pub fraud_flagged_lost: Counted,
    /// Legitimate transactions the backtested arm flags and the baseline did not, less
    /// those the baseline flagged and it does not.
    pub false_positives_change: i64,
}

/// The whole summary of a backtest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Transactions replayed.
    pub transactions: u64,
    /// Their decisions.
    pub decisions: Decisions,
    /// Per rule or list that fired at least once (and every live rule of the policy).
    pub rules: BTreeMap<String, RuleStats>,
    /// Per shadow rule (`mode = "shadow"`): what it would have done. It never acted, so
    /// `amount_blocked` is the amount it would have declined (a `decline` rule's firings)
    /// and `alone` its firings where nothing else acted and the thresholds approved.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub shadow_rules: BTreeMap<String, RuleStats>,
    /// Against the labels (absent without any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labelled>,
    /// Per day (UTC), in order.
    pub days: Vec<Day>,
    /// The score alone at thresholds 0.05, 0.10, ..., 0.95 (with labels).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub threshold_sweep: Vec<SweepPoint>,
    /// Against the baseline (when one was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Comparison>,
    /// For each pair of rules (or lists) that fired together: on how many transactions
    /// (`overlap[a][b]`, `a` before `b` in name order).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub overlap: BTreeMap<String, BTreeMap<String, u64>>,
}

fn per_1000(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 1000.0 / of as f64
    }
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

/// The UTC day of a time in microseconds, `YYYY-MM-DD`.
fn day_of(us: i64) -> String {
    let days = us.div_euclid(DAY_US);
    time::OffsetDateTime::UNIX_EPOCH
        .checked_add(time::Duration::days(days))
        .map(|d| d.date().to_string())
        .unwrap_or_default()
}

fn flagged(d: Decision) -> bool {
    d != Decision::Approve
}

/// Counts `outcomes` (one per transaction of `history`, as [`run`] gives them); the policy's
/// `rules` ([`Policy::rules`](crate::decision::Policy::rules): name, action, shadow) appear
/// even when they never fired. With `baseline` (the baseline's outcomes on the same
/// history), the decisions that change.
pub fn summarize(
    history: &[Transaction],
    outcomes: &[Outcome],
    rules: &[(String, Decision, bool)],
    baseline: Option<&[Outcome]>,
) -> Summary {
    let mut s = Summary {
        transactions: history.len() as u64,
        ..Summary::default()
    };
    for (name, _, shadow) in rules {
        let map = if *shadow {
            &mut s.shadow_rules
        } else {
            &mut s.rules
        };
        map.entry(name.clone()).or_default();
    }
    let declines = |name: &str| {
        rules
            .iter()
            .any(|(n, a, shadow)| *shadow && n == name && *a == Decision::Decline)
    };
    let mut lab = Labelled::default();
    let mut legit_declined = 0u64;
    let mut days: BTreeMap<String, (Day, HashSet<&str>, HashSet<&str>)> = BTreeMap::new();
    for (tx, o) in history.iter().zip(outcomes) {
        let amount = tx.amount.as_f64();
        s.decisions.add(o.decision);
        let (day, cards, fraud_cards) = days.entry(day_of(tx.timestamp_us)).or_default();
        day.transactions += 1;
        day.decisions.add(o.decision);
        let card = tx.card.token.as_str();
        if flagged(o.decision) {
            cards.insert(card);
        }
        for (i, a) in o.fired.iter().enumerate() {
            for b in &o.fired[i + 1..] {
                let (a, b) = if a <= b { (a, b) } else { (b, a) };
                *s.overlap
                    .entry(a.clone())
                    .or_default()
                    .entry(b.clone())
                    .or_default() += 1;
            }
        }
        for name in &o.fired {
            let r = s.rules.entry(name.clone()).or_default();
            r.count(tx.is_fraud);
            if o.decision == Decision::Decline {
                r.amount_blocked += amount;
            }
            if o.fired.len() == 1 && o.threshold == Decision::Approve {
                r.alone += 1;
            }
        }
        for name in &o.shadow {
            let r = s.shadow_rules.entry(name.clone()).or_default();
            r.count(tx.is_fraud);
            if declines(name) {
                r.amount_blocked += amount;
            }
            if o.fired.is_empty() && o.threshold == Decision::Approve {
                r.alone += 1;
            }
        }
        let Some(fraud) = tx.is_fraud else { continue };
        lab.labelled += 1;
        if fraud {
            lab.fraud.add(amount);
            day.fraud += 1;
            fraud_cards.insert(card);
            match o.decision {
                Decision::Decline => {
                    lab.fraud_declined.add(amount);
                    day.fraud_declined += 1;
                }
                Decision::Review => {
                    lab.fraud_reviewed.add(amount);
                    day.fraud_reviewed += 1;
                }
                Decision::Approve => {}
            }
        } else {
            lab.legit.add(amount);
            if flagged(o.decision) {
                day.false_positives += 1;
            }
            if o.decision == Decision::Decline {
                legit_declined += 1;
            }
        }
    }
    for r in s.rules.values_mut().chain(s.shadow_rules.values_mut()) {
        r.precision = (r.fraud + r.legit > 0).then(|| share(r.fraud, r.fraud + r.legit));
    }
    s.days = days
        .into_iter()
        .map(|(name, (mut day, cards, fraud_cards))| {
            day.day = name;
            day.cards_flagged = cards.len() as u64;
            day.fraud_cards_flagged = cards.intersection(&fraud_cards).count() as u64;
            day.card_precision =
                (day.cards_flagged > 0).then(|| share(day.fraud_cards_flagged, day.cards_flagged));
            day
        })
        .collect();
    if lab.labelled > 0 {
        let legit_flagged: u64 = s.days.iter().map(|d| d.false_positives).sum();
        lab.false_declines_per_1000_legit = per_1000(legit_declined, lab.legit.count);
        lab.false_positives_per_1000_legit = per_1000(legit_flagged, lab.legit.count);
        lab.recall_decline = share(lab.fraud_declined.count, lab.fraud.count);
        lab.recall_review_or_decline = share(
            lab.fraud_declined.count + lab.fraud_reviewed.count,
            lab.fraud.count,
        );
        s.threshold_sweep = sweep(history, outcomes, lab.fraud.count, lab.legit.count);
        if let Some(cp) = top_k_cards(history, outcomes, 100) {
            lab.card_precision_at_100 = Some(cp.mean);
            for (day, p) in cp.days {
                if let Some(d) = s.days.iter_mut().find(|d| d.day == day_of(day * DAY_US)) {
                    d.card_precision_at_100 = Some(p);
                }
            }
        }
        s.labels = Some(lab);
    }
    s.baseline = baseline.map(|b| compare(history, outcomes, b));
    s
}

const DAY_US: i64 = 86_400_000_000;

/// The Handbook's card precision at top-`k` per day over the labelled transactions.
fn top_k_cards(
    history: &[Transaction],
    outcomes: &[Outcome],
    k: usize,
) -> Option<crate::eval::CardPrecision> {
    let (mut scores, mut labels, mut cards, mut days) = (vec![], vec![], vec![], vec![]);
    for (tx, o) in history.iter().zip(outcomes) {
        if let Some(f) = tx.is_fraud {
            scores.push(o.score);
            labels.push(if f { 1.0 } else { 0.0 });
            cards.push(tx.card.token.as_str());
            days.push(tx.timestamp_us.div_euclid(DAY_US));
        }
    }
    crate::eval::card_precision_at_k_per_day(&scores, &labels, &cards, &days, k).ok()
}

/// The score alone at thresholds 0.05 to 0.95.
fn sweep(history: &[Transaction], outcomes: &[Outcome], fraud: u64, legit: u64) -> Vec<SweepPoint> {
    (1..20)
        .map(|k| {
            let threshold = k as f64 / 20.0;
            let (mut flagged, mut tp, mut fp) = (0u64, 0u64, 0u64);
            for (tx, o) in history.iter().zip(outcomes) {
                if o.score >= threshold {
                    flagged += 1;
                    match tx.is_fraud {
                        Some(true) => tp += 1,
                        Some(false) => fp += 1,
                        None => {}
                    }
                }
            }
            SweepPoint {
                threshold,
                flagged,
                recall: share(tp, fraud),
                false_positives_per_1000_legit: per_1000(fp, legit),
            }
        })
        .collect()
}

fn compare(history: &[Transaction], outcomes: &[Outcome], baseline: &[Outcome]) -> Comparison {
    let mut c = Comparison::default();
    let mut changes: HashMap<(Decision, Decision), u64> = HashMap::new();
    for ((tx, now), before) in history.iter().zip(outcomes).zip(baseline) {
        c.decisions.add(before.decision);
        if now.decision != before.decision {
            *changes.entry((before.decision, now.decision)).or_default() += 1;
        }
        let amount = tx.amount.as_f64();
        let declined = (
            before.decision == Decision::Decline,
            now.decision == Decision::Decline,
        );
        let flag = (flagged(before.decision), flagged(now.decision));
        match tx.is_fraud {
            Some(true) => {
                match declined {
                    (false, true) => c.fraud_declined_gained.add(amount),
                    (true, false) => c.fraud_declined_lost.add(amount),
                    _ => {}
                }
                match flag {
                    (false, true) => c.fraud_flagged_gained.add(amount),
                    (true, false) => c.fraud_flagged_lost.add(amount),
                    _ => {}
                }
            }
            Some(false) => match flag {
                (false, true) => c.false_positives_change += 1,
                (true, false) => c.false_positives_change -= 1,
                _ => {}
            },
            None => {}
        }
    }
    c.changes = changes
        .into_iter()
        .map(|((a, b), n)| (format!("{}->{}", a.name(), b.name()), n))
        .collect();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_522_540_800_000_000 - 1), "2018-03-31");
        assert_eq!(day_of(1_522_540_800_000_000), "2018-04-01");
    }
}
