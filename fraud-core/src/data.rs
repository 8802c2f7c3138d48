//! Tabular input: reading feature columns from CSV into a row-major matrix of `f64`.
//!
//! This is how files of already-computed features reach a model (prediction, benchmarks, and
//! later training). Columns are matched by header name, in any order; extra columns are
//! ignored; an empty cell (or `NaN`, `NA`) is a missing value. It does not compute features
//! from raw transactions.

use rayon::prelude::*;
use std::io::Read;

/// A dense row-major matrix with named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Column names, in column order.
    pub columns: Vec<String>,
    /// `rows * columns.len()` values, row after row; NaN is missing.
    pub values: Vec<f64>,
}

impl Matrix {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        if self.columns.is_empty() {
            0
        } else {
            self.values.len() / self.columns.len()
        }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        let n = self.columns.len();
        &self.values[i * n..(i + 1) * n]
    }
}

/// Why a CSV file could not be read as a matrix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The CSV is unreadable (I/O or structure).
    #[error("CSV error: {0}")]
    Csv(String),
    /// A record cannot be read, or has another number of fields than the header.
    #[error("CSV error: row {row}: {detail}")]
    Record {
        /// 1-based data row (the header is row 0).
        row: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// The file has no header row.
    #[error("the CSV file is empty (no header row)")]
    Empty,
    /// A required column is absent.
    #[error("column `{0}` is missing from the CSV header")]
    MissingColumn(String),
    /// A header names the same column twice.
    #[error("column `{0}` appears twice in the CSV header")]
    DuplicateColumn(String),
    /// A cell is not a number.
    #[error("row {row}, column `{column}`: `{value}` is not a number")]
    NotANumber {
        /// 1-based data row (the header is row 0).
        row: usize,
        /// Column name.
        column: String,
        /// The cell, shortened.
        value: String,
    },
}

/// Parses one cell: empty, `NaN`, `nan`, `NA` are missing (NaN).
pub fn parse_cell(cell: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(cell).ok()?.trim();
    match s {
        "" | "NaN" | "nan" | "NA" | "null" => Some(f64::NAN),
        _ => s.parse::<f64>().ok(),
    }
}

/// The code of a categorical cell by its value (as [`crate::model::category_key`] makes
/// keys): missing (NaN) when the cell is empty or its value is not in the table, as XGBoost
/// and LightGBM score an unseen category.
pub fn category_code(table: &std::collections::HashMap<String, f64>, cell: &str) -> f64 {
    let text = cell.trim();
    if text.is_empty() {
        return f64::NAN;
    }
    crate::model::category_key(&serde_json::Value::String(text.to_string()))
        .and_then(|k| table.get(&k).copied())
        .unwrap_or(f64::NAN)
}

/// The column names of a CSV file's header.
pub fn read_csv_header(input: impl Read) -> Result<Vec<String>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(input);
    let header = reader
        .byte_headers()
        .map_err(|e| DataError::Csv(e.to_string()))?;
    if header.is_empty() {
        return Err(DataError::Empty);
    }
    Ok(header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect())
}

/// Reads the columns `wanted` (by header name) from CSV `input`.
pub fn read_csv(input: impl Read, wanted: &[&str]) -> Result<Matrix, DataError> {
    read_csv_with_categories(input, wanted, &std::collections::BTreeMap::new())
}

/// [`read_csv`], with the columns named in `categories` read by value: a cell is looked up
/// (as [`crate::model::category_key`] makes keys) in its column's value -> code
/// table; an empty cell or a value not in the table is missing (NaN), as XGBoost and
/// LightGBM score an unseen category.
pub fn read_csv_with_categories(
    input: impl Read,
    wanted: &[&str],
    categories: &std::collections::BTreeMap<String, std::collections::HashMap<String, f64>>,
) -> Result<Matrix, DataError> {
    read_blocks(input, wanted, categories, BLOCK, PIECE)
}

