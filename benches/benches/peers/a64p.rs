//! aarch64-paging 0.12.3: `Mapping<_, Stage2>` at root level 0 (4 levels, 4 KiB granule) over a
//! heap translation, attributes VALID | normal write-back | S2AP RW | inner shareable | AF, never
//! activated (so it issues no TLB maintenance). Map is one `map_range` (NO_BLOCK_MAPPINGS for 4 KiB
//! leaves); unmap is `map_range` without VALID (it frees fully covered subtables); write-protect
//! is `modify_range` clearing S2AP's write bit; there is no point lookup, so a query is a
//! `walk_range` over one page, and the walk is one `walk_range` over the range (it calls back for
//! every entry that is not a table). It has no explicit split: a `map_range` with NO_BLOCK_MAPPINGS over
//! a block with different attributes rebuilds it as pages, so split maps the block again with a
//! software bit (SWFLAG_0, ignored by hardware) added.

use core::ptr::NonNull;

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{Constraints, MemoryRegion, PageTable, Stage2, Translation};
use aarch64_paging::Mapping;
use tdp_benches::Workload;

use super::{pool, Found, Op, Peer};

/// Table frames from the warm pool (zeroed on allocation, as the trait asks).
pub struct Frames;

impl Translation<Stage2Attributes> for Frames {
    fn allocate_table(&mut self) -> (NonNull<PageTable<Stage2Attributes>>, PhysicalAddress) {
        let pa = pool::alloc().expect("frame");
        // SAFETY: the pool hands out exclusive, writable 4 KiB frames.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, pool::FRAME) };
        (
            NonNull::new(pa as *mut PageTable<Stage2Attributes>).expect("non-null frame"),
            PhysicalAddress(pa),
        )
    }

    unsafe fn deallocate_table(&mut self, table: NonNull<PageTable<Stage2Attributes>>) {
        pool::free(table.as_ptr() as usize);
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<Stage2Attributes>> {
        NonNull::new(pa.0 as *mut PageTable<Stage2Attributes>).expect("non-null table")
    }
}

/// The peer.
pub struct A64p(Mapping<Frames, Stage2>);

const RW: Stage2Attributes = Stage2Attributes::VALID
    .union(Stage2Attributes::MEMATTR_NORMAL_INNER_WB)
    .union(Stage2Attributes::MEMATTR_NORMAL_OUTER_WB)
    .union(Stage2Attributes::S2AP_ACCESS_RW)
    .union(Stage2Attributes::SH_INNER)
    .union(Stage2Attributes::ACCESS_FLAG);

fn constraints(leaf: u64) -> Constraints {
    if leaf == 0x1000 {
        Constraints::NO_BLOCK_MAPPINGS | Constraints::NO_CONTIGUOUS_HINT
    } else {
        Constraints::NO_CONTIGUOUS_HINT
    }
}

fn region(start: u64, size: u64) -> MemoryRegion {
    MemoryRegion::new(start as usize, (start + size) as usize)
}

impl Peer for A64p {
    const NAME: &'static str = "a64p";
    // `RootTable` holds the root only; subtables are found through their descriptors.
    const METADATA_BYTES_PER_TABLE: u64 = 0;

    fn supports(op: Op, w: &Workload) -> bool {
        !matches!(op, Op::Split) || w.leaf == 0x1000
    }

    fn new() -> Self {
        A64p(Mapping::new(Frames, 0, Stage2))
    }

    fn map_range(&mut self, w: &Workload) {
        self.0
            .map_range(
                &region(w.start, w.size),
                PhysicalAddress(w.hpa as usize),
                RW,
                constraints(w.leaf),
            )
            .expect("map_range");
    }

    fn map_pages(&mut self, w: &Workload) {
        let c = constraints(w.leaf);
        for i in 0..w.leaves {
            self.0
                .map_range(
                    &region(w.start + i * w.leaf, w.leaf),
                    PhysicalAddress((w.hpa + i * w.leaf) as usize),
                    RW,
                    c,
                )
                .expect("map_range");
        }
    }

    fn map_top(&mut self, w: &Workload) {
        self.0
            .map_range(
                &region(w.start, w.size),
                PhysicalAddress(w.hpa as usize),
                RW,
                Constraints::NO_CONTIGUOUS_HINT,
            )
            .expect("map_range");
    }

    fn query_all(&self, w: &Workload) -> u64 {
        let mut sum = 0;
        for i in 0..w.leaves {
            sum ^= self.translate(w.start + i * w.leaf).expect("mapped").hpa;
        }
        sum
    }

    fn walk(&self, w: &Workload) -> (u64, u64) {
        let (mut leaves, mut sum) = (0u64, 0u64);
        self.0
            .walk_range(&region(w.start, w.size), &mut |_, d, _level| {
                if d.is_valid() {
                    leaves += 1;
                    sum ^= d.output_address().0 as u64;
                }
                Ok(())
            })
            .expect("walk_range");
        (leaves, sum)
    }

    fn translate(&self, gpa: u64) -> Option<Found> {
        let mut found = None;
        self.0
            .walk_range(&region(gpa & !0xfff, 0x1000), &mut |_, d, level| {
                if d.is_valid() {
                    let size = 0x1000u64 << (9 * (3 - level));
                    let flags = d.flags();
                    found = Some(Found {
                        hpa: d.output_address().0 as u64 + (gpa & (size - 1)),
                        size,
                        writable: flags.contains(Stage2Attributes::S2AP_ACCESS_WO),
                    });
                }
                Ok(())
            })
            .ok()?;
        found
    }

    fn protect(&mut self, w: &Workload) {
        self.0
            .modify_range(&region(w.start, w.size), &|_, d| {
                if d.flags().contains(Stage2Attributes::VALID) && !d.is_table() {
                    d.modify_flags(Stage2Attributes::empty(), Stage2Attributes::S2AP_ACCESS_WO)
                } else {
                    Ok(())
                }
            })
            .expect("modify_range");
    }

    fn unmap_range(&mut self, w: &Workload) {
        self.0
            .map_range(
                &region(w.start, w.size),
                PhysicalAddress(0),
                Stage2Attributes::empty(),
                constraints(w.leaf),
            )
            .expect("map_range (unmap)");
    }

    fn unmap_pages(&mut self, w: &Workload) {
        let c = constraints(w.leaf);
        for i in 0..w.leaves {
            self.0
                .map_range(
                    &region(w.start + i * w.leaf, w.leaf),
                    PhysicalAddress(0),
                    Stage2Attributes::empty(),
                    c,
                )
                .expect("map_range (unmap)");
        }
    }

    fn split(&mut self, w: &Workload) {
        self.0
            .map_range(
                &region(w.start, w.size),
                PhysicalAddress(w.hpa as usize),
                RW | Stage2Attributes::SWFLAG_0,
                constraints(w.leaf),
            )
            .expect("map_range (split)");
    }
}
