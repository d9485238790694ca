//! Hand-built AMD nested page tables, checked against hand-computed values.
//!
//! Same layout as the EPT tests (image base 0, 0x6000 bytes):
//!   0x1000 PML4, 0x2000 PDPT, 0x3000 PD, 0x4000 PT, 0x5000 PML5,
//! and the same GPA 0x0000_0080_8060_4567 (indices 1, 2, 3, 4, offset 0x567),
//! so the entries used are at 0x1008, 0x2010, 0x3018 and 0x4020.
//!
//! Error-code bits (APM Vol. 2 §8.4.2): P = 1, RW = 2, US = 4, RSV = 8, ID = 0x10.

use tdp_walkers::npt::{
    ncr3_cache_bits, peek, translate, NestedPageFault, NpfKind, NptCaps, NptFault,
};
use tdp_walkers::{Access, FlatImage};

const GPA: u64 = 0x0000_0080_8060_4567;
const PML4E_PA: u64 = 0x1008;
const PDPTE_PA: u64 = 0x2010;
const PDE_PA: u64 = 0x3018;
const PTE_PA: u64 = 0x4020;

const NCR3: u64 = 0x1000;

/// Non-leaf entries: next table | P (1) | R/W (2) | U/S (4) = | 0x7.
const PML4E: u64 = 0x2007;
const PDPTE: u64 = 0x3007;
const PDE: u64 = 0x4007;
/// 4 KiB leaf: 0x1234_5000 | P|RW|US.
const PTE: u64 = 0x0000_0000_1234_5007;

