//! The operations, each written once, generic over the lock [`Mode`], as a loop over the one
//! walker ([`crate::iter`]) that changes entries only through the one writer ([`crate::update`]).
//!
//! Each module holds one operation: [`map`], [`zap`] (unmap), [`protect`], [`split`],
//! [`collapse`], [`walk`] (query and walk, read-only) and [`teardown`]. They run on an [`Op`]:
//! the tree's format, host and root, plus what the calling context lends for the operation (its
//! table reserve, its flush obligation, a statistics delta and a budget).

pub(crate) mod collapse;
pub(crate) mod map;
pub(crate) mod protect;
pub(crate) mod single;
pub(crate) mod split;
pub(crate) mod teardown;
pub(crate) mod walk;
pub(crate) mod zap;

use crate::addr::{GpaRange, Hpa, Level};
use crate::entry::EntryPtr;
use crate::error::Error;
use crate::flush::{Delta, Pending};
use crate::format::{Attrs, Cmo, EntryKind, PteFormat};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::Host;
use crate::iter::Iter;
use crate::mode::Mode;
use crate::pool::TableCache;

/// How many times a shared-mode operation restarts at an entry another updater keeps frozen
/// (or keeps changing) before it gives up with [`Error::Retry`]. A break-before-make holds an
/// entry frozen for one TLB flush; a removed table is no longer reached after a restart.
pub(crate) const RETRY_LIMIT: u32 = 1 << 20;

/// One operation in progress: the tree it runs on and what its caller lent it.
pub(crate) struct Op<'a, F: PteFormat, H: Host> {
    pub(crate) fmt: &'a F,
    pub(crate) host: &'a H,
    pub(crate) root: Hpa,
    pub(crate) cache: &'a mut TableCache,
    pub(crate) pending: &'a mut Pending,
    pub(crate) delta: Delta,
    /// Entries the operation may still visit before it yields.
    pub(crate) budget: u64,
}

