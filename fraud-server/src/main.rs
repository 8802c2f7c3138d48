//! `fraud`: the command-line tool of the fraud scoring system.
//!
//! Each subcommand lives in the library's `cli` module; this file only chooses the allocator
//! and turns [`fraud_server::main_with_args`]'s result into the process's exit code.

/// mimalloc instead of the system allocator: a scored request builds and drops many small
/// JSON values, and glibc's allocator took about a tenth of the service's time under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let code = fraud_server::main_with_args(std::env::args_os());
    if code != 0 {
        std::process::exit(code);
    }
}
