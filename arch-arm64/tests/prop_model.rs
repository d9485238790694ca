//! Model properties for arm64 stage 2, one per configuration the issue names: random
//! map/unmap/protect/split/collapse/access sequences checked after every step through the
//! independent stage-2 walker (`tdp_walkers::stage2`) against the reference model.
//!
//! After every operation:
//! - every touched address translates exactly as the model says (output address, permissions
//!   per access kind, stage-2 memory kind, shareability);
//! - A/D state that the walker (as hardware) or a young map set survives (split copies it,
//!   collapse merges it, protect keeps it);
//! - **break-before-make**: any watched address whose leaf changed output address, block size or
//!   MemAttr was seen by the walker as a Translation fault in a TLB flush covering it during the
//!   operation (the recording host walks the tables at every flush);
//! - **table release order**: every table detached by the operation had a flush covering its span,
//!   before the host got it back;
//! - **cache maintenance**: exactly the clean/invalidate calls the configuration needs, made
//!   before any watched address changed;
//! - **TLBI plans**: every flush's instruction sequence covers the flushed range;
//! - allocation failure injected at every allocation point leaves the table as it was and leaks
//!   nothing; teardown frees every page.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{expected, peek, tlbi_covers, FlushRecord, Recorder};
use proptest::prelude::*;
use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_core::testing::{inject, HeapHost, HostEvent, Model};
use tdp_core::{
    Attrs, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, Table, TlbFlush,
};

/// Which maps may leave AF / S2AP\[1\] clear (young = false) so that the walker still translates.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Young {
    /// HA + HD: hardware sets both, any map may be old.
    Any,
    /// HA only: a clean writable leaf would fault on write, so writable maps are young.
    ReadOnly,
    /// Software A/D: AF = 0 faults, so every map is young.
    Never,
}

struct Cfg {
    fmt: Stage2,
    /// Guest pages in the space the operations use (a power of two).
    space: u64,
    window_base: u64,
    window_size: u64,
    young: Young,
}

impl Cfg {
    fn shift(&self) -> u32 {
        self.fmt.granule().shift()
    }
    fn stride(&self) -> u32 {
        self.fmt.granule().stride()
    }
    fn levels(&self) -> u8 {
        use tdp_core::PteFormat;
        self.fmt.geometry().levels()
    }
    /// Levels that may hold a leaf (engine numbering), per granule (Arm ARM
    /// `AArch64.BlockDescSupported` for the non-LPA2 block sizes).
    fn leaf_levels(&self) -> u8 {
        let blocks = if self.fmt.granule() == Granule::K4 {
            3
        } else {
            2
        };
        blocks.min(self.levels())
    }
    /// Pages in a block of the largest leaf level.
    fn b_top(&self) -> u64 {
        1 << (self.stride() * (u32::from(self.leaf_levels()) - 1))
    }
    fn oa_pages_log2(&self) -> u32 {
        u32::from(self.fmt.options().oa_bits) - self.shift()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        page: u64,
        pages: u64,
        hpa_kind: u8,
        hpa_raw: u64,
        perms: u8,
        mem: u8,
        ignore: bool,
        cap: u8,
        young: bool,
    },
    Unmap {
        page: u64,
        pages: u64,
    },
    Protect {
        page: u64,
        pages: u64,
        perms: u8,
    },
    Split {
        page: u64,
        pages: u64,
        level: u8,
    },
    Collapse {
        page: u64,
        pages: u64,
    },
    Access {
        page: u64,
        write: bool,
    },
}

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
const MEMS: [MemType; 5] = [
    MemType::WriteBack,
    MemType::WriteCombining,
    MemType::Device,
    MemType::Uncached,
    MemType::WriteThrough,
];

