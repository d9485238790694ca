//! Stage-2 descriptors: the [`PteFormat`] of [`Stage2`].
//!
//! Bits (Arm ARM DDI 0487, chapter D8 "The AArch64 Virtual Memory System Architecture", by section
//! title since numbers move between editions: "Translation table descriptor formats" (D8.3 in
//! recent editions) for table, block and page descriptors, the output-address fields with FEAT_LPA
//! and FEAT_LPA2, and the IGNORED software bits 58:55; "Stage 2 data access permissions" (S2AP) and
//! "Stage 2 execute-never" (XN, FEAT_XNX); "Hardware updates to the translation tables" (AF and
//! DBM with FEAT_HAFDBS); "Stage 2 memory type and Cacheability attributes when FEAT_S2FWB is
//! disabled / enabled" for MemAttr):
//!
//! | bit(s) | hardware meaning | here |
//! |---|---|---|
//! | 0 | valid | set in every table, block and page descriptor |
//! | 1 | 1 = table (L0..L2) or page (L3); 0 = block | page at engine level 0, block above |
//! | 5:2 | MemAttr (leaf) | see the MemAttr table below |
//! | 6 / 7 | S2AP\[0\] read / S2AP\[1\] write | READ; S2AP\[1\] is the dirty state (below) |
//! | 9:8 | SH (leaf; 0b11 inner shareable). With DS = 1 (LPA2): OA\[51:50\], shareability from VTCR_EL2.SH0 | 0b11, or OA\[51:50\] |
//! | 10 | AF, the Access flag (leaf) | accessed |
//! | 15:12 | 64 KiB granule: OA\[51:48\] (FEAT_LPA) | output address |
//! | 47:granule | OA\[47:granule\] (49:granule with DS = 1) | output / next-table address |
//! | 51 | DBM, dirty bit modifier (FEAT_HAFDBS, effective with VTCR_EL2.HD) | set on writable leaves with HD |
//! | 52 | Contiguous hint | always clear |
//! | 54 | XN (without FEAT_XNX) | no execute |
//! | 54:53 | XN\[1:0\] with FEAT_XNX: 00 EL1+EL0, 01 EL0 only (PXN), 10 none, 11 EL1 only (UXN) | `EXEC_SUPER` / `EXEC_USER` |
//! | 55 | software (IGNORED by hardware) | software-writable: the leaf's WRITE permission |
//! | 56 | software (IGNORED by hardware) | software-dirty: dirty state kept when WRITE is removed |
//! | 58:57 | software (IGNORED by hardware) | free for later issues |
//! | invalid, bit 10 | — | the frozen value 0x400 (KVM_INVALID_PTE_LOCKED) |
//!
//! Table descriptors carry only valid, type and the next-table address (the stage-2 table
//! descriptor has no attribute fields).
//!
//! MemAttr\[3:0\] (`S2DecodeMemAttrs`, `AArch64.S2ApplyFWBMemAttrs`; Linux `MT_S2_*`):
//!
//! | [`MemType`] | without FWB | with FWB (HCR_EL2.FWB = 1) |
//! |---|---|---|
//! | `WriteBack`, guest type honoured | 0b1111 Normal WB (combined with stage 1: "S1 wins") | 0b0111 "use stage-1 attributes" |
//! | `WriteBack` + `ignore_guest_memtype` | not expressible: rejected | 0b0110 forced Normal Write-Back |
//! | `WriteCombining` | 0b0101 Normal Non-cacheable | 0b0101 Non-cacheable (unless stage 1 is Device) |
//! | `Device` | 0b0001 Device-nGnRE | 0b0001 Device-nGnRE |
//! | `Uncached` | 0b0000 Device-nGnRnE | 0b0000 Device-nGnRnE |
//! | `WriteThrough`, `WriteProtect` | rejected | rejected |
//!
//! # Accessed and dirty state
//! The Access flag is bit 10 in every mode. Dirty is S2AP\[1\] (write permission in hardware) on a
//! leaf whose software-writable bit is set, or the software-dirty bit:
//! - **HA + HD** (VTCR_EL2.{HA, HD}): a writable leaf has DBM = 1; a clean one has S2AP\[1\] = 0,
//!   and the first write makes hardware set S2AP\[1\] (that is the dirty state). Hardware also sets
//!   AF. Both are volatile bits.
//! - **HA only**: hardware sets AF (volatile); a clean writable leaf has S2AP\[1\] = 0 and its first
//!   write takes a Permission fault, on which software sets S2AP\[1\].
//! - **Neither**: AF = 0 takes an Access flag fault and software sets it; dirty as with HA only.
//!
//! A map with `young_dirty` (the default) presets AF, and S2AP\[1\] on writable leaves: such
//! entries have no volatile bits. Granting WRITE with `protect` sets DBM with HD; without HD it
//! sets S2AP\[1\] at once (the leaf counts as dirty from then on, as KVM marks a page dirty when it
//! makes it writable). Removing WRITE moves a set S2AP\[1\] to the software-dirty bit, so no dirty
//! state is lost.
//!
//! # Break-before-make and cache maintenance
//! [`PteFormat::needs_break`] is true for any change of a valid entry outside S2AP, XN, AF, DBM and
//! the software bits: output address, block ↔ table (split of a live block, collapse into one),
//! MemAttr, SH. The engine then empties the entry, flushes its span and writes the new value.
//! [`PteFormat::cmo`] asks for a clean and invalidate to the PoC before a write-back leaf becomes
//! valid unless FWB forces write-back (MemAttr 0b0110), and for an instruction-cache invalidation
//! before a leaf becomes executable unless CTR_EL0.DIC ([`crate::Stage2Caps::dic`]).

