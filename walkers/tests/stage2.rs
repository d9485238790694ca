//! Arm VMSAv8-64 stage-2 walker: hand-built tables, with the index and
//! address arithmetic written out next to each entry, plus a property test
//! feeding random VTCR/VTTBR/descriptors/IPAs.
//!
//! Every bit used here is defined again below (not imported from the
//! walker), so a wrong constant in the walker cannot make its own test pass.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tdp_walkers::stage2::{
    self, Cacheability, ConfigError, DeviceType, Stage2Caps, Stage2Fault, Stage2MemKind,
};
use tdp_walkers::{Access, FlatImage, PhysMem};

// --- VTCR_EL2 ---
const TG_4K: u64 = 0b00;
const TG_64K: u64 = 0b01;
const TG_16K: u64 = 0b10;
const PS_32: u64 = 0b000;
const PS_40: u64 = 0b010;
const PS_48: u64 = 0b101;
const PS_52: u64 = 0b110;
const HA: u64 = 1 << 21;
const HD: u64 = 1 << 22;
const DS: u64 = 1 << 32;
const SL2: u64 = 1 << 33;
const SH0_INNER: u64 = 0b11 << 12;

/// VTCR_EL2 with T0SZ = 64 − `ipa_bits` (5:0), SL0 (7:6), TG0 (15:14), PS (18:16).
fn vtcr(ipa_bits: u64, sl0: u64, tg0: u64, ps: u64) -> u64 {
    (64 - ipa_bits) | sl0 << 6 | tg0 << 14 | ps << 16
}

// --- Descriptors ---
const TABLE: u64 = 0b11;
const PAGE: u64 = 0b11;
const BLOCK: u64 = 0b01;
const MEM_WB: u64 = 0xF << 2; // MemAttr 0b1111: Normal, outer WB, inner WB
const MEM_DEVICE: u64 = 0x1 << 2; // MemAttr 0b0001: Device-nGnRE
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const DBM: u64 = 1 << 51;
const CONT: u64 = 1 << 52;
const XN0: u64 = 1 << 53;
const XN1: u64 = 1 << 54;
/// Normal WB, read/write, inner shareable, accessed.
const RW_LEAF: u64 = MEM_WB | S2AP_R | S2AP_W | SH_INNER | AF;
/// Same without SH (bits 9:8 are OA\[51:50\] with DS = 1).
const RW_LEAF_NO_SH: u64 = MEM_WB | S2AP_R | S2AP_W | AF;

fn caps(pa_range_bits: u8) -> Stage2Caps {
    Stage2Caps {
        pa_range_bits,
        lpa2: false,
        lpa_64k: false,
        xnx: false,
        fwb: false,
        ha_hd: false,
    }
}

fn put(img: &mut FlatImage, pa: u64, word: u64) {
    assert!(img.write_u64_le(pa, word), "{pa:#x} outside the test image");
}

// ---------------------------------------------------------------------------
// The 4 KiB / 40-bit IPA fixture used by most tests.
//
// VTCR: T0SZ = 24 (IPA 40 bits), SL0 = 1 → start level 1 with the 4 KiB
// granule. Level 1 resolves IPA[39:30] = 10 bits = 1024 entries = two 4 KiB
// tables concatenated (8 KiB root, 8 KiB aligned).
// Image 0x10000..0x20000: root 0x10000..0x12000, L2 table 0x12000, L3 table 0x13000.
// ---------------------------------------------------------------------------

const ROOT_40: u64 = 0x10000;
const L2_40: u64 = 0x12000;
const L3_40: u64 = 0x13000;

fn vtcr_40() -> u64 {
    vtcr(40, 1, TG_4K, PS_48)
}

fn image_40() -> FlatImage {
    FlatImage::zeroed(0x10000, 0x10000)
}

/// IPA 0x80_4060_5678 = 2^39 + 1·2^30 + 3·2^21 + 5·2^12 + 0x678:
/// L1 index = IPA[39:30] = 0x201 = 513 → second root page, entry 1,
///   at 0x10000 + 513·8 = 0x11008;
/// L2 index = IPA[29:21] = 3 → 0x12000 + 3·8 = 0x12018;
/// L3 index = IPA[20:12] = 5 → 0x13000 + 5·8 = 0x13028; offset 0x678.
const IPA_A: u64 = 0x80_4060_5678;
const L1_SLOT_A: u64 = 0x11008;
const L2_SLOT_A: u64 = 0x12018;
const L3_SLOT_A: u64 = 0x13028;

/// Maps IPA_A through L1 → L2 → L3 with `leaf` as the page descriptor.
fn map_a(img: &mut FlatImage, leaf: u64) {
    put(img, L1_SLOT_A, TABLE | L2_40);
    put(img, L2_SLOT_A, TABLE | L3_40);
    put(img, L3_SLOT_A, leaf);
}

#[test]
fn four_k_ipa40_starts_at_level_1_with_two_concatenated_root_pages() {
    let c = caps(48);
    let cfg = stage2::decode_vtcr(vtcr_40(), &c).unwrap();
    assert_eq!(
        (
            cfg.granule_shift,
            cfg.ipa_bits,
            cfg.start_level,
            cfg.concatenated_tables
        ),
        (12, 40, 1, 2)
    );
    assert_eq!((cfg.root_bytes, cfg.oa_bits), (0x2000, 48));
    assert!(!cfg.ha && !cfg.hd && !cfg.lpa2 && !cfg.baddr_52);

    let mut img = image_40();
    map_a(&mut img, PAGE | 0x8765_4000 | RW_LEAF);
    let t = stage2::peek(&img, vtcr_40(), ROOT_40, &c, IPA_A, Access::Read).unwrap();
    assert_eq!(t.pa, 0x8765_4678);
    assert_eq!((t.level, t.block_size), (3, 0x1000));
    assert!(t.read && t.write && t.exec_el1 && t.exec_el0 && t.af);
    assert_eq!((t.memattr, t.fwb, t.sh), (0xF, false, Some(0b11)));
    assert_eq!(t.leaf_entry, PAGE | 0x8765_4000 | RW_LEAF);

    // The same L1 index with IPA bit 39 clear (index 1) reads the *first*
    // root page, entry 1 at 0x10008, which is empty.
    let low = IPA_A - (1 << 39);
    assert_eq!(
        stage2::peek(&img, vtcr_40(), ROOT_40, &c, low, Access::Read),
        Err(Stage2Fault::Translation { level: 1 })
    );
    put(&mut img, 0x10008, TABLE | L2_40);
    assert_eq!(
        stage2::peek(&img, vtcr_40(), ROOT_40, &c, low, Access::Read).map(|t| t.pa),
        Ok(0x8765_4678)
    );
}

#[test]
fn four_k_ipa48_starts_at_level_0_with_one_root_page() {
    // T0SZ = 16, SL0 = 2 → level 0; IPA[47:39] = 9 bits = one 4 KiB table.
    let v = vtcr(48, 2, TG_4K, PS_48);
    let c = caps(48);
    let cfg = stage2::decode_vtcr(v, &c).unwrap();
    assert_eq!(
        (cfg.start_level, cfg.concatenated_tables, cfg.root_bytes),
        (0, 1, 0x1000)
    );

    // IPA = 0x155·2^39 + 0xAA·2^30 + 0x1234_5678:
    // L0 index 0x155 → 0x20000 + 0x155·8 = 0x20AA8;
    // L1 index 0xAA → 0x21000 + 0xAA·8 = 0x21550, a 1 GiB block at 0x40_0000_0000.
    let ipa = (0x155 << 39) | (0xAA << 30) | 0x1234_5678;
    let mut img = FlatImage::zeroed(0x20000, 0x2000);
    put(&mut img, 0x20AA8, TABLE | 0x21000);
    put(&mut img, 0x21550, BLOCK | 0x40_0000_0000 | RW_LEAF);
    let t = stage2::peek(&img, v, 0x20000, &c, ipa, Access::Write).unwrap();
    assert_eq!((t.pa, t.level, t.block_size), (0x40_1234_5678, 1, 1 << 30));
}

