//! Hand-built EPT tables, checked against hand-computed values.
//!
//! Layout of the image (base 0, 0x6000 bytes): 0x1000 PML4, 0x2000 PDPT,
//! 0x3000 PD, 0x4000 PT, 0x5000 PML5.
//!
//! The test GPA is 0x0000_0080_8060_4567:
//!
//! ```text
//!   1 << 39 (PML4 index 1)  = 0x0080_0000_0000
//! + 2 << 30 (PDPT index 2)  = 0x0000_8000_0000
//! + 3 << 21 (PD index 3)    = 0x0000_0060_0000
//! + 4 << 12 (PT index 4)    = 0x0000_0000_4000
//! + 0x567   (page offset)
//! ```
//!
//! so the entries used are at 0x1000 + 1*8 = 0x1008, 0x2000 + 2*8 = 0x2010,
//! 0x3000 + 3*8 = 0x3018 and 0x4000 + 4*8 = 0x4020.

use tdp_walkers::ept::{
    decode_eptp, peek, translate, EptCaps, EptFault, EptPointer, EptViolation, EptpError,
};
use tdp_walkers::{Access, FlatImage};

const GPA: u64 = 0x0000_0080_8060_4567;
const PML4E_PA: u64 = 0x1008;
const PDPTE_PA: u64 = 0x2010;
const PDE_PA: u64 = 0x3018;
const PTE_PA: u64 = 0x4020;

/// EPTP: root 0x1000 | walk length 4-1 = 3 in bits 5:3 (0x18) | WB = 6 → 0x101E.
const EPTP: u64 = 0x101E;
/// Same with bit 6 (A/D enable, 0x40): 0x101E | 0x40 = 0x105E.
const EPTP_AD: u64 = 0x105E;

/// Non-leaf entries: next table | R|W|X (0x7).
const PML4E: u64 = 0x2007;
const PDPTE: u64 = 0x3007;
const PDE: u64 = 0x4007;
/// 4 KiB leaf: 0x1234_5000 | WB (6) << 3 (0x30) | R|W|X (0x7) = 0x1234_5037.
const PTE: u64 = 0x0000_0000_1234_5037;

const CAPS: EptCaps = EptCaps {
    maxphyaddr: 46,
    execute_only: false,
    page_1g: true,
    mbec: false,
};

fn image(pml4e: u64, pdpte: u64, pde: u64, pte: u64) -> FlatImage {
    let mut img = FlatImage::zeroed(0, 0x6000);
    assert!(img.write_u64_le(PML4E_PA, pml4e));
    assert!(img.write_u64_le(PDPTE_PA, pdpte));
    assert!(img.write_u64_le(PDE_PA, pde));
    assert!(img.write_u64_le(PTE_PA, pte));
    img
}

fn standard() -> FlatImage {
    image(PML4E, PDPTE, PDE, PTE)
}

fn entries(img: &FlatImage) -> [u64; 4] {
    [PML4E_PA, PDPTE_PA, PDE_PA, PTE_PA].map(|pa| img.read_u64_le(pa).unwrap())
}

fn violation(r: Result<impl std::fmt::Debug, EptFault>) -> EptViolation {
    match r {
        Err(EptFault::Violation(v)) => v,
        other => panic!("expected an EPT violation, got {other:?}"),
    }
}

#[test]
fn eptp_decodes_root_levels_ad_and_memtype() {
    assert_eq!(
        decode_eptp(EPTP_AD, &CAPS),
        Ok(EptPointer {
            levels: 4,
            root: 0x1000,
            ad_enabled: true,
            memtype: 6
        })
    );
    // UC (0) with a 5-level walk (4 << 3 = 0x20): 0x5000 | 0x20 = 0x5020.
    assert_eq!(
        decode_eptp(0x5020, &CAPS),
        Ok(EptPointer {
            levels: 5,
            root: 0x5000,
            ad_enabled: false,
            memtype: 0
        })
    );
}

