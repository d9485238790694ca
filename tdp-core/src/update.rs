//! The one writer: every change the engine makes to an entry of a live tree goes through this
//! module, in either lock mode, run loops included.
//!
//! Rules written once here and relied on by every operation (referenced by name elsewhere):
//! - **Counts.** A table's [`crate::host::TableMeta`] count is the number of its entries that are
//!   not the level's empty value, and `others` the number of those that are neither leaves nor
//!   tables. They change only here, with plain stores in exclusive mode and atomic adds in shared
//!   mode, so they are exact once the updaters are done. Exclusive mode frees a table when its
//!   count reaches zero; shared mode never trusts a count alone (see *Removal*).
//! - **Shared mode.** Every change is a compare-exchange against the walker's snapshot. On
//!   failure the snapshot is refreshed and the caller retries at the same position (or reports a
//!   retry). A [`crate::format::EntryKind::Frozen`] entry belongs to another updater: it is never
//!   overwritten, never taken for "already mapped"; the walker restarts from the root there.
//! - **Volatile bits** (exclusive mode). If the format says hardware may set bits in the old entry
//!   (`PteFormat::volatile_bits`), the entry is replaced with a compare-exchange, so a bit set by
//!   hardware in between is never lost; otherwise a plain store (a locked read-modify-write costs
//!   ~40x a store).
//! - **Break-before-make.** If the format says the replacement of a valid entry needs it
//!   (`PteFormat::needs_break`), the entry is first set to the level's *frozen* value (so no other
//!   updater can fill the slot during the break), the TLB is invalidated for its span at once,
//!   and only then is the new value written.
//! - **Removal.** A table leaves the tree by replacing its parent entry first (compare-exchange
//!   in shared mode); then [`remove_table`] accounts for what it held. In shared mode every entry
//!   of the removed table is frozen with an atomic swap (waiting out a break-before-make in
//!   progress), the state found (leaves, their A/D bits, deeper tables) is accounted, and deeper
//!   tables are removed the same way (KVM's `handle_removed_pt`); the table is freed only after
//!   the flush and a grace period.

use crate::addr::{Gpa, Hpa, Level};
use crate::entry::EntryPtr;
use crate::flush::{Delta, Pending};
use crate::format::{EntryKind, PteFormat};
use crate::host::{Host, TableMeta, TlbFlush};
use crate::iter::Iter;
use crate::mode::Mode;
use crate::sync::{spin_hint, Ordering};

/// The entry changed under the walker (another updater, or hardware setting a volatile bit); the
/// walker's snapshot holds the value found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Changed;

/// Fills the table at `pa` with the empty value of `level` and resets its metadata.
///
/// # Safety
/// `pa` is an allocated table of `level`'s size that no walker can reach yet.
pub(crate) unsafe fn fill_table<F: PteFormat, H: Host + ?Sized>(
    fmt: &F,
    host: &H,
    pa: Hpa,
    level: Level,
) {
    let virt = host.phys_to_virt(pa);
    let n = fmt.geometry().entries(level);
    // SAFETY: slot 0 of an allocated table; its `n` entries are unreachable by anything else
    // until the caller links the table (caller contract).
    unsafe { EntryPtr::new(virt, 0).fill_unlinked(n, fmt.empty(level), 0, F::BYTE_ORDER) };
    // SAFETY: `pa` is allocated, so the host keeps its metadata valid.
    unsafe { host.meta(pa).as_ref() }.reset();
}

/// Adds `delta` to a table's count (atomically in shared mode).
#[inline(always)]
pub(crate) fn count_add<M: Mode>(meta: &TableMeta, delta: i64) {
    if delta == 0 {
        return;
    }
    if M::SHARED {
        // May dip below zero for a moment: an updater that removes an entry another one installed
        // can apply its -1 before the installer's +1 lands. The sum is exact once both are done.
        meta.count.fetch_add(delta as u32, Ordering::Relaxed);
    } else {
        let c = meta.count.load(Ordering::Relaxed);
        debug_assert!(i64::from(c) + delta >= 0, "table count below zero");
        meta.count
            .store((i64::from(c) + delta) as u32, Ordering::Relaxed);
    }
}

