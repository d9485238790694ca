//! LoongArch (LA64) GPA-table walker: what the root TLB refill of a KVM (LVZ) host, or the
//! hardware page-table walker, does with a guest-physical address.
//!
//! Written from:
//!
//! * the LoongArch Reference Manual Vol. 1, §5 "Memory Management": the TLB entry format
//!   (TLBELO0/TLBELO1), the page-walk controller CSRs PWCL and PWCH, the LDDIR/LDPTE
//!   instructions, and the TLB-related exceptions PIL/PIS/PIF/PME/PNR/PNX/PPI (the exception
//!   rules are quoted below as the manual words them);
//! * Linux `arch/loongarch/include/asm/pgtable-bits.h` (software bits P, W and the
//!   `_PAGE_MODIFIED` bit KVM reuses as its writable bit), `asm/loongarch.h` (the CSR field
//!   layouts and exception codes), `mm/tlb.c` `setup_ptwalker` (how Linux fills PWCL/PWCH) and
//!   `mm/tlbex.S` (the huge-page refill: HUGE cleared, HGLOBAL moved to G, the odd half at
//!   `+ 1 << (HPAGE_SHIFT - 1)`);
//! * Linux `arch/loongarch/kvm/mmu.c` `kvm_map_page_fast` for [`kvm_fast_path`];
//! * QEMU `target/loongarch` (`helper_lddir`, `helper_ldpte`, `loongarch_check_pte`,
//!   `loongarch_ptw`), read to confirm the walk and the hardware-walker A/D rule, which the
//!   manual this walker was written from does not spell out.
//!
//! # The walk
//!
//! The refill handler runs in direct-address mode, so every table address is the low PALEN
//! bits of whatever the entry holds (Linux and KVM store DMW-window virtual addresses for the
//! shared invalid tables; the window bits above PALEN are dropped). Directories are walked from
//! Dir4 down to Dir1, skipping every directory whose width in PWCL/PWCH is 0 (this is Linux's
//! `lddir 3 [, 2] [, 1]` sequence), then the page table (PTbase/PTwidth). A directory entry has
//! no valid bit: it is either a table address (bit 6 clear) or, with bit 6 (HUGE) set, a huge
//! page whose size is that directory's span. LDDIR forms the entry address as
//! `base | index << 3` (an OR, as LDDIR does: tables must be aligned to their size).
//!
//! The refill loads an even/odd pair: for a page table the two adjacent PTEs, for a huge page
//! two halves of it (page size `span / 2`, the odd half at `+ span / 2`, HGLOBAL moved to G).
//! The access is then checked against the half that covers the address.
//!
//! # The access check
//!
//! In the order the manual gives (and QEMU's `loongarch_check_pte`, which checks NR/NX before
//! the privilege level; the two orders agree whenever the privilege check passes):
//!
//! 1. V = 0 → page invalid: PIL (load, code 1), PIS (store, 2), PIF (fetch, 3);
//! 2. "the RPLV of the entry is 0 and CSR.CRMD.PLV is greater than PLV, or RPLV is 1 and
//!    CSR.CRMD.PLV is not equal to PLV" → PPI (7);
//! 3. a load with NR = 1 → PNR (5); a fetch with NX = 1 → PNX (6);
//! 4. a store with D = 0 → PME (4).
//!
//! The privilege level the GPA stage is checked at is [`LaWalkConfig::plv`]; KVM writes PLV 0
//! in every GPA leaf, so a GPA walk must be checked as PLV 0 (inferred: guest user accesses
//! work with those entries).
//!
//! # Hardware page-table walker (PWCH bit 24, HPTW_En)
//!
//! With the hardware walker the presence check uses the software P bit (7) instead of V, and a
//! store needs the software W bit (8) instead of D; on a translation that otherwise succeeds
//! the walker sets V (and D on a store) in the entry with an atomic update ([`translate`]
//! does; [`peek`] never writes). This is Loongson's QEMU model of the 3A6000 walker and the
//! Linux commit "LoongArch: Introduce hardware page table walker" ("PTW can handle all
//! fastpaths of TLBI/TLBL/TLBS/TLBM exceptions by hardware"); the manual edition this walker
//! was written from predates it.
//!
//! # Choices
//!
//! * A GPA with bits at or above the highest directory's span is reported as
//!   [`LaFault::AddressTooWide`] (the refill would silently use the truncated index).
//! * Entries outside memory: [`LaFault::RefillOutsideMemory`] (the TLB refill handler, or the
//!   hardware walker, would read whatever is there).
//! * The PPN bits below the TLB page size are ignored (as the hardware does for a 16 KiB or
//!   huge page).

