//! The model-property driver: one runner for every architecture's random-sequence properties.
//!
//! An architecture's test file describes its address space ([`Space`]: page size, entry spans,
//! leaf levels, output width, windows, and which permissions, memory types, level caps and split
//! levels to draw), implements [`Oracle`] (its format, its independent walker, how hardware sets
//! accessed/dirty, what the walker's answers mean) and calls [`run`] on sequences drawn from
//! [`ops`]. The driver steps the engine and the reference [`Model`] together, twice:
//!
//! **Exclusive path** ([`run_exclusive`]: a [`Table`] on the oracle's host), after every step:
//! - every touched address translates through the walker exactly as the model says (output
//!   address, the access kinds that translate, the memory kind), and the engine's own `query`
//!   agrees with the model (unless the oracle opts out);
//! - the outcome of the step is the one the model and the oracle's legality rules predict
//!   (`HpaTooWide`, then `InvalidLevel`, then `UnsupportedAttrs`, `AlreadyMapped` exactly when
//!   the model has a conflict, and success otherwise);
//! - allocation failure injected at every allocation ([`inject::at_every_allocation`]) leaves
//!   the host's memory, the tree's counters and every touched translation (and the oracle's raw
//!   walk) as they were;
//! - accessed/dirty state known set (by a young map or by the walker's hardware update) is never
//!   lost (split copies it, collapse merges it, protect keeps it);
//! - the host holds exactly the tree's tables (by the table counters) plus the reserve (no
//!   leak);
//! - at the end of the sequence, the leaf and table counters equal what a walk of the windows
//!   finds;
//! - teardown frees every table.
//!
//! **Shared path** ([`run_shared`]: a [`Tree`] driven through [`Tree::shared`] and
//! [`crate::SharedAccess`], single-threaded, on the plain [`HeapHost`], one read-side section
//! and one [`PendingFlush`] per call), after every step: the same translations, `query`, outcome
//! and accessed/dirty checks; the leaf and table counters equal a walk; once
//! [`HeapHost::synchronize`] has freed the retired tables the host holds exactly the tree's tables
//! plus the reserve; teardown (reserve freed, tree dropped, grace periods waited out) frees every
//! table. Allocation failure is injected here too, at each of the first 16 allocations of a call
//! and then one before and one at each power of two (a huge map reserves hundreds of tables per
//! chunk), with what shared mode promises: the call fails with `OutOfMemory`, the failure is the
//! injected one, every touched translation is as before and nothing leaks, but tables the call
//! added may stay in the tree, empty (so neither the host's byte count nor the oracle's raw walk
//! is compared with the state before). A shared unmap does not free tables that become empty, so
//! table counts are never compared between the two paths.
//!
//! Architecture-specific checks hook in through the oracle's default methods: per-point checks
//! ([`Oracle::check_point`]), a host wrapper for the exclusive path ([`Oracle::Host`]) with
//! [`Oracle::on_table`], [`Oracle::before_op`], [`Oracle::before_attempt`], [`Oracle::after_op`]
//! and [`Oracle::after_teardown`].

use core::fmt::Debug;
use core::ops::ControlFlow;
use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};

use crate::addr::{Gpa, GpaRange, Hpa, Level};
use crate::error::Error;
use crate::flush::PendingFlush;
use crate::format::{Attrs, EntryKind, MemType, Perms, PteFormat};
use crate::geometry::MAX_LEVELS;
use crate::host::{Host, SharedHost};
use crate::iter::Visit;
use crate::table::{MapOptions, Mapping, Stats, Table, WalkEntry};
use crate::tree::{Ctx, Progress, Tree};

use super::{inject, HeapHost, Model};

/// One step of a sequence. Pages are in units of the space's page size; every range lies in one
/// window of the [`Space`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `map_with(range, hpa, attrs, { max_level: cap, young_dirty: young })`.
    Map {
        /// First guest page.
        page: u64,
        /// Pages.
        pages: u64,
        /// First host page (may run past the output width: `HpaTooWide`).
        hpa_page: u64,
        /// Attributes (may be illegal for the format: `UnsupportedAttrs`).
        attrs: Attrs,
        /// The largest leaf level (may be one that holds no leaf: `InvalidLevel`).
        cap: Option<u8>,
        /// Preset accessed/dirty.
        young: bool,
    },
    /// `unmap(range)`.
    Unmap {
        /// First guest page.
        page: u64,
        /// Pages.
        pages: u64,
    },
    /// `protect(range, perms)`.
    Protect {
        /// First guest page.
        page: u64,
        /// Pages.
        pages: u64,
        /// The new permissions.
        perms: Perms,
    },
    /// `split(range, level)`.
    Split {
        /// First guest page.
        page: u64,
        /// Pages.
        pages: u64,
        /// The level to split to (may be one that holds no leaf: `InvalidLevel`).
        level: u8,
    },
    /// `collapse(range)`.
    Collapse {
        /// First guest page.
        page: u64,
        /// Pages.
        pages: u64,
    },
    /// A guest access through the walker, as hardware (setting accessed/dirty).
    Access {
        /// The guest page.
        page: u64,
        /// A write (else a read).
        write: bool,
    },
}

impl Op {
    /// The first page and the number of pages the step covers (one for an access).
    pub fn span(&self) -> (u64, u64) {
        match *self {
            Op::Map { page, pages, .. }
            | Op::Unmap { page, pages }
            | Op::Protect { page, pages, .. }
            | Op::Split { page, pages, .. }
            | Op::Collapse { page, pages } => (page, pages),
            Op::Access { page, .. } => (page, 1),
        }
    }
}

/// A part of the guest space the steps use: each step lies in one window. Most steps land in
/// the window's hot regions (eight level-1 spans and four spans of the largest leaf, at its
/// start or, with [`Space::hot_at_end`], at its end), so that they meet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// First page.
    pub base: u64,
    /// Pages (a power of two, `base` aligned to it or to the largest leaf).
    pub pages: u64,
    /// How often steps land here, relative to the other windows.
    pub weight: u32,
}

