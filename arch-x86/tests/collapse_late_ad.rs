//! Collapse keeps the accessed/dirty bits hardware sets in a child after the scan, while the TLB
//! may still hold the child table (exclusive mode, EPT with A/D): the children are re-read after
//! the flush and what appeared is folded into the huge leaf, bottom-up.
//!
//! "Hardware" here is a host wrapper whose `flush_tlb` first sets A and D in chosen child entries
//! through the raw memory (as a vCPU writing through a translation it still caches would, before
//! the invalidation completes), then flushes. The huge leaf is checked with the independent EPT
//! walker (`tdp_walkers::ept::peek`, which sets nothing).
//!
//! Mutations tried (ops/collapse.rs): `Folds::settle` without its call to `fold` fails all three
//! tests ("the dirty bit hardware set in the child was lost"); `Folds::settle` folding before the
//! flush instead of after it fails all three the same way; `Folds::push` prepending (records folded
//! last collapse first, top-down) fails `..._reaches_the_1g_leaf_through_the_2m_one` only.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tdp_arch_x86::{Ept, EptCaps, EptOptions};
use tdp_core::testing::HeapHost;
use tdp_core::{
    Attrs, Ctx, Gpa, GpaRange, Host, Hpa, Level, MapOptions, PendingFlush, Perms, Progress, Table,
    TableMeta, TlbFlush, Tree,
};
use tdp_walkers::{ept, Access, PhysMem};

const BASE: u64 = 0x1_0000_0000;
const CAP_MSR: u64 = 0x0023_41c1;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// EPT bits: read, write, accessed, dirty; the address field for a 46-bit physical width.
const R: u64 = 1 << 0;
const W: u64 = 1 << 1;
const A: u64 = 1 << 8;
const D: u64 = 1 << 9;
const ADDR: u64 = 0x0000_3fff_ffff_f000;

fn ept_ad() -> Ept {
    Ept::new(
        EptCaps::from_vmx_ept_vpid_cap(CAP_MSR),
        EptOptions {
            levels: 4,
            accessed_dirty: true,
            maxphyaddr: 46,
            mbec: false,
        },
    )
    .unwrap()
}

fn caps() -> ept::EptCaps {
    ept::EptCaps {
        maxphyaddr: 46,
        execute_only: true,
        page_1g: true,
        mbec: false,
    }
}

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

/// 4 KiB leaves, neither accessed nor dirty.
fn cold_4k() -> MapOptions {
    MapOptions {
        max_level: Some(Level::LEAF),
        young_dirty: false,
    }
}

/// The heap host, plus "hardware" that sets A and D in the armed entries at the next flush.
struct LateHw<'a> {
    mem: &'a HeapHost,
    armed: Mutex<Vec<u64>>,
    /// Entries hardware wrote to at a flush.
    written: AtomicUsize,
}

impl<'a> LateHw<'a> {
    fn new(mem: &'a HeapHost) -> Self {
        LateHw {
            mem,
            armed: Mutex::new(Vec::new()),
            written: AtomicUsize::new(0),
        }
    }

    fn arm(&self, entry_pa: u64) {
        self.armed.lock().unwrap().push(entry_pa);
    }
}

// SAFETY: every call is delegated to `HeapHost`, which upholds the contract; `flush_tlb` only adds
// A/D bits to present, writable leaves with a compare-exchange, as the processor does, before the
// invalidation it delegates.
unsafe impl Host for LateHw<'_> {
    fn alloc_table(&self, size: usize) -> Option<Hpa> {
        self.mem.alloc_table(size)
    }

    unsafe fn free_table(&self, pa: Hpa, size: usize) {
        // SAFETY: the engine's call, passed on unchanged (same contract).
        unsafe { self.mem.free_table(pa, size) }
    }

    fn phys_to_virt(&self, pa: Hpa) -> NonNull<u8> {
        self.mem.phys_to_virt(pa)
    }

    fn meta(&self, pa: Hpa) -> NonNull<TableMeta> {
        self.mem.meta(pa)
    }

    fn flush_tlb(&self, flush: TlbFlush) {
        for pa in self.armed.lock().unwrap().drain(..) {
            let v = self.mem.load_phys_u64(pa).unwrap();
            // A write through the cached translation: only a present, writable leaf.
            if v & (R | W) == (R | W) {
                assert_eq!(
                    self.mem.compare_exchange_phys_u64(pa, v, v | A | D),
                    Some(Ok(v))
                );
                self.written.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.mem.flush_tlb(flush)
    }
}

struct Mem<'a>(&'a HeapHost);

