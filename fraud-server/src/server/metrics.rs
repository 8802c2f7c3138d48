//! Prometheus metrics, kept in memory and written as text on `/metrics`: requests and latency
//! by route and status, server time per scored transaction, decisions by outcome, the score
//! distribution, labels, the model versions, and feature drift (population stability index of
//! the features scored since start against the model's training reference).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use fraud_core::eval::Reference;

/// Latency buckets, seconds.
const LATENCY: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; bounds.len()];
        }
        for (b, &le) in self.buckets.iter_mut().zip(bounds) {
            if v <= le {
                *b += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, &le) in bounds.iter().enumerate() {
            let c = self.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Drift counters of one model: per feature, the bin counts of the values scored.
#[derive(Debug, Clone)]
pub struct Drift {
    version: String,
    features: Vec<(String, Reference, Vec<u64>)>,
}

impl Drift {
    /// Drift for a model's features that have a reference.
    pub fn new(version: &str, refs: Vec<(String, Reference)>) -> Self {
        Drift {
            version: version.to_string(),
            features: refs
                .into_iter()
                .map(|(n, r)| {
                    let bins = r.shares.len();
                    (n, r, vec![0; bins])
                })
                .collect(),
        }
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    scoring: Histogram,
    decisions: BTreeMap<String, u64>,
    scores: Histogram,
    labels: BTreeMap<String, u64>,
    models: BTreeMap<String, String>,
    drift: Option<Drift>,
    shed: u64,
    limited: u64,
    degraded: u64,
    alerts: u64,
    watched: u64,
}

/// The service's metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

const SCORE_BOUNDS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The population stability index of each feature with a reference, now.
    pub fn drift_psi(&self) -> Vec<(String, f64)> {
        let g = self.lock();
        g.drift
            .as_ref()
            .map(|d| {
                d.features
                    .iter()
                    .map(|(n, r, counts)| (n.clone(), r.psi(counts)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One HTTP request answered.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let mut g = self.lock();
        *g.requests.entry((route.to_string(), status)).or_default() += 1;
        g.latency
            .entry(route.to_string())
            .or_default()
            .observe(&LATENCY, seconds);
    }

    /// One transaction scored: server time, decision, score and the model's feature row.
    pub fn scored(&self, seconds: f64, decision: &str, score: f64, model: &str, row: &[f64]) {
        let mut g = self.lock();
        g.scoring.observe(&LATENCY, seconds);
        *g.decisions.entry(decision.to_string()).or_default() += 1;
        g.scores.observe(&SCORE_BOUNDS, score);
        if let Some(d) = g.drift.as_mut() {
            if d.version == model {
                for (i, (_, r, counts)) in d.features.iter_mut().enumerate() {
                    if let Some(&v) = row.get(i) {
                        counts[r.bin(v)] += 1;
                    }
                }
            }
        }
    }

    /// A label received.
    pub fn label(&self, fraud: bool) {
        let name = if fraud { "fraud" } else { "not_fraud" };
        *self.lock().labels.entry(name.to_string()).or_default() += 1;
    }

    /// A request shed (503) or rate limited (429).
    pub fn refused(&self, overloaded: bool) {
        let mut g = self.lock();
        if overloaded {
            g.shed += 1;
        } else {
            g.limited += 1;
        }
    }

    /// A read refused by the insider watch (`alert`: the first of its window).
    pub fn insider(&self, alert: bool) {
        let mut g = self.lock();
        g.watched += 1;
        if alert {
            g.alerts += 1;
        }
    }

    /// A transaction scored without entity state.
    pub fn degraded(&self) {
        self.lock().degraded += 1;
    }

    /// The active (role `active`) or shadow model changed; drift restarts for the active one.
    pub fn model(&self, role: &str, version: Option<&str>, drift: Option<Drift>) {
        let mut g = self.lock();
        match version {
            Some(v) => g.models.insert(role.to_string(), v.to_string()),
            None => g.models.remove(role),
        };
        if role == "active" {
            g.drift = drift;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = self.lock();
        let mut s = String::with_capacity(8192);
        s.push_str("# HELP fraud_http_requests_total HTTP requests by route and status.\n# TYPE fraud_http_requests_total counter\n");
        for ((route, status), n) in &g.requests {
            let _ = writeln!(
                s,
                "fraud_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        s.push_str("# HELP fraud_http_request_duration_seconds Time to answer, by route.\n# TYPE fraud_http_request_duration_seconds histogram\n");
        for (route, h) in &g.latency {
            h.write(
                &mut s,
                "fraud_http_request_duration_seconds",
                &format!("route=\"{route}\""),
                &LATENCY,
            );
        }
        s.push_str("# HELP fraud_scoring_duration_seconds Server time per scored transaction (features, model, explanation, rules, log).\n# TYPE fraud_scoring_duration_seconds histogram\n");
        g.scoring
            .write(&mut s, "fraud_scoring_duration_seconds", "", &LATENCY);
        s.push_str("# HELP fraud_decisions_total Decisions by outcome.\n# TYPE fraud_decisions_total counter\n");
        for d in ["approve", "review", "decline"] {
            let n = g.decisions.get(d).copied().unwrap_or(0);
            let _ = writeln!(s, "fraud_decisions_total{{decision=\"{d}\"}} {n}");
        }
        s.push_str(
            "# HELP fraud_score Scores of the active model.\n# TYPE fraud_score histogram\n",
        );
        g.scores.write(&mut s, "fraud_score", "", &SCORE_BOUNDS);
        s.push_str(
            "# HELP fraud_labels_total Labels received.\n# TYPE fraud_labels_total counter\n",
        );
        for (l, n) in &g.labels {
            let _ = writeln!(s, "fraud_labels_total{{label=\"{l}\"}} {n}");
        }
        s.push_str("# HELP fraud_requests_refused_total Requests shed when overloaded (503) or over a key's rate (429).\n# TYPE fraud_requests_refused_total counter\n");
        let _ = writeln!(
            s,
            "fraud_requests_refused_total{{reason=\"overloaded\"}} {}",
            g.shed
        );
        let _ = writeln!(
            s,
            "fraud_requests_refused_total{{reason=\"rate_limited\"}} {}",
            g.limited
        );
        s.push_str("# HELP fraud_degraded_total Transactions scored with stateless features only (entity state unreachable).\n# TYPE fraud_degraded_total counter\n");
        let _ = writeln!(s, "fraud_degraded_total {}", g.degraded);
        s.push_str("# HELP fraud_insider_alerts_total Keys caught reading decision records far above their usual rate (one per key and window).\n# TYPE fraud_insider_alerts_total counter\n");
        let _ = writeln!(s, "fraud_insider_alerts_total {}", g.alerts);
        s.push_str("# HELP fraud_insider_throttled_total Decision reads refused by the insider watch.\n# TYPE fraud_insider_throttled_total counter\n");
        let _ = writeln!(s, "fraud_insider_throttled_total {}", g.watched);
        s.push_str("# HELP fraud_model_info The models in use.\n# TYPE fraud_model_info gauge\n");
        for (role, v) in &g.models {
            let _ = writeln!(s, "fraud_model_info{{role=\"{role}\",version=\"{v}\"}} 1");
        }
        if let Some(d) = &g.drift {
            s.push_str("# HELP fraud_feature_psi Population stability index of each feature since start against the training reference (over 0.25: shifted).\n# TYPE fraud_feature_psi gauge\n");
            for (name, r, counts) in &d.features {
                let _ = writeln!(
                    s,
                    "fraud_feature_psi{{feature=\"{name}\"}} {:.6}",
                    r.psi(counts)
                );
            }
        }
        s
    }
}
