//! Lockdep's wait types: what taking a lock may do, and what a context
//! allows (see the module documentation of `lockdep` for the rules).
//!
//! Uses only `context` (for [`ContextKind`]).

use crate::context::ContextKind;

/// A lockdep wait type. The numbers are lockdep's (`LD_WAIT_*`), as reports
/// print them in `{outer:inner}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum WaitType {
    /// Wait-free: may be done anywhere (`LD_WAIT_FREE`).
    Free = 1,
    /// Spins: a raw spinlock (`LD_WAIT_SPIN`).
    Spin = 2,
    /// Spins, or sleeps under PREEMPT_RT: `spinlock_t` (`LD_WAIT_CONFIG`).
    Config = 3,
    /// Sleeps: a mutex (`LD_WAIT_SLEEP`).
    Sleep = 4,
    /// No restriction: the level of task context (`LD_WAIT_MAX`).
    Max = 5,
}

impl WaitType {
    /// The type as the validator sees it: with nesting proof off, CONFIG
    /// counts as SPIN.
    #[inline]
    pub fn effective(self, prove_raw_lock_nesting: bool) -> WaitType {
        if !prove_raw_lock_nesting && self == WaitType::Config {
            WaitType::Spin
        } else {
            self
        }
    }

    /// Lockdep's number for this type.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The level a context allows before any lock is held.
    pub fn context_level(kind: ContextKind) -> WaitType {
        match kind {
            ContextKind::Task => WaitType::Max,
            ContextKind::Softirq => WaitType::Config,
            ContextKind::Hardirq => WaitType::Spin,
            ContextKind::Nmi => WaitType::Free,
        }
    }
}
