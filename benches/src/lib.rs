//! # tdp-benches: the workloads behind the criterion benchmarks
//!
//! The benchmarks (`benches/explicit.rs`) measure the explicit table API of every architecture
//! over 1 GiB of guest memory, side by side with a raw-memory floor and the Rust peers, in one run.
//! This library holds the parts that do not need criterion or the peers, so that tests can run
//! them on a smaller range:
//! - [`workload`]: the operations, written once, generic over `F: PteFormat + Clone`, and the
//!   checks that each operation really took effect;
//! - [`floor`]: raw loops over entry words doing the least memory work each operation needs;
//! - [`meta`]: where the results go and the side file (memory, layout, machine) that
//!   `benches/report.py` joins with criterion's estimates.

pub mod floor;
pub mod meta;
pub mod workload;

pub use workload::Workload;
