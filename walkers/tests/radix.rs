//! Hand-built Power radix (partition-scoped) trees, checked against
//! hand-computed values. Every entry is stored **big-endian**.
//!
//! Layout of the image (base 0, 0x23000 bytes), Linux's 4 KiB geometry
//! 13/9/9/9 over a 52-bit tree:
//!
//! ```text
//!   0x10000..0x20000  root directory, 2^13 entries × 8 = 64 KiB (64 KiB aligned)
//!   0x20000           level 1, 2^9 entries (4 KiB)
//!   0x21000           level 2, 2^9 entries
//!   0x22000           level 3, 2^9 entries (4 KiB pages) — or, for the
//!   0x22100           64 KiB geometry 13/9/9/5, a 2^5-entry (256-byte) table
//! ```
//!
//! PATE doubleword 0 = HR (bit 63) | RTS1 (0b10 << 61) | RPDB 0x10000
//! | RTS2 (0b101 << 5) | RPDS 13:
//! 0x8000_0000_0000_0000 | 0x4000_0000_0000_0000 | 0x1_0000 | 0xA0 | 0xD
//! = 0xC000_0000_0001_00AD. RTS = 0b10_101 = 21, tree size 21 + 31 = 52.
//!
//! The test guest real address 0x0000_0280_8060_4567:
//!
//! ```text
//!   5 << 39 (root index, bits 51:39)    = 0x0280_0000_0000
//! + 2 << 30 (level-1 index, bits 38:30) = 0x0000_8000_0000
//! + 3 << 21 (level-2 index, bits 29:21) = 0x0000_0060_0000
//! + 4 << 12 (level-3 index, bits 20:12) = 0x0000_0000_4000
//! + 0x567
//! ```
//!
//! so the entries used are at 0x10000 + 5 × 8 = 0x10028, 0x20000 + 2 × 8
//! = 0x20010, 0x21000 + 3 × 8 = 0x21018 and 0x22000 + 4 × 8 = 0x22020.

use proptest::prelude::*;
use tdp_walkers::radix::{
    decode_pate, peek, translate, BadTreeReason, PateError, RadixCaps, RadixFault, RadixRoot,
    RadixTranslation,
};
use tdp_walkers::{Access, FlatImage, PhysMem};

const PATE: u64 = 0xC000_0000_0001_00AD;
const GPA: u64 = 0x0000_0280_8060_4567;
const ROOT_PA: u64 = 0x10028;
const L1_PA: u64 = 0x20010;
const L2_PA: u64 = 0x21018;
const L3_PA: u64 = 0x22020;
const IMAGE_LEN: usize = 0x23000;

/// Directory entries: V (bit 63) | NLB | NLS.
const PDE_TO_L1: u64 = 0x8000_0000_0002_0009; // NLB 0x20000, NLS 9
const PDE_TO_L2: u64 = 0x8000_0000_0002_1009; // NLB 0x21000, NLS 9
const PDE_TO_L3: u64 = 0x8000_0000_0002_2009; // NLB 0x22000, NLS 9

/// Leaf bits.
const V_L: u64 = 0xC000_0000_0000_0000; // V | L
const REF: u64 = 1 << 8;
const CHG: u64 = 1 << 7;
const EAA_PRIV: u64 = 1 << 3;
const EAA_R: u64 = 1 << 2;
const EAA_RW: u64 = 1 << 1;
const EAA_X: u64 = 1 << 0;
/// V | L | RPN 0x1234_5000 | R | C | EAA R|RW|X = 0xC000_0000_1234_5187.
const LEAF_4K: u64 = V_L | 0x1234_5000 | REF | CHG | EAA_R | EAA_RW | EAA_X;

const RC: RadixCaps = RadixCaps { rc_update: true };
const NO_RC: RadixCaps = RadixCaps { rc_update: false };

fn put(img: &mut FlatImage, pa: u64, v: u64) {
    assert!(img.write(pa, &v.to_be_bytes()));
}

fn get(img: &FlatImage, pa: u64) -> u64 {
    let mut b = [0u8; 8];
    assert!(img.read(pa, &mut b));
    u64::from_be_bytes(b)
}

fn image(root_e: u64, l1_e: u64, l2_e: u64, l3_e: u64) -> FlatImage {
    let mut img = FlatImage::zeroed(0, IMAGE_LEN);
    put(&mut img, ROOT_PA, root_e);
    put(&mut img, L1_PA, l1_e);
    put(&mut img, L2_PA, l2_e);
    put(&mut img, L3_PA, l3_e);
    img
}

