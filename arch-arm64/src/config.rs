//! The run-time configuration of one stage-2 table: granule, IPA and output sizes, the features in
//! use, and the geometry, VTCR_EL2 and VTTBR_EL2 that follow from them.
//!
//! Sources: Arm ARM (DDI 0487), register descriptions "VTCR_EL2, Virtualization Translation
//! Control Register" (D24.2.224 in K.a) and "VTTBR_EL2, Virtualization Translation Table Base
//! Register"; chapter D8 "The AArch64 Virtual Memory System Architecture", sections "Translation
//! tables and the translation process" (starting level, "Concatenated translation tables",
//! pseudocode `AArch64.S2StartLevel`, `AArch64.S2InvalidSL`, `AArch64.S2InconsistentSL`,
//! `AArch64.S2MinTxSZ`, `AArch64.PhysicalAddressSize`, `AArch64.S2TTBaseAddress`). The level
//! count follows Linux KVM (`kvm_get_vtcr`, `stage2_pgtable_levels`: levels =
//! (ipa − 8) / (granule_shift − 3), at least 2, so that up to 16 tables are concatenated at the
//! start level instead of adding a level).
//!
//! | item | 4 KiB | 16 KiB | 64 KiB |
//! |---|---|---|---|
//! | index bits per level (`granule_shift − 3`) | 9 | 11 | 13 |
//! | block levels (`AArch64.BlockDescSupported`, KVM_PGTABLE_MIN_BLOCK_LEVEL) | L1 1 GiB, L2 2 MiB | L2 32 MiB | L2 512 MiB |
//! | VTCR_EL2.TG0 (bits 15:14) | 0b00 | 0b10 | 0b01 |
//! | VTCR_EL2.SL0 (bits 7:6) for start level L | 2 − L | 3 − L | 3 − L |
//! | 52-bit output | FEAT_LPA2, VTCR_EL2.DS = 1 | FEAT_LPA2, DS = 1 | FEAT_LPA (PARange = 52) |
//!
//! Engine levels count from the page: engine level = 3 − Arm level (L3 → 0, L2 → 1, L1 → 2,
//! L0 → 3). The start (root) level may be wider than one granule page: 1..16 concatenated tables,
//! root index bits = the level's bits + log2(tables), allocated and aligned to their total size.

use tdp_core::{Error, Geometry, Hpa, Level};

/// A translation granule.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB pages, 512-entry tables.
    K4,
    /// 16 KiB pages, 2048-entry tables.
    K16,
    /// 64 KiB pages, 8192-entry tables.
    K64,
}

impl Granule {
    /// log2 of the page size: 12, 14 or 16.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    /// The page size in bytes.
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// Index bits of one granule-sized table (`granule_shift − 3`).
    pub const fn stride(self) -> u32 {
        self.shift() - 3
    }

    /// VTCR_EL2.TG0 (bits 15:14): 0b00 4 KiB, 0b01 64 KiB, 0b10 16 KiB.
    pub const fn tg0(self) -> u64 {
        match self {
            Granule::K4 => 0b00,
            Granule::K16 => 0b10,
            Granule::K64 => 0b01,
        }
    }

    /// The translation-granule code of the TLBI operands (TTL\[3:2\] of TLBI IPAS2E1IS, TG of
    /// TLBI RIPAS2E1IS): 0b01 4 KiB, 0b10 16 KiB, 0b11 64 KiB.
    pub const fn tlbi_tg(self) -> u64 {
        match self {
            Granule::K4 => 0b01,
            Granule::K16 => 0b10,
            Granule::K64 => 0b11,
        }
    }
}

