//! Hand-checked raw entries and behaviour pinned down by name, for the RISC-V G-stage format.
//!
//! Expected values are written out from the Privileged spec's PTE layout (V 0, R 1, W 2, X 3,
//! U 4, G 5, A 6, D 7, RSW 9:8, PPN 53:10, PBMT 62:61) and checked against memory and against the
//! independent walker, never against the format's own decoding.

use tdp_arch_riscv::{
    Gstage, GstageCaps, GstageMode, GstageOptions, HfenceGvma, HFENCE_GVMA_MAX_GPAS,
};
use tdp_core::testing::{HeapHost, HostEvent};
use tdp_core::{
    Attrs, Error, Gpa, GpaRange, Host, Hpa, Level, MapOptions, MemType, Perms, PteFormat, Table,
    TlbFlush,
};
use tdp_walkers::gstage::{self, GstageFault, GuestPageFaultReason};
use tdp_walkers::{Access, FlatImage, PhysMem};

const BASE: u64 = 0x1_0000_0000;
const VMID: u16 = 7;

fn caps(svadu: bool, svpbmt: bool) -> GstageCaps {
    GstageCaps {
        max_mode: GstageMode::Sv57x4,
        vmid_bits: 14,
        svadu,
        svpbmt,
        svvptc: false,
    }
}

fn fmt(mode: GstageMode, svadu: bool) -> Gstage {
    Gstage::new(
        caps(svadu, true),
        GstageOptions {
            mode,
            pa_bits: 56,
            leaf_512g: false,
        },
    )
    .unwrap()
}

fn wcaps(svadu: bool) -> gstage::GstageCaps {
    gstage::GstageCaps {
        svadu,
        svpbmt: true,
        svnapot: false,
        svrsw60t59b: false,
    }
}

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

fn word(host: &HeapHost, pa: u64) -> u64 {
    let mut b = [0u8; 8];
    assert!(host.read_phys(pa, &mut b), "{pa:#x} outside the window");
    u64::from_le_bytes(b)
}

/// The PTE addresses and values of the walk of `gpa`, root first, read straight from memory
/// with the spec's index rule (root index = 11 bits, others 9 bits, PTE at base + index × 8).
fn chain(host: &HeapHost, root: u64, levels: u32, gpa: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut table = root;
    for i in (0..levels).rev() {
        let bits = if i == levels - 1 { 11 } else { 9 };
        let idx = (gpa >> (12 + 9 * i)) & ((1 << bits) - 1);
        let pa = table + idx * 8;
        let e = word(host, pa);
        out.push((pa, e));
        if e & 0b1111 != 0b0001 {
            break; // a leaf or an invalid entry
        }
        table = ((e >> 10) & ((1 << 44) - 1)) << 12;
    }
    out
}

