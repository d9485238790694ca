//! Model properties for arm64 stage 2, one per configuration the issue names: random
//! map/unmap/protect/split/collapse/access sequences run by the testing kit's driver
//! (`tdp_core::testing::driver`) on the exclusive and the shared-mode path, checked after every
//! step through the independent stage-2 walker (`tdp_walkers::stage2`) against the reference
//! model.
//!
//! After every operation (the driver's checks):
//! - every touched address translates exactly as the model says (output address, permissions
//!   per access kind, stage-2 memory kind, shareability);
//! - A/D state that the walker (as hardware) or a young map set survives (split copies it,
//!   collapse merges it, protect keeps it);
//! - allocation failure injected at every allocation point leaves the table as it was and leaks
//!   nothing; teardown frees every page.
//!
//! And on the exclusive path, through the recording host (this file's hooks):
//! - **break-before-make**: any watched address whose leaf changed output address, block size or
//!   MemAttr was seen by the walker as a Translation fault in a TLB flush covering it during the
//!   operation (the recording host walks the tables at every flush);
//! - **table release order**: every table detached by the operation had a flush covering its span,
//!   before the host got it back;
//! - **cache maintenance**: exactly the clean/invalidate calls the configuration needs, made
//!   before any watched address changed;
//! - **TLBI plans**: every flush's instruction sequence covers the flushed range;
//! - teardown frees no table before the whole-VMID flush.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;

use common::{expected_kind, peek, tlbi_covers, walker_caps, FlushRecord, Peek, Phys, Recorder};
use proptest::prelude::*;
use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_core::testing::driver::{self, Accessed, OldMaps, Op, Oracle, Space};
use tdp_core::testing::{HeapHost, HostEvent, Model};
use tdp_core::{Attrs, Error, Gpa, GpaRange, Hpa, MemType, Perms, PteFormat, Table, TlbFlush};
use tdp_walkers::stage2::{self, Stage2Fault, Stage2MemKind};
use tdp_walkers::Access;

const PERMS: [Perms; 10] = [
    Perms::READ,
    Perms::RW,
    Perms::RX,
    Perms::RWX,
    Perms::EXEC,
    Perms::empty(),
    Perms::WRITE,
    Perms::READ.union(Perms::EXEC_USER),
    Perms::READ.union(Perms::EXEC_SUPER),
    Perms::RW.union(Perms::EXEC_SUPER),
];

struct Cfg {
    fmt: Stage2,
    window_base: u64,
    window_size: u64,
    space: Space,
    /// The tables under the current operation's range before it ran (see [`tables_under`]).
    before_tables: RefCell<BTreeMap<u64, (u64, u64)>>,
}

impl Cfg {
    fn shift(&self) -> u32 {
        self.fmt.granule().shift()
    }
    fn stride(&self) -> u32 {
        self.fmt.granule().stride()
    }
}

/// Whether the arm64 format can encode `attrs` (written from the Arm ARM rules, not asked of
/// the format): split execute needs FEAT_XNX; Device memory is never executable; no stage-2
/// Write-Through/Write-Protect type is offered; only FWB's forced Write-Back ignores the guest.
fn legal(attrs: &Attrs, o: &Stage2Options) -> bool {
    let exec = attrs.perms & Perms::EXEC;
    let device = matches!(attrs.mem, MemType::Device | MemType::Uncached);
    let split_exec = !exec.is_empty() && exec != Perms::EXEC;
    let no_type = matches!(attrs.mem, MemType::WriteThrough | MemType::WriteProtect);
    let forced_wb = o.fwb && attrs.mem == MemType::WriteBack;
    let refused = (split_exec && !o.xnx)
        || no_type
        || (device && !exec.is_empty())
        || (attrs.ignore_guest_memtype && !forced_wb);
    !refused
}

