//! The benchmarked operations, written once for every architecture.
//!
//! A [`Workload`] is a range of guest memory (1 GiB in the benchmarks) mapped with leaves of one
//! level; each operation is a plain function over a [`Table`] of any format `F` and any host `H`.
//! Table memory comes from the testing kit's [`HeapHost`], a warm pool: tables freed by one
//! iteration are reused by the next, and its bookkeeping (a map of outstanding tables, poisoning of
//! freed pages) is included in every time, like the peers' allocators are in theirs.

use tdp_core::testing::HeapHost;
use tdp_core::{
    Attrs, Error, Geometry, Gpa, GpaRange, Host, Hpa, Level, MapOptions, Mapping, Perms, PteFormat,
    Stats, Table,
};

/// One gibibyte: the size of every benchmarked range.
pub const GIB: u64 = 1 << 30;
/// Where the benchmarked guest range starts (1 GiB aligned; fits every format's input width).
pub const GPA_BASE: u64 = 1 << 30;
/// The host range the guest range maps to (1 GiB aligned; fits every format's output width).
pub const HPA_BASE: u64 = 2 << 30;
/// The physical window the heap host hands table pages out of.
pub const WINDOW_BASE: u64 = 0x1000_0000;
/// The window's size: room for a few 1 GiB trees of the largest layout.
pub const WINDOW_SIZE: u64 = 64 << 20;
/// Permissions every workload maps with (guest RAM).
pub const MAP_PERMS: Perms = Perms::RWX;
/// Permissions after write-protection.
pub const WP_PERMS: Perms = Perms::RX;

/// A range of guest memory mapped with leaves of one level.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The level of the leaves.
    pub level: Level,
    /// The largest leaf level whose leaves fit in the range: split starts from it, collapse goes
    /// back to it.
    pub top: Level,
    /// Bytes per leaf.
    pub leaf: u64,
    /// Number of leaves (the "pages" every time is divided by).
    pub leaves: u64,
    /// First guest-physical address.
    pub start: u64,
    /// The host-physical address `start` maps to.
    pub hpa: u64,
    /// Bytes in the range.
    pub size: u64,
}

impl Workload {
    /// The workloads of a geometry over `size` bytes: one per leaf level whose leaves fit.
    ///
    /// A range of huge leaves below the largest leaf size starts one leaf past a boundary of the
    /// next size up, so that APIs which always pick the largest leaf that fits (the peers'
    /// range maps) build the same layout as an explicit maximum level does.
    pub fn all(geo: &Geometry, size: u64) -> Vec<Workload> {
        let levels: Vec<Level> = (0..geo.levels())
            .filter_map(Level::new)
            .filter(|&l| geo.is_leaf_level(l) && geo.level_size(l) <= size)
            .collect();
        let Some(&top) = levels.last() else {
            return Vec::new();
        };
        levels
            .into_iter()
            .map(|level| {
                let leaf = geo.level_size(level);
                let offset = if level.get() > 0 && level < top {
                    leaf
                } else {
                    0
                };
                Workload {
                    level,
                    top,
                    leaf,
                    leaves: size / leaf,
                    start: GPA_BASE + offset,
                    hpa: HPA_BASE + offset,
                    size,
                }
            })
            .collect()
    }

    /// The leaf size as a short name: `4K`, `2M`, `1G`, ...
    pub fn name(&self) -> String {
        size_name(self.leaf)
    }

    /// The whole range.
    ///
    /// # Panics
    /// Never for a workload built by [`Workload::all`].
    pub fn range(&self) -> GpaRange {
        GpaRange::new(Gpa::new(self.start), self.size).expect("non-empty range")
    }

    /// The range of leaf `i`.
    ///
    /// # Panics
    /// Never for a workload built by [`Workload::all`].
    pub fn leaf_range(&self, i: u64) -> GpaRange {
        GpaRange::new(Gpa::new(self.start + i * self.leaf), self.leaf).expect("non-empty range")
    }

    /// Whether the split-and-collapse pair applies: page-sized leaves under a larger leaf level.
    pub fn splits(&self) -> bool {
        self.level.get() == 0 && self.top > self.level
    }

