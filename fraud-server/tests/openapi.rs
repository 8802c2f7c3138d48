//! The OpenAPI document the service serves describes what it really answers: real requests
//! (scored, replayed, batch, labels, decision read, erasures, model upload, errors) sent to
//! the service in process, each request body and each answer validated against the schema
//! the served document gives for that path, method, status and content type. An answer
//! with a property the document does not name fails, as does a documented required field
//! that is missing, an undocumented status, or a request the service accepts that the
//! document refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{json, Value};

use common::{send, send_raw, tx, Answer};

/// Validates `instance` against `schema` (which may refer to `#/components/...` of `doc`).
/// A named schema (a `$ref`) is closed: no property beyond those it names at the top level.
fn validate(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let mut wrapped = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    if schema.get("$ref").is_some() {
        wrapped["unevaluatedProperties"] = json!(false);
    }
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&wrapped)
        .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    let shown: String = instance.to_string().chars().take(600).collect();
    assert!(
        errors.is_empty(),
        "{what}: {shown} does not match the served document: {errors:#?}"
    );
}

/// The operation `method path` of the document (path as templated there).
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {path} is not in the document");
    op
}

/// Checks an answer against the document: its status is documented for the operation, with
/// its content type, and its body matches that schema.
fn check_answer(doc: &Value, method: &str, path: &str, a: &Answer) -> Value {
    let what = format!("{method} {path} -> {}", a.status);
    let mut response = &operation(doc, method, path)["responses"][a.status.to_string()];
    if let Some(r) = response["$ref"].as_str() {
        let name = r.strip_prefix("#/components/responses/").unwrap();
        response = &doc["components"]["responses"][name];
    }
    assert!(
        response.is_object(),
        "{what}: status not documented; body {}",
        String::from_utf8_lossy(&a.body)
    );
    let mime = a.content_type.split(';').next().unwrap_or("").trim();
    let content = &response["content"];
    if a.body.is_empty() {
        assert!(
            content.is_null(),
            "{what}: documented with a body, sent none"
        );
        return Value::Null;
    }
    let schema = &content[mime]["schema"];
    assert!(
        schema.is_object(),
        "{what}: content type `{mime}` not documented (documented: {content})"
    );
    if mime == "application/openmetrics-text" {
        return Value::Null;
    }
    let body = a.json();
    validate(doc, schema, &body, &what);
    body
}

/// Checks a request body against the operation's request schema.
fn check_request(doc: &Value, method: &str, path: &str, body: &Value) {
    let schema =
        &operation(doc, method, path)["requestBody"]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path}: no JSON request body");
    validate(doc, schema, body, &format!("request to {method} {path}"));
}