/// What the processor implements, as far as stage 2 depends on it. Each field names the ID
/// register field it comes from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stage2Caps {
    /// PAMax in bits (ID_AA64MMFR0_EL1.PARange): 32, 36, 40, 42, 44, 48 or 52. 52 implies
    /// FEAT_LPA (52-bit output with the 64 KiB granule).
    pub pa_range_bits: u8,
    /// The 4 KiB granule at stage 2 (ID_AA64MMFR0_EL1.TGran4_2).
    pub granule_4k: bool,
    /// The 16 KiB granule at stage 2 (ID_AA64MMFR0_EL1.TGran16_2).
    pub granule_16k: bool,
    /// The 64 KiB granule at stage 2 (ID_AA64MMFR0_EL1.TGran64_2).
    pub granule_64k: bool,
    /// FEAT_LPA2: 52-bit IPA and output with the 4/16 KiB granules (TGran4_2 / TGran16_2 =
    /// 0b0011).
    pub lpa2: bool,
    /// FEAT_XNX: separate EL1 and EL0 execute-never at stage 2 (ID_AA64MMFR1_EL1.XNX).
    pub xnx: bool,
    /// FEAT_S2FWB: HCR_EL2.FWB can be set (ID_AA64MMFR2_EL1.FWB).
    pub fwb: bool,
    /// FEAT_HAFDBS, Access flag: VTCR_EL2.HA works (ID_AA64MMFR1_EL1.HAFDBS ≥ 0b0001).
    pub hw_access: bool,
    /// FEAT_HAFDBS, dirty state: VTCR_EL2.HD works (ID_AA64MMFR1_EL1.HAFDBS ≥ 0b0010).
    pub hw_dirty: bool,
    /// FEAT_VMID16: 16-bit VMIDs, VTCR_EL2.VS (ID_AA64MMFR1_EL1.VMIDBits = 0b0010).
    pub vmid16: bool,
    /// FEAT_TLBIRANGE: TLBI RIPAS2E1IS (ID_AA64ISAR0_EL1.TLB = 0b0010).
    pub tlbi_range: bool,
    /// FEAT_TTL: the level hint in TLBI by address (ID_AA64MMFR2_EL1.TTL).
    pub ttl: bool,
    /// CTR_EL0.DIC: instruction-cache invalidation to the PoU is not needed for coherence.
    pub dic: bool,
}

impl Stage2Caps {
    /// An Armv8.0 processor with `pa_range_bits` of physical address and all three stage-2
    /// granules, and none of the optional features.
    pub const fn new(pa_range_bits: u8) -> Stage2Caps {
        Stage2Caps {
            pa_range_bits,
            granule_4k: true,
            granule_16k: true,
            granule_64k: true,
            lpa2: false,
            xnx: false,
            fwb: false,
            hw_access: false,
            hw_dirty: false,
            vmid16: false,
            tlbi_range: false,
            ttl: false,
            dic: false,
        }
    }

    /// Every feature this crate can use, with a 52-bit PARange.
    pub const fn all() -> Stage2Caps {
        Stage2Caps {
            pa_range_bits: 52,
            granule_4k: true,
            granule_16k: true,
            granule_64k: true,
            lpa2: true,
            xnx: true,
            fwb: true,
            hw_access: true,
            hw_dirty: true,
            vmid16: true,
            tlbi_range: true,
            ttl: true,
            dic: false,
        }
    }
}

/// What the hypervisor chooses for one VM's stage-2 table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stage2Options {
    /// The translation granule (VTCR_EL2.TG0).
    pub granule: Granule,
    /// IPA size in bits, 32..=52 (VTCR_EL2.T0SZ = 64 − ipa_bits).
    pub ipa_bits: u8,
    /// Output size in bits (VTCR_EL2.PS): 32, 36, 40, 42, 44, 48 or 52.
    pub oa_bits: u8,
    /// Use the FEAT_LPA2 descriptor format (VTCR_EL2.DS = 1): OA\[49:48\] in bits 49:48,
    /// OA\[51:50\] in bits 9:8, shareability from VTCR_EL2.SH0. 4/16 KiB only.
    pub lpa2: bool,
    /// HCR_EL2.FWB = 1: the FEAT_S2FWB MemAttr encoding.
    pub fwb: bool,
    /// Use FEAT_XNX: separate EL1 (`Perms::EXEC_SUPER`) and EL0 (`Perms::EXEC_USER`) execute.
    pub xnx: bool,
    /// VTCR_EL2.HA: hardware sets the Access flag.
    pub hw_access: bool,
    /// VTCR_EL2.HD: hardware dirty state through DBM (needs `hw_access`).
    pub hw_dirty: bool,
    /// VTCR_EL2.VS: 16-bit VMIDs.
    pub vmid16: bool,
}

impl Stage2Options {
    /// The given granule and sizes with every optional feature off.
    pub const fn new(granule: Granule, ipa_bits: u8, oa_bits: u8) -> Stage2Options {
        Stage2Options {
            granule,
            ipa_bits,
            oa_bits,
            lpa2: false,
            fwb: false,
            xnx: false,
            hw_access: false,
            hw_dirty: false,
            vmid16: false,
        }
    }
}

/// The architected PARange / VTCR_EL2.PS sizes, by encoding (0b000 .. 0b110).
const PA_SIZES: [u8; 7] = [32, 36, 40, 42, 44, 48, 52];

