//! `Host::free_tables`: the engine gives back the tables an operation detached as one list. The
//! heap host implements it natively (one lock per list) and counts the tables it frees that way;
//! a host that implements only the required methods gets the default body (one `free_table` per
//! table). The oracle is the layout the tests build (tables by level known from its shape) and the
//! heap host's own accounting (it panics on a double free and counts what is outstanding), not
//! the engine's statistics.

use core::ptr::NonNull;

use tdp_core::testing::{HeapHost, HostEvent, TestFormat};
use tdp_core::{
    Attrs, Ctx, Gpa, GpaRange, Host, Hpa, Level, MapOptions, PendingFlush, Perms, Progress,
    SharedHost, Table, TableMeta, TlbFlush, Tree,
};

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const PAGE: u64 = 4096;
const BASE: u64 = 0x1_0000_0000;
const WINDOW: u64 = 4 << 20;

/// Tables of the layout: the root, one level-2 table, three level-1 tables, 102 leaf tables.
const LAYOUT_TABLES: usize = 1 + 1 + 3 + 102;
/// Tables under the level-2 entry of [1 GiB, 2 GiB): its level-1 table and 101 leaf tables.
const RANGE_TABLES: usize = 1 + 101;

fn range(start: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(start), size).unwrap()
}

fn at(level: u8) -> MapOptions {
    MapOptions {
        max_level: Level::new(level),
        young_dirty: true,
    }
}

/// Inside [1 GiB, 2 GiB): 100 full leaf tables, one leaf table with 7 pages, 100 2 MiB leaves;
/// outside: 16 pages below 1 GiB (one more leaf table) and one 2 MiB leaf above 2 GiB.
fn layout() -> Vec<(GpaRange, u8)> {
    vec![
        (range(GIB, 100 * MIB2), 0),
        (range(GIB + 100 * MIB2 + 5 * PAGE, 7 * PAGE), 0),
        (range(GIB + 200 * MIB2, 100 * MIB2), 1),
        (range(0, 16 * PAGE), 0),
        (range(2 * GIB, MIB2), 1),
    ]
}

/// A host with only the required methods: `free_tables` is the trait's default body.
struct Plain<'h>(&'h HeapHost);

// SAFETY: every method forwards to the heap host, which upholds the contract.
unsafe impl Host for Plain<'_> {
    fn alloc_table(&self, size: usize) -> Option<Hpa> {
        self.0.alloc_table(size)
    }
    unsafe fn free_table(&self, pa: Hpa, size: usize) {
        // SAFETY: the caller upholds `free_table`'s contract, for the heap host as well.
        unsafe { self.0.free_table(pa, size) }
    }
    fn phys_to_virt(&self, pa: Hpa) -> NonNull<u8> {
        self.0.phys_to_virt(pa)
    }
    fn meta(&self, pa: Hpa) -> NonNull<TableMeta> {
        self.0.meta(pa)
    }
    fn flush_tlb(&self, flush: TlbFlush) {
        self.0.flush_tlb(flush)
    }
}

fn map_layout<H: Host>(t: &mut Table<TestFormat, H>) {
    for (r, level) in layout() {
        let hpa = Hpa::new(0x80_0000_0000 + r.start().raw());
        t.map_with(r, hpa, Attrs::normal(Perms::RW), at(level))
            .unwrap();
    }
}

/// Every table freed in `events` is freed once, after the first flush.
fn freed_once_after_flush(events: &[HostEvent]) -> Vec<Hpa> {
    let first_flush = events
        .iter()
        .position(|e| matches!(e, HostEvent::Flush(_)))
        .expect("a flush");
    let mut freed = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if let HostEvent::Free(pa, _) = e {
            assert!(i > first_flush, "{pa:?} freed before the flush");
            assert!(!freed.contains(pa), "{pa:?} freed twice");
            freed.push(*pa);
        }
    }
    freed
}

