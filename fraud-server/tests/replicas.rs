//! Several replicas, one system: `fraud serve` replicas sharing a real PostgreSQL store
//! (`[store] backend = "postgres"`) and a real Redis for entity state, no sticky routing.
//! PostgreSQL comes from Debian's packages (initdb into a temporary directory, on a free
//! port), as redis-server does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::*;

fn at(id: &str, minute: u32) -> Value {
    let mut t = tx(id, "10.00");
    t["timestamp"] = json!(format!("2024-05-01T10:{minute:02}:00Z"));
    t
}

fn count(s: &Server, key: &str, id: &str) -> f64 {
    let (st, rec, _) = s.call("GET", &format!("/v1/decisions/{id}"), Some(key), None);
    assert_eq!(st, 200, "{rec}");
    rec["features"]["card_txn_count_10m"].as_f64().unwrap()
}

fn verify_store(url: &str) -> (bool, String) {
    let o = fraud_cli(&["audit", "verify", "--store", url]);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn the_committer_finds_claims_by_their_index_whatever_the_statistics() {
    // A young store: a few claims, analyzed (as autovacuum does). The committer's one plan,
    // made now, must still find a batch's claims by their index: a sequential scan made
    // every statement read every claim as they piled up (a replica's throughput fell to a
    // third under load).
    let pg = Postgres::start();
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    fraud_server::testing::create_tables(&mut c).unwrap();
    c.batch_execute(
        "INSERT INTO fraud_claims (transaction_id, replica, lock_key)
             SELECT 'tx-' || g, 'r', 1 FROM generate_series(1, 50) g;
         ANALYZE fraud_claims; ANALYZE fraud_records;",
    )
    .unwrap();
    let plan = fraud_server::testing::commit_plan(&mut c).unwrap();
    assert!(plan.contains("fraud_claims_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

#[test]
fn replicas_on_postgres_and_redis_behave_as_one_service() {
    let mut pg = Postgres::start();
    let redis_port = free_port();
    let mut redis = redis_server(redis_port);
    let dir = tempfile::tempdir().unwrap();
    let (key, shared) = shared_keys(dir.path());
    // Every replica signs its chain's heads with the one audit key.
    let signing = dir.path().join("audit-signing.key");
    let out = fraud_cli(&["audit", "keygen", "--out", signing.to_str().unwrap()]);
    assert!(out.status.success());
    let public = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("public-key ").map(str::to_string))
        .unwrap();
    let shared = format!(
        "{shared}audit_signing_key_file = {:?}\naudit_sign_interval_s = 1\n",
        signing.to_str().unwrap()
    );
    let cfg = |replica: &str| {
        format!(
            "{shared}[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\nredis_timeout_ms = 1000\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\ntimeout_ms = 3000\n{replica}",
            pg.url()
        )
    };
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let a = replica(&da, &cfg("replica = \"a\"\n"));
    // The second replica's id is made once and kept in its data directory.
    let b = replica(&db, &cfg(""));

    // The same transaction on both: decided once, the second answer replayed.
    let (st, first, _) = a.call("POST", "/v1/score", Some(&key), Some(&at("x1", 0)));
    assert_eq!(st, 200, "{first}");
    assert!(first.get("replayed").is_none());
    let (st, again, _) = b.call("POST", "/v1/score", Some(&key), Some(&at("x1", 0)));
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["decision"], first["decision"]);
    assert_eq!(again["score"], first["score"]);
    // Read and labelled on the replica that did not decide.
    assert_eq!(count(&b, &key, "x1"), 0.0);
    let (st, l, _) = b.call(
        "POST",
        "/v1/labels",
        Some(&key),
        Some(&json!({"labels": [{"transaction_id": "x1", "is_fraud": false}]})),
    );
    assert_eq!(st, 200, "{l}");
    assert_eq!(l["accepted"], 1, "{l}");

    // One card, alternating replicas: the counts see every replica, x1 once.
    let (st, _, _) = b.call("POST", "/v1/score", Some(&key), Some(&at("x2", 1)));
    assert_eq!(st, 200);
    let (st, _, _) = a.call("POST", "/v1/score", Some(&key), Some(&at("x3", 2)));
    assert_eq!(st, 200);
    assert_eq!(count(&b, &key, "x3"), 2.0);

    // The same id sent to both at once: one decides, the other replays it or answers 409.
    let body = at("x4", 3);
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.call("POST", "/v1/score", Some(&key), Some(&body)));
        let tb = s.spawn(|| b.call("POST", "/v1/score", Some(&key), Some(&body)));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let decided = [&ra, &rb]
        .iter()
        .filter(|r| r.0 == 200 && r.1.get("replayed").is_none())
        .count();
    assert_eq!(decided, 1, "{ra:?} {rb:?}");
    for r in [&ra, &rb] {
        assert!(r.0 == 200 || r.0 == 409, "{r:?}");
    }
    let (st, _, _) = b.call("POST", "/v1/score", Some(&key), Some(&at("x5", 4)));
    assert_eq!(st, 200);
    assert_eq!(count(&a, &key, "x5"), 4.0, "x1..x4, each once");

    // A client that goes away once its request is sent (another card): the transaction is
    // still decided, so that its retry, on either replica, replays the decision.
    let mut gone = at("x5b", 4);
    gone["card_number"] = json!(card_number(7));
    {
        use std::io::Write as _;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", a.port)).unwrap();
        let bytes = gone.to_string();
        write!(
            s,
            "POST /v1/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{bytes}",
            bytes.len()
        )
        .unwrap();
    }
    wait_for(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || match b.call("GET", "/v1/decisions/x5b", Some(&key), None) {
            (200, _, _) => Ok(()),
            (st, v, _) => Err(format!("x5b not decided: {st} {v}")),
        },
    );
    let (st, again, _) = b.call("POST", "/v1/score", Some(&key), Some(&gone));
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["replayed"], true, "{again}");

    // A replica id runs once.
    let dup = start(&dir.path().join("c"), &cfg("replica = \"a\"\n"));
    assert!(dup.is_err(), "a second process took replica id a");

    // The whole store verifies, every replica's signed heads with the public key; an
    // altered record is named.
    let (ok, text) = verify_store(&pg.url());
    assert!(ok, "{text}");
    let o = fraud_cli(&[
        "audit",
        "verify",
        "--store",
        &pg.url(),
        "--public-key",
        &public,
    ]);
    let signed =
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{signed}");
    assert!(signed.contains("signed through record"), "{signed}");
    assert!(text.contains("2 replica(s)"), "{text}");
    assert!(text.contains("each decided once"), "{text}");

    // PostgreSQL restarts: a clear 503 meanwhile, then answers again without a restart of
    // the replicas; nothing acknowledged is lost.
    pg.kill();
    let started = Instant::now();
    let (st, p, _) = a.call("POST", "/v1/score", Some(&key), Some(&at("x6", 5)));
    assert_eq!(st, 503, "{p}");
    assert!(started.elapsed() < Duration::from_secs(10));
    pg.run();
    wait_for(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || match a.call("POST", "/v1/score", Some(&key), Some(&at("x6", 5))) {
            (200, _, _) => Ok(()),
            (st, v, _) => Err(format!("no recovery: {st} {v}")),
        },
    );
    assert_eq!(count(&b, &key, "x6"), 5.0);
    let (ok, text) = verify_store(&pg.url());
    assert!(ok, "{text}");

    // Redis loses its data: rebuilt from the store (every replica's records), x1 and x4 once.
    redis.kill();
    let _redis = redis_server(redis_port);
    let cfg_file = da.join("fraud.toml");
    let text = state_rebuild(&["--config", cfg_file.to_str().unwrap()]);
    assert!(text.contains("7 decisions"), "{text}");
    let (st, _, _) = b.call("POST", "/v1/score", Some(&key), Some(&at("x7", 6)));
    assert_eq!(st, 200);
    assert_eq!(count(&a, &key, "x7"), 6.0, "{text}");

    // A replica with a spec of one more feature reads the others' records by their own
    // feature set, kept in the store.
    let spec = wider_spec(dir.path());
    let wider = replica(
        &dir.path().join("c"),
        &format!(
            "feature_spec = {:?}\n{shared}[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\nreplica = \"c\"\n",
            spec.display().to_string(),
            pg.url()
        ),
    );
    let (st, rec, _) = wider.call("GET", "/v1/decisions/x7", Some(&key), None);
    assert_eq!(st, 200, "{rec}");
    assert_eq!(rec["features"]["card_txn_count_10m"], 6.0, "{rec}");
    assert!(
        rec["features"].get("merchant_txn_count_2h").is_none(),
        "{rec}"
    );
    drop(wider);

    // x1's decision on replica a, altered.
    let mut c = pg.client();
    let seq: i64 = c
        .query_one(
            "SELECT seq FROM fraud_records WHERE replica = 'a' AND kind = 'decision' AND transaction_id = 'x1'",
            &[],
        )
        .unwrap()
        .get(0);
    c.execute(
        "UPDATE fraud_records SET body = replace(body, '\"decision\":', '\"decision\": ') WHERE replica = 'a' AND seq = $1",
        &[&seq],
    )
    .unwrap();
    let (ok, text) = verify_store(&pg.url());
    assert!(!ok, "{text}");
    assert!(
        text.contains("replica a") && text.contains(&format!("record {seq} was altered")),
        "{text}"
    );
}

