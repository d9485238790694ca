//! The explicit table API: map, unmap, protect, query, walk, split, collapse.
//!
//! For type-1 hypervisors that own their memory (like arm64's `kvm_pgtable` and the Rust peers).
//! Every operation is one loop over the walker ([`crate::iter`]), changes entries only through
//! [`crate::update`], reserves every table it may need before it changes anything, and ends with at
//! most one range-coalesced TLB flush before it hands detached tables back (see the flush contract
//! in [`crate::host`]).

use core::ops::ControlFlow;
use core::sync::atomic::Ordering;

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::format::{AdState, Attrs, Cmo, EntryKind, Perms, PteFormat};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::{Host, TableMeta, TlbFlush};
use crate::iter::{leaf_slot, lookup, Iter, Visit};
use crate::pool::TableCache;
use crate::update::{adjust_count, fill_table, set_entry, update_at, write_leaves, Op};

/// Options of [`Table::map_with`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MapOptions {
    /// The largest leaf level to use; it must be a level that can hold a leaf (`None`: the
    /// largest the geometry and alignment allow).
    pub max_level: Option<Level>,
    /// Preset the accessed flag, and the dirty flag of writable leaves, where the format has
    /// them (KVM's policy: no hardware A/D update is needed right after a map, and such entries
    /// have no volatile bits). With `false` hardware sets them on first access.
    pub young_dirty: bool,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            max_level: None,
            young_dirty: true,
        }
    }
}

/// A leaf found by [`Table::query`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The queried address translated: the leaf's output address plus the offset within it.
    pub hpa: Hpa,
    /// The first guest address the leaf maps.
    pub leaf_gpa: Gpa,
    /// The leaf's level.
    pub level: Level,
    /// Bytes mapped by the leaf.
    pub size: u64,
    /// Permissions and memory type.
    pub attrs: Attrs,
    /// Accessed/dirty state.
    pub ad: AdState,
    /// The raw entry.
    pub raw: u64,
}

/// One entry as [`Table::walk`] shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WalkEntry {
    /// The first guest address the entry maps.
    pub gpa: Gpa,
    /// The entry's level.
    pub level: Level,
    /// The raw entry.
    pub raw: u64,
    /// What the entry is.
    pub kind: EntryKind,
    /// How the walk visits it.
    pub visit: Visit,
}

/// Counters of a table tree.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tables in the tree, by level (the root included).
    pub tables: [u64; MAX_LEVELS],
    /// Leaves, by level.
    pub leaves: [u64; MAX_LEVELS],
    /// Bytes of the tables in the tree.
    pub table_bytes: u64,
    /// Bytes of reserved tables held for the next operations.
    pub cached_bytes: u64,
    /// Bytes of engine metadata per table page.
    pub metadata_bytes_per_table: u64,
}

impl Stats {
    /// Tables in the tree, all levels.
    pub fn total_tables(&self) -> u64 {
        self.tables.iter().sum()
    }

    /// Leaves, all levels.
    pub fn total_leaves(&self) -> u64 {
        self.leaves.iter().sum()
    }
}

/// A second-stage table tree for one VM (or one address space), on a host `H`, in format `F`.
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use tdp_core::testing::{HeapHost, TestFormat};
/// use tdp_core::{Attrs, Gpa, GpaRange, Hpa, Perms, Table};
///
/// let host = HeapHost::new(0x8000_0000, 1 << 20, 4096);
/// let mut table = Table::new(TestFormat::four_level(), &host).unwrap();
/// let range = GpaRange::new(Gpa::new(0x20_0000), 0x20_0000).unwrap();
/// table.map(range, Hpa::new(0x4020_0000), Attrs::normal(Perms::RW)).unwrap();
/// let m = table.query(Gpa::new(0x20_1234)).unwrap().unwrap();
/// assert_eq!(m.hpa, Hpa::new(0x4020_1234));
/// assert_eq!(m.size, 0x20_0000); // one 2 MiB leaf
/// # }
/// ```
pub struct Table<F: PteFormat, H: Host> {
    fmt: F,
    host: H,
    root: Hpa,
    cache: TableCache,
    keep: [u32; MAX_LEVELS],
    stats: Stats,
}

impl<F: PteFormat, H: Host> Table<F, H> {
    /// An empty table tree: allocates and clears the root.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] if the host has no root table.
    pub fn new(fmt: F, host: H) -> Result<Self, Error> {
        let geo = *fmt.geometry();
        let root_level = geo.root_level();
        let size = geo.table_size(root_level);
        let root = host.alloc_table(size).ok_or(Error::OutOfMemory { size })?;
        // SAFETY: `root` was just allocated with `size` bytes for a table of `root_level`.
        unsafe { fill_table(&fmt, &host, root, root_level) };
        let mut stats = Stats {
            metadata_bytes_per_table: core::mem::size_of::<TableMeta>() as u64,
            ..Stats::default()
        };
        stats.tables[root_level.index()] = 1;
        stats.table_bytes = size as u64;
        Ok(Table {
            fmt,
            host,
            root,
            cache: TableCache::new(&geo),
            keep: [2; MAX_LEVELS],
            stats,
        })
    }

