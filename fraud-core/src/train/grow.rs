//! Growing one tree, leaf-wise: gradient histograms per leaf (built for the smaller child,
//! the larger one by subtraction), the best split of each leaf (numeric with a learned
//! missing-value direction, or categorical), and the leaf with the largest gain split next.
//!
//! Every parallel loop runs over features, and each feature's sums run in row order, so the
//! result is the same bit for bit whatever the number of threads.

use crate::prefetch;
use rayon::prelude::*;

use super::bins::{BinMapper, Binned, MISSING_BIN};
use super::params::Params;
use crate::model::{CategoryCast, CategorySplit, Missing, Node, Split, Test, Tree};

/// Histogram bins per feature (value bins and the missing bin).
const NB: usize = 256;

/// Sums of gradient, hessian and row count. Laid out as four doubles on a 32-byte boundary
/// (the fourth always zero), so that adding a row to a histogram bin, or subtracting two
/// bins, is one 256-bit vector operation where the CPU has them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(32))]
pub(crate) struct Sums {
    pub g: f64,
    pub h: f64,
    pub n: f64,
    zero: f64,
}

impl Sums {
    pub(crate) fn new(g: f64, h: f64, n: f64) -> Sums {
        Sums { g, h, n, zero: 0.0 }
    }
    #[inline(always)]
    fn add(self, o: Sums) -> Sums {
        Sums {
            g: self.g + o.g,
            h: self.h + o.h,
            n: self.n + o.n,
            zero: self.zero + o.zero,
        }
    }
    #[inline(always)]
    fn sub(self, o: Sums) -> Sums {
        Sums {
            g: self.g - o.g,
            h: self.h - o.h,
            n: self.n - o.n,
            zero: self.zero - o.zero,
        }
    }
}

/// Per-feature gradient histograms of one leaf: `NB` bins for every feature.
pub(crate) type Hist = Vec<Sums>;

/// How a split sends bins, for routing binned rows.
#[derive(Debug, Clone)]
pub(crate) enum BinRule {
    /// Left iff `bin <= threshold`; the missing bin goes to `missing_left`.
    Numeric { threshold: u8, missing_left: bool },
    /// Left iff the bin is in the set (missing and "other" never are).
    Categorical { left: [u64; 4] },
}

