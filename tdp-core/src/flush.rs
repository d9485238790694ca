//! Flush obligations: the coalesced TLB range an operation (or a batch of them) owes and the
//! tables it detached, which may be released only after that flush (and, in shared mode, after a
//! grace period). See the flush contract in [`crate::host`].

use crate::addr::{Gpa, Hpa, Level};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::{Host, RetiredTables, SharedHost, TlbFlush};
use crate::pool::{sizes_of, Detached, TableCache};

const NO_LEVEL: u8 = u8::MAX;
const MIXED_LEVELS: u8 = u8::MAX - 1;

/// Leaf and table counts an operation changed, by level, folded into the tree's statistics once
/// per operation.
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct Delta {
    pub(crate) leaves: [i64; MAX_LEVELS],
    pub(crate) tables: [i64; MAX_LEVELS],
}

/// What is owed: one coalesced range, and the tables detached (host-independent part of
/// [`PendingFlush`]).
#[derive(Debug)]
pub(crate) struct Pending {
    lo: u64,
    hi: u64,
    level: u8,
    walk_caches: bool,
    detached: Detached,
    sizes: [u32; MAX_LEVELS],
    /// Some detached table may still be read by a concurrent software walker: the tables need a
    /// grace period, not only the flush.
    pub(crate) shared: bool,
}

impl Pending {
    pub(crate) const fn new() -> Self {
        Pending {
            lo: u64::MAX,
            hi: 0,
            level: NO_LEVEL,
            walk_caches: false,
            detached: Detached::new(),
            sizes: [0; MAX_LEVELS],
            shared: false,
        }
    }

    /// Records that translations for `[gpa, gpa + size)` (entries at `level`) must be flushed.
    #[inline(always)]
    pub(crate) fn flush_span(&mut self, gpa: u64, size: u64, level: Level) {
        self.lo = self.lo.min(gpa);
        self.hi = self.hi.max(gpa + size);
        self.level = match self.level {
            NO_LEVEL => level.get(),
            l if l == level.get() => l,
            _ => MIXED_LEVELS,
        };
    }

    /// Records that translations for `[gpa, gpa + size)` of unknown or mixed levels must be
    /// flushed (no level hint), but no table entry changed.
    #[inline]
    pub(crate) fn flush_span_any_level(&mut self, gpa: u64, size: u64) {
        self.lo = self.lo.min(gpa);
        self.hi = self.hi.max(gpa + size);
        self.level = MIXED_LEVELS;
    }

    /// Records that a table entry for `[gpa, gpa + size)` was removed or replaced: whatever was
    /// cached below it (leaves of any level, walk-cache entries) must be flushed.
    #[inline]
    pub(crate) fn flush_table_span(&mut self, gpa: u64, size: u64) {
        self.lo = self.lo.min(gpa);
        self.hi = self.hi.max(gpa + size);
        self.level = MIXED_LEVELS;
        self.walk_caches = true;
    }

    /// Queues a detached table.
    #[inline]
    pub(crate) fn detach<H: Host + ?Sized>(
        &mut self,
        host: &H,
        level: Level,
        pa: Hpa,
        geo: &Geometry,
    ) {
        if self.detached.count == 0 {
            self.sizes = sizes_of(geo);
        }
        debug_assert!(
            self.sizes == sizes_of(geo),
            "one obligation, two geometries"
        );
        self.detached.push(host, level, pa);
    }

    /// The one range-coalesced flush owed, if any.
    pub(crate) fn range(&self) -> Option<TlbFlush> {
        if self.level == NO_LEVEL {
            return None;
        }
        Some(TlbFlush::Range {
            start: Gpa::new(self.lo),
            size: self.hi - self.lo,
            level: Level::new(self.level),
            tables: self.walk_caches,
        })
    }

    /// Whether nothing is owed.
    pub(crate) fn is_empty(&self) -> bool {
        self.level == NO_LEVEL && self.detached.count == 0
    }

    /// Issues the flush owed (if any) and forgets the range; the detached tables stay queued.
    #[inline]
    pub(crate) fn flush_tlb<H: Host + ?Sized>(&mut self, host: &H) {
        if let Some(f) = self.range() {
            host.flush_tlb(f);
        }
        self.lo = u64::MAX;
        self.hi = 0;
        self.level = NO_LEVEL;
        self.walk_caches = false;
    }

    /// Flushes, then puts detached tables into `cache` up to `keep` per level and frees the rest.
    /// Exclusive mode only: no other software walker can hold them.
    #[inline]
    pub(crate) fn flush_keeping<H: Host + ?Sized>(
        &mut self,
        host: &H,
        cache: &mut TableCache,
        keep: &[u32; MAX_LEVELS],
    ) {
        debug_assert!(!self.shared);
        self.flush_tlb(host);
        if self.detached.count > 0 {
            self.detached.release_keeping(host, cache, keep);
        }
    }