#[test]
fn invalid_eptp_is_refused() {
    let mut img = standard();
    // Memory type 1 (WC): 0x1018 | 1 = 0x1019.
    let cases = [
        (0x1019, EptpError::MemoryType(1)),
        // Walk length field 2 (3 levels): 0x1000 | 2 << 3 | 6 = 0x1016.
        (0x1016, EptpError::WalkLength(2)),
        // Walk length field 5 (6 levels): 0x1000 | 5 << 3 | 6 = 0x102E.
        (0x102E, EptpError::WalkLength(5)),
        // Bit 7 set: 0x101E | 0x80 = 0x109E.
        (0x109E, EptpError::ReservedBits(0x80)),
        // Bit 11 set: 0x101E | 0x800 = 0x181E.
        (0x181E, EptpError::ReservedBits(0x800)),
        // Bit 46 set with MAXPHYADDR 46.
        (0x0000_4000_0000_101E, EptpError::ReservedBits(1 << 46)),
        (0x8000_0000_0000_101E, EptpError::ReservedBits(1 << 63)),
    ];
    for (eptp, err) in cases {
        assert_eq!(
            translate(&mut img, eptp, &CAPS, GPA, Access::Read),
            Err(EptFault::InvalidEptp(err)),
            "eptp {eptp:#x}"
        );
    }
    assert_eq!(entries(&img), [PML4E, PDPTE, PDE, PTE]);
}

#[test]
fn four_kib_leaf_translates() {
    let mut img = standard();
    let t = translate(&mut img, EPTP, &CAPS, GPA, Access::Read).unwrap();
    // 0x1234_5000 | 0x567
    assert_eq!(t.hpa, 0x1234_5567);
    assert_eq!((t.level, t.page_size), (0, 0x1000));
    assert!(t.read && t.write && t.exec_supervisor && t.exec_user);
    assert_eq!((t.memtype, t.ipat), (6, false));
    assert_eq!(t.leaf_entry, PTE);
    for access in Access::ALL {
        assert_eq!(translate(&mut img, EPTP, &CAPS, GPA, access), Ok(t));
    }
}

#[test]
fn ipat_and_memtype_are_reported_from_the_leaf() {
    // 0x1234_5000 | IPAT (0x40) | UC (0) | R (1) = 0x1234_5041.
    let mut img = image(PML4E, PDPTE, PDE, 0x1234_5041);
    let t = translate(&mut img, EPTP, &CAPS, GPA, Access::Read).unwrap();
    assert_eq!((t.memtype, t.ipat), (0, true));
    assert!(t.read && !t.write && !t.exec_supervisor);
}

#[test]
fn two_mib_leaf_translates() {
    // 0x4060_0000 (2 MiB aligned: 0x60_0000 = 3 * 0x20_0000) | bit 7 (0x80) | WB 0x30 | RWX 7.
    let mut img = image(PML4E, PDPTE, 0x0000_0000_4060_00B7, 0);
    let t = translate(&mut img, EPTP, &CAPS, GPA, Access::Write).unwrap();
    // GPA bits 20:0 = 0x0060_4567 & 0x1F_FFFF = 0x4567.
    assert_eq!(t.hpa, 0x4060_4567);
    assert_eq!((t.level, t.page_size), (1, 0x20_0000));
    assert_eq!(t.memtype, 6);
}

#[test]
fn one_gib_leaf_translates_with_the_capability() {
    // 0x1_C000_0000 (= 7 GiB) | 0x80 | 0x30 | 0x7.
    let mut img = image(PML4E, 0x0000_0001_C000_00B7, 0, 0);
    let t = translate(&mut img, EPTP, &CAPS, GPA, Access::ExecUser).unwrap();
    // GPA bits 29:0 = 0x8060_4567 & 0x3FFF_FFFF = 0x0060_4567.
    assert_eq!(t.hpa, 0x1_C060_4567);
    assert_eq!((t.level, t.page_size), (2, 0x4000_0000));
}

#[test]
fn one_gib_leaf_without_the_capability_is_a_misconfiguration() {
    let mut img = image(PML4E, 0x0000_0001_C000_00B7, 0, 0);
    let caps = EptCaps {
        page_1g: false,
        ..CAPS
    };
    assert_eq!(
        translate(&mut img, EPTP, &caps, GPA, Access::Read),
        Err(EptFault::Misconfig {
            level: 2,
            entry: 0x1_C000_00B7
        })
    );
}