    /// The root table's physical address (for the EPTP, VTTBR, hgatp, ...).
    pub fn root(&self) -> Hpa {
        self.root
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.fmt
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// Counters of the tree.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.cached_bytes = self.cache.bytes() as u64;
        s
    }

    /// How many reserved tables of each level to keep between operations (default 2).
    pub fn set_cache_keep(&mut self, keep: u32) {
        self.keep = [keep; MAX_LEVELS];
        self.cache.trim_to(&self.host, &self.keep);
    }

    fn geometry(&self) -> Geometry {
        *self.fmt.geometry()
    }

    /// Checks a range against the page size and the input width; returns `(start, last)`.
    fn check_range(&self, range: GpaRange) -> Result<(u64, u64), Error> {
        let geo = self.geometry();
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

    #[inline(always)]
    fn iter(&self, start: u64, last: u64, min_level: Level) -> Iter<'_, F, H> {
        // SAFETY: `self.root` is this tree's live root, built with `self.fmt` on `self.host`;
        // `start <= last` within the input width (checked by every caller); no table is freed
        // while the iterator lives, because tables are only freed in `finish`, after walks end.
        unsafe { Iter::new(&self.fmt, &self.host, self.root, start, last, min_level) }
    }

    fn reserve(&mut self, need: &[u64; MAX_LEVELS]) -> Result<(), Error> {
        self.cache
            .reserve(&self.host, need)
            .map_err(|size| Error::OutOfMemory { size })
    }

    /// Ends an operation: one flush for everything it changed, then detached tables go back to
    /// the cache, and the cache is trimmed.
    fn finish(&mut self, mut op: Op) {
        if let Some(flush) = op.flush() {
            self.host.flush_tlb(flush);
        }
        if op.detached.count > 0 {
            op.detached.release_into(&self.host, &mut self.cache);
        }
        let geo = self.geometry();
        for l in 0..geo.levels() as usize {
            self.stats.leaves[l] = self.stats.leaves[l].wrapping_add_signed(op.leaves[l]);
            if op.tables[l] != 0 {
                self.stats.tables[l] = self.stats.tables[l].wrapping_add_signed(op.tables[l]);
                let bytes = op.tables[l] * geo.table_size(Level::from_index(l)) as i64;
                self.stats.table_bytes = self.stats.table_bytes.wrapping_add_signed(bytes);
            }
        }
        self.cache.trim_to(&self.host, &self.keep);
    }

    /// The tables needed to split the huge leaves the edges of `[start, last]` may cut: at most
    /// one per edge and level below the root (one when both edges fall in the same span). An
    /// upper bound from the addresses alone, with no walk: once the cache holds it (the steady
    /// state, as freed and unused tables stay reserved) later operations reserve nothing.
    fn edge_need(&self, start: u64, last: u64) -> [u64; MAX_LEVELS] {
        let geo = self.geometry();
        let mut need = [0u64; MAX_LEVELS];
        let end = last + 1;
        for l in 1..geo.levels() as usize {
            let mask = geo.level_size(Level::from_index(l)) - 1;
            let cut_start = start & mask != 0;
            let cut_end = end & mask != 0 && end >> geo.ia_bits() == 0;
            let shared = cut_start && cut_end && start & !mask == last & !mask;
            need[l - 1] = u64::from(cut_start) + u64::from(cut_end) - u64::from(shared);
        }
        need
    }

    // --- map --------------------------------------------------------------------------------

    /// Maps `range` to the host range starting at `hpa` with `attrs`, using the largest leaves
    /// that alignment allows, with accessed/dirty preset (see [`MapOptions`]).
    ///
    /// # Errors
    /// As [`Table::map_with`].
    pub fn map(&mut self, range: GpaRange, hpa: Hpa, attrs: Attrs) -> Result<(), Error> {
        self.map_with(range, hpa, attrs, MapOptions::default())
    }

