//! Shared-mode stress for Intel EPT (4 levels, accessed/dirty flags on): several updater threads
//! on one tree against a simulated vCPU whose walks are the independent EPT walker
//! (`tdp_walkers::ept`, written from the SDM) over a snapshot of memory that sets A/D by
//! compare-exchange. The driver and its checks are `tdp_core::testing::stress` (see its module
//! documentation); this file supplies the format and the walker.
//!
//! Below them, deterministic two-thread reproducers of what the stress run found: a host that
//! stops one updater at a chosen point inside a shared-mode call while another runs.

use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};

use gate::{At, Gate};
use tdp_arch_x86::{Ept, EptCaps, EptOptions};
use tdp_core::testing::stress::{
    shared_matches_exclusive, stress, Hardware, HwWalk, Snapshot, StressConfig,
};
use tdp_core::testing::HeapHost;
use tdp_core::{
    Attrs, Ctx, EntryKind, Gpa, GpaRange, Host, Hpa, Level, MapOptions, PendingFlush, Perms,
    Progress, PteFormat, SharedHost, Tree, Visit,
};
use tdp_walkers::{ept, Access, PhysMem};

const WINDOW_BASE: u64 = 0x7_4000_0000;
const MAXPHYADDR: u8 = 46;

/// A hardware walk's view of memory: reads from the snapshot, A/D writes by compare-exchange.
struct Mem<'a, 'h>(&'a Snapshot<'h>);

impl PhysMem for Mem<'_, '_> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        self.0.read(pa, buf)
    }
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        self.0.write(pa, buf)
    }
}

/// EPT with accessed/dirty flags (EPTP bit 6), 4-level walk.
struct EptAd;

const CAPS: ept::EptCaps = ept::EptCaps {
    maxphyaddr: MAXPHYADDR,
    execute_only: true,
    page_1g: true,
    mbec: false,
};

fn access_of(p: Perms) -> Access {
    if p == Perms::READ {
        Access::Read
    } else if p == Perms::WRITE {
        Access::Write
    } else if p == Perms::EXEC_SUPER {
        Access::ExecSupervisor
    } else {
        Access::ExecUser
    }
}

impl Hardware for EptAd {
    type Format = Ept;

    fn format(&self) -> Ept {
        Ept::new(
            EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1),
            EptOptions {
                levels: 4,
                accessed_dirty: true,
                maxphyaddr: MAXPHYADDR,
                mbec: false,
            },
        )
        .unwrap()
    }

    fn walk(
        &self,
        fmt: &Ept,
        mem: &Snapshot<'_>,
        root: Hpa,
        gpa: u64,
        access: Perms,
        update: bool,
    ) -> HwWalk {
        let eptp = fmt.eptp(root).unwrap();
        let a = access_of(access);
        let r = if update {
            ept::translate(&mut Mem(mem), eptp, &CAPS, gpa, a)
        } else {
            ept::peek(&Mem(mem), eptp, &CAPS, gpa, a)
        };
        match r {
            Ok(t) => HwWalk::Mapped {
                hpa: t.hpa,
                size: t.page_size,
            },
            Err(ept::EptFault::Violation(_)) => HwWalk::Fault,
            Err(e) => HwWalk::Broken(format!("{e}")),
        }
    }

    /// SDM "EPT Translation Mechanism": bits (MAXPHYADDR-1):12 of a non-leaf entry are the
    /// physical address of the next table.
    fn table_addr(&self, _fmt: &Ept, raw: u64, _level: Level) -> u64 {
        raw & ((1u64 << MAXPHYADDR) - 1) & !0xfff
    }
}

#[test]
fn ept_ad_three_shared_updaters_and_a_hardware_walker_keep_tlb_counts_and_memory_exact() {
    let cfg = StressConfig::new("ept-ad stress", 0x5eed_e970_0000_0001, WINDOW_BASE);
    let r = stress(&EptAd, &cfg);
    println!("{}: seed {:#x}: {r}", cfg.name, cfg.seed);
    assert!(r.ok > 0 && r.accesses > 0 && r.tlb.fills > 0);
    assert!(r.huge_hits > 0, "no access went through a 2 MiB leaf: {r}");
}

