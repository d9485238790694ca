//! map: install leaves (and the tables they need) over empty entries.

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::format::{Attrs, EntryKind, PteFormat};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::Host;
use crate::iter::Visit;
use crate::mode::Mode;
use crate::table::MapOptions;
use crate::tree::Progress;
use crate::update::{count_add, fill_leaves, fill_table, try_set, write_leaves};

use super::{check_range, chunk_last, chunk_span, frozen_restart, zap, Op};

/// Why a map walk stopped before the end of its range.
enum Stop {
    /// A mapped (or otherwise non-empty) entry at this address.
    Conflict(u64),
    /// An entry stayed frozen (shared mode).
    Retry(u64),
    /// No table could be had, at this address.
    OutOfMemory(usize, u64),
    /// The budget ran out; resume here.
    Budget(u64),
}

/// Maps `range` to the host range at `hpa`. See `Table::map_with`.
pub(crate) fn map<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
    hpa: Hpa,
    attrs: Attrs,
    opts: MapOptions,
) -> Result<Progress, Error> {
    let geo = op.geometry();
    let (start, last) = check_range(geo, range)?;
    let page = geo.page_size();
    if !hpa.is_aligned(page) {
        return Err(Error::UnalignedHpa { hpa, align: page });
    }
    let hpa_last = hpa.checked_add(range.size() - 1).ok_or(Error::HpaTooWide {
        hpa,
        bits: geo.oa_bits(),
    })?;
    if hpa_last.raw() >> geo.oa_bits() != 0 {
        return Err(Error::HpaTooWide {
            hpa: hpa_last,
            bits: geo.oa_bits(),
        });
    }
    let max_level = match opts.max_level {
        Some(l) if geo.is_leaf_level(l) => l,
        Some(l) => return Err(Error::InvalidLevel { level: l }),
        None => geo.root_level(),
    };
    op.fmt.check_attrs(&attrs)?;

    let mut leaf_ok = [false; MAX_LEVELS];
    for (l, ok) in leaf_ok.iter_mut().enumerate().take(geo.levels() as usize) {
        let level = Level::from_index(l);
        *ok = geo.is_leaf_level(level)
            && level <= max_level
            && (hpa.raw() ^ start) & (geo.level_size(level) - 1) == 0;
    }

    let cached_before = op.cache.lens();
    // Tables for the first chunk are reserved before anything changes; later chunks are
    // reserved when the reserve runs dry, so a huge range never reserves every table up front.
    let span = chunk_span(geo);
    let stop = match op.reserve(&map_bound(
        geo,
        start,
        chunk_last(start, last, span),
        &leaf_ok,
    )) {
        // Nothing changed yet: no undo.
        Err(Error::OutOfMemory { size }) => return Err(Error::OutOfMemory { size }),
        _ => {
            // Once per call for its whole host range, before any entry mapping it is valid.
            op.cache_maintenance(hpa.raw(), range.size(), &attrs);
            map_walk::<F, H, M>(op, start, last, hpa.raw(), &attrs, &leaf_ok, opts).err()
        }
    };
    let (undo_end, err) = match stop {
        None => return Ok(Progress::Done),
        Some(Stop::Budget(resume)) => {
            return Ok(Progress::Yielded {
                resume: Gpa::new(resume),
            })
        }
        Some(Stop::Conflict(at)) => (at, Error::AlreadyMapped { gpa: Gpa::new(at) }),
        Some(Stop::Retry(at)) => (at, Error::Retry { gpa: Gpa::new(at) }),
        // The page at `at` is unmapped (its entry was empty), but tables may already have been
        // added on its path: undo through it too.
        Some(Stop::OutOfMemory(size, at)) => (at + page, Error::OutOfMemory { size }),
    };
    // Undo: everything in [start, undo_end) was empty before this call and was filled by it.
    if undo_end > start {
        if M::SHARED {
            // Another updater may have unmapped and remapped part of it meanwhile: take back only
            // the leaves this call wrote.
            undo_shared::<F, H, M>(op, start, undo_end - 1, hpa.raw(), &attrs);
        } else {
            let _ = zap::zap_walk::<F, H, M>(op, start, undo_end - 1, u64::MAX);
        }
    }
    // Give back what this call reserved, so the host sees the memory it saw before (once the
    // undo's tables are released by the caller's flush).
    let keep = core::array::from_fn(|l| cached_before[l]);
    op.cache.trim_to(op.host, &keep);
    Err(err)
}

