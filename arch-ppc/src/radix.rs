//! Power Book3S-64 radix tree, partition scoped.
//!
//! Sources: Power ISA v3.0B / v3.1 Book III, chapter "Storage Control", cited by section title:
//! "Partition Table" (PATE doublewords), "Radix Tree Translation" → "Radix Tree Page Directory
//! Entry" and "Radix Tree Page Table Entry", "Storage Protection, Radix Tree Translation"
//! (Encoded Access Authority), "Storage Attributes" (ATT), "Reference and Change Recording", and
//! the `tlbie` instruction ("TLB Management Instructions"). Software conventions (which fields KVM
//! fills and how) from Linux `arch/powerpc/include/asm/book3s/64/{mmu,radix,pgtable}.h`,
//! `radix-4k.h`, `radix-64k.h`, `arch/powerpc/kvm/book3s_64_mmu_radix.c` and
//! `arch/powerpc/mm/book3s64/radix_tlb.c`.
//!
//! The ISA numbers bits MSB = 0; the table uses LSB = 0 of the value in CPU order (ISA bit *n* =
//! LSB bit 63 − *n*). **Entries are big-endian in memory on every host**
//! ([`ByteOrder::Big`]: the engine byte-swaps every load, store and compare-exchange).
//!
//! | LSB bit(s) | ISA bit(s) | directory entry (PDE) | leaf (PTE) | here |
//! |---|---|---|---|---|
//! | 63 | 0 | V | V | every entry the engine builds; 0 in empty and frozen |
//! | 62 | 1 | L = 0 | L = 1 | leaf / directory |
//! | 61 | 2 | — | SW0 (software) | frozen marker (with V = 0) |
//! | 59:8 | 4:55 | NLB, next-level base | — | child table address |
//! | 56:12 | 7:51 | — | RPN | output address |
//! | 11 | 52 | — | SW1 (software) | `MemType::Device` on a guarded leaf (software record) |
//! | 10 | 53 | — | SW2 (software) | frozen marker (with V = 0) |
//! | 8 | 55 | — | R, reference | preset by `young_dirty`; set by hardware |
//! | 7 | 56 | — | C, change | preset by `young_dirty` on writable leaves; set by hardware |
//! | 5:4 | 58:59 | — | ATT: 00 normal, 01 SAO, 10 non-idempotent I/O (guarded), 11 tolerant I/O | WriteBack 00, WriteCombining 11, Uncached and Device 10 |
//! | 4:0 | 59:63 | NLS, next-level index bits | — | 13 / 9 / 5 of the child table |
//! | 3 | 60 | — | EAA privileged | 0 (process scope only) |
//! | 2 | 61 | — | EAA read | `Perms::READ` |
//! | 1 | 62 | — | EAA read/write (grants read too) | `Perms::WRITE` (with read) |
//! | 0 | 63 | — | EAA execute | `Perms::EXEC` |
//!
//! **Geometry.** POWER9/POWER10 implement 52-bit trees (RTS = 21) split 13/9/9/9 with 4 KiB host
//! pages and 13/9/9/5 with 64 KiB host pages (Linux `radix-4k.h`/`radix-64k.h`, QEMU
//! `ppc_radix64_is_valid_level`): a 64 KiB root, 4 KiB directories, and 4 KiB or **256 B** leaf
//! tables; leaves at level 0 (4K or 64K), 1 (2M) and 2 (1G). Every table is aligned to its own
//! size (KVM's `kvmppc_mmu_walk_radix_tree` rejects a base with low bits set).
//!
//! **Memory types.** ATT 10 (non-idempotent I/O, guarded: no speculative access and no
//! instruction fetch) is what `Uncached` and `Device` ask for (Linux `pgprot_noncached`); ATT 11
//! (tolerant I/O: cache-inhibited, not guarded) is `WriteCombining` (Linux
//! `pgprot_noncached_wc`). A `Device` leaf also carries SW1, which hardware ignores, so that
//! `leaf_attrs(make_leaf(attrs)) == attrs`. Executable guarded leaves are refused (a fetch from
//! guarded storage is refused by hardware), which makes the permissions depend on the memory
//! type. WT/WP have no encoding; `ignore_guest_memtype` is refused (no way to force it).
//!
//! **Break-before-make.** Only EAA, R and C may change in a live entry (KVM
//! `PTE_BITS_MUST_MATCH` allows W, R, C); any other change between valid entries (output address,
//! leaf ↔ directory, attributes) is made by invalidating the entry, flushing, then writing the new
//! value, as `kvmppc_create_pte` does (unmap + tlbie, or clear the PDE + PWC flush).

