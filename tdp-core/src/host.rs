//! What the engine needs from its host: table memory, per-table metadata and TLB invalidation.
//!
//! The host is a trait, not a global: a hypervisor implements it over its own frame allocator and
//! its own invalidation instructions (INVEPT, TLBI IPAS2E1IS, HFENCE.GVMA, ...). All methods take
//! `&self`, so a host can be shared by concurrent updaters in later issues; a host with mutable state
//! uses interior mutability.
//!
//! # Flush contract
//! No operation returns while a translation that grants more than the table now does may still
//! be cached, unless it hands its caller a [`crate::PendingFlush`] obligation that covers it:
//! - the simple calls of [`crate::Table`] flush before they return: every operation that removes
//!   or reduces a translation calls [`Host::flush_tlb`] at least once, with one range covering
//!   everything it changed, before it returns and before any table page it detached is freed;
//! - calls that take a `&mut PendingFlush` add their range and their detached tables to it; the
//!   flush is issued when the obligation is flushed or dropped, and the tables are released only
//!   after that flush (never before);
//! - **break-before-make flushes at once, inside the operation**: an entry that must be broken
//!   (`PteFormat::needs_break`) is frozen, its span is flushed with its own `flush_tlb` call, and
//!   only then is the new value written. An operation that breaks `n` entries makes `n` such
//!   calls besides its final one;
//! - a long operation that stops at its budget flushes (and releases) everything it owes before it
//!   returns the address to resume at;
//! - an exclusive-mode collapse that replaced tables, on a format whose A/D bits hardware sets,
//!   issues the flush its obligation owes before it returns: the replaced children are re-read
//!   after that flush, for the A/D bits hardware set in them meanwhile (their tables are still
//!   released with the obligation).
//!
//! # When a table is freed
//! - Exclusive mode (`&mut` access): once the flush covering it completed; the caller's
//!   [`crate::TableCache`] may reuse it at once, since no other software walker exists.
//! - Shared mode: once the flush covering it completed *and* a grace period elapsed: detached
//!   tables are handed to [`SharedHost::retire`] as one [`RetiredTables`] list, which the host frees
//!   when no walker that might still hold a pointer into them is left in a read-side section
//!   (RCU's `call_rcu`, an epoch scheme, or the hypervisor's own quiescent points).

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use core::ptr::NonNull;

use crate::addr::{Gpa, Hpa, Level};
pub use crate::pool::{RetiredDrain, RetiredTables};

/// Bookkeeping the engine keeps for each table page, stored by the host beside the page (as a
/// frame table entry or `struct page` would be). 16 bytes.
#[derive(Debug, Default)]
#[repr(C)]
pub struct TableMeta {
    /// Number of entries that are not the level's empty value. Exact in exclusive mode; in
    /// shared mode updated with atomic adds, so still exact once the updaters are done, but never
    /// trusted alone to remove a table (the table is frozen entry by entry instead).
    pub(crate) count: AtomicU32,
    /// Low 16 bits: how many of the counted entries are neither leaves nor tables (frozen
    /// entries, MMIO markers), so that leaves = count - others for a leaf table. High 16 bits:
    /// flags reserved for the fault-driven MMU (NX huge page tracking, root flags).
    pub(crate) flags: AtomicU32,
    /// Link for the engine's lists of free and to-be-freed tables (a physical address).
    pub(crate) link: AtomicU64,
}

#[cfg(not(loom))]
static_assertions::const_assert_eq!(core::mem::size_of::<TableMeta>(), 16);

impl TableMeta {
    /// A fresh record (count zero).
    #[cfg(not(loom))]
    pub const fn new() -> TableMeta {
        TableMeta {
            count: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            link: AtomicU64::new(0),
        }
    }

    /// A fresh record (count zero).
    #[cfg(loom)]
    pub fn new() -> TableMeta {
        TableMeta {
            count: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            link: AtomicU64::new(0),
        }
    }

    /// Number of non-empty entries the engine recorded for the table.
    #[inline]
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Number of counted entries that are neither leaves nor tables.
    #[inline]
    pub fn others(&self) -> u32 {
        self.flags.load(Ordering::Relaxed) & 0xffff
    }

