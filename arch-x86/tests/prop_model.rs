//! Model properties for EPT (A/D on and off) and NPT: random map/unmap/protect/split/collapse
//! sequences over a small and a large address space. After every step every touched address
//! translates through the independent walker (`tdp-walkers`, written from the SDM/APM) exactly as
//! the reference model says; allocation failure injected at every allocation point leaves the
//! table as it was and leaks nothing; teardown frees every page.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tdp_arch_x86::{Ept, EptCaps, EptOptions, Npt, NptOptions};
use tdp_core::testing::{inject, HeapHost, Model};
use tdp_core::{
    Attrs, Error, Gpa, GpaRange, Host, Hpa, Level, MapOptions, MemType, Perms, PteFormat, Table,
};
use tdp_walkers::{ept, npt, Access, PhysMem};

const WINDOW_BASE: u64 = 0x7_4000_0000;
const WINDOW_SIZE: u64 = 48 << 20;

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

/// What the hardware does with one guest address: per access kind, the output address or a fault.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    hpa: Option<u64>,
    perms: Perms,
    mem: Option<MemType>,
}

trait Oracle {
    type F: PteFormat + Clone;
    fn format(&self) -> Self::F;
    /// Walks `gpa` for every access kind with the independent walker (no writes).
    fn peek(&self, host: &HeapHost, root: u64, gpa: u64) -> Seen;
    /// Accesses `gpa` as the hardware would (setting A/D); true if it translated.
    fn access(&self, host: &HeapHost, root: u64, gpa: u64, write: bool) -> bool;
    fn has_ad(&self) -> bool;
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

struct EptOracle {
    ad: bool,
    levels: u8,
}

impl EptOracle {
    fn caps(&self) -> ept::EptCaps {
        ept::EptCaps {
            maxphyaddr: 46,
            execute_only: true,
            page_1g: true,
            mbec: false,
        }
    }
    fn eptp(&self, root: u64) -> u64 {
        self.format().eptp(Hpa::new(root)).unwrap()
    }
}

impl Oracle for EptOracle {
    type F = Ept;
    fn format(&self) -> Ept {
        let caps = EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1);
        Ept::new(
            caps,
            EptOptions {
                levels: self.levels,
                accessed_dirty: self.ad,
                maxphyaddr: 46,
                mbec: false,
            },
        )
        .unwrap()
    }
    fn peek(&self, host: &HeapHost, root: u64, gpa: u64) -> Seen {
        let mut seen = Seen {
            hpa: None,
            perms: Perms::empty(),
            mem: None,
        };
        for (access, perm) in [
            (Access::Read, Perms::READ),
            (Access::Write, Perms::WRITE),
            (Access::ExecSupervisor, Perms::EXEC_SUPER),
            (Access::ExecUser, Perms::EXEC_USER),
        ] {
            match ept::peek(&Phys(host), self.eptp(root), &self.caps(), gpa, access) {
                Ok(t) => {
                    assert!(seen.hpa.is_none() || seen.hpa == Some(t.hpa));
                    seen.hpa = Some(t.hpa);
                    seen.perms |= perm;
                    seen.mem = Some(mem_of_code(t.memtype));
                }
                Err(ept::EptFault::Violation(_)) => {}
                Err(e) => panic!("EPT walk of {gpa:#x} ({access:?}): {e:?}"),
            }
        }
        seen
    }
    fn access(&self, host: &HeapHost, root: u64, gpa: u64, write: bool) -> bool {
        let access = if write { Access::Write } else { Access::Read };
        ept::translate(&mut Phys(host), self.eptp(root), &self.caps(), gpa, access).is_ok()
    }
    fn has_ad(&self) -> bool {
        self.ad
    }
}

struct NptOracle;

/// Linux's host PAT: WB, WC, UC-, UC, WB, WP, UC-, WT. Write-through sits at index 7, so the PAT
/// bit (bit 7 in 4 KiB leaves, bit 12 in huge ones) is exercised by split and collapse.
const LINUX_PAT: u64 = 0x0407_0506_0007_0106;

impl NptOracle {
    fn caps(&self) -> npt::NptCaps {
        npt::NptCaps {
            levels: 4,
            maxphyaddr: 46,
            nx_enabled: true,
            page_1g: true,
        }
    }
}