use std::fmt;

use crate::{bit_range, read_u64_le, set_bits_le, Access, PhysMem};

// --- PWCL (CSR 0x1C), Vol. 1 "Page Walk Controller for Lower Half Address Space"; Linux names
//     the same fields CSR_PWCTL0_{PTBASE, PTWIDTH, DIR0BASE, DIR0WIDTH, DIR1BASE, DIR1WIDTH} ---

/// PWCL bits 4:0: PTbase, the address bit where the page-table index starts.
const PWCL_PTBASE: (u32, u32) = (0, 5);
/// PWCL bits 9:5: PTwidth, the page-table index width.
const PWCL_PTWIDTH: (u32, u32) = (5, 5);
/// PWCL bits 14:10 / 19:15: Dir1_base / Dir1_width.
const PWCL_DIR1: [(u32, u32); 2] = [(10, 5), (15, 5)];
/// PWCL bits 24:20 / 29:25: Dir2_base / Dir2_width.
const PWCL_DIR2: [(u32, u32); 2] = [(20, 5), (25, 5)];
/// PWCL bits 31:30: PTEWidth (0 = 64-bit entries; 1/2/3 = 128/192/256-bit).
const PWCL_PTEWIDTH: (u32, u32) = (30, 2);

// --- PWCH (CSR 0x1D), Vol. 1 "Page Walk Controller for Higher Half Address Space";
//     Linux CSR_PWCTL1_{DIR2BASE, DIR2WIDTH, DIR3BASE, DIR3WIDTH, PTW} ---

/// PWCH bits 5:0 / 11:6: Dir3_base / Dir3_width.
const PWCH_DIR3: [(u32, u32); 2] = [(0, 6), (6, 6)];
/// PWCH bits 17:12 / 23:18: Dir4_base / Dir4_width.
const PWCH_DIR4: [(u32, u32); 2] = [(12, 6), (18, 6)];
/// PWCH bit 24: HPTW_En, the hardware page-table walker (Linux CSR_PWCTL1_PTW).
const PWCH_HPTW_EN: u64 = 1 << 24;

// --- Entries (TLBELO0/1 format, Vol. 1 §5 "TLB entry"; Linux pgtable-bits.h) ---

/// Bit 0: V, valid.
const V: u64 = 1 << 0;
/// Bit 1: D, dirty: a store needs it.
const D: u64 = 1 << 1;
/// Bits 3:2: PLV.
const PLV_SHIFT: u32 = 2;
/// Bits 5:4: MAT, memory access type (0 SUC, 1 CC, 2 WUC).
const MAT_SHIFT: u32 = 4;
/// Bit 6: G in a TLB entry / PTE; HUGE in a directory entry.
const G: u64 = 1 << 6;
/// Bit 6 of a directory entry: the entry is a huge page (LDDIR/LDPTE).
const HUGE: u64 = 1 << 6;
/// Bit 7: P, software present (Linux `_PAGE_PRESENT`); the hardware walker's presence bit.
const P: u64 = 1 << 7;
/// Bit 8: W, software writable (Linux `_PAGE_WRITE`); the hardware walker's write permission.
const W: u64 = 1 << 8;
/// Bit 9: Linux `_PAGE_MODIFIED`, which KVM uses as KVM_PAGE_WRITEABLE (kvm_mmu.h).
const KVM_WRITEABLE: u64 = 1 << 9;
/// Bit 12 of a huge entry: HGLOBAL, moved to G by the refill.
const HGLOBAL: u64 = 1 << 12;
/// Bits 14:13 of a huge entry after LDDIR: the level it was found at (cleared by LDPTE).
const HUGE_LEVEL: u64 = 0b11 << 13;
/// Bit 61: NR, no read.
const NR: u64 = 1 << 61;
/// Bit 62: NX, no execute.
const NX: u64 = 1 << 62;
/// Bit 63: RPLV, restricted privilege level.
const RPLV: u64 = 1 << 63;

