//! Model properties for LoongArch: random map/unmap/protect/split/collapse/access sequences in
//! two geometries (16 KiB pages with 3 levels and the software refill; 4 KiB pages with 4
//! levels and the hardware page-table walker), run by the testing kit's driver
//! (`tdp_core::testing::driver`) on the exclusive and the shared-mode path. After every step
//! every touched address translates through the independent walker (`tdp_walkers::loongarch`,
//! with KVM's fast path applied to page-invalid and page-modification exceptions, as a guest
//! would see it) exactly as the reference model says, and the engine's accessed/dirty state is
//! the hardware's V and D as the refill loads them; allocation failure injected at every
//! allocation point leaves the table as it was and leaks nothing; accessed/dirty state survives
//! every operation that must keep it; teardown frees every page (the invalid tables stay with
//! the caller). What is left here: the configurations, the invalid tables and the walker glue.

use proptest::prelude::*;
use tdp_arch_loongarch::{LoongArch, LoongArchConfig};
use tdp_core::testing::driver::{self, Accessed, Oracle, Space};
use tdp_core::testing::HeapHost;
use tdp_core::{Attrs, Hpa, Mapping, MemType, Perms, PteFormat};
use tdp_walkers::loongarch::{self as walker, LaFault, LaWalkConfig};
use tdp_walkers::{Access, FlatImage, PhysMem};

const WINDOW_BASE: u64 = 0x4_0000_0000;
const WINDOW_SIZE: u64 = 48 << 20;
/// The invalid tables live right after the window, like the host kernel's `.bss`.
const STATICS: u64 = WINDOW_BASE + WINDOW_SIZE;
/// KVM stores the invalid tables' DMW-window addresses (`invalid_ptes[]`).
const DMW: u64 = 0x9000_0000_0000_0000;

/// The host's window plus the caller's invalid tables, as the walker's physical memory.
struct Mem<'a> {
    host: &'a HeapHost,
    statics: &'a FlatImage,
}

impl PhysMem for Mem<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.host.read_phys(pa, buf) || self.statics.read(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.host.write_phys(pa, buf)
    }
}

/// The invalid tables for `cfg` (level `l` empty value = table of empty level `l - 1` entries)
/// placed at `STATICS`, and the configuration pointing at them.
fn with_invalid_tables(mut cfg: LoongArchConfig) -> (LoongArchConfig, FlatImage) {
    let levels = usize::from(cfg.levels);
    let mut bytes = Vec::new();
    let mut empty_below = 0u64;
    for l in 1..levels {
        let size = 8usize << cfg.index_bits[l - 1];
        let pa = STATICS + bytes.len() as u64;
        for _ in 0..size / 8 {
            bytes.extend_from_slice(&empty_below.to_le_bytes());
        }
        cfg.invalid_tables[l - 1] = DMW | pa;
        empty_below = DMW | pa;
    }
    (cfg, FlatImage::new(STATICS, bytes))
}

fn mem_of_mat(mat: u8) -> MemType {
    match mat {
        0 => MemType::Uncached,
        1 => MemType::WriteBack,
        2 => MemType::WriteCombining,
        m => panic!("walker reported reserved MAT {m}"),
    }
}

const PERMS: [Perms; 8] = [
    Perms::READ,
    Perms::RW,
    Perms::RX,
    Perms::RWX,
    Perms::EXEC,
    Perms::empty(),
    Perms::WRITE,
    Perms::READ.union(Perms::EXEC_SUPER),
];

/// A geometry over `pages` guest pages, with its invalid tables and the walker's configuration.
struct Geo {
    cfg: LoongArchConfig,
    fmt: LoongArch,
    statics: FlatImage,
    wcfg: LaWalkConfig,
    space: Space,
}

impl Geo {
    fn new(cfg: LoongArchConfig, pages: u64) -> Geo {
        let (cfg, statics) = with_invalid_tables(cfg);
        let fmt = LoongArch::new(cfg).unwrap();
        let wcfg = LaWalkConfig {
            pwcl: fmt.pwcl(),
            pwch: fmt.pwch(),
            palen: cfg.palen,
            plv: 0,
        };
        let mut spans = vec![1u64];
        for l in 0..usize::from(cfg.levels) - 1 {
            spans.push(spans[l] << cfg.index_bits[l]);
        }
        let space = Space {
            perms: PERMS.map(|p| (1, p)).to_vec(),
            mems: [
                MemType::WriteBack,
                MemType::Uncached,
                MemType::WriteCombining,
                MemType::WriteThrough,
            ]
            .map(|m| (1, m))
            .to_vec(),
            // The two leaf levels, or one the geometry does not have.
            caps: vec![(2, Some(0)), (2, Some(1)), (1, Some(4))],
            split_levels: vec![0, 1, 2],
            weights: driver::Weights {
                access: 2,
                ..driver::Weights::default()
            },
            ..Space::new(cfg.page_shift.into(), &spans, 2, cfg.palen.into(), pages)
        };
        Geo {
            cfg,
            fmt,
            statics,
            wcfg,
            space,
        }
    }

