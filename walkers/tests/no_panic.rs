//! Random entry words, table pointers, GPAs and capabilities: the walkers
//! must always return (never panic), and `peek` must agree with `translate`.
//!
//! The image has one page per level (page `level` holds that level's table)
//! so that mostly-valid words can chain into deep walks; fully random words,
//! random single-bit flips, random roots and random capabilities make sure
//! every rejection path is exercised too.

use proptest::prelude::*;
use tdp_walkers::{ept, npt, Access, FlatImage};

/// Image base; page `level` (0 = PT … 4 = PML5) starts at `BASE + level * 0x1000`.
const BASE: u64 = 0x1000;
/// Five table pages plus a spare one.
const PAGES: u64 = 6;

fn table_of(level: u64) -> u64 {
    BASE + level * 0x1000
}

/// Optionally flip one random bit, so that near-valid entries hit every
/// reserved-bit rule.
fn noise() -> impl Strategy<Value = u64> {
    prop_oneof![7 => Just(0u64), 1 => (0..64u32).prop_map(|b| 1u64 << b)]
}

/// Bits 63:52: ignored/available in both formats, except NPT's NX (bit 63).
fn high_bits() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(0u64), 1 => any::<u64>().prop_map(|w| w & 0xFFF0_0000_0000_0000)]
}

/// Page-frame address of a leaf at `level`, below 2^46 and aligned to its size.
fn leaf_addr(level: u64) -> impl Strategy<Value = u64> {
    let align = 12 + 9 * level;
    any::<u64>().prop_map(move |w| w & 0x0000_3FFF_FFFF_F000 & !((1u64 << align) - 1))
}

/// Mostly-valid EPT words for one level, with a few fully random ones.
fn ept_entry(level: u64) -> impl Strategy<Value = u64> {
    let leaf_possible = level <= 2;
    let shape = (
        prop::bool::weighted(if level == 0 {
            1.0
        } else if leaf_possible {
            0.3
        } else {
            0.0
        }),
        prop_oneof![3 => Just(7u64), 1 => 0..8u64], // bits 2:0: X W R
        prop_oneof![3 => prop::sample::select(vec![0u64, 1, 4, 5, 6]), 1 => 0..8u64], // memory type
        any::<bool>(),                              // IPAT
        0..4u64,                                    // A, D
        prop::bool::weighted(0.8),                  // bit 10: user execute
    );
    let valid = (shape, leaf_addr(level), high_bits(), noise()).prop_map(
        move |((leaf, rwx, mt, ipat, ad, xu), frame, high, noise)| {
            let word = if leaf {
                let large = if level > 0 { 1 << 7 } else { 0 };
                rwx | mt << 3 | u64::from(ipat) << 6 | large | ad << 8 | frame
            } else {
                rwx | (ad & 1) << 8 | table_of(level - 1)
            };
            (word | u64::from(xu) << 10 | high) ^ noise
        },
    );
    prop_oneof![1 => any::<u64>(), 9 => valid]
}

/// Mostly-valid NPT words for one level, with a few fully random ones.
fn npt_entry(level: u64) -> impl Strategy<Value = u64> {
    let leaf_possible = level <= 2;
    let shape = (
        prop::bool::weighted(if level == 0 {
            1.0
        } else if leaf_possible {
            0.3
        } else {
            0.0
        }),
        prop::bool::weighted(0.95), // P
        prop::bool::weighted(0.8),  // R/W
        prop::bool::weighted(0.95), // U/S
        0..4u64,                    // PWT, PCD
        0..4u64,                    // A, D
        0..4u64,                    // G, PAT
        prop::bool::weighted(0.2),  // NX
    );
    let valid = (shape, leaf_addr(level), noise()).prop_map(
        move |((leaf, p, rw, us, cache, ad, gpat, nx), frame, noise)| {
            let common = u64::from(p)
                | u64::from(rw) << 1
                | u64::from(us) << 2
                | cache << 3
                | u64::from(nx) << 63;
            let word = if leaf {
                let (ps, pat) = match level {
                    0 => (0, (gpat >> 1) << 7),
                    _ => (1 << 7, (gpat >> 1) << 12),
                };
                common | ad << 5 | ps | (gpat & 1) << 8 | pat | frame
            } else {
                common | (ad & 1) << 5 | table_of(level - 1)
            };
            word ^ noise
        },
    );
    prop_oneof![1 => any::<u64>(), 9 => valid]
}

fn access() -> impl Strategy<Value = Access> {
    prop::sample::select(Access::ALL.to_vec())
}

/// Random GPAs, mostly inside a 4-level span.
fn gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => any::<u64>(),
        1 => any::<u64>().prop_map(|g| g & ((1 << 57) - 1)),
        6 => 0..(1u64 << 48),
    ]
}

fn maxphyaddr() -> impl Strategy<Value = u8> {
    prop_oneof![4 => Just(46u8), 4 => Just(52), 1 => Just(36), 1 => any::<u8>()]
}

/// One table's words per level (0 = PT … 4 = PML5).
fn tables(entry: fn(u64) -> BoxedStrategy<u64>) -> impl Strategy<Value = Vec<Vec<u64>>> {
    (0..5u64)
        .map(|level| prop::collection::vec(entry(level), 1..12))
        .collect::<Vec<_>>()
}

