//! The engine for many callers, one behaviour per test: flush obligations, budgets and resumes,
//! per-chunk reservation, unmapping with no memory, the frozen rule, deferred freeing, collapse
//! keeping hardware-set dirty bits, typed misuse errors.

use std::ops::ControlFlow;

use tdp_core::testing::{HeapHost, HostEvent, TestFormat};
use tdp_core::{
    Attrs, Ctx, Error, Gpa, GpaRange, Host, Hpa, Level, MapOptions, PendingFlush, Perms, Progress,
    PteFormat, SharedHost, Tree, Visit,
};

const BASE: u64 = 0x1_0000_0000;
const MIB: u64 = 1 << 20;

fn range(start: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(start), size).unwrap()
}

fn small_pages() -> MapOptions {
    MapOptions {
        max_level: Some(Level::LEAF),
        young_dirty: true,
    }
}

fn flushes(events: &[HostEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, HostEvent::Flush(_)))
        .count()
}

/// The leaf tables of `tree` in `r`, by physical address.
fn leaf_tables<H: Host>(tree: &mut Tree<TestFormat, H>, r: GpaRange) -> Vec<u64> {
    let fmt = tree.format().clone();
    let mut out = Vec::new();
    tree.exclusive()
        .walk(r, |e| {
            if e.visit == Visit::TablePre && e.level == Level::new(1).unwrap() {
                out.push(fmt.table_addr(e.raw, e.level).raw());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

#[test]
fn batched_per_page_unmaps_share_one_flush_and_free_tables_only_after_it() {
    let host = HeapHost::new(BASE, 4 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&host);
    let x = tree.exclusive();
    let r = range(0x20_0000, 0x20_0000);
    assert_eq!(
        x.map(
            &mut ctx,
            &mut flush,
            r,
            Hpa::new(0x4020_0000),
            Attrs::normal(Perms::RW),
            small_pages()
        ),
        Ok(Progress::Done)
    );
    flush.flush_now();
    host.take_events();
    let mut flush = PendingFlush::new(&host);
    for page in 0..512u64 {
        let one = range(0x20_0000 + (page << 12), 0x1000);
        assert_eq!(x.unmap(&mut ctx, &mut flush, one), Ok(Progress::Done));
    }
    let before = host.take_events();
    assert_eq!(flushes(&before), 0, "a batched unmap flushed on its own");
    assert!(
        !before.iter().any(|e| matches!(e, HostEvent::Free(..))),
        "a table was freed before the batch's flush"
    );
    assert!(!flush.is_empty());
    flush.flush();
    let after = host.take_events();
    assert_eq!(flushes(&after), 1, "one invalidation for the whole batch");
    let flush_at = after
        .iter()
        .position(|e| matches!(e, HostEvent::Flush(_)))
        .unwrap();
    let first_free = after
        .iter()
        .position(|e| matches!(e, HostEvent::Free(..)))
        .expect("the emptied leaf table is freed");
    assert!(flush_at < first_free, "freed before the flush: {after:?}");
    assert_eq!(tree.stats().total_leaves(), 0);
    ctx.free_all(&host);
}

#[test]
fn dropping_a_pending_flush_flushes_it() {
    let host = HeapHost::new(BASE, 4 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    {
        let mut flush = PendingFlush::new(&host);
        let x = tree.exclusive();
        let _ = x
            .map(
                &mut ctx,
                &mut flush,
                range(0, 0x4000),
                Hpa::new(0x4000_0000),
                Attrs::normal(Perms::RW),
                small_pages(),
            )
            .unwrap();
        host.take_events();
        let _ = x.unmap(&mut ctx, &mut flush, range(0, 0x1000)).unwrap();
        assert_eq!(flushes(&host.take_events()), 0);
    }
    assert_eq!(
        flushes(&host.take_events()),
        1,
        "a dropped obligation still flushes"
    );
    ctx.free_all(&host);
}

#[test]
fn a_budgeted_unmap_yields_flushed_and_resumes_to_completion() {
    let host = HeapHost::new(BASE, 8 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&host);
    let all = range(0, 8 * MIB);
    let x = tree.exclusive();
    let _ = x
        .map(
            &mut ctx,
            &mut flush,
            all,
            Hpa::new(0x8000_0000),
            Attrs::normal(Perms::RW),
            small_pages(),
        )
        .unwrap();
    flush.flush_now();
    ctx.set_budget(Some(300));
    let (mut at, mut yields) = (0u64, 0);
    loop {
        match x
            .unmap(&mut ctx, &mut flush, range(at, 8 * MIB - at))
            .unwrap()
        {
            Progress::Done => break,
            Progress::Yielded { resume } => {
                assert!(resume.raw() > at, "no progress: {at:#x} -> {resume:?}");
                assert!(flush.is_empty(), "a yield left its flush owed");
                // Nothing before `resume` is still mapped.
                for p in (at..resume.raw()).step_by(0x1000) {
                    assert_eq!(x.query(Gpa::new(p)).unwrap(), None, "{p:#x} still mapped");
                }
                at = resume.raw();
                yields += 1;
            }
        }
    }
    flush.flush();
    assert!(
        yields >= 3,
        "only {yields} yields for 4 leaf tables (512 entries each) at a budget of 300"
    );
    let s = tree.stats();
    assert_eq!(s.total_leaves(), 0);
    assert_eq!(s.total_tables(), 1, "tables left after the unmap: {s:?}");
    ctx.free_all(&host);
}

#[test]
fn a_budgeted_map_of_a_huge_range_reserves_per_chunk_not_up_front() {
    // 4 GiB of 4 KiB pages needs 2048 leaf tables; the first chunk is about 512 of them.
    let host = HeapHost::new(BASE, 16 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&host);
    let x = tree.exclusive();
    ctx.set_budget(Some(4096));
    let size = 4u64 << 30;
    let before = host.allocations();
    let r = x.map(
        &mut ctx,
        &mut flush,
        range(0, size),
        Hpa::new(0x10_0000_0000),
        Attrs::normal(Perms::RW),
        small_pages(),
    );
    let Ok(Progress::Yielded { resume }) = r else {
        panic!("expected a yield, got {r:?}")
    };
    let allocated = host.allocations() - before;
    assert!(
        allocated <= 520,
        "{allocated} tables allocated before the first yield"
    );
    let mut at = resume.raw();
    while let Progress::Yielded { resume } = x
        .map(
            &mut ctx,
            &mut flush,
            range(at, size - at),
            Hpa::new(0x10_0000_0000 + at),
            Attrs::normal(Perms::RW),
            small_pages(),
        )
        .unwrap()
    {
        assert!(resume.raw() > at);
        at = resume.raw();
    }
    for p in (0..size).step_by(0x3f_f000) {
        let m = x.query(Gpa::new(p)).unwrap().expect("mapped");
        assert_eq!(m.hpa, Hpa::new(0x10_0000_0000 + p));
    }
    assert_eq!(tree.stats().leaves[0], size >> 12);
    ctx.free_all(&host);
}

#[test]
fn an_unmap_that_cuts_no_huge_leaf_needs_no_memory() {
    let host = HeapHost::new(BASE, 2 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&host);
    let x = tree.exclusive();
    let _ = x
        .map(
            &mut ctx,
            &mut flush,
            range(0x20_0000, 0x20_0000),
            Hpa::new(0x4020_0000),
            Attrs::normal(Perms::RW),
            small_pages(),
        )
        .unwrap();
    flush.flush_now();
    ctx.free_all(&host);
    // Use up the host.
    let mut hoard = Vec::new();
    while let Some(pa) = host.alloc_table(4096) {
        hoard.push(pa);
    }
    // A 4 KiB unmap and a 64 KiB unmap inside the leaf table, and a protect.
    assert_eq!(
        x.unmap(&mut ctx, &mut flush, range(0x20_1000, 0x1000)),
        Ok(Progress::Done)
    );
    assert_eq!(
        x.unmap(&mut ctx, &mut flush, range(0x21_0000, 0x1_0000)),
        Ok(Progress::Done)
    );
    assert_eq!(
        x.protect(
            &mut ctx,
            &mut flush,
            range(0x22_0000, 0x1_0000),
            Perms::READ
        ),
        Ok(Progress::Done)
    );
    flush.flush_now();
    assert_eq!(x.query(Gpa::new(0x20_1000)).unwrap(), None);
    assert!(x.query(Gpa::new(0x20_2000)).unwrap().is_some());
    for pa in hoard {
        // SAFETY: allocated above and never used.
        unsafe { host.free_table(pa, 4096) };
    }
    ctx.free_all(&host);
}

#[test]
fn an_unmap_that_must_split_with_no_memory_fails_and_changes_nothing() {
    let host = HeapHost::new(BASE, 2 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&host);
    let x = tree.exclusive();
    let _ = x
        .map(
            &mut ctx,
            &mut flush,
            range(0x20_0000, 0x20_0000),
            Hpa::new(0x4020_0000),
            Attrs::normal(Perms::RW),
            MapOptions::default(),
        )
        .unwrap();
    flush.flush_now();
    ctx.free_all(&host);
    let mut hoard = Vec::new();
    while let Some(pa) = host.alloc_table(4096) {
        hoard.push(pa);
    }
    let stats = x.tree().stats();
    assert!(matches!(
        x.unmap(&mut ctx, &mut flush, range(0x20_1000, 0x1000)),
        Err(Error::OutOfMemory { .. })
    ));
    assert_eq!(x.tree().stats(), stats);
    assert!(x.query(Gpa::new(0x20_1000)).unwrap().is_some());
    for pa in hoard {
        // SAFETY: allocated above and never used.
        unsafe { host.free_table(pa, 4096) };
    }
    ctx.free_all(&host);
}

#[test]
fn a_frozen_entry_is_never_overwritten_and_a_shared_map_reports_retry() {
    let host = HeapHost::new(BASE, 2 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&host);
    let _ = tree
        .exclusive()
        .map(
            &mut ctx,
            &mut flush,
            range(0, 0x1000),
            Hpa::new(0x4000_0000),
            Attrs::normal(Perms::RW),
            small_pages(),
        )
        .unwrap();
    let table = leaf_tables(&mut tree, range(0, 0x20_0000))[0];
    let fmt = tree.format().clone();
    // Another updater owns the slot of page 1.
    let frozen = fmt.frozen(Level::LEAF);
    host.write_phys(table + 8, &frozen.to_le_bytes());
    let guard = host.read_side();
    let s = tree.shared(&guard);
    let r = s.map(
        &mut ctx,
        &mut flush,
        range(0x1000, 0x1000),
        Hpa::new(0x4000_1000),
        Attrs::normal(Perms::RW),
        small_pages(),
    );
    assert_eq!(
        r,
        Err(Error::Retry {
            gpa: Gpa::new(0x1000)
        })
    );
    assert_eq!(
        host.load_phys_u64(table + 8),
        Some(frozen),
        "the frozen entry was overwritten"
    );
    // Unmap and protect leave it alone too (they restart, then give up the same way).
    assert!(matches!(
        s.unmap(&mut ctx, &mut flush, range(0, 0x2000)),
        Err(Error::Retry { .. })
    ));
    assert_eq!(host.load_phys_u64(table + 8), Some(frozen));
    drop(guard);
    host.write_phys(table + 8, &0u64.to_le_bytes());
    flush.flush();
    ctx.free_all(&host);
}

#[test]
fn a_shared_unmap_retires_a_whole_table_and_frees_it_after_the_grace_period() {
    let host = HeapHost::new(BASE, 4 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&host);
    let r = range(0x20_0000, 0x20_0000);
    let _ = tree
        .exclusive()
        .map(
            &mut ctx,
            &mut flush,
            r,
            Hpa::new(0x4020_0000),
            Attrs::normal(Perms::RW),
            small_pages(),
        )
        .unwrap();
    flush.flush_now();
    let table = leaf_tables(&mut tree, r)[0];
    let reader = host.read_side();
    {
        let guard = host.read_side();
        let s = tree.shared(&guard);
        assert_eq!(s.unmap(&mut ctx, &mut flush, r), Ok(Progress::Done));
        assert_eq!(s.query(Gpa::new(0x20_0000)).unwrap(), None);
    }
    flush.flush();
    assert_eq!(
        host.pending_retired_tables(),
        1,
        "retired, held back by the reader"
    );
    assert!(
        !host.is_poisoned(table),
        "freed while a reader could hold it"
    );
    drop(reader);
    host.reclaim();
    assert_eq!(host.pending_retired_tables(), 0);
    assert!(host.is_poisoned(table), "freed tables are poisoned");
    let s = tree.stats();
    assert_eq!((s.total_leaves(), s.tables[0]), (0, 0));
    ctx.free_all(&host);
}

#[test]
fn collapse_keeps_a_dirty_bit_hardware_set_in_one_child() {
    let host = HeapHost::new(BASE, 4 * MIB, 4096);
    let mut fmt = TestFormat::four_level();
    fmt.hardware_ad = true;
    let mut tree = Tree::new(fmt.clone(), &host).unwrap();
    let mut ctx = Ctx::new(&fmt);
    let mut flush = PendingFlush::new(&host);
    let r = range(0x20_0000, 0x20_0000);
    let opts = MapOptions {
        max_level: Some(Level::LEAF),
        young_dirty: false,
    };
    let _ = tree
        .exclusive()
        .map(
            &mut ctx,
            &mut flush,
            r,
            Hpa::new(0x4020_0000),
            Attrs::normal(Perms::RW),
            opts,
        )
        .unwrap();
    let table = leaf_tables(&mut tree, r)[0];
    // Hardware writes through page 77: A and D set in that child only.
    let pa = table + 77 * 8;
    let v = host.load_phys_u64(pa).unwrap();
    let ad = fmt.ad_bits(u64::MAX, Level::LEAF);
    assert_eq!(host.compare_exchange_phys_u64(pa, v, v | ad), Some(Ok(v)));
    let x = tree.exclusive();
    assert_eq!(x.collapse(&mut ctx, &mut flush, r), Ok(Progress::Done));
    flush.flush();
    let m = x.query(Gpa::new(0x20_0000)).unwrap().unwrap();
    assert_eq!(m.level, Level::new(1).unwrap());
    assert_eq!(m.ad.dirty, Some(true), "the child's dirty bit was lost");
    ctx.free_all(&host);
}

#[test]
fn clear_on_a_budget_empties_the_tree_and_frees_every_table() {
    let host = HeapHost::new(BASE, 8 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&host);
    let x = tree.exclusive();
    for (i, g) in [0u64, 1 << 30, 1 << 39].into_iter().enumerate() {
        let _ = x
            .map(
                &mut ctx,
                &mut flush,
                range(g, 2 * MIB + 0x3000),
                Hpa::new(0x1_0000_0000 * (i as u64 + 1)),
                Attrs::normal(Perms::RW),
                MapOptions::default(),
            )
            .unwrap();
    }
    flush.flush_now();
    ctx.set_budget(Some(64));
    let mut p = x.clear(&mut ctx, &mut flush).unwrap();
    let mut calls = 1;
    while let Progress::Yielded { resume } = p {
        p = x.clear_from(&mut ctx, &mut flush, resume).unwrap();
        calls += 1;
    }
    flush.flush();
    assert!(calls > 1);
    let s = tree.stats();
    assert_eq!((s.total_leaves(), s.total_tables()), (0, 1), "{s:?}");
    ctx.free_all(&host);
    assert_eq!(host.outstanding_tables(), 1, "only the root is left");
}

#[test]
fn a_reserve_made_for_another_geometry_is_refused() {
    let host = HeapHost::new(BASE, 2 * MIB, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let three = tdp_core::Geometry::new(12, &[9, 9, 9], 0b11, 39, 52).unwrap();
    let mut ctx = Ctx::new(&TestFormat::with_geometry(three));
    let mut flush = PendingFlush::new(&host);
    let r = tree.exclusive().map(
        &mut ctx,
        &mut flush,
        range(0, 0x1000),
        Hpa::new(0x4000_0000),
        Attrs::normal(Perms::RW),
        MapOptions::default(),
    );
    assert_eq!(r, Err(Error::CacheMismatch));
    assert_eq!(tree.stats().total_leaves(), 0);
}

#[test]
fn shared_and_exclusive_maps_build_the_same_tree() {
    let host = HeapHost::new(BASE, 8 * MIB, 4096);
    let mut a = Tree::new(TestFormat::four_level(), &host).unwrap();
    let b = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(a.format());
    let mut flush = PendingFlush::new(&host);
    let layout = [
        (0u64, 0x5000u64),
        (0x1f_f000, 0x20_2000),
        (0x4000_0000, 0x4020_0000),
    ];
    {
        let x = a.exclusive();
        let g = host.read_side();
        let s = b.shared(&g);
        for &(gpa, size) in &layout {
            let hpa = Hpa::new(0x2_0000_0000 + gpa);
            let _ = x
                .map(
                    &mut ctx,
                    &mut flush,
                    range(gpa, size),
                    hpa,
                    Attrs::normal(Perms::RWX),
                    MapOptions::default(),
                )
                .unwrap();
            let _ = s
                .map(
                    &mut ctx,
                    &mut flush,
                    range(gpa, size),
                    hpa,
                    Attrs::normal(Perms::RWX),
                    MapOptions::default(),
                )
                .unwrap();
        }
        let _ = x
            .protect(
                &mut ctx,
                &mut flush,
                range(0x20_0000, 0x20_0000),
                Perms::READ,
            )
            .unwrap();
        let _ = s
            .protect(
                &mut ctx,
                &mut flush,
                range(0x20_0000, 0x20_0000),
                Perms::READ,
            )
            .unwrap();
        let _ = x
            .unmap(&mut ctx, &mut flush, range(0x1000, 0x1000))
            .unwrap();
        let _ = s
            .unmap(&mut ctx, &mut flush, range(0x1000, 0x1000))
            .unwrap();
        for p in (0..0x4100_0000u64).step_by(0x1000) {
            let (ma, mb) = (x.query(Gpa::new(p)).unwrap(), s.query(Gpa::new(p)).unwrap());
            assert_eq!(
                ma.map(|m| (m.hpa, m.level, m.attrs)),
                mb.map(|m| (m.hpa, m.level, m.attrs)),
                "{p:#x}"
            );
        }
    }
    assert_eq!(a.stats().leaves, b.stats().leaves);
    flush.flush();
    ctx.free_all(&host);
}

#[test]
fn a_huge_map_over_a_table_emptied_in_shared_mode_replaces_it_with_one_leaf() {
    let host = HeapHost::new(BASE, 4 * MIB, 4096);
    let tree = Tree::new(TestFormat::four_level(), &host).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&host);
    {
        let g = host.read_side();
        let s = tree.shared(&g);
        let one = range(0x20_0000, 0x1000);
        let _ = s
            .map(
                &mut ctx,
                &mut flush,
                one,
                Hpa::new(0x4020_0000),
                Attrs::normal(Perms::RW),
                MapOptions::default(),
            )
            .unwrap();
        let _ = s.unmap(&mut ctx, &mut flush, one).unwrap();
        assert_eq!(
            tree.stats().tables[0],
            1,
            "shared unmap keeps the emptied table"
        );
        let two = range(0x20_0000, 0x20_0000);
        let _ = s
            .map(
                &mut ctx,
                &mut flush,
                two,
                Hpa::new(0x4020_0000),
                Attrs::normal(Perms::RW),
                MapOptions::default(),
            )
            .unwrap();
        let m = s.query(Gpa::new(0x21_2345)).unwrap().unwrap();
        assert_eq!(
            (m.level, m.hpa),
            (Level::new(1).unwrap(), Hpa::new(0x4021_2345))
        );
    }
    flush.flush();
    host.synchronize();
    let st = tree.stats();
    assert_eq!(
        (st.tables[0], st.leaves[1], st.leaves[0]),
        (0, 1, 0),
        "{st:?}"
    );
    ctx.free_all(&host);
}
