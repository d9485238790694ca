//! A shadow TLB: the translations simulated vCPUs have cached, checked against the table.
//!
//! A test gives each simulated vCPU (or all of them) a [`ShadowTlb`], attaches it to the host
//! with [`super::HeapHost::attach_shadow_tlb`] so that every [`crate::Host::flush_tlb`] reaches
//! it, and makes every guest access go through [`ShadowTlb::access`] with the test's own software
//! walker. After an operation returns, [`ShadowTlb::check`] re-walks every cached translation and
//! fails if one grants more than the table now does: the engine returned without a flush it
//! owed (the flush contract in [`crate::host`]).
//!
//! The model is the strictest TLB the architectures allow: it never evicts, caches each leaf as
//! one translation (its whole size), keeps a translation after the table changes until a flush
//! covering it, and only re-walks on a miss, on an access the cached permissions do not allow,
//! or on a write through a translation that was filled by a read (hardware walks again then to
//! set the dirty bit).
//!
//! # Walking concurrently with the engine
//! The `walk` closure runs while the engine may be changing the same entries from other threads.
//! It must behave as a hardware walker does:
//! - read each entry once, atomically, with [`super::HeapHost::load_phys_u64`] (the raw word as
//!   stored; apply the format's byte order), and decide from that one value;
//! - set accessed/dirty bits with [`super::HeapHost::compare_exchange_phys_u64`] against the
//!   exact value it read, and return [`Walked::Retry`] if that fails: the engine changed the entry
//!   meanwhile, and the walk must start again from the root. Never a plain read-modify-write
//!   (`read_phys` then `write_phys`): it would silently undo an update the engine made between
//!   the two, which no hardware does.
//!
//! ```
//! use tdp_core::testing::{HeapHost, ShadowTlb, Walked};
//! use tdp_core::{Host, Perms};
//! use std::sync::Arc;
//!
//! // A one-entry "table": bit 0 present, bit 1 writable, bit 5 accessed, bits 12.. host page.
//! let host = HeapHost::new(0x10_0000, 64 << 10, 4096);
//! let entry = host.alloc_table(4096).unwrap().raw();
//! host.write_phys(entry, &(0x8000_3000u64 | 0b11).to_ne_bytes());
//! let walk = |gpa: u64| {
//!     let old = host.load_phys_u64(entry).unwrap();
//!     if old & 1 == 0 || gpa >= 0x1000 {
//!         return Walked::Fault;
//!     }
//!     if old & (1 << 5) == 0 && host.compare_exchange_phys_u64(entry, old, old | 1 << 5) != Some(Ok(old)) {
//!         return Walked::Retry; // lost a race with the engine: walk again
//!     }
//!     let perms = if old & 2 != 0 { Perms::RW } else { Perms::READ };
//!     Walked::Mapped { leaf_gpa: 0, size: 0x1000, hpa: old & !0xfff, perms }
//! };
//!
//! let tlb = Arc::new(ShadowTlb::new());
//! host.attach_shadow_tlb(tlb.clone());
//! assert_eq!(tlb.access(0x10, Perms::READ, walk), Some(0x8000_3010));
//! assert_ne!(host.load_phys_u64(entry).unwrap() & 1 << 5, 0, "the walk set A");
//! // Write-protect the entry without a flush: the cached translation is now stale.
//! host.write_phys(entry, &(0x8000_3000u64 | 1).to_ne_bytes());
//! let peek = |gpa: u64| {
//!     let e = host.load_phys_u64(entry).unwrap();
//!     let perms = if e & 2 != 0 { Perms::RW } else { Perms::READ };
//!     (e & 1 != 0 && gpa < 0x1000).then(|| ((e & !0xfff) + gpa, perms))
//! };
//! assert!(tlb.check(peek).is_err());
//! host.flush_tlb(tdp_core::TlbFlush::All);
//! assert!(tlb.check(peek).is_ok());
//! ```

use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::vec::Vec;

use crate::format::Perms;
use crate::host::TlbFlush;
use crate::sync::Mutex;

use super::heap::lock;

