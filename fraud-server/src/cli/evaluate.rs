//! `fraud evaluate`: a model's metrics on a labelled CSV file, as one JSON object: ranking
//! metrics, recall at fixed false-positive rates, card precision at top-k per day (when the
//! file has card and time columns), a score-threshold table and recall per fraud scenario
//! (when it has a scenario column).

use std::path::Path;

use anyhow::Context;
use fraud_core::eval;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub io: super::ModelInput,
    /// Column holding the 0/1 label.
    #[arg(long)]
    pub label: String,
    #[command(flatten)]
    pub columns: Columns,
}

/// The optional columns that fraud-team metrics need.
#[derive(Debug, Clone, clap::Args)]
pub struct Columns {
    /// Column identifying the card (default: `card_token`, else `customer_id`, when present).
    #[arg(long)]
    pub card_column: Option<String>,
    /// Column with the transaction time: RFC 3339, or seconds (default: `timestamp` when
    /// present).
    #[arg(long)]
    pub time_column: Option<String>,
    /// Column with the fraud scenario (default: `fraud_scenario` when present).
    #[arg(long)]
    pub scenario_column: Option<String>,
    /// Cards investigated per day, for card precision at top-k.
    #[arg(long, default_value_t = 100)]
    pub k: usize,
}

/// A model's scores on a labelled file, with what the fraud-team metrics need.
pub struct Scored {
    pub probs: Vec<f64>,
    pub labels: Vec<f64>,
    pub cards: Option<Vec<String>>,
    pub days: Option<Vec<i64>>,
    pub scenarios: Option<Vec<String>>,
    #[cfg_attr(not(feature = "charts"), allow(dead_code))]
    pub artifact: fraud_core::model::Artifact,
}

/// Loads the model, reads the file and scores it.
pub fn score(io: &super::ModelInput, label: &str, columns: &Columns) -> anyhow::Result<Scored> {
    let (artifact, model) = io.load()?;
    let names: Vec<String> = artifact
        .ensemble
        .feature_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let data = super::train::read_labelled(&io.input, &names, label, None)?;
    let mut probs = vec![0.0; data.labels.len()];
    super::thread_pool(io.threads)?
        .install(|| model.predict_proba_batch(&data.features.values, &mut probs))?;
    let header = super::header_of(&io.input)?;
    let pick = |given: &Option<String>, defaults: &[&str]| -> anyhow::Result<Option<String>> {
        match given {
            Some(c) if header.contains(c) => Ok(Some(c.clone())),
            Some(c) => anyhow::bail!("column `{c}` is not in {}", io.input.display()),
            None => Ok(defaults
                .iter()
                .find(|d| header.iter().any(|h| h == *d))
                .map(|d| d.to_string())),
        }
    };
    let card = pick(&columns.card_column, &["card_token", "customer_id"])?;
    let time = pick(&columns.time_column, &["timestamp"])?;
    let scenario = pick(&columns.scenario_column, &["fraud_scenario"])?;
    let wanted: Vec<String> = [&card, &time, &scenario]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut text = super::read_text(&io.input, &wanted)?.into_iter();
    let cards = card.as_ref().and_then(|_| text.next());
    let days = match (&time, text.next()) {
        (Some(name), Some(values)) => Some(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| day_of(v).with_context(|| format!("row {}: column `{name}`", i + 1)))
                .collect::<anyhow::Result<Vec<i64>>>()?,
        ),
        _ => None,
    };
    let scenarios = scenario.as_ref().and_then(|_| text.next());
    Ok(Scored {
        probs,
        labels: data.labels,
        cards,
        days,
        scenarios,
        artifact,
    })
}

/// The day number (days since 1970-01-01, UTC) of an RFC 3339 time or a number of seconds.
fn day_of(v: &str) -> anyhow::Result<i64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        anyhow::ensure!(secs.is_finite(), "`{v}` is not a time");
        return Ok((secs / 86_400.0).floor() as i64);
    }
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            anyhow::anyhow!(
                "`{}` is not an RFC 3339 time",
                v.chars().take(40).collect::<String>()
            )
        })?;
    Ok(t.unix_timestamp().div_euclid(86_400))
}