    /// The leaves the checks look at: both ends, the middle, and a stride through the range.
    pub fn samples(&self) -> impl Iterator<Item = u64> + '_ {
        let stride = (self.leaves / 61).max(1);
        (0..self.leaves)
            .step_by(stride as usize)
            .chain([self.leaves / 2, self.leaves - 1])
    }

    /// A guest address inside leaf `i` (not at its start, to check the offset arithmetic).
    pub fn probe(&self, i: u64) -> u64 {
        self.start + i * self.leaf + ((self.leaf / 2) | 0x128)
    }

    /// The host address [`Workload::probe`]`(i)` must translate to.
    pub fn expect(&self, i: u64) -> u64 {
        self.hpa + i * self.leaf + ((self.leaf / 2) | 0x128)
    }
}

/// A size as a short name: `4K`, `16K`, `2M`, `512M`, `1G`.
pub fn size_name(bytes: u64) -> String {
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{}G", b / GIB),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b % 1024 == 0 => format!("{}K", b >> 10),
        b => format!("{b}B"),
    }
}

/// A heap host for format `F`, event recording off.
pub fn host<F: PteFormat>(fmt: &F) -> HeapHost {
    let host = HeapHost::new(WINDOW_BASE, WINDOW_SIZE, fmt.geometry().min_table_size());
    host.set_recording(false);
    host
}

/// An empty table.
///
/// # Panics
/// If the host has no room for the root (a set-up error).
pub fn empty<F: PteFormat + Clone, H: Host>(fmt: &F, host: H) -> Table<F, H> {
    Table::new(fmt.clone(), host).expect("room for the root")
}

/// The options every workload maps with: leaves of `level` at most, A/D preset (KVM's policy).
pub fn opts(level: Level) -> MapOptions {
    MapOptions {
        max_level: Some(level),
        young_dirty: true,
    }
}

/// Maps the whole range in one call, with leaves of the workload's level.
///
/// # Panics
/// If the engine refuses (the benchmark would be measuring an error path).
pub fn map_range<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
    t.map_with(
        w.range(),
        Hpa::new(w.hpa),
        Attrs::normal(MAP_PERMS),
        opts(w.level),
    )
    .expect("map range");
}

/// Maps the range with the largest leaves that fit (the starting point of split).
///
/// # Panics
/// If the engine refuses.
pub fn map_top<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
    t.map_with(
        w.range(),
        Hpa::new(w.hpa),
        Attrs::normal(MAP_PERMS),
        opts(w.top),
    )
    .expect("map with the largest leaves");
}

/// Maps the range one leaf per call.
///
/// # Panics
/// If the engine refuses.
pub fn map_pages<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
    let attrs = Attrs::normal(MAP_PERMS);
    let o = opts(w.level);
    for i in 0..w.leaves {
        t.map_with(w.leaf_range(i), Hpa::new(w.hpa + i * w.leaf), attrs, o)
            .expect("map one leaf");
    }
}

/// Queries every leaf once with [`Table::leaf`] (the query whose attributes and accessed/dirty
/// state are decoded only when asked for; the checksum asks for the address only); returns a
/// checksum of the translations.
///
/// # Panics
/// If a leaf is missing.
pub fn query_all<F: PteFormat, H: Host>(t: &Table<F, H>, w: &Workload) -> u64 {
    let mut sum = 0u64;
    for i in 0..w.leaves {
        let m = t
            .leaf(Gpa::new(w.start + i * w.leaf))
            .expect("in range")
            .expect("mapped");
        sum ^= m.hpa().raw();
    }
    sum
}

/// Write-protects the whole range in one call.
///
/// # Panics
/// If the engine refuses.
pub fn protect<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
    t.protect(w.range(), WP_PERMS).expect("protect");
}

/// Unmaps the whole range in one call.
///
/// # Panics
/// If the engine refuses.
pub fn unmap_range<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
    t.unmap(w.range()).expect("unmap range");
}

/// Unmaps the range one leaf per call.
///
/// # Panics
/// If the engine refuses.
pub fn unmap_pages<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
    for i in 0..w.leaves {
        t.unmap(w.leaf_range(i)).expect("unmap one leaf");
    }
}

/// Splits every leaf of the range down to the workload's level.
///
/// # Panics
/// If the engine refuses.
pub fn split<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
    t.split(w.range(), w.level).expect("split");
}

