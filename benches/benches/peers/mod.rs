//! The Rust peers, each doing the benchmarked work the way its users would
//! (shared/anchors/rust-peers.md §1), on the x86-style 4-level geometry they all have in common,
//! with table frames from the same warm [`pool`].
//!
//! | peer | crate | table |
//! |---|---|---|
//! | `ptm` | page_table_multiarch 0.6.2 | `X64PageTable` with stock `X64PTE` |
//! | `a64p` | aarch64-paging 0.12.3 | `Mapping<_, Stage2>`, root level 0 (4 levels, 4 KiB granule) |
//! | `ptg` | page-table-generic 0.9.1 | `PageTable` with a small EPT-like user entry |
//! | `x64` | x86_64 0.15.5 | `OffsetPageTable` (physical offset 0) |

pub mod a64p;
pub mod pool;
pub mod ptg;
pub mod ptm;
pub mod x64;

use tdp_benches::Workload;
use tdp_core::Geometry;

/// The geometry the peers share: 4 KiB pages, 9 bits per level, leaves at 4K/2M/1G, 48 bits.
pub fn geometry() -> Geometry {
    Geometry::new(12, &[9, 9, 9, 9], 0b111, 48, 52).expect("x86 geometry")
}

/// A benchmarked operation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Map the whole range in one call.
    MapRange,
    /// Map the range one leaf per call.
    MapPages,
    /// Translate every leaf once.
    Query,
    /// Visit every leaf of the range in one call.
    Walk,
    /// Write-protect the whole range.
    Protect,
    /// Unmap the whole range in one call.
    UnmapRange,
    /// Unmap the range one leaf per call.
    UnmapPages,
    /// Split the largest leaves into 4 KiB leaves.
    Split,
    /// Free the whole table.
    Teardown,
}

/// What a translation found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The translated host address.
    pub hpa: u64,
    /// The size of the leaf.
    pub size: u64,
    /// Whether the leaf allows writes.
    pub writable: bool,
}

/// A peer: one table, and the benchmarked operations through the peer's own API.
///
/// Operations a peer lacks are never called ([`Peer::supports`] says which it has).
pub trait Peer: Sized {
    /// The short name used in group names and the results table.
    const NAME: &'static str;
    /// Bytes of per-table-page metadata the peer keeps (from its own structures).
    const METADATA_BYTES_PER_TABLE: u64;
    /// Whether the peer has `op` for leaves of this workload.
    fn supports(op: Op, w: &Workload) -> bool;
    /// An empty table.
    fn new() -> Self;
    /// Maps the range in one call.
    fn map_range(&mut self, w: &Workload);
    /// Maps the range one leaf per call.
    fn map_pages(&mut self, w: &Workload);
    /// Maps the range with the largest leaves that fit (the starting point of split).
    fn map_top(&mut self, w: &Workload);
    /// Translates every leaf once; returns a checksum.
    fn query_all(&self, w: &Workload) -> u64;
    /// Visits every leaf of the range in one call (never called unless [`Peer::supports`]
    /// says `Op::Walk`); returns how many leaves it met and the xor of their output addresses.
    fn walk(&self, _w: &Workload) -> (u64, u64) {
        unreachable!("{} has no range walk", Self::NAME)
    }
    /// Translates one address.
    fn translate(&self, gpa: u64) -> Option<Found>;
    /// Write-protects the range.
    fn protect(&mut self, w: &Workload);
    /// Unmaps the range in one call.
    fn unmap_range(&mut self, w: &Workload);
    /// Unmaps the range one leaf per call.
    fn unmap_pages(&mut self, w: &Workload);
    /// Splits those largest leaves into leaves of the workload's size.
    fn split(&mut self, w: &Workload);

    /// A table with the range mapped, by range if the peer can, else leaf by leaf.
    fn mapped(w: &Workload) -> Self {
        let mut t = Self::new();
        if Self::supports(Op::MapRange, w) {
            t.map_range(w);
        } else {
            t.map_pages(w);
        }
        t
    }
}

