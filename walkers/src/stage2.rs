//! Arm VMSAv8-64 stage-2 walker (the EL1&0 stage 2 of a Non-secure guest).
//!
//! Written from the Arm Architecture Reference Manual for A-profile
//! (DDI 0487), chapter "The AArch64 Virtual Memory System Architecture"
//! (D8 in recent editions, D5 in editions before ~2021; the section titles
//! are the same), and from the shared pseudocode of that manual, whose
//! function names are more stable across editions than section numbers:
//!
//! * register descriptions "VTCR_EL2, Virtualization Translation Control
//!   Register" and "VTTBR_EL2, Virtualization Translation Table Base
//!   Register";
//! * "Translation table descriptor formats" (D8.3 / D5.3): table, block and
//!   page descriptors, the output-address fields with FEAT_LPA (64 KiB) and
//!   FEAT_LPA2 (4/16 KiB, `VTCR_EL2.DS`), "Stage 2 data access permissions"
//!   (S2AP), "Stage 2 ... execute-never" (XN, FEAT_XNX), the Contiguous bit;
//! * "Translation tables and the translation process": starting level,
//!   "Concatenated translation tables", "Translation table base address
//!   alignment" — pseudocode `AArch64.S2StartLevel`, `AArch64.S2InvalidSL`,
//!   `AArch64.S2InconsistentSL`, `AArch64.S2MinTxSZ`, `AArch64.MaxTxSZ`,
//!   `AArch64.S2TTBaseAddress`, `AArch64.PhysicalAddressSize`;
//! * the walk itself — `AArch64.S2Walk`, `AArch64.DecodeDescriptorType`,
//!   `AArch64.BlockDescSupported`, `AArch64.LeafBase`,
//!   `AArch64.NextTableBase`, `AArch64.OAOutOfRange`,
//!   `AArch64.IPAIsOutOfRange`, `StageOA`, `ContiguousSize`;
//! * "Hardware updates to the translation tables" (FEAT_HAFDBS: Access flag
//!   and dirty state) — `AArch64.S2Translate`, `AArch64.S2ApplyOutputPerms`;
//! * permissions — `AArch64.S2DirectBasePermissions`,
//!   `AArch64.S2CheckPermission`;
//! * "Memory region attributes" → "Stage 2 memory type and Cacheability
//!   attributes when FEAT_S2FWB is disabled / enabled" —
//!   `S2DecodeMemAttrs`, `S2DecodeCacheability`, `AArch64.S2ApplyFWBMemAttrs`;
//! * ESR_ELx "DFSC/IFSC" encodings for [`Stage2Fault::fsc`].
//!
//! Levels are the manual's: the walk starts at the level selected by
//! `VTCR_EL2.SL0` (0, 1, 2 or 3) and ends at level 3 (the page level).
//! Levels are `i8` so that level −1 (FEAT_LPA2 with `VTCR_EL2.SL2`) would be
//! representable, but this walker refuses SL2 (see below).
//!
//! # Order of checks
//!
//! This follows `AArch64.S2Translate` / `AArch64.S2Walk`:
//!
//! 1. **Configuration** ([`decode_vtcr`], then the VTTBR): an unsupported
//!    capability value, a reserved `TG0`, an effective `SL2`, `T0SZ`
//!    outside the supported range (`AArch64.S2TxSZFaults`), a reserved or
//!    unusable `SL0` (`AArch64.S2InvalidSL`), a start level inconsistent
//!    with the IPA size (`AArch64.S2InconsistentSL`: fewer than 2 entries
//!    or more than 16 concatenated tables at the start level), or a
//!    misaligned root → [`Stage2Fault::InvalidConfig`]. The hardware
//!    reports all but the last as a level-0 Translation fault.
//! 2. **IPA range**: any IPA bit at or above the IPA size →
//!    `Translation { level: 0 }` (`AArch64.IPAIsOutOfRange`; always level 0).
//! 3. **Root**: the address of the first descriptor above the output size
//!    → `AddressSize { level: 0 }` (the "translation table base" case).
//! 4. Per level, from the start level: read the descriptor
//!    ([`Stage2Fault::EntryOutsideMemory`] if it is not in memory);
//!    bit 0 = 0 → Translation fault; bit 1 = 0 at level 3, or a block at a
//!    level where blocks are not supported → Translation fault; a table
//!    descriptor whose next-level descriptor address is above the output
//!    size → Address size fault **at the table descriptor's level**.
//! 5. At the leaf: output address above the output size → Address size
//!    fault; AF = 0 without hardware AF management → Access flag fault;
//!    then the permission check → Permission fault. This is the manual's
//!    priority within stage 2: translation, address size, access flag,
//!    permission.
//! 6. Only if all of that passes does [`translate`] write: AF (with HA) and
//!    S2AP\[1\] (with HA+HD, DBM = 1, on a write), in one write of the leaf.
//!
//! # Choices where the manual leaves room, or that this walker makes
//!
//! * **Misaligned root.** `VTTBR_EL2.BADDR` bits below the root's alignment
//!   are RES0 and a non-zero value is CONSTRAINED UNPREDICTABLE (the
//!   pseudocode treats them as zero). The walker reports
//!   [`Stage2Fault::InvalidConfig`] ([`ConfigError::RootMisaligned`]). The
//!   alignment is the size of the whole (concatenated) root, at least 64
//!   bytes when the 52-bit BADDR layout is in use.
//! * **`T0SZ` out of range.** Below the minimum the manual faults when
//!   FEAT_LPA is implemented and is IMPLEMENTATION DEFINED (fault or clamp)
//!   otherwise; above the maximum (39, i.e. an IPA of fewer than 25 bits,
//!   FEAT_TTST not modelled) it is IMPLEMENTATION DEFINED. The walker always
//!   reports [`Stage2Fault::InvalidConfig`].
//! * **`SL2`** (level −1 start, 4 KiB + FEAT_LPA2 + DS = 1) is refused
//!   ([`ConfigError::Sl2`]): stage 2 with concatenation never needs it.
//!   When SL2 has no effect (no LPA2, DS = 0, or not 4 KiB) the bit is
//!   ignored, as RES0 bits are.
//! * **4 KiB `SL0` = 3** (start at level 3) needs FEAT_TTST, which is not
//!   modelled: refused as reserved.
//! * **Reserved `TG0` (0b11)** selects an IMPLEMENTATION DEFINED granule in
//!   the manual; refused here. All three granules are assumed supported.
//! * **`PS` = 0b111** decodes as 56 bits in the pseudocode (FEAT_D128) and
//!   is then capped like every other value, so it behaves as the largest
//!   supported size; the walker does the same.
//! * **64 KiB descriptor bits 15:12** are OA\[51:48\] with FEAT_LPA; without
//!   it the pseudocode leaves it IMPLEMENTATION DEFINED whether they are.
//!   The walker always takes them as OA\[51:48\], so a non-zero value with an
//!   output size below 52 bits is an Address size fault.
//! * **4/16 KiB descriptor bits 49:48 with DS = 0** are RES0 and not part of
//!   the output address (`AArch64.LeafBase`); they are ignored.
//! * **Instruction fetch from stage-2 Device memory** is a Permission fault
//!   (`AArch64.S2CheckPermission`; older editions made it CONSTRAINED
//!   UNPREDICTABLE between that and treating the location as Normal
//!   Non-cacheable). With FEAT_S2FWB, MemAttr = 0bx111 ("use the stage-1
//!   attributes") is not Device as far as this walker can tell.
//! * **Contiguous bit.** The output address is formed as `StageOA` does:
//!   with the bit set, the address bits inside the whole contiguous range
//!   come from the IPA. The IMPLEMENTATION DEFINED Translation fault for a
//!   contiguous range larger than the IPA space is not raised.
//! * **Hardware updates only on success.** The pseudocode also sets AF when
//!   the access then takes a Permission fault
//!   (`AArch64.SettingAccessFlagPermitted`); this walker writes nothing on
//!   any fault, so an oracle comparison never depends on how far a faulting
//!   walk got. HD is effective only together with HA (both updates and the
//!   DBM permission rule require HA = HD = 1).
//! * **Not modelled** (assumed disabled / not implemented): FEAT_S2PIE and
//!   S2POE, FEAT_THE (AssuredOnly, bit 58), FEAT_HAFT (AF in table
//!   descriptors), FEAT_BBM's nT bit 16, FEAT_XS (FnXS, bit 11), FEAT_MTE_PERM
//!   (NoTagAccess encodings), Realm/Secure stage 2 (NS bit 55), FEAT_D128,
//!   alignment faults, HCR_EL2.PTW/ID, big-endian table walks. Bits 58:55
//!   (software use) and all non-address bits of table descriptors are
//!   ignored.
//! * **Memory outside the image.** Real hardware would read *something*
//!   (or take an external abort); the walker reports
//!   [`Stage2Fault::EntryOutsideMemory`].

