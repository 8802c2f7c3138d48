//! Exact TreeSHAP (Lundberg, Erion and Lee, "Consistent individualized feature attribution for
//! tree ensembles", algorithm 2, path-dependent): how much each feature moved one row's margin
//! away from the model's expected margin. The same algorithm as XGBoost's `pred_contribs` and
//! LightGBM's `pred_contrib`, computed in `f64` over the covers (training weights) stored in
//! the trees. Most trees are explained from tables made once per model (each leaf's weights
//! for every pattern of the row's path, kept in `f32` and summed per tree in `f32`, as
//! XGBoost does, then per feature in `f64`); a tree too deep for tables by the recursion.
//! Where the CPU has them, BMI2 and AVX-512 find and add the table rows; the portable code
//! gives the same bits.
//!
//! The contributions and the bias sum to the row's margin. A model's linear term (the logistic
//! baseline) contributes `weight x value` per feature, its intercept goes to the bias.

use super::{Ensemble, ModelError, Node};

/// One element of the path of features from the root to a node.
#[derive(Debug, Clone, Copy, Default)]
struct PathElement {
    feature: i64,
    zero_fraction: f64,
    one_fraction: f64,
    pweight: f64,
}

/// Explains the margins of one model. Build it once per model; it is immutable and shared by
/// threads.
#[derive(Debug, Clone)]
pub struct Explainer {
    ensemble: Ensemble,
    /// Per tree: its leaves' weight tables, or `None` when too large (the tree is then
    /// explained by the recursive algorithm).
    tables: Vec<Option<TreeTable>>,
    bias: f64,
    scale: f64,
    max_depth: usize,
    /// Blocks of all the tables (one table row looked up per block).
    blocks: usize,
    simd: Simd,
    /// The categorical features whose splits the tables test as bit sets.
    categories: Vec<Categorical>,
    /// The trees whose tables' directions fit one word (see [`TreeTable::one_word`]).
    one_word: Vec<u32>,
}

/// The values of the leaves the row reaches in the one-word trees `trees` (their directions
/// in `dirs`, by tree) into `leaves`, by tree: eight trees walked in step, so that the loads
/// of their paths overlap.
fn exit_values(tables: &[Option<TreeTable>], trees: &[u32], dirs: &[u64], leaves: &mut [f64]) {
    const STEP: usize = 8;
    for group in trees.chunks(STEP) {
        let mut at = [0u32; STEP];
        let mut tabs: [Option<&TreeTable>; STEP] = [None; STEP];
        let mut words = [0u64; STEP];
        let mut depth = 0;
        for (j, &i) in group.iter().enumerate() {
            if let Some(t) = &tables[i as usize] {
                tabs[j] = Some(t);
                words[j] = dirs[i as usize];
                depth = depth.max(t.depth);
            }
        }
        for _ in 0..depth {
            for (a, (t, w)) in at.iter_mut().zip(tabs.iter().zip(&words)) {
                // Leaves lead back to themselves: walking past one stays there.
                if let Some(t) = t {
                    *a = t.exits[*a as usize][(w >> (*a & 63) & 1) as usize];
                }
            }
        }
        for ((&i, t), &a) in group.iter().zip(&tabs).zip(&at) {
            if let Some(t) = t {
                leaves[i as usize] = t.values[(a - t.splits) as usize];
            }
        }
    }
}

/// A categorical feature whose every split (NaN missing) casts values the same way and whose
/// sets hold at most 64 codes between them: per row its value becomes one small number
/// (the code's place among `codes`), and each split's set is a 64-bit mask of places.
#[derive(Debug, Clone)]
struct Categorical {
    feature: u32,
    cast: super::CategoryCast,
    /// Every code of any of its sets, sorted.
    codes: Vec<u32>,
}

/// [`Categorical::place`] of a missing value.
const CAT_MISSING: u8 = 255;
/// [`Categorical::place`] of a value in no set.
const CAT_NONE: u8 = 254;

impl Categorical {
    /// The categorical features of `ensemble` that qualify (see [`Categorical`]).
    fn of(ensemble: &Ensemble) -> Vec<Categorical> {
        use super::{Missing, Test};
        let mut found: Vec<Option<Categorical>> = vec![None; ensemble.features.len()];
        let mut refused = vec![false; ensemble.features.len()];
        for tree in &ensemble.trees {
            for node in &tree.nodes {
                let Node::Split(s) = node else { continue };
                let Test::Categories(c) = &s.test else {
                    continue;
                };
                let f = s.feature as usize;
                if f >= found.len() || refused[f] {
                    continue;
                }
                let entry = found[f].get_or_insert_with(|| Categorical {
                    feature: s.feature,
                    cast: c.cast,
                    codes: Vec::new(),
                });
                entry.codes.extend(&c.categories);
                entry.codes.sort_unstable();
                entry.codes.dedup();
                if s.missing != Missing::Nan || entry.cast != c.cast || entry.codes.len() > 64 {
                    refused[f] = true;
                }
            }
        }
        found
            .into_iter()
            .zip(refused)
            .filter_map(|(c, refused)| c.filter(|_| !refused))
            .collect()
    }

    /// Where `x` is among the codes ([`CAT_MISSING`], [`CAT_NONE`]).
    fn place(&self, x: f64) -> u8 {
        if x.is_nan() {
            return CAT_MISSING;
        }
        self.cast
            .code(x)
            .and_then(|c| self.codes.binary_search(&c).ok())
            .map_or(CAT_NONE, |i| i as u8)
    }
}

fn cover(node: &Node) -> f64 {
    match node {
        Node::Leaf { cover, .. } => *cover,
        Node::Split(s) => s.cover,
    }
}

impl Explainer {
    /// Prepares `ensemble` for explanation. Fails when a tree lacks the covers (training
    /// weights per node) that TreeSHAP weighs paths with.
    pub fn new(ensemble: &Ensemble) -> Result<Self, ModelError> {
        ensemble.validate()?;
        let mut bias = ensemble.base_margin;
        let mut max_depth = 0;
        for (t, tree) in ensemble.trees.iter().enumerate() {
            let n = tree.nodes.len();
            let mut means = vec![0.0; n];
            if n > 1 {
                for (i, node) in tree.nodes.iter().enumerate() {
                    if cover(node).is_nan() || cover(node) <= 0.0 {
                        return Err(ModelError::Invalid(format!(
                            "tree {t} node {i} has no cover (training weight): TreeSHAP needs it"
                        )));
                    }
                }
            }
            // Node means bottom-up, children before parents.
            let mut order = Vec::with_capacity(n);
            let mut stack = vec![(0usize, false)];
            while let Some((i, done)) = stack.pop() {
                match &tree.nodes[i] {
                    Node::Leaf { .. } => order.push(i),
                    Node::Split(s) if !done => {
                        stack.push((i, true));
                        stack.push((s.left as usize, false));
                        stack.push((s.right as usize, false));
                    }
                    Node::Split(_) => order.push(i),
                }
            }
            for &i in &order {
                means[i] = match &tree.nodes[i] {
                    Node::Leaf { value, .. } => *value,
                    Node::Split(s) => {
                        let (l, r) = (s.left as usize, s.right as usize);
                        let (cl, cr) = (cover(&tree.nodes[l]), cover(&tree.nodes[r]));
                        (cl * means[l] + cr * means[r]) / (cl + cr)
                    }
                };
            }
            let depth = tree.depths().into_iter().max().unwrap_or(0);
            max_depth = max_depth.max(depth);
            bias += means[0];
        }
        let scale = if ensemble.average_output && !ensemble.trees.is_empty() {
            1.0 / ensemble.trees.len() as f64
        } else {
            1.0
        };
        // Averaging divides the whole sum, base margin included, as `finish_margin` does.
        let mut bias = bias * scale;
        if let Some(lin) = &ensemble.linear {
            bias += lin.expected_value();
        }
        let categories = Categorical::of(ensemble);
        let tables: Vec<Option<TreeTable>> = ensemble
            .trees
            .iter()
            .map(|t| TreeTable::new(t, scale, &categories))
            .collect();
        let blocks = tables.iter().flatten().map(|t| t.blocks.len()).sum();
        let one_word = (0..tables.len() as u32)
            .filter(|&i| tables[i as usize].as_ref().is_some_and(TreeTable::one_word))
            .collect();
        Ok(Explainer {
            ensemble: ensemble.clone(),
            tables,
            bias,
            scale,
            max_depth,
            blocks,
            simd: Simd::detect(),
            categories,
            one_word,
        })
    }

