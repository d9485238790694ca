//! The TLB invalidation a [`TlbFlush`] needs on this configuration: a pure function from the flush,
//! the configuration and the capabilities to the instruction sequence, with every operand.
//!
//! Sources: Arm ARM DDI 0487, "TLBI IPAS2E1IS, TLBI IPAS2E1ISNXS" (C5.5.14 in K.a) and "TLBI
//! RIPAS2E1IS, TLBI RIPAS2E1ISNXS" (FEAT_TLBIRANGE) instruction descriptions, "Invalidating TLB
//! entries from stage 2 translations"; Linux `__kvm_tlb_flush_vmid_ipa`, `__kvm_tlb_flush_vmid`,
//! `__kvm_tlb_flush_vmid_range`, `__flush_tlb_range_op`, `__TLBI_VADDR_RANGE`.
//!
//! | instruction | Xt |
//! |---|---|
//! | TLBI IPAS2E1IS | IPA\[47:12\] in 35:0, IPA\[51:48\] in 39:36 (FEAT_LPA), TTL in 47:44 (FEAT_TTL): TTL\[3:2\] granule (0b01 4K, 0b10 16K, 0b11 64K), TTL\[1:0\] level of the leaf; 0 = no hint |
//! | TLBI RIPAS2E1IS | BaseADDR in 36:0 (IPA >> granule shift; IPA >> 16 with VTCR_EL2.DS = 1), TTL in 38:37 (0 any, 1..3 level), NUM in 43:39, SCALE in 45:44, TG in 47:46; covers (NUM + 1) × 2^(5 × SCALE + 1) granule pages |
//! | TLBI VMALLE1IS | none: stage-1 and combined entries of the VMID, after a stage-2 invalidation by IPA |
//! | TLBI VMALLS12E1IS | none: every stage-1 and stage-2 entry of the VMID |
//!
//! A range invalidation is `DSB ISHST`, the TLBIs by IPA, `DSB ISH`, `TLBI VMALLE1IS` (by-IPA
//! TLBIs need not touch entries that combine stage 1 and stage 2), `DSB ISH`, `ISB`; a whole-VMID
//! one is `DSB ISHST`, `TLBI VMALLS12E1IS`, `DSB ISH`, `ISB`. Both run with the VM's VMID in
//! VTTBR_EL2. A range becomes a whole-VMID invalidation when it would need
//! [`Stage2::max_ipa_ops`] TLBI IPAS2E1IS or more (without FEAT_TLBIRANGE; Linux `MAX_DVM_OPS`
//! = one table of entries), or spans more than [`MAX_TLBI_RANGE_PAGES`] pages (with it).
//!
//! The level hint is used only when the flush names the level of every leaf that may be cached,
//! no table entry changed, and the range is aligned to that level (a TTL hint that is wrong, or a
//! range base not aligned to the hinted level, invalidates nothing reliably).

use tdp_core::{Level, TlbFlush};

use crate::config::{Granule, Stage2};

/// The most granule pages one RIPAS2E1IS covers: (31 + 1) × 2^(5 × 3 + 1) (Linux
/// `MAX_TLBI_RANGE_PAGES`). A larger range is invalidated for the whole VMID.
pub const MAX_TLBI_RANGE_PAGES: u64 = 32 << 16;

/// IPAS2E1IS: IPA\[51:12\] in bits 39:0.
const IPA_FIELD_MASK: u64 = (1 << 40) - 1;
/// IPAS2E1IS: TTL in bits 47:44.
const IPA_TTL_SHIFT: u32 = 44;
/// RIPAS2E1IS: BaseADDR in bits 36:0.
const RANGE_BASE_MASK: u64 = (1 << 37) - 1;
/// RIPAS2E1IS: TTL in bits 38:37.
const RANGE_TTL_SHIFT: u32 = 37;
/// RIPAS2E1IS: NUM in bits 43:39.
const RANGE_NUM_SHIFT: u32 = 39;
/// RIPAS2E1IS: SCALE in bits 45:44.
const RANGE_SCALE_SHIFT: u32 = 44;
/// RIPAS2E1IS: TG in bits 47:46.
const RANGE_TG_SHIFT: u32 = 46;
/// With VTCR_EL2.DS = 1 the range base is in 64 KiB units and must be 64 KiB aligned.
const LPA2_RANGE_SHIFT: u32 = 16;

