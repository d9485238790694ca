//! A range unmap that removes whole subtrees: a 1 GiB range holding full and partly used leaf
//! tables and 2 MiB leaves, next to mappings outside it that stay. The oracle is the layout the
//! test builds (known leaves and tables by level), not the engine's own walk; every mode must
//! end with exactly those statistics, one flush before any table is released, and no table
//! leaked.

use tdp_core::testing::{HeapHost, HostEvent, TestFormat};
use tdp_core::{
    Attrs, Ctx, Gpa, GpaRange, Hpa, Level, MapOptions, PendingFlush, Perms, Progress, SharedHost,
    Stats, Table, Tree,
};

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const PAGE: u64 = 4096;

fn range(start: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(start), size).unwrap()
}

fn at(level: u8) -> MapOptions {
    MapOptions {
        max_level: Level::new(level),
        young_dirty: true,
    }
}

/// (range, leaf level) of every mapping: inside [1 GiB, 2 GiB) 100 full leaf tables, one leaf
/// table with 7 pages, 100 2 MiB leaves; outside, 16 pages below 1 GiB and one 2 MiB leaf above
/// 2 GiB.
fn layout() -> Vec<(GpaRange, u8)> {
    vec![
        (range(GIB, 100 * MIB2), 0),
        (range(GIB + 100 * MIB2 + 5 * PAGE, 7 * PAGE), 0),
        (range(GIB + 200 * MIB2, 100 * MIB2), 1),
        (range(0, 16 * PAGE), 0),
        (range(2 * GIB, MIB2), 1),
    ]
}

/// The statistics of `layout()` with the 1 GiB range at `GIB` unmapped: 16 pages, one 2 MiB leaf;
/// tables: the root, one level-2 table, the level-1 tables of [0, 1 GiB) and [2 GiB, 3 GiB), one
/// leaf table.
fn after_unmap(s: &Stats) {
    assert_eq!(&s.leaves[..4], &[16, 1, 0, 0], "leaves by level");
    assert_eq!(&s.tables[..4], &[1, 2, 1, 1], "tables by level");
}

fn before_unmap(s: &Stats) {
    assert_eq!(
        &s.leaves[..4],
        &[100 * 512 + 7 + 16, 100 + 1, 0, 0],
        "leaves by level"
    );
    assert_eq!(&s.tables[..4], &[101 + 1, 3, 1, 1], "tables by level");
}

fn flushes_then_frees(events: &[HostEvent], frees: usize) {
    let flushes: Vec<usize> = (0..events.len())
        .filter(|&i| matches!(events[i], HostEvent::Flush(_)))
        .collect();
    assert_eq!(flushes.len(), 1, "one flush for the range: {events:?}");
    let freed: Vec<usize> = (0..events.len())
        .filter(|&i| matches!(events[i], HostEvent::Free(..)))
        .collect();
    assert_eq!(freed.len(), frees, "tables released");
    assert!(
        freed.iter().all(|&i| i > flushes[0]),
        "a table released before the flush"
    );
}

#[test]
fn range_unmap_of_whole_subtrees_keeps_exact_stats_one_flush_and_frees_every_table() {
    let host = HeapHost::new(0x1_0000_0000, 4 << 20, 4096);
    {
        let mut t = Table::new(TestFormat::four_level(), &host).unwrap();
        for (r, level) in layout() {
            t.map_with(
                r,
                Hpa::new(0x80_0000_0000 + r.start().raw()),
                Attrs::normal(Perms::RW),
                at(level),
            )
            .unwrap();
        }
        before_unmap(&t.stats());
        t.set_cache_keep(0);
        host.take_events();
        t.unmap(range(GIB, GIB)).unwrap();
        after_unmap(&t.stats());
        // 101 leaf tables and the level-1 table of the range.
        flushes_then_frees(&host.take_events(), 102);
        assert_eq!(
            host.outstanding_tables(),
            5,
            "only the tree's tables are held"
        );
        for i in 0..16 {
            assert!(
                t.query(Gpa::new(i * PAGE)).unwrap().is_some(),
                "outside page {i} kept"
            );
        }
        assert!(
            t.query(Gpa::new(2 * GIB)).unwrap().is_some(),
            "outside 2 MiB leaf kept"
        );
        assert!(t
            .query(Gpa::new(GIB + 100 * MIB2 + 5 * PAGE))
            .unwrap()
            .is_none());
    }
    assert_eq!(host.outstanding_tables(), 0, "tables leaked");
}

fn tree_with_layout(host: &HeapHost) -> (Tree<TestFormat, &HeapHost>, Ctx) {
    let mut tree = Tree::new(TestFormat::four_level(), host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(host);
    for (r, level) in layout() {
        let hpa = Hpa::new(0x80_0000_0000 + r.start().raw());
        let done = tree.exclusive().map(
            &mut ctx,
            &mut flush,
            r,
            hpa,
            Attrs::normal(Perms::RW),
            at(level),
        );
        assert_eq!(done, Ok(Progress::Done));
    }
    flush.flush();
    before_unmap(&tree.stats());
    host.take_events();
    (tree, ctx)
}

#[test]
fn exclusive_range_unmap_of_whole_subtrees_releases_them_only_after_the_one_flush() {
    let host = HeapHost::new(0x1_0000_0000, 4 << 20, 4096);
    let (mut tree, mut ctx) = tree_with_layout(&host);
    let mut flush = PendingFlush::new(&host);
    let done = tree
        .exclusive()
        .unmap(&mut ctx, &mut flush, range(GIB, GIB));
    assert_eq!(done, Ok(Progress::Done));
    assert!(
        !host
            .take_events()
            .iter()
            .any(|e| matches!(e, HostEvent::Free(..) | HostEvent::Flush(_))),
        "flushed or freed before the obligation was settled"
    );
    flush.flush();
    flushes_then_frees(&host.take_events(), 102);
    after_unmap(&tree.stats());
    drop(tree);
    ctx.free_all(&host);
    assert_eq!(host.outstanding_tables(), 0, "tables leaked");
}

#[test]
fn shared_range_unmap_of_whole_subtrees_keeps_exact_stats_and_frees_every_table() {
    let host = HeapHost::new(0x1_0000_0000, 4 << 20, 4096);
    let (tree, mut ctx) = tree_with_layout(&host);
    let mut flush = PendingFlush::new(&host);
    {
        let guard = host.read_side();
        let done = tree
            .shared(&guard)
            .unmap(&mut ctx, &mut flush, range(GIB, GIB));
        assert_eq!(done, Ok(Progress::Done));
    }
    flush.flush();
    let events = host.take_events();
    let flushes = events
        .iter()
        .filter(|e| matches!(e, HostEvent::Flush(_)))
        .count();
    assert_eq!(flushes, 1, "one flush for the range: {events:?}");
    after_unmap(&tree.stats());
    drop(tree);
    ctx.free_all(&host);
    host.synchronize();
    assert_eq!(host.outstanding_tables(), 0, "tables leaked");
}
