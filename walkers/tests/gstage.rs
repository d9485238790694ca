//! Hand-built RISC-V G-stage tables, checked against hand-computed values.
//!
//! Layout of the image (base 0, 0xC000 bytes): the 16 KiB root at
//! 0x4000..0x8000 (16 KiB aligned: hgatp.PPN = 0x4000 >> 12 = 4, PPN[1:0]
//! = 0), then one 4 KiB table per lower level: 0x8000 for level
//! LEVELS−2, 0x9000, 0xA000, 0xB000.
//!
//! PTE encodings used below (PPN in bits 53:10, so a table or page at
//! physical address `pa` contributes `(pa >> 12) << 10`):
//!
//! ```text
//!   pointer to 0x8000: (0x8 << 10) | V = 0x2001
//!   pointer to 0x9000: (0x9 << 10) | V = 0x2401
//!   pointer to 0xA000: (0xA << 10) | V = 0x2801
//!   pointer to 0xB000: (0xB << 10) | V = 0x2C01
//!   leaf flags V|R|W|X|U|A|D = 0x01|0x02|0x04|0x08|0x10|0x40|0x80 = 0xDF
//! ```

use proptest::prelude::*;
use tdp_walkers::gstage::{
    decode_hgatp, peek, translate, GstageCaps, GstageFault, GstageTranslation, GuestPageFault,
    GuestPageFaultReason, Hgatp, HgatpError, HgatpMode,
};
use tdp_walkers::{Access, FlatImage, PhysMem};

const ROOT: u64 = 0x4000;
const IMAGE_LEN: usize = 0xC000;

/// hgatp = MODE << 60 | VMID << 44 | PPN (= 0x4000 >> 12 = 4).
/// Sv39x4: 8 << 60 = 0x8000_0000_0000_0000, VMID 0x2A << 44 = 0x0002_A000_0000_0000.
const HGATP_SV39X4: u64 = 0x8002_A000_0000_0004;
/// Sv48x4: 9 << 60, VMID 0.
const HGATP_SV48X4: u64 = 0x9000_0000_0000_0004;
/// Sv57x4: 10 << 60, VMID 0.
const HGATP_SV57X4: u64 = 0xA000_0000_0000_0004;

const PTR_8000: u64 = 0x2001;
const PTR_9000: u64 = 0x2401;
const PTR_A000: u64 = 0x2801;
const PTR_B000: u64 = 0x2C01;

/// Leaf flag bits.
const V: u64 = 1;
const R: u64 = 1 << 1;
const W: u64 = 1 << 2;
const X: u64 = 1 << 3;
const U: u64 = 1 << 4;
const G: u64 = 1 << 5;
const A: u64 = 1 << 6;
const D: u64 = 1 << 7;
const RWXUAD: u64 = V | R | W | X | U | A | D; // 0xDF

/// 4 KiB leaf for page 0x1234_5000: PPN 0x12345 << 10 = 0x48D_1400.
const LEAF_4K_PPN: u64 = 0x48D_1400;
/// 2 MiB leaf for 0x4020_0000: PPN 0x40200 (low 9 bits 0) << 10 = 0x1008_0000.
const LEAF_2M_PPN: u64 = 0x1008_0000;
/// 1 GiB leaf for 0x8000_0000: PPN 0x80000 (low 18 bits 0) << 10 = 0x2000_0000.
const LEAF_1G_PPN: u64 = 0x2000_0000;

/// Sv39x4 test GPA with bits 40 and 39 set:
///
/// ```text
///   1 << 40 | 1 << 39        = 0x0180_0000_0000  → VPN[2] = GPA[40:30] = 0b11_0000_0000 | 2
///   2 << 30                  = 0x0000_8000_0000     = 0x602 = 1538 (≥ 1536: both extra bits)
///   3 << 21 (VPN[1] = 3)     = 0x0000_0060_0000
///   4 << 12 (VPN[0] = 4)     = 0x0000_0000_4000
///   + 0x567
/// ```
///
/// Entries: root 0x4000 + 1538 × 8 = 0x4000 + 0x3010 = 0x7010;
/// level 1 0x8000 + 3 × 8 = 0x8018; level 0 0x9000 + 4 × 8 = 0x9020.
const GPA39: u64 = 0x0180_8060_4567;
const SV39_ROOT_PA: u64 = 0x7010;
const SV39_L1_PA: u64 = 0x8018;
const SV39_L0_PA: u64 = 0x9020;

