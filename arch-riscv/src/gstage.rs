//! RISC-V G-stage (guest-physical → supervisor-physical) translation, RV64.
//!
//! Sources: *The RISC-V Instruction Set Manual, Volume II: Privileged Architecture* (20211203 =
//! v1.12 and the current `riscv-isa-manual` sources), cited by section title:
//! - H chapter, "Hypervisor Guest Address Translation and Protection (`hgatp`) Register": MODE
//!   63:60 (Bare 0, Sv39x4 8, Sv48x4 9, Sv57x4 10), VMID 57:44 (VMIDMAX = 14 on RV64), PPN 43:0,
//!   "the root page table is 16 KiB and must be aligned to a 16-KiB boundary" (PPN[1:0] read as 0);
//! - H chapter, "Two-Stage Address Translation" → "Guest Physical Address Translation": the
//!   x4 schemes (GPA widths 41/50/59, 2 extra root index bits, a 2048-entry root), "for G-stage
//!   address translation, all memory accesses (including those made to access data structures
//!   for VS-stage address translation) are considered to be user-level accesses, as though executed
//!   in U-mode" (so every leaf needs U = 1), and "the G bit … is reserved … software should set it
//!   to zero";
//! - Supervisor chapter, "Sv32" → "Addressing and Memory Protection" (bits 9:0: V, R, W, X, U, G,
//!   A, D, RSW; the R/W/X encodings with W-without-R reserved and R = W = X = 0 a pointer; D, A
//!   and U reserved in non-leaf PTEs; the two A/D schemes), "Sv39" (PPN 53:10, bits 60:54
//!   reserved), "Sv48", "Sv57";
//! - "Svpbmt" (bits 62:61: 0 PMA, 1 NC, 2 IO, 3 reserved; for two-stage translation a non-zero
//!   VS-stage PBMT overrides the G-stage result, so the hypervisor cannot force a type);
//! - "Svadu" (hardware A/D updating; for G-stage it is enabled by `menvcfg.ADUE`) and "Svvptc"
//!   (a PTE going from invalid to valid becomes visible without an `SFENCE`/`HFENCE`);
//! - H chapter, "Hypervisor Memory-Management Fence Instructions" (`HFENCE.GVMA` is "similar to
//!   SFENCE.VMA"; rs1 = guest physical address shifted right by 2 bits, rs2 = VMID) and
//!   Supervisor chapter, "Supervisor Memory-Management Fence Instruction" (an address-specific
//!   fence orders only *leaf* PTE accesses; changes to non-leaf PTEs need rs1 = x0).
//!
//! | bit(s) | hardware meaning | here |
//! |---|---|---|
//! | 0 | V, valid | every leaf and pointer; 0 in empty and frozen entries |
//! | 1 / 2 / 3 | R / W / X | permissions; all zero = pointer to the next level; W without R reserved |
//! | 4 | U, user | 1 in every leaf (G-stage accesses are user accesses); 0 in pointers (reserved) |
//! | 5 | G | 0 (reserved in G-stage PTEs) |
//! | 6 / 7 | A / D, accessed / dirty | leaves only; preset by `young_dirty`; set by hardware with Svadu |
//! | 8 | RSW, ignored by hardware | frozen marker (with V = 0) |
//! | 9 | RSW, ignored by hardware | `MemType::Device` on an IO leaf (software record, see below) |
//! | 53:10 | PPN | output address / next table |
//! | 60:54 | reserved | 0 |
//! | 62:61 | PBMT (Svpbmt) | PMA 0 = WriteBack, NC 1 = WriteCombining, IO 2 = Uncached and Device |
//! | 63 | N (Svnapot) | 0 (no NAPOT leaves) |
//!
//! **Memory types.** Svpbmt NC is "non-cacheable, idempotent, weakly-ordered, main memory",
//! which is what `WriteCombining` (x86 WC, arm64 Normal-NC, Linux `pgprot_writecombine`) asks
//! for; IO is "non-cacheable, non-idempotent, strongly-ordered (I/O ordering), I/O", which both
//! `Uncached` (x86 UC, Linux `pgprot_noncached`) and `Device` ask for. The hardware cannot tell
//! the last two apart, so a `Device` leaf also carries RSW bit 9, which hardware ignores; that
//! keeps `leaf_attrs(make_leaf(attrs)) == attrs` (the trait contract) and stops `collapse` from
//! merging `Uncached` with `Device` leaves. Without Svpbmt (or with `menvcfg.PBMTE` = 0) bits
//! 62:61 are reserved and only `WriteBack` is accepted. `WriteThrough`/`WriteProtect` have no
//! encoding; `ignore_guest_memtype` cannot be honoured (VS-stage PBMT overrides G-stage PBMT).

