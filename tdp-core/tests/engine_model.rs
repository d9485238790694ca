//! Engine properties with the generic test format: random operation sequences against the
//! reference model, checked through a software walker written here from the test format's bits.

use proptest::prelude::*;
use std::collections::HashMap;
use tdp_core::testing::{HeapHost, HostEvent, Model, TestFormat};
use tdp_core::{
    Attrs, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, Table, TlbFlush,
};

const BASE: u64 = 0x10_0000_0000;

/// Walks the test format from the root, reading raw memory (independent of the engine).
fn walk(host: &HeapHost, root: u64, gpa: u64) -> Option<(u64, Perms)> {
    let mut table = root;
    for level in (0..4u32).rev() {
        let shift = 12 + 9 * level;
        let idx = (gpa >> shift) & 511;
        let mut b = [0u8; 8];
        assert!(
            host.read_phys(table + idx * 8, &mut b),
            "walk left the window"
        );
        let e = u64::from_le_bytes(b);
        if e & 1 == 0 {
            return None;
        }
        let addr = e & 0x000f_ffff_ffff_f000;
        if level == 0 || e & 0x10 != 0 {
            let mut p = Perms::empty();
            if e & 2 != 0 {
                p |= Perms::READ;
            }
            if e & 4 != 0 {
                p |= Perms::WRITE;
            }
            if e & 8 != 0 {
                p |= Perms::EXEC;
            }
            return Some((addr + (gpa & ((1 << shift) - 1)), p));
        }
        table = addr;
    }
    unreachable!()
}

/// Every non-root table reachable from the root: physical address -> (first gpa, span).
fn tables(host: &HeapHost, root: u64) -> HashMap<u64, (u64, u64)> {
    let mut out = HashMap::new();
    let mut stack = vec![(root, 3u32, 0u64)];
    while let Some((table, level, base)) = stack.pop() {
        let shift = 12 + 9 * level;
        for idx in 0..512u64 {
            let mut b = [0u8; 8];
            assert!(host.read_phys(table + idx * 8, &mut b));
            let e = u64::from_le_bytes(b);
            if level > 0 && e & 1 != 0 && e & 0x10 == 0 {
                let child = e & 0x000f_ffff_ffff_f000;
                let gpa = base + (idx << shift);
                out.insert(child, (gpa, 1u64 << shift));
                stack.push((child, level - 1, gpa));
            }
        }
    }
    out
}

