//! Model properties for EPT (A/D on and off) and NPT: random map/unmap/protect/split/collapse/
//! access sequences over a small and a large address space, run by the testing kit's driver
//! (`tdp_core::testing::driver`) on the exclusive and the shared-mode path. After every step every
//! touched address translates through the independent walker (`tdp-walkers`, written from the
//! SDM/APM) exactly as the reference model says; allocation failure injected at every allocation
//! point leaves the table as it was and leaks nothing; A/D state survives; teardown frees every
//! page. What is left here: the configurations and the walker glue.

use proptest::prelude::*;
use tdp_arch_x86::{Ept, EptCaps, EptOptions, Npt, NptOptions};
use tdp_core::testing::driver::{self, Accessed, Oracle, Space};
use tdp_core::testing::HeapHost;
use tdp_core::{Attrs, Hpa, MemType, Perms, PteFormat};
use tdp_walkers::{ept, npt, Access, PhysMem};

const WINDOW_BASE: u64 = 0x7_4000_0000;
const WINDOW_SIZE: u64 = 48 << 20;
const MAXPHYADDR: u8 = 46;

/// The host's window, as the walker's physical memory.
struct Phys<'a>(&'a HeapHost);

impl PhysMem for Phys<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.0.read_phys(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.0.write_phys(pa, buf)
    }
}

fn mem_of_code(code: u8) -> MemType {
    match code {
        0 => MemType::Uncached,
        1 => MemType::WriteCombining,
        4 => MemType::WriteThrough,
        5 => MemType::WriteProtect,
        6 => MemType::WriteBack,
        7 => MemType::Uncached, // UC-
        c => panic!("walker reported reserved memory type {c}"),
    }
}

/// The model's memory type as the walker reports it.
fn walker_mem(attrs: &Attrs) -> MemType {
    match attrs.mem {
        MemType::Device => MemType::Uncached,
        m => m,
    }
}

fn access_of(perm: Perms) -> Access {
    match perm {
        Perms::READ => Access::Read,
        Perms::WRITE => Access::Write,
        Perms::EXEC_SUPER => Access::ExecSupervisor,
        _ => Access::ExecUser,
    }
}

/// 4 KiB pages over `pages` guest pages with `levels` levels: leaves at 4 KiB, 2 MiB and 1 GiB,
/// write-back, uncached and write-through memory, splits to 4 KiB and 2 MiB.
fn space(levels: u32, pages: u64) -> Space {
    let spans: Vec<u64> = (0..levels).map(|l| 1 << (9 * l)).collect();
    Space {
        mems: vec![
            (1, MemType::WriteBack),
            (1, MemType::Uncached),
            (1, MemType::WriteThrough),
        ],
        split_levels: vec![0, 1],
        ..Space::new(12, &spans, 3, MAXPHYADDR.into(), pages)
    }
}

struct EptOracle {
    ad: bool,
    levels: u8,
    space: Space,
}

impl EptOracle {
    fn new(ad: bool, levels: u8, pages: u64) -> Self {
        EptOracle {
            ad,
            levels,
            space: space(levels.into(), pages),
        }
    }
    fn caps(&self) -> ept::EptCaps {
        ept::EptCaps {
            maxphyaddr: MAXPHYADDR,
            execute_only: true,
            page_1g: true,
            mbec: false,
        }
    }
}

impl Oracle for EptOracle {
    type Format = Ept;
    type Host<'h> = &'h HeapHost;
    type Mem = MemType;
    type Raw = ();

    fn space(&self) -> &Space {
        &self.space
    }
    fn heap(&self) -> HeapHost {
        HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 4096)
    }
    fn format(&self) -> Ept {
        let caps = EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1);
        Ept::new(
            caps,
            EptOptions {
                levels: self.levels,
                accessed_dirty: self.ad,
                maxphyaddr: MAXPHYADDR,
                mbec: false,
            },
        )
        .unwrap()
    }
    fn host<'h>(&self, heap: &'h HeapHost) -> &'h HeapHost {
        heap
    }
    fn walk_root(&self, fmt: &Ept, root: Hpa) -> u64 {
        fmt.eptp(root).unwrap()
    }
    fn kinds(&self) -> &'static [Perms] {
        &[
            Perms::READ,
            Perms::WRITE,
            Perms::EXEC_SUPER,
            Perms::EXEC_USER,
        ]
    }
    fn peek(&self, heap: &HeapHost, eptp: u64, gpa: u64, kind: Perms) -> Option<(u64, MemType)> {
        let access = access_of(kind);
        match ept::peek(&Phys(heap), eptp, &self.caps(), gpa, access) {
            Ok(t) => Some((t.hpa, mem_of_code(t.memtype))),
            Err(ept::EptFault::Violation(_)) => None,
            Err(e) => panic!("EPT walk of {gpa:#x} ({access:?}): {e:?}"),
        }
    }
    fn raw(&self, _: &HeapHost, _: u64, _: u64) {}
    fn expected_mem(&self, attrs: &Attrs) -> MemType {
        walker_mem(attrs)
    }
    fn access(&self, heap: &HeapHost, eptp: u64, gpa: u64, write: bool) -> Accessed {
        let access = if write { Access::Write } else { Access::Read };
        match ept::translate(&mut Phys(heap), eptp, &self.caps(), gpa, access) {
            Ok(_) => Accessed::Translated,
            Err(_) => Accessed::Faulted,
        }
    }
    fn has_ad(&self) -> bool {
        self.ad
    }
    fn legal(&self, attrs: &Attrs) -> bool {
        self.format().check_attrs(attrs).is_ok()
    }
}

