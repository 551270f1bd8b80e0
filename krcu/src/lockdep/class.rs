//! Lock classes: one per construction site (or per name given at
//! construction), as lockdep keys a class on the static `lock_class_key`
//! at the site that initialises the lock.
//!
//! Classes live in a process-wide, fixed-size, lock-free registry, so that
//! looking one up never allocates or blocks. A class is identified by a
//! small number ([`ClassId`]); id 0 means "no class" (a lock built through
//! `lock_api`'s `INIT`, which the validator does not track).
//!
//! Uses: in this module `table.rs`.

use super::table::{FNV_OFFSET, KeySet, Slot, hash_bytes};
use core::panic::Location;
use std::sync::OnceLock;

/// How many classes the registry holds (the kernel's `MAX_LOCKDEP_KEYS` is
/// 8191).
pub(crate) const MAX_CLASSES: usize = 4096;

/// A lock class: where its locks are built and what it is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub(crate) u16);

impl ClassId {
    /// No class: not tracked by the validator.
    pub const NONE: ClassId = ClassId(0);
}

/// What the registry knows of a class.
#[derive(Debug, Clone, Copy)]
pub struct ClassInfo {
    /// The name, as given at construction or `file:line:column`.
    pub name: &'static str,
}

static KEYS: KeySet<MAX_CLASSES> = KeySet::new();
static INFO: [OnceLock<ClassInfo>; MAX_CLASSES] = [const { OnceLock::new() }; MAX_CLASSES];

/// The class for locks built at `at` with `name` (registering it on first
/// use). Returns [`ClassId::NONE`] when the registry is full, which turns
/// the validator off for that class rather than failing the lock.
pub(crate) fn register(name: Option<&'static str>, at: &'static Location<'static>) -> ClassId {
    let mut h = hash_bytes(FNV_OFFSET, at.file().as_bytes());
    h = hash_bytes(h, &at.line().to_le_bytes());
    h = hash_bytes(h, &at.column().to_le_bytes());
    if let Some(n) = name {
        h = hash_bytes(h, n.as_bytes());
    }
    let index = match KEYS.insert(h) {
        Slot::Inserted(i) | Slot::Present(i) => i,
        Slot::Full => return ClassId::NONE,
    };
    // A racing registrant of the same key may set the info first; both
    // would store equal values, and `get_or_init` keeps exactly one.
    INFO[index].get_or_init(|| ClassInfo {
        name: name.unwrap_or_else(|| leak_location_name(at)),
    });
    ClassId(index as u16 + 1)
}

fn leak_location_name(at: &'static Location<'static>) -> &'static str {
    // Registered once per construction site, so the leak is bounded by the
    // number of sites in the program.
    Box::leak(format!("{}:{}:{}", at.file(), at.line(), at.column()).into_boxed_str())
}

/// What the registry knows of `id`, if it is a class.
pub fn info(id: ClassId) -> Option<ClassInfo> {
    if id == ClassId::NONE {
        return None;
    }
    INFO.get(id.0 as usize - 1)?.get().copied()
}

/// The class's name, or `"<unknown>"`.
pub(crate) fn name(id: ClassId) -> &'static str {
    info(id).map_or("<unknown>", |i| i.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_class_per_site_and_name() {
        let here = Location::caller();
        let a = register(None, here);
        let b = register(None, here);
        let c = register(Some("zone->lock"), here);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(name(c), "zone->lock");
        assert!(name(a).contains("class.rs"));
        assert_eq!(info(ClassId::NONE).map(|i| i.name), None);
    }
}
