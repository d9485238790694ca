//! # tdp-arch-mips: MIPS64 VZ GPA tables for tdp-core
//!
//! [`Mips`] is the [`tdp_core::PteFormat`] of the GPA table KVM builds for a MIPS VZ guest
//! (`kvm->arch.gpa_mm`): the host Linux page-table layout (Linux
//! `arch/mips/include/asm/pgtable-bits.h`, `pgtable-64.h`, `arch/mips/kvm/mmu.c`), read by the
//! root-TLB refill handler on a GPA miss.
//!
//! What is particular about it:
//! - **The layout is a configuration value** ([`MipsLayout`]): where PRESENT, WRITE,
//!   ACCESSED, MODIFIED, RI/XI, G, V, D, the CCA and the PFN sit depends on the host kernel's
//!   configuration; a layout whose fields overlap, exceed the word or do not convert to EntryLo
//!   with a shift is rejected. Presets cover 64-bit hosts with RIXI ([`MipsConfig::linux64_4k`],
//!   [`MipsConfig::linux64_16k`], [`MipsConfig::linux64_16k_2level`],
//!   [`MipsConfig::linux64_64k`]).
//! - **Directories hold kernel virtual addresses** (xkphys, [`MipsConfig::table_window`]);
//!   empty ones hold the address of a per-level invalid table the caller provides
//!   ([`MipsConfig::invalid_tables`]). Empty PTEs are 0.
//! - **Software A/D**: VALID | ACCESSED is "young", DIRTY | MODIFIED is "dirty", the software
//!   WRITE bit is the write permission.
//! - **TLB pairs**: [`Mips::entrylo_pair`] turns a leaf and its buddy into EntryLo0/EntryLo1
//!   for a refill, RI/XI rotated to bits 63:62.
//! - **Host byte order**: `Mips<false>` ([`MipsLe`]) or `Mips<true>` ([`MipsBe`]).
//!
//! ```
//! use tdp_arch_mips::{MipsConfig, MipsLe};
//! use tdp_core::{Gpa, PteFormat};
//!
//! // 4 KiB pages, 3 levels; the invalid tables live in the host kernel image (ckseg0).
//! let cfg = MipsConfig::linux64_4k([0xffff_ffff_8100_0000, 0xffff_ffff_8100_1000]);
//! let mips = MipsLe::new(cfg).unwrap();
//! assert_eq!(mips.geometry().ia_bits(), 40);
//! // A young, dirty, writable leaf of page 0x1234_5000, cacheable (CCA 3), and its empty buddy.
//! let pte = 0x1234_5 << 14 | 3 << 11 | 1 << 10 | 1 << 9 | 0b1111;
//! let (lo0, lo1) = mips.entrylo_pair(Gpa::new(0x2000), pte, 0);
//! assert_eq!((lo0, lo1), (0x1234_5 << 6 | 3 << 3 | 0b110, 0));
//! ```
#![no_std]

mod format;

pub use format::{Mips, MipsBe, MipsConfig, MipsLayout, MipsLe};