impl PhysMem for Mem<'_> {
    fn read(&self, pa: u64, b: &mut [u8]) -> bool {
        self.0.read_phys(pa, b)
    }
    fn write(&mut self, pa: u64, b: &[u8]) -> bool {
        self.0.write_phys(pa, b)
    }
}

/// The physical address of the level-0 entry that maps `gpa`, read from the raw tables.
fn leaf_entry_pa(mem: &HeapHost, root: Hpa, gpa: u64) -> u64 {
    let mut table = root.raw();
    for level in (1..4).rev() {
        let idx = (gpa >> (12 + 9 * level)) & 511;
        let e = mem.load_phys_u64(table + idx * 8).unwrap();
        assert!(e & R != 0, "no table at level {level} for {gpa:#x}");
        table = e & ADDR;
    }
    table + ((gpa >> 12) & 511) * 8
}

/// The walker's view of `gpa`: (leaf level, dirty, accessed, host address).
fn peek(mem: &HeapHost, fmt: &Ept, root: Hpa, gpa: u64) -> (u8, bool, bool, u64) {
    let t = ept::peek(
        &Mem(mem),
        fmt.eptp(root).unwrap(),
        &caps(),
        gpa,
        Access::Read,
    )
    .unwrap();
    (t.level, t.dirty, t.accessed, t.hpa)
}

#[test]
fn a_dirty_bit_set_in_a_child_before_the_flush_reaches_the_2m_leaf() {
    let mem = HeapHost::new(BASE, 4 * MIB, 4096);
    let hw = LateHw::new(&mem);
    let fmt = ept_ad();
    let mut t = Table::new(fmt.clone(), &hw).unwrap();
    let (gpa, hpa) = (0x20_0000, 0x4020_0000);
    let rw = Attrs::normal(Perms::RW);
    t.map_with(range(gpa, 2 * MIB), Hpa::new(hpa), rw, cold_4k())
        .unwrap();
    let page = gpa + 77 * 4096;
    hw.arm(leaf_entry_pa(&mem, t.root(), page));
    t.collapse(range(gpa, 2 * MIB)).unwrap();
    assert_eq!(hw.written.load(Ordering::Relaxed), 1, "hardware wrote");
    let (level, dirty, accessed, out) = peek(&mem, &fmt, t.root(), page + 0x123);
    assert_eq!((level, out), (1, hpa + 77 * 4096 + 0x123), "collapsed");
    assert!(
        dirty && accessed,
        "the dirty bit hardware set in the child was lost"
    );
    let s = t.stats();
    assert_eq!((s.leaves[0], s.leaves[1], s.tables[0]), (0, 1, 0));
    drop(t);
    assert_eq!(mem.outstanding_tables(), 0, "leaked tables");
}

#[test]
fn a_dirty_bit_set_in_a_4k_child_reaches_the_1g_leaf_through_the_2m_one() {
    // 512 leaf tables of 4 KiB: 2 MiB of tables, and a few more.
    let mem = HeapHost::new(BASE, 4 * MIB, 4096);
    let hw = LateHw::new(&mem);
    let fmt = ept_ad();
    let mut t = Table::new(fmt.clone(), &hw).unwrap();
    let (gpa, hpa) = (GIB, 2 * GIB);
    let rw = Attrs::normal(Perms::RW);
    t.map_with(range(gpa, GIB), Hpa::new(hpa), rw, cold_4k())
        .unwrap();
    let page = gpa + 300 * 2 * MIB + 9 * 4096;
    hw.arm(leaf_entry_pa(&mem, t.root(), page));
    t.collapse(range(gpa, GIB)).unwrap();
    assert_eq!(hw.written.load(Ordering::Relaxed), 1, "hardware wrote");
    let (level, dirty, accessed, out) = peek(&mem, &fmt, t.root(), page);
    assert_eq!((level, out), (2, hpa + (page - gpa)), "collapsed to 1 GiB");
    assert!(
        dirty && accessed,
        "the dirty bit hardware set in the child was lost"
    );
    let s = t.stats();
    assert_eq!(
        (
            s.leaves[0],
            s.leaves[1],
            s.leaves[2],
            s.tables[0],
            s.tables[1]
        ),
        (0, 0, 1, 0, 0)
    );
    drop(t);
    assert_eq!(mem.outstanding_tables(), 0, "leaked tables");
}

