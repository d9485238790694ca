//! One tree, many callers.
//!
//! A [`Tree`] is what a table *is*: its format, its host and its root (plus atomic statistics).
//! It is `Sync` when its format and host are, and many trees may share one host (the MMU keeps a
//! root per address space and role). What one caller carries through an operation lives in a
//! [`Ctx`] (its table reserve and its budget) and a [`PendingFlush`] (the coalesced flush and
//! the detached tables), so operations of many callers can run on one tree.
//!
//! Access is in the types ([`crate::mode`]):
//! - [`Tree::exclusive`] (`&mut Tree`) or the unsafe [`Tree::assume_exclusive`] (the caller's own
//!   write lock) gives an [`ExclusiveAccess`], which offers every operation;
//! - [`Tree::shared`] (`&Tree` and a read-side guard of the host's grace period) gives a
//!   [`SharedAccess`], which offers map, unmap of leaves and whole subtrees, protect, split,
//!   collapse, query and walk. Operations only the exclusive mode has (freeing tables that became
//!   empty, clearing the whole tree) are not methods of it, so calling them with shared access
//!   does not compile.
//!
//! | operation | here | KVM x86 TDP MMU |
//! |---|---|---|
//! | map (install leaves and tables) | shared or exclusive | fault: shared (`kvm_tdp_mmu_map`) |
//! | unmap leaves / whole subtrees in range | shared or exclusive | `kvm_tdp_mmu_zap_leafs`: exclusive; zap of invalid roots: shared |
//! | unmap and free tables that become empty | exclusive | `kvm_tdp_mmu_unmap_gfn_range`: exclusive |
//! | protect | shared or exclusive | `wrprot_slot`, `clear_dirty_slot`: shared |
//! | split | shared or exclusive | eager split: shared (or exclusive in CLEAR_DIRTY_LOG) |
//! | collapse | shared or exclusive | `recover_huge_pages`: shared |
//! | query, walk | shared or exclusive | lockless walks (RCU) |
//! | clear the tree, teardown | exclusive | `kvm_tdp_mmu_zap_all`: exclusive |

use core::marker::PhantomData;
use core::ops::ControlFlow;

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::flush::{Delta, PendingFlush};
use crate::format::{Attrs, Perms, PteFormat};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::{Host, SharedHost, TableMeta};
use crate::mode::{Exclusive, Mode, Shared};
use crate::ops::single::{
    self, Cursor, Emptied, LeafTemplate, Mapped, OneLeaf, Tables, UnmapOwe, Unmapped,
};
use crate::ops::{self, Op};
use crate::pool::TableCache;
use crate::sync::{AtomicU64, Ordering};
use crate::table::{Leaf, MapOptions, Mapping, Stats, Translation, WalkEntry};
use crate::update::fill_table;

/// How far a long operation got.
#[must_use = "a yielded operation must be resumed at `resume`"]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The whole range was done.
    Done,
    /// The operation stopped at its budget, having flushed and released everything it owed: call
    /// it again for `[resume, end)` (the walk restarts from the root there, and always makes
    /// progress: `resume` is past the start of the call).
    Yielded {
        /// The first address not done.
        resume: Gpa,
    },
}

/// What one caller carries through operations: its reserve of tables (topped up before it takes
/// the hypervisor's lock, so nothing is allocated under it) and its budget.
///
/// Tables left in the reserve when the context is dropped are leaked (a `debug_assert!` reports
/// it): give them back with [`Ctx::free_all`].
#[derive(Debug)]
pub struct Ctx {
    pub(crate) cache: TableCache,
    budget: Option<u64>,
    /// The tree this context was last checked against ([`Tree::id`]; 0: none), and the leaf
    /// template of its last single-entry map (valid for that tree only).
    tree: usize,
    template: Option<LeafTemplate>,
    /// Which shard of a tree's statistics this caller adds to (callers spread over the shards,
    /// so concurrent callers do not share one counter's cache line).
    shard: u8,
}

impl<H: Host> UnmapOwe for &mut PendingFlush<H> {
    #[inline(always)]
    fn leaf(self, gpa: u64, size: u64, level: Level) {
        self.pending.flush_span(gpa, size, level);
    }