use std::fmt;

use crate::{bit_range, read_u64_le, set_bits_le, Access, PhysMem};

// --- VTCR_EL2 (register description "VTCR_EL2, Virtualization Translation
//     Control Register") ---

/// Bits 5:0 T0SZ: the IPA size is 64 − T0SZ bits.
const VTCR_T0SZ_MASK: u64 = 0x3F;
/// Bits 7:6 SL0: starting level of the stage-2 lookup (meaning per granule).
const VTCR_SL0_SHIFT: u32 = 6;
/// Bits 13:12 SH0: shareability of table walks; with DS = 1 also the
/// shareability of every stage-2 output (descriptor bits 9:8 become OA bits).
const VTCR_SH0_SHIFT: u32 = 12;
/// Bits 15:14 TG0: granule, 0b00 = 4 KiB, 0b01 = 64 KiB, 0b10 = 16 KiB, 0b11 reserved.
const VTCR_TG0_SHIFT: u32 = 14;
/// TG0 value for the 4 KiB granule.
const TG0_4K: u64 = 0b00;
/// TG0 value for the 64 KiB granule.
const TG0_64K: u64 = 0b01;
/// TG0 value for the 16 KiB granule.
const TG0_16K: u64 = 0b10;
/// Bits 18:16 PS: physical (output) address size.
const VTCR_PS_SHIFT: u32 = 16;
/// PS value 0b110: 52 bits (also selects the 52-bit BADDR layout with 64 KiB + FEAT_LPA).
const PS_52: u64 = 0b110;
/// Bit 21 HA: hardware Access flag update for stage 2 (FEAT_HAFDBS).
const VTCR_HA: u64 = 1 << 21;
/// Bit 22 HD: hardware management of dirty state for stage 2 (FEAT_HAFDBS).
const VTCR_HD: u64 = 1 << 22;
/// Bit 32 DS: 52-bit output addresses with the 4/16 KiB granules (FEAT_LPA2).
const VTCR_DS: u64 = 1 << 32;
/// Bit 33 SL2: with SL0 = 0b00, start at level −1 (4 KiB, FEAT_LPA2, DS = 1).
const VTCR_SL2: u64 = 1 << 33;

/// The architected PARange / PS sizes (ID_AA64MMFR0_EL1.PARange 0b0000 … 0b0110).
const PA_SIZES: [u8; 7] = [32, 36, 40, 42, 44, 48, 52];
/// Smallest IPA size without FEAT_TTST: `AArch64.MaxTxSZ` = 39.
const MIN_IPA_BITS: u8 = 64 - 39;

// --- VTTBR_EL2 (register description "VTTBR_EL2, Virtualization
//     Translation Table Base Register"; pseudocode `AArch64.S2TTBaseAddress`) ---

