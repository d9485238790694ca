//! Hand-checked raw entries (and their big-endian bytes) and behaviour pinned down by name, for
//! the Power radix partition-scoped format.
//!
//! Expected values are written out from the Book III layouts (LSB-0 numbering of the value:
//! V 63, L 62, SW0 61, NLB 59:8 / RPN 56:12, SW1 11, R 8, C 7, ATT 5:4, NLS 4:0, EAA 3:0) and
//! checked against memory and against the independent walker, never against the format's own
//! decoding.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use tdp_arch_ppc::{Radix, RadixGranule, RadixOptions, Tlbie, TLBIE_MAX_PAGES};
use tdp_core::testing::{HeapHost, HostEvent};
use tdp_core::{
    Attrs, Error, Gpa, GpaRange, Host, Hpa, Level, MapOptions, MemType, Perms, PteFormat, Table,
    TableMeta, TlbFlush,
};
use tdp_walkers::radix::{self, RadixCaps, RadixFault};
use tdp_walkers::{Access, FlatImage, PhysMem};

const BASE: u64 = 0x1_0000_0000;
const LPID: u32 = 0x2a;
const RC_HW: RadixCaps = RadixCaps { rc_update: true };
const RC_FAULT: RadixCaps = RadixCaps { rc_update: false };

fn radix(granule: RadixGranule) -> Radix {
    Radix::new(RadixOptions {
        granule,
        pa_bits: 52,
        lpid_bits: 12,
    })
    .unwrap()
}

fn granule_bytes(granule: RadixGranule) -> usize {
    match granule {
        RadixGranule::Page4K => 4096,
        RadixGranule::Page64K => 256,
    }
}

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

fn pate(f: &Radix, root: Hpa) -> u64 {
    f.partition_table_entry(root, Gpa::new(0x10_0000), 4)
        .unwrap()
        .dw0
}

fn bytes(host: &HeapHost, pa: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    assert!(host.read_phys(pa, &mut b), "{pa:#x} outside the window");
    b
}

fn be(host: &HeapHost, pa: u64) -> u64 {
    u64::from_be_bytes(bytes(host, pa))
}

const V: u64 = 1 << 63;
const L: u64 = 1 << 62;
const NLB: u64 = 0x0fff_ffff_ffff_ff00;

/// The entries of the walk of `gpa`, root first, as (address, value), read big-endian straight
/// from memory: the root has 13 index bits, each directory's NLS gives the next table's.
fn chain(host: &HeapHost, root: Hpa, gpa: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut table, mut bits, mut left) = (root.raw(), 13u32, 52u32);
    loop {
        left -= bits;
        let pa = table + ((gpa >> left) & ((1 << bits) - 1)) * 8;
        let e = be(host, pa);
        out.push((pa, e));
        if e & V == 0 || e & L != 0 {
            return out;
        }
        table = e & NLB;
        bits = (e & 0x1f) as u32;
    }
}

