//! The floor: raw loops over as many entry words as a workload has leaves, each doing the least
//! memory work an operation needs, so that every result is also a ratio to what the memory system
//! allows on the machine that ran it.
//!
//! | operation | floor |
//! |---|---|
//! | map (range or per leaf), split | [`store`]: one plain store per entry |
//! | query, collapse | [`load`]: one plain load per entry |
//! | write-protect | [`and_not`]: a plain read-modify-write (the workload presets A/D, so no entry has bits hardware may set meanwhile); [`atomic_and_not`], a locked one, is measured for reference |
//! | unmap (range or per leaf), teardown | [`zero`]: clearing the bytes of the tree's tables |
//!
//! The buffers are allocated and touched once, so the loops run on warm memory, like the engine
//! on its warm table pool.

use core::sync::atomic::{AtomicU64, Ordering};

/// A buffer of entry words for the floor loops.
pub struct Words {
    plain: Box<[u64]>,
    atomic: Box<[AtomicU64]>,
    bytes: Box<[u64]>,
}

impl Words {
    /// `words` entry words, and `zero_bytes` bytes of table memory for [`zero`].
    pub fn new(words: usize, zero_bytes: usize) -> Words {
        let mut w = Words {
            plain: vec![0u64; words].into_boxed_slice(),
            atomic: (0..words).map(|_| AtomicU64::new(0)).collect(),
            bytes: vec![0u64; zero_bytes.div_ceil(8)].into_boxed_slice(),
        };
        store(&mut w.plain, 1);
        w.bytes.fill(1);
        w
    }

    /// The plain words.
    pub fn plain(&mut self) -> &mut [u64] {
        &mut self.plain
    }

    /// The same number of atomic words.
    pub fn atomic(&self) -> &[AtomicU64] {
        &self.atomic
    }

    /// The table bytes, as words.
    pub fn table_bytes(&mut self) -> &mut [u64] {
        &mut self.bytes
    }
}

/// One plain store per entry: a leaf value for consecutive 4 KiB frames.
#[inline(never)]
pub fn store(words: &mut [u64], base: u64) {
    for (i, w) in words.iter_mut().enumerate() {
        *w = base | (i as u64) << 12;
    }
}

/// One plain load per entry.
#[inline(never)]
pub fn load(words: &[u64]) -> u64 {
    words.iter().fold(0, |acc, &w| acc ^ w)
}

/// One plain read-modify-write per entry, clearing `bits`.
#[inline(never)]
pub fn and_not(words: &mut [u64], bits: u64) {
    for w in words {
        *w &= !bits;
    }
}

/// One locked read-modify-write per entry (`fetch_and`), clearing `bits`.
#[inline(never)]
pub fn atomic_and_not(words: &[AtomicU64], bits: u64) {
    for w in words {
        w.fetch_and(!bits, Ordering::Relaxed);
    }
}

/// Clears every byte of the table memory.
#[inline(never)]
pub fn zero(words: &mut [u64]) {
    words.fill(0);
}
