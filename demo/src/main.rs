//! The project's main job for now: builds an Intel EPT (or AMD NPT) table for a small VM layout
//! through the explicit table API, prints its mappings and statistics, checks every mapping
//! through the independent software walker, and writes the table image for an emulator.
//!
//! ```text
//! cargo run -p tdp-demo --release            # EPT, 4 levels, A/D on
//! cargo run -p tdp-demo --release -- npt     # AMD NPT
//! ```

use std::ops::ControlFlow;
use std::time::Instant;

use tdp_arch_x86::{Ept, EptCaps, EptOptions, Npt, NptOptions};
use tdp_core::testing::HeapHost;
use tdp_core::{
    Attrs, Ctx, EntryKind, Gpa, GpaRange, Host, Hpa, MapOptions, MemType, PendingFlush, Perms,
    PteFormat, SharedHost, Table, Tree, Visit,
};
use tdp_walkers::{ept, npt, Access, FlatImage};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// One region of the VM's guest-physical layout.
struct Region {
    name: &'static str,
    gpa: u64,
    size: u64,
    hpa: u64,
    attrs: Attrs,
}

fn layout() -> Vec<Region> {
    let wb = |perms| Attrs::normal(perms);
    vec![
        Region {
            name: "low RAM",
            gpa: 0,
            size: 2 * GIB,
            hpa: 0x10_0000_0000,
            attrs: wb(Perms::RWX),
        },
        Region {
            name: "framebuffer",
            gpa: 0xe000_0000,
            size: 16 * MIB,
            hpa: 0x20_0000_0000,
            attrs: Attrs {
                perms: Perms::RW,
                mem: MemType::Uncached,
                ignore_guest_memtype: false,
            },
        },
        Region {
            name: "IOAPIC",
            gpa: 0xfec0_0000,
            size: 4 * KIB,
            hpa: 0x30_0000_0000,
            attrs: Attrs {
                perms: Perms::RW,
                mem: MemType::Uncached,
                ignore_guest_memtype: false,
            },
        },
        Region {
            name: "firmware",
            gpa: 0xfffc_0000,
            size: 256 * KIB,
            hpa: 0x30_0010_0000,
            attrs: wb(Perms::RX),
        },
        Region {
            name: "high RAM",
            gpa: 4 * GIB,
            size: 2 * GIB + 6 * MIB,
            hpa: 0x10_8000_0000,
            attrs: wb(Perms::RWX),
        },
    ]
}

fn build<F: PteFormat>(fmt: F, host: &HeapHost) -> Table<F, &HeapHost> {
    let mut table = Table::new(fmt, host).expect("root table");
    for r in layout() {
        let t = Instant::now();
        let range = GpaRange::new(Gpa::new(r.gpa), r.size).expect("non-empty region");
        table
            .map(range, Hpa::new(r.hpa), r.attrs)
            .expect("map region");
        println!(
            "  map {:<11} gpa {:#013x}..{:#013x} -> hpa {:#013x} {} {:?}  ({:.1} us)",
            r.name,
            r.gpa,
            r.gpa + r.size,
            r.hpa,
            r.attrs.perms,
            r.attrs.mem,
            t.elapsed().as_secs_f64() * 1e6
        );
    }
    // A guest-visible change: make one firmware page read-only (splits a 2 MiB leaf if needed).
    let fw = GpaRange::new(Gpa::new(0xfffc_0000), 4 * KIB).unwrap();
    table.protect(fw, Perms::READ).expect("protect");
    println!("  protect firmware's first page read-only");
    table
}

