//! The explicit table API: map, unmap, protect, query, walk, split, collapse.
//!
//! For type-1 hypervisors that own their memory (like arm64's `kvm_pgtable` and the Rust peers).
//! [`Table`] is the simple exclusive entry point: a [`Tree`] with its own [`Ctx`], over the same
//! operation code as every other caller ([`crate::ops`], exclusive mode). Every call reserves the
//! tables it may need before it changes anything (per chunk of a large range), and flushes
//! before it returns: one range-coalesced TLB flush, before any detached table is reused (see
//! the flush contract in [`crate::host`]).

use core::ops::ControlFlow;

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::flush::Pending;
use crate::format::{AdState, Attrs, EntryKind, Perms, PteFormat};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::{Host, TlbFlush};
use crate::iter::Visit;
use crate::mode::Exclusive;
use crate::ops::single::{Cursor, Emptied, UnmapOwe};
use crate::ops::{self, Op};
use crate::pool::TableCache;
use crate::tree::{Ctx, Progress, Tree};

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

/// A translation found by [`Table::translate`]: nothing decoded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The address translated: the leaf's output address plus the offset within it.
    pub hpa: Hpa,
    /// The leaf's level (its span is the geometry's `level_size`).
    pub level: Level,
    /// The raw leaf entry.
    pub raw: u64,
}

/// A leaf found by [`Table::leaf`]: the translation at once, attributes and accessed/dirty
/// state decoded only when asked for.
#[derive(Copy, Clone, Debug)]
pub struct Leaf<'f, F: PteFormat> {
    fmt: &'f F,
    gpa: Gpa,
    /// The translation (address, level, raw entry).
    pub translation: Translation,
}

impl<'f, F: PteFormat> Leaf<'f, F> {
    #[inline]
    pub(crate) fn new(fmt: &'f F, gpa: Gpa, translation: Translation) -> Self {
        Leaf {
            fmt,
            gpa,
            translation,
        }
    }

    /// The queried address translated.
    #[inline]
    pub fn hpa(&self) -> Hpa {
        self.translation.hpa
    }

    /// The leaf's level.
    #[inline]
    pub fn level(&self) -> Level {
        self.translation.level
    }

    /// Bytes mapped by the leaf.
    #[inline]
    pub fn size(&self) -> u64 {
        self.fmt.geometry().level_size(self.translation.level)
    }

    /// The first guest address the leaf maps.
    #[inline]
    pub fn leaf_gpa(&self) -> Gpa {
        Gpa::new(self.gpa.raw() & !(self.size() - 1))
    }

    /// Permissions and memory type (decoded now).
    #[inline]
    pub fn attrs(&self) -> Attrs {
        self.fmt
            .leaf_attrs(self.translation.raw, self.translation.level)
    }

    /// Accessed/dirty state (decoded now).
    #[inline]
    pub fn ad(&self) -> AdState {
        self.fmt
            .ad_state(self.translation.raw, self.translation.level)
    }

    /// Everything decoded, as [`Table::query`] returns it.
    #[inline]
    pub fn decode(&self) -> Mapping {
        Mapping {
            hpa: self.hpa(),
            leaf_gpa: self.leaf_gpa(),
            level: self.level(),
            size: self.size(),
            attrs: self.attrs(),
            ad: self.ad(),
            raw: self.translation.raw,
        }
    }
}

/// A leaf found by [`Table::query`], decoded (see [`Table::leaf`] for the lazy form).
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

/// A second-stage table tree for one VM (or one address space), on a host `H`, in format `F`:
/// the explicit API, exclusive (`&mut self`), flushed before every call returns.
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
    tree: Tree<F, H>,
    ctx: Ctx,
    pending: Pending,
    keep: [u32; MAX_LEVELS],
    /// The table the last single-entry call reached (forgotten before any other operation).
    cursor: Cursor,
}

impl<F: PteFormat, H: Host> Table<F, H> {
    /// An empty table tree: allocates and clears the root.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] if the host has no root table.
    pub fn new(fmt: F, host: H) -> Result<Self, Error> {
        let ctx = Ctx::new(&fmt);
        Ok(Table {
            tree: Tree::new(fmt, host)?,
            ctx,
            pending: Pending::new(),
            keep: [2; MAX_LEVELS],
            cursor: Cursor::new(),
        })
    }

