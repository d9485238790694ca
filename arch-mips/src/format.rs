//! The MIPS64 VZ GPA-table entry format.
//!
//! A PTE holds software bits below `_PAGE_GLOBAL_SHIFT` and, from there up, the EntryLo
//! fields shifted left by it (Linux `pgtable-bits.h`: "CCC D V G RI/R XI [S H] M A W P" for a
//! 64-bit R2+ host), so the refill writes `pte >> G` to EntryLo, with RI/XI rotated to EntryLo
//! bits 63:62 (`pte_to_entrylo`). The positions are a [`MipsLayout`].
//!
//! | field | meaning (Linux / MIPS64 PRA Vol. III EntryLo) | here |
//! |---|---|---|
//! | PRESENT | software `_PAGE_PRESENT` | every leaf |
//! | WRITE | software `_PAGE_WRITE`: the page may be written | `Perms::WRITE` |
//! | ACCESSED | software `_PAGE_ACCESSED` | young (with VALID) |
//! | MODIFIED | software `_PAGE_MODIFIED` | dirty (with DIRTY) |
//! | XI / RI | EntryLo 62 / 63 after the rotation: no execute / no read | no `EXEC` (needs RIXI); reads are always granted (see [`Mips::check_attrs`](tdp_core::PteFormat::check_attrs)) |
//! | G | EntryLo G | never set |
//! | V | EntryLo V, Linux `_PAGE_SILENT_READ` | young |
//! | D | EntryLo D (write enable), Linux `_PAGE_SILENT_WRITE` | dirty and writable |
//! | C (3 bits) | EntryLo C, the cache coherency attribute | [`MemType`] |
//! | PFN | `pfn << _PFN_SHIFT` | output address |
//!
//! KVM's leaf (`kvm_mips_map_page`): `PRESENT | __READABLE (VALID | ACCESSED) | CCA`, `WRITE`
//! if the slot is writable, `__WRITEABLE (DIRTY | WRITE | MODIFIED)` on a write fault.
//!
//! # Frozen values
//!
//! The refill follows every directory entry as a pointer, so a frozen directory entry must lead
//! to an invalid table too. Linux's refill does not mask the pointer it loads: it adds the
//! byte offset of the index and loads from the sum (`arch/mips/mm/tlbex.c`: `build_get_pmde64`
//! `ld ptr, 0(ptr)` "get pmd pointer", then `daddu ptr, ptr, tmp` "add in pmd offset";
//! `build_get_ptep` `UASM_i_ADDU` "add in offset"; `build_update_entries` `ld` of the even and
//! odd PTE; KVM's refill, `arch/mips/kvm/entry.c` `kvm_mips_build_tlb_refill_exception`, is
//! built from these three). No bit of the pointer is ignored: bits 2:0 make the `ld`
//! misaligned (Address Error inside the refill), any other bit below the table size moves
//! every entry read (the last indexes land past the table) and any bit above it names other
//! memory. So a frozen directory value is the invalid table itself reached through its
//! *other* unmapped alias, with the same cacheability ([`MipsConfig::invalid_tables`]): a
//! ckseg0 table through xkphys with CCA `cca_writeback` (Linux sets Config.K0, the ckseg0
//! CCA, to `_page_cachable_default`: `arch/mips/mm/c-r4k.c` `coherency_setup`) and back, a
//! ckseg1 table through xkphys CCA 2 (uncached) and back. The PTE frozen value is
//! WRITE | ACCESSED | MODIFIED, never valid.

use tdp_core::{
    AdModel, AdState, Attrs, ByteOrder, EntryKind, Error, Geometry, Gpa, Hpa, Level, MemType,
    Perms, PteFormat,
};

/// CCA 2: uncached (Linux `_CACHE_UNCACHED`).
const CCA_UNCACHED: u8 = 2;
/// CCA 7: uncached accelerated (Linux `_CACHE_UNCACHED_ACCELERATED`), where implemented.
const CCA_UNCACHED_ACCELERATED: u8 = 7;

