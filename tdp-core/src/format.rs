//! The per-architecture entry format: the one trait every architecture crate implements.
//!
//! It was written against all six spec sheets (x86 EPT/NPT, arm64 stage 2, RISC-V G-stage,
//! LoongArch, MIPS, Power radix); `docs/trait-table.md` maps every item to every architecture.
//! The engine never looks at a bit itself: it asks the format to classify, build and change
//! entries, and to say which bits hardware may set behind its back and which changes need
//! break-before-make.

use bitflags::bitflags;

use crate::addr::{Hpa, Level};
use crate::error::Error;
use crate::geometry::Geometry;

bitflags! {
    /// Access permissions of a mapping.
    ///
    /// Execute is split into privileged and user execute for architectures that can tell them
    /// apart (arm64 FEAT_XNX, EPT with MBEC); elsewhere both must be given together.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Perms: u8 {
        /// Read.
        const READ = 1 << 0;
        /// Write.
        const WRITE = 1 << 1;
        /// Execute at the guest's privileged level (EL1, supervisor).
        const EXEC_SUPER = 1 << 2;
        /// Execute at the guest's user level (EL0, user).
        const EXEC_USER = 1 << 3;
        /// Execute at every level.
        const EXEC = Self::EXEC_SUPER.bits() | Self::EXEC_USER.bits();
        /// Read and write.
        const RW = Self::READ.bits() | Self::WRITE.bits();
        /// Read and execute.
        const RX = Self::READ.bits() | Self::EXEC.bits();
        /// Read, write and execute.
        const RWX = Self::RW.bits() | Self::EXEC.bits();
    }
}

bitflags! {
    /// Cache maintenance a leaf needs before it becomes valid or executable (arm64 without FWB).
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Cmo: u8 {
        /// Clean and invalidate the data cache to the point of coherency for the host range
        /// before the leaf becomes valid (cacheable memory without FWB).
        const CLEAN_DCACHE = 1 << 0;
        /// Invalidate the instruction cache for the host range before the leaf becomes
        /// executable.
        const INVAL_ICACHE = 1 << 1;
    }
}

/// Memory type of a mapping, as far as stage 2 controls it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum MemType {
    /// Normal memory, write-back cacheable.
    #[default]
    WriteBack,
    /// Normal memory, write-through.
    WriteThrough,
    /// Normal memory, write-protected (x86 WP).
    WriteProtect,
    /// Normal memory, uncached but combining writes (x86 WC, arm64 Normal-NC).
    WriteCombining,
    /// Uncached, strongly ordered (x86 UC).
    Uncached,
    /// Device memory (arm64 Device-nGnRE, Power non-idempotent I/O).
    Device,
}

/// Attributes of a leaf: permissions and memory type.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Attrs {
    /// Access permissions.
    pub perms: Perms,
    /// Memory type.
    pub mem: MemType,
    /// Force the memory type over the guest's own choice (EPT IPAT; arm64 with FWB forces always).
    pub ignore_guest_memtype: bool,
}

impl Attrs {
    /// Write-back memory with the given permissions.
    pub const fn normal(perms: Perms) -> Attrs {
        Attrs {
            perms,
            mem: MemType::WriteBack,
            ignore_guest_memtype: false,
        }
    }
}

/// Accessed/dirty state of a leaf as [`crate::Table::query`] reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct AdState {
    /// Accessed (young), or `None` if this format does not track it.
    pub accessed: Option<bool>,
    /// Dirty, or `None` if this format does not track it.
    pub dirty: Option<bool>,
}

/// How a format tracks accessed and dirty state.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AdModel {
    /// Hardware sets A/D in the entries (EPT with A/D, NPT, arm64 HA/HD, RISC-V Svadu, Power R/C).
    /// Those bits are volatile: the engine updates such entries atomically.
    Hardware,
    /// Software tracking: hardware faults where a bit would be set and the fault path sets it
    /// (LoongArch, MIPS, RISC-V Svade, arm64 without HA).
    Software,
    /// Not tracked in entries at all (EPT without A/D: access tracking clears permissions).
    None,
}

