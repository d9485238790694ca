//! AMD nested-paging (NPT) walker.
//!
//! Written from the AMD64 Architecture Programmer's Manual Vol. 2:
//!
//! * §15.25 "Nested Paging", in particular §15.25.5 "Nested Table Walk"
//!   (nested tables use the long-mode format; every nested access is a
//!   user-mode access) and §15.25.6 "Nested versus Guest Page Faults, Fault
//!   Ordering" (the #VMEXIT(NPF) error code in EXITINFO1);
//! * §5.3 "Long-Mode Page Translation" (the 4-KiB, 2-MiB and 1-GiB entry
//!   figures, including PML5 for 5-level paging) and §5.4 "Page-Translation-
//!   Table Entry Fields" (P, R/W, U/S, PWT, PCD, A, D, PS, G, PAT, NX);
//! * §5.6 "Page-Protection Checks" and §8.4.2 "Page-Fault Error Code".
//!
//! Levels are numbered from the leaf up: 0 = PTE (4 KiB), 1 = PDE (2 MiB),
//! 2 = PDPE (1 GiB), 3 = PML4E, 4 = PML5E.
//!
//! # Order of checks
//!
//! The walk reads one entry per level from the root down. At each level a
//! not-present entry ends it with a not-present fault, and a present entry
//! with a reserved bit set ends it with a reserved-bit fault. Permissions
//! (U/S, R/W, NX, combined over the whole path) are checked at the leaf.
//!
//! # Choices where the APM leaves room
//!
//! * **A/D on faulting accesses.** The walker sets A (bit 5) in every entry
//!   used and D (bit 6) in the leaf on a write **only when the translation
//!   succeeds**; hardware may already have set A bits in the upper levels of
//!   a walk that then faults.
//! * **PML4E/PML5E bit 8.** The APM's long-mode PML4E figure marks bits 8:7
//!   "MBZ" (KVM's reserved-bit masks for AMD agree; Intel only reserves bit
//!   7), so bit 8 is a reserved bit here too, not just PS.
//! * **I/D bit of the error code.** The APM defines it only when
//!   no-execute is enabled; with `nx_enabled` false the walker leaves it 0.
//! * **nCR3.** Bits 3 (PWT) and 4 (PCD) are cache controls for the root and
//!   bits 11:0 are otherwise ignored. The APM does not say what a VMRUN does
//!   with bits above the physical-address width; the walker refuses them
//!   ([`NptFault::InvalidNcr3`]) rather than guess.
//! * **Available bits** (11:9, 62:52) are ignored; host protection keys are
//!   not modelled.
//! * **GPA width.** Guest-physical addresses with bits above the walk's
//!   span (48 bits for 4 levels, 57 for 5) are reported as
//!   [`NptFault::AddressTooWide`].
//! * **Memory outside the image** is reported as
//!   [`NptFault::EntryOutsideMemory`], not modelled as a hardware read.

use std::fmt;

use crate::{bit_range, read_u64_le, set_bits_le, Access, PhysMem};

// --- nCR3 (APM Vol. 2 §15.25.4 "Nested Paging and VMRUN/#VMEXIT"; the
//     long-mode CR3 format of §3.1.2 "CR3 Register") ---

/// nCR3 bit 3: page-level write-through for the root table.
const NCR3_PWT: u64 = 1 << 3;
/// nCR3 bit 4: page-level cache disable for the root table.
const NCR3_PCD: u64 = 1 << 4;
/// nCR3 bits 63:52: reserved in the long-mode CR3 format.
const NCR3_RESERVED_HIGH: u64 = bit_range(63, 52);

// --- Long-mode entries (APM Vol. 2 §5.3 figures, §5.4.1 "Field Definitions") ---

