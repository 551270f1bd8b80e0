//! Unit tests of the slab cache that reach into its locks.

use super::SlabCache;
use crate::Domain;
use crate::page::{Gfp, PageAllocator, PageConfig, Watermarks};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// A free in a signal handler whose per-CPU trylock fails must not wait
/// for the node lock: the thread it interrupted may hold it (here
/// another thread holds both, as long as the free has not returned, or
/// 5 s). The object is deferred, and the next task-context node-lock
/// holder gives it back.
#[test]
fn hardirq_free_never_waits_for_the_node_lock() {
    let d = Domain::builder().cpus(1).build();
    let pa = PageAllocator::new(
        &d,
        PageConfig {
            arena_size: 4 << 20,
            watermarks: Some(Watermarks::NONE),
            kswapd: false,
            ..PageConfig::default()
        },
    )
    .unwrap();
    let cache = SlabCache::<u64>::new(&pa, "hardirq").unwrap();
    let obj = cache.alloc(Gfp::KERNEL, 5).unwrap();
    let held = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let waited = std::thread::scope(|s| {
        s.spawn(|| {
            let _cpu = cache.core.cpu.get(0).lock();
            let _node = cache.core.node.lock();
            held.store(true, SeqCst);
            let t = Instant::now();
            while !done.load(SeqCst) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        while !held.load(SeqCst) {
            std::thread::yield_now();
        }
        let t = Instant::now();
        {
            let _hardirq = crate::context::enter_hardirq();
            // SAFETY: allocated above, freed once, not used again.
            unsafe { cache.free(obj) };
        }
        let waited = t.elapsed();
        done.store(true, SeqCst);
        waited
    });
    assert!(
        waited < Duration::from_secs(2),
        "the handler's free waited {waited:?} for the node lock"
    );
    assert_eq!(cache.stats().deferred_frees, 1);
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0);
}

/// A sheaf that still has objects, handed to the exchange (an owner whose
/// fast path lost to a taker holding its slot's gate, which then finds its
/// sheaf back), serves as it is: filed on the barn's empty list, its free
/// objects were retired with the next `rcu_free` sheaf filled in it and
/// dropped a second time (seen as double drops once the monitor submitted
/// partly filled sheaves while their owners allocated).
#[test]
fn a_sheaf_with_objects_is_never_filed_as_empty() {
    use super::cache::Mode;
    use super::sheaf::{self, Sheaf};
    let d = Domain::builder().cpus(1).build();
    let pa = PageAllocator::new(&d, PageConfig::default().arena_size(4 << 20).kswapd(false)).unwrap();
    let cache = SlabCache::<u64>::new(&pa, "exchange").unwrap();
    let core = &*cache.core;
    // A full sheaf in the barn, one with three objects in hand.
    let full = Sheaf::new_raw(core.sheaf_capacity);
    core.refill_sheaf(full, Gfp::KERNEL).unwrap();
    core.barn.lists.lock().put_full(full, usize::MAX).unwrap();
    let mine = Sheaf::new_raw(4);
    // SAFETY: ours alone.
    let sh = unsafe { &mut *mine };
    sh.len = core.take_from_slabs(&mut sh.objs[..3], Gfp::KERNEL).unwrap();
    assert_eq!(sh.len, 3);
    let got = core.get_filled(mine, Gfp::KERNEL).ok().unwrap();
    assert_eq!(got, mine, "the sheaf with objects came back");
    assert_eq!(core.barn.counts(), (1, 0), "nothing was filed as empty");
    // And a sheaf with room serves for a free as it is.
    assert_eq!(core.get_room(mine, Mode::Block), mine);
    assert_eq!(sheaf::len(mine), 3);
    core.flush_and_free_sheaf(mine, Mode::Block);
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0);
}

/// A request for no objects (a full sheaf "refilled") takes nothing and
/// allocates no slab, even with no partial slab to take from; a full
/// sheaf refilled stays as it is.
#[test]
fn an_empty_request_allocates_no_slab() {
    use super::cache::Mode;
    use super::sheaf::{self, Sheaf};
    let d = Domain::builder().cpus(1).build();
    let pa = PageAllocator::new(&d, PageConfig::default().arena_size(4 << 20).kswapd(false)).unwrap();
    let cache = SlabCache::<u64>::new(&pa, "empty-request").unwrap();
    let core = &*cache.core;
    assert_eq!(core.take_from_slabs(&mut [], Gfp::KERNEL), Ok(0));
    assert_eq!(cache.stats().slabs_allocated, 0, "a slab for nobody");
    let full = Sheaf::new_raw(4);
    core.refill_sheaf(full, Gfp::KERNEL).unwrap();
    assert_eq!(sheaf::len(full), 4);
    let slabs = cache.stats().slabs_allocated;
    // The slab's other objects are taken: no partial slab is left.
    let mut rest = vec![core::ptr::null_mut(); core.layout.objects - 4];
    assert_eq!(
        core.take_from_slabs(&mut rest, Gfp::KERNEL),
        Ok(rest.len())
    );
    assert_eq!(core.refill_sheaf(full, Gfp::KERNEL), Ok(0));
    assert_eq!(cache.stats().slabs_allocated, slabs, "a full sheaf refilled took a slab");
    core.return_to_slabs(&mut rest, Mode::Block);
    core.flush_and_free_sheaf(full, Mode::Block);
    cache.shrink();
    assert_eq!(cache.stats().slabs, 0);
}
