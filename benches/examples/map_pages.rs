//! One per-page map run of `benches/shared.rs` outside criterion, for profilers: counting
//! instructions per call with callgrind, for example
//!
//! ```text
//! cargo build --release -p tdp-benches --example map_pages
//! valgrind --tool=callgrind --toggle-collect='*map_each*' \
//!     target/release/examples/map_pages shared1 ept-ad
//! ```
//!
//! Arguments: the API (`table`, `excl`, `shared1`, `shared2`), the format (`ept-ad`, `arm64-4k`)
//! and how many runs (default 1). Prints the time of each run and ns per page.

use tdp_arch_arm64::Granule;
use tdp_benches::pages::{self, Api};
use tdp_benches::workload::{self, GIB};
use tdp_benches::{formats, Workload};
use tdp_core::PteFormat;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let api = match args.first().map(String::as_str) {
        Some("table") => Api::Table,
        Some("excl") | None => Api::Exclusive,
        Some("shared1") => Api::Shared(1),
        Some("shared2") => Api::Shared(2),
        Some(other) => panic!("unknown API {other}: table, excl, shared1 or shared2"),
    };
    let runs: u32 = args
        .get(2)
        .map_or(1, |n| n.parse().expect("a number of runs"));
    match args.get(1).map(String::as_str) {
        Some("ept-ad") | None => go(&formats::ept(true), api, runs),
        Some("arm64-4k") => go(&formats::stage2(Granule::K4), api, runs),
        Some(other) => panic!("unknown format {other}: ept-ad or arm64-4k"),
    }
}

fn go<F: PteFormat + Clone + Sync>(fmt: &F, api: Api, runs: u32) {
    let w: Workload = Workload::all(fmt.geometry(), GIB)[0];
    let host = workload::host(fmt);
    for _ in 0..runs {
        let t = pages::run(fmt, &host, &w, api).unwrap_or_else(|e| panic!("{api:?}: {e}"));
        println!(
            "{api:?}: {:.2} ms, {:.1} ns per page",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e9 / w.leaves as f64
        );
    }
}