/// Shared-mode undo of a refused map of `[start, last]` to `hpa`: every leaf that still maps the
/// address and attributes this call gave it is made empty again (with compare-exchange, so a
/// leaf another updater wrote meanwhile is left alone; one with the very same address and
/// attributes cannot be told apart). Tables this call added stay (empty ones are freed by a later
/// exclusive unmap).
fn undo_shared<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    start: u64,
    last: u64,
    hpa: u64,
    attrs: &Attrs,
) {
    let fmt = op.fmt;
    let mut it = op.iter::<M>(start, last, Level::LEAF);
    it.without_post();
    while it.valid() {
        if it.visit() == Visit::Leaf && it.kind() == EntryKind::Leaf && it.span_in_range(start) {
            let level = it.level();
            let ours = fmt.make_leaf(Hpa::new(hpa + (it.gpa() - start)), level, attrs, false);
            let cur = it.old();
            if fmt.leaf_addr(cur, level) == fmt.leaf_addr(ours, level)
                && fmt.leaf_key(cur, level) == fmt.leaf_key(ours, level)
            {
                if try_set(&mut it, fmt.empty(level)).is_err() {
                    continue; // changed meanwhile: look again
                }
                op.delta.leaves[level.index()] -= 1;
                let size = it.geometry().level_size(level);
                op.pending.flush_span(it.gpa(), size, level);
            }
        }
        it.next();
    }
}

/// Maps `[start, last]` to the host range at `hpa`. Not inlined, so that the one-page path of
/// `map` keeps a small frame.
#[inline(never)]
fn map_walk<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    start: u64,
    last: u64,
    hpa: u64,
    attrs: &Attrs,
    leaf_ok: &[bool; MAX_LEVELS],
    opts: MapOptions,
) -> Result<(), Stop> {
    let fmt = op.fmt;
    let host = op.host;
    let caches_empty = fmt.caches_empty_entries();
    let mut restarts = 0;
    let span = chunk_span(op.geometry());
    let mut it = op.iter::<M>(start, last, Level::LEAF);
    it.without_post();
    while it.valid() {
        if it.visit() == Visit::TablePre && leaf_ok[it.level().index()] && it.span_in_range(start) {
            // An empty table where a huge leaf fits (left by a shared-mode unmap): the leaf
            // replaces it, as KVM's fault does, rather than 512 small leaves.
            let out = hpa + (it.gpa() - start);
            if replace_empty_table::<F, H, M>(op, &mut it, out, attrs, opts)? {
                it.next();
                continue;
            }
            if it.visit() != Visit::TablePre {
                continue; // changed meanwhile: look again
            }
        }
        if it.visit() == Visit::Leaf {
            let level = it.level();
            match it.kind() {
                EntryKind::Empty => {
                    let size = it.geometry().level_size(level);
                    if leaf_ok[level.index()] && it.span_in_range(start) {
                        // A run of empty slots takes consecutive leaves in one tight loop.
                        let empty = fmt.empty(level);
                        let run = it.run_len();
                        let mut n = 0;
                        if !M::SHARED && it.table_meta().count() == 0 {
                            // Exclusive mode: the count is exact, and zero means every entry of
                            // the table is empty (a table this call just added): no scan.
                            n = run;
                        }
                        // SAFETY: `n < run`: inside the current table.
                        while n < run && unsafe { it.ptr_at(n) }.load(F::BYTE_ORDER) == empty {
                            n += 1;
                        }
                        let out = hpa + (it.gpa() - start);
                        // SAFETY: the `n` slots are slots of the current table.
                        let written = unsafe {
                            write_leaves::<F, M>(
                                fmt,
                                it.ptr(),
                                n,
                                level,
                                out,
                                attrs,
                                opts.young_dirty,
                            )
                        };
                        count_add::<M>(it.table_meta(), written as i64);
                        op.delta.leaves[level.index()] += written as i64;
                        if caches_empty && written > 0 {
                            // What a walker cached for these empty slots may be smaller invalid
                            // entries (loaded through invalid tables): no level hint.
                            if level == Level::LEAF {
                                op.pending
                                    .flush_span(it.gpa(), written as u64 * size, level);
                            } else {
                                op.pending
                                    .flush_span_any_level(it.gpa(), written as u64 * size);
                            }
                        }
                        op.charge(written as u64);
                        if written < n || n == 0 {
                            // Shared mode: another updater filled the next slot; look at it.
                            it.skip(written);
                            continue;
                        }
                        it.skip(n.saturating_sub(1));
                    } else {
                        // Level 0 always takes a leaf, so `level` is above it here.
                        let child_level = Level::from_index(level.index() - 1);
                        if op.cache.lens()[child_level.index()] == 0 {
                            // The reserve ran dry: reserve the next chunk from here.
                            let pos = it.gpa().max(start);
                            let bound =
                                map_bound(it.geometry(), pos, chunk_last(pos, last, span), leaf_ok);
                            if let Err(Error::OutOfMemory { size }) = op.reserve(&bound) {
                                return Err(Stop::OutOfMemory(size, pos));
                            }
                        }
                        let child = op.take_table(child_level).map_err(|_| {
                            Stop::OutOfMemory(
                                op.geometry().table_size(child_level),
                                it.gpa().max(start),
                            )
                        })?;
                        let prefill = leaf_ok[child_level.index()] && it.span_in_range(start);
                        let entries = it.geometry().entries(child_level);
                        if prefill {
                            // The whole child table maps leaves: write them before linking it,
                            // and do not walk them again.
                            let virt = host.phys_to_virt(child);
                            let out = hpa + (it.gpa() - start);
                            // SAFETY: `child` is a table of `child_level`'s size, owned by this
                            // operation and not yet reachable by any walker.
                            unsafe {
                                fill_leaves(
                                    fmt,
                                    crate::entry::EntryPtr::new(virt, 0),
                                    entries,
                                    child_level,
                                    out,
                                    attrs,
                                    opts.young_dirty,
                                );
                                host.meta(child).as_ref()
                            }
                            .count
                            .store(entries as u32, crate::sync::Ordering::Relaxed);
                        } else {
                            // SAFETY: `child` is a table of `child_level`'s size, unlinked.
                            unsafe { fill_table(fmt, host, child, child_level) };
                        }
                        if try_set(&mut it, fmt.make_table(child, level)).is_err() {
                            // Shared mode: another updater filled the slot first. The table
                            // goes back to the reserve; look at what is there now.
                            op.cache.push(host, child_level, child);
                            continue;
                        }
                        op.delta.tables[child_level.index()] += 1;
                        if prefill {
                            it.skip_children();
                            op.delta.leaves[child_level.index()] += entries as i64;
                            op.charge(entries as u64);
                        }
                        if caches_empty {
                            // A walker may have cached the empty entry; address fences may cover
                            // only leaves, so flush as for a table change.
                            op.pending.flush_table_span(it.gpa(), size);
                        }
                    }
                }
                EntryKind::Frozen if M::SHARED => {
                    frozen_restart(&mut it, &mut restarts, start)
                        .map_err(|_| Stop::Retry(it.gpa().max(start)))?;
                    continue;
                }
                _ => return Err(Stop::Conflict(it.gpa().max(start))),
            }
            if op.budget == 0 && it.gpa() < last {
                // Stop after this entry; the chunk loop reports where to resume.
                let next = it.gpa() + it.geometry().level_size(it.level());
                if next <= last {
                    return Err(Stop::Budget(next));
                }
            }
        }
        it.next();
    }
    Ok(())
}