impl BinRule {
    #[inline]
    pub(crate) fn goes_left(&self, bin: u8) -> bool {
        match self {
            BinRule::Numeric {
                threshold,
                missing_left,
            } => {
                if bin == MISSING_BIN {
                    *missing_left
                } else {
                    bin <= *threshold
                }
            }
            BinRule::Categorical { left } => left[bin as usize / 64] & (1 << (bin % 64)) != 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Candidate {
    gain: f64,
    feature: usize,
    rule: BinRule,
    left: Sums,
    right: Sums,
    left_out: f64,
    right_out: f64,
}

struct Leaf {
    node: usize,
    /// Where its rows are in the tree's row order (each leaf's rows sorted and together).
    rows: std::ops::Range<usize>,
    sums: Sums,
    depth: usize,
    lo: f64,
    hi: f64,
    hist: Option<Hist>,
    best: Option<Candidate>,
    output: f64,
}

/// A grown tree, with its bin rules for routing binned rows and the rows of each leaf.
pub(crate) struct Grown {
    pub tree: Tree,
    /// Per node: the rule of a split (None for leaves).
    pub rules: Vec<Option<(usize, BinRule)>>,
    /// The rows grown on, each leaf's together (and sorted).
    pub order: Vec<u32>,
    /// Per leaf node: (node index, where the rows that reached it are in `order`).
    pub leaf_rows: Vec<(usize, std::ops::Range<usize>)>,
    /// (feature, gain) of every split made.
    pub splits: Vec<(usize, f64)>,
}

/// The best numeric split of a leaf with no L1, bounds or monotone constraint (a side's
/// gain is `G^2/(H+l2)`): the first candidate, in threshold order and missing values right
/// before left, with the largest gain above the leaf's own plus `min_gain`; as threshold,
/// missing values left, left and right sums.
fn fast_scan(
    lims: &Limits,
    h: &[Sums],
    value_bins: usize,
    min_gain: f64,
) -> Option<(usize, bool, Sums, Sums)> {
    let (l2, min_n, min_h, miss) = (lims.l2, lims.min_n, lims.min_h, lims.miss);
    let score = |s: Sums| s.g * s.g / (s.h + l2);
    let mut best_score = score(lims.total) + min_gain;
    let screen = l2 > 0.0 || min_h > 0.0;
    let mut found: Option<(usize, bool, Sums, Sums)> = None;
    // First the running sums at every threshold with rows in its bin, gathered
    // without a branch: whether a bin is empty is data, and mispredicting it cost
    // more than the candidates themselves.
    let mut buf = SCAN.with(|b| b.take()).unwrap_or_default();
    let Scan {
        at,
        g: gl,
        h: hl,
        n: nl,
        approx,
    } = &mut *buf;
    let mut k = 0usize;
    let mut acc = Sums::default();
    for (t, bin) in h.iter().enumerate().take(value_bins.saturating_sub(1)) {
        acc = acc.add(*bin);
        at[k] = t as u8;
        (gl[k], hl[k], nl[k]) = (acc.g, acc.h, acc.n);
        k += usize::from(bin.n != 0.0);
    }
    let sides = if miss.n == 0.0 { 1 } else { 2 };
    // With both denominators positive (`screen`), every candidate's score is first
    // approximated at once, with one division and no branch (in vectors), and only
    // those within a relative 1e-9 of the best approximation (far above rounding)
    // are decided exactly, in the scan's order, by the division form: the same
    // split wins as when every candidate is decided exactly.
    let cutoff = if screen {
        let mut top = f64::NEG_INFINITY;
        for (side, out) in approx.iter_mut().enumerate().take(sides) {
            let runs = Runs {
                lims,
                missing_left: side == 1,
                g: &gl[..k],
                h: &hl[..k],
                n: &nl[..k],
            };
            top = top.max(approximate(&runs, &mut out[..k]));
        }
        top - top.abs() * 1e-9
    } else {
        f64::NEG_INFINITY
    };
    // The candidates end where the right side would keep too few rows (the running counts
    // only grow).
    let end = nl[..k].partition_point(|&n| lims.total.n - n >= min_n);
    let [a0, a1] = &*approx;
    for i in 0..end {
        // First the screen alone, the one test most candidates get (`>=` is false for NaN:
        // such a candidate cannot win).
        if screen && !(a0[i] >= cutoff || (sides == 2 && a1[i] >= cutoff)) {
            continue;
        }
        let acc = Sums::new(gl[i], hl[i], nl[i]);
        for (side, out) in approx.iter().enumerate().take(sides) {
            // (`>=` is false for NaN: such a candidate cannot win.)
            if screen && out[i].partial_cmp(&cutoff).is_none_or(|o| o.is_lt()) {
                continue;
            }
            let missing_left = side == 1;
            let l = if missing_left { acc.add(miss) } else { acc };
            let r = lims.total.sub(l);
            if l.n < min_n || r.n < min_n || l.h < min_h || r.h < min_h {
                continue;
            }
            let sc = score(l) + score(r);
            if sc > best_score {
                best_score = sc;
                found = Some((usize::from(at[i]), missing_left, l, r));
            }
        }
    }
    SCAN.with(|b| b.set(Some(buf)));
    found
}

/// A fast scan's working arrays: the thresholds with rows, their running sums and the
/// approximate scores of their candidates (missing values right, then left).
struct Scan {
    at: [u8; NB],
    g: [f64; NB],
    h: [f64; NB],
    n: [f64; NB],
    approx: [[f64; NB]; 2],
}

impl Default for Scan {
    fn default() -> Self {
        Scan {
            at: [0; NB],
            g: [0.0; NB],
            h: [0.0; NB],
            n: [0.0; NB],
            approx: [[0.0; NB]; 2],
        }
    }
}

thread_local! {
    /// Each thread's [`Scan`], kept between scans (its 7 KiB are not cleared for each one:
    /// a scan writes what it reads).
    static SCAN: std::cell::Cell<Option<Box<Scan>>> = const { std::cell::Cell::new(None) };
}

/// What a fast scan's candidates are held to: the leaf's sums, its missing values' sums,
/// the L2 regularisation and the minimum rows and hessian on each side.
struct Limits {
    total: Sums,
    miss: Sums,
    l2: f64,
    min_n: f64,
    min_h: f64,
}

/// A fast scan's candidates on one side of the missing values: the running sums (`g`, `h`,
/// `n`) at each threshold with rows, held to `lims`.
struct Runs<'a> {
    lims: &'a Limits,
    missing_left: bool,
    g: &'a [f64],
    h: &'a [f64],
    n: &'a [f64],
}

/// Approximate scores of a fast scan's candidates: `(gl^2*dr + gr^2*dl) / (dl*dr)`, one
/// division for the exact form's two (`d` = hessian + L2 of each side, both positive), minus
/// infinity for a candidate breaking the limits. Returns the largest. The results do not
/// depend on the CPU (the exact form decides); AVX2 only makes them faster.
fn approximate(runs: &Runs, out: &mut [f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked just above).
            #[allow(unsafe_code)]
            return unsafe { approximate_avx2(runs, out) };
        }
    }
    approximate_portable(runs, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn approximate_avx2(runs: &Runs, out: &mut [f64]) -> f64 {
    approximate_portable(runs, out)
}

#[inline(always)]
fn approximate_portable(runs: &Runs, out: &mut [f64]) -> f64 {
    let (lims, missing_left, g, h, n) = (runs.lims, runs.missing_left, runs.g, runs.h, runs.n);
    let m = if missing_left {
        lims.miss
    } else {
        Sums::default()
    };
    let t = lims.total;
    for ((((o, &g), &h), &n), _) in out.iter_mut().zip(g).zip(h).zip(n).zip(0..) {
        let (lg, lh, ln) = (g + m.g, h + m.h, n + m.n);
        let (rg, rh, rn) = (t.g - lg, t.h - lh, t.n - ln);
        // `&`, not `&&`: no branch per candidate, so that the loop runs in vectors (with
        // `&&` it compiled to scalar code, one division at a time).
        let ok = (ln >= lims.min_n) & (rn >= lims.min_n) & (lh >= lims.min_h) & (rh >= lims.min_h);
        let (dl, dr) = (lh + lims.l2, rh + lims.l2);
        let v = (lg * lg * dr + rg * rg * dl) / (dl * dr);
        *o = if ok { v } else { f64::NEG_INFINITY };
    }
    // Four running maxima, so that the comparisons do not wait on each other.
    let mut top = [f64::NEG_INFINITY; 4];
    let mut chunks = out.chunks_exact(4);
    for c in &mut chunks {
        for (t, &v) in top.iter_mut().zip(c) {
            *t = if v > *t { v } else { *t };
        }
    }
    let mut best = top[0].max(top[1]).max(top[2].max(top[3]));
    for &v in chunks.remainder() {
        best = best.max(v);
    }
    best
}

/// The better of two candidates, deterministically: the larger gain, then the lower feature.
fn better(a: Candidate, b: Candidate) -> Candidate {
    if b.gain > a.gain || (b.gain == a.gain && b.feature < a.feature) {
        b
    } else {
        a
    }
}

/// What the histograms of some rows are built from: the rows, their gradients (gathered in
/// row order unless they are every row) and which features are wanted.
struct HistSource<'a> {
    rows: &'a [u32],
    grad: &'a [[f32; 2]],
    ordered: &'a [[f32; 2]],
    all_rows: bool,
    active: Vec<bool>,
}

impl<'a> HistSource<'a> {
    /// `scratch` holds the gathered gradients (kept between leaves: a fresh buffer for
    /// every leaf costs its page faults).
    fn new(
        cx: &Context,
        rows: &'a [u32],
        grad: &'a [[f32; 2]],
        features: &[usize],
        scratch: &'a mut Vec<[f32; 2]>,
    ) -> Self {
        let nf = cx.mappers.len();
        // Rows are sorted and distinct, so as many rows as the data set means all of them.
        let all_rows = rows.len() == cx.binned.rows;
        scratch.clear();
        if !all_rows {
            scratch.extend(rows.iter().map(|&r| grad[r as usize]));
        }
        let ordered = &scratch[..];
        let mut active = vec![false; nf];
        for &f in features {
            active[f] = true;
        }
        HistSource {
            rows,
            grad,
            ordered,
            all_rows,
            active,
        }
    }

