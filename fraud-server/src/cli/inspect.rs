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
    let artifact = super::load_model(&a.model)?;
    let e = &artifact.ensemble;
    let s = e.stats();
    let fingerprint = artifact.fingerprint()?;
    if a.json {
        let out = serde_json::json!({
            "metadata": artifact.metadata,
            "fingerprint": fingerprint,
            "features": e.features.iter().map(|f| serde_json::json!({
                "name": f.name,
                "kind": match f.kind { FeatureKind::Numeric => "numeric", FeatureKind::Categorical => "categorical" },
            })).collect::<Vec<_>>(),
            "base_margin": e.base_margin,
            "stats": s,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let m = &artifact.metadata;
    println!("model:        {}", a.model.display());
    println!("fingerprint:  {fingerprint}");
    println!("source:       {}", m.source);
    println!("created:      {}", m.created);
    if let Some(d) = &m.description {
        println!("description:  {d}");
    }
    println!("objective:    binary logistic");
    println!("base margin:  {}", e.base_margin);
    println!("trees:        {}", s.trees);
    println!(
        "leaves:       {} (at most {} in one tree)",
        s.leaves, s.max_leaves
    );
    println!(
        "splits:       {} ({} categorical)",
        s.splits, s.categorical_splits
    );
    println!(
        "depth:        max {}, mean per tree {:.2}, mean per leaf {:.2}",
        s.max_depth, s.mean_tree_depth, s.mean_leaf_depth
    );
    println!("features:     {}", e.num_features());
    for (i, f) in e.features.iter().enumerate() {
        let kind = match f.kind {
            FeatureKind::Numeric => "numeric",
            FeatureKind::Categorical => "categorical",
        };
        println!("  {i:>4}  {:<32} {kind}", f.name);
    }
    if let Some(t) = &m.training {
        println!("training:     {}", serde_json::to_string(t)?);
    }
    if !m.attributes.is_empty() {
        println!("attributes:");
        for (k, v) in &m.attributes {
            let v: String = v.chars().take(120).collect();
            println!("  {k} = {v}");
        }
    }
    Ok(())
}
