//! The LoongArch64 GPA-table entry format.
//!
//! Bits (LoongArch Reference Manual Vol. 1 §5, the TLB entry / TLBELO format and the page-walk
//! instructions; Linux `asm/pgtable-bits.h`; KVM `asm/kvm_mmu.h`, `kvm/mmu.c`):
//!
//! | bit(s) | meaning | here |
//! |---|---|---|
//! | 0 | V, valid; Linux `_PAGE_ACCESSED` is the same bit | accessed: set by `young_dirty`, by KVM's fast path or the hardware walker |
//! | 1 | D, dirty = hardware write enable | dirty: set with W when written (KVM `kvm_pte_mkdirty` = `__WRITEABLE` = D\|W) |
//! | 3:2 | PLV | 0, as KVM writes it |
//! | 5:4 | MAT: 0 SUC, 1 CC, 2 WUC | [`MemType`]: Uncached, WriteBack, WriteCombining |
//! | 6 | G in a PTE; HUGE in a directory entry | HUGE on level-1 leaves; G never set |
//! | 7 | P, software present (the hardware walker's presence bit) | every leaf |
//! | 8 | W, software writable (the hardware walker's write permission) | with D (dirty) |
//! | 9 | `_PAGE_MODIFIED`, KVM's KVM_PAGE_WRITEABLE | `Perms::WRITE` |
//! | 12 | HGLOBAL of a huge entry (moved to G by the refill) | never set |
//! | PALEN−1:12 | physical address (`_PFN_MASK`, PFN ends at bit 47) | |
//! | 60 | `_PAGE_PRESENT_INVALID` (software) | the frozen marker |
//! | 61 / 62 / 63 | NR / NX / RPLV | no `READ` / no `EXEC` / 0 |
//!
//! Directory entries hold the child table's physical address (KVM `kvm_set_pte(entry,
//! __pa(child))`), without any flag: LDDIR follows them as pointers. Their empty value is the
//! per-level invalid table ([`LoongArchConfig::invalid_tables`]).

use tdp_core::{
    AdModel, AdState, Attrs, ByteOrder, EntryKind, Error, Geometry, Hpa, Level, MemType, Perms,
    PteFormat,
};

pub(crate) const V: u64 = 1 << 0;
pub(crate) const D: u64 = 1 << 1;
const MAT_SHIFT: u32 = 4;
const MAT_MASK: u64 = 3 << MAT_SHIFT;
pub(crate) const HUGE: u64 = 1 << 6;
pub(crate) const P: u64 = 1 << 7;
pub(crate) const W: u64 = 1 << 8;
pub(crate) const KVM_WRITEABLE: u64 = 1 << 9;
const PRESENT_INVALID: u64 = 1 << 60;
pub(crate) const NR: u64 = 1 << 61;
pub(crate) const NX: u64 = 1 << 62;

/// MAT encodings (Linux `_CACHE_SUC`, `_CACHE_CC`, `_CACHE_WUC`).
const MAT_SUC: u64 = 0;
const MAT_CC: u64 = 1;
const MAT_WUC: u64 = 2;

/// The frozen value: HUGE | `_PAGE_PRESENT_INVALID`, with P = V = 0 and no address. At level 0
/// it is a PTE with V = P = 0 (G set: harmless); at a directory level LDDIR stops at it as a
/// huge page whose halves have V = P = 0. So it is invalid to hardware at every level, and no
/// KVM entry has bit 60 set.
const FROZEN: u64 = PRESENT_INVALID | HUGE;

/// The bits KVM's A/D handling owns: V (young), D|W (dirty).
const AD: u64 = V | D | W;

