//! The architecture configurations the benchmarks measure, one constructor each, shared by every
//! bench file (`benches/explicit.rs`, `benches/shared.rs`) and the tests.

use tdp_arch_arm64::{Granule, Stage2, Stage2Caps, Stage2Options};
use tdp_arch_loongarch::{LoongArch, LoongArchConfig};
use tdp_arch_mips::{MipsConfig, MipsLe};
use tdp_arch_ppc::{Radix, RadixGranule, RadixOptions};
use tdp_arch_riscv::{Gstage, GstageCaps, GstageMode, GstageOptions};
use tdp_arch_x86::{Ept, EptCaps, EptOptions, Npt, NptOptions};

/// Intel EPT, 4 levels, with or without accessed/dirty flags, MAXPHYADDR 46.
///
/// # Panics
/// Never: the configuration is valid.
pub fn ept(accessed_dirty: bool) -> Ept {
    // Execute-only, 4/5-level, UC/WB, 2M/1G pages, A/D (IA32_VMX_EPT_VPID_CAP of a recent core).
    let caps = EptCaps::from_vmx_ept_vpid_cap(0x0023_41c1);
    let opts = EptOptions {
        levels: 4,
        accessed_dirty,
        maxphyaddr: 46,
        mbec: false,
    };
    Ept::new(caps, opts).expect("valid EPT configuration")
}

/// AMD NPT, 4 levels, NX, 1 GiB pages.
///
/// # Panics
/// Never: the configuration is valid.
pub fn npt() -> Npt {
    Npt::new(NptOptions::default()).expect("valid NPT configuration")
}

/// Arm stage 2 with `granule`, 40-bit IPA, 48-bit PA, FWB, hardware Access flag and dirty state.
///
/// # Panics
/// Never: the configuration is valid for every granule.
pub fn stage2(granule: Granule) -> Stage2 {
    // A recent server core: 48-bit PA, FWB, hardware Access flag and dirty state (like EPT with
    // A/D), 16-bit VMIDs; KVM's default 40-bit IPA.
    let caps = Stage2Caps {
        pa_range_bits: 48,
        ..Stage2Caps::all()
    };
    let opts = Stage2Options {
        fwb: true,
        hw_access: true,
        hw_dirty: true,
        vmid16: true,
        ..Stage2Options::new(granule, 40, 48)
    };
    Stage2::new(caps, opts).expect("valid stage-2 configuration")
}

/// RISC-V G-stage Sv48x4, Svadu, Svpbmt, no Svvptc.
///
/// # Panics
/// Never: the configuration is valid.
pub fn gstage() -> Gstage {
    // Sv48x4 (KVM keeps the largest mode that sticks), hardware A/D (Svadu), Svpbmt, no Svvptc.
    let caps = GstageCaps {
        max_mode: GstageMode::Sv48x4,
        vmid_bits: 14,
        svadu: true,
        svpbmt: true,
        svvptc: false,
    };
    let opts = GstageOptions {
        mode: GstageMode::Sv48x4,
        pa_bits: 56,
        leaf_512g: false,
    };
    Gstage::new(caps, opts).expect("valid G-stage configuration")
}

/// LoongArch, Linux's 16 KiB pages, 3 levels, software refill.
///
/// # Panics
/// Never: the configuration is valid.
pub fn loongarch_16k() -> LoongArch {
    // Linux's usual host: 16 KiB pages, 3 levels, software refill; the invalid tables are the
    // caller's (DMW-window addresses of two 16 KiB tables outside the engine's window).
    let cfg = LoongArchConfig::linux(14, 3, [0x9000_0000_0100_0000, 0x9000_0000_0100_4000, 0]);
    LoongArch::new(cfg).expect("valid LoongArch configuration")
}

/// MIPS VZ, little-endian, 16 KiB pages, 3 levels, RIXI.
///
/// # Panics
/// Never: the configuration is valid.
pub fn mips_16k() -> MipsLe {
    // A Loongson-3 host: little-endian, 16 KiB pages, 3 levels, RIXI; the invalid tables live in
    // the host kernel image (ckseg0), outside the engine's window.
    let cfg = MipsConfig::linux64_16k([0xffff_ffff_8100_0000, 0xffff_ffff_8100_4000]);
    MipsLe::new(cfg).expect("valid MIPS configuration")
}

/// Power radix, partition-scoped, with `granule`, 52-bit real addresses, 12 LPID bits.
///
/// # Panics
/// Never: the configuration is valid for every granule.
pub fn radix(granule: RadixGranule) -> Radix {
    // A POWER9-like partition: 52-bit real addresses, 12 LPID bits.
    let opts = RadixOptions {
        granule,
        pa_bits: 52,
        lpid_bits: 12,
    };
    Radix::new(opts).expect("valid radix configuration")
}
