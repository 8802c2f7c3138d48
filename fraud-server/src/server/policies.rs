//! The live policy (thresholds, rules, lists) as a versioned, reviewed object: drafts posted
//! by one admin (an API key or a console user) and approved by a different one
//! (maker-checker), every draft, publication and discard a `policy` record of the decision
//! log, so the log says which policy decided each transaction (its record's
//! `policy_version`) and who wrote and who approved it. A rollback is a new version drafted
//! from an old one.
//!
//! The configuration file's policy is the starting one: on start the latest version in the
//! log is live, unless the file's policy differs from the last version taken from the file,
//! which is then published as a new version (whoever can edit the file and restart the
//! service publishes without review, as before). Replicas sharing a store follow each
//! other's publications.
//!
//! A draft comes with its backtest on the recent log: the last decisions (their
//! transactions, features and scores, kept in memory, labels included as they arrive)
//! decided again with the draft's policy and compared with the live one's.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use fraud_core::backtest::{Outcome, Summary};
use fraud_core::decision::{Policy, PolicyConfig};
use fraud_core::transaction::Transaction;
use serde::{Deserialize, Serialize};

use super::decisions::{Event, Journal, Kind, Record};
use super::problem::Problem;
use actix_web::http::StatusCode;

/// How many recent decisions the drafts' backtests replay.
pub const RECENT: usize = 10_000;

/// What a `policy` record of the decision log holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum PolicyRecord {
    /// A draft posted for review.
    Draft {
        /// Its id.
        draft: String,
        /// The version live when it was drafted.
        base_version: u64,
        /// Why, in the author's words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        /// The proposed policy.
        policy: PolicyConfig,
    },
    /// A version published: a draft approved by another admin, or the configuration file's
    /// policy at start.
    Publish {
        /// Its number, from 1.
        version: u64,
        /// The approved draft (none for the configuration file's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        draft: Option<String>,
        /// Who drafted it (`config` for the configuration file).
        drafted_by: String,
        /// `config` or `review`.
        source: String,
        /// The draft's comment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        /// The policy.
        policy: PolicyConfig,
    },
    /// A draft withdrawn or rejected.
    Discard {
        /// Its id.
        draft: String,
    },
}

/// A published version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Version {
    /// Its number, from 1.
    pub version: u64,
    /// When it was published (RFC 3339).
    pub published_at: String,
    /// Who drafted it (`config`: the configuration file).
    pub drafted_by: String,
    /// Who approved it (none for the configuration file's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// `config` or `review`.
    pub source: String,
    /// The draft it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// The draft's comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The policy: `thresholds`, `rules`, `lists`.
    #[schema(value_type = Object)]
    pub policy: PolicyConfig,
}

/// A draft waiting for approval.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Draft {
    /// Its id.
    pub id: String,
    /// When it was posted (RFC 3339).
    pub drafted_at: String,
    /// Who posted it.
    pub drafted_by: String,
    /// The version live when it was drafted.
    pub base_version: u64,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The proposed policy.
    #[schema(value_type = Object)]
    pub policy: PolicyConfig,
}

/// The live version, compiled.
pub struct Live {
    /// The version.
    pub version: Version,
    /// Its policy, compiled.
    pub policy: Policy,
}

/// A recent decision, as the drafts' backtests replay it.
struct Recent {
    tx: Transaction,
    features: Vec<f64>,
    score: f64,
}

/// The versions and drafts as the log tells them (built while the log is read at start).
#[derive(Default)]
pub struct History {
    versions: Vec<Version>,
    drafts: BTreeMap<String, Draft>,
}