/// Which maps may leave accessed/dirty clear (`young = false`) so that the walker still
/// translates them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OldMaps {
    /// Hardware (or the hypervisor's fast path) sets both: any map may be old.
    Any,
    /// Hardware sets accessed only: a clean writable leaf would fault on write, so writable maps
    /// are young.
    WritableYoung,
    /// Software accessed/dirty: every map is young.
    Never,
}

/// Relative frequencies of the kinds of step.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Weights {
    /// A map anywhere.
    pub map: u32,
    /// A fill: one, two or four maps of smallest leaves covering level-1 spans of the hot region
    /// over one contiguous host range, with a shared or own permission and mostly the first
    /// memory type, then usually a collapse (what a guest faulting in a huge page produces).
    pub fill: u32,
    /// An unmap.
    pub unmap: u32,
    /// A protect.
    pub protect: u32,
    /// A split.
    pub split: u32,
    /// A collapse: of the whole window, of the level-1 spans a range touches, or of a range.
    pub collapse: u32,
    /// A guest access.
    pub access: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            map: 4,
            fill: 1,
            unmap: 2,
            protect: 2,
            split: 1,
            collapse: 1,
            access: 1,
        }
    }
}

/// The description of an architecture configuration the strategy and the driver need.
#[derive(Clone, Debug)]
pub struct Space {
    /// log2 of the page size.
    pub page_shift: u32,
    /// Pages mapped by one entry of each level, level 0 (one page) first, up to the root.
    pub spans: Vec<u64>,
    /// Levels `0..leaf_levels` may hold leaves (from the architecture's rules, not the format).
    pub leaf_levels: u8,
    /// Output-address width in bits.
    pub oa_bits: u32,
    /// Where steps land.
    pub windows: Vec<Window>,
    /// The hot regions are at the end of each window (else at its start).
    pub hot_at_end: bool,
    /// Permissions to draw, with weights (maps and protects).
    pub perms: Vec<(u32, Perms)>,
    /// Memory types to draw, with weights; fills use the first mostly, the second sometimes.
    pub mems: Vec<(u32, MemType)>,
    /// Probability that a map asks to ignore the guest's memory type.
    pub ignore_guest_memtype: f64,
    /// Level caps of maps to draw, with weights (`None`: no cap).
    pub caps: Vec<(u32, Option<u8>)>,
    /// Split levels to draw (uniformly).
    pub split_levels: Vec<u8>,
    /// Which maps may be old.
    pub old_maps: OldMaps,
    /// Frequencies of the kinds of step.
    pub weights: Weights,
    /// Sequences have `1..max_ops` groups (a fill is one group).
    pub max_ops: usize,
}

impl Space {
    /// One window of `pages` pages from page 0, with entries of each level mapping `spans` pages
    /// and leaves at levels `0..leaf_levels`; draws the six usual permissions, write-back memory,
    /// no cap or any leaf level as cap, every leaf level as split level; any map may be old;
    /// default weights; up to 20 groups.
    ///
    /// # Panics
    /// If `spans` does not start with one page or has fewer than two levels, or if `leaf_levels`
    /// is zero or more than the levels.
    pub fn new(page_shift: u32, spans: &[u64], leaf_levels: u8, oa_bits: u32, pages: u64) -> Space {
        assert!(
            spans.len() >= 2 && spans[0] == 1,
            "spans: one page at level 0, then more"
        );
        assert!(leaf_levels >= 1 && usize::from(leaf_levels) <= spans.len());
        Space {
            page_shift,
            spans: spans.to_vec(),
            leaf_levels,
            oa_bits,
            windows: vec![Window {
                base: 0,
                pages,
                weight: 1,
            }],
            hot_at_end: false,
            perms: [
                Perms::READ,
                Perms::RW,
                Perms::RX,
                Perms::RWX,
                Perms::EXEC,
                Perms::empty(),
            ]
            .map(|p| (1, p))
            .to_vec(),
            mems: vec![(1, MemType::WriteBack)],
            ignore_guest_memtype: 0.0,
            caps: core::iter::once((1, None))
                .chain((0..leaf_levels).map(|l| (1, Some(l))))
                .collect(),
            split_levels: (0..leaf_levels).collect(),
            old_maps: OldMaps::Any,
            weights: Weights::default(),
            max_ops: 20,
        }
    }

    /// Levels of the geometry.
    pub fn levels(&self) -> u8 {
        self.spans.len() as u8
    }

    /// Whether `level` may hold a leaf.
    pub fn is_leaf_level(&self, level: u8) -> bool {
        level < self.leaf_levels
    }

    /// The guest (or host) address of `page`.
    pub fn addr(&self, page: u64) -> u64 {
        page << self.page_shift
    }

    /// The window holding `page`.
    ///
    /// # Panics
    /// If no window holds it.
    pub fn window_of(&self, page: u64) -> Window {
        *self
            .windows
            .iter()
            .find(|w| page >= w.base && page - w.base < w.pages)
            .unwrap_or_else(|| panic!("page {page:#x} is in no window"))
    }

    /// Pages of a level-1 entry.
    fn b1(&self) -> u64 {
        self.spans[1]
    }

    /// Pages of the largest leaf (of a level-1 entry when only level 0 holds leaves).
    fn b_top(&self) -> u64 {
        self.spans[usize::from(self.leaf_levels - 1).max(1)]
    }

    fn oa_pages_log2(&self) -> u32 {
        self.oa_bits - self.page_shift
    }
}

/// How a map's host page is drawn.
#[derive(Copy, Clone, Debug)]
struct HostPages {
    oa: u32,
    b_top: u64,
    leaf_spans: [u64; MAX_LEVELS],
    leaf_levels: usize,
}

