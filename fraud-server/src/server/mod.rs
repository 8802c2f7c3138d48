//! The scoring service (`fraud serve`): configuration, keys, the engine, the decision log and
//! the HTTP API. Start-up checks everything it can (config, model, feature spec, rules, keys,
//! state, log) and stops with a message naming what is wrong.

pub mod cases;
pub mod compare;
pub mod config;
pub mod console;
pub mod decisions;
pub mod engine;
pub mod feature_sets;
pub mod heads;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod pgstore;
pub mod pin;
pub mod policies;
pub mod problem;
pub mod rebuild;
pub mod record;
pub mod seal;
pub mod sharded;
pub mod users;
pub mod vault;
pub mod watch;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fraud_core::features::{Extractor, FeatureSpec, MemoryStore};
use fraud_core::model::Artifact;
use fraud_core::pii::Tokenizer;

use config::Config;

/// The demo model, built by `scripts/make-demo-model.sh` from generated data.
pub static DEMO_MODEL: &[u8] = include_bytes!("../../../datasets/demo/model.fgb");

/// `fraud serve` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listen address (overrides the config file and FRAUD_BIND).
    #[arg(long)]
    bind: Option<String>,
    /// TOML config file (also FRAUD_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Production mode (also `production = true`, FRAUD_PRODUCTION=1): refuses to start
    /// without TLS, a tokenization key and a keys file.
    #[arg(long)]
    production: bool,
}

/// The tokenization key: the configured file, else FRAUD_TOKENIZATION_KEY (hex), else the
/// development key under the data directory (created once, mode 0600).
fn tokenizer(cfg: &Config) -> anyhow::Result<(Tokenizer, String)> {
    if let Some(p) = &cfg.tokenization_key_file {
        let key = std::fs::read(p).with_context(|| {
            format!("config: tokenization_key_file: cannot read {}", p.display())
        })?;
        return Ok((
            Tokenizer::new(&key).context("config: tokenization_key_file")?,
            p.display().to_string(),
        ));
    }
    if let Ok(text) = std::env::var("FRAUD_TOKENIZATION_KEY") {
        let key = zeroize::Zeroizing::new(
            fraud_core::hex::decode(&text).context("FRAUD_TOKENIZATION_KEY must be hexadecimal")?,
        );
        return Ok((
            Tokenizer::new(&key).context("FRAUD_TOKENIZATION_KEY")?,
            "FRAUD_TOKENIZATION_KEY".into(),
        ));
    }
    let path = cfg.data_dir.join("tokenization.key");
    if !path.exists() {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|_| anyhow::anyhow!("no randomness from the OS"))?;
        keys::write_private(&path, &key)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let key = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((
        Tokenizer::new(&key).with_context(|| path.display().to_string())?,
        path.display().to_string(),
    ))
}

fn load_artifact(path: Option<&Path>, setting: &str) -> anyhow::Result<(Artifact, String)> {
    match path {
        None => Ok((
            Artifact::from_bytes(DEMO_MODEL).context("the embedded demo model")?,
            "embedded demo model".to_string(),
        )),
        Some(p) => Ok((
            Artifact::load(p).with_context(|| format!("config: {setting}: {}", p.display()))?,
            p.display().to_string(),
        )),
    }
}

/// The service's HTTP application on `state` (and the review console's routes when given):
/// what every worker of `fraud serve` runs, and what tests run in process with
/// `actix_web::test::init_service`.
pub fn app(
    state: actix_web::web::Data<http::AppState>,
    console: Option<actix_web::web::Data<console::Console>>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let mut app = actix_web::App::new().app_data(state);
    if let Some(c) = console {
        app = app.app_data(c).configure(console::routes);
    }
    // The last wrapped runs first: oversized headers and card numbers in URLs are refused
    // before anything else, then every API answer is counted.
    app.wrap(actix_web::middleware::from_fn(http::observe))
        .wrap(actix_web::middleware::from_fn(http::header_guard))
        .configure(http::routes)
}

