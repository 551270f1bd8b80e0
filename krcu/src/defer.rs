//! `defer`: run a closure after a grace period (liburcu's `defer_rcu`,
//! crossbeam-epoch's `defer`), for what has no `RcuHead` to retire.
//!
//! Uses: `context`, `instance`, `rcu`.

use crate::context;
use crate::instance::{InNmi, Krcu};
use crate::rcu::{HasRcuHead, RcuHead};

/// Why [`Krcu::defer`] refused a closure; the closure is handed back, not
/// run and not dropped.
///
/// ```
/// use krcu::DeferError;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// let ran = Arc::new(AtomicBool::new(false));
/// let flag = ran.clone();
/// let refused = {
///     let _nmi = krcu::context::enter_nmi();
///     krcu::defer(move || flag.store(true, Ordering::SeqCst)).unwrap_err()
/// };
/// assert!(matches!(refused, DeferError::InNmi(_)));
/// assert!(!ran.load(Ordering::SeqCst), "not run");
/// let closure = refused.into_inner(); // handed back, not dropped
/// closure();
/// assert!(ran.load(Ordering::SeqCst));
/// ```
#[derive(thiserror::Error)]
#[must_use = "the closure is handed back: dropping it may free what readers can still reach"]
pub enum DeferError<F> {
    /// Called from NMI context, where `kfree_rcu` refuses.
    #[error("defer() called from NMI context: refused, the closure is handed back")]
    InNmi(F),
    /// Called on a real-time thread, which must not allocate (the closure
    /// is boxed).
    #[error("defer() called on a real-time thread: refused, the closure is handed back")]
    Realtime(F),
    /// Called in hardirq context (a signal handler), where `malloc` is not
    /// async-signal-safe (the closure is boxed).
    #[error(
        "defer() called in hardirq (signal-handler) context: refused, the closure is handed back"
    )]
    InHardirq(F),
}

impl<F> DeferError<F> {
    /// The closure handed back.
    pub fn into_inner(self) -> F {
        match self {
            Self::InNmi(f) | Self::Realtime(f) | Self::InHardirq(f) => f,
        }
    }
}

impl<F> core::fmt::Debug for DeferError<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::InNmi(_) => "InNmi(..)",
            Self::Realtime(_) => "Realtime(..)",
            Self::InHardirq(_) => "InHardirq(..)",
        })
    }
}

/// A deferred closure with the head `kfree_rcu` retires it by: dropping it
/// (after the grace period) runs the closure.
struct Deferred<F: FnOnce() + Send + 'static> {
    f: Option<F>,
    head: RcuHead,
}

// SAFETY: `head` is a field of type `RcuHead` of `Deferred<F>`, and
// `offset_of!` computes its byte offset for every `F`.
unsafe impl<F: FnOnce() + Send + 'static> HasRcuHead for Deferred<F> {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Deferred<F>, head);
}

impl<F: FnOnce() + Send + 'static> Drop for Deferred<F> {
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            f();
        }
    }
}

/// Checks the context, boxes `f` and hands it to `retire`.
fn defer_with<F: FnOnce() + Send + 'static>(
    f: F,
    retire: impl FnOnce(Box<Deferred<F>>) -> Result<(), InNmi<Deferred<F>>>,
) -> Result<(), DeferError<F>> {
    if context::in_nmi() {
        return Err(DeferError::InNmi(f));
    }
    if context::is_realtime() {
        return Err(DeferError::Realtime(f));
    }
    if context::in_hardirq() {
        return Err(DeferError::InHardirq(f));
    }
    let boxed = Box::new(Deferred {
        f: Some(f),
        head: RcuHead::new(),
    });
    match retire(boxed) {
        Ok(()) => Ok(()),
        // Not reached (NMI was checked above), but never lose the closure.
        Err(InNmi(mut b)) => Err(DeferError::InNmi(
            b.f.take().expect("a deferred closure runs only once"),
        )),
    }
}

impl Krcu {
    /// Runs `f` after a grace period of this instance (liburcu's
    /// `defer_rcu`, crossbeam-epoch's `Guard::defer`): every reader of
    /// [`rcu`](Self::rcu) that is in a section now has left it when `f`
    /// runs. `f` runs where this instance frees retired objects (a
    /// reclaimer thread, or a thread that assists it), so it must not wait
    /// for a grace period of this instance itself and should be short.
    ///
    /// `f` is boxed (one heap allocation), then retired like an object
    /// given to [`kfree_rcu`](Self::kfree_rcu).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// let krcu = krcu::Krcu::builder().arena_size(16 << 20).build().unwrap();
    /// let ran = Arc::new(AtomicBool::new(false));
    /// let r = ran.clone();
    /// krcu.defer(move || r.store(true, Ordering::Relaxed)).expect("task context");
    /// krcu.kvfree_rcu_barrier();
    /// assert!(ran.load(Ordering::Relaxed));
    /// ```
    ///
    /// # Errors
    /// Hands `f` back, neither run nor dropped: [`DeferError::InNmi`] from
    /// NMI context, [`DeferError::Realtime`] on a real-time thread
    /// ([`register_thread`](Self::register_thread),
    /// [`context::set_realtime`]), which must not allocate, and
    /// [`DeferError::InHardirq`] in a hardirq (signal) handler, where
    /// `malloc` is not async-signal-safe.
    #[doc(alias = "defer_rcu")]
    #[track_caller]
    pub fn defer<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<(), DeferError<F>> {
        defer_with(f, |b| self.kfree_rcu(b))
    }
}

/// [`Krcu::defer`] on the process-wide instance: `f` runs after a grace
/// period of [`krcu::rcu::global`](crate::rcu::global) (so a
/// [`krcu::rcu::read_lock`](crate::rcu::read_lock) holds it off). Where the
/// instance may not be built (see [`kfree_rcu`](crate::kfree_rcu)) it runs
/// as an RCU callback on the global RCU's worker instead; there it must not
/// call [`kvfree_rcu_barrier`](crate::kvfree_rcu_barrier) (or any barrier
/// or grace-period wait of the global RCU): the worker would wait for
/// itself, which krcu refuses with a panic (caught, and the rest of `f` is
/// lost). A closure that needs a barrier is deferred from where the
/// instance can be built (task context, outside any read-side section).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// let old_table = Arc::new(vec![1, 2, 3]); // say, unlinked from a cell
/// let done = Arc::new(AtomicBool::new(false));
/// let (table, flag) = (old_table.clone(), done.clone());
/// krcu::defer(move || {
///     drop(table); // no reader can reach it any more
///     flag.store(true, Ordering::SeqCst);
/// })
/// .expect("task context");
/// krcu::kvfree_rcu_barrier();
/// assert!(done.load(Ordering::SeqCst));
/// assert_eq!(Arc::strong_count(&old_table), 1);
/// ```
///
/// # Errors
/// As [`Krcu::defer`]: in NMI context, on a real-time thread or in
/// hardirq context `f` is handed back.
#[doc(alias = "defer_rcu")]
#[track_caller]
pub fn defer<F: FnOnce() + Send + 'static>(f: F) -> Result<(), DeferError<F>> {
    defer_with(f, crate::kfree_rcu)
}