impl<'a, F: PteFormat, H: Host> Op<'a, F, H> {
    /// The walker over `[start, last]` of this tree.
    #[inline(always)]
    pub(crate) fn iter<M: Mode>(
        &self,
        start: u64,
        last: u64,
        min_level: Level,
    ) -> Iter<'a, F, H, M> {
        // SAFETY: `root` is the tree's live root, built with `fmt` on `host`; every caller checked
        // `start <= last` within the input width; no table is freed while the iterator lives
        // (exclusive mode: tables are released only after the operation; shared mode: the caller's
        // read-side section holds off their grace period).
        unsafe { Iter::new(self.fmt, self.host, self.root, start, last, min_level) }
    }

    #[inline(always)]
    pub(crate) fn geometry(&self) -> &'a Geometry {
        self.fmt.geometry()
    }

    /// Tops the reserve up to `need`.
    #[inline(always)]
    pub(crate) fn reserve(&mut self, need: &[u64; MAX_LEVELS]) -> Result<(), Error> {
        // Most calls need nothing (an unmap or protect that cuts no huge leaf).
        let mut any = 0;
        for n in need {
            any |= n;
        }
        if any == 0 {
            return Ok(());
        }
        self.reserve_slow(need)
    }

    #[inline(never)]
    fn reserve_slow(&mut self, need: &[u64; MAX_LEVELS]) -> Result<(), Error> {
        self.cache
            .reserve(self.host, need)
            .map_err(|size| Error::OutOfMemory { size })
    }

    /// A table for `level` from the reserve, or from the host when the reserve is short (only
    /// possible in shared mode, where another updater changed the tree after the reservation).
    #[inline]
    pub(crate) fn take_table(&mut self, level: Level) -> Result<Hpa, Error> {
        if let Some(pa) = self.cache.pop(self.host, level) {
            return Ok(pa);
        }
        let size = self.geometry().table_size(level);
        match self.host.alloc_table(size) {
            Some(pa) => {
                // SAFETY: `pa` was just allocated, so its metadata is valid (Host contract).
                unsafe { self.host.meta(pa).as_ref() }.reset();
                Ok(pa)
            }
            None => Err(Error::OutOfMemory { size }),
        }
    }

    /// Takes `n` entries off the budget; true when it is used up.
    #[inline(always)]
    pub(crate) fn charge(&mut self, n: u64) -> bool {
        self.budget = self.budget.saturating_sub(n);
        self.budget == 0
    }

    /// Cache maintenance for a host range about to be mapped with `attrs`, once, before any entry
    /// mapping it becomes valid.
    pub(crate) fn cache_maintenance(&self, hpa: u64, size: u64, attrs: &Attrs) {
        let cmo = self.fmt.cmo(attrs);
        if cmo.contains(Cmo::CLEAN_DCACHE) {
            self.host.clean_dcache(Hpa::new(hpa), size);
        }
        if cmo.contains(Cmo::INVAL_ICACHE) {
            self.host.invalidate_icache(Hpa::new(hpa), size);
        }
    }

    /// The tables needed to split the huge leaves that the edges of `[start, last]` cut and that
    /// `cut_needs_split` says must be split, found by looking up the two edges (no walk, and no
    /// memory at all when no huge leaf is cut).
    pub(crate) fn edge_need<M: Mode>(
        &self,
        start: u64,
        last: u64,
        cut_needs_split: impl Fn(u64, Level) -> bool,
    ) -> [u64; MAX_LEVELS] {
        let geo = self.geometry();
        let need = [0u64; MAX_LEVELS];
        let end = last.wrapping_add(1);
        // An edge aligned to the largest leaf's span cuts no leaf (every leaf span divides it),
        // and an end past the input width cuts nothing: most calls look nothing up.
        let top = Level::from_index(7 - geo.leaf_mask().leading_zeros() as usize);
        let top_mask = geo.level_size(top) - 1;
        let cut_start = start & top_mask != 0;
        let cut_end = end & top_mask != 0 && end >> geo.ia_bits() == 0;
        if !cut_start && !cut_end {
            return need;
        }
        self.edge_need_slow::<M>(need, (start, last), (cut_start, cut_end), cut_needs_split)
    }

    /// [`Op::edge_need`] once an edge may cut a leaf.
    #[inline(never)]
    fn edge_need_slow<M: Mode>(
        &self,
        mut need: [u64; MAX_LEVELS],
        (start, last): (u64, u64),
        (cut_start, cut_end): (bool, bool),
        cut_needs_split: impl Fn(u64, Level) -> bool,
    ) -> [u64; MAX_LEVELS] {
        let geo = self.geometry();
        let fmt = self.fmt;
        // Per table level, the span index the first edge counted a table for (`u64::MAX`: none):
        // both edges inside one huge leaf share the tables of the spans they share.
        let mut first = [u64::MAX; MAX_LEVELS];
        let end = last.wrapping_add(1);
        let edges = [(start, start, cut_start), (last, end, cut_end)];
        for (e, &(inside, cut, may_cut)) in edges.iter().enumerate() {
            if !may_cut {
                continue;
            }
            // Down from the root only while the edge is inside a level's span: a leaf at a level
            // whose span the edge is aligned to (and every level below) is not cut.
            let mut level = geo.root_level();
            let mut table = self.host.phys_to_virt(self.root);
            let found = loop {
                if cut & (geo.level_size(level) - 1) == 0 {
                    break None;
                }
                // SAFETY: `table` is a live table of the tree at `level` (the tree's root, then
                // each step follows a table entry read with the mode's ordering; no table is
                // freed during the operation) and the index is below its entry count (`inside`
                // is within the input width).
                let raw = unsafe { EntryPtr::new(table, geo.index(inside, level)) }
                    .load_for(M::SHARED, F::BYTE_ORDER);
                match fmt.classify(raw, level) {
                    EntryKind::Table if level != Level::LEAF => {
                        table = self.host.phys_to_virt(fmt.table_addr(raw, level));
                        level = Level::from_index(level.index() - 1);
                    }
                    EntryKind::Leaf => break Some((level, raw)),
                    _ => break None,
                }
            };
            let Some((level, raw)) = found else {
                continue;
            };
            if level == Level::LEAF || !cut_needs_split(raw, level) {
                continue;
            }
            // The leaf at `level` is cut: a table at level-1, then one more below for every level
            // whose span the edge cuts too.
            for t in (0..level.index()).rev() {
                let parent_span = geo.level_size(Level::from_index(t + 1));
                if cut & (parent_span - 1) == 0 {
                    break;
                }
                let idx = cut / parent_span;
                if e == 0 {
                    first[t] = idx;
                } else if first[t] == idx {
                    continue;
                }
                need[t] += 1;
            }
        }
        need
    }
}

/// Checks a range against the page size and the input width; returns `(start, last)`.
pub(crate) fn check_range(geo: &Geometry, range: GpaRange) -> Result<(u64, u64), Error> {
    let page = geo.page_size();
    let start = range.start().raw();
    if start & (page - 1) != 0 {
        return Err(Error::UnalignedGpa {
            value: start,
            align: page,
        });
    }
    if range.size() & (page - 1) != 0 {
        return Err(Error::UnalignedGpa {
            value: range.size(),
            align: page,
        });
    }
    let last = range.last().raw();
    if last >> geo.ia_bits() != 0 {
        return Err(Error::GpaTooWide {
            gpa: range.last(),
            bits: geo.ia_bits(),
        });
    }
    Ok((start, last))
}