use tdp_core::{
    AdModel, AdState, Attrs, ByteOrder, Cmo, EntryKind, Error, Geometry, Hpa, Level, MemType,
    Perms, PteFormat,
};

use crate::config::{Granule, Stage2};

/// Bit 0: valid.
pub(crate) const VALID: u64 = 1 << 0;
/// Bit 1: table (levels 0..2) or page (level 3); clear in a block.
pub(crate) const TABLE_OR_PAGE: u64 = 1 << 1;
/// Bits 5:2: MemAttr\[3:0\].
const MEMATTR_SHIFT: u32 = 2;
/// S2AP\[0\], bit 6: data read.
const S2AP_R: u64 = 1 << 6;
/// S2AP\[1\], bit 7: data write (the dirty state of a DBM leaf).
const S2AP_W: u64 = 1 << 7;
/// SH\[1:0\], bits 9:8 = 0b11: Inner Shareable (DS = 0 only).
const SH_INNER: u64 = 0b11 << 8;
/// AF, bit 10: the Access flag.
const AF: u64 = 1 << 10;
/// 64 KiB granule: OA\[51:48\] in bits 15:12 (FEAT_LPA).
const OA_64K_HIGH_SHIFT: u32 = 12;
/// DS = 1: OA\[51:50\] in bits 9:8 (FEAT_LPA2).
const OA_LPA2_HIGH_SHIFT: u32 = 8;
/// DBM, bit 51: dirty bit modifier (FEAT_HAFDBS).
const DBM: u64 = 1 << 51;
/// XN\[0\], bit 53 (FEAT_XNX).
const XN0: u64 = 1 << 53;
/// XN\[1\], bit 54 (XN without FEAT_XNX).
const XN1: u64 = 1 << 54;
/// Software bit 55: the leaf is writable (WRITE permission), whatever S2AP\[1\] says.
const SW_WRITABLE: u64 = 1 << 55;
/// Software bit 56: the leaf was dirty when its WRITE permission was removed.
const SW_DIRTY: u64 = 1 << 56;
/// Software bits 58:55 (IGNORED by hardware in Block and Page descriptors).
const SW_MASK: u64 = 0xf << 55;
/// The frozen value: invalid, with bit 10 (KVM_INVALID_PTE_LOCKED).
const FROZEN: u64 = 1 << 10;

