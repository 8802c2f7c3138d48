//! The transaction: its JSON shape (shared by the API, history CSV files and generated data),
//! validation with errors that name the field, and protection of the card number at the
//! boundary.
//!
//! [`RawTransaction`] is what arrives; [`Transaction::from_raw`] validates it and replaces the
//! card number by a keyed token and a mask, so a [`Transaction`] never holds a raw card
//! number. Amounts are exact integers of the currency's minor unit (ISO 4217 exponents), never
//! floats. This module computes no features.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::pii::{is_token, quoted, CardNumber, ProtectedCard, Tokenizer};

/// A field that failed validation, and why. Never contains a card number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TransactionError {
    /// The field (JSON name).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// The body is not well-formed (not JSON, not an object, a name given twice): a
    /// malformed request (HTTP 400) rather than an invalid value (422).
    pub malformed: bool,
}

fn bad(field: &str, message: impl Into<String>) -> TransactionError {
    TransactionError {
        field: field.to_string(),
        message: message.into(),
        malformed: field == "body",
    }
}

/// The error for a value that holds a card number (or card track data) in a field other
/// than `card_number`: the field is named, the value never.
fn card_data_in(field: &str) -> TransactionError {
    bad(
        field,
        "holds what looks like a card number or card track data; a card number is accepted only in `card_number`, where it is tokenized, never stored",
    )
}

/// Refuses a value that holds card data (see [`crate::pii::holds_card_data`]) in `field`.
pub fn refuse_card_data(field: &str, value: &str) -> Result<(), TransactionError> {
    if crate::pii::holds_card_data(value) {
        Err(card_data_in(field))
    } else {
        Ok(())
    }
}

/// Fields that carry sensitive authentication data, which must never be sent or stored.
pub const SENSITIVE_FIELDS: &[&str] = &[
    "cvv",
    "cvv2",
    "cvc",
    "cvc2",
    "cid",
    "pin",
    "pin_block",
    "track",
    "track1",
    "track2",
    "track_data",
    "magstripe",
];

/// ISO 4217 codes with the number of digits of their minor unit.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("UZS", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// Digits of the minor unit of an ISO 4217 currency, or `None` if the code is unknown.
pub fn currency_exponent(code: &str) -> Option<u8> {
    CURRENCIES
        .binary_search_by(|(c, _)| (*c).cmp(code))
        .ok()
        .map(|i| CURRENCIES[i].1)
}

/// Largest amount accepted, in major units (guards against absurd inputs).
pub const MAX_AMOUNT_MAJOR: i64 = 1_000_000_000;

/// An exact amount: integer minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    /// Minor units (cents for USD, yen for JPY, fils for KWD).
    pub minor: i64,
    /// Digits of the minor unit.
    pub exponent: u8,
}

/// Why a text is not an amount (the message names what is wrong, never echoes a card
/// number: the text is quoted through [`crate::pii::quoted`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Nothing but space.
    #[error("is empty")]
    Empty,
    /// A minus sign.
    #[error("must not be negative")]
    Negative,
    /// Not digits with at most one decimal point (signs, exponents, NaN, infinities).
    #[error("{0} is not a plain decimal number")]
    NotDecimal(String),
    /// More decimals than the currency has.
    #[error("has {decimals} decimals; the currency has {exponent}")]
    TooPrecise {
        /// Decimals given (trailing zeros ignored).
        decimals: usize,
        /// The currency's minor digits.
        exponent: u8,
    },
    /// Above [`MAX_AMOUNT_MAJOR`].
    #[error("exceeds {MAX_AMOUNT_MAJOR}")]
    TooLarge,
}

impl Amount {
    /// Parses a decimal text (`"12.5"`, `"1200"`) for a currency with `exponent` minor digits.
    /// Refuses signs, exponents, NaN, infinities, more decimals than the currency has, zero
    /// and amounts above [`MAX_AMOUNT_MAJOR`].
    pub fn parse(text: &str, exponent: u8) -> Result<Self, AmountError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(AmountError::Empty);
        }
        if t.starts_with('-') {
            return Err(AmountError::Negative);
        }
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(AmountError::NotDecimal(quoted(t)));
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > exponent as usize {
            return Err(AmountError::TooPrecise {
                decimals: frac.len(),
                exponent,
            });
        }
        let int = int.trim_start_matches('0');
        if int.len() > 10 {
            return Err(AmountError::TooLarge);
        }
        let major: i64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| AmountError::TooLarge)?
        };
        if major > MAX_AMOUNT_MAJOR {
            return Err(AmountError::TooLarge);
        }
        let scale = 10i64.pow(exponent as u32);
        let mut minor_frac: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse()
                .map_err(|_| AmountError::NotDecimal(quoted(t)))?
        };
        minor_frac *= 10i64.pow((exponent as usize - frac.len()) as u32);
        // Zero is accepted: zero-amount authorizations (card verification) are real, and a
        // burst of them is a card-testing signal. Negative amounts never get this far.
        let minor = major * scale + minor_frac;
        Ok(Amount { minor, exponent })
    }

    /// The amount in major units, as a float (for features).
    pub fn as_f64(&self) -> f64 {
        self.minor as f64 / 10f64.powi(self.exponent as i32)
    }
}

