//! Parquet and Arrow IPC files, and Arrow record batches, wherever CSV is accepted.
//!
//! A [`Columnar`] table is read whole (Parquet, Arrow IPC file or stream, Feather v2) or built
//! from record batches handed over by another library (pandas, polars, pyarrow through the
//! Arrow C stream interface). It answers the same questions as the CSV readers, with the
//! same rules:
//! - [`Columnar::matrix`]: numeric feature columns as [`crate::data::Matrix`] (nulls and NaN
//!   missing, booleans 0/1, categorical columns by value through the model's categories);
//! - [`Columnar::history`]: transactions, each cell rendered as the text a CSV file would
//!   hold and validated by the one path CSV histories take (so a Parquet history and its CSV
//!   export give the same transactions and the same errors). Timestamps with a time zone are
//!   instants; timestamps without one are naive and need an explicit offset, as in CSV;
//! - [`Columnar::text_columns`]: columns as text (ids, days, scenarios).
//!
//! [`write_table`] writes text and numeric columns as Parquet (zstd) or Arrow IPC.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, Decimal256Type, Float16Type, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::data::{category_code, parse_cell, DataError, Matrix};
use crate::pii::Tokenizer;
use crate::transaction::{history_from_records, History, HistoryError, HistoryOptions};

/// How a file is encoded, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated text with a header (any other extension).
    Csv,
    /// Apache Parquet (`.parquet`, `.pq`).
    Parquet,
    /// Arrow IPC: file format or stream (`.arrow`, `.arrows`, `.feather`, `.ipc`).
    Arrow,
}

impl Format {
    /// The format a path's extension names; CSV for any other.
    pub fn of(path: &Path) -> Format {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("parquet" | "pq") => Format::Parquet,
            Some("arrow" | "arrows" | "feather" | "ipc") => Format::Arrow,
            _ => Format::Csv,
        }
    }

    /// True for Parquet and Arrow.
    pub fn is_columnar(self) -> bool {
        self != Format::Csv
    }
}

/// Why a columnar file or batch could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file could not be opened or created.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The Parquet reader or writer failed.
    #[error("Parquet: {0}")]
    Parquet(String),
    /// The Arrow reader or writer failed.
    #[error("Arrow: {0}")]
    Arrow(String),
    /// A column holds a type that has no meaning here.
    #[error("column `{column}` has Arrow type {data_type}, which cannot be read as {wanted}")]
    Unsupported {
        /// Column name.
        column: String,
        /// Its Arrow type.
        data_type: String,
        /// What it was read as.
        wanted: &'static str,
    },
}

impl From<ArrowError> for TableError {
    fn from(e: ArrowError) -> Self {
        TableError::Arrow(e.to_string())
    }
}

impl From<parquet::errors::ParquetError> for TableError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        TableError::Parquet(e.to_string())
    }
}

/// The refusal of a path whose extension names no columnar format.
fn not_columnar(path: &Path) -> TableError {
    TableError::Arrow(format!(
        "{} is not a Parquet or Arrow file (by its extension)",
        path.display()
    ))
}

/// A table held as Arrow record batches.
#[derive(Debug, Clone)]
pub struct Columnar {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl Columnar {
    /// The table of record batches sharing `schema`.
    pub fn from_batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> Columnar {
        Columnar { schema, batches }
    }

    /// Reads a Parquet or Arrow IPC file whole ([`Format::of`] its path; a CSV path is an
    /// error: read it with the CSV readers).
    pub fn open(path: &Path) -> Result<Columnar, TableError> {
        let file = std::fs::File::open(path)?;
        match Format::of(path) {
            Format::Parquet => {
                let builder =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                        .with_batch_size(1 << 16);
                let schema = builder.schema().clone();
                let batches = builder.build()?.collect::<Result<Vec<_>, _>>()?;
                Ok(Columnar::from_batches(schema, batches))
            }
            Format::Arrow => {
                // The file format (and Feather v2) first; an IPC stream otherwise.
                match arrow_ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None) {
                    Ok(reader) => {
                        let schema = reader.schema();
                        let batches = reader.collect::<Result<Vec<_>, _>>()?;
                        Ok(Columnar::from_batches(schema, batches))
                    }
                    Err(_) => {
                        let file = std::fs::File::open(path)?;
                        let reader = arrow_ipc::reader::StreamReader::try_new(
                            std::io::BufReader::new(file),
                            None,
                        )?;
                        let schema = reader.schema();
                        let batches = reader.collect::<Result<Vec<_>, _>>()?;
                        Ok(Columnar::from_batches(schema, batches))
                    }
                }
            }
            Format::Csv => Err(not_columnar(path)),
        }
    }

