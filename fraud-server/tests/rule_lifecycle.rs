//! The rule lifecycle, run for real: the live policy drafted by one admin and approved by
//! another (maker-checker), every step in the decision log and surviving a restart,
//! rollbacks; webhooks to a local receiver; champion / challenger traffic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};

mod common;
use common::*;

fn keys_config(dir: &std::path::Path) -> String {
    let keys = write_keys(
        dir,
        &[
            ("checkout", "fsk_score", &["score"]),
            ("analyst", "fsk_analyst", &["analyst"]),
            ("maker", "fsk_maker", &["admin"]),
            ("checker", "fsk_checker", &["admin"]),
        ],
    );
    format!("keys_file = {:?}\n", keys.to_str().unwrap())
}

fn score(s: &Server, id: &str, amount: &str) -> Value {
    let (st, v, _) = s.call(
        "POST",
        "/v1/score",
        Some("fsk_score"),
        Some(&tx(id, amount)),
    );
    assert_eq!(st, 200, "{v}");
    v
}

#[test]
fn a_policy_is_drafted_by_one_admin_approved_by_another_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = keys_config(dir.path());
    let s = start(dir.path(), &cfg).unwrap();
    // The configuration file's policy is version 1; analysts read it, checkouts may not.
    let (st, live, _) = s.call("GET", "/v1/policy", Some("fsk_analyst"), None);
    assert_eq!(st, 200, "{live}");
    assert_eq!(live["version"], 1);
    assert_eq!(live["source"], "config");
    assert_eq!(live["policy"]["thresholds"]["decline"], 0.7);
    assert_eq!(s.call("GET", "/v1/policy", Some("fsk_score"), None).0, 403);
    for i in 0..20 {
        score(
            &s,
            &format!("before-{i}"),
            if i % 2 == 0 { "500.00" } else { "5.00" },
        );
    }
    // A draft, checked before it is recorded.
    let (st, bad, _) = s.call(
        "POST",
        "/v1/policy/drafts",
        Some("fsk_maker"),
        Some(&json!({"policy": {"rules": [{"name": "x", "when": "tx.amount >", "action": "decline"}]}})),
    );
    assert_eq!(st, 422, "{bad}");
    let pan = "4111111111111111";
    let (st, bad, _) = s.call(
        "POST",
        "/v1/policy/drafts",
        Some("fsk_maker"),
        Some(&json!({"policy": {"lists": {"block": {"card_tokens": [pan]}}}})),
    );
    assert_eq!(st, 422, "{bad}");
    assert!(bad["detail"]
        .as_str()
        .unwrap()
        .contains("policy.lists.block.card_tokens[0]"));
    assert!(!bad.to_string().contains(pan), "{bad}");
    let rule = json!({
        "thresholds": {"review": 0.3, "decline": 0.7},
        "rules": [{"name": "big_amount", "when": "tx.amount > 100.0", "action": "decline"}]
    });
    let (st, d, _) = s.call(
        "POST",
        "/v1/policy/drafts",
        Some("fsk_maker"),
        Some(&json!({"policy": rule, "comment": "decline large amounts"})),
    );
    assert_eq!(st, 201, "{d}");
    let id = d["draft"]["id"].as_str().unwrap().to_string();
    assert_eq!(d["draft"]["drafted_by"], "maker");
    assert_eq!(d["draft"]["base_version"], 1);
    // Its backtest on the recent decisions: the ten large amounts are declined by the rule.
    assert_eq!(d["backtest"]["transactions"], 20, "{d}");
    assert_eq!(d["backtest"]["rules"]["big_amount"]["fired"], 10, "{d}");
    assert!(
        d["backtest"]["decisions"]["decline"].as_u64().unwrap() >= 10,
        "{d}"
    );
    // Not live yet.
    assert_eq!(score(&s, "during", "500.00")["rules_fired"], json!([]));
    // Only admins see drafts; the author cannot approve its own.
    assert_eq!(
        s.call("GET", "/v1/policy/drafts", Some("fsk_analyst"), None)
            .0,
        403
    );
    let (st, list, _) = s.call("GET", "/v1/policy/drafts", Some("fsk_checker"), None);
    assert_eq!(st, 200);
    assert_eq!(list["drafts"][0]["draft"]["id"], id.as_str());
    let approve = format!("/v1/policy/drafts/{id}/approve");
    let (st, refused, _) = s.call("POST", &approve, Some("fsk_maker"), None);
    assert_eq!(st, 403, "{refused}");
    assert!(refused["detail"]
        .as_str()
        .unwrap()
        .contains("maker-checker"));
    let (st, v2, _) = s.call("POST", &approve, Some("fsk_checker"), None);
    assert_eq!(st, 200, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["drafted_by"], "maker");
    assert_eq!(v2["approved_by"], "checker");
    // Live: the rule acts, and the record names the version that decided.
    let after = score(&s, "after", "500.00");
    assert_eq!(after["decision"], "decline", "{after}");
    assert_eq!(after["rules_fired"], json!(["big_amount"]));
    let (_, rec, _) = s.call("GET", "/v1/decisions/after", Some("fsk_analyst"), None);
    assert_eq!(rec["policy_version"], 2, "{rec}");
    let (_, rec, _) = s.call("GET", "/v1/decisions/during", Some("fsk_analyst"), None);
    assert_eq!(rec["policy_version"], 1, "{rec}");
    // A second approval of the same draft finds nothing.
    assert_eq!(s.call("POST", &approve, Some("fsk_checker"), None).0, 404);
    // A rollback is a new version, reviewed the same way.
    let (st, rb, _) = s.call(
        "POST",
        "/v1/policy/drafts",
        Some("fsk_checker"),
        Some(&json!({"from_version": 1, "comment": "roll back"})),
    );
    assert_eq!(st, 201, "{rb}");
    let rb_id = rb["draft"]["id"].as_str().unwrap();
    assert_eq!(rb["backtest"]["transactions"], 22, "{rb}");
    let (st, v3, _) = s.call(
        "POST",
        &format!("/v1/policy/drafts/{rb_id}/approve"),
        Some("fsk_maker"),
        None,
    );
    assert_eq!(st, 200, "{v3}");
    assert_eq!(v3["version"], 3);
    assert_eq!(score(&s, "rolled-back", "500.00")["rules_fired"], json!([]));
    // A discarded draft is gone.
    let (_, d4, _) = s.call(
        "POST",
        "/v1/policy/drafts",
        Some("fsk_maker"),
        Some(&json!({"policy": {"thresholds": {"review": 0.1, "decline": 0.2}}})),
    );
    let d4 = d4["draft"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.call(
            "DELETE",
            &format!("/v1/policy/drafts/{d4}"),
            Some("fsk_checker"),
            None
        )
        .0,
        204
    );
    assert_eq!(
        s.call(
            "POST",
            &format!("/v1/policy/drafts/{d4}/approve"),
            Some("fsk_checker"),
            None
        )
        .0,
        404
    );
    drop(s);
    // After a restart the log's latest version is live, every version listed.
    let s = start(dir.path(), &cfg).unwrap();
    let (_, live, _) = s.call("GET", "/v1/policy", Some("fsk_maker"), None);
    assert_eq!(live["version"], 3, "{live}");
    let (_, versions, _) = s.call("GET", "/v1/policy/versions", Some("fsk_analyst"), None);
    let list = versions["versions"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{versions}");
    assert_eq!(list[1]["approved_by"], "checker");
    assert_eq!(list[2]["approved_by"], "maker");
    assert_eq!(versions["live"], 3);
    let (_, drafts, _) = s.call("GET", "/v1/policy/drafts", Some("fsk_maker"), None);
    assert_eq!(drafts["drafts"], json!([]));
    drop(s);
    // Editing the file's policy publishes it as the next version at start.
    let edited = format!("{cfg}\n[thresholds]\nreview = 0.2\ndecline = 0.6\n");
    let s = start(dir.path(), &edited).unwrap();
    let (_, live, _) = s.call("GET", "/v1/policy", Some("fsk_maker"), None);
    assert_eq!(live["version"], 4, "{live}");
    assert_eq!(live["source"], "config");
    assert_eq!(live["policy"]["thresholds"]["decline"], 0.6);
    drop(s);
    // Every step is in the chain, which verifies; no file holds the card number.
    let (ok, out) = audit_verify(&dir.path().join("data"), &[]);
    assert!(ok, "{out}");
    assert_no_file_holds(dir.path(), &[pan]);
}

