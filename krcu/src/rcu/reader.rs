//! Readers: per-(thread, instance) slots, their registry, and the read-side
//! guard.
//!
//! # Slots
//! Each instance keeps a registry of cache-line-padded slots in chunks that
//! are never freed while the instance lives: the grace-period scan walks
//! them without a lock (it reads the published length with Acquire, then
//! the slots), and a thread that unregisters only returns its slot to a free
//! list for the next thread to take. A free slot reads zero, so a scan that
//! meets it skips it. A slot goes back to the free list only from its own
//! thread, with its section closed, or once its thread is gone (see
//! *Thread exit*; in the child of a `fork`, from the only thread left), so
//! a guard can never end another thread's section.
//!
//! A taken slot records its owner's key (a per-thread number, never
//! reused), so that the child of a `fork` keeps the forking
//! thread's slots even when it cannot read its registration list (a fork
//! from a signal handler that interrupted a registration).
//!
//! A slot is never released twice, by construction: each slot counts its
//! **tenures** (odd while taken, even while free, changed only under the
//! registry lock), each registration and handle records the tenure its
//! slot was taken in, and a release, an orphaning, or the late list's end
//! of a section checks under that lock that the slot is still in that
//! tenure. A second release of the same tenure (or one after the slot
//! changed hands, even back to the same thread) is refused: counted, an
//! error logged, and a failed assertion in debug builds. So a stale
//! registration can never free, or end the section of, a slot that
//! another registration (of any thread) holds.
//!
//! # Registration
//! A thread gets its slot on first use ([`Rcu::read_lock`](super::Rcu::read_lock)
//! registers it, which allocates) or ahead of time with
//! [`Rcu::register_thread`](super::Rcu::register_thread), after which
//! neither `read_lock` allocates. The thread's registrations sit in a
//! thread-local list; a one-entry thread-local cache (instance id, slot)
//! makes `Rcu::read_lock` a few loads away from the slot. A
//! [`ReaderHandle`] holds the slot directly: [`ReaderHandle::read_lock`] is
//! the fastest path. Dropping the last handle unregisters the thread from
//! that instance (unless it is inside a read-side section of it; then the
//! thread's exit does).
//!
//! # Thread exit
//! Thread-local destructors run newest first, so code of the exiting thread
//! (another thread-local's destructor) can still run, and read, after the
//! registration list's destructor. That destructor therefore frees only
//! the slots that are closed and unheld; the others move to the thread's
//! **late list**, a POSIX thread-specific value (`pthread_key_create`)
//! whose destructor glibc runs after every thread-local destructor (musl
//! runs Rust's thread-local destructors from a key destructor of their
//! own; ours, set while they run, runs after them, in the same round or
//! the next). Reads in later destructors use (or take) the thread's slot
//! through the late list too. A slot still open when the list goes is an
//! **orphan**: no longer counted in [`RcuStats::readers`](super::RcuStats),
//! but grace periods still wait for it and stall warnings still name its
//! thread: its section may still be running (a guard kept in an older
//! thread-local).
//!
//! The late list's destructor frees the slots that are closed, but never
//! ends a section still open: code of the thread may still run after it
//! (another library's `pthread` key destructors) and hold a guard (kept
//! in a Rust thread-local first used in such a destructor, which glibc
//! never destroys), so an open section there is not known to be a leaked
//! guard's. Its slot stays an orphan, still the thread's: a later drop of
//! the guard ends the section on it. Only the thread's end settles it: a
//! grace period that finds orphans (a cold path; none, and the scan costs
//! one more load) frees each one whose thread is gone
//! (`tgkill(getpid(), tid, 0)` fails with `ESRCH`) if its section is
//! closed. A section still open when its thread is gone was left by a
//! leaked guard (`mem::forget`, `Box::leak`): a `Box::leak`ed guard of a
//! `'static` instance (the process-wide one) is a `&'static ReadGuard`,
//! and references loaded under it (say from an
//! [`RcuCell`](crate::cell::RcuCell)) are `&'static` too, and may have
//! been handed to other threads. So such a section is **abandoned**, never
//! ended: grace periods of the instance stall for good (an error is
//! logged once and [`RcuStats::abandoned_sections`](super::RcuStats)
//! counts it), as a leaked guard stops crossbeam-epoch's epoch for good.
//! A stall, never an early free. Only the instance's teardown ends it:
//! dropping the instance needs every borrow of it over, so no reference
//! loaded under the guard is left. So does a registration that would
//! otherwise grow the registry reap closed orphans. A tid the kernel gave
//! to a new thread of the process only puts the reaping off until the new
//! thread is gone too. A section running in any destructor of the
//! thread is waited for. In the child of a `fork`, the orphans of other
//! threads, open or abandoned, are freed with their other slots (their
//! tids are the parent's): `fork` is an `unsafe` call, and the child must
//! not use a reference loaded under another thread's guard.
//!
//! The late list is armed at a thread's first registration, not only when
//! the registration list's destructor needs it: a thread that first reads
//! in another library's `pthread` key destructor (after glibc has run the
//! thread-local destructors) makes a registration list whose destructor
//! never runs. The late list's destructor is the backstop: if that list
//! still holds registrations (a destructor-less flag says so) it retires
//! them as the list's destructor would, and marks the list gone for good
//! first (the same flag): the list stays reachable, but from then on
//! registrations and handle drops of the thread treat it as destroyed and
//! use the late list, so nothing is registered in a list that no
//! destructor will empty, and a handle never finds another registration
//! in its place. A handle's drop looks for its own registration by
//! instance, slot and tenure, never by instance alone.
//!
//! Instance ids are never reused, so a stale cache entry can never match a
//! later instance built at the same address.
//!
//! Uses nothing else of the crate.
#![cfg(not(loom))]

mod cache;
mod exit;
mod guard;
mod registration;
mod registry;
mod slot;

pub(crate) use guard::lock;
pub use guard::{ReadGuard, ReaderHandle};
pub(crate) use registry::Readers;

#[cfg(test)]
mod tests;
