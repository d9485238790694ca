//! Single-entry paths: map one leaf, unmap one leaf, translate one address. These are the
//! per-call shapes of a hypervisor (the page fault, a balloon or notifier unmap of one page, a
//! software walk of one address): one walk from the root straight to the slot at the target
//! level, one entry written, no operation context built.
//!
//! Each public call tries its single-entry path first and falls back to the general operation
//! (in [`super::map`] / [`super::zap`]) whenever the shape is anything else: a table missing on
//! the way, a huge leaf to split, a table that would become empty and must be freed, an occupied
//! or frozen slot. The fallback sees the tree as the single-entry path left it: untouched.
//!
//! Both modes: in shared mode the slot is changed with one compare-exchange against the value the
//! walk read (a failure falls back, and the general path refreshes and retries); in exclusive mode
//! with a plain store, or an atomic swap where hardware may set bits in the old entry (the
//! volatile rule of [`crate::update`]). Counts are changed through [`crate::update::count_add`].

use crate::addr::{GpaRange, Hpa, Level};
use crate::entry::EntryPtr;
use crate::format::{Attrs, Cmo, EntryKind, PteFormat};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::Host;
use crate::mode::Mode;
use crate::pool::TableCache;
use crate::update::{count_add, install_leaf, link_table, zap_leaf};

/// Attributes validated and encoded once: a leaf at `level` for `hpa` is
/// `raw | fmt.leaf_addr_bits(hpa, level)`. Kept by each caller's context, so a run of calls
/// with the same attributes (every fault of a memslot) validates and encodes them once.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeafTemplate {
    attrs: Attrs,
    level: Level,
    young_dirty: bool,
    raw: u64,
    cmo: Cmo,
}

impl LeafTemplate {
    /// The leaf for address 0 (OR in `leaf_addr_bits` of the address).
    #[inline(always)]
    pub(crate) fn raw(&self) -> u64 {
        self.raw
    }

    /// Cache maintenance each newly mapped host range needs.
    #[inline(always)]
    pub(crate) fn cmo(&self) -> Cmo {
        self.cmo
    }

    /// The template for `attrs` at `level`, reusing `cached` when it was made for the same.
    ///
    /// # Errors
    /// [`crate::Error::UnsupportedAttrs`] from the format.
    #[inline(always)]
    pub(crate) fn get<F: PteFormat>(
        cached: &mut Option<LeafTemplate>,
        fmt: &F,
        attrs: &Attrs,
        level: Level,
        young_dirty: bool,
    ) -> Result<LeafTemplate, crate::Error> {
        if let Some(t) = cached {
            if t.attrs == *attrs && t.level == level && t.young_dirty == young_dirty {
                return Ok(*t);
            }
        }
        let t = Self::make(fmt, attrs, level, young_dirty)?;
        *cached = Some(t);
        Ok(t)
    }

    #[inline(never)]
    fn make<F: PteFormat>(
        fmt: &F,
        attrs: &Attrs,
        level: Level,
        young_dirty: bool,
    ) -> Result<LeafTemplate, crate::Error> {
        fmt.check_attrs(attrs)?;
        Ok(LeafTemplate {
            attrs: *attrs,
            level,
            young_dirty,
            raw: fmt.make_leaf(Hpa::new(0), level, attrs, young_dirty),
            cmo: fmt.cmo(attrs),
        })
    }
}

/// The level of the one leaf a map of `range` to `hpa` would write, when the call has that
/// shape: `range` is exactly one entry of a leaf level that `max_level` allows, and both
/// addresses are aligned to it and within the widths. `None` for every other call (including
/// every malformed one: the general path reports the error).
#[inline(always)]
pub(crate) fn one_leaf_level(
    geo: &Geometry,
    range: GpaRange,
    hpa: Hpa,
    max_level: Option<Level>,
) -> Option<Level> {
    let size = range.size();
    let level = if size == geo.page_size() {
        Level::LEAF
    } else {
        leaf_level_of_size(geo, size)?
    };
    if let Some(max) = max_level {
        if level > max || !geo.is_leaf_level(max) {
            return None;
        }
    }
    let (start, pa) = (range.start().raw(), hpa.raw());
    let mask = size - 1;
    // Aligned, and within the input and output widths: one test of the bits that must be clear.
    let bad =
        ((start | pa) & mask) | (start | mask) >> geo.ia_bits() | (pa | mask) >> geo.oa_bits();
    (bad == 0).then_some(level)
}