fn print_table<F: PteFormat, H: Host>(table: &Table<F, H>) {
    println!("\nLeaves (contiguous runs of equal size and attributes coalesced):");
    let whole = GpaRange::new(Gpa::new(0), 1 << table.format().geometry().ia_bits()).unwrap();
    let mut run: Option<(u64, u64, u64, u64, u64)> = None; // (gpa, end, hpa, size, raw key)
    let flush = |run: &Option<(u64, u64, u64, u64, u64)>| {
        if let Some((gpa, end, hpa, size, _)) = run {
            let m = table.query(Gpa::new(*gpa)).unwrap().unwrap();
            println!(
                "  {:#013x}..{:#013x} -> {:#013x}  {:>4} x {:>8}  {} {:?} A/D {:?}/{:?}",
                gpa,
                end,
                hpa,
                (end - gpa) / size,
                human(*size),
                m.attrs.perms,
                m.attrs.mem,
                m.ad.accessed,
                m.ad.dirty
            );
        }
    };
    table
        .walk(whole, |e| {
            if e.visit == Visit::Leaf && e.kind == EntryKind::Leaf {
                let m = table.query(e.gpa).unwrap().unwrap();
                let key = (m.attrs.perms.bits() as u64) << 8 | m.attrs.mem as u64;
                match &mut run {
                    Some((start, end, hpa, size, k))
                        if *end == e.gpa.raw()
                            && *size == m.size
                            && *k == key
                            && *hpa + (*end - *start) == m.hpa.raw() =>
                    {
                        *end += m.size;
                    }
                    _ => {
                        flush(&run);
                        run = Some((e.gpa.raw(), e.gpa.raw() + m.size, m.hpa.raw(), m.size, key));
                    }
                }
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    flush(&run);

    let s = table.stats();
    println!("\nStatistics:");
    for l in (0..table.format().geometry().levels() as usize).rev() {
        println!(
            "  level {l}: {:>5} tables, {:>7} leaves",
            s.tables[l], s.leaves[l]
        );
    }
    println!(
        "  table memory {} in {} tables, {} reserved for the next operation, {} B metadata per table",
        human(s.table_bytes),
        s.total_tables(),
        human(s.cached_bytes),
        s.metadata_bytes_per_table
    );
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} B"),
    }
}

/// Checks a few addresses of every region through the independent walker.
fn verify(image: &FlatImage, walk: impl Fn(&FlatImage, u64) -> Option<u64>) -> usize {
    let mut checked = 0;
    for r in layout() {
        for off in [0, r.size / 2, r.size - 8] {
            let want = r.hpa + off;
            assert_eq!(
                walk(image, r.gpa + off),
                Some(want),
                "{} at {:#x}",
                r.name,
                r.gpa + off
            );
            checked += 1;
        }
    }
    checked
}

/// A second root on the same host, filled the way vCPUs fault memory in: two threads, each with
/// its own reserve and flush obligation, mapping one page per call in shared mode; then one
/// batched unmap of every other page with a single invalidation.
fn many_callers<F: PteFormat + Clone + Sync>(fmt: &F, host: &HeapHost) {
    const PER_VCPU: u64 = 32 * MIB;
    let tree = Tree::new(fmt.clone(), host).expect("room for a second root");
    let page = fmt.geometry().page_size();
    let start = Instant::now();
    std::thread::scope(|s| {
        for vcpu in 0..2u64 {
            let tree = &tree;
            s.spawn(move || {
                let mut ctx = Ctx::new(tree.format());
                let mut flush = PendingFlush::new(host);
                let guard = host.read_side();
                let shared = tree.shared(&guard);
                let base = 4 * GIB + vcpu * PER_VCPU;
                for p in (0..PER_VCPU).step_by(page as usize) {
                    let gpa = GpaRange::new(Gpa::new(base + p), page).unwrap();
                    let hpa = Hpa::new(0x40_0000_0000 + base + p);
                    let small = MapOptions {
                        max_level: Some(tdp_core::Level::LEAF),
                        ..MapOptions::default()
                    };
                    let _ = shared
                        .map(
                            &mut ctx,
                            &mut flush,
                            gpa,
                            hpa,
                            Attrs::normal(Perms::RW),
                            small,
                        )
                        .expect("map");
                }
                drop(guard);
                flush.flush();
                ctx.free_all(host);
            });
        }
    });
    let took = start.elapsed();
    let pages = 2 * PER_VCPU / page;
    println!(
        "\nMany callers: a second root on the same host; 2 vCPU threads faulted in {pages} pages in \
         shared mode in {:.1} ms ({:.0} ns per page per thread)",
        took.as_secs_f64() * 1e3,
        took.as_nanos() as f64 * 2.0 / pages as f64
    );
    let mut tree = tree;
    let s = tree.stats();
    println!(
        "  leaves {:?}, tables {:?} (counts exact after concurrent updates)",
        &s.leaves[..3],
        &s.tables[..4]
    );
    let mut ctx = Ctx::new(fmt);
    let mut flush = PendingFlush::new(host);
    host.take_events();
    let x = tree.exclusive();
    for p in (0..2 * PER_VCPU).step_by(2 * page as usize) {
        let one = GpaRange::new(Gpa::new(4 * GIB + p), page).unwrap();
        let _ = x.unmap(&mut ctx, &mut flush, one).expect("unmap");
    }
    flush.flush();
    let flushes = host
        .take_events()
        .iter()
        .filter(|e| matches!(e, tdp_core::testing::HostEvent::Flush(_)))
        .count();
    println!(
        "  {} single-page unmaps batched into {flushes} TLB invalidation(s); {} leaves left",
        pages / 2,
        x.tree().stats().leaves[0]
    );
    ctx.free_all(host);
}

fn main() {
    let arch = std::env::args().nth(1).unwrap_or_else(|| "ept".into());
    // Table pages live in a 16 MiB physical window at 3 GiB (physical != virtual).
    let host = HeapHost::new(0xc000_0000, 16 * MIB, 4096);
    let out = std::env::temp_dir().join(format!("tdp-demo-{arch}"));
    match arch.as_str() {
        "ept" => {
            let caps = EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1);
            let opts = EptOptions {
                levels: 4,
                accessed_dirty: true,
                maxphyaddr: 46,
                mbec: false,
            };
            let fmt = Ept::new(caps, opts).expect("EPT configuration");
            println!("Intel EPT, 4 levels, A/D on: building a VM layout");
            let table = build(fmt.clone(), &host);
            let eptp = fmt.eptp(table.root()).unwrap();
            println!("  EPTP = {eptp:#x}");
            print_table(&table);
            let img = host.image(table.root());
            img.write(&out).expect("write image");
            let flat = FlatImage::new(img.base, img.bytes);
            let caps = ept::EptCaps {
                maxphyaddr: 46,
                execute_only: true,
                page_1g: true,
                mbec: false,
            };
            let n = verify(&flat, |m, gpa| {
                ept::peek(m, eptp, &caps, gpa, Access::Read)
                    .ok()
                    .map(|t| t.hpa)
            });
            println!("\n{n} addresses checked through the independent EPT walker: all translate as mapped");
            many_callers(&fmt, &host);
        }
        "npt" => {
            let fmt = Npt::new(NptOptions {
                maxphyaddr: 46,
                ..NptOptions::default()
            })
            .expect("NPT configuration");
            println!("AMD NPT, 4 levels: building a VM layout");
            let table = build(fmt.clone(), &host);
            println!("  nCR3 = {:#x}", fmt.ncr3(table.root(), None).unwrap());
            print_table(&table);
            let img = host.image(table.root());
            img.write(&out).expect("write image");
            let root = table.root().raw();
            let flat = FlatImage::new(img.base, img.bytes);
            let caps = npt::NptCaps {
                levels: 4,
                maxphyaddr: 46,
                nx_enabled: true,
                page_1g: true,
            };
            let n = verify(&flat, |m, gpa| {
                npt::peek(m, root, &caps, gpa, Access::Read)
                    .ok()
                    .map(|t| t.hpa)
            });
            println!("\n{n} addresses checked through the independent NPT walker: all translate as mapped");
        }
        other => {
            eprintln!("unknown architecture {other:?}: use ept or npt");
            std::process::exit(2);
        }
    }
    println!(
        "Table image: {}.bin (+ .txt with base and root), loadable by an emulator",
        out.display()
    );
}
