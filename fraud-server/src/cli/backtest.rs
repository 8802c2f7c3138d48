//! `fraud backtest`: what a model and a policy would have decided on a past history, and
//! what that would have caught, against a baseline when one is given. The history is
//! replayed in time order through point-in-time features, the model and the policy
//! (`fraud_core::backtest`): the service's decisions, replayed. Writes the summary as JSON,
//! optionally each transaction's decision as CSV and a Markdown report with charts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use fraud_core::backtest::{self, Backtest, Outcome, Prepared, Summary};
use fraud_core::decision::{Policy, PolicyConfig};
use fraud_core::features::FeatureSpec;
use fraud_core::model::Artifact;
use fraud_core::transaction::Transaction;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// History: CSV, or Parquet (`.parquet`) or Arrow IPC (`.arrow`, `.feather`), with the
    /// transaction's JSON field names as columns (as `fraud features` reads it).
    #[arg(long)]
    history: PathBuf,
    /// The model to backtest.
    #[arg(long)]
    model: PathBuf,
    /// Its policy: a TOML file with `[thresholds]`, `[[rules]]` and `[lists]` (the service's
    /// configuration file will do). Default: the service's defaults (review at 0.3, decline
    /// at 0.7, no rules, no lists).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The baseline's policy (default: `--policy`'s when only a baseline model is given).
    #[arg(long)]
    baseline_policy: Option<PathBuf>,
    /// The baseline's model (default: `--model` when only a baseline policy is given).
    #[arg(long)]
    baseline_model: Option<PathBuf>,
    /// How the history is read, and its labels (`--labels`: they give the outcomes, and feed
    /// label-aware features from the time they were reported).
    #[command(flatten)]
    input: super::features::HistoryInput,
    /// Where to write the summary (JSON).
    #[arg(long)]
    output: PathBuf,
    /// Also write each transaction's decision here (CSV: `transaction_id`, `timestamp`,
    /// `decision`, `score`, `rules_fired` separated by `;`, and `baseline_decision`).
    #[arg(long)]
    decisions: Option<PathBuf>,
    /// Also write the summary as Markdown with charts (decisions per day, rule overlap,
    /// threshold sweep) into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Feature spec (TOML) instead of the one stored in the model (as the service's
    /// `feature_spec` setting).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn load(path: &Path, spec: Option<&FeatureSpec>) -> anyhow::Result<Prepared> {
    let artifact =
        Artifact::load(path).with_context(|| format!("cannot load model {}", path.display()))?;
    Prepared::new(&artifact, spec.cloned()).with_context(|| format!("model {}", path.display()))
}

