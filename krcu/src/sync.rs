//! The one place that chooses between `std` and `loom` primitives.
//!
//! Concurrency code in krcu imports its atomics, `Arc`, `UnsafeCell` and
//! spin hints from here, never from `std` directly, so that the same code can
//! be model-checked by building with `RUSTFLAGS="--cfg loom"` (the loom models
//! are `#[cfg(loom)]` tests). This follows crossbeam-epoch's layout.
//!
//! `UnsafeCell` here has loom's closure API (`with`, `with_mut`) under both
//! configurations so that loom can track every access to shared data.
//!
//! Uses nothing else of the crate.

#![allow(dead_code, unused_imports)] // a switch: each part uses what it needs

#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic;
#[cfg(loom)]
pub(crate) use loom::thread::yield_now;

#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic;
#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use std::thread::yield_now;

/// A spin-wait hint: `spin_loop` on real threads, a yield under loom (loom
/// must be told that the thread is waiting for another to make progress).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// An `UnsafeCell` with loom's access API.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(loom::cell::UnsafeCell<T>);

#[cfg(loom)]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::cell::UnsafeCell::new(value))
    }
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        self.0.with(f)
    }
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.0.with_mut(f)
    }
}

/// An `UnsafeCell` with loom's access API.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }
    pub(crate) fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
    #[inline(always)]
    pub(crate) fn get(&self) -> *mut T {
        self.0.get()
    }
}
