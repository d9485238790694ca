//! Instruction counts of every explicit-API row on the heap host, for a before/after comparison
//! across commits with callgrind (one run per format and leaf level):
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=rows.cg target/release/examples/rows ept-ad 0
//! callgrind_annotate --inclusive=yes rows.cg | grep 'rows::row_'
//! ```
//! Uses only API that existed before issue 17 (commit 88f7670), so the same file runs there.

use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_arch_x86::{Ept, EptCaps, EptOptions};
use tdp_benches::workload::{self, Workload, GIB};
use tdp_core::{Host, PteFormat, Table};

fn ept() -> Ept {
    let caps = EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1);
    let opts = EptOptions {
        levels: 4,
        accessed_dirty: true,
        maxphyaddr: 46,
        mbec: false,
    };
    Ept::new(caps, opts).unwrap()
}

fn stage2() -> Stage2 {
    let caps = Stage2Caps {
        pa_range_bits: 48,
        ..Stage2Caps::all()
    };
    let opts = Stage2Options {
        fwb: true,
        hw_access: true,
        hw_dirty: true,
        vmid16: true,
        ..Stage2Options::new(Granule::K4, 40, 48)
    };
    Stage2::new(caps, opts).unwrap()
}

macro_rules! row {
    ($name:ident, $body:expr) => {
        #[inline(never)]
        fn $name<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
            let f: fn(&mut Table<F, H>, &Workload) = $body;
            f(t, w)
        }
    };
}

row!(row_map_range, |t, w| workload::map_range(t, w));
row!(row_map_pages, |t, w| workload::map_pages(t, w));
row!(row_query, |t, w| {
    std::hint::black_box(workload::query_all(t, w));
});
row!(row_protect, |t, w| workload::protect(t, w));
row!(row_unmap_range, |t, w| workload::unmap_range(t, w));
row!(row_unmap_pages, |t, w| workload::unmap_pages(t, w));
row!(row_split, |t, w| workload::split(t, w));
row!(row_collapse, |t, w| workload::collapse(t, w));

#[inline(never)]
fn row_teardown<F: PteFormat, H: Host>(t: Table<F, H>) {
    drop(t)
}

fn go<F: PteFormat + Clone>(fmt: &F, level: usize) {
    let host = workload::host(fmt);
    let w = Workload::all(fmt.geometry(), GIB)[level];
    let mapped = || {
        let mut t = workload::empty(fmt, &host);
        workload::map_range(&mut t, &w);
        t
    };
    let mut t = workload::empty(fmt, &host);
    row_map_range(&mut t, &w);
    drop(t);
    let mut t = workload::empty(fmt, &host);
    row_map_pages(&mut t, &w);
    row_query(&mut t, &w);
    drop(t);
    let mut t = mapped();
    row_protect(&mut t, &w);
    drop(t);
    let mut t = mapped();
    row_unmap_range(&mut t, &w);
    drop(t);
    let mut t = mapped();
    row_unmap_pages(&mut t, &w);
    drop(t);
    if w.splits() {
        let mut t = workload::empty(fmt, &host);
        workload::map_top(&mut t, &w);
        row_split(&mut t, &w);
        drop(t);
        let mut t = mapped();
        row_collapse(&mut t, &w);
        drop(t);
    }
    row_teardown(mapped());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let level: usize = args.get(1).map_or(0, |n| n.parse().unwrap());
    match args.first().map(String::as_str) {
        Some("arm64-4k") => go(&stage2(), level),
        _ => go(&ept(), level),
    }
}