/// Bits that may change in a valid leaf without break-before-make: permissions (S2AP, XN),
/// AF, DBM and the software bits. Rule R_WHZWS of "Using break-before-make when updating
/// translation table entries" (D8.13.1 in I.a, D8.14.1 in J.a) requires the break only for a
/// change of memory type (cacheability, shareability), of output address or of block size.
const IN_PLACE: u64 = S2AP_R | S2AP_W | AF | DBM | XN0 | XN1 | SW_MASK;
/// Accessed/dirty state of a leaf.
const AD_BITS: u64 = AF | S2AP_W | SW_DIRTY;

// MemAttr\[3:0\] encodings.
/// Normal, Outer and Inner Write-Back (without FWB): MT_S2_NORMAL.
const MA_NORMAL_WB: u64 = 0b1111;
/// Normal, Outer and Inner Non-cacheable (both encodings): MT_S2_NORMAL_NC.
const MA_NORMAL_NC: u64 = 0b0101;
/// Device-nGnRE (both encodings): MT_S2_DEVICE_nGnRE.
const MA_DEVICE_NGNRE: u64 = 0b0001;
/// Device-nGnRnE (both encodings).
const MA_DEVICE_NGNRNE: u64 = 0b0000;
/// FWB: forced Normal Write-Back (MT_S2_FWB_NORMAL).
const MA_FWB_FORCE_WB: u64 = 0b0110;
/// FWB: use the stage-1 attributes (MT_S2_FWB_AS_S1).
const MA_FWB_AS_S1: u64 = 0b0111;

/// Bits `hi..=lo` set.
const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
}

/// The descriptor bits that hold an output or next-table address with `granule` (and FEAT_LPA2's
/// layout if `lpa2`). Computed once per configuration ([`Stage2::new`] keeps it).
pub(crate) fn oa_fields_of(granule: Granule, lpa2: bool) -> u64 {
    let g = granule.shift();
    match granule {
        Granule::K64 => bits(47, g) | 0xf << OA_64K_HIGH_SHIFT,
        _ if lpa2 => bits(49, g) | 0b11 << OA_LPA2_HIGH_SHIFT,
        _ => bits(47, g),
    }
}

/// Where an output address sits in a descriptor: bits `lo` in place, and `hi_mask` bits taken
/// from the descriptor at `hi_field` to the address at `hi_pa` (PA\[51:48\] in bits 15:12 with
/// the 64 KiB granule, PA\[51:50\] in bits 9:8 with FEAT_LPA2; none otherwise: `hi_mask` 0).
/// Arm ARM D8.3 (VMSAv8-64 descriptor formats).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct OaLayout {
    lo: u64,
    hi_mask: u64,
    hi_field: u32,
    hi_pa: u32,
}

impl OaLayout {
    pub(crate) const fn of(granule: Granule, lpa2: bool) -> OaLayout {
        let g = granule.shift();
        match granule {
            Granule::K64 => OaLayout {
                lo: bits(47, g),
                hi_mask: 0xf,
                hi_field: OA_64K_HIGH_SHIFT,
                hi_pa: 48,
            },
            _ if lpa2 => OaLayout {
                lo: bits(49, g),
                hi_mask: 0b11,
                hi_field: OA_LPA2_HIGH_SHIFT,
                hi_pa: 50,
            },
            _ => OaLayout {
                lo: bits(47, g),
                hi_mask: 0,
                hi_field: 0,
                hi_pa: 0,
            },
        }
    }
}

impl Stage2 {
    /// The descriptor bits that hold an output or next-table address.
    #[inline(always)]
    fn oa_fields(&self) -> u64 {
        self.oa_fields
    }

