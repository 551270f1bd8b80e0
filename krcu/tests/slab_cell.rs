//! `RcuCell` holding slab values (`store_slab`, `replace_slab`): readers
//! check a poison word while a writer alternates boxed and slab values;
//! every value is dropped once, after its readers; a slab value leaving
//! the cell (update, compare-exchange, clear, the cell's drop) is retired
//! into its cache; a box of a cache of another instance, and NMI context,
//! are refused with the box handed back.

mod common;

use common::instances::collecting_instance;
use common::slabs::assert_shrinks_to_no_slab;
use common::{Ledger, Obj, wait_for};
use krcu::kvfree::Policy;
use krcu::slab::SlabCache;
use krcu::{Krcu, RcuCell, SlabRetireError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::Duration;

fn instance(policy: Policy, cache_blocks: usize) -> Arc<Krcu> {
    Arc::new(collecting_instance(policy, cache_blocks))
}

fn readers_and_writer(policy: Policy, cache_blocks: usize, n: usize) {
    let k = instance(policy, cache_blocks);
    // Every fourth update makes two values.
    let ledger = Ledger::new(2 * n + 100);
    let cache = k.slab_cache::<Obj>("cell values").unwrap();
    let cells: Vec<Cell> = (0..8)
        .map(|_| RcuCell::new_in(k.clone(), Obj::value(&ledger)))
        .collect();
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    /// Stops the readers however the writer ends (a failed check must not
    /// leave them spinning).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..2 {
            s.spawn(|| {
                let reader = k.rcu().register_thread();
                while !stop.load(Relaxed) {
                    let g = reader.read_lock();
                    for c in &cells {
                        c.load(&g).unwrap().check();
                    }
                    reads.fetch_add(1, Relaxed);
                }
            });
        }
        for i in 0..n {
            let c = &cells[i % cells.len()];
            match i % 4 {
                0 => c.store(Obj::value(&ledger)).ok().unwrap(),
                1 => c
                    .store_slab(cache.alloc_box(Obj::value(&ledger)).ok().unwrap())
                    .unwrap(),
                2 => {
                    let g = k.rcu().read_lock();
                    let old = c
                        .replace_slab(cache.alloc_box(Obj::value(&ledger)).ok().unwrap(), &g)
                        .unwrap()
                        .unwrap();
                    old.check();
                }
                _ => {
                    let g = k.rcu().read_lock();
                    let cur = c.load(&g);
                    let new = cache.alloc_box(Obj::value(&ledger)).ok().unwrap();
                    // The cell may hold a slab value: the compare still
                    // finds it by its untagged address.
                    c.store_slab(new).unwrap();
                    let cur2 = c.load(&g);
                    let r = c.compare_exchange(cur2, Obj::value(&ledger), &g);
                    assert!(r.is_ok(), "compare-exchange on a slab value failed");
                    let _ = cur;
                }
            }
        }
        wait_for("reader passes", Duration::from_secs(120), || {
            reads.load(Relaxed) > 2
        });
    });
    drop(cells);
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    assert_shrinks_to_no_slab(&cache);
}

#[test]
fn slab_and_boxed_values_are_freed_once_after_their_readers() {
    readers_and_writer(Policy::default(), 5, 20_000);
}

#[test]
fn slab_values_on_the_last_resort_list() {
    readers_and_writer(Policy::Prohibit, 0, 4_000);
}

/// A cell of an instance of this test's.
type Cell = RcuCell<Obj, Arc<Krcu>>;

/// A cell holding one slab value, with its instance, its ledger and the
/// value's cache.
fn cell_holding_a_slab_value() -> (Arc<Krcu>, Arc<Ledger>, SlabCache<Obj>, Cell) {
    let k = instance(Policy::default(), 5);
    let ledger = Ledger::new(1);
    let cache = k.slab_cache::<Obj>("v").unwrap();
    let cell = RcuCell::empty_in(k.clone());
    cell.store_slab(cache.alloc_box(Obj::value(&ledger)).ok().unwrap())
        .unwrap();
    (k, ledger, cache, cell)
}

#[test]
fn dropping_the_cell_retires_its_slab_value() {
    let (k, ledger, _cache, cell) = cell_holding_a_slab_value();
    let g = k.rcu().read_lock();
    let v: &Obj = cell.load(&g).unwrap();
    v.check();
    drop(g);
    drop(cell);
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

#[test]
fn clear_retires_a_slab_value() {
    let (k, ledger, _cache, cell) = cell_holding_a_slab_value();
    cell.clear().unwrap();
    assert!(cell.load(&k.rcu().read_lock()).is_none());
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

#[test]
fn a_box_of_another_instance_or_in_nmi_is_handed_back() {
    let a = instance(Policy::default(), 5);
    let b = instance(Policy::default(), 5);
    let ledger = Ledger::new(4);
    let cache_b = b.slab_cache::<Obj>("b").unwrap();
    let cell = RcuCell::new_in(a.clone(), Obj::value(&ledger));
    let x = match cell.store_slab(cache_b.alloc_box(Obj::value(&ledger)).ok().unwrap()) {
        Err(SlabRetireError::OtherInstance(x)) => x,
        other => panic!("not refused: {other:?}"),
    };
    x.check();
    drop(x);
    // A cell of the process-wide instance and a cache of an instance.
    let global_cell = RcuCell::<Obj>::empty();
    let y = cache_b.alloc_box(Obj::value(&ledger)).ok().unwrap();
    assert!(matches!(
        global_cell.store_slab(y),
        Err(SlabRetireError::OtherInstance(_))
    ));
    // NMI context.
    let cache_a = a.slab_cache::<Obj>("a").unwrap();
    let z = cache_a.alloc_box(Obj::value(&ledger)).ok().unwrap();
    let z = {
        let _nmi = krcu::context::enter_nmi();
        match cell.store_slab(z) {
            Err(SlabRetireError::InNmi(z)) => z,
            other => panic!("not refused: {other:?}"),
        }
    };
    cell.store_slab(z).unwrap();
    drop(cell);
    a.kvfree_rcu_barrier();
    assert_eq!(ledger.dropped.load(SeqCst), 4);
}

/// A cell of the process-wide instance with a cache of the process-wide
/// RCU.
#[test]
fn a_global_cell_takes_a_global_cache() {
    let ledger = Ledger::new(200);
    let cache = SlabCache::<Obj>::new(Krcu::global().pages(), "global").unwrap();
    let cell = RcuCell::new(Obj::value(&ledger));
    for _ in 0..199 {
        cell.store_slab(cache.alloc_box(Obj::value(&ledger)).ok().unwrap())
            .unwrap();
        cell.load(&krcu::rcu::read_lock()).unwrap().check();
    }
    drop(cell);
    krcu::kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}
