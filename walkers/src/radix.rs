//! Power ISA (Book III-S, v3.0 and later) radix tree, partition-scoped
//! walker: guest real address → host real address.
//!
//! Written from the Power ISA v3.0B/v3.1 Book III, chapter "Storage
//! Control", section "Radix Tree Translation" and its subsections:
//! "Partition Table" (the Partition Table Entry), "Radix Tree Page
//! Directory Entry", "Radix Tree Page Table Entry", "Storage Protection,
//! Radix Tree Translation" (Encoded Access Authority) and "Reference and
//! Change Recording". The ISA text itself was **not** available while
//! writing this; every field position was cross-checked instead against
//! three independent implementations of the format (QEMU
//! `target/ppc/mmu-radix64.{c,h}`, the Microwatt core's `mmu.vhdl`, and
//! Linux `arch/powerpc/include/asm/book3s/64/{mmu,radix}.h` /
//! `kvm/book3s_64_mmu_radix.c`), and each such fact says where it comes
//! from. Statements marked **(ISA, from memory)** are not confirmed by
//! any of them.
//!
//! # Bit numbering and byte order
//!
//! The ISA numbers bits MSB = 0. This module's masks use LSB = 0; ISA bit
//! *n* of a doubleword is LSB bit 63 − *n*. Every constant cites both.
//! Radix tables are **big-endian** in memory (the partition and process
//! tables too): entries are read as 8 bytes and decoded with
//! `u64::from_be_bytes` (Microwatt byte-swaps every table read; Linux keeps
//! `__be64` entries).
//!
//! # Levels
//!
//! Levels are numbered from the root: 0 = the root directory (RPDS index
//! bits), 1 = the table its entries point to, and so on (QEMU's
//! numbering). The depth is not fixed: each directory entry's NLS gives
//! the next table's index width, and a leaf found with *r* untranslated
//! address bits left maps 2^*r* bytes. With Linux's 4 KiB geometry
//! (13/9/9/9 over a 52-bit tree) a leaf at level 1 maps 1 GiB, level 2
//! 2 MiB, level 3 4 KiB; with the 64 KiB geometry (13/9/9/5) level 3 maps
//! 64 KiB from a 256-byte table.
//!
//! # Order of checks
//!
//! 1. PATE doubleword 0: HR = 1 (radix), RPDS ≥ 5, RPDS ≤ tree size − 12,
//!    root aligned to its size (2^(RPDS+3) bytes) → else
//!    [`RadixFault::InvalidPate`].
//! 2. The guest real address must fit the tree size (31 + RTS bits) → else
//!    [`RadixFault::AddressTooWide`].
//! 3. Per level: read the entry ([`RadixFault::EntryOutsideMemory`]);
//!    V = 0 → [`RadixFault::NotValid`]. A directory entry (L = 0) must have
//!    5 ≤ NLS ≤ (remaining bits − 12) and an NLB aligned to the next
//!    table's size (2^(NLS+3) bytes) → else [`RadixFault::BadTree`]. A leaf
//!    (L = 1) whose RPN has bits set below its page size →
//!    [`RadixFault::BadTree`].
//! 4. At the leaf: EAA against the access → [`RadixFault::Permission`];
//!    then Reference/Change ([`RadixCaps::rc_update`]).
//!
//! # Choices where the sources differ or the ISA leaves room
//!
//! * **Minimum NLS / RPDS = 5.** QEMU raises a bad-configuration fault
//!   for NLS < 5 and RPDS < 5; Microwatt reports "bad tree" for NLS < 5
//!   (and for NLS > 16, an implementation limit not modelled here).
//! * **NLS larger than the bits left.** Microwatt reports a bad tree when
//!   a directory's NLS would leave fewer than 12 bits (a page below
//!   4 KiB); so does this walker.
//! * **Misaligned table bases.** Linux KVM's software walk of a nested
//!   partition-scoped tree rejects a base not aligned to 2^(NLS+3); QEMU
//!   logs a guest error and clears the low bits; Microwatt ORs the index
//!   into them. This walker reports [`BadTreeReason::MisalignedTable`]: a
//!   table the engine builds must never depend on that behaviour.
//! * **Misaligned RPN in a large leaf.** KVM's software walk rejects it;
//!   QEMU and Microwatt ignore the low RPN bits. Reported as
//!   [`BadTreeReason::MisalignedLeaf`].
//! * **Geometry.** POWER9/POWER10 only implement 52-bit trees split
//!   13/9/9/(9|5) (QEMU `ppc_radix64_is_valid_level`, KVM
//!   `p9_supported_radix_bits`). This walker accepts any tree size and NLS
//!   sequence that satisfies the rules above, including a leaf in the
//!   root directory.
//! * **EAA in partition scope.** The privilege bit (EAA bit 0) and the
//!   AMR/IAMR apply only to process-scoped translation (QEMU passes
//!   `partition_scoped` to ignore them; KVM: "Check privilege (applies only
//!   to process scoped translations)"), so they are ignored here. Read is
//!   allowed by EAA Read **or** Read/Write, write by Read/Write, fetch by
//!   Execute (QEMU `ppc_radix64_get_prot_eaa`, Microwatt). Both
//!   [`Access`] execute kinds are instruction fetches.
//! * **Fetch from non-idempotent I/O.** ATT = 0b10 is Guarded storage, and
//!   instruction fetch from it is refused (QEMU `SRR1_NOEXEC_GUARD`; ISA,
//!   from memory). Microwatt also refuses fetch from ATT = 0b11
//!   (cache-inhibited); that is an implementation restriction, not
//!   modelled.
//! * **Reference and Change.** Hardware sets R on any access and C on a
//!   store, or — when it does not (POWER9 in some cases; QEMU since 2022,
//!   citing ISA 3.1 Book III §7.5.3/§7.5.5) — takes a Hypervisor Data/
//!   Instruction Storage interrupt with "set RC" in the DSISR, leaving
//!   software (KVM's `kvmppc_hv_handle_set_rc`) to set them.
//!   [`RadixCaps::rc_update`] picks the model. A permission fault takes
//!   precedence over the R/C one (Microwatt). R/C are only written for a
//!   translation that otherwise succeeds, only in the leaf.
//! * **Reserved bits** in directory and leaf entries are not checked
//!   (neither QEMU nor Microwatt nor KVM checks them).
//! * **Guest real address wider than the tree** is reported as
//!   [`RadixFault::AddressTooWide`] (hardware behaviour not confirmed).
//! * **Memory outside the image** is reported as
//!   [`RadixFault::EntryOutsideMemory`].

