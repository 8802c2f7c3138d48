//! The scoring pipeline of one transaction: validate and protect the card, check the allow
//! and block lists, compute the features (and record the transaction in entity state), score
//! with the active model, explain with TreeSHAP, evaluate the rules, decide, and write the
//! decision to the log before answering. A shadow model, when loaded, is scored and recorded
//! beside the active one and never decides.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use fraud_core::features::{Entity, Extractor, Field, LabelEvent, StateStore};
use fraud_core::model::{Artifact, CompiledModel, Explainer};
use fraud_core::pii::Tokenizer;
use fraud_core::transaction::Transaction;
use serde_json::{json, Value};

use super::config::{Config, ListConfig};
use super::decisions::DecisionLog;
use super::metrics::{Drift, Metrics};
use super::problem::Problem;

/// A model ready to score: compiled, explainable, its columns mapped to the feature row.
pub struct LoadedModel {
    /// First 16 hex digits of the artifact's SHA-256.
    pub version: String,
    /// Where it came from (`embedded demo model` or a path).
    pub origin: String,
    compiled: CompiledModel,
    explainer: Explainer,
    /// Model column `i` is feature `columns[i]` of the extractor's row.
    columns: Vec<usize>,
    /// For a categorical column with stored categories: the feature's value -> code table
    /// (the extractor's value scored by value; unseen: missing).
    codes: Vec<Option<std::collections::HashMap<String, f64>>>,
    names: Vec<String>,
    /// Drift counters against the training reference (None without a reference).
    pub drift: Option<Drift>,
}

impl LoadedModel {
    /// Checks the model against `limits` (its cost per request) and that `extractor`
    /// produces every feature of it, compiles it and prepares its explainer.
    pub fn new(
        artifact: &Artifact,
        extractor: &Extractor,
        origin: &str,
        limits: &fraud_core::model::ModelLimits,
    ) -> Result<Self, String> {
        artifact
            .ensemble
            .check_limits(limits)
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = artifact
            .ensemble
            .feature_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let produced = extractor.names();
        let columns = names
            .iter()
            .map(|n| {
                produced.iter().position(|p| p == n).ok_or_else(|| {
                    format!(
                        "the model needs feature `{n}`, which the feature spec does not produce"
                    )
                })
            })
            .collect::<Result<Vec<usize>, String>>()?;
        let mut tables = artifact.metadata.category_codes();
        let codes = names.iter().map(|n| tables.remove(n)).collect();
        let compiled = CompiledModel::new(&artifact.ensemble).map_err(|e| e.to_string())?;
        let explainer = Explainer::new(&artifact.ensemble).map_err(|e| e.to_string())?;
        let version: String = artifact
            .fingerprint()
            .map_err(|e| e.to_string())?
            .chars()
            .take(16)
            .collect();
        let refs = artifact
            .metadata
            .training
            .as_ref()
            .and_then(|t| t.get("reference"))
            .and_then(|r| {
                names
                    .iter()
                    .map(|n| {
                        serde_json::from_value::<fraud_core::eval::Reference>(r.get(n)?.clone())
                            .ok()
                            .map(|r| (n.clone(), r))
                    })
                    .collect::<Option<Vec<_>>>()
            });
        let drift = refs.map(|r| Drift::new(&version, r));
        Ok(LoadedModel {
            version,
            origin: origin.to_string(),
            compiled,
            explainer,
            columns,
            codes,
            names,
            drift,
        })
    }

    fn row(&self, features: &[f64]) -> Vec<f64> {
        self.columns
            .iter()
            .zip(&self.codes)
            .map(|(&c, table)| match table {
                None => features[c],
                Some(_) if features[c].is_nan() => f64::NAN,
                Some(t) => t
                    .get(&fraud_core::model::float_key(features[c]))
                    .copied()
                    .unwrap_or(f64::NAN),
            })
            .collect()
    }
}

/// Approve, review or decline, in increasing strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    /// Let it through.
    Approve,
    /// A person looks at it.
    Review,
    /// Refuse it.
    Decline,
}

impl Decision {
    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Review => "review",
            Decision::Decline => "decline",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Decision::Approve),
            "review" => Some(Decision::Review),
            "decline" => Some(Decision::Decline),
            _ => None,
        }
    }
}

/// A compiled rule.
pub struct Rule {
    name: String,
    program: cel::Program,
    action: Decision,
}

#[derive(Default)]
struct ListSet {
    values: HashSet<(u8, String)>,
}

impl ListSet {
    fn new(c: &ListConfig) -> Self {
        let mut values = HashSet::new();
        for (k, list) in [
            (0u8, &c.card_tokens),
            (1, &c.customers),
            (2, &c.devices),
            (3, &c.ips),
            (4, &c.emails),
        ] {
            for v in list {
                let v = if k == 4 {
                    v.trim().to_ascii_lowercase()
                } else {
                    v.trim().to_string()
                };
                values.insert((k, v));
            }
        }
        ListSet { values }
    }

