//! AddressSanitizer annotations for krcu's own memory.
//!
//! Pages and slab objects come from krcu's `mmap` arena, not from `malloc`,
//! so AddressSanitizer cannot tell a free page or object from a live one by
//! itself. When the crate is built with AddressSanitizer (nightly,
//! `-Zsanitizer=address`; the build script derives the `krcu_asan` cfg from
//! `CARGO_CFG_SANITIZE`) the page allocator poisons free blocks and the
//! slab caches poison free objects, and both unpoison what they hand out,
//! so an access to freed memory is reported as `use-after-poison`. In any
//! other build these functions are empty and compile to nothing.
//!
//! Poisoning only changes AddressSanitizer's shadow memory, never the
//! memory itself, and AddressSanitizer is conservative at the edges of a
//! region that shares an 8-byte granule with live memory (it leaves the
//! granule addressable): it cannot report a false use-after-poison there.
//!
//! Uses nothing else of the crate.

#[cfg(krcu_asan)]
unsafe extern "C" {
    fn __asan_poison_memory_region(addr: *const core::ffi::c_void, size: usize);
    fn __asan_unpoison_memory_region(addr: *const core::ffi::c_void, size: usize);
}

/// Marks `len` bytes at `addr` as not to be accessed (freed).
#[inline(always)]
pub(crate) fn poison(addr: *const u8, len: usize) {
    #[cfg(krcu_asan)]
    // SAFETY: the call only writes AddressSanitizer's shadow bytes for the
    // range (memory krcu mapped); no program memory is read or written.
    unsafe {
        __asan_poison_memory_region(addr.cast(), len)
    };
    #[cfg(not(krcu_asan))]
    let _ = (addr, len);
}

/// Marks `len` bytes at `addr` as accessible again (allocated).
#[inline(always)]
pub(crate) fn unpoison(addr: *const u8, len: usize) {
    #[cfg(krcu_asan)]
    // SAFETY: as in `poison`: only shadow bytes change.
    unsafe {
        __asan_unpoison_memory_region(addr.cast(), len)
    };
    #[cfg(not(krcu_asan))]
    let _ = (addr, len);
}
