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
/// Inlined: a call on the detach path (once per list) made its callers' loops spill registers.
#[inline(always)]
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

/// Tables detached by an operation, waiting for its TLB flush: one list threaded through their
/// metadata (each link carries the next table's level in its low bits), with counts by level so
/// that a release knows when it has taken all the reserve wants.
#[derive(Debug)]
pub(crate) struct Detached {
    head: u64,
    pub(crate) count: u32,
    /// Tables by level (indexed by a level's low three bits: no bounds check on the push path).
    by_level: [u32; TAGS],
}

/// Slots of the per-level arrays the list code indexes with a link's level tag.
const TAGS: usize = 8;
static_assertions::const_assert!(MAX_LEVELS <= TAGS);

/// The level a list link carries in its low bits (table pages are at least 256-byte aligned;
/// levels fit in three bits).
#[inline(always)]
fn tag_level(link: u64) -> usize {
    (link & (TAGS as u64 - 1)) as usize
}

/// Table sizes by tag, from sizes by level.
#[inline(always)]
fn sizes_by_tag(sizes: &[u32; MAX_LEVELS]) -> [u32; TAGS] {
    core::array::from_fn(|l| if l < MAX_LEVELS { sizes[l] } else { 0 })
}

impl Detached {
    pub(crate) const fn new() -> Self {
        Detached {
            head: NIL,
            count: 0,
            by_level: [0; TAGS],
        }
    }

    /// Adds a table of `level` that is no longer reachable from the tree (but may still be
    /// cached by a hardware walker until the next flush, and read by a concurrent software walker
    /// until a grace period has passed).
    #[inline(always)]
    pub(crate) fn push<H: Host + ?Sized>(&mut self, host: &H, level: Level, pa: Hpa) {
        let m = meta(host, pa.raw());
        // Table pages are at least 256-byte aligned: the low bits carry the level.
        m.link.store(self.head, Ordering::Relaxed);
        self.head = pa.raw() | level.get() as u64;
        self.count += 1;
        self.by_level[level.index() & (TAGS - 1)] += 1;
    }

    /// Moves detached tables into `cache` while it holds fewer than `keep` of their level and
    /// gives the rest back to `host` as one list ([`Host::free_tables`]: no round trip through
    /// the cache, no call per table). Only the front of the list up to the last table the cache
    /// takes is walked here. Call only after the flush that covers them, and only for tables no
    /// concurrent software walker can hold (exclusive mode).
    pub(crate) fn release_keeping<H: Host + ?Sized>(
        &mut self,
        host: &H,
        cache: &mut TableCache,
        keep: &[u32; MAX_LEVELS],
    ) {
        let mut want = [0u32; TAGS];
        let mut wanted = 0;
        for l in 0..MAX_LEVELS {
            want[l] = keep[l].saturating_sub(cache.len[l]).min(self.by_level[l]);
            wanted += want[l];
        }
        // Unlink the tables the cache takes (the first ones of each wanted level).
        let mut prev: Option<&TableMeta> = None;
        let mut cur = self.head;
        while wanted > 0 && cur != NIL {
            let l = tag_level(cur);
            let pa = cur & !0xff;
            let m = meta(host, pa);
            let next = m.link.load(Ordering::Relaxed);
            if want[l] > 0 {
                want[l] -= 1;
                wanted -= 1;
                match prev {
                    None => self.head = next,
                    Some(p) => p.link.store(next, Ordering::Relaxed),
                }
                self.count -= 1;
                self.by_level[l] -= 1;
                // Overwrites the link, read above.
                cache.push(host, Level::from_index(l.min(MAX_LEVELS - 1)), Hpa::new(pa));
            } else {
                prev = Some(m);
            }
            cur = next;
        }
        if self.count > 0 {
            let rest = self.take(cache.sizes);
            // SAFETY: detached tables came from `alloc_table(sizes[level])` and are reachable
            // from no table; the flush covering them has completed (caller) and no other software
            // walker can hold them (exclusive mode, caller), so no grace period is owed.
            unsafe { rest.free(host) };
        } else {
            self.head = NIL;
        }
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
        self.by_level = [0; TAGS];
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
        let sizes = sizes_by_tag(&self.sizes);
        core::iter::from_fn(move || {
            if head == NIL {
                return None;
            }
            let level = tag_level(head);
            let pa = head & !0xff;
            head = meta(host, pa).link.load(Ordering::Relaxed);
            Some((Hpa::new(pa), sizes[level] as usize))
        })
    }

    /// Takes the list apart for a host's [`Host::free_tables`]: yields every table once, as
    /// (physical address, size in bytes), reading the next link before it yields a table, so that
    /// the host may free (and reuse the metadata of) each table as soon as it gets it. Tables not
    /// taken from the drain before it is dropped are leaked (no check: a host that panics
    /// halfway through a list must not turn the unwind into an abort).
    pub fn drain<H: Host + ?Sized>(mut self, host: &H) -> RetiredDrain<'_, H> {
        let d = RetiredDrain {
            host,
            head: self.head,
            left: self.count,
            sizes: sizes_by_tag(&self.sizes),
        };
        self.head = NIL;
        self.count = 0;
        d
    }

    /// Frees every table, with one [`Host::free_tables`] call (whose default body calls
    /// [`Host::free_table`] for each).
    ///
    /// # Safety
    /// `host` is the host the tables came from; the TLB flush covering them has completed, and no
    /// walker that could have read a pointer to any of them is still in a read-side section (the
    /// grace period has elapsed).
    pub unsafe fn free<H: Host + ?Sized>(self, host: &H) {
        if self.head == NIL {
            return;
        }
        // SAFETY: the tables came from `alloc_table(sizes[level])` of this host (they were in a
        // tree of that geometry), are unreachable, flushed, and past their grace period (caller
        // contract).
        unsafe { host.free_tables(self) }
    }
}