impl Oracle for NptOracle {
    type F = Npt;
    fn format(&self) -> Npt {
        Npt::new(NptOptions {
            maxphyaddr: 46,
            host_pat: LINUX_PAT,
            ..NptOptions::default()
        })
        .unwrap()
    }
    fn peek(&self, host: &HeapHost, root: u64, gpa: u64) -> Seen {
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
            match npt::peek(&Phys(host), root, &self.caps(), gpa, access) {
                Ok(t) => {
                    assert!(seen.hpa.is_none() || seen.hpa == Some(t.hpa));
                    assert!(t.user, "NPT leaf without U");
                    seen.hpa = Some(t.hpa);
                    seen.perms |= perm;
                    seen.mem = Some(mem_of_code((LINUX_PAT >> (8 * t.pat_index)) as u8));
                }
                Err(npt::NptFault::Npf(f)) if f.kind != npt::NpfKind::Reserved => {}
                Err(e) => panic!("NPT walk of {gpa:#x} ({access:?}): {e:?}"),
            }
        }
        seen
    }
    fn access(&self, host: &HeapHost, root: u64, gpa: u64, write: bool) -> bool {
        let access = if write { Access::Write } else { Access::Read };
        npt::translate(&mut Phys(host), root, &self.caps(), gpa, access).is_ok()
    }
    fn has_ad(&self) -> bool {
        true
    }
}

/// What the model expects the hardware to see.
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

const PERMS: [Perms; 6] = [
    Perms::READ,
    Perms::RW,
    Perms::RX,
    Perms::RWX,
    Perms::EXEC,
    Perms::empty(),
];
const MEMS: [MemType; 3] = [MemType::WriteBack, MemType::Uncached, MemType::WriteThrough];