    /// Maps `range` to the host range starting at `hpa` with `attrs`.
    ///
    /// Each leaf is the largest that the geometry allows, that `opts.max_level` permits, whose
    /// span lies within `range` and at which `range.start()` and `hpa` agree in alignment.
    /// Mapping over empty entries needs no TLB flush (unless the format caches empty entries).
    ///
    /// # Errors
    /// - [`Error::UnalignedGpa`] / [`Error::UnalignedHpa`]: an address or the size is not a
    ///   multiple of the page size;
    /// - [`Error::GpaTooWide`] / [`Error::HpaTooWide`]: beyond the input or output width;
    /// - [`Error::InvalidLevel`]: `max_level` is not a level of this geometry that can hold a
    ///   leaf (e.g. a block level the arm64 granule does not have);
    /// - [`Error::UnsupportedAttrs`]: the format cannot encode `attrs`;
    /// - [`Error::AlreadyMapped`]: part of `range` is mapped (nothing is changed);
    /// - [`Error::OutOfMemory`]: the host ran out of table pages (nothing is changed).
    pub fn map_with(
        &mut self,
        range: GpaRange,
        hpa: Hpa,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<(), Error> {
        let geo = self.geometry();
        let (start, last) = self.check_range(range)?;
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
        self.fmt.check_attrs(&attrs)?;

        let mut leaf_ok = [false; MAX_LEVELS];
        for (l, ok) in leaf_ok.iter_mut().enumerate().take(geo.levels() as usize) {
            let level = Level::from_index(l);
            *ok = geo.is_leaf_level(level)
                && level <= max_level
                && (hpa.raw() ^ start) & (geo.level_size(level) - 1) == 0;
        }
        // One page whose tables all exist: write the leaf directly (the fault path's shape).
        if range.size() == geo.page_size() && self.map_page_fast(start, hpa, &attrs, opts) {
            return Ok(());
        }

        let cached_before = self.cache.lens();
        self.reserve(&map_bound(&geo, start, last, &leaf_ok))?;
        self.cache_maintenance(hpa, range.size(), &attrs);

        let mut op = Op::new();
        let conflict = self.map_walk(start, last, hpa.raw(), &attrs, &leaf_ok, opts, &mut op);
        if let Err(at) = conflict {
            // Undo: everything in [start, at) was empty before this call.
            if at > start {
                self.zap_walk(start, at - 1, &mut op);
            }
            self.finish(op);
            // Give back what this call reserved, so the host sees the memory it saw before.
            let keep = core::array::from_fn(|l| cached_before[l].min(self.keep[l]));
            self.cache.trim_to(&self.host, &keep);
            return Err(Error::AlreadyMapped { gpa: Gpa::new(at) });
        }
        self.finish(op);
        Ok(())
    }

    /// Cache maintenance for a host range about to be mapped with `attrs`, once, before any entry
    /// mapping it becomes valid.
    fn cache_maintenance(&self, hpa: Hpa, size: u64, attrs: &Attrs) {
        let cmo = self.fmt.cmo(attrs);
        if cmo.contains(Cmo::CLEAN_DCACHE) {
            self.host.clean_dcache(hpa, size);
        }
        if cmo.contains(Cmo::INVAL_ICACHE) {
            self.host.invalidate_icache(hpa, size);
        }
    }

    /// Maps the page at `gpa` if every table down to its level-0 slot exists and the slot is
    /// empty; false (nothing done) otherwise, for the general path to handle.
    fn map_page_fast(&mut self, gpa: u64, hpa: Hpa, attrs: &Attrs, opts: MapOptions) -> bool {
        // SAFETY: `self.root` is this tree's live root, built with `self.fmt` on `self.host`, and
        // `gpa` is within the input width (checked by the caller).
        let Some((slot, table)) = (unsafe { leaf_slot(&self.fmt, &self.host, self.root, gpa) })
        else {
            return false;
        };
        if slot.load(F::BYTE_ORDER) != self.fmt.empty(Level::LEAF) {
            return false;
        }
        self.cache_maintenance(hpa, self.fmt.geometry().page_size(), attrs);
        slot.store(
            self.fmt
                .make_leaf(hpa, Level::LEAF, attrs, opts.young_dirty),
            F::BYTE_ORDER,
        );
        // SAFETY: `table` is a live table of this tree (Host contract for `meta`).
        let count = &unsafe { self.host.meta(table).as_ref() }.count;
        count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.stats.leaves[0] += 1;
        if self.fmt.caches_empty_entries() {
            let page = self.fmt.geometry().page_size();
            self.host.flush_tlb(TlbFlush::Range {
                start: Gpa::new(gpa),
                size: page,
                level: Some(Level::LEAF),
                tables: false,
            });
        }
        true
    }

    /// Unmaps the 4 KiB-level leaf at `gpa` if its table keeps other entries (so nothing is
    /// freed); false (nothing done) otherwise, for the general path to handle.
    fn unmap_page_fast(&mut self, gpa: u64) -> bool {
        // SAFETY: as in `map_page_fast`.
        let Some((slot, table)) = (unsafe { leaf_slot(&self.fmt, &self.host, self.root, gpa) })
        else {
            return false;
        };
        let old = slot.load(F::BYTE_ORDER);
        let empty = self.fmt.empty(Level::LEAF);
        if old == empty {
            return true; // a hole: nothing to do, nothing to flush
        }
        // SAFETY: `table` is a live table of this tree (Host contract for `meta`).
        let count = &unsafe { self.host.meta(table).as_ref() }.count;
        let c = count.load(Ordering::Relaxed);
        if c <= 1 || self.fmt.classify(old, Level::LEAF) != EntryKind::Leaf {
            return false; // the table would become empty: the general path frees it
        }
        slot.store(empty, F::BYTE_ORDER);
        count.store(c - 1, Ordering::Relaxed);
        self.stats.leaves[0] -= 1;
        self.host.flush_tlb(TlbFlush::Range {
            start: Gpa::new(gpa),
            size: self.fmt.geometry().page_size(),
            level: Some(Level::LEAF),
            tables: false,
        });
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn map_walk(
        &mut self,
        start: u64,
        last: u64,
        hpa: u64,
        attrs: &Attrs,
        leaf_ok: &[bool; MAX_LEVELS],
        opts: MapOptions,
        op: &mut Op,
    ) -> Result<(), u64> {
        let Table {
            fmt,
            host,
            root,
            cache,
            ..
        } = self;
        let caches_empty = fmt.caches_empty_entries();
        // SAFETY: as in `Table::iter` (the cache is disjoint from the tree).
        let mut it = unsafe { Iter::new(&*fmt, &*host, *root, start, last, Level::LEAF) };
        it.without_post();
        while it.valid() {
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
                            // SAFETY: `n < run`: inside the current table.
                            while n < run && unsafe { it.ptr_at(n) }.load(F::BYTE_ORDER) == empty {
                                n += 1;
                            }
                            let out = hpa + (it.gpa() - start);
                            // SAFETY: the `n` slots are empty slots of the current table.
                            unsafe {
                                write_leaves(
                                    &*fmt,
                                    it.ptr(),
                                    n,
                                    level,
                                    out,
                                    attrs,
                                    opts.young_dirty,
                                )
                            };
                            adjust_count(&it, n as i64);
                            op.leaves[level.index()] += n as i64;
                            if caches_empty {
                                // What a walker cached for these empty slots may be smaller
                                // invalid entries (loaded through invalid tables): no level hint.
                                if level == Level::LEAF {
                                    op.flush_span(it.gpa(), n as u64 * size, level);
                                } else {
                                    op.flush_span_any_level(it.gpa(), n as u64 * size);
                                }
                            }
                            it.skip(n.saturating_sub(1));
                        } else {
                            // Level 0 always takes a leaf, so `level` is above it here.
                            let child_level = Level::from_index(level.index() - 1);
                            let child = cache.pop(&*host, child_level);
                            debug_assert!(child.is_some(), "map reserved too few tables");
                            let Some(child) = child else {
                                return Err(it.gpa().max(start));
                            };
                            if leaf_ok[child_level.index()] && it.span_in_range(start) {
                                // The whole child table maps leaves: write them before linking it,
                                // and do not walk them again.
                                let entries = it.geometry().entries(child_level);
                                let virt = host.phys_to_virt(child);
                                let out = hpa + (it.gpa() - start);
                                // SAFETY: `child` is a reserved table of `child_level`'s size,
                                // not yet reachable by any walker.
                                unsafe {
                                    write_leaves(
                                        &*fmt,
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
                                .store(entries as u32, core::sync::atomic::Ordering::Relaxed);
                                set_entry(&mut it, fmt.make_table(child, level));
                                it.skip_children();
                                op.leaves[child_level.index()] += entries as i64;
                                if caches_empty {
                                    // A walker may have cached the empty entry; address fences
                                    // may cover only leaves, so flush as for a table change.
                                    op.flush_table_span(it.gpa(), size);
                                }
                            } else {
                                // SAFETY: `child` is a reserved table of `child_level`'s size.
                                unsafe { fill_table(&*fmt, &*host, child, child_level) };
                                set_entry(&mut it, fmt.make_table(child, level));
                                if caches_empty {
                                    op.flush_table_span(it.gpa(), size);
                                }
                            }
                            op.tables[child_level.index()] += 1;
                        }
                    }
                    _ => return Err(it.gpa().max(start)),
                }
            }
            it.next();
        }
        Ok(())
    }

