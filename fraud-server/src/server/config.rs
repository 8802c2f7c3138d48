//! The service configuration: a TOML file (every setting optional, unknown settings refused)
//! with `FRAUD_*` environment overrides. With neither, the development defaults: 127.0.0.1:8080,
//! the embedded demo model, the default feature spec, durable in-memory state under
//! `./fraud-data`, and a development API key created there.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A setting that is missing, malformed or out of range: start-up stops and names it.
#[derive(Debug, thiserror::Error)]
#[error("config: {setting}: {reason}")]
pub struct ConfigError {
    /// The setting's path, e.g. `limits.max_batch` or `FRAUD_BIND`.
    pub setting: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(setting: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        reason: reason.into(),
    }
}

// The policy's sections are the decision library's types: one definition for the service,
// the example scorer and the Python package.
pub use fraud_core::decision::{Lists, PolicyConfig, RuleConfig, Thresholds};

/// Where entity state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process, rebuilt from the decision log at start.
    Memory,
    /// A Redis server (`state.redis_url`), shared by replicas.
    Redis,
}

impl Backend {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
        }
    }
}

/// What to do when entity state cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// 503 with Retry-After.
    Refuse,
    /// Score with the stateless features only; the answer says `"degraded": true`.
    Degrade,
}

/// When a decision is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogDurability {
    /// fsync (grouped) before each answer.
    Sync,
    /// Written to the operating system before each answer (survives a crash of the
    /// process, not of the machine).
    Write,
}

/// A setting's word (an enum's variant) from an environment variable.
fn word<T: serde::de::DeserializeOwned>(key: &str, v: &str) -> Result<T, ConfigError> {
    use serde::de::IntoDeserializer;
    T::deserialize(v.trim().into_deserializer())
        .map_err(|e: serde::de::value::Error| bad(key, e.to_string()))
}

/// A comma-separated list from an environment variable (empty items dropped).
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// The review console (`/console/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console.
    pub enabled: bool,
    /// Users file; `<data_dir>/users.json` when absent.
    pub users_file: Option<PathBuf>,
    /// A session ends after this long without a request (seconds).
    pub idle_timeout_s: u64,
    /// A session ends this long after login whatever happens (seconds).
    pub absolute_timeout_s: u64,
    /// Wrong logins in a row before a lock-out.
    pub max_failures: u32,
    /// How long a lock-out lasts (seconds).
    pub lockout_s: u64,
    /// Transaction fields an `analyst` sees (admins see every recorded field). The masked
    /// card, amount, time, score, reasons and rules are always shown. Known fields:
    /// customer_id, merchant_id, mcc, terminal_id, channel, card_country, merchant_country,
    /// ip, ip_country, device_id, email, latitude, longitude.
    pub analyst_fields: Vec<String>,
    /// Cases per queue page.
    pub page_size: usize,
}

/// Transaction fields the console can show: (name, label).
pub const CONSOLE_FIELDS: &[(&str, &str)] = &[
    ("customer_id", "Customer"),
    ("merchant_id", "Merchant"),
    ("mcc", "Category (MCC)"),
    ("terminal_id", "Terminal"),
    ("channel", "Channel"),
    ("card_country", "Card country"),
    ("merchant_country", "Merchant country"),
    ("ip", "IP address"),
    ("ip_country", "IP country"),
    ("device_id", "Device"),
    ("email", "E-mail"),
    ("latitude", "Latitude"),
    ("longitude", "Longitude"),
];

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            users_file: None,
            idle_timeout_s: 900,
            absolute_timeout_s: 8 * 3600,
            max_failures: 5,
            lockout_s: 900,
            analyst_fields: [
                "merchant_id",
                "mcc",
                "terminal_id",
                "channel",
                "card_country",
                "merchant_country",
                "ip_country",
            ]
            .map(String::from)
            .to_vec(),
            page_size: 50,
        }
    }
}

