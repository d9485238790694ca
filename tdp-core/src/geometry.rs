//! Table geometry: levels, the shift and index width of each level, which levels may hold a leaf,
//! and the input and output address widths.
//!
//! Geometry is a value, chosen at run time (an arm64 VM's IPA size, a RISC-V hgatp mode, an EPT walk
//! length), not a type per combination. Each level's table has `1 << bits` entries of 8 bytes, so a
//! table is 256 B (Power radix 64K leaf tables, 5 bits) to 64 KiB (a Power radix root, 13 bits); a
//! root may be up to 1 MiB (16 concatenated arm64 64K tables, 17 bits). Every table is aligned to
//! its own size.

use crate::addr::Level;
use crate::error::Error;

/// The largest number of levels any supported architecture uses (x86 5-level, RISC-V Sv57x4).
pub const MAX_LEVELS: usize = 5;

/// Size in bytes of one table entry on every supported architecture.
pub const ENTRY_SIZE: usize = 8;

/// Per-level arrays have this many slots (a power of two above [`MAX_LEVELS`]), so that a level
/// index masked with `SLOTS - 1` needs no bounds check on the hot paths.
const SLOTS: usize = 8;

/// The array slot of `level` (always in bounds; a [`Level`] is below [`MAX_LEVELS`]).
#[inline(always)]
const fn slot(level: Level) -> usize {
    level.index() & (SLOTS - 1)
}

/// Geometry of a table tree.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    levels: u8,
    shift: [u8; SLOTS],
    bits: [u8; SLOTS],
    /// `(1 << bits) - 1` per level, so an index is one shift and one and.
    index_mask: [u32; SLOTS],
    leaf_mask: u8,
    ia_bits: u8,
    oa_bits: u8,
    /// 4 KiB pages and 9 index bits at every level below the root (x86, arm64 4K, RISC-V,
    /// LoongArch's default): walks may compute those indices from constants.
    uniform_4k: bool,
}

