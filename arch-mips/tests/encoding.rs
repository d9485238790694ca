//! Hand-checked raw entries and behaviour pinned down by name, for MIPS.
//!
//! The 4 KiB preset's layout (Linux `pgtable-bits.h`, 64-bit R2+ with RIXI, huge TLB and
//! PTE_SPECIAL): PRESENT 0x1, WRITE 0x2, ACCESSED 0x4, MODIFIED 0x8, XI 0x40, RI 0x80, G 0x100,
//! V 0x200, D 0x400, CCA bits 13:11, PFN from bit 14. EntryLo = PTE >> 8 with RI/XI at 63/62.

use std::ops::ControlFlow;

use tdp_arch_mips::{MipsBe, MipsConfig, MipsLayout, MipsLe};
use tdp_core::testing::HeapHost;
use tdp_core::{
    AdState, Attrs, EntryKind, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms,
    PteFormat, Table,
};
use tdp_walkers::mips::{self as walker, MipsFault, MipsPteLayout, MipsTlbExc, MipsWalkConfig};
use tdp_walkers::{Access, FlatImage, PhysMem};

const BASE: u64 = 0x0800_0000;
const WINDOW: u64 = 4 << 20;
const STATICS: u64 = BASE + WINDOW;
const CKSEG0: u64 = 0xffff_ffff_8000_0000;
const XKPHYS: u64 = 0x9800_0000_0000_0000;

const PRESENT: u64 = 0x1;
const WRITE: u64 = 0x2;
const ACCESSED: u64 = 0x4;
const MODIFIED: u64 = 0x8;
const XI: u64 = 0x40;
const RI: u64 = 0x80;
const V: u64 = 0x200;
const D: u64 = 0x400;

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

/// Invalid tables for `index_bits` at `at` (ckseg0 addresses), entries in `big` endianness.
fn invalid_tables(index_bits: &[u8], at: u64, big: bool) -> ([u64; 2], FlatImage) {
    let mut bytes = Vec::new();
    let mut invalid = [0u64; 2];
    let mut below = 0u64;
    for l in 1..index_bits.len() {
        let pa = at + bytes.len() as u64;
        for _ in 0..(1usize << index_bits[l - 1]) {
            let b = if big {
                below.to_be_bytes()
            } else {
                below.to_le_bytes()
            };
            bytes.extend_from_slice(&b);
        }
        below = CKSEG0 + pa;
        invalid[l - 1] = below;
    }
    (invalid, FlatImage::new(at, bytes))
}

fn walk_cfg(page_shift: u32, bits: &[u32], big: bool) -> MipsWalkConfig {
    MipsWalkConfig {
        layout: MipsPteLayout::linux64_rixi(page_shift),
        page_shift,
        index_bits: bits.to_vec(),
        pabits: 48,
        big_endian: big,
        iec: true,
    }
}

struct Env {
    fmt: MipsLe,
    host: HeapHost,
    statics: FlatImage,
    walk: MipsWalkConfig,
}