/// Where the host kernel puts each PTE field (bit numbers, LSB = 0).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct MipsLayout {
    /// `_PAGE_PRESENT_SHIFT`.
    pub present: u8,
    /// `_PAGE_WRITE_SHIFT`.
    pub write: u8,
    /// `_PAGE_ACCESSED_SHIFT`.
    pub accessed: u8,
    /// `_PAGE_MODIFIED_SHIFT`.
    pub modified: u8,
    /// `_PAGE_NO_EXEC_SHIFT` (XI) on a RIXI host; must be `no_read - 1`.
    pub no_exec: Option<u8>,
    /// `_PAGE_NO_READ_SHIFT` (RI) on a RIXI host; must be `global - 1`.
    pub no_read: Option<u8>,
    /// `_PAGE_GLOBAL_SHIFT`: EntryLo starts here.
    pub global: u8,
    /// `_PAGE_VALID_SHIFT` (= `global + 1`).
    pub valid: u8,
    /// `_PAGE_DIRTY_SHIFT` (= `global + 2`).
    pub dirty: u8,
    /// `_CACHE_SHIFT`, a 3-bit field (= `global + 3`).
    pub cache: u8,
    /// `_PFN_SHIFT` (= `global + 6 + PAGE_SHIFT - 12`: EntryLo's PFN counts 4 KiB frames from
    /// bit 6).
    pub pfn_shift: u8,
}