#[test]
fn sixteen_k_ipa40_uses_16_concatenated_level_2_tables() {
    // T0SZ = 24, SL0 = 1 → level 2 with 16 KiB. Level 2 resolves IPA[39:25]
    // = 15 bits; one 16 KiB table holds 2^11 entries → 2^4 = 16 tables,
    // 256 KiB, aligned to 256 KiB.
    let v = vtcr(40, 1, TG_16K, PS_48);
    let c = caps(48);
    let cfg = stage2::decode_vtcr(v, &c).unwrap();
    assert_eq!(
        (
            cfg.granule_shift,
            cfg.start_level,
            cfg.concatenated_tables,
            cfg.root_bytes
        ),
        (14, 2, 16, 0x40000)
    );

    let root = 0x40000;
    let mut img = FlatImage::zeroed(root, 0x44000); // root + one L3 table at 0x80000
                                                    // IPA1 = 0xF·2^36 + 0x7FF·2^25 + 0x1AB_CDEF: L2 index IPA[39:25] = 0x7FFF,
                                                    // the last entry of the 16th table, at 0x40000 + 0x7FFF·8 = 0x7FFF8:
                                                    // a 32 MiB block at 0x1_FE00_0000.
    let ipa1 = (0xF << 36) | (0x7FF << 25) | 0x1AB_CDEF;
    put(&mut img, 0x7FFF8, BLOCK | 0x1_FE00_0000 | RW_LEAF);
    let t = stage2::peek(&img, v, root, &c, ipa1, Access::Read).unwrap();
    assert_eq!((t.pa, t.level, t.block_size), (0x1_FFAB_CDEF, 2, 1 << 25));

    // IPA2 = 1·2^25 + 3·2^14 + 0x2ABC: L2 index 1 → 0x40008 → table 0x80000;
    // L3 index IPA[24:14] = 3 → 0x80018, a 16 KiB page at 0x1234_C000.
    let ipa2 = (1 << 25) | (3 << 14) | 0x2ABC;
    put(&mut img, 0x40008, TABLE | 0x80000);
    put(&mut img, 0x80018, PAGE | 0x1234_C000 | RW_LEAF);
    let t = stage2::peek(&img, v, root, &c, ipa2, Access::Read).unwrap();
    assert_eq!((t.pa, t.level, t.block_size), (0x1234_EABC, 3, 1 << 14));
}

#[test]
fn sixty_four_k_ipa42_starts_at_level_2_with_one_root_table() {
    // 64 KiB, stride 13. IPA 42 at level 2 resolves IPA[41:29] = 13 bits =
    // exactly one 64 KiB table. Level 1 would need ≥ 2·13 + 16 + 1 = 43 bits.
    let v = vtcr(42, 1, TG_64K, PS_48);
    let c = caps(48);
    let cfg = stage2::decode_vtcr(v, &c).unwrap();
    assert_eq!(
        (
            cfg.granule_shift,
            cfg.start_level,
            cfg.concatenated_tables,
            cfg.root_bytes
        ),
        (16, 2, 1, 0x10000)
    );
    assert_eq!(
        stage2::decode_vtcr_detailed(vtcr(42, 2, TG_64K, PS_48), &c),
        Err(ConfigError::InconsistentStartLevel {
            start_level: 1,
            ipa_bits: 42
        })
    );

    let root = 0x100000;
    let mut img = FlatImage::zeroed(root, 0x20000);
    // IPA1 = 0x1ABC·2^29 + 0x1234_5678: L2 index 0x1ABC → 0x100000 + 0xD5E0,
    // a 512 MiB block at 0xE000_0000.
    let ipa1 = (0x1ABC << 29) | 0x1234_5678;
    put(&mut img, root + 0xD5E0, BLOCK | 0xE000_0000 | RW_LEAF);
    let t = stage2::peek(&img, v, root, &c, ipa1, Access::Read).unwrap();
    assert_eq!((t.pa, t.level, t.block_size), (0xF234_5678, 2, 1 << 29));

    // IPA2 = 1·2^29 + 0x12·2^16 + 0xBEEF: L2 index 1 → table 0x110000;
    // L3 index IPA[28:16] = 0x12 → 0x110090, a 64 KiB page at 0x7_0001_0000.
    let ipa2 = (1 << 29) | (0x12 << 16) | 0xBEEF;
    put(&mut img, root + 8, TABLE | 0x110000);
    put(&mut img, 0x110090, PAGE | 0x7_0001_0000 | RW_LEAF);
    let t = stage2::peek(&img, v, root, &c, ipa2, Access::Read).unwrap();
    assert_eq!((t.pa, t.level, t.block_size), (0x7_0001_BEEF, 3, 1 << 16));
}

#[test]
fn sixty_four_k_ipa52_with_lpa_takes_oa_51_48_from_bits_15_12() {
    // FEAT_LPA, PAMax 52. T0SZ = 12, SL0 = 2 → level 1: IPA[51:42] = 10 bits
    // = 1024 entries, an 8 KiB root. PS = 52 bits → 52-bit BADDR layout.
    let c = Stage2Caps {
        lpa_64k: true,
        ..caps(52)
    };
    let v = vtcr(52, 2, TG_64K, PS_52);
    let cfg = stage2::decode_vtcr(v, &c).unwrap();
    assert_eq!(
        (
            cfg.start_level,
            cfg.concatenated_tables,
            cfg.root_bytes,
            cfg.oa_bits
        ),
        (1, 1, 0x2000, 52)
    );
    assert!(cfg.baddr_52);

    // Tables live above 2^48: B = 0xA_0000_0000_0000 (OA[51:48] = 0xA).
    // VTTBR: BADDR[47:6] = 0, BADDR[51:48] = 0xA in bits 5:2 → 0x28.
    let b: u64 = 0xA_0000_0000_0000;
    let vttbr = 0xA << 2;
    let mut img = FlatImage::zeroed(b, 0x30000);
    // A table descriptor for B + off holds off in bits 47:16 and 0xA in 15:12.
    let table = |off: u64| off | (0xA << 12) | TABLE;

    // IPA1 = 0x3FF·2^42 + 0x123_4567_89AB: L1 index 0x3FF → B + 0x1FF8, a
    // 4 TiB block (allowed at level 1 with 52-bit 64 KiB) at OA
    // 0xC_0000_0000_0000: OA[51:48] = 0xC in bits 15:12, OA[47:42] = 0.
    let ipa1 = (0x3FF << 42) | 0x123_4567_89AB;
    put(&mut img, b + 0x1FF8, BLOCK | (0xC << 12) | RW_LEAF);
    let t = stage2::peek(&img, v, vttbr, &c, ipa1, Access::Read).unwrap();
    assert_eq!(
        (t.pa, t.level, t.block_size),
        (0xC_0123_4567_89AB, 1, 1 << 42)
    );

    // IPA2 = 1·2^42 + 2·2^29 + 7·2^16 + 0x4321:
    // L1 index 1 → B + 8 → table B + 0x10000;
    // L2 index 2 → B + 0x10010 → table B + 0x20000;
    // L3 index 7 → B + 0x20038, a page at OA 0xF_1234_5678_0000
    // (bits 47:16 = 0x1234_5678_0000, bits 15:12 = 0xF).
    let ipa2 = (1 << 42) | (2 << 29) | (7 << 16) | 0x4321;
    put(&mut img, b + 8, table(0x10000));
    put(&mut img, b + 0x10010, table(0x20000));
    put(
        &mut img,
        b + 0x20038,
        PAGE | 0x1234_5678_0000 | (0xF << 12) | RW_LEAF,
    );
    let t = stage2::peek(&img, v, vttbr, &c, ipa2, Access::Read).unwrap();
    assert_eq!((t.pa, t.level), (0xF_1234_5678_4321, 3));

    // With PS = 48 bits the 48-bit BADDR layout applies: 0x28 is then a
    // root at 0x28, not aligned to the 8 KiB root.
    let v48 = vtcr(52, 2, TG_64K, PS_48);
    assert!(!stage2::decode_vtcr(v48, &c).unwrap().baddr_52);
    assert_eq!(
        stage2::peek(&img, v48, vttbr, &c, ipa2, Access::Read),
        Err(Stage2Fault::InvalidConfig)
    );
}