    /// Number of values [`Explainer::contributions`] writes: one per feature, then the bias.
    pub fn width(&self) -> usize {
        self.ensemble.features.len() + 1
    }

    /// The expected margin (the bias column).
    pub fn bias(&self) -> f64 {
        self.bias
    }

    /// Writes the contribution of each feature to `row`'s margin into `out[..features]` and
    /// the bias into `out[features]`.
    pub fn contributions(&self, row: &[f64], out: &mut [f64]) -> Result<(), ModelError> {
        self.explain::<false>(row, out, &mut Vec::new())
    }

    /// [`Explainer::contributions`], and the row's margin: bit for bit the model's
    /// ([`Ensemble::reference_margin`], [`crate::model::CompiledModel::predict_margin`]),
    /// found at little cost from the split directions the explanation computes anyway (a
    /// service that explains every answer need not walk the trees a second time).
    pub fn contributions_and_margin(
        &self,
        row: &[f64],
        out: &mut [f64],
    ) -> Result<f64, ModelError> {
        let mut leaves = Vec::with_capacity(self.ensemble.trees.len());
        self.explain::<true>(row, out, &mut leaves)?;
        Ok(self.ensemble.margin_of_leaves(leaves.into_iter(), row))
    }

    /// The contributions, and with `LEAVES` the value of the leaf `row` reaches in each
    /// tree, in tree order, into `leaves`.
    fn explain<const LEAVES: bool>(
        &self,
        row: &[f64],
        out: &mut [f64],
        leaves: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        let m = self.lengths(row, out)?;
        let d = self.max_depth + 2;
        // The recursion's buffer only for trees without tables (usually none).
        let mut path = Vec::new();
        let mut words = Vec::new();
        let mut offsets = Vec::with_capacity(self.blocks);
        let mut sums = Vec::new();
        let doubled = doubled(row);
        let places: Vec<u8> = self
            .categories
            .iter()
            .map(|c| c.place(row[c.feature as usize]))
            .collect();
        let read = RowRead {
            row,
            doubled: &doubled,
            places: &places,
        };
        // Tables in two passes: first where every block's row is (prefetched), then the
        // sums, by when the rows have arrived.
        let mut dirs = Vec::new();
        if LEAVES {
            leaves.clear();
            leaves.resize(self.tables.len(), 0.0);
            dirs.resize(self.tables.len(), 0);
        }
        for (i, (tree, table)) in self.ensemble.trees.iter().zip(&self.tables).enumerate() {
            match (table, tree.nodes.len() > 1) {
                (Some(t), true) => {
                    t.offsets(&read, &mut words, &mut offsets, self.simd);
                    if LEAVES {
                        if t.one_word() {
                            dirs[i] = words.first().copied().unwrap_or(0);
                        } else {
                            leaves[i] = t.exit_value(&words);
                        }
                    }
                }
                _ if LEAVES => leaves[i] = tree.leaf_for(row).0,
                _ => {}
            }
        }
        if LEAVES {
            exit_values(&self.tables, &self.one_word, &dirs, leaves);
        }
        let mut at = 0;
        for (tree, table) in self.ensemble.trees.iter().zip(&self.tables) {
            if tree.nodes.len() == 1 {
                continue;
            }
            if let Some(t) = table {
                let n = t.blocks.len();
                t.accumulate(&offsets[at..at + n], &mut out[..m], &mut sums, self.simd);
                at += n;
                continue;
            }
            path.resize((d + 1) * (d + 2) / 2 + d, PathElement::default());
            self.recurse(tree, row, &mut out[..m], &mut path);
        }
        self.finish(row, out);
        Ok(())
    }

    /// Checks the lengths of a row and of its output; zeroes the output. Returns the number
    /// of features.
    fn lengths(&self, row: &[f64], out: &mut [f64]) -> Result<usize, ModelError> {
        let m = self.ensemble.features.len();
        if row.len() != m {
            return Err(ModelError::RowLength {
                found: row.len(),
                expected: m,
            });
        }
        if out.len() != m + 1 {
            return Err(ModelError::RowLength {
                found: out.len(),
                expected: m + 1,
            });
        }
        out.fill(0.0);
        Ok(m)
    }

    /// Adds one tree's contributions by the recursive algorithm (`path`: its buffer, sized
    /// for the deepest tree).
    fn recurse(&self, tree: &super::Tree, row: &[f64], phi: &mut [f64], path: &mut [PathElement]) {
        let mut walk = Walk {
            tree,
            row,
            phi,
            scale: self.scale,
        };
        walk.recurse(0, path, 0, 0, 1.0, 1.0, -1);
    }

    /// Adds the linear term's contributions and writes the bias.
    fn finish(&self, row: &[f64], out: &mut [f64]) {
        let m = out.len() - 1;
        if let Some(lin) = &self.ensemble.linear {
            for (f, o) in out[..m].iter_mut().enumerate() {
                *o += lin.contribution(f, row[f]);
            }
        }
        out[m] = self.bias;
    }

    /// The same contributions by the recursive algorithm alone (no tables): the reference
    /// the tables are checked against.
    pub fn contributions_recursive(&self, row: &[f64], out: &mut [f64]) -> Result<(), ModelError> {
        let m = self.lengths(row, out)?;
        let d = self.max_depth + 2;
        let mut path = vec![PathElement::default(); (d + 1) * (d + 2) / 2 + d];
        for tree in &self.ensemble.trees {
            if tree.nodes.len() > 1 {
                self.recurse(tree, row, &mut out[..m], &mut path);
            }
        }
        self.finish(row, out);
        Ok(())
    }

    /// The model explained.
    pub fn ensemble(&self) -> &Ensemble {
        &self.ensemble
    }
}

/// Largest table of one tree, in coefficients (beyond: the recursive algorithm).
const MAX_TABLE: usize = 1 << 17;

/// Zeros after the last coefficient of a table: a vector load of a row's 16 lanes never
/// reads past the end.
const PAD: usize = 16;

/// Each value of `row` twice: as it is, then with NaN read as -inf. A test `x < t` (`t`
/// above -inf) of the first sends NaN right, of the second left: a split's direction is one
/// comparison, whatever its default.
fn doubled(row: &[f64]) -> Vec<f64> {
    row.iter()
        .flat_map(|&x| [x, if x.is_nan() { f64::NEG_INFINITY } else { x }])
        .collect()
}

/// What this CPU can do beyond the x86-64 baseline (the portable code gives the same bits).
#[derive(Debug, Clone, Copy, Default)]
struct Simd {
    /// Bit extraction (`pext`) for the table indices.
    bmi2: bool,
    /// 16-lane vectors for the sums.
    avx512: bool,
}

impl Simd {
    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            Simd {
                bmi2: std::arch::is_x86_feature_detected!("bmi2") && fast_pext(),
                avx512: std::arch::is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Simd::default()
    }
}

/// Whether `pext` is one fast instruction here: AMD's (and Hygon's) processors before Zen 3
/// (family 0x19) run it in microcode, tens of cycles a bit, slower than the portable code.
#[cfg(target_arch = "x86_64")]
fn fast_pext() -> bool {
    use std::arch::x86_64::__cpuid;
    let v = __cpuid(0);
    let vendor = [v.ebx, v.edx, v.ecx];
    // "AuthenticAMD", "HygonGenuine".
    let amd = vendor == [0x6874_7541, 0x6974_6e65, 0x444d_4163]
        || vendor == [0x6f67_7948, 0x6e65_476e, 0x656e_6975];
    if !amd {
        return true;
    }
    let eax = __cpuid(1).eax;
    let base = (eax >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((eax >> 20) & 0xff)
    } else {
        base
    };
    family >= 0x19
}

/// The bits of `x` selected by `mask`, packed at the bottom in their order (BMI2's `pext`,
/// one bit at a time).
fn pext_portable(x: u64, mut mask: u64) -> u64 {
    let (mut out, mut bit) = (0u64, 1u64);
    while mask != 0 {
        if x & mask & mask.wrapping_neg() != 0 {
            out |= bit;
        }
        bit <<= 1;
        mask &= mask - 1;
    }
    out
}

/// One row as the tables read it: its values, the values doubled (see [`doubled`]) and its
/// categorical features' places (see [`Categorical::place`]).
struct RowRead<'a> {
    row: &'a [f64],
    doubled: &'a [f64],
    places: &'a [u8],
}

/// Sets the direction bit of split `at` (1: left) in `words`.
fn set_direction(words: &mut [u64], at: u32, left: bool) {
    let (w, bit) = (at as usize / 64, 1u64 << (at % 64));
    words[w] = if left {
        words[w] | bit
    } else {
        words[w] & !bit
    };
}