impl History {
    /// Takes in one record of the log (other kinds are ignored).
    pub fn record(&mut self, rec: &Record) {
        if !rec.is(Kind::Policy) {
            return;
        }
        let Ok(r) = serde_json::from_value::<PolicyRecord>(rec.data.clone()) else {
            return;
        };
        match r {
            PolicyRecord::Draft {
                draft,
                base_version,
                comment,
                policy,
            } => {
                self.drafts.insert(
                    draft.clone(),
                    Draft {
                        id: draft,
                        drafted_at: rec.at.clone(),
                        drafted_by: rec.key.clone(),
                        base_version,
                        comment,
                        policy,
                    },
                );
            }
            PolicyRecord::Publish {
                version,
                draft,
                drafted_by,
                source,
                comment,
                policy,
            } => {
                if let Some(d) = &draft {
                    self.drafts.remove(d);
                }
                if self.versions.iter().any(|v| v.version == version) {
                    return;
                }
                self.versions.push(Version {
                    version,
                    published_at: rec.at.clone(),
                    approved_by: (source != "config").then(|| rec.key.clone()),
                    drafted_by,
                    source,
                    draft,
                    comment,
                    policy,
                });
                self.versions.sort_by_key(|v| v.version);
            }
            PolicyRecord::Discard { draft } => {
                self.drafts.remove(&draft);
            }
        }
    }
}

/// The service's policy: the live version, the versions before it, the drafts.
pub struct Policies {
    live: ArcSwap<Live>,
    history: Mutex<History>,
    recent: Mutex<VecDeque<Recent>>,
    recent_cap: usize,
    names: Vec<String>,
}

use super::webhooks::now;

fn compile(cfg: &PolicyConfig, names: &[String]) -> Result<Policy, Problem> {
    check_lists(cfg)?;
    Policy::new(cfg, names).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid policy",
            e.to_string(),
        )
    })
}

/// A card number in a list would be written to the log in clear: refused (lists hold
/// tokens), and so are card numbers in rules and comments.
fn check_lists(cfg: &PolicyConfig) -> Result<(), Problem> {
    let mut fields: Vec<(String, &str)> = Vec::new();
    for (side, l) in [("allow", &cfg.lists.allow), ("block", &cfg.lists.block)] {
        for (name, values) in [
            ("card_tokens", &l.card_tokens),
            ("customers", &l.customers),
            ("devices", &l.devices),
            ("ips", &l.ips),
            ("emails", &l.emails),
        ] {
            for (i, v) in values.iter().enumerate() {
                fields.push((format!("policy.lists.{side}.{name}[{i}]"), v));
            }
        }
    }
    for (i, r) in cfg.rules.iter().enumerate() {
        fields.push((format!("policy.rules[{i}].name"), &r.name));
        fields.push((format!("policy.rules[{i}].when"), &r.when));
    }
    match fields
        .iter()
        .find(|(_, v)| fraud_core::pii::holds_card_data(v))
    {
        Some((field, _)) => Err(card_number_in(field)),
        None => Ok(()),
    }
}

fn card_number_in(field: &str) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid policy",
        format!(
            "{field} holds what looks like a card number: a policy names cards by their tokens (tok_...), never by number"
        ),
    )
}

fn log_problem(e: super::decisions::LogError) -> Problem {
    Problem::from_log(e)
}

