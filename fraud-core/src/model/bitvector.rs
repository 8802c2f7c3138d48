//! Bit-vector batch scoring (QuickScorer, Lucchese et al., SIGIR 2015), sixteen rows at a time.
//!
//! The walk of [`CompiledModel`](super::CompiledModel) costs a number of steps per tree that
//! follows the tree's depth. Here the cost follows the number of tests a row fails, whatever
//! the trees' shapes:
//!
//! - Each tree's leaves are numbered from left to right, the child a passing test takes
//!   first. A row's bit vector for the tree starts with every leaf's bit set.
//! - A failed test (`!(v <= t)`: the row goes to the second child) clears the bits of every
//!   leaf under the first child. Those leaves are a contiguous range, so each test stores its
//!   clearing mask once.
//! - The row's exit leaf is the lowest bit left: every test on its path passed or sent it
//!   right of the cleared ranges, and every leaf to its left was cleared by the test on the
//!   way to it that the row failed.
//! - Tests are grouped by the feature they read and sorted by threshold. A row fails exactly
//!   the tests with `t < v` (all of them when `v` is NaN), a prefix of its feature's list: the
//!   scan of a feature stops at the first test that every row of the block passes, found
//!   before the scan by a binary search for the block's largest value (so the scan's loop
//!   tests nothing but the rows). Which tests a row fails does not depend on the order they
//!   are applied in (AND commutes), so the result is the same leaf as the walk's, bit for bit.
//!
//! Sixteen rows share each scan: comparisons of the threshold with sixteen values, one masked
//! AND of sixteen bit vectors (two AVX-512 vectors, or four AVX2 quarters, or a portable loop:
//! the same bits).
//! Trees of more than 64 leaves use several 64-bit words ("slots"); a test whose range spans
//! words is stored once per word. Tests a vector cannot do (categorical, zero-as-missing) are
//! evaluated row by row with the walk's own code, and tests that always fail (`t` NaN) are
//! applied once, to the initial vectors.

use super::{CompiledModel, CATEGORICAL, LEAF, LEFT_SECOND, ZERO_MISSING};
use crate::model::ensemble::{Accumulation, CategoryCast, LIGHTGBM_ZERO_THRESHOLD};
use crate::model::ModelError;

/// Most categorical list entries a model may have (about 12 bytes each) before batches
/// keep the walk.
const MAX_CAT_ENTRIES: usize = 1 << 22;
/// Most category codes examined, over all categorical tests, while building (and most
/// codes of all keys together, each an index entry): a model with huge category codes
/// keeps the walk rather than take seconds and hundreds of MB to load.
const MAX_CAT_WORK: usize = 1 << 26;
const MAX_CAT_CODES: u32 = 1 << 20;

/// Rows scored together: one AVX-512 vector of `f64` values or of 64-bit masks.
pub(super) const LANES: usize = 16;

/// One slot (64 leaves of one tree) for the sixteen rows of a block.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Lanes([u64; LANES]);

/// A test a vector cannot do, evaluated row by row.
#[derive(Debug, Clone, Copy)]
struct Special {
    /// The compiled node.
    node: u32,
    /// Its value's position in a block buffer (values, then negated values).
    position: u32,
    slot: u32,
    mask: u64,
}

/// The category codes of one feature read one way (its cast and its zero-as-missing rule):
/// valid codes `0..64 * words`, then three codes of its own: not a valid code, NaN, and a
/// zero treated as missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CatKey {
    feature: u32,
    cast: CategoryCast,
    zero_missing: bool,
    words: u32,
    /// Index of its code 0 in `cat_starts`.
    first: u32,
}

impl CatKey {
    fn domain(&self) -> u32 {
        64 * self.words + 3
    }

    /// The code of `v` in `0..domain()`, as the walk's categorical step reads it.
    #[inline]
    fn code(&self, v: f64) -> u32 {
        let invalid = 64 * self.words;
        if v.is_nan() {
            return invalid + 1;
        }
        if self.zero_missing && v.abs() <= LIGHTGBM_ZERO_THRESHOLD {
            return invalid + 2;
        }
        match self.cast.code(v) {
            Some(c) if c < invalid => c,
            _ => invalid,
        }
    }
}

