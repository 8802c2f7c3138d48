//! `fraud features`: offline replay of a transaction history into the features the online
//! path would have computed for each transaction at its time.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use std::collections::HashMap;

use fraud_core::features::{replay_flat, Extractor, FeatureSpec};
use fraud_core::pii::Tokenizer;
use fraud_core::transaction::{RawTransaction, Transaction};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// History CSV; its columns are the transaction's JSON field names.
    #[arg(long)]
    input: PathBuf,
    /// Where to write `transaction_id` and one column per feature, in input order.
    #[arg(long)]
    output: PathBuf,
    /// Feature spec (TOML); the default spec when absent.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Fraud labels (CSV: `transaction_id`, `is_fraud` 0/1, optional `reported_at` RFC 3339,
    /// when the label became known; the transaction's time when empty). When given, these are
    /// the only labels; otherwise the history's own `is_fraud` / `fraud_reported_at` columns
    /// are used. Label-aware features only count labels known early enough.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// File holding the tokenization key (32 bytes or more) for rows with `card_number`.
    /// Otherwise the key comes from FRAUD_TOKENIZATION_KEY (hex), or a one-off random key is
    /// used: tokens are never written, only compared, so features do not depend on it.
    #[arg(long)]
    key_file: Option<PathBuf>,
}

fn tokenizer(a: &Args) -> anyhow::Result<Tokenizer> {
    if let Some(p) = &a.key_file {
        let key =
            std::fs::read(p).with_context(|| format!("cannot read key file {}", p.display()))?;
        return Tokenizer::new(&key).context("tokenization key");
    }
    if let Ok(hex) = std::env::var("FRAUD_TOKENIZATION_KEY") {
        let hex = hex.trim();
        let key: Result<Vec<u8>, _> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("x"), 16))
            .collect();
        let key = key
            .ok()
            .filter(|_| hex.len() % 2 == 0)
            .context("FRAUD_TOKENIZATION_KEY must be hexadecimal")?;
        return Tokenizer::new(&key).context("FRAUD_TOKENIZATION_KEY");
    }
    // A one-off key: tokens stay inside this process.
    use std::hash::{BuildHasher, Hasher};
    let mut key = Vec::with_capacity(32);
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        key.extend_from_slice(&h.finish().to_le_bytes());
    }
    Tokenizer::new(&key).context("tokenization key")
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let spec = match &a.spec {
        Some(p) => FeatureSpec::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        )?,
        None => FeatureSpec::default_spec(),
    };
    let extractor = Extractor::new(spec)?;
    let tk = tokenizer(&a)?;
    let file = std::fs::File::open(&a.input)
        .with_context(|| format!("cannot open {}", a.input.display()))?;
    let mut reader = csv::Reader::from_reader(std::io::BufReader::with_capacity(1 << 20, file));
    let mut history = Vec::new();
    for (i, row) in reader.deserialize::<RawTransaction>().enumerate() {
        let raw = row.map_err(|e| {
            // The csv error names the field; it never quotes a cell's content.
            anyhow::anyhow!("{}: row {}: {}", a.input.display(), i + 1, csv_error(&e))
        })?;
        let tx = Transaction::from_raw(raw, &tk)
            .map_err(|e| anyhow::anyhow!("{}: row {}: {e}", a.input.display(), i + 1))?;
        history.push(tx);
    }
    if let Some(path) = &a.labels {
        let labels = read_labels(path)?;
        let mut used = 0usize;
        for tx in &mut history {
            match labels.get(&tx.transaction_id) {
                Some(&(fraud, at)) => {
                    used += 1;
                    tx.is_fraud = Some(fraud);
                    tx.fraud_reported_at_us = at;
                }
                None => {
                    tx.is_fraud = None;
                    tx.fraud_reported_at_us = None;
                }
            }
        }
        if used < labels.len() {
            eprintln!(
                "note: {} of {} labels name no transaction of {}",
                labels.len() - used,
                labels.len(),
                a.input.display()
            );
        }
    }
    let m = extractor.names().len();
    let flat = replay_flat(&extractor, &history);
    let rows = flat.chunks(m.max(1));
    let file = std::fs::File::create(&a.output)
        .with_context(|| format!("cannot create {}", a.output.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    write!(out, "transaction_id")?;
    for n in extractor.names() {
        write!(out, ",{n}")?;
    }
    writeln!(out)?;
    for (tx, f) in history.iter().zip(rows) {
        write!(out, "{}", csv_field(&tx.transaction_id))?;
        for &v in f {
            if v.is_nan() {
                write!(out, ",")?;
            } else {
                write!(out, ",{v}")?;
            }
        }
        writeln!(out)?;
    }
    out.flush().context("cannot write features")?;
    super::emit(&format!(
        "wrote {} features for {} transactions to {}\n",
        extractor.names().len(),
        history.len(),
        a.output.display()
    ))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(f) => format!("column {}: {}", f + 1, err.kind()),
            None => err.kind().to_string(),
        },
        _ => e.to_string(),
    }
}

#[derive(serde::Deserialize)]
struct LabelRow {
    transaction_id: String,
    is_fraud: String,
    #[serde(default, alias = "fraud_reported_at", alias = "known_at")]
    reported_at: Option<String>,
}

/// Reads a labels file: transaction id -> (fraud, when known).
fn read_labels(path: &std::path::Path) -> anyhow::Result<HashMap<String, (bool, Option<i64>)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = csv::Reader::from_reader(std::io::BufReader::new(file));
    let mut out = HashMap::new();
    for (i, row) in reader.deserialize::<LabelRow>().enumerate() {
        let row = row
            .map_err(|e| anyhow::anyhow!("{}: row {}: {}", path.display(), i + 1, csv_error(&e)))?;
        let fraud = match row.is_fraud.trim() {
            "1" | "true" | "True" | "TRUE" => true,
            "0" | "false" | "False" | "FALSE" => false,
            other => anyhow::bail!(
                "{}: row {}: is_fraud is `{}`; must be 0 or 1",
                path.display(),
                i + 1,
                other.chars().take(20).collect::<String>()
            ),
        };
        let at = match row.reported_at.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => {
                let when =
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "{}: row {}: reported_at is not an RFC 3339 time",
                                path.display(),
                                i + 1
                            )
                        })?;
                Some((when.unix_timestamp_nanos() / 1000) as i64)
            }
        };
        if out.insert(row.transaction_id, (fraud, at)).is_some() {
            anyhow::bail!(
                "{}: row {}: a second label for the same transaction",
                path.display(),
                i + 1
            );
        }
    }
    Ok(out)
}
