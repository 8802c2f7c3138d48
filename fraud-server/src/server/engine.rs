//! The scoring pipeline of one transaction: validate and protect the card, check the allow
//! and block lists, compute the features (and record the transaction in entity state), score
//! with the active model, explain with TreeSHAP, evaluate the rules, decide, and write the
//! decision to the log before answering. A shadow model, when loaded, is scored and recorded
//! beside the active one and never decides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use fraud_core::decision::{DecisionError, ScoringModel};
use fraud_core::features::{Entity, Extractor, Field, LabelEvent, StateStore};
use fraud_core::model::Artifact;
use fraud_core::pii::Tokenizer;
use fraud_core::transaction::Transaction;
use serde_json::{json, Value};

use super::decisions::{Begin, Beginning, Event, Journal, Kind};
use super::metrics::{Drift, Metrics};
use super::problem::Problem;

/// A model ready to score (the decision library's [`ScoringModel`]), with where it came from
/// and its drift counters.
pub struct LoadedModel {
    scoring: ScoringModel,
    /// Where it came from (`embedded demo model` or a path).
    pub origin: String,
    /// Drift counters against the training reference (None without a reference).
    pub drift: Option<Drift>,
}

impl std::ops::Deref for LoadedModel {
    type Target = ScoringModel;
    fn deref(&self) -> &ScoringModel {
        &self.scoring
    }
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
        let scoring =
            ScoringModel::new(artifact, extractor.names(), limits).map_err(|e| match e {
                fraud_core::ModelError::Invalid(m) => m,
                other => other.to_string(),
            })?;
        let names = scoring.names();
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
        let drift = refs.map(|r| Drift::new(&scoring.version, r));
        Ok(LoadedModel {
            scoring,
            origin: origin.to_string(),
            drift,
        })
    }
}