/// The tables linked under `[start, start + size)`: physical address → (first guest address,
/// span). Addresses are decoded from the raw table descriptors with the Arm ARM layout.
fn tables_under(
    cfg: &Cfg,
    t: &Table<Stage2, Recorder<'_>>,
    start: u64,
    size: u64,
) -> BTreeMap<u64, (u64, u64)> {
    let mut out = BTreeMap::new();
    let lpa2 = cfg.fmt.options().lpa2;
    t.walk(GpaRange::new(Gpa::new(start), size).unwrap(), |e| {
        if e.kind == tdp_core::EntryKind::Table && e.visit == tdp_core::Visit::TablePre {
            let pa = common::table_desc_addr(e.raw, cfg.shift(), lpa2);
            let span = 1u64 << (cfg.shift() + cfg.stride() * u32::from(e.level.get()));
            out.insert(pa, (e.gpa.raw(), span));
        }
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    out
}

/// The instruction-cache invalidations a protect to `perms` of `[start, end)` needs, from the
/// model: one per contiguous host run of leaves gaining an execute permission.
fn icache_runs(model: &Model, start: u64, end: u64, perms: Perms) -> Vec<HostEvent> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (s, span) in model.spans() {
        let (a, b) = (s.max(start), span.end.min(end));
        if a >= b || (perms & Perms::EXEC & !span.attrs.perms).is_empty() {
            continue;
        }
        let hpa = span.hpa + (a - s);
        match runs.last_mut() {
            Some((_, e)) if *e == hpa => *e = hpa + (b - a),
            _ => runs.push((hpa, hpa + (b - a))),
        }
    }
    runs.into_iter()
        .map(|(s, e)| HostEvent::InvalidateIcache(Hpa::new(s), e - s))
        .collect()
}

fn cmo_events(events: &[HostEvent]) -> Vec<HostEvent> {
    events
        .iter()
        .copied()
        .filter(|e| {
            matches!(
                e,
                HostEvent::CleanDcache(..) | HostEvent::InvalidateIcache(..)
            )
        })
        .collect()
}

impl Oracle for Cfg {
    type Format = Stage2;
    type Host<'h> = Recorder<'h>;
    /// The stage-2 memory kind and the SH field as the walker reads it (`None` with DS = 1).
    type Mem = (Stage2MemKind, Option<u8>);
    /// The whole walk: the leaf (base, block size, MemAttr) and whether every access took a
    /// Translation fault.
    type Raw = Peek;

    fn space(&self) -> &Space {
        &self.space
    }
    fn heap(&self) -> HeapHost {
        HeapHost::new(
            self.window_base,
            self.window_size,
            self.fmt.granule().size() as usize,
        )
    }
    fn format(&self) -> Stage2 {
        self.fmt
    }
    fn host<'h>(&self, heap: &'h HeapHost) -> Recorder<'h> {
        Recorder::new(heap, self.fmt)
    }
    fn walk_root(&self, _: &Stage2, root: Hpa) -> u64 {
        root.raw()
    }
    fn kinds(&self) -> &'static [Perms] {
        &[
            Perms::READ,
            Perms::WRITE,
            Perms::EXEC_SUPER,
            Perms::EXEC_USER,
        ]
    }
    fn peek(&self, heap: &HeapHost, root: u64, gpa: u64, kind: Perms) -> Option<(u64, Self::Mem)> {
        let access = match kind {
            Perms::READ => Access::Read,
            Perms::WRITE => Access::Write,
            Perms::EXEC_SUPER => Access::ExecSupervisor,
            _ => Access::ExecUser,
        };
        let vttbr = self.fmt.vttbr(Hpa::new(root), 1).unwrap();
        let caps = walker_caps(&self.fmt);
        match stage2::peek(&Phys(heap), self.fmt.vtcr(), vttbr, &caps, gpa, access) {
            Ok(t) => {
                assert!(!t.contiguous, "{gpa:#x}: contiguous hint set");
                Some((t.pa, (t.mem_kind, t.sh)))
            }
            Err(
                Stage2Fault::Permission { .. }
                | Stage2Fault::AccessFlag { .. }
                | Stage2Fault::Translation { .. },
            ) => None,
            Err(e) => panic!("stage-2 walk of {gpa:#x} ({access:?}): {e:?}"),
        }
    }
    fn raw(&self, heap: &HeapHost, root: u64, gpa: u64) -> Peek {
        peek(heap, &self.fmt, root, gpa)
    }
    fn expected_mem(&self, attrs: &Attrs) -> Self::Mem {
        let o = self.fmt.options();
        (
            expected_kind(attrs, o.fwb),
            if o.lpa2 { None } else { Some(0b11) },
        )
    }
    fn access(&self, heap: &HeapHost, root: u64, gpa: u64, write: bool) -> Accessed {
        if common::access(heap, &self.fmt, root, gpa, write) {
            Accessed::Translated
        } else {
            Accessed::Faulted
        }
    }
    fn has_ad(&self) -> bool {
        true
    }
    fn legal(&self, attrs: &Attrs) -> bool {
        legal(attrs, &self.fmt.options())
    }

    fn on_table(&self, t: &Table<Stage2, Recorder<'_>>) {
        let root = t.root().raw();
        assert_eq!(root, self.window_base, "the root is the first allocation");
        t.host().root.set(root);
    }
    fn before_op(&self, t: &Table<Stage2, Recorder<'_>>, op: &Op) {
        let (page, pages) = op.span();
        let (start, size) = (page << self.shift(), pages << self.shift());
        *self.before_tables.borrow_mut() = tables_under(self, t, start, size);
    }
    fn before_attempt(&self, t: &Table<Stage2, Recorder<'_>>, heap: &HeapHost, watch: &[u64]) {
        heap.take_events();
        t.host().begin(watch);
    }
    fn after_op(
        &self,
        table: &Table<Stage2, Recorder<'_>>,
        heap: &HeapHost,
        op: &Op,
        result: &Result<(), Error>,
        before: &Model,
        _: &Model,
    ) {
        let fmt = self.fmt;
        let o = fmt.options();
        let root = table.root().raw();
        let (page, pages) = op.span();
        let (start, size) = (page << self.shift(), pages << self.shift());
        let events = heap.take_events();
        let flushes: Vec<FlushRecord> = table.host().flushes.borrow().clone();

        // Cache maintenance: exactly what the configuration needs, for what was done.
        let want_cmo = match *op {
            Op::Map {
                hpa_page, attrs, ..
            } if result.is_ok() => {
                let hpa = hpa_page << self.shift();
                let mut want = Vec::new();
                let fwb_forced = o.fwb && attrs.ignore_guest_memtype;
                if attrs.mem == MemType::WriteBack && !fwb_forced {
                    want.push(HostEvent::CleanDcache(Hpa::new(hpa), size));
                }
                if attrs.perms.intersects(Perms::EXEC) && !fmt.caps().dic {
                    want.push(HostEvent::InvalidateIcache(Hpa::new(hpa), size));
                }
                Some(want)
            }
            Op::Protect { perms, .. } if result.is_ok() => Some(if fmt.caps().dic {
                Vec::new()
            } else {
                icache_runs(before, start, start + size, perms)
            }),
            // A refused map or protect: not checked.
            Op::Map { .. } | Op::Protect { .. } => None,
            _ => Some(Vec::new()),
        };
        if let Some(want) = want_cmo {
            assert_eq!(cmo_events(&events), want, "{op:?}");
        }
        assert_eq!(
            *table.host().cmo_too_late.borrow(),
            Vec::<u64>::new(),
            "cache maintenance after a change, in {op:?}"
        );

        // Break-before-make: a leaf that changed output address, block size or MemAttr was
        // a Translation fault in some flush covering it during the operation.
        for (g, before) in table.host().before.borrow().iter() {
            let after = peek(heap, &fmt, root, *g);
            if let (Some(b), Some(a)) = (before.leaf, after.leaf) {
                if b != a {
                    assert!(
                        flushes.iter().any(|f| f.broken.contains(g)),
                        "{g:#x} changed from {b:?} to {a:?} without a break in {op:?}; \
                         flushes {flushes:?}"
                    );
                }
            }
        }

        // Detached tables: a flush covering their span, before the host got them back.
        let after_tables = tables_under(self, table, start, size);
        for (pa, (gpa, span)) in self.before_tables.borrow().iter() {
            if after_tables.get(pa) == Some(&(*gpa, *span)) {
                continue;
            }
            let flush_at = events.iter().position(|e| match e {
                HostEvent::Flush(f) => FlushRecord {
                    flush: *f,
                    broken: vec![],
                }
                .covers(*gpa, *span),
                _ => false,
            });
            let free_at = events
                .iter()
                .position(|e| matches!(e, HostEvent::Free(p, _) if p.raw() == *pa));
            assert!(
                flush_at.is_some(),
                "table {pa:#x} for [{gpa:#x}, +{span:#x}) detached without a flush in {op:?}"
            );
            if let Some(free_at) = free_at {
                assert!(
                    flush_at < Some(free_at),
                    "table {pa:#x} freed before the flush covering it in {op:?}"
                );
            }
        }

        // Every flush's TLBI sequence covers what it flushes.
        for f in &flushes {
            if let Err(e) = tlbi_covers(&fmt, f.flush) {
                panic!("TLBI plan for {:?} in {op:?}: {e}", f.flush);
            }
        }
    }
    fn after_teardown(&self, heap: &HeapHost) {
        let last_flush_before_free =
            heap.take_events()
                .into_iter()
                .fold((false, true), |(flushed, ok), e| match e {
                    HostEvent::Flush(TlbFlush::All) => (true, ok),
                    HostEvent::Free(..) => (flushed, ok && flushed),
                    _ => (flushed, ok),
                });
        assert!(
            last_flush_before_free.1,
            "teardown freed a table before the whole-VMID flush"
        );
    }
}