    fn mem<'a>(&'a self, heap: &'a HeapHost) -> Mem<'a> {
        Mem {
            host: heap,
            statics: &self.statics,
        }
    }
}

fn sixteen_k_three_levels(pages: u64) -> Geo {
    Geo::new(LoongArchConfig::linux(14, 3, [0; 3]), pages)
}

fn four_k_four_levels_hw_walker(pages: u64) -> Geo {
    let mut cfg = LoongArchConfig::linux(12, 4, [0; 3]);
    cfg.hardware_walker = true;
    Geo::new(cfg, pages)
}

impl Oracle for Geo {
    type Format = LoongArch;
    type Host<'h> = &'h HeapHost;
    type Mem = MemType;
    type Raw = ();

    fn space(&self) -> &Space {
        &self.space
    }
    fn heap(&self) -> HeapHost {
        HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 1 << self.cfg.page_shift)
    }
    fn format(&self) -> LoongArch {
        self.fmt.clone()
    }
    fn host<'h>(&self, heap: &'h HeapHost) -> &'h HeapHost {
        heap
    }
    fn walk_root(&self, fmt: &LoongArch, root: Hpa) -> u64 {
        fmt.pgdl(root).unwrap()
    }
    fn kinds(&self) -> &'static [Perms] {
        &[Perms::READ, Perms::WRITE, Perms::EXEC]
    }
    /// What the guest sees once KVM's fast path has run.
    fn peek(&self, heap: &HeapHost, root: u64, gpa: u64, kind: Perms) -> Option<(u64, MemType)> {
        let access = match kind {
            Perms::READ => Access::Read,
            Perms::WRITE => Access::Write,
            _ => Access::ExecUser,
        };
        match walker::peek_after_fast_path(&self.mem(heap), root, &self.wcfg, gpa, access) {
            Ok(t) => Some((t.hpa, mem_of_mat(t.mat))),
            Err(LaFault::Exception(_)) => None,
            Err(e) => panic!("walk of {gpa:#x} ({access:?}): {e:?}"),
        }
    }
    fn raw(&self, _: &HeapHost, _: u64, _: u64) {}
    fn expected_mem(&self, attrs: &Attrs) -> MemType {
        attrs.mem
    }
    /// The hardware (walker) and, on a page-invalid or page-modification exception, KVM's fast
    /// path, then the access again.
    fn access(&self, heap: &HeapHost, root: u64, gpa: u64, write: bool) -> Accessed {
        let access = if write { Access::Write } else { Access::Read };
        let mem = &mut self.mem(heap);
        let ok = match walker::translate(mem, root, &self.wcfg, gpa, access) {
            Ok(_) => true,
            Err(LaFault::Exception(e))
                if e.code.is_page_invalid() || e.code == walker::LaExcCode::Pme =>
            {
                walker::kvm_fast_path(mem, root, &self.wcfg, gpa, write).unwrap()
                    && walker::translate(mem, root, &self.wcfg, gpa, access).is_ok()
            }
            Err(LaFault::Exception(_)) => false,
            Err(e) => panic!("access to {gpa:#x}: {e:?}"),
        };
        if ok {
            Accessed::Translated
        } else {
            Accessed::Faulted
        }
    }
    fn has_ad(&self) -> bool {
        true
    }
    fn legal(&self, attrs: &Attrs) -> bool {
        self.fmt.check_attrs(attrs).is_ok()
    }
    /// D is the hardware write enable: write-protecting cleans.
    fn write_protect_cleans(&self) -> bool {
        true
    }
    /// The engine's accessed/dirty state is the hardware's V and D, as the refill loads them.
    fn check_point(&self, heap: &HeapHost, root: u64, gpa: u64, m: Option<&Mapping>) {
        if let Some(m) = m {
            let e = walker::refill(&self.mem(heap), root, &self.wcfg, gpa).unwrap();
            let lo = if (gpa >> e.ps) & 1 != 0 { e.lo1 } else { e.lo0 };
            assert_eq!(m.ad.accessed, Some(lo & 1 != 0), "V at {gpa:#x}");
            assert_eq!(m.ad.dirty, Some(lo & 2 != 0), "D at {gpa:#x}");
        }
    }
}

const SMALL: u64 = 1 << 14;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sixteen_k_three_levels_small_space_matches_model(ops in driver::ops(&sixteen_k_three_levels(SMALL).space)) {
        driver::run(&sixteen_k_three_levels(SMALL), &ops);
    }

    #[test]
    fn sixteen_k_three_levels_whole_space_matches_model(ops in driver::ops(&sixteen_k_three_levels(1 << 33).space)) {
        driver::run(&sixteen_k_three_levels(1 << 33), &ops);
    }

    #[test]
    fn four_k_four_levels_hw_walker_small_space_matches_model(ops in driver::ops(&four_k_four_levels_hw_walker(SMALL).space)) {
        driver::run(&four_k_four_levels_hw_walker(SMALL), &ops);
    }

    #[test]
    fn four_k_four_levels_hw_walker_whole_space_matches_model(ops in driver::ops(&four_k_four_levels_hw_walker(1 << 35).space)) {
        driver::run(&four_k_four_levels_hw_walker(1 << 35), &ops);
    }
}
