//! Hand-checked raw entries and behaviour pinned down by name, for EPT and NPT.

use tdp_arch_x86::{Ept, EptCaps, EptOptions, Npt, NptOptions};
use tdp_core::testing::{HeapHost, HostEvent};
use tdp_core::{
    Attrs, Error, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, Table, TlbFlush,
};
use tdp_walkers::{ept, npt, Access, FlatImage};

const BASE: u64 = 0x1_0000_0000;
/// exec-only, 4- and 5-level walks, UC and WB EPTP types, 2M and 1G pages, A/D.
const CAP_MSR: u64 = 0x0023_41c1;

fn ept(ad: bool) -> Ept {
    Ept::new(
        EptCaps::from_vmx_ept_vpid_cap(CAP_MSR),
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

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

fn word(host: &HeapHost, pa: u64) -> u64 {
    let mut b = [0u8; 8];
    assert!(host.read_phys(pa, &mut b));
    u64::from_le_bytes(b)
}

#[test]
fn ept_4k_leaf_raw_value_matches_the_sdm_layout() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x1234_5000),
        Attrs::normal(Perms::RWX),
    )
    .unwrap();
    // R|W|X = 0x7, MT WB = 6 << 3 = 0x30, A|D = 0x300, MMU-present (bit 11) = 0x800,
    // host/MMU-writable = bits 57/58, suppress #VE = bit 63.
    let want = 0x8000_0000_0000_0000 | 1 << 58 | 1 << 57 | 0x1234_5000 | 0x800 | 0x300 | 0x30 | 0x7;
    assert_eq!(t.query(Gpa::new(0x1000)).unwrap().unwrap().raw, want);
}

#[test]
fn ept_2m_leaf_read_only_uncached_with_ipat_and_no_ad() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(ept(false), &host).unwrap();
    let attrs = Attrs {
        perms: Perms::READ,
        mem: MemType::Uncached,
        ignore_guest_memtype: true,
    };
    t.map(range(0x20_0000, 0x20_0000), Hpa::new(0x4000_0000), attrs)
        .unwrap();
    // R = 0x1, MT UC = 0, IPAT = 0x40, PS = 0x80, MMU-present 0x800, A/D-disabled type bit 52.
    let want = 0x8000_0000_0000_0000 | 1 << 52 | 0x4000_0000 | 0x800 | 0x80 | 0x40 | 0x1;
    let m = t.query(Gpa::new(0x20_0000)).unwrap().unwrap();
    assert_eq!((m.raw, m.level.get(), m.ad.accessed), (want, 1, None));
}

#[test]
fn ept_empty_entries_are_suppress_ve_not_zero() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let t = Table::new(ept(true), &host).unwrap();
    for i in 0..512 {
        assert_eq!(word(&host, t.root().raw() + i * 8), 1 << 63);
    }
}

#[test]
fn ept_table_entries_grant_everything_and_are_accessed() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    t.map(
        range(0, 0x1000),
        Hpa::new(0x5000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    let e = word(&host, t.root().raw());
    // Suppress #VE | child address | MMU-present | A | R|W|X.
    assert_eq!(
        e & !0x000f_ffff_ffff_f000,
        0x8000_0000_0000_0000 | 0x800 | 0x100 | 0x7
    );
}

#[test]
fn ept_execute_only_needs_the_capability() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    t.map(
        range(0, 0x1000),
        Hpa::new(0x5000),
        Attrs::normal(Perms::EXEC),
    )
    .unwrap();
    let no_xo = Ept::new(
        EptCaps::from_vmx_ept_vpid_cap(CAP_MSR & !1),
        EptOptions {
            levels: 4,
            accessed_dirty: true,
            maxphyaddr: 46,
            mbec: false,
        },
    )
    .unwrap();
    let mut t2 = Table::new(no_xo, &host).unwrap();
    assert!(matches!(
        t2.map(
            range(0, 0x1000),
            Hpa::new(0x5000),
            Attrs::normal(Perms::EXEC)
        ),
        Err(Error::UnsupportedAttrs { .. })
    ));
}

