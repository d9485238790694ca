//! Table memory an operation holds outside the tree: the caller's reserve of tables
//! ([`TableCache`], KVM's `kvm_mmu_memory_cache`, topped up before the caller takes its lock) and
//! the tables an operation detached, waiting for their TLB flush ([`Detached`]) and, in shared
//! mode, for a grace period ([`RetiredTables`]).
//!
//! Every list is threaded through each table's [`TableMeta::link`], so none of them needs memory
//! of its own: a detached list can be handed to an RCU callback with no allocation.

use crate::addr::{Hpa, Level};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::{Host, TableMeta};
use crate::sync::Ordering;

const NIL: u64 = u64::MAX;

fn meta<H: Host + ?Sized>(host: &H, pa: u64) -> &TableMeta {
    // SAFETY: every address on the engine's lists came from `alloc_table` and is not freed while
    // listed, so the host keeps its metadata valid (Host contract).
    unsafe { host.meta(Hpa::new(pa)).as_ref() }
}

/// Table sizes by level, as lists record them (a list may outlive the geometry it came from).
pub(crate) fn sizes_of(geo: &Geometry) -> [u32; MAX_LEVELS] {
    core::array::from_fn(|l| {
        if l < geo.levels() as usize {
            geo.table_size(Level::from_index(l)) as u32
        } else {
            0
        }
    })
}

/// One caller's reserve of table pages, by level: what an operation takes its new tables from, so
/// that nothing is allocated while entries are half changed. A vCPU keeps one and tops it up
/// before it takes the hypervisor's lock.
///
/// A cache belongs to the geometry it was made for (its table sizes). Tables still in it when it
/// is dropped are leaked (a `debug_assert!` reports it): give them back with
/// [`TableCache::free_all`], or let the [`crate::Table`] / [`crate::Ctx`] that owns it do so.
#[derive(Debug)]
pub struct TableCache {
    head: [u64; MAX_LEVELS],
    len: [u32; MAX_LEVELS],
    sizes: [u32; MAX_LEVELS],
}

// SAFETY: the cache holds only physical addresses of tables it owns exclusively; moving it to
// another thread moves that ownership.
unsafe impl Send for TableCache {}

impl TableCache {
    /// An empty cache for tables of `geo`.
    pub fn new(geo: &Geometry) -> Self {
        TableCache {
            head: [NIL; MAX_LEVELS],
            len: [0; MAX_LEVELS],
            sizes: sizes_of(geo),
        }
    }

    /// Tables held, by level.
    pub fn lens(&self) -> [u32; MAX_LEVELS] {
        self.len
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        (0..MAX_LEVELS)
            .map(|l| self.len[l] as usize * self.sizes[l] as usize)
            .sum()
    }

    /// Whether the cache was made for tables of `geo`.
    #[inline]
    pub fn fits(&self, geo: &Geometry) -> bool {
        (0..MAX_LEVELS).all(|l| {
            let size = if l < geo.levels() as usize {
                geo.table_size(Level::from_index(l)) as u32
            } else {
                0
            };
            self.sizes[l] == size
        })
    }

    /// Adds a table that is owned by the engine and reachable from nothing.
    pub(crate) fn push<H: Host + ?Sized>(&mut self, host: &H, level: Level, pa: Hpa) {
        let m = meta(host, pa.raw());
        m.link.store(self.head[level.index()], Ordering::Relaxed);
        self.head[level.index()] = pa.raw();
        self.len[level.index()] += 1;
    }

    /// Takes a table for `level`, its metadata reset.
    #[inline]
    pub(crate) fn pop<H: Host + ?Sized>(&mut self, host: &H, level: Level) -> Option<Hpa> {
        let pa = self.head[level.index()];
        if pa == NIL {
            return None;
        }
        let m = meta(host, pa);
        self.head[level.index()] = m.link.load(Ordering::Relaxed);
        self.len[level.index()] -= 1;
        m.reset();
        Some(Hpa::new(pa))
    }