impl MipsLayout {
    /// Linux 64-bit, R2 or later with RIXI, huge TLB support and `PTE_SPECIAL`
    /// (`enum pgtable_bits`, r4k): PRESENT 0, WRITE 1, ACCESSED 2, MODIFIED 3, HUGE 4 and
    /// SPECIAL 5 (unused here), XI 6, RI 7, G 8, V 9, D 10, CCA 13:11, PFN from
    /// `page_shift - 12 + 14`.
    pub const fn linux64_rixi(page_shift: u8) -> MipsLayout {
        MipsLayout {
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

    fn rixi(&self) -> Option<(u8, u8)> {
        match (self.no_exec, self.no_read) {
            (Some(xi), Some(ri)) => Some((xi, ri)),
            _ => None,
        }
    }

    /// Checks the layout against a page size and physical width; returns the mask of every
    /// field.
    fn check(&self, page_shift: u8, pabits: u8) -> Result<u64, Error> {
        let bad = |what, value: u64| Err(Error::InvalidConfig { what, value });
        let pfn_bits = u32::from(pabits) - u32::from(page_shift);
        if u32::from(self.pfn_shift) + pfn_bits > 64 {
            return bad("MIPS PTE PFN field beyond the word", self.pfn_shift.into());
        }
        let mut fields: [(u8, u32); 11] = [
            (self.present, 1),
            (self.write, 1),
            (self.accessed, 1),
            (self.modified, 1),
            (self.global, 1),
            (self.valid, 1),
            (self.dirty, 1),
            (self.cache, 3),
            (self.pfn_shift, pfn_bits.max(1)),
            (0, 0),
            (0, 0),
        ];
        match (self.no_exec, self.no_read) {
            (Some(xi), Some(ri)) => {
                fields[9] = (xi, 1);
                fields[10] = (ri, 1);
            }
            (None, None) => {}
            (xi, _) => {
                return bad(
                    "MIPS PTE layout with only one of RI/XI",
                    u64::from(xi.is_some()),
                )
            }
        }
        let mut used = 0u64;
        for (shift, width) in fields {
            if width == 0 {
                continue;
            }
            if u32::from(shift) + width > 64 {
                return bad("MIPS PTE field beyond the word", shift.into());
            }
            let m = (u64::MAX >> (64 - width)) << shift;
            if used & m != 0 {
                return bad("MIPS PTE fields overlap", shift.into());
            }
            used |= m;
        }
        // The refill converts with a shift by G: the hardware fields must sit in EntryLo order
        // above it (G, V, D, C, PFN from G + 6 in 4 KiB frames) and RI/XI right below it.
        let g = self.global;
        if self.valid != g + 1
            || self.dirty != g + 2
            || self.cache != g + 3
            || u32::from(self.pfn_shift) + 12 != u32::from(g) + 6 + u32::from(page_shift)
        {
            return bad("MIPS PTE hardware fields not in EntryLo order", g.into());
        }
        if let Some((xi, ri)) = self.rixi() {
            if ri + 1 != g || xi + 1 != ri {
                return bad("MIPS PTE RI/XI not just below G", ri.into());
            }
        }
        // Software bits must vanish in the shift.
        let low = [self.present, self.write, self.accessed, self.modified];
        if let Some(&b) = low.iter().find(|&&b| b >= g) {
            return bad("MIPS PTE software bit above G", b.into());
        }
        Ok(used)
    }
}

/// How one MIPS GPA table is configured.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct MipsConfig {
    /// The host PTE layout.
    pub layout: MipsLayout,
    /// log2 of the host page size, 12..=16.
    pub page_shift: u8,
    /// 2 (PMD folded) or 3.
    pub levels: u8,
    /// Index width of each table, page table first (`PAGE_SHIFT - 3`, plus `PGD_ORDER` for the
    /// root); the first `levels` are used.
    pub index_bits: [u8; 3],
    /// PABITS, `page_shift..=59`.
    pub pabits: u8,
    /// The CCA of cacheable memory (`_page_cachable_default`: 3 cacheable non-coherent /
    /// Loongson-3 coherent, or 5 cacheable coherent); not 2 or 7.
    pub cca_writeback: u8,
    /// The CPU implements CCA 7 (uncached accelerated): `WriteCombining` maps to it.
    pub uncached_accelerated: bool,
    /// The xkphys window the host reaches tables through (`PAGE_OFFSET`): a directory entry is
    /// `window | pa`. Bits 63:62 must be `0b10`, bits 58:0 zero (e.g. 0x9800_0000_0000_0000,
    /// CCA 3).
    pub table_window: u64,
    /// The empty value of a level-`l` directory entry is `invalid_tables[l - 1]`: the host
    /// kernel virtual address (xkphys, ckseg0 or ckseg1) of a table of level `l - 1` entries
    /// that are all empty (`invalid_pte_table`, `invalid_pmd_table`). The caller allocates,
    /// fills and keeps them; they must never come from the engine's host allocator.
    ///
    /// The frozen value of a level-`l` directory entry is the same table through its other
    /// unmapped alias (see the module docs), so each invalid table needs one: a ckseg0 or
    /// ckseg1 address (its PA below 2^`pabits`), or an xkphys address below 512 MiB with CCA
    /// `cca_writeback` or 2 (uncached). Linux's `invalid_pte_table` and `invalid_pmd_table` are
    /// in the kernel image, which 64-bit MIPS kernels usually link in ckseg0.
    pub invalid_tables: [u64; 2],
}

const XKPHYS_CACHED_CCA3: u64 = 0x9800_0000_0000_0000;

impl MipsConfig {
    const fn linux64(page_shift: u8, levels: u8, index_bits: [u8; 3], invalid: [u64; 2]) -> Self {
        MipsConfig {
            layout: MipsLayout::linux64_rixi(page_shift),
            page_shift,
            levels,
            index_bits,
            pabits: 48,
            cca_writeback: 3,
            uncached_accelerated: false,
            table_window: XKPHYS_CACHED_CCA3,
            invalid_tables: invalid,
        }
    }

    /// 64-bit host, RIXI, 4 KiB pages, 3 levels with an order-1 PGD (`pgtable-64.h`: PGD 10
    /// bits, PMD 9, PTE 9; 40-bit GPA space), PABITS 48, CCA 3, tables in xkphys CCA 3.
    /// `invalid` = [`invalid_pte_table`, `invalid_pmd_table`].
    pub const fn linux64_4k(invalid: [u64; 2]) -> MipsConfig {
        Self::linux64(12, 3, [9, 9, 10], invalid)
    }

    /// 64-bit host, RIXI, 16 KiB pages, 3 levels (11 bits each; 47-bit GPA space).
    pub const fn linux64_16k(invalid: [u64; 2]) -> MipsConfig {
        Self::linux64(14, 3, [11, 11, 11], invalid)
    }

    /// 64-bit host, RIXI, 16 KiB pages, 2 levels (the PMD folded; 36-bit GPA space, as the
    /// `pgtable-64.h` comment describes older kernels).
    pub const fn linux64_16k_2level(invalid_pte_table: u64) -> MipsConfig {
        Self::linux64(14, 2, [11, 11, 0], [invalid_pte_table, 0])
    }

