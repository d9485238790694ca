//! RISC-V G-stage (guest-physical) walker, RV64 only.
//!
//! Written from *The RISC-V Instruction Set Manual, Volume II: Privileged
//! Architecture* (the ratified H extension, version 1.0, and the current
//! `riscv-isa-manual` sources):
//!
//! * H chapter, "Hypervisor Guest Address Translation and Protection
//!   (`hgatp`) Register" — the RV64 `hgatp` figure and the MODE table;
//! * H chapter, "Two-Stage Address Translation" → "Guest Physical Address
//!   Translation" — Sv39x4/Sv48x4/Sv57x4, the 16 KiB root, the rule that
//!   every G-stage access is a U-mode access, and that the G bit is ignored;
//! * Supervisor chapter, "Sv32" → "Addressing and Memory Protection" (PTE
//!   bits 9:0, the R/W/X encodings, A/D schemes, the non-leaf D/A/U rule)
//!   and "Virtual Address Translation Process" (the numbered algorithm this
//!   walker follows; its step numbers are quoted below);
//! * "Sv39" (bits 63:54 of the PTE), "Sv48", "Sv57";
//! * the Svnapot, Svpbmt, Svadu/Svade and Svrsw60t59b extension chapters.
//!
//! Levels are numbered as the spec's *i*: 0 = the 4 KiB level, up to
//! LEVELS−1 = the root (2 for Sv39x4, 3 for Sv48x4, 4 for Sv57x4).
//!
//! # Order of checks (translation process, per level *i* from the root)
//!
//! 1. Read the PTE (step 2). Outside the memory image →
//!    [`GstageFault::EntryOutsideMemory`] (hardware would raise an access
//!    fault; this walker does not model PMP/PMA).
//! 2. Step 3: V=0, or R=0 ∧ W=1, or any reserved bit/encoding set →
//!    guest-page fault. Reserved here: bits 60:54 (60:59 are software bits
//!    with Svrsw60t59b); bit 63 (N) without Svnapot; bits 62:61 (PBMT)
//!    without Svpbmt; PBMT = 3 in a leaf; in a non-leaf PTE the D, A, U
//!    bits, N and PBMT; a leaf with N=1 whose encoding the Svnapot table
//!    marks reserved (any level above 0, or `ppn[0][3:0]` ≠ `1000`).
//! 3. Step 4: R=X=0 → pointer; at level 0 that is a guest-page fault.
//! 4. Step 5: a leaf above level 0 with `ppn[i-1:0]` ≠ 0 is a misaligned
//!    superpage.
//! 5. Step 6: U=0 → guest-page fault (G-stage checks U as in U-mode).
//! 6. Step 8: R for loads, W for stores, X for fetches.
//! 7. Step 9: A=0, or a store with D=0: with Svadu enabled the leaf is
//!    updated (atomically: re-read, OR the bits in, write back), otherwise
//!    (Svade) guest-page fault.
//!
//! # Choices where the spec leaves room, or that this walker makes
//!
//! * **`hgatp.PPN[1:0]`.** The spec says the root is 16 KiB aligned and
//!   that `PPN[1:0]` "always read as zeros" in the paged modes, so an
//!   `hgatp` value with those bits set cannot be in the register. The
//!   walker refuses it ([`HgatpError::MisalignedRoot`]) instead of
//!   silently clearing them.
//! * **Bits 59:58** of `hgatp` are a read-only-zero field; a value with
//!   them set is refused ([`HgatpError::ReservedBits`]), and so is a Bare
//!   `hgatp` whose other fields are not zero ("the remaining fields in
//!   `hgatp` must be set to zeros").
//! * **Bare.** With MODE = Bare there is no table; [`translate`] returns
//!   [`GstageFault::Bare`] rather than an identity mapping.
//! * **GPA wider than the mode** (bits 63:41 / 63:50 / 63:59 not all zero)
//!   is architecturally a guest-page fault; it is reported separately as
//!   [`GstageFault::AddressTooWide`] (see [`GstageFault::is_guest_page_fault`]).
//! * **MXR.** HS-level `sstatus.MXR` would make execute-only G-stage pages
//!   readable; this walker models MXR = 0 (a load needs R).
//! * **A/D.** Updated only for translations that otherwise succeed, and
//!   only in the leaf (non-leaf A/D are reserved, see above).
//! * **Svadu enable.** Hardware A/D updating for G-stage is controlled by
//!   **`menvcfg.ADUE`** (henvcfg.ADUE controls only VS-stage), and Svpbmt
//!   for G-stage by `menvcfg.PBMTE`; [`GstageCaps`] takes the effective
//!   values.
//! * **Implicit accesses** made for VS-stage page walks are checked "as
//!   though for an implicit load or store"; callers pass the access kind
//!   they want checked.
//! * **Exception priority between a misaligned superpage and U/permission
//!   faults** follows the current spec's step order (5 before 6 and 8);
//!   older editions checked permissions first. The exception is the same
//!   guest-page fault either way; only [`GuestPageFault::reason`] differs.