/// Bits 47:1 BADDR in the 48-bit layout (bit 0 is CnP, bits 63:48 VMID).
const VTTBR_BADDR_48: u64 = bit_range(47, 1);
/// Bits 47:6 BADDR\[47:6\] in the 52-bit layout.
const VTTBR_BADDR_52_LOW: u64 = bit_range(47, 6);
/// Bits 5:2 hold BADDR\[51:48\] in the 52-bit layout.
const VTTBR_BADDR_52_HIGH_SHIFT: u32 = 2;
/// Minimum root alignment in the 52-bit layout: 64 bytes (`tsize = Max(tsize, 6)`).
const BADDR_52_MIN_ALIGN_SHIFT: u32 = 6;

// --- Descriptors ("Translation table descriptor formats", D8.3 / D5.3) ---

/// Bit 0: valid.
const DESC_VALID: u64 = 1 << 0;
/// Bit 1: 1 = table (levels 0–2) or page (level 3); 0 = block.
const DESC_TABLE_OR_PAGE: u64 = 1 << 1;
/// Bits 5:2 of a leaf: MemAttr\[3:0\].
const DESC_MEMATTR_SHIFT: u32 = 2;
/// Bit 6 of a leaf: S2AP\[0\], read permission.
const DESC_S2AP_R: u64 = 1 << 6;
/// Bit 7 of a leaf: S2AP\[1\], write permission (the "dirty state" with DBM).
const DESC_S2AP_W: u64 = 1 << 7;
/// Bits 9:8 of a leaf: SH\[1:0\] (DS = 0) or OA\[51:50\] (DS = 1).
const DESC_SH_SHIFT: u32 = 8;
/// Bit 10 of a leaf: AF, the Access flag.
const DESC_AF: u64 = 1 << 10;
/// Bits 15:12 with the 64 KiB granule: OA\[51:48\] (FEAT_LPA).
const DESC_OA_64K_HIGH_SHIFT: u32 = 12;
/// Bits 49:48 with DS = 1: OA\[49:48\].
const DESC_OA_LPA2_49_48_SHIFT: u32 = 48;
/// Bit 51 of a leaf: DBM, dirty bit modifier (FEAT_HAFDBS).
const DESC_DBM: u64 = 1 << 51;
/// Bit 52 of a leaf: Contiguous.
const DESC_CONTIGUOUS: u64 = 1 << 52;
/// Bit 53 of a leaf: XN\[0\] with FEAT_XNX (otherwise RES0 / ignored).
const DESC_XN0: u64 = 1 << 53;
/// Bit 54 of a leaf: XN\[1\] with FEAT_XNX, the XN bit without it.
const DESC_XN1: u64 = 1 << 54;
/// Highest output-address bit held in place in a descriptor.
const DESC_OA_TOP_IN_PLACE: u32 = 47;

/// Processor capabilities and hypervisor controls the walk depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stage2Caps {
    /// Implemented PA size, PAMax (ID_AA64MMFR0_EL1.PARange): one of 32, 36,
    /// 40, 42, 44, 48, 52. A value of 52 implies FEAT_LPA.
    pub pa_range_bits: u8,
    /// FEAT_LPA2: `VTCR_EL2.DS` is effective for the 4/16 KiB granules.
    pub lpa2: bool,
    /// FEAT_LPA: 52-bit output addresses with the 64 KiB granule.
    pub lpa_64k: bool,
    /// FEAT_XNX: descriptor bit 53 is XN\[0\] (separate EL1/EL0 execute-never).
    pub xnx: bool,
    /// HCR_EL2.FWB = 1 (FEAT_S2FWB): MemAttr uses the FWB encoding.
    pub fwb: bool,
    /// FEAT_HAFDBS with dirty-state support: `VTCR_EL2.HA`/`HD` are effective.
    pub ha_hd: bool,
}

/// A decoded, valid VTCR_EL2 (for the given capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stage2Config {
    /// log2 of the granule: 12 (4 KiB), 14 (16 KiB) or 16 (64 KiB).
    pub granule_shift: u8,
    /// IPA size, 64 − T0SZ.
    pub ipa_bits: u8,
    /// Level of the initial lookup (0..=3).
    pub start_level: i8,
    /// Number of concatenated tables at the start level (1..=16).
    pub concatenated_tables: u8,
    /// Size in bytes of the whole initial (concatenated) table; the root
    /// must be aligned to this (and to 64 bytes in the 52-bit BADDR layout).
    /// Can be smaller than one granule (e.g. 64 KiB granule, 52-bit IPA).
    pub root_bytes: u64,
    /// Effective output-address size (`AArch64.PhysicalAddressSize`).
    pub oa_bits: u8,
    /// Hardware Access flag update enabled (VTCR.HA and FEAT_HAFDBS).
    pub ha: bool,
    /// Hardware dirty-state management enabled (VTCR.HD, VTCR.HA and FEAT_HAFDBS).
    pub hd: bool,
    /// Effective VTCR.DS (FEAT_LPA2, 4/16 KiB only).
    pub lpa2: bool,
    /// VTCR.SH0 (bits 13:12): the output shareability when `lpa2` is set.
    pub sh0: u8,
    /// VTTBR.BADDR uses the 52-bit layout (BADDR\[51:48\] in bits 5:2).
    pub baddr_52: bool,
}