/// The span of one reservation chunk: about 512 leaf tables of work, so mapping or splitting a
/// huge range never reserves every table up front.
pub(crate) fn chunk_span(geo: &Geometry) -> u64 {
    if geo.levels() < 2 {
        return u64::MAX;
    }
    let l1 = geo.level_size(Level::from_index(1));
    l1.saturating_mul(512)
}

/// The last address of the chunk that starts at `at` (never past `last`).
#[inline]
pub(crate) fn chunk_last(at: u64, last: u64, span: u64) -> u64 {
    if span == u64::MAX {
        return last;
    }
    // `span` is a power of two: the chunk ends at the last address of `at`'s span.
    (at | (span - 1)).min(last)
}

/// A frozen entry met in shared mode: count the restart, give up past the bound.
#[inline]
pub(crate) fn frozen_restart<F: PteFormat, H: Host, M: Mode>(
    it: &mut Iter<'_, F, H, M>,
    restarts: &mut u32,
    start: u64,
) -> Result<(), Error> {
    debug_assert!(M::SHARED, "a frozen entry in a tree held exclusively");
    *restarts += 1;
    if *restarts > RETRY_LIMIT {
        return Err(Error::Retry {
            gpa: crate::addr::Gpa::new(it.gpa().max(start)),
        });
    }
    crate::sync::spin_hint();
    it.restart_here();
    Ok(())
}

/// Replaces the huge leaf under the iterator with a table of its pieces (a table from the
/// reserve, or the host). Returns `Ok(false)` if another updater changed the entry first (shared
/// mode): the caller looks at the new snapshot.
///
/// # Errors
/// [`Error::OutOfMemory`] when no table can be had.
pub(crate) fn split_here<F: PteFormat, H: Host, M: Mode>(
    op: &mut Op<'_, F, H>,
    it: &mut Iter<'_, F, H, M>,
) -> Result<bool, Error> {
    let fmt = op.fmt;
    let host = op.host;
    let level = it.level();
    debug_assert!(level.get() > 0 && it.kind() == EntryKind::Leaf);
    let child_level = Level::from_index(level.index() - 1);
    let child = op.take_table(child_level)?;
    let entries = op.geometry().entries(child_level);
    // SAFETY: `child` is a table of `child_level`'s size, owned by this operation.
    unsafe { fill_split(fmt, host, child, it.old(), level) };
    // SAFETY: `child` is allocated; its count is set before it is linked, so concurrent updaters
    // inside it keep an exact count.
    unsafe { host.meta(child).as_ref() }
        .count
        .store(entries as u32, crate::sync::Ordering::Relaxed);
    // Hardware may set A/D in the huge leaf until the table replaces it: retry until the table's
    // children were built from the value that is replaced.
    while crate::update::try_set(it, fmt.make_table(child, level)).is_err() {
        if it.kind() != EntryKind::Leaf || it.level() != level {
            op.cache.push(host, child_level, child);
            return Ok(false);
        }
        // SAFETY: as above; the table is still unlinked.
        unsafe { fill_split(fmt, host, child, it.old(), level) };
    }
    op.delta.tables[child_level.index()] += 1;
    op.delta.leaves[level.index()] -= 1;
    op.delta.leaves[child_level.index()] += entries as i64;
    Ok(true)
}

/// Fills `child` with the pieces of the huge leaf `huge` at `level`.
///
/// # Safety
/// `child` is an allocated, unlinked table of `level - 1`'s size.
pub(crate) unsafe fn fill_split<F: PteFormat, H: Host>(
    fmt: &F,
    host: &H,
    child: Hpa,
    huge: u64,
    level: Level,
) {
    let child_level = Level::from_index(level.index() - 1);
    let virt = host.phys_to_virt(child);
    let n = fmt.geometry().entries(child_level);
    // The pieces usually differ only by a constant step (the address field); checked at the ends.
    let c0 = fmt.split_child(huge, level, 0);
    let step = fmt.split_child(huge, level, 1).wrapping_sub(c0);
    let linear =
        fmt.split_child(huge, level, n - 1) == c0.wrapping_add(((n - 1) as u64).wrapping_mul(step));
    if linear {
        // SAFETY: slot 0 of `child`, an allocated table of `n` entries that is unlinked (caller).
        unsafe { crate::entry::EntryPtr::new(virt, 0).fill_unlinked(n, c0, step, F::BYTE_ORDER) };
        return;
    }
    for i in 0..n {
        // SAFETY: `i` is below the entry count of the table the caller guarantees.
        let e = unsafe { crate::entry::EntryPtr::new(virt, i) };
        let v = if linear {
            c0.wrapping_add((i as u64).wrapping_mul(step))
        } else {
            fmt.split_child(huge, level, i)
        };
        e.store_relaxed(v, F::BYTE_ORDER);
    }
}
