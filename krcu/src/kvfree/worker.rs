//! The kvfree threads and their life: the monitor (the kernel's
//! `kfree_rcu_monitor`), which hands blocks to RCU, the refill thread (the
//! kernel's `fill_page_cache_func`), which tops the block caches up, and one
//! reclaimer per CPU (`kfree_rcu_work`); the monitor and the refill thread
//! started by [`Workers::spawn`], the reclaimers on demand (when the
//! monitor first hands a batch to RCU, or at the first barrier:
//! [`Workers::ensure_reclaimers`]), all stopped by [`Workers::shutdown`],
//! restarted in the child of a `fork`.
//!
//! Owns: [`Workers`] (the threads' handles and their stop flag). Uses:
//! `engine.rs` (only its interface), `monitor.rs` (what a pass is), the
//! crate's `fork` and `context`.
//!
//! They are separate threads, as they are separate works in the kernel:
//! the refill's sleeping allocation may enter direct reclaim and run every
//! shrinker, and a shrinker may block there (on its own lock, on I/O). The
//! monitor never makes a reclaiming allocation, so `kfree_rcu` reclaim goes
//! on while memory is short. (The refill thread keeps the name
//! `krcu-kvfree`; the monitor is `krcu-kvmon`.)
//!
//! The call path's fast path never wakes them: it sets flags that they
//! poll, every `active_poll` while anything is pending (the monitor kicks
//! the refill thread when it sees a request). When nothing is pending the
//! monitor sleeps idle, up to `idle_poll`, and the refill thread and the
//! reclaimers wait for a kick (the monitor's, the RCU callback's) with
//! `idle_poll` as a fallback: an idle instance wakes a few times a second.
//! A non-real-time caller rings the monitor's doorbell on a slow path (a
//! new block, the `rcu_head` list; `monitor.rs`): one futex wake, only
//! when the monitor sleeps idle. A real-time thread or a signal handler
//! never makes that system call: what it queued waits for the monitor's
//! next timed wake-up. Barriers, the shrinker, a fork and shutdown, which
//! may make system calls, wake them at once.

use super::engine::Engine;
use crate::context;
use crate::fork;
use core::sync::atomic::{AtomicBool, Ordering};
use std::any::Any;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

/// The monitor thread's body.
fn run_monitor(engine: &Engine, stop: &AtomicBool, workers: &Weak<Workers>) {
    let _softirq = context::enter_softirq();
    // Whether the last sleep was an idle one: the refill thread sleeps
    // long too then, and is kicked back to its polling when work comes.
    let mut was_idle = false;
    loop {
        fork::checkpoint();
        let pass = engine.take_flush_request();
        let outcome = engine.monitor_pass(pass);
        if engine.refill_wanted() || (was_idle && outcome.busy) {
            engine.kick_refill();
        }
        if engine.reclaim_wanted()
            && !engine.reclaimers_started()
            && let Some(w) = workers.upgrade()
        {
            w.ensure_reclaimers();
        }
        // Acquire: pairs with the teardown's Release store.
        if stop.load(Ordering::Acquire) {
            break;
        }
        let cfg = engine.config();
        was_idle = false;
        if outcome.busy {
            engine.monitor_sleep(cfg.active_poll);
        } else if engine.monitor_sleep_idle() {
            was_idle = true;
        } else {
            // Work came between the pass and the idle re-check (or the
            // idle trim is still due): poll as before.
            engine.monitor_sleep(cfg.drain_delay);
        }
    }
}

/// The refill thread's body.
fn run_refill(engine: &Engine, stop: &AtomicBool, _: &Weak<Workers>) {
    let _softirq = context::enter_softirq();
    loop {
        fork::checkpoint();
        engine.refill_pass();
        // Acquire: pairs with the teardown's Release store.
        if stop.load(Ordering::Acquire) {
            break;
        }
        let cfg = engine.config();
        // With a request pending it polls fast; while the instance is in
        // use, every drain delay (besides the monitor's kicks, which come
        // only after its passes, and a pass that steals front blocks may
        // take a while); while the monitor sleeps idle, it sleeps long too
        // (the monitor kicks it when work comes back).
        engine.refill_sleep(if engine.refill_wanted() {
            cfg.active_poll
        } else if engine.monitor_idle() {
            cfg.idle_poll
        } else {
            cfg.drain_delay
        });
    }
}

