//! Frozen values per level, for every preset and both byte orders.
//!
//! Level 0 freezes to a PTE that is never valid. A directory level freezes to the level's
//! invalid table reached through its other unmapped alias (ckseg0 <-> xkphys with the
//! write-back CCA, ckseg1 <-> xkphys CCA 2), because Linux's refill follows every directory
//! entry as a pointer and ignores none of its bits. The independent walker
//! (`tdp_walkers::mips`) meeting a frozen directory entry must end exactly where it ends for an
//! empty one: in the invalid tables, with a TLB Invalid on an empty PTE.

use std::cell::RefCell;

use tdp_arch_mips::{Mips, MipsConfig};
use tdp_core::testing::HeapHost;
use tdp_core::{
    Attrs, ByteOrder, EntryKind, Error, Gpa, GpaRange, Hpa, Level, Perms, PteFormat, Table,
};
use tdp_walkers::mips::{self as walker, MipsFault, MipsPteLayout, MipsTlbExc, MipsWalkConfig};
use tdp_walkers::{Access, FlatImage, PhysMem};

/// The engine's window; the invalid tables follow it, below 512 MiB like a kernel image.
const BASE: u64 = 0x0800_0000;
const WINDOW: u64 = 4 << 20;
const STATICS: u64 = BASE + WINDOW;
const CKSEG0: u64 = 0xffff_ffff_8000_0000;
const CKSEG1: u64 = 0xffff_ffff_a000_0000;
/// xkphys with CCA 3 (the presets' `cca_writeback` and table window).
const XKPHYS_CCA3: u64 = 0x9800_0000_0000_0000;
/// xkphys with CCA 2 (uncached).
const XKPHYS_CCA2: u64 = 0x9000_0000_0000_0000;

const PRESENT: u64 = 0x1;
const V: u64 = 0x200;

/// How the caller names its invalid tables.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Segment {
    Ckseg0,
    Ckseg1,
    Xkphys,
}

impl Segment {
    const ALL: [Segment; 3] = [Segment::Ckseg0, Segment::Ckseg1, Segment::Xkphys];

    fn va(self, pa: u64) -> u64 {
        match self {
            Segment::Ckseg0 => CKSEG0 + pa,
            Segment::Ckseg1 => CKSEG1 + pa,
            Segment::Xkphys => XKPHYS_CCA3 | pa,
        }
    }

    /// The same PA through the other alias with the same cacheability.
    fn alias(self, pa: u64) -> u64 {
        match self {
            Segment::Ckseg0 => XKPHYS_CCA3 | pa,
            Segment::Ckseg1 => XKPHYS_CCA2 | pa,
            Segment::Xkphys => CKSEG0 + pa,
        }
    }
}

/// (name, page shift, index bits leaf first).
const PRESETS: [(&str, u8, &[u8]); 4] = [
    ("linux64_4k", 12, &[9, 9, 10]),
    ("linux64_16k", 14, &[11, 11, 11]),
    ("linux64_16k_2level", 14, &[11, 11]),
    ("linux64_64k", 16, &[13, 13]),
];

fn config(page_shift: u8, levels: usize, inv: [u64; 2]) -> MipsConfig {
    match (page_shift, levels) {
        (12, 3) => MipsConfig::linux64_4k(inv),
        (14, 3) => MipsConfig::linux64_16k(inv),
        (14, 2) => MipsConfig::linux64_16k_2level(inv[0]),
        (16, 2) => MipsConfig::linux64_64k(inv[0]),
        _ => unreachable!(),
    }
}

fn bytes(v: u64, big: bool) -> [u8; 8] {
    if big {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

/// The invalid tables of a preset at `STATICS`, named through `seg`, and their PA spans.
struct Statics {
    inv: [u64; 2],
    spans: Vec<(u64, u64)>,
    image: FlatImage,
}

fn statics(index_bits: &[u8], seg: Segment, big: bool) -> Statics {
    let mut image = Vec::new();
    let mut inv = [0u64; 2];
    let mut spans = Vec::new();
    let mut below = 0u64;
    for l in 1..index_bits.len() {
        let pa = STATICS + image.len() as u64;
        for _ in 0..(1usize << index_bits[l - 1]) {
            image.extend_from_slice(&bytes(below, big));
        }
        spans.push((pa, STATICS + image.len() as u64));
        below = seg.va(pa);
        inv[l - 1] = below;
    }
    Statics {
        inv,
        spans,
        image: FlatImage::new(STATICS, image),
    }
}

fn walk_cfg(page_shift: u8, index_bits: &[u8], big: bool) -> MipsWalkConfig {
    MipsWalkConfig {
        layout: MipsPteLayout::linux64_rixi(u32::from(page_shift)),
        page_shift: u32::from(page_shift),
        index_bits: index_bits.iter().map(|&b| u32::from(b)).collect(),
        pabits: 48,
        big_endian: big,
        iec: true,
    }
}

/// The engine's memory and the caller's invalid tables, recording every read the walker makes.
struct Mem<'a> {
    host: &'a HeapHost,
    statics: &'a FlatImage,
    reads: RefCell<Vec<u64>>,
}

impl PhysMem for Mem<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.reads.borrow_mut().push(pa);
        self.host.read_phys(pa, buf) || self.statics.read(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.host.write_phys(pa, buf)
    }
}

