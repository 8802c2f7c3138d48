//! Exact TreeSHAP (Lundberg, Erion and Lee, "Consistent individualized feature attribution for
//! tree ensembles", algorithm 2, path-dependent): how much each feature moved one row's margin
//! away from the model's expected margin. The same algorithm as XGBoost's `pred_contribs` and
//! LightGBM's `pred_contrib`, computed in `f64` over the covers (training weights) stored in
//! the trees.
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
        let tables: Vec<Option<TreeTable>> = ensemble
            .trees
            .iter()
            .map(|t| TreeTable::new(t, scale))
            .collect();
        let blocks = tables.iter().flatten().map(|t| t.blocks.len()).sum();
        Ok(Explainer {
            ensemble: ensemble.clone(),
            tables,
            bias,
            scale,
            max_depth,
            blocks,
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
        let d = self.max_depth + 2;
        // The recursion's buffer only for trees without tables (usually none).
        let mut path = Vec::new();
        let mut goes_left = Vec::new();
        let mut offsets = Vec::with_capacity(self.blocks);
        let mut lanes = vec![0.0; LANES * m];
        let doubled = doubled(row);
        // Tables in two passes: first where every leaf's row is (prefetched), then the sums,
        // by when the rows have arrived.
        for (tree, table) in self.ensemble.trees.iter().zip(&self.tables) {
            if let (Some(t), true) = (table, tree.nodes.len() > 1) {
                t.offsets(row, &doubled, &mut goes_left, &mut offsets);
            }
        }
        let mut at = 0;
        for (tree, table) in self.ensemble.trees.iter().zip(&self.tables) {
            if tree.nodes.len() == 1 {
                continue;
            }
            if let Some(t) = table {
                t.accumulate(&offsets[at..at + t.blocks.len()], &mut lanes);
                at += t.blocks.len();
                continue;
            }
            path.resize((d + 1) * (d + 2) / 2 + d, PathElement::default());
            let mut walk = Walk {
                tree,
                row,
                phi: &mut out[..m],
                scale: self.scale,
            };
            walk.recurse(0, &mut path, 0, 0, 1.0, 1.0, -1);
        }
        for lane in lanes.chunks_exact(m.max(1)) {
            for (o, v) in out[..m].iter_mut().zip(lane) {
                *o += v;
            }
        }
        if let Some(lin) = &self.ensemble.linear {
            for (f, o) in out[..m].iter_mut().enumerate() {
                *o += lin.contribution(f, row[f]);
            }
        }
        out[m] = self.bias;
        Ok(())
    }

    /// The same contributions by the recursive algorithm alone (no tables): the reference
    /// the tables are checked against.
    pub fn contributions_recursive(&self, row: &[f64], out: &mut [f64]) -> Result<(), ModelError> {
        let m = self.ensemble.features.len();
        if row.len() != m || out.len() != m + 1 {
            return Err(ModelError::RowLength {
                found: row.len(),
                expected: m,
            });
        }
        out.fill(0.0);
        let d = self.max_depth + 2;
        let mut path = vec![PathElement::default(); (d + 1) * (d + 2) / 2 + d];
        for tree in &self.ensemble.trees {
            if tree.nodes.len() > 1 {
                let mut walk = Walk {
                    tree,
                    row,
                    phi: &mut out[..m],
                    scale: self.scale,
                };
                walk.recurse(0, &mut path, 0, 0, 1.0, 1.0, -1);
            }
        }
        if let Some(lin) = &self.ensemble.linear {
            for (f, o) in out[..m].iter_mut().enumerate() {
                *o += lin.contribution(f, row[f]);
            }
        }
        out[m] = self.bias;
        Ok(())
    }

    /// The model explained.
    pub fn ensemble(&self) -> &Ensemble {
        &self.ensemble
    }
}

/// Accumulators of [`TreeTable::accumulate`].
const LANES: usize = 4;

/// Largest table of one tree, in coefficients (beyond: the recursive algorithm).
const MAX_TABLE: usize = 1 << 17;

/// Each value of `row` twice: as it is, then with NaN read as -inf. A test `x < t` (`t`
/// above -inf) of the first sends NaN right, of the second left: a split's direction is one
/// comparison, whatever its default.
fn doubled(row: &[f64]) -> Vec<f64> {
    row.iter()
        .flat_map(|&x| [x, if x.is_nan() { f64::NEG_INFINITY } else { x }])
        .collect()
}