    /// The first entity of `tx` on the list, named.
    fn hit(&self, tx: &Transaction) -> Option<&'static str> {
        if self.values.is_empty() {
            return None;
        }
        let ip = tx.ip.map(|i| i.to_string());
        let keys: [(u8, Option<&str>, &str); 5] = [
            (0, Some(tx.card.token.as_str()), "card"),
            (1, tx.customer_id.as_deref(), "customer"),
            (2, tx.device_id.as_deref(), "device"),
            (3, ip.as_deref(), "ip"),
            (4, tx.email.as_deref(), "email"),
        ];
        let mut hit = None;
        for (k, v, name) in keys {
            if v.is_some_and(|v| self.values.contains(&(k, v.to_string()))) {
                hit = Some(name);
                break;
            }
        }
        hit
    }
}

/// Thresholds, rules and lists.
pub struct Policy {
    review: f64,
    decline: f64,
    rules: Vec<Rule>,
    allow: ListSet,
    block: ListSet,
}

/// The CEL variables of one transaction.
fn cel_context(
    tx: &Transaction,
    names: &[String],
    features: &[f64],
    score: f64,
) -> Result<cel::Context<'static, 'static>, String> {
    let mut ctx = cel::Context::default();
    let mut f = std::collections::HashMap::with_capacity(names.len());
    for (n, v) in names.iter().zip(features) {
        // Missing features are NaN; CEL sees them as NaN too (every comparison false).
        f.insert(n.clone(), *v);
    }
    let t = json!({
        "transaction_id": tx.transaction_id,
        "amount": tx.amount.as_f64(),
        "currency": tx.currency,
        "card_token": tx.card.token,
        "customer_id": tx.customer_id.clone().unwrap_or_default(),
        "merchant_id": tx.merchant_id.clone().unwrap_or_default(),
        "mcc": tx.mcc.map(i64::from).unwrap_or(-1),
        "terminal_id": tx.terminal_id.clone().unwrap_or_default(),
        "channel": tx.channel.map(|c| serde_json::to_value(c).unwrap_or_default()).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        "card_country": tx.card_country.clone().unwrap_or_default(),
        "merchant_country": tx.merchant_country.clone().unwrap_or_default(),
        "ip_country": tx.ip_country.clone().unwrap_or_default(),
        "device_id": tx.device_id.clone().unwrap_or_default(),
    });
    ctx.add_variable("features", f).map_err(|e| e.to_string())?;
    ctx.add_variable("tx", t).map_err(|e| e.to_string())?;
    ctx.add_variable("score", score)
        .map_err(|e| e.to_string())?;
    Ok(ctx)
}

impl Policy {
    /// Compiles and checks the rules of `cfg` against the feature names: a rule that does not
    /// parse, names an unknown feature or does not yield a boolean is a start-up error.
    pub fn new(cfg: &Config, feature_names: &[String]) -> Result<Self, String> {
        let mut rules = Vec::new();
        let sample = sample_transaction();
        let zeros = vec![0.0; feature_names.len()];
        for (i, r) in cfg.rules.iter().enumerate() {
            let program = cel::Program::compile(&r.when).map_err(|e| {
                format!(
                    "config: rules[{i}] ({}): `when` does not parse: {e}",
                    r.name
                )
            })?;
            let ctx = cel_context(&sample, feature_names, &zeros, 0.5)
                .map_err(|e| format!("config: rules[{i}] ({}): {e}", r.name))?;
            match program.execute(&ctx) {
                Ok(cel::Value::Bool(_)) => {}
                Ok(other) => {
                    return Err(format!(
                        "config: rules[{i}] ({}): `when` must yield true or false, not {other:?}",
                        r.name
                    ))
                }
                Err(e) => {
                    return Err(format!(
                    "config: rules[{i}] ({}): `when` fails: {e} (variables: tx, features, score)",
                    r.name
                ))
                }
            }
            let action = Decision::parse(&r.action).ok_or_else(|| {
                format!(
                    "config: rules[{i}].action: `{}` is not approve, review or decline",
                    r.action
                )
            })?;
            rules.push(Rule {
                name: r.name.clone(),
                program,
                action,
            });
        }
        Ok(Policy {
            review: cfg.thresholds.review,
            decline: cfg.thresholds.decline,
            rules,
            allow: ListSet::new(&cfg.lists.allow),
            block: ListSet::new(&cfg.lists.block),
        })
    }

    /// The threshold decision of a score.
    fn threshold(&self, score: f64) -> Decision {
        if score >= self.decline {
            Decision::Decline
        } else if score >= self.review {
            Decision::Review
        } else {
            Decision::Approve
        }
    }
}

