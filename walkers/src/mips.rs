//! MIPS64 VZ GPA-table walker: what the root-TLB refill of a KVM host does with a
//! guest-physical address, and what the TLB then does with the access.
//!
//! Written from:
//!
//! * the MIPS64 Architecture for Programmers, Vol. III (privileged resource architecture):
//!   EntryLo0/EntryLo1 (G bit 0, V bit 1, D bit 2, C bits 5:3, PFN from bit 6 in 4 KiB frames,
//!   XI bit 62 and RI bit 63 with RIXI), PageGrain.IEC, the TLB exceptions (TLB Refill, TLB
//!   Invalid, TLB Modified, TLB Read-Inhibit, TLB Execute-Inhibit) and their Cause.ExcCode
//!   values (Mod 1, TLBL 2, TLBS 3, TLBRI 19, TLBXI 20; Linux `mipsregs.h` EXCCODE_*), and the
//!   64-bit unmapped segments xkphys and ckseg0/ckseg1;
//! * Vol. IV-i (VZ): GPA→RPA translations are root-TLB entries tagged with the guest's GuestID;
//! * Linux `arch/mips/include/asm/pgtable-bits.h`: the PTE holds software bits below
//!   `_PAGE_GLOBAL_SHIFT` and the EntryLo bits from there on, so the refill writes
//!   `pte >> _PAGE_GLOBAL_SHIFT` to EntryLo, with RI/XI (just below G) rotated to bits 63:62
//!   (`pte_to_entrylo`); `asm/pgtable.h` `pte_mkyoung`/`pte_mkdirty`;
//! * Linux `arch/mips/kvm/mmu.c`: the GPA table in the host layout (directories hold kernel
//!   virtual addresses of the next table; empty ones point at `invalid_pmd_table` /
//!   `invalid_pte_table`; empty PTEs are 0), and `_kvm_mips_map_page_fast` for
//!   [`kvm_fast_path`].
//!
//! The PTE layout is a configuration value ([`MipsPteLayout`]) because the host kernel's
//! configuration decides it (RIXI, huge TLB support, PTE_SPECIAL move the bits).
//!
//! # The walk
//!
//! Like Linux's 64-bit refill handler: start from the PGD pointer (a kernel virtual address),
//! index each directory with the GPA, load the next pointer (again a virtual address), then
//! load the even/odd PTE pair of the page table and convert both to EntryLo. Directory entries
//! are followed whatever they hold: an empty one points at an invalid table whose PTEs are 0,
//! which gives EntryLo V = 0. Pointers are translated with the unmapped segments the refill
//! handler runs in: xkphys (`0b10` in bits 63:62; PA = the low PABITS bits, bits 58:PABITS must
//! be 0) and ckseg0 / ckseg1 (PA = VA − 0xFFFF_FFFF_8000_0000 / −0xFFFF_FFFF_A000_0000). Any
//! other pointer is reported as [`MipsFault::MappedPointer`].
//!
//! # The access check
//!
//! On the EntryLo the address selects (the even page for address bit `PAGE_SHIFT` = 0):
//! V = 0 → TLB Invalid (TLBL for loads and fetches, TLBS for stores); a fetch with XI = 1 →
//! TLB Execute-Inhibit; a load with RI = 1 → TLB Read-Inhibit (with PageGrain.IEC = 0 both
//! are reported as TLBL); a store with D = 0 → TLB Modified.
//!
//! # Choices
//!
//! * A GPA with bits at or above the walk's span: [`MipsFault::AddressTooWide`].
//! * Entries outside memory: [`MipsFault::EntryOutsideMemory`].
//! * EntryLo PFN bits beyond PABITS are ignored; PFN bits below the page size are ignored.

use std::fmt;

use crate::{bit_range, Access, PhysMem};

// --- EntryLo (Vol. III "EntryLo0, EntryLo1") ---