    fn emptied(self, geo: &Geometry, _: &mut TableCache, emptied: &Emptied) {
        let (gpa, size) = emptied.span();
        self.pending.flush_table_span(gpa, size);
        for (level, pa) in emptied.tables() {
            self.pending.detach(&self.host, level, pa, geo);
        }
    }
}

/// Shards of a tree's statistics: concurrent callers add to different cache lines.
const STAT_SHARDS: usize = if cfg!(loom) { 1 } else { 8 };

/// A process-unique identity for each tree (never 0), so that a context's cached leaf template
/// is never applied to a tree of another format.
fn next_tree_id() -> usize {
    static NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(1);
    NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed)
}

fn next_shard() -> u8 {
    static NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    (NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed) % STAT_SHARDS) as u8
}

impl Ctx {
    /// A context for trees of `fmt`'s geometry, with an empty reserve and no budget.
    pub fn new<F: PteFormat>(fmt: &F) -> Ctx {
        Ctx {
            cache: TableCache::new(fmt.geometry()),
            budget: None,
            tree: 0,
            template: None,
            shard: next_shard(),
        }
    }

    /// The reserve.
    pub fn cache(&self) -> &TableCache {
        &self.cache
    }

    /// Limits each later call to about `entries` entries visited (`None`: no limit). A call that
    /// reaches its budget flushes what it owes and returns [`Progress::Yielded`].
    pub fn set_budget(&mut self, entries: Option<u64>) {
        self.budget = entries;
    }

    /// Tops the reserve up to `need[level]` tables of each level, allocating from `host`.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`]: the reserve is as it was.
    pub fn topup<H: Host + ?Sized>(
        &mut self,
        host: &H,
        need: [u32; MAX_LEVELS],
    ) -> Result<(), Error> {
        let need = need.map(u64::from);
        self.cache
            .reserve(host, &need)
            .map_err(|size| Error::OutOfMemory { size })
    }

    /// Gives every reserved table back to `host`.
    pub fn free_all<H: Host + ?Sized>(&mut self, host: &H) {
        self.cache.free_all(host);
    }
}

/// Leaf and table counters (one shard of them), updated with one atomic add per changed level
/// per operation. Counts are kept as wrapping sums: a shard may go below zero when another shard
/// holds the matching additions; the sum over shards is exact.
#[repr(align(64))]
struct TreeStats {
    leaves: [AtomicU64; MAX_LEVELS],
    tables: [AtomicU64; MAX_LEVELS],
}

