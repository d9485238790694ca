//! collapse: replace tables of uniform leaves by huge leaves (huge-page recovery).

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::entry::EntryPtr;
use crate::error::Error;
use crate::flush::Pending;
use crate::format::{AdModel, EntryKind, PteFormat};
use crate::host::{Host, TableMeta};
use crate::iter::Visit;
use crate::mode::Mode;
use crate::sync::Ordering;
use crate::tree::Progress;
use crate::update::{or_leaf_bits, put_back, take, try_set};

use super::{check_range, Op};

/// Collapses, bottom-up, every table within `range` whose entries are leaves with the same
/// attributes mapping one contiguous, aligned host range, where `allow(gpa, level)` agrees.
///
/// No accessed/dirty bit that hardware sets in a child is lost, and no change another updater
/// makes to a child is undone:
/// - **Shared mode** *takes* the children first, while the parent still points at them: each is
///   swapped with the frozen value, so its final value is known and nothing can change it any
///   more. If a taken child no longer fits, the taken ones are put back and the table stays.
///   Then the parent is replaced by the huge leaf carrying the union of the children's A/D bits.
/// - **Exclusive mode** scans the children with plain loads and replaces the parent by the huge
///   leaf carrying the union of the A/D bits seen (the parent write follows the volatile rule of
///   [`crate::update`]). Hardware may still set A/D in a child until the TLB no longer holds the
///   child table, so when the format's A/D bits are set by hardware the child is not released
///   with the flush obligation right away: it is recorded in a [`Folds`] list, and before the
///   operation returns it issues the flush it owes, re-reads every recorded child (no walker can
///   use it any more) and ORs the bits that appeared into its huge leaf (a fetch-or: hardware may
///   set bits in the huge leaf meanwhile), in the order the collapses happened, so that a bit set
///   in a 4 KiB child reaches the 1 GiB leaf through the 2 MiB one; only then are the children
///   queued for release. The fold is not deferred to the caller's [`crate::PendingFlush`]: the
///   huge leaf's slot is only known to stay valid while this operation holds the tree (a later
///   call may unmap or split it and free its table through another obligation).
pub(crate) fn collapse<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
    allow: impl FnMut(u64, Level) -> bool,
) -> Result<Progress, Error> {
    let mut folds = Folds::new();
    let r = collapse_walk::<F, H, M>(op, range, allow, &mut folds);
    if !folds.is_empty() {
        debug_assert!(!M::SHARED);
        folds.settle(op.fmt, op.host, op.pending);
    }
    r
}

fn collapse_walk<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
    mut allow: impl FnMut(u64, Level) -> bool,
    folds: &mut Folds,
) -> Result<Progress, Error> {
    let fmt = op.fmt;
    let host = op.host;
    let geo = op.geometry();
    let (start, last) = check_range(geo, range)?;
    // Exclusive mode with hardware A/D: the children are re-read after the flush.
    let late_ad = !M::SHARED && fmt.ad_model() == AdModel::Hardware;
    // Level-0 tables hold no tables: the walk does not enter them (each is visited once, as
    // `TablePre`, and scanned by `collapsible`), so their leaves cost no visit each.
    let bottom = Level::from_index(geo.root_level().index().min(1));
    let mut it = op.iter::<M>(start, last, bottom);
    while it.valid() {
        let level = it.level();
        let visit = it.visit();
        // The entry's whole subtree has been visited (or, at the bottom, is not entered).
        let whole = visit == Visit::TablePost || (visit == Visit::TablePre && level == bottom);
        if visit == Visit::Leaf {
            op.charge(1);
        } else if visit == Visit::TablePre && level == bottom {
            // The entries below that lie within the range, as if each were visited.
            let shift = geo.shift(Level::from_index(level.index().saturating_sub(1)));
            let lo = it.gpa().max(start);
            let hi = it.gpa().saturating_add(geo.level_size(level) - 1).min(last);
            op.charge(((hi - lo) >> shift) + 1);
        }
        if whole
            && it.kind() == EntryKind::Table
            && geo.is_leaf_level(level)
            && it.span_in_range(start)
            && allow(it.gpa(), level)
        {
            let child = fmt.table_addr(it.old(), level);
            let child_level = Level::from_index(level.index() - 1);
            if let Some((first, ad)) = collapsible::<F, H, M>(fmt, host, child, level) {
                let done = if M::SHARED {
                    collapse_shared(&mut it, fmt, host, child, level, first, ad)
                } else {
                    collapse_exclusive(&mut it, fmt, child, level, first, ad)
                };
                if done {
                    let n = geo.entries(child_level) as i64;
                    op.delta.leaves[child_level.index()] -= n;
                    op.delta.tables[child_level.index()] -= 1;
                    op.delta.leaves[level.index()] += 1;
                    if late_ad {
                        let slot = slot_pa(fmt, host, op.root, it.gpa(), level);
                        folds.push(host, child, child_level, slot);
                    } else {
                        op.pending.detach(host, child_level, child, geo);
                    }
                    op.pending.flush_table_span(it.gpa(), geo.level_size(level));
                }
            }
        }
        if whole && op.budget == 0 {
            // Out of budget after a whole subtree: stop here. (A table whose children were
            // split across two calls is collapsed by a later call that covers its whole span.)
            let next = it.gpa().wrapping_add(geo.level_size(level));
            if next != 0 && next <= last {
                return Ok(Progress::Yielded {
                    resume: Gpa::new(next),
                });
            }
        }
        it.next();
    }
    Ok(Progress::Done)
}