    /// Flushes, then releases the detached tables: retired through `retire` when they need a
    /// grace period, freed at once otherwise.
    pub(crate) fn settle<H: Host + ?Sized>(
        &mut self,
        host: &H,
        retire: Option<fn(&H, RetiredTables)>,
    ) {
        self.flush_tlb(host);
        if self.detached.count == 0 {
            self.shared = false;
            return;
        }
        let list = self.detached.take(self.sizes);
        match retire {
            Some(retire) if self.shared => retire(host, list),
            _ => {
                debug_assert!(
                    !self.shared,
                    "shared-mode tables freed without a grace period"
                );
                // SAFETY: exclusive mode: the tables are unreachable, their flush just completed,
                // and no other software walker exists; they came from this host.
                unsafe { list.free(host) }
            }
        }
        self.shared = false;
    }
}

/// Retires a list through the host's grace period (stored as a function pointer in
/// [`PendingFlush`], which does not require `SharedHost` itself).
pub(crate) fn retire_via<H: SharedHost>(host: &H, tables: RetiredTables) {
    host.retire(tables)
}

/// A TLB flush (and the release of detached tables) that is owed: the caller batches many calls
/// (a run of per-page unmaps, a vCPU's faults, a zap across roots) into one invalidation.
///
/// Calls that take a `&mut PendingFlush` add their coalesced range and the tables they detached
/// to it instead of flushing themselves (a break-before-make still flushes at once, inside the
/// call). [`PendingFlush::flush`] issues one [`Host::flush_tlb`] for everything, then releases
/// the tables: freed at once when only exclusive-mode calls detached them, handed to
/// [`SharedHost::retire`] for a grace period otherwise. Dropping an obligation flushes too, so a
/// forgotten one costs a flush, never a stale translation or a use-after-free.
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use tdp_core::testing::{HeapHost, TestFormat};
/// use tdp_core::{Attrs, Ctx, Gpa, GpaRange, Hpa, MapOptions, PendingFlush, Perms, Tree};
///
/// let host = HeapHost::new(0x8000_0000, 1 << 20, 4096);
/// let mut tree = Tree::new(TestFormat::four_level(), &host).unwrap();
/// let mut ctx = Ctx::new(tree.format());
/// let mut flush = PendingFlush::new(&host);
/// let ram = GpaRange::new(Gpa::new(0), 0x10_0000).unwrap();
/// let mut x = tree.exclusive();
/// let opts = MapOptions::default();
/// let _ = x.map(&mut ctx, &mut flush, ram, Hpa::new(0x4000_0000), Attrs::normal(Perms::RW), opts);
/// for page in 0..16u64 {
///     let one = GpaRange::new(Gpa::new(page << 12), 0x1000).unwrap();
///     let _ = x.unmap(&mut ctx, &mut flush, one).unwrap();
/// }
/// flush.flush(); // one invalidation for the 16 unmaps
/// ctx.free_all(&host);
/// # }
/// ```
#[must_use = "a pending flush is issued when flushed or dropped; batch it or flush it"]
pub struct PendingFlush<H: Host> {
    pub(crate) host: H,
    pub(crate) pending: Pending,
    retire: Option<fn(&H, RetiredTables)>,
}

impl<H: Host> PendingFlush<H> {
    /// Nothing owed yet, for tables on `host` (typically `&MyHost` or an `Arc`).
    pub fn new(host: H) -> Self {
        PendingFlush {
            host,
            pending: Pending::new(),
            retire: None,
        }
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The flush owed, if any (one coalesced range).
    pub fn range(&self) -> Option<TlbFlush> {
        self.pending.range()
    }

    /// Issues the flush owed, then releases the detached tables (see the type's docs).
    pub fn flush(mut self) {
        self.settle();
    }

    /// Issues the flush owed and releases the tables now, keeping the obligation for more calls.
    pub fn flush_now(&mut self) {
        self.settle();
    }

    /// Marks the obligation as holding tables that need a grace period.
    #[inline]
    pub(crate) fn mark_shared(&mut self)
    where
        H: SharedHost,
    {
        self.retire = Some(retire_via::<H>);
    }

    /// The host the obligation flushes on.
    /// Where a single-entry call adds the flush it owes.
    #[inline(always)]
    pub(crate) fn owe(&mut self) -> impl FnOnce(u64, u64, Level) + '_ {
        |gpa, size, level| self.pending.flush_span(gpa, size, level)
    }

    pub(crate) fn host(&self) -> &H {
        &self.host
    }

    fn settle(&mut self) {
        self.pending.settle(&self.host, self.retire);
    }
}

impl<H: Host> Drop for PendingFlush<H> {
    fn drop(&mut self) {
        self.settle();
    }
}

impl<H: Host> core::fmt::Debug for PendingFlush<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PendingFlush")
            .field("range", &self.pending.range())
            .field("tables", &self.pending.detached.count)
            .finish()
    }
}
