//! AMD nested paging (NPT).
//!
//! The nested table uses the long-mode page-table format (AMD APM Vol. 2 §5.3 "Long-Mode Page
//! Translation", §5.4 "Page-Translation-Table Entry Fields"; nested walks per §15.25 "Nested
//! Paging": every nested access is a user access, so U/S must be set at every level). KVM's
//! software bits from arch/x86/kvm/mmu/spte.h:
//!
//! | bit(s) | hardware meaning | here |
//! |---|---|---|
//! | 0 | present | set when the leaf grants read (read is implied by presence) |
//! | 1 | read/write | `Perms::WRITE` |
//! | 2 | user/supervisor | set at every level |
//! | 3 / 4 | PWT / PCD | memory type, with PAT, indexing the host PAT |
//! | 5 / 6 | accessed / dirty (hardware) | A preset on tables |
//! | 7 | PS (leaf at 2 MiB / 1 GiB); PAT in a 4 KiB leaf | |
//! | 9 / 10 | available | KVM host-writable / MMU-writable |
//! | 11 | available | KVM MMU-present: set on every present entry |
//! | 12 | PAT in a 2 MiB / 1 GiB leaf | |
//! | 51:12 | physical address | |
//! | 63 | no-execute (needs EFER.NXE) | set on leaves without execute |
//!
//! The empty entry is 0 (KVM uses bit 63, which NPT ignores while P = 0; 0 is equally valid and
//! lets a zeroed page be an empty table).

use tdp_core::{
    AdModel, AdState, Attrs, ByteOrder, EntryKind, Error, Geometry, Hpa, Level, MemType, Perms,
    PteFormat,
};

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const PAT_4K: u64 = 1 << 7;
const PAT_HUGE: u64 = 1 << 12;
const HOST_WRITABLE: u64 = 1 << 9;
const MMU_WRITABLE: u64 = 1 << 10;
const MMU_PRESENT: u64 = 1 << 11;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const NX: u64 = 1 << 63;

const EMPTY: u64 = 0;
/// Not present (P = 0), never equal to a value the engine builds.
const FROZEN: u64 = NX | 0x498;

/// The power-on IA32_PAT value: WB, WT, UC-, UC, WB, WT, UC-, UC (Intel SDM "PAT"; AMD APM
/// §7.8.2 "PAT Register").
pub const PAT_POWER_ON: u64 = 0x0007_0406_0007_0406;

/// What the hypervisor chooses for one NPT table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NptOptions {
    /// 4 (48-bit) or 5 (57-bit, host uses LA57) levels.
    pub levels: u8,
    /// The host's MAXPHYADDR (output width), 32..=52.
    pub maxphyaddr: u8,
    /// The CPU has 1 GiB pages (CPUID 8000_0001h EDX bit 26).
    pub page_1g: bool,
    /// The host runs with EFER.NXE = 1, so bit 63 is NX (else it is reserved and every leaf must
    /// be executable).
    pub nx: bool,
    /// The host PAT the PAT/PCD/PWT index selects from ([`PAT_POWER_ON`] by default).
    pub host_pat: u64,
}

impl Default for NptOptions {
    fn default() -> Self {
        NptOptions {
            levels: 4,
            maxphyaddr: 48,
            page_1g: true,
            nx: true,
            host_pat: PAT_POWER_ON,
        }
    }
}

/// The AMD NPT format for one configuration.
#[derive(Clone, Debug)]
pub struct Npt {
    geo: Geometry,
    opts: NptOptions,
}

/// PAT memory-type numbers (same as MTRR types).
const PAT_UC: u8 = 0;
const PAT_WC: u8 = 1;
const PAT_WT: u8 = 4;
const PAT_WP: u8 = 5;
const PAT_WB: u8 = 6;

