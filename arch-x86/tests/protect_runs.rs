//! `protect` over ranges whose leaves differ (permissions, memory type, A/D state), for EPT and
//! NPT: each leaf must end up exactly as the format's per-leaf `with_perms` makes it (the engine
//! batches leaves with equal non-address bits as `leaf ^ xor` from one `with_perms`), and what the
//! independent walkers see must be the new permissions over the same output address. Also the
//! property that batching relies on: `with_perms(leaf) ^ leaf` and `volatile_bits(leaf)` do not
//! depend on the leaf's output address.

use std::collections::BTreeMap;

use tdp_arch_x86::{Ept, EptCaps, EptOptions, Npt, NptOptions};
use tdp_core::testing::HeapHost;
use tdp_core::{
    Attrs, EntryKind, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, PteFormat, Table,
    Visit,
};

const WINDOW: u64 = 0x4000_0000;
const WINDOW_SIZE: u64 = 4 << 20;
const GPA: u64 = 0x8000_0000;
const HPA: u64 = 0x1_0000_0000;
const PAGE: u64 = 4096;
const PAGES: u64 = 1536;

fn ept(ad: bool) -> Ept {
    Ept::new(
        EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1),
        EptOptions {
            levels: 4,
            accessed_dirty: ad,
            maxphyaddr: 46,
            mbec: false,
        },
    )
    .unwrap()
}

fn npt() -> Npt {
    Npt::new(NptOptions {
        maxphyaddr: 46,
        ..NptOptions::default()
    })
    .unwrap()
}

fn range(first: u64, pages: u64) -> GpaRange {
    GpaRange::new(Gpa::new(GPA + first * PAGE), pages * PAGE).unwrap()
}

fn attrs(perms: Perms, mem: MemType) -> Attrs {
    Attrs {
        perms,
        mem,
        ignore_guest_memtype: false,
    }
}

/// The segments mapped: (first page, pages, attributes, A/D preset); a 2 MiB leaf among them
/// (pages 1024..1536) when `huge`.
fn segments<F: PteFormat>(fmt: &F) -> Vec<(u64, u64, Attrs, bool)> {
    let mut segs = vec![
        (0, 300, attrs(Perms::RWX, MemType::WriteBack), true),
        (300, 1, attrs(Perms::RWX, MemType::WriteBack), false),
        (301, 99, attrs(Perms::RWX, MemType::WriteBack), true),
        (400, 100, attrs(Perms::READ, MemType::WriteBack), true),
        (500, 100, attrs(Perms::RW, MemType::Uncached), false),
        (600, 424, attrs(Perms::RX, MemType::WriteBack), true),
        (1024, 512, attrs(Perms::RW, MemType::WriteBack), true),
    ];
    for s in &mut segs {
        if fmt.check_attrs(&s.2).is_err() {
            s.2.mem = MemType::WriteBack;
        }
    }
    segs
}

fn build<'h, F: PteFormat + Clone>(
    host: &'h HeapHost,
    fmt: &F,
    huge: bool,
) -> Table<F, &'h HeapHost> {
    let mut t = Table::new(fmt.clone(), host).unwrap();
    for (first, pages, a, young) in segments(fmt) {
        let opts = MapOptions {
            max_level: Some(if huge && pages == 512 {
                Level::new(1).unwrap()
            } else {
                Level::LEAF
            }),
            young_dirty: young,
        };
        t.map_with(range(first, pages), Hpa::new(HPA + first * PAGE), a, opts)
            .unwrap();
    }
    t
}

fn leaves<F: PteFormat, H: tdp_core::Host>(
    t: &Table<F, H>,
    r: GpaRange,
) -> BTreeMap<u64, (Level, u64)> {
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

fn check_mixed<F: PteFormat + Clone>(fmt: &F, perms_list: &[Perms]) {
    for huge in [false, true] {
        for &perms in perms_list {
            let host = HeapHost::new(WINDOW, WINDOW_SIZE, 4096);
            let mut t = build(&host, fmt, huge);
            let r = range(0, PAGES);
            let old = leaves(&t, r);
            t.protect(r, perms).unwrap();
            let new = leaves(&t, r);
            assert_eq!(old.len(), new.len());
            for (gpa, &(level, raw)) in &old {
                let want = fmt.with_perms(raw, level, perms);
                assert_eq!(
                    new[gpa],
                    (level, want),
                    "{perms} {gpa:#x}: {raw:#x} became {:#x}",
                    new[gpa].1
                );
            }
            // The engine's own reading agrees: same output address, the new permissions.
            for p in 0..PAGES {
                let gpa = GPA + p * PAGE;
                let m = t.query(Gpa::new(gpa)).unwrap();
                let m = m.expect("still mapped");
                assert_eq!(m.attrs.perms, perms, "page {p}");
                assert_eq!(m.hpa.raw(), HPA + p * PAGE, "page {p}");
            }
        }
    }
}

#[test]
fn ept_protect_over_mixed_leaves_gives_each_leaf_its_own_change() {
    for ad in [true, false] {
        check_mixed(
            &ept(ad),
            &[Perms::RX, Perms::READ, Perms::RW, Perms::RWX, Perms::EXEC],
        );
    }
}

#[test]
fn npt_protect_over_mixed_leaves_gives_each_leaf_its_own_change() {
    check_mixed(&npt(), &[Perms::RX, Perms::READ, Perms::RW, Perms::RWX]);
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
            (1u64 << 45) - size,
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
    address_independent(&ept(true));
    address_independent(&ept(false));
    address_independent(&npt());
}