/// One instruction of a stage-2 TLB invalidation sequence.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TlbiOp {
    /// `DSB ISHST`: the table writes are visible to every walker before the invalidation.
    DsbIshst,
    /// `TLBI IPAS2E1IS, Xt`: stage-2 entries for one IPA, any level, inner shareable.
    Ipas2e1is(u64),
    /// `TLBI RIPAS2E1IS, Xt`: stage-2 entries for a range of IPAs (FEAT_TLBIRANGE).
    Ripas2e1is(u64),
    /// `DSB ISH`: wait for the invalidations to complete.
    DsbIsh,
    /// `TLBI VMALLE1IS`: stage-1 (and combined stage-1 + 2) entries of the current VMID.
    Vmalle1is,
    /// `TLBI VMALLS12E1IS`: all stage-1 and stage-2 entries of the current VMID.
    Vmalls12e1is,
    /// `ISB`.
    Isb,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Lead,
    Ranges,
    Tail,
    Complete,
    Stage1,
    Complete2,
    Sync,
    Done,
}

/// The instruction sequence for one [`TlbFlush`], as an iterator of [`TlbiOp`]s. Built by
/// [`Stage2::tlbi`]; holds no memory (per-IPA instructions are generated one by one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlbiPlan {
    whole: bool,
    /// Per-IPA TLBIs first: `lead_left` of them from `lead_next`, `lead_stride` apart.
    lead_next: u64,
    lead_stride: u64,
    lead_left: u64,
    /// TTL field (bits 47:44) of every IPAS2E1IS operand.
    ipa_ttl: u64,
    /// RIPAS2E1IS operands.
    ranges: [u64; 4],
    ranges_len: u8,
    ranges_pos: u8,
    /// A last single page (IPA) after the ranges.
    tail: Option<u64>,
    phase: Phase,
}

impl TlbiPlan {
    fn whole_vmid() -> TlbiPlan {
        TlbiPlan {
            whole: true,
            lead_next: 0,
            lead_stride: 0,
            lead_left: 0,
            ipa_ttl: 0,
            ranges: [0; 4],
            ranges_len: 0,
            ranges_pos: 0,
            tail: None,
            phase: Phase::Start,
        }
    }

    /// Whether this is the whole-VMID invalidation (`TLBI VMALLS12E1IS`).
    pub fn is_whole_vmid(&self) -> bool {
        self.whole
    }

    /// The number of TLBI instructions still to come (barriers not counted).
    pub fn tlbi_count(&self) -> u64 {
        self.clone()
            .filter(|op| !matches!(op, TlbiOp::DsbIshst | TlbiOp::DsbIsh | TlbiOp::Isb))
            .count() as u64
    }

    fn ipa_xt(&self, ipa: u64) -> u64 {
        ((ipa >> 12) & IPA_FIELD_MASK) | self.ipa_ttl << IPA_TTL_SHIFT
    }
}

impl Iterator for TlbiPlan {
    type Item = TlbiOp;

    fn next(&mut self) -> Option<TlbiOp> {
        loop {
            match self.phase {
                Phase::Start => {
                    self.phase = if self.whole {
                        Phase::Complete
                    } else {
                        Phase::Lead
                    };
                    return Some(TlbiOp::DsbIshst);
                }
                Phase::Lead => {
                    if self.lead_left == 0 {
                        self.phase = Phase::Ranges;
                        continue;
                    }
                    let xt = self.ipa_xt(self.lead_next);
                    self.lead_next = self.lead_next.wrapping_add(self.lead_stride);
                    self.lead_left -= 1;
                    return Some(TlbiOp::Ipas2e1is(xt));
                }
                Phase::Ranges => {
                    if self.ranges_pos >= self.ranges_len {
                        self.phase = Phase::Tail;
                        continue;
                    }
                    let xt = self.ranges[self.ranges_pos as usize];
                    self.ranges_pos += 1;
                    return Some(TlbiOp::Ripas2e1is(xt));
                }
                Phase::Tail => {
                    self.phase = Phase::Complete;
                    if let Some(ipa) = self.tail.take() {
                        return Some(TlbiOp::Ipas2e1is(self.ipa_xt(ipa)));
                    }
                }
                Phase::Complete => {
                    if self.whole {
                        self.phase = Phase::Complete2;
                        return Some(TlbiOp::Vmalls12e1is);
                    }
                    self.phase = Phase::Stage1;
                    return Some(TlbiOp::DsbIsh);
                }
                Phase::Stage1 => {
                    self.phase = Phase::Complete2;
                    return Some(TlbiOp::Vmalle1is);
                }
                Phase::Complete2 => {
                    self.phase = Phase::Sync;
                    return Some(TlbiOp::DsbIsh);
                }
                Phase::Sync => {
                    self.phase = Phase::Done;
                    return Some(TlbiOp::Isb);
                }
                Phase::Done => return None,
            }
        }
    }
}

impl Stage2 {
    /// Without FEAT_TLBIRANGE, a range needing this many TLBI IPAS2E1IS or more is invalidated
    /// for the whole VMID instead: the entries of one table (512, 2048 or 8192), Linux
    /// `MAX_DVM_OPS` = `PTRS_PER_PTE`.
    pub fn max_ipa_ops(&self) -> u64 {
        1 << self.opts.granule.stride()
    }

