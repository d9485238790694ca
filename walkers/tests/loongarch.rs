//! Hand-built LoongArch GPA tables, checked against hand-computed values.
//!
//! Linux's 16 KiB / 3-level page-walk controller values (`setup_ptwalker`):
//!
//! ```text
//!   PWCL = PTbase 14 | PTwidth 11 << 5 | Dir1_base 25 << 10 | Dir1_width 11 << 15 = 0x5e56e
//!   PWCH = Dir3_base 36 | Dir3_width 11 << 6                                      = 0x2e4
//! ```
//!
//! Image (base 0, 0x18000 bytes): root 0x4000, PMD table 0x8000, page table 0xC000, 16 KiB
//! each. The test GPA `3 << 36 | 5 << 25 | 7 << 14 | 0x123` uses root entry 3 (0x4018), PMD
//! entry 5 (0x8028) and PTE 7 (0xC038, odd; its even buddy PTE 6 is at 0xC030).

use proptest::prelude::*;
use tdp_walkers::loongarch::{
    kvm_fast_path, peek, peek_after_fast_path, refill, translate, LaExcCode, LaFault,
    LaTranslation, LaWalkConfig,
};
use tdp_walkers::{Access, FlatImage};

const PWCL: u64 = 0x5e56e;
const PWCH: u64 = 0x2e4;
const HPTW_EN: u64 = 1 << 24;
const ROOT: u64 = 0x4000;
const GPA: u64 = 3 << 36 | 5 << 25 | 7 << 14 | 0x123;
const ROOT_E: u64 = 0x4018;
const PMD_E: u64 = 0x8028;
const PTE_ODD: u64 = 0xc038;
const PTE_EVEN: u64 = 0xc030;
const DMW: u64 = 0x9000_0000_0000_0000;

// Entry bits (Vol. 1 TLBELO; Linux pgtable-bits.h).
const V: u64 = 1;
const D: u64 = 2;
const PLV3: u64 = 3 << 2;
const CC: u64 = 1 << 4;
const HUGE_OR_G: u64 = 1 << 6;
const P: u64 = 1 << 7;
const W: u64 = 1 << 8;
const KW: u64 = 1 << 9;
const HGLOBAL: u64 = 1 << 12;
const NR: u64 = 1 << 61;
const NX: u64 = 1 << 62;
const RPLV: u64 = 1 << 63;

fn cfg() -> LaWalkConfig {
    LaWalkConfig {
        pwcl: PWCL,
        pwch: PWCH,
        palen: 48,
        plv: 0,
    }
}

fn hptw() -> LaWalkConfig {
    LaWalkConfig {
        pwch: PWCH | HPTW_EN,
        ..cfg()
    }
}

/// The image with the two pointers in place (the root's in DMW form) and the given PTEs.
fn image(odd: u64, even: u64) -> FlatImage {
    let mut img = FlatImage::zeroed(0, 0x18000);
    assert!(img.write_u64_le(ROOT_E, DMW | 0x8000));
    assert!(img.write_u64_le(PMD_E, 0xc000));
    assert!(img.write_u64_le(PTE_ODD, odd));
    assert!(img.write_u64_le(PTE_EVEN, even));
    img
}

fn exc(r: Result<LaTranslation, LaFault>) -> LaExcCode {
    match r {
        Err(LaFault::Exception(e)) => e.code,
        other => panic!("expected an exception, got {other:?}"),
    }
}

#[test]
fn sixteen_k_three_level_walk_follows_linux_pwcl_pwch() {
    let leaf = 0x1234_4000 | P | V | D | W | KW | CC;
    let img = image(leaf, 0x5678_0000 | P | V | CC);
    let t = peek(&img, ROOT, &cfg(), GPA, Access::Write).unwrap();
    assert_eq!(t.hpa, 0x1234_4123);
    assert_eq!(
        (t.page_size, t.entry, t.entry_pa, t.mat),
        (0x4000, leaf, PTE_ODD, 1)
    );
    // The refill loads the even/odd pair: PTE 6 into TLBELO0, PTE 7 into TLBELO1.
    assert_eq!(t.pair.lo0, 0x5678_0000 | P | V | CC);
    assert_eq!((t.pair.lo1, t.pair.ps, t.pair.dir), (leaf, 14, 0));
    assert_eq!(t.tlbelo, leaf);
    assert_eq!(refill(&img, ROOT, &cfg(), GPA).unwrap(), t.pair);
    // The even page of the pair uses TLBELO0.
    let t = peek(&img, ROOT, &cfg(), GPA - 0x4000, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x5678_0123);
}

