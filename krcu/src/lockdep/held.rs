//! The per-thread stack of held locks (the kernel's `current->held_locks`).
//!
//! A fixed array of [`MAX_LOCK_DEPTH`] entries in a `const`-initialised
//! thread-local, so pushing and popping never allocate and are safe in a
//! signal handler. A handler that interrupts a push or pop sees either the
//! old or the new depth (the entry is written before the depth is raised,
//! with a compiler fence between), and leaves the stack as it found it.
//!
//! Uses the class ids and wait types only.

use super::ClassId;
use super::WaitType;
use crate::context::ContextKind;
use core::cell::Cell;
use core::panic::Location;
use core::sync::atomic::{Ordering, compiler_fence};

/// The kernel's `MAX_LOCK_DEPTH`.
pub const MAX_LOCK_DEPTH: usize = 48;

/// One held lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeldLock {
    /// The lock's address: its identity while held.
    pub(crate) addr: usize,
    pub(crate) class: ClassId,
    pub(crate) outer: WaitType,
    pub(crate) inner: WaitType,
    /// The context it was taken in.
    pub(crate) context: ContextKind,
    pub(crate) trylock: bool,
    pub(crate) at: Option<&'static Location<'static>>,
}

impl HeldLock {
    const EMPTY: HeldLock = HeldLock {
        addr: 0,
        class: ClassId::NONE,
        outer: WaitType::Free,
        inner: WaitType::Free,
        context: ContextKind::Task,
        trylock: false,
        at: None,
    };
}

struct Held {
    depth: Cell<usize>,
    locks: [Cell<HeldLock>; MAX_LOCK_DEPTH],
    /// The caller location the next acquisition is attributed to, set by
    /// the `#[track_caller]` lock wrappers just before they call into the
    /// raw lock.
    caller: Cell<Option<&'static Location<'static>>>,
}

#[cfg(not(loom))]
thread_local! {
    static HELD: Held = const {
        Held {
            depth: Cell::new(0),
            locks: [const { Cell::new(HeldLock::EMPTY) }; MAX_LOCK_DEPTH],
            caller: Cell::new(None),
        }
    };
}

#[cfg(loom)]
loom::thread_local! {
    static HELD: Held = Held {
        depth: Cell::new(0),
        locks: [const { Cell::new(HeldLock::EMPTY) }; MAX_LOCK_DEPTH],
        caller: Cell::new(None),
    };
}

/// The number of locks the current thread holds (as the validator saw them).
pub(crate) fn depth() -> usize {
    HELD.with(|h| h.depth.get())
}

/// The held lock at `i` (0 is the outermost).
pub(crate) fn get(i: usize) -> HeldLock {
    HELD.with(|h| h.locks[i].get())
}

/// A copy of the whole stack, outermost first.
pub(crate) fn snapshot() -> Vec<HeldLock> {
    HELD.with(|h| (0..h.depth.get()).map(|i| h.locks[i].get()).collect())
}

/// A copy of the held-lock stack in fixed storage, for a report: taking
/// one never allocates, so a signal handler may.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeldStack {
    locks: [HeldLock; MAX_LOCK_DEPTH],
    len: usize,
}

impl HeldStack {
    /// The current thread's stack now.
    pub(crate) fn capture() -> HeldStack {
        HELD.with(|h| {
            let len = h.depth.get().min(MAX_LOCK_DEPTH);
            let mut locks = [HeldLock::EMPTY; MAX_LOCK_DEPTH];
            for (i, l) in locks.iter_mut().enumerate().take(len) {
                *l = h.locks[i].get();
            }
            HeldStack { locks, len }
        })
    }

    /// The held locks, outermost first.
    pub(crate) fn as_slice(&self) -> &[HeldLock] {
        &self.locks[..self.len]
    }
}

/// Pushes `lock`; returns false when the stack is full.
///
/// The slot is reserved first (a placeholder that lowers no level and adds
/// no edge, then the depth), and filled after: a signal handler that lands
/// before the depth is raised pushes and pops above it without touching the
/// slot; one that lands after sees the placeholder. (Writing the entry first
/// let such a handler overwrite it, losing this lock and leaving the
/// handler's behind.)
pub(crate) fn push(lock: HeldLock) -> bool {
    HELD.with(|h| {
        let d = h.depth.get();
        if d >= MAX_LOCK_DEPTH {
            return false;
        }
        h.locks[d].set(HeldLock {
            class: ClassId::NONE,
            inner: WaitType::Max,
            outer: WaitType::Free,
            trylock: true,
            ..lock
        });
        compiler_fence(Ordering::SeqCst);
        h.depth.set(d + 1);
        compiler_fence(Ordering::SeqCst);
        h.locks[d].set(lock);
        true
    })
}

/// Removes the entry for the lock at `addr` (the innermost one if it is
/// held more than once, which only a trylock can do); out-of-order releases
/// are allowed, as in the kernel. Returns false if it was not on the stack.
pub(crate) fn pop(addr: usize) -> bool {
    HELD.with(|h| {
        let d = h.depth.get();
        let Some(i) = (0..d).rev().find(|&i| h.locks[i].get().addr == addr) else {
            return false;
        };
        for j in i..d - 1 {
            h.locks[j].set(h.locks[j + 1].get());
        }
        compiler_fence(Ordering::SeqCst);
        h.depth.set(d - 1);
        true
    })
}

/// Records where the next acquisition on this thread comes from.
#[inline]
pub(crate) fn set_caller(at: &'static Location<'static>) {
    HELD.with(|h| h.caller.set(Some(at)));
}

/// Takes the recorded caller location, if any.
#[inline]
pub(crate) fn take_caller() -> Option<&'static Location<'static>> {
    HELD.with(|h| h.caller.take())
}