/// What the test's walker found for an address.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Walked {
    /// A leaf maps the address.
    Mapped {
        /// Guest-physical base of the leaf (aligned to `size`).
        leaf_gpa: u64,
        /// Size of the leaf in bytes (a power of two).
        size: u64,
        /// Host-physical address `leaf_gpa` translates to.
        hpa: u64,
        /// What the leaf grants.
        perms: Perms,
    },
    /// Nothing maps the address (or the walk would fault for another reason).
    Fault,
    /// The walker lost a race while setting accessed/dirty bits (its compare-exchange failed):
    /// it must walk again.
    Retry,
}

/// One cached translation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical base of the leaf it caches.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host-physical address `gpa` translates to.
    pub hpa: u64,
    /// The permissions the leaf granted when it was walked.
    pub perms: Perms,
    /// Filled by a write access (the walk set the dirty bit): writes hit without walking again.
    pub dirty: bool,
}

impl Translation {
    fn covers(&self, gpa: u64) -> bool {
        gpa.wrapping_sub(self.gpa) < self.size
    }
}

/// What a [`ShadowTlb`] did so far.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TlbStats {
    /// Accesses served from a cached translation.
    pub hits: u64,
    /// Accesses that had to walk (no translation, or not one that allows the access).
    pub misses: u64,
    /// Calls of the walker (misses plus retries).
    pub walks: u64,
    /// Walks that returned [`Walked::Retry`].
    pub retries: u64,
    /// Accesses that faulted (unmapped, or the leaf does not allow the access).
    pub faults: u64,
    /// Translations cached.
    pub fills: u64,
    /// [`TlbFlush::Range`] invalidations received.
    pub range_flushes: u64,
    /// [`TlbFlush::All`] invalidations received.
    pub all_flushes: u64,
    /// Translations dropped by invalidations.
    pub dropped: u64,
}

#[derive(Default)]
struct Inner {
    /// Cached translations by size, then by guest base (aligned to the size).
    by_size: BTreeMap<u64, BTreeMap<u64, Translation>>,
    stats: TlbStats,
}

impl Inner {
    fn translations(&self) -> impl Iterator<Item = &Translation> {
        self.by_size.values().flat_map(|m| m.values())
    }

    /// A cached translation of `gpa` that allows `want` without walking.
    fn hit(&self, gpa: u64, want: Perms) -> Option<&Translation> {
        self.by_size.iter().find_map(|(&size, m)| {
            m.get(&(gpa & !(size - 1)))
                .filter(|t| t.perms.contains(want) && (t.dirty || !want.contains(Perms::WRITE)))
        })
    }
}

/// The TLBs of simulated vCPUs: translations cached as the vCPUs use them, dropped only by TLB
/// invalidations (see the module docs). `Sync`: vCPU threads access it while the engine flushes
/// it from others.
///
/// Every method takes one internal lock: an access walks and fills under it and an invalidation
/// drops under it, so an invalidation is never overtaken by a fill from a walk that read the
/// entry before the invalidation began, as on hardware.
pub struct ShadowTlb {
    inner: Mutex<Inner>,
}

impl Default for ShadowTlb {
    fn default() -> Self {
        ShadowTlb::new()
    }
}

impl core::fmt::Debug for ShadowTlb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let inner = lock(&self.inner);
        f.debug_struct("ShadowTlb")
            .field("translations", &inner.translations().collect::<Vec<_>>())
            .field("stats", &inner.stats)
            .finish()
    }
}

/// Pages (4 KiB) of a translation `check` re-walks: all of them up to this many, else this many
/// spread evenly from the first to the last.
const CHECK_SAMPLES: u64 = 64;
const CHECK_PAGE: u64 = 4096;

/// The guest addresses of `t` that `check` re-walks.
fn samples(t: &Translation) -> impl Iterator<Item = u64> {
    let pages = (t.size / CHECK_PAGE).max(1);
    let n = pages.min(CHECK_SAMPLES);
    let base = t.gpa;
    (0..n).map(move |i| {
        let page = if n == pages {
            i
        } else {
            // i * (pages - 1) / (n - 1): 0 and pages - 1 included; fits in u128.
            ((i as u128 * (pages - 1) as u128) / (n - 1) as u128) as u64
        };
        base + page * CHECK_PAGE
    })
}

