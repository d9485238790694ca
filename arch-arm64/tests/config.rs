//! Configuration: geometry per granule and IPA size (checked against the walker's decoding of the
//! VTCR_EL2 we build and against a hand table), register values, and every combination the
//! architecture refuses.

use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_core::{Error, Hpa, Level, PteFormat};
use tdp_walkers::stage2;

fn opts(g: Granule, ipa: u8, oa: u8) -> Stage2Options {
    Stage2Options {
        lpa2: g != Granule::K64 && (ipa > 48 || oa > 48),
        ..Stage2Options::new(g, ipa, oa)
    }
}

/// (granule, IPA) → (start level, concatenated tables), from levels = max(2, (ipa − 8) /
/// stride) and the bits left for the start level, worked out by hand.
const STARTS: &[(Granule, u8, u8, u32)] = &[
    (Granule::K4, 32, 2, 4),
    (Granule::K4, 33, 2, 8),
    (Granule::K4, 34, 2, 16),
    (Granule::K4, 35, 1, 1),
    (Granule::K4, 40, 1, 2),
    (Granule::K4, 43, 1, 16),
    (Granule::K4, 44, 0, 1),
    (Granule::K4, 48, 0, 1),
    (Granule::K4, 52, 0, 16),
    (Granule::K16, 32, 2, 1),
    (Granule::K16, 36, 2, 1),
    (Granule::K16, 39, 2, 8),
    (Granule::K16, 40, 2, 16),
    (Granule::K16, 41, 1, 1),
    (Granule::K16, 47, 1, 1),
    (Granule::K16, 48, 1, 2),
    (Granule::K16, 51, 1, 16),
    (Granule::K16, 52, 0, 1),
    (Granule::K64, 32, 2, 1),
    (Granule::K64, 42, 2, 1),
    (Granule::K64, 43, 2, 2),
    (Granule::K64, 46, 2, 16),
    (Granule::K64, 47, 1, 1),
    (Granule::K64, 52, 1, 1),
];

#[test]
fn start_level_and_concatenated_root_follow_kvm_for_every_granule() {
    for &(g, ipa, start, concat) in STARTS {
        let f = Stage2::new(Stage2Caps::all(), opts(g, ipa, 48)).unwrap();
        assert_eq!(
            (f.start_level(), f.concatenated_tables()),
            (start, concat),
            "{g:?} IPA {ipa}"
        );
        let geo = f.geometry();
        assert_eq!(geo.levels(), 4 - start, "{g:?} IPA {ipa}");
        assert_eq!(
            f.root_size() as u64,
            g.size() * u64::from(concat),
            "{g:?} IPA {ipa}"
        );
        assert_eq!(
            geo.index_bits(geo.root_level()),
            g.stride() + concat.trailing_zeros()
        );
    }
}

#[test]
fn walker_decodes_our_vtcr_to_the_same_geometry_for_every_ipa_size() {
    let caps = stage2::Stage2Caps {
        pa_range_bits: 52,
        lpa2: true,
        lpa_64k: true,
        xnx: true,
        fwb: true,
        ha_hd: true,
    };
    for g in [Granule::K4, Granule::K16, Granule::K64] {
        for ipa in 32..=52u8 {
            for oa in [40, 48, 52] {
                let f = Stage2::new(Stage2Caps::all(), opts(g, ipa, oa)).unwrap();
                let d = stage2::decode_vtcr_detailed(f.vtcr(), &caps)
                    .unwrap_or_else(|e| panic!("{g:?} IPA {ipa}: {e}"));
                assert_eq!(u32::from(d.granule_shift), g.shift());
                assert_eq!((d.ipa_bits, d.oa_bits), (ipa, oa), "{g:?} IPA {ipa}");
                assert_eq!(d.start_level, f.start_level() as i8, "{g:?} IPA {ipa}");
                assert_eq!(u32::from(d.concatenated_tables), f.concatenated_tables());
                // The walker's root is the architectural minimum; ours is at least a page.
                assert_eq!(f.root_size() as u64, d.root_bytes.max(g.size()));
                assert_eq!(d.lpa2, f.options().lpa2);
                assert_eq!(
                    d.baddr_52,
                    f.options().lpa2 || (g == Granule::K64 && oa == 52)
                );
            }
        }
    }
}

