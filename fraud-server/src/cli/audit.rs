//! `fraud audit`: check the decision log's hash chain, print its head, report who read which
//! decision records.

use std::path::PathBuf;

use crate::server::decisions::{log_dir, verify_dir};

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
            let mut seen_head = head.is_none();
            let mut records = 0u64;
            let want = head.as_deref().map(str::trim).unwrap_or("");
            let scan = verify_dir(&dir, |pos, _| {
                records += 1;
                if !seen_head && pos.hash == want {
                    seen_head = true;
                }
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let place = log_dir(&dir);
            if scan.torn_bytes > 0 {
                anyhow::bail!(
                    "{}: record {} is cut short ({} bytes): the log was truncated or a write was interrupted",
                    place.display(),
                    scan.records + 1,
                    scan.torn_bytes
                );
            }
            if !seen_head {
                anyhow::bail!(
                    "{}: the published head {want} is not in the log: records were removed from its end",
                    place.display()
                );
            }
            let kept = if scan.first > 1 {
                format!(
                    " (records 1 to {} removed by retention, as recorded)",
                    scan.first - 1
                )
            } else {
                String::new()
            };
            super::emit(&format!(
                "{}: intact, {} records in {} segment(s){kept}, head {}\n",
                place.display(),
                records,
                scan.files.len(),
                scan.head
            ))
        }
        Command::Head { dir } => {
            let scan = verify_dir(&dir, |_, _| {}).map_err(|e| anyhow::anyhow!("{e}"))?;
            super::emit(&format!("{} {}\n", scan.records, scan.head))
        }
        Command::Access {
            since,
            data_dir,
            encryption_key_file,
        } => {
            let sealer = match &encryption_key_file {
                None => None,
                Some(p) => {
                    Some(crate::server::seal::Sealer::from_file(p).map_err(anyhow::Error::msg)?)
                }
            };
            let from = super::day_or_time("--since", &since)?;
            let rfc = time::format_description::well_known::Rfc3339;
            let mut lines = Vec::new();
            verify_dir(&data_dir, |_, rec| {
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
