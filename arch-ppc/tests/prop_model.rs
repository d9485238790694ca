//! Model properties for the Power radix partition-scoped format in the 4K geometry (13/9/9/9)
//! and the 64K geometry (13/9/9/5, 256-byte leaf tables).
//!
//! Random map/unmap/protect/split/collapse/access sequences run in four 2 GiB windows of the
//! 52-bit guest real space (the bottom, a quarter and half-way up, and the top: root index 8191).
//! After every step every touched address translates through the independent big-endian walker
//! (`tdp_walkers::radix`, from the Power ISA Book III radix rules) exactly as the reference model
//! says, so an entry stored in the wrong byte order cannot pass; allocation failure injected at
//! every allocation point leaves every walk and the host's memory as they were; reference and
//! change bits, preset or set by the walker's hardware update, are never lost (checked with the
//! walker in "no R/C update" mode: a referenced page must not fault for R/C); teardown frees every
//! table, the 64 KiB root and the 256-byte leaf tables included.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tdp_arch_ppc::{Radix, RadixGranule, RadixOptions};
use tdp_core::testing::{inject, HeapHost, Model};
use tdp_core::{Attrs, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, Table};
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

/// Sizes in pages of the geometry's page size.
#[derive(Copy, Clone, Debug)]
struct Space {
    granule: RadixGranule,
    /// log2 of the page size.
    shift: u32,
    /// Pages per 2 MiB.
    l1: u64,
    /// Pages per 1 GiB.
    l2: u64,
}

impl Space {
    fn new(granule: RadixGranule) -> Space {
        let shift = match granule {
            RadixGranule::Page4K => 12,
            RadixGranule::Page64K => 16,
        };
        Space {
            granule,
            shift,
            l1: (2 << 20) >> shift,
            l2: (1 << 30) >> shift,
        }
    }

    /// Each window is 2 GiB.
    fn region(&self) -> u64 {
        2 * self.l2
    }

    /// The busy start of each window: 8 MiB.
    fn hot(&self) -> u64 {
        4 * self.l1
    }

    fn region_base(&self, region: u8) -> u64 {
        let total = 1u64 << (TREE_BITS - self.shift);
        [0, total / 4, total / 2, total - self.region()][region as usize]
    }

    fn format(&self) -> Radix {
        Radix::new(RadixOptions {
            granule: self.granule,
            pa_bits: PA_BITS,
            lpid_bits: 12,
        })
        .unwrap()
    }

    /// The smallest table: the host's metadata granule.
    fn table_granule(&self) -> usize {
        match self.granule {
            RadixGranule::Page4K => 4096,
            RadixGranule::Page64K => 256,
        }
    }
}

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

/// What the hardware does with one guest address.
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

const RC_HW: RadixCaps = RadixCaps { rc_update: true };
const RC_FAULT: RadixCaps = RadixCaps { rc_update: false };

fn peek(host: &HeapHost, pate: u64, gpa: u64) -> Seen {
    let mut seen = Seen {
        hpa: None,
        perms: Perms::empty(),
        mem: None,
    };
    for (access, perm) in ACCESSES {
        match radix::peek(&Phys(host), pate, &RC_HW, gpa, access) {
            Ok(t) => {
                assert!(seen.hpa.is_none() || seen.hpa == Some(t.hpa));
                seen.hpa = Some(t.hpa);
                seen.perms |= perm;
                seen.mem = Some(match t.att {
                    0b00 => MemType::WriteBack,
                    0b11 => MemType::WriteCombining,
                    0b10 => MemType::Uncached,
                    a => panic!("walker saw ATT {a:#b}"),
                });
            }
            Err(RadixFault::NotValid { .. } | RadixFault::Permission { .. }) => {}
            Err(e) => panic!("radix walk of {gpa:#x} ({access:?}): {e}"),
        }
    }
    seen
}

/// One raw walk (whatever it returns, faults included), to compare before and after a failure.
fn raw_walk(host: &HeapHost, pate: u64, gpa: u64) -> Result<radix::RadixTranslation, RadixFault> {
    radix::peek(&Phys(host), pate, &RC_HW, gpa, Access::Read)
}

