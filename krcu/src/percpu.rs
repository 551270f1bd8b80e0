//! CPU ids and per-CPU data.
//!
//! [`current_cpu`] asks the kernel which CPU the thread runs on
//! (`sched_getcpu`, which glibc answers from the rseq area without a system
//! call). Userspace can be preempted or migrated at any instruction, so the
//! answer is a hint: per-CPU data in krcu is always taken with a lock (on the
//! fast paths with a trylock), never assumed exclusive because of the CPU id.
//!
//! [`PerCpu<T>`] holds one cache-line-padded `T` per CPU of an instance. An
//! instance may model fewer CPUs than the machine has; the CPU id is then
//! folded onto the instance's CPUs.
//!
//! Uses nothing else of the crate.

use crossbeam_utils::CachePadded;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The number of CPUs the machine has (configured, not only online), at
/// least 1.
#[doc(alias = "nr_cpu_ids")]
pub fn num_cpus() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        // SAFETY: sysconf has no preconditions; it returns -1 on error.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        if n > 0 {
            n as usize
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    })
}

thread_local! {
    /// Where `sched_getcpu` fails, each thread gets a fixed stand-in id.
    static FALLBACK_CPU: core::cell::Cell<usize> = const { core::cell::Cell::new(usize::MAX) };
}

fn fallback_cpu() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    FALLBACK_CPU.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT.fetch_add(1, Ordering::Relaxed) % num_cpus());
        }
        c.get()
    })
}

/// The CPU the calling thread runs on now (a hint: it may migrate at once).
///
/// Uses `sched_getcpu`; where that fails (an old kernel, a sandbox that
/// forbids it) each thread gets a stable stand-in id, spread over the CPUs.
/// Signal-safe: no allocation, no lock.
#[inline]
#[doc(alias = "smp_processor_id")]
#[doc(alias = "raw_smp_processor_id")]
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on error.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu >= 0 {
        cpu as usize
    } else {
        fallback_cpu()
    }
}

/// One `T` per CPU, each on its own cache line.
#[doc(alias = "DEFINE_PER_CPU")]
pub struct PerCpu<T> {
    slots: Box<[CachePadded<T>]>,
}

impl<T> PerCpu<T> {
    /// One slot per CPU, `cpus` of them (at least 1), built by `init(cpu)`.
    pub fn new(cpus: usize, mut init: impl FnMut(usize) -> T) -> Self {
        let cpus = cpus.max(1);
        PerCpu {
            slots: (0..cpus).map(|cpu| CachePadded::new(init(cpu))).collect(),
        }
    }

    /// How many CPUs this holds.
    #[inline]
    pub fn cpus(&self) -> usize {
        self.slots.len()
    }

    /// The index of the current CPU among this `PerCpu`'s slots.
    #[inline]
    pub fn current_index(&self) -> usize {
        let cpu = current_cpu();
        if cpu < self.slots.len() {
            cpu
        } else {
            cpu % self.slots.len()
        }
    }

    /// The slot of the CPU the thread runs on now, and its index.
    #[inline]
    #[doc(alias = "this_cpu_ptr")]
    pub fn current(&self) -> (usize, &T) {
        let i = self.current_index();
        (i, &self.slots[i])
    }

    /// The slot of `cpu`, folded onto this `PerCpu`'s CPUs.
    #[inline]
    #[doc(alias = "per_cpu_ptr")]
    pub fn get(&self, cpu: usize) -> &T {
        &self.slots[cpu % self.slots.len()]
    }

    /// Every slot with its CPU index.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (usize, &T)> {
        self.slots.iter().enumerate().map(|(i, s)| (i, &**s))
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for PerCpu<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.slots.iter().map(|s| &**s))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn current_cpu_is_a_real_cpu() {
        assert!(current_cpu() < num_cpus());
    }

    #[test]
    fn per_cpu_slots_are_padded_and_folded() {
        let p = PerCpu::new(3, |cpu| cpu * 10);
        assert_eq!(p.cpus(), 3);
        assert_eq!(*p.get(4), 10);
        let (i, v) = p.current();
        assert_eq!(*v, i * 10);
        assert!(core::mem::size_of::<CachePadded<usize>>() >= 64);
        assert_eq!(p.iter().map(|(_, v)| *v).sum::<usize>(), 30);
    }

    #[test]
    fn fallback_ids_are_stable_per_thread() {
        let a = fallback_cpu();
        assert_eq!(a, fallback_cpu());
        assert!(a < num_cpus());
    }
}
