//! Hand-built MIPS64 GPA tables, checked against hand-computed values.
//!
//! Layout: Linux 64-bit R2+ with RIXI (`pgtable-bits.h`): PRESENT 0, WRITE 1, ACCESSED 2,
//! MODIFIED 3, XI 6, RI 7, G 8, V 9, D 10, CCA 13:11, PFN from bit `PAGE_SHIFT - 12 + 14`.
//! EntryLo = PTE >> 8 (G 0, V 1, D 2, C 5:3, PFN from 6) with RI/XI rotated to bits 63:62.
//!
//! Image (base 0, 0x8000 bytes), 4 KiB pages, 3 levels (PTE 9, PMD 9, PGD 10 bits): PGD at
//! 0x2000 (8 KiB), PMD table 0x4000, page table 0x5000. The test GPA
//! `3 << 30 | 5 << 21 | 7 << 12 | 0x123` uses PGD entry 3 (0x2018), PMD entry 5 (0x4028),
//! and PTE 7 (0x5038, odd; its even buddy PTE 6 at 0x5030).

use proptest::prelude::*;
use tdp_walkers::mips::{
    kvm_fast_path, peek, peek_after_fast_path, pte_to_entrylo, refill, translate, MipsFault,
    MipsPteLayout, MipsTlbExc, MipsTranslation, MipsWalkConfig,
};
use tdp_walkers::{Access, FlatImage};

const XKPHYS: u64 = 0x9800_0000_0000_0000;
const CKSEG0: u64 = 0xffff_ffff_8000_0000;
const CKSEG1: u64 = 0xffff_ffff_a000_0000;
const PGD: u64 = XKPHYS | 0x2000;
const GPA: u64 = 3 << 30 | 5 << 21 | 7 << 12 | 0x123;
const PGD_E: u64 = 0x2018;
const PMD_E: u64 = 0x4028;
const PTE_ODD: u64 = 0x5038;
const PTE_EVEN: u64 = 0x5030;

const PRESENT: u64 = 1;
const WRITE: u64 = 2;
const ACCESSED: u64 = 4;
const MODIFIED: u64 = 8;
const XI: u64 = 1 << 6;
const RI: u64 = 1 << 7;
const G: u64 = 1 << 8;
const V: u64 = 1 << 9;
const D: u64 = 1 << 10;
const CCA3: u64 = 3 << 11;

fn cfg() -> MipsWalkConfig {
    MipsWalkConfig {
        layout: MipsPteLayout::linux64_rixi(12),
        page_shift: 12,
        index_bits: vec![9, 9, 10],
        pabits: 48,
        big_endian: false,
        iec: true,
    }
}

/// 4 KiB PTE for `pa` with `flags`.
fn pte(pa: u64, flags: u64) -> u64 {
    (pa >> 12) << 14 | flags
}

fn image(odd: u64, even: u64) -> FlatImage {
    let mut img = FlatImage::zeroed(0, 0x8000);
    assert!(img.write_u64_le(PGD_E, XKPHYS | 0x4000));
    assert!(img.write_u64_le(PMD_E, CKSEG0 + 0x5000));
    assert!(img.write_u64_le(PTE_ODD, odd));
    assert!(img.write_u64_le(PTE_EVEN, even));
    img
}

fn tlb(r: Result<MipsTranslation, MipsFault>) -> (MipsTlbExc, u8) {
    match r {
        Err(MipsFault::Tlb(e)) => (e.kind, e.exc_code),
        other => panic!("expected a TLB exception, got {other:?}"),
    }
}

#[test]
fn walk_follows_kernel_pointers_and_loads_the_even_odd_pair() {
    let odd = pte(
        0x1234_5000,
        PRESENT | WRITE | ACCESSED | MODIFIED | V | D | CCA3,
    );
    let even = pte(0x6000, PRESENT | ACCESSED | V | CCA3 | XI);
    let img = image(odd, even);
    let t = peek(&img, PGD, &cfg(), GPA, Access::Write).unwrap();
    assert_eq!((t.hpa, t.page_size, t.cca), (0x1234_5123, 0x1000, 3));
    // EntryLo1 = odd >> 8: PFN 0x12345 << 6 | C 3 << 3 | D | V.
    assert_eq!(t.pair.entrylo1, 0x0048_d15e);
    // EntryLo0 = even >> 8 with XI rotated to bit 62: PFN 6 << 6 | C 3 << 3 | V.
    assert_eq!(t.pair.entrylo0, 1 << 62 | 6 << 6 | 3 << 3 | 2);
    assert_eq!(
        (t.entrylo, t.pte, t.pte_pa, t.pair.pte_pa),
        (0x0048_d15e, odd, PTE_ODD, PTE_EVEN)
    );
    assert_eq!(refill(&img, PGD, &cfg(), GPA).unwrap(), t.pair);
    // The even page of the pair.
    let t = peek(&img, PGD, &cfg(), GPA - 0x1000, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x6123);
    let r = peek(&img, PGD, &cfg(), GPA - 0x1000, Access::ExecUser);
    assert_eq!(tlb(r), (MipsTlbExc::ExecInhibit, 20));
}

