//! `#[derive(HasRcuHead)]`: the derived offset is the head field's
//! `offset_of!` wherever the head sits (named, tuple and generic structs,
//! first, middle or last, chosen by `#[rcu_head]`), and objects of a
//! derived type survive the trip through `kfree_rcu` and `call_rcu_box`
//! with the fields around their head intact.
//!
//! What the derive refuses is tested by the `compile_fail` examples on
//! the trait `krcu::rcu::HasRcuHead`.

// Most fields exist only to give the structs a layout; none is read.
#![allow(dead_code)]

use krcu::rcu::{self, HasRcuHead, RcuHead};
use std::mem::offset_of;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(HasRcuHead)]
#[repr(C)]
struct HeadFirst {
    rcu: RcuHead,
    value: u64,
}

#[derive(HasRcuHead)]
#[repr(C)]
struct HeadInTheMiddle {
    before: [u8; 3],
    rcu: rcu::RcuHead,
    after: u32,
}

#[derive(HasRcuHead)]
#[repr(C)]
struct HeadLast {
    first: u64,
    second: u16,
    rcu: krcu::rcu::RcuHead,
}

#[test]
fn the_offset_is_that_of_the_head_wherever_it_sits() {
    assert_eq!(HeadFirst::RCU_HEAD_OFFSET, offset_of!(HeadFirst, rcu));
    assert_eq!(HeadFirst::RCU_HEAD_OFFSET, 0);

    assert_eq!(
        HeadInTheMiddle::RCU_HEAD_OFFSET,
        offset_of!(HeadInTheMiddle, rcu)
    );
    assert_ne!(HeadInTheMiddle::RCU_HEAD_OFFSET, 0);

    assert_eq!(HeadLast::RCU_HEAD_OFFSET, offset_of!(HeadLast, rcu));
    assert_eq!(
        HeadLast::RCU_HEAD_OFFSET,
        size_of::<HeadLast>() - size_of::<RcuHead>()
    );
}

/// Rust may reorder the fields of a struct without `repr(C)`: the derive
/// must follow whatever layout the compiler chose.
#[derive(HasRcuHead)]
struct ReorderedByTheCompiler {
    small: u8,
    rcu: RcuHead,
    large: [u64; 3],
    other: u16,
}

#[test]
fn the_offset_follows_the_compilers_layout() {
    assert_eq!(
        ReorderedByTheCompiler::RCU_HEAD_OFFSET,
        offset_of!(ReorderedByTheCompiler, rcu)
    );
}

#[derive(HasRcuHead)]
#[repr(C)]
struct TupleNode(u32, u8, RcuHead, u64);

#[test]
fn a_tuple_struct_uses_the_heads_position() {
    assert_eq!(TupleNode::RCU_HEAD_OFFSET, offset_of!(TupleNode, 2));
    assert_ne!(TupleNode::RCU_HEAD_OFFSET, 0);
}

#[derive(HasRcuHead)]
#[repr(C)]
struct GenericNode<T: Send + 'static> {
    value: T,
    rcu: RcuHead,
}

/// No bound on `T` at all: the impl requires `Self: Send + 'static`.
#[derive(HasRcuHead)]
#[repr(C)]
struct UnboundedNode<T> {
    value: T,
    rcu: RcuHead,
}

fn head_offset<T: HasRcuHead>() -> usize {
    T::RCU_HEAD_OFFSET
}

#[test]
fn a_generic_struct_gets_each_instances_offset() {
    assert_eq!(
        head_offset::<GenericNode<u8>>(),
        offset_of!(GenericNode<u8>, rcu)
    );
    assert_eq!(
        head_offset::<GenericNode<[u64; 5]>>(),
        offset_of!(GenericNode<[u64; 5]>, rcu)
    );
    assert_eq!(
        head_offset::<GenericNode<String>>(),
        offset_of!(GenericNode<String>, rcu)
    );
    assert_ne!(
        head_offset::<GenericNode<u8>>(),
        head_offset::<GenericNode<[u64; 5]>>(),
        "the head moves with the size of T"
    );
    assert_eq!(
        head_offset::<UnboundedNode<[u32; 7]>>(),
        offset_of!(UnboundedNode<[u32; 7]>, rcu)
    );
}