    /// 64-bit host, RIXI, 64 KiB pages, 2 levels (the PMD folded; 42-bit GPA space).
    pub const fn linux64_64k(invalid_pte_table: u64) -> MipsConfig {
        Self::linux64(16, 2, [13, 13, 0], [invalid_pte_table, 0])
    }
}

/// The MIPS GPA-table format for one configuration; `BIG_ENDIAN` is the host's byte order.
#[derive(Clone, Debug)]
pub struct Mips<const BIG_ENDIAN: bool = false> {
    geo: Geometry,
    cfg: MipsConfig,
    pa_mask: u64,
    pfn_field: u64,
    present: u64,
    write: u64,
    accessed: u64,
    modified: u64,
    valid: u64,
    dirty: u64,
    xi: u64,
    ri: u64,
    /// The frozen value per level: the PTE value at 0, an alias of the invalid table above.
    frozen: [u64; 3],
}

/// A little-endian host (Loongson-3, mips64el).
pub type MipsLe = Mips<false>;
/// A big-endian host.
pub type MipsBe = Mips<true>;

const fn bit(b: u8) -> u64 {
    1u64 << (b & 63)
}

/// Whether `va` is in a 64-bit unmapped segment the refill handler can dereference.
fn unmapped(va: u64, pabits: u8) -> bool {
    let xkphys = va >> 62 == 0b10 && va & (((1u64 << 59) - 1) & !((1u64 << pabits) - 1)) == 0;
    let ckseg01 = (CKSEG0..CKSSEG).contains(&va);
    xkphys || ckseg01
}

/// ckseg0: unmapped, cached with Config.K0 (MIPS64 PRA Vol. III, 64-bit address spaces).
const CKSEG0: u64 = 0xFFFF_FFFF_8000_0000;
/// ckseg1: unmapped, uncached.
const CKSEG1: u64 = 0xFFFF_FFFF_A000_0000;
/// The mapped segment above ckseg1.
const CKSSEG: u64 = 0xFFFF_FFFF_C000_0000;
/// ckseg0 and ckseg1 each reach the low 512 MiB of physical memory.
const CKSEG_SPAN: u64 = CKSEG1 - CKSEG0;

/// The xkphys address of `pa` with cache coherency attribute `cca` (bits 61:59).
const fn xkphys(cca: u8, pa: u64) -> u64 {
    0x8000_0000_0000_0000 | ((cca as u64 & 7) << 59) | pa
}

/// The other unmapped alias of the kernel pointer `va` with the same cacheability, if it has
/// one: ckseg0 (CCA Config.K0 = `cca_k0`) and xkphys with CCA `cca_k0`, or ckseg1 and xkphys
/// with CCA 2 (uncached). The PA must be below 512 MiB (ckseg's reach) and 2^`pabits`.
fn other_alias(va: u64, cca_k0: u8, pabits: u8) -> Option<u64> {
    let pa_limit = 1u64 << pabits;
    if (CKSEG0..CKSEG1).contains(&va) {
        let pa = va - CKSEG0;
        return (pa < pa_limit).then_some(xkphys(cca_k0, pa));
    }
    if (CKSEG1..CKSSEG).contains(&va) {
        let pa = va - CKSEG1;
        return (pa < pa_limit).then_some(xkphys(CCA_UNCACHED, pa));
    }
    if va >> 62 != 0b10 {
        return None;
    }
    let pa = va & (pa_limit - 1);
    let cca = ((va >> 59) & 7) as u8;
    if pa >= CKSEG_SPAN || va != xkphys(cca, pa) {
        None
    } else if cca == cca_k0 {
        Some(CKSEG0 + pa)
    } else if cca == CCA_UNCACHED {
        Some(CKSEG1 + pa)
    } else {
        None
    }
}

/// The physical address of a pointer `unmapped` accepted.
fn unmapped_pa(va: u64, pabits: u8) -> u64 {
    if (CKSEG0..CKSEG1).contains(&va) {
        va - CKSEG0
    } else if (CKSEG1..CKSSEG).contains(&va) {
        va - CKSEG1
    } else {
        va & ((1u64 << pabits) - 1)
    }
}

impl<const BIG_ENDIAN: bool> Mips<BIG_ENDIAN> {
    /// A configuration, checked.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first problem: a page size outside 4..=64 KiB, a
    /// level count other than 2 or 3, an index width outside 5..=13 (root 5..=17), PABITS
    /// outside `page_shift..=59`, a span beyond 63 bits, a layout whose fields overlap or exceed
    /// the word or are not in EntryLo order, a write-back CCA of 2, 7 or above 7, a table window
    /// that is not an xkphys base, an invalid table that is 0, misaligned or not in an
    /// unmapped segment, an invalid table without the same-cacheability alias its frozen value
    /// needs (see [`MipsConfig::invalid_tables`]), or two invalid tables that share memory (a
    /// frozen value would then equal another level's empty value).
    pub fn new(cfg: MipsConfig) -> Result<Self, Error> {
        let bad = |what, value: u64| Err(Error::InvalidConfig { what, value });
        if !(12..=16).contains(&cfg.page_shift) {
            return bad("MIPS page shift", cfg.page_shift.into());
        }
        if !(2..=3).contains(&cfg.levels) {
            return bad("MIPS level count", cfg.levels.into());
        }
        let levels = usize::from(cfg.levels);
        let bits = &cfg.index_bits[..levels];
        for (l, &b) in bits.iter().enumerate() {
            let max = if l == levels - 1 { 17 } else { 13 };
            if !(5..=max).contains(&b) {
                return bad("MIPS table index width", b.into());
            }
        }
        if !(cfg.page_shift..=59).contains(&cfg.pabits) {
            return bad("MIPS PABITS", cfg.pabits.into());
        }
        let span = u32::from(cfg.page_shift) + bits.iter().map(|&b| u32::from(b)).sum::<u32>();
        if span > 60 {
            return bad("MIPS GPA span", span.into());
        }
        cfg.layout.check(cfg.page_shift, cfg.pabits)?;
        if cfg.cca_writeback > 7
            || cfg.cca_writeback == CCA_UNCACHED
            || cfg.cca_writeback == CCA_UNCACHED_ACCELERATED
        {
            return bad("MIPS write-back CCA", cfg.cca_writeback.into());
        }
        if cfg.table_window >> 62 != 0b10 || cfg.table_window & ((1u64 << 59) - 1) != 0 {
            return bad("MIPS table window (not an xkphys base)", cfg.table_window);
        }
        let geo =
            Geometry::new(cfg.page_shift, bits, 0b001, span as u8, cfg.pabits).map_err(|_| {
                Error::InvalidConfig {
                    what: "MIPS geometry",
                    value: span.into(),
                }
            })?;
        let l = cfg.layout;
        // Level 0: never valid (PRESENT = VALID = 0). Above: the invalid table's other alias.
        let leaf_frozen = bit(l.write) | bit(l.accessed) | bit(l.modified);
        let mut frozen = [leaf_frozen; 3];
        let mut spans = [(0u64, 0u64); 2];
        for lv in 1..levels {
            let v = cfg.invalid_tables[lv - 1];
            let child = Level::new(lv as u8 - 1).ok_or(Error::InvalidGeometry)?;
            let size = geo.table_size(child) as u64;
            if v == 0 || v & (size - 1) != 0 || !unmapped(v, cfg.pabits) {
                return bad("MIPS invalid table", v);
            }
            // The alias is in another segment than `v`, so it differs from `empty(lv)`. It may
            // have a table pointer's form (xkphys with the window's CCA), but it names the
            // invalid table, whose memory never comes from the engine's allocator, so no real
            // table pointer equals it; `classify` tests it first.
            let Some(alias) = other_alias(v, cfg.cca_writeback, cfg.pabits) else {
                return bad("MIPS invalid table without a same-cacheability alias", v);
            };
            frozen[lv] = alias;
            let pa = unmapped_pa(v, cfg.pabits);
            spans[lv - 1] = (pa, pa + size);
        }
        if levels == 3 && spans[0].0 < spans[1].1 && spans[1].0 < spans[0].1 {
            return bad("MIPS invalid tables overlap", cfg.invalid_tables[1]);
        }
        let pfn_bits = u32::from(cfg.pabits - cfg.page_shift);
        let (xi, ri) = l.rixi().map_or((0, 0), |(x, r)| (bit(x), bit(r)));
        Ok(Mips {
            geo,
            cfg,
            pa_mask: (1u64 << cfg.pabits) - 1,
            pfn_field: ((1u64 << pfn_bits) - 1) << l.pfn_shift,
            present: bit(l.present),
            write: bit(l.write),
            accessed: bit(l.accessed),
            modified: bit(l.modified),
            valid: bit(l.valid),
            dirty: bit(l.dirty),
            xi,
            ri,
            frozen,
        })
    }