/// EntryLo bit 1: V.
const LO_V: u64 = 1 << 1;
/// EntryLo bit 2: D (write enable).
const LO_D: u64 = 1 << 2;
/// EntryLo bits 5:3: C, the cache coherency attribute.
const LO_C_SHIFT: u32 = 3;
/// EntryLo PFN starts at bit 6 and counts 4 KiB frames.
const LO_PFN_SHIFT: u32 = 6;
/// EntryLo bit 62: XI (RIXI).
const LO_XI: u64 = 1 << 62;
/// EntryLo bit 63: RI (RIXI).
const LO_RI: u64 = 1 << 63;

// --- 64-bit unmapped segments (Vol. III "Virtual Memory": xkphys, ckseg0, ckseg1) ---

const CKSEG0: u64 = 0xFFFF_FFFF_8000_0000;
const CKSEG1: u64 = 0xFFFF_FFFF_A000_0000;
const CKSSEG: u64 = 0xFFFF_FFFF_C000_0000;

/// Where the host kernel puts each PTE bit (bit numbers, LSB = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MipsPteLayout {
    /// `_PAGE_PRESENT` (software).
    pub present: u32,
    /// `_PAGE_WRITE` (software).
    pub write: u32,
    /// `_PAGE_ACCESSED` (software).
    pub accessed: u32,
    /// `_PAGE_MODIFIED` (software).
    pub modified: u32,
    /// `_PAGE_NO_EXEC` (XI), when the layout has RIXI.
    pub no_exec: Option<u32>,
    /// `_PAGE_NO_READ` (RI), when the layout has RIXI.
    pub no_read: Option<u32>,
    /// `_PAGE_GLOBAL`: EntryLo starts here.
    pub global: u32,
    /// `_PAGE_VALID`.
    pub valid: u32,
    /// `_PAGE_DIRTY`.
    pub dirty: u32,
    /// `_CACHE_SHIFT` (3 bits).
    pub cache: u32,
    /// `_PFN_SHIFT`.
    pub pfn_shift: u32,
}

impl MipsPteLayout {
    /// Linux, 64-bit, R2 or later with RIXI, huge TLB support and PTE_SPECIAL
    /// (`pgtable-bits.h`, "64-bit, R2 or later: CCC D V G RI/R XI [S H] M A W P"):
    /// PRESENT 0, WRITE 1, ACCESSED 2, MODIFIED 3, (HUGE 4, SPECIAL 5), XI 6, RI 7, G 8, V 9,
    /// D 10, CCA 13:11, PFN at `PAGE_SHIFT - 12 + 14`.
    pub const fn linux64_rixi(page_shift: u32) -> MipsPteLayout {
        MipsPteLayout {
            present: 0,
            write: 1,
            accessed: 2,
            modified: 3,
            no_exec: Some(6),
            no_read: Some(7),
            global: 8,
            valid: 9,
            dirty: 10,
            cache: 11,
            pfn_shift: page_shift.wrapping_sub(12).wrapping_add(14),
        }
    }

    /// Whether the hardware fields sit where `pte >> global` (and the RI/XI rotation) puts
    /// them in EntryLo, and every field fits the word.
    fn consistent(&self, page_shift: u32) -> bool {
        let mut singles = vec![
            self.present,
            self.write,
            self.accessed,
            self.modified,
            self.global,
            self.valid,
            self.dirty,
        ];
        singles.extend(self.no_exec);
        singles.extend(self.no_read);
        if singles.iter().any(|&b| b > 63) || self.cache > 61 || self.pfn_shift > 63 {
            return false;
        }
        // No two fields share a bit (the PFN field runs from pfn_shift to the top).
        let pfn_field = bit_range(63, self.pfn_shift);
        let cache_field = bit_range(self.cache + 2, self.cache);
        if pfn_field & cache_field != 0 {
            return false;
        }
        let mut used = pfn_field | cache_field;
        for b in singles {
            if used & (1 << b) != 0 {
                return false;
            }
            used |= 1 << b;
        }
        if self.valid != self.global + 1
            || self.dirty != self.global + 2
            || self.cache != self.global + 3
            || Some(self.pfn_shift) != (self.global + 6 + page_shift).checked_sub(12)
        {
            return false;
        }
        match (self.no_exec, self.no_read) {
            (None, None) => true,
            (Some(xi), Some(ri)) => ri + 1 == self.global && xi + 1 == ri,
            _ => false,
        }
    }

