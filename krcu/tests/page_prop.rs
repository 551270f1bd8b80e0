//! Property test: random sequences of mixed-order allocations and frees
//! agree with a simple model of the arena (one bit per page).

mod common;

use common::pages::quiet_config;
use krcu::Domain;
use krcu::page::{AllocError, Gfp, MAX_ORDER, Page, PageAllocator, Watermarks};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Allocate with mode `mode` (0 KERNEL, 1 NOWAIT, 2 ATOMIC, 3 NO_LOCKS,
    /// 4 nolock) and this order.
    Alloc { mode: u8, order: u32 },
    /// Free the held block at this index (modulo), the normal or the nolock
    /// way.
    Free { idx: usize, nolock: bool },
    /// Drain CPU 0's lists.
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..5, prop_oneof![4 => 0u32..=3, 1 => 4u32..=8]).prop_map(|(mode, order)| Op::Alloc { mode, order }),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(idx, nolock)| Op::Free { idx, nolock }),
        1 => Just(Op::Drain),
    ]
}

/// The model: which pages are handed out.
struct Model {
    owned: Vec<bool>,
    held: Vec<Page>,
}

impl Model {
    /// Whether some aligned order-`order` region is entirely free.
    fn has_free_block(&self, order: u32) -> bool {
        self.owned
            .chunks(1 << order)
            .any(|c| c.len() == 1 << order && c.iter().all(|o| !o))
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let d = Domain::builder().cpus(1).build();
    let pa = PageAllocator::new(
        &d,
        quiet_config(4 << 20, Watermarks::NONE)
            .pcp_batch(7)
            .pcp_high(21),
    )
    .unwrap();
    let total = pa.total_pages();
    let mut m = Model {
        owned: vec![false; total],
        held: Vec::new(),
    };
    for op in ops {
        match op {
            Op::Alloc { mode, order } => {
                let r = match mode {
                    0 => pa.alloc_pages(Gfp::KERNEL | Gfp::NOWARN, order),
                    1 => pa.alloc_pages(Gfp::NOWAIT | Gfp::NOWARN | Gfp::MOVABLE, order),
                    2 => pa.alloc_pages(Gfp::ATOMIC | Gfp::NOWARN | Gfp::RECLAIMABLE, order),
                    3 => pa.alloc_pages(Gfp::NO_LOCKS, order),
                    _ => pa.alloc_pages_nolock(order),
                };
                match r {
                    Ok(p) => {
                        prop_assert_eq!(p.order(), order);
                        let pfn = pa.pfn_of(p.as_ptr()).unwrap();
                        prop_assert_eq!(pfn % (1 << order), 0, "aligned");
                        for q in pfn..pfn + (1 << order) {
                            prop_assert!(!m.owned[q], "page {} handed out twice", q);
                            m.owned[q] = true;
                        }
                        m.held.push(p);
                    }
                    // A sleeping allocation fails only after draining every
                    // per-CPU list: then no aligned free block may exist.
                    Err(e) if mode == 0 => {
                        prop_assert_eq!(e, AllocError::NoMemory);
                        prop_assert!(
                            !m.has_free_block(order),
                            "KERNEL failed with a free order-{} block",
                            order
                        );
                    }
                    Err(_) => {}
                }
            }
            Op::Free { idx, nolock } => {
                if !m.held.is_empty() {
                    let p = m.held.swap_remove(idx % m.held.len());
                    let pfn = pa.pfn_of(p.as_ptr()).unwrap();
                    for q in pfn..pfn + (1 << p.order()) {
                        m.owned[q] = false;
                    }
                    if nolock {
                        pa.free_nolock(p);
                    } else {
                        let (addr, order) = (p.addr(), p.order());
                        prop_assert_eq!(pa.try_free(p), Ok(()));
                        prop_assert!(
                            // SAFETY: a double free of a block nothing
                            // reallocated since: detected, not undefined.
                            unsafe { pa.try_free_pages(addr, order) }.is_err(),
                            "double free refused"
                        );
                    }
                }
            }
            Op::Drain => {
                pa.drain_cpu(0);
                prop_assert_eq!(pa.pcp_pages(0), 0);
            }
        }
        // Conservation: every page is free in the buddy, on a list, or held.
        let s = pa.stats();
        let held = m.owned.iter().filter(|&&o| o).count();
        prop_assert_eq!(s.free_pages + s.pcp_pages + held, total, "{:#?}", s);
        let blocks: usize = s.free_blocks.iter().enumerate().map(|(o, n)| n << o).sum();
        prop_assert_eq!(blocks, s.free_pages);
    }
    for p in m.held.drain(..) {
        pa.free(p);
    }
    pa.drain_all();
    let s = pa.stats();
    prop_assert_eq!(s.free_pages, total);
    prop_assert_eq!(
        s.free_blocks[MAX_ORDER as usize] << MAX_ORDER,
        total,
        "all merged: {:#?}",
        s
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn buddy_agrees_with_the_model(ops in prop::collection::vec(op(), 1..300)) {
        run(ops)?;
    }
}