#[test]
fn ept_ad_shared_mode_without_contention_matches_exclusive_mode() {
    let mut cfg = StressConfig::new(
        "ept-ad shared = exclusive",
        0x5eed_e970_0000_0002,
        WINDOW_BASE,
    );
    cfg.ops_per_round = 500;
    cfg.rounds = 20;
    let r = shared_matches_exclusive(&EptAd, &cfg);
    println!("{}: seed {:#x}: {r}", cfg.name, cfg.seed);
    assert!(r.huge_made > 0, "no 2 MiB leaf was ever made: {r}");
}

// --- deterministic reproducers of what the stress run found ----------------------------------
//
// Each pauses one updater at a chosen point inside a shared-mode call (a host that blocks that
// thread in one of its callbacks) while another updater runs a whole call, and checks the
// outcome the shared-mode protocol promises.

mod gate {
    use std::ptr::NonNull;
    use std::sync::{Barrier, Mutex};
    use std::thread::ThreadId;

    use tdp_core::testing::HeapHost;
    use tdp_core::{Host, Hpa, RetiredTables, SharedHost, TableMeta, TlbFlush};

    /// Where to stop the chosen thread.
    #[derive(Copy, Clone, Debug, PartialEq, Eq)]
    pub enum At {
        /// In its allocation after this many more (0: the next one).
        Alloc(u32),
        /// When it steps into the table at this address (`phys_to_virt`).
        Step(Hpa),
        /// When it asks for the metadata of the table at this address (`meta`).
        Meta(Hpa),
    }

    /// A host over a [`HeapHost`] that stops one thread at one point until the test lets it go.
    pub struct Gate<'a> {
        pub heap: &'a HeapHost,
        at: Mutex<Option<(ThreadId, At)>>,
        stop: Barrier,
    }

    impl<'a> Gate<'a> {
        pub fn new(heap: &'a HeapHost) -> Self {
            Gate {
                heap,
                at: Mutex::new(None),
                stop: Barrier::new(2),
            }
        }

        /// Arms the gate for the calling thread.
        pub fn arm(&self, at: At) {
            *self.at.lock().unwrap() = Some((std::thread::current().id(), at));
        }

        /// The other side: waits until the armed thread is stopped.
        pub fn wait_stopped(&self) {
            self.stop.wait();
        }

        /// The other side: lets the stopped thread go on.
        pub fn release(&self) {
            self.stop.wait();
        }

        fn maybe_stop(&self, here: At) {
            let hit = {
                let mut at = self.at.lock().unwrap();
                let me = std::thread::current().id();
                match *at {
                    Some((t, a)) if t == me && a == here => {
                        *at = None;
                        true
                    }
                    Some((t, At::Alloc(n))) if t == me && n > 0 => {
                        if let At::Alloc(_) = here {
                            *at = Some((t, At::Alloc(n - 1)));
                        }
                        false
                    }
                    _ => false,
                }
            };
            if hit {
                self.stop.wait(); // stopped
                self.stop.wait(); // released
            }
        }
    }

    // SAFETY: every method forwards to the heap, which upholds the contract; stopping a thread
    // inside a callback changes no memory.
    unsafe impl Host for Gate<'_> {
        fn alloc_table(&self, size: usize) -> Option<Hpa> {
            self.maybe_stop(At::Alloc(0));
            self.heap.alloc_table(size)
        }
        unsafe fn free_table(&self, pa: Hpa, size: usize) {
            // SAFETY: the caller upholds `free_table`'s contract, for the heap as well.
            unsafe { self.heap.free_table(pa, size) }
        }
        fn phys_to_virt(&self, pa: Hpa) -> NonNull<u8> {
            self.maybe_stop(At::Step(pa));
            self.heap.phys_to_virt(pa)
        }
        fn meta(&self, pa: Hpa) -> NonNull<TableMeta> {
            self.maybe_stop(At::Meta(pa));
            self.heap.meta(pa)
        }
        fn flush_tlb(&self, flush: TlbFlush) {
            self.heap.flush_tlb(flush)
        }
    }

    // SAFETY: read-side sections and retirement are the heap's.
    unsafe impl SharedHost for Gate<'_> {
        type Guard<'g>
            = <HeapHost as SharedHost>::Guard<'g>
        where
            Self: 'g;
        fn read_side(&self) -> Self::Guard<'_> {
            self.heap.read_side()
        }
        fn retire(&self, tables: RetiredTables) {
            self.heap.retire(tables)
        }
    }
}

const GIB: u64 = 1 << 30;

fn r(gpa: u64, size: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), size).unwrap()
}

