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
//! `SharedAccess::protect` call on one thread), the format (`ept-ad`, `arm64-4k`) and how many
//! runs (default 1). Prints the time of each run and ns per page.

use std::time::{Duration, Instant};

use tdp_arch_arm64::Granule;
use tdp_benches::workload::{self, GIB, WP_PERMS};
use tdp_benches::{formats, Workload};
use tdp_core::host::SharedHost as _;
use tdp_core::testing::HeapHost;
use tdp_core::{Ctx, Host, PendingFlush, Progress, PteFormat, Table, Tree};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shared = match args.first().map(String::as_str) {
        Some("table") | None => false,
        Some("shared") => true,
        Some(other) => panic!("unknown API {other}: table or shared"),
    };
    let runs: u32 = args
        .get(2)
        .map_or(1, |n| n.parse().expect("a number of runs"));
    match args.get(1).map(String::as_str) {
        Some("ept-ad") | None => go(&formats::ept(true), shared, runs),
        Some("arm64-4k") => go(&formats::stage2(Granule::K4), shared, runs),
        Some(other) => panic!("unknown format {other}: ept-ad or arm64-4k"),
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

fn go<F: PteFormat + Clone + Sync>(fmt: &F, shared: bool, runs: u32) {
    let w: Workload = Workload::all(fmt.geometry(), GIB)[0];
    let host: HeapHost = workload::host(fmt);
    for _ in 0..runs {
        let t = if shared {
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
            if shared { "shared" } else { "table" },
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
