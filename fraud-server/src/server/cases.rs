//! The review queue and the console's overview figures, both derived from the decision log:
//! every decision `review` opens a case; a label (from `/v1/labels` or the console) closes it;
//! an escalation marks it. Rebuilt at start from the log's records, kept current as records
//! are written, and, with a store shared by several replicas, as the other replicas' records
//! arrive (`Engine::follow_records`): the queue is the whole service's, whichever replica
//! decided, labelled or escalated.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::Value;

use super::decisions::{Journal, LogError};

/// One open case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The transaction.
    pub transaction_id: String,
    /// Its decision record's seq in its replica's chain.
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

/// Microseconds since the epoch of a record's RFC 3339 time (0 when it is not one).
pub fn micros_of(at: &str) -> i64 {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).map_or(0, |t| {
        i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(0)
    })
}

/// Microseconds since the epoch now.
pub fn micros_now() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(0)
}

/// The Unix hour now.
pub fn hour_now() -> i64 {
    time::OffsetDateTime::now_utc()
        .unix_timestamp()
        .div_euclid(3600)
}

/// Score histogram bins.
pub const SCORE_BINS: usize = 20;

/// Where a case sits in the queue: when it was decided (oldest first, microseconds), then
/// the replica that decided it (its index among those seen) and its record's seq there.
type Key = (i64, u32, u64);

#[derive(Default)]
struct Inner {
    open: BTreeMap<Key, Case>,
    by_id: HashMap<String, Key>,
    /// Replicas seen (index 0: this process's own records).
    origins: HashMap<String, u32>,
    /// Decisions by hour (Unix hour) and outcome (approve, review, decline).
    by_hour: BTreeMap<i64, [u64; 3]>,
    scores: [u64; SCORE_BINS],
    closed: u64,
}

/// The queue and the figures.
#[derive(Default)]
pub struct Cases {
    inner: Mutex<Inner>,
    /// How far the other replicas' records were taken in (replica, seq).
    followed: Mutex<HashMap<String, u64>>,
}