    /// `pa` (granule-aligned, below the output size) in the descriptor's address fields.
    #[inline(always)]
    fn encode_oa(&self, pa: u64) -> u64 {
        let o = &self.oa;
        (pa & o.lo) | ((pa >> o.hi_pa) & o.hi_mask) << o.hi_field
    }

    /// The address held in a descriptor's address fields.
    #[inline(always)]
    fn decode_oa(&self, raw: u64) -> u64 {
        let o = &self.oa;
        // The common layout (4/16 KiB granule without LPA2) has no high field: one AND. The
        // branch is the same for every descriptor of a table, so it predicts perfectly.
        if o.hi_mask == 0 {
            return raw & o.lo;
        }
        (raw & o.lo) | ((raw >> o.hi_field) & o.hi_mask) << o.hi_pa
    }

    /// XN\[1:0\] (bits 54:53) for `perms`; without FEAT_XNX only bit 54.
    fn xn_bits(&self, perms: Perms) -> u64 {
        let su = (
            perms.contains(Perms::EXEC_SUPER),
            perms.contains(Perms::EXEC_USER),
        );
        if self.opts.xnx {
            match su {
                (true, true) => 0,
                (false, true) => XN0,
                (true, false) => XN1 | XN0,
                (false, false) => XN1,
            }
        } else if su.0 || su.1 {
            0
        } else {
            XN1
        }
    }

    /// MemAttr\[3:0\] for `attrs` (accepted by `check_attrs`).
    fn memattr(&self, attrs: &Attrs) -> u64 {
        match attrs.mem {
            MemType::WriteBack if self.opts.fwb && attrs.ignore_guest_memtype => MA_FWB_FORCE_WB,
            MemType::WriteBack if self.opts.fwb => MA_FWB_AS_S1,
            MemType::WriteBack => MA_NORMAL_WB,
            MemType::WriteCombining => MA_NORMAL_NC,
            MemType::Device => MA_DEVICE_NGNRE,
            // Never accepted (WriteThrough, WriteProtect); Device-nGnRnE is the safe value.
            _ => MA_DEVICE_NGNRNE,
        }
    }

    fn is_leaf(&self, raw: u64, level: Level) -> bool {
        self.classify(raw, level) == EntryKind::Leaf
    }
}

