//! `fraud`: the command-line tool of the fraud scoring system.
//!
//! Each subcommand lives in its own module under `cli/`; this file only parses arguments and
//! turns errors into one clear line on stderr and a non-zero exit code.

mod cli;
mod server;

use clap::Parser;

/// mimalloc instead of the system allocator: a scored request builds and drops many small
/// JSON values, and glibc's allocator took about a tenth of the service's time under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        // A closed pipe (`fraud inspect m | head`) is the reader's choice, not an error.
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            return;
        }
        // The last sanitizer: no card number reaches the terminal or a log collector.
        eprintln!("error: {}", fraud_core::pii::redact(&format!("{e:#}")));
        std::process::exit(1);
    }
}