use tdp_core::{
    AdModel, AdState, Attrs, ByteOrder, EntryKind, Error, Geometry, Hpa, Level, MemType, Perms,
    PteFormat, TlbFlush,
};

const V: u64 = 1 << 0;
const R: u64 = 1 << 1;
const W: u64 = 1 << 2;
const X: u64 = 1 << 3;
const U: u64 = 1 << 4;
const A: u64 = 1 << 6;
const D: u64 = 1 << 7;
/// RSW bit 8: marks the frozen value (V = 0, so hardware never uses it).
const RSW_FROZEN: u64 = 1 << 8;
/// RSW bit 9: the IO leaf was mapped as `MemType::Device` (software record only).
const RSW_DEVICE: u64 = 1 << 9;
const PPN_SHIFT: u32 = 10;
/// PPN, bits 53:10 (44 bits).
const PPN_MASK: u64 = ((1 << 44) - 1) << PPN_SHIFT;
const PBMT_SHIFT: u32 = 61;
const PBMT_MASK: u64 = 3 << PBMT_SHIFT;
const PBMT_PMA: u64 = 0;
const PBMT_NC: u64 = 1;
const PBMT_IO: u64 = 2;

/// The frozen value: V = 0 with RSW bit 8, no other bit (hardware ignores an invalid PTE).
const FROZEN: u64 = RSW_FROZEN;

const PAGE_SHIFT: u8 = 12;
/// The root of every x4 scheme is 16 KiB (2048 entries) and 16 KiB aligned.
const ROOT_ALIGN: u64 = 16 * 1024;
/// RV64 supervisor physical addresses: PPN (44 bits) << 12.
const MAX_PA_BITS: u8 = 56;
const MIN_PA_BITS: u8 = 32;
/// VMIDMAX for RV64.
const VMID_MAX_BITS: u8 = 14;

/// KVM's threshold (`kvm_riscv_local_hfence_gvma_vmid_gpa`: `PTRS_PER_PTE`): a range needing more
/// address-specific fences than this is fenced for the whole VMID instead.
pub const HFENCE_GVMA_MAX_GPAS: u64 = 512;

/// The G-stage translation scheme (`hgatp.MODE`), ordered by size.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GstageMode {
    /// MODE 8: 3 levels, 41-bit guest-physical addresses.
    Sv39x4,
    /// MODE 9: 4 levels, 50-bit guest-physical addresses.
    Sv48x4,
    /// MODE 10: 5 levels, 59-bit guest-physical addresses.
    Sv57x4,
}

impl GstageMode {
    /// The scheme for an RV64 `hgatp.MODE` value (as read back when probing: KVM writes Sv57x4,
    /// Sv48x4, Sv39x4 in turn and keeps the first that sticks).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for Bare (0), Sv32x4 (1, RV32 only) and the reserved values.
    pub const fn from_hgatp_mode(mode: u64) -> Result<GstageMode, Error> {
        match mode {
            8 => Ok(GstageMode::Sv39x4),
            9 => Ok(GstageMode::Sv48x4),
            10 => Ok(GstageMode::Sv57x4),
            _ => Err(Error::InvalidConfig {
                what: "hgatp.MODE (RV64 paged modes are 8, 9, 10)",
                value: mode,
            }),
        }
    }

    /// The `hgatp.MODE` encoding.
    pub const fn hgatp_mode(self) -> u64 {
        match self {
            GstageMode::Sv39x4 => 8,
            GstageMode::Sv48x4 => 9,
            GstageMode::Sv57x4 => 10,
        }
    }

    /// Number of levels.
    pub const fn levels(self) -> u8 {
        match self {
            GstageMode::Sv39x4 => 3,
            GstageMode::Sv48x4 => 4,
            GstageMode::Sv57x4 => 5,
        }
    }

