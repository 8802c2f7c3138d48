//! The scoring service, run for real: `fraud serve` on a free port with its own data
//! directory, driven over HTTP/1.1 through every endpoint and its error cases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::*;

#[test]
fn scores_records_and_reads_back_in_development_mode() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    // The key file is private and the key is never printed.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data/dev-api-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("t1", "25.00")));
    assert_eq!(st, 200, "{v}");
    for field in [
        "transaction_id",
        "decision",
        "score",
        "risk_score",
        "reasons",
        "rules_fired",
        "model_version",
        "card_mask",
        "elapsed_us",
    ] {
        assert!(v.get(field).is_some(), "{field} missing: {v}");
    }
    assert_eq!(v["card_mask"], "411111******1111");
    assert!(["approve", "review", "decline"].contains(&v["decision"].as_str().unwrap()));
    let score = v["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score));
    assert_eq!(
        v["risk_score"].as_i64().unwrap(),
        (score * 100.0).round() as i64
    );
    let reasons = v["reasons"].as_array().unwrap();
    assert!(!reasons.is_empty() && reasons.len() <= 5);
    assert!(reasons[0]["feature"].is_string() && reasons[0]["contribution"].is_f64());
    // A second use of the card a minute later sees the first in its features.
    let mut second = tx("t2", "900.00");
    second["timestamp"] = json!("2024-05-01T10:01:00Z");
    let (st, v2, _) = s.call("POST", "/v1/score", Some(&key), Some(&second));
    assert_eq!(st, 200, "{v2}");
    let (st, rec, _) = s.call("GET", "/v1/decisions/t2", Some(&key), None);
    assert_eq!(st, 200, "{rec}");
    assert_eq!(rec["features"]["card_txn_count_10m"], 1.0);
    assert_eq!(rec["response"]["decision"], v2["decision"]);
    assert!(rec["transaction"]["ip"].is_null() && rec["transaction"]["email"].is_null());
    // The same id again: the recorded answer, state untouched.
    let (st, again, _) = s.call("POST", "/v1/score", Some(&key), Some(&second));
    assert_eq!(st, 200);
    assert_eq!(again["replayed"], true);
    assert_eq!(again["score"], v2["score"]);
    let (st, p, h) = s.call("GET", "/v1/decisions/nope", Some(&key), None);
    assert_eq!(st, 404);
    assert_eq!(header(&h, "content-type"), Some("application/problem+json"));
    assert!(p["detail"].as_str().unwrap().contains("nope"));
    // Labels feed the state; unknown ids are listed.
    let (st, l, _) = s.call(
        "POST",
        "/v1/labels",
        Some(&key),
        Some(&json!({"labels": [{"transaction_id": "t2", "is_fraud": true}, {"transaction_id": "zz", "is_fraud": false}]})),
    );
    assert_eq!(st, 200, "{l}");
    assert_eq!(l, json!({"accepted": 1, "unknown": ["zz"], "erased": []}));
    // Batch: in order, one result each, errors in place.
    let batch = json!({"transactions": [tx("b1", "10.00"), tx("b2", "-1"), tx("b3", "12.50")]});
    let (st, b, _) = s.call("POST", "/v1/score/batch", Some(&key), Some(&batch));
    assert_eq!(st, 200, "{b}");
    let r = b["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["transaction_id"], "b1");
    assert_eq!(r[1]["error"]["field"], "amount");
    assert_eq!(r[2]["transaction_id"], "b3");
    // Metrics and the API description.
    let (st, _, _) = s.call("GET", "/metrics", Some(&key), None);
    assert_eq!(st, 200);
    let (_, _, body) = s
        .try_request("GET", "/metrics", Some(&key), &[], b"")
        .unwrap();
    let text = String::from_utf8(body).unwrap();
    for m in [
        "fraud_decisions_total{decision=",
        "fraud_http_requests_total{route=\"/v1/score\",status=\"200\"}",
        "fraud_scoring_duration_seconds_bucket",
        "fraud_feature_psi{feature=\"log_amount\"}",
        "fraud_model_info{role=\"active\"",
        "fraud_labels_total{label=\"fraud\"} 1",
        "fraud_score_bucket",
    ] {
        assert!(text.contains(m), "{m} missing from /metrics");
    }
    let (st, api, _) = s.call("GET", "/openapi.json", Some(&key), None);
    assert_eq!(st, 200);
    assert!(api["paths"]["/v1/score"]["post"].is_object());
    let (st, _, _) = s.call("GET", "/readyz", None, None);
    assert_eq!(st, 200);
    // The card number is nowhere: not in answers, files or the server's output.
    drop(s);
    for (path, bytes) in all_files(dir.path()) {
        assert!(!contains(&bytes, CARD), "card number in {}", path.display());
        assert!(
            !contains(&bytes, &key) || path.ends_with("dev-api-key"),
            "API key in {}",
            path.display()
        );
    }
}

#[test]
fn bad_requests_get_problem_details() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(
        dir.path(),
        // OS-buffered durability: the service scores on its HTTP workers (the inline path).
        "log_durability = \"write\"\n[limits]\nmax_body_bytes = 2048\nmax_batch = 2\n",
    )
    .unwrap();
    let key = s.key();
    let send = |body: &[u8], ct: &str| {
        s.try_request(
            "POST",
            "/v1/score",
            Some(&key),
            &[("Content-Type", ct)],
            body,
        )
        .unwrap()
    };
    // A good transaction with one field set to `v`.
    let with = |k: &str, v: &str| {
        let mut t = tx("x", "5");
        t[k] = json!(v);
        t.to_string().into_bytes()
    };
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (b"{not json".to_vec(), "application/json", 400, "body"),
        (vec![0xff, 0xfe, b'{'], "application/json", 400, "body"),
        (b"[]".to_vec(), "application/json", 400, "body"),
        (b"".to_vec(), "application/json", 400, "body"),
        (with("amount", "-5"), "application/json", 422, "amount"),
        (with("amount", "NaN"), "application/json", 422, "amount"),
        (with("amount", "1e400"), "application/json", 422, "amount"),
        (with("currency", "XXQ"), "application/json", 422, "currency"),
        (
            with("timestamp", "1890-01-01T00:00:00Z"),
            "application/json",
            422,
            "timestamp",
        ),
        (with("cvv", "123"), "application/json", 422, "cvv"),
        (with("colour", "red"), "application/json", 400, "body"),
        (
            with("latitude", "4111111111111111"),
            "application/json",
            400,
            "body",
        ),
        (
            with("card_number", "4111111111111112"),
            "application/json",
            422,
            "card_number",
        ),
        (
            format!("{{\"a\":\"{}\"}}", "x".repeat(4096)).into_bytes(),
            "application/json",
            413,
            "",
        ),
        (tx("x", "5").to_string().into_bytes(), "text/plain", 415, ""),
        ("[".repeat(3000).into_bytes(), "application/json", 413, ""),
        (
            "[".repeat(1500).into_bytes(),
            "application/json",
            400,
            "body",
        ),
    ];
    for (i, (body, ct, want, field)) in cases.iter().enumerate() {
        let (st, h, b) = send(body, ct);
        assert_eq!(st, *want, "case {i}: {}", String::from_utf8_lossy(&b));
        assert_eq!(
            header(&h, "content-type"),
            Some("application/problem+json"),
            "case {i}"
        );
        let p: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(p["status"], *want);
        assert!(!p["detail"].as_str().unwrap().is_empty());
        if !field.is_empty() {
            assert_eq!(p["errors"][0]["field"], *field, "case {i}: {p}");
        }
        assert!(
            !contains(&b, CARD) && !contains(&b, "4111111111111112"),
            "case {i} echoes a card number"
        );
    }
    // Batches over the limit; unknown endpoints; the server still scores afterwards.
    let (st, p, _) = s.call(
        "POST",
        "/v1/score/batch",
        Some(&key),
        Some(&json!({"transactions": [tx("a", "1"), tx("b", "1"), tx("c", "1")]})),
    );
    assert_eq!(st, 413, "{p}");
    let (st, _, _) = s.call("GET", "/v1/nothing", Some(&key), None);
    assert_eq!(st, 404);
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("good", "10.00")));
    assert_eq!(st, 200, "{v}");
}