    fn rixi(&self) -> Option<(u32, u32)> {
        match (self.no_exec, self.no_read) {
            (Some(xi), Some(ri)) => Some((xi, ri)),
            _ => None,
        }
    }
}

/// Converts a PTE to EntryLo as the refill handler does (`pte_to_entrylo`): the PTE shifted
/// right by `global`, and with RIXI the RI/XI bits rotated to EntryLo bits 63:62.
pub fn pte_to_entrylo(layout: &MipsPteLayout, pte: u64) -> u64 {
    let g = layout.global.min(63);
    let mut lo = pte >> g;
    if let Some((xi, ri)) = layout.rixi() {
        if pte & (1u64 << ri.min(63)) != 0 {
            lo |= LO_RI;
        }
        if pte & (1u64 << xi.min(63)) != 0 {
            lo |= LO_XI;
        }
    }
    lo
}

/// How the walk is configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MipsWalkConfig {
    /// The PTE layout.
    pub layout: MipsPteLayout,
    /// log2 of the page size (12..=16).
    pub page_shift: u32,
    /// Index width of each table, page table first (PTE, then PMD if any, then PGD).
    pub index_bits: Vec<u32>,
    /// PABITS.
    pub pabits: u32,
    /// Entries are stored big-endian (a big-endian host).
    pub big_endian: bool,
    /// PageGrain.IEC: RI/XI violations raise TLBRI/TLBXI instead of TLBL.
    pub iec: bool,
}

impl MipsWalkConfig {
    fn check(&self) -> Result<u32, MipsFault> {
        if !(12..=16).contains(&self.page_shift) {
            return Err(MipsFault::InvalidConfig("page size"));
        }
        if !(2..=4).contains(&self.index_bits.len())
            || self.index_bits.iter().any(|b| !(1..=20).contains(b))
        {
            return Err(MipsFault::InvalidConfig("table index widths"));
        }
        if !(self.page_shift..=59).contains(&self.pabits) {
            return Err(MipsFault::InvalidConfig("PABITS"));
        }
        if !self.layout.consistent(self.page_shift) {
            return Err(MipsFault::InvalidConfig("PTE layout"));
        }
        let span = self.page_shift + self.index_bits.iter().sum::<u32>();
        if span > 63 {
            return Err(MipsFault::InvalidConfig("span wider than 63 bits"));
        }
        Ok(span)
    }

    fn read(&self, mem: &(impl PhysMem + ?Sized), pa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        mem.read(pa, &mut b).then(|| {
            if self.big_endian {
                u64::from_be_bytes(b)
            } else {
                u64::from_le_bytes(b)
            }
        })
    }

    fn write(&self, mem: &mut (impl PhysMem + ?Sized), pa: u64, v: u64) -> bool {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        mem.write(pa, &b)
    }

    /// The physical address of a kernel pointer in an unmapped segment.
    fn unmapped(&self, va: u64) -> Option<u64> {
        if va >> 62 == 0b10 {
            // xkphys: bits 61:59 are the CCA, bits 58:PABITS must be zero.
            if va & bit_range(58, self.pabits) != 0 {
                return None;
            }
            return Some(va & bit_range(self.pabits - 1, 0));
        }
        if (CKSEG0..CKSEG1).contains(&va) {
            return Some(va - CKSEG0);
        }
        if (CKSEG1..CKSSEG).contains(&va) {
            return Some(va - CKSEG1);
        }
        None
    }
}

/// The pair a refill writes to the TLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MipsTlbPair {
    /// EntryLo0 (even page).
    pub entrylo0: u64,
    /// EntryLo1 (odd page).
    pub entrylo1: u64,
    /// Physical address of the even PTE.
    pub pte_pa: u64,
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MipsTranslation {
    /// The root-physical address.
    pub hpa: u64,
    /// The page size.
    pub page_size: u64,
    /// The refilled pair.
    pub pair: MipsTlbPair,
    /// The EntryLo the access used.
    pub entrylo: u64,
    /// The PTE for the address (after any fast-path change considered).
    pub pte: u64,
    /// Its physical address.
    pub pte_pa: u64,
    /// The cache coherency attribute (EntryLo.C).
    pub cca: u8,
}

