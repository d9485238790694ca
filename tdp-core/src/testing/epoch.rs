//! An epoch-based grace period for [`HeapHost`]: the host's [`crate::SharedHost`] side.
//!
//! - A global epoch counter starts at 1 and is bumped by every retirement.
//! - A reader *pins* ([`crate::SharedHost::read_side`]): it loads the global epoch, stores it into a
//!   free reader slot (a fixed array of atomic words, 0 = free), then issues a `SeqCst` fence.
//!   Dropping its [`EpochGuard`] stores 0 back (release) and tries to reclaim.
//! - A retirer ([`crate::SharedHost::retire`]) issues a `SeqCst` fence, bumps the global epoch,
//!   remembering the value before the bump as the list's *retire epoch* `r`, queues `(r, list)`
//!   under a lock, and tries to reclaim.
//! - Reclaiming takes that lock, issues a `SeqCst` fence, loads every slot (acquire) and frees each
//!   queued list whose `r` is below every pinned epoch. A reader pinned at `e <= r` may have read
//!   its pointers before the tables were detached, so it holds the list back; a reader pinned at
//!   `e > r` loaded the global epoch after the bump, which the detachment happens before, so it
//!   can only see the tree without the tables.
//!
//! # Why no pinned reader can reach a freed table
//! Take a reader R (slot store `P`, fence `F_R`, then its loads of tree entries) and the reclaim
//! that frees a list L (it takes the queue lock after L's retirer released it, so the engine's
//! store `D` that detached L's tables happens before the reclaimer's fence `F_C`, which is followed
//! by its slot loads). `SeqCst` fences are totally ordered:
//! - if `F_C` precedes `F_R`, then R's tree loads come after `F_R` and must observe `D` (or a
//!   later value): R never reads a pointer into L, whatever its slot says;
//! - if `F_R` precedes `F_C`, the reclaimer's load of R's slot observes `P` or a later value of
//!   that slot. `P` itself (an epoch `e`) is either `<= r`, holding L back, or `> r`, in which
//!   case R loaded the global epoch after L's bump, which the detachment `D` happens before
//!   (release/acquire on the epoch), so R cannot see L either. A later value is R's unpin (0,
//!   release) or another reader's pin made with an acquire compare-exchange after that unpin:
//!   either way the reclaimer's acquire load synchronises with R's unpin, so all of R's reads of L
//!   happen before the free.
//!
//! This is the Dekker pattern (store; `SeqCst` fence; load on both sides), which is also what loom
//! models for `SeqCst` fences. The retirer's own fence, which follows `D` in program order and
//! precedes the reclaimer's slot loads through the lock, would serve as `F_C` just as well: either
//! fence alone is enough, and the loom model in this file fails only without both. The same
//! argument, with the roles of the slot and the queue counter swapped, makes an unpinning reader
//! and a concurrent retirer agree on who reclaims: at least one of them sees the other's store, so
//! a list is never left waiting for no reader (the loom model checks that too).

use std::boxed::Box;
use std::vec::Vec;

use crate::host::RetiredTables;
use crate::sync::{fence, AtomicU64, AtomicUsize, Mutex, Ordering};

use super::heap::{lock, HeapHost};

/// Number of reader slots: readers pinned at the same time (nested guards count separately).
/// A reader that finds every slot taken waits for one to be released.
const SLOTS: usize = if cfg!(loom) { 4 } else { 64 };

/// The value of a free slot; epochs start at 1.
const FREE: u64 = 0;

#[derive(Default)]
struct Queue {
    /// Retired lists and their retire epochs.
    lists: Vec<(u64, RetiredTables)>,
    /// Number of tables in `lists`.
    tables: usize,
}

/// The reclaimer a [`HeapHost`] holds.
pub(super) struct Epochs {
    global: AtomicU64,
    slots: Box<[AtomicU64]>,
    queue: Mutex<Queue>,
    /// `queue.tables`, readable without the lock (written under it): lets an unpinning reader
    /// skip the lock when nothing is queued.
    queued: AtomicUsize,
}