impl Geometry {
    /// A geometry from the index width of each level, leaf level first.
    ///
    /// `page_shift` is the size of the smallest page (12 for 4 KiB), `bits[i]` the index width of
    /// level `i` (the root, `bits[levels - 1]`, may be wider: concatenated or x4 roots),
    /// `leaf_mask` has bit `i` set when level `i` may hold a leaf (bit 0 must be set), `ia_bits` is the
    /// guest-physical width (at most the span of the root) and `oa_bits` the output width.
    ///
    /// ```
    /// use tdp_core::Geometry;
    /// // x86 4-level: 4 KiB pages, 9 bits per level, leaves at 4K/2M/1G, 48-bit GPA, 52-bit output.
    /// let g = Geometry::new(12, &[9, 9, 9, 9], 0b111, 48, 52).unwrap();
    /// assert_eq!(g.level_size(tdp_core::Level::new(2).unwrap()), 1 << 30);
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidGeometry`] when the levels are not 1..=5, a level's index width is not 5..=13
    /// bits (256 B .. 64 KiB tables; up to 17 bits, 1 MiB, for the root), the page is smaller than 256 bytes, the leaf levels are not
    /// contiguous from level 0, a leaf level does not exist, `ia_bits` exceeds the root's span or 60 bits, or `oa_bits` is
    /// outside `page_shift..=60`.
    pub const fn new(
        page_shift: u8,
        bits: &[u8],
        leaf_mask: u8,
        ia_bits: u8,
        oa_bits: u8,
    ) -> Result<Geometry, Error> {
        let levels = bits.len();
        if levels == 0 || levels > MAX_LEVELS || page_shift < 8 || page_shift > 20 {
            return Err(Error::InvalidGeometry);
        }
        let mut shift = [0u8; SLOTS];
        let mut b = [0u8; SLOTS];
        let mut index_mask = [0u32; SLOTS];
        let mut s = page_shift as u32;
        let mut i = 0;
        while i < levels {
            // A root may be wider (concatenated arm64 roots: up to 16 tables of 64 KiB).
            let max = if i == levels - 1 { 17 } else { 13 };
            if bits[i] < 5 || bits[i] > max {
                return Err(Error::InvalidGeometry);
            }
            shift[i] = s as u8;
            b[i] = bits[i];
            index_mask[i] = (1u32 << bits[i]) - 1;
            s += bits[i] as u32;
            i += 1;
        }
        // `s` is now the span of the root in bits.
        // Leaf levels are contiguous from level 0 on every architecture, so splitting a leaf always
        // yields leaves and collapsing a table of leaves always yields a leaf.
        if leaf_mask & 1 == 0
            || (leaf_mask as u32) >> levels != 0
            || leaf_mask & leaf_mask.wrapping_add(1) != 0
        {
            return Err(Error::InvalidGeometry);
        }
        if ia_bits as u32 > s || ia_bits > 60 || (ia_bits as u32) <= shift[levels - 1] as u32 {
            return Err(Error::InvalidGeometry);
        }
        if oa_bits < page_shift || oa_bits > 60 {
            return Err(Error::InvalidGeometry);
        }
        let mut uniform_4k = page_shift == 12;
        let mut l = 0;
        while l + 1 < levels {
            uniform_4k &= bits[l] == 9;
            l += 1;
        }
        Ok(Geometry {
            levels: levels as u8,
            shift,
            bits: b,
            index_mask,
            leaf_mask,
            ia_bits,
            oa_bits,
            uniform_4k,
        })
    }

    /// Number of levels.
    #[inline]
    pub const fn levels(&self) -> u8 {
        self.levels
    }

    /// The root's level (`levels - 1`).
    #[inline]
    pub const fn root_level(&self) -> Level {
        Level::from_index(self.levels as usize - 1)
    }

    /// Whether `level` exists in this geometry.
    #[inline]
    pub const fn has_level(&self, level: Level) -> bool {
        level.get() < self.levels
    }

    /// The address bit where `level`'s index starts (log2 of the size one entry maps).
    #[inline]
    pub const fn shift(&self, level: Level) -> u32 {
        self.shift[slot(level)] as u32
    }

    /// Index width of the table at `level`.
    #[inline]
    pub const fn index_bits(&self, level: Level) -> u32 {
        self.bits[slot(level)] as u32
    }

    /// Number of entries of the table at `level`.
    #[inline]
    pub const fn entries(&self, level: Level) -> usize {
        1usize << self.bits[slot(level)]
    }

    /// Size in bytes (and alignment) of the table at `level`.
    #[inline]
    pub const fn table_size(&self, level: Level) -> usize {
        ENTRY_SIZE << self.bits[slot(level)]
    }

    /// Bytes mapped by one entry at `level`.
    #[inline]
    pub const fn level_size(&self, level: Level) -> u64 {
        1u64 << self.shift[slot(level)]
    }

    /// The smallest page size.
    #[inline]
    pub const fn page_size(&self) -> u64 {
        1u64 << self.shift[0]
    }

    /// Whether every level below the root has 4 KiB-page x86-style indices (9 bits, level `l`
    /// at shift `12 + 9 * l`).
    #[inline(always)]
    pub(crate) const fn uniform_4k(&self) -> bool {
        self.uniform_4k
    }

    /// Index of `gpa` in the table at `level`.
    #[inline]
    pub const fn index(&self, gpa: u64, level: Level) -> usize {
        let i = slot(level);
        ((gpa >> self.shift[i]) as usize) & self.index_mask[i] as usize
    }

    /// Whether `level` may hold a leaf.
    #[inline]
    pub const fn is_leaf_level(&self, level: Level) -> bool {
        level.get() < self.levels && self.leaf_mask & (1 << level.get()) != 0
    }

    /// The mask of levels that may hold a leaf (bit `i` for level `i`).
    #[inline]
    pub const fn leaf_mask(&self) -> u8 {
        self.leaf_mask
    }

    /// Guest-physical address width in bits.
    #[inline]
    pub const fn ia_bits(&self) -> u8 {
        self.ia_bits
    }

    /// Output (host-physical) address width in bits.
    #[inline]
    pub const fn oa_bits(&self) -> u8 {
        self.oa_bits
    }

    /// The smallest table size in this geometry (a host's metadata granule).
    pub const fn min_table_size(&self) -> usize {
        let mut min = usize::MAX;
        let mut i = 0;
        while i < self.levels as usize {
            let s = ENTRY_SIZE << self.bits[i];
            if s < min {
                min = s;
            }
            i += 1;
        }
        min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_four_level_spans_48_bits() {
        let g = Geometry::new(12, &[9, 9, 9, 9], 0b111, 48, 52).unwrap();
        assert_eq!(g.root_level().get(), 3);
        assert_eq!(g.shift(Level::new(3).unwrap()), 39);
        assert_eq!(g.table_size(Level::LEAF), 4096);
        assert_eq!(g.index(0x0000_7fff_ffff_f000, Level::new(3).unwrap()), 255);
    }

    #[test]
    fn power_radix_64k_leaf_tables_are_256_bytes() {
        let g = Geometry::new(16, &[5, 9, 9, 13], 0b111, 52, 52).unwrap();
        assert_eq!(g.table_size(Level::LEAF), 256);
        assert_eq!(g.table_size(g.root_level()), 65536);
        assert_eq!(g.min_table_size(), 256);
    }

    #[test]
    fn rejects_a_leaf_level_that_does_not_exist() {
        assert_eq!(
            Geometry::new(12, &[9, 9], 0b101, 30, 40),
            Err(Error::InvalidGeometry)
        );
    }

    #[test]
    fn rejects_ia_wider_than_root_span() {
        assert_eq!(
            Geometry::new(12, &[9, 9, 9], 0b1, 40, 40),
            Err(Error::InvalidGeometry)
        );
    }
}
