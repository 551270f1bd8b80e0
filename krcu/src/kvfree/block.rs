//! The pointer block: one 4 KiB page from krcu's page allocator holding a
//! header and an array of object pointers (the kernel's
//! `struct kvfree_rcu_bulk_data`).
//!
//! All objects in a block are freed the same way: the block's [`Channel`]
//! says how (a function that frees a slice of pointers in bulk, and its
//! context). So an entry is one word, not a fat pointer: the type's drop is
//! monomorphised into the channel's function once per block.
//!
//! Owns: [`Block`], [`BlockList`], [`Channel`]. Uses: RCU's grace-period
//! cookie and the crate's unwind helpers; nothing else in kvfree.

use crate::rcu::GpCookie;
use core::ptr::{self, NonNull};

/// The page size blocks are made of.
pub(crate) const BLOCK_BYTES: usize = 4096;

/// Frees `objs` (all of one channel) given the channel's context, and
/// returns how many of their destructors panicked: a panic is caught per
/// object and the rest are still freed (destructors are other people's
/// code; the reclaimer that runs them must go on).
///
/// # Safety
/// Every pointer must be an object queued on a channel with this function
/// and context, whose grace period has elapsed, each passed exactly once.
pub(crate) type ReclaimFn = unsafe fn(ctx: *const (), objs: &mut [*mut u8]) -> usize;

/// How the objects of a block are freed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Channel {
    pub(crate) reclaim: ReclaimFn,
    pub(crate) ctx: *const (),
    /// Bytes per object, for the pending-memory statistics.
    pub(crate) obj_size: usize,
}

impl Channel {
    /// Whether two channels free the same way. Function addresses are
    /// compared as numbers: two copies of one function give two channels
    /// (harmless: one more block), and two functions merged by the compiler
    /// have identical code (also harmless: either frees correctly).
    #[inline]
    pub(crate) fn same(&self, other: &Channel) -> bool {
        self.reclaim as usize == other.reclaim as usize && self.ctx == other.ctx
    }
}

const HEADER_WORDS: usize = 6;

/// Pointers per block: the page less the header (the kernel's
/// `KVFREE_BULK_MAX_ENTR`).
pub(crate) const ENTRIES: usize = BLOCK_BYTES / size_of::<usize>() - HEADER_WORDS;

/// A block: lives in a page, never on the heap.
#[repr(C)]
pub(crate) struct Block {
    /// The next block in whatever list holds this one.
    pub(crate) next: *mut Block,
    /// Entries in use.
    pub(crate) count: usize,
    pub(crate) chan: Channel,
    /// The latest grace-period cookie of the entries (by `rcu_seq` order):
    /// once it has elapsed, every object in the block may be freed.
    pub(crate) gp_snap: GpCookie,
    pub(crate) entries: [*mut u8; ENTRIES],
}

const _: () = assert!(size_of::<Block>() == BLOCK_BYTES);
const _: () = assert!(align_of::<Block>() <= BLOCK_BYTES);

impl Block {
    /// Makes an empty block of `chan` in `page`.
    ///
    /// # Safety
    /// `page` must be a page-aligned, writable 4 KiB region owned by the
    /// caller and not otherwise in use.
    pub(crate) unsafe fn init(page: NonNull<u8>, chan: Channel) -> NonNull<Block> {
        let b = page.cast::<Block>();
        // SAFETY: by the caller's contract the page is ours, large and
        // aligned enough for a Block; the entries are written before read.
        unsafe {
            ptr::addr_of_mut!((*b.as_ptr()).next).write(ptr::null_mut());
            ptr::addr_of_mut!((*b.as_ptr()).count).write(0);
            ptr::addr_of_mut!((*b.as_ptr()).chan).write(chan);
            ptr::addr_of_mut!((*b.as_ptr()).gp_snap).write(GpCookie::COMPLETED);
        }
        b
    }

    /// Whether the block has no room left.
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.count == ENTRIES
    }

    /// Adds `obj`, whose cookie is `snap`; the caller checked there is
    /// room.
    ///
    /// The block keeps the later of its cookie and `snap`, compared as
    /// `rcu_seq` values (wrapping, not a numeric max): a caller that took
    /// its cookie, then stalled before adding (preempted, or sleeping in an
    /// allocation), must not stamp an older cookie on a block that already
    /// holds a newer object, which would let the drain-ready path free that
    /// object before its own grace period.
    #[inline]
    pub(crate) fn push(&mut self, obj: *mut u8, snap: GpCookie) {
        debug_assert!(self.count < ENTRIES);
        if self.count == 0 || snap.at_or_after(self.gp_snap) {
            self.gp_snap = snap;
        }
        self.entries[self.count] = obj;
        self.count += 1;
    }

    /// Frees every object in the block, in bulk, and empties it. Returns
    /// the objects and how many destructors panicked (caught).
    ///
    /// # Safety
    /// The grace period of every object in the block must have elapsed.
    pub(crate) unsafe fn reclaim(&mut self) -> (usize, usize) {
        let n = self.count;
        let (chan, entries) = (self.chan, &mut self.entries[..n]);
        // The channels catch a destructor's panic per object; this catches
        // what escapes them anyway (a panic of the freeing itself, such as
        // a bad-free report), so that the reclaimer survives. The block's
        // remaining objects are then leaked, never freed twice.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the entries were queued on this channel and their
            // grace period has elapsed (the caller's contract); each is
            // freed once because the block is emptied here.
            unsafe { (chan.reclaim)(chan.ctx, entries) }
        }));
        self.count = 0;
        (
            n,
            r.unwrap_or_else(|p| {
                drop_payload(p);
                1
            }),
        )
    }
}

