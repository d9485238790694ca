//! Bounded multi-threaded stress runs of a shared-mode [`Tree`] against a simulated hardware
//! walker, and a single-threaded check that shared mode without contention behaves like
//! exclusive mode. Written once here; each architecture's tests supply its format and its
//! independent walker through [`Hardware`].
//!
//! # The stress run ([`stress`])
//! Several updater threads run random map (4 KiB and 2 MiB leaves, accessed/dirty left for
//! hardware to set), fill (a map of every hole of a range, then protect and collapse: fault-in
//! followed by huge-page recovery), unmap (down to the removal of whole subtrees), protect,
//! split and collapse over overlapping ranges of a small guest space (two 2 MiB regions), each
//! with its own [`Ctx`] and [`PendingFlush`] (flushed after every call or after a batch of up
//! to 8), sometimes with a budget (resuming after every yield), inside a read-side section of
//! the host that is dropped and taken again between batches (so the epoch reclaimer frees
//! retired tables while the run goes on). One more thread is the hardware: it accesses random
//! guest addresses through a [`ShadowTlb`] attached to the host, walking with the
//! architecture's independent walker over a [`Snapshot`] of memory (every entry read once;
//! accessed/dirty set by compare-exchange against that value, a lost race is a
//! [`Walked::Retry`]); it holds no read-side section, like hardware, so only the flush protects
//! it from a freed table.
//!
//! The host the updaters use holds recycled tables back for a while and checks that they stay
//! poisoned, and now and then lets another thread run at the points where a stale pointer or a
//! break-before-make is in flight (see `Quarantine` in the source): a write to a freed table is
//! reported, and the interleavings that matter happen often even on two cores.
//!
//! While it runs: every call returns `Ok`, [`Error::AlreadyMapped`] (a map that met a mapping)
//! or [`Error::Retry`], and never panics; every translation the hardware finds maps its guest
//! address to a host address some map call asked for there. The run goes in rounds separated by
//! barriers; at the end of each round (updaters quiescent, every obligation flushed):
//! - (a) [`ShadowTlb::check`]: no cached translation grants more than the table;
//! - (b) the leaves per level that [`Tree::stats`] counts equal those a walk of the tree finds
//!   and those the independent walker finds over the guest space; the tables per level equal
//!   those the walk finds;
//! - (c) for every table (the root and every table a `TablePre` visit leads to, decoded by the
//!   architecture, not by the format), the entries that are not empty number
//!   [`crate::TableMeta::count`], and none is frozen or otherwise foreign;
//! - (d) no entry anywhere holds [`HeapHost::POISON`] (a freed table still linked);
//! - no table is linked twice, no freed table was written, and after a grace period the host
//!   holds exactly the tree's tables plus the callers' reserves (no leak).
//!
//! At the end the tree is dropped and, after a grace period, the host holds no table.
//!
//! # The equivalence run ([`shared_matches_exclusive`])
//! One thread runs the same random sequences (with hardware accesses) through
//! [`Tree::shared`] and through [`Table`], on two hosts, and after every step compares the
//! results, what the independent walker sees at the touched addresses and what `query` reports
//! there (accessed/dirty included), and at the end of every round every address of the space
//! and checks (b)-(d) on both trees. The one documented difference of the modes (empty tables
//! stay in shared mode, so a later map may use smaller leaves there) is allowed in its exact
//! shape and counted; see [`shared_matches_exclusive`].
//!
//! Both runs are deterministic in their operation sequences: each thread draws from its own
//! xorshift generator seeded from the configuration's seed, which every failure message names
//! (set `TDP_STRESS_SEED` to rerun one, `TDP_STRESS_ROUNDS` for a longer run,
//! `TDP_STRESS_UPDATERS` for another number of updaters). The interleaving
//! of threads is not reproducible; a failure message lists the last operations of every thread.
//! A watchdog ends the process if a run makes no progress (a livelock on a frozen entry left
//! behind by a panic, say) rather than letting `cargo test` hang.

use core::cell::{Cell, RefCell};
use core::mem::ManuallyDrop;
use core::ops::ControlFlow;
use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::format;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::flush::PendingFlush;
use crate::format::{Attrs, ByteOrder, EntryKind, Perms, PteFormat};
use crate::geometry::MAX_LEVELS;
use crate::host::{Host, SharedHost};
use crate::iter::Visit;
use crate::table::{MapOptions, Mapping, Stats, Table, WalkEntry};
use crate::tree::{Ctx, Progress, SharedAccess, Tree};

use super::heap::{lock, HeapHost};
use super::shadow::{ShadowTlb, TlbStats, Walked};

// --- the hardware side ------------------------------------------------------------------------

/// Physical memory as one hardware walk sees it: each aligned 8-byte word is loaded once,
/// atomically ([`HeapHost::load_phys_u64`]), and every later read of it in the same walk returns
/// that value; a write of a whole word (hardware setting accessed/dirty) is a
/// [`HeapHost::compare_exchange_phys_u64`] against it. If the word changed meanwhile, the write
/// fails, [`Snapshot::lost`] turns true and every later write fails too: the walk lost a race
/// with the engine and must start again ([`Walked::Retry`]). Never a plain read-modify-write,
/// which would undo an update the engine made in between.
///
/// Words are the raw native-endian values as stored; [`Snapshot::read`] hands out their bytes
/// in memory order, so a walker decodes them with its own byte order (little-endian for x86 and
/// arm64, big-endian for Power).
pub struct Snapshot<'a> {
    host: &'a HeapHost,
    seen: RefCell<Vec<(u64, u64)>>,
    lost: Cell<bool>,
}

impl core::fmt::Debug for Snapshot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("seen", &self.seen.borrow())
            .field("lost", &self.lost.get())
            .finish()
    }
}

impl<'a> Snapshot<'a> {
    /// A walk of `host`'s memory that has read nothing yet.
    pub fn new(host: &'a HeapHost) -> Snapshot<'a> {
        Snapshot {
            host,
            seen: RefCell::new(Vec::new()),
            lost: Cell::new(false),
        }
    }

    fn word(&self, pa: u64) -> Option<u64> {
        if let Some(&(_, w)) = self.seen.borrow().iter().find(|(p, _)| *p == pa) {
            return Some(w);
        }
        let w = self.host.load_phys_u64(pa)?;
        self.seen.borrow_mut().push((pa, w));
        Some(w)
    }

    /// Reads `buf.len()` bytes at `pa` from the snapshot (loading each word the first time it is
    /// touched). False if any byte is outside the host's window.
    pub fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let Some(a) = pa.checked_add(done as u64) else {
                return false;
            };
            let off = (a % 8) as usize;
            let n = (8 - off).min(buf.len() - done);
            let Some(w) = self.word(a - off as u64) else {
                return false;
            };
            buf[done..done + n].copy_from_slice(&w.to_ne_bytes()[off..off + n]);
            done += n;
        }
        true
    }

    /// Writes one whole aligned entry at `pa` by compare-exchange against the value this walk
    /// read there. False (and [`Snapshot::lost`] set) if the entry changed since; false if a
    /// race was lost before, or `pa` is outside the window.
    ///
    /// # Panics
    /// If the write is not one aligned 8-byte word (a hardware walker updates whole entries).
    pub fn write(&self, pa: u64, buf: &[u8]) -> bool {
        assert!(
            pa % 8 == 0 && buf.len() == 8,
            "a hardware walker writes whole aligned entries ({pa:#x}, {} bytes)",
            buf.len()
        );
        if self.lost.get() {
            return false;
        }
        let new = u64::from_ne_bytes(buf.try_into().expect("8 bytes"));
        let Some(old) = self.word(pa) else {
            return false;
        };
        match self.host.compare_exchange_phys_u64(pa, old, new) {
            Some(Ok(_)) => {
                for e in self.seen.borrow_mut().iter_mut() {
                    if e.0 == pa {
                        e.1 = new;
                    }
                }
                true
            }
            Some(Err(_)) => {
                self.lost.set(true);
                false
            }
            None => false,
        }
    }

    /// Whether a write of this walk lost a race with another agent.
    pub fn lost(&self) -> bool {
        self.lost.get()
    }
}

/// What one hardware access (or side-effect-free look) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HwWalk {
    /// The access translates: `hpa` is the output address of the guest address, `size` the
    /// size of the leaf that maps it.
    Mapped {
        /// Output address of the walked guest address (offset included).
        hpa: u64,
        /// Size in bytes of the leaf.
        size: u64,
    },
    /// The access faults (nothing maps the address, or the leaf does not allow the access).
    Fault,
    /// The walker met something the engine never builds (a misconfigured or reserved encoding,
    /// a table outside memory): the message says what.
    Broken(String),
}

/// An architecture as the stress driver needs it: its format and its independent walker.
pub trait Hardware: Sync {
    /// The engine's format for the configuration under test.
    type Format: PteFormat + Clone + Send + Sync;