/// The precomputed weights of one tree's leaves. In path-dependent TreeSHAP a leaf's share
/// of each feature's contribution depends on the row only through which of the path's unique
/// features the row follows towards the leaf (their "one" fractions, 0 or 1); the cover
/// fractions are fixed. So every pattern of a leaf's `k` unique path features is computed
/// once, at load, and scoring only looks the pattern up.
///
/// Leaves are looked up in blocks: a leaf alone, two sibling leaves (a pair) or the four
/// leaves under one node whose children both split into two leaves (a quad). A block's
/// leaves share the conditions above its root (the prefix); its table holds the sum of its
/// leaves' contributions for every combination of the row following or not each prefix
/// condition and of the row's direction at each of the block's own splits (1, or 3 for a
/// quad): one lookup per block instead of one per leaf (the lookups are what the time goes
/// to, each a likely cache miss). The row's index is read straight off the tree's split
/// directions, one bit per split in 64-bit words: per word, the block's bits extracted
/// (`pext`) after flipping those of the prefix conditions that go right. Everything is in
/// flat arrays, block after block, for locality.
///
/// A block's row holds its own `k` features; the sums go through the tree's features (its
/// slots) in `f32` accumulators, added to the contributions once per tree. With AVX-512 a
/// block's row is moved to its slots by one permutation; the portable sums give the same
/// bits.
#[derive(Debug, Clone, Default)]
struct TreeTable {
    blocks: Vec<Block>,
    /// The bits each block's index is made of, block after block.
    picks: Vec<Pick>,
    /// Each block's features, as the tree's slots, block after block.
    slots: Vec<u16>,
    /// The feature of each of the tree's slots.
    features: Vec<u32>,
    /// Per block, for trees of at most 32 slots whose blocks have at most 16 features each
    /// (else empty): where its row's values go among the slots.
    lanes: Vec<Lanes>,
    /// Per block, `2^bits x k` coefficients (`bits` the block's index bits, `k` its
    /// features): for index `i`, the contribution of the block's feature `s` is
    /// `coef[i * k + s]`. Stored in `f32`, as XGBoost computes TreeSHAP: half the memory.
    /// [`PAD`] zeros at the end.
    coef: Vec<f32>,
    /// The tree's splits in order, each a test `x < threshold` of the value at `test_at`
    /// of the row doubled (see [`doubled`]: `2 x feature`, or `2 x feature + 1` for a split
    /// that sends NaN left); split `i` is bit `i % 64` of direction word `i / 64` (1:
    /// left). Padded to a multiple of 8 (for gathers of 8) with tests that always go right
    /// (index 0, threshold -inf).
    test_at: Vec<i32>,
    test_threshold: Vec<f64>,
    /// One past the largest index of `test_at`: rows doubled shorter are not gathered.
    test_bound: usize,
    /// Category splits tested as bit sets (see [`Categorical`]), after the numeric tests.
    sets: Vec<SetSplit>,
    /// Splits of any other kind (other category splits, zero as missing, ...), tested by
    /// [`super::Split::goes_left_in`] after those.
    other: Vec<Other>,
    /// The category sets of the categorical splits among them, one after the other: a set
    /// read here is near the others, not a separate allocation (a likely miss) each.
    codes: Vec<u32>,
    /// Per block, for trees of at most 64 splits (else empty): its index is `pext(word ^
    /// flip, mask)` of the one direction word.
    single: Vec<OneWord>,
    /// Where the row goes from each node, right then left: splits by position, then leaves
    /// (leaf `i` at `splits + i`, both its ways back to itself). The directions computed for
    /// the tables lead to the row's leaf in `depth` steps (see [`TreeTable::exit_value`]).
    exits: Vec<[u32; 2]>,
    /// The tree's leaf values, in the order of `exits`.
    values: Vec<f64>,
    /// Number of splits.
    splits: u32,
    /// The longest path from the root to a leaf, in splits.
    depth: u32,
}

/// A split of [`TreeTable::sets`]: left when the row's place for `category` (an index of
/// the explainer's categorical features) is in `mask` (or not, as `in_set_goes_left` says);
/// a missing value goes to the default.
#[derive(Debug, Clone, Copy)]
struct SetSplit {
    at: u32,
    category: u8,
    mask: u64,
    in_set_goes_left: bool,
    default_left: bool,
}

/// A split of [`TreeTable::other`].
#[derive(Debug, Clone)]
struct Other {
    /// Its position among the tree's splits.
    at: u32,
    split: super::Split,
    /// Its category set in [`TreeTable::codes`] (empty when not categorical).
    codes: std::ops::Range<u32>,
}

/// One block of leaves of a [`TreeTable`].
#[derive(Debug, Clone, Copy, Default)]
struct Block {
    /// First coefficient.
    k0: u32,
    /// First slot in [`TreeTable::slots`].
    f0: u32,
    /// First pick and their number.
    p0: u32,
    np: u8,
    /// Number of features (`k`).
    k: u8,
}

/// Bits of one direction word that make part of a block's index: `pext(word ^ flip, mask)`,
/// `bits` of them. A prefix condition that goes right is flipped (1: the row follows it).
#[derive(Debug, Clone, Copy, Default)]
struct Pick {
    mask: u64,
    flip: u64,
    word: u32,
    bits: u8,
}

/// A block's index and row in a tree of one direction word (see [`TreeTable::single`]).
#[derive(Debug, Clone, Copy, Default)]
struct OneWord {
    mask: u64,
    flip: u64,
    /// First coefficient, and the row's length (`k`).
    k0: u32,
    k: u32,
}

/// Where one block's row goes among a tree's (up to 32) slots: slot `t` takes lane `idx[t]`
/// of the row when bit `t` of `mask` is set.
#[derive(Debug, Clone, Copy, Default)]
struct Lanes {
    idx: [u8; 32],
    mask: u32,
}

/// The slot of feature `f` in `features`, appended when new.
fn slot_of(features: &mut Vec<u32>, f: u32) -> usize {
    features.iter().position(|&g| g == f).unwrap_or_else(|| {
        features.push(f);
        features.len() - 1
    })
}

/// The children of split node `i` (`s`), left then right, each with the path to it: `path`
/// and the direction taken at `i`.
fn branches(i: usize, s: &super::Split, path: Vec<(u32, bool)>) -> [(usize, Vec<(u32, bool)>); 2] {
    let mut l = path.clone();
    l.push((i as u32, true));
    let mut r = path;
    r.push((i as u32, false));
    [(s.left as usize, l), (s.right as usize, r)]
}

/// A leaf's own table, before the leaves are grouped into blocks.
struct LeafTable {
    path: Vec<(u32, bool)>,
    features: Vec<u32>,
    /// `2^k x k` contributions, indexed by the pattern of `features`.
    coef: Vec<f64>,
}

impl LeafTable {
    fn new(
        tree: &super::Tree,
        path: Vec<(u32, bool)>,
        value: f64,
        scale: f64,
    ) -> Option<LeafTable> {
        let mut features: Vec<u32> = Vec::new();
        let mut zero: Vec<f64> = Vec::new();
        for &(n, left) in &path {
            let Node::Split(s) = &tree.nodes[n as usize] else {
                return None;
            };
            let child = if left { s.left } else { s.right } as usize;
            let frac = cover(&tree.nodes[child]) / s.cover;
            let slot = slot_of(&mut features, s.feature);
            zero.resize(features.len(), 1.0);
            zero[slot] *= frac;
        }
        let k = features.len();
        if k > 16 || (1usize << k) * k > MAX_TABLE {
            return None;
        }
        let mut coef = vec![0.0; (1 << k) * k];
        let mut buf = vec![PathElement::default(); k + 2];
        for p in 0..(1usize << k) {
            extend(&mut buf, 0, 1.0, 1.0, -1);
            for (s, &z) in zero.iter().enumerate() {
                let one = if p >> s & 1 == 1 { 1.0 } else { 0.0 };
                extend(&mut buf, s + 1, z, one, s as i64);
            }
            for i in 1..=k {
                let el = buf[i];
                let w = unwound_sum(&buf, k, i);
                coef[p * k + el.feature as usize] =
                    w * (el.one_fraction - el.zero_fraction) * value * scale;
            }
        }
        Some(LeafTable {
            path,
            features,
            coef,
        })
    }
}

/// One bit of a block's index: the split at `position` and what the bit says there.
#[derive(Debug, Clone, Copy)]
enum IndexBit {
    /// The row follows the prefix condition of the feature in slot `slot`.
    Follows { slot: usize },
    /// The row goes left at the block's own split `j` (its root first).
    Left { j: usize },
}