/// How the walk is configured: the CSRs the refill handler (or hardware walker) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaWalkConfig {
    /// PWCL (CSR 0x1C).
    pub pwcl: u64,
    /// PWCH (CSR 0x1D); bit 24 enables the hardware page-table walker.
    pub pwch: u64,
    /// PALEN, the physical address width (CPUCFG.1), 12..=60.
    pub palen: u8,
    /// The privilege level the access is checked at (0 for the GPA stage).
    pub plv: u8,
}

/// One directory level of the walk as PWCL/PWCH describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dir {
    /// Manual numbering: 1..=4 for Dir1..Dir4.
    number: u8,
    base: u32,
    width: u32,
}

#[derive(Debug, Clone, Copy)]
struct Decoded {
    /// Directories in walk order (Dir4 first), widths non-zero.
    dirs: [Dir; 4],
    ndirs: usize,
    pt_base: u32,
    pt_width: u32,
    pa_mask: u64,
    hptw: bool,
    span: u32,
}

fn field(v: u64, (shift, width): (u32, u32)) -> u32 {
    ((v >> shift) & ((1 << width) - 1)) as u32
}

impl LaWalkConfig {
    /// Whether PWCH enables the hardware page-table walker.
    pub const fn hardware_walker(&self) -> bool {
        self.pwch & PWCH_HPTW_EN != 0
    }

    fn decode(&self) -> Result<Decoded, LaFault> {
        if field(self.pwcl, PWCL_PTEWIDTH) != 0 {
            return Err(LaFault::InvalidConfig(
                "PWCL.PTEWidth other than 64-bit entries",
            ));
        }
        if !(12..=60).contains(&self.palen) {
            return Err(LaFault::InvalidConfig("PALEN outside 12..=60"));
        }
        if self.plv > 3 {
            return Err(LaFault::InvalidConfig("privilege level above 3"));
        }
        let pt_base = field(self.pwcl, PWCL_PTBASE);
        let pt_width = field(self.pwcl, PWCL_PTWIDTH);
        if pt_base < 12 || pt_width == 0 || pt_base + pt_width > 64 {
            return Err(LaFault::InvalidConfig("PTbase/PTwidth"));
        }
        let raw = [
            (4u8, self.pwch, PWCH_DIR4),
            (3, self.pwch, PWCH_DIR3),
            (2, self.pwcl, PWCL_DIR2),
            (1, self.pwcl, PWCL_DIR1),
        ];
        let mut dirs = [Dir {
            number: 0,
            base: 0,
            width: 0,
        }; 4];
        let mut ndirs = 0;
        let mut span = pt_base + pt_width;
        for (number, reg, [b, w]) in raw {
            let (base, width) = (field(reg, b), field(reg, w));
            if width == 0 {
                continue;
            }
            // A directory entry maps 2^base bytes; a huge one is refilled as two halves.
            if base <= pt_base || width > 31 || base + width > 64 {
                return Err(LaFault::InvalidConfig("Dir base/width"));
            }
            span = span.max(base + width);
            dirs[ndirs] = Dir {
                number,
                base,
                width,
            };
            ndirs += 1;
        }
        Ok(Decoded {
            dirs,
            ndirs,
            pt_base,
            pt_width,
            pa_mask: bit_range(u32::from(self.palen) - 1, 0),
            hptw: self.hardware_walker(),
            span,
        })
    }
}