#[derive(Clone, Debug)]
enum OpKind {
    Map {
        page: u64,
        pages: u64,
        hpa_page: u64,
        perms: u8,
        cap: u8,
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
}

fn perms(p: u8) -> Perms {
    [Perms::READ, Perms::RW, Perms::RX, Perms::RWX][p as usize % 4]
}

/// Ranges in a 2 GiB space, often 2 MiB-aligned so huge leaves appear.
fn op() -> impl Strategy<Value = OpKind> {
    let page = prop_oneof![0u64..(1 << 19), (0u64..1024).prop_map(|x| x * 512)];
    let pages = prop_oneof![1u64..8, Just(512), Just(1024), 1u64..2048, Just(262144)];
    prop_oneof![
        3 => (page.clone(), pages.clone(), prop_oneof![0u64..(1 << 20), (0u64..2048).prop_map(|x| x * 512)], any::<u8>(), 0u8..4)
            .prop_map(|(page, pages, hpa_page, perms, cap)| OpKind::Map { page, pages, hpa_page, perms, cap }),
        2 => (page.clone(), pages.clone()).prop_map(|(page, pages)| OpKind::Unmap { page, pages }),
        2 => (page.clone(), pages.clone(), any::<u8>()).prop_map(|(page, pages, perms)| OpKind::Protect { page, pages, perms }),
        1 => (page.clone(), pages.clone(), 0u8..2).prop_map(|(page, pages, level)| OpKind::Split { page, pages, level }),
        1 => (page, pages).prop_map(|(page, pages)| OpKind::Collapse { page, pages }),
    ]
}

fn range(page: u64, pages: u64) -> GpaRange {
    GpaRange::new(Gpa::new(page << 12), pages << 12).unwrap()
}

fn check_points(host: &HeapHost, root: u64, model: &Model, points: &[u64]) {
    for &gpa in points {
        let want = model.translate(gpa).map(|(h, a)| (h, a.perms));
        assert_eq!(walk(host, root, gpa), want, "gpa {gpa:#x}");
    }
}

fn run(ops: Vec<OpKind>, hardware_ad: bool, bbm: bool) {
    let host = HeapHost::new(BASE, 64 << 20, 4096);
    let mut fmt = TestFormat::four_level();
    fmt.hardware_ad = hardware_ad;
    fmt.break_before_make = bbm;
    let mut table = Table::new(fmt, &host).unwrap();
    let root = table.root().raw();
    let mut model = Model::new();
    let mut points: Vec<u64> = Vec::new();
    for op in ops {
        let (page, pages) = match op {
            OpKind::Map { page, pages, .. }
            | OpKind::Unmap { page, pages }
            | OpKind::Protect { page, pages, .. }
            | OpKind::Split { page, pages, .. }
            | OpKind::Collapse { page, pages } => (page, pages),
        };
        let r = range(page, pages);
        for p in [
            page,
            page + pages / 2,
            page + pages - 1,
            page + pages,
            page.wrapping_sub(1),
        ] {
            points.push(p << 12 | 0x123);
        }
        let stats_before = table.stats();
        let tables_before = tables(&host, root);
        host.take_events();
        match op {
            OpKind::Map {
                hpa_page,
                perms: p,
                cap,
                ..
            } => {
                let attrs = Attrs {
                    perms: perms(p),
                    mem: MemType::WriteBack,
                    ignore_guest_memtype: false,
                };
                let opts = MapOptions {
                    max_level: Level::new(cap.min(2)),
                    young_dirty: p & 4 != 0,
                };
                let res = table.map_with(r, Hpa::new(hpa_page << 12), attrs, opts);
                match model.map(page << 12, pages << 12, hpa_page << 12, attrs) {
                    Ok(()) => assert_eq!(res, Ok(())),
                    Err(_) => {
                        assert!(matches!(res, Err(Error::AlreadyMapped { .. })), "{res:?}");
                        assert_eq!(table.stats().tables, stats_before.tables);
                    }
                }
            }
            OpKind::Unmap { .. } => {
                table.unmap(r).unwrap();
                model.unmap(page << 12, pages << 12);
            }
            OpKind::Protect { perms: p, .. } => {
                table.protect(r, perms(p)).unwrap();
                model.protect(page << 12, pages << 12, perms(p));
            }
            OpKind::Split { level, .. } => table.split(r, Level::new(level).unwrap()).unwrap(),
            OpKind::Collapse { .. } => table.collapse(r).unwrap(),
        }
        check_points(&host, root, &model, &points);
        let s = table.stats();
        assert_eq!(
            host.outstanding_bytes() as u64,
            s.table_bytes + s.cached_bytes,
            "leak"
        );
        // A table that was in the tree is freed only after a flush covering its span.
        let events = host.take_events();
        for (i, e) in events.iter().enumerate() {
            if let HostEvent::Free(pa, _) = e {
                if let Some(&(gpa, span)) = tables_before.get(&pa.raw()) {
                    let covered = events[..i].iter().any(|e| match e {
                        HostEvent::Flush(TlbFlush::All) => true,
                        HostEvent::Flush(TlbFlush::Range { start, size, .. }) => {
                            start.raw() <= gpa && gpa + span <= start.raw() + size
                        }
                        _ => false,
                    });
                    assert!(
                        covered,
                        "table {pa:?} for {gpa:#x} freed before a covering flush"
                    );
                }
            }
        }
    }
    drop(table);
    assert_eq!(host.outstanding_tables(), 0, "teardown leaked");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn random_sequences_match_the_model(ops in proptest::collection::vec(op(), 1..24)) {
        run(ops, false, false);
    }

    #[test]
    fn random_sequences_match_the_model_with_hardware_ad_and_bbm(ops in proptest::collection::vec(op(), 1..24)) {
        run(ops, true, true);
    }
}

#[test]
fn map_one_gib_aligned_takes_one_leaf() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(TestFormat::four_level(), &host).unwrap();
    t.map(
        range(0x40000, 0x40000),
        Hpa::new(0x8000_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    assert_eq!(t.stats().leaves, [0, 0, 1, 0, 0]);
    assert_eq!(host.outstanding_tables(), 2);
}