    /// The format (a fresh value each time; the equivalence run builds two trees).
    fn format(&self) -> Self::Format;

    /// Walks `gpa` for `access` (exactly one of `READ`, `WRITE`, `EXEC_SUPER`, `EXEC_USER`)
    /// through `mem` in the tree at `root`, with the architecture's independent walker: with
    /// `update`, as the hardware does an access (setting accessed/dirty through
    /// [`Snapshot::write`]); without, a look that writes nothing.
    fn walk(
        &self,
        fmt: &Self::Format,
        mem: &Snapshot<'_>,
        root: Hpa,
        gpa: u64,
        access: Perms,
        update: bool,
    ) -> HwWalk;

    /// The physical address of the table that the table entry `raw` at `level` points to,
    /// decoded from the architecture's manual (not by the format).
    fn table_addr(&self, fmt: &Self::Format, raw: u64, level: Level) -> u64;
}

/// The single-bit accesses a walk is made for.
const ACCESSES: [Perms; 4] = [
    Perms::READ,
    Perms::WRITE,
    Perms::EXEC_SUPER,
    Perms::EXEC_USER,
];

/// Looks at `gpa` for every access kind: the output address and the leaf size (the same for
/// every access that translates), and the accesses that translate.
fn look<W: Hardware>(
    hw: &W,
    fmt: &W::Format,
    mem: &Snapshot<'_>,
    root: Hpa,
    gpa: u64,
) -> Result<Option<(u64, u64, Perms)>, String> {
    let mut found: Option<(u64, u64)> = None;
    let mut perms = Perms::empty();
    for a in ACCESSES {
        match hw.walk(fmt, mem, root, gpa, a, false) {
            HwWalk::Mapped { hpa, size } => {
                if found.is_some_and(|f| f != (hpa, size)) {
                    return Err(format!(
                        "gpa {gpa:#x}: accesses disagree: {found:?} and {:?} for {a:?}",
                        (hpa, size)
                    ));
                }
                found = Some((hpa, size));
                perms |= a;
            }
            HwWalk::Fault => {}
            HwWalk::Broken(m) => return Err(format!("gpa {gpa:#x} ({a:?}): {m}")),
        }
    }
    Ok(found.map(|(hpa, size)| (hpa, size, perms)))
}

// --- configuration and report ----------------------------------------------------------------

/// The host ranges map calls use: backing `i` maps guest `gpa` to `BACKINGS[i] + gpa`, so that
/// the backing of any translation is known from its addresses. The last one is not 2 MiB
/// aligned (only 4 KiB leaves, and nothing to collapse).
const BACKINGS: [u64; 4] = [1 << 32, 2 << 32, 3 << 32, (4 << 32) + 0x3000];

/// How big a run is. [`StressConfig::new`] gives the defaults the tests use.
#[derive(Clone, Debug)]
pub struct StressConfig {
    /// Names the run in messages.
    pub name: &'static str,
    /// Seeds every thread's generator.
    pub seed: u64,
    /// Updater threads.
    pub updaters: usize,
    /// Rounds (barrier-separated, checked at their end).
    pub rounds: u32,
    /// Operations per updater per round (steps per round for the equivalence run).
    pub ops_per_round: u32,
    /// Largest number of operations run under one read-side guard.
    pub max_batch: u32,
    /// Most hardware accesses per round (the walker stops earlier when the updaters are done).
    pub accesses_per_round: u32,
    /// Size in bytes of the guest space `[0, space)` the operations use.
    pub space: u64,
    /// The host's physical window (base, size) and its metadata granule.
    pub window: (u64, u64, usize),
    /// The watchdog's limit for the whole run.
    pub timeout: Duration,
}

impl StressConfig {
    /// The defaults: three updaters over 4 MiB of guest space (two 2 MiB regions), 90 rounds of
    /// 400 operations per updater in batches of up to 8, at most 12 000 hardware accesses per
    /// round, a 16 MiB window at `window_base`; then `TDP_STRESS_SEED`, `TDP_STRESS_ROUNDS` and
    /// `TDP_STRESS_UPDATERS` from the environment if set.
    ///
    /// # Panics
    /// If an environment override does not parse.
    pub fn new(name: &'static str, seed: u64, window_base: u64) -> StressConfig {
        let mut c = StressConfig {
            name,
            seed,
            updaters: 3,
            rounds: 90,
            ops_per_round: 400,
            max_batch: 8,
            accesses_per_round: 12_000,
            space: 4 << 20,
            window: (window_base, 16 << 20, 4096),
            timeout: Duration::from_secs(120),
        };
        if let Ok(s) = std::env::var("TDP_STRESS_SEED") {
            let s = s.trim();
            c.seed = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            }
            .expect("TDP_STRESS_SEED: a number");
        }
        if let Ok(u) = std::env::var("TDP_STRESS_UPDATERS") {
            c.updaters = u.trim().parse().expect("TDP_STRESS_UPDATERS: a number");
        }
        if let Ok(r) = std::env::var("TDP_STRESS_ROUNDS") {
            c.rounds = r.trim().parse().expect("TDP_STRESS_ROUNDS: a number");
            c.timeout = c.timeout.max(Duration::from_secs(u64::from(c.rounds) * 10));
        }
        c
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct StressReport {
    /// Operations issued (map, fill, unmap, protect, split, collapse), by kind.
    pub ops: [u64; 6],
    /// Calls that returned `Ok` (a yielded call that was resumed counts once).
    pub ok: u64,
    /// Resumptions after [`Progress::Yielded`].
    pub yielded: u64,
    /// Maps refused with [`Error::AlreadyMapped`].
    pub already_mapped: u64,
    /// Calls that returned [`Error::Retry`].
    pub retry: u64,
    /// Hardware accesses made.
    pub accesses: u64,
    /// What the shadow TLB did (hits, misses, walk retries, fills, flushes...).
    pub tlb: TlbStats,
    /// Hardware accesses that translated through a leaf above level 0.
    pub huge_hits: u64,
    /// Equivalence run: steps after which the tree had more leaves above level 0 than before
    /// (a huge map or a successful collapse).
    pub huge_made: u64,
    /// Rounds run and checked.
    pub rounds: u32,
    /// Equivalence run: times a level-1 region became diverged (see
    /// [`shared_matches_exclusive`]).
    pub diverged: u64,
    /// Leaves per level found at round ends, summed over rounds.
    pub leaves_seen: [u64; MAX_LEVELS],
    /// Tables per level found at round ends, summed over rounds.
    pub tables_seen: [u64; MAX_LEVELS],
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl StressReport {
    /// All operations issued.
    pub fn total_ops(&self) -> u64 {
        self.ops.iter().sum()
    }
}

impl fmt::Display for StressReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [m, fl, u, p, s, c] = self.ops;
        write!(
            f,
            "{} ops (map {m}, fill {fl}, unmap {u}, protect {p}, split {s}, collapse {c}; ok {}, \
             already-mapped {}, retry {}, resumed {}), {} accesses (hits {}, misses {}, walk \
             retries {}, faults {}, fills {}, walks through huge leaves {}; {} range + {} full \
             flushes), {} rounds, leaves \
             seen {:?}, tables seen {:?}, {} steps made huge leaves, {} diverged regions, {:.2?}",
            self.total_ops(),
            self.ok,
            self.already_mapped,
            self.retry,
            self.yielded,
            self.accesses,
            self.tlb.hits,
            self.tlb.misses,
            self.tlb.retries,
            self.tlb.faults,
            self.tlb.fills,
            self.huge_hits,
            self.tlb.range_flushes,
            self.tlb.all_flushes,
            self.rounds,
            &self.leaves_seen[..4],
            &self.tables_seen[..4],
            self.huge_made,
            self.diverged,
            self.elapsed
        )
    }
}

// --- operations --------------------------------------------------------------------------------

