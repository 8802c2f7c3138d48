//! Feature binning: every value becomes a small bin index before training.
//!
//! Numeric features get up to `max_bin` bins with about equal row counts (each distinct value
//! its own bin when there are few), bounded by upper limits halfway between neighbouring
//! values, so `bin(x) <= b` exactly when `x <= upper[b]`: the split a tree learns on bins is
//! the same split its `x <= threshold` test makes on raw values. Categorical features map
//! each integer code (truncated toward zero) to its own bin, the most frequent first; codes
//! beyond the bin budget, negative codes and unseen codes share the "other" bin. Missing
//! values (NaN) always have the last bin.

use rayon::prelude::*;

/// Bin index of missing values (NaN), for every feature.
pub const MISSING_BIN: u8 = 255;
/// Most bins a feature may use for values (the last index is for missing values).
pub const MAX_VALUE_BINS: usize = 255;

/// How one feature's values map to bins.
#[derive(Debug, Clone, PartialEq)]
pub enum BinMapper {
    /// Numeric: bin `b` holds values in `(upper[b-1], upper[b]]`; the last upper is +inf.
    Numeric {
        /// Upper limits, increasing.
        upper: Vec<f64>,
        /// Whether training data had missing values.
        has_missing: bool,
    },
    /// Categorical: `codes[b]` is the category of bin `b`; bin `codes.len()` is "other".
    Categorical {
        /// Category code of each bin, most frequent first.
        codes: Vec<u32>,
        /// Rows per bin in the training data (for `min_data_per_group`).
        counts: Vec<u64>,
    },
}

impl BinMapper {
    /// Number of bins used by values (the missing bin excluded).
    pub fn value_bins(&self) -> usize {
        match self {
            BinMapper::Numeric { upper, .. } => upper.len(),
            BinMapper::Categorical { codes, .. } => codes.len() + 1,
        }
    }

    /// Learns a numeric mapper from a column.
    pub fn numeric(values: &[f64], max_bin: usize) -> Self {
        let max_bin = max_bin.clamp(2, MAX_VALUE_BINS);
        let has_missing = values.iter().any(|v| v.is_nan());
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_unstable_by(f64::total_cmp);
        // Distinct values with their counts (-0.0 and 0.0 are one value).
        let mut distinct: Vec<(f64, usize)> = Vec::new();
        for x in v {
            match distinct.last_mut() {
                Some((d, c)) if *d == x => *c += 1,
                _ => distinct.push((x, 1)),
            }
        }
        let mut upper = Vec::new();
        if distinct.len() <= max_bin {
            for w in distinct.windows(2) {
                upper.push(midpoint(w[0].0, w[1].0));
            }
        } else {
            // Greedy equal-count bins over distinct values.
            let total: usize = distinct.iter().map(|d| d.1).sum();
            let per_bin = total as f64 / max_bin as f64;
            let mut acc = 0usize;
            let mut next_cut = per_bin;
            for i in 0..distinct.len() - 1 {
                acc += distinct[i].1;
                if acc as f64 >= next_cut && upper.len() < max_bin - 1 {
                    upper.push(midpoint(distinct[i].0, distinct[i + 1].0));
                    while next_cut <= acc as f64 {
                        next_cut += per_bin;
                    }
                }
            }
        }
        upper.push(f64::INFINITY);
        BinMapper::Numeric { upper, has_missing }
    }

    /// Learns a categorical mapper from a column of integer codes.
    pub fn categorical(values: &[f64], max_bin: usize) -> Self {
        let mut freq: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        for &v in values {
            if let Some(c) = category_code(v) {
                *freq.entry(c).or_insert(0) += 1;
            }
        }
        let mut by_freq: Vec<(u32, u64)> = freq.into_iter().collect();
        // Most frequent first; ties by code, so the mapping is deterministic.
        by_freq.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        by_freq.truncate(max_bin.clamp(2, MAX_VALUE_BINS) - 1);
        BinMapper::Categorical {
            codes: by_freq.iter().map(|c| c.0).collect(),
            counts: by_freq.iter().map(|c| c.1).collect(),
        }
    }

