//! The TLB invalidation plan for a flush: hand-checked operands (TLBI IPAS2E1IS with the TTL
//! hint, TLBI RIPAS2E1IS BaseADDR/NUM/SCALE/TG/TTL, the LPA2 64 KiB base alignment), the
//! whole-VMID thresholds, and a property that every plan covers exactly what it flushes.

mod common;

use common::tlbi_covers;
use proptest::prelude::*;
use tdp_arch_arm64::TlbiOp::{self, *};
use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options, MAX_TLBI_RANGE_PAGES};
use tdp_core::{Gpa, Level, TlbFlush};

fn s2(caps: Stage2Caps, o: Stage2Options) -> Stage2 {
    Stage2::new(caps, o).unwrap()
}

fn no_range(ttl: bool) -> Stage2Caps {
    Stage2Caps {
        tlbi_range: false,
        ttl,
        ..Stage2Caps::all()
    }
}

fn flush(start: u64, size: u64, level: Option<u8>, tables: bool) -> TlbFlush {
    TlbFlush::Range {
        start: Gpa::new(start),
        size,
        level: level.map(|l| Level::new(l).unwrap()),
        tables,
    }
}

fn by_ipa(body: &[TlbiOp]) -> Vec<TlbiOp> {
    let mut v = vec![DsbIshst];
    v.extend_from_slice(body);
    v.extend_from_slice(&[DsbIsh, Vmalle1is, DsbIsh, Isb]);
    v
}

const WHOLE: [TlbiOp; 4] = [DsbIshst, Vmalls12e1is, DsbIsh, Isb];

#[test]
fn one_2m_block_is_one_ipas2e1is_with_a_level_2_ttl() {
    let f = s2(no_range(true), Stage2Options::new(Granule::K4, 40, 48));
    let ops: Vec<_> = f
        .tlbi(flush(0x4020_0000, 0x20_0000, Some(1), false))
        .collect();
    // IPA >> 12 = 0x40200 in bits 35:0; TTL = 4K (0b01) << 2 | level 2 = 0b0110 in 47:44.
    assert_eq!(ops, by_ipa(&[Ipas2e1is(0x0000_6000_0004_0200)]));
    // Without FEAT_TTL the hint bits are RES0.
    let f = s2(no_range(false), Stage2Options::new(Granule::K4, 40, 48));
    let ops: Vec<_> = f
        .tlbi(flush(0x4020_0000, 0x20_0000, Some(1), false))
        .collect();
    assert_eq!(ops, by_ipa(&[Ipas2e1is(0x4_0200)]));
}

#[test]
fn k64_52bit_ipa_goes_to_bits_39_36_with_a_level_3_ttl() {
    let f = s2(no_range(true), Stage2Options::new(Granule::K64, 52, 52));
    let ops: Vec<_> = f
        .tlbi(flush(0x000f_0000_0001_0000, 0x1_0000, Some(0), false))
        .collect();
    // IPA[51:48] = 0xf in 39:36, IPA[47:12] = 0x10 in 35:0, TTL = 64K 0b11 << 2 | level 3.
    assert_eq!(ops, by_ipa(&[Ipas2e1is(0x0000_f0f0_0000_0010)]));
}

#[test]
fn a_table_change_gets_no_level_hint() {
    let f = s2(no_range(true), Stage2Options::new(Granule::K4, 40, 48));
    let ops: Vec<_> = f.tlbi(flush(0x1000, 0x2000, Some(0), true)).collect();
    assert_eq!(ops, by_ipa(&[Ipas2e1is(0x1), Ipas2e1is(0x2)]));
    let ops: Vec<_> = f.tlbi(flush(0x1000, 0x2000, None, false)).collect();
    assert_eq!(ops, by_ipa(&[Ipas2e1is(0x1), Ipas2e1is(0x2)]));
}

#[test]
fn range_tlbi_fields_for_4k_and_16k() {
    let f = s2(Stage2Caps::all(), Stage2Options::new(Granule::K4, 40, 48));
    // 4 MiB of 2 MiB leaves = 1024 pages = 16 × 2^(5·1+1): NUM 15, SCALE 1, TG 4K 0b01,
    // TTL level 2, BaseADDR = IPA >> 12 = 0x10_0000.
    let ops: Vec<_> = f
        .tlbi(flush(0x1_0000_0000, 0x40_0000, Some(1), false))
        .collect();
    assert_eq!(ops, by_ipa(&[Ripas2e1is(0x57c0_0010_0000)]));
    let f = s2(Stage2Caps::all(), Stage2Options::new(Granule::K16, 47, 48));
    // 64 MiB of 32 MiB leaves = 4096 16K pages = 2 × 2^(5·2+1): NUM 1, SCALE 2, TG 16K 0b10,
    // TTL level 2, BaseADDR = IPA >> 14 = 0x8_0000.
    let ops: Vec<_> = f
        .tlbi(flush(0x2_0000_0000, 0x400_0000, Some(1), false))
        .collect();
    assert_eq!(ops, by_ipa(&[Ripas2e1is(0xa0c0_0008_0000)]));
}

