//! `protect` of exactly one aligned leaf (the one-leaf path: straight to the slot) at every EPT
//! leaf level, checked through the independent EPT walker (`tdp-walkers`, written from the SDM),
//! the recording host's flushes and the raw table memory, byte for byte, for "changed nothing";
//! accessed/dirty bits set by the walker acting as hardware are kept. The shapes left to the
//! general path (a huge leaf cut by the range, a table where the leaf would be) and the
//! shared-mode call through the tree API are checked too.

use tdp_arch_x86::{Ept, EptCaps, EptOptions};
use tdp_core::host::SharedHost as _;
use tdp_core::testing::{HeapHost, HostEvent};
use tdp_core::{
    Attrs, Ctx, Error, Gpa, GpaRange, Hpa, Level, MapOptions, PendingFlush, Perms, Progress, Table,
    TlbFlush,
};
use tdp_walkers::{ept, Access, PhysMem};

const WINDOW_BASE: u64 = 0x7_4000_0000;
const WINDOW_SIZE: u64 = 8 << 20;
const MAXPHYADDR: u8 = 46;
const PAGE: u64 = 4096;
const TWO_M: u64 = 1 << 21;
const ONE_G: u64 = 1 << 30;
const LEAF_4K: u64 = ONE_G + 8 * TWO_M;
const LEAF_2M: u64 = ONE_G;
const LEAF_1G: u64 = 4 * ONE_G;
const HPA: u64 = 0x20_0000_0000;

struct Phys<'a>(&'a HeapHost);

impl PhysMem for Phys<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.0.read_phys(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.0.write_phys(pa, buf)
    }
}

fn fmt() -> Ept {
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

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

fn hpa_of(gpa: u64) -> u64 {
    HPA + gpa
}

/// What the walker sees at `gpa` (no writes): read/write/execute, the page size, accessed and
/// dirty, and the host address; `None` for an EPT violation on a read.
fn seen(
    heap: &HeapHost,
    t: &Table<Ept, &HeapHost>,
    gpa: u64,
) -> Option<(Perms, u64, bool, bool, u64)> {
    let eptp = t.format().eptp(t.root()).unwrap();
    match ept::peek(&Phys(heap), eptp, &caps(), gpa, Access::Read) {
        Ok(tr) => {
            let mut p = Perms::READ;
            if tr.write {
                p |= Perms::WRITE;
            }
            if tr.exec_supervisor {
                p |= Perms::EXEC;
            }
            Some((p, tr.page_size, tr.accessed, tr.dirty, tr.hpa))
        }
        Err(ept::EptFault::Violation(_)) => None,
        Err(e) => panic!("EPT walk of {gpa:#x}: {e:?}"),
    }
}

/// The walker as hardware: a write to `gpa` (sets accessed and dirty).
fn write_access(heap: &HeapHost, t: &Table<Ept, &HeapHost>, gpa: u64) {
    let eptp = t.format().eptp(t.root()).unwrap();
    ept::translate(&mut Phys(heap), eptp, &caps(), gpa, Access::Write).unwrap();
}

fn window(heap: &HeapHost) -> Vec<u8> {
    let mut buf = vec![0u8; WINDOW_SIZE as usize];
    assert!(heap.read_phys(WINDOW_BASE, &mut buf));
    buf
}

fn flush_of(gpa: u64, size: u64, level: u8) -> HostEvent {
    HostEvent::Flush(TlbFlush::Range {
        start: Gpa::new(gpa),
        size,
        level: Level::new(level),
        tables: false,
    })
}

/// A 2 MiB leaf (RWX), a 4 KiB leaf (RWX, accessed/dirty left to hardware) and a 1 GiB leaf
/// (RWX).
fn build(heap: &HeapHost) -> Table<Ept, &HeapHost> {
    let mut t = Table::new(fmt(), heap).unwrap();
    for (gpa, size, level, young) in [
        (LEAF_2M, TWO_M, 1, true),
        (LEAF_4K, PAGE, 0, false),
        (LEAF_1G, ONE_G, 2, true),
    ] {
        let opts = MapOptions {
            max_level: Some(Level::new(level).unwrap()),
            young_dirty: young,
        };
        t.map_with(
            range(gpa, size),
            Hpa::new(hpa_of(gpa)),
            Attrs::normal(Perms::RWX),
            opts,
        )
        .unwrap();
    }
    heap.take_events();
    t
}

#[test]
fn one_leaf_protect_flushes_only_when_a_permission_is_removed_at_every_level() {
    let heap = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 4096);
    let mut t = build(&heap);
    let stats = t.stats();
    // Hardware sets accessed/dirty in the 4 KiB leaf: the protect keeps them.
    write_access(&heap, &t, LEAF_4K);
    for (gpa, size, level) in [(LEAF_2M, TWO_M, 1), (LEAF_4K, PAGE, 0), (LEAF_1G, ONE_G, 2)] {
        let h = hpa_of(gpa);
        assert_eq!(
            seen(&heap, &t, gpa),
            Some((Perms::RWX, size, true, true, h))
        );
        for (perms, flushed) in [
            (Perms::RX, true),
            (Perms::RWX, false),
            (Perms::READ, true),
            (Perms::RW, false),
            (Perms::RW, false),
            (Perms::RWX, false),
        ] {
            t.protect(range(gpa, size), perms).unwrap();
            let want = if flushed {
                vec![flush_of(gpa, size, level)]
            } else {
                vec![]
            };
            assert_eq!(heap.take_events(), want, "{gpa:#x} to {perms}");
            let now = seen(&heap, &t, gpa);
            assert_eq!(now, Some((perms, size, true, true, h)), "{gpa:#x} {perms}");
            let last = gpa + size - PAGE;
            assert_eq!(seen(&heap, &t, last).map(|s| s.0), Some(perms));
        }
        // The same permissions once more: table memory unchanged.
        let before = window(&heap);
        t.protect(range(gpa, size), Perms::RWX).unwrap();
        assert!(window(&heap) == before, "{gpa:#x}: table memory changed");
        assert_eq!(heap.take_events(), vec![]);
    }
    assert_eq!(
        t.stats(),
        stats,
        "a one-leaf protect added or removed something"
    );
}