/// A table descriptor for `addr` with DS = 1 (4 KiB): addr[47:12] in place,
/// addr[49:48] in bits 49:48, addr[51:50] in bits 9:8.
fn lpa2_table(addr: u64) -> u64 {
    (addr & 0xFFFF_FFFF_F000) | (addr & (0b11 << 48)) | ((addr >> 50) & 0b11) << 8 | TABLE
}

#[test]
fn four_k_ipa52_with_lpa2_takes_oa_51_50_from_bits_9_8() {
    // FEAT_LPA2, DS = 1, PAMax 52. T0SZ = 12, SL0 = 2 → level 0:
    // IPA[51:39] = 13 bits = 8192 entries = 16 concatenated 4 KiB tables.
    let c = Stage2Caps {
        lpa2: true,
        ..caps(52)
    };
    let v = vtcr(52, 2, TG_4K, PS_52) | DS | SH0_INNER;
    let cfg = stage2::decode_vtcr(v, &c).unwrap();
    assert_eq!(
        (
            cfg.start_level,
            cfg.concatenated_tables,
            cfg.root_bytes,
            cfg.oa_bits
        ),
        (0, 16, 0x10000, 52)
    );
    assert!(cfg.lpa2 && cfg.baddr_52);
    assert_eq!(cfg.sh0, 0b11);

    // B = 0xD_0000_0000_0000: OA[51:50] = 0b11, OA[49:48] = 0b01.
    // VTTBR: BADDR[51:48] = 0xD in bits 5:2 → 0x34.
    let b: u64 = 0xD_0000_0000_0000;
    let vttbr = 0xD << 2;
    let mut img = FlatImage::zeroed(b, 0x13000);
    assert_eq!(
        lpa2_table(b + 0x10000),
        0x1_0000_0000_0000 | 0x10000 | 0x300 | TABLE
    );

    // IPA1 = 0x1001·2^39 + 2·2^30 + 3·2^21 + 4·2^12 + 0x567:
    // L0 index 0x1001 → ninth root page, entry 1: B + 0x8008 → table B + 0x10000;
    // L1 index 2 → B + 0x10010 → table B + 0x11000;
    // L2 index 3 → B + 0x11018 → table B + 0x12000;
    // L3 index 4 → B + 0x12020: page at OA 0xE_1234_5678_9000, i.e.
    // OA[47:12] in place, OA[49:48] = 0b10 in bits 49:48, OA[51:50] = 0b11 in bits 9:8.
    let ipa1 = (0x1001 << 39) | (2 << 30) | (3 << 21) | (4 << 12) | 0x567;
    put(&mut img, b + 0x8008, lpa2_table(b + 0x10000));
    put(&mut img, b + 0x10010, lpa2_table(b + 0x11000));
    put(&mut img, b + 0x11018, lpa2_table(b + 0x12000));
    let leaf = PAGE | 0x1234_5678_9000 | (0b10 << 48) | (0b11 << 8) | RW_LEAF_NO_SH;
    put(&mut img, b + 0x12020, leaf);
    let t = stage2::peek(&img, v, vttbr, &c, ipa1, Access::Read).unwrap();
    assert_eq!((t.pa, t.level), (0xE_1234_5678_9567, 3));
    assert_eq!(t.sh, None, "with DS = 1 bits 9:8 are address bits");

    // IPA2 = 0x1FFF·2^39 + 0x12_3456_789A: L0 index 0x1FFF → B + 0xFFF8, a
    // 512 GiB block (level 0 blocks exist only with DS = 1) at OA
    // 0xF_FF80_0000_0000: OA[47:39] = 0x1FF, OA[49:48] = 0b11, OA[51:50] = 0b11.
    let ipa2 = (0x1FFF << 39) | 0x12_3456_789A;
    put(
        &mut img,
        b + 0xFFF8,
        BLOCK | 0xFF80_0000_0000 | (0b11 << 48) | (0b11 << 8) | RW_LEAF_NO_SH,
    );
    let t = stage2::peek(&img, v, vttbr, &c, ipa2, Access::Read).unwrap();
    assert_eq!(
        (t.pa, t.level, t.block_size),
        (0xF_FF92_3456_789A, 0, 1 << 39)
    );
}

/// Puts a block descriptor (`OA = 3 × block size`) in entry 0 of the root
/// and translates IPA 0x1234; `ds` adds VTCR.DS.
fn block_in_root(
    ipa_bits: u64,
    sl0: u64,
    tg0: u64,
    ps: u64,
    c: Stage2Caps,
    ds: bool,
) -> Result<(u64, i8, u64), Stage2Fault> {
    let v = vtcr(ipa_bits, sl0, tg0, ps) | if ds { DS } else { 0 };
    let cfg = stage2::decode_vtcr(v, &c).expect("the configuration itself is valid");
    let g = u32::from(cfg.granule_shift);
    let block = 1u64 << (g + (g - 3) * (3 - cfg.start_level) as u32);
    let root = 0x100000;
    let mut img = FlatImage::zeroed(root, 0x10000);
    put(&mut img, root, BLOCK | (3 * block) | RW_LEAF_NO_SH);
    stage2::peek(&img, v, root, &c, 0x1234, Access::Read).map(|t| {
        assert_eq!(t.pa, 3 * block + 0x1234);
        (t.pa, t.level, t.block_size)
    })
}