/// Every non-zero entry reachable from the root, read the same way.
fn tree(host: &HeapHost, root: Hpa) -> Vec<(u64, u64)> {
    fn walk(host: &HeapHost, table: u64, bits: u32, out: &mut Vec<(u64, u64)>) {
        for i in 0..1u64 << bits {
            let pa = table + i * 8;
            let e = be(host, pa);
            if e != 0 {
                out.push((pa, e));
                if e & V != 0 && e & L == 0 {
                    walk(host, e & NLB, (e & 0x1f) as u32, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(host, root.raw(), 13, &mut out);
    out
}

struct Phys<'a>(&'a HeapHost);

impl PhysMem for Phys<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.0.read_phys(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.0.write_phys(pa, buf)
    }
}

#[test]
fn a_4k_leaf_and_its_directories_match_book_iii_big_endian_in_memory() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(radix(RadixGranule::Page4K), &host).unwrap();
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x1234_5000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    let c = chain(&host, t.root(), 0x1000);
    assert_eq!(c.len(), 4);
    // Directories: V | NLB (the child table) | NLS 9, L = 0.
    for w in c.windows(2) {
        let child = w[1].0 & !0xfff;
        assert_eq!(w[0].1, V | child | 9, "PDE at {:#x}", w[0].0);
    }
    // Leaf: V | L | RPN | R (0x100) | C (0x80) | EAA read (0x4) + read/write (0x2).
    let (leaf_pa, leaf) = c[3];
    assert_eq!(leaf, 0xc000_0000_1234_5186);
    // Most significant byte first in memory, whatever the host's byte order.
    assert_eq!(
        bytes(&host, leaf_pa),
        [0xc0, 0x00, 0x00, 0x00, 0x12, 0x34, 0x51, 0x86]
    );
    let root_entry = bytes(&host, c[0].0);
    assert_eq!((root_entry[0], root_entry[7]), (0x80, 0x09));
    assert_eq!(t.query(Gpa::new(0x1000)).unwrap().unwrap().raw, leaf);
}

#[test]
fn the_64k_geometry_links_256_byte_leaf_tables_with_nls_5() {
    let host = HeapHost::new(BASE, 1 << 20, 256);
    let f = radix(RadixGranule::Page64K);
    let mut t = Table::new(f.clone(), &host).unwrap();
    assert_eq!(host.take_events(), vec![HostEvent::Alloc(t.root(), 65536)]);
    t.map(
        range(0x3_0000, 0x1_0000),
        Hpa::new(0x50_0000),
        Attrs::normal(Perms::RX),
    )
    .unwrap();
    let sizes: Vec<usize> = host
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            HostEvent::Alloc(_, s) => Some(s),
            _ => None,
        })
        .collect();
    // Reserved leaf table first, then the directories above it.
    assert_eq!(sizes, vec![256, 4096, 4096]);
    let c = chain(&host, t.root(), 0x3_0000);
    assert_eq!(c.len(), 4);
    assert_eq!(c[0].1 & 0x1f, 9);
    assert_eq!(c[1].1 & 0x1f, 9);
    // The last directory points at a 256-byte table (32 entries of 64 KiB) aligned to 256 bytes.
    assert_eq!(c[2].1 & 0x1f, 5);
    assert_eq!((c[2].1 & NLB) % 256, 0);
    assert_eq!(c[3].0, (c[2].1 & NLB) + 3 * 8, "index 3 of the 64K table");
    // Leaf: V | L | RPN 0x50_0000 | R | EAA read + execute.
    assert_eq!(c[3].1, V | L | 0x50_0000 | 0x100 | 0x5);
    let tr = radix::peek(
        &Phys(&host),
        pate(&f, t.root()),
        &RC_HW,
        0x3_abcd,
        Access::ExecUser,
    )
    .unwrap();
    assert_eq!((tr.hpa, tr.page_size, tr.level), (0x50_abcd, 0x1_0000, 3));
}

#[test]
fn huge_leaves_carry_att_and_the_device_record() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = radix(RadixGranule::Page4K);
    let mut t = Table::new(f.clone(), &host).unwrap();
    let wc_rx = Attrs {
        perms: Perms::RX,
        mem: MemType::WriteCombining,
        ignore_guest_memtype: false,
    };
    t.map(range(0x20_0000, 0x20_0000), Hpa::new(0x4020_0000), wc_rx)
        .unwrap();
    // 2 MiB: V | L | RPN | R | ATT tolerant I/O (0x30) | EAA read + execute.
    let c = chain(&host, t.root(), 0x20_0000);
    assert_eq!(c.len(), 3);
    assert_eq!(c[2].1, V | L | 0x4020_0000 | 0x100 | 0x30 | 0x5);

    let dev = Attrs {
        perms: Perms::READ,
        mem: MemType::Device,
        ignore_guest_memtype: false,
    };
    t.map_with(
        range(0x4000_0000, 0x4000_0000),
        Hpa::new(0xc000_0000),
        dev,
        MapOptions {
            max_level: None,
            young_dirty: false,
        },
    )
    .unwrap();
    // 1 GiB, cold: V | L | RPN | SW1 (0x800) | ATT non-idempotent I/O (0x20) | EAA read.
    let c = chain(&host, t.root(), 0x4000_0000);
    assert_eq!(c.len(), 2);
    assert_eq!(c[1].1, V | L | 0xc000_0000 | 0x800 | 0x20 | 0x4);
    let uc = Attrs {
        mem: MemType::Uncached,
        ..dev
    };
    t.map(range(0x8000_0000, 0x1000), Hpa::new(0xd000_0000), uc)
        .unwrap();
    assert_eq!(
        chain(&host, t.root(), 0x8000_0000).last().unwrap().1,
        V | L | 0xd000_0000 | 0x100 | 0x20 | 0x4
    );
    let p = pate(&f, t.root());
    let att = |gpa| {
        radix::peek(&Phys(&host), p, &RC_HW, gpa, Access::Read)
            .unwrap()
            .att
    };
    assert_eq!(
        (att(0x20_0000), att(0x4000_0000), att(0x8000_0000)),
        (0b11, 0b10, 0b10)
    );
    let q = |gpa| t.query(Gpa::new(gpa)).unwrap().unwrap().attrs;
    assert_eq!((q(0x4000_0000), q(0x8000_0000)), (dev, uc));
}