/// Every non-zero entry reachable from the root, as (physical address, value), read straight
/// from memory with the spec's rules (a pointer is V = 1 with R = W = X = 0).
fn tree(host: &HeapHost, root: Hpa, levels: u32) -> Vec<(u64, u64)> {
    fn walk(host: &HeapHost, table: u64, entries: u64, level: u32, out: &mut Vec<(u64, u64)>) {
        for i in 0..entries {
            let pa = table + i * 8;
            let e = word(host, pa);
            if e == 0 {
                continue;
            }
            out.push((pa, e));
            if e & 0b1111 == 0b0001 && level > 0 {
                let child = ((e >> 10) & ((1 << 44) - 1)) << 12;
                walk(host, child, 512, level - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(host, root.raw(), 2048, levels - 1, &mut out);
    out
}

struct Phys<'a>(&'a HeapHost);

impl PhysMem for Phys<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.0.read_phys(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.0.write_phys(pa, buf)
    }
}

#[test]
fn leaf_and_pointer_raw_values_match_the_privileged_spec_layout() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = fmt(GstageMode::Sv39x4, false);
    let mut t = Table::new(f.clone(), &host).unwrap();
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x8020_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    let c = chain(&host, t.root().raw(), 3, 0x1000);
    assert_eq!(c.len(), 3);
    // Pointers: V only (R = W = X = 0; D, A, U reserved in non-leaf PTEs), PPN << 10.
    for w in c.windows(2) {
        let (_, ptr) = w[0];
        let (child_pa, _) = w[1];
        let child_table = child_pa & !0xfff;
        assert_eq!(ptr, (child_table >> 12) << 10 | 0x1, "pointer {ptr:#x}");
    }
    // Leaf: V|R|W|U|A|D = 0x01|0x02|0x04|0x10|0x40|0x80 = 0xd7, PPN 0x80200 << 10, PBMT 0.
    assert_eq!(c[2].1, 0x2008_00d7);
    assert_eq!(t.query(Gpa::new(0x1000)).unwrap().unwrap().raw, 0x2008_00d7);
}

#[test]
fn huge_leaves_carry_pbmt_and_the_device_record() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = fmt(GstageMode::Sv39x4, false);
    let mut t = Table::new(f.clone(), &host).unwrap();
    let nc_rx = Attrs {
        perms: Perms::RX,
        mem: MemType::WriteCombining,
        ignore_guest_memtype: false,
    };
    t.map(range(0x20_0000, 0x20_0000), Hpa::new(0x4020_0000), nc_rx)
        .unwrap();
    // 2 MiB: V|R|X|U|A = 0x5b, PPN 0x40200 << 10 = 0x1008_0000, PBMT NC = 1 << 61.
    let c = chain(&host, t.root().raw(), 3, 0x20_0000);
    assert_eq!(c.last().unwrap().1, 1 << 61 | 0x1008_0000 | 0x5b);

    let dev_ro = Attrs {
        perms: Perms::READ,
        mem: MemType::Device,
        ignore_guest_memtype: false,
    };
    t.map_with(
        range(0x4000_0000, 0x4000_0000),
        Hpa::new(0xc000_0000),
        dev_ro,
        MapOptions {
            max_level: None,
            young_dirty: false,
        },
    )
    .unwrap();
    // 1 GiB: V|R|U = 0x13, no A/D (cold), RSW bit 9 = 0x200, PPN 0xc0000 << 10, PBMT IO = 2 << 61.
    let c = chain(&host, t.root().raw(), 3, 0x4000_0000);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].1, 2 << 61 | 0x3000_0000 | 0x200 | 0x13);
    let uc = Attrs {
        mem: MemType::Uncached,
        ..dev_ro
    };
    t.map(range(0x8000_0000, 0x1000), Hpa::new(0xd000_0000), uc)
        .unwrap();
    let c = chain(&host, t.root().raw(), 3, 0x8000_0000);
    assert_eq!(c.last().unwrap().1, 2 << 61 | 0x3400_0000 | 0x53);

    // The walker agrees on the memory types.
    let hgatp = f.hgatp(t.root(), VMID).unwrap();
    let img = FlatImage::new(BASE, host.image(t.root()).bytes);
    let pbmt = |gpa| {
        gstage::peek(&img, hgatp, &wcaps(true), gpa, Access::Read)
            .unwrap()
            .pbmt
    };
    assert_eq!(
        (pbmt(0x20_0000), pbmt(0x4000_0000), pbmt(0x8000_0000)),
        (1, 2, 2)
    );
    assert!(gstage::peek(&img, hgatp, &wcaps(true), 0x20_0000, Access::ExecUser).is_ok());
    assert!(gstage::peek(&img, hgatp, &wcaps(true), 0x20_0000, Access::Write).is_err());
    // And the format keeps Device and Uncached apart.
    let q = |gpa| t.query(Gpa::new(gpa)).unwrap().unwrap().attrs;
    assert_eq!((q(0x4000_0000), q(0x8000_0000)), (dev_ro, uc));
}

#[test]
fn split_children_copy_every_bit_and_step_the_ppn() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = fmt(GstageMode::Sv39x4, true);
    let mut t = Table::new(f, &host).unwrap();
    let attrs = Attrs {
        perms: Perms::RWX,
        mem: MemType::WriteCombining,
        ignore_guest_memtype: false,
    };
    t.map(range(0x20_0000, 0x20_0000), Hpa::new(0x4020_0000), attrs)
        .unwrap();
    let huge = chain(&host, t.root().raw(), 3, 0x20_0000).last().unwrap().1;
    t.split(range(0x20_0000, 0x20_0000), Level::LEAF).unwrap();
    for i in [0u64, 1, 255, 511] {
        let gpa = 0x20_0000 + i * 0x1000;
        let leaf = chain(&host, t.root().raw(), 3, gpa).last().unwrap().1;
        assert_eq!(leaf, huge + (i << 10), "child {i}");
    }
}