/// How one LoongArch GPA table is configured.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LoongArchConfig {
    /// log2 of the page size: 12, 14 or 16 (host `PAGE_SHIFT`).
    pub page_shift: u8,
    /// Number of levels, 2..=4 (host `CONFIG_PGTABLE_LEVELS`).
    pub levels: u8,
    /// Index width of each level's table, page table first; the first `levels` are used, each
    /// 9..=13 (tables of 4 KiB .. 64 KiB). Linux: `page_shift - 3` for every level.
    pub index_bits: [u8; 4],
    /// Guest-physical width: at most the span of the root (KVM: `cpu_vabits - 1`).
    pub gpa_bits: u8,
    /// PALEN, the physical address width, `page_shift..=48` (the PFN field ends at bit 47).
    pub palen: u8,
    /// The empty value of a level-`l` directory entry is `invalid_tables[l - 1]`: the address
    /// of a table of level `l - 1` entries that are all empty (KVM's `invalid_ptes[l]`:
    /// `invalid_pte_table`, `invalid_pmd_table`, `invalid_pud_table`). Give the value the host
    /// stores: a physical address or a DMW-window address (bits 63:60 may hold the window;
    /// the hardware drops everything above PALEN). Unused levels are ignored. The caller
    /// allocates, fills and keeps them: they must outlive every table using them, may be
    /// shared, and must never be handed to the engine's host allocator.
    pub invalid_tables: [u64; 3],
    /// The hardware page-table walker is enabled (PWCH.HPTW_En, 3A6000 and later): hardware
    /// sets V in a present leaf and D in a W leaf, so those bits become volatile.
    pub hardware_walker: bool,
}

impl LoongArchConfig {
    /// Linux's layout for a host with `1 << page_shift` pages and `levels` levels: every table
    /// one page, PALEN 48, GPA width `min(span, 47)` (KVM: `cpu_vabits - 1` with 48-bit VAs),
    /// software refill.
    pub const fn linux(page_shift: u8, levels: u8, invalid_tables: [u64; 3]) -> LoongArchConfig {
        let bits = page_shift.wrapping_sub(3);
        let span = page_shift as u32 + bits as u32 * levels as u32;
        LoongArchConfig {
            page_shift,
            levels,
            index_bits: [bits; 4],
            gpa_bits: if span < 47 { span as u8 } else { 47 },
            palen: 48,
            invalid_tables,
            hardware_walker: false,
        }
    }
}

/// The LoongArch64 GPA-table format for one configuration.
#[derive(Clone, Debug)]
pub struct LoongArch {
    geo: Geometry,
    cfg: LoongArchConfig,
    /// Bits PALEN−1:0: a table's address.
    pa_mask: u64,
    /// Bits PALEN−1:12: a leaf's address field.
    pfn_mask: u64,
}

const fn mask(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
}

impl LoongArch {
    /// A configuration, checked.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first problem: a page size other than 4/16/64 KiB,
    /// fewer than 2 or more than 4 levels, an index width outside 9..=13, a directory base or
    /// width PWCL/PWCH cannot hold (Dir1/Dir2 bases are 5-bit fields), a GPA width beyond the
    /// root's span or not above the root's shift, PALEN outside `page_shift..=48`, or an invalid
    /// table that is 0, not aligned to its table size, or has bits 59:PALEN set.
    pub fn new(cfg: LoongArchConfig) -> Result<LoongArch, Error> {
        let bad = |what, value: u64| Err(Error::InvalidConfig { what, value });
        if !matches!(cfg.page_shift, 12 | 14 | 16) {
            return bad("LoongArch page shift", cfg.page_shift.into());
        }
        if !(2..=4).contains(&cfg.levels) {
            return bad("LoongArch level count", cfg.levels.into());
        }
        let levels = usize::from(cfg.levels);
        let bits = &cfg.index_bits[..levels];
        if let Some(&b) = bits.iter().find(|b| !(9..=13).contains(*b)) {
            return bad("LoongArch table index width", b.into());
        }
        // Linux's PWC layout: the root in Dir3 (PWCH, 6-bit base), level 1 in Dir1 and level 2
        // in Dir2 (PWCL, 5-bit bases).
        let mut shift = u32::from(cfg.page_shift);
        for (l, &b) in bits.iter().enumerate() {
            let root = l == levels - 1;
            if l > 0 && !root && shift > 31 {
                return bad(
                    "LoongArch directory base beyond PWCL's 5-bit field",
                    shift.into(),
                );
            }
            shift += u32::from(b);
        }
        let span = shift;
        if u32::from(cfg.gpa_bits) > span {
            return bad(
                "LoongArch GPA width beyond the root's span",
                cfg.gpa_bits.into(),
            );
        }
        if !(cfg.page_shift..=48).contains(&cfg.palen) {
            return bad("LoongArch PALEN", cfg.palen.into());
        }
        let geo =
            Geometry::new(cfg.page_shift, bits, 0b011, cfg.gpa_bits, cfg.palen).map_err(|_| {
                Error::InvalidConfig {
                    what: "LoongArch GPA width",
                    value: cfg.gpa_bits.into(),
                }
            })?;
        let pa_mask = mask(u32::from(cfg.palen) - 1, 0);
        for l in 1..levels {
            let v = cfg.invalid_tables[l - 1];
            let child = Level::new(l as u8 - 1).ok_or(Error::InvalidGeometry)?;
            let size = geo.table_size(child) as u64;
            if v == 0 || v & (size - 1) != 0 || v & mask(59, u32::from(cfg.palen)) != 0 {
                return bad("LoongArch invalid table", v);
            }
        }
        Ok(LoongArch {
            geo,
            cfg,
            pa_mask,
            pfn_mask: mask(u32::from(cfg.palen) - 1, 12),
        })
    }