    /// The configuration.
    pub fn config(&self) -> MipsConfig {
        self.cfg
    }

    /// The PGD pointer the refill handler uses for the root table at `root` (its xkphys
    /// address).
    ///
    /// # Errors
    /// [`Error::UnalignedHpa`] if `root` is not aligned to the root table's size,
    /// [`Error::HpaTooWide`] if it is beyond PABITS.
    pub fn pgd(&self, root: Hpa) -> Result<u64, Error> {
        let align = self.geo.table_size(self.geo.root_level()) as u64;
        if !root.is_aligned(align) {
            return Err(Error::UnalignedHpa { hpa: root, align });
        }
        if root.raw() & !self.pa_mask != 0 {
            return Err(Error::HpaTooWide {
                hpa: root,
                bits: self.cfg.pabits,
            });
        }
        Ok(self.cfg.table_window | root.raw())
    }

    /// EntryLo for one PTE (`pte_to_entrylo`): `pte >> G`, with RI/XI rotated to EntryLo bits
    /// 63:62 on a RIXI layout.
    pub fn entrylo(&self, pte: u64) -> u64 {
        let mut lo = pte >> (self.cfg.layout.global & 63);
        if pte & self.ri != 0 {
            lo |= 1 << 63;
        }
        if pte & self.xi != 0 {
            lo |= 1 << 62;
        }
        lo
    }

