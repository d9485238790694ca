//! Benchmarks (filled by the benchmarks issue).