/// An engine's worker threads.
pub(crate) struct Workers {
    engine: Arc<Engine>,
    /// Tells the monitor and the refill thread to finish (the reclaimers
    /// have their own, see `reclaim.rs`: they finish after the last
    /// barrier).
    stop: Arc<AtomicBool>,
    /// `std`: the forking thread holds it across `fork` (phase 0), and a
    /// teardown holds it only to take the handles.
    threads: Mutex<Threads>,
    /// The reclaimers could not be started once (logged once; Relaxed: a
    /// flag for the log only).
    start_failed: AtomicBool,
    /// Tests make the reclaimers' start fail (fault injection).
    #[cfg(feature = "testing")]
    fail_start: AtomicBool,
}

#[derive(Default)]
struct Threads {
    monitor: Option<JoinHandle<()>>,
    refill: Option<JoinHandle<()>>,
    reclaimers: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Fills the caches (so that a real-time thread does not depend on the
    /// refill thread having run), starts the threads, and registers them to
    /// be restarted in the child of a `fork`.
    pub(crate) fn spawn(engine: &Arc<Engine>) -> Result<Arc<Workers>, std::io::Error> {
        engine.refill_pass();
        let workers = Arc::new(Workers {
            engine: engine.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Threads::default()),
            start_failed: AtomicBool::new(false),
            #[cfg(feature = "testing")]
            fail_start: AtomicBool::new(false),
        });
        *workers.lock() = start(&workers)?;
        let weak: std::sync::Weak<dyn fork::Participant> = Arc::downgrade(&workers) as _;
        fork::register(weak);
        Ok(workers)
    }

    /// Starts the reclaimers unless they run already: from the monitor
    /// thread when it first hands work to RCU, and before a barrier. On a
    /// failure (no thread) they stay unstarted, logged, and barriers free
    /// what is ready themselves; the next call tries again.
    pub(crate) fn ensure_reclaimers(&self) {
        if self.engine.reclaimers_started() {
            return;
        }
        let mut t = self.lock();
        if self.engine.reclaimers_started() || self.stop.load(Ordering::Acquire) {
            return;
        }
        #[cfg(feature = "testing")]
        let started = if self.fail_start.load(Ordering::Relaxed) {
            Err(std::io::Error::other(
                "thread start failure injected by a test",
            ))
        } else {
            start_reclaimers(&self.engine)
        };
        #[cfg(not(feature = "testing"))]
        let started = start_reclaimers(&self.engine);
        match started {
            Ok(handles) => {
                t.reclaimers = handles;
                self.engine.mark_reclaimers_started();
            }
            // Once: the monitor asks again at every pass while work is in
            // flight.
            Err(err) if !self.start_failed.swap(true, Ordering::Relaxed) => {
                tracing::error!(
                    "krcu: cannot start the kvfree reclaimers (barriers free instead): {err}"
                );
            }
            Err(_) => {}
        }
    }

    /// Makes every later start of the reclaimers fail (tests).
    #[cfg(feature = "testing")]
    pub(crate) fn fail_reclaimer_start(&self, fail: bool) {
        self.fail_start.store(fail, Ordering::Relaxed);
    }

    /// Frees everything queued, then stops and joins the threads and gives
    /// every spare block back: nothing is lost, and nothing is left.
    pub(crate) fn shutdown(&self) {
        let e = &self.engine;
        self.stop.store(true, Ordering::Release);
        e.kick();
        let (monitor, refill) = {
            let mut t = self.lock();
            (t.monitor.take(), t.refill.take())
        };
        for w in [monitor, refill].into_iter().flatten() {
            let _ = w.join();
        }
        // The monitor is gone, so no reclaimer starts from now on (and
        // `stop` keeps barriers from starting any): the barrier frees what
        // is ready itself where none runs.
        e.barrier();
        e.retire_fronts();
        e.stop_reclaimers();
        let reclaimers = core::mem::take(&mut self.lock().reclaimers);
        for r in reclaimers {
            let _ = r.join();
        }
        e.release_caches();
    }