    /// The configuration.
    pub fn config(&self) -> LoongArchConfig {
        self.cfg
    }

    /// The value for CSR.PGDL (the GPA space is the lower half) with the root table at `root`.
    ///
    /// # Errors
    /// [`Error::UnalignedHpa`] if `root` is not aligned to the root table's size,
    /// [`Error::HpaTooWide`] if it is beyond PALEN.
    pub fn pgdl(&self, root: Hpa) -> Result<u64, Error> {
        let align = self.geo.table_size(self.geo.root_level()) as u64;
        if !root.is_aligned(align) {
            return Err(Error::UnalignedHpa { hpa: root, align });
        }
        if root.raw() & !self.pa_mask != 0 {
            return Err(Error::HpaTooWide {
                hpa: root,
                bits: self.cfg.palen,
            });
        }
        Ok(root.raw())
    }

    /// The base (address bit) and width of the directory level `l`.
    fn dir(&self, l: usize) -> (u64, u64) {
        let level = Level::new(l as u8).unwrap_or(Level::LEAF);
        (
            u64::from(self.geo.shift(level)),
            u64::from(self.geo.index_bits(level)),
        )
    }

    /// CSR.PWCL for this geometry, as Linux's `setup_ptwalker` lays it out: PTbase/PTwidth
    /// (bits 4:0 / 9:5), level 1 in Dir1 (14:10 / 19:15) and level 2 in Dir2 (24:20 / 29:25)
    /// when they are not the root, PTEWidth 0 (64-bit entries).
    pub fn pwcl(&self) -> u64 {
        let levels = usize::from(self.cfg.levels);
        let (pt_base, pt_width) = self.dir(0);
        let mut v = pt_base | pt_width << 5;
        if levels > 2 {
            let (b, w) = self.dir(1);
            v |= b << 10 | w << 15;
        }
        if levels > 3 {
            let (b, w) = self.dir(2);
            v |= b << 20 | w << 25;
        }
        v
    }

    /// CSR.PWCH for this geometry: the root in Dir3 (bits 5:0 base, 11:6 width), Dir4 unused,
    /// HPTW_En (bit 24) when the hardware walker is configured.
    pub fn pwch(&self) -> u64 {
        let (b, w) = self.dir(usize::from(self.cfg.levels) - 1);
        let mut v = b | w << 6;
        if self.cfg.hardware_walker {
            v |= 1 << 24;
        }
        v
    }

