//! Hand-checked raw descriptors and behaviour pinned down by name: granules, LPA/LPA2 address
//! bits, FWB, XNX, DBM and the A/D modes, break-before-make, cache maintenance.
//!
//! Raw values are written out field by field from the Arm ARM layouts (valid bit 0, type bit 1,
//! MemAttr 5:2, S2AP 7:6, SH 9:8, AF 10, OA, DBM 51, XN 54:53, software bits 58:55), never
//! taken from the format.

mod common;

use common::{peek, Phys, Recorder};
use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_core::testing::{HeapHost, HostEvent};
use tdp_core::{
    AdModel, AdState, Attrs, EntryKind, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms,
    PteFormat, Table, TlbFlush,
};
use tdp_walkers::stage2::{self, Cacheability, DeviceType, Stage2Fault, Stage2MemKind};
use tdp_walkers::Access;

const BASE: u64 = 0x8_0000_0000;
const MIB: u64 = 1 << 20;

// Descriptor fields, from the Arm ARM.
const S2AP_W: u64 = 1 << 7;
const SH_IS: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const DBM: u64 = 1 << 51;
const XN: u64 = 1 << 54;
const XN0: u64 = 1 << 53;
const SW55: u64 = 1 << 55;
const SW56: u64 = 1 << 56;

fn fmt(opts: Stage2Options) -> Stage2 {
    Stage2::new(Stage2Caps::all(), opts).unwrap()
}

fn k4(ipa: u8) -> Stage2Options {
    Stage2Options::new(Granule::K4, ipa, 48)
}

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

fn host_for(f: &Stage2) -> HeapHost {
    HeapHost::new(BASE, 8 * MIB, f.granule().size() as usize)
}

fn old() -> MapOptions {
    MapOptions {
        max_level: None,
        young_dirty: false,
    }
}

fn ad_of(t: &Table<Stage2, &HeapHost>, gpa: u64) -> AdState {
    t.query(Gpa::new(gpa)).unwrap().unwrap().ad
}

fn raw_at(t: &Table<Stage2, &HeapHost>, gpa: u64) -> u64 {
    t.query(Gpa::new(gpa)).unwrap().unwrap().raw
}

fn walk(host: &HeapHost, f: &Stage2, root: Hpa, gpa: u64, a: Access) -> Result<u64, Stage2Fault> {
    let vttbr = f.vttbr(root, 1).unwrap();
    stage2::peek(
        &Phys(host),
        f.vtcr(),
        vttbr,
        &common::walker_caps(f),
        gpa,
        a,
    )
    .map(|t| t.pa)
}

fn touch(host: &HeapHost, f: &Stage2, root: Hpa, gpa: u64, a: Access) -> Result<u64, Stage2Fault> {
    let vttbr = f.vttbr(root, 1).unwrap();
    stage2::translate(
        &mut Phys(host),
        f.vtcr(),
        vttbr,
        &common::walker_caps(f),
        gpa,
        a,
    )
    .map(|t| t.pa)
}

// --- raw descriptors --------------------------------------------------------------------

#[test]
fn k4_page_read_write_normal_wb_is_kvm_s2_page() {
    let f = fmt(k4(40));
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x1234_5000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    // valid|page 0b11, MemAttr 0b1111 << 2 = 0x3c, S2AP RW 0xc0, SH inner 0x300, AF 0x400:
    // 0x7ff; OA 0x1234_5000; XN (no execute) bit 54; software-writable bit 55.
    assert_eq!(raw_at(&t, 0x1000), 0x00c0_0000_1234_57ff);
}

#[test]
fn k4_2m_block_read_execute_non_cacheable() {
    let f = fmt(k4(40));
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    let attrs = Attrs {
        perms: Perms::RX,
        mem: MemType::WriteCombining,
        ignore_guest_memtype: false,
    };
    t.map(range(0x20_0000, 0x20_0000), Hpa::new(0x4000_0000), attrs)
        .unwrap();
    let m = t.query(Gpa::new(0x20_0000)).unwrap().unwrap();
    // valid, block (bit 1 clear), MemAttr 0b0101 << 2 = 0x14, S2AP R 0x40, SH 0x300, AF 0x400,
    // XN clear.
    assert_eq!((m.raw, m.level.get(), m.size), (0x4000_0755, 1, 0x20_0000));
}

