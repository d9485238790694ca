//! The walk's visit sequence against a straightforward reference: a recursive pre-order walk of
//! the raw table memory (every entry whose span meets the range; a table as `TablePre`, its
//! children, then `TablePost`; anything else as `Leaf`), on trees built by random maps and
//! unmaps of mixed leaf sizes, for random ranges, and for a visitor that breaks early.

use std::ops::ControlFlow;

use proptest::prelude::*;
use tdp_core::testing::{HeapHost, TestFormat};
use tdp_core::{
    Attrs, EntryKind, Geometry, Gpa, GpaRange, Hpa, Level, MapOptions, Perms, PteFormat, Table,
    Visit,
};

const PAGE: u64 = 4096;
/// The guest space the random operations touch: 2 GiB (two 1 GiB entries, 1024 2 MiB entries).
const SPACE_PAGES: u64 = 1 << 19;

type Visited = (u64, u8, u64, EntryKind, Visit);

fn visited(gpa: u64, level: Level, raw: u64, kind: EntryKind, visit: Visit) -> Visited {
    (gpa, level.get(), raw, kind, visit)
}

/// The reference: every entry of the table at `pa` (at `level`, mapping from `base`) whose span
/// meets `[start, last]`, in address order, tables entered down to level 0.
#[allow(clippy::too_many_arguments)]
fn reference(
    fmt: &TestFormat,
    host: &HeapHost,
    pa: u64,
    level: Level,
    base: u64,
    start: u64,
    last: u64,
    out: &mut Vec<Visited>,
) {
    let geo = fmt.geometry();
    let size = geo.level_size(level);
    for i in 0..geo.entries(level) as u64 {
        let gpa = base + i * size;
        if gpa + (size - 1) < start || gpa > last {
            continue;
        }
        let raw = host.load_phys_u64(pa + i * 8).expect("entry in the window");
        let kind = fmt.classify(raw, level);
        if kind == EntryKind::Table && level.get() > 0 {
            out.push(visited(gpa, level, raw, kind, Visit::TablePre));
            let child = fmt.table_addr(raw, level).raw();
            let below = Level::new(level.get() - 1).expect("a level below");
            reference(fmt, host, child, below, gpa, start, last, out);
            out.push(visited(gpa, level, raw, kind, Visit::TablePost));
        } else {
            out.push(visited(gpa, level, raw, kind, Visit::Leaf));
        }
    }
}

fn engine(t: &Table<TestFormat, &HeapHost>, r: GpaRange, stop_after: usize) -> Vec<Visited> {
    let mut out = Vec::new();
    t.walk(r, |e| {
        out.push(visited(e.gpa.raw(), e.level, e.raw, e.kind, e.visit));
        if out.len() >= stop_after {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("valid range");
    out
}

#[derive(Clone, Debug)]
enum Step {
    Map { page: u64, pages: u64, level: u8 },
    Unmap { page: u64, pages: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    let span = (0..SPACE_PAGES, 1u64..2048);
    prop_oneof![
        (span.clone(), 0u8..3).prop_map(|((page, pages), level)| Step::Map { page, pages, level }),
        span.prop_map(|(page, pages)| Step::Unmap { page, pages }),
    ]
}

fn range_of(page: u64, pages: u64) -> GpaRange {
    let pages = pages.min(SPACE_PAGES - page).max(1);
    GpaRange::new(Gpa::new(page * PAGE), pages * PAGE).expect("page-aligned range")
}

fn apply(t: &mut Table<TestFormat, &HeapHost>, s: &Step) {
    match *s {
        Step::Map { page, pages, level } => {
            let r = range_of(page, pages);
            let opts = MapOptions {
                max_level: Level::new(level),
                young_dirty: true,
            };
            let hpa = Hpa::new(0x40_0000_0000 + r.start().raw());
            // An unsupported leaf level or an overlap is refused: nothing changes then.
            let _ = t.map_with(r, hpa, Attrs::normal(Perms::RW), opts);
        }
        Step::Unmap { page, pages } => {
            t.unmap(range_of(page, pages)).expect("unmap");
        }
    }
}

fn check(
    fmt: &TestFormat,
    steps: &[Step],
    walk: (u64, u64),
    stop_after: usize,
) -> Result<(), TestCaseError> {
    let host = HeapHost::new(0x8000_0000, 64 << 20, 4096);
    {
        let mut t = Table::new(fmt.clone(), &host).expect("root");
        for s in steps {
            apply(&mut t, s);
        }
        let r = range_of(walk.0, walk.1);
        let mut want = Vec::new();
        let root_level = fmt.geometry().root_level();
        let last = r.start().raw() + (r.size() - 1);
        reference(
            fmt,
            &host,
            t.root().raw(),
            root_level,
            0,
            r.start().raw(),
            last,
            &mut want,
        );
        let got = engine(&t, r, usize::MAX);
        prop_assert_eq!(&got, &want);
        // A visitor that breaks sees exactly the first visits.
        let cut = engine(&t, r, stop_after.max(1));
        prop_assert_eq!(&cut[..], &want[..cut.len()]);
        prop_assert_eq!(cut.len(), stop_after.max(1).min(want.len()));
    }
    prop_assert_eq!(host.outstanding_tables(), 0);
    Ok(())
}

/// Three levels with a 10-bit root (two concatenated root tables' worth) and 4K/2M leaves.
fn three_level() -> TestFormat {
    TestFormat::with_geometry(Geometry::new(12, &[9, 9, 10], 0b011, 40, 48).expect("geometry"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn walk_visits_what_a_recursive_reference_visits_four_levels(
        steps in prop::collection::vec(step(), 0..12),
        walk in (0..SPACE_PAGES, 1u64..SPACE_PAGES),
        stop_after in 1usize..3000,
    ) {
        check(&TestFormat::four_level(), &steps, walk, stop_after)?;
    }

    #[test]
    fn walk_visits_what_a_recursive_reference_visits_three_levels(
        steps in prop::collection::vec(step(), 0..12),
        walk in (0..SPACE_PAGES, 1u64..SPACE_PAGES),
        stop_after in 1usize..3000,
    ) {
        check(&three_level(), &steps, walk, stop_after)?;
    }
}

#[test]
fn walk_of_a_full_range_of_pages_visits_every_leaf_between_its_tables() {
    let fmt = TestFormat::four_level();
    let host = HeapHost::new(0x8000_0000, 64 << 20, 4096);
    let mut t = Table::new(fmt.clone(), &host).expect("root");
    let opts = MapOptions {
        max_level: Some(Level::LEAF),
        young_dirty: true,
    };
    // Pages over 4 MiB + 8 KiB from 2 MiB - 4 KiB: three leaf tables, the outer ones partly used.
    let r = GpaRange::new(Gpa::new((2 << 20) - PAGE), (4 << 20) + 2 * PAGE).unwrap();
    t.map_with(r, Hpa::new(0x40_0000_0000), Attrs::normal(Perms::RW), opts)
        .unwrap();
    let got = engine(&t, r, usize::MAX);
    let mut want = Vec::new();
    reference(
        &fmt,
        &host,
        t.root().raw(),
        fmt.geometry().root_level(),
        0,
        r.start().raw(),
        r.start().raw() + r.size() - 1,
        &mut want,
    );
    assert_eq!(got, want);
    let leaves = got
        .iter()
        .filter(|v| v.3 == EntryKind::Leaf && v.4 == Visit::Leaf)
        .count();
    assert_eq!(leaves as u64, r.size() / PAGE);
}