/// Bit 0: present.
const P: u64 = 1 << 0;
/// Bit 1: read/write (0 = read-only).
const RW: u64 = 1 << 1;
/// Bit 2: user/supervisor (0 = supervisor only).
const US: u64 = 1 << 2;
/// Bit 3: page-level write-through.
const PWT: u64 = 1 << 3;
/// Bit 4: page-level cache disable.
const PCD: u64 = 1 << 4;
/// Bit 5: accessed.
const ACCESSED: u64 = 1 << 5;
/// Bit 6: dirty (leaf entries only; ignored in non-leaf entries).
const DIRTY: u64 = 1 << 6;
/// Bit 7 of a PDE/PDPE: page size (the entry maps a 2 MiB / 1 GiB page).
const PS: u64 = 1 << 7;
/// Bit 7 of a 4 KiB PTE: PAT.
const PAT_4K: u64 = 1 << 7;
/// Bit 12 of a 2 MiB / 1 GiB leaf: PAT.
const PAT_LARGE: u64 = 1 << 12;
/// Bits 8:7 of a PML4E/PML5E: MBZ (long-mode PML4E figure).
const TOP_RESERVED: u64 = bit_range(8, 7);
/// Bits 20:13 of a 2 MiB leaf: MBZ.
const RESERVED_2M: u64 = bit_range(20, 13);
/// Bits 29:13 of a 1 GiB leaf: MBZ.
const RESERVED_1G: u64 = bit_range(29, 13);
/// Bit 63: no-execute (reserved, MBZ, when EFER.NXE = 0).
const NX: u64 = 1 << 63;

// --- Page-fault error code (APM Vol. 2 §8.4.2), reported in EXITINFO1 of
//     #VMEXIT(NPF) (§15.25.6) ---

/// Bit 0: 0 = not present, 1 = protection violation or reserved bit.
const ERR_P: u64 = 1 << 0;
/// Bit 1: the access was a write.
const ERR_RW: u64 = 1 << 1;
/// Bit 2: the access was a user access (always, for a nested walk).
const ERR_US: u64 = 1 << 2;
/// Bit 3: a reserved bit was set.
const ERR_RSV: u64 = 1 << 3;
/// Bit 4: the access was an instruction fetch (defined only with NX enabled).
const ERR_ID: u64 = 1 << 4;

/// Host state the nested walk depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NptCaps {
    /// Paging levels: 4, or 5 with host CR4.LA57 (5-level nested paging).
    pub levels: u8,
    /// Physical-address width (CPUID Fn8000_0008 EAX bits 7:0). Must be 12..=52.
    pub maxphyaddr: u8,
    /// Host EFER.NXE: without it bit 63 is reserved.
    pub nx_enabled: bool,
    /// 1 GiB pages supported (CPUID Fn8000_0001 EDX bit 26).
    pub page_1g: bool,
}

/// A successful nested translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NptTranslation {
    /// The full output (system-physical) address.
    pub hpa: u64,
    /// Level of the leaf: 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB.
    pub level: u8,
    /// Size of the mapped page in bytes.
    pub page_size: u64,
    /// Writes allowed (R/W set at every level).
    pub write: bool,
    /// Fetches allowed (NX clear at every level, or NX not enabled).
    pub exec: bool,
    /// U/S set at every level. Always true for a successful translation,
    /// since nested walks are user accesses and fault otherwise.
    pub user: bool,
    /// PAT index of the leaf: PAT << 2 | PCD << 1 | PWT.
    pub pat_index: u8,
    /// Accessed flag (bit 5) of the leaf after the walk.
    pub accessed: bool,
    /// Dirty flag (bit 6) of the leaf after the walk.
    pub dirty: bool,
    /// The leaf entry after the walk (including any A/D bits just set).
    pub leaf_entry: u64,
}

/// Why a nested page fault happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NpfKind {
    /// An entry on the path had P = 0.
    NotPresent,
    /// The path denies the access (U/S = 0 anywhere; R/W = 0 for a write;
    /// NX = 1 for a fetch).
    Permission,
    /// A present entry had a reserved (MBZ) bit set.
    Reserved,
}