/// [`read_csv_with_categories`], reading `block` bytes at a time and parsing pieces of at
/// least `piece` bytes in parallel.
fn read_blocks(
    mut input: impl Read,
    wanted: &[&str],
    categories: &std::collections::BTreeMap<String, std::collections::HashMap<String, f64>>,
    block: usize,
    piece: usize,
) -> Result<Matrix, DataError> {
    let io = |e: std::io::Error| DataError::Csv(e.to_string());
    // The input is read in blocks; the first holds the header.
    let mut buf = Vec::new();
    let mut eof = fill(&mut input, &mut buf, block).map_err(io)?;
    let (header, body_at) = loop {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(&buf[..]);
        let header = reader
            .byte_headers()
            .map_err(|e| DataError::Csv(e.to_string()))?
            .clone();
        // Where the first record starts: the header is whole once it ends before the bytes
        // read do, or the input has ended.
        let at = reader.position().byte() as usize;
        if at < buf.len() || eof {
            break (header, at.min(buf.len()));
        }
        let want = buf.len() + block;
        eof = fill(&mut input, &mut buf, want).map_err(io)?;
    };
    if header.is_empty() {
        return Err(DataError::Empty);
    }
    let names: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    let mut index = Vec::with_capacity(wanted.len());
    for w in wanted {
        let mut found = names.iter().enumerate().filter(|(_, n)| n == w);
        match (found.next(), found.next()) {
            (Some((i, _)), None) => index.push(i),
            (Some(_), Some(_)) => return Err(DataError::DuplicateColumn(w.to_string())),
            (None, _) => return Err(DataError::MissingColumn(w.to_string())),
        }
    }
    let tables: Vec<Option<&std::collections::HashMap<String, f64>>> =
        wanted.iter().map(|w| categories.get(*w)).collect();
    let cols = Columns {
        index: &index,
        wanted,
        tables: &tables,
        fields: header.len(),
    };
    buf.drain(..body_at);
    // The pieces' values, in order: joined once at the end, into a matrix of the right
    // size (growing one vector piece by piece copied and faulted in most of it twice).
    let mut parts: Vec<Vec<f64>> = Vec::new();
    let mut rows = 0usize;
    loop {
        // Without quotes, a record ends at every newline: the block's complete lines are
        // cut into pieces parsed in parallel. A quote may hide a newline in a field, so
        // from the first block holding one on, the records are read one after the other.
        if buf.contains(&b'"') {
            let rest = std::io::Cursor::new(std::mem::take(&mut buf)).chain(input);
            let mut values = Vec::new();
            cols.read(rest, &mut values)
                .map_err(|e| e.after_rows(rows))?;
            parts.push(values);
            break;
        }
        let whole = if eof {
            buf.len()
        } else {
            buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        let pieces = split_lines(&buf[..whole], rayon::current_num_threads() * 4, piece);
        let parsed: Vec<Result<(Vec<f64>, usize), DataError>> = pieces
            .into_par_iter()
            .map(|piece| {
                let mut out = Vec::with_capacity(piece.len() / 8);
                let n = cols.read(piece, &mut out)?;
                Ok((out, n))
            })
            .collect();
        for part in parsed {
            // The first error in the file's order, at its row in the whole file.
            let (part, n) = part.map_err(|e| e.after_rows(rows))?;
            parts.push(part);
            rows += n;
        }
        if eof {
            break;
        }
        buf.drain(..whole);
        let want = buf.len() + block;
        eof = fill(&mut input, &mut buf, want).map_err(io)?;
    }
    let mut values = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        values.extend_from_slice(&part);
    }
    Ok(Matrix {
        columns: wanted.iter().map(|w| w.to_string()).collect(),
        values,
    })
}

/// Bytes of CSV read and parsed at a time.
const BLOCK: usize = 8 << 20;

/// The smallest piece of a block parsed as a parallel task.
const PIECE: usize = 64 << 10;