#[test]
/// Roles are separate (least privilege): `admin` alone neither scores nor reads decisions; a
/// key holding several roles may do what each allows.
fn every_endpoint_checks_the_key_and_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(
        dir.path(),
        &[
            ("checkout", "fsk_score", &["score"]),
            ("analyst", "fsk_analyst", &["analyst"]),
            ("ops", "fsk_admin", &["admin"]),
            ("both", "fsk_both", &["score", "analyst"]),
        ],
    );
    let s = start(
        dir.path(),
        &format!("keys_file = {:?}\n", keys.to_str().unwrap()),
    )
    .unwrap();
    assert!(!dir.path().join("data/dev-api-key").exists());
    let (st, v, _) = s.call(
        "POST",
        "/v1/score",
        Some("fsk_score"),
        Some(&tx("k1", "5.00")),
    );
    assert_eq!(st, 200, "{v}");
    let endpoints: [(&str, &str, Option<Value>, &[&str]); 12] = [
        (
            "POST",
            "/v1/score",
            Some(tx("k2", "5.00")),
            &["fsk_score", "fsk_both"],
        ),
        (
            "POST",
            "/v1/score/batch",
            Some(json!({"transactions": []})),
            &["fsk_score", "fsk_both"],
        ),
        (
            "POST",
            "/v1/labels",
            Some(json!({"labels": []})),
            &["fsk_analyst", "fsk_both"],
        ),
        (
            "GET",
            "/v1/decisions/k1",
            None,
            &["fsk_analyst", "fsk_both"],
        ),
        ("DELETE", "/v1/models/shadow", None, &["fsk_admin"]),
        ("GET", "/metrics", None, &["fsk_analyst", "fsk_both"]),
        (
            "GET",
            "/openapi.json",
            None,
            &["fsk_score", "fsk_analyst", "fsk_admin", "fsk_both"],
        ),
        ("POST", "/v1/models?role=shadow", None, &["fsk_admin"]),
        (
            "GET",
            "/v1/policy",
            None,
            &["fsk_analyst", "fsk_admin", "fsk_both"],
        ),
        (
            "GET",
            "/v1/policy/versions",
            None,
            &["fsk_analyst", "fsk_admin", "fsk_both"],
        ),
        ("GET", "/v1/policy/drafts", None, &["fsk_admin"]),
        (
            "POST",
            "/v1/policy/drafts",
            Some(json!({"from_version": 1})),
            &["fsk_admin"],
        ),
    ];
    for (i, (method, path, body, allowed)) in endpoints.iter().enumerate() {
        for key in [
            None,
            Some("fsk_wrong"),
            Some("fsk_score"),
            Some("fsk_analyst"),
            Some("fsk_admin"),
            Some("fsk_both"),
        ] {
            let body = match (*path, body) {
                ("/v1/score", Some(b)) => {
                    let mut b = b.clone();
                    b["transaction_id"] = json!(format!("k2-{i}-{}", key.unwrap_or("none")));
                    Some(b)
                }
                _ => body.clone(),
            };
            let (st, v, _) = s.call(method, path, key, body.as_ref());
            let want_ok = key.is_some_and(|k| allowed.contains(&k));
            match key {
                None | Some("fsk_wrong") => assert_eq!(st, 401, "{method} {path} {key:?}: {v}"),
                _ if want_ok => {
                    assert!(st != 401 && st != 403, "{method} {path} {key:?}: {st} {v}")
                }
                _ => assert_eq!(st, 403, "{method} {path} {key:?}: {v}"),
            }
        }
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(s.call("GET", path, None, None).0, 200);
    }
}

#[test]
fn models_can_be_swapped_and_shadowed() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    let model =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/demo/model.fgb"))
            .unwrap();
    let (st, h, b) = s
        .try_request(
            "POST",
            "/v1/models?role=shadow",
            Some(&key),
            &[("Content-Type", "application/octet-stream")],
            &model,
        )
        .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let _ = h;
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("s1", "50.00")));
    assert_eq!(st, 200, "{v}");
    let (_, rec, _) = s.call("GET", "/v1/decisions/s1", Some(&key), None);
    assert_eq!(rec["shadow"]["model_version"], v["model_version"]);
    assert_eq!(rec["shadow"]["score"], v["score"]);
    // A broken artifact is refused and the active model keeps deciding.
    let (st, _, b) = s
        .try_request(
            "POST",
            "/v1/models",
            Some(&key),
            &[("Content-Type", "application/octet-stream")],
            b"not a model",
        )
        .unwrap();
    assert_eq!(st, 422, "{}", String::from_utf8_lossy(&b));
    let (st, _, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("s2", "50.00")));
    assert_eq!(st, 200);
    let (st, _, _) = s.call("DELETE", "/v1/models/shadow", Some(&key), None);
    assert_eq!(st, 204);
    let (_, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("s3", "50.00")));
    let (_, rec, _) = s.call("GET", "/v1/decisions/s3", Some(&key), None);
    assert!(rec["shadow"].is_null(), "{v}");
}

#[test]
fn shadow_rules_are_recorded_and_counted_but_never_act() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[[rules]]
name = "big_shadow"
when = "tx.amount > 100.0"
action = "decline"
mode = "shadow"
"#;
    let s = start(dir.path(), cfg).unwrap();
    let key = s.key();
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("s1", "500.00")));
    assert_eq!(st, 200, "{v}");
    // The thresholds decided (review 0.3, decline 0.7), the rule did not act, the answer
    // does not name it.
    let score = v["score"].as_f64().unwrap();
    let by_threshold = if score >= 0.7 {
        "decline"
    } else if score >= 0.3 {
        "review"
    } else {
        "approve"
    };
    assert_eq!(v["decision"], by_threshold, "{v}");
    assert_eq!(v["rules_fired"], json!([]));
    assert!(v.get("rules_shadow").is_none(), "{v}");
    let (_, small, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("s2", "5.00")));
    assert_eq!(small["rules_fired"], json!([]));
    // The record has it; the metrics count it, and its precision as labels arrive.
    let (st, rec, _) = s.call("GET", "/v1/decisions/s1", Some(&key), None);
    assert_eq!(st, 200, "{rec}");
    assert_eq!(rec["rules_shadow"], json!(["big_shadow"]));
    let (_, rec2, _) = s.call("GET", "/v1/decisions/s2", Some(&key), None);
    assert_eq!(rec2["rules_shadow"], json!([]));
    let metrics = || {
        let (_, _, body) = s
            .try_request("GET", "/metrics", Some(&key), &[], b"")
            .unwrap();
        String::from_utf8(body).unwrap()
    };
    assert!(
        metrics().contains("fraud_shadow_rule_fired_total{rule=\"big_shadow\"} 1"),
        "{}",
        metrics()
    );
    let (st, l, _) = s.call(
        "POST",
        "/v1/labels",
        Some(&key),
        Some(&json!({"labels": [{"transaction_id": "s1", "is_fraud": true}, {"transaction_id": "s2", "is_fraud": false}]})),
    );
    assert_eq!(st, 200, "{l}");
    let m = metrics();
    assert!(
        m.contains("fraud_shadow_rule_labelled_total{rule=\"big_shadow\",label=\"fraud\"} 1")
            && m.contains("fraud_shadow_rule_precision{rule=\"big_shadow\"} 1.0"),
        "{m}"
    );
}

