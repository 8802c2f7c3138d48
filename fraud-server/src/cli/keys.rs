//! `fraud keys`: create, list and revoke the service's API keys. Only the SHA-256 of a key is
//! stored; the key itself is printed once, at creation. `list` shows, for an access review,
//! each key's roles, creation, expiry, last use and request counts (from the decision log).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;

use crate::server::decisions::{log_dir, segment_files, verify_dir};
use crate::server::keys::{self, Role};
use crate::server::pgstore;

/// Within how many seconds replicas follow a key change in the store (they look every
/// second).
const FOLLOW_S: u64 = 3;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a key; prints it once (it cannot be shown again).
    Create {
        /// score, analyst or admin (repeatable, or comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        role: Vec<String>,
        /// Who or what uses it (unique).
        #[arg(long)]
        name: String,
        /// Expiry: YYYY-MM-DD or RFC 3339 (never when absent).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Every key and console user with roles, creation, expiry, last use and request counts.
    List,
    /// Revoke a key by name.
    Revoke {
        /// The key's name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The keys file (default: `<data dir>/keys.json`).
    #[arg(long, global = true)]
    keys_file: Option<PathBuf>,
    /// The console users file (default: `<data dir>/users.json`), listed too.
    #[arg(long, global = true)]
    users_file: Option<PathBuf>,
    /// The data directory (for the default keys file and the usage in the log).
    #[arg(long, global = true, default_value = "fraud-data")]
    data_dir: PathBuf,
    /// The PostgreSQL store replicas share (`postgres://...`): keys are created, revoked
    /// and listed there instead of in a keys file, and every replica on it follows them
    /// within a few seconds (usage comes from every replica's records).
    #[arg(long, global = true)]
    store: Option<String>,
}

fn parse_role(s: &str) -> anyhow::Result<Role> {
    match s.trim() {
        "score" => Ok(Role::Score),
        "analyst" => Ok(Role::Analyst),
        "admin" => Ok(Role::Admin),
        other => anyhow::bail!("--role `{other}`: expected score, analyst or admin"),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let path = a
        .keys_file
        .clone()
        .unwrap_or_else(|| a.data_dir.join("keys.json"));
    match a.command {
        Command::Create {
            role,
            name,
            expires,
        } => {
            let roles = role
                .iter()
                .map(|r| parse_role(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let expires = match expires {
                None => None,
                Some(e) => Some(expiry(&e)?),
            };
            if let Some(url) = &a.store {
                if name.trim().is_empty() {
                    anyhow::bail!("--name must not be empty");
                }
                let (record, secret) = keys::new_record(&name, roles, expires)?;
                pgstore::add_stored_key(url, &record)?;
                return super::emit(&format!(
                    "created key `{name}` in the store\n{secret}\nstore it now: it is not kept and cannot be shown again\nevery replica on this store accepts it within {} s\n",
                    FOLLOW_S
                ));
            }
            let secret = keys::add_key(&path, &name, roles, expires)?;
            super::emit(&format!(
                "created key `{name}` in {}\n{secret}\nstore it now: it is not kept and cannot be shown again\nrunning services using this keys file accept it within {} s\n",
                path.display(),
                keys::RELOAD_EVERY.as_secs().max(1) + 1
            ))
        }
        Command::Revoke { name } => {
            if let Some(url) = &a.store {
                pgstore::revoke_stored_key(url, &name)?;
                return super::emit(&format!(
                    "revoked key `{name}` in the store\nevery replica on this store refuses it within {} s (no restart needed)\n",
                    FOLLOW_S
                ));
            }
            keys::revoke_key(&path, &name)?;
            super::emit(&format!(
                "revoked key `{name}` in {}\nrunning services using this keys file refuse it within {} s (they re-read the file when it changes; no restart needed)\n",
                path.display(),
                keys::RELOAD_EVERY.as_secs().max(1) + 1
            ))
        }
        Command::List => {
            let records = match &a.store {
                Some(url) => pgstore::stored_keys(url)?,
                None => keys::read_records(&path)?,
            };
            // Usage from the decision log: requests recorded per key and the last one.
            let mut usage: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
            let log = log_dir(&a.data_dir);
            if let Some(url) = &a.store {
                for (key, n, reads, last) in pgstore::key_usage(url)? {
                    usage.insert(key, (n, reads, last));
                }
            } else if segment_files(&log).is_ok_and(|f| !f.is_empty()) {
                verify_dir(&log, |_, rec| {
                    let u = usage.entry(rec.key.clone()).or_default();
                    if rec.is(crate::server::decisions::Kind::Access) {
                        u.1 += 1;
                    } else {
                        u.0 += 1;
                    }
                    u.2 = rec.at.clone();
                })
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("usage from the decision log")?;
            }
            let mut out = String::from("name\troles\tcreated\texpires\tstatus\tlast use\trecorded requests\tdecision reads\n");
            for r in &records {
                let roles: Vec<&str> = r.roles.iter().map(|x| x.name()).collect();
                let (n, reads, last) = usage.get(&r.name).cloned().unwrap_or_default();
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    r.name,
                    roles.join(","),
                    r.created,
                    r.expires.as_deref().unwrap_or("never"),
                    if r.revoked { "revoked" } else { "active" },
                    if last.is_empty() { "never" } else { &last },
                    n,
                    reads
                ));
            }
            // Console users: their actions are recorded under `console:<name>`.
            let users_path = super::users::users_path(&a.users_file, &a.data_dir);
            for u in crate::server::users::read_records(&users_path)? {
                let key = format!("console:{}", u.name);
                let (n, reads, last) = usage.get(&key).cloned().unwrap_or_default();
                out.push_str(&format!(
                    "{key}\t{} (console user)\t{}\tnever\t{}\t{}\t{}\t{}\n",
                    u.role.name(),
                    u.created,
                    if u.disabled { "disabled" } else { "active" },
                    if last.is_empty() { "never" } else { &last },
                    n,
                    reads
                ));
            }
            super::emit(&out)
        }
    }
}

fn expiry(s: &str) -> anyhow::Result<String> {
    let t = super::day_or_time("--expires", s)?;
    Ok(t.format(&time::format_description::well_known::Rfc3339)?)
}