fn four_k(leaf: u64) -> FlatImage {
    image(PDE_TO_L1, PDE_TO_L2, PDE_TO_L3, leaf)
}

#[test]
fn pate_decodes_tree_size_root_and_root_index_bits() {
    assert_eq!(
        decode_pate(PATE),
        Ok(RadixRoot {
            tree_bits: 52,
            root: 0x10000,
            root_index_bits: 13,
        })
    );
}

#[test]
fn pate_without_hr_or_with_bad_root_is_refused() {
    // HR clear: hashed page table partition.
    assert_eq!(decode_pate(PATE & !(1 << 63)), Err(PateError::NotRadix));
    // RPDS 4: 0xAD → 0xA4.
    assert_eq!(
        decode_pate(0xC000_0000_0001_00A4),
        Err(PateError::RootIndexTooSmall(4))
    );
    // Root at 0x18000 with RPDS 13 (64 KiB root): misaligned.
    assert_eq!(
        decode_pate(0xC000_0000_0001_80AD),
        Err(PateError::MisalignedRoot {
            root: 0x18000,
            size: 0x10000
        })
    );
    // RTS 0 (tree of 31 bits) with RPDS 20: 20 + 12 > 31.
    // HR | root 0x0 | RPDS 20 (0x14): 0x8000_0000_0000_0014.
    assert_eq!(
        decode_pate(0x8000_0000_0000_0014),
        Err(PateError::RootIndexTooLarge {
            rpds: 20,
            tree_bits: 31
        })
    );
    let mut img = four_k(LEAF_4K);
    assert_eq!(
        translate(&mut img, PATE & !(1 << 63), &RC, GPA, Access::Read),
        Err(RadixFault::InvalidPate(PateError::NotRadix))
    );
}

#[test]
fn four_k_geometry_13_9_9_9_translates_a_4k_page() {
    let mut img = four_k(LEAF_4K);
    let t = translate(&mut img, PATE, &RC, GPA, Access::Read).unwrap();
    assert_eq!(
        t,
        RadixTranslation {
            hpa: 0x1234_5567,
            level: 3,
            page_size: 0x1000,
            read: true,
            write: true,
            exec: true,
            att: 0,
            reference: true,
            change: true,
            leaf_entry: LEAF_4K,
        }
    );
}

#[test]
fn entries_are_big_endian_and_a_little_endian_tree_does_not_translate() {
    let img = four_k(LEAF_4K);
    // Raw bytes of the root entry 0x8000_0000_0002_0009: most significant first.
    assert_eq!(
        &img.bytes[ROOT_PA as usize..ROOT_PA as usize + 8],
        &[0x80, 0, 0, 0, 0, 0x02, 0, 0x09]
    );
    // The same tree written little-endian: the root entry reads back as
    // 0x0900_0200_0000_0080, whose V bit (bit 63) is clear.
    let mut le = FlatImage::zeroed(0, IMAGE_LEN);
    for (pa, v) in [
        (ROOT_PA, PDE_TO_L1),
        (L1_PA, PDE_TO_L2),
        (L2_PA, PDE_TO_L3),
        (L3_PA, LEAF_4K),
    ] {
        assert!(le.write_u64_le(pa, v));
    }
    assert_eq!(
        translate(&mut le, PATE, &RC, GPA, Access::Read),
        Err(RadixFault::NotValid {
            level: 0,
            entry: 0x0900_0200_0000_0080
        })
    );
}

#[test]
fn two_mib_leaf_at_level_2() {
    // Leaf in the level-2 table: 52 − 13 − 9 − 9 = 21 bits left → 2 MiB.
    // RPN 0x4020_0000; HPA = 0x4020_0000 | GPA[20:0] (0x4567).
    let leaf = V_L | 0x4020_0000 | REF | CHG | EAA_RW;
    let mut img = image(PDE_TO_L1, PDE_TO_L2, leaf, 0);
    let t = translate(&mut img, PATE, &RC, GPA, Access::Write).unwrap();
    assert_eq!((t.hpa, t.level, t.page_size), (0x4020_4567, 2, 2 << 20));
}