#[test]
fn guarded_memory_cannot_be_made_executable() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = radix(RadixGranule::Page4K);
    assert!(f.perms_depend_on_memtype());
    let mut t = Table::new(f, &host).unwrap();
    for mem in [MemType::Uncached, MemType::Device] {
        let attrs = Attrs {
            perms: Perms::RX,
            mem,
            ignore_guest_memtype: false,
        };
        assert_eq!(
            t.map(range(0, 0x1000), Hpa::new(0x9000), attrs),
            Err(Error::UnsupportedAttrs { attrs })
        );
    }
    let dev = Attrs {
        perms: Perms::RW,
        mem: MemType::Device,
        ignore_guest_memtype: false,
    };
    t.map(range(0x2000, 0x1000), Hpa::new(0x9000), dev).unwrap();
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x8000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    let before = (t.stats(), tree(&host, t.root()));
    // The normal page could take RX, the device page cannot: nothing changes at all.
    assert_eq!(
        t.protect(range(0x1000, 0x2000), Perms::RX),
        Err(Error::UnsupportedAttrs {
            attrs: Attrs {
                perms: Perms::RX,
                ..dev
            }
        })
    );
    assert_eq!((t.stats(), tree(&host, t.root())), before);
    t.protect(range(0x1000, 0x1000), Perms::RX).unwrap();
}

#[test]
fn a_no_access_leaf_is_valid_and_refuses_every_access() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = radix(RadixGranule::Page4K);
    let mut t = Table::new(f.clone(), &host).unwrap();
    t.map(
        range(0x5000, 0x1000),
        Hpa::new(0x7000),
        Attrs::normal(Perms::empty()),
    )
    .unwrap();
    assert_eq!(
        chain(&host, t.root(), 0x5000).last().unwrap().1,
        V | L | 0x7000 | 0x100
    );
    let p = pate(&f, t.root());
    for a in Access::ALL {
        assert!(
            matches!(
                radix::peek(&Phys(&host), p, &RC_HW, 0x5008, a),
                Err(RadixFault::Permission { .. })
            ),
            "{a:?}"
        );
    }
    t.protect(range(0x5000, 0x1000), Perms::RW).unwrap();
    let tr = radix::peek(&Phys(&host), p, &RC_HW, 0x5008, Access::Write).unwrap();
    assert_eq!(tr.hpa, 0x7008);
}

#[test]
fn inexpressible_attributes_are_rejected_with_nothing_changed() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(radix(RadixGranule::Page4K), &host).unwrap();
    let a = |perms, mem| Attrs {
        perms,
        mem,
        ignore_guest_memtype: false,
    };
    let bad = [
        a(Perms::WRITE, MemType::WriteBack),
        a(Perms::WRITE | Perms::EXEC, MemType::WriteBack),
        a(Perms::READ | Perms::EXEC_SUPER, MemType::WriteBack),
        a(Perms::READ | Perms::EXEC_USER, MemType::WriteBack),
        a(Perms::READ, MemType::WriteThrough),
        a(Perms::READ, MemType::WriteProtect),
        a(Perms::EXEC, MemType::Device),
        Attrs {
            ignore_guest_memtype: true,
            ..Attrs::normal(Perms::RW)
        },
    ];
    let before = (t.stats(), host.outstanding_bytes(), tree(&host, t.root()));
    for attrs in bad {
        assert_eq!(
            t.map(range(0, 0x1000), Hpa::new(0x5000), attrs),
            Err(Error::UnsupportedAttrs { attrs })
        );
        assert_eq!(
            (t.stats(), host.outstanding_bytes(), tree(&host, t.root())),
            before
        );
    }
}

/// A host that, at every TLB flush, records what the independent walker sees at the start of the
/// flushed range: break-before-make means the old entry is already gone when the flush runs.
struct Spy<'a> {
    inner: &'a HeapHost,
    pate: Cell<u64>,
    seen: RefCell<Vec<(TlbFlush, Result<radix::RadixTranslation, RadixFault>)>>,
}

