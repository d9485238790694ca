//! Hand-checked raw entries and behaviour pinned down by name, for LoongArch.
//!
//! Bit values used below (Linux `pgtable-bits.h`; LoongArch Vol. 1 TLBELO): V 0x1, D 0x2,
//! MAT 0x10 (CC) / 0x20 (WUC) / 0 (SUC), HUGE 0x40, P 0x80, W 0x100, KVM_PAGE_WRITEABLE
//! 0x200, NR bit 61, NX bit 62.

use std::ops::ControlFlow;

use tdp_arch_loongarch::{
    Invtlb, LoongArch, LoongArchConfig, INVTLB_GID_ADDR, INVTLB_GID_ALL, INVTLB_GID_GPA_TO_HPA,
};
use tdp_core::testing::{HeapHost, HostEvent};
use tdp_core::{
    AdModel, AdState, Attrs, EntryKind, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType,
    Perms, PteFormat, Table, TlbFlush,
};
use tdp_walkers::loongarch::{self as walker, LaExcCode, LaFault, LaWalkConfig};
use tdp_walkers::{Access, FlatImage, PhysMem};

const BASE: u64 = 0x1_0000_0000;
const WINDOW: u64 = 4 << 20;
const STATICS: u64 = BASE + WINDOW;
const DMW: u64 = 0x9000_0000_0000_0000;

const V: u64 = 0x1;
const D: u64 = 0x2;
const CC: u64 = 0x10;
const WUC: u64 = 0x20;
const HUGE: u64 = 0x40;
const P: u64 = 0x80;
const W: u64 = 0x100;
const KW: u64 = 0x200;
const NR: u64 = 1 << 61;
const NX: u64 = 1 << 62;

struct Mem<'a> {
    host: &'a HeapHost,
    statics: &'a FlatImage,
}

impl PhysMem for Mem<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.host.read_phys(pa, buf) || self.statics.read(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.host.write_phys(pa, buf)
    }
}

/// A configuration with its invalid tables built at `at` (DMW addresses when `dmw`).
fn invalid_tables(mut cfg: LoongArchConfig, at: u64, dmw: bool) -> (LoongArchConfig, FlatImage) {
    let mut bytes = Vec::new();
    let mut below = 0u64;
    for l in 1..usize::from(cfg.levels) {
        let pa = at + bytes.len() as u64;
        for _ in 0..(1usize << cfg.index_bits[l - 1]) {
            bytes.extend_from_slice(&below.to_le_bytes());
        }
        below = if dmw { DMW | pa } else { pa };
        cfg.invalid_tables[l - 1] = below;
    }
    (cfg, FlatImage::new(at, bytes))
}

struct Env {
    fmt: LoongArch,
    host: HeapHost,
    statics: FlatImage,
}

impl Env {
    fn new(page_shift: u8, levels: u8, hw: bool) -> Env {
        let mut cfg = LoongArchConfig::linux(page_shift, levels, [0; 3]);
        cfg.hardware_walker = hw;
        let (cfg, statics) = invalid_tables(cfg, STATICS, true);
        Env {
            fmt: LoongArch::new(cfg).unwrap(),
            host: HeapHost::new(BASE, WINDOW, 1 << page_shift),
            statics,
        }
    }
    fn mem(&self) -> Mem<'_> {
        Mem {
            host: &self.host,
            statics: &self.statics,
        }
    }
    fn wcfg(&self) -> LaWalkConfig {
        LaWalkConfig {
            pwcl: self.fmt.pwcl(),
            pwch: self.fmt.pwch(),
            palen: self.fmt.config().palen,
            plv: 0,
        }
    }
    fn word(&self, pa: u64) -> u64 {
        let mut b = [0u8; 8];
        assert!(self.host.read_phys(pa, &mut b));
        u64::from_le_bytes(b)
    }
}

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

fn cold() -> MapOptions {
    MapOptions {
        max_level: None,
        young_dirty: false,
    }
}

#[test]
fn sixteen_k_leaf_raw_value_matches_the_documented_bits() {
    let e = Env::new(14, 3, false);
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    t.map(
        range(0x4000, 0x4000),
        Hpa::new(0x1234_4000),
        Attrs::normal(Perms::RWX),
    )
    .unwrap();
    // P | V | D | W | KVM_PAGE_WRITEABLE | MAT CC | PA: KVM's leaf for a write fault.
    let m = t.query(Gpa::new(0x4123)).unwrap().unwrap();
    assert_eq!(m.raw, 0x1234_4000 | P | V | D | W | KW | CC);
    assert_eq!(m.raw, 0x1234_4393);
    assert_eq!(
        (m.hpa, m.size, m.level),
        (Hpa::new(0x1234_4123), 0x4000, Level::LEAF)
    );
}