#[test]
fn the_x4_root_is_indexed_by_gpa_bits_40_to_30_in_sv39x4() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = fmt(GstageMode::Sv39x4, true);
    let mut t = Table::new(f.clone(), &host).unwrap();
    let root = t.root().raw();
    // Root index 0b11_0000_0000_1 = 1537: bits 40 and 39 are the two extra root bits.
    let gpa = 1 << 40 | 1 << 39 | 1 << 30 | 0x3000;
    t.map(
        range(gpa, 0x1000),
        Hpa::new(0x9000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    assert_ne!(word(&host, root + 1537 * 8), 0);
    assert_eq!(word(&host, root + 1537 * 8) & 0xff, 0x01);
    for i in (0..2048).filter(|&i| i != 1537) {
        assert_eq!(word(&host, root + i * 8), 0, "root entry {i}");
    }
    let hgatp = f.hgatp(t.root(), VMID).unwrap();
    let tr = gstage::peek(&Phys(&host), hgatp, &wcaps(true), gpa | 0x123, Access::Read).unwrap();
    assert_eq!(tr.hpa, 0x9123);
    // The top of the 41-bit space is the last root entry; one past it is too wide.
    t.map(
        range((1 << 41) - 0x4000_0000, 0x4000_0000),
        Hpa::new(0x4000_0000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    assert_ne!(word(&host, root + 2047 * 8), 0);
    assert!(matches!(
        t.map(
            range(1 << 41, 0x1000),
            Hpa::new(0),
            Attrs::normal(Perms::RW)
        ),
        Err(Error::GpaTooWide { bits: 41, .. })
    ));
}

#[test]
fn every_mode_has_a_16k_root_of_2048_entries_and_reaches_its_top_entry() {
    for (mode, levels) in [
        (GstageMode::Sv39x4, 3u32),
        (GstageMode::Sv48x4, 4),
        (GstageMode::Sv57x4, 5),
    ] {
        let host = HeapHost::new(BASE, 1 << 20, 4096);
        let f = fmt(mode, true);
        let mut t = Table::new(f.clone(), &host).unwrap();
        assert_eq!(
            host.take_events(),
            vec![HostEvent::Alloc(t.root(), 16384)],
            "{mode:?}"
        );
        let top = (1u64 << mode.gpa_bits()) - 0x1000;
        t.map(
            range(top, 0x1000),
            Hpa::new(0x7000),
            Attrs::normal(Perms::RX),
        )
        .unwrap();
        let c = chain(&host, t.root().raw(), levels, top);
        assert_eq!(c[0].0, t.root().raw() + 2047 * 8, "{mode:?}");
        assert_eq!(c.len() as u32, levels);
        let hgatp = f.hgatp(t.root(), VMID).unwrap();
        let tr =
            gstage::peek(&Phys(&host), hgatp, &wcaps(true), top + 8, Access::ExecUser).unwrap();
        assert_eq!((tr.hpa, tr.level), (0x7008, 0));
    }
}

#[test]
fn leaf_512g_option_maps_splits_and_collapses_level_3_leaves() {
    let opts = |mode, leaf_512g| GstageOptions {
        mode,
        pa_bits: 56,
        leaf_512g,
    };
    assert_eq!(
        Gstage::new(caps(true, true), opts(GstageMode::Sv39x4, true)).err(),
        Some(Error::InvalidConfig {
            what: "512 GiB leaves without a level 3 (Sv39x4)",
            value: 3
        })
    );
    const G512: u64 = 1 << 39;
    for mode in [GstageMode::Sv48x4, GstageMode::Sv57x4] {
        let f = Gstage::new(caps(true, true), opts(mode, true)).unwrap();
        let host = HeapHost::new(BASE, 1 << 20, 4096);
        let mut t = Table::new(f.clone(), &host).unwrap();
        t.map(
            range(G512, G512),
            Hpa::new(1 << 41),
            Attrs::normal(Perms::RW),
        )
        .unwrap();
        assert_eq!(t.stats().leaves, [0, 0, 0, 1, 0], "{mode:?}");
        let hgatp = f.hgatp(t.root(), VMID).unwrap();
        let peek =
            |gpa| gstage::peek(&Phys(&host), hgatp, &wcaps(true), gpa, Access::Write).unwrap();
        let tr = peek(G512 + 0x12_3456_7890);
        assert_eq!(
            (tr.hpa, tr.level, tr.page_size),
            ((1 << 41) + 0x12_3456_7890, 3, G512)
        );
        // Cutting a 4 KiB hole splits 512G → 1G → 2M → 4K around it.
        t.unmap(range(G512 + 0x4000_1000, 0x1000)).unwrap();
        assert_eq!(t.stats().leaves, [511, 511, 511, 0, 0]);
        assert_eq!(peek(G512 + 0x4000_2000).level, 0);
        assert!(gstage::peek(
            &Phys(&host),
            hgatp,
            &wcaps(true),
            G512 + 0x4000_1000,
            Access::Read
        )
        .is_err());
        t.map(
            range(G512 + 0x4000_1000, 0x1000),
            Hpa::new((1 << 41) + 0x4000_1000),
            Attrs::normal(Perms::RW),
        )
        .unwrap();
        t.collapse(range(G512, G512)).unwrap();
        assert_eq!(t.stats().leaves, [0, 0, 0, 1, 0]);
        assert_eq!(peek(G512 + 0x4000_1234).level, 3);
    }
    // Without the option a 512 GiB range takes 1 GiB leaves.
    let f = Gstage::new(caps(true, true), opts(GstageMode::Sv48x4, false)).unwrap();
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let mut t = Table::new(f, &host).unwrap();
    t.map(
        range(G512, G512),
        Hpa::new(1 << 41),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    assert_eq!(t.stats().leaves, [0, 0, 512, 0, 0]);
    assert_eq!(
        t.split(range(0, 0x1000), Level::new(3).unwrap()),
        Err(Error::InvalidLevel {
            level: Level::new(3).unwrap()
        })
    );
}

#[test]
fn inexpressible_attributes_are_rejected_with_nothing_changed() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let no_pbmt = Gstage::new(
        caps(true, false),
        GstageOptions {
            mode: GstageMode::Sv39x4,
            pa_bits: 56,
            leaf_512g: false,
        },
    )
    .unwrap();
    let mut t = Table::new(no_pbmt, &host).unwrap();
    let a = |perms, mem| Attrs {
        perms,
        mem,
        ignore_guest_memtype: false,
    };
    let bad = [
        a(Perms::empty(), MemType::WriteBack),
        a(Perms::WRITE, MemType::WriteBack),
        a(Perms::WRITE | Perms::EXEC, MemType::WriteBack),
        a(Perms::READ | Perms::EXEC_SUPER, MemType::WriteBack),
        a(Perms::READ | Perms::EXEC_USER, MemType::WriteBack),
        a(Perms::READ, MemType::WriteThrough),
        a(Perms::READ, MemType::WriteProtect),
        a(Perms::READ, MemType::WriteCombining),
        a(Perms::READ, MemType::Uncached),
        a(Perms::READ, MemType::Device),
        Attrs {
            ignore_guest_memtype: true,
            ..Attrs::normal(Perms::RW)
        },
    ];
    let before = (t.stats(), host.outstanding_bytes());
    let image = tree(&host, t.root(), 3);
    for attrs in bad {
        assert_eq!(
            t.map(range(0, 0x1000), Hpa::new(0x5000), attrs),
            Err(Error::UnsupportedAttrs { attrs })
        );
        assert_eq!((t.stats(), host.outstanding_bytes()), before);
        assert_eq!(tree(&host, t.root(), 3), image);
    }
    // Execute-only is a legal leaf (R = W = 0, X = 1).
    t.map(
        range(0, 0x1000),
        Hpa::new(0x5000),
        Attrs::normal(Perms::EXEC),
    )
    .unwrap();
    // Protect to no access would need V = 1 with R = W = X = 0: a pointer.
    let before = t.stats();
    let image = tree(&host, t.root(), 3);
    assert_eq!(
        t.protect(range(0, 0x1000), Perms::empty()),
        Err(Error::UnsupportedAttrs {
            attrs: Attrs::normal(Perms::empty())
        })
    );
    assert_eq!(t.stats(), before);
    assert_eq!(tree(&host, t.root(), 3), image);
}

#[test]
fn svade_young_dirty_presets_a_and_d_and_without_it_the_walker_faults() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = fmt(GstageMode::Sv48x4, false);
    let mut t = Table::new(f.clone(), &host).unwrap();
    let cold = MapOptions {
        max_level: None,
        young_dirty: false,
    };
    t.map_with(
        range(0, 0x1000),
        Hpa::new(0x10_0000),
        Attrs::normal(Perms::RW),
        cold,
    )
    .unwrap();
    t.map(
        range(0x1000, 0x1000),
        Hpa::new(0x10_1000),
        Attrs::normal(Perms::RW),
    )
    .unwrap();
    t.map(
        range(0x2000, 0x1000),
        Hpa::new(0x10_2000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    let hgatp = f.hgatp(t.root(), VMID).unwrap();
    let svade = wcaps(false);
    let reason = |gpa, access| match gstage::translate(&mut Phys(&host), hgatp, &svade, gpa, access)
    {
        Ok(_) => None,
        Err(GstageFault::GuestPageFault(g)) => Some(g.reason),
        Err(e) => panic!("{e}"),
    };
    // Cold: A clear, so any access is a guest-page fault for the host's fault path to handle.
    assert_eq!(
        reason(0x10, Access::Read),
        Some(GuestPageFaultReason::AccessedDirty)
    );
    assert_eq!(
        reason(0x10, Access::Write),
        Some(GuestPageFaultReason::AccessedDirty)
    );
    // Young: A and D preset, no fault, and Svade hardware wrote nothing.
    let leaf_before = chain(&host, t.root().raw(), 4, 0x1000).last().unwrap().1;
    assert_eq!(leaf_before & 0xc0, 0xc0);
    assert_eq!(reason(0x1010, Access::Read), None);
    assert_eq!(reason(0x1010, Access::Write), None);
    assert_eq!(
        chain(&host, t.root().raw(), 4, 0x1000).last().unwrap().1,
        leaf_before
    );
    // Young read-only: A only (no D on a leaf that cannot be written). Making it writable later
    // leaves D clear, so the first store faults (software dirty tracking).
    assert_eq!(
        chain(&host, t.root().raw(), 4, 0x2000).last().unwrap().1 & 0xc0,
        0x40
    );
    t.protect(range(0x2000, 0x1000), Perms::RW).unwrap();
    assert_eq!(reason(0x2010, Access::Read), None);
    assert_eq!(
        reason(0x2010, Access::Write),
        Some(GuestPageFaultReason::AccessedDirty)
    );
    let q = t.query(Gpa::new(0)).unwrap().unwrap();
    assert_eq!((q.ad.accessed, q.ad.dirty), (Some(false), Some(false)));
    assert_eq!(f.ad_model(), tdp_core::AdModel::Software);
    assert_eq!(f.volatile_bits(q.raw, Level::LEAF), 0);
}

#[test]
fn svadu_hardware_a_and_d_are_volatile_and_survive_split_protect_and_collapse() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = fmt(GstageMode::Sv39x4, true);
    let mut t = Table::new(f.clone(), &host).unwrap();
    let cold = MapOptions {
        max_level: None,
        young_dirty: false,
    };
    t.map_with(
        range(0x20_0000, 0x20_0000),
        Hpa::new(0x4020_0000),
        Attrs::normal(Perms::RW),
        cold,
    )
    .unwrap();
    let m = t.query(Gpa::new(0x20_0000)).unwrap().unwrap();
    // Cold writable leaf: A and D may both be set by hardware.
    assert_eq!(f.volatile_bits(m.raw, m.level), 0xc0);
    assert_eq!(f.ad_model(), tdp_core::AdModel::Hardware);
    let hgatp = f.hgatp(t.root(), VMID).unwrap();
    gstage::translate(
        &mut Phys(&host),
        hgatp,
        &wcaps(true),
        0x20_1234,
        Access::Write,
    )
    .unwrap();
    let leaf = chain(&host, t.root().raw(), 3, 0x20_0000).last().unwrap().1;
    assert_eq!(leaf & 0xc0, 0xc0, "the walker set A and D");
    assert_eq!(f.volatile_bits(leaf, Level::new(1).unwrap()), 0);
    t.split(range(0x20_0000, 0x20_0000), Level::LEAF).unwrap();
    t.protect(range(0x20_0000, 0x20_0000), Perms::READ).unwrap();
    // Every child kept A and D, so with Svade semantics nothing would fault for a read.
    for gpa in [0x20_0000u64, 0x2f_f000, 0x3f_f000] {
        let tr = gstage::peek(&Phys(&host), hgatp, &wcaps(false), gpa, Access::Read).unwrap();
        assert!(tr.accessed && tr.dirty && !tr.write, "{gpa:#x}");
    }
    t.collapse(range(0x20_0000, 0x20_0000)).unwrap();
    let leaf = chain(&host, t.root().raw(), 3, 0x20_0000).last().unwrap().1;
    assert_eq!(leaf, 0x1008_0000 | 0xc0 | 0x13, "2 MiB, R|U|V, A|D kept");
}

#[test]
fn hgatp_encodes_mode_vmid_and_root_and_the_walker_decodes_it() {
    let f = fmt(GstageMode::Sv48x4, true);
    let v = f.hgatp(Hpa::new(0x8000_4000), 5).unwrap();
    assert_eq!(v, 0x9000_5000_0008_0004);
    let d = gstage::decode_hgatp(v).unwrap();
    assert_eq!(
        (d.mode, d.vmid, d.root),
        (gstage::HgatpMode::Sv48x4, 5, 0x8000_4000)
    );
    for (mode, bits) in [
        (GstageMode::Sv39x4, 8u64),
        (GstageMode::Sv48x4, 9),
        (GstageMode::Sv57x4, 10),
    ] {
        let v = fmt(mode, false)
            .hgatp(Hpa::new(0xff_ffff_c000), 0x3fff)
            .unwrap();
        assert_eq!(v >> 60, bits);
        let d = gstage::decode_hgatp(v).unwrap();
        assert_eq!((d.vmid, d.root), (0x3fff, 0xff_ffff_c000));
    }
    assert_eq!(
        f.hgatp(Hpa::new(0x8000_1000), 5),
        Err(Error::UnalignedHpa {
            hpa: Hpa::new(0x8000_1000),
            align: 16384
        })
    );
    assert_eq!(
        f.hgatp(Hpa::new(0x8000_8000), 5)
            .map(|v| v & 0xfff_ffff_ffff),
        Ok(0x80008),
        "32 KiB-aligned is fine"
    );
    assert!(matches!(
        f.hgatp(Hpa::new(1 << 56), 0),
        Err(Error::HpaTooWide { bits: 56, .. })
    ));
    let narrow = Gstage::new(
        GstageCaps {
            vmid_bits: 7,
            ..caps(true, true)
        },
        GstageOptions {
            mode: GstageMode::Sv39x4,
            pa_bits: 40,
            leaf_512g: false,
        },
    )
    .unwrap();
    assert!(narrow.hgatp(Hpa::new(0x4000), 127).is_ok());
    assert_eq!(
        narrow.hgatp(Hpa::new(0x4000), 128),
        Err(Error::InvalidConfig {
            what: "VMID wider than VMIDLEN",
            value: 128
        })
    );
    assert!(matches!(
        narrow.hgatp(Hpa::new(1 << 40), 1),
        Err(Error::HpaTooWide { bits: 40, .. })
    ));
}

#[test]
fn invalid_modes_and_configurations_are_rejected() {
    for m in [8u64, 9, 10] {
        assert_eq!(GstageMode::from_hgatp_mode(m).unwrap().hgatp_mode(), m);
    }
    for m in [0u64, 1, 2, 7, 11, 15, 16, u64::MAX] {
        assert!(
            matches!(
                GstageMode::from_hgatp_mode(m),
                Err(Error::InvalidConfig { value, .. }) if value == m
            ),
            "mode {m}"
        );
    }
    let o = |mode, pa_bits| GstageOptions {
        mode,
        pa_bits,
        leaf_512g: false,
    };
    let sv39_only = GstageCaps {
        max_mode: GstageMode::Sv39x4,
        ..caps(false, false)
    };
    assert!(Gstage::new(sv39_only, o(GstageMode::Sv39x4, 56)).is_ok());
    assert_eq!(
        Gstage::new(sv39_only, o(GstageMode::Sv48x4, 56)).err(),
        Some(Error::InvalidConfig {
            what: "hgatp.MODE not supported by the hart",
            value: 9
        })
    );
    for pa in [31u8, 57, 64] {
        assert!(matches!(
            Gstage::new(caps(false, false), o(GstageMode::Sv39x4, pa)),
            Err(Error::InvalidConfig { .. })
        ));
    }
    assert!(matches!(
        Gstage::new(
            GstageCaps {
                vmid_bits: 15,
                ..caps(false, false)
            },
            o(GstageMode::Sv39x4, 56)
        ),
        Err(Error::InvalidConfig { value: 15, .. })
    ));
}

fn gpas(h: HfenceGvma) -> (Vec<u64>, u64) {
    match h {
        HfenceGvma::Gpas { rs1, rs2 } => (rs1.collect(), rs2),
        HfenceGvma::Vmid { .. } => panic!("whole-VMID fence"),
    }
}

#[test]
fn hfence_gvma_operands_follow_the_flushed_range() {
    let f = fmt(GstageMode::Sv39x4, true);
    let r = |start, size, level: Option<u8>, tables| TlbFlush::Range {
        start: Gpa::new(start),
        size,
        level: level.map(|l| Level::new(l).unwrap()),
        tables,
    };
    let fence = |flush| f.hfence_gvma(flush, VMID, HFENCE_GVMA_MAX_GPAS).unwrap();
    // Two 4 KiB leaves: rs1 = GPA >> 2 for each page, rs2 = VMID.
    assert_eq!(
        gpas(fence(r(0x20_1000, 0x2000, Some(0), false))),
        (vec![0x8_0400, 0x8_0800], 7)
    );
    // Two 2 MiB leaves: one fence per 2 MiB page, the address aligned down.
    assert_eq!(
        gpas(fence(r(0x40_0000, 0x40_0000, Some(1), false))).0,
        vec![0x10_0000, 0x18_0000]
    );
    // A 1 GiB leaf high in the x4 space: GPA bit 40 survives the shift (>> 2 keeps it in 39 bits).
    assert_eq!(
        gpas(fence(r(1 << 40, 1 << 30, Some(2), false))).0,
        vec![1 << 38]
    );
    // Mixed leaf levels: every 4 KiB page of the range.
    let (v, _) = gpas(fence(r(0x1000, 0x3000, None, false)));
    assert_eq!(v, vec![0x400, 0x800, 0xc00]);
    // A table entry changed: an address fence is only guaranteed for leaf PTEs.
    assert_eq!(
        fence(r(0x1000, 0x1000, None, true)),
        HfenceGvma::Vmid { rs2: 7 }
    );
    assert_eq!(fence(TlbFlush::All), HfenceGvma::Vmid { rs2: 7 });
    // The threshold: 512 fences are issued one by one, 513 become one whole-VMID fence.
    let HfenceGvma::Gpas { rs1, .. } = fence(r(0, 512 << 12, Some(0), false)) else {
        panic!()
    };
    assert_eq!((rs1.len(), rs1.first(), rs1.step()), (512, 0, 0x400));
    assert_eq!(
        fence(r(0, 513 << 12, Some(0), false)),
        HfenceGvma::Vmid { rs2: 7 }
    );
    assert_eq!(
        f.hfence_gvma(r(0, 0x3000, Some(0), false), VMID, 2),
        Ok(HfenceGvma::Vmid { rs2: 7 }),
        "3 > 2: whole VMID"
    );
    assert_eq!(
        gpas(fence(r(0x1000, 0, Some(0), false))).0,
        Vec::<u64>::new()
    );
    assert_eq!(
        f.hfence_gvma(TlbFlush::All, 1 << 14, 512),
        Err(Error::InvalidConfig {
            what: "VMID wider than VMIDLEN",
            value: 1 << 14
        })
    );
    assert_eq!(
        f.hfence_gvma(r(0, 0x1000, Some(3), false), VMID, 512),
        Err(Error::InvalidLevel {
            level: Level::new(3).unwrap()
        })
    );
}

#[test]
fn engine_flushes_translate_to_the_fences_they_need() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = fmt(GstageMode::Sv39x4, true);
    let mut t = Table::new(f.clone(), &host).unwrap();
    let four_k = MapOptions {
        max_level: Level::new(0),
        young_dirty: true,
    };
    t.map_with(
        range(0x20_0000, 0x4000),
        Hpa::new(0x4020_0000),
        Attrs::normal(Perms::RW),
        four_k,
    )
    .unwrap();
    host.take_events();
    // Removing write permission from one page: one leaf fence for that page.
    t.protect(range(0x20_1000, 0x1000), Perms::READ).unwrap();
    let flushes: Vec<TlbFlush> = host
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            HostEvent::Flush(fl) => Some(fl),
            _ => None,
        })
        .collect();
    assert_eq!(flushes.len(), 1);
    assert_eq!(
        gpas(
            f.hfence_gvma(flushes[0], VMID, HFENCE_GVMA_MAX_GPAS)
                .unwrap()
        ),
        (vec![0x20_1000 >> 2], 7)
    );
    // Unmapping everything frees the tables: the fence must cover the whole VMID.
    t.unmap(range(0x20_0000, 0x4000)).unwrap();
    let flush = host
        .take_events()
        .into_iter()
        .find_map(|e| match e {
            HostEvent::Flush(fl) => Some(fl),
            _ => None,
        })
        .unwrap();
    assert!(matches!(flush, TlbFlush::Range { tables: true, .. }));
    assert_eq!(
        f.hfence_gvma(flush, VMID, HFENCE_GVMA_MAX_GPAS).unwrap(),
        HfenceGvma::Vmid { rs2: 7 }
    );
}

