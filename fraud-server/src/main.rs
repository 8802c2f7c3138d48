//! `fraud`: the command-line tool of the fraud scoring system.
//!
//! Each subcommand lives in its own module under `cli/`; this file only parses arguments and
//! turns errors into one clear line on stderr and a non-zero exit code.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
