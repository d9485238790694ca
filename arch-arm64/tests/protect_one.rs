//! `protect` of exactly one aligned leaf (the one-leaf path: straight to the slot) at every leaf
//! level, checked through the independent stage-2 walker (`tdp_walkers::stage2`, through
//! `common`), the recording host's events (flushes, instruction-cache invalidations) and the raw
//! table memory, byte for byte, for "changed nothing". The shapes the path must leave to the
//! general one (a huge leaf cut by the range, a table where the leaf would be) are checked here
//! too, as is the shared-mode call through the tree API.

mod common;

use common::peek;
use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_core::host::SharedHost as _;
use tdp_core::testing::{HeapHost, HostEvent};
use tdp_core::{
    Attrs, Ctx, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, PendingFlush, Perms,
    Progress, Table, TlbFlush,
};

const WINDOW: u64 = 0x4000_0000;
const WINDOW_SIZE: u64 = 4 << 20;
const PAGE: u64 = 4096;
const TWO_M: u64 = 1 << 21;
const ONE_G: u64 = 1 << 30;
/// A 2 MiB block (RWX), then a 4 KiB page (RW) and a 4 KiB device page (RW) in the next 2 MiB,
/// and a 1 GiB block (RW) at `BLOCK_1G`.
const BLOCK_2M: u64 = 0x8000_0000;
const PAGE_RW: u64 = BLOCK_2M + 2 * TWO_M;
const PAGE_DEV: u64 = PAGE_RW + PAGE;
const BLOCK_1G: u64 = 0x1_0000_0000;
const HPA: u64 = 0x2_0000_0000;

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

/// 4 KiB granule, 40-bit IPA, FWB, HA + HD, no DIC (executable mappings need an
/// instruction-cache invalidation).
fn format() -> Stage2 {
    let caps = Stage2Caps {
        pa_range_bits: 48,
        ..Stage2Caps::all()
    };
    let opts = Stage2Options {
        fwb: true,
        hw_access: true,
        hw_dirty: true,
        ..Stage2Options::new(Granule::K4, 40, 48)
    };
    Stage2::new(caps, opts).unwrap()
}

fn attrs(perms: Perms, mem: MemType) -> Attrs {
    Attrs {
        perms,
        mem,
        ignore_guest_memtype: false,
    }
}

fn hpa_of(gpa: u64) -> u64 {
    HPA + (gpa - BLOCK_2M)
}

fn build(host: &HeapHost) -> Table<Stage2, &HeapHost> {
    let mut t = Table::new(format(), host).unwrap();
    let at = |level| MapOptions {
        max_level: Some(Level::new(level).unwrap()),
        young_dirty: true,
    };
    let wb = |p| attrs(p, MemType::WriteBack);
    let m = [
        (BLOCK_2M, TWO_M, wb(Perms::RWX), 1),
        (PAGE_RW, PAGE, wb(Perms::RW), 0),
        (PAGE_DEV, PAGE, attrs(Perms::RW, MemType::Device), 0),
        (BLOCK_1G, ONE_G, wb(Perms::RW), 2),
    ];
    for (gpa, size, a, level) in m {
        t.map_with(range(gpa, size), Hpa::new(hpa_of(gpa)), a, at(level))
            .unwrap();
    }
    host.take_events();
    t
}

fn window(host: &HeapHost) -> Vec<u8> {
    let mut buf = vec![0u8; WINDOW_SIZE as usize];
    assert!(host.read_phys(WINDOW, &mut buf));
    buf
}

/// What the walker sees at `gpa`: the accesses that translate and the size of the leaf.
fn seen(host: &HeapHost, t: &Table<Stage2, &HeapHost>, gpa: u64) -> (Perms, u64, Option<u64>) {
    let p = peek(host, t.format(), t.root().raw(), gpa);
    let size = p.leaf.map_or(0, |l| l.size);
    (p.seen.perms, size, p.seen.hpa)
}

fn flush_of(gpa: u64, size: u64, level: u8) -> HostEvent {
    HostEvent::Flush(TlbFlush::Range {
        start: Gpa::new(gpa),
        size,
        level: Level::new(level),
        tables: false,
    })
}