/// How the card was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Chip or swipe at a terminal.
    CardPresent,
    /// Tap at a terminal.
    Contactless,
    /// Online.
    Ecommerce,
    /// Mail or telephone order.
    Moto,
    /// Cash machine.
    Atm,
    /// Card on file, recurring.
    Recurring,
}

/// A JSON number or string, kept as its text (so amounts stay exact).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Decimal {
    /// A JSON string.
    Text(String),
    /// A JSON number, as written.
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    Number(serde_json::Number),
}

/// A transaction as it arrives (JSON body, CSV row), before validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RawTransaction {
    /// Caller's id of the transaction (at most 128 characters; never a card number).
    #[cfg_attr(feature = "openapi", schema(required, value_type = String, max_length = 128))]
    pub transaction_id: Option<String>,
    /// RFC 3339 time.
    #[cfg_attr(feature = "openapi", schema(required, value_type = String, format = DateTime))]
    pub timestamp: Option<String>,
    /// Decimal amount (string or number), at most the currency's minor digits.
    #[cfg_attr(feature = "openapi", schema(required, value_type = Decimal))]
    pub amount: Option<Decimal>,
    /// ISO 4217 code.
    #[cfg_attr(feature = "openapi", schema(required, value_type = String))]
    pub currency: Option<String>,
    /// Raw card number (tokenized at once; wiped from memory when dropped). Send this or
    /// `card_token`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub card_number: Option<zeroize::Zeroizing<String>>,
    /// Card token, when the caller tokenized already.
    #[cfg_attr(feature = "openapi", schema(pattern = "^tok_[0-9a-f]{32}$"))]
    pub card_token: Option<String>,
    /// Customer id.
    pub customer_id: Option<String>,
    /// Merchant id.
    pub merchant_id: Option<String>,
    /// Merchant category code (4 digits).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9]{4}$"))]
    pub mcc: Option<String>,
    /// Terminal id.
    pub terminal_id: Option<String>,
    /// How the card was used.
    pub channel: Option<Channel>,
    /// Issuing country (ISO 3166-1 alpha-2).
    pub card_country: Option<String>,
    /// Merchant country.
    pub merchant_country: Option<String>,
    /// Client IP address.
    pub ip: Option<String>,
    /// Country of the IP.
    pub ip_country: Option<String>,
    /// Device id.
    pub device_id: Option<String>,
    /// Email address.
    pub email: Option<String>,
    /// Latitude in degrees.
    pub latitude: Option<f64>,
    /// Longitude in degrees.
    pub longitude: Option<f64>,
    /// Label (0 or 1), as history and generated files carry it (the scoring service's
    /// labels arrive through `POST /v1/labels`).
    #[cfg_attr(feature = "openapi", schema(maximum = 1))]
    pub is_fraud: Option<u8>,
    /// When the fraud became known (RFC 3339), with `is_fraud`.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub fraud_reported_at: Option<String>,
}

/// A validated transaction. The card is a token and a mask only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// Caller's id.
    pub transaction_id: String,
    /// Unix time in microseconds, UTC.
    pub timestamp_us: i64,
    /// Exact amount.
    pub amount: Amount,
    /// ISO 4217 code.
    pub currency: String,
    /// Token and mask of the card.
    pub card: ProtectedCard,
    /// Customer id.
    pub customer_id: Option<String>,
    /// Merchant id.
    pub merchant_id: Option<String>,
    /// Merchant category code.
    pub mcc: Option<u16>,
    /// Terminal id.
    pub terminal_id: Option<String>,
    /// How the card was used.
    pub channel: Option<Channel>,
    /// Issuing country.
    pub card_country: Option<String>,
    /// Merchant country.
    pub merchant_country: Option<String>,
    /// Client IP.
    pub ip: Option<IpAddr>,
    /// Country of the IP.
    pub ip_country: Option<String>,
    /// Device id.
    pub device_id: Option<String>,
    /// Email, lower-cased.
    pub email: Option<String>,
    /// Coordinates (latitude, longitude).
    pub location: Option<(f64, f64)>,
    /// Label, when known.
    pub is_fraud: Option<bool>,
    /// When the label became known, unix microseconds.
    pub fraud_reported_at_us: Option<i64>,
}

