//! Prometheus metrics (OpenMetrics text on `/metrics`, through `prometheus-client`): requests
//! and latency by route and status, server time per scored transaction, decisions by outcome,
//! the score distribution, labels, the model versions, and feature drift (population
//! stability index of the features scored since start against the model's training
//! reference). Recording takes no lock: counters, histograms and drift counts are atomics
//! (histograms lock their own series briefly); only a model change takes a mutex.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use fraud_core::eval::Reference;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets, seconds.
const LATENCY: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

const SCORE_BOUNDS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// The drift reference of one model: per feature, its training distribution.
#[derive(Debug, Clone)]
pub struct Drift {
    version: String,
    features: Vec<(String, Reference)>,
}

impl Drift {
    /// Drift for a model's features that have a reference.
    pub fn new(version: &str, refs: Vec<(String, Reference)>) -> Self {
        Drift {
            version: version.to_string(),
            features: refs,
        }
    }
}

/// The bin counts of the values scored by the active model, per feature.
struct DriftCounts {
    drift: Drift,
    counts: Vec<Vec<AtomicU64>>,
}

impl DriftCounts {
    fn new(drift: Drift) -> Self {
        let counts = drift
            .features
            .iter()
            .map(|(_, r)| (0..r.shares.len()).map(|_| AtomicU64::new(0)).collect())
            .collect();
        DriftCounts { drift, counts }
    }