impl PteFormat for Stage2 {
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
        let exec = attrs.perms & Perms::EXEC;
        let split_exec = !exec.is_empty() && exec != Perms::EXEC && !self.opts.xnx;
        let device = matches!(attrs.mem, MemType::Device | MemType::Uncached);
        let unsupported_type = matches!(attrs.mem, MemType::WriteThrough | MemType::WriteProtect);
        // Only FWB's forced Write-Back (0b0110) ignores the guest's stage-1 type.
        let force =
            attrs.ignore_guest_memtype && !(self.opts.fwb && attrs.mem == MemType::WriteBack);
        if split_exec || unsupported_type || (device && !exec.is_empty()) || force {
            return Err(Error::UnsupportedAttrs { attrs: *attrs });
        }
        Ok(())
    }

    #[inline]
    fn leaf_addr_bits(&self, hpa: Hpa, _level: Level) -> u64 {
        self.encode_oa(hpa.raw())
    }

    fn make_leaf(&self, hpa: Hpa, level: Level, attrs: &Attrs, young_dirty: bool) -> u64 {
        let mut v = VALID | self.encode_oa(hpa.raw()) | self.memattr(attrs) << MEMATTR_SHIFT;
        if level.get() == 0 {
            v |= TABLE_OR_PAGE;
        }
        if !self.opts.lpa2 {
            v |= SH_INNER;
        }
        let p = attrs.perms;
        if p.contains(Perms::READ) {
            v |= S2AP_R;
        }
        v |= self.xn_bits(p);
        if p.contains(Perms::WRITE) {
            v |= SW_WRITABLE;
            if self.opts.hw_dirty {
                v |= DBM;
            }
            if young_dirty {
                v |= S2AP_W;
            }
        }
        if young_dirty {
            v |= AF;
        }
        v
    }

    fn make_table(&self, child: Hpa, _level: Level) -> u64 {
        VALID | TABLE_OR_PAGE | self.encode_oa(child.raw())
    }

    fn split_child(&self, huge: u64, level: Level, index: usize) -> u64 {
        let child_level = level.get().saturating_sub(1);
        let step = Level::new(child_level).map_or(0, |l| self.geo.level_size(l));
        let base = self.decode_oa(huge) & !(self.geo.level_size(level) - 1);
        let oa = base + index as u64 * step;
        let mut v = (huge & !self.oa_fields() & !TABLE_OR_PAGE) | self.encode_oa(oa);
        if child_level == 0 {
            v |= TABLE_OR_PAGE;
        }
        v
    }

    fn make_huge(&self, child: u64, _level: Level, ad: u64) -> u64 {
        // A block: bit 1 clear; the child's address is the block's (aligned by the engine).
        (child & !(AD_BITS | TABLE_OR_PAGE)) | (ad & AD_BITS)
    }

    fn with_perms(&self, raw: u64, _level: Level, perms: Perms) -> u64 {
        let was_writable = raw & (SW_WRITABLE | S2AP_W) != 0;
        let mut v = raw & !(S2AP_R | XN0 | XN1 | SW_WRITABLE | DBM);
        if perms.contains(Perms::READ) {
            v |= S2AP_R;
        }
        v |= self.xn_bits(perms);
        if perms.contains(Perms::WRITE) {
            v |= SW_WRITABLE;
            if self.opts.hw_dirty {
                // Hardware makes it writable on the first write (S2AP[1] keeps its state).
                v |= DBM;
            } else if !was_writable {
                // No hardware dirty state: granting write grants S2AP[1] (dirty from now on).
                v |= S2AP_W;
            }
        } else {
            // Keep a dirty state that S2AP[1] held, then remove hardware write.
            if raw & S2AP_W != 0 {
                v |= SW_DIRTY;
            }
            v &= !S2AP_W;
        }
        v
    }

    #[inline(always)]
    fn classify(&self, raw: u64, level: Level) -> EntryKind {
        if raw == 0 {
            EntryKind::Empty
        } else if raw == FROZEN {
            EntryKind::Frozen
        } else if raw & VALID == 0 {
            EntryKind::Other
        } else if level.get() == 0 {
            // Level 3: bit 1 = 1 is a page; 0 is reserved (Translation fault).
            if raw & TABLE_OR_PAGE != 0 {
                EntryKind::Leaf
            } else {
                EntryKind::Other
            }
        } else if raw & TABLE_OR_PAGE != 0 {
            EntryKind::Table
        } else if self.geo.is_leaf_level(level) {
            EntryKind::Leaf
        } else {
            // A block where the granule has none (Translation fault).
            EntryKind::Other
        }
    }

    #[inline(always)]
    fn table_addr(&self, raw: u64, _level: Level) -> Hpa {
        Hpa::new(self.decode_oa(raw))
    }

    #[inline]
    fn leaf_addr(&self, raw: u64, level: Level) -> Hpa {
        Hpa::new(self.decode_oa(raw) & !(self.geo.level_size(level) - 1))
    }

    fn leaf_attrs(&self, raw: u64, _level: Level) -> Attrs {
        let mut perms = Perms::empty();
        if raw & S2AP_R != 0 {
            perms |= Perms::READ;
        }
        if raw & (SW_WRITABLE | S2AP_W) != 0 || (self.opts.hw_dirty && raw & DBM != 0) {
            perms |= Perms::WRITE;
        }
        let (xn1, xn0) = (raw & XN1 != 0, self.opts.xnx && raw & XN0 != 0);
        perms |= match (xn1, xn0) {
            (false, false) => Perms::EXEC,
            (false, true) => Perms::EXEC_USER,
            (true, true) => Perms::EXEC_SUPER,
            (true, false) => Perms::empty(),
        };
        let ma = (raw >> MEMATTR_SHIFT) & 0xf;
        let (mem, ignore_guest_memtype) = if self.opts.fwb {
            match ma & 0b111 {
                MA_FWB_FORCE_WB => (MemType::WriteBack, true),
                MA_FWB_AS_S1 => (MemType::WriteBack, false),
                0b100 | MA_NORMAL_NC => (MemType::WriteCombining, false),
                MA_DEVICE_NGNRNE => (MemType::Uncached, false),
                _ => (MemType::Device, false),
            }
        } else {
            match (ma >> 2, ma & 0b11) {
                (0, 0) => (MemType::Uncached, false),
                (0, _) => (MemType::Device, false),
                (0b11, 0b11) => (MemType::WriteBack, false),
                (0b10, 0b10) => (MemType::WriteThrough, false),
                _ => (MemType::WriteCombining, false),
            }
        };
        Attrs {
            perms,
            mem,
            ignore_guest_memtype,
        }
    }

    fn ad_state(&self, raw: u64, _level: Level) -> AdState {
        AdState {
            accessed: Some(raw & AF != 0),
            dirty: Some(raw & (S2AP_W | SW_DIRTY) != 0),
        }
    }

    #[inline]
    fn ad_bits(&self, raw: u64, _level: Level) -> u64 {
        raw & AD_BITS
    }

    #[inline]
    fn leaf_key(&self, raw: u64, _level: Level) -> u64 {
        raw & !(self.oa_fields() | AD_BITS)
    }

    fn ad_model(&self) -> AdModel {
        if self.opts.hw_access {
            AdModel::Hardware
        } else {
            AdModel::Software
        }
    }

    /// With HA, hardware sets AF in a valid leaf that lacks it; with HD, it sets S2AP\[1\] in a
    /// leaf with DBM = 1 on a write (FEAT_HAFDBS). Table descriptors have no hardware-set bits
    /// (FEAT_HAFT is not used).
    #[inline(always)]
    fn volatile_bits(&self, raw: u64, level: Level) -> u64 {
        if !self.opts.hw_access || !self.is_leaf(raw, level) {
            return 0;
        }
        let mut v = !raw & AF;
        if self.opts.hw_dirty && raw & DBM != 0 {
            v |= !raw & S2AP_W;
        }
        v
    }

    /// Break-before-make for any change of a valid entry other than permissions (S2AP, XN), AF,
    /// DBM and the software bits: output address, block ↔ table, MemAttr, SH. Invalidating an
    /// entry is itself the break.
    #[inline]
    fn needs_break(&self, old: u64, new: u64, _level: Level) -> bool {
        new & VALID != 0 && (old ^ new) & !IN_PLACE != 0
    }

    /// Without FWB's forced Write-Back, cacheable memory may be accessed non-cacheably by the
    /// guest (its stage 1 off, or non-cacheable): clean and invalidate to the PoC first (KVM
    /// `clean_dcache_guest_page`). Executable memory needs an instruction-cache invalidation to
    /// the PoU unless CTR_EL0.DIC (KVM `invalidate_icache_guest_page`; FWB does not make the
    /// instruction cache coherent).
    fn cmo(&self, attrs: &Attrs) -> Cmo {
        let mut c = Cmo::empty();
        let forced_wb = self.opts.fwb && attrs.ignore_guest_memtype;
        if attrs.mem == MemType::WriteBack && !forced_wb {
            c |= Cmo::CLEAN_DCACHE;
        }
        if attrs.perms.intersects(Perms::EXEC) && !self.caps.dic {
            c |= Cmo::INVAL_ICACHE;
        }
        c
    }

    /// Device memory cannot be executable, so `protect` checks every leaf's memory type.
    fn perms_depend_on_memtype(&self) -> bool {
        true
    }
}