#[test]
fn a_replica_killed_mid_traffic_loses_nothing_and_counts_nothing_twice() {
    let pg = Postgres::start();
    let redis_port = free_port();
    let _redis = redis_server(redis_port);
    let dir = tempfile::tempdir().unwrap();
    let (key, shared) = shared_keys(dir.path());
    let cfg = format!(
        "{shared}[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\nredis_timeout_ms = 1000\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\n",
        pg.url()
    );
    let a = replica(&dir.path().join("a"), &cfg);
    let a_pid = a.child.id().to_string();
    let b = replica(&dir.path().join("b"), &cfg);
    // One card, one transaction a second; the client sends each to A until A dies mid-traffic,
    // then retries what A did not answer on B.
    const N: u32 = 120;
    let body = |i: u32| {
        let mut t = tx(&format!("k{i}"), "10.00");
        t["timestamp"] = json!(format!("2024-05-01T10:{:02}:{:02}Z", i / 60, i % 60));
        t
    };
    let answered_by_a = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let mut answered = Vec::new();
            for i in 0..N {
                let sent = a.try_request(
                    "POST",
                    "/v1/score",
                    Some(&key),
                    &[("content-type", "application/json")],
                    body(i).to_string().as_bytes(),
                );
                match sent {
                    Ok((200, _, _)) => answered.push(i),
                    Ok((st, _, b)) => panic!("k{i}: {st} {}", String::from_utf8_lossy(&b)),
                    // A died.
                    Err(_) => break,
                }
            }
            answered
        });
        // Killed once it has answered some: whatever it was doing then is cut short.
        wait_for(Duration::from_secs(60), Duration::from_millis(5), || {
            let n: i64 = pg
                .client()
                .query_one(
                    "SELECT count(*) FROM fraud_records WHERE kind = 'decision'",
                    &[],
                )
                .unwrap()
                .get(0);
            (n >= 20 || sender.is_finished())
                .then_some(())
                .ok_or_else(|| "replica a answered nothing".to_string())
        });
        let killed = std::process::Command::new("kill")
            .args(["-9", &a_pid])
            .status()
            .unwrap();
        assert!(killed.success());
        sender.join().unwrap()
    });
    assert!(answered_by_a.len() < N as usize, "A was killed too late");
    let first_unanswered = answered_by_a.len() as u32;
    for i in first_unanswered..N {
        // The one A was scoring when it died stays claimed (409, in flight) until the store
        // sees A's session gone: a client retries it, as it would.
        wait_for(
            Duration::from_secs(60),
            Duration::from_millis(50),
            || match b.call("POST", "/v1/score", Some(&key), Some(&body(i))) {
                (409, v, _) => Err(format!("k{i} still in flight: {v}")),
                (st, v, _) => {
                    assert_eq!(st, 200, "k{i}: {v}");
                    Ok(())
                }
            },
        );
    }
    // Every transaction decided exactly once, and counted once: the last one's 10-minute
    // count sees the 9 minutes and 59 seconds before it, one transaction a second.
    let decided: i64 = pg
        .client()
        .query_one(
            "SELECT count(DISTINCT transaction_id) FROM fraud_records WHERE kind = 'decision'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(decided, i64::from(N));
    let (ok, text) = verify_store(&pg.url());
    assert!(ok, "{text}");
    assert_eq!(count(&b, &key, &format!("k{}", N - 1)), f64::from(N - 1));

    // A model rollout: uploaded to one replica, followed by the others (a restarted one too).
    let c = replica(&dir.path().join("c"), &cfg);
    let model = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/demo/model.fgb"),
    )
    .unwrap();
    let (st, _, up) = c
        .try_request(
            "POST",
            "/v1/models?role=shadow",
            Some(&key),
            &[("Content-Type", "application/octet-stream")],
            &model,
        )
        .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&up));
    let version: Value = serde_json::from_slice(&up).unwrap();
    let version = version["model_version"].as_str().unwrap().to_string();
    let shadow_on_b = |i: u32| {
        let mut t = body(N + i);
        t["transaction_id"] = json!(format!("m{i}"));
        let (st, v, _) = b.call("POST", "/v1/score", Some(&key), Some(&t));
        assert_eq!(st, 200, "{v}");
        let (_, rec, _) = b.call("GET", &format!("/v1/decisions/m{i}"), Some(&key), None);
        rec["shadow"]["model_version"].as_str().map(str::to_string)
    };
    let mut i = 0;
    let mut next = || {
        i += 1;
        shadow_on_b(i)
    };
    wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        (next().as_deref() == Some(version.as_str()))
            .then_some(())
            .ok_or_else(|| "replica b never followed the upload".to_string())
    });
    // Removed on one replica: removed on the others.
    let (st, _, _) = c.call("DELETE", "/v1/models/shadow", Some(&key), None);
    assert_eq!(st, 204);
    wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        next()
            .is_none()
            .then_some(())
            .ok_or_else(|| "replica b kept the removed shadow".to_string())
    });
}