#[test]
fn ept_write_without_read_and_split_execute_without_mbec_are_rejected() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    for perms in [Perms::WRITE, Perms::READ | Perms::EXEC_USER] {
        assert_eq!(
            t.map(range(0, 0x1000), Hpa::new(0x5000), Attrs::normal(perms)),
            Err(Error::UnsupportedAttrs {
                attrs: Attrs::normal(perms)
            })
        );
    }
    assert_eq!(host.outstanding_tables(), 1);
}

#[test]
fn ept_mbec_separates_user_execute() {
    let mut caps = EptCaps::from_vmx_ept_vpid_cap(CAP_MSR);
    caps.mbec = true;
    let fmt = Ept::new(
        caps,
        EptOptions {
            levels: 4,
            accessed_dirty: true,
            maxphyaddr: 46,
            mbec: true,
        },
    )
    .unwrap();
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(fmt.clone(), &host).unwrap();
    t.map(
        range(0, 0x1000),
        Hpa::new(0x5000),
        Attrs::normal(Perms::READ | Perms::EXEC_USER),
    )
    .unwrap();
    let wcaps = ept::EptCaps {
        maxphyaddr: 46,
        execute_only: true,
        page_1g: true,
        mbec: true,
    };
    let img = FlatImage::new(BASE, host.image(t.root()).bytes);
    let eptp = fmt.eptp(t.root()).unwrap();
    assert!(ept::peek(&img, eptp, &wcaps, 0x10, Access::ExecUser).is_ok());
    assert!(ept::peek(&img, eptp, &wcaps, 0x10, Access::ExecSupervisor).is_err());
}

#[test]
fn eptp_encodes_walk_length_memory_type_and_ad() {
    let four = ept(true).eptp(Hpa::new(0xabc_d000)).unwrap();
    assert_eq!(four, 0xabc_d000 | 6 | 3 << 3 | 1 << 6);
    let five = Ept::new(
        EptCaps::from_vmx_ept_vpid_cap(CAP_MSR),
        EptOptions {
            levels: 5,
            accessed_dirty: false,
            maxphyaddr: 52,
            mbec: false,
        },
    )
    .unwrap();
    assert_eq!(five.eptp(Hpa::new(0x1000)).unwrap(), 0x1000 | 6 | 4 << 3);
    // The independent walker accepts both.
    let wcaps = ept::EptCaps {
        maxphyaddr: 52,
        execute_only: true,
        page_1g: true,
        mbec: false,
    };
    assert_eq!(ept::decode_eptp(four, &wcaps).unwrap().levels, 4);
    assert_eq!(
        ept::decode_eptp(five.eptp(Hpa::new(0x1000)).unwrap(), &wcaps)
            .unwrap()
            .levels,
        5
    );
}

