//! The per-call explicit-API workloads of `benches/explicit.rs` outside criterion, for profilers
//! (callgrind instruction counts per call):
//!
//! ```text
//! cargo build --release -p tdp-benches --example per_call
//! valgrind --tool=callgrind --toggle-collect='*workload*unmap_pages*' \
//!     target/release/examples/per_call unmap ept-ad
//! ```
//!
//! Arguments: the operation (`map`, `query`, `unmap`, `protect`: per page; `collapse`: one call over
//! the range, after a map of 4 KiB leaves; profile with `--toggle-collect='*collapse_call*'`), the
//! format (`ept-ad`, `arm64-4k`, `npt`) and the
//! leaf level of the workload (0: 4 KiB, 1: 2 MiB; default 0). Prints ns per call of one run. The
//! table memory is the benches' direct-map host, or with `TDP_BENCH_HOST=heap` the testing kit's
//! heap host (as in `benches/explicit.rs`).

use std::time::Instant;

use tdp_arch_arm64::Granule;
use tdp_benches::direct::DirectHost;
use tdp_benches::workload::{self, GIB, WINDOW_SIZE};
use tdp_benches::{formats, Workload};
use tdp_core::{Host, PteFormat};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let op = args.first().map_or("map", String::as_str).to_string();
    let level: usize = args.get(2).map_or(0, |n| n.parse().expect("a level"));
    match args.get(1).map(String::as_str) {
        Some("ept-ad") | None => go(&formats::ept(true), &op, level),
        Some("arm64-4k") => go(&formats::stage2(Granule::K4), &op, level),
        Some("npt") => go(&formats::npt(), &op, level),
        Some(other) => panic!("unknown format {other}: ept-ad, arm64-4k or npt"),
    }
}

fn go<F: PteFormat + Clone>(fmt: &F, op: &str, level: usize) {
    if std::env::var("TDP_BENCH_HOST").is_ok_and(|v| v == "heap") {
        run(fmt, op, level, &workload::host(fmt));
    } else {
        let host = DirectHost::new(WINDOW_SIZE as usize, fmt.geometry().min_table_size());
        run(fmt, op, level, &host);
    }
}

fn run<F: PteFormat + Clone, H: Host>(fmt: &F, op: &str, level: usize, host: &H) {
    let w: Workload = Workload::all(fmt.geometry(), GIB)[level];
    let mut t = workload::empty(fmt, host);
    if op != "map" {
        workload::map_range(&mut t, &w);
    }
    let t0 = Instant::now();
    match op {
        "map" => workload::map_pages(&mut t, &w),
        "query" => {
            std::hint::black_box(workload::query_all(&t, &w));
        }
        "unmap" => workload::unmap_pages(&mut t, &w),
        "protect" => workload::protect(&mut t, &w),
        "collapse" => {
            assert!(
                w.splits(),
                "collapse needs a workload of 4 KiB leaves (level 0)"
            );
            collapse_call(&mut t, &w);
        }
        other => panic!("unknown operation {other}: map, query, unmap, protect or collapse"),
    }
    let dt = t0.elapsed();
    println!(
        "{op}: {:.1} ns per call over {} calls",
        dt.as_secs_f64() * 1e9 / w.leaves as f64,
        w.leaves
    );
}

/// The collapse call alone, out of line so that callgrind can toggle on it.
#[inline(never)]
fn collapse_call<F: PteFormat, H: Host>(t: &mut tdp_core::Table<F, H>, w: &Workload) {
    workload::collapse(t, w);
}
