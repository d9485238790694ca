//! # tdp-arch-loongarch: LoongArch64 (LVZ) GPA tables for tdp-core
//!
//! [`LoongArch`] is the [`tdp_core::PteFormat`] of the table KVM builds for a LoongArch guest:
//! the host Linux page-table format (LoongArch Reference Manual Vol. 1 §5; Linux
//! `arch/loongarch/include/asm/pgtable-bits.h`, `arch/loongarch/kvm/mmu.c`), walked by the
//! root TLB refill (LDDIR/LDPTE) or the hardware page-table walker on a GPA miss.
//!
//! What is particular about it:
//! - **Geometry from the configuration** ([`LoongArchConfig`]): 4/16/64 KiB pages, 2..=4
//!   levels, the index width of every level; [`LoongArch::pwcl`] / [`LoongArch::pwch`] give the
//!   page-walk controller values (Linux's `setup_ptwalker` layout).
//! - **Empty directory entries are not zero**: they hold the address of a per-level *invalid
//!   table* (KVM's `invalid_ptes[]`) that the caller allocates, fills and keeps alive; the
//!   engine only compares against it. Empty PTEs are 0.
//! - **Software A/D**: V is the accessed bit (a leaf without V faults, KVM's fast path sets it),
//!   D|W are set together when a page is dirtied, and bit 9 (`_PAGE_MODIFIED`, KVM's
//!   KVM_PAGE_WRITEABLE) is the write permission. With the hardware walker
//!   ([`LoongArchConfig::hardware_walker`]) hardware sets V and D itself.
//! - **TLB pairs**: a refill loads an even/odd pair (or both halves of a huge page), so an
//!   invalid neighbour may be cached ([`tdp_core::PteFormat::caches_empty_entries`]) and
//!   [`LoongArch::invtlb`] turns a [`tdp_core::TlbFlush`] into INVTLB operations on
//!   pair-aligned addresses.
//!
//! ```
//! use tdp_arch_loongarch::{LoongArch, LoongArchConfig};
//! use tdp_core::{Hpa, PteFormat};
//!
//! // Linux's usual host: 16 KiB pages, 3 levels. The invalid tables are the caller's
//! // (here DMW-window addresses of two 16 KiB tables, as KVM stores them).
//! let cfg = LoongArchConfig::linux(14, 3, [0x9000_0000_0100_0000, 0x9000_0000_0100_4000, 0]);
//! let la = LoongArch::new(cfg).unwrap();
//! assert_eq!(la.geometry().ia_bits(), 47);
//! assert_eq!(la.pwch(), 36 | 11 << 6); // PGD in Dir3: base 36, width 11
//! assert_eq!(la.pgdl(Hpa::new(0x4000_0000)).unwrap(), 0x4000_0000);
//! ```
#![no_std]

mod format;
mod invtlb;

pub use format::{LoongArch, LoongArchConfig};
pub use invtlb::{Invtlb, InvtlbOps, INVTLB_GID_ADDR, INVTLB_GID_ALL, INVTLB_GID_GPA_TO_HPA};
