//! # krcu
//!
//! The Linux kernel's deferred-free machinery in userspace Rust:
//! `kvfree_rcu` with per-CPU pointer blocks and bulk free, a page allocator
//! with per-CPU lists in front of a buddy allocator, RCU grace periods, and
//! a lockdep-style validator that proves a path never takes a sleeping lock
//! where it must not.
//!
//! The parts, each using only those below it (see `../shared/DESIGN.md`):
//!
//! ```text
//! kvfree    kfree_rcu / kvfree_rcu: per-CPU blocks, policies, page cache, refill, shrinker
//!   rcu     readers, grace periods, polled API, call_rcu, barrier, the grace-period worker
//!   slab    typed object caches over pages, with bulk free
//!   page    zone + buddy + per-CPU lists + GFP + watermarks + reclaim + shrinkers
//!   lock    RawSpinLock, SpinLock, Mutex, LocalLock         lockdep  the validator
//!   context per-thread context, preempt model               percpu   CPU ids, PerCpu<T>
//!   domain  CPUs, preempt model and validator settings shared by an instance
//! ```
//!
//! [`Krcu`] holds one of each, built with [`Krcu::builder`]; the free
//! functions ([`kfree_rcu`], [`kvfree_rcu_mightsleep`],
//! [`kvfree_rcu_barrier`]) use a process-wide instance built on first use.
//!
//! ```
//! use krcu::rcu::{HasRcuHead, RcuHead};
//!
//! struct Node {
//!     value: u64,
//!     rcu: RcuHead,
//! }
//! // SAFETY: `rcu` is an RcuHead field of Node.
//! unsafe impl HasRcuHead for Node {
//!     const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node, rcu);
//! }
//!
//! let krcu = krcu::Krcu::builder().arena_size(16 << 20).build().unwrap();
//! let node = Box::new(Node { value: 1, rcu: RcuHead::new() });
//! // ... after unlinking `node` from a structure readers traverse:
//! krcu.kfree_rcu(node).unwrap();
//! krcu.kvfree_rcu_barrier(); // everything queued so far is freed
//! assert_eq!(krcu.stats().reclaimed_objects, 1);
//! ```
#![warn(missing_docs)]

pub mod context;
pub mod domain;
#[cfg(not(loom))]
mod instance;
#[cfg(not(loom))]
pub mod kvfree;
/// The front-block steal handshake of `kvfree`, alone, for its loom model
/// (the rest of `kvfree` is not built under loom).
#[cfg(loom)]
#[doc(hidden)]
#[path = "kvfree/steal.rs"]
pub mod kvfree_steal;
pub mod lock;
pub mod lockdep;
pub mod page;
pub mod percpu;
pub mod rcu;
pub mod slab;
pub(crate) mod sync;

pub use context::{ContextKind, PreemptModel};
pub use domain::{Domain, DomainBuilder};
#[cfg(not(loom))]
pub use instance::{
    BuildError, InNmi, Krcu, KrcuBuilder, SlabChannel, kfree_rcu, kvfree_rcu_barrier,
    kvfree_rcu_mightsleep,
};
#[cfg(not(loom))]
pub use kvfree::{Assist, KvfreeConfig, KvfreeStats, Policy};
