//! The compiled inference layout: what scoring actually runs.
//!
//! Every tree is flattened into one shared node array in breadth-first order with the two
//! children of a node side by side, so a step is `next = left + go_right` with no branch on
//! the comparison. Each split is rewritten to the single form `x <= t` in `f64`, with the exact
//! `t` that reproduces the source library's own comparison (XGBoost's `f32` `<`, LightGBM's
//! `f64` `<=`), so routing stays bit-exact. `t = NaN` means "never left" (all comparisons with
//! NaN are false), which also covers `x < -inf`.
//!
//! Leaves point to themselves (threshold NaN: always right; `left = self - 1`), so a tree can be walked a
//! fixed number of steps (its depth) without checking for leaves. Batches walk a block of rows
//! through one tree in lock-step, which keeps that tree hot in cache and gives the CPU many
//! independent loads to overlap; a single row walks several trees in lock-step for the same
//! reason. Models without categorical or zero-as-missing splits use a kernel with no
//! data-dependent branch at all.

use rayon::prelude::*;

use super::ensemble::{
    Accumulation, CategoryCast, Ensemble, Missing, Node, Test, LIGHTGBM_ZERO_THRESHOLD,
};
use super::ModelError;

const FEATURE_MASK: u32 = (1 << 24) - 1;
const NAN_LEFT_SHIFT: u32 = 24;
const ZERO_MISSING: u32 = 1 << 25;
const CATEGORICAL: u32 = 1 << 26;
const LEAF: u32 = 1 << 27;

/// Rows walked together through one tree in batch prediction.
const BLOCK: usize = 16;
/// Trees walked together for one row in single-row prediction.
const TREE_LANES: usize = 8;
/// Rows per parallel task in batch prediction.
const PAR_CHUNK_ROWS: usize = 1024;

#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct CNode {
    /// Numeric: go left iff `x <= threshold`. Leaf: NaN. Categorical: the category-table index
    /// stored in the bits.
    threshold: f64,
    /// Index of the left child; the right child is `left + 1`. Leaves: own index - 1.
    left: u32,
    /// Feature index (low 24 bits) and flags.
    meta: u32,
}

#[derive(Debug, Clone)]
struct CatTest {
    /// Offset of the bitset in `cat_bits`.
    offset: u32,
    /// Length of the bitset in 64-bit words.
    words: u32,
    in_set_goes_left: bool,
    cast: CategoryCast,
}

#[derive(Debug, Clone, Copy)]
struct TreeInfo {
    root: u32,
    depth: u32,
}

/// A tree ensemble compiled for fast, exact prediction.
///
/// Build one with [`CompiledModel::new`] from a validated [`Ensemble`]; it is immutable and
/// `Sync`, so one instance serves all threads.
#[derive(Debug, Clone)]
pub struct CompiledModel {
    nodes: Vec<CNode>,
    leaf_values: Vec<f64>,
    leaf_ids: Vec<u32>,
    trees: Vec<TreeInfo>,
    cats: Vec<CatTest>,
    cat_bits: Vec<u64>,
    num_features: usize,
    base_margin: f64,
    accumulation: Accumulation,
    average_output: bool,
    scale: f64,
    branch_free: bool,
}

/// The smallest `t64` with `(x as f32) < t` iff `x < t64` for every non-NaN `f64` `x`.
///
/// `f64 -> f32` rounds to nearest, ties to even, so the boundary is the midpoint between `t`
/// and the `f32` below it, included or not depending on which side the tie rounds to.
pub(crate) fn f32_less_as_f64(t: f32) -> f64 {
    if t == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    // 2^128: the value an f32 overflow rounds to, as a finite f64.
    const OVERFLOW: f64 = 340_282_366_920_938_463_463_374_607_431_768_211_456.0;
    let widen = |v: f32| -> f64 {
        if v == f32::INFINITY {
            OVERFLOW
        } else if v == f32::NEG_INFINITY {
            -OVERFLOW
        } else {
            v as f64
        }
    };
    let below = t.next_down();
    let mid = (widen(below) + widen(t)) / 2.0;
    if t.to_bits() & 1 == 0 {
        // A tie rounds up to t, which is not < t: exclude the midpoint.
        mid
    } else {
        mid.next_up()
    }
}

/// The `t` with `x <= t` iff the test sends non-NaN `x` left. NaN means "never left": every
/// comparison with NaN is false.
fn numeric_threshold(test: &Test) -> f64 {
    let less = |t: f64| {
        if t == f64::NEG_INFINITY {
            f64::NAN
        } else {
            t.next_down()
        }
    };
    match *test {
        Test::LessEqual(t) => t,
        Test::Less(t) => less(t),
        Test::LessF32(t) => less(f32_less_as_f64(t)),
        // Not reached: categorical splits are compiled separately.
        Test::Categories(_) => f64::NAN,
    }
}