fn sv39_image(root_e: u64, l1_e: u64, l0_e: u64) -> FlatImage {
    let mut img = FlatImage::zeroed(0, IMAGE_LEN);
    assert!(img.write_u64_le(SV39_ROOT_PA, root_e));
    assert!(img.write_u64_le(SV39_L1_PA, l1_e));
    assert!(img.write_u64_le(SV39_L0_PA, l0_e));
    img
}

fn sv39_4k(leaf: u64) -> FlatImage {
    sv39_image(PTR_8000, PTR_9000, leaf)
}

const ALL_CAPS: GstageCaps = GstageCaps {
    svadu: true,
    svpbmt: true,
    svnapot: true,
    svrsw60t59b: false,
};
const NO_CAPS: GstageCaps = GstageCaps {
    svadu: false,
    svpbmt: false,
    svnapot: false,
    svrsw60t59b: false,
};

fn gpf(r: Result<GstageTranslation, GstageFault>) -> GuestPageFault {
    match r {
        Err(GstageFault::GuestPageFault(g)) => g,
        other => panic!("expected a guest-page fault, got {other:?}"),
    }
}

fn le(img: &FlatImage, pa: u64) -> u64 {
    img.read_u64_le(pa).unwrap()
}

#[test]
fn hgatp_decodes_mode_vmid_and_root() {
    assert_eq!(
        decode_hgatp(HGATP_SV39X4),
        Ok(Hgatp {
            mode: HgatpMode::Sv39x4,
            vmid: 0x2A,
            root: 0x4000,
        })
    );
    assert_eq!(decode_hgatp(HGATP_SV48X4).unwrap().mode, HgatpMode::Sv48x4);
    assert_eq!(decode_hgatp(HGATP_SV57X4).unwrap().mode, HgatpMode::Sv57x4);
    // VMID all ones: 0x3FFF << 44 = 0x03FF_F000_0000_0000.
    assert_eq!(decode_hgatp(0x83FF_F000_0000_0004).unwrap().vmid, 0x3FFF);
    assert_eq!(
        decode_hgatp(0),
        Ok(Hgatp {
            mode: HgatpMode::Bare,
            vmid: 0,
            root: 0
        })
    );
    assert_eq!(HgatpMode::Sv39x4.gpa_bits(), 41);
    assert_eq!(HgatpMode::Sv48x4.gpa_bits(), 50);
    assert_eq!(HgatpMode::Sv57x4.gpa_bits(), 59);
}

#[test]
fn hgatp_with_reserved_mode_is_refused() {
    for mode in [1u64, 7, 11, 15] {
        assert_eq!(
            decode_hgatp(mode << 60 | 4),
            Err(HgatpError::ReservedMode(mode as u8))
        );
    }
    let mut img = sv39_4k(LEAF_4K_PPN | RWXUAD);
    assert_eq!(
        translate(&mut img, 1 << 60 | 4, &ALL_CAPS, GPA39, Access::Read),
        Err(GstageFault::InvalidHgatp(HgatpError::ReservedMode(1)))
    );
}

#[test]
fn hgatp_zero_field_and_bare_fields_are_refused() {
    // Bit 58 set: 1 << 58 = 0x0400_0000_0000_0000.
    assert_eq!(
        decode_hgatp(HGATP_SV39X4 | 1 << 58),
        Err(HgatpError::ReservedBits(1 << 58))
    );
    assert_eq!(decode_hgatp(4), Err(HgatpError::BareWithFields(4)));
}

