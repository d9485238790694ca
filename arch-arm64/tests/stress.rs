//! Shared-mode stress for Arm stage 2 (4 KiB granule, IPA 40: two concatenated level-1 root
//! pages; HA + HD, so the walker sets AF and, through DBM, the dirty state; FEAT_XNX): several
//! updater threads on one tree against a simulated vCPU whose walks are the independent stage-2
//! walker (`tdp_walkers::stage2`, written from the Arm ARM) over a snapshot of memory that sets
//! AF / S2AP\[1\] by compare-exchange. Break-before-make (block <-> table on split and collapse)
//! runs here with other updaters and the walker in the middle of it. The driver and its checks
//! are `tdp_core::testing::stress` (see its module documentation); this file supplies the format
//! and the walker.

mod common;

use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_core::testing::stress::{
    shared_matches_exclusive, stress, Hardware, HwWalk, Snapshot, StressConfig,
};
use tdp_core::{Hpa, Level, Perms};
use tdp_walkers::stage2::{self, Stage2Fault};
use tdp_walkers::{Access, PhysMem};

const WINDOW_BASE: u64 = 0x8_0000_0000;

/// A hardware walk's view of memory: reads from the snapshot, AF/dirty writes by
/// compare-exchange. Descriptors are little-endian: the snapshot hands out the bytes as stored,
/// and the walker decodes them as little-endian itself.
struct Mem<'a, 'h>(&'a Snapshot<'h>);

impl PhysMem for Mem<'_, '_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.0.read(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.0.write(pa, buf)
    }
}

/// 4 KiB granule, IPA 40, OA 48, HA + HD, FEAT_XNX, no FWB.
struct K4HaHd;

fn access_of(p: Perms) -> Access {
    if p == Perms::READ {
        Access::Read
    } else if p == Perms::WRITE {
        Access::Write
    } else if p == Perms::EXEC_SUPER {
        Access::ExecSupervisor
    } else {
        Access::ExecUser
    }
}

impl Hardware for K4HaHd {
    type Format = Stage2;

    fn format(&self) -> Stage2 {
        let opts = Stage2Options {
            xnx: true,
            hw_access: true,
            hw_dirty: true,
            ..Stage2Options::new(Granule::K4, 40, 48)
        };
        let caps = Stage2Caps {
            pa_range_bits: 48,
            ..Stage2Caps::all()
        };
        let f = Stage2::new(caps, opts).unwrap();
        assert_eq!((f.start_level(), f.concatenated_tables()), (1, 2));
        f
    }

    fn walk(
        &self,
        fmt: &Stage2,
        mem: &Snapshot<'_>,
        root: Hpa,
        gpa: u64,
        access: Perms,
        update: bool,
    ) -> HwWalk {
        let caps = common::walker_caps(fmt);
        let vttbr = fmt.vttbr(root, 1).unwrap();
        let a = access_of(access);
        let r = if update {
            stage2::translate(&mut Mem(mem), fmt.vtcr(), vttbr, &caps, gpa, a)
        } else {
            stage2::peek(&Mem(mem), fmt.vtcr(), vttbr, &caps, gpa, a)
        };
        match r {
            Ok(t) => HwWalk::Mapped {
                hpa: t.pa,
                size: t.block_size,
            },
            // With HA an Access flag fault cannot happen; a frozen or empty descriptor is a
            // Translation fault.
            Err(Stage2Fault::Translation { .. } | Stage2Fault::Permission { .. }) => HwWalk::Fault,
            Err(e) => HwWalk::Broken(format!("{e:?}")),
        }
    }

    /// Arm ARM table descriptor: the next-level table address in bits 47:12 (4 KiB granule,
    /// no LPA2).
    fn table_addr(&self, _fmt: &Stage2, raw: u64, _level: Level) -> u64 {
        common::table_desc_addr(raw, 12, false)
    }
}

#[test]
fn k4_ha_hd_three_shared_updaters_and_a_hardware_walker_keep_tlb_counts_and_memory_exact() {
    let cfg = StressConfig::new("arm64 k4 ha/hd stress", 0x5eed_0a64_0000_0001, WINDOW_BASE);
    let r = stress(&K4HaHd, &cfg);
    println!("{}: seed {:#x}: {r}", cfg.name, cfg.seed);
    assert!(r.ok > 0 && r.accesses > 0 && r.tlb.fills > 0);
    assert!(r.huge_hits > 0, "no access went through a 2 MiB block: {r}");
}

#[test]
fn k4_ha_hd_shared_mode_without_contention_matches_exclusive_mode() {
    let mut cfg = StressConfig::new(
        "arm64 k4 ha/hd shared = exclusive",
        0x5eed_0a64_0000_0002,
        WINDOW_BASE,
    );
    cfg.ops_per_round = 500;
    cfg.rounds = 20;
    let r = shared_matches_exclusive(&K4HaHd, &cfg);
    println!("{}: seed {:#x}: {r}", cfg.name, cfg.seed);
    assert!(r.huge_made > 0, "no 2 MiB block was ever made: {r}");
}