/// A small xorshift64* generator.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        // splitmix64 of the pair, so that nearby seeds and streams diverge at once.
        let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Op {
    Map {
        gpa: u64,
        size: u64,
        backing: usize,
        perms: Perms,
        max_level: Option<Level>,
        young: bool,
    },
    /// Maps every hole of the range with `backing` (one map call per hole, as faults populate
    /// memory), sets the range's permissions and collapses it: huge-page recovery after
    /// faults, so that whole tables fill up and collapse while other updaters run.
    Fill {
        gpa: u64,
        size: u64,
        backing: usize,
        perms: Perms,
    },
    Unmap {
        gpa: u64,
        size: u64,
    },
    Protect {
        gpa: u64,
        size: u64,
        perms: Perms,
    },
    Split {
        gpa: u64,
        size: u64,
    },
    Collapse {
        gpa: u64,
        size: u64,
    },
    Access {
        gpa: u64,
        access: Perms,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Map {
                gpa,
                size,
                backing,
                perms,
                max_level,
                young,
            } => write!(
                f,
                "map [{gpa:#x}, +{size:#x}) -> {:#x} {perms:?} max {max_level:?} young {young}",
                BACKINGS[backing] + gpa
            ),
            Op::Fill {
                gpa,
                size,
                backing,
                perms,
            } => write!(
                f,
                "fill [{gpa:#x}, +{size:#x}) -> {:#x} {perms:?}",
                BACKINGS[backing] + gpa
            ),
            Op::Unmap { gpa, size } => write!(f, "unmap [{gpa:#x}, +{size:#x})"),
            Op::Protect { gpa, size, perms } => {
                write!(f, "protect [{gpa:#x}, +{size:#x}) {perms:?}")
            }
            Op::Split { gpa, size } => write!(f, "split [{gpa:#x}, +{size:#x}) to 4K"),
            Op::Collapse { gpa, size } => write!(f, "collapse [{gpa:#x}, +{size:#x})"),
            Op::Access { gpa, access } => write!(f, "access {gpa:#x} {access:?}"),
        }
    }
}

impl Op {
    fn kind(&self) -> usize {
        match self {
            Op::Map { .. } => 0,
            Op::Fill { .. } => 1,
            Op::Unmap { .. } => 2,
            Op::Protect { .. } => 3,
            Op::Split { .. } => 4,
            Op::Collapse { .. } => 5,
            Op::Access { .. } => 6,
        }
    }

    fn span(&self) -> (u64, u64) {
        match *self {
            Op::Map { gpa, size, .. }
            | Op::Fill { gpa, size, .. }
            | Op::Unmap { gpa, size }
            | Op::Protect { gpa, size, .. }
            | Op::Split { gpa, size }
            | Op::Collapse { gpa, size } => (gpa, size),
            Op::Access { gpa, .. } => (gpa & !0xfff, 0x1000),
        }
    }
}

/// Draws an operation over `[0, space)`: starts biased to 2 MiB alignment, sizes biased to
/// 2 MiB, so that huge leaves, splits and collapses happen; now and then an unmap of the whole
/// level-2 span (down to the removal of a whole subtree).
struct Gen {
    page: u64,
    huge: u64,
    space: u64,
    wide: Option<u64>,
    accesses: bool,
    young: bool,
}

impl Gen {
    fn op(&self, r: &mut Rng) -> Op {
        let pages = self.space / self.page;
        let hp = self.huge / self.page;
        let regions = pages / hp;
        let start = match r.below(10) {
            0..=3 => r.below(pages),
            4..=8 => r.below(regions) * hp,
            _ => r.below(regions) * hp + hp / 2,
        };
        let n = match r.below(20) {
            0..=5 => 1 + r.below(8),
            6..=12 => hp,
            13..=14 => 1 + r.below(2 * hp + 100),
            15..=16 => 2 * hp,
            17 => 1,
            _ => hp / 2,
        };
        let n = n.min(pages - start).max(1);
        let (gpa, size) = (start * self.page, n * self.page);
        let roll = r.below(if self.accesses { 114 } else { 100 });
        match roll {
            0..=33 => Op::Map {
                gpa,
                size,
                // Mostly the region's own backing (like one memslot per region), so that
                // neighbouring maps are contiguous and collapse; now and then another one.
                backing: match r.below(20) {
                    0..=16 => (start / hp % 3) as usize,
                    17..=18 => r.below(3) as usize,
                    _ => 3,
                },
                perms: perms(r),
                max_level: (r.below(4) == 0).then_some(Level::LEAF),
                young: self.young && r.below(2) == 0,
            },
            34..=41 => Op::Fill {
                gpa,
                size,
                backing: (start / hp % 3) as usize,
                perms: perms(r),
            },
            42..=53 => match self.wide {
                Some(w) if r.below(40) == 0 => Op::Unmap { gpa: 0, size: w },
                _ => Op::Unmap { gpa, size },
            },
            54..=69 => Op::Protect {
                gpa,
                size,
                perms: perms(r),
            },
            70..=77 => Op::Split { gpa, size },
            78..=99 => Op::Collapse { gpa, size },
            _ => Op::Access {
                gpa: gpa + (r.below(self.page / 8) * 8),
                access: match r.below(10) {
                    0..=4 => Perms::READ,
                    5..=8 => Perms::WRITE,
                    _ => Perms::EXEC_SUPER,
                },
            },
        }
    }
}

/// Permissions, mostly read-write (so that neighbouring maps agree and collapse).
fn perms(r: &mut Rng) -> Perms {
    match r.below(10) {
        0..=4 => Perms::RW,
        5..=6 => Perms::RWX,
        7..=8 => Perms::READ,
        _ => Perms::RX,
    }
}

fn range(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).expect("ranges are small")
}

/// Marks, before a map is issued, that it asks for its backing over its pages.
fn mark_asked(asked: &[AtomicU8], page: u64, op: &Op) {
    let (gpa, size, backing) = match *op {
        Op::Map {
            gpa, size, backing, ..
        } => (gpa, size, backing),
        Op::Fill {
            gpa, size, backing, ..
        } => (gpa, size, backing),
        _ => return,
    };
    {
        for p in gpa / page..(gpa + size) / page {
            if let Some(a) = asked.get(p as usize) {
                a.fetch_or(1 << backing, Ordering::AcqRel);
            }
        }
    }
}

/// Checks that `[leaf_gpa, leaf_gpa + size) -> leaf_hpa` maps only what map calls asked for.
fn check_asked(
    asked: &[AtomicU8],
    page: u64,
    leaf_gpa: u64,
    size: u64,
    leaf_hpa: u64,
) -> Result<(), String> {
    let Some(b) = BACKINGS
        .iter()
        .position(|&base| leaf_hpa.wrapping_sub(leaf_gpa) == base)
    else {
        return Err(format!(
            "leaf [{leaf_gpa:#x}, +{size:#x}) -> {leaf_hpa:#x}: no map call asked for that host \
             range at that guest address (host - guest = {:#x})",
            leaf_hpa.wrapping_sub(leaf_gpa)
        ));
    };
    for p in leaf_gpa / page..(leaf_gpa + size) / page {
        let mask = asked
            .get(p as usize)
            .map_or(0, |a| a.load(Ordering::Acquire));
        if mask & (1 << b) == 0 {
            return Err(format!(
                "leaf [{leaf_gpa:#x}, +{size:#x}) -> {leaf_hpa:#x}: page {:#x} was never asked \
                 for with backing {b} (asked: {mask:#06b})",
                p * page
            ));
        }
    }
    Ok(())
}

/// Runs `op` through shared access, resuming after each yield.
fn apply_shared<F: PteFormat, H: SharedHost>(
    acc: &SharedAccess<'_, F, H>,
    ctx: &mut Ctx,
    flush: &mut PendingFlush<H>,
    op: &Op,
    resumed: &mut u64,
) -> Result<(), Error> {
    let (mut at, size) = op.span();
    let end = at + size;
    if let Op::Fill { backing, perms, .. } = *op {
        let holes = holes(|r, v| acc.walk(r, |e| v(e)), acc.tree().format(), at, size);
        let mut refused = None;
        for (gpa, size) in holes {
            let map = Op::Map {
                gpa,
                size,
                backing,
                perms,
                max_level: None,
                young: false,
            };
            match apply_shared(acc, ctx, flush, &map, resumed) {
                Ok(()) => {}
                // Another updater mapped part of the hole meanwhile.
                Err(e @ Error::AlreadyMapped { .. }) => refused = Some(e),
                Err(e) => return Err(e),
            }
        }
        refused.map_or(Ok(()), Err)?;
        let protect = Op::Protect {
            gpa: at,
            size,
            perms,
        };
        apply_shared(acc, ctx, flush, &protect, resumed)?;
        let collapse = Op::Collapse { gpa: at, size };
        return apply_shared(acc, ctx, flush, &collapse, resumed);
    }
    loop {
        let r = range(at, end - at);
        let p = match *op {
            Op::Map {
                backing,
                perms,
                max_level,
                young,
                ..
            } => acc.map(
                ctx,
                flush,
                r,
                Hpa::new(BACKINGS[backing] + at),
                Attrs::normal(perms),
                MapOptions {
                    max_level,
                    young_dirty: young,
                },
            ),
            Op::Unmap { .. } => acc.unmap(ctx, flush, r),
            Op::Protect { perms, .. } => acc.protect(ctx, flush, r, perms),
            Op::Split { .. } => acc.split(ctx, flush, r, Level::LEAF),
            Op::Collapse { .. } => acc.collapse(ctx, flush, r),
            Op::Access { .. } | Op::Fill { .. } => return Ok(()),
        }?;
        match p {
            Progress::Done => return Ok(()),
            Progress::Yielded { resume } => {
                if resume.raw() <= at || resume.raw() >= end {
                    return Err(Error::InvalidConfig {
                        what: "a yield that makes no progress (resume)",
                        value: resume.raw(),
                    });
                }
                *resumed += 1;
                at = resume.raw();
            }
        }
    }
}

