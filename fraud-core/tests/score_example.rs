//! `examples/score.rs` (a contract: JSON lines in, one answer per line out) answers as the
//! library's `score_lines` does; fraud-server's `decision_library` test proves the library
//! answers as the service does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fraud_core::decision::{score_lines, PolicyConfig, Scorer};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example's binary, built by `cargo test` beside this test's.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("examples").join("score");
    assert!(
        path.exists(),
        "{} is not built (cargo build -p fraud-core --examples)",
        path.display()
    );
    path
}

/// The first `n` rows of the committed sample as request bodies.
fn bodies(n: usize) -> String {
    let mut reader =
        csv::Reader::from_path(root().join("datasets/samples/transactions.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    let mut text = String::new();
    for row in reader.records().take(n) {
        let row = row.unwrap();
        let body: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .zip(row.iter())
            .filter(|(k, v)| !v.is_empty() && !k.starts_with("fraud_") && *k != "is_fraud")
            .map(|(k, v)| {
                let value = v
                    .parse::<f64>()
                    .ok()
                    .filter(|_| k.ends_with("itude"))
                    .map_or_else(|| serde_json::Value::from(v), serde_json::Value::from);
                (k.to_string(), value)
            })
            .collect();
        text.push_str(&serde_json::Value::Object(body).to_string());
        text.push('\n');
    }
    text
}

fn untimed(text: &[u8]) -> Vec<serde_json::Value> {
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_slice(l).unwrap();
            if let Some(m) = v.as_object_mut() {
                m.remove("elapsed_us");
            }
            v
        })
        .collect()
}

fn run(args: &[&str], input: &str) -> (bool, Vec<u8>, String) {
    let mut child = Command::new(example())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written from a thread: the answers fill stdout's pipe while the input is still going in.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    // The example may stop reading early (a usage error): a closed pipe is not a failure.
    let _ = writer.join().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_score_example_answers_as_the_library_with_a_policy() {
    let model = root().join("datasets/demo/model.fgb");
    let dir = tempfile::tempdir().unwrap();
    // A policy with a rule and a list, in a service configuration file.
    let policy = dir.path().join("fraud.toml");
    std::fs::write(
        &policy,
        "bind = \"127.0.0.1:0\"\n[thresholds]\nreview = 0.05\ndecline = 0.5\n\
         [[rules]]\nname = \"large\"\nwhen = \"tx.amount > 150.0\"\naction = \"review\"\n\
         [lists.block]\ncustomers = [\"C32\"]\n",
    )
    .unwrap();
    let input = bodies(600) + "{\"transaction_id\":\"bad\",\"amount\":\"-1\"}\n";
    let (ok, stdout, stderr) = run(
        &[
            "--model",
            model.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
        &input,
    );
    assert!(ok, "{stderr}");
    let got = untimed(&stdout);
    let artifact = fraud_core::model::Artifact::load(&model).unwrap();
    let cfg = PolicyConfig::from_toml(&std::fs::read_to_string(&policy).unwrap()).unwrap();
    let scorer = Scorer::builder(artifact).policy(cfg).build().unwrap();
    let mut want = Vec::new();
    let (scored, refused) = score_lines(&scorer, input.as_bytes(), &mut want).unwrap();
    assert_eq!((scored, refused), (600, 1));
    assert_eq!(got, untimed(&want));
    assert_eq!(got.len(), 601);
    // The policy acted: the block list, the rule, and more than one decision.
    let fired = |name: &str| {
        got.iter()
            .filter(|a| a["rules_fired"].to_string().contains(name))
            .count()
    };
    assert!(fired("block_list:customer") > 0 && fired("large") > 0);
    assert!(got[600]["error"].is_string(), "{}", got[600]);
    assert_eq!(got[600]["line"], 601);
    // Usage errors are one line on stderr.
    let (ok, _, stderr) = run(&[], "");
    assert!(!ok && stderr.contains("--model is required"), "{stderr}");
    let (ok, _, stderr) = run(&["--model", "/nonexistent.fgb"], "");
    assert!(!ok && stderr.contains("/nonexistent.fgb"), "{stderr}");
}
