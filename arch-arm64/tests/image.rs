//! Table-image export: a sixteen-page concatenated root placed at a caller-chosen base aligned
//! to its size, written out as a flat image and walked back from the file with the independent
//! walker, using the VTCR_EL2 and VTTBR_EL2 built by this crate.

use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_core::testing::HeapHost;
use tdp_core::{Attrs, Gpa, GpaRange, Hpa, MemType, Perms, Table};
use tdp_walkers::stage2::{self, Stage2Fault};
use tdp_walkers::{Access, FlatImage};

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

/// Maps three ranges (one in the last concatenated root table), exports the window, reads the
/// file back and walks it.
fn export_and_walk(f: Stage2, base: u64, name: &str) {
    let host = HeapHost::new(base, 4 << 20, f.granule().size() as usize);
    let mut t = Table::new(f, &host).unwrap();
    assert_eq!(
        t.root(),
        Hpa::new(base),
        "the root is the first allocation, at the base"
    );
    assert_eq!(f.concatenated_tables(), 16);
    let ipa_top = 1u64 << f.options().ipa_bits;
    let g = f.granule().size();
    let maps = [
        (0, 4 * g, 0x1_0000_0000, Perms::RW),
        (ipa_top / 2 + 8 * g, g, 0x2_0000_0000, Perms::RX),
        (ipa_top - 2 * g, 2 * g, 0x3_0000_0000, Perms::READ),
    ];
    for (gpa, size, hpa, perms) in maps {
        t.map(range(gpa, size), Hpa::new(hpa), Attrs::normal(perms))
            .unwrap();
    }
    t.map(
        range(g * 16, g),
        Hpa::new(0x4_0000_0000),
        Attrs {
            perms: Perms::RW,
            mem: MemType::Device,
            ignore_guest_memtype: false,
        },
    )
    .unwrap();

    let dir = std::env::temp_dir().join(format!("tdp-arm64-image-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stem = dir.join(name);
    host.image(t.root()).write(&stem).unwrap();
    let txt = std::fs::read_to_string(stem.with_extension("txt")).unwrap();
    assert_eq!(
        txt,
        format!("base={base:#x} root={base:#x} size=0x400000\n")
    );
    let img = FlatImage::new(base, std::fs::read(stem.with_extension("bin")).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();

    let vtcr = f.vtcr();
    let vttbr = f.vttbr(t.root(), 42).unwrap();
    let caps = stage2::Stage2Caps {
        pa_range_bits: f.caps().pa_range_bits,
        lpa2: f.options().lpa2,
        lpa_64k: false,
        xnx: false,
        fwb: false,
        ha_hd: false,
    };
    let cfg = stage2::decode_vtcr(vtcr, &caps).unwrap();
    assert_eq!(
        (cfg.concatenated_tables, stage2::decode_vttbr(vttbr, &cfg)),
        (16, Ok(base))
    );
    let go = |gpa, a| stage2::peek(&img, vtcr, vttbr, &caps, gpa, a).map(|t| t.pa);
    for (gpa, size, hpa, perms) in maps {
        for off in [0, size - 8] {
            assert_eq!(go(gpa + off, Access::Read), Ok(hpa + off), "{gpa:#x}");
            assert_eq!(
                go(gpa + off, Access::Write).is_ok(),
                perms.contains(Perms::WRITE)
            );
            assert_eq!(
                go(gpa + off, Access::ExecUser).is_ok(),
                perms.contains(Perms::EXEC)
            );
        }
    }
    assert_eq!(go(g * 16 + 8, Access::Write), Ok(0x4_0000_0008));
    assert!(
        go(g * 16, Access::ExecSupervisor).is_err(),
        "device is never executable"
    );
    assert!(matches!(
        go(ipa_top / 2, Access::Read),
        Err(Stage2Fault::Translation { .. })
    ));
}

#[test]
fn k16_ipa40_root_of_sixteen_pages_at_a_256k_aligned_base_walks_from_the_exported_image() {
    let f = Stage2::new(
        Stage2Caps::new(48),
        Stage2Options::new(Granule::K16, 40, 48),
    )
    .unwrap();
    assert_eq!(f.root_size(), 256 << 10);
    // 256 KiB aligned, not 512 KiB aligned.
    export_and_walk(f, 0x9_0004_0000, "k16-ipa40");
}

#[test]
fn k4_ipa52_lpa2_root_of_sixteen_pages_at_a_64k_aligned_base_above_2_48() {
    let caps = Stage2Caps {
        pa_range_bits: 52,
        lpa2: true,
        ..Stage2Caps::new(52)
    };
    let f = Stage2::new(
        caps,
        Stage2Options {
            lpa2: true,
            ..Stage2Options::new(Granule::K4, 52, 52)
        },
    )
    .unwrap();
    assert_eq!(f.root_size(), 64 << 10);
    // 64 KiB aligned, not 128 KiB aligned; BADDR[51:48] = 0xb travels in VTTBR bits 5:2.
    export_and_walk(f, 0x000b_0000_0001_0000, "k4-ipa52-lpa2");
}

#[test]
fn k4_ipa34_root_of_sixteen_level_2_pages() {
    let f = Stage2::new(Stage2Caps::new(40), Stage2Options::new(Granule::K4, 34, 40)).unwrap();
    assert_eq!((f.start_level(), f.root_size()), (2, 64 << 10));
    export_and_walk(f, 0x80_0003_0000, "k4-ipa34");
}
