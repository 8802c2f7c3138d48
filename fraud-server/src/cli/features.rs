//! `fraud features`: offline replay of a transaction history into the features the online
//! path would have computed for each transaction at its time.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use std::collections::HashMap;

use fraud_core::features::{replay_flat, Extractor, FeatureSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// History: CSV, or Parquet (`.parquet`) or Arrow IPC (`.arrow`, `.feather`) by extension;
    /// its columns are the transaction's JSON field names (Arrow timestamps with a time zone
    /// are instants; naive ones need `--tz`, as naive text does).
    #[arg(long)]
    input: PathBuf,
    /// Where to write `transaction_id` and one column per feature, in input order: CSV, or
    /// Parquet (`.parquet`, zstd) or Arrow IPC (`.arrow`, `.feather`) by extension.
    #[arg(long)]
    output: PathBuf,
    /// Feature spec (TOML); the default spec when absent.
    #[arg(long)]
    spec: Option<PathBuf>,
    #[command(flatten)]
    history: HistoryInput,
    /// Input columns copied into the output after `transaction_id` (comma-separated), e.g.
    /// `timestamp,card_token,is_fraud,fraud_scenario` to train and evaluate on the result.
    #[arg(long, value_delimiter = ',')]
    keep: Vec<String>,
}

/// How a history file is read: labels, tokenization key, time zone, amounts, card stand-in
/// (shared by `fraud features` and `fraud backtest`).
#[derive(Debug, clap::Args)]
pub(crate) struct HistoryInput {
    /// Fraud labels (CSV, Parquet or Arrow: `transaction_id`, `is_fraud` 0/1, optional `reported_at` RFC 3339,
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
    /// Read timestamps without an offset (`2018-04-01 00:00:31`) at this one: `UTC` or
    /// `+HH:MM` / `-HH:MM`. Without it they are refused.
    #[arg(long)]
    tz: Option<String>,
    /// Round amounts with more decimals than their currency has (float noise such as
    /// 57.160000000000004) to its minor unit; the count is printed. Without it they are
    /// refused.
    #[arg(long)]
    round_amounts: bool,
    /// A column whose value stands in for the card when a row has neither `card_number` nor
    /// `card_token` (e.g. `customer_id`); tokenized as card numbers are.
    #[arg(long)]
    card_from: Option<String>,
}

impl HistoryInput {
    /// The transactions of `input`, with the labels chosen (notes on standard error what was
    /// rounded, ignored or unmatched).
    pub(crate) fn read(
        &self,
        input: &std::path::Path,
    ) -> anyhow::Result<Vec<fraud_core::transaction::Transaction>> {
        let tk = super::tokenizer(self.key_file.as_deref())?;
        let opts = fraud_core::transaction::HistoryOptions {
            naive_offset_s: self.tz.as_deref().map(parse_offset).transpose()?,
            round_amounts: self.round_amounts,
            card_from: self.card_from.clone(),
        };
        let read = super::read_history(input, &tk, &opts)?;
        if read.rounded_amounts > 0 {
            eprintln!(
                "note: {} amounts rounded to their currency's minor unit (--round-amounts)",
                read.rounded_amounts
            );
        }
        if !read.ignored_columns.is_empty() {
            eprintln!(
                "note: columns not used as transaction fields: {}",
                read.ignored_columns.join(", ")
            );
        }
        let mut history = read.transactions;
        if let Some(path) = &self.labels {
            apply_labels(&mut history, path, input)?;
        }
        Ok(history)
    }
}

/// Replaces the labels of `history` (read from `input`) with those of the file `path`: a
/// transaction it does not name has none. Notes how many of its labels name no transaction.
fn apply_labels(
    history: &mut [fraud_core::transaction::Transaction],
    path: &std::path::Path,
    input: &std::path::Path,
) -> anyhow::Result<()> {
    let labels = read_labels(path)?;
    let mut used = 0usize;
    for tx in history {
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
            input.display()
        );
    }
    Ok(())
}

