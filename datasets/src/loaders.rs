//! Loaders of public fraud data sets, mapped into the project's formats.
//!
//! | format | file | becomes |
//! | --- | --- | --- |
//! | [`Format::Ulb`] | `creditcard.csv` (Time, V1..V28, Amount, Class) | a feature table: `time_seconds`, `v1`..`v28`, `amount`, `is_fraud`. No entities, so no windowed features: train on it directly. |
//! | [`Format::Paysim`] | PaySim log (step, type, amount, nameOrig, ..., isFraud, isFlaggedFraud) | transactions: one per row, `timestamp` = origin + (step - 1) hours, the sender as customer and card, the receiver as merchant, plus `paysim_type`, the four balances, `is_flagged_fraud` and `weight`. |
//! | [`Format::Sparkov`] | Sparkov `fraudTrain.csv` / `fraudTest.csv` | transactions: the card number is tokenized at once (never written), the merchant location as coordinates, the category as a merchant category code and a channel. Names, address, job and birth date are dropped. |
//! | [`Format::Fdh`] | the Fraud Detection Handbook's simulated transactions (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, ..., TX_FRAUD, TX_FRAUD_SCENARIO) | transactions: the customer as customer and card (a stable pseudo-token), the terminal as terminal, amounts to the cent (the published floats carry binary noise, 57.160000000000004: rounded to the nearest cent, which is what they mean; the number of amounts changed is reported), `fraud_scenario`, and `fraud_reported_at` when a report delay is given (labels arrive late in reality). |
//!
//! Files may be gzip-compressed (detected by their first bytes). Every error names the row and
//! the column; a cell that could hold a card number is never quoted.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use fraud_core::pii::{quoted, CardNumber, Tokenizer};
use fraud_core::transaction::Amount;

/// A public data set format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ULB / Worldline credit-card fraud (`creditcard.csv`, Kaggle "mlg-ulb/creditcardfraud").
    Ulb,
    /// PaySim mobile-money simulation (Kaggle "ealaxi/paysim1").
    Paysim,
    /// Sparkov simulated card transactions (Kaggle "kartik2112/fraud-detection").
    Sparkov,
    /// The Fraud Detection Handbook's simulated transactions (`simulated-data-raw`).
    Fdh,
}

impl std::str::FromStr for Format {
    type Err = LoadError;
    fn from_str(s: &str) -> Result<Self, LoadError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ulb" | "creditcard" => Ok(Format::Ulb),
            "paysim" => Ok(Format::Paysim),
            "sparkov" => Ok(Format::Sparkov),
            "fdh" | "handbook" => Ok(Format::Fdh),
            other => Err(LoadError::UnknownFormat(other.chars().take(32).collect())),
        }
    }
}

/// Why a file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a known format name.
    #[error("unknown format `{0}` (known: ulb, paysim, sparkov, fdh)")]
    UnknownFormat(String),
    /// The header is not the format's.
    #[error("not a {format} file: {reason}")]
    Header {
        /// The expected format.
        format: &'static str,
        /// What is missing or unexpected.
        reason: String,
    },
    /// A row is malformed.
    #[error("row {row}: column `{column}`: {reason}")]
    Row {
        /// 1-based data row.
        row: u64,
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// The file holds a header but no rows.
    #[error("the file has no data rows")]
    Empty,
}

/// Options of a conversion.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tokenizes card numbers (Sparkov). Required for that format.
    pub tokenizer: Option<Tokenizer>,
    /// PaySim: the time of step 1 (Unix seconds). Default 2017-01-01T00:00:00Z.
    pub origin: i64,
    /// PaySim: weight of each legitimate row (for an enriched sample); frauds weigh 1.
    pub legit_weight: f64,
    /// Currency written for formats that have none (PaySim, Sparkov, FDH). Default USD.
    pub currency: String,
    /// FDH: a fraud's label becomes known this many seconds after the transaction
    /// (`fraud_reported_at`); known at once when absent.
    pub report_delay_s: Option<i64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokenizer: None,
            origin: 1_483_228_800,
            legit_weight: 1.0,
            currency: "USD".to_string(),
            report_delay_s: None,
        }
    }
}

/// What a conversion read.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LoadSummary {
    /// Rows converted.
    pub rows: u64,
    /// Rows labelled fraud.
    pub frauds: u64,
    /// Amounts rounded to the cent (FDH: published with binary float noise).
    pub rounded_amounts: u64,
}

