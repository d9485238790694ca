//! Cache maintenance through the host: batched by contiguous host range, before entries become
//! valid or executable, and only where the format asks for it.

use tdp_core::testing::{HeapHost, HostEvent, TestFormat};
use tdp_core::{Attrs, Gpa, GpaRange, Hpa, Level, MapOptions, MemType, Perms, Table};

fn fmt() -> TestFormat {
    let mut f = TestFormat::four_level();
    f.cache_maintenance = true;
    f
}

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

fn cmos(host: &HeapHost) -> Vec<HostEvent> {
    host.take_events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                HostEvent::CleanDcache(..) | HostEvent::InvalidateIcache(..)
            )
        })
        .collect()
}

#[test]
fn map_cleans_the_whole_host_range_once() {
    let host = HeapHost::new(0x1000_0000, 1 << 20, 4096);
    let mut t = Table::new(fmt(), &host).unwrap();
    let four_k = MapOptions {
        max_level: Some(Level::LEAF),
        young_dirty: true,
    };
    t.map_with(
        range(0, 0x40_0000),
        Hpa::new(0x8000_0000),
        Attrs::normal(Perms::RWX),
        four_k,
    )
    .unwrap();
    assert_eq!(
        cmos(&host),
        vec![
            HostEvent::CleanDcache(Hpa::new(0x8000_0000), 0x40_0000),
            HostEvent::InvalidateIcache(Hpa::new(0x8000_0000), 0x40_0000)
        ]
    );
}

#[test]
fn uncached_memory_needs_no_clean_and_data_no_icache() {
    let host = HeapHost::new(0x1000_0000, 1 << 20, 4096);
    let mut t = Table::new(fmt(), &host).unwrap();
    let uc = Attrs {
        perms: Perms::RW,
        mem: MemType::Uncached,
        ignore_guest_memtype: false,
    };
    t.map(range(0, 0x1000), Hpa::new(0x8000_0000), uc).unwrap();
    assert_eq!(cmos(&host), vec![]);
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x9000_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    assert_eq!(
        cmos(&host),
        vec![HostEvent::CleanDcache(Hpa::new(0x9000_0000), 0x1000)]
    );
}

#[test]
fn protect_invalidates_the_icache_per_contiguous_run_of_leaves_gaining_exec() {
    let host = HeapHost::new(0x1000_0000, 1 << 20, 4096);
    let mut t = Table::new(fmt(), &host).unwrap();
    // Two host runs: [0, 8K) -> 0x8000_0000.., [8K, 12K) -> 0xa000_0000; [12K, 16K) already exec.
    t.map(
        range(0, 0x2000),
        Hpa::new(0x8000_0000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    t.map(
        range(0x2000, 0x1000),
        Hpa::new(0xa000_0000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    t.map(
        range(0x3000, 0x1000),
        Hpa::new(0xb000_0000),
        Attrs::normal(Perms::RX),
    )
    .unwrap();
    host.take_events();
    t.protect(range(0x1000, 0x3000), Perms::RX).unwrap();
    assert_eq!(
        cmos(&host),
        vec![
            HostEvent::InvalidateIcache(Hpa::new(0x8000_1000), 0x1000),
            HostEvent::InvalidateIcache(Hpa::new(0xa000_0000), 0x1000)
        ]
    );
    // Removing exec needs nothing.
    t.protect(range(0, 0x4000), Perms::READ).unwrap();
    assert_eq!(cmos(&host), vec![]);
}

#[test]
fn coherent_formats_ask_for_nothing() {
    let host = HeapHost::new(0x1000_0000, 1 << 20, 4096);
    let mut t = Table::new(TestFormat::four_level(), &host).unwrap();
    t.map(range(0, 0x20_0000), Hpa::new(0), Attrs::normal(Perms::RWX))
        .unwrap();
    t.protect(range(0, 0x20_0000), Perms::READ).unwrap();
    t.protect(range(0, 0x20_0000), Perms::RX).unwrap();
    assert_eq!(cmos(&host), vec![]);
}
