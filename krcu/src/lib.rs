//! # krcu
//!
//! The Linux kernel's deferred-free machinery in userspace Rust: RCU grace
//! periods, `kfree_rcu` with per-CPU, page-sized pointer blocks and bulk
//! free, a page allocator with per-CPU lists in front of a buddy
//! allocator, slab caches, and a lockdep-style validator.
//!
//! **Linux only**: krcu uses `membarrier(2)`, `futex(2)`, `sched_getcpu(3)`
//! and `gettid(2)`. On another OS the build stops with one error saying so.
//!
//! ## The problem
//! Readers of a shared structure should not pay for locks, and a writer
//! that unlinks an object cannot free it while a reader may still be
//! looking at it. **RCU** (read-copy-update) splits the two: readers enter
//! a *read-side section* that costs a few nanoseconds and writes nothing
//! shared; a writer that unlinked an object waits for a **grace period**,
//! after which every section that could have seen the object has ended,
//! and only then frees it.
//!
//! A grace period is not a fixed time: it ends when every reader that was
//! inside a section when it began has left that section (readers that
//! start later cannot find the unlinked object, so they do not count). A
//! reader that stays in its section holds every grace period after it
//! off, and with them every free: keep sections short, and never wait for
//! a grace period inside one (krcu panics rather than hang).
//!
//! Waiting is what much code must never do: a real-time audio thread, a
//! signal handler, code under a spinlock. **`kfree_rcu`** hands the object
//! over and returns at once; it is freed after the grace period. To make
//! that cheap the pointers go into page-sized **blocks** per CPU, and a
//! whole block is freed at once when its grace period has passed, instead
//! of walking a list of cold objects. One grace period then serves
//! hundreds of objects (a block holds 506 pointers), freeing reads the
//! block's array instead of each object's memory, and the caller's
//! cost is a store into the block. The blocks need pages, and getting a
//! page without ever blocking, from any context, is what the kernel argued
//! about from 2020 to 2022: every option it weighed is a [`Policy`](kvfree::Policy) here
//! (the repository's `docs/history.md` tells the story).
//!
//! The **real-time promise**: on a thread registered with
//! [`register_thread`] (or [`Krcu::register_thread`],
//! [`context::set_realtime`]), `kfree_rcu` never runs a destructor, never
//! calls the global allocator, never takes a blocking lock and makes no
//! system call, whatever the other threads do. What would break the promise
//! is refused there instead, with the value handed back: an
//! [`RcuCell::store`] (it boxes the value: publish a prepared [`RcuBox`]
//! with `store_box`), a [`defer`] (it boxes the closure). The
//! [guide](guide#real-time-threads) says what is promised and refused.
//!
//! ## Publish, read, replace, retire
//! [`RcuCell`] (`rcu_dereference`, `rcu_assign_pointer`,
//! `rcu_replace_pointer`) does it with no `unsafe`: loads return references
//! bound to a guard, and a replaced value is retired with `kfree_rcu` in the
//! same call. To run code after a grace period, [`defer`].
//!
//! ```
//! use krcu::{RcuBox, RcuCell};
//!
//! struct Config {
//!     generation: u64,
//!     servers: Vec<String>,
//! }
//!
//! // Publish: the cell boxes the value (no `unsafe`, no `RcuHead` to embed).
//! let config = RcuCell::new(Config { generation: 1, servers: vec!["10.0.0.1:80".into()] });
//!
//! // Read under a guard, without a lock: the reference cannot outlive it.
//! {
//!     let guard = krcu::rcu::read_lock();
//!     let current = config.load(&guard).expect("configured");
//!     assert_eq!((current.generation, current.servers.len()), (1, 1));
//! }
//!
//! // Replace: readers see the old value or the new one, whole; the old one
//! // is retired with kfree_rcu and dropped after a grace period.
//! config
//!     .store(Config { generation: 2, servers: vec![] })
//!     .expect("not on a real-time thread, not in a signal handler");
//!
//! // Replace and keep reading the old value: the guard holds its drop off.
//! let guard = krcu::rcu::read_lock();
//! let old = config.replace(Config { generation: 3, servers: vec![] }, &guard).expect("task");
//! assert_eq!(old.map(|c| c.generation), Some(2));
//! drop(guard);
//!
//! // A real-time thread publishes a box prepared beforehand: no allocation.
//! let prepared = RcuBox::new(Config { generation: 4, servers: vec![] });
//! config.store_box(prepared).expect("not in NMI context");
//!
//! // Wait until everything retired so far has been dropped.
//! krcu::kvfree_rcu_barrier();
//! ```
//!
//! What the grace period guarantees, with a reader on another thread: the
//! value it loaded stays alive, even though the writer replaced and
//! retired it, until the reader leaves its section.
//!
//! ```
//! use krcu::RcuCell;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::mpsc::channel;
//!
//! static DROPPED: AtomicUsize = AtomicUsize::new(0);
//! struct Version(u32);
//! impl Drop for Version {
//!     fn drop(&mut self) {
//!         DROPPED.fetch_add(1, Ordering::SeqCst);
//!     }
//! }
//!
//! let cell = RcuCell::new(Version(1)); // publish
//! let (loaded_tx, loaded_rx) = channel();
//! let (go_on_tx, go_on_rx) = channel::<()>();
//! std::thread::scope(|s| {
//!     let cell = &cell;
//!     s.spawn(move || {
//!         let guard = krcu::rcu::read_lock(); // read under a guard
//!         let v1 = cell.load(&guard).unwrap();
//!         loaded_tx.send(()).unwrap();
//!         go_on_rx.recv().unwrap(); // the writer replaces it meanwhile
//!         assert_eq!(v1.0, 1, "still readable: the guard holds its free off");
//!         drop(guard);
//!     });
//!     loaded_rx.recv().unwrap();
//!     cell.store(Version(2)).unwrap(); // replace; the old one is retired
//!     std::thread::sleep(std::time::Duration::from_millis(20));
//!     assert_eq!(DROPPED.load(Ordering::SeqCst), 0, "the reader may still use it");
//!     go_on_tx.send(()).unwrap();
//! });
//! krcu::kvfree_rcu_barrier(); // wait until what was retired is dropped
//! assert_eq!(DROPPED.load(Ordering::SeqCst), 1);
//! ```
//!
//! To retire your own nodes (say, of a list readers traverse), embed an
//! [`RcuHead`](rcu::RcuHead) and hand the `Box` to [`kfree_rcu`]:
//!
//! ```
//! use krcu::rcu::{HasRcuHead, RcuHead};
//!
//! #[derive(HasRcuHead)] // finds `rcu` and computes its offset
//! struct Node {
//!     value: u64,
//!     rcu: RcuHead,
//! }
//!
//! let krcu = krcu::Krcu::builder().arena_size(16 << 20).build().unwrap();
//! let node = Box::new(Node { value: 1, rcu: RcuHead::new() });
//! // ... after unlinking `node` from a structure readers traverse:
//! krcu.kfree_rcu(node).unwrap();
//! krcu.kvfree_rcu_barrier(); // everything queued so far is freed
//! assert_eq!(krcu.stats().reclaimed_objects, 1);
//! ```
//!
//! ## The parts
//! Each uses only those below it (the repository's `docs/design.md` draws
//! the map and the kernel-to-krcu table):
//!
//! ```text
//! cell, defer  RcuCell, RcuBox, defer: publish, read and retire with no unsafe
//! kvfree       kfree_rcu / kvfree_rcu: per-CPU blocks, policies, block cache, refill, shrinker
//!   rcu        readers, grace periods, polled API, call_rcu, barrier, the grace-period worker
//!   slab       typed object caches over pages, with bulk free
//!   page       zone + buddy + per-CPU lists + GFP + watermarks + reclaim + shrinkers
//!   lock       RawSpinLock, SpinLock, Mutex, LocalLock         lockdep  the validator
//!   context    per-thread context, preempt model               percpu   CPU ids, PerCpu<T>
//!   domain     CPUs, preempt model and validator settings shared by an instance
//! ```
//!
//! [`Krcu`] holds one of each, built with [`Krcu::builder`]; the free
//! functions ([`kfree_rcu`], [`kvfree_rcu_mightsleep`],
//! [`kvfree_rcu_barrier`], [`defer`], `krcu::rcu::*`) use the process-wide
//! instance [`Krcu::global`], built on the one process-wide RCU
//! ([`rcu::global`]): a reader entered with [`rcu::read_lock`] holds off
//! [`kfree_rcu`], and the other way round. It starts lazily, in parts,
//! and never where the caller may not sleep (a signal handler, atomic
//! context, a real-time thread): there `kfree_rcu` hands the object to the
//! global RCU's `call_rcu`, which parks it without locks until the RCU
//! exists. A guard protects only against its own instance's grace periods.
//!
//! ## Idle, and exit
//! An instance with nothing pending costs next to nothing: its worker
//! threads sleep until there is work, waking a few times a second at most
//! ([`KvfreeConfig::idle_poll`](kvfree::KvfreeConfig::idle_poll), which
//! also bounds how long an object a real-time thread or a signal handler
//! queues after a quiet spell waits before it is handed to RCU). The
//! process-wide instance is never torn down: objects still queued on it
//! when the process exits are not dropped (as with crossbeam-epoch, no
//! destructor is guaranteed to run at exit); call [`flush`] before exiting
//! if they must be. Dropping a [`Krcu`] of your own frees everything
//! queued on it.
//!
//! ## Where to read on
//! - The [`guide`]: choosing a [`Policy`](kvfree::Policy), real-time
//!   threads, memory bounds and the flood brake, what each statistic means,
//!   and how to read a validator report.
//! - [`RcuCell`], [`Krcu`], [`rcu`] (readers, grace periods, the polled API,
//!   `call_rcu`), [`page`], [`slab`], [`lock`], [`lockdep`]: each with its
//!   examples.
//!
//! ## `fork()`
//! The child of a process that uses krcu has only the forking thread.
//! `pthread_atfork` handlers (registered when the program loads; they cost
//! nothing while no instance exists) park every krcu worker at a point
//! where it holds no lock, take the locks other threads could hold
//! (grace-period, barrier, reader registry, the `kfree_rcu` monitor, `krc`
//! and ready-list locks), and in the child release them, forget the
//! read-side sections and reclaim work of the threads that are gone, and
//! start new workers; the child can go on calling `kfree_rcu`,
//! `kvfree_rcu_barrier`, `synchronize` and drop its instances. Since
//! another thread's sections end in the child, the child must not use a
//! reference loaded under another thread's guard (one that thread handed
//! over, or leaked): part of what the caller of the `unsafe` `fork` answers
//! for. `fork` waits for the grace periods in progress, so do not fork
//! inside a read-side section (as with liburcu). Locks of the page
//! allocator and slab caches that another application thread held at the
//! instant of the fork stay held in the child, as with any library.
#![warn(missing_docs)]
// Under `--cfg loom` only the models' parts are compiled (kvfree and most
// of rcu are left out), so much of what is left has no user there.
#![cfg_attr(loom, allow(dead_code))]