    /// Guest-physical address width: 12 + 9 × levels + 2 (41, 50, 59).
    pub const fn gpa_bits(self) -> u8 {
        PAGE_SHIFT + 9 * self.levels() + 2
    }
}

/// What the hart implements and has in effect for G-stage translation.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct GstageCaps {
    /// The largest scheme `hgatp` accepts (smaller ones are then supported too).
    pub max_mode: GstageMode,
    /// VMIDLEN: the number of `hgatp.VMID` bits that stick (0..=14).
    pub vmid_bits: u8,
    /// Hardware A/D updating is in effect for G-stage: Svadu with `menvcfg.ADUE` = 1. False is
    /// Svade: a leaf with A clear, or D clear on a store, raises a guest-page fault.
    pub svadu: bool,
    /// Svpbmt with `menvcfg.PBMTE` = 1: PTE bits 62:61 select the memory type.
    pub svpbmt: bool,
    /// Svvptc: a leaf installed over an invalid entry needs no fence.
    pub svvptc: bool,
}

/// What the hypervisor chooses for one G-stage table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct GstageOptions {
    /// The scheme.
    pub mode: GstageMode,
    /// Host physical address width, 32..=56 (the output width of the table).
    pub pa_bits: u8,
    /// Allow 512 GiB leaves (level 3: the root of Sv48x4, a table level of Sv57x4). KVM does not
    /// use them; Sv39x4 has no such level.
    pub leaf_512g: bool,
}

/// The RISC-V G-stage format for one configuration.
#[derive(Clone, Debug)]
pub struct Gstage {
    geo: Geometry,
    caps: GstageCaps,
    opts: GstageOptions,
}

/// The `HFENCE.GVMA` instructions one [`TlbFlush`] needs, for one VMID.
///
/// The fence orders and invalidates only on the hart that executes it: a hypervisor runs the
/// same sequence on every hart that may hold translations of the VMID (IPIs or SBI remote fences).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HfenceGvma {
    /// One `HFENCE.GVMA x0, rs2`: every G-stage translation of the VMID held in `rs2`. (With
    /// VMID 0, `rs2` must still be a register holding 0: `x0` would fence every VMID, which is
    /// correct but wider.)
    Vmid {
        /// The VMID.
        rs2: u64,
    },
    /// One `HFENCE.GVMA rs1, rs2` per value of `rs1`.
    Gpas {
        /// The guest physical addresses, shifted right by 2.
        rs1: GpaFences,
        /// The VMID.
        rs2: u64,
    },
}

/// The `rs1` operands (guest physical address >> 2) of a run of address-specific fences, one per
/// page of the flushed level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpaFences {
    next: u64,
    step: u64,
    left: u64,
}

impl GpaFences {
    /// The `rs1` of the first fence.
    pub fn first(&self) -> u64 {
        self.next
    }

    /// The difference between consecutive `rs1` values (page size >> 2).
    pub fn step(&self) -> u64 {
        self.step
    }
}

impl Iterator for GpaFences {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        let v = self.next;
        self.left -= 1;
        self.next = self.next.wrapping_add(self.step);
        Some(v)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.left).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl ExactSizeIterator for GpaFences {}

impl Gstage {
    /// A G-stage configuration.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the mode is larger than `caps.max_mode`, VMIDLEN exceeds 14,
    /// `pa_bits` is outside 32..=56, or 512 GiB leaves are asked for with Sv39x4.
    pub fn new(caps: GstageCaps, opts: GstageOptions) -> Result<Gstage, Error> {
        let bad = |what, value: u64| Err(Error::InvalidConfig { what, value });
        if opts.mode > caps.max_mode {
            return bad(
                "hgatp.MODE not supported by the hart",
                opts.mode.hgatp_mode(),
            );
        }
        if caps.vmid_bits > VMID_MAX_BITS {
            return bad("VMIDLEN (at most 14 on RV64)", caps.vmid_bits.into());
        }
        if !(MIN_PA_BITS..=MAX_PA_BITS).contains(&opts.pa_bits) {
            return bad("physical address width (32..=56)", opts.pa_bits.into());
        }
        if opts.leaf_512g && opts.mode == GstageMode::Sv39x4 {
            return bad("512 GiB leaves without a level 3 (Sv39x4)", 3);
        }
        let levels = opts.mode.levels() as usize;
        let mut bits = [9u8; 5];
        bits[levels - 1] = 11;
        let leaves = if opts.leaf_512g { 0b1111 } else { 0b0111 };
        let geo = Geometry::new(
            PAGE_SHIFT,
            &bits[..levels],
            leaves,
            opts.mode.gpa_bits(),
            opts.pa_bits,
        )?;
        Ok(Gstage { geo, caps, opts })
    }