    fn psi(&self) -> Vec<(String, f64)> {
        self.drift
            .features
            .iter()
            .zip(&self.counts)
            .map(|((name, r), c)| {
                let counts: Vec<u64> = c.iter().map(|a| a.load(Ordering::Relaxed)).collect();
                (name.clone(), r.psi(&counts))
            })
            .collect()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LabelLabel {
    label: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    role: &'static str,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabel {
    feature: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY)
}

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    scoring: Histogram,
    decisions: Family<DecisionLabel, Counter>,
    scores: Histogram,
    labels: Family<LabelLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    degraded: Counter,
    alerts: Counter,
    throttled: Counter,
    models: Family<ModelLabels, Gauge>,
    /// The version shown per role (changed with the models only).
    versions: Mutex<BTreeMap<&'static str, String>>,
    drift: ArcSwapOption<DriftCounts>,
    psi: Family<FeatureLabel, Gauge<f64, AtomicU64>>,
    entities: Family<KindLabel, Gauge>,
    shadow_fired: Family<RuleLabel, Counter>,
    shadow_labelled: Family<RuleOutcome, Counter>,
    shadow_precision: Family<RuleLabel, Gauge<f64, AtomicU64>>,
    webhook_attempts: Family<WebhookOutcome, Counter>,
    webhook_pending: Family<WebhookLabel, Gauge>,
    arm_decisions: Family<ArmDecision, Counter>,
    arm_quality: Family<ArmMeasure, Gauge<f64, AtomicU64>>,
    arm_labelled: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmDecision {
    arm: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmMeasure {
    arm: &'static str,
    measure: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabel {
    webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookOutcome {
    webhook: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleOutcome {
    rule: String,
    label: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            scoring: latency_histogram(),
            decisions: Family::default(),
            scores: Histogram::new(SCORE_BOUNDS),
            labels: Family::default(),
            refused: Family::default(),
            degraded: Counter::default(),
            alerts: Counter::default(),
            throttled: Counter::default(),
            models: Family::default(),
            versions: Mutex::new(BTreeMap::new()),
            drift: ArcSwapOption::empty(),
            psi: Family::default(),
            entities: Family::default(),
            shadow_fired: Family::default(),
            shadow_labelled: Family::default(),
            shadow_precision: Family::default(),
            webhook_attempts: Family::default(),
            webhook_pending: Family::default(),
            arm_decisions: Family::default(),
            arm_quality: Family::default(),
            arm_labelled: Gauge::default(),
        };
        // Series that exist from the start, at zero.
        for decision in ["approve", "review", "decline"] {
            drop(m.decisions.get_or_create(&DecisionLabel { decision }));
        }
        for reason in ["overloaded", "rate_limited"] {
            drop(m.refused.get_or_create(&ReasonLabel { reason }));
        }
        m.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "fraud_http_requests",
            "HTTP requests by route and status",
            self.requests.clone(),
        );
        r.register(
            "fraud_http_request_duration_seconds",
            "Time to answer, by route",
            self.latency.clone(),
        );
        r.register(
            "fraud_scoring_duration_seconds",
            "Server time per scored transaction (features, model, explanation, rules, log)",
            self.scoring.clone(),
        );
        r.register(
            "fraud_decisions",
            "Decisions by outcome",
            self.decisions.clone(),
        );
        r.register(
            "fraud_score",
            "Scores of the active model",
            self.scores.clone(),
        );
        r.register("fraud_labels", "Labels received", self.labels.clone());
        r.register(
            "fraud_requests_refused",
            "Requests shed when overloaded (503) or over a key's rate (429)",
            self.refused.clone(),
        );
        r.register(
            "fraud_degraded",
            "Transactions scored with stateless features only (entity state unreachable)",
            self.degraded.clone(),
        );
        r.register(
            "fraud_insider_alerts",
            "Keys caught reading decision records far above their usual rate (one per key and window)",
            self.alerts.clone(),
        );
        r.register(
            "fraud_insider_throttled",
            "Decision reads refused by the insider watch",
            self.throttled.clone(),
        );
        r.register("fraud_model_info", "The models in use", self.models.clone());
        r.register(
            "fraud_feature_psi",
            "Population stability index of each feature since start against the training reference (over 0.25: shifted)",
            self.psi.clone(),
        );
        r.register(
            "fraud_state_entities",
            "Entities held in memory, by kind (idle ones past the retention are dropped)",
            self.entities.clone(),
        );
        r.register(
            "fraud_shadow_rule_fired",
            "Transactions on which a shadow rule's condition held (it never acts)",
            self.shadow_fired.clone(),
        );
        r.register(
            "fraud_shadow_rule_labelled",
            "Labels received for transactions on which a shadow rule fired, by label",
            self.shadow_labelled.clone(),
        );
        r.register(
            "fraud_shadow_rule_precision",
            "Labelled fraud among a shadow rule's labelled firings",
            self.shadow_precision.clone(),
        );
        r.register(
            "fraud_webhook_deliveries",
            "Webhook delivery attempts, by webhook and outcome (delivered, failed: retried)",
            self.webhook_attempts.clone(),
        );
        r.register(
            "fraud_webhook_pending",
            "Webhook events waiting to be delivered, by webhook",
            self.webhook_pending.clone(),
        );
        r.register(
            "fraud_arm_decisions",
            "Decisions by arm (champion: the active model decided; challenger: the shadow, for its share of cards) and outcome",
            self.arm_decisions.clone(),
        );
        r.register(
            "fraud_arm_quality",
            "ROC AUC and average precision of the champion and the challenger on the transactions labelled since start (both scored each)",
            self.arm_quality.clone(),
        );
        r.register(
            "fraud_arm_labelled",
            "Labelled transactions in the champion / challenger comparison",
            self.arm_labelled.clone(),
        );
        self
    }

    /// A decision taken by `arm` (`champion` or `challenger`).
    pub fn arm_decision(&self, arm: &'static str, decision: &'static str) {
        self.arm_decisions
            .get_or_create(&ArmDecision { arm, decision })
            .inc();
    }

    /// The champion / challenger comparison now.
    pub fn arm_comparison(&self, c: &super::compare::Compared) {
        self.arm_labelled
            .set(i64::try_from(c.labelled).unwrap_or(i64::MAX));
        for (measure, v) in [("auc", c.auc), ("average_precision", c.average_precision)] {
            if let Some((champion, challenger)) = v {
                for (arm, x) in [("champion", champion), ("challenger", challenger)] {
                    self.arm_quality
                        .get_or_create(&ArmMeasure { arm, measure })
                        .set(x);
                }
            }
        }
    }

    /// A webhook event delivered.
    pub fn webhook_delivered(&self, webhook: &str) {
        self.webhook_attempt(webhook, "delivered");
    }

    /// A webhook delivery attempt that failed (it is retried).
    pub fn webhook_failed(&self, webhook: &str) {
        self.webhook_attempt(webhook, "failed");
    }

    fn webhook_attempt(&self, webhook: &str, outcome: &'static str) {
        self.webhook_attempts
            .get_or_create(&WebhookOutcome {
                webhook: webhook.to_string(),
                outcome,
            })
            .inc();
    }

    /// Events waiting for a webhook.
    pub fn webhook_pending(&self, webhook: &str, n: u64) {
        self.webhook_pending
            .get_or_create(&WebhookLabel {
                webhook: webhook.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The population stability index of each feature with a reference, now.
    pub fn drift_psi(&self) -> Vec<(String, f64)> {
        self.drift
            .load()
            .as_ref()
            .map(|d| d.psi())
            .unwrap_or_default()
    }

    /// One HTTP request answered.
    pub fn request(&self, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
        self.latency
            .get_or_create(&RouteLabel { route })
            .observe(seconds);
    }

    /// One transaction scored: server time, decision, score and the model's feature row.
    pub fn scored(
        &self,
        seconds: f64,
        decision: &'static str,
        score: f64,
        model: &str,
        row: &[f64],
    ) {
        self.scoring.observe(seconds);
        self.decisions
            .get_or_create(&DecisionLabel { decision })
            .inc();
        self.scores.observe(score);
        if let Some(d) = self.drift.load().as_ref() {
            if d.drift.version == model {
                for (i, ((_, r), counts)) in d.drift.features.iter().zip(&d.counts).enumerate() {
                    if let Some(bin) = row.get(i).and_then(|&v| counts.get(r.bin(v))) {
                        bin.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// A label received.
    pub fn label(&self, fraud: bool) {
        let label = if fraud { "fraud" } else { "not_fraud" };
        self.labels.get_or_create(&LabelLabel { label }).inc();
    }

    /// Shadow rules whose condition held on a scored transaction.
    pub fn shadow_fired(&self, rules: &[String]) {
        for rule in rules {
            self.shadow_fired
                .get_or_create(&RuleLabel { rule: rule.clone() })
                .inc();
        }
    }

    /// A shadow rule's figures since start: (fired, labelled fraud, labelled not fraud).
    pub fn shadow_stats(&self, rule: &str) -> (u64, u64, u64) {
        let fired = self
            .shadow_fired
            .get_or_create(&RuleLabel {
                rule: rule.to_string(),
            })
            .get();
        let count = |label| {
            self.shadow_labelled
                .get_or_create(&RuleOutcome {
                    rule: rule.to_string(),
                    label,
                })
                .get()
        };
        let fraud = count("fraud");
        (fired, fraud, count("not_fraud"))
    }

    /// A label for a transaction on which the shadow rules `rules` fired: their precision
    /// so far (labelled fraud among their labelled firings).
    pub fn shadow_labelled(&self, rules: &[String], fraud: bool) {
        for rule in rules {
            let count = |label| {
                self.shadow_labelled.get_or_create(&RuleOutcome {
                    rule: rule.clone(),
                    label,
                })
            };
            count(if fraud { "fraud" } else { "not_fraud" }).inc();
            // One guard at a time: a family's lock is held while its guard lives.
            let f = count("fraud").get();
            let n = count("not_fraud").get();
            self.shadow_precision
                .get_or_create(&RuleLabel { rule: rule.clone() })
                .set(f as f64 / (f + n).max(1) as f64);
        }
    }

    /// A request shed (503) or rate limited (429).
    pub fn refused(&self, overloaded: bool) {
        let reason = if overloaded {
            "overloaded"
        } else {
            "rate_limited"
        };
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A read refused by the insider watch (`alert`: the first of its window).
    pub fn insider(&self, alert: bool) {
        self.throttled.inc();
        if alert {
            self.alerts.inc();
        }
    }

    /// A transaction scored without entity state.
    pub fn degraded(&self) {
        self.degraded.inc();
    }

    /// The active (role `active`) or shadow model changed; drift restarts for the active one.
    pub fn model(&self, role: &'static str, version: Option<&str>, drift: Option<Drift>) {
        let mut versions = self
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = versions.remove(role) {
            self.models.remove(&ModelLabels { role, version: old });
        }
        if let Some(v) = version {
            versions.insert(role, v.to_string());
            self.models
                .get_or_create(&ModelLabels {
                    role,
                    version: v.to_string(),
                })
                .set(1);
        }
        if role == "active" {
            self.psi.clear();
            self.drift
                .store(drift.map(|d| Arc::new(DriftCounts::new(d))));
        }
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]), with the entities held in memory
    /// by kind when the state is in memory.
    pub fn render(&self, entities: Option<&[(&'static str, u64)]>) -> String {
        if let Some(d) = self.drift.load().as_ref() {
            for (feature, psi) in d.psi() {
                self.psi.get_or_create(&FeatureLabel { feature }).set(psi);
            }
        }
        for &(kind, n) in entities.unwrap_or_default() {
            self.entities
                .get_or_create(&KindLabel { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut s = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