impl CompiledModel {
    /// Compiles a validated ensemble.
    pub fn new(ensemble: &Ensemble) -> Result<Self, ModelError> {
        ensemble.validate()?;
        let super::ensemble::Objective::Logistic { scale } = ensemble.objective;
        let mut m = CompiledModel {
            nodes: Vec::new(),
            leaf_values: Vec::new(),
            leaf_ids: Vec::new(),
            trees: Vec::with_capacity(ensemble.trees.len()),
            cats: Vec::new(),
            cat_bits: Vec::new(),
            num_features: ensemble.num_features(),
            base_margin: ensemble.base_margin,
            accumulation: ensemble.accumulation,
            average_output: ensemble.average_output,
            scale,
            branch_free: true,
        };
        for tree in &ensemble.trees {
            let root = u32::try_from(m.nodes.len())
                .map_err(|_| ModelError::Invalid("model has too many nodes".into()))?;
            // Breadth-first: (source index, target index, depth).
            let mut queue = std::collections::VecDeque::new();
            m.push_placeholder();
            queue.push_back((0usize, root, 0u32));
            let mut depth = 0u32;
            while let Some((src, dst, d)) = queue.pop_front() {
                depth = depth.max(d);
                match &tree.nodes[src] {
                    Node::Leaf { value, id } => {
                        m.nodes[dst as usize] = CNode {
                            threshold: f64::NAN,
                            left: dst.wrapping_sub(1),
                            meta: LEAF,
                        };
                        m.leaf_values[dst as usize] = *value;
                        m.leaf_ids[dst as usize] = *id;
                    }
                    Node::Split(s) => {
                        let left = u32::try_from(m.nodes.len())
                            .map_err(|_| ModelError::Invalid("model has too many nodes".into()))?;
                        m.push_placeholder();
                        m.push_placeholder();
                        queue.push_back((s.left as usize, left, d + 1));
                        queue.push_back((s.right as usize, left + 1, d + 1));
                        let mut meta = s.feature;
                        let (threshold, nan_left) = match &s.test {
                            Test::Categories(c) => {
                                m.branch_free = false;
                                meta |= CATEGORICAL;
                                let idx = m.cats.len() as u64;
                                let words =
                                    c.categories.last().map_or(0, |&max| max as usize / 64 + 1);
                                let offset = m.cat_bits.len();
                                m.cat_bits.resize(offset + words, 0);
                                for &cat in &c.categories {
                                    m.cat_bits[offset + cat as usize / 64] |= 1 << (cat % 64);
                                }
                                m.cats.push(CatTest {
                                    offset: offset as u32,
                                    words: words as u32,
                                    in_set_goes_left: c.in_set_goes_left,
                                    cast: c.cast,
                                });
                                let nan_left = match s.missing {
                                    Missing::NanAsZero => c.goes_left(0.0),
                                    Missing::Nan | Missing::ZeroOrNan => s.default_left,
                                };
                                if s.missing == Missing::ZeroOrNan {
                                    meta |= ZERO_MISSING;
                                }
                                (f64::from_bits(idx), nan_left)
                            }
                            test => {
                                let t = numeric_threshold(test);
                                let nan_left = match s.missing {
                                    Missing::Nan => s.default_left,
                                    Missing::ZeroOrNan => {
                                        m.branch_free = false;
                                        meta |= ZERO_MISSING;
                                        s.default_left
                                    }
                                    Missing::NanAsZero => 0.0 <= t,
                                };
                                (t, nan_left)
                            }
                        };
                        meta |= u32::from(nan_left) << NAN_LEFT_SHIFT;
                        m.nodes[dst as usize] = CNode {
                            threshold,
                            left,
                            meta,
                        };
                    }
                }
            }
            m.trees.push(TreeInfo { root, depth });
        }
        Ok(m)
    }

    fn push_placeholder(&mut self) {
        self.nodes.push(CNode {
            threshold: f64::NAN,
            left: 0,
            meta: LEAF,
        });
        self.leaf_values.push(0.0);
        self.leaf_ids.push(0);
    }

    /// Number of input features a row must have.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// Number of trees.
    pub fn num_trees(&self) -> usize {
        self.trees.len()
    }

    /// Maps a margin to a probability.
    #[inline]
    pub fn probability(&self, margin: f64) -> f64 {
        1.0 / (1.0 + (-self.scale * margin).exp())
    }

    fn check_row(&self, row: &[f64]) -> Result<(), ModelError> {
        if row.len() != self.num_features {
            return Err(ModelError::RowLength {
                expected: self.num_features,
                found: row.len(),
            });
        }
        Ok(())
    }