// SAFETY: every method forwards to `HeapHost`, which upholds the contract; `flush_tlb` only reads
// table memory through the host's physical-read helper before forwarding.
unsafe impl Host for Spy<'_> {
    fn alloc_table(&self, size: usize) -> Option<Hpa> {
        self.inner.alloc_table(size)
    }
    unsafe fn free_table(&self, pa: Hpa, size: usize) {
        // SAFETY: the engine upholds `free_table`'s contract for this host, hence for the inner.
        unsafe { self.inner.free_table(pa, size) }
    }
    fn phys_to_virt(&self, pa: Hpa) -> NonNull<u8> {
        self.inner.phys_to_virt(pa)
    }
    fn meta(&self, pa: Hpa) -> NonNull<TableMeta> {
        self.inner.meta(pa)
    }
    fn flush_tlb(&self, flush: TlbFlush) {
        if let TlbFlush::Range { start, .. } = flush {
            let w = radix::peek(
                &Phys(self.inner),
                self.pate.get(),
                &RC_HW,
                start.raw(),
                Access::Read,
            );
            self.seen.borrow_mut().push((flush, w));
        }
        self.inner.flush_tlb(flush);
    }
}

#[test]
fn split_and_collapse_break_before_make_with_the_entry_invalid_at_the_flush() {
    let heap = HeapHost::new(BASE, 1 << 20, 4096);
    let spy = Spy {
        inner: &heap,
        pate: Cell::new(0),
        seen: RefCell::new(Vec::new()),
    };
    let f = radix(RadixGranule::Page4K);
    let mut t = Table::new(f.clone(), &spy).unwrap();
    spy.pate.set(pate(&f, t.root()));
    t.map(
        range(0x20_0000, 0x20_0000),
        Hpa::new(0x4020_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    assert!(spy.seen.borrow().is_empty(), "a map over empty entries");

    // Split: the 2 MiB leaf is invalidated and flushed before the directory goes in.
    t.split(range(0x20_0000, 0x20_0000), Level::LEAF).unwrap();
    let seen = spy.seen.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].0,
        TlbFlush::Range {
            start: Gpa::new(0x20_0000),
            size: 0x20_0000,
            level: Level::new(1),
            tables: false
        }
    );
    assert!(
        matches!(seen[0].1, Err(RadixFault::NotValid { level: 2, .. })),
        "{:?}",
        seen[0].1
    );
    let tr = radix::peek(
        &Phys(&heap),
        spy.pate.get(),
        &RC_HW,
        0x20_1234,
        Access::Write,
    )
    .unwrap();
    assert_eq!((tr.hpa, tr.page_size), (0x4020_1234, 0x1000));

    // Protect changes EAA in place: the only flush comes after, with the leaf still valid.
    t.protect(range(0x20_0000, 0x1000), Perms::READ).unwrap();
    let seen = spy.seen.take();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].1.is_ok(), "no break for a permission change");

    // Collapse: the directory is invalidated and flushed (walk caches too) before the leaf.
    t.protect(range(0x20_0000, 0x1000), Perms::RW).unwrap();
    spy.seen.take();
    t.collapse(range(0x20_0000, 0x20_0000)).unwrap();
    let seen = spy.seen.take();
    assert!(
        matches!(
            seen[0],
            (
                TlbFlush::Range {
                    tables: true,
                    level: None,
                    ..
                },
                Err(RadixFault::NotValid { level: 2, .. })
            )
        ),
        "{seen:?}"
    );
    let tr = radix::peek(
        &Phys(&heap),
        spy.pate.get(),
        &RC_HW,
        0x20_1234,
        Access::Write,
    )
    .unwrap();
    assert_eq!((tr.hpa, tr.page_size), (0x4020_1234, 0x20_0000));
    drop(t);
    assert_eq!(heap.outstanding_tables(), 0);
}

#[test]
fn reference_and_change_are_hardware_bits_that_survive_split_protect_and_collapse() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = radix(RadixGranule::Page4K);
    let mut t = Table::new(f.clone(), &host).unwrap();
    let cold = MapOptions {
        max_level: None,
        young_dirty: false,
    };
    t.map_with(
        range(0x20_0000, 0x20_0000),
        Hpa::new(0x4020_0000),
        Attrs::normal(Perms::RW),
        cold,
    )
    .unwrap();
    let p = pate(&f, t.root());
    // Cold leaf: a processor that does not record R/C itself takes the "set RC" interrupt.
    assert!(matches!(
        radix::peek(&Phys(&host), p, &RC_FAULT, 0x20_0000, Access::Read),
        Err(RadixFault::NeedsRc { .. })
    ));
    let m = t.query(Gpa::new(0x20_0000)).unwrap().unwrap();
    assert_eq!(f.volatile_bits(m.raw, m.level), 0x180, "R and C may be set");
    assert_eq!(f.ad_model(), tdp_core::AdModel::Hardware);
    radix::translate(&mut Phys(&host), p, &RC_HW, 0x20_1234, Access::Write).unwrap();
    let leaf = chain(&host, t.root(), 0x20_0000).last().unwrap().1;
    assert_eq!(leaf & 0x180, 0x180, "the walker set R and C");
    assert_eq!(f.volatile_bits(leaf, Level::new(1).unwrap()), 0);
    t.split(range(0x20_0000, 0x20_0000), Level::LEAF).unwrap();
    t.protect(range(0x20_0000, 0x20_0000), Perms::READ).unwrap();
    for gpa in [0x20_0000u64, 0x2f_f000, 0x3f_f000] {
        let tr = radix::peek(&Phys(&host), p, &RC_FAULT, gpa, Access::Read).unwrap();
        assert!(tr.reference && tr.change && !tr.write, "{gpa:#x}");
    }
    t.collapse(range(0x20_0000, 0x20_0000)).unwrap();
    assert_eq!(
        chain(&host, t.root(), 0x20_0000).last().unwrap().1,
        V | L | 0x4020_0000 | 0x180 | 0x4
    );
    // Young maps preset R, and C only where writable.
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x1000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    assert_eq!(
        chain(&host, t.root(), 0x1000).last().unwrap().1 & 0x180,
        0x100
    );
}