// --- configurations ---------------------------------------------------------------------

const MIB: u64 = 1 << 20;
/// A window above 4 GiB for 48-bit outputs, and one above 2^48 for 52-bit outputs (so that
/// table descriptors and VTTBR carry address bits 51:48).
const LOW_WINDOW: u64 = 0x8_0000_0000;
const HIGH_WINDOW: u64 = 0x000a_0000_0000_0000;

/// Every feature (FEAT_TLBIRANGE and FEAT_TTL included) with a `pa`-bit PARange.
fn caps(pa: u8) -> Stage2Caps {
    Stage2Caps {
        pa_range_bits: pa,
        ..Stage2Caps::all()
    }
}

fn cfg(
    opts: Stage2Options,
    caps: Stage2Caps,
    window_base: u64,
    window_size: u64,
    young: OldMaps,
) -> Cfg {
    let fmt = Stage2::new(caps, opts).unwrap();
    let (shift, stride) = (opts.granule.shift(), opts.granule.stride());
    let levels = fmt.geometry().levels();
    let spans: Vec<u64> = (0..u32::from(levels)).map(|l| 1 << (stride * l)).collect();
    // Levels that may hold a leaf (engine numbering), per granule (Arm ARM
    // `AArch64.BlockDescSupported` for the non-LPA2 block sizes).
    let leaf_levels = if opts.granule == Granule::K4 { 3 } else { 2 }.min(levels);
    let space = Space {
        // Steps meet in the last concatenated root table.
        hot_at_end: true,
        // Mostly encodable permissions; the split-execute ones need FEAT_XNX.
        perms: PERMS
            .iter()
            .enumerate()
            .map(|(i, &p)| (if i < 6 { 8 } else { 3 }, p))
            .collect(),
        mems: vec![
            (6, MemType::WriteBack),
            (2, MemType::WriteCombining),
            (1, MemType::Device),
            (1, MemType::Uncached),
            (1, MemType::WriteThrough),
        ],
        ignore_guest_memtype: 0.15,
        // A leaf level, or one past the geometry's levels.
        caps: (0..leaf_levels)
            .map(|l| (6, Some(l)))
            .chain([(u32::from(leaf_levels), Some(levels))])
            .collect(),
        split_levels: (0..levels).collect(),
        old_maps: young,
        max_ops: 16,
        ..Space::new(
            shift,
            &spans,
            leaf_levels,
            opts.oa_bits.into(),
            1 << (u32::from(opts.ipa_bits) - shift),
        )
    };
    Cfg {
        fmt,
        window_base,
        window_size,
        space,
        before_tables: RefCell::new(BTreeMap::new()),
    }
}