impl TreeStats {
    fn new() -> Self {
        TreeStats {
            leaves: core::array::from_fn(|_| AtomicU64::new(0)),
            tables: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    #[inline]
    fn add<M: Mode>(c: &AtomicU64, d: i64) {
        if d == 0 {
            return;
        }
        if M::SHARED {
            c.fetch_add(d as u64, Ordering::Relaxed);
        } else {
            let v = c.load(Ordering::Relaxed);
            c.store(v.wrapping_add(d as u64), Ordering::Relaxed);
        }
    }

    #[inline(always)]
    fn fold<M: Mode>(&self, d: &Delta) {
        // A fixed bound, so the loop unrolls; levels a geometry lacks have zero deltas.
        for l in 0..MAX_LEVELS {
            Self::add::<M>(&self.leaves[l], d.leaves[l]);
            Self::add::<M>(&self.tables[l], d.tables[l]);
        }
    }
}

/// A second-stage table tree: format, host and root. See the module documentation.
pub struct Tree<F: PteFormat, H: Host> {
    fmt: F,
    host: H,
    root: Hpa,
    id: usize,
    stats: [TreeStats; STAT_SHARDS],
}

// SAFETY: a tree's own state is its format, its host and atomics; entries are changed only
// through atomics, by the protocol of `update` (shared mode: compare-exchange; exclusive mode only
// with `&mut Tree` or the unsafe exclusive token). So it may be shared across threads whenever
// its format and host may.
unsafe impl<F: PteFormat + Sync, H: Host + Sync> Sync for Tree<F, H> {}
// SAFETY: the tree owns its tables through physical addresses; moving it moves that ownership.
unsafe impl<F: PteFormat + Send, H: Host + Send> Send for Tree<F, H> {}

impl<F: PteFormat, H: Host> Tree<F, H> {
    /// An empty tree: allocates and clears the root.
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
        let stats: [TreeStats; STAT_SHARDS] = core::array::from_fn(|_| TreeStats::new());
        stats[0].tables[root_level.index()].store(1, Ordering::Relaxed);
        Ok(Tree {
            fmt,
            host,
            root,
            id: next_tree_id(),
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

    /// Counters of the tree (exact once no operation is running).
    pub fn stats(&self) -> Stats {
        let geo = self.fmt.geometry();
        let mut s = Stats {
            metadata_bytes_per_table: core::mem::size_of::<TableMeta>() as u64,
            ..Stats::default()
        };
        for l in 0..geo.levels() as usize {
            for shard in &self.stats {
                s.leaves[l] = s.leaves[l].wrapping_add(shard.leaves[l].load(Ordering::Relaxed));
                s.tables[l] = s.tables[l].wrapping_add(shard.tables[l].load(Ordering::Relaxed));
            }
            // While shared-mode operations run, a removal may be counted before the install it
            // undoes: show zero rather than a wrapped value (exact once no operation runs).
            s.leaves[l] = (s.leaves[l] as i64).max(0) as u64;
            s.tables[l] = (s.tables[l] as i64).max(0) as u64;
            s.table_bytes += s.tables[l] * geo.table_size(Level::from_index(l)) as u64;
        }
        s
    }

    /// Exclusive access through `&mut`.
    pub fn exclusive(&mut self) -> ExclusiveAccess<'_, F, H> {
        ExclusiveAccess {
            tree: self,
            _excl: PhantomData,
        }
    }

    /// Exclusive access for a caller that holds its own lock for write around a shared `&Tree`.
    ///
    /// # Safety
    /// Until the token is dropped, no other access to this tree (exclusive or shared, through any
    /// thread) may run, and no walker may be in the middle of a shared operation on it.
    pub unsafe fn assume_exclusive(&self) -> ExclusiveAccess<'_, F, H> {
        ExclusiveAccess {
            tree: self,
            _excl: PhantomData,
        }
    }

    /// Shared access: many callers at once, each inside a read-side section of the host's grace
    /// period (`guard`, from [`SharedHost::read_side`]).
    pub fn shared<'t>(&'t self, guard: &'t H::Guard<'_>) -> SharedAccess<'t, F, H>
    where
        H: SharedHost,
    {
        let _ = guard;
        SharedAccess { tree: self }
    }

    pub(crate) fn op<'a>(
        &'a self,
        ctx: &'a mut Ctx,
        pending: &'a mut crate::flush::Pending,
    ) -> Op<'a, F, H> {
        Op {
            fmt: &self.fmt,
            host: &self.host,
            root: self.root,
            cache: &mut ctx.cache,
            pending,
            delta: Delta::default(),
            budget: ctx.budget.map_or(u64::MAX, |b| b.max(1)),
        }
    }

    #[inline]
    pub(crate) fn fold<M: Mode>(&self, d: &Delta, shard: u8) {
        self.stats[shard as usize % STAT_SHARDS].fold::<M>(d);
    }

    /// Checks `ctx` against this tree once per change of tree (a cheap compare after that).
    #[inline(always)]
    fn bind_ctx(&self, ctx: &mut Ctx) -> Result<(), Error> {
        if ctx.tree != self.id {
            self.check_ctx(ctx)?;
            ctx.tree = self.id;
            ctx.template = None;
        }
        Ok(())
    }

    /// The single-entry map (see [`crate::ops::single`]): `Some` when the call had that shape
    /// and was done (or refused for its attributes), `None` when the general path must run.
    /// `owe(gpa, size, level)` receives the flush owed, if any (a `PendingFlush`'s range, or
    /// `Table`'s immediate flush).
    #[inline(always)]
    pub(crate) fn map_single<M: Mode>(
        &self,
        (ctx, owe, cursor): (&mut Ctx, impl FnOnce(u64, u64, Level), Option<&mut Cursor>),
        range: GpaRange,
        hpa: Hpa,
        attrs: &Attrs,
        opts: MapOptions,
    ) -> Option<Result<(), Error>> {
        let fmt = &self.fmt;
        let level = single::one_leaf_level(fmt.geometry(), range, hpa, opts.max_level)?;
        if let Err(e) = self.bind_ctx(ctx) {
            return Some(Err(e));
        }
        let t = match LeafTemplate::get(&mut ctx.template, fmt, attrs, level, opts.young_dirty) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let gpa = range.start().raw();
        let leaf = t.raw() | fmt.leaf_addr_bits(hpa, level);
        let one = OneLeaf {
            gpa,
            level,
            raw: leaf,
            hpa,
            cmo: t.cmo(),
        };
        let tables = Tables {
            cache: &mut ctx.cache,
            from_host: !M::SHARED,
        };
        // SAFETY: `root` is this tree's live root built with `fmt` on `host`; `gpa` is within the
        // input width and `level` a leaf level of the geometry (`one_leaf_level`); no table is
        // freed meanwhile (exclusive: the caller holds the tree; shared: its read-side section);
        // `leaf` is the format's leaf for `hpa` (the `leaf_addr_bits` rule); a cursor names a live
        // table (only `Table` passes one, and it forgets it before anything else runs).
        let added = match unsafe {
            single::map_one::<F, H, M>(fmt, &self.host, self.root, one, cursor, tables)
        } {
            Mapped::Done(added) => added,
            Mapped::Fallback => return None,
            Mapped::OutOfMemory(size) => return Some(Err(Error::OutOfMemory { size })),
        };
        self.add_leaves::<M>(ctx.shard, level, 1);
        if added != 0 {
            self.add_tables::<M>(ctx.shard, added, 1);
        }
        if fmt.caches_empty_entries() {
            owe(gpa, range.size(), level);
        }
        Some(Ok(()))
    }

    /// The single-entry unmap (see [`crate::ops::single`]): `Some` when the call had that shape
    /// and was done, `None` when the general path must run.
    #[inline(always)]
    pub(crate) fn unmap_single<M: Mode>(
        &self,
        ctx: &mut Ctx,
        owe: impl UnmapOwe,
        range: GpaRange,
        cursor: Option<&mut Cursor>,
    ) -> Option<Result<(), Error>> {
        let fmt = &self.fmt;
        let level = single::one_entry_level(fmt.geometry(), range)?;
        if let Err(e) = self.bind_ctx(ctx) {
            return Some(Err(e));
        }
        let gpa = range.start().raw();
        // SAFETY: as in `map_single`.
        match unsafe {
            single::unmap_one::<F, H, M>(fmt, &self.host, self.root, gpa, level, cursor)
        } {
            Unmapped::Hole => Some(Ok(())),
            Unmapped::Leaf => {
                self.add_leaves::<M>(ctx.shard, level, -1);
                owe.leaf(gpa, range.size(), level);
                Some(Ok(()))
            }
            Unmapped::Emptied(e) => {
                self.add_leaves::<M>(ctx.shard, level, -1);
                self.add_tables::<M>(ctx.shard, e.level_mask(), -1);
                owe.emptied(fmt.geometry(), &mut ctx.cache, &e);
                Some(Ok(()))
            }
            Unmapped::Fallback => None,
        }
    }

    /// Adds `sign` to the table count of each level whose bit is set in `mask`.
    #[inline(never)]
    fn add_tables<M: Mode>(&self, shard: u8, mask: u8, sign: i64) {
        let s = &self.stats[shard as usize % STAT_SHARDS];
        for (l, c) in s.tables.iter().enumerate() {
            TreeStats::add::<M>(c, sign * i64::from(mask >> l & 1));
        }
    }

    #[inline(always)]
    fn add_leaves<M: Mode>(&self, shard: u8, level: Level, n: i64) {
        if let Some(c) = self.stats[shard as usize % STAT_SHARDS]
            .leaves
            .get(level.index())
        {
            TreeStats::add::<M>(c, n);
        }
    }

    #[inline]
    fn check_ctx(&self, ctx: &Ctx) -> Result<(), Error> {
        if ctx.cache.fits(self.fmt.geometry()) {
            Ok(())
        } else {
            Err(Error::CacheMismatch)
        }
    }

    /// Runs `f` as one operation in mode `M`: folds its statistics, and on a yield settles the
    /// obligation before returning.
    fn run<M: Mode>(
        &self,
        ctx: &mut Ctx,
        flush: &mut PendingFlush<H>,
        f: impl FnOnce(&mut Op<'_, F, H>) -> Result<Progress, Error>,
    ) -> Result<Progress, Error> {
        self.check_ctx(ctx)?;
        debug_assert!(
            flush.host().phys_to_virt(self.root) == self.host.phys_to_virt(self.root),
            "a PendingFlush of another host"
        );
        let shard = ctx.shard;
        let mut op = self.op(ctx, &mut flush.pending);
        let r = f(&mut op);
        let delta = op.delta;
        self.fold::<M>(&delta, shard);
        if M::SHARED && !flush.pending.is_empty() {
            flush.pending.shared = true;
        }
        if let Ok(Progress::Yielded { .. }) = r {
            flush.flush_now();
        }
        r
    }

    /// Clears the tree (every mapping, every table but the root) after one whole-VM flush and
    /// gives the tables to `ctx`'s reserve's host.
    fn clear(&mut self) {
        let mut pending = crate::flush::Pending::new();
        let mut delta = Delta::default();
        ops::teardown::clear(&self.fmt, &self.host, self.root, &mut pending, &mut delta);
        self.fold::<Exclusive>(&delta, 0);
        pending.settle::<H>(&self.host, None);
    }
}