#[test]
fn hgatp_root_not_16k_aligned_is_refused() {
    // PPN 5 → root 0x5000, PPN[1:0] = 01.
    assert_eq!(
        decode_hgatp(0x8000_0000_0000_0005),
        Err(HgatpError::MisalignedRoot(5))
    );
    let mut img = sv39_4k(LEAF_4K_PPN | RWXUAD);
    assert_eq!(
        translate(
            &mut img,
            0x8000_0000_0000_0006,
            &ALL_CAPS,
            GPA39,
            Access::Read
        ),
        Err(GstageFault::InvalidHgatp(HgatpError::MisalignedRoot(6)))
    );
}

#[test]
fn bare_mode_has_no_table_to_walk() {
    let mut img = FlatImage::zeroed(0, 0x1000);
    assert_eq!(
        translate(&mut img, 0, &ALL_CAPS, 0x1000, Access::Read),
        Err(GstageFault::Bare)
    );
}

#[test]
fn sv39x4_4k_walk_uses_root_entry_1538_for_gpa_bits_40_and_39() {
    let mut img = sv39_4k(LEAF_4K_PPN | RWXUAD);
    let t = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Read).unwrap();
    assert_eq!(
        t,
        GstageTranslation {
            hpa: 0x1234_5567,
            level: 0,
            page_size: 0x1000,
            read: true,
            write: true,
            exec: true,
            user: true,
            pbmt: 0,
            napot: false,
            accessed: true,
            dirty: true,
            leaf_entry: LEAF_4K_PPN | RWXUAD,
        }
    );
    // The same entry placed at 1538 − 1536 = 2 (what a 9-bit root index
    // would use, 0x4010) must not be what the walker reads.
    let mut wrong = FlatImage::zeroed(0, IMAGE_LEN);
    assert!(wrong.write_u64_le(0x4010, PTR_8000));
    assert!(wrong.write_u64_le(SV39_L1_PA, PTR_9000));
    assert!(wrong.write_u64_le(SV39_L0_PA, LEAF_4K_PPN | RWXUAD));
    assert_eq!(
        gpf(translate(
            &mut wrong,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        )),
        GuestPageFault {
            level: 2,
            entry: 0,
            access: Access::Read,
            reason: GuestPageFaultReason::NotValid,
        }
    );
}

#[test]
fn sv39x4_gpa_bit_40_alone_uses_root_entry_1026() {
    // GPA 1 << 40 | 2 << 30 | 0x123: VPN[2] = 0x400 | 2 = 1026;
    // entry at 0x4000 + 1026 × 8 = 0x4000 + 0x2010 = 0x6010.
    let gpa = 0x0100_8000_0123;
    let mut img = FlatImage::zeroed(0, IMAGE_LEN);
    assert!(img.write_u64_le(0x6010, LEAF_1G_PPN | RWXUAD));
    let t = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, gpa, Access::Read).unwrap();
    assert_eq!((t.level, t.page_size), (2, 1 << 30));
    assert_eq!(t.hpa, 0x8000_0123);
}

#[test]
fn sv39x4_gpa_wider_than_41_bits_is_a_guest_page_fault() {
    let mut img = sv39_4k(LEAF_4K_PPN | RWXUAD);
    let r = translate(
        &mut img,
        HGATP_SV39X4,
        &ALL_CAPS,
        GPA39 | 1 << 41,
        Access::Read,
    );
    assert_eq!(
        r,
        Err(GstageFault::AddressTooWide {
            gpa: GPA39 | 1 << 41,
            width: 41
        })
    );
    assert!(r.unwrap_err().is_guest_page_fault());
}