use std::fmt;

use crate::{bit_range, read_u64_le, set_bits_le, Access, PhysMem};

// --- hgatp, RV64 (H chapter, "hgatp Register", figure "hgatp when HSXLEN=64") ---

/// `hgatp` bits 63:60: MODE.
const HGATP_MODE_SHIFT: u32 = 60;
/// `hgatp` bits 59:58: a read-only-zero field in the RV64 figure.
const HGATP_ZERO_BITS: u64 = bit_range(59, 58);
/// `hgatp` bits 57:44: VMID (VMIDMAX = 14 for the RV64 modes).
const HGATP_VMID_SHIFT: u32 = 44;
/// Mask of the 14-bit VMID once shifted down.
const HGATP_VMID_MASK: u64 = 0x3FFF;
/// `hgatp` bits 43:0: PPN of the root table (root PA = PPN × 4 KiB).
const HGATP_PPN_MASK: u64 = bit_range(43, 0);
/// PPN[1:0]: zero in the paged modes (16 KiB-aligned root).
const HGATP_PPN_LOW2: u64 = 0b11;
/// MODE encodings (table "Encoding of hgatp MODE field", HSXLEN=64).
const MODE_BARE: u8 = 0;
const MODE_SV39X4: u8 = 8;
const MODE_SV48X4: u8 = 9;
const MODE_SV57X4: u8 = 10;

// --- PTE (Supervisor chapter, "Sv32" bits 9:0 and "Sv39" bits 63:10;
//     G-stage uses the same format: H chapter, "Guest Physical Address
//     Translation") ---

/// Bit 0: V, valid.
const PTE_V: u64 = 1 << 0;
/// Bit 1: R, readable.
const PTE_R: u64 = 1 << 1;
/// Bit 2: W, writable.
const PTE_W: u64 = 1 << 2;
/// Bit 3: X, executable.
const PTE_X: u64 = 1 << 3;
/// Bit 4: U, user-accessible (every G-stage access is a U-mode access).
const PTE_U: u64 = 1 << 4;
/// Bit 5: G. "The G bit in all G-stage PTEs is reserved for future standard
/// use … must be ignored by hardware" (H chapter) — never looked at.
#[allow(dead_code)]
const PTE_G: u64 = 1 << 5;
/// Bit 6: A, accessed.
const PTE_A: u64 = 1 << 6;
/// Bit 7: D, dirty.
const PTE_D: u64 = 1 << 7;
/// Bits 9:8: RSW, "reserved for use by supervisor software; the
/// implementation shall ignore this field" — never looked at.
#[allow(dead_code)]
const PTE_RSW: u64 = bit_range(9, 8);
/// Bits 53:10: PPN (44 bits; PPN[0] = 18:10, PPN[1] = 27:19, …).
const PTE_PPN_SHIFT: u32 = 10;
/// Mask of the PPN field once shifted down.
const PTE_PPN_MASK: u64 = (1 << 44) - 1;
/// Bits 60:54: reserved for future standard use; set → page fault ("Sv39").
const PTE_RESERVED: u64 = bit_range(60, 54);
/// Bits 60:59: software bits (ignored) when Svrsw60t59b is implemented,
/// also in G-stage PTEs (Svrsw60t59b chapter).
const PTE_RSW_60_59: u64 = bit_range(60, 59);
/// Bits 62:61: PBMT (Svpbmt); reserved without Svpbmt.
const PTE_PBMT_SHIFT: u32 = 61;
/// Mask of PBMT in place.
const PTE_PBMT: u64 = bit_range(62, 61);
/// PBMT value 3: "Reserved for future standard use" in a leaf (Svpbmt).
const PBMT_RESERVED: u8 = 3;
/// Bit 63: N, NAPOT (Svnapot); reserved without Svnapot.
const PTE_N: u64 = 1 << 63;
/// Svnapot: the only defined NAPOT encoding is `ppn[0][3:0]` = `1000`
/// (64 KiB, napot_bits = 4), and only at level 0.
const NAPOT_BITS: u32 = 4;
/// `ppn[0][3:0]` of a valid 64 KiB NAPOT PTE.
const NAPOT_64K_PATTERN: u64 = 0b1000;

