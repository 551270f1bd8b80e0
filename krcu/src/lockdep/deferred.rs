//! Reports found where the heap may not be touched, kept in fixed storage
//! until a context that may allocate formats and delivers them (the
//! kernel's deferred printk from NMI: `printk_deferred`, `printk_safe`).
//!
//! A signal handler (hardirq or NMI context) may have interrupted its
//! thread inside `malloc`, so a report found there must not allocate or
//! take a lock: [`defer`] copies its [`Record`] (plain `Copy` data) into one
//! of [`DEFERRED_REPORTS`] static slots, claimed with one compare-exchange.
//! [`flush`] later turns each into a [`Report`](super::Report) and hands it
//! to its domain's handler, oldest first. When every slot is taken the
//! record is counted as dropped, and the next delivered report says how
//! many were.
//!
//! # The slot protocol and its memory ordering
//! A slot's state goes `EMPTY → WRITING` (a writer's claim: compare-exchange,
//! `Acquire`), `WRITING → READY` (the writer, once the data is written:
//! `Release` store), `READY → WRITING` (a flusher's claim: compare-exchange,
//! `Acquire`), and `WRITING → EMPTY` (the flusher, once it has copied the data
//! out: `Release` store). Only the thread that claimed a slot touches its
//! data, so access is exclusive: the writer's `Release` pairs with the
//! flusher's `Acquire` (the data is complete when read) and the flusher's
//! `Release` of `EMPTY` with the next writer's `Acquire` (the old data was
//! read before it is overwritten). Writers never wait, so a handler that
//! interrupts a flush on its own thread simply takes another slot.
//!
//! Flushers are serialised by a mutex, and [`PENDING`] counts records from
//! their claim until their delivery has finished (`AcqRel` on both sides):
//! a reader that sees it at zero, with `Acquire`, also sees the effects of
//! every delivery that brought it there; one that sees it above zero takes
//! the mutex and so waits for a delivery in progress elsewhere. That is what
//! lets a [`ReportLog`](super::ReportLog) query, made after a signal handler's
//! offence, show the report even if another thread is delivering it.
//!
//! Uses the records of `format.rs` and the [`Validator`] that delivers
//! them; never the code that finds reports.

use super::DEFERRED_REPORTS;
use super::format::{self, Record};
use super::validator::Validator;
use core::cell::{Cell, UnsafeCell};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

struct Pending {
    seq: u64,
    validator: Arc<Validator>,
    record: Record,
}

struct Slot {
    state: AtomicU8,
    data: UnsafeCell<MaybeUninit<Pending>>,
}

// SAFETY: `data` is written only by the thread that moved `state` from
// EMPTY to WRITING and read only by the flusher that moved it from READY to
// EMPTY (see the module's protocol), so no two threads touch it at once;
// `Pending` is `Send` (a validator is an `Arc` of `Send + Sync` state, a
// `Record` plain data).
unsafe impl Sync for Slot {}

static SLOTS: [Slot; DEFERRED_REPORTS] = [const {
    Slot {
        state: AtomicU8::new(EMPTY),
        data: UnsafeCell::new(MaybeUninit::uninit()),
    }
}; DEFERRED_REPORTS];

/// Records claimed and not yet delivered.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Records lost to full storage since the last delivered report said so.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Orders records for delivery (only each thread's own order matters;
/// `Relaxed` keeps that, by program order).
static SEQ: AtomicU64 = AtomicU64::new(0);
/// One flusher at a time.
static FLUSH: Mutex<()> = Mutex::new(());

thread_local! {
    /// Set while this thread flushes: a handler's nested flush on the
    /// same thread (a custom handler that takes a lock, or queries a log)
    /// returns at once instead of deadlocking on [`FLUSH`]; the outer one
    /// delivers what is left.
    static FLUSHING: Cell<bool> = const { Cell::new(false) };
}

/// Keeps `record` for later delivery to `validator`'s handler. Neither
/// allocates nor locks nor waits: callable from a signal handler. Returns
/// false if the storage was full (the record is counted as dropped).
pub(crate) fn defer(validator: &Arc<Validator>, record: &Record) -> bool {
    for slot in &SLOTS {
        if slot
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            PENDING.fetch_add(1, Ordering::AcqRel);
            let pending = Pending {
                seq: SEQ.fetch_add(1, Ordering::Relaxed),
                // An `Arc` clone: an atomic increment, no allocation.
                validator: validator.clone(),
                record: *record,
            };
            // SAFETY: this thread moved the slot to WRITING, so it alone may
            // touch the data until it publishes READY; the slot's previous
            // contents, if any, were moved out before it became EMPTY.
            unsafe { (*slot.data.get()).write(pending) };
            slot.state.store(READY, Ordering::Release);
            return true;
        }
    }
    DROPPED.fetch_add(1, Ordering::Relaxed);
    false
}

/// Moves the oldest ready record out of its slot, if there is one.
fn take() -> Option<Pending> {
    let oldest = SLOTS
        .iter()
        .filter(|s| s.state.load(Ordering::Acquire) == READY)
        // SAFETY: the slot is READY, whose data only the flusher (this
        // thread, holding FLUSH) may read or retire, and its writer's
        // `Release` of READY is paired with the `Acquire` above.
        .min_by_key(|s| unsafe { (*s.data.get()).assume_init_ref().seq })?;
    oldest
        .state
        .compare_exchange(READY, WRITING, Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    // SAFETY: READY → WRITING just now, by this thread: the data is
    // initialised and no writer can claim the slot before the EMPTY below.
    let pending = unsafe { (*oldest.data.get()).assume_init_read() };
    oldest.state.store(EMPTY, Ordering::Release);
    Some(pending)
}

/// Lowers [`PENDING`] once a record's delivery is over, panic or not.
struct Delivered;

impl Drop for Delivered {
    fn drop(&mut self) {
        PENDING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resets [`FLUSHING`], panic or not.
struct Flushing;

impl Drop for Flushing {
    fn drop(&mut self) {
        FLUSHING.with(|f| f.set(false));
    }
}

/// Formats and delivers every deferred record, oldest first. Call only
/// where allocating is allowed. With `wait`, waits for a flush in progress
/// on another thread (so its deliveries are over on return); without, leaves
/// the work to it.
pub(crate) fn flush(wait: bool) {
    if PENDING.load(Ordering::Acquire) == 0 || FLUSHING.with(Cell::get) {
        return;
    }
    let _guard = if wait {
        FLUSH.lock().unwrap_or_else(|e| e.into_inner())
    } else {
        match FLUSH.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        }
    };
    FLUSHING.with(|f| f.set(true));
    let _flushing = Flushing;
    while let Some(p) = take() {
        let _delivered = Delivered;
        // The count of drops goes with the last report of the batch: the
        // storage filled up before they were dropped.
        let last = !SLOTS
            .iter()
            .any(|s| s.state.load(Ordering::Acquire) == READY);
        let dropped = if last {
            DROPPED.swap(0, Ordering::Relaxed)
        } else {
            0
        };
        let report = format::format(&p.record, true, dropped);
        p.validator.deliver(report);
    }
}
