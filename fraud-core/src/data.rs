//! Tabular input: reading feature columns from CSV into a row-major matrix of `f64`.
//!
//! This is how files of already-computed features reach a model (prediction, benchmarks, and
//! later training). Columns are matched by header name, in any order; extra columns are
//! ignored; an empty cell (or `NaN`, `NA`) is a missing value. It does not compute features
//! from raw transactions.

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
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let header = reader
        .byte_headers()
        .map_err(|e| DataError::Csv(e.to_string()))?
        .clone();
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
    let mut values = Vec::new();
    let mut record = csv::ByteRecord::new();
    let mut row = 0usize;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(DataError::Csv(e.to_string())),
        }
        row += 1;
        for ((&i, w), table) in index.iter().zip(wanted).zip(&tables) {
            let cell = record.get(i).unwrap_or(b"");
            if let Some(table) = table {
                values.push(category_code(table, &String::from_utf8_lossy(cell)));
                continue;
            }
            match parse_cell(cell) {
                Some(v) => values.push(v),
                None => {
                    let shown: String = String::from_utf8_lossy(cell).chars().take(40).collect();
                    return Err(DataError::NotANumber {
                        row,
                        column: w.to_string(),
                        value: shown,
                    });
                }
            }
        }
    }
    Ok(Matrix {
        columns: wanted.iter().map(|w| w.to_string()).collect(),
        values,
    })
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