/// Adds `delta` to a table's count of entries that are neither leaves nor tables.
#[inline]
fn others_add<M: Mode>(meta: &TableMeta, delta: i64) {
    if delta == 0 {
        return;
    }
    if M::SHARED {
        // As for `count_add`: transiently off, exact once the updaters are done.
        meta.flags.fetch_add(delta as u32, Ordering::Relaxed);
    } else {
        let f = meta.flags.load(Ordering::Relaxed);
        debug_assert!(
            i64::from(f & 0xffff) + delta >= 0,
            "others count below zero"
        );
        meta.flags
            .store((i64::from(f) + delta) as u32, Ordering::Relaxed);
    }
}

#[inline(always)]
fn is_other(k: EntryKind) -> bool {
    matches!(k, EntryKind::Other | EntryKind::Frozen)
}

/// Replaces the entry under the iterator (whose snapshot is `it.old()`) by `new`, following the
/// rules of the module documentation (mode, volatile bits, break-before-make, counts).
///
/// # Errors
/// [`Changed`], with the snapshot refreshed, if the entry no longer holds the snapshot (shared
/// mode: another updater; either mode: hardware set a volatile bit), or if the snapshot is a
/// frozen entry (another updater owns it).
#[inline]
pub(crate) fn try_set<F: PteFormat, H: Host, M: Mode>(
    it: &mut Iter<'_, F, H, M>,
    new: u64,
) -> Result<(), Changed> {
    let fmt = it.fmt;
    let level = it.level();
    let old = it.old();
    let old_kind = it.kind();
    let ptr = it.ptr();
    let order = F::BYTE_ORDER;
    if old_kind == EntryKind::Frozen {
        debug_assert!(M::SHARED, "a frozen entry in a tree held exclusively");
        return Err(Changed);
    }
    let atomic = M::SHARED || fmt.volatile_bits(old, level) != 0;
    let valid = matches!(old_kind, EntryKind::Leaf | EntryKind::Table);
    if valid && fmt.needs_break(old, new, level) {
        let frozen = fmt.frozen(level);
        if atomic {
            if let Err(now) = ptr.compare_exchange(old, frozen, order) {
                it.set_snapshot(now);
                return Err(Changed);
            }
        } else {
            ptr.store(frozen, order);
        }
        let size = it.geometry().level_size(level);
        let was_table = old_kind == EntryKind::Table;
        it.host.flush_tlb(TlbFlush::Range {
            start: Gpa::new(it.gpa()),
            size,
            level: (!was_table).then_some(level),
            tables: was_table,
        });
        ptr.store(new, order);
    } else if atomic {
        if let Err(now) = ptr.compare_exchange(old, new, order) {
            it.set_snapshot(now);
            return Err(Changed);
        }
    } else {
        ptr.store(new, order);
    }
    let empty = fmt.empty(level);
    it.set_snapshot(new);
    let new_kind = it.kind();
    let meta = it.table_meta();
    count_add::<M>(meta, i64::from(new != empty) - i64::from(old != empty));
    if is_other(old_kind) || is_other(new_kind) {
        others_add::<M>(
            meta,
            i64::from(is_other(new_kind)) - i64::from(is_other(old_kind)),
        );
    }
    Ok(())
}

/// Changes the leaf at `ptr` (currently `cur`) in place to `f(cur)`, keeping any bit hardware
/// sets meanwhile. Only permission, A/D and software bits may change this way (never a
/// break-before-make change). In shared mode every change is a compare-exchange.
///
/// # Errors
/// The value found if the entry stopped being a leaf meanwhile (shared mode: another updater
/// zapped, split or froze it); nothing is written then.
#[inline(always)]
pub(crate) fn update_leaf<F: PteFormat, M: Mode>(
    fmt: &F,
    ptr: EntryPtr,
    mut cur: u64,
    level: Level,
    f: impl Fn(u64) -> u64,
) -> Result<u64, u64> {
    loop {
        let new = f(cur);
        debug_assert!(!fmt.needs_break(cur, new, level));
        if !M::SHARED && fmt.volatile_bits(cur, level) == 0 {
            ptr.store(new, F::BYTE_ORDER);
            return Ok(new);
        }
        match ptr.compare_exchange(cur, new, F::BYTE_ORDER) {
            Ok(_) => return Ok(new),
            Err(now) => {
                if fmt.classify(now, level) != EntryKind::Leaf {
                    return Err(now);
                }
                cur = now;
            }
        }
    }
}

