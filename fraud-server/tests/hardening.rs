//! What an outside security test found, each proved fixed against the real service: card
//! numbers in error bodies, URLs and id fields; short masks; erasure by card number;
//! idempotency scoped to the API key; duplicate JSON names; key revocation without a restart;
//! private files; model cost limits and streamed uploads; the torn-tail recovery record and
//! signed heads of the decision log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A Luhn-valid card number used only in hostile places.
const PAN: &str = "4556405440559871";

fn raw(s: &Server, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let (st, _, b) = s
        .try_request(
            method,
            path,
            key,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
    (st, String::from_utf8_lossy(&b).into_owned())
}

/// No card data in an error answer: no Luhn-valid 13-19 digit run in any spacing, and none
/// of the test card's digit groups.
fn assert_no_card(text: &str, what: &str) {
    assert!(
        !fraud_core::pii::holds_card_data(text),
        "card data in {what}: {text}"
    );
    assert_no_pan(text, what);
}

/// None of the test card's digit groups in `text` (for answers and outputs holding long
/// decimal numbers, such as scores, which may pass a Luhn check by chance).
fn assert_no_pan(text: &str, what: &str) {
    for part in [
        "45564054",
        "4556 4054",
        "4556-4054",
        "4055 9871",
        "4055-9871",
        "40559871",
    ] {
        assert!(!text.contains(part), "card digits in {what}: {text}");
    }
}

/// Sends `body` to `path`, asserts it is refused with 422 naming `field`, and that the answer
/// holds no card data; returns the answer.
fn refused_naming(s: &Server, key: &str, path: &str, body: &Value, field: &str) -> Value {
    let (st, v, _) = s.call("POST", path, Some(key), Some(body));
    assert_eq!(st, 422, "{path} {body}: {v}");
    assert_eq!(v["errors"][0]["field"], field, "{v}");
    assert_no_card(&v.to_string(), "the answer");
    v
}

fn body_with(field: &str, value: Value) -> String {
    let mut t = tx("h1", "10.00");
    t[field] = value;
    t.to_string()
}

#[test]
fn card_numbers_never_come_back_in_error_bodies_logs_or_metrics() {
    let (dir, s, key) = dev_service();
    let spaced = "4556 4054 4055 9871";
    let dashed = "4556-4054-4055-9871";
    let t = tx("h1", "10.00").to_string();
    let requests: Vec<(&str, String, String)> = vec![
        // A JSON number where a string is expected (serde quotes it with backticks).
        (
            "POST",
            "/v1/score".into(),
            t.replace(&format!("\"{CARD}\""), PAN),
        ),
        // An enum given a card number.
        ("POST", "/v1/score".into(), body_with("channel", json!(PAN))),
        (
            "POST",
            "/v1/score".into(),
            body_with("channel", json!(spaced)),
        ),
        // A card number as an unknown field's name.
        (
            "POST",
            "/v1/score".into(),
            t.replacen('{', &format!("{{\"{PAN}\":1,"), 1),
        ),
        (
            "POST",
            "/v1/score".into(),
            t.replacen('{', &format!("{{\"{dashed}\":1,"), 1),
        ),
        // ... given twice.
        (
            "POST",
            "/v1/score".into(),
            t.replacen('{', &format!("{{\"{PAN}\":1,\"{PAN}\":2,"), 1),
        ),
        // Other typed fields.
        (
            "POST",
            "/v1/score".into(),
            body_with("currency", json!(PAN)),
        ),
        (
            "POST",
            "/v1/score".into(),
            body_with("timestamp", json!(spaced)),
        ),
        ("POST", "/v1/score".into(), body_with("mcc", json!(PAN))),
        ("POST", "/v1/score".into(), body_with("ip", json!(dashed))),
        (
            "POST",
            "/v1/score".into(),
            body_with("amount", json!(format!("{PAN}x"))),
        ),
        (
            "POST",
            "/v1/score".into(),
            body_with("card_token", json!(PAN)),
        ),
        (
            "POST",
            "/v1/score".into(),
            body_with("latitude", json!(PAN)),
        ),
        (
            "POST",
            "/v1/score".into(),
            format!("{{\"transaction_id\": {PAN}"),
        ),
        // In a batch.
        (
            "POST",
            "/v1/score/batch".into(),
            format!(
                "{{\"transactions\": [{}]}}",
                t.replace(&format!("\"{CARD}\""), PAN)
            ),
        ),
        (
            "POST",
            "/v1/score/batch".into(),
            format!("{{\"transactions\": {PAN}}}"),
        ),
        // A label's id as a number, or as the number.
        (
            "POST",
            "/v1/labels".into(),
            format!("{{\"labels\": [{{\"transaction_id\": {PAN}, \"is_fraud\": true}}]}}"),
        ),
        (
            "POST",
            "/v1/labels".into(),
            format!("{{\"labels\": [{{\"transaction_id\": \"{spaced}\", \"is_fraud\": true}}]}}"),
        ),
        ("POST", "/v1/labels".into(), format!("{{\"{PAN}\": []}}")),
        // URLs.
        ("GET", format!("/v1/decisions/{PAN}"), String::new()),
        (
            "GET",
            "/v1/decisions/4556%204054%204055%209871".into(),
            String::new(),
        ),
        ("GET", format!("/v1/decisions/x{dashed}x"), String::new()),
        ("GET", format!("/{PAN}"), String::new()),
        ("GET", format!("/v1/decisions/a?q={PAN}"), String::new()),
        ("POST", format!("/v1/models?role={PAN}"), String::new()),
        (
            "POST",
            "/v1/models?role=4556+4054+4055+9871".into(),
            String::new(),
        ),
        ("DELETE", format!("/v1/entities/card/{PAN}"), String::new()),
        (
            "DELETE",
            format!("/v1/entities/customer/{spaced}").replace(' ', "%20"),
            String::new(),
        ),
        ("DELETE", format!("/v1/entities/{PAN}/x"), String::new()),
        // Erasure bodies.
        (
            "POST",
            "/v1/entities/erase".into(),
            format!("{{\"kind\": \"{PAN}\", \"id\": \"x\"}}"),
        ),
        (
            "POST",
            "/v1/entities/erase".into(),
            format!("{{\"kind\": \"card\", \"card_number\": {PAN}}}"),
        ),
        (
            "POST",
            "/v1/entities/erase".into(),
            format!("{{\"kind\": \"customer\", \"id\": \"{PAN}\"}}"),
        ),
    ];
    for (method, path, body) in &requests {
        let (st, text) = raw(&s, method, path, Some(&key), body);
        assert!(
            (400..500).contains(&st) || (st == 200 && path.contains("batch")),
            "{method} {path} {body}: {st} {text}"
        );
        if path.contains("batch") && st == 200 {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v["results"][0]["error"].is_object(), "{text}");
            assert_no_card(&v["results"][0].to_string(), "a batch error");
            assert_no_pan(&text, "a batch answer");
        } else {
            assert_no_card(&text, &format!("the answer to {method} {path}"));
        }
    }
    // Unauthenticated, the same.
    let (st, text) = raw(&s, "GET", &format!("/v1/decisions/{PAN}"), None, "");
    assert!((400..500).contains(&st));
    assert_no_card(&text, "an unauthenticated answer");
    // A card number in a URL is refused before routing, whatever the path.
    let (st, text) = raw(&s, "GET", &format!("/v1/decisions/{PAN}"), Some(&key), "");
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("card number"), "{text}");
    // Nothing in the metrics or the service's own output either.
    let (_, metrics) = raw(&s, "GET", "/metrics", Some(&key), "");
    assert_no_pan(&metrics, "/metrics");
    let out = std::fs::read_to_string(&s.out).unwrap();
    assert_no_card(&out, "the service's log");
    assert_no_file_holds(&dir.path().join("data"), &[PAN, spaced, dashed]);
}