/// Base page: 4 KiB (PAGESIZE = 2^12).
const PAGE_SHIFT: u32 = 12;
/// VPN bits per level below the root.
const BITS_PER_LEVEL: u32 = 9;
/// The root has 2 extra index bits (16 KiB root, 2048 entries).
const ROOT_EXTRA_BITS: u32 = 2;
/// PTESIZE for RV64.
const PTE_SIZE: u64 = 8;

/// What the implementation supports and has enabled for G-stage
/// translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GstageCaps {
    /// Hardware A/D updating (Svadu) is in effect for G-stage: Svadu is
    /// implemented and **`menvcfg.ADUE` = 1**. False means Svade: a needed
    /// A or D update raises a guest-page fault.
    pub svadu: bool,
    /// Svpbmt is implemented and `menvcfg.PBMTE` = 1; otherwise PTE bits
    /// 62:61 are reserved.
    pub svpbmt: bool,
    /// Svnapot is implemented (it then also applies to G-stage); otherwise
    /// PTE bit 63 is reserved.
    pub svnapot: bool,
    /// Svrsw60t59b is implemented: PTE bits 60:59 are software bits that
    /// the implementation ignores instead of reserved bits.
    pub svrsw60t59b: bool,
}

/// Translation scheme selected by `hgatp.MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HgatpMode {
    /// MODE 0: no translation or protection.
    Bare,
    /// MODE 8: 41-bit GPA, 3 levels.
    Sv39x4,
    /// MODE 9: 50-bit GPA, 4 levels.
    Sv48x4,
    /// MODE 10: 59-bit GPA, 5 levels.
    Sv57x4,
}

impl HgatpMode {
    /// Number of levels walked (LEVELS); 0 for Bare.
    pub const fn levels(self) -> u8 {
        match self {
            HgatpMode::Bare => 0,
            HgatpMode::Sv39x4 => 3,
            HgatpMode::Sv48x4 => 4,
            HgatpMode::Sv57x4 => 5,
        }
    }

    /// Width of the guest-physical address: 12 + 9 × LEVELS + 2
    /// (41, 50, 59); 64 for Bare.
    pub const fn gpa_bits(self) -> u8 {
        match self {
            HgatpMode::Bare => 64,
            _ => (PAGE_SHIFT + BITS_PER_LEVEL * self.levels() as u32 + ROOT_EXTRA_BITS) as u8,
        }
    }
}

/// A decoded, valid `hgatp` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hgatp {
    /// Translation scheme.
    pub mode: HgatpMode,
    /// Virtual machine identifier (bits 57:44).
    pub vmid: u16,
    /// Physical address of the 16 KiB root table (PPN × 4096); 0 for Bare.
    pub root: u64,
}

/// Why an `hgatp` value is not one the register can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HgatpError {
    /// MODE is one of the reserved values (1–7, 11–15); carries it.
    ReservedMode(u8),
    /// Bits 59:58 (read-only zero) are set; carries the offending bits.
    ReservedBits(u64),
    /// MODE = Bare but VMID or PPN is not zero; carries the value.
    BareWithFields(u64),
    /// `PPN[1:0]` ≠ 0: the root would not be 16 KiB aligned; carries the PPN.
    MisalignedRoot(u64),
}

/// A successful G-stage translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GstageTranslation {
    /// Supervisor-physical (host-physical) address.
    pub hpa: u64,
    /// Level *i* of the leaf: 0 = 4 KiB (or 64 KiB NAPOT), 1 = 2 MiB,
    /// 2 = 1 GiB, 3 = 512 GiB, 4 = 256 TiB.
    pub level: u8,
    /// Size of the region the translation covers: 4 KiB << (9 × level), or
    /// 64 KiB for a NAPOT leaf.
    pub page_size: u64,
    /// Leaf R bit.
    pub read: bool,
    /// Leaf W bit.
    pub write: bool,
    /// Leaf X bit.
    pub exec: bool,
    /// Leaf U bit (always true on success).
    pub user: bool,
    /// Leaf PBMT field, bits 62:61 (0 without Svpbmt).
    pub pbmt: u8,
    /// The leaf is a 64 KiB NAPOT PTE (N = 1).
    pub napot: bool,
    /// Leaf A bit after the walk.
    pub accessed: bool,
    /// Leaf D bit after the walk.
    pub dirty: bool,
    /// The leaf PTE after the walk (including any A/D bits just set).
    pub leaf_entry: u64,
}