#[test]
fn a_batched_exclusive_collapse_folds_before_it_returns() {
    let mem = HeapHost::new(BASE, 4 * MIB, 4096);
    let hw = LateHw::new(&mem);
    let fmt = ept_ad();
    let mut tree = Tree::new(fmt.clone(), &hw).unwrap();
    let mut ctx = Ctx::new(&fmt);
    let mut flush = PendingFlush::new(&hw);
    let (gpa, hpa) = (0x40_0000, 0x4040_0000);
    let rw = Attrs::normal(Perms::RW);
    let x = tree.exclusive();
    let p = x
        .map(
            &mut ctx,
            &mut flush,
            range(gpa, 6 * MIB),
            Hpa::new(hpa),
            rw,
            cold_4k(),
        )
        .unwrap();
    assert_eq!(p, Progress::Done);
    let pages = [gpa + 5 * 4096, gpa + 2 * MIB + 511 * 4096];
    for page in pages {
        hw.arm(leaf_entry_pa(&mem, tree.root(), page));
    }
    let x = tree.exclusive();
    assert_eq!(
        x.collapse(&mut ctx, &mut flush, range(gpa, 6 * MIB)),
        Ok(Progress::Done)
    );
    // The collapse issued the flush it owed itself (the fold needs it) and folded.
    assert_eq!(hw.written.load(Ordering::Relaxed), 2, "hardware wrote");
    for page in pages {
        let (level, dirty, _, out) = peek(&mem, &fmt, tree.root(), page);
        assert_eq!((level, out), (1, hpa + (page - gpa)), "collapsed");
        assert!(dirty, "the dirty bit hardware set in the child was lost");
    }
    // The third 2 MiB leaf had no child written: it stays clean.
    let (level, dirty, accessed, _) = peek(&mem, &fmt, tree.root(), gpa + 4 * MIB + 4096);
    assert_eq!(
        (level, dirty, accessed),
        (1, false, false),
        "no bit made up"
    );
    flush.flush();
    ctx.free_all(&hw);
}

#[test]
fn a_collapse_that_yields_folds_what_it_collapsed_before_it_yields() {
    let mem = HeapHost::new(BASE, 4 * MIB, 4096);
    let hw = LateHw::new(&mem);
    let fmt = ept_ad();
    let mut tree = Tree::new(fmt.clone(), &hw).unwrap();
    let mut ctx = Ctx::new(&fmt);
    let mut flush = PendingFlush::new(&hw);
    let (gpa, hpa) = (0x40_0000, 0x4040_0000);
    let rw = Attrs::normal(Perms::RW);
    let x = tree.exclusive();
    let p = x.map(
        &mut ctx,
        &mut flush,
        range(gpa, 6 * MIB),
        Hpa::new(hpa),
        rw,
        cold_4k(),
    );
    assert_eq!(p, Ok(Progress::Done));
    flush.flush_now();
    // About one leaf table per call.
    ctx.set_budget(Some(512));
    let (mut at, end, mut calls) = (gpa, gpa + 6 * MIB, 0);
    loop {
        // Hardware writes through the leaf table the next call collapses first.
        let page = at + 3 * 4096;
        hw.arm(leaf_entry_pa(&mem, tree.root(), page));
        let before = hw.written.load(Ordering::Relaxed);
        let x = tree.exclusive();
        let p = x
            .collapse(&mut ctx, &mut flush, range(at, end - at))
            .unwrap();
        calls += 1;
        assert_eq!(
            hw.written.load(Ordering::Relaxed),
            before + 1,
            "hardware wrote"
        );
        let (level, dirty, _, _) = peek(&mem, &fmt, tree.root(), page);
        assert_eq!(level, 1, "collapsed");
        assert!(dirty, "the dirty bit hardware set in the child was lost");
        match p {
            Progress::Done => break,
            Progress::Yielded { resume } => at = resume.raw(),
        }
    }
    assert_eq!(calls, 3, "one 2 MiB table per call");
    flush.flush();
    ctx.free_all(&hw);
}