#[test]
fn card_numbers_in_other_fields_are_refused_by_name() {
    let (dir, s, key) = dev_service();
    let forms = [
        PAN.to_string(),
        "4556 4054 4055 9871".into(),
        "4556-4054-4055-9871".into(),
        format!("order-{PAN}"),
        format!(";{PAN}=25121010000000000000?"),
        "%B4556405440559872^DOE/JOHN^2512101".into(),
    ];
    let fields = [
        "transaction_id",
        "merchant_id",
        "customer_id",
        "device_id",
        "terminal_id",
        "email",
    ];
    for (i, form) in forms.iter().enumerate() {
        for field in fields {
            let value = if field == "email" {
                format!("{form}@example.com")
            } else {
                form.clone()
            };
            let mut t = tx(&format!("f{i}-{field}"), "10.00");
            t[field] = json!(value);
            refused_naming(&s, &key, "/v1/score", &t, field);
            // In a batch: the same error in its place, the others scored.
            let (st, v, _) = s.call(
                "POST",
                "/v1/score/batch",
                Some(&key),
                Some(&json!({"transactions": [t, tx(&format!("ok{i}-{field}"), "10.00")]})),
            );
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["results"][0]["error"]["status"], 422, "{v}");
            assert_eq!(v["results"][0]["error"]["field"], field, "{v}");
            assert!(v["results"][1]["decision"].is_string(), "{v}");
            assert_no_card(&v["results"][0].to_string(), "the batch's error");
            assert_no_pan(&v.to_string(), "the batch answer");
        }
        // In a label.
        refused_naming(
            &s,
            &key,
            "/v1/labels",
            &json!({"labels": [{"transaction_id": form, "is_fraud": true}]}),
            "labels[0].transaction_id",
        );
    }
    // Ids that merely have digits are fine (12 digits, or 16 failing the Luhn check).
    for id in ["123456789012", "1234567812345678", "2024-05-01-000123"] {
        let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx(id, "1.00")));
        assert_eq!(st, 200, "{id}: {v}");
    }
    assert_no_file_holds(&dir.path().join("data"), &["45564054"]);
}