/// The precomputed weights of one tree's leaves. In path-dependent TreeSHAP a leaf's share
/// of each feature's contribution depends on the row only through which of the path's unique
/// features the row follows towards the leaf (their "one" fractions, 0 or 1); the cover
/// fractions are fixed. So every pattern of a leaf's `k` unique path features is computed
/// once, at load, and scoring only looks the pattern up.
///
/// Leaves are looked up in blocks: a leaf alone, two sibling leaves (a pair) or the four
/// leaves under one node whose children both split into two leaves (a quad). A block's
/// leaves share the conditions above its root (the prefix); its table is indexed by the
/// pattern of the prefix's unique features followed by the row's direction at each of the
/// block's own splits (1, or 3 for a quad), and holds the sum of its leaves' contributions:
/// one lookup per block instead of one per leaf (the lookups are what the time goes to, each
/// a likely cache miss). Everything is in flat arrays, block after block, for locality.
#[derive(Debug, Clone, Default)]
struct TreeTable {
    blocks: Vec<Block>,
    /// Prefix conditions: (node, the block is on its left, prefix feature slot).
    conds: Vec<(u32, bool, u8)>,
    /// Each block's features: the prefix's unique features by slot, then those of the
    /// block's own splits not among them.
    features: Vec<u32>,
    /// Per block, `2^kp x 2^splits x k` coefficients (`kp` prefix features, `k` in all): for
    /// index `i` (the prefix pattern, bit `s` set when the row follows the prefix at every
    /// node of slot `s`, then the directions), the contribution of slot `s` is
    /// `coef[i * k + s]`. Stored in `f32`, as XGBoost computes TreeSHAP: half the memory.
    coef: Vec<f32>,
    /// The tree's splits in order, as `(value, threshold)` for a test `x < threshold` of
    /// the value at `value` of the row doubled (see [`doubled`]: `2 x feature`, or `2 x
    /// feature + 1` for a split that sends NaN left); conditions and blocks name splits by
    /// their position here.
    tests: Vec<(u32, f64)>,
    /// Splits of any other kind (categorical, zero as missing, ...), tested by
    /// [`super::Split::goes_left_in`] after the others.
    other: Vec<Other>,
    /// The category sets of the categorical splits among them, one after the other: a set
    /// read here is near the others, not a separate allocation (a likely miss) each.
    codes: Vec<u32>,
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
    /// First prefix condition and their number.
    c0: u32,
    nc: u16,
    /// First feature and number of features (`k`).
    f0: u32,
    k: u8,
    /// Number of prefix features (the pattern's bits).
    kp: u8,
    /// First coefficient.
    k0: u32,
    /// The block's own splits (root first), whose directions end the index.
    splits: u8,
    nodes: [u32; 3],
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

impl TreeTable {
    fn new(tree: &super::Tree, scale: f64) -> Option<TreeTable> {
        let mut t = TreeTable::default();
        if tree.nodes.len() == 1 {
            return Some(t);
        }
        // Splits by position: conditions and blocks refer to them so.
        let mut position = vec![u32::MAX; tree.nodes.len()];
        for (i, n) in tree.nodes.iter().enumerate() {
            if let Node::Split(sp) = n {
                position[i] = t.tests.len() as u32;
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
                if simple.is_none() {
                    let c0 = t.codes.len() as u32;
                    if let Test::Categories(c) = &sp.test {
                        t.codes.extend(&c.categories);
                    }
                    t.other.push(Other {
                        at: t.tests.len() as u32,
                        split: sp.clone(),
                        codes: c0..t.codes.len() as u32,
                    });
                }
                let (threshold, default_left) = simple.unwrap_or((f64::NAN, false));
                t.tests
                    .push((2 * sp.feature + u32::from(default_left), threshold));
            }
        }
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
        let mut conds = Vec::with_capacity(prefix.len());
        for &(n, left) in prefix {
            let slot = slot_of(&mut features, feature_of(n));
            conds.push((position[n as usize], left, slot as u8));
        }
        let kp = features.len();
        for &n in splits {
            slot_of(&mut features, feature_of(n as u32));
        }
        let k = features.len();
        let nb = splits.len();
        if kp > 16 || prefix.len() > usize::from(u16::MAX) {
            return None;
        }
        let rows = (1usize << kp) << nb;
        let first = self.coef.len();
        if first + rows * k > MAX_TABLE {
            return None;
        }
        let mut sums = vec![0.0f64; rows * k];
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
        self.coef.extend(sums.iter().map(|&v| v as f32));
        let mut nodes = [0u32; 3];
        for (slot, &n) in nodes.iter_mut().zip(splits) {
            *slot = position[n];
        }
        self.blocks.push(Block {
            c0: self.conds.len() as u32,
            nc: prefix.len() as u16,
            f0: self.features.len() as u32,
            k: k as u8,
            kp: kp as u8,
            k0: first as u32,
            splits: nb as u8,
            nodes,
        });
        self.conds.extend(conds);
        self.features.extend(features);
        Some(())
    }

