//! What the scenarios share: the test object (24 bytes, like rcuscale's
//! `struct kfree_obj` and DESIGN's figures), a lock-free latency histogram,
//! memory measurements, a validator report counter and the instance
//! builder.

use krcu::Krcu;
use krcu::context::PreemptModel;
use krcu::kvfree::Policy;
use krcu::lockdep::{Report, ReportHandler, ReportKind};
use krcu::rcu::{HasRcuHead, RcuHead};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The retired object: a head and a word of payload, 24 bytes.
pub struct Obj24 {
    pub head: RcuHead,
    #[allow(dead_code)] // the payload: makes the object 24 bytes
    pub value: u64,
}

// SAFETY: `head` is an RcuHead field of Obj24.
unsafe impl HasRcuHead for Obj24 {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Obj24, head);
}

const _: () = assert!(size_of::<Obj24>() == 24);

impl Obj24 {
    #[inline]
    pub fn boxed(value: u64) -> Box<Obj24> {
        Box::new(Obj24::new(value))
    }

    #[inline]
    pub fn new(value: u64) -> Obj24 {
        Obj24 {
            head: RcuHead::new(),
            value,
        }
    }
}

/// Buckets: exact below 16 ns, then 8 per power of two (12 % wide).
const EXACT: usize = 16;
const BUCKETS: usize = EXACT + 8 * 60;

/// A latency histogram in nanoseconds; recording is a relaxed atomic add,
/// safe in a signal handler.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < EXACT as u64 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros() as usize; // >= 4
    let m = ((ns >> (e - 3)) & 7) as usize;
    (EXACT + (e - 4) * 8 + m).min(BUCKETS - 1)
}

fn bucket_high(i: usize) -> u64 {
    if i < EXACT {
        return i as u64;
    }
    let e = (i - EXACT) / 8 + 4;
    let m = ((i - EXACT) % 8) as u64;
    (((8 + m + 1) as u128) << (e - 3)).min(u64::MAX as u128 + 1) as u64 - 1
}

impl Histogram {
    #[inline]
    pub fn record(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        self.buckets[bucket(ns)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.max.fetch_max(ns, Relaxed);
    }

    pub fn merge(&self, other: &Histogram) {
        for (a, b) in self.buckets.iter().zip(other.buckets.iter()) {
            a.fetch_add(b.load(Relaxed), Relaxed);
        }
        self.count.fetch_add(other.count.load(Relaxed), Relaxed);
        self.max.fetch_max(other.max.load(Relaxed), Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }

    /// The `q` quantile (0..=1), as its bucket's upper bound (never above
    /// the maximum); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return bucket_high(i).min(self.max());
            }
        }
        self.max()
    }
}

/// The process's peak resident set (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    // The peak of this process's own address space (`VmHWM`): a process
    // started by `Command` (vfork, then exec) inherits its parent's
    // `ru_maxrss`, so every system that `compare` ran after the tour's
    // flood showed the parent's 159 MiB.
    if let Some(kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
    {
        return kib * 1024;
    }
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    ru.ru_maxrss as u64 * 1024
}

/// Counts validator reports by kind without keeping them, and keeps the
/// first one's text. Reports from signal handlers arrive late (the
/// validator defers them): every count delivers them first, and those it
/// had to drop count as `other`.
#[derive(Clone, Default)]
pub struct Reports {
    inner: Arc<ReportCounts>,
}

#[derive(Default)]
struct ReportCounts {
    invalid_wait: AtomicU64,
    might_sleep: AtomicU64,
    other: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl Reports {
    pub fn handler(&self) -> ReportHandler {
        let c = self.inner.clone();
        ReportHandler::Custom(Arc::new(move |r: &Report| {
            let counter = match r.kind {
                ReportKind::InvalidWaitContext => &c.invalid_wait,
                ReportKind::SleepInInvalidContext => &c.might_sleep,
                _ => &c.other,
            };
            counter.fetch_add(1, Relaxed);
            c.other.fetch_add(r.dropped, Relaxed);
            if let Ok(mut first) = c.first.try_lock()
                && first.is_none()
            {
                *first = Some(r.text.clone());
            }
        }))
    }

    pub fn total(&self) -> u64 {
        self.invalid_wait() + self.might_sleep() + self.inner.other.load(Relaxed)
    }

    pub fn invalid_wait(&self) -> u64 {
        krcu::lockdep::flush_deferred_reports();
        self.inner.invalid_wait.load(Relaxed)
    }

    pub fn might_sleep(&self) -> u64 {
        krcu::lockdep::flush_deferred_reports();
        self.inner.might_sleep.load(Relaxed)
    }

    pub fn first(&self) -> Option<String> {
        krcu::lockdep::flush_deferred_reports();
        self.inner.first.lock().ok()?.clone()
    }
}

/// How an instance for a scenario is set up.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub policy: Policy,
    pub model: PreemptModel,
    pub nesting_proof: bool,
    pub validator: bool,
    pub arena: usize,
    /// The kvfree drain delay (None: the library's default).
    pub drain_delay: Option<std::time::Duration>,
    /// Whether callers help free (None: the library's default).
    pub assist: Option<krcu::kvfree::Assist>,
}

impl Setup {
    pub fn new(policy: Policy, model: PreemptModel) -> Setup {
        Setup {
            policy,
            model,
            nesting_proof: true,
            validator: false,
            arena: 256 << 20,
            drain_delay: None,
            assist: None,
        }
    }

    pub fn build(&self, reports: &Reports) -> Result<Krcu, krcu::BuildError> {
        let mut b = Krcu::builder();
        if let Some(d) = self.drain_delay {
            b = b.drain_delay(d);
        }
        if let Some(a) = self.assist {
            b = b.assist(a);
        }
        b.arena_size(self.arena)
            .policy(self.policy)
            .preempt_model(self.model)
            .lockdep(self.validator)
            .prove_raw_lock_nesting(self.nesting_proof)
            .report_handler(reports.handler())
            .build()
    }
}

/// A small xorshift generator: reproducible choices without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The median of `v` (sorted in place); 0 when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::default();
        for ns in 1..=1000u64 {
            h.record(Duration::from_nanos(ns));
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1000);
        let p50 = h.quantile(0.5);
        assert!((450..=560).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 1000);
        for i in 0..BUCKETS - 9 {
            assert!(bucket_high(i) < bucket_high(i + 1));
            assert_eq!(bucket(bucket_high(i)), i);
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