/// Records taken in from the store per query and replica at most.
const FOLLOW_BATCH: usize = 5_000;

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
    /// The replica whose record it is, when another's (`None`: this process).
    pub replica: Option<&'a str>,
    /// When it was decided (microseconds since the epoch): the queue's order.
    pub decided_us: i64,
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
            let origin = match d.replica {
                None => 0,
                Some(r) => {
                    let next = u32::try_from(g.origins.len() + 1).unwrap_or(u32::MAX);
                    *g.origins.entry(r.to_string()).or_insert(next)
                }
            };
            let ts = d.timestamp_us.map_or(0, |us| us.div_euclid(1_000_000));
            let key = (d.decided_us, origin, seq);
            if let Some(old) = g.by_id.insert(d.transaction_id.to_string(), key) {
                g.open.remove(&old);
            }
            g.open.insert(
                key,
                Case {
                    transaction_id: d.transaction_id.to_string(),
                    seq,
                    score: d.score,
                    mcc: d.mcc,
                    ts,
                    escalated: false,
                },
            );
        }
    }

    /// Takes in one decision-log record (`data` decrypted), written at `at` (RFC 3339) by
    /// `replica` (`None`: this process).
    pub fn record(&self, replica: Option<&str>, kind: &str, seq: u64, at: &str, data: &Value) {
        match kind {
            "decision" => {
                let response = &data["response"];
                self.decision(
                    seq,
                    hour_of(at),
                    Decided {
                        transaction_id: data["transaction_id"].as_str().unwrap_or(""),
                        decision: response["decision"].as_str().unwrap_or(""),
                        score: response["score"].as_f64().unwrap_or(0.0),
                        timestamp_us: data["transaction"]["timestamp_us"].as_i64(),
                        mcc: data["transaction"]["mcc"]
                            .as_u64()
                            .and_then(|m| u16::try_from(m).ok()),
                        replica,
                        decided_us: micros_of(at),
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
                    if let Some(key) = g.by_id.get(id).copied() {
                        if let Some(c) = g.open.get_mut(&key) {
                            c.escalated = true;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Takes in the records the other replicas sharing `log`'s store wrote since the last
    /// call (decisions, labels, escalations), all of them, hands each erasure's key ref to
    /// `erased` (so that this process forgets the key another destroyed) and each `policy`
    /// record to `policy`: the count.
    pub fn follow(
        &self,
        log: &dyn Journal,
        mut erased: impl FnMut(&str),
        mut policy: impl FnMut(&super::decisions::Record),
    ) -> Result<usize, LogError> {
        let mut after = self
            .followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut taken = 0;
        loop {
            let before = after.clone();
            let kinds = ["decision", "label", "case", "erase", "policy"];
            let records = log.others(&mut after, &kinds, FOLLOW_BATCH)?;
            for rec in &records {
                if rec.kind == "erase" {
                    if let Some(r) = rec.data["key_ref"].as_str() {
                        erased(r);
                    }
                    for r in rec.data["key_refs"].as_array().into_iter().flatten() {
                        if let Some(r) = r.as_str() {
                            erased(r);
                        }
                    }
                    continue;
                }
                if rec.kind == "policy" {
                    policy(rec);
                    continue;
                }
                self.record(
                    rec.replica.as_deref().or(Some("")),
                    &rec.kind,
                    rec.seq,
                    &rec.at,
                    &rec.data,
                );
            }
            taken += records.len();
            if *after == before {
                return Ok(taken);
            }
        }
    }

    /// Closes the case of a transaction (labelled).
    pub fn close(&self, id: &str) {
        let mut g = self.lock();
        if let Some(key) = g.by_id.remove(id) {
            if g.open.remove(&key).is_some() {
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
        let at = "2026-11-29T10:00:00Z";
        for (seq, (id, d, score, mcc, ts)) in [
            ("a", "review", 0.4, 5411, 100),
            ("b", "approve", 0.1, 5411, 200),
            ("c", "review", 0.6, 5999, 300),
            ("d", "review", 0.5, 5411, 400),
        ]
        .into_iter()
        .enumerate()
        {
            c.record(
                None,
                "decision",
                seq as u64 + 1,
                at,
                &decision(id, d, score, mcc, ts),
            );
        }
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
            None,
            "case",
            5,
            at,
            &json!({"transaction_id": "c", "action": "escalate"}),
        );
        assert!(c.get("c").is_some_and(|x| x.escalated));
        c.record(
            None,
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

    #[test]
    fn cases_of_several_replicas_with_the_same_seq_are_all_kept_in_decision_order() {
        let c = Cases::default();
        let at = "2026-11-29T10:00:00Z";
        c.record(
            None,
            "decision",
            7,
            "2026-11-29T10:00:03.5Z",
            &decision("here", "review", 0.4, 5411, 300),
        );
        c.record(
            Some("b"),
            "decision",
            7,
            "2026-11-29T10:00:01Z",
            &decision("on-b", "review", 0.5, 5411, 100),
        );
        c.record(
            Some("c"),
            "decision",
            7,
            "2026-11-29T10:00:03.25Z",
            &decision("on-c", "review", 0.6, 5411, 200),
        );
        let ids: Vec<String> = c
            .list(&Filter::default(), 0, 10)
            .0
            .into_iter()
            .map(|x| x.transaction_id)
            .collect();
        assert_eq!(ids, ["on-b", "on-c", "here"]);
        // Labelled on another replica: closed here.
        c.record(
            Some("c"),
            "label",
            8,
            at,
            &json!({"transaction_id": "on-b"}),
        );
        c.record(
            Some("b"),
            "case",
            9,
            at,
            &json!({"transaction_id": "here", "action": "escalate"}),
        );
        assert!(c.get("on-b").is_none());
        assert!(c.get("here").is_some_and(|x| x.escalated));
        assert_eq!((c.open_count(), c.closed()), (2, 1));
    }
}