#[test]
fn sv48x4_4k_walk_uses_the_extra_root_bits_49_48() {
    // GPA = 3 << 48 | 1 << 39 | 2 << 30 | 3 << 21 | 4 << 12 | 0x567
    //     = 0x0003_0080_8060_4567.
    // VPN[3] = GPA[49:39] = 0b11 << 9 | 1 = 0x601 = 1537 → 0x4000 + 0x3008 = 0x7008;
    // VPN[2] = 2 → 0x8010; VPN[1] = 3 → 0x9018; VPN[0] = 4 → 0xA020.
    let gpa = 0x0003_0080_8060_4567;
    let mut img = FlatImage::zeroed(0, IMAGE_LEN);
    assert!(img.write_u64_le(0x7008, PTR_8000));
    assert!(img.write_u64_le(0x8010, PTR_9000));
    assert!(img.write_u64_le(0x9018, PTR_A000));
    assert!(img.write_u64_le(0xA020, LEAF_4K_PPN | RWXUAD));
    let t = translate(&mut img, HGATP_SV48X4, &ALL_CAPS, gpa, Access::Write).unwrap();
    assert_eq!((t.hpa, t.level, t.page_size), (0x1234_5567, 0, 0x1000));
    assert_eq!(
        translate(&mut img, HGATP_SV48X4, &ALL_CAPS, 1 << 50, Access::Read),
        Err(GstageFault::AddressTooWide {
            gpa: 1 << 50,
            width: 50
        })
    );
}

#[test]
fn sv57x4_4k_walk_uses_the_extra_root_bits_58_57() {
    // GPA = 1 << 58 | 5 << 48 | 1 << 39 | 2 << 30 | 3 << 21 | 4 << 12 | 0x567
    //     = 0x0405_0080_8060_4567.
    // VPN[4] = GPA[58:48] = 1 << 10 | 5 = 1029 → 0x4000 + 0x2028 = 0x6028;
    // VPN[3] = GPA[47:39] = 1 → 0x8008; VPN[2] = 2 → 0x9010;
    // VPN[1] = 3 → 0xA018; VPN[0] = 4 → 0xB020.
    let gpa = 0x0405_0080_8060_4567;
    let mut img = FlatImage::zeroed(0, IMAGE_LEN);
    assert!(img.write_u64_le(0x6028, PTR_8000));
    assert!(img.write_u64_le(0x8008, PTR_9000));
    assert!(img.write_u64_le(0x9010, PTR_A000));
    assert!(img.write_u64_le(0xA018, PTR_B000));
    assert!(img.write_u64_le(0xB020, LEAF_4K_PPN | RWXUAD));
    let t = translate(&mut img, HGATP_SV57X4, &ALL_CAPS, gpa, Access::ExecUser).unwrap();
    assert_eq!((t.hpa, t.level), (0x1234_5567, 0));
    assert!(matches!(
        translate(&mut img, HGATP_SV57X4, &ALL_CAPS, 1 << 59, Access::Read),
        Err(GstageFault::AddressTooWide { width: 59, .. })
    ));
}

#[test]
fn sv39x4_2m_leaf_at_level_1() {
    // HPA = 0x4020_0000 | GPA[20:0] (= 0x4567).
    let mut img = sv39_image(PTR_8000, LEAF_2M_PPN | RWXUAD, 0);
    let t = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Read).unwrap();
    assert_eq!((t.hpa, t.level, t.page_size), (0x4020_4567, 1, 2 << 20));
}

#[test]
fn sv39x4_1g_leaf_at_the_root() {
    // HPA = 0x8000_0000 | GPA[29:0] (= 0x60_4567).
    let mut img = sv39_image(LEAF_1G_PPN | RWXUAD, 0, 0);
    let t = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Read).unwrap();
    assert_eq!((t.hpa, t.level, t.page_size), (0x8060_4567, 2, 1 << 30));
}

#[test]
fn misaligned_superpage_is_a_guest_page_fault() {
    // 2 MiB leaf with PPN 0x40201: PPN[0] = 1 ≠ 0. (0x40201 << 10 = 0x1008_0400.)
    let leaf = 0x1008_0400 | RWXUAD;
    let mut img = sv39_image(PTR_8000, leaf, 0);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        )),
        GuestPageFault {
            level: 1,
            entry: leaf,
            access: Access::Read,
            reason: GuestPageFaultReason::MisalignedSuperpage,
        }
    );
    // 1 GiB leaf with PPN 0x80200: PPN[1] ≠ 0 (0x80200 << 10 = 0x2008_0000).
    let leaf = 0x2008_0000 | RWXUAD;
    let mut img = sv39_image(leaf, 0, 0);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::MisalignedSuperpage
    );
}