#[test]
fn five_level_eptp_walks_the_pml5() {
    let mut img = standard();
    // PML5 index 1 (GPA bit 48) → PML5E at 0x5000 + 8 = 0x5008, pointing at the PML4.
    assert!(img.write_u64_le(0x5008, 0x1007));
    // Root 0x5000 | walk length 5-1 = 4 << 3 (0x20) | WB 6 = 0x5026.
    let eptp5 = 0x5026;
    let gpa5 = GPA | 1 << 48; // 0x0001_0080_8060_4567
    let t = translate(&mut img, eptp5, &CAPS, gpa5, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x1234_5567);
    // The 4-level EPTP cannot translate a GPA with bit 48 set.
    assert_eq!(
        translate(&mut img, EPTP, &CAPS, gpa5, Access::Read),
        Err(EptFault::AddressTooWide {
            gpa: gpa5,
            width: 48
        })
    );
    // And a 5-level walk stops at bit 57.
    assert_eq!(
        translate(&mut img, eptp5, &CAPS, 1 << 57, Access::Read),
        Err(EptFault::AddressTooWide {
            gpa: 1 << 57,
            width: 57
        })
    );
    // A 5-level walk through a not-present PML5E reports level 4.
    let v = violation(translate(&mut img, eptp5, &CAPS, GPA, Access::Read));
    assert_eq!((v.level, v.not_present), (4, true));
}

#[test]
fn write_without_read_is_a_misconfiguration() {
    // Leaf bits 2:0 = 010b: 0x1234_5030 | 2 = 0x1234_5032.
    let mut img = image(PML4E, PDPTE, PDE, 0x1234_5032);
    assert_eq!(
        translate(&mut img, EPTP, &CAPS, GPA, Access::Read),
        Err(EptFault::Misconfig {
            level: 0,
            entry: 0x1234_5032
        })
    );
    // 110b (write + execute, no read) in the PML4E: 0x2000 | 6 = 0x2006.
    let mut img = image(0x2006, PDPTE, PDE, PTE);
    assert_eq!(
        translate(&mut img, EPTP, &CAPS, GPA, Access::ExecSupervisor),
        Err(EptFault::Misconfig {
            level: 3,
            entry: 0x2006
        })
    );
}

#[test]
fn execute_only_needs_the_capability() {
    // Leaf bits 2:0 = 100b: 0x1234_5030 | 4 = 0x1234_5034.
    let mut img = image(PML4E, PDPTE, PDE, 0x1234_5034);
    assert_eq!(
        translate(&mut img, EPTP, &CAPS, GPA, Access::ExecSupervisor),
        Err(EptFault::Misconfig {
            level: 0,
            entry: 0x1234_5034
        })
    );
    let caps = EptCaps {
        execute_only: true,
        ..CAPS
    };
    let t = translate(&mut img, EPTP, &caps, GPA, Access::ExecSupervisor).unwrap();
    assert!(!t.read && !t.write && t.exec_supervisor);
    let v = violation(translate(&mut img, EPTP, &caps, GPA, Access::Read));
    assert_eq!((v.level, v.not_present, v.readable), (0, false, false));
    // Exit qualification: read (bit 0) | executable (bit 5) = 0x21.
    assert_eq!(v.exit_qualification, 0x21);
}

#[test]
fn reserved_memory_types_misconfigure_the_leaf() {
    for mt in [2u64, 3, 7] {
        let pte = 0x1234_5007 | mt << 3;
        let mut img = image(PML4E, PDPTE, PDE, pte);
        assert_eq!(
            translate(&mut img, EPTP, &CAPS, GPA, Access::Read),
            Err(EptFault::Misconfig {
                level: 0,
                entry: pte
            }),
            "memory type {mt}"
        );
        // Also in a 2 MiB leaf.
        let pde = 0x4060_0087 | mt << 3;
        let mut img = image(PML4E, PDPTE, pde, 0);
        assert_eq!(
            translate(&mut img, EPTP, &CAPS, GPA, Access::Read),
            Err(EptFault::Misconfig {
                level: 1,
                entry: pde
            })
        );
    }
    for mt in [0u64, 1, 4, 5, 6] {
        let mut img = image(PML4E, PDPTE, PDE, 0x1234_5007 | mt << 3);
        let t = translate(&mut img, EPTP, &CAPS, GPA, Access::Read).unwrap();
        assert_eq!(u64::from(t.memtype), mt);
    }
}

