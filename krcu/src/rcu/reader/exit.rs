//! A thread's registrations and their end: the registration list, the
//! late list (a POSIX thread-specific value whose destructor runs after
//! every thread-local one) and what each does with its slots when the
//! thread exits (see *Thread exit* in the module documentation).
//!
//! Uses the registry and the slot cache.

use super::super::handshake;
use super::cache::{CACHE, Cache};
use super::registry::Readers;
use crate::sync::atomic::Ordering;
use core::cell::{Cell, RefCell};
use std::sync::{OnceLock, Weak};

/// One registration of this thread with one instance (its live
/// [`ReaderHandle`](super::ReaderHandle)s are counted in the slot).
pub(super) struct Registration {
    pub(super) id: u64,
    pub(super) readers: Weak<Readers>,
    pub(super) index: usize,
    /// The slot's tenure when this registration took it.
    pub(super) tenure: u64,
}

/// The thread's registrations; their destructor runs at thread exit.
pub(super) struct Registrations(RefCell<Vec<Registration>>);

impl Drop for Registrations {
    fn drop(&mut self) {
        // From here on nothing looks at this list (it is being
        // destroyed): registrations go to the late list.
        LIST.set(LIST_GONE);
        retire_registrations(core::mem::take(self.0.get_mut()));
    }
}

/// The end of a thread's registration list (its destructor, or the late
/// list's if that never runs): frees the slots that are closed and unheld,
/// and moves the others to the late list.
pub(super) fn retire_registrations(regs: Vec<Registration>) {
    let _ = CACHE.try_with(Cache::clear);
    for r in regs {
        let Some(readers) = r.readers.upgrade() else {
            // Without the instance there is no handle (each holds the
            // registry) and no guard (each borrows it).
            continue;
        };
        let slot = readers.slot(r.index);
        let held = slot.handles.load(Ordering::Relaxed) != 0;
        let open = handshake::active(slot.ctr.load(Ordering::Relaxed));
        if !held && !open {
            readers.release_slot(r.index, r.tenure);
            continue;
        }
        // Still held by a handle, or inside a section, in a
        // thread-local destroyed later: the late list keeps it (a
        // handle's last drop, or the list's destructor, frees it; one
        // still open then is freed once the thread is gone).
        if open && !held {
            tracing::debug!(
                "krcu: a thread's RCU registration list went with a read-side \
                 section open; grace periods wait for it until it ends"
            );
            readers.orphan_slot(r.index, r.tenure);
        }
        let index = r.index;
        if with_late_list(true, |late| late.push(r)).is_none() && !held {
            // No late list: the orphan stays taken for good (still
            // waited for while its section is open).
            tracing::warn!("krcu: no thread-specific key for an RCU orphan slot {index}; it leaks");
        }
    }
}

impl core::ops::Deref for Registrations {
    type Target = RefCell<Vec<Registration>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The late list: a thread's registrations after its registration list is
/// gone, as a `pthread` thread-specific value whose destructor
/// ([`late_list_destructor`]) runs after the thread's Rust thread-local
/// destructors (see the module doc).
type LateList = RefCell<Vec<Registration>>;

/// The process's thread-specific key for late lists (`None` if none could
/// be made; then late registrations leak, never free early).
pub(super) static LATE_KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();

/// The late-list key, made on first use if `create`.
pub(super) fn late_key(create: bool) -> Option<libc::pthread_key_t> {
    if !create {
        return LATE_KEY.get().copied().flatten();
    }
    *LATE_KEY.get_or_init(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out pointer; the destructor is an
        // `extern "C" fn(*mut c_void)` that accepts the values we set.
        let r = unsafe { libc::pthread_key_create(&mut key, Some(late_list_destructor)) };
        (r == 0).then_some(key)
    })
}

/// Runs `f` on the calling thread's late list, making it first if `create`.
/// `None` if there is none (and `create` is false, or no key).
pub(super) fn with_late_list<R>(
    create: bool,
    f: impl FnOnce(&mut Vec<Registration>) -> R,
) -> Option<R> {
    let key = late_key(create)?;
    // SAFETY: `key` is a live key (never deleted).
    let mut p = unsafe { libc::pthread_getspecific(key) }.cast::<LateList>();
    if p.is_null() {
        if !create {
            return None;
        }
        p = Box::into_raw(Box::new(LateList::new(Vec::new())));
        // SAFETY: a live key; the value is freed by its destructor (or
        // below if it could not be set).
        if unsafe { libc::pthread_setspecific(key, p.cast()) } != 0 {
            // SAFETY: from Box::into_raw just above, never shared.
            drop(unsafe { Box::from_raw(p) });
            return None;
        }
    }
    // SAFETY: a value of this key is a `LateList` from Box::into_raw, set
    // by this thread and freed only by its destructor, which clears the
    // value first (POSIX); only this thread reaches it. A signal handler
    // that registers during teardown while the list is borrowed gets a
    // `BorrowMutError` panic, not a second reference.
    let list = unsafe { &*p };
    Some(f(&mut list.borrow_mut()))
}