fn sample_transaction() -> Transaction {
    let raw = fraud_core::transaction::RawTransaction {
        transaction_id: Some("rule-check".into()),
        timestamp: Some("2024-01-01T00:00:00Z".into()),
        amount: Some(fraud_core::transaction::Decimal::Text("1.00".into())),
        currency: Some("EUR".into()),
        card_token: Some(format!("tok_{}", "0".repeat(32))),
        ..Default::default()
    };
    let tk = Tokenizer::new(&[0u8; 32]).unwrap_or_else(|_| unreachable!("32-byte key"));
    Transaction::from_raw(raw, &tk).unwrap_or_else(|_| unreachable!("valid sample"))
}

/// Applies one decision-log record to entity state, as it was applied when it was written:
/// the memory state is rebuilt this way at start, so it always equals a replay of the log.
/// A record whose card was erased (its key destroyed) changes nothing; an `erase` record
/// whose key still exists (a stop between the record and the key's destruction) erases the
/// entity again and returns the key ref, to be destroyed once a snapshot holds the state.
pub fn replay_record(
    extractor: &Extractor,
    store: &dyn StateStore,
    rec: &super::decisions::Record,
    vault: Option<&super::vault::Vault>,
) -> Result<Option<String>, String> {
    let tx = || -> Result<Option<Transaction>, String> {
        if rec.data["transaction"]["card"]["token"].is_null() {
            return Ok(None);
        }
        serde_json::from_value(rec.data["transaction"].clone())
            .map(Some)
            .map_err(|e| format!("record {}: the recorded transaction: {e}", rec.seq))
    };
    match rec.kind.as_str() {
        "decision" => {
            if let Some(tx) = tx()? {
                store
                    .step(extractor, &tx)
                    .map_err(|e| format!("record {}: {e}", rec.seq))?;
            }
        }
        "erase" => {
            let kind = rec.data["entity"].as_str().unwrap_or("");
            // The id is not in the log: while its key exists, the entity is found among
            // those held by the hash the key is filed under.
            let key_ref = rec.data["key_ref"].as_str();
            let want = key_ref.and_then(|r| vault.and_then(|v| v.entity_of(r)));
            let entity = Entity::ALL.iter().copied().find(|e| e.name() == kind);
            if let (Some(want), Some(entity)) = (want, entity) {
                if let Some(memory) = store.as_memory() {
                    for (key, _) in memory.entities(entity) {
                        if super::vault::entity_hash(kind, &key) == want {
                            memory
                                .erase(entity, &key)
                                .map_err(|e| format!("record {}: {e}", rec.seq))?;
                        }
                    }
                }
                return Ok(key_ref.map(str::to_string));
            }
        }
        "migrate" => {
            let (from, to) = (rec.data["from"].as_str(), rec.data["to"].as_str());
            if let (Some(from), Some(to)) = (from, to) {
                store
                    .rename(Entity::Card, from, to)
                    .map_err(|e| format!("record {}: {e}", rec.seq))?;
            }
        }
        "label" => {
            if let Some(tx) = tx()? {
                let obs = extractor.observe(&tx);
                let event = LabelEvent {
                    id: obs.point.id,
                    ts: tx.timestamp_us,
                    is_fraud: rec.data["is_fraud"].as_bool().unwrap_or(false),
                    known_at: rec.data["known_at_us"].as_i64().unwrap_or(tx.timestamp_us),
                };
                store
                    .label(extractor, &obs, &event)
                    .map_err(|e| format!("record {}: {e}", rec.seq))?;
            }
        }
        _ => {}
    }
    Ok(None)
}

/// Whether the feature spec reads a field of the transaction that the decision log would
/// otherwise leave out (IP address, e-mail): then it is kept, encrypted under its entity's
/// key, so that replaying the log rebuilds the same state.
fn spec_reads(extractor: &Extractor, entity: Entity, field: Field) -> bool {
    let spec = extractor.spec();
    extractor.entities().any(|e| e == entity)
        || spec.first_seen.iter().any(|f| f.field == field)
        || spec.distinct.iter().any(|d| d.field == field)
}

/// What became of a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labelled {
    /// Applied and recorded.
    Applied,
    /// No decision of that transaction is recorded (or retention removed it).
    Unknown,
    /// The transaction's card was erased: its decision can no longer be labelled.
    Erased,
}