#[test]
fn one_leaf_protect_refuses_permissions_the_format_cannot_encode_and_changes_nothing() {
    let heap = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 4096);
    let mut t = build(&heap);
    let before = window(&heap);
    for (gpa, size) in [(LEAF_2M, TWO_M), (LEAF_4K, PAGE), (LEAF_1G, ONE_G)] {
        // Write without read cannot be encoded in EPT.
        let r = t.protect(range(gpa, size), Perms::WRITE);
        assert!(matches!(r, Err(Error::UnsupportedAttrs { .. })), "{r:?}");
        assert_eq!(heap.take_events(), vec![]);
        assert!(window(&heap) == before, "{gpa:#x}: table memory changed");
        assert_eq!(seen(&heap, &t, gpa).map(|s| s.0), Some(Perms::RWX));
    }
}

#[test]
fn a_range_that_cuts_a_huge_leaf_or_covers_a_table_takes_the_general_path() {
    let heap = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 4096);
    let mut t = build(&heap);
    let tables = t.stats().total_tables();
    // A 2 MiB range inside the 1 GiB leaf: split one level down, only that piece loses write.
    t.protect(range(LEAF_1G + TWO_M, TWO_M), Perms::RX).unwrap();
    assert_eq!(t.stats().total_tables(), tables + 1);
    // One table for the split, one coalesced flush of the piece that lost write.
    let flushes: Vec<_> = heap
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, HostEvent::Flush(_)))
        .collect();
    assert_eq!(flushes, vec![flush_of(LEAF_1G + TWO_M, TWO_M, 1)]);
    for (gpa, perms) in [
        (LEAF_1G, Perms::RWX),
        (LEAF_1G + TWO_M, Perms::RX),
        (LEAF_1G + 2 * TWO_M, Perms::RWX),
    ] {
        assert_eq!(
            seen(&heap, &t, gpa),
            Some((perms, TWO_M, true, true, hpa_of(gpa))),
            "{gpa:#x}"
        );
    }
    // Now the 1 GiB range holds a table: the one-leaf shape, not a leaf there.
    t.protect(range(LEAF_1G, ONE_G), Perms::READ).unwrap();
    for i in [0, 1, 2, 511] {
        let gpa = LEAF_1G + i * TWO_M;
        assert_eq!(
            seen(&heap, &t, gpa).map(|s| (s.0, s.1)),
            Some((Perms::READ, TWO_M))
        );
    }
    // A hole: nothing to do, nothing issued.
    heap.take_events();
    let before = window(&heap);
    t.protect(range(LEAF_2M + TWO_M, TWO_M), Perms::RX).unwrap();
    t.protect(range(LEAF_4K + PAGE, PAGE), Perms::RX).unwrap();
    t.protect(range(8 * ONE_G, ONE_G), Perms::RX).unwrap();
    assert_eq!(heap.take_events(), vec![]);
    assert!(window(&heap) == before);
}

#[test]
fn shared_mode_one_leaf_protect_owes_its_flush_to_the_obligation() {
    let heap = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, 4096);
    let mut t = build(&heap);
    let mut ctx = Ctx::new(&fmt());
    {
        let guard = heap.read_side();
        let tree = t.tree();
        let s = tree.shared(&guard);
        let mut flush = PendingFlush::new(&heap);
        let r = s.protect(&mut ctx, &mut flush, range(LEAF_4K, PAGE), Perms::RX);
        assert_eq!(r, Ok(Progress::Done));
        assert_eq!(heap.take_events(), vec![], "flushed before the obligation");
        assert_eq!(
            flush.range(),
            Some(TlbFlush::Range {
                start: Gpa::new(LEAF_4K),
                size: PAGE,
                level: Level::new(0),
                tables: false,
            })
        );
        // Adding a permission owes nothing more.
        let r = s.protect(&mut ctx, &mut flush, range(LEAF_2M, TWO_M), Perms::RWX);
        assert_eq!(r, Ok(Progress::Done));
        flush.flush();
        assert_eq!(heap.take_events(), vec![flush_of(LEAF_4K, PAGE, 0)]);
    }
    ctx.free_all(&heap);
    assert_eq!(seen(&heap, &t, LEAF_4K).map(|s| s.0), Some(Perms::RX));
}