/// The TLB exceptions of an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MipsTlbExc {
    /// TLB Invalid: the EntryLo has V = 0.
    Invalid,
    /// TLB Modified: a store to an EntryLo with D = 0.
    Modified,
    /// TLB Read-Inhibit: a load from an EntryLo with RI = 1.
    ReadInhibit,
    /// TLB Execute-Inhibit: a fetch from an EntryLo with XI = 1.
    ExecInhibit,
}

/// An exception raised by the access after the refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MipsTlbException {
    /// Which exception.
    pub kind: MipsTlbExc,
    /// Cause.ExcCode: Mod 1, TLBL 2, TLBS 3, TLBRI 19, TLBXI 20.
    pub exc_code: u8,
    /// The access.
    pub access: Access,
    /// The refilled pair.
    pub pair: MipsTlbPair,
    /// The EntryLo the access used.
    pub entrylo: u64,
    /// The PTE for the address (0 when empty).
    pub pte: u64,
    /// Its physical address.
    pub pte_pa: u64,
}

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MipsFault {
    /// The configuration cannot be walked (reason).
    InvalidConfig(&'static str),
    /// The GPA has bits at or above the walk's span.
    AddressTooWide {
        /// The address.
        gpa: u64,
        /// The span in bits.
        width: u8,
    },
    /// A table pointer (the PGD pointer or a directory entry) is not in xkphys, ckseg0 or
    /// ckseg1: the refill handler would take a nested TLB exception.
    MappedPointer {
        /// The level of the table it should point at (0 = page table).
        level: u8,
        /// The pointer.
        va: u64,
    },
    /// An entry lies outside memory.
    EntryOutsideMemory {
        /// Its level (0 = PTE).
        level: u8,
        /// Its physical address.
        pa: u64,
    },
    /// A TLB exception of the access.
    Tlb(MipsTlbException),
}

impl fmt::Display for MipsFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MipsFault::InvalidConfig(why) => write!(f, "invalid walk configuration: {why}"),
            MipsFault::AddressTooWide { gpa, width } => {
                write!(f, "GPA {gpa:#x} wider than the {width}-bit walk")
            }
            MipsFault::MappedPointer { level, va } => {
                write!(
                    f,
                    "pointer to a level-{level} table {va:#x} is not unmapped"
                )
            }
            MipsFault::EntryOutsideMemory { level, pa } => {
                write!(f, "level-{level} entry at {pa:#x} is outside memory")
            }
            MipsFault::Tlb(e) => write!(
                f,
                "TLB {:?} (ExcCode {}) on {:?}: PTE {:#x}",
                e.kind, e.exc_code, e.access, e.pte
            ),
        }
    }
}

impl std::error::Error for MipsFault {}

#[derive(Debug, Clone, Copy)]
struct Leaf {
    pte: u64,
    pte_pa: u64,
    buddy: u64,
    odd: bool,
    even_pa: u64,
}

fn walk_leaf<M: PhysMem + ?Sized>(
    mem: &M,
    pgd: u64,
    cfg: &MipsWalkConfig,
    gpa: u64,
) -> Result<Leaf, MipsFault> {
    let span = cfg.check()?;
    if gpa >> span != 0 {
        return Err(MipsFault::AddressTooWide {
            gpa,
            width: span as u8,
        });
    }
    let levels = cfg.index_bits.len();
    let mut shifts = [0u32; 4];
    let mut s = cfg.page_shift;
    for (l, bits) in cfg.index_bits.iter().enumerate() {
        shifts[l] = s;
        s += bits;
    }
    let mut table = pgd;
    for l in (1..levels).rev() {
        let pa_table = cfg.unmapped(table).ok_or(MipsFault::MappedPointer {
            level: l as u8,
            va: table,
        })?;
        let index = (gpa >> shifts[l]) & ((1u64 << cfg.index_bits[l]) - 1);
        let pa = pa_table.wrapping_add(index * 8);
        table = cfg
            .read(mem, pa)
            .ok_or(MipsFault::EntryOutsideMemory { level: l as u8, pa })?;
    }
    let pa_table = cfg.unmapped(table).ok_or(MipsFault::MappedPointer {
        level: 0,
        va: table,
    })?;
    let index = (gpa >> cfg.page_shift) & ((1u64 << cfg.index_bits[0]) - 1);
    let even_pa = pa_table.wrapping_add((index & !1) * 8);
    let odd_pa = even_pa.wrapping_add(8);
    let even = cfg
        .read(mem, even_pa)
        .ok_or(MipsFault::EntryOutsideMemory {
            level: 0,
            pa: even_pa,
        })?;
    let odd = cfg.read(mem, odd_pa).ok_or(MipsFault::EntryOutsideMemory {
        level: 0,
        pa: odd_pa,
    })?;
    let is_odd = index & 1 != 0;
    Ok(if is_odd {
        Leaf {
            pte: odd,
            pte_pa: odd_pa,
            buddy: even,
            odd: true,
            even_pa,
        }
    } else {
        Leaf {
            pte: even,
            pte_pa: even_pa,
            buddy: odd,
            odd: false,
            even_pa,
        }
    })
}

