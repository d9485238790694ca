//! The table cache: table pages reserved before an operation changes anything, so that an
//! operation never fails half-way for lack of memory (KVM's `mmu_topup_memory_caches`), and that
//! keeps a few freed, already-flushed pages warm for the next operation.
//!
//! Lists are threaded through each table's [`TableMeta::link`], so the cache needs no memory of its
//! own. The same links chain the tables an operation detached until its TLB flush has completed.

use core::sync::atomic::Ordering;

use crate::addr::{Hpa, Level};
use crate::geometry::{Geometry, MAX_LEVELS};
use crate::host::{Host, TableMeta};

const NIL: u64 = u64::MAX;

/// Reserved tables, one list per level.
#[derive(Debug)]
pub(crate) struct TableCache {
    head: [u64; MAX_LEVELS],
    len: [u32; MAX_LEVELS],
}

fn meta<H: Host>(host: &H, pa: u64) -> &TableMeta {
    // SAFETY: every address on the engine's lists came from `alloc_table` and is not freed while
    // listed, so the host keeps its metadata valid (Host contract).
    unsafe { host.meta(Hpa::new(pa)).as_ref() }
}

impl TableCache {
    pub(crate) const fn new() -> Self {
        TableCache {
            head: [NIL; MAX_LEVELS],
            len: [0; MAX_LEVELS],
        }
    }

    /// Tables held, by level.
    pub(crate) fn lens(&self) -> [u32; MAX_LEVELS] {
        self.len
    }

    /// Total bytes held.
    pub(crate) fn bytes(&self, geo: &Geometry) -> usize {
        (0..geo.levels() as usize)
            .map(|l| self.len[l] as usize * geo.table_size(Level::from_index(l)))
            .sum()
    }

    /// Adds a table that is owned by the engine and reachable from nothing.
    pub(crate) fn push<H: Host>(&mut self, host: &H, level: Level, pa: Hpa) {
        let m = meta(host, pa.raw());
        m.link.store(self.head[level.index()], Ordering::Relaxed);
        self.head[level.index()] = pa.raw();
        self.len[level.index()] += 1;
    }

    /// Takes a table for `level`, its metadata reset.
    pub(crate) fn pop<H: Host>(&mut self, host: &H, level: Level) -> Option<Hpa> {
        let pa = self.head[level.index()];
        if pa == NIL {
            return None;
        }
        let m = meta(host, pa);
        self.head[level.index()] = m.link.load(Ordering::Relaxed);
        self.len[level.index()] -= 1;
        m.link.store(0, Ordering::Relaxed);
        m.count.store(0, Ordering::Relaxed);
        m.flags.store(0, Ordering::Relaxed);
        Some(Hpa::new(pa))
    }

    /// Tops up every level to `need[level]` tables.
    ///
    /// On failure the cache is trimmed back to what it held before and the size that could not be
    /// allocated is returned.
    pub(crate) fn reserve<H: Host>(
        &mut self,
        host: &H,
        geo: &Geometry,
        need: &[u64; MAX_LEVELS],
    ) -> Result<(), usize> {
        if (0..MAX_LEVELS).all(|l| u64::from(self.len[l]) >= need[l]) {
            return Ok(());
        }
        let before = self.len;
        for l in 0..geo.levels() as usize {
            let level = Level::from_index(l);
            let size = geo.table_size(level);
            while u64::from(self.len[l]) < need[l] {
                match host.alloc_table(size) {
                    Some(pa) => {
                        // SAFETY: `pa` was just allocated, so its metadata is valid (Host contract).
                        let m = unsafe { host.meta(pa).as_ref() };
                        m.count.store(0, Ordering::Relaxed);
                        self.push(host, level, pa)
                    }
                    None => {
                        self.trim_to(host, geo, &before);
                        return Err(size);
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives tables back to the host until each level holds at most `keep[level]`.
    #[inline]
    pub(crate) fn trim_to<H: Host>(&mut self, host: &H, geo: &Geometry, keep: &[u32; MAX_LEVELS]) {
        if (0..MAX_LEVELS).all(|l| self.len[l] <= keep[l]) {
            return;
        }
        for l in 0..geo.levels() as usize {
            let level = Level::from_index(l);
            while self.len[l] > keep[l] {
                if let Some(pa) = self.pop(host, level) {
                    // SAFETY: cached tables came from `alloc_table(table_size(level))`, are reachable
                    // from no table, and were flushed before they entered the cache.
                    unsafe { host.free_table(pa, geo.table_size(level)) };
                }
            }
        }
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
    /// cached by a hardware walker until the next flush).
    pub(crate) fn push<H: Host>(&mut self, host: &H, level: Level, pa: Hpa) {
        let m = meta(host, pa.raw());
        // Table pages are at least 256-byte aligned: the low bits carry the level.
        m.link.store(self.head, Ordering::Relaxed);
        self.head = pa.raw() | level.get() as u64;
        self.count += 1;
    }

    /// Moves every detached table into `cache`. Call only after the flush that covers them.
    pub(crate) fn release<H: Host>(&mut self, host: &H, cache: &mut TableCache) {
        while self.head != NIL {
            let level = Level::from_index((self.head & 0xff) as usize);
            let pa = self.head & !0xff;
            self.head = meta(host, pa).link.load(Ordering::Relaxed);
            cache.push(host, level, Hpa::new(pa));
        }
        self.count = 0;
    }
}