/// Opens a file, decompressing gzip when its first bytes say so.
pub fn open(path: &Path) -> std::io::Result<Box<dyn Read + Send>> {
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let gz = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(reader),
        ))
    } else {
        Box::new(reader)
    })
}

/// Reads `input` in `format` and writes the mapped CSV to `output`.
pub fn convert(
    format: Format,
    input: impl Read,
    output: impl Write,
    opts: &Options,
) -> Result<LoadSummary, LoadError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let header = reader
        .headers()
        .map_err(|e| csv_error(e, 0))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_string())
        .collect::<Vec<_>>();
    let mut writer = csv::Writer::from_writer(std::io::BufWriter::with_capacity(1 << 20, output));
    let summary = match format {
        Format::Ulb => ulb(&header, &mut reader, &mut writer)?,
        Format::Paysim => paysim(&header, &mut reader, &mut writer, opts)?,
        Format::Sparkov => sparkov(&header, &mut reader, &mut writer, opts)?,
        Format::Fdh => fdh(&header, &mut reader, &mut writer, opts)?,
    };
    writer.flush()?;
    if summary.rows == 0 {
        return Err(LoadError::Empty);
    }
    Ok(summary)
}

fn csv_error(e: csv::Error, row: u64) -> LoadError {
    match e.kind() {
        csv::ErrorKind::Io(_) => match e.into_kind() {
            csv::ErrorKind::Io(io) => LoadError::Io(io),
            _ => unreachable!("matched above"),
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => LoadError::Row {
            row,
            column: "*".into(),
            reason: format!("has {len} fields; the header has {expected_len}"),
        },
        csv::ErrorKind::Utf8 { .. } => LoadError::Row {
            row,
            column: "*".into(),
            reason: "is not valid UTF-8".into(),
        },
        _ => LoadError::Row {
            row,
            column: "*".into(),
            reason: "cannot be read as CSV".into(),
        },
    }
}

/// Positions of `wanted` columns in `header`, or a header error naming the missing ones.
fn locate(
    format: &'static str,
    header: &[String],
    wanted: &[&str],
) -> Result<Vec<usize>, LoadError> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !header.iter().any(|h| h == w))
        .collect();
    if !missing.is_empty() {
        return Err(LoadError::Header {
            format,
            reason: format!("missing column(s) {}", missing.join(", ")),
        });
    }
    Ok(wanted
        .iter()
        .map(|w| header.iter().position(|h| h == w).unwrap_or(0))
        .collect())
}

struct Row<'a> {
    n: u64,
    record: &'a csv::StringRecord,
}

impl Row<'_> {
    fn cell(&self, i: usize) -> &str {
        self.record.get(i).unwrap_or("").trim()
    }

    fn bad(&self, column: &str, reason: impl Into<String>) -> LoadError {
        LoadError::Row {
            row: self.n,
            column: column.to_string(),
            reason: reason.into(),
        }
    }

    fn number(&self, i: usize, column: &str) -> Result<f64, LoadError> {
        let s = self.cell(i);
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.bad(column, format!("{} is not a finite number", quoted(s)))),
        }
    }

    fn label(&self, i: usize, column: &str) -> Result<bool, LoadError> {
        match self.cell(i) {
            "0" | "0.0" => Ok(false),
            "1" | "1.0" => Ok(true),
            s => Err(self.bad(column, format!("{} is not 0 or 1", quoted(s)))),
        }
    }

    fn text(&self, i: usize, column: &str) -> Result<&str, LoadError> {
        let s = self.cell(i);
        if s.is_empty() {
            return Err(self.bad(column, "is empty"));
        }
        if s.chars().any(char::is_control) || s.len() > 128 {
            return Err(self.bad(column, "has control characters or over 128 bytes"));
        }
        Ok(s)
    }

    fn amount(&self, i: usize, column: &str) -> Result<String, LoadError> {
        let s = self.cell(i);
        // Some exports write amounts as floats with a trailing `.0`.
        let a = Amount::parse(s, 2).map_err(|e| self.bad(column, e.to_string()))?;
        Ok(format!("{}.{:02}", a.minor / 100, a.minor % 100))
    }
}

fn records<R: Read>(
    reader: &mut csv::Reader<R>,
) -> impl Iterator<Item = Result<(u64, csv::StringRecord), LoadError>> + '_ {
    reader.records().enumerate().map(|(i, r)| {
        r.map(|rec| (i as u64 + 1, rec))
            .map_err(|e| csv_error(e, i as u64 + 1))
    })
}

