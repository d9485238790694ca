//! Criterion benchmarks of per-page map through the tree API in shared mode, against exclusive
//! mode, on one thread and on two (issue 17, item 10; results in BENCHMARKS.md at the repository
//! root, section "Shared mode").
//!
//! Groups `shared_<arch>_4K` (`shared_ept-ad_4K`, `shared_arm64-4k_4K`): 1 GiB of 4 KiB pages,
//! 262,144 map calls of one page each, into an empty tree:
//! - `table_map_pages`: the explicit API, `Table::map_with` per page (for reference: it flushes
//!   and trims its reserve per call and takes tables from the host's warm pool as it goes, as in
//!   `benches/explicit.rs`);
//! - `excl_map_pages`: `tree.exclusive().map(..)` per page;
//! - `shared_map_pages_1t`: `tree.shared(&guard).map(..)` per page on one thread;
//! - `shared_map_pages_2t`: the same on two threads at once, each over its own 512 MiB half with
//!   its own `Ctx`, `PendingFlush` and guard; timed from the first thread's start to the last
//!   one's end, so its throughput (pages per second, criterion's `thrpt`) over `_1t`'s is the
//!   scaling.
//!
//! In the three tree benches the tables the run adds are reserved before the timed part
//! (`Ctx::topup`, see `tdp_benches::pages`), so the timed loop never calls the host; one
//! `PendingFlush` per caller for the whole run. Every run is checked after its timed part
//! (sampled translations through `query`, the leaf count, no host call while timed) and torn down
//! outside it (`iter_custom`).
//!
//! Run: `cargo bench -p tdp-benches --bench shared`, then `python3 benches/report.py` (writes the
//! section with the other results; `--shared-only` prints just this section). Short settings:
//! `cargo bench -p tdp-benches --bench shared -- --warm-up-time 0.5 --measurement-time 2`.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tdp_arch_arm64::Granule;
use tdp_benches::meta::{self, Record};
use tdp_benches::pages::{self, Api};
use tdp_benches::workload::{self, GIB};
use tdp_benches::{formats, Workload};
use tdp_core::PteFormat;

/// Threads of the `_2t` bench.
const THREADS: usize = 2;

fn configs(c: &mut Criterion) {
    if let Err(e) = meta::run("shared").write("run-shared") {
        eprintln!("cannot write the run record: {e}");
    }
    arch(c, "ept-ad", 0, || formats::ept(true));
    arch(c, "arm64-4k", 1, || formats::stage2(Granule::K4));
}

fn arch<F: PteFormat + Clone + Sync>(
    c: &mut Criterion,
    label: &str,
    order: u64,
    make: impl Fn() -> F,
) {
    let fmt = make();
    let geo = *fmt.geometry();
    let w: Workload = Workload::all(&geo, GIB)[0];
    assert_eq!(w.leaf, 4096, "{label}: page-sized leaves come first");
    let group = format!("shared_{label}_{}", w.name());
    let host = workload::host(&fmt);
    let record = Record::new()
        .str("kind", "shared")
        .num("order", order)
        .str("group", &group)
        .str("subject", label)
        .str("leaf", &w.name())
        .num("leaf_bytes", w.leaf)
        .num("leaves", w.leaves)
        .num("threads", THREADS as u64)
        .str(
            "host",
            "tdp-core testing HeapHost; tree benches: tables reserved before the timed part",
        );
    if let Err(e) = record.write(&group) {
        eprintln!("cannot write the record of {group}: {e}");
    }

    let mut g = c.benchmark_group(&group);
    g.throughput(Throughput::Elements(w.leaves));
    let benches = [
        ("table_map_pages", Api::Table),
        ("excl_map_pages", Api::Exclusive),
        ("shared_map_pages_1t", Api::Shared(1)),
        ("shared_map_pages_2t", Api::Shared(THREADS)),
    ];
    for (name, api) in benches {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        pages::run(&fmt, &host, &w, api)
                            .unwrap_or_else(|e| panic!("{group}/{name}: {e}"))
                    })
                    .sum()
            })
        });
    }
    g.finish();
}

/// As `benches/explicit.rs`: 10 samples, 0.5 s warm-up, 2 s measurement; the command line
/// overrides them.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = configs
}
criterion_main!(benches);