/// A nested page fault (#VMEXIT(NPF)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NestedPageFault {
    /// Level of the entry where the walk ended: the not-present or
    /// reserved-bit entry, or the leaf for a permission fault.
    pub level: u8,
    /// What went wrong.
    pub kind: NpfKind,
    /// The access that was attempted.
    pub access: Access,
    /// The value of the entry at `level`.
    pub entry: u64,
    /// Error-code bits 4:0 as EXITINFO1 would hold them (P, R/W, U/S, RSV,
    /// I/D). Bits 32 and 33 (final translation vs. guest page-table access)
    /// depend on why the GPA was translated and are left for the caller.
    pub error_code: u64,
}

/// Why a nested translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NptFault {
    /// nCR3 has bits set above the physical-address width (see module docs).
    InvalidNcr3 {
        /// The nCR3 value.
        ncr3: u64,
    },
    /// [`NptCaps::levels`] is not 4 or 5, or `maxphyaddr` is outside 12..=52.
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
    /// A nested page fault.
    Npf(NestedPageFault),
}

impl fmt::Display for NptFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NptFault::InvalidNcr3 { ncr3 } => write!(f, "invalid nCR3 {ncr3:#x}"),
            NptFault::InvalidCaps => write!(f, "invalid NPT capabilities"),
            NptFault::AddressTooWide { gpa, width } => {
                write!(f, "GPA {gpa:#x} wider than {width} bits")
            }
            NptFault::EntryOutsideMemory { level, pa } => {
                write!(f, "level-{level} NPT entry at {pa:#x} is outside memory")
            }
            NptFault::Npf(n) => write!(
                f,
                "nested page fault ({:?}) at level {}: entry {:#x}, error code {:#x}",
                n.kind, n.level, n.entry, n.error_code
            ),
        }
    }
}

impl std::error::Error for NptFault {}

/// Translates `gpa` for `access` and sets A in every entry used and D in the
/// leaf on a write — only if the translation succeeds (see the module docs).
pub fn translate<M: PhysMem + ?Sized>(
    mem: &mut M,
    ncr3: u64,
    caps: &NptCaps,
    gpa: u64,
    access: Access,
) -> Result<NptTranslation, NptFault> {
    let walk = walk(&*mem, ncr3, caps, gpa, access)?;
    let mut t = walk.translation;
    let last = walk.path_len.saturating_sub(1);
    for (i, &(level, pa)) in walk.path[..walk.path_len].iter().enumerate() {
        let mut bits = ACCESSED;
        if i == last && access == Access::Write {
            bits |= DIRTY;
        }
        let new = set_bits_le(mem, pa, bits).ok_or(NptFault::EntryOutsideMemory { level, pa })?;
        if i == last {
            t.leaf_entry = new;
            t.accessed = new & ACCESSED != 0;
            t.dirty = new & DIRTY != 0;
        }
    }
    Ok(t)
}

/// Same as [`translate`] but never writes: no A/D flags are set, and
/// `accessed`/`dirty` report the leaf as it is in memory.
pub fn peek<M: PhysMem + ?Sized>(
    mem: &M,
    ncr3: u64,
    caps: &NptCaps,
    gpa: u64,
    access: Access,
) -> Result<NptTranslation, NptFault> {
    walk(mem, ncr3, caps, gpa, access).map(|w| w.translation)
}

/// Outcome of a successful read-only walk.
struct Walk {
    translation: NptTranslation,
    /// (level, physical address) of every entry used, root first.
    path: [(u8, u64); 5],
    path_len: usize,
}

fn npf(level: u8, kind: NpfKind, access: Access, entry: u64, caps: &NptCaps) -> NptFault {
    let mut error_code = ERR_US;
    if kind != NpfKind::NotPresent {
        error_code |= ERR_P;
    }
    if kind == NpfKind::Reserved {
        error_code |= ERR_RSV;
    }
    if access == Access::Write {
        error_code |= ERR_RW;
    }
    if access.is_fetch() && caps.nx_enabled {
        error_code |= ERR_ID;
    }
    NptFault::Npf(NestedPageFault {
        level,
        kind,
        access,
        entry,
        error_code,
    })
}

