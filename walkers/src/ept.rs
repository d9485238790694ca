//! Intel EPT walker.
//!
//! Written from the Intel SDM Vol. 3C, chapter "VMX Support for Address
//! Translation", section "The Extended Page Table Mechanism (EPT)" (29.3 in
//! recent editions; 28.2 or 28.3 in older ones, where the subsections below
//! carry the same titles):
//!
//! * 29.3.2 "EPT Translation Mechanism" and its tables 29-1 … 29-6 (entry
//!   formats; "Format of an EPT PML4 Entry" etc.);
//! * 29.3.3.1 "EPT Misconfigurations", 29.3.3.2 "EPT Violations";
//! * 29.3.4 "Accessed and Dirty Flags for EPT";
//! * the EPTP format, Vol. 3C §25.6.11 "Extended-Page-Table Pointer (EPTP)";
//! * the exit qualification, Vol. 3C table "Exit Qualification for EPT
//!   Violations" (§28.2.1).
//!
//! Levels are numbered from the leaf up: 0 = EPT PTE (4 KiB), 1 = EPT PDE
//! (2 MiB), 2 = EPT PDPTE (1 GiB), 3 = EPT PML4E, 4 = EPT PML5E.
//!
//! # Order of checks
//!
//! The walk reads one entry per level, from the root down. At each level:
//! a not-present entry ends the walk with an EPT violation (nothing below it
//! is looked at); a present entry with an unsupported value ends it with an
//! EPT misconfiguration. Permissions are checked once the leaf is reached,
//! so a misconfiguration anywhere on the path wins over a permission
//! violation — the SDM defines an EPT violation as something that happens
//! only when "there is no EPT misconfiguration" (29.3.3).
//!
//! # Mode-based execute control
//!
//! With MBEC ([`EptCaps::mbec`]) bit 2 grants execution for
//! supervisor-mode linear addresses and bit 10 for user-mode ones; an entry
//! is present if any of bits 2:0 **or bit 10** is set (29.3.2), and an entry
//! granting either kind of execution without read is an execute-only entry
//! for the misconfiguration rule (29.3.3.1). Without MBEC bit 10 is ignored
//! and both execute kinds use bit 2. (Editions before MBEC only look at
//! bits 2:0; the bit-10 presence rule comes from the MBEC text and is worth
//! re-checking against the edition in use.)
//!
//! # Choices where the SDM leaves room
//!
//! * **A/D on faulting accesses.** The SDM lets the processor set accessed
//!   flags in entries it used even when the access then causes an EPT
//!   violation. This walker sets A (and D) **only when the whole translation
//!   succeeds**, so an oracle comparison never depends on how far a faulting
//!   walk got.
//! * **2 MiB pages** are taken as always supported (IA32_VMX_EPT_VPID_CAP
//!   bit 16 is not modelled); 1 GiB pages follow [`EptCaps::page_1g`]
//!   (bit 17).
//! * **5-level walks and A/D** (IA32_VMX_EPT_VPID_CAP bits 7 and 21) are
//!   assumed supported whenever the EPTP asks for them.
//! * **EPTP bit 7** is treated as reserved, with bits 11:8. Recent SDMs give
//!   it a meaning (enforcement of supervisor shadow-stack access rights),
//!   which this walker does not model.
//! * **Ignored bits** (11, 63:52 and the others the tables mark "Ignored",
//!   including suppress-#VE, verify-guest-paging, paging-write, supervisor
//!   shadow stack and sub-page-write permissions) are ignored.
//! * **GPA width.** The SDM gives the span of a walk (48 bits for 4 levels,
//!   57 for 5) but no rule for guest-physical addresses with higher bits
//!   set; the walker reports them as [`EptFault::AddressTooWide`].
//! * **Memory outside the image.** Real hardware would read *something*;
//!   the walker reports [`EptFault::EntryOutsideMemory`] instead.

use std::fmt;