#[test]
fn reserved_bits_misconfigure() {
    let cases: [(&str, [u64; 4], u8, u64); 9] = [
        // PML4E bits 7:3: 0x2007 | 0x08 = 0x200F, and bit 7: 0x2087.
        ("PML4E bit 3", [0x200F, PDPTE, PDE, PTE], 3, 0x200F),
        ("PML4E bit 7", [0x2087, PDPTE, PDE, PTE], 3, 0x2087),
        // Non-leaf PDPTE bit 6: 0x3047. Non-leaf PDE bit 5: 0x4027.
        ("PDPTE bit 6", [PML4E, 0x3047, PDE, PTE], 2, 0x3047),
        ("PDE bit 5", [PML4E, PDPTE, 0x4027, PTE], 1, 0x4027),
        // Address bit 46 with MAXPHYADDR 46 (bits 51:46 reserved), in a table pointer…
        (
            "PDE bit 46",
            [PML4E, PDPTE, 0x0000_4000_0000_4007, PTE],
            1,
            0x0000_4000_0000_4007,
        ),
        // …and in a leaf (bit 51).
        (
            "PTE bit 51",
            [PML4E, PDPTE, PDE, 0x0008_0000_1234_5037],
            0,
            0x0008_0000_1234_5037,
        ),
        // 2 MiB leaf with bit 12 set (bits 20:12 reserved): 0x4060_00B7 | 0x1000.
        ("2M bit 12", [PML4E, PDPTE, 0x4060_10B7, 0], 1, 0x4060_10B7),
        // 1 GiB leaf with bit 12 and with bit 29 (bits 29:12 reserved).
        ("1G bit 12", [PML4E, 0x1_C000_10B7, 0, 0], 2, 0x1_C000_10B7),
        ("1G bit 29", [PML4E, 0x1_E000_00B7, 0, 0], 2, 0x1_E000_00B7),
    ];
    for (what, [a, b, c, d], level, entry) in cases {
        let mut img = image(a, b, c, d);
        assert_eq!(
            translate(&mut img, EPTP, &CAPS, GPA, Access::Read),
            Err(EptFault::Misconfig { level, entry }),
            "{what}"
        );
    }
}

#[test]
fn addresses_up_to_maxphyaddr_translate() {
    // With MAXPHYADDR 52, bit 51 is a valid address bit.
    let caps = EptCaps {
        maxphyaddr: 52,
        ..CAPS
    };
    let mut img = image(PML4E, PDPTE, PDE, 0x0008_0000_1234_5037);
    let t = translate(&mut img, EPTP, &caps, GPA, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x0008_0000_1234_5567);
    // Bits 63:52 of a leaf are ignored, not part of the address.
    let mut img = image(PML4E, PDPTE, PDE, 0xFFF0_0000_1234_5037);
    let t = translate(&mut img, EPTP, &CAPS, GPA, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x1234_5567);
}

#[test]
fn misconfiguration_wins_over_a_permission_violation() {
    // Read-only PML4E (0x2001), memory type 7 in the leaf (0x1234_5000 | 7 << 3 | 7 = 0x1234_503F).
    let mut img = image(0x2001, PDPTE, PDE, 0x1234_503F);
    assert_eq!(
        translate(&mut img, EPTP, &CAPS, GPA, Access::Write),
        Err(EptFault::Misconfig {
            level: 0,
            entry: 0x1234_503F
        })
    );
}

#[test]
fn not_present_entry_is_a_violation_at_its_level() {
    let mut img = image(PML4E, PDPTE, 0, PTE);
    let v = violation(translate(&mut img, EPTP, &CAPS, GPA, Access::Write));
    assert_eq!((v.level, v.entry, v.not_present), (1, 0, true));
    assert!(!v.readable && !v.writable && !v.exec_supervisor && !v.exec_user);
    // Exit qualification: only the access bit (write = bit 1).
    assert_eq!(v.exit_qualification, 0x2);
    // Bits other than 2:0 do not make an entry present: 0x4060_00B8 has bits 2:0 = 0.
    let mut img = image(PML4E, PDPTE, 0x4060_00B8, PTE);
    let v = violation(translate(&mut img, EPTP, &CAPS, GPA, Access::Read));
    assert_eq!((v.level, v.not_present), (1, true));
}

