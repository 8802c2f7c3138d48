//! The declarative feature spec (TOML): which entities, windows, aggregations, first-seen
//! flags, distinct counts, geo-velocity, label-aware rates and stateless features.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::transaction::{Channel, Transaction};

/// The spec that ships with the engine.
pub const DEFAULT_SPEC: &str = include_str!("default_spec.toml");

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not valid TOML or not the expected shape.
    #[error("invalid feature spec: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("invalid feature spec: {0}")]
    Invalid(String),
}

/// Whose history a window aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// The card token.
    Card,
    /// The customer id.
    Customer,
    /// The merchant id.
    Merchant,
    /// The terminal id.
    Terminal,
    /// The device id.
    Device,
    /// The IP address.
    Ip,
    /// The email address.
    Email,
}

impl Entity {
    /// The name used in feature names and files.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Card => "card",
            Entity::Customer => "customer",
            Entity::Merchant => "merchant",
            Entity::Terminal => "terminal",
            Entity::Device => "device",
            Entity::Ip => "ip",
            Entity::Email => "email",
        }
    }

    /// The entity's key in a transaction, if the transaction has one.
    pub fn key(self, tx: &Transaction) -> Option<Cow<'_, str>> {
        match self {
            Entity::Card => Some(Cow::Borrowed(tx.card.token.as_str())),
            Entity::Customer => tx.customer_id.as_deref().map(Cow::Borrowed),
            Entity::Merchant => tx.merchant_id.as_deref().map(Cow::Borrowed),
            Entity::Terminal => tx.terminal_id.as_deref().map(Cow::Borrowed),
            Entity::Device => tx.device_id.as_deref().map(Cow::Borrowed),
            Entity::Ip => tx.ip.map(|ip| Cow::Owned(ip.to_string())),
            Entity::Email => tx.email.as_deref().map(Cow::Borrowed),
        }
    }

    /// Every entity kind, in index order.
    pub const ALL: [Entity; 7] = [
        Entity::Card,
        Entity::Customer,
        Entity::Merchant,
        Entity::Terminal,
        Entity::Device,
        Entity::Ip,
        Entity::Email,
    ];

    /// Position in [`Entity::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// An aggregation over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of past transactions (`txn_count`).
    Count,
    /// Sum of their amounts (`amount_sum`).
    Sum,
    /// Mean amount (`amount_mean`; NaN when none).
    Mean,
    /// Largest amount (`amount_max`; NaN when none).
    Max,
    /// Population standard deviation of amounts (`amount_std`; NaN when none).
    Std,
    /// This amount divided by the window's mean (`amount_ratio`; NaN when none).
    AmountRatio,
}

impl Aggregation {
    /// The name used in feature names and files.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Count => "txn_count",
            Aggregation::Sum => "amount_sum",
            Aggregation::Mean => "amount_mean",
            Aggregation::Max => "amount_max",
            Aggregation::Std => "amount_std",
            Aggregation::AmountRatio => "amount_ratio",
        }
    }
}

/// A feature computed from the transaction alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stateless {
    /// `ln(1 + amount)`.
    LogAmount,
    /// Hour of day (UTC), 0-23.
    Hour,
    /// Day of week (UTC), Monday = 0.
    Weekday,
    /// 1 between 00:00 and 06:00 UTC.
    Night,
    /// 1 when card and merchant countries differ (NaN when either is unknown).
    CrossBorder,
    /// Channel code (card_present 0, contactless 1, ecommerce 2, moto 3, atm 4, recurring 5).
    Channel,
    /// Merchant category code as a number.
    Mcc,
}