    /// Stops the threads without waiting for them (the teardown could not
    /// be run): what is still queued leaks.
    pub(crate) fn stop_now(&self) {
        self.stop.store(true, Ordering::Release);
        self.engine.kick();
        self.engine.stop_reclaimers();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Threads> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Joins `h`, or on a krcu worker thread (which never joins a worker: see
/// `fork`) detaches it; the thread holds its own Arcs of what it uses.
fn join_unless_worker(h: JoinHandle<()>) {
    if !fork::on_worker_thread() {
        let _ = h.join();
    }
}

/// Starts one reclaimer per CPU; on a failure stops those already started.
fn start_reclaimers(engine: &Arc<Engine>) -> Result<Vec<JoinHandle<()>>, std::io::Error> {
    // One reclaimer per CPU, on that CPU when the instance models the
    // machine's CPUs one to one: objects are freed near where they were
    // used, and reclaim scales with the CPUs as the flood does.
    let cpus = engine.homes();
    let pin = cpus == crate::percpu::num_cpus();
    let mut handles = Vec::with_capacity(cpus);
    for cpu in 0..cpus {
        let e = engine.clone();
        let token = fork::WorkerToken::new();
        let spawned = std::thread::Builder::new()
            .name(format!("krcu-reclaim/{cpu}"))
            .spawn(move || {
                token.run(|| {
                    if pin {
                        pin_to_cpu(cpu);
                    }
                    e.reclaimer(cpu)
                })
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(err) => {
                engine.stop_reclaimers();
                handles.into_iter().for_each(join_unless_worker);
                engine.restart_reclaimers();
                return Err(err);
            }
        }
    }
    Ok(handles)
}

/// Starts the monitor and the refill thread of `workers` (the reclaimers
/// start on demand); on a failure stops the one already started.
fn start(workers: &Arc<Workers>) -> Result<Threads, std::io::Error> {
    let (engine, stop) = (&workers.engine, &workers.stop);
    let mut t = Threads::default();
    let spawn = |name: &str, body: fn(&Engine, &AtomicBool, &Weak<Workers>)| {
        let (e, stop, w) = (engine.clone(), stop.clone(), Arc::downgrade(workers));
        let token = fork::WorkerToken::new();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || token.run(|| body(&e, &stop, &w)))
    };
    let started = spawn("krcu-kvmon", run_monitor).and_then(|w| {
        t.monitor = Some(w);
        spawn("krcu-kvfree", run_refill)
    });
    match started {
        Ok(r) => {
            t.refill = Some(r);
            Ok(t)
        }
        Err(err) => {
            stop.store(true, Ordering::Release);
            engine.kick();
            if let Some(w) = t.monitor.take() {
                join_unless_worker(w);
            }
            stop.store(false, Ordering::Release);
            Err(err)
        }
    }
}

/// Pins the calling thread to `cpu` (best effort: an error leaves it free).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // for any cpu below CPU_SETSIZE, which sched_getcpu's ids are.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

impl fork::Participant for Workers {
    fn lock_before_park(self: Arc<Self>, _: &mut Vec<Box<dyn Any>>) {}

    fn kick(&self) {
        self.engine.kick();
        self.engine.wake_reclaimers();
    }

    fn lock_after_park(self: Arc<Self>, phase: usize, held: &mut Vec<Box<dyn Any>>) {
        if phase < Engine::FORK_LOCK_PHASES {
            held.push(fork::hold(self.engine.clone(), |e| e.lock_for_fork(phase)));
        }
        if phase == 0 {
            // The threads' handles (a teardown takes them, briefly): the
            // child's handler takes them again.
            held.push(fork::hold(self, |w| w.lock()));
        }
    }

    fn restart_in_child(self: Arc<Self>) {
        let mut t = self.lock();
        // The old threads do not exist here: their handles can never be
        // joined (that would wait forever).
        core::mem::forget(core::mem::take(&mut *t));
        if self.stop.load(Ordering::Acquire) {
            return; // the instance is being dropped
        }
        // The reclaimers start again on demand (the monitor's next pass
        // starts them if the parent left work in flight).
        self.engine.forget_other_threads();
        match start(&self) {
            Ok(threads) => *t = threads,
            Err(e) => tracing::error!("krcu: cannot restart the kvfree workers after fork: {e}"),
        }
    }
}
