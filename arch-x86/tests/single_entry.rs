//! The single-entry paths (one leaf mapped or unmapped per call, at every leaf level, through the
//! cursor `Table` keeps across calls), checked through the independent EPT walker
//! (`tdp-walkers`, written from the SDM): every translation the walker finds is the one the call
//! sequence asked for, tables are counted and freed exactly, and bad input is refused like on the
//! general path.

use tdp_arch_x86::{Ept, EptCaps, EptOptions};
use tdp_core::testing::HeapHost;
use tdp_core::{Attrs, Error, Gpa, GpaRange, Level, MapOptions, Perms, Table};
use tdp_core::{Hpa, MemType};
use tdp_walkers::{ept, Access, PhysMem};

const WINDOW_BASE: u64 = 0x7_4000_0000;
const MAXPHYADDR: u8 = 46;
const HOST_RAM: u64 = 0x20_0000_0000;

struct Phys<'a>(&'a HeapHost);

impl PhysMem for Phys<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.0.read_phys(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.0.write_phys(pa, buf)
    }
}

fn ept() -> Ept {
    let caps = EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1);
    Ept::new(
        caps,
        EptOptions {
            levels: 4,
            accessed_dirty: true,
            maxphyaddr: MAXPHYADDR,
            mbec: false,
        },
    )
    .unwrap()
}

fn caps() -> ept::EptCaps {
    ept::EptCaps {
        maxphyaddr: MAXPHYADDR,
        execute_only: true,
        page_1g: true,
        mbec: false,
    }
}

/// What the walker finds for a read of `gpa`: the host address, or `None` (EPT violation).
fn walk(heap: &HeapHost, t: &Table<Ept, &HeapHost>, gpa: u64) -> Option<u64> {
    let eptp = t.format().eptp(t.root()).unwrap();
    match ept::peek(&Phys(heap), eptp, &caps(), gpa, Access::Read) {
        Ok(tr) => Some(tr.hpa),
        Err(ept::EptFault::Violation(_)) => None,
        Err(e) => panic!("EPT walk of {gpa:#x}: {e:?}"),
    }
}

fn range(start: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(start), size).unwrap()
}

fn pages_only() -> MapOptions {
    MapOptions {
        max_level: Some(Level::LEAF),
        young_dirty: true,
    }
}

fn rw() -> Attrs {
    Attrs::normal(Perms::RW)
}

#[test]
fn per_page_maps_and_unmaps_translate_through_the_walker_and_free_emptied_tables() {
    let heap = HeapHost::new(WINDOW_BASE, 8 << 20, 4096);
    let mut t = Table::new(ept(), &heap).unwrap();
    let start = 0x4000_0000 - 0x10_0000; // straddles a 1 GiB and a 2 MiB boundary
    let pages = 1024u64;
    for i in 0..pages {
        let gpa = start + (i << 12);
        let hpa = Hpa::new(HOST_RAM + (i << 12));
        t.map_with(range(gpa, 0x1000), hpa, rw(), pages_only())
            .unwrap();
    }
    for i in 0..pages {
        let gpa = start + (i << 12);
        assert_eq!(walk(&heap, &t, gpa), Some(HOST_RAM + (i << 12)), "{gpa:#x}");
    }
    assert_eq!(t.stats().leaves[0], pages);
    let tables = t.stats().tables;
    // Unmap every odd page, one call each: no table empties.
    for i in (1..pages).step_by(2) {
        t.unmap(range(start + (i << 12), 0x1000)).unwrap();
    }
    for i in 0..pages {
        let gpa = start + (i << 12);
        let want = (i % 2 == 0).then_some(HOST_RAM + (i << 12));
        assert_eq!(walk(&heap, &t, gpa), want, "{gpa:#x}");
    }
    assert_eq!(t.stats().leaves[0], pages / 2);
    assert_eq!(t.stats().tables, tables, "no table emptied yet");
    // Then the even ones: the last page of each leaf table frees it (and the directories that
    // empty with it).
    for i in (0..pages).step_by(2) {
        t.unmap(range(start + (i << 12), 0x1000)).unwrap();
    }
    for i in 0..pages {
        assert_eq!(walk(&heap, &t, start + (i << 12)), None);
    }
    let s = t.stats();
    assert_eq!(s.total_leaves(), 0);
    assert_eq!(s.total_tables(), 1, "only the root is left: {s:?}");
    drop(t);
    assert_eq!(heap.outstanding_tables(), 0, "a table leaked");
}

