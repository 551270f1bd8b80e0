//! The `krcu` command.
//!
//! Every subcommand is a module of its own; this file parses the command
//! line and turns bad input into one clear line and exit status 2.

mod args;
mod checked;
mod compare;
mod demo;
mod flood;
mod flood_harness;
mod output;
mod plot;
mod policies;
mod policies_result;
mod progress;
mod scale;
mod signal;
mod table;
mod torture;
mod tour;
mod workload;

use args::CliError;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// krcu: the kernel's deferred-free machinery in userspace, demonstrated
/// and measured. With no command: a 20-second tour (policies, then the
/// comparison).
#[derive(Debug, Parser)]
#[command(name = "krcu", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The tour (what `krcu` with no command runs): policies, then compare.
    Tour(tour::Args),
    /// rcuscale's kfree test: threads × loops × objects retired, timed to
    /// the last free.
    Scale(scale::Args),
    /// The flood sources Thomas Gleixner listed (2020) (task, softirq, a real signal handler,
    /// NMI): latency percentiles, fallbacks, pending memory, reports.
    Flood(flood::Args),
    /// Every policy × preempt model × nesting proof over a flood: one
    /// table, and an SVG plot with --plot.
    Policies(policies::Args),
    /// krcu against crossbeam-epoch, seize and dropping at once (and
    /// liburcu's call_rcu with the `liburcu` feature), interleaved.
    Compare(compare::Args),
    /// rcutorture in small: readers check, writers retire from every
    /// context, faults injected; exits 1 on any error.
    Torture(torture::Args),
    /// Reproduce the 2020 kfree_rcu problem: a spinlock_t (zone->lock) taken under a
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
        None => tour::run(&tour::Args::default()),
        Some(Command::Tour(a)) => tour::run(&a),
        Some(Command::Scale(a)) => scale::run(&a),
        Some(Command::Flood(a)) => flood::run(&a),
        Some(Command::Policies(a)) => policies::run(&a),
        Some(Command::Compare(a)) => compare::run(&a),
        Some(Command::Torture(a)) => torture::run(&a),
        Some(Command::Demo(a)) => demo::run(&a).map_err(CliError::Failed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(e)) => {
            eprintln!("krcu: {}", e.lines().next().unwrap_or("invalid settings"));
            ExitCode::from(2)
        }
        Err(CliError::Failed(e)) => {
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

/// clap's first line, with the valid values appended when clap lists them
/// on a line of their own (`--mix foo`), so that one line says it all.
fn first_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let text = e.render().to_string();
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let line = line.strip_prefix("error: ").unwrap_or(line).trim();
    match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(values)) if !values.is_empty() => {
            format!("{line}: expected one of {}", values.join(", "))
        }
        _ => format!("{line} (see 'krcu --help')"),
    }
}