fn level(l: usize) -> Level {
    Level::new(l as u8).unwrap()
}

fn frozen_values_at_every_level<const BIG: bool>(name: &str, page_shift: u8, bits: &[u8]) {
    for seg in Segment::ALL {
        let s = statics(bits, seg, BIG);
        let fmt = Mips::<BIG>::new(config(page_shift, bits.len(), s.inv)).unwrap();
        let ctx = format!("{name} {seg:?} big-endian={BIG}");
        let mut seen = Vec::new();
        for l in 0..bits.len() {
            let (lv, f) = (level(l), fmt.frozen(level(l)));
            assert_eq!(fmt.classify(f, lv), EntryKind::Frozen, "{ctx} level {l}");
            assert_eq!(fmt.classify(fmt.empty(lv), lv), EntryKind::Empty, "{ctx}");
            assert_ne!(f, fmt.empty(lv), "{ctx} level {l}");
            if l == 0 {
                // Neither PRESENT (KVM's fast path leaves it alone) nor V (EntryLo invalid).
                assert_eq!(f & (PRESENT | V), 0, "{ctx}");
                assert_eq!(fmt.entrylo(f) & 0b10, 0, "{ctx}");
            } else {
                // The level's invalid table, through its other alias: not a real table pointer.
                let pa = s.spans[l - 1].0;
                assert_eq!(fmt.empty(lv), seg.va(pa), "{ctx}");
                assert_eq!(f, seg.alias(pa), "{ctx} level {l}");
                assert_ne!(fmt.classify(f, lv), EntryKind::Table, "{ctx}");
            }
            seen.push(f);
            seen.push(fmt.empty(lv));
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            2 * bits.len(),
            "{ctx}: values shared between levels"
        );
    }
}

#[test]
fn frozen_classifies_as_frozen_and_is_never_valid_at_every_level_of_every_preset() {
    for (name, page_shift, bits) in PRESETS {
        frozen_values_at_every_level::<false>(name, page_shift, bits);
        frozen_values_at_every_level::<true>(name, page_shift, bits);
    }
}

/// The PA of the level-`l` slot the walk of `gpa` reads, found by following real tables.
fn slot_pa<F: PteFormat>(fmt: &F, host: &HeapHost, root: Hpa, gpa: u64, l: usize) -> u64 {
    let geo = fmt.geometry();
    let big = matches!(F::BYTE_ORDER, ByteOrder::Big);
    let mut table = root.raw();
    for cur in (0..geo.levels() as usize).rev() {
        let lv = level(cur);
        let slot = table + 8 * geo.index(gpa, lv) as u64;
        if cur == l {
            return slot;
        }
        let mut b = [0u8; 8];
        assert!(host.read_phys(slot, &mut b));
        let raw = if big {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        };
        assert_eq!(fmt.classify(raw, lv), EntryKind::Table);
        table = fmt.table_addr(raw, lv).raw();
    }
    unreachable!()
}

