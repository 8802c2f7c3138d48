//! Webhooks: other systems hear of declines, reviews, closed cases and published policies.
//!
//! `[[webhooks]]` entries name a `url`, the `events` wanted (`decision.declined`,
//! `review.opened`, `case.closed`, `policy.published`) and a `secret_file`. Each delivery
//! is a `POST` of one event as JSON (`{"id", "type", "created_at", "data"}`) with the header
//! `Fraud-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>.<body>" under the
//! secret>`; a receiver recomputes it, compares in constant time and refuses a `t` more than
//! five minutes from its clock (the replay window). `Fraud-Event-Id` repeats the event's id
//! (deliveries are at least once: a receiver drops an id it has seen).
//!
//! The outbox is the decision log itself: every event is a record, durable before the
//! answer that caused it (a decision's answer waits for its commit), and each webhook keeps
//! the seq of the last record it delivered in `<data dir>/webhooks/<name>.cursor`. A record
//! is delivered only once durable; on start the records after the cursor are delivered again
//! in order (at least once across crashes). One sender per webhook delivers in log order,
//! one event at a time, so a transaction's events arrive in order; a failure (a connection
//! refused, a timeout, a status other than 2xx) is retried with exponential backoff (0.25 s
//! doubling to `retry_max_ms`) until it succeeds. `/metrics` counts deliveries and failures
//! and shows the backlog per webhook.
//!
//! At most `max_pending` events wait in memory per webhook (100,000 by default); past that
//! the webhook takes no new ones (a warning says so): it delivers what it holds, and the
//! rest, which waits in the log after its cursor, is delivered after the next restart.
//! None is lost.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

/// The events a webhook may ask for.
pub const EVENTS: [&str; 4] = [
    "decision.declined",
    "review.opened",
    "case.closed",
    "policy.published",
];

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are posted (`https://...`; `http://` only to a loopback address).
    pub url: String,
    /// The events wanted (see [`EVENTS`]).
    pub events: Vec<String>,
    /// The shared secret the deliveries are signed with (16 bytes or more; a trailing
    /// newline is not part of it).
    pub secret_file: PathBuf,
    /// Its name in `/metrics` and its cursor file (`webhook-<n>` by default, from 1).
    #[serde(default)]
    pub name: Option<String>,
    /// Time allowed for one delivery, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The longest wait between two attempts, in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Events held in memory at most (the rest wait in the log).
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_retry_max_ms() -> u64 {
    60_000
}
fn default_max_pending() -> usize {
    100_000
}