/// A pinned epoch (a read-side section of a [`HeapHost`]): while it lives, no table retired
/// after it was created is freed. Dropping it unpins and frees what no reader still holds back.
#[must_use = "a read-side section ends when its guard is dropped"]
pub struct EpochGuard<'a> {
    epochs: &'a Epochs,
    host: &'a HeapHost,
    slot: usize,
}

impl core::fmt::Debug for EpochGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EpochGuard")
            .field("slot", &self.slot)
            .field("epoch", &self.epoch())
            .finish()
    }
}

impl EpochGuard<'_> {
    /// The epoch this reader pinned.
    pub fn epoch(&self) -> u64 {
        self.epochs.slots[self.slot].load(Ordering::Relaxed)
    }
}

impl Drop for EpochGuard<'_> {
    fn drop(&mut self) {
        self.epochs.unpin(self.slot, self.host);
    }
}

/// Lets another thread run (loom's scheduler under loom).
fn backoff() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

impl Epochs {
    pub(super) fn new() -> Epochs {
        Epochs {
            global: AtomicU64::new(1),
            slots: core::iter::repeat_with(|| AtomicU64::new(FREE))
                .take(SLOTS)
                .collect(),
            queue: Mutex::new(Queue::default()),
            queued: AtomicUsize::new(0),
        }
    }

    /// Pins the current epoch (see the module docs).
    pub(super) fn pin<'a>(&'a self, host: &'a HeapHost) -> EpochGuard<'a> {
        loop {
            // Acquire: pairs with the retirer's bump, so that a reader that sees the bumped epoch
            // also sees the tree without the tables retired at the epoch before.
            let epoch = self.global.load(Ordering::Acquire);
            for (slot, word) in self.slots.iter().enumerate() {
                // Acquire on success: the previous holder's unpin (release) happens before this
                // pin, which chains every earlier reader of the slot into what a reclaimer that
                // reads our value synchronises with.
                if word
                    .compare_exchange(FREE, epoch, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    // The pin must be visible to every reclaimer that could free a table this
                    // reader is about to reach (the Dekker argument in the module docs).
                    fence(Ordering::SeqCst);
                    return EpochGuard {
                        epochs: self,
                        host,
                        slot,
                    };
                }
            }
            backoff();
        }
    }

    fn unpin(&self, slot: usize, host: &HeapHost) {
        // Release: everything this reader read happens before a reclaimer that sees the slot free.
        self.slots[slot].store(FREE, Ordering::Release);
        // Pairs with the fence in `reclaim`: either we see the retirer's `queued` or its reclaim
        // sees our slot free, so a list is never stranded behind a reader that has left.
        fence(Ordering::SeqCst);
        if self.queued.load(Ordering::Relaxed) != 0 {
            self.reclaim(host);
        }
    }

    /// Queues `tables` for freeing once every reader pinned now has unpinned.
    pub(super) fn retire(&self, host: &HeapHost, tables: RetiredTables) {
        if tables.is_empty() {
            // SAFETY: an empty list frees nothing; `free` only consumes it.
            unsafe { tables.free(host) };
            return;
        }
        // The retirer's half of the Dekker argument (module docs): the engine's detachment of the
        // tables precedes this fence, which precedes every reclaimer's slot loads.
        fence(Ordering::SeqCst);
        // Readers pinned at `epoch` or before may hold pointers into `tables`; readers that load
        // the bumped value (acquire) see them detached.
        let epoch = self.global.fetch_add(1, Ordering::AcqRel);
        {
            let mut q = lock(&self.queue);
            q.tables += tables.len();
            self.queued.store(q.tables, Ordering::Relaxed);
            q.lists.push((epoch, tables));
        }
        self.reclaim(host);
    }