    /// EntryLo0 and EntryLo1 for the TLB pair covering `gpa`, given the PTE `leaf` that maps
    /// `gpa` and its `buddy` (the other PTE of the even/odd pair, `ptep_buddy`): the even
    /// page's PTE goes to EntryLo0. An empty PTE (0) gives EntryLo with V = 0.
    pub fn entrylo_pair(&self, gpa: Gpa, leaf: u64, buddy: u64) -> (u64, u64) {
        let odd = (gpa.raw() >> self.cfg.page_shift) & 1 != 0;
        let (even, odd_pte) = if odd { (buddy, leaf) } else { (leaf, buddy) };
        (self.entrylo(even), self.entrylo(odd_pte))
    }

    fn cca_of(&self, mem: MemType) -> u8 {
        match mem {
            MemType::WriteBack => self.cfg.cca_writeback,
            MemType::WriteCombining => CCA_UNCACHED_ACCELERATED,
            _ => CCA_UNCACHED,
        }
    }

    fn perm_bits(&self, perms: Perms) -> u64 {
        let mut v = 0;
        if !perms.intersects(Perms::EXEC) {
            v |= self.xi;
        }
        if perms.contains(Perms::WRITE) {
            v |= self.write;
        }
        v
    }

    fn child_table_size(&self, level: Level) -> u64 {
        match Level::new(level.get().wrapping_sub(1)) {
            Some(child) if self.geo.has_level(child) => self.geo.table_size(child) as u64,
            _ => 1,
        }
    }
}

impl<const BIG_ENDIAN: bool> PteFormat for Mips<BIG_ENDIAN> {
    const BYTE_ORDER: ByteOrder = if BIG_ENDIAN {
        ByteOrder::Big
    } else {
        ByteOrder::Little
    };

    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline]
    fn empty(&self, level: Level) -> u64 {
        match level.index() {
            0 => 0,
            l => self.cfg.invalid_tables.get(l - 1).copied().unwrap_or(0),
        }
    }

