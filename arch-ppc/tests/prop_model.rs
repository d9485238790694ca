//! Model properties for the Power radix partition-scoped format in the 4K geometry (13/9/9/9)
//! and the 64K geometry (13/9/9/5, 256-byte leaf tables), run by the testing kit's driver
//! (`tdp_core::testing::driver`) on the exclusive and the shared-mode path.
//!
//! Random map/unmap/protect/split/collapse/access sequences run in four 2 GiB windows of the
//! 52-bit guest real space (the bottom, a quarter and half-way up, and the top: root index 8191).
//! After every step every touched address translates through the independent big-endian walker
//! (`tdp_walkers::radix`, from the Power ISA Book III radix rules) exactly as the reference model
//! says, so an entry stored in the wrong byte order cannot pass; allocation failure injected at
//! every allocation point leaves every walk and the host's memory as they were; reference and
//! change bits, preset or set by the walker's hardware update, are never lost (checked with the
//! walker in "no R/C update" mode: a referenced page must not fault for R/C); teardown frees every
//! table, the 64 KiB root and the 256-byte leaf tables included. What is left here: the
//! geometries and the walker glue.

use proptest::prelude::*;
use tdp_arch_ppc::{Radix, RadixGranule, RadixOptions};
use tdp_core::testing::driver::{self, Accessed, Oracle, Space, View, Window};
use tdp_core::testing::HeapHost;
use tdp_core::{Attrs, Gpa, Hpa, MemType, Perms};
use tdp_walkers::radix::{self, RadixCaps, RadixFault};
use tdp_walkers::{Access, PhysMem};

const WINDOW_BASE: u64 = 0x8_4000_0000;
const WINDOW_SIZE: u64 = 24 << 20;
const PA_BITS: u8 = 52;
const TREE_BITS: u32 = 52;

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

const RC_HW: RadixCaps = RadixCaps { rc_update: true };
const RC_FAULT: RadixCaps = RadixCaps { rc_update: false };

/// Independent statement of what the format can encode (see the crate documentation).
fn legal(attrs: &Attrs) -> bool {
    let p = attrs.perms;
    let exec = p & Perms::EXEC;
    let write_without_read = p.contains(Perms::WRITE) && !p.contains(Perms::READ);
    !write_without_read
        && (exec.is_empty() || exec == Perms::EXEC)
        && !attrs.ignore_guest_memtype
        && match attrs.mem {
            MemType::WriteBack | MemType::WriteCombining => true,
            MemType::Uncached | MemType::Device => exec.is_empty(),
            MemType::WriteThrough | MemType::WriteProtect => false,
        }
}

/// One geometry.
struct Geo {
    granule: RadixGranule,
    space: Space,
}

impl Geo {
    fn new(granule: RadixGranule) -> Geo {
        let (shift, leaf_bits) = match granule {
            RadixGranule::Page4K => (12, 9),
            RadixGranule::Page64K => (16, 5),
        };
        // Pages per 2 MiB and per 1 GiB, and the root's 512 GiB entries.
        let l1 = 1u64 << leaf_bits;
        let spans = [1, l1, l1 << 9, l1 << 18];
        let region = 2 * spans[2];
        let total = 1u64 << (TREE_BITS - shift);
        let window = |base, weight| Window {
            base,
            pages: region,
            weight,
        };
        let space = Space {
            windows: vec![
                window(0, 9),
                window(total / 4, 2),
                window(total / 2, 2),
                window(total - region, 2),
            ],
            perms: PERMS
                .iter()
                .enumerate()
                .map(|(i, &p)| (if i < 6 { 2 } else { 1 }, p))
                .collect(),
            mems: vec![
                (6, MemType::WriteBack),
                (1, MemType::WriteCombining),
                (1, MemType::Uncached),
                (1, MemType::Device),
                (1, MemType::WriteProtect),
            ],
            caps: vec![(5, Some(0)), (1, Some(1)), (1, Some(2)), (1, None)],
            split_levels: vec![0, 1],
            weights: driver::Weights {
                map: 3,
                fill: 2,
                unmap: 2,
                protect: 2,
                split: 1,
                collapse: 2,
                access: 2,
            },
            max_ops: 32,
            ..Space::new(shift, &spans, 3, PA_BITS.into(), total)
        };
        Geo { granule, space }
    }

    /// Whether `access` passes without an R/C update: `Some(false)` for the "set RC" fault,
    /// `None` if the access is refused for another reason.
    fn rc_ok(&self, heap: &HeapHost, pate: u64, gpa: u64, access: Access) -> Option<bool> {
        match radix::peek(&Phys(heap), pate, &RC_FAULT, gpa, access) {
            Ok(_) => Some(true),
            Err(RadixFault::NeedsRc { .. }) => Some(false),
            Err(_) => None,
        }
    }
}

