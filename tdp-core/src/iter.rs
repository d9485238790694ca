//! The one walker: a pre-order iterator over the entries that map `[start, last]`.
//!
//! Modelled on KVM's `tdp_iter`: the iterator keeps the path of tables from the root to the current
//! entry, the current level and address, and a snapshot of the current entry. It moves with three
//! steps — down into a table, sideways to the next entry, up to the parent — and can restart from
//! the root toward the next unvisited address after the caller changed the tree under it.
//!
//! Every entry is visited once as [`Visit::Leaf`] (anything that is not a table: a leaf, an empty
//! entry, a frozen entry) or as [`Visit::TablePre`] before its children and [`Visit::TablePost`]
//! after them (arm64 KVM's LEAF / TABLE_PRE / TABLE_POST walker flags). Tables at `min_level` are
//! visited `TablePre` only: the walk does not enter them, so it has no `TablePost` for them.
//! Every operation of the engine is a loop over this iterator.
//!
//! The walker is generic over the lock [`Mode`]: in shared mode every entry is read with acquire
//! ordering (a table pointer may be followed), and the iterator records the physical address of
//! each table on its path as it steps down, so that it never re-reads a parent entry (which another
//! updater may have replaced or frozen meanwhile) to find the table it is in.

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::addr::{Hpa, Level};
use crate::entry::EntryPtr;
use crate::format::{EntryKind, PteFormat};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::{Host, TableMeta};
use crate::mode::Mode;

/// How the walker is visiting the current entry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Visit {
    /// An entry that is not a table: a leaf, an empty entry or a frozen one.
    Leaf,
    /// A table entry, before its children.
    TablePre,
    /// A table entry, after its children.
    TablePost,
}

/// The pre-order iterator. See the module documentation.
pub(crate) struct Iter<'a, F: PteFormat, H: Host, M: Mode> {
    pub(crate) fmt: &'a F,
    pub(crate) host: &'a H,
    geo: &'a Geometry,
    root_level: Level,
    min_level: Level,
    tables: [NonNull<u8>; MAX_LEVELS],
    /// Physical address of each table on the path (recorded on the way down).
    pas: [Hpa; MAX_LEVELS],
    level: Level,
    gpa: u64,
    target: u64,
    last: u64,
    ptr: EntryPtr,
    old: u64,
    kind: EntryKind,
    visit: Visit,
    valid: bool,
    post: bool,
    exhausted: bool,
    mode: PhantomData<M>,
}

impl<'a, F: PteFormat, H: Host, M: Mode> Iter<'a, F, H, M> {
    /// An iterator over `[start, last]` of the tree at `root`, descending no lower than
    /// `min_level`, positioned on the root entry that maps `start`.
    ///
    /// # Safety
    /// `root` must be the live root table of a tree built by the engine with `fmt` and `host`
    /// (every table reachable from it allocated by `host`), `start <= last` within the input width,
    /// and no table of the tree may be freed while the iterator is used.
    #[inline(always)]
    pub(crate) unsafe fn new(
        fmt: &'a F,
        host: &'a H,
        root: Hpa,
        start: u64,
        last: u64,
        min_level: Level,
    ) -> Self {
        let geo = fmt.geometry();
        let root_level = geo.root_level();
        let virt = host.phys_to_virt(root);
        let mut it = Iter {
            fmt,
            host,
            geo,
            root_level,
            min_level,
            tables: [virt; MAX_LEVELS],
            pas: [root; MAX_LEVELS],
            level: root_level,
            gpa: start,
            target: start,
            last,
            // SAFETY: `virt` is the live root table (caller's contract) and the index is below its
            // entry count by construction of `Geometry::index`.
            ptr: unsafe { EntryPtr::new(virt, geo.index(start, root_level)) },
            old: 0,
            kind: EntryKind::Empty,
            visit: Visit::Leaf,
            valid: true,
            post: true,
            exhausted: false,
            mode: PhantomData,
        };
        it.restart();
        it
    }

    /// Drops the `TablePost` visits: the walk ends as soon as its range is exhausted instead of
    /// climbing back to the root (for operations with no post-order work).
    #[inline(always)]
    pub(crate) fn without_post(&mut self) {
        self.post = false;
    }

    /// Re-reads the current entry into the snapshot.
    #[inline(always)]
    fn read(&mut self) {
        self.old = self.ptr.load_for(M::SHARED, F::BYTE_ORDER);
        self.kind = self.fmt.classify(self.old, self.level);
        self.visit = if self.kind == EntryKind::Table {
            Visit::TablePre
        } else {
            Visit::Leaf
        };
    }

