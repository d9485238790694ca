//! # tdp-core: one engine for second-stage page tables
//!
//! `tdp-core` builds and changes the guest-physical → host-physical tables of a hypervisor (Intel
//! EPT, AMD NPT, Arm stage 2, RISC-V G-stage, LoongArch, MIPS, Power radix) with one generic engine
//! parameterised by a per-architecture entry format ([`PteFormat`]), implemented by one small crate
//! per architecture.
//!
//! What it has today:
//! - address and level newtypes ([`Gpa`], [`Hpa`], [`Level`], [`GpaRange`]) and run-time
//!   [`Geometry`] (levels, per-level index widths, 256 B .. 64 KiB tables, wider roots);
//! - the one walker (a pre-order iterator with restart, [`iter`]) and the one entry-update point
//!   ([`update`]: counts, volatile bits, break-before-make);
//! - the explicit table API on [`Table`]: `map`, `unmap`, `protect`, `query`, `walk`, `split`,
//!   `collapse`, with typed [`Error`]s that leave the table unchanged and nothing leaked;
//! - the [`Host`] trait for table memory, per-table metadata (16 bytes) and TLB invalidation, with
//!   the flush contract written in [`host`];
//! - behind the `testing` feature, the testing kit ([`testing`]).
//!
//! ```
//! # #[cfg(feature = "testing")] {
//! use tdp_core::testing::{HeapHost, TestFormat};
//! use tdp_core::{Attrs, Gpa, GpaRange, Hpa, Perms, Table};
//!
//! let host = HeapHost::new(0x1_0000_0000, 1 << 20, 4096);
//! let mut table = Table::new(TestFormat::four_level(), &host).unwrap();
//! let ram = GpaRange::new(Gpa::new(0), 1 << 30).unwrap();
//! table.map(ram, Hpa::new(0x40_0000_0000), Attrs::normal(Perms::RWX)).unwrap();
//! assert_eq!(table.stats().leaves[2], 1); // one 1 GiB leaf
//! table.protect(GpaRange::new(Gpa::new(0x1000), 0x1000).unwrap(), Perms::READ).unwrap();
//! assert_eq!(table.stats().leaves[0], 512); // split down to 4 KiB around the change
//! # }
//! ```
#![no_std]
// Level loops index several per-level arrays at once; `for l in 0..levels` reads best.
#![allow(clippy::needless_range_loop)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod addr;
mod entry;
pub mod error;
mod flush;
pub mod format;
pub mod geometry;
pub mod host;
pub mod iter;
pub mod mode;
mod ops;
mod pool;
#[doc(hidden)]
pub mod sync;
pub mod table;
pub mod tree;
pub mod update;

#[cfg(feature = "testing")]
pub mod testing;

pub use addr::{Gpa, GpaRange, Hpa, Level};
pub use error::Error;
pub use flush::PendingFlush;
pub use format::{AdModel, AdState, Attrs, ByteOrder, Cmo, EntryKind, MemType, Perms, PteFormat};
pub use geometry::{Geometry, ENTRY_SIZE, MAX_LEVELS};
pub use host::{Host, RetiredTables, SharedHost, TableMeta, TlbFlush};
pub use iter::Visit;
pub use mode::{Exclusive, Mode, Shared};
pub use pool::TableCache;
pub use table::{Leaf, MapOptions, Mapping, Stats, Table, Translation, WalkEntry};
pub use tree::{Ctx, ExclusiveAccess, Progress, SharedAccess, Tree};