#[test]
fn rules_lists_and_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"
[limits]
rate_per_key = 2.0
burst_per_key = 8.0

[[rules]]
name = "big_online_amount"
when = "tx.amount > 1000.0 && tx.channel == 'ecommerce'"
action = "decline"

[[rules]]
name = "many_recent_uses"
when = "features.card_txn_count_10m >= 3.0"
action = "review"

[lists.block]
devices = ["stolen-phone"]
"#;
    let s = start(dir.path(), cfg).unwrap();
    let key = s.key();
    let (_, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("r1", "1500.00")));
    assert_eq!(v["decision"], "decline", "{v}");
    assert_eq!(v["rules_fired"], json!(["big_online_amount"]));
    let mut blocked = tx("r2", "5.00");
    blocked["device_id"] = json!("stolen-phone");
    let (_, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&blocked));
    assert_eq!(v["decision"], "decline");
    assert_eq!(v["rules_fired"], json!(["block_list:device"]));
    // The burst is spent: 429 with Retry-After.
    let mut limited = None;
    for i in 0..10 {
        let (st, v, h) = s.call(
            "POST",
            "/v1/score",
            Some(&key),
            Some(&tx(&format!("r3-{i}"), "5.00")),
        );
        if st == 429 {
            limited = Some((v, header(&h, "retry-after").map(str::to_string)));
            break;
        }
    }
    let (p, retry) = limited.expect("no 429 after the burst");
    assert!(retry.is_some());
    assert_eq!(p["status"], 429);
}

#[test]
fn bad_configuration_stops_start_up_naming_the_setting() {
    let cases = [
        ("[limits]\nmax_batch = 0\n", "limits.max_batch"),
        ("[thresholds]\nreview = 0.9\ndecline = 0.5\n", "thresholds.review"),
        ("[[rules]]\nname = \"x\"\nwhen = \"score >\"\naction = \"decline\"\n", "rules[0]"),
        ("[[rules]]\nname = \"x\"\nwhen = \"features.no_such_feature > 1.0\"\naction = \"decline\"\n", "rules[0]"),
        ("[[rules]]\nname = \"x\"\nwhen = \"score\"\naction = \"decline\"\n", "rules[0]"),
        ("[[rules]]\nname = \"x\"\nwhen = \"score > 0.5\"\naction = \"block\"\n", "rules[0].action"),
        ("[state]\nbackend = \"etcd\"\n", "state.backend"),
        ("colour = \"red\"\n", "unknown field `colour`"),
        ("model = \"/nonexistent/model.fgb\"\n", "config: model"),
        ("[limits]\npin_workers = 2\n", "pin_workers"),
    ];
    for (cfg, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let err = start(dir.path(), cfg)
            .err()
            .expect("started with a bad config");
        assert!(err.contains(want), "{cfg}: {err}");
    }
}

#[test]
fn pinned_workers_each_run_on_one_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "[limits]\nworkers = 2\npin_workers = true\n").unwrap();
    let key = s.key();
    let (st, _, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("p1", "9.00")));
    assert_eq!(st, 200);
    let out = std::fs::read_to_string(&s.out).unwrap();
    assert_eq!(out.matches("HTTP worker pinned to CPU").count(), 2, "{out}");
    // Each worker thread may run on one CPU, a CPU of its own when there are two; the main
    // thread and the acceptor on every CPU they could before.
    let pid = s.child.id();
    let allowed = |status: &Path| -> Option<String> {
        let status = std::fs::read_to_string(status).ok()?;
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
        Some(cpus.trim().to_string())
    };
    let threads: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.unwrap().path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            Some((comm.trim().to_string(), allowed(&t.join("status"))?))
        })
        .collect();
    let main = allowed(Path::new(&format!("/proc/{pid}/status"))).unwrap();
    let mut workers: Vec<usize> = threads
        .iter()
        .filter(|(comm, _)| comm.starts_with("actix-rt|system"))
        .map(|(_, cpus)| cpus.parse().unwrap_or_else(|_| panic!("worker on {cpus}")))
        .collect();
    workers.sort();
    workers.dedup();
    // The service's main thread may use the CPUs this test may (it inherited them), e.g.
    // `0-3,6`; the workers take the first two.
    assert_eq!(
        Some(&main),
        allowed(Path::new("/proc/self/status")).as_ref()
    );
    let cpus: usize = main
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum();
    assert_eq!(workers.len(), cpus.min(2), "{threads:?}");
    for (comm, allowed) in &threads {
        if comm.starts_with("actix-server") {
            assert_eq!(allowed, &main, "{comm}");
        }
    }
}

#[test]
fn answered_decisions_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    let mut answered = Vec::new();
    for i in 0..20 {
        let (st, v, _) = s.call(
            "POST",
            "/v1/score",
            Some(&key),
            Some(&tx(&format!("c{i}"), "20.00")),
        );
        assert_eq!(st, 200);
        answered.push(v);
    }
    let mut s = s;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    drop(s);
    let s = start(dir.path(), "").unwrap();
    assert_eq!(s.key(), key, "the development key is kept across restarts");
    for v in &answered {
        let id = v["transaction_id"].as_str().unwrap();
        let (st, rec, _) = s.call("GET", &format!("/v1/decisions/{id}"), Some(&key), None);
        assert_eq!(st, 200, "{id} lost");
        assert_eq!(rec["response"]["score"], v["score"]);
    }
    // State came back too: the card's count includes the 20 before the kill.
    let mut next = tx("after", "20.00");
    next["timestamp"] = json!("2024-05-01T10:00:01Z");
    let (_, _, _) = s.call("POST", "/v1/score", Some(&key), Some(&next));
    let (_, rec, _) = s.call("GET", "/v1/decisions/after", Some(&key), None);
    assert_eq!(rec["features"]["card_txn_count_10m"], 20.0);
}