    /// Level 0: WRITE | ACCESSED | MODIFIED with PRESENT = VALID = 0, never valid as a PTE (and
    /// KVM's fast path ignores a PTE without PRESENT). Directory level `l`: the level's invalid
    /// table (`empty(l)`) through its other unmapped alias with the same cacheability (ckseg0 ↔
    /// xkphys CCA `cca_writeback`, ckseg1 ↔ xkphys CCA 2), so the refill that follows it meets
    /// only invalid entries, exactly as for `empty(l)`, while the value differs from
    /// `empty(l)` and from every real table pointer (see the module docs for why no marker bit
    /// can be added to the pointer instead).
    #[inline]
    fn frozen(&self, level: Level) -> u64 {
        self.frozen
            .get(level.index())
            .copied()
            .unwrap_or(self.frozen[0])
    }

    /// Requires `READ`: KVM's fast path (`pte_mkyoung`) only sets VALID on a readable PTE, so a
    /// no-read leaf could never become valid through it. Rejects split execute, no-execute
    /// without RIXI, write-through / write-protect / device memory (use `Uncached`), write
    /// combining without CCA 7, and `ignore_guest_memtype`.
    fn check_attrs(&self, attrs: &Attrs) -> Result<(), Error> {
        let p = attrs.perms;
        let exec = p & Perms::EXEC;
        let split_exec = !exec.is_empty() && exec != Perms::EXEC;
        let no_exec_unsupported = exec.is_empty() && self.xi == 0;
        let mem_ok = match attrs.mem {
            MemType::WriteBack | MemType::Uncached => true,
            MemType::WriteCombining => self.cfg.uncached_accelerated,
            _ => false,
        };
        if !p.contains(Perms::READ)
            || split_exec
            || no_exec_unsupported
            || !mem_ok
            || attrs.ignore_guest_memtype
        {
            return Err(Error::UnsupportedAttrs { attrs: *attrs });
        }
        Ok(())
    }

    #[inline]
    fn leaf_addr_bits(&self, hpa: Hpa, _level: Level) -> u64 {
        let pfn = ((hpa.raw() & self.pa_mask) >> self.cfg.page_shift) << self.cfg.layout.pfn_shift;
        pfn & self.pfn_field
    }

    /// `PRESENT | pfn << _PFN_SHIFT | CCA`, WRITE for a writable leaf, XI without execute;
    /// with `young_dirty` VALID | ACCESSED, and DIRTY | MODIFIED if writable (KVM's
    /// `__READABLE` / `__WRITEABLE` on a write fault). Without it the leaf is present but not
    /// valid: [`tdp_core::Table::query`] reports it mapped with `accessed: Some(false),
    /// dirty: Some(false)` and the first access raises TLB Invalid, which KVM's fast path
    /// answers with `pte_mkyoung` (and `pte_mkdirty` for a write).
    fn make_leaf(&self, hpa: Hpa, _level: Level, attrs: &Attrs, young_dirty: bool) -> u64 {
        let l = &self.cfg.layout;
        let pfn = ((hpa.raw() & self.pa_mask) >> self.cfg.page_shift) << l.pfn_shift;
        let mut v = self.present | (pfn & self.pfn_field);
        v |= u64::from(self.cca_of(attrs.mem)) << l.cache;
        v |= self.perm_bits(attrs.perms);
        if young_dirty {
            v |= self.valid | self.accessed;
            if attrs.perms.contains(Perms::WRITE) {
                v |= self.dirty | self.modified;
            }
        }
        v
    }

    /// The child's xkphys address (`pmd_populate_kernel` stores the table's kernel pointer).
    fn make_table(&self, child: Hpa, _level: Level) -> u64 {
        self.cfg.table_window | (child.raw() & self.pa_mask)
    }

    /// Never called: MIPS GPA tables have no huge leaves (`leaf_mask` 0b001). Copies the entry
    /// with the address advanced by `index` child pages.
    fn split_child(&self, huge: u64, level: Level, index: usize) -> u64 {
        let child = Level::new(level.get().wrapping_sub(1)).unwrap_or(Level::LEAF);
        let step = if self.geo.has_level(child) {
            self.geo.level_size(child)
        } else {
            0
        };
        let base = self.leaf_addr(huge, Level::LEAF).raw();
        let addr = base.wrapping_add((index as u64).wrapping_mul(step)) & self.pa_mask;
        let pfn = (addr >> self.cfg.page_shift) << self.cfg.layout.pfn_shift;
        (huge & !self.pfn_field) | (pfn & self.pfn_field)
    }

