//! `fraud inspect`: metadata, features, tree count and depth statistics of a model.

use std::path::PathBuf;

use fraud_core::model::FeatureKind;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model artifact.
    model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    use std::fmt::Write;
    let mut out = String::new();
    let artifact = super::load_model(&a.model)?;
    let e = &artifact.ensemble;
    let s = e.stats();
    let fingerprint = artifact.fingerprint()?;
    if a.json {
        let report = serde_json::json!({
            "metadata": artifact.metadata,
            "fingerprint": fingerprint,
            "features": e.features.iter().map(|f| serde_json::json!({
                "name": f.name,
                "kind": match f.kind { FeatureKind::Numeric => "numeric", FeatureKind::Categorical => "categorical" },
            })).collect::<Vec<_>>(),
            "base_margin": e.base_margin,
            "stats": s,
        });
        return super::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    }
    let m = &artifact.metadata;
    writeln!(out, "model:        {}", a.model.display())?;
    writeln!(out, "fingerprint:  {fingerprint}")?;
    writeln!(out, "source:       {}", m.source)?;
    writeln!(out, "created:      {}", m.created)?;
    if let Some(d) = &m.description {
        writeln!(out, "description:  {d}")?;
    }
    writeln!(out, "objective:    binary logistic")?;
    writeln!(out, "base margin:  {}", e.base_margin)?;
    writeln!(out, "trees:        {}", s.trees)?;
    writeln!(
        out,
        "leaves:       {} (at most {} in one tree)",
        s.leaves, s.max_leaves
    )?;
    writeln!(
        out,
        "splits:       {} ({} categorical)",
        s.splits, s.categorical_splits
    )?;
    writeln!(
        out,
        "depth:        max {}, mean per tree {:.2}, mean per leaf {:.2}",
        s.max_depth, s.mean_tree_depth, s.mean_leaf_depth
    )?;
    if let Some(l) = &e.linear {
        writeln!(
            out,
            "linear term:  {} weights (logistic regression)",
            l.weights.len()
        )?;
    }
    writeln!(out, "features:     {}", e.num_features())?;
    for (i, f) in e.features.iter().enumerate() {
        let kind = match f.kind {
            FeatureKind::Numeric => "numeric",
            FeatureKind::Categorical => "categorical",
        };
        writeln!(out, "  {i:>4}  {:<32} {kind}", f.name)?;
    }
    if let Some(w) = m
        .attributes
        .get(fraud_core::model::xgboost::ITERATIONS_ATTRIBUTE)
    {
        writeln!(out, "imported:     {w}")?;
    }
    if let Some(t) = &m.training {
        writeln!(out, "training:     {}", serde_json::to_string(t)?)?;
    }
    if !m.attributes.is_empty() {
        writeln!(out, "attributes:")?;
        for (k, v) in &m.attributes {
            let v: String = v.chars().take(120).collect();
            writeln!(out, "  {k} = {v}")?;
        }
    }
    super::emit(&out)
}