/// The holes (first address, size) of `[gpa, gpa + size)` in the tree `walk` walks (a frozen
/// entry counts as mapped).
fn holes<F: PteFormat>(
    walk: impl FnOnce(GpaRange, &mut dyn FnMut(&WalkEntry) -> ControlFlow<()>) -> Result<(), Error>,
    fmt: &F,
    gpa: u64,
    size: u64,
) -> Vec<(u64, u64)> {
    let geo = fmt.geometry();
    let end = gpa + size;
    let mut at = gpa;
    let mut out = Vec::new();
    walk(range(gpa, size), &mut |e: &WalkEntry| {
        if e.visit == Visit::Leaf && matches!(e.kind, EntryKind::Leaf | EntryKind::Frozen) {
            let a = e.gpa.raw().max(gpa);
            if a > at {
                out.push((at, a - at));
            }
            at = at.max((e.gpa.raw() + geo.level_size(e.level)).min(end));
        }
        ControlFlow::Continue(())
    })
    .expect("a walk of the guest space");
    if end > at {
        out.push((at, end - at));
    }
    out
}

fn apply_table<F: PteFormat, H: Host>(t: &mut Table<F, H>, op: &Op) -> Result<(), Error> {
    let (gpa, size) = op.span();
    let r = range(gpa, size);
    match *op {
        Op::Map {
            backing,
            perms,
            max_level,
            young,
            ..
        } => t.map_with(
            r,
            Hpa::new(BACKINGS[backing] + gpa),
            Attrs::normal(perms),
            MapOptions {
                max_level,
                young_dirty: young,
            },
        ),
        Op::Fill { backing, perms, .. } => {
            let holes = holes(|r, v| t.walk(r, |e| v(e)), t.format(), gpa, size);
            for (gpa, size) in holes {
                t.map_with(
                    range(gpa, size),
                    Hpa::new(BACKINGS[backing] + gpa),
                    Attrs::normal(perms),
                    MapOptions {
                        max_level: None,
                        young_dirty: false,
                    },
                )?;
            }
            t.protect(r, perms)?;
            t.collapse(r)
        }
        Op::Unmap { .. } => t.unmap(r),
        Op::Protect { perms, .. } => t.protect(r, perms),
        Op::Split { .. } => t.split(r, Level::LEAF),
        Op::Collapse { .. } => t.collapse(r),
        Op::Access { .. } => Ok(()),
    }
}

/// Whether `r` is a result the shared-mode protocol allows for `op`.
fn allowed(op: &Op, r: &Result<(), Error>) -> bool {
    match r {
        Ok(()) | Err(Error::Retry { .. }) => true,
        Err(Error::AlreadyMapped { .. }) => matches!(op, Op::Map { .. } | Op::Fill { .. }),
        Err(_) => false,
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_string()
    }
}

// --- inspection of a quiescent tree -------------------------------------------------------------

/// What a quiescent tree holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Inspection {
    /// Leaves per level, from the tree walk.
    leaves: [u64; MAX_LEVELS],
    /// Tables per level, from the tree walk (the root included).
    tables: [u64; MAX_LEVELS],
    /// Leaves per level the independent walker finds over the guest space.
    hw_leaves: [u64; MAX_LEVELS],
}

/// Checks (b), (c), (d) and the backing of every leaf on a quiescent tree whose walk is `walk`.
#[allow(clippy::too_many_arguments)]
fn inspect<W: Hardware>(
    hw: &W,
    fmt: &W::Format,
    host: &HeapHost,
    root: Hpa,
    stats: &Stats,
    space: u64,
    asked: &[AtomicU8],
    walk: impl FnOnce(&mut dyn FnMut(&WalkEntry) -> ControlFlow<()>) -> Result<(), Error>,
) -> Result<Inspection, String> {
    let geo = *fmt.geometry();
    let page = geo.page_size();
    let mut ins = Inspection::default();
    let mut problems: Vec<String> = Vec::new();
    let mut tables: Vec<(u64, Level)> = std::vec![(root.raw(), geo.root_level())];
    ins.tables[geo.root_level().index()] = 1;
    walk(&mut |e: &WalkEntry| {
        match (e.visit, e.kind) {
            (Visit::Leaf, EntryKind::Leaf) => ins.leaves[e.level.index()] += 1,
            (Visit::TablePre, EntryKind::Table) => {
                let child = Level::new(e.level.get() - 1).expect("a table above level 0");
                ins.tables[child.index()] += 1;
                tables.push((hw.table_addr(fmt, e.raw, e.level), child));
            }
            (Visit::Leaf, EntryKind::Empty) | (Visit::TablePost, _) => {}
            (v, k) => problems.push(format!(
                "the walk met a {k:?} entry {:#x} at {:?} level {} ({v:?}) in a quiescent tree",
                e.raw, e.gpa, e.level
            )),
        }
        ControlFlow::Continue(())
    })
    .map_err(|e| format!("walk: {e}"))?;

    // (c), (d): every table's entries against its metadata; no poison, nothing frozen.
    let mut linked = BTreeSet::new();
    for &(pa, level) in &tables {
        if !linked.insert(pa) {
            problems.push(format!("table {pa:#x} is linked twice"));
            continue;
        }
        let entries = geo.entries(level);
        let empty = fmt.empty(level);
        let (mut full, mut other, mut poison) = (0u32, 0u32, 0u32);
        for i in 0..entries {
            let Some(word) = host.load_phys_u64(pa + 8 * i as u64) else {
                problems.push(format!(
                    "table {pa:#x} (level {level}) is outside the window"
                ));
                break;
            };
            if word == HeapHost::POISON {
                poison += 1;
                continue;
            }
            let raw = match <W::Format as PteFormat>::BYTE_ORDER {
                ByteOrder::Little => u64::from_le(word),
                ByteOrder::Big => u64::from_be(word),
            };
            if raw == empty {
                continue;
            }
            full += 1;
            match fmt.classify(raw, level) {
                EntryKind::Leaf | EntryKind::Table => {}
                k => {
                    other += 1;
                    if other <= 2 {
                        problems.push(format!(
                            "table {pa:#x} (level {level}) entry {i}: {k:?} {raw:#x} left in a \
                             quiescent tree"
                        ));
                    }
                }
            }
        }
        if poison > 0 {
            problems.push(format!(
                "table {pa:#x} (level {level}) holds {poison} poisoned entries: a freed table \
                 is still linked"
            ));
            continue;
        }
        // SAFETY: `pa` is a table linked in the tree (found by the walk), so it is allocated and
        // its metadata valid (Host contract); the tree is quiescent, nothing writes the record.
        let meta = unsafe { host.meta(Hpa::new(pa)).as_ref() };
        if meta.count() != full || meta.others() != other {
            problems.push(format!(
                "table {pa:#x} (level {level}): {full} non-empty entries ({other} neither leaf \
                 nor table), its metadata says count {} (others {})",
                meta.count(),
                meta.others()
            ));
        }
    }

    // The independent walker over the guest space: leaves per level, and their backing.
    let mut g = 0;
    while g < space {
        let snap = Snapshot::new(host);
        match look(hw, fmt, &snap, root, g) {
            Ok(Some((hpa, size, _))) => {
                let leaf = g & !(size - 1);
                let level = (0..geo.levels())
                    .map(|l| Level::new(l).expect("a level"))
                    .find(|&l| geo.level_size(l) == size);
                match level {
                    Some(l) => ins.hw_leaves[l.index()] += 1,
                    None => problems.push(format!("gpa {g:#x}: a leaf of size {size:#x}")),
                }
                if leaf + size > space {
                    problems.push(format!(
                        "leaf [{leaf:#x}, +{size:#x}) reaches beyond the space the test maps"
                    ));
                }
                if let Err(m) = check_asked(asked, page, leaf, size, hpa - (g - leaf)) {
                    problems.push(m);
                }
                g = leaf + size;
            }
            Ok(None) => g += page,
            Err(m) => {
                problems.push(m);
                g += page;
            }
        }
    }

    // (b): the counters against the walks.
    for l in 0..geo.levels() as usize {
        if stats.leaves[l] != ins.leaves[l] || ins.leaves[l] != ins.hw_leaves[l] {
            problems.push(format!(
                "level {l}: stats count {} leaves, the tree walk finds {}, the independent \
                 walker {}",
                stats.leaves[l], ins.leaves[l], ins.hw_leaves[l]
            ));
        }
        if stats.tables[l] != ins.tables[l] {
            problems.push(format!(
                "level {l}: stats count {} tables, the tree walk finds {}",
                stats.tables[l], ins.tables[l]
            ));
        }
    }
    if problems.is_empty() {
        Ok(ins)
    } else {
        Err(problems.join("\n  "))
    }
}