impl HostPages {
    /// Guest RAM backed by one host range: the host page follows the guest page (contiguous,
    /// aligned alike up to the largest leaf), high in the output space.
    fn follow(&self, page: u64) -> u64 {
        page % (1 << (self.oa - 1)) + (1 << (self.oa - 2))
    }

    fn of(&self, kind: u8, raw: u64, level: usize, page: u64) -> u64 {
        let top = 1u64 << self.oa;
        match kind {
            0 => self.follow(page),
            // Anywhere in the output space (may run past its end).
            1 => raw % top,
            // Aligned to a leaf size.
            2 => (raw % top) & !(self.leaf_spans[level % self.leaf_levels] - 1),
            // At the top of the output space: every address bit set, or past the end.
            _ => top - 1 - raw % (2 * self.b_top),
        }
    }
}

fn pick<T: Clone + Debug + 'static>(items: &[(u32, T)]) -> BoxedStrategy<T> {
    Union::new_weighted(
        items
            .iter()
            .filter(|(w, _)| *w > 0)
            .map(|(w, t)| (*w, Just(t.clone()).boxed()))
            .collect(),
    )
    .boxed()
}

/// Random step sequences over `space` (see [`Space`], [`Window`] and [`Weights`]): positions
/// biased to the hot regions and to level-1 and largest-leaf alignment, sizes biased to those
/// spans, host pages mostly following the guest page (so that collapse finds work), sometimes
/// anywhere, aligned or at the top of the output space.
pub fn ops(space: &Space) -> BoxedStrategy<Vec<Op>> {
    let groups: Vec<(u32, BoxedStrategy<Vec<Op>>)> = space
        .windows
        .iter()
        .map(|w| (w.weight, groups_in(space, *w)))
        .collect();
    proptest::collection::vec(Union::new_weighted(groups), 1..space.max_ops)
        .prop_map(|g| g.into_iter().flatten().collect())
        .boxed()
}

fn groups_in(sp: &Space, w: Window) -> BoxedStrategy<Vec<Op>> {
    let end = w.base + w.pages;
    let b1 = sp.b1().min(w.pages);
    let bt = sp.b_top().min(w.pages);
    let hot = (8 * b1).min(w.pages);
    let big = (4 * bt).min(w.pages);
    let (hot_base, big_base) = if sp.hot_at_end {
        (end - hot, end - big)
    } else {
        (w.base, w.base)
    };
    let half = (b1 / 2).max(1);
    let page = prop_oneof![
        3 => (0..hot).prop_map(move |x| hot_base + x),
        3 => (0..hot / half).prop_map(move |x| hot_base + x * half),
        1 => (0..big).prop_map(move |x| big_base + x),
        1 => (0..big / b1).prop_map(move |x| big_base + x * b1),
        1 => (0..big / bt).prop_map(move |x| big_base + x * bt),
        1 => (0..w.pages).prop_map(move |x| w.base + x),
        1 => (0..w.pages / bt).prop_map(move |x| w.base + x * bt),
    ]
    .boxed();
    let bigger = if bt < 262_144 { 2 * bt } else { bt };
    let pages = prop_oneof![
        3 => 1u64..16,
        2 => Just(b1),
        1 => Just(half),
        1 => 1u64..(3 * b1 + 64),
        1 => Just(bt),
        1 => Just(bigger),
    ];
    let place = (page.clone(), pages)
        .prop_map(move |(p, n)| (p, n.min(end - p)))
        .boxed();

    let mut leaf_spans = [1u64; MAX_LEVELS];
    let leaf_levels = usize::from(sp.leaf_levels);
    leaf_spans[..leaf_levels].copy_from_slice(&sp.spans[..leaf_levels]);
    let hpas = HostPages {
        oa: sp.oa_pages_log2(),
        b_top: sp.b_top(),
        leaf_spans,
        leaf_levels,
    };
    let old = sp.old_maps;
    let young_of = move |y: bool, perms: Perms| match old {
        OldMaps::Any => y,
        OldMaps::WritableYoung => y || perms.contains(Perms::WRITE),
        OldMaps::Never => true,
    };
    let perms = pick(&sp.perms);
    let mem = pick(&sp.mems);
    let cap = pick(&sp.caps);
    let hpa_kind = prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)];

    let map = (
        place.clone(),
        (hpa_kind, any::<u64>(), 0..leaf_levels),
        perms.clone(),
        mem,
        prop::bool::weighted(sp.ignore_guest_memtype),
        cap,
        any::<bool>(),
    )
        .prop_map(
            move |((page, pages), (kind, raw, level), perms, mem, ignore, cap, y)| {
                vec![Op::Map {
                    page,
                    pages,
                    hpa_page: hpas.of(kind, raw, level, page),
                    attrs: Attrs {
                        perms,
                        mem,
                        ignore_guest_memtype: ignore,
                    },
                    cap,
                    young: young_of(y, perms),
                }]
            },
        );

    let blocks_in_hot = (hot / b1).max(1);
    let first_mem = sp.mems[0].1;
    let other_mem = sp.mems.get(1).map_or(first_mem, |m| m.1);
    let fill = (
        0..blocks_in_hot,
        prop_oneof![Just(1u64), Just(2u64), Just(4u64)],
        1u64..3,
        perms.clone(),
        proptest::collection::vec(
            (
                prop::bool::weighted(0.8),
                perms.clone(),
                prop_oneof![4 => Just(first_mem), 1 => Just(other_mem)],
                any::<bool>(),
            ),
            4,
        ),
        prop::bool::weighted(0.8),
    )
        .prop_map(move |(block, n, blocks, shared, pieces, collapse)| {
            let blocks = if n == 1 {
                blocks.min(blocks_in_hot - block)
            } else {
                1
            };
            let first = hot_base + block * b1;
            let total = blocks * b1;
            let n = n.min(total);
            let piece = total / n;
            let mut v: Vec<Op> = (0..n)
                .map(|i| {
                    let (same, own, mem, y) = pieces[i as usize];
                    let perms = if same { shared } else { own };
                    let page = first + i * piece;
                    Op::Map {
                        page,
                        pages: piece,
                        hpa_page: hpas.follow(page),
                        attrs: Attrs {
                            perms,
                            mem,
                            ignore_guest_memtype: false,
                        },
                        cap: Some(0),
                        young: young_of(y, perms),
                    }
                })
                .collect();
            if collapse {
                v.push(Op::Collapse {
                    page: first,
                    pages: total,
                });
            }
            v
        });

    let collapse = prop_oneof![
        2 => Just(vec![Op::Collapse { page: w.base, pages: w.pages }]),
        2 => place.clone().prop_map(move |(p, n)| {
            let start = p & !(b1 - 1);
            let stop = ((p + n).div_ceil(b1) * b1).min(end);
            vec![Op::Collapse { page: start, pages: stop - start }]
        }),
        1 => place.clone().prop_map(|(page, pages)| vec![Op::Collapse { page, pages }]),
    ];
    let unmap = place
        .clone()
        .prop_map(|(page, pages)| vec![Op::Unmap { page, pages }]);
    let protect = (place.clone(), perms)
        .prop_map(|((page, pages), perms)| vec![Op::Protect { page, pages, perms }]);
    let split = (place, proptest::sample::select(sp.split_levels.clone()))
        .prop_map(|((page, pages), level)| vec![Op::Split { page, pages, level }]);
    let access = (page, any::<bool>()).prop_map(|(page, write)| vec![Op::Access { page, write }]);

    let k = sp.weights;
    Union::new_weighted(
        [
            (k.map, map.boxed()),
            (k.fill, fill.boxed()),
            (k.unmap, unmap.boxed()),
            (k.protect, protect.boxed()),
            (k.split, split.boxed()),
            (k.collapse, collapse.boxed()),
            (k.access, access.boxed()),
        ]
        .into_iter()
        .filter(|(w, _)| *w > 0)
        .collect(),
    )
    .boxed()
}