#[test]
fn pointers_may_be_in_xkphys_ckseg0_or_ckseg1_but_not_a_mapped_segment() {
    let leaf = pte(0x7000, PRESENT | V);
    let mut img = image(leaf, 0);
    assert!(img.write_u64_le(PMD_E, CKSEG1 + 0x5000));
    assert_eq!(
        peek(&img, CKSEG0 + 0x2000, &cfg(), GPA, Access::Read)
            .unwrap()
            .hpa,
        0x7123
    );
    // xkphys with another CCA (bits 61:59) is the same memory.
    assert!(img.write_u64_le(PMD_E, 0xa800_0000_0000_5000));
    assert_eq!(
        peek(&img, PGD, &cfg(), GPA, Access::Read).unwrap().hpa,
        0x7123
    );
    // A user-segment pointer (e.g. a bare physical address) cannot be dereferenced.
    assert!(img.write_u64_le(PMD_E, 0x5000));
    assert_eq!(
        peek(&img, PGD, &cfg(), GPA, Access::Read),
        Err(MipsFault::MappedPointer {
            level: 0,
            va: 0x5000
        })
    );
    // xkphys bits between PABITS and 58 must be zero.
    assert!(img.write_u64_le(PMD_E, XKPHYS | 1 << 50 | 0x5000));
    assert!(matches!(
        peek(&img, PGD, &cfg(), GPA, Access::Read),
        Err(MipsFault::MappedPointer { level: 0, .. })
    ));
    assert_eq!(
        peek(&img, 0x2000, &cfg(), GPA, Access::Read),
        Err(MipsFault::MappedPointer {
            level: 2,
            va: 0x2000
        })
    );
}

#[test]
fn tlb_exceptions_follow_v_ri_xi_and_d() {
    // V = 0: TLB Invalid, TLBL for loads/fetches, TLBS for stores.
    let img = image(pte(0x7000, PRESENT | ACCESSED | D), 0);
    assert_eq!(
        tlb(peek(&img, PGD, &cfg(), GPA, Access::Read)),
        (MipsTlbExc::Invalid, 2)
    );
    assert_eq!(
        tlb(peek(&img, PGD, &cfg(), GPA, Access::ExecSupervisor)),
        (MipsTlbExc::Invalid, 2)
    );
    assert_eq!(
        tlb(peek(&img, PGD, &cfg(), GPA, Access::Write)),
        (MipsTlbExc::Invalid, 3)
    );
    // D = 0 on a store: TLB Modified (Mod, 1).
    let img = image(pte(0x7000, PRESENT | V), 0);
    assert_eq!(
        tlb(peek(&img, PGD, &cfg(), GPA, Access::Write)),
        (MipsTlbExc::Modified, 1)
    );
    // RI on a load, XI on a fetch: TLBRI 19 / TLBXI 20 with PageGrain.IEC, else TLBL.
    let img = image(pte(0x7000, PRESENT | V | D | RI | XI), 0);
    assert_eq!(
        tlb(peek(&img, PGD, &cfg(), GPA, Access::Read)),
        (MipsTlbExc::ReadInhibit, 19)
    );
    assert_eq!(
        tlb(peek(&img, PGD, &cfg(), GPA, Access::ExecUser)),
        (MipsTlbExc::ExecInhibit, 20)
    );
    assert!(
        peek(&img, PGD, &cfg(), GPA, Access::Write).is_ok(),
        "RI/XI do not stop stores"
    );
    let no_iec = MipsWalkConfig {
        iec: false,
        ..cfg()
    };
    assert_eq!(
        tlb(peek(&img, PGD, &no_iec, GPA, Access::Read)),
        (MipsTlbExc::ReadInhibit, 2)
    );
    assert_eq!(
        tlb(peek(&img, PGD, &no_iec, GPA, Access::ExecUser)),
        (MipsTlbExc::ExecInhibit, 2)
    );
    // V is checked first.
    let img = image(pte(0x7000, PRESENT | RI), 0);
    assert_eq!(
        tlb(peek(&img, PGD, &cfg(), GPA, Access::Read)),
        (MipsTlbExc::Invalid, 2)
    );
    // G and the software bits do not matter to the hardware.
    let img = image(pte(0x7000, V | G), 0);
    assert!(peek(&img, PGD, &cfg(), GPA, Access::Read).is_ok());
}

