//! Property test: the compiled model routes every row exactly as the reference semantics of
//! the ensemble do, for random trees mixing every kind of split, missing-value rule and
//! threshold edge case, and rows full of NaN, infinities, signed zeros and values one ulp from
//! a threshold. Single-row, batch and leaf paths, and every batch kernel (the walk and the bit
//! vectors with each instruction set this CPU runs), and the margin the TreeSHAP explainer
//! finds from its split directions, must all agree bit for bit.

#![allow(clippy::unwrap_used)]

use fraud_core::model::{
    Accumulation, CategoryCast, CategorySplit, Ensemble, Explainer, Feature, FeatureKind, Missing,
    Node, Objective, Split, Test, Tree,
};
use fraud_core::{BatchKernel, CompiledModel};
use proptest::prelude::*;

const NF: usize = 4;

fn special_values() -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        2.5,
        1e-35,
        -1e-35,
        1e-36,
        -1e-36,
        1.000_000_018_002_509_5e-35,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        -f64::MAX,
        3.0,
        7.0,
        0.1,
        (0.1f32) as f64,
        16_777_216.0,
        -0.5,
    ];
    let more: Vec<f64> = v
        .iter()
        .flat_map(|x| [x.next_up(), x.next_down()])
        .collect();
    v.extend(more.into_iter().filter(|x| !x.is_nan()));
    v
}

fn threshold() -> impl Strategy<Value = f64> {
    prop::sample::select(special_values())
}

fn test_strategy() -> impl Strategy<Value = Test> {
    prop_oneof![
        threshold().prop_map(Test::Less),
        threshold().prop_map(Test::LessEqual),
        threshold().prop_map(|t| Test::LessF32(t as f32)),
        (
            prop::collection::btree_set(0u32..70, 0..6),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(set, left, xgb)| Test::Categories(CategorySplit {
                categories: set.into_iter().collect(),
                in_set_goes_left: left,
                cast: if xgb {
                    CategoryCast::XgboostF32
                } else {
                    CategoryCast::LightgbmTruncate
                },
            })),
    ]
}

#[derive(Debug, Clone)]
struct SplitSpec {
    feature: u32,
    test: Test,
    missing: Missing,
    default_left: bool,
}

fn split_strategy() -> impl Strategy<Value = SplitSpec> {
    (
        0..NF as u32,
        test_strategy(),
        prop_oneof![
            Just(Missing::Nan),
            Just(Missing::ZeroOrNan),
            Just(Missing::NanAsZero)
        ],
        any::<bool>(),
    )
        .prop_map(|(feature, test, missing, default_left)| SplitSpec {
            feature,
            test,
            missing,
            default_left,
        })
}

/// Builds a tree by splitting leaves chosen by `picks` with the given splits.
fn build_tree(splits: &[SplitSpec], picks: &[usize], values: &[f64]) -> Tree {
    let mut nodes = vec![Node::Leaf {
        value: values[0],
        id: 0,
        cover: 1.0,
    }];
    let mut leaves = vec![0usize];
    for (k, s) in splits.iter().enumerate() {
        let at = leaves.swap_remove(picks[k] % leaves.len());
        let (l, r) = (nodes.len(), nodes.len() + 1);
        let v = |i: usize| values[(2 * k + i) % values.len()];
        nodes.push(Node::Leaf {
            value: v(1),
            id: l as u32,
            cover: 1.0,
        });
        nodes.push(Node::Leaf {
            value: v(2),
            id: r as u32,
            cover: (k % 3) as f64,
        });
        nodes[at] = Node::Split(Split {
            feature: s.feature,
            test: s.test.clone(),
            missing: s.missing,
            default_left: s.default_left,
            left: l as u32,
            right: r as u32,
            cover: 2.0,
        });
        leaves.push(l);
        leaves.push(r);
    }
    Tree { nodes }
}