#[test]
fn partition_table_entry_has_both_doublewords_and_the_walker_accepts_it() {
    let f = radix(RadixGranule::Page4K);
    let e = f
        .partition_table_entry(Hpa::new(0x1_2345_0000), Gpa::new(0x200_0000), 12)
        .unwrap();
    // HR | RTS1 0b10 (bits 62:61) | RPDB | RTS2 0b101 (bits 7:5) | RPDS 13.
    assert_eq!(e.dw0, 0xc000_0001_2345_00ad);
    // GR | PRTB | PRTS.
    assert_eq!(e.dw1, 0x8000_0000_0200_000c);
    assert_eq!(
        e.to_be_bytes(),
        [
            0xc0, 0x00, 0x00, 0x01, 0x23, 0x45, 0x00, 0xad, 0x80, 0x00, 0x00, 0x00, 0x02, 0x00,
            0x00, 0x0c
        ]
    );
    let r = radix::decode_pate(e.dw0).unwrap();
    assert_eq!(
        (r.tree_bits, r.root, r.root_index_bits),
        (52, 0x1_2345_0000, 13)
    );
    assert_eq!(
        f.partition_table_entry(Hpa::new(0x1_2345_8000), Gpa::new(0), 0),
        Err(Error::UnalignedHpa {
            hpa: Hpa::new(0x1_2345_8000),
            align: 65536
        })
    );
    assert!(matches!(
        f.partition_table_entry(Hpa::new(1 << 52), Gpa::new(0), 0),
        Err(Error::HpaTooWide { bits: 52, .. })
    ));
    assert!(matches!(
        f.partition_table_entry(Hpa::new(0x1_0000), Gpa::new(0), 32),
        Err(Error::InvalidConfig { value: 32, .. })
    ));
    assert_eq!(
        f.partition_table_entry(Hpa::new(0x1_0000), Gpa::new(0x1000), 1),
        Err(Error::UnalignedGpa {
            value: 0x1000,
            align: 0x2000
        })
    );
    assert!(matches!(
        f.partition_table_entry(Hpa::new(0x1_0000), Gpa::new(1 << 52), 0),
        Err(Error::GpaTooWide { bits: 52, .. })
    ));
}

fn tlbie(ric: u8, rb: u64) -> Tlbie {
    Tlbie {
        ric,
        prs: 0,
        r: 1,
        rs: u64::from(LPID),
        rb,
    }
}