use std::fmt;

use crate::{bit_range, Access, PhysMem};

// --- Partition Table Entry, doubleword 0 (Book III "Partition Table";
//     Linux book3s/64/mmu.h PATB_HR, RTS1_SHIFT, RPDB_MASK, RPDS_MASK;
//     QEMU PATE0_HR, PRTBE_R_GET_RTS, PRTBE_R_RPDB, PRTBE_R_RPDS) ---

/// ISA bit 0 (LSB 63): HR, host radix — 1 for a radix partition.
const PATE_HR: u64 = 1 << 63;
/// ISA bits 1:2 (LSB 62:61): RTS1, high 2 bits of the radix tree size.
const PATE_RTS1_SHIFT: u32 = 61;
/// Mask of RTS1 once shifted down.
const PATE_RTS1_MASK: u64 = 0b11;
/// ISA bits 56:58 (LSB 7:5): RTS2, low 3 bits of the radix tree size.
const PATE_RTS2_SHIFT: u32 = 5;
/// Mask of RTS2 once shifted down.
const PATE_RTS2_MASK: u64 = 0b111;
/// Tree size in address bits = RTS + 31.
const RTS_BIAS: u32 = 31;
/// ISA bits 4:55 (LSB 59:8): RPDB, root page directory base (mask
/// 0x0fff_ffff_ffff_ff00, Linux RPDB_MASK / QEMU PRTBE_R_RPDB).
const PATE_RPDB: u64 = bit_range(59, 8);
/// ISA bits 59:63 (LSB 4:0): RPDS, root index size; the root directory
/// holds 2^RPDS entries (2^(RPDS+3) bytes).
const PATE_RPDS: u64 = bit_range(4, 0);