/// Changes the leaf at `ptr` (currently `cur`) in place to `new`, which the caller computed for
/// `cur` (possibly once for a run of leaves with equal non-address bits, see `ops::protect`), and
/// `atomic` = `M::SHARED || fmt.volatile_bits(cur, level) != 0`, likewise decided by the caller.
/// As [`update_leaf`] otherwise: a plain store when not atomic, else a compare-exchange against
/// `cur`; if the entry changed but is still a leaf, `f(now)` is written in its place, again with
/// a compare-exchange. Only permission, A/D and software bits may change this way.
///
/// # Errors
/// The value found if the entry stopped being a leaf meanwhile; nothing is written then.
#[inline(always)]
pub(crate) fn update_leaf_to<F: PteFormat, M: Mode>(
    fmt: &F,
    ptr: EntryPtr,
    cur: u64,
    new: u64,
    atomic: bool,
    level: Level,
    f: impl Fn(u64) -> u64,
) -> Result<u64, u64> {
    debug_assert!(!fmt.needs_break(cur, new, level));
    debug_assert_eq!(atomic, M::SHARED || fmt.volatile_bits(cur, level) != 0);
    if !atomic {
        ptr.store(new, F::BYTE_ORDER);
        return Ok(new);
    }
    match ptr.compare_exchange(cur, new, F::BYTE_ORDER) {
        Ok(_) => Ok(new),
        Err(now) if fmt.classify(now, level) == EntryKind::Leaf => {
            // Hardware set a volatile bit, or (shared mode) another updater changed the leaf:
            // the general path, from the value found (always a compare-exchange from here).
            update_leaf::<F, crate::mode::Shared>(fmt, ptr, now, level, f)
        }
        Err(now) => Err(now),
    }
}

/// Writes up to `n` consecutive leaves at `level` mapping `hpa`, `hpa + size`, ... starting at
/// `ptr`, into slots the caller saw empty. Exclusive mode writes all `n` with plain stores;
/// shared mode installs each with a compare-exchange from the empty value and stops at the first
/// slot another updater filled. Returns how many were written; the caller accounts for them.
/// Uses the leaf encoding's linearity (`leaf(i) = leaf(0) + i * step`) when it holds over the whole
/// run, which is checked at its ends; else encodes each leaf.
///
/// # Safety
/// The `n` slots from `ptr` are inside one live table.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn write_leaves<F: PteFormat, M: Mode>(
    fmt: &F,
    ptr: EntryPtr,
    n: usize,
    level: Level,
    hpa: u64,
    attrs: &crate::format::Attrs,
    young_dirty: bool,
) -> usize {
    let size = fmt.geometry().level_size(level);
    let empty = fmt.empty(level);
    let leaf0 = fmt.make_leaf(Hpa::new(hpa), level, attrs, young_dirty);
    let put = |p: EntryPtr, v: u64| -> bool {
        if M::SHARED {
            p.compare_exchange(empty, v, F::BYTE_ORDER).is_ok()
        } else {
            p.store_relaxed(v, F::BYTE_ORDER);
            true
        }
    };
    if n == 1 {
        return usize::from(put(ptr, leaf0));
    }
    let step = fmt
        .make_leaf(Hpa::new(hpa + size), level, attrs, young_dirty)
        .wrapping_sub(leaf0);
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
        if !put(unsafe { ptr.offset(i) }, leaf) {
            return i;
        }
    }
    n
}

/// Installs `leaf` in the empty slot `ptr` at `level` (a single-entry map): a compare-exchange
/// from the empty value in shared mode, a plain store in exclusive mode (an empty entry has no
/// bits hardware may set). Returns false, with nothing changed, if another updater filled or froze
/// the slot first (shared mode). The caller updates the table's count.
///
/// # Safety
/// `ptr` is a slot of a live table of `level`; in exclusive mode it holds the empty value.
#[inline(always)]
pub(crate) unsafe fn install_leaf<F: PteFormat, M: Mode>(
    fmt: &F,
    ptr: EntryPtr,
    level: Level,
    leaf: u64,
) -> bool {
    if M::SHARED {
        ptr.compare_exchange(fmt.empty(level), leaf, F::BYTE_ORDER)
            .is_ok()
    } else {
        ptr.store_relaxed(leaf, F::BYTE_ORDER);
        true
    }
}