/// The leaf level whose entries map exactly `size` bytes, if any.
#[inline(always)]
fn leaf_level_of_size(geo: &Geometry, size: u64) -> Option<Level> {
    if !size.is_power_of_two() {
        return None;
    }
    let bits = size.trailing_zeros();
    let mut l = 1;
    while l < geo.levels() as usize {
        let level = Level::from_index(l);
        if geo.shift(level) == bits {
            return geo.is_leaf_level(level).then_some(level);
        }
        l += 1;
    }
    None
}

/// The level of the one entry an unmap of `range` would remove if a leaf of that level maps it:
/// `range` is exactly one aligned entry of a leaf level within the input width.
#[inline(always)]
pub(crate) fn one_entry_level(geo: &Geometry, range: GpaRange) -> Option<Level> {
    let size = range.size();
    let level = if size == geo.page_size() {
        Level::LEAF
    } else {
        leaf_level_of_size(geo, size)?
    };
    let start = range.start().raw();
    let mask = size - 1;
    (start & mask == 0 && (start | mask) >> geo.ia_bits() == 0).then_some(level)
}

/// The table the last single-entry call reached, kept by [`crate::Table`] across its calls so
/// that a run of calls on neighbouring addresses walks from the root once per table instead of
/// once per call (Asterinas's page-table cursor keeps its path the same way).
///
/// Exclusive mode only, and only while nothing but single-entry calls runs: `Table` forgets it
/// before every other operation and whenever it hands out its tree, so it never names a table
/// that was freed or replaced (single-entry calls free nothing).
#[derive(Copy, Clone, Debug)]
pub(crate) struct Cursor {
    /// `gpa >> shift` of the addresses the table maps.
    tag: u64,
    /// The table (0: none).
    table: Hpa,
    level: Level,
    /// The address bits above what the table spans.
    shift: u32,
}

impl Cursor {
    pub(crate) const fn new() -> Cursor {
        Cursor {
            tag: 0,
            table: Hpa::new(0),
            level: Level::LEAF,
            shift: 0,
        }
    }

    /// Forgets the table (before anything that may free or replace one).
    #[inline(always)]
    pub(crate) fn forget(&mut self) {
        self.table = Hpa::new(0);
    }
}

/// The address bits above what one table at `level` spans.
#[inline(always)]
fn span_shift(geo: &Geometry, level: Level) -> u32 {
    geo.shift(level) + geo.index_bits(level)
}

/// Where a walk towards a slot stopped above its level: the entry (`ptr`, in the live table `pa`
/// at `level`) and what it holds.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Stopped {
    pub(crate) kind: EntryKind,
    ptr: EntryPtr,
    pa: Hpa,
    level: Level,
}

