//! split: replace huge leaves by tables of smaller leaves with the same translation.

use crate::addr::{Gpa, GpaRange, Level};
use crate::error::Error;
use crate::format::{EntryKind, PteFormat};
use crate::geometry::MAX_LEVELS;
use crate::host::Host;
use crate::iter::Visit;
use crate::mode::Mode;
use crate::tree::Progress;

use super::{check_range, chunk_last, chunk_span, frozen_restart, split_here, Op};

/// Splits needing at most this many tables reserve them all before changing anything.
const ALL_AT_ONCE: u64 = 1024;

/// Splits every leaf above `level` that maps part of `range`. See `Table::split`.
pub(crate) fn split<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
    level: Level,
) -> Result<Progress, Error> {
    let geo = op.geometry();
    let (start, last) = check_range(geo, range)?;
    if !geo.is_leaf_level(level) {
        return Err(Error::InvalidLevel { level });
    }
    if level >= geo.root_level() {
        return Ok(Progress::Done);
    }
    let min = Level::from_index(level.index() + 1);
    // A split that needs few tables reserves them all first, so that running out of memory
    // changes nothing; a larger one reserves per chunk (then the chunks before a failing one stay
    // split, which changes no translation).
    let total = count::<F, H, M>(op, start, last, level, min);
    let span = if total.iter().sum::<u64>() <= ALL_AT_ONCE {
        u64::MAX
    } else {
        chunk_span(geo)
    };
    let mut at = start;
    loop {
        let c_last = chunk_last(at, last, span);
        // Count the tables this chunk will need (entries at `min` and above only), reserve them,
        // then split: a huge range never reserves every table up front.
        let need = count::<F, H, M>(op, at, c_last, level, min);
        op.reserve(&need)?;
        if let Some(resume) = split_walk::<F, H, M>(op, at, c_last, level, min)? {
            return Ok(Progress::Yielded {
                resume: Gpa::new(resume),
            });
        }
        if c_last == last {
            return Ok(Progress::Done);
        }
        at = c_last + 1;
        if op.budget == 0 {
            return Ok(Progress::Yielded {
                resume: Gpa::new(at),
            });
        }
    }
}

fn count<F: PteFormat, H: Host, M: Mode>(
    op: &Op<'_, F, H>,
    start: u64,
    last: u64,
    level: Level,
    min: Level,
) -> [u64; MAX_LEVELS] {
    let geo = op.geometry();
    let mut need = [0u64; MAX_LEVELS];
    let mut it = op.iter::<M>(start, last, min);
    it.without_post();
    while it.valid() {
        if it.visit() == Visit::Leaf && it.kind() == EntryKind::Leaf {
            let l = it.level();
            let size = geo.level_size(l);
            let a = it.gpa().max(start);
            let b = (it.gpa() + (size - 1)).min(last);
            for t in level.index()..l.index() {
                let shift = geo.shift(Level::from_index(t + 1));
                need[t] += (b >> shift) - (a >> shift) + 1;
            }
        }
        it.next();
    }
    need
}

/// Splits within `[start, last]`; `Some(resume)` when the budget ran out.
fn split_walk<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    start: u64,
    last: u64,
    level: Level,
    min: Level,
) -> Result<Option<u64>, Error> {
    let mut restarts = 0;
    let mut it = op.iter::<M>(start, last, min);
    it.without_post();
    while it.valid() {
        if it.visit() == Visit::Leaf {
            match it.kind() {
                EntryKind::Leaf if it.level() > level => {
                    split_here(op, &mut it)?;
                    if op.charge(1) {
                        // Finish this entry's span (the walk descends into the new table),
                        // then stop at the next span boundary.
                        let size = it.geometry().level_size(it.level());
                        let next = (it.gpa() | (size - 1)) + 1;
                        if next <= last {
                            let r = finish_span::<F, H, M>(
                                op,
                                it.gpa().max(start),
                                next - 1,
                                level,
                                min,
                            );
                            return r.map(|_| Some(next));
                        }
                    }
                    continue;
                }
                EntryKind::Frozen if M::SHARED => {
                    frozen_restart(&mut it, &mut restarts, start)?;
                    continue;
                }
                _ => {}
            }
        }
        it.next();
    }
    Ok(None)
}

/// Splits what is left of one entry's span, ignoring the budget.
fn finish_span<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    start: u64,
    last: u64,
    level: Level,
    min: Level,
) -> Result<(), Error> {
    let saved = op.budget;
    op.budget = u64::MAX;
    let r = split_walk::<F, H, M>(op, start, last, level, min);
    op.budget = saved;
    r.map(|_| ())
}
