//! `protect` over ranges whose leaves differ (permissions, memory type, A/D state set by a map or
//! by the walker acting as hardware), and over a range with a device page in the middle.
//!
//! Oracles: the independent stage-2 walker (`tdp_walkers::stage2`, through `common`) for what the
//! hardware sees; the raw table memory, byte for byte, for "changed nothing"; and, for the engine's
//! batching of equal leaves (`leaf ^ xor` from one `with_perms` per distinct value), the format's
//! own per-leaf `with_perms` applied to each leaf as it was before.

mod common;

use std::collections::BTreeMap;

use common::{access, peek};
use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_core::testing::HeapHost;
use tdp_core::{
    Attrs, EntryKind, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, PteFormat,
    Table, Visit,
};

const WINDOW: u64 = 0x4000_0000;
const WINDOW_SIZE: u64 = 4 << 20;
const GPA: u64 = 0x8000_0000;
const HPA: u64 = 0x1_0000_0000;
const PAGE: u64 = 4096;
/// Pages in the range: three leaf tables' worth, so a device page in the middle lies in a later
/// leaf table than the first changed leaves.
const PAGES: u64 = 1536;
/// The device page, in the third leaf table.
const DEVICE_PAGE: u64 = 1100;

fn range(first: u64, pages: u64) -> GpaRange {
    GpaRange::new(Gpa::new(GPA + first * PAGE), pages * PAGE).unwrap()
}