#[test]
fn serves_tls_1_2_and_newer_when_configured() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let cfg = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        dir.path().join("cert.pem").to_str().unwrap(),
        dir.path().join("key.pem").to_str().unwrap()
    );
    // start() probes /healthz in plain HTTP: that fails against TLS, so wait for the port.
    let port = free_port();
    std::fs::write(dir.path().join("fraud.toml"), &cfg).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fraud"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--config"])
        .arg(dir.path().join("fraud.toml"))
        .env("FRAUD_DATA_DIR", dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = |versions: &[&'static rustls::SupportedProtocolVersion]| {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        )
    };
    let get = |cfg: Arc<rustls::ClientConfig>| -> std::io::Result<String> {
        let mut sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(cfg, name).map_err(std::io::Error::other)?;
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = Err(std::io::Error::other("not started"));
    while Instant::now() < deadline {
        answer = get(client(&[&rustls::version::TLS13]));
        if answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = answer.unwrap();
    assert!(a.starts_with("HTTP/1.1 200") && a.contains("\"ok\""), "{a}");
    let a = get(client(&[&rustls::version::TLS12])).unwrap();
    assert!(a.starts_with("HTTP/1.1 200"), "TLS 1.2: {a}");
    // Plain HTTP on the TLS port gets no answer.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("\"ok\""));
    let _ = child.kill();
    let _ = child.wait();
    // A key that does not match is a start-up error naming the setting.
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
    std::fs::write(dir.path().join("key.pem"), other.key_pair.serialize_pem()).unwrap();
    let err = start(dir.path(), &cfg)
        .err()
        .expect("started with a mismatched key");
    assert!(err.contains("config: tls"), "{err}");
}

#[test]
fn sheds_load_past_its_capacity_with_503_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "[limits]\nmax_in_flight = 1\n").unwrap();
    let key = s.key();
    let port = s.port;
    let threads: Vec<_> = (0..24)
        .map(|i| {
            let key = key.clone();
            std::thread::spawn(move || {
                let body = tx(&format!("o{i}"), "10.00").to_string();
                let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let req = format!("POST /v1/score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                sock.write_all(req.as_bytes()).unwrap();
                let mut out = Vec::new();
                sock.read_to_end(&mut out).unwrap();
                String::from_utf8_lossy(&out).into_owned()
            })
        })
        .collect();
    let answers: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 200"))
        .count();
    let shed: Vec<&String> = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503"))
        .collect();
    assert_eq!(ok + shed.len(), answers.len(), "{answers:?}");
    assert!(
        ok >= 1 && !shed.is_empty(),
        "{ok} answered, {} shed",
        shed.len()
    );
    assert!(shed
        .iter()
        .all(|a| a.to_ascii_lowercase().contains("retry-after: 1")));
    // It recovers by itself.
    let (st, _, _) = s.call(
        "POST",
        "/v1/score",
        Some(&key),
        Some(&tx("after-load", "10.00")),
    );
    assert_eq!(st, 200);
}

#[test]
fn scores_with_entity_state_in_redis() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = redis_server(port);
    let cfg = format!("[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}/\"\nredis_timeout_ms = 500\n");
    let mut server = None;
    for _ in 0..50 {
        match start(dir.path(), &cfg) {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let s = server.expect("service with redis did not start");
    let key = s.key();
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("rd1", "10.00")));
    assert_eq!(st, 200, "{v}");
    let mut second = tx("rd2", "10.00");
    second["timestamp"] = json!("2024-05-01T10:02:00Z");
    let (st, _, _) = s.call("POST", "/v1/score", Some(&key), Some(&second));
    assert_eq!(st, 200);
    let (_, rec, _) = s.call("GET", "/v1/decisions/rd2", Some(&key), None);
    assert_eq!(rec["features"]["card_txn_count_10m"], 1.0);
    assert_eq!(s.call("GET", "/readyz", None, None).0, 200);
    // Redis gone: not ready, and scoring answers 503, never hangs.
    redis.kill();
    assert_eq!(s.call("GET", "/readyz", None, None).0, 503);
    let started = Instant::now();
    let (st, p, h) = s.call("POST", "/v1/score", Some(&key), Some(&tx("rd3", "10.00")));
    assert_eq!(st, 503, "{p}");
    assert!(header(&h, "retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn keys_are_created_listed_revoked_and_access_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys.json");
    let k = |args: &[&str]| {
        let mut all = vec!["keys"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--keys-file",
            keys.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        fraud_cli(&all)
    };
    let out = k(&["create", "--role", "score", "--name", "checkout"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let secret = text
        .lines()
        .find(|l| l.starts_with("fsk_"))
        .unwrap()
        .to_string();
    let out = k(&[
        "create",
        "--role",
        "analyst,admin",
        "--name",
        "ops",
        "--expires",
        "2999-01-01",
    ]);
    let ops = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("fsk_"))
        .unwrap()
        .to_string();
    assert!(
        !std::fs::read_to_string(&keys).unwrap().contains(&secret),
        "a key stored in clear"
    );
    assert!(
        !k(&["create", "--role", "score", "--name", "checkout"])
            .status
            .success(),
        "duplicate name"
    );
    assert!(!k(&["create", "--role", "root", "--name", "x"])
        .status
        .success());
    let s = start(
        dir.path(),
        &format!("keys_file = {:?}\n", keys.to_str().unwrap()),
    )
    .unwrap();
    for i in 0..3 {
        let (st, _, _) = s.call(
            "POST",
            "/v1/score",
            Some(&secret),
            Some(&tx(&format!("a{i}"), "5.00")),
        );
        assert_eq!(st, 200);
    }
    let (st, _, _) = s.call("GET", "/v1/decisions/a1", Some(&ops), None);
    assert_eq!(st, 200);
    let list = String::from_utf8_lossy(&k(&["list"]).stdout).to_string();
    let row = list.lines().find(|l| l.starts_with("checkout\t")).unwrap();
    assert!(
        row.contains("\tscore\t") && row.contains("\tactive\t") && row.ends_with("\t3\t0"),
        "{list}"
    );
    let row = list.lines().find(|l| l.starts_with("ops\t")).unwrap();
    assert!(
        row.contains("2999-01-01") && row.ends_with("\t0\t1"),
        "{list}"
    );
    let access = fraud_cli(&[
        "audit",
        "access",
        "--since",
        "2000-01-01",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let access = String::from_utf8_lossy(&access.stdout).to_string();
    assert!(
        access
            .lines()
            .any(|l| l.contains("\tops\tread decision a1")),
        "{access}"
    );
    drop(s);
    assert!(k(&["revoke", "--name", "checkout"]).status.success());
    let s = start(
        dir.path(),
        &format!("keys_file = {:?}\n", keys.to_str().unwrap()),
    )
    .unwrap();
    let (st, _, _) = s.call("POST", "/v1/score", Some(&secret), Some(&tx("a9", "5.00")));
    assert_eq!(st, 401, "a revoked key still works");
}

#[test]
fn audit_verify_names_the_altered_removed_or_cut_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    for i in 0..6 {
        s.call(
            "POST",
            "/v1/score",
            Some(&key),
            Some(&tx(&format!("v{i}"), "5.00")),
        );
    }
    drop(s);
    let log_dir = dir.path().join("data/log");
    let log = log_dir.join("decisions.log");
    let verify = |extra: &[&str]| audit_verify(&log_dir, extra);
    // Record 1 publishes the configuration file's policy as version 1; 2 to 7 are the
    // decisions.
    let (ok, msg) = verify(&[]);
    assert!(ok && msg.contains("intact, 7 records"), "{msg}");
    let head = String::from_utf8_lossy(
        &fraud_cli(&["audit", "head", dir.path().join("data").to_str().unwrap()]).stdout,
    )
    .to_string();
    let head_hash = head.split_whitespace().nth(1).unwrap().to_string();
    let original = std::fs::read(&log).unwrap();
    let lines: Vec<&[u8]> = original.split_inclusive(|&b| b == b'\n').collect();
    // One byte changed in record 4 (inside its JSON, a digit of the score).
    let mut edited = original.clone();
    let start4: usize = lines[..3].iter().map(|l| l.len()).sum();
    let at = start4
        + lines[3]
            .windows(8)
            .position(|w| w == b"\"score\":")
            .unwrap()
        + 9;
    edited[at] = if edited[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&log, &edited).unwrap();
    let (ok, msg) = verify(&[]);
    assert!(!ok && msg.contains("record 4 was altered"), "{msg}");
    // Record 3 removed.
    let removed: Vec<u8> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .flat_map(|(_, l)| l.to_vec())
        .collect();
    std::fs::write(&log, &removed).unwrap();
    let (ok, msg) = verify(&[]);
    assert!(!ok && msg.contains("records 3 to 3 were removed"), "{msg}");
    // Records 2 and 3 swapped.
    let mut swapped: Vec<&[u8]> = lines.clone();
    swapped.swap(1, 2);
    std::fs::write(&log, swapped.concat()).unwrap();
    let (ok, msg) = verify(&[]);
    assert!(!ok && msg.contains("record"), "{msg}");
    // Cut in the middle of the last record.
    std::fs::write(&log, &original[..original.len() - 10]).unwrap();
    let (ok, msg) = verify(&[]);
    assert!(!ok && msg.contains("record 7 is cut short"), "{msg}");
    // The last record removed whole: only the published head tells.
    let without_last: usize = lines[..6].iter().map(|l| l.len()).sum();
    std::fs::write(&log, &original[..without_last]).unwrap();
    assert!(verify(&[]).0);
    let (ok, msg) = verify(&["--head", &head_hash]);
    assert!(!ok && msg.contains("not in the log"), "{msg}");
    std::fs::write(&log, &original).unwrap();
    let (ok, msg) = verify(&["--head", &head_hash]);
    assert!(ok, "{msg}");
}

#[test]
fn production_mode_refuses_to_start_without_tls_keys_and_a_tokenization_key() {
    let dir = tempfile::tempdir().unwrap();
    let err = start(dir.path(), "production = true\n")
        .err()
        .expect("started in production without TLS");
    assert!(
        err.contains("config: tls: production mode needs TLS"),
        "{err}"
    );
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let tls = format!(
        "production = true\n[tls]\ncert = {:?}\nkey = {:?}\n",
        dir.path().join("cert.pem").to_str().unwrap(),
        dir.path().join("key.pem").to_str().unwrap()
    );
    let err = start(dir.path(), &tls)
        .err()
        .expect("started without a keys file");
    assert!(err.contains("config: keys_file"), "{err}");
    let keys = write_keys(dir.path(), &[("a", "fsk_a", &["admin"])]);
    let cfg = format!("keys_file = {:?}\n{tls}", keys.to_str().unwrap());
    let err = start(dir.path(), &cfg)
        .err()
        .expect("started without an encryption key");
    assert!(err.contains("config: encryption_key_file"), "{err}");
    let enc = dir.path().join("enc.key");
    std::fs::write(&enc, [3u8; 32]).unwrap();
    let cfg = format!(
        "keys_file = {:?}\nencryption_key_file = {:?}\n{tls}",
        keys.to_str().unwrap(),
        enc.to_str().unwrap()
    );
    let err = start(dir.path(), &cfg)
        .err()
        .expect("started without a tokenization key");
    assert!(err.contains("config: tokenization_key_file"), "{err}");
    assert!(
        !dir.path().join("data/dev-api-key").exists(),
        "a development key in production"
    );
}

#[test]
fn thousands_of_card_numbers_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "[limits]\nmax_batch = 100\n").unwrap();
    let key = s.key();
    let cards: Vec<String> = (0..2000u64).map(card_number).collect();
    let mut answers = Vec::new();
    // Batches of valid cards, single scores, and near-misses (one digit off: invalid).
    for (b, chunk) in cards[..1500].chunks(100).enumerate() {
        let txs: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut t = tx(&format!("b{b}-{i}"), "12.00");
                t["card_number"] = json!(c);
                t
            })
            .collect();
        let (st, v, _) = s.call(
            "POST",
            "/v1/score/batch",
            Some(&key),
            Some(&json!({"transactions": txs})),
        );
        assert_eq!(st, 200);
        answers.push(v.to_string());
    }
    for (i, c) in cards[1500..].iter().enumerate() {
        let mut t = tx(&format!("s{i}"), "30.00");
        t["card_number"] = json!(if i % 5 == 0 {
            // Luhn broken: refused, and the refusal does not echo it.
            let mut b = c.clone().into_bytes();
            b[15] = if b[15] == b'9' { b'0' } else { b[15] + 1 };
            String::from_utf8(b).unwrap()
        } else {
            c.clone()
        });
        let (_, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&t));
        answers.push(v.to_string());
        if i % 50 == 0 {
            let (_, rec, _) = s.call("GET", &format!("/v1/decisions/s{i}"), Some(&key), None);
            answers.push(rec.to_string());
        }
    }
    let (_, _, m) = s
        .try_request("GET", "/metrics", Some(&key), &[], b"")
        .unwrap();
    answers.push(String::from_utf8_lossy(&m).to_string());
    drop(s);
    // Every run of 12 to 19 digits anywhere (answers, files): none may be one of the cards.
    fn digit_runs(bytes: &[u8], out: &mut std::collections::HashSet<Vec<u8>>) {
        for run in bytes.split(|b| !b.is_ascii_digit()) {
            if (12..=19).contains(&run.len()) {
                out.insert(run.to_vec());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for a in &answers {
        digit_runs(a.as_bytes(), &mut seen);
    }
    for (_, bytes) in all_files(dir.path()) {
        digit_runs(&bytes, &mut seen);
    }
    let mut masks = 0;
    let joined = answers.join("\n");
    for c in &cards {
        assert!(!seen.contains(c.as_bytes()), "a card number was found");
        let mask = format!("{}******{}", &c[..6], &c[12..]);
        masks += usize::from(joined.contains(&mask));
    }
    assert!(masks > 1500, "masks are shown instead ({masks})");
}

#[test]
fn redis_outage_degrades_then_recovers_by_itself() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = redis_server(port);
    let cfg = format!("[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}/\"\nredis_timeout_ms = 300\non_unavailable = \"degrade\"\n");
    let mut server = None;
    for _ in 0..50 {
        if let Ok(s) = start(dir.path(), &cfg) {
            server = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = server.expect("service with redis did not start");
    let key = s.key();
    let at = |i: u32| {
        let mut t = tx(&format!("o{i}"), "10.00");
        t["timestamp"] = json!(format!("2024-05-01T10:{:02}:{:02}Z", i / 60, i % 60));
        t
    };
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&at(0)));
    assert_eq!(st, 200, "{v}");
    assert!(v.get("degraded").is_none());
    redis.kill();
    // Down: answered within the timeout, with stateless features, flagged.
    let started = Instant::now();
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&at(1)));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["degraded"], true);
    assert!(started.elapsed() < Duration::from_secs(3));
    let (_, rec, _) = s.call("GET", "/v1/decisions/o1", Some(&key), None);
    assert!(rec["features"]["card_txn_count_10m"].is_null(), "{rec}");
    // Ready, degraded: not "not ready" (it serves), and says so.
    let (st, v, _) = s.call("GET", "/readyz", None, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "degraded", "{v}");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("entity state"),
        "{v}"
    );
    // Back: normal answers again, with no restart of the service.
    let mut redis = redis_server(port);
    let mut normal = None;
    for i in 2..1200 {
        std::thread::sleep(Duration::from_millis(100));
        let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&at(i)));
        if st == 200 && v.get("degraded").is_none() {
            normal = Some(i);
            break;
        }
    }
    let i = normal.expect("the service did not return to normal when Redis came back");
    let (st, v, _) = s.call("GET", "/readyz", None, None);
    assert_eq!((st, v["status"].as_str()), (200, Some("ready")), "{v}");
    let (_, _, m) = s
        .try_request("GET", "/metrics", Some(&key), &[], b"")
        .unwrap();
    let text = String::from_utf8_lossy(&m).to_string();
    let degraded: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("fraud_degraded_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("fraud_degraded_total in /metrics");
    // o1, and any attempt made before redis-server listened again.
    assert!(degraded >= 1 && degraded < u64::from(i), "{degraded}");
    redis.kill();
}