#[test]
fn read_only_uncached_cold_leaf_is_present_but_neither_valid_nor_dirty() {
    let e = Env::new(14, 3, false);
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    let attrs = Attrs {
        perms: Perms::READ,
        mem: MemType::Uncached,
        ignore_guest_memtype: false,
    };
    t.map_with(range(0x8000, 0x4000), Hpa::new(0x8000_0000), attrs, cold())
        .unwrap();
    let m = t.query(Gpa::new(0x8000)).unwrap().unwrap();
    // P | NX | SUC (0): no V, no D, no write bits.
    assert_eq!(m.raw, 0x4000_0000_8000_0080);
    assert_eq!(m.raw, P | NX | 0x8000_0000);
    assert_eq!(m.attrs, attrs);
    assert_eq!(
        m.ad,
        AdState {
            accessed: Some(false),
            dirty: Some(false)
        }
    );
    // The hardware faults (V = 0): page invalid for a load; KVM's fast path makes it young.
    let root = e.fmt.pgdl(t.root()).unwrap();
    let r = walker::peek(&e.mem(), root, &e.wcfg(), 0x8010, Access::Read);
    assert!(
        matches!(r, Err(LaFault::Exception(x)) if x.code == LaExcCode::Pil && x.code.ecode() == 1)
    );
    assert!(walker::kvm_fast_path(&mut e.mem(), root, &e.wcfg(), 0x8010, false).unwrap());
    let tr = walker::peek(&e.mem(), root, &e.wcfg(), 0x8010, Access::Read).unwrap();
    assert_eq!((tr.hpa, tr.mat), (0x8000_0010, 0));
    assert_eq!(
        t.query(Gpa::new(0x8000)).unwrap().unwrap().ad.accessed,
        Some(true)
    );
    // A write is refused by the fast path (no KVM_PAGE_WRITEABLE): page modification.
    assert!(!walker::kvm_fast_path(&mut e.mem(), root, &e.wcfg(), 0x8010, true).unwrap());
    let r = walker::peek(&e.mem(), root, &e.wcfg(), 0x8010, Access::Write);
    assert!(matches!(r, Err(LaFault::Exception(x)) if x.code == LaExcCode::Pme));
    let r = walker::peek(&e.mem(), root, &e.wcfg(), 0x8010, Access::ExecUser);
    assert!(matches!(r, Err(LaFault::Exception(x)) if x.code == LaExcCode::Pnx));
}

#[test]
fn thirty_two_mib_huge_leaf_and_its_refill_pair() {
    let e = Env::new(14, 3, false);
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    let attrs = Attrs {
        perms: Perms::RW,
        mem: MemType::WriteCombining,
        ignore_guest_memtype: false,
    };
    t.map(range(0x200_0000, 0x200_0000), Hpa::new(0x4000_0000), attrs)
        .unwrap();
    let m = t.query(Gpa::new(0x300_0000)).unwrap().unwrap();
    assert_eq!(m.level.get(), 1);
    // P | HUGE | V | D | W | KVM_PAGE_WRITEABLE | WUC | NX | PA.
    assert_eq!(m.raw, P | HUGE | V | D | W | KW | WUC | NX | 0x4000_0000);
    assert_eq!(m.raw, 0x4000_0000_4000_03e3);
    // The refill loads two 16 MiB halves: HUGE cleared, the odd half 16 MiB further.
    let root = e.fmt.pgdl(t.root()).unwrap();
    let pair = walker::refill(&e.mem(), root, &e.wcfg(), 0x300_0000).unwrap();
    assert_eq!(pair.lo0, 0x4000_0000_4000_03a3);
    assert_eq!(pair.lo1, 0x4000_0000_4100_03a3);
    assert_eq!((pair.ps, pair.dir), (24, 1));
    let tr = walker::peek(&e.mem(), root, &e.wcfg(), 0x3ab_cdef, Access::Write).unwrap();
    assert_eq!((tr.hpa, tr.page_size, tr.mat), (0x41ab_cdef, 0x200_0000, 2));
}

