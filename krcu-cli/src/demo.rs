//! `krcu demo`: the 2020 kfree_rcu thread's problem (zone->lock under a raw lock) reproduced.
//!
//! `kfree_rcu()` holds a raw spinlock (`krcp->lock`) when it needs a page for
//! its pointer array; the page allocator's slow path takes `zone->lock`, a
//! `spinlock_t`. For every preempt model and with raw-lock nesting proof on
//! and off, the demo takes `zone->lock` under `krcp->lock` (and, beside it,
//! only trylocks it) and shows what the validator says and whether the lock
//! would sleep.

use crate::table::{Column, Table};
use krcu::Domain;
use krcu::context::PreemptModel;
use krcu::lock::{RawSpinLock, SpinLock};
use krcu::lockdep::{Report, ReportHandler, ReportKind, ReportLog};
use serde::Serialize;

/// Options of `krcu demo`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Print the full report of every flagged combination, not only one.
    #[arg(long)]
    all_reports: bool,
    /// Print JSON instead of the table and the report: every combination,
    /// and every report in full.
    #[arg(long)]
    json: bool,
}

/// One combination of `krcu demo`, as JSON shows it.
#[derive(Debug, Serialize)]
pub struct DemoRow {
    pub preempt_model: String,
    pub nesting_proof: bool,
    /// `spin_lock(&zone->lock)` was reported as an invalid wait context.
    pub spin_lock_wait_context: bool,
    /// It was reported as sleeping in atomic context.
    pub spin_lock_might_sleep: bool,
    /// `zone->lock` is a sleeping lock under this model (PREEMPT_RT).
    pub zone_lock_sleeps: bool,
    /// `spin_trylock(&zone->lock)` was reported (never expected).
    pub spin_trylock_flagged: bool,
}

/// One validator report of `krcu demo`, as JSON shows it.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub preempt_model: String,
    pub nesting_proof: bool,
    /// The headline, as the kernel prints it.
    pub kind: &'static str,
    /// The class of the lock being taken.
    pub class: Option<&'static str>,
    /// The whole report as the kernel would print it.
    pub text: String,
}

/// `krcu demo --json`.
#[derive(Debug, Serialize)]
pub struct DemoResult {
    pub rows: Vec<DemoRow>,
    pub reports: Vec<DemoReport>,
}

fn result_of(outcomes: &[Outcome]) -> DemoResult {
    let rows = outcomes
        .iter()
        .map(|o| DemoRow {
            preempt_model: o.model.name().to_string(),
            nesting_proof: o.nesting_proof,
            spin_lock_wait_context: flagged(&o.lock_reports, ReportKind::InvalidWaitContext),
            spin_lock_might_sleep: flagged(&o.lock_reports, ReportKind::SleepInInvalidContext),
            zone_lock_sleeps: o.sleeps,
            spin_trylock_flagged: !o.trylock_reports.is_empty(),
        })
        .collect();
    let reports = outcomes
        .iter()
        .flat_map(|o| {
            o.lock_reports
                .iter()
                .chain(&o.trylock_reports)
                .map(move |r| DemoReport {
                    preempt_model: o.model.name().to_string(),
                    nesting_proof: o.nesting_proof,
                    kind: r.kind.headline(),
                    class: r.class,
                    text: r.text.clone(),
                })
        })
        .collect();
    DemoResult { rows, reports }
}

/// What one combination produced.
struct Outcome {
    model: PreemptModel,
    nesting_proof: bool,
    lock_reports: Vec<Report>,
    trylock_reports: Vec<Report>,
    sleeps: bool,
}

fn run_one(model: PreemptModel, nesting_proof: bool) -> Outcome {
    let log = ReportLog::new();
    let domain = Domain::builder()
        .preempt_model(model)
        .prove_raw_lock_nesting(nesting_proof)
        .lockdep(true)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build();
    let krcp_lock = RawSpinLock::named(&domain, "&krcp->lock", ());
    let zone_lock = SpinLock::named(&domain, "&zone->lock", ());
    {
        // kvfree_call_rcu() -> __get_free_page(GFP_NOWAIT) -> rmqueue_bulk()
        let _krcp = krcp_lock.lock();
        let _zone = zone_lock.lock();
    }
    let lock_reports = log.take();
    {
        // The same with only a trylock of the zone lock.
        let _krcp = krcp_lock.lock();
        let _zone = zone_lock.try_lock();
    }
    let trylock_reports = log.take();
    Outcome {
        model,
        nesting_proof,
        lock_reports,
        trylock_reports,
        sleeps: zone_lock.sleeps(),
    }
}

fn flagged(reports: &[Report], kind: ReportKind) -> bool {
    reports.iter().any(|r| r.kind == kind)
}

fn flag(reports: &[Report], kind: ReportKind) -> &'static str {
    if flagged(reports, kind) {
        "FLAGGED"
    } else {
        "-"
    }
}

pub fn run(args: &Args) -> Result<(), String> {
    if !krcu::lockdep::COMPILED {
        return Err("this build has no validator (build with the `lockdep` feature)".into());
    }
    let outcomes: Vec<Outcome> = PreemptModel::ALL
        .into_iter()
        .flat_map(|m| [true, false].map(|np| run_one(m, np)))
        .collect();
    if args.json {
        crate::output::emit(true, &result_of(&outcomes), |_| String::new());
        return Ok(());
    }

    println!("krcu demo: zone->lock (spinlock_t) taken under krcp->lock (raw_spinlock_t)");
    println!(
        "(the 2020 kfree_rcu thread: why kfree_rcu() may not call the page allocator's slow path)\n"
    );
    let columns = [
        Column::<Outcome>::new("preempt model", |o| o.model.name().to_string()),
        Column::new("nesting proof", |o| {
            crate::args::show_on_off(o.nesting_proof)
        }),
        Column::new("spin_lock: wait context", |o| {
            flag(&o.lock_reports, ReportKind::InvalidWaitContext).to_string()
        }),
        Column::new("spin_lock: might sleep", |o| {
            flag(&o.lock_reports, ReportKind::SleepInInvalidContext).to_string()
        }),
        Column::new("zone->lock sleeps", |o| {
            if o.sleeps {
                "yes: scheduling while atomic"
            } else {
                "no"
            }
            .to_string()
        }),
        Column::new("spin_trylock", |o| {
            if o.trylock_reports.is_empty() {
                "ok"
            } else {
                "FLAGGED"
            }
            .to_string()
        }),
    ];
    let t = Table::of(&columns, &outcomes);
    print!("{}", t.render());
    println!();
    println!(
        "wait context: lockdep's CONFIG_PROVE_RAW_LOCK_NESTING check (spinlock_t is CONFIG, the"
    );
    println!(
        "raw lock allows SPIN). might sleep: on PREEMPT_RT spinlock_t is a sleeping lock, so taking"
    );
    println!(
        "it with a raw spinlock held sleeps in atomic context. A trylock cannot wait: never flagged."
    );

    let shown: Vec<&Report> = if args.all_reports {
        outcomes.iter().flat_map(|o| &o.lock_reports).collect()
    } else {
        outcomes
            .iter()
            .find(|o| o.model == PreemptModel::Rt && o.nesting_proof)
            .and_then(|o| {
                o.lock_reports
                    .iter()
                    .find(|r| r.kind == ReportKind::InvalidWaitContext)
            })
            .into_iter()
            .collect()
    };
    for r in shown {
        println!("{}", r.text);
    }
    Ok(())
}
