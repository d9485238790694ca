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
    Attrs, EntryKind, Gpa, GpaRange, Host, Hpa, MemType, Perms, PteFormat, Table, Visit,
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