#[test]
fn one_leaf_protect_flushes_only_when_a_permission_is_removed_at_every_level() {
    let host = HeapHost::new(WINDOW, WINDOW_SIZE, 4096);
    let mut t = build(&host);
    let stats = t.stats();
    for (gpa, size, level, was) in [
        (BLOCK_2M, TWO_M, 1, Perms::RWX),
        (PAGE_RW, PAGE, 0, Perms::RW),
        (BLOCK_1G, ONE_G, 2, Perms::RW),
    ] {
        assert_eq!(seen(&host, &t, gpa), (was, size, Some(hpa_of(gpa))));
        // Removing write (and adding execute where it was missing): one flush of the leaf, and
        // an instruction-cache invalidation first when execute is new (no DIC).
        t.protect(range(gpa, size), Perms::RX).unwrap();
        let mut want = Vec::new();
        if !was.contains(Perms::EXEC) {
            want.push(HostEvent::InvalidateIcache(Hpa::new(hpa_of(gpa)), size));
        }
        want.push(flush_of(gpa, size, level));
        assert_eq!(host.take_events(), want, "{gpa:#x} to RX");
        assert_eq!(seen(&host, &t, gpa), (Perms::RX, size, Some(hpa_of(gpa))));
        let last = gpa + size - PAGE;
        assert_eq!(seen(&host, &t, last).0, Perms::RX, "{last:#x}");
        // Adding write: no flush, no cache maintenance (execute stays).
        t.protect(range(gpa, size), Perms::RWX).unwrap();
        assert_eq!(host.take_events(), vec![], "{gpa:#x} to RWX");
        assert_eq!(seen(&host, &t, gpa), (Perms::RWX, size, Some(hpa_of(gpa))));
        // The same permissions again: nothing written, nothing issued.
        let before = window(&host);
        t.protect(range(gpa, size), Perms::RWX).unwrap();
        assert_eq!(host.take_events(), vec![]);
        assert!(window(&host) == before, "{gpa:#x}: table memory changed");
        // Adding execute to a leaf without it: the invalidation, no flush.
        t.protect(range(gpa, size), Perms::RW).unwrap();
        assert_eq!(host.take_events(), vec![flush_of(gpa, size, level)]);
        t.protect(range(gpa, size), Perms::RWX).unwrap();
        assert_eq!(
            host.take_events(),
            vec![HostEvent::InvalidateIcache(Hpa::new(hpa_of(gpa)), size)]
        );
    }
    assert_eq!(
        t.stats(),
        stats,
        "a one-leaf protect added or removed something"
    );
}

#[test]
fn one_leaf_protect_refuses_execute_on_device_memory_and_changes_nothing() {
    let host = HeapHost::new(WINDOW, WINDOW_SIZE, 4096);
    let mut t = build(&host);
    let before = window(&host);
    let was = seen(&host, &t, PAGE_DEV);
    assert_eq!(was.0, Perms::RW);
    for perms in [Perms::RX, Perms::RWX, Perms::EXEC] {
        assert_eq!(
            t.protect(range(PAGE_DEV, PAGE), perms),
            Err(Error::UnsupportedAttrs {
                attrs: attrs(perms, MemType::Device)
            }),
            "{perms}"
        );
        assert_eq!(
            host.take_events(),
            vec![],
            "the host saw something ({perms})"
        );
        assert!(window(&host) == before, "table memory changed ({perms})");
        assert_eq!(seen(&host, &t, PAGE_DEV), was);
    }
    // Without execute the device page takes the change (write removed: a flush).
    t.protect(range(PAGE_DEV, PAGE), Perms::READ).unwrap();
    assert_eq!(host.take_events(), vec![flush_of(PAGE_DEV, PAGE, 0)]);
    assert_eq!(seen(&host, &t, PAGE_DEV).0, Perms::READ);
}