/// Why a configuration is invalid (all reported as
/// [`Stage2Fault::InvalidConfig`] by [`translate`], [`peek`] and
/// [`decode_vtcr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigError {
    /// [`Stage2Caps::pa_range_bits`] is not an architected PARange size.
    PaRange(u8),
    /// VTCR.TG0 = 0b11 (reserved).
    ReservedGranule,
    /// VTCR.SL2 = 1 where it is effective (level −1 start; not modelled).
    Sl2,
    /// SL0 is reserved for this granule, or needs a feature / PA size the
    /// processor lacks (`AArch64.S2InvalidSL`); carries SL0.
    InvalidSl0(u8),
    /// The IPA size is above the maximum (64 − minimum T0SZ, `AArch64.S2MinTxSZ`).
    IpaTooLarge {
        /// 64 − T0SZ.
        ipa_bits: u8,
        /// The largest IPA size allowed.
        max: u8,
    },
    /// The IPA size is below 25 bits (T0SZ > 39; FEAT_TTST not modelled).
    IpaTooSmall {
        /// 64 − T0SZ.
        ipa_bits: u8,
    },
    /// The start level cannot resolve this IPA size with 2..=16×(table)
    /// entries at the start level (`AArch64.S2InconsistentSL`).
    InconsistentStartLevel {
        /// Start level selected by SL0.
        start_level: i8,
        /// 64 − T0SZ.
        ipa_bits: u8,
    },
    /// VTTBR.BADDR is not aligned to the root (see the module docs).
    RootMisaligned {
        /// The base address as decoded from VTTBR.
        root: u64,
        /// The required alignment in bytes.
        align: u64,
    },
}

/// Stage-2 Device memory types (MemAttr\[1:0\]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// Device-nGnRnE (0b00).
    NGnRnE,
    /// Device-nGnRE (0b01).
    NGnRE,
    /// Device-nGRE (0b10).
    NGRE,
    /// Device-GRE (0b11).
    GRE,
}

/// Stage-2 cacheability of Normal memory (`S2DecodeCacheability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cacheability {
    /// 0b01: Non-cacheable.
    NonCacheable,
    /// 0b10: Write-Through Cacheable.
    WriteThrough,
    /// 0b11: Write-Back Cacheable.
    WriteBack,
    /// 0b00 for the inner field of a Normal encoding: not a defined
    /// cacheability (MemAttr 0b0100 is "NoTagAccess" with FEAT_MTE_PERM).
    Reserved,
}

/// The memory type a stage-2 leaf assigns (before combining with stage 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage2MemKind {
    /// Device memory of the given type.
    Device(DeviceType),
    /// Normal memory with the given outer and inner cacheability. With FWB
    /// these force the result (0b101 Non-cacheable, 0b110 Write-Back).
    Normal {
        /// Outer cacheability.
        outer: Cacheability,
        /// Inner cacheability.
        inner: Cacheability,
    },
    /// FWB only, MemAttr\[2:0\] = 0b111: the stage-1 attributes are used.
    Stage1,
}

impl Stage2MemKind {
    /// True for Device memory.
    pub const fn is_device(self) -> bool {
        matches!(self, Stage2MemKind::Device(_))
    }
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stage2Translation {
    /// The full output (physical) address.
    pub pa: u64,
    /// Level of the leaf descriptor (block or page).
    pub level: i8,
    /// Size of the block or page mapped by the leaf, in bytes.
    pub block_size: u64,
    /// Data reads allowed (S2AP\[0\]).
    pub read: bool,
    /// Data writes allowed: S2AP\[1\], or DBM = 1 with HA = HD = 1.
    pub write: bool,
    /// Instruction fetches at EL1 allowed (XN/XNX, and not Device memory).
    pub exec_el1: bool,
    /// Instruction fetches at EL0 allowed (XN/XNX, and not Device memory).
    pub exec_el0: bool,
    /// MemAttr\[3:0\], raw (descriptor bits 5:2).
    pub memattr: u8,
    /// Whether `memattr` is in the FEAT_S2FWB encoding (HCR_EL2.FWB).
    pub fwb: bool,
    /// `memattr` decoded for the encoding in use.
    pub mem_kind: Stage2MemKind,
    /// SH\[1:0\] (bits 9:8); `None` with DS = 1, where shareability is
    /// [`Stage2Config::sh0`] and bits 9:8 are OA\[51:50\].
    pub sh: Option<u8>,
    /// Access flag of the leaf after the walk.
    pub af: bool,
    /// DBM bit (51) of the leaf.
    pub dbm: bool,
    /// Dirty state after the walk: S2AP\[1\] = 1 and DBM = 1.
    pub dirty: bool,
    /// Contiguous bit (52), as the architecture reads it (RES0 at 64 KiB
    /// level 1, 16 KiB level 1 and 4 KiB level 0).
    pub contiguous: bool,
    /// The leaf descriptor after the walk (including any update just made).
    pub leaf_entry: u64,
}

/// Why a translation failed. The architectural faults carry the lookup
/// level the hardware reports in ESR_EL2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage2Fault {
    /// The VTCR/VTTBR/capability combination is invalid (the hardware
    /// raises a level-0 Translation fault, or behaves in a CONSTRAINED
    /// UNPREDICTABLE way). See [`decode_vtcr_detailed`] for the reason.
    InvalidConfig,
    /// Translation fault.
    Translation {
        /// Lookup level.
        level: i8,
    },
    /// Address size fault (level 0 also covers the root address).
    AddressSize {
        /// Lookup level.
        level: i8,
    },
    /// Access flag fault (AF = 0 without hardware AF management).
    AccessFlag {
        /// Lookup level.
        level: i8,
    },
    /// Permission fault.
    Permission {
        /// Lookup level.
        level: i8,
    },
    /// A descriptor lies outside the memory (reading it, or writing back
    /// its hardware update, failed). Not an architectural event.
    EntryOutsideMemory {
        /// Lookup level of the descriptor.
        level: i8,
        /// Physical address of the descriptor.
        pa: u64,
    },
}