/// The slot at `level` for `gpa` and its table's physical address, walking only through tables
/// (or starting at the cursor's table when it spans `gpa` at `level`, and leaving the cursor at
/// the table reached); `Err` with where the walk stopped above `level` otherwise.
///
/// # Safety
/// `root` is the live root of a tree built with `fmt` on `host`, `gpa` is within the input
/// width, `level` is a level of the geometry, no table of the tree is freed meanwhile
/// (exclusive: the caller holds the tree; shared: the caller's read-side section), and a cursor
/// names a live table of this tree (see [`Cursor`]).
#[inline(always)]
pub(crate) unsafe fn slot_at<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    gpa: u64,
    level: Level,
    cursor: Option<&mut Cursor>,
) -> Result<(EntryPtr, Hpa), Stopped> {
    let geo = fmt.geometry();
    if let Some(c) = &cursor {
        if c.table != Hpa::new(0) && c.level == level && c.tag == gpa >> c.shift {
            // SAFETY: the cursor names a live table of this tree at `level` (caller contract)
            // that maps `gpa` (the tag); the index is below its entry count.
            let ptr = unsafe { EntryPtr::new(host.phys_to_virt(c.table), geo.index(gpa, level)) };
            return Ok((ptr, c.table));
        }
    }
    let mut l = geo.root_level();
    let mut pa = root;
    loop {
        // SAFETY: `pa` is a live table of the tree at level `l` (the caller's root, then each step
        // follows a table entry of the tree read with the mode's ordering) and the index is below
        // its entry count.
        let ptr = unsafe { EntryPtr::new(host.phys_to_virt(pa), geo.index(gpa, l)) };
        if l == level {
            if let Some(c) = cursor {
                if l != geo.root_level() {
                    let shift = span_shift(geo, level);
                    *c = Cursor {
                        tag: gpa >> shift,
                        table: pa,
                        level,
                        shift,
                    };
                }
            }
            return Ok((ptr, pa));
        }
        let raw = ptr.load_for(M::SHARED, F::BYTE_ORDER);
        let kind = fmt.classify(raw, l);
        if kind != EntryKind::Table {
            return Err(Stopped {
                kind,
                ptr,
                pa,
                level: l,
            });
        }
        pa = fmt.table_addr(raw, l);
        l = Level::from_index(l.index() - 1);
    }
}

/// One leaf to install: at `level` for `gpa`, the entry `raw` mapping `hpa`, with the cache
/// maintenance `cmo` its host range needs first.
#[derive(Copy, Clone, Debug)]
pub(crate) struct OneLeaf {
    pub(crate) gpa: u64,
    pub(crate) level: Level,
    pub(crate) raw: u64,
    pub(crate) hpa: Hpa,
    pub(crate) cmo: Cmo,
}

/// Where the tables a single-entry map adds come from: the caller's reserve, and (exclusive mode)
/// the host when the reserve has none of a level. Shared mode takes only from the reserve, which
/// the caller tops up before it takes its lock (nothing is allocated under it).
pub(crate) struct Tables<'a> {
    pub(crate) cache: &'a mut TableCache,
    pub(crate) from_host: bool,
}

/// What [`map_one`] did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mapped {
    /// The leaf is in; bit `k` set: a table of level `k` was added on the way (one per level).
    Done(u8),
    /// Nothing changed: the general path must run.
    Fallback,
    /// The host had no table of this size (exclusive mode): nothing changed, and the call fails
    /// as the general path would.
    OutOfMemory(usize),
}

/// Maps `leaf` if its slot is empty. Tables missing on the way (an empty entry above the leaf's
/// level) are taken from `tables` all at once, filled, linked to each other and given the leaf
/// while no walker can reach them, and then published with one write of the empty entry (a
/// compare-exchange in shared mode), so the chain appears whole or not at all. Anything else
/// (an occupied or frozen slot, a huge leaf on the way, a table short, a lost race, a format
/// that caches empty entries) changes nothing and asks for the general path. Cache maintenance
/// for the page is done before the leaf becomes reachable.
///
/// # Safety
/// As [`slot_at`] for `leaf.gpa` and `leaf.level`; `leaf.raw` is a valid leaf of that level.
#[inline(always)]
pub(crate) unsafe fn map_one<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    leaf: OneLeaf,
    cursor: Option<&mut Cursor>,
    tables: Tables<'_>,
) -> Mapped {
    let OneLeaf {
        gpa,
        level,
        raw: leaf,
        hpa,
        cmo,
    } = leaf;
    // SAFETY: the caller's contract.
    let (slot, table) = match unsafe { slot_at::<F, H, M>(fmt, host, root, gpa, level, cursor) } {
        Ok(s) => s,
        Err(stop) if stop.kind == EntryKind::Empty && !fmt.caches_empty_entries() => {
            // SAFETY: `stop` is an entry of a live table of this tree (from the walk).
            return unsafe {
                build_and_map::<F, H, M>(fmt, host, stop, leaf, tables, (gpa, hpa, cmo), level)
            };
        }
        Err(_) => return Mapped::Fallback,
    };
    if slot.load_for(M::SHARED, F::BYTE_ORDER) != fmt.empty(level) {
        return Mapped::Fallback;
    }
    cache_maintenance(host, fmt, hpa, level, cmo);
    // SAFETY: `slot` is a slot of the live table `table` at `level`.
    if !unsafe { install_leaf::<F, M>(fmt, slot, level, leaf) } {
        return Mapped::Fallback; // shared mode: another updater filled or froze it first
    }
    // SAFETY: `table` is a live table of this tree (Host contract for `meta`).
    count_add::<M>(unsafe { host.meta(table).as_ref() }, 1);
    Mapped::Done(0)
}