impl ShadowTlb {
    /// An empty TLB.
    pub fn new() -> ShadowTlb {
        ShadowTlb {
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A guest access to `gpa` needing `want` (empty = any mapping): the host-physical address it
    /// reaches, or `None` if it faults.
    ///
    /// On a hit whose permissions include `want` (and that was filled by a write, for a write)
    /// the cached translation answers. Otherwise `walk(gpa)` runs (again while it returns
    /// [`Walked::Retry`]); a mapping that allows `want` is cached and used. The cached
    /// translation stays until an invalidation covering it, whatever the table does meanwhile.
    ///
    /// # Panics
    /// If `walk` returns a mapping that does not cover `gpa`, or whose size is not a power of two
    /// or whose base is not aligned to it (a bug in the test's walker).
    pub fn access(
        &self,
        gpa: u64,
        want: Perms,
        mut walk: impl FnMut(u64) -> Walked,
    ) -> Option<u64> {
        let mut inner = lock(&self.inner);
        if let Some(t) = inner.hit(gpa, want) {
            let hpa = t.hpa + (gpa - t.gpa);
            inner.stats.hits += 1;
            return Some(hpa);
        }
        inner.stats.misses += 1;
        loop {
            inner.stats.walks += 1;
            match walk(gpa) {
                Walked::Retry => inner.stats.retries += 1,
                Walked::Fault => {
                    inner.stats.faults += 1;
                    return None;
                }
                Walked::Mapped {
                    leaf_gpa,
                    size,
                    hpa,
                    perms,
                } => {
                    let t = Translation {
                        gpa: leaf_gpa,
                        size,
                        hpa,
                        perms,
                        dirty: want.contains(Perms::WRITE),
                    };
                    assert!(
                        size.is_power_of_two() && leaf_gpa % size == 0 && t.covers(gpa),
                        "walk({gpa:#x}) returned a leaf that does not cover it: {t:?}"
                    );
                    if !perms.contains(want) {
                        inner.stats.faults += 1;
                        return None;
                    }
                    inner.stats.fills += 1;
                    inner.by_size.entry(size).or_default().insert(leaf_gpa, t);
                    return Some(hpa + (gpa - leaf_gpa));
                }
            }
        }
    }

    /// Applies a TLB invalidation: [`TlbFlush::All`] drops every translation, [`TlbFlush::Range`]
    /// every translation that overlaps the range, whatever its level hint says.
    pub fn invalidate(&self, flush: &TlbFlush) {
        let mut inner = lock(&self.inner);
        match *flush {
            TlbFlush::All => {
                inner.stats.all_flushes += 1;
                let n = inner.translations().count() as u64;
                inner.stats.dropped += n;
                inner.by_size.clear();
            }
            TlbFlush::Range { start, size, .. } => {
                inner.stats.range_flushes += 1;
                let start = start.raw();
                let end = u128::from(start) + u128::from(size);
                let mut dropped = 0;
                for (&tsize, m) in inner.by_size.iter_mut() {
                    // Translations are aligned to their size: the first that may overlap starts
                    // at `start` rounded down to it.
                    let first = start & !(tsize - 1);
                    let hit: Vec<u64> = m
                        .range(first..)
                        .map(|(&base, _)| base)
                        .take_while(|&base| u128::from(base) < end)
                        .collect();
                    for base in hit {
                        m.remove(&base);
                        dropped += 1;
                    }
                }
                inner.by_size.retain(|_, m| !m.is_empty());
                inner.stats.dropped += dropped;
            }
        }
    }

    /// Checks every cached translation against the table: `peek(gpa)` is the test's walker run
    /// without side effects (no accessed/dirty updates), returning the host-physical address of
    /// `gpa` and the leaf's permissions, or `None` if nothing maps it. Each translation is
    /// re-walked at every 4 KiB page it covers, or, for a huge one, at 64 pages spread from its
    /// first to its last.
    ///
    /// Run it when no engine operation is in flight (after one returns): it holds the TLB's lock,
    /// so vCPU accesses wait, but the table must be quiescent for the verdict to mean anything.
    ///
    /// # Errors
    /// A message naming every translation (up to 8, then a count) that grants more than the
    /// table: a different host address, a permission the leaf no longer grants, or no mapping at
    /// all. Each means a flush the engine owed was not done.
    pub fn check(&self, peek: impl Fn(u64) -> Option<(u64, Perms)>) -> Result<(), String> {
        let inner = lock(&self.inner);
        let mut stale = 0usize;
        let mut report = String::new();
        for t in inner.translations() {
            let problem = samples(t).find_map(|gpa| {
                let cached = t.hpa + (gpa - t.gpa);
                match peek(gpa) {
                    None => Some(format!("gpa {gpa:#x}: the table maps nothing")),
                    Some((hpa, _)) if hpa != cached => Some(format!(
                        "gpa {gpa:#x}: cached -> {cached:#x}, the table maps it to {hpa:#x}"
                    )),
                    Some((_, perms)) if !perms.contains(t.perms) => Some(format!(
                        "gpa {gpa:#x}: cached {:?}, the table grants only {perms:?}",
                        t.perms
                    )),
                    Some(_) => None,
                }
            });
            if let Some(problem) = problem {
                stale += 1;
                if stale <= 8 {
                    report += &format!(
                        "\n  leaf {:#x}+{:#x} -> {:#x} {:?}: {problem}",
                        t.gpa, t.size, t.hpa, t.perms
                    );
                }
            }
        }
        if stale == 0 {
            return Ok(());
        }
        if stale > 8 {
            report += &format!("\n  ... and {} more", stale - 8);
        }
        Err(format!(
            "the shadow TLB holds {stale} translation(s) granting more than the table \
             (a TLB flush is missing):{report}"
        ))
    }

    /// Number of cached translations.
    pub fn len(&self) -> usize {
        lock(&self.inner).translations().count()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached translations, by size then guest address.
    pub fn translations(&self) -> Vec<Translation> {
        lock(&self.inner).translations().copied().collect()
    }

    /// What the TLB did so far.
    pub fn stats(&self) -> TlbStats {
        lock(&self.inner).stats
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::addr::Gpa;
    use std::cell::Cell;

    /// A flat test "table": 4 KiB pages, or one 2 MiB leaf at 0x20_0000.
    #[derive(Clone)]
    struct Flat {
        pages: BTreeMap<u64, (u64, Perms)>,
        huge: Option<(u64, Perms)>,
    }

    impl Flat {
        fn new() -> Flat {
            Flat {
                pages: BTreeMap::new(),
                huge: None,
            }
        }
        fn walk(&self, gpa: u64) -> Walked {
            if let Some((hpa, perms)) = self.huge.filter(|_| (0x20_0000..0x40_0000).contains(&gpa))
            {
                return Walked::Mapped {
                    leaf_gpa: 0x20_0000,
                    size: 0x20_0000,
                    hpa,
                    perms,
                };
            }
            match self.pages.get(&(gpa & !0xfff)) {
                Some(&(hpa, perms)) => Walked::Mapped {
                    leaf_gpa: gpa & !0xfff,
                    size: 0x1000,
                    hpa,
                    perms,
                },
                None => Walked::Fault,
            }
        }
        fn peek(&self, gpa: u64) -> Option<(u64, Perms)> {
            match self.walk(gpa) {
                Walked::Mapped {
                    leaf_gpa,
                    hpa,
                    perms,
                    ..
                } => Some((hpa + gpa - leaf_gpa, perms)),
                _ => None,
            }
        }
    }

    fn range(start: u64, size: u64) -> TlbFlush {
        TlbFlush::Range {
            start: Gpa::new(start),
            size,
            level: None,
            tables: false,
        }
    }

    #[test]
    fn a_hit_does_not_walk_and_a_miss_walks_once() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        t.pages.insert(0x5000, (0x9_0000, Perms::RW));
        let walks = Cell::new(0);
        let walk = |gpa| {
            walks.set(walks.get() + 1);
            t.walk(gpa)
        };
        assert_eq!(tlb.access(0x5008, Perms::READ, walk), Some(0x9_0008));
        assert_eq!(tlb.access(0x5ff8, Perms::READ, walk), Some(0x9_0ff8));
        assert_eq!(walks.get(), 1);
        assert_eq!(
            tlb.access(0x6000, Perms::READ, walk),
            None,
            "unmapped faults"
        );
        assert_eq!(walks.get(), 2);
        let s = tlb.stats();
        assert_eq!((s.hits, s.misses, s.fills, s.faults), (1, 2, 1, 1));
        assert_eq!(tlb.len(), 1);
    }

    #[test]
    fn a_write_through_a_read_filled_translation_walks_again() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        t.pages.insert(0x5000, (0x9_0000, Perms::RW));
        let walks = Cell::new(0);
        let walk = |gpa| {
            walks.set(walks.get() + 1);
            t.walk(gpa)
        };
        tlb.access(0x5000, Perms::READ, walk);
        assert_eq!(tlb.access(0x5000, Perms::WRITE, walk), Some(0x9_0000));
        assert_eq!(walks.get(), 2, "the write walked to set the dirty bit");
        assert_eq!(tlb.access(0x5000, Perms::WRITE, walk), Some(0x9_0000));
        assert_eq!(walks.get(), 2, "then it hits");
    }

    #[test]
    fn an_access_the_cached_permissions_do_not_allow_walks_again() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        t.pages.insert(0x5000, (0x9_0000, Perms::READ));
        assert_eq!(
            tlb.access(0x5000, Perms::READ, |g| t.walk(g)),
            Some(0x9_0000)
        );
        assert_eq!(tlb.access(0x5000, Perms::WRITE, |g| t.walk(g)), None);
        // The table is made writable (more permission needs no flush): the write walks again.
        t.pages.insert(0x5000, (0x9_0000, Perms::RW));
        assert_eq!(
            tlb.access(0x5000, Perms::WRITE, |g| t.walk(g)),
            Some(0x9_0000)
        );
        assert_eq!(tlb.stats().hits, 0);
    }

    #[test]
    fn a_walk_that_loses_a_race_is_retried() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        t.pages.insert(0, (0x9_0000, Perms::RW));
        let mut lost = 2;
        let walk = |gpa| {
            if lost > 0 {
                lost -= 1;
                Walked::Retry
            } else {
                t.walk(gpa)
            }
        };
        assert_eq!(tlb.access(0x10, Perms::READ, walk), Some(0x9_0010));
        let s = tlb.stats();
        assert_eq!((s.walks, s.retries, s.fills), (3, 2, 1));
    }