/// Checks that every sampled address translates as `w` says, with leaves of `leaf` bytes.
///
/// # Errors
/// A description of the first difference.
pub fn check_mapped<P: Peer>(t: &P, w: &Workload, leaf: u64, writable: bool) -> Result<(), String> {
    for i in w.samples() {
        let gpa = w.probe(i);
        let want = Found {
            hpa: w.expect(i),
            size: leaf,
            writable,
        };
        match t.translate(gpa) {
            Some(f) if f == want => {}
            other => {
                return Err(format!(
                    "{}: {gpa:#x} translates to {other:x?}, expected {want:x?}",
                    P::NAME
                ))
            }
        }
    }
    Ok(())
}

/// Checks that no sampled address translates any more.
///
/// # Errors
/// A description of the first difference.
pub fn check_unmapped<P: Peer>(t: &P, w: &Workload) -> Result<(), String> {
    for i in w.samples() {
        let gpa = w.probe(i);
        if let Some(f) = t.translate(gpa) {
            return Err(format!("{}: {gpa:#x} still maps {f:x?}", P::NAME));
        }
    }
    Ok(())
}

/// What one peer's check of every operation found, for the side file.
#[derive(Copy, Clone, Debug, Default)]
pub struct Checked {
    /// Table bytes after mapping the range.
    pub table_bytes: u64,
    /// Table bytes still held after unmapping the range (by range if it can, else per leaf).
    pub table_bytes_after_unmap: u64,
}

fn frames_since(base: u64) -> u64 {
    (pool::outstanding() - base) * pool::FRAME as u64
}

/// Runs every operation the peer has once on `w` and checks that it took effect: translations
/// after map, protect, split; none after unmap; every frame back after teardown.
///
/// # Errors
/// A description of the first failed check.
pub fn check_all<P: Peer>(w: &Workload) -> Result<Checked, String> {
    let base = pool::outstanding();
    let mut out = Checked::default();
    let top = geometry().level_size(w.top);
    {
        let t = P::mapped(w);
        check_mapped(&t, w, w.leaf, true)?;
        out.table_bytes = frames_since(base);
        let sum = t.query_all(w);
        let want = (0..w.leaves).fold(0, |a, i| a ^ (w.hpa + i * w.leaf));
        if sum != want {
            return Err(format!("{}: query checksum {sum:#x} != {want:#x}", P::NAME));
        }
        if P::supports(Op::Walk, w) {
            let got = t.walk(w);
            if got != (w.leaves, want) {
                return Err(format!(
                    "{}: walk met {got:#x?}, expected {:#x?}",
                    P::NAME,
                    (w.leaves, want)
                ));
            }
        }
    }
    if P::supports(Op::MapPages, w) {
        let mut t = P::new();
        t.map_pages(w);
        check_mapped(&t, w, w.leaf, true)?;
    }
    if P::supports(Op::Protect, w) {
        let mut t = P::mapped(w);
        t.protect(w);
        check_mapped(&t, w, w.leaf, false)?;
    }
    if P::supports(Op::UnmapRange, w) {
        let mut t = P::mapped(w);
        t.unmap_range(w);
        check_unmapped(&t, w)?;
        out.table_bytes_after_unmap = frames_since(base);
    }
    if P::supports(Op::UnmapPages, w) {
        let mut t = P::mapped(w);
        t.unmap_pages(w);
        check_unmapped(&t, w)?;
        if !P::supports(Op::UnmapRange, w) {
            out.table_bytes_after_unmap = frames_since(base);
        }
    }
    if P::supports(Op::Split, w) {
        let mut t = P::new();
        t.map_top(w);
        check_mapped(&t, w, top, true)?;
        t.split(w);
        check_mapped(&t, w, w.leaf, true)?;
    }
    if pool::outstanding() != base {
        return Err(format!(
            "{}: {} frames not freed after drop",
            P::NAME,
            pool::outstanding() - base
        ));
    }
    Ok(out)
}