#[test]
fn write_without_read_is_a_guest_page_fault_at_any_level() {
    let leaf = LEAF_4K_PPN | V | W | U | A | D;
    let mut img = sv39_4k(leaf);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Write
        ))
        .reason,
        GuestPageFaultReason::WriteWithoutRead
    );
    // W|X without R at level 1 as well.
    let mut img = sv39_image(PTR_8000, LEAF_2M_PPN | V | W | X | U | A | D, 0);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::ExecSupervisor
        )),
        GuestPageFault {
            level: 1,
            entry: LEAF_2M_PPN | V | W | X | U | A | D,
            access: Access::ExecSupervisor,
            reason: GuestPageFaultReason::WriteWithoutRead,
        }
    );
}

#[test]
fn leaf_without_u_is_a_guest_page_fault_for_every_access() {
    let mut img = sv39_4k(LEAF_4K_PPN | (RWXUAD & !U));
    for access in Access::ALL {
        assert_eq!(
            gpf(translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, access)).reason,
            GuestPageFaultReason::NotUser
        );
    }
}

#[test]
fn permissions_follow_r_w_x() {
    // Read-only leaf.
    let mut img = sv39_4k(LEAF_4K_PPN | V | R | U | A | D);
    assert!(translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Read).is_ok());
    for access in [Access::Write, Access::ExecSupervisor, Access::ExecUser] {
        let g = gpf(translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, access));
        assert_eq!(g.reason, GuestPageFaultReason::Permission);
    }
    // Execute-only leaf: loads fault (MXR = 0), fetches succeed.
    let mut img = sv39_4k(LEAF_4K_PPN | V | X | U | A | D);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::Permission
    );
    let t = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::ExecUser).unwrap();
    assert_eq!((t.read, t.write, t.exec), (false, false, true));
}

#[test]
fn guest_page_fault_exception_codes_follow_the_access() {
    let mut img = sv39_4k(0);
    let code = |img: &mut FlatImage, access| {
        gpf(translate(img, HGATP_SV39X4, &ALL_CAPS, GPA39, access)).exception_code()
    };
    assert_eq!(code(&mut img, Access::ExecSupervisor), 20);
    assert_eq!(code(&mut img, Access::Read), 21);
    assert_eq!(code(&mut img, Access::Write), 23);
}

#[test]
fn svadu_sets_accessed_and_dirty_in_the_leaf() {
    let leaf = LEAF_4K_PPN | V | R | W | U;
    // Read: only A.
    let mut img = sv39_4k(leaf);
    let t = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Read).unwrap();
    assert!(t.accessed && !t.dirty);
    assert_eq!(le(&img, SV39_L0_PA), leaf | A);
    assert_eq!(t.leaf_entry, leaf | A);
    // Write: A and D; the pointers are left alone.
    let mut img = sv39_4k(leaf);
    let t = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Write).unwrap();
    assert!(t.accessed && t.dirty);
    assert_eq!(le(&img, SV39_L0_PA), leaf | A | D);
    assert_eq!(le(&img, SV39_L1_PA), PTR_9000);
    assert_eq!(le(&img, SV39_ROOT_PA), PTR_8000);
}

#[test]
fn svade_faults_instead_of_setting_accessed_or_dirty() {
    let caps = GstageCaps {
        svadu: false,
        ..ALL_CAPS
    };
    // A clear.
    let mut img = sv39_4k(LEAF_4K_PPN | V | R | W | U);
    let before = img.clone();
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &caps,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::AccessedDirty
    );
    assert_eq!(img, before);
    // A set, D clear: reads fine, writes fault.
    let mut img = sv39_4k(LEAF_4K_PPN | V | R | W | U | A);
    assert!(translate(&mut img, HGATP_SV39X4, &caps, GPA39, Access::Read).is_ok());
    let before = img.clone();
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &caps,
            GPA39,
            Access::Write
        ))
        .reason,
        GuestPageFaultReason::AccessedDirty
    );
    assert_eq!(img, before);
}