/// A request received: its headers and body.
type Delivery = (Vec<(String, String)>, Vec<u8>);

/// A webhook receiver on a fixed port: records every request (headers, body) and answers
/// 200; it can be stopped (connections refused) and started again on the same port.
struct Receiver {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Receiver {
    fn new() -> Receiver {
        let mut r = Receiver {
            port: free_port(),
            got: Default::default(),
            stop: None,
        };
        r.up();
        r
    }

    fn up(&mut self) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (got, flag) = (self.got.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut headers = Vec::new();
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                let len: usize = header(&headers, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).unwrap();
                got.lock().unwrap().push((headers, body));
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        self.stop = Some(stop);
    }

    /// Stops accepting: connections are refused from the moment this returns.
    fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            // Wakes the accept loop, which then drops the listener.
            let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the receiver did not stop"
                );
                std::thread::yield_now();
            }
        }
    }

    /// The events received, first delivery of each id, in order of arrival.
    fn events(&self) -> Vec<(Vec<(String, String)>, Value)> {
        let mut seen = std::collections::HashSet::new();
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(h, b)| {
                let v: Value = serde_json::from_slice(b).unwrap();
                seen.insert(v["id"].as_str().unwrap().to_string())
                    .then(|| (h.clone(), v))
            })
            .collect()
    }

    /// Waits (up to a minute) until `n` distinct events arrived.
    fn wait_for(&self, n: usize) -> Vec<(Vec<(String, String)>, Value)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let e = self.events();
            if e.len() >= n {
                return e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} events arrived: {:?}",
                e.len(),
                e.iter().map(|x| x.1.clone()).collect::<Vec<_>>()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Checks a delivery's `Fraud-Signature` against the secret, independently of the service.