/// The RFC 6238 one-time code of a base32 `secret` at the current 30-second step.
fn one_time_code(secret: &str) -> String {
    use hmac::Mac;
    let key = data_encoding::BASE32_NOPAD
        .decode(secret.trim_end_matches('=').as_bytes())
        .unwrap();
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    format!("{:06}", bin % 1_000_000)
}

/// The value of cookie `name` a response sets.
fn set_cookie(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

/// A console page as the user of `session` sees it on `s`: status, headers, HTML.
fn page(s: &Server, path: &str, session: &str) -> (u16, Vec<(String, String)>, String) {
    let cookie = format!("fraud_session={session}");
    let (st, h, b) = s
        .try_request("GET", path, None, &[("Cookie", &cookie)], b"")
        .unwrap();
    (st, h, String::from_utf8_lossy(&b).to_string())
}

/// A console form posted with `session` to `s`.
fn post_form(
    s: &Server,
    path: &str,
    cookie: &str,
    form: &str,
) -> (u16, Vec<(String, String)>, String) {
    let (st, h, b) = s
        .try_request(
            "POST",
            path,
            None,
            &[
                ("Cookie", cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        )
        .unwrap();
    (st, h, String::from_utf8_lossy(&b).to_string())
}

/// A login on `s`: the session token, or the refusal page.
fn console_login(s: &Server, name: &str, password: &str, code: &str) -> Result<String, String> {
    let (st, h, _) = s
        .try_request("GET", "/console/login", None, &[], b"")
        .unwrap();
    assert_eq!(st, 200);
    let token = set_cookie(&h, "fraud_login").unwrap();
    let (st, h, body) = post_form(
        s,
        "/console/login",
        &format!("fraud_login={token}"),
        &format!(
            "csrf={token}&name={name}&password={}&code={code}",
            password.replace(' ', "+")
        ),
    );
    match set_cookie(&h, "fraud_session") {
        Some(session) if (300..400).contains(&st) => Ok(session),
        _ => Err(format!("{st} {body}")),
    }
}

/// Waits until `s`'s review queue, seen with `session`, lists case `id` (or no longer does).
fn until_queue(s: &Server, session: &str, id: &str, listed: bool) {
    wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        let (st, _, html) = page(s, "/console/", session);
        assert_eq!(st, 200, "{html}");
        (html.contains(&format!(" case {id}</span>")) == listed)
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "case {id} still {} the queue of {}",
                    if listed { "missing from" } else { "in" },
                    s.port
                )
            })
    });
}

