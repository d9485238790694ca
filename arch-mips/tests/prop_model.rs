//! Model properties for MIPS, one per preset (64-bit host with RIXI: 4 KiB pages with 3
//! levels, 16 KiB with 3, 16 KiB with 2, 64 KiB with 2): random map/unmap/protect/split/
//! collapse/access sequences. After every step every touched address translates through the
//! independent walker (`tdp_walkers::mips`, with its own layout description built from the
//! documented numbers, and KVM's fast path applied to TLB Invalid / TLB Modified) exactly as
//! the reference model says; allocation failure injected at every allocation point leaves the
//! table as it was and leaks nothing; accessed/dirty state survives; teardown frees every page
//! (the invalid tables stay with the caller).

use std::collections::BTreeSet;

use proptest::prelude::*;
use tdp_arch_mips::{MipsConfig, MipsLe};
use tdp_core::testing::{inject, HeapHost, Model};
use tdp_core::{
    Attrs, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, PteFormat, Table,
};
use tdp_walkers::mips::{self as walker, MipsFault, MipsPteLayout, MipsTlbExc, MipsWalkConfig};
use tdp_walkers::{Access, FlatImage, PhysMem};

/// Below 512 MiB so that the invalid tables have ckseg0 addresses, like the kernel image's.
const WINDOW_BASE: u64 = 0x0400_0000;
const WINDOW_SIZE: u64 = 48 << 20;
const STATICS: u64 = WINDOW_BASE + WINDOW_SIZE;
const CKSEG0: u64 = 0xffff_ffff_8000_0000;

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

