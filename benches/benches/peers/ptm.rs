//! page_table_multiarch 0.6.2: `X64PageTable` (the only table with stock entries on an x86 host),
//! flags R|W|X|U, the cursor's region operations and per-page `map`/`unmap`, `query` per page,
//! `walk` (over the whole table: it takes no range) for the walk. It has no split; its region operations walk from the root once per page; tables are only freed
//! when the table is dropped.

use memory_addr::{PhysAddr, VirtAddr};
use page_table_multiarch::x86_64::X64PageTable;
use page_table_multiarch::{GenericPTE, MappingFlags, PageSize, PagingHandler};
use tdp_benches::Workload;

use super::{pool, Found, Op, Peer};

/// Table frames from the warm pool.
pub struct Frames;

impl PagingHandler for Frames {
    fn alloc_frames(num: usize, align: usize) -> Option<PhysAddr> {
        (num == 1 && align <= pool::FRAME)
            .then(pool::alloc)
            .flatten()
            .map(PhysAddr::from_usize)
    }

    fn dealloc_frames(paddr: PhysAddr, num: usize) {
        debug_assert_eq!(num, 1);
        pool::free(paddr.as_usize());
    }

    fn phys_to_virt(paddr: PhysAddr) -> VirtAddr {
        VirtAddr::from_usize(paddr.as_usize())
    }
}

/// The peer.
pub struct Ptm(X64PageTable<Frames>);

const RWX: MappingFlags = MappingFlags::READ
    .union(MappingFlags::WRITE)
    .union(MappingFlags::EXECUTE)
    .union(MappingFlags::USER);
const RX: MappingFlags = MappingFlags::READ
    .union(MappingFlags::EXECUTE)
    .union(MappingFlags::USER);

fn page_size(leaf: u64) -> PageSize {
    match leaf {
        0x1000 => PageSize::Size4K,
        0x20_0000 => PageSize::Size2M,
        0x4000_0000 => PageSize::Size1G,
        _ => unreachable!("x86 leaf size"),
    }
}

/// A walk callback counting the leaves it meets (level 3, or a huge entry above) and folding
/// their output addresses into `found`.
fn count_leaves<PTE: GenericPTE>(
    found: &core::cell::Cell<(u64, u64)>,
) -> impl Fn(usize, usize, VirtAddr, &PTE) + '_ {
    move |level, _i, _va, e| {
        if level == 3 || e.is_huge() {
            let (n, sum) = found.get();
            found.set((n + 1, sum ^ e.paddr().as_usize() as u64));
        }
    }
}

fn va(a: u64) -> VirtAddr {
    VirtAddr::from_usize(a as usize)
}

impl Peer for Ptm {
    const NAME: &'static str = "ptm";
    // `PageTable64` holds only the root's address: tables are found through their entries.
    const METADATA_BYTES_PER_TABLE: u64 = 0;

    fn supports(op: Op, _w: &Workload) -> bool {
        !matches!(op, Op::Split)
    }

    fn new() -> Self {
        Ptm(X64PageTable::try_new().expect("root frame"))
    }

    fn map_range(&mut self, w: &Workload) {
        let (start, hpa) = (w.start as usize, w.hpa as usize);
        self.0
            .cursor()
            .map_region(
                va(w.start),
                |v| PhysAddr::from_usize(v.as_usize() - start + hpa),
                w.size as usize,
                RWX,
                w.leaf > 0x1000,
            )
            .expect("map_region");
    }

    fn map_pages(&mut self, w: &Workload) {
        let size = page_size(w.leaf);
        let mut c = self.0.cursor();
        for i in 0..w.leaves {
            c.map(
                va(w.start + i * w.leaf),
                PhysAddr::from_usize((w.hpa + i * w.leaf) as usize),
                size,
                RWX,
            )
            .expect("map");
        }
    }

    fn map_top(&mut self, w: &Workload) {
        let (start, hpa) = (w.start as usize, w.hpa as usize);
        self.0
            .cursor()
            .map_region(
                va(w.start),
                |v| PhysAddr::from_usize(v.as_usize() - start + hpa),
                w.size as usize,
                RWX,
                true,
            )
            .expect("map_region");
    }

    fn walk(&self, _w: &Workload) -> (u64, u64) {
        // `walk` has no range: it visits the whole table, which holds only the range.
        let found = core::cell::Cell::new((0u64, 0u64));
        self.0.walk(usize::MAX, Some(&count_leaves(&found)), None);
        found.get()
    }

    fn query_all(&self, w: &Workload) -> u64 {
        let mut sum = 0;
        for i in 0..w.leaves {
            let (pa, _, _) = self.0.query(va(w.start + i * w.leaf)).expect("mapped");
            sum ^= pa.as_usize() as u64;
        }
        sum
    }

    fn translate(&self, gpa: u64) -> Option<Found> {
        let (pa, flags, size) = self.0.query(va(gpa)).ok()?;
        Some(Found {
            hpa: pa.as_usize() as u64,
            size: size as usize as u64,
            writable: flags.contains(MappingFlags::WRITE),
        })
    }

    fn protect(&mut self, w: &Workload) {
        self.0
            .cursor()
            .protect_region(va(w.start), w.size as usize, RX)
            .expect("protect_region");
    }

    fn unmap_range(&mut self, w: &Workload) {
        self.0
            .cursor()
            .unmap_region(va(w.start), w.size as usize)
            .expect("unmap_region");
    }

    fn unmap_pages(&mut self, w: &Workload) {
        let mut c = self.0.cursor();
        for i in 0..w.leaves {
            c.unmap(va(w.start + i * w.leaf)).expect("unmap");
        }
    }

    fn split(&mut self, _w: &Workload) {
        unreachable!("page_table_multiarch cannot split")
    }
}
