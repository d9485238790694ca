//! The one place where the engine changes an entry, and the per-operation record of what it
//! changed (the range to flush, the tables detached, the counters).
//!
//! Rules written once here and relied on by every operation:
//! - **Counts.** A table's [`crate::host::TableMeta`] count is the number of its entries that are
//!   not the level's empty value; it changes only in [`try_set_entry`], so emptiness is known
//!   without rescanning.
//! - **Volatile bits.** If the format says hardware may set bits in the old entry
//!   (`PteFormat::volatile_bits`), the entry is replaced with a compare-exchange against the
//!   snapshot, so a bit set by hardware in between is never lost: the caller sees the failure and
//!   rebuilds its new value. Otherwise a plain (relaxed-or-release) store is used: a locked
//!   read-modify-write costs ~40x a store.
//! - **Break-before-make.** If the format says the replacement of a valid entry needs it
//!   (`PteFormat::needs_break`: arm64 output address, block/table, memory attributes), the entry is
//!   made empty, the TLB is invalidated for its span, and only then is the new value written.
//!   No operation can skip this, because no operation writes entries any other way.

use core::sync::atomic::Ordering;

use crate::addr::{Gpa, Hpa, Level};
use crate::entry::EntryPtr;
use crate::format::{EntryKind, PteFormat};
use crate::geometry::MAX_LEVELS;
use crate::host::{Host, TlbFlush};
use crate::iter::Iter;
use crate::pool::Detached;

const NO_LEVEL: u8 = u8::MAX;
const MIXED_LEVELS: u8 = u8::MAX - 1;

/// What one operation changed.
pub(crate) struct Op {
    lo: u64,
    hi: u64,
    level: u8,
    walk_caches: bool,
    pub(crate) detached: Detached,
    pub(crate) leaves: [i64; MAX_LEVELS],
    pub(crate) tables: [i64; MAX_LEVELS],
}

impl Op {
    pub(crate) const fn new() -> Self {
        Op {
            lo: u64::MAX,
            hi: 0,
            level: NO_LEVEL,
            walk_caches: false,
            detached: Detached::new(),
            leaves: [0; MAX_LEVELS],
            tables: [0; MAX_LEVELS],
        }
    }

    /// Records that translations for `[gpa, gpa + size)` (entries at `level`) must be flushed.
    #[inline(always)]
    pub(crate) fn flush_span(&mut self, gpa: u64, size: u64, level: Level) {
        self.lo = self.lo.min(gpa);
        self.hi = self.hi.max(gpa + size);
        self.level = match self.level {
            NO_LEVEL => level.get(),
            l if l == level.get() => l,
            _ => MIXED_LEVELS,
        };
    }

    /// Records that translations for `[gpa, gpa + size)` of unknown or mixed levels must be
    /// flushed (no level hint), but no table entry changed.
    #[inline]
    pub(crate) fn flush_span_any_level(&mut self, gpa: u64, size: u64) {
        self.lo = self.lo.min(gpa);
        self.hi = self.hi.max(gpa + size);
        self.level = MIXED_LEVELS;
    }

    /// Records that a table entry for `[gpa, gpa + size)` was removed or replaced: whatever was
    /// cached below it (leaves of any level, walk-cache entries) must be flushed.
    #[inline]
    pub(crate) fn flush_table_span(&mut self, gpa: u64, size: u64) {
        self.lo = self.lo.min(gpa);
        self.hi = self.hi.max(gpa + size);
        self.level = MIXED_LEVELS;
        self.walk_caches = true;
    }

    /// The one range-coalesced flush this operation needs, if any.
    pub(crate) fn flush(&self) -> Option<TlbFlush> {
        if self.level == NO_LEVEL {
            return None;
        }
        Some(TlbFlush::Range {
            start: Gpa::new(self.lo),
            size: self.hi - self.lo,
            level: Level::new(self.level),
            tables: self.walk_caches,
        })
    }
}

/// Fills the table at `pa` with the empty value of `level` and resets its count.
///
/// # Safety
/// `pa` is an allocated table of `level`'s size that no walker can reach yet.
pub(crate) unsafe fn fill_table<F: PteFormat, H: Host>(fmt: &F, host: &H, pa: Hpa, level: Level) {
    let virt = host.phys_to_virt(pa);
    let empty = fmt.empty(level);
    for i in 0..fmt.geometry().entries(level) {
        // SAFETY: `i` is below the table's entry count and the table is unreachable (caller).
        unsafe { EntryPtr::new(virt, i) }.store_relaxed(empty, F::BYTE_ORDER);
    }
    // SAFETY: `pa` is allocated, so the host keeps its metadata valid.
    unsafe { host.meta(pa).as_ref() }
        .count
        .store(0, Ordering::Relaxed);
}

