//! The instance of the cold-reclaim measurement, shared by the `reclaim`
//! benchmark (benches/kvfree.rs, timed) and the `reclaim_misses` example
//! (the same measurement under callgrind's cache simulation), so that the
//! two measure the same thing.

use krcu::KrcuBuilder;
use krcu::kvfree::{KvfreeConfig, Policy};
use std::time::Duration;

/// The two reclaim paths compared: a name, the policy that takes it and
/// the spare blocks it keeps. Blocks (one pointer array walk, independent
/// misses) and the `rcu_head` list (no block can be had: every object takes
/// the fallback, a dependent miss per object to find the next).
pub const PATHS: [(&str, Policy, usize); 2] = [
    ("blocks", Policy::CacheRefillNolock, 5),
    ("rcu_head list", Policy::Prohibit, 0),
];

/// `builder` set up for one of [`PATHS`] (`policy`, `cache` spare blocks):
/// no validator, and no drain until a barrier asks, so that the objects
/// are cold by the time they are reclaimed.
pub fn cold_reclaim(builder: KrcuBuilder, policy: Policy, cache: usize) -> KrcuBuilder {
    builder.lockdep(false).kvfree_config(
        KvfreeConfig::default()
            .policy(policy)
            .cache_blocks(cache)
            .refill_mark(cache.min(3))
            .drain_delay(Duration::from_secs(3600)),
    )
}
