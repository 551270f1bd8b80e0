//! # krcu
//!
//! The Linux kernel's deferred-free machinery in userspace Rust:
//! `kvfree_rcu` with per-CPU pointer blocks and bulk free, a page allocator
//! with per-CPU lists in front of a buddy allocator, RCU grace periods, and
//! a lockdep-style validator that proves a path never takes a sleeping lock
//! where it must not.
//!
//! The parts, each using only those below it:
//!
//! ```text
//! lock      RawSpinLock, SpinLock, Mutex, LocalLock      lockdep  the validator
//! context   per-thread context, preempt model            percpu   CPU ids, PerCpu<T>
//! domain    CPUs, preempt model and validator settings shared by an instance
//! ```
#![warn(missing_docs)]

pub mod context;
pub mod domain;
pub mod lock;
pub mod lockdep;
pub mod page;
pub mod percpu;
pub mod rcu;
pub mod slab;
pub(crate) mod sync;

pub use context::{ContextKind, PreemptModel};
pub use domain::{Domain, DomainBuilder};