#[test]
fn without_svvptc_a_leaf_over_an_empty_entry_is_fenced() {
    for svvptc in [false, true] {
        let f = Gstage::new(
            GstageCaps {
                svvptc,
                ..caps(true, true)
            },
            GstageOptions {
                mode: GstageMode::Sv39x4,
                pa_bits: 56,
                leaf_512g: false,
            },
        )
        .unwrap();
        assert_eq!(f.caches_empty_entries(), !svvptc);
        let host = HeapHost::new(BASE, 1 << 20, 4096);
        let mut t = Table::new(f, &host).unwrap();
        host.take_events();
        t.map(
            range(0x3000, 0x1000),
            Hpa::new(0x3000),
            Attrs::normal(Perms::RW),
        )
        .unwrap();
        let fl: Vec<_> = host
            .take_events()
            .into_iter()
            .filter(|e| matches!(e, HostEvent::Flush(_)))
            .collect();
        if svvptc {
            assert!(fl.is_empty());
        } else {
            // One fence, covering the new leaf and the pointers installed above it (address
            // fences may cover only leaves, so a pointer over an invalid entry is a table change).
            match fl.as_slice() {
                [HostEvent::Flush(TlbFlush::Range {
                    start,
                    size,
                    tables: true,
                    ..
                })] => {
                    assert!(start.raw() <= 0x3000 && 0x4000 <= start.raw() + size);
                }
                other => panic!("expected one table fence, got {other:?}"),
            }
        }
    }
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_the_table_unchanged() {
    let host = HeapHost::new(BASE, 1 << 20, 4096);
    let f = Gstage::new(
        caps(true, true),
        GstageOptions {
            mode: GstageMode::Sv39x4,
            pa_bits: 40,
            leaf_512g: false,
        },
    )
    .unwrap();
    let mut t = Table::new(f, &host).unwrap();
    let rw = Attrs::normal(Perms::RW);
    t.map(range(0x20_0000, 0x20_0000), Hpa::new(0x4000_0000), rw)
        .unwrap();
    let snapshot = |t: &Table<Gstage, &HeapHost>| (t.stats(), host.outstanding_bytes());
    let before = snapshot(&t);
    let image = tree(&host, t.root(), 3);
    let l = |n| Level::new(n).unwrap();
    let mut cases: Vec<(Result<(), Error>, Error)> = vec![
        (
            t.map(range(0x1800, 0x1000), Hpa::new(0), rw),
            Error::UnalignedGpa {
                value: 0x1800,
                align: 4096,
            },
        ),
        (
            t.map(range(0x1000, 0x800), Hpa::new(0), rw),
            Error::UnalignedGpa {
                value: 0x800,
                align: 4096,
            },
        ),
        (
            t.map(range(0x1000, 0x1000), Hpa::new(0x10), rw),
            Error::UnalignedHpa {
                hpa: Hpa::new(0x10),
                align: 4096,
            },
        ),
        (
            t.map(range((1 << 41) - 0x1000, 0x2000), Hpa::new(0), rw),
            Error::GpaTooWide {
                gpa: Gpa::new((1 << 41) + 0xfff),
                bits: 41,
            },
        ),
        (
            t.map(range(0, 0x2000), Hpa::new((1 << 40) - 0x1000), rw),
            Error::HpaTooWide {
                hpa: Hpa::new((1 << 40) + 0xfff),
                bits: 40,
            },
        ),
        (
            t.map_with(
                range(0, 0x1000),
                Hpa::new(0),
                rw,
                MapOptions {
                    max_level: Level::new(3),
                    young_dirty: true,
                },
            ),
            Error::InvalidLevel { level: l(3) },
        ),
        (
            t.map(range(0x1f_f000, 0x2000), Hpa::new(0), rw),
            Error::AlreadyMapped {
                gpa: Gpa::new(0x20_0000),
            },
        ),
        (
            t.split(range(0, 0x1000), l(3)),
            Error::InvalidLevel { level: l(3) },
        ),
        (
            t.unmap(range(u64::MAX - 0xfff, 0x1000)),
            Error::GpaTooWide {
                gpa: Gpa::new(u64::MAX),
                bits: 41,
            },
        ),
        (
            t.protect(range(0x20_0000, 0x1000), Perms::WRITE),
            Error::UnsupportedAttrs {
                attrs: Attrs::normal(Perms::WRITE),
            },
        ),
        (
            t.collapse(range(0x20_0800, 0x1000)),
            Error::UnalignedGpa {
                value: 0x20_0800,
                align: 4096,
            },
        ),
    ];
    cases.push((
        t.query(Gpa::new(1 << 41)).map(|_| ()),
        Error::GpaTooWide {
            gpa: Gpa::new(1 << 41),
            bits: 41,
        },
    ));
    for (got, want) in cases {
        assert_eq!(got, Err(want));
    }
    assert_eq!(snapshot(&t), before);
    assert_eq!(tree(&host, t.root(), 3), image);
    // Out of memory in the middle of a split: nothing changed, nothing leaked.
    host.fail_nth_alloc(0);
    assert_eq!(
        t.protect(range(0x20_1000, 0x1000), Perms::READ),
        Err(Error::OutOfMemory { size: 4096 })
    );
    assert!(host.clear_failure(), "the injected failure fired");
    assert_eq!(snapshot(&t), before);
    assert_eq!(tree(&host, t.root(), 3), image);
}

#[test]
fn a_full_physical_window_is_an_error_not_a_panic() {
    // Room for the 16 KiB root and 12 tables of 4 KiB: a 1 GiB map of 4 KiB leaves needs 513.
    let host = HeapHost::new(BASE, 64 << 10, 4096);
    let mut t = Table::new(fmt(GstageMode::Sv39x4, true), &host).unwrap();
    let r = t.map_with(
        range(0, 1 << 30),
        Hpa::new(0),
        Attrs::normal(Perms::RW),
        MapOptions {
            max_level: Level::new(0),
            young_dirty: true,
        },
    );
    assert_eq!(r, Err(Error::OutOfMemory { size: 4096 }));
    assert_eq!(
        (host.outstanding_tables(), t.stats().total_leaves()),
        (1, 0)
    );
    // A 16 KiB root does not fit in a smaller window either.
    let tiny = HeapHost::new(BASE, 64 << 10, 4096);
    let mut hold = Vec::new();
    while let Some(pa) = tiny.alloc_table(4096) {
        hold.push(pa);
    }
    assert!(matches!(
        Table::new(fmt(GstageMode::Sv39x4, true), &tiny),
        Err(Error::OutOfMemory { size: 16384 })
    ));
    for pa in hold {
        // SAFETY: `pa` came from `tiny.alloc_table(4096)` and is referenced by no table.
        unsafe { tiny.free_table(pa, 4096) };
    }
    assert_eq!(tiny.outstanding_tables(), 0);
}

#[test]
fn teardown_frees_every_table_including_the_16k_root() {
    let host = HeapHost::new(BASE, 4 << 20, 4096);
    let mut t = Table::new(fmt(GstageMode::Sv57x4, true), &host).unwrap();
    let four_k = MapOptions {
        max_level: Level::new(0),
        young_dirty: true,
    };
    for gpa in [0u64, 1 << 40, 1 << 58, (1 << 59) - (4 << 20)] {
        t.map_with(
            range(gpa, 4 << 20),
            Hpa::new(0x1_0000_0000),
            Attrs::normal(Perms::RW),
            four_k,
        )
        .unwrap();
    }
    t.unmap(range(1 << 40, 2 << 20)).unwrap();
    drop(t);
    let mut live = std::collections::BTreeMap::new();
    let mut sizes = std::collections::BTreeSet::new();
    for e in host.take_events() {
        match e {
            HostEvent::Alloc(pa, size) => {
                assert!(live.insert(pa, size).is_none());
                sizes.insert(size);
            }
            HostEvent::Free(pa, size) => assert_eq!(live.remove(&pa), Some(size)),
            _ => {}
        }
    }
    assert!(live.is_empty(), "never freed: {live:?}");
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), vec![4096, 16384]);
    assert_eq!(host.outstanding_tables(), 0);
}