    /// Tops up every level to `need[level]` tables.
    ///
    /// # Errors
    /// On failure the cache is trimmed back to what it held before and the size that could not
    /// be allocated is returned.
    pub(crate) fn reserve<H: Host + ?Sized>(
        &mut self,
        host: &H,
        need: &[u64; MAX_LEVELS],
    ) -> Result<(), usize> {
        if (0..MAX_LEVELS).all(|l| u64::from(self.len[l]) >= need[l]) {
            return Ok(());
        }
        let before = self.len;
        for l in 0..MAX_LEVELS {
            let level = Level::from_index(l);
            let size = self.sizes[l] as usize;
            while u64::from(self.len[l]) < need[l] {
                match host.alloc_table(size) {
                    Some(pa) => {
                        meta(host, pa.raw()).reset();
                        self.push(host, level, pa)
                    }
                    None => {
                        self.trim_to(host, &before);
                        return Err(size);
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives tables back to the host until each level holds at most `keep[level]`.
    #[inline(always)]
    pub(crate) fn trim_to<H: Host + ?Sized>(&mut self, host: &H, keep: &[u32; MAX_LEVELS]) {
        let mut over = false;
        for l in 0..MAX_LEVELS {
            over |= self.len[l] > keep[l];
        }
        if over {
            self.trim_slow(host, keep);
        }
    }

    #[inline(never)]
    fn trim_slow<H: Host + ?Sized>(&mut self, host: &H, keep: &[u32; MAX_LEVELS]) {
        for l in 0..MAX_LEVELS {
            let level = Level::from_index(l);
            while self.len[l] > keep[l] {
                if let Some(pa) = self.pop(host, level) {
                    // SAFETY: cached tables came from `alloc_table(sizes[level])`, are reachable
                    // from no table, and were flushed (and, in shared mode, outlived their grace
                    // period) before they entered the cache.
                    unsafe { host.free_table(pa, self.sizes[l] as usize) };
                }
            }
        }
    }

    /// Gives every table back to `host` (the host the tables came from).
    pub fn free_all<H: Host + ?Sized>(&mut self, host: &H) {
        self.trim_to(host, &[0; MAX_LEVELS]);
    }
}

impl Drop for TableCache {
    fn drop(&mut self) {
        debug_assert!(
            self.len.iter().all(|&n| n == 0),
            "a TableCache holding tables was dropped: they are leaked (call free_all)"
        );
    }
}

/// Tables detached by an operation, waiting for its TLB flush.
#[derive(Debug)]
pub(crate) struct Detached {
    head: u64,
    pub(crate) count: u32,
}

impl Detached {
    pub(crate) const fn new() -> Self {
        Detached {
            head: NIL,
            count: 0,
        }
    }

    /// Adds a table of `level` that is no longer reachable from the tree (but may still be
    /// cached by a hardware walker until the next flush, and read by a concurrent software walker
    /// until a grace period has passed).
    pub(crate) fn push<H: Host + ?Sized>(&mut self, host: &H, level: Level, pa: Hpa) {
        let m = meta(host, pa.raw());
        // Table pages are at least 256-byte aligned: the low bits carry the level.
        m.link.store(self.head, Ordering::Relaxed);
        self.head = pa.raw() | level.get() as u64;
        self.count += 1;
    }

    /// Moves detached tables into `cache` while it holds fewer than `keep` of their level and
    /// gives the rest straight back to `host` (no round trip through the cache). Call only after
    /// the flush that covers them, and only for tables no concurrent software walker can hold
    /// (exclusive mode).
    pub(crate) fn release_keeping<H: Host + ?Sized>(
        &mut self,
        host: &H,
        cache: &mut TableCache,
        keep: &[u32; MAX_LEVELS],
    ) {
        while self.head != NIL {
            let l = (self.head & 0xff) as usize % MAX_LEVELS;
            let pa = self.head & !0xff;
            self.head = meta(host, pa).link.load(Ordering::Relaxed);
            if cache.len[l] < keep[l] {
                cache.push(host, Level::from_index(l), Hpa::new(pa));
            } else {
                // SAFETY: detached tables came from `alloc_table(sizes[level])`, are reachable
                // from no table, and the flush covering them has completed (caller); no other
                // software walker can hold them (exclusive mode, caller).
                unsafe { host.free_table(Hpa::new(pa), cache.sizes[l] as usize) };
            }
        }
        self.count = 0;
    }

    /// Hands the list over as retired tables (to be freed after a grace period or at once).
    pub(crate) fn take(&mut self, sizes: [u32; MAX_LEVELS]) -> RetiredTables {
        let r = RetiredTables {
            head: self.head,
            count: self.count,
            sizes,
        };
        self.head = NIL;
        self.count = 0;
        r
    }
}

/// Tables detached from a tree whose TLB flush has completed, handed to
/// [`crate::host::SharedHost::retire`] as one list (threaded through their metadata, so it costs
/// no allocation), to be freed with [`RetiredTables::free`] after a grace period.
#[must_use = "retired tables are leaked unless freed"]
#[derive(Debug)]
pub struct RetiredTables {
    head: u64,
    count: u32,
    sizes: [u32; MAX_LEVELS],
}

// SAFETY: the list holds physical addresses of tables nothing else owns; it can be freed from any
// thread (an RCU callback, a reclaimer thread).
unsafe impl Send for RetiredTables {}

impl RetiredTables {
    /// An empty list.
    pub const fn empty() -> Self {
        RetiredTables {
            head: NIL,
            count: 0,
            sizes: [0; MAX_LEVELS],
        }
    }

    /// Number of tables in the list.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The tables, as (physical address, size in bytes), without freeing them.
    pub fn iter<'h, H: Host + ?Sized>(
        &self,
        host: &'h H,
    ) -> impl Iterator<Item = (Hpa, usize)> + 'h {
        let mut head = self.head;
        let sizes = self.sizes;
        core::iter::from_fn(move || {
            if head == NIL {
                return None;
            }
            let level = (head & 0xff) as usize;
            let pa = head & !0xff;
            head = meta(host, pa).link.load(Ordering::Relaxed);
            Some((Hpa::new(pa), sizes[level] as usize))
        })
    }

    /// Frees every table with [`Host::free_table`].
    ///
    /// # Safety
    /// `host` is the host the tables came from; the TLB flush covering them has completed, and no
    /// walker that could have read a pointer to any of them is still in a read-side section (the
    /// grace period has elapsed).
    pub unsafe fn free<H: Host + ?Sized>(mut self, host: &H) {
        while self.head != NIL {
            let level = (self.head & 0xff) as usize;
            let pa = self.head & !0xff;
            self.head = meta(host, pa).link.load(Ordering::Relaxed);
            // SAFETY: the table came from `alloc_table(sizes[level])` (it was in a tree of that
            // geometry), it is unreachable, flushed, and past its grace period (caller contract).
            unsafe { host.free_table(Hpa::new(pa), self.sizes[level] as usize) };
        }
        self.count = 0;
    }
}

impl Drop for RetiredTables {
    fn drop(&mut self) {
        debug_assert!(
            self.head == NIL,
            "RetiredTables dropped without being freed: {} tables leaked",
            self.count
        );
    }
}