/// What the hardware does with one guest address: the output address, the access kinds that
/// translate, and the memory kind (in the oracle's terms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen<M> {
    /// The output address, if any access translated.
    pub hpa: Option<u64>,
    /// The access kinds that translated (as the oracle's [`Oracle::kinds`]).
    pub perms: Perms,
    /// The memory kind, if any access translated.
    pub mem: Option<M>,
}

/// What a guest access did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Accessed {
    /// It translated (hardware set accessed, and dirty for a write, where it does).
    Translated,
    /// It faulted for want of a mapping or a permission.
    Faulted,
    /// It faulted for accessed/dirty (software-managed A/D): the mapping allows it. The oracle
    /// asserts itself that its configuration may take such faults.
    AdFault,
}

/// The engine's view of a tree, on either path.
pub trait View {
    /// The leaf mapping `gpa`, from the engine's `query`.
    fn query(&self, gpa: u64) -> Option<Mapping>;
    /// The engine's `walk` of `range`.
    fn walk(&self, range: GpaRange, visitor: &mut dyn FnMut(&WalkEntry));
    /// The tree's counters (`cached_bytes`: the reserve).
    fn stats(&self) -> Stats;
}

impl<F: PteFormat, H: Host> View for Table<F, H> {
    fn query(&self, gpa: u64) -> Option<Mapping> {
        Table::query(self, Gpa::new(gpa)).unwrap()
    }
    fn walk(&self, range: GpaRange, visitor: &mut dyn FnMut(&WalkEntry)) {
        Table::walk(self, range, |e| {
            visitor(e);
            ControlFlow::Continue(())
        })
        .unwrap();
    }
    fn stats(&self) -> Stats {
        Table::stats(self)
    }
}

/// A tree on the shared path, seen through read-side sections.
struct SharedView<'a, F: PteFormat> {
    tree: &'a Tree<F, &'a HeapHost>,
    heap: &'a HeapHost,
    ctx: &'a Reserve<'a>,
}

impl<F: PteFormat> View for SharedView<'_, F> {
    fn query(&self, gpa: u64) -> Option<Mapping> {
        let guard = self.heap.read_side();
        self.tree.shared(&guard).query(Gpa::new(gpa)).unwrap()
    }
    fn walk(&self, range: GpaRange, visitor: &mut dyn FnMut(&WalkEntry)) {
        let guard = self.heap.read_side();
        self.tree
            .shared(&guard)
            .walk(range, |e| {
                visitor(e);
                ControlFlow::Continue(())
            })
            .unwrap();
    }
    fn stats(&self) -> Stats {
        let mut s = self.tree.stats();
        s.cached_bytes = self.ctx.ctx.cache().bytes() as u64;
        s
    }
}

/// An architecture configuration under test: its format, its independent walker and its own
/// checks. See the module documentation.
pub trait Oracle {
    /// The format under test.
    type Format: PteFormat + Clone;
    /// The host of the exclusive path's table: the heap itself (`&'h HeapHost`) or a wrapper
    /// around it that records what the engine asks of it.
    type Host<'h>: Host;
    /// The memory kind as the walker reports it.
    type Mem: Clone + Debug + PartialEq;
    /// A raw walk of one address, compared before and after each injected failure on the
    /// exclusive path (`()` when [`Seen`] says it all).
    type Raw: Debug + PartialEq;

