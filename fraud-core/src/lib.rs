//! # fraud-core
//!
//! The engine of the fraud scoring system: it holds gradient-boosted tree models and scores
//! rows with them, exactly as the library that trained them would, and faster; it trains
//! such models (`train`), measures them ([`eval`]), validates and protects incoming
//! transactions ([`transaction`], [`pii`]) and decides on them ([`decision`]).
//!
//! No HTTP, no Python and no async runtime live here; the server, the Python package, the
//! dataset tools and the benchmarks all build on this crate.
//!
//! From a transaction to a verdict: a model, a policy (thresholds, CEL rules, lists) and a
//! [`decision::Scorer`], which computes the transaction's features with entity state, scores
//! them, explains the score with TreeSHAP and decides, exactly as the service does.
//!
//! ```
//! use fraud_core::decision::{PolicyConfig, Scorer};
//! use fraud_core::model::lightgbm;
//!
//! // A one-split model on the amount's logarithm (a real one comes from `Artifact::load`).
//! let artifact = lightgbm::import_str("tree\nversion=v4\nnum_class=1\n\
//!     num_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=0\nobjective=binary sigmoid:1\n\
//!     feature_names=log_amount\nfeature_infos=[0:10]\n\nTree=0\nnum_leaves=2\nnum_cat=0\n\
//!     split_feature=0\nthreshold=5\ndecision_type=2\nleft_child=-1\nright_child=-2\n\
//!     leaf_value=-3 2\nleaf_weight=10 10\nleaf_count=10 10\ninternal_value=0\n\
//!     internal_weight=20\ninternal_count=20\nis_linear=0\nshrinkage=1\n\n\nend of trees\n")?;
//! let policy = PolicyConfig::from_toml("[thresholds]\nreview = 0.3\ndecline = 0.8\n")?;
//! let scorer = Scorer::builder(artifact).policy(policy).build()?;
//! let verdict = scorer.score_json(br#"{"transaction_id":"t1","timestamp":"2026-01-01T10:00:00Z",
//!     "amount":"950.00","currency":"EUR","card_number":"4111111111111111"}"#)?;
//! assert_eq!(verdict.decision.name(), "decline");
//! assert_eq!(verdict.card_mask.as_deref(), Some("411111******1111"));
//! assert_eq!(verdict.reasons[0].feature, "log_amount");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backtest;
pub mod data;
pub mod decision;
pub mod eval;
pub mod features;
pub mod files;
pub mod hex;
pub mod json;
pub mod model;
pub mod pii;
#[cfg(feature = "rules")]
pub mod rulecode;
#[cfg(feature = "arrow")]
pub mod table;
#[cfg(feature = "train")]
pub mod train;
pub mod transaction;

pub use model::{
    Artifact, ArtifactError, BatchKernel, CompiledModel, Ensemble, ImportError, ModelError,
};

/// Hints the CPU to load the cache line holding `p`; never faults, whatever `p` is.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a hint: it reads
        // nothing and cannot fault, even for an address outside any allocation.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks Linux to back the whole 2 MiB pages inside `buf` with transparent huge pages (where
/// the system leaves it to each program, as Debian does): a large freshly allocated buffer
/// then costs one page fault per 2 MiB instead of one per 4 KiB when first written. Only a
/// hint: elsewhere, or when refused, nothing changes.
pub(crate) fn huge_pages<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (buf.as_mut_ptr() as usize).next_multiple_of(HUGE);
        let end = (buf.as_mut_ptr() as usize + std::mem::size_of_val(buf)) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside `buf`, which this function borrows mutably; the
            // advice only changes how the kernel backs the pages, never their contents.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}