#[test]
fn eptp_and_configuration_reject_invalid_combinations() {
    assert_eq!(
        ept(true).eptp(Hpa::new(0x1234)),
        Err(Error::UnalignedHpa {
            hpa: Hpa::new(0x1234),
            align: 4096
        })
    );
    assert!(matches!(
        ept(true).eptp(Hpa::new(1 << 46)),
        Err(Error::HpaTooWide { .. })
    ));
    let no5 = EptCaps::from_vmx_ept_vpid_cap(CAP_MSR & !(1 << 7));
    let o = EptOptions {
        levels: 5,
        accessed_dirty: false,
        maxphyaddr: 46,
        mbec: false,
    };
    assert!(matches!(Ept::new(no5, o), Err(Error::InvalidConfig { .. })));
    let no_ad = EptCaps::from_vmx_ept_vpid_cap(CAP_MSR & !(1 << 21));
    let o = EptOptions {
        levels: 4,
        accessed_dirty: true,
        maxphyaddr: 46,
        mbec: false,
    };
    assert!(matches!(
        Ept::new(no_ad, o),
        Err(Error::InvalidConfig { .. })
    ));
    let o = EptOptions {
        levels: 3,
        accessed_dirty: false,
        maxphyaddr: 46,
        mbec: false,
    };
    assert!(matches!(
        Ept::new(EptCaps::from_vmx_ept_vpid_cap(CAP_MSR), o),
        Err(Error::InvalidConfig { .. })
    ));
    let o = EptOptions {
        levels: 4,
        accessed_dirty: false,
        maxphyaddr: 46,
        mbec: true,
    };
    assert!(matches!(
        Ept::new(EptCaps::from_vmx_ept_vpid_cap(CAP_MSR), o),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn npt_leaf_raw_value_and_user_bit_on_every_level() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(npt(), &host).unwrap();
    t.map(
        range(0x3000, 0x1000),
        Hpa::new(0x7777_7000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    // P|RW|US = 0x7, A|D = 0x60, host/MMU-writable 0x600, MMU-present 0x800, NX (no exec).
    let want = 1 << 63 | 0x7777_7000 | 0x800 | 0x600 | 0x60 | 0x7;
    assert_eq!(t.query(Gpa::new(0x3000)).unwrap().unwrap().raw, want);
    let img = FlatImage::new(BASE, host.image(t.root()).bytes);
    let caps = npt::NptCaps {
        levels: 4,
        maxphyaddr: 46,
        nx_enabled: true,
        page_1g: true,
    };
    let tr = npt::peek(&img, t.root().raw(), &caps, 0x3008, Access::Write).unwrap();
    assert!(tr.user && tr.write && !tr.exec);
    assert!(npt::peek(&img, t.root().raw(), &caps, 0x3008, Access::ExecUser).is_err());
}

#[test]
fn npt_cannot_express_write_only_execute_only_or_ipat() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(npt(), &host).unwrap();
    for attrs in [
        Attrs::normal(Perms::WRITE),
        Attrs::normal(Perms::EXEC),
        Attrs {
            perms: Perms::READ,
            mem: MemType::WriteBack,
            ignore_guest_memtype: true,
        },
        Attrs {
            perms: Perms::READ,
            mem: MemType::WriteCombining,
            ignore_guest_memtype: false,
        },
    ] {
        assert_eq!(
            t.map(range(0, 0x1000), Hpa::new(0), attrs),
            Err(Error::UnsupportedAttrs { attrs })
        );
    }
}

#[test]
fn ncr3_carries_the_root_and_the_c_bit() {
    let n = npt();
    assert_eq!(n.ncr3(Hpa::new(0x1000), None).unwrap(), 0x1000);
    assert_eq!(
        n.ncr3(Hpa::new(0x1000), Some(47)).unwrap(),
        0x1000 | 1 << 47
    );
    assert!(matches!(
        n.ncr3(Hpa::new(1 << 40), Some(39)),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        n.ncr3(Hpa::new(0x1800), None),
        Err(Error::UnalignedHpa { .. })
    ));
    assert!(matches!(
        Npt::new(NptOptions {
            levels: 3,
            ..NptOptions::default()
        }),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn collapse_keeps_leaves_with_different_memory_types_apart() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    let four_k = MapOptions {
        max_level: Level::new(0),
        young_dirty: true,
    };
    let wb = Attrs::normal(Perms::RW);
    let uc = Attrs {
        mem: MemType::Uncached,
        ..wb
    };
    t.map_with(range(0, 0x10_0000), Hpa::new(0x4000_0000), wb, four_k)
        .unwrap();
    t.map_with(
        range(0x10_0000, 0x10_0000),
        Hpa::new(0x4010_0000),
        uc,
        four_k,
    )
    .unwrap();
    t.collapse(range(0, 0x20_0000)).unwrap();
    assert_eq!(
        t.stats().leaves[0],
        512,
        "mixed memory types must not merge"
    );
    t.unmap(range(0x10_0000, 0x10_0000)).unwrap();
    t.map_with(
        range(0x10_0000, 0x10_0000),
        Hpa::new(0x4010_0000),
        wb,
        four_k,
    )
    .unwrap();
    t.collapse(range(0, 0x20_0000)).unwrap();
    assert_eq!(t.stats().leaves, [0, 1, 0, 0, 0]);
    assert_eq!(
        t.query(Gpa::new(0x1f_f000)).unwrap().unwrap().hpa,
        Hpa::new(0x401f_f000)
    );
}

#[test]
fn collapse_needs_an_aligned_contiguous_host_range() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    let four_k = MapOptions {
        max_level: Level::new(0),
        young_dirty: true,
    };
    // Contiguous but the host range starts 4 KiB past a 2 MiB boundary.
    t.map_with(
        range(0, 0x20_0000),
        Hpa::new(0x4000_1000),
        Attrs::normal(Perms::READ),
        four_k,
    )
    .unwrap();
    t.collapse(range(0, 0x20_0000)).unwrap();
    assert_eq!(t.stats().leaves[0], 512);
}

#[test]
fn split_of_a_live_1g_leaf_keeps_translations_and_needs_no_flush() {
    let host = HeapHost::new(BASE, 4 << 20, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    t.map(
        range(1 << 30, 1 << 30),
        Hpa::new(1 << 32),
        Attrs::normal(Perms::RWX),
    )
    .unwrap();
    host.take_events();
    t.split(range(1 << 30, 1 << 30), Level::LEAF).unwrap();
    assert_eq!(t.stats().leaves, [262144, 0, 0, 0, 0]);
    assert!(!host
        .take_events()
        .iter()
        .any(|e| matches!(e, HostEvent::Flush(_))));
    let m = t.query(Gpa::new((1 << 30) + 0x1234_5678)).unwrap().unwrap();
    assert_eq!(
        (m.hpa, m.level),
        (Hpa::new((1 << 32) + 0x1234_5678), Level::LEAF)
    );
    // And back: 512 tables of 4 KiB leaves become one 1 GiB leaf in one call.
    t.collapse(range(1 << 30, 1 << 30)).unwrap();
    assert_eq!(t.stats().leaves, [0, 0, 1, 0, 0]);
    assert_eq!(t.stats().total_tables(), 2);
}

#[test]
fn unmap_flushes_once_before_freeing_tables_and_frees_every_empty_table() {
    let host = HeapHost::new(BASE, 4 << 20, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    let four_k = MapOptions {
        max_level: Level::new(0),
        young_dirty: true,
    };
    t.map_with(
        range(0, 1 << 30),
        Hpa::new(1 << 32),
        Attrs::normal(Perms::RW),
        four_k,
    )
    .unwrap();
    assert_eq!(t.stats().total_tables(), 1 + 1 + 1 + 512);
    host.take_events();
    t.unmap(range(0, 1 << 30)).unwrap();
    let events = host.take_events();
    let flushes: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, HostEvent::Flush(_)))
        .collect();
    assert_eq!(flushes.len(), 1, "one coalesced flush");
    assert!(
        matches!(flushes[0], HostEvent::Flush(TlbFlush::Range { start, size, .. }) if start.raw() == 0 && *size >= 1 << 30)
    );
    let first_free = events
        .iter()
        .position(|e| matches!(e, HostEvent::Free(..)))
        .unwrap();
    let flush_at = events
        .iter()
        .position(|e| matches!(e, HostEvent::Flush(_)))
        .unwrap();
    assert!(flush_at < first_free);
    assert_eq!(t.stats().total_tables(), 1);
    assert_eq!(
        host.outstanding_bytes() as u64,
        t.stats().table_bytes + t.stats().cached_bytes
    );
}

#[test]
fn protect_cutting_a_huge_leaf_splits_it_and_flushes_only_when_permission_drops() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(npt(), &host).unwrap();
    t.map(
        range(0, 0x20_0000),
        Hpa::new(0x20_0000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    host.take_events();
    t.protect(range(0x1000, 0x1000), Perms::RWX).unwrap();
    assert!(
        !host
            .take_events()
            .iter()
            .any(|e| matches!(e, HostEvent::Flush(_))),
        "adding permission needs no flush"
    );
    assert_eq!(t.stats().leaves[0], 512);
    assert_eq!(
        t.query(Gpa::new(0x1000)).unwrap().unwrap().attrs.perms,
        Perms::RWX
    );
    assert_eq!(
        t.query(Gpa::new(0x2000)).unwrap().unwrap().attrs.perms,
        Perms::READ
    );
    t.protect(range(0x1000, 0x1000), Perms::READ).unwrap();
    // Exactly one flush, for the one page whose permission dropped (reservations may allocate).
    let ev: Vec<_> = host
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, HostEvent::Flush(_)))
        .collect();
    assert_eq!(
        ev,
        vec![HostEvent::Flush(TlbFlush::Range {
            start: Gpa::new(0x1000),
            size: 0x1000,
            level: Level::new(0),
            tables: false
        })]
    );
}

#[test]
fn hardware_dirty_survives_protect_split_and_collapse() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let fmt = ept(true);
    let mut t = Table::new(fmt.clone(), &host).unwrap();
    let cold = MapOptions {
        max_level: None,
        young_dirty: false,
    };
    t.map_with(
        range(0, 0x20_0000),
        Hpa::new(0x4000_0000),
        Attrs::normal(Perms::RW),
        cold,
    )
    .unwrap();
    assert_eq!(t.query(Gpa::new(0)).unwrap().unwrap().ad.dirty, Some(false));
    // The "hardware" writes through the independent walker, which sets A and D in memory.
    struct P<'a>(&'a HeapHost);
    impl tdp_walkers::PhysMem for P<'_> {
        fn read(&self, pa: u64, b: &mut [u8]) -> bool {
            self.0.read_phys(pa, b)
        }
        fn write(&mut self, pa: u64, b: &[u8]) -> bool {
            self.0.write_phys(pa, b)
        }
    }
    let wcaps = ept::EptCaps {
        maxphyaddr: 46,
        execute_only: true,
        page_1g: true,
        mbec: false,
    };
    ept::translate(
        &mut P(&host),
        fmt.eptp(t.root()).unwrap(),
        &wcaps,
        0x1234,
        Access::Write,
    )
    .unwrap();
    t.split(range(0, 0x20_0000), Level::LEAF).unwrap();
    t.protect(range(0, 0x20_0000), Perms::READ).unwrap();
    let m = t.query(Gpa::new(0x1_0000)).unwrap().unwrap();
    assert_eq!((m.ad.accessed, m.ad.dirty), (Some(true), Some(true)));
    t.collapse(range(0, 0x20_0000)).unwrap();
    let m = t.query(Gpa::new(0x1_0000)).unwrap().unwrap();
    assert_eq!(
        (m.level.get(), m.ad.dirty, m.attrs.perms),
        (1, Some(true), Perms::READ)
    );
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_the_table_unchanged() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    let rw = Attrs::normal(Perms::RW);
    t.map(range(0x20_0000, 0x20_0000), Hpa::new(0x4000_0000), rw)
        .unwrap();
    let before = (t.stats(), host.outstanding_bytes());
    let cases: Vec<(Result<(), Error>, Error)> = vec![
        (
            t.map(range(0x1800, 0x1000), Hpa::new(0), rw),
            Error::UnalignedGpa {
                value: 0x1800,
                align: 4096,
            },
        ),
        (
            t.map(range(0x1000, 0x800), Hpa::new(0), rw),
            Error::UnalignedGpa {
                value: 0x800,
                align: 4096,
            },
        ),
        (
            t.map(range(0x1000, 0x1000), Hpa::new(0x10), rw),
            Error::UnalignedHpa {
                hpa: Hpa::new(0x10),
                align: 4096,
            },
        ),
        (
            t.map(range(1 << 48, 0x1000), Hpa::new(0), rw),
            Error::GpaTooWide {
                gpa: Gpa::new((1 << 48) + 0xfff),
                bits: 48,
            },
        ),
        (
            t.map(range(0, 0x1000), Hpa::new(1 << 46), rw),
            Error::HpaTooWide {
                hpa: Hpa::new((1 << 46) + 0xfff),
                bits: 46,
            },
        ),
        (
            t.map_with(
                range(0, 0x1000),
                Hpa::new(0),
                rw,
                MapOptions {
                    max_level: Level::new(4),
                    young_dirty: true,
                },
            ),
            Error::InvalidLevel {
                level: Level::new(4).unwrap(),
            },
        ),
        (
            t.map(range(0x1f_f000, 0x2000), Hpa::new(0), rw),
            Error::AlreadyMapped {
                gpa: Gpa::new(0x20_0000),
            },
        ),
        (
            t.split(range(0, 0x1000), Level::new(3).unwrap()),
            Error::InvalidLevel {
                level: Level::new(3).unwrap(),
            },
        ),
        (
            t.unmap(range(u64::MAX - 0xfff, 0x1000)),
            Error::GpaTooWide {
                gpa: Gpa::new(u64::MAX),
                bits: 48,
            },
        ),
        (
            t.protect(range(0, 0x1000), Perms::WRITE),
            Error::UnsupportedAttrs {
                attrs: Attrs::normal(Perms::WRITE),
            },
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, Err(want));
        assert_eq!((t.stats(), host.outstanding_bytes()), before);
    }
    assert_eq!(
        GpaRange::new(Gpa::new(0), 0),
        Err(Error::EmptyRange { gpa: Gpa::new(0) })
    );
    assert_eq!(
        GpaRange::new(Gpa::new(u64::MAX), 2),
        Err(Error::RangeOverflow {
            gpa: Gpa::new(u64::MAX),
            size: 2
        })
    );
    assert_eq!(
        t.query(Gpa::new(1 << 48)),
        Err(Error::GpaTooWide {
            gpa: Gpa::new(1 << 48),
            bits: 48
        })
    );
}