    /// The column names of a Parquet or Arrow IPC file, from its metadata alone.
    pub fn header_of(path: &Path) -> Result<Vec<String>, TableError> {
        let file = std::fs::File::open(path)?;
        let schema = match Format::of(path) {
            Format::Parquet => {
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                    .schema()
                    .clone()
            }
            Format::Arrow => {
                match arrow_ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None) {
                    Ok(reader) => reader.schema(),
                    Err(_) => arrow_ipc::reader::StreamReader::try_new(
                        std::io::BufReader::new(std::fs::File::open(path)?),
                        None,
                    )?
                    .schema(),
                }
            }
            Format::Csv => return Err(not_columnar(path)),
        };
        Ok(schema
            .fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect())
    }

    /// Column names, in order.
    pub fn header(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The index of the column named `name`: an error when absent or named twice.
    fn index(&self, name: &str) -> Result<usize, DataError> {
        let mut found = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name() == name);
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Ok(i),
            (Some(_), Some(_)) => Err(DataError::DuplicateColumn(name.to_string())),
            (None, _) => Err(DataError::MissingColumn(name.to_string())),
        }
    }

    /// The columns `wanted` as a row-major matrix of `f64` (the CSV reader's rules: null or
    /// NaN is missing, text cells are parsed as numbers, booleans are 0/1), with the columns
    /// named in `categories` read by value (an unseen or missing value is NaN).
    pub fn matrix(
        &self,
        wanted: &[&str],
        categories: &std::collections::BTreeMap<String, std::collections::HashMap<String, f64>>,
    ) -> Result<Matrix, DataError> {
        let index = wanted
            .iter()
            .map(|w| self.index(w))
            .collect::<Result<Vec<_>, _>>()?;
        let width = wanted.len();
        let rows = self.rows();
        let mut values = vec![f64::NAN; rows * width];
        let mut start = 0usize;
        for batch in &self.batches {
            let n = batch.num_rows();
            for (c, (&i, w)) in index.iter().zip(wanted).enumerate() {
                let column = batch.column(i);
                let mut put = |r: usize, v: f64| values[(start + r) * width + c] = v;
                if let Some(table) = categories.get(*w) {
                    let mut text = String::new();
                    for r in 0..n {
                        text.clear();
                        render(column.as_ref(), r, &mut text, w)?;
                        put(r, category_code(table, &text));
                    }
                    continue;
                }
                numbers(column.as_ref(), w, start, &mut |r, v| put(r, v))?;
            }
            start += n;
        }
        Ok(Matrix {
            columns: wanted.iter().map(|w| w.to_string()).collect(),
            values,
        })
    }

    /// The named columns as text, column by column (null is the empty string).
    pub fn text_columns(&self, names: &[String]) -> Result<Vec<Vec<String>>, DataError> {
        let index = names
            .iter()
            .map(|n| self.index(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = vec![Vec::with_capacity(self.rows()); names.len()];
        for batch in &self.batches {
            for (c, (&i, name)) in index.iter().zip(names).enumerate() {
                let column = batch.column(i);
                for r in 0..batch.num_rows() {
                    let mut text = String::new();
                    render(column.as_ref(), r, &mut text, name)?;
                    out[c].push(text);
                }
            }
        }
        Ok(out)
    }

    /// The transactions of a history table, validated as a CSV history is (every invalid row
    /// reported at once, with the forgiveness of `opts`).
    pub fn history(
        &self,
        tokenizer: &Tokenizer,
        opts: &HistoryOptions,
    ) -> Result<History, HistoryError> {
        let header: csv::StringRecord = self.header().iter().collect();
        // Columns the history reads are rendered; the others are left empty (never read).
        let wanted: Vec<bool> = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                crate::transaction::HISTORY_COLUMNS.contains(&f.name().as_str())
                    || opts.card_from.as_deref() == Some(f.name().as_str())
            })
            .collect();
        let mut batch_at = 0usize;
        let mut row_at = 0usize;
        let mut failed: Option<HistoryError> = None;
        let mut cell = String::new();
        let mut next = |record: &mut csv::StringRecord| -> Result<bool, csv::Error> {
            while let Some(batch) = self.batches.get(batch_at) {
                if row_at < batch.num_rows() {
                    record.clear();
                    for (i, &want) in wanted.iter().enumerate() {
                        cell.clear();
                        if want {
                            let name = self.schema.field(i).name();
                            if let Err(e) =
                                render(batch.column(i).as_ref(), row_at, &mut cell, name)
                            {
                                failed.get_or_insert(HistoryError::Csv {
                                    row: 0,
                                    message: e.to_string(),
                                });
                                return Ok(false);
                            }
                        }
                        record.push_field(&cell);
                    }
                    row_at += 1;
                    return Ok(true);
                }
                batch_at += 1;
                row_at = 0;
            }
            Ok(false)
        };
        let read = history_from_records(&header, &mut next, tokenizer, opts);
        match failed {
            Some(e) => Err(e),
            None => read,
        }
    }
}

