//! Sealing a thread against system calls: a seccomp filter installed on
//! that thread alone traps every system call but `exit` and
//! `rt_sigreturn`; the SIGSYS handler records the call's number and ends
//! the thread, failing the test that joins it.
//!
//! A sealed thread cannot unseal itself, so it publishes its results in
//! atomics and ends with [`exit_thread`] (a raw `exit`); the test joins it
//! with `pthread_join` (the kernel clears its tid on exit).
//!
//! Valgrind makes system calls on a client thread's behalf (its scheduler
//! lock), which the filter would trap: under valgrind ([`under_valgrind`])
//! a test checks everything but the system calls.
//!
//! The same machinery, written inline, is in `kvfree_realtime_flood.rs`.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::*};

/// `AUDIT_ARCH_X86_64`: `EM_X86_64` (62) | `__AUDIT_ARCH_64BIT` |
/// `__AUDIT_ARCH_LE` (linux/audit.h).
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `offsetof(struct seccomp_data, nr)` and `arch`.
const NR_OFFSET: u32 = core::mem::offset_of!(libc::seccomp_data, nr) as u32;
const ARCH_OFFSET: u32 = core::mem::offset_of!(libc::seccomp_data, arch) as u32;

/// The system call a sealed thread was caught making (-1: none).
pub static TRAPPED: AtomicI64 = AtomicI64::new(-1);
/// The address just after the trapped `syscall` instruction (0: none).
pub static TRAPPED_AT: AtomicI64 = AtomicI64::new(0);
/// Set (Release) by the sealed thread, or its SIGSYS handler, when it has
/// published everything and is about to exit.
pub static DONE: AtomicBool = AtomicBool::new(false);

/// Clears the records of a previous sealed thread.
pub fn reset() {
    TRAPPED.store(-1, SeqCst);
    TRAPPED_AT.store(0, SeqCst);
    DONE.store(false, SeqCst);
}

/// SIGSYS: a trapped system call on the sealed thread. Records it and
/// ends the thread (the only thing it may still do).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: for SIGSYS the kernel fills `_sigsys` in the union at offset
    // 16 of siginfo_t on 64-bit: `_call_addr` (8 bytes), then `_syscall`
    // (an int) at offset 24; siginfo_t is 128 bytes.
    let (addr, nr) = unsafe {
        let p = info.cast::<u8>();
        (
            p.add(16).cast::<i64>().read(),
            p.add(24).cast::<i32>().read(),
        )
    };
    TRAPPED_AT.store(addr, SeqCst);
    TRAPPED.store(i64::from(nr), SeqCst);
    exit_thread();
}

/// Installs the SIGSYS handler (process-wide; idempotent).
pub fn install_sigsys_handler() {
    // SAFETY: a zeroed sigaction with an SA_SIGINFO handler and an empty
    // mask is valid; the handler touches atomics and makes `exit` only.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGSYS, &sa, core::ptr::null_mut()), 0);
    }
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// From here on, every system call of the calling thread but `exit` and
/// `rt_sigreturn` traps (SIGSYS). Only this thread: no TSYNC.
pub fn seal_thread() {
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let filter = [
        // A foreign ABI (i386 `int 0x80`): trap.
        stmt(ld, ARCH_OFFSET),
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_TRAP),
        stmt(ld, NR_OFFSET),
        jeq(libc::SYS_exit as u32, 2, 0),
        jeq(libc::SYS_rt_sigreturn as u32, 1, 0),
        stmt(ret, libc::SECCOMP_RET_TRAP),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl and seccomp with valid arguments; `prog` and `filter`
    // outlive the calls (the kernel copies the program).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Marks the thread done (Release: its earlier stores happen-before a
/// joiner's Acquire load of [`DONE`]) and ends it with a raw `exit`, which
/// the filter allows. Nothing of the thread is dropped: its thread-locals
/// and stack stay as they are, which leaks them and nothing else.
pub fn exit_thread() -> ! {
    DONE.store(true, Release);
    // SAFETY: `exit` ends this thread only.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    // The thread is gone; nothing runs here.
    loop {
        core::hint::spin_loop();
    }
}

/// Whether the process runs under valgrind (which preloads its
/// `vgpreload` objects into the client).
pub fn under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload"))
        || std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.contains("vgpreload"))
}