#[test]
fn card_holders_are_erased_by_a_card_number_in_the_body() {
    let (_dir, s, key) = dev_service();
    for i in 0..3 {
        let mut t = tx(&format!("e{i}"), "10.00");
        t["timestamp"] = json!(format!("2024-05-01T10:0{i}:00Z"));
        assert_eq!(s.call("POST", "/v1/score", Some(&key), Some(&t)).0, 200);
    }
    let (_, rec, _) = s.call("GET", "/v1/decisions/e2", Some(&key), None);
    assert_eq!(rec["features"]["card_txn_count_24h"], 2.0, "{rec}");
    // In a URL: refused without echo, nothing erased.
    let (st, text) = raw(
        &s,
        "DELETE",
        &format!("/v1/entities/card/{CARD}"),
        Some(&key),
        "",
    );
    assert_eq!(st, 400, "{text}");
    assert!(!text.contains("411111"), "{text}");
    // A card named by something that is not its token: refused, not a silent no-op.
    let (st, v, _) = s.call("DELETE", "/v1/entities/card/not-a-token", Some(&key), None);
    assert_eq!(st, 422, "{v}");
    // In the body: tokenized on arrival, the state removed, the records unreadable.
    let (st, v, _) = s.call(
        "POST",
        "/v1/entities/erase",
        Some(&key),
        Some(&json!({"kind": "card", "card_number": "4111 1111 1111 1111"})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["erased"], true, "{v}");
    assert_eq!(v["card_mask"], "411111******1111");
    let (_, rec, _) = s.call("GET", "/v1/decisions/e2", Some(&key), None);
    assert!(rec["transaction"]["card"]["token"].is_null(), "{rec}");
    let mut t = tx("e3", "10.00");
    t["timestamp"] = json!("2024-05-01T10:05:00Z");
    assert_eq!(s.call("POST", "/v1/score", Some(&key), Some(&t)).0, 200);
    let (_, rec, _) = s.call("GET", "/v1/decisions/e3", Some(&key), None);
    assert_eq!(rec["features"]["card_txn_count_24h"], 0.0, "{rec}");
    // Bad erasure bodies name the field.
    for (body, field) in [
        (
            json!({"kind": "card", "card_number": "4111111111111112"}),
            "card_number",
        ),
        (
            json!({"kind": "customer", "card_number": CARD}),
            "card_number",
        ),
        (json!({"kind": "customer"}), "id"),
        (json!({"kind": "customer", "id": PAN}), "id"),
    ] {
        refused_naming(&s, &key, "/v1/entities/erase", &body, field);
    }
    let (st, v, _) = s.call(
        "POST",
        "/v1/entities/erase",
        Some(&key),
        Some(&json!({"kind": "customer", "id": "C1"})),
    );
    assert_eq!(st, 200, "{v}");
}

#[test]
fn masks_of_short_card_numbers_hide_at_least_six_digits() {
    let (_dir, s, key) = dev_service();
    for (card, mask) in [
        ("675971113344", "67******3344"),
        ("4111111111111111", "411111******1111"),
        ("378282246310005", "37828******0005"),
    ] {
        let mut t = tx(&format!("m{}", card.len()), "10.00");
        t["card_number"] = json!(card);
        let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&t));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["card_mask"], mask);
    }
}

