//! Criterion benchmarks of the explicit API (see `benches/explicit.rs`); the floor and the Rust peers come with the benchmarks issue.