fn frozen_directory_walks<const BIG: bool>(name: &str, page_shift: u8, bits: &[u8]) {
    for seg in Segment::ALL {
        let s = statics(bits, seg, BIG);
        let fmt = Mips::<BIG>::new(config(page_shift, bits.len(), s.inv)).unwrap();
        let ctx = format!("{name} {seg:?} big-endian={BIG}");
        let granule = fmt.geometry().min_table_size();
        let host = HeapHost::new(BASE, WINDOW, granule);
        let walk = walk_cfg(page_shift, bits, BIG);
        // An odd page with a non-zero index at every level.
        let mut gpa = 0u64;
        let mut shift = u32::from(page_shift);
        for (l, &b) in bits.iter().enumerate() {
            gpa |= (2 * l as u64 + 1) << shift;
            shift += u32::from(b);
        }
        let page = 1u64 << page_shift;
        let mut t = Table::new(fmt.clone(), &host).unwrap();
        t.map(
            GpaRange::new(Gpa::new(gpa), page).unwrap(),
            Hpa::new(0x4000_0000),
            Attrs::normal(Perms::RW),
        )
        .unwrap();
        let pgd = fmt.pgd(t.root()).unwrap();
        let mut mem = Mem {
            host: &host,
            statics: &s.image,
            reads: RefCell::new(Vec::new()),
        };
        let mapped = walker::peek(&mem, pgd, &walk, gpa + 8, Access::Read).unwrap();
        assert_eq!(mapped.hpa, 0x4000_0008, "{ctx}");
        let in_statics = |pa: u64| s.spans.iter().any(|&(a, b)| (a..b).contains(&pa));
        let (pte_lo, pte_hi) = s.spans[0];
        for l in 1..bits.len() {
            let lv = level(l);
            let slot = slot_pa(&fmt, &host, t.root(), gpa, l);
            let mut orig = [0u8; 8];
            assert!(host.read_phys(slot, &mut orig));
            let mut faults = Vec::new();
            for value in [fmt.empty(lv), fmt.frozen(lv)] {
                assert!(host.write_phys(slot, &bytes(value, BIG)));
                let mut got = Vec::new();
                for access in [Access::Read, Access::Write, Access::ExecUser] {
                    mem.reads.borrow_mut().clear();
                    let r = walker::peek(&mem, pgd, &walk, gpa, access);
                    match &r {
                        Err(MipsFault::Tlb(x)) => {
                            assert_eq!(x.kind, MipsTlbExc::Invalid, "{ctx} level {l}");
                            assert_eq!((x.pte, x.pair.entrylo0, x.pair.entrylo1), (0, 0, 0));
                            assert!((pte_lo..pte_hi).contains(&x.pte_pa), "{ctx} level {l}");
                        }
                        other => panic!("{ctx} level {l} value {value:#x}: {other:?}"),
                    }
                    // Host memory is read only down to the slot; everything after it is the
                    // invalid tables.
                    let reads = mem.reads.borrow();
                    let split = reads.iter().position(|&pa| pa == slot).unwrap();
                    assert_eq!(split, bits.len() - 1 - l, "{ctx} level {l}: {reads:x?}");
                    assert!(reads[split + 1..].iter().all(|&pa| in_statics(pa)), "{ctx}");
                    got.push(r);
                }
                // KVM's fast path leaves an empty PTE to the slow path and writes nothing.
                assert_eq!(
                    walker::kvm_fast_path(&mut mem, pgd, &walk, gpa, true),
                    Ok(false)
                );
                faults.push(got);
            }
            assert_eq!(
                faults[0], faults[1],
                "{ctx} level {l}: frozen differs from empty"
            );
            assert!(host.write_phys(slot, &orig));
            let back = walker::peek(&mem, pgd, &walk, gpa + 8, Access::Read).unwrap();
            assert_eq!(back.hpa, 0x4000_0008, "{ctx}");
        }
        drop(t);
        assert_eq!(host.outstanding_tables(), 0, "{ctx}");
    }
}

#[test]
fn a_frozen_directory_entry_leads_the_refill_to_the_invalid_table_like_an_empty_one() {
    for (name, page_shift, bits) in PRESETS {
        frozen_directory_walks::<false>(name, page_shift, bits);
        frozen_directory_walks::<true>(name, page_shift, bits);
    }
}

#[test]
fn invalid_tables_whose_frozen_alias_could_collide_or_not_exist_are_rejected() {
    let s = statics(&[9, 9, 10], Segment::Ckseg0, false);
    let good = MipsConfig::linux64_4k(s.inv);
    let what = |cfg: MipsConfig| match Mips::<false>::new(cfg) {
        Err(Error::InvalidConfig { what, .. }) => what,
        other => panic!("{cfg:?} gave {other:?}"),
    };
    let with = |inv: [u64; 2]| MipsConfig {
        invalid_tables: inv,
        ..good
    };
    let pmd = s.inv[1];
    // xkphys above ckseg's 512 MiB reach, or with a CCA that is neither K0 nor uncached.
    for bad in [XKPHYS_CCA3 | 0x2000_0000, 0xa800_0000_0880_0000] {
        assert_eq!(
            what(with([bad, pmd])),
            "MIPS invalid table without a same-cacheability alias"
        );
    }
    // A ckseg0 table whose PA is beyond PABITS has no xkphys alias either.
    let narrow = MipsConfig {
        pabits: 24,
        ..with([CKSEG0 + 0x0100_0000, CKSEG0 + 0x0200_0000])
    };
    assert_eq!(
        what(narrow),
        "MIPS invalid table without a same-cacheability alias"
    );
    // Two levels sharing one table: frozen(1) would be empty(2).
    let pte_pa = s.spans[0].0;
    assert_eq!(
        what(with([s.inv[0], XKPHYS_CCA3 | pte_pa])),
        "MIPS invalid tables overlap"
    );
    assert_eq!(
        what(with([s.inv[0], CKSEG1 + pte_pa])),
        "MIPS invalid tables overlap"
    );
    // With CCA 5 as the write-back CCA (Config.K0 = 5), a CCA-5 xkphys table aliases ckseg0.
    let cca5 = MipsConfig {
        cca_writeback: 5,
        ..with([0xa800_0000_0880_0000, pmd])
    };
    let f = Mips::<false>::new(cca5).unwrap();
    assert_eq!(f.frozen(level(1)), CKSEG0 + 0x0880_0000);
    assert_eq!(
        f.frozen(level(2)),
        0xa800_0000_0840_1000,
        "ckseg0 -> xkphys CCA 5"
    );
}
