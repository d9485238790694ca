//! Intel EPT.
//!
//! Bits (Intel SDM Vol. 3C, "The Extended Page Table Mechanism (EPT)": EPT paging-structure
//! entries, tables 29-1..29-6 in recent editions; "Accessed and Dirty Flags for EPT";
//! "Mode-Based Execute Control for EPT"), and KVM's software bits (arch/x86/kvm/mmu/spte.h):
//!
//! | bit(s) | hardware meaning | here |
//! |---|---|---|
//! | 0 / 1 / 2 | read / write / execute (supervisor execute with MBEC) | permissions |
//! | 5:3 | memory type of a leaf: UC 0, WC 1, WT 4, WP 5, WB 6 | [`MemType`] |
//! | 6 | IPAT (ignore guest PAT) of a leaf | `Attrs::ignore_guest_memtype` |
//! | 7 | leaf at level 1 (2 MiB) / level 2 (1 GiB) | set on every huge leaf |
//! | 8 / 9 | accessed / dirty (EPTP bit 6 enables them) | A preset on tables |
//! | 10 | user-mode execute (MBEC) | `Perms::EXEC_USER` with MBEC |
//! | 11 | ignored | KVM MMU-present: set on every present entry |
//! | 51:12 | physical address | |
//! | 52 | ignored | KVM A/D type: 1 = A/D disabled (access tracking) |
//! | 57 / 58 | ignored | KVM host-writable / MMU-writable |
//! | 63 | suppress #VE | set in every entry, present or empty |

use tdp_core::{
    AdModel, AdState, Attrs, ByteOrder, EntryKind, Error, Geometry, Hpa, Level, MemType, Perms,
    PteFormat,
};

const R: u64 = 1 << 0;
const W: u64 = 1 << 1;
const X: u64 = 1 << 2;
const MT_SHIFT: u32 = 3;
const MT_MASK: u64 = 7 << MT_SHIFT;
const IPAT: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const A: u64 = 1 << 8;
const D: u64 = 1 << 9;
const UX: u64 = 1 << 10;
const MMU_PRESENT: u64 = 1 << 11;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const AD_DISABLED: u64 = 1 << 52;
const HOST_WRITABLE: u64 = 1 << 57;
const MMU_WRITABLE: u64 = 1 << 58;
const SUPPRESS_VE: u64 = 1 << 63;

/// The empty entry: suppress #VE set, nothing present (KVM's SHADOW_NONPRESENT_VALUE).
const EMPTY: u64 = SUPPRESS_VE;
/// The frozen entry: KVM's FROZEN_SPTE after "Free up A/D bits in FROZEN_SPTE" (bits 3, 4, 7,
/// 10 over the empty value): no R/W/X (not present to hardware), no A/D bit, no address, and not
/// KVM's MMIO pattern (W|X without R).
const FROZEN: u64 = SUPPRESS_VE | 0x498;

/// Memory-type encodings (SDM "EPT and Memory Typing"; same numbers as the PAT/MTRR types).
const MT_UC: u64 = 0;
const MT_WC: u64 = 1;
const MT_WT: u64 = 4;
const MT_WP: u64 = 5;
const MT_WB: u64 = 6;

/// EPT capabilities, as reported by the IA32_VMX_EPT_VPID_CAP MSR (0x48C).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct EptCaps {
    /// Bit 0: execute-only translations.
    pub execute_only: bool,
    /// Bit 6: 4-level walks.
    pub walk_4: bool,
    /// Bit 7: 5-level walks.
    pub walk_5: bool,
    /// Bit 8: the EPTP may use the UC memory type.
    pub memtype_uc: bool,
    /// Bit 14: the EPTP may use the WB memory type.
    pub memtype_wb: bool,
    /// Bit 16: 2 MiB pages.
    pub page_2m: bool,
    /// Bit 17: 1 GiB pages.
    pub page_1g: bool,
    /// Bit 21: accessed and dirty flags.
    pub accessed_dirty: bool,
    /// Mode-based execute control (secondary processor-based control bit 22; not in this MSR).
    pub mbec: bool,
}

