//! Model properties for the G-stage format in Sv39x4, Sv48x4 and Sv57x4, with hardware (Svadu)
//! and software (Svade) A/D, with and without Svpbmt.
//!
//! Random map/unmap/protect/split/collapse/access sequences run in four 2 GiB windows of the
//! guest-physical space: the bottom, a quarter and half-way up (root index bits 39 and 40 for
//! Sv39x4, the two extra root bits of every x4 scheme), and the top (root index 2047). After every
//! step every touched address translates through the independent walker (`tdp_walkers::gstage`,
//! written from the Privileged spec) exactly as the reference model says; allocation failure
//! injected at every allocation point leaves every walk and the host's memory as they were;
//! accessed/dirty state set by preset or by the walker's hardware update is never lost (checked
//! with the walker in Svade mode: a young page must not fault for A/D); teardown frees every
//! table, the 16 KiB root included.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tdp_arch_riscv::{Gstage, GstageCaps, GstageMode, GstageOptions};
use tdp_core::testing::{inject, HeapHost, Model};
use tdp_core::{Attrs, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, Table};
use tdp_walkers::gstage::{self, GstageFault, GuestPageFaultReason};
use tdp_walkers::{Access, PhysMem};

const WINDOW_BASE: u64 = 0x8_4000_0000;
const WINDOW_SIZE: u64 = 24 << 20;
const PA_BITS: u8 = 48;
const VMID: u16 = 0x2a;
/// 4 KiB pages per 2 MiB and per 1 GiB.
const L1: u64 = 512;
const L2: u64 = 512 * 512;
/// Each window is 2 GiB (two root entries in Sv39x4).
const REGION: u64 = 2 * L2;
/// The busy start of each window: 8 MiB.
const HOT: u64 = 4 * L1;

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

#[derive(Copy, Clone, Debug)]
struct Config {
    mode: GstageMode,
    svadu: bool,
    svpbmt: bool,
    svvptc: bool,
}