/// The read-only walk shared by [`translate`] and [`peek`].
fn walk<M: PhysMem + ?Sized>(
    mem: &M,
    ncr3: u64,
    caps: &NptCaps,
    gpa: u64,
    access: Access,
) -> Result<Walk, NptFault> {
    if !(caps.levels == 4 || caps.levels == 5) || !(12..=52).contains(&caps.maxphyaddr) {
        return Err(NptFault::InvalidCaps);
    }
    let n = u32::from(caps.maxphyaddr);
    // Bits 51:N of every address field are reserved.
    let high_reserved = bit_range(51, n);
    if ncr3 & (NCR3_RESERVED_HIGH | high_reserved) != 0 {
        return Err(NptFault::InvalidNcr3 { ncr3 });
    }
    let width = 12 + 9 * caps.levels;
    if gpa >> width != 0 {
        return Err(NptFault::AddressTooWide { gpa, width });
    }
    let addr_mask = bit_range(n - 1, 12);
    let always_reserved = high_reserved | if caps.nx_enabled { 0 } else { NX };

    let (mut write, mut user, mut exec) = (true, true, true);
    let mut path = [(0u8, 0u64); 5];
    let mut path_len = 0;
    let mut table = ncr3 & addr_mask;
    let mut level = caps.levels - 1;
    loop {
        let shift = 12 + 9 * u32::from(level);
        let index = (gpa >> shift) & 0x1FF;
        // table < 2^52 and index * 8 < 2^12: cannot overflow.
        let pa = table + index * 8;
        let entry = read_u64_le(mem, pa).ok_or(NptFault::EntryOutsideMemory { level, pa })?;

        if entry & P == 0 {
            return Err(npf(level, NpfKind::NotPresent, access, entry, caps));
        }
        let ps = entry & PS != 0;
        let leaf = level == 0 || (level <= 2 && ps);
        let reserved = always_reserved
            | match (level, ps) {
                // 4 KiB PTE: bit 7 is PAT.
                (0, _) => 0,
                (1, true) => RESERVED_2M,
                (2, true) if caps.page_1g => RESERVED_1G,
                // PS in a PDPE without 1 GiB page support.
                (2, true) => PS,
                (1 | 2, false) => 0,
                // PML4E / PML5E.
                _ => TOP_RESERVED,
            };
        if entry & reserved != 0 {
            return Err(npf(level, NpfKind::Reserved, access, entry, caps));
        }
        path[path_len] = (level, pa);
        path_len += 1;

        write &= entry & RW != 0;
        user &= entry & US != 0;
        if caps.nx_enabled {
            exec &= entry & NX == 0;
        }

        if leaf {
            let allowed = user
                && match access {
                    Access::Read => true,
                    Access::Write => write,
                    Access::ExecSupervisor | Access::ExecUser => exec,
                };
            if !allowed {
                return Err(npf(level, NpfKind::Permission, access, entry, caps));
            }
            let page_size = 1u64 << shift;
            let offset_mask = page_size - 1;
            let pat = if level == 0 { PAT_4K } else { PAT_LARGE };
            let pat_index = (u8::from(entry & pat != 0) << 2)
                | (u8::from(entry & PCD != 0) << 1)
                | u8::from(entry & PWT != 0);
            let translation = NptTranslation {
                hpa: (entry & addr_mask & !offset_mask) | (gpa & offset_mask),
                level,
                page_size,
                write,
                exec,
                user,
                pat_index,
                accessed: entry & ACCESSED != 0,
                dirty: entry & DIRTY != 0,
                leaf_entry: entry,
            };
            return Ok(Walk {
                translation,
                path,
                path_len,
            });
        }
        table = entry & addr_mask;
        // level > 0 here: a level-0 entry is always a leaf.
        level -= 1;
    }
}

/// The root table's cache controls from nCR3, as a PAT index without the
/// PAT bit: PCD << 1 | PWT (APM Vol. 2 §15.25.4 / §7.8 "Memory-Type Attributes").
pub fn ncr3_cache_bits(ncr3: u64) -> u8 {
    (u8::from(ncr3 & NCR3_PCD != 0) << 1) | u8::from(ncr3 & NCR3_PWT != 0)
}
