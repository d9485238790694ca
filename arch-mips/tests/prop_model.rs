//! Model properties for MIPS, one per preset (64-bit host with RIXI: 4 KiB pages with 3
//! levels, 16 KiB with 3, 16 KiB with 2, 64 KiB with 2): random map/unmap/protect/split/
//! collapse/access sequences run by the testing kit's driver (`tdp_core::testing::driver`) on
//! the exclusive and the shared-mode path. After every step every touched address translates
//! through the independent walker (`tdp_walkers::mips`, with its own layout description built
//! from the documented numbers, and KVM's fast path applied to TLB Invalid / TLB Modified)
//! exactly as the reference model says, and the engine's query returns the PTE the walker reads
//! with its ACCESSED and MODIFIED bits; allocation failure injected at every allocation point
//! leaves the table as it was and leaks nothing; accessed/dirty state survives; teardown frees
//! every page (the invalid tables stay with the caller). What is left here: the presets, the
//! invalid tables and the walker glue.

use proptest::prelude::*;
use tdp_arch_mips::{MipsConfig, MipsLe};
use tdp_core::testing::driver::{self, Accessed, Oracle, Space};
use tdp_core::testing::HeapHost;
use tdp_core::{Attrs, Hpa, Mapping, MemType, Perms, PteFormat};
use tdp_walkers::mips::{self as walker, MipsFault, MipsPteLayout, MipsTlbExc, MipsWalkConfig};
use tdp_walkers::{Access, FlatImage, PhysMem};

/// Below 512 MiB so that the invalid tables have ckseg0 addresses, like the kernel image's.
const WINDOW_BASE: u64 = 0x0400_0000;
const WINDOW_SIZE: u64 = 48 << 20;
const STATICS: u64 = WINDOW_BASE + WINDOW_SIZE;
const CKSEG0: u64 = 0xffff_ffff_8000_0000;
const PABITS: u32 = 48;

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

/// A preset with its invalid tables placed at `STATICS` (ckseg0 addresses), and the walker's
/// own description of the same host, built from the documented numbers.
struct Preset {
    fmt: MipsLe,
    statics: FlatImage,
    walk: MipsWalkConfig,
    space: Space,
}

fn preset(page_shift: u8, index_bits: &[u8]) -> Preset {
    let levels = index_bits.len();
    let mut bytes = Vec::new();
    let mut invalid = [0u64; 2];
    let mut below = 0u64;
    for l in 1..levels {
        let pa = STATICS + bytes.len() as u64;
        for _ in 0..(1usize << index_bits[l - 1]) {
            bytes.extend_from_slice(&below.to_le_bytes());
        }
        below = CKSEG0 + pa;
        invalid[l - 1] = below;
    }
    let mut cfg = match (page_shift, levels) {
        (12, 3) => MipsConfig::linux64_4k(invalid),
        (14, 3) => MipsConfig::linux64_16k(invalid),
        (14, 2) => MipsConfig::linux64_16k_2level(invalid[0]),
        (16, 2) => MipsConfig::linux64_64k(invalid[0]),
        _ => unreachable!(),
    };
    assert_eq!(&cfg.index_bits[..levels], index_bits);
    // Exercise CCA 7 on one preset.
    cfg.uncached_accelerated = page_shift == 14 && levels == 2;
    let fmt = MipsLe::new(cfg).unwrap();
    let mut spans = vec![1u64];
    for l in 0..levels - 1 {
        spans.push(spans[l] << index_bits[l]);
    }
    let pages = 1u64 << (fmt.geometry().ia_bits() - page_shift);
    let space = Space {
        // Mostly attributes MIPS accepts (READ required, no write-through), some it refuses.
        perms: PERMS
            .iter()
            .enumerate()
            .map(|(i, &p)| (if i < 4 { 6 } else { 1 }, p))
            .collect(),
        mems: vec![
            (6, MemType::WriteBack),
            (6, MemType::Uncached),
            (1, MemType::WriteCombining),
            (1, MemType::WriteThrough),
        ],
        // The largest leaf level: the only one, or one no preset has.
        caps: vec![(4, Some(0)), (1, Some(3))],
        split_levels: vec![0, 1, 2],
        weights: driver::Weights {
            access: 2,
            ..driver::Weights::default()
        },
        ..Space::new(page_shift.into(), &spans, 1, PABITS, pages)
    };
    Preset {
        fmt,
        statics: FlatImage::new(STATICS, bytes),
        walk: MipsWalkConfig {
            layout: MipsPteLayout::linux64_rixi(u32::from(page_shift)),
            page_shift: u32::from(page_shift),
            index_bits: index_bits.iter().map(|&b| u32::from(b)).collect(),
            pabits: PABITS,
            big_endian: false,
            iec: true,
        },
        space,
    }
}

fn mem_of_cca(cca: u8) -> MemType {
    match cca {
        3 => MemType::WriteBack,
        2 => MemType::Uncached,
        7 => MemType::WriteCombining,
        c => panic!("walker reported unexpected CCA {c}"),
    }
}