/// The late list's destructor: the thread has run every Rust
/// thread-local destructor, but code of it may still run (another
/// library's `pthread` key destructors, in this round or later), and may
/// still hold a guard (kept in a thread-local first used in such a
/// destructor, which glibc never destroys). So it frees only the slots
/// that are closed and unheld; a slot still open becomes an orphan,
/// never ended here: grace periods wait for it, and free it once its
/// thread is gone ([`Readers::reap_locked`]). A slot still held by a
/// handle stays taken (a leaked handle's slot does; a handle that a later
/// key destructor drops frees it, by its tenure).
///
/// Once a slot is freed here another thread may take it, so this thread
/// must never enter it again: no guard of it is open on it (freed only
/// closed), no handle holds it (skipped), and the cache is cleared before
/// the slots go, so a `read_lock` in code that still runs on this thread
/// (another key's destructor) misses the cache, finds no late list (POSIX
/// clears the value before calling us) and no registration list (gone, or
/// retired below for good) and takes a fresh slot in a new late list,
/// whose destructor runs in the next round. A guard still open on an
/// orphan ends on it (the slot stays this thread's until the thread is
/// gone). Each slot is freed only in the tenure it was listed in
/// ([`Readers::release_at_exit`]).
extern "C" fn late_list_destructor(p: *mut libc::c_void) {
    // SAFETY: the value was set by `with_late_list` from Box::into_raw, and
    // POSIX calls the destructor once per value, after clearing it.
    let list = unsafe { Box::from_raw(p.cast::<LateList>()) };
    let _ = CACHE.try_with(Cache::clear);
    // A registration list whose destructor never ran: first used after the
    // thread-local destructors had run (from another `pthread` key's
    // destructor), so its destructor was registered too late to run. Its
    // registrations are retired here, as that destructor would: the list
    // is marked gone and emptied first, so nothing is released twice, and
    // a slot still open or held goes to a new late list, whose destructor
    // runs in the next round. (Where Rust's thread-local destructors run
    // from a key destructor of their own, as on musl, the list may still
    // be destroyed later: it finds it empty. `LIST` is `LIST_GONE` once
    // its destructor has started, so the list is never touched after it
    // is gone.)
    if LIST.get() == LIST_LIVE {
        // Retired for good: from here on the list counts as gone (a
        // registration in a later destructor goes to the late list, and a
        // handle's drop looks for its slot there), so nothing is taken
        // into it that its destructor (which never runs) would have to
        // free, and nothing in it is released twice.
        LIST.set(LIST_GONE);
        let regs = REGISTRATIONS.try_with(|regs| {
            regs.try_borrow_mut()
                .map(|mut regs| core::mem::take(&mut *regs))
                .unwrap_or_default()
        });
        if let Ok(regs) = regs {
            retire_registrations(regs);
        }
    }
    for r in list.into_inner() {
        let Some(readers) = r.readers.upgrade() else {
            continue;
        };
        readers.release_at_exit(r.index, r.tenure);
    }
}

impl Readers {
    /// The late list's end for slot `i`, taken in `tenure` (see
    /// [`late_list_destructor`]): frees it if its section is closed and
    /// no handle holds it. A section still open is never ended here (a
    /// later key destructor of the thread may still be inside it): the
    /// slot stays an orphan, waited for by grace periods, until its thread
    /// closes it and is gone ([`Readers::reap_locked`]). All under `free`,
    /// after checking the tenure: a slot that changed hands since it was
    /// listed is neither orphaned nor freed (refused).
    pub(super) fn release_at_exit(&self, i: usize, tenure: u64) {
        let slot = self.slot(i);
        let free = self.lock_free();
        if !self.in_tenure(i, tenure) {
            drop(free);
            return self.refuse(i, tenure);
        }
        if slot.handles.load(Ordering::Relaxed) != 0 {
            // Held by a handle: leaked, or dropped by a later key
            // destructor of this thread, whose drop frees it (by its
            // tenure). It keeps its owner's key, which no later thread
            // gets (see `thread_key`).
            return;
        }
        if handshake::active(slot.ctr.load(Ordering::Relaxed)) {
            // Open: a leaked guard's, or one kept where a later key
            // destructor of this thread can still drop it. Only the
            // thread's end tells them apart: the reaper frees the slot
            // once the thread is gone. (The mark is made under `free`, as
            // the reaper reads it; the counter is left to the owner's own
            // `read_unlock`, or to the reaper once the owner is gone.)
            self.mark_orphan(i);
            drop(free);
            tracing::debug!(
                "krcu: a thread's late RCU registration list went with a read-side \
                 section open; grace periods wait for it until the thread is gone"
            );
            return;
        }
        self.release_locked(free, i);
    }
}

thread_local! {
    pub(super) static REGISTRATIONS: Registrations = const { Registrations(RefCell::new(Vec::new())) };
    /// The state of [`REGISTRATIONS`]: [`LIST_UNUSED`], [`LIST_LIVE`] (it
    /// holds registrations) or [`LIST_GONE`] (its destructor has started,
    /// or the late list's destructor retired it). No destructor, so it is
    /// reachable during thread teardown: the late list's destructor reads
    /// it to find a list whose destructor never ran (see the module doc).
    pub(super) static LIST: Cell<u8> = const { Cell::new(LIST_UNUSED) };
}

/// [`LIST`]: the registration list holds no registration yet.
pub(super) const LIST_UNUSED: u8 = 0;
/// [`LIST`]: the registration list holds registrations.
pub(super) const LIST_LIVE: u8 = 1;
/// [`LIST`]: the registration list is gone for good; the late list takes
/// its part.
pub(super) const LIST_GONE: u8 = 2;

/// Runs `f` on the thread's registration list; `Err` once it is gone
/// (destroyed, or retired by the late list's destructor).
pub(super) fn with_registrations<R>(
    f: impl FnOnce(&RefCell<Vec<Registration>>) -> R,
) -> Result<R, ()> {
    if LIST.get() == LIST_GONE {
        return Err(());
    }
    REGISTRATIONS.try_with(|regs| f(regs)).map_err(|_| ())
}