// --- the stress run ---------------------------------------------------------------------------

/// Tables a [`Quarantine`] holds back, per size class.
const QUARANTINE: usize = 48;

/// The stress run's host: a [`HeapHost`] whose recycled tables are held back before they are
/// handed out again. The heap poisons a table when it is freed and hands the most recently freed
/// one out first, which would paint over the evidence of a use after free at once; here a
/// recycled table waits in a queue until [`QUARANTINE`] more of its size have been recycled, and
/// must still be entirely [`HeapHost::POISON`] when it enters the queue and when it leaves it. A
/// word written meanwhile is a write to a freed table (an updater still inside a table that its
/// grace period did not protect); a stale reader meanwhile reads poison.
///
/// It also perturbs the schedule: now and then it lets another thread run in `phys_to_virt`
/// (which the engine calls between reading a table pointer and using it: the window of a stale
/// pointer), in `meta` and in `flush_tlb` (inside a break-before-make), so that the interleavings
/// that matter happen often on two cores.
struct Quarantine<'h> {
    heap: &'h HeapHost,
    held: Mutex<VecDeque<(u64, usize)>>,
    problems: Mutex<Vec<String>>,
}

impl<'h> Quarantine<'h> {
    fn new(heap: &'h HeapHost) -> Self {
        Quarantine {
            heap,
            held: Mutex::new(VecDeque::new()),
            problems: Mutex::new(Vec::new()),
        }
    }

    /// Whether the table at `pa` is still all poison; records a problem if not.
    fn still_poisoned(&self, pa: u64, size: usize, when: &str) -> bool {
        for i in 0..size as u64 / 8 {
            let w = self.heap.load_phys_u64(pa + 8 * i);
            if w != Some(HeapHost::POISON) {
                let mut p = lock(&self.problems);
                if p.len() < 8 {
                    p.push(format!(
                        "freed table {pa:#x} ({size} bytes) was written after it was freed: word \
                         {i} is {w:x?} {when}"
                    ));
                }
                return false;
            }
        }
        true
    }

    /// Bytes held back.
    fn held_bytes(&self) -> u64 {
        lock(&self.held).iter().map(|&(_, s)| s as u64).sum()
    }

    /// Gives every held table back to the heap.
    fn release(&self) {
        let held = core::mem::take(&mut *lock(&self.held));
        for (pa, size) in held {
            self.still_poisoned(pa, size, "when released at the end");
            // SAFETY: `pa` came from the heap's `alloc_table(size)` and was never handed out
            // since (it is held here), so nothing references it.
            unsafe { self.heap.free_table(Hpa::new(pa), size) };
        }
    }

    fn problems(&self) -> Vec<String> {
        lock(&self.problems).clone()
    }

    /// Lets another thread run, once in [`JITTER`] calls on average.
    fn jitter(&self) {
        std::thread_local! {
            static RNG: Cell<u64> = const { Cell::new(0) };
        }
        let roll = RNG.with(|r| {
            let mut x = r.get();
            if x == 0 {
                // Seeded per thread from the address of the thread-local itself.
                x = (r as *const Cell<u64> as u64) | 1;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            r.set(x);
            x
        });
        if roll % JITTER == 0 {
            std::thread::yield_now();
        }
    }
}

/// One in this many host calls on the engine's paths yields (see [`Quarantine`]).
const JITTER: u64 = 48;

// SAFETY: every method forwards to the heap, which upholds the contract; `alloc_table` only
// delays handing out some of the heap's tables (each still allocated from it, and handed out at
// most once until it is freed again).
unsafe impl Host for Quarantine<'_> {
    fn alloc_table(&self, size: usize) -> Option<Hpa> {
        loop {
            let pa = self.heap.alloc_table(size)?.raw();
            if !self.heap.is_poisoned(pa) {
                return Some(Hpa::new(pa)); // fresh memory
            }
            self.still_poisoned(pa, size, "when it was allocated again");
            let mut held = lock(&self.held);
            held.push_back((pa, size));
            let n = held.iter().filter(|&&(_, s)| s == size).count();
            if n > QUARANTINE {
                let i = held
                    .iter()
                    .position(|&(_, s)| s == size)
                    .expect("a held table");
                let (old, _) = held.remove(i).expect("a held table");
                drop(held);
                self.still_poisoned(old, size, "after its quarantine");
                return Some(Hpa::new(old));
            }
        }
    }

    unsafe fn free_table(&self, pa: Hpa, size: usize) {
        // SAFETY: the caller upholds `free_table`'s contract, for the heap as well.
        unsafe { self.heap.free_table(pa, size) }
    }

    fn phys_to_virt(&self, pa: Hpa) -> core::ptr::NonNull<u8> {
        self.jitter();
        self.heap.phys_to_virt(pa)
    }

    fn meta(&self, pa: Hpa) -> core::ptr::NonNull<crate::host::TableMeta> {
        self.jitter();
        self.heap.meta(pa)
    }

    fn flush_tlb(&self, flush: crate::host::TlbFlush) {
        self.jitter();
        self.heap.flush_tlb(flush)
    }

    fn clean_dcache(&self, hpa: Hpa, size: u64) {
        self.heap.clean_dcache(hpa, size)
    }

    fn invalidate_icache(&self, hpa: Hpa, size: u64) {
        self.heap.invalidate_icache(hpa, size)
    }
}

// SAFETY: read-side sections and retirement are the heap's (its grace period); the heap frees
// retired tables into its own pool, from which `alloc_table` above takes them.
unsafe impl SharedHost for Quarantine<'_> {
    type Guard<'a>
        = super::epoch::EpochGuard<'a>
    where
        Self: 'a;

    fn read_side(&self) -> Self::Guard<'_> {
        self.heap.read_side()
    }

    fn retire(&self, tables: crate::host::RetiredTables) {
        self.heap.retire(tables)
    }
}

/// What the threads of a run share.
struct Shared {
    asked: Vec<AtomicU8>,
    failures: Mutex<Vec<String>>,
    failed: AtomicBool,
    stop: AtomicBool,
    /// Updaters still working in the current round.
    running: AtomicUsize,
    /// Each updater's reserve, in bytes, at the end of the round.
    cache_bytes: Vec<AtomicU64>,
    /// Each updater's last operations.
    logs: Vec<Mutex<VecDeque<String>>>,
    /// Bumped by every operation and access (the watchdog watches it).
    progress: AtomicU64,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    ops: [AtomicU64; 6],
    ok: AtomicU64,
    yielded: AtomicU64,
    already_mapped: AtomicU64,
    retry: AtomicU64,
    accesses: AtomicU64,
    huge: AtomicU64,
}

const LOG: usize = 24;

impl Shared {
    fn fail(&self, msg: String) {
        self.failed.store(true, Ordering::SeqCst);
        let mut f = lock(&self.failures);
        if f.len() < 32 {
            f.push(msg);
        }
    }

    fn log(&self, t: usize, line: String) {
        let mut l = lock(&self.logs[t]);
        if l.len() == LOG {
            l.pop_front();
        }
        l.push_back(line);
    }

    fn report(&self, cfg: &StressConfig) -> String {
        let mut s = format!(
            "{}: seed {:#x} (rerun with TDP_STRESS_SEED={:#x}):\n  {}",
            cfg.name,
            cfg.seed,
            cfg.seed,
            lock(&self.failures).join("\n  ")
        );
        for (t, l) in self.logs.iter().enumerate() {
            s += &format!("\n last operations of updater {t}:");
            for line in lock(l).iter() {
                s += &format!("\n    {line}");
            }
        }
        s
    }
}