/// Shared mode: takes the children, then replaces the parent under the iterator (a table at
/// `level` pointing at `child`) by the huge leaf; true if it did. On failure the children are
/// given back and the table stays.
fn collapse_shared<F: PteFormat, H: Host, M: Mode>(
    it: &mut crate::iter::Iter<'_, F, H, M>,
    fmt: &F,
    host: &H,
    child: Hpa,
    level: Level,
    first: u64,
    ad: u64,
) -> bool {
    let Some(ad) = take_children::<F, H, M>(fmt, host, child, level, first, ad) else {
        return false;
    };
    if try_set(it, fmt.make_huge(first, level, ad)).is_ok() {
        return true;
    }
    // The parent changed meanwhile; give the children back.
    let n = fmt.geometry().entries(Level::from_index(level.index() - 1));
    restore::<F, H>(fmt, host, child, level, first, ad, n);
    false
}

/// Exclusive mode: replaces the parent under the iterator (a table at `level` pointing at
/// `child`) by the huge leaf with the A/D bits `ad` seen by the scan. Only hardware can change
/// the parent meanwhile (an accessed bit in a directory entry, where the format has one): the
/// write is then retried. Always true (the tree is held alone).
fn collapse_exclusive<F: PteFormat, H: Host, M: Mode>(
    it: &mut crate::iter::Iter<'_, F, H, M>,
    fmt: &F,
    child: Hpa,
    level: Level,
    first: u64,
    ad: u64,
) -> bool {
    let huge = fmt.make_huge(first, level, ad);
    while try_set(it, huge).is_err() {
        // A volatile bit of the table entry was set; still the same table (exclusive mode).
        debug_assert!(it.kind() == EntryKind::Table && fmt.table_addr(it.old(), level) == child);
        if it.kind() != EntryKind::Table || fmt.table_addr(it.old(), level) != child {
            return false;
        }
    }
    true
}

/// The physical address of the entry at `level` that maps `gpa`, found by descending from `root`
/// (exclusive mode: the path is the iterator's and nothing else changes it).
fn slot_pa<F: PteFormat, H: Host>(fmt: &F, host: &H, root: Hpa, gpa: u64, level: Level) -> u64 {
    let geo = fmt.geometry();
    let mut table = root;
    let mut l = geo.root_level();
    while l > level {
        // SAFETY: `table` is a live table of the tree at `l` (the root, then each step follows a
        // table entry on the iterator's path) and the index is below its entry count.
        let raw = unsafe { EntryPtr::new(host.phys_to_virt(table), geo.index(gpa, l)) }
            .load(F::BYTE_ORDER);
        debug_assert_eq!(fmt.classify(raw, l), EntryKind::Table);
        table = fmt.table_addr(raw, l);
        l = Level::from_index(l.index() - 1);
    }
    table.raw() + (geo.index(gpa, level) * core::mem::size_of::<u64>()) as u64
}

/// Exclusive mode: the child tables replaced by huge leaves during one operation, in the order
/// of their collapse, waiting for the flush before their A/D bits are folded into their huge
/// leaves (see [`collapse`]). The list runs through the detached tables' own metadata, which
/// means nothing else while a table is out of the tree: `link` holds the next record (physical
/// address | level, as the engine's other lists), `count` and `flags` the low and high halves of
/// the physical address of the huge leaf's slot. A table's metadata is reset when it leaves the
/// list.
struct Folds {
    head: u64,
    tail: u64,
}

const NIL: u64 = 0;

fn meta_of<H: Host>(host: &H, pa: u64) -> &TableMeta {
    // SAFETY: every table on the list is allocated (detached, not yet queued for release), so
    // the host keeps its metadata valid (Host contract).
    unsafe { host.meta(Hpa::new(pa)).as_ref() }
}