impl TreeTable {
    /// The tables of `tree` (`None`: too large).
    fn new(tree: &super::Tree, scale: f64, categories: &[Categorical]) -> Option<TreeTable> {
        let mut t = TreeTable::default();
        // The splits' tests by position, as `(value, threshold)` (see `test_at`).
        let mut tests: Vec<(u32, f64)> = Vec::new();
        if tree.nodes.len() == 1 {
            return Some(t);
        }
        // Splits by position: blocks refer to them so.
        let mut position = vec![u32::MAX; tree.nodes.len()];
        for (i, n) in tree.nodes.iter().enumerate() {
            if let Node::Split(sp) = n {
                position[i] = tests.len() as u32;
                use super::{Missing, Test};
                // As `x < threshold`, NaN taking the default: x <= t exactly when x < the
                // next double above t; NaN read as zero goes where zero goes.
                let simple = match (&sp.missing, &sp.test) {
                    (Missing::Nan, Test::Less(x)) => Some((*x, sp.default_left)),
                    (Missing::Nan, Test::LessEqual(x)) if *x < f64::INFINITY => {
                        Some((x.next_up(), sp.default_left))
                    }
                    (Missing::NanAsZero, Test::Less(x)) => Some((*x, 0.0 < *x)),
                    (Missing::NanAsZero, Test::LessEqual(x)) if *x < f64::INFINITY => {
                        Some((x.next_up(), 0.0 <= *x))
                    }
                    _ => None,
                }
                // NaN read as -inf goes left only below a threshold above it.
                .filter(|&(t, _)| t > f64::NEG_INFINITY);
                // A category set as a mask of places, for a feature that has them.
                let set = match &sp.test {
                    Test::Categories(c) => categories
                        .iter()
                        .position(|g| g.feature == sp.feature)
                        .and_then(|i| {
                            let g = &categories[i];
                            let mask = c.categories.iter().try_fold(0u64, |m, code| {
                                g.codes.binary_search(code).ok().map(|p| m | 1 << p)
                            })?;
                            Some(SetSplit {
                                at: tests.len() as u32,
                                category: u8::try_from(i).ok()?,
                                mask,
                                in_set_goes_left: c.in_set_goes_left,
                                default_left: sp.default_left,
                            })
                        }),
                    _ => None,
                };
                if let Some(set) = set {
                    t.sets.push(set);
                } else if simple.is_none() {
                    let c0 = t.codes.len() as u32;
                    if let Test::Categories(c) = &sp.test {
                        t.codes.extend(&c.categories);
                    }
                    t.other.push(Other {
                        at: tests.len() as u32,
                        split: sp.clone(),
                        codes: c0..t.codes.len() as u32,
                    });
                }
                let (threshold, default_left) = simple.unwrap_or((f64::NAN, false));
                tests.push((2 * sp.feature + u32::from(default_left), threshold));
            }
        }
        // The walk by directions: children by position, leaves after the splits.
        t.splits = tests.len() as u32;
        let mut leaf_at = vec![0u32; tree.nodes.len()];
        for (i, n) in tree.nodes.iter().enumerate() {
            if let Node::Leaf { value, .. } = n {
                leaf_at[i] = t.splits + t.values.len() as u32;
                t.values.push(*value);
            }
        }
        let at = |i: u32| match &tree.nodes[i as usize] {
            Node::Split(_) => position[i as usize],
            Node::Leaf { .. } => leaf_at[i as usize],
        };
        t.exits = tree
            .nodes
            .iter()
            .filter_map(|n| match n {
                Node::Split(s) => Some([at(s.right), at(s.left)]),
                Node::Leaf { .. } => None,
            })
            .collect();
        let leaves = t.splits..t.splits + t.values.len() as u32;
        t.exits.extend(leaves.map(|i| [i, i]));
        t.depth = tree.depths().into_iter().max().unwrap_or(0) as u32;
        let leaf = |i: usize| matches!(tree.nodes[i], Node::Leaf { .. });
        // Both children leaves: the node ends a pair.
        let pair_root = |i: usize| match &tree.nodes[i] {
            Node::Split(s) => leaf(s.left as usize) && leaf(s.right as usize),
            Node::Leaf { .. } => false,
        };
        let mut stack: Vec<(usize, Vec<(u32, bool)>)> = vec![(0, Vec::new())];
        while let Some((i, prefix)) = stack.pop() {
            let splits: Vec<usize> = match &tree.nodes[i] {
                Node::Leaf { .. } => Vec::new(),
                Node::Split(_) if pair_root(i) => vec![i],
                // Children each a leaf or a pair: one block of up to four leaves.
                Node::Split(s)
                    if [s.left, s.right]
                        .iter()
                        .all(|&c| leaf(c as usize) || pair_root(c as usize)) =>
                {
                    let mut b = vec![i];
                    b.extend(
                        [s.left, s.right]
                            .iter()
                            .map(|&c| c as usize)
                            .filter(|&c| !leaf(c)),
                    );
                    b
                }
                Node::Split(s) => {
                    // Left first.
                    stack.extend(branches(i, s, prefix).into_iter().rev());
                    continue;
                }
            };
            t.push_block(tree, &position, &prefix, i, &splits, scale)?;
        }
        t.lanes = t.lanes();
        t.coef.resize(t.coef.len() + PAD, 0.0);
        if t.splits <= 64 {
            t.single = t
                .blocks
                .iter()
                .map(|b| {
                    let p = t.picks.get(b.p0 as usize).copied().unwrap_or_default();
                    OneWord {
                        mask: if b.np == 1 { p.mask } else { 0 },
                        flip: p.flip,
                        k0: b.k0,
                        k: u32::from(b.k),
                    }
                })
                .collect();
        }
        t.test_bound = tests.iter().map(|&(v, _)| v as usize + 1).max()?;
        let padded = tests.len().next_multiple_of(8);
        t.test_at = tests
            .iter()
            .map(|&(v, _)| i32::try_from(v).ok())
            .collect::<Option<_>>()?;
        t.test_at.resize(padded, 0);
        t.test_threshold = tests.iter().map(|&(_, th)| th).collect();
        t.test_threshold.resize(padded, f64::NEG_INFINITY);
        Some(t)
    }