/// Ensembles of `trees` trees of `splits` splits each.
fn ensemble_strategy_sized(
    trees: std::ops::Range<usize>,
    splits: std::ops::Range<usize>,
) -> impl Strategy<Value = Ensemble> {
    let max = splits.end;
    let tree = (
        prop::collection::vec(split_strategy(), splits),
        prop::collection::vec(any::<usize>(), max),
        prop::collection::vec(-2.0f64..2.0, 8),
    )
        .prop_map(|(splits, picks, values)| build_tree(&splits, &picks, &values));
    (
        prop::collection::vec(tree, trees),
        any::<bool>(),
        any::<bool>(),
        -1.0f64..1.0,
    )
        .prop_map(|(trees, f32acc, avg, base)| Ensemble {
            features: (0..NF)
                .map(|i| Feature {
                    name: format!("f{i}"),
                    kind: FeatureKind::Numeric,
                })
                .collect(),
            trees,
            base_margin: base,
            objective: Objective::Logistic { scale: 1.0 },
            accumulation: if f32acc {
                Accumulation::F32
            } else {
                Accumulation::F64
            },
            average_output: avg,
            linear: None,
        })
}

fn ensemble_strategy() -> impl Strategy<Value = Ensemble> {
    ensemble_strategy_sized(1..12, 0..14)
}

/// The model compiled once per batch kernel this CPU runs.
fn every_kernel(model: &CompiledModel) -> Vec<CompiledModel> {
    [
        BatchKernel::Walk,
        BatchKernel::BitVector,
        BatchKernel::BitVectorAvx2,
        BatchKernel::BitVectorPortable,
    ]
    .into_iter()
    .filter_map(|k| {
        let mut m = model.clone();
        m.set_batch_kernel(k).ok().map(|()| m)
    })
    .collect()
}

/// The margins of the `n` rows in `flat`, in parallel batches and on the calling thread.
fn batch_margins(m: &CompiledModel, flat: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut batch = vec![0.0; n];
    m.predict_margin_batch(flat, &mut batch).unwrap();
    let mut serial = vec![0.0; n];
    m.predict_margin_batch_serial(flat, &mut serial).unwrap();
    (batch, serial)
}

/// Every kernel's batch margins are the reference's bits.
fn batches_equal_reference(e: &Ensemble, rows: &[Vec<f64>]) -> Result<(), TestCaseError> {
    let model = CompiledModel::new(e).unwrap();
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let kernels = every_kernel(&model);
    prop_assert!(
        kernels.len() >= 3,
        "walk, bit vectors and portable bit vectors"
    );
    for m in kernels {
        let (batch, serial) = batch_margins(&m, &flat, rows.len());
        for (r, row) in rows.iter().enumerate() {
            let reference = e.reference_margin(row).to_bits();
            let kernel = m.batch_kernel();
            prop_assert_eq!(batch[r].to_bits(), reference, "{:?} row {:?}", kernel, row);
            prop_assert_eq!(serial[r].to_bits(), reference, "{:?} row {:?}", kernel, row);
            let single = m.predict_margin(row).unwrap().to_bits();
            prop_assert_eq!(single, reference, "{:?} single row {:?}", kernel, row);
        }
    }
    // The explainer finds the margin from the split directions its tables compute: the
    // reference's bits too (covers, which TreeSHAP needs and margins ignore, made positive).
    let mut covered = e.clone();
    for node in covered.trees.iter_mut().flat_map(|t| t.nodes.iter_mut()) {
        match node {
            Node::Leaf { cover, .. } => *cover = 1.0,
            Node::Split(s) => s.cover = 2.0,
        }
    }
    let explainer = Explainer::new(&covered).unwrap();
    let mut phi = vec![0.0; explainer.width()];
    for row in rows {
        let margin = explainer.contributions_and_margin(row, &mut phi).unwrap();
        let reference = e.reference_margin(row).to_bits();
        prop_assert_eq!(margin.to_bits(), reference, "explainer row {:?}", row);
    }
    Ok(())
}