#[inline(always)]
fn cache_maintenance<F: PteFormat, H: Host>(host: &H, fmt: &F, hpa: Hpa, level: Level, cmo: Cmo) {
    if !cmo.is_empty() {
        let size = fmt.geometry().level_size(level);
        if cmo.contains(Cmo::CLEAN_DCACHE) {
            host.clean_dcache(hpa, size);
        }
        if cmo.contains(Cmo::INVAL_ICACHE) {
            host.invalidate_icache(hpa, size);
        }
    }
}

/// The tables from `stop.level - 1` down to `level` for `gpa`, built unlinked with `leaf` in its
/// slot, then published at `stop`. See [`map_one`].
///
/// # Safety
/// `stop` is an entry of a live table of this tree (read empty by the walk); as [`map_one`].
#[inline(never)]
unsafe fn build_and_map<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    stop: Stopped,
    leaf: u64,
    tables: Tables<'_>,
    (gpa, hpa, cmo): (u64, Hpa, Cmo),
    level: Level,
) -> Mapped {
    let geo = fmt.geometry();
    let top = stop.level.index(); // the empty entry's level: tables of levels level..top go in
                                  // Take every table first, so that a shortage changes nothing.
    let mut got = [(Hpa::new(0), false); MAX_LEVELS]; // (table, from the host)
    for k in level.index()..top {
        let l = Level::from_index(k);
        got[k] = match tables.cache.pop(host, l) {
            Some(pa) => (pa, false),
            None if tables.from_host => match host.alloc_table(geo.table_size(l)) {
                Some(pa) => {
                    // SAFETY: `pa` was just allocated: its metadata is valid (Host contract).
                    unsafe { host.meta(pa).as_ref() }.reset();
                    (pa, true)
                }
                None => {
                    give_back(host, geo, tables.cache, &got, level.index(), k);
                    return Mapped::OutOfMemory(geo.table_size(l));
                }
            },
            None => {
                give_back(host, geo, tables.cache, &got, level.index(), k);
                return Mapped::Fallback;
            }
        };
    }
    // Build bottom-up while nothing can reach the tables: plain stores, counts of one.
    for k in level.index()..top {
        let l = Level::from_index(k);
        let (pa, _) = got[k];
        // SAFETY: `pa` is an allocated table of level `l`, unreachable (taken above).
        unsafe { crate::update::fill_table(fmt, host, pa, l) };
        let entry = if k == level.index() {
            leaf
        } else {
            fmt.make_table(got[k - 1].0, l)
        };
        // SAFETY: the index is below the table's entry count; the table is unreachable.
        unsafe { EntryPtr::new(host.phys_to_virt(pa), geo.index(gpa, l)) }
            .store_relaxed(entry, F::BYTE_ORDER);
        // SAFETY: `pa` is allocated (Host contract for `meta`).
        unsafe { host.meta(pa).as_ref() }
            .count
            .store(1, crate::sync::Ordering::Relaxed);
    }
    cache_maintenance(host, fmt, hpa, level, cmo);
    let link = fmt.make_table(got[top - 1].0, stop.level);
    // SAFETY: `stop.ptr` is an entry of the live table `stop.pa` at `stop.level` (caller), read
    // empty; the chain below `link` is complete, so publishing it (release store or
    // compare-exchange) makes it visible whole.
    if !unsafe { link_table::<F, M>(fmt, stop.ptr, stop.level, link) } {
        give_back(host, geo, tables.cache, &got, level.index(), top);
        return Mapped::Fallback;
    }
    // SAFETY: `stop.pa` is a live table of this tree (Host contract for `meta`).
    count_add::<M>(unsafe { host.meta(stop.pa).as_ref() }, 1);
    // Levels `level..top`, one table each.
    Mapped::Done(((1u32 << top) - (1u32 << level.index())) as u8)
}