    /// Resets the record for a table about to be (re)used (as [`TableMeta::new`]); a host that
    /// reuses its records calls it when it hands a table out.
    #[inline]
    pub fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.flags.store(0, Ordering::Relaxed);
        self.link.store(0, Ordering::Relaxed);
    }
}

/// A TLB invalidation the engine asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TlbFlush {
    /// Invalidate every cached translation (and paging-structure cache entry) for
    /// `[start, start + size)` of this table's VM.
    Range {
        /// First guest-physical address.
        start: Gpa,
        /// Size in bytes.
        size: u64,
        /// The level of every cached translation that may be affected, when they are all leaves of
        /// one level (arm64 TTL hint, Power AP); `None` when mixed or when table entries changed.
        level: Option<Level>,
        /// A table entry was removed or replaced: paging-structure (walk) caches must be
        /// invalidated too (Power RIC=1/2; x86 INVEPT and arm64 TLBI IPAS2E1IS without a TTL hint
        /// do it anyway).
        tables: bool,
    },
    /// Invalidate everything cached for this table's VM.
    All,
}

/// The host services the engine uses.
///
/// # Safety
/// Implementors guarantee that:
/// - `alloc_table(size)` returns either `None` or the non-zero physical address of `size` bytes
///   aligned to `size`, not in use by anything else, until the same address is passed to
///   `free_table` (address 0 is never a table: on LoongArch a directory entry of 0 is not a
///   pointer);
/// - `phys_to_virt(pa)` for such an address returns a pointer valid for reads and writes of the
///   whole table, not accessed by the host through non-atomic references while allocated;
/// - `meta(pa)` for such an address returns a pointer to a [`TableMeta`] that belongs to that table
///   alone and stays valid until the table is freed; it starts as [`TableMeta::new`];
/// - `flush_tlb` returns only once the invalidation is complete for every agent that may use the
///   table (every vCPU of the VM, every IOMMU sharing it).
pub unsafe trait Host {
    /// Allocates a table of `size` bytes (a power of two from 256 B; up to 64 KiB, or up to 1 MiB
    /// for a concatenated arm64 root) aligned to `size`.
    /// Its contents are unspecified: the engine fills it.
    fn alloc_table(&self, size: usize) -> Option<Hpa>;

    /// Gives back a table.
    ///
    /// # Safety
    /// `pa` came from `alloc_table(size)` and is not reachable from any table any more, and every
    /// TLB flush covering it has completed.
    unsafe fn free_table(&self, pa: Hpa, size: usize);

    /// Gives back every table of a list at once: what the engine calls when an operation
    /// releases the tables it detached (a range unmap that took whole subtrees out, a teardown,
    /// a grace period's end through [`RetiredTables::free`]), instead of one
    /// [`Host::free_table`] per table.
    ///
    /// The default body frees the tables one by one with `free_table`. A host whose per-call cost
    /// is worth sharing (a lock, a borrow, a vector's capacity check) takes it once for the whole
    /// list: it walks the list with [`RetiredTables::drain`] and frees each table the drain
    /// yields, exactly once. It must not call [`RetiredTables::free`] on the list (that calls
    /// this method).
    ///
    /// # Safety
    /// Every table on the list meets `free_table`'s contract: it came from
    /// `alloc_table(size)` (with the size the list gives for it), it is not reachable from any
    /// table any more, every TLB flush covering it has completed, and (shared mode) its grace
    /// period has elapsed.
    unsafe fn free_tables(&self, tables: RetiredTables) {
        for (pa, size) in tables.drain(self) {
            // SAFETY: the caller upholds `free_table`'s contract for every table on the list.
            unsafe { self.free_table(pa, size) };
        }
    }

    /// The host-virtual address of the table at `pa`.
    fn phys_to_virt(&self, pa: Hpa) -> NonNull<u8>;

    /// The metadata record of the table at `pa`.
    fn meta(&self, pa: Hpa) -> NonNull<TableMeta>;

