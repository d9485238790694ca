//! Atomic access to table entries in memory, honouring the format's byte order.
//!
//! Entries live in memory that hardware walks and (with hardware A/D) writes, so Rust never holds
//! a `&mut u64` to them: every access is an atomic operation on an [`AtomicU64`]. Relaxed loads and
//! stores compile to plain moves; read-modify-writes are used only where the format says hardware
//! may set bits behind the engine (see `PteFormat::volatile_bits`). A byte swap is a permutation of
//! bits, so `fetch_and`/`compare_exchange` work on swapped operands unchanged.

use crate::sync::{AtomicU64, Ordering};
use core::ptr::NonNull;

use crate::format::ByteOrder;

#[inline(always)]
const fn to_mem(v: u64, order: ByteOrder) -> u64 {
    match order {
        ByteOrder::Little => v.to_le(),
        ByteOrder::Big => v.to_be(),
    }
}

#[inline(always)]
const fn from_mem(v: u64, order: ByteOrder) -> u64 {
    match order {
        ByteOrder::Little => u64::from_le(v),
        ByteOrder::Big => u64::from_be(v),
    }
}

/// A pointer to one entry in a table page.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct EntryPtr(NonNull<AtomicU64>);

impl EntryPtr {
    /// The entry at `index` of the table whose first byte is at `table`.
    ///
    /// # Safety
    /// `table` must point at a live table page (valid for reads and writes, 8-byte aligned) of at
    /// least `index + 1` entries, accessed only atomically while the returned pointer is used.
    #[inline(always)]
    pub(crate) unsafe fn new(table: NonNull<u8>, index: usize) -> EntryPtr {
        // SAFETY: the caller guarantees `table` holds at least `index + 1` 8-byte entries, so the
        // offset stays inside the same allocation and the result is non-null and aligned.
        EntryPtr(unsafe { table.cast::<AtomicU64>().add(index) })
    }

    /// The next entry of the same table.
    ///
    /// # Safety
    /// The entry after this one must be inside the same table page.
    #[inline(always)]
    pub(crate) unsafe fn next(self) -> EntryPtr {
        // SAFETY: the caller guarantees the next slot is inside the same table page.
        EntryPtr(unsafe { self.0.add(1) })
    }

    /// The entry `n` slots after this one.
    ///
    /// # Safety
    /// The slot must be inside the same table page.
    #[inline(always)]
    pub(crate) unsafe fn offset(self, n: usize) -> EntryPtr {
        // SAFETY: the caller guarantees the slot is inside the same table page.
        EntryPtr(unsafe { self.0.add(n) })
    }

    #[inline(always)]
    fn atomic(&self) -> &AtomicU64 {
        // SAFETY: `EntryPtr::new` required a live, aligned table page that is only accessed
        // atomically; the engine never frees a table while an iterator points into it.
        unsafe { self.0.as_ref() }
    }

    /// Reads the entry.
    #[inline(always)]
    pub(crate) fn load(&self, order: ByteOrder) -> u64 {
        from_mem(self.atomic().load(Ordering::Relaxed), order)
    }

    /// Reads the entry with acquire ordering: a table pointer read this way may be followed, and
    /// the table's contents written before it was linked are visible (shared mode; Rust has no
    /// `consume`, which the C implementations get from address dependencies).
    #[inline(always)]
    pub(crate) fn load_acquire(&self, order: ByteOrder) -> u64 {
        from_mem(self.atomic().load(Ordering::Acquire), order)
    }

    /// Reads the entry, with acquire ordering when other updaters may run (`shared`).
    #[inline(always)]
    pub(crate) fn load_for(&self, shared: bool, order: ByteOrder) -> u64 {
        if shared {
            self.load_acquire(order)
        } else {
            self.load(order)
        }
    }

    /// Atomically replaces the entry by `new`; returns the value it held.
    #[inline(always)]
    pub(crate) fn swap(&self, new: u64, order: ByteOrder) -> u64 {
        from_mem(
            self.atomic().swap(to_mem(new, order), Ordering::AcqRel),
            order,
        )
    }

    /// Atomically clears the bits of `mask` (CPU order); returns the value the entry held.
    #[inline(always)]
    #[allow(dead_code)] // the dirty-logging issue's clear-dirty uses it
    pub(crate) fn fetch_and_not(&self, mask: u64, order: ByteOrder) -> u64 {
        from_mem(
            self.atomic()
                .fetch_and(!to_mem(mask, order), Ordering::AcqRel),
            order,
        )
    }