/// Maps the layout, unmaps [1 GiB, 2 GiB) with the reserve keeping `keep` tables per level, then
/// drops the table; returns the host's events of the unmap and of the drop.
fn unmap_then_drop<H: Host>(
    host: H,
    heap: &HeapHost,
    keep: u32,
) -> (Vec<HostEvent>, Vec<HostEvent>) {
    let mut t = Table::new(TestFormat::four_level(), host).unwrap();
    map_layout(&mut t);
    t.set_cache_keep(keep);
    let cached = t.stats().cached_bytes as usize / PAGE as usize;
    assert_eq!(heap.outstanding_tables(), LAYOUT_TABLES + cached);
    heap.take_events();
    t.unmap(range(GIB, GIB)).unwrap();
    let unmap = heap.take_events();
    let freed = freed_once_after_flush(&unmap);
    let cached_after = t.stats().cached_bytes as usize / PAGE as usize;
    // Every detached table is either freed or kept in the reserve.
    assert_eq!(freed.len() + (cached_after - cached), RANGE_TABLES);
    assert_eq!(
        heap.outstanding_tables(),
        LAYOUT_TABLES - RANGE_TABLES + cached_after,
        "the host sees every detached table not kept freed"
    );
    drop(t);
    let teardown = heap.take_events();
    freed_once_after_flush(&teardown);
    assert_eq!(heap.outstanding_tables(), 0, "tables leaked");
    (unmap, teardown)
}

#[test]
fn native_list_free_sees_every_detached_table_once() {
    for keep in [0, 2] {
        let heap = HeapHost::new(BASE, WINDOW, 4096);
        let before = heap.list_frees();
        let mut t = Table::new(TestFormat::four_level(), &heap).unwrap();
        map_layout(&mut t);
        t.set_cache_keep(keep);
        let cached = t.stats().cached_bytes as usize / PAGE as usize;
        heap.take_events();
        t.unmap(range(GIB, GIB)).unwrap();
        let freed = freed_once_after_flush(&heap.take_events());
        let kept = t.stats().cached_bytes as usize / PAGE as usize - cached;
        assert_eq!(freed.len() + kept, RANGE_TABLES, "keep {keep}");
        assert_eq!(
            heap.list_frees() - before,
            freed.len() as u64,
            "keep {keep}: every table the unmap freed went through the list"
        );
        // Teardown: every table but the root (freed alone) and the reserve (trimmed table by
        // table) goes through one list.
        let left = LAYOUT_TABLES - RANGE_TABLES - 1;
        let before = heap.list_frees();
        drop(t);
        assert_eq!(heap.list_frees() - before, left as u64, "keep {keep}");
        assert_eq!(heap.outstanding_tables(), 0, "keep {keep}: tables leaked");
    }
}

#[test]
fn default_body_frees_the_same_tables_in_the_same_order() {
    for keep in [0, 2] {
        let native = HeapHost::new(BASE, WINDOW, 4096);
        let (unmap_n, drop_n) = unmap_then_drop(&native, &native, keep);
        let plain_heap = HeapHost::new(BASE, WINDOW, 4096);
        let (unmap_p, drop_p) = unmap_then_drop(Plain(&plain_heap), &plain_heap, keep);
        assert_eq!(unmap_n, unmap_p, "keep {keep}: unmap events differ");
        assert_eq!(drop_n, drop_p, "keep {keep}: teardown events differ");
        assert_eq!(
            plain_heap.list_frees(),
            0,
            "the default body uses free_table"
        );
        assert!(
            native.list_frees() > 0,
            "the heap host frees lists natively"
        );
    }
}

#[test]
fn shared_unmap_retires_one_list_freed_after_the_grace_period() {
    let heap = HeapHost::new(BASE, WINDOW, 4096);
    let mut tree = Tree::new(TestFormat::four_level(), &heap).unwrap();
    let mut ctx = Ctx::new(tree.format());
    let mut flush = PendingFlush::new(&heap);
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
    let held = heap.outstanding_tables();
    let before = heap.list_frees();
    let mut flush = PendingFlush::new(&heap);
    {
        let guard = heap.read_side();
        let done = tree
            .shared(&guard)
            .unmap(&mut ctx, &mut flush, range(GIB, GIB));
        assert_eq!(done, Ok(Progress::Done));
    }
    flush.flush();
    heap.synchronize();
    // Shared mode removes the subtree whole (its entries frozen one by one) and retires it.
    assert_eq!(heap.list_frees() - before, RANGE_TABLES as u64);
    assert_eq!(heap.outstanding_tables(), held - RANGE_TABLES);
    drop(tree);
    ctx.free_all(&heap);
    heap.synchronize();
    assert_eq!(heap.outstanding_tables(), 0, "tables leaked");
}
