//! Lock modes, in the types.
//!
//! KVM runs its TDP MMU in three modes: lockless (fast page fault, aging), shared (`mmu_lock` held
//! for read: faults, write-protect, eager split, zap of invalid roots) and exclusive (`mmu_lock`
//! held for write: notifier unmap, teardown). Here the mode is a type parameter of the walker and
//! of the one writer ([`crate::update`]):
//! - [`Exclusive`]: the caller holds the tree alone (`&mut`, or an unsafe guard token). Entries are
//!   written with plain stores, and with an atomic read-modify-write only where hardware may set
//!   bits behind the engine (the volatile rule); tables are reused as soon as their flush is done.
//! - [`Shared`]: many callers on `&self`. Every change is a compare-exchange against the walker's
//!   snapshot; table pointers are followed with acquire loads; a frozen entry means "another
//!   updater owns this slot: retry"; removed tables are frozen entry by entry and freed only after
//!   a grace period (the host's [`crate::SharedHost`]).
//!
//! The choice is a constant in each instantiation, so exclusive code pays nothing for the shared
//! protocol.

mod sealed {
    pub trait Sealed {}
}

/// A lock mode: [`Exclusive`] or [`Shared`].
pub trait Mode: sealed::Sealed + 'static {
    /// Whether other updaters may run at the same time.
    const SHARED: bool;
}

/// The caller holds the tree alone.
#[derive(Debug)]
pub enum Exclusive {}

/// Other updaters may run at the same time (the hypervisor's lock held for read).
#[derive(Debug)]
pub enum Shared {}

impl sealed::Sealed for Exclusive {}
impl sealed::Sealed for Shared {}

impl Mode for Exclusive {
    const SHARED: bool = false;
}

impl Mode for Shared {
    const SHARED: bool = true;
}
