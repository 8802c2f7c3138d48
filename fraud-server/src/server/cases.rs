//! The review queue and the console's overview figures, both derived from the decision log:
//! every decision `review` opens a case; a label (from `/v1/labels` or the console) closes it;
//! an escalation marks it. Rebuilt at start from the log's records, kept current as records
//! are written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::Value;

/// One open case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The transaction.
    pub transaction_id: String,
    /// Its decision record's seq (the queue's order: oldest first).
    pub seq: u64,
    /// The model's score.
    pub score: f64,
    /// Merchant category code.
    pub mcc: Option<u16>,
    /// Transaction time, Unix seconds.
    pub ts: i64,
    /// Escalated by a reviewer.
    pub escalated: bool,
}

/// Which cases to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Lowest score (inclusive).
    pub score_min: Option<f64>,
    /// Highest score (inclusive).
    pub score_max: Option<f64>,
    /// From this transaction time (Unix seconds, inclusive).
    pub from: Option<i64>,
    /// Before this transaction time (Unix seconds, exclusive).
    pub until: Option<i64>,
    /// This merchant category only.
    pub mcc: Option<u16>,
}

impl Filter {
    fn keeps(&self, c: &Case) -> bool {
        self.score_min.is_none_or(|m| c.score >= m)
            && self.score_max.is_none_or(|m| c.score <= m)
            && self.from.is_none_or(|f| c.ts >= f)
            && self.until.is_none_or(|u| c.ts < u)
            && self.mcc.is_none_or(|m| c.mcc == Some(m))
    }
}

/// The Unix hour of a record's RFC 3339 time (0 when it is not one).
pub fn hour_of(at: &str) -> i64 {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp().div_euclid(3600))
}

/// The Unix hour now.
pub fn hour_now() -> i64 {
    time::OffsetDateTime::now_utc()
        .unix_timestamp()
        .div_euclid(3600)
}

/// Score histogram bins.
pub const SCORE_BINS: usize = 20;

#[derive(Default)]
struct Inner {
    open: BTreeMap<u64, Case>,
    by_id: HashMap<String, u64>,
    /// Decisions by hour (Unix hour) and outcome (approve, review, decline).
    by_hour: BTreeMap<i64, [u64; 3]>,
    scores: [u64; SCORE_BINS],
    closed: u64,
}

/// The queue and the figures.
#[derive(Default)]
pub struct Cases {
    inner: Mutex<Inner>,
}

fn outcome_index(decision: &str) -> Option<usize> {
    match decision {
        "approve" => Some(0),
        "review" => Some(1),
        "decline" => Some(2),
        _ => None,
    }
}

/// What the review queue reads of one decision.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    /// The transaction decided.
    pub transaction_id: &'a str,
    /// `approve`, `review` or `decline`.
    pub decision: &'a str,
    /// The model's probability.
    pub score: f64,
    /// The transaction's time (microseconds since the epoch).
    pub timestamp_us: Option<i64>,
    /// Its merchant category code.
    pub mcc: Option<u16>,
}