/// Byte order of entries in memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Little-endian (x86, arm64, RISC-V, LoongArch, little-endian MIPS).
    Little,
    /// Big-endian (Power radix tables, big-endian MIPS).
    Big,
}

/// What an entry is, as the engine needs to know it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// The level's empty value (or another value meaning "nothing here").
    Empty,
    /// A pointer to a next-level table.
    Table,
    /// A leaf mapping.
    Leaf,
    /// The frozen value: an updater owns this entry (shared-mode protocol, later issues).
    Frozen,
    /// Not present, but not empty either (MMIO markers and other software states, later issues).
    Other,
}

/// The per-architecture entry format.
///
/// A value of this type carries the run-time configuration (walk length, A/D enable, granule,
/// capability bits) and the geometry derived from it. Methods take the raw entry value in CPU byte
/// order; the engine converts to and from memory with [`PteFormat::BYTE_ORDER`].
///
/// # Contract
/// - `classify(empty(level), level)` is `Empty`; `classify(make_table(pa, level), level)` is `Table`
///   with `table_addr` = `pa`; `classify(make_leaf(hpa, level, attrs, ad), level)` is `Leaf` with
///   `leaf_addr` = `hpa` and `leaf_attrs` = `attrs` for every `attrs` that `check_attrs` accepts.
/// - `frozen(level)` classifies as `Frozen` at `level`, is never a valid hardware entry, and is
///   safe for that level's hardware (or software-refill) walker to meet: a directory entry that a
///   refill handler follows as a pointer (MIPS) must still lead to an invalid table.
/// - `volatile_bits` is a superset of the bits hardware can set in that entry without the engine.
pub trait PteFormat {
    /// Byte order of entries in memory.
    const BYTE_ORDER: ByteOrder;

    /// The geometry of this configuration.
    fn geometry(&self) -> &Geometry;

    // --- encoding -------------------------------------------------------------------------------

    /// The value of an empty entry at `level` (x86: bit 63; LoongArch/MIPS directories: the
    /// invalid table's address; others: 0).
    fn empty(&self, level: Level) -> u64;

    /// The frozen value at `level`: an entry owned by one updater in shared mode (during a
    /// break-before-make, or while the table holding it is being removed). Other updaters that
    /// meet it retry; hardware treats it as not present.
    fn frozen(&self, level: Level) -> u64;

    /// Checks that `attrs` can be encoded (e.g. write without read, execute-only without the
    /// capability, split execute without MBEC/XNX, device memory with execute).
    ///
    /// # Errors
    /// [`Error::UnsupportedAttrs`] naming the attributes.
    fn check_attrs(&self, attrs: &Attrs) -> Result<(), Error>;

    /// A leaf at `level` mapping `hpa` (aligned to the level size, within the output width) with
    /// `attrs` (accepted by `check_attrs`); `young_dirty` presets the accessed flag, and the dirty
    /// flag if `attrs` allow write, where the format has them.
    fn make_leaf(&self, hpa: Hpa, level: Level, attrs: &Attrs, young_dirty: bool) -> u64;

    /// The output-address field of a leaf at `level` that maps `hpa` (aligned to the level
    /// size, within the output width), nothing else: for every such `hpa`,
    /// `make_leaf(hpa, ..) == make_leaf(Hpa::new(0), ..) | leaf_addr_bits(hpa, level)`. Single-entry
    /// maps build their leaf from a template with one OR (the testing driver checks the rule for
    /// every format it runs).
    fn leaf_addr_bits(&self, hpa: Hpa, level: Level) -> u64;

    /// A table entry at `level` pointing at the child table at `child`.
    fn make_table(&self, child: Hpa, level: Level) -> u64;

    /// The leaf at `level - 1` for slot `index` of the table replacing the huge leaf `huge` at
    /// `level`: same attributes and A/D state, output address advanced by `index` child pages.
    fn split_child(&self, huge: u64, level: Level, index: usize) -> u64;

