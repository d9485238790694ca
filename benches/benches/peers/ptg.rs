//! page-table-generic 0.9.1 with a small EPT-like user entry (present, write, no-execute, huge,
//! address bits 12..51) and a `TableMeta` of 4 levels × 9 bits with 2 MiB and 1 GiB blocks and a
//! no-op flush. Map is one `map` (`allow_huge` off for 4 KiB leaves), per-page `map_page` /
//! `unmap_page`, `query` per page, `walk` of the range (an iterator; the final mappings counted),
//! `protect_region`, `unmap` of the range (it frees empty tables),
//! and the two-phase huge split (`split_huge_page`: the 1 GiB block into 2 MiB blocks, then each
//! of those into 4 KiB pages).

use page_table_generic::{
    FrameAllocator, MapConfig, PageTable, PageTableEntry, PhysAddr, TableMeta, VirtAddr,
};
use tdp_benches::Workload;

use super::{pool, Found, Op, Peer};

const P: u64 = 1 << 0;
const W: u64 = 1 << 1;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// An EPT-like entry.
#[derive(Copy, Clone, Debug)]
#[repr(transparent)]
pub struct Pte(u64);

/// Leaf configuration: write and execute.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Cfg {
    /// Writes allowed.
    pub write: bool,
    /// Execution allowed.
    pub exec: bool,
}

impl PageTableEntry for Pte {
    type PteConfig = Cfg;

    fn new_page(paddr: PhysAddr, config: Cfg, is_huge: bool) -> Self {
        let mut v = P | (paddr.as_usize() as u64 & ADDR);
        if config.write {
            v |= W;
        }
        if !config.exec {
            v |= NX;
        }
        if is_huge {
            v |= PS;
        }
        Pte(v)
    }

    fn new_table(paddr: PhysAddr) -> Self {
        Pte(P | W | (paddr.as_usize() as u64 & ADDR))
    }

    fn paddr(&self, _is_dir: bool) -> PhysAddr {
        PhysAddr::from_usize((self.0 & ADDR) as usize)
    }

    fn config(&self, _is_dir: bool) -> Cfg {
        Cfg {
            write: self.0 & W != 0,
            exec: self.0 & NX == 0,
        }
    }

    fn present(&self) -> bool {
        self.0 & P != 0
    }

    fn huge(&self, is_dir: bool) -> bool {
        is_dir && self.0 & PS != 0
    }

    fn unused(&self) -> bool {
        self.0 == 0
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

/// 4 levels of 9 bits, 4 KiB pages, blocks up to 1 GiB, no TLB to flush (never activated).
#[derive(Copy, Clone, Debug)]
pub struct Meta;

impl TableMeta for Meta {
    type P = Pte;
    const PAGE_SIZE: usize = 0x1000;
    const LEVEL_BITS: &[usize] = &[9, 9, 9, 9];
    const MAX_BLOCK_LEVEL: usize = 3;

    fn flush(_vaddr: Option<VirtAddr>) {}
}

/// Table frames from the warm pool.
#[derive(Copy, Clone, Debug)]
pub struct Frames;

impl FrameAllocator for Frames {
    fn alloc_frame(&self) -> Option<PhysAddr> {
        pool::alloc().map(PhysAddr::from_usize)
    }

    fn dealloc_frame(&self, frame: PhysAddr) {
        pool::free(frame.as_usize());
    }

    fn phys_to_virt(&self, paddr: PhysAddr) -> *mut u8 {
        paddr.as_usize() as *mut u8
    }
}

/// The peer.
pub struct Ptg(PageTable<Meta, Frames>);

const RWX: Cfg = Cfg {
    write: true,
    exec: true,
};
const RX: Cfg = Cfg {
    write: false,
    exec: true,
};

fn va(a: u64) -> VirtAddr {
    VirtAddr::from_usize(a as usize)
}

fn pa(a: u64) -> PhysAddr {
    PhysAddr::from_usize(a as usize)
}

impl Peer for Ptg {
    const NAME: &'static str = "ptg";
    // `PageTable` holds the root frame only; tables are found through their entries (and an
    // unmapped leaf's table is rescanned to learn whether it became empty).
    const METADATA_BYTES_PER_TABLE: u64 = 0;

    fn supports(op: Op, w: &Workload) -> bool {
        !matches!(op, Op::Split) || w.leaf == 0x1000
    }

    fn new() -> Self {
        Ptg(PageTable::new(Frames).expect("root frame"))
    }

    fn map_range(&mut self, w: &Workload) {
        self.0
            .map(&MapConfig {
                vaddr: va(w.start),
                paddr: pa(w.hpa),
                size: w.size as usize,
                pte: RWX,
                allow_huge: w.leaf > 0x1000,
                flush: false,
            })
            .expect("map");
    }

    fn map_pages(&mut self, w: &Workload) {
        for i in 0..w.leaves {
            self.0
                .map_page(
                    va(w.start + i * w.leaf),
                    pa(w.hpa + i * w.leaf),
                    w.leaf as usize,
                    RWX,
                )
                .expect("map_page");
        }
    }

    fn map_top(&mut self, w: &Workload) {
        self.0
            .map(&MapConfig {
                vaddr: va(w.start),
                paddr: pa(w.hpa),
                size: w.size as usize,
                pte: RWX,
                allow_huge: true,
                flush: false,
            })
            .expect("map");
    }

    fn walk(&self, w: &Workload) -> (u64, u64) {
        let (mut leaves, mut sum) = (0u64, 0u64);
        for p in self.0.walk(va(w.start), va(w.start + w.size)) {
            if p.is_final_mapping {
                leaves += 1;
                sum ^= p.pte.0 & ADDR;
            }
        }
        (leaves, sum)
    }

    fn query_all(&self, w: &Workload) -> u64 {
        let mut sum = 0;
        for i in 0..w.leaves {
            let (p, _, _) = self.0.query(va(w.start + i * w.leaf)).expect("mapped");
            sum ^= p.as_usize() as u64;
        }
        sum
    }

    fn translate(&self, gpa: u64) -> Option<Found> {
        let (p, cfg, size) = self.0.query(va(gpa)).ok()?;
        Some(Found {
            hpa: p.as_usize() as u64,
            size: size as u64,
            writable: cfg.write,
        })
    }

    fn protect(&mut self, w: &Workload) {
        self.0
            .protect_region(va(w.start), w.size as usize, RX)
            .expect("protect_region");
    }

    fn unmap_range(&mut self, w: &Workload) {
        self.0.unmap(va(w.start), w.size as usize).expect("unmap");
    }

    fn unmap_pages(&mut self, w: &Workload) {
        for i in 0..w.leaves {
            self.0
                .unmap_page(va(w.start + i * w.leaf))
                .expect("unmap_page");
        }
    }

    fn split(&mut self, w: &Workload) {
        // One level at a time, each huge leaf by itself: 1 GiB into 2 MiB, then 2 MiB into 4 KiB.
        let mut size = super::geometry().level_size(w.top);
        while size > w.leaf {
            for off in (0..w.size).step_by(size as usize) {
                self.0
                    .split_huge_page(va(w.start + off))
                    .expect("split_huge_page");
            }
            size >>= 9;
        }
    }
}
