//! Model properties for the G-stage format in Sv39x4, Sv48x4 and Sv57x4, with hardware (Svadu)
//! and software (Svade) A/D, with and without Svpbmt, run by the testing kit's driver
//! (`tdp_core::testing::driver`) on the exclusive and the shared-mode path.
//!
//! Random map/unmap/protect/split/collapse/access sequences run in four 2 GiB windows of the
//! guest-physical space: the bottom, a quarter and half-way up (root index bits 39 and 40 for
//! Sv39x4, the two extra root bits of every x4 scheme), and the top (root index 2047). After every
//! step every touched address translates through the independent walker (`tdp_walkers::gstage`,
//! written from the Privileged spec) exactly as the reference model says; allocation failure
//! injected at every allocation point leaves every walk and the host's memory as they were;
//! accessed/dirty state set by preset or by the walker's hardware update is never lost (checked
//! with the walker in Svade mode: a young page must not fault for A/D); teardown frees every
//! table, the 16 KiB root included. What is left here: the configurations and the walker glue.

use proptest::prelude::*;
use tdp_arch_riscv::{Gstage, GstageCaps, GstageMode, GstageOptions};
use tdp_core::testing::driver::{self, Accessed, Oracle, Space, View, Window};
use tdp_core::testing::HeapHost;
use tdp_core::{Attrs, Hpa, MemType, Perms};
use tdp_walkers::gstage::{self, GstageFault, GuestPageFaultReason};
use tdp_walkers::{Access, PhysMem};

const WINDOW_BASE: u64 = 0x8_4000_0000;
const WINDOW_SIZE: u64 = 24 << 20;
const PA_BITS: u8 = 48;
const VMID: u16 = 0x2a;
/// 4 KiB pages per 1 GiB.
const L2: u64 = 512 * 512;
/// Each window is 2 GiB (two root entries in Sv39x4).
const REGION: u64 = 2 * L2;

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
    Perms::READ.union(Perms::EXEC_USER),
];

#[derive(Clone, Debug)]
struct Config {
    mode: GstageMode,
    svadu: bool,
    svpbmt: bool,
    svvptc: bool,
    space: Space,
}

impl Config {
    fn new(mode: GstageMode, svadu: bool, svpbmt: bool, svvptc: bool) -> Config {
        let levels = match mode {
            GstageMode::Sv39x4 => 3,
            GstageMode::Sv48x4 => 4,
            _ => 5,
        };
        let spans: Vec<u64> = (0..levels).map(|l| 1 << (9 * l)).collect();
        let total = 1u64 << (mode.gpa_bits() - 12);
        let window = |base, weight| Window {
            base,
            pages: REGION,
            weight,
        };
        let space = Space {
            windows: vec![
                window(0, 9),
                window(total / 4, 2),
                window(total / 2, 2),
                window(total - REGION, 2),
            ],
            // Mostly encodable permissions, some the format refuses.
            perms: PERMS
                .iter()
                .enumerate()
                .map(|(i, &p)| (if i < 5 { 18 } else { 5 }, p))
                .collect(),
            mems: vec![
                (6, MemType::WriteBack),
                (1, MemType::WriteCombining),
                (1, MemType::Uncached),
                (1, MemType::Device),
                (1, MemType::WriteThrough),
            ],
            caps: vec![(4, Some(0)), (1, Some(1)), (1, Some(2)), (1, None)],
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
            ..Space::new(12, &spans, 3, PA_BITS.into(), total)
        };
        Config {
            mode,
            svadu,
            svpbmt,
            svvptc,
            space,
        }
    }

    fn fmt(&self) -> Gstage {
        Gstage::new(
            GstageCaps {
                max_mode: GstageMode::Sv57x4,
                vmid_bits: 14,
                svadu: self.svadu,
                svpbmt: self.svpbmt,
                svvptc: self.svvptc,
            },
            GstageOptions {
                mode: self.mode,
                pa_bits: PA_BITS,
                leaf_512g: false,
            },
        )
        .unwrap()
    }

    /// The walker's capabilities; `svadu` picks hardware A/D updating (or Svade faults).
    fn walker(&self, svadu: bool) -> gstage::GstageCaps {
        gstage::GstageCaps {
            svadu,
            svpbmt: self.svpbmt,
            svnapot: false,
            svrsw60t59b: false,
        }
    }

    /// Whether `access` passes the Svade A/D check: `Some(false)` for an A/D guest-page fault,
    /// `None` if the access is refused for another reason.
    fn ad_ok(&self, heap: &HeapHost, hgatp: u64, gpa: u64, access: Access) -> Option<bool> {
        match gstage::peek(&Phys(heap), hgatp, &self.walker(false), gpa, access) {
            Ok(_) => Some(true),
            Err(GstageFault::GuestPageFault(f))
                if f.reason == GuestPageFaultReason::AccessedDirty =>
            {
                Some(false)
            }
            Err(_) => None,
        }
    }
}

impl Oracle for Config {
    type Format = Gstage;
    type Host<'h> = &'h HeapHost;
    type Mem = MemType;
    /// One raw read walk (whatever it returns, faults included).
    type Raw = Result<gstage::GstageTranslation, GstageFault>;