    /// The huge leaf at `level` that replaces a table whose first child is the leaf `child` (at
    /// `level - 1`), with accessed/dirty bits `ad` (the union of every child's
    /// [`PteFormat::ad_bits`]).
    fn make_huge(&self, child: u64, level: Level, ad: u64) -> u64;

    /// `raw` (a leaf at `level`) with its permissions replaced by `perms` (accepted by
    /// `check_attrs` with the leaf's memory type). Software-writable bits follow `WRITE`.
    fn with_perms(&self, raw: u64, level: Level, perms: Perms) -> u64;

    // --- decoding -------------------------------------------------------------------------------

    /// What `raw` is at `level`.
    fn classify(&self, raw: u64, level: Level) -> EntryKind;

    /// The child table of a `Table` entry.
    fn table_addr(&self, raw: u64, level: Level) -> Hpa;

    /// The output address of a `Leaf` entry.
    fn leaf_addr(&self, raw: u64, level: Level) -> Hpa;

    /// The attributes of a `Leaf` entry.
    fn leaf_attrs(&self, raw: u64, level: Level) -> Attrs;

    /// The accessed/dirty state of a `Leaf` entry.
    fn ad_state(&self, raw: u64, level: Level) -> AdState;

    /// The accessed/dirty bits of a `Leaf` entry (used to merge children on collapse).
    fn ad_bits(&self, raw: u64, level: Level) -> u64;

    /// `raw` (a leaf) with its output address and A/D bits removed: two leaves whose keys are
    /// equal have the same attributes.
    fn leaf_key(&self, raw: u64, level: Level) -> u64;

    // --- A/D model and update rules -------------------------------------------------------------

    /// How this configuration tracks accessed/dirty state.
    fn ad_model(&self) -> AdModel;

    /// The bits hardware may set in `raw` (at `level`) behind the engine's back: non-zero means
    /// the entry must be updated with an atomic read-modify-write so no hardware-set bit is lost.
    fn volatile_bits(&self, raw: u64, level: Level) -> u64;

    /// Whether replacing the valid entry `old` by `new` at `level` needs break-before-make
    /// (invalidate, flush the TLB, then write `new`). Default: never (x86, RISC-V). arm64 needs it
    /// for output address, block/table and memory-attribute changes; Power radix for output
    /// address or page-size changes (KVM unmaps and flushes first).
    #[inline]
    fn needs_break(&self, _old: u64, _new: u64, _level: Level) -> bool {
        false
    }

    /// The cache maintenance a leaf with `attrs` needs before it becomes valid
    /// ([`Cmo::CLEAN_DCACHE`]) or executable ([`Cmo::INVAL_ICACHE`]). Default: none (coherent
    /// architectures, arm64 with FWB and DIC).
    #[inline]
    fn cmo(&self, _attrs: &Attrs) -> Cmo {
        Cmo::empty()
    }

    /// Whether `check_attrs` depends on the memory type (arm64: device memory cannot be
    /// executable), so that `protect` must check every leaf's attributes before changing any.
    /// Default: no (the permissions alone decide).
    #[inline]
    fn perms_depend_on_memtype(&self) -> bool {
        false
    }

    /// Whether hardware may cache an empty entry, so that installing a leaf over an empty entry
    /// also needs a TLB flush (RISC-V without Svvptc). Default: no.
    #[inline]
    fn caches_empty_entries(&self) -> bool {
        false
    }
}

impl core::fmt::Display for Perms {
    /// `rwx`-style: `r`, `w`, then `x` for execute at every level, `s`/`u` for privileged-only or
    /// user-only execute, `-` for each missing one.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let r = if self.contains(Perms::READ) { 'r' } else { '-' };
        let w = if self.contains(Perms::WRITE) {
            'w'
        } else {
            '-'
        };
        let x = match (
            self.contains(Perms::EXEC_SUPER),
            self.contains(Perms::EXEC_USER),
        ) {
            (true, true) => 'x',
            (true, false) => 's',
            (false, true) => 'u',
            (false, false) => '-',
        };
        write!(f, "{r}{w}{x}")
    }
}
