//! `fraud audit`: check the decision log's hash chain, print its head, report who read which
//! decision records.

use std::path::PathBuf;

use crate::server::decisions::{log_dir, verify_dir, Kind};
use crate::server::heads::{HeadSigner, HeadVerifier};

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
        /// The Ed25519 public key of the service's `audit_signing_key_file` (64 hex digits,
        /// or a file holding them): every signed head in the log must verify with it and
        /// match the chain, and at least one must be there. Without the signing key nobody
        /// can rewrite the records up to the last signed head.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Print the current head: the number of records and the hash of the last one (with
    /// --signing-key, a signature of it to publish).
    Head {
        /// The log directory or the data directory.
        dir: PathBuf,
        /// Signs the head with this Ed25519 key file (the service's audit_signing_key_file).
        #[arg(long)]
        signing_key: Option<PathBuf>,
    },
    /// Make an Ed25519 signing key for the decision log's heads (mode 0600) and print its
    /// public key. Keep the file outside the data directory.
    Keygen {
        /// Where to write the key (refused if it exists).
        #[arg(long)]
        out: PathBuf,
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
        Command::Verify {
            dir,
            head,
            public_key,
        } => {
            let mut seen_head = head.is_none();
            let mut records = 0u64;
            let want = head.as_deref().map(str::trim).unwrap_or("");
            let verifier = public_key
                .as_deref()
                .map(HeadVerifier::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
            // (seq of the last good signed head, first bad signed head)
            let mut signed: (u64, Option<String>) = (0, None);
            let scan = verify_dir(&dir, |pos, rec| {
                records += 1;
                if !seen_head && pos.hash == want {
                    seen_head = true;
                }
                if let (Some(v), true) = (&verifier, rec.is(Kind::Head)) {
                    if signed.1.is_some() {
                        return;
                    }
                    let n = rec.data["records"].as_u64();
                    let h = rec.data["head"].as_str().unwrap_or("");
                    let sig = rec.data["signature"].as_str().unwrap_or("");
                    if n != Some(rec.seq - 1) || h != rec.prev {
                        signed.1 = Some(format!(
                            "record {}: a signed head that does not match the chain before it",
                            rec.seq
                        ));
                    } else if !v.verify(rec.seq - 1, h, sig) {
                        signed.1 = Some(format!(
                            "record {}: the signed head does not verify with public key {}",
                            rec.seq,
                            v.public_hex()
                        ));
                    } else {
                        signed.0 = rec.seq;
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(bad) = signed.1 {
                anyhow::bail!("{}: {bad}", log_dir(&dir).display());
            }
            if verifier.is_some() && signed.0 == 0 {
                anyhow::bail!(
                    "{}: no signed head verifies with this public key: the log cannot be shown to be the service's",
                    log_dir(&dir).display()
                );
            }
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
            let signed_note = if verifier.is_some() {
                format!(
                    "; signed through record {} ({} record(s) after the last signed head)",
                    signed.0,
                    scan.records.saturating_sub(signed.0)
                )
            } else {
                String::new()
            };
            super::emit(&format!(
                "{}: intact, {} records in {} segment(s){kept}, head {}{signed_note}\n",
                place.display(),
                records,
                scan.files.len(),
                scan.head
            ))
        }
        Command::Head { dir, signing_key } => {
            let scan = verify_dir(&dir, |_, _| {}).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut out = format!("{} {}\n", scan.records, scan.head);
            if let Some(p) = signing_key {
                let signer =
                    HeadSigner::from_file(&p).map_err(|e| anyhow::anyhow!("--signing-key: {e}"))?;
                out.push_str(&format!(
                    "signature {}\npublic-key {}\n",
                    signer.sign(scan.records, &scan.head),
                    signer.public_hex()
                ));
            }
            super::emit(&out)
        }
        Command::Keygen { out } => {
            if out.exists() {
                anyhow::bail!("{} exists already; not overwritten", out.display());
            }
            let (signer, seed) = HeadSigner::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut text = fraud_core::hex::encode(&seed);
            text.push('\n');
            let written = crate::server::keys::write_private(&out, text.as_bytes());
            zeroize::Zeroize::zeroize(&mut text);
            written.map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            super::emit(&format!(
                "wrote {} (mode 0600; keep it outside the data directory)\npublic-key {}\n",
                out.display(),
                signer.public_hex()
            ))
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
                if rec.is(Kind::Decision) || rec.is(Kind::Label) {
                    return;
                }
                let mut rec = rec.clone();
                if rec.sealed.is_some() && rec.unseal(sealer.as_ref()).is_err() {
                    rec.data = serde_json::json!({"transaction_id": "(sealed)"});
                }
                let at = time::OffsetDateTime::parse(&rec.at, &rfc).ok();
                if at.is_some_and(|t| t >= from) {
                    let what = match Kind::parse(&rec.kind) {
                        Some(Kind::Access) => format!(
                            "read decision {}",
                            rec.data["transaction_id"].as_str().unwrap_or("?")
                        ),
                        _ => format!("{} {}", rec.kind, rec.data),
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