/// Operations over `cfg.space` guest pages, half of them in a hot region at the top of the space
/// (the last concatenated root table) so that they meet, biased to block alignment and sizes so
/// that blocks, splits and collapses happen.
fn ops(cfg: &Cfg) -> impl Strategy<Value = Vec<Op>> {
    let space = cfg.space;
    let b1 = 1u64 << cfg.stride();
    let b_top = cfg.b_top();
    // Two hot regions at the top of the space (the last concatenated root table): eight
    // level-1 blocks, where maps meet and fill whole blocks, and four of the largest blocks.
    let small = 8 * b1;
    let small_base = space - small;
    let hot = (4 * b_top).min(space);
    let hot_base = space - hot;
    let page = prop_oneof![
        3 => (0..small).prop_map(move |x| small_base + x),
        3 => (0..16u64).prop_map(move |x| small_base + x * (b1 / 2)),
        1 => (0..hot).prop_map(move |x| hot_base + x),
        1 => (0..hot / b1).prop_map(move |x| hot_base + x * b1),
        1 => (0..hot / b_top).prop_map(move |x| hot_base + x * b_top),
        1 => 0..space,
        1 => (0..space / b_top).prop_map(move |x| x * b_top),
    ];
    let big = if b_top < 262_144 { 2 * b_top } else { b_top };
    let pages = prop_oneof![
        3 => 1u64..16,
        2 => Just(b1),
        2 => Just(b1 / 2),
        1 => 1u64..(3 * b1 + 64),
        1 => Just(b_top),
        1 => Just(big),
    ];
    let levels = cfg.levels();
    let leaf_levels = cfg.leaf_levels();
    let cap = prop_oneof![6 => 0..leaf_levels, 1 => Just(levels)];
    // Mostly encodable permissions; the split-execute ones need FEAT_XNX.
    let perms = prop_oneof![4 => 0u8..6, 1 => 6u8..PERMS.len() as u8];
    let mem =
        prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8), 1 => Just(4u8)];
    let op = prop_oneof![
        4 => (
            page.clone(),
            pages.clone(),
            (prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)], any::<u64>()),
            (perms.clone(), mem, prop::bool::weighted(0.15)),
            cap,
            any::<bool>(),
        )
            .prop_map(|(page, pages, (hpa_kind, hpa_raw), (perms, mem, ignore), cap, young)| {
                Op::Map { page, pages, hpa_kind, hpa_raw, perms, mem, ignore, cap, young }
            }),
        2 => (page.clone(), pages.clone()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => (page.clone(), pages.clone(), perms.clone())
            .prop_map(|(page, pages, perms)| Op::Protect { page, pages, perms }),
        1 => (page.clone(), pages.clone(), 0..levels)
            .prop_map(|(page, pages, level)| Op::Split { page, pages, level }),
        1 => (page.clone(), pages).prop_map(|(page, pages)| Op::Collapse { page, pages }),
        1 => (page, any::<bool>()).prop_map(|(page, write)| Op::Access { page, write }),
    ];
    // A level-1 block filled by 2 or 4 maps of small pages over one contiguous host range, with
    // a shared or own permission and mostly write-back memory, then usually a collapse: the
    // collapse must merge exactly the blocks whose pieces agree.
    let fill = (
        0..8u64,
        prop_oneof![Just(2u64), Just(4u64)],
        perms.clone(),
        proptest::collection::vec(
            (
                prop::bool::weighted(0.8),
                perms.clone(),
                prop_oneof![4 => Just(0u8), 1 => Just(1u8)],
                any::<bool>(),
            ),
            4,
        ),
        prop::bool::weighted(0.8),
    )
        .prop_map(move |(block, n, shared, pieces, collapse)| {
            let first = small_base + block * b1;
            let mut v: Vec<Op> = (0..n)
                .map(|i| {
                    let (same, own, mem, young) = pieces[i as usize];
                    Op::Map {
                        page: first + i * (b1 / n),
                        pages: b1 / n,
                        hpa_kind: 0,
                        hpa_raw: 0,
                        perms: if same { shared } else { own },
                        mem,
                        ignore: false,
                        cap: 0,
                        young,
                    }
                })
                .collect();
            if collapse {
                v.push(Op::Collapse {
                    page: first,
                    pages: b1,
                });
            }
            v
        });
    let group = prop_oneof![8 => op.prop_map(|o| vec![o]), 1 => fill];
    proptest::collection::vec(group, 1..16).prop_map(|g| g.into_iter().flatten().collect())
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

fn range(cfg: &Cfg, page: u64, pages: u64) -> GpaRange {
    GpaRange::new(Gpa::new(page << cfg.shift()), pages << cfg.shift()).unwrap()
}

fn attrs_of(perms: u8, mem: u8, ignore: bool) -> Attrs {
    Attrs {
        perms: PERMS[perms as usize],
        mem: MEMS[mem as usize],
        ignore_guest_memtype: ignore,
    }
}

