//! The page allocator's sizes: the page and the orders the buddy serves.
//! Every part of `page` (and `slab`) uses them; they use nothing.

/// log2 of the page size.
pub const PAGE_SHIFT: usize = 12;
/// The page size: 4 KiB.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// The highest order the buddy allocator serves: blocks of 2^10 pages
/// (4 MiB), the kernel's `MAX_PAGE_ORDER`.
#[doc(alias = "MAX_PAGE_ORDER")]
pub const MAX_ORDER: u32 = 10;
/// The number of orders (0..=MAX_ORDER), `NR_PAGE_ORDERS`.
pub const NR_ORDERS: usize = MAX_ORDER as usize + 1;
/// The smallest block order given back: 64 pages (256 KiB). Smaller free
/// blocks are likely reused soon, and a system call per block would cost
/// more than it gives.
pub const RELEASE_ORDER: u32 = 6;
