//! One walk, one range unmap or one teardown (drop) of 1 GiB of page-sized leaves outside
//! criterion, for profilers:
//! counting instructions per page with callgrind, for example
//!
//! ```text
//! cargo build --release -p tdp-benches --example walk_unmap
//! valgrind --tool=callgrind --toggle-collect='*walk_once*' \
//!     target/release/examples/walk_unmap walk ept-ad
//! valgrind --tool=callgrind --toggle-collect='*unmap_once*' \
//!     target/release/examples/walk_unmap unmap ept-ad
//! valgrind --tool=callgrind --toggle-collect='*teardown_once*' \
//!     target/release/examples/walk_unmap teardown ept-ad
//! ```
//!
//! Arguments: the operation (`walk`, `unmap`, `teardown`), the format (`ept-ad`, `arm64-4k`) and how many
//! runs (default 1). Each run maps the range first (not collected). Prints ns per page. Tables
//! come from the benches' direct-map host, as in the timed part of `benches/explicit.rs`.

use std::time::Instant;

use tdp_arch_arm64::Granule;
use tdp_benches::direct::DirectHost;
use tdp_benches::workload::{self, GIB};
use tdp_benches::{formats, Workload};
use tdp_core::{PteFormat, Table};

/// The host of the timed explicit-API benchmarks.
type BenchHost<'h> = &'h DirectHost;

#[derive(Copy, Clone, PartialEq, Eq)]
enum Op {
    Walk,
    Unmap,
    Teardown,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let op = match args.first().map(String::as_str) {
        Some("walk") | None => Op::Walk,
        Some("unmap") => Op::Unmap,
        Some("teardown") => Op::Teardown,
        Some(other) => panic!("unknown operation {other}: walk, unmap or teardown"),
    };
    let runs: u32 = args
        .get(2)
        .map_or(1, |n| n.parse().expect("a number of runs"));
    match args.get(1).map(String::as_str) {
        Some("ept-ad") | None => go(&formats::ept(true), op, runs),
        Some("arm64-4k") => go(&formats::stage2(Granule::K4), op, runs),
        Some(other) => panic!("unknown format {other}: ept-ad or arm64-4k"),
    }
}

#[inline(never)]
fn walk_once<F: PteFormat>(t: &Table<F, BenchHost<'_>>, w: &Workload) -> (u64, u64) {
    workload::walk_all(t, w)
}

#[inline(never)]
fn unmap_once<F: PteFormat>(t: &mut Table<F, BenchHost<'_>>, w: &Workload) {
    workload::unmap_range(t, w);
}

#[inline(never)]
fn teardown_once<F: PteFormat>(t: Table<F, BenchHost<'_>>) {
    drop(t);
}

fn go<F: PteFormat + Clone>(fmt: &F, op: Op, runs: u32) {
    let w: Workload = Workload::all(fmt.geometry(), GIB)[0];
    let host = DirectHost::new(
        workload::WINDOW_SIZE as usize,
        fmt.geometry().min_table_size(),
    );
    for _ in 0..runs {
        let mut t = workload::empty(fmt, &host);
        workload::map_range(&mut t, &w);
        let t0 = Instant::now();
        match op {
            Op::Walk => {
                let (n, _) = std::hint::black_box(walk_once(&t, &w));
                assert_eq!(n, w.leaves, "walk met every leaf");
            }
            Op::Unmap => {
                unmap_once(&mut t, &w);
                assert_eq!(t.stats().total_leaves(), 0, "unmap left leaves");
            }
            Op::Teardown => {
                teardown_once(t);
                assert_eq!(host.outstanding_tables(), 0, "teardown left tables");
            }
        }
        let dt = t0.elapsed();
        println!(
            "{}: {:.3} ms, {:.3} ns per page",
            match op {
                Op::Walk => "walk",
                Op::Unmap => "unmap",
                Op::Teardown => "teardown",
            },
            dt.as_secs_f64() * 1e3,
            dt.as_secs_f64() * 1e9 / w.leaves as f64
        );
    }
}