#[test]
fn blocks_exist_only_at_the_levels_the_granule_allows() {
    let c48 = caps(48);
    let lpa2 = Stage2Caps {
        lpa2: true,
        ..caps(52)
    };
    let lpa = Stage2Caps {
        lpa_64k: true,
        ..caps(52)
    };
    let ok = |level: i8, shift: u32| Ok(((3u64 << shift) + 0x1234, level, 1u64 << shift));
    // 4 KiB: level 0 (512 GiB) only with DS = 1; levels 1 (1 GiB) and 2 (2 MiB).
    assert_eq!(
        block_in_root(48, 2, TG_4K, PS_48, c48, false),
        Err(Stage2Fault::Translation { level: 0 })
    );
    assert_eq!(block_in_root(48, 2, TG_4K, PS_52, lpa2, true), ok(0, 39));
    assert_eq!(block_in_root(40, 1, TG_4K, PS_48, c48, false), ok(1, 30));
    assert_eq!(block_in_root(32, 0, TG_4K, PS_48, c48, false), ok(2, 21));
    // 16 KiB: level 1 (64 GiB) only with DS = 1; level 2 (32 MiB).
    // IPA 47 at level 1: IPA[46:36] = 11 bits, one table.
    assert_eq!(
        block_in_root(47, 2, TG_16K, PS_48, c48, false),
        Err(Stage2Fault::Translation { level: 1 })
    );
    assert_eq!(block_in_root(47, 2, TG_16K, PS_52, lpa2, true), ok(1, 36));
    assert_eq!(block_in_root(40, 1, TG_16K, PS_48, c48, false), ok(2, 25));
    // 64 KiB: level 1 (4 TiB) only with 52-bit PAs (FEAT_LPA); level 2 (512 MiB).
    assert_eq!(
        block_in_root(48, 2, TG_64K, PS_48, c48, false),
        Err(Stage2Fault::Translation { level: 1 })
    );
    assert_eq!(block_in_root(48, 2, TG_64K, PS_52, lpa, false), ok(1, 42));
    assert_eq!(block_in_root(42, 1, TG_64K, PS_48, c48, false), ok(2, 29));

    // Level 3: bit 1 = 0 is not a page but a translation fault.
    let v = vtcr(32, 0, TG_4K, PS_48); // level 2 start, IPA[31:21] = 2048 entries
    let mut img = FlatImage::zeroed(0x100000, 0x10000);
    put(&mut img, 0x100000, TABLE | 0x108000);
    put(&mut img, 0x108000, BLOCK | 0x5000_0000 | RW_LEAF);
    assert_eq!(
        stage2::peek(&img, v, 0x100000, &c48, 0x123, Access::Read),
        Err(Stage2Fault::Translation { level: 3 })
    );
    put(&mut img, 0x108000, PAGE | 0x5000_0000 | RW_LEAF);
    assert_eq!(
        stage2::peek(&img, v, 0x100000, &c48, 0x123, Access::Read).map(|t| t.pa),
        Ok(0x5000_0123)
    );
}

#[test]
fn invalid_sl0_t0sz_combinations_are_invalid_config() {
    let c48 = caps(48);
    let c42 = caps(42);
    let c52 = caps(52);
    let lpa2 = Stage2Caps {
        lpa2: true,
        ..caps(52)
    };
    let cases: [(u64, Stage2Caps, ConfigError); 12] = [
        // 4 KiB level 1 resolves at most 2·9 + 12 + 1 + 8 + 4 = 43 bits.
        (
            vtcr(48, 1, TG_4K, PS_48),
            c48,
            ConfigError::InconsistentStartLevel {
                start_level: 1,
                ipa_bits: 48,
            },
        ),
        // 4 KiB level 0 needs at least 3·9 + 12 + 1 = 40 bits (2 entries).
        (
            vtcr(32, 2, TG_4K, PS_48),
            c48,
            ConfigError::InconsistentStartLevel {
                start_level: 0,
                ipa_bits: 32,
            },
        ),
        // SL0 = 3: level 3 with 4 KiB needs FEAT_TTST; reserved for 64 KiB;
        // level 0 with 16 KiB needs DS = 1.
        (vtcr(40, 3, TG_4K, PS_48), c48, ConfigError::InvalidSl0(3)),
        (vtcr(40, 3, TG_64K, PS_48), c48, ConfigError::InvalidSl0(3)),
        (vtcr(48, 3, TG_16K, PS_48), c48, ConfigError::InvalidSl0(3)),
        // 4 KiB level 0 needs PAMax >= 44.
        (vtcr(42, 2, TG_4K, PS_40), c42, ConfigError::InvalidSl0(2)),
        // IPA wider than the PA range, or than 48 bits without a 52-bit format.
        (
            vtcr(56, 2, TG_4K, PS_48),
            c48,
            ConfigError::IpaTooLarge {
                ipa_bits: 56,
                max: 48,
            },
        ),
        (
            vtcr(52, 2, TG_4K, PS_52),
            c52,
            ConfigError::IpaTooLarge {
                ipa_bits: 52,
                max: 48,
            },
        ),
        // T0SZ = 40: IPA 24 < 25 bits.
        (
            vtcr(24, 0, TG_4K, PS_48),
            c48,
            ConfigError::IpaTooSmall { ipa_bits: 24 },
        ),
        (vtcr(40, 1, 0b11, PS_48), c48, ConfigError::ReservedGranule),
        (vtcr(52, 0, TG_4K, PS_52) | DS | SL2, lpa2, ConfigError::Sl2),
        (
            vtcr(40, 1, TG_4K, PS_48),
            caps(50),
            ConfigError::PaRange(50),
        ),
    ];
    let mut img = image_40();
    map_a(&mut img, PAGE | 0x8765_4000 | RW_LEAF);
    for (v, c, why) in cases {
        assert_eq!(stage2::decode_vtcr_detailed(v, &c), Err(why), "VTCR {v:#x}");
        assert_eq!(stage2::decode_vtcr(v, &c), Err(Stage2Fault::InvalidConfig));
        assert_eq!(
            stage2::translate(&mut img, v, ROOT_40, &c, 0x1000, Access::Read),
            Err(Stage2Fault::InvalidConfig),
            "{why}"
        );
    }

    // Valid neighbours: 4 KiB level 2 with IPA 32 (IPA[31:21] = 11 bits =
    // 4 tables); 16 KiB level 0 with DS = 1 and PAMax 52.
    let cfg = stage2::decode_vtcr(vtcr(32, 0, TG_4K, PS_48), &c48).unwrap();
    assert_eq!((cfg.start_level, cfg.concatenated_tables), (2, 4));
    let cfg = stage2::decode_vtcr(vtcr(52, 3, TG_16K, PS_52) | DS, &lpa2).unwrap();
    // 16 KiB level 0 resolves IPA[51:47] = 5 bits: 32 entries, one table.
    assert_eq!(
        (cfg.start_level, cfg.concatenated_tables, cfg.root_bytes),
        (0, 1, 256)
    );
    // SL2 is RES0 (ignored) when it cannot be effective (no DS).
    assert!(stage2::decode_vtcr(vtcr_40() | SL2, &c48).is_ok());

    // A root not aligned to the 8 KiB concatenated root.
    let cfg = stage2::decode_vtcr(vtcr_40(), &c48).unwrap();
    assert_eq!(
        stage2::decode_vttbr(0x11000, &cfg),
        Err(ConfigError::RootMisaligned {
            root: 0x11000,
            align: 0x2000
        })
    );
    assert_eq!(
        stage2::peek(&img, vtcr_40(), 0x11000, &c48, IPA_A, Access::Read),
        Err(Stage2Fault::InvalidConfig)
    );
    // VMID (63:48) and CnP (bit 0) are not part of the address.
    let vttbr = 0xABCD << 48 | ROOT_40 | 1;
    assert_eq!(stage2::decode_vttbr(vttbr, &cfg), Ok(ROOT_40));
    assert!(stage2::peek(&img, vtcr_40(), vttbr, &c48, IPA_A, Access::Read).is_ok());
}