/// Runs the stress test described in the module documentation.
///
/// # Panics
/// On any failure, with the seed, every problem found and each updater's last operations.
pub fn stress<W: Hardware>(hw: &W, cfg: &StressConfig) -> StressReport {
    let t0 = Instant::now();
    let fmt = hw.format();
    let geo = *fmt.geometry();
    let page = geo.page_size();
    let heap = HeapHost::new(cfg.window.0, cfg.window.1, cfg.window.2);
    let tlb = Arc::new(ShadowTlb::new());
    heap.attach_shadow_tlb(tlb.clone());
    let host = Quarantine::new(&heap);
    // Dropped by hand at the end: a tree left inconsistent by a failure is leaked rather than
    // torn down while the failure unwinds (its teardown could panic a second time).
    let tree = ManuallyDrop::new(Tree::new(fmt.clone(), &host).expect("a root table"));
    let root = tree.root();
    let gen = Gen {
        page,
        huge: geo.level_size(Level::new(1).expect("level 1")),
        space: cfg.space,
        wide: Level::new(2)
            .filter(|&l| geo.has_level(l))
            .map(|l| geo.level_size(l)),
        accesses: false,
        young: false,
    };
    let sh = Shared {
        asked: (0..cfg.space / page).map(|_| AtomicU8::new(0)).collect(),
        failures: Mutex::new(Vec::new()),
        failed: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        running: AtomicUsize::new(0),
        cache_bytes: (0..cfg.updaters).map(|_| AtomicU64::new(0)).collect(),
        logs: (0..cfg.updaters)
            .map(|_| Mutex::new(VecDeque::new()))
            .collect(),
        progress: AtomicU64::new(0),
        counts: Counts::default(),
    };
    let start = Barrier::new(cfg.updaters + 2);
    let end = Barrier::new(cfg.updaters + 2);
    let done = AtomicBool::new(false);
    let mut report = StressReport::default();

    std::thread::scope(|s| {
        // The watchdog: a run that stops making progress ends the process with what it knows.
        s.spawn(|| {
            let began = Instant::now();
            let mut last = (0, Instant::now());
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
                let p = sh.progress.load(Ordering::Relaxed);
                if p != last.0 {
                    last = (p, Instant::now());
                }
                let stalled = last.1.elapsed() > Duration::from_secs(30);
                if stalled || began.elapsed() > cfg.timeout {
                    sh.fail(format!(
                        "watchdog: {} after {:.1?} (a livelock or deadlock)",
                        if stalled {
                            "no progress for 30 s"
                        } else {
                            "time limit"
                        },
                        began.elapsed()
                    ));
                    std::eprintln!("{}", sh.report(cfg));
                    std::process::exit(101);
                }
            }
        });

        for t in 0..cfg.updaters {
            let (sh, start, end, host, tree, gen) = (&sh, &start, &end, &host, &tree, &gen);
            s.spawn(move || {
                let mut rng = Rng::new(cfg.seed, 1 + t as u64);
                let mut res = Reserve {
                    ctx: Ctx::new(tree.format()),
                    host,
                };
                let ctx = &mut res.ctx;
                let mut flush = PendingFlush::new(host);
                let mut round = 0;
                loop {
                    start.wait();
                    if sh.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let mut left = cfg.ops_per_round;
                    let mut index = 0;
                    while left > 0 && !sh.failed.load(Ordering::Relaxed) {
                        let batch = (1 + rng.below(u64::from(cfg.max_batch)) as u32).min(left);
                        left -= batch;
                        let budget = (rng.below(5) == 0).then(|| 8 + rng.below(300));
                        ctx.set_budget(budget);
                        let flush_each = rng.below(2) == 0;
                        let guard = host.read_side();
                        let acc = tree.shared(&guard);
                        for _ in 0..batch {
                            if sh.failed.load(Ordering::Relaxed) {
                                break;
                            }
                            let op = gen.op(&mut rng);
                            sh.counts.ops[op.kind()].fetch_add(1, Ordering::Relaxed);
                            mark_asked(&sh.asked, page, &op);
                            let mut resumed = 0;
                            let r = catch_unwind(AssertUnwindSafe(|| {
                                apply_shared(&acc, ctx, &mut flush, &op, &mut resumed)
                            }));
                            sh.progress.fetch_add(1, Ordering::Relaxed);
                            sh.counts.yielded.fetch_add(resumed, Ordering::Relaxed);
                            let line = format!(
                                "round {round} op {index} (budget {budget:?}): {op} -> {}",
                                match &r {
                                    Ok(r) => format!("{r:?}"),
                                    Err(p) => format!("PANIC {}", panic_message(&**p)),
                                }
                            );
                            index += 1;
                            sh.log(t, line.clone());
                            match r {
                                Ok(r) if allowed(&op, &r) => {
                                    let c = match r {
                                        Ok(()) => &sh.counts.ok,
                                        Err(Error::AlreadyMapped { .. }) => {
                                            &sh.counts.already_mapped
                                        }
                                        _ => &sh.counts.retry,
                                    };
                                    c.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(_) => sh.fail(format!(
                                    "updater {t}: an error the protocol does not allow: {line}"
                                )),
                                Err(_) => sh.fail(format!("updater {t}: {line}")),
                            }
                            if flush_each {
                                flush.flush_now();
                            }
                        }
                        flush.flush_now();
                        drop(guard);
                        if rng.below(4) == 0 {
                            std::thread::yield_now();
                        }
                    }
                    sh.cache_bytes[t].store(ctx.cache().bytes() as u64, Ordering::Relaxed);
                    sh.running.fetch_sub(1, Ordering::AcqRel);
                    end.wait();
                    round += 1;
                }
            });
        }

        // The hardware: one vCPU accessing random addresses through the shadow TLB.
        {
            let (sh, start, end, host, tlb, fmt) = (&sh, &start, &end, &heap, &tlb, &fmt);
            s.spawn(move || {
                let mut rng = Rng::new(cfg.seed, 0);
                loop {
                    start.wait();
                    if sh.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let mut n = 0;
                    while sh.running.load(Ordering::Acquire) > 0
                        && n < cfg.accesses_per_round
                        && !sh.failed.load(Ordering::Relaxed)
                    {
                        n += 1;
                        let gpa = rng.below(cfg.space / 8) * 8;
                        let want = match rng.below(20) {
                            0..=10 => Perms::READ,
                            11..=18 => Perms::WRITE,
                            _ => Perms::EXEC_SUPER,
                        };
                        tlb.access(gpa, want, |g| {
                            let w = hw_access(hw, fmt, host, root, g, want, &sh.asked, page)
                                .unwrap_or_else(|m| {
                                    sh.fail(format!("hardware access {g:#x} {want:?}: {m}"));
                                    Walked::Fault
                                });
                            if matches!(w, Walked::Mapped { size, .. } if size > page) {
                                sh.counts.huge.fetch_add(1, Ordering::Relaxed);
                            }
                            w
                        });
                        sh.counts.accesses.fetch_add(1, Ordering::Relaxed);
                        sh.progress.fetch_add(1, Ordering::Relaxed);
                    }
                    end.wait();
                }
            });
        }

        // The checker: rounds, and the checks at their ends.
        for round in 0..=cfg.rounds {
            if round == cfg.rounds || sh.failed.load(Ordering::SeqCst) {
                sh.stop.store(true, Ordering::SeqCst);
            }
            sh.running.store(cfg.updaters, Ordering::SeqCst);
            start.wait();
            if sh.stop.load(Ordering::SeqCst) {
                break;
            }
            end.wait();
            if sh.failed.load(Ordering::SeqCst) {
                continue;
            }
            let cached: u64 = sh
                .cache_bytes
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            let cached = cached + host.held_bytes();
            match check_round(hw, &fmt, &tree, &heap, &tlb, &sh.asked, cfg.space, cached) {
                Ok(ins) => {
                    report.rounds += 1;
                    for l in 0..MAX_LEVELS {
                        report.leaves_seen[l] += ins.leaves[l];
                        report.tables_seen[l] += ins.tables[l];
                    }
                }
                Err(m) => sh.fail(format!("end of round {round}:\n  {m}")),
            }
            for p in host.problems() {
                sh.fail(format!("by the end of round {round}: {p}"));
            }
            sh.progress.fetch_add(1, Ordering::Relaxed);
        }
        done.store(true, Ordering::Release);
    });

    let stats = tree.stats();
    let tree = ManuallyDrop::into_inner(tree);
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| drop(tree))) {
        sh.fail(format!("teardown: PANIC {}", panic_message(&*p)));
    }
    heap.synchronize();
    host.release();
    for p in host.problems() {
        sh.fail(p);
    }
    if heap.outstanding_tables() != 0 {
        sh.fail(format!(
            "after teardown and a grace period the host still holds {} tables ({} bytes); the \
             tree had {:?} at the end",
            heap.outstanding_tables(),
            heap.outstanding_bytes(),
            stats.tables
        ));
    }
    if sh.failed.load(Ordering::SeqCst) {
        panic!("{}", sh.report(cfg));
    }
    let c = &sh.counts;
    for k in 0..6 {
        report.ops[k] = c.ops[k].load(Ordering::Relaxed);
    }
    report.ok = c.ok.load(Ordering::Relaxed);
    report.yielded = c.yielded.load(Ordering::Relaxed);
    report.already_mapped = c.already_mapped.load(Ordering::Relaxed);
    report.retry = c.retry.load(Ordering::Relaxed);
    report.accesses = c.accesses.load(Ordering::Relaxed);
    report.huge_hits = c.huge.load(Ordering::Relaxed);
    report.tlb = tlb.stats();
    report.elapsed = t0.elapsed();
    report
}