/// The text a CSV file would hold for cell `r` of `column` (nothing for null): strings as they
/// are, integers and decimals exactly, floats in their shortest form (NaN as missing),
/// booleans as 1 / 0, timestamps in RFC 3339 (with `Z` when the column has a time zone,
/// naive otherwise), dates as their midnight (naive), dictionaries by value.
fn render(column: &dyn Array, r: usize, out: &mut String, name: &str) -> Result<(), DataError> {
    use std::fmt::Write;
    if column.is_null(r) {
        return Ok(());
    }
    let unsupported = || {
        DataError::Csv(format!(
            "column `{name}` has Arrow type {}, which cannot be read as text",
            column.data_type()
        ))
    };
    let _ = match column.data_type() {
        DataType::Null => Ok(()),
        DataType::Utf8 => {
            out.push_str(column.as_string::<i32>().value(r));
            Ok(())
        }
        DataType::LargeUtf8 => {
            out.push_str(column.as_string::<i64>().value(r));
            Ok(())
        }
        DataType::Utf8View => {
            out.push_str(column.as_string_view().value(r));
            Ok(())
        }
        DataType::Boolean => {
            out.push(if column.as_boolean().value(r) {
                '1'
            } else {
                '0'
            });
            Ok(())
        }
        DataType::Int8 => write!(out, "{}", column.as_primitive::<Int8Type>().value(r)),
        DataType::Int16 => write!(out, "{}", column.as_primitive::<Int16Type>().value(r)),
        DataType::Int32 => write!(out, "{}", column.as_primitive::<Int32Type>().value(r)),
        DataType::Int64 => write!(out, "{}", column.as_primitive::<Int64Type>().value(r)),
        DataType::UInt8 => write!(out, "{}", column.as_primitive::<UInt8Type>().value(r)),
        DataType::UInt16 => write!(out, "{}", column.as_primitive::<UInt16Type>().value(r)),
        DataType::UInt32 => write!(out, "{}", column.as_primitive::<UInt32Type>().value(r)),
        DataType::UInt64 => write!(out, "{}", column.as_primitive::<UInt64Type>().value(r)),
        DataType::Float16 => {
            let v = column.as_primitive::<Float16Type>().value(r);
            finite(out, f32::from(v).is_finite(), format_args!("{v}"))
        }
        DataType::Float32 => {
            let v = column.as_primitive::<Float32Type>().value(r);
            finite(out, v.is_finite(), format_args!("{v}"))
        }
        DataType::Float64 => {
            let v = column.as_primitive::<Float64Type>().value(r);
            finite(out, v.is_finite(), format_args!("{v}"))
        }
        DataType::Decimal128(_, _) => {
            out.push_str(&column.as_primitive::<Decimal128Type>().value_as_string(r));
            Ok(())
        }
        DataType::Decimal256(_, _) => {
            out.push_str(&column.as_primitive::<Decimal256Type>().value_as_string(r));
            Ok(())
        }
        DataType::Timestamp(unit, tz) => {
            let v = match unit {
                TimeUnit::Second => {
                    column.as_primitive::<TimestampSecondType>().value(r) as i128 * 1_000_000_000
                }
                TimeUnit::Millisecond => {
                    column.as_primitive::<TimestampMillisecondType>().value(r) as i128 * 1_000_000
                }
                TimeUnit::Microsecond => {
                    column.as_primitive::<TimestampMicrosecondType>().value(r) as i128 * 1_000
                }
                TimeUnit::Nanosecond => {
                    column.as_primitive::<TimestampNanosecondType>().value(r) as i128
                }
            };
            instant(out, v, tz.is_some(), name)
        }
        DataType::Date32 => {
            let days = column.as_primitive::<Date32Type>().value(r) as i128;
            instant(out, days * 86_400_000_000_000, false, name)
        }
        DataType::Date64 => {
            let ms = column.as_primitive::<Date64Type>().value(r) as i128;
            instant(out, ms * 1_000_000, false, name)
        }
        DataType::Dictionary(_, _) => {
            let dict = column.as_any_dictionary();
            let keys = dict.normalized_keys();
            let at = keys.get(r).copied().ok_or_else(unsupported)?;
            return render(dict.values().as_ref(), at, out, name);
        }
        _ => return Err(unsupported()),
    };
    Ok(())
}