use crate::{bit_range, read_u64_le, set_bits_le, Access, PhysMem};

// --- EPTP (SDM Vol. 3C §25.6.11, table "Format of Extended-Page-Table Pointer") ---

/// EPTP bits 2:0: memory type used to access the EPT paging structures.
const EPTP_MEMTYPE_MASK: u64 = 0b111;
/// EPTP memory type 0: uncacheable (UC).
const EPTP_MEMTYPE_UC: u8 = 0;
/// EPTP memory type 6: write-back (WB).
const EPTP_MEMTYPE_WB: u8 = 6;
/// EPTP bits 5:3: page-walk length minus 1.
const EPTP_WALK_LENGTH_SHIFT: u32 = 3;
/// Mask of EPTP bits 5:3 once shifted down.
const EPTP_WALK_LENGTH_MASK: u64 = 0b111;
/// EPTP bit 6: enable accessed and dirty flags for EPT.
const EPTP_AD_ENABLE: u64 = 1 << 6;
/// EPTP bits 11:7: reserved (bit 7 is SSS enable in recent SDMs; see module docs).
const EPTP_RESERVED_LOW: u64 = 0x1F << 7;

// --- EPT paging-structure entries (SDM Vol. 3C §29.3.2, tables 29-1 … 29-6) ---

/// Bit 0: read access.
const EPT_R: u64 = 1 << 0;
/// Bit 1: write access.
const EPT_W: u64 = 1 << 1;
/// Bit 2: execute access (supervisor-mode linear addresses when MBEC is on).
const EPT_X: u64 = 1 << 2;
/// Bits 2:0 together: the entry is present if any is set (29.3.2).
const EPT_RWX: u64 = EPT_R | EPT_W | EPT_X;
/// Bits 5:3 of a leaf: EPT memory type (29.3.7 "EPT and Memory Typing").
const EPT_MEMTYPE_SHIFT: u32 = 3;
/// Mask of the memory-type field once shifted down.
const EPT_MEMTYPE_MASK: u64 = 0b111;
/// Bit 6 of a leaf: ignore PAT memory type.
const EPT_IPAT: u64 = 1 << 6;
/// Bit 7 of a PDPTE/PDE: the entry maps a page (1 GiB / 2 MiB).
const EPT_LARGE: u64 = 1 << 7;
/// Bits 7:3 of a non-leaf entry: reserved (must be 0) — tables 29-1, 29-3, 29-5
/// (bits 6:3 reserved plus bit 7 = 0 in a PDE that references a page table).
const EPT_NONLEAF_RESERVED: u64 = bit_range(7, 3);
/// Bit 8: accessed flag (when EPTP bit 6 is set; 29.3.4).
const EPT_ACCESSED: u64 = 1 << 8;
/// Bit 9 of a leaf: dirty flag (when EPTP bit 6 is set; 29.3.4).
const EPT_DIRTY: u64 = 1 << 9;
/// Bit 10: execute access for user-mode linear addresses (when MBEC is on).
const EPT_XU: u64 = 1 << 10;
/// Bits 20:12 of a 2 MiB leaf: reserved (table 29-4).
const EPT_2M_RESERVED: u64 = bit_range(20, 12);
/// Bits 29:12 of a 1 GiB leaf: reserved (table 29-2).
const EPT_1G_RESERVED: u64 = bit_range(29, 12);
/// Memory types 2, 3 and 7 are reserved in a leaf (29.3.3.1).
const EPT_MEMTYPE_RESERVED: [u8; 3] = [2, 3, 7];

// --- Exit qualification for EPT violations (SDM Vol. 3C §28.2.1, table
//     "Exit Qualification for EPT Violations") ---