    // --- unmap ------------------------------------------------------------------------------

    /// Removes every mapping in `range`, splitting huge leaves the range cuts and freeing tables
    /// that become empty (known from per-table counts, never by rescanning). Holes are skipped.
    /// One TLB flush covers everything removed, before any table page is released.
    ///
    /// # Errors
    /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`]; [`Error::OutOfMemory`] if a huge leaf cut
    /// by the range cannot be split (nothing is changed).
    pub fn unmap(&mut self, range: GpaRange) -> Result<(), Error> {
        let (start, last) = self.check_range(range)?;
        if range.size() == self.geometry().page_size() && self.unmap_page_fast(start) {
            return Ok(());
        }
        self.reserve(&self.edge_need(start, last))?;
        let mut op = Op::new();
        self.zap_walk(start, last, &mut op);
        self.finish(op);
        Ok(())
    }

    fn zap_walk(&mut self, start: u64, last: u64, op: &mut Op) {
        let Table {
            fmt,
            host,
            root,
            cache,
            ..
        } = self;
        // SAFETY: as in `Table::iter`.
        let mut it = unsafe { Iter::new(&*fmt, &*host, *root, start, last, Level::LEAF) };
        while it.valid() {
            let level = it.level();
            match (it.visit(), it.kind()) {
                (Visit::Leaf, EntryKind::Empty) => {}
                (Visit::TablePre, _) => {
                    // A table of leaves wholly inside the range goes at once: its count is its
                    // number of leaves, and nothing needs their state.
                    if level.get() == 1 && it.span_in_range(start) {
                        let child = fmt.table_addr(it.old(), level);
                        // SAFETY: `child` is a live table of this tree (Host contract for `meta`).
                        let leaves = unsafe { host.meta(child).as_ref() }.count();
                        set_entry(&mut it, fmt.empty(level));
                        op.detached.push(&*host, Level::LEAF, child);
                        op.tables[0] -= 1;
                        op.leaves[0] -= i64::from(leaves);
                        op.flush_table_span(it.gpa(), it.geometry().level_size(level));
                    }
                }
                (Visit::Leaf, kind) => {
                    if it.span_in_range(start) {
                        // Zap the run of leaves (and empty slots) from here, up to a table.
                        let empty = fmt.empty(level);
                        let run = it.run_len();
                        let (mut n, mut zapped, mut leaves) = (0, 0i64, 0i64);
                        while n < run {
                            // SAFETY: `n < run`: inside the current table.
                            let p = unsafe { it.ptr_at(n) };
                            let cur = p.load(F::BYTE_ORDER);
                            if cur != empty {
                                match fmt.classify(cur, level) {
                                    EntryKind::Table => break,
                                    k => leaves += i64::from(k == EntryKind::Leaf),
                                }
                                p.store(empty, F::BYTE_ORDER);
                                zapped += 1;
                            }
                            n += 1;
                        }
                        adjust_count(&it, -zapped);
                        op.leaves[level.index()] -= leaves;
                        let size = it.geometry().level_size(level);
                        op.flush_span(it.gpa(), n as u64 * size, level);
                        it.skip(n.saturating_sub(1));
                    } else if kind == EntryKind::Leaf {
                        split_here(&mut it, op, cache);
                    }
                }
                (Visit::TablePost, EntryKind::Table) => {
                    let child = fmt.table_addr(it.old(), level);
                    // SAFETY: `child` is a live table of this tree (Host contract for `meta`).
                    let count = unsafe { host.meta(child).as_ref() }.count();
                    if count == 0 {
                        set_entry(&mut it, fmt.empty(level));
                        let child_level = Level::from_index(level.index() - 1);
                        op.detached.push(&*host, child_level, child);
                        op.tables[child_level.index()] -= 1;
                        op.flush_table_span(it.gpa(), it.geometry().level_size(level));
                    } else if it.exhausted() {
                        // The table keeps entries, so every ancestor keeps it: nothing above can
                        // become empty.
                        break;
                    }
                }
                (Visit::TablePost, _) => {}
            }
            it.next();
        }
    }

    // --- protect ----------------------------------------------------------------------------

    /// Sets the permissions of every leaf in `range` to `perms`, splitting huge leaves the range
    /// cuts; memory type and A/D state are kept, holes are skipped. Permission changes are made in
    /// place (no break-before-make); the TLB is flushed once if any permission was removed.
    ///
    /// # Errors
    /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`], [`Error::UnsupportedAttrs`] (checked with
    /// write-back memory, and with each leaf's memory type where the format says permissions
    /// depend on it), [`Error::OutOfMemory`] for a split (nothing is changed in any case).
    pub fn protect(&mut self, range: GpaRange, perms: Perms) -> Result<(), Error> {
        let (start, last) = self.check_range(range)?;
        self.fmt.check_attrs(&Attrs::normal(perms))?;
        if self.fmt.perms_depend_on_memtype() {
            self.check_leaf_attrs(start, last, perms)?;
        }
        self.reserve(&self.edge_need(start, last))?;
        if perms.intersects(Perms::EXEC) && self.may_need_icache(perms) {
            self.icache_before_exec(start, last, perms);
        }
        let mut op = Op::new();
        {
            let Table {
                fmt,
                host,
                root,
                cache,
                ..
            } = self;
            // SAFETY: as in `Table::iter`.
            let mut it = unsafe { Iter::new(&*fmt, &*host, *root, start, last, Level::LEAF) };
            it.without_post();
            // The decision for the last attribute key seen: (key, changes, removes permission).
            let mut last_key: Option<(u64, bool, bool)> = None;
            while it.valid() {
                if it.visit() == Visit::Leaf && it.kind() == EntryKind::Leaf {
                    let level = it.level();
                    if it.span_in_range(start) {
                        // The run of leaves (and empty slots) from here, up to a table.
                        let run = it.run_len();
                        let size = it.geometry().level_size(level);
                        let (mut n, mut lo, mut hi) = (0, usize::MAX, 0);
                        while n < run {
                            // SAFETY: `n < run`: inside the current table.
                            let p = unsafe { it.ptr_at(n) };
                            let cur = p.load(F::BYTE_ORDER);
                            match fmt.classify(cur, level) {
                                EntryKind::Leaf => {}
                                EntryKind::Table => break,
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
                                update_at(&*fmt, p, cur, level, |v| {
                                    fmt.with_perms(v, level, perms)
                                });
                                if removes {
                                    lo = lo.min(n);
                                    hi = n + 1;
                                }
                            }
                            n += 1;
                        }
                        if lo < hi {
                            op.flush_span(
                                it.gpa() + lo as u64 * size,
                                (hi - lo) as u64 * size,
                                level,
                            );
                        }
                        if n > 0 {
                            it.skip(n - 1);
                        }
                    } else {
                        split_here(&mut it, &mut op, cache);
                    }
                }
                it.next();
            }
        }
        self.finish(op);
        Ok(())
    }

    /// Whether any leaf made executable with `perms` could need an instruction-cache
    /// invalidation (never, on coherent formats: then no pre-pass is made).
    fn may_need_icache(&self, perms: Perms) -> bool {
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
        .any(|a| self.fmt.cmo(&a).contains(Cmo::INVAL_ICACHE))
    }

    /// Checks that every leaf in `[start, last]` can take `perms` with its memory type.
    fn check_leaf_attrs(&self, start: u64, last: u64, perms: Perms) -> Result<(), Error> {
        let mut it = self.iter(start, last, Level::LEAF);
        it.without_post();
        let mut checked: Option<u64> = None;
        while it.valid() {
            if it.visit() == Visit::Leaf && it.kind() == EntryKind::Leaf {
                // Leaves with one attribute key share the answer.
                let key = self.fmt.leaf_key(it.old(), it.level());
                if checked != Some(key) {
                    let attrs = self.fmt.leaf_attrs(it.old(), it.level());
                    self.fmt.check_attrs(&Attrs { perms, ..attrs })?;
                    checked = Some(key);
                }
            }
            it.next();
        }
        Ok(())
    }

    /// Invalidates the instruction cache for the host memory of every leaf in `[start, last]`
    /// that `perms` makes executable, one call per contiguous host run, before any entry changes.
    fn icache_before_exec(&self, start: u64, last: u64, perms: Perms) {
        let mut run: Option<(u64, u64)> = None;
        let mut it = self.iter(start, last, Level::LEAF);
        it.without_post();
        while it.valid() {
            if it.visit() == Visit::Leaf && it.kind() == EntryKind::Leaf {
                let level = it.level();
                let attrs = self.fmt.leaf_attrs(it.old(), level);
                let gains = perms & Perms::EXEC & !attrs.perms;
                let new = Attrs { perms, ..attrs };
                if !gains.is_empty() && self.fmt.cmo(&new).contains(Cmo::INVAL_ICACHE) {
                    let size = it.geometry().level_size(level);
                    let a = it.gpa().max(start);
                    let b = (it.gpa() + (size - 1)).min(last);
                    let hpa = self.fmt.leaf_addr(it.old(), level).raw() + (a - it.gpa());
                    run = match run {
                        Some((s, e)) if e == hpa => Some((s, hpa + (b - a + 1))),
                        Some((s, e)) => {
                            self.host.invalidate_icache(Hpa::new(s), e - s);
                            Some((hpa, hpa + (b - a + 1)))
                        }
                        None => Some((hpa, hpa + (b - a + 1))),
                    };
                }
            }
            it.next();
        }
        if let Some((s, e)) = run {
            self.host.invalidate_icache(Hpa::new(s), e - s);
        }
    }

    // --- query and walk ---------------------------------------------------------------------

    /// Translates `gpa`: the leaf that maps it, or `None`.
    ///
    /// # Errors
    /// [`Error::GpaTooWide`] if `gpa` is beyond the input width.
    #[inline]
    pub fn query(&self, gpa: Gpa) -> Result<Option<Mapping>, Error> {
        let geo = self.geometry();
        if gpa.raw() >> geo.ia_bits() != 0 {
            return Err(Error::GpaTooWide {
                gpa,
                bits: geo.ia_bits(),
            });
        }
        // SAFETY: `self.root` is this tree's live root, built with `self.fmt` on `self.host`, and
        // `gpa` is within the input width (checked above).
        let (level, raw) = unsafe { lookup(&self.fmt, &self.host, self.root, gpa.raw()) };
        if self.fmt.classify(raw, level) != EntryKind::Leaf {
            return Ok(None);
        }
        let size = geo.level_size(level);
        let base = self.fmt.leaf_addr(raw, level);
        Ok(Some(Mapping {
            hpa: Hpa::new(base.raw() + (gpa.raw() & (size - 1))),
            leaf_gpa: Gpa::new(gpa.raw() & !(size - 1)),
            level,
            size,
            attrs: self.fmt.leaf_attrs(raw, level),
            ad: self.fmt.ad_state(raw, level),
            raw,
        }))
    }

    /// Visits every entry that maps part of `range` in pre-order (tables before and after their
    /// children), until the visitor breaks. Read-only.
    ///
    /// # Errors
    /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`].
    pub fn walk(
        &self,
        range: GpaRange,
        mut visitor: impl FnMut(&WalkEntry) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let (start, last) = self.check_range(range)?;
        let mut it = self.iter(start, last, Level::LEAF);
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
            it.next();
        }
        Ok(())
    }

    // --- split and collapse -----------------------------------------------------------------

    /// Splits every leaf above `level` that maps part of `range` into leaves of `level` (only the
    /// parts within `range` go all the way down). Translations do not change, so no TLB flush is
    /// needed (except where the format needs break-before-make).
    ///
    /// # Errors
    /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`], [`Error::InvalidLevel`] if `level` cannot
    /// hold a leaf, [`Error::OutOfMemory`] (nothing is changed).
    pub fn split(&mut self, range: GpaRange, level: Level) -> Result<(), Error> {
        let (start, last) = self.check_range(range)?;
        let geo = self.geometry();
        if !geo.is_leaf_level(level) {
            return Err(Error::InvalidLevel { level });
        }
        if level >= geo.root_level() {
            return Ok(());
        }
        let min = Level::from_index(level.index() + 1);
        // Count the tables the split will need: only entries at `min` and above are visited.
        let mut need = [0u64; MAX_LEVELS];
        {
            let mut it = self.iter(start, last, min);
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
        }
        self.reserve(&need)?;
        let mut op = Op::new();
        {
            let Table {
                fmt,
                host,
                root,
                cache,
                ..
            } = self;
            // SAFETY: as in `Table::iter`.
            let mut it = unsafe { Iter::new(&*fmt, &*host, *root, start, last, min) };
            it.without_post();
            while it.valid() {
                if it.visit() == Visit::Leaf && it.kind() == EntryKind::Leaf && it.level() > level {
                    split_here(&mut it, &mut op, cache);
                }
                it.next();
            }
        }
        self.finish(op);
        Ok(())
    }

    /// Replaces every table within `range` whose entries are leaves with the same attributes
    /// mapping one contiguous, suitably aligned host range by a single huge leaf, bottom-up (4 KiB
    /// leaves can become 2 MiB and then 1 GiB leaves in one call). Accessed/dirty state is merged.
    /// The TLB is flushed once, before the replaced tables are released.
    ///
    /// # Errors
    /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`].
    pub fn collapse(&mut self, range: GpaRange) -> Result<(), Error> {
        let (start, last) = self.check_range(range)?;
        let mut op = Op::new();
        {
            let Table {
                fmt, host, root, ..
            } = self;
            let geo = *fmt.geometry();
            // SAFETY: as in `Table::iter`.
            let mut it = unsafe { Iter::new(&*fmt, &*host, *root, start, last, Level::LEAF) };
            while it.valid() {
                let level = it.level();
                if it.visit() == Visit::TablePost
                    && it.kind() == EntryKind::Table
                    && geo.is_leaf_level(level)
                    && it.span_in_range(start)
                {
                    let child = fmt.table_addr(it.old(), level);
                    if let Some(huge) = collapsible(&*fmt, &*host, child, level) {
                        let child_level = Level::from_index(level.index() - 1);
                        set_entry(&mut it, huge);
                        op.detached.push(&*host, child_level, child);
                        op.tables[child_level.index()] -= 1;
                        op.leaves[child_level.index()] -= geo.entries(child_level) as i64;
                        op.leaves[level.index()] += 1;
                        op.flush_table_span(it.gpa(), geo.level_size(level));
                    }
                }
                it.next();
            }
        }
        self.finish(op);
        Ok(())
    }

    // --- teardown ---------------------------------------------------------------------------

    /// Frees every table (after one whole-VM flush), the root and the reserved tables.
    fn teardown(&mut self) {
        let geo = self.geometry();
        let mut op = Op::new();
        if geo.levels() > 1 {
            let last = (1u64 << geo.ia_bits()) - 1;
            let min = Level::from_index(1);
            let Table {
                fmt, host, root, ..
            } = self;
            // SAFETY: as in `Table::iter`.
            let mut it = unsafe { Iter::new(&*fmt, &*host, *root, 0, last, min) };
            while it.valid() {
                let level = it.level();
                let detach = match it.visit() {
                    Visit::TablePre => level == min,
                    Visit::TablePost => true,
                    Visit::Leaf => false,
                };
                if detach && it.kind() == EntryKind::Table {
                    let child = fmt.table_addr(it.old(), level);
                    op.detached
                        .push(&*host, Level::from_index(level.index() - 1), child);
                }
                it.next();
            }
        }
        self.host.flush_tlb(TlbFlush::All);
        op.detached.release_into(&self.host, &mut self.cache);
        self.cache.trim_to(&self.host, &[0; MAX_LEVELS]);
        // SAFETY: the root came from `alloc_table(root size)`, nothing references it any more and
        // the flush above covered everything it mapped.
        unsafe {
            self.host
                .free_table(self.root, geo.table_size(geo.root_level()))
        };
    }
}

impl<F: PteFormat, H: Host> Drop for Table<F, H> {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Replaces the huge leaf under the iterator with a table of its pieces, taken from the cache.
fn split_here<F: PteFormat, H: Host>(it: &mut Iter<'_, F, H>, op: &mut Op, cache: &mut TableCache) {
    let fmt = it.fmt;
    let host = it.host;
    let level = it.level();
    debug_assert!(level.get() > 0 && it.kind() == EntryKind::Leaf);
    let child_level = Level::from_index(level.index() - 1);
    let Some(child) = cache.pop(host, child_level) else {
        debug_assert!(false, "operation reserved too few tables");
        return;
    };
    let entries = it.geometry().entries(child_level);
    // SAFETY: `child` is a reserved table of `child_level`'s size, owned by this operation.
    unsafe { fill_split(fmt, host, child, it.old(), level) };
    // Hardware may set A/D in the huge leaf until the table replaces it: retry until the table's
    // children were built from the value that is replaced.
    while crate::update::try_set_entry(it, fmt.make_table(child, level)).is_err() {
        // SAFETY: as above; the table is still unlinked.
        unsafe { fill_split(fmt, host, child, it.old(), level) };
    }
    // SAFETY: `child` is now a live table of this tree.
    let meta = unsafe { host.meta(child).as_ref() };
    meta.count
        .store(entries as u32, core::sync::atomic::Ordering::Relaxed);
    op.tables[child_level.index()] += 1;
    op.leaves[level.index()] -= 1;
    op.leaves[child_level.index()] += entries as i64;
}

/// Fills `child` with the pieces of the huge leaf `huge` at `level`.
///
/// # Safety
/// `child` is an allocated, unlinked table of `level - 1`'s size.
unsafe fn fill_split<F: PteFormat, H: Host>(
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

/// The huge leaf at `level` that can replace the table `child`, if its entries allow it.
fn collapsible<F: PteFormat, H: Host>(fmt: &F, host: &H, child: Hpa, level: Level) -> Option<u64> {
    let geo = fmt.geometry();
    let child_level = Level::from_index(level.index() - 1);
    let virt = host.phys_to_virt(child);
    // SAFETY: `child` is a live table of the tree with at least one entry.
    let first = unsafe { crate::entry::EntryPtr::new(virt, 0) }.load(F::BYTE_ORDER);
    if fmt.classify(first, child_level) != EntryKind::Leaf {
        return None;
    }
    let base = fmt.leaf_addr(first, child_level).raw();
    if base & (geo.level_size(level) - 1) != 0 {
        return None;
    }
    let key = fmt.leaf_key(first, child_level);
    let step = geo.level_size(child_level);
    let mut ad = fmt.ad_bits(first, child_level);
    for i in 1..geo.entries(child_level) {
        // SAFETY: `i` is below the entry count of the live table `child`.
        let raw = unsafe { crate::entry::EntryPtr::new(virt, i) }.load(F::BYTE_ORDER);
        if fmt.classify(raw, child_level) != EntryKind::Leaf
            || fmt.leaf_addr(raw, child_level).raw() != base + i as u64 * step
            || fmt.leaf_key(raw, child_level) != key
        {
            return None;
        }
        ad |= fmt.ad_bits(raw, child_level);
    }
    Some(fmt.make_huge(first, level, ad))
}

/// Upper bound of the tables a map of `[start, last]` needs, by level.
fn map_bound(
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