/// Where entity state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `memory` (in this process, rebuilt from the decision log at start) or `redis`.
    pub backend: Backend,
    /// Redis URL for the `redis` backend.
    pub redis_url: Option<String>,
    /// A Redis Cluster instead (`["redis://host:port", ...]`, some or all of its nodes):
    /// entities spread over its slots, one script call per entity.
    pub redis_cluster: Vec<String>,
    /// Redis Sentinel instead (`["redis://host:26379", ...]`): the primary they name as
    /// `redis_sentinel_master`, and the new one after a failover. `redis_url`, when given
    /// too, supplies only the primary's database, user and password.
    pub redis_sentinel: Vec<String>,
    /// The name the sentinels monitor the primary by (`sentinel monitor <name> ...`).
    pub redis_sentinel_master: Option<String>,
    /// Redis command timeout in milliseconds.
    pub redis_timeout_ms: u64,
    /// Memory backend: milliseconds between snapshots of the state (restarts replay only
    /// the log after the last one); 0: never.
    pub snapshot_interval_ms: u64,
    /// When entity state cannot be reached: `refuse` (503 with Retry-After) or `degrade`
    /// (score with the stateless features only; the answer says `"degraded": true`).
    pub on_unavailable: OnUnavailable,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: Backend::Memory,
            redis_url: None,
            redis_cluster: Vec::new(),
            redis_sentinel: Vec::new(),
            redis_sentinel_master: None,
            redis_timeout_ms: 50,
            on_unavailable: OnUnavailable::Refuse,
            snapshot_interval_ms: 300_000,
        }
    }
}

/// Where the decision log (and what derives from it) is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Hash-chained files under `data_dir` (the embedded default; one replica).
    Files,
    /// A PostgreSQL database (`store.url`) shared by replicas.
    Postgres,
}

/// The decision store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `files` or `postgres`.
    pub backend: StoreBackend,
    /// `postgres://user@host:port/db` for the `postgres` backend (also FRAUD_STORE_URL).
    pub url: Option<String>,
    /// This replica's id in the shared store (its records' `replica`; one running process
    /// per id). Default: one made once and kept in `<data_dir>/replica-id`.
    pub replica: Option<String>,
    /// How long a commit may take before the answers waiting for it fail (503), in ms.
    pub timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Files,
            url: None,
            replica: None,
            timeout_ms: 5_000,
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most transactions in one batch.
    pub max_batch: usize,
    /// Requests being processed at once; beyond, 503 with Retry-After.
    pub max_in_flight: usize,
    /// Requests per second allowed to one key (token bucket); beyond, 429.
    pub rate_per_key: f64,
    /// Burst allowed above the rate.
    pub burst_per_key: f64,
    /// HTTP worker threads (0: one per core).
    pub workers: usize,
    /// Threads of each HTTP worker's blocking pool, where requests that wait on a disk or
    /// on another server are scored (0: actix-web's default, 512 shared by the workers).
    /// A request waiting for a shared store's claim holds none.
    pub blocking_threads: usize,
    /// Pins each HTTP worker thread to one CPU of those the process may use, in turn (Linux;
    /// elsewhere a warning). For a machine or container given to the service: a worker is
    /// never moved, nor put beside another worker while a CPU is free.
    pub pin_workers: bool,
    /// Largest total size of a request's headers, bytes (beyond: 431).
    pub max_header_bytes: usize,
    /// Deepest tree a model may have (uploads and configured models; 422 beyond).
    pub max_tree_depth: usize,
    /// Most nodes in one tree of a model.
    pub max_tree_nodes: usize,
    /// Most nodes in all the trees of a model.
    pub max_model_nodes: usize,
    /// Largest model upload, bytes (streamed to disk, never held whole in memory; 413
    /// beyond).
    pub max_model_bytes: u64,
}