impl Npt {
    /// An NPT configuration.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for levels other than 4 or 5, `maxphyaddr` outside 32..=52, or a
    /// host PAT with a reserved memory type.
    pub fn new(opts: NptOptions) -> Result<Npt, Error> {
        if !matches!(opts.levels, 4 | 5) {
            return Err(Error::InvalidConfig {
                what: "NPT levels",
                value: opts.levels.into(),
            });
        }
        if !(32..=52).contains(&opts.maxphyaddr) {
            return Err(Error::InvalidConfig {
                what: "MAXPHYADDR",
                value: opts.maxphyaddr.into(),
            });
        }
        for i in 0..8 {
            if !matches!((opts.host_pat >> (8 * i)) as u8, 0 | 1 | 4 | 5 | 6 | 7) {
                return Err(Error::InvalidConfig {
                    what: "host PAT",
                    value: opts.host_pat,
                });
            }
        }
        let bits = [9u8; 5];
        let leaves = if opts.page_1g { 0b111 } else { 0b011 };
        let ia = 12 + 9 * opts.levels;
        let geo = Geometry::new(
            12,
            &bits[..opts.levels as usize],
            leaves,
            ia,
            opts.maxphyaddr,
        )?;
        Ok(Npt { geo, opts })
    }

    /// The options this format was built with.
    pub fn options(&self) -> NptOptions {
        self.opts
    }

    /// The VMCB nested CR3 for a table rooted at `root`, with the SME/SEV encryption bit at
    /// `c_bit` (CPUID 8000_001Fh EBX[5:0]) if the table pages are encrypted.
    ///
    /// # Errors
    /// [`Error::UnalignedHpa`] if `root` is not 4 KiB aligned; [`Error::HpaTooWide`] if it is
    /// beyond MAXPHYADDR; [`Error::InvalidConfig`] if `c_bit` is not above the root's address
    /// or beyond bit 51.
    pub fn ncr3(&self, root: Hpa, c_bit: Option<u8>) -> Result<u64, Error> {
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
        match c_bit {
            None => Ok(root.raw()),
            Some(b) if (12..=51).contains(&b) && root.raw() >> b == 0 => Ok(root.raw() | 1 << b),
            Some(b) => Err(Error::InvalidConfig {
                what: "SME C-bit position",
                value: b.into(),
            }),
        }
    }

    /// The PAT index (PAT<<2 | PCD<<1 | PWT) of the host PAT entry holding `mem`.
    fn pat_index(&self, mem: MemType) -> Option<u64> {
        let want = match mem {
            MemType::WriteBack => PAT_WB,
            MemType::WriteThrough => PAT_WT,
            MemType::WriteProtect => PAT_WP,
            MemType::WriteCombining => PAT_WC,
            MemType::Uncached | MemType::Device => PAT_UC,
        };
        (0..8u64).find(|&i| (self.opts.host_pat >> (8 * i)) as u8 == want)
    }
}

