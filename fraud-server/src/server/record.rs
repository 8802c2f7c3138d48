//! The decision record, written from typed values: the transaction as the record holds it
//! (its entity fields sealed under their entities' keys by the vault), the answer, the
//! shadow model's verdict and the features. No JSON value of the transaction is built: the
//! record is what every scored request writes, and building, protecting and writing a JSON
//! value of it cost more than the model did.
//!
//! The record is the one [`super::vault::Vault::protect`] would make of the same content as
//! a JSON value (the same members in the same order, the same fields sealed under the same
//! keys with the same paths); a test checks it.

use fraud_core::transaction::{Amount, Channel, Transaction};
use serde::Serialize;
use serde_json::Value;

use super::decisions::Values;
use super::vault::{EntityFields, Used, Vault, VaultError};

/// The strings of a JSON array (none when it is not one), e.g. a record's `rules_shadow`.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A decision record's data. Members in the order of the sorted keys of the JSON object
/// it used to be, then the features.
#[derive(Serialize)]
pub struct DecisionRecord<'a, R> {
    /// The answer, its card mask sealed.
    pub response: &'a R,
    /// The shadow rules whose condition held (absent when none).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub rules_shadow: &'a [String],
    /// The shadow model's verdict.
    pub shadow: &'a Option<Value>,
    /// The transaction.
    pub transaction: RecordTransaction<'a>,
    /// Its id (what the decision is found by).
    pub transaction_id: &'a str,
    /// The feature row: its values, in the order of the names of its set.
    pub features: Values<'a>,
    /// The id of the feature set that names the values ([`super::feature_sets`]).
    pub feature_set: &'a str,
    /// Keyed fingerprint of the validated request: a retry with the same body from the
    /// same key is answered from the record; anything else with this id is refused.
    pub request: &'a str,
    /// The version of the policy that decided (`GET /v1/policy/versions`).
    pub policy_version: u64,
    /// With a traffic share for the shadow: `champion` (the active model decided) or
    /// `challenger` (the shadow did; `shadow` then holds the active model's verdict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm: Option<&'static str>,
}

impl DecisionRecord<'_, fraud_core::decision::Verdict> {
    /// What the other replicas' review queues read of a decision, without opening its body
    /// (PostgreSQL's `fraud_records.summary`): its outcome, score, time and merchant
    /// category, no entity field. Written from the typed values (the record is not turned
    /// into a JSON value to pick four fields out of it).
    pub fn summary(&self) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct Outcome<'a> {
            decision: &'a fraud_core::decision::Decision,
            score: f64,
        }
        #[derive(Serialize)]
        struct When {
            mcc: Option<u16>,
            timestamp_us: i64,
        }
        #[derive(Serialize)]
        struct Summary<'a> {
            response: Outcome<'a>,
            transaction: When,
            transaction_id: &'a str,
        }
        serde_json::to_string(&Summary {
            response: Outcome {
                decision: &self.response.decision,
                score: self.response.score,
            },
            transaction: When {
                mcc: self.transaction.mcc,
                timestamp_us: self.transaction.timestamp_us,
            },
            transaction_id: self.transaction_id,
        })
    }
}

/// A transaction as a decision record holds it: entity fields as strings (sealed once
/// [`protect`] has run), the IP address and e-mail only when kept (data minimisation).
#[derive(Serialize)]
pub struct RecordTransaction<'a> {
    amount: &'a Amount,
    card: RecordCard,
    card_country: &'a Option<String>,
    channel: &'a Option<Channel>,
    currency: &'a str,
    customer_id: Option<String>,
    device_id: Option<String>,
    email: Option<String>,
    fraud_reported_at_us: Option<i64>,
    ip: Option<String>,
    ip_country: &'a Option<String>,
    is_fraud: Option<bool>,
    location: Option<(f64, f64)>,
    mcc: Option<u16>,
    merchant_country: &'a Option<String>,
    merchant_id: Option<String>,
    terminal_id: Option<String>,
    timestamp_us: i64,
    transaction_id: &'a str,
}

#[derive(Serialize)]
struct RecordCard {
    mask: Option<String>,
    token: Option<String>,
}