#[test]
fn sixteen_k_pages_use_pfn_from_bit_16_and_ignore_low_pfn_bits() {
    let c = MipsWalkConfig {
        layout: MipsPteLayout::linux64_rixi(14),
        page_shift: 14,
        index_bits: vec![11, 11],
        pabits: 48,
        big_endian: false,
        iec: true,
    };
    // GPA: PGD entry 1 (bit 25), PTE 3 (odd) at offset 0x2345.
    let gpa = 1 << 25 | 3 << 14 | 0x2345;
    let mut img = FlatImage::zeroed(0, 0xc000);
    assert!(img.write_u64_le(8, XKPHYS | 0x4000));
    // PFN (0x1234_4000 >> 14) << 16, plus a stray bit 14 (a 4 KiB frame bit) the TLB ignores.
    assert!(img.write_u64_le(0x4000 + 3 * 8, 0x48d1 << 16 | 1 << 14 | V | D | CCA3));
    let t = peek(&img, XKPHYS, &c, gpa, Access::Write).unwrap();
    assert_eq!((t.hpa, t.page_size), (0x1234_6345, 0x4000));
}

#[test]
fn big_endian_entries_are_read_most_significant_byte_first() {
    let be = MipsWalkConfig {
        big_endian: true,
        ..cfg()
    };
    let mut img = FlatImage::zeroed(0, 0x8000);
    for (pa, v) in [
        (PGD_E, XKPHYS | 0x4000),
        (PMD_E, XKPHYS | 0x5000),
        (PTE_ODD, pte(0x7000, PRESENT | V)),
    ] {
        assert!(img.write(pa, &v.to_be_bytes()));
    }
    use tdp_walkers::PhysMem;
    assert_eq!(peek(&img, PGD, &be, GPA, Access::Read).unwrap().hpa, 0x7123);
    assert!(peek(&img, PGD, &cfg(), GPA, Access::Read).is_err());
}

#[test]
fn kvm_fast_path_follows_pte_mkyoung_and_pte_mkdirty() {
    // Not present: slow path.
    let mut img = image(pte(0x7000, V), 0);
    assert!(!kvm_fast_path(&mut img, PGD, &cfg(), GPA, false).unwrap());
    // Old: ACCESSED | VALID.
    let mut img = image(pte(0x7000, PRESENT | WRITE), 0);
    assert!(kvm_fast_path(&mut img, PGD, &cfg(), GPA, false).unwrap());
    assert_eq!(
        img.read_u64_le(PTE_ODD),
        Some(pte(0x7000, PRESENT | WRITE | ACCESSED | V))
    );
    // Write to a WRITE PTE: MODIFIED | DIRTY.
    assert!(kvm_fast_path(&mut img, PGD, &cfg(), GPA, true).unwrap());
    assert_eq!(
        img.read_u64_le(PTE_ODD),
        Some(pte(0x7000, PRESENT | WRITE | ACCESSED | V | MODIFIED | D))
    );
    // Write without WRITE: refused.
    let mut img = image(pte(0x7000, PRESENT | ACCESSED | V), 0);
    assert!(!kvm_fast_path(&mut img, PGD, &cfg(), GPA, true).unwrap());
    // pte_mkyoung leaves VALID clear on a no-read PTE.
    let mut img = image(pte(0x7000, PRESENT | RI), 0);
    assert!(kvm_fast_path(&mut img, PGD, &cfg(), GPA, false).unwrap());
    assert_eq!(
        img.read_u64_le(PTE_ODD),
        Some(pte(0x7000, PRESENT | RI | ACCESSED))
    );
    // peek_after_fast_path agrees, without writing.
    let img = image(pte(0x7000, PRESENT | WRITE), 0);
    assert!(peek_after_fast_path(&img, PGD, &cfg(), GPA, Access::Write).is_ok());
    assert_eq!(img.read_u64_le(PTE_ODD), Some(pte(0x7000, PRESENT | WRITE)));
}

#[test]
fn pte_to_entrylo_shifts_and_rotates() {
    let l = MipsPteLayout::linux64_rixi(12);
    assert_eq!(
        pte_to_entrylo(&l, RI | XI | G | V | D | 0x3f),
        0xc000_0000_0000_0007
    );
    let plain = MipsPteLayout {
        no_exec: None,
        no_read: None,
        ..l
    };
    assert_eq!(pte_to_entrylo(&plain, RI | XI | V), 2);
}