fn message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// What one updater's call returned (or the message it panicked with).
type Outcome = Result<Result<Progress, tdp_core::Error>, String>;

/// Runs `call` the way an updater does (own reserve and obligation, inside a read-side
/// section), catching a panic. The reserve is given back before returning.
fn updater<'g>(
    tree: &Tree<tdp_arch_x86::Ept, &'g Gate<'g>>,
    gate: &'g Gate<'g>,
    call: impl FnOnce(
        &tdp_core::SharedAccess<'_, tdp_arch_x86::Ept, &'g Gate<'g>>,
        &mut Ctx,
        &mut PendingFlush<&'g Gate<'g>>,
    ) -> Result<Progress, tdp_core::Error>,
) -> Outcome {
    let mut ctx = Ctx::new(tree.format());
    let mut f = PendingFlush::new(gate);
    let res = {
        let g = gate.read_side();
        let acc = tree.shared(&g);
        catch_unwind(AssertUnwindSafe(|| call(&acc, &mut ctx, &mut f))).map_err(message)
    };
    f.flush();
    ctx.free_all(gate);
    res
}

/// The table that the table entry at `level` mapping `gpa` points to.
fn table_under(
    tree: &Tree<tdp_arch_x86::Ept, &Gate<'_>>,
    gate: &Gate<'_>,
    gpa: u64,
    level: u8,
) -> Hpa {
    let g = gate.read_side();
    let mut t = None;
    tree.shared(&g)
        .walk(r(gpa, 0x1000), |e| {
            if e.visit == Visit::TablePre && e.kind == EntryKind::Table && e.level.get() == level {
                t = Some(tree.format().table_addr(e.raw, e.level));
            }
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    t.expect("a table there")
}

fn query(tree: &Tree<tdp_arch_x86::Ept, &Gate<'_>>, gate: &Gate<'_>, gpa: u64) -> Option<Hpa> {
    let g = gate.read_side();
    tree.shared(&g).query(Gpa::new(gpa)).unwrap().map(|m| m.hpa)
}

const DONE: Outcome = Ok(Ok(Progress::Done));

/// Found by the stress run (seed 0x5eede97000000001, round 7): a shared-mode call folds its
/// statistics delta into the tree's counters when it returns, so an updater that removes leaves
/// which a still-running call installed folds its negative delta first and the counter is below
/// zero for a moment — a valid interleaving, which `TreeStats::add`'s
/// `debug_assert!(.., "statistic below zero")` turns into a panic of the second updater.
///
/// A maps `[1 GiB - 4 KiB, 1 GiB + 4 KiB)`: the page below 1 GiB is installed with the tables
/// reserved for the first chunk, and A stops in the allocation for the second chunk; B unmaps
/// that page. B must not panic, and once both are done the counters are exact.
#[test]
fn a_shared_unmap_of_a_page_a_running_map_installed_does_not_panic() {
    let heap = HeapHost::new(WINDOW_BASE, 16 << 20, 4096);
    let gate = Gate::new(&heap);
    // Leaked, not torn down, if an assertion fails (a failed reproducer leaves it inconsistent).
    let tree = ManuallyDrop::new(Tree::new(EptAd.format(), &gate).unwrap());
    let rw = Attrs::normal(Perms::RW);
    let (a, b, window) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            // The first chunk reserves 3 tables (levels 2, 1, 0); the 4th allocation is the
            // second chunk's.
            gate.arm(At::Alloc(3));
            updater(&tree, &gate, |acc, ctx, f| {
                let (g, h) = (r(GIB - 0x1000, 0x2000), Hpa::new(0x1_0000_0000));
                acc.map(ctx, f, g, h, rw, MapOptions::default())
            })
        });
        gate.wait_stopped();
        let window = query(&tree, &gate, GIB - 0x1000).is_some();
        let b = updater(&tree, &gate, |acc, ctx, f| {
            acc.unmap(ctx, f, r(GIB - 0x1000, 0x1000))
        });
        gate.release();
        (a.join().unwrap(), b, window)
    });
    assert!(
        window,
        "the reproducer lost its window: A had not installed its first page yet"
    );
    assert_eq!(b, DONE, "B's unmap");
    assert_eq!(a, DONE, "A's map");
    assert_eq!(query(&tree, &gate, GIB - 0x1000), None);
    assert_eq!(query(&tree, &gate, GIB), Some(Hpa::new(0x1_0000_1000)));
    assert_eq!(tree.stats().leaves[0], 1);
    drop(ManuallyDrop::into_inner(tree));
}