    /// Restarts from the root toward the next unvisited address: the walk re-descends through the
    /// current tables to the entry that maps it (visiting its ancestors again as `TablePre`), so it
    /// sees every change made to the tree since.
    #[inline(always)]
    pub(crate) fn restart(&mut self) {
        self.level = self.root_level;
        let root = self.tables[self.root_level.index()];
        self.gpa = self.target & !(self.geo.level_size(self.level) - 1);
        // SAFETY: the root table is live (constructor contract) and the index is in bounds.
        self.ptr = unsafe { EntryPtr::new(root, self.geo.index(self.target, self.level)) };
        self.read();
        self.valid = true;
    }

    /// Steps into the table the current entry points at, toward the next unvisited address.
    #[inline(always)]
    fn try_step_down(&mut self) -> bool {
        if self.level <= self.min_level {
            return false;
        }
        self.read();
        if self.kind != EntryKind::Table {
            return false;
        }
        let child = self.fmt.table_addr(self.old, self.level);
        let level = Level::from_index(self.level.index() - 1);
        let virt = self.host.phys_to_virt(child);
        self.tables[level.index()] = virt;
        self.pas[level.index()] = child;
        self.level = level;
        self.gpa = self.target & !(self.geo.level_size(level) - 1);
        // SAFETY: `child` is a live table of this tree (constructor contract: the tree is built by
        // the engine and not freed while iterating) and the index is below its entry count.
        self.ptr = unsafe { EntryPtr::new(virt, self.geo.index(self.gpa, level)) };
        self.read();
        true
    }

    /// Steps to the next entry of the same table, if it exists and starts within the range.
    /// `Err(true)` when the range is exhausted, `Err(false)` at the end of the table.
    #[inline(always)]
    fn try_step_side(&mut self) -> Result<(), bool> {
        let next = self.gpa + self.geo.level_size(self.level);
        if next > self.last {
            return Err(true);
        }
        let idx = self.geo.index(self.gpa, self.level);
        if idx + 1 >= self.geo.entries(self.level) {
            return Err(false);
        }
        self.gpa = next;
        self.target = next;
        // SAFETY: `idx + 1` is below the entry count checked above, so the next slot is in the
        // same live table.
        self.ptr = unsafe { self.ptr.next() };
        self.read();
        Ok(())
    }

    /// Steps back to the table entry that points at the current table.
    #[inline]
    fn try_step_up(&mut self) -> bool {
        if self.level >= self.root_level {
            return false;
        }
        let level = Level::from_index(self.level.index() + 1);
        self.level = level;
        self.gpa &= !(self.geo.level_size(level) - 1);
        // SAFETY: the parent table on the path is live and the index is in bounds.
        self.ptr =
            unsafe { EntryPtr::new(self.tables[level.index()], self.geo.index(self.gpa, level)) };
        self.old = self.ptr.load_for(M::SHARED, F::BYTE_ORDER);
        self.kind = self.fmt.classify(self.old, level);
        self.visit = Visit::TablePost;
        true
    }

    /// Moves to the next visit in pre-order (down, else side, else up with a `TablePost`).
    #[inline]
    pub(crate) fn next(&mut self) {
        if self.visit == Visit::TablePre && self.try_step_down() {
            return;
        }
        loop {
            match self.try_step_side() {
                Ok(()) => return,
                // Nothing after this entry is in range: done, unless post-order visits remain.
                Err(true) if !self.post => break,
                Err(exhausted) => self.exhausted |= exhausted,
            }
            if !self.try_step_up() {
                break;
            }
            if self.post {
                return;
            }
        }
        self.valid = false;
    }

    /// Whether the walk has passed the end of its range: only `TablePost` visits of the tables
    /// on the current path remain.
    #[inline(always)]
    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// Whether the iterator is on an entry.
    #[inline(always)]
    pub(crate) fn valid(&self) -> bool {
        self.valid
    }

    /// The current visit.
    #[inline(always)]
    pub(crate) fn visit(&self) -> Visit {
        self.visit
    }

    /// The snapshot of the current entry.
    #[inline(always)]
    pub(crate) fn old(&self) -> u64 {
        self.old
    }