impl Limits {
    /// The model limits of these settings.
    pub fn model(&self) -> fraud_core::model::ModelLimits {
        fraud_core::model::ModelLimits {
            max_tree_depth: self.max_tree_depth,
            max_tree_nodes: self.max_tree_nodes,
            max_model_nodes: self.max_model_nodes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let model = fraud_core::model::ModelLimits::default();
        Limits {
            max_body_bytes: 64 * 1024,
            max_batch: 100,
            max_in_flight: 512,
            rate_per_key: 5_000.0,
            burst_per_key: 10_000.0,
            workers: 0,
            blocking_threads: 0,
            pin_workers: false,
            max_header_bytes: 16 * 1024,
            max_tree_depth: model.max_tree_depth,
            max_tree_nodes: model.max_tree_nodes,
            max_model_nodes: model.max_model_nodes,
            max_model_bytes: 512 << 20,
        }
    }
}

/// TLS (rustls): both files, PEM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Champion / challenger: the shadow model decides for a share of the cards.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    /// The share of cards (by token: a card always sees the same model) the shadow model
    /// decides for, the active one scored and recorded beside it; 0 (the default): the
    /// shadow never decides.
    pub traffic: f64,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen address.
    pub bind: String,
    /// Data directory (state, decision log, keys, development key).
    pub data_dir: PathBuf,
    /// Model artifact; the embedded demo model when absent.
    pub model: Option<PathBuf>,
    /// A shadow model, scored and recorded beside the active one, never deciding (unless
    /// `[shadow] traffic` gives it a share of the cards).
    pub shadow_model: Option<PathBuf>,
    /// Champion / challenger.
    pub shadow: ShadowConfig,
    /// Feature spec (TOML); the active model's stored spec, else the default spec.
    pub feature_spec: Option<PathBuf>,
    /// Keys file (hashed API keys); `<data_dir>/keys.json` when absent.
    pub keys_file: Option<PathBuf>,
    /// Tokenization key file (32 bytes or more); else FRAUD_TOKENIZATION_KEY (hex); else, in
    /// development, `<data_dir>/tokenization.key`, created once.
    pub tokenization_key_file: Option<PathBuf>,
    /// The key (32 bytes, a file outside the data directory) that encrypts the decision
    /// log's records and the state snapshots (AES-256-GCM); clear files when absent.
    pub encryption_key_file: Option<PathBuf>,
    /// Earlier tokenization keys (files), newest first: a card seen under one of them has its
    /// history moved to its token under the current key the next time its number arrives.
    pub previous_tokenization_key_files: Vec<PathBuf>,
    /// Ed25519 key (a file outside the data directory) that signs the decision log's head
    /// into the chain at start and every `audit_sign_interval_s` (see `fraud audit keygen`,
    /// `fraud audit verify --public-key`). Required in production mode.
    pub audit_signing_key_file: Option<PathBuf>,
    /// Seconds between signed heads while records arrive.
    pub audit_sign_interval_s: u64,
    /// Decision thresholds.
    pub thresholds: Thresholds,
    /// Rules, evaluated in order; the strictest action wins.
    pub rules: Vec<RuleConfig>,
    /// Allow and block lists.
    pub lists: Lists,
    /// Entity state.
    pub state: StateConfig,
    /// The decision store.
    pub store: StoreConfig,
    /// Limits.
    pub limits: Limits,
    /// Reasons returned per decision.
    pub reasons: usize,
    /// Decision log durability: `sync` (fsync, grouped, before each answer) or `write`.
    pub log_durability: LogDurability,
    /// How long decision-log records are kept (`400d`, `36h`, `90m`, `30s`); kept forever
    /// when absent. Whole segments are removed once their newest record is older (and a state
    /// snapshot holds them); a `retention` record names what was removed.
    pub retention: Option<String>,
    /// Size at which the decision log's open segment is closed (a new UTC day closes it
    /// too). Retention removes whole segments.
    pub log_segment_bytes: u64,
    /// How often retention runs, in seconds.
    pub retention_check_s: u64,
    /// TLS; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// The insider watch: thresholds on each key's rate of decision reads.
    pub insider: super::watch::WatchConfig,
    /// The review console.
    pub console: ConsoleConfig,
    /// Webhooks: where declines, reviews, closed cases and published policies are posted.
    pub webhooks: Vec<super::webhooks::WebhookConfig>,
    /// Production mode: refuses to start without TLS, a tokenization key (file or
    /// FRAUD_TOKENIZATION_KEY) and a keys file; no development key is ever created.
    pub production: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("fraud-data"),
            model: None,
            shadow_model: None,
            shadow: ShadowConfig::default(),
            feature_spec: None,
            keys_file: None,
            tokenization_key_file: None,
            previous_tokenization_key_files: Vec::new(),
            encryption_key_file: None,
            audit_signing_key_file: None,
            audit_sign_interval_s: 60,
            thresholds: Thresholds::default(),
            rules: Vec::new(),
            lists: Lists::default(),
            state: StateConfig::default(),
            store: StoreConfig::default(),
            limits: Limits::default(),
            reasons: 5,
            log_durability: LogDurability::Sync,
            retention: None,
            log_segment_bytes: 64 << 20,
            retention_check_s: 60,
            tls: None,
            insider: super::watch::WatchConfig::default(),
            console: ConsoleConfig::default(),
            webhooks: Vec::new(),
            production: false,
        }
    }
}

