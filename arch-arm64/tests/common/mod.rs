//! Test support shared by the arm64 test files: the independent stage-2 walker as an oracle, the
//! model's expectations in walker terms, and a recording host that looks at the tables through
//! the walker at every TLB flush and cache-maintenance call.
//!
//! Nothing here asks the format how it encoded something: addresses, memory kinds and faults come
//! from `tdp_walkers::stage2` (written from the Arm ARM), and the few descriptor fields decoded
//! here are defined again from the Arm ARM.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use tdp_arch_arm64::Stage2;
use tdp_core::testing::{HeapHost, Model};
use tdp_core::{Attrs, Host, Hpa, MemType, Perms, TableMeta, TlbFlush};
use tdp_walkers::stage2::{
    self, Cacheability, DeviceType, Stage2Fault, Stage2MemKind, Stage2Translation,
};
use tdp_walkers::{Access, PhysMem};

/// The host's window, as the walker's physical memory.
pub struct Phys<'a>(pub &'a HeapHost);

impl PhysMem for Phys<'_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.0.read_phys(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.0.write_phys(pa, buf)
    }
}

/// The walker's view of the processor for a configuration: the features the configuration uses.
pub fn walker_caps(fmt: &Stage2) -> stage2::Stage2Caps {
    let c = fmt.caps();
    let o = fmt.options();
    stage2::Stage2Caps {
        pa_range_bits: c.pa_range_bits,
        lpa2: o.lpa2,
        lpa_64k: c.pa_range_bits == 52,
        xnx: o.xnx,
        fwb: o.fwb,
        ha_hd: o.hw_access,
    }
}

/// What the hardware sees at one guest address, for every access kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The output address, if any access translated.
    pub hpa: Option<u64>,
    /// The accesses that translated.
    pub perms: Perms,
    /// The stage-2 memory kind.
    pub mem: Option<Stage2MemKind>,
    /// The SH field as the walker reads it (`None` inside `Some` with DS = 1).
    pub sh: Option<Option<u8>>,
}

impl Seen {
    pub const NONE: Seen = Seen {
        hpa: None,
        perms: Perms::empty(),
        mem: None,
        sh: None,
    };
}

/// The leaf the walker found: base output address, block size, MemAttr, contiguous bit.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LeafSeen {
    pub base: u64,
    pub size: u64,
    pub memattr: u8,
}

/// A walk of every access kind at one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peek {
    pub seen: Seen,
    /// The leaf, when some access translated.
    pub leaf: Option<LeafSeen>,
    /// Every access took a Translation fault (nothing valid maps the address).
    pub translation_fault: bool,
}

/// Walks `gpa` for every access kind with the independent walker (no writes).
///
/// # Panics
/// On an Address size fault, an invalid configuration or a descriptor outside memory: the
/// engine never builds such tables.
pub fn peek(host: &HeapHost, fmt: &Stage2, root: u64, gpa: u64) -> Peek {
    let caps = walker_caps(fmt);
    let vtcr = fmt.vtcr();
    let vttbr = fmt.vttbr(Hpa::new(root), 1).unwrap();
    let mut seen = Seen::NONE;
    let mut leaf = None;
    let mut translation_fault = true;
    for (access, perm) in [
        (Access::Read, Perms::READ),
        (Access::Write, Perms::WRITE),
        (Access::ExecSupervisor, Perms::EXEC_SUPER),
        (Access::ExecUser, Perms::EXEC_USER),
    ] {
        match stage2::peek(&Phys(host), vtcr, vttbr, &caps, gpa, access) {
            Ok(t) => {
                translation_fault = false;
                assert!(
                    seen.hpa.is_none() || seen.hpa == Some(t.pa),
                    "{gpa:#x}: accesses disagree on the output address"
                );
                assert!(!t.contiguous, "{gpa:#x}: contiguous hint set");
                seen.hpa = Some(t.pa);
                seen.perms |= perm;
                seen.mem = Some(t.mem_kind);
                seen.sh = Some(t.sh);
                leaf = Some(leaf_of(&t, gpa));
            }
            Err(Stage2Fault::Permission { .. }) | Err(Stage2Fault::AccessFlag { .. }) => {
                translation_fault = false;
            }
            Err(Stage2Fault::Translation { .. }) => {}
            Err(e) => panic!("stage-2 walk of {gpa:#x} ({access:?}): {e:?}"),
        }
    }
    Peek {
        seen,
        leaf,
        translation_fault,
    }
}

