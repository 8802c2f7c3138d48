//! The decision: from a transaction to approve / review / decline, the one pipeline that the
//! service, the command line, the Python package and embedding services all call.
//!
//! - [`Policy`]: thresholds on the score, CEL rules and allow / block lists, built from the
//!   TOML sections the service reads (`[thresholds]`, `[[rules]]`, `[lists]`) or from code.
//! - [`ScoringModel`]: a compiled model with its TreeSHAP explainer and the mapping from the
//!   feature spec's row to the model's columns (categorical columns by value).
//! - [`decide`]: a feature row, a model and a policy give a [`Verdict`]; the precedence is
//!   block list, then allow list, then rules (the strictest acting rule wins over the
//!   threshold; an `approve` rule approves only when no other rule acts), then thresholds.
//! - [`Verdict`]: decision, score, risk score, reasons, rules fired, model version and card
//!   mask; it serializes to exactly the fields of the service's `/v1/score` answer.
//! - [`Scorer`]: all of it with a feature extractor and an entity-state store, from a JSON
//!   transaction to its verdict (built with [`Scorer::builder`]).
//!
//! The crate root's example goes from a transaction to a verdict.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::features::{Extractor, FeatureSpec, MemoryStore, StateStore};
use crate::model::{Artifact, CompiledModel, Explainer, ModelLimits};
use crate::pii::Tokenizer;
use crate::transaction::Transaction;

/// Approve, review or decline, in increasing strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
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

    /// The decision of a name (`approve`, `review`, `decline`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Decision::Approve),
            "review" => Some(Decision::Review),
            "decline" => Some(Decision::Decline),
            _ => None,
        }
    }
}

/// Decision thresholds on the score (probability of fraud).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Scores at or above: review.
    pub review: f64,
    /// Scores at or above: decline.
    pub decline: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            review: 0.3,
            decline: 0.7,
        }
    }
}

/// A rule: a CEL expression over `tx`, `features` and `score`, and what it decides.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name reported in `rules_fired`.
    pub name: String,
    /// CEL expression that must yield a boolean, e.g.
    /// `score > 0.7 && features.card_txn_count_1h > 5`.
    pub when: String,
    /// `approve`, `review` or `decline`.
    pub action: Decision,
    /// `live` (the default: it acts) or `shadow` (evaluated and recorded in the decision
    /// record's `rules_shadow`, counted in the metrics, never acting).
    #[serde(default)]
    pub mode: RuleMode,
}

/// Whether a rule acts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    /// It acts.
    #[default]
    Live,
    /// Evaluated and recorded, never acting.
    Shadow,
}

/// Values of one list, by entity.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListConfig {
    /// Card tokens (`tok_...`).
    pub card_tokens: Vec<String>,
    /// Customer ids.
    pub customers: Vec<String>,
    /// Device ids.
    pub devices: Vec<String>,
    /// IP addresses.
    pub ips: Vec<String>,
    /// E-mail addresses.
    pub emails: Vec<String>,
}

/// Allow and block lists.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lists {
    /// Always approved (unless blocked too: block wins).
    pub allow: ListConfig,
    /// Always declined.
    pub block: ListConfig,
}

/// The policy's settings: the `[thresholds]`, `[[rules]]` and `[lists]` sections of the
/// service's configuration file (its other sections are ignored here).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// Decision thresholds.
    pub thresholds: Thresholds,
    /// Rules, in order.
    pub rules: Vec<RuleConfig>,
    /// Allow and block lists.
    pub lists: Lists,
}