    /// Never called (no huge leaves): the child with the merged A/D bits.
    fn make_huge(&self, child: u64, level: Level, ad: u64) -> u64 {
        let mask = self.ad_bits(u64::MAX, level);
        (child & !mask) | (ad & mask)
    }

    /// WRITE and XI rewritten. Removing `WRITE` also clears DIRTY (`pte_wrprotect`) but keeps
    /// MODIFIED (the page stays dirty); adding it sets DIRTY only if MODIFIED is set
    /// (`pte_mkwrite`), so a clean page takes TLB Modified on its first write.
    fn with_perms(&self, raw: u64, _level: Level, perms: Perms) -> u64 {
        let mut v = (raw & !(self.write | self.xi | self.ri)) | self.perm_bits(perms);
        if perms.contains(Perms::WRITE) {
            if v & self.modified != 0 {
                v |= self.dirty;
            }
        } else {
            v &= !self.dirty;
        }
        v
    }

    /// `frozen(level)` first (a directory's frozen value may have the table window's form),
    /// then `empty(level)`. Only this level's frozen value is `Frozen`: the PTE frozen value in
    /// a directory is `Other` (the refill would dereference it).
    fn classify(&self, raw: u64, level: Level) -> EntryKind {
        if raw == self.frozen(level) {
            return EntryKind::Frozen;
        }
        if raw == self.empty(level) {
            return EntryKind::Empty;
        }
        if level.get() == 0 {
            return if raw & self.present != 0 {
                EntryKind::Leaf
            } else {
                EntryKind::Other
            };
        }
        let pa = raw & self.pa_mask;
        if raw & !self.pa_mask == self.cfg.table_window
            && pa & (self.child_table_size(level) - 1) == 0
        {
            EntryKind::Table
        } else {
            EntryKind::Other
        }
    }

    fn table_addr(&self, raw: u64, _level: Level) -> Hpa {
        Hpa::new(raw & self.pa_mask)
    }

    fn leaf_addr(&self, raw: u64, _level: Level) -> Hpa {
        let pfn = (raw & self.pfn_field) >> self.cfg.layout.pfn_shift;
        Hpa::new(pfn << self.cfg.page_shift)
    }

    fn leaf_attrs(&self, raw: u64, _level: Level) -> Attrs {
        let mut perms = Perms::empty();
        if raw & self.ri == 0 {
            perms |= Perms::READ;
        }
        if raw & self.write != 0 {
            perms |= Perms::WRITE;
        }
        if raw & self.xi == 0 {
            perms |= Perms::EXEC;
        }
        let cca = ((raw >> self.cfg.layout.cache) & 7) as u8;
        let mem = if cca == self.cfg.cca_writeback {
            MemType::WriteBack
        } else if cca == CCA_UNCACHED_ACCELERATED {
            MemType::WriteCombining
        } else {
            MemType::Uncached
        };
        Attrs {
            perms,
            mem,
            ignore_guest_memtype: false,
        }
    }

    /// Accessed = ACCESSED (`pte_young`), dirty = MODIFIED (`pte_dirty`).
    fn ad_state(&self, raw: u64, _level: Level) -> AdState {
        AdState {
            accessed: Some(raw & self.accessed != 0),
            dirty: Some(raw & self.modified != 0),
        }
    }

    fn ad_bits(&self, raw: u64, _level: Level) -> u64 {
        raw & (self.valid | self.accessed | self.dirty | self.modified)
    }

    fn leaf_key(&self, raw: u64, level: Level) -> u64 {
        raw & !(self.pfn_field | self.ad_bits(u64::MAX, level))
    }

    fn ad_model(&self) -> AdModel {
        AdModel::Software
    }

    /// No hardware A/D on MIPS.
    fn volatile_bits(&self, _raw: u64, _level: Level) -> u64 {
        0
    }

    /// The refill loads an even/odd pair, so an invalid neighbour may be cached (KVM
    /// invalidates the GPA's root-TLB entry after every fault, `kvm_vz_host_tlb_inv`).
    fn caches_empty_entries(&self) -> bool {
        true
    }
}