/// Adds `delta` to the non-empty count of the table holding the current entry.
#[inline]
pub(crate) fn adjust_count<F: PteFormat, H: Host>(it: &Iter<'_, F, H>, delta: i64) {
    if delta != 0 {
        let count = &it.table_meta().count;
        let c = count.load(Ordering::Relaxed);
        count.store((i64::from(c) + delta) as u32, Ordering::Relaxed);
    }
}

/// Changes the leaf at `ptr` (currently `cur`) in place to `f(cur)`, keeping any bit hardware
/// sets meanwhile (retried compare-exchange for volatile entries). Never needs break-before-make:
/// only permission, A/D and software bits may change this way.
#[inline(always)]
pub(crate) fn update_at<F: PteFormat>(
    fmt: &F,
    ptr: EntryPtr,
    mut cur: u64,
    level: Level,
    f: impl Fn(u64) -> u64,
) {
    loop {
        let new = f(cur);
        debug_assert!(!fmt.needs_break(cur, new, level));
        if fmt.volatile_bits(cur, level) == 0 {
            ptr.store(new, F::BYTE_ORDER);
            return;
        }
        match ptr.compare_exchange(cur, new, F::BYTE_ORDER) {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}

/// Writes `n` consecutive leaves at `level` mapping `hpa`, `hpa + size`, ... starting at `ptr`,
/// into slots the caller knows are empty and that no walker can make non-empty meanwhile.
/// Uses the leaf encoding's linearity (`leaf(i) = leaf(0) + i * step`) when it holds over the whole
/// run, which is checked at its ends; else encodes each leaf.
///
/// # Safety
/// The `n` slots from `ptr` are inside one live table.
#[inline]
pub(crate) unsafe fn write_leaves<F: PteFormat>(
    fmt: &F,
    ptr: EntryPtr,
    n: usize,
    level: Level,
    hpa: u64,
    attrs: &crate::format::Attrs,
    young_dirty: bool,
) {
    let size = fmt.geometry().level_size(level);
    let leaf0 = fmt.make_leaf(Hpa::new(hpa), level, attrs, young_dirty);
    if n == 1 {
        ptr.store_relaxed(leaf0, F::BYTE_ORDER);
        return;
    }
    let step = if n > 1 {
        fmt.make_leaf(Hpa::new(hpa + size), level, attrs, young_dirty)
            .wrapping_sub(leaf0)
    } else {
        0
    };
    let last = (n.max(1) - 1) as u64;
    let linear = fmt.make_leaf(Hpa::new(hpa + last * size), level, attrs, young_dirty)
        == leaf0.wrapping_add(last.wrapping_mul(step));
    for i in 0..n {
        let leaf = if linear {
            leaf0.wrapping_add((i as u64).wrapping_mul(step))
        } else {
            fmt.make_leaf(Hpa::new(hpa + i as u64 * size), level, attrs, young_dirty)
        };
        // SAFETY: `i < n`, inside the table (caller contract).
        unsafe { ptr.offset(i) }.store_relaxed(leaf, F::BYTE_ORDER);
    }
}

/// Replaces the entry under the iterator (whose snapshot is `it.old()`) by `new`.
///
/// Fails, with the snapshot refreshed, if hardware changed a volatile entry since the snapshot.
#[inline]
pub(crate) fn try_set_entry<F: PteFormat, H: Host>(
    it: &mut Iter<'_, F, H>,
    new: u64,
) -> Result<(), ()> {
    let fmt = it.fmt;
    let level = it.level();
    let old = it.old();
    let ptr = it.ptr();
    let order = F::BYTE_ORDER;
    let volatile = fmt.volatile_bits(old, level) != 0;
    let valid = matches!(it.kind(), EntryKind::Leaf | EntryKind::Table);
    if valid && fmt.needs_break(old, new, level) {
        let empty = fmt.empty(level);
        if volatile {
            if let Err(now) = ptr.compare_exchange(old, empty, order) {
                it.set_snapshot(now);
                return Err(());
            }
        } else {
            ptr.store(empty, order);
        }
        let size = it.geometry().level_size(level);
        let was_table = it.kind() == EntryKind::Table;
        it.host.flush_tlb(TlbFlush::Range {
            start: Gpa::new(it.gpa()),
            size,
            level: (!was_table).then_some(level),
            tables: was_table,
        });
        ptr.store(new, order);
    } else if volatile {
        if let Err(now) = ptr.compare_exchange(old, new, order) {
            it.set_snapshot(now);
            return Err(());
        }
    } else {
        ptr.store(new, order);
    }
    let empty = fmt.empty(level);
    adjust_count(it, i64::from(new != empty) - i64::from(old != empty));
    it.set_snapshot(new);
    Ok(())
}

/// Replaces the entry under the iterator by `new`, whatever hardware set in it meanwhile.
#[inline]
pub(crate) fn set_entry<F: PteFormat, H: Host>(it: &mut Iter<'_, F, H>, new: u64) {
    while try_set_entry(it, new).is_err() {}
}
