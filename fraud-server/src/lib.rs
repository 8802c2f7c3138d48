//! The fraud scoring service and the `fraud` command-line tool, as a library.
//!
//! The `fraud` binary is a thin wrapper around [`main_with_args`]; the Python package
//! `fraudscore` links the same function so that `pip install fraudscore` installs a `fraud`
//! command identical to the one built from this crate.

mod cli;
mod server;

/// The scoring service in process: its configuration, the service built from it, and the
/// actix-web application every worker of `fraud serve` runs (tests drive it with
/// `actix_web::test`, without a socket).
pub mod service {
    pub use crate::server::config::Config;
    pub use crate::server::openapi::document as openapi_document;
    pub use crate::server::{app, build, Service};
}

/// For the tests of the PostgreSQL store: its tables, and the plan its committer uses.
#[doc(hidden)]
pub mod testing {
    pub use crate::server::pgstore::{commit_plan, create_tables};
}

use std::ffi::OsString;

use clap::Parser;

/// Runs the `fraud` command line with `args` (the first is the program's name, as in
/// `std::env::args_os`) and returns the process exit code: 0 on success, 1 after an error
/// (printed as one line on stderr, with card numbers redacted), 2 for a usage error (clap's
/// message on stderr; `--help` and `--version` print on stdout and return 0).
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match cli::Cli::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            // Help and version are not errors; clap knows which stream each belongs on.
            let code = e.exit_code();
            if e.print().is_err() {
                return 1;
            }
            return code;
        }
    };
    match cli::run(args) {
        Ok(()) => 0,
        Err(e) => {
            // A closed pipe (`fraud inspect m | head`) is the reader's choice, not an error.
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return 0;
            }
            // The last sanitizer: no card number reaches the terminal or a log collector.
            eprintln!("error: {}", fraud_core::pii::redact(&format!("{e:#}")));
            1
        }
    }
}