impl PolicyConfig {
    /// Reads the policy sections of a TOML text (a service configuration file, or a file with
    /// only these sections), checking them as the service does.
    pub fn from_toml(text: &str) -> Result<PolicyConfig, PolicyError> {
        let cfg: PolicyConfig =
            toml::from_str(text).map_err(|e| PolicyError::Toml(e.message().to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks the thresholds (probabilities, review not above decline) and the rule names.
    pub fn check(&self) -> Result<(), PolicyError> {
        let t = &self.thresholds;
        for (name, v) in [
            ("thresholds.review", t.review),
            ("thresholds.decline", t.decline),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(PolicyError::Setting {
                    setting: name.into(),
                    reason: "must be a probability between 0 and 1".into(),
                });
            }
        }
        if t.review > t.decline {
            return Err(PolicyError::Setting {
                setting: "thresholds.review".into(),
                reason: "must not exceed thresholds.decline".into(),
            });
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.name.trim().is_empty() {
                return Err(PolicyError::Setting {
                    setting: format!("rules[{i}].name"),
                    reason: "is empty".into(),
                });
            }
        }
        Ok(())
    }
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The TOML text does not parse or has unknown or mistyped settings.
    #[error("policy: {0}")]
    Toml(String),
    /// A setting is out of range.
    #[error("{setting}: {reason}")]
    Setting {
        /// The setting's path, e.g. `thresholds.review`.
        setting: String,
        /// What is wrong.
        reason: String,
    },
    /// A rule does not parse, names an unknown variable or does not yield a boolean.
    #[error("rules[{index}] ({name}): {reason}")]
    Rule {
        /// The rule's place in the list.
        index: usize,
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why a transaction could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    /// The transaction is invalid.
    #[error(transparent)]
    Invalid(#[from] crate::transaction::TransactionError),
    /// Entity state could not be read or written.
    #[error("entity state: {0}")]
    State(String),
    /// The model or its explanation failed on this row.
    #[error("{0}")]
    Model(String),
    /// A rule's variables could not be built.
    #[error("rules: {0}")]
    Rules(String),
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
        for (k, v, name) in keys {
            if v.is_some_and(|v| self.values.contains(&(k, v.to_string()))) {
                return Some(name);
            }
        }
        None
    }
}

/// A compiled rule.
#[cfg_attr(not(feature = "rules"), allow(dead_code))]
struct Rule {
    name: String,
    #[cfg(feature = "rules")]
    program: cel::Program,
    /// The same rule compiled natively, when it is in the subset ([`crate::rulecode`]).
    #[cfg(feature = "rules")]
    native: Option<crate::rulecode::Native>,
    action: Decision,
    shadow: bool,
}

/// What a policy decided, and which shadow rules would have acted.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The decision.
    pub decision: Decision,
    /// The lists and live rules that acted, in order.
    pub fired: Vec<String>,
    /// The shadow rules whose condition held, in order (they never act).
    pub shadow: Vec<String>,
}

/// Thresholds, rules and lists, ready to decide.
pub struct Policy {
    thresholds: Thresholds,
    rules: Vec<Rule>,
    allow: ListSet,
    block: ListSet,
    /// What the rules' variables are made from.
    #[cfg(feature = "rules")]
    cel: CelSetup,
}

/// Built once per policy: CEL's standard environment (building it costs far more than
/// running a rule) and the features the rules name (`None`: all of them).
#[cfg(feature = "rules")]
#[derive(Clone)]
pub(crate) struct CelSetup {
    pub(crate) env: Arc<cel::Env>,
    pub(crate) features: Option<Vec<usize>>,
}

#[cfg(feature = "rules")]
impl Default for CelSetup {
    fn default() -> Self {
        CelSetup {
            env: Arc::new(cel::Env::stdlib()),
            features: Some(Vec::new()),
        }
    }
}

/// The features the rules name as `features.<name>` (indices into `names`), or `None` when a
/// rule uses `features` any other way (then every feature is given to the rules).
#[cfg(feature = "rules")]
fn named_features(rules: &[RuleConfig], names: &[String]) -> Option<Vec<usize>> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut used = Vec::new();
    for r in rules {
        let text = r.when.as_str();
        let mut from = 0;
        while let Some(at) = text[from..].find("features").map(|i| from + i) {
            from = at + "features".len();
            if text[..at].chars().next_back().is_some_and(word) {
                continue;
            }
            let rest = text[from..].trim_start();
            let name: String = match rest.strip_prefix('.') {
                Some(after) => after
                    .trim_start()
                    .chars()
                    .take_while(|&c| word(c))
                    .collect(),
                None if rest.chars().next().is_some_and(word) => continue,
                None => return None,
            };
            match names.iter().position(|n| *n == name) {
                Some(i) if !used.contains(&i) => used.push(i),
                Some(_) => {}
                // Unknown: the rule's check names it (the map lacks it either way).
                None => {}
            }
        }
    }
    Some(used)
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("thresholds", &self.thresholds)
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Policy {
    /// The service's default policy: review at 0.3, decline at 0.7, no rules, no lists.
    fn default() -> Self {
        Policy {
            thresholds: Thresholds::default(),
            rules: Vec::new(),
            allow: ListSet::default(),
            block: ListSet::default(),
            #[cfg(feature = "rules")]
            cel: CelSetup::default(),
        }
    }
}

/// The CEL variables of one transaction.
#[cfg(feature = "rules")]
pub(crate) fn cel_context(
    setup: &CelSetup,
    tx: &Transaction,
    names: &[String],
    features: &[f64],
    score: f64,
) -> Result<cel::Context<'static, 'static>, String> {
    let mut ctx = cel::Context::with_env(Arc::clone(&setup.env));
    let mut f = HashMap::with_capacity(setup.features.as_ref().map_or(names.len(), Vec::len));
    // Missing features are NaN; CEL sees them as NaN too (every comparison false).
    match &setup.features {
        Some(used) => {
            for &i in used {
                if let (Some(n), Some(v)) = (names.get(i), features.get(i)) {
                    f.insert(n.clone(), *v);
                }
            }
        }
        None => {
            for (n, v) in names.iter().zip(features) {
                f.insert(n.clone(), *v);
            }
        }
    }
    let channel = tx
        .channel
        .and_then(|c| serde_json::to_value(c).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let text = |v: &Option<String>| cel::Value::from(v.clone().unwrap_or_default());
    let t: HashMap<&str, cel::Value> = HashMap::from([
        (
            "transaction_id",
            cel::Value::from(tx.transaction_id.clone()),
        ),
        ("amount", cel::Value::Float(tx.amount.as_f64())),
        ("currency", cel::Value::from(tx.currency.clone())),
        ("card_token", cel::Value::from(tx.card.token.clone())),
        ("customer_id", text(&tx.customer_id)),
        ("merchant_id", text(&tx.merchant_id)),
        ("mcc", cel::Value::Int(tx.mcc.map(i64::from).unwrap_or(-1))),
        ("terminal_id", text(&tx.terminal_id)),
        ("channel", cel::Value::from(channel)),
        ("card_country", text(&tx.card_country)),
        ("merchant_country", text(&tx.merchant_country)),
        ("ip_country", text(&tx.ip_country)),
        ("device_id", text(&tx.device_id)),
    ]);
    ctx.add_variable("features", f).map_err(|e| e.to_string())?;
    ctx.add_variable_from_value("tx", t);
    ctx.add_variable("score", score)
        .map_err(|e| e.to_string())?;
    Ok(ctx)
}

/// A valid transaction to try rules on when they are loaded.
#[cfg(feature = "rules")]
pub(crate) fn sample_transaction() -> Result<Transaction, String> {
    let raw = crate::transaction::RawTransaction {
        transaction_id: Some("rule-check".into()),
        timestamp: Some("2024-01-01T00:00:00Z".into()),
        amount: Some(crate::transaction::Decimal::Text("1.00".into())),
        currency: Some("EUR".into()),
        card_token: Some(format!("tok_{}", "0".repeat(32))),
        ..Default::default()
    };
    let tk = Tokenizer::new(&[0u8; 32]).map_err(|e| e.to_string())?;
    Transaction::from_raw(raw, &tk).map_err(|e| e.to_string())
}

/// Compiles and checks each rule of `cfg` on a sample transaction.
#[cfg(feature = "rules")]
fn compile_rules(
    cfg: &PolicyConfig,
    feature_names: &[String],
    setup: &CelSetup,
) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::with_capacity(cfg.rules.len());
    let sample = sample_transaction().map_err(|reason| PolicyError::Setting {
        setting: "rules".into(),
        reason,
    })?;
    let zeros = vec![0.0; feature_names.len()];
    for (index, r) in cfg.rules.iter().enumerate() {
        let fail = |reason: String| PolicyError::Rule {
            index,
            name: r.name.clone(),
            reason,
        };
        let program = cel::Program::compile(&r.when)
            .map_err(|e| fail(format!("`when` does not parse: {e}")))?;
        let ctx = cel_context(setup, &sample, feature_names, &zeros, 0.5).map_err(fail)?;
        match program.execute(&ctx) {
            Ok(cel::Value::Bool(_)) => {}
            Ok(other) => {
                return Err(fail(format!(
                    "`when` must yield true or false, not {other:?}"
                )))
            }
            Err(e) => {
                return Err(fail(format!(
                    "`when` fails: {e} (variables: tx, features, score)"
                )))
            }
        }
        let native = crate::rulecode::compile(program.expression(), feature_names);
        rules.push(Rule {
            name: r.name.clone(),
            native,
            program,
            action: r.action,
            shadow: r.mode == RuleMode::Shadow,
        });
    }
    Ok(rules)
}

/// Without CEL, a policy with rules is refused, naming the first.
#[cfg(not(feature = "rules"))]
fn compile_rules(cfg: &PolicyConfig, _: &[String], _: &()) -> Result<Vec<Rule>, PolicyError> {
    match cfg.rules.first() {
        Some(r) => Err(PolicyError::Rule {
            index: 0,
            name: r.name.clone(),
            reason: "rules need fraud-core's `rules` feature (CEL)".into(),
        }),
        None => Ok(Vec::new()),
    }
}

impl Policy {
    /// Compiles and checks the rules of `cfg` against the feature names: a rule that does not
    /// parse, names an unknown feature or does not yield a boolean is refused, naming it.
    pub fn new(cfg: &PolicyConfig, feature_names: &[String]) -> Result<Self, PolicyError> {
        cfg.check()?;
        #[cfg(feature = "rules")]
        let setup = CelSetup {
            env: Arc::new(cel::Env::stdlib()),
            features: named_features(&cfg.rules, feature_names),
        };
        #[cfg(not(feature = "rules"))]
        let setup = ();
        let rules = compile_rules(cfg, feature_names, &setup)?;
        Ok(Policy {
            thresholds: cfg.thresholds.clone(),
            rules,
            allow: ListSet::new(&cfg.lists.allow),
            block: ListSet::new(&cfg.lists.block),
            #[cfg(feature = "rules")]
            cel: setup,
        })
    }

    /// The policy of a TOML text's `[thresholds]`, `[[rules]]` and `[lists]` sections.
    pub fn from_toml(text: &str, feature_names: &[String]) -> Result<Self, PolicyError> {
        Policy::new(&PolicyConfig::from_toml(text)?, feature_names)
    }

    /// The live rules' names, in order.
    pub fn rule_names(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| !r.shadow)
            .map(|r| r.name.clone())
            .collect()
    }

    /// The thresholds.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// The threshold decision of a score.
    pub fn threshold(&self, score: f64) -> Decision {
        if score >= self.thresholds.decline {
            Decision::Decline
        } else if score >= self.thresholds.review {
            Decision::Review
        } else {
            Decision::Approve
        }
    }

    /// The decision on `tx` scored `score`, with the feature row `features` (named `names`),
    /// and what acted: `block_list:<entity>`, `allow_list:<entity>` or the names of the
    /// rules that fired, in order. Precedence: block list, allow list, then rules over the
    /// threshold (the strictest acting rule raises the threshold's decision; an `approve`
    /// rule approves only when no other rule fired), then the threshold alone.
    pub fn decide(
        &self,
        tx: &Transaction,
        names: &[String],
        features: &[f64],
        score: f64,
    ) -> Result<(Decision, Vec<String>), DecisionError> {
        let d = self.decide_all(tx, names, features, score)?;
        Ok((d.decision, d.fired))
    }

    /// [`Policy::decide`], with the shadow rules that fired (`mode = "shadow"`: evaluated on
    /// every transaction, lists or not, never acting).
    pub fn decide_all(
        &self,
        tx: &Transaction,
        names: &[String],
        features: &[f64],
        score: f64,
    ) -> Result<Decided, DecisionError> {
        let mut fired = Vec::new();
        #[cfg_attr(not(feature = "rules"), allow(unused_mut))]
        let mut shadow = Vec::new();
        let mut decision = self.threshold(score);
        let listed = if let Some(list) = self.block.hit(tx) {
            fired.push(format!("block_list:{list}"));
            decision = Decision::Decline;
            true
        } else if let Some(list) = self.allow.hit(tx) {
            fired.push(format!("allow_list:{list}"));
            decision = Decision::Approve;
            true
        } else {
            false
        };
        let look = !listed || self.rules.iter().any(|r| r.shadow);
        if !self.rules.is_empty() && look {
            #[cfg(feature = "rules")]
            {
                // The CEL context is built only for a rule outside the native subset.
                let mut ctx = None;
                let mut approve_rule = false;
                let mut strictest = None::<Decision>;
                for r in &self.rules {
                    // A list decided: only the shadow rules are still looked at.
                    if listed && !r.shadow {
                        continue;
                    }
                    let fires = match &r.native {
                        Some(n) => n.fires(tx, names, features, score),
                        None => {
                            if ctx.is_none() {
                                ctx = Some(
                                    cel_context(&self.cel, tx, names, features, score)
                                        .map_err(DecisionError::Rules)?,
                                );
                            }
                            ctx.as_ref().is_some_and(|c| {
                                matches!(r.program.execute(c), Ok(cel::Value::Bool(true)))
                            })
                        }
                    };
                    if !fires {
                        continue;
                    }
                    if r.shadow {
                        shadow.push(r.name.clone());
                        continue;
                    }
                    fired.push(r.name.clone());
                    if r.action == Decision::Approve {
                        approve_rule = true;
                    } else {
                        strictest = strictest.max(Some(r.action));
                    }
                }
                if !listed {
                    decision = match strictest {
                        Some(d) => decision.max(d),
                        None if approve_rule => Decision::Approve,
                        None => decision,
                    };
                }
            }
            // Without CEL no rule is ever compiled (`compile_rules` refuses them).
            #[cfg(not(feature = "rules"))]
            let _ = (names, features, listed);
        }
        Ok(Decided {
            decision,
            fired,
            shadow,
        })
    }

    /// The rules: name, action and whether it is a shadow rule, in order.
    pub fn rules(&self) -> Vec<(String, Decision, bool)> {
        self.rules
            .iter()
            .map(|r| (r.name.clone(), r.action, r.shadow))
            .collect()
    }
}

/// A model ready to score: compiled, explainable, its columns mapped to the feature row.
pub struct ScoringModel {
    /// First 16 hex digits of the artifact's SHA-256.
    pub version: String,
    compiled: CompiledModel,
    explainer: Explainer,
    /// Model column `i` is feature `columns[i]` of the extractor's row.
    columns: Vec<usize>,
    /// For a categorical column with stored categories: the feature's value -> code table
    /// (the extractor's value scored by value; unseen: missing).
    codes: Vec<Option<HashMap<String, f64>>>,
    names: Vec<String>,
}

impl std::fmt::Debug for ScoringModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoringModel")
            .field("version", &self.version)
            .field("features", &self.names.len())
            .finish_non_exhaustive()
    }
}