#[test]
fn ipa_beyond_the_ipa_size_is_a_level_0_translation_fault() {
    let img = image_40();
    for ipa in [1 << 40, u64::MAX, 0x100_0000_0000 | 0x1000] {
        assert_eq!(
            stage2::peek(&img, vtcr_40(), ROOT_40, &caps(48), ipa, Access::Read),
            Err(Stage2Fault::Translation { level: 0 })
        );
    }
}

#[test]
fn access_flag_faults_without_ha_and_is_set_by_hardware_with_ha() {
    let leaf = PAGE | 0x8765_4000 | MEM_WB | S2AP_R | S2AP_W; // AF = 0
    let mut img = image_40();
    map_a(&mut img, leaf);
    let before = img.clone();
    let with_hafdbs = Stage2Caps {
        ha_hd: true,
        ..caps(48)
    };

    // HA = 0, or HA = 1 on a processor without FEAT_HAFDBS: Access flag fault.
    for (v, c) in [(vtcr_40(), with_hafdbs), (vtcr_40() | HA, caps(48))] {
        for access in Access::ALL {
            assert_eq!(
                stage2::translate(&mut img, v, ROOT_40, &c, IPA_A, access),
                Err(Stage2Fault::AccessFlag { level: 3 })
            );
        }
    }
    assert_eq!(img, before);

    // The Access flag fault comes before the permission check.
    put(&mut img, L3_SLOT_A, PAGE | 0x8765_4000 | MEM_WB); // S2AP = 00, AF = 0
    assert_eq!(
        stage2::peek(&img, vtcr_40(), ROOT_40, &caps(48), IPA_A, Access::Write),
        Err(Stage2Fault::AccessFlag { level: 3 })
    );
    // With HA the same access is a permission fault, and nothing is written.
    let snapshot = img.clone();
    assert_eq!(
        stage2::translate(
            &mut img,
            vtcr_40() | HA,
            ROOT_40,
            &with_hafdbs,
            IPA_A,
            Access::Write
        ),
        Err(Stage2Fault::Permission { level: 3 })
    );
    assert_eq!(img, snapshot, "no AF update on a faulting access");
    put(&mut img, L3_SLOT_A, leaf);

    // HA = 1: peek succeeds and writes nothing; translate sets AF.
    let v = vtcr_40() | HA;
    let p = stage2::peek(&img, v, ROOT_40, &with_hafdbs, IPA_A, Access::Read).unwrap();
    assert!(!p.af);
    assert_eq!(p.leaf_entry, leaf);
    assert_eq!(img, before);
    let t = stage2::translate(&mut img, v, ROOT_40, &with_hafdbs, IPA_A, Access::Read).unwrap();
    assert!(t.af);
    assert_eq!(t.leaf_entry, leaf | AF);
    assert_eq!(img.read_u64_le(L3_SLOT_A), Some(leaf | AF));
    // Only the leaf changed: table descriptors have no AF at stage 2 here.
    assert_eq!(img.read_u64_le(L1_SLOT_A), Some(TABLE | L2_40));
    assert_eq!(img.read_u64_le(L2_SLOT_A), Some(TABLE | L3_40));
}

#[test]
fn dbm_write_sets_s2ap_write_with_hd_and_is_a_permission_fault_without() {
    // Read-only page with DBM = 1: "writable, clean".
    let leaf = PAGE | 0x8765_4000 | MEM_WB | S2AP_R | SH_INNER | AF | DBM;
    let mut img = image_40();
    map_a(&mut img, leaf);
    let before = img.clone();
    let hafdbs = Stage2Caps {
        ha_hd: true,
        ..caps(48)
    };

    // HD needs HA too; and both need FEAT_HAFDBS.
    for (v, c) in [
        (vtcr_40() | HA, hafdbs),
        (vtcr_40() | HD, hafdbs),
        (vtcr_40() | HA | HD, caps(48)),
    ] {
        assert_eq!(
            stage2::translate(&mut img, v, ROOT_40, &c, IPA_A, Access::Write),
            Err(Stage2Fault::Permission { level: 3 }),
            "VTCR {v:#x}"
        );
        let t = stage2::translate(&mut img, v, ROOT_40, &c, IPA_A, Access::Read).unwrap();
        assert!(!t.write && t.dbm && !t.dirty);
    }
    assert_eq!(img, before);

    let v = vtcr_40() | HA | HD;
    // A read with HD on leaves the page clean.
    let t = stage2::translate(&mut img, v, ROOT_40, &hafdbs, IPA_A, Access::Read).unwrap();
    assert!(t.write && !t.dirty, "DBM makes the page writable");
    assert_eq!(img, before);
    // peek of a write: allowed, nothing written.
    let p = stage2::peek(&img, v, ROOT_40, &hafdbs, IPA_A, Access::Write).unwrap();
    assert!(p.write && !p.dirty);
    assert_eq!(img, before);
    // translate of a write: S2AP[1] (bit 7) is set: the page is dirty.
    let t = stage2::translate(&mut img, v, ROOT_40, &hafdbs, IPA_A, Access::Write).unwrap();
    assert!(t.write && t.dirty);
    assert_eq!(t.leaf_entry, leaf | S2AP_W);
    assert_eq!(img.read_u64_le(L3_SLOT_A), Some(leaf | S2AP_W));
}

#[test]
fn xn_and_the_four_xnx_encodings_control_el1_and_el0_fetches() {
    let mut img = image_40();
    // (bits 54:53, FEAT_XNX, EL1 fetch allowed, EL0 fetch allowed)
    let cases = [
        (0b00, false, true, true),
        (0b01, false, true, true), // bit 53 is ignored without FEAT_XNX
        (0b10, false, false, false),
        (0b11, false, false, false),
        (0b00, true, true, true),   // 00: executable at EL1 and EL0
        (0b01, true, false, true),  // 01: not at EL1 (PXN)
        (0b10, true, false, false), // 10: not at all (XN)
        (0b11, true, true, false),  // 11: not at EL0 (UXN)
    ];
    for (xn, xnx, el1, el0) in cases {
        let bits = if xn & 0b10 != 0 { XN1 } else { 0 } | if xn & 0b01 != 0 { XN0 } else { 0 };
        map_a(&mut img, PAGE | 0x8765_4000 | RW_LEAF | bits);
        let c = Stage2Caps { xnx, ..caps(48) };
        let fetch = |access| stage2::peek(&img, vtcr_40(), ROOT_40, &c, IPA_A, access);
        let expect = |allowed: bool| {
            if allowed {
                Ok(0x8765_4678)
            } else {
                Err(Stage2Fault::Permission { level: 3 })
            }
        };
        assert_eq!(
            fetch(Access::ExecSupervisor).map(|t| t.pa),
            expect(el1),
            "XN {xn:02b} XNX {xnx}"
        );
        assert_eq!(
            fetch(Access::ExecUser).map(|t| t.pa),
            expect(el0),
            "XN {xn:02b} XNX {xnx}"
        );
        let t = fetch(Access::Read).unwrap();
        assert_eq!((t.exec_el1, t.exec_el0), (el1, el0));
    }
}