#[test]
fn header_floods_and_slow_senders_do_not_stop_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    // 500 headers, then one header of 64 KiB: refused, the server stays up.
    let many: Vec<(String, String)> = (0..500)
        .map(|i| (format!("X-Flood-{i}"), "y".repeat(20)))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    // Refused with 431 / 400, or the connection closed: refused too.
    if let Ok((st, _, _)) = s.try_request("GET", "/healthz", None, &refs, b"") {
        assert!(st == 431 || st == 400, "{st}");
    }
    let big = "z".repeat(20 * 1024);
    let (st, h, _) = s
        .try_request("GET", "/healthz", None, &[("X-Big", big.as_str())], b"")
        .unwrap();
    assert_eq!(st, 431);
    assert_eq!(header(&h, "content-type"), Some("application/problem+json"));
    // Forty clients that send half a request and stall do not keep others out.
    let stalled: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            c.write_all(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n")
                .unwrap();
            c
        })
        .collect();
    let started = Instant::now();
    let (st, v, _) = s.call(
        "POST",
        "/v1/score",
        Some(&key),
        Some(&tx("after-flood", "10.00")),
    );
    assert_eq!(st, 200, "{v}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(stalled);
}

#[test]
fn insider_watch_throttles_a_key_reading_far_more_than_usual() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(
        dir.path(),
        "[insider]\nwindow_s = 60.0\nmin_reads = 5.0\nfactor = 3.0\n",
    )
    .unwrap();
    let key = s.key();
    let (st, _, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("w1", "5.00")));
    assert_eq!(st, 200);
    for _ in 0..5 {
        let (st, _, _) = s.call("GET", "/v1/decisions/w1", Some(&key), None);
        assert_eq!(st, 200);
    }
    let (st, p, h) = s.call("GET", "/v1/decisions/w1", Some(&key), None);
    assert_eq!(st, 429, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("far above its usual rate"),
        "{p}"
    );
    assert!(header(&h, "retry-after").is_some());
    let (st, _, _) = s.call("GET", "/v1/decisions/w1", Some(&key), None);
    assert_eq!(st, 429);
    // Scoring is not affected; one alert is recorded and counted.
    let (st, _, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("w2", "5.00")));
    assert_eq!(st, 200);
    let (_, _, m) = s
        .try_request("GET", "/metrics", Some(&key), &[], b"")
        .unwrap();
    let m = String::from_utf8_lossy(&m).to_string();
    assert!(
        m.contains("fraud_insider_alerts_total 1") && m.contains("fraud_insider_throttled_total 2"),
        "{m}"
    );
    drop(s);
    let access = fraud_cli(&[
        "audit",
        "access",
        "--since",
        "2000-01-01",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    let access = String::from_utf8_lossy(&access.stdout).to_string();
    assert_eq!(
        access.lines().filter(|l| l.contains("\talert ")).count(),
        1,
        "{access}"
    );
    assert!(start(dir.path(), "[insider]\nfactor = 0.5\n").is_err());
}

#[test]
fn tokenization_key_rotation_keeps_card_history() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("key-a"), dir.path().join("key-b"));
    std::fs::write(&a, [1u8; 32]).unwrap();
    std::fs::write(&b, [2u8; 32]).unwrap();
    let at = |id: &str, minute: u32| {
        let mut t = tx(id, "10.00");
        t["timestamp"] = json!(format!("2024-05-01T10:{minute:02}:00Z"));
        t
    };
    let count = |s: &Server, key: &str, id: &str| {
        let (_, rec, _) = s.call("GET", &format!("/v1/decisions/{id}"), Some(key), None);
        rec["features"]["card_txn_count_24h"].as_f64().unwrap()
    };
    let s = start(
        dir.path(),
        &format!("tokenization_key_file = {:?}\n", a.to_str().unwrap()),
    )
    .unwrap();
    let key = s.key();
    for i in 0..3 {
        assert_eq!(
            s.call(
                "POST",
                "/v1/score",
                Some(&key),
                Some(&at(&format!("k{i}"), i))
            )
            .0,
            200
        );
    }
    drop(s);
    // The new key alone: a new token, no history.
    let cfg_b = format!("tokenization_key_file = {:?}\n", b.to_str().unwrap());
    let s = start(dir.path(), &cfg_b).unwrap();
    s.call("POST", "/v1/score", Some(&key), Some(&at("n0", 10)));
    assert_eq!(count(&s, &key, "n0"), 0.0);
    drop(s);
    // Rotated with the old key kept as previous: the history moves to the new token... but
    // the new token already has one transaction (n0), so nothing moves for this card. A
    // second card shows the move.
    let mut other = at("o0", 0);
    other["card_number"] = json!("5555555555554444");
    let s = start(
        dir.path(),
        &format!("tokenization_key_file = {:?}\n", a.to_str().unwrap()),
    )
    .unwrap();
    assert_eq!(s.call("POST", "/v1/score", Some(&key), Some(&other)).0, 200);
    other["transaction_id"] = json!("o1");
    other["timestamp"] = json!("2024-05-01T10:01:00Z");
    assert_eq!(s.call("POST", "/v1/score", Some(&key), Some(&other)).0, 200);
    drop(s);
    let rotated = format!(
        "tokenization_key_file = {:?}\nprevious_tokenization_key_files = [{:?}]\n",
        b.to_str().unwrap(),
        a.to_str().unwrap()
    );
    let s = start(dir.path(), &rotated).unwrap();
    other["transaction_id"] = json!("o2");
    other["timestamp"] = json!("2024-05-01T10:02:00Z");
    assert_eq!(s.call("POST", "/v1/score", Some(&key), Some(&other)).0, 200);
    assert_eq!(
        count(&s, &key, "o2"),
        2.0,
        "the card's history under the old key was kept"
    );
    drop(s);
    // After a restart (state rebuilt from the log, the move replayed) the history holds.
    let s = start(dir.path(), &rotated).unwrap();
    other["transaction_id"] = json!("o3");
    other["timestamp"] = json!("2024-05-01T10:03:00Z");
    assert_eq!(s.call("POST", "/v1/score", Some(&key), Some(&other)).0, 200);
    assert_eq!(count(&s, &key, "o3"), 3.0);
    drop(s);
    let log = std::fs::read_to_string(dir.path().join("data/log/decisions.log")).unwrap();
    assert_eq!(log.matches("\"kind\":\"migrate\"").count(), 1);
    assert!(!log.contains("5555555555554444"));
}