/// Returns the tables `got[from..to]` taken by a map that changed nothing: reserve tables to the
/// reserve, host tables to the host.
#[inline(never)]
fn give_back<H: Host>(
    host: &H,
    geo: &Geometry,
    cache: &mut TableCache,
    got: &[(Hpa, bool); MAX_LEVELS],
    from: usize,
    to: usize,
) {
    for (k, &(pa, from_host)) in got.iter().enumerate().take(to).skip(from) {
        let l = Level::from_index(k);
        if from_host {
            // SAFETY: `pa` came from `alloc_table` of this level's size and was never linked, so
            // nothing references it and no TLB can cache it.
            unsafe { host.free_table(pa, geo.table_size(l)) };
        } else {
            cache.push(host, l, pa);
        }
    }
}

/// What [`unmap_one`] found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unmapped {
    /// Nothing maps the entry's span (a hole on the way, or an empty slot): nothing changed.
    Hole,
    /// The leaf at the level was removed (a flush is owed).
    Leaf,
    /// Exclusive mode: the leaf was the last entry of its table, so the table was unlinked too,
    /// and so was each ancestor it left empty (never the root). The tables may be released only
    /// after the flush of [`Emptied::span`], which includes the walk caches.
    Emptied(Emptied),
    /// Anything else (a huge leaf above the level, a table at it, a frozen entry, a lost race):
    /// nothing changed, the general path must run.
    Fallback,
}

/// The tables an exclusive single-entry unmap unlinked because they became empty: one of each
/// level from `low` up to `high`, each the only child of the next. Their counts are zero and
/// nothing links them any more; they still must not be reused before the flush.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Emptied {
    tables: [Hpa; MAX_LEVELS],
    low: Level,
    high: Level,
    /// The span of the highest table removed: `[gpa, gpa + size)`.
    gpa: u64,
    size: u64,
}

impl Emptied {
    /// The range the flush must cover (with walk caches: table entries were removed).
    #[inline]
    pub(crate) fn span(&self) -> (u64, u64) {
        (self.gpa, self.size)
    }

    /// The tables removed, with their levels, lowest first.
    #[inline]
    pub(crate) fn tables(&self) -> impl Iterator<Item = (Level, Hpa)> + '_ {
        (self.low.index()..=self.high.index()).map(|l| (Level::from_index(l), self.tables[l]))
    }

    /// Bit `k` set: a table of level `k` was removed.
    #[inline]
    pub(crate) fn level_mask(&self) -> u8 {
        ((1u32 << (self.high.index() + 1)) - (1u32 << self.low.index())) as u8
    }
}

/// Where a single-entry unmap's obligations go: the flush a removed leaf owes, or, when tables
/// were unlinked with it, the flush with walk caches and the tables, which are released only
/// after that flush ([`crate::flush::PendingFlush`] for the tree API; `Table` flushes at once).
pub(crate) trait UnmapOwe {
    /// The leaf for `[gpa, gpa + size)` at `level` was removed.
    fn leaf(self, gpa: u64, size: u64, level: Level);
    /// The leaf and the tables of `emptied` were removed (`cache`: the caller's reserve).
    fn emptied(self, geo: &Geometry, cache: &mut TableCache, emptied: &Emptied);
}

