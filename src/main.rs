//! `chatd`: flags and environment into a [`Config`], the logger, then the server's loop.

use std::process::ExitCode;

use chatd::config::Config;
use clap::Parser;

fn main() -> ExitCode {
    let cfg = Config::parse();
    if let Err(problem) = cfg.validate() {
        eprintln!("chatd: {problem}");
        return ExitCode::from(2);
    }
    simple_logger::SimpleLogger::new()
        .with_level(cfg.log_level)
        .init()
        .expect("the logger is set once");
    match chatd::server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