/// Links the unlinked, complete table chain `entry` into the empty slot `ptr` at `level` (a
/// single-entry map that adds tables): a compare-exchange from the empty value in shared mode, a
/// release store in exclusive mode, so that a walker (hardware included) that sees the entry sees
/// the tables' contents. Returns false, nothing changed, if another updater filled or froze the
/// slot first (shared mode). The caller updates the table's count.
///
/// # Safety
/// `ptr` is a slot of a live table of `level`; in exclusive mode it holds the empty value.
#[inline(always)]
pub(crate) unsafe fn link_table<F: PteFormat, M: Mode>(
    fmt: &F,
    ptr: EntryPtr,
    level: Level,
    entry: u64,
) -> bool {
    if M::SHARED {
        ptr.compare_exchange(fmt.empty(level), entry, F::BYTE_ORDER)
            .is_ok()
    } else {
        ptr.store(entry, F::BYTE_ORDER);
        true
    }
}

/// Makes the slot `ptr` at `level`, which held the leaf `old` when it was read, empty (a
/// single-entry unmap): a compare-exchange against `old` in shared mode (false, nothing changed,
/// if it changed meanwhile), a plain store in exclusive mode, as [`zap_run`] does (the leaf is
/// dropped whole, so an accessed/dirty bit hardware sets meanwhile has nothing to be kept in).
/// The caller updates the table's count.
///
/// # Safety
/// `ptr` is a slot of a live table of `level`.
#[inline(always)]
pub(crate) unsafe fn zap_leaf<F: PteFormat, M: Mode>(
    fmt: &F,
    ptr: EntryPtr,
    level: Level,
    old: u64,
) -> bool {
    let empty = fmt.empty(level);
    if M::SHARED {
        ptr.compare_exchange(old, empty, F::BYTE_ORDER).is_ok()
    } else {
        ptr.store(empty, F::BYTE_ORDER);
        true
    }
}

/// Exclusive mode: makes the table entry `ptr` at `level` empty, unlinking a table that became
/// empty (a single-entry unmap of its last leaf). A plain store: the table below is dropped whole,
/// so an accessed bit hardware sets in the entry meanwhile has nothing to be kept in, and no other
/// updater exists. The caller updates the counts, owes a flush with the walk caches, and releases
/// the table only after it.
///
/// # Safety
/// `ptr` is a slot of a live table of `level` that links a table; the caller holds the tree alone.
#[inline]
pub(crate) unsafe fn unlink_table<F: PteFormat>(fmt: &F, ptr: EntryPtr, level: Level) {
    ptr.store(fmt.empty(level), F::BYTE_ORDER);
}

/// Writes `n` consecutive leaves into a fresh table no walker can reach yet (plain stores).
///
/// # Safety
/// The `n` slots from `ptr` are inside one allocated, unlinked table.
#[inline]
pub(crate) unsafe fn fill_leaves<F: PteFormat>(
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
    let last = (n.max(1) - 1) as u64;
    let step = if n > 1 {
        fmt.make_leaf(Hpa::new(hpa + size), level, attrs, young_dirty)
            .wrapping_sub(leaf0)
    } else {
        0
    };
    let linear = fmt.make_leaf(Hpa::new(hpa + last * size), level, attrs, young_dirty)
        == leaf0.wrapping_add(last.wrapping_mul(step));
    if linear {
        // SAFETY: the `n` slots are inside one unlinked table the caller owns.
        unsafe { ptr.fill_unlinked(n, leaf0, step, F::BYTE_ORDER) };
        return;
    }
    // SAFETY: an unlinked table is exclusively ours: the exclusive writer's plain stores apply.
    let written = unsafe {
        write_leaves::<F, crate::mode::Exclusive>(fmt, ptr, n, level, hpa, attrs, young_dirty)
    };
    debug_assert_eq!(written, n);
}