fn ulb<R: Read, W: Write>(
    header: &[String],
    reader: &mut csv::Reader<R>,
    writer: &mut csv::Writer<W>,
) -> Result<LoadSummary, LoadError> {
    let mut wanted: Vec<String> = vec!["Time".into()];
    wanted.extend((1..=28).map(|i| format!("V{i}")));
    wanted.push("Amount".into());
    wanted.push("Class".into());
    let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let at = locate("ULB creditcard.csv", header, &names)?;
    let mut out: Vec<String> = vec!["time_seconds".into()];
    out.extend((1..=28).map(|i| format!("v{i}")));
    out.push("amount".into());
    out.push("is_fraud".into());
    writer.write_record(&out).map_err(|e| csv_error(e, 0))?;
    let mut s = LoadSummary::default();
    let mut cells: Vec<String> = Vec::with_capacity(31);
    for r in records(reader) {
        let (n, record) = r?;
        let row = Row { n, record: &record };
        cells.clear();
        for (k, &i) in at[..30].iter().enumerate() {
            let v = row.number(i, names[k])?;
            if (k == 0 || k == 29) && v < 0.0 {
                return Err(row.bad(names[k], "must not be negative"));
            }
            cells.push(row.cell(i).to_string());
        }
        let fraud = row.label(at[30], "Class")?;
        cells.push(u8::from(fraud).to_string());
        writer.write_record(&cells).map_err(|e| csv_error(e, n))?;
        s.rows += 1;
        s.frauds += u64::from(fraud);
    }
    Ok(s)
}

/// Columns written for transaction-shaped formats, before each format's own extras.
const TX_COLUMNS: [&str; 15] = [
    "transaction_id",
    "timestamp",
    "amount",
    "currency",
    "card_token",
    "customer_id",
    "merchant_id",
    "mcc",
    "terminal_id",
    "channel",
    "card_country",
    "merchant_country",
    "latitude",
    "longitude",
    "is_fraud",
];

fn rfc3339(unix: i64) -> Result<String, String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|_| "is out of range".to_string())?
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| "is out of range".to_string())
}

/// A stable pseudo-token for an account that is not a card (PaySim): `tok_` + 32 hex digits
/// of a hash of the account id.
fn account_token(id: &str) -> String {
    let h = fnv1a_128(id.as_bytes());
    format!("tok_{h:032x}")
}

