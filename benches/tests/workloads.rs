//! The benchmarked workloads and the peers' adapters, run once on a small range and checked, so
//! that `cargo test` catches a workload that no longer does what the benchmarks claim.

#[path = "../benches/peers/mod.rs"]
#[allow(dead_code)]
mod peers;

use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_arch_loongarch::{LoongArch, LoongArchConfig};
use tdp_arch_mips::{MipsConfig, MipsLe};
use tdp_arch_ppc::{Radix, RadixGranule, RadixOptions};
use tdp_arch_riscv::{Gstage, GstageCaps, GstageMode, GstageOptions};
use tdp_arch_x86::{Npt, NptOptions};
use tdp_benches::formats::{self, ept};
use tdp_benches::pages::{self, Api};
use tdp_benches::workload::{self, Workload, GIB};
use tdp_core::{Level, PteFormat};

/// 16 MiB: pages, and the blocks up to 16 MiB (2 MiB on 4 KiB granules, none on arm64 16K/64K).
const SIZE: u64 = 16 << 20;

fn engine<F: PteFormat + Clone>(fmt: F) {
    let geo = *fmt.geometry();
    let all = Workload::all(&geo, SIZE);
    assert_eq!(all[0].level, Level::LEAF, "page-sized leaves come first");
    for w in all {
        let host = workload::host(&fmt);
        let checked = workload::check_all(&fmt, &host, &w).unwrap();
        let min = workload::min_table_bytes(&geo, w.start, w.size, w.level);
        assert_eq!(checked.mapped.table_bytes, min, "{w:?}");
        assert_eq!(checked.mapped.metadata_bytes_per_table, 16);
        assert_eq!(host.outstanding_tables(), 0);
    }
}

#[test]
fn engine_workloads_take_effect_on_ept_and_npt() {
    engine(ept(true));
    engine(ept(false));
    engine(Npt::new(NptOptions::default()).unwrap());
}

#[test]
fn engine_workloads_take_effect_on_arm64_stage2() {
    let caps = Stage2Caps {
        pa_range_bits: 48,
        ..Stage2Caps::all()
    };
    for granule in [Granule::K4, Granule::K16, Granule::K64] {
        for hw in [false, true] {
            let opts = Stage2Options {
                fwb: hw,
                hw_access: hw,
                hw_dirty: hw,
                ..Stage2Options::new(granule, 40, 48)
            };
            engine(Stage2::new(caps, opts).unwrap());
        }
    }
}

#[test]
fn engine_workloads_take_effect_on_riscv_g_stage() {
    let caps = GstageCaps {
        max_mode: GstageMode::Sv48x4,
        vmid_bits: 14,
        svadu: true,
        svpbmt: true,
        svvptc: false,
    };
    for mode in [GstageMode::Sv39x4, GstageMode::Sv48x4] {
        let opts = GstageOptions {
            mode,
            pa_bits: 56,
            leaf_512g: false,
        };
        engine(Gstage::new(caps, opts).unwrap());
    }
}

#[test]
fn engine_workloads_take_effect_on_loongarch_and_mips() {
    for (shift, levels, invalid) in [
        (12, 3, [0x9000_0000_0100_0000, 0x9000_0000_0100_1000, 0]),
        (14, 3, [0x9000_0000_0100_0000, 0x9000_0000_0100_4000, 0]),
    ] {
        engine(LoongArch::new(LoongArchConfig::linux(shift, levels, invalid)).unwrap());
    }
    engine(
        MipsLe::new(MipsConfig::linux64_4k([
            0xffff_ffff_8100_0000,
            0xffff_ffff_8100_1000,
        ]))
        .unwrap(),
    );
    engine(
        MipsLe::new(MipsConfig::linux64_16k([
            0xffff_ffff_8100_0000,
            0xffff_ffff_8100_4000,
        ]))
        .unwrap(),
    );
}

#[test]
fn engine_workloads_take_effect_on_power_radix() {
    for granule in [RadixGranule::Page4K, RadixGranule::Page64K] {
        let opts = RadixOptions {
            granule,
            pa_bits: 52,
            lpid_bits: 12,
        };
        engine(Radix::new(opts).unwrap());
    }
}

