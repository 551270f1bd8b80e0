//! `krcu` with no arguments: a tour of about 20 seconds. Every policy
//! under every preempt model over a short flood, the sheaf path
//! (`kfree_rcu_slab` of `SlabBox`es) over the same flood under the default
//! policy, then the end-to-end comparison with crossbeam-epoch, seize and
//! dropping at once (with and without readers on the slots).

use crate::args::CmdResult;
use crate::flood_harness::RetirePath;
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
        path: vec![RetirePath::Box],
        plot: None,
        json: a.json,
    };
    // The sheaf path under the default policy only: the policy governs only
    // what finds no sheaf.
    let sheaves = policies::Args {
        policy: Some(Policy::default()),
        path: vec![RetirePath::Sheaf],
        ..p.clone()
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
    let mut policies = policies::measure(&p, a.json)?;
    let on_sheaves = policies::measure(&sheaves, a.json)?;
    let box_cells = policies.cells.len();
    policies.cells.extend(on_sheaves.cells);
    policies.summary.extend(on_sheaves.summary);
    if !a.json {
        print!("{}", policies::render_summary(&policies));
        println!(
            "\n({} ms of flood per cell; the sheaf path retires SlabBoxes with kfree_rcu_slab from every source, \
             the signal handler's by trylocks only; `krcu policies` prints all {box_cells} cells, \
             `--path sheaf` the sheaf path's under every policy, `--plot FILE.svg` draws them)\n",
            policies.duration_per_cell_ms,
        );
    }
    let compare = compare::measure(&c, a.json)?;
    let result = TourResult { policies, compare };
    emit(a.json, &result, |r| {
        let mut out = compare::render(&r.compare);
        out.push_str(
            "\nkrcu sheaves is the sheaf path (a SlabBox retired with kfree_rcu_slab into the thread's rcu_free \
             sheaf, which goes back to its cache whole after one grace period); \"sheaves ÷ this\" compares it \
             with each row, and \"drop at once, readers on the slots\" is the floor any system with readers pays \
             in this workload (the readers only load the slots the writers swap)\n",
        );
        out
    });
    Ok(())
}