/// Collapses the range back to the largest leaves.
///
/// # Panics
/// If the engine refuses.
pub fn collapse<F: PteFormat, H: Host>(t: &mut Table<F, H>, w: &Workload) {
    t.collapse(w.range()).expect("collapse");
}

/// Checks that every sampled address translates as `w` says, with leaves of `level` and
/// permissions `perms`, and that the tree holds exactly the leaves of that layout.
///
/// # Errors
/// A description of the first difference.
pub fn check_mapped<F: PteFormat, H: Host>(
    t: &Table<F, H>,
    w: &Workload,
    level: Level,
    perms: Perms,
) -> Result<(), String> {
    check_translations(
        t.format().geometry(),
        &t.stats(),
        |gpa| t.query(gpa),
        w,
        level,
        perms,
    )
}

/// [`check_mapped`] for any tree: `query` translates one address, `stats` are the tree's
/// counters.
///
/// # Errors
/// A description of the first difference.
pub fn check_translations(
    geo: &Geometry,
    stats: &Stats,
    query: impl Fn(Gpa) -> Result<Option<Mapping>, Error>,
    w: &Workload,
    level: Level,
    perms: Perms,
) -> Result<(), String> {
    for i in w.samples() {
        let gpa = w.probe(i);
        let m = query(Gpa::new(gpa))
            .map_err(|e| format!("query {gpa:#x}: {e:?}"))?
            .ok_or_else(|| format!("{gpa:#x} is not mapped"))?;
        if m.hpa.raw() != w.expect(i) || m.level != level || m.attrs.perms != perms {
            return Err(format!(
                "{gpa:#x}: {:#x} at level {} with {}, expected {:#x} at level {} with {perms}",
                m.hpa.raw(),
                m.level.get(),
                m.attrs.perms,
                w.expect(i),
                level.get()
            ));
        }
    }
    let want = w.size / geo.level_size(level);
    if stats.leaves[level.index()] != want || stats.total_leaves() != want {
        return Err(format!(
            "{} leaves ({:?}), expected {want} at level {}",
            stats.total_leaves(),
            stats.leaves,
            level.get()
        ));
    }
    Ok(())
}

/// Checks that nothing in the range is mapped any more and that every table below the root was
/// freed.
///
/// # Errors
/// A description of the first difference.
pub fn check_unmapped<F: PteFormat, H: Host>(t: &Table<F, H>, w: &Workload) -> Result<(), String> {
    for i in w.samples() {
        let gpa = w.probe(i);
        if let Some(m) = t.query(Gpa::new(gpa)).map_err(|e| format!("{e:?}"))? {
            return Err(format!("{gpa:#x} still maps {:#x}", m.hpa.raw()));
        }
    }
    let s = t.stats();
    if s.total_leaves() != 0 || s.total_tables() != 1 {
        return Err(format!(
            "{} leaves and {} tables left after unmap",
            s.total_leaves(),
            s.total_tables()
        ));
    }
    Ok(())
}

/// The fewest table bytes any engine needs for leaves of `level` over `[start, start + size)`
/// in geometry `geo`: the root plus, at each level from the leaves' up, one table per entry span of
/// the level above that the range touches.
pub fn min_table_bytes(geo: &Geometry, start: u64, size: u64, level: Level) -> u64 {
    let root = geo.root_level();
    let last = start + size - 1;
    let mut bytes = geo.table_size(root) as u64;
    for l in level.get()..root.get() {
        let (Some(here), Some(above)) = (Level::new(l), Level::new(l + 1)) else {
            continue;
        };
        let shift = geo.shift(above);
        let tables = (last >> shift) - (start >> shift) + 1;
        bytes += tables * geo.table_size(here) as u64;
    }
    bytes
}

/// Memory of a tree as the side file reports it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Bytes of the tables in the tree.
    pub table_bytes: u64,
    /// Bytes of free tables the engine keeps reserved for the next operations.
    pub cached_bytes: u64,
    /// Tables in the tree.
    pub tables: u64,
    /// Engine metadata per table page.
    pub metadata_bytes_per_table: u64,
}

impl From<Stats> for Memory {
    fn from(s: Stats) -> Memory {
        Memory {
            table_bytes: s.table_bytes,
            cached_bytes: s.cached_bytes,
            tables: s.total_tables(),
            metadata_bytes_per_table: s.metadata_bytes_per_table,
        }
    }
}