// --- Radix Page Directory Entry (Book III "Radix Tree Page Directory
//     Entry"; QEMU R_PTE_VALID, R_PTE_LEAF, R_PDE_NLB = PRTBE_R_RPDB,
//     R_PDE_NLS; Microwatt data(63), data(62), data(55 downto 8),
//     data(4 downto 0)) ---

/// ISA bit 0 (LSB 63): V, valid (directories and leaves).
const V: u64 = 1 << 63;
/// ISA bit 1 (LSB 62): L, leaf — 0 in a directory entry, 1 in a PTE.
const L: u64 = 1 << 62;
/// ISA bits 4:55 (LSB 59:8): NLB, next-level base.
const PDE_NLB: u64 = bit_range(59, 8);
/// ISA bits 59:63 (LSB 4:0): NLS, next-level size (index bits).
const PDE_NLS: u64 = bit_range(4, 0);
/// Smallest NLS (and RPDS): a table of fewer than 2^5 entries is a bad
/// configuration (QEMU DSISR_R_BADCONFIG, Microwatt badtree).
const MIN_TABLE_BITS: u32 = 5;
/// Smallest page: 4 KiB — a directory may not leave fewer than 12 bits.
const MIN_PAGE_SHIFT: u32 = 12;
/// Size of a table entry; a table of 2^n entries is 2^(n+3) bytes.
const ENTRY_SHIFT: u32 = 3;

// --- Radix Page Table Entry, the leaf (Book III "Radix Tree Page Table
//     Entry"; QEMU R_PTE_*; Linux book3s/64/pgtable.h _PAGE_*) ---

/// ISA bit 2 (LSB 61): SW0, software.
#[allow(dead_code)]
const PTE_SW0: u64 = 1 << 61;
/// ISA bits 7:51 (LSB 56:12): RPN, real page number (QEMU R_PTE_RPN =
/// 0x01ff_ffff_ffff_f000; KVM's nested walk uses the same mask).
const PTE_RPN: u64 = bit_range(56, 12);
/// ISA bits 52:54 (LSB 11:9): SW1..SW3, software.
#[allow(dead_code)]
const PTE_SW1_3: u64 = bit_range(11, 9);
/// ISA bit 55 (LSB 8): R, reference.
const PTE_R: u64 = 1 << 8;
/// ISA bit 56 (LSB 7): C, change.
const PTE_C: u64 = 1 << 7;
/// ISA bits 58:59 (LSB 5:4): ATT, storage attributes: 0b00 normal,
/// 0b01 SAO, 0b10 non-idempotent I/O (guarded), 0b11 tolerant I/O.
const PTE_ATT_SHIFT: u32 = 4;
/// Mask of ATT once shifted down.
const PTE_ATT_MASK: u64 = 0b11;
/// ATT value for non-idempotent I/O (guarded: no instruction fetch).
const ATT_NON_IDEMPOTENT_IO: u8 = 0b10;
/// ISA bit 60 (LSB 3): EAA privileged (process scope only; ignored here).
#[allow(dead_code)]
const PTE_EAA_PRIV: u64 = 1 << 3;
/// ISA bit 61 (LSB 2): EAA read.
const PTE_EAA_READ: u64 = 1 << 2;
/// ISA bit 62 (LSB 1): EAA read/write.
const PTE_EAA_RW: u64 = 1 << 1;
/// ISA bit 63 (LSB 0): EAA execute.
const PTE_EAA_EXEC: u64 = 1 << 0;

/// How the processor records Reference and Change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RadixCaps {
    /// True: the hardware sets R (and C on a store) itself. False: it takes
    /// an HDSI/HISI with "set RC" instead, reported as
    /// [`RadixFault::NeedsRc`].
    pub rc_update: bool,
}

/// A decoded, valid PATE doubleword 0 (radix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RadixRoot {
    /// Tree size in address bits: RTS + 31 (52 for RTS = 21).
    pub tree_bits: u8,
    /// Physical address of the root directory (RPDB).
    pub root: u64,
    /// Root index bits (RPDS): the root holds 2^RPDS entries.
    pub root_index_bits: u8,
}