#[test]
fn instruction_fetch_from_stage2_device_memory_is_a_permission_fault() {
    let mut img = image_40();
    map_a(
        &mut img,
        PAGE | 0x8765_4000 | MEM_DEVICE | S2AP_R | S2AP_W | AF,
    );
    for fwb in [false, true] {
        // MemAttr 0b0001 is Device-nGnRE in both encodings.
        let c = Stage2Caps { fwb, ..caps(48) };
        let t = stage2::peek(&img, vtcr_40(), ROOT_40, &c, IPA_A, Access::Read).unwrap();
        assert_eq!(t.mem_kind, Stage2MemKind::Device(DeviceType::NGnRE));
        assert!(!t.exec_el1 && !t.exec_el0);
        for access in [Access::ExecSupervisor, Access::ExecUser] {
            assert_eq!(
                stage2::peek(&img, vtcr_40(), ROOT_40, &c, IPA_A, access),
                Err(Stage2Fault::Permission { level: 3 })
            );
        }
    }
    // FWB MemAttr 0b0111: "use the stage-1 attributes", not Device.
    map_a(&mut img, PAGE | 0x8765_4000 | 0x7 << 2 | S2AP_R | AF);
    let c = Stage2Caps {
        fwb: true,
        ..caps(48)
    };
    let t = stage2::peek(&img, vtcr_40(), ROOT_40, &c, IPA_A, Access::ExecUser).unwrap();
    assert_eq!(
        (t.memattr, t.fwb, t.mem_kind),
        (0x7, true, Stage2MemKind::Stage1)
    );
}

#[test]
fn output_addresses_beyond_ps_are_address_size_faults() {
    let c = caps(48);
    let v40 = vtcr(40, 1, TG_4K, PS_40); // output size 40 bits
    assert_eq!(stage2::decode_vtcr(v40, &c).unwrap().oa_bits, 40);
    let mut img = image_40();

    // Leaf OA 2^40: one bit too many → fault at the leaf's level (3).
    map_a(&mut img, PAGE | 0x100_0000_0000 | RW_LEAF);
    assert_eq!(
        stage2::peek(&img, v40, ROOT_40, &c, IPA_A, Access::Read),
        Err(Stage2Fault::AddressSize { level: 3 })
    );
    map_a(&mut img, PAGE | 0xFF_FFFF_F000 | RW_LEAF);
    assert_eq!(
        stage2::peek(&img, v40, ROOT_40, &c, IPA_A, Access::Read).map(|t| t.pa),
        Ok(0xFF_FFFF_F678)
    );
    // The same leaf OA is fine with PS = 48 bits.
    map_a(&mut img, PAGE | 0x100_0000_0000 | RW_LEAF);
    assert!(stage2::peek(&img, vtcr_40(), ROOT_40, &c, IPA_A, Access::Read).is_ok());

    // A level-1 table descriptor pointing at 2^40 → fault reported at level 1
    // (the level of the descriptor holding the address).
    put(&mut img, L1_SLOT_A, TABLE | 0x100_0000_0000);
    assert_eq!(
        stage2::peek(&img, v40, ROOT_40, &c, IPA_A, Access::Read),
        Err(Stage2Fault::AddressSize { level: 1 })
    );

    // The root itself above the output size: level 0 (the "TTBR" case),
    // whatever the start level. PS = 32 bits, root at 4 GiB; 4 KiB level 2
    // start with a 32-bit IPA.
    let v32 = vtcr(32, 0, TG_4K, PS_32);
    assert_eq!(
        stage2::peek(&img, v32, 0x1_0000_0000, &c, 0x1000, Access::Read),
        Err(Stage2Fault::AddressSize { level: 0 })
    );

    // PS above the implemented PA size is capped to it.
    assert_eq!(
        stage2::decode_vtcr(vtcr(40, 1, TG_4K, PS_48), &caps(40))
            .unwrap()
            .oa_bits,
        40
    );
    // PS = 52 without a 52-bit format is 48 bits.
    assert_eq!(
        stage2::decode_vtcr(vtcr(40, 1, TG_4K, PS_52), &caps(52))
            .unwrap()
            .oa_bits,
        48
    );

    // 64 KiB without FEAT_LPA: bits 15:12 still count as OA[51:48], so a
    // non-zero value is an address size fault (the walker's choice).
    let v64 = vtcr(42, 1, TG_64K, PS_48);
    let mut img64 = FlatImage::zeroed(0x100000, 0x10000);
    put(
        &mut img64,
        0x100000,
        BLOCK | 0xE000_0000 | (1 << 12) | RW_LEAF,
    );
    assert_eq!(
        stage2::peek(&img64, v64, 0x100000, &c, 0x1234, Access::Read),
        Err(Stage2Fault::AddressSize { level: 2 })
    );
}

#[test]
fn entries_outside_memory_are_reported_with_level_and_address() {
    let c = caps(48);
    let mut img = image_40();
    // Root outside the image: the L1 entry for IPA_A is at 0x40000 + 0x1008.
    assert_eq!(
        stage2::peek(&img, vtcr_40(), 0x40000, &c, IPA_A, Access::Read),
        Err(Stage2Fault::EntryOutsideMemory {
            level: 1,
            pa: 0x41008
        })
    );
    // Level-2 table outside: entry 3 of a table at 0x8000_0000.
    map_a(&mut img, PAGE | 0x8765_4000 | RW_LEAF);
    put(&mut img, L1_SLOT_A, TABLE | 0x8000_0000);
    assert_eq!(
        stage2::peek(&img, vtcr_40(), ROOT_40, &c, IPA_A, Access::Read),
        Err(Stage2Fault::EntryOutsideMemory {
            level: 2,
            pa: 0x8000_0018
        })
    );
}

#[test]
fn peek_never_writes_and_translate_updates_af_and_dirty_in_one_write() {
    let leaf = PAGE | 0x8765_4000 | MEM_WB | S2AP_R | DBM; // AF = 0, clean
    let mut img = image_40();
    map_a(&mut img, leaf);
    let before = img.clone();
    let c = Stage2Caps {
        ha_hd: true,
        ..caps(48)
    };
    let v = vtcr_40() | HA | HD;
    for access in Access::ALL {
        let p = stage2::peek(&img, v, ROOT_40, &c, IPA_A, access).unwrap();
        assert_eq!((p.af, p.dirty, p.leaf_entry), (false, false, leaf));
    }
    assert_eq!(img, before);

    /// Counts the writes that reach memory.
    struct Counting(FlatImage, usize);
    impl PhysMem for Counting {
        fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
            self.0.read(pa, buf)
        }
        fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
            self.1 += 1;
            self.0.write(pa, buf)
        }
    }
    let mut mem = Counting(img, 0);
    let t = stage2::translate(&mut mem, v, ROOT_40, &c, IPA_A, Access::Write).unwrap();
    assert_eq!(mem.1, 1);
    assert_eq!(t.leaf_entry, leaf | AF | S2AP_W);
    assert!(t.af && t.dirty);
    // Nothing left to update: no further writes.
    stage2::translate(&mut mem, v, ROOT_40, &c, IPA_A, Access::Write).unwrap();
    assert_eq!(mem.1, 1);
}