/// Removes the leaf at `level` for `gpa` when that is all the unmap of its span has to do.
///
/// # Safety
/// As [`slot_at`].
#[inline(always)]
pub(crate) unsafe fn unmap_one<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    gpa: u64,
    level: Level,
    mut cursor: Option<&mut Cursor>,
) -> Unmapped {
    // SAFETY: the caller's contract.
    let (slot, table) =
        match unsafe { slot_at::<F, H, M>(fmt, host, root, gpa, level, cursor.as_deref_mut()) } {
            Ok(s) => s,
            Err(Stopped {
                kind: EntryKind::Empty,
                ..
            }) => return Unmapped::Hole,
            Err(_) => return Unmapped::Fallback,
        };
    let old = slot.load_for(M::SHARED, F::BYTE_ORDER);
    match fmt.classify(old, level) {
        EntryKind::Leaf => {}
        EntryKind::Empty => return Unmapped::Hole,
        _ => return Unmapped::Fallback,
    }
    let empty = fmt.empty(level);
    if fmt.needs_break(old, empty, level) {
        return Unmapped::Fallback;
    }
    // SAFETY: `table` is a live table of this tree (Host contract for `meta`).
    let meta = unsafe { host.meta(table).as_ref() };
    // Exclusive mode frees a table whose count reaches zero.
    if !M::SHARED && table != root && meta.count.load(crate::sync::Ordering::Relaxed) <= 1 {
        // The table is about to go: the cursor must not name it.
        if let Some(c) = cursor {
            c.forget();
        }
        // SAFETY: the caller's contract; `slot` holds the leaf `old` and is its table's last
        // entry.
        return unsafe { unmap_last::<F, H>(fmt, host, root, gpa, level, slot, old) };
    }
    // SAFETY: `slot` is a slot of the live table `table` at `level` holding the leaf `old`.
    if !unsafe { zap_leaf::<F, M>(fmt, slot, level, old) } {
        return Unmapped::Fallback; // shared mode: changed meanwhile
    }
    count_add::<M>(meta, -1);
    Unmapped::Leaf
}

/// Exclusive mode: removes the leaf `old` at `slot` (level `level`, for `gpa`), the last entry of
/// its table, then unlinks that table and every ancestor below the root that this leaves empty,
/// as the general unmap's post-order visit does (counts say which; exclusive counts are exact).
/// The tables are handed back in [`Emptied`], to be released after the flush.
///
/// # Safety
/// As [`slot_at`] in exclusive mode (the caller holds the tree alone); `slot` is the slot for
/// `gpa` at `level`, holding the leaf `old`, in a table other than the root whose count is one.
#[inline(never)]
unsafe fn unmap_last<F: PteFormat, H: Host>(
    fmt: &F,
    host: &H,
    root: Hpa,
    gpa: u64,
    level: Level,
    slot: EntryPtr,
    old: u64,
) -> Unmapped {
    use crate::mode::Exclusive;
    let geo = fmt.geometry();
    // The path from the root: the table at each level from the root down to `level`.
    let mut path = [Hpa::new(0); MAX_LEVELS];
    let mut l = geo.root_level();
    let mut pa = root;
    loop {
        path[l.index()] = pa;
        if l == level {
            break;
        }
        // SAFETY: `pa` is a live table of the tree at level `l` (the root, then each step follows
        // a table entry, as `slot_at` found them a moment ago) and the index is below its count.
        let raw =
            unsafe { EntryPtr::new(host.phys_to_virt(pa), geo.index(gpa, l)) }.load(F::BYTE_ORDER);
        debug_assert_eq!(fmt.classify(raw, l), EntryKind::Table);
        pa = fmt.table_addr(raw, l);
        l = Level::from_index(l.index() - 1);
    }
    // SAFETY: `slot` holds the leaf `old` (caller); exclusive mode: a plain store.
    unsafe { zap_leaf::<F, Exclusive>(fmt, slot, level, old) };
    let mut tables = [Hpa::new(0); MAX_LEVELS];
    let mut child = pa; // the leaf's table, at `level`
    let mut l = level;
    loop {
        // SAFETY: `child` is a table of this tree (Host contract for `meta`).
        let meta = unsafe { host.meta(child).as_ref() };
        count_add::<Exclusive>(meta, -1);
        if child == root || meta.count.load(crate::sync::Ordering::Relaxed) != 0 {
            break;
        }
        // `child` is empty: unlink it from its parent at level `l + 1`.
        let parent_level = Level::from_index(l.index() + 1);
        let parent = path[parent_level.index()];
        // SAFETY: `parent` is a live table of the tree at `parent_level` (the path) and the index
        // is below its entry count.
        let ptr = unsafe { EntryPtr::new(host.phys_to_virt(parent), geo.index(gpa, parent_level)) };
        // SAFETY: `ptr` is the entry of the live table `parent` that links `child`, in exclusive
        // mode.
        unsafe { crate::update::unlink_table::<F>(fmt, ptr, parent_level) };
        tables[l.index()] = child;
        child = parent;
        l = parent_level;
    }
    if l == level {
        return Unmapped::Leaf; // `count <= 1` but the table kept entries: nothing unlinked
    }
    // Tables of levels `level..l` were removed; the highest hung from an entry at level `l`.
    let high = Level::from_index(l.index() - 1);
    let size = geo.level_size(l);
    Unmapped::Emptied(Emptied {
        tables,
        low: level,
        high,
        gpa: gpa & !(size - 1),
        size,
    })
}