impl Oracle for Geo {
    type Format = Radix;
    type Host<'h> = &'h HeapHost;
    type Mem = MemType;
    /// One raw read walk (whatever it returns, faults included).
    type Raw = Result<radix::RadixTranslation, RadixFault>;

    fn space(&self) -> &Space {
        &self.space
    }
    /// The smallest table is the host's metadata granule.
    fn heap(&self) -> HeapHost {
        let granule = match self.granule {
            RadixGranule::Page4K => 4096,
            RadixGranule::Page64K => 256,
        };
        HeapHost::new(WINDOW_BASE, WINDOW_SIZE, granule)
    }
    fn format(&self) -> Radix {
        Radix::new(RadixOptions {
            granule: self.granule,
            pa_bits: PA_BITS,
            lpid_bits: 12,
        })
        .unwrap()
    }
    fn host<'h>(&self, heap: &'h HeapHost) -> &'h HeapHost {
        heap
    }
    fn walk_root(&self, fmt: &Radix, root: Hpa) -> u64 {
        fmt.partition_table_entry(root, Gpa::new(0x10_0000), 4)
            .unwrap()
            .dw0
    }
    fn kinds(&self) -> &'static [Perms] {
        &[
            Perms::READ,
            Perms::WRITE,
            Perms::EXEC_SUPER,
            Perms::EXEC_USER,
        ]
    }
    fn peek(&self, heap: &HeapHost, pate: u64, gpa: u64, kind: Perms) -> Option<(u64, MemType)> {
        let access = match kind {
            Perms::READ => Access::Read,
            Perms::WRITE => Access::Write,
            Perms::EXEC_SUPER => Access::ExecSupervisor,
            _ => Access::ExecUser,
        };
        match radix::peek(&Phys(heap), pate, &RC_HW, gpa, access) {
            Ok(t) => {
                let mem = match t.att {
                    0b00 => MemType::WriteBack,
                    0b11 => MemType::WriteCombining,
                    0b10 => MemType::Uncached,
                    a => panic!("walker saw ATT {a:#b}"),
                };
                Some((t.hpa, mem))
            }
            Err(RadixFault::NotValid { .. } | RadixFault::Permission { .. }) => None,
            Err(e) => panic!("radix walk of {gpa:#x} ({access:?}): {e}"),
        }
    }
    fn raw(&self, heap: &HeapHost, pate: u64, gpa: u64) -> Self::Raw {
        radix::peek(&Phys(heap), pate, &RC_HW, gpa, Access::Read)
    }
    fn expected_mem(&self, attrs: &Attrs) -> MemType {
        match attrs.mem {
            MemType::Device => MemType::Uncached,
            m => m,
        }
    }
    fn access(&self, heap: &HeapHost, pate: u64, gpa: u64, write: bool) -> Accessed {
        let access = if write { Access::Write } else { Access::Read };
        match radix::translate(&mut Phys(heap), pate, &RC_HW, gpa, access) {
            Ok(_) => Accessed::Translated,
            Err(_) => Accessed::Faulted,
        }
    }
    fn has_ad(&self) -> bool {
        true
    }
    fn legal(&self, attrs: &Attrs) -> bool {
        legal(attrs)
    }
    /// Checked with the walker in "no R/C update" mode: a referenced page must not fault for
    /// R/C, a changed writable one must not fault for C (a no-access leaf: nothing can reach
    /// it).
    fn ad_kept(
        &self,
        heap: &HeapHost,
        pate: u64,
        _: &dyn View,
        gpa: u64,
        perms: Perms,
        dirty: bool,
    ) -> bool {
        if dirty {
            return !perms.contains(Perms::WRITE)
                || self.rc_ok(heap, pate, gpa, Access::Write) == Some(true);
        }
        let access = if perms.contains(Perms::READ) {
            Access::Read
        } else if perms.contains(Perms::EXEC) {
            Access::ExecUser
        } else {
            return true;
        };
        self.rc_ok(heap, pate, gpa, access) != Some(false)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn radix_4k_matches_model(ops in driver::ops(&Geo::new(RadixGranule::Page4K).space)) {
        driver::run(&Geo::new(RadixGranule::Page4K), &ops);
    }

    #[test]
    fn radix_64k_matches_model(ops in driver::ops(&Geo::new(RadixGranule::Page64K).space)) {
        driver::run(&Geo::new(RadixGranule::Page64K), &ops);
    }
}