    /// The Arm level (1..=3) a flush's leaves are at, if the hint may be given for `[start,
    /// end)`: a leaf level named by the flush, no table entry changed, the range aligned to it,
    /// and a level the TTL encodings define for this granule.
    fn hint_level(&self, level: Option<Level>, tables: bool, start: u64, end: u64) -> Option<u8> {
        let level = level.filter(|_| !tables)?;
        if !self.geo.is_leaf_level(level) {
            return None;
        }
        let mask = self.geo.level_size(level) - 1;
        if start & mask != 0 || end & mask != 0 {
            return None;
        }
        let arm = 3 - level.get();
        // 4 KiB level 0 and 16 KiB level 1 hints exist only with FEAT_LPA2 (never leaf levels
        // here); level 0 has no range TTL encoding.
        let defined = match self.opts.granule {
            Granule::K4 | Granule::K64 => (1..=3).contains(&arm),
            Granule::K16 => (2..=3).contains(&arm),
        };
        defined.then_some(arm)
    }

    /// The TLB invalidation `flush` needs: see the module documentation for the sequence and the
    /// operand layouts. `TlbFlush::All`, a range beyond the IPA space, and a range above the
    /// threshold give the whole-VMID sequence; addresses are rounded out to the granule.
    pub fn tlbi(&self, flush: TlbFlush) -> TlbiPlan {
        let TlbFlush::Range {
            start,
            size,
            level,
            tables,
        } = flush
        else {
            return TlbiPlan::whole_vmid();
        };
        let g = self.opts.granule;
        let page = g.size();
        let s = start.raw() & !(page - 1);
        let Some(end) = start
            .raw()
            .checked_add(size)
            .and_then(|e| e.checked_add(page - 1))
            .map(|e| e & !(page - 1))
        else {
            return TlbiPlan::whole_vmid();
        };
        if end > 1u64 << self.opts.ipa_bits {
            return TlbiPlan::whole_vmid();
        }
        let hint = self.hint_level(level, tables, s, end);
        let ttl4 = match hint {
            Some(arm) if self.caps.ttl => g.tlbi_tg() << 2 | u64::from(arm),
            _ => 0,
        };
        let mut plan = TlbiPlan {
            whole: false,
            lead_next: s,
            lead_stride: page,
            lead_left: 0,
            ipa_ttl: ttl4,
            ranges: [0; 4],
            ranges_len: 0,
            ranges_pos: 0,
            tail: None,
            phase: Phase::Start,
        };
        let pages = (end - s) >> g.shift();

        if !self.caps.tlbi_range {
            // One IPAS2E1IS per leaf when the level is known, else per page.
            let stride = match hint {
                Some(arm) => Level::new(3 - arm).map_or(page, |l| self.geo.level_size(l)),
                None => page,
            };
            let ops = (end - s) / stride;
            if ops >= self.max_ipa_ops() {
                return TlbiPlan::whole_vmid();
            }
            plan.lead_stride = stride;
            plan.lead_left = ops;
            return plan;
        }

        if pages > MAX_TLBI_RANGE_PAGES {
            return TlbiPlan::whole_vmid();
        }
        let mut addr = s;
        let mut left = pages;
        // With DS = 1 a range base is in 64 KiB units: single pages until it is aligned.
        if self.opts.lpa2 {
            let align = (1u64 << LPA2_RANGE_SHIFT) - 1;
            while left > 0 && addr & align != 0 {
                plan.lead_left += 1;
                addr += page;
                left -= 1;
            }
        }
        let base_shift = if self.opts.lpa2 {
            LPA2_RANGE_SHIFT
        } else {
            g.shift()
        };
        let ttl2 = hint.map_or(0, u64::from);
        // Largest scale first (Linux `__flush_tlb_range_op`), so that a 64 KiB-aligned base
        // stays aligned: every range but the last (scale 0) covers a multiple of 64 pages.
        for scale in (0..4u32).rev() {
            let unit = 1u64 << (5 * scale + 1);
            let n = left.min(32 * unit) / unit;
            if n == 0 {
                continue;
            }
            let xt = ((addr >> base_shift) & RANGE_BASE_MASK)
                | ttl2 << RANGE_TTL_SHIFT
                | (n - 1) << RANGE_NUM_SHIFT
                | u64::from(scale) << RANGE_SCALE_SHIFT
                | g.tlbi_tg() << RANGE_TG_SHIFT;
            plan.ranges[plan.ranges_len as usize] = xt;
            plan.ranges_len += 1;
            addr += n * unit * page;
            left -= n * unit;
        }
        // A range covers an even number of pages: at most one is left.
        if left == 1 {
            plan.tail = Some(addr);
        }
        plan
    }
}