/// Everything scoring needs, shared by the HTTP workers.
pub struct Engine {
    /// The feature pipeline.
    pub extractor: Extractor,
    /// Entity state.
    pub store: Arc<dyn StateStore>,
    /// Card tokenization.
    pub tokenizer: Tokenizer,
    /// The deciding model.
    pub model: ArcSwap<LoadedModel>,
    /// The shadow model.
    pub shadow: ArcSwapOption<LoadedModel>,
    /// Thresholds, rules, lists.
    pub policy: Policy,
    /// The decision log.
    pub log: DecisionLog,
    /// Metrics.
    pub metrics: Metrics,
    /// Reasons per answer.
    pub reasons: usize,
    /// Score with stateless features when entity state is unreachable.
    pub degrade: bool,
    /// Where uploaded models are kept (`<data dir>/models`).
    pub models_dir: Option<std::path::PathBuf>,
    /// The latest transaction time seen (microseconds): the clock of retention.
    pub latest_us: std::sync::atomic::AtomicI64,
    /// Encrypts the state snapshots, when configured.
    pub sealer: Option<super::seal::Sealer>,
    /// Earlier tokenization keys, newest first (card history migrates from them).
    pub previous_keys: Vec<Tokenizer>,
    /// The insider watch over decision reads.
    pub watch: super::watch::Watch,
    /// The memory store, when that is the backend (for snapshots).
    pub memory: Option<Arc<fraud_core::features::MemoryStore>>,
    /// The review queue and the console's overview figures.
    pub cases: super::cases::Cases,
    /// Per-entity keys of the decision log's entity fields (erasure destroys one).
    pub vault: Option<Arc<super::vault::Vault>>,
    /// Where the memory state's snapshot is written (`<data dir>/state/state.bin`).
    pub snapshot_path: Option<std::path::PathBuf>,
    /// Whether the decision log keeps the IP address and e-mail (the spec reads them).
    keep_ip: bool,
    keep_email: bool,
    /// Held shared while a transaction updates state and the log; held exclusively for the
    /// instant a snapshot copies the state, so the copy matches a log position exactly.
    cut: std::sync::RwLock<()>,
    /// Transactions being scored (a second request with the same id waits its turn out).
    busy: super::sharded::Locked<()>,
}

/// Releases a transaction id from the busy set.
struct BusyGuard<'a> {
    engine: &'a Engine,
    id: &'a str,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.engine.busy.remove(self.id);
    }
}

fn top_reasons<'a>(names: &'a [String], row: &[f64], phi: &[f64], k: usize) -> Vec<Reason<'a>> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    let by_size = |&a: &usize, &b: &usize| phi[b].abs().total_cmp(&phi[a].abs()).then(a.cmp(&b));
    // The k largest, in order: no need to sort the rest.
    if k < order.len() {
        order.select_nth_unstable_by(k, by_size);
        order.truncate(k);
    }
    order.sort_by(by_size);
    order
        .into_iter()
        .take(k)
        .filter(|&i| phi[i] != 0.0)
        .map(|i| Reason {
            contribution: phi[i],
            feature: &names[i],
            value: row[i],
        })
        .collect()
}

/// One reason of an answer: a feature, its value (`null` when missing) and its
/// contribution to the margin.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Reason<'a> {
    contribution: f64,
    feature: &'a str,
    value: f64,
}

/// The answer to one scored transaction, as sent and (without `elapsed_us`, its card mask
/// sealed) as recorded. Fields in name order, as a JSON map holds them. A non-finite
/// number (a missing value) is written `null`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Answer<'a> {
    card_mask: Option<&'a str>,
    decision: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    degraded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    elapsed_us: Option<u64>,
    model_version: &'a str,
    reasons: &'a [Reason<'a>],
    risk_score: i64,
    rules_fired: &'a [String],
    score: f64,
    transaction_id: &'a str,
}

/// A model's verdict on one row.
struct Verdict<'a> {
    score: f64,
    reasons: Vec<Reason<'a>>,
    row: Vec<f64>,
}

fn judge<'a>(m: &'a LoadedModel, features: &[f64], k: usize) -> Result<Verdict<'a>, Problem> {
    let row = m.row(features);
    let margin = m
        .compiled
        .predict_margin(&row)
        .map_err(|e| Problem::internal(format!("model: {e}")))?;
    let score = m.compiled.probability(margin);
    let mut phi = vec![0.0; m.explainer.width()];
    let reasons = if k > 0 {
        m.explainer
            .contributions(&row, &mut phi)
            .map_err(|e| Problem::internal(format!("explanation: {e}")))?;
        top_reasons(&m.names, &row, &phi, k)
    } else {
        Vec::new()
    };
    Ok(Verdict {
        score,
        reasons,
        row,
    })
}

