//! `fraud state rebuild`: entity state in Redis rebuilt from the decision log. Redis is a
//! cache of what the log holds (every decision's transaction, every label, erasure and card
//! migration): when it loses its data (a flush, a failover to an empty replica, a new
//! cluster), this replays the log's records into it as the service applied them, so that
//! the velocity and label-aware features come back without waiting for traffic to refill
//! them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::config::{Backend, Config, StoreBackend};
use super::decisions::{verify_dir, Kind};
use super::engine::{replay_record, StateBackend};

/// What a rebuild did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Keys removed from Redis first.
    pub cleared: usize,
    /// Records read (every kind), over all logs.
    pub records: u64,
    /// Decisions replayed.
    pub decisions: u64,
    /// Labels replayed.
    pub labels: u64,
    /// Decisions and labels whose entities were erased since (nothing to replay).
    pub erased: u64,
}

/// Rebuilds the Redis entity state of `cfg` from the decision logs of `data_dirs` (each
/// replica's data directory; `cfg.data_dir` when empty). Everything under the service's key
/// prefix is removed first. Run it while no replica is scoring (stopped, or not routed to):
/// a transaction scored meanwhile would be counted in the state it replaces.
pub fn rebuild(cfg: &Config, data_dirs: &[PathBuf]) -> anyhow::Result<Rebuilt> {
    if cfg.state.backend != Backend::Redis {
        anyhow::bail!(
            "the state backend is `memory`: the service rebuilds it from its decision log at every start; `fraud state rebuild` is for `[state] backend = \"redis\"`"
        );
    }
    let (extractor, _, _) = super::extractor(cfg)?;
    let sealer = super::sealer(cfg)?;
    // Markers for the rebuild's whole length: a transaction in two logs is replayed twice,
    // however far apart.
    let redis = Arc::new(super::redis_store(cfg)?.with_marker_ttl(24 * 3600 * 1000));
    if cfg.store.backend == StoreBackend::Postgres && data_dirs.is_empty() {
        return from_store(cfg, &extractor, sealer.as_ref(), &redis);
    }
    let dirs = if data_dirs.is_empty() {
        vec![cfg.data_dir.clone()]
    } else {
        data_dirs.to_vec()
    };
    // Every log is read (and its chain verified) before Redis is touched.
    for dir in &dirs {
        verify_dir(dir, |_, _| {}).with_context(|| {
            format!(
                "the decision log of {} does not verify; nothing was changed",
                dir.display()
            )
        })?;
    }
    let (state, mut out) = cleared(&redis)?;
    for dir in &dirs {
        let vault = super::vault::Vault::open(dir, sealer.clone())
            .with_context(|| format!("the entity keys of {}", dir.display()))?;
        let mut failure: Option<anyhow::Error> = None;
        verify_dir(dir, |_, rec| {
            if failure.is_some() {
                return;
            }
            out.records += 1;
            if let Err(e) = replay(
                &extractor,
                &state,
                rec,
                sealer.as_ref(),
                Some(&vault),
                &mut out,
            ) {
                failure = Some(e);
            }
        })
        .with_context(|| format!("reading the decision log of {}", dir.display()))?;
        if let Some(e) = failure {
            return Err(e.context(format!(
                "replaying the decision log of {} into Redis (the state there is partial: run the rebuild again)",
                dir.display()
            )));
        }
    }
    Ok(out)
}

/// Replays one record (opened with `sealer` and `vault`) into `state` if it changes state,
/// counting it in `out`.
fn replay(
    extractor: &fraud_core::features::Extractor,
    state: &StateBackend,
    rec: &super::decisions::Record,
    sealer: Option<&super::seal::Sealer>,
    vault: Option<&super::vault::Vault>,
    out: &mut Rebuilt,
) -> anyhow::Result<()> {
    let kind = Kind::parse(&rec.kind);
    if !matches!(
        kind,
        Some(Kind::Decision | Kind::Label | Kind::Erase | Kind::Migrate)
    ) {
        return Ok(());
    }
    let mut rec = rec.clone();
    rec.unseal(sealer)
        .map_err(|e| anyhow::anyhow!("record {}: {e}", rec.seq))?;
    if let Some(v) = vault {
        v.reveal(&mut rec.data);
    }
    let erased = rec.data["transaction"]["card"]["token"].is_null();
    match kind {
        Some(Kind::Decision | Kind::Label) if erased => out.erased += 1,
        Some(Kind::Decision) => out.decisions += 1,
        Some(Kind::Label) => out.labels += 1,
        _ => {}
    }
    replay_record(extractor, state, &rec, vault)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!(e))
}

/// The rebuild from a PostgreSQL store: every replica's chain verified, then replayed.
fn from_store(
    cfg: &Config,
    extractor: &fraud_core::features::Extractor,
    sealer: Option<&super::seal::Sealer>,
    redis: &Arc<fraud_core::features::redis::RedisStore>,
) -> anyhow::Result<Rebuilt> {
    let url = cfg.store.url.as_deref().unwrap_or_default();
    let mut store =
        super::pgstore::StoredChains::open(url).context("reading the store's records")?;
    let replicas = store.replicas().context("reading the store's records")?;
    let vault = super::pgstore::store_vault(url, sealer.cloned())
        .context("opening the store's entity keys")?;
    // Every chain verified first (a page at a time), then replayed.
    for replica in &replicas {
        store
            .verify(replica, |_, _| {})
            .with_context(|| "the store does not verify; nothing was changed".to_string())?;
    }
    let (state, mut out) = cleared(redis)?;
    for replica in &replicas {
        let mut failure = None;
        store.verify(replica, |rec, _| {
            out.records += 1;
            if failure.is_none() {
                failure = replay(extractor, &state, rec, sealer, Some(&vault), &mut out).err();
            }
        })?;
        if let Some(e) = failure {
            return Err(e.context(format!(
                "replaying replica {replica}'s records into Redis (the state there is partial: run the rebuild again)"
            )));
        }
    }
    Ok(out)
}

/// Redis emptied under the service's prefix, as a state backend, and the count so far.
fn cleared(
    redis: &Arc<fraud_core::features::redis::RedisStore>,
) -> anyhow::Result<(StateBackend, Rebuilt)> {
    let out = Rebuilt {
        cleared: redis
            .clear()
            .context("clearing the entity state in Redis")?,
        ..Rebuilt::default()
    };
    Ok((StateBackend::Redis(redis.clone()), out))
}