#[test]
fn pointer_bits_above_palen_are_dropped() {
    // The root's entry holds a DMW address; the PGD value and the PMD entry may too.
    let mut img = image(0x1234_4000 | P | V, 0);
    assert!(img.write_u64_le(PMD_E, 0x8000_0000_0000_c000));
    let t = peek(&img, DMW | ROOT, &cfg(), GPA, Access::Read).unwrap();
    assert_eq!(t.hpa, 0x1234_4123);
    // With PALEN 32, a pointer's bit 32 is dropped too.
    assert!(img.write_u64_le(PMD_E, 1 << 32 | 0xc000));
    let narrow = LaWalkConfig { palen: 32, ..cfg() };
    assert_eq!(
        peek(&img, ROOT, &narrow, GPA, Access::Read).unwrap().hpa,
        0x1234_4123
    );
}

#[test]
fn huge_pmd_is_refilled_as_two_halves_with_hglobal_moved_to_g() {
    let mut img = image(0, 0);
    let huge = 0x4000_0000 | HUGE_OR_G | HGLOBAL | P | V | D | CC;
    assert!(img.write_u64_le(PMD_E, huge));
    let pair = refill(&img, ROOT, &cfg(), GPA).unwrap();
    // HUGE cleared, HGLOBAL (bit 12) moved to G (bit 6); halves of 16 MiB (PS 24).
    let lo0 = 0x4000_0000 | HUGE_OR_G | P | V | D | CC;
    assert_eq!(
        (pair.lo0, pair.lo1, pair.ps, pair.dir),
        (lo0, lo0 + 0x100_0000, 24, 1)
    );
    // GPA offset within the 32 MiB page: 7 << 14 | 0x123 (even half).
    let t = peek(&img, ROOT, &cfg(), GPA, Access::Write).unwrap();
    assert_eq!(
        (t.hpa, t.page_size, t.entry_pa),
        (0x4001_c123, 0x200_0000, PMD_E)
    );
    // The odd half: GPA bit 24 set.
    let t = peek(&img, ROOT, &cfg(), GPA | 1 << 24, Access::Read).unwrap();
    assert_eq!((t.hpa, t.tlbelo), (0x4101_c123, lo0 + 0x100_0000));
    // PPN bits below the page size are ignored.
    assert!(img.write_u64_le(PMD_E, huge | 0x10_0000));
    assert_eq!(
        peek(&img, ROOT, &cfg(), GPA, Access::Read).unwrap().hpa,
        0x4001_c123
    );
}

#[test]
fn huge_entry_in_the_root_maps_64_gib() {
    let mut img = FlatImage::zeroed(0, 0x8000);
    assert!(img.write_u64_le(ROOT_E, 0x30_0000_0000 | HUGE_OR_G | P | V));
    let t = peek(&img, ROOT, &cfg(), GPA, Access::Read).unwrap();
    assert_eq!((t.page_size, t.pair.ps, t.pair.dir), (1 << 36, 35, 3));
    assert_eq!(t.hpa, 0x30_0000_0000 | (GPA & ((1 << 36) - 1)));
}

#[test]
fn v_clear_is_page_invalid_for_every_access() {
    let img = image(0x1234_4000 | P | D | CC, 0);
    for (access, code, ecode) in [
        (Access::Read, LaExcCode::Pil, 1),
        (Access::Write, LaExcCode::Pis, 2),
        (Access::ExecSupervisor, LaExcCode::Pif, 3),
        (Access::ExecUser, LaExcCode::Pif, 3),
    ] {
        let c = exc(peek(&img, ROOT, &cfg(), GPA, access));
        assert_eq!((c, c.ecode()), (code, ecode));
    }
}

#[test]
fn d_clear_is_page_modification_and_nr_nx_inhibit() {
    let img = image(0x1234_4000 | P | V | NR | NX, 0);
    assert_eq!(
        exc(peek(&img, ROOT, &cfg(), GPA, Access::Write)),
        LaExcCode::Pme
    );
    assert_eq!(
        exc(peek(&img, ROOT, &cfg(), GPA, Access::Read)),
        LaExcCode::Pnr
    );
    assert_eq!(
        exc(peek(&img, ROOT, &cfg(), GPA, Access::ExecUser)),
        LaExcCode::Pnx
    );
    assert_eq!(
        [LaExcCode::Pme, LaExcCode::Pnr, LaExcCode::Pnx].map(LaExcCode::ecode),
        [4, 5, 6]
    );
    // NR does not stop a store, NX does not stop a load.
    let img = image(0x1234_4000 | P | V | D | NR, 0);
    assert!(peek(&img, ROOT, &cfg(), GPA, Access::Write).is_ok());
    let img = image(0x1234_4000 | P | V | NX, 0);
    assert!(peek(&img, ROOT, &cfg(), GPA, Access::Read).is_ok());
}

