//! The compiled inference layout: what scoring actually runs.
//!
//! Every tree is flattened into one shared node array with the two children of a node side by
//! side (pairs laid out depth-first, the child with more training cover first, so the most
//! travelled paths are contiguous in memory), so a step is `next = base + !(v <= t)`: no branch, and one
//! comparison. Each split is rewritten to that single form in `f64`, with the exact `t` that
//! reproduces the source library's own comparison (XGBoost's `f32` `<`, LightGBM's `f64` `<=`),
//! so routing stays bit-exact. A NaN `v` compares false and lands in the second slot, so each
//! node's children are ordered to put the missing-value direction second. Where missing values
//! go left, the node reads the *negated* feature (`-x <= s` with `s` chosen to match), which
//! every row carries beside its own values; so missing values cost no instruction at all.
//! `t = NaN` means "never first" (every comparison with NaN is false).
//!
//! Leaves point to themselves (threshold NaN, `base = self - 1`), so a tree can be walked a
//! fixed number of steps without checking for leaves. That number is chosen per tree from the
//! training cover of its leaves: deep enough that most rows are at their leaf by then, and
//! the few that are not finish alone. Batches walk a block of rows
//! through one tree in lock-step, which keeps that tree hot in cache and gives the CPU many
//! independent loads to overlap; a single row walks several trees in lock-step for the same
//! reason. A model larger than a core's L2 cache is walked in tiles of trees (`TILE_BYTES`
//! of nodes): a group of blocks walks one tile, then the next, each row adding its trees in
//! model order (the same sums, bit for bit), so that the nodes come from L2 rather than L3.
//! Models with categorical or zero-as-missing splits use a kernel that branches on those
//! nodes only.
//!
//! Batches may instead use bit vectors ([`BatchKernel::BitVector`], the `bitvector` module),
//! whose cost does not follow the trees' depth; `new` picks the kernel with the lower
//! expected cost per row from the trees' shapes, and either can be forced. Single rows walk,
//! except in models with categorical or zero-as-missing splits whose batches chose bit
//! vectors: there one row scans the bit vectors alone.

use rayon::prelude::*;

use super::ensemble::{
    Accumulation, CategoryCast, Ensemble, Missing, Node, Test, LIGHTGBM_ZERO_THRESHOLD,
};
use super::ModelError;

#[path = "bitvector.rs"]
mod bitvector;
use bitvector::{BitScorer, Simd};

/// How batch prediction walks the trees. Every kernel gives the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKernel {
    /// A block of rows walks each tree in lock-step, branch-free: a cost per tree that
    /// follows the tree's depth. Fastest on shallow, balanced trees.
    Walk,
    /// QuickScorer bit vectors, sixteen rows at a time, with the widest instructions the CPU
    /// has (AVX-512, AVX2, else portable code): a cost that follows the number of tests the
    /// rows fail, whatever the trees' depth.
    BitVector,
    /// [`BitVector`](Self::BitVector) with AVX2 instructions (an error where the CPU has none).
    BitVectorAvx2,
    /// [`BitVector`](Self::BitVector) in portable code, on any CPU.
    BitVectorPortable,
}

/// Node flags (kept apart from the nodes: the branch-free kernel never reads them).
/// The left child is in the second slot (`base + 1`): missing values go left.
const LEFT_SECOND: u8 = 1;
const ZERO_MISSING: u8 = 1 << 1;
const CATEGORICAL: u8 = 1 << 2;
const LEAF: u8 = 1 << 3;

/// Rows walked together through one tree in batch prediction.
const BLOCK: usize = 12;
/// Trees walked together for one row in single-row prediction.
const TREE_LANES: usize = 8;
/// Rows per parallel task in batch prediction.
const PAR_CHUNK_ROWS: usize = 1024;
/// Bytes of nodes (with their flags and leaf values) in a tile of trees that a group of
/// blocks walks before the next tile: a model larger than a core's L2 cache (a 300-tree,
/// 63-leaf model takes about 900 KB; AMD Zen 3 has 512 KB) would otherwise come from L3 for
/// every block of rows.
const TILE_BYTES: usize = 160 << 10;
/// Bytes of row buffers in a group of blocks walked tile by tile.
const GROUP_BYTES: usize = 96 << 10;