    /// The capabilities this format was built with.
    pub fn caps(&self) -> GstageCaps {
        self.caps
    }

    /// The options this format was built with.
    pub fn options(&self) -> GstageOptions {
        self.opts
    }

    fn check_vmid(&self, vmid: u16) -> Result<u64, Error> {
        if u64::from(vmid) >> self.caps.vmid_bits != 0 {
            return Err(Error::InvalidConfig {
                what: "VMID wider than VMIDLEN",
                value: vmid.into(),
            });
        }
        Ok(vmid.into())
    }

    /// The `hgatp` value for a table whose root is at `root`, tagged with `vmid`: MODE in bits
    /// 63:60, VMID in 57:44, the root's PPN in 43:0.
    ///
    /// # Errors
    /// [`Error::UnalignedHpa`] if `root` is not 16 KiB aligned, [`Error::HpaTooWide`] if it is
    /// beyond the physical address width, [`Error::InvalidConfig`] if `vmid` does not fit in
    /// VMIDLEN bits.
    pub fn hgatp(&self, root: Hpa, vmid: u16) -> Result<u64, Error> {
        if !root.is_aligned(ROOT_ALIGN) {
            return Err(Error::UnalignedHpa {
                hpa: root,
                align: ROOT_ALIGN,
            });
        }
        if root.raw() >> self.opts.pa_bits != 0 {
            return Err(Error::HpaTooWide {
                hpa: root,
                bits: self.opts.pa_bits,
            });
        }
        let vmid = self.check_vmid(vmid)?;
        Ok(self.opts.mode.hgatp_mode() << 60 | vmid << 44 | root.raw() >> 12)
    }

    /// The `HFENCE.GVMA` operands that carry out `flush` for `vmid`.
    ///
    /// - [`TlbFlush::All`], and any range in which a table entry changed (`tables`): one
    ///   whole-VMID fence, because an address-specific fence is only guaranteed for leaf PTEs.
    /// - A range of leaves of one level: one fence per page of that level (the address aligned
    ///   down to the page), a superpage being matched by any address inside it.
    /// - A range of leaves of mixed levels (`level: None`): one fence per 4 KiB page, which
    ///   reaches every cached leaf of any size.
    /// - More than `max_gpas` fences ([`HFENCE_GVMA_MAX_GPAS`] is KVM's value): one whole-VMID
    ///   fence instead. An empty range needs no fence (`Gpas` with no element).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `vmid` does not fit in VMIDLEN bits, [`Error::InvalidLevel`] if
    /// the range names a level this geometry does not have.
    pub fn hfence_gvma(
        &self,
        flush: TlbFlush,
        vmid: u16,
        max_gpas: u64,
    ) -> Result<HfenceGvma, Error> {
        let rs2 = self.check_vmid(vmid)?;
        let (start, size, level) = match flush {
            TlbFlush::All | TlbFlush::Range { tables: true, .. } => {
                return Ok(HfenceGvma::Vmid { rs2 })
            }
            TlbFlush::Range {
                start,
                size,
                level,
                tables: false,
            } => (start.raw(), size, level),
        };
        let stride = match level {
            Some(l) if self.geo.has_level(l) => self.geo.level_size(l),
            Some(l) => return Err(Error::InvalidLevel { level: l }),
            None => self.geo.page_size(),
        };
        let first = start & !(stride - 1);
        let end = u128::from(start) + u128::from(size);
        let count = if size == 0 {
            0
        } else {
            (end - u128::from(first)).div_ceil(u128::from(stride))
        };
        if count > u128::from(max_gpas) {
            return Ok(HfenceGvma::Vmid { rs2 });
        }
        Ok(HfenceGvma::Gpas {
            rs1: GpaFences {
                next: first >> 2,
                step: stride >> 2,
                left: count as u64,
            },
            rs2,
        })
    }