#[test]
fn table_image_export_with_the_root_at_a_chosen_16k_aligned_address() {
    let base = 0x2_3450_0000u64;
    let host = HeapHost::new(base, 1 << 20, 4096);
    // Push the root to base + 16 KiB: 16 KiB aligned but not 32 KiB aligned.
    let pad = host.alloc_table(16384).unwrap();
    assert_eq!(pad, Hpa::new(base));
    let f = fmt(GstageMode::Sv48x4, true);
    let mut t = Table::new(f.clone(), &host).unwrap();
    assert_eq!(t.root(), Hpa::new(base + 0x4000));
    // SAFETY: `pad` came from `host.alloc_table(16384)` and no table references it.
    unsafe { host.free_table(pad, 16384) };
    t.map(
        range(0x8000_0000, 0x40_0000),
        Hpa::new(0x2_0000_0000),
        Attrs::normal(Perms::RWX),
    )
    .unwrap();
    t.map(
        range((1 << 50) - 0x1000, 0x1000),
        Hpa::new(0x3000),
        Attrs::normal(Perms::READ),
    )
    .unwrap();
    let hgatp = f.hgatp(t.root(), VMID).unwrap();
    assert_eq!(hgatp & ((1 << 44) - 1), (base + 0x4000) >> 12);
    let img = host.image(t.root());
    let dir = std::env::temp_dir().join(format!("tdp-riscv-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    img.write(&dir.join("gstage")).unwrap();
    let bytes = std::fs::read(dir.join("gstage.bin")).unwrap();
    let meta = std::fs::read_to_string(dir.join("gstage.txt")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(meta.contains(&format!("root={:#x}", base + 0x4000)));
    // The last root entry (GPA bits 49:39 all ones) is a pointer: V only, little-endian.
    let top = img.word(t.root().raw() + 2047 * 8, false).unwrap();
    assert_eq!(top & 0x3ff, 0x001);
    let flat = FlatImage::new(base, bytes);
    let tr = gstage::peek(&flat, hgatp, &wcaps(false), 0x8030_0123, Access::Write).unwrap();
    assert_eq!(
        (tr.hpa, tr.page_size),
        (0x2_0010_0123 + 0x20_0000, 0x20_0000)
    );
    let tr = gstage::peek(&flat, hgatp, &wcaps(false), (1 << 50) - 8, Access::Read).unwrap();
    assert_eq!((tr.hpa, tr.level), (0x3ff8, 0));
}