/// A file that does not read as a configuration: the setting's path (`limits.workers`) when
/// the error is in one, and where in the file.
fn toml_error(
    path: &Path,
    text: &str,
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let inner = e.inner();
    let place = match inner.span() {
        Some(s) => {
            let before = text.get(..s.start).unwrap_or(text);
            format!(
                "{} line {}",
                path.display(),
                before.matches('\n').count() + 1
            )
        }
        None => path.display().to_string(),
    };
    let setting = e.path().to_string();
    let setting = if setting.is_empty() || setting == "." {
        place
    } else {
        format!("{setting} ({place})")
    };
    bad(setting, inner.message().to_string())
}

/// Whether `path` lies inside `dir` (both resolved; false when either cannot be).
pub fn inside(path: &Path, dir: &Path) -> bool {
    match (path.canonicalize(), dir.canonicalize()) {
        (Ok(p), Ok(d)) => p.starts_with(d),
        _ => false,
    }
}

/// A secret file for production: it exists, group and others cannot read or write it, and
/// it is not inside the data directory (whoever takes a copy of the data must not get the
/// keys with it).
fn check_secret_file(name: &str, path: &Path, data_dir: &Path) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| bad(name, format!("cannot read {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(
                name,
                format!(
                    "{} can be read or written by group or others (mode {mode:o}); production mode needs it private: chmod 600 it",
                    path.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    if inside(path, data_dir) {
        return Err(bad(
            name,
            format!(
                "{} is inside the data directory; production mode keeps keys apart from the data they protect",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The prefix of the generic environment overrides: `FRAUD__<SECTION>__<SETTING>` sets any
/// setting of the file by its path (`FRAUD__LIMITS__MAX_BATCH=50`,
/// `FRAUD__STATE__BACKEND=redis`, `FRAUD__THRESHOLDS__REVIEW=0.4`).
pub const GENERIC_PREFIX: &str = "FRAUD__";

/// Sets the setting `key` names (`FRAUD__A__B`: `a.b`) to `value`: a TOML literal when it
/// reads as one (`100`, `true`, `0.4`, `["a", "b"]`), text otherwise.
fn overlay(table: &mut toml::Table, key: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = key[GENERIC_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(bad(key, "names no setting (FRAUD__SECTION__SETTING)"));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut at = table;
    for (i, part) in path.iter().enumerate() {
        if i + 1 == path.len() {
            at.insert(part.clone(), parsed);
            return Ok(());
        }
        let next = at
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match next {
            toml::Value::Table(t) => t,
            _ => return Err(bad(key, format!("`{part}` is a setting, not a section"))),
        };
    }
    Ok(())
}

impl Config {
    /// Reads the file (if any), applies the environment (`vars`), checks every setting.
    pub fn load(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            None => String::new(),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| bad(p.display().to_string(), format!("cannot read: {e}")))?,
        };
        let (generic, named): (Vec<_>, Vec<_>) = vars
            .into_iter()
            .partition(|(k, _)| k.starts_with(GENERIC_PREFIX));
        let mut cfg: Config = if generic.is_empty() {
            match file {
                None => Config::default(),
                Some(p) => serde_path_to_error::deserialize(toml::Deserializer::new(&text))
                    .map_err(|e| toml_error(p, &text, &e))?,
            }
        } else {
            // Every setting by its path: FRAUD__STATE__REDIS_TIMEOUT_MS=100 is
            // `[state] redis_timeout_ms = 100`, laid over the file.
            let mut table: toml::Table = match file {
                None => toml::Table::new(),
                Some(p) => toml::from_str(&text)
                    .map_err(|e| bad(p.display().to_string(), e.message().to_string()))?,
            };
            for (k, v) in &generic {
                overlay(&mut table, k, v)?;
            }
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                bad(
                    format!("{path} (from {GENERIC_PREFIX}...)"),
                    e.into_inner().message().to_string(),
                )
            })?
        };
        for (k, v) in named {
            cfg.apply_env(&k, &v)?;
        }
        cfg.check()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, key: &str, v: &str) -> Result<(), ConfigError> {
        let num = |k: &str| -> Result<f64, ConfigError> {
            v.trim()
                .parse::<f64>()
                .map_err(|_| bad(k, format!("`{v}` is not a number")))
        };
        let flag = |k: &str| -> Result<bool, ConfigError> {
            match v.trim() {
                "1" | "true" | "yes" => Ok(true),
                "0" | "false" | "no" | "" => Ok(false),
                other => Err(bad(k, format!("`{other}` is not true or false"))),
            }
        };
        let int = |k: &str| -> Result<usize, ConfigError> {
            v.trim()
                .parse::<usize>()
                .map_err(|_| bad(k, format!("`{v}` is not a whole number")))
        };
        match key {
            "FRAUD_BIND" => self.bind = v.to_string(),
            "FRAUD_DATA_DIR" => self.data_dir = PathBuf::from(v),
            "FRAUD_MODEL" => self.model = Some(PathBuf::from(v)),
            "FRAUD_SHADOW_MODEL" => self.shadow_model = Some(PathBuf::from(v)),
            "FRAUD_SHADOW_TRAFFIC" => {
                self.shadow.traffic = v
                    .parse()
                    .map_err(|_| bad("FRAUD_SHADOW_TRAFFIC", format!("`{v}` is not a number")))?
            }
            "FRAUD_FEATURE_SPEC" => self.feature_spec = Some(PathBuf::from(v)),
            "FRAUD_KEYS_FILE" => self.keys_file = Some(PathBuf::from(v)),
            "FRAUD_TOKENIZATION_KEY_FILE" => self.tokenization_key_file = Some(PathBuf::from(v)),
            "FRAUD_ENCRYPTION_KEY_FILE" => self.encryption_key_file = Some(PathBuf::from(v)),
            "FRAUD_AUDIT_SIGNING_KEY_FILE" => self.audit_signing_key_file = Some(PathBuf::from(v)),
            "FRAUD_REVIEW_THRESHOLD" => self.thresholds.review = num(key)?,
            "FRAUD_DECLINE_THRESHOLD" => self.thresholds.decline = num(key)?,
            "FRAUD_STATE_BACKEND" => self.state.backend = word(key, v)?,
            "FRAUD_REDIS_URL" => self.state.redis_url = Some(v.to_string()),
            "FRAUD_REDIS_CLUSTER" => self.state.redis_cluster = list(v),
            "FRAUD_REDIS_SENTINEL" => self.state.redis_sentinel = list(v),
            "FRAUD_REDIS_SENTINEL_MASTER" => self.state.redis_sentinel_master = Some(v.to_string()),
            "FRAUD_STORE_URL" => self.store.url = Some(v.to_string()),
            "FRAUD_MAX_BODY_BYTES" => self.limits.max_body_bytes = int(key)?,
            "FRAUD_MAX_BATCH" => self.limits.max_batch = int(key)?,
            "FRAUD_MAX_IN_FLIGHT" => self.limits.max_in_flight = int(key)?,
            "FRAUD_RATE_PER_KEY" => self.limits.rate_per_key = num(key)?,
            "FRAUD_WORKERS" => self.limits.workers = int(key)?,
            "FRAUD_BLOCKING_THREADS" => self.limits.blocking_threads = int(key)?,
            "FRAUD_LOG_DURABILITY" => self.log_durability = word(key, v)?,
            "FRAUD_RETENTION" => self.retention = Some(v.to_string()),
            "FRAUD_PIN_WORKERS" => self.limits.pin_workers = flag(key)?,
            "FRAUD_PRODUCTION" => self.production = flag(key)?,
            k if k.starts_with("FRAUD_CONFIG")
                || k == "FRAUD_TOKENIZATION_KEY"
                || k.starts_with(GENERIC_PREFIX) => {}
            k if k.starts_with("FRAUD_") => {
                // Not an error: other tools use the prefix too (FRAUD_BIN in the tests).
                eprintln!("warning: {k} is not a setting of the service; ignored");
            }
            _ => {}
        }
        Ok(())
    }

    /// The policy's sections (thresholds, rules, lists).
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            thresholds: self.thresholds.clone(),
            rules: self.rules.clone(),
            lists: self.lists.clone(),
        }
    }

    /// Checks every setting.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.bind
            .parse::<std::net::SocketAddr>()
            .map_err(|_| bad("bind", format!("`{}` is not an address:port", self.bind)))?;
        self.policy().check().map_err(|e| match e {
            fraud_core::decision::PolicyError::Setting { setting, reason } => bad(setting, reason),
            other => bad("policy", other.to_string()),
        })?;
        if self.state.backend == Backend::Redis
            && self.state.redis_url.is_none()
            && self.state.redis_cluster.is_empty()
            && self.state.redis_sentinel.is_empty()
        {
            return Err(bad(
                "state.redis_url",
                "is required for the redis backend (or state.redis_cluster, or state.redis_sentinel)",
            ));
        }
        if self.state.redis_url.is_some() && !self.state.redis_cluster.is_empty() {
            return Err(bad(
                "state.redis_cluster",
                "names a Redis Cluster: leave state.redis_url out (one or the other)",
            ));
        }
        if !self.state.redis_sentinel.is_empty() {
            if !self.state.redis_cluster.is_empty() {
                return Err(bad(
                    "state.redis_sentinel",
                    "names sentinels: leave state.redis_cluster out (one or the other)",
                ));
            }
            if self.state.redis_sentinel_master.is_none() {
                return Err(bad(
                    "state.redis_sentinel_master",
                    "is required with state.redis_sentinel: the name the sentinels monitor the primary by",
                ));
            }
        }
        if let Some(r) = &self.retention {
            parse_period(r).map_err(|e| bad("retention", e))?;
        }
        if self.store.backend == StoreBackend::Postgres {
            if self.store.url.is_none() {
                return Err(bad(
                    "store.url",
                    "is required for the postgres store (or FRAUD_STORE_URL)",
                ));
            }
            if let Some(r) = &self.store.replica {
                if r.is_empty()
                    || r.len() > 64
                    || !r
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(bad(
                        "store.replica",
                        "must be 1 to 64 letters, digits, '-', '_' or '.'",
                    ));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.shadow.traffic) {
            return Err(bad(
                "shadow.traffic",
                "must be a share between 0 and 1 (0.1: the shadow decides for a tenth of the cards)",
            ));
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            w.check(i)
                .map_err(|(setting, reason)| bad(setting, reason))?;
        }
        if self.log_segment_bytes < 1024 {
            return Err(bad("log_segment_bytes", "must be at least 1024"));
        }
        if self.retention_check_s == 0 {
            return Err(bad("retention_check_s", "must be at least 1"));
        }
        let l = &self.limits;
        if l.max_body_bytes < 256 || l.max_body_bytes > 64 << 20 {
            return Err(bad(
                "limits.max_body_bytes",
                "must be between 256 and 64 MiB",
            ));
        }
        if l.max_batch == 0 || l.max_batch > 10_000 {
            return Err(bad("limits.max_batch", "must be between 1 and 10,000"));
        }
        if l.max_header_bytes < 1024 {
            return Err(bad("limits.max_header_bytes", "must be at least 1024"));
        }
        if l.max_tree_depth == 0 || l.max_tree_depth > 4096 {
            return Err(bad("limits.max_tree_depth", "must be between 1 and 4096"));
        }
        if l.max_tree_nodes == 0 || l.max_tree_nodes > 1 << 24 {
            return Err(bad(
                "limits.max_tree_nodes",
                "must be between 1 and 16,777,216",
            ));
        }
        if l.max_model_nodes < l.max_tree_nodes {
            return Err(bad(
                "limits.max_model_nodes",
                "must be at least limits.max_tree_nodes",
            ));
        }
        if l.max_model_bytes < 1024 {
            return Err(bad("limits.max_model_bytes", "must be at least 1024"));
        }
        if l.max_in_flight == 0 {
            return Err(bad("limits.max_in_flight", "must be at least 1"));
        }
        if l.rate_per_key.is_nan()
            || l.rate_per_key <= 0.0
            || l.burst_per_key.is_nan()
            || l.burst_per_key < 1.0
        {
            return Err(bad(
                "limits.rate_per_key",
                "rate must be > 0 and burst_per_key >= 1",
            ));
        }
        if self.production {
            if self.tls.is_none() {
                return Err(bad(
                    "tls",
                    "production mode needs TLS: set [tls] cert and key",
                ));
            }
            if self.keys_file.is_none() {
                return Err(bad(
                    "keys_file",
                    "production mode needs a keys file (fraud keys create ...); no development key is made",
                ));
            }
            if self.encryption_key_file.is_none() {
                return Err(bad(
                    "encryption_key_file",
                    "production mode encrypts its files at rest: set a key file outside the data directory",
                ));
            }
            if self.tokenization_key_file.is_none()
                && std::env::var_os("FRAUD_TOKENIZATION_KEY").is_none()
            {
                return Err(bad(
                    "tokenization_key_file",
                    "production mode needs a tokenization key: a file, or FRAUD_TOKENIZATION_KEY",
                ));
            }
            if self.audit_signing_key_file.is_none() {
                return Err(bad(
                    "audit_signing_key_file",
                    "production mode signs the decision log's head: make a key outside the data directory with `fraud audit keygen --out FILE`",
                ));
            }
            // Every secret: readable by its owner only, and apart from the data it protects.
            let mut secrets: Vec<(String, &Path)> = [
                ("keys_file", &self.keys_file),
                ("encryption_key_file", &self.encryption_key_file),
                ("audit_signing_key_file", &self.audit_signing_key_file),
                ("tokenization_key_file", &self.tokenization_key_file),
            ]
            .into_iter()
            .filter_map(|(name, p)| p.as_deref().map(|p| (name.to_string(), p)))
            .collect();
            for (i, p) in self.previous_tokenization_key_files.iter().enumerate() {
                secrets.push((format!("previous_tokenization_key_files[{i}]"), p));
            }
            if let Some(t) = &self.tls {
                secrets.push(("tls.key".into(), &t.key));
            }
            for (name, path) in secrets {
                check_secret_file(&name, path, &self.data_dir)?;
            }
        }
        if self.audit_sign_interval_s == 0 {
            return Err(bad("audit_sign_interval_s", "must be at least 1"));
        }
        let w = &self.insider;
        if w.window_s.is_nan()
            || w.window_s < 0.001
            || w.min_reads.is_nan()
            || w.min_reads < 1.0
            || w.factor.is_nan()
            || w.factor < 1.0
        {
            return Err(bad(
                "insider",
                "window_s must be > 0, min_reads >= 1 and factor >= 1",
            ));
        }
        let c = &self.console;
        if let Some(f) = c
            .analyst_fields
            .iter()
            .find(|f| !CONSOLE_FIELDS.iter().any(|(n, _)| n == f))
        {
            return Err(bad(
                "console.analyst_fields",
                format!(
                    "`{f}` is not one of {}",
                    CONSOLE_FIELDS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if c.idle_timeout_s == 0 || c.absolute_timeout_s < c.idle_timeout_s {
            return Err(bad(
                "console.idle_timeout_s",
                "must be > 0 and at most console.absolute_timeout_s",
            ));
        }
        if c.max_failures == 0 || c.page_size == 0 || c.page_size > 500 {
            return Err(bad(
                "console",
                "max_failures must be >= 1 and page_size between 1 and 500",
            ));
        }
        if self.reasons > 50 {
            return Err(bad("reasons", "must be at most 50"));
        }
        Ok(())
    }
}

/// Parses a period such as `400d`, `36h`, `90m` or `30s` into seconds.
pub fn parse_period(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let unit = t.chars().last().unwrap_or(' ');
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => {
            return Err(format!(
                "`{s}`: expected a number and s, m, h or d, e.g. 400d"
            ))
        }
    };
    let n: u64 = t[..t.len() - 1]
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and s, m, h or d, e.g. 400d"))?;
    if n == 0 {
        return Err(format!("`{s}`: must be longer than zero"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}`: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| bad("test", e.to_string()))?;
        let path = dir.path().join("fraud.toml");
        std::fs::write(&path, file).map_err(|e| bad("test", e.to_string()))?;
        Config::load(
            Some(&path),
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn every_setting_is_overridden_by_its_path_in_the_environment() {
        let c = load(
            "reasons = 3\n[limits]\nmax_batch = 10\n",
            &[
                ("FRAUD__LIMITS__MAX_BATCH", "50"),
                ("FRAUD__STATE__BACKEND", "redis"),
                ("FRAUD__STATE__REDIS_URL", "redis://127.0.0.1:1/"),
                ("FRAUD__THRESHOLDS__REVIEW", "0.4"),
                ("FRAUD__LOG_DURABILITY", "write"),
                ("FRAUD__CONSOLE__ENABLED", "false"),
                ("FRAUD__LISTS__BLOCK__CUSTOMERS", "[\"C1\", \"C2\"]"),
                // A named override still applies, after the generic ones.
                ("FRAUD_DECLINE_THRESHOLD", "0.8"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.reasons, 3);
        assert_eq!(c.limits.max_batch, 50);
        assert_eq!(c.state.backend, Backend::Redis);
        assert_eq!(c.thresholds.review, 0.4);
        assert_eq!(c.thresholds.decline, 0.8);
        assert_eq!(c.log_durability, LogDurability::Write);
        assert!(!c.console.enabled);
        assert_eq!(c.lists.block.customers, vec!["C1", "C2"]);
        for (vars, says) in [
            (("FRAUD__LIMITS__NOPE", "1"), "nope"),
            (("FRAUD__STATE__BACKEND", "disk"), "state.backend"),
            (("FRAUD__REASONS__X", "1"), "reasons"),
            (("FRAUD__", "1"), "names no setting"),
            (("FRAUD__LIMITS__MAX_BATCH", "many"), "limits.max_batch"),
        ] {
            let e = load("reasons = 3\n", &[vars])
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{vars:?}: {e}");
        }
        // Without generic overrides a file's error still names its line.
        let e = load("reasons = \"x\"\n", &[])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("reasons"), "{e}");
    }

    #[test]
    fn redis_sentinel_settings_are_checked() {
        let c = load(
            "[state]\nbackend = \"redis\"\n",
            &[
                ("FRAUD_REDIS_SENTINEL", "redis://a:26379, redis://b:26379"),
                ("FRAUD_REDIS_SENTINEL_MASTER", "primary"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.state.redis_sentinel,
            vec!["redis://a:26379", "redis://b:26379"]
        );
        assert_eq!(c.state.redis_sentinel_master.as_deref(), Some("primary"));
        for (file, says) in [
            (
                "[state]\nbackend = \"redis\"\nredis_sentinel = [\"redis://a:26379\"]\n",
                "state.redis_sentinel_master",
            ),
            (
                "[state]\nbackend = \"redis\"\nredis_sentinel = [\"redis://a:26379\"]\nredis_sentinel_master = \"m\"\nredis_cluster = [\"redis://c:6379\"]\n",
                "state.redis_sentinel",
            ),
        ] {
            let e = load(file, &[]).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(says), "{file}: {e}");
        }
    }
}