/// 4 KiB, IPA 40: start at level 1 with two concatenated pages; HA + HD, FEAT_XNX.
fn k4_ipa40() -> Cfg {
    let opts = Stage2Options {
        xnx: true,
        hw_access: true,
        hw_dirty: true,
        ..Stage2Options::new(Granule::K4, 40, 48)
    };
    let c = cfg(opts, caps(48), LOW_WINDOW, 48 * MIB, OldMaps::Any);
    assert_eq!((c.fmt.start_level(), c.fmt.concatenated_tables()), (1, 2));
    c
}

/// 4 KiB, IPA 48: four levels from level 0; software Access flag and dirty state; no range TLBI.
fn k4_ipa48() -> Cfg {
    let c = Stage2Caps {
        tlbi_range: false,
        ..caps(48)
    };
    let c = cfg(
        Stage2Options::new(Granule::K4, 48, 48),
        c,
        LOW_WINDOW,
        48 * MIB,
        OldMaps::Never,
    );
    assert_eq!((c.fmt.start_level(), c.fmt.concatenated_tables()), (0, 1));
    c
}

/// 4 KiB, IPA 52 with LPA2: sixteen concatenated level-0 pages, 52-bit output, FWB, HA + HD.
fn k4_ipa52_lpa2() -> Cfg {
    let opts = Stage2Options {
        lpa2: true,
        fwb: true,
        xnx: true,
        hw_access: true,
        hw_dirty: true,
        ..Stage2Options::new(Granule::K4, 52, 52)
    };
    let c = cfg(opts, caps(52), HIGH_WINDOW, 48 * MIB, OldMaps::Any);
    assert_eq!((c.fmt.start_level(), c.fmt.concatenated_tables()), (0, 16));
    c
}