    /// The space the sequences use.
    fn space(&self) -> &Space;
    /// A fresh host window for one run.
    fn heap(&self) -> HeapHost;
    /// The format under test.
    fn format(&self) -> Self::Format;
    /// The exclusive path's host over `heap`.
    fn host<'h>(&self, heap: &'h HeapHost) -> Self::Host<'h>;
    /// What the walker starts from for a tree rooted at `root` (EPTP, VTTBR, hgatp, PGD, ...).
    fn walk_root(&self, fmt: &Self::Format, root: Hpa) -> u64;
    /// The access kinds a peek walks, each as the permission it needs.
    fn kinds(&self) -> &'static [Perms];
    /// Walks `gpa` for the access kind `kind` with the walker, writing nothing: the output
    /// address and memory kind, or `None` for a fault the mapping explains (not mapped, not
    /// permitted). Any other fault panics.
    fn peek(&self, heap: &HeapHost, root: u64, gpa: u64, kind: Perms) -> Option<(u64, Self::Mem)>;
    /// A raw walk of `gpa`, compared across injected failures on the exclusive path.
    fn raw(&self, heap: &HeapHost, root: u64, gpa: u64) -> Self::Raw;
    /// The memory kind the walker should report for a leaf with `attrs`.
    fn expected_mem(&self, attrs: &Attrs) -> Self::Mem;
    /// The guest accesses `gpa` as the hardware (and the hypervisor's fast path, where there is
    /// one) would, setting accessed/dirty.
    fn access(&self, heap: &HeapHost, root: u64, gpa: u64, write: bool) -> Accessed;
    /// Whether the configuration has accessed/dirty state to keep.
    fn has_ad(&self) -> bool;
    /// Whether the format can encode `attrs` (ideally from the architecture's rules; the driver
    /// asserts the format agrees).
    fn legal(&self, attrs: &Attrs) -> bool;

    /// Whether the accessed (or, with `dirty`, the dirty) state of the page at `gpa`, known set,
    /// is still set; `perms` are the model's permissions there. Default: the engine's query says
    /// so.
    fn ad_kept(
        &self,
        heap: &HeapHost,
        root: u64,
        view: &dyn View,
        gpa: u64,
        perms: Perms,
        dirty: bool,
    ) -> bool {
        let _ = (heap, root, perms);
        view.query(gpa).is_some_and(|m| {
            if dirty {
                m.ad.dirty == Some(true)
            } else {
                m.ad.accessed == Some(true)
            }
        })
    }
    /// Whether removing write permission cleans (dirty is the hardware write enable).
    fn write_protect_cleans(&self) -> bool {
        false
    }
    /// Whether the engine's `query` must give back exactly the model's address and attributes.
    fn query_matches_model(&self) -> bool {
        true
    }
    /// Extra checks at every touched address after every step, on both paths; `m` is the
    /// engine's query there.
    fn check_point(&self, heap: &HeapHost, root: u64, gpa: u64, m: Option<&Mapping>) {
        let _ = (heap, root, gpa, m);
    }
    /// Exclusive path: the table was just made.
    fn on_table(&self, table: &Table<Self::Format, Self::Host<'_>>) {
        let _ = table;
    }
    /// Exclusive path: before `op` (not an access) runs.
    fn before_op(&self, table: &Table<Self::Format, Self::Host<'_>>, op: &Op) {
        let _ = (table, op);
    }
    /// Exclusive path: before each attempt of the current step (one per injected failure, then
    /// the real one); `watch` are the touched addresses.
    fn before_attempt(
        &self,
        table: &Table<Self::Format, Self::Host<'_>>,
        heap: &HeapHost,
        watch: &[u64],
    ) {
        let _ = (table, heap, watch);
    }
    /// Exclusive path: after `op` (not an access) and its outcome check, with the model before
    /// and after it.
    fn after_op(
        &self,
        table: &Table<Self::Format, Self::Host<'_>>,
        heap: &HeapHost,
        op: &Op,
        result: &Result<(), Error>,
        before: &Model,
        after: &Model,
    ) {
        let _ = (table, heap, op, result, before, after);
    }
    /// Exclusive path: after the table was dropped and every table was found freed.
    fn after_teardown(&self, heap: &HeapHost) {
        let _ = heap;
    }
}

/// Runs `ops` on the exclusive path, then on the shared path, on one fresh host window.
///
/// # Panics
/// When a check fails (this is a test driver).
pub fn run<O: Oracle>(oracle: &O, ops: &[Op]) {
    check_leaf_templates(&oracle.format(), ops);
    let heap = oracle.heap();
    run_exclusive(oracle, &heap, ops);
    run_shared(oracle, &heap, ops);
}

/// Checks the format's template rule (`PteFormat::leaf_addr_bits`) that single-entry maps rely
/// on, for the attributes, host pages and leaf levels of every map in `ops` the format accepts:
/// `make_leaf(hpa) == make_leaf(0) | leaf_addr_bits(hpa)`.
///
/// # Panics
/// When the rule does not hold.
pub fn check_leaf_templates<F: PteFormat>(fmt: &F, ops: &[Op]) {
    let geo = fmt.geometry();
    let oa_mask = (1u64 << geo.oa_bits()) - 1;
    for op in ops {
        let Op::Map {
            hpa_page,
            attrs,
            young,
            ..
        } = *op
        else {
            continue;
        };
        if fmt.check_attrs(&attrs).is_err() {
            continue;
        }
        let raw = (hpa_page << geo.shift(Level::LEAF)) & oa_mask;
        for l in 0..geo.levels() {
            let level = Level::new(l).expect("a level of the geometry");
            if !geo.is_leaf_level(level) {
                continue;
            }
            for hpa in [raw, oa_mask, 1 << (geo.oa_bits() - 1)] {
                let hpa = Hpa::new(hpa & !(geo.level_size(level) - 1));
                let whole = fmt.make_leaf(hpa, level, &attrs, young);
                let template = fmt.make_leaf(Hpa::new(0), level, &attrs, young);
                assert_eq!(
                    whole,
                    template | fmt.leaf_addr_bits(hpa, level),
                    "leaf for {hpa:?} at {level} with {attrs:?} is not template | address"
                );
            }
        }
    }
}