/// A model's score of one row, its reasons and the row as the model saw it.
#[derive(Debug, Clone)]
pub struct Judged {
    /// Probability of fraud.
    pub score: f64,
    /// The largest contributions, largest first.
    pub reasons: Vec<Reason>,
    /// The model's columns (categorical values as codes).
    pub row: Vec<f64>,
}

impl ScoringModel {
    /// Checks the model against `limits` (its cost per request) and that the feature row
    /// named `produced` holds every feature of it, compiles it and prepares its explainer.
    pub fn new(
        artifact: &Artifact,
        produced: &[String],
        limits: &ModelLimits,
    ) -> Result<Self, crate::ModelError> {
        artifact.ensemble.check_limits(limits)?;
        let names: Vec<String> = artifact
            .ensemble
            .feature_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let columns = names
            .iter()
            .map(|n| {
                produced.iter().position(|p| p == n).ok_or_else(|| {
                    crate::ModelError::Invalid(format!(
                        "the model needs feature `{n}`, which the feature spec does not produce"
                    ))
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let mut tables = artifact.metadata.category_codes();
        let codes = names.iter().map(|n| tables.remove(n)).collect();
        let compiled = CompiledModel::new(&artifact.ensemble)?;
        let explainer = Explainer::new(&artifact.ensemble)?;
        let version: String = artifact
            .fingerprint()
            .map_err(|e| crate::ModelError::Invalid(e.to_string()))?
            .chars()
            .take(16)
            .collect();
        Ok(ScoringModel {
            version,
            compiled,
            explainer,
            columns,
            codes,
            names,
        })
    }

    /// The model's feature names, in column order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The model's row of a feature row.
    pub fn row(&self, features: &[f64]) -> Vec<f64> {
        self.columns
            .iter()
            .zip(&self.codes)
            .map(|(&c, table)| match table {
                None => features[c],
                Some(_) if features[c].is_nan() => f64::NAN,
                Some(t) => t
                    .get(&crate::model::float_key(features[c]))
                    .copied()
                    .unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// Scores many feature rows (`flat`: row after row, `width` features each, as
    /// [`crate::features::replay_flat`] gives them) in parallel on the current rayon pool:
    /// the same scores as [`ScoringModel::judge`], without the reasons.
    pub fn scores(&self, flat: &[f64], width: usize) -> Result<Vec<f64>, DecisionError> {
        use rayon::prelude::*;
        // The model's rows a block at a time (memory stays a block's, whatever the history).
        const BLOCK: usize = 1 << 16;
        let n = flat.len().checked_div(width).unwrap_or(0);
        let cols = self.columns.len();
        let mut out = vec![0.0; n];
        let mut rows = vec![0.0; BLOCK.min(n) * cols];
        for (block, scores) in out.chunks_mut(BLOCK).enumerate() {
            let rows = &mut rows[..scores.len() * cols];
            let from = block * BLOCK * width;
            let features = &flat[from..from + scores.len() * width];
            if cols > 0 {
                rows.par_chunks_mut(cols)
                    .zip(features.par_chunks(width.max(1)))
                    .for_each(|(out, features)| out.copy_from_slice(&self.row(features)));
            }
            self.compiled
                .predict_proba_batch(rows, scores)
                .map_err(|e| DecisionError::Model(format!("model: {e}")))?;
        }
        Ok(out)
    }

    /// Scores a feature row, with its `k` largest TreeSHAP contributions as reasons.
    pub fn judge(&self, features: &[f64], k: usize) -> Result<Judged, DecisionError> {
        let row = self.row(features);
        let (margin, reasons) = if k > 0 {
            // The explanation computes every split's direction: the margin comes with it, the
            // same bits as the compiled model's, without walking the trees again.
            let mut phi = vec![0.0; self.explainer.width()];
            let margin = self
                .explainer
                .contributions_and_margin(&row, &mut phi)
                .map_err(|e| DecisionError::Model(format!("explanation: {e}")))?;
            (margin, top_reasons(&self.names, &row, &phi, k))
        } else {
            let margin = self
                .compiled
                .predict_margin(&row)
                .map_err(|e| DecisionError::Model(format!("model: {e}")))?;
            (margin, Vec::new())
        };
        let score = self.compiled.probability(margin);
        Ok(Judged {
            score,
            reasons,
            row,
        })
    }
}

/// The `k` largest contributions (by size; ties in feature order; zeros left out).
pub fn top_reasons(names: &[String], row: &[f64], phi: &[f64], k: usize) -> Vec<Reason> {
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
            feature: names[i].clone(),
            value: row[i],
        })
        .collect()
}

/// `null` read back as a missing value (NaN), as the answer writes it.
fn nan_for_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One reason of a verdict: a feature, its value (`null` when missing) and its contribution
/// to the margin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reason {
    /// Its contribution to the margin (TreeSHAP).
    pub contribution: f64,
    /// The feature's name.
    pub feature: String,
    /// The feature's value (NaN when missing; written `null`).
    #[serde(deserialize_with = "nan_for_null")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>, required))]
    pub value: f64,
}

/// The answer to one transaction: the fields of the service's `/v1/score` answer, in name
/// order (as a JSON map holds them). A non-finite number (a missing value) is written `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Verdict {
    /// First 6 and last 4 digits of the card number (none for a tokenized card).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub card_mask: Option<String>,
    /// Approve, review or decline.
    pub decision: Decision,
    /// Scored with the stateless features only (entity state was unreachable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
    /// Time taken to score, in microseconds (absent from recorded and replayed answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub elapsed_us: Option<u64>,
    /// The deciding model's version.
    pub model_version: String,
    /// The largest contributions to the score, largest first.
    pub reasons: Vec<Reason>,
    /// The score on 0..100.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub risk_score: i64,
    /// The lists and rules that acted.
    pub rules_fired: Vec<String>,
    /// The shadow rules whose condition held: for the decision record and the metrics, not
    /// part of the answer.
    #[serde(skip)]
    pub rules_shadow: Vec<String>,
    /// Probability of fraud.
    pub score: f64,
    /// The caller's transaction id.
    pub transaction_id: String,
}

/// The verdict on `tx` with feature row `features` (named `names`): the model's score and
/// `k` reasons, the policy's decision, the answer's fields. Also returns the model's row.
pub fn decide(
    model: &ScoringModel,
    policy: &Policy,
    tx: &Transaction,
    names: &[String],
    features: &[f64],
    k: usize,
) -> Result<(Verdict, Vec<f64>), DecisionError> {
    let judged = model.judge(features, k)?;
    let Decided {
        decision,
        fired: rules_fired,
        shadow: rules_shadow,
    } = policy.decide_all(tx, names, features, judged.score)?;
    let verdict = Verdict {
        card_mask: tx.card.mask.clone(),
        decision,
        degraded: false,
        elapsed_us: None,
        model_version: model.version.clone(),
        reasons: judged.reasons,
        risk_score: (judged.score * 100.0).round() as i64,
        rules_fired,
        rules_shadow,
        score: judged.score,
        transaction_id: tx.transaction_id.clone(),
    };
    Ok((verdict, judged.row))
}

/// A transaction in, a verdict out: feature extraction with entity state, the model, its
/// explanation and the policy. Shared by threads (`&self`).
pub struct Scorer {
    extractor: Extractor,
    store: Arc<dyn StateStore>,
    tokenizer: Tokenizer,
    model: ScoringModel,
    policy: Policy,
    reasons: usize,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("model", &self.model)
            .field("policy", &self.policy)
            .field("reasons", &self.reasons)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Scorer`]: everything but the model has the service's default.
pub struct ScorerBuilder {
    artifact: Artifact,
    spec: Option<FeatureSpec>,
    policy: PolicyConfig,
    store: Option<Arc<dyn StateStore>>,
    tokenizer: Option<Tokenizer>,
    reasons: usize,
    limits: ModelLimits,
}

/// Why a [`Scorer`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    /// The feature spec is invalid.
    #[error("feature spec: {0}")]
    Spec(String),
    /// The model cannot score with this spec, or is over the limits.
    #[error("model: {0}")]
    Model(#[from] crate::ModelError),
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// No tokenization key could be made.
    #[error("tokenization key: {0}")]
    Key(String),
}

impl ScorerBuilder {
    /// The feature spec (default: the one stored in the model, else the default spec, as the
    /// service chooses).
    pub fn spec(mut self, spec: FeatureSpec) -> Self {
        self.spec = Some(spec);
        self
    }

    /// The policy (default: the service's default policy).
    pub fn policy(mut self, policy: PolicyConfig) -> Self {
        self.policy = policy;
        self
    }

    /// The entity-state store (default: a fresh in-memory store).
    pub fn store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The card tokenization key (default: a one-off random key: tokens then only compare
    /// within this scorer).
    pub fn tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Reasons per verdict (default 5, as the service).
    pub fn reasons(mut self, k: usize) -> Self {
        self.reasons = k;
        self
    }

    /// The model's cost limits (default: the service's).
    pub fn limits(mut self, limits: ModelLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Builds the scorer.
    pub fn build(self) -> Result<Scorer, ScorerError> {
        let spec = self.spec.unwrap_or_else(|| self.artifact.feature_spec());
        let extractor = Extractor::new(spec).map_err(|e| ScorerError::Spec(e.to_string()))?;
        let model = ScoringModel::new(&self.artifact, extractor.names(), &self.limits)?;
        let policy = Policy::new(&self.policy, extractor.names())?;
        let tokenizer = match self.tokenizer {
            Some(t) => t,
            None => Tokenizer::one_off().map_err(|e| ScorerError::Key(e.to_string()))?,
        };
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn StateStore>);
        Ok(Scorer {
            extractor,
            store,
            tokenizer,
            model,
            policy,
            reasons: self.reasons,
        })
    }
}

impl Scorer {
    /// A builder for a scorer of `artifact`'s model.
    pub fn builder(artifact: Artifact) -> ScorerBuilder {
        ScorerBuilder {
            artifact,
            spec: None,
            policy: PolicyConfig::default(),
            store: None,
            tokenizer: None,
            reasons: 5,
            limits: ModelLimits::default(),
        }
    }

    /// Validates a JSON transaction (the service's request body) and scores it.
    pub fn score_json(&self, bytes: &[u8]) -> Result<Verdict, DecisionError> {
        let tx = Transaction::from_json(bytes, &self.tokenizer)?;
        self.score(&tx)
    }

    /// Scores a validated transaction: its features at its time (and it is recorded in
    /// entity state), the model, the reasons and the policy's decision.
    pub fn score(&self, tx: &Transaction) -> Result<Verdict, DecisionError> {
        let started = std::time::Instant::now();
        let features = self
            .store
            .step(&self.extractor, tx)
            .map_err(|e| DecisionError::State(e.to_string()))?;
        let (mut verdict, _) = decide(
            &self.model,
            &self.policy,
            tx,
            self.extractor.names(),
            &features,
            self.reasons,
        )?;
        verdict.elapsed_us = Some(started.elapsed().as_micros() as u64);
        Ok(verdict)
    }

    /// The feature extractor.
    pub fn extractor(&self) -> &Extractor {
        &self.extractor
    }

    /// The tokenizer (to validate transactions for [`Scorer::score`]).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model.
    pub fn model(&self) -> &ScoringModel {
        &self.model
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// Scores JSON lines: one transaction per line of `input` (blank lines skipped), one answer
/// per line on `output`: the verdict, or `{"error": ..., "line": N}` for a line that is not a
/// valid transaction (the message never holds a card number). Returns (scored, refused).
pub fn score_lines(
    scorer: &Scorer,
    input: impl std::io::BufRead,
    mut output: impl std::io::Write,
) -> std::io::Result<(u64, u64)> {
    let (mut scored, mut refused) = (0u64, 0u64);
    for (i, line) in input.lines().enumerate() {
        let line = zeroize::Zeroizing::new(line?);
        if line.trim().is_empty() {
            continue;
        }
        match scorer.score_json(line.as_bytes()) {
            Ok(v) => {
                serde_json::to_writer(&mut output, &v)?;
                scored += 1;
            }
            Err(e) => {
                let text = e.to_string();
                let message = crate::pii::redact(&text);
                serde_json::to_writer(
                    &mut output,
                    &serde_json::json!({"error": message, "line": i + 1}),
                )?;
                refused += 1;
            }
        }
        output.write_all(b"\n")?;
    }
    output.flush()?;
    Ok((scored, refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "rules")]
    #[test]
    fn shadow_rules_are_looked_at_but_never_act() {
        let names: Vec<String> = vec!["f".into()];
        let cfg = PolicyConfig::from_toml(
            "[[rules]]\nname = \"live\"\nwhen = \"tx.amount > 10.0\"\naction = \"review\"\n\
             [[rules]]\nname = \"watch\"\nwhen = \"tx.amount > 5.0\"\naction = \"decline\"\nmode = \"shadow\"\n\
             [lists.block]\ncustomers = [\"C9\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = Policy::new(&cfg, &names).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.rule_names(), vec!["live".to_string()]);
        let tx = |amount: &str, customer: Option<&str>| {
            let raw = crate::transaction::RawTransaction {
                transaction_id: Some("t".into()),
                timestamp: Some("2024-01-01T00:00:00Z".into()),
                amount: Some(crate::transaction::Decimal::Text(amount.into())),
                currency: Some("EUR".into()),
                card_token: Some(format!("tok_{}", "0".repeat(32))),
                customer_id: customer.map(Into::into),
                ..Default::default()
            };
            let tk = Tokenizer::new(&[0u8; 32]).unwrap_or_else(|e| panic!("{e}"));
            Transaction::from_raw(raw, &tk).unwrap_or_else(|e| panic!("{e}"))
        };
        let d = |tx: &Transaction| {
            p.decide_all(tx, &names, &[0.0], 0.0)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        // 1.00: nothing fires.
        assert!(d(&tx("1.00", None)).shadow.is_empty());
        let got = d(&tx("7.00", None));
        assert_eq!(got.decision, Decision::Approve);
        assert!(got.fired.is_empty());
        assert_eq!(got.shadow, vec!["watch".to_string()]);
        // A list decides, and the shadow rule is still looked at (the live one is not).
        let got = d(&tx("70.00", Some("C9")));
        assert_eq!(got.decision, Decision::Decline);
        assert_eq!(got.fired, vec!["block_list:customer".to_string()]);
        assert_eq!(got.shadow, vec!["watch".to_string()]);
    }

    #[cfg(feature = "rules")]
    #[test]
    fn rules_get_only_the_features_they_name() {
        let names: Vec<String> = ["a", "b_1", "c"].iter().map(|s| s.to_string()).collect();
        let rule = |when: &str| RuleConfig {
            name: "r".into(),
            when: when.into(),
            action: Decision::Review,
            mode: RuleMode::Live,
        };
        let got = |whens: &[&str]| {
            named_features(&whens.iter().map(|w| rule(w)).collect::<Vec<_>>(), &names)
        };
        assert_eq!(
            got(&["features.b_1 > 1.0 && features . a < 2.0"]),
            Some(vec![1, 0])
        );
        assert_eq!(
            got(&["tx.amount > 1.0", "myfeatures.c > 0.0"]),
            Some(vec![])
        );
        // Used otherwise: every feature.
        assert_eq!(got(&["features['c'] > 1.0"]), None);
        assert_eq!(got(&["size(features) > 1"]), None);
        // And the rule sees the value (and NaN for a missing one).
        let cfg = PolicyConfig {
            rules: vec![rule("features.c > 1.0")],
            ..PolicyConfig::default()
        };
        let p = Policy::new(&cfg, &names).unwrap_or_else(|e| panic!("{e}"));
        let tx = sample_transaction().unwrap_or_else(|e| panic!("{e}"));
        let fired = |c: f64| {
            p.decide(&tx, &names, &[0.0, 0.0, c], 0.0)
                .map(|(_, f)| f)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(fired(2.0), vec!["r".to_string()]);
        assert!(fired(0.5).is_empty() && fired(f64::NAN).is_empty());
    }

    fn policy(when: &str) -> Result<Policy, PolicyError> {
        let cfg = PolicyConfig {
            rules: vec![RuleConfig {
                name: "r".into(),
                when: when.to_string(),
                action: Decision::Review,
                mode: RuleMode::Live,
            }],
            ..Default::default()
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
        let picked = |k: usize| -> Vec<(String, serde_json::Value)> {
            top_reasons(&names, &row, &phi[..6], k)
                .into_iter()
                .map(|r| {
                    let v = serde_json::json!(r)
                        .get("value")
                        .cloned()
                        .unwrap_or_default();
                    (r.feature, v)
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
        assert_eq!(picked(1)[0].1, serde_json::Value::Null);
        assert_eq!(picked(2)[1].1, serde_json::json!(3.0));
    }

    #[cfg(feature = "rules")]
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
            let e = policy(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("rules[0]"), "{bad}: {e}");
        }
    }

    #[test]
    fn policy_sections_are_read_from_a_service_config() {
        let text = "bind = \"127.0.0.1:9\"\n[thresholds]\nreview = 0.2\ndecline = 0.9\n\
                    [[rules]]\nname = \"big\"\nwhen = \"tx.amount > 1000.0\"\naction = \"decline\"\n\
                    [lists.block]\ncustomers = [\"C9\"]\n";
        let cfg = PolicyConfig::from_toml(text).unwrap();
        assert_eq!(cfg.thresholds.review, 0.2);
        assert_eq!(cfg.rules[0].action, Decision::Decline);
        assert_eq!(cfg.lists.block.customers, vec!["C9".to_string()]);
        let bad = PolicyConfig::from_toml(
            "[[rules]]\nname = \"x\"\nwhen = \"true\"\naction = \"maybe\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("maybe"), "{bad}");
        let bad =
            PolicyConfig::from_toml("[thresholds]\nreview = 0.9\ndecline = 0.2\n").unwrap_err();
        assert!(bad.to_string().contains("thresholds.review"), "{bad}");
    }

    #[test]
    fn verdicts_read_back_as_written() {
        let v = Verdict {
            card_mask: None,
            decision: Decision::Review,
            degraded: false,
            elapsed_us: None,
            model_version: "abc".into(),
            reasons: vec![Reason {
                contribution: 0.5,
                feature: "f".into(),
                value: f64::NAN,
            }],
            risk_score: 40,
            rules_fired: vec![],
            rules_shadow: vec![],
            score: 0.4,
            transaction_id: "t".into(),
        };
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(
            text,
            r#"{"card_mask":null,"decision":"review","model_version":"abc","reasons":[{"contribution":0.5,"feature":"f","value":null}],"risk_score":40,"rules_fired":[],"score":0.4,"transaction_id":"t"}"#
        );
        let back: Verdict = serde_json::from_str(&text).unwrap();
        assert!(back.reasons[0].value.is_nan());
        assert_eq!(back.decision, Decision::Review);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Arbitrary rule text never panics: it loads or is refused with a message.
        #[test]
        fn arbitrary_rules_never_panic(s in "\\PC{0,80}") {
            let _ = policy(&s);
        }

        /// Rule-shaped text: operators, names and literals in any order.
        #[test]
        fn rule_shaped_text_never_panics(parts in proptest::collection::vec(proptest::sample::select(vec![
            "score", "features.card_txn_count_1h", "tx.amount", "tx.channel", ">", "<=", "==", "&&",
            "||", "!", "(", ")", "0.5", "3", "'x'", "size(", "in", "[", "]", ",", "null", "true",
            ".", "1e308", "-", "/", "0",
        ]), 0..16)) {
            let _ = policy(&parts.join(" "));
        }
    }
}
