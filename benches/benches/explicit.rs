//! Criterion benchmarks of the explicit table API, every architecture, with the raw-memory floor
//! and the Rust peers in the same run (issue 14; results in BENCHMARKS.md at the repository root).
//!
//! Groups (criterion's `<group>/<bench>`):
//! - `<arch>_<leaf>`: the engine on one architecture configuration over 1 GiB of leaves of one size
//!   (`ept-ad_4K`, `npt_2M`, ...): `map_range`, `map_pages`, `query`, `walk` (every leaf of the range in one call),
//!   `protect`, `unmap_range`,
//!   `unmap_pages`, `teardown`, with `split` and `collapse` for page-sized leaves, and
//!   `host_alloc_free` (what the heap host alone costs for the tree's tables, for reference);
//! - `<peer>_<leaf>`: a peer doing the same work its own way (`ptm_4K`, `a64p_2M`, ...);
//! - `floor_<words>w_<bytes>`: raw loops over as many entry words as leaves (`store`, `load`,
//!   `and_not`, `atomic_and_not`) and over the minimal tree's bytes (`zero`).
//!
//! Every time includes table allocation from a warm pool (the engine: the benches' direct-map host,
//! `tdp_benches::direct`, or with `TDP_BENCH_HOST=heap` the testing kit's heap host; the peers: a
//! frame pool of our own of the same shape), divided by the number of leaves by `benches/report.py`.
//! Before a group is measured, every operation is run once and checked (translations sampled after
//! map/protect/split/collapse, none after unmap, every table freed after teardown).
//!
//! Full run (about 20 minutes on 2 cores): `cargo bench -p tdp-benches --bench explicit`, then
//! `python3 benches/report.py`. Short settings for development:
//! `cargo bench -p tdp-benches --bench explicit -- --warm-up-time 0.2 --measurement-time 1 ept-ad_4K`.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

mod peers;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use tdp_arch_arm64::Granule;
use tdp_arch_ppc::RadixGranule;
use tdp_benches::direct::DirectHost;
use tdp_benches::meta::{self, Record};
use tdp_benches::workload::{self, size_name, GIB, WINDOW_SIZE};
use tdp_benches::Workload;
use tdp_benches::{floor, formats};
use tdp_core::{Host, PteFormat};

use peers::{Op, Peer};

// --- the architectures: one line per configuration (constructors in tdp_benches::formats) --

fn x86(c: &mut Criterion) {
    arch(c, "ept-ad", || formats::ept(true));
    arch(c, "ept-noad", || formats::ept(false));
    arch(c, "npt", formats::npt);
}

fn arm64(c: &mut Criterion) {
    arch(c, "arm64-4k", || formats::stage2(Granule::K4));
    arch(c, "arm64-16k", || formats::stage2(Granule::K16));
    arch(c, "arm64-64k", || formats::stage2(Granule::K64));
}

fn riscv(c: &mut Criterion) {
    arch(c, "rv-sv48x4", formats::gstage);
}

fn loongarch(c: &mut Criterion) {
    arch(c, "loongarch-16k", formats::loongarch_16k);
}

fn mips(c: &mut Criterion) {
    arch(c, "mips-16k", formats::mips_16k);
}

fn ppc(c: &mut Criterion) {
    arch(c, "ppc-4k", || formats::radix(RadixGranule::Page4K));
    arch(c, "ppc-64k", || formats::radix(RadixGranule::Page64K));
}

fn rust_peers(c: &mut Criterion) {
    peer::<peers::ptm::Ptm>(c);
    peer::<peers::a64p::A64p>(c);
    peer::<peers::ptg::Ptg>(c);
    peer::<peers::x64::X64>(c);
}

fn machine(_c: &mut Criterion) {
    if let Err(e) = meta::machine().write("machine") {
        eprintln!("cannot write the machine record: {e}");
    }
}

// --- the engine, written once ---------------------------------------------------------------