#[test]
fn execute_only_and_no_access_leaves_use_nr_and_nx() {
    let e = Env::new(12, 4, false);
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x5000),
        Attrs::normal(Perms::EXEC),
    )
    .unwrap();
    t.map(
        range(0x2000, 0x1000),
        Hpa::new(0x6000),
        Attrs::normal(Perms::empty()),
    )
    .unwrap();
    assert_eq!(
        t.query(Gpa::new(0x1000)).unwrap().unwrap().raw,
        P | V | CC | NR | 0x5000
    );
    assert_eq!(
        t.query(Gpa::new(0x2000)).unwrap().unwrap().raw,
        P | V | CC | NR | NX | 0x6000
    );
    let root = e.fmt.pgdl(t.root()).unwrap();
    let (m, w) = (e.mem(), e.wcfg());
    assert!(walker::peek(&m, root, &w, 0x1000, Access::ExecSupervisor).is_ok());
    for (gpa, access, code) in [
        (0x1000, Access::Read, LaExcCode::Pnr),
        (0x1000, Access::Write, LaExcCode::Pme),
        (0x2000, Access::ExecUser, LaExcCode::Pnx),
    ] {
        let r = walker::peek(&m, root, &w, gpa, access);
        assert!(
            matches!(r, Err(LaFault::Exception(x)) if x.code == code),
            "{gpa:#x} {access:?}: {r:?}"
        );
    }
}