/// Earliest accepted timestamp (1990-01-01T00:00:00Z), in microseconds.
pub const MIN_TIMESTAMP_US: i64 = 631_152_000_000_000;
/// Latest accepted timestamp (2100-01-01T00:00:00Z), in microseconds.
pub const MAX_TIMESTAMP_US: i64 = 4_102_444_800_000_000;

fn parse_time(field: &str, text: &str) -> Result<i64, TransactionError> {
    let t =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .map_err(|_| bad(field, format!("{} is not an RFC 3339 time", quoted(text))))?;
    let us = (t.unix_timestamp_nanos() / 1000) as i64;
    if !(MIN_TIMESTAMP_US..MAX_TIMESTAMP_US).contains(&us) {
        return Err(bad(field, "is before 1990 or after 2100"));
    }
    Ok(us)
}

fn id(field: &str, v: Option<String>) -> Result<Option<String>, TransactionError> {
    match v {
        None => Ok(None),
        Some(s) => {
            let s = s.trim().to_string();
            if s.is_empty() {
                return Err(bad(field, "is empty"));
            }
            if s.chars().count() > 128 {
                return Err(bad(field, "is longer than 128 characters"));
            }
            if s.chars().any(char::is_control) {
                return Err(bad(field, "contains control characters"));
            }
            refuse_card_data(field, &s)?;
            Ok(Some(s))
        }
    }
}

fn country(field: &str, v: Option<String>) -> Result<Option<String>, TransactionError> {
    match v {
        None => Ok(None),
        Some(s) => {
            let up = s.trim().to_ascii_uppercase();
            if up.len() == 2 && up.bytes().all(|b| b.is_ascii_uppercase()) {
                Ok(Some(up))
            } else {
                Err(bad(
                    field,
                    format!("{} is not an ISO 3166-1 alpha-2 code", quoted(&s)),
                ))
            }
        }
    }
}

