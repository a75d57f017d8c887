//! `chatd`: flags and environment into a [`Config`], then an operator command, or the logger and
//! the server's loop.

use std::process::ExitCode;

use chatd::config::{Command, Config};
use clap::Parser;

fn main() -> ExitCode {
    let cfg = Config::parse();
    if let Some(Command::Admin(command)) = &cfg.command {
        return match chatd::admin::run(&cfg.data_dir, command) {
            Ok(text) => {
                if !text.is_empty() {
                    println!("{text}");
                }
                ExitCode::SUCCESS
            }
            Err(problem) => {
                eprintln!("chatd: {problem}");
                ExitCode::FAILURE
            }
        };
    }
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