/// Why a guest-page fault was raised (all are the same exception; this
/// says which step of the translation process raised it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestPageFaultReason {
    /// Step 3: V = 0.
    NotValid,
    /// Step 3: R = 0 and W = 1 (reserved encoding).
    WriteWithoutRead,
    /// Step 3: reserved bits or encodings set; carries the offending bits
    /// (for a reserved encoding, the whole field).
    Reserved(u64),
    /// Step 4: a pointer PTE (R = W = X = 0) at level 0.
    PointerAtLevel0,
    /// Step 5: superpage leaf with `ppn[i-1:0]` ≠ 0.
    MisalignedSuperpage,
    /// Step 6: U = 0 (every G-stage access is a U-mode access).
    NotUser,
    /// Step 8: R/W/X does not allow the access.
    Permission,
    /// Step 9 with Svade: A = 0, or a store with D = 0.
    AccessedDirty,
}

/// A guest-page fault raised by the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestPageFault {
    /// Level *i* of the PTE that caused it.
    pub level: u8,
    /// That PTE's value.
    pub entry: u64,
    /// The access that was attempted.
    pub access: Access,
    /// Which check failed.
    pub reason: GuestPageFaultReason,
}

impl GuestPageFault {
    /// The exception code (`scause`/`mcause`, H chapter "Trap Cause Codes"):
    /// 20 instruction, 21 load, 23 store/AMO guest-page fault.
    pub const fn exception_code(&self) -> u8 {
        exception_code(self.access)
    }
}

const fn exception_code(access: Access) -> u8 {
    match access {
        Access::Read => 21,
        Access::Write => 23,
        Access::ExecSupervisor | Access::ExecUser => 20,
    }
}

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GstageFault {
    /// The `hgatp` value cannot be held by the register.
    InvalidHgatp(HgatpError),
    /// `hgatp.MODE` is Bare: there is no table to walk (GPA = SPA).
    Bare,
    /// The GPA has bits set at or above `width` (41/50/59). Architecturally
    /// a guest-page fault.
    AddressTooWide {
        /// The guest-physical address.
        gpa: u64,
        /// The mode's GPA width.
        width: u8,
    },
    /// A PTE lies outside the memory (reading it, or writing back A/D,
    /// failed). Hardware would raise an access fault; not modelled.
    EntryOutsideMemory {
        /// Level *i* of the PTE.
        level: u8,
        /// Physical address of the PTE.
        pa: u64,
    },
    /// A guest-page fault from the translation process.
    GuestPageFault(GuestPageFault),
}

impl GstageFault {
    /// True when the hardware would raise a guest-page fault (including
    /// [`GstageFault::AddressTooWide`]).
    pub const fn is_guest_page_fault(&self) -> bool {
        matches!(
            self,
            GstageFault::GuestPageFault(_) | GstageFault::AddressTooWide { .. }
        )
    }
}

impl fmt::Display for GstageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GstageFault::InvalidHgatp(e) => write!(f, "invalid hgatp: {e:?}"),
            GstageFault::Bare => write!(f, "hgatp.MODE is Bare: no G-stage table"),
            GstageFault::AddressTooWide { gpa, width } => {
                write!(f, "GPA {gpa:#x} wider than {width} bits (guest-page fault)")
            }
            GstageFault::EntryOutsideMemory { level, pa } => {
                write!(f, "level-{level} G-stage PTE at {pa:#x} is outside memory")
            }
            GstageFault::GuestPageFault(g) => write!(
                f,
                "guest-page fault (cause {}) at level {}: PTE {:#x}, {:?}",
                g.exception_code(),
                g.level,
                g.entry,
                g.reason
            ),
        }
    }
}

impl std::error::Error for GstageFault {}