/// Runs `ops` on a [`Table`] on the oracle's host over `heap` (which must hold no table).
///
/// # Panics
/// When a check fails.
pub fn run_exclusive<O: Oracle>(o: &O, heap: &HeapHost, ops: &[Op]) {
    assert_eq!(heap.outstanding_tables(), 0, "a fresh host");
    let sp = o.space();
    let fmt = o.format();
    let mut table = Table::new(fmt.clone(), o.host(heap)).unwrap();
    o.on_table(&table);
    let root = o.walk_root(&fmt, table.root());
    let mut st = State::default();
    for op in ops {
        st.touch(sp, op);
        if let Op::Access { page, write } = *op {
            st.access(o, heap, root, sp, page, write);
        } else {
            let watch: Vec<u64> = st.points.iter().copied().collect();
            o.before_op(&table, op);
            let before: Vec<_> = watch
                .iter()
                .map(|&g| (seen(o, heap, root, g), o.raw(heap, root, g)))
                .collect();
            let result = inject::at_every_allocation(
                heap,
                &mut table,
                |t| {
                    o.before_attempt(t, heap, &watch);
                    apply(sp, t, op)
                },
                |_, k| {
                    for (&g, b) in watch.iter().zip(&before) {
                        let now = (seen(o, heap, root, g), o.raw(heap, root, g));
                        assert_eq!(&now, b, "failed {op:?} at allocation {k} changed {g:#x}");
                    }
                },
            );
            let model_before = st.model.clone();
            st.outcome(o, &fmt, sp, op, &result);
            o.after_op(&table, heap, op, &result, &model_before, &st.model);
        }
        st.check(o, heap, root, sp, &table, op);
        let s = table.stats();
        assert_eq!(
            heap.outstanding_bytes() as u64,
            s.table_bytes + s.cached_bytes,
            "leak after {op:?}"
        );
    }
    if let Some(last) = ops.last() {
        check_counts(sp, &table, last);
    }
    drop(table);
    assert_eq!(heap.outstanding_tables(), 0, "teardown leaked");
    o.after_teardown(heap);
}

/// A context whose reserve goes back to the host when dropped (also when a check panics).
struct Reserve<'h> {
    ctx: Ctx,
    heap: &'h HeapHost,
}

impl Drop for Reserve<'_> {
    fn drop(&mut self) {
        self.ctx.free_all(self.heap);
    }
}

/// Runs `ops` on a [`Tree`] over `heap` (which must hold no table) through shared access, one
/// call at a time, each in its own read-side section with its own [`PendingFlush`]. See the
/// module documentation for what is checked.
///
/// # Panics
/// When a check fails.
pub fn run_shared<O: Oracle>(o: &O, heap: &HeapHost, ops: &[Op]) {
    heap.synchronize();
    assert_eq!(heap.outstanding_tables(), 0, "a fresh host");
    let sp = o.space();
    let fmt = o.format();
    let tree = Tree::new(fmt.clone(), heap).unwrap();
    let mut reserve = Reserve {
        ctx: Ctx::new(&fmt),
        heap,
    };
    let root = o.walk_root(&fmt, tree.root());
    let mut st = State::default();
    for op in ops {
        let _ = heap.take_events();
        st.touch(sp, op);
        if let Op::Access { page, write } = *op {
            st.access(o, heap, root, sp, page, write);
        } else {
            let watch: Vec<u64> = st.points.iter().copied().collect();
            let before: Vec<_> = watch.iter().map(|&g| seen(o, heap, root, g)).collect();
            let mut k = 0;
            let result = loop {
                heap.fail_nth_alloc(k);
                let r = apply_shared(sp, &tree, heap, &mut reserve.ctx, op);
                let fired = heap.clear_failure();
                if let Err(Error::OutOfMemory { .. }) = r {
                    assert!(fired, "out of memory without an injected failure");
                    for (&g, b) in watch.iter().zip(&before) {
                        assert_eq!(
                            &seen(o, heap, root, g),
                            b,
                            "failed shared {op:?} at allocation {k} changed {g:#x}"
                        );
                    }
                    let view = SharedView {
                        tree: &tree,
                        heap,
                        ctx: &reserve,
                    };
                    heap.synchronize();
                    let s = view.stats();
                    assert_eq!(
                        heap.outstanding_bytes() as u64,
                        s.table_bytes + s.cached_bytes,
                        "failed shared {op:?} at allocation {k} leaked"
                    );
                    k = next_injection(k);
                    continue;
                }
                assert!(!fired, "an injected failure was swallowed: {r:?}");
                break r;
            };
            st.outcome(o, &fmt, sp, op, &result);
        }
        let view = SharedView {
            tree: &tree,
            heap,
            ctx: &reserve,
        };
        st.check(o, heap, root, sp, &view, op);
        check_counts(sp, &view, op);
        heap.synchronize();
        let s = view.stats();
        assert_eq!(
            heap.outstanding_bytes() as u64,
            s.table_bytes + s.cached_bytes,
            "shared leak after {op:?}"
        );
    }
    drop(reserve);
    drop(tree);
    heap.synchronize();
    assert_eq!(heap.outstanding_tables(), 0, "shared teardown leaked");
}

/// The shared path's next allocation to fail after `k`: every one of the first 16, then one
/// before and one at each power of two (a map of a huge range reserves hundreds of tables per
/// chunk; failing at each would cost a quadratic number of allocations).
fn next_injection(k: u64) -> u64 {
    if k < 16 || (k + 1).is_power_of_two() {
        k + 1
    } else {
        (k + 1).next_power_of_two() - 1
    }
}

fn range(sp: &Space, page: u64, pages: u64) -> GpaRange {
    GpaRange::new(Gpa::new(sp.addr(page)), sp.addr(pages)).unwrap()
}

fn level(l: u8) -> Level {
    Level::new(l).expect("a level number")
}