#[test]
fn the_cursor_never_writes_into_a_table_another_operation_freed_and_reused() {
    let heap = HeapHost::new(WINDOW_BASE, 8 << 20, 4096);
    let mut t = Table::new(ept(), &heap).unwrap();
    let a = 0x20_0000u64; // one leaf table's span
    let b = 0x80_0000u64; // another's, in the same directory
    for i in 0..2u64 {
        t.map_with(
            range(a + (i << 12), 0x1000),
            Hpa::new(HOST_RAM + (i << 12)),
            rw(),
            pages_only(),
        )
        .unwrap();
    }
    // A range unmap (two leaf tables' span: the general path) frees a's leaf table into the
    // reserve; b's first map takes it from there.
    t.unmap(range(a, 0x40_0000)).unwrap();
    t.map_with(
        range(b, 0x1000),
        Hpa::new(HOST_RAM + 0x10_0000),
        rw(),
        pages_only(),
    )
    .unwrap();
    // A map back in a's span must build a's table again, not write through a remembered one.
    t.map_with(
        range(a + 0x1000, 0x1000),
        Hpa::new(HOST_RAM + 0x1000),
        rw(),
        pages_only(),
    )
    .unwrap();
    assert_eq!(walk(&heap, &t, a + 0x1000), Some(HOST_RAM + 0x1000));
    assert_eq!(walk(&heap, &t, a), None);
    assert_eq!(walk(&heap, &t, b), Some(HOST_RAM + 0x10_0000));
    assert_eq!(
        walk(&heap, &t, b + 0x1000),
        None,
        "a map of a's page landed in b's table"
    );
    assert_eq!(t.stats().leaves[0], 2);
    assert_eq!(t.stats().tables[0], 2);
    drop(t);
    assert_eq!(heap.outstanding_tables(), 0);
}

#[test]
fn one_call_per_huge_leaf_writes_one_leaf_at_its_level_and_unmaps_it_whole() {
    let heap = HeapHost::new(WINDOW_BASE, 8 << 20, 4096);
    let mut t = Table::new(ept(), &heap).unwrap();
    let two_m = 1u64 << 21;
    let one_g = 1u64 << 30;
    // A directory for the 2 MiB leaves exists after the first; later ones take the
    // single-entry path. Same for 1 GiB leaves under the PML4 entry.
    for i in 0..4u64 {
        let gpa = one_g + i * two_m;
        t.map(range(gpa, two_m), Hpa::new(HOST_RAM + i * two_m), rw())
            .unwrap();
    }
    for i in 2..4u64 {
        let gpa = i * one_g;
        t.map(range(gpa, one_g), Hpa::new(i * one_g), rw()).unwrap();
    }
    let s = t.stats();
    assert_eq!((s.leaves[0], s.leaves[1], s.leaves[2]), (0, 4, 2), "{s:?}");
    for i in 0..4u64 {
        let gpa = one_g + i * two_m + 0x12_3000;
        let want = HOST_RAM + i * two_m + 0x12_3000;
        assert_eq!(walk(&heap, &t, gpa & !0xfff), Some(want & !0xfff));
        assert_eq!(t.query(Gpa::new(gpa)).unwrap().unwrap().level.get(), 1);
    }
    for i in 2..4u64 {
        let gpa = i * one_g + 0x2345_6000;
        assert_eq!(walk(&heap, &t, gpa), Some(gpa));
    }
    // One call per leaf takes them out again (the last 2 MiB leaf frees its directory).
    for i in 0..4u64 {
        t.unmap(range(one_g + i * two_m, two_m)).unwrap();
        assert_eq!(walk(&heap, &t, one_g + i * two_m), None);
    }
    t.unmap(range(2 * one_g, one_g)).unwrap();
    assert_eq!(walk(&heap, &t, 2 * one_g), None);
    assert_eq!(walk(&heap, &t, 3 * one_g), Some(3 * one_g));
    let s = t.stats();
    assert_eq!((s.leaves[1], s.leaves[2]), (0, 1), "{s:?}");
    assert_eq!(s.tables[1], 0, "the emptied directory was freed: {s:?}");
    drop(t);
    assert_eq!(heap.outstanding_tables(), 0);
}