impl Stage2Fault {
    /// The ESR_EL2 DFSC/IFSC value the hardware would report, for the
    /// architectural faults at levels 0..=3: 0b0000LL address size,
    /// 0b0001LL translation, 0b0010LL access flag, 0b0011LL permission.
    /// `None` for [`Stage2Fault::InvalidConfig`] (reported by hardware as a
    /// level-0 translation fault, 0x04), [`Stage2Fault::EntryOutsideMemory`]
    /// and levels outside 0..=3.
    pub fn fsc(&self) -> Option<u8> {
        let (base, level) = match *self {
            Stage2Fault::AddressSize { level } => (0x00, level),
            Stage2Fault::Translation { level } => (0x04, level),
            Stage2Fault::AccessFlag { level } => (0x08, level),
            Stage2Fault::Permission { level } => (0x0C, level),
            Stage2Fault::InvalidConfig | Stage2Fault::EntryOutsideMemory { .. } => return None,
        };
        u8::try_from(level)
            .ok()
            .filter(|l| *l <= 3)
            .map(|l| base | l)
    }
}

impl fmt::Display for Stage2Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage2Fault::InvalidConfig => write!(f, "invalid stage-2 configuration"),
            Stage2Fault::Translation { level } => write!(f, "level {level} translation fault"),
            Stage2Fault::AddressSize { level } => write!(f, "level {level} address size fault"),
            Stage2Fault::AccessFlag { level } => write!(f, "level {level} access flag fault"),
            Stage2Fault::Permission { level } => write!(f, "level {level} permission fault"),
            Stage2Fault::EntryOutsideMemory { level, pa } => {
                write!(
                    f,
                    "level-{level} stage-2 descriptor at {pa:#x} is outside memory"
                )
            }
        }
    }
}