/// Bit 0: the access was a data read.
const EXITQ_READ: u64 = 1 << 0;
/// Bit 1: the access was a data write.
const EXITQ_WRITE: u64 = 1 << 1;
/// Bit 2: the access was an instruction fetch.
const EXITQ_FETCH: u64 = 1 << 2;
/// Bit 3: AND of bit 0 of the entries used (readable).
const EXITQ_READABLE: u64 = 1 << 3;
/// Bit 4: AND of bit 1 of the entries used (writable).
const EXITQ_WRITABLE: u64 = 1 << 4;
/// Bit 5: AND of bit 2 of the entries used (executable, supervisor-mode with MBEC).
const EXITQ_EXECUTABLE: u64 = 1 << 5;
/// Bit 6: AND of bit 10 of the entries used (user-mode executable; MBEC only).
const EXITQ_USER_EXECUTABLE: u64 = 1 << 6;

/// Processor capabilities the walk depends on (from CPUID.80000008H and
/// IA32_VMX_EPT_VPID_CAP / the VM-execution controls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptCaps {
    /// Physical-address width N (CPUID.80000008H:EAX bits 7:0), e.g. 46 or 52.
    /// Bits 51:N of every address field are reserved. Must be 12..=52.
    pub maxphyaddr: u8,
    /// Execute-only translations supported (IA32_VMX_EPT_VPID_CAP bit 0).
    pub execute_only: bool,
    /// 1 GiB pages supported (IA32_VMX_EPT_VPID_CAP bit 17).
    pub page_1g: bool,
    /// The "mode-based execute control for EPT" VM-execution control is 1.
    pub mbec: bool,
}

/// A decoded, valid EPTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptPointer {
    /// Number of levels walked: 4 or 5.
    pub levels: u8,
    /// Physical address of the root table (EPT PML4 or PML5).
    pub root: u64,
    /// Accessed and dirty flags enabled (bit 6).
    pub ad_enabled: bool,
    /// Memory type for paging-structure accesses (bits 2:0): 0 (UC) or 6 (WB).
    pub memtype: u8,
}

/// Why an EPTP value is invalid (VM entry would fail, SDM Vol. 3C §27.2.1.1
/// "VM-Execution Control Fields").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EptpError {
    /// Bits 2:0 are neither 0 (UC) nor 6 (WB); carries the value found.
    MemoryType(u8),
    /// Bits 5:3 encode neither a 4- nor a 5-level walk; carries the field value.
    WalkLength(u8),
    /// Reserved bits 11:7 or 63:N are set; carries the offending bits.
    ReservedBits(u64),
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptTranslation {
    /// The full output (host-physical) address.
    pub hpa: u64,
    /// Level of the leaf: 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB.
    pub level: u8,
    /// Size of the mapped page in bytes.
    pub page_size: u64,
    /// Reads allowed (AND of bit 0 over the path).
    pub read: bool,
    /// Writes allowed (AND of bit 1 over the path).
    pub write: bool,
    /// Fetches from supervisor-mode linear addresses allowed (AND of bit 2).
    pub exec_supervisor: bool,
    /// Fetches from user-mode linear addresses allowed: AND of bit 10 with
    /// MBEC, equal to `exec_supervisor` without it.
    pub exec_user: bool,
    /// EPT memory type, bits 5:3 of the leaf.
    pub memtype: u8,
    /// Ignore-PAT, bit 6 of the leaf.
    pub ipat: bool,
    /// Accessed flag (bit 8) of the leaf after the walk.
    pub accessed: bool,
    /// Dirty flag (bit 9) of the leaf after the walk.
    pub dirty: bool,
    /// The leaf entry after the walk (including any A/D bits just set).
    pub leaf_entry: u64,
}