    #[test]
    fn a_huge_leaf_is_one_translation() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        t.huge = Some((0x4000_0000, Perms::RWX));
        assert_eq!(
            tlb.access(0x20_1234, Perms::EXEC, |g| t.walk(g)),
            Some(0x4000_1234)
        );
        assert_eq!(
            tlb.access(0x3f_f000, Perms::READ, |g| t.walk(g)),
            Some(0x401f_f000)
        );
        assert_eq!(tlb.stats().hits, 1);
        assert_eq!(tlb.len(), 1);
    }

    #[test]
    fn a_range_flush_drops_every_overlapping_translation_and_nothing_else() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        for gpa in [0x1000, 0x2000, 0x3000, 0x10_0000] {
            t.pages.insert(gpa, (0x9000_0000 + gpa, Perms::RW));
        }
        t.huge = Some((0x4000_0000, Perms::RW));
        for gpa in [0x1000, 0x2000, 0x3000, 0x10_0000, 0x20_0000] {
            assert!(tlb.access(gpa, Perms::READ, |g| t.walk(g)).is_some());
        }
        assert_eq!(tlb.len(), 5);
        // Overlaps the page at 0x2000 only (ends exactly where 0x3000 starts).
        tlb.invalidate(&range(0x2800, 0x800));
        assert_eq!(tlb.len(), 4);
        // A 4 KiB flush in the middle of the 2 MiB leaf drops it, whatever its level hint says.
        tlb.invalidate(&TlbFlush::Range {
            start: Gpa::new(0x30_0000),
            size: 0x1000,
            level: Some(crate::Level::new(0).unwrap()),
            tables: false,
        });
        let left: Vec<u64> = tlb.translations().iter().map(|t| t.gpa).collect();
        assert_eq!(left, [0x1000, 0x3000, 0x10_0000]);
        tlb.invalidate(&range(0, 0x4000));
        assert_eq!(tlb.len(), 1);
        let s = tlb.stats();
        assert_eq!((s.range_flushes, s.all_flushes, s.dropped), (3, 0, 4));
    }

    #[test]
    fn a_full_flush_drops_everything() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        t.pages.insert(0x1000, (0x9000, Perms::RW));
        t.huge = Some((0x4000_0000, Perms::RW));
        tlb.access(0x1000, Perms::READ, |g| t.walk(g));
        tlb.access(0x20_0000, Perms::READ, |g| t.walk(g));
        tlb.invalidate(&TlbFlush::All);
        assert!(tlb.is_empty());
        assert_eq!(tlb.stats().all_flushes, 1);
        assert_eq!(tlb.stats().dropped, 2);
    }

    #[test]
    fn check_catches_a_stale_translation_until_it_is_flushed() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        t.pages.insert(0x1000, (0x9000, Perms::RW));
        t.pages.insert(0x2000, (0xa000, Perms::RW));
        t.pages.insert(0x3000, (0xb000, Perms::RW));
        for gpa in [0x1000, 0x2000, 0x3000] {
            tlb.access(gpa, Perms::READ, |g| t.walk(g));
        }
        assert_eq!(tlb.check(|g| t.peek(g)), Ok(()));

        // Write-protect, remap and unmap without flushing: all three are stale.
        t.pages.insert(0x1000, (0x9000, Perms::READ));
        t.pages.insert(0x2000, (0xc000, Perms::RW));
        t.pages.remove(&0x3000);
        let err = tlb.check(|g| t.peek(g)).unwrap_err();
        assert!(err.contains("3 translation(s)"), "{err}");
        assert!(err.contains("grants only"), "{err}");
        assert!(err.contains("maps it to 0xc000"), "{err}");
        assert!(err.contains("maps nothing"), "{err}");

        tlb.invalidate(&range(0x1000, 0x3000));
        assert_eq!(tlb.check(|g| t.peek(g)), Ok(()));
    }

    #[test]
    fn check_accepts_a_table_that_grants_more_than_the_cache() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        t.pages.insert(0x1000, (0x9000, Perms::READ));
        tlb.access(0x1000, Perms::READ, |g| t.walk(g));
        t.pages.insert(0x1000, (0x9000, Perms::RWX));
        assert_eq!(tlb.check(|g| t.peek(g)), Ok(()));
    }

    #[test]
    fn check_finds_a_split_huge_leaf_that_now_maps_one_page_elsewhere() {
        let tlb = ShadowTlb::new();
        let mut t = Flat::new();
        t.huge = Some((0x4000_0000, Perms::RW));
        tlb.access(0x20_0000, Perms::READ, |g| t.walk(g));
        // The leaf is split into pages and its last page remapped, without a flush.
        t.huge = None;
        for i in 0..512 {
            t.pages.insert(
                0x20_0000 + i * 0x1000,
                (0x4000_0000 + i * 0x1000, Perms::RW),
            );
        }
        assert_eq!(tlb.check(|g| t.peek(g)), Ok(()), "a split changes nothing");
        t.pages.insert(0x3f_f000, (0x7000_0000, Perms::RW));
        let err = tlb.check(|g| t.peek(g)).unwrap_err();
        assert!(err.contains("gpa 0x3ff000"), "{err}");
    }

    #[test]
    fn the_heap_host_forwards_its_flushes_to_attached_tlbs() {
        use crate::host::Host;
        use std::sync::Arc;
        let host = super::super::HeapHost::new(0x10_0000, 64 << 10, 4096);
        let (a, b) = (Arc::new(ShadowTlb::new()), Arc::new(ShadowTlb::new()));
        host.attach_shadow_tlb(a.clone());
        host.attach_shadow_tlb(b.clone());
        let mut t = Flat::new();
        t.pages.insert(0x1000, (0x9000, Perms::RW));
        a.access(0x1000, Perms::READ, |g| t.walk(g));
        b.access(0x1000, Perms::READ, |g| t.walk(g));
        host.set_recording(false);
        host.flush_tlb(range(0x1000, 0x1000));
        assert!(
            a.is_empty() && b.is_empty(),
            "forwarded even when not recording"
        );
        assert_eq!(a.stats().range_flushes, 1);
    }

    #[test]
    fn shadow_tlb_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<ShadowTlb>();
    }
}