/// Takes the entry at `ptr`: replaces it by `with` and returns what it held, atomically when
/// `atomic` (another updater or hardware may change it), else with a load and a store. The
/// taker owns the slot until it writes it again with [`put_back`] (collapse, removal, teardown).
#[inline(always)]
pub(crate) fn take<F: PteFormat>(ptr: EntryPtr, with: u64, atomic: bool) -> u64 {
    if atomic {
        ptr.swap(with, F::BYTE_ORDER)
    } else {
        let v = ptr.load(F::BYTE_ORDER);
        ptr.store(with, F::BYTE_ORDER);
        v
    }
}

/// ORs `bits` into the leaf at `ptr` with an atomic fetch-or, keeping every bit hardware sets
/// in it at the same time (collapse folds in the accessed/dirty bits hardware set in the children
/// of a huge leaf after they were scanned; see `ops::collapse`). Only A/D bits are added this
/// way: the entry stays the same leaf, so no count changes and no break-before-make is needed.
#[inline]
pub(crate) fn or_leaf_bits<F: PteFormat>(ptr: EntryPtr, bits: u64) {
    ptr.fetch_or(bits, F::BYTE_ORDER);
}

/// Writes `v` into a slot the caller took with [`take`] (no other updater writes a taken slot).
#[inline(always)]
pub(crate) fn put_back<F: PteFormat>(ptr: EntryPtr, v: u64) {
    ptr.store(v, F::BYTE_ORDER);
}

/// What a zap of a run of entries did.
pub(crate) struct ZapRun {
    /// Entries passed (zapped or already empty), from the run's first.
    pub(crate) passed: usize,
    /// Entries made empty.
    pub(crate) zapped: i64,
    /// Leaves among them.
    pub(crate) leaves: i64,
    /// Other (non-leaf, non-table) entries among them.
    pub(crate) others: i64,
}

/// Zaps the run of up to `n` entries at `level` from `ptr` (leaves, empty slots and other
/// non-table entries), stopping before a table or (shared mode) a frozen entry. Counts are
/// updated in `meta`.
///
/// # Safety
/// The `n` slots from `ptr` are inside the live table whose metadata is `meta`.
#[inline]
pub(crate) unsafe fn zap_run<F: PteFormat, M: Mode>(
    fmt: &F,
    ptr: EntryPtr,
    n: usize,
    level: Level,
    meta: &TableMeta,
) -> ZapRun {
    let empty = fmt.empty(level);
    let mut r = ZapRun {
        passed: 0,
        zapped: 0,
        leaves: 0,
        others: 0,
    };
    'run: while r.passed < n {
        // SAFETY: `passed < n`: inside the current table (caller contract).
        let p = unsafe { ptr.offset(r.passed) };
        let mut cur = p.load_for(M::SHARED, F::BYTE_ORDER);
        loop {
            if cur == empty {
                break;
            }
            let kind = fmt.classify(cur, level);
            match kind {
                EntryKind::Table => break 'run,
                EntryKind::Frozen if M::SHARED => break 'run,
                _ => {}
            }
            if M::SHARED {
                if let Err(now) = p.compare_exchange(cur, empty, F::BYTE_ORDER) {
                    cur = now;
                    continue;
                }
            } else {
                p.store(empty, F::BYTE_ORDER);
            }
            r.zapped += 1;
            r.leaves += i64::from(kind == EntryKind::Leaf);
            r.others += i64::from(is_other(kind));
            break;
        }
        r.passed += 1;
    }
    count_add::<M>(meta, -r.zapped);
    others_add::<M>(meta, -r.others);
    r
}