/// Whether `access` passes without an R/C update: `Some(false)` for the "set RC" fault, `None` if
/// the access is refused for another reason.
fn rc_ok(host: &HeapHost, pate: u64, gpa: u64, access: Access) -> Option<bool> {
    match radix::peek(&Phys(host), pate, &RC_FAULT, gpa, access) {
        Ok(_) => Some(true),
        Err(RadixFault::NeedsRc { .. }) => Some(false),
        Err(_) => None,
    }
}

fn expected(model: &Model, gpa: u64) -> Seen {
    match model.translate(gpa) {
        Some((hpa, attrs)) if !attrs.perms.is_empty() => Seen {
            hpa: Some(hpa),
            perms: attrs.perms,
            mem: Some(match attrs.mem {
                MemType::Device => MemType::Uncached,
                m => m,
            }),
        },
        // Unmapped, or mapped with no access at all: every access faults.
        _ => Seen {
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
    Perms::READ.union(Perms::EXEC_SUPER),
];
const MEMS: [MemType; 5] = [
    MemType::WriteBack,
    MemType::WriteCombining,
    MemType::Uncached,
    MemType::Device,
    MemType::WriteProtect,
];

/// Operations as (window, offset in pages) pairs; `page` carries the window in bits 62:61.
///
/// Most operations land in the first 8 MiB of a window (the bottom window most often), so that
/// they meet each other; some land anywhere in the window or on a 1 GiB boundary. Sizes, host
/// addresses and options are biased so that 2 MiB tables fill up with same-attribute small
/// leaves ("fill"), so that huge leaves are cut by later operations, and so that collapse finds
/// something to do.
fn ops(sp: Space) -> impl Strategy<Value = Vec<Op>> {
    let (l1, l2, hot, region) = (sp.l1, sp.l2, sp.hot(), sp.region());
    let window = prop_oneof![3 => Just(0u8), 2 => 1u8..4];
    let page = (
        window.clone(),
        prop_oneof![
            2 => 0..hot,
            4 => (0..hot / l1).prop_map(move |x| x * l1),
            1 => (0..region / l2).prop_map(move |x| x * l2),
            1 => 0..region,
        ],
    )
        .prop_map(|(r, off)| (u64::from(r) << 61) | off);
    let pages = prop_oneof![3 => 1u64..16, 3 => Just(l1), 1 => 1u64..(3 * l1), 1 => Just(l2)];
    // u64::MAX: host address follows the guest address (contiguous, 1 GiB-aligned).
    let hpa_page = prop_oneof![
        4 => Just(u64::MAX),
        1 => 0u64..(1 << 30),
        1 => (0u64..(1 << 21)).prop_map(move |x| x * l1)
    ];
    let perms = prop_oneof![6 => 0u8..6, 1 => 6u8..8];
    let mem = prop_oneof![3 => Just(0u8), 2 => 1u8..5];
    let cap = prop_oneof![1 => Just(0u8), 1 => 0u8..4];
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
    let fill = (window.clone(), 0..hot / l1, 1u64..3, 0u8..4, any::<bool>()).prop_map(
        move |(r, block, blocks, perms, young)| Op::Map {
            page: (u64::from(r) << 61) | (block * l1),
            pages: blocks * l1,
            hpa_page: u64::MAX,
            perms,
            mem: 0,
            cap: 0,
            young,
        },
    );
    // Collapse over the whole window, or over the 2 MiB spans a range touches, or a raw range.
    let collapse = prop_oneof![
        2 => window.prop_map(move |r| Op::Collapse { page: u64::from(r) << 61, pages: region }),
        2 => (page.clone(), pages.clone()).prop_map(move |(page, pages)| {
            let start = page & !(l1 - 1);
            Op::Collapse { page: start, pages: (page + pages).div_ceil(l1) * l1 - start }
        }),
        1 => (page.clone(), pages.clone()).prop_map(|(page, pages)| Op::Collapse { page, pages }),
    ];
    let op = prop_oneof![
        3 => map,
        2 => fill,
        2 => (page.clone(), pages.clone()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => (page.clone(), pages.clone(), perms)
            .prop_map(|(page, pages, perms)| Op::Protect { page, pages, perms }),
        1 => (page.clone(), pages, 0u8..2)
            .prop_map(|(page, pages, level)| Op::Split { page, pages, level }),
        2 => collapse,
        2 => (page, any::<bool>()).prop_map(|(page, write)| Op::Access { page, write }),
    ];
    proptest::collection::vec(op, 1..32)
}

fn attrs_of(perms: u8, mem: u8) -> Attrs {
    Attrs {
        perms: PERMS[perms as usize],
        mem: MEMS[mem as usize],
        ignore_guest_memtype: false,
    }
}

struct Run<'a> {
    sp: Space,
    host: &'a HeapHost,
}

impl Run<'_> {
    fn range(&self, page: u64, pages: u64) -> GpaRange {
        GpaRange::new(Gpa::new(page << self.sp.shift), pages << self.sp.shift).unwrap()
    }

    fn gpa(&self, page: u64) -> u64 {
        page << self.sp.shift
    }

    fn apply(&self, t: &mut Table<Radix, &HeapHost>, op: &Op) -> Result<(), Error> {
        let shift = self.sp.shift;
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
                self.range(page, pages),
                Hpa::new(hpa_page << shift),
                attrs_of(perms, mem),
                MapOptions {
                    max_level: Level::new(cap)
                        .filter(|l| tdp_core::PteFormat::geometry(t.format()).is_leaf_level(*l)),
                    young_dirty: young,
                },
            ),
            Op::Unmap { page, pages } => t.unmap(self.range(page, pages)),
            Op::Protect { page, pages, perms } => {
                t.protect(self.range(page, pages), PERMS[perms as usize])
            }
            Op::Split { page, pages, level } => {
                t.split(self.range(page, pages), Level::new(level).unwrap())
            }
            Op::Collapse { page, pages } => t.collapse(self.range(page, pages)),
            Op::Access { .. } => Ok(()),
        }
    }

    /// Resolves the window of `op` and clips it to the window.
    fn resolve(&self, op: Op) -> Op {
        let sp = self.sp;
        let place = |page: u64| {
            let base = sp.region_base((page >> 61) as u8);
            let off = page & ((1 << 61) - 1);
            (base + off, base + sp.region())
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
                    page % (1 << (u32::from(PA_BITS) - sp.shift - 2)) + sp.l2
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
}

fn run(granule: RadixGranule, ops: Vec<Op>) {
    let sp = Space::new(granule);
    let host = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, sp.table_granule());
    let fmt = sp.format();
    let mut table = Table::new(fmt.clone(), &host).unwrap();
    let pate = fmt
        .partition_table_entry(table.root(), Gpa::new(0x10_0000), 4)
        .unwrap()
        .dw0;
    let r = Run { sp, host: &host };
    let mut model = Model::new();
    let mut points: BTreeSet<u64> = BTreeSet::new();
    // Pages whose R (and C) are known set: preset by a young map or set by the walker's hardware
    // update. Every later operation must keep them (split copies, collapse merges, protect keeps).
    let mut young: BTreeSet<u64> = BTreeSet::new();
    let mut dirty: BTreeSet<u64> = BTreeSet::new();
    let region = sp.region();

    for op in ops {
        let op = r.resolve(op);
        let (page, pages) = match op {
            Op::Map { page, pages, .. }
            | Op::Unmap { page, pages }
            | Op::Protect { page, pages, .. }
            | Op::Split { page, pages, .. }
            | Op::Collapse { page, pages } => (page, pages),
            Op::Access { page, .. } => (page, 1),
        };
        let region_start = page - page % region;
        for p in [
            page,
            page + pages / 2,
            page + pages - 1,
            page + pages,
            page.wrapping_sub(1),
        ] {
            if p >= region_start && p < region_start + region {
                points.insert(r.gpa(p) | 0x5a8);
            }
        }

        if let Op::Access { page, write } = op {
            let gpa = r.gpa(page) | 0x10;
            let allowed = expected(&model, gpa).perms.contains(if write {
                Perms::WRITE
            } else {
                Perms::READ
            });
            let access = if write { Access::Write } else { Access::Read };
            let t = radix::translate(&mut Phys(r.host), pate, &RC_HW, gpa, access);
            assert_eq!(t.is_ok(), allowed, "{op:?}: {t:?}");
            if t.is_ok() {
                young.insert(page);
                if write {
                    dirty.insert(page);
                }
            }
        } else {
            // Allocation failure at every point: the k-th allocation fails, k = 0, 1, ... until
            // the operation no longer reaches k allocations.
            let before: Vec<_> = points.iter().map(|&g| raw_walk(&host, pate, g)).collect();
            // Allocation failure at every point (tdp_core::testing::inject): each failing run must
            // leave the host's memory, the tree and every touched translation as they were.
            let result = inject::at_every_allocation(
                &host,
                &mut table,
                |t| r.apply(t, &op),
                |_, k| {
                    for (&g, w) in points.iter().zip(&before) {
                        assert_eq!(
                            &raw_walk(&host, pate, g),
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
                    let ok = legal(&attrs);
                    assert_eq!(
                        tdp_core::PteFormat::check_attrs(&fmt, &attrs).is_ok(),
                        ok,
                        "{attrs:?}"
                    );
                    let m = if ok {
                        model.map(r.gpa(page), r.gpa(pages), r.gpa(hpa_page), attrs)
                    } else {
                        Ok(())
                    };
                    match (ok, m, result) {
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
                    model.unmap(r.gpa(page), r.gpa(pages));
                    young.retain(|&p| p < page || p >= page + pages);
                    dirty.retain(|&p| p < page || p >= page + pages);
                }
                Op::Protect { page, pages, perms } => {
                    let p = PERMS[perms as usize];
                    // Every leaf in the range must accept the permissions with its memory type
                    // (guarded memory cannot be executable).
                    let (lo, hi) = (r.gpa(page), r.gpa(page + pages));
                    let all_ok = legal(&Attrs::normal(p))
                        && model
                            .spans()
                            .filter(|&(s, span)| s < hi && span.end > lo)
                            .all(|(_, span)| {
                                legal(&Attrs {
                                    perms: p,
                                    ..span.attrs
                                })
                            });
                    if all_ok {
                        result.unwrap();
                        model.protect(lo, hi - lo, p);
                    } else {
                        assert!(
                            matches!(result, Err(Error::UnsupportedAttrs { .. })),
                            "{op:?}: {result:?}"
                        );
                    }
                }
                Op::Split { .. } | Op::Collapse { .. } => result.unwrap(),
                Op::Access { .. } => unreachable!(),
            }
        }

        for &g in &points {
            assert_eq!(
                peek(&host, pate, g),
                expected(&model, g),
                "gpa {g:#x} after {op:?}"
            );
            // The engine's own view agrees, down to Device vs Uncached and no-access leaves.
            let q = table
                .query(Gpa::new(g))
                .unwrap()
                .map(|m| (m.hpa.raw(), m.attrs));
            assert_eq!(q, model.translate(g), "query {g:#x} after {op:?}");
        }
        for &p in &young {
            let gpa = r.gpa(p);
            let perms = expected(&model, gpa).perms;
            let access = if perms.contains(Perms::READ) {
                Access::Read
            } else if perms.contains(Perms::EXEC) {
                Access::ExecUser
            } else {
                continue; // a no-access leaf: nothing can reach it
            };
            assert_ne!(
                rc_ok(&host, pate, gpa, access),
                Some(false),
                "reference lost at page {p:#x} after {op:?}"
            );
        }
        for &p in &dirty {
            let gpa = r.gpa(p);
            if expected(&model, gpa).perms.contains(Perms::WRITE) {
                assert_eq!(
                    rc_ok(&host, pate, gpa, Access::Write),
                    Some(true),
                    "change lost at page {p:#x} after {op:?}"
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn radix_4k_matches_model(ops in ops(Space::new(RadixGranule::Page4K))) {
        run(RadixGranule::Page4K, ops);
    }

    #[test]
    fn radix_64k_matches_model(ops in ops(Space::new(RadixGranule::Page64K))) {
        run(RadixGranule::Page64K, ops);
    }
}