/// A categorical test while the bit vectors are built.
struct CatNode {
    key: u32,
    /// The first child is the compiled node's second.
    swapped: bool,
    /// The codes that fail it (send rows to the child that is not first).
    fails: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct BitTree {
    /// First slot of the tree's bit vector.
    slot: u32,
    /// Slots (64-leaf words) of its bit vector.
    words: u32,
    /// Offset of its leaves' values in `leaf_values`.
    leaves: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    /// The widest kernel this CPU runs.
    pub(super) fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Simd::Avx2;
            }
        }
        Simd::Portable
    }
}

/// Whether this CPU is AMD's (its vendor string, CPUID leaf 0).
#[cfg(target_arch = "x86_64")]
fn amd() -> bool {
    // SAFETY: CPUID leaf 0 exists on every x86_64 CPU.
    #[allow(unused_unsafe, unsafe_code)]
    let id = unsafe { std::arch::x86_64::__cpuid(0) };
    [id.ebx, id.edx, id.ecx] == [*b"Auth", *b"enti", *b"cAMD"].map(u32::from_le_bytes)
}

/// The bit-vector form of a compiled model's trees.
#[derive(Debug, Clone)]
pub(super) struct BitScorer {
    /// Per value position: the range of its tests in the three arrays below (sorted by
    /// threshold).
    starts: Vec<u32>,
    thresholds: Vec<f64>,
    slots: Vec<u32>,
    masks: Vec<u64>,
    special: Vec<Special>,
    /// Categorical tests, per category code: for each key's code, the range of the tests it
    /// fails in `cat_slots` / `cat_masks` (QuickScorer's lists, by code instead of by
    /// threshold).
    cat_keys: Vec<CatKey>,
    cat_starts: Vec<u32>,
    cat_slots: Vec<u32>,
    cat_masks: Vec<u64>,
    /// Expected failed categorical tests per row (every code equally likely).
    cat_fails: f64,
    /// Each slot's bit vector before any test: the tree's leaves, less those of tests that
    /// always fail.
    init: Vec<u64>,
    trees: Vec<BitTree>,
    /// Leaf values, tree by tree, in bit order.
    leaf_values: Vec<f64>,
    pub(super) simd: Simd,
}

