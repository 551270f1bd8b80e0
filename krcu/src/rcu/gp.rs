//! The grace-period engine: one grace period at a time under the gp mutex,
//! the sequence counter the polled API reads, and the wait for readers.
//!
//! # Sharing grace periods
//! Every caller first takes a snapshot of the sequence counter
//! ([`seq_snap`]), then the gp mutex; if a grace period that began after
//! its snapshot has ended meanwhile (another caller ran it while this one
//! waited for the mutex), it returns at once: concurrent `synchronize`
//! calls share grace periods, as the kernel's expedited funnel does.
//!
//! # Normal and expedited
//! The memb flavour is expedited by nature (membarrier IPIs instead of
//! waiting for every CPU to pass a quiescent state), so both run the same
//! grace period; they differ in how they wait for a reader that is still
//! inside its section: [`WaitMode::Expedited`] spins a long while before
//! yielding and sleeping, [`WaitMode::Normal`] spins briefly and then sleeps
//! with a growing back-off up to a millisecond, leaving the CPU to the
//! readers. The grace-period worker uses `Normal`.
//!
//! # Memory ordering of the counter
//! `gp_seq` is stored with Release after the grace period's closing heavy
//! barrier, and read with Acquire (plus a SeqCst fence by the polled API):
//! whoever sees a grace period end sees it after every reader it waited
//! for finished. [`GpEngine::snapshot`] puts a SeqCst fence before reading
//! the counter, so that the caller's earlier updates (its unlinks) are
//! ordered before the snapshot and hence before the grace period that
//! satisfies it begins (the kernel's `smp_mb()` in
//! `get_state_synchronize_rcu`).
#![cfg(not(loom))]

use super::handshake;
use super::membarrier;
use super::reader::Readers;
use super::seq::{self, GpCookie};
use super::stall::{StallReport, Stalls};
use crate::sync::atomic::{AtomicU64, Ordering, fence};
use core::sync::atomic::compiler_fence;
use crossbeam_utils::CachePadded;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a grace period waits for readers still inside their sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitMode {
    /// Spin briefly, then sleep with back-off.
    Normal,
    /// Spin long, then yield, then sleep.
    Expedited,
}

impl WaitMode {
    /// (spins, yields) before sleeping.
    fn budget(self) -> (u32, u32) {
        match self {
            WaitMode::Normal => (64, 8),
            WaitMode::Expedited => (4096, 256),
        }
    }
}

/// Scratch space of the grace-period wait, reused under the gp mutex.
#[derive(Default)]
pub(crate) struct GpScratch {
    holding_up: Vec<usize>,
}

/// The grace-period engine of one instance.
pub(crate) struct GpEngine {
    pub(crate) readers: Arc<Readers>,
    /// The kernel's `rcu_state.gp_seq`.
    gp_seq: CachePadded<AtomicU64>,
    /// The furthest cookie a poller asked for (`rcu_state.gp_seq_polled_snap`
    /// in spirit): the worker runs grace periods until it is reached.
    gp_seq_needed: AtomicU64,
    use_membarrier: bool,
    gp_mutex: Mutex<GpScratch>,
    pub(crate) stalls: Stalls,
    expedited: AtomicU64,
    normal: AtomicU64,
}

impl GpEngine {
    pub(crate) fn new(
        readers: Arc<Readers>,
        use_membarrier: bool,
        stall_timeout: Duration,
    ) -> Self {
        GpEngine {
            readers,
            gp_seq: CachePadded::new(AtomicU64::new(seq::SEQ_INITIAL)),
            gp_seq_needed: AtomicU64::new(seq::SEQ_INITIAL),
            use_membarrier,
            gp_mutex: Mutex::new(GpScratch::default()),
            stalls: Stalls::new(stall_timeout),
            expedited: AtomicU64::new(0),
            normal: AtomicU64::new(0),
        }
    }

    /// The counter now (Acquire).
    #[inline]
    pub(crate) fn seq(&self) -> u64 {
        self.gp_seq.load(Ordering::Acquire)
    }