/// Linux's host PAT: WB, WC, UC-, UC, WB, WP, UC-, WT. Write-through sits at index 7, so the PAT
/// bit (bit 7 in 4 KiB leaves, bit 12 in huge ones) is exercised by split and collapse.
const LINUX_PAT: u64 = 0x0407_0506_0007_0106;

struct NptOracle {
    space: Space,
}

impl NptOracle {
    fn new(pages: u64) -> Self {
        NptOracle {
            space: space(4, pages),
        }
    }
    fn caps(&self) -> npt::NptCaps {
        npt::NptCaps {
            levels: 4,
            maxphyaddr: MAXPHYADDR,
            nx_enabled: true,
            page_1g: true,
        }
    }
}

impl Oracle for NptOracle {
    type Format = Npt;
    type Host<'h> = &'h HeapHost;
    type Mem = MemType;
    type Raw = ();

    fn space(&self) -> &Space {
        &self.space
    }
    fn heap(&self) -> HeapHost {
        HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 4096)
    }
    fn format(&self) -> Npt {
        Npt::new(NptOptions {
            maxphyaddr: MAXPHYADDR,
            host_pat: LINUX_PAT,
            ..NptOptions::default()
        })
        .unwrap()
    }
    fn host<'h>(&self, heap: &'h HeapHost) -> &'h HeapHost {
        heap
    }
    fn walk_root(&self, _: &Npt, root: Hpa) -> u64 {
        root.raw()
    }
    fn kinds(&self) -> &'static [Perms] {
        &[Perms::READ, Perms::WRITE, Perms::EXEC]
    }
    fn peek(&self, heap: &HeapHost, root: u64, gpa: u64, kind: Perms) -> Option<(u64, MemType)> {
        let access = access_of(kind);
        match npt::peek(&Phys(heap), root, &self.caps(), gpa, access) {
            Ok(t) => {
                assert!(t.user, "NPT leaf without U");
                Some((t.hpa, mem_of_code((LINUX_PAT >> (8 * t.pat_index)) as u8)))
            }
            Err(npt::NptFault::Npf(f)) if f.kind != npt::NpfKind::Reserved => None,
            Err(e) => panic!("NPT walk of {gpa:#x} ({access:?}): {e:?}"),
        }
    }
    fn raw(&self, _: &HeapHost, _: u64, _: u64) {}
    fn expected_mem(&self, attrs: &Attrs) -> MemType {
        walker_mem(attrs)
    }
    fn access(&self, heap: &HeapHost, root: u64, gpa: u64, write: bool) -> Accessed {
        let access = if write { Access::Write } else { Access::Read };
        match npt::translate(&mut Phys(heap), root, &self.caps(), gpa, access) {
            Ok(_) => Accessed::Translated,
            Err(_) => Accessed::Faulted,
        }
    }
    fn has_ad(&self) -> bool {
        true
    }
    fn legal(&self, attrs: &Attrs) -> bool {
        self.format().check_attrs(attrs).is_ok()
    }
}

const SMALL: u64 = 1 << 14; // 64 MiB
const LARGE: u64 = 1 << 36; // the whole 48-bit space
const FIVE_LEVEL: u64 = 1 << 45; // the whole 57-bit space

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ept_ad_small_space_matches_model(ops in driver::ops(&space(4, SMALL))) {
        driver::run(&EptOracle::new(true, 4, SMALL), &ops);
    }

    #[test]
    fn ept_ad_large_space_matches_model(ops in driver::ops(&space(4, LARGE))) {
        driver::run(&EptOracle::new(true, 4, LARGE), &ops);
    }

    #[test]
    fn ept_no_ad_small_space_matches_model(ops in driver::ops(&space(4, SMALL))) {
        driver::run(&EptOracle::new(false, 4, SMALL), &ops);
    }

    #[test]
    fn ept_no_ad_five_level_large_space_matches_model(ops in driver::ops(&space(5, FIVE_LEVEL))) {
        driver::run(&EptOracle::new(false, 5, FIVE_LEVEL), &ops);
    }

    #[test]
    fn npt_small_space_matches_model(ops in driver::ops(&space(4, SMALL))) {
        driver::run(&NptOracle::new(SMALL), &ops);
    }

    #[test]
    fn npt_large_space_matches_model(ops in driver::ops(&space(4, LARGE))) {
        driver::run(&NptOracle::new(LARGE), &ops);
    }
}