/// The tables of a [`RetiredTables`] list, each yielded once, for a host that frees them itself
/// ([`RetiredTables::drain`]).
#[derive(Debug)]
pub struct RetiredDrain<'h, H: ?Sized> {
    host: &'h H,
    head: u64,
    left: u32,
    sizes: [u32; TAGS],
}

impl<H: Host + ?Sized> Iterator for RetiredDrain<'_, H> {
    type Item = (Hpa, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(Hpa, usize)> {
        if self.head == NIL {
            return None;
        }
        let level = tag_level(self.head);
        let pa = self.head & !0xff;
        self.head = meta(self.host, pa).link.load(Ordering::Relaxed);
        self.left -= 1;
        Some((Hpa::new(pa), self.sizes[level] as usize))
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }

    /// The whole walk with its state in locals (what `for_each` runs): a host's loop that
    /// stores to memory does not make the walk reload and store its own state per table.
    #[inline]
    fn fold<B, G: FnMut(B, (Hpa, usize)) -> B>(mut self, init: B, mut g: G) -> B {
        let mut acc = init;
        let mut head = self.head;
        let sizes = self.sizes;
        self.head = NIL;
        self.left = 0;
        while head != NIL {
            let level = tag_level(head);
            let pa = head & !0xff;
            head = meta(self.host, pa).link.load(Ordering::Relaxed);
            acc = g(acc, (Hpa::new(pa), sizes[level] as usize));
        }
        acc
    }
}

impl<H: Host + ?Sized> ExactSizeIterator for RetiredDrain<'_, H> {}

impl Drop for RetiredTables {
    fn drop(&mut self) {
        debug_assert!(
            self.head == NIL,
            "RetiredTables dropped without being freed: {} tables leaked",
            self.count
        );
    }
}

#[cfg(all(test, feature = "testing", not(loom)))]
mod tests {
    use super::*;
    use crate::testing::{HeapHost, HostEvent, TestFormat};
    use crate::PteFormat;
    use std::vec::Vec;

    /// A release that takes tables from the middle of the list (after tables of a level the
    /// reserve does not want) gives each pushed table to exactly one place: the reserve or the
    /// host. The oracle is the list of pushed addresses.
    #[test]
    fn release_keeping_takes_from_the_middle_and_frees_the_rest_once() {
        let fmt = TestFormat::four_level();
        let geo = fmt.geometry();
        let host = HeapHost::new(0x1_0000_0000, 1 << 20, 4096);
        let mut cache = TableCache::new(geo);
        // The reserve already holds two level-1 tables: it wants only level-0 ones.
        cache.reserve(&host, &[0, 2, 0, 0, 0]).unwrap();
        let mut d = Detached::new();
        let order = [1u8, 1, 2, 0, 1, 0, 0, 3, 0];
        let mut pushed = Vec::new();
        for &l in &order {
            let pa = host.alloc_table(4096).unwrap();
            d.push(&host, Level::new(l).unwrap(), pa);
            pushed.push((pa, l));
        }
        host.take_events();
        // Pushed last is first on the list: 0 (kept), 3, 0 (kept, after an unwanted one), 0, 1,
        // 0, 2 (kept, deep in the list), 1, 1.
        let keep = [2, 2, 1, 0, 0];
        d.release_keeping(&host, &mut cache, &keep);
        assert_eq!(d.count, 0);
        assert_eq!(
            cache.lens(),
            [2, 2, 1, 0, 0],
            "the reserve topped up to keep"
        );
        let freed: Vec<Hpa> = host
            .take_events()
            .iter()
            .filter_map(|e| match e {
                HostEvent::Free(pa, _) => Some(*pa),
                _ => None,
            })
            .collect();
        assert_eq!(freed.len(), order.len() - 3, "everything not kept is freed");
        // The reserve holds exactly the last two level-0 pushes and the level-2 one.
        let mut kept = Vec::new();
        for l in 0..3 {
            while let Some(pa) = cache.pop(&host, Level::from_index(l)) {
                kept.push(pa);
            }
        }
        let want_kept = [pushed[8].0, pushed[6].0, pushed[2].0];
        for pa in want_kept {
            assert!(kept.contains(&pa), "{pa:?} kept");
            assert!(!freed.contains(&pa), "{pa:?} both kept and freed");
        }
        for (pa, _) in &pushed {
            assert!(
                kept.contains(pa) || freed.contains(pa),
                "{pa:?} neither kept nor freed"
            );
        }
        for pa in kept {
            // SAFETY: the tables came from this host and are reachable from nothing.
            unsafe { host.free_table(pa, 4096) };
        }
        assert_eq!(host.outstanding_tables(), 0, "tables leaked");
    }
}
