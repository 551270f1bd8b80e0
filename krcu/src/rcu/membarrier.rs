//! The asymmetric barrier of the memb flavour: readers pay a compiler fence,
//! the writer pays `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which runs
//! a full memory barrier on every CPU currently running a thread of this
//! process (by IPI) before it returns.
//!
//! Support is probed once per process with `MEMBARRIER_CMD_QUERY`, and the
//! process registers its intent with
//! `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED` (required since Linux 4.14
//! before the private expedited command may be used). Where either fails (an
//! old kernel, a seccomp filter, another OS), or where an instance is told
//! to with [`RcuConfig::force_fallback_fences`](super::RcuConfig), both sides
//! use full fences instead: `fence(SeqCst)` in the reader, and in the writer.
//!
//! # Why a compiler fence suffices in the reader
//! A reader's slot store, its compiler fence and its later loads of
//! protected data are in program order; the CPU may reorder the store after
//! the loads (store buffering), which is exactly what a full barrier on the
//! reader's CPU forbids. `membarrier` puts such a barrier on the reader's CPU
//! *at some point* during the call: a reader's store either precedes it (and
//! is then visible to the writer's scan that follows the call) or the
//! reader's loads follow it (and then see every update the writer made
//! before the call). The compiler fence keeps the compiler from doing the
//! reordering the barrier cannot undo. This is the argument of liburcu's
//! memb flavour and of the kernel's `sys_membarrier` documentation; it lies
//! outside the C++/Rust memory model, which has no notion of a remote
//! barrier, so the loom model checks the same handshake with a `SeqCst`
//! fence in the reader instead (the fallback, which is within the model).
//!
//! Uses: `sync`.
#![cfg(not(loom))]

use std::sync::OnceLock;

const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes two integer arguments (cmd, flags) and, for
    // the commands used here, touches no memory of ours; an unsupported
    // command or kernel returns -1 with errno set.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_int) }
}

/// Whether this process can use `MEMBARRIER_CMD_PRIVATE_EXPEDITED`: probed
/// and registered on first call, then cached.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let mask = membarrier(MEMBARRIER_CMD_QUERY);
        let ok = mask >= 0
            && (mask as libc::c_int) & MEMBARRIER_CMD_PRIVATE_EXPEDITED != 0
            && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
        if ok {
            tracing::debug!("membarrier: private expedited registered");
        } else {
            tracing::info!(
                "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) unavailable: RCU readers use full fences"
            );
        }
        ok
    })
}

/// The writer's side: a full barrier on every CPU running a thread of this
/// process (`smp_mb__master` in liburcu), or a full fence on this one when
/// readers use full fences themselves.
pub(crate) fn heavy(use_membarrier: bool) {
    if use_membarrier {
        let r = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
        // Registered and probed: the call cannot fail. If it ever did, a
        // silent fence would let readers be missed; refuse to go on.
        assert!(
            r == 0,
            "membarrier(PRIVATE_EXPEDITED) failed after registration: {r}"
        );
    }
    // Orders the writer's own accesses around the call in the language's
    // model (membarrier is opaque to the compiler), and is the whole
    // barrier in fallback mode.
    crate::sync::atomic::fence(crate::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_is_stable_and_heavy_barrier_works() {
        let a = super::available();
        assert_eq!(a, super::available());
        super::heavy(a);
        super::heavy(false);
    }
}
