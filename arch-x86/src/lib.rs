//! # tdp-arch-x86: Intel EPT and AMD NPT for tdp-core
//!
//! Two [`tdp_core::PteFormat`]s:
//! - [`Ept`]: Intel Extended Page Tables, 4 or 5 levels, accessed/dirty flags on or off,
//!   execute-only, MBEC (separate user execute), memory type + IPAT, and KVM's software bits
//!   (MMU-present, host-writable, MMU-writable); the empty entry is bit 63 (suppress #VE), not 0.
//! - [`Npt`]: AMD nested paging in the long-mode format, 4 or 5 levels, NX, U set at every
//!   level, PAT/PCD/PWT from the host PAT.
//!
//! Each is configured at run time from the CPU's capabilities and builds the value the VMCS or
//! VMCB needs ([`Ept::eptp`], [`Npt::ncr3`]), refusing combinations the CPU does not allow.
//!
//! ```
//! use tdp_arch_x86::{Ept, EptCaps, EptOptions};
//! use tdp_core::Hpa;
//!
//! let caps = EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1); // exec-only, 4/5-level, UC/WB, 2M/1G, A/D
//! let ept = Ept::new(caps, EptOptions { levels: 4, accessed_dirty: true, maxphyaddr: 46, mbec: false }).unwrap();
//! assert_eq!(ept.eptp(Hpa::new(0x1234_5000)).unwrap(), 0x1234_505e);
//! ```
#![no_std]

mod ept;
mod npt;

pub use ept::{Ept, EptCaps, EptOptions};
pub use npt::{Npt, NptOptions, PAT_POWER_ON};