const CAPS: NptCaps = NptCaps {
    levels: 4,
    maxphyaddr: 48,
    nx_enabled: true,
    page_1g: true,
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

fn npf(r: Result<impl std::fmt::Debug, NptFault>) -> NestedPageFault {
    match r {
        Err(NptFault::Npf(f)) => f,
        other => panic!("expected a nested page fault, got {other:?}"),
    }
}

#[test]
fn four_kib_leaf_translates() {
    let mut img = standard();
    let t = translate(&mut img, NCR3, &CAPS, GPA, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x1234_5567);
    assert_eq!((t.level, t.page_size), (0, 0x1000));
    assert!(t.write && t.exec && t.user);
    assert_eq!(t.pat_index, 0);
}

#[test]
fn two_mib_and_one_gib_leaves_translate() {
    // 2 MiB: 0x4060_0000 | PS (0x80) | 0x7 = 0x4060_0087.
    let mut img = image(PML4E, PDPTE, 0x4060_0087, 0);
    let t = translate(&mut img, NCR3, &CAPS, GPA, Access::Write).unwrap();
    // GPA bits 20:0 = 0x4567.
    assert_eq!((t.hpa, t.level, t.page_size), (0x4060_4567, 1, 0x20_0000));

    // 1 GiB: 0x1_C000_0000 | 0x87.
    let mut img = image(PML4E, 0x1_C000_0087, 0, 0);
    let t = translate(&mut img, NCR3, &CAPS, GPA, Access::ExecSupervisor).unwrap();
    // GPA bits 29:0 = 0x0060_4567.
    assert_eq!(
        (t.hpa, t.level, t.page_size),
        (0x1_C060_4567, 2, 0x4000_0000)
    );
}

#[test]
fn one_gib_leaf_without_the_capability_is_a_reserved_bit_fault() {
    let mut img = image(PML4E, 0x1_C000_0087, 0, 0);
    let caps = NptCaps {
        page_1g: false,
        ..CAPS
    };
    let f = npf(translate(&mut img, NCR3, &caps, GPA, Access::Read));
    assert_eq!(
        (f.level, f.kind, f.entry),
        (2, NpfKind::Reserved, 0x1_C000_0087)
    );
    // P | US | RSV = 1 | 4 | 8 = 0xD.
    assert_eq!(f.error_code, 0xD);
}

#[test]
fn five_level_walk_uses_the_pml5() {
    let mut img = standard();
    // PML5 at 0x5000, index 1 (GPA bit 48) → 0x5008 → PML4 at 0x1000.
    assert!(img.write_u64_le(0x5008, 0x1007));
    let caps = NptCaps { levels: 5, ..CAPS };
    let gpa5 = GPA | 1 << 48;
    let t = translate(&mut img, 0x5000, &caps, gpa5, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x1234_5567);
    // A 5-level walk sets A in the PML5E too: 0x1007 | 0x20 = 0x1027.
    assert_eq!(img.read_u64_le(0x5008), Some(0x1027));
    assert_eq!(
        translate(&mut img, NCR3, &CAPS, gpa5, Access::Read),
        Err(NptFault::AddressTooWide {
            gpa: gpa5,
            width: 48
        })
    );
}

#[test]
fn pat_index_comes_from_pat_pcd_pwt_of_the_leaf() {
    // 4 KiB: PAT is bit 7. 0x1234_5000 | PAT 0x80 | PCD 0x10 | PWT 0x08 | 0x7 = 0x1234_509F → 0b111.
    let mut img = image(PML4E, PDPTE, PDE, 0x1234_509F);
    assert_eq!(
        translate(&mut img, NCR3, &CAPS, GPA, Access::Read)
            .unwrap()
            .pat_index,
        7
    );
    // PCD only: 0x1234_5017 → 0b010.
    let mut img = image(PML4E, PDPTE, PDE, 0x1234_5017);
    assert_eq!(
        translate(&mut img, NCR3, &CAPS, GPA, Access::Read)
            .unwrap()
            .pat_index,
        2
    );
    // 2 MiB: PAT is bit 12. 0x4060_0000 | 0x1000 | PWT 0x08 | PS 0x80 | 0x7 = 0x4060_108F → 0b101.
    let mut img = image(PML4E, PDPTE, 0x4060_108F, 0);
    let t = translate(&mut img, NCR3, &CAPS, GPA, Access::Read).unwrap();
    assert_eq!(t.pat_index, 5);
    // The PAT bit is not part of the address.
    assert_eq!(t.hpa, 0x4060_4567);
}

#[test]
fn ncr3_low_bits_are_ignored_and_pwt_pcd_are_reported() {
    let mut img = standard();
    // 0x1000 | 0xFFF: every low bit set, root still 0x1000.
    let t = translate(&mut img, 0x1FFF, &CAPS, GPA, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x1234_5567);
    assert_eq!(ncr3_cache_bits(0x1018), 0b11);
    assert_eq!(ncr3_cache_bits(0x1008), 0b01);
    assert_eq!(ncr3_cache_bits(0x1000), 0);
}

#[test]
fn ncr3_beyond_maxphyaddr_is_refused() {
    let mut img = standard();
    for ncr3 in [1u64 << 48 | 0x1000, 1 << 63 | 0x1000] {
        assert_eq!(
            translate(&mut img, ncr3, &CAPS, GPA, Access::Read),
            Err(NptFault::InvalidNcr3 { ncr3 })
        );
    }
}

#[test]
fn user_bit_clear_at_any_level_faults_every_access() {
    // Clear U/S (bit 2) at one level at a time: entry & !4.
    let base = [PML4E, PDPTE, PDE, PTE];
    for level in 0..4 {
        let mut e = base;
        e[3 - level] &= !0x4;
        let mut img = image(e[0], e[1], e[2], e[3]);
        for (access, code) in [
            // P | US = 0x5; + RW = 0x7; + ID = 0x15.
            (Access::Read, 0x5),
            (Access::Write, 0x7),
            (Access::ExecSupervisor, 0x15),
            (Access::ExecUser, 0x15),
        ] {
            let f = npf(translate(&mut img, NCR3, &CAPS, GPA, access));
            assert_eq!(f.kind, NpfKind::Permission, "U=0 at level {level}");
            // Permission faults are reported at the leaf.
            assert_eq!((f.level, f.entry), (0, e[3]));
            assert_eq!(f.error_code, code, "{access:?}");
        }
        assert_eq!(entries(&img), e, "a faulting walk sets no accessed flag");
    }
}

#[test]
fn read_only_at_any_level_faults_writes_only() {
    // PDPTE read-only: 0x3007 & !2 = 0x3005.
    let mut img = image(PML4E, 0x3005, PDE, PTE);
    let t = translate(&mut img, NCR3, &CAPS, GPA, Access::Read).unwrap();
    assert!(!t.write);
    let f = npf(translate(&mut img, NCR3, &CAPS, GPA, Access::Write));
    assert_eq!(
        (f.kind, f.level, f.error_code),
        (NpfKind::Permission, 0, 0x7)
    );
}

#[test]
fn nx_faults_fetches_only() {
    // NX (bit 63) in the PDE: 0x8000_0000_0000_4007.
    let mut img = image(PML4E, PDPTE, 0x8000_0000_0000_4007, PTE);
    let t = translate(&mut img, NCR3, &CAPS, GPA, Access::Write).unwrap();
    assert!(!t.exec && t.write);
    for access in [Access::ExecSupervisor, Access::ExecUser] {
        let f = npf(translate(&mut img, NCR3, &CAPS, GPA, access));
        // P | US | ID = 0x15.
        assert_eq!(
            (f.kind, f.level, f.error_code),
            (NpfKind::Permission, 0, 0x15)
        );
    }
}

#[test]
fn nx_bit_is_reserved_without_efer_nxe() {
    let caps = NptCaps {
        nx_enabled: false,
        ..CAPS
    };
    let mut img = image(PML4E, PDPTE, PDE, 0x8000_0000_1234_5007);
    let f = npf(translate(&mut img, NCR3, &caps, GPA, Access::Read));
    // P | US | RSV = 0xD.
    assert_eq!((f.kind, f.level, f.error_code), (NpfKind::Reserved, 0, 0xD));
    // Without NX, fetches are allowed and the ID bit is undefined (left 0).
    let mut img = standard();
    let t = translate(&mut img, NCR3, &caps, GPA, Access::ExecUser).unwrap();
    assert!(t.exec);
    let mut img = image(PML4E, PDPTE, 0x4006, PTE);
    let f = npf(translate(&mut img, NCR3, &caps, GPA, Access::ExecUser));
    assert_eq!(f.error_code, 0x4);
}

#[test]
fn ps_and_bit_8_in_pml4e_are_reserved() {
    // PS: 0x2007 | 0x80 = 0x2087; bit 8: 0x2007 | 0x100 = 0x2107.
    for pml4e in [0x2087, 0x2107] {
        let mut img = image(pml4e, PDPTE, PDE, PTE);
        let f = npf(translate(&mut img, NCR3, &CAPS, GPA, Access::Write));
        assert_eq!((f.kind, f.level, f.entry), (NpfKind::Reserved, 3, pml4e));
        // P | RW | US | RSV = 0xF.
        assert_eq!(f.error_code, 0xF);
    }
    // Also in a PML5E (0x1087 at 0x5008).
    let mut img = standard();
    assert!(img.write_u64_le(0x5008, 0x1087));
    let caps = NptCaps { levels: 5, ..CAPS };
    let f = npf(translate(
        &mut img,
        0x5000,
        &caps,
        GPA | 1 << 48,
        Access::Read,
    ));
    assert_eq!((f.kind, f.level), (NpfKind::Reserved, 4));
    // Bit 8 is the (ignored here) G bit in a PTE and ignored in a non-leaf PDE.
    let mut img = image(PML4E, PDPTE, 0x4107, 0x1234_5107);
    assert!(translate(&mut img, NCR3, &CAPS, GPA, Access::Read).is_ok());
}

#[test]
fn reserved_bits_of_large_leaves_and_high_address_bits_fault() {
    let cases: [(&str, [u64; 4], u8); 5] = [
        // 2 MiB leaf with bit 13 (bits 20:13 MBZ): 0x4060_0087 | 0x2000.
        ("2M bit 13", [PML4E, PDPTE, 0x4060_2087, 0], 1),
        // 2 MiB leaf with bit 20: 0x4060_0087 | 0x10_0000.
        ("2M bit 20", [PML4E, PDPTE, 0x4070_0087, 0], 1),
        // 1 GiB leaf with bit 13 (bits 29:13 MBZ).
        ("1G bit 13", [PML4E, 0x1_C000_2087, 0, 0], 2),
        // Address bit 48 with MAXPHYADDR 48 (bits 51:48 reserved), in a pointer and a leaf.
        ("PDPTE bit 48", [PML4E, 0x0001_0000_0000_3007, PDE, PTE], 2),
        ("PTE bit 51", [PML4E, PDPTE, PDE, 0x0008_0000_1234_5007], 0),
    ];
    for (what, [a, b, c, d], level) in cases {
        let mut img = image(a, b, c, d);
        let f = npf(translate(&mut img, NCR3, &CAPS, GPA, Access::Read));
        assert_eq!(
            (f.kind, f.level, f.error_code),
            (NpfKind::Reserved, level, 0xD),
            "{what}"
        );
    }
    // With MAXPHYADDR 52 bit 51 is an address bit; bits 62:52 are available (ignored).
    let caps = NptCaps {
        maxphyaddr: 52,
        ..CAPS
    };
    let mut img = image(PML4E, PDPTE, PDE, 0x7FF8_0000_1234_5007);
    let t = translate(&mut img, NCR3, &caps, GPA, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x0008_0000_1234_5567);
}

#[test]
fn not_present_faults_at_its_level() {
    // PDE with P clear: 0x4006.
    let mut img = image(PML4E, PDPTE, 0x4006, PTE);
    let f = npf(translate(&mut img, NCR3, &CAPS, GPA, Access::Write));
    assert_eq!((f.kind, f.level, f.entry), (NpfKind::NotPresent, 1, 0x4006));
    // RW | US = 0x6, P clear.
    assert_eq!(f.error_code, 0x6);
    // A not-present entry's other bits are not checked: reserved bits in it don't matter.
    let mut img = image(PML4E, PDPTE, 0xFFFF_FFFF_FFFF_FFFE, PTE);
    let f = npf(translate(&mut img, NCR3, &CAPS, GPA, Access::Read));
    assert_eq!((f.kind, f.error_code), (NpfKind::NotPresent, 0x4));
}

#[test]
fn reserved_bit_wins_over_permission() {
    // PML4E U/S clear (0x2003) and a 2 MiB leaf with bit 13 set.
    let mut img = image(0x2003, PDPTE, 0x4060_2087, 0);
    let f = npf(translate(&mut img, NCR3, &CAPS, GPA, Access::Read));
    assert_eq!((f.kind, f.level), (NpfKind::Reserved, 1));
}

#[test]
fn accessed_and_dirty_flags_are_set_on_success() {
    let mut img = standard();
    let t = translate(&mut img, NCR3, &CAPS, GPA, Access::Read).unwrap();
    // A (bit 5, 0x20) in every entry used.
    assert_eq!(entries(&img), [0x2027, 0x3027, 0x4027, 0x1234_5027]);
    assert!(t.accessed && !t.dirty);
    let t = translate(&mut img, NCR3, &CAPS, GPA, Access::Write).unwrap();
    // D (bit 6, 0x40) in the leaf only: 0x1234_5027 | 0x40 = 0x1234_5067.
    assert_eq!(entries(&img), [0x2027, 0x3027, 0x4027, 0x1234_5067]);
    assert!(t.accessed && t.dirty);
    assert_eq!(t.leaf_entry, 0x1234_5067);

    // 1 GiB leaf: D goes in the PDPE. 0x1_C000_0087 | 0x60 = 0x1_C000_00E7.
    let mut img = image(PML4E, 0x1_C000_0087, 0, 0);
    translate(&mut img, NCR3, &CAPS, GPA, Access::Write).unwrap();
    assert_eq!(entries(&img), [0x2027, 0x1_C000_00E7, 0, 0]);
}

#[test]
fn faults_and_peek_write_nothing() {
    let mut img = image(PML4E, PDPTE, PDE, 0x1234_5005); // read-only leaf
    assert!(translate(&mut img, NCR3, &CAPS, GPA, Access::Write).is_err());
    assert_eq!(entries(&img), [PML4E, PDPTE, PDE, 0x1234_5005]);

    let img = standard();
    let t = peek(&img, NCR3, &CAPS, GPA, Access::Write).unwrap();
    assert_eq!(entries(&img), [PML4E, PDPTE, PDE, PTE]);
    assert!(!t.accessed && !t.dirty);
    assert_eq!(t.hpa, 0x1234_5567);
}

#[test]
fn entry_outside_memory_is_a_distinct_error() {
    // PML4E points at 0x80_0000 (outside the image): PDPT entry 2 at 0x80_0010.
    let mut img = image(0x0080_0007, PDPTE, PDE, PTE);
    assert_eq!(
        translate(&mut img, NCR3, &CAPS, GPA, Access::Read),
        Err(NptFault::EntryOutsideMemory {
            level: 2,
            pa: 0x80_0010
        })
    );
    // An image that does not start at 0: the root at 0x1000 is below it.
    let mut high = FlatImage::zeroed(0x10_0000, 0x1000);
    assert_eq!(
        translate(&mut high, NCR3, &CAPS, GPA, Access::Read),
        Err(NptFault::EntryOutsideMemory {
            level: 3,
            pa: 0x1008
        })
    );
}

#[test]
fn invalid_caps_are_refused() {
    let mut img = standard();
    for caps in [
        NptCaps { levels: 3, ..CAPS },
        NptCaps { levels: 6, ..CAPS },
        NptCaps {
            maxphyaddr: 60,
            ..CAPS
        },
        NptCaps {
            maxphyaddr: 0,
            ..CAPS
        },
    ] {
        assert_eq!(
            translate(&mut img, NCR3, &caps, GPA, Access::Read),
            Err(NptFault::InvalidCaps)
        );
    }
}