#[test]
fn memory_attributes_decode_in_both_encodings() {
    use Cacheability::{NonCacheable as Nc, Reserved, WriteBack as Wb, WriteThrough as Wt};
    let normal = |outer, inner| Stage2MemKind::Normal { outer, inner };
    // Without FWB: [3:2] = 00 → Device[1:0]; else Normal outer [3:2], inner [1:0].
    let plain = [
        (0x0, Stage2MemKind::Device(DeviceType::NGnRnE)),
        (0x1, Stage2MemKind::Device(DeviceType::NGnRE)),
        (0x2, Stage2MemKind::Device(DeviceType::NGRE)),
        (0x3, Stage2MemKind::Device(DeviceType::GRE)),
        (0x4, normal(Nc, Reserved)),
        (0x5, normal(Nc, Nc)),
        (0xA, normal(Wt, Wt)),
        (0xE, normal(Wb, Wt)),
        (0xF, normal(Wb, Wb)),
    ];
    for (m, kind) in plain {
        assert_eq!(stage2::decode_memattr(m, false), kind, "MemAttr {m:#x}");
    }
    // With FWB: [2] = 0 → Device[1:0]; 101 NC, 110 forced WB, 111 stage 1.
    let fwb = [
        (0x1, Stage2MemKind::Device(DeviceType::NGnRE)),
        (0x9, Stage2MemKind::Device(DeviceType::NGnRE)),
        (0x5, normal(Nc, Nc)),
        (0x6, normal(Wb, Wb)),
        (0xE, normal(Wb, Wb)),
        (0x7, Stage2MemKind::Stage1),
    ];
    for (m, kind) in fwb {
        assert_eq!(stage2::decode_memattr(m, true), kind, "FWB MemAttr {m:#x}");
    }

    // Through a walk: raw MemAttr and SH are reported as found.
    let mut img = image_40();
    map_a(
        &mut img,
        PAGE | 0x8765_4000 | 0x5 << 2 | 0b10 << 8 | S2AP_R | AF,
    );
    let t = stage2::peek(&img, vtcr_40(), ROOT_40, &caps(48), IPA_A, Access::Read).unwrap();
    assert_eq!(
        (t.memattr, t.mem_kind, t.sh),
        (0x5, normal(Nc, Nc), Some(0b10))
    );
    assert!(!t.write);
}

#[test]
fn a_contiguous_leaf_takes_the_low_output_bits_of_the_whole_run_from_the_ipa() {
    // 4 KiB: a contiguous run is 16 entries (64 KiB). Entry 17 is in the run
    // of entries 16..=31; StageOA keeps OA[63:16] from the descriptor and
    // IPA[15:0] from the input. IPA with L3 index 17 and offset 0x234:
    // IPA[15:0] = 0x1234.
    let ipa = IPA_A - (5 << 12) - 0x678 + (17 << 12) + 0x234;
    let slot = L3_40 + 17 * 8;
    let mut img = image_40();
    map_a(&mut img, 0);
    // Deliberately the run's base, not base + 0x1000.
    put(&mut img, slot, PAGE | 0x5000_0000 | RW_LEAF | CONT);
    let t = stage2::peek(&img, vtcr_40(), ROOT_40, &caps(48), ipa, Access::Read).unwrap();
    assert!(t.contiguous);
    assert_eq!((t.pa, t.block_size), (0x5000_1234, 0x1000));
    put(&mut img, slot, PAGE | 0x5000_0000 | RW_LEAF);
    let t = stage2::peek(&img, vtcr_40(), ROOT_40, &caps(48), ipa, Access::Read).unwrap();
    assert_eq!(t.pa, 0x5000_0234);
}

#[test]
fn faults_map_to_esr_fault_status_codes() {
    assert_eq!(Stage2Fault::AddressSize { level: 0 }.fsc(), Some(0x00));
    assert_eq!(Stage2Fault::Translation { level: 1 }.fsc(), Some(0x05));
    assert_eq!(Stage2Fault::AccessFlag { level: 2 }.fsc(), Some(0x0A));
    assert_eq!(Stage2Fault::Permission { level: 3 }.fsc(), Some(0x0F));
    assert_eq!(Stage2Fault::Translation { level: -1 }.fsc(), None);
    assert_eq!(Stage2Fault::InvalidConfig.fsc(), None);
}

// ---------------------------------------------------------------------------
// Property test.
//
// Memory is procedural, so that 64 KiB tables and 16-table roots cost
// nothing: region r (1 MiB at PBASE + r MiB, r = 0..=3) holds the table for
// level r, its slot i being words[r][i % len]; region 4 reads as zero;
// everything else is outside memory. Writes go to an overlay.
// ---------------------------------------------------------------------------

const PBASE: u64 = 0x4000_0000;
const REGION: u64 = 0x10_0000;
const REGIONS: u64 = 5;

fn region(r: u64) -> u64 {
    PBASE + r * REGION
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PatternMem {
    words: Vec<Vec<u64>>,
    overlay: BTreeMap<u64, u64>,
}

impl PatternMem {
    fn word(&self, aligned: u64) -> Option<u64> {
        let off = aligned.checked_sub(PBASE)?;
        if off >= REGIONS * REGION {
            return None;
        }
        if let Some(w) = self.overlay.get(&aligned) {
            return Some(*w);
        }
        let list = match self.words.get((off / REGION) as usize) {
            Some(list) if !list.is_empty() => list,
            _ => return Some(0),
        };
        Some(list[((off % REGION) / 8) as usize % list.len()])
    }
}

impl PhysMem for PatternMem {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        for (i, byte) in buf.iter_mut().enumerate() {
            let Some(a) = pa.checked_add(i as u64) else {
                return false;
            };
            let Some(w) = self.word(a & !7) else {
                return false;
            };
            *byte = (w >> ((a & 7) * 8)) as u8;
        }
        true
    }

    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        let ok = (0..buf.len() as u64)
            .all(|i| pa.checked_add(i).and_then(|a| self.word(a & !7)).is_some());
        if !ok {
            return false;
        }
        for (i, byte) in buf.iter().enumerate() {
            let a = pa + i as u64;
            let shift = (a & 7) * 8;
            let w = self.word(a & !7).unwrap_or(0);
            let w = (w & !(0xFF << shift)) | u64::from(*byte) << shift;
            self.overlay.insert(a & !7, w);
        }
        true
    }
}

/// Optionally flip one random bit.
fn noise() -> impl Strategy<Value = u64> {
    prop_oneof![7 => Just(0u64), 1 => (0..64u32).prop_map(|b| 1u64 << b)]
}

/// Mostly-valid descriptors for the table at `level`, with a few random words.
fn entry(level: u64) -> impl Strategy<Value = u64> {
    let leaf_weight = if level == 3 { 1.0 } else { 0.3 };
    let shape = (
        prop::bool::weighted(leaf_weight),
        prop::bool::weighted(0.95),                  // valid
        0..16u64,                                    // MemAttr
        0..4u64,                                     // S2AP
        0..4u64,                                     // SH / OA[51:50]
        prop::bool::weighted(0.8),                   // AF
        any::<bool>(),                               // DBM
        prop::bool::weighted(0.1),                   // Contiguous
        0..4u64,                                     // XN[1:0]
        prop_oneof![7 => Just(0u64), 1 => 0..16u64], // bits 15:12 (64 KiB OA[51:48])
        prop_oneof![3 => Just(0u64), 1 => 0..4u64],  // bits 49:48
        prop_oneof![
            3 => any::<u64>().prop_map(|w| w & 0xFFFF_0000), // OA[31:16]
            1 => any::<u64>().prop_map(|w| w & 0x0000_FFFF_FFFF_0000), // OA[47:16]
        ],
    );
    let valid = (shape, noise()).prop_map(
        move |((leaf, v, attr, ap, sh, af, dbm, cont, xn, hi64k, hi4948, oa), noise)| {
            let word = if leaf {
                // Bit 1 set at level 3 (page), clear above it (block).
                let ty = if level == 3 { 0b10 } else { 0 };
                oa | ty
                    | attr << 2
                    | ap << 6
                    | sh << 8
                    | u64::from(af) << 10
                    | hi64k << 12
                    | hi4948 << 48
                    | u64::from(dbm) << 51
                    | u64::from(cont) << 52
                    | xn << 53
            } else {
                region(level + 1) | 0b10
            };
            (word | u64::from(v)) ^ noise
        },
    );
    prop_oneof![1 => any::<u64>(), 9 => valid]
}