/// The even/odd pair a TLB refill loads (TLBRELO0/TLBRELO1 and the page size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaTlbPair {
    /// The even half (TLBELO0 format).
    pub lo0: u64,
    /// The odd half (TLBELO1 format).
    pub lo1: u64,
    /// log2 of the size of each half (TLBREHI.PS).
    pub ps: u8,
    /// Where the leaf was found: 0 for a page table, N for a huge page in DirN.
    pub dir: u8,
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaTranslation {
    /// The host-physical address.
    pub hpa: u64,
    /// Bytes mapped by the leaf entry (a huge page counts whole).
    pub page_size: u64,
    /// The refilled pair.
    pub pair: LaTlbPair,
    /// The half of the pair the access used (TLBELO format, after any hardware-walker update).
    pub tlbelo: u64,
    /// The leaf entry in memory (PTE or huge directory entry) after the walk.
    pub entry: u64,
    /// Its physical address.
    pub entry_pa: u64,
    /// MAT of the half used (0 SUC, 1 CC, 2 WUC).
    pub mat: u8,
}

/// The TLB exceptions of an access (ESTAT.Ecode values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaExcCode {
    /// Page invalid for a load (1).
    Pil,
    /// Page invalid for a store (2).
    Pis,
    /// Page invalid for a fetch (3).
    Pif,
    /// Page modification: a store to an entry with D = 0 (4).
    Pme,
    /// Page not readable: a load from an entry with NR = 1 (5).
    Pnr,
    /// Page not executable: a fetch from an entry with NX = 1 (6).
    Pnx,
    /// Page privilege illegal (7).
    Ppi,
}

impl LaExcCode {
    /// The ESTAT.Ecode value (Linux EXCCODE_TLBL .. EXCCODE_TLBPE).
    pub const fn ecode(self) -> u8 {
        match self {
            LaExcCode::Pil => 1,
            LaExcCode::Pis => 2,
            LaExcCode::Pif => 3,
            LaExcCode::Pme => 4,
            LaExcCode::Pnr => 5,
            LaExcCode::Pnx => 6,
            LaExcCode::Ppi => 7,
        }
    }

    /// Whether this is one of the page-invalid exceptions.
    pub const fn is_page_invalid(self) -> bool {
        matches!(self, LaExcCode::Pil | LaExcCode::Pis | LaExcCode::Pif)
    }
}

/// An exception raised by the access after the refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaException {
    /// Which exception.
    pub code: LaExcCode,
    /// The access.
    pub access: Access,
    /// The refilled pair.
    pub pair: LaTlbPair,
    /// The half the access used.
    pub tlbelo: u64,
    /// The leaf entry in memory (0 for an empty PTE).
    pub entry: u64,
    /// Its physical address.
    pub entry_pa: u64,
}

/// Why a translation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaFault {
    /// The configuration cannot be walked (reason).
    InvalidConfig(&'static str),
    /// The GPA has bits at or above the walk's span.
    AddressTooWide {
        /// The address.
        gpa: u64,
        /// The span in bits.
        width: u8,
    },
    /// The TLB refill (exception TLBR, Ecode 0x3F) — or the hardware walker — read an entry
    /// outside memory. Not architectural: hardware would read whatever is there.
    RefillOutsideMemory {
        /// 0 for the page table, N for DirN.
        dir: u8,
        /// The entry's physical address.
        pa: u64,
    },
    /// A TLB exception of the access.
    Exception(LaException),
}