fn leaf_of(t: &Stage2Translation, gpa: u64) -> LeafSeen {
    LeafSeen {
        base: t.pa - (gpa & (t.block_size - 1)),
        size: t.block_size,
        memattr: t.memattr,
    }
}

/// Accesses `gpa` as the hardware would (setting AF / S2AP\[1\] where HA / HD allow); true if it
/// translated.
pub fn access(host: &HeapHost, fmt: &Stage2, root: u64, gpa: u64, write: bool) -> bool {
    let caps = walker_caps(fmt);
    let vttbr = fmt.vttbr(Hpa::new(root), 1).unwrap();
    let a = if write { Access::Write } else { Access::Read };
    match stage2::translate(&mut Phys(host), fmt.vtcr(), vttbr, &caps, gpa, a) {
        Ok(_) => true,
        Err(
            Stage2Fault::Permission { .. }
            | Stage2Fault::AccessFlag { .. }
            | Stage2Fault::Translation { .. },
        ) => false,
        Err(e) => panic!("stage-2 access to {gpa:#x}: {e:?}"),
    }
}

/// The stage-2 memory kind the Arm ARM gives the MemAttr this crate documents for `attrs`.
pub fn expected_kind(attrs: &Attrs, fwb: bool) -> Stage2MemKind {
    let both = |c| Stage2MemKind::Normal { outer: c, inner: c };
    match attrs.mem {
        MemType::WriteBack if fwb && !attrs.ignore_guest_memtype => Stage2MemKind::Stage1,
        MemType::WriteBack => both(Cacheability::WriteBack),
        MemType::WriteCombining => both(Cacheability::NonCacheable),
        MemType::Device => Stage2MemKind::Device(DeviceType::NGnRE),
        MemType::Uncached => Stage2MemKind::Device(DeviceType::NGnRnE),
        m => panic!("{m:?} is never mapped"),
    }
}

/// What the model expects the hardware to see at `gpa`.
pub fn expected(model: &Model, fmt: &Stage2, gpa: u64) -> Seen {
    let o = fmt.options();
    match model.translate(gpa) {
        Some((hpa, attrs)) if !attrs.perms.is_empty() => Seen {
            hpa: Some(hpa),
            perms: attrs.perms,
            mem: Some(expected_kind(&attrs, o.fwb)),
            sh: Some(if o.lpa2 { None } else { Some(0b11) }),
        },
        _ => Seen::NONE,
    }
}

/// The address in a table descriptor, decoded from the Arm ARM layout (not by the format):
/// bits 47:granule; with 64 KiB also OA\[51:48\] from bits 15:12; with DS = 1 bits 49:granule and
/// OA\[51:50\] from bits 9:8.
pub fn table_desc_addr(raw: u64, granule_shift: u32, lpa2: bool) -> u64 {
    let mask = |hi: u32| ((1u64 << (hi + 1)) - 1) & !((1u64 << granule_shift) - 1);
    if granule_shift == 16 {
        (raw & mask(47)) | ((raw >> 12) & 0xf) << 48
    } else if lpa2 {
        (raw & mask(49)) | ((raw >> 8) & 0b11) << 50
    } else {
        raw & mask(47)
    }
}

/// A flush as the recording host saw it.
#[derive(Clone, Debug)]
pub struct FlushRecord {
    pub flush: TlbFlush,
    /// Watched addresses inside the flushed range that took a Translation fault at that moment.
    pub broken: Vec<u64>,
}

impl FlushRecord {
    /// Whether the flush covers `[gpa, gpa + size)`.
    pub fn covers(&self, gpa: u64, size: u64) -> bool {
        match self.flush {
            TlbFlush::All => true,
            TlbFlush::Range { start, size: s, .. } => {
                start.raw() <= gpa && gpa + size <= start.raw() + s
            }
        }
    }
}

