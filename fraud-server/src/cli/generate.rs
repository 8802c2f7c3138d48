//! `fraud generate`: synthetic card transactions with labelled fraud scenarios.

use std::path::PathBuf;

use anyhow::Context;
use fraud_datasets::{Scenarios, SimConfig, Simulator};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Customers (one card each).
    #[arg(long, default_value_t = 5_000)]
    customers: u32,
    /// Days to simulate.
    #[arg(long, default_value_t = 183)]
    days: u32,
    /// Seed: the same seed and settings give the same file.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Home terminals (default: twice the customers, as the Fraud Detection Handbook).
    #[arg(long)]
    terminals: Option<u32>,
    /// First day, YYYY-MM-DD.
    #[arg(long, default_value = "2018-04-01")]
    start: String,
    /// Only these fraud scenarios (comma-separated): amount_over_threshold,
    /// compromised_terminal, compromised_card, card_testing, account_takeover,
    /// impossible_travel. Default: all.
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// Switch these scenarios off (comma-separated).
    #[arg(long, value_delimiter = ',')]
    without: Vec<String>,
    /// Median delay before a fraud becomes known, in days.
    #[arg(long, default_value_t = 3.0)]
    label_delay_days: f64,
    /// Output CSV (`-` for standard output).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let start = time::Date::parse(
        &a.start,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| format!("--start `{}` is not a YYYY-MM-DD date", a.start))?;
    let mut scenarios = match &a.scenarios {
        Some(list) => Scenarios::only(list)?,
        None => Scenarios::default(),
    };
    for name in &a.without {
        scenarios.set(name, false)?;
    }
    let mut cfg = SimConfig::with_customers(a.customers, a.days, a.seed);
    if let Some(t) = a.terminals {
        cfg.terminals = t;
    }
    cfg.start = start;
    cfg.label_delay_days = a.label_delay_days;
    cfg.scenarios = scenarios;
    let started = std::time::Instant::now();
    let sim = Simulator::new(cfg)?;
    let summary = if a.output.as_os_str() == "-" {
        sim.write_csv(std::io::stdout().lock())
    } else {
        let file = std::fs::File::create(&a.output)
            .with_context(|| format!("cannot create {}", a.output.display()))?;
        sim.write_csv(file)
    }
    .with_context(|| format!("cannot write {}", a.output.display()))?;
    eprintln!(
        "generated {} transactions ({} customers, {} days, seed {}) in {:.1}s\n{}",
        summary.transactions,
        a.customers,
        a.days,
        a.seed,
        started.elapsed().as_secs_f64(),
        summary.table()
    );
    Ok(())
}