#[test]
fn privilege_follows_plv_and_rplv() {
    let user = LaWalkConfig { plv: 3, ..cfg() };
    // PLV 0 entries: only PLV 0 accesses (RPLV 0: CRMD.PLV must not exceed PLV).
    let img = image(0x1234_4000 | P | V | D, 0);
    assert!(peek(&img, ROOT, &cfg(), GPA, Access::Read).is_ok());
    assert_eq!(
        exc(peek(&img, ROOT, &user, GPA, Access::Read)),
        LaExcCode::Ppi
    );
    assert_eq!(LaExcCode::Ppi.ecode(), 7);
    // PLV 3: everyone; with RPLV only PLV 3.
    let img = image(0x1234_4000 | P | V | D | PLV3, 0);
    assert!(peek(&img, ROOT, &user, GPA, Access::Read).is_ok());
    assert!(peek(&img, ROOT, &cfg(), GPA, Access::Read).is_ok());
    let img = image(0x1234_4000 | P | V | D | PLV3 | RPLV, 0);
    assert!(peek(&img, ROOT, &user, GPA, Access::Read).is_ok());
    assert_eq!(
        exc(peek(&img, ROOT, &cfg(), GPA, Access::Read)),
        LaExcCode::Ppi
    );
    // The privilege check comes after V and before NR/NX/D.
    let img = image(0x1234_4000 | P | NR, 0);
    assert_eq!(
        exc(peek(&img, ROOT, &user, GPA, Access::Read)),
        LaExcCode::Pil
    );
    let img = image(0x1234_4000 | P | V | NR, 0);
    assert_eq!(
        exc(peek(&img, ROOT, &user, GPA, Access::Read)),
        LaExcCode::Ppi
    );
}

