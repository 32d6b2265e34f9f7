//! The `bosh-agent` binary: parse the command line, install logging, run. All logic lives in the
//! library so tests and benchmarks reach the same code.

use bosh_agent::cli::{self, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1).collect()) {
        Ok(c) => c,
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