impl Stateless {
    /// The name used in feature names and files.
    pub fn name(self) -> &'static str {
        match self {
            Stateless::LogAmount => "log_amount",
            Stateless::Hour => "hour",
            Stateless::Weekday => "weekday",
            Stateless::Night => "night",
            Stateless::CrossBorder => "cross_border",
            Stateless::Channel => "channel",
            Stateless::Mcc => "mcc",
        }
    }

    pub(crate) fn value(self, tx: &Transaction) -> f64 {
        let secs = tx.timestamp_us.div_euclid(1_000_000);
        match self {
            Stateless::LogAmount => tx.amount.as_f64().ln_1p(),
            Stateless::Hour => (secs.rem_euclid(86_400) / 3600) as f64,
            // 1970-01-01 was a Thursday (3 with Monday = 0).
            Stateless::Weekday => ((secs.div_euclid(86_400) + 3).rem_euclid(7)) as f64,
            Stateless::Night => f64::from(u8::from(secs.rem_euclid(86_400) < 6 * 3600)),
            Stateless::CrossBorder => match (&tx.card_country, &tx.merchant_country) {
                (Some(a), Some(b)) => f64::from(u8::from(a != b)),
                _ => f64::NAN,
            },
            Stateless::Channel => tx.channel.map_or(f64::NAN, |c| match c {
                Channel::CardPresent => 0.0,
                Channel::Contactless => 1.0,
                Channel::Ecommerce => 2.0,
                Channel::Moto => 3.0,
                Channel::Atm => 4.0,
                Channel::Recurring => 5.0,
            }),
            Stateless::Mcc => tx.mcc.map_or(f64::NAN, f64::from),
        }
    }
}

/// Windows of one entity, as written in the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowGroup {
    /// Whose history.
    pub entity: Entity,
    /// Window lengths: `10m`, `1h`, `24h`, `7d`, `30s`.
    pub windows: Vec<String>,
    /// Aggregations computed over each window.
    pub aggregations: Vec<Aggregation>,
}

/// The declarative feature spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Stateless features, in order.
    #[serde(default)]
    pub stateless: Vec<Stateless>,
    /// Entities whose time since their previous transaction is a feature.
    #[serde(default)]
    pub since_last: Vec<Entity>,
    /// Windowed aggregations.
    #[serde(default)]
    pub windows: Vec<WindowGroup>,
    /// First-seen flags: `<entity>_new_<field>` is 1 when no earlier transaction of the
    /// entity had this value of the field (a new device for this card), 0 when one had, NaN
    /// when the transaction has no value.
    #[serde(default)]
    pub first_seen: Vec<FirstSeen>,
    /// Distinct counts: `<entity>_distinct_<field>_<window>` is the number of different values
    /// of `field` among the entity's past transactions in the window.
    #[serde(default)]
    pub distinct: Vec<Distinct>,
    /// Entities whose geo-velocity is a feature: `<entity>_geo_velocity_kmh`, the great-circle
    /// distance from the entity's previous located transaction divided by the time between
    /// them (at least one second); NaN without two located transactions.
    #[serde(default)]
    pub geo_velocity: Vec<Entity>,
    /// Label-aware rates with a delay (see [`LabelRates`]).
    #[serde(default)]
    pub label_rates: Vec<LabelRates>,
    /// How long anything about an entity is remembered (`90d` when absent): time since last,
    /// first-seen flags and geo-velocity look back at most this far, and an entity idle for
    /// longer is dropped from the state. At least the longest window (plus delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

/// Retention when a spec does not set one.
pub const DEFAULT_RETENTION: &str = "90d";

/// Label-aware features, as fraud teams use them: for a transaction at `t`, the entity's
/// transactions with a timestamp in `[t - delay - window, t - delay)`, and among them those
/// labelled fraud by a label known (received) at or before `t`: the delay places the window
/// (labels take time to arrive), it does not hold back a label already known. Three features per
/// window: `<entity>_delayed_txn_count_<window>_delay_<delay>`,
/// `<entity>_fraud_count_<window>_delay_<delay>` and `<entity>_fraud_rate_<window>_delay_<delay>`
/// (fraud count over transaction count; 0 when there is no transaction, as in the Fraud
/// Detection Handbook's terminal risk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRates {
    /// Whose history.
    pub entity: Entity,
    /// Window lengths.
    pub windows: Vec<String>,
    /// How long before the transaction the window ends, and how long before it a label must
    /// have been known.
    pub delay: String,
}