#[test]
fn a_transaction_id_is_an_idempotency_key_of_one_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(
        dir.path(),
        &[
            ("shop-a", "fsk_a", &["score"]),
            ("shop-b", "fsk_b", &["score"]),
        ],
    );
    let s = start(
        dir.path(),
        &format!("keys_file = {:?}\n", keys.to_str().unwrap()),
    )
    .unwrap();
    let first = tx("same-id", "25.00");
    let (st, a, _) = s.call("POST", "/v1/score", Some("fsk_a"), Some(&first));
    assert_eq!(st, 200, "{a}");
    // The same key and body again: the recorded answer.
    let (st, again, _) = s.call("POST", "/v1/score", Some("fsk_a"), Some(&first));
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["replayed"], true);
    assert_eq!(again["score"], a["score"]);
    // The same id with another body, or from another key: 409, nothing of the first answer.
    let mut changed = first.clone();
    changed["amount"] = json!("999.00");
    let mut other_card = first.clone();
    other_card["card_number"] = json!("5555555555554444");
    for (k, body) in [
        ("fsk_a", &changed),
        ("fsk_b", &first),
        ("fsk_b", &other_card),
    ] {
        let (st, v, _) = s.call("POST", "/v1/score", Some(k), Some(body));
        assert_eq!(st, 409, "{k}: {v}");
        let text = v.to_string();
        assert!(
            !text.contains("411111") && !text.contains("555555"),
            "{text}"
        );
        assert!(
            v.get("score").is_none() && v.get("decision").is_none(),
            "{text}"
        );
        assert!(!text.contains(&a["score"].to_string()), "{text}");
    }
    // The other key's own transaction is scored under its own id.
    let (st, v, _) = s.call(
        "POST",
        "/v1/score",
        Some("fsk_b"),
        Some(&tx("b-own", "5.00")),
    );
    assert_eq!(st, 200, "{v}");
}

#[test]
fn duplicate_names_in_a_json_object_are_refused() {
    let (_dir, s, key) = dev_service();
    let t = tx("dup", "1.00").to_string();
    let dup = t.replacen('{', "{\"amount\":\"1000.00\",", 1);
    let (st, text) = raw(&s, "POST", "/v1/score", Some(&key), &dup);
    assert_eq!(st, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["errors"][0]["field"], "amount", "{v}");
    let (st, text) = raw(
        &s,
        "POST",
        "/v1/score/batch",
        Some(&key),
        &format!("{{\"transactions\": [{dup}]}}"),
    );
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["results"][0]["error"]["status"], 400, "{v}");
    assert_eq!(v["results"][0]["error"]["field"], "amount", "{v}");
    let (st, text) = raw(
        &s,
        "POST",
        "/v1/labels",
        Some(&key),
        r#"{"labels": [{"transaction_id": "x", "is_fraud": false, "is_fraud": true}]}"#,
    );
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("is_fraud"), "{text}");
    // Nothing was scored.
    let (st, _, _) = s.call("GET", "/v1/decisions/dup", Some(&key), None);
    assert_eq!(st, 404);
}