/// Applies one operation to the table; its model counterpart is applied by the caller.
fn apply(cfg: &Cfg, t: &mut Table<Stage2, Recorder<'_>>, op: &Op) -> Result<(), Error> {
    match *op {
        Op::Map {
            page,
            pages,
            hpa_raw,
            perms,
            mem,
            ignore,
            cap,
            young,
            ..
        } => t.map_with(
            range(cfg, page, pages),
            Hpa::new(hpa_raw << cfg.shift()),
            attrs_of(perms, mem, ignore),
            MapOptions {
                max_level: Level::new(cap),
                young_dirty: young,
            },
        ),
        Op::Unmap { page, pages } => t.unmap(range(cfg, page, pages)),
        Op::Protect { page, pages, perms } => {
            t.protect(range(cfg, page, pages), PERMS[perms as usize])
        }
        Op::Split { page, pages, level } => {
            t.split(range(cfg, page, pages), Level::new(level).unwrap())
        }
        Op::Collapse { page, pages } => t.collapse(range(cfg, page, pages)),
        Op::Access { .. } => Ok(()),
    }
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

fn run(cfg: &Cfg, ops: Vec<Op>) {
    let fmt = cfg.fmt;
    let o = fmt.options();
    let shift = cfg.shift();
    let host = HeapHost::new(
        cfg.window_base,
        cfg.window_size,
        fmt.granule().size() as usize,
    );
    let mut table = Table::new(fmt, Recorder::new(&host, fmt)).unwrap();
    let root = table.root().raw();
    assert_eq!(root, cfg.window_base, "the root is the first allocation");
    table.host().root.set(root);
    let mut model = Model::new();
    let mut points: BTreeSet<u64> = BTreeSet::new();
    let mut young: BTreeSet<u64> = BTreeSet::new();
    let mut dirty: BTreeSet<u64> = BTreeSet::new();
    let oa_pages = cfg.oa_pages_log2();

    for op in ops {
        let (page, pages) = match op {
            Op::Map { page, pages, .. }
            | Op::Unmap { page, pages }
            | Op::Protect { page, pages, .. }
            | Op::Split { page, pages, .. }
            | Op::Collapse { page, pages } => (page, pages.min(cfg.space - page)),
            Op::Access { page, .. } => (page, 1),
        };
        let op = match op {
            Op::Map {
                hpa_kind,
                hpa_raw,
                perms,
                mem,
                ignore,
                cap,
                young,
                ..
            } => {
                let hpa_page = match hpa_kind {
                    // Guest RAM backed by one host range: contiguous, block-aligned alike.
                    0 => page % (1 << (oa_pages - 1)) + (1 << (oa_pages - 2)),
                    // Anywhere in the output space (may run past its end: HpaTooWide).
                    1 => hpa_raw % (1 << oa_pages),
                    2 => (hpa_raw % (1 << oa_pages)) & !(cfg.b_top() - 1),
                    // At the top of the output space: every address bit set, or past the end.
                    _ => (1 << oa_pages) - 1 - hpa_raw % (2 * cfg.b_top()),
                };
                let writable = PERMS[perms as usize].contains(Perms::WRITE);
                let young = match cfg.young {
                    Young::Any => young,
                    Young::ReadOnly => young || writable,
                    Young::Never => true,
                };
                Op::Map {
                    page,
                    pages,
                    hpa_kind,
                    hpa_raw: hpa_page,
                    perms,
                    mem,
                    ignore,
                    cap,
                    young,
                }
            }
            Op::Unmap { .. } => Op::Unmap { page, pages },
            Op::Protect { perms, .. } => Op::Protect { page, pages, perms },
            Op::Split { level, .. } => Op::Split { page, pages, level },
            Op::Collapse { .. } => Op::Collapse { page, pages },
            a => a,
        };
        for p in [
            page,
            page + pages / 2,
            page + pages - 1,
            page + pages,
            page.wrapping_sub(1),
        ] {
            if p < cfg.space {
                points.insert(p << shift | 0x5a8);
            }
        }

        if let Op::Access { page, write } = op {
            let gpa = page << shift;
            let ok = common::access(&host, &fmt, root, gpa, write);
            let allowed = expected(&model, &fmt, gpa).perms;
            assert_eq!(
                ok,
                allowed.contains(if write { Perms::WRITE } else { Perms::READ }),
                "access to {gpa:#x} (write: {write})"
            );
            if ok {
                young.insert(page);
                if write {
                    dirty.insert(page);
                }
            }
        } else {
            let watch: Vec<u64> = points.iter().copied().collect();
            let (start, size) = (page << shift, pages << shift);
            let before_tables = tables_under(cfg, &table, start, size);
            // Allocation failure at every point: the k-th allocation fails, for k = 0, 1, ...
            // until the operation no longer reaches k allocations.
            // Allocation failure at every point (tdp_core::testing::inject): each failing run must
            // leave the host's memory, the tree and every touched translation as they were.
            let result = inject::at_every_allocation(
                &host,
                &mut table,
                |t| {
                    host.take_events();
                    t.host().begin(&watch);
                    apply(cfg, t, &op)
                },
                |t, k| {
                    for (g, p) in t.host().before.borrow().iter() {
                        assert_eq!(
                            &peek(&host, &fmt, root, *g),
                            p,
                            "failed {op:?} at {k} changed {g:#x}"
                        );
                    }
                },
            );
            let events = host.take_events();
            let flushes: Vec<FlushRecord> = table.host().flushes.borrow().clone();

            // Expected outcome and model update, from the model and the Arm ARM rules.
            let mut want_cmo = Vec::new();
            match op {
                Op::Map {
                    page,
                    pages,
                    hpa_raw,
                    perms,
                    mem,
                    ignore,
                    cap,
                    young: y,
                    ..
                } => {
                    let attrs = attrs_of(perms, mem, ignore);
                    let hpa = hpa_raw << shift;
                    let too_wide = (hpa + size - 1) >> o.oa_bits != 0;
                    let bad_level = cap >= cfg.levels();
                    let bad_attrs = !legal(&attrs, &o);
                    if too_wide || bad_level || bad_attrs {
                        let ok = matches!(result, Err(Error::HpaTooWide { .. })) && too_wide
                            || matches!(result, Err(Error::InvalidLevel { .. })) && bad_level
                            || matches!(result, Err(Error::UnsupportedAttrs { .. })) && bad_attrs;
                        assert!(ok, "{op:?}: {result:?}");
                    } else {
                        match (model.map(start, size, hpa, attrs), result) {
                            (Ok(()), Ok(())) => {
                                for p in page..page + pages.min(64) {
                                    if y {
                                        young.insert(p);
                                        if attrs.perms.contains(Perms::WRITE) {
                                            dirty.insert(p);
                                        }
                                    }
                                }
                                let fwb_forced = o.fwb && attrs.ignore_guest_memtype;
                                if attrs.mem == MemType::WriteBack && !fwb_forced {
                                    want_cmo.push(HostEvent::CleanDcache(Hpa::new(hpa), size));
                                }
                                if attrs.perms.intersects(Perms::EXEC) && !fmt.caps().dic {
                                    want_cmo.push(HostEvent::InvalidateIcache(Hpa::new(hpa), size));
                                }
                                assert_eq!(cmo_events(&events), want_cmo, "{op:?}");
                            }
                            (Err(_), Err(Error::AlreadyMapped { .. })) => {}
                            other => panic!("{op:?}: {other:?}"),
                        }
                    }
                }
                Op::Unmap { page, pages } => {
                    result.unwrap();
                    model.unmap(start, size);
                    young.retain(|&p| p < page || p >= page + pages);
                    dirty.retain(|&p| p < page || p >= page + pages);
                    assert_eq!(cmo_events(&events), want_cmo, "{op:?}");
                }
                Op::Protect { perms, .. } => {
                    let p = PERMS[perms as usize];
                    let exec = p & Perms::EXEC;
                    let split_exec = !exec.is_empty() && exec != Perms::EXEC && !o.xnx;
                    let device_exec = !exec.is_empty()
                        && model.spans().any(|(s, span)| {
                            s < start + size
                                && span.end > start
                                && matches!(span.attrs.mem, MemType::Device | MemType::Uncached)
                        });
                    if split_exec || device_exec {
                        assert!(
                            matches!(result, Err(Error::UnsupportedAttrs { .. })),
                            "{op:?}: {result:?}"
                        );
                    } else {
                        result.unwrap();
                        if !fmt.caps().dic {
                            want_cmo = icache_runs(&model, start, start + size, p);
                        }
                        model.protect(start, size, p);
                        assert_eq!(cmo_events(&events), want_cmo, "{op:?}");
                    }
                }
                Op::Split { level, .. } => {
                    if level < cfg.leaf_levels() {
                        result.unwrap();
                    } else {
                        assert!(
                            matches!(result, Err(Error::InvalidLevel { .. })),
                            "{op:?}: {result:?}"
                        );
                    }
                    assert_eq!(cmo_events(&events), want_cmo, "{op:?}");
                }
                Op::Collapse { .. } => {
                    result.unwrap();
                    assert_eq!(cmo_events(&events), want_cmo, "{op:?}");
                }
                Op::Access { .. } => unreachable!(),
            }
            assert_eq!(
                *table.host().cmo_too_late.borrow(),
                Vec::<u64>::new(),
                "cache maintenance after a change, in {op:?}"
            );

            // Break-before-make: a leaf that changed output address, block size or MemAttr was
            // a Translation fault in some flush covering it during the operation.
            for (g, before) in table.host().before.borrow().iter() {
                let after = peek(&host, &fmt, root, *g);
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
            let after_tables = tables_under(cfg, &table, start, size);
            for (pa, (gpa, span)) in &before_tables {
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

        for &g in &points {
            assert_eq!(
                peek(&host, &fmt, root, g).seen,
                expected(&model, &fmt, g),
                "gpa {g:#x} after {op:?}"
            );
        }
        for &p in &young {
            let m = table
                .query(Gpa::new(p << shift))
                .unwrap()
                .expect("young page is mapped");
            assert_eq!(
                m.ad.accessed,
                Some(true),
                "accessed lost at page {p:#x} after {op:?}"
            );
        }
        for &p in &dirty {
            let m = table
                .query(Gpa::new(p << shift))
                .unwrap()
                .expect("dirty page is mapped");
            assert_eq!(
                m.ad.dirty,
                Some(true),
                "dirty lost at page {p:#x} after {op:?}"
            );
        }
        let s = table.stats();
        assert_eq!(
            host.outstanding_bytes() as u64,
            s.table_bytes + s.cached_bytes,
            "leak after {op:?}"
        );
    }
    drop(table);
    assert_eq!(host.outstanding_tables(), 0, "teardown leaked");
    let last_flush_before_free =
        host.take_events()
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
    young: Young,
) -> Cfg {
    let fmt = Stage2::new(caps, opts).unwrap();
    Cfg {
        space: 1 << (u32::from(opts.ipa_bits) - opts.granule.shift()),
        fmt,
        window_base,
        window_size,
        young,
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
    let c = cfg(opts, caps(48), LOW_WINDOW, 48 * MIB, Young::Any);
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
        Young::Never,
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
    let c = cfg(opts, caps(52), HIGH_WINDOW, 48 * MIB, Young::Any);
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
    let c = cfg(opts, c, LOW_WINDOW, 16 * MIB, Young::ReadOnly);
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
    let c = cfg(opts, caps(48), LOW_WINDOW, 16 * MIB, Young::Any);
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
        Young::Never,
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
    let c = cfg(opts, caps(52), HIGH_WINDOW, 16 * MIB, Young::Any);
    assert_eq!((c.fmt.start_level(), c.fmt.concatenated_tables()), (1, 1));
    c
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn k4_ipa40_two_concatenated_l1_pages_hw_dirty_xnx_matches_model(ops in ops(&k4_ipa40())) {
        run(&k4_ipa40(), ops);
    }

    #[test]
    fn k4_ipa48_software_access_flag_matches_model(ops in ops(&k4_ipa48())) {
        run(&k4_ipa48(), ops);
    }

    #[test]
    fn k4_ipa52_lpa2_sixteen_concatenated_l0_pages_fwb_matches_model(ops in ops(&k4_ipa52_lpa2())) {
        run(&k4_ipa52_lpa2(), ops);
    }

    #[test]
    fn k16_ipa40_sixteen_concatenated_l2_pages_hw_access_dic_matches_model(ops in ops(&k16_ipa40())) {
        run(&k16_ipa40(), ops);
    }

    #[test]
    fn k16_ipa47_hw_dirty_fwb_xnx_matches_model(ops in ops(&k16_ipa47())) {
        run(&k16_ipa47(), ops);
    }

    #[test]
    fn k64_ipa42_two_levels_software_matches_model(ops in ops(&k64_ipa42())) {
        run(&k64_ipa42(), ops);
    }

    #[test]
    fn k64_ipa52_lpa_52bit_output_hw_dirty_matches_model(ops in ops(&k64_ipa52())) {
        run(&k64_ipa52(), ops);
    }
}