    /// Adds the block rooted at node `top` under `prefix`, whose own splits are `splits`
    /// (none: `top` is a leaf alone).
    fn push_block(
        &mut self,
        tree: &super::Tree,
        position: &[u32],
        prefix: &[(u32, bool)],
        top: usize,
        splits: &[usize],
        scale: f64,
    ) -> Option<()> {
        // The block's leaves, each with its path.
        let mut leaves: Vec<LeafTable> = Vec::new();
        let mut pending: Vec<(usize, Vec<(u32, bool)>)> = vec![(top, prefix.to_vec())];
        while let Some((i, path)) = pending.pop() {
            match &tree.nodes[i] {
                Node::Split(s) => pending.extend(branches(i, s, path)),
                Node::Leaf { value, .. } => {
                    leaves.push(LeafTable::new(tree, path, *value, scale)?);
                }
            }
        }
        let feature_of = |n: u32| match &tree.nodes[n as usize] {
            Node::Split(s) => s.feature,
            Node::Leaf { .. } => u32::MAX,
        };
        // Prefix features by slot, then the block's own.
        let mut features: Vec<u32> = Vec::new();
        // Every bit of the index by the position of its split.
        let mut bits: Vec<(u32, IndexBit, bool)> = Vec::with_capacity(prefix.len() + 3);
        for &(n, left) in prefix {
            let slot = slot_of(&mut features, feature_of(n));
            bits.push((position[n as usize], IndexBit::Follows { slot }, !left));
        }
        let kp = features.len();
        for (j, &n) in splits.iter().enumerate() {
            slot_of(&mut features, feature_of(n as u32));
            bits.push((position[n], IndexBit::Left { j }, false));
        }
        let k = features.len();
        let nb = splits.len();
        if kp > 16 || bits.len() > 24 {
            return None;
        }
        // The sums by pattern: the prefix's slots followed (bit per slot), then the
        // directions at the block's own splits.
        let mut sums = vec![0.0f64; ((1usize << kp) << nb) * k];
        for p in 0..(1usize << kp) {
            for d in 0..(1usize << nb) {
                // Direction bits, the root's first (most significant): 1 = left.
                let goes_left = |n: u32| {
                    let j = splits.iter().position(|&b| b as u32 == n).unwrap_or(0);
                    d >> (nb - 1 - j) & 1 == 1
                };
                let index = (p << nb) | d;
                for lt in &leaves {
                    let mut q = 0usize;
                    for (s, &f) in lt.features.iter().enumerate() {
                        let mut on = match features[..kp].iter().position(|&g| g == f) {
                            Some(ps) => p >> ps & 1 == 1,
                            None => true,
                        };
                        for &(n, left) in &lt.path[prefix.len()..] {
                            if feature_of(n) == f && goes_left(n) != left {
                                on = false;
                            }
                        }
                        q |= usize::from(on) << s;
                    }
                    let kl = lt.features.len();
                    for (s, &f) in lt.features.iter().enumerate() {
                        let u = features.iter().position(|&g| g == f).unwrap_or(0);
                        sums[index * k + u] += lt.coef[q * kl + s];
                    }
                }
            }
        }
        // The index's bits: one pick per direction word (in word order, the first most
        // significant), each the word's bits in order (the lowest least significant).
        bits.sort_by_key(|&(pos, _, _)| (std::cmp::Reverse(pos / 64), pos % 64));
        let rows = 1usize << bits.len();
        let first = self.coef.len();
        if first + rows * k > MAX_TABLE {
            return None;
        }
        let p0 = self.picks.len();
        for &(pos, _, flip) in bits.iter().rev() {
            let word = pos / 64;
            if self.picks.len() == p0 || self.picks.last().is_some_and(|p| p.word != word) {
                self.picks.push(Pick {
                    word,
                    ..Pick::default()
                });
            }
            let pick = self.picks.last_mut()?;
            pick.mask |= 1 << (pos % 64);
            pick.flip |= u64::from(flip) << (pos % 64);
            pick.bits += 1;
        }
        for i in 0..rows {
            let mut p = (1usize << kp) - 1;
            let mut d = 0usize;
            for (b, &(_, what, _)) in bits.iter().enumerate() {
                let on = i >> b & 1 == 1;
                match what {
                    IndexBit::Follows { slot } if !on => p &= !(1 << slot),
                    IndexBit::Left { j } if on => d |= 1 << (nb - 1 - j),
                    _ => {}
                }
            }
            let at = ((p << nb) | d) * k;
            self.coef.extend(sums[at..at + k].iter().map(|&v| v as f32));
        }
        let f0 = self.slots.len() as u32;
        for &f in &features {
            let slot = slot_of(&mut self.features, f);
            self.slots.push(u16::try_from(slot).ok()?);
        }
        self.blocks.push(Block {
            k0: first as u32,
            f0,
            p0: p0 as u32,
            np: (self.picks.len() - p0) as u8,
            k: k as u8,
        });
        Some(())
    }

    /// Where each block's row goes among the slots, when every block and the tree are
    /// small enough for vectors.
    fn lanes(&self) -> Vec<Lanes> {
        if self.features.len() > 32 || self.blocks.iter().any(|b| b.k > 16) {
            return Vec::new();
        }
        self.blocks
            .iter()
            .map(|b| {
                let mut l = Lanes::default();
                let slots = &self.slots[b.f0 as usize..b.f0 as usize + usize::from(b.k)];
                for (s, &t) in slots.iter().enumerate() {
                    l.idx[usize::from(t)] = s as u8;
                    l.mask |= 1 << t;
                }
                l
            })
            .collect()
    }

    /// Appends to `offsets` where each block's row of the table is for `row`, and prefetches
    /// those rows: the tables of a model do not fit in a core's cache, and each lookup would
    /// otherwise be a miss waited for in turn. [`TreeTable::accumulate`] reads them later.
    /// `numeric` writes the directions of the plain numeric tests into the words.
    #[inline(always)]
    fn offsets_with(
        &self,
        read: &RowRead<'_>,
        words: &mut Vec<u64>,
        offsets: &mut Vec<u32>,
        numeric: impl FnOnce(&Self, &RowRead<'_>, &mut Vec<u64>),
        pext: impl Fn(u64, u64) -> u64,
    ) {
        // Every split's direction, by position: the plain numeric tests (one comparison, NaN
        // handled by which copy of the value is read), then the others.
        numeric(self, read, words);
        for c in &self.sets {
            let place = read
                .places
                .get(usize::from(c.category))
                .copied()
                .unwrap_or(CAT_NONE);
            let in_set = place < 64 && c.mask >> place & 1 == 1;
            let left = if place == CAT_MISSING {
                c.default_left
            } else {
                in_set == c.in_set_goes_left
            };
            set_direction(words, c.at, left);
        }
        for o in &self.other {
            let x = read
                .row
                .get(o.split.feature as usize)
                .copied()
                .unwrap_or(f64::NAN);
            let codes = &self.codes[o.codes.start as usize..o.codes.end as usize];
            let left = o.split.goes_left_in(x, |c, x| c.goes_left_in(x, codes));
            set_direction(words, o.at, left);
        }
        let coef = self.coef.as_ptr();
        if !self.single.is_empty() {
            // One direction word: one extraction per block.
            let w = words.first().copied().unwrap_or(0);
            offsets.extend(self.single.iter().map(|b| {
                let at = b.k0 + pext(w ^ b.flip, b.mask) as u32 * b.k;
                crate::prefetch(coef.wrapping_add(at as usize).cast());
                at
            }));
            return;
        }
        for b in &self.blocks {
            let mut index = 0u64;
            for p in &self.picks[b.p0 as usize..b.p0 as usize + usize::from(b.np)] {
                let w = words.get(p.word as usize).copied().unwrap_or(0);
                index = index << p.bits | pext(w ^ p.flip, p.mask);
            }
            let at = b.k0 as usize + index as usize * usize::from(b.k);
            crate::prefetch(coef.wrapping_add(at).cast());
            offsets.push(at as u32);
        }
    }

    /// The value of the leaf the row reaches, from the split directions in `words` (as
    /// [`TreeTable::offsets`] leaves them). The tree has splits.
    fn exit_value(&self, words: &[u64]) -> f64 {
        let mut at = 0u32;
        while at < self.splits {
            let left = words[at as usize / 64] >> (at % 64) & 1;
            at = self.exits[at as usize][left as usize];
        }
        self.values[(at - self.splits) as usize]
    }

    /// Whether the tree's directions fit one word (see [`exit_values`]).
    fn one_word(&self) -> bool {
        (1..=64).contains(&self.splits)
    }

    /// The directions of the plain numeric tests, one comparison each.
    #[inline(always)]
    fn numeric(&self, read: &RowRead<'_>, words: &mut Vec<u64>) {
        words.clear();
        words.extend(
            self.test_at
                .chunks(64)
                .zip(self.test_threshold.chunks(64))
                .map(|(at, threshold)| {
                    at.iter()
                        .zip(threshold)
                        .enumerate()
                        .fold(0u64, |w, (i, (&v, &t))| {
                            w | u64::from(read.doubled.get(v as usize).is_some_and(|&x| x < t)) << i
                        })
                }),
        );
    }

    /// [`TreeTable::numeric`] by gathers of 8 values and one comparison of 8 (the same
    /// `x < t`, false for NaN: the same bits).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn numeric_avx512(&self, read: &RowRead<'_>, words: &mut Vec<u64>) {
        use std::arch::x86_64::*;
        let doubled = read.doubled;
        if doubled.len() < self.test_bound {
            return self.numeric(read, words);
        }
        words.clear();
        words.resize(self.test_at.len().div_ceil(64), 0);
        for (i, (at, threshold)) in self
            .test_at
            .chunks_exact(8)
            .zip(self.test_threshold.chunks_exact(8))
            .enumerate()
        {
            // SAFETY: 8 indices and 8 thresholds; every index is below `test_bound`,
            // within `doubled`.
            #[allow(unsafe_code)]
            let left = unsafe {
                let idx = _mm256_loadu_si256(at.as_ptr().cast());
                let x = _mm512_i32gather_pd::<8>(idx, doubled.as_ptr());
                let t = _mm512_loadu_pd(threshold.as_ptr());
                _mm512_cmp_pd_mask::<_CMP_LT_OQ>(x, t)
            };
            words[i / 8] |= u64::from(left) << (8 * (i % 8));
        }
    }

    /// [`TreeTable::offsets_with`] with the CPU's `pext`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "bmi2")]
    fn offsets_bmi2(&self, read: &RowRead<'_>, words: &mut Vec<u64>, offsets: &mut Vec<u32>) {
        self.offsets_with(read, words, offsets, Self::numeric, |x, m| {
            std::arch::x86_64::_pext_u64(x, m)
        })
    }