/// 16 KiB, IPA 40: sixteen concatenated level-2 pages (256 KiB root); HA only; CTR_EL0.DIC.
fn k16_ipa40() -> Cfg {
    let opts = Stage2Options {
        hw_access: true,
        ..Stage2Options::new(Granule::K16, 40, 44)
    };
    let c = Stage2Caps {
        dic: true,
        ..caps(44)
    };
    let c = cfg(opts, c, LOW_WINDOW, 16 * MIB, OldMaps::WritableYoung);
    assert_eq!((c.fmt.start_level(), c.fmt.concatenated_tables()), (2, 16));
    c
}

/// 16 KiB, IPA 47: three levels from level 1, one root page; HA + HD, FWB, FEAT_XNX.
fn k16_ipa47() -> Cfg {
    let opts = Stage2Options {
        fwb: true,
        xnx: true,
        hw_access: true,
        hw_dirty: true,
        ..Stage2Options::new(Granule::K16, 47, 48)
    };
    let c = cfg(opts, caps(48), LOW_WINDOW, 16 * MIB, OldMaps::Any);
    assert_eq!((c.fmt.start_level(), c.fmt.concatenated_tables()), (1, 1));
    c
}

/// 64 KiB, IPA 42: two levels (root at level 2); software A/D; no FEAT_TTL.
fn k64_ipa42() -> Cfg {
    let c = Stage2Caps {
        ttl: false,
        ..caps(48)
    };
    let c = cfg(
        Stage2Options::new(Granule::K64, 42, 48),
        c,
        LOW_WINDOW,
        16 * MIB,
        OldMaps::Never,
    );
    assert_eq!((c.fmt.start_level(), c.fmt.concatenated_tables()), (2, 1));
    c
}

/// 64 KiB, IPA 52 with FEAT_LPA: OA\[51:48\] in bits 15:12; HA + HD, FEAT_XNX.
fn k64_ipa52() -> Cfg {
    let opts = Stage2Options {
        xnx: true,
        hw_access: true,
        hw_dirty: true,
        ..Stage2Options::new(Granule::K64, 52, 52)
    };
    let c = cfg(opts, caps(52), HIGH_WINDOW, 16 * MIB, OldMaps::Any);
    assert_eq!((c.fmt.start_level(), c.fmt.concatenated_tables()), (1, 1));
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn k4_ipa40_two_concatenated_l1_pages_hw_dirty_xnx_matches_model(ops in driver::ops(&k4_ipa40().space)) {
        driver::run(&k4_ipa40(), &ops);
    }

    #[test]
    fn k4_ipa48_software_access_flag_matches_model(ops in driver::ops(&k4_ipa48().space)) {
        driver::run(&k4_ipa48(), &ops);
    }

    #[test]
    fn k4_ipa52_lpa2_sixteen_concatenated_l0_pages_fwb_matches_model(ops in driver::ops(&k4_ipa52_lpa2().space)) {
        driver::run(&k4_ipa52_lpa2(), &ops);
    }

    #[test]
    fn k16_ipa40_sixteen_concatenated_l2_pages_hw_access_dic_matches_model(ops in driver::ops(&k16_ipa40().space)) {
        driver::run(&k16_ipa40(), &ops);
    }

    #[test]
    fn k16_ipa47_hw_dirty_fwb_xnx_matches_model(ops in driver::ops(&k16_ipa47().space)) {
        driver::run(&k16_ipa47(), &ops);
    }

    #[test]
    fn k64_ipa42_two_levels_software_matches_model(ops in driver::ops(&k64_ipa42().space)) {
        driver::run(&k64_ipa42(), &ops);
    }

    #[test]
    fn k64_ipa52_lpa_52bit_output_hw_dirty_matches_model(ops in driver::ops(&k64_ipa52().space)) {
        driver::run(&k64_ipa52(), &ops);
    }
}