#[test]
fn a_full_physical_window_is_an_error_not_a_panic() {
    // Room for the root and 7 more tables: a 1 GiB map of 4 KiB leaves needs 514.
    let host = HeapHost::new(BASE, 64 << 10, 4096);
    let mut t = Table::new(ept(true), &host).unwrap();
    let four_k = MapOptions {
        max_level: Level::new(0),
        young_dirty: true,
    };
    let r = t.map_with(
        range(0, 1 << 30),
        Hpa::new(0),
        Attrs::normal(Perms::RW),
        four_k,
    );
    assert_eq!(r, Err(Error::OutOfMemory { size: 4096 }));
    assert_eq!(
        (host.outstanding_tables(), t.stats().total_leaves()),
        (1, 0)
    );
}

#[test]
fn table_image_export_walks_in_the_independent_walker() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let fmt = ept(true);
    let mut t = Table::new(fmt.clone(), &host).unwrap();
    t.map(
        range(0x8000_0000, 0x40_0000),
        Hpa::new(0x2_0000_0000),
        Attrs::normal(Perms::RWX),
    )
    .unwrap();
    let img = host.image(t.root());
    let dir = std::env::temp_dir().join(format!("tdp-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    img.write(&dir.join("ept")).unwrap();
    let bytes = std::fs::read(dir.join("ept.bin")).unwrap();
    let meta = std::fs::read_to_string(dir.join("ept.txt")).unwrap();
    assert!(meta.contains(&format!("root={:#x}", t.root().raw())));
    let flat = FlatImage::new(BASE, bytes);
    let wcaps = ept::EptCaps {
        maxphyaddr: 46,
        execute_only: true,
        page_1g: true,
        mbec: false,
    };
    let tr = ept::peek(
        &flat,
        fmt.eptp(t.root()).unwrap(),
        &wcaps,
        0x8030_0123,
        Access::Read,
    )
    .unwrap();
    assert_eq!(
        (tr.hpa, tr.page_size),
        (0x2_0010_0123 + 0x20_0000, 0x20_0000)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn device_memory_is_refused_because_x86_would_read_it_back_as_uncached() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let dev = Attrs {
        perms: Perms::RW,
        mem: MemType::Device,
        ignore_guest_memtype: false,
    };
    let mut e = Table::new(ept(true), &host).unwrap();
    assert_eq!(
        e.map(range(0, 0x1000), Hpa::new(0x5000), dev),
        Err(Error::UnsupportedAttrs { attrs: dev })
    );
    let mut n = Table::new(npt(), &host).unwrap();
    assert_eq!(
        n.map(range(0, 0x1000), Hpa::new(0x5000), dev),
        Err(Error::UnsupportedAttrs { attrs: dev })
    );
}