/// 4 KiB granule, 40-bit IPA, FWB, HA + HD, no DIC (the benchmarks' configuration), or without
/// HA/HD (software A/D).
fn format(hw_ad: bool) -> Stage2 {
    let caps = Stage2Caps {
        pa_range_bits: 48,
        ..Stage2Caps::all()
    };
    let opts = Stage2Options {
        fwb: true,
        hw_access: hw_ad,
        hw_dirty: hw_ad,
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

/// Maps `PAGES` 4 KiB pages in segments of different attributes and A/D presets; with `device`,
/// page `DEVICE_PAGE` is RW device memory. With hardware A/D, some pages are then read or written
/// through the walker (hardware setting AF / S2AP\[1\]).
fn build(host: &HeapHost, fmt: Stage2, device: bool) -> Table<Stage2, &HeapHost> {
    let mut t = Table::new(fmt, host).unwrap();
    let segs: [(u64, u64, Attrs, bool); 7] = [
        (0, 600, attrs(Perms::RWX, MemType::WriteBack), true),
        (600, 40, attrs(Perms::RW, MemType::WriteBack), false),
        (640, 100, attrs(Perms::READ, MemType::WriteBack), true),
        (740, 60, attrs(Perms::RW, MemType::WriteCombining), true),
        (800, 300, attrs(Perms::RWX, MemType::WriteBack), false),
        (1100, 1, attrs(Perms::RW, MemType::WriteBack), true),
        (
            1101,
            PAGES - 1101,
            attrs(Perms::RX, MemType::WriteBack),
            true,
        ),
    ];
    for (first, pages, a, young) in segs {
        let opts = MapOptions {
            max_level: Some(Level::LEAF),
            young_dirty: young,
        };
        t.map_with(range(first, pages), Hpa::new(HPA + first * PAGE), a, opts)
            .unwrap();
    }
    if device {
        t.unmap(range(DEVICE_PAGE, 1)).unwrap();
        t.map(
            range(DEVICE_PAGE, 1),
            Hpa::new(HPA + DEVICE_PAGE * PAGE),
            attrs(Perms::RW, MemType::Device),
        )
        .unwrap();
    }
    if fmt.options().hw_access {
        let root = t.root().raw();
        // Every third page of the not-young segments read, every fifth written: their AF and
        // dirty state now differ from their neighbours'.
        for p in (600..640).chain(800..1100) {
            let gpa = GPA + p * PAGE;
            if p % 3 == 0 {
                access(host, &fmt, root, gpa, false);
            }
            if p % 5 == 0 {
                access(host, &fmt, root, gpa, true);
            }
        }
    }
    host.take_events();
    t
}

/// Every leaf in `range` as (gpa, level, raw).
fn leaves(t: &Table<Stage2, &HeapHost>, r: GpaRange) -> BTreeMap<u64, (Level, u64)> {
    let mut m = BTreeMap::new();
    t.walk(r, |e| {
        if e.kind == EntryKind::Leaf && e.visit == Visit::Leaf {
            m.insert(e.gpa.raw(), (e.level, e.raw));
        }
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    m
}

fn window(host: &HeapHost) -> Vec<u8> {
    let mut buf = vec![0u8; WINDOW_SIZE as usize];
    assert!(host.read_phys(WINDOW, &mut buf));
    buf
}

#[test]
fn protect_that_fails_on_a_device_leaf_in_the_middle_of_the_range_changes_nothing() {
    for hw_ad in [true, false] {
        let host = HeapHost::new(WINDOW, WINDOW_SIZE, 4096);
        let fmt = format(hw_ad);
        let mut t = build(&host, fmt, true);
        let root = t.root().raw();
        let before = window(&host);
        let seen: Vec<_> = (0..PAGES)
            .map(|p| peek(&host, &fmt, root, GPA + p * PAGE))
            .collect();
        let stats = t.stats();
        for perms in [Perms::RX, Perms::RWX, Perms::EXEC] {
            assert_eq!(
                t.protect(range(0, PAGES), perms),
                Err(Error::UnsupportedAttrs {
                    attrs: attrs(perms, MemType::Device)
                }),
                "{perms}"
            );
            assert_eq!(host.take_events(), vec![], "the host saw something");
            assert!(window(&host) == before, "table memory changed ({perms})");
            assert_eq!(t.stats(), stats);
        }
        for p in 0..PAGES {
            assert_eq!(peek(&host, &fmt, root, GPA + p * PAGE), seen[p as usize]);
        }
        // Without execute the device page is fine, and so is execute on a range that stops short
        // of it.
        t.protect(range(0, DEVICE_PAGE), Perms::RX).unwrap();
        t.protect(range(0, PAGES), Perms::READ).unwrap();
    }
}

#[test]
fn protect_over_mixed_leaves_gives_each_leaf_its_own_change() {
    for hw_ad in [true, false] {
        for perms in [
            Perms::RX,
            Perms::READ,
            Perms::RW,
            Perms::RWX,
            Perms::empty(),
        ] {
            let host = HeapHost::new(WINDOW, WINDOW_SIZE, 4096);
            let fmt = format(hw_ad);
            let mut t = build(&host, fmt, false);
            let root = t.root().raw();
            let r = range(0, PAGES);
            let old = leaves(&t, r);
            assert_eq!(old.len() as u64, PAGES);
            let seen: Vec<_> = (0..PAGES)
                .map(|p| peek(&host, &fmt, root, GPA + p * PAGE))
                .collect();
            t.protect(r, perms).unwrap();
            let new = leaves(&t, r);
            for (gpa, &(level, raw)) in &old {
                let want = fmt.with_perms(raw, level, perms);
                assert_eq!(
                    new[gpa],
                    (level, want),
                    "{perms} {gpa:#x}: {raw:#x} became {:#x}, want {want:#x}",
                    new[gpa].1
                );
            }
            // What the hardware sees: the same output address and memory kind, exactly `perms`.
            for p in 0..PAGES {
                let now = peek(&host, &fmt, root, GPA + p * PAGE);
                let was = &seen[p as usize];
                if perms.is_empty() || was.seen.hpa.is_none() {
                    // Nothing translates (no permission, or AF clear: an Access flag fault, as
                    // before).
                    assert_eq!(now.seen.hpa, None, "{perms} page {p}");
                    continue;
                }
                assert_eq!(now.leaf, was.leaf, "{perms} page {p}");
                assert_eq!(now.seen.hpa, Some(HPA + p * PAGE), "page {p}");
                assert_eq!(now.seen.mem, was.seen.mem, "page {p}");
                // Write is left out: without HD, a clean writable leaf takes a Permission fault on
                // a write (software sets dirty then).
                assert_eq!(
                    now.seen.perms & !Perms::WRITE,
                    perms & !Perms::WRITE,
                    "{perms} page {p}"
                );
            }
        }
    }
}

/// `with_perms(leaf) ^ leaf` and `volatile_bits(leaf)` for two leaves that differ only in their
/// output address are equal (what `protect`'s batching of equal leaves relies on).
fn address_independent<F: PteFormat>(fmt: &F) {
    let geo = *fmt.geometry();
    let all = [
        Perms::empty(),
        Perms::READ,
        Perms::RW,
        Perms::RX,
        Perms::RWX,
        Perms::EXEC,
    ];
    let mems = [
        MemType::WriteBack,
        MemType::WriteThrough,
        MemType::WriteProtect,
        MemType::WriteCombining,
        MemType::Uncached,
        MemType::Device,
    ];
    for l in 0..geo.levels() {
        let level = Level::new(l).unwrap();
        if !geo.is_leaf_level(level) {
            continue;
        }
        let size = geo.level_size(level);
        let addrs = [
            0,
            size,
            0x1234 * size,
            (1u64 << 47) - size,
            0x5_5555_5555 & !(size - 1),
        ];
        for mem in mems {
            for ig in [false, true] {
                for p in all {
                    let a = Attrs {
                        perms: p,
                        mem,
                        ignore_guest_memtype: ig,
                    };
                    if fmt.check_attrs(&a).is_err() {
                        continue;
                    }
                    for young in [false, true] {
                        let leaf = |hpa: u64| fmt.make_leaf(Hpa::new(hpa), level, &a, young);
                        let l0 = leaf(addrs[0]);
                        for new in all {
                            if fmt.check_attrs(&Attrs { perms: new, ..a }).is_err() {
                                continue;
                            }
                            let x0 = fmt.with_perms(l0, level, new) ^ l0;
                            for &h in &addrs[1..] {
                                let lh = leaf(h);
                                assert_eq!(fmt.with_perms(lh, level, new) ^ lh, x0, "{a:?} {new}");
                                assert_eq!(
                                    fmt.volatile_bits(lh, level),
                                    fmt.volatile_bits(l0, level)
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn permission_change_and_volatile_bits_do_not_depend_on_the_output_address() {
    for g in [Granule::K4, Granule::K16, Granule::K64] {
        for (fwb, ha, hd, xnx) in [
            (true, true, true, true),
            (false, true, false, false),
            (false, false, false, true),
        ] {
            let caps = Stage2Caps {
                pa_range_bits: 48,
                ..Stage2Caps::all()
            };
            let opts = Stage2Options {
                fwb,
                hw_access: ha,
                hw_dirty: hd,
                xnx,
                ..Stage2Options::new(g, 40, 48)
            };
            address_independent(&Stage2::new(caps, opts).unwrap());
        }
    }
}