impl Engine {
    /// Builds the engine.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        extractor: Extractor,
        store: Arc<dyn StateStore>,
        tokenizer: Tokenizer,
        model: LoadedModel,
        shadow: Option<LoadedModel>,
        policy: Policy,
        log: DecisionLog,
        reasons: usize,
    ) -> Self {
        let keep_ip = spec_reads(&extractor, Entity::Ip, Field::Ip);
        let keep_email = spec_reads(&extractor, Entity::Email, Field::Email);
        let metrics = Metrics::default();
        metrics.model("active", Some(&model.version), model.drift.clone());
        if let Some(s) = &shadow {
            metrics.model("shadow", Some(&s.version), None);
        }
        Engine {
            extractor,
            store,
            tokenizer,
            model: ArcSwap::from_pointee(model),
            shadow: ArcSwapOption::from(shadow.map(Arc::new)),
            policy,
            log,
            metrics,
            reasons,
            degrade: false,
            models_dir: None,
            memory: None,
            previous_keys: Vec::new(),
            sealer: None,
            latest_us: std::sync::atomic::AtomicI64::new(i64::MIN),
            watch: super::watch::Watch::new(super::watch::WatchConfig::default()),
            cases: super::cases::Cases::default(),
            vault: None,
            snapshot_path: None,
            keep_ip,
            keep_email,
            cut: std::sync::RwLock::new(()),
            busy: Default::default(),
        }
    }

    /// Scores one transaction (a JSON body) for `caller`: the answer (JSON), as recorded.
    pub fn score(&self, bytes: &[u8], caller: &str) -> Result<String, Problem> {
        let started = std::time::Instant::now();
        let tx = Transaction::from_json(bytes, &self.tokenizer).map_err(Problem::invalid)?;
        // The same transaction id again: answer what was decided (idempotent retries).
        if !self.busy.insert_new(&tx.transaction_id, ()) {
            return Err(Problem::conflict(format!(
                "transaction `{}` is being scored by another request",
                tx.transaction_id
            )));
        }
        let _guard = BusyGuard {
            engine: self,
            id: &tx.transaction_id,
        };
        let request = serde_json::to_vec(&tx)
            .map(|b| self.tokenizer.fingerprint(&b))
            .map_err(|e| Problem::internal(format!("request: {e}")))?;
        if let Some(rec) = self
            .log
            .decision(&tx.transaction_id)
            .map_err(Problem::from_log)?
        {
            // A transaction id is an idempotency key scoped to the API key that used it: the
            // same key with the same body gets the recorded answer; anything else learns
            // nothing of it.
            let same_request = rec
                .data
                .get("request")
                .and_then(Value::as_str)
                .is_none_or(|r| r == request);
            if rec.key != caller || !same_request {
                return Err(Problem::conflict(format!(
                    "transaction id `{}` was used already by another request; a transaction id identifies one transaction (retries must send the same body with the same API key)",
                    tx.transaction_id
                )));
            }
            let mut answer = rec.data.get("response").cloned().unwrap_or(Value::Null);
            answer["replayed"] = json!(true);
            return Ok(answer.to_string());
        }
        let model = self.model.load_full();
        let cut = self
            .cut
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.migrate_card(bytes, &tx, caller)?;
        self.latest_us
            .fetch_max(tx.timestamp_us, std::sync::atomic::Ordering::Relaxed);
        let (features, degraded) = match self.store.step(&self.extractor, &tx) {
            Ok(f) => (f, false),
            Err(_) if self.degrade => {
                // Entity state unreachable: the stateless features only, flagged.
                let mut row = self.extractor.empty_row();
                self.extractor.stateless_into(&tx, &mut row);
                self.metrics.degraded();
                (row, true)
            }
            Err(e) => return Err(Problem::unavailable(format!("entity state: {e}"))),
        };
        let verdict = judge(&model, &features, self.reasons)?;
        let mut fired = Vec::new();
        let mut decision = self.policy.threshold(verdict.score);
        if let Some(list) = self.policy.block.hit(&tx) {
            fired.push(format!("block_list:{list}"));
            decision = Decision::Decline;
        } else if let Some(list) = self.policy.allow.hit(&tx) {
            fired.push(format!("allow_list:{list}"));
            decision = Decision::Approve;
        } else if !self.policy.rules.is_empty() {
            let ctx = cel_context(&tx, self.extractor.names(), &features, verdict.score)
                .map_err(Problem::internal)?;
            let mut approve_rule = false;
            let mut strictest = None::<Decision>;
            for r in &self.policy.rules {
                if matches!(r.program.execute(&ctx), Ok(cel::Value::Bool(true))) {
                    fired.push(r.name.clone());
                    if r.action == Decision::Approve {
                        approve_rule = true;
                    } else {
                        strictest = strictest.max(Some(r.action));
                    }
                }
            }
            decision = match strictest {
                Some(d) => decision.max(d),
                None if approve_rule => Decision::Approve,
                None => decision,
            };
        }
        let shadow = match self.shadow.load_full() {
            Some(s) => {
                let v = judge(&s, &features, 0)?;
                Some(json!({
                    "model_version": s.version,
                    "score": v.score,
                    "decision": self.policy.threshold(v.score).name(),
                }))
            }
            None => None,
        };
        let mut answer = Answer {
            card_mask: tx.card.mask.as_deref(),
            decision: decision.name(),
            degraded,
            elapsed_us: None,
            model_version: &model.version,
            reasons: &verdict.reasons,
            risk_score: (verdict.score * 100.0).round() as i64,
            rules_fired: &fired,
            score: verdict.score,
            transaction_id: &tx.transaction_id,
        };
        // The record: the minimised event (no IP address, no e-mail, unless the features
        // read them), its entity fields sealed under their entities' keys by the log's vault.
        let mut transaction =
            super::record::RecordTransaction::new(&tx, self.keep_ip, self.keep_email);
        let mut card_mask = tx.card.mask.clone();
        let used = match self.log.vault() {
            Some(v) => {
                super::record::protect(v, &mut transaction, &mut card_mask).map_err(|e| {
                    Problem::unavailable(format!("the decision log cannot be written: {e}"))
                })?
            }
            None => Default::default(),
        };
        let recorded = Answer {
            card_mask: card_mask.as_deref(),
            ..answer
        };
        let seq = self
            .log
            .append_protected(
                "decision",
                caller,
                &super::record::DecisionRecord {
                    response: &recorded,
                    shadow: &shadow,
                    transaction,
                    transaction_id: &tx.transaction_id,
                    features: super::decisions::Named {
                        names: self.extractor.names(),
                        values: &features,
                    },
                    request: &request,
                },
                Some(tx.transaction_id.clone()),
                used,
            )
            .map_err(Problem::from_log)?;
        drop(cut);
        self.cases.decision(
            seq,
            super::cases::hour_now(),
            super::cases::Decided {
                transaction_id: &tx.transaction_id,
                decision: decision.name(),
                score: verdict.score,
                timestamp_us: Some(tx.timestamp_us),
                mcc: tx.mcc,
            },
        );
        let elapsed = started.elapsed();
        answer.elapsed_us = Some(elapsed.as_micros() as u64);
        let body = serde_json::to_string(&answer)
            .map_err(|e| Problem::internal(format!("answer: {e}")))?;
        self.metrics.scored(
            elapsed.as_secs_f64(),
            decision.name(),
            verdict.score,
            &model.version,
            &verdict.row,
        );
        Ok(body)
    }

    /// Applies one label to the recorded decision of transaction `id`.
    pub fn label(
        &self,
        id: &str,
        is_fraud: bool,
        known_at_us: Option<i64>,
        caller: &str,
    ) -> Result<Labelled, Problem> {
        let Some(rec) = self.log.decision(id).map_err(Problem::from_log)? else {
            return Ok(Labelled::Unknown);
        };
        if rec.data["transaction"]["card"]["token"].is_null() {
            return Ok(Labelled::Erased);
        }
        let tx: Transaction = serde_json::from_value(rec.data["transaction"].clone())
            .map_err(|e| Problem::internal(format!("recorded transaction: {e}")))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        let known_at = known_at_us.unwrap_or(now as i64).max(tx.timestamp_us);
        let obs = self.extractor.observe(&tx);
        let event = LabelEvent {
            id: obs.point.id,
            ts: tx.timestamp_us,
            is_fraud,
            known_at,
        };
        let _cut = self
            .cut
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.store
            .label(&self.extractor, &obs, &event)
            .map_err(|e| Problem::unavailable(format!("entity state: {e}")))?;
        self.log
            .append(
                "label",
                caller,
                &json!({
                    "transaction_id": id,
                    "is_fraud": is_fraud,
                    "known_at_us": known_at,
                    "transaction": rec.data["transaction"],
                }),
            )
            .map_err(Problem::from_log)?;
        self.cases.close(id);
        self.metrics.label(is_fraud);
        Ok(Labelled::Applied)
    }

    /// Makes `model` active or the shadow (`None` removes the shadow). `staged` is the
    /// uploaded artifact's file, written and fsynced under the models directory: it is
    /// renamed to `<version>.fgb` there before the record that names it, so a restart always
    /// finds the model the log says is in use.
    pub fn install(
        &self,
        model: Option<LoadedModel>,
        staged: Option<&std::path::Path>,
        shadow: bool,
        caller: &str,
    ) -> Result<(), Problem> {
        let file = match (&model, staged, &self.models_dir) {
            (Some(m), Some(from), Some(dir)) => {
                let name = format!("{}.fgb", m.version);
                std::fs::rename(from, dir.join(&name))
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        fraud_core::features::durable::sync_dir(dir).map_err(|e| e.to_string())
                    })
                    .map_err(|e| Problem::unavailable(format!("cannot store the model: {e}")))?;
                Some(format!("models/{name}"))
            }
            _ => None,
        };
        let what = json!({
            "role": if shadow { "shadow" } else { "active" },
            "model_version": model.as_ref().map(|m| m.version.clone()),
            "origin": model.as_ref().map(|m| m.origin.clone()),
            "file": file,
        });
        self.log
            .append("model", caller, &what)
            .map_err(Problem::from_log)?;
        self.swap(model, shadow);
        Ok(())
    }

    /// Key rotation: when the card number arrives and its token under the current key has no
    /// history, history held under its token for an earlier key is moved to it (and the move
    /// is recorded, so a replay of the log repeats it).
    fn migrate_card(&self, bytes: &[u8], tx: &Transaction, caller: &str) -> Result<(), Problem> {
        if self.previous_keys.is_empty() {
            return Ok(());
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return Ok(());
        };
        let Some(Ok(card)) = v
            .get("card_number")
            .and_then(Value::as_str)
            .map(fraud_core::pii::CardNumber::parse)
        else {
            return Ok(());
        };
        let entity = fraud_core::features::Entity::Card;
        let unavailable = |e: fraud_core::features::StoreError| {
            Problem::unavailable(format!("entity state: {e}"))
        };
        if self
            .store
            .get(entity, &tx.card.token)
            .map_err(unavailable)?
            .is_some()
        {
            return Ok(());
        }
        for old in &self.previous_keys {
            let from = old.token(&card);
            if self
                .store
                .rename(entity, &from, &tx.card.token)
                .map_err(unavailable)?
            {
                self.log
                    .append(
                        "migrate",
                        caller,
                        &json!({"entity": "card", "from": from, "to": tx.card.token}),
                    )
                    .map_err(Problem::from_log)?;
                break;
            }
        }
        Ok(())
    }

    /// Erases one entity (GDPR): its state is removed; an `erase` record is written (naming
    /// the entity's key by its random ref, not the id); the memory state is snapshotted so
    /// that no restart needs the records before it; then the entity's key is destroyed, which
    /// leaves every earlier record unable to name it.
    pub fn erase(&self, kind: &str, id: &str, caller: &str) -> Result<bool, Problem> {
        let Some(entity) = Entity::ALL.iter().copied().find(|e| e.name() == kind) else {
            return Err(Problem::bad_field(
                "kind",
                format!("`{kind}` is not an entity (card, customer, merchant, terminal, device, ip, email)"),
            ));
        };
        let key_ref = self.vault.as_ref().and_then(|v| v.key_ref(kind, id));
        let held = {
            let _cut = self
                .cut
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let held = self
                .store
                .erase(entity, id)
                .map_err(|e| Problem::unavailable(format!("entity state: {e}")))?;
            self.log
                .append(
                    "erase",
                    caller,
                    &json!({"entity": kind, "key_ref": key_ref, "held": held}),
                )
                .map_err(Problem::from_log)?;
            held
        };
        let logged = key_ref.is_some();
        if let Some(r) = key_ref {
            self.shred(&[r]).map_err(Problem::internal)?;
        }
        Ok(held || logged)
    }

    /// Destroys entity keys once the memory state no longer needs the records they open: a
    /// snapshot is written first (the state is then never rebuilt from before it).
    pub fn shred(&self, refs: &[String]) -> Result<usize, String> {
        let Some(vault) = &self.vault else {
            return Ok(0);
        };
        if let Some(path) = &self.snapshot_path {
            self.snapshot(path)?;
        }
        vault.destroy(refs).map_err(|e| e.to_string())
    }

    /// Retention: removes decision-log segments whose records are all older than
    /// `period_s` (wall clock), once a state snapshot holds them, and the entity keys only
    /// they used. Returns (segments, keys) removed.
    pub fn retain(&self, period_s: u64) -> Result<(usize, usize), String> {
        let before = time::OffsetDateTime::now_utc()
            - time::Duration::seconds(i64::try_from(period_s).unwrap_or(i64::MAX / 2));
        let through = match &self.snapshot_path {
            Some(path) if self.memory.is_some() => self.snapshot(path)?.unwrap_or(0),
            _ => self.log.records(),
        };
        let removed = self
            .log
            .remove_before(before, through, "retention")
            .map_err(|e| e.to_string())?;
        let keys = match (&self.vault, removed.through) {
            (Some(v), t) if t > 0 => v.drop_unused(t).map_err(|e| e.to_string())?,
            _ => 0,
        };
        Ok((removed.segments, keys))
    }

    /// Retention: drops the entities idle for longer than the spec's retention before the
    /// latest transaction time (their state could change no feature any more). Returns how
    /// many were dropped.
    pub fn evict_idle(&self) -> usize {
        let now = self.latest_us.load(std::sync::atomic::Ordering::Relaxed);
        match (&self.memory, now) {
            (Some(m), now) if now > i64::MIN => m.evict_idle(&self.extractor, now),
            _ => 0,
        }
    }

    /// Writes a snapshot of the memory state to `path`, tagged with the number of log
    /// records it contains; returns that number (None without a memory store).
    pub fn snapshot(&self, path: &std::path::Path) -> Result<Option<u64>, String> {
        let Some(memory) = &self.memory else {
            return Ok(None);
        };
        let (copy, records) = {
            let _all = self
                .cut
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (memory.copy(), self.log.records())
        };
        let bytes = copy
            .to_bytes(&self.extractor, records)
            .map_err(|e| e.to_string())?;
        let bytes = match &self.sealer {
            Some(s) => s.seal(&bytes, b"state")?,
            None => bytes,
        };
        fraud_core::features::durable::write_atomic(path, &bytes).map_err(|e| e.to_string())?;
        Ok(Some(records))
    }

    /// Makes `model` active or the shadow, without recording it (start-up restores what the
    /// log recorded).
    pub fn swap(&self, model: Option<LoadedModel>, shadow: bool) {
        if shadow {
            self.metrics
                .model("shadow", model.as_ref().map(|m| m.version.as_str()), None);
            self.shadow.store(model.map(Arc::new));
        } else if let Some(m) = model {
            self.metrics
                .model("active", Some(&m.version), m.drift.clone());
            self.model.store(Arc::new(m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn categorical_columns_are_scored_by_value() {
        use fraud_core::model::{Feature, FeatureKind};
        let extractor = Extractor::new(fraud_core::features::FeatureSpec::default_spec())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut artifact =
            Artifact::from_bytes(super::super::DEMO_MODEL).unwrap_or_else(|e| panic!("{e}"));
        let at = artifact
            .ensemble
            .features
            .iter()
            .position(|f| f.name == "mcc")
            .unwrap_or_else(|| panic!("the demo model reads mcc"));
        artifact.ensemble.features[at] = Feature {
            name: "mcc".into(),
            kind: FeatureKind::Categorical,
        };
        artifact.metadata.categories.insert(
            "mcc".into(),
            vec![json!("5999"), json!(5411), json!("7995")],
        );
        let m = LoadedModel::new(
            &artifact,
            &extractor,
            "test",
            &fraud_core::model::ModelLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mcc = extractor
            .names()
            .iter()
            .position(|n| n == "mcc")
            .unwrap_or_else(|| panic!("the spec produces mcc"));
        let mut row = vec![0.0; extractor.names().len()];
        for (value, code) in [(5411.0, 1.0), (5999.0, 0.0), (7995.0, 2.0)] {
            row[mcc] = value;
            assert_eq!(m.row(&row)[at], code);
        }
        for unseen in [4829.0, f64::NAN] {
            row[mcc] = unseen;
            assert!(m.row(&row)[at].is_nan());
        }
    }

    fn policy(when: &str) -> Result<Policy, String> {
        let cfg = Config {
            rules: vec![crate::server::config::RuleConfig {
                name: "r".into(),
                when: when.to_string(),
                action: "review".into(),
            }],
            ..Config::default()
        };
        let names: Vec<String> = vec!["card_txn_count_1h".into(), "log_amount".into()];
        Policy::new(&cfg, &names)
    }

    #[test]
    fn reasons_are_the_largest_contributions_in_order() {
        let names: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
        let row = [1.0, f64::NAN, 3.0, 4.0, 5.0, 6.0];
        // The bias column last, never a reason; ties by feature order; zeros left out.
        let phi = [0.1, -0.5, 0.5, 0.0, -0.05, 0.2, 9.0];
        let picked = |k: usize| -> Vec<(String, Value)> {
            top_reasons(&names, &row, &phi[..6], k)
                .into_iter()
                .map(|r| {
                    (
                        r.feature.to_string(),
                        json!(r).get("value").cloned().unwrap_or_default(),
                    )
                })
                .collect()
        };
        let order = ["f1", "f2", "f5", "f0", "f4"];
        for k in 0..=7 {
            let got = picked(k);
            let want: Vec<&str> = order.iter().take(k).copied().collect();
            assert_eq!(
                got.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
                want
            );
        }
        assert_eq!(picked(1)[0].1, Value::Null);
        assert_eq!(picked(2)[1].1, json!(3.0));
    }

    #[test]
    fn rules_are_checked_when_loaded() {
        assert!(policy("score > 0.5 && features.card_txn_count_1h >= 3.0").is_ok());
        assert!(policy("tx.amount > 100.0 && tx.channel == 'ecommerce'").is_ok());
        for bad in [
            "score >",
            "features.nope > 1.0",
            "score",
            "tx.amount + 1",
            "",
        ] {
            let e = policy(bad).err().unwrap_or_default();
            assert!(e.contains("rules[0]"), "{bad}: {e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Arbitrary rule text never panics: it loads or is refused with a message.
        #[test]
        fn arbitrary_rules_never_panic(s in "\\PC{0,80}") {
            let _ = policy(&s);
        }

        /// Rule-shaped text: operators, names and literals in any order.
        #[test]
        fn rule_shaped_text_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
            "score", "features.card_txn_count_1h", "tx.amount", "tx.channel", ">", "<=", "==", "&&",
            "||", "!", "(", ")", "0.5", "3", "'x'", "size(", "in", "[", "]", ",", "null", "true",
            ".", "1e308", "-", "/", "0",
        ]), 0..16)) {
            let _ = policy(&parts.join(" "));
        }
    }
}
