//! # tdp-arch-arm64: Arm VMSAv8-64 stage 2 for tdp-core
//!
//! One [`tdp_core::PteFormat`], [`Stage2`], configured at run time:
//! - **geometry**: 4 KiB, 16 KiB and 64 KiB granules; IPA sizes 32..=52 bits; levels and start
//!   level as KVM derives them (levels = (ipa − 8) / (granule_shift − 3), at least 2) with 1..16
//!   concatenated tables at the start level (a wider root, allocated and aligned to its size);
//!   blocks of 1 GiB and 2 MiB (4 KiB), 32 MiB (16 KiB), 512 MiB (64 KiB);
//! - **52-bit output**: OA\[51:48\] in bits 15:12 with the 64 KiB granule (FEAT_LPA), and the
//!   FEAT_LPA2 format for 4/16 KiB (VTCR_EL2.DS = 1: OA\[51:50\] in bits 9:8, shareability from
//!   VTCR_EL2.SH0);
//! - **descriptors**: MemAttr with and without FEAT_S2FWB, S2AP, SH, AF, XN or the FEAT_XNX
//!   XN\[1:0\] field (`Perms::EXEC_SUPER` / `Perms::EXEC_USER`), DBM, software bits; device memory
//!   is never executable;
//! - **access flag and dirty state** in hardware (VTCR_EL2.HA, HD with DBM) or in software, with
//!   the hardware-set bits reported as volatile so the engine never loses one;
//! - **break-before-make** for changes of output address, block size or memory attributes
//!   ([`PteFormat::needs_break`](tdp_core::PteFormat::needs_break)), cache maintenance without
//!   FWB ([`PteFormat::cmo`](tdp_core::PteFormat::cmo));
//! - **registers**: [`Stage2::vtcr`], [`Stage2::vttbr`], and for the host's TLB hook the exact
//!   TLBI sequence a [`tdp_core::TlbFlush`] needs ([`Stage2::tlbi`]).
//!
//! Every combination the architecture does not allow is refused when the configuration is built
//! ([`Stage2::new`]), with a typed [`tdp_core::Error`].
//!
//! ```
//! use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
//! use tdp_core::{Hpa, PteFormat};
//!
//! // 4 KiB granule, 40-bit IPA: start at level 1 with two concatenated tables (8 KiB root).
//! let s2 = Stage2::new(Stage2Caps::new(48), Stage2Options::new(Granule::K4, 40, 48)).unwrap();
//! assert_eq!((s2.start_level(), s2.concatenated_tables(), s2.root_size()), (1, 2, 8192));
//! assert_eq!(s2.geometry().levels(), 3);
//! // T0SZ 24, SL0 1, IRGN0/ORGN0 WBWA, SH0 inner, TG0 4K, PS 48 bits, RES1 bit 31.
//! assert_eq!(s2.vtcr(), 0x8005_3558);
//! assert_eq!(s2.vttbr(Hpa::new(0x8_0000_2000), 5).unwrap(), 0x0005_0008_0000_2000);
//! ```
#![no_std]

mod config;
mod descriptor;
mod tlbi;

pub use config::{Granule, Stage2, Stage2Caps, Stage2Options};
pub use tlbi::{TlbiOp, TlbiPlan, MAX_TLBI_RANGE_PAGES};

/// The architecture this crate describes, as named in the trait table.
pub const ARCH: &str = "arm64";