#[test]
fn the_console_and_api_keys_are_one_across_replicas() {
    let pg = Postgres::start();
    let redis_port = free_port();
    let _redis = redis_server(redis_port);
    let dir = tempfile::tempdir().unwrap();
    let (key, shared) = shared_keys(dir.path());
    let users = dir.path().join("users");
    let password = "correct horse battery staple";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fraud"))
        .args([
            "users",
            "create",
            "--role",
            "analyst",
            "--name",
            "alice",
            "--password-stdin",
        ])
        .args(["--data-dir", users.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{password}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let secret = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("secret: ").map(str::to_string))
        .unwrap();
    let cfg = |replica: &str| {
        format!(
            "{shared}[thresholds]\nreview = 0.0\ndecline = 0.999\n[insider]\nmin_reads = 100000.0\n[console]\nenabled = true\nusers_file = {:?}\nmax_failures = 4\nlockout_s = 600\n[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\nreplica = \"{replica}\"\n",
            users.join("users.json").to_str().unwrap(),
            pg.url()
        )
    };
    let a = replica(&dir.path().join("a"), &cfg("a"));
    let b = replica(&dir.path().join("b"), &cfg("b"));

    // A review decided on replica a.
    let (st, answer, _) = a.call("POST", "/v1/score", Some(&key), Some(&at("c1", 0)));
    assert_eq!(st, 200, "{answer}");
    assert_eq!(answer["decision"], "review", "{answer}");

    // Logged in on b; the same one-time code is refused on a.
    let code = one_time_code(&secret);
    let session = console_login(&b, "alice", password, &code).unwrap();
    let replayed = console_login(&a, "alice", password, &code).unwrap_err();
    assert!(replayed.contains("used already"), "{replayed}");

    // b's queue shows a's case; the session made on b works on a.
    until_queue(&b, &session, "c1", true);
    let (st, _, html) = page(&a, "/console/cases/c1", &session);
    assert_eq!(st, 200, "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    // Closed on b: gone from both queues, labelled once for the whole service.
    let (st, _, body) = post_form(
        &b,
        "/console/cases/c1",
        &format!("fraud_session={session}"),
        &format!("csrf={csrf}&action=legit"),
    );
    assert!((300..400).contains(&st), "{st} {body}");
    until_queue(&b, &session, "c1", false);
    until_queue(&a, &session, "c1", false);
    let (st, read, _) = a.call("GET", "/v1/decisions/c1", Some(&key), None);
    assert_eq!(st, 200, "{read}");

    // Logged out on a: the session is over on b too.
    let (st, _, _) = post_form(
        &a,
        "/console/logout",
        &format!("fraud_session={session}"),
        &format!("csrf={csrf}"),
    );
    assert!((300..400).contains(&st));
    let (st, h, _) = page(&b, "/console/", &session);
    assert!((300..400).contains(&st), "{st}");
    assert_eq!(header(&h, "location"), Some("/console/login"));

    // One round of guesses for the whole service: the replayed code and three wrong
    // passwords, on a and b, lock alice out (four at most), then even the right password
    // and a fresh code are refused on a.
    for (i, s) in [&a, &b, &a].into_iter().enumerate() {
        let refused = console_login(s, "alice", "wrong wrong wrong", "000000").unwrap_err();
        let expected = if i < 2 { "Wrong user name" } else { "locked" };
        assert!(
            refused.starts_with("401") && refused.contains(expected),
            "{refused}"
        );
    }
    let locked = console_login(&a, "alice", password, &one_time_code(&secret)).unwrap_err();
    assert!(locked.contains("locked"), "{locked}");

    // An API key made in the store works on every replica; revoked there, on none.
    let url = pg.url();
    let out = fraud_cli(&[
        "keys", "create", "--store", &url, "--role", "analyst", "--name", "reader",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("fsk_"))
        .unwrap()
        .to_string();
    let answers = |s: &Server| s.call("GET", "/v1/decisions/c1", Some(&reader), None).0;
    let until = |want: u16| {
        for s in [&a, &b] {
            wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
                (answers(s) == want)
                    .then_some(())
                    .ok_or_else(|| format!("{} never answered {want}", s.port))
            });
        }
    };
    until(200);
    let out = fraud_cli(&["keys", "revoke", "--store", &url, "--name", "reader"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until(401);
    let out = fraud_cli(&["keys", "list", "--store", &url]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    let line = listed.lines().find(|l| l.starts_with("reader\t")).unwrap();
    assert!(line.contains("\trevoked\t"), "{listed}");
    // Its reads on both replicas are counted for the access review.
    let reads: u64 = line.rsplit('\t').next().unwrap().parse().unwrap();
    assert!(reads >= 2, "{line}");
    let again = fraud_cli(&[
        "keys", "create", "--store", &url, "--role", "score", "--name", "reader",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    // Erasure reaches every record wherever it was written: a customer decided on both
    // replicas and erased on b can no longer be read from either replica's records, on
    // either replica, and no row of the store names it.
    let forgotten = |id: &str, minute: u32| {
        let mut t = at(id, minute);
        t["customer_id"] = json!("customer-to-forget");
        t
    };
    let (st, _, _) = a.call("POST", "/v1/score", Some(&key), Some(&forgotten("e0", 10)));
    assert_eq!(st, 200);
    let (st, _, _) = b.call("POST", "/v1/score", Some(&key), Some(&forgotten("e1", 11)));
    assert_eq!(st, 200);
    let read = |s: &Server, id: &str| {
        s.call("GET", &format!("/v1/decisions/{id}"), Some(&key), None)
            .1
    };
    for s in [&a, &b] {
        for id in ["e0", "e1"] {
            assert_eq!(
                read(s, id)["transaction"]["customer_id"],
                "customer-to-forget"
            );
        }
    }
    let (st, v, _) = b.call(
        "DELETE",
        "/v1/entities/customer/customer-to-forget",
        Some(&key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["erased"], true, "{v}");
    for s in [&a, &b] {
        for id in ["e0", "e1"] {
            let rec = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
                let rec = read(s, id);
                rec["transaction"]["customer_id"]
                    .is_null()
                    .then_some(rec)
                    .ok_or_else(|| format!("{id} still names the customer on {}", s.port))
            });
            assert_eq!(
                rec["erased_fields"],
                json!(["transaction.customer_id"]),
                "{rec}"
            );
            assert_eq!(rec["transaction"]["merchant_id"], "M1", "{rec}");
        }
    }
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    for (table, column) in [("fraud_records", "body"), ("fraud_vault_keys", "entity")] {
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE {column} LIKE '%customer-to-forget%'"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} names the erased customer");
    }
    // The chains still verify.
    let (ok, report) = verify_store(&url);
    assert!(ok, "{report}");
    // A use after the erasure is a new entity, readable in its own record on both.
    let (st, _, _) = a.call("POST", "/v1/score", Some(&key), Some(&forgotten("e2", 12)));
    assert_eq!(st, 200);
    for s in [&a, &b] {
        assert_eq!(
            read(s, "e2")["transaction"]["customer_id"],
            "customer-to-forget"
        );
    }
}

#[test]
fn retention_removes_a_replicas_old_records_from_the_store_and_its_chain_still_verifies() {
    let pg = Postgres::start();
    let redis_port = free_port();
    let _redis = redis_server(redis_port);
    let dir = tempfile::tempdir().unwrap();
    let (key, shared) = shared_keys(dir.path());
    let url = pg.url();
    let cfg = format!(
        "{shared}retention = \"2s\"\nretention_check_s = 1\n[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\nreplica = \"r\"\n"
    );
    let r = replica(&dir.path().join("r"), &cfg);
    for (i, id) in ["d1", "d2"].into_iter().enumerate() {
        let (st, v, _) = r.call("POST", "/v1/score", Some(&key), Some(&at(id, i as u32)));
        assert_eq!(st, 200, "{v}");
    }
    let read = |s: &Server, id: &str| {
        s.call("GET", &format!("/v1/decisions/{id}"), Some(&key), None)
            .0
    };
    assert_eq!(read(&r, "d1"), 200);
    // Past the retention period the records go, and a retention record says which.
    wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        (read(&r, "d1") == 404)
            .then_some(())
            .ok_or_else(|| "d1 was never removed".to_string())
    });
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let row = db
        .query_one(
            "SELECT min(seq), count(*) FILTER (WHERE kind = 'retention') FROM fraud_records WHERE replica = 'r'",
            &[],
        )
        .unwrap();
    let (first, retentions): (i64, i64) = (row.get(0), row.get(1));
    assert!(first > 1 && retentions >= 1, "{first} {retentions}");
    let (ok, report) = verify_store(&url);
    assert!(ok, "{report}");
    // The entity keys only those records used go too (d1 and d2 named the same entities).
    let live_keys = |db: &mut postgres::Client| -> i64 {
        db.query_one(
            "SELECT count(*) FROM fraud_vault_keys WHERE NOT erased",
            &[],
        )
        .unwrap()
        .get(0)
    };
    wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        (live_keys(&mut db) == 0)
            .then_some(())
            .ok_or_else(|| "the unused keys were never dropped".to_string())
    });
    // The same entities again: the replica still holds their keys, and notes their use
    // with the record's batch, which keeps them again: a record is never written with a
    // key retention took. (Checked before retention can take the new record in turn; a
    // check that comes too late for it is made again.)
    let refs_of = |db: &mut postgres::Client, id: &str| -> Option<Vec<String>> {
        let row = db
            .query_opt(
                "SELECT body FROM fraud_records WHERE transaction_id = $1 AND kind = 'decision'",
                &[&id],
            )
            .unwrap()?;
        let body: String = row.get(0);
        let mut refs: Vec<String> = body
            .split("shred1:")
            .skip(1)
            .filter_map(|p| p.split(':').next().map(str::to_string))
            .collect();
        refs.sort();
        refs.dedup();
        Some(refs)
    };
    let mut checked = false;
    for attempt in 0..5 {
        let id = format!("d3-{attempt}");
        let (st, _, _) = r.call("POST", "/v1/score", Some(&key), Some(&at(&id, 5)));
        assert_eq!(st, 200);
        let Some(refs) = refs_of(&mut db, &id) else {
            continue;
        };
        let kept: i64 = db
            .query_one(
                "SELECT count(*) FROM fraud_vault_keys WHERE key_ref = ANY($1) AND NOT erased",
                &[&refs],
            )
            .unwrap()
            .get(0);
        if refs_of(&mut db, &id).is_none() {
            continue;
        }
        assert!(!refs.is_empty());
        assert_eq!(
            kept,
            refs.len() as i64,
            "a record names keys the store dropped"
        );
        checked = true;
        break;
    }
    assert!(checked, "every check came too late");
    // The replica restarts on what is left (without retention now, so that nothing more
    // goes meanwhile) and writes on.
    let (st, _, _) = r.call("POST", "/v1/score", Some(&key), Some(&at("d3", 5)));
    assert_eq!(st, 200);
    drop(r);
    let r = replica(
        &dir.path().join("r"),
        &cfg.replace("retention = \"2s\"\n", ""),
    );
    let (st, _, _) = r.call("POST", "/v1/score", Some(&key), Some(&at("d4", 6)));
    assert_eq!(st, 200);
    assert_eq!(read(&r, "d4"), 200);
    // An erasure marks the card's keys erased in the store (no key, no entity); they stay
    // so, whatever a batch in flight notes.
    let (_, d4, _) = r.call("GET", "/v1/decisions/d4", Some(&key), None);
    let token = d4["transaction"]["card"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v, _) = r.call(
        "DELETE",
        &format!("/v1/entities/card/{token}"),
        Some(&key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let erased: i64 = db
        .query_one(
            "SELECT count(*) FROM fraud_vault_keys WHERE erased AND key = '' AND entity = ''",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(erased >= 1);
    let (st, _, _) = r.call("POST", "/v1/score", Some(&key), Some(&at("d5", 7)));
    assert_eq!(st, 200);
    let (_, d4, _) = r.call("GET", "/v1/decisions/d4", Some(&key), None);
    assert!(d4["transaction"]["card"]["token"].is_null(), "{d4}");
    drop(r);
    let (ok, report) = verify_store(&url);
    assert!(ok, "{report}");
}

#[test]
fn replicas_share_a_redis_cluster() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, nodes) = redis_cluster(dir.path());
    let (key, shared) = shared_keys(dir.path());
    let cfg = |replica: &str| {
        format!(
            "{shared}[state]\nbackend = \"redis\"\nredis_cluster = {nodes:?}\nredis_timeout_ms = 2000\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\nreplica = \"{replica}\"\n",
            pg.url()
        )
    };
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let a = replica(&da, &cfg("a"));
    let b = replica(&db, &cfg("b"));
    // One card, alternating replicas: the counts see every replica.
    for (i, (s, id)) in [(&a, "k1"), (&b, "k2"), (&a, "k3")].into_iter().enumerate() {
        let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&at(id, i as u32)));
        assert_eq!(st, 200, "{v}");
    }
    assert_eq!(count(&b, &key, "k3"), 2.0);
    // The same id on the other replica: replayed, counted once.
    let (st, again, _) = b.call("POST", "/v1/score", Some(&key), Some(&at("k1", 0)));
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    let (st, _, _) = b.call("POST", "/v1/score", Some(&key), Some(&at("k4", 3)));
    assert_eq!(st, 200);
    assert_eq!(count(&a, &key, "k4"), 3.0);
    // Rebuilt from the store into the cluster: the next transaction counts the same.
    let text = state_rebuild(&["--config", da.join("fraud.toml").to_str().unwrap()]);
    assert!(text.contains("4 decisions"), "{text}");
    let (st, _, _) = a.call("POST", "/v1/score", Some(&key), Some(&at("k5", 4)));
    assert_eq!(st, 200);
    assert_eq!(count(&b, &key, "k5"), 4.0, "{text}");
}

