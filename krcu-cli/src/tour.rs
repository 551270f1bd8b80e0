//! `krcu` with no arguments: a tour of about 20 seconds. Every policy
//! under every preempt model over a short flood, then the end-to-end
//! comparison with crossbeam-epoch, seize and dropping at once.

use crate::args::CmdResult;
use crate::output::emit;
use crate::policies_result::PoliciesResult;
use crate::{compare, policies};
use krcu::kvfree::Policy;
use serde::Serialize;
use std::time::Duration;

/// Options of `krcu tour`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// A tiny tour (for tests): the same shape in a second or two.
    #[arg(long, hide = true)]
    quick: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// The tour's result.
#[derive(Debug, Serialize)]
pub struct TourResult {
    pub policies: PoliciesResult,
    pub compare: compare::CompareResult,
}

pub fn run(a: &Args) -> CmdResult {
    let p = policies::Args {
        duration: if a.quick {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(150)
        },
        threads: None,
        policy: None,
        preempt: None,
        plot: None,
        json: a.json,
    };
    let c = compare::Args {
        objects: if a.quick { 20_000 } else { 2_000_000 },
        threads: 2,
        rounds: if a.quick { 1 } else { 3 },
        policy: Policy::default(),
        json: a.json,
        in_process: false,
        one: None,
        leak_last: false,
    };
    if !a.json {
        println!(
            "krcu tour: kfree_rcu's policies under a flood, then krcu against other deferred-free schemes"
        );
        println!("(`krcu demo` shows the validator's report; `krcu --help` lists every command)\n");
    }
    let policies = policies::measure(&p, a.json)?;
    if !a.json {
        print!("{}", policies::render_summary(&policies));
        println!(
            "\n({} ms of flood per cell; `krcu policies` prints all {} cells, `--plot FILE.svg` draws them)\n",
            policies.duration_per_cell_ms,
            policies.cells.len()
        );
    }
    let compare = compare::measure(&c, a.json)?;
    let result = TourResult { policies, compare };
    emit(a.json, &result, |r| compare::render(&r.compare));
    Ok(())
}