#[test]
fn k4_1g_block_and_table_descriptor() {
    let f = fmt(k4(40));
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    t.map(
        range(0x4000_0000, 0x4000_0000),
        Hpa::new(0x1_c000_0000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    let m = t.query(Gpa::new(0x4000_0000)).unwrap().unwrap();
    // Block at level 1: valid, MemAttr 0x3c, S2AP R, SH, AF, XN.
    assert_eq!((m.raw, m.level.get()), (XN | 0x1_c000_0000 | 0x77d, 2));
    // A page under a fresh table: the root entry is the next table's address | 0b11.
    t.map(
        range(0x8000_0000, 0x1000),
        Hpa::new(0x5000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    let mut b = [0u8; 8];
    host.read_phys(t.root().raw() + 2 * 8, &mut b);
    let table = u64::from_le_bytes(b);
    assert_eq!(table & 0xffff_0000_0000_0fff, 0b11);
    assert!(table & 0x0000_ffff_ffff_f000 >= BASE);
}

#[test]
fn k64_52bit_output_goes_to_bits_15_12_and_dbm_marks_clean_writable() {
    let f = fmt(Stage2Options {
        hw_access: true,
        hw_dirty: true,
        ..Stage2Options::new(Granule::K64, 52, 52)
    });
    let host = HeapHost::new(0x000a_0000_0000_0000, 8 * MIB, 65536);
    let mut t = Table::new(f, &host).unwrap();
    let root = t.root();
    t.map_with(
        range(0x1_0000, 0x1_0000),
        Hpa::new(0x000f_1234_5678_0000),
        Attrs::normal(Perms::RW),
        old(),
    )
    .unwrap();
    // valid|page 3, MemAttr 0x3c, S2AP R 0x40 (W clear: clean), SH 0x300, AF clear,
    // OA[51:48] = 0xf in bits 15:12, OA[47:16] in place, DBM, XN, software-writable.
    let want = SW55 | XN | DBM | 0x1234_5678_0000 | 0xf000 | 0x37f;
    assert_eq!(raw_at(&t, 0x1_0000), want);
    assert_eq!(
        t.query(Gpa::new(0x1_0000)).unwrap().unwrap().ad,
        AdState {
            accessed: Some(false),
            dirty: Some(false)
        }
    );
    // The walker (as hardware with HA + HD) writes: AF and S2AP[1] get set.
    assert_eq!(
        touch(&host, &f, root, 0x1_0123, Access::Write),
        Ok(0x000f_1234_5678_0123)
    );
    let m = t.query(Gpa::new(0x1_0000)).unwrap().unwrap();
    assert_eq!(m.raw, want | AF | S2AP_W);
    assert_eq!(
        m.ad,
        AdState {
            accessed: Some(true),
            dirty: Some(true)
        }
    );
    // Table descriptors carry the high bits of the window (0xa in 51:48) the same way.
    let mut b = [0u8; 8];
    host.read_phys(root.raw(), &mut b);
    assert_eq!(u64::from_le_bytes(b) & 0xf003, 0xa003);
}

#[test]
fn lpa2_puts_oa_51_50_in_bits_9_8_and_drops_sh() {
    let f = fmt(Stage2Options {
        lpa2: true,
        fwb: true,
        ..Stage2Options::new(Granule::K4, 52, 52)
    });
    let host = HeapHost::new(0x000b_0000_0000_0000, 8 * MIB, 4096);
    let mut t = Table::new(f, &host).unwrap();
    let attrs = Attrs {
        ignore_guest_memtype: true,
        ..Attrs::normal(Perms::RW)
    };
    t.map(
        range(0x9000, 0x1000),
        Hpa::new(0x000e_1234_5678_9000),
        attrs,
    )
    .unwrap();
    // OA[49:12] in bits 49:12 (0x2_1234_5678_9000: OA[49] = 1, OA[48] = 0), OA[51:50] = 0b11
    // in bits 9:8, valid|page 3, FWB forced write-back MemAttr 0b0110 << 2 = 0x18, S2AP RW 0xc0,
    // AF 0x400, XN, software-writable.
    assert_eq!(raw_at(&t, 0x9000), 0x00c2_1234_5678_97db);
    let tr = stage2::peek(
        &Phys(&host),
        f.vtcr(),
        f.vttbr(t.root(), 1).unwrap(),
        &common::walker_caps(&f),
        0x9abc,
        Access::Write,
    )
    .unwrap();
    assert_eq!(tr.pa, 0x000e_1234_5678_9abc);
    assert_eq!(tr.sh, None, "with DS = 1 bits 9:8 are address bits");
    assert_eq!(
        tr.mem_kind,
        Stage2MemKind::Normal {
            outer: Cacheability::WriteBack,
            inner: Cacheability::WriteBack
        }
    );
}

#[test]
fn k16_granule_pages_and_32m_blocks() {
    let f = fmt(Stage2Options::new(Granule::K16, 47, 48));
    let host = HeapHost::new(BASE, 8 * MIB, 16384);
    let mut t = Table::new(f, &host).unwrap();
    t.map(
        range(0x200_0000, 0x400_4000),
        Hpa::new(0x1_0200_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    let block = t.query(Gpa::new(0x200_0000)).unwrap().unwrap();
    let page = t.query(Gpa::new(0x600_0000)).unwrap().unwrap();
    assert_eq!((block.level.get(), block.size), (1, 32 * MIB));
    assert_eq!((page.level.get(), page.size), (0, 16384));
    // OA[47:14] in place; bits 13:12 of a 16 KiB descriptor are not address bits.
    assert_eq!(page.raw, SW55 | XN | 0x1_0600_0000 | 0x7ff);
    assert_eq!(
        walk(&host, &f, t.root(), 0x600_3ffc, Access::Read),
        Ok(0x1_0600_3ffc)
    );
}

#[test]
fn empty_is_zero_and_frozen_is_invalid_with_bit_10() {
    let f = fmt(k4(40));
    let l0 = Level::LEAF;
    let l1 = Level::new(1).unwrap();
    assert_eq!(f.empty(l0), 0);
    assert_eq!(f.frozen(Level::LEAF), 0x400);
    assert_eq!(f.classify(0, l1), EntryKind::Empty);
    assert_eq!(f.classify(0x400, l0), EntryKind::Frozen);
    assert_eq!(f.classify(0x400, l1), EntryKind::Frozen);
    // Bit 1 clear at level 3 is reserved; a block where the granule has none is not a leaf.
    assert_eq!(f.classify(0x1234_5001, l0), EntryKind::Other);
    let k16 = fmt(Stage2Options::new(Granule::K16, 47, 48));
    assert_eq!(
        k16.classify(0x10_0000_0001, Level::new(2).unwrap()),
        EntryKind::Other
    );
    assert_eq!(
        k16.classify(0x10_0000_0003, Level::new(2).unwrap()),
        EntryKind::Table
    );
}

// --- FWB --------------------------------------------------------------------------------

fn memattr(raw: u64) -> u64 {
    (raw >> 2) & 0xf
}

#[test]
fn memattr_without_fwb_wb_nc_device() {
    let f = fmt(k4(40));
    let cases = [
        (MemType::WriteBack, 0b1111),
        (MemType::WriteCombining, 0b0101),
        (MemType::Device, 0b0001),
        (MemType::Uncached, 0b0000),
    ];
    for (mem, want) in cases {
        let a = Attrs {
            perms: Perms::RW,
            mem,
            ignore_guest_memtype: false,
        };
        let raw = f.make_leaf(Hpa::new(0x1000), Level::LEAF, &a, true);
        assert_eq!(memattr(raw), want, "{mem:?}");
        assert_eq!(f.leaf_attrs(raw, Level::LEAF), a);
    }
    // Forcing write-back over the guest's type needs FWB.
    let forced = Attrs {
        ignore_guest_memtype: true,
        ..Attrs::normal(Perms::RW)
    };
    assert!(f.check_attrs(&forced).is_err());
}

#[test]
fn fwb_forces_write_back_or_lets_stage1_win() {
    let f = fmt(Stage2Options {
        fwb: true,
        ..k4(40)
    });
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    let cases = [
        (
            MemType::WriteBack,
            true,
            0b0110,
            Stage2MemKind::Normal {
                outer: Cacheability::WriteBack,
                inner: Cacheability::WriteBack,
            },
        ),
        (MemType::WriteBack, false, 0b0111, Stage2MemKind::Stage1),
        (
            MemType::WriteCombining,
            false,
            0b0101,
            Stage2MemKind::Normal {
                outer: Cacheability::NonCacheable,
                inner: Cacheability::NonCacheable,
            },
        ),
        (
            MemType::Device,
            false,
            0b0001,
            Stage2MemKind::Device(DeviceType::NGnRE),
        ),
        (
            MemType::Uncached,
            false,
            0b0000,
            Stage2MemKind::Device(DeviceType::NGnRnE),
        ),
    ];
    for (i, (mem, ignore, want, kind)) in cases.into_iter().enumerate() {
        let gpa = i as u64 * 0x1000;
        let a = Attrs {
            perms: Perms::READ,
            mem,
            ignore_guest_memtype: ignore,
        };
        t.map(range(gpa, 0x1000), Hpa::new(0x10_0000 + gpa), a)
            .unwrap();
        let m = t.query(Gpa::new(gpa)).unwrap().unwrap();
        assert_eq!((memattr(m.raw), m.attrs), (want, a), "{mem:?}");
        let tr = stage2::peek(
            &Phys(&host),
            f.vtcr(),
            f.vttbr(t.root(), 1).unwrap(),
            &common::walker_caps(&f),
            gpa,
            Access::Read,
        )
        .unwrap();
        assert_eq!(tr.mem_kind, kind, "{mem:?}");
    }
    // FWB has no write-through, and forcing is for write-back only.
    for a in [
        Attrs {
            perms: Perms::READ,
            mem: MemType::WriteThrough,
            ignore_guest_memtype: false,
        },
        Attrs {
            perms: Perms::READ,
            mem: MemType::WriteCombining,
            ignore_guest_memtype: true,
        },
    ] {
        assert!(f.check_attrs(&a).is_err(), "{a:?}");
    }
}

// --- XNX --------------------------------------------------------------------------------

#[test]
fn xnx_separates_el1_and_el0_execute() {
    let f = fmt(Stage2Options {
        xnx: true,
        ..k4(40)
    });
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    let root = t.root();
    // XN[1:0] (bits 54:53): 00 both, 01 EL0 only (PXN), 11 EL1 only (UXN), 10 none.
    let cases = [
        (Perms::EXEC, 0, true, true),
        (Perms::EXEC_USER, XN0, false, true),
        (Perms::EXEC_SUPER, XN | XN0, true, false),
        (Perms::empty(), XN, false, false),
    ];
    for (i, (x, bits, el1, el0)) in cases.into_iter().enumerate() {
        let gpa = i as u64 * 0x1000;
        t.map(
            range(gpa, 0x1000),
            Hpa::new(0x10_0000 + gpa),
            Attrs::normal(Perms::READ | x),
        )
        .unwrap();
        let m = t.query(Gpa::new(gpa)).unwrap().unwrap();
        assert_eq!(m.raw & (XN | XN0), bits, "{x:?}");
        assert_eq!(m.attrs.perms, Perms::READ | x);
        assert_eq!(
            walk(&host, &f, root, gpa, Access::ExecSupervisor).is_ok(),
            el1
        );
        assert_eq!(walk(&host, &f, root, gpa, Access::ExecUser).is_ok(), el0);
    }
    // protect moves between them in place.
    t.protect(range(0, 0x1000), Perms::READ | Perms::EXEC_USER)
        .unwrap();
    assert_eq!(raw_at(&t, 0) & (XN | XN0), XN0);
}

#[test]
fn without_xnx_execute_is_one_bit_and_split_execute_is_rejected() {
    let f = fmt(k4(40));
    for p in [Perms::EXEC_USER, Perms::READ | Perms::EXEC_SUPER] {
        assert!(f.check_attrs(&Attrs::normal(p)).is_err(), "{p:?}");
    }
    let raw = f.make_leaf(
        Hpa::new(0x1000),
        Level::LEAF,
        &Attrs::normal(Perms::RX),
        true,
    );
    assert_eq!(raw & (XN | XN0), 0);
    let raw = f.make_leaf(
        Hpa::new(0x1000),
        Level::LEAF,
        &Attrs::normal(Perms::READ),
        true,
    );
    assert_eq!(raw & (XN | XN0), XN);
    // Write-only and execute-only are legal at stage 2.
    assert!(f.check_attrs(&Attrs::normal(Perms::WRITE)).is_ok());
    assert!(f.check_attrs(&Attrs::normal(Perms::EXEC)).is_ok());
}

#[test]
fn device_memory_is_never_executable() {
    let f = fmt(Stage2Options {
        xnx: true,
        ..k4(40)
    });
    for mem in [MemType::Device, MemType::Uncached] {
        for p in [Perms::RX, Perms::EXEC_USER, Perms::EXEC_SUPER] {
            let a = Attrs {
                perms: p,
                mem,
                ignore_guest_memtype: false,
            };
            assert!(f.check_attrs(&a).is_err(), "{a:?}");
        }
    }
    assert!(f.perms_depend_on_memtype());
}

// --- A/D modes --------------------------------------------------------------------------

#[test]
fn hw_access_and_dirty_dbm_leaf_is_volatile_until_young_and_dirty() {
    let f = fmt(Stage2Options {
        hw_access: true,
        hw_dirty: true,
        ..k4(40)
    });
    assert_eq!(f.ad_model(), AdModel::Hardware);
    let clean = f.make_leaf(
        Hpa::new(0x1000),
        Level::LEAF,
        &Attrs::normal(Perms::RW),
        false,
    );
    assert_eq!(clean & (AF | S2AP_W | DBM), DBM);
    assert_eq!(f.volatile_bits(clean, Level::LEAF), AF | S2AP_W);
    let ro = f.make_leaf(
        Hpa::new(0x1000),
        Level::LEAF,
        &Attrs::normal(Perms::READ),
        false,
    );
    assert_eq!(
        f.volatile_bits(ro, Level::LEAF),
        AF,
        "no DBM without write permission"
    );
    let young = f.make_leaf(
        Hpa::new(0x1000),
        Level::LEAF,
        &Attrs::normal(Perms::RW),
        true,
    );
    assert_eq!(f.volatile_bits(young, Level::LEAF), 0);
    let table = f.make_table(Hpa::new(0x8000), Level::new(1).unwrap());
    assert_eq!(f.volatile_bits(table, Level::new(1).unwrap()), 0);
    // The walker as hardware: write makes it dirty; the state survives protect to read-only.
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    let root = t.root();
    t.map_with(
        range(0, 0x2000),
        Hpa::new(0x4000),
        Attrs::normal(Perms::RW),
        old(),
    )
    .unwrap();
    assert_eq!(touch(&host, &f, root, 0x10, Access::Read), Ok(0x4010));
    assert_eq!(touch(&host, &f, root, 0x1010, Access::Write), Ok(0x5010));
    assert_eq!(
        (ad_of(&t, 0).accessed, ad_of(&t, 0).dirty),
        (Some(true), Some(false))
    );
    assert_eq!(
        (ad_of(&t, 0x1000).accessed, ad_of(&t, 0x1000).dirty),
        (Some(true), Some(true))
    );
    t.protect(range(0, 0x2000), Perms::READ).unwrap();
    assert_eq!(
        (ad_of(&t, 0x1000).accessed, ad_of(&t, 0x1000).dirty),
        (Some(true), Some(true))
    );
    assert_eq!(raw_at(&t, 0x1000) & (S2AP_W | DBM | SW55 | SW56), SW56);
    assert!(walk(&host, &f, root, 0x1000, Access::Write).is_err());
    // Write permission back: DBM again, still dirty.
    t.protect(range(0, 0x2000), Perms::RW).unwrap();
    assert_eq!(raw_at(&t, 0x1000) & (DBM | SW55 | SW56), DBM | SW55 | SW56);
    assert_eq!(ad_of(&t, 0x1000).dirty, Some(true));
    assert_eq!(ad_of(&t, 0).dirty, Some(false));
}

#[test]
fn hw_access_only_sets_af_and_a_clean_writable_leaf_faults_on_write() {
    let f = fmt(Stage2Options {
        hw_access: true,
        ..k4(40)
    });
    assert_eq!(f.ad_model(), AdModel::Hardware);
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    let root = t.root();
    t.map_with(
        range(0, 0x1000),
        Hpa::new(0x4000),
        Attrs::normal(Perms::RW),
        old(),
    )
    .unwrap();
    let raw = raw_at(&t, 0);
    assert_eq!(raw & (AF | S2AP_W | DBM | SW55), SW55);
    assert_eq!(f.volatile_bits(raw, Level::LEAF), AF);
    assert_eq!(
        touch(&host, &f, root, 0x10, Access::Write),
        Err(Stage2Fault::Permission { level: 3 })
    );
    assert_eq!(touch(&host, &f, root, 0x10, Access::Read), Ok(0x4010));
    let m = t.query(Gpa::new(0)).unwrap().unwrap();
    assert_eq!((m.ad.accessed, m.ad.dirty), (Some(true), Some(false)));
    assert_eq!(m.attrs.perms, Perms::RW);
}

#[test]
fn software_access_flag_faults_until_set_and_nothing_is_volatile() {
    let f = fmt(k4(40));
    assert_eq!(f.ad_model(), AdModel::Software);
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    let root = t.root();
    t.map_with(
        range(0, 0x1000),
        Hpa::new(0x4000),
        Attrs::normal(Perms::RW),
        old(),
    )
    .unwrap();
    let raw = raw_at(&t, 0);
    assert_eq!(f.volatile_bits(raw, Level::LEAF), 0);
    assert_eq!(
        touch(&host, &f, root, 0, Access::Read),
        Err(Stage2Fault::AccessFlag { level: 3 })
    );
    assert_eq!(
        t.query(Gpa::new(0)).unwrap().unwrap().ad,
        AdState {
            accessed: Some(false),
            dirty: Some(false)
        }
    );
    // A young map is accessed and (writable) dirty from the start.
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x5000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    assert_eq!(
        t.query(Gpa::new(0x1000)).unwrap().unwrap().ad,
        AdState {
            accessed: Some(true),
            dirty: Some(true)
        }
    );
    assert_eq!(touch(&host, &f, root, 0x1008, Access::Write), Ok(0x5008));
}

#[test]
fn split_copies_and_collapse_merges_access_and_dirty() {
    let f = fmt(Stage2Options {
        hw_access: true,
        hw_dirty: true,
        ..k4(40)
    });
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    let root = t.root();
    t.map_with(
        range(0x20_0000, 0x20_0000),
        Hpa::new(0x4020_0000),
        Attrs::normal(Perms::RW),
        old(),
    )
    .unwrap();
    t.split(range(0x20_0000, 0x20_0000), Level::LEAF).unwrap();
    assert_eq!(t.stats().leaves[0], 512);
    touch(&host, &f, root, 0x20_5000, Access::Write).unwrap();
    t.collapse(range(0x20_0000, 0x20_0000)).unwrap();
    let m = t.query(Gpa::new(0x20_0000)).unwrap().unwrap();
    assert_eq!(
        (m.level.get(), m.ad.accessed, m.ad.dirty),
        (1, Some(true), Some(true))
    );
}

// --- break-before-make ------------------------------------------------------------------

#[test]
fn needs_break_for_address_block_size_and_memory_attributes_only() {
    let f = fmt(Stage2Options {
        hw_access: true,
        hw_dirty: true,
        xnx: true,
        ..k4(40)
    });
    let l0 = Level::LEAF;
    let l1 = Level::new(1).unwrap();
    let leaf = f.make_leaf(Hpa::new(0x4000), l0, &Attrs::normal(Perms::RW), false);
    let moved = f.make_leaf(Hpa::new(0x8000), l0, &Attrs::normal(Perms::RW), false);
    let nc = f.make_leaf(
        Hpa::new(0x4000),
        l0,
        &Attrs {
            mem: MemType::WriteCombining,
            ..Attrs::normal(Perms::RW)
        },
        false,
    );
    assert!(f.needs_break(leaf, moved, l0), "output address");
    assert!(f.needs_break(leaf, nc, l0), "MemAttr");
    assert!(f.needs_break(leaf, leaf ^ SH_IS, l0), "shareability");
    for in_place in [
        f.with_perms(leaf, l0, Perms::READ),
        f.with_perms(leaf, l0, Perms::RWX),
        f.with_perms(leaf, l0, Perms::READ | Perms::EXEC_USER),
        leaf | AF,
        leaf | S2AP_W,
        leaf & !DBM,
        leaf | 1 << 57,
    ] {
        assert!(!f.needs_break(leaf, in_place, l0), "{in_place:#x}");
    }
    assert!(
        !f.needs_break(leaf, 0, l0),
        "invalidating is the break itself"
    );
    let block = f.make_leaf(Hpa::new(0x20_0000), l1, &Attrs::normal(Perms::RW), true);
    let table = f.make_table(Hpa::new(0x9000), l1);
    assert!(f.needs_break(block, table, l1), "split of a live block");
    assert!(f.needs_break(table, block, l1), "collapse into a block");
    assert!(f.needs_break(table, f.make_table(Hpa::new(0xa000), l1), l1));
}

/// A 4 KiB table with the recording host at `BASE`.
fn recorded(f: Stage2, host: &HeapHost) -> Table<Stage2, Recorder<'_>> {
    let t = Table::new(f, Recorder::new(host, f)).unwrap();
    t.host().root.set(t.root().raw());
    t
}

#[test]
fn split_of_a_live_block_breaks_before_make() {
    let f = fmt(k4(40));
    let host = host_for(&f);
    let mut t = recorded(f, &host);
    t.map(
        range(0x4000_0000, 0x20_0000),
        Hpa::new(0x1_4000_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    let watch = [0x4000_0000, 0x4010_0abc, 0x401f_fff8];
    t.host().begin(&watch);
    host.take_events();
    t.split(range(0x4000_0000, 0x20_0000), Level::LEAF).unwrap();
    let flushes = t.host().flushes.borrow().clone();
    // One flush: the break, with the leaf level as the TTL hint; the walker saw nothing mapped.
    assert_eq!(flushes.len(), 1, "{flushes:?}");
    assert_eq!(
        flushes[0].flush,
        TlbFlush::Range {
            start: Gpa::new(0x4000_0000),
            size: 0x20_0000,
            level: Some(Level::new(1).unwrap()),
            tables: false
        }
    );
    assert_eq!(flushes[0].broken, watch);
    for g in watch {
        let p = peek(&host, &f, t.root().raw(), g);
        assert_eq!(p.seen.hpa, Some(0x1_0000_0000 + g));
        assert_eq!(p.leaf.unwrap().size, 0x1000);
    }
}

#[test]
fn collapse_breaks_before_make_and_frees_the_table_after_the_flush() {
    let f = fmt(k4(40));
    let host = host_for(&f);
    let mut t = recorded(f, &host);
    t.set_cache_keep(0);
    t.map_with(
        range(0x4000_0000, 0x20_0000),
        Hpa::new(0x1_4000_0000),
        Attrs::normal(Perms::RW),
        MapOptions {
            max_level: Some(Level::LEAF),
            young_dirty: true,
        },
    )
    .unwrap();
    let mut b = [0u8; 8];
    // The root page that maps 1 GiB..2 GiB holds the level-2 table; its entry 0 is the level-3 table.
    host.read_phys(t.root().raw() + 8, &mut b);
    let l2 = u64::from_le_bytes(b) & 0x0000_ffff_ffff_f000;
    host.read_phys(l2, &mut b);
    let l3 = u64::from_le_bytes(b) & 0x0000_ffff_ffff_f000;
    t.host().begin(&[0x4000_0000, 0x4012_3000]);
    host.take_events();
    t.collapse(range(0x4000_0000, 0x20_0000)).unwrap();
    let flushes = t.host().flushes.borrow().clone();
    let events = host.take_events();
    let brk = TlbFlush::Range {
        start: Gpa::new(0x4000_0000),
        size: 0x20_0000,
        level: None,
        tables: true,
    };
    assert_eq!(flushes[0].flush, brk);
    assert_eq!(flushes[0].broken, [0x4000_0000, 0x4012_3000]);
    let flush_at = events
        .iter()
        .position(|e| *e == HostEvent::Flush(brk))
        .unwrap();
    let free_at = events
        .iter()
        .position(|e| *e == HostEvent::Free(Hpa::new(l3), 4096))
        .expect("the level-3 table is freed");
    assert!(flush_at < free_at, "{events:?}");
    assert_eq!(
        t.query(Gpa::new(0x4012_3000)).unwrap().unwrap().level.get(),
        1
    );
}

#[test]
fn permission_changes_are_made_in_place() {
    let f = fmt(k4(40));
    let host = host_for(&f);
    let mut t = recorded(f, &host);
    t.map(
        range(0x4000_0000, 0x20_0000),
        Hpa::new(0x1_4000_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    t.host().begin(&[0x4000_0000]);
    t.protect(range(0x4000_0000, 0x20_0000), Perms::READ)
        .unwrap();
    let flushes = t.host().flushes.borrow().clone();
    // Only the end-of-operation flush (write removed), with the leaf still valid in it.
    assert_eq!(flushes.len(), 1);
    assert!(flushes[0].broken.is_empty(), "{flushes:?}");
    // Adding permissions needs no flush at all.
    t.host().begin(&[0x4000_0000]);
    t.protect(range(0x4000_0000, 0x20_0000), Perms::RW).unwrap();
    assert!(t.host().flushes.borrow().is_empty());
}

// --- cache maintenance ------------------------------------------------------------------

fn cmos(host: &HeapHost) -> Vec<HostEvent> {
    host.take_events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                HostEvent::CleanDcache(..) | HostEvent::InvalidateIcache(..)
            )
        })
        .collect()
}

#[test]
fn without_fwb_map_cleans_to_poc_and_exec_invalidates_icache() {
    let f = fmt(k4(40));
    let host = host_for(&f);
    let mut t = recorded(f, &host);
    t.host().begin(&[0x10_0000]);
    t.map(
        range(0x10_0000, 0x4000),
        Hpa::new(0x9000_0000),
        Attrs::normal(Perms::RWX),
    )
    .unwrap();
    assert_eq!(
        cmos(&host),
        [
            HostEvent::CleanDcache(Hpa::new(0x9000_0000), 0x4000),
            HostEvent::InvalidateIcache(Hpa::new(0x9000_0000), 0x4000)
        ]
    );
    assert!(t.host().cmo_too_late.borrow().is_empty());
    // Non-cacheable data: nothing.
    let nc = Attrs {
        mem: MemType::WriteCombining,
        ..Attrs::normal(Perms::RW)
    };
    t.map(range(0x20_0000, 0x1000), Hpa::new(0xa000_0000), nc)
        .unwrap();
    assert_eq!(cmos(&host), []);
    // Gaining execute later invalidates the instruction cache, before the change.
    t.map(
        range(0x30_0000, 0x1000),
        Hpa::new(0xb000_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    host.take_events();
    t.host().begin(&[0x30_0000]);
    t.protect(range(0x30_0000, 0x1000), Perms::RWX).unwrap();
    assert_eq!(
        cmos(&host),
        [HostEvent::InvalidateIcache(Hpa::new(0xb000_0000), 0x1000)]
    );
    assert!(t.host().cmo_too_late.borrow().is_empty());
}

#[test]
fn fwb_forced_write_back_skips_the_clean_and_dic_skips_the_icache() {
    let forced = Attrs {
        ignore_guest_memtype: true,
        ..Attrs::normal(Perms::RWX)
    };
    let f = fmt(Stage2Options {
        fwb: true,
        ..k4(40)
    });
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    t.map(range(0, 0x1000), Hpa::new(0x9000_0000), forced)
        .unwrap();
    assert_eq!(
        cmos(&host),
        [HostEvent::InvalidateIcache(Hpa::new(0x9000_0000), 0x1000)]
    );
    // Stage 1 wins (0b0111): the guest may run non-cacheable, so the clean is needed.
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x9100_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    assert_eq!(
        cmos(&host),
        [HostEvent::CleanDcache(Hpa::new(0x9100_0000), 0x1000)]
    );
    let caps = Stage2Caps {
        dic: true,
        ..Stage2Caps::all()
    };
    let f = Stage2::new(
        caps,
        Stage2Options {
            fwb: true,
            ..k4(40)
        },
    )
    .unwrap();
    let host = host_for(&f);
    let mut t = Table::new(f, &host).unwrap();
    t.map(range(0, 0x1000), Hpa::new(0x9000_0000), forced)
        .unwrap();
    t.protect(range(0, 0x1000), Perms::RX).unwrap();
    assert_eq!(cmos(&host), []);
}

#[test]
fn query_reports_access_and_dirty_in_every_mode() {
    for (ha, hd) in [(false, false), (true, false), (true, true)] {
        let f = fmt(Stage2Options {
            hw_access: ha,
            hw_dirty: hd,
            ..k4(40)
        });
        let host = host_for(&f);
        let mut t = Table::new(f, &host).unwrap();
        t.map(range(0, 0x1000), Hpa::new(0x4000), Attrs::normal(Perms::RW))
            .unwrap();
        t.map_with(
            range(0x1000, 0x1000),
            Hpa::new(0x5000),
            Attrs::normal(Perms::READ),
            old(),
        )
        .unwrap();
        let ad = |g| t.query(Gpa::new(g)).unwrap().unwrap().ad;
        assert_eq!(
            (ad(0), ad(0x1000)),
            (
                AdState {
                    accessed: Some(true),
                    dirty: Some(true)
                },
                AdState {
                    accessed: Some(false),
                    dirty: Some(false)
                }
            ),
            "HA {ha} HD {hd}"
        );
    }
}

// --- the PteFormat contract -------------------------------------------------------------

#[test]
fn contract_round_trips_every_accepted_attribute_set_at_every_leaf_level() {
    let mems = [
        MemType::WriteBack,
        MemType::WriteCombining,
        MemType::Device,
        MemType::Uncached,
        MemType::WriteThrough,
        MemType::WriteProtect,
    ];
    let configs = [
        k4(40),
        Stage2Options {
            lpa2: true,
            fwb: true,
            xnx: true,
            hw_access: true,
            hw_dirty: true,
            ..Stage2Options::new(Granule::K4, 52, 52)
        },
        Stage2Options {
            hw_access: true,
            ..Stage2Options::new(Granule::K16, 47, 48)
        },
        Stage2Options {
            xnx: true,
            hw_access: true,
            hw_dirty: true,
            ..Stage2Options::new(Granule::K64, 52, 52)
        },
    ];
    let mut accepted = 0;
    for o in configs {
        let f = fmt(o);
        let geo = *f.geometry();
        let top = 1u64 << o.oa_bits;
        for level in (0..geo.levels()).map(|l| Level::new(l).unwrap()) {
            if !geo.is_leaf_level(level) {
                continue;
            }
            let size = geo.level_size(level);
            for hpa in [0, size, top - size, (top / 3) & !(size - 1)] {
                for bits in 0..16u8 {
                    let perms = Perms::from_bits_truncate(bits);
                    for mem in mems {
                        for ignore in [false, true] {
                            let a = Attrs {
                                perms,
                                mem,
                                ignore_guest_memtype: ignore,
                            };
                            if f.check_attrs(&a).is_err() {
                                continue;
                            }
                            accepted += 1;
                            for young in [false, true] {
                                let raw = f.make_leaf(Hpa::new(hpa), level, &a, young);
                                assert_eq!(f.classify(raw, level), EntryKind::Leaf);
                                assert_eq!(f.leaf_addr(raw, level), Hpa::new(hpa));
                                assert_eq!(f.leaf_attrs(raw, level), a, "{raw:#x}");
                                let ad = f.ad_state(raw, level);
                                let w = perms.contains(Perms::WRITE);
                                assert_eq!(ad.accessed, Some(young));
                                assert_eq!(ad.dirty, Some(young && w));
                                assert_eq!(raw & (1 << 52), 0, "contiguous hint");
                                if level.get() > 0 {
                                    let child = Level::new(level.get() - 1).unwrap();
                                    let step = geo.level_size(child);
                                    let last = geo.entries(child) - 1;
                                    let c = f.split_child(raw, level, last);
                                    assert_eq!(f.classify(c, child), EntryKind::Leaf);
                                    assert_eq!(
                                        f.leaf_addr(c, child),
                                        Hpa::new(hpa + last as u64 * step)
                                    );
                                    assert_eq!(f.leaf_attrs(c, child), a);
                                    let c0 = f.split_child(raw, level, 0);
                                    let back = f.make_huge(c0, level, f.ad_bits(c0, child));
                                    assert_eq!(back, raw, "collapse undoes split");
                                }
                                for p in (0..16u8).map(Perms::from_bits_truncate) {
                                    let b = Attrs { perms: p, ..a };
                                    if f.check_attrs(&b).is_ok() {
                                        let r = f.with_perms(raw, level, p);
                                        assert_eq!(f.leaf_attrs(r, level), b);
                                        assert!(!f.needs_break(raw, r, level));
                                        assert_eq!(f.leaf_addr(r, level), Hpa::new(hpa));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for l in 1..geo.levels() {
            let level = Level::new(l).unwrap();
            let child = Hpa::new(top - 4 * geo.table_size(Level::LEAF) as u64);
            let t = f.make_table(child, level);
            assert_eq!(
                (f.classify(t, level), f.table_addr(t, level)),
                (EntryKind::Table, child)
            );
        }
        assert_eq!(
            f.classify(f.frozen(Level::LEAF), Level::LEAF),
            EntryKind::Frozen
        );
    }
    assert!(accepted > 100);
}