#[test]
fn failed_walk_sets_no_accessed_bit() {
    // A clear but the write is refused (read-only leaf): nothing written.
    let mut img = sv39_4k(LEAF_4K_PPN | V | R | U);
    let before = img.clone();
    assert!(translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Write).is_err());
    assert_eq!(img, before);
}

#[test]
fn peek_never_writes() {
    let leaf = LEAF_4K_PPN | V | R | W | U;
    let img = sv39_4k(leaf);
    let before = img.clone();
    let t = peek(&img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Write).unwrap();
    assert_eq!(img, before);
    assert!(!t.accessed && !t.dirty);
    assert_eq!(t.leaf_entry, leaf);
    assert_eq!(t.hpa, 0x1234_5567);
}

#[test]
fn pbmt_is_reserved_without_svpbmt() {
    // PBMT = 2 (IO): 2 << 61 = 0x4000_0000_0000_0000.
    let leaf = LEAF_4K_PPN | RWXUAD | 2 << 61;
    let mut img = sv39_4k(leaf);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &NO_CAPS,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::Reserved(2 << 61)
    );
    let t = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Read).unwrap();
    assert_eq!(t.pbmt, 2);
}

#[test]
fn pbmt_3_and_pbmt_in_a_pointer_are_reserved_even_with_svpbmt() {
    let mut img = sv39_4k(LEAF_4K_PPN | RWXUAD | 3 << 61);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::Reserved(3 << 61)
    );
    let mut img = sv39_image(PTR_8000 | 1 << 61, PTR_9000, LEAF_4K_PPN | RWXUAD);
    let g = gpf(translate(
        &mut img,
        HGATP_SV39X4,
        &ALL_CAPS,
        GPA39,
        Access::Read,
    ));
    assert_eq!(
        (g.level, g.reason),
        (2, GuestPageFaultReason::Reserved(1 << 61))
    );
}

#[test]
fn pointer_with_d_a_or_u_set_is_a_guest_page_fault() {
    for bit in [A, D, U] {
        let mut img = sv39_image(PTR_8000, PTR_9000 | bit, LEAF_4K_PPN | RWXUAD);
        let g = gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read,
        ));
        assert_eq!(
            (g.level, g.reason),
            (1, GuestPageFaultReason::Reserved(bit))
        );
    }
}

#[test]
fn g_bit_and_rsw_are_ignored() {
    // G (bit 5) and RSW (bits 9:8 = 0x300) in every entry.
    let extra = G | 0x300;
    let mut img = sv39_image(
        PTR_8000 | extra,
        PTR_9000 | extra,
        LEAF_4K_PPN | RWXUAD | extra,
    );
    let t = translate(&mut img, HGATP_SV39X4, &NO_CAPS, GPA39, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x1234_5567);
}

#[test]
fn reserved_bits_60_54_fault_unless_svrsw60t59b_frees_60_59() {
    let mut img = sv39_4k(LEAF_4K_PPN | RWXUAD | 1 << 54);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::Reserved(1 << 54)
    );
    let rsw = GstageCaps {
        svrsw60t59b: true,
        ..ALL_CAPS
    };
    // Bits 60:59 set in a pointer and a leaf: ignored with Svrsw60t59b.
    let mut img = sv39_image(PTR_8000 | 3 << 59, PTR_9000, LEAF_4K_PPN | RWXUAD | 1 << 60);
    assert!(translate(&mut img, HGATP_SV39X4, &rsw, GPA39, Access::Read).is_ok());
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::Reserved(3 << 59)
    );
    // Bit 58 is still reserved.
    let mut img = sv39_4k(LEAF_4K_PPN | RWXUAD | 1 << 58);
    assert_eq!(
        gpf(translate(&mut img, HGATP_SV39X4, &rsw, GPA39, Access::Read)).reason,
        GuestPageFaultReason::Reserved(1 << 58)
    );
}