/// Why a PATE doubleword 0 cannot start a radix walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PateError {
    /// HR = 0: the partition uses the hashed page table.
    NotRadix,
    /// RPDS < 5; carries it.
    RootIndexTooSmall(u8),
    /// RPDS leaves fewer than 12 bits of the tree size.
    RootIndexTooLarge {
        /// RPDS.
        rpds: u8,
        /// Tree size in bits.
        tree_bits: u8,
    },
    /// RPDB is not aligned to the root's size (2^(RPDS+3) bytes).
    MisalignedRoot {
        /// RPDB.
        root: u64,
        /// The root's size in bytes.
        size: u64,
    },
}

/// A successful partition-scoped translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RadixTranslation {
    /// Host real address.
    pub hpa: u64,
    /// Level of the leaf, counted from the root (0 = in the root directory).
    pub level: u8,
    /// Size of the page: 2^(bits left below the leaf's index).
    pub page_size: u64,
    /// Loads allowed (EAA Read or Read/Write).
    pub read: bool,
    /// Stores allowed (EAA Read/Write).
    pub write: bool,
    /// Instruction fetches allowed (EAA Execute, and ATT ≠ 0b10).
    pub exec: bool,
    /// ATT field (LSB 5:4): 0 normal, 1 SAO, 2 non-idempotent I/O,
    /// 3 tolerant I/O.
    pub att: u8,
    /// R bit of the leaf after the walk.
    pub reference: bool,
    /// C bit of the leaf after the walk.
    pub change: bool,
    /// The leaf entry after the walk (including any R/C just set), as a
    /// native integer (decoded from big-endian memory).
    pub leaf_entry: u64,
}

/// What is wrong with the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadTreeReason {
    /// A directory entry's NLS is below 5; carries it.
    NlsTooSmall(u8),
    /// A directory entry's NLS would leave fewer than 12 address bits.
    NlsTooLarge {
        /// NLS.
        nls: u8,
        /// Address bits left below this directory's index.
        remaining: u8,
    },
    /// NLB is not aligned to the next table's size.
    MisalignedTable {
        /// NLB.
        base: u64,
        /// The next table's size in bytes (2^(NLS+3)).
        size: u64,
    },
    /// A leaf's RPN has bits set below its page size.
    MisalignedLeaf {
        /// The RPN field in place (LSB 56:12).
        rpn: u64,
        /// The page size.
        page_size: u64,
    },
}

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RadixFault {
    /// The PATE doubleword 0 is not a usable radix root.
    InvalidPate(PateError),
    /// The guest real address has bits set at or above the tree size.
    AddressTooWide {
        /// The guest real address.
        gpa: u64,
        /// The tree size in bits.
        width: u8,
    },
    /// An entry lies outside the memory (reading it, or writing back R/C,
    /// failed). Not an architectural event.
    EntryOutsideMemory {
        /// Level of the entry.
        level: u8,
        /// Physical address of the entry.
        pa: u64,
    },
    /// V = 0 (HDSI/HISI, "no translation").
    NotValid {
        /// Level of the entry.
        level: u8,
        /// Its value.
        entry: u64,
    },
    /// A bad directory entry or leaf (HDSI/HISI, bad radix configuration).
    BadTree {
        /// Level of the offending entry.
        level: u8,
        /// Its value.
        entry: u64,
        /// What is wrong.
        reason: BadTreeReason,
    },
    /// The EAA (or ATT for a fetch) does not allow the access.
    Permission {
        /// Level of the leaf.
        level: u8,
        /// Its value.
        entry: u64,
        /// The access attempted.
        access: Access,
    },
    /// R (or C for a store) is clear and [`RadixCaps::rc_update`] is false:
    /// the HDSI/HISI with "set RC" that software must handle.
    NeedsRc {
        /// Level of the leaf.
        level: u8,
        /// Its value.
        entry: u64,
        /// The access attempted.
        access: Access,
    },
}

