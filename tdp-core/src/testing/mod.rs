//! The testing kit (feature `testing`, needs std).
//!
//! - [`HeapHost`]: table pages in a bounded physical window at a caller-chosen base (physical ≠
//!   virtual), with leak accounting, allocation-failure injection at any chosen allocation, a
//!   recording TLB, raw physical reads and writes for software walkers (atomic word loads and
//!   compare-exchanges for walkers that run concurrently with the engine), and table-image
//!   export. It is `Sync` and a [`crate::SharedHost`], freeing retired tables after an
//!   epoch-based grace period ([`EpochGuard`]).
//! - [`ShadowTlb`]: the TLBs of simulated vCPUs, filled by the test's walker, invalidated by the
//!   host's flushes, and checked against the table after each operation.
//! - [`inject::at_every_allocation`]: runs an operation with allocation failure injected at every
//!   point in turn and checks that each failure leaves the host and the tree as they were.
//! - [`Model`]: the reference model, a map from guest ranges to host ranges and attributes.
//! - [`driver`]: the model-property driver every architecture's `prop_model` tests run: the step
//!   enum and its proptest strategy, the [`driver::Oracle`] an architecture implements around its
//!   independent walker, and [`driver::run`], which checks a sequence on the exclusive and the
//!   shared-mode path.
//! - [`TestFormat`]: a small generic format with knobs (hardware A/D, break-before-make), for
//!   engine tests that do not depend on an architecture crate.
//! - [`stress`]: bounded multi-threaded stress runs of a shared-mode tree against an
//!   architecture's independent walker, and a check that shared mode alone matches exclusive
//!   mode (driven by each architecture's tests).

pub mod driver;
mod epoch;
mod format;
mod heap;
pub mod inject;
mod model;
mod shadow;
#[cfg(not(loom))]
pub mod stress;

pub use epoch::EpochGuard;
pub use format::TestFormat;
pub use heap::{HeapHost, HostEvent, TableImage};
pub use model::{Model, ModelSpan};
pub use shadow::{ShadowTlb, TlbStats, Translation, Walked};
