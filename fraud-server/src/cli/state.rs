//! `fraud state`: maintenance of the service's entity state.

use std::path::PathBuf;

use crate::server::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Rebuild the entity state in Redis from the decision log (after Redis lost its data):
    /// everything under the service's key prefix is removed, then every decision, label,
    /// erasure and card migration is replayed as the service applied it. Run it while no
    /// replica is scoring.
    Rebuild {
        /// The service's TOML config file (also FRAUD_CONFIG): `[state]` names Redis, the
        /// model or `feature_spec` the features, `encryption_key_file` opens the log.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A replica's data directory whose decision log to replay (repeat it for every
        /// replica; default: the config's `data_dir`).
        #[arg(long = "data-dir")]
        data_dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        Command::Rebuild { config, data_dirs } => {
            let file = config.or_else(|| std::env::var_os("FRAUD_CONFIG").map(PathBuf::from));
            let cfg = Config::load(file.as_deref(), std::env::vars())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let r = crate::server::rebuild::rebuild(&cfg, &data_dirs)?;
            println!(
                "entity state rebuilt in Redis: {} decisions and {} labels replayed ({} of erased entities skipped) from {} records; {} keys removed first",
                r.decisions, r.labels, r.erased, r.records, r.cleared
            );
            Ok(())
        }
    }
}