fn finish(
    leaf: &Leaf,
    pte: u64,
    cfg: &MipsWalkConfig,
    gpa: u64,
    access: Access,
) -> Result<MipsTranslation, MipsFault> {
    let (pte0, pte1) = if leaf.odd {
        (leaf.buddy, pte)
    } else {
        (pte, leaf.buddy)
    };
    let pair = MipsTlbPair {
        entrylo0: pte_to_entrylo(&cfg.layout, pte0),
        entrylo1: pte_to_entrylo(&cfg.layout, pte1),
        pte_pa: leaf.even_pa,
    };
    let lo = if leaf.odd {
        pair.entrylo1
    } else {
        pair.entrylo0
    };
    let exc = |kind: MipsTlbExc, exc_code: u8| {
        Err(MipsFault::Tlb(MipsTlbException {
            kind,
            exc_code,
            access,
            pair,
            entrylo: lo,
            pte,
            pte_pa: leaf.pte_pa,
        }))
    };
    let fetch = access.is_fetch();
    if lo & LO_V == 0 {
        return exc(
            MipsTlbExc::Invalid,
            if access == Access::Write { 3 } else { 2 },
        );
    }
    if cfg.layout.rixi().is_some() {
        if fetch && lo & LO_XI != 0 {
            return exc(MipsTlbExc::ExecInhibit, if cfg.iec { 20 } else { 2 });
        }
        if access == Access::Read && lo & LO_RI != 0 {
            return exc(MipsTlbExc::ReadInhibit, if cfg.iec { 19 } else { 2 });
        }
    }
    if access == Access::Write && lo & LO_D == 0 {
        return exc(MipsTlbExc::Modified, 1);
    }
    let page = 1u64 << cfg.page_shift;
    let pfn_bits = cfg.pabits - 12;
    let pfn_mask = if pfn_bits == 0 {
        0
    } else {
        bit_range(pfn_bits - 1, 0)
    };
    let pfn = (lo >> LO_PFN_SHIFT) & pfn_mask;
    let frame = (pfn << 12) & !(page - 1);
    Ok(MipsTranslation {
        hpa: frame | (gpa & (page - 1)),
        page_size: page,
        pair,
        entrylo: lo,
        pte,
        pte_pa: leaf.pte_pa,
        cca: ((lo >> LO_C_SHIFT) & 7) as u8,
    })
}

/// The pair the refill handler writes for `gpa` (EntryLo0/EntryLo1), without an access check.
pub fn refill<M: PhysMem + ?Sized>(
    mem: &M,
    pgd: u64,
    cfg: &MipsWalkConfig,
    gpa: u64,
) -> Result<MipsTlbPair, MipsFault> {
    let leaf = walk_leaf(mem, pgd, cfg, gpa)?;
    let (pte0, pte1) = if leaf.odd {
        (leaf.buddy, leaf.pte)
    } else {
        (leaf.pte, leaf.buddy)
    };
    Ok(MipsTlbPair {
        entrylo0: pte_to_entrylo(&cfg.layout, pte0),
        entrylo1: pte_to_entrylo(&cfg.layout, pte1),
        pte_pa: leaf.even_pa,
    })
}