fn map_pages_through_every_api<F: PteFormat + Clone + Sync>(fmt: F) {
    let w = Workload::all(fmt.geometry(), SIZE)[0];
    let host = workload::host(&fmt);
    for api in [
        Api::Table,
        Api::Exclusive,
        Api::Shared(1),
        Api::Shared(2),
        Api::Shared(3),
    ] {
        // Twice: the second run starts from the host's warm pool.
        for _ in 0..2 {
            pages::run(&fmt, &host, &w, api).unwrap_or_else(|e| panic!("{api:?}: {e}"));
        }
    }
}

#[test]
fn per_page_maps_take_effect_in_exclusive_and_shared_mode() {
    map_pages_through_every_api(ept(true));
    map_pages_through_every_api(formats::stage2(Granule::K4));
}

#[test]
fn shared_benches_reserve_every_table_plus_one_spare() {
    // EPT, 1 GiB of pages at 1 GiB: 512 leaf tables, one 2M table, one 1G table, each plus one.
    let fmt = ept(true);
    let w = Workload::all(fmt.geometry(), GIB)[0];
    assert_eq!(
        pages::reserve_need(fmt.geometry(), &w, &(0..w.leaves)),
        [513, 2, 2, 0, 0]
    );
    // Half the range: 256 leaf tables.
    assert_eq!(
        pages::reserve_need(fmt.geometry(), &w, &pages::part(&w, 1, 2)),
        [257, 2, 2, 0, 0]
    );
    // arm64 4K, 40-bit IPA: 3 levels, the root (level 2) holds the 1G entries.
    let fmt = formats::stage2(Granule::K4);
    let w = Workload::all(fmt.geometry(), GIB)[0];
    assert_eq!(
        pages::reserve_need(fmt.geometry(), &w, &(0..w.leaves)),
        [513, 2, 0, 0, 0]
    );
}

#[test]
fn workloads_cover_every_leaf_size_up_to_the_range() {
    let geo = peers::geometry();
    let all = Workload::all(&geo, 1 << 30);
    let names: Vec<String> = all.iter().map(Workload::name).collect();
    assert_eq!(names, ["4K", "2M", "1G"]);
    assert_eq!(all[0].leaves, 262_144);
    assert!(all[0].splits() && !all[1].splits());
    // 2 MiB leaves start one leaf past a 1 GiB boundary, so no 1 GiB leaf fits.
    assert_eq!(all[1].start % (1 << 30), 2 << 20);
    assert_eq!(all[2].top, Level::new(2).unwrap());
    // 515 tables for 1 GiB of 4 KiB leaves: root, one 1G table, one 2M table, 512 leaf tables.
    let min = workload::min_table_bytes(&geo, all[0].start, all[0].size, all[0].level);
    assert_eq!(min, 515 * 4096);
}

fn peer<P: peers::Peer>() {
    for w in Workload::all(&peers::geometry(), SIZE) {
        let checked = peers::check_all::<P>(&w).unwrap();
        assert!(
            checked.table_bytes
                >= workload::min_table_bytes(&peers::geometry(), w.start, w.size, w.level)
        );
    }
}

#[test]
fn peers_work_takes_effect() {
    peer::<peers::ptm::Ptm>();
    peer::<peers::a64p::A64p>();
    peer::<peers::ptg::Ptg>();
    peer::<peers::x64::X64>();
}

#[test]
fn floor_loops_do_their_work() {
    use tdp_benches::floor;
    let mut w = floor::Words::new(1024, 4096);
    floor::store(w.plain(), 0x7);
    assert_eq!(w.plain()[3], 0x7 | 3 << 12);
    assert_eq!(
        floor::load(w.plain()),
        (0..1024u64).fold(0, |a, i| a ^ (0x7 | i << 12))
    );
    floor::and_not(w.plain(), 0x2);
    assert_eq!(w.plain()[3], 0x5 | 3 << 12);
    floor::atomic_and_not(w.atomic(), 0x2);
    floor::zero(w.table_bytes());
    assert!(w.table_bytes().iter().all(|&x| x == 0));
}