/// An EPT violation: what the processor would report in the exit
/// qualification, plus where the walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptViolation {
    /// Level of the entry where the walk ended: the not-present entry, or the leaf.
    pub level: u8,
    /// That entry's value.
    pub entry: u64,
    /// The access that was attempted.
    pub access: Access,
    /// The walk ended on a not-present entry.
    pub not_present: bool,
    /// AND of bit 0 over the entries used (false when not present).
    pub readable: bool,
    /// AND of bit 1 over the entries used.
    pub writable: bool,
    /// AND of bit 2 over the entries used.
    pub exec_supervisor: bool,
    /// AND of bit 10 with MBEC, equal to `exec_supervisor` without it.
    pub exec_user: bool,
    /// Exit-qualification bits 6:0 as the processor would report them
    /// (bits 2:0 access kind, 5:3 readable/writable/executable, 6
    /// user-executable with MBEC, else 0). Bits 7 and up depend on the guest
    /// linear access and are left 0.
    pub exit_qualification: u64,
}

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EptFault {
    /// The EPTP is invalid (VM entry would have failed).
    InvalidEptp(EptpError),
    /// [`EptCaps::maxphyaddr`] is outside 12..=52.
    InvalidCaps,
    /// The GPA has bits set above the walk's span (`width` = 48 or 57).
    AddressTooWide {
        /// The guest-physical address.
        gpa: u64,
        /// Number of address bits the walk translates.
        width: u8,
    },
    /// A paging-structure entry lies outside the memory (reading it, or
    /// writing back its A/D flags, failed). Not an architectural event.
    EntryOutsideMemory {
        /// Level of the entry.
        level: u8,
        /// Physical address of the entry.
        pa: u64,
    },
    /// EPT misconfiguration (29.3.3.1): a present entry holds an unsupported value.
    Misconfig {
        /// Level of the offending entry.
        level: u8,
        /// Its value.
        entry: u64,
    },
    /// EPT violation (29.3.3.2).
    Violation(EptViolation),
}

impl fmt::Display for EptFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EptFault::InvalidEptp(e) => write!(f, "invalid EPTP: {e:?}"),
            EptFault::InvalidCaps => write!(f, "invalid EPT capabilities"),
            EptFault::AddressTooWide { gpa, width } => {
                write!(f, "GPA {gpa:#x} wider than {width} bits")
            }
            EptFault::EntryOutsideMemory { level, pa } => {
                write!(f, "level-{level} EPT entry at {pa:#x} is outside memory")
            }
            EptFault::Misconfig { level, entry } => {
                write!(f, "EPT misconfiguration at level {level}: entry {entry:#x}")
            }
            EptFault::Violation(v) => write!(
                f,
                "EPT violation at level {}: entry {:#x}, exit qualification {:#x}",
                v.level, v.entry, v.exit_qualification
            ),
        }
    }
}

impl std::error::Error for EptFault {}

/// Decodes and checks an EPTP value (the VM-entry checks on the EPTP,
/// SDM Vol. 3C §27.2.1.1, restricted to the fields this walker models).
pub fn decode_eptp(eptp: u64, caps: &EptCaps) -> Result<EptPointer, EptpError> {
    let memtype = (eptp & EPTP_MEMTYPE_MASK) as u8;
    if memtype != EPTP_MEMTYPE_UC && memtype != EPTP_MEMTYPE_WB {
        return Err(EptpError::MemoryType(memtype));
    }
    let walk = ((eptp >> EPTP_WALK_LENGTH_SHIFT) & EPTP_WALK_LENGTH_MASK) as u8;
    let levels = match walk {
        3 => 4,
        4 => 5,
        other => return Err(EptpError::WalkLength(other)),
    };
    let n = u32::from(caps.maxphyaddr);
    let reserved = eptp & (EPTP_RESERVED_LOW | bit_range(63, n));
    if reserved != 0 {
        return Err(EptpError::ReservedBits(reserved));
    }
    Ok(EptPointer {
        levels,
        root: eptp & bit_range(n.saturating_sub(1), 12),
        ad_enabled: eptp & EPTP_AD_ENABLE != 0,
        memtype,
    })
}