impl Folds {
    const fn new() -> Self {
        Folds {
            head: NIL,
            tail: NIL,
        }
    }

    fn is_empty(&self) -> bool {
        self.head == NIL
    }

    /// Appends the detached table `child` (at `child_level`) whose huge leaf is at `slot`.
    fn push<H: Host>(&mut self, host: &H, child: Hpa, child_level: Level, slot: u64) {
        let m = meta_of(host, child.raw());
        m.link.store(NIL, Ordering::Relaxed);
        m.count.store(slot as u32, Ordering::Relaxed);
        m.flags.store((slot >> 32) as u32, Ordering::Relaxed);
        // Table pages are at least 256-byte aligned: the low bits carry the level.
        let rec = child.raw() | u64::from(child_level.get());
        if self.tail == NIL {
            self.head = rec;
        } else {
            meta_of(host, self.tail & !0xff)
                .link
                .store(rec, Ordering::Relaxed);
        }
        self.tail = rec;
    }

    /// Issues the flush `pending` owes, then folds every recorded child into its huge leaf, in
    /// order, and queues the children for release in `pending`.
    fn settle<F: PteFormat, H: Host>(&mut self, fmt: &F, host: &H, pending: &mut Pending) {
        let geo = fmt.geometry();
        // After this, no walker uses a recorded child table: hardware sets nothing more in it.
        pending.flush_tlb(host);
        while self.head != NIL {
            let child = self.head & !0xff;
            let child_level = Level::from_index((self.head & 0xff) as usize);
            let level = Level::from_index(child_level.index() + 1);
            let m = meta_of(host, child);
            let slot = u64::from(m.count.load(Ordering::Relaxed))
                | u64::from(m.flags.load(Ordering::Relaxed)) << 32;
            self.head = m.link.load(Ordering::Relaxed);
            m.reset();
            let table = slot & !(geo.table_size(level) as u64 - 1);
            let index = ((slot - table) as usize) / core::mem::size_of::<u64>();
            // SAFETY: the huge leaf's table is allocated: a live table of the tree, or one
            // detached by this operation (a later collapse of it), recorded after this one and
            // released only after it; `index` is below its entry count.
            let ptr = unsafe { EntryPtr::new(host.phys_to_virt(Hpa::new(table)), index) };
            fold::<F, H>(fmt, host, Hpa::new(child), child_level, ptr);
            pending.detach(host, child_level, Hpa::new(child), geo);
        }
        self.tail = NIL;
    }
}

/// ORs into the huge leaf at `ptr` (at `child_level + 1`) the A/D bits that the detached
/// children in `child` hold now and it lacks.
fn fold<F: PteFormat, H: Host>(fmt: &F, host: &H, child: Hpa, child_level: Level, ptr: EntryPtr) {
    let level = Level::from_index(child_level.index() + 1);
    let n = fmt.geometry().entries(child_level);
    let virt = host.phys_to_virt(child);
    // SAFETY: `child` is an allocated table of `n` entries (detached, not yet released).
    let first = unsafe { EntryPtr::new(virt, 0) }.load(F::BYTE_ORDER);
    let mut ad = 0;
    for i in 0..n {
        // SAFETY: as above, `i < n`.
        let raw = unsafe { EntryPtr::new(virt, i) }.load(F::BYTE_ORDER);
        ad |= fmt.ad_bits(raw, child_level);
    }
    let cur = ptr.load(F::BYTE_ORDER);
    debug_assert_eq!(fmt.classify(cur, level), EntryKind::Leaf);
    let want = fmt.ad_bits(fmt.make_huge(first, level, ad), level);
    let missing = want & !cur;
    if missing != 0 {
        or_leaf_bits::<F>(ptr, missing);
    }
}

