//! Champion / challenger: the scores both models gave to the transactions labelled since
//! start, compared as labels arrive (ROC AUC and average precision per arm), for `/metrics`
//! and the console.

use std::collections::VecDeque;
use std::sync::Mutex;

/// A ranking measure of `fraud_core::eval` (scores, labels, weights).
type Measure = fn(&[f64], &[f64], Option<&[f64]>) -> Result<f64, fraud_core::eval::EvalError>;

/// How many labelled transactions the comparison keeps (the newest).
pub const KEEP: usize = 100_000;

/// The labelled transactions' scores by both models.
#[derive(Default)]
pub struct Comparison {
    rows: Mutex<VecDeque<(f64, f64, bool)>>,
    /// Decisions since start by arm (champion, challenger) and outcome (approve, review,
    /// decline).
    decisions: [[std::sync::atomic::AtomicU64; 3]; 2],
}

/// The comparison now.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Compared {
    /// Labelled transactions compared.
    pub labelled: usize,
    /// Of which fraud.
    pub fraud: usize,
    /// ROC AUC of the champion (the active model) and of the challenger (the shadow);
    /// none until both classes were labelled.
    pub auc: Option<(f64, f64)>,
    /// Average precision of each.
    pub average_precision: Option<(f64, f64)>,
    /// Decisions since start: the champion's and the challenger's (approve, review,
    /// decline).
    pub decisions: [[u64; 3]; 2],
}

impl Comparison {
    /// A decision taken by `arm` (`champion` or `challenger`): `outcome` 0 approve, 1
    /// review, 2 decline.
    pub fn decided(&self, arm: &str, outcome: usize) {
        let a = usize::from(arm == "challenger");
        if let Some(c) = self.decisions[a].get(outcome) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A labelled transaction: the champion's and the challenger's scores.
    pub fn add(&self, champion: f64, challenger: f64, is_fraud: bool) {
        let mut r = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.len() >= KEEP {
            r.pop_front();
        }
        r.push_back((champion, challenger, is_fraud));
    }

    /// The comparison of what was labelled.
    pub fn now(&self) -> Compared {
        let rows: Vec<(f64, f64, bool)> = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        let labels: Vec<f64> = rows.iter().map(|r| f64::from(u8::from(r.2))).collect();
        let a: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let b: Vec<f64> = rows.iter().map(|r| r.1).collect();
        let both = |f: Measure| match (f(&a, &labels, None), f(&b, &labels, None)) {
            (Ok(x), Ok(y)) => Some((x, y)),
            _ => None,
        };
        Compared {
            labelled: rows.len(),
            fraud: rows.iter().filter(|r| r.2).count(),
            auc: both(fraud_core::eval::roc_auc),
            average_precision: both(fraud_core::eval::average_precision),
            decisions: self.decisions.each_ref().map(|a| {
                a.each_ref()
                    .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_better_ranking_model_has_the_higher_auc() {
        let c = Comparison::default();
        assert!(c.now().auc.is_none());
        // The challenger ranks every fraud above every legitimate one; the champion does not.
        for i in 0..10 {
            let fraud = i % 3 == 0;
            let champion = i as f64 / 10.0;
            let challenger = if fraud { 0.9 } else { 0.1 };
            c.add(champion, challenger, fraud);
        }
        let n = c.now();
        assert_eq!((n.labelled, n.fraud), (10, 4));
        let (a, b) = n.auc.unwrap_or_default();
        assert!(b > a && (b - 1.0).abs() < 1e-12, "{a} {b}");
        let (pa, pb) = n.average_precision.unwrap_or_default();
        assert!(pb > pa && (pb - 1.0).abs() < 1e-12);
    }
}