impl<'a> RecordTransaction<'a> {
    /// `tx` as recorded; its IP address and e-mail dropped unless kept.
    pub fn new(tx: &'a Transaction, keep_ip: bool, keep_email: bool) -> Self {
        RecordTransaction {
            amount: &tx.amount,
            card: RecordCard {
                mask: tx.card.mask.clone(),
                token: Some(tx.card.token.clone()),
            },
            card_country: &tx.card_country,
            channel: &tx.channel,
            currency: &tx.currency,
            customer_id: tx.customer_id.clone(),
            device_id: tx.device_id.clone(),
            email: tx.email.clone().filter(|_| keep_email),
            fraud_reported_at_us: tx.fraud_reported_at_us,
            ip: tx.ip.filter(|_| keep_ip).map(|ip| ip.to_string()),
            ip_country: &tx.ip_country,
            is_fraud: tx.is_fraud,
            location: tx.location,
            mcc: tx.mcc,
            merchant_country: &tx.merchant_country,
            merchant_id: tx.merchant_id.clone(),
            terminal_id: tx.terminal_id.clone(),
            timestamp_us: tx.timestamp_us,
            transaction_id: &tx.transaction_id,
        }
    }
}

/// Seals the entity fields of a record's transaction `t` and of its answer's card mask
/// (`card_mask`, the mask the record's `response` holds) under their entities' keys, as
/// the vault's `FIELDS` name them for a decision record.
pub fn protect(
    vault: &Vault,
    t: &mut RecordTransaction<'_>,
    card_mask: &mut Option<String>,
) -> Result<Used, VaultError> {
    let mut entities = Vec::with_capacity(7);
    if let Some(id) = t.card.token.clone() {
        entities.push(EntityFields {
            kind: "card",
            id,
            fields: vec![
                ("/transaction/card/token", &mut t.card.token),
                ("/transaction/card/mask", &mut t.card.mask),
                ("/response/card_mask", card_mask),
            ],
        });
    }
    for (kind, path, v) in [
        ("customer", "/transaction/customer_id", &mut t.customer_id),
        ("merchant", "/transaction/merchant_id", &mut t.merchant_id),
        ("terminal", "/transaction/terminal_id", &mut t.terminal_id),
        ("device", "/transaction/device_id", &mut t.device_id),
        ("ip", "/transaction/ip", &mut t.ip),
        ("email", "/transaction/email", &mut t.email),
    ] {
        if let Some(id) = v.clone() {
            entities.push(EntityFields {
                kind,
                id,
                fields: vec![(path, v)],
            });
        }
    }
    vault.protect_entities(entities)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transaction() -> Transaction {
        let raw = json!({
            "transaction_id": "t-1",
            "timestamp": "2026-03-01T10:00:00Z",
            "amount": "12.34",
            "currency": "EUR",
            "card_number": "4111111111111111",
            "customer_id": "customer-1",
            "merchant_id": "merchant-1",
            "mcc": "5411",
            "terminal_id": "terminal-1",
            "channel": "ecommerce",
            "card_country": "FR",
            "merchant_country": "DE",
            "ip": "192.0.2.7",
            "ip_country": "FR",
            "device_id": "device-1",
            "email": "someone@example.com",
            "latitude": 48.85,
            "longitude": 2.35
        });
        let tokenizer = fraud_core::pii::Tokenizer::new(&[7; 32]).unwrap_or_else(|e| panic!("{e}"));
        Transaction::from_json(raw.to_string().as_bytes(), &tokenizer)
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// The record as a JSON value, protected by `Vault::protect`: what was written before.
    fn as_value(tx: &Transaction, keep: bool, response: &Value, names: &[String]) -> Value {
        let mut kept = tx.clone();
        if !keep {
            kept.ip = None;
            kept.email = None;
        }
        let mut v = json!({
            "transaction_id": tx.transaction_id,
            "response": response,
            "transaction": kept,
            "shadow": null,
            "request": "r1",
        });
        v["features"] = json!([1.5, null]);
        v["feature_set"] = json!(crate::server::feature_sets::set_id(names));
        v["policy_version"] = json!(3);
        v
    }

    #[test]
    fn a_summary_is_the_four_fields_of_the_record_it_sums_up() {
        let tx = transaction();
        let verdict: fraud_core::decision::Verdict = serde_json::from_value(json!({
            "card_mask": "411111******1111", "decision": "review", "model_version": "m",
            "reasons": [], "risk_score": 40, "rules_fired": [], "score": 0.4,
            "transaction_id": "t-1"
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let record = DecisionRecord {
            response: &verdict,
            rules_shadow: &[],
            shadow: &None,
            transaction: RecordTransaction::new(&tx, false, false),
            transaction_id: &tx.transaction_id,
            features: Values(&[1.0]),
            feature_set: "s",
            request: "r",
            policy_version: 1,
            arm: None,
        };
        let summary: Value =
            serde_json::from_str(&record.summary().unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
        // The fields as the whole record holds them.
        let whole: Value = serde_json::to_value(&record).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            summary,
            json!({
                "transaction_id": "t-1",
                "response": {"decision": "review", "score": 0.4},
                "transaction": {"timestamp_us": whole["transaction"]["timestamp_us"], "mcc": 5411},
            })
        );
        assert_eq!(whole["transaction"]["mcc"], json!(5411));
        assert_eq!(
            whole["response"]["decision"],
            summary["response"]["decision"]
        );
    }

    #[test]
    fn typed_records_are_the_records_protect_made() {
        let tx = transaction();
        let names = vec!["a".to_string(), "b".to_string()];
        let values = [1.5, f64::NAN];
        let response = json!({"card_mask": "411111******1111", "decision": "approve"});
        for keep in [false, true] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let vault = Vault::open(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
            // Through the vault's JSON-value path.
            let mut old = as_value(&tx, keep, &response, &names);
            vault.protect(&mut old).unwrap_or_else(|e| panic!("{e}"));
            // Typed.
            let mut t = RecordTransaction::new(&tx, keep, keep);
            let mut mask = response["card_mask"].as_str().map(str::to_string);
            protect(&vault, &mut t, &mut mask).unwrap_or_else(|e| panic!("{e}"));
            let mut sealed_response = response.clone();
            sealed_response["card_mask"] = json!(mask);
            let record = DecisionRecord {
                response: &sealed_response,
                rules_shadow: &[],
                shadow: &None,
                transaction: t,
                transaction_id: &tx.transaction_id,
                features: Values(&values),
                feature_set: &crate::server::feature_sets::set_id(&names),
                request: "r1",
                policy_version: 3,
                arm: None,
            };
            let text = serde_json::to_string(&record).unwrap_or_default();
            let mut new: Value = serde_json::from_str(&text).unwrap_or_default();
            // The same fields sealed, under the same keys...
            let sealed_paths = |v: &Value| {
                let mut out = Vec::new();
                fn walk(v: &Value, path: String, out: &mut Vec<(String, String)>) {
                    match v {
                        Value::Object(m) => {
                            for (k, x) in m {
                                walk(x, format!("{path}/{k}"), out);
                            }
                        }
                        Value::String(s) if s.starts_with("shred1:") => {
                            out.push((path, s.split(':').nth(1).unwrap_or("").to_string()))
                        }
                        _ => {}
                    }
                }
                walk(v, String::new(), &mut out);
                out.sort();
                out
            };
            let expected = if keep { 9 } else { 7 };
            assert_eq!(sealed_paths(&new).len(), expected, "{text}");
            assert_eq!(sealed_paths(&new), sealed_paths(&old));
            // ... nothing clear left of them, and both open to the same record, member for
            // member and in the same order.
            for clear in [
                "customer-1",
                "merchant-1",
                "terminal-1",
                "device-1",
                "someone@",
            ] {
                assert!(!text.contains(clear), "{clear} in {text}");
            }
            vault.reveal(&mut new);
            vault.reveal(&mut old);
            assert_eq!(new, old);
            assert_eq!(
                serde_json::to_string(&new).unwrap_or_default(),
                serde_json::to_string(&old).unwrap_or_default()
            );
        }
    }
}