#[test]
fn permissions_are_the_and_over_the_path() {
    // Read-only leaf: 0x1234_5030 | R (1) = 0x1234_5031.
    let mut img = image(PML4E, PDPTE, PDE, 0x1234_5031);
    let v = violation(translate(&mut img, EPTP, &CAPS, GPA, Access::Write));
    assert_eq!((v.level, v.not_present), (0, false));
    assert!(v.readable && !v.writable && !v.exec_supervisor);
    // write (bit 1) | readable (bit 3) = 0x2 | 0x8 = 0xA.
    assert_eq!(v.exit_qualification, 0xA);

    // Read+execute PDPTE (0x3005) above an RWX leaf: writes are denied at the leaf level.
    let mut img = image(PML4E, 0x3005, PDE, PTE);
    let v = violation(translate(&mut img, EPTP, &CAPS, GPA, Access::Write));
    assert_eq!((v.level, v.entry), (0, PTE));
    // write | readable | executable = 0x2 | 0x8 | 0x20 = 0x2A.
    assert_eq!(v.exit_qualification, 0x2A);
    let t = translate(&mut img, EPTP, &CAPS, GPA, Access::ExecSupervisor).unwrap();
    assert!(t.read && !t.write && t.exec_supervisor && t.exec_user);

    // Read+write PDE (0x4003): no execution of either kind.
    let mut img = image(PML4E, PDPTE, 0x4003, PTE);
    for access in [Access::ExecSupervisor, Access::ExecUser] {
        let v = violation(translate(&mut img, EPTP, &CAPS, GPA, access));
        // fetch (bit 2) | readable | writable = 0x4 | 0x8 | 0x10 = 0x1C.
        assert_eq!(v.exit_qualification, 0x1C);
    }
}

#[test]
fn mbec_uses_bit_10_for_user_execution() {
    let mbec = EptCaps { mbec: true, ..CAPS };
    // Standard tables have bit 10 clear everywhere: supervisor fetch yes, user fetch no.
    let mut img = standard();
    let t = translate(&mut img, EPTP, &mbec, GPA, Access::ExecSupervisor).unwrap();
    assert!(t.exec_supervisor && !t.exec_user);
    let v = violation(translate(&mut img, EPTP, &mbec, GPA, Access::ExecUser));
    // fetch | readable | writable | executable (supervisor) = 0x4 | 0x8 | 0x10 | 0x20 = 0x3C.
    assert_eq!(v.exit_qualification, 0x3C);

    // Bit 10 (0x400) at every level, bit 2 clear in the leaf:
    // PML4E 0x2407, PDPTE 0x3407, PDE 0x4407, leaf 0x1234_5000 | 0x400 | 0x30 | R|W = 0x1234_5433.
    let mut img = image(0x2407, 0x3407, 0x4407, 0x1234_5433);
    let t = translate(&mut img, EPTP, &mbec, GPA, Access::ExecUser).unwrap();
    assert!(t.exec_user && !t.exec_supervisor);
    let v = violation(translate(
        &mut img,
        EPTP,
        &mbec,
        GPA,
        Access::ExecSupervisor,
    ));
    // fetch | readable | writable | user-executable (bit 6) = 0x4 | 0x8 | 0x10 | 0x40 = 0x5C.
    assert_eq!(v.exit_qualification, 0x5C);

    // Without MBEC, bit 10 is ignored and both fetch kinds follow bit 2.
    let t = translate(&mut img, EPTP, &CAPS, GPA, Access::Read).unwrap();
    assert!(!t.exec_user && !t.exec_supervisor);
    assert!(translate(&mut img, EPTP, &CAPS, GPA, Access::ExecUser).is_err());
}

#[test]
fn mbec_user_execute_only_entry_is_present_and_needs_execute_only() {
    // Leaf with only bit 10 among the permission bits: 0x1234_5000 | 0x400 | 0x30 = 0x1234_5430.
    let leaf = 0x1234_5430;
    let mut img = image(0x2407, 0x3407, 0x4407, leaf);
    // Without MBEC the entry is not present.
    let v = violation(translate(&mut img, EPTP, &CAPS, GPA, Access::ExecUser));
    assert_eq!((v.level, v.not_present), (0, true));
    // With MBEC it is present; without execute-only support it misconfigures.
    let mbec = EptCaps { mbec: true, ..CAPS };
    assert_eq!(
        translate(&mut img, EPTP, &mbec, GPA, Access::ExecUser),
        Err(EptFault::Misconfig {
            level: 0,
            entry: leaf
        })
    );
    let mbec_xo = EptCaps {
        execute_only: true,
        ..mbec
    };
    let t = translate(&mut img, EPTP, &mbec_xo, GPA, Access::ExecUser).unwrap();
    assert!(t.exec_user && !t.read && !t.exec_supervisor);
}