#[test]
fn a_policy_drafted_on_one_replica_is_approved_on_another_and_decides_on_both() {
    let pg = Postgres::start();
    let redis_port = free_port();
    let _redis = redis_server(redis_port);
    let dir = tempfile::tempdir().unwrap();
    let (maker, shared) = shared_keys(dir.path());
    // A second admin, the checker.
    let checker = create_key(dir.path(), "checker", "admin");
    let cfg = |replica: &str| {
        format!(
            "{shared}[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\nreplica = \"{replica}\"\n",
            pg.url()
        )
    };
    let a = replica(&dir.path().join("a"), &cfg("a"));
    let b = replica(&dir.path().join("b"), &cfg("b"));
    // Both start on the configuration file's policy: one version 1.
    for s in [&a, &b] {
        let (_, live, _) = s.call("GET", "/v1/policy", Some(&maker), None);
        assert_eq!(live["version"], 1, "{live}");
    }
    let (st, d, _) = a.call(
        "POST",
        "/v1/policy/drafts",
        Some(&maker),
        Some(&json!({"policy": {"rules": [{"name": "big", "when": "tx.amount > 100.0", "action": "decline"}]}})),
    );
    assert_eq!(st, 201, "{d}");
    let id = d["draft"]["id"].as_str().unwrap().to_string();
    // The other replica sees the draft (it follows the store) and its checker approves it.
    wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
        let (_, drafts, _) = b.call("GET", "/v1/policy/drafts", Some(&checker), None);
        (drafts["drafts"][0]["draft"]["id"] == id.as_str())
            .then_some(())
            .ok_or_else(|| drafts.to_string())
    });
    let (st, v, _) = b.call(
        "POST",
        &format!("/v1/policy/drafts/{id}/approve"),
        Some(&checker),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], 2);
    // The replica that drafted it decides with it within seconds.
    wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
        let (_, live, _) = a.call("GET", "/v1/policy", Some(&maker), None);
        (live["version"] == 2)
            .then_some(())
            .ok_or_else(|| live.to_string())
    });
    let mut t = at("p1", 0);
    t["amount"] = json!("500.00");
    let (st, answer, _) = a.call("POST", "/v1/score", Some(&maker), Some(&t));
    assert_eq!(st, 200, "{answer}");
    assert_eq!(answer["rules_fired"], json!(["big"]), "{answer}");
    // A restarted replica keeps the store's latest version.
    drop(a);
    let a = replica(&dir.path().join("a"), &cfg("a"));
    let (_, live, _) = a.call("GET", "/v1/policy", Some(&maker), None);
    assert_eq!(live["version"], 2, "{live}");
    assert_eq!(live["approved_by"], "checker");
    drop((a, b));
    let (ok, report) = verify_store(&pg.url());
    assert!(ok, "{report}");
}

