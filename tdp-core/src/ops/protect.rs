//! protect: set the permissions of every leaf in a range.

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::format::{Attrs, Cmo, EntryKind, Perms, PteFormat};
use crate::host::Host;
use crate::iter::Visit;
use crate::mode::Mode;
use crate::tree::Progress;
use crate::update::update_leaf_to;

use super::{check_range, frozen_restart, split_here, Op};

/// Sets the permissions of every leaf in `range` to `perms`. See `Table::protect`.
///
/// # How the change is computed
/// Leaves are visited run by run (the leaves of one table inside the range) and the format is
/// asked once per distinct leaf value, not once per leaf:
/// - per attribute key (`leaf_key`, with the level): whether the permissions change, whether one
///   is removed, and (where `perms_depend_on_memtype`) whether the leaf's memory type can take
///   `perms` (`check_attrs`);
/// - per key and A/D bits (`ad_bits`), i.e. per value of every non-address bit (the contract of
///   `leaf_key`: the leaf without its output address and A/D bits): the change itself, as
///   `xor = with_perms(cur) ^ cur`, and whether the write must be atomic (`volatile_bits`). A
///   leaf with the same non-address bits becomes `leaf ^ xor`. This relies on `with_perms`
///   keeping the output address and not reading it, and on `volatile_bits` not reading it either
///   (true of every format; `arch-*/tests` check it).
///
/// # The memory-type check (arm64: device memory is never executable)
/// A failure must change nothing, so where the check applies (or an instruction-cache
/// invalidation may be needed) a read-only scan over the range runs first: it asks the format once
/// per distinct attribute key and otherwise only loads and compares keys. An undo after a
/// failure met mid-pass cannot be exact: two original values may map to one new value, and
/// hardware may set A/D bits (or, with DBM, start writing) in a leaf between its change and the
/// undo. The change pass checks again, per distinct key, so that no leaf is ever written with
/// attributes the format refuses, even if (shared mode) another updater mapped one after the scan;
/// only then can a failure come after a change.
pub(crate) fn protect<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
    perms: Perms,
) -> Result<Progress, Error> {
    let fmt = op.fmt;
    // One aligned leaf: straight to its slot.
    if let Some(r) = protect_one::<F, H, M>(fmt, op.host, op.root, range, perms) {
        if let Some((gpa, size, level)) = r? {
            op.pending.flush_span(gpa, size, level);
        }
        return Ok(Progress::Done);
    }
    protect_general::<F, H, M>(op, range, perms)
}

/// The general protect (every shape [`protect_one`] does not take), out of line for the tree
/// API.
#[inline(never)]
fn protect_general<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
    perms: Perms,
) -> Result<Progress, Error> {
    protect_general_inline::<F, H, M>(op, range, perms)
}

/// The body of the general protect, inlined into `Table::protect`'s own out-of-line general
/// call (that placement measured fastest for it; the tree API keeps [`protect_general`]).
#[inline(always)]
pub(crate) fn protect_general_inline<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    range: GpaRange,
    perms: Perms,
) -> Result<Progress, Error> {
    let fmt = op.fmt;
    let geo = op.geometry();
    let (start, last) = check_range(geo, range)?;
    fmt.check_attrs(&Attrs::normal(perms))?;
    let check = fmt.perms_depend_on_memtype();
    let icache = perms.intersects(Perms::EXEC) && may_need_icache(fmt, perms);
    let needs_icache = if check || icache {
        scan::<F, H, M>(op, start, last, perms, check, icache)?
    } else {
        false
    };
    // Only a huge leaf the edges cut whose permissions change must be split.
    let need = op.edge_need::<M>(start, last, |raw, level| {
        fmt.leaf_attrs(raw, level).perms != perms
    });
    op.reserve(&need)?;
    if needs_icache {
        icache_before_exec::<F, H, M>(op, start, last, perms);
    }
    let mut restarts = 0;
    let mut it = op.iter::<M>(start, last, Level::LEAF);
    it.without_post();
    let mut cache = Cache::default();
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
                // SAFETY: `0 < run`: the current slot.
                let base = unsafe { it.ptr_at(0) };
                // SAFETY: the `run` slots from `base` are inside the current (live) table.
                let r =
                    unsafe { protect_run::<F, M>(fmt, base, run, level, perms, check, &mut cache) };
                let (n, lo, hi) = (r.passed, r.lo, r.hi);
                if lo < hi {
                    op.pending.flush_span(
                        it.gpa() + lo as u64 * size,
                        (hi - lo) as u64 * size,
                        level,
                    );
                }
                if let Some(e) = r.refused {
                    return Err(e);
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
                if check {
                    // The pieces keep the leaf's memory type.
                    let attrs = fmt.leaf_attrs(it.old(), level);
                    fmt.check_attrs(&Attrs { perms, ..attrs })?;
                }
                split_here(op, &mut it)?;
                continue;
            }
        }
        it.next();
    }
    Ok(Progress::Done)
}