impl BitScorer {
    /// Builds the bit vectors of `model`'s trees.
    pub(super) fn new(model: &CompiledModel) -> Result<BitScorer, ModelError> {
        let positions = 2 * model.num_features;
        let mut by_position: Vec<Vec<(f64, u32, u64)>> = vec![Vec::new(); positions];
        let mut s = BitScorer {
            starts: Vec::with_capacity(positions + 1),
            thresholds: Vec::new(),
            slots: Vec::new(),
            masks: Vec::new(),
            special: Vec::new(),
            cat_keys: Vec::new(),
            cat_starts: Vec::new(),
            cat_slots: Vec::new(),
            cat_masks: Vec::new(),
            cat_fails: 0.0,
            init: Vec::new(),
            trees: Vec::with_capacity(model.trees.len()),
            leaf_values: Vec::new(),
            simd: Simd::detect(),
        };
        let too_many = || ModelError::Invalid("model has too many leaves".into());
        let cats = s.categorical_tests(model)?;
        let mut lists: Vec<Vec<(u32, u64)>> =
            vec![Vec::new(); s.cat_keys.iter().map(|k| k.domain() as usize).sum()];
        // Per tree: (node, first leaf of its first child, first leaf after it).
        let mut tests: Vec<(u32, u32, u32)> = Vec::new();
        // Depth first, the first child before the second. `Some(i)`: this entry is the second
        // child of `tests[i]`, whose first child's leaves end here.
        let mut stack: Vec<(u32, Option<usize>)> = Vec::new();
        for tree in &model.trees {
            tests.clear();
            let leaves = u32::try_from(s.leaf_values.len()).map_err(|_| too_many())?;
            let mut count = 0u32;
            stack.push((tree.root, None));
            while let Some((node, closes)) = stack.pop() {
                if let Some(i) = closes {
                    tests[i].2 = count;
                }
                let n = node as usize;
                if model.flags[n] & LEAF != 0 {
                    s.leaf_values.push(model.leaf_values[n]);
                    count = count.checked_add(1).ok_or_else(too_many)?;
                    continue;
                }
                let base = model.nodes[n].base;
                // A categorical test may take its second child first (see `categorical_tests`).
                let (first, second) = match cats.get(&node) {
                    Some(c) if c.swapped => (base + 1, base),
                    _ => (base, base + 1),
                };
                tests.push((node, count, count));
                stack.push((second, Some(tests.len() - 1)));
                stack.push((first, None));
            }
            let slot = u32::try_from(s.init.len()).map_err(|_| too_many())?;
            let words = count.div_ceil(64);
            for w in 0..words {
                let bits = (count - 64 * w).min(64);
                s.init.push(if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                });
            }
            for &(node, lo, hi) in &tests {
                let n = node as usize;
                let position = model.nodes[n].feature / super::BLOCK as u32;
                for w in lo / 64..hi.div_ceil(64) {
                    let (from, to) = (lo.max(64 * w) - 64 * w, hi.min(64 * w + 64) - 64 * w);
                    let range = if to - from == 64 {
                        u64::MAX
                    } else {
                        ((1u64 << (to - from)) - 1) << from
                    };
                    let (slot, mask) = (slot + w, !range);
                    let t = model.nodes[n].threshold;
                    if let Some(c) = cats.get(&node) {
                        let first = s.cat_keys[c.key as usize].first as usize;
                        for &code in &c.fails {
                            lists[first + code as usize].push((slot, mask));
                        }
                    } else if model.flags[n] & ZERO_MISSING != 0 {
                        s.special.push(Special {
                            node,
                            position,
                            slot,
                            mask,
                        });
                    } else if t.is_nan() {
                        s.init[slot as usize] &= mask;
                    } else {
                        by_position[position as usize].push((t, slot, mask));
                    }
                }
            }
            s.trees.push(BitTree {
                slot,
                words,
                leaves,
            });
        }
        for list in &lists {
            s.cat_starts.push(s.cat_slots.len() as u32);
            for &(slot, mask) in list {
                s.cat_slots.push(slot);
                s.cat_masks.push(mask);
            }
        }
        s.cat_starts.push(s.cat_slots.len() as u32);
        for list in &mut by_position {
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
            s.starts.push(s.thresholds.len() as u32);
            for &(t, slot, mask) in list.iter() {
                s.thresholds.push(t);
                s.slots.push(slot);
                s.masks.push(mask);
            }
        }
        s.starts.push(
            u32::try_from(s.thresholds.len())
                .map_err(|_| ModelError::Invalid("model has too many nodes".into()))?,
        );
        Ok(s)
    }

    /// Groups the categorical tests by the way they read their feature (`cat_keys`) and
    /// finds, for each, the codes that fail it. A test takes as its first child the one most
    /// codes go to (QuickScorer allows either order), so its list of failing codes is the
    /// shorter one: LightGBM sends the few codes of its set one way and every other code the
    /// other.
    fn categorical_tests(
        &mut self,
        model: &CompiledModel,
    ) -> Result<std::collections::HashMap<u32, CatNode>, ModelError> {
        let mut found = std::collections::HashMap::new();
        let categorical = || {
            (0..model.nodes.len()).filter(|&n| model.flags[n] & (CATEGORICAL | LEAF) == CATEGORICAL)
        };
        let key_of = |n: usize| {
            let c = &model.cats[model.nodes[n].threshold.to_bits() as usize];
            (
                model.nodes[n].feature / super::BLOCK as u32,
                c.cast,
                model.flags[n] & ZERO_MISSING != 0,
            )
        };
        for n in categorical() {
            let (feature, cast, zero_missing) = key_of(n);
            let words = model.cats[model.nodes[n].threshold.to_bits() as usize].words;
            match self
                .cat_keys
                .iter_mut()
                .find(|k| (k.feature, k.cast, k.zero_missing) == (feature, cast, zero_missing))
            {
                Some(k) => k.words = k.words.max(words),
                None => self.cat_keys.push(CatKey {
                    feature,
                    cast,
                    zero_missing,
                    words,
                    first: 0,
                }),
            }
        }
        let too_large =
            || ModelError::Invalid("categorical splits too large for bit vectors".into());
        let mut first = 0u32;
        for k in &mut self.cat_keys {
            k.first = first;
            first = first
                .checked_add(k.domain())
                .filter(|&f| f <= MAX_CAT_CODES)
                .ok_or_else(too_large)?;
        }
        let domain_of = |n: usize| {
            let key = key_of(n);
            self.cat_keys
                .iter()
                .find(|k| (k.feature, k.cast, k.zero_missing) == key)
                .map_or(0, |k| k.domain() as usize)
        };
        let work: usize = categorical().map(domain_of).sum();
        if work > MAX_CAT_WORK {
            return Err(too_large());
        }
        let mut entries = 0usize;
        for n in categorical() {
            let key = key_of(n);
            let Some(k) = self
                .cat_keys
                .iter()
                .position(|k| (k.feature, k.cast, k.zero_missing) == key)
            else {
                continue;
            };
            let domain = self.cat_keys[k].domain();
            let invalid = domain - 3;
            let c = &model.cats[model.nodes[n].threshold.to_bits() as usize];
            let left_second = model.flags[n] & LEFT_SECOND != 0;
            // As the walk's categorical step: NaN and a zero taken as missing go second.
            let second = |code: u32| {
                if code > invalid {
                    return true;
                }
                let in_set = code < invalid
                    && code / 64 < c.words
                    && model.cat_bits[(c.offset + code / 64) as usize] & (1 << (code % 64)) != 0;
                (in_set == c.in_set_goes_left) == left_second
            };
            let seconds: Vec<u32> = (0..domain).filter(|&d| second(d)).collect();
            let swapped = 2 * seconds.len() > domain as usize;
            let fails = if swapped {
                (0..domain).filter(|&d| !second(d)).collect()
            } else {
                seconds
            };
            entries += fails.len();
            self.cat_fails += fails.len() as f64 / domain as f64;
            if entries > MAX_CAT_ENTRIES {
                return Err(too_large());
            }
            found.insert(
                n as u32,
                CatNode {
                    key: k as u32,
                    swapped,
                    fails,
                },
            );
        }
        Ok(found)
    }

    /// Expected cost per row, in steps of the walk (whose own cost is counted the same way).
    ///
    /// Measured on 300-tree, 63-leaf models (`benches/compare`, synthetic and the Handbook's
    /// features, on Intel): a test of the vector scan costs about 0.13 of a walk step per row
    /// with AVX-512, 0.18 with AVX2 and 0.5 in portable code (most rows fail half their tests
    /// or more, and a block scans about as far as its furthest row); a test done row by row
    /// about 1.5, a failed categorical test 1; finding a tree's exit leaf 0.3. On AMD Zen 3
    /// (AVX2 only) a walk step costs more, its loads missing the smaller L2 more often, and an
    /// AVX2 test about 0.155 of one (four data sets, `benches/README.md`).
    pub(super) fn cost(&self) -> f64 {
        let scan = match self.simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => 0.13,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 if amd() => 0.155,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => 0.18,
            Simd::Portable => 0.5,
        };
        scan * self.thresholds.len() as f64
            + 1.5 * self.special.len() as f64
            + self.cat_fails
            + 0.3 * self.init.len() as f64
    }

    /// A zeroed state for [`margins`](Self::margins).
    pub(super) fn state(&self) -> Vec<Lanes> {
        vec![Lanes([0; LANES]); self.init.len()]
    }

    /// The categorical tests that a value fails, as (slot, mask) pairs.
    #[inline]
    fn fails(&self, key: &CatKey, v: f64) -> impl Iterator<Item = (u32, u64)> + '_ {
        let at = (key.first + key.code(v)) as usize;
        let list = self.cat_starts[at] as usize..self.cat_starts[at + 1] as usize;
        self.cat_slots[list.clone()]
            .iter()
            .copied()
            .zip(self.cat_masks[list].iter().copied())
    }

    /// The value of tree `t`'s exit leaf, the lowest bit left in its words (`word(slot)`).
    #[inline]
    fn exit_value(&self, t: &BitTree, word: impl Fn(usize) -> u64) -> f64 {
        let first = t.slot as usize;
        let mut w = first;
        // Never past the tree's words: the exit leaf's bit is never cleared.
        while word(w) == 0 && w + 1 < first + t.words as usize {
            w += 1;
        }
        let leaf = (w - first) * 64 + word(w).trailing_zeros() as usize;
        self.leaf_values[t.leaves as usize + leaf]
    }

    /// Margin sum (base margin and trees, before averaging) of one row: the same tests, one
    /// lane, no vectors. `state` is scratch space (any length).
    pub(super) fn margin_one(
        &self,
        model: &CompiledModel,
        row: &[f64],
        state: &mut Vec<u64>,
    ) -> f64 {
        state.clear();
        state.extend_from_slice(&self.init);
        let nf = row.len();
        let value = |p: usize| if p < nf { row[p] } else { -row[p - nf] };
        for (p, w) in self.starts.windows(2).enumerate() {
            let x = value(p);
            for i in w[0] as usize..w[1] as usize {
                if x <= self.thresholds[i] {
                    // Passes this test and every later one (NaN passes none).
                    break;
                }
                state[self.slots[i] as usize] &= self.masks[i];
            }
        }
        for sp in &self.special {
            let n = model.nodes[sp.node as usize];
            if model.step_special(
                n,
                model.flags[sp.node as usize],
                value(sp.position as usize),
            ) != n.base
            {
                state[sp.slot as usize] &= sp.mask;
            }
        }
        for key in &self.cat_keys {
            for (slot, mask) in self.fails(key, row[key.feature as usize]) {
                state[slot as usize] &= mask;
            }
        }
        let mut sum64 = model.base_margin;
        let mut sum32 = model.base_margin as f32;
        for t in &self.trees {
            let v = self.exit_value(t, |w| state[w]);
            match model.accumulation {
                Accumulation::F64 => sum64 += v,
                Accumulation::F32 => sum32 += v as f32,
            }
        }
        match model.accumulation {
            Accumulation::F64 => sum64,
            Accumulation::F32 => sum32 as f64,
        }
    }

    /// Margin sums (base margin and trees, before averaging) of the sixteen rows in `xb`: value
    /// position `p` of lane `l` at `xb[p * LANES + l]`, values then negated values.
    pub(super) fn margins(
        &self,
        model: &CompiledModel,
        xb: &[f64],
        state: &mut [Lanes],
    ) -> [f64; LANES] {
        assert!(
            xb.len() >= (self.starts.len() - 1) * LANES && state.len() == self.init.len(),
            "bit-vector buffers of the wrong size"
        );
        for (st, &w) in state.iter_mut().zip(&self.init) {
            *st = Lanes([w; LANES]);
        }
        match self.simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` (or a test that checked the CPU) chose it.
            #[allow(unsafe_code)]
            Simd::Avx512 => unsafe { self.scan_avx512(xb, state) },
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            // SAFETY: as above.
            Simd::Avx2 => unsafe { self.scan_avx2(xb, state) },
            Simd::Portable => self.scan_portable(xb, state),
        }
        for sp in &self.special {
            let n = model.nodes[sp.node as usize];
            let flags = model.flags[sp.node as usize];
            let st = &mut state[sp.slot as usize].0;
            for (lane, word) in st.iter_mut().enumerate() {
                let v = xb[sp.position as usize * LANES + lane];
                if model.step_special(n, flags, v) != n.base {
                    *word &= sp.mask;
                }
            }
        }
        for key in &self.cat_keys {
            for lane in 0..LANES {
                for (slot, mask) in self.fails(key, xb[key.feature as usize * LANES + lane]) {
                    state[slot as usize].0[lane] &= mask;
                }
            }
        }
        let mut sum64 = [model.base_margin; LANES];
        let mut sum32 = [model.base_margin as f32; LANES];
        for t in &self.trees {
            for lane in 0..LANES {
                let v = self.exit_value(t, |w| state[w].0[lane]);
                match model.accumulation {
                    Accumulation::F64 => sum64[lane] += v,
                    Accumulation::F32 => sum32[lane] += v as f32,
                }
            }
        }
        match model.accumulation {
            Accumulation::F64 => sum64,
            Accumulation::F32 => sum32.map(f64::from),
        }
    }

    /// Where the scan of value position `p`'s tests ends for a block whose values at `p` are
    /// `x`: at the first test every row passes (`max(x) <= t`; the thresholds are sorted, so
    /// every later test passes too), or after the last test when a row is NaN (NaN fails
    /// every test). Found once per block and position, so the scan itself tests nothing but
    /// the rows.
    #[inline]
    fn scan_end(&self, p: usize, x: &[f64]) -> usize {
        let (lo, hi) = (self.starts[p] as usize, self.starts[p + 1] as usize);
        if lo == hi {
            return lo;
        }
        let mut max = f64::NEG_INFINITY;
        let mut nan = false;
        for &v in x {
            nan |= v.is_nan();
            max = if v > max { v } else { max };
        }
        if nan {
            return hi;
        }
        lo + self.thresholds[lo..hi].partition_point(|&t| t < max)
    }

    fn scan_portable(&self, xb: &[f64], state: &mut [Lanes]) {
        for p in 0..self.starts.len() - 1 {
            let x: [f64; LANES] = std::array::from_fn(|l| xb[p * LANES + l]);
            for i in self.starts[p] as usize..self.scan_end(p, &x) {
                let (t, mask) = (self.thresholds[i], self.masks[i]);
                // All ones in the lanes that pass the test: written so that compilers
                // vectorise it (a comparison yields such masks). NaN passes no test.
                let pass: [u64; LANES] =
                    std::array::from_fn(|l| u64::from(x[l] <= t).wrapping_neg());
                let st = &mut state[self.slots[i] as usize].0;
                for (s, f) in st.iter_mut().zip(pass) {
                    *s &= mask | f;
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    unsafe fn scan_avx512(&self, xb: &[f64], state: &mut [Lanes]) {
        use std::arch::x86_64::*;
        for p in 0..self.starts.len() - 1 {
            let end = self.scan_end(p, &xb[p * LANES..(p + 1) * LANES]);
            // SAFETY: `margins` checked `xb` holds every position's lanes; `new` made every
            // slot index `init`, which `state` is as long as; `Lanes` is 64-byte aligned;
            // `scan_end` is within the position's tests.
            unsafe {
                let x0 = _mm512_loadu_pd(xb.as_ptr().add(p * LANES));
                let x1 = _mm512_loadu_pd(xb.as_ptr().add(p * LANES + 8));
                for i in self.starts[p] as usize..end {
                    let t = _mm512_set1_pd(*self.thresholds.get_unchecked(i));
                    let f0 = _mm512_cmp_pd_mask::<_CMP_NLE_UQ>(x0, t);
                    let f1 = _mm512_cmp_pd_mask::<_CMP_NLE_UQ>(x1, t);
                    let mask = _mm512_set1_epi64(*self.masks.get_unchecked(i) as i64);
                    let st = state
                        .as_mut_ptr()
                        .add(*self.slots.get_unchecked(i) as usize)
                        .cast::<__m512i>();
                    let v0 = _mm512_load_si512(st);
                    let v1 = _mm512_load_si512(st.add(1));
                    _mm512_store_si512(st, _mm512_mask_and_epi64(v0, f0, v0, mask));
                    _mm512_store_si512(st.add(1), _mm512_mask_and_epi64(v1, f1, v1, mask));
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    unsafe fn scan_avx2(&self, xb: &[f64], state: &mut [Lanes]) {
        use std::arch::x86_64::*;
        const Q: usize = LANES / 4;
        for p in 0..self.starts.len() - 1 {
            let end = self.scan_end(p, &xb[p * LANES..(p + 1) * LANES]);
            // SAFETY: as in `scan_avx512`; each quarter of a `Lanes` is 32-byte aligned.
            unsafe {
                let x: [__m256d; Q] =
                    std::array::from_fn(|q| _mm256_loadu_pd(xb.as_ptr().add(p * LANES + 4 * q)));
                for i in self.starts[p] as usize..end {
                    let t = _mm256_set1_pd(*self.thresholds.get_unchecked(i));
                    let mask = _mm256_set1_epi64x(*self.masks.get_unchecked(i) as i64);
                    let st = state
                        .as_mut_ptr()
                        .add(*self.slots.get_unchecked(i) as usize)
                        .cast::<__m256i>();
                    for (q, &xq) in x.iter().enumerate() {
                        // Passing lanes keep every bit, failing ones `mask`'s (NaN fails).
                        let pass = _mm256_castpd_si256(_mm256_cmp_pd::<_CMP_LE_OQ>(xq, t));
                        let keep = _mm256_or_si256(mask, pass);
                        let sq = st.add(q);
                        _mm256_store_si256(sq, _mm256_and_si256(_mm256_load_si256(sq), keep));
                    }
                }
            }
        }
    }
}