impl std::error::Error for Stage2Fault {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::PaRange(b) => write!(f, "PA range {b} bits is not architected"),
            ConfigError::ReservedGranule => write!(f, "VTCR_EL2.TG0 is reserved"),
            ConfigError::Sl2 => write!(f, "VTCR_EL2.SL2 (level -1 start) is not supported"),
            ConfigError::InvalidSl0(sl0) => write!(f, "VTCR_EL2.SL0 = {sl0} is invalid here"),
            ConfigError::IpaTooLarge { ipa_bits, max } => {
                write!(f, "IPA size {ipa_bits} bits exceeds the maximum {max}")
            }
            ConfigError::IpaTooSmall { ipa_bits } => {
                write!(
                    f,
                    "IPA size {ipa_bits} bits is below the minimum {MIN_IPA_BITS}"
                )
            }
            ConfigError::InconsistentStartLevel {
                start_level,
                ipa_bits,
            } => write!(
                f,
                "start level {start_level} is inconsistent with a {ipa_bits}-bit IPA"
            ),
            ConfigError::RootMisaligned { root, align } => {
                write!(f, "root {root:#x} is not aligned to {align:#x}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Decodes VTCR_EL2 for `caps`.
///
/// # Errors
///
/// [`Stage2Fault::InvalidConfig`] for any invalid combination (see
/// [`decode_vtcr_detailed`] for the reason).
pub fn decode_vtcr(vtcr: u64, caps: &Stage2Caps) -> Result<Stage2Config, Stage2Fault> {
    decode_vtcr_detailed(vtcr, caps).map_err(|_| Stage2Fault::InvalidConfig)
}

/// Decodes VTCR_EL2 for `caps`, saying why a combination is invalid.
///
/// Start level, validity and concatenation follow `AArch64.S2StartLevel`,
/// `AArch64.S2InvalidSL`, `AArch64.S2InconsistentSL` and
/// `AArch64.S2MinTxSZ`; the output size `AArch64.PhysicalAddressSize`.
///
/// # Errors
///
/// The first [`ConfigError`] found, checked in this order: capabilities,
/// TG0, SL2, T0SZ, SL0, start level against the IPA size.
pub fn decode_vtcr_detailed(vtcr: u64, caps: &Stage2Caps) -> Result<Stage2Config, ConfigError> {
    let pamax = caps.pa_range_bits;
    if !PA_SIZES.contains(&pamax) {
        return Err(ConfigError::PaRange(pamax));
    }
    let tg0 = (vtcr >> VTCR_TG0_SHIFT) & 0b11;
    let granule_shift: u8 = match tg0 {
        TG0_4K => 12,
        TG0_16K => 14,
        TG0_64K => 16,
        _ => return Err(ConfigError::ReservedGranule),
    };
    let is_64k = granule_shift == 16;
    // DS is effective only with FEAT_LPA2 and the 4/16 KiB granules
    // (AArch64.GetS2TTWParams); otherwise it is RES0.
    let lpa2 = caps.lpa2 && !is_64k && vtcr & VTCR_DS != 0;
    // SL2 is effective only with 4 KiB, FEAT_LPA2 and DS = 1.
    if vtcr & VTCR_SL2 != 0 && granule_shift == 12 && lpa2 {
        return Err(ConfigError::Sl2);
    }
    let lpa_64k = caps.lpa_64k && is_64k;

    // AArch64.S2MinTxSZ: the IPA may be as wide as PAMax, but only 48 bits
    // unless the 52-bit descriptor format is in use (64 KiB + FEAT_LPA, or DS).
    let ipa_bits = 64 - (vtcr & VTCR_T0SZ_MASK) as u8;
    let max_ipa = if pamax == 52 && !(lpa_64k || lpa2) {
        48
    } else {
        pamax
    };
    if ipa_bits > max_ipa {
        return Err(ConfigError::IpaTooLarge {
            ipa_bits,
            max: max_ipa,
        });
    }
    if ipa_bits < MIN_IPA_BITS {
        return Err(ConfigError::IpaTooSmall { ipa_bits });
    }

    // AArch64.S2StartLevel and AArch64.S2InvalidSL (VTCR_EL2.SL0 field
    // description: the meaning of SL0 depends on TG0).
    let sl0 = ((vtcr >> VTCR_SL0_SHIFT) & 0b11) as u8;
    let invalid = Err(ConfigError::InvalidSl0(sl0));
    let start_level: i8 = match (granule_shift, sl0) {
        (12, 0b00) => 2,
        (12, 0b01) => 1,
        (12, 0b10) if pamax >= 44 => 0,
        // 0b11 = level 3 needs FEAT_TTST (not modelled).
        (12, _) => return invalid,
        (14, 0b00) => 3,
        (14, 0b01) => 2,
        (14, 0b10) if pamax >= 42 => 1,
        (14, 0b11) if lpa2 && pamax >= 52 => 0,
        (14, _) => return invalid,
        (16, 0b00) => 3,
        (16, 0b01) => 2,
        (16, 0b10) if pamax >= 44 => 1,
        _ => return invalid,
    };

    // AArch64.S2InconsistentSL: the start level must resolve at least one
    // IPA bit (2 entries) and at most stride + 4 bits (16 concatenated tables).
    let g = u32::from(granule_shift);
    let stride = g - 3;
    let levels = (3 - start_level) as u32; // 0..=3
    let below_start = levels * stride + g;
    let start_bits = u32::from(ipa_bits).saturating_sub(below_start);
    if start_bits < 1 || start_bits > stride + 4 {
        return Err(ConfigError::InconsistentStartLevel {
            start_level,
            ipa_bits,
        });
    }
    let concatenated_tables = if start_bits > stride {
        1u8 << (start_bits - stride)
    } else {
        1
    };
    let root_bytes = 1u64 << (start_bits + 3);

    // AArch64.PhysicalAddressSize: PS capped by PAMax and by 48 bits unless
    // FEAT_LPA with 64 KiB, or FEAT_LPA2.
    let ps_field = (vtcr >> VTCR_PS_SHIFT) & 0b111;
    let ps: u8 = match ps_field {
        0b000 => 32,
        0b001 => 36,
        0b010 => 40,
        0b011 => 42,
        0b100 => 44,
        0b101 => 48,
        0b110 => 52,
        _ => 56,
    };
    // 52-bit output on 4K/16K needs DS = 1 (FEAT_LPA2 in use), not only the feature: with
    // DS = 0 a PS of 0b110 gives 48 bits.
    let cap = if lpa_64k || lpa2 { 52 } else { 48 };
    let oa_bits = ps.min(cap).min(pamax);

    let ha = caps.ha_hd && vtcr & VTCR_HA != 0;
    let hd = ha && vtcr & VTCR_HD != 0;
    Ok(Stage2Config {
        granule_shift,
        ipa_bits,
        start_level,
        concatenated_tables,
        root_bytes,
        oa_bits,
        ha,
        hd,
        lpa2,
        sh0: ((vtcr >> VTCR_SH0_SHIFT) & 0b11) as u8,
        // AArch64.S2TTBaseAddress: DS, or 64 KiB with PS = 52 bits and FEAT_LPA.
        baddr_52: lpa2 || (lpa_64k && ps_field == PS_52),
    })
}

/// The root (initial table) address held in `vttbr` for `cfg`
/// (`AArch64.S2TTBaseAddress`), refusing a misaligned one. VMID (63:48) and
/// CnP (bit 0) are ignored.
///
/// # Errors
///
/// [`ConfigError::RootMisaligned`] if BADDR has bits set below the root's
/// alignment.
pub fn decode_vttbr(vttbr: u64, cfg: &Stage2Config) -> Result<u64, ConfigError> {
    let (root, align) = if cfg.baddr_52 {
        let high = ((vttbr >> VTTBR_BADDR_52_HIGH_SHIFT) & 0xF) << 48;
        let align = cfg.root_bytes.max(1 << BADDR_52_MIN_ALIGN_SHIFT);
        (high | (vttbr & VTTBR_BADDR_52_LOW), align)
    } else {
        (vttbr & VTTBR_BADDR_48, cfg.root_bytes)
    };
    if root & (align - 1) != 0 {
        return Err(ConfigError::RootMisaligned { root, align });
    }
    Ok(root)
}

/// Decodes MemAttr\[3:0\] of a stage-2 leaf, in the FEAT_S2FWB encoding
/// when `fwb` is set.
///
/// Without FWB ("... when FEAT_S2FWB is disabled", `S2DecodeMemAttrs`):
/// MemAttr\[3:2\] = 0b00 is Device with type MemAttr\[1:0\]; otherwise Normal
/// with outer = MemAttr\[3:2\], inner = MemAttr\[1:0\].
///
/// With FWB ("... when FEAT_S2FWB is enabled", `AArch64.S2ApplyFWBMemAttrs`):
/// MemAttr\[2\] = 0 is Device with type MemAttr\[1:0\]; MemAttr\[2:0\] = 0b111
/// uses the stage-1 attributes, 0b110 forces Normal Write-Back, 0b101 (and,
/// per the pseudocode, 0b100) forces Normal Non-cacheable. MemAttr\[3\] only
/// matters for FEAT_MTE_PERM and is ignored.
pub fn decode_memattr(memattr: u8, fwb: bool) -> Stage2MemKind {
    let device = |bits: u8| match bits & 0b11 {
        0b00 => DeviceType::NGnRnE,
        0b01 => DeviceType::NGnRE,
        0b10 => DeviceType::NGRE,
        _ => DeviceType::GRE,
    };
    if fwb {
        if memattr & 0b100 == 0 {
            return Stage2MemKind::Device(device(memattr));
        }
        let c = match memattr & 0b11 {
            0b11 => return Stage2MemKind::Stage1,
            0b10 => Cacheability::WriteBack,
            _ => Cacheability::NonCacheable,
        };
        return Stage2MemKind::Normal { outer: c, inner: c };
    }
    let cache = |bits: u8| match bits & 0b11 {
        0b01 => Cacheability::NonCacheable,
        0b10 => Cacheability::WriteThrough,
        0b11 => Cacheability::WriteBack,
        _ => Cacheability::Reserved,
    };
    if (memattr >> 2) & 0b11 == 0 {
        Stage2MemKind::Device(device(memattr))
    } else {
        Stage2MemKind::Normal {
            outer: cache(memattr >> 2),
            inner: cache(memattr),
        }
    }
}

/// Translates `ipa` for `access`, applying the hardware updates of
/// FEAT_HAFDBS when they are enabled (`VTCR_EL2.HA`, `HD` and
/// [`Stage2Caps::ha_hd`]): AF is set in a leaf with AF = 0, and on a write
/// S2AP\[1\] is set in a leaf with DBM = 1. Nothing is written unless the
/// translation succeeds (see the module docs).
///
/// # Errors
///
/// The fault the hardware would report (see "Order of checks" in the module
/// docs), [`Stage2Fault::InvalidConfig`] for an invalid VTCR/VTTBR, or
/// [`Stage2Fault::EntryOutsideMemory`] if a descriptor cannot be read or
/// its update written.
pub fn translate<M: PhysMem + ?Sized>(
    mem: &mut M,
    vtcr: u64,
    vttbr: u64,
    caps: &Stage2Caps,
    ipa: u64,
    access: Access,
) -> Result<Stage2Translation, Stage2Fault> {
    let w = walk(&*mem, vtcr, vttbr, caps, ipa, access)?;
    let mut t = w.translation;
    if w.update != 0 {
        let (level, pa) = (t.level, w.leaf_pa);
        let new =
            set_bits_le(mem, pa, w.update).ok_or(Stage2Fault::EntryOutsideMemory { level, pa })?;
        t.leaf_entry = new;
        t.af = new & DESC_AF != 0;
        t.dirty = is_dirty(new);
    }
    Ok(t)
}

/// Same as [`translate`] but never writes: `af`, `dirty` and `leaf_entry`
/// report the leaf as it is in memory. An access that [`translate`] would
/// complete by setting AF or the dirty state succeeds here too.
///
/// # Errors
///
/// As for [`translate`].
pub fn peek<M: PhysMem + ?Sized>(
    mem: &M,
    vtcr: u64,
    vttbr: u64,
    caps: &Stage2Caps,
    ipa: u64,
    access: Access,
) -> Result<Stage2Translation, Stage2Fault> {
    walk(mem, vtcr, vttbr, caps, ipa, access).map(|w| w.translation)
}

/// Outcome of a successful read-only walk.
struct Walk {
    translation: Stage2Translation,
    /// Physical address of the leaf descriptor.
    leaf_pa: u64,
    /// Bits the hardware would set in the leaf (AF, S2AP\[1\]).
    update: u64,
}

/// S2AP\[1\] = 1 and DBM = 1: the "dirty" state of a DBM-managed leaf.
fn is_dirty(entry: u64) -> bool {
    entry & (DESC_S2AP_W | DESC_DBM) == (DESC_S2AP_W | DESC_DBM)
}

/// Whether `addr` has bits at or above `oa_bits` (`AArch64.OAOutOfRange`).
fn oa_out_of_range(addr: u64, oa_bits: u8) -> bool {
    oa_bits < 64 && addr >> oa_bits != 0
}

/// Output-address bits 51:48 held outside bits 47:granule: bits 15:12 with
/// 64 KiB (see the module docs), bits 9:8 and 49:48 with DS = 1
/// (`AArch64.LeafBase` / `AArch64.NextTableBase`).
fn oa_high_bits(entry: u64, cfg: &Stage2Config) -> u64 {
    if cfg.granule_shift == 16 {
        ((entry >> DESC_OA_64K_HIGH_SHIFT) & 0xF) << 48
    } else if cfg.lpa2 {
        let oa_49_48 = (entry >> DESC_OA_LPA2_49_48_SHIFT) & 0b11;
        let oa_51_50 = (entry >> DESC_SH_SHIFT) & 0b11;
        (oa_51_50 << 50) | (oa_49_48 << 48)
    } else {
        0
    }
}

/// Whether a block descriptor is allowed at `level` (`AArch64.BlockDescSupported`).
fn block_allowed(level: i8, cfg: &Stage2Config, caps: &Stage2Caps) -> bool {
    match (cfg.granule_shift, level) {
        (12, 1 | 2) | (14, 2) | (16, 2) => true,
        (12, 0) | (14, 1) => cfg.lpa2,
        // 4 TiB blocks exist with 64 KiB when PAMax is 52 (FEAT_LPA).
        (16, 1) => caps.lpa_64k && caps.pa_range_bits >= 52,
        _ => false,
    }
}

/// Contiguous bit as read at `level` (`AArch64.ContiguousBit`): RES0 for
/// 64 KiB level-1 blocks and for the DS-only 16 KiB level-1 / 4 KiB level-0
/// blocks.
fn contiguous_bit(entry: u64, level: i8, granule_shift: u8) -> bool {
    let res0 = matches!((granule_shift, level), (16, 1) | (14, 1) | (12, 0));
    !res0 && entry & DESC_CONTIGUOUS != 0
}

/// log2 of the number of entries in a contiguous run (`ContiguousSize`):
/// 16 for 4 KiB; 32 (level 2) or 128 (level 3) for 16 KiB; 32 for 64 KiB.
fn contiguous_bits(granule_shift: u8, level: i8) -> u32 {
    match (granule_shift, level) {
        (12, _) => 4,
        (14, 2) => 5,
        (14, _) => 7,
        _ => 5,
    }
}

/// The read-only walk shared by [`translate`] and [`peek`].
fn walk<M: PhysMem + ?Sized>(
    mem: &M,
    vtcr: u64,
    vttbr: u64,
    caps: &Stage2Caps,
    ipa: u64,
    access: Access,
) -> Result<Walk, Stage2Fault> {
    let cfg = decode_vtcr(vtcr, caps)?;
    let root = decode_vttbr(vttbr, &cfg).map_err(|_| Stage2Fault::InvalidConfig)?;
    // ipa_bits is 25..=52 here.
    if ipa >> cfg.ipa_bits != 0 {
        return Err(Stage2Fault::Translation { level: 0 });
    }
    let g = u32::from(cfg.granule_shift);
    let stride = g - 3;
    // Bits of the IPA resolved below `level`: the leaf's size at that level.
    let lsb_of = |level: i8| g + stride * (3 - level) as u32;

    let mut level = cfg.start_level;
    // Initial lookup: index = ipa[ipa_bits-1 : lsb], which may span the
    // concatenated tables (AArch64.S2SLTTEntryAddress).
    let first_width = u32::from(cfg.ipa_bits) - lsb_of(level);
    let mut pa = root | (((ipa >> lsb_of(level)) & ((1u64 << first_width) - 1)) << 3);
    if oa_out_of_range(pa, cfg.oa_bits) {
        return Err(Stage2Fault::AddressSize { level: 0 });
    }
    loop {
        let entry = read_u64_le(mem, pa).ok_or(Stage2Fault::EntryOutsideMemory { level, pa })?;
        if entry & DESC_VALID == 0 {
            return Err(Stage2Fault::Translation { level });
        }
        let is_table_or_page = entry & DESC_TABLE_OR_PAGE != 0;
        if level < 3 && is_table_or_page {
            // Table descriptor: next-level table address, same OA encoding.
            let next_table =
                (entry & bit_range(DESC_OA_TOP_IN_PLACE, g)) | oa_high_bits(entry, &cfg);
            level += 1;
            let index = (ipa >> lsb_of(level)) & ((1u64 << stride) - 1);
            let next_pa = next_table | (index << 3);
            if oa_out_of_range(next_pa, cfg.oa_bits) {
                // Reported at the level of the table descriptor.
                return Err(Stage2Fault::AddressSize { level: level - 1 });
            }
            pa = next_pa;
            continue;
        }
        // Leaf: a page at level 3 (bit 1 = 1) or a block above it (bit 1 = 0).
        if (level == 3 && !is_table_or_page) || (level < 3 && !block_allowed(level, &cfg, caps)) {
            return Err(Stage2Fault::Translation { level });
        }
        return leaf(entry, pa, level, lsb_of(level), ipa, &cfg, caps, access);
    }
}

/// Checks and describes the leaf `entry` found at `leaf_pa` (steps 5–6 of
/// the module docs' order of checks).
#[allow(clippy::too_many_arguments)]
fn leaf(
    entry: u64,
    leaf_pa: u64,
    level: i8,
    block_shift: u32,
    ipa: u64,
    cfg: &Stage2Config,
    caps: &Stage2Caps,
    access: Access,
) -> Result<Walk, Stage2Fault> {
    let base = (entry & bit_range(DESC_OA_TOP_IN_PLACE, block_shift)) | oa_high_bits(entry, cfg);
    let contiguous = contiguous_bit(entry, level, cfg.granule_shift);
    // StageOA: the IPA supplies the bits below the block (or the whole
    // contiguous range).
    let ia_bits = block_shift
        + if contiguous {
            contiguous_bits(cfg.granule_shift, level)
        } else {
            0
        };
    let ia_mask = (1u64 << ia_bits) - 1; // ia_bits <= 42 + 5
    let pa = (base & !ia_mask) | (ipa & ia_mask);
    if oa_out_of_range(pa, cfg.oa_bits) {
        return Err(Stage2Fault::AddressSize { level });
    }
    let af = entry & DESC_AF != 0;
    if !af && !cfg.ha {
        return Err(Stage2Fault::AccessFlag { level });
    }

    let memattr = ((entry >> DESC_MEMATTR_SHIFT) & 0xF) as u8;
    let mem_kind = decode_memattr(memattr, caps.fwb);
    let dbm = entry & DESC_DBM != 0;
    // AArch64.S2DirectBasePermissions / S2ApplyOutputPerms.
    let read = entry & DESC_S2AP_R != 0;
    let write = entry & DESC_S2AP_W != 0 || (cfg.ha && cfg.hd && dbm);
    let xn1 = entry & DESC_XN1 != 0;
    let xn0 = caps.xnx && entry & DESC_XN0 != 0;
    let (px, ux) = match (xn1, xn0) {
        (false, false) => (true, true),
        (false, true) => (false, true),
        (true, false) => (false, false),
        (true, true) => (true, false),
    };
    let device = mem_kind.is_device();
    let (exec_el1, exec_el0) = (px && !device, ux && !device);
    let allowed = match access {
        Access::Read => read,
        Access::Write => write,
        Access::ExecSupervisor => exec_el1,
        Access::ExecUser => exec_el0,
    };
    if !allowed {
        return Err(Stage2Fault::Permission { level });
    }

    let mut update = 0;
    if cfg.ha && !af {
        update |= DESC_AF;
    }
    if cfg.hd && dbm && access == Access::Write && entry & DESC_S2AP_W == 0 {
        update |= DESC_S2AP_W;
    }
    let translation = Stage2Translation {
        pa,
        level,
        block_size: 1u64 << block_shift,
        read,
        write,
        exec_el1,
        exec_el0,
        memattr,
        fwb: caps.fwb,
        mem_kind,
        sh: (!cfg.lpa2).then_some(((entry >> DESC_SH_SHIFT) & 0b11) as u8),
        af,
        dbm,
        dirty: is_dirty(entry),
        contiguous,
        leaf_entry: entry,
    };
    Ok(Walk {
        translation,
        leaf_pa,
        update,
    })
}