use tdp_core::{
    AdModel, AdState, Attrs, ByteOrder, EntryKind, Error, Geometry, Gpa, Hpa, Level, MemType,
    Perms, PteFormat, TlbFlush,
};

const V: u64 = 1 << 63;
const L: u64 = 1 << 62;
const SW0: u64 = 1 << 61;
/// NLB of a directory entry, LSB 59:8 (Linux `RPDB_MASK`).
const NLB: u64 = 0x0fff_ffff_ffff_ff00;
/// NLS of a directory entry, LSB 4:0.
const NLS: u64 = 0x1f;
/// RPN of a leaf, LSB 56:12 (QEMU `R_PTE_RPN`, KVM's nested walk).
const RPN: u64 = 0x01ff_ffff_ffff_f000;
const SW1: u64 = 1 << 11;
const SW2: u64 = 1 << 10;
const REF: u64 = 1 << 8;
const CHG: u64 = 1 << 7;
const ATT_SHIFT: u32 = 4;
const ATT_MASK: u64 = 3 << ATT_SHIFT;
const ATT_NORMAL: u64 = 0b00;
const ATT_GUARDED: u64 = 0b10;
const ATT_TOLERANT: u64 = 0b11;
const EAA_READ: u64 = 1 << 2;
const EAA_RW: u64 = 1 << 1;
const EAA_EXEC: u64 = 1 << 0;
const EAA_RWX: u64 = EAA_READ | EAA_RW | EAA_EXEC;
/// SW1 on a device leaf.
const SW_DEVICE: u64 = SW1;

/// The frozen value: V = 0 with SW0 and SW2 (hardware ignores an invalid entry).
const FROZEN: u64 = SW0 | SW2;

/// Tree size: 52 bits, RTS = 52 − 31 = 21 = 0b10_101.
const TREE_BITS: u8 = 52;
const RTS: u64 = 21;
/// Root index bits (RPDS): a 64 KiB root.
const ROOT_BITS: u8 = 13;

// Partition-table entry (Book III "Partition Table"; Linux book3s/64/mmu.h).
const PATB_HR: u64 = 1 << 63;
const PATB_GR: u64 = 1 << 63;
const RTS1_SHIFT: u32 = 61;
const RTS2_SHIFT: u32 = 5;
/// PRTB, the process-table base in doubleword 1 (Linux `PRTB_MASK`).
const PRTB: u64 = 0x0fff_ffff_ffff_f000;
/// PRTS, the process-table size field (5 bits): the table is 2^(12 + PRTS) bytes.
const PRTS_MAX: u8 = 31;

// tlbie operands (Book III "TLB Management Instructions"; Linux radix_tlb.c).
const RIC_TLB: u8 = 0;
const RIC_PWC: u8 = 1;
const RIC_ALL: u8 = 2;
/// RB IS field (ISA 52:53, LSB 11:10) = 2: every entry of the LPID.
const RB_IS_LPID: u64 = 2 << 10;
/// RB AP field (ISA 56:58, LSB 7:5).
const RB_AP_SHIFT: u32 = 5;
/// RB EPN (ISA 0:51): the effective page number, low 12 bits clear.
const RB_EPN: u64 = !0xfff;

const MIN_PA_BITS: u8 = 32;
/// The RPN field reaches LSB bit 56.
const MAX_PA_BITS: u8 = 57;

/// Linux's `tlb_single_page_flush_ceiling`: a flush needing more per-page `tlbie`s than this
/// invalidates the whole LPID instead.
pub const TLBIE_MAX_PAGES: u64 = 33;