/// Translates `gpa` for `access`, setting accessed/dirty flags as the
/// processor would when the EPTP enables them (bit 6): A in every entry
/// used, D in the leaf on a write — only if the translation succeeds (see
/// the module docs). Without EPTP bit 6 nothing is written.
pub fn translate<M: PhysMem + ?Sized>(
    mem: &mut M,
    eptp: u64,
    caps: &EptCaps,
    gpa: u64,
    access: Access,
) -> Result<EptTranslation, EptFault> {
    let walk = walk(&*mem, eptp, caps, gpa, access)?;
    let mut t = walk.translation;
    if walk.ad_enabled {
        let last = walk.path_len.saturating_sub(1);
        for (i, &(level, pa)) in walk.path[..walk.path_len].iter().enumerate() {
            let mut bits = EPT_ACCESSED;
            if i == last && access == Access::Write {
                bits |= EPT_DIRTY;
            }
            let new =
                set_bits_le(mem, pa, bits).ok_or(EptFault::EntryOutsideMemory { level, pa })?;
            if i == last {
                t.leaf_entry = new;
                t.accessed = new & EPT_ACCESSED != 0;
                t.dirty = new & EPT_DIRTY != 0;
            }
        }
    }
    Ok(t)
}

/// Same as [`translate`] but never writes: no A/D flags are set, and
/// `accessed`/`dirty` report the leaf as it is in memory.
pub fn peek<M: PhysMem + ?Sized>(
    mem: &M,
    eptp: u64,
    caps: &EptCaps,
    gpa: u64,
    access: Access,
) -> Result<EptTranslation, EptFault> {
    walk(mem, eptp, caps, gpa, access).map(|w| w.translation)
}

/// Outcome of a successful read-only walk.
struct Walk {
    translation: EptTranslation,
    ad_enabled: bool,
    /// (level, physical address) of every entry used, root first.
    path: [(u8, u64); 5],
    path_len: usize,
}

/// Entry is present: any of bits 2:0, or (MBEC on) bit 10 (29.3.2).
fn is_present(entry: u64, caps: &EptCaps) -> bool {
    entry & EPT_RWX != 0 || (caps.mbec && entry & EPT_XU != 0)
}

/// Whether a present entry at `level` is misconfigured (29.3.3.1).
/// `leaf` says whether the walk would stop here.
fn is_misconfigured(entry: u64, level: u8, leaf: bool, caps: &EptCaps) -> bool {
    // Bits 2:0 = 010b or 110b: write without read.
    if entry & (EPT_R | EPT_W) == EPT_W {
        return true;
    }
    // Execute without read (100b; with MBEC also user-execute without read)
    // when execute-only translations are not supported.
    let exec_any = entry & EPT_X != 0 || (caps.mbec && entry & EPT_XU != 0);
    if !caps.execute_only && entry & EPT_R == 0 && exec_any {
        return true;
    }
    // Reserved bits: 51:N everywhere.
    let mut reserved = bit_range(51, u32::from(caps.maxphyaddr));
    match (level, leaf) {
        // 4 KiB leaf: bit 7 is ignored, nothing else reserved.
        (0, _) => {}
        (1, true) => reserved |= EPT_2M_RESERVED,
        (2, true) if caps.page_1g => reserved |= EPT_1G_RESERVED,
        // Bit 7 set where that page size is not supported.
        (2, true) => reserved |= EPT_LARGE,
        // Non-leaf PDE/PDPTE and every PML4E/PML5E: bits 7:3.
        _ => reserved |= EPT_NONLEAF_RESERVED,
    }
    if entry & reserved != 0 {
        return true;
    }
    // A leaf with memory type 2, 3 or 7.
    leaf && EPT_MEMTYPE_RESERVED.contains(&memtype_of(entry))
}

fn memtype_of(entry: u64) -> u8 {
    ((entry >> EPT_MEMTYPE_SHIFT) & EPT_MEMTYPE_MASK) as u8
}