#[test]
fn configuration_and_address_errors_are_reported() {
    let img = image(pte(0x7000, PRESENT | V), 0);
    let bad = |c: MipsWalkConfig| match peek(&img, PGD, &c, GPA, Access::Read) {
        Err(MipsFault::InvalidConfig(_)) => {}
        r => panic!("{c:?}: {r:?}"),
    };
    let l = cfg().layout;
    bad(MipsWalkConfig {
        page_shift: 11,
        ..cfg()
    });
    bad(MipsWalkConfig {
        index_bits: vec![9],
        ..cfg()
    });
    bad(MipsWalkConfig {
        index_bits: vec![9, 0, 10],
        ..cfg()
    });
    bad(MipsWalkConfig {
        pabits: 60,
        ..cfg()
    });
    bad(MipsWalkConfig {
        layout: MipsPteLayout { valid: 12, ..l },
        ..cfg()
    });
    bad(MipsWalkConfig {
        layout: MipsPteLayout { write: 9, ..l },
        ..cfg()
    });
    bad(MipsWalkConfig {
        layout: MipsPteLayout { no_read: None, ..l },
        ..cfg()
    });
    bad(MipsWalkConfig {
        layout: MipsPteLayout { pfn_shift: 15, ..l },
        ..cfg()
    });
    assert_eq!(
        peek(&img, PGD, &cfg(), 1 << 40, Access::Read),
        Err(MipsFault::AddressTooWide {
            gpa: 1 << 40,
            width: 40
        })
    );
    let mut img = image(0, 0);
    assert!(img.write_u64_le(PMD_E, XKPHYS | 0x10_0000));
    assert_eq!(
        peek(&img, PGD, &cfg(), GPA, Access::Read),
        Err(MipsFault::EntryOutsideMemory {
            level: 0,
            pa: 0x10_0030
        })
    );
}

fn word() -> impl Strategy<Value = u64> {
    let pa = (0u64..0x8000).prop_map(|x| x & !7);
    prop_oneof![
        3 => pa.clone().prop_map(|p| XKPHYS | p),
        1 => pa.clone().prop_map(|p| CKSEG0 + p),
        3 => (pa, any::<u16>()).prop_map(|(p, f)| (p >> 12) << 14 | u64::from(f) & 0x3fff),
        1 => any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random tables, layouts, configurations and addresses: never a panic, `translate`
    /// equals `peek`, and neither writes.
    #[test]
    fn random_tables_never_panic(
        words in proptest::collection::vec(word(), 48),
        global in prop_oneof![4 => Just(8u32), 1 => 0u32..80],
        rixi in any::<bool>(),
        page_shift in prop_oneof![4 => Just(12u32), 1 => 0u32..40],
        bits in prop_oneof![4 => Just(vec![9u32, 9, 10]), 1 => proptest::collection::vec(0u32..40, 0..5)],
        pabits in prop_oneof![4 => Just(48u32), 1 => 0u32..80],
        big_endian in any::<bool>(),
        pgd in prop_oneof![4 => Just(PGD), 1 => any::<u64>()],
        gpa in prop_oneof![3 => Just(GPA), 2 => 0u64..1 << 40, 1 => any::<u64>()],
        access in prop::sample::select(vec![Access::Read, Access::Write, Access::ExecSupervisor, Access::ExecUser]),
    ) {
        let mut img = FlatImage::zeroed(0, 0x8000);
        for (i, w) in words.iter().enumerate() {
            let pa = [PGD_E, PMD_E, PTE_ODD, PTE_EVEN][i % 4] + (i as u64 / 4) * 0x808 % 0x2000;
            let _ = img.write_u64_le(pa, *w);
        }
        let layout = MipsPteLayout {
            global,
            valid: global.wrapping_add(1),
            dirty: global.wrapping_add(2),
            cache: global.wrapping_add(3),
            no_exec: rixi.then(|| global.wrapping_sub(2)),
            no_read: rixi.then(|| global.wrapping_sub(1)),
            pfn_shift: (global + 6 + page_shift).wrapping_sub(12),
            ..MipsPteLayout::linux64_rixi(12)
        };
        let c = MipsWalkConfig { layout, page_shift, index_bits: bits, pabits, big_endian, iec: rixi };
        let before = img.clone();
        let p = peek(&img, pgd, &c, gpa, access);
        let _ = refill(&img, pgd, &c, gpa);
        let _ = peek_after_fast_path(&img, pgd, &c, gpa, access);
        let _ = pte_to_entrylo(&c.layout, gpa);
        let t = translate(&mut img, pgd, &c, gpa, access);
        prop_assert_eq!(&p, &t);
        prop_assert_eq!(&img, &before);
        let _ = kvm_fast_path(&mut img, pgd, &c, gpa, access == Access::Write);
    }
}