/// Applies one step (not an access) to the table.
fn apply<F: PteFormat, H: Host>(sp: &Space, t: &mut Table<F, H>, op: &Op) -> Result<(), Error> {
    match *op {
        Op::Map {
            page,
            pages,
            hpa_page,
            attrs,
            cap,
            young,
        } => t.map_with(
            range(sp, page, pages),
            Hpa::new(sp.addr(hpa_page)),
            attrs,
            MapOptions {
                max_level: cap.map(level),
                young_dirty: young,
            },
        ),
        Op::Unmap { page, pages } => t.unmap(range(sp, page, pages)),
        Op::Protect { page, pages, perms } => t.protect(range(sp, page, pages), perms),
        Op::Split {
            page,
            pages,
            level: l,
        } => t.split(range(sp, page, pages), level(l)),
        Op::Collapse { page, pages } => t.collapse(range(sp, page, pages)),
        Op::Access { .. } => unreachable!("accesses go to the walker"),
    }
}

/// Applies one step (not an access) through shared access, in a read-side section, flushing
/// before the section ends.
fn apply_shared<F: PteFormat>(
    sp: &Space,
    tree: &Tree<F, &HeapHost>,
    heap: &HeapHost,
    ctx: &mut Ctx,
    op: &Op,
) -> Result<(), Error> {
    let guard = heap.read_side();
    let s = tree.shared(&guard);
    let mut flush = PendingFlush::new(heap);
    let r = match *op {
        Op::Map {
            page,
            pages,
            hpa_page,
            attrs,
            cap,
            young,
        } => s.map(
            ctx,
            &mut flush,
            range(sp, page, pages),
            Hpa::new(sp.addr(hpa_page)),
            attrs,
            MapOptions {
                max_level: cap.map(level),
                young_dirty: young,
            },
        ),
        Op::Unmap { page, pages } => s.unmap(ctx, &mut flush, range(sp, page, pages)),
        Op::Protect { page, pages, perms } => {
            s.protect(ctx, &mut flush, range(sp, page, pages), perms)
        }
        Op::Split {
            page,
            pages,
            level: l,
        } => s.split(ctx, &mut flush, range(sp, page, pages), level(l)),
        Op::Collapse { page, pages } => s.collapse(ctx, &mut flush, range(sp, page, pages)),
        Op::Access { .. } => unreachable!("accesses go to the walker"),
    };
    flush.flush();
    drop(guard);
    r.map(|p| assert_eq!(p, Progress::Done, "a call without a budget yielded: {op:?}"))
}

/// Walks `gpa` for every access kind of the oracle.
fn seen<O: Oracle>(o: &O, heap: &HeapHost, root: u64, gpa: u64) -> Seen<O::Mem> {
    let mut s = Seen {
        hpa: None,
        perms: Perms::empty(),
        mem: None,
    };
    for &kind in o.kinds() {
        if let Some((hpa, mem)) = o.peek(heap, root, gpa, kind) {
            assert!(
                s.hpa.is_none() || s.hpa == Some(hpa),
                "{gpa:#x}: access kinds disagree on the output address"
            );
            s.hpa = Some(hpa);
            s.perms |= kind;
            s.mem = Some(mem);
        }
    }
    s
}

/// What the model expects the walker to see at `gpa` (a leaf without permissions: nothing).
fn expected<O: Oracle>(o: &O, model: &Model, gpa: u64) -> Seen<O::Mem> {
    match model.translate(gpa) {
        Some((hpa, attrs)) if !attrs.perms.is_empty() => Seen {
            hpa: Some(hpa),
            perms: attrs.perms,
            mem: Some(o.expected_mem(&attrs)),
        },
        _ => Seen {
            hpa: None,
            perms: Perms::empty(),
            mem: None,
        },
    }
}

/// The leaf and table counters equal what a walk of the windows finds (the root counted once;
/// an entry reaching past a window is counted once over all windows).
fn check_counts(sp: &Space, view: &dyn View, op: &Op) {
    let mut leaves = [0u64; MAX_LEVELS];
    let mut tables = [0u64; MAX_LEVELS];
    tables[usize::from(sp.levels()) - 1] = 1;
    let mut wide: BTreeSet<(bool, usize, u64)> = BTreeSet::new();
    for w in &sp.windows {
        let (lo, hi) = (sp.addr(w.base), sp.addr(w.base + w.pages));
        view.walk(range(sp, w.base, w.pages), &mut |e| {
            let l = e.level.index();
            let (counter, table) = match (e.kind, e.visit) {
                (EntryKind::Leaf, Visit::Leaf) => (&mut leaves[l], false),
                (EntryKind::Table, Visit::TablePre) => (&mut tables[l - 1], true),
                _ => return,
            };
            let size = sp.addr(sp.spans[l]);
            let g = e.gpa.raw();
            if (g < lo || g + size > hi) && !wide.insert((table, l, g)) {
                return;
            }
            *counter += 1;
        });
    }
    let s = view.stats();
    assert_eq!(s.leaves, leaves, "leaf counters vs a walk after {op:?}");
    assert_eq!(s.tables, tables, "table counters vs a walk after {op:?}");
}

/// The model and what is known about the touched addresses.
#[derive(Default)]
struct State {
    model: Model,
    /// Touched addresses (a byte inside each touched page).
    points: BTreeSet<u64>,
    /// Pages whose accessed state is known set (a young map, or a walker access since the map).
    young: BTreeSet<u64>,
    /// Pages whose dirty state is known set.
    dirty: BTreeSet<u64>,
}

impl State {
    /// Adds the pages at the edges and the middle of the step, and their neighbours, in its
    /// window.
    fn touch(&mut self, sp: &Space, op: &Op) {
        let (page, pages) = op.span();
        let w = sp.window_of(page);
        for p in [
            page,
            page + pages / 2,
            page + pages - 1,
            page + pages,
            page.wrapping_sub(1),
            page ^ 1,
        ] {
            if p >= w.base && p - w.base < w.pages {
                self.points.insert(sp.addr(p) | 0x5a8);
            }
        }
    }