    /// Appends to `offsets` where each block's row of the table is for `row`, and prefetches
    /// those rows: the tables of a model do not fit in a core's cache, and each lookup would
    /// otherwise be a miss waited for in turn. [`TreeTable::accumulate`] reads them later.
    fn offsets(
        &self,
        row: &[f64],
        doubled: &[f64],
        goes_left: &mut Vec<bool>,
        offsets: &mut Vec<u32>,
    ) {
        // Every split's direction, by position: the plain numeric tests (one comparison, NaN
        // handled by which copy of the value is read), then the others.
        goes_left.clear();
        goes_left.extend(
            self.tests
                .iter()
                .map(|&(v, t)| doubled.get(v as usize).is_some_and(|&x| x < t)),
        );
        for o in &self.other {
            let x = row
                .get(o.split.feature as usize)
                .copied()
                .unwrap_or(f64::NAN);
            let codes = &self.codes[o.codes.start as usize..o.codes.end as usize];
            goes_left[o.at as usize] = o.split.goes_left_in(x, |c, x| c.goes_left_in(x, codes));
        }
        for b in &self.blocks {
            let mut p = (1usize << b.kp) - 1;
            // Branch-free: whether the row follows the path is as good as random.
            for &(n, left, slot) in &self.conds[b.c0 as usize..b.c0 as usize + usize::from(b.nc)] {
                let off = usize::from(goes_left[n as usize] != left);
                p &= !(off << slot);
            }
            for &n in &b.nodes[..usize::from(b.splits)] {
                p = p * 2 + usize::from(goes_left[n as usize]);
            }
            let at = b.k0 as usize + p * usize::from(b.k);
            crate::prefetch(self.coef.as_ptr().wrapping_add(at).cast());
            offsets.push(at as u32);
        }
    }

    /// Adds the table rows at `offsets` (one per block, from [`TreeTable::offsets`]) to
    /// `phi`: `LANES` accumulators of the features, one after the other, so additions to the
    /// same feature do not wait on each other.
    fn accumulate(&self, offsets: &[u32], phi: &mut [f64]) {
        let m = phi.len() / LANES;
        for (j, (b, &at)) in self.blocks.iter().zip(offsets).enumerate() {
            let lane = (j % LANES) * m;
            let k = usize::from(b.k);
            let c = &self.coef[at as usize..at as usize + k];
            for (s, &f) in self.features[b.f0 as usize..b.f0 as usize + k]
                .iter()
                .enumerate()
            {
                phi[lane + f as usize] += f64::from(c[s]);
            }
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

    fn factorial(n: u32) -> f64 {
        (1..=n).map(f64::from).product()
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn matches_brute_force_shapley_values_and_sums_to_the_margin() {
        let (n, m) = (3_000usize, 4usize);
        let mut state = 12_345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
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
            for f in 0..=m {
                assert!(
                    (phi[f] - reference[f]).abs() < 1e-6,
                    "row {r} feature {f}: tables {} vs recursion {}",
                    phi[f],
                    reference[f]
                );
            }
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
        let e = crate::model::Ensemble {
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
        };
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
        }
    }

    #[test]
    fn tables_match_the_recursion_on_the_demo_model() {
        // 138 trees of depth 6: most leaves are explained in blocks of two to four.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/demo/model.fgb");
        let model = crate::model::Artifact::load(path).unwrap().ensemble;
        let ex = Explainer::new(&model).unwrap();
        // Values around every threshold a feature is split on, every category in a set and
        // one beside it, zero (NaN is read as zero by some splits) and missing values.
        let m = model.features.len();
        let mut cuts: Vec<Vec<f64>> = vec![vec![f64::NAN, 0.0]; m];
        for tree in &model.trees {
            for node in &tree.nodes {
                if let Node::Split(s) = node {
                    let at = &mut cuts[s.feature as usize];
                    match &s.test {
                        crate::model::ensemble::Test::Less(t)
                        | crate::model::ensemble::Test::LessEqual(t) => {
                            at.extend([t - 1e-3, *t, t + 1e-3])
                        }
                        crate::model::ensemble::Test::LessF32(t) => {
                            let t = f64::from(*t);
                            at.extend([t - 1e-3, t, t + 1e-3])
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
        let mut state = 99u64;
        let mut pick = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        let (mut phi, mut reference) = (vec![0.0; m + 1], vec![0.0; m + 1]);
        for r in 0..300 {
            let row: Vec<f64> = cuts.iter().map(|c| c[pick(c.len())]).collect();
            ex.contributions(&row, &mut phi).unwrap();
            ex.contributions_recursive(&row, &mut reference).unwrap();
            for f in 0..=m {
                assert!(
                    (phi[f] - reference[f]).abs() < 1e-5,
                    "row {r} feature {f}: tables {} vs recursion {}",
                    phi[f],
                    reference[f]
                );
            }
        }
    }
}
