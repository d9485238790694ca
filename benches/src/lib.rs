//! # tdp-benches: the workloads behind the criterion benchmarks
//!
//! The benchmarks measure the engine over 1 GiB of guest memory: `benches/explicit.rs` the
//! explicit table API of every architecture, side by side with a raw-memory floor and the Rust
//! peers, in one run; `benches/shared.rs` per-page map through the tree API in exclusive and
//! shared mode, on one thread and on two. This library holds the parts that do not need criterion
//! or the peers, so that tests can run them on a smaller range:
//! - [`formats`]: the architecture configurations, one constructor each;
//! - [`workload`]: the operations, written once, generic over `F: PteFormat + Clone`, and the
//!   checks that each operation really took effect;
//! - [`pages`]: per-page map runs through the tree API (exclusive, shared, several threads);
//! - [`direct`]: the direct-map host the timed explicit-API benchmarks run on (the table memory
//!   the peers get);
//! - [`floor`]: raw loops over entry words doing the least memory work each operation needs;
//! - [`meta`]: where the results go and the side file (memory, layout, machine) that
//!   `benches/report.py` joins with criterion's estimates.

pub mod direct;
pub mod floor;
pub mod formats;
pub mod meta;
pub mod pages;
pub mod workload;

pub use workload::Workload;