    /// `get_state_synchronize_rcu`: the cookie of the first grace period
    /// that starts after this call.
    #[inline]
    ///
    /// Ordering: the caller's earlier stores (typically the unlink of the
    /// object it retires) must not be missed by the grace period the cookie
    /// names. With membarrier, a compiler fence is enough, as on the memb
    /// reader side: a grace period stores its start in `gp_seq` *before* its
    /// first membarrier, and that membarrier executes a full barrier in this
    /// thread at some point P of its instruction stream. If P precedes the
    /// load below, the load sees the grace period started and the cookie
    /// names the next one. If P follows it, the caller's earlier stores are
    /// drained at P, before the membarrier returns and so before the phase
    /// flip: every reader that starts after the flip sees them, and every
    /// reader before it is waited for. The compiler fence keeps the load
    /// after those stores in the instruction stream. Without membarrier,
    /// both sides pay real fences.
    pub(crate) fn snapshot(&self) -> GpCookie {
        if self.use_membarrier {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        GpCookie(seq::seq_snap(self.gp_seq.load(Ordering::Relaxed)))
    }

    /// `poll_state_synchronize_rcu`.
    #[inline]
    pub(crate) fn poll(&self, cookie: GpCookie) -> bool {
        let done = cookie.done_at(self.seq());
        if done {
            // Order the caller's later frees after the grace period, as the
            // kernel's smp_mb() after a successful poll does.
            fence(Ordering::SeqCst);
        }
        done
    }

    /// Records that a grace period satisfying `cookie` is wanted. Returns
    /// true when this raised the target (the worker must be woken).
    pub(crate) fn request(&self, cookie: GpCookie) -> bool {
        let mut cur = self.gp_seq_needed.load(Ordering::Relaxed);
        loop {
            if GpCookie(cur).at_or_after(cookie) {
                return false;
            }
            match self.gp_seq_needed.compare_exchange_weak(
                cur,
                cookie.0,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// The cookie pollers wait for, if it has not been reached.
    pub(crate) fn needed(&self) -> Option<GpCookie> {
        let c = GpCookie(self.gp_seq_needed.load(Ordering::SeqCst));
        (!c.done_at(self.seq())).then_some(c)
    }

    /// Waits until a grace period satisfying `cookie` has ended, running
    /// grace periods as needed (sharing them with concurrent callers).
    pub(crate) fn drive_to(&self, cookie: GpCookie, mode: WaitMode) {
        if self.poll(cookie) {
            return;
        }
        let mut scratch = self.gp_mutex.lock().unwrap_or_else(|e| e.into_inner());
        while !cookie.done_at(self.gp_seq.load(Ordering::Relaxed)) {
            self.run_locked(&mut scratch, mode);
        }
        drop(scratch);
        fence(Ordering::SeqCst);
    }

    /// `synchronize_rcu` / `synchronize_rcu_expedited`: a full grace period
    /// from now.
    pub(crate) fn synchronize(&self, mode: WaitMode) {
        self.drive_to(self.snapshot(), mode);
    }

    fn run_locked(&self, scratch: &mut MutexGuard<'_, GpScratch>, mode: WaitMode) {
        let start = self.gp_seq.load(Ordering::Relaxed);
        let running = seq::seq_start(start);
        self.gp_seq.store(running, Ordering::Relaxed);
        let use_membarrier = self.use_membarrier;
        handshake::grace_period(
            &self.readers.gp_ctr,
            || membarrier::heavy(use_membarrier),
            |v| self.wait_for_readers(&mut scratch.holding_up, v, running, mode),
        );
        // Release: see the module doc.
        self.gp_seq.store(seq::seq_end(running), Ordering::Release);
        match mode {
            WaitMode::Normal => &self.normal,
            WaitMode::Expedited => &self.expedited,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until no slot holds up the counter value `v`
    /// (liburcu's `wait_for_readers`).
    ///
    /// # Orphans
    /// A slot left open by a thread that is gone can never be closed by
    /// it. While the registry has orphans (rare: threads that exited, or
    /// are exiting, inside a section), the wait frees those whose thread
    /// is gone ([`Readers::reap_orphans`]) before its scan and again at
    /// each of its sleeps (a thread just joined may take a moment to leave
    /// the kernel's thread table). Without orphans this costs one Relaxed
    /// load per wait: live readers are waited for as before.
    fn wait_for_readers(&self, holding_up: &mut Vec<usize>, v: usize, gp_seq: u64, mode: WaitMode) {
        if self.readers.has_orphans() {
            self.readers.reap_orphans();
        }
        holding_up.clear();
        let n = self.readers.len();
        holding_up.extend((0..n).filter(|&i| self.readers.holds_up(i, v)));
        let (spins, yields) = mode.budget();
        let mut round = 0u32;
        let mut sleep = Duration::from_micros(20);
        let mut clock = (!holding_up.is_empty()).then(|| self.stalls.clock());
        while !holding_up.is_empty() {
            if round < spins {
                crate::sync::spin_hint();
            } else if round < spins + yields {
                std::thread::yield_now();
            } else {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(Duration::from_millis(1));
                if self.readers.has_orphans() {
                    self.readers.reap_orphans();
                }
                if let Some(waited) = clock.as_mut().and_then(|c| c.due(self.stalls.timeout())) {
                    self.report_stalls(holding_up, gp_seq, waited);
                }
            }
            round = round.saturating_add(1);
            holding_up.retain(|&i| self.readers.holds_up(i, v));
        }
    }

    #[cold]
    fn report_stalls(&self, holding_up: &[usize], gp_seq: u64, waited: Duration) {
        for &i in holding_up {
            let owner = self
                .readers
                .slot(i)
                .owner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let (thread, tid) =
                owner.map_or_else(|| ("<unregistered>".to_owned(), 0), |o| (o.name, o.tid));
            self.stalls.warn(StallReport {
                thread,
                tid,
                gp_seq,
                waited,
            });
        }
    }

    /// The gp mutex, held across a `fork` so that no grace period is half
    /// run in the child.
    pub(crate) fn lock_for_fork(&self) -> MutexGuard<'_, GpScratch> {
        self.gp_mutex.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grace periods completed, (normal, expedited).
    pub(crate) fn completed(&self) -> (u64, u64) {
        (
            self.normal.load(Ordering::Relaxed),
            self.expedited.load(Ordering::Relaxed),
        )
    }
}