/// The per-value caches of the run loop, for leaves at `level`: the decision for the attribute
/// key `key` (if `have_key`), and the change for the non-address value (`ch_key`, `ch_ad`): `xor`
/// and whether the write is `atomic` (if `have_change`).
#[derive(Default)]
struct Cache {
    level: u8,
    have_key: bool,
    key: u64,
    decision: Decision,
    have_change: bool,
    ch_key: u64,
    ch_ad: u64,
    xor: u64,
    atomic: bool,
}

/// What one run did.
struct Run {
    /// Slots passed from the run's first (all of them unless a table, a frozen entry, an entry
    /// another updater changed, or a refused leaf came first).
    passed: usize,
    /// The slots `lo..hi` hold every leaf that lost a permission (`lo >= hi`: none).
    lo: usize,
    hi: usize,
    /// A leaf whose memory type cannot take the permissions (at slot `passed`, left unchanged).
    refused: Option<Error>,
}

/// Sets the permissions of the leaves in the `run` slots from `base` at `level` (see
/// [`protect`]), stopping before a table or (shared mode) a frozen entry.
///
/// # Safety
/// The `run` slots from `base` are inside one live table.
#[inline]
unsafe fn protect_run<F: PteFormat, M: Mode>(
    fmt: &F,
    base: crate::entry::EntryPtr,
    run: usize,
    level: Level,
    perms: Perms,
    check: bool,
    c: &mut Cache,
) -> Run {
    if c.level != level.get() {
        *c = Cache {
            level: level.get(),
            ..Cache::default()
        };
    }
    let mut r = Run {
        passed: 0,
        lo: usize::MAX,
        hi: 0,
        refused: None,
    };
    let mut n = 0;
    'run: while n < run {
        // SAFETY: `n < run`: inside the table (caller contract).
        let p = unsafe { base.offset(n) };
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
        // A leaf: its decision and change, from the caches or the format.
        let key = fmt.leaf_key(cur, level);
        if !c.have_key || key != c.key {
            match decide(fmt, cur, level, perms, check) {
                Ok(d) => (c.have_key, c.key, c.decision) = (true, key, d),
                Err(e) => {
                    r.refused = Some(e);
                    break;
                }
            }
        }
        let d = c.decision;
        let ad = fmt.ad_bits(cur, level);
        if d.changes && (!c.have_change || key != c.ch_key || ad != c.ch_ad) {
            c.xor = fmt.with_perms(cur, level, perms) ^ cur;
            c.atomic = M::SHARED || fmt.volatile_bits(cur, level) != 0;
            (c.have_change, c.ch_key, c.ch_ad) = (true, key, ad);
        }
        let (xor, atomic) = (c.xor, c.atomic);
        if d.removes && d.changes {
            r.lo = r.lo.min(n);
        }
        // This leaf and every following one with the same non-address bits (the same key and A/D
        // bits): `leaf ^ xor`, with no call into the format but to classify and compare.
        let mut m = n;
        let mut v = cur;
        loop {
            if d.changes {
                // SAFETY: `m < run`.
                let q = unsafe { base.offset(m) };
                let w = update_leaf_to::<F, M>(fmt, q, v, v ^ xor, atomic, level, |x| {
                    fmt.with_perms(x, level, perms)
                });
                if w.is_err() {
                    // Shared mode: no longer a leaf (split, zapped or frozen by another updater):
                    // the caller looks at it again.
                    if d.removes && m > n {
                        r.hi = m;
                    }
                    n = m;
                    break 'run;
                }
            }
            m += 1;
            if m == run {
                break;
            }
            // SAFETY: `m < run`.
            v = unsafe { base.offset(m) }.load_for(M::SHARED, F::BYTE_ORDER);
            if fmt.classify(v, level) != EntryKind::Leaf
                || fmt.leaf_key(v, level) != key
                || fmt.ad_bits(v, level) != ad
            {
                break;
            }
        }
        if d.removes && d.changes {
            r.hi = m;
        }
        n = m;
    }
    r.passed = n;
    r
}

/// What `protect` does to the leaves of one attribute key.
#[derive(Copy, Clone, Default)]
struct Decision {
    /// The permissions change.
    changes: bool,
    /// A permission is removed (a TLB flush is owed).
    removes: bool,
}