/// The deepest start level (fewest levels) whose range covers `ipa_bits`
/// with granule `tg0` (0 when none does).
fn consistent_start(tg0: u64, ipa_bits: u64) -> u64 {
    let g = match tg0 {
        TG_4K => 12,
        TG_16K => 14,
        _ => 16,
    };
    let stride = g - 3;
    // 4 KiB level 3 (SL0 = 0b11) needs FEAT_TTST, which the walker refuses.
    let deepest = if tg0 == TG_4K { 2 } else { 3 };
    (0..=deepest)
        .rev()
        .find(|s| {
            let min = (3 - s) * stride + g + 1;
            (min..=min + stride + 3).contains(&ipa_bits)
        })
        .unwrap_or(0)
}

fn caps_strategy() -> impl Strategy<Value = Stage2Caps> {
    (
        prop_oneof![
            12 => Just(48u8),
            12 => Just(52u8),
            6 => prop::sample::select(vec![32u8, 36, 40, 42, 44]),
            1 => any::<u8>().prop_map(|b| b % 64)
        ],
        any::<[bool; 5]>(),
    )
        .prop_map(
            |(pa_range_bits, [lpa2, lpa_64k, xnx, fwb, ha_hd])| Stage2Caps {
                pa_range_bits,
                lpa2,
                lpa_64k,
                xnx,
                fwb,
                ha_hd,
            },
        )
}

fn access() -> impl Strategy<Value = Access> {
    prop::sample::select(Access::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        // Integration tests have no lib.rs for proptest to file regressions beside.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn stage2_walk_never_panics_peek_agrees_and_faults_write_nothing(
        words in (0..4u64).map(|l| prop::collection::vec(entry(l), 1..12)).collect::<Vec<_>>(),
        (tg0, ipa_pick) in (prop::sample::select(vec![TG_4K, TG_16K, TG_64K]), any::<u64>()),
        (random_sl0, ps, flags, sl2) in (
            prop::option::weighted(0.1, 0..4u64),
            prop_oneof![3 => Just(PS_48), 3 => Just(PS_52), 2 => 0..8u64],
            any::<[bool; 4]>(),
            prop::bool::weighted(0.05),
        ),
        random_vtcr in prop::option::weighted(0.05, any::<u64>()),
        (vttbr_pick, random_vttbr) in (0..16u64, prop::option::weighted(0.05, any::<u64>())),
        (ipa_low, random_ipa) in (any::<u64>(), prop::option::weighted(0.1, any::<u64>())),
        caps in caps_strategy(),
        access in access(),
    ) {
        let [ha, hd, ds, sh0] = flags;
        // An IPA size the capabilities allow (when they are valid at all),
        // and the start level that fits it.
        let is_64k = tg0 == TG_64K;
        let wide = (is_64k && caps.lpa_64k) || (!is_64k && caps.lpa2 && ds);
        let pa_bits = u64::from(caps.pa_range_bits).clamp(25, 52);
        let max_ipa = if pa_bits == 52 && !wide { 48 } else { pa_bits };
        let ipa_bits = 25 + ipa_pick % (max_ipa - 24);
        let start = consistent_start(tg0, ipa_bits);
        let sl0 = random_sl0.unwrap_or(match tg0 {
            TG_4K => 2u64.wrapping_sub(start) & 3,
            _ => 3 - start,
        });
        let v = random_vtcr.unwrap_or(
            vtcr(ipa_bits, sl0, tg0, ps)
                | if ha { HA } else { 0 }
                | if hd { HD } else { 0 }
                | if ds { DS } else { 0 }
                | if sh0 { SH0_INNER } else { 0 }
                | if sl2 { SL2 } else { 0 },
        );
        // Root in the start level's region; sometimes another region, VMID/CnP
        // bits, or anything at all.
        // (region 5 is outside memory.)
        let vttbr = random_vttbr.unwrap_or(match vttbr_pick {
            0..=2 => region((vttbr_pick + start + 1) % 6),
            3 => 0x1234 << 48 | region(start) | 1,
            _ => region(start),
        });
        let ipa = random_ipa.unwrap_or(ipa_low & ((1 << ipa_bits) - 1));

        let mut mem = PatternMem { words, overlay: BTreeMap::new() };
        let before = mem.clone();
        let peeked = stage2::peek(&mem, v, vttbr, &caps, ipa, access);
        prop_assert_eq!(&mem, &before);
        let translated = stage2::translate(&mut mem, v, vttbr, &caps, ipa, access);
        match (&peeked, &translated) {
            (Ok(p), Ok(t)) => {
                let cfg = stage2::decode_vtcr(v, &caps).unwrap();
                prop_assert_eq!((p.pa, p.level, p.block_size), (t.pa, t.level, t.block_size));
                prop_assert_eq!(
                    (p.read, p.write, p.exec_el1, p.exec_el0, p.memattr, p.mem_kind, p.sh),
                    (t.read, t.write, t.exec_el1, t.exec_el0, t.memattr, t.mem_kind, t.sh)
                );
                prop_assert_eq!((p.dbm, p.contiguous, p.fwb), (t.dbm, t.contiguous, t.fwb));
                prop_assert_eq!(p.pa & (p.block_size - 1), ipa & (p.block_size - 1));
                prop_assert_eq!(p.pa >> cfg.oa_bits, 0);
                prop_assert!((cfg.start_level..=3).contains(&p.level));
                match access {
                    Access::Read => prop_assert!(p.read),
                    Access::Write => prop_assert!(p.write),
                    Access::ExecSupervisor => prop_assert!(p.exec_el1),
                    Access::ExecUser => prop_assert!(p.exec_el0),
                }
                prop_assert!(t.af);
                prop_assert_eq!(t.leaf_entry & !(AF | S2AP_W), p.leaf_entry & !(AF | S2AP_W));
                if !cfg.ha {
                    prop_assert_eq!(&mem, &before, "no hardware updates without HA");
                }
                if cfg.hd && p.dbm && access == Access::Write {
                    prop_assert!(t.dirty);
                }
                if !cfg.hd || access != Access::Write {
                    prop_assert_eq!(t.dirty, p.dirty);
                }
            }
            (Err(p), Err(t)) => {
                prop_assert_eq!(p, t);
                prop_assert_eq!(&mem, &before, "a failed walk writes nothing");
                match *p {
                    Stage2Fault::InvalidConfig => {
                        prop_assert!(
                            stage2::decode_vtcr(v, &caps)
                                .and_then(|cfg| stage2::decode_vttbr(vttbr, &cfg)
                                    .map_err(|_| Stage2Fault::InvalidConfig))
                                .is_err()
                        );
                    }
                    Stage2Fault::Translation { level }
                    | Stage2Fault::AddressSize { level }
                    | Stage2Fault::AccessFlag { level }
                    | Stage2Fault::Permission { level }
                    | Stage2Fault::EntryOutsideMemory { level, .. } => {
                        prop_assert!((0..=3).contains(&level));
                        let architectural = !matches!(p, Stage2Fault::EntryOutsideMemory { .. });
                        prop_assert_eq!(p.fsc().is_some(), architectural);
                    }
                }
            }
            _ => prop_assert!(false, "peek {:?} vs translate {:?}", peeked, translated),
        }
    }
}