/// Polls `f` until it is true (the event a test waits for), up to two minutes.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "waited two minutes for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn key_changes_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let keys_arg = keys.to_str().unwrap();
    let create = |name: &str| {
        let o = fraud_cli(&[
            "keys",
            "create",
            "--role",
            "score",
            "--name",
            name,
            "--keys-file",
            keys_arg,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(out.contains("within"), "{out}");
        out.lines()
            .find(|l| l.starts_with("fsk_"))
            .unwrap()
            .to_string()
    };
    let a = create("a");
    let s = start(dir.path(), &format!("keys_file = {keys_arg:?}\n")).unwrap();
    let score = |k: &str, id: &str| {
        s.call("POST", "/v1/score", Some(k), Some(&tx(id, "1.00")))
            .0
    };
    assert_eq!(score(&a, "k0"), 200);
    let o = fraud_cli(&["keys", "revoke", "--name", "a", "--keys-file", keys_arg]);
    assert!(o.status.success());
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        said.contains("within") && said.contains("no restart"),
        "{said}"
    );
    let mut n = 0;
    wait_for("the revoked key to be refused", || {
        n += 1;
        score(&a, &format!("k{n}")) == 401
    });
    let b = create("b");
    wait_for("the new key to be accepted", || {
        n += 1;
        score(&b, &format!("k{n}")) == 200
    });
    assert_eq!(score(&a, "after"), 401);
    // A broken keys file leaves the keys in use as they were.
    std::fs::write(&keys, "not json").unwrap();
    let out = s.out.clone();
    wait_for("the warning about the keys file", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("API keys not reloaded")
    });
    assert_eq!(score(&b, "still"), 200);
}

/// File and directory modes under `dir`.
fn modes(dir: &Path) -> Vec<(std::path::PathBuf, u32, bool)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), m.permissions().mode() & 0o777, m.is_dir()));
        if m.is_dir() {
            out.extend(modes(&p));
        }
    }
    out
}

#[test]
fn every_file_is_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("old")).unwrap();
    // Left world-readable by an older version: made private at start.
    std::fs::write(data.join("old/notes.json"), "{}").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("old/notes.json"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let s = start_with_umask(dir.path(), "[state]\nsnapshot_interval_ms = 50\n", "000").unwrap();
    let key = s.key();
    for i in 0..3 {
        assert_eq!(
            s.call(
                "POST",
                "/v1/score",
                Some(&key),
                Some(&tx(&format!("p{i}"), "3.00"))
            )
            .0,
            200
        );
    }
    let model =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/demo/model.fgb"))
            .unwrap();
    let (st, _, b) = s
        .try_request("POST", "/v1/models?role=shadow", Some(&key), &[], &model)
        .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    wait_for("a state snapshot", || data.join("state/state.bin").exists());
    let all = modes(&data);
    assert!(all.len() > 6, "{all:?}");
    for (p, mode, is_dir) in all {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", p.display());
    }
}

