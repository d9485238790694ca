//! walk: read-only, in either mode (single-address lookups are in [`super::single`]).

use core::ops::ControlFlow;

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::format::{EntryKind, PteFormat};
use crate::host::Host;
use crate::iter::{Iter, Visit};
use crate::mode::Mode;
use crate::table::WalkEntry;

use super::check_range;

/// Visits every entry that maps part of `range` in pre-order until the visitor breaks.
///
/// The visits are the iterator's (see [`crate::iter`]); a run of entries that are not tables
/// inside one table (leaves, empty and frozen entries: `Visit::Leaf` visits) is visited in a tight
/// loop over the table's slots, without the iterator's per-entry steps, and with the same
/// entries, in the same order, as the iterator would give.
pub(crate) fn walk<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    range: GpaRange,
    mut visitor: impl FnMut(&WalkEntry) -> ControlFlow<()>,
) -> Result<(), Error> {
    let (start, last) = check_range(fmt.geometry(), range)?;
    // SAFETY: `root` is the tree's live root; `start <= last` within the input width (checked);
    // tables are not freed while the walk runs (exclusive: nothing else runs; shared: the
    // caller's read-side section).
    let mut it = unsafe { Iter::<F, H, M>::new(fmt, host, root, start, last, Level::LEAF) };
    while it.valid() {
        let e = WalkEntry {
            gpa: Gpa::new(it.gpa()),
            level: it.level(),
            raw: it.old(),
            kind: it.kind(),
            visit: it.visit(),
        };
        if visitor(&e).is_break() {
            break;
        }
        if e.visit == Visit::Leaf {
            // The entries after this one in its table that lie wholly in the range, up to the
            // first table among them (which the iterator must enter).
            let run = it.run_len();
            if run > 1 {
                match leaf_run(fmt, &it, run, &mut visitor) {
                    Run::Broke => break,
                    // On the table that ended the run: the next visit is the iterator's own, of
                    // a fresh snapshot of that entry.
                    Run::Table(i) => it.skip(i),
                    // On the run's last entry, already visited: step on from it as the iterator
                    // does from a `Leaf` visit (sideways or up, never into it).
                    Run::Done => {
                        it.skip(run - 1);
                        it.skip_children();
                        it.next();
                    }
                }
                continue;
            }
        }
        it.next();
    }
    Ok(())
}

/// How a run of leaf visits ended.
enum Run {
    /// The visitor broke.
    Broke,
    /// Entries `1..i` of the run were visited; entry `i` is a table, not visited.
    Table(usize),
    /// Every entry of the run was visited.
    Done,
}

/// Visits entries `1..run` after the iterator's current entry (in its table, wholly in the
/// range), stopping before the first table.
#[inline(always)]
fn leaf_run<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    it: &Iter<'_, F, H, M>,
    run: usize,
    visitor: &mut impl FnMut(&WalkEntry) -> ControlFlow<()>,
) -> Run {
    let level = it.level();
    let shift = it.geometry().shift(level);
    let base = it.gpa();
    let ptr = it.ptr();
    for i in 1..run {
        // SAFETY: `i < run <= run_len()`: the slot is inside the iterator's current (live) table.
        let raw = unsafe { ptr.offset(i) }.load_for(M::SHARED, F::BYTE_ORDER);
        let kind = fmt.classify(raw, level);
        if kind == EntryKind::Table {
            return Run::Table(i);
        }
        let e = WalkEntry {
            gpa: Gpa::new(base + ((i as u64) << shift)),
            level,
            raw,
            kind,
            visit: Visit::Leaf,
        };
        if visitor(&e).is_break() {
            return Run::Broke;
        }
    }
    Run::Done
}