/// The host page size a radix geometry is built for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RadixGranule {
    /// 4 KiB: index bits 13/9/9/9, leaves 4K / 2M / 1G, all non-root tables 4 KiB.
    Page4K,
    /// 64 KiB: index bits 13/9/9/5, leaves 64K / 2M / 1G, leaf tables 256 B.
    Page64K,
}

/// What the hypervisor chooses for one partition-scoped tree.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RadixOptions {
    /// The geometry.
    pub granule: RadixGranule,
    /// Host real address width, 32..=57 (the output width of the table).
    pub pa_bits: u8,
    /// Implemented LPID bits, 1..=32 (POWER9: 12), for [`Radix::tlbie`].
    pub lpid_bits: u8,
}

/// The Power radix partition-scoped format for one configuration.
#[derive(Clone, Debug)]
pub struct Radix {
    geo: Geometry,
    opts: RadixOptions,
}

/// A partition-table entry for a radix guest, in CPU order. Store it big-endian
/// ([`PartitionTableEntry::to_be_bytes`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionTableEntry {
    /// HR (host radix) | RTS | RPDB (root) | RPDS.
    pub dw0: u64,
    /// GR (guest radix) | PRTB (process-table base, guest real) | PRTS.
    pub dw1: u64,
}

impl PartitionTableEntry {
    /// The 16 bytes as they sit in the partition table.
    pub fn to_be_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.dw0.to_be_bytes());
        b[8..].copy_from_slice(&self.dw1.to_be_bytes());
        b
    }
}

/// The operands of one `tlbie RB, RS, RIC, PRS, R`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tlbie {
    /// Radix invalidation control: 0 TLB, 1 page-walk cache, 2 both (and everything else cached).
    pub ric: u8,
    /// Process scoped: always 0 here (partition scoped).
    pub prs: u8,
    /// Radix: always 1 here.
    pub r: u8,
    /// RS: the LPID (RS bits 31:0 for partition scope).
    pub rs: u64,
    /// RB: the page's effective address with AP in LSB 7:5 (IS = 0), or IS = 2 (the whole LPID).
    pub rb: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Run {
    next: u64,
    step: u64,
    left: u64,
    ap: u64,
}

const NO_RUN: Run = Run {
    next: 0,
    step: 0,
    left: 0,
    ap: 0,
};

/// The `tlbie`s one [`TlbFlush`] needs, in order. Follow them with `eieio; tlbsync; ptesync`
/// (and, on POWER9, Linux's erratum fix-ups).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlbieSeq {
    runs: [Run; 3],
    run: usize,
    rs: u64,
    last: Option<Tlbie>,
}

impl Iterator for TlbieSeq {
    type Item = Tlbie;