/// The decision for the leaf `raw` at `level`; with `check`, first whether its memory type can
/// take `perms`.
#[inline(never)]
fn decide<F: PteFormat>(
    fmt: &F,
    raw: u64,
    level: Level,
    perms: Perms,
    check: bool,
) -> Result<Decision, Error> {
    let attrs = fmt.leaf_attrs(raw, level);
    if check {
        fmt.check_attrs(&Attrs { perms, ..attrs })?;
    }
    Ok(Decision {
        changes: attrs.perms != perms,
        removes: !perms.contains(attrs.perms),
    })
}

/// The read-only scan before any change: with `check`, that every leaf in `[start, last]` can
/// take `perms` with its memory type; with `icache`, whether any of them needs an
/// instruction-cache invalidation before it becomes executable (the result). The format is asked
/// once per distinct attribute key; every other leaf costs a load and a compare.
///
/// # Errors
/// [`Error::UnsupportedAttrs`] for the first leaf whose memory type cannot take `perms`.
fn scan<F: PteFormat, H: Host, M: Mode>(
    op: &Op<'_, F, H>,
    start: u64,
    last: u64,
    perms: Perms,
    check: bool,
    icache: bool,
) -> Result<bool, Error> {
    let fmt = op.fmt;
    let mut needs_icache = false;
    let mut seen: Option<(Level, u64)> = None;
    let mut judge = |raw: u64, level: Level| -> Result<(), Error> {
        let key = fmt.leaf_key(raw, level);
        if seen == Some((level, key)) {
            return Ok(());
        }
        let attrs = fmt.leaf_attrs(raw, level);
        let new = Attrs { perms, ..attrs };
        if check {
            fmt.check_attrs(&new)?;
        }
        if icache
            && !(perms & Perms::EXEC & !attrs.perms).is_empty()
            && fmt.cmo(&new).contains(Cmo::INVAL_ICACHE)
        {
            needs_icache = true;
        }
        seen = Some((level, key));
        Ok(())
    };
    let mut it = op.iter::<M>(start, last, Level::LEAF);
    it.without_post();
    while it.valid() {
        if it.visit() == Visit::Leaf && it.kind() == EntryKind::Leaf {
            let level = it.level();
            if !it.span_in_range(start) {
                // A huge leaf an edge cuts: its pieces keep its memory type.
                judge(it.old(), level)?;
            } else {
                let run = it.run_len();
                // SAFETY: `0 < run`: the current slot.
                let base = unsafe { it.ptr_at(0) };
                let mut n = 0;
                while n < run {
                    // SAFETY: `n < run`: inside the current table.
                    let cur = unsafe { base.offset(n) }.load_for(M::SHARED, F::BYTE_ORDER);
                    match fmt.classify(cur, level) {
                        EntryKind::Leaf => {}
                        EntryKind::Table => break,
                        _ => {
                            n += 1;
                            continue;
                        }
                    }
                    judge(cur, level)?;
                    // The leaves that follow with the same key share the answer.
                    let key = fmt.leaf_key(cur, level);
                    n += 1;
                    while n < run {
                        // SAFETY: `n < run`: inside the current table.
                        let v = unsafe { base.offset(n) }.load_for(M::SHARED, F::BYTE_ORDER);
                        if fmt.classify(v, level) != EntryKind::Leaf
                            || fmt.leaf_key(v, level) != key
                        {
                            break;
                        }
                        n += 1;
                    }
                }
                if n < run {
                    // A table at `n`: the walk goes on from it (into it).
                    it.skip(n);
                    continue;
                }
                it.skip(n - 1);
            }
        }
        it.next();
    }
    Ok(needs_icache)
}

/// Whether any leaf made executable with `perms` could need an instruction-cache invalidation
/// (never, on coherent formats: then no pre-pass is made). A plain loop, so that a format whose
/// `cmo` is constant folds it away.
#[inline(always)]
fn may_need_icache<F: PteFormat>(fmt: &F, perms: Perms) -> bool {
    use crate::format::MemType::*;
    const MEMS: [crate::format::MemType; 6] = [
        WriteBack,
        WriteThrough,
        WriteProtect,
        WriteCombining,
        Uncached,
        Device,
    ];
    let mut i = 0;
    while i < 2 * MEMS.len() {
        let a = Attrs {
            perms,
            mem: MEMS[i >> 1],
            ignore_guest_memtype: i & 1 != 0,
        };
        if fmt.cmo(&a).contains(Cmo::INVAL_ICACHE) {
            return true;
        }
        i += 1;
    }
    false
}

/// Where the walk toward one slot ended (see [`one_slot`]).
enum Slot {
    /// The slot at the level asked for.
    At(crate::entry::EntryPtr),
    /// An empty entry on the way: nothing maps the span.
    Hole,
    /// Anything else on the way (a huge leaf above the level, a frozen or unknown entry).
    Other,
}

