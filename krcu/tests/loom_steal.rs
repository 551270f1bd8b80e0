//! Loom model of the front-block steal handshake (`kvfree/steal.rs`), in
//! its full-fence variant (loom cannot model membarrier): an owner appends
//! to its block inside its sections while the monitor steals the block.
//! In every interleaving the owner never touches a block after the monitor
//! took it (a race or a write to a taken block fails the model), and every
//! append is either in what the monitor took or in the block left behind.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p krcu --release --test loom_steal`
#![cfg(loom)]

use krcu::kvfree_steal::StealGate;
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicPtr, Ordering::*};
use loom::thread;

/// A block: how many objects it holds, and whether the monitor took it.
struct Block {
    data: UnsafeCell<(usize, bool)>,
}

struct Front {
    gate: StealGate,
    block: AtomicPtr<Block>,
}

#[test]
fn the_owner_never_uses_a_block_the_monitor_took() {
    loom::model(|| {
        // Leaked per execution: the owner's old pointer, if the protocol
        // let it be used, must still point at valid memory for loom to
        // report the race rather than crash.
        let first: &'static Block = Box::leak(Box::new(Block {
            data: UnsafeCell::new((0, false)),
        }));
        let front = Arc::new(Front {
            gate: StealGate::new(true),
            block: AtomicPtr::new(core::ptr::from_ref(first).cast_mut()),
        });
        let owner = {
            let front = front.clone();
            thread::spawn(move || {
                let mut pushed = 0;
                for _ in 0..2 {
                    if front.gate.begin() {
                        let b = front.block.load(Relaxed);
                        if !b.is_null() {
                            // SAFETY: inside the owner's section with no
                            // steal asked, the block is the owner's (the
                            // property under test).
                            unsafe { &*b }.data.with_mut(|d| {
                                // SAFETY: as above.
                                let d = unsafe { &mut *d };
                                assert!(!d.1, "the owner appended to a block the monitor took");
                                d.0 += 1;
                            });
                            pushed += 1;
                        }
                        front.gate.end();
                    }
                }
                pushed
            })
        };
        front.gate.steal();
        let b = front.block.swap(core::ptr::null_mut(), AcqRel);
        let stolen = if b.is_null() {
            0
        } else {
            // SAFETY: stolen: the owner is out of its section and will not
            // enter the block again.
            unsafe { &*b }.data.with_mut(|d| {
                // SAFETY: as above.
                let d = unsafe { &mut *d };
                d.1 = true;
                d.0
            })
        };
        front.gate.release();
        let pushed = owner.join().unwrap();
        assert!(pushed <= 2);
        assert_eq!(stolen, pushed, "appends lost or invented");
    });
}
