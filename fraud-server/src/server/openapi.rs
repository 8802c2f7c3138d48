//! The OpenAPI 3.1 document served at `/openapi.json`.

use serde_json::{json, Value};

fn problem() -> Value {
    json!({"description": "RFC 9457 problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

/// The API description.
pub fn document() -> Value {
    let errors = |codes: &[&str]| -> Value {
        let mut m = serde_json::Map::new();
        for c in codes {
            m.insert((*c).to_string(), problem());
        }
        Value::Object(m)
    };
    let with = |ok: Value, codes: &[&str]| -> Value {
        let mut r = errors(codes);
        r["200"] = ok;
        r
    };
    let json_body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let json_ok = |schema: &str| json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "fraudscore scoring service", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Real-time transaction fraud scoring. Authenticate with `Authorization: Bearer KEY`; roles: score, analyst, admin."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Transaction": {"type": "object", "required": ["transaction_id", "timestamp", "amount", "currency"],
                    "additionalProperties": false,
                    "properties": {
                        "transaction_id": {"type": "string", "maxLength": 128},
                        "timestamp": {"type": "string", "format": "date-time"},
                        "amount": {"oneOf": [{"type": "string"}, {"type": "number"}], "description": "decimal, at most the currency's minor digits"},
                        "currency": {"type": "string", "description": "ISO 4217"},
                        "card_number": {"type": "string", "description": "tokenized at once; send this or card_token"},
                        "card_token": {"type": "string", "pattern": "^tok_[0-9a-f]{32}$"},
                        "customer_id": {"type": "string"}, "merchant_id": {"type": "string"},
                        "mcc": {"type": "string", "pattern": "^[0-9]{4}$"}, "terminal_id": {"type": "string"},
                        "channel": {"enum": ["card_present", "contactless", "ecommerce", "moto", "atm", "recurring"]},
                        "card_country": {"type": "string"}, "merchant_country": {"type": "string"},
                        "ip": {"type": "string"}, "ip_country": {"type": "string"}, "device_id": {"type": "string"},
                        "email": {"type": "string"}, "latitude": {"type": "number"}, "longitude": {"type": "number"}
                    }},
                "Reason": {"type": "object", "properties": {"feature": {"type": "string"}, "value": {"type": ["number", "null"]}, "contribution": {"type": "number", "description": "TreeSHAP, in margin units"}}},
                "Decision": {"type": "object", "required": ["transaction_id", "decision", "score", "risk_score", "reasons", "rules_fired", "model_version", "elapsed_us"],
                    "properties": {
                        "transaction_id": {"type": "string"},
                        "decision": {"enum": ["approve", "review", "decline"]},
                        "score": {"type": "number", "description": "probability of fraud"},
                        "risk_score": {"type": "integer", "minimum": 0, "maximum": 100},
                        "reasons": {"type": "array", "items": {"$ref": "#/components/schemas/Reason"}},
                        "rules_fired": {"type": "array", "items": {"type": "string"}},
                        "model_version": {"type": "string"},
                        "card_mask": {"type": ["string", "null"]},
                        "elapsed_us": {"type": "integer"},
                        "replayed": {"type": "boolean", "description": "true when the same API key sent the same transaction again: the recorded answer (the same id with another body or from another key is refused with 409)"}
                    }},
                "Batch": {"type": "object", "required": ["transactions"], "properties": {"transactions": {"type": "array", "items": {"$ref": "#/components/schemas/Transaction"}}}},
                "BatchResult": {"type": "object", "properties": {"results": {"type": "array", "items": {"oneOf": [{"$ref": "#/components/schemas/Decision"}, {"type": "object", "properties": {"error": {"type": "object"}}}]}}}},
                "Labels": {"type": "object", "required": ["labels"], "properties": {"labels": {"type": "array", "items": {"type": "object", "required": ["transaction_id", "is_fraud"],
                    "properties": {"transaction_id": {"type": "string"}, "is_fraud": {"type": "boolean"}, "reported_at": {"type": "string", "format": "date-time"}}}}}},
                "LabelResult": {"type": "object", "properties": {"accepted": {"type": "integer"}, "unknown": {"type": "array", "items": {"type": "string"}}, "erased": {"type": "array", "items": {"type": "string"}}}},
                "DecisionRecord": {"type": "object", "properties": {"seq": {"type": "integer"}, "recorded_at": {"type": "string"}, "key": {"type": "string"},
                    "response": {"$ref": "#/components/schemas/Decision"}, "transaction": {"type": "object"}, "features": {"type": "object"}, "shadow": {"type": ["object", "null"]}}},
                "Problem": {"type": "object", "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}}}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/score": {"post": {"summary": "Score one transaction (role score)", "requestBody": json_body("Transaction"),
                "responses": with(json_ok("Decision"), &["400", "401", "403", "409", "413", "415", "422", "429", "503"])}},
            "/v1/score/batch": {"post": {"summary": "Score up to the configured number of transactions, one result each, in order (role score)",
                "requestBody": json_body("Batch"), "responses": with(json_ok("BatchResult"), &["400", "401", "403", "413", "415", "429", "503"])}},
            "/v1/labels": {"post": {"summary": "Fraud / not-fraud feedback (role analyst)", "requestBody": json_body("Labels"),
                "responses": with(json_ok("LabelResult"), &["400", "401", "403", "413", "415", "429", "503"])}},
            "/v1/decisions/{transaction_id}": {"get": {"summary": "The recorded decision, masked (role analyst)",
                "parameters": [{"name": "transaction_id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": with(json_ok("DecisionRecord"), &["401", "403", "404", "429"])}},
            "/v1/models": {"post": {"summary": "Load a model artifact as the active model or the shadow (role admin)",
                "parameters": [{"name": "role", "in": "query", "schema": {"enum": ["active", "shadow"]}}],
                "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": with(json!({"description": "installed"}), &["400", "401", "403", "413", "422", "503"])}},
            "/v1/models/shadow": {"delete": {"summary": "Stop the shadow model (role admin)", "responses": {"204": {"description": "removed"}}}},
            "/v1/entities/erase": {"post": {"summary": "Erase one entity named in the body (role admin): a card holder by card number (tokenized on arrival under the current and earlier tokenization keys), any entity by id. A card number is never accepted in a URL.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["kind"], "additionalProperties": false,
                    "properties": {"kind": {"enum": ["card", "customer", "merchant", "terminal", "device", "ip", "email"]}, "card_number": {"type": "string"}, "id": {"type": "string"}}}}}},
                "responses": with(json!({"description": "{\"erased\": true|false, \"card_mask\": mask or null}"}), &["400", "401", "403", "413", "415", "422", "503"])}},
            "/v1/entities/{kind}/{id}": {"delete": {"summary": "Erase one entity from state (role admin); a card by its token only; the erasure is recorded by a hash of the id",
                "parameters": [{"name": "kind", "in": "path", "required": true, "schema": {"enum": ["card", "customer", "merchant", "terminal", "device", "ip", "email"]}},
                               {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": with(json!({"description": "{\"erased\": true|false}"}), &["400", "401", "403", "422", "503"])}},
            "/healthz": {"get": {"summary": "Liveness (no key)", "security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: entity state reachable (no key)", "security": [], "responses": {"200": {"description": "ready"}, "503": problem()}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (role analyst)", "responses": {"200": {"description": "text exposition", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document (any key)", "responses": {"200": {"description": "OpenAPI"}}}}
        }
    })
}