/// Decodes and checks an RV64 `hgatp` value (see the module docs for the
/// checks beyond the spec's MODE table).
pub fn decode_hgatp(hgatp: u64) -> Result<Hgatp, HgatpError> {
    let mode_bits = (hgatp >> HGATP_MODE_SHIFT) as u8;
    let mode = match mode_bits {
        MODE_BARE => HgatpMode::Bare,
        MODE_SV39X4 => HgatpMode::Sv39x4,
        MODE_SV48X4 => HgatpMode::Sv48x4,
        MODE_SV57X4 => HgatpMode::Sv57x4,
        other => return Err(HgatpError::ReservedMode(other)),
    };
    if hgatp & HGATP_ZERO_BITS != 0 {
        return Err(HgatpError::ReservedBits(hgatp & HGATP_ZERO_BITS));
    }
    let vmid = ((hgatp >> HGATP_VMID_SHIFT) & HGATP_VMID_MASK) as u16;
    let ppn = hgatp & HGATP_PPN_MASK;
    if mode == HgatpMode::Bare {
        if hgatp != 0 {
            return Err(HgatpError::BareWithFields(hgatp));
        }
        return Ok(Hgatp {
            mode,
            vmid: 0,
            root: 0,
        });
    }
    if ppn & HGATP_PPN_LOW2 != 0 {
        return Err(HgatpError::MisalignedRoot(ppn));
    }
    Ok(Hgatp {
        mode,
        vmid,
        root: ppn << PAGE_SHIFT,
    })
}

/// Translates `gpa` for `access`. With [`GstageCaps::svadu`] the leaf's A
/// bit (and D bit on a write) is set when the translation otherwise
/// succeeds; nothing is written for a failed translation.
pub fn translate<M: PhysMem + ?Sized>(
    mem: &mut M,
    hgatp: u64,
    caps: &GstageCaps,
    gpa: u64,
    access: Access,
) -> Result<GstageTranslation, GstageFault> {
    let walk = walk(&*mem, hgatp, caps, gpa, access)?;
    let mut t = walk.translation;
    if walk.ad_bits != 0 {
        let (level, pa) = (t.level, walk.leaf_pa);
        let new = set_bits_le(mem, pa, walk.ad_bits)
            .ok_or(GstageFault::EntryOutsideMemory { level, pa })?;
        t.leaf_entry = new;
        t.accessed = new & PTE_A != 0;
        t.dirty = new & PTE_D != 0;
    }
    Ok(t)
}

/// Same as [`translate`] but never writes: with Svadu, a translation that
/// would set A/D succeeds and reports the leaf as it is in memory.
pub fn peek<M: PhysMem + ?Sized>(
    mem: &M,
    hgatp: u64,
    caps: &GstageCaps,
    gpa: u64,
    access: Access,
) -> Result<GstageTranslation, GstageFault> {
    walk(mem, hgatp, caps, gpa, access).map(|w| w.translation)
}

/// Outcome of a successful read-only walk.
struct Walk {
    translation: GstageTranslation,
    /// Physical address of the leaf PTE.
    leaf_pa: u64,
    /// A/D bits that hardware updating would set (0 if none or Svade).
    ad_bits: u64,
}

fn gpf(level: u8, entry: u64, access: Access, reason: GuestPageFaultReason) -> GstageFault {
    GstageFault::GuestPageFault(GuestPageFault {
        level,
        entry,
        access,
        reason,
    })
}

/// Reserved bits or encodings of a valid PTE (step 3), as the mask of the
/// offending bits; 0 if none. `leaf` says whether R or X is set.
fn reserved_bits(entry: u64, level: u8, leaf: bool, caps: &GstageCaps) -> u64 {
    let mut reserved = PTE_RESERVED;
    if caps.svrsw60t59b {
        reserved &= !PTE_RSW_60_59;
    }
    if !caps.svnapot {
        reserved |= PTE_N;
    }
    if !caps.svpbmt {
        reserved |= PTE_PBMT;
    }
    if !leaf {
        // Non-leaf: D, A, U reserved (Sv32 section), PBMT reserved
        // (Svpbmt), N reserved (Svnapot defines N only for leaves).
        reserved |= PTE_D | PTE_A | PTE_U | PTE_PBMT | PTE_N;
    }
    let mut bad = entry & reserved;
    if leaf {
        // PBMT = 3 in a leaf (Svpbmt).
        if caps.svpbmt && ((entry & PTE_PBMT) >> PTE_PBMT_SHIFT) as u8 == PBMT_RESERVED {
            bad |= PTE_PBMT;
        }
        // N = 1 encodings reserved by the Svnapot table.
        if caps.svnapot && entry & PTE_N != 0 {
            let ppn0_low = ppn_of(entry) & ((1 << NAPOT_BITS) - 1);
            if level != 0 || ppn0_low != NAPOT_64K_PATTERN {
                bad |= PTE_N;
            }
        }
    }
    bad
}

fn ppn_of(entry: u64) -> u64 {
    (entry >> PTE_PPN_SHIFT) & PTE_PPN_MASK
}