/// The first child and the union of the A/D bits of the table `child`, if its entries allow it to
/// become one huge leaf at `level` (a scan with plain loads).
fn collapsible<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    child: Hpa,
    level: Level,
) -> Option<(u64, u64)> {
    let geo = fmt.geometry();
    let child_level = Level::from_index(level.index() - 1);
    let virt = host.phys_to_virt(child);
    // SAFETY: `child` is a live table of the tree with at least one entry.
    let first = unsafe { EntryPtr::new(virt, 0) }.load_for(M::SHARED, F::BYTE_ORDER);
    if fmt.classify(first, child_level) != EntryKind::Leaf {
        return None;
    }
    let base = fmt.leaf_addr(first, child_level).raw();
    if base & (geo.level_size(level) - 1) != 0 {
        return None;
    }
    let mut ad = fmt.ad_bits(first, child_level);
    let n = geo.entries(child_level);
    // The pieces of a huge leaf usually differ from the first one, A/D bits aside, only by a
    // constant step in the address field (as `write_leaves` and `fill_split` use): one compare per
    // entry against the linear value, the step being checked with `fits` at the second and the
    // last piece (`base` is aligned to the huge leaf, so the address field never carries).
    let clean = first & !ad;
    let step = fmt.leaf_addr_bits(Hpa::new(geo.level_size(child_level)), child_level);
    let at = |i: usize| clean.wrapping_add((i as u64).wrapping_mul(step));
    if n > 1
        && fits(fmt, at(1), child_level, first, base, 1)
        && fits(fmt, at(n - 1), child_level, first, base, n - 1)
    {
        let mut want = clean;
        for i in 1..n {
            want = want.wrapping_add(step);
            // SAFETY: `i` is below the entry count of the live table `child`.
            let raw = unsafe { EntryPtr::new(virt, i) }.load_for(M::SHARED, F::BYTE_ORDER);
            let bits = fmt.ad_bits(raw, child_level);
            if raw & !bits != want {
                return None;
            }
            debug_assert!(fits(fmt, raw, child_level, first, base, i));
            ad |= bits;
        }
        return Some((first, ad));
    }
    for i in 1..n {
        // SAFETY: `i` is below the entry count of the live table `child`.
        let raw = unsafe { EntryPtr::new(virt, i) }.load_for(M::SHARED, F::BYTE_ORDER);
        if !fits(fmt, raw, child_level, first, base, i) {
            return None;
        }
        ad |= fmt.ad_bits(raw, child_level);
    }
    Some((first, ad))
}

#[inline]
fn fits<F: PteFormat>(fmt: &F, raw: u64, level: Level, first: u64, base: u64, i: usize) -> bool {
    let step = fmt.geometry().level_size(level);
    fmt.classify(raw, level) == EntryKind::Leaf
        && fmt.leaf_addr(raw, level).raw() == base + i as u64 * step
        && fmt.leaf_key(raw, level) == fmt.leaf_key(first, level)
}

/// Shared mode: takes every child of `child` (see [`collapse`]) and checks it still fits;
/// returns the union of the A/D bits of the final values, or `None` (with the taken children put
/// back) if one no longer fits.
fn take_children<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    child: Hpa,
    level: Level,
    first: u64,
    mut ad: u64,
) -> Option<u64> {
    let child_level = Level::from_index(level.index() - 1);
    let n = fmt.geometry().entries(child_level);
    let frozen = fmt.frozen(child_level);
    let base = fmt.leaf_addr(first, child_level).raw();
    let virt = host.phys_to_virt(child);
    for i in 0..n {
        // SAFETY: `i` is below the entry count of the live table `child`.
        let p = unsafe { EntryPtr::new(virt, i) };
        let cur = p.load_for(M::SHARED, F::BYTE_ORDER);
        let volatile = M::SHARED || fmt.volatile_bits(cur, child_level) != 0;
        let v = if volatile {
            take::<F>(p, frozen, true)
        } else {
            cur
        };
        if v == frozen || !fits(fmt, v, child_level, first, base, i) {
            // Put back what was taken: the one that no longer fits exactly (unless another
            // updater owns it), the others as the uniform pieces they were, with the A/D bits
            // seen so far (a superset: nothing is lost).
            if volatile && v != frozen {
                put_back::<F>(p, v);
            }
            restore::<F, H>(fmt, host, child, level, first, ad, i);
            return None;
        }
        ad |= fmt.ad_bits(v, child_level);
    }
    Some(ad)
}

/// Writes the first `n` children of `child` back as the pieces of the huge leaf that `first`
/// and `ad` describe, where they hold the frozen value (taken by [`take_children`]).
fn restore<F: PteFormat, H: Host>(
    fmt: &F,
    host: &H,
    child: Hpa,
    level: Level,
    first: u64,
    ad: u64,
    n: usize,
) {
    let child_level = Level::from_index(level.index() - 1);
    let frozen = fmt.frozen(child_level);
    let huge = fmt.make_huge(first, level, ad);
    let virt = host.phys_to_virt(child);
    for i in 0..n {
        // SAFETY: `i` is below the entry count of the live table `child`.
        let p = unsafe { EntryPtr::new(virt, i) };
        if p.load(F::BYTE_ORDER) == frozen {
            put_back::<F>(p, fmt.split_child(huge, level, i));
        }
    }
}