impl WebhookConfig {
    /// Its name (`webhook-<i + 1>` by default).
    pub fn name(&self, i: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("webhook-{}", i + 1))
    }

    /// Checks it: `(setting, reason)` of the first thing wrong.
    pub fn check(&self, i: usize) -> Result<(), (String, String)> {
        let at = |s: &str| format!("webhooks[{i}].{s}");
        let url = self.url.to_ascii_lowercase();
        let rest = if let Some(r) = url.strip_prefix("https://") {
            r
        } else if let Some(r) = url.strip_prefix("http://") {
            let host = r.split(['/', '?']).next().unwrap_or("");
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            let host = if host.starts_with('[') {
                host.split(']').next().unwrap_or("").trim_start_matches('[')
            } else {
                host.split(':').next().unwrap_or("")
            };
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
            if !loopback {
                return Err((
                    at("url"),
                    "must be https:// (http:// only to a loopback address): events carry decisions"
                        .into(),
                ));
            }
            r
        } else {
            return Err((at("url"), "must start with https://".into()));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err((at("url"), "names no host".into()));
        }
        if self.events.is_empty() {
            return Err((at("events"), format!("is empty: name some of {EVENTS:?}")));
        }
        for e in &self.events {
            if !EVENTS.contains(&e.as_str()) {
                return Err((
                    at("events"),
                    format!(
                        "{} is not an event; the events are {EVENTS:?}",
                        fraud_core::pii::quoted(e)
                    ),
                ));
            }
        }
        if let Some(n) = &self.name {
            if n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err((
                    at("name"),
                    "must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
                ));
            }
        }
        if self.timeout_ms == 0 || self.retry_max_ms < 250 {
            return Err((
                at("retry_max_ms"),
                "timeout_ms must be positive and retry_max_ms at least 250".into(),
            ));
        }
        if self.max_pending == 0 {
            return Err((at("max_pending"), "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Why the webhooks cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The secret file cannot be read or is too short.
    #[error("webhooks[{index}].secret_file: {reason}")]
    Secret {
        /// Which entry.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The cursor cannot be read or written.
    #[error("webhook cursor {path}: {source}")]
    Cursor {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Two entries share a name.
    #[error("webhooks: two entries are named {0}")]
    Duplicate(String),
}

/// The event a record makes, if any: its type and its `data`. `kind`, `at` (RFC 3339),
/// `key` (who asked) and `data` are the record's.
pub fn event_of(kind: &str, key: &str, data: &Value) -> Option<(&'static str, Value)> {
    match kind {
        "decision" => {
            let r = &data["response"];
            let t = match r["decision"].as_str()? {
                "decline" => "decision.declined",
                "review" => "review.opened",
                _ => return None,
            };
            Some((
                t,
                json!({
                    "transaction_id": data["transaction_id"],
                    "decision": r["decision"],
                    "score": r["score"],
                    "risk_score": r["risk_score"],
                    "reasons": r["reasons"],
                    "rules_fired": r["rules_fired"],
                    "model_version": r["model_version"],
                    "policy_version": data["policy_version"],
                    "degraded": r["degraded"].as_bool().unwrap_or(false),
                }),
            ))
        }
        "case" => {
            let action = data["action"].as_str()?;
            if action != "fraud" && action != "legit" {
                return None;
            }
            Some((
                "case.closed",
                json!({
                    "transaction_id": data["transaction_id"],
                    "outcome": action,
                    "closed_by": key,
                }),
            ))
        }
        "policy" if data["action"] == "publish" => Some((
            "policy.published",
            json!({
                "version": data["version"],
                "source": data["source"],
                "drafted_by": data["drafted_by"],
                "approved_by": if data["source"] == "config" { Value::Null } else { json!(key) },
                "comment": data["comment"],
            }),
        )),
        _ => None,
    }
}

/// One event to deliver.
struct Outgoing {
    seq: u64,
    id: String,
    body: Arc<Vec<u8>>,
}

/// One webhook: its queue, cursor and sender.
struct Hook {
    name: String,
    url: String,
    events: Vec<String>,
    secret: zeroize::Zeroizing<Vec<u8>>,
    timeout: Duration,
    retry_max: Duration,
    max_pending: usize,
    cursor_path: PathBuf,
    /// The last seq delivered (or skipped: of no interest).
    cursor: AtomicU64,
    queue: Mutex<VecDeque<Outgoing>>,
    wake: Condvar,
    /// Events were refused for want of room: it takes no more until a restart.
    overflowing: AtomicBool,
}

/// The configured webhooks.
pub struct Webhooks {
    hooks: Vec<Arc<Hook>>,
    replica: String,
    /// Held from a record's append to its offer: events are queued in seq order, so a
    /// sender never passes a record still being offered.
    order: Mutex<()>,
}

/// Now, in RFC 3339 (UTC).
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn cursor_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("webhooks").join(format!("{name}.cursor"))
}

fn read_cursor(path: &Path) -> Result<Option<u64>, WebhookError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t.trim().parse().ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WebhookError::Cursor {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

impl Webhooks {
    /// No webhook.
    pub fn none() -> Webhooks {
        Webhooks {
            hooks: Vec::new(),
            replica: String::new(),
            order: Mutex::new(()),
        }
    }

    /// The webhooks of `cfgs`, their cursors under `data_dir`; `last_seq` is the log's last
    /// record now (a webhook new to this data directory starts after it: it hears of what
    /// happens from now on). `replica` names this process in event ids.
    pub fn new(
        cfgs: &[WebhookConfig],
        data_dir: &Path,
        last_seq: u64,
        replica: &str,
    ) -> Result<Webhooks, WebhookError> {
        let mut hooks = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, c) in cfgs.iter().enumerate() {
            let name = c.name(i);
            if !names.insert(name.clone()) {
                return Err(WebhookError::Duplicate(name));
            }
            let mut secret =
                zeroize::Zeroizing::new(std::fs::read(&c.secret_file).map_err(|e| {
                    WebhookError::Secret {
                        index: i,
                        reason: format!("cannot read {}: {e}", c.secret_file.display()),
                    }
                })?);
            while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
                secret.pop();
            }
            if secret.len() < 16 {
                return Err(WebhookError::Secret {
                    index: i,
                    reason: "holds fewer than 16 bytes".into(),
                });
            }
            let cursor_path = cursor_file(data_dir, &name);
            let cursor = match read_cursor(&cursor_path)? {
                Some(c) => c,
                None => {
                    write_cursor(&cursor_path, last_seq)?;
                    last_seq
                }
            };
            hooks.push(Arc::new(Hook {
                name,
                url: c.url.clone(),
                events: c.events.clone(),
                secret,
                timeout: Duration::from_millis(c.timeout_ms),
                retry_max: Duration::from_millis(c.retry_max_ms),
                max_pending: c.max_pending,
                cursor_path,
                cursor: AtomicU64::new(cursor),
                queue: Mutex::new(VecDeque::new()),
                wake: Condvar::new(),
                overflowing: AtomicBool::new(false),
            }));
        }
        Ok(Webhooks {
            hooks,
            replica: replica.to_string(),
            order: Mutex::new(()),
        })
    }

    /// No webhook is configured.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Held while a record that makes an event of type `t` is appended and offered (none
    /// when no webhook wants it): offers then come in seq order.
    pub fn ordered(&self, t: &str) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.wants(t).then(|| {
            self.order
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
    }

    /// Whether some webhook wants events of type `t`.
    pub fn wants(&self, t: &str) -> bool {
        self.hooks.iter().any(|h| h.events.iter().any(|e| e == t))
    }

    /// The oldest cursor kept under `data_dir` by the webhooks of `cfgs` (none: no record
    /// of the log is needed at start; a webhook without a cursor starts after the last).
    pub fn oldest_cursor(cfgs: &[WebhookConfig], data_dir: &Path) -> Option<u64> {
        cfgs.iter()
            .enumerate()
            .filter_map(|(i, c)| {
                read_cursor(&cursor_file(data_dir, &c.name(i)))
                    .ok()
                    .flatten()
            })
            .min()
    }

    /// Offers record `seq` (written at `at` for `key`, of `kind`, holding `data`): queued
    /// for every webhook that wants its event and has not delivered it.
    pub fn offer(&self, seq: u64, at: &str, kind: &str, key: &str, data: &Value) {
        if self.hooks.is_empty() {
            return;
        }
        let Some((t, payload)) = event_of(kind, key, data) else {
            return;
        };
        let mut body = None;
        for h in &self.hooks {
            if !h.events.iter().any(|e| e == t) || seq <= h.cursor.load(Ordering::Acquire) {
                continue;
            }
            let id = format!("evt_{}_{seq}", self.replica);
            let body = body
                .get_or_insert_with(|| {
                    Arc::new(
                        serde_json::to_vec(&json!({
                            "id": id, "type": t, "created_at": at, "data": payload,
                        }))
                        .unwrap_or_default(),
                    )
                })
                .clone();
            let mut q = h
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if h.overflowing.load(Ordering::Acquire) || q.len() >= h.max_pending {
                if !h.overflowing.swap(true, Ordering::AcqRel) {
                    eprintln!(
                        "warning: webhook {}: {} events wait already; the events from record {seq} on wait in the decision log and are delivered after a restart",
                        h.name, h.max_pending
                    );
                }
                continue;
            }
            if q.back().is_some_and(|o| o.seq >= seq) {
                continue;
            }
            q.push_back(Outgoing { seq, id, body });
            h.wake.notify_one();
        }
    }

    /// Starts one sender thread per webhook, delivering the records of `engine`'s log once
    /// durable.
    pub fn start(engine: &Arc<super::engine::Engine>) {
        for h in &engine.webhooks.hooks {
            let (h, engine) = (h.clone(), engine.clone());
            std::thread::Builder::new()
                .name(format!("webhook-{}", h.name))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            eprintln!("warning: webhook {}: cannot start: {e}", h.name);
                            return;
                        }
                    };
                    let durable = |seq: u64| {
                        rt.block_on(engine.log.durable(seq))
                            .map_err(|e| e.to_string())
                    };
                    engine.webhooks.send_loop(&h, &engine.metrics, &durable)
                })
                .ok();
        }
    }

    fn send_loop(
        &self,
        h: &Hook,
        metrics: &super::metrics::Metrics,
        durable: &dyn Fn(u64) -> Result<(), String>,
    ) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(h.timeout))
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .user_agent("fraud-webhooks/1")
            .build()
            .into();
        loop {
            let (seq, id, body) = {
                let mut q = h
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                loop {
                    if let Some(o) = q.front() {
                        metrics.webhook_pending(&h.name, q.len() as u64);
                        break (o.seq, o.id.clone(), o.body.clone());
                    }
                    metrics.webhook_pending(&h.name, 0);
                    q = h
                        .wake
                        .wait(q)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            let mut wait = Duration::from_millis(250);
            loop {
                let outcome = durable(seq).and_then(|()| self.deliver(&agent, h, &id, &body));
                match outcome {
                    Ok(()) => {
                        metrics.webhook_delivered(&h.name);
                        break;
                    }
                    Err(e) => {
                        metrics.webhook_failed(&h.name);
                        eprintln!(
                            "warning: webhook {}: delivery of {id} failed: {e}; retried in {:.1} s",
                            h.name,
                            wait.as_secs_f64()
                        );
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(h.retry_max);
                    }
                }
            }
            let pending = {
                let mut q = h
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                q.pop_front();
                q.len()
            };
            metrics.webhook_pending(&h.name, pending as u64);
            h.cursor.store(seq, Ordering::Release);
            if let Err(e) = write_cursor(&h.cursor_path, seq) {
                eprintln!("warning: webhook {}: {e}", h.name);
            }
        }
    }

    fn deliver(&self, agent: &ureq::Agent, h: &Hook, id: &str, body: &[u8]) -> Result<(), String> {
        let t = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = sign(&h.secret, t, body);
        let answer = agent
            .post(&h.url)
            .header("Content-Type", "application/json")
            .header("Fraud-Signature", &format!("t={t},v1={signature}"))
            .header("Fraud-Event-Id", id)
            .send(body)
            .map_err(|e| e.to_string())?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", status.as_u16()))
        }
    }
}