/// The table sizes a tree holds (size, count), for the host floor.
pub fn table_sizes(geo: &Geometry, s: &Stats) -> Vec<(usize, u64)> {
    (0..geo.levels())
        .filter_map(Level::new)
        .map(|l| (geo.table_size(l), s.tables[l.index()]))
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// Allocates the given tables from the host and frees them again: what the host alone costs a
/// map followed by an unmap of that layout (the engine's own work excluded).
///
/// # Panics
/// If the window is full (a set-up error).
pub fn host_cycle<H: Host>(host: &H, sizes: &[(usize, u64)], scratch: &mut Vec<(Hpa, usize)>) {
    for &(size, n) in sizes {
        for _ in 0..n {
            scratch.push((host.alloc_table(size).expect("room in the window"), size));
        }
    }
    for (pa, size) in scratch.drain(..) {
        // SAFETY: `pa` was allocated just above with `size` bytes and was never linked into a
        // table, so nothing references it and no TLB can cache it.
        unsafe { host.free_table(pa, size) };
    }
}

/// What the checks of one workload found, for the side file.
pub struct Checked {
    /// Memory of the tree after mapping the range.
    pub mapped: Memory,
    /// Table bytes left after unmapping the range.
    pub after_unmap: u64,
    /// The table sizes of the mapped tree (for [`host_cycle`]).
    pub sizes: Vec<(usize, u64)>,
}

/// Runs every operation once on `w` and checks that it took effect: translations after map,
/// protect, split and collapse; none after unmap; every table back to the host after teardown.
///
/// # Errors
/// A description of the first failed check.
pub fn check_all<F: PteFormat + Clone>(
    fmt: &F,
    host: &HeapHost,
    w: &Workload,
) -> Result<Checked, String> {
    let (mapped, sizes) = {
        let mut t = empty(fmt, host);
        map_range(&mut t, w);
        check_mapped(&t, w, w.level, MAP_PERMS)?;
        let want = (0..w.leaves).fold(0, |a, i| a ^ (w.hpa + i * w.leaf));
        let sum = query_all(&t, w);
        if sum != want {
            return Err(format!("query checksum {sum:#x} != {want:#x}"));
        }
        let s = t.stats();
        (Memory::from(s), table_sizes(fmt.geometry(), &s))
    };
    let mut t = empty(fmt, host);
    map_pages(&mut t, w);
    check_mapped(&t, w, w.level, MAP_PERMS)?;
    protect(&mut t, w);
    check_mapped(&t, w, w.level, WP_PERMS)?;
    unmap_range(&mut t, w);
    check_unmapped(&t, w)?;
    let after_unmap = t.stats().table_bytes;
    drop(t);
    let mut t = empty(fmt, host);
    map_range(&mut t, w);
    unmap_pages(&mut t, w);
    check_unmapped(&t, w)?;
    drop(t);
    if w.splits() {
        let mut t = empty(fmt, host);
        map_top(&mut t, w);
        check_mapped(&t, w, w.top, MAP_PERMS)?;
        split(&mut t, w);
        check_mapped(&t, w, w.level, MAP_PERMS)?;
        collapse(&mut t, w);
        check_mapped(&t, w, w.top, MAP_PERMS)?;
    }
    if host.outstanding_tables() != 0 {
        return Err(format!(
            "{} tables not freed after teardown",
            host.outstanding_tables()
        ));
    }
    Ok(Checked {
        mapped,
        after_unmap,
        sizes,
    })
}

/// Walks the whole range in one call, visiting every entry; returns how many leaves it met and
/// the xor of their output addresses (the same checksum as [`query_all`]).
///
/// # Panics
/// If the engine refuses.
pub fn walk_all<F: PteFormat, H: Host>(t: &Table<F, H>, w: &Workload) -> (u64, u64) {
    let fmt = t.format();
    let (mut leaves, mut sum) = (0u64, 0u64);
    t.walk(w.range(), |e| {
        if e.kind == tdp_core::EntryKind::Leaf {
            leaves += 1;
            sum ^= fmt.leaf_addr(e.raw, e.level).raw();
        }
        core::ops::ControlFlow::Continue(())
    })
    .expect("walk");
    (leaves, sum)
}