// --- VTCR_EL2 fields (register description "VTCR_EL2") ---
/// T0SZ, bits 5:0: the IPA size is 64 − T0SZ.
const VTCR_T0SZ_SHIFT: u32 = 0;
/// SL0, bits 7:6: starting level (meaning depends on TG0).
const VTCR_SL0_SHIFT: u32 = 6;
/// IRGN0, bits 9:8 = 0b01: table walks Inner Write-Back Read-Allocate Write-Allocate.
const VTCR_IRGN0_WBWA: u64 = 0b01 << 8;
/// ORGN0, bits 11:10 = 0b01: table walks Outer Write-Back Read-Allocate Write-Allocate.
const VTCR_ORGN0_WBWA: u64 = 0b01 << 10;
/// SH0, bits 13:12 = 0b11: table walks Inner Shareable (with DS = 1 also the shareability of
/// cacheable Block and Page mappings).
const VTCR_SH0_INNER: u64 = 0b11 << 12;
/// TG0, bits 15:14.
const VTCR_TG0_SHIFT: u32 = 14;
/// PS, bits 18:16.
const VTCR_PS_SHIFT: u32 = 16;
/// VS, bit 19: 16-bit VMID (FEAT_VMID16).
const VTCR_VS: u64 = 1 << 19;
/// HA, bit 21: hardware Access flag update (FEAT_HAFDBS).
const VTCR_HA: u64 = 1 << 21;
/// HD, bit 22: hardware dirty state management (FEAT_HAFDBS; effective only with HA).
const VTCR_HD: u64 = 1 << 22;
/// Bit 31: RES1.
const VTCR_RES1: u64 = 1 << 31;
/// DS, bit 32: 52-bit descriptors with the 4/16 KiB granules (FEAT_LPA2).
const VTCR_DS: u64 = 1 << 32;

// --- VTTBR_EL2 fields (register description "VTTBR_EL2") ---
/// VMID, bits 63:48 (55:48 with 8-bit VMIDs).
const VTTBR_VMID_SHIFT: u32 = 48;
/// BADDR\[47:6\] in bits 47:6 in the 52-bit layout.
const VTTBR_BADDR52_LOW: u64 = 0x0000_ffff_ffff_ffc0;
/// BADDR\[51:48\] in bits 5:2 in the 52-bit layout.
const VTTBR_BADDR52_HIGH_SHIFT: u32 = 2;

/// The Arm stage-2 format for one configuration: a [`tdp_core::PteFormat`] (see the descriptor
/// table in the crate documentation), and the register values and TLB invalidations that go with
/// it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Stage2 {
    pub(crate) geo: Geometry,
    pub(crate) caps: Stage2Caps,
    pub(crate) opts: Stage2Options,
    /// Arm level of the initial lookup (0..=2).
    start_level: u8,
    /// log2 of the number of concatenated tables at the start level (0..=4).
    concat_log2: u8,
    /// The descriptor bits that hold an output or next-table address (from the granule and
    /// LPA2), kept so that `leaf_key` and `split_child` do not derive them per entry.
    pub(crate) oa_fields: u64,
    /// How an output address is split over those fields (decoded and encoded without a branch).
    pub(crate) oa: crate::descriptor::OaLayout,
}

