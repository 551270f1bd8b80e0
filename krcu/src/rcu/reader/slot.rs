//! One reader slot (the handshake word, its owner and its tenure), and
//! the thread key a slot records its owner by.
//!
//! Uses the handshake word's type only.

use crate::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize};
use std::sync::Mutex;

/// Slots per chunk.
pub(super) const CHUNK: usize = 64;
/// Chunks per registry: at most `CHUNK * MAX_CHUNKS` threads registered at
/// once with one instance.
pub(super) const MAX_CHUNKS: usize = 1024;

/// Who holds a slot, for stall warnings.
#[derive(Debug, Clone)]
pub(crate) struct ThreadInfo {
    pub(crate) name: String,
    pub(crate) tid: i32,
}

impl ThreadInfo {
    /// The calling thread's kernel name (`comm`, which std sets to the
    /// thread's name, cut to 15 bytes: what the kernel's own stall
    /// warnings print) and id. Never through `std::thread::current()`:
    /// a thread may register in a `pthread` key destructor that runs after
    /// std tore the thread's data down, where that call aborts the process.
    pub(super) fn current() -> Self {
        let mut buf = [0u8; 17];
        // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into
        // the buffer, which has 17 (zeroed, so it stays NUL-terminated).
        let r = unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let name = core::ffi::CStr::from_bytes_until_nul(&buf)
            .ok()
            .filter(|_| r == 0)
            .map(|c| c.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("<tid {tid}>"));
        ThreadInfo { name, tid }
    }
}

/// One reader slot: the handshake word and who owns it.
pub(crate) struct Slot {
    /// The reader's word ([`handshake`](super::super::handshake)): zero outside read-side sections.
    pub(crate) ctr: AtomicUsize,
    /// The instance's fence mode, copied here so that `read_unlock` finds
    /// it on the cache line it touches anyway (and the guard stays one
    /// pointer wide).
    pub(super) full_fence: bool,
    /// The owning thread; `None` while the slot is free. An orphan keeps
    /// its owner, for stall warnings.
    pub(crate) owner: Mutex<Option<ThreadInfo>>,
    /// The owner's live [`ReaderHandle`](super::ReaderHandle)s for this slot. Here rather than
    /// in the thread's registration list so that it outlives that list:
    /// the last handle releases the slot, once. Only the owning thread
    /// touches it (handles are tied to their thread), so Relaxed is enough;
    /// a released slot (count zero) passes to its next owner through the
    /// `free` mutex.
    pub(super) handles: AtomicUsize,
    /// An orphan: taken, but no longer counted in `in_use` (see the module
    /// doc). Changed only under the `free` mutex, which orders it (Relaxed).
    pub(super) orphan: AtomicBool,
    /// Abandoned: the orphan's thread is gone with its section open (a
    /// leaked guard); the section is never ended while the instance lives
    /// (see the module doc). Not counted in `orphans`. Changed only under
    /// the `free` mutex (Relaxed).
    pub(super) abandoned: AtomicBool,
    /// The owning thread's [`thread_key`] (0 while free): how the child of
    /// a `fork` tells the forking thread's slots even when its
    /// registration list is out of reach. Keys are never reused, so the key
    /// of a thread that exited leaving the slot taken (a leaked handle)
    /// can never be a later thread's. Changed only under the `free` mutex
    /// (Relaxed).
    pub(super) owner_key: AtomicU64,
    /// The slot's tenure: odd while taken, even while free, one more at
    /// every change. Each registration (and handle) records the tenure it
    /// took the slot in, and a release or orphaning names it: one that
    /// does not match (the slot was released already, perhaps taken again
    /// since) is refused, so a slot is never released twice. Changed only
    /// under the `free` mutex, which orders it (Relaxed).
    pub(super) tenure: AtomicU64,
    /// The owning thread's kernel id (0 while free): how an orphan's
    /// reaper ([`Readers::reap_orphans`](super::Readers::reap_orphans)) tells that its thread is gone.
    /// Changed only under the `free` mutex (Relaxed).
    pub(super) tid: AtomicI32,
}

thread_local! {
    /// This thread's [`thread_key`], 0 until first asked. No destructor, so
    /// it is reachable at any point of the thread's life.
    pub(super) static THREAD_KEY: std::sync::atomic::AtomicU64 = const { std::sync::atomic::AtomicU64::new(0) };
}

/// This thread's key for [`Slot::owner_key`]: a number from a process-wide
/// counter, taken on first use and never 0. Never reused (64 bits), so
/// unique among all the threads the process ever had: unlike an address
/// of thread-local data (which glibc hands to a later thread when it
/// reuses a stack), the key of a dead thread left on a slot can never be
/// mistaken for a later thread's. The child of a `fork` inherits the
/// forking thread's key with its thread-local data.
///
/// Async-signal-safe: a handler that interrupts the first use between the
/// load and the compare-exchange sets the key itself, and the interrupted
/// call then takes the handler's (Relaxed: only this thread and its
/// handlers touch the thread-local; the counter needs only atomicity).
pub(super) fn thread_key() -> u64 {
    pub(super) static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    THREAD_KEY.with(|k| {
        let key = k.load(std::sync::atomic::Ordering::Relaxed);
        if key != 0 {
            return key;
        }
        let new = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match k.compare_exchange(
            0,
            new,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => new,
            Err(key) => key,
        }
    })
}