impl Preset {
    fn mem<'a>(&'a self, heap: &'a HeapHost) -> Mem<'a> {
        Mem {
            host: heap,
            statics: &self.statics,
        }
    }
}

impl Oracle for Preset {
    type Format = MipsLe;
    type Host<'h> = &'h HeapHost;
    type Mem = MemType;
    type Raw = ();

    fn space(&self) -> &Space {
        &self.space
    }
    fn heap(&self) -> HeapHost {
        HeapHost::new(
            WINDOW_BASE,
            WINDOW_SIZE,
            self.fmt.geometry().min_table_size(),
        )
    }
    fn format(&self) -> MipsLe {
        self.fmt.clone()
    }
    fn host<'h>(&self, heap: &'h HeapHost) -> &'h HeapHost {
        heap
    }
    fn walk_root(&self, fmt: &MipsLe, root: Hpa) -> u64 {
        fmt.pgd(root).unwrap()
    }
    fn kinds(&self) -> &'static [Perms] {
        &[Perms::READ, Perms::WRITE, Perms::EXEC]
    }
    fn peek(&self, heap: &HeapHost, pgd: u64, gpa: u64, kind: Perms) -> Option<(u64, MemType)> {
        let access = match kind {
            Perms::READ => Access::Read,
            Perms::WRITE => Access::Write,
            _ => Access::ExecUser,
        };
        match walker::peek_after_fast_path(&self.mem(heap), pgd, &self.walk, gpa, access) {
            Ok(t) => Some((t.hpa, mem_of_cca(t.cca))),
            Err(MipsFault::Tlb(_)) => None,
            Err(e) => panic!("walk of {gpa:#x} ({access:?}): {e:?}"),
        }
    }
    fn raw(&self, _: &HeapHost, _: u64, _: u64) {}
    fn expected_mem(&self, attrs: &Attrs) -> MemType {
        attrs.mem
    }
    /// Hardware, KVM's fast path on TLB Invalid / Modified, hardware.
    fn access(&self, heap: &HeapHost, pgd: u64, gpa: u64, write: bool) -> Accessed {
        let a = if write { Access::Write } else { Access::Read };
        let mem = &mut self.mem(heap);
        let ok = match walker::translate(mem, pgd, &self.walk, gpa, a) {
            Ok(_) => true,
            Err(MipsFault::Tlb(e))
                if matches!(e.kind, MipsTlbExc::Invalid | MipsTlbExc::Modified) =>
            {
                walker::kvm_fast_path(mem, pgd, &self.walk, gpa, write).unwrap()
                    && walker::translate(mem, pgd, &self.walk, gpa, a).is_ok()
            }
            Err(MipsFault::Tlb(_)) => false,
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
    /// The query's raw entry is the PTE the walker reads, and its A/D are the PTE's ACCESSED
    /// and MODIFIED bits. (MODIFIED survives write-protection, `pte_wrprotect`: dirty stays.)
    fn check_point(&self, heap: &HeapHost, pgd: u64, gpa: u64, m: Option<&Mapping>) {
        if let Some(m) = m {
            let pte = match walker::peek(&self.mem(heap), pgd, &self.walk, gpa, Access::Read) {
                Ok(t) => t.pte,
                Err(MipsFault::Tlb(e)) => e.pte,
                Err(e) => panic!("{e:?}"),
            };
            let layout = self.walk.layout;
            assert_eq!(pte, m.raw, "PTE at {gpa:#x}");
            assert_eq!(
                m.ad.accessed,
                Some(pte >> layout.accessed & 1 != 0),
                "ACCESSED at {gpa:#x}"
            );
            assert_eq!(
                m.ad.dirty,
                Some(pte >> layout.modified & 1 != 0),
                "MODIFIED at {gpa:#x}"
            );
        }
    }
}

fn linux64_4k() -> Preset {
    preset(12, &[9, 9, 10])
}

fn linux64_16k() -> Preset {
    preset(14, &[11, 11, 11])
}

fn linux64_16k_2level() -> Preset {
    preset(14, &[11, 11])
}

fn linux64_64k() -> Preset {
    preset(16, &[13, 13])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn linux64_4k_three_levels_matches_model(ops in driver::ops(&linux64_4k().space)) {
        driver::run(&linux64_4k(), &ops);
    }

    #[test]
    fn linux64_16k_three_levels_matches_model(ops in driver::ops(&linux64_16k().space)) {
        driver::run(&linux64_16k(), &ops);
    }

    #[test]
    fn linux64_16k_two_levels_matches_model(ops in driver::ops(&linux64_16k_2level().space)) {
        driver::run(&linux64_16k_2level(), &ops);
    }

    #[test]
    fn linux64_64k_two_levels_matches_model(ops in driver::ops(&linux64_64k().space)) {
        driver::run(&linux64_64k(), &ops);
    }
}