/// Everything the service needs, built from a configuration.
pub struct Service {
    /// Shared HTTP state.
    pub state: actix_web::web::Data<http::AppState>,
    /// Where the development key was written, in development mode.
    pub dev_key: Option<PathBuf>,
    /// Listen address.
    pub bind: String,
    /// HTTP workers.
    pub workers: usize,
    /// Threads of each worker's blocking pool (0: actix-web's default).
    pub blocking_threads: usize,
    /// Each HTTP worker pinned to a CPU.
    pub pin_workers: bool,
    /// Decision-log records replayed into the memory state at start.
    pub replayed: u64,
    /// The review console, when enabled.
    pub console: Option<actix_web::web::Data<console::Console>>,
}

/// Every file the service creates from now on is private to its user (0600, directories
/// 0700), whatever umask it was started with.
pub fn private_umask() {
    #[cfg(target_os = "linux")]
    {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    }
}

/// Makes everything under `dir` private to its owner: files 0600, directories 0700 (files
/// an older version or another tool left readable to others). Symbolic links are not
/// followed.
pub fn make_private(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o777 != mode {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot make {} private", dir.display()))?;
        }
        if meta.is_dir() {
            for e in
                std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?
            {
                make_private(
                    &e.with_context(|| format!("cannot read {}", dir.display()))?
                        .path(),
                )?;
            }
        }
    }
    Ok(())
}

/// The feature pipeline of `cfg` (its `feature_spec`, else the configured model's own),
/// with the model's artifact and where it came from.
pub fn extractor(cfg: &Config) -> anyhow::Result<(Extractor, Artifact, String)> {
    let (artifact, origin) = load_artifact(cfg.model.as_deref(), "model")?;
    let spec = match &cfg.feature_spec {
        Some(p) => FeatureSpec::from_toml(
            &std::fs::read_to_string(p)
                .with_context(|| format!("config: feature_spec: cannot read {}", p.display()))?,
        )
        .with_context(|| format!("config: feature_spec: {}", p.display()))?,
        None => artifact.feature_spec(),
    };
    let extractor = Extractor::new(spec).context("feature spec")?;
    Ok((extractor, artifact, origin))
}

/// The sealer of `cfg`'s `encryption_key_file`, if one is configured (refused inside the
/// data directory).
pub fn sealer(cfg: &Config) -> anyhow::Result<Option<seal::Sealer>> {
    Ok(match &cfg.encryption_key_file {
        None => None,
        Some(p) => {
            if config::inside(p, &cfg.data_dir) {
                anyhow::bail!(
                    "config: encryption_key_file: {} is inside the data directory; keep the key apart from the data it protects",
                    p.display()
                );
            }
            let key = std::fs::read(p).with_context(|| {
                format!("config: encryption_key_file: cannot read {}", p.display())
            })?;
            Some(
                seal::Sealer::new(&key)
                    .map_err(|e| anyhow::anyhow!("config: encryption_key_file: {e}"))?,
            )
        }
    })
}