/// `UTC`, `Z` or `+HH:MM` / `-HH:MM` as seconds east of UTC.
fn parse_offset(s: &str) -> anyhow::Result<i32> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" {
        return Ok(0);
    }
    let bad = || anyhow::anyhow!("--tz `{t}`: expected UTC or an offset such as +02:00");
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..=18).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let spec = match &a.spec {
        Some(p) => FeatureSpec::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        )?,
        None => FeatureSpec::default_spec(),
    };
    let extractor = Extractor::new(spec)?;
    let history = a.history.read(&a.input)?;
    let m = extractor.names().len();
    let flat = replay_flat(&extractor, &history);
    let kept = kept_columns(&a.input, &a.keep)?;
    if fraud_core::table::Format::of(&a.output).is_columnar() {
        use fraud_core::table::{write_table, Column};
        let mut columns = Vec::with_capacity(1 + kept.len() + m);
        columns.push((
            "transaction_id".to_string(),
            Column::Text(history.iter().map(|t| t.transaction_id.clone()).collect()),
        ));
        for (name, values) in a.keep.iter().zip(kept) {
            columns.push((name.clone(), Column::Text(values)));
        }
        for (j, name) in extractor.names().iter().enumerate() {
            let values = (0..history.len()).map(|i| flat[i * m + j]).collect();
            columns.push((name.clone(), Column::Float(values)));
        }
        write_table(&a.output, columns)
            .with_context(|| format!("cannot write {}", a.output.display()))?;
    } else {
        write_csv(&a.output, &a.keep, &kept, &extractor, &history, &flat)?;
    }
    super::emit(&format!(
        "wrote {} features for {} transactions to {}\n",
        extractor.names().len(),
        history.len(),
        a.output.display()
    ))
}

/// Writes `transaction_id`, the kept columns and the features as CSV.
fn write_csv(
    path: &std::path::Path,
    keep: &[String],
    kept: &[Vec<String>],
    extractor: &Extractor,
    history: &[fraud_core::transaction::Transaction],
    flat: &[f64],
) -> anyhow::Result<()> {
    let m = extractor.names().len();
    let rows = flat.chunks(m.max(1));
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    write!(out, "transaction_id")?;
    for k in keep {
        write!(out, ",{}", csv_field(k))?;
    }
    for n in extractor.names() {
        write!(out, ",{n}")?;
    }
    writeln!(out)?;
    for (i, (tx, f)) in history.iter().zip(rows).enumerate() {
        write!(out, "{}", csv_field(&tx.transaction_id))?;
        for column in kept {
            write!(
                out,
                ",{}",
                csv_field(column.get(i).map_or("", String::as_str))
            )?;
        }
        for &v in f {
            if v.is_nan() {
                write!(out, ",")?;
            } else {
                write!(out, ",{v}")?;
            }
        }
        writeln!(out)?;
    }
    out.flush().context("cannot write features")
}

/// The values of the `keep` columns of `path`, column by column, in row order.
fn kept_columns(path: &std::path::Path, keep: &[String]) -> anyhow::Result<Vec<Vec<String>>> {
    if keep.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(k) = keep.iter().find(|k| *k == "card_number") {
        anyhow::bail!("--keep {k}: card numbers are never written");
    }
    super::read_text(path, keep).context("--keep")
}

pub(crate) fn csv_field(s: &str) -> String {
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
    let rows: Vec<LabelRow> = if fraud_core::table::Format::of(path).is_columnar() {
        // Parquet / Arrow: the same columns, read as the text a CSV file would hold.
        let table = fraud_core::table::Columnar::open(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let header = table.header();
        let when = ["reported_at", "fraud_reported_at", "known_at"]
            .into_iter()
            .find(|c| header.iter().any(|h| h == c));
        let mut names = vec!["transaction_id".to_string(), "is_fraud".to_string()];
        names.extend(when.map(str::to_string));
        let mut columns = table
            .text_columns(&names)
            .with_context(|| format!("{}", path.display()))?
            .into_iter();
        let ids = columns.next().unwrap_or_default();
        let frauds = columns.next().unwrap_or_default();
        let times = columns.next();
        ids.into_iter()
            .zip(frauds)
            .enumerate()
            .map(|(i, (transaction_id, is_fraud))| LabelRow {
                transaction_id,
                is_fraud,
                reported_at: times.as_ref().and_then(|t| t.get(i).cloned()),
            })
            .collect()
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = csv::Reader::from_reader(std::io::BufReader::new(file));
        reader
            .deserialize::<LabelRow>()
            .enumerate()
            .map(|(i, row)| {
                row.map_err(|e| {
                    anyhow::anyhow!("{}: row {}: {}", path.display(), i + 1, csv_error(&e))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut out = HashMap::new();
    for (i, row) in rows.into_iter().enumerate() {
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