    /// The root table's physical address (for the EPTP, VTTBR, hgatp, ...).
    pub fn root(&self) -> Hpa {
        self.tree.root()
    }

    /// The format.
    pub fn format(&self) -> &F {
        self.tree.format()
    }

    /// The host.
    pub fn host(&self) -> &H {
        self.tree.host()
    }

    /// The tree underneath, for shared-mode or batched calls ([`Tree::shared`],
    /// [`Tree::exclusive`]).
    pub fn tree(&mut self) -> &mut Tree<F, H> {
        self.cursor.forget();
        &mut self.tree
    }

    /// Counters of the tree.
    pub fn stats(&self) -> Stats {
        let mut s = self.tree.stats();
        s.cached_bytes = self.ctx.cache().bytes() as u64;
        s
    }

    /// How many reserved tables of each level to keep between operations (default 2).
    pub fn set_cache_keep(&mut self, keep: u32) {
        self.keep = [keep; MAX_LEVELS];
        self.ctx.cache.trim_to(self.tree.host(), &self.keep);
    }

    /// Runs one exclusive operation, then flushes, gives its detached tables to the reserve and
    /// trims the reserve.
    #[inline]
    fn run<R>(
        &mut self,
        f: impl FnOnce(&mut Op<'_, F, H>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        // The operation may free or replace tables.
        self.cursor.forget();
        let cached_before = self.ctx.cache().lens();
        let mut op = self.tree.op(&mut self.ctx, &mut self.pending);
        let r = f(&mut op);
        let delta = op.delta;
        // Nothing to fold for a protect without a split, or a call that changed nothing.
        if !delta_is_zero(&delta) {
            self.tree.fold::<Exclusive>(&delta, 0);
        }
        let keep = if r.is_err() {
            // Give back what a refused call reserved, so the host sees the memory it saw before.
            core::array::from_fn(|l| cached_before[l].min(self.keep[l]))
        } else {
            self.keep
        };
        if !self.pending.is_empty() {
            self.pending
                .flush_keeping(self.tree.host(), &mut self.ctx.cache, &keep);
        }
        self.ctx.cache.trim_to(self.tree.host(), &keep);
        r
    }

    // --- map --------------------------------------------------------------------------------

    /// Maps `range` to the host range starting at `hpa` with `attrs`, using the largest leaves
    /// that alignment allows, with accessed/dirty preset (see [`MapOptions`]).
    ///
    /// # Errors
    /// As [`Table::map_with`].
    #[inline]
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
    #[inline]
    pub fn map_with(
        &mut self,
        range: GpaRange,
        hpa: Hpa,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<(), Error> {
        // One leaf whose tables exist: straight to its slot (the page fault's shape).
        let host = self.tree.host();
        if let Some(r) = self.tree.map_single::<Exclusive>(
            (&mut self.ctx, flush_now(host), Some(&mut self.cursor)),
            range,
            hpa,
            &attrs,
            opts,
        ) {
            return r;
        }
        self.map_general(range, hpa, attrs, opts)
    }

    /// The general map (every shape the single-entry path does not take), out of line so that
    /// the single-entry path stays a small function.
    #[inline(never)]
    fn map_general(
        &mut self,
        range: GpaRange,
        hpa: Hpa,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<(), Error> {
        self.run(|op| ops::map::map::<F, H, Exclusive>(op, range, hpa, attrs, opts))
            .map(done)
    }

    // --- unmap ------------------------------------------------------------------------------

    /// Removes every mapping in `range`, splitting huge leaves the range cuts and freeing tables
    /// that become empty (known from per-table counts, never by rescanning). Holes are skipped.
    /// One TLB flush covers everything removed, before any table page is released. An unmap that
    /// cuts no huge leaf needs no memory.
    ///
    /// # Errors
    /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`]; [`Error::OutOfMemory`] if a huge leaf cut
    /// by the range cannot be split (nothing is changed).
    #[inline]
    pub fn unmap(&mut self, range: GpaRange) -> Result<(), Error> {
        // One leaf, not the last of its table: straight to its slot.
        let host = self.tree.host();
        if let Some(r) = self.tree.unmap_single::<Exclusive>(
            &mut self.ctx,
            UnmapNow {
                host,
                keep: &self.keep,
            },
            range,
            Some(&mut self.cursor),
        ) {
            return r;
        }
        self.unmap_general(range)
    }

    /// The general unmap, out of line (as `map_general`).
    #[inline(never)]
    fn unmap_general(&mut self, range: GpaRange) -> Result<(), Error> {
        self.run(|op| ops::zap::unmap::<F, H, Exclusive>(op, range))
            .map(done)
    }

    // --- protect ----------------------------------------------------------------------------

    /// Sets the permissions of every leaf in `range` to `perms`, splitting huge leaves the range
    /// cuts whose permissions change; memory type and A/D state are kept, holes are skipped.
    /// Permission changes are made in place (no break-before-make); the TLB is flushed once if
    /// any permission was removed.
    ///
    /// # Errors
    /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`], [`Error::UnsupportedAttrs`] (checked with
    /// write-back memory, and with each leaf's memory type where the format says permissions
    /// depend on it), [`Error::OutOfMemory`] for a split (nothing is changed in any case).
    #[inline]
    pub fn protect(&mut self, range: GpaRange, perms: Perms) -> Result<(), Error> {
        // One aligned leaf: straight to its slot. It frees and adds no table and changes no
        // count, so the cursor stays valid and nothing is folded or trimmed.
        let t = &self.tree;
        if let Some(r) = ops::protect::protect_one::<F, H, Exclusive>(
            t.format(),
            t.host(),
            t.root(),
            range,
            perms,
        ) {
            if let Some((gpa, size, level)) = r? {
                flush_now(t.host())(gpa, size, level);
            }
            return Ok(());
        }
        self.protect_general(range, perms)
    }

    /// The general protect, out of line (as `map_general`).
    #[inline(never)]
    fn protect_general(&mut self, range: GpaRange, perms: Perms) -> Result<(), Error> {
        // Not `ops::protect::protect`: the one-leaf path was tried already.
        self.run(|op| ops::protect::protect_general_inline::<F, H, Exclusive>(op, range, perms))
            .map(done)
    }

    // --- query and walk ---------------------------------------------------------------------

    /// Translates `gpa`: the leaf that maps it, or `None`.
    ///
    /// # Errors
    /// [`Error::GpaTooWide`] if `gpa` is beyond the input width.
    #[inline]
    pub fn query(&self, gpa: Gpa) -> Result<Option<Mapping>, Error> {
        Ok(self.leaf(gpa)?.map(|l| l.decode()))
    }

    /// Translates `gpa` to the host address and the leaf's level, decoding nothing else (the
    /// cheapest lookup: one walk from the root, one classification per entry).
    ///
    /// ```
    /// # #[cfg(feature = "testing")] {
    /// use tdp_core::testing::{HeapHost, TestFormat};
    /// use tdp_core::{Attrs, Gpa, GpaRange, Hpa, Perms, Table};
    ///
    /// let host = HeapHost::new(0x8000_0000, 1 << 20, 4096);
    /// let mut table = Table::new(TestFormat::four_level(), &host).unwrap();
    /// let page = GpaRange::new(Gpa::new(0x5000), 0x1000).unwrap();
    /// table.map(page, Hpa::new(0x4000_9000), Attrs::normal(Perms::READ)).unwrap();
    /// let t = table.translate(Gpa::new(0x5abc)).unwrap().unwrap();
    /// assert_eq!((t.hpa, t.level.get()), (Hpa::new(0x4000_9abc), 0));
    /// // The lazy form decodes attributes only when asked.
    /// let leaf = table.leaf(Gpa::new(0x5abc)).unwrap().unwrap();
    /// assert_eq!(leaf.attrs().perms, Perms::READ);
    /// assert!(table.translate(Gpa::new(0x6000)).unwrap().is_none());
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::GpaTooWide`] if `gpa` is beyond the input width.
    #[inline]
    pub fn translate(&self, gpa: Gpa) -> Result<Option<Translation>, Error> {
        let t = &self.tree;
        ops::single::translate::<F, H, Exclusive>(t.format(), t.host(), t.root(), gpa)
    }

    /// The leaf that maps `gpa`, with its attributes and accessed/dirty state decoded only when
    /// asked for ([`Leaf::attrs`], [`Leaf::ad`]).
    ///
    /// # Errors
    /// [`Error::GpaTooWide`] if `gpa` is beyond the input width.
    #[inline]
    pub fn leaf(&self, gpa: Gpa) -> Result<Option<Leaf<'_, F>>, Error> {
        let t = &self.tree;
        Ok(self.translate(gpa)?.map(|translation| Leaf {
            fmt: t.format(),
            gpa,
            translation,
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
        visitor: impl FnMut(&WalkEntry) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let t = &self.tree;
        ops::walk::walk::<F, H, Exclusive>(t.format(), t.host(), t.root(), range, visitor)
    }

    // --- split and collapse -----------------------------------------------------------------

    /// Splits every leaf above `level` that maps part of `range` into leaves of `level` (only the
    /// parts within `range` go all the way down). Translations do not change, so no TLB flush is
    /// needed (except where the format needs break-before-make). Tables are reserved per chunk
    /// of the range (about 512 leaf tables at a time).
    ///
    /// # Errors
    /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`], [`Error::InvalidLevel`] if `level` cannot
    /// hold a leaf, [`Error::OutOfMemory`] (nothing is changed when the range fits one chunk;
    /// the chunks before the failing one stay split, which changes no translation).
    pub fn split(&mut self, range: GpaRange, level: Level) -> Result<(), Error> {
        self.run(|op| ops::split::split::<F, H, Exclusive>(op, range, level))
            .map(done)
    }

    /// Replaces every table within `range` whose entries are leaves with the same attributes
    /// mapping one contiguous, suitably aligned host range by a single huge leaf, bottom-up (4 KiB
    /// leaves can become 2 MiB and then 1 GiB leaves in one call). Accessed/dirty state is merged,
    /// including bits hardware sets in the children during the call. The TLB is flushed once,
    /// before the replaced tables are released.
    ///
    /// # Errors
    /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`].
    pub fn collapse(&mut self, range: GpaRange) -> Result<(), Error> {
        self.run(|op| ops::collapse::collapse::<F, H, Exclusive>(op, range, |_, _| true))
            .map(done)
    }
}

/// The flush a single-entry call of `Table` owes, issued at once (it detaches no table, so
/// nothing else is owed).
#[inline(always)]
fn flush_now<H: Host>(host: &H) -> impl FnOnce(u64, u64, Level) + '_ {
    move |gpa, size, level| {
        host.flush_tlb(TlbFlush::Range {
            start: Gpa::new(gpa),
            size,
            level: Some(level),
            tables: false,
        })
    }
}

/// What a single-entry unmap of `Table` owes, settled at once: the flush, then the tables it
/// unlinked go to the reserve up to `keep` per level and the rest back to the host (as
/// [`Table::run`] releases an operation's detached tables).
struct UnmapNow<'a, H> {
    host: &'a H,
    keep: &'a [u32; MAX_LEVELS],
}

impl<H: Host> UnmapOwe for UnmapNow<'_, H> {
    #[inline(always)]
    fn leaf(self, gpa: u64, size: u64, level: Level) {
        flush_now(self.host)(gpa, size, level);
    }

    fn emptied(self, geo: &Geometry, cache: &mut TableCache, emptied: &Emptied) {
        let (gpa, size) = emptied.span();
        self.host.flush_tlb(TlbFlush::Range {
            start: Gpa::new(gpa),
            size,
            level: None,
            tables: true,
        });
        let lens = cache.lens();
        for (level, pa) in emptied.tables() {
            if lens[level.index()] < self.keep[level.index()] {
                cache.push(self.host, level, pa);
            } else {
                // SAFETY: `pa` is a table of this host of `level`'s size, unlinked by the unmap
                // and its flush (walk caches included) done just above: nothing can reach it.
                unsafe { self.host.free_table(pa, geo.table_size(level)) };
            }
        }
    }
}

/// Whether an operation changed no count.
#[inline(always)]
fn delta_is_zero(d: &crate::flush::Delta) -> bool {
    let mut any = 0;
    for l in 0..MAX_LEVELS {
        any |= d.leaves[l] | d.tables[l];
    }
    any == 0
}

fn done(p: Progress) {
    debug_assert_eq!(p, Progress::Done, "a call without a budget yielded");
}

impl<F: PteFormat, H: Host> Drop for Table<F, H> {
    fn drop(&mut self) {
        self.tree.teardown(Some(&mut self.ctx));
    }
}