    /// The histograms of features `2 * pair` and `2 * pair + 1` (those active) into `h`
    /// (`2 * NB` bins, or `NB` for a last odd feature). The same sums, bit for bit, on every
    /// CPU: AVX2 only adds a bin's four doubles in one instruction.
    fn pair(&self, cx: &Context, pair: usize, h: &mut [Sums]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present (checked just above).
                #[allow(unsafe_code)]
                return unsafe { self.pair_avx2(cx, pair, h) };
            }
        }
        self.pair_portable(cx, pair, h)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn pair_avx2(&self, cx: &Context, pair: usize, h: &mut [Sums]) {
        self.pair_portable(cx, pair, h)
    }

    #[inline(always)]
    fn pair_portable(&self, cx: &Context, pair: usize, h: &mut [Sums]) {
        let nf = self.active.len();
        let (rows, grad, ordered, all_rows) = (self.rows, self.grad, self.ordered, self.all_rows);
        let f0 = 2 * pair;
        let f1 = f0 + 1;
        let a0 = self.active[f0];
        let a1 = f1 < nf && self.active[f1];
        // Straight into the histograms (zeroed first), one `NB`-bin array per feature: the
        // bin of a byte is always in bounds.
        let (h0, h1) = h.split_at_mut(NB.min(h.len()));
        let h1: &mut [Sums] = if a1 { h1 } else { &mut [] };
        if a0 {
            h0.fill(Sums::default());
        }
        h1.fill(Sums::default());
        let (Ok(h0), h1) = (
            <&mut [Sums; NB]>::try_from(h0),
            <&mut [Sums; NB]>::try_from(h1),
        ) else {
            return;
        };
        #[inline(always)]
        fn add(e: &mut Sums, g: &[f32; 2]) {
            *e = e.add(Sums::new(g[0] as f64, g[1] as f64, 1.0));
        }
        match (a0, h1) {
            (true, Ok(h1)) => {
                let (c0, c1) = (cx.binned.column(f0), cx.binned.column(f1));
                if all_rows {
                    // Every row, in order: no indirection, no prefetch needed.
                    for ((&b0, &b1), g) in c0.iter().zip(c1).zip(grad) {
                        add(&mut h0[b0 as usize], g);
                        add(&mut h1[b1 as usize], g);
                    }
                } else {
                    for (i, (&r, g)) in rows.iter().zip(ordered).enumerate() {
                        if let Some(&ahead) = rows.get(i + PREFETCH_AHEAD) {
                            prefetch(c0.as_ptr().wrapping_add(ahead as usize));
                            prefetch(c1.as_ptr().wrapping_add(ahead as usize));
                        }
                        add(&mut h0[c0[r as usize] as usize], g);
                        add(&mut h1[c1[r as usize] as usize], g);
                    }
                }
            }
            (one0, h1) => {
                let (hk, f) = match (one0, h1) {
                    (true, _) => (h0, f0),
                    (false, Ok(h1)) => (h1, f1),
                    (false, Err(_)) => return,
                };
                let c = cx.binned.column(f);
                if all_rows {
                    for (&b, g) in c.iter().zip(grad) {
                        add(&mut hk[b as usize], g);
                    }
                }
                for (i, (&r, g)) in rows.iter().zip(ordered).enumerate() {
                    if let Some(&ahead) = rows.get(i + PREFETCH_AHEAD) {
                        prefetch(c.as_ptr().wrapping_add(ahead as usize));
                    }
                    add(&mut hk[c[r as usize] as usize], g);
                }
            }
        }
    }
}

/// Work, in histogram additions (a row's gradient added to one feature's bin), worth a
/// parallel task of its own: about 15 us, well above the cost of handing it to a thread.
const PAR_GRAIN: usize = 16_384;

/// A split scan of one feature's histogram, in histogram additions: as much as a task is
/// worth (weighing it as the 1,000 additions its time is left the searches of small leaves
/// on fewer tasks, and training at 100,000 rows 15% slower on two threads).
const SCAN_COST: usize = PAR_GRAIN;