impl EptCaps {
    /// Decodes IA32_VMX_EPT_VPID_CAP (SDM Appendix A.10). MBEC is not in this MSR: set
    /// [`EptCaps::mbec`] from the secondary processor-based VM-execution controls.
    pub const fn from_vmx_ept_vpid_cap(msr: u64) -> EptCaps {
        EptCaps {
            execute_only: msr & (1 << 0) != 0,
            walk_4: msr & (1 << 6) != 0,
            walk_5: msr & (1 << 7) != 0,
            memtype_uc: msr & (1 << 8) != 0,
            memtype_wb: msr & (1 << 14) != 0,
            page_2m: msr & (1 << 16) != 0,
            page_1g: msr & (1 << 17) != 0,
            accessed_dirty: msr & (1 << 21) != 0,
            mbec: false,
        }
    }
}

/// What the hypervisor chooses for one EPT table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EptOptions {
    /// Walk length: 4 (48-bit guest-physical) or 5 (57-bit).
    pub levels: u8,
    /// Enable accessed/dirty flags (EPTP bit 6).
    pub accessed_dirty: bool,
    /// The host's MAXPHYADDR (output width), 36..=52.
    pub maxphyaddr: u8,
    /// Use mode-based execute control (separate user execute, bit 10).
    pub mbec: bool,
}

/// The Intel EPT format for one configuration.
#[derive(Clone, Debug)]
pub struct Ept {
    geo: Geometry,
    caps: EptCaps,
    opts: EptOptions,
}

impl Ept {
    /// An EPT configuration.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the walk length is not 4 or 5 or not supported, A/D or MBEC
    /// is asked for without the capability, the CPU has no 2 MiB pages or no WB paging-structure
    /// memory type, or `maxphyaddr` is outside 36..=52.
    pub fn new(caps: EptCaps, opts: EptOptions) -> Result<Ept, Error> {
        let bad = |what, value: u64| Err(Error::InvalidConfig { what, value });
        match opts.levels {
            4 if caps.walk_4 => {}
            5 if caps.walk_5 => {}
            l => return bad("EPT walk length", l.into()),
        }
        if opts.accessed_dirty && !caps.accessed_dirty {
            return bad("EPT accessed/dirty flags without the capability", 1);
        }
        if opts.mbec && !caps.mbec {
            return bad("EPT MBEC without the capability", 1);
        }
        if !caps.page_2m {
            return bad("EPT without 2 MiB pages", 0);
        }
        if !caps.memtype_wb {
            return bad("EPT without a write-back EPTP memory type", 0);
        }
        if !(36..=52).contains(&opts.maxphyaddr) {
            return bad("MAXPHYADDR", opts.maxphyaddr.into());
        }
        let bits = [9u8; 5];
        let leaves = if caps.page_1g { 0b111 } else { 0b011 };
        let ia = 12 + 9 * opts.levels;
        let geo = Geometry::new(
            12,
            &bits[..opts.levels as usize],
            leaves,
            ia,
            opts.maxphyaddr,
        )?;
        Ok(Ept { geo, caps, opts })
    }

    /// The options this format was built with.
    pub fn options(&self) -> EptOptions {
        self.opts
    }

    /// The EPTP for a table whose root is at `root` (SDM "Extended-Page-Table Pointer (EPTP)"):
    /// memory type WB (bits 2:0 = 6), walk length − 1 in bits 5:3, A/D enable in bit 6, root
    /// address in bits N−1:12.
    ///
    /// # Errors
    /// [`Error::UnalignedHpa`] if `root` is not 4 KiB aligned, [`Error::HpaTooWide`] if it is
    /// beyond MAXPHYADDR.
    pub fn eptp(&self, root: Hpa) -> Result<u64, Error> {
        if !root.is_aligned(4096) {
            return Err(Error::UnalignedHpa {
                hpa: root,
                align: 4096,
            });
        }
        if root.raw() >> self.opts.maxphyaddr != 0 {
            return Err(Error::HpaTooWide {
                hpa: root,
                bits: self.opts.maxphyaddr,
            });
        }
        let mut v = root.raw() | MT_WB | (u64::from(self.opts.levels) - 1) << 3;
        if self.opts.accessed_dirty {
            v |= 1 << 6;
        }
        Ok(v)
    }