impl Stage2 {
    /// A stage-2 configuration, checked against what the architecture and the processor allow.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first problem found:
    /// - `caps.pa_range_bits` or `opts.oa_bits` is not an architected size (32, 36, 40, 42, 44,
    ///   48, 52), or the output size is above PARange;
    /// - the granule is not implemented at stage 2;
    /// - `lpa2` with the 64 KiB granule or without FEAT_LPA2;
    /// - an IPA size outside 32..=52, above PARange (`AArch64.S2MinTxSZ`), or above 48 bits
    ///   without the 52-bit descriptor format (64 KiB with FEAT_LPA, or LPA2);
    /// - a 52-bit output without that format;
    /// - HA, HD, FWB, XNX or 16-bit VMIDs without the feature, or HD without HA.
    pub fn new(caps: Stage2Caps, opts: Stage2Options) -> Result<Stage2, Error> {
        let bad = |what, value: u64| Err(Error::InvalidConfig { what, value });
        if !PA_SIZES.contains(&caps.pa_range_bits) {
            return bad(
                "PARange (ID_AA64MMFR0_EL1) is not an architected size",
                caps.pa_range_bits.into(),
            );
        }
        let g = opts.granule;
        let implemented = match g {
            Granule::K4 => caps.granule_4k,
            Granule::K16 => caps.granule_16k,
            Granule::K64 => caps.granule_64k,
        };
        if !implemented {
            return bad("granule not implemented at stage 2 (TGran*_2)", g.size());
        }
        if opts.lpa2 && g == Granule::K64 {
            return bad("LPA2 (VTCR_EL2.DS) with the 64 KiB granule", g.size());
        }
        if opts.lpa2 && !caps.lpa2 {
            return bad("LPA2 (VTCR_EL2.DS) without FEAT_LPA2", 1);
        }
        // 52-bit descriptors: 64 KiB with FEAT_LPA (PARange 52), or LPA2 (DS = 1).
        let wide = opts.lpa2 || (g == Granule::K64 && caps.pa_range_bits == 52);
        if !PA_SIZES.contains(&opts.oa_bits) {
            return bad(
                "output size (VTCR_EL2.PS) is not an architected size",
                opts.oa_bits.into(),
            );
        }
        if opts.oa_bits > caps.pa_range_bits {
            return bad("output size above PARange", opts.oa_bits.into());
        }
        if opts.oa_bits > 48 && !wide {
            return bad(
                "52-bit output without FEAT_LPA (64 KiB) or LPA2 (4/16 KiB)",
                opts.oa_bits.into(),
            );
        }
        if !(32..=52).contains(&opts.ipa_bits) {
            return bad("IPA size outside 32..=52 bits", opts.ipa_bits.into());
        }
        if opts.ipa_bits > caps.pa_range_bits {
            return bad("IPA size above PARange", opts.ipa_bits.into());
        }
        if opts.ipa_bits > 48 && !wide {
            return bad(
                "IPA above 48 bits without FEAT_LPA (64 KiB) or LPA2 (4/16 KiB)",
                opts.ipa_bits.into(),
            );
        }
        if opts.hw_access && !caps.hw_access {
            return bad("VTCR_EL2.HA without FEAT_HAFDBS", 1);
        }
        if opts.hw_dirty && !caps.hw_dirty {
            return bad("VTCR_EL2.HD without FEAT_HAFDBS dirty state", 1);
        }
        if opts.hw_dirty && !opts.hw_access {
            return bad("VTCR_EL2.HD without HA (HD has no effect)", 1);
        }
        if opts.fwb && !caps.fwb {
            return bad("HCR_EL2.FWB without FEAT_S2FWB", 1);
        }
        if opts.xnx && !caps.xnx {
            return bad("XN[1:0] without FEAT_XNX", 1);
        }
        if opts.vmid16 && !caps.vmid16 {
            return bad("VTCR_EL2.VS without FEAT_VMID16", 1);
        }

        // KVM: levels = ARM64_HW_PGTABLE_LEVELS(ipa − 4) = (ipa − 8) / stride, at least 2; start
        // level = 4 − levels. The start level then resolves 1..=stride + 4 bits
        // (`AArch64.S2InconsistentSL`): up to 16 concatenated tables.
        let stride = g.stride();
        let ipa = u32::from(opts.ipa_bits);
        let levels = ((ipa - 8) / stride).max(2);
        let root_shift = g.shift() + stride * (levels - 1);
        let start_bits = ipa - root_shift;
        if !(1..=stride + 4).contains(&start_bits) {
            // Unreachable for 32..=52 bits; kept so a wrong table is an error, never a panic.
            return bad("start level inconsistent with the IPA size", ipa.into());
        }
        let root_bits = start_bits.max(stride);
        let mut bits = [stride as u8; 4];
        bits[levels as usize - 1] = root_bits as u8;
        // Blocks: 4 KiB at L1 and L2 (engine 2, 1); 16/64 KiB at L2 (engine 1). Level 0 = pages.
        let blocks: u8 = match g {
            Granule::K4 => 0b111,
            Granule::K16 | Granule::K64 => 0b011,
        };
        let leaf_mask = blocks & ((1u8 << levels) - 1);
        let geo = Geometry::new(
            g.shift() as u8,
            &bits[..levels as usize],
            leaf_mask,
            opts.ipa_bits,
            opts.oa_bits,
        )?;
        Ok(Stage2 {
            geo,
            caps,
            opts,
            start_level: (4 - levels) as u8,
            concat_log2: start_bits.saturating_sub(stride) as u8,
            oa_fields: crate::descriptor::oa_fields_of(opts.granule, opts.lpa2),
            oa: crate::descriptor::OaLayout::of(opts.granule, opts.lpa2),
        })
    }

    /// The options this format was built with.
    pub fn options(&self) -> Stage2Options {
        self.opts
    }