/// A host wrapper around a [`HeapHost`] that forwards everything and, at every TLB flush, walks
/// the watched addresses inside the flushed range with the independent walker (during a
/// break-before-make they must take a Translation fault), and at every cache-maintenance call
/// checks that no watched address changed yet.
pub struct Recorder<'a> {
    pub heap: &'a HeapHost,
    pub fmt: Stage2,
    pub root: Cell<u64>,
    /// Addresses to look at in flushes.
    pub watch: RefCell<Vec<u64>>,
    /// What the watched addresses looked like before the current operation.
    pub before: RefCell<Vec<(u64, Peek)>>,
    pub flushes: RefCell<Vec<FlushRecord>>,
    /// Watched addresses that had already changed when cache maintenance was asked for.
    pub cmo_too_late: RefCell<Vec<u64>>,
}

impl<'a> Recorder<'a> {
    pub fn new(heap: &'a HeapHost, fmt: Stage2) -> Recorder<'a> {
        Recorder {
            heap,
            fmt,
            root: Cell::new(0),
            watch: RefCell::new(Vec::new()),
            before: RefCell::new(Vec::new()),
            flushes: RefCell::new(Vec::new()),
            cmo_too_late: RefCell::new(Vec::new()),
        }
    }

    /// Starts an operation: remembers the watched addresses as they are now, clears the logs.
    pub fn begin(&self, watch: &[u64]) {
        *self.watch.borrow_mut() = watch.to_vec();
        let root = self.root.get();
        *self.before.borrow_mut() = watch
            .iter()
            .map(|&g| (g, peek(self.heap, &self.fmt, root, g)))
            .collect();
        self.flushes.borrow_mut().clear();
        self.cmo_too_late.borrow_mut().clear();
    }

    fn check_unchanged(&self) {
        let root = self.root.get();
        for (g, p) in self.before.borrow().iter() {
            if &peek(self.heap, &self.fmt, root, *g) != p {
                self.cmo_too_late.borrow_mut().push(*g);
            }
        }
    }
}

// SAFETY: every method forwards to the `HeapHost`, which upholds the `Host` contract; the
// recording only reads the host's memory through `read_phys`.
unsafe impl Host for Recorder<'_> {
    fn alloc_table(&self, size: usize) -> Option<Hpa> {
        self.heap.alloc_table(size)
    }

    unsafe fn free_table(&self, pa: Hpa, size: usize) {
        // SAFETY: the engine upholds `free_table`'s contract for this host, and so for the heap.
        unsafe { self.heap.free_table(pa, size) }
    }

    fn phys_to_virt(&self, pa: Hpa) -> NonNull<u8> {
        self.heap.phys_to_virt(pa)
    }

    fn meta(&self, pa: Hpa) -> NonNull<TableMeta> {
        self.heap.meta(pa)
    }

    fn flush_tlb(&self, flush: TlbFlush) {
        let root = self.root.get();
        let mut broken = Vec::new();
        if root != 0 {
            for &g in self.watch.borrow().iter() {
                let inside = match flush {
                    TlbFlush::All => true,
                    TlbFlush::Range { start, size, .. } => {
                        g >= start.raw() && g - start.raw() < size
                    }
                };
                if inside && peek(self.heap, &self.fmt, root, g).translation_fault {
                    broken.push(g);
                }
            }
        }
        self.flushes
            .borrow_mut()
            .push(FlushRecord { flush, broken });
        self.heap.flush_tlb(flush);
    }

    fn clean_dcache(&self, hpa: Hpa, size: u64) {
        self.check_unchanged();
        self.heap.clean_dcache(hpa, size);
    }

    fn invalidate_icache(&self, hpa: Hpa, size: u64) {
        self.check_unchanged();
        self.heap.invalidate_icache(hpa, size);
    }
}