/// Operations over `space_pages` 4 KiB pages (a power of two), biased to 2 MiB / 1 GiB
/// alignment and sizes so that huge leaves, splits and collapses happen.
fn ops(space_pages: u64) -> impl Strategy<Value = Vec<Op>> {
    let page = prop_oneof![
        2 => 0..space_pages,
        2 => (0..space_pages / 512).prop_map(|x| x * 512),
        1 => (0..(space_pages / 262144).max(1)).prop_map(|x| x * 262144),
    ];
    let pages =
        prop_oneof![3 => 1u64..16, 2 => Just(512u64), 1 => 1u64..1600, 1 => Just(262144u64)];
    // u64::MAX: host address = guest address + 1 GiB, like guest RAM backed by one host range,
    // so adjacent maps are contiguous and collapse meets tables whose attributes differ.
    let hpa_page = prop_oneof![
        2 => Just(u64::MAX),
        1 => 0u64..(1 << 30),
        1 => (0u64..(1 << 21)).prop_map(|x| x * 512)
    ];
    let op = prop_oneof![
        4 => (page.clone(), pages.clone(), hpa_page, 0u8..6, 0u8..3, 0u8..4, any::<bool>())
            .prop_map(|(page, pages, hpa_page, perms, mem, cap, young)| Op::Map { page, pages, hpa_page, perms, mem, cap, young }),
        2 => (page.clone(), pages.clone()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => (page.clone(), pages.clone(), 0u8..6).prop_map(|(page, pages, perms)| Op::Protect { page, pages, perms }),
        1 => (page.clone(), pages.clone(), 0u8..2).prop_map(|(page, pages, level)| Op::Split { page, pages, level }),
        1 => (page.clone(), pages).prop_map(|(page, pages)| Op::Collapse { page, pages }),
        1 => (page, any::<bool>()).prop_map(|(page, write)| Op::Access { page, write }),
    ];
    proptest::collection::vec(op, 1..20)
}

fn range(page: u64, pages: u64) -> GpaRange {
    GpaRange::new(Gpa::new(page << 12), pages << 12).unwrap()
}

/// Applies one operation to the table; its model counterpart is applied by the caller.
fn apply<F: PteFormat, H: Host>(t: &mut Table<F, H>, op: &Op) -> Result<(), Error> {
    let geo = *t.format().geometry();
    // A cap at a level that cannot hold a leaf is refused by the engine; here it means no cap.
    let cap_of = |c: u8| Level::new(c).filter(|l| geo.is_leaf_level(*l));
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
            Attrs {
                perms: PERMS[perms as usize],
                mem: MEMS[mem as usize],
                ignore_guest_memtype: false,
            },
            MapOptions {
                max_level: cap_of(cap),
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

fn run<O: Oracle>(oracle: &O, space_pages: u64, ops: Vec<Op>) {
    let host = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 4096);
    let fmt = oracle.format();
    let mut table = Table::new(fmt.clone(), &host).unwrap();
    let root = table.root().raw();
    let mut model = Model::new();
    let mut points: BTreeSet<u64> = BTreeSet::new();
    // Pages the walker accessed (and dirtied) since they were mapped: A/D must survive every
    // later operation (split copies them, collapse merges them, protect keeps them).
    let mut young: BTreeSet<u64> = BTreeSet::new();
    let mut dirty: BTreeSet<u64> = BTreeSet::new();

    for op in ops {
        let (page, pages) = match op {
            Op::Map { page, pages, .. }
            | Op::Unmap { page, pages }
            | Op::Protect { page, pages, .. }
            | Op::Split { page, pages, .. }
            | Op::Collapse { page, pages } => (page, pages.min(space_pages - page)),
            Op::Access { page, .. } => (page, 1),
        };
        let op = match op {
            Op::Map {
                hpa_page,
                perms,
                mem,
                cap,
                young,
                ..
            } => {
                let hpa_page = if hpa_page == u64::MAX {
                    page % (1 << 33) + (1 << 18)
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
            if p < space_pages {
                points.insert(p << 12 | 0x5a8);
            }
        }

        if let Op::Access { page, write } = op {
            let gpa = page << 12;
            let ok = oracle.access(&host, root, gpa, write);
            let allowed = expected(&model, gpa).perms;
            assert_eq!(
                ok,
                allowed.contains(if write { Perms::WRITE } else { Perms::READ })
            );
            if ok && oracle.has_ad() {
                young.insert(page);
                if write {
                    dirty.insert(page);
                }
            }
        } else {
            // Allocation failure at every point: the k-th allocation fails, for k = 0, 1, ...
            // until the operation no longer reaches k allocations.
            let before_seen: Vec<Seen> = points
                .iter()
                .map(|&g| oracle.peek(&host, root, g))
                .collect();
            // Allocation failure at every point (tdp_core::testing::inject): each failing run must
            // leave the host's memory, the tree and every touched translation as they were.
            let result = inject::at_every_allocation(
                &host,
                &mut table,
                |t| apply(t, &op),
                |_, k| {
                    for (&g, seen) in points.iter().zip(&before_seen) {
                        assert_eq!(
                            &oracle.peek(&host, root, g),
                            seen,
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
                    let attrs = Attrs {
                        perms: PERMS[perms as usize],
                        mem: MEMS[mem as usize],
                        ignore_guest_memtype: false,
                    };
                    let legal = fmt.check_attrs(&attrs).is_ok();
                    let m = if legal {
                        model.map(page << 12, pages << 12, hpa_page << 12, attrs)
                    } else {
                        Ok(())
                    };
                    match (legal, m, result) {
                        (false, _, Err(Error::UnsupportedAttrs { .. })) => {}
                        (true, Ok(()), Ok(())) => {
                            if y && oracle.has_ad() {
                                for p in page..page + pages.min(64) {
                                    young.insert(p);
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
                    if fmt.check_attrs(&Attrs::normal(p)).is_ok() {
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
                oracle.peek(&host, root, g),
                expected(&model, g),
                "gpa {g:#x} after {op:?}"
            );
        }
        for &p in &young {
            let m = table
                .query(Gpa::new(p << 12))
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
                .query(Gpa::new(p << 12))
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

const SMALL: u64 = 1 << 14; // 64 MiB
const LARGE: u64 = 1 << 36; // the whole 48-bit space

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ept_ad_small_space_matches_model(ops in ops(SMALL)) {
        run(&EptOracle { ad: true, levels: 4 }, SMALL, ops);
    }

    #[test]
    fn ept_ad_large_space_matches_model(ops in ops(LARGE)) {
        run(&EptOracle { ad: true, levels: 4 }, LARGE, ops);
    }

    #[test]
    fn ept_no_ad_small_space_matches_model(ops in ops(SMALL)) {
        run(&EptOracle { ad: false, levels: 4 }, SMALL, ops);
    }

    #[test]
    fn ept_no_ad_five_level_large_space_matches_model(ops in ops(1 << 45)) {
        run(&EptOracle { ad: false, levels: 5 }, 1 << 45, ops);
    }

    #[test]
    fn npt_small_space_matches_model(ops in ops(SMALL)) {
        run(&NptOracle, SMALL, ops);
    }

    #[test]
    fn npt_large_space_matches_model(ops in ops(LARGE)) {
        run(&NptOracle, LARGE, ops);
    }
}
