//! unmap (zap): remove every mapping in a range.
//!
//! Both modes zap leaves with the one writer and take a table whose whole span lies in the range
//! out of the tree at once (parent entry first, then [`crate::update::remove_table`]), as
//! aarch64-paging and KVM's zap of a root do. Exclusive mode also frees tables that became empty,
//! known from their counts at the post-order visit; shared mode never trusts a count to remove a
//! table (another updater may be filling it), so those stay.

use crate::addr::{Gpa, GpaRange, Level};
use crate::error::Error;
use crate::format::{EntryKind, PteFormat};
use crate::host::Host;
use crate::iter::Visit;
use crate::mode::Mode;
use crate::tree::Progress;
use crate::update::{remove_table, try_set, zap_run};

use super::{check_range, frozen_restart, split_here, Op};

/// Removes every mapping in `range`. See `Table::unmap`.
pub(crate) fn unmap<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
) -> Result<Progress, Error> {
    let geo = op.geometry();
    let (start, last) = check_range(geo, range)?;
    // Tables only for huge leaves the edges cut: an unmap that cuts none needs no memory, so a
    // host out of memory can still unmap to get memory back.
    let need = op.edge_need::<M>(start, last, |_, _| true);
    op.reserve(&need)?;
    let budget = op.budget;
    zap_walk::<F, H, M>(op, start, last, budget)
}

/// Zaps `[start, last]`, visiting at most about `budget` entries before it yields (single-entry
/// unmaps never get here: see [`super::single`]).
#[inline(never)]
pub(crate) fn zap_walk<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    start: u64,
    last: u64,
    budget: u64,
) -> Result<Progress, Error> {
    let fmt = op.fmt;
    let host = op.host;
    let geo = op.geometry();
    let saved = op.budget;
    op.budget = budget;
    let mut restarts = 0;
    let mut it = op.iter::<M>(start, last, Level::LEAF);
    if M::SHARED {
        it.without_post();
    }
    let r = loop {
        if !it.valid() {
            break Ok(Progress::Done);
        }
        let level = it.level();
        match (it.visit(), it.kind()) {
            (Visit::Leaf, EntryKind::Empty) => {}
            (Visit::TablePre, _) => {
                if it.span_in_range(start) {
                    // A table wholly inside the range leaves the tree at once.
                    let child = fmt.table_addr(it.old(), level);
                    if try_set(&mut it, fmt.empty(level)).is_err() {
                        continue; // shared mode: changed meanwhile; look again
                    }
                    let child_level = Level::from_index(level.index() - 1);
                    remove_table::<F, H, M>(
                        fmt,
                        host,
                        child,
                        child_level,
                        false,
                        op.pending,
                        &mut op.delta,
                    );
                    op.pending.flush_table_span(it.gpa(), geo.level_size(level));
                    if op.charge(geo.entries(child_level) as u64)
                        && it.gpa() + geo.level_size(level) <= last
                    {
                        break Ok(Progress::Yielded {
                            resume: Gpa::new(it.gpa() + geo.level_size(level)),
                        });
                    }
                }
            }
            (Visit::Leaf, EntryKind::Frozen) if M::SHARED => {
                frozen_restart(&mut it, &mut restarts, start)?;
                continue;
            }
            (Visit::Leaf, kind) => {
                if it.span_in_range(start) {
                    // Zap the run of leaves (and empty slots) from here, up to a table.
                    let run = it.run_len();
                    // SAFETY: the run is inside the current table, whose metadata this is.
                    let z = unsafe { zap_run::<F, M>(fmt, it.ptr(), run, level, it.table_meta()) };
                    op.delta.leaves[level.index()] -= z.leaves;
                    let size = geo.level_size(level);
                    if z.zapped > 0 {
                        op.pending
                            .flush_span(it.gpa(), z.passed as u64 * size, level);
                    }
                    if z.passed < run {
                        // Stopped before a table or a frozen entry: look at it.
                        it.skip(z.passed);
                        continue;
                    }
                    it.skip(z.passed.saturating_sub(1));
                    if op.charge(z.passed as u64) {
                        let next = it.gpa() + size;
                        if next <= last {
                            break Ok(Progress::Yielded {
                                resume: Gpa::new(next),
                            });
                        }
                    }
                } else if kind == EntryKind::Leaf {
                    match split_here(op, &mut it) {
                        Ok(_) => continue,
                        Err(e) => break Err(e),
                    }
                }
            }
            (Visit::TablePost, EntryKind::Table) => {
                debug_assert!(!M::SHARED);
                let child = fmt.table_addr(it.old(), level);
                // SAFETY: `child` is a live table of this tree (Host contract for `meta`).
                let count = unsafe { host.meta(child).as_ref() }.count();
                if count == 0 {
                    if try_set(&mut it, fmt.empty(level)).is_err() {
                        continue;
                    }
                    let child_level = Level::from_index(level.index() - 1);
                    op.pending.detach(host, child_level, child, geo);
                    op.delta.tables[child_level.index()] -= 1;
                    op.pending.flush_table_span(it.gpa(), geo.level_size(level));
                } else if it.exhausted() {
                    // The table keeps entries, so every ancestor keeps it: nothing above can
                    // become empty.
                    break Ok(Progress::Done);
                }
            }
            (Visit::TablePost, _) => {}
        }
        it.next();
    };
    op.budget = saved.min(op.budget);
    r
}
