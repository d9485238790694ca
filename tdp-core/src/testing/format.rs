//! A small generic format for engine tests.

use crate::addr::{Hpa, Level};
use crate::error::Error;
use crate::format::{
    AdModel, AdState, Attrs, ByteOrder, Cmo, EntryKind, MemType, Perms, PteFormat,
};
use crate::geometry::Geometry;

// Bits of the test format (not any architecture's).
const VALID: u64 = 1 << 0;
const READ: u64 = 1 << 1;
const WRITE: u64 = 1 << 2;
const EXEC: u64 = 1 << 3;
const HUGE: u64 = 1 << 4;
const UNCACHED: u64 = 1 << 5;
const ACCESSED: u64 = 1 << 8;
const DIRTY: u64 = 1 << 9;
const FROZEN: u64 = 1 << 62;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// A generic format: 4 KiB pages, 9 bits per level, valid/read/write/exec/huge bits, optional
/// hardware A/D and optional break-before-make on every replacement of a valid entry.
#[derive(Clone, Debug)]
pub struct TestFormat {
    geo: Geometry,
    /// Hardware sets A/D (bits 8/9), so entries missing them are volatile.
    pub hardware_ad: bool,
    /// Every replacement of a valid entry (other than a permission change) needs
    /// break-before-make.
    pub break_before_make: bool,
    /// Cacheable leaves need a data-cache clean, executable ones an instruction-cache
    /// invalidation (like arm64 without FWB).
    pub cache_maintenance: bool,
}

impl TestFormat {
    /// Four levels, 48-bit input, 52-bit output, leaves at 4K/2M/1G.
    pub fn four_level() -> TestFormat {
        const GEO: Geometry = match Geometry::new(12, &[9, 9, 9, 9], 0b111, 48, 52) {
            Ok(g) => g,
            Err(_) => panic!("invalid test geometry"),
        };
        TestFormat {
            geo: GEO,
            hardware_ad: false,
            break_before_make: false,
            cache_maintenance: false,
        }
    }

    /// Any geometry with 4 KiB pages.
    pub fn with_geometry(geo: Geometry) -> TestFormat {
        TestFormat {
            geo,
            hardware_ad: false,
            break_before_make: false,
            cache_maintenance: false,
        }
    }
}

impl PteFormat for TestFormat {
    const BYTE_ORDER: ByteOrder = ByteOrder::Little;

    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    fn empty(&self, _level: Level) -> u64 {
        0
    }

    fn frozen(&self, _level: Level) -> u64 {
        FROZEN
    }

    fn check_attrs(&self, attrs: &Attrs) -> Result<(), Error> {
        let p = attrs.perms;
        let exec = p & Perms::EXEC;
        if (p.contains(Perms::WRITE) && !p.contains(Perms::READ))
            || (!exec.is_empty() && exec != Perms::EXEC)
            || !matches!(attrs.mem, MemType::WriteBack | MemType::Uncached)
        {
            return Err(Error::UnsupportedAttrs { attrs: *attrs });
        }
        Ok(())
    }

    fn leaf_addr_bits(&self, hpa: Hpa, _level: Level) -> u64 {
        hpa.raw() & ADDR
    }

    fn make_leaf(&self, hpa: Hpa, level: Level, attrs: &Attrs, young_dirty: bool) -> u64 {
        let mut v = VALID | (hpa.raw() & ADDR);
        v = self.with_perms(v, level, attrs.perms);
        if level.get() > 0 {
            v |= HUGE;
        }
        if attrs.mem == MemType::Uncached {
            v |= UNCACHED;
        }
        if young_dirty {
            v |= ACCESSED;
            if attrs.perms.contains(Perms::WRITE) {
                v |= DIRTY;
            }
        }
        v
    }

    fn make_table(&self, child: Hpa, _level: Level) -> u64 {
        VALID | (child.raw() & ADDR)
    }