/// This replica's id in a shared store: `[store] replica`, else the one made once and kept in
/// `<data_dir>/replica-id`.
fn replica_id(cfg: &Config) -> anyhow::Result<String> {
    if let Some(r) = &cfg.store.replica {
        return Ok(r.clone());
    }
    let path = cfg.data_dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw)
        .map_err(|e| anyhow::anyhow!("no randomness for a replica id: {e}"))?;
    let id = format!("r-{}", fraud_core::hex::encode(&raw));
    fraud_core::files::write_atomic(&path, id.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// The Redis entity state of `cfg` (`[state] redis_url`, `redis_sentinel` or
/// `redis_cluster`), connected.
pub fn redis_store(cfg: &Config) -> anyhow::Result<fraud_core::features::redis::RedisStore> {
    let timeout = Duration::from_millis(cfg.state.redis_timeout_ms);
    if !cfg.state.redis_cluster.is_empty() {
        return fraud_core::features::redis::RedisStore::open_cluster(
            &cfg.state.redis_cluster,
            "fraud:",
            timeout,
        )
        .context("config: state.redis_cluster");
    }
    if !cfg.state.redis_sentinel.is_empty() {
        return fraud_core::features::redis::RedisStore::open_sentinel(
            &cfg.state.redis_sentinel,
            cfg.state
                .redis_sentinel_master
                .as_deref()
                .unwrap_or_default(),
            cfg.state.redis_url.as_deref(),
            "fraud:",
            timeout,
        )
        .context("config: state.redis_sentinel");
    }
    let url = cfg.state.redis_url.as_deref().unwrap_or_default();
    fraud_core::features::redis::RedisStore::open(url, "fraud:", timeout)
        .context("config: state.redis_url")
}

/// Builds the service of `cfg` (everything but the listening socket).
pub fn build(cfg: &Config) -> anyhow::Result<Service> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("config: data_dir: cannot create {}", cfg.data_dir.display()))?;
    make_private(&cfg.data_dir).context("config: data_dir")?;
    let (extractor, artifact, origin) = extractor(cfg)?;
    let model_limits = cfg.limits.model();
    let model = engine::LoadedModel::new(&artifact, &extractor, &origin, &model_limits)
        .map_err(|e| anyhow::anyhow!("config: model ({origin}): {e}"))?;
    let shadow = match &cfg.shadow_model {
        None => None,
        Some(p) => {
            let (a, o) = load_artifact(Some(p), "shadow_model")?;
            Some(
                engine::LoadedModel::new(&a, &extractor, &o, &model_limits)
                    .map_err(|e| anyhow::anyhow!("config: shadow_model: {e}"))?,
            )
        }
    };
    // Checked before anything is opened: a policy that does not compile stops the start.
    fraud_core::decision::Policy::new(&cfg.policy(), extractor.names())
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    let (tokenizer, _) = tokenizer(cfg)?;
    // Memory state is derived from the decision log (rebuilt below from the last snapshot and
    // the records after it): one fsync per answer, and the state always equals a replay of
    // what was recorded.
    let sealer = sealer(cfg)?;
    let mut snapshot_tag = 0u64;
    let state: engine::StateBackend = match cfg.state.backend {
        config::Backend::Redis => engine::StateBackend::Redis(Arc::new(redis_store(cfg)?)),
        _ => {
            // The last snapshot, if whole and of this spec; otherwise the whole log.
            let snap = cfg.data_dir.join("state").join("state.bin");
            let load = |snap: &std::path::Path| -> anyhow::Result<(MemoryStore, u64)> {
                let bytes = std::fs::read(snap)?;
                let bytes = match &sealer {
                    Some(s) => s.open(&bytes, b"state").map_err(anyhow::Error::msg)?,
                    None => bytes,
                };
                Ok(MemoryStore::from_state_bytes(&bytes, snap, &extractor)?)
            };
            let (m, tag) = if snap.exists() {
                match load(&snap) {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("warning: state snapshot {} not used ({e}); replaying the whole decision log", snap.display());
                        (MemoryStore::new(), 0)
                    }
                }
            } else {
                (MemoryStore::new(), 0)
            };
            snapshot_tag = tag;
            engine::StateBackend::Memory(Arc::new(m))
        }
    };
    let log_dir = cfg.data_dir.join("log");
    // One pass over the log as it opens: the memory state is rebuilt, and the models last
    // installed (uploads are kept under <data dir>/models) are found.
    let replay = cfg.state.backend == config::Backend::Memory;
    let mut failure = None;
    let mut replayed = 0u64;
    let mut installed: [Option<Option<String>>; 2] = [None, None];
    let mut pending_shred = Vec::new();
    let review_cases = cases::Cases::default();
    let mut policy_history = policies::History::default();
    // The records the webhooks have not delivered yet (those after the oldest cursor that
    // make an event), this replica's own.
    let replica = replica_id(cfg)?;
    let webhook_from = webhooks::Webhooks::oldest_cursor(&cfg.webhooks, &cfg.data_dir);
    let mut webhook_backlog: Vec<decisions::Record> = Vec::new();
    let mut visit = |rec: &decisions::Record, vault: Option<&vault::Vault>| {
        policy_history.record(rec);
        if webhook_from.is_some_and(|from| rec.seq > from)
            && rec.replica.as_deref().is_none_or(|r| r == replica)
            && webhooks::event_of(&rec.kind, &rec.key, &rec.data).is_some()
        {
            webhook_backlog.push(rec.clone());
        }
        if rec.is(decisions::Kind::Model) {
            let slot = usize::from(rec.data["role"] == "shadow");
            installed[slot] = Some(rec.data["file"].as_str().map(str::to_string));
        }
        review_cases.record(None, &rec.kind, rec.seq, &rec.at, &rec.data);
        if replay && rec.seq > snapshot_tag && failure.is_none() {
            replayed += 1;
            match engine::replay_record(&extractor, &state, rec, vault) {
                Ok(Some(key_ref)) => pending_shred.push(key_ref),
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
        }
    };
    let (log, vault): (Box<dyn decisions::Journal>, Option<Arc<vault::Vault>>) =
        match cfg.store.backend {
            config::StoreBackend::Files => {
                let vault = Arc::new(vault::Vault::open(&cfg.data_dir, sealer.clone())?);
                let log = decisions::DecisionLog::open(
                    &log_dir,
                    cfg.log_durability == config::LogDurability::Sync,
                    sealer.clone(),
                    cfg.log_segment_bytes,
                    Some(vault.clone()),
                    |rec| visit(rec, Some(&vault)),
                )?;
                (Box::new(log), Some(vault))
            }
            config::StoreBackend::Postgres => {
                let log = pgstore::PgJournal::open(
                    cfg.store.url.as_deref().unwrap_or_default(),
                    &replica,
                    Duration::from_millis(cfg.store.timeout_ms),
                    sealer.clone(),
                    |rec| visit(rec, None),
                )
                .context("config: store")?;
                if let Some(r) = &cfg.retention {
                    let period = config::parse_period(r)
                        .map_err(|e| anyhow::anyhow!("config: retention: {e}"))?;
                    log.set_retention_ms(period.saturating_mul(1000));
                }
                let vault = log.vault_handle();
                (Box::new(log), Some(vault))
            }
        };
    if let Some(e) = failure {
        anyhow::bail!("cannot rebuild entity state from the decision log: {e}");
    }
    let hooks = webhooks::Webhooks::new(&cfg.webhooks, &cfg.data_dir, log.records(), &replica)
        .context("config")?;
    for rec in &webhook_backlog {
        hooks.offer(rec.seq, &rec.at, &rec.kind, &rec.key, &rec.data);
    }
    drop(webhook_backlog);
    let (policies, published) = policies::Policies::start(
        policy_history,
        &cfg.policy(),
        extractor.names(),
        &*log,
        policies::RECENT,
    )?;
    if let Some((seq, data)) = published {
        hooks.offer(seq, &webhooks::now(), "policy", "config", &data);
    }
    let (keys, dev_key) = match &cfg.keys_file {
        Some(p) => (Arc::new(keys::LiveKeys::open(p)?), None),
        None => {
            let (keys_path, path) = keys::Keys::development(&cfg.data_dir)?;
            (Arc::new(keys::LiveKeys::open(&keys_path)?), Some(path))
        }
    };
    let mut previous_keys = Vec::new();
    for (i, p) in cfg.previous_tokenization_key_files.iter().enumerate() {
        let key = std::fs::read(p).with_context(|| {
            format!(
                "config: previous_tokenization_key_files[{i}]: cannot read {}",
                p.display()
            )
        })?;
        previous_keys.push(
            Tokenizer::new(&key)
                .with_context(|| format!("config: previous_tokenization_key_files[{i}]"))?,
        );
    }
    let engine = engine::Engine::builder()
        .extractor(extractor)
        .state(state)
        .tokenizer(tokenizer)
        .model(model)
        .shadow(shadow)
        .policies(policies)
        .webhooks(hooks)
        .shadow_traffic(cfg.shadow.traffic)
        .log(log)
        .reasons(cfg.reasons)
        .degrade(cfg.state.on_unavailable == config::OnUnavailable::Degrade)
        .models_dir(cfg.data_dir.join("models"))
        .sealer(sealer)
        .vault_opt(vault)
        .shared_store(cfg.store.backend == config::StoreBackend::Postgres)
        .cases(review_cases)
        .snapshot_path(cfg.data_dir.join("state").join("state.bin"))
        .watch(watch::Watch::new(cfg.insider.clone()))
        .previous_keys(previous_keys)
        .build()
        .map_err(anyhow::Error::msg)?;
    for (slot, shadow) in [(0usize, false), (1, true)] {
        match &installed[slot] {
            // An uploaded model named by the log: restored.
            Some(Some(file)) => {
                let path = cfg.data_dir.join(file);
                let artifact = Artifact::load(&path).with_context(|| {
                    format!(
                        "the model the decision log names as in use, {}",
                        path.display()
                    )
                })?;
                // A model over the limits (lowered since, or stored by an older version that
                // did not check them) must not take the service down at every start.
                if let Err(e) = artifact.ensemble.check_limits(&model_limits) {
                    eprintln!(
                        "warning: the uploaded model {} that the decision log names is not used: {e}; the configured model serves",
                        path.display()
                    );
                    continue;
                }
                let loaded = engine::LoadedModel::new(
                    &artifact,
                    &engine.extractor,
                    &path.display().to_string(),
                    &model_limits,
                )
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                engine.swap(Some(loaded), shadow);
            }
            // The shadow was removed.
            Some(None) if shadow => engine.swap(None, true),
            _ => {}
        }
    }
    if !pending_shred.is_empty() {
        // Erasures recorded before a stop that came before their keys were destroyed.
        engine
            .shred(&pending_shred)
            .map_err(|e| anyhow::anyhow!("finishing an erasure: {e}"))?;
    }
    let engine = Arc::new(engine);
    webhooks::Webhooks::start(&engine);
    let console = if cfg.console.enabled {
        let path = cfg
            .console
            .users_file
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("users.json"));
        let users = users::Users::open(
            &path,
            engine.sealer.clone(),
            users::LoginPolicy {
                max_failures: cfg.console.max_failures,
                lockout: Duration::from_secs(cfg.console.lockout_s),
            },
        )
        .context("config: console.users_file")?;
        Some(actix_web::web::Data::new(
            console::Console::new(engine.clone(), users, cfg.console.clone())
                .map_err(anyhow::Error::msg)?,
        ))
    } else {
        None
    };
    let workers = if cfg.limits.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        cfg.limits.workers
    };
    Ok(Service {
        state: actix_web::web::Data::new(http::AppState::new(
            engine,
            keys,
            cfg.limits.clone(),
            // In memory, nothing of scoring waits on I/O but the decision log's fsync, which
            // the answer awaits without a thread (group commit): scored on the HTTP worker.
            cfg.state.backend == config::Backend::Memory,
        )),
        dev_key,
        bind: cfg.bind.clone(),
        workers,
        blocking_threads: cfg.limits.blocking_threads,
        pin_workers: cfg.limits.pin_workers,
        replayed,
        console,
    })
}

