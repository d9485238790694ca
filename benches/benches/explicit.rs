//! Criterion benchmarks of the explicit API on Intel EPT over 1 GiB of 4 KiB leaves (262,144
//! leaves). Table memory comes from the testing kit's heap host (warm after the first iteration:
//! freed tables are reused), with event recording off. The floor and the Rust peers are added by
//! the benchmarks issue.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tdp_arch_x86::{Ept, EptCaps, EptOptions};
use tdp_core::testing::HeapHost;
use tdp_core::{Attrs, Gpa, GpaRange, Hpa, Level, MapOptions, Perms, Table};

const GIB: u64 = 1 << 30;
const PAGES: u64 = GIB >> 12;

fn ept() -> Ept {
    let caps = EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1);
    Ept::new(
        caps,
        EptOptions {
            levels: 4,
            accessed_dirty: true,
            maxphyaddr: 46,
            mbec: false,
        },
    )
    .expect("valid EPT configuration")
}

fn host() -> HeapHost {
    let h = HeapHost::new(0x1_0000_0000, 4 << 20, 4096);
    h.set_recording(false);
    h
}

const FOUR_K: MapOptions = MapOptions {
    max_level: Some(Level::LEAF),
    young_dirty: true,
};

fn mapped(host: &HeapHost) -> Table<Ept, &HeapHost> {
    let mut t = Table::new(ept(), host).expect("root");
    let r = GpaRange::new(Gpa::new(0), GIB).expect("range");
    t.map_with(r, Hpa::new(1 << 32), Attrs::normal(Perms::RW), FOUR_K)
        .expect("map");
    t
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ept_1gib_4k");
    g.throughput(Throughput::Elements(PAGES));
    g.sample_size(20);
    let h = host();
    let whole = GpaRange::new(Gpa::new(0), GIB).expect("range");

    g.bench_function("map_range", |b| {
        b.iter_batched(
            || Table::new(ept(), &h).expect("root"),
            |mut t| {
                t.map_with(whole, Hpa::new(1 << 32), Attrs::normal(Perms::RW), FOUR_K)
                    .expect("map");
                t
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("query_every_page", |b| {
        let t = mapped(&h);
        b.iter(|| {
            let mut sum = 0u64;
            for p in 0..PAGES {
                sum ^= t
                    .query(Gpa::new(p << 12))
                    .expect("in range")
                    .expect("mapped")
                    .hpa
                    .raw();
            }
            sum
        })
    });
    g.bench_function("write_protect_range", |b| {
        b.iter_batched(
            || mapped(&h),
            |mut t| {
                t.protect(whole, Perms::READ).expect("protect");
                t
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("unmap_range", |b| {
        b.iter_batched(
            || mapped(&h),
            |mut t| {
                t.unmap(whole).expect("unmap");
                t
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