#[derive(HasRcuHead)]
#[repr(C)]
struct TwoHeads {
    first: RcuHead,
    #[rcu_head]
    second: RcuHead,
    value: u64,
}

type AliasedHead = RcuHead;

#[derive(HasRcuHead)]
#[repr(C)]
struct HeadThroughAnAlias {
    value: u64,
    #[rcu_head]
    rcu: AliasedHead,
}

#[test]
fn rcu_head_picks_the_field() {
    assert_eq!(TwoHeads::RCU_HEAD_OFFSET, offset_of!(TwoHeads, second));
    assert_ne!(TwoHeads::RCU_HEAD_OFFSET, offset_of!(TwoHeads, first));
    assert_eq!(
        HeadThroughAnAlias::RCU_HEAD_OFFSET,
        offset_of!(HeadThroughAnAlias, rcu)
    );
    assert_ne!(HeadThroughAnAlias::RCU_HEAD_OFFSET, 0);
}

/// The root re-export is the same derive.
#[derive(krcu::HasRcuHead)]
#[repr(C)]
struct ThroughTheRootReexport {
    value: u64,
    rcu: RcuHead,
}

#[test]
fn the_root_reexport_derives_too() {
    assert_eq!(
        ThroughTheRootReexport::RCU_HEAD_OFFSET,
        offset_of!(ThroughTheRootReexport, rcu)
    );
}

const OBJECTS: usize = 10_000;
const CANARY: u64 = 0x5a5a_c3c3_0f0f_a5a5;

/// An object whose head is wrapped in canaries that its Drop checks: a
/// head written at the wrong offset would break one of them.
macro_rules! canaried {
    ($name:ident, $drops:ident, $broken:ident) => {
        static $drops: AtomicUsize = AtomicUsize::new(0);
        static $broken: AtomicUsize = AtomicUsize::new(0);

        #[derive(HasRcuHead)]
        #[repr(C)]
        struct $name {
            canary_before: u64,
            rcu: RcuHead,
            canary_after: u64,
            id: u64,
        }

        impl $name {
            fn boxed(id: u64) -> Box<Self> {
                Box::new(Self {
                    canary_before: CANARY ^ id,
                    rcu: RcuHead::new(),
                    canary_after: !CANARY ^ id,
                    id,
                })
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                let intact = self.canary_before == CANARY ^ self.id
                    && self.canary_after == !CANARY ^ self.id;
                if !intact {
                    $broken.fetch_add(1, Ordering::Relaxed);
                }
                $drops.fetch_add(1, Ordering::Relaxed);
                assert!(intact, "object {} had a canary overwritten", self.id);
            }
        }
    };
}

canaried!(KfreedObject, KFREED_DROPS, KFREED_BROKEN);
canaried!(CalledBackObject, CALLED_BACK_DROPS, CALLED_BACK_BROKEN);

#[test]
fn ten_thousand_derived_objects_through_kfree_rcu_keep_their_canaries() {
    for id in 0..OBJECTS as u64 {
        assert!(
            krcu::kfree_rcu(KfreedObject::boxed(id)).is_ok(),
            "kfree_rcu refused object {id} outside NMI context"
        );
    }
    krcu::kvfree_rcu_barrier();
    assert_eq!(KFREED_BROKEN.load(Ordering::Relaxed), 0);
    assert_eq!(KFREED_DROPS.load(Ordering::Relaxed), OBJECTS);
}

/// `call_rcu_box` always queues through the embedded head, so the head
/// is written at the derived offset for every object.
#[test]
fn ten_thousand_derived_objects_through_call_rcu_keep_their_canaries() {
    for id in 0..OBJECTS as u64 {
        rcu::call_rcu_box(CalledBackObject::boxed(id));
    }
    rcu::rcu_barrier();
    assert_eq!(CALLED_BACK_BROKEN.load(Ordering::Relaxed), 0);
    assert_eq!(CALLED_BACK_DROPS.load(Ordering::Relaxed), OBJECTS);
}