impl Env {
    fn four_k() -> Env {
        let (inv, statics) = invalid_tables(&[9, 9, 10], STATICS, false);
        Env {
            fmt: MipsLe::new(MipsConfig::linux64_4k(inv)).unwrap(),
            host: HeapHost::new(BASE, WINDOW, 4096),
            statics,
            walk: walk_cfg(12, &[9, 9, 10], false),
        }
    }
    fn mem(&self) -> Mem<'_> {
        Mem {
            host: &self.host,
            statics: &self.statics,
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

#[test]
fn four_k_leaf_raw_value_and_entrylo_match_the_layout() {
    let e = Env::four_k();
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    t.map(
        range(0x3000, 0x1000),
        Hpa::new(0x1234_5000),
        Attrs::normal(Perms::RWX),
    )
    .unwrap();
    let m = t.query(Gpa::new(0x3abc)).unwrap().unwrap();
    // PRESENT | WRITE | ACCESSED | MODIFIED | V | D | CCA 3 << 11 | 0x12345 << 14.
    assert_eq!(m.raw, 0x48d1_5e0f);
    assert_eq!(
        m.raw,
        0x12345 << 14 | 3 << 11 | D | V | MODIFIED | ACCESSED | WRITE | PRESENT
    );
    assert_eq!(m.hpa, Hpa::new(0x1234_5abc));
    // EntryLo: PFN 0x12345 << 6 | C 3 << 3 | D | V; the page is odd (0x3000), its buddy empty.
    assert_eq!(e.fmt.entrylo(m.raw), 0x0048_d15e);
    assert_eq!(
        e.fmt.entrylo_pair(Gpa::new(0x3000), m.raw, 0),
        (0, 0x0048_d15e)
    );
    assert_eq!(
        e.fmt.entrylo_pair(Gpa::new(0x2000), m.raw, 0),
        (0x0048_d15e, 0)
    );
    // The walker's refill builds the same pair.
    let pgd = e.fmt.pgd(t.root()).unwrap();
    let pair = walker::refill(&e.mem(), pgd, &e.walk, 0x3abc).unwrap();
    assert_eq!((pair.entrylo0, pair.entrylo1), (0, 0x0048_d15e));
}

#[test]
fn no_exec_uncached_cold_leaf_and_the_ri_xi_rotation() {
    let e = Env::four_k();
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    let attrs = Attrs {
        perms: Perms::READ,
        mem: MemType::Uncached,
        ignore_guest_memtype: false,
    };
    let cold = MapOptions {
        max_level: None,
        young_dirty: false,
    };
    t.map_with(range(0x4000, 0x1000), Hpa::new(0x8000_0000), attrs, cold)
        .unwrap();
    let m = t.query(Gpa::new(0x4000)).unwrap().unwrap();
    // PRESENT | XI | CCA 2 << 11 | 0x80000 << 14: present but not valid.
    assert_eq!(m.raw, 0x2_0000_1041);
    assert_eq!(
        (m.attrs, m.ad),
        (
            attrs,
            AdState {
                accessed: Some(false),
                dirty: Some(false)
            }
        )
    );
    // XI rotated to EntryLo bit 62: PFN 0x80000 << 6 | C 2 << 3.
    assert_eq!(e.fmt.entrylo(m.raw), 0x4000_0000_0200_0010);
    assert_eq!(e.fmt.entrylo(RI | XI), 0xc000_0000_0000_0000);
    let pgd = e.fmt.pgd(t.root()).unwrap();
    let (mem, w) = (e.mem(), &e.walk);
    // V = 0: TLB Invalid, TLBL (2) for loads and fetches, TLBS (3) for stores.
    for (access, code) in [(Access::Read, 2), (Access::ExecUser, 2), (Access::Write, 3)] {
        match walker::peek(&mem, pgd, w, 0x4000, access) {
            Err(MipsFault::Tlb(x)) => assert_eq!((x.kind, x.exc_code), (MipsTlbExc::Invalid, code)),
            r => panic!("{r:?}"),
        }
    }
    // KVM's fast path makes it young (VALID | ACCESSED); then XI and TLB Modified remain.
    assert!(walker::kvm_fast_path(&mut e.mem(), pgd, w, 0x4000, false).unwrap());
    let m = t.query(Gpa::new(0x4000)).unwrap().unwrap();
    assert_eq!(m.raw, 0x2_0000_1041 | V | ACCESSED);
    let tr = walker::peek(&e.mem(), pgd, w, 0x4008, Access::Read).unwrap();
    assert_eq!((tr.hpa, tr.cca), (0x8000_0008, 2));
    match walker::peek(&e.mem(), pgd, w, 0x4000, Access::ExecSupervisor) {
        Err(MipsFault::Tlb(x)) => assert_eq!((x.kind, x.exc_code), (MipsTlbExc::ExecInhibit, 20)),
        r => panic!("{r:?}"),
    }
    assert!(!walker::kvm_fast_path(&mut e.mem(), pgd, w, 0x4000, true).unwrap());
    match walker::peek(&e.mem(), pgd, w, 0x4000, Access::Write) {
        Err(MipsFault::Tlb(x)) => assert_eq!((x.kind, x.exc_code), (MipsTlbExc::Modified, 1)),
        r => panic!("{r:?}"),
    }
}

#[test]
fn the_walkers_own_layout_agrees_with_the_presets() {
    // Both built from the documented numbers (see the module docs).
    for page_shift in [12u8, 14, 16] {
        let a = MipsLayout::linux64_rixi(page_shift);
        let w = MipsPteLayout::linux64_rixi(u32::from(page_shift));
        let a_fields = [
            a.present,
            a.write,
            a.accessed,
            a.modified,
            a.global,
            a.valid,
            a.dirty,
            a.cache,
            a.pfn_shift,
        ];
        let w_fields = [
            w.present,
            w.write,
            w.accessed,
            w.modified,
            w.global,
            w.valid,
            w.dirty,
            w.cache,
            w.pfn_shift,
        ];
        assert_eq!(a_fields.map(u32::from), w_fields);
        assert_eq!(a.no_exec.map(u32::from), w.no_exec);
        assert_eq!(a.no_read.map(u32::from), w.no_read);
        assert_eq!(a.pfn_shift, page_shift - 12 + 14);
    }
    // And the EntryLo conversions agree on arbitrary values.
    let e = Env::four_k();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert_eq!(
            e.fmt.entrylo(x),
            walker::pte_to_entrylo(&e.walk.layout, x),
            "{x:#x}"
        );
    }
}

#[test]
fn presets_follow_the_host_geometries() {
    let (inv, _) = invalid_tables(&[9, 9, 10], STATICS, false);
    let cases: [(MipsConfig, u8, u8, u64, usize); 4] = [
        (MipsConfig::linux64_4k(inv), 3, 40, 4096, 8192),
        (
            MipsConfig::linux64_16k([CKSEG0 + 0x10_0000, CKSEG0 + 0x20_0000]),
            3,
            47,
            16384,
            16384,
        ),
        (
            MipsConfig::linux64_16k_2level(CKSEG0 + 0x10_0000),
            2,
            36,
            16384,
            16384,
        ),
        (
            MipsConfig::linux64_64k(CKSEG0 + 0x10_0000),
            2,
            42,
            65536,
            65536,
        ),
    ];
    for (cfg, levels, ia, page, root) in cases {
        let f = MipsLe::new(cfg).unwrap();
        let g = f.geometry();
        assert_eq!(
            (g.levels(), g.ia_bits(), g.page_size(), g.oa_bits()),
            (levels, ia, page, 48)
        );
        assert_eq!(g.table_size(g.root_level()), root);
        assert_eq!(g.leaf_mask(), 0b1, "no huge leaves");
    }
}

#[test]
fn directories_hold_xkphys_pointers_and_empty_ones_the_invalid_tables() {
    let e = Env::four_k();
    let inv = e.fmt.config().invalid_tables;
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    let root = t.root().raw();
    assert_eq!(root, BASE);
    for i in 0..1024 {
        assert_eq!(e.word(root + i * 8), inv[1], "invalid_pmd_table");
    }
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x5000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    let pmd = e.word(root);
    assert_eq!(
        pmd & !0xffff_ffff_ffff,
        XKPHYS,
        "a kernel pointer in xkphys"
    );
    let pmd_pa = pmd & 0xffff_ffff_ffff;
    assert_eq!(e.word(pmd_pa + 8), inv[0], "invalid_pte_table");
    let pte_table = e.word(pmd_pa) & 0xffff_ffff_ffff;
    assert_eq!(e.word(pte_table), 0, "empty PTEs are 0");
    assert_eq!(e.word(pte_table + 8) & (PRESENT | V | D), PRESENT | V | D);
    let (l1, l2) = (Level::new(1).unwrap(), Level::new(2).unwrap());
    assert_eq!(e.fmt.classify(inv[1], l2), EntryKind::Empty);
    assert_eq!(e.fmt.classify(inv[0], l1), EntryKind::Empty);
    assert_eq!(e.fmt.classify(pmd, l2), EntryKind::Table);
    assert_eq!(
        e.fmt.classify(pmd_pa, l2),
        EntryKind::Other,
        "a bare PA is not a pointer"
    );
    assert_eq!(e.fmt.table_addr(pmd, l2), Hpa::new(pmd_pa));
    // Unmapping frees both tables and restores the invalid-table pointers.
    t.unmap(range(0x1000, 0x1000)).unwrap();
    assert_eq!(t.stats().tables, [0, 0, 1, 0, 0]);
    assert_eq!(e.word(root), inv[1]);
    let mut n = 0;
    t.walk(range(0, 1 << 40), |w| {
        assert_eq!(w.kind, EntryKind::Empty);
        n += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(n, 1024);
    drop(t);
    assert_eq!(e.host.outstanding_tables(), 0);
}

#[test]
fn write_protect_keeps_modified_and_write_back_restores_dirty() {
    let e = Env::four_k();
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    t.map(
        range(0x1000, 0x2000),
        Hpa::new(0x7000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    let base = 0x7000 << 2 | 3 << 11 | XI | V | ACCESSED | PRESENT;
    t.protect(range(0x1000, 0x1000), Perms::READ).unwrap();
    // pte_wrprotect: WRITE and DIRTY cleared, MODIFIED kept.
    assert_eq!(
        t.query(Gpa::new(0x1000)).unwrap().unwrap().raw,
        base | MODIFIED
    );
    assert_eq!(
        t.query(Gpa::new(0x1000)).unwrap().unwrap().ad.dirty,
        Some(true)
    );
    t.protect(range(0x1000, 0x1000), Perms::RW).unwrap();
    // pte_mkwrite: WRITE, and DIRTY because MODIFIED is set.
    assert_eq!(
        t.query(Gpa::new(0x1000)).unwrap().unwrap().raw,
        base | MODIFIED | WRITE | D
    );
    // A clean writable page (mapped cold) gets WRITE only: its first write is TLB Modified.
    t.map_with(
        range(0x10_0000, 0x1000),
        Hpa::new(0x9000),
        Attrs::normal(Perms::RW),
        MapOptions {
            max_level: None,
            young_dirty: false,
        },
    )
    .unwrap();
    let pgd = e.fmt.pgd(t.root()).unwrap();
    assert!(walker::kvm_fast_path(&mut e.mem(), pgd, &e.walk, 0x10_0000, false).unwrap());
    match walker::peek(&e.mem(), pgd, &e.walk, 0x10_0000, Access::Write) {
        Err(MipsFault::Tlb(x)) => assert_eq!(x.kind, MipsTlbExc::Modified),
        r => panic!("{r:?}"),
    }
    assert!(walker::peek_after_fast_path(&e.mem(), pgd, &e.walk, 0x10_0000, Access::Write).is_ok());
}

#[test]
fn big_endian_hosts_store_entries_most_significant_byte_first() {
    let (inv, statics) = invalid_tables(&[11, 11, 11], STATICS, true);
    let fmt = MipsBe::new(MipsConfig::linux64_16k(inv)).unwrap();
    let host = HeapHost::new(BASE, WINDOW, 16384);
    let mut t = Table::new(fmt.clone(), &host).unwrap();
    let mut b = [0u8; 8];
    assert!(host.read_phys(t.root().raw(), &mut b));
    assert_eq!(u64::from_be_bytes(b), inv[1]);
    t.map(
        range(0x4000, 0x4000),
        Hpa::new(0x1234_4000),
        Attrs::normal(Perms::RX),
    )
    .unwrap();
    let m = t.query(Gpa::new(0x4000)).unwrap().unwrap();
    // 16 KiB pages: PFN from bit 16.
    assert_eq!(m.raw, 0x48d1 << 16 | 3 << 11 | V | ACCESSED | PRESENT);
    let w = walk_cfg(14, &[11, 11, 11], true);
    let mem = Mem {
        host: &host,
        statics: &statics,
    };
    let tr = walker::peek(
        &mem,
        fmt.pgd(t.root()).unwrap(),
        &w,
        0x7ff8,
        Access::ExecUser,
    )
    .unwrap();
    assert_eq!((tr.hpa, tr.page_size, tr.pte), (0x1234_7ff8, 0x4000, m.raw));
    // Read as little-endian the same table means nothing.
    let le = walk_cfg(14, &[11, 11, 11], false);
    assert!(walker::peek(
        &mem,
        fmt.pgd(t.root()).unwrap(),
        &le,
        0x7ff8,
        Access::ExecUser
    )
    .is_err());
}

#[test]
fn invalid_layouts_and_configurations_are_typed_errors() {
    let (inv, _) = invalid_tables(&[9, 9, 10], STATICS, false);
    let good = MipsConfig::linux64_4k(inv);
    let what = |cfg: MipsConfig| match MipsLe::new(cfg) {
        Err(Error::InvalidConfig { what, .. }) => what,
        other => panic!("{cfg:?} gave {other:?}"),
    };
    let l = good.layout;
    let with = |layout: MipsLayout| MipsConfig { layout, ..good };
    assert_eq!(
        what(with(MipsLayout { write: 0, ..l })),
        "MIPS PTE fields overlap"
    );
    assert_eq!(
        what(with(MipsLayout { accessed: 12, ..l })),
        "MIPS PTE fields overlap"
    );
    assert_eq!(
        what(with(MipsLayout { modified: 64, ..l })),
        "MIPS PTE field beyond the word"
    );
    assert_eq!(
        what(with(MipsLayout { pfn_shift: 30, ..l })),
        "MIPS PTE PFN field beyond the word"
    );
    assert_eq!(
        what(with(MipsLayout { valid: 5, ..l })),
        "MIPS PTE hardware fields not in EntryLo order"
    );
    assert_eq!(
        what(with(MipsLayout { pfn_shift: 15, ..l })),
        "MIPS PTE hardware fields not in EntryLo order"
    );
    assert_eq!(
        what(with(MipsLayout {
            no_exec: Some(4),
            no_read: Some(5),
            ..l
        })),
        "MIPS PTE RI/XI not just below G"
    );
    assert_eq!(
        what(with(MipsLayout { no_exec: None, ..l })),
        "MIPS PTE layout with only one of RI/XI"
    );
    let high = MipsLayout { present: 60, ..l };
    assert_eq!(what(with(high)), "MIPS PTE software bit above G");
    assert_eq!(
        what(MipsConfig {
            page_shift: 11,
            ..good
        }),
        "MIPS page shift"
    );
    assert_eq!(what(MipsConfig { levels: 4, ..good }), "MIPS level count");
    assert_eq!(
        what(MipsConfig {
            index_bits: [9, 14, 10],
            ..good
        }),
        "MIPS table index width"
    );
    assert_eq!(what(MipsConfig { pabits: 60, ..good }), "MIPS PABITS");
    assert_eq!(
        what(MipsConfig {
            cca_writeback: 2,
            ..good
        }),
        "MIPS write-back CCA"
    );
    assert_eq!(
        what(MipsConfig {
            cca_writeback: 8,
            ..good
        }),
        "MIPS write-back CCA"
    );
    for window in [0, 0x9800_0000_0000_1000, 0xc000_0000_0000_0000] {
        assert_eq!(
            what(MipsConfig {
                table_window: window,
                ..good
            }),
            "MIPS table window (not an xkphys base)"
        );
    }
    for bad in [0, inv[0] + 8, 0x1000_0000, 0xc000_0000_0000_0000] {
        assert_eq!(
            what(MipsConfig {
                invalid_tables: [bad, inv[1]],
                ..good
            }),
            "MIPS invalid table"
        );
    }
    // A layout without RIXI is accepted; it cannot express no-execute.
    let plain = MipsLayout {
        no_exec: None,
        no_read: None,
        ..l
    };
    let f = MipsLe::new(with(plain)).unwrap();
    assert!(f.check_attrs(&Attrs::normal(Perms::READ)).is_err());
    assert!(f.check_attrs(&Attrs::normal(Perms::RX)).is_ok());
    assert_eq!(f.entrylo(RI | XI | V), 0x2, "no rotation without RIXI");
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_the_table_unchanged() {
    let e = Env::four_k();
    let mut t = Table::new(e.fmt.clone(), &e.host).unwrap();
    let rw = Attrs::normal(Perms::RW);
    t.map(range(0x20_0000, 0x1000), Hpa::new(0x4000_0000), rw)
        .unwrap();
    let before = (t.stats(), e.host.outstanding_bytes());
    let attrs_errors = [
        Attrs::normal(Perms::EXEC),
        Attrs::normal(Perms::WRITE),
        Attrs::normal(Perms::empty()),
        Attrs::normal(Perms::READ | Perms::EXEC_SUPER),
        Attrs {
            mem: MemType::WriteThrough,
            ..rw
        },
        Attrs {
            mem: MemType::Device,
            ..rw
        },
        Attrs {
            mem: MemType::WriteCombining,
            ..rw
        },
        Attrs {
            ignore_guest_memtype: true,
            ..rw
        },
    ];
    let mut cases: Vec<(Result<(), Error>, Error)> = attrs_errors
        .iter()
        .map(|&a| {
            (
                t.map(range(0, 0x1000), Hpa::new(0), a),
                Error::UnsupportedAttrs { attrs: a },
            )
        })
        .collect();
    cases.extend([
        (
            t.map(range(0x800, 0x1000), Hpa::new(0), rw),
            Error::UnalignedGpa {
                value: 0x800,
                align: 0x1000,
            },
        ),
        (
            t.map(range(0, 0x1000), Hpa::new(0x10), rw),
            Error::UnalignedHpa {
                hpa: Hpa::new(0x10),
                align: 0x1000,
            },
        ),
        (
            t.map(range(1 << 40, 0x1000), Hpa::new(0), rw),
            Error::GpaTooWide {
                gpa: Gpa::new((1 << 40) + 0xfff),
                bits: 40,
            },
        ),
        (
            t.map(range(0, 0x1000), Hpa::new(1 << 48), rw),
            Error::HpaTooWide {
                hpa: Hpa::new((1 << 48) + 0xfff),
                bits: 48,
            },
        ),
        // No huge leaves: level 1 is a leaf size this geometry lacks.
        (
            t.split(range(0, 0x1000), Level::new(1).unwrap()),
            Error::InvalidLevel {
                level: Level::new(1).unwrap(),
            },
        ),
        (
            t.map_with(
                range(0, 0x1000),
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
        (
            t.map(range(0x1f_f000, 0x2000), Hpa::new(0), rw),
            Error::AlreadyMapped {
                gpa: Gpa::new(0x20_0000),
            },
        ),
        (
            t.protect(range(0, 0x1000), Perms::WRITE),
            Error::UnsupportedAttrs {
                attrs: Attrs::normal(Perms::WRITE),
            },
        ),
    ]);
    for (got, want) in cases {
        assert_eq!(got, Err(want));
        assert_eq!((t.stats(), e.host.outstanding_bytes()), before);
    }
    // A 2 MiB-aligned map still uses 4 KiB leaves.
    t.map(range(0x40_0000, 0x20_0000), Hpa::new(0x40_0000), rw)
        .unwrap();
    assert_eq!(t.stats().leaves, [513, 0, 0, 0, 0]);
}

#[test]
fn pgd_pointer_and_frozen_value() {
    let e = Env::four_k();
    assert_eq!(e.fmt.pgd(Hpa::new(0x4_2000)).unwrap(), XKPHYS | 0x4_2000);
    assert_eq!(
        e.fmt.pgd(Hpa::new(0x4_1000)),
        Err(Error::UnalignedHpa {
            hpa: Hpa::new(0x4_1000),
            align: 0x2000
        })
    );
    assert!(matches!(
        e.fmt.pgd(Hpa::new(1 << 48)),
        Err(Error::HpaTooWide { .. })
    ));
    let f = e.fmt.frozen(Level::LEAF);
    assert_eq!(f, WRITE | ACCESSED | MODIFIED);
    assert_eq!(e.fmt.classify(f, Level::LEAF), EntryKind::Frozen);
    assert_eq!(e.fmt.entrylo(f) & 2, 0, "never valid as a PTE");
    // Directories: the ckseg0 invalid table through xkphys CCA 3 (= `cca_writeback`, K0).
    let inv = e.fmt.config().invalid_tables;
    assert_eq!(inv, [CKSEG0 + 0x0840_0000, CKSEG0 + 0x0840_1000]);
    let (l1, l2) = (Level::new(1).unwrap(), Level::new(2).unwrap());
    assert_eq!(e.fmt.frozen(l1), 0x9800_0000_0840_0000);
    assert_eq!(e.fmt.frozen(l2), 0x9800_0000_0840_1000);
    for l in [l1, l2] {
        assert_eq!(e.fmt.classify(e.fmt.frozen(l), l), EntryKind::Frozen);
        // The PTE frozen value in a directory would be dereferenced: not a frozen directory.
        assert_eq!(e.fmt.classify(f, l), EntryKind::Other);
    }
    assert!(e.fmt.caches_empty_entries());
}

#[test]
fn table_image_export_with_a_chosen_root_walks_in_the_independent_walker() {
    const ROOT: u64 = 0x0123_0000;
    let (inv, statics) = invalid_tables(&[11, 11, 11], ROOT + (1 << 20), false);
    let host = HeapHost::new(ROOT, 1 << 20, 16384);
    let fmt = MipsLe::new(MipsConfig::linux64_16k(inv)).unwrap();
    let mut t = Table::new(fmt.clone(), &host).unwrap();
    assert_eq!(t.root(), Hpa::new(ROOT));
    t.map(
        range(0x8000_0000, 0x10_0000),
        Hpa::new(0x2_0000_0000),
        Attrs::normal(Perms::RWX),
    )
    .unwrap();
    let img = host.image(t.root());
    let dir = std::env::temp_dir().join(format!("tdp-mips-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    img.write(&dir.join("mips")).unwrap();
    let mut bytes = std::fs::read(dir.join("mips.bin")).unwrap();
    assert!(std::fs::read_to_string(dir.join("mips.txt"))
        .unwrap()
        .contains(&format!("root={ROOT:#x}")));
    std::fs::remove_dir_all(dir).unwrap();
    bytes.extend_from_slice(&statics.bytes);
    let flat = FlatImage::new(ROOT, bytes);
    let w = walk_cfg(14, &[11, 11, 11], false);
    let pgd = fmt.pgd(t.root()).unwrap();
    let tr = walker::peek(&flat, pgd, &w, 0x800f_1234, Access::Write).unwrap();
    assert_eq!(tr.hpa, 0x2_000f_1234);
    // Unmapped GPAs go through the invalid tables to an empty PTE: TLB Invalid.
    for gpa in [0, 0x7fff_c000, 0x4000_0000_0000] {
        match walker::peek(&flat, pgd, &w, gpa, Access::Read) {
            Err(MipsFault::Tlb(x)) => assert_eq!((x.kind, x.pte), (MipsTlbExc::Invalid, 0)),
            r => panic!("{gpa:#x}: {r:?}"),
        }
    }
}