    fn perm_bits(perms: Perms) -> u64 {
        let mut v = 0;
        if !perms.contains(Perms::READ) {
            v |= NR;
        }
        if !perms.intersects(Perms::EXEC) {
            v |= NX;
        }
        if perms.contains(Perms::WRITE) {
            v |= KVM_WRITEABLE;
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

impl PteFormat for LoongArch {
    const BYTE_ORDER: ByteOrder = ByteOrder::Little;

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

    fn frozen(&self, _level: Level) -> u64 {
        FROZEN
    }

    /// Rejects split execute, write-through / write-protect / device memory (LoongArch has
    /// SUC, CC and WUC only; use `Uncached` for device memory: both would be SUC and `Uncached`
    /// is what a SUC leaf decodes to) and `ignore_guest_memtype`. Every combination of read,
    /// write and execute is expressible (NR, NX, bit 9).
    fn check_attrs(&self, attrs: &Attrs) -> Result<(), Error> {
        let exec = attrs.perms & Perms::EXEC;
        let split_exec = !exec.is_empty() && exec != Perms::EXEC;
        let mem_ok = matches!(
            attrs.mem,
            MemType::WriteBack | MemType::Uncached | MemType::WriteCombining
        );
        if split_exec || !mem_ok || attrs.ignore_guest_memtype {
            return Err(Error::UnsupportedAttrs { attrs: *attrs });
        }
        Ok(())
    }

    #[inline]
    fn leaf_addr_bits(&self, hpa: Hpa, _level: Level) -> u64 {
        hpa.raw() & self.pfn_mask
    }

    /// P | address | MAT | NR/NX/bit 9 from the permissions | HUGE above level 0; with
    /// `young_dirty`, V (and D|W if writable), as KVM's `kvm_map_page` for a write fault.
    /// Without it the leaf is present (P) but neither valid nor dirty: [`tdp_core::Table::query`]
    /// reports it as mapped with `accessed: Some(false), dirty: Some(false)`, and the first
    /// access raises a page-invalid exception (PIL/PIS/PIF) that KVM's fast path answers by
    /// setting V (and D|W for a write), or the hardware walker sets V itself.
    fn make_leaf(&self, hpa: Hpa, level: Level, attrs: &Attrs, young_dirty: bool) -> u64 {
        let mat = match attrs.mem {
            MemType::WriteBack => MAT_CC,
            MemType::WriteCombining => MAT_WUC,
            _ => MAT_SUC,
        };
        let mut v = P | (hpa.raw() & self.pfn_mask) | mat << MAT_SHIFT;
        v |= Self::perm_bits(attrs.perms);
        if level.get() > 0 {
            v |= HUGE;
        }
        if young_dirty {
            v |= V;
            if attrs.perms.contains(Perms::WRITE) {
                v |= D | W;
            }
        }
        v
    }

    /// The child's physical address, nothing else (KVM `__pa(child)`). The host must not
    /// allocate a table at physical address 0 (0 classifies as `Other` in a directory).
    fn make_table(&self, child: Hpa, _level: Level) -> u64 {
        child.raw() & self.pa_mask
    }

    /// KVM `kvm_split_huge`: the huge entry without HUGE (`kvm_pte_mksmall`), the address
    /// advanced by `index` pages; A/D and permissions copied.
    fn split_child(&self, huge: u64, level: Level, index: usize) -> u64 {
        let child = Level::new(level.get().wrapping_sub(1)).unwrap_or(Level::LEAF);
        let step = self.geo.level_size(child);
        let base = self.leaf_addr(huge, level).raw();
        let addr = base.wrapping_add((index as u64).wrapping_mul(step)) & self.pfn_mask;
        let mut v = (huge & !self.pfn_mask) | addr;
        if child.get() == 0 {
            v &= !HUGE;
        }
        v
    }

    fn make_huge(&self, child: u64, _level: Level, ad: u64) -> u64 {
        (child & !AD) | HUGE | (ad & AD)
    }

    /// NR/NX/bit 9 rewritten. Removing `WRITE` also clears D|W (D is the hardware write
    /// enable); adding it leaves D|W clear, so the first write raises PME and KVM's fast path
    /// dirties the page (as after dirty logging's `kvm_pte_mkclean`).
    fn with_perms(&self, raw: u64, _level: Level, perms: Perms) -> u64 {
        let mut v = (raw & !(NR | NX | KVM_WRITEABLE)) | Self::perm_bits(perms);
        if !perms.contains(Perms::WRITE) {
            v &= !(D | W);
        }
        v
    }

    fn classify(&self, raw: u64, level: Level) -> EntryKind {
        if raw == FROZEN {
            return EntryKind::Frozen;
        }
        if raw == self.empty(level) {
            return EntryKind::Empty;
        }
        if level.get() == 0 {
            return if raw & P != 0 {
                EntryKind::Leaf
            } else {
                EntryKind::Other
            };
        }
        if raw & HUGE != 0 {
            return if self.geo.is_leaf_level(level) && raw & P != 0 {
                EntryKind::Leaf
            } else {
                EntryKind::Other
            };
        }
        // A table's physical address, aligned to the table size. 0 is not one: an empty
        // directory entry is never 0 here, and a zeroed directory must not look populated
        // (hosts never hand out physical page 0 as a table).
        if raw != 0 && raw & !self.pa_mask == 0 && raw & (self.child_table_size(level) - 1) == 0 {
            EntryKind::Table
        } else {
            EntryKind::Other
        }
    }

    fn table_addr(&self, raw: u64, _level: Level) -> Hpa {
        Hpa::new(raw & self.pa_mask)
    }

    fn leaf_addr(&self, raw: u64, level: Level) -> Hpa {
        let size = if self.geo.has_level(level) {
            self.geo.level_size(level)
        } else {
            1
        };
        Hpa::new(raw & self.pfn_mask & !(size - 1))
    }

    fn leaf_attrs(&self, raw: u64, _level: Level) -> Attrs {
        let mut perms = Perms::empty();
        if raw & NR == 0 {
            perms |= Perms::READ;
        }
        if raw & KVM_WRITEABLE != 0 {
            perms |= Perms::WRITE;
        }
        if raw & NX == 0 {
            perms |= Perms::EXEC;
        }
        let mem = match (raw & MAT_MASK) >> MAT_SHIFT {
            MAT_CC => MemType::WriteBack,
            MAT_WUC => MemType::WriteCombining,
            _ => MemType::Uncached,
        };
        Attrs {
            perms,
            mem,
            ignore_guest_memtype: false,
        }
    }

    /// Accessed = V, dirty = D.
    fn ad_state(&self, raw: u64, _level: Level) -> AdState {
        AdState {
            accessed: Some(raw & V != 0),
            dirty: Some(raw & D != 0),
        }
    }

    fn ad_bits(&self, raw: u64, _level: Level) -> u64 {
        raw & AD
    }

    fn leaf_key(&self, raw: u64, _level: Level) -> u64 {
        raw & !(self.pfn_mask | AD)
    }

    fn ad_model(&self) -> AdModel {
        if self.cfg.hardware_walker {
            AdModel::Hardware
        } else {
            AdModel::Software
        }
    }

    /// With the hardware walker: V of a present leaf without it, D of a W leaf without it.
    /// Otherwise nothing (software refill: only KVM writes entries).
    fn volatile_bits(&self, raw: u64, level: Level) -> u64 {
        if !self.cfg.hardware_walker || self.classify(raw, level) != EntryKind::Leaf {
            return 0;
        }
        let mut v = !raw & V;
        if raw & W != 0 {
            v |= !raw & D;
        }
        v
    }

    /// A huge leaf replaced by a table or the reverse: the old huge pair and new small pairs (or
    /// the reverse) could both sit in the TLB and match one address (multiple hits are
    /// undefined). Inferred from the TLB model; KVM itself splits without it and flushes the
    /// GPA afterwards.
    fn needs_break(&self, old: u64, new: u64, level: Level) -> bool {
        if level.get() == 0 {
            return false;
        }
        let (a, b) = (self.classify(old, level), self.classify(new, level));
        let valid = |k| matches!(k, EntryKind::Leaf | EntryKind::Table);
        valid(a) && valid(b) && a != b
    }

    /// The refill loads an even/odd pair, so the invalid neighbour of a new leaf may be cached
    /// (KVM flushes the GPA after every fault, `kvm_flush_tlb_gpa`).
    fn caches_empty_entries(&self) -> bool {
        true
    }
}

static_assertions::const_assert_eq!(mask(47, 12), 0x0000_ffff_ffff_f000);
static_assertions::const_assert_eq!(FROZEN & (V | P), 0);