/// Accounts for, and queues for freeing, the table `child` at `child_level` whose parent entry
/// was just replaced (see *Removal* in the module documentation). With `want_ad`, returns the
/// union of the A/D bits (`PteFormat::ad_bits`) of the leaves it held directly, taken atomically
/// so that none set by hardware before the entries were taken is missed (collapse).
pub(crate) fn remove_table<F: PteFormat, H: Host + ?Sized, M: Mode>(
    fmt: &F,
    host: &H,
    child: Hpa,
    child_level: Level,
    want_ad: bool,
    pending: &mut Pending,
    delta: &mut Delta,
) -> u64 {
    if !M::SHARED && !want_ad {
        remove_subtree_exclusive(fmt, host, child, child_level, pending, delta);
        return 0;
    }
    let geo = fmt.geometry();
    let virt = host.phys_to_virt(child);
    let n = geo.entries(child_level);
    let mut ad = 0;
    let frozen = fmt.frozen(child_level);
    let empty = fmt.empty(child_level);
    for i in 0..n {
        // SAFETY: `i` is below the entry count of the table `child`, which is still allocated.
        let p = unsafe { EntryPtr::new(virt, i) };
        let old = if M::SHARED {
            // Take the entry: an updater that reads it from now on sees it frozen and retries.
            // A break-before-make in progress writes its new value after its flush: wait for
            // it, so that what it installs is accounted here.
            loop {
                let old = p.swap(frozen, F::BYTE_ORDER);
                if old != frozen {
                    break old;
                }
                spin_hint();
            }
        } else if want_ad && fmt.ad_model() == crate::format::AdModel::Hardware {
            // Hardware may still set A/D until the entry is taken: take it atomically so the
            // bits are seen; once empty, hardware sets nothing more in it.
            p.swap(empty, F::BYTE_ORDER)
        } else {
            p.load(F::BYTE_ORDER)
        };
        if old == empty {
            continue;
        }
        match fmt.classify(old, child_level) {
            EntryKind::Leaf => {
                delta.leaves[child_level.index()] -= 1;
                ad |= fmt.ad_bits(old, child_level);
            }
            EntryKind::Table => {
                let grandchild = fmt.table_addr(old, child_level);
                let gl = Level::from_index(child_level.index() - 1);
                remove_table::<F, H, M>(fmt, host, grandchild, gl, false, pending, delta);
            }
            _ => {}
        }
    }
    pending.detach(host, child_level, child, geo);
    delta.tables[child_level.index()] -= 1;
    ad
}

/// [`remove_table`] in exclusive mode with no A/D wanted: the whole subtree below the removed
/// parent entry is accounted and queued in one pass, with no entry written (nothing else can
/// reach the detached tables, and they are freed as they are). Every table's count says how many
/// of its entries are not empty, so the scan of a table stops after its last such entry; a leaf
/// table is never scanned (its counts say how many leaves it held), and the leaf tables under a
/// level-1 table are accounted and queued in its own loop, with no call per leaf table.
fn remove_subtree_exclusive<F: PteFormat, H: Host + ?Sized>(
    fmt: &F,
    host: &H,
    child: Hpa,
    child_level: Level,
    pending: &mut Pending,
    delta: &mut Delta,
) {
    let geo = fmt.geometry();
    // SAFETY: `child` was a live table of this tree and is not freed before the flush (it is
    // queued below), so its metadata is valid.
    let meta = unsafe { host.meta(child).as_ref() };
    if child_level == Level::LEAF {
        delta.leaves[0] -= i64::from(meta.count()) - i64::from(meta.others());
    } else {
        let virt = host.phys_to_virt(child);
        let empty = fmt.empty(child_level);
        let n = geo.entries(child_level);
        let below = Level::from_index(child_level.index() - 1);
        let mut left = meta.count();
        let mut i = 0;
        let (mut leaves, mut leaves_below, mut tables_below) = (0i64, 0i64, 0i64);
        while left > 0 && i < n {
            // SAFETY: `i < n`, the entry count of the table `child`, which is still allocated.
            let old = unsafe { EntryPtr::new(virt, i) }.load(F::BYTE_ORDER);
            i += 1;
            if old == empty {
                continue;
            }
            left -= 1;
            match fmt.classify(old, child_level) {
                EntryKind::Leaf => leaves += 1,
                EntryKind::Table if below == Level::LEAF => {
                    let leaf_table = fmt.table_addr(old, child_level);
                    // SAFETY: a table of this tree (reached through its entry), still allocated.
                    let m = unsafe { host.meta(leaf_table).as_ref() };
                    leaves_below += i64::from(m.count()) - i64::from(m.others());
                    tables_below += 1;
                    pending.detach(host, Level::LEAF, leaf_table, geo);
                }
                EntryKind::Table => {
                    let table = fmt.table_addr(old, child_level);
                    remove_subtree_exclusive(fmt, host, table, below, pending, delta);
                }
                _ => {}
            }
        }
        delta.leaves[child_level.index()] -= leaves;
        delta.leaves[0] -= leaves_below;
        delta.tables[0] -= tables_below;
    }
    pending.detach(host, child_level, child, geo);
    delta.tables[child_level.index()] -= 1;
}