fn fnv1a_128(bytes: &[u8]) -> u128 {
    // FNV-1a on 128 bits: stable across versions and platforms, enough to tell accounts apart.
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for &b in bytes {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    h
}

fn fdh<R: Read, W: Write>(
    header: &[String],
    reader: &mut csv::Reader<R>,
    writer: &mut csv::Writer<W>,
    opts: &Options,
) -> Result<LoadSummary, LoadError> {
    const NAMES: [&str; 6] = [
        "TRANSACTION_ID",
        "TX_DATETIME",
        "CUSTOMER_ID",
        "TERMINAL_ID",
        "TX_AMOUNT",
        "TX_FRAUD",
    ];
    let at = locate("Fraud Detection Handbook", header, &NAMES)?;
    let scenario = header.iter().position(|h| h == "TX_FRAUD_SCENARIO");
    if opts.report_delay_s.is_some_and(|d| d < 0) {
        return Err(LoadError::Header {
            format: "Fraud Detection Handbook",
            reason: "the report delay must not be negative".into(),
        });
    }
    writer
        .write_record([
            "transaction_id",
            "timestamp",
            "amount",
            "currency",
            "card_token",
            "customer_id",
            "terminal_id",
            "is_fraud",
            "fraud_reported_at",
            "fraud_scenario",
        ])
        .map_err(|e| csv_error(e, 0))?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let mut s = LoadSummary::default();
    for r in records(reader) {
        let (n, record) = r?;
        let row = Row { n, record: &record };
        let id = row.text(at[0], "TRANSACTION_ID")?;
        let when = row.cell(at[1]);
        let t = time::PrimitiveDateTime::parse(when, &format)
            .map_err(|_| {
                row.bad(
                    "TX_DATETIME",
                    format!("{} is not YYYY-MM-DD HH:MM:SS", quoted(when)),
                )
            })?
            .assume_utc()
            .unix_timestamp();
        let ts = rfc3339(t).map_err(|e| row.bad("TX_DATETIME", e))?;
        let customer = row.text(at[2], "CUSTOMER_ID")?;
        let terminal = row.text(at[3], "TERMINAL_ID")?;
        let raw = row.number(at[4], "TX_AMOUNT")?;
        if raw < 0.0 {
            return Err(row.bad("TX_AMOUNT", "must not be negative"));
        }
        let cents = (raw * 100.0).round();
        let text = row.cell(at[4]);
        let decimals = text
            .split_once('.')
            .map_or(0, |(_, f)| f.trim_end_matches('0').len());
        if decimals > 2 || text.contains(['e', 'E']) {
            s.rounded_amounts += 1;
        }
        let amount = format!("{}.{:02}", cents as i64 / 100, cents as i64 % 100);
        let fraud = row.label(at[5], "TX_FRAUD")?;
        let reported = match (fraud, opts.report_delay_s) {
            (true, Some(d)) => rfc3339(t + d).map_err(|e| row.bad("TX_DATETIME", e))?,
            _ => String::new(),
        };
        let token = account_token(&format!("fdh-customer-{customer}"));
        let sc = scenario.map(|i| row.cell(i)).unwrap_or("");
        writer
            .write_record([
                id,
                &ts,
                &amount,
                &opts.currency,
                &token,
                customer,
                terminal,
                if fraud { "1" } else { "0" },
                &reported,
                sc,
            ])
            .map_err(|e| csv_error(e, n))?;
        s.rows += 1;
        s.frauds += u64::from(fraud);
    }
    Ok(s)
}

fn paysim<R: Read, W: Write>(
    header: &[String],
    reader: &mut csv::Reader<R>,
    writer: &mut csv::Writer<W>,
    opts: &Options,
) -> Result<LoadSummary, LoadError> {
    const NAMES: [&str; 11] = [
        "step",
        "type",
        "amount",
        "nameOrig",
        "oldbalanceOrg",
        "newbalanceOrig",
        "nameDest",
        "oldbalanceDest",
        "newbalanceDest",
        "isFraud",
        "isFlaggedFraud",
    ];
    let at = locate("PaySim", header, &NAMES)?;
    if !(opts.legit_weight.is_finite() && opts.legit_weight > 0.0) {
        return Err(LoadError::Header {
            format: "PaySim",
            reason: "the weight of legitimate rows must be a positive number".into(),
        });
    }
    let mut out: Vec<&str> = TX_COLUMNS.to_vec();
    out.extend([
        "paysim_type",
        "old_balance_orig",
        "new_balance_orig",
        "old_balance_dest",
        "new_balance_dest",
        "is_flagged_fraud",
        "weight",
    ]);
    writer.write_record(&out).map_err(|e| csv_error(e, 0))?;
    let mut s = LoadSummary::default();
    for r in records(reader) {
        let (n, record) = r?;
        let row = Row { n, record: &record };
        let step = row.cell(at[0]);
        let step: i64 = match step.parse() {
            Ok(v) if (1..=100_000).contains(&v) => v,
            _ => return Err(row.bad("step", format!("{} is not an hour 1..100000", quoted(step)))),
        };
        let kind = row.cell(at[1]);
        if !["CASH_IN", "CASH_OUT", "DEBIT", "PAYMENT", "TRANSFER"].contains(&kind) {
            return Err(row.bad("type", format!("{} is not a PaySim type", quoted(kind))));
        }
        let amount = row.amount(at[2], "amount")?;
        let orig = row.text(at[3], "nameOrig")?;
        let dest = row.text(at[6], "nameDest")?;
        let mut balances = [0.0; 4];
        for (k, &col) in [4usize, 5, 7, 8].iter().enumerate() {
            balances[k] = row.number(at[col], NAMES[col])?;
        }
        let fraud = row.label(at[9], "isFraud")?;
        let flagged = row.label(at[10], "isFlaggedFraud")?;
        let ts = rfc3339(opts.origin + (step - 1) * 3_600).map_err(|e| row.bad("step", e))?;
        let channel = if kind == "PAYMENT" { "ecommerce" } else { "" };
        let weight = if fraud { 1.0 } else { opts.legit_weight };
        let id = format!("ps{n}");
        let token = account_token(orig);
        let cells: [&str; 22] = [
            &id,
            &ts,
            &amount,
            &opts.currency,
            &token,
            orig,
            dest,
            "",
            "",
            channel,
            "",
            "",
            "",
            "",
            if fraud { "1" } else { "0" },
            kind,
            &balances[0].to_string(),
            &balances[1].to_string(),
            &balances[2].to_string(),
            &balances[3].to_string(),
            if flagged { "1" } else { "0" },
            &weight.to_string(),
        ];
        writer.write_record(cells).map_err(|e| csv_error(e, n))?;
        s.rows += 1;
        s.frauds += u64::from(fraud);
    }
    Ok(s)
}

/// Sparkov categories: merchant category code and channel.
fn sparkov_category(category: &str) -> Option<(&'static str, &'static str)> {
    Some(match category {
        "grocery_pos" => ("5411", "card_present"),
        "grocery_net" => ("5411", "ecommerce"),
        "gas_transport" => ("5541", "card_present"),
        "shopping_pos" => ("5311", "card_present"),
        "shopping_net" => ("5311", "ecommerce"),
        "misc_pos" => ("5999", "card_present"),
        "misc_net" => ("5999", "ecommerce"),
        "food_dining" => ("5812", "card_present"),
        "entertainment" => ("7999", "card_present"),
        "home" => ("5200", "card_present"),
        "kids_pets" => ("5995", "card_present"),
        "personal_care" => ("7230", "card_present"),
        "health_fitness" => ("7997", "card_present"),
        "travel" => ("4722", "card_present"),
        _ => return None,
    })
}

fn sparkov<R: Read, W: Write>(
    header: &[String],
    reader: &mut csv::Reader<R>,
    writer: &mut csv::Writer<W>,
    opts: &Options,
) -> Result<LoadSummary, LoadError> {
    const NAMES: [&str; 9] = [
        "trans_date_trans_time",
        "cc_num",
        "merchant",
        "category",
        "amt",
        "trans_num",
        "merch_lat",
        "merch_long",
        "is_fraud",
    ];
    let at = locate("Sparkov", header, &NAMES)?;
    let Some(tokenizer) = opts.tokenizer.as_ref() else {
        return Err(LoadError::Header {
            format: "Sparkov",
            reason: "a tokenization key is needed: the file holds card numbers".into(),
        });
    };
    let mut out: Vec<&str> = TX_COLUMNS.to_vec();
    out.push("category");
    writer.write_record(&out).map_err(|e| csv_error(e, 0))?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let mut s = LoadSummary::default();
    for r in records(reader) {
        let (n, record) = r?;
        let row = Row { n, record: &record };
        let when = row.cell(at[0]);
        let ts = time::PrimitiveDateTime::parse(when, &format)
            .map_err(|_| {
                row.bad(
                    NAMES[0],
                    format!("{} is not `YYYY-MM-DD HH:MM:SS`", quoted(when)),
                )
            })?
            .assume_utc()
            .unix_timestamp();
        let ts = rfc3339(ts).map_err(|e| row.bad(NAMES[0], e))?;
        let card = CardNumber::parse(row.cell(at[1]))
            .map_err(|e| row.bad("cc_num", format!("not a card number: {e}")))?;
        let token = tokenizer.token(&card);
        drop(card);
        let merchant = row.text(at[2], "merchant")?;
        // Every Sparkov merchant name starts with `fraud_`: it says nothing about the label.
        let merchant = merchant.strip_prefix("fraud_").unwrap_or(merchant);
        let category = row.cell(at[3]);
        let (mcc, channel) = sparkov_category(category).ok_or_else(|| {
            row.bad(
                "category",
                format!("{} is not a Sparkov category", quoted(category)),
            )
        })?;
        let amount = row.amount(at[4], "amt")?;
        let id = row.text(at[5], "trans_num")?;
        let lat = row.number(at[6], "merch_lat")?;
        let lon = row.number(at[7], "merch_long")?;
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(row.bad("merch_lat", "coordinates out of range"));
        }
        let fraud = row.label(at[8], "is_fraud")?;
        let (lat, lon) = if channel == "ecommerce" {
            (String::new(), String::new())
        } else {
            (lat.to_string(), lon.to_string())
        };
        let cells: [&str; 16] = [
            id,
            &ts,
            &amount,
            &opts.currency,
            &token,
            &token,
            merchant,
            mcc,
            "",
            channel,
            "US",
            "US",
            &lat,
            &lon,
            if fraud { "1" } else { "0" },
            category,
        ];
        writer.write_record(cells).map_err(|e| csv_error(e, n))?;
        s.rows += 1;
        s.frauds += u64::from(fraud);
    }
    Ok(s)
}

/// Converts the file at `input` into `output`.
pub fn convert_file(
    format: Format,
    input: &Path,
    output: &Path,
    opts: &Options,
) -> Result<LoadSummary, LoadError> {
    let reader = open(input)?;
    let file = std::fs::File::create(output)?;
    convert(format, reader, file, opts)
}