#[test]
fn one_gib_leaf_at_level_1() {
    // Leaf in the level-1 table: 52 − 13 − 9 = 30 bits left → 1 GiB.
    // RPN 0x8000_0000; HPA = 0x8000_0000 | GPA[29:0] (0x60_4567).
    let leaf = V_L | 0x8000_0000 | REF | CHG | EAA_R;
    let mut img = image(PDE_TO_L1, leaf, 0, 0);
    let t = translate(&mut img, PATE, &RC, GPA, Access::Read).unwrap();
    assert_eq!((t.hpa, t.level, t.page_size), (0x8060_4567, 1, 1 << 30));
}

#[test]
fn sixty_four_k_geometry_13_9_9_5_uses_a_256_byte_leaf_table() {
    // GPA 0x0000_0280_8067_ABCD = 5 << 39 | 2 << 30 | 3 << 21 | 7 << 16 | 0xABCD.
    // Level-2 entry → NLB 0x22100, NLS 5 (a 2^5 × 8 = 256-byte table,
    // 256-byte aligned but not page aligned): 0x8000_0000_0002_2105.
    // Level-3 index = GPA[20:16] = 7 → 0x22100 + 7 × 8 = 0x22138.
    // 52 − 13 − 9 − 9 − 5 = 16 bits left → 64 KiB pages.
    // Leaf RPN 0x1235_0000 → HPA 0x1235_0000 | 0xABCD.
    let gpa = 0x0000_0280_8067_ABCD;
    let mut img = image(PDE_TO_L1, PDE_TO_L2, 0x8000_0000_0002_2105, 0);
    put(
        &mut img,
        0x22138,
        V_L | 0x1235_0000 | REF | CHG | EAA_RW | EAA_X,
    );
    let t = translate(&mut img, PATE, &RC, gpa, Access::ExecUser).unwrap();
    assert_eq!((t.hpa, t.level, t.page_size), (0x1235_ABCD, 3, 0x10000));
    // A 64 KiB leaf with RPN bits below 64 KiB set is refused.
    let leaf = V_L | 0x1235_1000 | REF | CHG | EAA_RW;
    put(&mut img, 0x22138, leaf);
    assert_eq!(
        translate(&mut img, PATE, &RC, gpa, Access::Read),
        Err(RadixFault::BadTree {
            level: 3,
            entry: leaf,
            reason: BadTreeReason::MisalignedLeaf {
                rpn: 0x1235_1000,
                page_size: 0x10000
            },
        })
    );
}

#[test]
fn misaligned_table_is_a_bad_tree() {
    // NLB 0x22100 with NLS 6: a 2^6 × 8 = 512-byte table on a 256-byte boundary.
    let pde = 0x8000_0000_0002_2106;
    let mut img = image(PDE_TO_L1, PDE_TO_L2, pde, 0);
    assert_eq!(
        translate(&mut img, PATE, &RC, GPA, Access::Read),
        Err(RadixFault::BadTree {
            level: 2,
            entry: pde,
            reason: BadTreeReason::MisalignedTable {
                base: 0x22100,
                size: 0x200
            },
        })
    );
    // NLB 0x21800 with NLS 9: a 4 KiB table on a 2 KiB boundary.
    let pde = 0x8000_0000_0002_1809;
    let mut img = image(PDE_TO_L1, pde, 0, 0);
    assert!(matches!(
        translate(&mut img, PATE, &RC, GPA, Access::Read),
        Err(RadixFault::BadTree {
            level: 1,
            reason: BadTreeReason::MisalignedTable {
                base: 0x21800,
                size: 0x1000
            },
            ..
        })
    ));
}

#[test]
fn a_256_byte_table_cannot_be_misaligned() {
    // NLB is bits 59:8, so its granule is 256 bytes = the smallest table
    // (NLS 5). Bit 7 of a directory entry (0x80) is not part of NLB: the
    // entry 0x8000_0000_0002_2185 points at 0x22100 with NLS 5.
    // Level-3 index = GPA[20:16] of 0x0000_0280_8067_ABCD = 7 → 0x22138.
    let gpa = 0x0000_0280_8067_ABCD;
    let mut img = image(PDE_TO_L1, PDE_TO_L2, 0x8000_0000_0002_2185, 0);
    put(&mut img, 0x22138, V_L | 0x1235_0000 | REF | CHG | EAA_R);
    let t = translate(&mut img, PATE, &RC, gpa, Access::Read).unwrap();
    assert_eq!((t.hpa, t.page_size), (0x1235_ABCD, 0x10000));
}