/// Writes a finite float's shortest form; nothing (missing) for NaN and infinities.
fn finite(out: &mut String, is_finite: bool, v: std::fmt::Arguments<'_>) -> std::fmt::Result {
    use std::fmt::Write;
    if is_finite {
        out.write_fmt(v)
    } else {
        Ok(())
    }
}

/// Writes nanoseconds since the epoch as RFC 3339 (`Z` when `utc`, naive otherwise).
fn instant(out: &mut String, nanos: i128, utc: bool, name: &str) -> std::fmt::Result {
    use std::fmt::Write;
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        // Out of range: rendered as a text the timestamp parser refuses, naming the column.
        return write!(out, "out-of-range time in column {name}");
    };
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )?;
    let micros = t.microsecond();
    if t.nanosecond() % 1000 != 0 {
        write!(out, ".{:09}", t.nanosecond())?;
    } else if micros != 0 {
        write!(out, ".{micros:06}")?;
    }
    if utc {
        out.push('Z');
    }
    Ok(())
}

/// Calls `put(row, value)` for every non-missing numeric value of `column` (rows are
/// numbered within the batch; `start` is the batch's first row in the table, for errors).
fn numbers(
    column: &dyn Array,
    name: &str,
    start: usize,
    put: &mut dyn FnMut(usize, f64),
) -> Result<(), DataError> {
    macro_rules! each {
        ($t:ty) => {{
            let a = column.as_primitive::<$t>();
            for r in 0..a.len() {
                if a.is_valid(r) {
                    put(r, a.value(r) as f64);
                }
            }
        }};
    }
    match column.data_type() {
        DataType::Null => {}
        DataType::Float64 => each!(Float64Type),
        DataType::Float32 => each!(Float32Type),
        DataType::Int8 => each!(Int8Type),
        DataType::Int16 => each!(Int16Type),
        DataType::Int32 => each!(Int32Type),
        DataType::Int64 => each!(Int64Type),
        DataType::UInt8 => each!(UInt8Type),
        DataType::UInt16 => each!(UInt16Type),
        DataType::UInt32 => each!(UInt32Type),
        DataType::UInt64 => each!(UInt64Type),
        DataType::Float16 => {
            let a = column.as_primitive::<Float16Type>();
            for r in 0..a.len() {
                if a.is_valid(r) {
                    put(r, f64::from(f32::from(a.value(r))));
                }
            }
        }
        DataType::Boolean => {
            let a = column.as_boolean();
            for r in 0..a.len() {
                if a.is_valid(r) {
                    put(r, if a.value(r) { 1.0 } else { 0.0 });
                }
            }
        }
        // Text, decimals, dictionaries: as the CSV reader parses a cell.
        _ => {
            let mut text = String::new();
            for r in 0..column.len() {
                text.clear();
                render(column, r, &mut text, name)?;
                match parse_cell(text.as_bytes()) {
                    Some(v) => put(r, v),
                    None => {
                        return Err(DataError::NotANumber {
                            row: start + r + 1,
                            column: name.to_string(),
                            value: text.chars().take(40).collect(),
                        })
                    }
                }
            }
        }
    }
    Ok(())
}