#[test]
fn a_single_entry_call_refuses_bad_input_and_changes_nothing() {
    let heap = HeapHost::new(WINDOW_BASE, 8 << 20, 4096);
    let mut t = Table::new(ept(), &heap).unwrap();
    let page = range(0x1000, 0x1000);
    t.map(page, Hpa::new(HOST_RAM), rw()).unwrap();
    let before = t.stats();
    // Write without read: EPT cannot encode it; twice, so a cached template cannot hide it.
    let bad = Attrs::normal(Perms::WRITE);
    for _ in 0..2 {
        assert!(matches!(
            t.map(range(0x2000, 0x1000), Hpa::new(HOST_RAM + 0x1000), bad),
            Err(Error::UnsupportedAttrs { .. })
        ));
    }
    assert_eq!(
        t.map(page, Hpa::new(HOST_RAM + 0x5000), rw()),
        Err(Error::AlreadyMapped {
            gpa: Gpa::new(0x1000)
        })
    );
    assert!(matches!(
        t.map(range(0x3000, 0x1000), Hpa::new(1 << MAXPHYADDR), rw()),
        Err(Error::HpaTooWide { .. })
    ));
    assert!(matches!(
        t.map(range(0x3000, 0x1000), Hpa::new(HOST_RAM + 0x800), rw()),
        Err(Error::UnalignedHpa { .. })
    ));
    assert!(matches!(
        t.unmap(range(1 << 48, 0x1000)),
        Err(Error::GpaTooWide { .. })
    ));
    assert_eq!(t.stats(), before);
    assert_eq!(walk(&heap, &t, 0x1000), Some(HOST_RAM));
    assert_eq!(walk(&heap, &t, 0x2000), None);
    // Other attributes after a refusal: a new template, the walker sees them.
    let uc = Attrs {
        mem: MemType::Uncached,
        ..Attrs::normal(Perms::READ)
    };
    t.map(range(0x2000, 0x1000), Hpa::new(HOST_RAM + 0x1000), uc)
        .unwrap();
    let eptp = t.format().eptp(t.root()).unwrap();
    let tr = ept::peek(&Phys(&heap), eptp, &caps(), 0x2000, Access::Read).unwrap();
    assert_eq!((tr.hpa, tr.memtype), (HOST_RAM + 0x1000, 0));
    assert!(ept::peek(&Phys(&heap), eptp, &caps(), 0x2000, Access::Write).is_err());
    drop(t);
    assert_eq!(heap.outstanding_tables(), 0);
}

#[test]
fn translate_and_the_lazy_leaf_agree_with_the_walker_at_every_level() {
    let heap = HeapHost::new(WINDOW_BASE, 8 << 20, 4096);
    let mut t = Table::new(ept(), &heap).unwrap();
    let two_m = 1u64 << 21;
    let one_g = 1u64 << 30;
    let ro_uc = Attrs {
        mem: MemType::Uncached,
        ..Attrs::normal(Perms::READ)
    };
    t.map(range(0x5000, 0x1000), Hpa::new(HOST_RAM + 0x9000), ro_uc)
        .unwrap();
    t.map(range(two_m, two_m), Hpa::new(HOST_RAM + two_m), rw())
        .unwrap();
    t.map(range(one_g, one_g), Hpa::new(one_g), rw()).unwrap();
    let eptp = t.format().eptp(t.root()).unwrap();
    for (gpa, level) in [
        (0x5abcu64, 0u8),
        (two_m + 0x1_2345, 1),
        (one_g + 0x1234_5678, 2),
    ] {
        let w = ept::peek(&Phys(&heap), eptp, &caps(), gpa & !0xfff, Access::Read).unwrap();
        let tr = t.translate(Gpa::new(gpa)).unwrap().unwrap();
        assert_eq!(tr.hpa.raw(), w.hpa + (gpa & 0xfff), "{gpa:#x}");
        assert_eq!(tr.level.get(), level);
        let leaf = t.leaf(Gpa::new(gpa)).unwrap().unwrap();
        assert_eq!(leaf.translation, tr);
        let writable = ept::peek(&Phys(&heap), eptp, &caps(), gpa & !0xfff, Access::Write).is_ok();
        assert_eq!(leaf.attrs().perms.contains(Perms::WRITE), writable);
        assert_eq!(leaf.attrs().mem == MemType::Uncached, w.memtype == 0);
        assert_eq!(t.query(Gpa::new(gpa)).unwrap(), Some(leaf.decode()));
    }
    for gpa in [0x4000u64, 0x6000, 4 * two_m, 3 * one_g] {
        assert_eq!(t.translate(Gpa::new(gpa)).unwrap(), None, "{gpa:#x}");
    }
    assert!(matches!(
        t.translate(Gpa::new(1 << 48)),
        Err(Error::GpaTooWide { .. })
    ));
}