fn row_strategy() -> impl Strategy<Value = Vec<f64>> {
    let mut pool = special_values();
    pool.push(f64::NAN);
    pool.extend([2.0, 5.0, 63.0, 64.0, 65.9, 69.0, 1e10, -3e9]);
    prop::collection::vec(prop::sample::select(pool), NF)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn compiled_equals_reference(e in ensemble_strategy(), rows in prop::collection::vec(row_strategy(), 1..40)) {
        e.validate().unwrap();
        let model = CompiledModel::new(&e).unwrap();
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        let mut batch = vec![0.0; rows.len()];
        model.predict_margin_batch(&flat, &mut batch).unwrap();
        let mut serial = vec![0.0; rows.len()];
        model.predict_margin_batch_serial(&flat, &mut serial).unwrap();
        for (r, row) in rows.iter().enumerate() {
            let reference = e.reference_margin(row);
            let single = model.predict_margin(row).unwrap();
            prop_assert_eq!(single.to_bits(), reference.to_bits(), "row {:?}", row);
            prop_assert_eq!(batch[r].to_bits(), reference.to_bits(), "batch row {:?}", row);
            prop_assert_eq!(serial[r].to_bits(), reference.to_bits());
            let leaves: Vec<u32> = e.trees.iter().map(|t| t.leaf_for(row).1).collect();
            prop_assert_eq!(model.predict_leaves(row).unwrap(), leaves);
        }
        batches_equal_reference(&e, &rows)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Trees of up to 181 leaves: bit vectors of several words, tests whose leaves span words.
    #[test]
    fn large_trees_equal_reference_in_every_kernel(
        e in ensemble_strategy_sized(1..4, 60..180),
        rows in prop::collection::vec(row_strategy(), 1..40),
    ) {
        batches_equal_reference(&e, &rows)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    /// Models of several tiles (batches walk the trees tile by tile, a group of row blocks
    /// at a time) and batches of more rows than a group or a parallel task holds: each row
    /// still adds its trees in model order, the reference's bits.
    #[test]
    fn tiled_batches_equal_reference_in_every_kernel(
        e in ensemble_strategy_sized(60..80, 60..120),
        rows in prop::collection::vec(row_strategy(), 1100..2600),
    ) {
        let model = CompiledModel::new(&e).unwrap();
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        let reference: Vec<u64> = rows.iter().map(|r| e.reference_margin(r).to_bits()).collect();
        for m in every_kernel(&model) {
            let (batch, serial) = batch_margins(&m, &flat, rows.len());
            for (r, want) in reference.iter().enumerate() {
                prop_assert_eq!(batch[r].to_bits(), *want, "{:?} row {}", m.batch_kernel(), r);
                prop_assert_eq!(serial[r].to_bits(), *want, "{:?} row {}", m.batch_kernel(), r);
            }
        }
    }
}

#[test]
fn wrong_row_lengths_are_errors_not_panics() {
    let e = Ensemble {
        features: vec![Feature {
            name: "a".into(),
            kind: FeatureKind::Numeric,
        }],
        trees: vec![Tree::leaf(0.5)],
        base_margin: 0.0,
        objective: Objective::Logistic { scale: 1.0 },
        accumulation: Accumulation::F64,
        average_output: false,
        linear: None,
    };
    let m = CompiledModel::new(&e).unwrap();
    assert!(m.predict_margin(&[]).is_err());
    assert!(m.predict_margin(&[1.0, 2.0]).is_err());
    let mut out = vec![0.0; 2];
    assert!(m.predict_margin_batch(&[1.0], &mut out).is_err());
    assert_eq!(
        m.predict_proba(&[1.0]).unwrap(),
        1.0 / (1.0 + (-0.5f64).exp())
    );
}

#[test]
fn huge_category_codes_keep_the_walk() {
    // One split on a code near the largest allowed: bit vectors would index 16 million codes.
    let split = Split {
        feature: 0,
        test: Test::Categories(CategorySplit {
            categories: vec![3, 16_000_000],
            in_set_goes_left: true,
            cast: CategoryCast::LightgbmTruncate,
        }),
        missing: Missing::Nan,
        default_left: false,
        left: 1,
        right: 2,
        cover: 2.0,
    };
    let leaf = |value: f64, id: u32| Node::Leaf {
        value,
        id,
        cover: 1.0,
    };
    let tree = Tree {
        nodes: vec![Node::Split(split), leaf(1.0, 1), leaf(-1.0, 2)],
    };
    let e = Ensemble {
        features: vec![Feature {
            name: "c".into(),
            kind: FeatureKind::Numeric,
        }],
        trees: vec![tree; 50],
        base_margin: 0.0,
        objective: Objective::Logistic { scale: 1.0 },
        accumulation: Accumulation::F64,
        average_output: false,
        linear: None,
    };
    let mut m = CompiledModel::new(&e).unwrap();
    assert_eq!(m.batch_kernel(), BatchKernel::Walk);
    assert!(m.set_batch_kernel(BatchKernel::BitVector).is_err());
    let mut out = vec![0.0; 3];
    m.predict_margin_batch(&[3.0, 16_000_000.0, 4.0], &mut out)
        .unwrap();
    assert_eq!(out, vec![50.0, 50.0, -50.0]);
}
