//! Address and level newtypes.
//!
//! `Gpa` is a guest-physical address (the input of a second-stage table), `Hpa` a host-physical
//! address (its output, and where table pages live). `Level` counts from the leaf upwards: level 0
//! holds the smallest pages, the root has the highest level. Constructors that can fail are checked;
//! the engine never trusts an unchecked level.

use core::fmt;

use crate::geometry::MAX_LEVELS;

/// A guest-physical address.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Gpa(u64);

/// A host-physical address.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Hpa(u64);

macro_rules! addr_common {
    ($t:ident, $name:literal) => {
        impl $t {
            /// Wraps a raw address. Every operation checks it against the table's widths.
            #[inline]
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw address.
            #[inline]
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// Whether the address is a multiple of `align` (a power of two).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & align.wrapping_sub(1) == 0
            }

            /// The address plus `bytes`, or `None` on overflow.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($name, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

addr_common!(Gpa, "Gpa");
addr_common!(Hpa, "Hpa");

/// A level in a table tree: 0 holds the smallest pages, the root has the highest level.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(transparent)]
pub struct Level(u8);

impl Level {
    /// The level of the smallest pages.
    pub const LEAF: Level = Level(0);

    /// A level, or `None` if it is beyond [`MAX_LEVELS`].
    ///
    /// ```
    /// use tdp_core::Level;
    /// assert_eq!(Level::new(1).map(Level::get), Some(1));
    /// assert!(Level::new(9).is_none());
    /// ```
    #[inline]
    pub const fn new(level: u8) -> Option<Level> {
        if (level as usize) < MAX_LEVELS {
            Some(Level(level))
        } else {
            None
        }
    }

    /// The level as a number.
    #[inline]
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The level as an array index.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Builds a level the caller has already bounded (engine-internal).
    #[inline]
    pub(crate) const fn from_index(i: usize) -> Level {
        debug_assert!(i < MAX_LEVELS);
        Level(i as u8)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

/// A non-empty range of guest-physical addresses `[start, start + size)`.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct GpaRange {
    start: Gpa,
    size: u64,
}

impl GpaRange {
    /// The range `[start, start + size)`.
    ///
    /// # Errors
    /// [`crate::Error::EmptyRange`] if `size` is zero, [`crate::Error::RangeOverflow`] if the end
    /// does not fit in 64 bits. Alignment and width are checked by each operation.
    pub const fn new(start: Gpa, size: u64) -> Result<GpaRange, crate::Error> {
        if size == 0 {
            return Err(crate::Error::EmptyRange { gpa: start });
        }
        if start.0.checked_add(size - 1).is_none() {
            return Err(crate::Error::RangeOverflow { gpa: start, size });
        }
        Ok(GpaRange { start, size })
    }

    /// The first address.
    #[inline]
    pub const fn start(&self) -> Gpa {
        self.start
    }

    /// The size in bytes.
    #[inline]
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// The last address (inclusive), which always fits in 64 bits.
    #[inline]
    pub const fn last(&self) -> Gpa {
        Gpa(self.start.0 + (self.size - 1))
    }
}

impl fmt::Debug for GpaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, +{:#x})", self.start.0, self.size)
    }
}