impl Transaction {
    /// Validates a raw transaction and protects its card with `tokenizer`.
    pub fn from_raw(raw: RawTransaction, tokenizer: &Tokenizer) -> Result<Self, TransactionError> {
        let transaction_id = id("transaction_id", raw.transaction_id)?
            .ok_or_else(|| bad("transaction_id", "is required"))?;
        let timestamp_us = parse_time(
            "timestamp",
            raw.timestamp
                .as_deref()
                .ok_or_else(|| bad("timestamp", "is required"))?,
        )?;
        let currency = raw
            .currency
            .ok_or_else(|| bad("currency", "is required"))?
            .trim()
            .to_ascii_uppercase();
        let exponent = currency_exponent(&currency).ok_or_else(|| {
            bad(
                "currency",
                format!("{} is not an ISO 4217 code", quoted(&currency)),
            )
        })?;
        let amount_text = match raw.amount.ok_or_else(|| bad("amount", "is required"))? {
            Decimal::Text(s) => s,
            Decimal::Number(n) => n.to_string(),
        };
        let amount =
            Amount::parse(&amount_text, exponent).map_err(|m| bad("amount", m.to_string()))?;
        let card = match (raw.card_number, raw.card_token) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "card_number",
                    "send card_number or card_token, not both",
                ))
            }
            (None, None) => {
                return Err(bad("card_number", "card_number or card_token is required"))
            }
            (Some(number), None) => {
                let card =
                    CardNumber::parse(&number).map_err(|e| bad("card_number", e.to_string()))?;
                tokenizer.protect(&card)
            }
            (None, Some(token)) => {
                if !is_token(&token) {
                    return Err(bad(
                        "card_token",
                        "is not a card token (tok_ and 32 hex digits)",
                    ));
                }
                ProtectedCard { token, mask: None }
            }
        };
        let mcc = match raw.mcc {
            None => None,
            Some(m) => {
                let t = m.trim();
                if t.len() != 4 || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(
                        "mcc",
                        format!("{} is not a 4-digit merchant category code", quoted(t)),
                    ));
                }
                t.parse().ok()
            }
        };
        let ip = match raw.ip {
            None => None,
            Some(s) => Some(
                s.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| bad("ip", format!("{} is not an IP address", quoted(&s))))?,
            ),
        };
        let email = match raw.email {
            None => None,
            Some(e) => {
                refuse_card_data("email", &e)?;
                let e = e.trim().to_lowercase();
                let valid = e.len() <= 254
                    && e.split_once('@')
                        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'));
                if !valid {
                    return Err(bad("email", "is not an email address"));
                }
                Some(e)
            }
        };
        let location = match (raw.latitude, raw.longitude) {
            (None, None) => None,
            (Some(lat), Some(lon)) => {
                if !(-90.0..=90.0).contains(&lat) {
                    return Err(bad("latitude", "must be between -90 and 90"));
                }
                if !(-180.0..=180.0).contains(&lon) {
                    return Err(bad("longitude", "must be between -180 and 180"));
                }
                Some((lat, lon))
            }
            (Some(_), None) => return Err(bad("longitude", "is required with latitude")),
            (None, Some(_)) => return Err(bad("latitude", "is required with longitude")),
        };
        let is_fraud = match raw.is_fraud {
            None => None,
            Some(0) => Some(false),
            Some(1) => Some(true),
            Some(v) => return Err(bad("is_fraud", format!("is {v}; must be 0 or 1"))),
        };
        let fraud_reported_at_us = raw
            .fraud_reported_at
            .as_deref()
            .map(|t| parse_time("fraud_reported_at", t))
            .transpose()?;
        Ok(Transaction {
            transaction_id,
            timestamp_us,
            amount,
            currency,
            card,
            customer_id: id("customer_id", raw.customer_id)?,
            merchant_id: id("merchant_id", raw.merchant_id)?,
            mcc,
            terminal_id: id("terminal_id", raw.terminal_id)?,
            channel: raw.channel,
            card_country: country("card_country", raw.card_country)?,
            merchant_country: country("merchant_country", raw.merchant_country)?,
            ip,
            ip_country: country("ip_country", raw.ip_country)?,
            device_id: id("device_id", raw.device_id)?,
            email,
            location,
            is_fraud,
            fraud_reported_at_us,
        })
    }

    /// Parses and validates a JSON body. Sensitive authentication data (CVV, PIN, track) is
    /// refused by name without echoing it; other unknown fields are refused too.
    pub fn from_json(body: &[u8], tokenizer: &Tokenizer) -> Result<Self, TransactionError> {
        // A well-formed body parses straight into the raw transaction (no sensitive field can
        // be among its fields: unknown fields are refused). Anything else takes the slower
        // path below, which says exactly what is wrong.
        if let Ok(raw) = serde_json::from_slice::<RawTransaction>(body) {
            return Self::from_raw(raw, tokenizer);
        }
        let mut value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| bad("body", format!("is not valid JSON: {}", json_error(&e))))?;
        let checked = Self::from_value(&value, body, tokenizer);
        wipe(&mut value);
        checked
    }

    /// The slow path of [`Transaction::from_json`]: `value` is `body` parsed.
    fn from_value(
        value: &serde_json::Value,
        body: &[u8],
        tokenizer: &Tokenizer,
    ) -> Result<Self, TransactionError> {
        if let Some(path) = crate::json::duplicate_name(body) {
            let mut e = bad(&crate::pii::redact(&path), crate::json::DUPLICATE_REASON);
            e.malformed = true;
            return Err(e);
        }
        let obj = value
            .as_object()
            .ok_or_else(|| bad("body", "must be a JSON object"))?;
        for key in obj.keys() {
            let k = key.to_ascii_lowercase();
            if SENSITIVE_FIELDS.contains(&k.as_str()) {
                return Err(bad(
                    key,
                    "sensitive authentication data must never be sent; the field was refused and not stored",
                ));
            }
        }
        let raw = RawTransaction::deserialize(value).map_err(|e| {
            // serde names the field in its message ("unknown field `x`", "missing field");
            // a quoted value ("invalid type: string \"...\"") could be a card number: hidden.
            bad("body", without_quoted_values(&e.to_string()))
        })?;
        Self::from_raw(raw, tokenizer)
    }
}

/// Overwrites every string of `v` (a parsed body may hold a card number) before it is freed.
pub fn wipe(v: &mut serde_json::Value) {
    use zeroize::Zeroize;
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(wipe),
        serde_json::Value::Object(o) => {
            let values = std::mem::take(o);
            for (mut k, mut x) in values {
                k.zeroize();
                wipe(&mut x);
            }
        }
        _ => {}
    }
}

/// `msg` with every double-quoted part replaced, at most 200 characters.
fn without_quoted_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for (i, part) in msg.split('"').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else {
            out.push_str("\"(value not shown)\"");
        }
    }
    crate::pii::redact(&out).chars().take(200).collect()
}

/// A JSON syntax error without the input text (which could hold a card number).
fn json_error(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// Columns of a history CSV file that map to [`RawTransaction`] fields.
pub const HISTORY_COLUMNS: [&str; 21] = [
    "transaction_id",
    "timestamp",
    "amount",
    "currency",
    "card_number",
    "card_token",
    "customer_id",
    "merchant_id",
    "mcc",
    "terminal_id",
    "channel",
    "card_country",
    "merchant_country",
    "ip",
    "ip_country",
    "device_id",
    "email",
    "latitude",
    "longitude",
    "is_fraud",
    "fraud_reported_at",
];

/// Why a history file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading failed, or the CSV is malformed (the error names the row, never a cell).
    #[error("row {row}: {message}")]
    Csv {
        /// 1-based data row (0: the header).
        row: u64,
        /// What is wrong.
        message: String,
    },
    /// A row is not a valid transaction.
    #[error("row {row}: {error}")]
    Invalid {
        /// 1-based data row.
        row: u64,
        /// The validation error.
        error: TransactionError,
    },
    /// Several rows are invalid: each is reported (up to [`MAX_REPORTED_ROWS`]), with the
    /// column and the transaction id, so that one pass over the file finds them all.
    #[error("{}", rows_message(.errors, *.total))]
    Rows {
        /// The first rows' errors, one line each.
        errors: Vec<String>,
        /// How many rows are invalid in all.
        total: u64,
    },
}

