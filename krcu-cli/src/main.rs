//! The `krcu` command.
//!
//! Every subcommand is a module of its own; this file parses the command
//! line and turns bad input into one clear line and exit status 2.

mod demo;
mod table;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// krcu: the kernel's deferred-free machinery in userspace, demonstrated
/// and measured.
#[derive(Debug, Parser)]
#[command(name = "krcu", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reproduce seeds 000 and 002: a spinlock_t (zone->lock) taken under a
    /// raw spinlock, under each preempt model, with raw-lock nesting proof
    /// on and off.
    Demo(demo::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        None => demo::run(&demo::Args::default()),
        Some(Command::Demo(args)) => demo::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("krcu: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout with status 0; every other parse error is
/// one line on stderr and status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("krcu: {}", first_line(&e));
            ExitCode::from(2)
        }
    }
}

fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let line = line.strip_prefix("error: ").unwrap_or(line).trim();
    format!("{line} (see 'krcu --help')")
}