    /// [`TreeTable::offsets_with`] with the CPU's `pext` and AVX-512 gathers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "bmi2,avx512f")]
    fn offsets_avx512(&self, read: &RowRead<'_>, words: &mut Vec<u64>, offsets: &mut Vec<u32>) {
        self.offsets_with(
            read,
            words,
            offsets,
            |t, read, words| t.numeric_avx512(read, words),
            |x, m| std::arch::x86_64::_pext_u64(x, m),
        )
    }

    fn offsets(
        &self,
        read: &RowRead<'_>,
        words: &mut Vec<u64>,
        offsets: &mut Vec<u32>,
        simd: Simd,
    ) {
        #[cfg(target_arch = "x86_64")]
        if simd.bmi2 {
            if simd.avx512 {
                // SAFETY: the CPU has BMI2 and AVX-512F (`Simd::detect`).
                #[allow(unsafe_code)]
                unsafe {
                    self.offsets_avx512(read, words, offsets)
                };
                return;
            }
            // SAFETY: the CPU has BMI2 (`Simd::detect`).
            #[allow(unsafe_code)]
            unsafe {
                self.offsets_bmi2(read, words, offsets)
            };
            return;
        }
        let _ = simd;
        self.offsets_with(read, words, offsets, Self::numeric, pext_portable);
    }

    /// Adds the table rows at `offsets` (one per block, from [`TreeTable::offsets`]) to
    /// `phi`: summed per slot in `f32`, block after block, then each slot's sum added to
    /// its feature.
    fn accumulate(&self, offsets: &[u32], phi: &mut [f64], sums: &mut Vec<f32>, simd: Simd) {
        sums.clear();
        sums.resize(self.features.len().max(32), 0.0);
        #[cfg(target_arch = "x86_64")]
        if simd.avx512 && !self.lanes.is_empty() {
            // SAFETY: the CPU has AVX-512F (`Simd::detect`).
            #[allow(unsafe_code)]
            unsafe {
                self.sums_avx512(offsets, sums)
            };
        } else {
            self.sums_portable(offsets, sums);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = simd;
            self.sums_portable(offsets, sums);
        }
        for (&f, &s) in self.features.iter().zip(sums.iter()) {
            phi[f as usize] += f64::from(s);
        }
    }

    fn sums_portable(&self, offsets: &[u32], sums: &mut [f32]) {
        for (b, &at) in self.blocks.iter().zip(offsets) {
            let k = usize::from(b.k);
            let row = &self.coef[at as usize..at as usize + k];
            for (&t, &c) in self.slots[b.f0 as usize..b.f0 as usize + k].iter().zip(row) {
                sums[usize::from(t)] += c;
            }
        }
    }

    /// [`TreeTable::sums_portable`] with one permutation and one addition per block and
    /// 16 slots (the same additions in the same order: the same bits).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn sums_avx512(&self, offsets: &[u32], sums: &mut [f32]) {
        use std::arch::x86_64::*;
        let wide = self.features.len() > 16;
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for (&at, l) in offsets.iter().zip(&self.lanes) {
            let row = &self.coef[at as usize..at as usize + 16];
            // SAFETY: `row` holds 16 f32 (the table ends in `PAD` zeros); `l.idx` 32 bytes.
            #[allow(unsafe_code)]
            let (row, idx_lo, idx_hi) = unsafe {
                (
                    _mm512_loadu_ps(row.as_ptr()),
                    _mm_loadu_si128(l.idx.as_ptr().cast()),
                    _mm_loadu_si128(l.idx.as_ptr().add(16).cast()),
                )
            };
            let part =
                _mm512_maskz_permutexvar_ps(l.mask as u16, _mm512_cvtepu8_epi32(idx_lo), row);
            lo = _mm512_add_ps(lo, part);
            if wide {
                let part = _mm512_maskz_permutexvar_ps(
                    (l.mask >> 16) as u16,
                    _mm512_cvtepu8_epi32(idx_hi),
                    row,
                );
                hi = _mm512_add_ps(hi, part);
            }
        }
        let sums = &mut sums[..32];
        // SAFETY: `sums` holds 32 f32.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_storeu_ps(sums.as_mut_ptr(), lo);
            _mm512_storeu_ps(sums.as_mut_ptr().add(16), hi);
        }
    }
}

struct Walk<'a> {
    tree: &'a super::Tree,
    row: &'a [f64],
    phi: &'a mut [f64],
    scale: f64,
}

fn extend(path: &mut [PathElement], depth: usize, zero: f64, one: f64, feature: i64) {
    path[depth] = PathElement {
        feature,
        zero_fraction: zero,
        one_fraction: one,
        pweight: if depth == 0 { 1.0 } else { 0.0 },
    };
    let d1 = (depth + 1) as f64;
    for i in (0..depth).rev() {
        path[i + 1].pweight += one * path[i].pweight * (i + 1) as f64 / d1;
        path[i].pweight = zero * path[i].pweight * (depth - i) as f64 / d1;
    }
}

fn unwind(path: &mut [PathElement], depth: usize, index: usize) {
    let one = path[index].one_fraction;
    let zero = path[index].zero_fraction;
    let mut next_one = path[depth].pweight;
    let d1 = (depth + 1) as f64;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = path[i].pweight;
            path[i].pweight = next_one * d1 / ((i + 1) as f64 * one);
            next_one = tmp - path[i].pweight * zero * (depth - i) as f64 / d1;
        } else {
            path[i].pweight = path[i].pweight * d1 / (zero * (depth - i) as f64);
        }
    }
    for i in index..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero_fraction = path[i + 1].zero_fraction;
        path[i].one_fraction = path[i + 1].one_fraction;
    }
}

fn unwound_sum(path: &[PathElement], depth: usize, index: usize) -> f64 {
    let one = path[index].one_fraction;
    let zero = path[index].zero_fraction;
    let mut next_one = path[depth].pweight;
    let d1 = (depth + 1) as f64;
    let mut total = 0.0;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = next_one * d1 / ((i + 1) as f64 * one);
            total += tmp;
            next_one = path[i].pweight - tmp * zero * ((depth - i) as f64 / d1);
        } else if zero != 0.0 {
            total += (path[i].pweight / zero) / ((depth - i) as f64 / d1);
        }
    }
    total
}