    /// One step of the general kernel (handles categorical and zero-as-missing splits).
    #[inline(always)]
    fn step(&self, idx: u32, row: &[f64]) -> u32 {
        let n = self.nodes[idx as usize];
        let x = row[(n.meta & FEATURE_MASK) as usize];
        if n.meta & (CATEGORICAL | ZERO_MISSING) == 0 {
            return step_numeric(n, x);
        }
        let nan_left = (n.meta >> NAN_LEFT_SHIFT) & 1 != 0;
        let missing =
            x.is_nan() || (n.meta & ZERO_MISSING != 0 && x.abs() <= LIGHTGBM_ZERO_THRESHOLD);
        let go_left = if missing {
            nan_left
        } else if n.meta & CATEGORICAL != 0 {
            self.category_goes_left(n.threshold.to_bits() as usize, x)
        } else {
            x <= n.threshold
        };
        n.left + u32::from(!go_left)
    }

    fn category_goes_left(&self, cat: usize, x: f64) -> bool {
        let c = &self.cats[cat];
        let code = match c.cast {
            CategoryCast::XgboostF32 => {
                let v = x as f32;
                if (0.0..super::ensemble::XGBOOST_MAX_CATEGORY).contains(&v) {
                    Some(v as u32)
                } else {
                    None
                }
            }
            CategoryCast::LightgbmTruncate => u32::try_from(x as i32).ok(),
        };
        let in_set = code.is_some_and(|code| {
            let word = code as usize / 64;
            word < c.words as usize
                && self.cat_bits[c.offset as usize + word] & (1 << (code % 64)) != 0
        });
        in_set == c.in_set_goes_left
    }

    /// Margin of one row. `row` has [`num_features`](Self::num_features) values, NaN for
    /// missing.
    pub fn predict_margin(&self, row: &[f64]) -> Result<f64, ModelError> {
        self.check_row(row)?;
        Ok(if self.branch_free {
            self.margin_row::<true>(row)
        } else {
            self.margin_row::<false>(row)
        })
    }

    /// Probability of fraud for one row.
    pub fn predict_proba(&self, row: &[f64]) -> Result<f64, ModelError> {
        self.predict_margin(row).map(|m| self.probability(m))
    }

    #[inline(always)]
    fn walk<const FAST: bool>(&self, idx: u32, row: &[f64]) -> u32 {
        if FAST {
            let n = self.nodes[idx as usize];
            step_numeric(n, row[(n.meta & FEATURE_MASK) as usize])
        } else {
            self.step(idx, row)
        }
    }

    fn margin_row<const FAST: bool>(&self, row: &[f64]) -> f64 {
        let mut sum64 = self.base_margin;
        let mut sum32 = self.base_margin as f32;
        for group in self.trees.chunks(TREE_LANES) {
            let mut idx = [0u32; TREE_LANES];
            let mut depth = 0;
            for (i, t) in group.iter().enumerate() {
                idx[i] = t.root;
                depth = depth.max(t.depth);
            }
            let lanes = group.len();
            for _ in 0..depth {
                for i in idx.iter_mut().take(lanes) {
                    *i = self.walk::<FAST>(*i, row);
                }
            }
            match self.accumulation {
                Accumulation::F64 => {
                    for &i in &idx[..lanes] {
                        sum64 += self.leaf_values[i as usize];
                    }
                }
                Accumulation::F32 => {
                    for &i in &idx[..lanes] {
                        sum32 += self.leaf_values[i as usize] as f32;
                    }
                }
            }
        }
        let sum = match self.accumulation {
            Accumulation::F64 => sum64,
            Accumulation::F32 => sum32 as f64,
        };
        self.finish(sum)
    }

    #[inline]
    fn finish(&self, sum: f64) -> f64 {
        if self.average_output && !self.trees.is_empty() {
            sum / self.trees.len() as f64
        } else {
            sum
        }
    }

    /// Margins of a row-major batch (`rows.len() == out.len() * num_features`), in parallel
    /// over rayon's current pool.
    pub fn predict_margin_batch(&self, rows: &[f64], out: &mut [f64]) -> Result<(), ModelError> {
        let nf = self.num_features;
        if rows.len() != out.len() * nf {
            return Err(ModelError::BatchShape {
                values: rows.len(),
                rows: out.len(),
                features: nf,
            });
        }
        if nf == 0 {
            // Every tree is a single leaf; any row reaches the same margin.
            let m = self.margin_row::<false>(&[]);
            out.fill(m);
            return Ok(());
        }
        out.par_chunks_mut(PAR_CHUNK_ROWS)
            .zip(rows.par_chunks(PAR_CHUNK_ROWS * nf))
            .for_each(|(out, rows)| self.margin_chunk(rows, out));
        Ok(())
    }