/// Applies one decision-log record to entity state, as it was applied when it was written:
/// the memory state is rebuilt this way at start, so it always equals a replay of the log.
/// A record whose card was erased (its key destroyed) changes nothing; an `erase` record
/// whose key still exists (a stop between the record and the key's destruction) erases the
/// entity again and returns the key ref, to be destroyed once a snapshot holds the state.
pub fn replay_record(
    extractor: &Extractor,
    state: &StateBackend,
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
    match Kind::parse(&rec.kind) {
        Some(Kind::Decision) => {
            if let Some(tx) = tx()? {
                state
                    .store()
                    .step(extractor, &tx)
                    .map_err(|e| format!("record {}: {e}", rec.seq))?;
            }
        }
        Some(Kind::Erase) => {
            let kind = rec.data["entity"].as_str().unwrap_or("");
            // The id is not in the log: while its key exists, the entity is found among
            // those held by the hash the key is filed under.
            let key_ref = rec.data["key_ref"].as_str();
            let want = key_ref.and_then(|r| vault.and_then(|v| v.entity_of(r)));
            let entity = Entity::ALL.iter().copied().find(|e| e.name() == kind);
            if let (Some(want), Some(entity)) = (want, entity) {
                if let Some(memory) = state.memory() {
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
        Some(Kind::Migrate) => {
            let (from, to) = (rec.data["from"].as_str(), rec.data["to"].as_str());
            if let (Some(from), Some(to)) = (from, to) {
                state
                    .store()
                    .rename(Entity::Card, from, to)
                    .map_err(|e| format!("record {}: {e}", rec.seq))?;
            }
        }
        Some(Kind::Label) => {
            if let Some(tx) = tx()? {
                let obs = extractor.observe(&tx);
                let event = LabelEvent {
                    id: obs.point.id,
                    ts: tx.timestamp_us,
                    is_fraud: rec.data["is_fraud"].as_bool().unwrap_or(false),
                    known_at: rec.data["known_at_us"].as_i64().unwrap_or(tx.timestamp_us),
                };
                state
                    .store()
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

/// Who reads a decision record.
#[derive(Debug, Clone, Copy)]
pub enum Reader<'a> {
    /// An API key, by name.
    Api {
        /// The key's name.
        key: &'a str,
    },
    /// A review-console user.
    Console {
        /// The user's name.
        user: &'a str,
    },
}

impl Reader<'_> {
    /// The name its reads are watched and recorded under (`console:<user>` for a user).
    fn key(&self) -> String {
        match self {
            Reader::Api { key } => (*key).to_string(),
            Reader::Console { user } => format!("console:{user}"),
        }
    }
}

/// What a read of a decision record found.
#[derive(Debug)]
pub enum DecisionRead {
    /// The reader is past its usual rate: refused for `retry_after` seconds.
    Throttled {
        /// Seconds until reads resume.
        retry_after: u64,
        /// Reads in the window.
        reads: u64,
        /// The limit now.
        limit: u64,
    },
    /// No such record (or not one the reader may open).
    Missing,
    /// The record, opened.
    Found(Box<super::decisions::Record>),
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
    pub state: StateBackend,
    /// Card tokenization.
    pub tokenizer: Tokenizer,
    /// The deciding model.
    pub model: ArcSwap<LoadedModel>,
    /// The shadow model.
    pub shadow: ArcSwapOption<LoadedModel>,
    /// Thresholds, rules, lists: the live version, the versions before it, the drafts.
    pub policies: super::policies::Policies,
    /// Where declines, reviews, closed cases and published policies are posted.
    pub webhooks: super::webhooks::Webhooks,
    /// The share of cards the shadow model decides for (champion / challenger); 0: it
    /// never decides.
    pub shadow_traffic: f64,
    /// The champion's and the challenger's scores of labelled transactions.
    pub comparison: super::compare::Comparison,
    /// The decision log.
    pub log: Box<dyn Journal>,
    /// The id of the extractor's feature set, kept by the log (what records name).
    feature_set: String,
    /// The names of other feature sets records were written with, as read from the log.
    feature_sets: Mutex<HashMap<String, Arc<Vec<String>>>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Reasons per answer.
    pub reasons: usize,
    /// Score with stateless features when entity state is unreachable.
    pub(crate) degrade: bool,
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
    /// The review queue and the console's overview figures.
    pub cases: super::cases::Cases,
    /// Per-entity keys of the decision log's entity fields (erasure destroys one).
    vault: Option<Arc<super::vault::Vault>>,
    /// Where the memory state's snapshot is written (`<data dir>/state/state.bin`).
    snapshot_path: Option<std::path::PathBuf>,
    /// Whether the decision log keeps the IP address and e-mail (the spec reads them).
    keep_ip: bool,
    keep_email: bool,
    /// Held shared while a transaction updates state and the log; held exclusively for the
    /// instant a snapshot copies the state, so the copy matches a log position exactly.
    cut: std::sync::RwLock<()>,
    /// Transactions being scored (a second request with the same id waits its turn out).
    busy: super::sharded::Locked<()>,
    /// The decision log is a store shared by replicas (models are published to it).
    shared_store: bool,
}

/// Where the service keeps entity state: in this process (rebuilt from the decision log at
/// start, snapshotted) or in Redis (shared by replicas). One named choice: nothing asks a
/// store what it is.
#[derive(Clone)]
pub enum StateBackend {
    /// In memory.
    Memory(Arc<fraud_core::features::MemoryStore>),
    /// In Redis.
    Redis(Arc<fraud_core::features::redis::RedisStore>),
}

impl StateBackend {
    /// The store, whichever it is.
    pub fn store(&self) -> &dyn StateStore {
        match self {
            StateBackend::Memory(m) => m.as_ref(),
            StateBackend::Redis(r) => r.as_ref(),
        }
    }

    /// The memory store, when that is the backend (snapshots, entity counts, erasure replay).
    pub fn memory(&self) -> Option<&Arc<fraud_core::features::MemoryStore>> {
        match self {
            StateBackend::Memory(m) => Some(m),
            StateBackend::Redis(_) => None,
        }
    }
}

/// Releases a transaction id from the busy set (and its claim, when it holds one): whatever
/// ends the scoring, an error or a request dropped while its claim is awaited.
struct BusyGuard<E: std::ops::Deref<Target = Engine>> {
    engine: E,
    id: String,
    /// Claimed in a shared store and not decided here (yet): released on drop.
    claimed: bool,
}

impl<E: std::ops::Deref<Target = Engine>> Drop for BusyGuard<E> {
    fn drop(&mut self) {
        if self.claimed {
            self.engine.log.release(&self.id);
        }
        self.engine.busy.remove(&self.id);
    }
}

/// A transaction whose scoring has begun ([`Engine::start`]): parsed, its id kept from this
/// process's other requests until it is dropped, waiting for its claim.
pub struct Scoring<E: std::ops::Deref<Target = Engine>> {
    guard: BusyGuard<E>,
    tx: Transaction,
    /// The request's fingerprint (a retry must send the same).
    request: String,
    started: std::time::Instant,
}

impl<E: std::ops::Deref<Target = Engine>> Scoring<E> {
    /// The transaction's id.
    pub fn transaction_id(&self) -> &str {
        &self.tx.transaction_id
    }
}

/// Builds an [`Engine`] (see [`Engine::builder`]).
#[derive(Default)]
pub struct EngineBuilder {
    extractor: Option<Extractor>,
    state: Option<StateBackend>,
    tokenizer: Option<Tokenizer>,
    model: Option<LoadedModel>,
    shadow: Option<LoadedModel>,
    policies: Option<super::policies::Policies>,
    webhooks: Option<super::webhooks::Webhooks>,
    shadow_traffic: f64,
    log: Option<Box<dyn Journal>>,
    reasons: usize,
    degrade: bool,
    models_dir: Option<std::path::PathBuf>,
    sealer: Option<super::seal::Sealer>,
    vault: Option<Arc<super::vault::Vault>>,
    cases: Option<super::cases::Cases>,
    snapshot_path: Option<std::path::PathBuf>,
    watch: Option<super::watch::Watch>,
    previous_keys: Vec<Tokenizer>,
    shared_store: bool,
}

/// A setter of [`EngineBuilder`] for an optional part.
macro_rules! set {
    ($(#[$doc:meta] $name:ident: $t:ty => $field:ident = $v:expr;)*) => {
        $(#[$doc] pub fn $name(mut self, value: $t) -> Self {
            let v = value;
            self.$field = $v(v);
            self
        })*
    };
}

impl EngineBuilder {
    set! {
        /// The feature pipeline (required).
        extractor: Extractor => extractor = Some;
        /// Entity state (required).
        state: StateBackend => state = Some;
        /// Card tokenization (required).
        tokenizer: Tokenizer => tokenizer = Some;
        /// The deciding model (required).
        model: LoadedModel => model = Some;
        /// The shadow model.
        shadow: Option<LoadedModel> => shadow = std::convert::identity;
        /// Thresholds, rules, lists, versioned (required).
        policies: super::policies::Policies => policies = Some;
        /// Webhooks (none by default).
        webhooks: super::webhooks::Webhooks => webhooks = Some;
        /// The share of cards the shadow decides for.
        shadow_traffic: f64 => shadow_traffic = std::convert::identity;
        /// The decision log (required).
        log: Box<dyn Journal> => log = Some;
        /// Reasons per answer.
        reasons: usize => reasons = std::convert::identity;
        /// Score with the stateless features when entity state is unreachable.
        degrade: bool => degrade = std::convert::identity;
        /// Where uploaded models are kept.
        models_dir: std::path::PathBuf => models_dir = Some;
        /// Encrypts the state snapshots.
        sealer: Option<super::seal::Sealer> => sealer = std::convert::identity;
        /// Per-entity keys of the decision log's entity fields.
        vault: Arc<super::vault::Vault> => vault = Some;
        /// The same, when there may be none (a shared store).
        vault_opt: Option<Arc<super::vault::Vault>> => vault = std::convert::identity;
        /// The decision log is a store shared by replicas.
        shared_store: bool => shared_store = std::convert::identity;
        /// The review queue and the console's overview figures.
        cases: super::cases::Cases => cases = Some;
        /// Where the memory state's snapshot is written.
        snapshot_path: std::path::PathBuf => snapshot_path = Some;
        /// The insider watch over decision reads.
        watch: super::watch::Watch => watch = Some;
        /// Earlier tokenization keys, newest first (card history migrates from them).
        previous_keys: Vec<Tokenizer> => previous_keys = std::convert::identity;
    }

    /// The engine; an error names a required part that is missing.
    pub fn build(self) -> Result<Engine, String> {
        let missing = |what: &str| format!("engine: no {what} given");
        let extractor = self.extractor.ok_or_else(|| missing("extractor"))?;
        let model = self.model.ok_or_else(|| missing("model"))?;
        let keep_ip = spec_reads(&extractor, Entity::Ip, Field::Ip);
        let keep_email = spec_reads(&extractor, Entity::Email, Field::Email);
        let metrics = Metrics::default();
        metrics.model("active", Some(&model.version), model.drift.clone());
        if let Some(s) = &self.shadow {
            metrics.model("shadow", Some(&s.version), None);
        }
        let log = self.log.ok_or_else(|| missing("log"))?;
        // Kept before any record names it.
        let feature_set = log
            .keep_feature_set(extractor.names())
            .map_err(|e| format!("the decision log cannot keep the feature names: {e}"))?;
        Ok(Engine {
            state: self.state.ok_or_else(|| missing("state"))?,
            tokenizer: self.tokenizer.ok_or_else(|| missing("tokenizer"))?,
            policies: self.policies.ok_or_else(|| missing("policy"))?,
            webhooks: self
                .webhooks
                .unwrap_or_else(super::webhooks::Webhooks::none),
            shadow_traffic: self.shadow_traffic,
            comparison: Default::default(),
            log,
            feature_set,
            feature_sets: Default::default(),
            extractor,
            model: ArcSwap::from_pointee(model),
            shadow: ArcSwapOption::from(self.shadow.map(Arc::new)),
            metrics,
            reasons: self.reasons,
            degrade: self.degrade,
            models_dir: self.models_dir,
            previous_keys: self.previous_keys,
            sealer: self.sealer,
            latest_us: std::sync::atomic::AtomicI64::new(i64::MIN),
            watch: self
                .watch
                .unwrap_or_else(|| super::watch::Watch::new(super::watch::WatchConfig::default())),
            cases: self.cases.unwrap_or_default(),
            vault: self.vault,
            snapshot_path: self.snapshot_path,
            keep_ip,
            keep_email,
            cut: std::sync::RwLock::new(()),
            busy: Default::default(),
            shared_store: self.shared_store,
        })
    }
}

/// Whether a card token falls in the first `share` of cards (by SHA-256 of the token: a card
/// always falls on the same side).
pub fn in_share(token: &str, share: f64) -> bool {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(token.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    (u64::from_be_bytes(b) as f64 / 18_446_744_073_709_551_616.0) < share
}

/// A decision that failed on a valid transaction: the service's fault, never the caller's.
fn decision_problem(e: DecisionError) -> Problem {
    match e {
        DecisionError::Invalid(e) => Problem::invalid(e),
        DecisionError::State(m) => Problem::unavailable(format!("entity state: {m}")),
        other => Problem::internal(other.to_string()),
    }
}

impl Engine {
    /// A builder: the required parts (extractor, store, tokenizer, model, policy, log) and
    /// the optional ones, set once, before the engine is shared.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Scores one transaction (a JSON body) for `caller`: the answer (JSON), as recorded,
    /// and the seq of its record, which must be durable ([`durable`](Self::durable)) before
    /// the answer is sent.
    pub fn score(&self, bytes: &[u8], caller: &str) -> Result<(String, u64), Problem> {
        let scoring = Engine::start(self, bytes)?;
        let begun = self.log.begin(scoring.transaction_id());
        self.finish(scoring, begun, bytes, caller)
    }

    /// Whether the claim of a transaction waits on another process (the decision store is
    /// shared by replicas): then it is awaited ([`begin_async`](Self::begin_async)) rather
    /// than asked for on a thread ([`score`](Self::score)).
    pub fn claims_elsewhere(&self) -> bool {
        self.log.claims_elsewhere()
    }

    /// The claim of a transaction as a future, holding no thread while it waits when
    /// [`claims_elsewhere`](Self::claims_elsewhere).
    pub fn begin_async<'a>(&'a self, transaction_id: &'a str) -> Beginning<'a> {
        self.log.begin_async(transaction_id)
    }

    /// A transaction's scoring begun: parsed, and its id kept from this process's other
    /// requests (409 when one is scoring it).
    pub fn start<E: std::ops::Deref<Target = Engine>>(
        engine: E,
        bytes: &[u8],
    ) -> Result<Scoring<E>, Problem> {
        let started = std::time::Instant::now();
        let tx = Transaction::from_json(bytes, &engine.tokenizer).map_err(Problem::invalid)?;
        // The same transaction id again: answer what was decided (idempotent retries).
        if !engine.busy.insert_new(&tx.transaction_id, ()) {
            return Err(Problem::conflict(format!(
                "transaction `{}` is being scored by another request",
                tx.transaction_id
            )));
        }
        let request = serde_json::to_vec(&tx)
            .map(|b| engine.tokenizer.fingerprint(&b))
            .map_err(|e| Problem::internal(format!("request: {e}")));
        let guard = BusyGuard {
            id: tx.transaction_id.clone(),
            engine,
            claimed: false,
        };
        Ok(Scoring {
            request: request?,
            guard,
            tx,
            started,
        })
    }

    /// Scores a transaction whose scoring began ([`start`](Self::start)) from `bytes`,
    /// given what its claim found.
    pub fn finish<E: std::ops::Deref<Target = Engine>>(
        &self,
        scoring: Scoring<E>,
        begun: Result<Begin, super::decisions::LogError>,
        bytes: &[u8],
        caller: &str,
    ) -> Result<(String, u64), Problem> {
        let Scoring {
            mut guard,
            tx,
            request,
            started,
        } = scoring;
        // Decided before, on any replica? Across replicas (a shared store) one scores it,
        // the others answer 409 meanwhile.
        let found = match begun.map_err(Problem::from_log)? {
            Begin::Decided(rec) => Some(rec),
            Begin::Busy => {
                return Err(Problem::conflict(format!(
                    "transaction `{}` is being scored by another replica",
                    tx.transaction_id
                )))
            }
            Begin::Claimed => {
                guard.claimed = true;
                None
            }
        };
        if let Some(rec) = found {
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
            // The first answer may still be waiting for its commit: so does this one.
            return Ok((answer.to_string(), self.log.settle_seq(&rec)));
        }
        // Champion / challenger: with a traffic share, the shadow decides for the cards whose
        // token falls in it (a card always sees the same model), the active one is recorded
        // beside it.
        let (model, other, arm) = {
            let active = self.model.load_full();
            match self.shadow.load_full() {
                Some(s) if self.shadow_traffic > 0.0 => {
                    if in_share(&tx.card.token, self.shadow_traffic) {
                        (s, Some(active), Some("challenger"))
                    } else {
                        (active, Some(s), Some("champion"))
                    }
                }
                other => (active, other, None),
            }
        };
        let live = self.policies.live();
        let cut = self
            .cut
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.migrate_card(bytes, &tx, caller)?;
        self.latest_us
            .fetch_max(tx.timestamp_us, std::sync::atomic::Ordering::Relaxed);
        let (features, degraded) = match self.state.store().step(&self.extractor, &tx) {
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
        // The decision library's one pipeline: score, reasons, policy, the answer's fields.
        let (mut answer, row) = fraud_core::decision::decide(
            &model,
            &live.policy,
            &tx,
            self.extractor.names(),
            &features,
            self.reasons,
        )
        .map_err(decision_problem)?;
        answer.degraded = degraded;
        let shadow = match &other {
            Some(s) => {
                let v = s.judge(&features, 0).map_err(decision_problem)?;
                Some(json!({
                    "model_version": s.version,
                    "score": v.score,
                    "decision": live.policy.threshold(v.score).name(),
                }))
            }
            None => None,
        };
        if let Some(arm) = arm {
            self.metrics.arm_decision(arm, answer.decision.name());
            self.comparison.decided(arm, answer.decision as usize);
        }
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
        // The record holds the sealed mask; the answer sent shows the mask itself.
        let shown = std::mem::replace(&mut answer.card_mask, card_mask);
        let event = match answer.decision.name() {
            "decline" => "decision.declined",
            "review" => "review.opened",
            _ => "",
        };
        let ordered = self.webhooks.ordered(event);
        let seq = self
            .log
            .append_decision(
                caller,
                &super::record::DecisionRecord {
                    response: &answer,
                    rules_shadow: &answer.rules_shadow,
                    shadow: &shadow,
                    transaction,
                    transaction_id: &tx.transaction_id,
                    features: super::decisions::Values(&features),
                    feature_set: &self.feature_set,
                    request: &request,
                    policy_version: live.version.version,
                    arm,
                },
                used,
            )
            .map_err(Problem::from_log)?;
        if ordered.is_some() {
            let data = json!({
                "transaction_id": tx.transaction_id,
                "policy_version": live.version.version,
                "response": &answer,
            });
            self.webhooks
                .offer(seq, &super::webhooks::now(), "decision", caller, &data);
        }
        drop(ordered);
        // Its commit drops the claim.
        guard.claimed = false;
        answer.card_mask = shown;
        drop(cut);
        self.cases.decision(
            seq,
            super::cases::hour_now(),
            super::cases::Decided {
                transaction_id: &tx.transaction_id,
                decision: answer.decision.name(),
                score: answer.score,
                timestamp_us: Some(tx.timestamp_us),
                mcc: tx.mcc,
                replica: None,
                decided_us: super::cases::micros_now(),
            },
        );
        let elapsed = started.elapsed();
        answer.elapsed_us = Some(elapsed.as_micros() as u64);
        let body = serde_json::to_string(&answer)
            .map_err(|e| Problem::internal(format!("answer: {e}")))?;
        self.metrics.shadow_fired(&answer.rules_shadow);
        self.metrics.scored(
            elapsed.as_secs_f64(),
            answer.decision.name(),
            answer.score,
            &model.version,
            &row,
        );
        let score = answer.score;
        drop(guard);
        // Kept for the policy drafts' backtests on the recent log.
        self.policies.keep(tx, features, score);
        Ok((body, seq))
    }

    /// A label of a decision made while the shadow took a share of traffic: both models'
    /// scores go to the comparison.
    fn compare(&self, data: &Value, is_fraud: bool) {
        let (Some(arm), Some(decided), Some(other)) = (
            data["arm"].as_str(),
            data["response"]["score"].as_f64(),
            data["shadow"]["score"].as_f64(),
        ) else {
            return;
        };
        let (champion, challenger) = if arm == "challenger" {
            (other, decided)
        } else {
            (decided, other)
        };
        self.comparison.add(champion, challenger, is_fraud);
    }

    /// Approves policy draft `id` for `by` (see [`Policies::approve`]), announced to the
    /// webhooks that want `policy.published`.
    ///
    /// [`Policies::approve`]: super::policies::Policies::approve
    pub fn approve_policy(&self, by: &str, id: &str) -> Result<super::policies::Version, Problem> {
        let ordered = self.webhooks.ordered("policy.published");
        let (v, seq, data) = self.policies.approve(&*self.log, by, id)?;
        if ordered.is_some() {
            self.webhooks
                .offer(seq, &v.published_at, "policy", by, &data);
        }
        Ok(v)
    }

    /// Records a review-console case action (`fraud`, `legit`, `escalate`) by `by`, taken
    /// into the review queue and announced to the webhooks that want `case.closed`.
    pub fn record_case(
        &self,
        by: &str,
        transaction_id: &str,
        action: &str,
    ) -> Result<u64, Problem> {
        let ordered = self.webhooks.ordered("case.closed");
        let seq = self
            .log
            .append(
                by,
                &Event::Case {
                    transaction_id,
                    action,
                },
            )
            .map_err(Problem::from_log)?;
        let data = json!({"transaction_id": transaction_id, "action": action});
        if ordered.is_some() {
            self.webhooks
                .offer(seq, &super::webhooks::now(), "case", by, &data);
        }
        drop(ordered);
        self.cases.record(None, "case", seq, "", &data);
        Ok(seq)
    }

    /// Resolves once record `seq` is durable (group commit: many answers share one fsync,
    /// and none holds a thread while it waits).
    pub async fn durable(&self, seq: u64) -> Result<(), Problem> {
        self.log.durable(seq).await.map_err(Problem::from_log)
    }

    /// Names a decision record's feature values again ([`super::feature_sets`]): by the
    /// extractor's names when the record was written with them, else by the set the log
    /// kept (read once, then remembered). Values of a set the log does not hold stay a list.
    pub fn name_features(&self, data: &mut Value) -> Result<(), super::decisions::LogError> {
        let Some(id) = super::feature_sets::record_set(data).map(str::to_string) else {
            return Ok(());
        };
        if id == self.feature_set {
            super::feature_sets::name_features(data, self.extractor.names());
            return Ok(());
        }
        let known = self
            .feature_sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned();
        let names = match known {
            Some(n) => n,
            None => {
                let Some(n) = self.log.feature_set(&id)? else {
                    return Ok(());
                };
                let n = Arc::new(n);
                self.feature_sets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id, n.clone());
                n
            }
        };
        super::feature_sets::name_features(data, &names);
        Ok(())
    }

    /// Reads the recorded decision of transaction `id` for `reader`, the one way both the API
    /// and the console read one. Reads are watched per reader: past its usual rate the read
    /// is refused (and the first refusal of a window recorded as an alert). A record found
    /// and taken by `accept` is an access to card data, recorded before it is returned.
    pub fn read_decision(
        &self,
        reader: Reader<'_>,
        id: &str,
        accept: impl Fn(&super::decisions::Record) -> bool,
    ) -> Result<DecisionRead, Problem> {
        let who = reader.key();
        if let super::watch::Verdict::Throttle {
            retry_after,
            reads,
            limit,
            alert,
        } = self.watch.read(&who, std::time::Instant::now())
        {
            self.metrics.insider(alert);
            if alert {
                let reason = match reader {
                    Reader::Api { .. } => "decision reads far above this key's usual rate",
                    Reader::Console { .. } => "console case views far above this user's usual rate",
                };
                self.log
                    .append(
                        &who,
                        &Event::Alert {
                            reason,
                            reads,
                            limit,
                        },
                    )
                    .map_err(Problem::from_log)?;
            }
            return Ok(DecisionRead::Throttled {
                retry_after,
                reads,
                limit,
            });
        }
        let Some(mut rec) = self.log.decision(id).map_err(Problem::from_log)? else {
            return Ok(DecisionRead::Missing);
        };
        self.name_features(&mut rec.data)
            .map_err(Problem::from_log)?;
        if !accept(&rec) {
            return Ok(DecisionRead::Missing);
        }
        let via = match reader {
            Reader::Api { .. } => None,
            Reader::Console { .. } => Some("console"),
        };
        self.log
            .append(
                &who,
                &Event::Access {
                    transaction_id: id,
                    via,
                },
            )
            .map_err(Problem::from_log)?;
        Ok(DecisionRead::Found(Box::new(rec)))
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
        self.state
            .store()
            .label(&self.extractor, &obs, &event)
            .map_err(|e| Problem::unavailable(format!("entity state: {e}")))?;
        self.log
            .append(
                caller,
                &Event::Label {
                    transaction_id: id,
                    is_fraud,
                    known_at_us: known_at,
                    transaction: &rec.data["transaction"],
                },
            )
            .map_err(Problem::from_log)?;
        self.cases.close(id);
        self.policies.label(id, is_fraud);
        self.compare(&rec.data, is_fraud);
        self.metrics.label(is_fraud);
        let shadow = super::record::strings(&rec.data["rules_shadow"]);
        self.metrics.shadow_labelled(&shadow, is_fraud);
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
                    .and_then(|()| fraud_core::files::sync_dir(dir).map_err(|e| e.to_string()))
                    .map_err(|e| Problem::unavailable(format!("cannot store the model: {e}")))?;
                Some(format!("models/{name}"))
            }
            _ => None,
        };
        let what = Event::Model {
            role: if shadow { "shadow" } else { "active" },
            model_version: model.as_ref().map(|m| m.version.as_str()),
            origin: model.as_ref().map(|m| m.origin.as_str()),
            file: file.as_deref(),
        };
        self.log.append(caller, &what).map_err(Problem::from_log)?;
        let version = model.as_ref().map(|m| m.version.clone());
        self.swap(model, shadow);
        // Replicas sharing the store follow (a replica's own files: nothing to publish). If
        // the store cannot take it, this replica goes back to the registry's within a second.
        if self.shared_store {
            let role = if shadow { "shadow" } else { "active" };
            let published = match (&version, &file, &self.models_dir) {
                (Some(v), Some(_), Some(dir)) => {
                    let bytes = std::fs::read(dir.join(format!("{v}.fgb")))
                        .map_err(|e| Problem::unavailable(format!("cannot read the model: {e}")))?;
                    self.log.publish_model(role, Some((v, &bytes)))
                }
                (None, _, _) => self.log.publish_model(role, None),
                _ => Ok(()),
            };
            published.map_err(Problem::from_log)?;
        }
        Ok(())
    }

    /// Follows the models a shared store assigns: a role whose model differs from the one
    /// in use here gets it (checked against `limits`, recorded in this replica's chain as
    /// from the registry). Returns how many roles changed.
    pub fn follow_models(&self, limits: &fraud_core::model::ModelLimits) -> Result<usize, String> {
        let mut changed = 0;
        for (role, version) in self.log.assigned_models().map_err(|e| e.to_string())? {
            let shadow = match role.as_str() {
                "active" => false,
                "shadow" => true,
                _ => continue,
            };
            let current = if shadow {
                self.shadow.load_full().map(|m| m.version.clone())
            } else {
                Some(self.model.load().version.clone())
            };
            if current == version || (!shadow && version.is_none()) {
                continue;
            }
            let loaded = match &version {
                None => None,
                Some(v) => {
                    let bytes = self
                        .log
                        .model_artifact(v)
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("model {v} is assigned but not stored"))?;
                    let artifact = Artifact::from_bytes(&bytes)
                        .map_err(|e| format!("model {v} from the registry: {e}"))?;
                    Some(
                        LoadedModel::new(&artifact, &self.extractor, "model registry", limits)
                            .map_err(|e| format!("model {v} from the registry: {e}"))?,
                    )
                }
            };
            self.log
                .append(
                    "system",
                    &Event::Model {
                        role: if shadow { "shadow" } else { "active" },
                        model_version: version.as_deref(),
                        origin: Some("model registry"),
                        file: None,
                    },
                )
                .map_err(|e| e.to_string())?;
            self.swap(loaded, shadow);
            changed += 1;
        }
        Ok(changed)
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
            .state
            .store()
            .get(entity, &tx.card.token)
            .map_err(unavailable)?
            .is_some()
        {
            return Ok(());
        }
        for old in &self.previous_keys {
            let from = old.token(&card);
            if self
                .state
                .store()
                .rename(entity, &from, &tx.card.token)
                .map_err(unavailable)?
            {
                self.log
                    .append(
                        caller,
                        &Event::Migrate {
                            entity: "card",
                            from: &from,
                            to: &tx.card.token,
                        },
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
        // The entity's keys: its own, and with a store shared by replicas every replica's.
        let key_refs = match &self.vault {
            Some(v) => v
                .key_refs(kind, id)
                .map_err(|e| Problem::unavailable(e.to_string()))?,
            None => Vec::new(),
        };
        let key_ref = key_refs.first().cloned();
        let all_refs = if self.shared_store {
            key_refs.as_slice()
        } else {
            &[]
        };
        let held = {
            let _cut = self
                .cut
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let held = self
                .state
                .store()
                .erase(entity, id)
                .map_err(|e| Problem::unavailable(format!("entity state: {e}")))?;
            self.log
                .append(
                    caller,
                    &Event::Erase {
                        entity: kind,
                        key_ref: key_ref.as_deref(),
                        key_refs: all_refs,
                        held,
                    },
                )
                .map_err(Problem::from_log)?;
            held
        };
        let logged = key_ref.is_some();
        if !key_refs.is_empty() {
            self.shred(&key_refs).map_err(Problem::internal)?;
        }
        Ok(held || logged)
    }

    /// Takes in the records the other replicas sharing the store wrote since the last call:
    /// the review queue's decisions, labels and escalations, their erasures (the key each
    /// destroyed is forgotten here too) and the policies they published. The count.
    pub fn follow_records(&self) -> Result<usize, super::decisions::LogError> {
        self.cases.follow(
            &*self.log,
            |key_ref| {
                if let Some(v) = &self.vault {
                    v.evict(key_ref);
                }
            },
            |rec| {
                self.policies.follow(rec);
            },
        )
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
    /// they used (with the PostgreSQL store: this replica's records older than that). Returns
    /// what was removed and the keys dropped.
    pub fn retain(&self, period_s: u64) -> Result<(super::decisions::Removed, usize), String> {
        let before = time::OffsetDateTime::now_utc()
            - time::Duration::seconds(i64::try_from(period_s).unwrap_or(i64::MAX / 2));
        let through = match &self.snapshot_path {
            Some(path) if self.state.memory().is_some() => self.snapshot(path)?.unwrap_or(0),
            _ => self.log.records(),
        };
        let removed = self
            .log
            .remove_before(before, through, "retention")
            .map_err(|e| e.to_string())?;
        let keys = match self
            .log
            .drop_unused_keys(before)
            .map_err(|e| e.to_string())?
        {
            Some(n) => n,
            None => match (&self.vault, removed.through) {
                (Some(v), t) if t > 0 => v.drop_unused(t).map_err(|e| e.to_string())?,
                _ => 0,
            },
        };
        Ok((removed, keys))
    }

    /// Retention: drops the entities idle for longer than the spec's retention before the
    /// latest transaction time (their state could change no feature any more). Returns how
    /// many were dropped.
    pub fn evict_idle(&self) -> usize {
        let now = self.latest_us.load(std::sync::atomic::Ordering::Relaxed);
        match (self.state.memory(), now) {
            (Some(m), now) if now > i64::MIN => m.evict_idle(&self.extractor, now),
            _ => 0,
        }
    }

    /// Writes a snapshot of the memory state to `path`, tagged with the number of log
    /// records it contains; returns that number (None without a memory store).
    pub fn snapshot(&self, path: &std::path::Path) -> Result<Option<u64>, String> {
        let Some(memory) = self.state.memory() else {
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
        fraud_core::files::write_atomic(path, &bytes).map_err(|e| e.to_string())?;
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
}