/// Snapshots the memory state every `interval`, so that a restart replays a short log.
fn snapshots(engine: Arc<engine::Engine>, dir: PathBuf, interval: Duration) {
    if interval.is_zero() || engine.state.memory().is_none() {
        return;
    }
    std::thread::spawn(move || loop {
        std::thread::sleep(interval);
        engine.evict_idle();
        if let Err(e) = engine.snapshot(&dir.join("state.bin")) {
            eprintln!("warning: state snapshot failed: {e}");
        }
    });
}

/// The rustls server configuration of `[tls]`: TLS 1.3 and 1.2 only, the certificate chain
/// and private key from PEM files.
pub fn tls_config(t: &config::TlsConfig) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .with_context(|| format!("config: tls.cert: cannot read {}", t.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "config: tls.cert: {} is not a PEM certificate chain",
                t.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "config: tls.cert: {} holds no certificate",
            t.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).with_context(|| {
        format!(
            "config: tls.key: {} is not a PEM private key",
            t.key.display()
        )
    })?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("config: tls: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("config: tls: the key does not match the certificate")
}

/// Runs `fraud serve`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let file = a
        .config
        .clone()
        .or_else(|| std::env::var_os("FRAUD_CONFIG").map(PathBuf::from));
    let mut cfg = Config::load(file.as_deref(), std::env::vars())?;
    if let Some(b) = a.bind {
        cfg.bind = b;
    }
    if a.production {
        cfg.production = true;
    }
    cfg.check()?;
    private_umask();
    let tls = cfg.tls.as_ref().map(tls_config).transpose()?;
    let service = build(&cfg)?;
    let engine = service.state.engine.clone();
    let model = engine.model.load();
    println!(
        "fraud-server {}: model {} ({}), {} features, state {} ({} log records replayed), data in {}",
        env!("CARGO_PKG_VERSION"),
        model.version,
        model.origin,
        engine.extractor.names().len(),
        cfg.state.backend.name(),
        service.replayed,
        cfg.data_dir.display()
    );
    match &service.dev_key {
        Some(p) => println!(
            "development mode: an API key with every role is in {} (send it as `Authorization: Bearer <key>`)",
            p.display()
        ),
        None => println!("API keys: {} loaded", service.state.keys.len()),
    }
    service.state.keys.clone().watch();
    if let Some(p) = &cfg.audit_signing_key_file {
        let signer = heads::HeadSigner::from_file(p)
            .map_err(|e| anyhow::anyhow!("config: audit_signing_key_file: {e}"))?;
        engine
            .log
            .append_signed_head(&signer)
            .context("signing the decision log's head")?;
        println!(
            "decision log heads signed (Ed25519 public key {})",
            signer.public_hex()
        );
        sign_heads(
            engine.clone(),
            signer,
            Duration::from_secs(cfg.audit_sign_interval_s),
        );
    }
    if cfg.store.backend == config::StoreBackend::Postgres {
        // The models the store assigns, now and from then on (an upload to any replica
        // reaches this one within about a second).
        let limits = cfg.limits.model();
        match engine.follow_models(&limits) {
            Ok(0) => {}
            Ok(n) => println!("{n} model role(s) taken from the shared model registry"),
            Err(e) => eprintln!("warning: the shared model registry: {e}"),
        }
        // The review queue and the overview take in the other replicas' decisions, labels
        // and escalations, now and from then on.
        match engine.follow_records() {
            Ok(0) => {}
            Ok(n) => println!("{n} record(s) of the other replicas taken into the review queue"),
            Err(e) => eprintln!("warning: the other replicas' records: {e}"),
        }
        // The API keys the store holds (`fraud keys create --store`), beside the keys file.
        let keys = service.state.keys.clone();
        match follow_keys(&engine, &keys) {
            Ok(_) => {}
            Err(e) => eprintln!("warning: the shared API keys: {e}"),
        }
        follow_store(engine.clone(), keys, limits, Duration::from_secs(1));
    }
    snapshots(
        engine.clone(),
        cfg.data_dir.join("state"),
        Duration::from_millis(cfg.state.snapshot_interval_ms),
    );
    if let Some(r) = &cfg.retention {
        let period =
            config::parse_period(r).map_err(|e| anyhow::anyhow!("config: retention: {e}"))?;
        retention(
            engine.clone(),
            period,
            Duration::from_secs(cfg.retention_check_s),
        );
    }
    let bind = service.bind.clone();
    let workers = service.workers;
    let blocking_threads = service.blocking_threads;
    let pins = if service.pin_workers {
        match pin::Pins::new() {
            Ok(p) => {
                if workers > p.cpus().len() {
                    eprintln!(
                        "warning: limits.pin_workers: {workers} workers on {} CPUs: some share one",
                        p.cpus().len()
                    );
                }
                Some(Arc::new(p))
            }
            Err(e) => {
                eprintln!("warning: limits.pin_workers: {e}; workers not pinned");
                None
            }
        }
    } else {
        None
    };
    let console = service.console.clone();
    let state = service.state.clone();
    actix_web::rt::System::new().block_on(async move {
        let server = actix_web::HttpServer::new(move || {
            // Called on each worker's thread as it starts.
            if let Some(p) = &pins {
                match p.pin_this_thread() {
                    Ok(cpu) => println!("HTTP worker pinned to CPU {cpu}"),
                    Err(e) => eprintln!("warning: limits.pin_workers: {e}"),
                }
            }
            app(state.clone(), console.clone())
        })
        .workers(workers)
        .backlog(2048)
        .client_request_timeout(Duration::from_secs(5))
        .client_disconnect_timeout(Duration::from_secs(2))
        .keep_alive(Duration::from_secs(30));
        let server = if blocking_threads > 0 {
            server.worker_max_blocking_threads(blocking_threads)
        } else {
            server
        };
        let (server, scheme) = match tls {
            Some(t) => (server.bind_rustls_0_23(&bind, t), "https"),
            None => (server.bind(&bind), "http"),
        };
        let server = server.with_context(|| format!("config: bind: cannot listen on {bind}"))?;
        println!("listening on {scheme}://{bind}");
        server.run().await.context("server")
    })
}

