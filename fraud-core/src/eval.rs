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
        assert_eq!(recall_at_fpr(&s, &y, None, 0.0).unwrap(), 1.0);
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