impl Walk<'_> {
    /// Algorithm 2 of the paper, as XGBoost implements it. `offset` is where this node's
    /// copy of the path starts in `buf`; `depth` its number of unique features so far.
    #[allow(clippy::too_many_arguments)]
    fn recurse(
        &mut self,
        node: usize,
        buf: &mut [PathElement],
        offset: usize,
        depth: usize,
        parent_zero: f64,
        parent_one: f64,
        parent_feature: i64,
    ) {
        // This node's path: a copy of the parent's, extended by the parent's split.
        let start = offset + depth + 1;
        buf.copy_within(offset..offset + depth, start);
        let path = &mut buf[start..];
        extend(path, depth, parent_zero, parent_one, parent_feature);
        match &self.tree.nodes[node] {
            Node::Leaf { value, .. } => {
                for i in 1..=depth {
                    let w = unwound_sum(path, depth, i);
                    let el = path[i];
                    if let Ok(f) = usize::try_from(el.feature) {
                        self.phi[f] +=
                            w * (el.one_fraction - el.zero_fraction) * value * self.scale;
                    }
                }
            }
            Node::Split(s) => {
                let x = self
                    .row
                    .get(s.feature as usize)
                    .copied()
                    .unwrap_or(f64::NAN);
                let (hot, cold) = if s.goes_left(x) {
                    (s.left as usize, s.right as usize)
                } else {
                    (s.right as usize, s.left as usize)
                };
                let w = s.cover;
                let hot_zero = cover(&self.tree.nodes[hot]) / w;
                let cold_zero = cover(&self.tree.nodes[cold]) / w;
                let (mut in_zero, mut in_one) = (1.0, 1.0);
                let feature = i64::from(s.feature);
                let mut depth = depth;
                if let Some(k) = (0..=depth).find(|&k| path[k].feature == feature) {
                    in_zero = path[k].zero_fraction;
                    in_one = path[k].one_fraction;
                    unwind(path, depth, k);
                    depth -= 1;
                }
                self.recurse(
                    hot,
                    buf,
                    start,
                    depth + 1,
                    hot_zero * in_zero,
                    in_one,
                    feature,
                );
                self.recurse(
                    cold,
                    buf,
                    start,
                    depth + 1,
                    cold_zero * in_zero,
                    0.0,
                    feature,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Matrix;
    use crate::train::{train, Dataset, Params};

    /// E[f(x) | x_S] as path-dependent TreeSHAP defines it: follow the row on features in S,
    /// average the children by cover elsewhere.
    fn cond(tree: &crate::model::Tree, node: usize, row: &[f64], set: u32) -> f64 {
        match &tree.nodes[node] {
            Node::Leaf { value, .. } => *value,
            Node::Split(s) => {
                if set & (1 << s.feature) != 0 {
                    let next = if s.goes_left(row[s.feature as usize]) {
                        s.left
                    } else {
                        s.right
                    };
                    cond(tree, next as usize, row, set)
                } else {
                    let (l, r) = (s.left as usize, s.right as usize);
                    let (cl, cr) = (cover(&tree.nodes[l]), cover(&tree.nodes[r]));
                    (cl * cond(tree, l, row, set) + cr * cond(tree, r, row, set)) / (cl + cr)
                }
            }
        }
    }

    /// A seeded 64-bit linear congruential generator: its successive states.
    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state
        }
    }

    /// Asserts every contribution (and the bias) of the tables within `tol` of the recursion's.
    fn tables_near_recursion(phi: &[f64], reference: &[f64], tol: f64, r: usize) {
        assert_eq!(phi.len(), reference.len());
        for (f, (t, want)) in phi.iter().zip(reference).enumerate() {
            assert!(
                (t - want).abs() < tol,
                "row {r} feature {f}: tables {t} vs recursion {want}"
            );
        }
    }

    fn factorial(n: u32) -> f64 {
        (1..=n).map(f64::from).product()
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn matches_brute_force_shapley_values_and_sums_to_the_margin() {
        let (n, m) = (3_000usize, 4usize);
        let mut draw = lcg(12_345u64);
        let mut next = || (draw() >> 11) as f64 / (1u64 << 53) as f64;
        let mut values = Vec::with_capacity(n * m);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let row: Vec<f64> = (0..m).map(|_| next()).collect();
            let p = 0.1 + 0.6 * f64::from(row[0] > 0.6) * row[1] + 0.2 * row[2] * row[3];
            labels.push(f64::from(next() < p));
            values.extend(row);
        }
        let features = Matrix {
            columns: (0..m).map(|i| format!("f{i}")).collect(),
            values,
        };
        let params =
            Params::from_pairs(["num_iterations=15", "num_leaves=8", "min_data_in_leaf=5"])
                .unwrap();
        let data = Dataset {
            features: &features,
            labels: &labels,
            weights: None,
        };
        let model = train(&data, None, &[], &params, &mut |_| {})
            .unwrap()
            .artifact
            .ensemble;
        let ex = Explainer::new(&model).unwrap();
        let mut phi = vec![0.0; m + 1];
        for r in 0..50 {
            let row = features.row(r);
            ex.contributions(row, &mut phi).unwrap();
            let mut reference = vec![0.0; m + 1];
            ex.contributions_recursive(row, &mut reference).unwrap();
            let margin = model.reference_margin(row);
            let sum: f64 = reference.iter().sum();
            assert!((sum - margin).abs() < 1e-9, "row {r}: {sum} vs {margin}");
            let sum: f64 = phi.iter().sum();
            assert!(
                (sum - margin).abs() < 1e-6,
                "row {r}: tables {sum} vs {margin}"
            );
            tables_near_recursion(&phi, &reference, 1e-6, r);
            for f in 0..m {
                let mut want = 0.0;
                for set in 0u32..(1 << m) {
                    if set & (1 << f) != 0 {
                        continue;
                    }
                    let size = set.count_ones();
                    let w = factorial(size) * factorial(m as u32 - size - 1) / factorial(m as u32);
                    let with: f64 = model
                        .trees
                        .iter()
                        .map(|t| cond(t, 0, row, set | (1 << f)))
                        .sum();
                    let without: f64 = model.trees.iter().map(|t| cond(t, 0, row, set)).sum();
                    want += w * (with - without);
                }
                assert!(
                    (reference[f] - want).abs() < 1e-9,
                    "row {r} feature {f}: {} vs {want}",
                    reference[f]
                );
            }
        }
    }

    #[test]
    fn models_without_covers_are_refused() {
        let mut e = crate::model::Ensemble {
            features: vec![crate::model::Feature {
                name: "x".into(),
                kind: crate::model::FeatureKind::Numeric,
            }],
            trees: vec![crate::model::Tree {
                nodes: vec![
                    Node::Split(crate::model::Split {
                        feature: 0,
                        test: crate::model::Test::Less(0.5),
                        missing: crate::model::Missing::Nan,
                        default_left: true,
                        left: 1,
                        right: 2,
                        cover: 0.0,
                    }),
                    Node::Leaf {
                        value: -1.0,
                        id: 1,
                        cover: 0.0,
                    },
                    Node::Leaf {
                        value: 1.0,
                        id: 2,
                        cover: 0.0,
                    },
                ],
            }],
            base_margin: 0.5,
            objective: crate::model::Objective::Logistic { scale: 1.0 },
            accumulation: crate::model::Accumulation::F64,
            average_output: false,
            linear: None,
        };
        assert!(Explainer::new(&e).is_err());
        if let Node::Split(s) = &mut e.trees[0].nodes[0] {
            s.cover = 4.0;
        }
        e.trees[0].nodes[1] = Node::Leaf {
            value: -1.0,
            id: 1,
            cover: 1.0,
        };
        e.trees[0].nodes[2] = Node::Leaf {
            value: 1.0,
            id: 2,
            cover: 3.0,
        };
        let ex = Explainer::new(&e).unwrap();
        let mut phi = [0.0; 2];
        ex.contributions(&[0.1], &mut phi).unwrap();
        // Expected value 0.5 + (1 x -1 + 3 x 1) / 4 = 1.0; x = 0.1 goes left: -1 - 0.5.
        assert_eq!(phi, [-1.5, 1.0]);
        assert!(ex.contributions(&[0.1, 0.2], &mut phi).is_err());
    }

    /// A model of the one tree `nodes` on `m` numeric features.
    fn one_tree(m: usize, nodes: Vec<Node>) -> crate::model::Ensemble {
        crate::model::Ensemble {
            features: (0..m)
                .map(|i| crate::model::Feature {
                    name: format!("x{i}"),
                    kind: crate::model::FeatureKind::Numeric,
                })
                .collect(),
            trees: vec![crate::model::Tree { nodes }],
            base_margin: 0.0,
            objective: crate::model::Objective::Logistic { scale: 1.0 },
            accumulation: crate::model::Accumulation::F64,
            average_output: false,
            linear: None,
        }
    }

    #[test]
    fn trees_too_deep_for_tables_are_explained_by_the_recursion() {
        // A chain of 18 splits on 18 features: its deepest leaves would need 2^18-row tables.
        let m = 18usize;
        let mut nodes = Vec::new();
        for f in 0..m {
            let at = nodes.len() as u32;
            // Covers add up: a leaf of weight 1 on the left, the rest of the chain right.
            let rest = (m - f + 1) as f64;
            nodes.push(Node::Split(crate::model::Split {
                feature: f as u32,
                test: crate::model::Test::Less(0.5),
                missing: crate::model::Missing::Nan,
                default_left: f % 2 == 0,
                left: at + 1,
                right: at + 2,
                cover: rest,
            }));
            nodes.push(Node::Leaf {
                value: f as f64 / 10.0 - 0.7,
                id: at + 1,
                cover: 1.0,
            });
        }
        nodes.push(Node::Leaf {
            value: 2.0,
            id: nodes.len() as u32,
            cover: 1.0,
        });
        let e = one_tree(m, nodes);
        let ex = Explainer::new(&e).unwrap();
        assert!(
            ex.tables[0].is_none(),
            "the chain should be too deep for tables"
        );
        let (mut phi, mut reference) = (vec![0.0; m + 1], vec![0.0; m + 1]);
        for r in 0..20 {
            let row: Vec<f64> = (0..m)
                .map(|f| match (r + f) % 3 {
                    0 => 0.9,
                    1 => 0.1,
                    _ => f64::NAN,
                })
                .collect();
            ex.contributions(&row, &mut phi).unwrap();
            ex.contributions_recursive(&row, &mut reference).unwrap();
            assert_eq!(phi, reference);
            let sum: f64 = phi.iter().sum();
            let margin = e.reference_margin(&row);
            assert!((sum - margin).abs() < 1e-9, "row {r}: {sum} vs {margin}");
            let found = ex.contributions_and_margin(&row, &mut phi).unwrap();
            assert_eq!(found.to_bits(), margin.to_bits(), "row {r}");
        }
    }

    /// Checks `row`'s contributions: the same bits from the portable code (`portable`, an
    /// explainer without the CPU's vectors) and within 1e-5 of the recursion.
    fn agree(ex: &Explainer, portable: &Explainer, row: &[f64], r: usize) {
        let m = row.len();
        let (mut phi, mut same, mut reference) =
            (vec![0.0; m + 1], vec![0.0; m + 1], vec![0.0; m + 1]);
        ex.contributions(row, &mut phi).unwrap();
        portable.contributions(row, &mut same).unwrap();
        assert_eq!(
            phi.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            same.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "row {r}"
        );
        ex.contributions_recursive(row, &mut reference).unwrap();
        tables_near_recursion(&phi, &reference, 1e-5, r);
        // The margin found from the same directions is the model's, to the bit, and the
        // contributions are the same with it.
        let want = ex.ensemble.reference_margin(row);
        for e in [ex, portable] {
            let margin = e.contributions_and_margin(row, &mut same).unwrap();
            assert_eq!(margin.to_bits(), want.to_bits(), "row {r}: margin");
            assert_eq!(
                phi.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                same.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "row {r}"
            );
        }
    }

    #[test]
    fn trees_of_more_than_64_splits_are_explained_by_tables() {
        // A complete tree of depth 7 (127 splits, their directions in two words) on 5
        // features, thresholds and covers from a seeded generator.
        let mut draw = lcg(7u64);
        let mut next = || (draw() >> 11) as f64 / (1u64 << 53) as f64;
        let (splits, m) = (127usize, 5usize);
        let mut nodes: Vec<Node> = Vec::new();
        let leaf_cover: Vec<f64> = (0..=splits).map(|_| 1.0 + 9.0 * next()).collect();
        // Covers bottom-up: node i's children are 2i + 1 and 2i + 2 (leaves from 127).
        let mut covers = vec![0.0; 2 * splits + 1];
        for i in (0..2 * splits + 1).rev() {
            covers[i] = if i >= splits {
                leaf_cover[i - splits]
            } else {
                covers[2 * i + 1] + covers[2 * i + 2]
            };
        }
        for (i, &cover) in covers.iter().enumerate() {
            nodes.push(if i < splits {
                Node::Split(crate::model::Split {
                    feature: ((i * 7 + i / 3) % m) as u32,
                    test: crate::model::Test::Less(next()),
                    missing: crate::model::Missing::Nan,
                    default_left: i % 3 == 0,
                    left: (2 * i + 1) as u32,
                    right: (2 * i + 2) as u32,
                    cover,
                })
            } else {
                Node::Leaf {
                    value: next() - 0.5,
                    id: i as u32,
                    cover,
                }
            });
        }
        let e = one_tree(m, nodes);
        let ex = Explainer::new(&e).unwrap();
        let table = ex.tables[0].as_ref().expect("the tree should have tables");
        assert!(
            table.blocks.iter().any(|b| b.np == 2),
            "some block should read both words"
        );
        let mut portable = ex.clone();
        portable.simd = Simd::default();
        for r in 0..200 {
            let row: Vec<f64> = (0..m)
                .map(|_| if next() < 0.1 { f64::NAN } else { next() })
                .collect();
            agree(&ex, &portable, &row, r);
        }
    }

    #[test]
    fn category_splits_as_bit_sets_and_otherwise_agree() {
        // Feature 0's sets hold 70 codes between them (too many for a bit set: tested as
        // sets of codes), feature 1's 64 (a bit set, every bit used; 1000 the last);
        // XGBoost's cast for both.
        let split = |feature: u32, codes: Vec<u32>, in_left: bool, left: u32, cover: f64| {
            Node::Split(crate::model::Split {
                feature,
                test: crate::model::Test::Categories(crate::model::CategorySplit {
                    categories: codes,
                    in_set_goes_left: in_left,
                    cast: crate::model::CategoryCast::XgboostF32,
                }),
                missing: crate::model::Missing::Nan,
                default_left: feature == 1,
                left,
                right: left + 1,
                cover,
            })
        };
        let leaf = |id: u32, value: f64, cover: f64| Node::Leaf { value, id, cover };
        let nodes = vec![
            split(0, (0..70).map(|c| c * 2).collect(), false, 1, 10.0),
            split(
                1,
                (0..62).map(|c| c * 3).chain([1000]).collect(),
                true,
                3,
                6.0,
            ),
            split(1, vec![4], false, 5, 4.0),
            leaf(3, 0.5, 2.0),
            leaf(4, -0.25, 4.0),
            leaf(5, 1.0, 1.0),
            leaf(6, -1.0, 3.0),
        ];
        let e = one_tree(2, nodes);
        let ex = Explainer::new(&e).unwrap();
        assert_eq!(ex.categories.len(), 1, "feature 1 only");
        let t = ex.tables[0].as_ref().unwrap();
        assert_eq!((t.sets.len(), t.other.len()), (2, 1));
        let mut portable = ex.clone();
        portable.simd = Simd::default();
        let values = [
            f64::NAN,
            -1.0,
            0.0,
            1.0,
            1.5,
            3.0,
            4.0,
            4.99,
            9.0,
            10.0,
            139.0,
            140.0,
            183.0,
            1000.0,
            1001.0,
            1e9,
        ];
        let mut r = 0;
        for &a in &values {
            for &b in &values {
                agree(&ex, &portable, &[a, b], r);
                r += 1;
            }
        }
    }

    #[test]
    fn rows_and_outputs_of_the_wrong_length_are_refused_by_both_algorithms() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/demo/model.fgb");
        let model = crate::model::Artifact::load(path).unwrap().ensemble;
        let ex = Explainer::new(&model).unwrap();
        let m = model.features.len();
        let length = |r: Result<(), ModelError>| match r {
            Err(ModelError::RowLength { found, expected }) => (found, expected),
            other => panic!("{other:?}"),
        };
        for run in [Explainer::contributions, Explainer::contributions_recursive] {
            let mut out = vec![0.0; m + 1];
            assert_eq!(length(run(&ex, &vec![0.0; m - 1], &mut out)), (m - 1, m));
            let mut short = vec![0.0; m];
            assert_eq!(length(run(&ex, &vec![0.0; m], &mut short)), (m, m + 1));
            assert!(run(&ex, &vec![0.0; m], &mut out).is_ok());
        }
    }

    #[test]
    fn tables_match_the_recursion_on_the_demo_model() {
        // 138 trees of depth 6: most leaves are explained in blocks of two to four.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/demo/model.fgb");
        let model = crate::model::Artifact::load(path).unwrap().ensemble;
        let ex = Explainer::new(&model).unwrap();
        // Its category splits (channel, merchant category) are all tested as bit sets.
        let tables = || ex.tables.iter().flatten();
        assert_eq!(ex.categories.len(), 2);
        assert!(tables().all(|t| t.other.is_empty()) && tables().any(|t| !t.sets.is_empty()));
        // Values around every threshold a feature is split on, every category in a set and
        // one beside it, zero (NaN is read as zero by some splits) and missing values.
        let m = model.features.len();
        let mut cuts: Vec<Vec<f64>> = vec![vec![f64::NAN, 0.0]; m];
        for tree in &model.trees {
            for node in &tree.nodes {
                if let Node::Split(s) = node {
                    let at = &mut cuts[s.feature as usize];
                    match &s.test {
                        // `x <= t` is compared as `x < t.next_up()`: both values.
                        crate::model::ensemble::Test::Less(t)
                        | crate::model::ensemble::Test::LessEqual(t) => {
                            at.extend([t - 1e-3, *t, t.next_up(), t + 1e-3])
                        }
                        crate::model::ensemble::Test::LessF32(t) => {
                            let t = f64::from(*t);
                            at.extend([t - 1e-3, t, t.next_up(), t + 1e-3])
                        }
                        crate::model::ensemble::Test::Categories(c) => at.extend(
                            c.categories
                                .iter()
                                .flat_map(|&c| [f64::from(c), f64::from(c) + 1.0]),
                        ),
                    }
                }
            }
        }
        let mut draw = lcg(99);
        let mut pick = |n: usize| (draw() >> 33) as usize % n;
        // The portable code gives the very same bits as the CPU's vectors and bit extraction.
        let mut portable = ex.clone();
        portable.simd = Simd::default();
        for r in 0..300 {
            let row: Vec<f64> = cuts.iter().map(|c| c[pick(c.len())]).collect();
            agree(&ex, &portable, &row, r);
        }
    }
}
