//! `fraud report`: an evaluation an analyst can look at. Writes, into a directory, SVG charts
//! (ROC curve, precision-recall curve, score distribution by class, feature importance) and a
//! Markdown summary (metrics, recall at fixed false-positive rates, recall per fraud scenario,
//! the score-threshold table), plus the same numbers as `evaluation.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use super::evaluate::{self, Columns, Scored};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    io: super::ModelInput,
    /// Column holding the 0/1 label.
    #[arg(long)]
    label: String,
    #[command(flatten)]
    columns: Columns,
    /// Directory to write the report into (created if needed).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

const SIZE: (u32, u32) = (720, 540);

/// Points of a curve.
type Curve = Vec<(f64, f64)>;
/// A named, coloured series of points.
type Series<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw chart: {e:?}")
}

/// Points of the ROC curve (fpr, tpr) and PR curve (recall, precision), at most ~2,000 each.
fn curves(probs: &[f64], labels: &[f64]) -> (Curve, Curve) {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let pos = labels.iter().filter(|&&y| y == 1.0).count().max(1) as f64;
    let neg = (labels.len() as f64 - pos).max(1.0);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut roc = vec![(0.0, 0.0)];
    let mut pr = Vec::new();
    let step = (order.len() / 2_000).max(1);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] == 1.0 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = order.get(k + 1).is_none_or(|&j| probs[j] != probs[i]);
        if last_of_tie && (k % step == 0 || k + 1 == order.len()) {
            roc.push((fp / neg, tp / pos));
            pr.push((tp / pos, tp / (tp + fp)));
        }
    }
    roc.push((1.0, 1.0));
    (roc, pr)
}

fn line_chart(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    xy_chart(path, title, axes, (1.0, 1.0001), series)
}