impl fmt::Display for LaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaFault::InvalidConfig(why) => write!(f, "invalid walk configuration: {why}"),
            LaFault::AddressTooWide { gpa, width } => {
                write!(f, "GPA {gpa:#x} wider than the {width}-bit walk")
            }
            LaFault::RefillOutsideMemory { dir, pa } => {
                write!(
                    f,
                    "refill read of the dir-{dir} entry at {pa:#x} is outside memory"
                )
            }
            LaFault::Exception(e) => write!(
                f,
                "{:?} (Ecode {}) on {:?}: entry {:#x}",
                e.code,
                e.code.ecode(),
                e.access,
                e.entry
            ),
        }
    }
}

impl std::error::Error for LaFault {}

/// The leaf a walk ends at.
#[derive(Debug, Clone, Copy)]
struct Leaf {
    entry: u64,
    entry_pa: u64,
    /// The other PTE of the pair (page tables only).
    buddy: u64,
    /// Whether `entry` is the odd PTE (page tables only).
    odd: bool,
    /// 0 for a page table, N for DirN.
    dir: u8,
    /// log2 of the bytes the entry maps.
    shift: u32,
}

fn walk_leaf<M: PhysMem + ?Sized>(
    mem: &M,
    pgd: u64,
    cfg: &LaWalkConfig,
    gpa: u64,
) -> Result<(Leaf, Decoded), LaFault> {
    let dec = cfg.decode()?;
    if dec.span < 64 && gpa >> dec.span != 0 {
        return Err(LaFault::AddressTooWide {
            gpa,
            width: dec.span as u8,
        });
    }
    let mut base = pgd & dec.pa_mask;
    for dir in &dec.dirs[..dec.ndirs] {
        let index = (gpa >> dir.base) & ((1u64 << dir.width) - 1);
        let pa = base | index << 3;
        let e = read_u64_le(mem, pa).ok_or(LaFault::RefillOutsideMemory {
            dir: dir.number,
            pa,
        })?;
        if e & HUGE != 0 {
            return Ok((
                Leaf {
                    entry: e,
                    entry_pa: pa,
                    buddy: 0,
                    odd: false,
                    dir: dir.number,
                    shift: dir.base,
                },
                dec,
            ));
        }
        // A directory entry holds the next table's address; the bits above PALEN (a DMW
        // window) are dropped in direct-address mode.
        base = e & dec.pa_mask;
    }
    let index = (gpa >> dec.pt_base) & ((1u64 << dec.pt_width) - 1);
    let even = index & !1;
    let pa0 = base | even << 3;
    let pa1 = base | (even + 1) << 3;
    let e0 = read_u64_le(mem, pa0).ok_or(LaFault::RefillOutsideMemory { dir: 0, pa: pa0 })?;
    let e1 = read_u64_le(mem, pa1).ok_or(LaFault::RefillOutsideMemory { dir: 0, pa: pa1 })?;
    let odd = index & 1 != 0;
    let (entry, entry_pa, buddy) = if odd { (e1, pa1, e0) } else { (e0, pa0, e1) };
    Ok((
        Leaf {
            entry,
            entry_pa,
            buddy,
            odd,
            dir: 0,
            shift: dec.pt_base,
        },
        dec,
    ))
}

/// The pair LDPTE 0 / LDPTE 1 load for `leaf` (with `entry` standing for the leaf's value).
fn pair_of(leaf: &Leaf, entry: u64) -> LaTlbPair {
    if leaf.dir == 0 {
        let (lo0, lo1) = if leaf.odd {
            (leaf.buddy, entry)
        } else {
            (entry, leaf.buddy)
        };
        return LaTlbPair {
            lo0,
            lo1,
            ps: leaf.shift as u8,
            dir: 0,
        };
    }
    // Huge page (tlbex.S / LDPTE): clear HUGE and the LDDIR level tag, move HGLOBAL to G; the
    // odd half starts half a huge page further.
    let ps = leaf.shift - 1;
    let mut lo = entry & !(HUGE | HUGE_LEVEL);
    if lo & HGLOBAL != 0 {
        lo = (lo & !HGLOBAL) | G;
    }
    LaTlbPair {
        lo0: lo,
        lo1: lo.wrapping_add(1 << ps),
        ps: ps as u8,
        dir: leaf.dir,
    }
}

