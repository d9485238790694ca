//! # tdp-arch-riscv: the RISC-V G-stage format for tdp-core
//!
//! [`Gstage`] is the [`tdp_core::PteFormat`] of the hypervisor extension's guest-physical
//! translation stage on RV64: Sv39x4, Sv48x4 or Sv57x4 chosen at run time ([`GstageMode`]), the
//! 2048-entry 16 KiB root, leaves at 4 KiB, 2 MiB and 1 GiB (and 512 GiB as an option where the
//! mode has that level), Svpbmt memory types, and hardware (Svadu) or software (Svade)
//! accessed/dirty tracking.
//!
//! It also builds what the hypervisor writes around the table: the `hgatp` value
//! ([`Gstage::hgatp`]) and the `HFENCE.GVMA` operands a [`tdp_core::TlbFlush`] needs
//! ([`Gstage::hfence_gvma`]).
//!
//! ```
//! use tdp_arch_riscv::{Gstage, GstageCaps, GstageMode, GstageOptions};
//! use tdp_core::Hpa;
//!
//! let caps = GstageCaps { max_mode: GstageMode::Sv48x4, vmid_bits: 14, svadu: false, svpbmt: true, svvptc: false };
//! let g = Gstage::new(caps, GstageOptions { mode: GstageMode::Sv39x4, pa_bits: 56, leaf_512g: false }).unwrap();
//! // MODE 8 in bits 63:60, VMID 3 in bits 57:44, root PPN in bits 43:0.
//! assert_eq!(g.hgatp(Hpa::new(0x8020_4000), 3).unwrap(), 0x8000_3000_0008_0204);
//! ```
#![no_std]

mod gstage;

/// The architecture this crate describes, as named in the trait table (kept for the workspace's
/// `nostd-check` probe).
pub const ARCH: &str = "riscv";

pub use gstage::{
    GpaFences, Gstage, GstageCaps, GstageMode, GstageOptions, HfenceGvma, HFENCE_GVMA_MAX_GPAS,
};