fn signed(headers: &[(String, String)], body: &Value, raw: &[u8], secret: &[u8]) -> bool {
    use hmac::Mac;
    let sig = header(headers, "fraud-signature").unwrap();
    let t = sig.split(',').find_map(|p| p.strip_prefix("t=")).unwrap();
    let v1 = sig.split(',').find_map(|p| p.strip_prefix("v1=")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(raw);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    want == v1
        && (now - t.parse::<i64>().unwrap()).abs() < 300
        && header(headers, "fraud-event-id") == body["id"].as_str()
}

#[test]
fn webhooks_are_signed_ordered_and_survive_a_receiver_outage_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"an-example-webhook-secret-0123456789";
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, [&secret[..], b"\n"].concat()).unwrap();
    let mut receiver = Receiver::new();
    let cfg = format!(
        r#"{keys}
[[rules]]
name = "big"
when = "tx.amount > 100.0"
action = "decline"

[[rules]]
name = "mid"
when = "tx.amount > 50.0 && tx.amount <= 100.0"
action = "review"

[[webhooks]]
url = "http://127.0.0.1:{port}/hooks"
events = ["decision.declined", "review.opened", "policy.published"]
secret_file = {secret:?}
retry_max_ms = 300
"#,
        keys = keys_config(dir.path()),
        port = receiver.port,
        secret = secret_file.to_str().unwrap(),
    );
    let s = start(dir.path(), &cfg).unwrap();
    // What each answer should announce, in order.
    let mut expected: Vec<(String, String)> = vec![("policy.published".into(), "1".into())];
    fn send(s: &Server, expected: &mut Vec<(String, String)>, id: &str, amount: &str) {
        let v = score(s, id, amount);
        match v["decision"].as_str().unwrap() {
            "decline" => expected.push(("decision.declined".into(), id.into())),
            "review" => expected.push(("review.opened".into(), id.into())),
            _ => {}
        }
    }
    send(&s, &mut expected, "w-big", "500.00");
    send(&s, &mut expected, "w-small", "5.00");
    send(&s, &mut expected, "w-mid", "75.00");
    let n = expected.len();
    assert!(n >= 3, "{expected:?}");
    let check = |events: &[(Vec<(String, String)>, Value)], expected: &[(String, String)]| {
        let got: Vec<(String, String)> = events
            .iter()
            .map(|(_, v)| {
                let what = v["data"]["transaction_id"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v["data"]["version"].to_string());
                (v["type"].as_str().unwrap().to_string(), what)
            })
            .collect();
        assert_eq!(got, expected);
    };
    let events = receiver.wait_for(n);
    check(&events, &expected);
    {
        let raw = receiver.got.lock().unwrap();
        for (h, b) in raw.iter() {
            let v: Value = serde_json::from_slice(b).unwrap();
            assert!(signed(h, &v, b, secret), "{h:?} {v}");
            assert!(!contains(b, CARD), "a card number in {v}");
        }
    }
    let big = &events[1].1;
    assert_eq!(big["data"]["rules_fired"], json!(["big"]));
    assert_eq!(big["data"]["policy_version"], 1);
    // The receiver goes down: deliveries fail, are counted, and are retried.
    receiver.down();
    send(&s, &mut expected, "w-big-2", "600.00");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, _, m) = s
            .try_request("GET", "/metrics", Some("fsk_analyst"), &[], b"")
            .unwrap();
        let m = String::from_utf8(m).unwrap();
        if m.lines().any(|l| {
            l.starts_with(
                "fraud_webhook_deliveries_total{webhook=\"webhook-1\",outcome=\"failed\"}",
            )
        }) {
            assert!(
                m.contains("fraud_webhook_pending{webhook=\"webhook-1\"} 1"),
                "{m}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The service dies with the event undelivered; it comes back (the receiver still
    // down), decides more, publishes a policy; then the receiver comes back.
    drop(s);
    let s = start(dir.path(), &cfg).unwrap();
    send(&s, &mut expected, "w-big-3", "700.00");
    let (st, d, _) = s.call(
        "POST",
        "/v1/policy/drafts",
        Some("fsk_maker"),
        Some(&json!({"policy": {"thresholds": {"review": 0.25, "decline": 0.7}, "rules": [{"name": "big", "when": "tx.amount > 100.0", "action": "decline"}]}})),
    );
    assert_eq!(st, 201, "{d}");
    let id = d["draft"]["id"].as_str().unwrap();
    let (st, v, _) = s.call(
        "POST",
        &format!("/v1/policy/drafts/{id}/approve"),
        Some("fsk_checker"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    expected.push(("policy.published".into(), "2".into()));
    receiver.up();
    let events = receiver.wait_for(expected.len());
    check(&events, &expected);
    let published = &events.last().unwrap().1;
    assert_eq!(published["data"]["approved_by"], "checker");
    assert_eq!(published["data"]["drafted_by"], "maker");
    // Nothing more than expected, and every delivery signed.
    assert_eq!(receiver.events().len(), expected.len());
    for (h, b) in receiver.got.lock().unwrap().iter() {
        let v: Value = serde_json::from_slice(b).unwrap();
        assert!(signed(h, &v, b, secret));
    }
}

#[test]
fn a_challenger_decides_for_its_share_of_cards_and_is_compared_as_labels_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/demo/model.fgb");
    // A share out of range stops the start naming the setting.
    let err = start(dir.path(), "[shadow]\ntraffic = 1.5\n")
        .err()
        .unwrap();
    assert!(err.contains("shadow.traffic"), "{err}");
    let cfg = format!(
        "{}shadow_model = {:?}\n\n[shadow]\ntraffic = 0.5\n",
        keys_config(dir.path()),
        model.to_str().unwrap()
    );
    let s = start(dir.path(), &cfg).unwrap();
    let mut arms = std::collections::HashMap::new();
    for i in 0..40u64 {
        let mut t = tx(
            &format!("cc-{i}"),
            if i % 4 == 0 { "900.00" } else { "20.00" },
        );
        t["card_number"] = json!(card_number(i % 20));
        let (st, v, _) = s.call("POST", "/v1/score", Some("fsk_score"), Some(&t));
        assert_eq!(st, 200, "{v}");
        let (_, rec, _) = s.call(
            "GET",
            &format!("/v1/decisions/cc-{i}"),
            Some("fsk_analyst"),
            None,
        );
        // Both scores recorded: the deciding model's in the answer, the other's in `shadow`.
        assert!(rec["shadow"]["score"].is_number(), "{rec}");
        assert_eq!(rec["response"]["score"], v["score"]);
        let arm = rec["arm"].as_str().unwrap_or_default().to_string();
        assert!(arm == "champion" || arm == "challenger", "{rec}");
        // A card always sees the same model.
        let prev = arms.insert(i % 20, arm.clone());
        assert!(prev.is_none_or(|p| p == arm), "card {} moved arms", i % 20);
    }
    let challengers = arms.values().filter(|a| *a == "challenger").count();
    assert!(challengers > 0 && challengers < 20, "{arms:?}");
    let labels: Vec<Value> = (0..40)
        .map(|i| json!({"transaction_id": format!("cc-{i}"), "is_fraud": i % 4 == 0}))
        .collect();
    let (st, l, _) = s.call(
        "POST",
        "/v1/labels",
        Some("fsk_analyst"),
        Some(&json!({ "labels": labels })),
    );
    assert_eq!(st, 200, "{l}");
    let (_, _, m) = s
        .try_request("GET", "/metrics", Some("fsk_analyst"), &[], b"")
        .unwrap();
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("fraud_arm_labelled 40"), "{m}");
    for arm in ["champion", "challenger"] {
        assert!(
            m.contains(&format!(
                "fraud_arm_quality{{arm=\"{arm}\",measure=\"auc\"}}"
            )),
            "{m}"
        );
        assert!(
            m.contains(&format!("fraud_arm_decisions_total{{arm=\"{arm}\"")),
            "{m}"
        );
    }
}