fn rows_message(errors: &[String], total: u64) -> String {
    if total == 1 {
        return errors.join("");
    }
    let mut m = format!("{total} invalid rows:\n  {}", errors.join("\n  "));
    let shown = errors.len() as u64;
    if total > shown {
        m.push_str(&format!("\n  ... and {} more", total - shown));
    }
    m
}

/// Most invalid rows a history error lists (all are counted).
pub const MAX_REPORTED_ROWS: usize = 20;

/// A history read from CSV: the transactions, in file order, and the columns that were not
/// transaction fields (ignored, e.g. `fraud_scenario` or a loader's extras).
#[derive(Debug, Clone)]
pub struct History {
    /// Validated transactions.
    pub transactions: Vec<Transaction>,
    /// Header columns that are not transaction fields.
    pub ignored_columns: Vec<String>,
    /// Amounts rounded to their currency's minor unit (with
    /// [`HistoryOptions::round_amounts`]).
    pub rounded_amounts: u64,
}

fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => err.kind().to_string(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("has {len} fields; the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8".to_string(),
        _ => e.to_string(),
    }
}

/// Reads a history CSV (columns named as the transaction's JSON fields, any order, extra
/// columns ignored), validating each row and protecting card numbers with `tokenizer`.
pub fn read_history(
    input: impl std::io::Read,
    tokenizer: &Tokenizer,
) -> Result<History, HistoryError> {
    read_history_with(input, tokenizer, &HistoryOptions::default())
}

/// How forgiving [`read_history_with`] is with data as data scientists hold it. Every
/// forgiveness is asked for, never silent: the defaults refuse what they would change.
#[derive(Debug, Clone, Default)]
pub struct HistoryOptions {
    /// Timestamps without an offset (`2018-04-01 00:00:31`, `2018-04-01T00:00:31`) are read
    /// at this offset from UTC (seconds east); without it they are refused.
    pub naive_offset_s: Option<i32>,
    /// Amounts with more decimals than their currency's minor unit (float noise such as
    /// 57.160000000000004) are rounded to it (half away from zero); without it, refused.
    pub round_amounts: bool,
    /// When a row has neither `card_number` nor `card_token`, this column's value (a
    /// customer or account id) is the card: tokenized with the key, as a card number is.
    pub card_from: Option<String>,
}

/// `ts` with `offset_s` appended when it has no offset of its own (and `T` for a space).
fn with_offset(ts: &str, offset_s: i32) -> String {
    let t = ts.trim();
    let has_offset = t.ends_with('Z')
        || t.ends_with('z')
        || t.get(10..)
            .is_some_and(|rest| rest.contains('+') || rest.matches('-').count() > 0);
    if has_offset || t.len() < 19 {
        return t.to_string();
    }
    let sign = if offset_s < 0 { '-' } else { '+' };
    let a = offset_s.unsigned_abs();
    format!(
        "{}T{}{sign}{:02}:{:02}",
        &t[..10],
        &t[11..],
        a / 3600,
        (a % 3600) / 60
    )
}

/// `text` rounded half away from zero to `exponent` decimals, when it has more; `None` when
/// it is not a plain decimal or needs no rounding.
fn rounded_amount(text: &str, exponent: u8) -> Option<String> {
    let t = text.trim();
    let (int, frac) = t.split_once('.')?;
    let frac_digits = frac.trim_end_matches('0');
    if frac_digits.len() <= usize::from(exponent)
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || !int
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // Exact decimal rounding on the digits (no float).
    let negative = int.starts_with('-');
    let int_digits = int.trim_start_matches('-');
    let keep = usize::from(exponent);
    let mut digits: Vec<u8> = int_digits
        .bytes()
        .chain(frac.bytes().take(keep))
        .map(|b| b - b'0')
        .collect();
    if frac.as_bytes().get(keep).is_some_and(|&d| d >= b'5') {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, 1);
                break;
            }
            i -= 1;
            if digits[i] == 9 {
                digits[i] = 0;
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let s: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
    let (i, f) = s.split_at(s.len() - keep);
    let i = if i.is_empty() { "0" } else { i };
    Some(format!(
        "{}{i}{}{f}",
        if negative { "-" } else { "" },
        if keep > 0 { "." } else { "" }
    ))
}