/// Builds the image: page `level` cycles through `words[level]`; the spare page stays 0.
fn image(words: &[Vec<u64>]) -> FlatImage {
    let mut img = FlatImage::zeroed(BASE, (PAGES * 0x1000) as usize);
    for (level, list) in words.iter().enumerate() {
        for slot in 0..512u64 {
            let w = list[slot as usize % list.len()];
            assert!(img.write_u64_le(table_of(level as u64) + slot * 8, w));
        }
    }
    img
}

/// Page holding the root: usually the right level, sometimes any page or
/// one just outside the image.
fn root(levels: u64, pick: u8) -> u64 {
    match pick % 8 {
        0 => BASE + u64::from(pick / 8) % (PAGES + 1) * 0x1000,
        _ => table_of(levels.clamp(1, 5) - 1),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        // Integration tests have no lib.rs for proptest to file regressions beside.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ept_walk_never_panics_and_peek_agrees(
        words in tables(|l| ept_entry(l).boxed()),
        root_pick in any::<u8>(),
        five_levels in any::<bool>(),
        ad in any::<bool>(),
        random_eptp in prop::option::weighted(0.1, any::<u64>()),
        gpa in gpa(),
        access in access(),
        maxphyaddr in maxphyaddr(),
        execute_only in any::<bool>(),
        page_1g in any::<bool>(),
        mbec in any::<bool>(),
    ) {
        let caps = ept::EptCaps { maxphyaddr, execute_only, page_1g, mbec };
        let levels = if five_levels { 5 } else { 4 };
        // WB, walk length levels - 1, A/D as drawn; or anything at all.
        let eptp = random_eptp.unwrap_or(
            root(levels, root_pick) | (levels - 1) << 3 | 6 | u64::from(ad) << 6,
        );
        let mut img = image(&words);
        let before = img.clone();
        let peeked = ept::peek(&img, eptp, &caps, gpa, access);
        prop_assert_eq!(&img, &before);
        let translated = ept::translate(&mut img, eptp, &caps, gpa, access);
        match (&peeked, &translated) {
            (Ok(p), Ok(t)) => {
                prop_assert_eq!((p.hpa, p.level, p.page_size), (t.hpa, t.level, t.page_size));
                prop_assert_eq!(
                    (p.read, p.write, p.exec_supervisor, p.exec_user, p.memtype, p.ipat),
                    (t.read, t.write, t.exec_supervisor, t.exec_user, t.memtype, t.ipat)
                );
                prop_assert_eq!(p.hpa & (p.page_size - 1), gpa & (p.page_size - 1));
                if eptp & 0x40 == 0 {
                    prop_assert_eq!(&img, &before, "no A/D writes without EPTP bit 6");
                } else {
                    prop_assert!(t.accessed);
                    prop_assert_eq!(t.dirty, p.dirty || access == Access::Write);
                }
            }
            (Err(p), Err(t)) => {
                prop_assert_eq!(p, t);
                prop_assert_eq!(&img, &before, "a failed walk writes nothing");
            }
            _ => prop_assert!(false, "peek {:?} vs translate {:?}", peeked, translated),
        }
    }

    #[test]
    fn npt_walk_never_panics_and_peek_agrees(
        words in tables(|l| npt_entry(l).boxed()),
        root_pick in any::<u8>(),
        ncr3_low in any::<u16>(),
        random_ncr3 in prop::option::weighted(0.1, any::<u64>()),
        gpa in gpa(),
        access in access(),
        levels in prop_oneof![4 => Just(4u8), 4 => Just(5), 1 => any::<u8>()],
        maxphyaddr in maxphyaddr(),
        nx_enabled in prop::bool::weighted(0.8),
        page_1g in any::<bool>(),
    ) {
        let caps = npt::NptCaps { levels, maxphyaddr, nx_enabled, page_1g };
        let ncr3 = random_ncr3
            .unwrap_or(root(u64::from(levels), root_pick) | u64::from(ncr3_low & 0xFFF));
        let mut img = image(&words);
        let before = img.clone();
        let peeked = npt::peek(&img, ncr3, &caps, gpa, access);
        prop_assert_eq!(&img, &before);
        let translated = npt::translate(&mut img, ncr3, &caps, gpa, access);
        match (&peeked, &translated) {
            (Ok(p), Ok(t)) => {
                prop_assert_eq!((p.hpa, p.level, p.page_size), (t.hpa, t.level, t.page_size));
                prop_assert_eq!((p.write, p.exec, p.pat_index), (t.write, t.exec, t.pat_index));
                prop_assert_eq!(p.hpa & (p.page_size - 1), gpa & (p.page_size - 1));
                prop_assert!(t.user && t.accessed);
                prop_assert_eq!(t.dirty, p.dirty || access == Access::Write);
            }
            (Err(p), Err(t)) => {
                prop_assert_eq!(p, t);
                prop_assert_eq!(&img, &before, "a failed walk writes nothing");
            }
            _ => prop_assert!(false, "peek {:?} vs translate {:?}", peeked, translated),
        }
    }
}