    fn space(&self) -> &Space {
        &self.space
    }
    fn heap(&self) -> HeapHost {
        HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 4096)
    }
    fn format(&self) -> Gstage {
        self.fmt()
    }
    fn host<'h>(&self, heap: &'h HeapHost) -> &'h HeapHost {
        heap
    }
    fn walk_root(&self, fmt: &Gstage, root: Hpa) -> u64 {
        fmt.hgatp(root, VMID).unwrap()
    }
    fn kinds(&self) -> &'static [Perms] {
        &[
            Perms::READ,
            Perms::WRITE,
            Perms::EXEC_SUPER,
            Perms::EXEC_USER,
        ]
    }
    /// With hardware A/D updating (and no writes): permission and A/D are separate checks.
    fn peek(&self, heap: &HeapHost, hgatp: u64, gpa: u64, kind: Perms) -> Option<(u64, MemType)> {
        let access = match kind {
            Perms::READ => Access::Read,
            Perms::WRITE => Access::Write,
            Perms::EXEC_SUPER => Access::ExecSupervisor,
            _ => Access::ExecUser,
        };
        match gstage::peek(&Phys(heap), hgatp, &self.walker(true), gpa, access) {
            Ok(t) => {
                assert!(t.user, "G-stage leaf without U");
                let mem = match t.pbmt {
                    0 => MemType::WriteBack,
                    1 => MemType::WriteCombining,
                    2 => MemType::Uncached,
                    p => panic!("walker accepted PBMT {p}"),
                };
                Some((t.hpa, mem))
            }
            Err(GstageFault::GuestPageFault(f))
                if matches!(
                    f.reason,
                    GuestPageFaultReason::NotValid | GuestPageFaultReason::Permission
                ) =>
            {
                None
            }
            Err(e) => panic!("G-stage walk of {gpa:#x} ({access:?}): {e}"),
        }
    }
    fn raw(&self, heap: &HeapHost, hgatp: u64, gpa: u64) -> Self::Raw {
        gstage::peek(&Phys(heap), hgatp, &self.walker(true), gpa, Access::Read)
    }
    fn expected_mem(&self, attrs: &Attrs) -> MemType {
        match attrs.mem {
            MemType::Device => MemType::Uncached,
            m => m,
        }
    }
    fn access(&self, heap: &HeapHost, hgatp: u64, gpa: u64, write: bool) -> Accessed {
        let access = if write { Access::Write } else { Access::Read };
        match gstage::translate(
            &mut Phys(heap),
            hgatp,
            &self.walker(self.svadu),
            gpa,
            access,
        ) {
            Ok(_) => Accessed::Translated,
            Err(GstageFault::GuestPageFault(f))
                if f.reason == GuestPageFaultReason::AccessedDirty =>
            {
                assert!(!self.svadu, "A/D fault with Svadu at {gpa:#x}: {f:?}");
                Accessed::AdFault
            }
            Err(_) => Accessed::Faulted,
        }
    }
    fn has_ad(&self) -> bool {
        true
    }
    /// Independent statement of what the format can encode (Privileged spec, see the crate).
    fn legal(&self, attrs: &Attrs) -> bool {
        let p = attrs.perms;
        let exec = p & Perms::EXEC;
        let write_without_read = p.contains(Perms::WRITE) && !p.contains(Perms::READ);
        !p.is_empty()
            && !write_without_read
            && (exec.is_empty() || exec == Perms::EXEC)
            && !attrs.ignore_guest_memtype
            && match attrs.mem {
                MemType::WriteBack => true,
                MemType::WriteCombining | MemType::Uncached | MemType::Device => self.svpbmt,
                MemType::WriteThrough | MemType::WriteProtect => false,
            }
    }
    /// Checked with the walker in Svade mode: a young page must not fault for A/D, a dirty
    /// writable one must not fault for D.
    fn ad_kept(
        &self,
        heap: &HeapHost,
        hgatp: u64,
        _: &dyn View,
        gpa: u64,
        perms: Perms,
        dirty: bool,
    ) -> bool {
        if dirty {
            !perms.contains(Perms::WRITE)
                || self.ad_ok(heap, hgatp, gpa, Access::Write) == Some(true)
        } else {
            let access = if perms.contains(Perms::READ) {
                Access::Read
            } else {
                Access::ExecUser
            };
            self.ad_ok(heap, hgatp, gpa, access) != Some(false)
        }
    }
}

fn sv39x4() -> Config {
    Config::new(GstageMode::Sv39x4, false, true, false)
}

fn sv48x4() -> Config {
    Config::new(GstageMode::Sv48x4, true, true, true)
}

fn sv57x4() -> Config {
    Config::new(GstageMode::Sv57x4, true, false, false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sv39x4_svade_svpbmt_matches_model(ops in driver::ops(&sv39x4().space)) {
        driver::run(&sv39x4(), &ops);
    }

    #[test]
    fn sv48x4_svadu_svpbmt_svvptc_matches_model(ops in driver::ops(&sv48x4().space)) {
        driver::run(&sv48x4(), &ops);
    }

    #[test]
    fn sv57x4_svadu_no_svpbmt_matches_model(ops in driver::ops(&sv57x4().space)) {
        driver::run(&sv57x4(), &ops);
    }
}