/// Checks the TLBI sequence the format plans for `flush` against the Arm ARM operand layouts
/// (written here again): the barriers around it, every operand's fields, a level hint only where
/// the flush names the leaves' level (and the range base aligned to it), and that the ranges the
/// operands describe cover the flushed range (rounded to the granule) and nothing outside it.
pub fn tlbi_covers(fmt: &Stage2, flush: TlbFlush) -> Result<(), String> {
    use tdp_arch_arm64::TlbiOp::*;
    let ops: Vec<tdp_arch_arm64::TlbiOp> = fmt.tlbi(flush).collect();
    if ops.get(1) == Some(&Vmalls12e1is) {
        return if ops == [DsbIshst, Vmalls12e1is, DsbIsh, Isb] {
            Ok(())
        } else {
            Err(format!("bad whole-VMID sequence {ops:?}"))
        };
    }
    let TlbFlush::Range {
        start,
        size,
        level,
        tables,
    } = flush
    else {
        return Err("TlbFlush::All without VMALLS12E1IS".into());
    };
    let n = ops.len();
    if n < 5 || ops[0] != DsbIshst || ops[n - 4..] != [DsbIsh, Vmalle1is, DsbIsh, Isb] {
        return Err(format!("bad by-IPA sequence {ops:?}"));
    }
    let o = fmt.options();
    let c = fmt.caps();
    let g = fmt.granule().shift();
    let stride = g - 3;
    let page = 1u64 << g;
    let tg = match g {
        12 => 0b01,
        14 => 0b10,
        _ => 0b11,
    };
    let lo = start.raw() & !(page - 1);
    let hi = (start.raw() + size + page - 1) & !(page - 1);
    let hint = level.filter(|_| !tables).map(|l| 3 - u64::from(l.get()));
    let level_size = |arm: u64| 1u64 << (g as u64 + u64::from(stride) * (3 - arm));
    let mut spans = Vec::new();
    for op in &ops[1..n - 4] {
        match *op {
            Ipas2e1is(xt) => {
                // NS 63, RES0 62:48, TTL 47:44, IPA[55:52] 43:40 (RES0 without FEAT_D128),
                // IPA[51:48] 39:36, IPA[47:12] 35:0.
                if xt >> 48 != 0 || (xt >> 40) & 0xf != 0 {
                    return Err(format!("RES0 bits set in IPAS2E1IS {xt:#x}"));
                }
                let ipa = (xt & ((1 << 40) - 1)) << 12;
                let ttl = (xt >> 44) & 0xf;
                if ttl != 0 {
                    if !c.ttl {
                        return Err(format!("TTL without FEAT_TTL in {xt:#x}"));
                    }
                    if ttl >> 2 != tg || Some(ttl & 3) != hint {
                        return Err(format!("wrong TTL {ttl:#b} for {flush:?}"));
                    }
                }
                // The instruction invalidates whatever entry translates the IPA: when the flush
                // says every cached leaf is of one level, that whole leaf; otherwise one page.
                let cover = hint.map_or(page, level_size);
                let base = ipa & !(cover - 1);
                spans.push((base, base + cover));
            }
            Ripas2e1is(xt) => {
                if !c.tlbi_range {
                    return Err("RIPAS2E1IS without FEAT_TLBIRANGE".into());
                }
                // NS 63, RES0 62:48, TG 47:46, SCALE 45:44, NUM 43:39, TTL 38:37, BaseADDR 36:0.
                if xt >> 48 != 0 || (xt >> 46) & 0b11 != tg {
                    return Err(format!("bad RIPAS2E1IS TG/RES0 {xt:#x}"));
                }
                let scale = (xt >> 44) & 0b11;
                let num = (xt >> 39) & 0x1f;
                let ttl = (xt >> 37) & 0b11;
                let unit = if o.lpa2 { 16 } else { g };
                let base = (xt & ((1 << 37) - 1)) << unit;
                let pages = (num + 1) << (5 * scale + 1);
                if ttl != 0 {
                    if Some(ttl) != hint {
                        return Err(format!("wrong range TTL {ttl} for {flush:?}"));
                    }
                    if base & (level_size(ttl) - 1) != 0 {
                        return Err(format!("range base {base:#x} not aligned to its TTL level"));
                    }
                }
                spans.push((base, base + (pages << g)));
            }
            other => return Err(format!("unexpected {other:?} in the by-IPA body")),
        }
    }
    spans.sort_unstable();
    let mut at = lo;
    for (a, b) in spans {
        if a < lo || b > hi {
            return Err(format!("[{a:#x}, {b:#x}) outside [{lo:#x}, {hi:#x})"));
        }
        if a > at {
            return Err(format!("[{at:#x}, {a:#x}) not invalidated"));
        }
        at = at.max(b);
    }
    if at < hi {
        return Err(format!("[{at:#x}, {hi:#x}) not invalidated"));
    }
    Ok(())
}