    /// The oldest pinned epoch, or `u64::MAX` if no reader is pinned.
    fn oldest_pinned(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&e| e != FREE)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Frees every queued list that no pinned reader holds back.
    pub(super) fn reclaim(&self, host: &HeapHost) {
        let mut q = lock(&self.queue);
        if q.lists.is_empty() {
            return;
        }
        // The reclaimer's side of the Dekker argument (module docs): the lock orders every queued
        // list's detachment before this fence, and the slot loads come after it.
        fence(Ordering::SeqCst);
        let oldest = self.oldest_pinned();
        let mut i = 0;
        while i < q.lists.len() {
            if q.lists[i].0 < oldest {
                let (_, list) = q.lists.swap_remove(i);
                q.tables -= list.len();
                // SAFETY: the list came from this host's tree with its flush done (`retire`'s
                // contract); every reader pinned when it was retired pinned an epoch <= its retire
                // epoch and still holds its slot, and every pinned epoch is above it, so no reader
                // that could hold a pointer into it is pinned (module docs).
                unsafe { list.free(host) };
            } else {
                i += 1;
            }
        }
        self.queued.store(q.tables, Ordering::Relaxed);
    }

    /// Tables queued and not freed.
    pub(super) fn pending_tables(&self) -> usize {
        lock(&self.queue).tables
    }

    /// Frees everything queued, waiting for readers pinned before it was queued.
    pub(super) fn synchronize(&self, host: &HeapHost) {
        debug_assert!(
            self.oldest_pinned() == u64::MAX,
            "HeapHost::synchronize called while a reader is pinned (a guard is alive)"
        );
        loop {
            self.reclaim(host);
            if lock(&self.queue).lists.is_empty() {
                return;
            }
            backoff();
        }
    }

    /// Frees everything queued, at once. Only for the host's `Drop`: guards borrow the host, so
    /// none is alive.
    pub(super) fn free_all(&self, host: &HeapHost) {
        let lists = {
            let mut q = lock(&self.queue);
            q.tables = 0;
            self.queued.store(0, Ordering::Relaxed);
            core::mem::take(&mut q.lists)
        };
        for (_, list) in lists {
            // SAFETY: called from the host's `Drop`, so no guard (which borrows the host) is
            // alive and no reader can hold a pointer into the list; its flush was done before it
            // was retired.
            unsafe { list.free(host) };
        }
    }
}