impl Cases {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts decision record `seq` (written in `hour`) and opens its case when it is a
    /// review: what [`Cases::record`] reads of a decision record, from the values.
    pub fn decision(&self, seq: u64, hour: i64, d: Decided<'_>) {
        let mut g = self.lock();
        if let Some(i) = outcome_index(d.decision) {
            g.by_hour.entry(hour).or_default()[i] += 1;
        }
        let bin = ((d.score * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1);
        g.scores[bin] += 1;
        if d.decision == "review" && !d.transaction_id.is_empty() {
            g.by_id.insert(d.transaction_id.to_string(), seq);
            g.open.insert(
                seq,
                Case {
                    transaction_id: d.transaction_id.to_string(),
                    seq,
                    score: d.score,
                    mcc: d.mcc,
                    ts: d.timestamp_us.map_or(0, |us| us.div_euclid(1_000_000)),
                    escalated: false,
                },
            );
        }
    }

    /// Takes in one decision-log record (`data` decrypted), written in Unix hour `hour`.
    pub fn record(&self, kind: &str, seq: u64, hour: i64, data: &Value) {
        match kind {
            "decision" => {
                let response = &data["response"];
                self.decision(
                    seq,
                    hour,
                    Decided {
                        transaction_id: data["transaction_id"].as_str().unwrap_or(""),
                        decision: response["decision"].as_str().unwrap_or(""),
                        score: response["score"].as_f64().unwrap_or(0.0),
                        timestamp_us: data["transaction"]["timestamp_us"].as_i64(),
                        mcc: data["transaction"]["mcc"]
                            .as_u64()
                            .and_then(|m| u16::try_from(m).ok()),
                    },
                );
            }
            "label" => {
                if let Some(id) = data["transaction_id"].as_str() {
                    self.close(id);
                }
            }
            "case" => {
                if let (Some(id), Some("escalate")) =
                    (data["transaction_id"].as_str(), data["action"].as_str())
                {
                    let mut g = self.lock();
                    if let Some(seq) = g.by_id.get(id).copied() {
                        if let Some(c) = g.open.get_mut(&seq) {
                            c.escalated = true;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Closes the case of a transaction (labelled).
    pub fn close(&self, id: &str) {
        let mut g = self.lock();
        if let Some(seq) = g.by_id.remove(id) {
            if g.open.remove(&seq).is_some() {
                g.closed += 1;
            }
        }
    }

    /// Open cases passing `filter`, oldest first: `(page, total matching)`.
    pub fn list(&self, filter: &Filter, offset: usize, limit: usize) -> (Vec<Case>, usize) {
        let g = self.lock();
        let all: Vec<&Case> = g.open.values().filter(|c| filter.keeps(c)).collect();
        let total = all.len();
        (
            all.into_iter().skip(offset).take(limit).cloned().collect(),
            total,
        )
    }

    /// The open case of a transaction.
    pub fn get(&self, id: &str) -> Option<Case> {
        let g = self.lock();
        g.by_id.get(id).and_then(|s| g.open.get(s)).cloned()
    }

    /// Open cases.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Cases closed since start (including those replayed).
    pub fn closed(&self) -> u64 {
        self.lock().closed
    }

    /// Decisions per hour (the last `hours` hours that had any), oldest first.
    pub fn by_hour(&self, hours: usize) -> Vec<(i64, [u64; 3])> {
        let g = self.lock();
        let mut v: Vec<(i64, [u64; 3])> = g
            .by_hour
            .iter()
            .rev()
            .take(hours)
            .map(|(h, c)| (*h, *c))
            .collect();
        v.reverse();
        v
    }

    /// The score histogram (`SCORE_BINS` bins over [0, 1]).
    pub fn scores(&self) -> [u64; SCORE_BINS] {
        self.lock().scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decision(id: &str, decision: &str, score: f64, mcc: u16, ts: i64) -> Value {
        json!({"transaction_id": id, "response": {"decision": decision, "score": score},
               "transaction": {"timestamp_us": ts * 1_000_000, "mcc": mcc}})
    }

    #[test]
    fn reviews_open_cases_labels_close_them_filters_apply() {
        let c = Cases::default();
        let at = hour_of("2026-11-29T10:00:00Z");
        c.record("decision", 1, at, &decision("a", "review", 0.4, 5411, 100));
        c.record("decision", 2, at, &decision("b", "approve", 0.1, 5411, 200));
        c.record("decision", 3, at, &decision("c", "review", 0.6, 5999, 300));
        c.record("decision", 4, at, &decision("d", "review", 0.5, 5411, 400));
        assert_eq!(c.open_count(), 3);
        let (page, total) = c.list(&Filter::default(), 0, 10);
        assert_eq!(total, 3);
        let ids: Vec<&str> = page.iter().map(|x| x.transaction_id.as_str()).collect();
        assert_eq!(ids, ["a", "c", "d"]);
        let f = Filter {
            mcc: Some(5411),
            score_min: Some(0.45),
            ..Filter::default()
        };
        assert_eq!(c.list(&f, 0, 10).0.len(), 1);
        let f = Filter {
            from: Some(300),
            ..Filter::default()
        };
        assert_eq!(c.list(&f, 0, 10).1, 2);
        c.record(
            "case",
            5,
            at,
            &json!({"transaction_id": "c", "action": "escalate"}),
        );
        assert!(c.get("c").is_some_and(|x| x.escalated));
        c.record(
            "label",
            6,
            at,
            &json!({"transaction_id": "a", "is_fraud": true}),
        );
        assert_eq!(c.open_count(), 2);
        assert!(c.get("a").is_none());
        assert_eq!(c.closed(), 1);
        let hours = c.by_hour(24);
        assert_eq!(hours.len(), 1);
        assert_eq!(hours[0].1, [1, 3, 0]);
        assert_eq!(c.scores().iter().sum::<u64>(), 4);
    }
}