#[test]
fn decision_log_and_snapshots_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("enc.key");
    std::fs::write(&key, [5u8; 32]).unwrap();
    let cfg = format!(
        "encryption_key_file = {:?}\n[state]\nsnapshot_interval_ms = 50\n",
        key.to_str().unwrap()
    );
    let s = start(dir.path(), &cfg).unwrap();
    let api = s.key();
    for i in 0..3 {
        let mut t = tx(&format!("secret-tx-{i}"), "42.00");
        t["timestamp"] = json!(format!("2024-05-01T10:0{i}:00Z"));
        t["merchant_id"] = json!("merchant-with-a-name");
        assert_eq!(s.call("POST", "/v1/score", Some(&api), Some(&t)).0, 200);
    }
    let (st, rec, _) = s.call("GET", "/v1/decisions/secret-tx-2", Some(&api), None);
    assert_eq!(st, 200);
    assert_eq!(rec["features"]["card_txn_count_24h"], 2.0);
    // Until a snapshot holds the three transactions (written every 50 ms).
    let snap_path = dir.path().join("data/state/state.bin");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !snap_path.exists() {
        assert!(Instant::now() < deadline, "no snapshot was written");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(s);
    let log = std::fs::read(dir.path().join("data/log/decisions.log")).unwrap();
    let snap = std::fs::read(dir.path().join("data/state/state.bin")).unwrap();
    for (name, bytes) in [("log", &log), ("snapshot", &snap)] {
        for plain in ["secret-tx-", "merchant-with-a-name", "tok_", "411111"] {
            assert!(!contains(bytes, plain), "{plain} in clear in the {name}");
        }
    }
    // The chain verifies without the key.
    let v = fraud_cli(&[
        "audit",
        "verify",
        dir.path().join("data/log").to_str().unwrap(),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // A restart with the key: snapshot and log decrypted, history intact.
    let s = start(dir.path(), &cfg).unwrap();
    let mut t = tx("secret-tx-3", "42.00");
    t["timestamp"] = json!("2024-05-01T10:03:00Z");
    assert_eq!(s.call("POST", "/v1/score", Some(&api), Some(&t)).0, 200);
    let (_, rec, _) = s.call("GET", "/v1/decisions/secret-tx-3", Some(&api), None);
    assert_eq!(rec["features"]["card_txn_count_24h"], 3.0);
    drop(s);
    // Another key cannot read it; a key kept in the data directory is refused.
    std::fs::write(&key, [6u8; 32]).unwrap();
    let err = start(dir.path(), &cfg)
        .err()
        .expect("started with the wrong key");
    assert!(err.contains("encryption key"), "{err}");
    let inside = dir.path().join("data/enc.key");
    std::fs::write(&inside, [5u8; 32]).unwrap();
    let err = start(
        dir.path(),
        &format!("encryption_key_file = {:?}\n", inside.to_str().unwrap()),
    )
    .err()
    .expect("started with the key inside the data directory");
    assert!(err.contains("inside the data directory"), "{err}");
}

#[test]
fn an_entity_is_erased_from_state_and_stays_erased_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    let at = |id: &str, minute: u32| {
        let mut t = tx(id, "10.00");
        t["timestamp"] = json!(format!("2024-05-01T10:{minute:02}:00Z"));
        t["customer_id"] = json!("customer-to-forget");
        t
    };
    let since = |s: &Server, id: &str| {
        let (_, rec, _) = s.call("GET", &format!("/v1/decisions/{id}"), Some(&key), None);
        rec["features"]["customer_seconds_since_last"].clone()
    };
    s.call("POST", "/v1/score", Some(&key), Some(&at("e0", 0)));
    s.call("POST", "/v1/score", Some(&key), Some(&at("e1", 1)));
    assert_eq!(since(&s, "e1"), 60.0);
    let customer_of = |s: &Server, id: &str| {
        let (_, rec, _) = s.call("GET", &format!("/v1/decisions/{id}"), Some(&key), None);
        rec
    };
    assert_eq!(
        customer_of(&s, "e0")["transaction"]["customer_id"],
        "customer-to-forget"
    );
    let (st, v, _) = s.call(
        "DELETE",
        "/v1/entities/customer/customer-to-forget",
        Some(&key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["erased"], true);
    let (st, _, _) = s.call("DELETE", "/v1/entities/planet/x", Some(&key), None);
    assert_eq!(st, 400);
    // The records written before the erasure can no longer name the customer (its key was
    // destroyed); the rest of them is intact.
    let e0 = customer_of(&s, "e0");
    assert!(e0["transaction"]["customer_id"].is_null(), "{e0}");
    assert_eq!(e0["erased_fields"], json!(["transaction.customer_id"]));
    assert_eq!(e0["transaction"]["merchant_id"], "M1");
    assert!(e0["transaction"]["card"]["token"].is_string());
    s.call("POST", "/v1/score", Some(&key), Some(&at("e2", 2)));
    assert!(
        since(&s, "e2").is_null(),
        "the customer's history survived the erasure"
    );
    // A use after the erasure is a new entity, readable in its own record.
    assert_eq!(
        customer_of(&s, "e2")["transaction"]["customer_id"],
        "customer-to-forget"
    );
    drop(s);
    // After a restart the log is replayed: the erasure is replayed too.
    let s = start(dir.path(), "").unwrap();
    s.call("POST", "/v1/score", Some(&key), Some(&at("e3", 3)));
    assert_eq!(since(&s, "e3"), 60.0, "only e2 came after the erasure");
    assert!(customer_of(&s, "e1")["transaction"]["customer_id"].is_null());
    drop(s);
    // No file holds the id in clear, and the chain is intact.
    for (path, bytes) in all_files(&dir.path().join("data")) {
        assert!(
            !contains(&bytes, "customer-to-forget"),
            "{} holds the id",
            path.display()
        );
    }
    let out = fraud_cli(&["audit", "verify", dir.path().join("data").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let log = std::fs::read_to_string(dir.path().join("data/log/decisions.log")).unwrap();
    let erase_line = log
        .lines()
        .find(|l| l.contains("\"kind\":\"erase\""))
        .unwrap();
    assert!(!erase_line.contains("customer-to-forget"));
    let keys = write_keys(dir.path(), &[("checkout", "fsk_c", &["score"])]);
    let s = start(
        dir.path(),
        &format!("keys_file = {:?}\n", keys.to_str().unwrap()),
    )
    .unwrap();
    let (st, _, _) = s.call("DELETE", "/v1/entities/customer/x", Some("fsk_c"), None);
    assert_eq!(st, 403);
}

#[test]
fn idle_entities_past_the_retention_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "[state]\nsnapshot_interval_ms = 50\n").unwrap();
    let key = s.key();
    let cards = |s: &Server| -> u64 {
        let (_, _, m) = s
            .try_request("GET", "/metrics", Some(&key), &[], b"")
            .unwrap();
        String::from_utf8_lossy(&m)
            .lines()
            .find_map(|l| l.strip_prefix("fraud_state_entities{kind=\"card\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let mut old = tx("old", "10.00");
    old["timestamp"] = json!("2024-01-01T10:00:00Z");
    old["card_number"] = json!("5555555555554444");
    assert_eq!(s.call("POST", "/v1/score", Some(&key), Some(&old)).0, 200);
    let mut recent = tx("recent", "10.00");
    recent["timestamp"] = json!("2024-01-20T10:00:00Z");
    assert_eq!(
        s.call("POST", "/v1/score", Some(&key), Some(&recent)).0,
        200
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(cards(&s), 2, "both within the 90-day retention");
    let mut later = tx("later", "10.00");
    later["timestamp"] = json!("2024-05-01T10:00:00Z");
    assert_eq!(s.call("POST", "/v1/score", Some(&key), Some(&later)).0, 200);
    // The first card was idle for 121 days: dropped (at the next eviction pass, with the
    // snapshots); the other (same card as `later`) kept.
    let deadline = Instant::now() + Duration::from_secs(120);
    while cards(&s) != 1 {
        assert!(Instant::now() < deadline, "the idle card was never dropped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cards(&s), 1);
}

#[test]
fn an_erased_card_is_unreadable_in_earlier_records_and_cannot_be_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    let (_, first, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("c0", "12.00")));
    let (_, rec, _) = s.call("GET", "/v1/decisions/c0", Some(&key), None);
    let token = rec["transaction"]["card"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rec["response"]["card_mask"], first["card_mask"]);
    let (st, v, _) = s.call(
        "DELETE",
        &format!("/v1/entities/card/{token}"),
        Some(&key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let (st, rec, _) = s.call("GET", "/v1/decisions/c0", Some(&key), None);
    assert_eq!(st, 200);
    assert!(rec["transaction"]["card"]["token"].is_null(), "{rec}");
    assert!(rec["response"]["card_mask"].is_null(), "{rec}");
    assert_eq!(rec["response"]["decision"], first["decision"]);
    let (st, v, _) = s.call(
        "POST",
        "/v1/labels",
        Some(&key),
        Some(&json!({"labels": [{"transaction_id": "c0", "is_fraud": true}]})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["accepted"], 0, "{v}");
    assert_eq!(v["erased"], json!(["c0"]), "{v}");
    drop(s);
    // The whole state rebuilt from the log alone (snapshot removed): the erased card's
    // records are skipped, and the service starts and scores.
    let _ = std::fs::remove_file(dir.path().join("data/state/state.bin"));
    let s = start(dir.path(), "").unwrap();
    assert_eq!(
        s.call("POST", "/v1/score", Some(&key), Some(&tx("c1", "13.00")))
            .0,
        200
    );
    let (_, rec, _) = s.call("GET", "/v1/decisions/c1", Some(&key), None);
    assert!(
        rec["features"]["card_seconds_since_last"].is_null(),
        "the erased card's history came back: {rec}"
    );
}

#[test]
fn retention_removes_old_log_segments_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let config = "retention = \"2s\"\nretention_check_s = 1\nlog_segment_bytes = 2048\n";
    let s = start(dir.path(), config).unwrap();
    let key = s.key();
    let log_dir = dir.path().join("data/log");
    for i in 0..12 {
        let mut t = tx(&format!("old{i}"), "10.00");
        t["timestamp"] = json!(format!("2024-05-01T10:{i:02}:00Z"));
        assert_eq!(s.call("POST", "/v1/score", Some(&key), Some(&t)).0, 200);
    }
    let segments = || std::fs::read_dir(&log_dir).unwrap().count();
    assert!(segments() > 3, "the log was not split into segments");
    assert_eq!(s.call("GET", "/v1/decisions/old0", Some(&key), None).0, 200);
    // Past the retention period, the closed segments go; a retention record says which.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.call("GET", "/v1/decisions/old0", Some(&key), None).0 != 404 {
        assert!(Instant::now() < deadline, "old records were never removed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut t = tx("new", "10.00");
    t["timestamp"] = json!("2024-05-01T10:30:00Z");
    let (st, _, _) = s.call("POST", "/v1/score", Some(&key), Some(&t));
    assert_eq!(st, 200);
    let (_, rec, _) = s.call("GET", "/v1/decisions/new", Some(&key), None);
    assert_eq!(
        rec["features"]["card_seconds_since_last"],
        19.0 * 60.0,
        "the state lost the card's history: {rec}"
    );
    let out = fraud_cli(&["audit", "verify", log_dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("removed by retention"), "{text}");
    drop(s);
    // A restart keeps the state (from the snapshot retention wrote) and the chain.
    let s = start(dir.path(), config).unwrap();
    let mut t = tx("after", "10.00");
    t["timestamp"] = json!("2024-05-01T10:31:00Z");
    s.call("POST", "/v1/score", Some(&key), Some(&t));
    let (_, rec, _) = s.call("GET", "/v1/decisions/after", Some(&key), None);
    assert_eq!(rec["features"]["card_seconds_since_last"], 60.0, "{rec}");
    drop(s);
    // Removing the oldest segment by hand is seen: no retention record accounts for it.
    let mut files: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("decisions-"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no closed segment left");
    std::fs::remove_file(&files[0]).unwrap();
    let out = fraud_cli(&["audit", "verify", log_dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        err.contains("no retention record accounts for them") || err.contains("were removed"),
        "{err}"
    );
}

#[test]
fn replicas_share_redis_state_count_each_transaction_once_and_rebuild_it() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = redis_server(port);
    let (key, shared) = shared_keys(dir.path());
    let cfg = format!(
        "{shared}[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}/\"\nredis_timeout_ms = 1000\n"
    );
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let a = replica(&da, &cfg);
    let b = replica(&db, &cfg);
    let at = |id: &str, minute: u32| {
        let mut t = tx(id, "10.00");
        t["timestamp"] = json!(format!("2024-05-01T10:{minute:02}:00Z"));
        t
    };
    let count = |s: &Server, id: &str| {
        let (st, rec, _) = s.call("GET", &format!("/v1/decisions/{id}"), Some(&key), None);
        assert_eq!(st, 200, "{rec}");
        rec["features"]["card_txn_count_10m"].as_f64().unwrap()
    };
    // One card, alternating replicas: each sees the others' transactions.
    for (s, id, minute) in [(&a, "x1", 0), (&b, "x2", 1), (&a, "x3", 2)] {
        let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&at(id, minute)));
        assert_eq!(st, 200, "{v}");
    }
    assert_eq!(count(&a, "x3"), 2.0);
    // x3 again, on the other replica (a retry routed elsewhere): answered, not counted twice.
    let (st, v, _) = b.call("POST", "/v1/score", Some(&key), Some(&at("x3", 2)));
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        count(&b, "x3"),
        2.0,
        "the retry saw the state without itself"
    );
    let (st, _, _) = b.call("POST", "/v1/score", Some(&key), Some(&at("x4", 3)));
    assert_eq!(st, 200);
    assert_eq!(count(&b, "x4"), 3.0, "x3 was counted twice");

    // Redis loses its data: rebuilt from both replicas' logs, with nothing counted twice
    // (x3 is in both logs).
    drop(a);
    drop(b);
    redis.kill();
    let mut redis = redis_server(port);
    let cfg_file = da.join("fraud.toml");
    let text = state_rebuild(&[
        "--config",
        cfg_file.to_str().unwrap(),
        "--data-dir",
        da.join("data").to_str().unwrap(),
        "--data-dir",
        db.join("data").to_str().unwrap(),
    ]);
    assert!(text.contains("5 decisions"), "{text}");
    let a = replica(&da, &cfg);
    let (st, _, _) = a.call("POST", "/v1/score", Some(&key), Some(&at("x5", 4)));
    assert_eq!(st, 200);
    assert_eq!(
        count(&a, "x5"),
        4.0,
        "the rebuilt state lost or doubled transactions"
    );
    // The memory backend is rebuilt at start; the tool says so rather than doing nothing.
    let mem = dir.path().join("memory.toml");
    std::fs::write(&mem, "").unwrap();
    let o = fraud_cli(&["state", "rebuild", "--config", mem.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("memory"));
    redis.kill();
}

#[test]
fn records_hold_feature_values_named_by_a_kept_feature_set() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    let mut second = tx("fs2", "10.00");
    second["timestamp"] = json!("2024-05-01T10:01:00Z");
    for t in [tx("fs1", "10.00"), second] {
        let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&t));
        assert_eq!(st, 200, "{v}");
    }
    // The records hold the values and their set's id, not the names: those are kept once,
    // beside the log.
    let log_dir = dir.path().join("data/log");
    let mut log = String::new();
    for e in std::fs::read_dir(&log_dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("decisions")
        {
            log.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
    assert!(log.contains("\"feature_set\":"), "{log}");
    assert!(!log.contains("card_txn_count_10m"), "{log}");
    let sets = std::fs::read_to_string(log_dir.join("feature-sets.json")).unwrap();
    assert!(sets.contains("card_txn_count_10m"), "{sets}");
    // Read back by name.
    let (st, rec, _) = s.call("GET", "/v1/decisions/fs2", Some(&key), None);
    assert_eq!(st, 200, "{rec}");
    assert_eq!(rec["features"]["card_txn_count_10m"], 1.0, "{rec}");
    assert!(rec.get("feature_set").is_none(), "{rec}");
    drop(s);
    // Restarted with a spec of one more feature: the earlier records keep their own names,
    // the new ones have the new feature.
    let spec = wider_spec(dir.path());
    let s = start(
        dir.path(),
        &format!("feature_spec = {:?}\n", spec.display().to_string()),
    )
    .unwrap();
    let (st, rec, _) = s.call("GET", "/v1/decisions/fs2", Some(&key), None);
    assert_eq!(st, 200, "{rec}");
    assert_eq!(rec["features"]["card_txn_count_10m"], 1.0, "{rec}");
    assert!(
        rec["features"].get("merchant_txn_count_2h").is_none(),
        "{rec}"
    );
    let mut third = tx("fs3", "10.00");
    third["timestamp"] = json!("2024-05-01T10:02:00Z");
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&third));
    assert_eq!(st, 200, "{v}");
    let (_, rec, _) = s.call("GET", "/v1/decisions/fs3", Some(&key), None);
    assert_eq!(rec["features"]["card_txn_count_10m"], 2.0, "{rec}");
    assert_eq!(rec["features"]["merchant_txn_count_2h"], 2.0, "{rec}");
    let sets: Value =
        serde_json::from_str(&std::fs::read_to_string(log_dir.join("feature-sets.json")).unwrap())
            .unwrap();
    assert_eq!(sets.as_object().unwrap().len(), 2, "{sets}");
}