/// Reads from `input` until `buf` holds `want` bytes or the input ends (then `true`).
fn fill(input: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> std::io::Result<bool> {
    let need = want.saturating_sub(buf.len()) as u64;
    let got = input.by_ref().take(need).read_to_end(buf)? as u64;
    Ok(got < need)
}

/// `bytes` (whole lines) cut into about `parts` pieces of at least `min` bytes, each ending
/// with a line.
fn split_lines(bytes: &[u8], parts: usize, min: usize) -> Vec<&[u8]> {
    let size = bytes.len().div_ceil(parts.max(1)).max(min.max(1));
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let cut = if rest.len() <= size {
            rest.len()
        } else {
            rest[size..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| size + i + 1)
        };
        let (piece, tail) = rest.split_at(cut);
        out.push(piece);
        rest = tail;
    }
    out
}

/// Which cells of a record become the matrix's values, and how.
struct Columns<'a> {
    index: &'a [usize],
    wanted: &'a [&'a str],
    tables: &'a [Option<&'a std::collections::HashMap<String, f64>>],
    /// Fields in the header: every record has as many.
    fields: usize,
}

impl Columns<'_> {
    /// Appends every record of `input` (CSV records, no header) to `values`; returns how
    /// many there were. Errors name rows counted from the input's start.
    fn read(&self, input: impl Read, values: &mut Vec<f64>) -> Result<usize, DataError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(input);
        let mut record = csv::ByteRecord::new();
        let mut row = 0;
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => return Ok(row),
                Err(e) => {
                    return Err(DataError::Record {
                        row: row + 1,
                        detail: e.to_string(),
                    })
                }
            }
            row += 1;
            if record.len() != self.fields {
                return Err(DataError::Record {
                    row,
                    detail: format!(
                        "{} fields where the header has {}",
                        record.len(),
                        self.fields
                    ),
                });
            }
            for ((&i, w), table) in self.index.iter().zip(self.wanted).zip(self.tables) {
                let cell = record.get(i).unwrap_or(b"");
                if let Some(table) = table {
                    values.push(category_code(table, &String::from_utf8_lossy(cell)));
                    continue;
                }
                match parse_cell(cell) {
                    Some(v) => values.push(v),
                    None => {
                        let shown: String =
                            String::from_utf8_lossy(cell).chars().take(40).collect();
                        return Err(DataError::NotANumber {
                            row,
                            column: w.to_string(),
                            value: shown,
                        });
                    }
                }
            }
        }
    }
}

