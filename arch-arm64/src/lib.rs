//! # tdp-arch-arm64
//!
//! VMSAv8-64 stage 2 (4K/16K/64K granules, IPA 32..52, concatenated roots, LPA2, FWB).
//!
//! Status: placeholder crate of the foundation issue. The format is built by its own issue on the
//! engine's explicit API; see `docs/trait-table.md` for how each trait item maps to this
//! architecture, and `../shared/arch/SPECS.md` for the encodings it will use.
#![no_std]

/// The architecture this crate will describe, as named in the trait table.
pub const ARCH: &str = "arm64";