    /// The bin of `x`.
    #[inline]
    pub fn bin(&self, x: f64) -> u8 {
        if x.is_nan() {
            return MISSING_BIN;
        }
        match self {
            BinMapper::Numeric { upper, .. } => upper.partition_point(|&u| u < x) as u8,
            BinMapper::Categorical { codes, .. } => {
                let other = codes.len() as u8;
                match category_code(x) {
                    Some(c) => codes
                        .iter()
                        .position(|&k| k == c)
                        .map_or(other, |b| b as u8),
                    None => other,
                }
            }
        }
    }
}

/// The category code of `x` as LightGBM reads it: truncated toward zero, non-negative.
pub fn category_code(x: f64) -> Option<u32> {
    if x.is_nan() {
        None
    } else {
        u32::try_from(x as i32).ok()
    }
}

/// A value strictly between `a < b` that is at least `a`: `x <= m` holds for `a`, not for `b`.
fn midpoint(a: f64, b: f64) -> f64 {
    let m = a + (b - a) / 2.0;
    if m < b && m >= a {
        m
    } else {
        a
    }
}

/// A binned data set, column-major: `bins[f * rows + r]`.
#[derive(Debug, Clone)]
pub struct Binned {
    /// Rows.
    pub rows: usize,
    /// Bins, feature after feature.
    pub bins: Vec<u8>,
}

impl Binned {
    /// The bins of feature `f`.
    #[inline]
    pub fn column(&self, f: usize) -> &[u8] {
        &self.bins[f * self.rows..(f + 1) * self.rows]
    }

    /// Bins a row-major matrix with the given mappers, in parallel over features.
    pub fn new(values: &[f64], nf: usize, mappers: &[BinMapper]) -> Self {
        let rows = values.len().checked_div(nf).unwrap_or(0);
        let mut bins = vec![0u8; rows * nf];
        bins.par_chunks_mut(rows.max(1))
            .zip(mappers.par_iter())
            .enumerate()
            .for_each(|(f, (col, m))| {
                for (r, b) in col.iter_mut().enumerate() {
                    *b = m.bin(values[r * nf + f]);
                }
            });
        Binned { rows, bins }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_bins_agree_with_thresholds() {
        let values: Vec<f64> = (0..10_000)
            .map(|i| ((i * 7919) % 1000) as f64 / 7.0)
            .collect();
        let m = BinMapper::numeric(&values, 32);
        let BinMapper::Numeric { upper, .. } = &m else {
            unreachable!()
        };
        assert!(upper.len() <= 32);
        for &x in &values {
            let b = m.bin(x) as usize;
            assert!(x <= upper[b]);
            if b > 0 {
                assert!(x > upper[b - 1]);
            }
        }
        assert_eq!(m.bin(f64::NAN), MISSING_BIN);
    }

    #[test]
    fn few_distinct_values_get_one_bin_each_even_adjacent_floats() {
        let a = 1.0f64;
        let values = [a, a.next_up(), a, 5.0, -0.0, 0.0];
        let m = BinMapper::numeric(&values, 255);
        assert_eq!(m.value_bins(), 4);
        assert_ne!(m.bin(a), m.bin(a.next_up()));
        assert_eq!(m.bin(-0.0), m.bin(0.0));
    }

    #[test]
    fn categories_by_frequency_with_other() {
        let values = [3.0, 3.0, 3.0, 7.0, 7.0, 1.0, -1.0, 2.9, f64::NAN];
        let m = BinMapper::categorical(&values, 3);
        assert_eq!(m.bin(3.0), 0);
        assert_eq!(m.bin(2.9), m.bin(2.0));
        assert_eq!(m.bin(7.0), 1);
        assert_eq!(m.bin(1.0), 2, "beyond the budget: other");
        assert_eq!(m.bin(-1.0), 2);
        assert_eq!(m.bin(f64::NAN), MISSING_BIN);
    }
}