/// Puts `tables` (allocated with `alloc_table(size)` and reachable from nothing) into one retired
/// list, the way the engine hands over the tables it detached (as level-0 tables of `size` bytes).
#[cfg(test)]
pub(super) fn retired_list(host: &HeapHost, size: usize, tables: &[u64]) -> RetiredTables {
    use crate::addr::{Hpa, Level};
    use crate::geometry::MAX_LEVELS;
    let mut detached = crate::pool::Detached::new();
    for &pa in tables {
        detached.push(host, Level::from_index(0), Hpa::new(pa));
    }
    let mut sizes = [0u32; MAX_LEVELS];
    sizes[0] = size as u32;
    detached.take(sizes)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::host::{Host, SharedHost};

    const BASE: u64 = 0x4000_0000;

    fn table(host: &HeapHost, fill: u64) -> u64 {
        let pa = host.alloc_table(4096).expect("window has room").raw();
        for i in 0..512 {
            assert!(host.write_phys(pa + i * 8, &fill.to_ne_bytes()));
        }
        pa
    }

    #[test]
    fn a_list_retired_while_a_reader_is_pinned_is_freed_only_when_it_unpins() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let t = table(&host, 0x1234);
        let guard = host.read_side();
        host.retire(retired_list(&host, 4096, &[t]));
        assert_eq!(host.pending_retired_tables(), 1);
        host.reclaim();
        assert_eq!(host.pending_retired_tables(), 1);
        assert_eq!(
            host.outstanding_tables(),
            1,
            "retired tables are outstanding"
        );
        assert_eq!(host.load_phys_u64(t), Some(0x1234), "still readable");
        drop(guard);
        assert_eq!(host.pending_retired_tables(), 0);
        assert_eq!(host.outstanding_tables(), 0);
        assert!(host.is_poisoned(t));
    }

    #[test]
    fn a_reader_pinned_after_the_retire_does_not_hold_it_back() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let t = table(&host, 1);
        let before = host.read_side();
        host.retire(retired_list(&host, 4096, &[t]));
        let after = host.read_side();
        assert!(after.epoch() > before.epoch());
        drop(before);
        assert_eq!(host.pending_retired_tables(), 0, "only `after` is pinned");
        assert_eq!(host.outstanding_tables(), 0);
        drop(after);
    }

    #[test]
    fn a_list_waits_for_every_reader_pinned_before_it() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let (a, b) = (table(&host, 1), table(&host, 2));
        let first = host.read_side();
        let second = host.read_side();
        host.retire(retired_list(&host, 4096, &[a, b]));
        drop(first);
        assert_eq!(host.pending_retired_tables(), 2);
        drop(second);
        assert_eq!(host.pending_retired_tables(), 0);
    }

    #[test]
    fn with_no_reader_pinned_a_list_is_freed_at_once() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let t = table(&host, 1);
        host.retire(retired_list(&host, 4096, &[t]));
        assert_eq!(host.pending_retired_tables(), 0);
        assert_eq!(host.outstanding_tables(), 0);
        host.retire(RetiredTables::empty());
    }

    #[test]
    fn freed_tables_are_poisoned_in_every_word() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let (a, b) = (table(&host, 7), table(&host, 8));
        let guard = host.read_side();
        host.retire(retired_list(&host, 4096, &[a, b]));
        assert!(!host.is_poisoned(a) && !host.is_poisoned(b + 4088));
        drop(guard);
        for pa in (a..a + 4096).chain(b..b + 4096).step_by(8) {
            assert!(host.is_poisoned(pa), "{pa:#x}");
            assert_eq!(host.load_phys_u64(pa), Some(HeapHost::POISON));
        }
        assert!(host.is_poisoned(a + 3), "the word containing the address");
    }

    #[test]
    fn synchronize_frees_everything_retired() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let t = table(&host, 1);
        let guard = host.read_side();
        host.retire(retired_list(&host, 4096, &[t]));
        // A guard forgotten keeps its slot pinned: only `synchronize`'s wait or the host's drop
        // would free the list then. Drop the guard instead and synchronise.
        drop(guard);
        host.synchronize();
        assert_eq!(host.pending_retired_tables(), 0);
        assert_eq!(host.outstanding_tables(), 0);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "reader is pinned")]
    fn synchronize_with_a_reader_pinned_panics_in_debug_builds() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let _guard = host.read_side();
        host.synchronize();
    }

    #[test]
    fn dropping_the_host_frees_lists_still_pending() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let t = table(&host, 1);
        let guard = host.read_side();
        host.retire(retired_list(&host, 4096, &[t]));
        // Leaves the slot pinned forever: the list can only be freed by the host's drop (a
        // RetiredTables dropped unfreed would trip its debug assertion).
        core::mem::forget(guard);
        assert_eq!(host.pending_retired_tables(), 1);
        drop(host);
    }

    #[test]
    fn a_pinned_reader_never_sees_a_freed_table() {
        use std::sync::atomic::{AtomicBool, AtomicU64 as StdU64, Ordering::Relaxed};
        use std::time::{Duration, Instant};

        // A root word points at the current child table; every word of a child holds
        // `child pa | generation << 40`. The retirer swaps in a new child and retires the old
        // one; readers follow the root pointer while pinned and check the child's words.
        let host = HeapHost::new(BASE, 8 << 20, 4096);
        let root = table(&host, 0);
        let generation = |gen: u64, pa: u64| pa | gen << 40;
        let first = table(&host, generation(1, 0));
        for i in 0..512 {
            host.write_phys(first + i * 8, &generation(1, first).to_ne_bytes());
        }
        host.write_phys(root, &first.to_ne_bytes());

        let stop = AtomicBool::new(false);
        let reads = StdU64::new(0);
        let retired = StdU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut n = 0u64;
                    while !stop.load(Relaxed) {
                        let _guard = host.read_side();
                        let child = host.load_phys_u64(root).unwrap();
                        let w0 = host.load_phys_u64(child).unwrap();
                        assert_ne!(w0, HeapHost::POISON, "read a freed table while pinned");
                        assert_eq!(w0 & ((1 << 40) - 1), child, "table reused while pinned");
                        for i in (8..4096).step_by(8 * 37) {
                            let w = host.load_phys_u64(child + i).unwrap();
                            assert_ne!(w, HeapHost::POISON, "read a freed table while pinned");
                            assert_eq!(w, w0, "table changed under a pinned reader");
                        }
                        n += 1;
                    }
                    reads.fetch_add(n, Relaxed);
                });
            }
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_millis(300);
                let mut gen = 2u64;
                let mut old = first;
                while Instant::now() < deadline {
                    let Some(new) = host.alloc_table(4096) else {
                        // Everything is waiting for slow readers: let them go.
                        host.reclaim();
                        std::thread::yield_now();
                        continue;
                    };
                    let new = new.raw();
                    for i in 0..512 {
                        host.write_phys(new + i * 8, &generation(gen, new).to_ne_bytes());
                    }
                    // Publish (release, after the fill) and detach the old child.
                    assert_eq!(
                        host.compare_exchange_phys_u64(root, old, new),
                        Some(Ok(old))
                    );
                    host.retire(retired_list(&host, 4096, &[old]));
                    old = new;
                    gen += 1;
                    retired.fetch_add(1, Relaxed);
                }
                stop.store(true, Relaxed);
            });
        });
        assert!(reads.load(Relaxed) > 0 && retired.load(Relaxed) > 0);
        host.synchronize();
        assert_eq!(host.pending_retired_tables(), 0);
        assert_eq!(host.outstanding_tables(), 2, "the root and the last child");
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::host::{Host, SharedHost};

    /// One reader follows a root pointer while pinned; one retirer swaps the child and retires
    /// the old one. In no interleaving does the reader see a freed (poisoned) word, and once both
    /// are done the list has been freed without anyone calling `reclaim`.
    #[test]
    fn a_pinned_reader_never_sees_a_freed_table() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let host = loom::sync::Arc::new(HeapHost::new(0x1000, 4096, 256));
            let root = host.alloc_table(256).unwrap().raw();
            let old = host.alloc_table(256).unwrap().raw();
            let new = host.alloc_table(256).unwrap().raw();
            host.write_phys(old, &1u64.to_ne_bytes());
            host.write_phys(new, &2u64.to_ne_bytes());
            host.write_phys(root, &old.to_ne_bytes());
            let reader = {
                let host = host.clone();
                loom::thread::spawn(move || {
                    let _guard = host.read_side();
                    let child = host.load_phys_u64(root).unwrap();
                    let w = host.load_phys_u64(child).unwrap();
                    assert_ne!(w, HeapHost::POISON, "read a freed table while pinned");
                })
            };
            assert_eq!(
                host.compare_exchange_phys_u64(root, old, new),
                Some(Ok(old))
            );
            host.retire(retired_list(&host, 256, &[old]));
            reader.join().unwrap();
            // Whoever came last (the retirer's reclaim or the reader's unpin) freed the list.
            assert_eq!(host.pending_retired_tables(), 0, "a list was stranded");
            host.synchronize();
            assert_eq!(host.outstanding_tables(), 2);
        });
    }
}