/// The access check against one half, in the manual's order.
fn check(lo: u64, access: Access, cfg: &LaWalkConfig, hptw: bool) -> Result<(), LaExcCode> {
    let present = if hptw { lo & P != 0 } else { lo & V != 0 };
    if !present {
        return Err(match access {
            Access::Read => LaExcCode::Pil,
            Access::Write => LaExcCode::Pis,
            Access::ExecSupervisor | Access::ExecUser => LaExcCode::Pif,
        });
    }
    let plv = ((lo >> PLV_SHIFT) & 3) as u8;
    let plv_ok = if lo & RPLV == 0 {
        cfg.plv <= plv
    } else {
        cfg.plv == plv
    };
    if !plv_ok {
        return Err(LaExcCode::Ppi);
    }
    match access {
        Access::Read if lo & NR != 0 => Err(LaExcCode::Pnr),
        Access::ExecSupervisor | Access::ExecUser if lo & NX != 0 => Err(LaExcCode::Pnx),
        Access::Write => {
            let writable = if hptw { lo & W != 0 } else { lo & D != 0 };
            if writable {
                Ok(())
            } else {
                Err(LaExcCode::Pme)
            }
        }
        _ => Ok(()),
    }
}

fn half(pair: &LaTlbPair, gpa: u64) -> u64 {
    if (gpa >> pair.ps) & 1 != 0 {
        pair.lo1
    } else {
        pair.lo0
    }
}

/// Checks `access` against `leaf` whose value is `entry`.
fn finish(
    leaf: &Leaf,
    entry: u64,
    dec: &Decoded,
    cfg: &LaWalkConfig,
    gpa: u64,
    access: Access,
) -> Result<LaTranslation, LaFault> {
    let pair = pair_of(leaf, entry);
    let lo = half(&pair, gpa);
    if let Err(code) = check(lo, access, cfg, dec.hptw) {
        return Err(LaFault::Exception(LaException {
            code,
            access,
            pair,
            tlbelo: lo,
            entry,
            entry_pa: leaf.entry_pa,
        }));
    }
    let page = 1u64 << pair.ps;
    // PPN is bits PALEN-1:12; the bits below the page size are ignored.
    let frame = lo & bit_range(u32::from(cfg.palen) - 1, 12) & !(page - 1);
    Ok(LaTranslation {
        hpa: frame | (gpa & (page - 1)),
        page_size: 1u64 << leaf.shift,
        pair,
        tlbelo: lo,
        entry,
        entry_pa: leaf.entry_pa,
        mat: ((lo >> MAT_SHIFT) & 3) as u8,
    })
}

/// The refill for `gpa`: the pair LDDIR/LDPTE (or the hardware walker) would load, without
/// any access check.
pub fn refill<M: PhysMem + ?Sized>(
    mem: &M,
    pgd: u64,
    cfg: &LaWalkConfig,
    gpa: u64,
) -> Result<LaTlbPair, LaFault> {
    let (leaf, _) = walk_leaf(mem, pgd, cfg, gpa)?;
    Ok(pair_of(&leaf, leaf.entry))
}