fn policy(path: Option<&Path>, names: &[String]) -> anyhow::Result<Policy> {
    let cfg = match path {
        Some(p) => PolicyConfig::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("policy {}", p.display()))?,
        None => PolicyConfig::default(),
    };
    let shown = path.map_or_else(|| "the default policy".into(), |p| p.display().to_string());
    Policy::new(&cfg, names).with_context(|| format!("policy {shown}"))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let spec = match &a.spec {
        Some(p) => Some(
            FeatureSpec::from_toml(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("feature spec {}", p.display()))?,
        ),
        None => None,
    };
    let main = load(&a.model, spec.as_ref())?;
    let main_policy = policy(a.policy.as_deref(), main.extractor.names())?;
    let has_baseline = a.baseline_model.is_some() || a.baseline_policy.is_some();
    let base = match &a.baseline_model {
        Some(p) => Some(load(p, spec.as_ref())?),
        None => None,
    };
    let base_model = base.as_ref().unwrap_or(&main);
    let base_policy = if has_baseline {
        Some(policy(
            a.baseline_policy.as_deref().or(a.policy.as_deref()),
            base_model.extractor.names(),
        )?)
    } else {
        None
    };

    let mut history = a.input.read(&a.history)?;
    // Time order (ties in file order), as the service would have received them.
    history.sort_by_key(|t| t.timestamp_us);
    let read_s = started.elapsed().as_secs_f64();

    let pool = super::thread_pool(a.threads)?;
    let Backtest {
        outcomes,
        baseline,
        summary,
    } = pool.install(|| {
        backtest::backtest(
            main.arm(&main_policy),
            base_policy.as_ref().map(|p| base_model.arm(p)),
            &history,
        )
    })?;
    let took_s = started.elapsed().as_secs_f64();

    let mut out = serde_json::to_value(&summary).context("summary")?;
    if let Some(obj) = out.as_object_mut() {
        obj.insert("model_version".into(), main.model.version.clone().into());
        obj.insert(
            "thresholds".into(),
            serde_json::to_value(main_policy.thresholds())?,
        );
        if let Some(b) = obj.get_mut("baseline").and_then(|b| b.as_object_mut()) {
            b.insert(
                "model_version".into(),
                base_model.model.version.clone().into(),
            );
            if let Some(p) = &base_policy {
                b.insert("thresholds".into(), serde_json::to_value(p.thresholds())?);
            }
        }
        obj.insert(
            "timing".into(),
            serde_json::json!({"read_s": read_s, "total_s": took_s,
                "transactions_per_s": history.len() as f64 / (took_s - read_s).max(1e-9)}),
        );
    }
    let text = serde_json::to_string_pretty(&out)? + "\n";
    std::fs::write(&a.output, text)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    if let Some(path) = &a.decisions {
        write_decisions(path, &history, &outcomes, baseline.as_deref())?;
    }
    if let Some(dir) = &a.report {
        report(dir, &summary)?;
    }
    let d = &summary.decisions;
    super::emit(&format!(
        "{} transactions: {} approve, {} review, {} decline ({:.1} s); wrote {}\n",
        summary.transactions,
        d.approve,
        d.review,
        d.decline,
        took_s,
        a.output.display()
    ))
}