#[test]
fn napot_64k_leaf_replaces_ppn_low_bits_with_the_gpa() {
    // NAPOT leaf: PPN 0x12348 (PPN[0][3:0] = 1000) << 10 = 0x48D_2000, N = bit 63.
    // HPA = (0x12340 << 12) | GPA[15:0] = 0x1234_0000 | 0x4567.
    let leaf = 1 << 63 | 0x48D_2000 | RWXUAD;
    let mut img = sv39_4k(leaf);
    let t = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Read).unwrap();
    assert_eq!(
        (t.hpa, t.level, t.page_size, t.napot),
        (0x1234_4567, 0, 0x10000, true)
    );
    // Without Svnapot, N is reserved.
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &NO_CAPS,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::Reserved(1 << 63)
    );
    // PPN[0][3:0] = 0100: reserved encoding (0x12344 << 10 = 0x48D_1000).
    let mut img = sv39_4k(1 << 63 | 0x48D_1000 | RWXUAD);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::Reserved(1 << 63)
    );
    // N = 1 in a 2 MiB leaf: reserved (i ≥ 1).
    let mut img = sv39_image(PTR_8000, 1 << 63 | LEAF_2M_PPN | RWXUAD, 0);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        ))
        .reason,
        GuestPageFaultReason::Reserved(1 << 63)
    );
}

#[test]
fn pointer_at_level_0_is_a_guest_page_fault() {
    let mut img = sv39_4k(PTR_9000);
    assert_eq!(
        gpf(translate(
            &mut img,
            HGATP_SV39X4,
            &ALL_CAPS,
            GPA39,
            Access::Read
        )),
        GuestPageFault {
            level: 0,
            entry: PTR_9000,
            access: Access::Read,
            reason: GuestPageFaultReason::PointerAtLevel0,
        }
    );
}

#[test]
fn entry_outside_memory_is_reported_with_its_address() {
    // Level-1 pointer to 0x10_0000 (PPN 0x100 << 10 = 0x4_0000), past the image:
    // level-0 entry at 0x10_0000 + 4 × 8 = 0x10_0020.
    let mut img = sv39_image(PTR_8000, 0x4_0001, 0);
    assert_eq!(
        translate(&mut img, HGATP_SV39X4, &ALL_CAPS, GPA39, Access::Read),
        Err(GstageFault::EntryOutsideMemory {
            level: 0,
            pa: 0x10_0020
        })
    );
    // Root past the image: hgatp PPN 0x100 → root 0x10_0000, entry 0x10_0000 + 0x3010.
    assert_eq!(
        translate(
            &mut img,
            0x8000_0000_0000_0100,
            &ALL_CAPS,
            GPA39,
            Access::Read
        ),
        Err(GstageFault::EntryOutsideMemory {
            level: 2,
            pa: 0x10_3010
        })
    );
}

// --- No-panic property test ---

/// Table of level `l` in the random image: the root (l = LEVELS−1) at
/// 0x4000, lower levels one page each from 0x8000.
fn table_of(level: u64, levels: u64) -> u64 {
    if level == levels - 1 {
        ROOT
    } else {
        0x8000 + (levels - 2 - level) * 0x1000
    }
}

/// Mostly-valid words for one level: pointers to the next table, leaves
/// with random flags and aligned or unaligned PPNs, plus noise.
fn entry(level: u64, levels: u64) -> impl Strategy<Value = u64> {
    let shaped = (
        prop::bool::weighted(if level == 0 { 0.9 } else { 0.3 }),
        prop_oneof![
            1 => any::<u8>(),
            3 => (prop::sample::select(vec![R, R | W, X, R | X, R | W | X]), 0..4u64, any::<bool>())
                .prop_map(|(rwx, ad, g)| (V | U | rwx | ad << 6 | u64::from(g) << 5) as u8),
        ], // flags 7:0
        any::<u64>(),              // PPN
        prop::bool::weighted(0.7), // align the PPN
        prop_oneof![6 => Just(0u64), 1 => (0..16u64).prop_map(|v| v << 59)],
        prop_oneof![7 => Just(0u64), 1 => (0..64u32).prop_map(|b| 1u64 << b)],
    )
        .prop_map(move |(leaf, flags, ppn, align, high, noise)| {
            let word = if leaf || level == 0 {
                let mut ppn = ppn & ((1 << 44) - 1);
                if align {
                    ppn &= !((1u64 << (9 * level)) - 1);
                }
                ppn << 10 | u64::from(flags) | 1
            } else {
                (table_of(level - 1, levels) >> 12) << 10 | 1
            };
            (word | high) ^ noise
        });
    prop_oneof![1 => any::<u64>(), 9 => shaped]
}

