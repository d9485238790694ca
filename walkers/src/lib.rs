//! Independent software walkers for second-stage (nested) page tables.
//!
//! This crate is a **test oracle**: it translates a guest-physical address
//! through a second-stage table that sits in a simulated physical memory,
//! exactly as the hardware would, so that the tables built by the `tdp`
//! engine can be checked against the architecture rather than against the
//! engine's own idea of the format.
//!
//! To stay independent it shares no code with the engine: every bit
//! position is defined again here, next to a comment citing the manual
//! section it comes from.
//!
//! * [`ept`] — Intel Extended Page Tables (Intel SDM Vol. 3C, chapter
//!   "VMX Support for Address Translation", section "The Extended Page
//!   Table Mechanism (EPT)", numbered 29.3 in recent editions, 28.2/28.3 in
//!   older ones).
//! * [`npt`] — AMD nested paging (AMD APM Vol. 2 §15.25 "Nested Paging",
//!   with the long-mode entry formats of §5.3/§5.4).
//! * [`stage2`] — Arm VMSAv8-64 stage 2 (Arm ARM, "The AArch64 Virtual Memory System
//!   Architecture": stage 2 translation, VTCR_EL2, FEAT_LPA/LPA2/XNX/HAFDBS/S2FWB).
//! * [`gstage`] — RISC-V G-stage (Privileged Architecture, Hypervisor extension, "Two-Stage
//!   Address Translation").
//! * [`radix`] — Power Book3S-64 radix, partition scoped (big-endian entries).
//! * [`loongarch`] — LoongArch GPA tables: directory walk (LDDIR/LDPTE) and TLB refill of
//!   even/odd pairs, page-invalid/modify/inhibit exceptions, the hardware walker's V/D updates.
//! * [`mips`] — MIPS VZ GPA tables in a configurable Linux PTE layout: the refill's EntryLo pair
//!   and the TLB invalid/modified/RI/XI exceptions.
//!
//! Both walkers read the tables through the [`PhysMem`] trait; [`FlatImage`]
//! is a ready-made implementation backed by a `Vec<u8>`. The walkers never
//! panic, whatever the memory contents, table pointer or address: every
//! problem is reported as a value of the walker's fault type.
//!
//! Unlike the engine, this crate uses `std`: it is test support, not code
//! that runs in a hypervisor.

// Each walker's errors are its fault type, documented variant by variant.
#![allow(clippy::missing_errors_doc)]

use std::ops::Range;

pub mod ept;
pub mod gstage;
pub mod loongarch;
pub mod mips;
pub mod npt;
pub mod radix;
pub mod stage2;

/// Physical memory as a walker sees it.
pub trait PhysMem {
    /// Reads `buf.len()` bytes at physical address `pa`; false if any byte is outside memory.
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool;
    /// Writes `buf` at physical address `pa`; false if any byte is outside memory.
    fn write(&mut self, pa: u64, buf: &[u8]) -> bool;
}

/// A flat window of physical memory: `bytes[i]` is the byte at physical
/// address `base + i`. Every address outside `base .. base + bytes.len()`
/// is outside memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlatImage {
    /// Physical address of `bytes[0]`.
    pub base: u64,
    /// The contents of the window.
    pub bytes: Vec<u8>,
}

impl FlatImage {
    /// A window starting at physical address `base` holding `bytes`.
    pub fn new(base: u64, bytes: Vec<u8>) -> Self {
        Self { base, bytes }
    }

    /// A window of `len` zero bytes starting at physical address `base`.
    pub fn zeroed(base: u64, len: usize) -> Self {
        Self::new(base, vec![0; len])
    }

    /// The index range in `bytes` covering `len` bytes at `pa`, if all of
    /// them lie inside the window (with no arithmetic overflow).
    fn range(&self, pa: u64, len: usize) -> Option<Range<usize>> {
        let start = usize::try_from(pa.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }

    /// Reads the little-endian 64-bit word at `pa` (x86 paging-structure
    /// entries are stored this way); `None` if any byte is outside the window.
    pub fn read_u64_le(&self, pa: u64) -> Option<u64> {
        read_u64_le(self, pa)
    }

    /// Writes `value` as a little-endian 64-bit word at `pa`; false (and
    /// nothing written) if any byte is outside the window.
    pub fn write_u64_le(&mut self, pa: u64, value: u64) -> bool {
        self.write(pa, &value.to_le_bytes())
    }
}

impl PhysMem for FlatImage {
    fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
        match self.range(pa, buf.len()) {
            Some(r) => {
                buf.copy_from_slice(&self.bytes[r]);
                true
            }
            None => false,
        }
    }

    fn write(&mut self, pa: u64, buf: &[u8]) -> bool {
        match self.range(pa, buf.len()) {
            Some(r) => {
                self.bytes[r].copy_from_slice(buf);
                true
            }
            None => false,
        }
    }
}