#[test]
fn accessed_flags_set_on_success_when_eptp_bit_6_is_set() {
    let mut img = standard();
    let t = translate(&mut img, EPTP_AD, &CAPS, GPA, Access::Read).unwrap();
    // Bit 8 (0x100) added to every entry used; no dirty flag on a read.
    assert_eq!(entries(&img), [0x2107, 0x3107, 0x4107, 0x1234_5137]);
    assert!(t.accessed && !t.dirty);
    assert_eq!(t.leaf_entry, 0x1234_5137);

    let t = translate(&mut img, EPTP_AD, &CAPS, GPA, Access::Write).unwrap();
    // Bit 9 (0x200) only in the leaf: 0x1234_5137 | 0x200 = 0x1234_5337.
    assert_eq!(entries(&img), [0x2107, 0x3107, 0x4107, 0x1234_5337]);
    assert!(t.accessed && t.dirty);
}

#[test]
fn dirty_flag_goes_in_a_large_leaf() {
    let mut img = image(PML4E, PDPTE, 0x4060_00B7, 0);
    let t = translate(&mut img, EPTP_AD, &CAPS, GPA, Access::Write).unwrap();
    // 2 MiB leaf: 0x4060_00B7 | 0x300 = 0x4060_03B7; PT untouched.
    assert_eq!(entries(&img), [0x2107, 0x3107, 0x4060_03B7, 0]);
    assert!(t.accessed && t.dirty);
}

#[test]
fn no_accessed_or_dirty_flags_without_eptp_bit_6() {
    let mut img = standard();
    let t = translate(&mut img, EPTP, &CAPS, GPA, Access::Write).unwrap();
    assert_eq!(entries(&img), [PML4E, PDPTE, PDE, PTE]);
    assert!(!t.accessed && !t.dirty);
}

#[test]
fn no_accessed_flags_when_the_access_faults() {
    // Read-only leaf, write access: violation, and nothing is written.
    let mut img = image(PML4E, PDPTE, PDE, 0x1234_5031);
    violation(translate(&mut img, EPTP_AD, &CAPS, GPA, Access::Write));
    assert_eq!(entries(&img), [PML4E, PDPTE, PDE, 0x1234_5031]);
    // Misconfigured leaf.
    let mut img = image(PML4E, PDPTE, PDE, 0x1234_5032);
    assert!(translate(&mut img, EPTP_AD, &CAPS, GPA, Access::Read).is_err());
    assert_eq!(entries(&img), [PML4E, PDPTE, PDE, 0x1234_5032]);
}

#[test]
fn peek_never_writes() {
    let mut img = standard();
    let before = img.clone();
    let p = peek(&img, EPTP_AD, &CAPS, GPA, Access::Write).unwrap();
    assert_eq!(img, before);
    assert!(!p.accessed && !p.dirty);
    let t = translate(&mut img, EPTP_AD, &CAPS, GPA, Access::Write).unwrap();
    assert_eq!((t.hpa, t.level, t.memtype), (p.hpa, p.level, p.memtype));
    // After the walk, peek reports the flags that are now in memory.
    let p = peek(&img, EPTP_AD, &CAPS, GPA, Access::Read).unwrap();
    assert!(p.accessed && p.dirty);
    assert_eq!(p, t);
}

#[test]
fn entry_outside_memory_is_a_distinct_error() {
    // PDPTE points at 0x10_0000, beyond the 0x6000-byte image: PD entry 3 at 0x10_0018.
    let mut img = image(PML4E, 0x0010_0007, PDE, PTE);
    assert_eq!(
        translate(&mut img, EPTP, &CAPS, GPA, Access::Read),
        Err(EptFault::EntryOutsideMemory {
            level: 1,
            pa: 0x10_0018
        })
    );
    // A root outside memory: EPTP 0x7000_0000 | 0x1E; PML4 entry 1 at 0x7000_0008.
    assert_eq!(
        translate(&mut img, 0x7000_001E, &CAPS, GPA, Access::Read),
        Err(EptFault::EntryOutsideMemory {
            level: 3,
            pa: 0x7000_0008
        })
    );
}

#[test]
fn invalid_caps_are_refused() {
    let mut img = standard();
    for maxphyaddr in [0, 11, 53, 255] {
        let caps = EptCaps { maxphyaddr, ..CAPS };
        assert_eq!(
            translate(&mut img, EPTP, &caps, GPA, Access::Read),
            Err(EptFault::InvalidCaps)
        );
    }
}