#[test]
fn lpa2_range_base_is_64k_aligned_with_single_pages_before() {
    let f = s2(
        Stage2Caps::all(),
        Stage2Options {
            lpa2: true,
            ..Stage2Options::new(Granule::K4, 48, 48)
        },
    );
    let ops: Vec<_> = f.tlbi(flush(0x3000, 0x13000, Some(0), false)).collect();
    // Pages 0x3000..0x10000 one by one (TTL 4K level 3 = 0b0111), then 6 pages from 0x10000 as
    // one range: BaseADDR = IPA >> 16 = 1, NUM 2, SCALE 0, TTL 3, TG 0b01.
    let mut body: Vec<TlbiOp> = (3..16).map(|p| Ipas2e1is(p | 0x7 << 44)).collect();
    body.push(Ripas2e1is(0x4160_0000_0001));
    assert_eq!(ops, by_ipa(&body));
}

#[test]
fn whole_vmid_for_all_and_above_the_thresholds() {
    let f = s2(no_range(true), Stage2Options::new(Granule::K4, 40, 48));
    assert_eq!(f.max_ipa_ops(), 512);
    assert_eq!(f.tlbi(TlbFlush::All).collect::<Vec<_>>(), WHOLE);
    // 511 pages: 511 TLBIs; 512: the whole VMID.
    let p = f.tlbi(flush(0, 511 << 12, Some(0), false));
    assert!(!p.is_whole_vmid());
    assert_eq!(p.tlbi_count(), 511 + 1);
    assert!(f.tlbi(flush(0, 512 << 12, Some(0), false)).is_whole_vmid());
    // The same 2 MiB as one block is one TLBI.
    assert_eq!(f.tlbi(flush(0, 2 << 20, Some(1), false)).tlbi_count(), 2);
    // A range past the IPA space is not trusted.
    assert!(f
        .tlbi(flush((1 << 40) - 0x1000, 0x2000, None, false))
        .is_whole_vmid());
    let k64 = s2(no_range(true), Stage2Options::new(Granule::K64, 42, 48));
    assert_eq!(k64.max_ipa_ops(), 8192);
    // With FEAT_TLBIRANGE: up to 2^21 pages in one RIPAS2E1IS (NUM 31, SCALE 3).
    let f = s2(Stage2Caps::all(), Stage2Options::new(Granule::K4, 48, 48));
    let ops: Vec<_> = f
        .tlbi(flush(0, MAX_TLBI_RANGE_PAGES << 12, None, true))
        .collect();
    assert_eq!(ops, by_ipa(&[Ripas2e1is(0x7f80_0000_0000)]));
    assert!(f
        .tlbi(flush(0, (MAX_TLBI_RANGE_PAGES + 1) << 12, None, true))
        .is_whole_vmid());
}

fn configs() -> Vec<Stage2> {
    let mut v = Vec::new();
    for caps in [Stage2Caps::all(), no_range(true), no_range(false)] {
        for o in [
            Stage2Options::new(Granule::K4, 40, 48),
            Stage2Options {
                lpa2: true,
                ..Stage2Options::new(Granule::K4, 52, 52)
            },
            Stage2Options {
                lpa2: true,
                ..Stage2Options::new(Granule::K16, 48, 48)
            },
            Stage2Options::new(Granule::K16, 47, 48),
            Stage2Options::new(Granule::K64, 52, 52),
        ] {
            v.push(s2(caps, o));
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every range flush the engine can ask for (level-aligned leaves of one level, or mixed /
    /// tables) is covered exactly by the planned TLBIs, or is a whole-VMID flush.
    #[test]
    fn every_plan_covers_its_range(
        which in 0usize..15,
        level in 0u8..3,
        mixed in any::<bool>(),
        start_units in 0u64..(1 << 20),
        units in prop_oneof![1u64..40, 1u64..3000, Just(1u64 << 21)],
    ) {
        let f = configs()[which];
        let geo = *tdp_core::PteFormat::geometry(&f);
        let lvl = Level::new(level.min(1)).unwrap();
        let unit = if mixed { geo.page_size() } else { geo.level_size(lvl) };
        let ipa = 1u64 << geo.ia_bits();
        let start = (start_units * unit) % ipa;
        let size = (units * unit).min(ipa - start);
        let fl = flush(start, size, (!mixed).then_some(lvl.get()), mixed);
        if let Err(e) = tlbi_covers(&f, fl) {
            panic!("{fl:?}: {e}");
        }
    }
}