    /// Invalidates cached translations; see [`TlbFlush`].
    fn flush_tlb(&self, flush: TlbFlush);

    /// Cleans and invalidates the data cache to the point of coherency for the host range
    /// `[hpa, hpa + size)` (arm64 `DC CIVAC` by line), so that a guest running with its caches
    /// off sees what the host wrote. Called once per contiguous range, before any entry mapping
    /// it becomes valid, when the format asks for [`crate::format::Cmo::CLEAN_DCACHE`].
    /// Default: nothing (coherent hosts).
    fn clean_dcache(&self, hpa: Hpa, size: u64) {
        let _ = (hpa, size);
    }

    /// Invalidates the instruction cache for the host range `[hpa, hpa + size)` (arm64
    /// `IC IVAU` by line, or `IC IALLUIS`), before any entry mapping it becomes executable, when
    /// the format asks for [`crate::format::Cmo::INVAL_ICACHE`]. Default: nothing.
    fn invalidate_icache(&self, hpa: Hpa, size: u64) {
        let _ = (hpa, size);
    }
}

/// A host that can be shared by concurrent updaters: it has read-side sections and frees detached
/// tables only after a grace period. Shared-mode operations need it (see the module docs).
///
/// # Safety
/// Implementors guarantee that a list given to [`SharedHost::retire`] is freed (with
/// [`RetiredTables::free`]) only after every [`SharedHost::Guard`] that existed when `retire` was
/// called has been dropped. A walker holds a guard for as long as it may follow a pointer it read
/// from the tree, so no walker can reach a retired table once it is freed.
pub unsafe trait SharedHost: Host + Sync {
    /// A read-side section (`rcu_read_lock` .. `rcu_read_unlock`, an epoch pin). Shared-mode
    /// operations borrow one for as long as they run.
    type Guard<'a>
    where
        Self: 'a;

    /// Enters a read-side section.
    fn read_side(&self) -> Self::Guard<'_>;

    /// Takes tables detached from a tree, whose TLB flush has completed, and frees them after a
    /// grace period (see the trait's safety contract).
    fn retire(&self, tables: RetiredTables);
}

// SAFETY: forwarding every method to `H`, which upholds the contract.
unsafe impl<H: SharedHost + ?Sized> SharedHost for &H {
    type Guard<'a>
        = H::Guard<'a>
    where
        Self: 'a;
    #[inline]
    fn read_side(&self) -> Self::Guard<'_> {
        (**self).read_side()
    }
    #[inline]
    fn retire(&self, tables: RetiredTables) {
        (**self).retire(tables)
    }
}

// SAFETY: forwarding every method to `H`, which upholds the contract.
unsafe impl<H: Host + ?Sized> Host for &H {
    #[inline]
    fn alloc_table(&self, size: usize) -> Option<Hpa> {
        (**self).alloc_table(size)
    }
    #[inline]
    unsafe fn free_table(&self, pa: Hpa, size: usize) {
        // SAFETY: the caller upholds `free_table`'s contract for `H` as well.
        unsafe { (**self).free_table(pa, size) }
    }
    #[inline]
    unsafe fn free_tables(&self, tables: RetiredTables) {
        // SAFETY: the caller upholds `free_tables`'s contract for `H` as well.
        unsafe { (**self).free_tables(tables) }
    }
    #[inline]
    fn phys_to_virt(&self, pa: Hpa) -> NonNull<u8> {
        (**self).phys_to_virt(pa)
    }
    #[inline]
    fn meta(&self, pa: Hpa) -> NonNull<TableMeta> {
        (**self).meta(pa)
    }
    #[inline]
    fn flush_tlb(&self, flush: TlbFlush) {
        (**self).flush_tlb(flush)
    }
    #[inline]
    fn clean_dcache(&self, hpa: Hpa, size: u64) {
        (**self).clean_dcache(hpa, size)
    }
    #[inline]
    fn invalidate_icache(&self, hpa: Hpa, size: u64) {
        (**self).invalidate_icache(hpa, size)
    }
}