impl DataError {
    /// The error of a piece of the file read on its own, at its row in the whole file
    /// (`rows` records came before the piece).
    fn after_rows(self, rows: usize) -> DataError {
        match self {
            DataError::NotANumber { row, column, value } => DataError::NotANumber {
                row: row + rows,
                column,
                value,
            },
            DataError::Record { row, detail } => DataError::Record {
                row: row + rows,
                detail,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_by_name_in_any_order() {
        let csv = "id,b,a,extra\n1,2.5,,x\n2,-1,3e2,y\n";
        let m = read_csv(csv.as_bytes(), &["a", "b"]).unwrap();
        assert_eq!(m.rows(), 2);
        assert!(m.row(0)[0].is_nan());
        assert_eq!(m.row(0)[1], 2.5);
        assert_eq!(m.row(1), &[300.0, -1.0]);
    }

    #[test]
    fn category_columns_are_read_by_value() {
        let mut cats = std::collections::BTreeMap::new();
        cats.insert(
            "type".to_string(),
            [("CASH_OUT", 0.0), ("TRANSFER", 1.0), ("5411", 2.0)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        );
        let csv = "type,a\nTRANSFER,1\nREFUND,2\n,3\n5411.0,4\n CASH_OUT ,5\n";
        let m = read_csv_with_categories(csv.as_bytes(), &["type", "a"], &cats).unwrap();
        let col: Vec<f64> = (0..m.rows()).map(|r| m.row(r)[0]).collect();
        assert_eq!(col[0], 1.0);
        assert!(
            col[1].is_nan() && col[2].is_nan(),
            "unseen and empty: missing"
        );
        assert_eq!(col[3], 2.0);
        assert_eq!(col[4], 0.0);
        assert_eq!(m.row(4)[1], 5.0);
    }

    /// A file read in blocks and pieces far smaller than its size: the same matrix and the
    /// same errors, at the same rows, as one read of the whole.
    #[test]
    fn blocks_and_pieces_read_as_one() {
        let mut text = String::from("id,b,a\r\n");
        for i in 0..500 {
            let a = if i % 7 == 0 {
                String::new()
            } else {
                format!("{}.5", i)
            };
            text.push_str(&format!("{i},{},{a}\r\n", -i));
            if i % 50 == 0 {
                text.push_str("\r\n");
            }
        }
        // No newline after the last record.
        text.push_str("9,9,9");
        let none = Default::default();
        let whole = read_blocks(text.as_bytes(), &["a", "b"], &none, usize::MAX, usize::MAX);
        let whole = whole.unwrap();
        assert_eq!(whole.rows(), 501);
        assert!(whole.row(0)[0].is_nan());
        assert_eq!(whole.row(3), &[3.5, -3.0]);
        assert_eq!(whole.row(500), &[9.0, 9.0]);
        for (block, piece) in [(1, 1), (100, 10), (333, 64), (4096, 1)] {
            let m = read_blocks(text.as_bytes(), &["a", "b"], &none, block, piece).unwrap();
            assert_eq!(m.columns, whole.columns);
            let same = m
                .values
                .iter()
                .zip(&whole.values)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same && m.values.len() == whole.values.len(),
                "{block} {piece}"
            );
        }
        // A bad cell, a short record: named at their row in the file, whatever the blocks.
        let bad = text.replace("\r\n321,-321,321.5\r\n", "\r\n321,-321,x\r\n");
        let short = text.replace("\r\n400,-400,400.5\r\n", "\r\n400,-400\r\n");
        for (block, piece) in [(usize::MAX, usize::MAX), (100, 10), (4096, 1)] {
            let err = read_blocks(bad.as_bytes(), &["a"], &none, block, piece).unwrap_err();
            assert_eq!(err.to_string(), "row 322, column `a`: `x` is not a number");
            let err = read_blocks(short.as_bytes(), &["a"], &none, block, piece).unwrap_err();
            assert_eq!(
                err.to_string(),
                "CSV error: row 401: 2 fields where the header has 3"
            );
        }
        // Quotes from the middle on (a newline inside one): read one record after another
        // from there, with the rows before kept.
        let quoted = text.replace("\r\n250,-250,250.5\r\n", "\r\n250,\"-2\n50\",250.5\r\n");
        let quoted = quoted.replace("\r\n260,-260,", "\r\n\"260\",\"-260\",");
        for (block, piece) in [(usize::MAX, usize::MAX), (100, 10), (1, 1)] {
            let m = read_blocks(quoted.as_bytes(), &["a", "id"], &none, block, piece).unwrap();
            assert_eq!(m.rows(), 501);
            assert_eq!(m.row(250), &[250.5, 250.0]);
            assert_eq!(m.row(260), &[260.5, 260.0]);
            assert_eq!(m.row(499), &[499.5, 499.0]);
        }
    }

    #[test]
    fn clear_errors() {
        let err = read_csv("a\n1\n".as_bytes(), &["a", "b"]).unwrap_err();
        assert_eq!(err.to_string(), "column `b` is missing from the CSV header");
        let err = read_csv("a,b\n1,x\n".as_bytes(), &["a", "b"]).unwrap_err();
        assert_eq!(err.to_string(), "row 1, column `b`: `x` is not a number");
        let err = read_csv("a,b\n1\n".as_bytes(), &["a"]).unwrap_err();
        assert!(err.to_string().contains("CSV error"), "{err}");
        assert!(read_csv("".as_bytes(), &["a"]).is_err());
        let err = read_csv("a,a\n1,2\n".as_bytes(), &["a"]).unwrap_err();
        assert!(err.to_string().contains("twice"));
    }
}