/// Every `every`, the models the shared store assigns are followed, the other replicas'
/// records are taken into the review queue and the store's API keys into `keys`; an error
/// is reported once until the store answers again.
fn follow_store(
    engine: Arc<engine::Engine>,
    keys: Arc<keys::LiveKeys>,
    limits: fraud_core::model::ModelLimits,
    every: Duration,
) {
    std::thread::spawn(move || {
        let mut failing = [false, false, false];
        loop {
            std::thread::sleep(every);
            let results = [
                engine.follow_models(&limits).map(|_| ()),
                engine
                    .follow_records()
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                follow_keys(&engine, &keys).map(|_| ()),
            ];
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(()) => failing[i] = false,
                    Err(e) if !failing[i] => {
                        failing[i] = true;
                        let what = [
                            "the shared model registry",
                            "the other replicas' records",
                            "the shared API keys",
                        ][i];
                        eprintln!("warning: {what}: {e}");
                    }
                    Err(_) => {}
                }
            }
        }
    });
}

/// Takes the API keys the shared store holds now into `keys`; whether they changed.
fn follow_keys(engine: &engine::Engine, keys: &keys::LiveKeys) -> Result<bool, String> {
    match engine.log.api_keys().map_err(|e| e.to_string())? {
        Some(records) => keys.set_stored(records).map_err(|e| e.to_string()),
        None => Ok(false),
    }
}

/// Signs the decision log's head every `every` while records arrive.
fn sign_heads(engine: Arc<engine::Engine>, signer: heads::HeadSigner, every: Duration) {
    std::thread::spawn(move || loop {
        std::thread::sleep(every);
        if let Err(e) = engine.log.append_signed_head(&signer) {
            eprintln!("warning: signing the decision log's head failed: {e}");
        }
    });
}

/// Removes decision-log segments (and the entity keys only they used) older than the
/// retention period, every `every`.
fn retention(engine: Arc<engine::Engine>, period_s: u64, every: Duration) {
    std::thread::spawn(move || loop {
        match engine.retain(period_s) {
            Ok((r, 0)) if r.segments == 0 && r.records == 0 => {}
            Ok((r, keys)) if r.segments == 0 => println!(
                "retention: removed {} stored record(s) (through seq {}) and {keys} entity key(s) older than {period_s} s",
                r.records, r.through
            ),
            Ok((r, keys)) => println!(
                "retention: removed {} decision-log segment(s) and {keys} entity key(s) older than {period_s} s",
                r.segments
            ),
            Err(e) => eprintln!("warning: retention failed: {e}"),
        }
        std::thread::sleep(every);
    });
}
