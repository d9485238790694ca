//! x86_64 0.15.5 (default features off): `OffsetPageTable` with physical offset 0 (the pool's
//! frames are identity mapped). It has per-page operations only: `map_to(..).ignore()`,
//! `translate_addr`, `update_flags`, `unmap`, then `clean_up` to free the tables left empty.
//! It has no range operation, no split, and no teardown of a populated table (the owner frees
//! the tables itself: [`X64`]'s `Drop` does that, outside every measured time).

use x86_64::structures::paging::mapper::{CleanUp, MappedFrame, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, Mapper, OffsetPageTable, Page, PageSize, PageTable,
    PageTableFlags as Flags, PhysFrame, Size1GiB, Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use tdp_benches::Workload;

use super::{pool, Found, Op, Peer};

/// Table frames from the warm pool.
pub struct Frames;

// SAFETY: the pool hands out distinct, unused, 4 KiB-aligned frames.
unsafe impl FrameAllocator<Size4KiB> for Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        pool::alloc().map(|pa| PhysFrame::containing_address(PhysAddr::new(pa as u64)))
    }
}

impl FrameDeallocator<Size4KiB> for Frames {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        pool::free(frame.start_address().as_u64() as usize);
    }
}

/// The peer: the mapper over a level-4 table that it owns.
pub struct X64 {
    mapper: OffsetPageTable<'static>,
    l4: usize,
}

const RW: Flags = Flags::PRESENT.union(Flags::WRITABLE);
const RO: Flags = Flags::PRESENT;

fn map_one<S: PageSize + core::fmt::Debug>(m: &mut OffsetPageTable<'static>, gpa: u64, hpa: u64)
where
    OffsetPageTable<'static>: Mapper<S>,
{
    let page = Page::<S>::from_start_address(VirtAddr::new(gpa)).expect("aligned page");
    let frame = PhysFrame::<S>::from_start_address(PhysAddr::new(hpa)).expect("aligned frame");
    // SAFETY: the frame is not memory this process uses (the table is never activated).
    unsafe { m.map_to(page, frame, RW, &mut Frames) }
        .expect("map_to")
        .ignore();
}

fn protect_one<S: PageSize>(m: &mut OffsetPageTable<'static>, gpa: u64)
where
    OffsetPageTable<'static>: Mapper<S>,
{
    let page = Page::<S>::from_start_address(VirtAddr::new(gpa)).expect("aligned page");
    // SAFETY: as above.
    unsafe { m.update_flags(page, RO) }
        .expect("update_flags")
        .ignore();
}

fn unmap_one<S: PageSize>(m: &mut OffsetPageTable<'static>, gpa: u64)
where
    OffsetPageTable<'static>: Mapper<S>,
{
    let page = Page::<S>::from_start_address(VirtAddr::new(gpa)).expect("aligned page");
    m.unmap(page).expect("unmap").1.ignore();
}

/// Frees the tables below `table` (a table of `level`, 4 = the root).
fn free_tables(table: &PageTable, level: u8) {
    if level == 1 {
        return;
    }
    for e in table.iter() {
        if !e.is_unused() && !e.flags().contains(Flags::HUGE_PAGE) {
            let child = e.addr().as_u64() as usize;
            // SAFETY: a table entry of this tree points at a pool frame holding a table.
            free_tables(unsafe { &*(child as *const PageTable) }, level - 1);
            pool::free(child);
        }
    }
}

impl Drop for X64 {
    fn drop(&mut self) {
        free_tables(self.mapper.level_4_table(), 4);
        pool::free(self.l4);
    }
}

impl X64 {
    fn each(&mut self, w: &Workload, f: impl Fn(&mut OffsetPageTable<'static>, u64, u64)) {
        for i in 0..w.leaves {
            f(&mut self.mapper, w.start + i * w.leaf, w.hpa + i * w.leaf);
        }
    }
}

impl Peer for X64 {
    const NAME: &'static str = "x64";
    // The mapper holds the level-4 table only.
    const METADATA_BYTES_PER_TABLE: u64 = 0;

    fn supports(op: Op, _w: &Workload) -> bool {
        matches!(op, Op::MapPages | Op::Query | Op::Protect | Op::UnmapPages)
    }

    fn new() -> Self {
        let l4 = pool::alloc().expect("frame");
        // SAFETY: the frame is exclusively this table's, 4 KiB aligned, and zeroed here before the
        // reference is made; it lives until `Drop` frees it, after the mapper's last use.
        let table: &'static mut PageTable = unsafe {
            core::ptr::write_bytes(l4 as *mut u8, 0, pool::FRAME);
            &mut *(l4 as *mut PageTable)
        };
        // SAFETY: physical addresses are virtual addresses (offset 0) for pool frames.
        let mapper = unsafe { OffsetPageTable::new(table, VirtAddr::new(0)) };
        X64 { mapper, l4 }
    }

    fn map_range(&mut self, _w: &Workload) {
        unreachable!("x86_64 has no range map")
    }

    fn map_pages(&mut self, w: &Workload) {
        match w.leaf {
            0x1000 => self.each(w, map_one::<Size4KiB>),
            0x20_0000 => self.each(w, map_one::<Size2MiB>),
            _ => self.each(w, map_one::<Size1GiB>),
        }
    }

    fn map_top(&mut self, _w: &Workload) {
        unreachable!("x86_64 has no split")
    }

    fn query_all(&self, w: &Workload) -> u64 {
        let mut sum = 0;
        for i in 0..w.leaves {
            sum ^= self
                .mapper
                .translate_addr(VirtAddr::new(w.start + i * w.leaf))
                .expect("mapped")
                .as_u64();
        }
        sum
    }

    fn translate(&self, gpa: u64) -> Option<Found> {
        match self.mapper.translate(VirtAddr::new(gpa)) {
            TranslateResult::Mapped {
                frame,
                offset,
                flags,
            } => Some(Found {
                hpa: frame.start_address().as_u64() + offset,
                size: match frame {
                    MappedFrame::Size4KiB(_) => Size4KiB::SIZE,
                    MappedFrame::Size2MiB(_) => Size2MiB::SIZE,
                    MappedFrame::Size1GiB(_) => Size1GiB::SIZE,
                },
                writable: flags.contains(Flags::WRITABLE),
            }),
            _ => None,
        }
    }

    fn protect(&mut self, w: &Workload) {
        match w.leaf {
            0x1000 => self.each(w, |m, g, _| protect_one::<Size4KiB>(m, g)),
            0x20_0000 => self.each(w, |m, g, _| protect_one::<Size2MiB>(m, g)),
            _ => self.each(w, |m, g, _| protect_one::<Size1GiB>(m, g)),
        }
    }

    fn unmap_range(&mut self, _w: &Workload) {
        unreachable!("x86_64 has no range unmap")
    }

    fn unmap_pages(&mut self, w: &Workload) {
        match w.leaf {
            0x1000 => self.each(w, |m, g, _| unmap_one::<Size4KiB>(m, g)),
            0x20_0000 => self.each(w, |m, g, _| unmap_one::<Size2MiB>(m, g)),
            _ => self.each(w, |m, g, _| unmap_one::<Size1GiB>(m, g)),
        }
        // SAFETY: the tables it frees are empty and the table is never activated.
        unsafe { self.mapper.clean_up(&mut Frames) };
    }

    fn split(&mut self, _w: &Workload) {
        unreachable!("x86_64 has no split")
    }
}
