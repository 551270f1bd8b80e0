//! # krcu
//!
//! The Linux kernel's deferred-free machinery in userspace Rust: RCU grace
//! periods, `kfree_rcu` with per-CPU, page-sized pointer blocks and bulk
//! free, a page allocator with per-CPU lists in front of a buddy
//! allocator, slab caches, and a lockdep-style validator.
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
//! Waiting is what much code must never do: a real-time audio thread, a
//! signal handler, code under a spinlock. **`kfree_rcu`** hands the object
//! over and returns at once; it is freed after the grace period. To make
//! that cheap the pointers go into page-sized **blocks** per CPU, and a
//! whole block is freed at once when its grace period has passed, instead
//! of walking a list of cold objects. The blocks need pages, and getting a
//! page without ever blocking, from any context, is what the kernel argued
//! about from 2020 to 2022: every option it weighed is a [`Policy`](kvfree::Policy) here
//! (the repository's `docs/history.md` tells the story).
//!
//! The **real-time promise**: on a thread registered with
//! [`register_thread`] (or [`Krcu::register_thread`],
//! [`context::set_realtime`]), `kfree_rcu` never runs a destructor, never
//! calls the global allocator, never takes a blocking lock and makes no
//! system call, whatever the other threads do.
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

#[cfg(not(loom))]
pub mod cell;
pub mod context;
#[cfg(not(loom))]
mod defer;
pub mod domain;
mod error;
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
    InNmi, Krcu, KrcuBuilder, SlabChannel, flush, kfree_rcu, kvfree_rcu_barrier,
    kvfree_rcu_mightsleep, register_thread,
};
/// `#[derive(HasRcuHead)]`: implements [`rcu::HasRcuHead`] for a struct
/// from its `RcuHead` field; see the trait for examples.
#[cfg(all(feature = "derive", not(loom)))]
pub use krcu_derive::HasRcuHead;