#[test]
fn invalid_nls_is_a_bad_tree() {
    // NLS 4 (< 5) in the root entry.
    let pde = 0x8000_0000_0002_0004;
    let mut img = image(pde, PDE_TO_L2, PDE_TO_L3, LEAF_4K);
    assert_eq!(
        translate(&mut img, PATE, &RC, GPA, Access::Read),
        Err(RadixFault::BadTree {
            level: 0,
            entry: pde,
            reason: BadTreeReason::NlsTooSmall(4),
        })
    );
    // NLS 10 in the level-2 entry: 21 bits left, 21 − 10 = 11 < 12 (page below 4 KiB).
    let pde = 0x8000_0000_0002_200A;
    let mut img = image(PDE_TO_L1, PDE_TO_L2, pde, LEAF_4K);
    assert_eq!(
        translate(&mut img, PATE, &RC, GPA, Access::Read),
        Err(RadixFault::BadTree {
            level: 2,
            entry: pde,
            reason: BadTreeReason::NlsTooLarge {
                nls: 10,
                remaining: 21
            },
        })
    );
    // A directory entry in the level-3 table (12 bits left) can never be valid.
    let mut img = image(PDE_TO_L1, PDE_TO_L2, PDE_TO_L3, 0x8000_0000_0002_2005);
    assert!(matches!(
        translate(&mut img, PATE, &RC, GPA, Access::Read),
        Err(RadixFault::BadTree {
            level: 3,
            reason: BadTreeReason::NlsTooLarge {
                nls: 5,
                remaining: 12
            },
            ..
        })
    ));
}

#[test]
fn invalid_entry_stops_the_walk() {
    let mut img = image(PDE_TO_L1, PDE_TO_L2 & !(1 << 63), PDE_TO_L3, LEAF_4K);
    assert_eq!(
        translate(&mut img, PATE, &RC, GPA, Access::Read),
        Err(RadixFault::NotValid {
            level: 1,
            entry: PDE_TO_L2 & !(1 << 63)
        })
    );
}

#[test]
fn reference_and_change_are_set_by_hardware() {
    let leaf = V_L | 0x1234_5000 | EAA_RW;
    // Read: R only.
    let mut img = four_k(leaf);
    let t = translate(&mut img, PATE, &RC, GPA, Access::Read).unwrap();
    assert!(t.reference && !t.change);
    assert_eq!(get(&img, L3_PA), leaf | REF);
    // Write: R and C; directories untouched.
    let mut img = four_k(leaf);
    let t = translate(&mut img, PATE, &RC, GPA, Access::Write).unwrap();
    assert!(t.reference && t.change);
    assert_eq!(t.leaf_entry, leaf | REF | CHG);
    assert_eq!(get(&img, L3_PA), leaf | REF | CHG);
    assert_eq!(get(&img, L2_PA), PDE_TO_L3);
    // Big-endian in memory: R (bit 8) is in byte 6.
    assert_eq!(img.bytes[L3_PA as usize + 6], 0x51); // 0x50 | R
}

#[test]
fn without_rc_update_missing_bits_need_the_set_rc_interrupt() {
    let leaf = V_L | 0x1234_5000 | REF | EAA_RW;
    let mut img = four_k(leaf);
    let before = img.clone();
    // R set, C clear: a read is fine, a write needs C.
    assert!(translate(&mut img, PATE, &NO_RC, GPA, Access::Read).is_ok());
    assert_eq!(
        translate(&mut img, PATE, &NO_RC, GPA, Access::Write),
        Err(RadixFault::NeedsRc {
            level: 3,
            entry: leaf,
            access: Access::Write
        })
    );
    assert_eq!(img, before);
    // R clear: every access needs it.
    let mut img = four_k(V_L | 0x1234_5000 | EAA_RW | EAA_X);
    for access in Access::ALL {
        assert!(matches!(
            translate(&mut img, PATE, &NO_RC, GPA, access),
            Err(RadixFault::NeedsRc { .. })
        ));
    }
}

#[test]
fn permission_fault_wins_over_missing_rc() {
    // Read-only leaf without R/C: a write is a permission fault, and nothing is written.
    let leaf = V_L | 0x1234_5000 | EAA_R;
    let mut img = four_k(leaf);
    let before = img.clone();
    for caps in [RC, NO_RC] {
        assert_eq!(
            translate(&mut img, PATE, &caps, GPA, Access::Write),
            Err(RadixFault::Permission {
                level: 3,
                entry: leaf,
                access: Access::Write
            })
        );
    }
    assert_eq!(img, before);
}

