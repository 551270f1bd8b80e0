//! The one-entry slot cache of each thread: the last instance it read
//! under, and its slot there, torn-read-proof against signal handlers.
//!
//! Uses the slot type only.

use super::slot::Slot;
use crate::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use core::sync::atomic::compiler_fence;

/// The one-entry slot cache: the last instance this thread read under,
/// and its slot there.
///
/// # Signal handlers
/// A signal handler can interrupt the thread anywhere, including between
/// the two loads of a lookup or the stores of an update, and can itself
/// update the cache (a `read_lock` of another instance takes the slow
/// path). The words are atomics (Relaxed: only this thread and its
/// handlers touch them; the compiler fences keep program order, which is
/// the order a handler observes), and:
/// - an update is `seq` to odd (a compare-exchange from the even value it
///   read), `id = 0`, `slot`, `id`, `seq` to the next even value. A handler
///   that finds `seq` odd interrupted an update and does not update (the
///   two would tear each other); an update never runs inside another.
/// - a lookup reads `seq`, `id`, `slot`, `seq`, and uses the slot only if
///   both `seq` reads agree, are even, and `id` matches. If a handler
///   updated or cleared the cache anywhere between, `seq` moved (it only
///   grows, so no ABA). If the lookup runs in a handler that interrupted an
///   update, `seq` is odd: it misses.
/// - clearing stores `id = 0`, then adds 2 to `seq` (one atomic add, so
///   it keeps the parity, and an update it interrupts sees it): a lookup it
///   interrupts misses, and an update it interrupts, finding `seq` moved
///   at its end, ends with `id = 0` (the slot it was caching may be the one
///   the clear was for) and makes `seq` even again.
///
/// So a handler may unregister the thread from an instance (drop its last
/// handle: [`forget_cached`] clears the cache if it holds that instance or
/// an update is in progress) while the interrupted code is looking up or
/// caching that instance's slot: the interrupted code misses, or leaves the
/// cache empty. (It must still not do so while the interrupted code is
/// *inside a section* on that slot, or holds the slot from a lookup that
/// already returned; the handler frees nothing then: the section is open.)
///
/// The lookup costs two more loads from the same line than a torn-prone
/// one, and no extra dependency: `read_lock` stays a few nanoseconds.
#[repr(C, align(32))] // 24 bytes: one cache line
pub(super) struct Cache {
    /// Even outside updates; see above.
    pub(super) seq: AtomicU64,
    /// The cached instance's id, 0 for none.
    pub(super) id: AtomicU64,
    /// The thread's slot in that instance.
    pub(super) slot: AtomicPtr<Slot>,
}

impl Cache {
    /// The cached slot if it belongs to instance `id`.
    #[inline(always)]
    pub(super) fn get(&self, id: u64) -> Option<*const Slot> {
        let g1 = self.seq.load(Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        let cached = self.id.load(Ordering::Relaxed);
        let slot = self.slot.load(Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        let g2 = self.seq.load(Ordering::Relaxed);
        ((g1 ^ g2) | (cached ^ id) | (g1 & 1) == 0).then_some(slot.cast_const())
    }

    /// Caches `slot` for instance `id` (skipped when interrupting another
    /// update).
    pub(super) fn set(&self, id: u64, slot: *const Slot) {
        let g = self.seq.load(Ordering::Relaxed);
        if g & 1 != 0
            || self
                .seq
                .compare_exchange(g, g + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        compiler_fence(Ordering::SeqCst);
        self.id.store(0, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.slot.store(slot.cast_mut(), Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.id.store(id, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        if self
            .seq
            .compare_exchange(g + 1, g + 2, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // A handler cleared the cache meanwhile (`seq` is still odd: a
            // clear adds 2, and no update runs inside this one): perhaps
            // for this very slot, now freed. End empty, then even. Nothing
            // interrupts between these stores but handlers that run to
            // completion, so the plain add cannot lose one of theirs.
            self.id.store(0, Ordering::Relaxed);
            compiler_fence(Ordering::SeqCst);
            self.seq.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Empties the cache; an update or lookup it interrupts sees `seq`
    /// move (see above).
    pub(super) fn clear(&self) {
        self.id.store(0, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.seq.fetch_add(2, Ordering::Relaxed);
    }
}

thread_local! {
    /// The last instance this thread read under, and its slot there. No
    /// destructor, so it is reachable during thread teardown.
    pub(super) static CACHE: Cache = const {
        Cache {
            seq: AtomicU64::new(0),
            id: AtomicU64::new(0),
            slot: AtomicPtr::new(core::ptr::null_mut()),
        }
    };
}

/// Clears the cache if it may hold instance `id`: it does, or an update is
/// in progress (this runs in a handler that interrupted it: the update's
/// target is unknown).
pub(super) fn forget_cached(id: u64) {
    let _ = CACHE.try_with(|c| {
        if c.id.load(Ordering::Relaxed) == id || c.seq.load(Ordering::Relaxed) & 1 != 0 {
            c.clear();
        }
    });
}