    /// Atomically sets the bits of `mask` (CPU order); returns the value the entry held.
    #[inline(always)]
    #[allow(dead_code)] // aging and the fast fault (later issues) use it
    pub(crate) fn fetch_or(&self, mask: u64, order: ByteOrder) -> u64 {
        from_mem(
            self.atomic()
                .fetch_or(to_mem(mask, order), Ordering::AcqRel),
            order,
        )
    }

    /// Writes the entry with release ordering, so a table's contents are visible to any walker
    /// that sees the entry pointing at it.
    #[inline(always)]
    pub(crate) fn store(&self, v: u64, order: ByteOrder) {
        self.atomic().store(to_mem(v, order), Ordering::Release);
    }

    /// Writes the entry where no other agent can observe the order (fresh, unlinked tables).
    #[inline(always)]
    pub(crate) fn store_relaxed(&self, v: u64, order: ByteOrder) {
        self.atomic().store(to_mem(v, order), Ordering::Relaxed);
    }

    /// Writes the `n` entries from this one with `first + i * step` (wrapping), with plain
    /// stores the compiler may turn into a memset or vector stores (a fresh table is 512 scalar
    /// atomic stores otherwise: most of the cost of a call that adds one table).
    ///
    /// # Safety
    /// The `n` slots are inside one table page that no other agent reads or writes until the
    /// caller publishes it (an unlinked table the caller owns).
    #[inline(always)]
    pub(crate) unsafe fn fill_unlinked(self, n: usize, first: u64, step: u64, order: ByteOrder) {
        #[cfg(not(loom))]
        {
            // An `AtomicU64` has the size, alignment and bit validity of a `u64`, and the slots
            // sit in the `UnsafeCell`s of a table nothing else accesses meanwhile, so plain
            // writes through the raw pointer race with nothing.
            let p = self.0.as_ptr().cast::<u64>();
            if step == 0 && first == 0 {
                // Most formats' empty value: a memset (the platform's, wider than the
                // vectorised loop below).
                // SAFETY: `n` slots inside the table (caller), aligned; nothing else reads or
                // writes them meanwhile (above).
                unsafe { p.write_bytes(0, n) };
                return;
            }
            if step == 0 {
                // SAFETY: `n` slots inside the table (caller), aligned; nothing else reads or
                // writes them while this exclusive slice lives (above).
                unsafe { core::slice::from_raw_parts_mut(p, n) }.fill(to_mem(first, order));
                return;
            }
            // An induction variable, not `first + i * step`: a vectorised 64-bit multiply has no
            // SSE2 instruction and costs more than the scalar loop.
            let mut v = first;
            for i in 0..n {
                // SAFETY: `i < n`: inside the table (caller); no concurrent access (above).
                unsafe { p.add(i).write(to_mem(v, order)) };
                v = v.wrapping_add(step);
            }
        }
        #[cfg(loom)]
        for i in 0..n {
            let v = first.wrapping_add((i as u64).wrapping_mul(step));
            // SAFETY: `i < n`: inside the table (caller).
            unsafe { self.offset(i) }.store_relaxed(v, order);
        }
    }

    /// Compare-exchange: writes `new` if the entry still holds `old`; returns the value found.
    #[inline(always)]
    pub(crate) fn compare_exchange(
        &self,
        old: u64,
        new: u64,
        order: ByteOrder,
    ) -> Result<u64, u64> {
        match self.atomic().compare_exchange(
            to_mem(old, order),
            to_mem(new, order),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(v) => Ok(from_mem(v, order)),
            Err(v) => Err(from_mem(v, order)),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn big_endian_entries_are_stored_most_significant_byte_first() {
        let mut word = [0u64; 1];
        let table = NonNull::new(word.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `word` is a live, aligned one-entry table accessed only through this pointer.
        let e = unsafe { EntryPtr::new(table, 0) };
        e.store(0x8000_0000_0000_0001, ByteOrder::Big);
        assert_eq!(word[0].to_ne_bytes(), [0x80, 0, 0, 0, 0, 0, 0, 0x01]);
        assert_eq!(e.load(ByteOrder::Big), 0x8000_0000_0000_0001);
        assert_eq!(
            e.compare_exchange(0x8000_0000_0000_0001, 7, ByteOrder::Big),
            Ok(0x8000_0000_0000_0001)
        );
        assert_eq!(word[0].to_ne_bytes(), [0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(e.fetch_or(0x100, ByteOrder::Big), 7);
        assert_eq!(e.fetch_and_not(0x1, ByteOrder::Big), 0x107);
        assert_eq!(e.swap(0x8000_0000_0000_0000, ByteOrder::Big), 0x106);
        assert_eq!(word[0].to_ne_bytes(), [0x80, 0, 0, 0, 0, 0, 0, 0]);
    }
}