    fn split_child(&self, huge: u64, level: Level, index: usize) -> u64 {
        let step = self
            .geo
            .level_size(Level::new(level.get() - 1).expect("level > 0"));
        let mut v = (huge & !ADDR) + ((huge & ADDR) + index as u64 * step);
        if level.get() == 1 {
            v &= !HUGE;
        }
        v
    }

    fn make_huge(&self, child: u64, _level: Level, ad: u64) -> u64 {
        (child & !(ACCESSED | DIRTY)) | HUGE | ad
    }

    fn with_perms(&self, raw: u64, _level: Level, perms: Perms) -> u64 {
        let mut v = raw & !(READ | WRITE | EXEC);
        if perms.contains(Perms::READ) {
            v |= READ;
        }
        if perms.contains(Perms::WRITE) {
            v |= WRITE;
        }
        if perms.intersects(Perms::EXEC) {
            v |= EXEC;
        }
        v
    }

    fn classify(&self, raw: u64, level: Level) -> EntryKind {
        if raw == FROZEN {
            EntryKind::Frozen
        } else if raw & VALID == 0 {
            if raw == 0 {
                EntryKind::Empty
            } else {
                EntryKind::Other
            }
        } else if level.get() == 0 || raw & HUGE != 0 {
            EntryKind::Leaf
        } else {
            EntryKind::Table
        }
    }

    fn table_addr(&self, raw: u64, _level: Level) -> Hpa {
        Hpa::new(raw & ADDR)
    }

    fn leaf_addr(&self, raw: u64, _level: Level) -> Hpa {
        Hpa::new(raw & ADDR)
    }

    fn leaf_attrs(&self, raw: u64, _level: Level) -> Attrs {
        let mut perms = Perms::empty();
        if raw & READ != 0 {
            perms |= Perms::READ;
        }
        if raw & WRITE != 0 {
            perms |= Perms::WRITE;
        }
        if raw & EXEC != 0 {
            perms |= Perms::EXEC;
        }
        Attrs {
            perms,
            mem: if raw & UNCACHED != 0 {
                MemType::Uncached
            } else {
                MemType::WriteBack
            },
            ignore_guest_memtype: false,
        }
    }

    fn ad_state(&self, raw: u64, _level: Level) -> AdState {
        AdState {
            accessed: Some(raw & ACCESSED != 0),
            dirty: Some(raw & DIRTY != 0),
        }
    }

    fn ad_bits(&self, raw: u64, _level: Level) -> u64 {
        raw & (ACCESSED | DIRTY)
    }

    fn leaf_key(&self, raw: u64, _level: Level) -> u64 {
        raw & !(ADDR | ACCESSED | DIRTY)
    }

    fn ad_model(&self) -> AdModel {
        if self.hardware_ad {
            AdModel::Hardware
        } else {
            AdModel::Software
        }
    }

    fn volatile_bits(&self, raw: u64, level: Level) -> u64 {
        if !self.hardware_ad || self.classify(raw, level) != EntryKind::Leaf {
            return 0;
        }
        let mut v = !raw & ACCESSED;
        if raw & WRITE != 0 {
            v |= !raw & DIRTY;
        }
        v
    }

    fn cmo(&self, attrs: &Attrs) -> Cmo {
        let mut c = Cmo::empty();
        if self.cache_maintenance {
            if attrs.mem == MemType::WriteBack {
                c |= Cmo::CLEAN_DCACHE;
            }
            if attrs.perms.intersects(Perms::EXEC) {
                c |= Cmo::INVAL_ICACHE;
            }
        }
        c
    }

    fn needs_break(&self, old: u64, new: u64, _level: Level) -> bool {
        // Permission and A/D changes are made in place; anything else breaks.
        self.break_before_make
            && (old & !(READ | WRITE | EXEC | ACCESSED | DIRTY))
                != (new & !(READ | WRITE | EXEC | ACCESSED | DIRTY))
    }
}