/// The order groups are measured in, for the report's columns.
static ORDER: AtomicU64 = AtomicU64::new(0);

fn next_order() -> u64 {
    ORDER.fetch_add(1, Ordering::Relaxed)
}

fn arch<F: PteFormat + Clone>(c: &mut Criterion, label: &str, make: impl Fn() -> F) {
    let fmt = make();
    let geo = *fmt.geometry();
    for w in Workload::all(&geo, GIB) {
        let group = format!("{label}_{}", w.name());
        let host = workload::host(&fmt);
        let checked =
            workload::check_all(&fmt, &host, &w).unwrap_or_else(|e| panic!("{group}: {e}"));
        let min = workload::min_table_bytes(&geo, w.start, w.size, w.level);
        let floor = floor_group(c, w.leaves, min);
        // Write-protect needs a locked read-modify-write only for entries in which hardware may
        // set bits meanwhile; the workload presets A/D (KVM's policy), so none of its entries has
        // such bits and the least memory work is a plain and-not, on every format. The atomic
        // and-not is measured beside it, for reference.
        let protect_floor = "and_not";
        check_walk(&fmt, &host, &w).unwrap_or_else(|e| panic!("{group}: {e}"));
        let m = checked.mapped;
        let record = Record::new()
            .str("kind", "tdp")
            .num("order", next_order())
            .str("group", &group)
            .str("subject", label)
            .str("leaf", &w.name())
            .num("leaf_bytes", w.leaf)
            .num("leaves", w.leaves)
            .str("floor", &floor)
            .str("protect_floor", protect_floor)
            .str("host", bench_host_name())
            .num("table_bytes_min", min)
            .num("table_bytes", m.table_bytes)
            .num("cached_bytes", m.cached_bytes)
            .num("tables", m.tables)
            .num("metadata_bytes_per_table", m.metadata_bytes_per_table)
            .num("table_bytes_after_unmap", checked.after_unmap);
        if let Err(e) = record.write(&group) {
            eprintln!("cannot write the record of {group}: {e}");
        }

        let mut g = c.benchmark_group(&group);
        g.throughput(Throughput::Elements(w.leaves));
        if bench_host_is_heap() {
            timed(&mut g, &fmt, &host, &w, &checked.sizes);
        } else {
            let direct = DirectHost::new(WINDOW_SIZE as usize, geo.min_table_size());
            timed(&mut g, &fmt, &direct, &w, &checked.sizes);
            debug_assert_eq!(direct.outstanding_tables(), 0);
        }
        g.finish();
        debug_assert_eq!(host.outstanding_tables(), 0);
    }
}

/// Whether the timed part runs on the testing kit's heap host (`TDP_BENCH_HOST=heap`, for
/// comparisons with runs made before the direct host existed) instead of the direct-map host.
fn bench_host_is_heap() -> bool {
    std::env::var("TDP_BENCH_HOST").is_ok_and(|v| v == "heap")
}

/// The host the timed part ran on, for the side file.
fn bench_host_name() -> &'static str {
    if bench_host_is_heap() {
        "tdp-core testing HeapHost (warm: freed tables reused)"
    } else {
        "benches DirectHost (direct map, warm per-size free lists, like the peers' frame pool)"
    }
}