/// Rows ahead whose bins are prefetched while building a histogram (leaf rows are scattered,
/// so the hardware prefetcher cannot guess them).
const PREFETCH_AHEAD: usize = 64;

/// Rows of a large leaf partitioned as one parallel task.
const CHUNK: usize = 65_536;

/// Splits sorted `rows` in place by `rule`: the left rows first, then the right ones, each
/// side in order; returns how many go left. `tmp` is scratch, kept between calls. Large
/// leaves are cut into fixed-size chunks partitioned in parallel and joined in order.
fn partition(rows: &mut [u32], col: &[u8], rule: &BinRule, tmp: &mut Vec<u32>) -> usize {
    // The rule as a table over all 256 bins: no branch on the data in the loop below.
    let mut table = [0u8; NB];
    for (b, t) in table.iter_mut().enumerate() {
        *t = u8::from(rule.goes_left(b as u8));
    }
    // The left rows move down within `part` (never past the row being read), the right ones
    // go to `right`; every row is written to both, only its side advances. Returns how many
    // went each way.
    let split = |part: &mut [u32], right: &mut [u32]| {
        let (mut nl, mut nr) = (0usize, 0usize);
        for i in 0..part.len() {
            if let Some(&ahead) = part.get(i + PREFETCH_AHEAD) {
                prefetch(col.as_ptr().wrapping_add(ahead as usize));
            }
            let row = part[i];
            let go = usize::from(table[col[row as usize] as usize]);
            part[nl] = row;
            right[nr] = row;
            nl += go;
            nr += 1 - go;
        }
        (nl, nr)
    };
    tmp.resize(rows.len(), 0);
    if rows.len() <= CHUNK {
        let (nl, nr) = split(rows, tmp);
        rows[nl..].copy_from_slice(&tmp[..nr]);
        return nl;
    }
    let counts: Vec<(usize, usize)> = rows
        .par_chunks_mut(CHUNK)
        .zip(tmp.par_chunks_mut(CHUNK))
        .map(|(part, right)| split(part, right))
        .collect();
    // Chunk by chunk, the left rows are at the start of the chunk and the right ones at the
    // start of its scratch: each side closes up in order, then the right ones follow the left.
    let nl = close_up(rows, counts.iter().map(|c| c.0));
    let nr = close_up(tmp, counts.iter().map(|c| c.1));
    rows[nl..].copy_from_slice(&tmp[..nr]);
    nl
}

/// Moves the first `counts[k]` rows of every `CHUNK`-row chunk of `buf` together at its
/// start, in order (a chunk's rows never land past one still to move); returns how many.
fn close_up(buf: &mut [u32], counts: impl Iterator<Item = usize>) -> usize {
    let mut at = 0;
    for (k, c) in counts.enumerate() {
        buf.copy_within(k * CHUNK..k * CHUNK + c, at);
        at += c;
    }
    at
}

/// Shared, read-only inputs of tree growth.
pub(crate) struct Context<'a> {
    pub binned: &'a Binned,
    pub mappers: &'a [BinMapper],
    pub params: &'a Params,
    /// Bin of 0.0 per feature (where NaN goes for features without missing training data).
    pub zero_bins: &'a [u8],
}

fn l1(g: f64, l1: f64) -> f64 {
    if g > l1 {
        g - l1
    } else if g < -l1 {
        g + l1
    } else {
        0.0
    }
}

