//! Model properties for LoongArch: random map/unmap/protect/split/collapse/access sequences in
//! two geometries (16 KiB pages with 3 levels and the software refill; 4 KiB pages with 4
//! levels and the hardware page-table walker). After every step every touched address
//! translates through the independent walker (`tdp_walkers::loongarch`, with KVM's fast path
//! applied to page-invalid and page-modification exceptions, as a guest would see it) exactly
//! as the reference model says; allocation failure injected at every allocation point leaves
//! the table as it was and leaks nothing; accessed/dirty state survives every operation that
//! must keep it; teardown frees every page (the invalid tables stay with the caller).

use std::collections::BTreeSet;

use proptest::prelude::*;
use tdp_arch_loongarch::{LoongArch, LoongArchConfig};
use tdp_core::testing::{inject, HeapHost, Model};
use tdp_core::{
    Attrs, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, PteFormat, Table,
};
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

struct Geo {
    cfg: LoongArchConfig,
    /// Smallest pages per huge (level-1) leaf.
    huge: u64,
}

fn sixteen_k_three_levels() -> Geo {
    Geo {
        cfg: LoongArchConfig::linux(14, 3, [0; 3]),
        huge: 2048,
    }
}

fn four_k_four_levels_hw_walker() -> Geo {
    let mut cfg = LoongArchConfig::linux(12, 4, [0; 3]);
    cfg.hardware_walker = true;
    Geo { cfg, huge: 512 }
}

/// What the guest sees at one address once KVM's fast path has run.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    hpa: Option<u64>,
    perms: Perms,
    mem: Option<MemType>,
}

fn mem_of_mat(mat: u8) -> MemType {
    match mat {
        0 => MemType::Uncached,
        1 => MemType::WriteBack,
        2 => MemType::WriteCombining,
        m => panic!("walker reported reserved MAT {m}"),
    }
}

struct Oracle {
    wcfg: LaWalkConfig,
}

impl Oracle {
    fn peek(&self, mem: &Mem<'_>, root: u64, gpa: u64) -> Seen {
        let mut seen = Seen {
            hpa: None,
            perms: Perms::empty(),
            mem: None,
        };
        for (access, perm) in [
            (Access::Read, Perms::READ),
            (Access::Write, Perms::WRITE),
            (Access::ExecUser, Perms::EXEC),
        ] {
            match walker::peek_after_fast_path(mem, root, &self.wcfg, gpa, access) {
                Ok(t) => {
                    assert!(seen.hpa.is_none() || seen.hpa == Some(t.hpa));
                    seen.hpa = Some(t.hpa);
                    seen.perms |= perm;
                    seen.mem = Some(mem_of_mat(t.mat));
                }
                Err(LaFault::Exception(_)) => {}
                Err(e) => panic!("walk of {gpa:#x} ({access:?}): {e:?}"),
            }
        }
        seen
    }

    /// The guest accesses `gpa`: the hardware (walker) and, on a page-invalid or
    /// page-modification exception, KVM's fast path, then the access again.
    fn access(&self, mem: &mut Mem<'_>, root: u64, gpa: u64, write: bool) -> bool {
        let access = if write { Access::Write } else { Access::Read };
        match walker::translate(mem, root, &self.wcfg, gpa, access) {
            Ok(_) => true,
            Err(LaFault::Exception(e))
                if e.code.is_page_invalid() || e.code == walker::LaExcCode::Pme =>
            {
                walker::kvm_fast_path(mem, root, &self.wcfg, gpa, write).unwrap()
                    && walker::translate(mem, root, &self.wcfg, gpa, access).is_ok()
            }
            Err(LaFault::Exception(_)) => false,
            Err(e) => panic!("access to {gpa:#x}: {e:?}"),
        }
    }
}