/// Translates `gpa` for `access` from the PGD at the kernel virtual address `pgd`. MIPS has no
/// hardware A/D, so nothing is written; this is [`peek`] with the signature of the other
/// walkers.
pub fn translate<M: PhysMem + ?Sized>(
    mem: &mut M,
    pgd: u64,
    cfg: &MipsWalkConfig,
    gpa: u64,
    access: Access,
) -> Result<MipsTranslation, MipsFault> {
    peek(&*mem, pgd, cfg, gpa, access)
}

/// Translates `gpa` for `access` without writing.
pub fn peek<M: PhysMem + ?Sized>(
    mem: &M,
    pgd: u64,
    cfg: &MipsWalkConfig,
    gpa: u64,
    access: Access,
) -> Result<MipsTranslation, MipsFault> {
    let leaf = walk_leaf(mem, pgd, cfg, gpa)?;
    finish(&leaf, leaf.pte, cfg, gpa, access)
}

/// What `_kvm_mips_map_page_fast` makes of a PTE for a fault (`None`: the slow path):
/// `pte_mkyoung` (ACCESSED, and VALID unless RI is set) when not young, then for a write to a
/// PTE without MODIFIED, `pte_mkdirty` (MODIFIED, and DIRTY since WRITE is required).
fn fast_path_value(layout: &MipsPteLayout, pte: u64, write: bool) -> Option<u64> {
    let bit = |b: u32| 1u64 << b.min(63);
    if pte & bit(layout.present) == 0 {
        return None;
    }
    let mut new = pte;
    if new & bit(layout.accessed) == 0 {
        new |= bit(layout.accessed);
        let no_read = layout.no_read.is_some_and(|ri| new & bit(ri) != 0);
        if !no_read {
            new |= bit(layout.valid);
        }
    }
    if write && new & bit(layout.modified) == 0 {
        if new & bit(layout.write) == 0 {
            return None;
        }
        new |= bit(layout.modified) | bit(layout.dirty);
    }
    Some(new)
}

/// KVM's fast path for a GPA fault (`_kvm_mips_map_page_fast`, kvm/mmu.c): marks a present PTE
/// young and, for a write to a writable one, dirty, in memory. Returns whether it handled the
/// fault (false: KVM would take the slow path).
pub fn kvm_fast_path<M: PhysMem + ?Sized>(
    mem: &mut M,
    pgd: u64,
    cfg: &MipsWalkConfig,
    gpa: u64,
    write: bool,
) -> Result<bool, MipsFault> {
    let leaf = walk_leaf(&*mem, pgd, cfg, gpa)?;
    let Some(new) = fast_path_value(&cfg.layout, leaf.pte, write) else {
        return Ok(false);
    };
    if new != leaf.pte && !cfg.write(mem, leaf.pte_pa, new) {
        return Err(MipsFault::EntryOutsideMemory {
            level: 0,
            pa: leaf.pte_pa,
        });
    }
    Ok(true)
}

/// What the guest sees once KVM's fast path has run: [`peek`], and if that raises TLB Invalid
/// or TLB Modified that [`kvm_fast_path`] would handle, the access checked again against the
/// updated PTE. Never writes.
pub fn peek_after_fast_path<M: PhysMem + ?Sized>(
    mem: &M,
    pgd: u64,
    cfg: &MipsWalkConfig,
    gpa: u64,
    access: Access,
) -> Result<MipsTranslation, MipsFault> {
    let leaf = walk_leaf(mem, pgd, cfg, gpa)?;
    match finish(&leaf, leaf.pte, cfg, gpa, access) {
        Err(MipsFault::Tlb(e)) if matches!(e.kind, MipsTlbExc::Invalid | MipsTlbExc::Modified) => {
            match fast_path_value(&cfg.layout, leaf.pte, access == Access::Write) {
                Some(new) => finish(&leaf, new, cfg, gpa, access),
                None => Err(MipsFault::Tlb(e)),
            }
        }
        other => other,
    }
}
