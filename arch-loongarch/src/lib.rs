//! # tdp-arch-loongarch
//!
//! LoongArch64 GPA tables (software A/D, invalid-table directory entries).
//!
//! Status: placeholder crate of the foundation issue. The format is built by its own issue on the
//! engine's explicit API; see `docs/trait-table.md` for how each trait item maps to this
//! architecture, and `../shared/arch/SPECS.md` for the encodings it will use.
#![no_std]

/// The architecture this crate will describe, as named in the trait table.
pub const ARCH: &str = "loongarch";