/// One hardware access of `gpa` for `want`: looks at every access kind (for the permissions the
/// translation grants), then, if `want` is allowed, does the access (setting accessed/dirty).
#[allow(clippy::too_many_arguments)]
fn hw_access<W: Hardware>(
    hw: &W,
    fmt: &W::Format,
    host: &HeapHost,
    root: Hpa,
    gpa: u64,
    want: Perms,
    asked: &[AtomicU8],
    page: u64,
) -> Result<Walked, String> {
    let snap = Snapshot::new(host);
    let Some((hpa, size, perms)) = look(hw, fmt, &snap, root, gpa)? else {
        return Ok(Walked::Fault);
    };
    let leaf_gpa = gpa & !(size - 1);
    let leaf_hpa = hpa - (gpa - leaf_gpa);
    check_asked(asked, page, leaf_gpa, size, leaf_hpa)?;
    if perms.contains(want) {
        match hw.walk(fmt, &snap, root, gpa, want, true) {
            _ if snap.lost() => return Ok(Walked::Retry),
            HwWalk::Mapped { hpa: h, size: s } if (h, s) == (hpa, size) => {}
            other => {
                return Err(format!(
                    "the access disagrees with the look at the same memory: {other:?}, looked \
                     {:?}",
                    (hpa, size, perms)
                ))
            }
        }
    }
    Ok(Walked::Mapped {
        leaf_gpa,
        size,
        hpa: leaf_hpa,
        perms,
    })
}

/// The checks at the end of a round (see the module documentation).
#[allow(clippy::too_many_arguments)]
fn check_round<W: Hardware>(
    hw: &W,
    fmt: &W::Format,
    tree: &Tree<W::Format, &Quarantine<'_>>,
    host: &HeapHost,
    tlb: &ShadowTlb,
    asked: &[AtomicU8],
    space: u64,
    cached: u64,
) -> Result<Inspection, String> {
    let root = tree.root();
    let mut problems = Vec::new();
    let ins = {
        let guard = host.read_side();
        let acc = tree.shared(&guard);
        // (a)
        let peek = |g: u64| {
            let snap = Snapshot::new(host);
            look(hw, fmt, &snap, root, g)
                .ok()
                .flatten()
                .map(|(hpa, _, perms)| (hpa, perms))
        };
        if let Err(m) = tlb.check(peek) {
            problems.push(m);
        }
        let stats = tree.stats();
        let top = GpaRange::new(Gpa::new(0), 1u64 << fmt.geometry().ia_bits()).expect("space");
        inspect(hw, fmt, host, root, &stats, space, asked, |v| {
            acc.walk(top, |e| v(e))
        })
    };
    let ins = match ins {
        Ok(i) => Some(i),
        Err(m) => {
            problems.push(m);
            None
        }
    };
    // No leak: after a grace period the host holds the tree's tables and the reserves only.
    host.synchronize();
    let stats = tree.stats();
    if host.outstanding_bytes() as u64 != stats.table_bytes + cached {
        problems.push(format!(
            "the host holds {} bytes of tables; the tree has {} and the reserves {} (a leak)",
            host.outstanding_bytes(),
            stats.table_bytes,
            cached
        ));
    }
    host.take_events();
    match (ins, problems.is_empty()) {
        (Some(i), true) => Ok(i),
        _ => Err(problems.join("\n  ")),
    }
}

// --- the equivalence run ------------------------------------------------------------------------

/// A caller's reserve that goes back to its host when dropped (also while a failing check
/// unwinds, where a dropped non-empty [`Ctx`] would panic a second time).
struct Reserve<H: Host> {
    ctx: Ctx,
    host: H,
}

impl<H: Host> Drop for Reserve<H> {
    fn drop(&mut self) {
        self.ctx.free_all(&self.host);
    }
}

/// The leaves (first address, level) a walk finds in `[gpa, gpa + size)`.
fn leaves_in(
    walk: impl FnOnce(GpaRange, &mut dyn FnMut(&WalkEntry) -> ControlFlow<()>) -> Result<(), Error>,
    gpa: u64,
    size: u64,
) -> Vec<(u64, u8)> {
    let mut v = Vec::new();
    walk(range(gpa, size), &mut |e: &WalkEntry| {
        if e.visit == Visit::Leaf && e.kind == EntryKind::Leaf {
            v.push((e.gpa.raw(), e.level.get()));
        }
        ControlFlow::Continue(())
    })
    .expect("a walk of the guest space");
    v
}

/// Whether the shared tree's `s` refines the exclusive tree's `x` over the level-1 region at
/// `region` in the one way the modes may differ (see [`shared_matches_exclusive`]): one 2 MiB
/// leaf there, 512 pages of the same translations here.
fn refines(s: &[(u64, u8)], x: &[(u64, u8)], region: u64, page: u64, n: usize) -> bool {
    x == [(region, 1)]
        && s.len() == n
        && s.iter()
            .enumerate()
            .all(|(i, &(g, l))| l == 0 && g == region + i as u64 * page)
}

/// What a walker look at one address found in the two trees agree on: the translation (host
/// address and permissions) always; the leaf size too unless the region diverged, where the
/// shared tree's leaf may only be smaller.
fn compare_at<W: Hardware>(
    hw: &W,
    fmt: &W::Format,
    hosts: (&HeapHost, &HeapHost),
    roots: (Hpa, Hpa),
    g: u64,
    diverged: bool,
) -> Result<(), String> {
    let s = look(hw, fmt, &Snapshot::new(hosts.0), roots.0, g)?;
    let x = look(hw, fmt, &Snapshot::new(hosts.1), roots.1, g)?;
    let same = match (s, x) {
        (Some((hs, ss, ps)), Some((hx, sx, px))) => {
            hs == hx && ps == px && (ss == sx || (diverged && ss < sx))
        }
        (None, None) => true,
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!(
            "gpa {g:#x}: the walker sees (hpa, leaf size, perms) {s:?} in the shared tree, {x:?} \
             in the exclusive one"
        ))
    }
}

/// `query` in the two trees agrees: host address and attributes always; leaf, level and
/// accessed/dirty state too unless the region diverged, where the shared tree's A/D bits may
/// only be a subset (finer leaves, so fewer of them were set by the same accesses).
fn compare_query(s: Option<Mapping>, x: Option<Mapping>, diverged: bool) -> bool {
    match (s, x) {
        (None, None) => true,
        (Some(s), Some(x)) => {
            let a_ok = |s: Option<bool>, x: Option<bool>| {
                s.is_some() == x.is_some() && (!s.unwrap_or(false) || x.unwrap_or(false))
            };
            s.hpa == x.hpa
                && s.attrs == x.attrs
                && if diverged {
                    s.size <= x.size
                        && a_ok(s.ad.accessed, x.ad.accessed)
                        && a_ok(s.ad.dirty, x.ad.dirty)
                } else {
                    s.leaf_gpa == x.leaf_gpa
                        && s.level == x.level
                        && s.size == x.size
                        && s.ad == x.ad
                }
        }
        _ => false,
    }
}