/// The signature of `body` sent at `t` (unix seconds): hex HMAC-SHA-256 of `"<t>.<body>"`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    fraud_core::hex::encode(&mac.finalize().into_bytes())
}

fn write_cursor(path: &Path, seq: u64) -> Result<(), WebhookError> {
    let err = |e| WebhookError::Cursor {
        path: path.to_path_buf(),
        source: e,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    fraud_core::files::write_atomic(path, seq.to_string().as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_from_declines_reviews_closed_cases_and_publications() {
        let d = |decision: &str| {
            json!({"transaction_id": "t1", "policy_version": 2,
                   "response": {"decision": decision, "score": 0.9, "card_mask": "shred1:x"}})
        };
        let (t, data) = event_of("decision", "checkout", &d("decline")).unwrap_or_default();
        assert_eq!(t, "decision.declined");
        assert_eq!(data["policy_version"], 2);
        assert!(data.get("card_mask").is_none());
        assert_eq!(
            event_of("decision", "k", &d("review")).map(|x| x.0),
            Some("review.opened")
        );
        assert!(event_of("decision", "k", &d("approve")).is_none());
        let case = |a: &str| json!({"transaction_id": "t1", "action": a});
        let (t, data) = event_of("case", "console:ann", &case("fraud")).unwrap_or_default();
        assert_eq!(
            (t, &data["closed_by"]),
            ("case.closed", &json!("console:ann"))
        );
        assert!(event_of("case", "k", &case("escalate")).is_none());
        let p = json!({"action": "publish", "version": 3, "source": "review", "drafted_by": "a"});
        let (t, data) = event_of("policy", "b", &p).unwrap_or_default();
        assert_eq!((t, &data["approved_by"]), ("policy.published", &json!("b")));
        assert!(event_of("policy", "b", &json!({"action": "draft"})).is_none());
        assert!(event_of("label", "b", &json!({})).is_none());
    }

    #[test]
    fn signatures_are_hmac_sha256_of_time_and_body() {
        // RFC 4231-style check against an independent computation of the same MAC.
        let s = sign(b"0123456789abcdef", 1_700_000_000, b"{}");
        let mut mac =
            Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap_or_else(|_| unreachable!());
        mac.update(b"1700000000.{}");
        assert_eq!(s, fraud_core::hex::encode(&mac.finalize().into_bytes()));
        assert_eq!(s.len(), 64);
        assert_ne!(s, sign(b"0123456789abcdeF", 1_700_000_000, b"{}"));
    }

    #[test]
    fn settings_are_checked() {
        let c = |url: &str, events: &[&str]| WebhookConfig {
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            secret_file: "s".into(),
            name: None,
            timeout_ms: 1000,
            retry_max_ms: 1000,
            max_pending: 10,
        };
        assert!(c("https://hooks.example.com/x", &["case.closed"])
            .check(0)
            .is_ok());
        assert!(c("http://127.0.0.1:9/x", &["case.closed"]).check(0).is_ok());
        assert!(c("http://[::1]:9/x", &["case.closed"]).check(0).is_ok());
        assert!(c("http://hooks.example.com/x", &["case.closed"])
            .check(0)
            .is_err());
        assert!(c("ftp://x", &["case.closed"]).check(0).is_err());
        assert!(c("https://x", &[]).check(0).is_err());
        let e = c("https://x", &["decision.approved"]).check(2).unwrap_err();
        assert_eq!(e.0, "webhooks[2].events");
    }
}
