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
        #[arg(required_unless_present = "store")]
        dir: Option<PathBuf>,
        /// Verify a PostgreSQL store shared by replicas instead (`postgres://...`): every
        /// replica's chain, and no transaction decided twice.
        #[arg(long, conflicts_with_all = ["dir", "head"])]
        store: Option<String>,
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
            store,
            head,
            public_key,
        } => {
            let verifier = public_key
                .as_deref()
                .map(HeadVerifier::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
            let dir = match (dir, store) {
                (_, Some(url)) => return verify_store(&url, verifier.as_ref()),
                (Some(d), None) => d,
                (None, None) => anyhow::bail!("give a log directory or --store URL"),
            };
            let mut seen_head = head.is_none();
            let mut records = 0u64;
            let want = head.as_deref().map(str::trim).unwrap_or("");
            let mut signed = SignedHeads::default();
            let scan = verify_dir(&dir, |pos, rec| {
                records += 1;
                if !seen_head && pos.hash == want {
                    seen_head = true;
                }
                signed.visit(verifier.as_ref(), rec);
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            signed.check(verifier.is_some(), &log_dir(&dir).display().to_string())?;
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
            let signed_note = signed.note(verifier.is_some(), scan.records);
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

/// The signed heads of one chain, checked as they are read: (seq of the last good one, the
/// first bad one).
#[derive(Default)]
struct SignedHeads(u64, Option<String>);

impl SignedHeads {
    fn visit(&mut self, verifier: Option<&HeadVerifier>, rec: &crate::server::decisions::Record) {
        let (Some(v), true) = (verifier, rec.is(Kind::Head)) else {
            return;
        };
        if self.1.is_some() {
            return;
        }
        let n = rec.data["records"].as_u64();
        let h = rec.data["head"].as_str().unwrap_or("");
        let sig = rec.data["signature"].as_str().unwrap_or("");
        if n != Some(rec.seq - 1) || h != rec.prev {
            self.1 = Some(format!(
                "record {}: a signed head that does not match the chain before it",
                rec.seq
            ));
        } else if !v.verify(rec.seq - 1, h, sig) {
            self.1 = Some(format!(
                "record {}: the signed head does not verify with public key {}",
                rec.seq,
                v.public_hex()
            ));
        } else {
            self.0 = rec.seq;
        }
    }

    /// An error naming `place` when a signed head is bad, or none verifies (with a key).
    fn check(&self, with_key: bool, place: &str) -> anyhow::Result<()> {
        if let Some(bad) = &self.1 {
            anyhow::bail!("{place}: {bad}");
        }
        if with_key && self.0 == 0 {
            anyhow::bail!(
                "{place}: no signed head verifies with this public key: the log cannot be shown to be the service's"
            );
        }
        Ok(())
    }

    fn note(&self, with_key: bool, records: u64) -> String {
        if with_key {
            format!(
                "; signed through record {} ({} record(s) after the last signed head)",
                self.0,
                records.saturating_sub(self.0)
            )
        } else {
            String::new()
        }
    }
}

/// `fraud audit verify --store URL`: every replica's chain in the shared store verified as a
/// log directory is (and each record naming the replica it is filed under), then every
/// transaction decided at most once across replicas.
fn verify_store(url: &str, verifier: Option<&HeadVerifier>) -> anyhow::Result<()> {
    let mut store = crate::server::pgstore::StoredChains::open(url)
        .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let replicas = store
        .replicas()
        .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    if replicas.is_empty() {
        anyhow::bail!("--store: the store holds no records");
    }
    let mut decided: std::collections::HashMap<String, (String, u64)> = Default::default();
    let mut lines = Vec::new();
    let mut total = 0u64;
    for replica in &replicas {
        let place = format!("store replica {replica}");
        let mut signed = SignedHeads::default();
        let mut bad: Option<String> = None;
        let scan = store
            .verify(replica, |rec, filed| {
                if bad.is_some() {
                    return;
                }
                if rec.replica.as_deref() != Some(replica.as_str()) {
                    bad = Some(format!(
                        "record {} names replica {:?}, not the one it is filed under",
                        rec.seq, rec.replica
                    ));
                }
                signed.visit(verifier, rec);
                if rec.is(Kind::Decision) {
                    let id = rec.data["transaction_id"]
                        .as_str()
                        .or(filed)
                        .map(str::to_string);
                    if let Some(id) = id.as_deref() {
                        if let Some((r, s)) = decided.get(id) {
                            bad = Some(format!(
                                "record {}: transaction {id:?} was decided already (replica {r}, record {s})",
                                rec.seq
                            ));
                        } else {
                            decided.insert(id.to_string(), (replica.clone(), rec.seq));
                        }
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(b) = bad {
            anyhow::bail!("{place}: {b}");
        }
        signed.check(verifier.is_some(), &place)?;
        total += scan.records;
        lines.push(format!(
            "  replica {replica}: {} records, head {}{}",
            scan.records,
            scan.head,
            signed.note(verifier.is_some(), scan.records)
        ));
    }
    super::emit(&format!(
        "store: intact, {total} records from {} replica(s); {} transactions, each decided once\n{}\n",
        replicas.len(),
        decided.len(),
        lines.join("\n")
    ))
}