/// Replaces the table under the iterator by a leaf mapping `hpa`, if every entry of the table is
/// empty: in shared mode each entry is first taken (compare-exchange from empty to frozen, so no
/// other updater can fill it meanwhile; put back if one is not empty), in exclusive mode the
/// table's count says so. Returns whether it did; the table goes to the obligation (its entry
/// was removed: walk caches are flushed).
fn replace_empty_table<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    it: &mut crate::iter::Iter<'_, F, H, M>,
    hpa: u64,
    attrs: &Attrs,
    opts: MapOptions,
) -> Result<bool, Stop> {
    let fmt = op.fmt;
    let host = op.host;
    let geo = op.geometry();
    let level = it.level();
    let child = fmt.table_addr(it.old(), level);
    // SAFETY: `child` is a live table of this tree (Host contract for `meta`).
    if unsafe { host.meta(child).as_ref() }.count() != 0 {
        return Ok(false);
    }
    let cl = Level::from_index(level.index() - 1);
    let n = geo.entries(cl);
    let empty = fmt.empty(cl);
    let frozen = fmt.frozen(cl);
    let virt = host.phys_to_virt(child);
    let entry = |i: usize| {
        debug_assert!(i < n);
        // SAFETY: every caller passes `i < n`, the entry count of the live table `child`.
        unsafe { crate::entry::EntryPtr::new(virt, i) }
    };
    let put_back = |upto: usize| {
        for i in 0..upto {
            crate::update::put_back::<F>(entry(i), empty);
        }
    };
    if M::SHARED {
        for i in 0..n {
            if entry(i)
                .compare_exchange(empty, frozen, F::BYTE_ORDER)
                .is_err()
            {
                put_back(i);
                return Ok(false);
            }
        }
    }
    let leaf = fmt.make_leaf(Hpa::new(hpa), level, attrs, opts.young_dirty);
    if try_set(it, leaf).is_err() {
        if M::SHARED {
            put_back(n);
        }
        return Ok(false);
    }
    op.pending.detach(host, cl, child, geo);
    op.pending.flush_table_span(it.gpa(), geo.level_size(level));
    op.delta.tables[cl.index()] -= 1;
    op.delta.leaves[level.index()] += 1;
    op.charge(1);
    Ok(true)
}

/// Upper bound of the tables a map of `[start, last]` needs, by level.
pub(crate) fn map_bound(
    geo: &Geometry,
    start: u64,
    last: u64,
    leaf_ok: &[bool; MAX_LEVELS],
) -> [u64; MAX_LEVELS] {
    let mut need = [0u64; MAX_LEVELS];
    for l in 0..geo.root_level().index() {
        let parent = Level::from_index(l + 1);
        let shift = geo.shift(parent);
        let spans = (last >> shift) - (start >> shift) + 1;
        let covered = if leaf_ok[parent.index()] {
            // Spans of the parent level entirely inside the range take a leaf there or above.
            let first_full = start.div_ceil(1u64 << shift);
            let end_full = (last + 1) >> shift;
            end_full.saturating_sub(first_full)
        } else {
            0
        };
        need[l] = spans - covered;
    }
    need
}