impl Config {
    fn format(&self) -> Gstage {
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

    fn space_pages(&self) -> u64 {
        1 << (self.mode.gpa_bits() - 12)
    }

    fn region_base(&self, region: u8) -> u64 {
        let total = self.space_pages();
        [0, total / 4, total / 2, total - REGION][region as usize]
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
}

/// What the hardware does with one guest address: the output address, the accesses it allows,
/// the memory type (permission and A/D being separate checks, A/D is left out: the walker runs
/// with hardware A/D updating and does not write).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    hpa: Option<u64>,
    perms: Perms,
    mem: Option<MemType>,
}

const ACCESSES: [(Access, Perms); 4] = [
    (Access::Read, Perms::READ),
    (Access::Write, Perms::WRITE),
    (Access::ExecSupervisor, Perms::EXEC_SUPER),
    (Access::ExecUser, Perms::EXEC_USER),
];

fn peek(cfg: &Config, host: &HeapHost, hgatp: u64, gpa: u64) -> Seen {
    let mut seen = Seen {
        hpa: None,
        perms: Perms::empty(),
        mem: None,
    };
    for (access, perm) in ACCESSES {
        match gstage::peek(&Phys(host), hgatp, &cfg.walker(true), gpa, access) {
            Ok(t) => {
                assert!(seen.hpa.is_none() || seen.hpa == Some(t.hpa));
                assert!(t.user, "G-stage leaf without U");
                seen.hpa = Some(t.hpa);
                seen.perms |= perm;
                seen.mem = Some(match t.pbmt {
                    0 => MemType::WriteBack,
                    1 => MemType::WriteCombining,
                    2 => MemType::Uncached,
                    p => panic!("walker accepted PBMT {p}"),
                });
            }
            Err(GstageFault::GuestPageFault(f))
                if matches!(
                    f.reason,
                    GuestPageFaultReason::NotValid | GuestPageFaultReason::Permission
                ) => {}
            Err(e) => panic!("G-stage walk of {gpa:#x} ({access:?}): {e}"),
        }
    }
    seen
}

/// One raw walk (whatever it returns, faults included), to compare before and after a failure.
fn raw_walk(
    cfg: &Config,
    host: &HeapHost,
    hgatp: u64,
    gpa: u64,
) -> Result<gstage::GstageTranslation, GstageFault> {
    gstage::peek(&Phys(host), hgatp, &cfg.walker(true), gpa, Access::Read)
}

/// Whether `access` passes the Svade A/D check: `Some(false)` for an A/D guest-page fault,
/// `None` if the access is refused for another reason.
fn ad_ok(cfg: &Config, host: &HeapHost, hgatp: u64, gpa: u64, access: Access) -> Option<bool> {
    match gstage::peek(&Phys(host), hgatp, &cfg.walker(false), gpa, access) {
        Ok(_) => Some(true),
        Err(GstageFault::GuestPageFault(f)) if f.reason == GuestPageFaultReason::AccessedDirty => {
            Some(false)
        }
        Err(_) => None,
    }
}

fn expected(model: &Model, gpa: u64) -> Seen {
    match model.translate(gpa) {
        Some((hpa, attrs)) => Seen {
            hpa: Some(hpa),
            perms: attrs.perms,
            mem: Some(match attrs.mem {
                MemType::Device => MemType::Uncached,
                m => m,
            }),
        },
        None => Seen {
            hpa: None,
            perms: Perms::empty(),
            mem: None,
        },
    }
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        page: u64,
        pages: u64,
        hpa_page: u64,
        perms: u8,
        mem: u8,
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
const MEMS: [MemType; 5] = [
    MemType::WriteBack,
    MemType::WriteCombining,
    MemType::Uncached,
    MemType::Device,
    MemType::WriteThrough,
];

/// Operations as (window, offset in pages) pairs; `page` carries the window in bits 62:61.
///
/// Most operations land in the first 8 MiB of a window (the bottom window most often), so that
/// they meet each other; some land anywhere in the window or on a 1 GiB boundary. Sizes, host
/// addresses and options are biased so that 2 MiB tables fill up with same-attribute 4 KiB
/// leaves ("fill": what a guest faulting in a huge page one 4 KiB page at a time produces), so
/// that huge leaves are cut by later operations, and so that collapse finds something to do.
fn ops(levels: u8) -> impl Strategy<Value = Vec<Op>> {
    let window = prop_oneof![3 => Just(0u8), 2 => 1u8..4];
    let page = (
        window.clone(),
        prop_oneof![
            2 => 0..HOT,
            4 => (0..HOT / L1).prop_map(|x| x * L1),
            1 => (0..REGION / L2).prop_map(|x| x * L2),
            1 => 0..REGION,
        ],
    )
        .prop_map(|(r, off)| (u64::from(r) << 61) | off);
    let pages = prop_oneof![3 => 1u64..16, 3 => Just(L1), 1 => 1u64..1600, 1 => Just(L2)];
    // u64::MAX: host address follows the guest address (contiguous, 1 GiB-aligned), so adjacent
    // maps can collapse and collapse meets tables whose attributes differ.
    let hpa_page = prop_oneof![
        4 => Just(u64::MAX),
        1 => 0u64..(1 << 30),
        1 => (0u64..(1 << 21)).prop_map(|x| x * L1)
    ];
    let perms = prop_oneof![6 => 0u8..5, 1 => 5u8..8];
    let mem = prop_oneof![3 => Just(0u8), 2 => 1u8..5];
    let cap = prop_oneof![1 => Just(0u8), 1 => 0..levels];
    let map = (
        page.clone(),
        pages.clone(),
        hpa_page,
        perms.clone(),
        mem,
        cap,
        any::<bool>(),
    )
        .prop_map(|(page, pages, hpa_page, perms, mem, cap, young)| Op::Map {
            page,
            pages,
            hpa_page,
            perms,
            mem,
            cap,
            young,
        });
    let fill = (window.clone(), 0..HOT / L1, 1u64..3, 0u8..4, any::<bool>()).prop_map(
        |(r, block, blocks, perms, young)| Op::Map {
            page: (u64::from(r) << 61) | (block * L1),
            pages: blocks * L1,
            hpa_page: u64::MAX,
            perms,
            mem: 0,
            cap: 0,
            young,
        },
    );
    // Collapse over the whole window, or over the 2 MiB spans a range touches, or a raw range.
    let collapse = prop_oneof![
        2 => window.prop_map(|r| Op::Collapse { page: u64::from(r) << 61, pages: REGION }),
        2 => (page.clone(), pages.clone()).prop_map(|(page, pages)| {
            let start = page & !(L1 - 1);
            Op::Collapse { page: start, pages: (page + pages).div_ceil(L1) * L1 - start }
        }),
        1 => (page.clone(), pages.clone()).prop_map(|(page, pages)| Op::Collapse { page, pages }),
    ];
    let op = prop_oneof![
        3 => map,
        2 => fill,
        2 => (page.clone(), pages.clone()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => (page.clone(), pages.clone(), perms).prop_map(|(page, pages, perms)| Op::Protect { page, pages, perms }),
        1 => (page.clone(), pages, 0u8..2).prop_map(|(page, pages, level)| Op::Split { page, pages, level }),
        2 => collapse,
        2 => (page, any::<bool>()).prop_map(|(page, write)| Op::Access { page, write }),
    ];
    proptest::collection::vec(op, 1..32)
}

fn range(page: u64, pages: u64) -> GpaRange {
    GpaRange::new(Gpa::new(page << 12), pages << 12).unwrap()
}

fn attrs_of(perms: u8, mem: u8) -> Attrs {
    Attrs {
        perms: PERMS[perms as usize],
        mem: MEMS[mem as usize],
        ignore_guest_memtype: false,
    }
}

fn apply(t: &mut Table<Gstage, &HeapHost>, op: &Op) -> Result<(), Error> {
    match *op {
        Op::Map {
            page,
            pages,
            hpa_page,
            perms,
            mem,
            cap,
            young,
        } => t.map_with(
            range(page, pages),
            Hpa::new(hpa_page << 12),
            attrs_of(perms, mem),
            MapOptions {
                max_level: Level::new(cap)
                    .filter(|l| tdp_core::PteFormat::geometry(t.format()).is_leaf_level(*l)),
                young_dirty: young,
            },
        ),
        Op::Unmap { page, pages } => t.unmap(range(page, pages)),
        Op::Protect { page, pages, perms } => t.protect(range(page, pages), PERMS[perms as usize]),
        Op::Split { page, pages, level } => t.split(range(page, pages), Level::new(level).unwrap()),
        Op::Collapse { page, pages } => t.collapse(range(page, pages)),
        Op::Access { .. } => Ok(()),
    }
}

/// Resolves the window of `op` and clips it to the window.
fn resolve(cfg: &Config, op: Op) -> Op {
    let place = |page: u64| {
        let base = cfg.region_base((page >> 61) as u8);
        let off = page & ((1 << 61) - 1);
        (base + off, base + REGION)
    };
    match op {
        Op::Map {
            page,
            pages,
            hpa_page,
            perms,
            mem,
            cap,
            young,
        } => {
            let (page, end) = place(page);
            let pages = pages.min(end - page);
            // Guest RAM backed by one host range: keeps 1 GiB alignment and fits PA_BITS.
            let hpa_page = if hpa_page == u64::MAX {
                page % (1 << (PA_BITS - 12 - 2)) + L2
            } else {
                hpa_page
            };
            Op::Map {
                page,
                pages,
                hpa_page,
                perms,
                mem,
                cap,
                young,
            }
        }
        Op::Unmap { page, pages } => {
            let (page, end) = place(page);
            Op::Unmap {
                page,
                pages: pages.min(end - page),
            }
        }
        Op::Protect { page, pages, perms } => {
            let (page, end) = place(page);
            Op::Protect {
                page,
                pages: pages.min(end - page),
                perms,
            }
        }
        Op::Split { page, pages, level } => {
            let (page, end) = place(page);
            Op::Split {
                page,
                pages: pages.min(end - page),
                level,
            }
        }
        Op::Collapse { page, pages } => {
            let (page, end) = place(page);
            Op::Collapse {
                page,
                pages: pages.min(end - page),
            }
        }
        Op::Access { page, write } => Op::Access {
            page: place(page).0,
            write,
        },
    }
}

fn run(cfg: Config, ops: Vec<Op>) {
    let host = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 4096);
    let fmt = cfg.format();
    let mut table = Table::new(fmt.clone(), &host).unwrap();
    let hgatp = fmt.hgatp(table.root(), VMID).unwrap();
    let mut model = Model::new();
    let mut points: BTreeSet<u64> = BTreeSet::new();
    // Pages whose A (and D) are known set: preset by a young map or set by the walker's hardware
    // update. Every later operation must keep them (split copies, collapse merges, protect keeps).
    let mut young: BTreeSet<u64> = BTreeSet::new();
    let mut dirty: BTreeSet<u64> = BTreeSet::new();

    for op in ops {
        let op = resolve(&cfg, op);
        let (page, pages) = match op {
            Op::Map { page, pages, .. }
            | Op::Unmap { page, pages }
            | Op::Protect { page, pages, .. }
            | Op::Split { page, pages, .. }
            | Op::Collapse { page, pages } => (page, pages),
            Op::Access { page, .. } => (page, 1),
        };
        let region_start = page - page % REGION;
        for p in [
            page,
            page + pages / 2,
            page + pages - 1,
            page + pages,
            page.wrapping_sub(1),
        ] {
            if p >= region_start && p < region_start + REGION {
                points.insert(p << 12 | 0x5a8);
            }
        }

        if let Op::Access { page, write } = op {
            let gpa = page << 12 | 0x10;
            let allowed = expected(&model, gpa).perms.contains(if write {
                Perms::WRITE
            } else {
                Perms::READ
            });
            let access = if write { Access::Write } else { Access::Read };
            let r = gstage::translate(&mut Phys(&host), hgatp, &cfg.walker(cfg.svadu), gpa, access);
            match r {
                Ok(_) => assert!(allowed, "{op:?} translated"),
                Err(GstageFault::GuestPageFault(f))
                    if f.reason == GuestPageFaultReason::AccessedDirty =>
                {
                    assert!(allowed && !cfg.svadu, "{op:?}: {f:?}");
                    let known = young.contains(&page) && (!write || dirty.contains(&page));
                    assert!(!known, "{op:?}: A/D fault on a page known young/dirty");
                }
                Err(e) => assert!(!allowed, "{op:?} refused: {e}"),
            }
            if r.is_ok() {
                young.insert(page);
                if write {
                    dirty.insert(page);
                }
            }
        } else {
            // Allocation failure at every point: the k-th allocation fails, k = 0, 1, ... until
            // the operation no longer reaches k allocations.
            let before: Vec<_> = points
                .iter()
                .map(|&g| raw_walk(&cfg, &host, hgatp, g))
                .collect();
            // Allocation failure at every point (tdp_core::testing::inject): each failing run must
            // leave the host's memory, the tree and every touched translation as they were.
            let result = inject::at_every_allocation(
                &host,
                &mut table,
                |t| apply(t, &op),
                |_, k| {
                    for (&g, w) in points.iter().zip(&before) {
                        assert_eq!(
                            &raw_walk(&cfg, &host, hgatp, g),
                            w,
                            "failed {op:?} at {k} changed {g:#x}"
                        );
                    }
                },
            );

            match op {
                Op::Map {
                    page,
                    pages,
                    hpa_page,
                    perms,
                    mem,
                    young: y,
                    ..
                } => {
                    let attrs = attrs_of(perms, mem);
                    let legal = cfg.legal(&attrs);
                    assert_eq!(fmt_accepts(&fmt, &attrs), legal, "{attrs:?}");
                    let m = if legal {
                        model.map(page << 12, pages << 12, hpa_page << 12, attrs)
                    } else {
                        Ok(())
                    };
                    match (legal, m, result) {
                        (false, _, Err(Error::UnsupportedAttrs { .. })) => {}
                        (true, Ok(()), Ok(())) => {
                            if y {
                                for p in page..page + pages.min(64) {
                                    young.insert(p);
                                    if attrs.perms.contains(Perms::WRITE) {
                                        dirty.insert(p);
                                    }
                                }
                            }
                        }
                        (true, Err(_), Err(Error::AlreadyMapped { .. })) => {}
                        other => panic!("{op:?}: {other:?}"),
                    }
                }
                Op::Unmap { page, pages } => {
                    result.unwrap();
                    model.unmap(page << 12, pages << 12);
                    young.retain(|&p| p < page || p >= page + pages);
                    dirty.retain(|&p| p < page || p >= page + pages);
                }
                Op::Protect { page, pages, perms } => {
                    let p = PERMS[perms as usize];
                    if cfg.legal(&Attrs::normal(p)) {
                        result.unwrap();
                        model.protect(page << 12, pages << 12, p);
                    } else {
                        assert!(matches!(result, Err(Error::UnsupportedAttrs { .. })));
                    }
                }
                Op::Split { .. } | Op::Collapse { .. } => result.unwrap(),
                Op::Access { .. } => unreachable!(),
            }
        }

        for &g in &points {
            assert_eq!(
                peek(&cfg, &host, hgatp, g),
                expected(&model, g),
                "gpa {g:#x} after {op:?}"
            );
            // The engine's own view agrees, down to Device vs Uncached.
            let q = table
                .query(Gpa::new(g))
                .unwrap()
                .map(|m| (m.hpa.raw(), m.attrs));
            assert_eq!(q, model.translate(g), "query {g:#x} after {op:?}");
        }
        for &p in &young {
            let gpa = p << 12;
            let perms = expected(&model, gpa).perms;
            let access = if perms.contains(Perms::READ) {
                Access::Read
            } else {
                Access::ExecUser
            };
            assert_ne!(
                ad_ok(&cfg, &host, hgatp, gpa, access),
                Some(false),
                "accessed lost at page {p:#x} after {op:?}"
            );
        }
        for &p in &dirty {
            let gpa = p << 12;
            if expected(&model, gpa).perms.contains(Perms::WRITE) {
                assert_eq!(
                    ad_ok(&cfg, &host, hgatp, gpa, Access::Write),
                    Some(true),
                    "dirty lost at page {p:#x} after {op:?}"
                );
            }
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
}

fn fmt_accepts(fmt: &Gstage, attrs: &Attrs) -> bool {
    use tdp_core::PteFormat;
    fmt.check_attrs(attrs).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sv39x4_svade_svpbmt_matches_model(ops in ops(3)) {
        run(Config { mode: GstageMode::Sv39x4, svadu: false, svpbmt: true, svvptc: false }, ops);
    }

    #[test]
    fn sv48x4_svadu_svpbmt_svvptc_matches_model(ops in ops(4)) {
        run(Config { mode: GstageMode::Sv48x4, svadu: true, svpbmt: true, svvptc: true }, ops);
    }

    #[test]
    fn sv57x4_svadu_no_svpbmt_matches_model(ops in ops(5)) {
        run(Config { mode: GstageMode::Sv57x4, svadu: true, svpbmt: false, svvptc: false }, ops);
    }
}
