//! collapse: replace tables of uniform leaves by huge leaves (huge-page recovery).

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::entry::EntryPtr;
use crate::error::Error;
use crate::format::{EntryKind, PteFormat};
use crate::host::Host;
use crate::iter::Visit;
use crate::mode::Mode;
use crate::tree::Progress;
use crate::update::{put_back, take, try_set};

use super::{check_range, Op};

/// Collapses, bottom-up, every table within `range` whose entries are leaves with the same
/// attributes mapping one contiguous, aligned host range, where `allow(gpa, level)` agrees.
///
/// The children are *taken* first, while the parent still points at them: each child that
/// another agent could change (every child in shared mode; in exclusive mode those whose A/D
/// bits hardware may still set) is swapped with the frozen value, so its final value is known
/// and nothing can change it any more. If a taken child no longer fits, the taken ones are put
/// back and the table stays. Then the parent is replaced by the huge leaf, carrying the union of
/// the children's accessed/dirty bits: no bit hardware set in a child is lost, and no change
/// another updater made to a child is undone.
pub(crate) fn collapse<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
    mut allow: impl FnMut(u64, Level) -> bool,
) -> Result<Progress, Error> {
    let fmt = op.fmt;
    let host = op.host;
    let geo = op.geometry();
    let (start, last) = check_range(geo, range)?;
    let mut it = op.iter::<M>(start, last, Level::LEAF);
    while it.valid() {
        let level = it.level();
        if it.visit() == Visit::Leaf {
            op.charge(1);
        }
        if it.visit() == Visit::TablePost
            && it.kind() == EntryKind::Table
            && geo.is_leaf_level(level)
            && it.span_in_range(start)
            && allow(it.gpa(), level)
        {
            let child = fmt.table_addr(it.old(), level);
            let child_level = Level::from_index(level.index() - 1);
            if let Some((first, ad)) = collapsible::<F, H, M>(fmt, host, child, level) {
                if let Some(ad) = take_children::<F, H, M>(fmt, host, child, level, first, ad) {
                    let huge = fmt.make_huge(first, level, ad);
                    if try_set(&mut it, huge).is_ok() {
                        let n = geo.entries(child_level) as i64;
                        op.delta.leaves[child_level.index()] -= n;
                        op.delta.tables[child_level.index()] -= 1;
                        op.delta.leaves[level.index()] += 1;
                        op.pending.detach(host, child_level, child, geo);
                        op.pending.flush_table_span(it.gpa(), geo.level_size(level));
                    } else {
                        // Shared mode: the parent changed meanwhile; give the children back.
                        restore::<F, H>(
                            fmt,
                            host,
                            child,
                            level,
                            first,
                            ad,
                            geo.entries(child_level),
                        );
                    }
                }
            }
        }
        if it.visit() == Visit::TablePost && op.budget == 0 {
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
    for i in 1..geo.entries(child_level) {
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

/// Takes every child of `child` that another agent could change (see [`collapse`]) and checks
/// it still fits; returns the union of the A/D bits of the final values, or `None` (with the
/// taken children put back) if one no longer fits.
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