    fn access<O: Oracle>(
        &mut self,
        o: &O,
        heap: &HeapHost,
        root: u64,
        sp: &Space,
        page: u64,
        write: bool,
    ) {
        let gpa = sp.addr(page) | 0x10;
        let want = if write { Perms::WRITE } else { Perms::READ };
        let allowed = expected(o, &self.model, gpa).perms.contains(want);
        match o.access(heap, root, gpa, write) {
            Accessed::Translated => {
                assert!(allowed, "access to {gpa:#x} (write: {write}) translated");
                if o.has_ad() {
                    self.young.insert(page);
                    if write {
                        self.dirty.insert(page);
                    }
                }
            }
            Accessed::Faulted => {
                assert!(!allowed, "access to {gpa:#x} (write: {write}) faulted");
            }
            Accessed::AdFault => {
                assert!(allowed, "access to {gpa:#x} (write: {write}): A/D fault");
                let known = self.young.contains(&page) && (!write || self.dirty.contains(&page));
                assert!(
                    !known,
                    "access to {gpa:#x} (write: {write}): A/D fault on a page known young/dirty"
                );
            }
        }
    }

    /// Checks the outcome of `op` against the model and the oracle's rules, and updates the
    /// model.
    fn outcome<O: Oracle>(
        &mut self,
        o: &O,
        fmt: &O::Format,
        sp: &Space,
        op: &Op,
        result: &Result<(), Error>,
    ) {
        let a = |p| sp.addr(p);
        match *op {
            Op::Map {
                page,
                pages,
                hpa_page,
                attrs,
                cap,
                young,
            } => {
                let legal = o.legal(&attrs);
                assert_eq!(
                    fmt.check_attrs(&attrs).is_ok(),
                    legal,
                    "the format and the oracle disagree on {attrs:?}"
                );
                let too_wide = (hpa_page + pages - 1) >> sp.oa_pages_log2() != 0;
                let bad_level = cap.filter(|&l| !sp.is_leaf_level(l));
                if too_wide {
                    assert!(
                        matches!(result, Err(Error::HpaTooWide { .. })),
                        "{op:?}: {result:?}"
                    );
                } else if let Some(l) = bad_level {
                    assert_eq!(
                        *result,
                        Err(Error::InvalidLevel { level: level(l) }),
                        "{op:?}"
                    );
                } else if !legal {
                    assert!(
                        matches!(result, Err(Error::UnsupportedAttrs { .. })),
                        "{op:?}: {result:?}"
                    );
                } else {
                    match (
                        self.model.map(a(page), a(pages), a(hpa_page), attrs),
                        result,
                    ) {
                        (Ok(()), Ok(())) => {
                            if young && o.has_ad() {
                                for p in page..page + pages.min(64) {
                                    self.young.insert(p);
                                    if attrs.perms.contains(Perms::WRITE) {
                                        self.dirty.insert(p);
                                    }
                                }
                            }
                        }
                        (Err(_), Err(Error::AlreadyMapped { .. })) => {}
                        other => panic!("{op:?}: {other:?}"),
                    }
                }
            }
            Op::Unmap { page, pages } => {
                assert_eq!(*result, Ok(()), "{op:?}");
                self.model.unmap(a(page), a(pages));
                self.young.retain(|&p| p < page || p >= page + pages);
                self.dirty.retain(|&p| p < page || p >= page + pages);
            }
            Op::Protect { page, pages, perms } => {
                // Legal with write-back memory, and with the memory type of every leaf in range.
                let (lo, hi) = (a(page), a(page + pages));
                let legal = o.legal(&Attrs::normal(perms))
                    && self
                        .model
                        .spans()
                        .filter(|&(s, span)| s < hi && span.end > lo)
                        .all(|(_, span)| {
                            o.legal(&Attrs {
                                perms,
                                ..span.attrs
                            })
                        });
                if legal {
                    assert_eq!(*result, Ok(()), "{op:?}");
                    self.model.protect(lo, hi - lo, perms);
                    if o.write_protect_cleans() && !perms.contains(Perms::WRITE) {
                        self.dirty.retain(|&p| p < page || p >= page + pages);
                    }
                } else {
                    assert!(
                        matches!(result, Err(Error::UnsupportedAttrs { .. })),
                        "{op:?}: {result:?}"
                    );
                }
            }
            Op::Split { level: l, .. } => {
                if sp.is_leaf_level(l) {
                    assert_eq!(*result, Ok(()), "{op:?}");
                } else {
                    assert_eq!(
                        *result,
                        Err(Error::InvalidLevel { level: level(l) }),
                        "{op:?}"
                    );
                }
            }
            Op::Collapse { .. } => assert_eq!(*result, Ok(()), "{op:?}"),
            Op::Access { .. } => unreachable!("accesses go to the walker"),
        }
    }

    /// Every touched address as the model says (walker and query), and accessed/dirty state
    /// kept.
    fn check<O: Oracle>(
        &self,
        o: &O,
        heap: &HeapHost,
        root: u64,
        sp: &Space,
        view: &dyn View,
        op: &Op,
    ) {
        for &g in &self.points {
            assert_eq!(
                seen(o, heap, root, g),
                expected(o, &self.model, g),
                "gpa {g:#x} after {op:?}"
            );
            let m = view.query(g);
            if o.query_matches_model() {
                assert_eq!(
                    m.map(|m| (m.hpa.raw(), m.attrs)),
                    self.model.translate(g),
                    "query {g:#x} after {op:?}"
                );
            }
            o.check_point(heap, root, g, m.as_ref());
        }
        for (set, dirty, what) in [
            (&self.young, false, "accessed"),
            (&self.dirty, true, "dirty"),
        ] {
            for &p in set {
                let gpa = sp.addr(p);
                let perms = expected(o, &self.model, gpa).perms;
                assert!(
                    o.ad_kept(heap, root, view, gpa, perms, dirty),
                    "{what} lost at page {p:#x} after {op:?}"
                );
            }
        }
    }
}