#[test]
fn unmapped_gpa_reaches_an_invalid_table_and_an_empty_pte() {
    // KVM's empty entries point at shared invalid tables whose PTEs are 0.
    let mut img = FlatImage::zeroed(0, 0x18000);
    let invalid_pte = 0x10000u64;
    let invalid_pmd = 0x14000u64;
    for i in 0..2048 {
        assert!(img.write_u64_le(invalid_pmd + i * 8, DMW | invalid_pte));
        assert!(img.write_u64_le(ROOT + i * 8, DMW | invalid_pmd));
    }
    match peek(&img, ROOT, &cfg(), GPA, Access::Read) {
        Err(LaFault::Exception(e)) => {
            assert_eq!((e.code, e.entry, e.tlbelo), (LaExcCode::Pil, 0, 0));
            assert_eq!(e.entry_pa, invalid_pte + 7 * 8);
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn hardware_walker_uses_p_and_w_and_sets_v_and_d() {
    // Present (P) but not valid: the hardware walker maps it and sets V.
    let mut img = image(0x1234_4000 | P | CC, 0);
    assert!(peek(&img, ROOT, &hptw(), GPA, Access::Read).is_ok());
    assert_eq!(
        img.read_u64_le(PTE_ODD),
        Some(0x1234_4000 | P | CC),
        "peek never writes"
    );
    let t = translate(&mut img, ROOT, &hptw(), GPA, Access::Read).unwrap();
    assert_eq!(img.read_u64_le(PTE_ODD), Some(0x1234_4000 | P | CC | V));
    assert_eq!(t.entry & V, V);
    // A store needs W; with it the walker sets D.
    assert_eq!(
        exc(translate(&mut img, ROOT, &hptw(), GPA, Access::Write)),
        LaExcCode::Pme
    );
    assert!(img.write_u64_le(PTE_ODD, 0x1234_4000 | P | W));
    translate(&mut img, ROOT, &hptw(), GPA, Access::Write).unwrap();
    assert_eq!(img.read_u64_le(PTE_ODD), Some(0x1234_4000 | P | W | V | D));
    // V without P is not present to the hardware walker.
    let mut img = image(0x1234_4000 | V | D, 0);
    assert_eq!(
        exc(translate(&mut img, ROOT, &hptw(), GPA, Access::Read)),
        LaExcCode::Pil
    );
    // The software refill never writes.
    let mut img = image(0x1234_4000 | P | V, 0);
    translate(&mut img, ROOT, &cfg(), GPA, Access::Read).unwrap();
    assert_eq!(img.read_u64_le(PTE_ODD), Some(0x1234_4000 | P | V));
}

#[test]
fn hardware_walker_sets_ad_in_a_huge_entry() {
    let mut img = image(0, 0);
    assert!(img.write_u64_le(PMD_E, 0x4000_0000 | HUGE_OR_G | P | W));
    translate(&mut img, ROOT, &hptw(), GPA, Access::Write).unwrap();
    assert_eq!(
        img.read_u64_le(PMD_E),
        Some(0x4000_0000 | HUGE_OR_G | P | W | V | D)
    );
}

#[test]
fn kvm_fast_path_makes_young_and_dirty_only_what_kvm_would() {
    // Not present: KVM takes the slow path.
    let mut img = image(0x1234_4000 | V, 0);
    assert!(!kvm_fast_path(&mut img, ROOT, &cfg(), GPA, false).unwrap());
    assert_eq!(img.read_u64_le(PTE_ODD), Some(0x1234_4000 | V));
    // Present and old: mkyoung (V).
    let mut img = image(0x1234_4000 | P | KW, 0);
    assert!(kvm_fast_path(&mut img, ROOT, &cfg(), GPA, false).unwrap());
    assert_eq!(img.read_u64_le(PTE_ODD), Some(0x1234_4000 | P | KW | V));
    // A write to a KVM_PAGE_WRITEABLE leaf: mkdirty (D|W).
    assert!(kvm_fast_path(&mut img, ROOT, &cfg(), GPA, true).unwrap());
    assert_eq!(
        img.read_u64_le(PTE_ODD),
        Some(0x1234_4000 | P | KW | V | D | W)
    );
    // A write to a leaf without it: refused, unchanged.
    let mut img = image(0x1234_4000 | P | V, 0);
    assert!(!kvm_fast_path(&mut img, ROOT, &cfg(), GPA, true).unwrap());
    assert_eq!(img.read_u64_le(PTE_ODD), Some(0x1234_4000 | P | V));
    // peek_after_fast_path agrees without writing.
    let img = image(0x1234_4000 | P | KW, 0);
    assert!(peek_after_fast_path(&img, ROOT, &cfg(), GPA, Access::Write).is_ok());
    assert_eq!(
        exc(peek(&img, ROOT, &cfg(), GPA, Access::Write)),
        LaExcCode::Pis
    );
    assert_eq!(img.read_u64_le(PTE_ODD), Some(0x1234_4000 | P | KW));
    let img = image(0x1234_4000 | P, 0);
    assert_eq!(
        exc(peek_after_fast_path(&img, ROOT, &cfg(), GPA, Access::Write)),
        LaExcCode::Pis
    );
}

#[test]
fn four_k_four_level_walk_uses_dir2() {
    // PT 12/9, Dir1 21/9, Dir2 30/9, Dir3 39/9.
    let pwcl = 12 | 9 << 5 | 21 << 10 | 9 << 15 | 30 << 20 | 9 << 25;
    let c = LaWalkConfig {
        pwcl,
        pwch: 39 | 9 << 6,
        palen: 48,
        plv: 0,
    };
    let gpa = 1u64 << 39 | 2 << 30 | 3 << 21 | 4 << 12 | 0x56;
    let mut img = FlatImage::zeroed(0, 0x5000);
    assert!(img.write_u64_le(8, 0x1000));
    assert!(img.write_u64_le(0x1000 + 16, 0x2000));
    assert!(img.write_u64_le(0x2000 + 24, 0x3000));
    assert!(img.write_u64_le(0x3000 + 32, 0xabc_d000 | P | V));
    let t = peek(&img, 0, &c, gpa, Access::Read).unwrap();
    assert_eq!((t.hpa, t.pair.ps, t.entry_pa), (0xabc_d056, 12, 0x3020));
    assert_eq!(
        peek(&img, 0, &c, 1 << 48, Access::Read),
        Err(LaFault::AddressTooWide {
            gpa: 1 << 48,
            width: 48
        })
    );
}

#[test]
fn configuration_and_address_errors_are_reported() {
    let img = image(0x1234_4000 | P | V, 0);
    let bad = |c: LaWalkConfig| match peek(&img, ROOT, &c, GPA, Access::Read) {
        Err(LaFault::InvalidConfig(_)) => {}
        r => panic!("{c:?}: {r:?}"),
    };
    bad(LaWalkConfig {
        pwcl: PWCL | 1 << 30,
        ..cfg()
    }); // PTEWidth 128-bit
    bad(LaWalkConfig { palen: 11, ..cfg() });
    bad(LaWalkConfig { palen: 61, ..cfg() });
    bad(LaWalkConfig { plv: 4, ..cfg() });
    bad(LaWalkConfig {
        pwcl: PWCL & !0x1f | 11,
        ..cfg()
    }); // PTbase 11
    bad(LaWalkConfig {
        pwcl: PWCL & !(0x1f << 10) | 14 << 10,
        ..cfg()
    }); // Dir1 base = PTbase
    bad(LaWalkConfig {
        pwch: 60 | 11 << 6,
        ..cfg()
    }); // span beyond 64 bits
    assert_eq!(
        peek(&img, ROOT, &cfg(), 1 << 47, Access::Read),
        Err(LaFault::AddressTooWide {
            gpa: 1 << 47,
            width: 47
        })
    );
    let mut img = image(0, 0);
    assert!(img.write_u64_le(PMD_E, 0x10_0000));
    assert_eq!(
        peek(&img, ROOT, &cfg(), GPA, Access::Read),
        Err(LaFault::RefillOutsideMemory {
            dir: 0,
            pa: 0x10_0030
        })
    );
    assert_eq!(
        peek(&img, 0x100_0000, &cfg(), GPA, Access::Read),
        Err(LaFault::RefillOutsideMemory {
            dir: 3,
            pa: 0x100_0018
        })
    );
}

fn word() -> impl Strategy<Value = u64> {
    let near = (0u64..0x18000).prop_map(|x| x & !7);
    let entry = (
        near.clone(),
        any::<u8>(),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(pa, low, huge, high)| {
            let mut v = pa & !0xfff | u64::from(low) & !0x40;
            if huge {
                v |= HUGE_OR_G;
            }
            if high {
                v |= NR | NX | RPLV;
            }
            v
        });
    prop_oneof![6 => entry, 1 => any::<u64>(), 1 => near]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random tables, configurations and addresses: never a panic; without the hardware
    /// walker `translate` agrees with `peek` and writes nothing; with it, `translate`'s result
    /// is `peek`'s with only V/D added to the leaf.
    #[test]
    fn random_tables_never_panic(
        words in proptest::collection::vec(word(), 64),
        pwcl in prop_oneof![3 => Just(PWCL), 1 => any::<u32>().prop_map(u64::from)],
        pwch in prop_oneof![3 => Just(PWCH), 1 => Just(PWCH | HPTW_EN), 1 => any::<u32>().prop_map(u64::from)],
        palen in prop_oneof![4 => Just(48u8), 1 => any::<u8>()],
        plv in 0u8..5,
        root in prop_oneof![4 => Just(ROOT), 1 => any::<u64>()],
        gpa in prop_oneof![3 => Just(GPA), 2 => any::<u64>().prop_map(|g| g & ((1 << 47) - 1)), 1 => any::<u64>()],
        access in prop::sample::select(vec![Access::Read, Access::Write, Access::ExecSupervisor, Access::ExecUser]),
    ) {
        let mut img = FlatImage::zeroed(0, 0x18000);
        // Scatter the words over the entries the walk may use.
        for (i, w) in words.iter().enumerate() {
            let pa = [ROOT_E, PMD_E, PTE_ODD, PTE_EVEN][i % 4] + (i as u64 / 4) * 0x2000 % 0x8000;
            prop_assume!(img.write_u64_le(pa, *w) || pa >= 0x18000);
        }
        let c = LaWalkConfig { pwcl, pwch, palen, plv };
        let before = img.clone();
        let p = peek(&img, root, &c, gpa, access);
        let _ = refill(&img, root, &c, gpa);
        let _ = peek_after_fast_path(&img, root, &c, gpa, access);
        let t = translate(&mut img, root, &c, gpa, access);
        if c.hardware_walker() {
            match (&p, &t) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(a.hpa, b.hpa);
                    prop_assert_eq!(b.entry & !(V | D), a.entry & !(V | D));
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                _ => prop_assert!(false, "peek {:?} vs translate {:?}", p, t),
            }
        } else {
            prop_assert_eq!(&p, &t);
            prop_assert_eq!(&img, &before);
        }
        let _ = kvm_fast_path(&mut img, root, &c, gpa, access == Access::Write);
    }
}
