//! Seccomp filters that prove a thread makes no system call (or no
//! `futex` call): installed on the calling thread alone, a trapped call
//! raises SIGSYS, whose handler records the call in [`TRAPPED`], sets
//! [`FILTERED_DONE`] and ends the thread (the only thing it may still do),
//! failing the test that checks them. A filter cannot be removed, so the
//! filtered thread publishes its results in atomics, sets
//! [`FILTERED_DONE`] and ends with a raw `exit` system call.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::*};

/// The system call the filtered thread was caught making (-1: none).
pub static TRAPPED: AtomicI64 = AtomicI64::new(-1);
/// The address just after the trapped `syscall` instruction (0: none).
pub static TRAPPED_AT: AtomicI64 = AtomicI64::new(0);
/// Set (Release) by the filtered thread, or its SIGSYS handler, when it
/// has published everything and is about to exit.
pub static FILTERED_DONE: AtomicBool = AtomicBool::new(false);

/// `AUDIT_ARCH_X86_64`: `EM_X86_64` (62) | `__AUDIT_ARCH_64BIT` |
/// `__AUDIT_ARCH_LE` (linux/audit.h).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `offsetof(struct seccomp_data, nr)` and `arch`.
const NR_OFFSET: u32 = core::mem::offset_of!(libc::seccomp_data, nr) as u32;
#[cfg(target_arch = "x86_64")]
const ARCH_OFFSET: u32 = core::mem::offset_of!(libc::seccomp_data, arch) as u32;

/// SIGSYS: a trapped system call on the filtered thread. Records it and
/// ends the thread, failing the test.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: for SIGSYS the kernel fills `_sigsys` in the union at offset
    // 16 of siginfo_t on 64-bit Linux: `_call_addr` (8 bytes), then
    // `_syscall` (an int) at offset 24; siginfo_t is 128 bytes.
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

/// Marks the filtered thread done (Release: its earlier stores
/// happen-before a joiner's Acquire load of [`FILTERED_DONE`]) and ends it
/// with a raw `exit`, which every filter here allows. Nothing of the
/// thread is dropped: its thread-locals and stack stay as they are, which
/// leaks them and nothing else.
pub fn exit_thread() -> ! {
    FILTERED_DONE.store(true, Release);
    // SAFETY: `exit` ends this thread only.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    // The thread is gone; nothing runs here.
    loop {
        core::hint::spin_loop();
    }
}

/// Whether the process runs under valgrind (which preloads its
/// `vgpreload` objects into the client, and makes system calls for a
/// filtered thread itself).
pub fn under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload"))
        || std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.contains("vgpreload"))
}

/// Installs the SIGSYS handler (process-wide) and resets [`TRAPPED`] and
/// [`FILTERED_DONE`] for the next filtered thread.
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
    TRAPPED.store(-1, SeqCst);
    TRAPPED_AT.store(0, SeqCst);
    FILTERED_DONE.store(false, SeqCst);
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

const LOAD_WORD: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const RETURN: u32 = libc::BPF_RET | libc::BPF_K;

/// Installs `filter` on the calling thread only (no TSYNC).
fn install_filter(filter: &[libc::sock_filter]) {
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

/// From here on, every system call of the calling thread but `exit` and
/// `rt_sigreturn` traps (SIGSYS), and so does any call through a foreign
/// ABI (i386 `int 0x80`).
#[cfg(target_arch = "x86_64")]
pub fn seal_thread() {
    install_filter(&[
        stmt(LOAD_WORD, ARCH_OFFSET),
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(RETURN, libc::SECCOMP_RET_TRAP),
        stmt(LOAD_WORD, NR_OFFSET),
        jeq(libc::SYS_exit as u32, 2, 0),
        jeq(libc::SYS_rt_sigreturn as u32, 1, 0),
        stmt(RETURN, libc::SECCOMP_RET_TRAP),
        stmt(RETURN, libc::SECCOMP_RET_ALLOW),
    ]);
}

/// From here on, `futex` traps on the calling thread (SIGSYS); every
/// other system call passes.
pub fn trap_futex_on_this_thread() {
    install_filter(&[
        stmt(LOAD_WORD, NR_OFFSET),
        jeq(libc::SYS_futex as u32, 0, 1),
        stmt(RETURN, libc::SECCOMP_RET_TRAP),
        stmt(RETURN, libc::SECCOMP_RET_ALLOW),
    ]);
}