#[test]
fn empty_directory_entries_hold_the_invalid_tables_and_tables_hold_physical_addresses() {
    let e = Env::new(14, 3, false);
    let cfg = e.fmt.config();
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    let root = t.root().raw();
    assert_eq!(root, BASE, "the root is the window's first table");
    for i in 0..2048 {
        assert_eq!(e.word(root + i * 8), cfg.invalid_tables[1]);
    }
    assert_eq!(cfg.invalid_tables[1], DMW | (STATICS + 0x4000));
    t.map(
        range(0x4000, 0x4000),
        Hpa::new(0x1234_4000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    let pmd = e.word(root);
    assert_eq!(
        pmd & !0xffff_ffff_c000,
        0,
        "a directory entry is the bare physical address"
    );
    for i in 0..2048 {
        assert_eq!(
            e.word(pmd + i * 8),
            if i == 0 {
                e.word(pmd)
            } else {
                cfg.invalid_tables[0]
            }
        );
    }
    let pte = e.word(pmd);
    assert_eq!(e.word(pte + 8), 0x1234_4000 | P | V | D | W | KW | CC | NX);
    for i in (0..2048).filter(|&i| i != 1) {
        assert_eq!(e.word(pte + i * 8), 0, "empty PTEs are 0");
    }
    // The format agrees.
    let l1 = Level::new(1).unwrap();
    let l2 = Level::new(2).unwrap();
    assert_eq!(e.fmt.classify(cfg.invalid_tables[1], l2), EntryKind::Empty);
    assert_eq!(e.fmt.classify(pmd, l2), EntryKind::Table);
    assert_eq!(e.fmt.classify(pte, l1), EntryKind::Table);
    assert_eq!(
        e.fmt.classify(0, l1),
        EntryKind::Other,
        "0 is not empty in a directory"
    );
    assert_eq!(e.fmt.table_addr(pmd, l2), Hpa::new(pmd));
}

#[test]
fn unmap_frees_tables_whose_entries_all_went_back_to_the_invalid_table() {
    let e = Env::new(14, 3, false);
    let cfg = e.fmt.config();
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    t.set_cache_keep(0);
    let four_k = MapOptions {
        max_level: Level::new(0),
        young_dirty: true,
    };
    // Two PTE tables under one PMD table, and one under another.
    let rw = Attrs::normal(Perms::RW);
    t.map_with(range(0, 0x8000), Hpa::new(0x1000_0000), rw, four_k)
        .unwrap();
    t.map_with(range(0x200_0000, 0x4000), Hpa::new(0x2000_0000), rw, four_k)
        .unwrap();
    t.map_with(range(1 << 36, 0x4000), Hpa::new(0x3000_0000), rw, four_k)
        .unwrap();
    // By level: three PTE tables, two PMD tables, the root.
    assert_eq!(t.stats().tables, [3, 2, 1, 0, 0]);
    assert_eq!(e.host.outstanding_tables(), 6);
    // Unmapping one PTE of a table keeps it.
    t.unmap(range(0, 0x4000)).unwrap();
    assert_eq!(t.stats().tables, [3, 2, 1, 0, 0]);
    // The last ones: PTE table and PMD table freed, parents back to the invalid tables.
    t.unmap(range(0x4000, 0x4000)).unwrap();
    t.unmap(range(0x200_0000, 0x4000)).unwrap();
    assert_eq!(t.stats().tables, [1, 1, 1, 0, 0]);
    assert_eq!(e.host.outstanding_tables(), 3);
    let root = t.root().raw();
    assert_eq!(e.word(root), cfg.invalid_tables[1]);
    t.unmap(range(1 << 36, 0x4000)).unwrap();
    assert_eq!(t.stats().tables, [0, 0, 1, 0, 0]);
    assert_eq!(e.host.outstanding_tables(), 1);
    for i in 0..2048 {
        assert_eq!(e.word(root + i * 8), cfg.invalid_tables[1]);
    }
    let mut entries = 0;
    t.walk(range(0, 1 << 47), |w| {
        entries += 1;
        assert_eq!(w.kind, EntryKind::Empty);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(entries, 2048);
    drop(t);
    assert_eq!(e.host.outstanding_tables(), 0);
}

#[test]
fn every_config_knob_reaches_pwcl_and_pwch() {
    let la = |s, l| {
        LoongArch::new(invalid_tables(LoongArchConfig::linux(s, l, [0; 3]), STATICS, false).0)
            .unwrap()
    };
    // Linux's setup_ptwalker values: 16 KiB / 3 levels: PT 14/11, Dir1 25/11, Dir3 36/11.
    let l16 = la(14, 3);
    assert_eq!((l16.pwcl(), l16.pwch()), (0x5e56e, 0x2e4));
    // 4 KiB / 4 levels: PT 12/9, Dir1 21/9, Dir2 30/9, Dir3 39/9.
    let l4 = la(12, 4);
    assert_eq!((l4.pwcl(), l4.pwch()), (0x13e4_d52c, 0x267));
    // 64 KiB / 2 levels: PT 16/13, Dir3 29/13.
    let l64 = la(16, 2);
    assert_eq!((l64.pwcl(), l64.pwch()), (0x1b0, 0x35d));
    assert_eq!(l64.geometry().ia_bits(), 42);
    assert_eq!(l64.geometry().leaf_mask(), 0b11);
    // The hardware walker sets PWCH.HPTW_En (bit 24).
    let mut cfg = invalid_tables(LoongArchConfig::linux(12, 4, [0; 3]), STATICS, false).0;
    cfg.hardware_walker = true;
    assert_eq!(LoongArch::new(cfg).unwrap().pwch(), 0x100_0267);
    // Geometry follows the configuration: 4 KiB pages, 4 levels, 2 MiB huge leaves, 47 bits.
    let g = l4.geometry();
    assert_eq!(
        (g.levels(), g.page_size(), g.ia_bits(), g.oa_bits()),
        (4, 4096, 47, 48)
    );
    assert_eq!(g.level_size(Level::new(1).unwrap()), 2 << 20);
    assert_eq!(l16.geometry().level_size(Level::new(1).unwrap()), 32 << 20);
}

#[test]
fn pgdl_checks_alignment_and_palen() {
    let e = Env::new(14, 3, false);
    assert_eq!(e.fmt.pgdl(Hpa::new(0x8000)).unwrap(), 0x8000);
    assert_eq!(
        e.fmt.pgdl(Hpa::new(0x2000)),
        Err(Error::UnalignedHpa {
            hpa: Hpa::new(0x2000),
            align: 0x4000
        })
    );
    assert_eq!(
        e.fmt.pgdl(Hpa::new(1 << 48)),
        Err(Error::HpaTooWide {
            hpa: Hpa::new(1 << 48),
            bits: 48
        })
    );
}

#[test]
fn invalid_configurations_are_typed_errors() {
    let good = invalid_tables(LoongArchConfig::linux(14, 3, [0; 3]), STATICS, true).0;
    let what = |cfg: LoongArchConfig| match LoongArch::new(cfg) {
        Err(Error::InvalidConfig { what, value }) => (what, value),
        other => panic!("{cfg:?} gave {other:?}"),
    };
    assert!(LoongArch::new(good).is_ok());
    assert_eq!(
        what(LoongArchConfig {
            page_shift: 13,
            ..good
        }),
        ("LoongArch page shift", 13)
    );
    assert_eq!(
        what(LoongArchConfig { levels: 1, ..good }),
        ("LoongArch level count", 1)
    );
    assert_eq!(
        what(LoongArchConfig { levels: 5, ..good }),
        ("LoongArch level count", 5)
    );
    assert_eq!(
        what(LoongArchConfig {
            index_bits: [11, 8, 11, 11],
            ..good
        }),
        ("LoongArch table index width", 8)
    );
    assert_eq!(
        what(LoongArchConfig {
            gpa_bits: 48,
            ..good
        }),
        ("LoongArch GPA width beyond the root's span", 48)
    );
    assert_eq!(
        what(LoongArchConfig {
            gpa_bits: 30,
            ..good
        })
        .0,
        "LoongArch GPA width"
    );
    assert_eq!(
        what(LoongArchConfig { palen: 49, ..good }),
        ("LoongArch PALEN", 49)
    );
    assert_eq!(
        what(LoongArchConfig { palen: 13, ..good }),
        ("LoongArch PALEN", 13)
    );
    // Invalid tables: zero, misaligned, bits between PALEN and the DMW window.
    let t = good.invalid_tables;
    for bad in [0, t[0] + 8, t[0] | 1 << 50] {
        assert_eq!(
            what(LoongArchConfig {
                invalid_tables: [bad, t[1], 0],
                ..good
            }),
            ("LoongArch invalid table", bad)
        );
    }
    // 16 KiB pages with 4 levels put Dir2 at bit 36: PWCL's 5-bit base cannot hold it.
    let four = invalid_tables(LoongArchConfig::linux(14, 4, [0; 3]), STATICS, true).0;
    assert_eq!(
        what(four),
        ("LoongArch directory base beyond PWCL's 5-bit field", 36)
    );
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_the_table_unchanged() {
    let e = Env::new(14, 3, false);
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    let rw = Attrs::normal(Perms::RW);
    t.map(range(0x200_0000, 0x200_0000), Hpa::new(0x4000_0000), rw)
        .unwrap();
    let before = (t.stats(), e.host.outstanding_bytes());
    let wt = Attrs {
        mem: MemType::WriteThrough,
        ..rw
    };
    let dev = Attrs {
        mem: MemType::Device,
        ..rw
    };
    let ipat = Attrs {
        ignore_guest_memtype: true,
        ..rw
    };
    let split_x = Attrs::normal(Perms::READ | Perms::EXEC_USER);
    let cases: Vec<(Result<(), Error>, Error)> = vec![
        (
            t.map(range(0x2000, 0x4000), Hpa::new(0), rw),
            Error::UnalignedGpa {
                value: 0x2000,
                align: 0x4000,
            },
        ),
        (
            t.map(range(0x4000, 0x1000), Hpa::new(0), rw),
            Error::UnalignedGpa {
                value: 0x1000,
                align: 0x4000,
            },
        ),
        (
            t.map(range(0x4000, 0x4000), Hpa::new(0x1000), rw),
            Error::UnalignedHpa {
                hpa: Hpa::new(0x1000),
                align: 0x4000,
            },
        ),
        (
            t.map(range(1 << 47, 0x4000), Hpa::new(0), rw),
            Error::GpaTooWide {
                gpa: Gpa::new((1 << 47) + 0x3fff),
                bits: 47,
            },
        ),
        (
            t.map(range(0x4000, 0x4000), Hpa::new(1 << 48), rw),
            Error::HpaTooWide {
                hpa: Hpa::new((1 << 48) + 0x3fff),
                bits: 48,
            },
        ),
        (
            t.map_with(
                range(0x4000, 0x4000),
                Hpa::new(0),
                rw,
                MapOptions {
                    max_level: Level::new(3),
                    young_dirty: true,
                },
            ),
            Error::InvalidLevel {
                level: Level::new(3).unwrap(),
            },
        ),
        // A leaf size the geometry lacks: level 2 (64 GiB) cannot hold a leaf.
        (
            t.split(range(0, 0x4000), Level::new(2).unwrap()),
            Error::InvalidLevel {
                level: Level::new(2).unwrap(),
            },
        ),
        (
            t.map(range(0x1ff_c000, 0x8000), Hpa::new(0), rw),
            Error::AlreadyMapped {
                gpa: Gpa::new(0x200_0000),
            },
        ),
        (
            t.map(range(0, 0x4000), Hpa::new(0), wt),
            Error::UnsupportedAttrs { attrs: wt },
        ),
        (
            t.map(range(0, 0x4000), Hpa::new(0), dev),
            Error::UnsupportedAttrs { attrs: dev },
        ),
        (
            t.map(range(0, 0x4000), Hpa::new(0), ipat),
            Error::UnsupportedAttrs { attrs: ipat },
        ),
        (
            t.map(range(0, 0x4000), Hpa::new(0), split_x),
            Error::UnsupportedAttrs { attrs: split_x },
        ),
        (
            t.protect(range(0, 0x4000), Perms::EXEC_SUPER),
            Error::UnsupportedAttrs {
                attrs: Attrs::normal(Perms::EXEC_SUPER),
            },
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, Err(want));
        assert_eq!((t.stats(), e.host.outstanding_bytes()), before);
    }
    drop(t);
    assert_eq!(e.host.outstanding_tables(), 0);
}

#[test]
fn split_and_collapse_of_a_huge_leaf_break_before_make_and_keep_ad() {
    let e = Env::new(12, 4, false);
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    t.map_with(
        range(0x20_0000, 0x20_0000),
        Hpa::new(0x4020_0000),
        Attrs::normal(Perms::RWX),
        cold(),
    )
    .unwrap();
    let root = e.fmt.pgdl(t.root()).unwrap();
    // The guest writes: KVM's fast path makes the huge leaf young and dirty.
    assert!(walker::kvm_fast_path(&mut e.mem(), root, &e.wcfg(), 0x21_0000, true).unwrap());
    e.host.take_events();
    t.split(range(0x20_0000, 0x20_0000), Level::LEAF).unwrap();
    // Leaf → table at level 1 needs break-before-make: a flush of the 2 MiB span.
    assert!(e
        .host
        .take_events()
        .contains(&HostEvent::Flush(TlbFlush::Range {
            start: Gpa::new(0x20_0000),
            size: 0x20_0000,
            level: Level::new(1),
            tables: false,
        })));
    let m = t.query(Gpa::new(0x3f_f000)).unwrap().unwrap();
    assert_eq!(
        m.raw,
        0x403f_f000 | P | V | D | W | KW | CC,
        "children: HUGE cleared"
    );
    assert_eq!(
        walker::peek(&e.mem(), root, &e.wcfg(), 0x3f_f123, Access::Write)
            .unwrap()
            .hpa,
        0x403f_f123
    );
    t.collapse(range(0x20_0000, 0x20_0000)).unwrap();
    let m = t.query(Gpa::new(0x20_0000)).unwrap().unwrap();
    assert_eq!(m.raw, 0x4020_0000 | P | HUGE | V | D | W | KW | CC);
    assert_eq!(t.stats().leaves, [0, 1, 0, 0, 0]);
}

#[test]
fn protect_removing_write_cleans_and_adding_it_back_needs_the_fast_path() {
    let e = Env::new(14, 3, false);
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    t.map(
        range(0x4000, 0x4000),
        Hpa::new(0x10_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    t.protect(range(0x4000, 0x4000), Perms::READ).unwrap();
    let m = t.query(Gpa::new(0x4000)).unwrap().unwrap();
    assert_eq!(m.raw, 0x10_0000 | P | V | CC | NX, "D|W and bit 9 cleared");
    t.protect(range(0x4000, 0x4000), Perms::RW).unwrap();
    let m = t.query(Gpa::new(0x4000)).unwrap().unwrap();
    assert_eq!(
        m.raw,
        0x10_0000 | P | V | KW | CC | NX,
        "writable but clean"
    );
    let root = e.fmt.pgdl(t.root()).unwrap();
    let r = walker::peek(&e.mem(), root, &e.wcfg(), 0x4000, Access::Write);
    assert!(matches!(r, Err(LaFault::Exception(x)) if x.code == LaExcCode::Pme));
    assert!(walker::peek_after_fast_path(&e.mem(), root, &e.wcfg(), 0x4000, Access::Write).is_ok());
}

#[test]
fn hardware_walker_sets_v_and_d_so_they_are_volatile() {
    let e = Env::new(12, 4, true);
    assert_eq!(e.fmt.ad_model(), AdModel::Hardware);
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    t.map_with(
        range(0x1000, 0x1000),
        Hpa::new(0x9000),
        Attrs::normal(Perms::RW),
        cold(),
    )
    .unwrap();
    let m = t.query(Gpa::new(0x1000)).unwrap().unwrap();
    assert_eq!(
        e.fmt.volatile_bits(m.raw, Level::LEAF),
        V,
        "V of a present leaf"
    );
    let root = e.fmt.pgdl(t.root()).unwrap();
    // The hardware walker presence check is P: the read succeeds and sets V.
    walker::translate(&mut e.mem(), root, &e.wcfg(), 0x1000, Access::Read).unwrap();
    let m = t.query(Gpa::new(0x1000)).unwrap().unwrap();
    assert_eq!(m.ad.accessed, Some(true));
    assert_eq!(e.fmt.volatile_bits(m.raw, Level::LEAF), 0);
    // A write needs W: page modification until KVM's fast path sets D|W.
    let r = walker::translate(&mut e.mem(), root, &e.wcfg(), 0x1000, Access::Write);
    assert!(matches!(r, Err(LaFault::Exception(x)) if x.code == LaExcCode::Pme));
    // With W but not D (as hardware-D hosts leave it), D is volatile.
    assert_eq!(e.fmt.volatile_bits(m.raw | W, Level::LEAF), D);
    // The software refill: nothing is volatile.
    let sw = Env::new(12, 4, false);
    assert_eq!(sw.fmt.ad_model(), AdModel::Software);
    assert_eq!(sw.fmt.volatile_bits(P | 0x9000, Level::LEAF), 0);
}

#[test]
fn frozen_is_frozen_and_invalid_to_hardware_at_every_level() {
    let e = Env::new(14, 3, false);
    let f = e.fmt.frozen(Level::LEAF);
    for l in 0..3 {
        assert_eq!(e.fmt.classify(f, Level::new(l).unwrap()), EntryKind::Frozen);
    }
    // As a root entry the refill stops at it (HUGE) and finds V = 0.
    let mut img = FlatImage::zeroed(0, 0x4000);
    assert!(img.write_u64_le(0, f));
    let w = LaWalkConfig {
        pwcl: e.fmt.pwcl(),
        pwch: e.fmt.pwch(),
        palen: 48,
        plv: 0,
    };
    let r = walker::peek(&img, 0, &w, 0x123, Access::Read);
    assert!(matches!(r, Err(LaFault::Exception(x)) if x.code == LaExcCode::Pil && x.pair.dir == 3));
}

#[test]
fn caches_empty_entries_so_a_map_over_an_empty_slot_flushes_it() {
    let e = Env::new(14, 3, false);
    assert!(e.fmt.caches_empty_entries());
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    let flushes = |host: &HeapHost| -> Vec<TlbFlush> {
        host.take_events()
            .into_iter()
            .filter_map(|ev| match ev {
                HostEvent::Flush(f) => Some(f),
                _ => None,
            })
            .collect()
    };
    e.host.take_events();
    let ro = Attrs::normal(Perms::READ);
    t.map(range(0x4000, 0x4000), Hpa::new(0x8000), ro).unwrap();
    // Tables were linked over empty (invalid-table) entries: anything under the root entry
    // may be cached as invalid pairs, so its whole span is flushed: the whole GID.
    let f = flushes(&e.host);
    assert_eq!(
        f,
        vec![TlbFlush::Range {
            start: Gpa::new(0),
            size: 1 << 36,
            level: None,
            tables: true
        }]
    );
    let ops: Vec<Invtlb> = e.fmt.invtlb(f[0], 5, 64).collect();
    assert_eq!(
        ops,
        vec![Invtlb {
            op: INVTLB_GID_GPA_TO_HPA,
            rj: 5 << 16,
            rk: 0
        }]
    );
    // A leaf over an empty PTE of an existing table: one op 0x16 at the pair-aligned address
    // (KVM kvm_flush_tlb_gpa: gpa & (PAGE_MASK << 1)).
    t.map(range(0xc000, 0x4000), Hpa::new(0x1_0000), ro)
        .unwrap();
    let f = flushes(&e.host);
    assert_eq!(
        f,
        vec![TlbFlush::Range {
            start: Gpa::new(0xc000),
            size: 0x4000,
            level: Level::new(0),
            tables: false
        }]
    );
    let ops: Vec<Invtlb> = e.fmt.invtlb(f[0], 5, 64).collect();
    assert_eq!(
        ops,
        vec![Invtlb {
            op: INVTLB_GID_ADDR,
            rj: 5 << 16,
            rk: 0x8000
        }]
    );
}

#[test]
fn invtlb_covers_every_pair_or_falls_back_to_the_whole_gid() {
    let e = Env::new(14, 3, false);
    let range_flush = |start: u64, size: u64, level: Option<Level>| TlbFlush::Range {
        start: Gpa::new(start),
        size,
        level,
        tables: false,
    };
    // 16 KiB pages: pairs are 32 KiB. [0x1_4000, 0x2_4000) touches pairs 0x1_0000, 0x1_8000,
    // 0x2_0000.
    let ops: Vec<u64> = e
        .fmt
        .invtlb(range_flush(0x1_4000, 0x1_0000, Level::new(0)), 0x2a, 64)
        .map(|i| {
            assert_eq!((i.op, i.rj), (0x16, 0x2a << 16));
            i.rk
        })
        .collect();
    assert_eq!(ops, vec![0x1_0000, 0x1_8000, 0x2_0000]);
    // Every pair, whatever the level hint (a huge leaf mapped over an empty slot may have
    // small invalid pairs cached): 32 MiB is 1024 pairs.
    for level in [None, Level::new(0), Level::new(1)] {
        let ops: Vec<u64> = e
            .fmt
            .invtlb(range_flush(0x200_0000, 0x200_0000, level), 1, 1024)
            .map(|i| i.rk)
            .collect();
        assert_eq!(ops.len(), 1024);
        assert_eq!((ops[0], ops[1023]), (0x200_0000, 0x3ff_8000));
    }
    // Beyond the limit: one op 0x14 for the GID's GPA→HPA entries.
    let ops: Vec<Invtlb> = e
        .fmt
        .invtlb(range_flush(0, 0x200_0000, None), 7, 1023)
        .collect();
    assert_eq!(
        ops,
        vec![Invtlb {
            op: INVTLB_GID_GPA_TO_HPA,
            rj: 7 << 16,
            rk: 0
        }]
    );
    // Everything: op 0x15.
    let ops: Vec<Invtlb> = e.fmt.invtlb(TlbFlush::All, 0xff, 64).collect();
    assert_eq!(
        ops,
        vec![Invtlb {
            op: INVTLB_GID_ALL,
            rj: 0xff << 16,
            rk: 0
        }]
    );
}

#[test]
fn a_full_window_is_an_error_and_leaks_nothing() {
    let mut cfg = LoongArchConfig::linux(14, 3, [0; 3]);
    let statics;
    (cfg, statics) = invalid_tables(cfg, STATICS, true);
    let _ = statics;
    // Room for the root and three more 16 KiB tables.
    let host = HeapHost::new(BASE, 64 << 10, 0x4000);
    let mut t = Table::new(LoongArch::new(cfg).unwrap(), &host).unwrap();
    let r = t.map_with(
        range(0, 1 << 30),
        Hpa::new(0),
        Attrs::normal(Perms::RW),
        MapOptions {
            max_level: Level::new(0),
            young_dirty: true,
        },
    );
    assert_eq!(r, Err(Error::OutOfMemory { size: 0x4000 }));
    assert_eq!(
        (host.outstanding_tables(), t.stats().total_leaves()),
        (1, 0)
    );
}

#[test]
fn table_image_export_with_a_chosen_root_walks_in_the_independent_walker() {
    // The caller chooses where the root goes: the first table of a window at 0x2345_0000.
    const ROOT: u64 = 0x2345_0000;
    let mut cfg = LoongArchConfig::linux(14, 3, [0; 3]);
    let statics;
    (cfg, statics) = invalid_tables(cfg, ROOT + (1 << 20), true);
    let host = HeapHost::new(ROOT, 1 << 20, 0x4000);
    let fmt = LoongArch::new(cfg).unwrap();
    let mut t = Table::new(fmt.clone(), &host).unwrap();
    assert_eq!(t.root(), Hpa::new(ROOT));
    t.map(
        range(0x8000_0000, 0x400_0000),
        Hpa::new(0x2_0000_0000),
        Attrs::normal(Perms::RWX),
    )
    .unwrap();
    t.map(
        range(0x4000, 0x4000),
        Hpa::new(0x7_4000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    let img = host.image(t.root());
    let dir = std::env::temp_dir().join(format!("tdp-la-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    img.write(&dir.join("la")).unwrap();
    let mut bytes = std::fs::read(dir.join("la.bin")).unwrap();
    let meta = std::fs::read_to_string(dir.join("la.txt")).unwrap();
    assert!(meta.contains(&format!("root={ROOT:#x}")));
    std::fs::remove_dir_all(dir).unwrap();
    // The invalid tables follow the window: one flat image.
    bytes.extend_from_slice(&statics.bytes);
    let flat = FlatImage::new(ROOT, bytes);
    let w = LaWalkConfig {
        pwcl: fmt.pwcl(),
        pwch: fmt.pwch(),
        palen: 48,
        plv: 0,
    };
    let pgdl = fmt.pgdl(t.root()).unwrap();
    let tr = walker::peek(&flat, pgdl, &w, 0x8234_5678, Access::ExecUser).unwrap();
    assert_eq!((tr.hpa, tr.page_size), (0x2_0234_5678, 0x200_0000));
    let tr = walker::peek(&flat, pgdl, &w, 0x4abc, Access::Read).unwrap();
    assert_eq!((tr.hpa, tr.page_size), (0x7_4abc, 0x4000));
    // Unmapped addresses reach an invalid table and take a page-invalid exception.
    for gpa in [0x1_0000, 0x10_0000_0000, 0x7fff_ffff_c000] {
        let r = walker::peek(&flat, pgdl, &w, gpa, Access::Read);
        assert!(
            matches!(r, Err(LaFault::Exception(x)) if x.code == LaExcCode::Pil && x.entry == 0),
            "{gpa:#x}: {r:?}"
        );
    }
}