#[test]
fn eaa_read_readwrite_and_execute_bits_gate_each_access() {
    let perms = |eaa: u64| {
        let img = four_k(V_L | 0x1234_5000 | REF | CHG | eaa);
        Access::ALL.map(|a| peek(&img, PATE, &RC, GPA, a).is_ok())
    };
    // Columns: [Read, Write, ExecSupervisor, ExecUser].
    assert_eq!(perms(0), [false, false, false, false]);
    assert_eq!(perms(EAA_R), [true, false, false, false]);
    assert_eq!(perms(EAA_RW), [true, true, false, false]);
    assert_eq!(perms(EAA_X), [false, false, true, true]);
    assert_eq!(perms(EAA_R | EAA_X), [true, false, true, true]);
    // The privileged bit does not apply to partition-scoped translation.
    assert_eq!(perms(EAA_PRIV | EAA_RW | EAA_X), [true, true, true, true]);
    assert_eq!(perms(EAA_PRIV), [false, false, false, false]);
}

#[test]
fn no_fetch_from_non_idempotent_io() {
    // ATT = 0b10 (bits 5:4 = 0x20): guarded, no instruction fetch.
    let leaf = V_L | 0x1234_5000 | REF | CHG | 0x20 | EAA_RW | EAA_X;
    let mut img = four_k(leaf);
    assert!(matches!(
        translate(&mut img, PATE, &RC, GPA, Access::ExecSupervisor),
        Err(RadixFault::Permission { .. })
    ));
    let t = translate(&mut img, PATE, &RC, GPA, Access::Write).unwrap();
    assert_eq!((t.att, t.exec), (2, false));
    // ATT = 0b11 (tolerant I/O) still allows fetch.
    let mut img = four_k(V_L | 0x1234_5000 | REF | CHG | 0x30 | EAA_X);
    let t = translate(&mut img, PATE, &RC, GPA, Access::ExecUser).unwrap();
    assert_eq!(t.att, 3);
}

#[test]
fn entry_outside_memory_is_reported_with_its_address() {
    // Root entry → NLB 0x10_0000 (past the image), NLS 9: level-1 entry at 0x10_0000 + 2 × 8.
    let mut img = image(0x8000_0000_0010_0009, 0, 0, 0);
    assert_eq!(
        translate(&mut img, PATE, &RC, GPA, Access::Read),
        Err(RadixFault::EntryOutsideMemory {
            level: 1,
            pa: 0x10_0010
        })
    );
    // Root past the image: RPDB 0x100_0000 → entry at 0x100_0000 + 5 × 8.
    assert_eq!(
        translate(&mut img, 0xC000_0000_0100_00AD, &RC, GPA, Access::Read),
        Err(RadixFault::EntryOutsideMemory {
            level: 0,
            pa: 0x100_0028
        })
    );
}

#[test]
fn guest_real_address_wider_than_the_tree_is_refused() {
    let mut img = four_k(LEAF_4K);
    assert_eq!(
        translate(&mut img, PATE, &RC, GPA | 1 << 52, Access::Read),
        Err(RadixFault::AddressTooWide {
            gpa: GPA | 1 << 52,
            width: 52
        })
    );
}

#[test]
fn peek_never_writes() {
    let leaf = V_L | 0x1234_5000 | EAA_RW;
    let img = four_k(leaf);
    let before = img.clone();
    let t = peek(&img, PATE, &RC, GPA, Access::Write).unwrap();
    assert_eq!(img, before);
    assert!(!t.reference && !t.change);
    assert_eq!(t.hpa, 0x1234_5567);
}

#[test]
fn generic_geometry_other_than_linux_is_walked() {
    // A 40-bit tree (RTS 9 = 0b01_001: RTS1 0b01 << 61, RTS2 0b001 << 5),
    // root of 2^8 entries (2 KiB) at 0x10000 indexed by bits 39:32, a level-1
    // table with NLS 8 indexed by bits 31:24, and leaves there mapping the
    // remaining 24 bits: 16 MiB pages.
    // PATE = HR | 1 << 61 | 0x10000 | 1 << 5 | 8 = 0xA000_0000_0001_0028.
    // GPA 0xAB_CD12_3456: root index 0xAB → 0x10000 + 0x558 = 0x10558;
    // level-1 index 0xCD → 0x20000 + 0x668 = 0x20668.
    let pate = 0xA000_0000_0001_0028;
    let gpa = 0xAB_CD12_3456;
    let mut img = FlatImage::zeroed(0, IMAGE_LEN);
    put(&mut img, 0x10558, 0x8000_0000_0002_0008); // NLB 0x20000, NLS 8
    put(&mut img, 0x20668, V_L | 0x7F00_0000 | REF | CHG | EAA_R);
    let t = translate(&mut img, pate, &RC, gpa, Access::Read).unwrap();
    assert_eq!((t.hpa, t.level, t.page_size), (0x7F12_3456, 1, 1 << 24));
}

