//! Proof that `tdp-core` (without its default features) and every architecture crate build and
//! link without `std`: this `#![no_std]` staticlib defines its own `#[panic_handler]`, so if any
//! of them pulled in `std` the build would fail with a duplicate `panic_impl` lang item.
//!
//! Built by `cargo test` (`tdp-core/tests/no_std_link.rs`) with panic = "abort".
#![no_std]

use core::panic::PanicInfo;

use tdp_core::{Geometry, Level, PteFormat};

#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    loop {}
}

/// Touches each crate so that none of them is optimised away unseen: builds a configuration of
/// every architecture's format and reads one value from it.
#[no_mangle]
pub extern "C" fn tdp_nostd_probe() -> u64 {
    let mut v = 0u64;
    let caps = tdp_arch_x86::EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1);
    let opts = tdp_arch_x86::EptOptions {
        levels: 4,
        accessed_dirty: true,
        maxphyaddr: 46,
        mbec: false,
    };
    if let Ok(ept) = tdp_arch_x86::Ept::new(caps, opts) {
        v ^= ept.empty(Level::LEAF);
    }
    if let Ok(npt) = tdp_arch_x86::Npt::new(tdp_arch_x86::NptOptions::default()) {
        v ^= npt.frozen(Level::LEAF);
    }
    let s2 = tdp_arch_arm64::Stage2Options::new(tdp_arch_arm64::Granule::K4, 40, 40);
    if let Ok(s2) = tdp_arch_arm64::Stage2::new(tdp_arch_arm64::Stage2Caps::new(40), s2) {
        v ^= s2.frozen(Level::LEAF);
    }
    v ^= core::mem::size_of::<tdp_arch_riscv::Gstage>() as u64;
    v ^= core::mem::size_of::<tdp_arch_ppc::Radix>() as u64;
    v ^= core::mem::size_of::<tdp_arch_loongarch::LoongArch>() as u64;
    v ^= core::mem::size_of::<tdp_arch_mips::MipsLe>() as u64;
    if let Ok(g) = Geometry::new(12, &[9, 9, 9], 0b11, 39, 40) {
        v ^= g.level_size(Level::LEAF);
    }
    v
}