/// Translates `gpa` for `access` from the root table at `pgd` (the PGDL value). With the
/// hardware walker enabled, a translation that succeeds sets V (and D for a store) in the leaf
/// entry, atomically, as the hardware does; without it nothing is written.
pub fn translate<M: PhysMem + ?Sized>(
    mem: &mut M,
    pgd: u64,
    cfg: &LaWalkConfig,
    gpa: u64,
    access: Access,
) -> Result<LaTranslation, LaFault> {
    let (leaf, dec) = walk_leaf(&*mem, pgd, cfg, gpa)?;
    let t = finish(&leaf, leaf.entry, &dec, cfg, gpa, access)?;
    if !dec.hptw {
        return Ok(t);
    }
    let mut bits = V;
    if access == Access::Write {
        bits |= D;
    }
    if leaf.entry & bits == bits {
        return Ok(t);
    }
    let new = set_bits_le(mem, leaf.entry_pa, bits).ok_or(LaFault::RefillOutsideMemory {
        dir: leaf.dir,
        pa: leaf.entry_pa,
    })?;
    finish(&leaf, new, &dec, cfg, gpa, access)
}

/// Same as [`translate`] but never writes.
pub fn peek<M: PhysMem + ?Sized>(
    mem: &M,
    pgd: u64,
    cfg: &LaWalkConfig,
    gpa: u64,
    access: Access,
) -> Result<LaTranslation, LaFault> {
    let (leaf, dec) = walk_leaf(mem, pgd, cfg, gpa)?;
    finish(&leaf, leaf.entry, &dec, cfg, gpa, access)
}

/// What KVM's fast path (`kvm_map_page_fast`) makes of a leaf for a fault of kind `write`:
/// `None` when it gives up (not present, or a write to a leaf without KVM_PAGE_WRITEABLE),
/// else the new value: V set (mkyoung), and D|W set for a write when neither is (mkdirty).
fn fast_path_value(entry: u64, write: bool) -> Option<u64> {
    if entry & P == 0 {
        return None;
    }
    let mut new = entry | V;
    if write && new & (D | W) == 0 {
        if new & KVM_WRITEABLE == 0 {
            return None;
        }
        new |= D | W;
    }
    Some(new)
}

/// KVM's fast path for a fault at `gpa` (`kvm_map_page_fast`, kvm/mmu.c): if the leaf is
/// present, mark it young (V) and, for a write to a clean leaf that has KVM_PAGE_WRITEABLE
/// (bit 9), dirty (D|W), in memory. Returns whether it handled the fault (false: KVM would
/// take the slow path). The dirty-logging refusal for huge pages is not modelled.
pub fn kvm_fast_path<M: PhysMem + ?Sized>(
    mem: &mut M,
    pgd: u64,
    cfg: &LaWalkConfig,
    gpa: u64,
    write: bool,
) -> Result<bool, LaFault> {
    let (leaf, _) = walk_leaf(&*mem, pgd, cfg, gpa)?;
    let Some(new) = fast_path_value(leaf.entry, write) else {
        return Ok(false);
    };
    if new != leaf.entry && !mem.write(leaf.entry_pa, &new.to_le_bytes()) {
        return Err(LaFault::RefillOutsideMemory {
            dir: leaf.dir,
            pa: leaf.entry_pa,
        });
    }
    Ok(true)
}

/// What the guest sees once KVM's fast path has run: [`peek`], and if that raises a
/// page-invalid or page-modification exception that [`kvm_fast_path`] would handle, the
/// access checked again against the updated leaf. Never writes.
pub fn peek_after_fast_path<M: PhysMem + ?Sized>(
    mem: &M,
    pgd: u64,
    cfg: &LaWalkConfig,
    gpa: u64,
    access: Access,
) -> Result<LaTranslation, LaFault> {
    let (leaf, dec) = walk_leaf(mem, pgd, cfg, gpa)?;
    match finish(&leaf, leaf.entry, &dec, cfg, gpa, access) {
        Err(LaFault::Exception(e)) if e.code.is_page_invalid() || e.code == LaExcCode::Pme => {
            match fast_path_value(leaf.entry, access == Access::Write) {
                Some(new) => finish(&leaf, new, &dec, cfg, gpa, access),
                None => Err(LaFault::Exception(e)),
            }
        }
        other => other,
    }
}