#[test]
fn a_range_that_cuts_a_huge_leaf_or_covers_a_table_takes_the_general_path() {
    let host = HeapHost::new(WINDOW, WINDOW_SIZE, 4096);
    let mut t = build(&host);
    let tables = t.stats().total_tables();
    // One page of the 2 MiB block: the block is split, only that page loses write.
    t.protect(range(BLOCK_2M, PAGE), Perms::RX).unwrap();
    assert_eq!(t.stats().total_tables(), tables + 1);
    assert_eq!(
        seen(&host, &t, BLOCK_2M),
        (Perms::RX, PAGE, Some(hpa_of(BLOCK_2M)))
    );
    for p in [1, 2, 511] {
        let gpa = BLOCK_2M + p * PAGE;
        assert_eq!(seen(&host, &t, gpa), (Perms::RWX, PAGE, Some(hpa_of(gpa))));
    }
    // Break-before-make of the block (flushed at once, inside the operation), then the one
    // coalesced flush of the page that lost write.
    let flushes: Vec<_> = host
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, HostEvent::Flush(_)))
        .collect();
    assert_eq!(
        flushes,
        vec![flush_of(BLOCK_2M, TWO_M, 1), flush_of(BLOCK_2M, PAGE, 0)]
    );
    // Now the 2 MiB range holds a table of pages: the one-leaf shape, but not a leaf there.
    t.protect(range(BLOCK_2M, TWO_M), Perms::READ).unwrap();
    for p in 0..512 {
        let gpa = BLOCK_2M + p * PAGE;
        assert_eq!(seen(&host, &t, gpa), (Perms::READ, PAGE, Some(hpa_of(gpa))));
    }
    // A 2 MiB range inside the 1 GiB block: split down one level only.
    t.protect(range(BLOCK_1G + TWO_M, TWO_M), Perms::READ)
        .unwrap();
    assert_eq!(seen(&host, &t, BLOCK_1G).0, Perms::RW);
    assert_eq!(seen(&host, &t, BLOCK_1G).1, TWO_M);
    assert_eq!(seen(&host, &t, BLOCK_1G + TWO_M).0, Perms::READ);
    assert_eq!(seen(&host, &t, BLOCK_1G + 2 * TWO_M).0, Perms::RW);
    // A hole: nothing to do, nothing issued.
    host.take_events();
    let before = window(&host);
    t.protect(range(BLOCK_2M + 4 * TWO_M, TWO_M), Perms::RX)
        .unwrap();
    t.protect(range(PAGE_DEV + PAGE, PAGE), Perms::RX).unwrap();
    assert_eq!(host.take_events(), vec![]);
    assert!(window(&host) == before);
}

#[test]
fn shared_mode_one_leaf_protect_owes_its_flush_to_the_obligation() {
    let host = HeapHost::new(WINDOW, WINDOW_SIZE, 4096);
    let mut t = build(&host);
    let fmt = *t.format();
    let mut ctx = Ctx::new(&fmt);
    {
        let guard = host.read_side();
        let tree = t.tree();
        let s = tree.shared(&guard);
        let mut flush = PendingFlush::new(&host);
        let r = s.protect(&mut ctx, &mut flush, range(BLOCK_2M, TWO_M), Perms::RX);
        assert_eq!(r, Ok(Progress::Done));
        // Execute was there: no maintenance; the flush is owed, not issued yet.
        assert_eq!(host.take_events(), vec![]);
        assert_eq!(
            flush.range(),
            Some(TlbFlush::Range {
                start: Gpa::new(BLOCK_2M),
                size: TWO_M,
                level: Level::new(1),
                tables: false,
            })
        );
        flush.flush();
        assert_eq!(host.take_events(), vec![flush_of(BLOCK_2M, TWO_M, 1)]);
        // Refused on device memory with nothing owed and nothing changed.
        let before = window(&host);
        let mut flush = PendingFlush::new(&host);
        let r = s.protect(&mut ctx, &mut flush, range(PAGE_DEV, PAGE), Perms::RX);
        assert!(matches!(r, Err(Error::UnsupportedAttrs { .. })), "{r:?}");
        assert!(flush.is_empty());
        drop(flush);
        assert!(window(&host) == before);
        assert_eq!(host.take_events(), vec![]);
    }
    ctx.free_all(&host);
    assert_eq!(seen(&host, &t, BLOCK_2M).0, Perms::RX);
}
