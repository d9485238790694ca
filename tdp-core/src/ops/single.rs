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
use crate::geometry::Geometry;
use crate::host::Host;
use crate::mode::Mode;
use crate::update::{count_add, install_leaf, zap_leaf};

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
    let aligned = (start | pa) & mask == 0;
    let fits = (start | mask) >> geo.ia_bits() == 0 && (pa | mask) >> geo.oa_bits() == 0;
    (aligned && fits).then_some(level)
}

/// The leaf level whose entries map exactly `size` bytes, if any.
#[inline(never)]
fn leaf_level_of_size(geo: &Geometry, size: u64) -> Option<Level> {
    (1..geo.levels() as usize)
        .map(Level::from_index)
        .find(|&l| geo.is_leaf_level(l) && geo.level_size(l) == size)
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
    /// `gpa >> span` of the addresses the table maps.
    tag: u64,
    /// The table (0: none).
    table: Hpa,
    level: Level,
}

impl Cursor {
    pub(crate) const fn new() -> Cursor {
        Cursor {
            tag: 0,
            table: Hpa::new(0),
            level: Level::LEAF,
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

/// The slot at `level` for `gpa` and its table's physical address, walking only through tables
/// (or starting at the cursor's table when it spans `gpa` at `level`, and leaving the cursor at
/// the table reached); `Err(kind)` with what stopped the walk above `level` otherwise.
///
/// # Safety
/// `root` is the live root of a tree built with `fmt` on `host`, `gpa` is within the input
/// width, `level` is a level of the geometry, no table of the tree is freed meanwhile
/// (exclusive: the caller holds the tree; shared: the caller's read-side section), and a cursor
/// names a live table of this tree (see [`Cursor`]).
#[inline(always)]
unsafe fn slot_at<F: PteFormat, H: Host, M: Mode>(
    fmt: &F,
    host: &H,
    root: Hpa,
    gpa: u64,
    level: Level,
    cursor: Option<&mut Cursor>,
) -> Result<(EntryPtr, Hpa), EntryKind> {
    let geo = fmt.geometry();
    if let Some(c) = &cursor {
        if c.table != Hpa::new(0) && c.level == level && c.tag == gpa >> span_shift(geo, level) {
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
                    *c = Cursor {
                        tag: gpa >> span_shift(geo, level),
                        table: pa,
                        level,
                    };
                }
            }
            return Ok((ptr, pa));
        }
        let raw = ptr.load_for(M::SHARED, F::BYTE_ORDER);
        let kind = fmt.classify(raw, l);
        if kind != EntryKind::Table {
            return Err(kind);
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

/// Maps `leaf` if every table down to its level exists and the slot is empty. Returns whether
/// it did; when it did not, nothing changed. Cache maintenance for the page is done before the
/// leaf becomes valid.
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
) -> bool {
    let OneLeaf {
        gpa,
        level,
        raw: leaf,
        hpa,
        cmo,
    } = leaf;
    // SAFETY: the caller's contract.
    let Ok((slot, table)) = (unsafe { slot_at::<F, H, M>(fmt, host, root, gpa, level, cursor) })
    else {
        return false;
    };
    if slot.load_for(M::SHARED, F::BYTE_ORDER) != fmt.empty(level) {
        return false;
    }
    if !cmo.is_empty() {
        let size = fmt.geometry().level_size(level);
        if cmo.contains(Cmo::CLEAN_DCACHE) {
            host.clean_dcache(hpa, size);
        }
        if cmo.contains(Cmo::INVAL_ICACHE) {
            host.invalidate_icache(hpa, size);
        }
    }
    // SAFETY: `slot` is a slot of the live table `table` at `level`.
    if !unsafe { install_leaf::<F, M>(fmt, slot, level, leaf) } {
        return false; // shared mode: another updater filled or froze it first
    }
    // SAFETY: `table` is a live table of this tree (Host contract for `meta`).
    count_add::<M>(unsafe { host.meta(table).as_ref() }, 1);
    true
}

/// What [`unmap_one`] found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unmapped {
    /// Nothing maps the entry's span (a hole on the way, or an empty slot): nothing changed.
    Hole,
    /// The leaf at the level was removed (a flush is owed).
    Leaf,
    /// Anything else (a huge leaf above the level, a table at it, the last entry of a table that
    /// exclusive mode must free, a frozen entry, a lost race): nothing changed, the general path
    /// must run.
    Fallback,
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
    cursor: Option<&mut Cursor>,
) -> Unmapped {
    // SAFETY: the caller's contract.
    let (slot, table) = match unsafe { slot_at::<F, H, M>(fmt, host, root, gpa, level, cursor) } {
        Ok(s) => s,
        Err(EntryKind::Empty) => return Unmapped::Hole,
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
    // Exclusive mode frees a table whose count reaches zero: the general path does that.
    if !M::SHARED && table != root && meta.count.load(crate::sync::Ordering::Relaxed) <= 1 {
        return Unmapped::Fallback;
    }
    // SAFETY: `slot` is a slot of the live table `table` at `level` holding the leaf `old`.
    if !unsafe { zap_leaf::<F, M>(fmt, slot, level, old) } {
        return Unmapped::Fallback; // shared mode: changed meanwhile
    }
    count_add::<M>(meta, -1);
    Unmapped::Leaf
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
    let mut level = geo.root_level();
    let mut pa = root;
    loop {
        // SAFETY: `pa` is a live table of the tree at `level` (the tree's root, then each step
        // follows a table entry read with the mode's ordering; no table is freed while the caller
        // holds its access), and the index is below its entry count.
        let raw = unsafe { EntryPtr::new(host.phys_to_virt(pa), geo.index(gpa.raw(), level)) }
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