#[test]
fn production_refuses_key_files_others_can_read_or_inside_the_data_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let file = |name: &str, bytes: &[u8], mode: u32| {
        let p = dir.path().join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cert_p = file("cert.pem", cert.cert.pem().as_bytes(), 0o644);
    let tls_key = file("tls.key", cert.key_pair.serialize_pem().as_bytes(), 0o600);
    let keys = file("keys.json", b"{\"keys\": []}", 0o600);
    let enc = file("enc.key", &[3u8; 32], 0o600);
    let tok = file("tok.key", &[4u8; 32], 0o600);
    let config = |tok: &str, sign: Option<&str>| {
        let mut c = format!(
            "production = true\nkeys_file = {keys:?}\nencryption_key_file = {enc:?}\ntokenization_key_file = {tok:?}\n"
        );
        if let Some(sg) = sign {
            c.push_str(&format!("audit_signing_key_file = {sg:?}\n"));
        }
        c.push_str(&format!("[tls]\ncert = {cert_p:?}\nkey = {tls_key:?}\n"));
        c
    };
    let err = start(dir.path(), &config(&tok, None))
        .err()
        .expect("started without a signing key");
    assert!(err.contains("config: audit_signing_key_file"), "{err}");
    let o = fraud_cli(&[
        "audit",
        "keygen",
        "--out",
        dir.path().join("sign.key").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sign = dir.path().join("sign.key").to_str().unwrap().to_string();
    // Readable by others: refused, named.
    let loose = file("loose.key", &[5u8; 32], 0o640);
    let err = start(dir.path(), &config(&loose, Some(&sign)))
        .err()
        .expect("started with a loose key");
    assert!(
        err.contains("config: tokenization_key_file") && err.contains("group or others"),
        "{err}"
    );
    std::fs::set_permissions(&tls_key, std::fs::Permissions::from_mode(0o604)).unwrap();
    let err = start(dir.path(), &config(&tok, Some(&sign)))
        .err()
        .expect("started with a loose TLS key");
    assert!(err.contains("config: tls.key"), "{err}");
    std::fs::set_permissions(&tls_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Inside the data directory: refused, named.
    let inside = file("data/tok.key", &[6u8; 32], 0o600);
    let err = start(dir.path(), &config(&inside, Some(&sign)))
        .err()
        .expect("started with a key in the data");
    assert!(
        err.contains("config: tokenization_key_file") && err.contains("inside the data directory"),
        "{err}"
    );
}

/// A model whose one tree is a chain `depth` deep on the first of `features`.
fn chain_model(depth: usize, features: &[String]) -> Vec<u8> {
    use fraud_core::model::{
        Accumulation, Artifact, Ensemble, Feature, FeatureKind, Missing, Node, Objective, Split,
        Test, Tree,
    };
    let mut nodes = Vec::with_capacity(2 * depth + 1);
    for i in 0..depth {
        // Node 2i splits; 2i+1 is a leaf; 2i+2 the next split (or the last leaf).
        nodes.push(Node::Split(Split {
            feature: 0,
            test: Test::LessEqual(i as f64),
            missing: Missing::Nan,
            default_left: true,
            left: (2 * i + 1) as u32,
            right: (2 * i + 2) as u32,
            cover: (depth - i + 1) as f64,
        }));
        nodes.push(Node::Leaf {
            value: 0.001 * i as f64,
            cover: 1.0,
            id: i as u32,
        });
    }
    nodes.push(Node::Leaf {
        value: 0.5,
        cover: 1.0,
        id: depth as u32,
    });
    let ensemble = Ensemble {
        features: features
            .iter()
            .map(|n| Feature {
                name: n.clone(),
                kind: FeatureKind::Numeric,
            })
            .collect(),
        trees: vec![Tree { nodes }],
        base_margin: 0.0,
        objective: Objective::Logistic { scale: 1.0 },
        accumulation: Accumulation::F64,
        average_output: false,
        linear: None,
    };
    Artifact::new(ensemble, "test chain").to_bytes().unwrap()
}

fn spec_features() -> Vec<String> {
    let spec = fraud_core::features::FeatureSpec::default_spec();
    fraud_core::features::Extractor::new(spec)
        .unwrap()
        .names()
        .to_vec()
}

#[test]
fn a_model_too_deep_is_refused_and_cannot_take_the_service_down() {
    let dir = tempfile::tempdir().unwrap();
    let features = spec_features();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    let upload = |bytes: &[u8], role: &str| {
        let (st, _, b) = s
            .try_request(
                "POST",
                &format!("/v1/models?role={role}"),
                Some(&key),
                &[],
                bytes,
            )
            .unwrap();
        (st, String::from_utf8_lossy(&b).into_owned())
    };
    // 100,000 deep: refused, naming the limit; the service scores on.
    let (st, text) = upload(&chain_model(100_000, &features), "active");
    assert_eq!(st, 422, "{text}");
    assert!(text.contains("limits.max_tree_depth"), "{text}");
    assert_eq!(
        s.call("POST", "/v1/score", Some(&key), Some(&tx("d1", "1.00")))
            .0,
        200
    );
    // Within the limit: installed, scored, explained.
    let (st, text) = upload(&chain_model(200, &features), "active");
    assert_eq!(st, 200, "{text}");
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("d2", "1.00")));
    assert_eq!(st, 200, "{v}");
    let deep_version = v["model_version"].as_str().unwrap().to_string();
    drop(s);
    // Restarted with a lower limit: the stored model is not used, the service starts.
    let s = start(dir.path(), "[limits]\nmax_tree_depth = 100\n").unwrap();
    let (st, v, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("d3", "1.00")));
    assert_eq!(st, 200, "{v}");
    assert_ne!(v["model_version"], deep_version.as_str());
    let out = std::fs::read_to_string(&s.out).unwrap();
    assert!(out.contains("limits.max_tree_depth"), "{out}");
    // Node limits name theirs.
    let (st, text) = {
        let s2 = start(&dir.path().join("n"), "[limits]\nmax_tree_nodes = 150\n");
        let s2 = s2.unwrap();
        let k2 = s2.key();
        let (st, _, b) = s2
            .try_request(
                "POST",
                "/v1/models",
                Some(&k2),
                &[],
                &chain_model(100, &features),
            )
            .unwrap();
        (st, String::from_utf8_lossy(&b).into_owned())
    };
    assert_eq!(st, 422, "{text}");
    assert!(text.contains("limits.max_tree_nodes"), "{text}");
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[test]
fn uploads_stream_to_disk_and_count_against_max_in_flight() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "[limits]\nmax_in_flight = 1\n").unwrap();
    let key = s.key();
    // 300 MiB that is not a model: refused; the process never held it.
    let before = peak_rss_kib(s.child.id());
    let size: usize = 300 << 20;
    let chunk = vec![b'z'; 1 << 20];
    // While it is being received it holds the only in-flight slot: scoring is shed. (An
    // upload that arrives while a probe is scored is itself shed: then it is sent again.)
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conn = loop {
        assert!(
            Instant::now() < deadline,
            "the upload never held the in-flight slot"
        );
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        write!(
            conn,
            "POST /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Length: {size}\r\n\r\n"
        )
        .unwrap();
        conn.write_all(&chunk).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let held = loop {
            assert!(
                Instant::now() < deadline,
                "the upload never held the in-flight slot"
            );
            let mut b = [0u8; 64];
            if std::io::Read::read(&mut conn, &mut b).is_ok() {
                break false; // answered (shed) already
            }
            let (st, _, _) = s.call("POST", "/v1/score", Some(&key), Some(&tx("shed", "1.00")));
            if st == 503 {
                break true;
            }
        };
        if held {
            break conn;
        }
    };
    conn.set_read_timeout(None).unwrap();
    for _ in 1..(size >> 20) {
        conn.write_all(&chunk).unwrap();
    }
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut conn, &mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 422"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    let peak = peak_rss_kib(s.child.id());
    assert!(
        peak < before + 100 * 1024,
        "peak memory went from {before} KiB to {peak} KiB for a 300 MiB upload"
    );
    // Over limits.max_model_bytes: 413. Nothing is left behind in the models directory.
    let s2 = start(
        &dir.path().join("small"),
        "[limits]\nmax_model_bytes = 4096\n",
    )
    .unwrap();
    let k2 = s2.key();
    let model =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/demo/model.fgb"))
            .unwrap();
    let (st, _, _) = s2
        .try_request("POST", "/v1/models", Some(&k2), &[], &model)
        .unwrap();
    assert_eq!(st, 413);
    for d in [
        dir.path().join("data/models"),
        dir.path().join("small/data/models"),
    ] {
        if d.exists() {
            assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "{}", d.display());
        }
    }
    assert_eq!(
        s.call("POST", "/v1/score", Some(&key), Some(&tx("after", "1.00")))
            .0,
        200
    );
}