/// [`read_history`] with the forgiveness of `opts`.
pub fn read_history_with(
    input: impl std::io::Read,
    tokenizer: &Tokenizer,
    opts: &HistoryOptions,
) -> Result<History, HistoryError> {
    let mut reader = csv::Reader::from_reader(input);
    let header = reader
        .headers()
        .map_err(|e| HistoryError::Csv {
            row: 0,
            message: csv_message(&e),
        })?
        .clone();
    let mut next = |record: &mut csv::StringRecord| reader.read_record(record);
    history_from_records(&header, &mut next, tokenizer, opts)
}

/// The source of one history row at a time: fills the record, `Ok(false)` at the end.
pub(crate) type NextRecord<'a> = dyn FnMut(&mut csv::StringRecord) -> Result<bool, csv::Error> + 'a;

/// [`read_history_with`] over any source of text records with this `header` (a CSV file, or
/// Arrow columns rendered as the text a CSV file would hold): one validation path for all.
pub(crate) fn history_from_records(
    header: &csv::StringRecord,
    next: &mut NextRecord<'_>,
    tokenizer: &Tokenizer,
    opts: &HistoryOptions,
) -> Result<History, HistoryError> {
    let mut keep = Vec::new();
    let mut ignored = Vec::new();
    for (i, h) in header.iter().enumerate() {
        let h = h.trim().trim_start_matches('\u{feff}');
        if HISTORY_COLUMNS.contains(&h) {
            keep.push(i);
        } else {
            ignored.push(h.to_string());
        }
    }
    let names: csv::StringRecord = keep
        .iter()
        .map(|&i| {
            header
                .get(i)
                .unwrap_or("")
                .trim()
                .trim_start_matches('\u{feff}')
        })
        .collect();
    let id_at = keep
        .iter()
        .position(|&i| header.get(i).map(str::trim) == Some("transaction_id"));
    let card_from_at = match &opts.card_from {
        None => None,
        Some(c) => Some(
            header
                .iter()
                .position(|h| h.trim().trim_start_matches('\u{feff}') == c)
                .ok_or_else(|| HistoryError::Csv {
                    row: 0,
                    message: format!("the card column `{c}` is not in the header"),
                })?,
        ),
    };
    let mut out = Vec::new();
    let mut rounded = 0u64;
    let mut record = csv::StringRecord::new();
    let mut projected = csv::StringRecord::new();
    let mut row = 0u64;
    // Every invalid row is counted and the first ones kept, so one pass reports them all.
    let mut lines: Vec<String> = Vec::new();
    let mut total_bad = 0u64;
    let mut note = |e: HistoryError, id: Option<&str>| {
        total_bad += 1;
        if lines.len() < MAX_REPORTED_ROWS {
            let id = id
                .filter(|i| !i.trim().is_empty())
                .map(|i| format!(" (transaction {})", quoted(i.trim())))
                .unwrap_or_default();
            lines.push(format!("{e}{id}"));
        }
    };
    loop {
        match next(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                row += 1;
                let structural = !matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. });
                note(
                    HistoryError::Csv {
                        row,
                        message: csv_message(&e),
                    },
                    None,
                );
                if structural {
                    break;
                }
                continue;
            }
        }
        row += 1;
        projected.clear();
        for &i in &keep {
            projected.push_field(record.get(i).unwrap_or(""));
        }
        let id = id_at.and_then(|k| projected.get(k)).map(str::to_string);
        let mut raw: RawTransaction = match projected.deserialize(Some(&names)) {
            Ok(r) => r,
            Err(e) => {
                note(
                    HistoryError::Csv {
                        row,
                        message: csv_message(&e),
                    },
                    id.as_deref(),
                );
                continue;
            }
        };
        if let Some(offset) = opts.naive_offset_s {
            for t in [&mut raw.timestamp, &mut raw.fraud_reported_at]
                .into_iter()
                .flatten()
            {
                *t = with_offset(t, offset);
            }
        }
        if opts.round_amounts {
            let exponent = raw
                .currency
                .as_deref()
                .and_then(|c| currency_exponent(c.trim().to_ascii_uppercase().as_str()));
            let text = match &raw.amount {
                Some(Decimal::Text(a)) => Some(a.clone()),
                Some(Decimal::Number(n)) => Some(n.to_string()),
                None => None,
            };
            if let (Some(a), Some(e)) = (text, exponent) {
                if let Some(r) = rounded_amount(&a, e) {
                    raw.amount = Some(Decimal::Text(r));
                    rounded += 1;
                }
            }
        }
        if raw.card_number.is_none() && raw.card_token.is_none() {
            if let Some(at) = card_from_at {
                let v = record.get(at).unwrap_or("").trim();
                if !v.is_empty() {
                    raw.card_token = Some(tokenizer.token_of_id(v));
                }
            }
        }
        match Transaction::from_raw(raw, tokenizer) {
            Ok(tx) => out.push(tx),
            Err(error) => note(HistoryError::Invalid { row, error }, id.as_deref()),
        }
    }
    if total_bad > 0 {
        return Err(HistoryError::Rows {
            errors: lines,
            total: total_bad,
        });
    }
    Ok(History {
        transactions: out,
        ignored_columns: ignored,
        rounded_amounts: rounded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tk() -> Tokenizer {
        Tokenizer::new(&[42u8; 32]).unwrap()
    }

    const GOOD: &str = r#"{"transaction_id":"t1","timestamp":"2026-11-29T10:00:00Z","amount":"12.50",
        "currency":"usd","card_number":"4111 1111 1111 1111","mcc":"5411","channel":"ecommerce",
        "card_country":"fr","ip":"203.0.113.7","email":"A@Example.com","latitude":48.85,"longitude":2.35}"#;

    #[test]
    fn parses_and_protects() {
        let t = Transaction::from_json(GOOD.as_bytes(), &tk()).unwrap();
        assert_eq!(
            t.amount,
            Amount {
                minor: 1250,
                exponent: 2
            }
        );
        assert_eq!(t.currency, "USD");
        assert_eq!(t.card.mask.as_deref(), Some("411111******1111"));
        assert!(t.card.token.starts_with("tok_"));
        assert_eq!(t.mcc, Some(5411));
        assert_eq!(t.card_country.as_deref(), Some("FR"));
        assert_eq!(t.email.as_deref(), Some("a@example.com"));
        let shown = format!("{t:?}{}", serde_json::to_string(&t).unwrap());
        assert!(!shown.contains("4111111111111111") && !shown.contains("4111 1111"));
    }

    #[test]
    fn exact_amounts() {
        assert_eq!(Amount::parse("0.1", 2).unwrap().minor, 10);
        assert_eq!(Amount::parse("1000", 0).unwrap().minor, 1000);
        assert_eq!(Amount::parse("1.234", 3).unwrap().minor, 1234);
        assert_eq!(Amount::parse("1.2300", 2).unwrap().minor, 123);
        assert!(Amount::parse("1.234", 2)
            .unwrap_err()
            .to_string()
            .contains("3 decimals"));
        assert!(Amount::parse("-5", 2).is_err());
        assert_eq!(Amount::parse("0", 2).unwrap().as_f64(), 0.0);
        assert!(Amount::parse("1e5", 2).is_err());
        assert!(Amount::parse("NaN", 2).is_err());
        assert!(Amount::parse("99999999999999", 2).is_err());
        assert!(Amount::parse("", 2).is_err());
        assert_eq!(currency_exponent("JPY"), Some(0));
        assert_eq!(currency_exponent("KWD"), Some(3));
        assert_eq!(currency_exponent("XXX"), None);
        assert!(
            CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted for binary search"
        );
    }

    #[test]
    fn errors_name_the_field_and_never_the_card() {
        let cases = [
            (GOOD.replace("\"usd\"", "\"ABC\""), "currency"),
            (GOOD.replace("12.50", "12.505"), "amount"),
            (
                GOOD.replace("4111 1111 1111 1111", "4111 1111 1111 1112"),
                "card_number",
            ),
            (
                GOOD.replace("2026-11-29T10:00:00Z", "yesterday"),
                "timestamp",
            ),
            (
                GOOD.replace("2026-11-29T10:00:00Z", "2300-01-01T00:00:00Z"),
                "timestamp",
            ),
            (GOOD.replace("5411", "54"), "mcc"),
            (GOOD.replace("203.0.113.7", "999.1.1.1"), "ip"),
            (GOOD.replace("\"fr\"", "\"France\""), "card_country"),
            (GOOD.replace("48.85", "91"), "latitude"),
            (GOOD.replace("A@Example.com", "nobody"), "email"),
            (GOOD.replace("\"ecommerce\"", "\"teleport\""), "body"),
            (GOOD.replace("\"mcc\"", "\"cvv\":\"123\",\"mcc\""), "cvv"),
            (
                GOOD.replace("\"mcc\"", "\"colour\":\"red\",\"mcc\""),
                "body",
            ),
            (GOOD.replace("\"t1\"", "\"\""), "transaction_id"),
            (
                GOOD.replace("2026-11-29T10:00:00Z", "2026-11-29T10:04111111111111111"),
                "timestamp",
            ),
            ("[1,2]".to_string(), "body"),
            ("{\"card_number\":\"4111111111111111\"".to_string(), "body"),
        ];
        for (body, field) in cases {
            let e = Transaction::from_json(body.as_bytes(), &tk()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            let text = e.to_string();
            assert!(!text.contains("4111"), "card number in error: {text}");
            assert!(!text.contains("123\""), "cvv value in error: {text}");
        }
    }

    #[test]
    fn token_instead_of_number() {
        let card = CardNumber::parse("4111111111111111").unwrap();
        let token = tk().token(&card);
        let body = GOOD.replace(
            "\"card_number\":\"4111 1111 1111 1111\"",
            &format!("\"card_token\":\"{token}\""),
        );
        let t = Transaction::from_json(body.as_bytes(), &tk()).unwrap();
        assert_eq!(t.card.token, token);
        assert_eq!(t.card.mask, None);
        let body = GOOD.replace(
            "\"card_number\"",
            &format!("\"card_token\":\"{token}\",\"card_number\""),
        );
        assert!(Transaction::from_json(body.as_bytes(), &tk()).is_err());
    }

    #[test]
    fn wipe_clears_every_string() {
        let mut v: serde_json::Value = serde_json::from_str(
            r#"{"card_number": "4111111111111111", "x": [{"y": "secret"}], "n": 1}"#,
        )
        .unwrap_or_default();
        wipe(&mut v);
        let text = v.to_string();
        for gone in ["4111", "secret", "card_number"] {
            assert!(!text.contains(gone), "{text}");
        }
    }

    #[test]
    fn every_invalid_row_is_reported_at_once() {
        let mut csv = String::from("transaction_id,timestamp,amount,currency,card_token\n");
        let token = format!("tok_{}", "a".repeat(32));
        csv.push_str(&format!("ok1,2024-05-01T10:00:00Z,1.00,EUR,{token}\n"));
        csv.push_str(&format!("bad-amount,2024-05-01T10:00:00Z,x,EUR,{token}\n"));
        csv.push_str(&format!("bad-time,yesterday,1.00,EUR,{token}\n"));
        for i in 0..30 {
            csv.push_str(&format!("cur{i},2024-05-01T10:00:00Z,1.00,EURO,{token}\n"));
        }
        let e = read_history(csv.as_bytes(), &tk()).unwrap_err().to_string();
        assert!(e.starts_with("32 invalid rows:"), "{e}");
        assert!(
            e.contains("row 2: amount") && e.contains("(transaction `bad-amount`)"),
            "{e}"
        );
        assert!(
            e.contains("row 3: timestamp") && e.contains("(transaction `bad-time`)"),
            "{e}"
        );
        assert!(e.contains("... and 12 more"), "{e}");
        assert_eq!(e.lines().count(), 1 + MAX_REPORTED_ROWS + 1);
        // One invalid row: its line alone.
        let one = format!("transaction_id,timestamp,amount,currency,card_token\nz,2024-05-01T10:00:00Z,x,EUR,{token}\n");
        let e = read_history(one.as_bytes(), &tk()).unwrap_err().to_string();
        assert!(
            e.starts_with("row 1: amount") && e.ends_with("(transaction `z`)"),
            "{e}"
        );
    }

    #[test]
    fn forgiveness_is_asked_for_and_exact() {
        let csv = "transaction_id,timestamp,amount,currency,customer_id\n\
                   a,2018-04-01 00:00:31,57.160000000000004,EUR,596\n\
                   b,2018-04-01T10:00:00,9.995,EUR,596\n\
                   c,2018-04-01T10:00:00Z,3,JPY,597\n";
        // Refused without the options, every row named.
        let e = read_history(csv.as_bytes(), &tk()).unwrap_err().to_string();
        assert!(e.starts_with("3 invalid rows:"), "{e}");
        let opts = HistoryOptions {
            naive_offset_s: Some(2 * 3600),
            round_amounts: true,
            card_from: Some("customer_id".into()),
        };
        let h = read_history_with(csv.as_bytes(), &tk(), &opts).unwrap();
        assert_eq!(h.rounded_amounts, 2);
        let t = &h.transactions;
        assert_eq!(t[0].amount.minor, 5716);
        assert_eq!(
            t[1].amount.minor, 1000,
            "9.995 rounds half away from zero, exactly"
        );
        // 00:00:31 at +02:00 is 22:00:31 UTC the day before.
        assert_eq!(t[0].timestamp_us, 1_522_533_631_000_000);
        assert_eq!(
            t[2].timestamp_us, 1_522_576_800_000_000,
            "an offset given is kept"
        );
        assert_eq!(t[0].card.token, t[1].card.token, "the customer is the card");
        assert_ne!(t[0].card.token, t[2].card.token);
        assert!(crate::pii::is_token(&t[0].card.token));
        assert_eq!(rounded_amount("0.999", 2).as_deref(), Some("1.00"));
        assert_eq!(rounded_amount("12.3", 2), None);
        assert_eq!(rounded_amount("7.5", 0).as_deref(), Some("8"));
        let missing = HistoryOptions {
            card_from: Some("account".into()),
            ..HistoryOptions::default()
        };
        let e = read_history_with(csv.as_bytes(), &tk(), &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`account` is not in the header"), "{e}");
    }
}