/// Lines over `0..x_max` and `0..y_max`.
fn xy_chart(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    (x_max, y_max): (f64, f64),
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(54)
        .build_cartesian_2d(0f64..x_max.max(1e-9), 0f64..y_max.max(1e-9))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .draw()
        .map_err(plot_err)?;
    for (name, points, color) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Share of each class per score bin (50 bins), on a log scale.
fn score_chart(path: &Path, probs: &[f64], labels: &[f64]) -> anyhow::Result<()> {
    const BINS: usize = 50;
    let mut counts = [[0usize; BINS]; 2];
    for (p, y) in probs.iter().zip(labels) {
        let b = ((p * BINS as f64) as usize).min(BINS - 1);
        counts[usize::from(*y == 1.0)][b] += 1;
    }
    let totals = [
        counts[0].iter().sum::<usize>().max(1) as f64,
        counts[1].iter().sum::<usize>().max(1) as f64,
    ];
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Score distribution by class", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..1f64, (1e-6f64..1f64).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("score (probability of fraud)")
        .y_desc("share of the class")
        .draw()
        .map_err(plot_err)?;
    for (class, name, color) in [(0usize, "genuine", BLUE), (1, "fraud", RED)] {
        let pts: Vec<(f64, f64)> = (0..BINS)
            .map(|b| {
                let share = counts[class][b] as f64 / totals[class];
                ((b as f64 + 0.5) / BINS as f64, share.max(1e-6))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Feature importance: total split gain from the training metadata, else split counts.
fn importance(artifact: &fraud_core::model::Artifact) -> (String, Vec<(String, f64)>) {
    let from_meta = artifact
        .metadata
        .training
        .as_ref()
        .and_then(|t| t.get("importance"))
        .and_then(|v| v.as_array())
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    Some((
                        r.get("feature")?.as_str()?.to_string(),
                        r.get("gain")?.as_f64()?,
                    ))
                })
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty());
    let (what, mut rows) = match from_meta {
        Some(v) => ("total gain".to_string(), v),
        None => {
            let names = artifact.ensemble.feature_names();
            let mut counts = vec![0.0; names.len()];
            for t in &artifact.ensemble.trees {
                for n in &t.nodes {
                    if let fraud_core::model::Node::Split(s) = n {
                        if let Some(c) = counts.get_mut(s.feature as usize) {
                            *c += 1.0;
                        }
                    }
                }
            }
            let rows = names.iter().map(|s| s.to_string()).zip(counts).collect();
            ("number of splits".to_string(), rows)
        }
    };
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.retain(|r| r.1 > 0.0);
    rows.truncate(20);
    (what, rows)
}

fn importance_chart(path: &Path, what: &str, rows: &[(String, f64)]) -> anyhow::Result<()> {
    bar_chart(path, &format!("Feature importance ({what})"), what, rows)
}

/// Horizontal bars, largest first as given.
fn bar_chart(path: &Path, title: &str, what: &str, rows: &[(String, f64)]) -> anyhow::Result<()> {
    let height = 120 + 24 * rows.len().max(1) as u32;
    let root = SVGBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-12);
    let n = rows.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d(0f64..max * 1.05, (0..n).into_segmented())
        .map_err(plot_err)?;
    let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => n
                .checked_sub(1 + *i)
                .and_then(|k| labels.get(k).cloned())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(what)
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let y = n - 1 - i;
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(y)),
                    (r.1, SegmentValue::Exact(y + 1)),
                ],
                RGBColor(70, 110, 180).filled(),
            )
        }))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn summary(
    s: &Scored,
    json: &serde_json::Value,
    imp: &(String, Vec<(String, f64)>),
    k: usize,
) -> String {
    let num = |key: &str| json.get(key).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut m = String::new();
    let _ = writeln!(m, "# Model evaluation\n");
    let _ = writeln!(
        m,
        "Model: `{}`, created {}. Rows: {}, frauds: {} ({:.3}%).\n",
        s.artifact.metadata.source,
        s.artifact.metadata.created,
        s.labels.len(),
        num("positives"),
        100.0 * num("positives") / s.labels.len().max(1) as f64
    );
    let _ = writeln!(m, "| metric | value |\n| --- | --- |");
    for (name, key) in [
        ("ROC-AUC", "roc_auc".to_string()),
        ("Average precision", "average_precision".to_string()),
        ("Log-loss", "log_loss".to_string()),
        ("Precision at top 100", "precision_at_100".to_string()),
        (
            "Card precision at top-k per day (the Handbook's: detected cards removed)",
            format!("card_precision_at_{k}_per_day"),
        ),
        (
            "Card precision at top-k per day, detected cards kept",
            format!("card_precision_at_{k}_per_day_keeping_detected"),
        ),
    ] {
        if json.get(&key).is_some() {
            let _ = writeln!(m, "| {name} | {:.4} |", num(&key));
        }
    }
    let _ = writeln!(m, "\n## Recall at a fixed false-positive rate\n");
    let _ = writeln!(m, "| false-positive rate | recall |\n| --- | --- |");
    if let Some(map) = json.get("recall_at_fpr").and_then(|v| v.as_object()) {
        for (f, r) in map {
            let f: f64 = f.parse().unwrap_or(f64::NAN);
            let _ = writeln!(
                m,
                "| {:.1}% | {:.4} |",
                100.0 * f,
                r.as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(rows) = json
        .get("recall_by_scenario_at_1pct_fpr")
        .and_then(|v| v.as_array())
    {
        let _ = writeln!(
            m,
            "\n## Recall per fraud scenario (1% false-positive rate)\n"
        );
        let _ = writeln!(
            m,
            "| scenario | frauds | caught | recall |\n| --- | --- | --- | --- |"
        );
        for r in rows {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {:.4} |",
                r["scenario"].as_str().unwrap_or(""),
                r["frauds"],
                r["caught"],
                r["recall"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    let _ = writeln!(m, "\n## Score thresholds\n");
    let _ = writeln!(
        m,
        "Flag (decline or review) every transaction scored at or above the threshold.\n"
    );
    let _ = writeln!(
        m,
        "| threshold | flagged | fraud caught | precision | false positives per 1,000 |\n| --- | --- | --- | --- | --- |"
    );
    if let Some(rows) = json.get("thresholds").and_then(|v| v.as_array()) {
        for r in rows {
            let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                m,
                "| {:.2} | {:.3}% | {:.2}% | {:.2}% | {:.2} |",
                f("threshold"),
                100.0 * f("flagged_share"),
                100.0 * f("fraud_caught"),
                100.0 * f("precision"),
                f("false_positives_per_1000")
            );
        }
    }
    let _ = writeln!(m, "\n## Charts\n");
    for (file, title) in [
        ("roc.svg", "ROC curve"),
        ("precision_recall.svg", "Precision-recall curve"),
        ("scores.svg", "Score distribution by class"),
        ("importance.svg", "Feature importance"),
    ] {
        let _ = writeln!(m, "![{title}]({file})\n");
    }
    if !imp.1.is_empty() {
        let _ = writeln!(
            m,
            "Top features by {}: {}.",
            imp.0,
            imp.1
                .iter()
                .take(5)
                .map(|r| format!("`{}`", r.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    m
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let scored = evaluate::score(&a.io, &a.label, &a.columns)?;
    let json = evaluate::evaluation(&scored, a.columns.k)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create {}", a.output.display()))?;
    let (roc, pr) = curves(&scored.probs, &scored.labels);
    let auc = json["roc_auc"].as_f64().unwrap_or(f64::NAN);
    let ap = json["average_precision"].as_f64().unwrap_or(f64::NAN);
    let diagonal = [(0.0, 0.0), (1.0, 1.0)];
    line_chart(
        &a.output.join("roc.svg"),
        "ROC curve",
        ("false-positive rate", "true-positive rate (recall)"),
        &[
            (
                &format!("model (AUC {auc:.4})"),
                &roc,
                RGBColor(200, 40, 40),
            ),
            ("random", &diagonal, RGBColor(150, 150, 150)),
        ],
    )?;
    let prevalence = json["positives"].as_f64().unwrap_or(0.0) / scored.labels.len().max(1) as f64;
    let base = [(0.0, prevalence), (1.0, prevalence)];
    line_chart(
        &a.output.join("precision_recall.svg"),
        "Precision-recall curve",
        ("recall", "precision"),
        &[
            (&format!("model (AP {ap:.4})"), &pr, RGBColor(40, 80, 200)),
            ("fraud rate", &base, RGBColor(150, 150, 150)),
        ],
    )?;
    score_chart(&a.output.join("scores.svg"), &scored.probs, &scored.labels)?;
    let imp = importance(&scored.artifact);
    importance_chart(&a.output.join("importance.svg"), &imp.0, &imp.1)?;
    std::fs::write(
        a.output.join("evaluation.json"),
        format!("{}\n", serde_json::to_string_pretty(&json)?),
    )?;
    std::fs::write(
        a.output.join("summary.md"),
        summary(&scored, &json, &imp, a.columns.k),
    )?;
    super::emit(&format!(
        "wrote summary.md, evaluation.json, roc.svg, precision_recall.svg, scores.svg and importance.svg to {}\n",
        a.output.display()
    ))
}

/// The charts of `fraud backtest --report`: decisions per day, the threshold sweep and the
/// rule overlap, as SVG files in `dir`.
pub fn backtest_charts(dir: &Path, s: &fraud_core::backtest::Summary) -> anyhow::Result<()> {
    let per_day = |f: &dyn Fn(&fraud_core::backtest::Day) -> u64| -> Curve {
        s.days
            .iter()
            .enumerate()
            .map(|(i, d)| (i as f64, f(d) as f64))
            .collect()
    };
    let review = per_day(&|d| d.decisions.review);
    let decline = per_day(&|d| d.decisions.decline);
    let fraud = per_day(&|d| d.fraud);
    let top = [&review, &decline, &fraud]
        .iter()
        .flat_map(|c| c.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    xy_chart(
        &dir.join("decisions_per_day.svg"),
        "Decisions per day",
        ("day", "transactions"),
        ((s.days.len().max(2) - 1) as f64, top * 1.05),
        &[
            ("review", &review, RGBColor(230, 160, 40)),
            ("decline", &decline, RGBColor(200, 50, 50)),
            ("labelled fraud", &fraud, RGBColor(70, 110, 180)),
        ],
    )?;
    let recall: Curve = s
        .threshold_sweep
        .iter()
        .map(|p| (p.threshold, p.recall))
        .collect();
    let fpr: Curve = s
        .threshold_sweep
        .iter()
        .map(|p| (p.threshold, p.false_positives_per_1000_legit / 1000.0))
        .collect();
    line_chart(
        &dir.join("threshold_sweep.svg"),
        "Score threshold sweep (rules and lists aside)",
        ("threshold", "share"),
        &[
            (
                "recall (fraud at or above)",
                &recall,
                RGBColor(70, 110, 180),
            ),
            ("legitimate at or above", &fpr, RGBColor(200, 50, 50)),
        ],
    )?;
    let mut pairs: Vec<(String, f64)> = s
        .overlap
        .iter()
        .flat_map(|(a, row)| {
            row.iter()
                .map(move |(b, n)| (format!("{a} & {b}"), *n as f64))
        })
        .collect();
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    pairs.truncate(20);
    bar_chart(
        &dir.join("rule_overlap.svg"),
        "Rule overlap",
        "transactions where both fired",
        &pairs,
    )
}
