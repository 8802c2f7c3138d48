//! `fraud convert`: map a public data set (ULB creditcard.csv, PaySim, Sparkov, the Fraud
//! Detection Handbook's simulated transactions) into the project's CSV formats.

use std::path::PathBuf;

use anyhow::Context;
use fraud_datasets::loaders::{self, Format, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The input's format: ulb, paysim, sparkov or fdh (the Fraud Detection Handbook's
    /// simulated transactions).
    #[arg(long)]
    format: String,
    /// The public file (plain or gzip-compressed CSV).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the converted CSV.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Tokenization key file (Sparkov holds card numbers; they are tokenized with it). Else
    /// FRAUD_TOKENIZATION_KEY (hex), else a one-off key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// PaySim: weight of each legitimate row, for an enriched sample (frauds weigh 1).
    #[arg(long, default_value_t = 1.0)]
    legit_weight: f64,
    /// Currency written for formats without one.
    #[arg(long, default_value = "USD")]
    currency: String,
    /// FDH: frauds are reported this long after the transaction (`7d`, `36h`; written as
    /// `fraud_reported_at`, which label-aware features respect); known at once when absent.
    #[arg(long)]
    report_delay: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let format: Format = a.format.parse()?;
    let tokenizer = match format {
        Format::Sparkov => Some(super::tokenizer(a.key_file.as_deref())?),
        _ => None,
    };
    let report_delay_s = a
        .report_delay
        .as_deref()
        .map(|d| {
            crate::server::config::parse_period(d)
                .map_err(|e| anyhow::anyhow!("--report-delay: {e}"))
                .and_then(|s| i64::try_from(s).context("--report-delay is too long"))
        })
        .transpose()?;
    let opts = Options {
        tokenizer,
        legit_weight: a.legit_weight,
        currency: a.currency.clone(),
        report_delay_s,
        ..Options::default()
    };
    let s = loaders::convert_file(format, &a.input, &a.output, &opts)
        .with_context(|| format!("cannot convert {}", a.input.display()))?;
    let rounded = if s.rounded_amounts > 0 {
        format!(
            "; {} amounts rounded to the cent (the source's float noise)",
            s.rounded_amounts
        )
    } else {
        String::new()
    };
    super::emit(&format!(
        "converted {} rows ({} fraud) into {}{rounded}\n",
        s.rows,
        s.frauds,
        a.output.display()
    ))
}