impl PteFormat for Npt {
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
        // Presence is read: write or execute need it. Execute is one bit (no split), and without
        // EFER.NXE every present leaf is executable.
        let needs_read = p.contains(Perms::READ) || !p.intersects(Perms::WRITE | Perms::EXEC);
        let one_exec = exec.is_empty() || exec == Perms::EXEC;
        let nx_ok = self.opts.nx || exec == Perms::EXEC || p.is_empty();
        // No device type of its own: Device would read back as Uncached (use `Uncached`).
        let ok = needs_read
            && one_exec
            && nx_ok
            && attrs.mem != MemType::Device
            && !attrs.ignore_guest_memtype
            && self.pat_index(attrs.mem).is_some();
        if ok {
            Ok(())
        } else {
            Err(Error::UnsupportedAttrs { attrs: *attrs })
        }
    }

    #[inline]
    fn leaf_addr_bits(&self, hpa: Hpa, _level: Level) -> u64 {
        hpa.raw() & ADDR
    }

    #[inline]
    fn make_leaf(&self, hpa: Hpa, level: Level, attrs: &Attrs, young_dirty: bool) -> u64 {
        let pat = self.pat_index(attrs.mem).unwrap_or(0);
        let mut v = US | MMU_PRESENT | (hpa.raw() & ADDR);
        if pat & 1 != 0 {
            v |= PWT;
        }
        if pat & 2 != 0 {
            v |= PCD;
        }
        if pat & 4 != 0 {
            v |= if level.get() > 0 { PAT_HUGE } else { PAT_4K };
        }
        if level.get() > 0 {
            v |= PS;
        }
        v = self.with_perms(v, level, attrs.perms);
        if young_dirty {
            v |= A;
            if attrs.perms.contains(Perms::WRITE) {
                v |= D;
            }
        }
        v
    }

    #[inline]
    fn make_table(&self, child: Hpa, _level: Level) -> u64 {
        P | RW | US | A | MMU_PRESENT | (child.raw() & ADDR)
    }

    #[inline]
    fn split_child(&self, huge: u64, level: Level, index: usize) -> u64 {
        let child_level = level.get() - 1;
        let step = 1u64 << (12 + 9 * u32::from(child_level));
        let base = huge & ADDR & !(self.geo.level_size(level) - 1);
        let mut v = (huge & !ADDR) | (base + index as u64 * step);
        if child_level == 0 {
            // The PAT bit moves from bit 12 to bit 7, which stops being PS.
            v &= !PS;
            if huge & PAT_HUGE != 0 {
                v |= PAT_4K;
            }
        } else if huge & PAT_HUGE != 0 {
            v |= PAT_HUGE;
        }
        v
    }

    #[inline]
    fn make_huge(&self, child: u64, level: Level, ad: u64) -> u64 {
        let mut v = child & !(A | D);
        if level.get() == 1 {
            // A 4 KiB child keeps PAT in bit 7; the huge leaf keeps it in bit 12.
            let pat = v & PAT_4K != 0;
            v &= !PAT_4K;
            if pat {
                v |= PAT_HUGE;
            }
        }
        v | PS | ad
    }

    #[inline]
    fn with_perms(&self, raw: u64, _level: Level, perms: Perms) -> u64 {
        let mut v = raw & !(P | RW | HOST_WRITABLE | MMU_WRITABLE | NX);
        if perms.contains(Perms::READ) {
            v |= P;
        }
        if perms.contains(Perms::WRITE) {
            v |= RW | HOST_WRITABLE | MMU_WRITABLE;
        }
        if self.opts.nx && !perms.intersects(Perms::EXEC) {
            v |= NX;
        }
        v
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

    fn leaf_attrs(&self, raw: u64, level: Level) -> Attrs {
        let mut perms = Perms::empty();
        if raw & P != 0 {
            perms |= Perms::READ;
            if raw & RW != 0 {
                perms |= Perms::WRITE;
            }
            if !self.opts.nx || raw & NX == 0 {
                perms |= Perms::EXEC;
            }
        }
        let pat_bit = if level.get() > 0 { PAT_HUGE } else { PAT_4K };
        let idx = u64::from(raw & pat_bit != 0) << 2
            | u64::from(raw & PCD != 0) << 1
            | u64::from(raw & PWT != 0);
        let mem = match (self.opts.host_pat >> (8 * idx)) as u8 {
            PAT_WB => MemType::WriteBack,
            PAT_WT => MemType::WriteThrough,
            PAT_WP => MemType::WriteProtect,
            PAT_WC => MemType::WriteCombining,
            _ => MemType::Uncached,
        };
        Attrs {
            perms,
            mem,
            ignore_guest_memtype: false,
        }
    }

    fn ad_state(&self, raw: u64, _level: Level) -> AdState {
        AdState {
            accessed: Some(raw & A != 0),
            dirty: Some(raw & D != 0),
        }
    }

    #[inline]
    fn ad_bits(&self, raw: u64, _level: Level) -> u64 {
        raw & (A | D)
    }

    #[inline]
    fn leaf_key(&self, raw: u64, level: Level) -> u64 {
        // Only the real address bits: bit 12 of a huge leaf is PAT, an attribute.
        raw & !((ADDR & !(self.geo.level_size(level) - 1)) | A | D)
    }

    fn ad_model(&self) -> AdModel {
        AdModel::Hardware
    }

    /// Hardware sets A in any present entry it uses and D in a writable present leaf; an
    /// MMU-writable leaf without W may be made writable by the lockless fast path (later issues).
    #[inline(always)]
    fn volatile_bits(&self, raw: u64, level: Level) -> u64 {
        if raw & MMU_PRESENT == 0 {
            return 0;
        }
        let leaf = level.get() == 0 || raw & PS != 0;
        let mut v = 0;
        if raw & P != 0 {
            v |= !raw & A;
            if leaf && raw & RW != 0 {
                v |= !raw & D;
            }
        }
        if leaf && raw & (RW | MMU_WRITABLE) == MMU_WRITABLE {
            v |= RW;
        }
        v
    }
}