/// A preset with its invalid tables placed at `STATICS` (ckseg0 addresses), and the walker's
/// own description of the same host, built from the documented numbers.
struct Preset {
    cfg: MipsConfig,
    statics: FlatImage,
    walk: MipsWalkConfig,
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
    Preset {
        cfg,
        statics: FlatImage::new(STATICS, bytes),
        walk: MipsWalkConfig {
            layout: MipsPteLayout::linux64_rixi(u32::from(page_shift)),
            page_shift: u32::from(page_shift),
            index_bits: index_bits.iter().map(|&b| u32::from(b)).collect(),
            pabits: 48,
            big_endian: false,
            iec: true,
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    hpa: Option<u64>,
    perms: Perms,
    mem: Option<MemType>,
}

fn mem_of_cca(cca: u8) -> MemType {
    match cca {
        3 => MemType::WriteBack,
        2 => MemType::Uncached,
        7 => MemType::WriteCombining,
        c => panic!("walker reported unexpected CCA {c}"),
    }
}

fn peek(p: &Preset, mem: &Mem<'_>, pgd: u64, gpa: u64) -> Seen {
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
        match walker::peek_after_fast_path(mem, pgd, &p.walk, gpa, access) {
            Ok(t) => {
                assert!(seen.hpa.is_none() || seen.hpa == Some(t.hpa));
                seen.hpa = Some(t.hpa);
                seen.perms |= perm;
                seen.mem = Some(mem_of_cca(t.cca));
            }
            Err(MipsFault::Tlb(_)) => {}
            Err(e) => panic!("walk of {gpa:#x} ({access:?}): {e:?}"),
        }
    }
    seen
}

/// The guest accesses `gpa`: hardware, KVM's fast path on TLB Invalid / Modified, hardware.
fn access(p: &Preset, mem: &mut Mem<'_>, pgd: u64, gpa: u64, write: bool) -> bool {
    let a = if write { Access::Write } else { Access::Read };
    match walker::translate(mem, pgd, &p.walk, gpa, a) {
        Ok(_) => true,
        Err(MipsFault::Tlb(e)) if matches!(e.kind, MipsTlbExc::Invalid | MipsTlbExc::Modified) => {
            walker::kvm_fast_path(mem, pgd, &p.walk, gpa, write).unwrap()
                && walker::translate(mem, pgd, &p.walk, gpa, a).is_ok()
        }
        Err(MipsFault::Tlb(_)) => false,
        Err(e) => panic!("access to {gpa:#x}: {e:?}"),
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

/// Operations over `space` pages: half near the bottom (so they interact), half anywhere;
/// biased to page-table boundaries (`table` pages per PTE table).
fn ops(space: u64, table: u64) -> impl Strategy<Value = Vec<Op>> {
    let near = (1u64 << 14).min(space);
    let page = prop_oneof![
        2 => 0..near,
        1 => 0..space,
        2 => (0..near / table.min(near)).prop_map(move |x| x * table.min(near)),
    ];
    let pages = prop_oneof![3 => 1u64..16, 1 => Just(table), 1 => 1u64..(table * 3)];
    let hpa_page = prop_oneof![2 => Just(u64::MAX), 1 => 0u64..(1 << 30)];
    // Mostly attributes MIPS accepts (READ required, no write-through), some it refuses.
    let perms = prop_oneof![6 => 0u8..4, 1 => 4u8..8];
    let mem = prop_oneof![6 => 0u8..2, 1 => 2u8..4];
    // The largest leaf level: the only one, or one no preset has.
    let cap = prop_oneof![4 => Just(0u8), 1 => Just(3u8)];
    let op = prop_oneof![
        4 => (page.clone(), pages.clone(), hpa_page, perms.clone(), mem, cap, any::<bool>())
            .prop_map(|(page, pages, hpa_page, perms, mem, cap, young)| Op::Map { page, pages, hpa_page, perms, mem, cap, young }),
        2 => (page.clone(), pages.clone()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => (page.clone(), pages.clone(), perms).prop_map(|(page, pages, perms)| Op::Protect { page, pages, perms }),
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

fn apply(t: &mut Table<MipsLe, &HeapHost>, op: &Op, shift: u32) -> Result<(), Error> {
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

fn clamp(op: Op, space: u64) -> Op {
    let c = |page: u64, pages: u64| (page, pages.min(space - page));
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
            let (page, pages) = c(page, pages);
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
            let (page, pages) = c(page, pages);
            Op::Unmap { page, pages }
        }
        Op::Protect { page, pages, perms } => {
            let (page, pages) = c(page, pages);
            Op::Protect { page, pages, perms }
        }
        Op::Split { page, pages, level } => {
            let (page, pages) = c(page, pages);
            Op::Split { page, pages, level }
        }
        Op::Collapse { page, pages } => {
            let (page, pages) = c(page, pages);
            Op::Collapse { page, pages }
        }
        a => a,
    }
}

fn run(p: &Preset, ops: Vec<Op>) {
    let fmt = MipsLe::new(p.cfg).unwrap();
    let shift = u32::from(p.cfg.page_shift);
    let space = 1u64 << (fmt.geometry().ia_bits() as u32 - shift);
    let granule = fmt.geometry().min_table_size();
    let host = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, granule);
    let mut table = Table::new(fmt.clone(), &host).unwrap();
    let pgd = fmt.pgd(table.root()).unwrap();
    let layout = p.walk.layout;
    let mut model = Model::new();
    let mut points: BTreeSet<u64> = BTreeSet::new();
    let mut young: BTreeSet<u64> = BTreeSet::new();
    let mut dirty: BTreeSet<u64> = BTreeSet::new();

    for op in ops {
        let op = clamp(op, space);
        let (page, pages) = match op {
            Op::Map { page, pages, .. }
            | Op::Unmap { page, pages }
            | Op::Protect { page, pages, .. }
            | Op::Split { page, pages, .. }
            | Op::Collapse { page, pages } => (page, pages),
            Op::Access { page, .. } => (page, 1),
        };
        for q in [
            page,
            page + pages / 2,
            page + pages - 1,
            page + pages,
            page.wrapping_sub(1),
            page ^ 1,
        ] {
            if q < space {
                points.insert(q << shift | 0x5a8);
            }
        }

        if let Op::Access { page, write } = op {
            let gpa = page << shift;
            let mut mem = Mem {
                host: &host,
                statics: &p.statics,
            };
            let ok = access(p, &mut mem, pgd, gpa, write);
            let allowed = expected(&model, gpa).perms;
            assert_eq!(
                ok,
                allowed.contains(if write { Perms::WRITE } else { Perms::READ }),
                "{op:?}"
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
                statics: &p.statics,
            };
            let before_seen: Vec<Seen> = points.iter().map(|&g| peek(p, &mem, pgd, g)).collect();
            // Allocation failure at every point (tdp_core::testing::inject): each failing run must
            // leave the host's memory, the tree and every touched translation as they were.
            let result = inject::at_every_allocation(
                &host,
                &mut table,
                |t| apply(t, &op, shift),
                |_, k| {
                    for (&g, seen) in points.iter().zip(&before_seen) {
                        assert_eq!(&peek(p, &mem, pgd, g), seen, "{op:?} at {k} changed {g:#x}");
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
                    if cap >= p.cfg.levels {
                        assert_eq!(
                            result,
                            Err(Error::InvalidLevel {
                                level: Level::new(cap).unwrap()
                            })
                        );
                        continue;
                    }
                    let attrs = attrs_of(perms, mem);
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
                                for q in page..page + pages.min(64) {
                                    young.insert(q);
                                    if attrs.perms.contains(Perms::WRITE) {
                                        dirty.insert(q);
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
                    young.retain(|&q| q < page || q >= page + pages);
                    dirty.retain(|&q| q < page || q >= page + pages);
                }
                Op::Protect { page, pages, perms } => {
                    let pr = PERMS[perms as usize];
                    if fmt.check_attrs(&Attrs::normal(pr)).is_ok() {
                        result.unwrap();
                        // MODIFIED survives write-protection (pte_wrprotect): dirty stays.
                        model.protect(page << shift, pages << shift, pr);
                    } else {
                        assert!(matches!(result, Err(Error::UnsupportedAttrs { .. })));
                    }
                }
                Op::Split { level, .. } => {
                    if level == 0 {
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
            statics: &p.statics,
        };
        for &g in &points {
            assert_eq!(
                peek(p, &mem, pgd, g),
                expected(&model, g),
                "gpa {g:#x} after {op:?}"
            );
            if let Some(m) = table.query(Gpa::new(g)).unwrap() {
                // query's A/D is the PTE's ACCESSED and MODIFIED, as the walker reads them.
                let pte = match walker::peek(&mem, pgd, &p.walk, g, Access::Read) {
                    Ok(t) => t.pte,
                    Err(MipsFault::Tlb(e)) => e.pte,
                    Err(e) => panic!("{e:?}"),
                };
                assert_eq!(pte, m.raw);
                assert_eq!(m.ad.accessed, Some(pte >> layout.accessed & 1 != 0));
                assert_eq!(m.ad.dirty, Some(pte >> layout.modified & 1 != 0));
            }
        }
        for &q in &young {
            let m = table
                .query(Gpa::new(q << shift))
                .unwrap()
                .expect("young page is mapped");
            assert_eq!(
                m.ad.accessed,
                Some(true),
                "accessed lost at page {q:#x} after {op:?}"
            );
        }
        for &q in &dirty {
            let m = table
                .query(Gpa::new(q << shift))
                .unwrap()
                .expect("dirty page is mapped");
            assert_eq!(
                m.ad.dirty,
                Some(true),
                "dirty lost at page {q:#x} after {op:?}"
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
    fn linux64_4k_three_levels_matches_model(ops in ops(1 << 28, 512)) {
        run(&preset(12, &[9, 9, 10]), ops);
    }

    #[test]
    fn linux64_16k_three_levels_matches_model(ops in ops(1 << 33, 2048)) {
        run(&preset(14, &[11, 11, 11]), ops);
    }

    #[test]
    fn linux64_16k_two_levels_matches_model(ops in ops(1 << 22, 2048)) {
        run(&preset(14, &[11, 11]), ops);
    }

    #[test]
    fn linux64_64k_two_levels_matches_model(ops in ops(1 << 26, 8192)) {
        run(&preset(16, &[13, 13]), ops);
    }
}
