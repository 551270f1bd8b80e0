//! Panics caught on someone else's behalf: a worker, reclaimer or slab
//! free that runs user destructors catches their panics so that one
//! panicking destructor neither stops the rest nor kills the thread. This
//! module owns what happens to the caught payload.
//!
//! Uses nothing else of the crate.

/// Drops a caught panic payload, catching (and leaking) a panic of its own
/// destructor: a payload whose `Drop` panics must not unwind out of the
/// worker, reclaimer or free that caught the first panic.
#[cold]
pub(crate) fn drop_panic_payload(payload: Box<dyn core::any::Any + Send>) {
    if let Err(again) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(payload))) {
        // Its payload may panic when dropped too: leak it.
        core::mem::forget(again);
    }
}
