//! One write-protect of a mapped range (the `protect` row of `benches/explicit.rs`: RWX -> RX over
//! 1 GiB of 4 KiB leaves) outside criterion, for profilers: counting instructions per page with
//! callgrind, for example
//!
//! ```text
//! cargo build --release -p tdp-benches --example protect
//! valgrind --tool=callgrind --toggle-collect='*protect_once*' \
//!     target/release/examples/protect table arm64-4k
//! ```
//!
//! Arguments: the API (`table` for [`tdp_core::Table::protect`], `shared` for one
//! `SharedAccess::protect` call on one thread), the format (`ept-ad`, `arm64-4k`), how many
//! runs (default 1) and the leaf level of the workload (0: 4 KiB, 1: 2 MiB, 2: 1 GiB; default 0).
//! Prints the time of each run and ns per page.
//!
//! The API `map` or `unmap` runs instead one range map (`Table::map_with`, from an empty table)
//! or one range unmap (`Table::unmap`, of the mapped range) of the workload, for the general
//! path's fixed cost (`--toggle-collect='*range_once*'`).

use std::time::{Duration, Instant};

use tdp_arch_arm64::Granule;
use tdp_benches::workload::{self, GIB, WP_PERMS};
use tdp_benches::{formats, Workload};
use tdp_core::host::SharedHost as _;
use tdp_core::testing::HeapHost;
use tdp_core::{Ctx, Host, PendingFlush, Progress, PteFormat, Table, Tree};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let api = args.first().map_or("table", String::as_str);
    let shared = match api {
        "table" | "map" | "unmap" => false,
        "shared" => true,
        other => panic!("unknown API {other}: table, shared, map or unmap"),
    };
    let runs: u32 = args
        .get(2)
        .map_or(1, |n| n.parse().expect("a number of runs"));
    let level: usize = args.get(3).map_or(0, |n| n.parse().expect("a level"));
    let range = match api {
        "map" => Some(true),
        "unmap" => Some(false),
        _ => None,
    };
    match args.get(1).map(String::as_str) {
        Some("ept-ad") | None => go(&formats::ept(true), shared, runs, level, range),
        Some("arm64-4k") => go(&formats::stage2(Granule::K4), shared, runs, level, range),
        Some(other) => panic!("unknown format {other}: ept-ad or arm64-4k"),
    }
}

/// The range call profilers count (`--toggle-collect='*range_once*'`): one map of the range
/// (`map`) or one unmap of it.
#[inline(never)]
fn range_once<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload, map: bool) {
    if map {
        workload::map_range(t, w);
    } else {
        workload::unmap_range(t, w);
    }
}

/// The call profilers count (`--toggle-collect='*protect_once*'`).
#[inline(never)]
fn protect_once<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
    workload::protect(t, w);
}

/// The same through the shared-mode API, on one thread.
#[inline(never)]
fn protect_once_shared<F: PteFormat + Sync>(
    tree: &Tree<F, &HeapHost>,
    host: &HeapHost,
    ctx: &mut Ctx,
    w: &Workload,
) {
    let guard = host.read_side();
    let s = tree.shared(&guard);
    let mut flush = PendingFlush::new(host);
    match s.protect(ctx, &mut flush, w.range(), WP_PERMS) {
        Ok(Progress::Done) => {}
        other => panic!("shared protect: {other:?}"),
    }
    flush.flush();
}

fn go<F: PteFormat + Clone + Sync>(
    fmt: &F,
    shared: bool,
    runs: u32,
    level: usize,
    range: Option<bool>,
) {
    let w: Workload = Workload::all(fmt.geometry(), GIB)[level];
    let host: HeapHost = workload::host(fmt);
    for _ in 0..runs {
        let t = if let Some(map) = range {
            let mut t = workload::empty(fmt, &host);
            if !map {
                workload::map_range(&mut t, &w);
            }
            let t0 = Instant::now();
            range_once(&mut t, &w, map);
            let time = t0.elapsed();
            if map {
                workload::check_mapped(&t, &w, w.level, workload::MAP_PERMS).expect("mapped");
            } else {
                workload::check_unmapped(&t, &w).expect("unmapped");
            }
            time
        } else if shared {
            run_shared(fmt, &host, &w)
        } else {
            let mut t = workload::empty(fmt, &host);
            workload::map_range(&mut t, &w);
            let t0 = Instant::now();
            protect_once(&mut t, &w);
            let time = t0.elapsed();
            workload::check_mapped(&t, &w, w.level, WP_PERMS).expect("protected");
            time
        };
        println!(
            "{}: {:.2} ms, {:.1} ns per page",
            match range {
                Some(true) => "map",
                Some(false) => "unmap",
                None if shared => "shared",
                None => "table",
            },
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e9 / w.leaves as f64
        );
    }
}

fn run_shared<F: PteFormat + Clone + Sync>(fmt: &F, host: &HeapHost, w: &Workload) -> Duration {
    let mut t = workload::empty(fmt, host);
    workload::map_range(&mut t, w);
    let mut ctx = Ctx::new(fmt);
    let t0 = Instant::now();
    protect_once_shared(t.tree(), host, &mut ctx, w);
    let time = t0.elapsed();
    workload::check_mapped(&t, w, w.level, WP_PERMS).expect("protected");
    time
}