    /// The kind of the current entry's snapshot.
    #[inline(always)]
    pub(crate) fn kind(&self) -> EntryKind {
        self.kind
    }

    /// The current level.
    #[inline(always)]
    pub(crate) fn level(&self) -> Level {
        self.level
    }

    /// The first address mapped by the current entry.
    #[inline(always)]
    pub(crate) fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The geometry being walked.
    #[inline(always)]
    pub(crate) fn geometry(&self) -> &Geometry {
        self.geo
    }

    /// Whether the current entry's whole span lies within the walk's range.
    #[inline(always)]
    pub(crate) fn span_in_range(&self, start: u64) -> bool {
        let size = self.geo.level_size(self.level);
        self.gpa >= start && self.gpa + (size - 1) <= self.last
    }

    /// The entry pointer of the current entry.
    #[inline(always)]
    pub(crate) fn ptr(&self) -> EntryPtr {
        self.ptr
    }

    /// The metadata of the table holding the current entry, from the physical path recorded on
    /// the way down (never by re-reading the parent entry, which may have changed meanwhile).
    #[inline]
    pub(crate) fn table_meta(&self) -> &'a TableMeta {
        // SAFETY: the host contract makes `meta` valid while the table is allocated; tables on the
        // path are not freed while the iterator is in use (exclusive mode: nothing else frees;
        // shared mode: the caller's read-side section holds off the grace period).
        unsafe { self.host.meta(self.pas[self.level.index()]).as_ref() }
    }

    /// Restarts from the root at the current entry's address (shared mode, after meeting a
    /// frozen entry: if its table was removed the walk no longer reaches it; if it is a
    /// break-before-make in progress the walk finds the new value).
    #[inline]
    pub(crate) fn restart_here(&mut self) {
        // Toward the next unvisited address (`target` is at or past `gpa`): not `gpa`, which is
        // aligned down to the entry's span and may lie before the walk's start.
        self.target = self.target.max(self.gpa);
        self.restart();
    }

    /// The entry `n` slots after the current one, in the same table.
    ///
    /// # Safety
    /// `n < self.run_len()` (the slot is inside the current table).
    #[inline(always)]
    pub(crate) unsafe fn ptr_at(&self, n: usize) -> EntryPtr {
        let idx = self.geo.index(self.gpa, self.level) + n;
        debug_assert!(idx < self.geo.entries(self.level));
        // SAFETY: `idx` is below the entry count of the current (live) table (caller contract).
        unsafe { EntryPtr::new(self.tables[self.level.index()], idx) }
    }

    /// How many entries, from the current one on, lie wholly within the range and the current
    /// table: a run an operation may process in a tight loop.
    #[inline(always)]
    pub(crate) fn run_len(&self) -> usize {
        let level = self.level;
        let in_table = self.geo.entries(level) - self.geo.index(self.gpa, level);
        let shift = self.geo.shift(level);
        // Entries wholly inside: `last + 1` fits, as addresses are below 2^60.
        let in_range = (self.last + 1).saturating_sub(self.gpa) >> shift;
        in_table.min(in_range as usize)
    }

    /// Moves `n` entries ahead in the same table (`n` < `run_len()`) and takes a new snapshot.
    #[inline(always)]
    pub(crate) fn skip(&mut self, n: usize) {
        debug_assert!(n < self.run_len().max(1));
        self.gpa += (n as u64) << self.geo.shift(self.level);
        self.target = self.gpa;
        // SAFETY: `n` is within the current table (caller contract, checked in debug builds).
        self.ptr = unsafe { self.ptr.offset(n) };
        self.read();
    }

    /// Makes the next step go sideways or up, not into the table the current entry points at:
    /// the caller dealt with that whole table itself.
    #[inline(always)]
    pub(crate) fn skip_children(&mut self) {
        if self.visit == Visit::TablePre {
            self.visit = Visit::Leaf;
        }
    }

    /// Records that the current entry now holds `new` (after the caller wrote it). A table entry
    /// becomes `TablePre` so the next step descends into it; anything else becomes `Leaf`, except
    /// that a `TablePost` visit stays one (the walk is leaving that entry).
    #[inline(always)]
    pub(crate) fn set_snapshot(&mut self, new: u64) {
        self.old = new;
        self.kind = self.fmt.classify(new, self.level);
        if self.visit != Visit::TablePost {
            self.visit = if self.kind == EntryKind::Table {
                Visit::TablePre
            } else {
                Visit::Leaf
            };
        }
    }
}