fn image(words: &[Vec<u64>], levels: u64) -> FlatImage {
    let mut img = FlatImage::zeroed(0, IMAGE_LEN);
    for (level, list) in words.iter().enumerate().take(levels as usize) {
        let level = level as u64;
        let n = if level == levels - 1 { 2048 } else { 512 };
        for slot in 0..n {
            let w = list[slot as usize % list.len()];
            assert!(img.write_u64_le(table_of(level, levels) + slot * 8, w));
        }
    }
    img
}

fn check_agreement(
    img: &mut FlatImage,
    hgatp: u64,
    caps: &GstageCaps,
    gpa: u64,
    access: Access,
) -> Result<(), TestCaseError> {
    let before = img.clone();
    let peeked = peek(&*img, hgatp, caps, gpa, access);
    prop_assert_eq!(&*img, &before);
    let translated = translate(img, hgatp, caps, gpa, access);
    match (&peeked, &translated) {
        (Ok(p), Ok(t)) => {
            prop_assert_eq!((p.hpa, p.level, p.page_size), (t.hpa, t.level, t.page_size));
            prop_assert_eq!(
                (p.read, p.write, p.exec, p.pbmt, p.napot),
                (t.read, t.write, t.exec, t.pbmt, t.napot)
            );
            prop_assert_eq!(p.hpa & (p.page_size - 1), gpa & (p.page_size - 1));
            prop_assert!(t.user && t.accessed);
            prop_assert_eq!(t.dirty, p.dirty || access == Access::Write);
            if !caps.svadu {
                prop_assert_eq!(&*img, &before, "Svade never writes");
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
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_tables_never_panic_and_peek_agrees_with_translate(
        (levels, words) in (3..=5u64).prop_flat_map(|levels| {
            (0..levels)
                .map(|l| prop::collection::vec(entry(l, levels), 1..12).boxed())
                .collect::<Vec<_>>()
                .prop_map(move |w| (levels, w))
        }),
        random_hgatp in prop::option::weighted(0.1, any::<u64>()),
        gpa in prop_oneof![1 => any::<u64>(), 6 => 0..(1u64 << 41), 2 => 0..(1u64 << 59)],
        access in prop::sample::select(Access::ALL.to_vec()),
        (svadu, svpbmt, svnapot, svrsw60t59b) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    ) {
        let caps = GstageCaps { svadu, svpbmt, svnapot, svrsw60t59b };
        let mode = levels + 5; // 3 → 8 (Sv39x4), 4 → 9, 5 → 10
        let hgatp = random_hgatp.unwrap_or(mode << 60 | ROOT >> 12);
        let mut img = image(&words, levels);
        check_agreement(&mut img, hgatp, &caps, gpa, access)?;
    }
}

/// Also exercise memory that only partly exists (the root straddling the
/// end of a short image).
#[test]
fn short_image_never_panics() {
    let mut img = FlatImage::zeroed(0, 0x5000);
    for slot in 0..0x200u64 {
        assert!(img.write(0x4000 + slot * 8, &(PTR_8000 | slot << 20).to_le_bytes()));
    }
    for gpa in [0u64, GPA39, (1 << 41) - 1, 1 << 40] {
        for access in Access::ALL {
            let _ = translate(&mut img, HGATP_SV39X4, &ALL_CAPS, gpa, access);
        }
    }
}