// The derive's output names `::krcu::rcu::HasRcuHead`; this makes that
// path resolve inside krcu too.
extern crate self as krcu;

// krcu is Linux-only: on another OS the build stops here with one error,
// rather than a cascade from every `libc` call Linux alone has.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "krcu supports Linux only: it needs membarrier(2), futex(2), sched_getcpu(3) and gettid(2)"
);

/// Applies `#[cfg(target_os = "linux")]` to every item it wraps: on another
/// OS the crate is empty but for the `compile_error!` above. (The items
/// below are not indented, so that adding one stays a one-line change.)
macro_rules! linux_only {
    ($($item:item)*) => { $(#[cfg(target_os = "linux")] $item)* };
}

linux_only! {
#[cfg(not(loom))]
pub mod cell;
pub mod context;
#[cfg(not(loom))]
mod defer;
pub mod domain;
mod error;
#[cfg(not(loom))]
pub mod guide;
mod fork;
#[cfg(not(loom))]
mod instance;
#[cfg(not(loom))]
pub mod kvfree;
/// The front-block steal handshake of `kvfree`, alone, for its loom model
/// (the rest of `kvfree` is not built under loom). For that test only: the
/// `testing` feature, which krcu's own tests turn on.
#[cfg(all(loom, feature = "testing"))]
#[doc(hidden)]
#[path = "kvfree/steal.rs"]
pub mod kvfree_steal;
pub mod lock;
pub mod lockdep;
pub mod page;
mod percpu;
pub mod rcu;
pub mod slab;
pub(crate) mod sync;
mod unwind;

mod asan;

#[cfg(not(loom))]
pub use cell::{RcuBox, RcuCell};
#[cfg(not(loom))]
pub use defer::{DeferError, defer};
pub use domain::{Domain, DomainBuilder};
pub use error::BuildError;
#[cfg(not(loom))]
pub use instance::{
    InNmi, Krcu, KrcuBuilder, SlabChannel, SlabRetireError, flush, kfree_rcu, kfree_rcu_slab,
    kvfree_rcu_barrier, kvfree_rcu_mightsleep, register_thread,
};
/// `#[derive(HasRcuHead)]`: implements [`rcu::HasRcuHead`] for a struct
/// from its `RcuHead` field; see the trait for examples.
#[cfg(all(feature = "derive", not(loom)))]
pub use krcu_derive::HasRcuHead;

} // linux_only!