    fn perm_bits(perms: Perms) -> u64 {
        let mut v = 0;
        if perms.contains(Perms::READ) {
            v |= R;
        }
        if perms.contains(Perms::WRITE) {
            v |= W;
        }
        if perms.intersects(Perms::EXEC) {
            v |= X;
        }
        v
    }

    fn ppn_addr(raw: u64) -> u64 {
        ((raw & PPN_MASK) >> PPN_SHIFT) << PAGE_SHIFT
    }

    fn addr_ppn(pa: u64) -> u64 {
        ((pa >> PAGE_SHIFT) << PPN_SHIFT) & PPN_MASK
    }
}

impl PteFormat for Gstage {
    const BYTE_ORDER: ByteOrder = ByteOrder::Little;

    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline(always)]
    fn empty(&self, _level: Level) -> u64 {
        0
    }

    fn frozen(&self, _level: Level) -> u64 {
        FROZEN
    }

    fn check_attrs(&self, attrs: &Attrs) -> Result<(), Error> {
        let p = attrs.perms;
        let exec = p & Perms::EXEC;
        // V = 1 with R = W = X = 0 is a pointer: a no-access leaf has no encoding.
        let no_access = p.is_empty();
        // R = 0, W = 1 is reserved.
        let write_without_read = p.contains(Perms::WRITE) && !p.contains(Perms::READ);
        // One X bit; every G-stage access is a user-level access.
        let split_exec = !exec.is_empty() && exec != Perms::EXEC;
        let mem_ok = match attrs.mem {
            MemType::WriteBack => true,
            MemType::WriteCombining | MemType::Uncached | MemType::Device => self.caps.svpbmt,
            MemType::WriteThrough | MemType::WriteProtect => false,
        };
        if no_access || write_without_read || split_exec || !mem_ok || attrs.ignore_guest_memtype {
            return Err(Error::UnsupportedAttrs { attrs: *attrs });
        }
        Ok(())
    }

    #[inline]
    fn leaf_addr_bits(&self, hpa: Hpa, _level: Level) -> u64 {
        Self::addr_ppn(hpa.raw())
    }

    #[inline]
    fn make_leaf(&self, hpa: Hpa, _level: Level, attrs: &Attrs, young_dirty: bool) -> u64 {
        let mut v = V | U | Self::perm_bits(attrs.perms) | Self::addr_ppn(hpa.raw());
        v |= match attrs.mem {
            MemType::WriteCombining => PBMT_NC << PBMT_SHIFT,
            MemType::Uncached => PBMT_IO << PBMT_SHIFT,
            MemType::Device => PBMT_IO << PBMT_SHIFT | RSW_DEVICE,
            _ => PBMT_PMA << PBMT_SHIFT,
        };
        if young_dirty {
            v |= A;
            if attrs.perms.contains(Perms::WRITE) {
                v |= D;
            }
        }
        v
    }

    #[inline]
    fn make_table(&self, child: Hpa, _level: Level) -> u64 {
        // A pointer: V only; D, A, U are reserved in non-leaf PTEs.
        V | Self::addr_ppn(child.raw())
    }

    #[inline]
    fn split_child(&self, huge: u64, level: Level, index: usize) -> u64 {
        let child_level = Level::new(level.get().saturating_sub(1)).unwrap_or(Level::LEAF);
        let step = self.geo.level_size(child_level);
        let addr = Self::ppn_addr(huge) + index as u64 * step;
        (huge & !PPN_MASK) | Self::addr_ppn(addr)
    }

    #[inline]
    fn make_huge(&self, child: u64, _level: Level, ad: u64) -> u64 {
        // Leaves look the same at every level: only the A/D union changes.
        (child & !(A | D)) | (ad & (A | D))
    }

    #[inline]
    fn with_perms(&self, raw: u64, _level: Level, perms: Perms) -> u64 {
        (raw & !(R | W | X)) | Self::perm_bits(perms)
    }

    #[inline(always)]
    fn classify(&self, raw: u64, level: Level) -> EntryKind {
        if raw & V == 0 {
            return match raw {
                0 => EntryKind::Empty,
                FROZEN => EntryKind::Frozen,
                _ => EntryKind::Other,
            };
        }
        if raw & (R | W) == W {
            // Reserved encoding: a guest-page fault to hardware, nothing the engine built.
            EntryKind::Other
        } else if raw & (R | X) != 0 {
            EntryKind::Leaf
        } else if level.get() == 0 {
            // A pointer at level 0 faults.
            EntryKind::Other
        } else {
            EntryKind::Table
        }
    }

    #[inline(always)]
    fn table_addr(&self, raw: u64, _level: Level) -> Hpa {
        Hpa::new(Self::ppn_addr(raw))
    }

    #[inline]
    fn leaf_addr(&self, raw: u64, level: Level) -> Hpa {
        Hpa::new(Self::ppn_addr(raw) & !(self.geo.level_size(level) - 1))
    }

    fn leaf_attrs(&self, raw: u64, _level: Level) -> Attrs {
        let mut perms = Perms::empty();
        if raw & R != 0 {
            perms |= Perms::READ;
        }
        if raw & W != 0 {
            perms |= Perms::WRITE;
        }
        if raw & X != 0 {
            perms |= Perms::EXEC;
        }
        let mem = match (raw & PBMT_MASK) >> PBMT_SHIFT {
            PBMT_PMA => MemType::WriteBack,
            PBMT_NC => MemType::WriteCombining,
            _ if raw & RSW_DEVICE != 0 => MemType::Device,
            // IO, and the reserved value 3 (never built).
            _ => MemType::Uncached,
        };
        Attrs {
            perms,
            mem,
            ignore_guest_memtype: false,
        }
    }

    fn ad_state(&self, raw: u64, _level: Level) -> AdState {
        AdState {
            accessed: Some(raw & A != 0),
            dirty: Some(raw & D != 0),
        }
    }

    #[inline]
    fn ad_bits(&self, raw: u64, _level: Level) -> u64 {
        raw & (A | D)
    }

    #[inline]
    fn leaf_key(&self, raw: u64, _level: Level) -> u64 {
        raw & !(PPN_MASK | A | D)
    }

    fn ad_model(&self) -> AdModel {
        if self.caps.svadu {
            AdModel::Hardware
        } else {
            AdModel::Software
        }
    }

    /// With Svadu, hardware sets A in a leaf it uses and D in a writable leaf it stores through
    /// (atomically, only in leaves: A/D are reserved in pointers). With Svade it sets nothing.
    #[inline(always)]
    fn volatile_bits(&self, raw: u64, level: Level) -> u64 {
        if !self.caps.svadu || self.classify(raw, level) != EntryKind::Leaf {
            return 0;
        }
        let mut v = !raw & A;
        if raw & W != 0 {
            v |= !raw & D;
        }
        v
    }

    /// Without Svvptc a hart may cache an invalid PTE, so a leaf installed over an empty entry
    /// needs a fence too.
    #[inline]
    fn caches_empty_entries(&self) -> bool {
        !self.caps.svvptc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> GstageCaps {
        GstageCaps {
            max_mode: GstageMode::Sv57x4,
            vmid_bits: 14,
            svadu: true,
            svpbmt: true,
            svvptc: false,
        }
    }

    #[test]
    fn root_is_2048_entries_of_16_kib_in_every_mode() {
        for (mode, levels, ia) in [
            (GstageMode::Sv39x4, 3, 41),
            (GstageMode::Sv48x4, 4, 50),
            (GstageMode::Sv57x4, 5, 59),
        ] {
            let g = Gstage::new(
                caps(),
                GstageOptions {
                    mode,
                    pa_bits: 56,
                    leaf_512g: false,
                },
            )
            .unwrap();
            let geo = g.geometry();
            assert_eq!((geo.levels(), geo.ia_bits()), (levels, ia));
            assert_eq!(geo.table_size(geo.root_level()), 16384);
            assert_eq!(geo.entries(geo.root_level()), 2048);
            assert_eq!(geo.leaf_mask(), 0b111);
        }
    }

    #[test]
    fn frozen_is_not_valid_and_classifies_as_frozen_everywhere() {
        let g = Gstage::new(
            caps(),
            GstageOptions {
                mode: GstageMode::Sv48x4,
                pa_bits: 56,
                leaf_512g: true,
            },
        )
        .unwrap();
        assert_eq!(g.frozen(Level::LEAF) & V, 0);
        for l in 0..4 {
            assert_eq!(
                g.classify(g.frozen(Level::new(l).unwrap()), Level::new(l).unwrap()),
                EntryKind::Frozen
            );
        }
    }
}