/// Translates `gpa`: one walk from the root, one classification per entry, nothing decoded.
///
/// # Errors
/// [`crate::Error::GpaTooWide`] beyond the input width.
#[inline]
pub(crate) fn translate<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    gpa: crate::addr::Gpa,
) -> Result<Option<crate::table::Translation>, crate::Error> {
    let geo = fmt.geometry();
    if gpa.raw() >> geo.ia_bits() != 0 {
        return Err(crate::Error::GpaTooWide {
            gpa,
            bits: geo.ia_bits(),
        });
    }
    if geo.uniform_4k() {
        translate_from::<F, H, M, true>(fmt, host, root, gpa)
    } else {
        translate_from::<F, H, M, false>(fmt, host, root, gpa)
    }
}

/// The walk of [`translate`]; `UNIFORM_4K`: the geometry's levels below the root have 9-bit
/// indices over 4 KiB pages ([`Geometry::uniform_4k`]), so their indices come from constants.
#[inline(always)]
fn translate_from<F: PteFormat, H: Host, M: Mode, const UNIFORM_4K: bool>(
    fmt: &F,
    host: &H,
    root: Hpa,
    gpa: crate::addr::Gpa,
) -> Result<Option<crate::table::Translation>, crate::Error> {
    let geo = fmt.geometry();
    let mut level = geo.root_level();
    let mut pa = root;
    loop {
        let index = if UNIFORM_4K && level != geo.root_level() {
            ((gpa.raw() >> (12 + 9 * level.index())) & 511) as usize
        } else {
            geo.index(gpa.raw(), level)
        };
        // SAFETY: `pa` is a live table of the tree at `level` (the tree's root, then each step
        // follows a table entry read with the mode's ordering; no table is freed while the caller
        // holds its access), and the index is below its entry count (for `UNIFORM_4K`, 512
        // entries below the root).
        let raw = unsafe { EntryPtr::new(host.phys_to_virt(pa), index) }
            .load_for(M::SHARED, F::BYTE_ORDER);
        match fmt.classify(raw, level) {
            EntryKind::Table if level != Level::LEAF => {
                pa = fmt.table_addr(raw, level);
                level = Level::from_index(level.index() - 1);
            }
            EntryKind::Leaf => {
                let offset = gpa.raw() & (geo.level_size(level) - 1);
                return Ok(Some(crate::table::Translation {
                    hpa: Hpa::new(fmt.leaf_addr(raw, level).raw() + offset),
                    level,
                    raw,
                }));
            }
            _ => return Ok(None),
        }
    }
}