/// The read-only walk shared by [`translate`] and [`peek`].
fn walk<M: PhysMem + ?Sized>(
    mem: &M,
    hgatp: u64,
    caps: &GstageCaps,
    gpa: u64,
    access: Access,
) -> Result<Walk, GstageFault> {
    let h = decode_hgatp(hgatp).map_err(GstageFault::InvalidHgatp)?;
    if h.mode == HgatpMode::Bare {
        return Err(GstageFault::Bare);
    }
    let width = h.mode.gpa_bits();
    if gpa >> width != 0 {
        return Err(GstageFault::AddressTooWide { gpa, width });
    }
    let root_level = h.mode.levels() - 1;

    // Step 1: a = hgatp.ppn × PAGESIZE, i = LEVELS − 1.
    let mut a = h.root;
    let mut level = root_level;
    loop {
        let shift = PAGE_SHIFT + BITS_PER_LEVEL * u32::from(level);
        let index_bits = if level == root_level {
            BITS_PER_LEVEL + ROOT_EXTRA_BITS
        } else {
            BITS_PER_LEVEL
        };
        let vpn = (gpa >> shift) & ((1 << index_bits) - 1);
        // a < 2^56 and vpn × 8 < 2^14: no overflow.
        let pa = a + vpn * PTE_SIZE;
        // Step 2.
        let entry = read_u64_le(mem, pa).ok_or(GstageFault::EntryOutsideMemory { level, pa })?;

        // Step 3.
        if entry & PTE_V == 0 {
            return Err(gpf(level, entry, access, GuestPageFaultReason::NotValid));
        }
        if entry & (PTE_R | PTE_W) == PTE_W {
            return Err(gpf(
                level,
                entry,
                access,
                GuestPageFaultReason::WriteWithoutRead,
            ));
        }
        let leaf = entry & (PTE_R | PTE_X) != 0;
        let bad = reserved_bits(entry, level, leaf, caps);
        if bad != 0 {
            return Err(gpf(
                level,
                entry,
                access,
                GuestPageFaultReason::Reserved(bad),
            ));
        }

        // Step 4.
        if !leaf {
            if level == 0 {
                return Err(gpf(
                    level,
                    entry,
                    access,
                    GuestPageFaultReason::PointerAtLevel0,
                ));
            }
            a = ppn_of(entry) << PAGE_SHIFT;
            level -= 1;
            continue;
        }

        // Step 5: misaligned superpage.
        let ppn = ppn_of(entry);
        let low_ppn_bits = BITS_PER_LEVEL * u32::from(level);
        if ppn & ((1 << low_ppn_bits) - 1) != 0 {
            return Err(gpf(
                level,
                entry,
                access,
                GuestPageFaultReason::MisalignedSuperpage,
            ));
        }
        // Step 6: U checked as for U-mode.
        if entry & PTE_U == 0 {
            return Err(gpf(level, entry, access, GuestPageFaultReason::NotUser));
        }
        // Step 8: R/W/X (MXR = 0).
        let (r, w, x) = (entry & PTE_R != 0, entry & PTE_W != 0, entry & PTE_X != 0);
        let allowed = match access {
            Access::Read => r,
            Access::Write => w,
            Access::ExecSupervisor | Access::ExecUser => x,
        };
        if !allowed {
            return Err(gpf(level, entry, access, GuestPageFaultReason::Permission));
        }
        // Step 9: A/D.
        let mut needed = PTE_A;
        if access == Access::Write {
            needed |= PTE_D;
        }
        let missing = needed & !entry;
        if missing != 0 && !caps.svadu {
            return Err(gpf(
                level,
                entry,
                access,
                GuestPageFaultReason::AccessedDirty,
            ));
        }

        // Step 10.
        let napot = entry & PTE_N != 0;
        let page_shift = if napot {
            PAGE_SHIFT + NAPOT_BITS
        } else {
            shift
        };
        let page_size = 1u64 << page_shift;
        let offset_mask = page_size - 1;
        let translation = GstageTranslation {
            hpa: ((ppn << PAGE_SHIFT) & !offset_mask) | (gpa & offset_mask),
            level,
            page_size,
            read: r,
            write: w,
            exec: x,
            user: true,
            pbmt: ((entry & PTE_PBMT) >> PTE_PBMT_SHIFT) as u8,
            napot,
            accessed: entry & PTE_A != 0,
            dirty: entry & PTE_D != 0,
            leaf_entry: entry,
        };
        return Ok(Walk {
            translation,
            leaf_pa: pa,
            ad_bits: missing,
        });
    }
}
