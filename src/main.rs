//! The `bosh-agent` binary: parse the command line, install logging, run. All logic lives in the
//! library so tests and benchmarks reach the same code.

use bosh_agent::cli::{self, Command};

/// On musl (the static release binary) dlmalloc, not musl's allocator, which maps and unmaps pages
/// for every few requests (see ARCHITECTURE.md, memory notes).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let monit_access = argv.first().is_some_and(|p| cli::is_enable_monit_access(p));
    let command = match cli::parse_invocation(argv) {
        Ok(c) => c,
        Err(e) if monit_access => {
            eprintln!("{}: {e}", cli::ENABLE_MONIT_ACCESS);
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("bosh-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("bosh-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Call(opts) => match bosh_agent::client::call(&opts) {
            Ok(reply) => {
                println!("{reply}");
                if reply.get("exception").is_some() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("bosh-agent call: {e}");
                ExitCode::from(1)
            }
        },
        Command::EnableMonitAccess(opts) => match bosh_agent::app::enable_monit_access(&opts) {
            Ok(done) => {
                eprintln!("{}: {done}", cli::ENABLE_MONIT_ACCESS);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", cli::ENABLE_MONIT_ACCESS);
                ExitCode::from(1)
            }
        },
        Command::Run(opts) => {
            bosh_agent::memory::limit_arenas();
            bosh_agent::logging::init(opts.log_level);
            match bosh_agent::app::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once: `run` logged it (the log goes to stderr too), unless `-l` silenced errors.
                    if !log::log_enabled!(log::Level::Error) {
                        eprintln!("bosh-agent: {e}");
                    }
                    ExitCode::from(1)
                }
            }
        }
    }
}