#[actix_web::test]
async fn the_served_document_describes_real_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (service, key) = common::in_process(dir.path(), "");
    let app =
        actix_web::test::init_service(fraud_server::service::app(service.state.clone(), None))
            .await;
    let k = Some(key.as_str());

    let a = send(&app, "GET", "/openapi.json", k, None).await;
    assert_eq!(a.status, 200);
    let doc = a.json();
    assert_eq!(doc["openapi"], "3.1.0");
    // The served document is the one the library generates.
    assert_eq!(
        doc,
        serde_json::to_value(fraud_server::service::openapi_document()).unwrap()
    );
    check_answer(&doc, "GET", "/openapi.json", &a);

    // Scored, then replayed (no elapsed_us), then the same id with another body (409).
    let t1 = tx("oa-1", "12.50");
    check_request(&doc, "POST", "/v1/score", &t1);
    let a = send(&app, "POST", "/v1/score", k, Some(&t1)).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let scored = check_answer(&doc, "POST", "/v1/score", &a);
    assert!(scored["elapsed_us"].is_u64() && scored["card_mask"].is_string());
    let a = send(&app, "POST", "/v1/score", k, Some(&t1)).await;
    let replayed = check_answer(&doc, "POST", "/v1/score", &a);
    assert_eq!(replayed["replayed"], true);
    assert!(replayed.get("elapsed_us").is_none());
    let a = send(&app, "POST", "/v1/score", k, Some(&tx("oa-1", "99.00"))).await;
    assert_eq!(a.status, 409);
    check_answer(&doc, "POST", "/v1/score", &a);

    // A tokenized card (no mask), and the history columns the service accepts.
    let mut t2 = tx("oa-2", "7");
    let o = t2.as_object_mut().unwrap();
    o.remove("card_number");
    o.insert(
        "card_token".into(),
        json!("tok_0123456789abcdef0123456789abcdef"),
    );
    o.insert("is_fraud".into(), json!(0));
    o.insert("latitude".into(), json!(50.85));
    o.insert("longitude".into(), json!(4.35));
    check_request(&doc, "POST", "/v1/score", &t2);
    let a = send(&app, "POST", "/v1/score", k, Some(&t2)).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert!(check_answer(&doc, "POST", "/v1/score", &a)["card_mask"].is_null());

    // Errors: invalid field (with the field named), malformed JSON, no key, wrong type.
    let mut bad = tx("oa-3", "1.234");
    bad["currency"] = json!("EUR");
    let a = send(&app, "POST", "/v1/score", k, Some(&bad)).await;
    assert!(a.status == 400 || a.status == 422, "{}", a.status);
    assert!(check_answer(&doc, "POST", "/v1/score", &a)["errors"].is_array());
    let a = send(&app, "POST", "/v1/score", k, Some(&json!("not an object"))).await;
    assert_eq!(a.status, 400);
    check_answer(&doc, "POST", "/v1/score", &a);
    let a = send(&app, "POST", "/v1/score", None, Some(&t1)).await;
    assert_eq!(a.status, 401);
    check_answer(&doc, "POST", "/v1/score", &a);
    let plain = Some(("text/plain", b"x".to_vec()));
    let a = send_raw(&app, "POST", "/v1/score", k, plain).await;
    assert_eq!(a.status, 415);
    check_answer(&doc, "POST", "/v1/score", &a);

    // A batch with a good and a bad transaction.
    let batch = json!({"transactions": [tx("oa-4", "3.00"), {"transaction_id": "oa-5"}]});
    check_request(&doc, "POST", "/v1/score/batch", &batch);
    let a = send(&app, "POST", "/v1/score/batch", k, Some(&batch)).await;
    assert_eq!(a.status, 200);
    let results = check_answer(&doc, "POST", "/v1/score/batch", &a);
    assert!(results["results"][0]["decision"].is_string());
    assert!(results["results"][1]["error"]["status"].is_u64());

    // Labels, with a known and an unknown transaction.
    let labels = json!({"labels": [
        {"transaction_id": "oa-1", "is_fraud": true, "reported_at": "2024-05-02T00:00:00Z"},
        {"transaction_id": "nobody", "is_fraud": false}
    ]});
    check_request(&doc, "POST", "/v1/labels", &labels);
    let a = send(&app, "POST", "/v1/labels", k, Some(&labels)).await;
    assert_eq!(a.status, 200);
    let l = check_answer(&doc, "POST", "/v1/labels", &a);
    assert_eq!(l["accepted"], 1);

    // The recorded decision, and one that is not recorded.
    let a = send(&app, "GET", "/v1/decisions/oa-1", k, None).await;
    assert_eq!(a.status, 200);
    let rec = check_answer(&doc, "GET", "/v1/decisions/{transaction_id}", &a);
    assert_eq!(rec["response"]["transaction_id"], "oa-1");
    let a = send(&app, "GET", "/v1/decisions/nobody", k, None).await;
    assert_eq!(a.status, 404);
    check_answer(&doc, "GET", "/v1/decisions/{transaction_id}", &a);

    // Erasures: by path, by card number in the body, refused kinds.
    let a = send(&app, "DELETE", "/v1/entities/customer/C1", k, None).await;
    assert_eq!(a.status, 200);
    check_answer(&doc, "DELETE", "/v1/entities/{kind}/{id}", &a);
    let a = send(&app, "DELETE", "/v1/entities/planet/x", k, None).await;
    assert!(a.status == 400 || a.status == 422, "{}", a.status);
    check_answer(&doc, "DELETE", "/v1/entities/{kind}/{id}", &a);
    let erase = json!({"kind": "card", "card_number": common::CARD});
    check_request(&doc, "POST", "/v1/entities/erase", &erase);
    let a = send(&app, "POST", "/v1/entities/erase", k, Some(&erase)).await;
    assert_eq!(a.status, 200);
    let e = check_answer(&doc, "POST", "/v1/entities/erase", &a);
    assert!(e["card_mask"].is_string());

    // A model upload that is not an artifact; the shadow removed.
    let upload = Some(("application/octet-stream", b"not a model".to_vec()));
    let a = send_raw(&app, "POST", "/v1/models?role=shadow", k, upload).await;
    assert_eq!(a.status, 422);
    check_answer(&doc, "POST", "/v1/models", &a);
    let a = send(&app, "DELETE", "/v1/models/shadow", k, None).await;
    assert_eq!(a.status, 204);
    check_answer(&doc, "DELETE", "/v1/models/shadow", &a);

    // The policy: read, drafted, listed, discarded; the development key holds every role,
    // and may not approve its own draft.
    for path in ["/v1/policy", "/v1/policy/versions"] {
        let a = send(&app, "GET", path, k, None).await;
        assert_eq!(a.status, 200, "{path}");
        check_answer(&doc, "GET", path, &a);
    }
    let draft =
        json!({"policy": {"thresholds": {"review": 0.2, "decline": 0.8}}, "comment": "tighter"});
    let a = send(&app, "POST", "/v1/policy/drafts", k, Some(&draft)).await;
    assert_eq!(a.status, 201);
    let d = check_answer(&doc, "POST", "/v1/policy/drafts", &a);
    let id = d["draft"]["id"].as_str().unwrap().to_string();
    let a = send(&app, "GET", "/v1/policy/drafts", k, None).await;
    check_answer(&doc, "GET", "/v1/policy/drafts", &a);
    let approve = format!("/v1/policy/drafts/{id}/approve");
    let a = send(&app, "POST", &approve, k, None).await;
    assert_eq!(a.status, 403);
    check_answer(&doc, "POST", "/v1/policy/drafts/{id}/approve", &a);
    let a = send(&app, "DELETE", &format!("/v1/policy/drafts/{id}"), k, None).await;
    assert_eq!(a.status, 204);
    check_answer(&doc, "DELETE", "/v1/policy/drafts/{id}", &a);
    let a = send(&app, "POST", &approve, k, None).await;
    assert_eq!(a.status, 404);
    check_answer(&doc, "POST", "/v1/policy/drafts/{id}/approve", &a);

    // Operations.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let a = send(&app, "GET", path, k, None).await;
        assert_eq!(a.status, 200, "{path}");
        check_answer(&doc, "GET", path, &a);
    }
    let a = send(&app, "GET", "/metrics", None, None).await;
    assert_eq!(a.status, 401);
    check_answer(&doc, "GET", "/metrics", &a);

    // Every route the service answers is documented, and nothing else.
    let documented: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(
        documented,
        [
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz",
            "/v1/decisions/{transaction_id}",
            "/v1/entities/erase",
            "/v1/entities/{kind}/{id}",
            "/v1/labels",
            "/v1/models",
            "/v1/models/shadow",
            "/v1/policy",
            "/v1/policy/drafts",
            "/v1/policy/drafts/{id}",
            "/v1/policy/drafts/{id}/approve",
            "/v1/policy/versions",
            "/v1/score",
            "/v1/score/batch",
        ]
    );
}

#[test]
fn a_request_the_document_refuses_is_refused_by_the_service_too() {
    // The document is strict where the service is: an unknown member is refused by both.
    let doc = serde_json::to_value(fraud_server::service::openapi_document()).unwrap();
    let schema = &doc["components"]["schemas"]["RawTransaction"];
    assert_eq!(schema["additionalProperties"], false);
    let mut t = tx("x", "1");
    t["colour"] = json!("red");
    let wrapped =
        json!({"components": doc["components"], "$ref": "#/components/schemas/RawTransaction"});
    let v = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&wrapped)
        .unwrap();
    assert!(!v.is_valid(&t));
    let raw: Result<fraud_core::transaction::RawTransaction, _> = serde_json::from_value(t);
    assert!(raw.is_err());
}