// --- No-panic property test ---

/// Table of each level in the random image: root (RPDS 13, 64 KiB) at
/// 0x10000, then 0x20000, 0x21000, 0x22000.
const TABLES: [u64; 4] = [0x10000, 0x20000, 0x21000, 0x22000];

/// Mostly-valid words for one level of the 13/9/9/9 (or 13/9/9/5) tree.
fn entry(level: usize) -> impl Strategy<Value = u64> {
    let shaped = (
        prop::bool::weighted(if level == 3 { 0.9 } else { 0.3 }),
        any::<u64>(),                                               // RPN and low bits
        prop::sample::select(vec![9u64, 9, 9, 9, 9, 5, 4, 13, 31]), // NLS
        prop::bool::weighted(0.8),                                  // keep R/C
        prop_oneof![7 => Just(0u64), 1 => (0..64u32).prop_map(|b| 1u64 << b)],
    )
        .prop_map(move |(leaf, bits, nls, rc, noise)| {
            let word = if leaf || level == 3 {
                let rpn = bits & 0x01FF_FFFF_F000 & !((1u64 << (12 + 9 * (3 - level.min(3)))) - 1);
                let low = bits & 0x3F | if rc { REF | CHG } else { 0 };
                V_L | rpn | low
            } else {
                1 << 63 | TABLES[level + 1] | nls
            };
            word ^ noise
        });
    prop_oneof![1 => any::<u64>(), 9 => shaped]
}

fn random_image(words: &[Vec<u64>]) -> FlatImage {
    let mut img = FlatImage::zeroed(0, IMAGE_LEN);
    for (level, list) in words.iter().enumerate() {
        let n = if level == 0 { 1 << 13 } else { 512 };
        for slot in 0..n {
            put(
                &mut img,
                TABLES[level] + slot * 8,
                list[slot as usize % list.len()],
            );
        }
    }
    img
}

fn check_agreement(
    img: &mut FlatImage,
    pate: u64,
    caps: &RadixCaps,
    gpa: u64,
    access: Access,
) -> Result<(), TestCaseError> {
    let before = img.clone();
    let peeked = peek(&*img, pate, caps, gpa, access);
    prop_assert_eq!(&*img, &before);
    let translated = translate(img, pate, caps, gpa, access);
    match (&peeked, &translated) {
        (Ok(p), Ok(t)) => {
            prop_assert_eq!((p.hpa, p.level, p.page_size), (t.hpa, t.level, t.page_size));
            prop_assert_eq!(
                (p.read, p.write, p.exec, p.att),
                (t.read, t.write, t.exec, t.att)
            );
            prop_assert_eq!(p.hpa & (p.page_size - 1), gpa & (p.page_size - 1));
            prop_assert!(t.reference);
            prop_assert_eq!(t.change, p.change || access == Access::Write);
            if !caps.rc_update {
                prop_assert_eq!(&*img, &before, "without rc_update nothing is written");
            }
        }
        (Err(p), Err(t)) => {
            prop_assert_eq!(p, t);
            prop_assert_eq!(&*img, &before, "a failed walk writes nothing");
        }
        _ => prop_assert!(false, "peek {:?} vs translate {:?}", peeked, translated),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_trees_never_panic_and_peek_agrees_with_translate(
        words in (0..4usize)
            .map(|l| prop::collection::vec(entry(l), 1..10).boxed())
            .collect::<Vec<_>>(),
        pate in prop_oneof![
            8 => Just(PATE),
            1 => any::<u64>(),
            1 => any::<u64>().prop_map(|w| w | 1 << 63),
        ],
        gpa in prop_oneof![1 => any::<u64>(), 6 => 0..(1u64 << 52)],
        access in prop::sample::select(Access::ALL.to_vec()),
        rc_update in any::<bool>(),
    ) {
        let mut img = random_image(&words);
        check_agreement(&mut img, pate, &RadixCaps { rc_update }, gpa, access)?;
    }
}