/// The slot at `level` for `gpa`, walking from `root` through tables only (the single-entry
/// paths' slot walk, without a cursor).
///
/// # Safety
/// `root` is the live root of a tree built with `fmt` on `host`, `gpa` is within the input width,
/// `level` is a level of the geometry, and no table of the tree is freed meanwhile (exclusive:
/// the caller holds the tree; shared: the caller's read-side section).
#[inline(always)]
unsafe fn one_slot<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    gpa: u64,
    level: Level,
) -> Slot {
    // SAFETY: the caller's contract, which is `slot_at`'s with no cursor.
    match unsafe { super::single::slot_at::<F, H, M>(fmt, host, root, gpa, level, None) } {
        Ok((ptr, _)) => Slot::At(ptr),
        Err(stop) if stop.kind == EntryKind::Empty => Slot::Hole,
        Err(_) => Slot::Other,
    }
}

/// The one-leaf protect: when `range` is exactly one aligned entry of a leaf level
/// ([`super::single::one_entry_level`]) and the walk reaches that slot through tables, changes
/// the leaf there (or finds nothing to do: a hole, or the permissions already `perms`) and
/// returns the flush owed (`Some((gpa, size, level))` only if a permission was removed).
/// `None`, with nothing changed, for every other shape (a huge leaf above the level, a table at
/// it, a frozen or unknown entry, a leaf another updater changed meanwhile, a malformed range):
/// the general path runs then. The same checks as the general path, in the same order: the
/// permissions with write-back memory, then (where permissions depend on it) the leaf's memory
/// type; a refusal changes nothing. An instruction-cache invalidation the leaf needs before it
/// becomes executable is made before the write.
#[inline(always)]
pub(crate) fn protect_one<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    range: GpaRange,
    perms: Perms,
) -> Option<Result<Owed, Error>> {
    let level = super::single::one_entry_level(fmt.geometry(), range)?;
    if let Err(e) = fmt.check_attrs(&Attrs::normal(perms)) {
        return Some(Err(e));
    }
    let gpa = range.start().raw();
    // SAFETY: `root` is the tree's live root built with `fmt` on `host` (every caller passes its
    // tree's); `gpa` is within the input width and `level` a level of the geometry
    // (`one_entry_level`); no table is freed meanwhile (exclusive: the caller holds the tree;
    // shared: its read-side section).
    let ptr = match unsafe { one_slot::<F, H, M>(fmt, host, root, gpa, level) } {
        Slot::At(p) => p,
        Slot::Hole => return Some(Ok(None)),
        Slot::Other => return None,
    };
    let cur = ptr.load_for(M::SHARED, F::BYTE_ORDER);
    match fmt.classify(cur, level) {
        EntryKind::Leaf => {}
        EntryKind::Empty => return Some(Ok(None)),
        _ => return None,
    }
    protect_leaf::<F, H, M>(fmt, host, ptr, cur, (gpa, level), perms)
}

/// The flush a one-leaf protect owes: `(gpa, size, level)` of the leaf, if a permission was
/// removed.
pub(crate) type Owed = Option<(u64, u64, Level)>;

/// [`protect_one`] on the leaf `cur` found at `ptr` (for `gpa`, at `level`).
#[inline(always)]
fn protect_leaf<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    ptr: crate::entry::EntryPtr,
    cur: u64,
    (gpa, level): (u64, Level),
    perms: Perms,
) -> Option<Result<Owed, Error>> {
    let attrs = fmt.leaf_attrs(cur, level);
    let new_attrs = Attrs { perms, ..attrs };
    if fmt.perms_depend_on_memtype() {
        // arm64: device memory is never executable; refused with nothing changed.
        if let Err(e) = fmt.check_attrs(&new_attrs) {
            return Some(Err(e));
        }
    }
    if attrs.perms == perms {
        return Some(Ok(None));
    }
    let size = fmt.geometry().level_size(level);
    if !(perms & Perms::EXEC & !attrs.perms).is_empty()
        && fmt.cmo(&new_attrs).contains(Cmo::INVAL_ICACHE)
    {
        host.invalidate_icache(fmt.leaf_addr(cur, level), size);
    }
    let new = fmt.with_perms(cur, level, perms);
    let atomic = M::SHARED || fmt.volatile_bits(cur, level) != 0;
    if update_leaf_to::<F, M>(fmt, ptr, cur, new, atomic, level, |x| {
        fmt.with_perms(x, level, perms)
    })
    .is_err()
    {
        // Shared mode: no longer a leaf (split, zapped or frozen by another updater): the
        // general path looks again.
        return None;
    }
    Some(Ok(
        (!perms.contains(attrs.perms)).then_some((gpa, size, level))
    ))
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