    fn perm_bits(&self, perms: Perms) -> u64 {
        let mut v = 0;
        if perms.contains(Perms::READ) {
            v |= R;
        }
        if perms.contains(Perms::WRITE) {
            v |= W | HOST_WRITABLE | MMU_WRITABLE;
        }
        if self.opts.mbec {
            if perms.contains(Perms::EXEC_SUPER) {
                v |= X;
            }
            if perms.contains(Perms::EXEC_USER) {
                v |= UX;
            }
        } else if perms.intersects(Perms::EXEC) {
            v |= X;
        }
        v
    }
}

impl PteFormat for Ept {
    const BYTE_ORDER: ByteOrder = ByteOrder::Little;

    fn geometry(&self) -> &Geometry {
        &self.geo
    }

    #[inline(always)]
    fn empty(&self, _level: Level) -> u64 {
        EMPTY
    }

    fn frozen(&self, _level: Level) -> u64 {
        FROZEN
    }

    fn check_attrs(&self, attrs: &Attrs) -> Result<(), Error> {
        let p = attrs.perms;
        let exec = p & Perms::EXEC;
        let write_without_read = p.contains(Perms::WRITE) && !p.contains(Perms::READ);
        let exec_only = !exec.is_empty() && !p.contains(Perms::READ);
        let split_exec = !exec.is_empty() && exec != Perms::EXEC && !self.opts.mbec;
        // x86 has no device type of its own: Device would encode as UC and read back as
        // Uncached, so it is refused (use `MemType::Uncached`).
        let device = attrs.mem == MemType::Device;
        if write_without_read || (exec_only && !self.caps.execute_only) || split_exec || device {
            return Err(Error::UnsupportedAttrs { attrs: *attrs });
        }
        Ok(())
    }

    #[inline]
    fn leaf_addr_bits(&self, hpa: Hpa, _level: Level) -> u64 {
        hpa.raw() & ADDR
    }

    #[inline]
    fn make_leaf(&self, hpa: Hpa, level: Level, attrs: &Attrs, young_dirty: bool) -> u64 {
        let mt = match attrs.mem {
            MemType::WriteBack => MT_WB,
            MemType::WriteThrough => MT_WT,
            MemType::WriteProtect => MT_WP,
            MemType::WriteCombining => MT_WC,
            MemType::Uncached | MemType::Device => MT_UC,
        };
        let mut v = SUPPRESS_VE | MMU_PRESENT | (hpa.raw() & ADDR) | mt << MT_SHIFT;
        v |= self.perm_bits(attrs.perms);
        if attrs.ignore_guest_memtype {
            v |= IPAT;
        }
        if level.get() > 0 {
            v |= PS;
        }
        if self.opts.accessed_dirty {
            if young_dirty {
                v |= A;
                if attrs.perms.contains(Perms::WRITE) {
                    v |= D;
                }
            }
        } else {
            v |= AD_DISABLED;
        }
        v
    }

    #[inline]
    fn make_table(&self, child: Hpa, _level: Level) -> u64 {
        // Non-leaf entries grant everything; the leaf decides (KVM make_nonleaf_spte).
        let mut v = SUPPRESS_VE | MMU_PRESENT | (child.raw() & ADDR) | R | W | X;
        if self.opts.mbec {
            v |= UX;
        }
        if self.opts.accessed_dirty {
            v |= A;
        }
        v
    }

    #[inline]
    fn split_child(&self, huge: u64, level: Level, index: usize) -> u64 {
        let child_level = level.get() - 1;
        let step = 1u64 << (12 + 9 * u32::from(child_level));
        let addr = (huge & ADDR) + index as u64 * step;
        let mut v = (huge & !ADDR) | addr;
        if child_level == 0 {
            v &= !PS;
        }
        v
    }