impl<F: PteFormat, H: Host> Tree<F, H> {
    /// Frees every table (after one whole-VM flush), then `ctx`'s reserve, then the root.
    pub(crate) fn teardown(&mut self, ctx: Option<&mut Ctx>) {
        if self.root == Hpa::new(0) {
            return;
        }
        self.clear();
        if let Some(ctx) = ctx {
            ctx.free_all(&self.host);
        }
        let geo = self.fmt.geometry();
        // SAFETY: the root came from `alloc_table(root size)`, nothing references it any more
        // (`&mut self`), and `clear` flushed everything it mapped.
        unsafe {
            self.host
                .free_table(self.root, geo.table_size(geo.root_level()))
        };
        // Hosts never hand out address 0 (Host contract): it marks the tree as gone.
        self.root = Hpa::new(0);
    }
}

impl<F: PteFormat, H: Host> Drop for Tree<F, H> {
    fn drop(&mut self) {
        self.teardown(None);
    }
}

/// Exclusive access to a [`Tree`]: every operation. See the module documentation.
pub struct ExclusiveAccess<'t, F: PteFormat, H: Host> {
    tree: &'t Tree<F, H>,
    _excl: PhantomData<&'t mut ()>,
}

/// Shared access to a [`Tree`]: operations that are safe with other updaters running. See the
/// module documentation.
pub struct SharedAccess<'t, F: PteFormat, H: SharedHost> {
    tree: &'t Tree<F, H>,
}

