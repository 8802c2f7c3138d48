//! `fraud convert`: map a public data set (ULB creditcard.csv, PaySim, Sparkov) into the
//! project's CSV formats.

use std::path::PathBuf;

use anyhow::Context;
use fraud_datasets::loaders::{self, Format, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The input's format: ulb, paysim or sparkov.
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
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let format: Format = a.format.parse()?;
    let tokenizer = match format {
        Format::Sparkov => Some(super::tokenizer(a.key_file.as_deref())?),
        _ => None,
    };
    let opts = Options {
        tokenizer,
        legit_weight: a.legit_weight,
        currency: a.currency.clone(),
        ..Options::default()
    };
    let s = loaders::convert_file(format, &a.input, &a.output, &opts)
        .with_context(|| format!("cannot convert {}", a.input.display()))?;
    super::emit(&format!(
        "converted {} rows ({} fraud) into {}\n",
        s.rows,
        s.frauds,
        a.output.display()
    ))
}