    /// The capabilities this format was built with.
    pub fn caps(&self) -> Stage2Caps {
        self.caps
    }

    /// The translation granule.
    pub fn granule(&self) -> Granule {
        self.opts.granule
    }

    /// The Arm level of the initial lookup (0, 1 or 2).
    pub fn start_level(&self) -> u8 {
        self.start_level
    }

    /// The number of concatenated tables at the start level (1..=16).
    pub fn concatenated_tables(&self) -> u32 {
        1 << self.concat_log2
    }

    /// The size in bytes of the root (all concatenated tables), which is also its alignment.
    pub fn root_size(&self) -> usize {
        self.geo.table_size(self.geo.root_level())
    }

    /// The Arm level (3 = pages) of an engine level.
    pub fn arm_level(level: Level) -> i8 {
        3 - level.get() as i8
    }

    /// Whether the 52-bit descriptor and VTTBR layouts are in use (LPA2, or 64 KiB with a 52-bit
    /// output size).
    pub(crate) fn baddr_52(&self) -> bool {
        self.opts.lpa2 || (self.opts.granule == Granule::K64 && self.opts.oa_bits == 52)
    }

    /// VTCR_EL2 for this configuration: T0SZ, SL0, IRGN0/ORGN0 write-back write-allocate, SH0
    /// inner shareable, TG0, PS, VS, HA, HD, RES1 bit 31 and DS.
    pub fn vtcr(&self) -> u64 {
        let g = self.opts.granule;
        let t0sz = 64 - u64::from(self.opts.ipa_bits);
        // SL0 = TGRAN_SL0_BASE − start level: base 2 for 4 KiB, 3 for 16/64 KiB (SL0 field
        // description: 4 KiB 0b00 L2, 0b01 L1, 0b10 L0; 16/64 KiB 0b00 L3, 0b01 L2, 0b10 L1,
        // 16 KiB 0b11 L0 with LPA2).
        let base = if g == Granule::K4 { 2 } else { 3 };
        let sl0 = base - u64::from(self.start_level);
        let ps = PA_SIZES
            .iter()
            .position(|&b| b == self.opts.oa_bits)
            .unwrap_or(PA_SIZES.len() - 1) as u64;
        let mut v = t0sz << VTCR_T0SZ_SHIFT
            | sl0 << VTCR_SL0_SHIFT
            | VTCR_IRGN0_WBWA
            | VTCR_ORGN0_WBWA
            | VTCR_SH0_INNER
            | g.tg0() << VTCR_TG0_SHIFT
            | ps << VTCR_PS_SHIFT
            | VTCR_RES1;
        if self.opts.vmid16 {
            v |= VTCR_VS;
        }
        if self.opts.hw_access {
            v |= VTCR_HA;
        }
        if self.opts.hw_dirty {
            v |= VTCR_HD;
        }
        if self.opts.lpa2 {
            v |= VTCR_DS;
        }
        v
    }

    /// VTTBR_EL2 for the root at `root` and `vmid`: BADDR (in the 52-bit layout, BADDR\[51:48\]
    /// in bits 5:2, when LPA2 or 64 KiB with a 52-bit output is in use), VMID in bits 63:48,
    /// CnP (bit 0) clear.
    ///
    /// # Errors
    /// - [`Error::UnalignedHpa`] if `root` is not aligned to [`Stage2::root_size`];
    /// - [`Error::HpaTooWide`] if the root does not lie below the output size;
    /// - [`Error::InvalidConfig`] if `vmid` needs 16 bits without [`Stage2Options::vmid16`].
    pub fn vttbr(&self, root: Hpa, vmid: u16) -> Result<u64, Error> {
        let align = self.root_size() as u64;
        if !root.is_aligned(align) {
            return Err(Error::UnalignedHpa { hpa: root, align });
        }
        let bits = self.opts.oa_bits;
        if (root.raw() | (align - 1)) >> bits != 0 {
            return Err(Error::HpaTooWide { hpa: root, bits });
        }
        if !self.opts.vmid16 && vmid > 0xff {
            return Err(Error::InvalidConfig {
                what: "VMID wider than 8 bits without VTCR_EL2.VS",
                value: vmid.into(),
            });
        }
        let baddr = if self.baddr_52() {
            (root.raw() & VTTBR_BADDR52_LOW)
                | ((root.raw() >> 48) & 0xf) << VTTBR_BADDR52_HIGH_SHIFT
        } else {
            root.raw()
        };
        Ok(baddr | u64::from(vmid) << VTTBR_VMID_SHIFT)
    }
}