/// A singly linked list of blocks through `next`.
#[derive(Debug)]
pub(crate) struct BlockList {
    pub(crate) head: *mut Block,
    pub(crate) len: usize,
}

impl BlockList {
    pub(crate) const fn new() -> Self {
        BlockList {
            head: ptr::null_mut(),
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Pushes `b` on the front.
    ///
    /// # Safety
    /// `b` must be a block owned by the caller and in no other list.
    #[inline]
    pub(crate) unsafe fn push(&mut self, b: NonNull<Block>) {
        // SAFETY: the caller owns `b`.
        unsafe { (*b.as_ptr()).next = self.head };
        self.head = b.as_ptr();
        self.len += 1;
    }

    /// Pops the front block.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<NonNull<Block>> {
        let b = NonNull::new(self.head)?;
        // SAFETY: blocks in the list are owned by it.
        self.head = unsafe { (*b.as_ptr()).next };
        self.len -= 1;
        Some(b)
    }

    /// The objects the blocks hold, and their bytes.
    pub(crate) fn totals(&self) -> (usize, usize) {
        let (mut objs, mut bytes) = (0, 0);
        let mut p = self.head;
        while !p.is_null() {
            // SAFETY: blocks in the list are owned by it and initialised.
            let b = unsafe { &*p };
            objs += b.count;
            bytes += b.count * b.chan.obj_size;
            p = b.next;
        }
        (objs, bytes)
    }

    /// Moves all of `other` to the front of `self`.
    pub(crate) fn append(&mut self, other: &mut BlockList) {
        while let Some(b) = other.pop() {
            // SAFETY: popped from `other`, so owned by us now.
            unsafe { self.push(b) };
        }
    }
}

// SAFETY: a BlockList owns its blocks exclusively; moving it moves that
// ownership. The object pointers inside are only freed, never read.
unsafe impl Send for BlockList {}

/// The channel of global-allocator boxes of `T`: dropping each `Box<T>`.
///
/// # Safety
/// See [`ReclaimFn`]; every pointer came from `Box::<T>::into_raw`.
pub(crate) unsafe fn reclaim_boxes<T>(_ctx: *const (), objs: &mut [*mut u8]) -> usize {
    let mut panics = 0;
    for &mut p in objs {
        // SAFETY: each pointer came from Box::<T>::into_raw and is freed
        // exactly once (the caller's contract). A panicking destructor has
        // still handed the Box over: its memory is freed while unwinding.
        let r = catch_destructor(|| drop(unsafe { Box::from_raw(p.cast::<T>()) }));
        panics += usize::from(r.is_err());
    }
    panics
}

/// Runs one object's destructor, catching its panic (reported by the
/// engine, which counts them).
///
/// The panic's payload is dropped inside a `catch_unwind` of its own: a
/// payload whose destructor panics again must not unwind out of here (it
/// would end the reclaim of the rest of the block). Such a payload is
/// leaked (`mem::forget` of the second payload), never dropped twice.
#[inline]
pub(crate) fn catch_destructor(f: impl FnOnce()) -> Result<(), ()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(drop_payload)
}

pub(crate) use crate::unwind::drop_panic_payload as drop_payload;

/// The channel of `Box<T>`.
pub(crate) fn box_channel<T>() -> Channel {
    Channel {
        reclaim: reclaim_boxes::<T>,
        ctx: ptr::null(),
        obj_size: size_of::<T>(),
    }
}

/// Frees a `Box<T>` given its embedded head: the list fallback's function
/// for the two-argument form.
///
/// # Safety
/// `head` must be the embedded head of a `Box<T>` leaked with
/// `Box::into_raw`, whose grace period has elapsed; called once.
pub(crate) unsafe fn drop_box_by_head<T: crate::rcu::HasRcuHead>(
    head: NonNull<crate::rcu::RcuHead>,
) {
    // SAFETY: the head lies RCU_HEAD_OFFSET bytes into the Box's object
    // (HasRcuHead's contract), so going back stays in the allocation and
    // gives the pointer Box::into_raw returned; freed once (the contract).
    drop(unsafe { Box::from_raw(head.as_ptr().byte_sub(T::RCU_HEAD_OFFSET).cast::<T>()) });
}
