//! Map page by page through the engine's [`Tree`] API, the way many callers do (issue 17): in
//! exclusive mode, in shared mode on one thread, and in shared mode on several threads at once,
//! each over its own disjoint part of the range; and through the explicit [`tdp_core::Table`]
//! API for reference. `benches/shared.rs` times these runs; the tests run them on a small range.
//!
//! A [`Tree`] run starts from an empty tree whose callers already hold every table the run adds
//! in their reserves ([`Ctx::topup`] before the timed part, [`reserve_need`]), so the timed loop
//! never calls the host: the run checks it (the host's count of outstanding tables does not move
//! while it is timed). Each caller has one [`PendingFlush`] for its whole run, settled at the end
//! of its timed part (a map over empty entries owes no flush on these formats, so it is empty);
//! a shared-mode caller takes its read-side guard once, also inside its timed part.
//! The [`Api::Table`] run allocates from the host's warm pool per call, as every explicit-API
//! benchmark does (`benches/explicit.rs`).
//!
//! After the timed part every run checks sampled translations and the leaf count (through
//! `query` and the tree's statistics), then tears the tree down and gives back its callers'
//! reserves, and checks that every table went back to the host.

use std::ops::Range;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use tdp_core::testing::HeapHost;
use tdp_core::{
    Attrs, Ctx, Error, Geometry, GpaRange, Hpa, Level, MapOptions, PendingFlush, Progress,
    PteFormat, SharedHost, Tree, MAX_LEVELS,
};

use crate::workload::{self, Workload, MAP_PERMS};

/// Which API a run maps through.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Api {
    /// [`tdp_core::Table::map_with`], one call per page (flushed, reserve trimmed per call).
    Table,
    /// [`Tree::exclusive`], one [`tdp_core::ExclusiveAccess::map`] per page.
    Exclusive,
    /// [`Tree::shared`] on this many threads at once, each mapping its own contiguous part of the
    /// range (the range split evenly), one [`tdp_core::SharedAccess::map`] per page, each with
    /// its own [`Ctx`], [`PendingFlush`] and read-side guard.
    Shared(usize),
}

/// The tables a caller reserves to map leaves `leaves` of `w` into an empty tree: at each level
/// from the leaves' up to the one under the root, one table per entry of the level above that
/// the part touches, plus one spare. The spare is there because a call whose page has no leaf
/// table yet first tops its reserve up to one table of every level under the root (an upper
/// bound: it does not look which ones exist); with the spare the reserve always meets that bound
/// and the host is never called.
pub fn reserve_need(geo: &Geometry, w: &Workload, leaves: &Range<u64>) -> [u32; MAX_LEVELS] {
    let start = w.start + leaves.start * w.leaf;
    let last = w.start + leaves.end * w.leaf - 1;
    let mut need = [0; MAX_LEVELS];
    for l in w.level.get()..geo.root_level().get() {
        let Some(above) = Level::new(l + 1) else {
            continue;
        };
        let shift = geo.shift(above);
        let tables = (last >> shift) - (start >> shift) + 1;
        need[usize::from(l)] = u32::try_from(tables + 1).unwrap_or(u32::MAX);
    }
    need
}

/// The leaves of `w` that part `i` of `n` maps: the range split evenly, in order.
pub fn part(w: &Workload, i: usize, n: usize) -> Range<u64> {
    let (i, n) = (i as u64, n as u64);
    w.leaves * i / n..w.leaves * (i + 1) / n
}

/// Maps leaves `leaves` of `w`, one call of `map` per page. Never inlined, so that profilers can
/// count the loop alone (see `examples/map_pages.rs`).
#[inline(never)]
fn map_each(
    w: &Workload,
    leaves: Range<u64>,
    mut map: impl FnMut(GpaRange, Hpa, Attrs, MapOptions) -> Result<Progress, Error>,
) -> Result<(), String> {
    let attrs = Attrs::normal(MAP_PERMS);
    let o = workload::opts(w.level);
    for i in leaves {
        match map(w.leaf_range(i), Hpa::new(w.hpa + i * w.leaf), attrs, o) {
            Ok(Progress::Done) => {}
            other => return Err(format!("map of leaf {i}: {other:?}")),
        }
    }
    Ok(())
}

