//! # tdp-arch-ppc: the Power radix (partition-scoped) format for tdp-core
//!
//! [`Radix`] is the [`tdp_core::PteFormat`] of a Book3S-64 radix tree used for partition-scoped
//! translation (guest real → host real, what KVM HV builds for a radix guest): 52-bit trees with
//! a 64 KiB root, the 4 KiB host-page geometry (13/9/9/9: 4K, 2M and 1G leaves) or the 64 KiB one
//! (13/9/9/5: 64K, 2M and 1G leaves, with 256-byte leaf tables), **big-endian** entries on any
//! host, hardware reference/change bits, and break-before-make for output-address and page-size
//! changes.
//!
//! It also builds the partition-table entry ([`Radix::partition_table_entry`]) and the `tlbie`
//! operands a [`tdp_core::TlbFlush`] needs ([`Radix::tlbie`]).
//!
//! ```
//! use tdp_arch_ppc::{Radix, RadixGranule, RadixOptions};
//! use tdp_core::{Gpa, Hpa};
//!
//! let r = Radix::new(RadixOptions { granule: RadixGranule::Page64K, pa_bits: 52, lpid_bits: 12 }).unwrap();
//! let pate = r.partition_table_entry(Hpa::new(0x1_0000_0000), Gpa::new(0x10_0000), 4).unwrap();
//! // HR | RTS = 21 (52 bits) | root | RPDS = 13;  GR | process table | PRTS.
//! assert_eq!(pate.dw0, 0xc000_0001_0000_00ad);
//! assert_eq!(pate.dw1, 0x8000_0000_0010_0004);
//! ```
#![no_std]

mod radix;

/// The architecture this crate describes, as named in the trait table (kept for the workspace's
/// `nostd-check` probe).
pub const ARCH: &str = "ppc";

pub use radix::{
    PartitionTableEntry, Radix, RadixGranule, RadixOptions, Tlbie, TlbieSeq, TLBIE_MAX_PAGES,
};