/// The kind of access being translated.
///
/// Both walkers take the same enum. For EPT the two execute kinds differ
/// only when mode-based execute control (MBEC) is enabled; for NPT both
/// mean an instruction fetch (nested walks are always user accesses, so the
/// guest's privilege level plays no role).
///
/// Translations done on behalf of the guest's own page walk are the
/// caller's business: with EPT A/D enabled the SDM treats guest
/// paging-structure accesses as writes ("EPT Violations", 29.3.3.2), so a
/// caller modelling them should pass [`Access::Write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch from a supervisor-mode linear address.
    ExecSupervisor,
    /// An instruction fetch from a user-mode linear address.
    ExecUser,
}

impl Access {
    /// Every access kind, for tests that loop over them.
    pub const ALL: [Access; 4] = [
        Access::Read,
        Access::Write,
        Access::ExecSupervisor,
        Access::ExecUser,
    ];

    /// True for both kinds of instruction fetch.
    pub const fn is_fetch(self) -> bool {
        matches!(self, Access::ExecSupervisor | Access::ExecUser)
    }
}

/// Mask of bits `hi..=lo` (inclusive); empty when `hi < lo`. Never panics.
pub(crate) const fn bit_range(hi: u32, lo: u32) -> u64 {
    if hi < lo || lo > 63 {
        return 0;
    }
    let hi = if hi > 63 { 63 } else { hi };
    let width = hi - lo + 1;
    let ones = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    ones << lo
}

/// Reads an 8-byte little-endian entry at `pa`; `None` if outside memory.
pub(crate) fn read_u64_le<M: PhysMem + ?Sized>(mem: &M, pa: u64) -> Option<u64> {
    let mut buf = [0u8; 8];
    mem.read(pa, &mut buf).then(|| u64::from_le_bytes(buf))
}

/// Sets `bits` in the 8-byte little-endian entry at `pa`, the way the
/// processor's locked read-modify-write does: re-read the entry, and write
/// it back only if some of `bits` were clear. Returns the entry's new value,
/// or `None` if it could not be read or written.
pub(crate) fn set_bits_le<M: PhysMem + ?Sized>(mem: &mut M, pa: u64, bits: u64) -> Option<u64> {
    let old = read_u64_le(mem, pa)?;
    let new = old | bits;
    if new != old && !mem.write(pa, &new.to_le_bytes()) {
        return None;
    }
    Some(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_range_edges() {
        assert_eq!(bit_range(0, 0), 1);
        assert_eq!(bit_range(63, 0), u64::MAX);
        assert_eq!(bit_range(51, 46), 0x000F_C000_0000_0000);
        assert_eq!(bit_range(51, 52), 0);
        assert_eq!(bit_range(7, 3), 0xF8);
        assert_eq!(bit_range(70, 64), 0);
    }

    #[test]
    fn flat_image_reads_and_writes_inside_its_window() {
        let mut img = FlatImage::zeroed(0x1000, 0x20);
        assert!(img.write_u64_le(0x1008, 0x1122_3344_5566_7788));
        assert_eq!(img.bytes[8], 0x88, "little-endian: low byte first");
        assert_eq!(img.read_u64_le(0x1008), Some(0x1122_3344_5566_7788));
        assert_eq!(img.read_u64_le(0x1018), Some(0));
    }

    #[test]
    fn flat_image_rejects_any_byte_outside_its_window() {
        let mut img = FlatImage::zeroed(0x1000, 0x20);
        assert_eq!(img.read_u64_le(0xFFF), None, "below base");
        assert_eq!(img.read_u64_le(0x1019), None, "straddles the end");
        assert_eq!(img.read_u64_le(0x1020), None, "just past the end");
        assert_eq!(img.read_u64_le(u64::MAX - 3), None, "would overflow");
        assert!(!img.write_u64_le(0x101C, 1));
        assert_eq!(img.bytes, vec![0; 0x20], "a failed write changes nothing");
        let mut high = FlatImage::zeroed(u64::MAX - 7, 8);
        assert!(high.write_u64_le(u64::MAX - 7, 5));
        assert_eq!(high.read_u64_le(u64::MAX - 7), Some(5));
        assert_eq!(high.read_u64_le(u64::MAX), None);
    }

    #[test]
    fn set_bits_writes_only_when_something_changes() {
        struct ReadOnly(FlatImage);
        impl PhysMem for ReadOnly {
            fn read(&self, pa: u64, buf: &mut [u8]) -> bool {
                self.0.read(pa, buf)
            }
            fn write(&mut self, _: u64, _: &[u8]) -> bool {
                false
            }
        }
        let mut mem = ReadOnly(FlatImage::zeroed(0, 8));
        assert!(mem.0.write_u64_le(0, 0x100));
        assert_eq!(set_bits_le(&mut mem, 0, 0x100), Some(0x100));
        assert_eq!(set_bits_le(&mut mem, 0, 0x200), None);
    }
}
