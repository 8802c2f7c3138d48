//! `fraud audit`: check the decision log's hash chain, print its head, report who read which
//! decision records.

use std::path::PathBuf;

use anyhow::Context;

use crate::server::decisions::{log_file, verify_file};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Verify the whole chain of a decision log (exit 0 when intact); DIR is the log
    /// directory or the data directory. With --head, also check that a published head hash is
    /// still in the log (a log cut short after it was published fails).
    Verify {
        /// The log directory (`fraud-data/log`) or the data directory (`fraud-data`).
        dir: PathBuf,
        /// A head hash published earlier (`fraud audit head`).
        #[arg(long)]
        head: Option<String>,
    },
    /// Print the current head: the number of records and the hash of the last one.
    Head {
        /// The log directory or the data directory.
        dir: PathBuf,
    },
    /// Who read which decision records (and the other admin actions), from the log.
    Access {
        /// From this day (YYYY-MM-DD) or time (RFC 3339) on.
        #[arg(long)]
        since: String,
        /// The data directory.
        #[arg(long, default_value = "fraud-data")]
        data_dir: PathBuf,
        /// The encryption key file, for an encrypted log (ids are shown as sealed without it).
        #[arg(long)]
        encryption_key_file: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        Command::Verify { dir, head } => {
            let path = log_file(&dir);
            let mut seen_head = head.is_none();
            let mut hashes = 0u64;
            let want = head.as_deref().map(str::trim).unwrap_or("");
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            // The hash of each record is the first 64 bytes of its line.
            let scan = crate::server::decisions::scan(&bytes, &path, |offset, _| {
                hashes += 1;
                let at = offset as usize;
                if !seen_head && bytes.get(at..at + 64).is_some_and(|h| h == want.as_bytes()) {
                    seen_head = true;
                }
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            if scan.torn_bytes > 0 {
                anyhow::bail!(
                    "{}: record {} is cut short ({} bytes): the log was truncated or a write was interrupted",
                    path.display(),
                    scan.records + 1,
                    scan.torn_bytes
                );
            }
            if !seen_head {
                anyhow::bail!(
                    "{}: the published head {want} is not in the log: records were removed from its end",
                    path.display()
                );
            }
            super::emit(&format!(
                "{}: intact, {} records, head {}\n",
                path.display(),
                hashes,
                scan.head
            ))
        }
        Command::Head { dir } => {
            let path = log_file(&dir);
            let scan = verify_file(&path, |_, _| {}).map_err(|e| anyhow::anyhow!("{e}"))?;
            super::emit(&format!("{} {}\n", scan.records, scan.head))
        }
        Command::Access {
            since,
            data_dir,
            encryption_key_file,
        } => {
            let sealer = match &encryption_key_file {
                None => None,
                Some(p) => Some(
                    crate::server::seal::Sealer::new(
                        &std::fs::read(p)
                            .with_context(|| format!("cannot read {}", p.display()))?,
                    )
                    .map_err(anyhow::Error::msg)?,
                ),
            };
            let from = super::day_or_time("--since", &since)?;
            let path = log_file(&data_dir);
            let rfc = time::format_description::well_known::Rfc3339;
            let mut lines = Vec::new();
            verify_file(&path, |_, rec| {
                if rec.kind == "decision" || rec.kind == "label" {
                    return;
                }
                let mut rec = rec.clone();
                if rec.sealed.is_some() && rec.unseal(sealer.as_ref()).is_err() {
                    rec.data = serde_json::json!({"transaction_id": "(sealed)"});
                }
                let at = time::OffsetDateTime::parse(&rec.at, &rfc).ok();
                if at.is_some_and(|t| t >= from) {
                    let what = match rec.kind.as_str() {
                        "access" => format!(
                            "read decision {}",
                            rec.data["transaction_id"].as_str().unwrap_or("?")
                        ),
                        other => format!("{other} {}", rec.data),
                    };
                    lines.push(format!("{}\t{}\t{}", rec.at, rec.key, what));
                }
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut out = String::from("time\tkey\taction\n");
            for l in &lines {
                out.push_str(l);
                out.push('\n');
            }
            super::emit(&out)
        }
    }
}