impl fmt::Display for RadixFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RadixFault::InvalidPate(e) => write!(f, "invalid partition table entry: {e:?}"),
            RadixFault::AddressTooWide { gpa, width } => {
                write!(
                    f,
                    "guest real address {gpa:#x} wider than the {width}-bit tree"
                )
            }
            RadixFault::EntryOutsideMemory { level, pa } => {
                write!(f, "level-{level} radix entry at {pa:#x} is outside memory")
            }
            RadixFault::NotValid { level, entry } => {
                write!(f, "invalid radix entry at level {level}: {entry:#x}")
            }
            RadixFault::BadTree {
                level,
                entry,
                reason,
            } => write!(
                f,
                "bad radix tree at level {level} ({entry:#x}): {reason:?}"
            ),
            RadixFault::Permission {
                level,
                entry,
                access,
            } => write!(
                f,
                "{access:?} not permitted by leaf {entry:#x} at level {level}"
            ),
            RadixFault::NeedsRc {
                level,
                entry,
                access,
            } => write!(
                f,
                "{access:?} needs R/C set in leaf {entry:#x} at level {level}"
            ),
        }
    }
}

impl std::error::Error for RadixFault {}

/// Decodes and checks PATE doubleword 0 for a radix partition.
pub fn decode_pate(dw0: u64) -> Result<RadixRoot, PateError> {
    if dw0 & PATE_HR == 0 {
        return Err(PateError::NotRadix);
    }
    let rts = ((dw0 >> PATE_RTS1_SHIFT) & PATE_RTS1_MASK) << 3
        | ((dw0 >> PATE_RTS2_SHIFT) & PATE_RTS2_MASK);
    let tree_bits = rts as u32 + RTS_BIAS; // 31..=62
    let rpds = (dw0 & PATE_RPDS) as u32;
    if rpds < MIN_TABLE_BITS {
        return Err(PateError::RootIndexTooSmall(rpds as u8));
    }
    if rpds + MIN_PAGE_SHIFT > tree_bits {
        return Err(PateError::RootIndexTooLarge {
            rpds: rpds as u8,
            tree_bits: tree_bits as u8,
        });
    }
    let root = dw0 & PATE_RPDB;
    let size = 1u64 << (rpds + ENTRY_SHIFT);
    if root & (size - 1) != 0 {
        return Err(PateError::MisalignedRoot { root, size });
    }
    Ok(RadixRoot {
        tree_bits: tree_bits as u8,
        root,
        root_index_bits: rpds as u8,
    })
}

/// Translates the guest real address `gpa` for `access` through the
/// partition-scoped tree of `pate_dw0`. With [`RadixCaps::rc_update`] the
/// leaf's R bit (and C on a store) is set when the translation otherwise
/// succeeds; nothing is written for a failed translation.
pub fn translate<M: PhysMem + ?Sized>(
    mem: &mut M,
    pate_dw0: u64,
    caps: &RadixCaps,
    gpa: u64,
    access: Access,
) -> Result<RadixTranslation, RadixFault> {
    let walk = walk(&*mem, pate_dw0, caps, gpa, access)?;
    let mut t = walk.translation;
    if walk.rc_bits != 0 {
        let (level, pa) = (t.level, walk.leaf_pa);
        let new = set_bits_be(mem, pa, walk.rc_bits)
            .ok_or(RadixFault::EntryOutsideMemory { level, pa })?;
        t.leaf_entry = new;
        t.reference = new & PTE_R != 0;
        t.change = new & PTE_C != 0;
    }
    Ok(t)
}

/// Same as [`translate`] but never writes: with `rc_update` a translation
/// that would set R/C succeeds and reports the leaf as it is in memory.
pub fn peek<M: PhysMem + ?Sized>(
    mem: &M,
    pate_dw0: u64,
    caps: &RadixCaps,
    gpa: u64,
    access: Access,
) -> Result<RadixTranslation, RadixFault> {
    walk(mem, pate_dw0, caps, gpa, access).map(|w| w.translation)
}

/// Outcome of a successful read-only walk.
struct Walk {
    translation: RadixTranslation,
    /// Physical address of the leaf.
    leaf_pa: u64,
    /// R/C bits the hardware would set (0 if none).
    rc_bits: u64,
}

/// Reads the big-endian 8-byte entry at `pa`; `None` if outside memory.
fn read_u64_be<M: PhysMem + ?Sized>(mem: &M, pa: u64) -> Option<u64> {
    let mut buf = [0u8; 8];
    mem.read(pa, &mut buf).then(|| u64::from_be_bytes(buf))
}

