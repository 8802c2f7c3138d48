//! Scores transactions as the service does, without the service: JSON lines in on stdin (the
//! `/v1/score` request body, one per line), one answer per line out on stdout (the service's
//! answer: decision, score, risk score, reasons, rules fired, model version, card mask).
//!
//! ```sh
//! cargo run -p fraud-core --example score -- --model datasets/demo/model.fgb \
//!     [--policy fraud.toml] [--spec spec.toml] < transactions.jsonl
//! ```
//!
//! `--policy` reads the `[thresholds]`, `[[rules]]` and `[lists]` sections of a TOML file
//! (the service's configuration file will do; default: the service's default policy);
//! `--spec` a feature spec (default: the model's own, else the default spec). State starts
//! empty, in memory: the same transactions in the same order get the answers a freshly
//! started service on its defaults gives.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use fraud_core::decision::{score_lines, PolicyConfig, Scorer};
use fraud_core::features::FeatureSpec;
use fraud_core::model::Artifact;

const USAGE: &str = "usage: score --model PATH [--policy PATH] [--spec PATH] < transactions.jsonl";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", fraud_core::pii::redact(&e));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let (mut model, mut policy, mut spec) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--model" => model = Some(value()?),
            "--policy" => policy = Some(value()?),
            "--spec" => spec = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument `{other}`; {USAGE}")),
        }
    }
    let model = model.ok_or_else(|| format!("--model is required; {USAGE}"))?;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let artifact = Artifact::load(&model)
        .map_err(|e| format!("cannot load model {}: {e}", model.display()))?;
    let mut builder = Scorer::builder(artifact);
    if let Some(p) = &policy {
        let cfg =
            PolicyConfig::from_toml(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?;
        builder = builder.policy(cfg);
    }
    if let Some(p) = &spec {
        let s = FeatureSpec::from_toml(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?;
        builder = builder.spec(s);
    }
    let scorer = builder.build().map_err(|e| e.to_string())?;
    let stdin = std::io::stdin().lock();
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let (scored, refused) =
        score_lines(&scorer, stdin, stdout).map_err(|e| format!("cannot score: {e}"))?;
    if refused > 0 {
        let _ = writeln!(std::io::stderr(), "{scored} scored, {refused} refused");
    }
    Ok(())
}