/// The timed benchmarks of one group, on `host`. Each changing operation works on its fresh table
/// in place (`iter_batched_ref`), as the peers' do: moving a `Table` (about 1.2 KiB with its
/// statistics shards) into and out of the timed closure would be timed with it.
fn timed<F: PteFormat + Clone, H: Host>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    fmt: &F,
    host: &H,
    w: &Workload,
    sizes: &[(usize, u64)],
) {
    let w = *w;
    let empty = || workload::empty(fmt, host);
    let mapped = || {
        let mut t = workload::empty(fmt, host);
        workload::map_range(&mut t, &w);
        t
    };
    g.bench_function("map_range", |b| {
        b.iter_batched_ref(
            empty,
            |t| {
                workload::map_range(t, &w);
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("map_pages", |b| {
        b.iter_batched_ref(
            empty,
            |t| {
                workload::map_pages(t, &w);
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("query", |b| {
        let t = mapped();
        b.iter(|| workload::query_all(&t, &w))
    });
    g.bench_function("walk", |b| {
        let t = mapped();
        b.iter(|| workload::walk_all(&t, &w))
    });
    g.bench_function("protect", |b| {
        b.iter_batched_ref(
            mapped,
            |t| {
                workload::protect(t, &w);
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("unmap_range", |b| {
        b.iter_batched_ref(
            mapped,
            |t| {
                workload::unmap_range(t, &w);
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("unmap_pages", |b| {
        b.iter_batched_ref(
            mapped,
            |t| {
                workload::unmap_pages(t, &w);
            },
            BatchSize::PerIteration,
        )
    });
    if w.splits() {
        g.bench_function("split", |b| {
            b.iter_batched_ref(
                || {
                    let mut t = workload::empty(fmt, host);
                    workload::map_top(&mut t, &w);
                    t
                },
                |t| {
                    workload::split(t, &w);
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function("collapse", |b| {
            b.iter_batched_ref(
                mapped,
                |t| {
                    workload::collapse(t, &w);
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.bench_function("teardown", |b| {
        b.iter_batched(mapped, drop, BatchSize::PerIteration)
    });
    g.bench_function("host_alloc_free", |b| {
        let mut scratch = Vec::new();
        b.iter(|| workload::host_cycle(host, sizes, &mut scratch))
    });
}

/// Checks that one walk of the mapped range meets every leaf once, with the checksum of
/// `query_all`.
fn check_walk<F: PteFormat + Clone>(
    fmt: &F,
    host: &tdp_core::testing::HeapHost,
    w: &Workload,
) -> Result<(), String> {
    let mut t = workload::empty(fmt, host);
    workload::map_range(&mut t, w);
    let want = (w.leaves, expected_checksum(w));
    let got = workload::walk_all(&t, w);
    if got != want {
        return Err(format!("walk met {got:#x?}, expected {want:#x?}"));
    }
    Ok(())
}

/// The xor of every leaf's output address.
fn expected_checksum(w: &Workload) -> u64 {
    (0..w.leaves).fold(0, |a, i| a ^ (w.hpa + i * w.leaf))
}

// --- the peers ------------------------------------------------------------------------------

fn peer<P: Peer>(c: &mut Criterion) {
    let geo = peers::geometry();
    for w in Workload::all(&geo, GIB) {
        let group = format!("{}_{}", P::NAME, w.name());
        let checked = peers::check_all::<P>(&w).unwrap_or_else(|e| panic!("{group}: {e}"));
        let min = workload::min_table_bytes(&geo, w.start, w.size, w.level);
        let floor = floor_group(c, w.leaves, min);
        let record = Record::new()
            .str("kind", "peer")
            .num("order", next_order())
            .str("group", &group)
            .str("subject", P::NAME)
            .str("leaf", &w.name())
            .num("leaf_bytes", w.leaf)
            .num("leaves", w.leaves)
            .str("floor", &floor)
            .str(
                "host",
                "frame pool of the benches (warm: freed frames reused)",
            )
            .num("table_bytes_min", min)
            .num("table_bytes", checked.table_bytes)
            .num("cached_bytes", 0)
            .num("tables", checked.table_bytes / peers::pool::FRAME as u64)
            .num("metadata_bytes_per_table", P::METADATA_BYTES_PER_TABLE)
            .num("table_bytes_after_unmap", checked.table_bytes_after_unmap);
        if let Err(e) = record.write(&group) {
            eprintln!("cannot write the record of {group}: {e}");
        }

        let mut g = c.benchmark_group(&group);
        g.throughput(Throughput::Elements(w.leaves));
        let fresh = || P::new();
        let mapped = || P::mapped(&w);
        let can = |op| P::supports(op, &w);
        if can(Op::MapRange) {
            g.bench_function("map_range", |b| {
                b.iter_batched_ref(
                    fresh,
                    |t| {
                        t.map_range(&w);
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        if can(Op::MapPages) {
            g.bench_function("map_pages", |b| {
                b.iter_batched_ref(
                    fresh,
                    |t| {
                        t.map_pages(&w);
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        if can(Op::Query) {
            g.bench_function("query", |b| {
                let t = mapped();
                b.iter(|| t.query_all(&w))
            });
        }
        if can(Op::Walk) {
            g.bench_function("walk", |b| {
                let t = mapped();
                b.iter(|| t.walk(&w))
            });
        }
        if can(Op::Protect) {
            g.bench_function("protect", |b| {
                b.iter_batched_ref(
                    mapped,
                    |t| {
                        t.protect(&w);
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        if can(Op::UnmapRange) {
            g.bench_function("unmap_range", |b| {
                b.iter_batched_ref(
                    mapped,
                    |t| {
                        t.unmap_range(&w);
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        if can(Op::UnmapPages) {
            g.bench_function("unmap_pages", |b| {
                b.iter_batched_ref(
                    mapped,
                    |t| {
                        t.unmap_pages(&w);
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        if can(Op::Split) {
            let top = || {
                let mut t = P::new();
                t.map_top(&w);
                t
            };
            g.bench_function("split", |b| {
                b.iter_batched_ref(
                    top,
                    |t| {
                        t.split(&w);
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        if can(Op::Teardown) {
            g.bench_function("teardown", |b| {
                b.iter_batched(mapped, drop, BatchSize::PerIteration)
            });
        }
        g.finish();
    }
}

// --- the floor ------------------------------------------------------------------------------

/// Floor groups already measured in this run (one per distinct number of words and bytes).
static FLOORS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The floor group for `words` entry words and a minimal tree of `zero_bytes` bytes, measured
/// the first time it is asked for.
fn floor_group(c: &mut Criterion, words: u64, zero_bytes: u64) -> String {
    let name = format!("floor_{words}w_{}", size_name(zero_bytes));
    let first = FLOORS
        .lock()
        .map(|mut f| f.insert(name.clone()))
        .unwrap_or(false);
    if !first {
        return name;
    }
    let record = Record::new()
        .str("kind", "floor")
        .str("group", &name)
        .num("leaves", words)
        .num("zero_bytes", zero_bytes);
    if let Err(e) = record.write(&name) {
        eprintln!("cannot write the record of {name}: {e}");
    }
    let mut buf = floor::Words::new(words as usize, zero_bytes as usize);
    let mut g = c.benchmark_group(&name);
    g.throughput(Throughput::Elements(words));
    g.bench_function("store", |b| {
        b.iter(|| floor::store(std::hint::black_box(buf.plain()), 0x907))
    });
    g.bench_function("load", |b| {
        b.iter(|| floor::load(std::hint::black_box(buf.plain())))
    });
    g.bench_function("and_not", |b| {
        b.iter(|| floor::and_not(std::hint::black_box(buf.plain()), 0x2))
    });
    g.bench_function("atomic_and_not", |b| {
        b.iter(|| floor::atomic_and_not(std::hint::black_box(buf.atomic()), 0x2))
    });
    g.bench_function("zero", |b| {
        b.iter(|| floor::zero(std::hint::black_box(buf.table_bytes())))
    });
    g.finish();
    name
}

// --- criterion ------------------------------------------------------------------------------

/// Short enough for a full run of every group in about 20 minutes on 2 cores; the command line
/// (`--sample-size`, `--warm-up-time`, `--measurement-time`) overrides it.
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
    targets = machine, x86, arm64, riscv, loongarch, mips, ppc, rust_peers
}
criterion_main!(benches);