/// The read-only walk shared by [`translate`] and [`peek`].
fn walk<M: PhysMem + ?Sized>(
    mem: &M,
    eptp: u64,
    caps: &EptCaps,
    gpa: u64,
    access: Access,
) -> Result<Walk, EptFault> {
    if !(12..=52).contains(&caps.maxphyaddr) {
        return Err(EptFault::InvalidCaps);
    }
    let ptr = decode_eptp(eptp, caps).map_err(EptFault::InvalidEptp)?;
    let width = 12 + 9 * ptr.levels;
    if gpa >> width != 0 {
        return Err(EptFault::AddressTooWide { gpa, width });
    }
    // Bits N-1:12 of a non-leaf entry hold the next table's address.
    let addr_mask = bit_range(u32::from(caps.maxphyaddr) - 1, 12);

    let (mut r, mut w, mut xs, mut xu) = (true, true, true, true);
    let mut path = [(0u8, 0u64); 5];
    let mut path_len = 0;
    let mut table = ptr.root;
    let mut level = ptr.levels - 1;
    loop {
        let shift = 12 + 9 * u32::from(level);
        let index = (gpa >> shift) & 0x1FF;
        // table < 2^52 and index * 8 < 2^12: cannot overflow.
        let pa = table + index * 8;
        let entry = read_u64_le(mem, pa).ok_or(EptFault::EntryOutsideMemory { level, pa })?;

        r &= entry & EPT_R != 0;
        w &= entry & EPT_W != 0;
        xs &= entry & EPT_X != 0;
        // User-mode execute is bit 10 with MBEC, bit 2 (like supervisor) without.
        let xu_bit = if caps.mbec { EPT_XU } else { EPT_X };
        xu &= entry & xu_bit != 0;

        if !is_present(entry, caps) {
            return Err(violation(level, entry, access, true, [r, w, xs, xu], caps));
        }
        let leaf = level == 0 || (level <= 2 && entry & EPT_LARGE != 0);
        if is_misconfigured(entry, level, leaf, caps) {
            return Err(EptFault::Misconfig { level, entry });
        }
        path[path_len] = (level, pa);
        path_len += 1;

        if leaf {
            let allowed = match access {
                Access::Read => r,
                Access::Write => w,
                Access::ExecSupervisor => xs,
                Access::ExecUser => xu,
            };
            if !allowed {
                return Err(violation(level, entry, access, false, [r, w, xs, xu], caps));
            }
            let page_size = 1u64 << shift;
            let offset_mask = page_size - 1;
            let translation = EptTranslation {
                hpa: (entry & addr_mask & !offset_mask) | (gpa & offset_mask),
                level,
                page_size,
                read: r,
                write: w,
                exec_supervisor: xs,
                exec_user: xu,
                memtype: memtype_of(entry),
                ipat: entry & EPT_IPAT != 0,
                accessed: entry & EPT_ACCESSED != 0,
                dirty: entry & EPT_DIRTY != 0,
                leaf_entry: entry,
            };
            return Ok(Walk {
                translation,
                ad_enabled: ptr.ad_enabled,
                path,
                path_len,
            });
        }
        table = entry & addr_mask;
        // level > 0 here: a level-0 entry is always a leaf.
        level -= 1;
    }
}

fn violation(
    level: u8,
    entry: u64,
    access: Access,
    not_present: bool,
    [r, w, xs, xu]: [bool; 4],
    caps: &EptCaps,
) -> EptFault {
    let mut q = match access {
        Access::Read => EXITQ_READ,
        Access::Write => EXITQ_WRITE,
        Access::ExecSupervisor | Access::ExecUser => EXITQ_FETCH,
    };
    if r {
        q |= EXITQ_READABLE;
    }
    if w {
        q |= EXITQ_WRITABLE;
    }
    if xs {
        q |= EXITQ_EXECUTABLE;
    }
    if caps.mbec && xu {
        q |= EXITQ_USER_EXECUTABLE;
    }
    EptFault::Violation(EptViolation {
        level,
        entry,
        access,
        not_present,
        readable: r,
        writable: w,
        exec_supervisor: xs,
        exec_user: xu,
        exit_qualification: q,
    })
}
