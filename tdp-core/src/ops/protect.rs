//! protect: set the permissions of every leaf in a range.

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::format::{Attrs, Cmo, EntryKind, Perms, PteFormat};
use crate::host::Host;
use crate::iter::Visit;
use crate::mode::Mode;
use crate::tree::Progress;
use crate::update::update_leaf;

use super::{check_range, frozen_restart, split_here, Op};

/// Sets the permissions of every leaf in `range` to `perms`. See `Table::protect`.
pub(crate) fn protect<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
    perms: Perms,
) -> Result<Progress, Error> {
    let fmt = op.fmt;
    let geo = op.geometry();
    let (start, last) = check_range(geo, range)?;
    fmt.check_attrs(&Attrs::normal(perms))?;
    if fmt.perms_depend_on_memtype() {
        check_leaf_attrs::<F, H, M>(op, start, last, perms)?;
    }
    // Only a huge leaf the edges cut whose permissions change must be split.
    let need = op.edge_need::<M>(start, last, |raw, level| {
        fmt.leaf_attrs(raw, level).perms != perms
    });
    op.reserve(&need)?;
    if perms.intersects(Perms::EXEC) && may_need_icache(fmt, perms) {
        icache_before_exec::<F, H, M>(op, start, last, perms);
    }
    let mut restarts = 0;
    let mut it = op.iter::<M>(start, last, Level::LEAF);
    it.without_post();
    // The decision for the last attribute key seen: (key, changes, removes permission).
    let mut last_key: Option<(u64, bool, bool)> = None;
    while it.valid() {
        if it.visit() == Visit::Leaf {
            match it.kind() {
                EntryKind::Leaf => {}
                EntryKind::Frozen if M::SHARED => {
                    frozen_restart(&mut it, &mut restarts, start)?;
                    continue;
                }
                _ => {
                    it.next();
                    continue;
                }
            }
            let level = it.level();
            if it.span_in_range(start) {
                // The run of leaves (and empty slots) from here, up to a table.
                let run = it.run_len();
                let size = it.geometry().level_size(level);
                let (mut n, mut lo, mut hi) = (0, usize::MAX, 0);
                while n < run {
                    // SAFETY: `n < run`: inside the current table.
                    let p = unsafe { it.ptr_at(n) };
                    let cur = p.load_for(M::SHARED, F::BYTE_ORDER);
                    match fmt.classify(cur, level) {
                        EntryKind::Leaf => {}
                        EntryKind::Table => break,
                        EntryKind::Frozen if M::SHARED => break,
                        _ => {
                            n += 1;
                            continue;
                        }
                    }
                    let key = fmt.leaf_key(cur, level);
                    let (changes, removes) = match last_key {
                        Some((k, c, r)) if k == key => (c, r),
                        _ => {
                            let old = fmt.leaf_attrs(cur, level).perms;
                            let d = (old != perms, !perms.contains(old));
                            last_key = Some((key, d.0, d.1));
                            d
                        }
                    };
                    if changes {
                        let r = update_leaf::<F, M>(fmt, p, cur, level, |v| {
                            fmt.with_perms(v, level, perms)
                        });
                        if r.is_err() {
                            // Shared mode: no longer a leaf (split, zapped or frozen by another
                            // updater): look at it again.
                            break;
                        }
                        if removes {
                            lo = lo.min(n);
                            hi = n + 1;
                        }
                    }
                    n += 1;
                }
                if lo < hi {
                    op.pending.flush_span(
                        it.gpa() + lo as u64 * size,
                        (hi - lo) as u64 * size,
                        level,
                    );
                }
                let exhausted = op.charge(n as u64);
                if n < run {
                    it.skip(n);
                    continue;
                }
                it.skip(n.saturating_sub(1));
                if exhausted {
                    let next = it.gpa() + size;
                    if next <= last {
                        return Ok(Progress::Yielded {
                            resume: Gpa::new(next),
                        });
                    }
                }
            } else if fmt.leaf_attrs(it.old(), level).perms != perms {
                split_here(op, &mut it)?;
                continue;
            }
        }
        it.next();
    }
    Ok(Progress::Done)
}

/// Whether any leaf made executable with `perms` could need an instruction-cache invalidation
/// (never, on coherent formats: then no pre-pass is made).
fn may_need_icache<F: PteFormat>(fmt: &F, perms: Perms) -> bool {
    use crate::format::MemType::*;
    [
        WriteBack,
        WriteThrough,
        WriteProtect,
        WriteCombining,
        Uncached,
        Device,
    ]
    .into_iter()
    .flat_map(|mem| {
        [false, true].map(|ignore_guest_memtype| Attrs {
            perms,
            mem,
            ignore_guest_memtype,
        })
    })
    .any(|a| fmt.cmo(&a).contains(Cmo::INVAL_ICACHE))
}

/// Checks that every leaf in `[start, last]` can take `perms` with its memory type.
fn check_leaf_attrs<F: PteFormat, H: Host, M: Mode>(
    op: &Op<'_, F, H>,
    start: u64,
    last: u64,
    perms: Perms,
) -> Result<(), Error> {
    let fmt = op.fmt;
    let mut it = op.iter::<M>(start, last, Level::LEAF);
    it.without_post();
    let mut checked: Option<u64> = None;
    while it.valid() {
        if it.visit() == Visit::Leaf && it.kind() == EntryKind::Leaf {
            // Leaves with one attribute key share the answer.
            let key = fmt.leaf_key(it.old(), it.level());
            if checked != Some(key) {
                let attrs = fmt.leaf_attrs(it.old(), it.level());
                fmt.check_attrs(&Attrs { perms, ..attrs })?;
                checked = Some(key);
            }
        }
        it.next();
    }
    Ok(())
}

/// Invalidates the instruction cache for the host memory of every leaf in `[start, last]` that
/// `perms` makes executable, one call per contiguous host run, before any entry changes.
fn icache_before_exec<F: PteFormat, H: Host, M: Mode>(
    op: &Op<'_, F, H>,
    start: u64,
    last: u64,
    perms: Perms,
) {
    let fmt = op.fmt;
    let host = op.host;
    let mut run: Option<(u64, u64)> = None;
    let mut it = op.iter::<M>(start, last, Level::LEAF);
    it.without_post();
    while it.valid() {
        if it.visit() == Visit::Leaf && it.kind() == EntryKind::Leaf {
            let level = it.level();
            let attrs = fmt.leaf_attrs(it.old(), level);
            let gains = perms & Perms::EXEC & !attrs.perms;
            let new = Attrs { perms, ..attrs };
            if !gains.is_empty() && fmt.cmo(&new).contains(Cmo::INVAL_ICACHE) {
                let size = it.geometry().level_size(level);
                let a = it.gpa().max(start);
                let b = (it.gpa() + (size - 1)).min(last);
                let hpa = fmt.leaf_addr(it.old(), level).raw() + (a - it.gpa());
                run = match run {
                    Some((s, e)) if e == hpa => Some((s, hpa + (b - a + 1))),
                    Some((s, e)) => {
                        host.invalidate_icache(Hpa::new(s), e - s);
                        Some((hpa, hpa + (b - a + 1)))
                    }
                    None => Some((hpa, hpa + (b - a + 1))),
                };
            }
        }
        it.next();
    }
    if let Some((s, e)) = run {
        host.invalidate_icache(Hpa::new(s), e - s);
    }
}