#[test]
fn block_levels_per_granule() {
    let leafy = |g, ipa| {
        let f = Stage2::new(Stage2Caps::all(), opts(g, ipa, 48)).unwrap();
        let geo = *f.geometry();
        (0..geo.levels())
            .filter(|&l| geo.is_leaf_level(Level::new(l).unwrap()))
            .map(|l| geo.level_size(Level::new(l).unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(leafy(Granule::K4, 48), [4096, 2 << 20, 1 << 30]);
    assert_eq!(
        leafy(Granule::K4, 32),
        [4096, 2 << 20],
        "two levels: root at L2"
    );
    assert_eq!(leafy(Granule::K16, 48), [16384, 32 << 20]);
    assert_eq!(leafy(Granule::K64, 52), [65536, 512 << 20]);
}

#[test]
fn vtcr_fields_hand_checked() {
    let f = Stage2::new(Stage2Caps::new(48), Stage2Options::new(Granule::K4, 40, 48)).unwrap();
    // T0SZ 24 | SL0 1 << 6 | IRGN0 01 << 8 | ORGN0 01 << 10 | SH0 11 << 12 | TG0 00 |
    // PS 101 << 16 | RES1 bit 31.
    assert_eq!(f.vtcr(), 0x8005_3558);
    let f = Stage2::new(
        Stage2Caps::all(),
        Stage2Options {
            hw_access: true,
            ..Stage2Options::new(Granule::K16, 40, 44)
        },
    )
    .unwrap();
    // T0SZ 24 | SL0 1 (16K: level 2) | 0x500 | 0x3000 | TG0 10 << 14 | PS 100 << 16 | HA | bit 31.
    assert_eq!(f.vtcr(), 0x8024_b558);
    let f = Stage2::new(
        Stage2Caps::all(),
        Stage2Options {
            lpa2: true,
            hw_access: true,
            hw_dirty: true,
            vmid16: true,
            ..Stage2Options::new(Granule::K4, 52, 52)
        },
    )
    .unwrap();
    // T0SZ 12 | SL0 2 (4K: level 0) | 0x500 | 0x3000 | PS 110 << 16 | VS | HA | HD | bit 31 | DS.
    assert_eq!(f.vtcr(), 0x1_806e_358c);
    let f = Stage2::new(Stage2Caps::all(), Stage2Options::new(Granule::K64, 52, 52)).unwrap();
    // T0SZ 12 | SL0 2 (64K: level 1) | 0x500 | 0x3000 | TG0 01 << 14 | PS 110 << 16 | bit 31.
    assert_eq!(f.vtcr(), 0x8006_758c);
}

#[test]
fn vttbr_baddr_layouts_and_vmid() {
    let f = Stage2::new(Stage2Caps::all(), Stage2Options::new(Granule::K64, 52, 52)).unwrap();
    // 52-bit layout: BADDR[47:6] in place, BADDR[51:48] = 0xa in bits 5:2.
    assert_eq!(
        f.vttbr(Hpa::new(0x000a_0000_0001_0000), 0x12).unwrap(),
        0x0012_0000_0001_0028
    );
    let f = Stage2::new(
        Stage2Caps::all(),
        Stage2Options {
            lpa2: true,
            vmid16: true,
            ..Stage2Options::new(Granule::K4, 52, 52)
        },
    )
    .unwrap();
    assert_eq!(
        f.vttbr(Hpa::new(0x000a_0000_0000_0000), 0x1234).unwrap(),
        0x1234_0000_0000_0028
    );
    // The 16-page root must be 64 KiB aligned.
    assert_eq!(
        f.vttbr(Hpa::new(0x000a_0000_0000_1000), 1),
        Err(Error::UnalignedHpa {
            hpa: Hpa::new(0x000a_0000_0000_1000),
            align: 0x1_0000
        })
    );
    let f = Stage2::new(Stage2Caps::all(), Stage2Options::new(Granule::K4, 40, 48)).unwrap();
    assert_eq!(
        f.vttbr(Hpa::new(0x8_0000_2000), 0xff).unwrap(),
        0x00ff_0008_0000_2000
    );
    assert_eq!(
        f.vttbr(Hpa::new(1 << 48), 1),
        Err(Error::HpaTooWide {
            hpa: Hpa::new(1 << 48),
            bits: 48
        })
    );
    assert!(matches!(
        f.vttbr(Hpa::new(0x2000), 0x100),
        Err(Error::InvalidConfig { .. })
    ));
    // The walker accepts what we build.
    let caps = stage2::Stage2Caps {
        pa_range_bits: 52,
        lpa2: true,
        lpa_64k: true,
        xnx: false,
        fwb: false,
        ha_hd: false,
    };
    let cfg = stage2::decode_vtcr_detailed(f.vtcr(), &caps).unwrap();
    assert_eq!(
        stage2::decode_vttbr(f.vttbr(Hpa::new(0x8_0000_2000), 7).unwrap(), &cfg),
        Ok(0x8_0000_2000)
    );
}

#[test]
fn combinations_the_architecture_refuses_are_errors_when_built() {
    let none = Stage2Caps::new(48);
    let all = Stage2Caps::all();
    let k4 = |ipa, oa| Stage2Options::new(Granule::K4, ipa, oa);
    let cases: Vec<(Stage2Caps, Stage2Options, &str)> = vec![
        (Stage2Caps::new(47), k4(40, 40), "PARange"),
        (
            Stage2Caps {
                granule_16k: false,
                ..none
            },
            Stage2Options::new(Granule::K16, 40, 40),
            "granule",
        ),
        (
            all,
            Stage2Options {
                lpa2: true,
                ..Stage2Options::new(Granule::K64, 48, 48)
            },
            "LPA2 with 64K",
        ),
        (
            Stage2Caps {
                pa_range_bits: 52,
                ..none
            },
            Stage2Options {
                lpa2: true,
                ..k4(48, 48)
            },
            "LPA2 without FEAT_LPA2",
        ),
        (all, k4(40, 46), "PS not architected"),
        (none, k4(40, 52), "output above PARange"),
        (all, k4(40, 52), "52-bit output on 4K without LPA2"),
        (
            all,
            Stage2Options::new(Granule::K16, 40, 52),
            "52-bit output on 16K without LPA2",
        ),
        (all, k4(31, 48), "IPA below 32"),
        (all, k4(53, 48), "IPA above 52"),
        (Stage2Caps::new(40), k4(42, 40), "IPA above PARange"),
        (all, k4(49, 48), "IPA 49 on 4K without LPA2"),
        (
            Stage2Caps {
                pa_range_bits: 48,
                ..all
            },
            Stage2Options::new(Granule::K64, 52, 48),
            "IPA 52 with PARange 48",
        ),
        (
            none,
            Stage2Options {
                hw_access: true,
                ..k4(40, 40)
            },
            "HA without HAFDBS",
        ),
        (
            Stage2Caps {
                hw_access: true,
                ..none
            },
            Stage2Options {
                hw_access: true,
                hw_dirty: true,
                ..k4(40, 40)
            },
            "HD without dirty support",
        ),
        (
            all,
            Stage2Options {
                hw_dirty: true,
                ..k4(40, 40)
            },
            "HD without HA",
        ),
        (
            none,
            Stage2Options {
                fwb: true,
                ..k4(40, 40)
            },
            "FWB",
        ),
        (
            none,
            Stage2Options {
                xnx: true,
                ..k4(40, 40)
            },
            "XNX",
        ),
        (
            none,
            Stage2Options {
                vmid16: true,
                ..k4(40, 40)
            },
            "VMID16",
        ),
    ];
    for (caps, o, why) in cases {
        match Stage2::new(caps, o) {
            Err(Error::InvalidConfig { what, .. }) => assert!(!what.is_empty()),
            other => panic!("{why}: {other:?}"),
        }
    }
    // The boundaries themselves are fine.
    for (caps, o) in [
        (all, Stage2Options::new(Granule::K64, 52, 52)),
        (
            all,
            Stage2Options {
                lpa2: true,
                ..Stage2Options::new(Granule::K16, 52, 52)
            },
        ),
        (Stage2Caps::new(32), k4(32, 32)),
        (
            all,
            Stage2Options {
                lpa2: true,
                ..k4(40, 48)
            },
        ),
    ] {
        Stage2::new(caps, o).unwrap();
    }
}