#[test]
fn unmapping_the_last_page_of_a_table_flushes_its_span_with_the_walk_caches_before_reuse() {
    use tdp_core::testing::HostEvent;
    use tdp_core::TlbFlush;
    let heap = HeapHost::new(WINDOW_BASE, 8 << 20, 4096);
    let mut t = Table::new(ept(), &heap).unwrap();
    // Two pages in one leaf table, alone under their PML4 entry: the last unmap empties the leaf
    // table, its directory and its PDPT.
    let gpa = 0x80_0000_0000u64 + 0x4000_0000 + 0x20_0000;
    for i in 0..2u64 {
        t.map_with(
            range(gpa + (i << 12), 0x1000),
            Hpa::new(HOST_RAM + (i << 12)),
            rw(),
            pages_only(),
        )
        .unwrap();
    }
    let tables = t.stats().tables;
    assert_eq!(&tables[..4], &[1, 1, 1, 1], "{tables:?}");
    t.set_cache_keep(0); // every freed table goes back to the host, where the events show it
    heap.set_recording(true);
    t.unmap(range(gpa, 0x1000)).unwrap();
    let first = heap.take_events();
    assert!(
        !first.iter().any(|e| matches!(e, HostEvent::Free(..))),
        "{first:?}"
    );
    t.unmap(range(gpa + 0x1000, 0x1000)).unwrap();
    let events = heap.take_events();
    let flush_at = events
        .iter()
        .position(|e| matches!(e, HostEvent::Flush(_)))
        .expect("a flush");
    let HostEvent::Flush(TlbFlush::Range {
        start,
        size,
        tables: walk_caches,
        ..
    }) = events[flush_at]
    else {
        panic!("a range flush: {events:?}");
    };
    // The highest table removed is the PDPT: its span is the 512 GiB of the PML4 entry.
    let span = 1u64 << 39;
    assert!(walk_caches, "table entries were removed: {events:?}");
    assert!(
        start.raw() <= gpa & !(span - 1) && start.raw() + size >= (gpa & !(span - 1)) + span,
        "the flush covers the removed PDPT's span: {events:?}"
    );
    let frees: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, HostEvent::Free(..)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(frees.len(), 3, "leaf table, directory, PDPT: {events:?}");
    assert!(
        frees.iter().all(|&i| i > flush_at),
        "freed before the flush: {events:?}"
    );
    let s = t.stats();
    assert_eq!((s.total_leaves(), s.total_tables()), (0, 1), "{s:?}");
    assert_eq!(walk(&heap, &t, gpa + 0x1000), None);
    drop(t);
    assert_eq!(heap.outstanding_tables(), 0, "a table leaked");
}

#[test]
fn the_cursor_forgets_a_table_a_single_page_unmap_freed() {
    let heap = HeapHost::new(WINDOW_BASE, 8 << 20, 4096);
    let mut t = Table::new(ept(), &heap).unwrap();
    let a = 0x20_0000u64; // one leaf table's span
    let b = 0x80_0000u64; // another's, in the same directory
    t.map_with(range(b, 0x1000), Hpa::new(HOST_RAM), rw(), pages_only())
        .unwrap();
    t.map_with(
        range(a, 0x1000),
        Hpa::new(HOST_RAM + 0x1000),
        rw(),
        pages_only(),
    )
    .unwrap();
    // The last page of a's table: the table goes to the reserve (the cursor named it).
    t.unmap(range(a, 0x1000)).unwrap();
    // b's neighbour needs a leaf table in a third span: it takes a's old table from the reserve.
    let c = 0xa0_0000u64;
    t.map_with(
        range(c, 0x1000),
        Hpa::new(HOST_RAM + 0x2000),
        rw(),
        pages_only(),
    )
    .unwrap();
    // A map back in a's span must build a table for it, not write through the remembered one.
    t.map_with(
        range(a + 0x1000, 0x1000),
        Hpa::new(HOST_RAM + 0x3000),
        rw(),
        pages_only(),
    )
    .unwrap();
    assert_eq!(walk(&heap, &t, a + 0x1000), Some(HOST_RAM + 0x3000));
    assert_eq!(walk(&heap, &t, c), Some(HOST_RAM + 0x2000));
    assert_eq!(
        walk(&heap, &t, c + 0x1000),
        None,
        "a map of a's page landed in c's table"
    );
    assert_eq!(walk(&heap, &t, b), Some(HOST_RAM));
    assert_eq!(t.stats().leaves[0], 3);
    assert_eq!(t.stats().tables[0], 3);
    drop(t);
    assert_eq!(heap.outstanding_tables(), 0);
}
