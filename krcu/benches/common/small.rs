//! The small retired object of the README's figures, 24 bytes: an
//! `RcuHead` and a word of payload. Shared by the `kvfree` benchmark and
//! the flood test (tests/kvfree_flood.rs), so that both retire the object
//! the figures speak of.

use krcu::rcu::{HasRcuHead, RcuHead};

pub struct Small {
    head: RcuHead,
    #[allow(dead_code)] // payload: makes the object 24 bytes
    value: u64,
}

const _: () = assert!(size_of::<Small>() == 24);

// SAFETY: `head` is an RcuHead field of Small.
unsafe impl HasRcuHead for Small {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Small, head);
}

/// A new object holding `value`.
pub fn small(value: u64) -> Box<Small> {
    Box::new(Small {
        head: RcuHead::new(),
        value,
    })
}
