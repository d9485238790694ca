//! A direct-map host for the timed explicit-API benchmarks: the table memory the peers get.
//!
//! The peers' frame pool (`benches/benches/peers/pool.rs`) hands out warm 4 KiB frames with
//! physical address = virtual address, a vector pop per frame, no bookkeeping. A hypervisor's own
//! host is shaped the same way (a direct map: `phys_to_virt` is an addition or nothing). The
//! testing kit's [`tdp_core::testing::HeapHost`] is built for tests instead: a bounds-checked
//! window behind a mutex, leak accounting, poisoning, recording. [`DirectHost`] gives the engine
//! what the peers have: one window allocated up front (touched once, so no iteration pays page
//! faults), physical address = virtual address, a warm last-in-first-out free list per table size,
//! a side array of [`TableMeta`] per smallest table, and no TLB to flush (the peers flush nothing
//! either). Every workload's correctness checks still run on the heap host (`workload::check_all`).
//!
//! Single-threaded (`RefCell`), like the peers' pool: only `Table` runs on it.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;

use tdp_core::{Host, Hpa, RetiredTables, TableMeta, TlbFlush};

/// Largest table (a concatenated arm64 root): the window's alignment.
const MAX_TABLE: usize = 1 << 20;

struct Pools {
    bump: usize,
    /// Free tables by log2 of their size.
    free: [Vec<usize>; 21],
    outstanding: usize,
}

/// See the module documentation.
pub struct DirectHost {
    base: usize,
    size: usize,
    granule_shift: u32,
    metas: Box<[TableMeta]>,
    /// `metas` shifted down by the window base's granule index: the record of the table at `pa`
    /// is `meta_bias + (pa >> granule_shift)` (a frame table lookup, as `vmemmap` is).
    meta_bias: *const TableMeta,
    pools: RefCell<Pools>,
}

impl DirectHost {
    /// A window of `size` bytes for tables of at least `granule` bytes.
    ///
    /// # Panics
    /// If the window cannot be allocated (a set-up error).
    pub fn new(size: usize, granule: usize) -> DirectHost {
        assert!(granule.is_power_of_two() && size % MAX_TABLE == 0);
        let layout = Layout::from_size_align(size, MAX_TABLE).expect("a valid window layout");
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null(), "no memory for the benchmark window");
        // Touch every page now, so that no timed iteration pays a page fault.
        // SAFETY: `base` is a fresh allocation of exactly `size` bytes.
        unsafe { core::ptr::write_bytes(base, 0, size) };
        let base = base.expose_provenance();
        let granule_shift = granule.trailing_zeros();
        let metas: Box<[TableMeta]> = (0..size / granule).map(|_| TableMeta::new()).collect();
        let meta_bias = metas.as_ptr().wrapping_sub(base >> granule_shift);
        DirectHost {
            base,
            size,
            granule_shift,
            metas,
            meta_bias,
            pools: RefCell::new(Pools {
                bump: base,
                free: Default::default(),
                outstanding: 0,
            }),
        }
    }

    /// Tables handed out and not given back.
    pub fn outstanding_tables(&self) -> usize {
        self.pools.borrow().outstanding
    }
}

impl Drop for DirectHost {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.size, MAX_TABLE).expect("the window's layout");
        // SAFETY: `base` was allocated in `new` with this layout and is freed once, here.
        unsafe { dealloc(std::ptr::with_exposed_provenance_mut(self.base), layout) };
    }
}

// SAFETY: tables are carved from the window, aligned to their size (the bump pointer is aligned
// up; the window is aligned to the largest table), never handed out twice until freed (free lists
// per size), never at address 0 (a heap address); `phys_to_virt` is the identity on addresses
// exposed from the window's allocation, valid for the whole table; each table's `TableMeta` is
// the side-array slot of its first granule, reset to `TableMeta::new()` state on allocation; no
// agent caches translations of these tables, so `flush_tlb` has nothing to wait for.
unsafe impl Host for DirectHost {
    #[inline]
    fn alloc_table(&self, size: usize) -> Option<Hpa> {
        let mut p = self.pools.borrow_mut();
        let order = size.trailing_zeros() as usize;
        let pa = match p.free.get_mut(order).and_then(Vec::pop) {
            Some(pa) => pa,
            None => {
                let pa = p.bump.next_multiple_of(size);
                if pa + size > self.base + self.size {
                    return None;
                }
                p.bump = pa + size;
                pa
            }
        };
        p.outstanding += 1;
        self.metas[(pa - self.base) >> self.granule_shift].reset();
        Some(Hpa::new(pa as u64))
    }

    #[inline]
    unsafe fn free_table(&self, pa: Hpa, size: usize) {
        let mut p = self.pools.borrow_mut();
        p.outstanding -= 1;
        p.free[size.trailing_zeros() as usize].push(pa.raw() as usize);
    }

    #[inline]
    unsafe fn free_tables(&self, tables: RetiredTables) {
        // One borrow and one reservation for the whole list (the tables of a list are mostly of
        // one size: reserve for the first one's).
        let mut p = self.pools.borrow_mut();
        let p = &mut *p;
        p.outstanding -= tables.len();
        let mut drain = tables.drain(self);
        let Some((pa, size)) = drain.next() else {
            return;
        };
        // The first table's size class is taken out of the pools for the loop (the others are
        // pushed where they belong).
        let first = size;
        let order = first.trailing_zeros() as usize;
        let mut same = core::mem::take(&mut p.free[order]);
        same.reserve(drain.len() + 1);
        same.push(pa.raw() as usize);
        drain.for_each(|(pa, size)| {
            if size == first {
                same.push(pa.raw() as usize);
            } else {
                p.free[size.trailing_zeros() as usize].push(pa.raw() as usize);
            }
        });
        p.free[order] = same;
    }

    #[inline(always)]
    fn phys_to_virt(&self, pa: Hpa) -> NonNull<u8> {
        debug_assert!((pa.raw() as usize).wrapping_sub(self.base) < self.size);
        // SAFETY: the engine passes only addresses of tables this host handed out (Host
        // contract), which are non-zero addresses inside the window, exposed in `new`.
        unsafe { NonNull::new_unchecked(std::ptr::with_exposed_provenance_mut(pa.raw() as usize)) }
    }

    #[inline(always)]
    fn meta(&self, pa: Hpa) -> NonNull<TableMeta> {
        let pa = pa.raw() as usize;
        debug_assert!(pa.wrapping_sub(self.base) < self.size);
        // SAFETY: the engine passes only addresses of tables this host handed out (Host
        // contract), which lie inside the window, so `pa >> granule_shift` is at least the base's
        // granule index and the sum lands on the table's own slot of `metas` (derived from the
        // slice's pointer, with its provenance), which is never null.
        unsafe {
            NonNull::new_unchecked(
                self.meta_bias
                    .wrapping_add(pa >> self.granule_shift)
                    .cast_mut(),
            )
        }
    }

    #[inline(always)]
    fn flush_tlb(&self, flush: TlbFlush) {
        std::hint::black_box(flush);
    }
}