    #[inline]
    fn make_huge(&self, child: u64, _level: Level, ad: u64) -> u64 {
        (child & !(A | D)) | PS | ad
    }

    #[inline]
    fn with_perms(&self, raw: u64, _level: Level, perms: Perms) -> u64 {
        (raw & !(R | W | X | UX | HOST_WRITABLE | MMU_WRITABLE)) | self.perm_bits(perms)
    }

    #[inline(always)]
    fn classify(&self, raw: u64, level: Level) -> EntryKind {
        if raw & MMU_PRESENT != 0 {
            if level.get() == 0 || raw & PS != 0 {
                EntryKind::Leaf
            } else {
                EntryKind::Table
            }
        } else if raw == EMPTY {
            EntryKind::Empty
        } else if raw == FROZEN {
            EntryKind::Frozen
        } else {
            EntryKind::Other
        }
    }

    #[inline(always)]
    fn table_addr(&self, raw: u64, _level: Level) -> Hpa {
        Hpa::new(raw & ADDR)
    }

    #[inline]
    fn leaf_addr(&self, raw: u64, level: Level) -> Hpa {
        Hpa::new(raw & ADDR & !(self.geo.level_size(level) - 1))
    }

    fn leaf_attrs(&self, raw: u64, _level: Level) -> Attrs {
        let mut perms = Perms::empty();
        if raw & R != 0 {
            perms |= Perms::READ;
        }
        if raw & W != 0 {
            perms |= Perms::WRITE;
        }
        if self.opts.mbec {
            if raw & X != 0 {
                perms |= Perms::EXEC_SUPER;
            }
            if raw & UX != 0 {
                perms |= Perms::EXEC_USER;
            }
        } else if raw & X != 0 {
            perms |= Perms::EXEC;
        }
        let mem = match (raw & MT_MASK) >> MT_SHIFT {
            MT_UC => MemType::Uncached,
            MT_WC => MemType::WriteCombining,
            MT_WT => MemType::WriteThrough,
            MT_WP => MemType::WriteProtect,
            _ => MemType::WriteBack,
        };
        Attrs {
            perms,
            mem,
            ignore_guest_memtype: raw & IPAT != 0,
        }
    }

    fn ad_state(&self, raw: u64, _level: Level) -> AdState {
        if self.opts.accessed_dirty {
            AdState {
                accessed: Some(raw & A != 0),
                dirty: Some(raw & D != 0),
            }
        } else {
            AdState::default()
        }
    }

    #[inline]
    fn ad_bits(&self, raw: u64, _level: Level) -> u64 {
        raw & (A | D)
    }

    #[inline]
    fn leaf_key(&self, raw: u64, _level: Level) -> u64 {
        raw & !(ADDR | A | D)
    }

    fn ad_model(&self) -> AdModel {
        if self.opts.accessed_dirty {
            AdModel::Hardware
        } else {
            AdModel::None
        }
    }

    /// KVM's `spte_needs_atomic_update`: with A/D on, hardware sets A in any entry it uses that
    /// lacks it and D in a writable leaf that lacks it; an MMU-writable leaf without W may be
    /// made writable by the lockless fast path (later issues).
    #[inline(always)]
    fn volatile_bits(&self, raw: u64, level: Level) -> u64 {
        if raw & MMU_PRESENT == 0 {
            return 0;
        }
        let leaf = level.get() == 0 || raw & PS != 0;
        let mut v = 0;
        if self.opts.accessed_dirty {
            v |= !raw & A;
            // Dirty exists only in leaves (bit 9 of a non-leaf entry is ignored).
            if leaf && raw & W != 0 {
                v |= !raw & D;
            }
        }
        if leaf && raw & (W | MMU_WRITABLE) == MMU_WRITABLE {
            v |= W;
        }
        v
    }
}