/// Found by the stress run (with the assertion above out of the way; on arm64 at once, where
/// every block <-> table change of split and collapse freezes a level-1 entry for its
/// break-before-make): `Iter::restart_here`, which shared-mode walks call when they meet a
/// frozen entry, restarts at the frozen entry's first address — aligned down to its level, so
/// below the call's range when a level-1 (or higher) entry spanning the start of the range is
/// frozen. Map then reaches a level-0 entry outside its range and takes the branch for entries
/// that need a table (`level.index() - 1`: "attempt to subtract with overflow" at ops/map.rs,
/// an index out of bounds without overflow checks); unmap and protect split a level-0 leaf
/// outside the range the same way (`split_here`'s `debug_assert!(level.get() > 0 ..)`); split
/// splits leaves outside its range.
///
/// Set-up: a page at 0, so that the level-2 entry 0 points to a level-1 table. A maps
/// `[0x1000, 0x3000)` and stops right after reading that pointer; B unmaps the first GiB, which
/// takes the level-1 table out of the tree and freezes every entry of it (the table stays
/// allocated: A is in a read-side section). A goes on, meets the frozen level-1 entry for
/// `[0, 2 MiB)` and restarts. It must map its two pages and nothing else.
#[test]
fn a_shared_map_restarted_at_a_frozen_entry_stays_in_its_range() {
    let heap = HeapHost::new(WINDOW_BASE, 16 << 20, 4096);
    let gate = Gate::new(&heap);
    let tree = ManuallyDrop::new(Tree::new(EptAd.format(), &gate).unwrap());
    let rw = Attrs::normal(Perms::RW);
    let setup = updater(&tree, &gate, |acc, ctx, f| {
        acc.map(
            ctx,
            f,
            r(0, 0x1000),
            Hpa::new(0x1_0000_0000),
            rw,
            MapOptions::default(),
        )
    });
    assert_eq!(setup, DONE);
    let level1_table = table_under(&tree, &gate, 0, 2);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            gate.arm(At::Step(level1_table));
            // Two pages, so that the walk runs (a single page takes the lookup fast path).
            updater(&tree, &gate, |acc, ctx, f| {
                let (g, h) = (r(0x1000, 0x2000), Hpa::new(0x1_0000_1000));
                acc.map(ctx, f, g, h, rw, MapOptions::default())
            })
        });
        gate.wait_stopped();
        let b = updater(&tree, &gate, |acc, ctx, f| acc.unmap(ctx, f, r(0, GIB)));
        gate.release();
        (a.join().unwrap(), b)
    });
    assert_eq!(b, DONE, "B's unmap");
    assert_eq!(a, DONE, "A's map");
    assert_eq!(query(&tree, &gate, 0), None, "A mapped below its range");
    for page in [0x1000u64, 0x2000] {
        assert_eq!(
            query(&tree, &gate, page),
            Some(Hpa::new(0x1_0000_0000 + page))
        );
    }
    drop(ManuallyDrop::into_inner(tree));
}