#[test]
fn tlbie_operands_follow_the_flushed_range() {
    let f4 = radix(RadixGranule::Page4K);
    let f64 = radix(RadixGranule::Page64K);
    let r = |start, size, level: Option<u8>, tables| TlbFlush::Range {
        start: Gpa::new(start),
        size,
        level: level.map(|l| Level::new(l).unwrap()),
        tables,
    };
    let seq = |f: &Radix, flush| -> Vec<Tlbie> {
        f.tlbie(flush, LPID, TLBIE_MAX_PAGES).unwrap().collect()
    };
    // One 4 KiB page: RIC 0, PRS 0, R 1, RS = LPID, RB = EPN | AP 0b000.
    assert_eq!(
        seq(&f4, r(0x7000, 0x1000, Some(0), false)),
        vec![tlbie(0, 0x7000)]
    );
    // 2 MiB: AP 0b001 in RB bits 7:5. 1 GiB: AP 0b010.
    assert_eq!(
        seq(&f4, r(0x20_0000, 0x20_0000, Some(1), false)),
        vec![tlbie(0, 0x20_0020)]
    );
    assert_eq!(
        seq(&f4, r(0x4000_0000, 0x4000_0000, Some(2), false)),
        vec![tlbie(0, 0x4000_0040)]
    );
    // 64 KiB pages: AP 0b101; one per page, the address aligned down.
    assert_eq!(
        seq(&f64, r(0x1_8000, 0x1_0000, Some(0), false)),
        vec![tlbie(0, 0x1_00a0), tlbie(0, 0x2_00a0)]
    );
    // Mixed levels: a run per leaf size.
    assert_eq!(
        seq(&f4, r(0x1000, 0x1000, None, false)),
        vec![tlbie(0, 0x1000), tlbie(0, 0x20), tlbie(0, 0x40)]
    );
    // A table was freed: the same runs, then the page-walk cache of the LPID (RIC 1, IS 2).
    assert_eq!(
        seq(&f64, r(0x2_0000, 0x1_0000, None, true)),
        vec![
            tlbie(0, 0x2_00a0),
            tlbie(0, 0x20),
            tlbie(0, 0x40),
            tlbie(1, 0x800)
        ]
    );
    // Everything: RIC 2, IS 2.
    assert_eq!(seq(&f4, TlbFlush::All), vec![tlbie(2, 0x800)]);
    // Beyond the ceiling: one IS 2 instead (RIC 0 for leaves only, RIC 2 when tables changed).
    let n = |size| {
        f4.tlbie(r(0, size, Some(0), false), LPID, 33)
            .unwrap()
            .len()
    };
    assert_eq!(n(33 << 12), 33);
    assert_eq!(
        seq(&f4, r(0, 34 << 12, Some(0), false)),
        vec![tlbie(0, 0x800)]
    );
    assert_eq!(seq(&f4, r(0, 1 << 30, None, true)), vec![tlbie(2, 0x800)]);
    assert_eq!(seq(&f4, r(0x1000, 0, Some(0), false)), vec![]);
    assert_eq!(
        f4.tlbie(TlbFlush::All, 1 << 12, 33).err(),
        Some(Error::InvalidConfig {
            what: "LPID wider than the implemented LPID bits",
            value: 1 << 12
        })
    );
    assert_eq!(
        f4.tlbie(r(0, 0x1000, Some(3), false), LPID, 33).err(),
        Some(Error::InvalidLevel {
            level: Level::new(3).unwrap()
        })
    );
}