fn write_decisions(
    path: &Path,
    history: &[Transaction],
    outcomes: &[Outcome],
    baseline: Option<&[Outcome]>,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    write!(out, "transaction_id,timestamp,decision,score,rules_fired")?;
    if baseline.is_some() {
        write!(out, ",baseline_decision")?;
    }
    writeln!(out)?;
    let rfc = time::format_description::well_known::Rfc3339;
    for (i, (tx, o)) in history.iter().zip(outcomes).enumerate() {
        let at =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(tx.timestamp_us) * 1000)
                .ok()
                .and_then(|t| t.format(&rfc).ok())
                .unwrap_or_default();
        write!(
            out,
            "{},{at},{},{},{}",
            super::features::csv_field(&tx.transaction_id),
            o.decision.name(),
            o.score,
            super::features::csv_field(&o.fired.join(";"))
        )?;
        if let Some(b) = baseline {
            write!(out, ",{}", b.get(i).map_or("", |b| b.decision.name()))?;
        }
        writeln!(out)?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The summary as Markdown, with SVG charts when the binary has them.
fn report(dir: &Path, s: &Summary) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut md = String::from("# Backtest\n\n");
    let d = &s.decisions;
    let pct = |n: u64| 100.0 * n as f64 / s.transactions.max(1) as f64;
    let _ = writeln!(
        md,
        "{} transactions: {} approved ({:.2}%), {} sent to review ({:.2}%), {} declined ({:.2}%).\n",
        s.transactions,
        d.approve,
        pct(d.approve),
        d.review,
        pct(d.review),
        d.decline,
        pct(d.decline)
    );
    if let Some(l) = &s.labels {
        let _ = writeln!(
            md,
            "## Against the labels\n\n| | count | amount |\n| --- | --- | --- |\n\
             | fraud | {} | {:.2} |\n| fraud declined | {} | {:.2} |\n| fraud sent to review | {} | {:.2} |\n\
             | legitimate | {} | {:.2} |\n\n\
             Recall: {:.3} declined, {:.3} declined or reviewed. False positives per 1,000 \
             legitimate: {:.2} declined, {:.2} declined or reviewed.\n",
            l.fraud.count,
            l.fraud.amount,
            l.fraud_declined.count,
            l.fraud_declined.amount,
            l.fraud_reviewed.count,
            l.fraud_reviewed.amount,
            l.legit.count,
            l.legit.amount,
            l.recall_decline,
            l.recall_review_or_decline,
            l.false_declines_per_1000_legit,
            l.false_positives_per_1000_legit
        );
    }
    rule_table(
        &mut md,
        "## Rules and lists\n\n| rule | fired | fraud | legit | precision | amount blocked | alone |",
        &s.rules,
    );
    rule_table(
        &mut md,
        "## Shadow rules (never acted)\n\n| rule | would have fired | fraud | legit | precision | amount it would have declined | alone |",
        &s.shadow_rules,
    );
    if !s.overlap.is_empty() {
        md.push_str("## Rule overlap (transactions where both fired)\n\n| rule | with | together |\n| --- | --- | --- |\n");
        for (a, row) in &s.overlap {
            for (b, n) in row {
                let _ = writeln!(md, "| {a} | {b} | {n} |");
            }
        }
        md.push('\n');
    }
    if let Some(b) = &s.baseline {
        md.push_str("## Against the baseline\n\n| from -> to | transactions |\n| --- | --- |\n");
        for (k, n) in &b.changes {
            let _ = writeln!(md, "| {k} | {n} |");
        }
        let _ = writeln!(
            md,
            "\nFraud declined: {} gained ({:.2}), {} lost ({:.2}). Fraud flagged: {} gained, {} lost. \
             Legitimate transactions flagged: {:+}.\n",
            b.fraud_declined_gained.count,
            b.fraud_declined_gained.amount,
            b.fraud_declined_lost.count,
            b.fraud_declined_lost.amount,
            b.fraud_flagged_gained.count,
            b.fraud_flagged_lost.count,
            b.false_positives_change
        );
    }
    md.push_str("## Per day\n\n| day | transactions | approve | review | decline | fraud | declined | reviewed | card precision |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for day in &s.days {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            day.day,
            day.transactions,
            day.decisions.approve,
            day.decisions.review,
            day.decisions.decline,
            day.fraud,
            day.fraud_declined,
            day.fraud_reviewed,
            day.card_precision.map_or("-".into(), |p| format!("{p:.3}"))
        );
    }
    charts(dir, s, &mut md)?;
    let path = dir.join("backtest.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))
}

/// A Markdown table of rule statistics under `head` (a heading and the header row); nothing
/// without rules.
fn rule_table(
    md: &mut String,
    head: &str,
    rules: &std::collections::BTreeMap<String, fraud_core::backtest::RuleStats>,
) {
    use std::fmt::Write as _;
    if rules.is_empty() {
        return;
    }
    let _ = writeln!(md, "{head}\n| --- | --- | --- | --- | --- | --- | --- |");
    for (name, r) in rules {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {:.2} | {} |",
            r.fired,
            r.fraud,
            r.legit,
            r.precision.map_or("-".into(), |p| format!("{p:.3}")),
            r.amount_blocked,
            r.alone
        );
    }
    md.push('\n');
}

#[cfg(feature = "charts")]
fn charts(dir: &Path, s: &Summary, md: &mut String) -> anyhow::Result<()> {
    super::report::backtest_charts(dir, s)?;
    md.push_str(
        "\n## Charts\n\n![Decisions per day](decisions_per_day.svg)\n\n\
         ![Threshold sweep](threshold_sweep.svg)\n\n![Rule overlap](rule_overlap.svg)\n",
    );
    Ok(())
}

#[cfg(not(feature = "charts"))]
fn charts(_: &Path, _: &Summary, md: &mut String) -> anyhow::Result<()> {
    md.push_str("\n(Charts need the `fraud` binary's `charts` feature.)\n");
    Ok(())
}