/// Tile boundaries (see `CompiledModel::tiles`) of trees laid out one after the other.
fn tiles(trees: &[TreeInfo], nodes: usize) -> Vec<u32> {
    const NODE_BYTES: usize = std::mem::size_of::<CNode>() + 1 + 8;
    let mut out = vec![0u32];
    // First tree and first node of the tile being filled.
    let (mut first, mut from) = (0usize, 0usize);
    for (i, t) in trees.iter().enumerate() {
        let end = trees.get(i + 1).map_or(nodes, |n| n.root as usize);
        if i > first && end.saturating_sub(from) * NODE_BYTES > TILE_BYTES {
            out.push(i as u32);
            (first, from) = (i, t.root as usize);
        }
    }
    if !trees.is_empty() {
        out.push(trees.len() as u32);
    }
    out
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct CNode {
    /// Numeric: the first slot is taken iff `v <= threshold`. Leaf: NaN. Categorical: the
    /// category-table index stored in the bits.
    threshold: f64,
    /// Index of the first child; the second is `base + 1`. Leaves: own index - 1.
    base: u32,
    /// Index into the row buffer: `BLOCK *` the value's position (positions
    /// `>= num_features` hold negated values).
    feature: u32,
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
    /// Steps walked in lock-step by a block of rows before the few rows not yet at a leaf
    /// finish alone.
    lock_batch: u32,
    /// The same for a single row walking several trees in lock-step.
    lock_single: u32,
}

/// Cost of a walk finishing alone after the lock-step, in lock-step steps: the mispredicted
/// exit of its loop, and each further step walked at latency rather than throughput.
/// Measured on the benchmark model (`benches/`): batches want the lock-step to go deeper.
const STRAGGLER_BATCH: (f64, f64) = (10.0, 6.0);
const STRAGGLER_SINGLE: (f64, f64) = (6.0, 4.0);

/// The lock-step depth with the least expected cost, from the depth and training cover of
/// every leaf (leaves of unknown cover count as a balanced tree would reach them).
fn cover(node: &Node) -> f64 {
    match node {
        Node::Leaf { cover, .. } => *cover,
        Node::Split(s) => s.cover,
    }
}

/// Returns the depth and its expected cost per row, in lock-step steps.
fn lockstep_depth(leaves: &[(u32, f64)], (penalty, step): (f64, f64)) -> (u32, f64) {
    let max = leaves.iter().map(|l| l.0).max().unwrap_or(0);
    let total: f64 = leaves.iter().map(|l| l.1).sum();
    let weight = |(d, c): (u32, f64)| {
        if total > 0.0 {
            c / total
        } else {
            0.5f64.powi(d as i32)
        }
    };
    // Leaf weight by depth, then suffix sums: the cost of every lock-step depth in one pass
    // over the depths (not depths x leaves, which a deep chain-shaped tree makes huge).
    let mut by_depth = vec![0.0f64; max as usize + 1];
    for &l in leaves {
        by_depth[l.0 as usize] += weight(l);
    }
    // For `lock`: the weight of leaves deeper than it, and their weighted depth.
    let (mut w_deeper, mut wd_deeper) = (0.0f64, 0.0f64);
    let mut costs = vec![0.0f64; max as usize + 1];
    for lock in (0..=max).rev() {
        costs[lock as usize] =
            lock as f64 + w_deeper * (penalty - step * lock as f64) + step * wd_deeper;
        w_deeper += by_depth[lock as usize];
        wd_deeper += by_depth[lock as usize] * lock as f64;
    }
    let mut best = (max, f64::INFINITY);
    for (lock, &cost) in costs.iter().enumerate() {
        if cost < best.1 {
            best = (lock as u32, cost);
        }
    }
    best
}

/// A tree ensemble compiled for fast, exact prediction.
///
/// Build one with [`CompiledModel::new`] from a validated [`Ensemble`]; it is immutable and
/// `Sync`, so one instance serves all threads.
#[derive(Debug, Clone)]
pub struct CompiledModel {
    nodes: Vec<CNode>,
    flags: Vec<u8>,
    leaf_values: Vec<f64>,
    leaf_ids: Vec<u32>,
    trees: Vec<TreeInfo>,
    /// Batches walk the trees in tiles of about `TILE_BYTES` of nodes: tile `i` is trees
    /// `tiles[i]..tiles[i + 1]`.
    tiles: Vec<u32>,
    cats: Vec<CatTest>,
    cat_bits: Vec<u64>,
    num_features: usize,
    base_margin: f64,
    accumulation: Accumulation,
    average_output: bool,
    scale: f64,
    branch_free: bool,
    /// Linear term (logistic-regression models).
    linear: Option<super::ensemble::LinearTerm>,
    /// Length every row buffer has at least: `max(2 * num_features, 1)`.
    min_buf: usize,
    /// The bit-vector form, when batches use it.
    bits: Option<Box<BitScorer>>,
    /// Expected cost per row of the walk and of the widest bit-vector kernel (none when the
    /// model cannot have one), in walk steps: what `new` chose the batch kernel by.
    kernel_costs: (f64, Option<f64>),
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

/// For `x <= t` sending `x` left, the `s` with `-x <= s` iff `x` goes *right* (non-NaN `x`).
fn negated_threshold(t: f64) -> f64 {
    if t.is_nan() {
        // Never left: always right.
        return f64::INFINITY;
    }
    let u = -t;
    if u == f64::NEG_INFINITY {
        // `x <= +inf`: never right.
        f64::NAN
    } else {
        // Right iff x > t iff -x < -t iff -x <= prev(-t).
        u.next_down()
    }
}

/// 1 (the second child slot) unless `v <= t`; so 1 for a NaN `v` or a NaN `t`.
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must land in the second slot: that is the point.
fn second_slot(v: f64, t: f64) -> u32 {
    u32::from(!(v <= t))
}

/// Writes `row` and its negation into lane `lane` of an interleaved buffer of `lanes` lanes:
/// value `j` at `j * lanes + lane`, its negation at `(nf + j) * lanes + lane`. Interleaving
/// lets every lane of a block address its values from one base register.
#[inline]
fn fill_lane(buf: &mut [f64], lanes: usize, lane: usize, row: &[f64]) {
    let nf = row.len();
    for (j, &x) in row.iter().enumerate() {
        buf[j * lanes + lane] = x;
        buf[(nf + j) * lanes + lane] = -x;
    }
}

impl CompiledModel {
    /// Compiles a validated ensemble.
    pub fn new(ensemble: &Ensemble) -> Result<Self, ModelError> {
        ensemble.validate()?;
        let super::ensemble::Objective::Logistic { scale } = ensemble.objective;
        let nf = ensemble.num_features();
        let mut m = CompiledModel {
            nodes: Vec::new(),
            flags: Vec::new(),
            leaf_values: Vec::new(),
            leaf_ids: Vec::new(),
            trees: Vec::with_capacity(ensemble.trees.len()),
            tiles: Vec::new(),
            cats: Vec::new(),
            cat_bits: Vec::new(),
            num_features: nf,
            base_margin: ensemble.base_margin,
            accumulation: ensemble.accumulation,
            average_output: ensemble.average_output,
            scale,
            branch_free: true,
            min_buf: (2 * nf).saturating_sub(1) * BLOCK + 1,
            linear: ensemble.linear.clone(),
            bits: None,
            kernel_costs: (0.0, None),
        };
        let too_many = || ModelError::Invalid("model has too many nodes".into());
        // Expected lock-step steps per row of the walk, over all trees.
        let mut walk_cost = 0.0;
        for tree in &ensemble.trees {
            let root = u32::try_from(m.nodes.len()).map_err(|_| too_many())?;
            // Depth-first over child pairs, the child with more training cover first: the
            // pairs along a tree's most travelled paths sit next to each other in memory.
            // Entries: (source index, target index, depth).
            let mut stack = Vec::new();
            m.push_placeholder();
            stack.push((0usize, root, 0u32));
            let mut leaves = Vec::new();
            while let Some((src, dst, d)) = stack.pop() {
                let s = match &tree.nodes[src] {
                    Node::Leaf { value, id, cover } => {
                        leaves.push((d, *cover));
                        m.nodes[dst as usize] = CNode {
                            threshold: f64::NAN,
                            base: dst.wrapping_sub(1),
                            feature: 0,
                        };
                        m.flags[dst as usize] = LEAF;
                        m.leaf_values[dst as usize] = *value;
                        m.leaf_ids[dst as usize] = *id;
                        continue;
                    }
                    Node::Split(s) => s,
                };
                let base = u32::try_from(m.nodes.len()).map_err(|_| too_many())?;
                m.push_placeholder();
                m.push_placeholder();
                let mut feature = s.feature;
                let mut flags = 0u8;
                let threshold;
                let nan_left;
                match &s.test {
                    Test::Categories(c) => {
                        m.branch_free = false;
                        flags |= CATEGORICAL;
                        let idx = m.cats.len() as u64;
                        let words = c.categories.last().map_or(0, |&max| max as usize / 64 + 1);
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
                        nan_left = match s.missing {
                            Missing::NanAsZero => c.goes_left(0.0),
                            Missing::Nan | Missing::ZeroOrNan => s.default_left,
                        };
                        threshold = f64::from_bits(idx);
                    }
                    test => {
                        let t = numeric_threshold(test);
                        nan_left = match s.missing {
                            Missing::Nan | Missing::ZeroOrNan => s.default_left,
                            Missing::NanAsZero => 0.0 <= t,
                        };
                        if nan_left {
                            // Read -x; the first slot (right child) is taken iff -x <= s.
                            feature += nf as u32;
                            threshold = negated_threshold(t);
                        } else {
                            threshold = t;
                        }
                    }
                }
                if s.missing == Missing::ZeroOrNan {
                    m.branch_free = false;
                    flags |= ZERO_MISSING;
                }
                let (first, second) = if nan_left {
                    flags |= LEFT_SECOND;
                    (s.right, s.left)
                } else {
                    (s.left, s.right)
                };
                let mut pair = [
                    (first as usize, base, d + 1),
                    (second as usize, base + 1, d + 1),
                ];
                if cover(&tree.nodes[pair[0].0]) > cover(&tree.nodes[pair[1].0]) {
                    pair.swap(0, 1);
                }
                // The hotter child is pushed last, so its children are placed next.
                stack.extend(pair);
                m.nodes[dst as usize] = CNode {
                    threshold,
                    base,
                    // In range: features < 2^23 and BLOCK is 8.
                    feature: feature * BLOCK as u32,
                };
                m.flags[dst as usize] = flags;
            }
            let (lock_batch, cost) = lockstep_depth(&leaves, STRAGGLER_BATCH);
            walk_cost += cost;
            m.trees.push(TreeInfo {
                root,
                lock_batch,
                lock_single: lockstep_depth(&leaves, STRAGGLER_SINGLE).0,
            });
        }
        m.check_layout()?;
        m.tiles = tiles(&m.trees, m.nodes.len());
        // Batches take the bit vectors where they are expected to be cheaper.
        if !m.branch_free {
            // Categorical and zero-as-missing steps branch, and mispredict: about five
            // branch-free steps each on the benchmark's categorical model.
            walk_cost *= 4.0;
        }
        m.kernel_costs.0 = walk_cost;
        // (A model the bit vectors cannot hold keeps the walk.)
        if let Ok(bits) = BitScorer::new(&m) {
            let cost = bits.cost();
            m.kernel_costs.1 = Some(cost);
            if cost < walk_cost {
                m.bits = Some(Box::new(bits));
            }
        }
        Ok(m)
    }

    /// Checks the invariants the unchecked loads in [`step`](Self::step) rely on.
    fn check_layout(&self) -> Result<(), ModelError> {
        let len = self.nodes.len();
        for (i, n) in self.nodes.iter().enumerate() {
            let second = n.base.wrapping_add(1) as usize;
            let ok = second < len
                && (n.feature as usize) < self.min_buf
                && (self.flags[i] & LEAF == 0 || second == i);
            if !ok {
                return Err(ModelError::Invalid(format!(
                    "internal error: compiled node {i} is inconsistent"
                )));
            }
        }
        if self.trees.iter().any(|t| t.root as usize >= len) {
            return Err(ModelError::Invalid(
                "internal error: tree root out of range".into(),
            ));
        }
        Ok(())
    }

    fn push_placeholder(&mut self) {
        self.nodes.push(CNode {
            threshold: f64::NAN,
            base: 0,
            feature: 0,
        });
        self.flags.push(LEAF);
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

    fn check_batch(&self, rows: &[f64], out: &[f64]) -> Result<(), ModelError> {
        if rows.len() != out.len() * self.num_features {
            return Err(ModelError::BatchShape {
                values: rows.len(),
                rows: out.len(),
                features: self.num_features,
            });
        }
        Ok(())
    }

    /// One step from node `idx` for the row in `buf` (values then negated values).
    #[inline(always)]
    fn step<const FAST: bool>(&self, idx: u32, buf: &[f64]) -> u32 {
        debug_assert!(buf.len() >= self.min_buf);
        // SAFETY: `new` checked that every node's `base + 1` (and so `base`, or the node itself
        // for a leaf) indexes `nodes`, and every `feature` is below `min_buf`; roots index
        // `nodes`; so `idx` always does. Callers pass buffers of `min_buf` values or more.
        #[allow(unsafe_code)]
        let (n, v) = unsafe {
            let n = *self.nodes.get_unchecked(idx as usize);
            (n, *buf.get_unchecked(n.feature as usize))
        };
        if FAST {
            return n.base.wrapping_add(second_slot(v, n.threshold));
        }
        let flags = self.flags[idx as usize];
        if flags & (CATEGORICAL | ZERO_MISSING) == 0 {
            return n.base.wrapping_add(second_slot(v, n.threshold));
        }
        self.step_special(n, flags, v)
    }

    /// Walks from node `idx` down to its leaf.
    #[inline(always)]
    fn finish_walk<const FAST: bool>(&self, mut idx: u32, buf: &[f64]) -> u32 {
        while self.flags[idx as usize] & LEAF == 0 {
            idx = self.step::<FAST>(idx, buf);
        }
        idx
    }

    /// A categorical or zero-as-missing node.
    #[inline(always)]
    fn step_special(&self, n: CNode, flags: u8, v: f64) -> u32 {
        if v.is_nan() || (flags & ZERO_MISSING != 0 && v.abs() <= LIGHTGBM_ZERO_THRESHOLD) {
            return n.base.wrapping_add(1);
        }
        if flags & CATEGORICAL == 0 {
            return n.base.wrapping_add(second_slot(v, n.threshold));
        }
        let left = self.category_goes_left(n.threshold.to_bits() as usize, v);
        let left_second = flags & LEFT_SECOND != 0;
        n.base.wrapping_add(u32::from(left == left_second))
    }

    #[inline(always)]
    fn category_goes_left(&self, cat: usize, x: f64) -> bool {
        let c = &self.cats[cat];
        let code = c.cast.code(x);
        let in_set = code.is_some_and(|code| {
            let word = code as usize / 64;
            word < c.words as usize
                && self.cat_bits[c.offset as usize + word] & (1 << (code % 64)) != 0
        });
        in_set == c.in_set_goes_left
    }

    /// Runs `f` with a block buffer holding `row` and its negation in lane 0.
    ///
    /// The buffer is the calling thread's own, kept between calls: single-row latency should
    /// not pay for allocating or zeroing a block-sized buffer (only lane 0 is written or read).
    #[inline]
    fn with_row_buf<R>(&self, row: &[f64], f: impl FnOnce(&[f64]) -> R) -> R {
        thread_local! {
            static ROW_BUF: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let n = self.min_buf.max(2 * row.len() * BLOCK);
        let mut f = Some(f);
        let done = ROW_BUF.with(|cell| {
            let mut buf = cell.try_borrow_mut().ok()?;
            if buf.len() < n {
                buf.resize(n, 0.0);
            }
            fill_lane(&mut buf[..n], BLOCK, 0, row);
            f.take().map(|f| f(&buf[..n]))
        });
        match (done, f) {
            (Some(r), _) => r,
            // Re-entered from inside `f` (not done today): use a fresh buffer.
            (None, Some(f)) => {
                let mut buf = vec![0.0f64; n];
                fill_lane(&mut buf, BLOCK, 0, row);
                f(&buf)
            }
            (None, None) => unreachable!("the closure runs at most once"),
        }
    }

    /// Margin of one row. `row` has [`num_features`](Self::num_features) values, NaN for
    /// missing.
    pub fn predict_margin(&self, row: &[f64]) -> Result<f64, ModelError> {
        self.check_row(row)?;
        if let (Some(bits), false) = (&self.bits, self.branch_free) {
            // Categorical and zero-as-missing steps make the walk branch and mispredict; a
            // model whose batches chose bit vectors scores single rows with them too.
            thread_local! {
                static STATE: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            let sum = STATE.with(|cell| match cell.try_borrow_mut() {
                Ok(mut state) => bits.margin_one(self, row, &mut state),
                Err(_) => bits.margin_one(self, row, &mut Vec::new()),
            });
            return Ok(self.finish(sum) + self.linear.as_ref().map_or(0.0, |l| l.value(row)));
        }
        let trees = self.with_row_buf(row, |buf| {
            if self.branch_free {
                self.margin_row::<true>(buf)
            } else {
                self.margin_row::<false>(buf)
            }
        });
        Ok(trees + self.linear.as_ref().map_or(0.0, |l| l.value(row)))
    }

    /// Probability of fraud for one row.
    pub fn predict_proba(&self, row: &[f64]) -> Result<f64, ModelError> {
        self.predict_margin(row).map(|m| self.probability(m))
    }

    fn margin_row<const FAST: bool>(&self, buf: &[f64]) -> f64 {
        assert!(buf.len() >= self.min_buf, "row buffer too short");
        let mut sum64 = self.base_margin;
        let mut sum32 = self.base_margin as f32;
        for group in self.trees.chunks(TREE_LANES) {
            let mut idx = [0u32; TREE_LANES];
            let mut lock = 0;
            for (i, t) in group.iter().enumerate() {
                idx[i] = t.root;
                lock = lock.max(t.lock_single);
            }
            let lanes = group.len();
            for _ in 0..lock {
                for i in idx.iter_mut().take(lanes) {
                    *i = self.step::<FAST>(*i, buf);
                }
            }
            for i in idx.iter_mut().take(lanes) {
                *i = self.finish_walk::<FAST>(*i, buf);
            }
            // Summed in tree order, as the source library does.
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
        self.check_batch(rows, out)?;
        let nf = self.num_features;
        if nf == 0 {
            return self.predict_margin_batch_serial(rows, out);
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
        self.check_batch(rows, out)?;
        if self.num_features == 0 {
            // Every tree is a single leaf; any row reaches the same margin.
            let m = self.with_row_buf(&[], |buf| self.margin_row::<false>(buf));
            out.fill(m);
            return Ok(());
        }
        self.margin_chunk(rows, out);
        Ok(())
    }

    fn margin_chunk(&self, rows: &[f64], out: &mut [f64]) {
        if let Some(bits) = &self.bits {
            return self.margin_chunk_bits(bits, rows, out);
        }
        if self.branch_free {
            self.margin_chunk_k::<true>(rows, out)
        } else {
            self.margin_chunk_k::<false>(rows, out)
        }
    }

    fn margin_chunk_k<const FAST: bool>(&self, rows: &[f64], out: &mut [f64]) {
        let nf = self.num_features;
        let len = (2 * nf * BLOCK).max(self.min_buf);
        // Blocks walked together through each tile of trees: their buffers and sums stay in
        // the core's cache while the tile's nodes are read once for all of them.
        // (No more than the rows need: a small batch allocates no more than its blocks.)
        let group = (GROUP_BYTES / (len * 8))
            .min(PAR_CHUNK_ROWS / BLOCK)
            .min(out.len().div_ceil(BLOCK))
            .max(1);
        let mut bufs = vec![0.0f64; len * group];
        let mut sums = vec![([0.0f64; BLOCK], [0.0f32; BLOCK]); group];
        for (out, rows) in out
            .chunks_mut(BLOCK * group)
            .zip(rows.chunks(BLOCK * group * nf))
        {
            let blocks = out.len().div_ceil(BLOCK);
            for (b, rows) in rows.chunks(BLOCK * nf).enumerate() {
                let n = rows.len() / nf;
                let buf = &mut bufs[b * len..(b + 1) * len];
                // A short last block repeats its last row in the unused lanes.
                for lane in 0..BLOCK {
                    let r = lane.min(n - 1);
                    fill_lane(buf, BLOCK, lane, &rows[r * nf..(r + 1) * nf]);
                }
                sums[b] = ([self.base_margin; BLOCK], [self.base_margin as f32; BLOCK]);
            }
            // Each row adds its trees in model order, tile after tile: the same sums, bit
            // for bit, as one tree after the other.
            for tile in self.tiles.windows(2) {
                let trees = &self.trees[tile[0] as usize..tile[1] as usize];
                for (b, (s64, s32)) in sums[..blocks].iter_mut().enumerate() {
                    self.add_trees::<FAST>(&bufs[b * len..(b + 1) * len], trees, s64, s32);
                }
            }
            for ((out, rows), (s64, s32)) in out
                .chunks_mut(BLOCK)
                .zip(rows.chunks(BLOCK * nf))
                .zip(&sums)
            {
                for (lane, o) in out.iter_mut().enumerate() {
                    let s = match self.accumulation {
                        Accumulation::F64 => s64[lane],
                        Accumulation::F32 => f64::from(s32[lane]),
                    };
                    *o = self.finish(s);
                }
                if let Some(l) = &self.linear {
                    for (o, row) in out.iter_mut().zip(rows.chunks_exact(nf)) {
                        *o += l.value(row);
                    }
                }
            }
        }
    }

    fn margin_chunk_bits(&self, bits: &BitScorer, rows: &[f64], out: &mut [f64]) {
        use bitvector::LANES;
        let nf = self.num_features;
        let mut buf = vec![0.0f64; 2 * nf * LANES];
        let mut state = bits.state();
        for (out, rows) in out.chunks_mut(LANES).zip(rows.chunks(LANES * nf)) {
            let n = out.len();
            // A short last block repeats its last row in the unused lanes.
            for lane in 0..LANES {
                let r = lane.min(n - 1);
                fill_lane(&mut buf, LANES, lane, &rows[r * nf..(r + 1) * nf]);
            }
            let sums = bits.margins(self, &buf, &mut state);
            for (o, s) in out.iter_mut().zip(sums) {
                *o = self.finish(s);
            }
            if let Some(l) = &self.linear {
                for (o, row) in out.iter_mut().zip(rows.chunks_exact(nf)) {
                    *o += l.value(row);
                }
            }
        }
    }

    /// The kernel batch prediction uses.
    pub fn batch_kernel(&self) -> BatchKernel {
        match self.bits.as_ref().map(|b| b.simd) {
            None => BatchKernel::Walk,
            Some(Simd::Portable) => BatchKernel::BitVectorPortable,
            #[cfg(target_arch = "x86_64")]
            Some(Simd::Avx2) => BatchKernel::BitVectorAvx2,
            #[cfg(target_arch = "x86_64")]
            Some(Simd::Avx512) => BatchKernel::BitVector,
        }
    }

    /// The expected cost per row, in steps of the walk, of the walk and of the bit vectors
    /// with this CPU's widest kernel (`None`: the model cannot use them), from the trees'
    /// shapes: the default batch kernel is the cheaper one.
    pub fn batch_kernel_costs(&self) -> (f64, Option<f64>) {
        self.kernel_costs
    }

    /// Chooses the batch kernel (by default it is chosen from the trees' shapes). Predictions
    /// are the same bits with every kernel; only the speed changes.
    pub fn set_batch_kernel(&mut self, kernel: BatchKernel) -> Result<(), ModelError> {
        let simd = match kernel {
            BatchKernel::Walk => {
                self.bits = None;
                return Ok(());
            }
            BatchKernel::BitVector => Simd::detect(),
            BatchKernel::BitVectorPortable => Simd::Portable,
            BatchKernel::BitVectorAvx2 => {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    Simd::Avx2
                } else {
                    return Err(ModelError::Invalid("this CPU has no AVX2".into()));
                }
                #[cfg(not(target_arch = "x86_64"))]
                return Err(ModelError::Invalid("this CPU has no AVX2".into()));
            }
        };
        let mut bits = match self.bits.take() {
            Some(b) => b,
            None => Box::new(BitScorer::new(self)?),
        };
        bits.simd = simd;
        self.bits = Some(bits);
        Ok(())
    }

    /// Adds `trees`' leaf values to the margin sums of the `BLOCK` rows in an interleaved
    /// block buffer (`sum64` or `sum32`, as the model accumulates).
    #[inline(always)]
    fn add_trees<const FAST: bool>(
        &self,
        buf: &[f64],
        trees: &[TreeInfo],
        sum64: &mut [f64; BLOCK],
        sum32: &mut [f32; BLOCK],
    ) {
        assert!(
            buf.len() >= self.min_buf + BLOCK - 1,
            "block buffer too short"
        );
        let lane = |r: usize| &buf[r..];
        for t in trees {
            let mut idx = [t.root; BLOCK];
            for _ in 0..t.lock_batch {
                for (r, i) in idx.iter_mut().enumerate() {
                    *i = self.step::<FAST>(*i, lane(r));
                }
            }
            for (r, i) in idx.iter_mut().enumerate() {
                *i = self.finish_walk::<FAST>(*i, lane(r));
            }
            match self.accumulation {
                Accumulation::F64 => {
                    for (s, &i) in sum64.iter_mut().zip(&idx) {
                        *s += self.leaf_values[i as usize];
                    }
                }
                Accumulation::F32 => {
                    for (s, &i) in sum32.iter_mut().zip(&idx) {
                        *s += self.leaf_values[i as usize] as f32;
                    }
                }
            }
        }
    }

    /// For one row, the source-library identifier of the leaf reached in every tree
    /// (XGBoost node id, LightGBM leaf index), in tree order.
    pub fn predict_leaves(&self, row: &[f64]) -> Result<Vec<u32>, ModelError> {
        self.check_row(row)?;
        Ok(self.with_row_buf(row, |buf| {
            self.trees
                .iter()
                .map(|t| self.leaf_ids[self.finish_walk::<false>(t.root, buf) as usize])
                .collect()
        }))
    }
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