#[test]
fn engine_flushes_translate_to_the_tlbies_they_need() {
    let host = HeapHost::new(BASE, 1 << 20, 256);
    let f = radix(RadixGranule::Page64K);
    let mut t = Table::new(f.clone(), &host).unwrap();
    t.map_with(
        range(0x20_0000, 0x4_0000),
        Hpa::new(0x4020_0000),
        Attrs::normal(Perms::RW),
        MapOptions {
            max_level: Level::new(0),
            young_dirty: true,
        },
    )
    .unwrap();
    host.take_events();
    let flushes = |host: &HeapHost| -> Vec<TlbFlush> {
        host.take_events()
            .into_iter()
            .filter_map(|e| match e {
                HostEvent::Flush(fl) => Some(fl),
                _ => None,
            })
            .collect()
    };
    t.protect(range(0x21_0000, 0x1_0000), Perms::READ).unwrap();
    let fl = flushes(&host);
    assert_eq!(fl.len(), 1);
    let ops: Vec<Tlbie> = f.tlbie(fl[0], LPID, TLBIE_MAX_PAGES).unwrap().collect();
    assert_eq!(ops, vec![tlbie(0, 0x21_0000 | 0b101 << 5)]);
    // Unmapping one 2 MiB block frees its 256-byte table (the block next to it keeps the
    // directories): 32 pages of 64 KiB plus one per larger size, then the page-walk cache.
    t.map(
        range(0x40_0000, 0x1_0000),
        Hpa::new(0x4040_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    host.take_events();
    t.unmap(range(0x20_0000, 0x4_0000)).unwrap();
    let fl = flushes(&host);
    assert_eq!(
        fl,
        vec![TlbFlush::Range {
            start: Gpa::new(0x20_0000),
            size: 0x20_0000,
            level: None,
            tables: true
        }]
    );
    let ops: Vec<Tlbie> = f.tlbie(fl[0], LPID, 64).unwrap().collect();
    assert_eq!(ops.len(), 32 + 1 + 1 + 1);
    assert_eq!(ops[0], tlbie(0, 0x20_0000 | 0b101 << 5));
    assert_eq!(ops[31], tlbie(0, 0x3f_0000 | 0b101 << 5));
    assert_eq!(ops[32], tlbie(0, 0x20_0000 | 0b001 << 5));
    assert_eq!(ops[33], tlbie(0, 0b010 << 5));
    assert_eq!(ops[34], tlbie(1, 0x800));
    // With Linux's ceiling (33 pages) that is one flush of everything for the LPID.
    let ops: Vec<Tlbie> = f.tlbie(fl[0], LPID, TLBIE_MAX_PAGES).unwrap().collect();
    assert_eq!(ops, vec![tlbie(2, 0x800)]);
}

#[test]
fn invalid_configurations_are_rejected() {
    for (pa_bits, lpid_bits) in [(31u8, 12u8), (58, 12), (52, 0), (52, 33)] {
        assert!(
            matches!(
                Radix::new(RadixOptions {
                    granule: RadixGranule::Page4K,
                    pa_bits,
                    lpid_bits
                }),
                Err(Error::InvalidConfig { .. })
            ),
            "{pa_bits} {lpid_bits}"
        );
    }
    assert!(Radix::new(RadixOptions {
        granule: RadixGranule::Page64K,
        pa_bits: 57,
        lpid_bits: 32
    })
    .is_ok());
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_the_table_unchanged() {
    for granule in [RadixGranule::Page4K, RadixGranule::Page64K] {
        let host = HeapHost::new(BASE, 1 << 20, granule_bytes(granule));
        let f = Radix::new(RadixOptions {
            granule,
            pa_bits: 44,
            lpid_bits: 12,
        })
        .unwrap();
        let page = f.geometry().page_size();
        let mut t = Table::new(f, &host).unwrap();
        let rw = Attrs::normal(Perms::RW);
        t.map(range(0x20_0000, 0x20_0000), Hpa::new(0x4000_0000), rw)
            .unwrap();
        let before = (t.stats(), host.outstanding_bytes(), tree(&host, t.root()));
        let l = |n| Level::new(n).unwrap();
        let cases: Vec<(Result<(), Error>, Error)> = vec![
            (
                t.map(range(page / 2, page), Hpa::new(0), rw),
                Error::UnalignedGpa {
                    value: page / 2,
                    align: page,
                },
            ),
            (
                t.map(range(page, page + page / 2), Hpa::new(0), rw),
                Error::UnalignedGpa {
                    value: page + page / 2,
                    align: page,
                },
            ),
            (
                t.map(range(page, page), Hpa::new(page + 0x800), rw),
                Error::UnalignedHpa {
                    hpa: Hpa::new(page + 0x800),
                    align: page,
                },
            ),
            (
                t.map(range((1 << 52) - page, 2 * page), Hpa::new(0), rw),
                Error::GpaTooWide {
                    gpa: Gpa::new((1 << 52) + page - 1),
                    bits: 52,
                },
            ),
            (
                t.map(range(0, 2 * page), Hpa::new((1 << 44) - page), rw),
                Error::HpaTooWide {
                    hpa: Hpa::new((1 << 44) + page - 1),
                    bits: 44,
                },
            ),
            (
                t.map_with(
                    range(0, page),
                    Hpa::new(0),
                    rw,
                    MapOptions {
                        max_level: Level::new(4),
                        young_dirty: true,
                    },
                ),
                Error::InvalidLevel { level: l(4) },
            ),
            (
                t.map(range(0x20_0000 - page, 2 * page), Hpa::new(0), rw),
                Error::AlreadyMapped {
                    gpa: Gpa::new(0x20_0000),
                },
            ),
            (
                t.split(range(0, page), l(3)),
                Error::InvalidLevel { level: l(3) },
            ),
            (
                t.unmap(range(u64::MAX - (page - 1), page)),
                Error::GpaTooWide {
                    gpa: Gpa::new(u64::MAX),
                    bits: 52,
                },
            ),
            (
                t.protect(range(0x20_0000, page), Perms::WRITE),
                Error::UnsupportedAttrs {
                    attrs: Attrs::normal(Perms::WRITE),
                },
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, Err(want), "{granule:?}");
        }
        assert_eq!(
            (t.stats(), host.outstanding_bytes(), tree(&host, t.root())),
            before
        );
        // Out of memory for the split a protect needs: nothing changed, nothing leaked.
        host.fail_nth_alloc(0);
        assert!(matches!(
            t.protect(range(0x20_0000 + page, page), Perms::READ),
            Err(Error::OutOfMemory { .. })
        ));
        assert!(host.clear_failure(), "the injected failure fired");
        assert_eq!(
            (t.stats(), host.outstanding_bytes(), tree(&host, t.root())),
            before
        );
    }
}

#[test]
fn a_full_physical_window_is_an_error_not_a_panic() {
    // The 64 KiB root fills the window: the first table (the 256-byte leaf table) cannot be
    // allocated.
    let host = HeapHost::new(BASE, 64 << 10, 256);
    let mut t = Table::new(radix(RadixGranule::Page64K), &host).unwrap();
    assert_eq!(
        t.map(range(0, 0x1_0000), Hpa::new(0), Attrs::normal(Perms::READ)),
        Err(Error::OutOfMemory { size: 256 })
    );
    assert_eq!(
        (host.outstanding_tables(), t.stats().total_leaves()),
        (1, 0)
    );
}

#[test]
fn teardown_frees_every_table_including_the_root_and_256_byte_tables() {
    let host = HeapHost::new(BASE, 4 << 20, 256);
    let mut t = Table::new(radix(RadixGranule::Page64K), &host).unwrap();
    let small = MapOptions {
        max_level: Level::new(0),
        young_dirty: true,
    };
    for gpa in [0u64, 1 << 40, 1 << 51, (1 << 52) - (4 << 20)] {
        t.map_with(
            range(gpa, 4 << 20),
            Hpa::new(0x1_0000_0000),
            Attrs::normal(Perms::RW),
            small,
        )
        .unwrap();
    }
    t.unmap(range(1 << 40, 2 << 20)).unwrap();
    t.collapse(range(0, 4 << 20)).unwrap();
    drop(t);
    let mut live = std::collections::BTreeMap::new();
    let mut sizes = std::collections::BTreeSet::new();
    for e in host.take_events() {
        match e {
            HostEvent::Alloc(pa, size) => {
                assert_eq!(pa.raw() % size as u64, 0, "table aligned to its size");
                assert!(live.insert(pa, size).is_none());
                sizes.insert(size);
            }
            HostEvent::Free(pa, size) => assert_eq!(live.remove(&pa), Some(size)),
            _ => {}
        }
    }
    assert!(live.is_empty(), "never freed: {live:?}");
    assert_eq!(
        sizes.into_iter().collect::<Vec<_>>(),
        vec![256, 4096, 65536]
    );
    assert_eq!(host.outstanding_tables(), 0);
}

#[test]
fn table_image_export_with_the_root_at_a_chosen_64k_aligned_address() {
    for granule in [RadixGranule::Page4K, RadixGranule::Page64K] {
        let base = 0x3_0001_0000u64;
        let host = HeapHost::new(base, 1 << 20, granule_bytes(granule));
        let f = radix(granule);
        let mut t = Table::new(f.clone(), &host).unwrap();
        assert_eq!(t.root(), Hpa::new(base));
        t.map(
            range(0x8000_0000, 0x40_0000),
            Hpa::new(0x2_0000_0000),
            Attrs::normal(Perms::RWX),
        )
        .unwrap();
        t.map(
            range((1 << 52) - 0x1_0000, 0x1_0000),
            Hpa::new(0x3_0000),
            Attrs::normal(Perms::READ),
        )
        .unwrap();
        let dw0 = pate(&f, t.root());
        assert_eq!(dw0 & NLB, base);
        let img = host.image(t.root());
        let dir =
            std::env::temp_dir().join(format!("tdp-ppc-image-{}-{granule:?}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        img.write(&dir.join("radix")).unwrap();
        let bytes = std::fs::read(dir.join("radix.bin")).unwrap();
        let meta = std::fs::read_to_string(dir.join("radix.txt")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(meta.contains(&format!("root={base:#x}")));
        // The last root entry, big-endian in the image: V set in the first byte, NLS 9 in the
        // last.
        let off = (8191 * 8) as usize;
        assert_eq!((bytes[off], bytes[off + 7]), (0x80, 0x09));
        assert_eq!(img.word(base + 8191 * 8, true).map(|w| w >> 62), Some(0b10));
        let flat = FlatImage::new(base, bytes);
        let tr = radix::peek(&flat, dw0, &RC_FAULT, 0x8030_0123, Access::Write).unwrap();
        assert_eq!(
            (tr.hpa, tr.page_size),
            (0x2_0010_0123 + 0x20_0000, 0x20_0000)
        );
        let tr = radix::peek(&flat, dw0, &RC_FAULT, (1 << 52) - 8, Access::Read).unwrap();
        assert_eq!(tr.hpa, 0x3_fff8);
        assert!(radix::peek(&flat, dw0, &RC_FAULT, (1 << 52) - 8, Access::Write).is_err());
    }
}