/// Maps the whole range of `w` page by page through `api` on an empty table, checks the result,
/// tears the table down; returns the time of the map alone (for [`Api::Shared`]: from the first
/// thread's start to the last one's end).
///
/// # Errors
/// A description of the first failed call or check.
pub fn run<F: PteFormat + Clone + Sync>(
    fmt: &F,
    host: &HeapHost,
    w: &Workload,
    api: Api,
) -> Result<Duration, String> {
    let time = match api {
        Api::Table => {
            let mut t = workload::empty(fmt, host);
            let t0 = Instant::now();
            workload::map_pages(&mut t, w);
            let time = t0.elapsed();
            workload::check_mapped(&t, w, w.level, MAP_PERMS)?;
            time
        }
        Api::Exclusive => tree_run(fmt, host, w, 1, |tree, ctxs| {
            let t0 = Instant::now();
            let mut flush = PendingFlush::new(host);
            let x = tree.exclusive();
            let ctx = &mut ctxs[0];
            let r = map_each(w, 0..w.leaves, |range, hpa, attrs, o| {
                x.map(&mut *ctx, &mut flush, range, hpa, attrs, o)
            });
            flush.flush();
            (t0.elapsed(), r)
        })?,
        Api::Shared(threads) => tree_run(fmt, host, w, threads, |tree, ctxs| {
            let tree = &*tree;
            let barrier = Barrier::new(threads);
            let ends = std::thread::scope(|scope| {
                let workers: Vec<_> = ctxs
                    .iter_mut()
                    .enumerate()
                    .map(|(i, ctx)| {
                        let barrier = &barrier;
                        scope.spawn(move || {
                            barrier.wait();
                            let t0 = Instant::now();
                            let guard = host.read_side();
                            let s = tree.shared(&guard);
                            let mut flush = PendingFlush::new(host);
                            let r = map_each(w, part(w, i, threads), |range, hpa, attrs, o| {
                                s.map(&mut *ctx, &mut flush, range, hpa, attrs, o)
                            });
                            flush.flush();
                            drop(guard);
                            (t0, Instant::now(), r)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect::<Vec<_>>()
            });
            let start = ends.iter().map(|e| e.0).min();
            let end = ends.iter().map(|e| e.1).max();
            let time = match (start, end) {
                (Some(s), Some(e)) => e.duration_since(s),
                _ => Duration::ZERO,
            };
            let r = ends.into_iter().try_for_each(|e| e.2);
            (time, r)
        })?,
    };
    if host.outstanding_tables() != 0 {
        return Err(format!(
            "{} tables not freed after teardown",
            host.outstanding_tables()
        ));
    }
    Ok(time)
}

/// An empty tree and `callers` contexts with their parts' tables reserved; runs `timed` on them,
/// then checks that it did not call the host and that the range is mapped, and tears down.
fn tree_run<'h, F: PteFormat + Clone>(
    fmt: &F,
    host: &'h HeapHost,
    w: &Workload,
    callers: usize,
    timed: impl FnOnce(&mut Tree<F, &'h HeapHost>, &mut [Ctx]) -> (Duration, Result<(), String>),
) -> Result<Duration, String> {
    let geo = *fmt.geometry();
    let mut tree = Tree::new(fmt.clone(), host).map_err(|e| format!("new tree: {e:?}"))?;
    let mut ctxs: Vec<Ctx> = (0..callers).map(|_| Ctx::new(fmt)).collect();
    let mut r = Ok(());
    for (i, ctx) in ctxs.iter_mut().enumerate() {
        let need = reserve_need(&geo, w, &part(w, i, callers));
        if let Err(e) = ctx.topup(host, need) {
            r = Err(format!("topup {need:?}: {e:?}"));
        }
    }
    let mut time = Duration::ZERO;
    if r.is_ok() {
        let before = host.outstanding_tables();
        let (t, done) = timed(&mut tree, &mut ctxs);
        time = t;
        let after = host.outstanding_tables();
        r = done.and_then(|()| {
            if after == before {
                Ok(())
            } else {
                Err(format!(
                    "the timed part called the host: {before} tables outstanding before, \
                     {after} after"
                ))
            }
        });
        if r.is_ok() {
            let x = tree.exclusive();
            r = workload::check_translations(
                &geo,
                &x.tree().stats(),
                |gpa| x.query(gpa),
                w,
                w.level,
                MAP_PERMS,
            );
        }
    }
    for ctx in &mut ctxs {
        ctx.free_all(host);
    }
    drop(tree);
    r.map(|()| time)
}