impl Context<'_> {
    fn output(&self, s: Sums, l2: f64, lo: f64, hi: f64) -> f64 {
        let w = -l1(s.g, self.params.lambda_l1) / (s.h + l2);
        w.clamp(lo, hi)
    }

    fn gain_given_output(&self, s: Sums, l2: f64, w: f64) -> f64 {
        -(2.0 * l1(s.g, self.params.lambda_l1) * w + (s.h + l2) * w * w)
    }

    fn valid_sides(&self, l: Sums, r: Sums) -> bool {
        let p = self.params;
        let min_n = p.min_data_in_leaf as f64;
        l.n >= min_n
            && r.n >= min_n
            && l.h >= p.min_sum_hessian_in_leaf
            && r.h >= p.min_sum_hessian_in_leaf
    }

    /// Evaluates one candidate partition; `None` if it breaks a constraint.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        leaf: &Leaf,
        feature: usize,
        l: Sums,
        r: Sums,
        extra_l2: f64,
        rule: impl FnOnce() -> BinRule,
    ) -> Option<Candidate> {
        if !self.valid_sides(l, r) {
            return None;
        }
        let l2 = self.params.lambda_l2 + extra_l2;
        let lo_out = self.output(l, l2, leaf.lo, leaf.hi);
        let ro_out = self.output(r, l2, leaf.lo, leaf.hi);
        match self.params.monotone_constraints.get(feature) {
            Some(1) if lo_out > ro_out => return None,
            Some(-1) if lo_out < ro_out => return None,
            _ => {}
        }
        let parent = self.gain_given_output(leaf.sums, self.params.lambda_l2, leaf.output);
        let gain =
            self.gain_given_output(l, l2, lo_out) + self.gain_given_output(r, l2, ro_out) - parent;
        if gain <= self.params.min_gain_to_split || !gain.is_finite() {
            return None;
        }
        Some(Candidate {
            gain,
            feature,
            rule: rule(),
            left: l,
            right: r,
            left_out: lo_out,
            right_out: ro_out,
        })
    }

    fn best_numeric(
        &self,
        leaf: &Leaf,
        f: usize,
        h: &[Sums],
        value_bins: usize,
    ) -> Option<Candidate> {
        let miss = h[MISSING_BIN as usize];
        let p = self.params;
        let free = p.lambda_l1 == 0.0
            && leaf.lo == f64::NEG_INFINITY
            && leaf.hi == f64::INFINITY
            && p.monotone_constraints.get(f).is_none_or(|&m| m == 0);
        if free {
            // Fast scan: with no L1, bounds or monotone constraint, a side's gain is G^2/(H+l2).
            let (l2, min_n, min_h) = (
                p.lambda_l2,
                p.min_data_in_leaf as f64,
                p.min_sum_hessian_in_leaf,
            );
            let lims = Limits {
                total: leaf.sums,
                miss,
                l2,
                min_n,
                min_h,
            };
            let found = fast_scan(&lims, h, value_bins, p.min_gain_to_split);
            let (t, missing_left, l, r) = found?;
            return self.evaluate(leaf, f, l, r, 0.0, || BinRule::Numeric {
                threshold: t as u8,
                missing_left,
            });
        }
        let mut best: Option<Candidate> = None;
        let mut acc = Sums::default();
        for (t, bin) in h.iter().enumerate().take(value_bins.saturating_sub(1)) {
            acc = acc.add(*bin);
            if bin.n == 0.0 {
                continue;
            }
            if acc.n >= leaf.sums.n - miss.n {
                break;
            }
            for missing_left in [false, true] {
                if missing_left && miss.n == 0.0 {
                    continue;
                }
                let l = if missing_left { acc.add(miss) } else { acc };
                let r = leaf.sums.sub(l);
                let c = self.evaluate(leaf, f, l, r, 0.0, || BinRule::Numeric {
                    threshold: t as u8,
                    missing_left,
                });
                if let Some(c) = c {
                    if best.as_ref().is_none_or(|b| c.gain > b.gain) {
                        best = Some(c);
                    }
                }
            }
        }
        best
    }

    fn best_categorical(
        &self,
        leaf: &Leaf,
        f: usize,
        h: &[Sums],
        ncat: usize,
    ) -> Option<Candidate> {
        let p = self.params;
        // Real categories with rows in this leaf (the "other" bin, ncat, always goes right).
        let used: Vec<usize> = (0..ncat).filter(|&b| h[b].n > 0.0).collect();
        let mut best: Option<Candidate> = None;
        let mut consider = |c: Option<Candidate>| {
            if let Some(c) = c {
                if best.as_ref().is_none_or(|b| c.gain > b.gain) {
                    best = Some(c);
                }
            }
        };
        let set_of = |bins: &[usize]| {
            let mut left = [0u64; 4];
            for &b in bins {
                left[b / 64] |= 1 << (b % 64);
            }
            BinRule::Categorical { left }
        };
        if used.len() <= p.max_cat_to_onehot {
            for &b in &used {
                let l = h[b];
                let r = leaf.sums.sub(l);
                consider(self.evaluate(leaf, f, l, r, 0.0, || set_of(&[b])));
            }
            return best;
        }
        let mut sorted: Vec<usize> = used
            .into_iter()
            .filter(|&b| h[b].n >= p.min_data_per_group as f64)
            .collect();
        sorted.sort_by(|&a, &b| {
            let ra = h[a].g / (h[a].h + p.cat_smooth);
            let rb = h[b].g / (h[b].h + p.cat_smooth);
            ra.total_cmp(&rb).then(a.cmp(&b))
        });
        let max_k = p
            .max_cat_threshold
            .min(sorted.len().saturating_sub(1))
            .max(1);
        for order in [
            sorted.clone(),
            sorted.iter().rev().copied().collect::<Vec<_>>(),
        ] {
            let mut acc = Sums::default();
            for k in 0..max_k.min(order.len()) {
                acc = acc.add(h[order[k]]);
                let r = leaf.sums.sub(acc);
                consider(self.evaluate(leaf, f, acc, r, p.cat_l2, || set_of(&order[..=k])));
            }
        }
        best
    }

    /// Whether a leaf may be split at all (depth, rows, a histogram).
    fn searchable(&self, leaf: &Leaf) -> bool {
        let max_depth = self.params.max_depth;
        !(max_depth > 0 && leaf.depth >= max_depth as usize)
            && leaf.sums.n >= 2.0 * self.params.min_data_in_leaf as f64
    }

    /// The best split of a leaf on feature `f`, given the feature's histogram.
    fn best_on(&self, leaf: &Leaf, f: usize, h: &[Sums]) -> Option<Candidate> {
        match &self.mappers[f] {
            BinMapper::Numeric { upper, .. } => self.best_numeric(leaf, f, h, upper.len()),
            BinMapper::Categorical { codes, .. } => self.best_categorical(leaf, f, h, codes.len()),
        }
    }

    fn find_best(&self, leaf: &mut Leaf, features: &[usize]) {
        if !self.searchable(leaf) {
            leaf.best = None;
            return;
        }
        let Some(hist) = leaf.hist.as_ref() else {
            leaf.best = None;
            return;
        };
        let leaf_ref = &*leaf;
        let min_len = (PAR_GRAIN / SCAN_COST).clamp(1, features.len().max(1));
        let best = features
            .par_iter()
            .with_min_len(min_len)
            .filter_map(|&f| self.best_on(leaf_ref, f, &hist[f * NB..(f + 1) * NB]))
            .reduce_with(better);
        leaf.best = best;
    }

    /// Builds the histograms of `rows` over `features` (others stay zero).
    fn build_hist(
        &self,
        rows: &[u32],
        grad: &[[f32; 2]],
        features: &[usize],
        out: &mut Hist,
        scratch: &mut Vec<[f32; 2]>,
    ) {
        let nf = self.mappers.len();
        out.clear();
        out.resize(nf * NB, Sums::default());
        let src = HistSource::new(self, rows, grad, features, scratch);
        // Features are summed two at a time: one pass over the rows and their gradients
        // feeds two histograms, whose additions do not wait on each other. Small leaves are
        // not worth a parallel task per pair.
        let min_len = (PAR_GRAIN / (2 * rows.len()).max(1)).clamp(1, nf.max(1));
        out.par_chunks_mut(2 * NB)
            .with_min_len(min_len)
            .enumerate()
            .for_each(|(pair, h)| src.pair(self, pair, h));
    }

    /// After a split: the histograms of the smaller child (`small_rows`) into `small`, the
    /// larger child's as its parent's minus those (`parent` becomes the larger child's), and
    /// the best split of each child that is given, in one parallel pass over pairs of
    /// features (each pair's histograms still in cache when they are subtracted and
    /// searched). The same histograms and candidates as [`build_hist`](Self::build_hist),
    /// the subtraction and [`find_best`](Self::find_best) one after the other.
    #[allow(clippy::too_many_arguments)]
    fn split_hists(
        &self,
        small_rows: &[u32],
        grad: &[[f32; 2]],
        features: &[usize],
        small: &mut Hist,
        parent: &mut Hist,
        small_leaf: Option<&Leaf>,
        large_leaf: Option<&Leaf>,
        scratch: &mut Vec<[f32; 2]>,
    ) -> (Option<Candidate>, Option<Candidate>) {
        let nf = self.mappers.len();
        // Every active feature's bins are written below: no need to clear them first.
        small.resize(nf * NB, Sums::default());
        let src = HistSource::new(self, small_rows, grad, features, scratch);
        // A task per pair of features unless the pass is too small to share: its work is the
        // small child's rows (twice, one per feature) and, for each child searched, a scan of
        // every bin. Sizing this by rows alone kept the searches of small leaves, most of a
        // tree's splits, on one thread.
        let searched = usize::from(small_leaf.is_some()) + usize::from(large_leaf.is_some());
        let per_pair = 2 * small_rows.len() + 2 * searched * SCAN_COST;
        let min_len = (PAR_GRAIN / per_pair.max(1)).clamp(1, nf.max(1));
        let pick = |a: Option<Candidate>, b: Option<Candidate>| match (a, b) {
            (Some(a), Some(b)) => Some(better(a, b)),
            (a, b) => a.or(b),
        };
        small
            .par_chunks_mut(2 * NB)
            .zip(parent.par_chunks_mut(2 * NB))
            .with_min_len(min_len)
            .enumerate()
            .map(|(pair, (hs, hp))| {
                src.pair(self, pair, hs);
                let (mut bs, mut bl) = (None, None);
                for (k, (hs, hp)) in hs.chunks(NB).zip(hp.chunks_mut(NB)).enumerate() {
                    let f = 2 * pair + k;
                    if !src.active[f] {
                        continue;
                    }
                    for (a, b) in hp.iter_mut().zip(hs) {
                        *a = a.sub(*b);
                    }
                    if let Some(l) = small_leaf {
                        bs = pick(bs, self.best_on(l, f, hs));
                    }
                    if let Some(l) = large_leaf {
                        bl = pick(bl, self.best_on(l, f, hp));
                    }
                }
                (bs, bl)
            })
            .reduce(
                || (None, None),
                |(a0, a1), (b0, b1)| (pick(a0, b0), pick(a1, b1)),
            )
    }

    /// Grows one tree on `rows` (sorted) with gradients `grad`, trying `features`.
    /// `spare` holds histogram buffers kept between trees (allocating and faulting in fresh
    /// ones for every leaf costs more than building them).
    pub(crate) fn grow(
        &self,
        mut order: Vec<u32>,
        grad: &[[f32; 2]],
        features: &[usize],
        spare: &mut Vec<Hist>,
    ) -> Grown {
        let p = self.params;
        let mut sums = Sums::default();
        for &r in &order {
            let g = grad[r as usize];
            sums.g += g[0] as f64;
            sums.h += g[1] as f64;
            sums.n += 1.0;
        }
        let mut hist = spare.pop().unwrap_or_default();
        let mut scratch = Vec::new();
        let mut tmp = Vec::new();
        self.build_hist(&order, grad, features, &mut hist, &mut scratch);
        let mut nodes = vec![Node::Leaf {
            value: 0.0,
            id: 0,
            cover: sums.h,
        }];
        let mut rules: Vec<Option<(usize, BinRule)>> = vec![None];
        let mut root = Leaf {
            node: 0,
            rows: 0..order.len(),
            sums,
            depth: 0,
            lo: f64::NEG_INFINITY,
            hi: f64::INFINITY,
            hist: Some(hist),
            best: None,
            output: 0.0,
        };
        root.output = self.output(sums, p.lambda_l2, root.lo, root.hi);
        self.find_best(&mut root, features);
        let mut leaves = vec![root];
        let mut splits = Vec::new();

        while leaves.len() < p.num_leaves {
            // The leaf with the largest gain; ties to the earliest.
            let mut pick: Option<(usize, f64)> = None;
            for (i, l) in leaves.iter().enumerate() {
                if let Some(b) = &l.best {
                    if pick.is_none_or(|(_, g)| b.gain > g) {
                        pick = Some((i, b.gain));
                    }
                }
            }
            let Some((i, _)) = pick else { break };
            let mut leaf = leaves.swap_remove(i);
            let Some(best) = leaf.best.take() else { break };
            let f = best.feature;
            let col = self.binned.column(f);
            let nl = partition(&mut order[leaf.rows.clone()], col, &best.rule, &mut tmp);
            let lrows = leaf.rows.start..leaf.rows.start + nl;
            let rrows = leaf.rows.start + nl..leaf.rows.end;
            // Bounds for monotone constraints.
            let (mut llo, mut lhi, mut rlo, mut rhi) = (leaf.lo, leaf.hi, leaf.lo, leaf.hi);
            let mid = (best.left_out + best.right_out) / 2.0;
            match p.monotone_constraints.get(f) {
                Some(1) => {
                    lhi = lhi.min(mid);
                    rlo = rlo.max(mid);
                }
                Some(-1) => {
                    llo = llo.max(mid);
                    rhi = rhi.min(mid);
                }
                _ => {}
            }
            let (ln, rn) = (nodes.len(), nodes.len() + 1);
            nodes.push(Node::Leaf {
                value: 0.0,
                id: 0,
                cover: best.left.h,
            });
            nodes.push(Node::Leaf {
                value: 0.0,
                id: 0,
                cover: best.right.h,
            });
            rules.push(None);
            rules.push(None);
            nodes[leaf.node] = Node::Split(self.split_node(f, &best, ln, rn, leaf.sums.h));
            rules[leaf.node] = Some((f, best.rule.clone()));
            splits.push((f, best.gain));

            let parent_hist = leaf.hist.take();
            let mut small = spare.pop().unwrap_or_default();
            let left_smaller = lrows.len() <= rrows.len();
            let mut left = Leaf {
                node: ln,
                rows: lrows,
                sums: best.left,
                depth: leaf.depth + 1,
                lo: llo,
                hi: lhi,
                hist: None,
                best: None,
                output: best.left_out.clamp(llo, lhi),
            };
            let mut right = Leaf {
                node: rn,
                rows: rrows,
                sums: best.right,
                depth: leaf.depth + 1,
                lo: rlo,
                hi: rhi,
                hist: None,
                best: None,
                output: best.right_out.clamp(rlo, rhi),
            };
            let search = leaves.len() + 2 < p.num_leaves;
            let (small_leaf, large_leaf) = if left_smaller {
                (&left, &right)
            } else {
                (&right, &left)
            };
            let (large, small_best, large_best) = match parent_hist {
                Some(mut ph) => {
                    let (bs, bl) = self.split_hists(
                        &order[small_leaf.rows.clone()],
                        grad,
                        features,
                        &mut small,
                        &mut ph,
                        (search && self.searchable(small_leaf)).then_some(small_leaf),
                        (search && self.searchable(large_leaf)).then_some(large_leaf),
                        &mut scratch,
                    );
                    (Some(ph), bs, bl)
                }
                None => {
                    let rows = &order[small_leaf.rows.clone()];
                    self.build_hist(rows, grad, features, &mut small, &mut scratch);
                    (None, None, None)
                }
            };
            let (lh, rh, lb, rb) = if left_smaller {
                (Some(small), large, small_best, large_best)
            } else {
                (large, Some(small), large_best, small_best)
            };
            left.hist = lh;
            right.hist = rh;
            left.best = lb;
            right.best = rb;
            leaves.push(left);
            leaves.push(right);
        }

        // Leaf values (shrunk) and ids in node order.
        let mut leaf_rows = Vec::with_capacity(leaves.len());
        for l in &mut leaves {
            let value = l.output * p.learning_rate;
            if let Node::Leaf { value: v, .. } = &mut nodes[l.node] {
                *v = if value == 0.0 { 0.0 } else { value };
            }
            if let Some(h) = l.hist.take() {
                spare.push(h);
            }
            leaf_rows.push((l.node, l.rows.clone()));
        }
        let mut next = 0;
        for n in &mut nodes {
            if let Node::Leaf { id, .. } = n {
                *id = next;
                next += 1;
            }
        }
        Grown {
            tree: Tree { nodes },
            rules,
            order,
            leaf_rows,
            splits,
        }
    }

    fn split_node(&self, f: usize, best: &Candidate, ln: usize, rn: usize, cover: f64) -> Split {
        match (&best.rule, &self.mappers[f]) {
            (
                BinRule::Numeric {
                    threshold,
                    missing_left,
                },
                BinMapper::Numeric { upper, has_missing },
            ) => Split {
                feature: f as u32,
                test: Test::LessEqual(upper[*threshold as usize]),
                // Without missing training data, NaN reads as 0.0 (as LightGBM does).
                missing: if *has_missing {
                    Missing::Nan
                } else {
                    Missing::NanAsZero
                },
                default_left: *missing_left,
                left: ln as u32,
                right: rn as u32,
                cover,
            },
            (BinRule::Categorical { left }, BinMapper::Categorical { codes, .. }) => {
                let mut categories: Vec<u32> = (0..codes.len())
                    .filter(|&b| left[b / 64] & (1 << (b % 64)) != 0)
                    .map(|b| codes[b])
                    .collect();
                categories.sort_unstable();
                Split {
                    feature: f as u32,
                    test: Test::Categories(CategorySplit {
                        categories,
                        in_set_goes_left: true,
                        cast: CategoryCast::LightgbmTruncate,
                    }),
                    missing: Missing::Nan,
                    default_left: false,
                    left: ln as u32,
                    right: rn as u32,
                    cover,
                }
            }
            // A rule always matches its feature's mapper.
            _ => Split {
                feature: f as u32,
                test: Test::Less(f64::NEG_INFINITY),
                missing: Missing::Nan,
                default_left: false,
                left: ln as u32,
                right: rn as u32,
                cover,
            },
        }
    }

    /// The leaf value a binned row reaches in a grown tree.
    #[inline]
    pub(crate) fn route(&self, g: &Grown, binned: &Binned, row: usize) -> f64 {
        let mut i = 0usize;
        loop {
            match (&g.tree.nodes[i], &g.rules[i]) {
                (Node::Leaf { value, .. }, _) => return *value,
                (Node::Split(s), Some((f, rule))) => {
                    let mut bin = binned.column(*f)[row];
                    if bin == MISSING_BIN {
                        if let BinMapper::Numeric {
                            has_missing: false, ..
                        } = self.mappers[*f]
                        {
                            bin = self.zero_bins[*f];
                        }
                    }
                    i = if rule.goes_left(bin) { s.left } else { s.right } as usize;
                }
                (Node::Split(_), None) => return 0.0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The trainer's seeded generator: the test's histograms are the same at every run.
    use crate::train::Rng as Gen;

    /// Every candidate decided exactly, in order: the rule the fast scan keeps.
    fn reference(
        lims: &Limits,
        h: &[Sums],
        value_bins: usize,
        min_gain: f64,
    ) -> Option<(usize, bool)> {
        let score = |s: Sums| s.g * s.g / (s.h + lims.l2);
        let mut best = score(lims.total) + min_gain;
        let mut found = None;
        let mut acc = Sums::default();
        for (t, bin) in h.iter().enumerate().take(value_bins - 1) {
            acc = acc.add(*bin);
            if bin.n == 0.0 {
                continue;
            }
            for missing_left in [false, true] {
                if missing_left && lims.miss.n == 0.0 {
                    continue;
                }
                let l = if missing_left {
                    acc.add(lims.miss)
                } else {
                    acc
                };
                let r = lims.total.sub(l);
                if l.n < lims.min_n || r.n < lims.min_n || l.h < lims.min_h || r.h < lims.min_h {
                    continue;
                }
                let sc = score(l) + score(r);
                if sc > best {
                    best = sc;
                    found = Some((t, missing_left));
                }
            }
        }
        found
    }

    #[test]
    fn the_fast_scan_picks_the_split_every_exact_candidate_would() {
        let mut gen = Gen(7);
        let mut splits = 0;
        for case in 0..3000 {
            let value_bins = 2 + (gen.next() % 255) as usize;
            let mut h = vec![Sums::default(); NB];
            // Some histograms with many equal scores (ties decide by order), some sparse.
            let ties = case % 5 == 0;
            for (b, s) in h.iter_mut().enumerate() {
                if b >= value_bins && b != MISSING_BIN as usize {
                    continue;
                }
                if gen.unit() < 0.3 {
                    continue;
                }
                let n = 1 + gen.next() % 50;
                let (g, hh) = if ties {
                    (if b % 2 == 0 { 1.0 } else { -1.0 }, 0.25 * n as f64)
                } else {
                    ((gen.unit() - 0.45) * n as f64, gen.unit() * 0.25 * n as f64)
                };
                *s = Sums::new(g, hh, n as f64);
            }
            if case % 3 == 0 {
                h[MISSING_BIN as usize] = Sums::default();
            }
            let total = h.iter().fold(Sums::default(), |a, s| a.add(*s));
            let lims = Limits {
                total,
                miss: h[MISSING_BIN as usize],
                l2: [1.0, 0.0, 1e-3][case % 3],
                min_n: [1.0, 20.0, 5.0][case % 3],
                min_h: [0.0, 1e-3, 0.5][case % 3],
            };
            let min_gain = [0.0, 0.1][case % 2];
            let want = reference(&lims, &h, value_bins, min_gain);
            let got = fast_scan(&lims, &h, value_bins, min_gain).map(|(t, ml, ..)| (t, ml));
            assert_eq!(got, want, "case {case}");
            splits += usize::from(want.is_some());
        }
        assert!(splits > 1000, "only {splits} cases had a split");
    }

    #[test]
    fn the_vector_approximation_is_the_portable_one() {
        let mut gen = Gen(11);
        let lims = Limits {
            total: Sums::new(3.0, 40.0, 400.0),
            miss: Sums::new(0.5, 2.0, 9.0),
            l2: 1.0,
            min_n: 20.0,
            min_h: 1e-3,
        };
        let k = 253;
        let mut acc = (0.0, 0.0, 0.0);
        let (mut g, mut h, mut n) = (vec![], vec![], vec![]);
        for _ in 0..k {
            acc = (
                acc.0 + gen.unit() - 0.5,
                acc.1 + gen.unit() * 0.15,
                acc.2 + (gen.next() % 3) as f64,
            );
            g.push(acc.0);
            h.push(acc.1);
            n.push(acc.2);
        }
        for missing_left in [false, true] {
            let runs = Runs {
                lims: &lims,
                missing_left,
                g: &g,
                h: &h,
                n: &n,
            };
            let (mut a, mut b) = (vec![0.0; k], vec![0.0; k]);
            let ta = approximate(&runs, &mut a);
            let tb = approximate_portable(&runs, &mut b);
            assert_eq!(ta.to_bits(), tb.to_bits());
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(a.iter().any(|x| x.is_finite()) && a.iter().any(|x| x.is_infinite()));
        }
    }
}