/// The per-table counterpart of the first reproducer, also found by the stress run: shared-mode
/// writers change an entry first and the table's count after (`write_leaves` then `count_add`,
/// `zap_run` then `count_add`), so a zap of a leaf whose map has not counted it yet takes the
/// count below zero for a moment, and `count_add`'s `debug_assert!(.., "table count below zero")`
/// panics the zapping updater.
///
/// Set-up: a page mapped at 0 and unmapped again (in shared mode its level-0 table stays, with a
/// count of 0). A maps the page at 0x1000 (the one-page fast path) and stops when it asks for the
/// table's metadata to count the leaf it just wrote; B unmaps that page. B must not panic, and
/// once both are done the table's count is exact (0).
#[test]
fn a_shared_unmap_of_a_leaf_its_map_has_not_counted_yet_does_not_panic() {
    let heap = HeapHost::new(WINDOW_BASE, 16 << 20, 4096);
    let gate = Gate::new(&heap);
    let tree = ManuallyDrop::new(Tree::new(EptAd.format(), &gate).unwrap());
    let rw = Attrs::normal(Perms::RW);
    let setup = updater(&tree, &gate, |acc, ctx, f| {
        let _ = acc.map(
            ctx,
            f,
            r(0, 0x1000),
            Hpa::new(0x1_0000_0000),
            rw,
            MapOptions::default(),
        )?;
        acc.unmap(ctx, f, r(0, 0x1000))
    });
    assert_eq!(setup, DONE);
    let level0_table = table_under(&tree, &gate, 0, 1);
    let (a, b, window) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            gate.arm(At::Meta(level0_table));
            updater(&tree, &gate, |acc, ctx, f| {
                let (g, h) = (r(0x1000, 0x1000), Hpa::new(0x1_0000_1000));
                acc.map(ctx, f, g, h, rw, MapOptions::default())
            })
        });
        gate.wait_stopped();
        let window = query(&tree, &gate, 0x1000).is_some();
        let b = updater(&tree, &gate, |acc, ctx, f| {
            acc.unmap(ctx, f, r(0x1000, 0x1000))
        });
        gate.release();
        (a.join().unwrap(), b, window)
    });
    assert!(
        window,
        "the reproducer lost its window: A had not written its leaf yet"
    );
    assert_eq!(b, DONE, "B's unmap");
    assert_eq!(a, DONE, "A's map");
    // SAFETY: the level-0 table is linked in the tree and nothing runs any more, so its
    // metadata is valid.
    let count = unsafe { heap.meta(level0_table).as_ref() }.count();
    assert_eq!(count, 0, "the level-0 table's count");
    assert_eq!(tree.stats().leaves[0], 0);
    drop(ManuallyDrop::into_inner(tree));
}

/// Found while reading the shared map for the reproducers above (the stress run cannot see it:
/// it has no model of which call's mapping should survive): a shared-mode map that meets a
/// mapping undoes its work with a zap of `[start, conflict)` — everything there, not the leaves
/// it installed — so a mapping another updater made meanwhile in that span is removed too,
/// although that updater's map returned `Ok` and nothing unmapped it afterwards ("what this
/// call mapped is unmapped again", `SharedAccess::map`).
///
/// Set-up: a page at 0x1000 (so that a map of `[0, 0x2000)` meets it). A maps `[0, 0x2000)`
/// to backing X: it writes the leaf for page 0, and stops when it asks for the table's metadata
/// to count it. B unmaps page 0 and maps it to backing Y (both succeed). A goes on, meets page
/// 0x1000 and returns `AlreadyMapped` after its undo. B's mapping of page 0 must still be there.
#[test]
fn a_refused_shared_map_undoes_only_its_own_leaves() {
    let heap = HeapHost::new(WINDOW_BASE, 16 << 20, 4096);
    let gate = Gate::new(&heap);
    let tree = ManuallyDrop::new(Tree::new(EptAd.format(), &gate).unwrap());
    let rw = Attrs::normal(Perms::RW);
    let (x, y) = (0x1_0000_0000u64, 0x2_0000_0000u64);
    let setup = updater(&tree, &gate, |acc, ctx, f| {
        let h = Hpa::new(x + 0x1000);
        acc.map(ctx, f, r(0x1000, 0x1000), h, rw, MapOptions::default())
    });
    assert_eq!(setup, DONE);
    let level0_table = table_under(&tree, &gate, 0, 1);
    let (a, b, window) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            gate.arm(At::Meta(level0_table));
            updater(&tree, &gate, |acc, ctx, f| {
                acc.map(ctx, f, r(0, 0x2000), Hpa::new(x), rw, MapOptions::default())
            })
        });
        gate.wait_stopped();
        let window = query(&tree, &gate, 0) == Some(Hpa::new(x));
        let b = updater(&tree, &gate, |acc, ctx, f| {
            let _ = acc.unmap(ctx, f, r(0, 0x1000))?;
            acc.map(ctx, f, r(0, 0x1000), Hpa::new(y), rw, MapOptions::default())
        });
        gate.release();
        (a.join().unwrap(), b, window)
    });
    assert!(
        window,
        "the reproducer lost its window: A had not written page 0 yet"
    );
    assert_eq!(b, DONE, "B's unmap and map");
    assert_eq!(
        a,
        Ok(Err(tdp_core::Error::AlreadyMapped {
            gpa: Gpa::new(0x1000)
        })),
        "A's map"
    );
    assert_eq!(
        query(&tree, &gate, 0),
        Some(Hpa::new(y)),
        "B's mapping of page 0 was removed by A's undo"
    );
    drop(ManuallyDrop::into_inner(tree));
}