/// Distinct values of a field per entity and window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distinct {
    /// Whose history.
    pub entity: Entity,
    /// Which value.
    pub field: Field,
    /// Window lengths.
    pub windows: Vec<String>,
}

/// Fields a distinct count can be kept for, per entity.
pub const MAX_DISTINCT_FIELDS: usize = 2;

/// A first-seen flag: whether `field`'s value is new for `entity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstSeen {
    /// Whose history.
    pub entity: Entity,
    /// Which value.
    pub field: Field,
}

/// A transaction field whose values can be remembered per entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The card (its token).
    Card,
    /// `customer_id`.
    CustomerId,
    /// `merchant_id`.
    MerchantId,
    /// `terminal_id`.
    TerminalId,
    /// `device_id`.
    DeviceId,
    /// `ip`.
    Ip,
    /// `email`.
    Email,
    /// `mcc`.
    Mcc,
    /// `card_country`.
    CardCountry,
    /// `merchant_country`.
    MerchantCountry,
    /// `ip_country`.
    IpCountry,
}

impl Field {
    /// Every field, in index order.
    pub const ALL: [Field; 11] = [
        Field::Card,
        Field::CustomerId,
        Field::MerchantId,
        Field::TerminalId,
        Field::DeviceId,
        Field::Ip,
        Field::Email,
        Field::Mcc,
        Field::CardCountry,
        Field::MerchantCountry,
        Field::IpCountry,
    ];

    /// Position in [`Field::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in feature names and files.
    pub fn name(self) -> &'static str {
        match self {
            Field::Card => "card",
            Field::CustomerId => "customer_id",
            Field::MerchantId => "merchant_id",
            Field::TerminalId => "terminal_id",
            Field::DeviceId => "device_id",
            Field::Ip => "ip",
            Field::Email => "email",
            Field::Mcc => "mcc",
            Field::CardCountry => "card_country",
            Field::MerchantCountry => "merchant_country",
            Field::IpCountry => "ip_country",
        }
    }

    /// A stable 64-bit fingerprint of the field's value, or `None` when absent.
    pub(crate) fn fingerprint(self, tx: &Transaction) -> Option<u64> {
        let s = |v: &Option<String>| v.as_deref().map(|v| hash_bytes(v.as_bytes()));
        match self {
            Field::Card => Some(hash_bytes(tx.card.token.as_bytes())),
            Field::CustomerId => s(&tx.customer_id),
            Field::MerchantId => s(&tx.merchant_id),
            Field::TerminalId => s(&tx.terminal_id),
            Field::DeviceId => s(&tx.device_id),
            Field::Ip => tx.ip.map(|ip| hash_bytes(ip.to_string().as_bytes())),
            Field::Email => s(&tx.email),
            Field::Mcc => tx.mcc.map(|m| hash_bytes(&m.to_le_bytes())),
            Field::CardCountry => s(&tx.card_country),
            Field::MerchantCountry => s(&tx.merchant_country),
            Field::IpCountry => s(&tx.ip_country),
        }
    }
}

/// Parses a window length (`30s`, `10m`, `1h`, `7d`) into seconds.
pub fn parse_window(s: &str) -> Result<i64, SpecError> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| {
        SpecError::Invalid(format!("window `{s}`: expected a number and s, m, h or d"))
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(SpecError::Invalid(format!(
                "window `{s}`: unit must be s, m, h or d"
            )))
        }
    };
    if !(1..=400 * 86_400).contains(&secs) {
        return Err(SpecError::Invalid(format!(
            "window `{s}` must be between 1s and 400d"
        )));
    }
    Ok(secs)
}

/// The stable 64-bit fingerprint of remembered values and transaction ids: XXH3 with a fixed
/// seed (a published, versioned algorithm, so the memory and Redis backends, other replicas
/// and later versions agree on it).
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, 0x6672_6175_645f_6670)
}

impl FeatureSpec {
    /// Parses a TOML spec.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))
    }

    /// The spec that ships with the engine.
    pub fn default_spec() -> Self {
        // The embedded spec is tested to parse.
        Self::from_toml(DEFAULT_SPEC).unwrap_or_default()
    }
}