impl<F: PteFormat, H: SharedHost> Clone for SharedAccess<'_, F, H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F: PteFormat, H: SharedHost> Copy for SharedAccess<'_, F, H> {}

macro_rules! common_ops {
    ($mode:ty, $mark:expr) => {
        /// Maps `range` to the host range at `hpa` with `attrs` (see [`crate::Table::map_with`]
        /// for the leaf choice). New tables come from `ctx`'s reserve, topped up from the host
        /// per chunk of the range when short.
        ///
        /// # Errors
        /// As [`crate::Table::map_with`], and [`Error::Retry`] in shared mode when an entry
        /// stayed frozen. On [`Error::AlreadyMapped`] or [`Error::OutOfMemory`] what this call
        /// mapped is unmapped again (exclusive: the tree is as it was; shared: tables it added
        /// may stay, empty).
        pub fn map(
            &self,
            ctx: &mut Ctx,
            flush: &mut PendingFlush<H>,
            range: GpaRange,
            hpa: Hpa,
            attrs: Attrs,
            opts: MapOptions,
        ) -> Result<Progress, Error> {
            $mark(&mut *flush);
            if let Some(r) = self.tree.map_single::<$mode>(
                (&mut *ctx, flush.owe(), None),
                range,
                hpa,
                &attrs,
                opts,
            ) {
                return r.map(|()| Progress::Done);
            }
            self.tree.run::<$mode>(ctx, flush, |op| {
                ops::map::map::<F, H, $mode>(op, range, hpa, attrs, opts)
            })
        }

        /// Sets the permissions of every leaf in `range` to `perms` (see
        /// [`crate::Table::protect`]).
        ///
        /// # Errors
        /// As [`crate::Table::protect`]; [`Error::Retry`] in shared mode.
        pub fn protect(
            &self,
            ctx: &mut Ctx,
            flush: &mut PendingFlush<H>,
            range: GpaRange,
            perms: Perms,
        ) -> Result<Progress, Error> {
            $mark(&mut *flush);
            self.tree.run::<$mode>(ctx, flush, |op| {
                ops::protect::protect::<F, H, $mode>(op, range, perms)
            })
        }

        /// Splits every leaf above `level` in `range` (see [`crate::Table::split`]); tables are
        /// reserved per chunk of the range.
        ///
        /// # Errors
        /// As [`crate::Table::split`]; [`Error::Retry`] in shared mode.
        pub fn split(
            &self,
            ctx: &mut Ctx,
            flush: &mut PendingFlush<H>,
            range: GpaRange,
            level: Level,
        ) -> Result<Progress, Error> {
            $mark(&mut *flush);
            self.tree.run::<$mode>(ctx, flush, |op| {
                ops::split::split::<F, H, $mode>(op, range, level)
            })
        }

        /// Replaces tables of leaves that map one contiguous, aligned host range with the same
        /// attributes by huge leaves (see [`crate::Table::collapse`]), keeping every
        /// accessed/dirty bit hardware set in the children.
        ///
        /// # Errors
        /// As [`crate::Table::collapse`].
        pub fn collapse(
            &self,
            ctx: &mut Ctx,
            flush: &mut PendingFlush<H>,
            range: GpaRange,
        ) -> Result<Progress, Error> {
            $mark(&mut *flush);
            self.tree.run::<$mode>(ctx, flush, |op| {
                ops::collapse::collapse::<F, H, $mode>(op, range, |_, _| true)
            })
        }

        /// Translates `gpa`: the leaf that maps it, or `None`.
        ///
        /// # Errors
        /// [`Error::GpaTooWide`].
        pub fn query(&self, gpa: Gpa) -> Result<Option<Mapping>, Error> {
            Ok(self.leaf(gpa)?.map(|l| l.decode()))
        }

        /// Translates `gpa` to the host address and the leaf's level, decoding nothing else
        /// (see [`crate::Table::translate`]).
        ///
        /// # Errors
        /// [`Error::GpaTooWide`].
        pub fn translate(&self, gpa: Gpa) -> Result<Option<Translation>, Error> {
            let t = self.tree;
            ops::single::translate::<F, H, $mode>(&t.fmt, &t.host, t.root, gpa)
        }

        /// The leaf that maps `gpa`, decoded lazily (see [`crate::Table::leaf`]).
        ///
        /// # Errors
        /// [`Error::GpaTooWide`].
        pub fn leaf(&self, gpa: Gpa) -> Result<Option<Leaf<'_, F>>, Error> {
            Ok(self
                .translate(gpa)?
                .map(|t| Leaf::new(&self.tree.fmt, gpa, t)))
        }

        /// Visits every entry that maps part of `range` in pre-order (see
        /// [`crate::Table::walk`]).
        ///
        /// # Errors
        /// [`Error::UnalignedGpa`], [`Error::GpaTooWide`].
        pub fn walk(
            &self,
            range: GpaRange,
            visitor: impl FnMut(&WalkEntry) -> ControlFlow<()>,
        ) -> Result<(), Error> {
            ops::walk::walk::<F, H, $mode>(
                &self.tree.fmt,
                &self.tree.host,
                self.tree.root,
                range,
                visitor,
            )
        }

        /// The tree.
        pub fn tree(&self) -> &Tree<F, H> {
            self.tree
        }
    };
}