impl Policies {
    /// The policy at start: the log's `history` and the configuration file's `file` policy
    /// (published as a new version, recorded in `log`, when it differs from the last one
    /// taken from the file: then its record's seq and data come too), compiled for the
    /// feature `names`; `recent` decisions are kept for the drafts' backtests.
    pub fn start(
        mut history: History,
        file: &PolicyConfig,
        names: &[String],
        log: &dyn Journal,
        recent: usize,
    ) -> anyhow::Result<(Policies, Option<(u64, serde_json::Value)>)> {
        let last_file = history.versions.iter().rev().find(|v| v.source == "config");
        let latest = history.versions.last();
        let compiled = latest.and_then(|v| match Policy::new(&v.policy, names) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!(
                    "warning: policy version {} of the decision log does not compile with this feature spec ({e}); the configuration file's policy is published",
                    v.version
                );
                None
            }
        });
        let file_changed = last_file.is_none_or(|v| v.policy != *file);
        let mut published = None;
        let live = match (latest, compiled) {
            (Some(v), Some(p)) if !file_changed => Live {
                version: v.clone(),
                policy: p,
            },
            _ => {
                let policy =
                    Policy::new(file, names).map_err(|e| anyhow::anyhow!("config: {e}"))?;
                let version = latest.map_or(1, |v| v.version + 1);
                let rec = PolicyRecord::Publish {
                    version,
                    draft: None,
                    drafted_by: "config".into(),
                    source: "config".into(),
                    comment: None,
                    policy: file.clone(),
                };
                let seq = log
                    .append("config", &Event::Policy(&rec))
                    .map_err(|e| anyhow::anyhow!("recording the starting policy: {e}"))?;
                published = Some((seq, serde_json::to_value(&rec).unwrap_or_default()));
                let v = Version {
                    version,
                    published_at: now(),
                    drafted_by: "config".into(),
                    approved_by: None,
                    source: "config".into(),
                    draft: None,
                    comment: None,
                    policy: file.clone(),
                };
                history.versions.push(v.clone());
                Live { version: v, policy }
            }
        };
        Ok((
            Policies {
                live: ArcSwap::from_pointee(live),
                history: Mutex::new(history),
                recent: Mutex::new(VecDeque::with_capacity(recent.min(1 << 16))),
                recent_cap: recent,
                names: names.to_vec(),
            },
            published,
        ))
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live version.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Every published version, oldest first.
    pub fn versions(&self) -> Vec<Version> {
        self.history().versions.clone()
    }

    /// The drafts waiting for approval, oldest id first.
    pub fn drafts(&self) -> Vec<Draft> {
        self.history().drafts.values().cloned().collect()
    }

    /// One draft.
    pub fn draft(&self, id: &str) -> Option<Draft> {
        self.history().drafts.get(id).cloned()
    }

    /// Posts a draft for `by`: `policy`, or (a rollback) the policy of version
    /// `from_version`. Checked and compiled first (422 naming what is wrong).
    pub fn propose(
        &self,
        log: &dyn Journal,
        by: &str,
        policy: Option<PolicyConfig>,
        from_version: Option<u64>,
        comment: Option<String>,
    ) -> Result<Draft, Problem> {
        let policy = match (policy, from_version) {
            (Some(p), None) => p,
            (None, Some(v)) => self
                .history()
                .versions
                .iter()
                .find(|x| x.version == v)
                .map(|x| x.policy.clone())
                .ok_or_else(|| Problem::bad_field("from_version", format!("no version {v}")))?,
            _ => {
                return Err(Problem::bad_field(
                    "policy",
                    "send either `policy` (thresholds, rules, lists) or `from_version`",
                ))
            }
        };
        if let Some(c) = &comment {
            if fraud_core::pii::holds_card_data(c) {
                return Err(card_number_in("comment"));
            }
            if c.len() > 2000 {
                return Err(Problem::bad_field("comment", "is longer than 2,000 bytes"));
            }
        }
        // Checked (settings, card numbers) and compiled, as a publication would be.
        compile(&policy, &self.names)?;
        let mut id = [0u8; 6];
        getrandom::fill(&mut id).map_err(|_| Problem::internal("no randomness from the OS"))?;
        let id = format!("d{}", fraud_core::hex::encode(&id));
        let base_version = self.live().version.version;
        let rec = PolicyRecord::Draft {
            draft: id.clone(),
            base_version,
            comment: comment.clone(),
            policy: policy.clone(),
        };
        log.append(by, &Event::Policy(&rec)).map_err(log_problem)?;
        let d = Draft {
            id: id.clone(),
            drafted_at: now(),
            drafted_by: by.to_string(),
            base_version,
            comment,
            policy,
        };
        self.history().drafts.insert(id, d.clone());
        Ok(d)
    }

    /// Approves draft `id` for `by`, who must not be its author: it becomes the next
    /// version and is live once this returns.
    /// Returns the version, its record's seq and data.
    pub fn approve(
        &self,
        log: &dyn Journal,
        by: &str,
        id: &str,
    ) -> Result<(Version, u64, serde_json::Value), Problem> {
        let mut h = self.history();
        let d = h.drafts.get(id).cloned().ok_or_else(|| no_draft(id))?;
        if d.drafted_by == by {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "draft {id} was posted by {by}: a draft is approved by another admin than its author (maker-checker)"
                ),
            ));
        }
        let policy = compile(&d.policy, &self.names)?;
        let version = h.versions.last().map_or(1, |v| v.version + 1);
        let rec = PolicyRecord::Publish {
            version,
            draft: Some(id.to_string()),
            drafted_by: d.drafted_by.clone(),
            source: "review".into(),
            comment: d.comment.clone(),
            policy: d.policy.clone(),
        };
        let seq = log.append(by, &Event::Policy(&rec)).map_err(log_problem)?;
        let data = serde_json::to_value(&rec).unwrap_or_default();
        let v = Version {
            version,
            published_at: now(),
            drafted_by: d.drafted_by,
            approved_by: Some(by.to_string()),
            source: "review".into(),
            draft: Some(id.to_string()),
            comment: d.comment,
            policy: d.policy,
        };
        h.drafts.remove(id);
        h.versions.push(v.clone());
        self.live.store(Arc::new(Live {
            version: v.clone(),
            policy,
        }));
        Ok((v, seq, data))
    }

    /// Withdraws or rejects draft `id` (any admin).
    pub fn discard(&self, log: &dyn Journal, by: &str, id: &str) -> Result<(), Problem> {
        let mut h = self.history();
        if !h.drafts.contains_key(id) {
            return Err(no_draft(id));
        }
        let rec = PolicyRecord::Discard {
            draft: id.to_string(),
        };
        log.append(by, &Event::Policy(&rec)).map_err(log_problem)?;
        h.drafts.remove(id);
        Ok(())
    }

    /// Takes in a `policy` record another replica wrote: a publication newer than the
    /// live version goes live here too. Whether it did.
    pub fn follow(&self, rec: &Record) -> bool {
        let mut h = self.history();
        h.record(rec);
        let Some(latest) = h.versions.last() else {
            return false;
        };
        if latest.version <= self.live().version.version {
            return false;
        }
        match Policy::new(&latest.policy, &self.names) {
            Ok(policy) => {
                self.live.store(Arc::new(Live {
                    version: latest.clone(),
                    policy,
                }));
                true
            }
            Err(e) => {
                eprintln!(
                    "warning: policy version {} published by another replica does not compile here: {e}",
                    latest.version
                );
                false
            }
        }
    }

    /// Keeps a decided transaction for the drafts' backtests (the last `recent` ones).
    pub fn keep(&self, tx: Transaction, features: Vec<f64>, score: f64) {
        if self.recent_cap == 0 {
            return;
        }
        let mut r = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.len() >= self.recent_cap {
            r.pop_front();
        }
        r.push_back(Recent {
            tx,
            features,
            score,
        });
    }

    /// A label arrived for a transaction kept for the backtests.
    pub fn label(&self, transaction_id: &str, is_fraud: bool) {
        let mut r = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(x) = r
            .iter_mut()
            .rev()
            .find(|x| x.tx.transaction_id == transaction_id)
        {
            x.tx.is_fraud = Some(is_fraud);
        }
    }

    /// The backtest of `cfg` on the recent decisions against the live policy (as
    /// `fraud backtest` summarises one, the live policy as the baseline).
    pub fn backtest(&self, cfg: &PolicyConfig) -> Result<Summary, Problem> {
        let draft = compile(cfg, &self.names)?;
        let live = self.live();
        let (history, features, scores): (Vec<Transaction>, Vec<Vec<f64>>, Vec<f64>) = {
            let r = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut h = Vec::with_capacity(r.len());
            let mut f = Vec::with_capacity(r.len());
            let mut s = Vec::with_capacity(r.len());
            for x in r.iter() {
                h.push(x.tx.clone());
                f.push(x.features.clone());
                s.push(x.score);
            }
            (h, f, s)
        };
        let decide = |p: &Policy| -> Result<Vec<Outcome>, Problem> {
            history
                .iter()
                .zip(&features)
                .zip(&scores)
                .map(|((tx, f), &score)| {
                    Outcome::of(p, tx, &self.names, f, score)
                        .map_err(|e| Problem::internal(format!("backtest: {e}")))
                })
                .collect()
        };
        let outcomes = decide(&draft)?;
        let baseline = decide(&live.policy)?;
        Ok(fraud_core::backtest::summarize(
            &history,
            &outcomes,
            &draft.rules(),
            Some(&baseline),
        ))
    }

    /// How many recent decisions the backtests replay now.
    pub fn recent_len(&self) -> usize {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

fn no_draft(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not found",
        format!(
            "no draft {} is waiting for approval",
            fraud_core::pii::quoted(id)
        ),
    )
}