#[test]
fn a_replica_with_entity_state_in_memory_claims_in_the_shared_store() {
    // Memory state scores on the HTTP worker itself; the store's claim is still awaited
    // (the worker is not held while the committer claims), and works as with Redis.
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, shared) = shared_keys(dir.path());
    let s = replica(
        &dir.path().join("m"),
        &format!(
            "{shared}[limits]\nworkers = 1\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\nreplica = \"m\"\n",
            pg.url()
        ),
    );
    // Several at once on the one worker: each decided once.
    let answers: Vec<(u16, Value)> = std::thread::scope(|sc| {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let (s, key) = (&s, &key);
                sc.spawn(move || {
                    let (st, v, _) = s.call(
                        "POST",
                        "/v1/score",
                        Some(key),
                        Some(&at(&format!("m{i}"), i)),
                    );
                    (st, v)
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (st, v) in &answers {
        assert_eq!(*st, 200, "{v}");
        assert!(v.get("replayed").is_none(), "{v}");
    }
    let (st, again, _) = s.call("POST", "/v1/score", Some(&key), Some(&at("m3", 3)));
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    let decided: i64 = pg
        .client()
        .query_one(
            "SELECT count(*) FROM fraud_records WHERE kind = 'decision' AND replica = 'm'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(decided, 8);
}