/// Sets `bits` in the big-endian entry at `pa` (re-read, OR, write back
/// only if something changed). Returns the new value.
fn set_bits_be<M: PhysMem + ?Sized>(mem: &mut M, pa: u64, bits: u64) -> Option<u64> {
    let old = read_u64_be(mem, pa)?;
    let new = old | bits;
    if new != old && !mem.write(pa, &new.to_be_bytes()) {
        return None;
    }
    Some(new)
}

/// The read-only walk shared by [`translate`] and [`peek`].
fn walk<M: PhysMem + ?Sized>(
    mem: &M,
    pate_dw0: u64,
    caps: &RadixCaps,
    gpa: u64,
    access: Access,
) -> Result<Walk, RadixFault> {
    let root = decode_pate(pate_dw0).map_err(RadixFault::InvalidPate)?;
    let width = root.tree_bits;
    if gpa >> width != 0 {
        return Err(RadixFault::AddressTooWide { gpa, width });
    }

    // `remaining`: address bits not yet consumed by an index (starts at the
    // tree size, always ≥ 12 + the next table's index bits).
    let mut remaining = u32::from(root.tree_bits);
    let mut table = root.root;
    let mut index_bits = u32::from(root.root_index_bits);
    let mut level: u8 = 0;
    loop {
        remaining -= index_bits;
        let index = (gpa >> remaining) & ((1u64 << index_bits) - 1);
        // table < 2^60 and index × 8 < 2^34: no overflow.
        let pa = table + (index << ENTRY_SHIFT);
        let entry = read_u64_be(mem, pa).ok_or(RadixFault::EntryOutsideMemory { level, pa })?;
        if entry & V == 0 {
            return Err(RadixFault::NotValid { level, entry });
        }

        if entry & L == 0 {
            // Directory entry: NLS and NLB describe the next table.
            let nls = (entry & PDE_NLS) as u32;
            let bad = |reason| RadixFault::BadTree {
                level,
                entry,
                reason,
            };
            if nls < MIN_TABLE_BITS {
                return Err(bad(BadTreeReason::NlsTooSmall(nls as u8)));
            }
            if nls + MIN_PAGE_SHIFT > remaining {
                return Err(bad(BadTreeReason::NlsTooLarge {
                    nls: nls as u8,
                    remaining: remaining as u8,
                }));
            }
            let base = entry & PDE_NLB;
            let size = 1u64 << (nls + ENTRY_SHIFT);
            if base & (size - 1) != 0 {
                return Err(bad(BadTreeReason::MisalignedTable { base, size }));
            }
            table = base;
            index_bits = nls;
            level += 1;
            continue;
        }

        // Leaf: maps 2^remaining bytes.
        let page_size = 1u64 << remaining;
        let offset_mask = page_size - 1;
        let rpn = entry & PTE_RPN;
        if rpn & offset_mask != 0 {
            return Err(RadixFault::BadTree {
                level,
                entry,
                reason: BadTreeReason::MisalignedLeaf { rpn, page_size },
            });
        }
        let att = ((entry >> PTE_ATT_SHIFT) & PTE_ATT_MASK) as u8;
        let read = entry & (PTE_EAA_READ | PTE_EAA_RW) != 0;
        let write = entry & PTE_EAA_RW != 0;
        let exec = entry & PTE_EAA_EXEC != 0 && att != ATT_NON_IDEMPOTENT_IO;
        let allowed = match access {
            Access::Read => read,
            Access::Write => write,
            Access::ExecSupervisor | Access::ExecUser => exec,
        };
        if !allowed {
            return Err(RadixFault::Permission {
                level,
                entry,
                access,
            });
        }
        let mut needed = PTE_R;
        if access == Access::Write {
            needed |= PTE_C;
        }
        let missing = needed & !entry;
        if missing != 0 && !caps.rc_update {
            return Err(RadixFault::NeedsRc {
                level,
                entry,
                access,
            });
        }
        let translation = RadixTranslation {
            hpa: rpn | (gpa & offset_mask),
            level,
            page_size,
            read,
            write,
            exec,
            att,
            reference: entry & PTE_R != 0,
            change: entry & PTE_C != 0,
            leaf_entry: entry,
        };
        return Ok(Walk {
            translation,
            leaf_pa: pa,
            rc_bits: missing,
        });
    }
}
