//! A heap-backed host with a physical window.

use core::cell::RefCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::boxed::Box;
use std::vec::Vec;

use crate::addr::Hpa;
use crate::host::{Host, TableMeta, TlbFlush};

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
    fail_at: Option<u64>,
    events: Vec<HostEvent>,
    record: bool,
}

/// Table memory in a physical window `[base, base + size)` backed by the heap.
///
/// A full window makes `alloc_table` return `None`, like a real host out of memory. Freeing a
/// table that is not allocated panics: that is an engine bug, and tests should fail on it.
pub struct HeapHost {
    base: u64,
    size: u64,
    granule_shift: u32,
    mem: Box<[AtomicU64]>,
    metas: Box<[TableMeta]>,
    state: RefCell<State>,
}

impl HeapHost {
    /// A window of `size` bytes at physical `base`, with table metadata kept per `granule`
    /// bytes (the smallest table size of the format: 4096 for x86, 256 for Power radix 64K).
    ///
    /// # Panics
    /// If `base` is 0 (no table may sit at physical address 0), `base` or `size` is not a multiple
    /// of 64 KiB, or `granule` is not a power of two from 256 to 65536 (test set-up errors).
    pub fn new(base: u64, size: u64, granule: usize) -> HeapHost {
        assert!(base != 0 && base % 65536 == 0 && size % 65536 == 0 && size > 0);
        assert!(granule.is_power_of_two() && (256..=65536).contains(&granule));
        let words = (size / 8) as usize;
        let mem: Box<[AtomicU64]> = std::iter::repeat_with(|| AtomicU64::new(0))
            .take(words)
            .collect();
        let metas: Box<[TableMeta]> = std::iter::repeat_with(TableMeta::new)
            .take((size / granule as u64) as usize)
            .collect();
        HeapHost {
            base,
            size,
            granule_shift: granule.trailing_zeros(),
            mem,
            metas,
            state: RefCell::new(State {
                bump: base,
                record: true,
                sizes: std::vec![0; (size / granule as u64) as usize],
                ..State::default()
            }),
        }
    }

    /// The window's base.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Tables allocated and not freed.
    pub fn outstanding_tables(&self) -> usize {
        self.state.borrow().tables
    }

    /// Bytes of tables allocated and not freed.
    pub fn outstanding_bytes(&self) -> usize {
        self.state.borrow().bytes
    }

    /// Number of successful allocations so far.
    pub fn allocations(&self) -> u64 {
        self.state.borrow().allocs
    }

    /// Makes the `n`-th allocation from now (0 = the next one) fail, once.
    pub fn fail_nth_alloc(&self, n: u64) {
        let mut s = self.state.borrow_mut();
        s.fail_at = Some(s.allocs + n);
    }

    /// Cancels a pending failure; returns whether it had fired.
    pub fn clear_failure(&self) -> bool {
        self.state.borrow_mut().fail_at.take().is_none()
    }

    /// Whether to record events and poison freed tables (on by default; benchmarks turn it off,
    /// as a real host does neither).
    pub fn set_recording(&self, on: bool) {
        let mut s = self.state.borrow_mut();
        s.record = on;
        s.events.clear();
    }

    /// Takes the events recorded so far.
    pub fn take_events(&self) -> Vec<HostEvent> {
        core::mem::take(&mut self.state.borrow_mut().events)
    }

    /// Reads physical memory as a walker would. False outside the window.
    pub fn read_phys(&self, pa: u64, buf: &mut [u8]) -> bool {
        let Some(off) = self.offset(pa, buf.len()) else {
            return false;
        };
        for (i, b) in buf.iter_mut().enumerate() {
            let o = off + i as u64;
            let w = self.mem[(o / 8) as usize]
                .load(Ordering::Relaxed)
                .to_ne_bytes();
            *b = w[(o % 8) as usize];
        }
        true
    }

    /// Writes physical memory as a walker (hardware setting A/D) would. False outside the window.
    pub fn write_phys(&self, pa: u64, buf: &[u8]) -> bool {
        let Some(off) = self.offset(pa, buf.len()) else {
            return false;
        };
        for (i, b) in buf.iter().enumerate() {
            let o = off + i as u64;
            let word = &self.mem[(o / 8) as usize];
            let mut w = word.load(Ordering::Relaxed).to_ne_bytes();
            w[(o % 8) as usize] = *b;
            word.store(u64::from_ne_bytes(w), Ordering::Relaxed);
        }
        true
    }

    fn record(&self, e: HostEvent) {
        let mut s = self.state.borrow_mut();
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
// for (no hardware uses this memory).
unsafe impl Host for HeapHost {
    fn alloc_table(&self, size: usize) -> Option<Hpa> {
        let mut s = self.state.borrow_mut();
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
        let mut s = self.state.borrow_mut();
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
                w.store(0xdead_dead_dead_dead, Ordering::Relaxed);
            }
        }
        s.free[size.trailing_zeros() as usize - 8].push(pa.raw());
        if s.record {
            s.events.push(HostEvent::Free(pa, size));
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

    fn flush_tlb(&self, flush: TlbFlush) {
        self.record(HostEvent::Flush(flush));
    }

    fn clean_dcache(&self, hpa: Hpa, size: u64) {
        self.record(HostEvent::CleanDcache(hpa, size));
    }

    fn invalidate_icache(&self, hpa: Hpa, size: u64) {
        self.record(HostEvent::InvalidateIcache(hpa, size));
    }
}