    fn next(&mut self) -> Option<Tlbie> {
        while self.run < self.runs.len() {
            let run = &mut self.runs[self.run];
            if run.left > 0 {
                let rb = run.next | run.ap << RB_AP_SHIFT;
                run.left -= 1;
                run.next = run.next.wrapping_add(run.step);
                return Some(Tlbie {
                    ric: RIC_TLB,
                    prs: 0,
                    r: 1,
                    rs: self.rs,
                    rb,
                });
            }
            self.run += 1;
        }
        self.last.take()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let pages: u64 = self.runs[self.run.min(3)..].iter().map(|r| r.left).sum();
        let n = usize::try_from(pages + u64::from(self.last.is_some())).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl ExactSizeIterator for TlbieSeq {}

impl Radix {
    /// A partition-scoped radix configuration.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `pa_bits` is outside 32..=57 or `lpid_bits` outside 1..=32.
    pub fn new(opts: RadixOptions) -> Result<Radix, Error> {
        if !(MIN_PA_BITS..=MAX_PA_BITS).contains(&opts.pa_bits) {
            return Err(Error::InvalidConfig {
                what: "real address width (32..=57)",
                value: opts.pa_bits.into(),
            });
        }
        if !(1..=32).contains(&opts.lpid_bits) {
            return Err(Error::InvalidConfig {
                what: "LPID bits (1..=32)",
                value: opts.lpid_bits.into(),
            });
        }
        let (shift, bits) = match opts.granule {
            RadixGranule::Page4K => (12, [9, 9, 9, ROOT_BITS]),
            RadixGranule::Page64K => (16, [5, 9, 9, ROOT_BITS]),
        };
        let geo = Geometry::new(shift, &bits, 0b111, TREE_BITS, opts.pa_bits)?;
        Ok(Radix { geo, opts })
    }

    /// The options this format was built with.
    pub fn options(&self) -> RadixOptions {
        self.opts
    }

    /// The partition-table entry of a radix guest whose partition-scoped root is at `root` and
    /// whose process table (registered by the guest, `H_REGISTER_PROC_TBL`) is at the guest real
    /// address `process_table`, 2^(12 + `prts`) bytes.
    ///
    /// dw0 = HR | RTS (21: RTS1 = 0b10 in LSB 62:61, RTS2 = 0b101 in LSB 7:5) | RPDB = `root` |
    /// RPDS = 13; dw1 = GR | PRTB = `process_table` | PRTS (KVM `kvmppc_setup_partition_table`).
    ///
    /// # Errors
    /// [`Error::UnalignedHpa`] if `root` is not aligned to the 64 KiB root size,
    /// [`Error::HpaTooWide`] if it is beyond the real address width, [`Error::InvalidConfig`] if
    /// `prts` does not fit its 5-bit field, [`Error::UnalignedGpa`] if the process table is not
    /// aligned to its size, [`Error::GpaTooWide`] if it does not fit the 52-bit guest space.
    pub fn partition_table_entry(
        &self,
        root: Hpa,
        process_table: Gpa,
        prts: u8,
    ) -> Result<PartitionTableEntry, Error> {
        let root_size = self.geo.table_size(self.geo.root_level()) as u64;
        if !root.is_aligned(root_size) {
            return Err(Error::UnalignedHpa {
                hpa: root,
                align: root_size,
            });
        }
        if root.raw() >> self.opts.pa_bits != 0 {
            return Err(Error::HpaTooWide {
                hpa: root,
                bits: self.opts.pa_bits,
            });
        }
        if prts > PRTS_MAX {
            return Err(Error::InvalidConfig {
                what: "PRTS (process-table size field, 5 bits)",
                value: prts.into(),
            });
        }
        let pt_size = 1u64 << (12 + u32::from(prts));
        if !process_table.is_aligned(pt_size) {
            return Err(Error::UnalignedGpa {
                value: process_table.raw(),
                align: pt_size,
            });
        }
        let pt_last = u128::from(process_table.raw()) + u128::from(pt_size) - 1;
        if pt_last >> TREE_BITS != 0 {
            return Err(Error::GpaTooWide {
                gpa: Gpa::new(pt_last.min(u128::from(u64::MAX)) as u64),
                bits: TREE_BITS,
            });
        }
        let rts = (RTS >> 3) << RTS1_SHIFT | (RTS & 7) << RTS2_SHIFT;
        Ok(PartitionTableEntry {
            dw0: PATB_HR | rts | (root.raw() & NLB) | u64::from(ROOT_BITS),
            dw1: PATB_GR | (process_table.raw() & PRTB) | u64::from(prts),
        })
    }

    /// The AP (actual page size) encoding of a leaf level: 4K 0b000, 64K 0b101, 2M 0b001,
    /// 1G 0b010 (Book III `tlbie`; Linux `mmu_psize_defs[].ap` for radix).
    fn ap(&self, level: Level) -> u64 {
        match self.geo.shift(level) {
            12 => 0b000,
            16 => 0b101,
            21 => 0b001,
            _ => 0b010,
        }
    }

    /// The `tlbie` operands that carry out `flush` for partition `lpid` (R = 1, PRS = 0).
    ///
    /// - [`TlbFlush::All`]: one RIC = 2, IS = 2 (everything cached for the LPID).
    /// - A range of leaves of one level: RIC = 0, IS = 0 per page of that level with its AP; of
    ///   mixed levels (`level: None`): one such run per leaf size of the geometry (a `tlbie` only
    ///   matches entries of the page size it names).
    /// - A range in which a table entry was removed or replaced (`tables`): the same per-page
    ///   runs (every leaf size), then RIC = 1, IS = 2 for the page-walk cache (Linux
    ///   `_tlbie_va_range(.., also_pwc)`, KVM `kvmppc_radix_flush_pwc`).
    /// - More than `max_pages` per-page `tlbie`s ([`TLBIE_MAX_PAGES`] is Linux's value): one
    ///   IS = 2 `tlbie` instead, RIC = 2 if tables changed, else RIC = 0.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `lpid` does not fit in `lpid_bits`, [`Error::InvalidLevel`] if
    /// the range names a level that holds no leaves in this geometry.
    pub fn tlbie(&self, flush: TlbFlush, lpid: u32, max_pages: u64) -> Result<TlbieSeq, Error> {
        if u64::from(lpid) >> self.opts.lpid_bits != 0 {
            return Err(Error::InvalidConfig {
                what: "LPID wider than the implemented LPID bits",
                value: lpid.into(),
            });
        }
        let rs = u64::from(lpid);
        let whole = |ric| TlbieSeq {
            runs: [NO_RUN; 3],
            run: 0,
            rs,
            last: Some(Tlbie {
                ric,
                prs: 0,
                r: 1,
                rs,
                rb: RB_IS_LPID,
            }),
        };
        let TlbFlush::Range {
            start,
            size,
            level,
            tables,
        } = flush
        else {
            return Ok(whole(RIC_ALL));
        };
        let mut runs = [NO_RUN; 3];
        let mut n = 0;
        let mut total: u128 = 0;
        let mut add = |level: Level| {
            let page = self.geo.level_size(level);
            let first = start.raw() & !(page - 1);
            let end = u128::from(start.raw()) + u128::from(size);
            let count = if size == 0 {
                0
            } else {
                (end - u128::from(first)).div_ceil(u128::from(page))
            };
            total += count;
            runs[n] = Run {
                next: first & RB_EPN,
                step: page,
                left: count.min(u128::from(u64::MAX)) as u64,
                ap: self.ap(level),
            };
            n += 1;
        };
        match level {
            Some(l) if self.geo.is_leaf_level(l) && !tables => add(l),
            Some(l) if !self.geo.is_leaf_level(l) => return Err(Error::InvalidLevel { level: l }),
            _ => {
                for l in 0..self.geo.levels() {
                    let l = Level::new(l).unwrap_or(Level::LEAF);
                    if self.geo.is_leaf_level(l) {
                        add(l);
                    }
                }
            }
        }
        if total > u128::from(max_pages) {
            return Ok(whole(if tables { RIC_ALL } else { RIC_TLB }));
        }
        Ok(TlbieSeq {
            runs,
            run: 0,
            rs,
            last: tables.then_some(Tlbie {
                ric: RIC_PWC,
                prs: 0,
                r: 1,
                rs,
                rb: RB_IS_LPID,
            }),
        })
    }

    fn eaa(perms: Perms) -> u64 {
        let mut v = 0;
        if perms.contains(Perms::READ) {
            v |= EAA_READ;
        }
        if perms.contains(Perms::WRITE) {
            v |= EAA_RW;
        }
        if perms.intersects(Perms::EXEC) {
            v |= EAA_EXEC;
        }
        v
    }

    fn is_valid_leaf(raw: u64) -> bool {
        raw & (V | L) == V | L
    }
}

impl PteFormat for Radix {
    const BYTE_ORDER: ByteOrder = ByteOrder::Big;

    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline(always)]
    fn empty(&self, _level: Level) -> u64 {
        0
    }

    fn frozen(&self, _level: Level) -> u64 {
        FROZEN
    }

    fn check_attrs(&self, attrs: &Attrs) -> Result<(), Error> {
        let p = attrs.perms;
        let exec = p & Perms::EXEC;
        // EAA read/write grants read as well: write without read has no encoding.
        let write_without_read = p.contains(Perms::WRITE) && !p.contains(Perms::READ);
        // One execute bit; the privilege bit only applies to process scope.
        let split_exec = !exec.is_empty() && exec != Perms::EXEC;
        let bad_mem = match attrs.mem {
            MemType::WriteBack | MemType::WriteCombining => false,
            // Guarded storage: hardware refuses instruction fetch from it.
            MemType::Uncached | MemType::Device => !exec.is_empty(),
            MemType::WriteThrough | MemType::WriteProtect => true,
        };
        if write_without_read || split_exec || bad_mem || attrs.ignore_guest_memtype {
            return Err(Error::UnsupportedAttrs { attrs: *attrs });
        }
        Ok(())
    }

    #[inline]
    fn leaf_addr_bits(&self, hpa: Hpa, _level: Level) -> u64 {
        hpa.raw() & RPN
    }

    #[inline]
    fn make_leaf(&self, hpa: Hpa, _level: Level, attrs: &Attrs, young_dirty: bool) -> u64 {
        let mut v = V | L | (hpa.raw() & RPN) | Self::eaa(attrs.perms);
        v |= match attrs.mem {
            MemType::WriteCombining => ATT_TOLERANT << ATT_SHIFT,
            MemType::Uncached => ATT_GUARDED << ATT_SHIFT,
            MemType::Device => ATT_GUARDED << ATT_SHIFT | SW_DEVICE,
            _ => ATT_NORMAL << ATT_SHIFT,
        };
        if young_dirty {
            v |= REF;
            if attrs.perms.contains(Perms::WRITE) {
                v |= CHG;
            }
        }
        v
    }

    #[inline]
    fn make_table(&self, child: Hpa, level: Level) -> u64 {
        let child_level = Level::new(level.get().saturating_sub(1)).unwrap_or(Level::LEAF);
        V | (child.raw() & NLB) | u64::from(self.geo.index_bits(child_level)) & NLS
    }

    #[inline]
    fn split_child(&self, huge: u64, level: Level, index: usize) -> u64 {
        let child_level = Level::new(level.get().saturating_sub(1)).unwrap_or(Level::LEAF);
        let addr = (huge & RPN) + index as u64 * self.geo.level_size(child_level);
        (huge & !RPN) | (addr & RPN)
    }

    #[inline]
    fn make_huge(&self, child: u64, _level: Level, ad: u64) -> u64 {
        (child & !(REF | CHG)) | (ad & (REF | CHG))
    }

    #[inline]
    fn with_perms(&self, raw: u64, _level: Level, perms: Perms) -> u64 {
        (raw & !EAA_RWX) | Self::eaa(perms)
    }

    #[inline(always)]
    fn classify(&self, raw: u64, level: Level) -> EntryKind {
        if raw & V == 0 {
            return match raw {
                0 => EntryKind::Empty,
                FROZEN => EntryKind::Frozen,
                _ => EntryKind::Other,
            };
        }
        if raw & L != 0 {
            EntryKind::Leaf
        } else if level.get() == 0 {
            // A directory below the smallest page leaves no address bits: a bad tree.
            EntryKind::Other
        } else {
            EntryKind::Table
        }
    }

    #[inline(always)]
    fn table_addr(&self, raw: u64, _level: Level) -> Hpa {
        Hpa::new(raw & NLB)
    }

    #[inline]
    fn leaf_addr(&self, raw: u64, level: Level) -> Hpa {
        Hpa::new(raw & RPN & !(self.geo.level_size(level) - 1))
    }

    fn leaf_attrs(&self, raw: u64, _level: Level) -> Attrs {
        let mut perms = Perms::empty();
        if raw & (EAA_READ | EAA_RW) != 0 {
            perms |= Perms::READ;
        }
        if raw & EAA_RW != 0 {
            perms |= Perms::WRITE;
        }
        if raw & EAA_EXEC != 0 {
            perms |= Perms::EXEC;
        }
        let mem = match (raw & ATT_MASK) >> ATT_SHIFT {
            ATT_TOLERANT => MemType::WriteCombining,
            ATT_GUARDED if raw & SW_DEVICE != 0 => MemType::Device,
            ATT_GUARDED => MemType::Uncached,
            // Normal, and SAO (never built: cacheable, strongly ordered).
            _ => MemType::WriteBack,
        };
        Attrs {
            perms,
            mem,
            ignore_guest_memtype: false,
        }
    }

    fn ad_state(&self, raw: u64, _level: Level) -> AdState {
        AdState {
            accessed: Some(raw & REF != 0),
            dirty: Some(raw & CHG != 0),
        }
    }

    #[inline]
    fn ad_bits(&self, raw: u64, _level: Level) -> u64 {
        raw & (REF | CHG)
    }

    #[inline]
    fn leaf_key(&self, raw: u64, _level: Level) -> u64 {
        raw & !(RPN | REF | CHG)
    }

    /// R and C are recorded by hardware; where a processor cannot, it takes an HDSI with
    /// "set RC" and the host sets them (KVM `kvmppc_hv_handle_set_rc`): the entry is volatile
    /// either way.
    fn ad_model(&self) -> AdModel {
        AdModel::Hardware
    }

    /// R if clear in a valid leaf, C if clear in a writable one; directories have neither.
    #[inline(always)]
    fn volatile_bits(&self, raw: u64, _level: Level) -> u64 {
        if !Self::is_valid_leaf(raw) {
            return 0;
        }
        let mut v = !raw & REF;
        if raw & EAA_RW != 0 {
            v |= !raw & CHG;
        }
        v
    }

    /// Replacing a valid entry by another valid one breaks unless only EAA, R and C differ.
    /// Invalidating an entry (the new value not valid) needs no break: that is the break.
    #[inline]
    fn needs_break(&self, old: u64, new: u64, _level: Level) -> bool {
        old & V != 0 && new & V != 0 && (old ^ new) & !(EAA_RWX | REF | CHG) != 0
    }

    #[inline]
    fn perms_depend_on_memtype(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn radix(granule: RadixGranule) -> Radix {
        Radix::new(RadixOptions {
            granule,
            pa_bits: 52,
            lpid_bits: 12,
        })
        .unwrap()
    }

    #[test]
    fn geometries_have_a_64k_root_and_the_right_leaf_tables() {
        let g4 = radix(RadixGranule::Page4K);
        let g = g4.geometry();
        assert_eq!(g.table_size(g.root_level()), 65536);
        assert_eq!(g.table_size(Level::LEAF), 4096);
        assert_eq!(g.ia_bits(), 52);
        let g64 = radix(RadixGranule::Page64K);
        let g = g64.geometry();
        assert_eq!(g.table_size(g.root_level()), 65536);
        assert_eq!(g.table_size(Level::LEAF), 256);
        assert_eq!(g.level_size(Level::LEAF), 65536);
        assert_eq!(g.level_size(Level::new(1).unwrap()), 2 << 20);
        assert_eq!(g.level_size(Level::new(2).unwrap()), 1 << 30);
    }

    #[test]
    fn needs_break_only_for_changes_beyond_eaa_and_rc() {
        let r = radix(RadixGranule::Page4K);
        let leaf = r.make_leaf(
            Hpa::new(0x20_0000),
            Level::new(1).unwrap(),
            &Attrs::normal(Perms::RW),
            false,
        );
        let l1 = Level::new(1).unwrap();
        let ro = r.with_perms(leaf, l1, Perms::READ);
        assert!(!r.needs_break(leaf, ro, l1));
        assert!(!r.needs_break(leaf, leaf | REF | CHG, l1));
        assert!(!r.needs_break(leaf, 0, l1), "invalidation is the break");
        assert!(r.needs_break(leaf, leaf + 0x20_0000, l1), "output address");
        let table = r.make_table(Hpa::new(0x9000), l1);
        assert!(r.needs_break(leaf, table, l1), "leaf to directory");
        assert!(r.needs_break(table, leaf, l1), "directory to leaf");
    }
}