/// The named columns of a CSV file as text, column by column.
pub fn read_text_columns(path: &Path, names: &[String]) -> anyhow::Result<Vec<Vec<String>>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = csv::Reader::from_reader(std::io::BufReader::with_capacity(1 << 20, file));
    let header = reader.headers()?.clone();
    let at: Vec<usize> = names
        .iter()
        .map(|k| {
            header
                .iter()
                .position(|h| h.trim() == k)
                .with_context(|| format!("column `{k}` is not in {}", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut out = vec![Vec::new(); names.len()];
    for row in reader.records() {
        let row = row.with_context(|| format!("cannot read {}", path.display()))?;
        for (c, &i) in at.iter().enumerate() {
            out[c].push(row.get(i).unwrap_or("").to_string());
        }
    }
    Ok(out)
}

/// Thresholds of the threshold table.
pub const THRESHOLDS: [f64; 9] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9];

/// Recall per scenario when flagging at most `fpr` of genuine transactions:
/// (scenario, frauds, caught, recall).
pub fn recall_by_scenario(
    s: &Scored,
    fpr: f64,
) -> anyhow::Result<Vec<(String, usize, usize, f64)>> {
    let Some(scen) = &s.scenarios else {
        return Ok(Vec::new());
    };
    let cut = eval::threshold_at_fpr(&s.probs, &s.labels, fpr)?;
    let mut groups: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (i, name) in scen.iter().enumerate() {
        if s.labels[i] == 1.0 {
            // Numbers of the simulator's scenarios are shown by name.
            let key = scenario_name(name);
            let g = groups.entry(key).or_default();
            g.0 += 1;
            g.1 += usize::from(s.probs[i] >= cut);
        }
    }
    Ok(groups
        .into_iter()
        .map(|(k, (n, caught))| (k.to_string(), n, caught, caught as f64 / n as f64))
        .collect())
}

/// The full evaluation as JSON.
pub fn evaluation(s: &Scored, k: usize) -> anyhow::Result<serde_json::Value> {
    let base = eval::report(&s.probs, &s.labels)?;
    let mut out = serde_json::to_value(&base)?;
    let recalls = eval::recall_at_fprs(&s.probs, &s.labels, &eval::STANDARD_FPRS)?;
    out["recall_at_fpr"] = json!(recalls
        .iter()
        .map(|(f, r)| (format!("{f}"), json!(r)))
        .collect::<serde_json::Map<_, _>>());
    if let (Some(cards), Some(days)) = (&s.cards, &s.days) {
        // The Handbook's measure (cards detected on earlier days removed), and the one that
        // keeps them, under its own name.
        let cp = eval::card_precision_at_k_per_day(&s.probs, &s.labels, cards, days, k)?;
        out[format!("card_precision_at_{k}_per_day")] = json!(cp.mean);
        let kept = eval::card_precision_at_k_per_day_keeping_detected(
            &s.probs, &s.labels, cards, days, k,
        )?;
        out[format!("card_precision_at_{k}_per_day_keeping_detected")] = json!(kept.mean);
        out["days"] = json!(cp.days.len());
    }
    out["thresholds"] =
        serde_json::to_value(eval::threshold_table(&s.probs, &s.labels, &THRESHOLDS)?)?;
    let by = recall_by_scenario(s, 0.01)?;
    if !by.is_empty() {
        out["recall_by_scenario_at_1pct_fpr"] = json!(by
            .iter()
            .map(|(k, n, c, r)| json!({"scenario": k, "frauds": n, "caught": c, "recall": r}))
            .collect::<Vec<_>>());
    }
    Ok(out)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let scored = score(&a.io, &a.label, &a.columns)?;
    let out = evaluation(&scored, a.columns.k)?;
    super::emit(&format!("{}\n", serde_json::to_string_pretty(&out)?))
}

/// A scenario's name: the simulator's numbered scenarios by name (with the `simulator`
/// feature), anything else as written.
fn scenario_name(name: &str) -> &str {
    #[cfg(feature = "simulator")]
    if let Some(n) = name
        .parse::<usize>()
        .ok()
        .and_then(|n| fraud_datasets::SCENARIO_NAMES.get(n).copied())
    {
        return n;
    }
    name
}