fn expected(model: &Model, gpa: u64) -> Seen {
    match model.translate(gpa) {
        Some((hpa, attrs)) if !attrs.perms.is_empty() => Seen {
            hpa: Some(hpa),
            perms: attrs.perms,
            mem: Some(attrs.mem),
        },
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
const MEMS: [MemType; 4] = [
    MemType::WriteBack,
    MemType::Uncached,
    MemType::WriteCombining,
    MemType::WriteThrough,
];

/// Operations over `space` pages (a power of two), biased to huge-leaf alignment and sizes.
fn ops(space: u64, huge: u64) -> impl Strategy<Value = Vec<Op>> {
    let page = prop_oneof![
        2 => 0..space,
        2 => (0..space / huge).prop_map(move |x| x * huge),
        1 => (0..(space / (huge * 8)).max(1)).prop_map(move |x| x * huge * 8),
    ];
    let pages = prop_oneof![
        3 => 1u64..16,
        2 => Just(huge),
        1 => 1u64..(huge * 3),
        1 => Just(huge * 8)
    ];
    // u64::MAX: host page = guest page + 2^18, so adjacent maps are contiguous.
    let hpa_page = prop_oneof![
        2 => Just(u64::MAX),
        1 => 0u64..(1 << 30),
        1 => (0u64..(1 << 20)).prop_map(move |x| x * huge)
    ];
    // The largest leaf level: the two leaf levels, or one the geometry does not have.
    let cap = prop_oneof![4 => 0u8..2, 1 => Just(4u8)];
    let op = prop_oneof![
        4 => (page.clone(), pages.clone(), hpa_page, 0u8..8, 0u8..4, cap, any::<bool>())
            .prop_map(|(page, pages, hpa_page, perms, mem, cap, young)| Op::Map { page, pages, hpa_page, perms, mem, cap, young }),
        2 => (page.clone(), pages.clone()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => (page.clone(), pages.clone(), 0u8..8).prop_map(|(page, pages, perms)| Op::Protect { page, pages, perms }),
        1 => (page.clone(), pages.clone(), 0u8..3).prop_map(|(page, pages, level)| Op::Split { page, pages, level }),
        1 => (page.clone(), pages).prop_map(|(page, pages)| Op::Collapse { page, pages }),
        2 => (page, any::<bool>()).prop_map(|(page, write)| Op::Access { page, write }),
    ];
    proptest::collection::vec(op, 1..20)
}

fn attrs_of(perms: u8, mem: u8) -> Attrs {
    Attrs {
        perms: PERMS[perms as usize],
        mem: MEMS[mem as usize],
        ignore_guest_memtype: false,
    }
}

fn apply(t: &mut Table<LoongArch, &HeapHost>, op: &Op, shift: u32) -> Result<(), Error> {
    let range =
        |page: u64, pages: u64| GpaRange::new(Gpa::new(page << shift), pages << shift).unwrap();
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
            Hpa::new(hpa_page << shift),
            attrs_of(perms, mem),
            MapOptions {
                max_level: Level::new(cap),
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

fn run(geo: &Geo, space: u64, ops: Vec<Op>) {
    let (cfg, statics) = with_invalid_tables(geo.cfg);
    let fmt = LoongArch::new(cfg).unwrap();
    let shift = u32::from(cfg.page_shift);
    let host = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 1 << shift);
    let mut table = Table::new(fmt.clone(), &host).unwrap();
    let root = fmt.pgdl(table.root()).unwrap();
    let oracle = Oracle {
        wcfg: LaWalkConfig {
            pwcl: fmt.pwcl(),
            pwch: fmt.pwch(),
            palen: cfg.palen,
            plv: 0,
        },
    };
    let mut model = Model::new();
    let mut points: BTreeSet<u64> = BTreeSet::new();
    // Pages the guest made young (and dirty) since they were mapped: the state must survive
    // split (copied), collapse (merged), protect (kept, except that removing write clears D).
    let mut young: BTreeSet<u64> = BTreeSet::new();
    let mut dirty: BTreeSet<u64> = BTreeSet::new();

    for op in ops {
        let clamp = |page: u64, pages: u64| (page, pages.min(space - page));
        let op = match op {
            Op::Map {
                page,
                pages,
                hpa_page,
                perms,
                mem,
                cap,
                young,
            } => {
                let (page, pages) = clamp(page, pages);
                let hpa_page = if hpa_page == u64::MAX {
                    page % (1 << 30) + (1 << 18)
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
                let (page, pages) = clamp(page, pages);
                Op::Unmap { page, pages }
            }
            Op::Protect { page, pages, perms } => {
                let (page, pages) = clamp(page, pages);
                Op::Protect { page, pages, perms }
            }
            Op::Split { page, pages, level } => {
                let (page, pages) = clamp(page, pages);
                Op::Split { page, pages, level }
            }
            Op::Collapse { page, pages } => {
                let (page, pages) = clamp(page, pages);
                Op::Collapse { page, pages }
            }
            a => a,
        };
        let (page, pages) = match op {
            Op::Map { page, pages, .. }
            | Op::Unmap { page, pages }
            | Op::Protect { page, pages, .. }
            | Op::Split { page, pages, .. }
            | Op::Collapse { page, pages } => (page, pages),
            Op::Access { page, .. } => (page, 1),
        };
        for p in [
            page,
            page + pages / 2,
            page + pages - 1,
            page + pages,
            page.wrapping_sub(1),
            page ^ 1,
        ] {
            if p < space {
                points.insert(p << shift | 0x5a8);
            }
        }

        if let Op::Access { page, write } = op {
            let gpa = page << shift;
            let mut mem = Mem {
                host: &host,
                statics: &statics,
            };
            let ok = oracle.access(&mut mem, root, gpa, write);
            let allowed = expected(&model, gpa).perms;
            assert_eq!(
                ok,
                allowed.contains(if write { Perms::WRITE } else { Perms::READ }),
                "access {op:?}"
            );
            if ok {
                young.insert(page);
                if write {
                    dirty.insert(page);
                }
            }
        } else {
            let mem = Mem {
                host: &host,
                statics: &statics,
            };
            let before_seen: Vec<Seen> =
                points.iter().map(|&g| oracle.peek(&mem, root, g)).collect();
            // Allocation failure at every point (tdp_core::testing::inject): each failing run must
            // leave the host's memory, the tree and every touched translation as they were.
            let result = inject::at_every_allocation(
                &host,
                &mut table,
                |t| apply(t, &op, shift),
                |_, k| {
                    for (&g, seen) in points.iter().zip(&before_seen) {
                        assert_eq!(
                            &oracle.peek(&mem, root, g),
                            seen,
                            "{op:?} at {k} changed {g:#x}"
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
                    cap,
                    young: y,
                } => {
                    let attrs = attrs_of(perms, mem);
                    if cap >= cfg.levels {
                        assert_eq!(
                            result,
                            Err(Error::InvalidLevel {
                                level: Level::new(cap).unwrap()
                            })
                        );
                        continue;
                    }
                    let legal = fmt.check_attrs(&attrs).is_ok();
                    let m = if legal {
                        model.map(page << shift, pages << shift, hpa_page << shift, attrs)
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
                    model.unmap(page << shift, pages << shift);
                    young.retain(|&p| p < page || p >= page + pages);
                    dirty.retain(|&p| p < page || p >= page + pages);
                }
                Op::Protect { page, pages, perms } => {
                    let p = PERMS[perms as usize];
                    if fmt.check_attrs(&Attrs::normal(p)).is_ok() {
                        result.unwrap();
                        model.protect(page << shift, pages << shift, p);
                        if !p.contains(Perms::WRITE) {
                            // D is the hardware write enable: write-protecting cleans.
                            dirty.retain(|&q| q < page || q >= page + pages);
                        }
                    } else {
                        assert!(matches!(result, Err(Error::UnsupportedAttrs { .. })));
                    }
                }
                Op::Split { level, .. } => {
                    if level <= 1 {
                        result.unwrap();
                    } else {
                        assert_eq!(
                            result,
                            Err(Error::InvalidLevel {
                                level: Level::new(level).unwrap()
                            })
                        );
                    }
                }
                Op::Collapse { .. } => result.unwrap(),
                Op::Access { .. } => unreachable!(),
            }
        }

        let mem = Mem {
            host: &host,
            statics: &statics,
        };
        for &g in &points {
            assert_eq!(
                oracle.peek(&mem, root, g),
                expected(&model, g),
                "gpa {g:#x} after {op:?}"
            );
            // query's A/D state is the hardware's V and D.
            if let Some(m) = table.query(Gpa::new(g)).unwrap() {
                let e = walker::refill(&mem, root, &oracle.wcfg, g).unwrap();
                let lo = if (g >> e.ps) & 1 != 0 { e.lo1 } else { e.lo0 };
                assert_eq!(m.ad.accessed, Some(lo & 1 != 0), "V at {g:#x}");
                assert_eq!(m.ad.dirty, Some(lo & 2 != 0), "D at {g:#x}");
            }
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
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sixteen_k_three_levels_small_space_matches_model(ops in ops(1 << 14, sixteen_k_three_levels().huge)) {
        run(&sixteen_k_three_levels(), 1 << 14, ops);
    }

    #[test]
    fn sixteen_k_three_levels_whole_space_matches_model(ops in ops(1 << 33, sixteen_k_three_levels().huge)) {
        run(&sixteen_k_three_levels(), 1 << 33, ops);
    }

    #[test]
    fn four_k_four_levels_hw_walker_small_space_matches_model(ops in ops(1 << 14, four_k_four_levels_hw_walker().huge)) {
        run(&four_k_four_levels_hw_walker(), 1 << 14, ops);
    }

    #[test]
    fn four_k_four_levels_hw_walker_whole_space_matches_model(ops in ops(1 << 35, four_k_four_levels_hw_walker().huge)) {
        run(&four_k_four_levels_hw_walker(), 1 << 35, ops);
    }
}