    /// Probabilities of a row-major batch, in parallel over rayon's current pool.
    pub fn predict_proba_batch(&self, rows: &[f64], out: &mut [f64]) -> Result<(), ModelError> {
        self.predict_margin_batch(rows, out)?;
        for v in out.iter_mut() {
            *v = self.probability(*v);
        }
        Ok(())
    }

    /// Margins of a row-major batch on the calling thread only.
    pub fn predict_margin_batch_serial(
        &self,
        rows: &[f64],
        out: &mut [f64],
    ) -> Result<(), ModelError> {
        let nf = self.num_features;
        if rows.len() != out.len() * nf {
            return Err(ModelError::BatchShape {
                values: rows.len(),
                rows: out.len(),
                features: nf,
            });
        }
        if nf == 0 {
            let m = self.margin_row::<false>(&[]);
            out.fill(m);
            return Ok(());
        }
        self.margin_chunk(rows, out);
        Ok(())
    }

    fn margin_chunk(&self, rows: &[f64], out: &mut [f64]) {
        if self.branch_free {
            self.margin_chunk_k::<true>(rows, out)
        } else {
            self.margin_chunk_k::<false>(rows, out)
        }
    }

    fn margin_chunk_k<const FAST: bool>(&self, rows: &[f64], out: &mut [f64]) {
        let nf = self.num_features;
        for (out, rows) in out.chunks_mut(BLOCK).zip(rows.chunks(BLOCK * nf)) {
            let n = out.len();
            let mut row_refs: [&[f64]; BLOCK] = [&[]; BLOCK];
            for (r, row) in rows.chunks_exact(nf).enumerate() {
                row_refs[r] = row;
            }
            let row_refs = &row_refs[..n];
            let mut sum64 = [self.base_margin; BLOCK];
            let mut sum32 = [self.base_margin as f32; BLOCK];
            let mut idx = [0u32; BLOCK];
            for t in &self.trees {
                idx[..n].fill(t.root);
                for _ in 0..t.depth {
                    for (i, row) in idx.iter_mut().zip(row_refs) {
                        *i = self.walk::<FAST>(*i, row);
                    }
                }
                match self.accumulation {
                    Accumulation::F64 => {
                        for (s, &i) in sum64.iter_mut().zip(&idx[..n]) {
                            *s += self.leaf_values[i as usize];
                        }
                    }
                    Accumulation::F32 => {
                        for (s, &i) in sum32.iter_mut().zip(&idx[..n]) {
                            *s += self.leaf_values[i as usize] as f32;
                        }
                    }
                }
            }
            for r in 0..n {
                let s = match self.accumulation {
                    Accumulation::F64 => sum64[r],
                    Accumulation::F32 => sum32[r] as f64,
                };
                out[r] = self.finish(s);
            }
        }
    }

    /// For one row, the source-library identifier of the leaf reached in every tree
    /// (XGBoost node id, LightGBM leaf index), in tree order.
    pub fn predict_leaves(&self, row: &[f64]) -> Result<Vec<u32>, ModelError> {
        self.check_row(row)?;
        Ok(self
            .trees
            .iter()
            .map(|t| {
                let mut i = t.root;
                while self.nodes[i as usize].meta & LEAF == 0 {
                    i = self.step(i, row);
                }
                self.leaf_ids[i as usize]
            })
            .collect())
    }
}

/// One branch-free step of a numeric split (or a leaf, which stays where it is).
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must compare false: that is the point.
fn step_numeric(n: CNode, x: f64) -> u32 {
    let nan_left = (n.meta >> NAN_LEFT_SHIFT) & 1;
    // NaN compares false (right); flip that to left where NaN goes left.
    let go_right = u32::from(!(x <= n.threshold)) ^ (u32::from(x.is_nan()) & nan_left);
    n.left.wrapping_add(go_right)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_threshold_is_exact_around_the_boundary() {
        let mut samples: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            -0.1,
            1.5,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x8000_0001),
            f32::INFINITY,
            f32::NEG_INFINITY,
            16_777_216.0,
            3.4e-5,
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let f = f32::from_bits(state as u32);
            if !f.is_nan() {
                samples.push(f);
            }
        }
        for t in samples {
            let t64 = f32_less_as_f64(t);
            let mut probes = vec![t as f64, t64, t64.next_up(), t64.next_down()];
            if t64.is_finite() {
                probes.push(t64 * (1.0 + 1e-12));
                probes.push(t64 * (1.0 - 1e-12));
            }
            for x in probes {
                if x.is_nan() {
                    continue;
                }
                assert_eq!(
                    (x as f32) < t,
                    x < t64,
                    "t={t:e} ({:#x}) x={x:e} t64={t64:e}",
                    t.to_bits()
                );
            }
        }
    }
}
