//! A heap-backed host with a physical window.
//!
//! The host is `Send + Sync`: its bookkeeping sits behind a [`Mutex`] and its memory is an array
//! of atomic words, so the engine's shared-mode operations, simulated hardware walkers (through
//! [`HeapHost::load_phys_u64`] and [`HeapHost::compare_exchange_phys_u64`]) and the test itself
//! may use it from several threads at once. Under `--cfg loom` every atomic and lock is loom's.

use core::ptr::NonNull;
use std::boxed::Box;
use std::sync::Arc;
use std::vec::Vec;

use crate::addr::Hpa;
use crate::host::{Host, RetiredTables, SharedHost, TableMeta, TlbFlush};
use crate::sync::{AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};

use super::epoch::{EpochGuard, Epochs};
use super::shadow::ShadowTlb;

/// Something the host saw, in order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// A table was allocated.
    Alloc(Hpa, usize),
    /// A table was freed.
    Free(Hpa, usize),
    /// A TLB flush.
    Flush(TlbFlush),
    /// A data-cache clean+invalidate of a host range.
    CleanDcache(Hpa, u64),
    /// An instruction-cache invalidation of a host range.
    InvalidateIcache(Hpa, u64),
}

/// Size classes: 256 B (2^8) .. 1 MiB (2^20).
const CLASSES: usize = 13;

#[derive(Debug, Default)]
struct State {
    bump: u64,
    /// Freed tables by size class (log2(size) - 8), reused first: a warm pool.
    free: [Vec<u64>; CLASSES],
    /// Per granule of the window: log2 of the size of the table allocated there, or 0.
    sizes: Vec<u8>,
    tables: usize,
    bytes: usize,
    allocs: u64,
    /// Tables freed through [`Host::free_tables`] (one lock per list).
    list_frees: u64,
    fail_at: Option<u64>,
    events: Vec<HostEvent>,
    record: bool,
}

/// Table memory in a physical window `[base, base + size)` backed by the heap.
///
/// A full window makes `alloc_table` return `None`, like a real host out of memory. Freeing a
/// table that is not allocated panics: that is an engine bug, and tests should fail on it.
///
/// As a [`SharedHost`] it frees retired tables after an epoch-based grace period (see
/// [`HeapHost::pending_retired_tables`], [`HeapHost::reclaim`], [`HeapHost::synchronize`]).
/// Retired tables that are not freed yet still count as outstanding: a leak check is
/// `host.synchronize()` followed by a look at [`HeapHost::outstanding_tables`].
pub struct HeapHost {
    base: u64,
    size: u64,
    granule_shift: u32,
    mem: Box<[AtomicU64]>,
    metas: Box<[TableMeta]>,
    state: Mutex<State>,
    epochs: Epochs,
    tlbs: Mutex<Vec<Arc<ShadowTlb>>>,
    /// Mirrors of `State::record` and of `tlbs.len() != 0`, read without the locks on the
    /// per-call paths (cache maintenance and flush calls of benchmarks that record nothing).
    recording: AtomicU32,
    have_tlbs: AtomicU32,
}