impl<F: PteFormat, H: Host> ExclusiveAccess<'_, F, H> {
    common_ops!(Exclusive, |_: &mut PendingFlush<H>| {});

    /// Removes every mapping in `range`, splitting huge leaves the range cuts (with tables from
    /// `ctx`'s reserve, needed only where a huge leaf is cut) and freeing tables that become
    /// empty (known from per-table counts). The flush and the freed tables go to `flush`.
    ///
    /// # Errors
    /// As [`crate::Table::unmap`].
    pub fn unmap(
        &self,
        ctx: &mut Ctx,
        flush: &mut PendingFlush<H>,
        range: GpaRange,
    ) -> Result<Progress, Error> {
        if let Some(r) = self
            .tree
            .unmap_single::<Exclusive>(ctx, &mut *flush, range, None)
        {
            return r.map(|()| Progress::Done);
        }
        self.tree.run::<Exclusive>(ctx, flush, |op| {
            ops::zap::unmap::<F, H, Exclusive>(op, range)
        })
    }
}

impl<F: PteFormat, H: Host> ExclusiveAccess<'_, F, H> {
    /// Removes every mapping of the tree, on a budget: the resumable form of teardown (the
    /// whole input range unmapped, whole subtrees at once, tables freed). The root stays.
    ///
    /// # Errors
    /// None in practice (no huge leaf is cut, so no table is needed); [`Error::CacheMismatch`].
    pub fn clear(&self, ctx: &mut Ctx, flush: &mut PendingFlush<H>) -> Result<Progress, Error> {
        let bits = self.tree.fmt.geometry().ia_bits();
        let all = GpaRange::new(Gpa::new(0), 1u64 << bits)?;
        self.unmap(ctx, flush, all)
    }

    /// Resumes [`ExclusiveAccess::clear`] at `resume`.
    ///
    /// # Errors
    /// As [`ExclusiveAccess::clear`]; [`Error::GpaTooWide`] if `resume` is beyond the input width.
    pub fn clear_from(
        &self,
        ctx: &mut Ctx,
        flush: &mut PendingFlush<H>,
        resume: Gpa,
    ) -> Result<Progress, Error> {
        let end = 1u64 << self.tree.fmt.geometry().ia_bits();
        let size = end
            .checked_sub(resume.raw())
            .filter(|&s| s > 0)
            .ok_or(Error::GpaTooWide {
                gpa: resume,
                bits: self.tree.fmt.geometry().ia_bits(),
            })?;
        self.unmap(ctx, flush, GpaRange::new(resume, size)?)
    }
}

impl<F: PteFormat, H: SharedHost> SharedAccess<'_, F, H> {
    common_ops!(Shared, |f: &mut PendingFlush<H>| f.mark_shared());

    /// Removes every mapping in `range`: leaves are zapped with compare-exchange, and a table
    /// whose whole span lies in the range is taken out of the tree at once (its parent entry
    /// first, then every entry of it frozen and accounted, deeper tables too) and retired
    /// after the flush and a grace period. Tables that become empty otherwise stay (counts are
    /// kept exact; an exclusive unmap frees them).
    ///
    /// # Errors
    /// As [`crate::Table::unmap`]; [`Error::Retry`].
    pub fn unmap(
        &self,
        ctx: &mut Ctx,
        flush: &mut PendingFlush<H>,
        range: GpaRange,
    ) -> Result<Progress, Error> {
        flush.mark_shared();
        if let Some(r) = self
            .tree
            .unmap_single::<Shared>(ctx, &mut *flush, range, None)
        {
            return r.map(|()| Progress::Done);
        }
        self.tree
            .run::<Shared>(ctx, flush, |op| ops::zap::unmap::<F, H, Shared>(op, range))
    }
}