#[test]
fn a_torn_log_tail_is_recorded_and_heads_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let sign = dir.path().join("sign.key");
    let o = fraud_cli(&["audit", "keygen", "--out", sign.to_str().unwrap()]);
    assert!(o.status.success());
    let public = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("public-key ").map(str::to_string))
        .unwrap();
    let cfg = format!(
        "audit_signing_key_file = {:?}\naudit_sign_interval_s = 1\n",
        sign.to_str().unwrap()
    );
    let s = start(dir.path(), &cfg).unwrap();
    let key = s.key();
    for i in 0..3 {
        assert_eq!(
            s.call(
                "POST",
                "/v1/score",
                Some(&key),
                Some(&tx(&format!("s{i}"), "2.00"))
            )
            .0,
            200
        );
    }
    let log = dir.path().join("data/log/decisions.log");
    let count = |kind: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"kind\":\"{kind}\"")))
            .count()
    };
    // One signed head at start, one once the three decisions are in.
    wait_for("a signed head after the decisions", || {
        count("signed_head") >= 2
    });
    drop(s);
    // A record cut short by a crash: removed at start, and the removal recorded.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"0123456789abcdef {\"seq\": 99, \"kind\": \"deci").unwrap();
    drop(f);
    let s = start(dir.path(), &cfg).unwrap();
    assert_eq!(count("recovery"), 1);
    let out = std::fs::read_to_string(&s.out).unwrap();
    assert!(out.contains("cut short"), "{out}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("data/log"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("torn-"))
            .count(),
        1
    );
    drop(s);
    let data = dir.path().join("data");
    let verify = |extra: &[&str]| audit_verify(&data, extra);
    let (ok, text) = verify(&["--public-key", &public]);
    assert!(ok && text.contains("signed through"), "{text}");
    let other = "11".repeat(32);
    let (ok, text) = verify(&["--public-key", &"ab".repeat(32)]);
    assert!(!ok, "{text}");
    let _ = other;
    // `fraud audit head --signing-key` prints a signature of the head.
    let o = fraud_cli(&[
        "audit",
        "head",
        data.to_str().unwrap(),
        "--signing-key",
        sign.to_str().unwrap(),
    ]);
    let head = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        head.contains("signature ") && head.contains(&public),
        "{head}"
    );
    // Someone with the files rewrites a decision and recomputes the plain SHA-256 chain: the
    // chain alone still verifies, the signed heads do not.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut prev = String::new();
    let mut rewritten = String::new();
    for (i, line) in text.lines().enumerate() {
        let (_, body) = line.split_at(65);
        let mut v: Value = serde_json::from_str(body).unwrap();
        if i == 0 {
            prev = v["prev"].as_str().unwrap().to_string();
        }
        v["prev"] = json!(prev);
        if v["kind"] == "decision" && v["data"]["transaction_id"] == "s1" {
            v["data"]["response"]["decision"] = json!("decline");
        }
        let body = serde_json::to_string(&v).unwrap();
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(prev.as_bytes());
        h.update(body.as_bytes());
        let hash: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        rewritten.push_str(&format!("{hash} {body}\n"));
        prev = hash;
    }
    std::fs::write(&log, rewritten).unwrap();
    let (ok, text) = verify(&[]);
    assert!(ok, "the forged chain should pass a plain check: {text}");
    let (ok, text) = verify(&["--public-key", &public]);
    assert!(!ok, "{text}");
    assert!(text.contains("signed head"), "{text}");
}