/// A column to write: text or numbers (NaN written as null).
#[derive(Debug, Clone)]
pub enum Column {
    /// Text cells (the empty string written as null).
    Text(Vec<String>),
    /// Numbers (NaN written as null).
    Float(Vec<f64>),
}

/// Writes named columns of equal length to `path` as Parquet (zstd-compressed) or Arrow IPC
/// (file format), as [`Format::of`] its name says.
pub fn write_table(path: &Path, columns: Vec<(String, Column)>) -> Result<(), TableError> {
    let format = Format::of(path);
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (name, column) in columns {
        match column {
            Column::Text(v) => {
                fields.push(Field::new(name, DataType::Utf8, true));
                arrays.push(Arc::new(StringArray::from_iter(
                    v.iter().map(|s| (!s.is_empty()).then_some(s.as_str())),
                )));
            }
            Column::Float(v) => {
                fields.push(Field::new(name, DataType::Float64, true));
                arrays.push(Arc::new(Float64Array::from_iter(
                    v.iter().map(|x| (!x.is_nan()).then_some(*x)),
                )));
            }
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    let file = std::fs::File::create(path)?;
    match format {
        Format::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(
                    parquet::basic::ZstdLevel::default(),
                ))
                .build();
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props))?;
            writer.write(&batch)?;
            writer.close()?;
        }
        Format::Arrow => {
            let mut writer =
                arrow_ipc::writer::FileWriter::try_new(std::io::BufWriter::new(file), &schema)?;
            writer.write(&batch)?;
            writer.finish()?;
        }
        Format::Csv => {
            return Err(TableError::Arrow(format!(
                "{} is not a Parquet or Arrow file name",
                path.display()
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BooleanArray, DictionaryArray, Int64Array, TimestampMicrosecondArray};

    fn tk() -> Tokenizer {
        Tokenizer::new(&[7u8; 32]).unwrap()
    }

    fn history_batch(tz: Option<&str>) -> Columnar {
        let ts =
            TimestampMicrosecondArray::from(vec![1_522_540_831_000_000, 1_522_540_900_500_000])
                .with_timezone_opt(tz.map(|t| t.to_string()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("transaction_id", DataType::Int64, false),
            Field::new("timestamp", ts.data_type().clone(), false),
            Field::new("amount", DataType::Float64, false),
            Field::new("currency", DataType::Utf8, false),
            Field::new("customer_id", DataType::Utf8, false),
            Field::new(
                "terminal_id",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("is_fraud", DataType::Boolean, true),
            Field::new("extra", DataType::Float64, true),
        ]));
        let terminal: DictionaryArray<arrow_array::types::Int32Type> =
            vec![Some("T1"), None].into_iter().collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(ts),
                Arc::new(Float64Array::from(vec![12.5, 57.160000000000004])),
                Arc::new(StringArray::from(vec!["EUR", "EUR"])),
                Arc::new(StringArray::from(vec!["C1", "C2"])),
                Arc::new(terminal),
                Arc::new(BooleanArray::from(vec![Some(false), Some(true)])),
                Arc::new(Float64Array::from(vec![1.0, 2.0])),
            ],
        )
        .unwrap();
        Columnar::from_batches(schema, vec![batch])
    }

    #[test]
    fn history_from_arrow_is_the_csv_history() {
        let t = history_batch(Some("UTC"));
        let opts = HistoryOptions {
            round_amounts: true,
            card_from: Some("customer_id".into()),
            ..Default::default()
        };
        let read = t.history(&tk(), &opts).unwrap();
        let csv =
            "transaction_id,timestamp,amount,currency,customer_id,terminal_id,is_fraud,extra\n\
                   1,2018-04-01T00:00:31Z,12.5,EUR,C1,T1,0,1\n\
                   2,2018-04-01T00:01:40.5Z,57.160000000000004,EUR,C2,,1,2\n";
        let want = crate::transaction::read_history_with(csv.as_bytes(), &tk(), &opts).unwrap();
        assert_eq!(read.transactions, want.transactions);
        assert_eq!(read.rounded_amounts, 1);
        assert_eq!(read.ignored_columns, vec!["extra".to_string()]);
        assert_eq!(read.transactions[1].is_fraud, Some(true));
        assert_eq!(read.transactions[0].terminal_id.as_deref(), Some("T1"));
        assert_eq!(read.transactions[1].terminal_id, None);
    }

    #[test]
    fn naive_timestamps_need_an_offset_as_in_csv() {
        let t = history_batch(None);
        let opts = HistoryOptions {
            round_amounts: true,
            card_from: Some("customer_id".into()),
            ..Default::default()
        };
        let err = t.history(&tk(), &opts).unwrap_err().to_string();
        assert!(
            err.contains("2 invalid rows") && err.contains("transaction `1`"),
            "{err}"
        );
        let ok = HistoryOptions {
            naive_offset_s: Some(3600),
            ..opts
        };
        let read = t.history(&tk(), &ok).unwrap();
        assert_eq!(
            read.transactions[0].timestamp_us,
            1_522_540_831_000_000 - 3_600_000_000
        );
    }

    #[test]
    fn matrix_and_text_follow_the_csv_rules() {
        let t = history_batch(Some("UTC"));
        let m = t
            .matrix(
                &["amount", "is_fraud", "transaction_id"],
                &Default::default(),
            )
            .unwrap();
        assert_eq!(m.values, vec![12.5, 0.0, 1.0, 57.160000000000004, 1.0, 2.0]);
        let cats = [(
            "terminal_id".to_string(),
            [("T1".to_string(), 4.0)].into_iter().collect(),
        )]
        .into_iter()
        .collect();
        let m = t.matrix(&["terminal_id"], &cats).unwrap();
        assert_eq!(m.values[0], 4.0);
        assert!(m.values[1].is_nan());
        let err = t.matrix(&["currency"], &Default::default()).unwrap_err();
        assert!(
            err.to_string().contains("row 1, column `currency`"),
            "{err}"
        );
        assert!(matches!(
            t.matrix(&["nope"], &Default::default()),
            Err(DataError::MissingColumn(_))
        ));
        let text = t
            .text_columns(&["timestamp".into(), "terminal_id".into()])
            .unwrap();
        assert_eq!(
            text[0],
            vec!["2018-04-01T00:00:31Z", "2018-04-01T00:01:40.500000Z"]
        );
        assert_eq!(text[1], vec!["T1", ""]);
    }

    #[test]
    fn parquet_and_arrow_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["f.parquet", "f.arrow", "f.feather"] {
            let path = dir.path().join(name);
            write_table(
                &path,
                vec![
                    ("id".into(), Column::Text(vec!["a".into(), "".into()])),
                    ("x".into(), Column::Float(vec![1.5, f64::NAN])),
                ],
            )
            .unwrap();
            let t = Columnar::open(&path).unwrap();
            assert_eq!(t.header(), vec!["id", "x"]);
            assert_eq!(Columnar::header_of(&path).unwrap(), vec!["id", "x"]);
            assert_eq!(t.rows(), 2);
            let m = t.matrix(&["x"], &Default::default()).unwrap();
            assert_eq!(m.values[0], 1.5);
            assert!(m.values[1].is_nan());
            assert_eq!(t.text_columns(&["id".into()]).unwrap()[0], vec!["a", ""]);
        }
        assert_eq!(Format::of(Path::new("x.CSV")), Format::Csv);
        let bad = dir.path().join("bad.parquet");
        std::fs::write(&bad, b"not parquet").unwrap();
        assert!(Columnar::open(&bad)
            .unwrap_err()
            .to_string()
            .contains("Parquet"));
    }
}