/// Locks `m`, ignoring poisoning: a test that panicked while holding one of the host's locks
/// (a double free, say) must not turn every later use of the host, such as the destructors that
/// run while the panic unwinds, into a second panic.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `words` zeroed atomic words, allocated zeroed so that the pages of a large window that no
/// table touches are never faulted in (writing every word cost most of a model test's time).
#[cfg(not(loom))]
fn zeroed_words(words: usize) -> Box<[AtomicU64]> {
    use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};
    let layout = Layout::array::<AtomicU64>(words).expect("a window that fits the address space");
    assert!(layout.size() > 0);
    // SAFETY: the layout has a non-zero size (checked above).
    let ptr = unsafe { alloc_zeroed(layout) }.cast::<AtomicU64>();
    if ptr.is_null() {
        handle_alloc_error(layout);
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[AtomicU64; words]`
    // and is not aliased; all-zero bytes are a valid `AtomicU64` (it has the in-memory
    // representation of `u64`), so every element is initialised (to 0).
    unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(ptr, words)) }
}

/// Loom's atomics are not plain words: build them one by one.
#[cfg(loom)]
fn zeroed_words(words: usize) -> Box<[AtomicU64]> {
    std::iter::repeat_with(|| AtomicU64::new(0))
        .take(words)
        .collect()
}

impl HeapHost {
    /// The word freed tables are filled with while recording is on (see
    /// [`HeapHost::set_recording`]), so that a use after free shows up as garbage entries.
    pub const POISON: u64 = 0xdead_dead_dead_dead;

    /// A window of `size` bytes at physical `base`, with table metadata kept per `granule`
    /// bytes (the smallest table size of the format: 4096 for x86, 256 for Power radix 64K).
    ///
    /// # Panics
    /// If `base` is 0 (no table may sit at physical address 0), `base` or `size` is not a
    /// multiple of 4 KiB and of `granule`, `size` is 0, `base + size` overflows, or `granule` is
    /// not a power of two from 256 to 65536 (test set-up errors).
    pub fn new(base: u64, size: u64, granule: usize) -> HeapHost {
        assert!(granule.is_power_of_two() && (256..=65536).contains(&granule));
        let align = (granule as u64).max(4096);
        assert!(base != 0 && base % align == 0 && size % align == 0 && size > 0);
        assert!(base.checked_add(size).is_some());
        let mem = zeroed_words((size / 8) as usize);
        let metas: Box<[TableMeta]> = std::iter::repeat_with(TableMeta::new)
            .take((size / granule as u64) as usize)
            .collect();
        HeapHost {
            base,
            size,
            granule_shift: granule.trailing_zeros(),
            mem,
            metas,
            state: Mutex::new(State {
                bump: base,
                record: true,
                sizes: std::vec![0; (size / granule as u64) as usize],
                ..State::default()
            }),
            epochs: Epochs::new(),
            tlbs: Mutex::new(Vec::new()),
            recording: AtomicU32::new(1),
            have_tlbs: AtomicU32::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The window's base.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Tables allocated and not freed (retired tables waiting for their grace period included).
    pub fn outstanding_tables(&self) -> usize {
        self.state().tables
    }

    /// Bytes of tables allocated and not freed (retired tables waiting for their grace period
    /// included).
    pub fn outstanding_bytes(&self) -> usize {
        self.state().bytes
    }

    /// Number of successful allocations so far.
    pub fn allocations(&self) -> u64 {
        self.state().allocs
    }

    /// Tables freed so far through [`Host::free_tables`] (a list at once) rather than
    /// [`Host::free_table`].
    pub fn list_frees(&self) -> u64 {
        self.state().list_frees
    }

    /// Frees one table with the state locked: the accounting, the double-free check, the poison
    /// and the event of [`Host::free_table`].
    fn free_locked(&self, s: &mut State, pa: Hpa, size: usize) {
        let slot = pa
            .raw()
            .checked_sub(self.base)
            .map(|off| (off >> self.granule_shift) as usize)
            .filter(|&slot| slot < s.sizes.len());
        let had = slot.map(|slot| core::mem::take(&mut s.sizes[slot]));
        assert_eq!(
            had,
            Some(size.trailing_zeros() as u8),
            "free of {pa:?} ({size} bytes) that is not allocated"
        );
        s.tables -= 1;
        s.bytes -= size;
        // Poison the page so a use after free shows up as garbage entries.
        if s.record {
            let off = (pa.raw() - self.base) / 8;
            for w in &self.mem[off as usize..off as usize + size / 8] {
                w.store(Self::POISON, Ordering::Relaxed);
            }
        }
        s.free[size.trailing_zeros() as usize - 8].push(pa.raw());
        if s.record {
            s.events.push(HostEvent::Free(pa, size));
        }
    }

    /// Makes the `n`-th allocation from now (0 = the next one) fail, once.
    pub fn fail_nth_alloc(&self, n: u64) {
        let mut s = self.state();
        s.fail_at = Some(s.allocs + n);
    }

    /// Cancels a pending failure; returns whether it had fired.
    pub fn clear_failure(&self) -> bool {
        self.state().fail_at.take().is_none()
    }

    /// Whether to record events and poison freed tables (on by default; benchmarks turn it off,
    /// as a real host does neither).
    pub fn set_recording(&self, on: bool) {
        let mut s = self.state();
        s.record = on;
        s.events.clear();
        self.recording.store(u32::from(on), Ordering::Relaxed);
    }

    /// Takes the events recorded so far.
    pub fn take_events(&self) -> Vec<HostEvent> {
        core::mem::take(&mut self.state().events)
    }

    /// The word of the window at `index` (a word index from the window's base).
    fn word(&self, index: u64) -> &AtomicU64 {
        &self.mem[index as usize]
    }

    /// Reads physical memory as a walker would. False outside the window.
    ///
    /// Each 8-byte word the range touches is loaded once, atomically, so an aligned 8-byte read
    /// never tears.
    pub fn read_phys(&self, pa: u64, buf: &mut [u8]) -> bool {
        let Some(off) = self.offset(pa, buf.len()) else {
            return false;
        };
        let mut done = 0;
        while done < buf.len() {
            let o = off + done as u64;
            let in_word = (o % 8) as usize;
            let n = (8 - in_word).min(buf.len() - done);
            let w = self.word(o / 8).load(Ordering::Acquire).to_ne_bytes();
            buf[done..done + n].copy_from_slice(&w[in_word..in_word + n]);
            done += n;
        }
        true
    }

    /// Writes physical memory as a walker (hardware setting A/D) would. False outside the window.
    ///
    /// A whole aligned 8-byte word is written with a single atomic store; a partial word is
    /// merged in with a compare-exchange loop, so that concurrent writers of the other bytes of
    /// that word are never undone. A simulated walker that sets bits in an entry the engine may
    /// be changing must not use this (a read-modify-write through `read_phys` and `write_phys`
    /// can undo the engine's update): it uses [`HeapHost::compare_exchange_phys_u64`].
    pub fn write_phys(&self, pa: u64, buf: &[u8]) -> bool {
        let Some(off) = self.offset(pa, buf.len()) else {
            return false;
        };
        let mut done = 0;
        while done < buf.len() {
            let o = off + done as u64;
            let in_word = (o % 8) as usize;
            let n = (8 - in_word).min(buf.len() - done);
            let word = self.word(o / 8);
            let bytes = &buf[done..done + n];
            if n == 8 {
                let mut w = [0u8; 8];
                w.copy_from_slice(bytes);
                word.store(u64::from_ne_bytes(w), Ordering::Release);
            } else {
                let mut cur = word.load(Ordering::Relaxed);
                loop {
                    let mut w = cur.to_ne_bytes();
                    w[in_word..in_word + n].copy_from_slice(bytes);
                    match word.compare_exchange_weak(
                        cur,
                        u64::from_ne_bytes(w),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break,
                        Err(now) => cur = now,
                    }
                }
            }
            done += n;
        }
        true
    }

    /// The index of the aligned word at `pa`, or `None` if `pa` is unaligned or outside the
    /// window.
    fn aligned_word(&self, pa: u64) -> Option<u64> {
        (pa % 8 == 0).then_some(())?;
        Some(self.offset(pa, 8)? / 8)
    }

    /// Atomically loads the aligned 8-byte word at `pa` (acquire), as a hardware walker reads
    /// an entry: the raw native-endian word as stored in memory (the caller applies the format's
    /// byte order). `None` if `pa` is unaligned or outside the window.
    pub fn load_phys_u64(&self, pa: u64) -> Option<u64> {
        Some(self.word(self.aligned_word(pa)?).load(Ordering::Acquire))
    }

    /// Atomically replaces the aligned 8-byte word at `pa` with `new` if it still holds `old`
    /// (raw native-endian words, as [`HeapHost::load_phys_u64`] returns them), as a hardware
    /// walker sets accessed/dirty bits: `Ok(old)` on success, `Err(current)` if the word had
    /// changed. `None` if `pa` is unaligned or outside the window.
    pub fn compare_exchange_phys_u64(
        &self,
        pa: u64,
        old: u64,
        new: u64,
    ) -> Option<Result<u64, u64>> {
        let word = self.word(self.aligned_word(pa)?);
        Some(word.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire))
    }

    /// Whether the aligned 8-byte word containing `pa` holds [`HeapHost::POISON`] (false outside
    /// the window). Freed tables are poisoned only while recording is on.
    pub fn is_poisoned(&self, pa: u64) -> bool {
        self.load_phys_u64(pa & !7) == Some(Self::POISON)
    }

    /// Forwards every TLB flush from now on to `tlb` as well (see [`ShadowTlb::invalidate`]).
    /// Several TLBs may be attached, one per simulated vCPU.
    pub fn attach_shadow_tlb(&self, tlb: Arc<ShadowTlb>) {
        lock(&self.tlbs).push(tlb);
        self.have_tlbs.store(1, Ordering::Release);
    }

    /// Number of retired tables whose grace period has not been seen to end yet (retired with
    /// [`SharedHost::retire`], not freed).
    pub fn pending_retired_tables(&self) -> usize {
        self.epochs.pending_tables()
    }

    /// Frees now every retired list whose grace period has ended (no reader that was pinned
    /// when it was retired is still pinned). Guards and `retire` do this on their own; this is
    /// for tests that want it at a chosen point.
    pub fn reclaim(&self) {
        self.epochs.reclaim(self);
    }

    /// Frees every retired table, waiting for readers pinned before their retirement to unpin
    /// (a test helper, like `synchronize_rcu` + `rcu_barrier`). Call it with no guard held by
    /// the calling thread: that would wait forever, so debug builds panic if any reader is pinned
    /// when it is called.
    ///
    /// # Panics
    /// In debug builds, if a reader is pinned when it is called.
    pub fn synchronize(&self) {
        self.epochs.synchronize(self);
    }

    /// Records `e` if recording is on (the check is inline; the event is built and pushed only
    /// then, so benchmarks that record nothing pay one load per call).
    #[inline(always)]
    fn record(&self, e: HostEvent) {
        if self.recording.load(Ordering::Relaxed) != 0 {
            self.push_event(e);
        }
    }

    /// Invalidates every attached shadow TLB for `flush`.
    #[inline(never)]
    fn invalidate_tlbs(&self, flush: &TlbFlush) {
        // Held while invalidating, so that a flush returns only once every attached TLB is done.
        for tlb in lock(&self.tlbs).iter() {
            tlb.invalidate(flush);
        }
    }

    #[inline(never)]
    fn push_event(&self, e: HostEvent) {
        let mut s = self.state();
        if s.record {
            s.events.push(e);
        }
    }

    fn offset(&self, pa: u64, len: usize) -> Option<u64> {
        let off = pa.checked_sub(self.base)?;
        (off.checked_add(len as u64)? <= self.size).then_some(off)
    }

    /// A copy of the window, for an emulator or a debugger.
    pub fn image(&self, root: Hpa) -> TableImage {
        let mut bytes = Vec::with_capacity(self.size as usize);
        for w in self.mem.iter() {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        TableImage {
            base: self.base,
            root: root.raw(),
            bytes,
        }
    }
}

/// A flat image of a host's physical window and the root table's address in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableImage {
    /// Physical address of the first byte.
    pub base: u64,
    /// Physical address of the root table.
    pub root: u64,
    /// The window's bytes, in the byte order hardware sees them.
    pub bytes: Vec<u8>,
}

impl TableImage {
    /// Writes `<stem>.bin` (the window) and `<stem>.txt` (`base=0x… root=0x… size=0x…`), so that
    /// e.g. QEMU can load the binary with `-device loader,file=<stem>.bin,addr=<base>` and a
    /// debugger can walk from the root.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn write(&self, stem: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(stem.with_extension("bin"), &self.bytes)?;
        std::fs::write(
            stem.with_extension("txt"),
            std::format!(
                "base={:#x} root={:#x} size={:#x}\n",
                self.base,
                self.root,
                self.bytes.len()
            ),
        )
    }

    /// Reads a little- or big-endian 8-byte word at physical `pa`.
    pub fn word(&self, pa: u64, big_endian: bool) -> Option<u64> {
        let off = usize::try_from(pa.checked_sub(self.base)?).ok()?;
        let b: [u8; 8] = self.bytes.get(off..off + 8)?.try_into().ok()?;
        Some(if big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }
}

// SAFETY: tables are handed out from disjoint, size-aligned ranges of the window (bump allocation
// aligned to the size, or reuse of a freed table of the same size) and tracked in `outstanding`
// until freed; `phys_to_virt` maps into `mem`, which lives as long as the host and is only accessed
// through atomics; each table's metadata is the `metas` slot of its first granule, used by no other
// allocated table because tables are at least one granule apart; `flush_tlb` has nothing to wait
// for (no hardware uses this memory) beyond the attached shadow TLBs, which it invalidates before
// it returns.
unsafe impl Host for HeapHost {
    fn alloc_table(&self, size: usize) -> Option<Hpa> {
        let mut s = self.state();
        if s.fail_at == Some(s.allocs) {
            s.fail_at = None;
            return None;
        }
        if !size.is_power_of_two() || size < 1 << self.granule_shift || size > 1 << 20 {
            return None;
        }
        let class = size.trailing_zeros() as usize - 8;
        let pa = match s.free[class].pop() {
            Some(pa) => pa,
            None => {
                let pa = s.bump.next_multiple_of(size as u64);
                if pa + size as u64 > self.base + self.size {
                    return None;
                }
                s.bump = pa + size as u64;
                pa
            }
        };
        s.allocs += 1;
        s.tables += 1;
        s.bytes += size;
        let slot = ((pa - self.base) >> self.granule_shift) as usize;
        s.sizes[slot] = size.trailing_zeros() as u8;
        if s.record {
            s.events.push(HostEvent::Alloc(Hpa::new(pa), size));
        }
        let m = &self.metas[slot];
        m.count.store(0, Ordering::Relaxed);
        m.link.store(0, Ordering::Relaxed);
        m.flags.store(0, Ordering::Relaxed);
        Some(Hpa::new(pa))
    }

    unsafe fn free_table(&self, pa: Hpa, size: usize) {
        let mut s = self.state();
        self.free_locked(&mut s, pa, size);
    }

    unsafe fn free_tables(&self, tables: RetiredTables) {
        // One lock for the list; each table is checked, poisoned and recorded as `free_table`
        // does, in list order. The drain reads a table's link before yielding it, so poisoning
        // (or reusing) the table at once is fine.
        let mut s = self.state();
        for (pa, size) in tables.drain(self) {
            self.free_locked(&mut s, pa, size);
            s.list_frees += 1;
        }
    }

    #[inline]
    fn phys_to_virt(&self, pa: Hpa) -> NonNull<u8> {
        let word = ((pa.raw() - self.base) / 8) as usize;
        assert!(word < self.mem.len(), "{pa:?} is outside the window");
        // Derived from the whole slice, so the pointer may cover the whole table.
        let ptr = self.mem.as_ptr().wrapping_add(word).cast_mut().cast::<u8>();
        NonNull::new(ptr).expect("slice pointers are non-null")
    }

    #[inline]
    fn meta(&self, pa: Hpa) -> NonNull<TableMeta> {
        NonNull::from(&self.metas[((pa.raw() - self.base) >> self.granule_shift) as usize])
    }

    #[inline]
    fn flush_tlb(&self, flush: TlbFlush) {
        self.record(HostEvent::Flush(flush));
        if self.have_tlbs.load(Ordering::Acquire) != 0 {
            self.invalidate_tlbs(&flush);
        }
    }

    fn clean_dcache(&self, hpa: Hpa, size: u64) {
        self.record(HostEvent::CleanDcache(hpa, size));
    }

    fn invalidate_icache(&self, hpa: Hpa, size: u64) {
        self.record(HostEvent::InvalidateIcache(hpa, size));
    }
}

// SAFETY: a list handed to `retire` is freed only by `Epochs::reclaim` (which `synchronize`
// loops on) once no reader slot holds an epoch at or before the list's retire epoch. A guard whose
// pin happens before `retire` pinned such an epoch (the global epoch only grows, and `retire`
// bumps it after the pin read it) and keeps it in its slot until it is dropped; a guard pinned
// concurrently is either seen the same way or, by the `SeqCst` fences, sees the tables already
// detached and cannot reach them (the argument is in testing/epoch.rs). The only other free is in
// `Drop`, when no guard, which borrows the host, can be alive.
unsafe impl SharedHost for HeapHost {
    type Guard<'a> = EpochGuard<'a>;

    fn read_side(&self) -> EpochGuard<'_> {
        self.epochs.pin(self)
    }

    fn retire(&self, tables: RetiredTables) {
        self.epochs.retire(self, tables);
    }
}

impl Drop for HeapHost {
    fn drop(&mut self) {
        // Guards borrow the host, so none is alive: every retired list is past its grace period.
        self.epochs.free_all(self);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const BASE: u64 = 0x10_0000;

    #[test]
    fn heap_host_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<HeapHost>();
    }

    #[test]
    fn a_window_may_be_as_small_as_4_kib() {
        let host = HeapHost::new(0x1000, 4096, 256);
        let tables: Vec<_> = (0..16).map_while(|_| host.alloc_table(256)).collect();
        assert_eq!(tables.len(), 16);
        assert_eq!(host.alloc_table(256), None, "the window is full");
        for pa in tables {
            // SAFETY: `pa` came from `alloc_table(256)` and is in no tree.
            unsafe { host.free_table(pa, 256) };
        }
        assert_eq!(host.outstanding_bytes(), 0);
    }

    #[test]
    fn word_accessors_take_aligned_words_inside_the_window_only() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let end = BASE + (64 << 10);
        assert_eq!(host.load_phys_u64(BASE), Some(0));
        assert_eq!(host.load_phys_u64(end - 8), Some(0));
        assert_eq!(host.load_phys_u64(BASE + 4), None, "unaligned");
        assert_eq!(host.load_phys_u64(end), None, "past the end");
        assert_eq!(host.load_phys_u64(BASE - 8), None, "before the base");
        assert_eq!(host.compare_exchange_phys_u64(end, 0, 1), None);
        assert_eq!(host.compare_exchange_phys_u64(BASE + 1, 0, 1), None);
    }

    #[test]
    fn compare_exchange_sets_a_word_only_if_it_still_holds_the_old_value() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let pa = BASE + 0x100;
        assert!(host.write_phys(pa, &0x1111u64.to_ne_bytes()));
        assert_eq!(
            host.compare_exchange_phys_u64(pa, 0x1111, 0x1131),
            Some(Ok(0x1111))
        );
        assert_eq!(
            host.compare_exchange_phys_u64(pa, 0x1111, 0x2222),
            Some(Err(0x1131))
        );
        let mut b = [0; 8];
        assert!(host.read_phys(pa, &mut b));
        assert_eq!(u64::from_ne_bytes(b), 0x1131);
    }

    #[test]
    fn a_partial_word_write_keeps_the_other_bytes() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let pa = BASE + 0x200;
        assert!(host.write_phys(pa, &u64::MAX.to_ne_bytes()));
        assert!(host.write_phys(pa + 8, &u64::MAX.to_ne_bytes()));
        // Bytes 6..10: the end of one word and the start of the next.
        assert!(host.write_phys(pa + 6, &[0, 0, 0, 0]));
        let mut b = [0xaa; 16];
        assert!(host.read_phys(pa, &mut b));
        assert_eq!(
            b,
            [!0, !0, !0, !0, !0, !0, 0, 0, 0, 0, !0, !0, !0, !0, !0, !0]
        );
        let mut odd = [0; 3];
        assert!(host.read_phys(pa + 5, &mut odd));
        assert_eq!(odd, [!0, 0, 0]);
        assert!(
            !host.write_phys(BASE + (64 << 10) - 2, &[0; 4]),
            "crosses the end"
        );
    }

    #[test]
    fn freed_tables_are_poisoned_only_while_recording() {
        let host = HeapHost::new(BASE, 64 << 10, 4096);
        let a = host.alloc_table(4096).unwrap();
        // SAFETY: `a` came from `alloc_table(4096)` and is in no tree.
        unsafe { host.free_table(a, 4096) };
        assert!(host.is_poisoned(a.raw()) && host.is_poisoned(a.raw() + 4095));
        assert!(!host.is_poisoned(a.raw() + 4096), "only the table");
        host.set_recording(false);
        let b = host.alloc_table(4096).unwrap();
        assert_eq!(b, a, "the freed table is reused");
        assert!(host.write_phys(b.raw(), &0u64.to_ne_bytes()));
        // SAFETY: as above.
        unsafe { host.free_table(b, 4096) };
        assert!(!host.is_poisoned(b.raw()));
    }
}