/// Runs the equivalence check: `cfg.rounds` rounds of `cfg.ops_per_round` steps on one
/// thread, through [`Tree::shared`] on one host and through [`Table`] on another.
///
/// After every step: both calls returned the same result; at the touched addresses and a few
/// random ones the independent walker sees the same translation in both trees and `query`
/// reports the same leaf (accessed/dirty included); over every level-1 region the step touched,
/// both trees hold the same leaves; the trees map the same number of bytes. At the end of each
/// round: every address of the space, checks (b)-(d) of [`stress`] on both trees, and the shared
/// tree's host holds exactly its tables and reserve. At the end both hosts hold nothing.
///
/// The one difference the modes are documented to have is allowed, and counted: a shared-mode
/// unmap leaves tables that became empty in the tree ([`SharedAccess::unmap`]), so a later map
/// over such a table fills it with small leaves where exclusive mode, having freed it, installs
/// one 2 MiB leaf with the same translations. Such a region is *diverged* (until both trees hold
/// no leaf in it): there the shared tree's leaves may be smaller and its accessed/dirty bits a
/// subset of the exclusive tree's, and nothing else may differ.
///
/// # Panics
/// On any other difference or failed check, with the seed and the last steps.
pub fn shared_matches_exclusive<W: Hardware>(hw: &W, cfg: &StressConfig) -> StressReport {
    let t0 = Instant::now();
    let fmt = hw.format();
    let geo = *fmt.geometry();
    let page = geo.page_size();
    let huge = geo.level_size(Level::new(1).expect("level 1"));
    let per_region = geo.entries(Level::LEAF);
    let regions = (cfg.space / huge) as usize;
    let host_s = HeapHost::new(cfg.window.0, cfg.window.1, cfg.window.2);
    let host_x = HeapHost::new(cfg.window.0, cfg.window.1, cfg.window.2);
    let hosts = (&host_s, &host_x);
    // Dropped by hand at the end (a failure leaks them rather than tearing down a tree it may
    // have left inconsistent while it unwinds).
    let tree = ManuallyDrop::new(Tree::new(fmt.clone(), &host_s).expect("a root table"));
    let mut table = ManuallyDrop::new(Table::new(fmt.clone(), &host_x).expect("a root table"));
    let roots = (tree.root(), table.root());
    let mut res = Reserve {
        ctx: Ctx::new(&fmt),
        host: &host_s,
    };
    let mut flush = PendingFlush::new(&host_s);
    let gen = Gen {
        page,
        huge,
        space: cfg.space,
        wide: Level::new(2)
            .filter(|&l| geo.has_level(l))
            .map(|l| geo.level_size(l)),
        accesses: true,
        young: true,
    };
    let asked: Vec<AtomicU8> = (0..cfg.space / page).map(|_| AtomicU8::new(0)).collect();
    let mut diverged = std::vec![false; regions];
    let mut rng = Rng::new(cfg.seed, 0x5eed);
    let mut log: VecDeque<String> = VecDeque::new();
    let mut report = StressReport::default();
    let top = GpaRange::new(Gpa::new(0), 1u64 << geo.ia_bits()).expect("space");
    let fail = |log: &VecDeque<String>, m: String| -> ! {
        let mut s = format!(
            "{}: seed {:#x} (rerun with TDP_STRESS_SEED={:#x}): {m}\n last steps:",
            cfg.name, cfg.seed, cfg.seed
        );
        for l in log {
            s += &format!("\n    {l}");
        }
        panic!("{s}");
    };
    let mut resumed = 0;
    let mut huge_before = 0;

    for round in 0..cfg.rounds {
        for step in 0..cfg.ops_per_round {
            let op = gen.op(&mut rng);
            if op.kind() < 6 {
                report.ops[op.kind()] += 1;
            }
            mark_asked(&asked, page, &op);
            let (rs, rx) = if let Op::Access { gpa, access } = op {
                report.accesses += 1;
                let a = |host: &HeapHost, root: Hpa| {
                    let snap = Snapshot::new(host);
                    let r = hw.walk(&fmt, &snap, root, gpa, access, true);
                    (r, snap.lost())
                };
                let (s, x) = (a(&host_s, roots.0), a(&host_x, roots.1));
                let same = match (&s.0, &x.0) {
                    (HwWalk::Mapped { hpa: a, .. }, HwWalk::Mapped { hpa: b, .. }) => a == b,
                    (a, b) => a == b,
                };
                if !same || s.1 || x.1 {
                    fail(&log, format!("{op}: shared tree {s:?}, exclusive {x:?}"));
                }
                (Ok(()), Ok(()))
            } else {
                let rs = {
                    let guard = host_s.read_side();
                    let acc = tree.shared(&guard);
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        apply_shared(&acc, &mut res.ctx, &mut flush, &op, &mut resumed)
                    }));
                    flush.flush_now();
                    r.unwrap_or_else(|p| {
                        fail(&log, format!("{op}: shared: PANIC {}", panic_message(&*p)))
                    })
                };
                let rx = catch_unwind(AssertUnwindSafe(|| apply_table(&mut table, &op)))
                    .unwrap_or_else(|p| {
                        fail(
                            &log,
                            format!("{op}: exclusive: PANIC {}", panic_message(&*p)),
                        )
                    });
                (rs, rx)
            };
            if log.len() == LOG {
                log.pop_front();
            }
            log.push_back(format!("round {round} step {step}: {op} -> {rs:?}"));
            if rs != rx {
                fail(
                    &log,
                    format!("{op}: shared mode returned {rs:?}, exclusive mode {rx:?}"),
                );
            }
            match &rs {
                Ok(()) => report.ok += 1,
                Err(Error::AlreadyMapped { .. }) => report.already_mapped += 1,
                Err(e) => fail(&log, format!("{op}: {e:?}")),
            }

            // The level-1 regions the step touched hold the same leaves (or the one refinement).
            let (gpa, size) = op.span();
            let first = (gpa.saturating_sub(page) / huge) as usize;
            let last = (((gpa + size) / huge) as usize).min(regions - 1);
            {
                let guard = host_s.read_side();
                let acc = tree.shared(&guard);
                for r in first..=last {
                    let region = r as u64 * huge;
                    let ls = leaves_in(|g, v| acc.walk(g, |e| v(e)), region, huge);
                    let lx = leaves_in(|g, v| table.walk(g, |e| v(e)), region, huge);
                    if ls == lx {
                        if ls.is_empty() {
                            diverged[r] = false;
                        }
                    } else if refines(&ls, &lx, region, page, per_region) {
                        if !diverged[r] {
                            report.diverged += 1;
                        }
                        diverged[r] = true;
                    } else {
                        fail(
                            &log,
                            format!(
                                "after {op}: region {region:#x}: shared tree leaves {ls:x?}, \
                                 exclusive {lx:x?}"
                            ),
                        );
                    }
                }
            }

            // The touched addresses and a few random ones translate alike.
            let mut points: Vec<u64> = [gpa, gpa + size / 2, gpa + size - page, gpa + size]
                .into_iter()
                .chain(gpa.checked_sub(page))
                .chain((0..8).map(|_| rng.below(cfg.space / page) * page))
                .filter(|&g| g < cfg.space)
                .collect();
            points.sort_unstable();
            points.dedup();
            for g in points {
                let d = diverged[(g / huge) as usize];
                compare_at(hw, &fmt, hosts, roots, g, d)
                    .and_then(|()| {
                        let guard = host_s.read_side();
                        let qs = tree.shared(&guard).query(Gpa::new(g)).unwrap();
                        let qx = table.query(Gpa::new(g)).unwrap();
                        if compare_query(qs, qx, d) {
                            Ok(())
                        } else {
                            Err(format!(
                                "query {g:#x} (region diverged: {d}): shared tree {qs:x?}, \
                                 exclusive {qx:x?}"
                            ))
                        }
                    })
                    .unwrap_or_else(|m| fail(&log, format!("after {op}: {m}")));
            }
            let (ss, sx) = (tree.stats(), table.stats());
            let above = |s: &Stats| s.leaves[1..].iter().sum::<u64>();
            if above(&ss) > huge_before {
                report.huge_made += 1;
            }
            huge_before = above(&ss);
            let bytes = |s: &Stats| -> u64 {
                (0..geo.levels())
                    .map(|l| s.leaves[l as usize] * geo.level_size(Level::new(l).expect("level")))
                    .sum()
            };
            let any_diverged = diverged.iter().any(|&d| d);
            if bytes(&ss) != bytes(&sx) || (!any_diverged && ss.leaves != sx.leaves) {
                fail(
                    &log,
                    format!(
                        "after {op}: leaves per level {:?} (shared), {:?} (exclusive)",
                        ss.leaves, sx.leaves
                    ),
                );
            }
        }

        // End of round: every address, and the quiescent-tree checks on both trees.
        let mut g = 0;
        while g < cfg.space {
            if let Err(m) = compare_at(hw, &fmt, hosts, roots, g, diverged[(g / huge) as usize]) {
                fail(&log, format!("end of round {round}: {m}"));
            }
            g += page;
        }
        let ins_s = {
            let guard = host_s.read_side();
            let acc = tree.shared(&guard);
            inspect(
                hw,
                &fmt,
                &host_s,
                roots.0,
                &tree.stats(),
                cfg.space,
                &asked,
                |v| acc.walk(top, |e| v(e)),
            )
        };
        let ins_x = inspect(
            hw,
            &fmt,
            &host_x,
            roots.1,
            &table.stats(),
            cfg.space,
            &asked,
            |v| table.walk(top, |e| v(e)),
        );
        match (ins_s, ins_x) {
            (Ok(s), Ok(_)) => {
                report.rounds += 1;
                for l in 0..MAX_LEVELS {
                    report.leaves_seen[l] += s.leaves[l];
                    report.tables_seen[l] += s.tables[l];
                }
            }
            (s, x) => fail(
                &log,
                format!(
                    "end of round {round}: shared tree: {:?}; exclusive: {:?}",
                    s.err(),
                    x.err()
                ),
            ),
        }
        host_s.synchronize();
        let cached = res.ctx.cache().bytes() as u64;
        if host_s.outstanding_bytes() as u64 != tree.stats().table_bytes + cached {
            fail(
                &log,
                format!(
                    "end of round {round}: the shared tree's host holds {} bytes, the tree {} and \
                     the reserve {cached}",
                    host_s.outstanding_bytes(),
                    tree.stats().table_bytes
                ),
            );
        }
        host_s.take_events();
        host_x.take_events();
    }
    report.yielded = resumed;
    drop(ManuallyDrop::into_inner(table));
    drop(ManuallyDrop::into_inner(tree));
    drop(res);
    drop(flush);
    host_s.synchronize();
    for (name, host) in [("shared", &host_s), ("exclusive", &host_x)] {
        if host.outstanding_tables() != 0 {
            fail(
                &log,
                format!(
                    "the {name} tree's host still holds {} tables after teardown",
                    host.outstanding_tables()
                ),
            );
        }
    }
    report.elapsed = t0.elapsed();
    report
}
