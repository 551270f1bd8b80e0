//! How `kfree_rcu` gets a block page while it holds the raw per-CPU lock:
//! the options the 2020 kfree_rcu thread weighed against each other
//! (docs/history.md).
//!
//! Owns: [`Policy`], [`ParsePolicyError`]. Uses: nothing in kvfree.

use core::fmt;
use core::str::FromStr;

/// Where a block page comes from when the current one is full and the
/// per-CPU cache of spare blocks is empty, with the raw `krc` lock held.
///
/// What each costs and when to use which: the
/// [guide](crate::guide#choosing-a-policy).
///
/// ```
/// use krcu::kvfree::Policy;
/// assert_eq!(Policy::default(), Policy::CacheRefillNolock);
/// for policy in Policy::ALL {
///     assert_eq!(policy.name().parse::<Policy>(), Ok(policy)); // as on the command line
/// }
/// assert!(Policy::CacheRefill.refills() && !Policy::Prohibit.refills());
/// let err = "fastest".parse::<Policy>().unwrap_err();
/// assert!(err.to_string().contains("cache-refill+nolock"), "lists the valid names");
///
/// // Prohibit never allocates under the lock: with no spare block, the
/// // object goes on the rcu_head list instead.
/// let krcu = krcu::Krcu::builder()
///     .cpus(1)
///     .arena_size(16 << 20)
///     .kvfree_config(krcu::kvfree::KvfreeConfig::default().policy(Policy::Prohibit).front_blocks(false))
///     .build()
///     .unwrap();
/// krcu.kvfree_rcu_mightsleep(Box::new(1u8)).unwrap();
/// krcu.kvfree_rcu_barrier();
/// assert_eq!(krcu.stats().inline_allocs, 0, "never allocates under the lock");
/// assert_eq!(krcu.stats().reclaimed_objects, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Never allocate under the lock: the cache, or the list fallback
    /// (the 2020 kfree_rcu thread, option 1).
    Prohibit,
    /// A `GFP_NOWAIT` allocation under the lock: the 5.9 behaviour. Takes
    /// `zone->lock` when the per-CPU lists are empty, which the validator
    /// reports under raw-lock nesting proof and which sleeps under
    /// PREEMPT_RT. Kept to show the bug.
    #[doc(alias = "GFP_NOWAIT")]
    Nowait,
    /// The 2020 `__GFP_NO_LOCKS` proposal: this CPU's page lists only
    /// (`no-locks` on the command line). Not to be confused with
    /// [`AllocPagesNolock`](Policy::AllocPagesNolock).
    #[doc(alias = "__GFP_NO_LOCKS", alias = "NoLocks")]
    GfpNoLocks,
    /// Allocate (`GFP_NOWAIT`, with the lock dropped) only when the caller
    /// is `preemptible()`; under `PreemptModel::None` it never can be known,
    /// so it never allocates (the 2020 kfree_rcu thread, option 4).
    Preemptible,
    /// `alloc_pages_nolock()`: trylock the per-CPU lists, then the zone
    /// (`nolock` on the command line). Not to be confused with
    /// [`GfpNoLocks`](Policy::GfpNoLocks).
    #[doc(alias = "alloc_pages_nolock", alias = "Nolock")]
    AllocPagesNolock,
    /// Mainline's answer (Thomas Gleixner, 2020): a per-CPU cache of spare blocks, refilled
    /// by a worker outside any raw lock when it runs low or calls come fast;
    /// the list fallback for the few calls in between.
    CacheRefill,
    /// `CacheRefill`, with an `alloc_pages_nolock()` attempt before the
    /// fallback.
    CacheRefillNolock,
}

impl Policy {
    /// Every policy.
    pub const ALL: [Policy; 7] = [
        Policy::Prohibit,
        Policy::Nowait,
        Policy::GfpNoLocks,
        Policy::Preemptible,
        Policy::AllocPagesNolock,
        Policy::CacheRefill,
        Policy::CacheRefillNolock,
    ];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Prohibit => "prohibit",
            Policy::Nowait => "nowait",
            Policy::GfpNoLocks => "no-locks",
            Policy::Preemptible => "preemptible",
            Policy::AllocPagesNolock => "nolock",
            Policy::CacheRefill => "cache-refill",
            Policy::CacheRefillNolock => "cache-refill+nolock",
        }
    }

    /// Whether the refill worker keeps a cache of spare blocks for it.
    pub fn refills(self) -> bool {
        matches!(self, Policy::CacheRefill | Policy::CacheRefillNolock)
    }
}

impl Default for Policy {
    /// The policy that measured best (see the README's policies table).
    fn default() -> Self {
        Policy::CacheRefillNolock
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy name [`Policy::from_str`](FromStr::from_str) does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy '{name}' (expected one of: {})", Policy::ALL.map(Policy::name).join(", "))]
pub struct ParsePolicyError {
    /// The name given.
    pub name: String,
}

impl FromStr for Policy {
    type Err = ParsePolicyError;
    fn from_str(s: &str) -> Result<Self, ParsePolicyError> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParsePolicyError { name: s.into() })
    }
}
